"""One strategy per kind of method (a registry entry's `kind`, methods.Kind): how its map is computed.

- FromPass (GRADIENT, ACTIVATION): a pure function of the shared pass's activations and
  gradients, the entry's `product`: its torch form on the tensors' device when device_math is
  on, else its numpy form (the library's math).
- Perturbation (PERTURBATION): the entry's `channel_weights` from batched forwards of our own
  (perturbation.py), with progress, cancel and the per-channel rate that later estimates use.
- OwnPass (OWN_PASS): pytorch-grad-cam runs the method with a pass of its own (`own_pass_call`).

Each returns (raw, full): the clipped 1 x h x w map at the layer's resolution (the library
discards it) and the float32 map in 0..1 at the image's own resolution. Normalisation is pytorch-grad-cam's
for one layer: clip at 0, min-max scale, resize to the input tensor, min-max scale again.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
import torch
from pytorch_grad_cam.utils.image import scale_cam_image

from camcore import device_math, modellock, perturbation
from camcore.engine.passes import FeaturePass, Progress
from camcore.errors import CamError, Cancelled
from camcore.methods import Kind, MethodSpec
from camcore.models import LoadedModel
from camcore.projection import first_component_projection

if TYPE_CHECKING:
    from camcore.engine.explainer import Explainer

Maps = tuple[np.ndarray, np.ndarray]  # (raw 1 x h x w, full H x W)


def normalise_like_library(cam: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's single-layer normalisation: 1 x h x w raw -> 1 x H x W in 0..1."""
    scaled = scale_cam_image(np.maximum(cam, 0), (input_hw[1], input_hw[0]))
    return scale_cam_image(np.maximum(scaled, 0))


def _to_image(ex: Explainer, input_map: np.ndarray) -> np.ndarray:
    """The 0..1 map at the image's size, float32 (clipped in place: cv2's result is ours)."""
    full = cv2.resize(input_map.astype(np.float32, copy=False), (ex.image.size[1], ex.image.size[0]),
                      interpolation=cv2.INTER_LINEAR)
    return np.clip(full, 0, 1, out=full)


def _from_raw(ex: Explainer, raw: np.ndarray) -> Maps:
    return raw, _to_image(ex, normalise_like_library(raw, ex.input_hw)[0])


def _combine(product: np.ndarray, project: bool) -> np.ndarray:
    """B x C x h x w -> B x h x w: the sum over channels, or the first principal component."""
    return first_component_projection(product) if project else product.sum(axis=1)


def _no_gradients(layer: str) -> CamError:
    return CamError(f"No gradients reached layer {layer}: it does not influence the target.")


def _method_object(spec: MethodSpec, model: LoadedModel) -> Any:
    """The library's method object with no target layers: its math, none of its hooks.

    Built once per model and method: the library's constructor calls model.eval(), which walks
    every module (2 ms on DeiT, 72 times for a 12-layer x 6-method grid). The objects hold no
    state between calls, so sessions share them."""
    cam = model.method_objects.get(spec.key)
    if cam is None:
        cam = model.method_objects.setdefault(spec.key, spec.cls(model.module, []))
    return cam


class Strategy(Protocol):
    def maps(self, ex: Explainer, spec: MethodSpec, layer: str, eigen_smooth: bool,
             progress: Progress | None, cancel: threading.Event | None) -> Maps: ...


# One augmented copy's raw map: (its index, its input, its pass, its target) -> 1 x h x w.
RawOfCopy = Callable[[int, torch.Tensor, FeaturePass, Any], np.ndarray]


def _augmented(ex: Explainer, layer: str, raw_of: RawOfCopy) -> Maps:
    """pytorch-grad-cam's aug_smooth: the mean over flips and brightness scalings of each
    de-augmented map. For segmentation the target mask is flipped with the image.

    The six augmented inputs go through the model as one batch (forward + backward), kept per
    layer, so every method on that layer reuses it."""
    maps = []
    for i, (transform, x_aug, fp, grad_target) in enumerate(ex.augmented_passes(layer)):
        raw = raw_of(i, x_aug, fp, grad_target)
        cam = normalise_like_library(np.maximum(raw, 0), ex.input_hw)
        cam = transform.deaugment_mask(torch.from_numpy(cam[:, None]))[:, 0].numpy()
        maps.append(cam)
    input_map = np.mean(np.asarray(maps, dtype=np.float32), axis=0)[0]
    return input_map[None], _to_image(ex, input_map)


class FromPass:
    """Gradient and activation methods: a function of the shared pass."""

    def maps(self, ex: Explainer, spec: MethodSpec, layer: str, eigen_smooth: bool,
             progress: Progress | None, cancel: threading.Event | None) -> Maps:
        if ex.aug_smooth:
            return _augmented(ex, layer,
                              lambda _i, x, fp, target: self.raw(ex, spec, fp, layer, x, target, eigen_smooth))
        fp = ex.layer_pass(layer)
        if spec.device_product is not None and device_math.enabled(ex.model.device):
            return self._on_device(ex, spec, fp, layer, eigen_smooth)
        return _from_raw(ex, np.maximum(self.raw(ex, spec, fp, layer, ex.x, ex.grad_target, eigen_smooth), 0))

    def raw(self, ex: Explainer, spec: MethodSpec, fp: FeaturePass, layer: str, x: torch.Tensor,
            target: object, eigen_smooth: bool) -> np.ndarray:
        """The unnormalised 1 x h x w map, with the library's numpy math."""
        acts = fp.activations[layer]
        # only a gradient method asks: a kept forward's pass runs its backward on that first ask
        grads = fp.gradients.get(layer) if spec.needs_gradients else None
        if spec.needs_gradients and grads is None:
            raise _no_gradients(layer)
        cam = _method_object(spec, ex.model)
        if spec.library_image:
            return cam.get_cam_image(x, None, [target], acts, grads, False)
        assert spec.product is not None  # MethodSpec checks: a pure method has a product or library_image
        product = spec.product.host(cam, acts, grads if grads is not None else np.zeros_like(acts))
        return _combine(product, bool(spec.projection or eigen_smooth))

    @staticmethod
    def _on_device(ex: Explainer, spec: MethodSpec, fp: FeaturePass, layer: str, eigen_smooth: bool) -> Maps:
        """The same map with torch ops on the tensors' device (device_math.py)."""
        acts = fp.activation_tensors[layer]
        grads = fp.gradient_tensors.get(layer) if spec.needs_gradients else None
        if spec.needs_gradients and grads is None:
            raise _no_gradients(layer)
        assert spec.device_product is not None
        with torch.no_grad():
            product = spec.device_product(acts, grads if grads is not None else torch.zeros_like(acts))
            if spec.projection or eigen_smooth:
                raw = device_math.first_component_projection(product)
            else:
                raw = product.sum(dim=1)
            raw = raw.clamp(min=0)
            input_map = device_math.normalise_like_library(raw, ex.input_hw)
            full = device_math.resize(input_map, ex.image.size).clamp_(0, 1)
            # one copy to the host and one synchronisation per map, not two
            both = torch.cat((raw.reshape(-1), full.reshape(-1))).float().cpu().numpy()
            return both[:raw.numel()].reshape(raw.shape), both[raw.numel():].reshape(full.shape[1:])


class Perturbation:
    """Score-CAM, Ablation-CAM: channel weights from batched forwards, times the activations."""

    def maps(self, ex: Explainer, spec: MethodSpec, layer: str, eigen_smooth: bool,
             progress: Progress | None, cancel: threading.Event | None) -> Maps:
        # aug_smooth: the method once per augmented copy (six times the forwards), with one
        # progress over all of them and the cancel checked per batch in each.
        copies = len(ex.augmented_passes(layer)) if ex.aug_smooth else 1
        start = time.perf_counter()
        channels = int(ex.layer_pass(layer).activation_tensors[layer].shape[1])
        seen = {"forwards": 0.0}

        def raw_of(i: int, x: torch.Tensor, fp: FeaturePass, target: Any) -> np.ndarray:
            def tracked(fraction: float, message: str) -> None:
                if not message.startswith("Waiting"):
                    seen["forwards"] = (i + fraction) * channels
                if progress is not None:
                    of_copy = f" · augmented copy {i + 1} of {copies}" if copies > 1 else ""
                    progress((i + fraction) / copies, message + of_copy)

            return self.raw(ex, spec, fp, layer, x, target, eigen_smooth, tracked, cancel)

        try:
            if ex.aug_smooth:
                maps = _augmented(ex, layer, raw_of)
            else:
                maps = _from_raw(ex, np.maximum(raw_of(0, ex.x, ex.layer_pass(layer), ex.grad_target), 0))
        except Cancelled:
            if seen["forwards"] > 0:  # a cancelled run measured the rate too
                ex.record_rate(spec.key, layer, start, seen["forwards"])
            raise
        ex.record_rate(spec.key, layer, start, copies * channels)  # the next estimate of it on this layer uses it
        return maps

    def raw(self, ex: Explainer, spec: MethodSpec, fp: FeaturePass, layer: str, x: torch.Tensor,
            target: object, eigen_smooth: bool, progress: Progress | None = None,
            cancel: threading.Event | None = None) -> np.ndarray:
        model = ex.model
        acts = fp.activations[layer]
        x = x.to(model.device)
        size = perturbation.default_batch_size(model.device, (int(x.shape[-2]), int(x.shape[-1])), ex.batch_size)
        started = time.time()

        def guard() -> AbstractContextManager[None]:
            # The model is held per batch of forwards, not for the whole method: another
            # session's pass waits one batch at most (and is told whom it waits for).
            return modellock.hold(model.lock, model.spec.key, f"{spec.label} on {layer}", progress, cancel,
                                  since=started)

        assert spec.channel_weights is not None  # MethodSpec checks it for a PERTURBATION entry
        with guard():
            model.module.eval()
        level = model.spec.layer(layer).key or None  # a detector's single FPN level (Ablation-CAM)
        weights = spec.channel_weights(model.module, model.layer_module(layer), x,
                                       fp.activation_tensors[layer], target, size, progress, cancel,
                                       vit=model.spec.family == "vit", guard=guard,
                                       **({"level": level} if level and spec.per_fpn_level else {}))
        return _combine(weights[:, :, None, None] * acts, eigen_smooth)


class OwnPass:
    """FullGrad, ShapleyCAM, FinerCAM: pytorch-grad-cam's class runs its own pass as is."""

    def maps(self, ex: Explainer, spec: MethodSpec, layer: str, eigen_smooth: bool,
             progress: Progress | None, cancel: threading.Event | None) -> Maps:
        model = ex.model
        layers = [] if spec.layer_independent else [model.layer_module(layer)]
        with modellock.hold(model.lock, model.spec.key, f"{spec.label} on {layer}", progress, cancel), \
                torch.enable_grad():
            cam = spec.cls(model.module, layers, reshape_transform=None if spec.layer_independent else ex.reshape)
            try:
                input_map = spec.own_pass_call(cam, ex.x.to(model.device), ex.grad_target, ex.target,
                                               ex.aug_smooth, eigen_smooth)[0]
            finally:
                # Not `with`: its __exit__ swallows IndexError. Release hooks ourselves.
                _release(cam)
                model.module.zero_grad(set_to_none=True)
        return input_map[None], _to_image(ex, input_map)  # the library keeps no raw map


def _release(cam: object) -> None:
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


_BY_KIND: dict[Kind, Strategy] = {
    Kind.GRADIENT: FromPass(),
    Kind.ACTIVATION: FromPass(),
    Kind.PERTURBATION: Perturbation(),
    Kind.OWN_PASS: OwnPass(),
}


def strategy_for(spec: MethodSpec) -> Strategy:
    """The strategy of the method's registry kind."""
    return _BY_KIND[spec.kind]
