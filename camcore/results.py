"""Frozen results that flow from camcore to the UI, the CLI and the store."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from camcore.identity import HeatmapIdentity


@dataclass(frozen=True)
class ClassScore:
    index: int
    name: str
    score: float  # softmax probability (classification) or pixel share (segmentation)


@dataclass(frozen=True)
class Prediction:
    """What the model predicts for the image, before any CAM."""

    task: str  # "classification" | "segmentation"
    classes: tuple[ClassScore, ...]  # top-k, best first; segmentation: classes found, largest first
    mask: np.ndarray | None = None  # segmentation: HxW int32 class index at the image's resolution
    boxes: tuple = ()  # detection: every camcore.detection.Detection of the output, best first

    @property
    def top(self) -> ClassScore | None:
        return self.classes[0] if self.classes else None

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "classes": [{"index": c.index, "name": c.name, "score": c.score} for c in self.classes],
            **({"boxes": [d.to_dict() for d in self.boxes]} if self.task == "detection" else {}),
        }


@dataclass(frozen=True)
class Target:
    """What a heatmap explains."""

    index: int
    name: str
    rule: str  # how it was chosen: "chosen", "default: predicted top-1", ...
    note: str = ""  # e.g. "class not predicted anywhere: explained over the whole image"
    # detection: the explained box(es) in image pixels (x1, y1, x2, y2), which box ("det0",
    # "class:dog", "ground_truth/<id>"), the matched detection's score and IoU
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    box_ref: str = ""
    score: float | None = None
    iou: float | None = None

    @property
    def identity_name(self) -> str:
        """The target part of a heatmap's identity (its field name): the class, and for a box which box."""
        return f"{self.name} {self.box_ref}" if self.box_ref else self.name

    def to_dict(self) -> dict:
        base = {"index": self.index, "name": self.name, "rule": self.rule, "note": self.note}
        if self.box_ref:
            base.update(box_ref=self.box_ref, boxes=[list(b) for b in self.boxes], score=self.score, iou=self.iou)
        return base


@dataclass(frozen=True)
class Heatmap:
    """One CAM: a method on a layer for a target, made by what its identity says."""

    identity: HeatmapIdentity  # model, weights, method, layer, target, smoothing: its field name too
    target: Target
    map: np.ndarray  # float32 HxW at the image's own resolution, 0..1
    raw: np.ndarray  # float32 map at the layer's resolution, clipped at 0, before normalisation
    raw_range: tuple[float, float]  # (min, max) of `raw`
    seconds: float  # time spent on this map alone (after the shared pass)

    @property
    def method(self) -> str:
        return self.identity.method

    @property
    def layer(self) -> str:
        return self.identity.layer

    @property
    def aug_smooth(self) -> bool:
        return self.identity.aug_smooth

    @property
    def eigen_smooth(self) -> bool:
        return self.identity.eigen_smooth

    @property
    def field(self) -> str:
        """The FiftyOne field a push writes this map into."""
        return self.identity.field_name

    @property
    def label(self) -> str:
        return f"{self.method} · {self.layer} · {self.target.name}"

    @property
    def blank(self) -> bool:
        """Nothing to show: the CAM was zero (or negative, then clipped) everywhere. Common with
        untrained weights, tiny inputs, or a target with no positive evidence at that layer."""
        return not float(np.max(self.map, initial=0.0)) > 0.0

    BLANK_NOTE = ("blank map: the CAM is zero everywhere (no positive evidence for this target at "
                  "this layer; try another layer, method or class)")


@dataclass(frozen=True)
class CamResult:
    """Everything one request produced for one image."""

    model: str
    weights: str  # human label of the weights that made it, e.g. "untrained (random)"
    pretrained: bool
    image_size: tuple[int, int]  # (height, width) of the image
    input_size: tuple[int, int]  # (height, width) of the tensor the model saw
    prediction: Prediction
    target: Target
    heatmaps: tuple[Heatmap, ...]
    timings: dict[str, float] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # per-(method, layer) failures that did not stop the others
    notes: tuple[str, ...] = ()  # what was done to the image (EXIF rotation, downscaled, ...): not errors
    original_size: tuple[int, int] | None = None  # the file's (height, width) when it was downscaled

    @property
    def full_size(self) -> tuple[int, int]:
        """(height, width) of the image file: what stored and written heatmaps must have."""
        height, width = self.original_size or self.image_size
        return (height, width)

    def full_map(self, h: Heatmap) -> np.ndarray:
        """h.map at the file's own resolution: images over MAX_WORKING_SIDE are computed
        downscaled, and their maps are scaled back up here, for the store and the CLI."""
        if self.full_size == tuple(h.map.shape):
            return h.map
        import cv2

        height, width = self.full_size
        up = cv2.resize(h.map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(up, 0.0, 1.0)

    def find(self, method: str, layer: str) -> Heatmap | None:
        for h in self.heatmaps:
            if h.method == method and h.layer == layer:
                return h
        return None
