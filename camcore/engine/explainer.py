"""The explainer: one image, one model, one target; heatmaps computed on demand from its pass.

Heatmaps are memoised per (method, layer, eigen_smooth); each kind of method is computed by its
strategy (kinds.py). explain_many() runs the shared passes of many images as batches.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from camcore import metrics, modellock
from camcore import targets as targets_mod
from camcore.engine.kept import KeptForward
from camcore.engine.kinds import strategy_for
from camcore.engine.loop import collect, grid_pairs, iter_heatmaps
from camcore.engine.passes import FeaturePass, Progress, run_pass, run_pass_batch
from camcore.errors import CamError, MethodError, first_line
from camcore.identity import HeatmapIdentity
from camcore.images import LoadedImage
from camcore.methods import Kind, MethodSpec, get_method
from camcore.models import LoadedModel
from camcore.preprocessing import preprocess, reshape_transform_for
from camcore.results import CamResult, Heatmap, Prediction, Target

ALL_LAYERS = "all"  # the layer name shown for layer-independent methods (FullGrad)
DEFAULT_PERTURBATION_BATCH = 64
# Before any Score-CAM/Ablation-CAM has run on a model: one batched forward per channel costs
# about this share of the shared pass (a forward + backward of one image, hooks on every layer).
FORWARD_SHARE_OF_PASS = 0.5
# Methods with a pass of their own (or heavy work on the shared one), before they have run on a
# model: their cost in shared passes (a table, replaced by the time measured once they ran).
OWN_PASS_COST = {"fullgrad": 3.0, "shapleycam": 4.0, "finercam": 2.0}
KPCA_SECONDS_PER_POSITION_SQUARED = 2e-8  # kernel PCA over all positions: 3.1 s at 112x112 here
AUG_SMOOTH_PASSES = 6  # aug_smooth runs the method over 6 augmented copies
_OWN_SECONDS: dict[tuple, float] = {}  # (rate key, method, layer, eigen) -> seconds measured

class Deferred(CamError):
    """A heatmap that must not be computed implicitly (awaiting the user's go, or cancelled):
    heatmap() raises this until Explainer.allow() is called for it."""


@dataclass(frozen=True)
class Estimate:
    """How long a one-forward-per-channel method will take on a layer (channels=0: a method with
    passes of its own, timed whole)."""

    channels: int
    seconds: float
    measured: bool  # from an earlier run of the method on this layer, model and input size (else: one timed forward)
    copies: int = 1  # aug_smooth: the method runs once per augmented copy, channels x copies forwards


# Seconds per channel of the perturbation methods, measured per (model, input size, device, method,
# layer): the next estimate of that method on that layer uses it (Ablation-CAM's cost per channel
# is the model after the layer, Score-CAM's a whole forward). Process-wide, like the models.
_PER_CHANNEL: dict[tuple, float] = {}
_TIMED_FORWARD: dict[tuple, float] = {}  # before any run: one small batched forward, timed
_PER_CHANNEL_LOCK = threading.Lock()


def _tta_transforms():
    import ttach as tta

    return tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])


@dataclass
class Explainer:
    """One image, one model, one target: the shared pass, and heatmaps computed from it on demand.

    Heatmaps are memoised per (method, layer, eigen_smooth), so a UI can walk layers and methods
    without running the model again. Safe to share between threads (an internal lock).
    """

    model: LoadedModel
    image: LoadedImage
    target_request: str | int | None = None
    layers: tuple[str, ...] = ()  # the layers the shared pass hooks; default: all of the model's
    aug_smooth: bool = False
    input_size: int | None = None
    batch_size: int = DEFAULT_PERTURBATION_BATCH
    timings: dict[str, float] = field(default_factory=dict)
    defer_pass: bool = False  # explain_many() runs the pass for several explainers at once
    # The shared pass's progress (it reports waiting for a model another session holds) and its
    # cancel; used by the constructor only, then dropped.
    progress: Progress | None = field(default=None, repr=False, compare=False)
    cancel: threading.Event | None = field(default=None, repr=False, compare=False)
    # A session's kept forward (kept.py): another target of the same image reuses its forward
    # (one backward for a gradient method, nothing for the others).
    kept: KeptForward | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = self.model.spec
        self.layers = tuple(self.layers) or tuple(s.name for s in spec.layers)
        for name in self.layers:
            spec.layer(name)  # unknown layers fail here, before any compute
        self._memo: dict[tuple[str, str, bool], Heatmap] = {}
        self._faith: dict[tuple[str, str, bool], metrics.Faithfulness] = {}
        self._aug_passes: dict[str, list] = {}
        self._deferred: dict[tuple[str, str, bool], str] = {}  # key -> why it is not computed
        self._allowed: set[tuple[str, str, bool]] = set()  # keys the user said go for
        self._lock = threading.RLock()
        self.x = preprocess(spec, self.image.rgb, self.input_size, self.model.device)
        self.input_hw = (int(self.x.shape[-2]), int(self.x.shape[-1]))
        self.reshape = reshape_transform_for(spec, self.input_hw, self.model.module)
        self.class_names = spec.class_names()
        self.prediction: Prediction
        self.target: Target
        progress, cancel, self.progress, self.cancel = self.progress, self.cancel, None, None
        self.forward_reused = False  # whether a kept forward of this image served the pass
        if self.kept is not None and not self.defer_pass:
            fp, grad_target, self.forward_reused = self.kept.pass_for(
                self.model, self.x, self.layers, self._make_target, self.reshape, progress, cancel)
            self._set_pass(fp, grad_target)
        elif not self.defer_pass:
            fp, grad_target = run_pass(self.model, self.x, self.layers, self._make_target, self.reshape,
                                       progress, cancel)
            self._set_pass(fp, grad_target)

    def _make_target(self, output: torch.Tensor):
        """Called inside the pass with this image's output: the prediction, the target, and
        pytorch-grad-cam's target object."""
        spec = self.model.spec
        self.prediction = targets_mod.predict(spec.task, output, self.class_names, self.image.size, self.input_hw)
        self.target = targets_mod.choose_target(self.prediction, self.class_names, self.target_request,
                                                self.image.size)
        scale = (self.image.size[1] / self.input_hw[1], self.image.size[0] / self.input_hw[0])
        return targets_mod.grad_cam_target(spec.task, self.target, output, scale)

    def _set_pass(self, fp: FeaturePass, grad_target: object) -> None:
        self.fp, self.grad_target = fp, grad_target
        self.timings["pass"] = fp.seconds

    # -- public

    def is_cached(self, method: str, layer: str, eigen_smooth: bool = False) -> bool:
        """Whether heatmap(method, layer, eigen_smooth) would return at once."""
        return self._key(method, layer, eigen_smooth) in self._memo

    def _key(self, method: str, layer: str, eigen_smooth: bool) -> tuple[str, str, bool]:
        spec = get_method(method)
        layer = ALL_LAYERS if spec.layer_independent else layer
        return spec.key, layer, bool(eigen_smooth and spec.supports_eigen_smooth)

    # -- what may compute implicitly: a UI defers slow heatmaps until the user says go

    def defer(self, method: str, layer: str, eigen_smooth: bool, reason: str) -> None:
        """heatmap() raises Deferred(reason) for this heatmap until allow() (cached ones stay)."""
        key = self._key(method, layer, eigen_smooth)
        self._deferred[key] = reason
        self._allowed.discard(key)

    def allow(self, method: str, layer: str, eigen_smooth: bool) -> None:
        key = self._key(method, layer, eigen_smooth)
        self._deferred.pop(key, None)
        self._allowed.add(key)

    def deferred(self, method: str, layer: str, eigen_smooth: bool = False) -> str | None:
        """Why this heatmap is held back, or None."""
        return self._deferred.get(self._key(method, layer, eigen_smooth))

    def allowed(self, method: str, layer: str, eigen_smooth: bool = False) -> bool:
        """Whether allow() was called for it (the user said go)."""
        return self._key(method, layer, eigen_smooth) in self._allowed

    def estimate(self, method: str, layer: str) -> Estimate | None:
        """How long a one-forward-per-channel method (Score-CAM, Ablation-CAM) will take on this
        layer: channels (x 6 augmented copies with aug_smooth) x seconds per channel, measured by an
        earlier run of it on this layer (model, input size and device), else by timing one small
        batched forward. Every other slow method (or any with aug_smooth): _estimate_own. None for
        the fast ones."""
        spec = get_method(method)
        if spec.kind is not Kind.PERTURBATION:
            return self._estimate_own(spec, layer) if spec.slow or self.aug_smooth else None
        name = self.model.spec.layer(layer).name
        acts = self.fp.activation_tensors.get(name)
        if acts is None:
            return None
        channels = int(acts.shape[1])
        copies = AUG_SMOOTH_PASSES if self.aug_smooth else 1
        with _PER_CHANNEL_LOCK:
            per = _PER_CHANNEL.get((self._rate_key(), spec.key, name))
        measured = per is not None
        if per is None:
            with _PER_CHANNEL_LOCK:
                per = _TIMED_FORWARD.get(self._rate_key())
            per = per if per is not None else self._time_forward()
        return Estimate(channels, channels * copies * per, measured, copies)

    def _estimate_own(self, spec: MethodSpec, layer: str) -> Estimate | None:
        """Every other method the page holds back (KPCA, FullGrad, Shapley, Finer-CAM, anything
        with aug_smooth): the time measured when it last ran on this model, layer and input size,
        else a table of its cost in shared passes (KPCA: by the layer's positions). channels=0."""
        name = ALL_LAYERS if spec.layer_independent else self.model.spec.layer(layer).name
        with _PER_CHANNEL_LOCK:
            seen = _OWN_SECONDS.get((self._rate_key(), spec.key, name, self.aug_smooth))
        if seen is not None:
            return Estimate(0, seen, True)
        pass_s = self.timings.get("pass", 0.0)
        seconds = pass_s * OWN_PASS_COST.get(spec.key, 0.1)
        acts = self.fp.activation_tensors.get(name)
        if spec.key == "kpcacam" and acts is not None and acts.dim() == 4:
            seconds += KPCA_SECONDS_PER_POSITION_SQUARED * float(acts.shape[-1] * acts.shape[-2]) ** 2
        if self.aug_smooth:
            seconds = AUG_SMOOTH_PASSES * (seconds + pass_s)
        return Estimate(0, seconds, False)

    def _record_own(self, spec: MethodSpec, layer: str, seconds: float) -> None:
        with _PER_CHANNEL_LOCK:
            _OWN_SECONDS[(self._rate_key(), spec.key, layer, self.aug_smooth)] = seconds

    def _time_forward(self, batch: int = 2) -> float:
        """Seconds per image of a forward in a small batch (hooks off), measured once per model,
        input size and device; the shared pass's time stands in when the forward fails."""
        try:
            x = self.x.to(self.model.device).repeat(batch, *([1] * (self.x.dim() - 1)))
            with modellock.hold(self.model.lock, self.model.spec.key, "timing a forward"), torch.no_grad():
                self.model.module.eval()
                started = time.perf_counter()
                self.model.module(x)
                per = (time.perf_counter() - started) / batch
        except (RuntimeError, CamError):
            return self.timings.get("pass", 0.0) * FORWARD_SHARE_OF_PASS
        with _PER_CHANNEL_LOCK:
            _TIMED_FORWARD[self._rate_key()] = per
        return per

    def record_rate(self, method: str, layer: str, start: float, channels_done: float) -> None:
        """Seconds per channel of a perturbation method that ran on `layer` since `start`: the
        next estimate of it there (on this model, input size and device) uses it."""
        with _PER_CHANNEL_LOCK:
            _PER_CHANNEL[(self._rate_key(), method, layer)] = (time.perf_counter() - start) / max(1.0, channels_done)

    def _rate_key(self) -> tuple:
        return (self.model.version, self.input_hw, str(self.model.device))

    def has_faithfulness(self, h: Heatmap) -> bool:
        """Whether this map's faithfulness scores are computed already (free to show)."""
        with self._lock:
            return (h.method, h.layer, h.eigen_smooth) in self._faith

    def faithfulness(self, method: str, layer: str, eigen_smooth: bool = False) -> metrics.Faithfulness:
        """Keep/remove confidence change of one heatmap for this target (memoised)."""
        return self.faithfulness_of([self.heatmap(method, layer, eigen_smooth)])[0]

    def faithfulness_of(self, heatmaps: Sequence[Heatmap]) -> list[metrics.Faithfulness]:
        """The faithfulness of these heatmaps of this explainer (memoised): those not computed yet
        in batched forwards, against the target's score from the shared pass."""
        keys = [(h.method, h.layer, h.eigen_smooth) for h in heatmaps]
        with self._lock:
            todo = {key: h for key, h in zip(keys, heatmaps, strict=True) if key not in self._faith}
            if todo:
                got = metrics.faithfulness_many(self.model, self.x, [h.map for h in todo.values()], self.grad_target,
                                                original=self.original_score)
                self._faith.update(zip(todo, got, strict=True))
            return [self._faith[key] for key in keys]

    @property
    def original_score(self) -> float:
        """The target's score on the unchanged input, from the shared pass's output (no forward)."""
        target: Any = self.grad_target  # pytorch-grad-cam's target object: called on one output
        return float(target(self.fp.output).detach().float().cpu())

    @property
    def weights_label(self) -> str:
        return self.model.weights_label

    def heatmap(
        self,
        method: str,
        layer: str,
        eigen_smooth: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Heatmap:
        spec = get_method(method)
        reason = spec.unsupported_reason(self.model.spec.task, self.model.spec.family)
        if reason:
            raise MethodError(reason)
        layer = ALL_LAYERS if spec.layer_independent else self.model.spec.layer(layer).name
        eigen_smooth = bool(eigen_smooth and spec.supports_eigen_smooth)
        key = (spec.key, layer, eigen_smooth)
        if key not in self._memo and key in self._deferred:
            raise Deferred(f"{spec.label} on {layer}: {self._deferred[key]}.")
        with self._lock:
            if key not in self._memo:
                started = time.perf_counter()
                self._memo[key] = self._compute(spec, layer, eigen_smooth, progress, cancel)
                if spec.kind is not Kind.PERTURBATION:
                    self._record_own(spec, layer, time.perf_counter() - started)
            return self._memo[key]

    def heatmaps(
        self,
        methods: Iterable[str],
        layers: Iterable[str],
        eigen_smooth: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[list[Heatmap], list[str]]:
        """Every (method, layer) pair; a failing pair is reported, the others still computed."""
        pairs = grid_pairs(methods, layers)

        def overall(i: int, method: str, layer: str) -> None:
            if progress:
                progress(i / max(1, len(pairs)), f"{method} on {layer}")

        done, errors = collect(iter_heatmaps(self, pairs, eigen_smooth, overall, cancel))
        if progress:
            progress(1.0, "done")
        return done, errors

    def result(self, heatmaps: Sequence[Heatmap], errors: Sequence[str] = ()) -> CamResult:
        return CamResult(
            model=self.model.spec.key,
            weights=self.model.weights_label,
            pretrained=self.model.pretrained,
            image_size=self.image.size,
            input_size=self.input_hw,
            prediction=self.prediction,
            target=self.target,
            heatmaps=tuple(heatmaps),
            timings=self._timings(),
            errors=tuple(errors),
            notes=tuple(self.image.notes),
            original_size=None if self.image.original_size == self.image.size else self.image.original_size,
        )

    def _timings(self) -> dict[str, float]:
        """The pass's seconds; from a kept forward also forward_reused (1.0 when this image's
        forward served another target) and the one backward's seconds, once it ran."""
        out = dict(self.timings)
        if self.kept is not None and not self.defer_pass:
            out["forward_reused"] = float(self.forward_reused)
            if self.fp.backward_seconds is not None:
                out["backward"] = self.fp.backward_seconds
        return out

    # -- internals

    def layer_pass(self, layer: str) -> FeaturePass:
        """The shared pass, which must have hooked `layer`."""
        if layer not in self.fp.activation_tensors:
            raise CamError(f"Layer {layer} was not in this pass; create the Explainer with it.")
        return self.fp

    def augmented_passes(self, layer: str) -> list[tuple[Any, torch.Tensor, FeaturePass, Any]]:
        """(transform, augmented input, its pass, its target) for each aug_smooth transform."""
        with self._lock:
            if layer not in self._aug_passes:
                transforms = list(_tta_transforms())
                xs = [t.augment_image(self.x) for t in transforms]
                targets = [_augmented_target(self.grad_target, t) for t in transforms]
                passes, _ = run_pass_batch(self.model, torch.cat(xs), [layer], lambda i, _o: targets[i],
                                           self.reshape)
                self._aug_passes[layer] = list(zip(transforms, xs, passes, targets, strict=True))
            return self._aug_passes[layer]

    def _compute(
        self, spec: MethodSpec, layer: str, eigen_smooth: bool, progress: Progress | None,
        cancel: threading.Event | None,
    ) -> Heatmap:
        start = time.perf_counter()
        raw, full = strategy_for(spec).maps(self, spec, layer, eigen_smooth, progress, cancel)
        return self._heatmap(spec, layer, eigen_smooth, raw, full, start)

    def _heatmap(self, spec: MethodSpec, layer: str, eigen_smooth: bool, raw: np.ndarray, full: np.ndarray,
                 start: float) -> Heatmap:
        raw2d = np.array(raw[0], dtype=np.float32)
        identity = HeatmapIdentity.of(self.model, spec, layer, self._identity_target(),
                                      input_size=min(self.input_hw), aug_smooth=self.aug_smooth,
                                      eigen_smooth=eigen_smooth)
        return Heatmap(
            identity=identity,
            target=self.target,
            map=full,  # float32 in 0..1: each strategy returns it so (no copy per map)
            raw=raw2d,
            raw_range=(float(raw2d.min()), float(raw2d.max())),
            seconds=time.perf_counter() - start,
        )

    def _identity_target(self) -> str:
        """The target part of the maps' identity: a class left on auto (the default target, not a
        box) is the rule PREDICTED, as in a batch, so one computation has one field wherever it was
        made; the class explained stays on each label (its ``target`` attribute)."""
        if self.target.rule.startswith("default") and not self.target.box_ref:
            return targets_mod.PREDICTED
        return self.target.identity_name


def _augmented_target(grad_target: Any, transform: Any) -> Any:
    """The target for an augmented input: a segmentation mask moves with the image."""
    if hasattr(grad_target, "mask"):
        mask = transform.deaugment_mask(grad_target.mask[None, None])[0, 0].numpy()
        return type(grad_target)(grad_target.category, mask)
    return grad_target


def explain_many(
    model: LoadedModel,
    images: Sequence[LoadedImage],
    target_request: str | int | None | list[str | int | None],  # a list: one per image
    layers: Sequence[str],
    input_size: int | None = None,
    max_batch: int = 8,
) -> list[Explainer | CamError]:
    """Explainers for many images from batched passes: images whose model inputs have the same
    shape are stacked, up to max_batch per forward. Each explainer equals Explainer(...) on its
    image alone. A batch that fails is retried image by image, so one bad image (or a batch too
    big for memory) costs only itself; its slot holds the CamError."""
    requests = list(target_request) if isinstance(target_request, list) else [target_request] * len(images)
    explainers = [Explainer(model, img, request, tuple(layers), False, input_size, defer_pass=True)
                  for img, request in zip(images, requests, strict=True)]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, e in enumerate(explainers):
        by_shape.setdefault(e.input_hw, []).append(i)
    out: list[Explainer | CamError] = list(explainers)
    max_batch = max(1, int(max_batch))
    for indices in by_shape.values():
        for k in range(0, len(indices), max_batch):
            group = [explainers[i] for i in indices[k:k + max_batch]]
            try:
                _pass_together(model, group)
            except (CamError, RuntimeError) as exc:
                if len(group) == 1:
                    out[indices[k]] = exc if isinstance(exc, CamError) else CamError(first_line(exc))
                    continue
                for i in indices[k:k + max_batch]:  # one by one: find the culprit, keep the rest
                    try:
                        _pass_together(model, [explainers[i]])
                    except (CamError, RuntimeError) as one:
                        out[i] = one if isinstance(one, CamError) else CamError(first_line(one))
    return out


def _pass_together(model: LoadedModel, group: Sequence[Explainer]) -> None:
    x = torch.cat([e.x for e in group])
    passes, targets = run_pass_batch(model, x, group[0].layers, lambda i, out: group[i]._make_target(out),
                                     group[0].reshape)
    for e, fp, t in zip(group, passes, targets, strict=True):
        e._set_pass(fp, t)
