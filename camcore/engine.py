"""Compute once, render many.

One forward (and one backward when a gradient method is asked for) with hooks on every chosen
layer feeds every pure method (methods.py) on every layer: after that pass, switching method or
layer never runs the model again. Perturbation methods reuse the pass's activations and add their
own batched forwards; FullGrad, ShapleyCAM and FinerCAM run pytorch-grad-cam's own pass.

Normalisation is pytorch-grad-cam's (for one layer): clip at 0, min-max scale, resize to the
input tensor, min-max scale again; we then resize to the image's own resolution. The clipped
map at the layer's resolution and its range are kept (the library discards them).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from pytorch_grad_cam.utils.image import scale_cam_image

from camcore import device_math, metrics, modellock, perturbation
from camcore import targets as targets_mod
from camcore.errors import CamError, Cancelled, MethodError, first_line
from camcore.images import LoadedImage
from camcore.methods import MethodSpec, get_method
from camcore.models import LoadedModel, ModelSpec
from camcore.projection import first_component_projection
from camcore.results import CamResult, Heatmap, Prediction, Target

Progress = Callable[[float, str], None]
ALL_LAYERS = "all"  # the layer name shown for layer-independent methods (FullGrad)
DEFAULT_PERTURBATION_BATCH = 64
# Before any Score-CAM/Ablation-CAM has run on a model: one batched forward per channel costs
# about this share of the shared pass (a forward + backward of one image, hooks on every layer).
FORWARD_SHARE_OF_PASS = 0.5


class Deferred(CamError):
    """A heatmap that must not be computed implicitly (awaiting the user's go, or cancelled):
    heatmap() raises this until Explainer.allow() is called for it."""


@dataclass(frozen=True)
class Estimate:
    """How long a one-forward-per-channel method will take on a layer."""

    channels: int
    seconds: float
    measured: bool  # from an earlier run of the method on this model and input size (else: one timed forward)


# Seconds per channel of the perturbation methods, measured per (model, input size, device):
# the next estimate on that model uses it. Process-wide, like the models.
_PER_CHANNEL: dict[tuple, float] = {}
_TIMED_FORWARD: dict[tuple, float] = {}  # before any run: one small batched forward, timed
_PER_CHANNEL_LOCK = threading.Lock()


# ---------------------------------------------------------------- preprocessing


def input_size_for(spec: ModelSpec, image_hw: tuple[int, int], size: int | None = None) -> tuple[int, int]:
    """(height, width) of the tensor the model sees. ViTs have a fixed input size."""
    p = spec.preprocess
    size = size if (size and p.mode == "short_side") else p.size
    if p.mode == "square":
        return size, size
    h, w = image_hw
    scale = size / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def preprocess(spec: ModelSpec, rgb: np.ndarray, size: int | None = None) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x h x w float tensor, normalised as the model was trained."""
    h, w = input_size_for(spec, rgb.shape[:2], size)
    shrink = h * w < rgb.shape[0] * rgb.shape[1]
    resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x = resized.astype(np.float32) / 255.0
    x = (x - np.float32(spec.preprocess.mean)) / np.float32(spec.preprocess.std)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def reshape_transform_for(spec: ModelSpec, input_hw: tuple[int, int]):
    """ViT tokens -> B x C x gh x gw (prefix tokens such as the class token dropped)."""
    if spec.family != "vit":
        return None
    gh, gw = input_hw[0] // spec.patch_size, input_hw[1] // spec.patch_size

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 4:
            return tensor
        tokens = tensor[:, tensor.size(1) - gh * gw :, :]
        return tokens.reshape(tensor.size(0), gh, gw, tensor.size(2)).permute(0, 3, 1, 2)

    return reshape


# ---------------------------------------------------------------- the shared pass


@dataclass
class FeaturePass:
    """Activations and gradients of the chosen layers for one input, as numpy (B x C x h x w)."""

    output: torch.Tensor  # the model's output for the one image, no batch dimension
    activation_tensors: dict[str, torch.Tensor]  # on the model's device
    gradient_tensors: dict[str, torch.Tensor]
    seconds: float  # a batched pass: its time divided by the batch size
    _host: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    # Host (numpy) copies for the library's numpy math, made on first use: with device_math on a
    # GPU most maps never need them. On the CPU they share the tensors' memory.
    @property
    def activations(self) -> dict[str, np.ndarray]:
        return self._numpy("activations", self.activation_tensors)

    @property
    def gradients(self) -> dict[str, np.ndarray]:
        return self._numpy("gradients", self.gradient_tensors)

    def _numpy(self, kind: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        if kind not in self._host:
            self._host[kind] = {n: t.cpu().numpy() for n, t in tensors.items()}
        return self._host[kind]


def run_pass(
    model: LoadedModel,
    x: torch.Tensor,
    layers: Sequence[str],
    make_target: Callable[[torch.Tensor], object] | None,
    reshape=None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> tuple[FeaturePass, object]:
    """One forward (+ one backward when make_target is given) with hooks on `layers`, one image."""
    per_sample = None if make_target is None else (lambda _i, output: make_target(output))
    passes, targets = run_pass_batch(model, x, layers, per_sample, reshape, progress, cancel)
    return passes[0], targets[0]


def run_pass_batch(
    model: LoadedModel,
    x: torch.Tensor,
    layers: Sequence[str],
    make_target: Callable[[int, torch.Tensor], object] | None,
    reshape=None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> tuple[list[FeaturePass], list[object]]:
    """One batched forward (+ one backward) for B stacked images with hooks on `layers`.

    make_target(i, output_i) gives image i's target; the backward runs on the sum of the B
    targets. Every model here is in eval mode (no batch statistics), so image i's gradients
    depend on image i alone and equal those of a pass on it alone.

    Hooks live only inside this call, removed even on errors. Gradients are taken with
    torch.autograd.grad with respect to the layer outputs only: no parameter .grad is written,
    so nothing leaks between sessions sharing the model.

    Waiting for the model (another session's pass or Score-CAM batch) is reported through
    progress and ends with Cancelled when `cancel` is set (modellock.hold).
    """
    outputs: dict[str, torch.Tensor] = {}
    snapshots: dict[str, torch.Tensor] = {}
    handles = []
    start = time.perf_counter()
    # Hooks are registered under the model's lock (re-entrant) too: another session's forward
    # must never fire them.
    with modellock.hold(model.lock, model.spec.key, "a model pass", progress, cancel):
        try:
            for name in layers:
                def hook(_module, _inputs, out, name=name):
                    outputs[name] = out
                    # Copy now: a later in-place op in the network must not change what we keep.
                    snapshots[name] = out.detach().clone()
                handles.append(model.layer_module(name).register_forward_hook(hook))
            with torch.enable_grad():  # grad mode is thread-local: Streamlit reruns on new threads
                model.module.eval()
                output = model.module(x.to(model.device))
                missing = [n for n in layers if n not in outputs]
                if missing:
                    raise CamError(f"Layer(s) {', '.join(missing)} did not run in the model's forward pass.")
                acts = {n: (reshape(t) if reshape else t).float() for n, t in snapshots.items()}
                snapshots.clear()
                grads: dict[str, torch.Tensor] = {}
                targets: list[object] = [None] * len(output)
                if make_target is not None:
                    targets = [make_target(i, out) for i, out in enumerate(output)]
                    names = [n for n in layers if outputs[n].requires_grad]
                    if names:
                        loss = sum(t(out) for t, out in zip(targets, output))
                        got = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
                        for n, g in zip(names, got):
                            g = torch.zeros_like(outputs[n]) if g is None else g
                            grads[n] = (reshape(g) if reshape else g).detach().float()
        finally:
            for h in handles:
                h.remove()
    seconds = (time.perf_counter() - start) / len(output)
    output = output.detach()
    passes = [
        FeaturePass(output[i], {n: a[i:i + 1] for n, a in acts.items()}, {n: g[i:i + 1] for n, g in grads.items()},
                    seconds)
        for i in range(len(output))
    ]
    return passes, targets


# ---------------------------------------------------------------- maps from a pass


def normalise_like_library(cam: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's single-layer normalisation: 1 x h x w raw -> 1 x H x W in 0..1."""
    scaled = scale_cam_image(np.maximum(cam, 0), (input_hw[1], input_hw[0]))
    return scale_cam_image(np.maximum(scaled, 0))


def _method_object(spec: MethodSpec, model: LoadedModel):
    """The library's method object with no target layers: its math, none of its hooks.

    Built once per model and method: the library's constructor calls model.eval(), which walks
    every module (2 ms on DeiT, 72 times for a 12-layer x 6-method grid). The objects hold no
    state between calls, so sessions share them."""
    cam = model.method_objects.get(spec.key)
    if cam is None:
        cam = model.method_objects.setdefault(spec.key, spec.cls(model.module, []))
    return cam


def raw_cam(
    spec: MethodSpec,
    model: LoadedModel,
    fp: FeaturePass,
    layer: str,
    x: torch.Tensor,
    target: object,
    eigen_smooth: bool,
    batch_size: int,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """The unnormalised 1 x h x w map of a pure or perturbation method from the shared pass."""
    acts = fp.activations[layer]
    grads = fp.gradients.get(layer)
    if spec.needs_gradients and grads is None:
        raise CamError(f"No gradients reached layer {layer}: it does not influence the target.")
    if spec.channel_weights is not None:
        x = x.to(model.device)
        size = perturbation.default_batch_size(model.device, (int(x.shape[-2]), int(x.shape[-1])), batch_size)

        started = time.time()

        def guard():
            # The model is held per batch of forwards, not for the whole method: another
            # session's pass waits one batch at most (and is told whom it waits for).
            return modellock.hold(model.lock, model.spec.key, f"{spec.label} on {layer}", progress, cancel,
                                  since=started)

        with guard():
            model.module.eval()
        weights = spec.channel_weights(model.module, model.layer_module(layer), x,
                                       fp.activation_tensors[layer], target, size, progress, cancel,
                                       vit=model.spec.family == "vit", guard=guard)
        product = weights[:, :, None, None] * acts
        return first_component_projection(product) if eigen_smooth else product.sum(axis=1)
    cam = _method_object(spec, model)
    if spec.library_image:
        return cam.get_cam_image(x, None, [target], acts, grads, False)
    product = spec.product(cam, acts, grads if grads is not None else np.zeros_like(acts))
    if spec.projection or eigen_smooth:
        return first_component_projection(product)
    return product.sum(axis=1)


def library_cam(
    spec: MethodSpec,
    model: LoadedModel,
    x: torch.Tensor,
    layer: str,
    target: Target,
    grad_target: object,
    reshape,
    aug_smooth: bool,
    eigen_smooth: bool,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Methods that need a pass of their own shape: run pytorch-grad-cam's class as is."""
    layers = [] if spec.layer_independent else [model.layer_module(layer)]
    with modellock.hold(model.lock, model.spec.key, f"{spec.label} on {layer}", progress, cancel), \
            torch.enable_grad():
        cam = spec.cls(model.module, layers, reshape_transform=None if spec.layer_independent else reshape)
        try:
            if spec.key == "finercam":
                return cam(x.to(model.device), targets=None, eigen_smooth=eigen_smooth, target_idx=target.index)
            return cam(x.to(model.device), [grad_target], aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        finally:
            # Not `with`: its __exit__ swallows IndexError. Release hooks ourselves.
            _release(cam)
            model.module.zero_grad(set_to_none=True)


def _release(cam) -> None:
    """Remove a library CAM's hooks and drop what they recorded.

    Not ActivationsAndGradients.release(): it detach_()es the recorded tensors before removing
    the hooks, and detach_() raises on views (ShapleyCAM keeps undetached tensors; on DeiT its
    gradients were views), which leaves every hook on the shared model and hides the real error.
    """
    holder = getattr(cam, "base_cam", cam)
    recorder = getattr(holder, "activations_and_grads", None)
    if recorder is None:
        return
    for handle in recorder.handles:
        handle.remove()
    recorder.handles.clear()
    recorder.activations = []
    recorder.gradients = []


# ---------------------------------------------------------------- the explainer


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
        self.x = preprocess(spec, self.image.rgb, self.input_size)
        self.input_hw = (int(self.x.shape[-2]), int(self.x.shape[-1]))
        self.reshape = reshape_transform_for(spec, self.input_hw)
        self.class_names = spec.class_names()
        self.prediction: Prediction
        self.target: Target
        progress, cancel, self.progress, self.cancel = self.progress, self.cancel, None, None
        if not self.defer_pass:
            fp, grad_target = run_pass(self.model, self.x, self.layers, self._make_target, self.reshape,
                                       progress, cancel)
            self._set_pass(fp, grad_target)

    def _make_target(self, output: torch.Tensor):
        """Called inside the pass with this image's output: the prediction, the target, and
        pytorch-grad-cam's target object."""
        spec = self.model.spec
        self.prediction = targets_mod.predict(spec.task, output, self.class_names, self.image.size)
        self.target = targets_mod.choose_target(self.prediction, self.class_names, self.target_request)
        return targets_mod.grad_cam_target(spec.task, self.target, output)

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
        layer: channels x seconds per channel, measured on this model and input size by an
        earlier run, else by timing one small batched forward. None for other methods."""
        spec = get_method(method)
        if spec.channel_weights is None:
            return None
        acts = self.fp.activation_tensors.get(self.model.spec.layer(layer).name)
        if acts is None:
            return None
        channels = int(acts.shape[1])
        with _PER_CHANNEL_LOCK:
            per = _PER_CHANNEL.get(self._rate_key())
        measured = per is not None
        if per is None:
            with _PER_CHANNEL_LOCK:
                per = _TIMED_FORWARD.get(self._rate_key())
            per = per if per is not None else self._time_forward()
        return Estimate(channels, channels * per, measured)

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

    def _record_rate(self, start: float, channels_done: float) -> None:
        with _PER_CHANNEL_LOCK:
            _PER_CHANNEL[self._rate_key()] = (time.perf_counter() - start) / max(1.0, channels_done)

    def _rate_key(self) -> tuple:
        return (self.model.identity, self.input_hw, str(self.model.device))

    def faithfulness(self, method: str, layer: str, eigen_smooth: bool = False) -> metrics.Faithfulness:
        """Keep/remove confidence change of one heatmap for this target (memoised)."""
        h = self.heatmap(method, layer, eigen_smooth)
        key = (h.method, h.layer, h.eigen_smooth)
        with self._lock:
            if key not in self._faith:
                self._faith[key] = metrics.faithfulness(self.model, self.x, h.map, self.grad_target)
            return self._faith[key]

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
                self._memo[key] = self._compute(spec, layer, eigen_smooth, progress, cancel)
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
        pairs = [(m, l) for m in methods for l in layers]
        done, errors, seen = [], [], set()
        for i, (m, l) in enumerate(pairs):
            if cancel is not None and cancel.is_set():
                raise Cancelled("Cancelled.")
            if progress:
                progress(i / max(1, len(pairs)), f"{m} on {l}")
            try:
                h = self.heatmap(m, l, eigen_smooth, None, cancel)
            except CamError as exc:
                errors.append(f"{m} on {l}: {exc}")
                continue
            if (h.method, h.layer) not in seen:  # layer-independent methods appear once
                seen.add((h.method, h.layer))
                done.append(h)
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
            timings=dict(self.timings),
            errors=tuple(errors),
            notes=tuple(self.image.notes),
            original_size=None if self.image.original_size == self.image.size else self.image.original_size,
            weights_tag=self.model.weights_tag,
            model_provenance=self.model.provenance,
        )

    # -- internals

    def _augmented_passes(self, layer: str) -> list[tuple[object, torch.Tensor, FeaturePass, object]]:
        """(transform, augmented input, its pass, its target) for each aug_smooth transform."""
        with self._lock:
            if layer not in self._aug_passes:
                transforms = list(_tta_transforms())
                xs = [t.augment_image(self.x) for t in transforms]
                targets = [_augmented_target(self.grad_target, t) for t in transforms]
                passes, _ = run_pass_batch(self.model, torch.cat(xs), [layer], lambda i, _o: targets[i],
                                           self.reshape)
                self._aug_passes[layer] = list(zip(transforms, xs, passes, targets))
            return self._aug_passes[layer]

    def _compute(
        self, spec: MethodSpec, layer: str, eigen_smooth: bool, progress: Progress | None, cancel
    ) -> Heatmap:
        start = time.perf_counter()
        raw = None
        if spec.kind == "other":
            input_map = library_cam(spec, self.model, self.x, layer, self.target, self.grad_target,
                                    self.reshape, self.aug_smooth, eigen_smooth, progress, cancel)[0]
        elif self.aug_smooth:
            input_map = self._augmented(spec, layer, eigen_smooth)
        else:
            if layer not in self.fp.activation_tensors:
                raise CamError(f"Layer {layer} was not in this pass; create the Explainer with it.")
            if spec.torch_product is not None and device_math.enabled(self.model.device):
                raw, full = self._on_device(spec, layer, eigen_smooth)
                return self._heatmap(spec, layer, eigen_smooth, raw, full, start)
            channels = int(self.fp.activation_tensors[layer].shape[1])
            seen = {"fraction": 0.0}

            def tracked(fraction: float, message: str) -> None:
                if not message.startswith("Waiting"):
                    seen["fraction"] = fraction
                if progress is not None:
                    progress(fraction, message)

            try:
                raw = np.maximum(raw_cam(spec, self.model, self.fp, layer, self.x, self.grad_target,
                                         eigen_smooth, self.batch_size, tracked, cancel), 0)
            except Cancelled:
                if spec.channel_weights is not None and seen["fraction"] > 0:  # a cancelled run measured too
                    self._record_rate(start, seen["fraction"] * channels)
                raise
            if spec.channel_weights is not None:  # the next estimate on this model uses it
                self._record_rate(start, channels)
            input_map = normalise_like_library(raw, self.input_hw)[0]
        if raw is None:  # only the normalised map exists for library passes
            raw = input_map[None]
        full = cv2.resize(input_map, (self.image.size[1], self.image.size[0]), interpolation=cv2.INTER_LINEAR)
        return self._heatmap(spec, layer, eigen_smooth, raw, full, start)

    def _on_device(self, spec: MethodSpec, layer: str, eigen_smooth: bool) -> tuple[np.ndarray, np.ndarray]:
        """A pure method's raw map (1 x h x w) and image-sized map, computed on the tensors' device."""
        acts = self.fp.activation_tensors[layer]
        grads = self.fp.gradient_tensors.get(layer)
        if spec.needs_gradients and grads is None:
            raise CamError(f"No gradients reached layer {layer}: it does not influence the target.")
        with torch.no_grad():
            product = spec.torch_product(acts, grads if grads is not None else torch.zeros_like(acts))
            if spec.projection or eigen_smooth:
                raw = device_math.first_component_projection(product)
            else:
                raw = product.sum(dim=1)
            raw = raw.clamp(min=0)
            input_map = device_math.normalise_like_library(raw, self.input_hw)
            full = device_math.resize(input_map, self.image.size)
            return raw.cpu().numpy(), full[0].cpu().numpy()

    def _heatmap(self, spec: MethodSpec, layer: str, eigen_smooth: bool, raw: np.ndarray, full: np.ndarray,
                 start: float) -> Heatmap:
        raw2d = np.float32(raw[0])
        return Heatmap(
            method=spec.key,
            layer=layer,
            target=self.target,
            map=np.clip(full, 0, 1).astype(np.float32),
            raw=raw2d,
            raw_range=(float(raw2d.min()), float(raw2d.max())),
            seconds=time.perf_counter() - start,
            aug_smooth=self.aug_smooth,
            eigen_smooth=eigen_smooth,
        )

    def _augmented(self, spec: MethodSpec, layer: str, eigen_smooth: bool) -> np.ndarray:
        """pytorch-grad-cam's aug_smooth: the mean over flips and brightness scalings of each
        de-augmented map. For segmentation the target mask is flipped with the image.

        The six augmented inputs go through the model as one batch (forward + backward), kept per
        layer, so every method on that layer reuses it."""
        maps = []
        for transform, x_aug, fp, grad_target in self._augmented_passes(layer):
            raw = raw_cam(spec, self.model, fp, layer, x_aug, grad_target, eigen_smooth, self.batch_size)
            cam = normalise_like_library(np.maximum(raw, 0), self.input_hw)
            cam = transform.deaugment_mask(torch.from_numpy(cam[:, None]))[:, 0].numpy()
            maps.append(cam)
        return np.mean(np.float32(maps), axis=0)[0]


def _augmented_target(grad_target: object, transform) -> object:
    """The target for an augmented input: a segmentation mask moves with the image."""
    if hasattr(grad_target, "mask"):
        mask = transform.deaugment_mask(grad_target.mask[None, None])[0, 0].numpy()
        return type(grad_target)(grad_target.category, mask)
    return grad_target


def explain_many(
    model: LoadedModel,
    images: Sequence[LoadedImage],
    target_request: str | int | None,
    layers: Sequence[str],
    input_size: int | None = None,
    max_batch: int = 8,
) -> list[Explainer | CamError]:
    """Explainers for many images from batched passes: images whose model inputs have the same
    shape are stacked, up to max_batch per forward. Each explainer equals Explainer(...) on its
    image alone. A batch that fails is retried image by image, so one bad image (or a batch too
    big for memory) costs only itself; its slot holds the CamError."""
    explainers = [Explainer(model, img, target_request, tuple(layers), False, input_size, defer_pass=True)
                  for img in images]
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
    for e, fp, t in zip(group, passes, targets):
        e._set_pass(fp, t)


def explain(
    model: LoadedModel,
    image: LoadedImage,
    methods: Sequence[str],
    layers: Sequence[str] | None = None,
    target: str | int | None = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    input_size: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> CamResult:
    """Heatmaps for every method on every layer from one shared pass (the CLI's entry point)."""
    layers = list(layers or [model.spec.default_layer])
    for m in methods:
        get_method(m)
    explainer = Explainer(model, image, target, tuple(layers), aug_smooth, input_size)
    heatmaps, errors = explainer.heatmaps(methods, layers, eigen_smooth, progress, cancel)
    if not heatmaps and errors:
        raise CamError(errors[0])
    return explainer.result(heatmaps, errors)
