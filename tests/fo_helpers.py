"""Shared builders for the FiftyOne tests: tiny image datasets and synthetic CamResults."""
from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import cv2
import numpy as np

from camcore.identity import HeatmapIdentity
from camcore.results import CamResult, ClassScore, Heatmap, Prediction, Target


def write_images(folder: Path, names: list[str], size: tuple[int, int] = (24, 32)) -> list[str]:
    """Small real RGB files on disk (FiftyOne only stores paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate(names):
        path = folder / name
        image = np.full((*size, 3), 40 * i % 255, np.uint8)
        assert cv2.imwrite(str(path), image)
        out.append(str(path))
    return out


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def synthetic_map(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.random(size, dtype=np.float32)
    m[0, 0], m[-1, -1] = 0.0, 1.0  # both ends of the range present
    return m


def make_heatmap(
    size, method="gradcam", layer="layer4", target=None, seed=0, raw_range=(0.0, 3.5), eigen_smooth=False,
    model="resnet50", weights="ImageNet (torchvision)",
) -> Heatmap:
    """A synthetic heatmap; its identity names `model` (make_result's default model too)."""
    target = target or Target(281, "tabby cat", "chosen")
    m = synthetic_map(size, seed)
    identity = HeatmapIdentity(model=model, method=method, layer=layer, target=target.name, weights=weights,
                               input_size=224, eigen_smooth=eigen_smooth)
    return Heatmap(identity=identity, target=target, map=m, raw=m[::4, ::4].copy(),
                   raw_range=raw_range, seconds=0.01)


def with_identity(h: Heatmap, **changes) -> Heatmap:
    """`h` with its identity changed (weights, pretrained, smoothing, weights tag...): what
    another model, weights file or option would have made."""
    return dataclasses.replace(h, identity=dataclasses.replace(h.identity, **changes))


def coded_identity(*, model: str, method: str, layer: str, target: str, **identity) -> HeatmapIdentity:
    """The identity of a map of this (model, method, layer, target) with the registries' codes, as
    the engine and a batch build it (a model not in the registry: none, its parts named by keys)."""
    from camcore.identity import codes
    from camcore.methods import get_method
    from camcore.models import MODELS

    spec = MODELS.get(model)
    named = codes(spec, get_method(method), layer) if spec is not None else {}
    return HeatmapIdentity(model=model, method=method, layer=layer, target=target, **identity, **named)


def field_name(model: str, method: str, layer: str, target: str, **identity) -> str:
    """The field a map of this (model, method, layer, target) lives in (see coded_identity)."""
    return coded_identity(model=model, method=method, layer=layer, target=target, **identity).field_name


def make_result(size, heatmaps, model="resnet50", weights="ImageNet (torchvision)") -> CamResult:
    target = heatmaps[0].target
    prediction = Prediction("classification", (ClassScore(target.index, target.name, 0.8),))
    return CamResult(model=model, weights=weights, pretrained=True, image_size=tuple(size),
                     input_size=(224, 224), prediction=prediction,
                     target=target, heatmaps=tuple(heatmaps))
