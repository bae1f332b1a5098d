"""Shared helpers for the engine, reference and CLI tests: test images and pytorch-grad-cam's
own computation of a map (the reference we compare against)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.utils.image import scale_cam_image

from camcore.images import LoadedImage, from_array


def skimage_data(name: str) -> Path:
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "scikit-image is a test requirement"
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


CHELSEA = skimage_data("chelsea.png")

# Hand-checked on chelsea.png (451 x 300): the cat's eyes, nose and muzzle. Right of x=385 is
# blurred background; the top-left corner is ear/fur/background.
FACE_BOX = (120, 70, 370, 295)  # x0, y0, x1, y1


@functools.cache
def chelsea_rgb() -> np.ndarray:
    with Image.open(CHELSEA) as im:
        return np.asarray(im.convert("RGB")).copy()


def chelsea() -> LoadedImage:
    return from_array(chelsea_rgb(), str(CHELSEA))


def chelsea_crop(size: int = 224) -> LoadedImage:
    """A size x size crop centred on the cat's face: square models see it without resizing."""
    rgb = chelsea_rgb()
    cy, cx = 182, 245
    h = size // 2
    crop = rgb[max(0, cy - h) : cy - h + size, max(0, cx - h) : cx - h + size]
    if crop.shape[:2] != (size, size):
        crop = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return from_array(np.ascontiguousarray(crop), "chelsea-crop")


def chelsea_small(h: int, w: int) -> LoadedImage:
    """Chelsea resized to h x w (for the segmentation model at an input of exactly that size)."""
    return from_array(cv2.resize(chelsea_rgb(), (w, h), interpolation=cv2.INTER_AREA), f"chelsea-{h}x{w}")


def library_normalise(cam: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam 1.5.7's normalisation for one target layer, spelled out from BaseCAM:
    compute_cam_per_layer (clip, scale to the input size) then aggregate_multi_layers."""
    cam = np.maximum(cam, 0)
    scaled = scale_cam_image(cam, (input_hw[1], input_hw[0]))[:, None, :]
    stacked = np.maximum(np.concatenate([scaled], axis=1), 0)
    return scale_cam_image(np.mean(stacked, axis=1))


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module):
    """Parameters without requires_grad while the library runs.

    The library's loss.backward() otherwise computes every weight gradient of the network
    (seconds for DeepLabV3 on 2 cores). The gradients it records are those of the hooked layer
    outputs, which do not depend on whether weights require grad: the input requires grad
    instead, so the graph still reaches the layers. Restores the flags afterwards.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def library_reference(
    cls, model, layer_module, x, target, reshape, eigen_smooth=False, aug_smooth=False, seed=None, **kwargs
):
    """(the library's map for this call, the raw 1 x h x w map the library normalised).

    The raw map is what the library's own get_cam_image returned inside the call (captured, not
    recomputed), so eigen methods can be compared up to the sign of the projection. With
    aug_smooth it is the last augmentation's.
    """
    raw = []
    x = x.detach().clone().requires_grad_(True)
    with frozen_parameters(model):
        cam = cls(model, [layer_module], reshape_transform=reshape, **kwargs)
        library_get_cam_image = cam.get_cam_image

        def capture(*args, **kw):
            out = library_get_cam_image(*args, **kw)
            raw.append(np.array(out, copy=True))
            return out

        cam.get_cam_image = capture
        try:  # not `with`: its __exit__ swallows IndexError
            if seed is not None:
                np.random.seed(seed)
            ref = cam(x, [target], aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
    return ref[0], (raw[-1] if raw else None)


def hook_count(module: torch.nn.Module) -> int:
    total = 0
    for m in module.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            total += len(getattr(m, name, {}) or {})
    return total
