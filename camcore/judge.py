"""Across samples: rank a view by where the model looks for one class (object or background?).

For each sample: a pass for the class (images stacked into batched passes), one heatmap, the
object's mask (a ground-truth segmentation mask or boxes from a label field when given, else the
predicted mask of a segmentation model), the share of heatmap mass inside it. Ranked worst first,
so background-biased samples come to the top.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from camcore import engine, images, metrics
from camcore.errors import CamError, Cancelled
from camcore.models import LoadedModel
from camcore.progress import rate_line
from camcore.results import Heatmap


@dataclass(frozen=True)
class SampleItem:
    sample_id: str
    filepath: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # relative [x, y, w, h] of the object
    mask: np.ndarray | None = None  # the object's ground-truth mask (any resolution), or None


@dataclass(frozen=True)
class RankRow:
    sample_id: str
    filepath: str
    share_inside: float | None  # None: no object mask for this sample
    background_dominated: bool
    heatmap: Heatmap | None
    mask_source: str
    error: str = ""


BACKGROUND_NAMES = {"background", "__background__", "bg", "0"}


def match_object_label(labels: Sequence[str], class_name: str) -> int | None:
    """Index of the user's label that names the model's class, or None when none does.

    Whole words, either way round: "cat" for "tabby cat", "tabby cat" for "cat"; never a
    background class. Label names rarely equal the model's classes, and guessing an unrelated
    label (ranking "jersey" heatmaps against "cat" boxes) is worse than asking."""
    wanted = class_name.lower()

    def contains(text: str, part: str) -> bool:
        return re.search(r"(?<![a-z0-9])" + re.escape(part) + r"(?![a-z0-9])", text) is not None

    for i, label in enumerate(labels):
        name = str(label).lower().strip()
        if name and name not in BACKGROUND_NAMES and (contains(wanted, name) or contains(name, wanted)):
            return i
    return None


def guess_object_label(labels: Sequence[str], class_name: str) -> int:
    """`match_object_label`, else the first label that is not a background class, else 0.
    (The UI asks instead of taking this fallback: see `match_object_label`.)"""
    found = match_object_label(labels, class_name)
    if found is not None:
        return found
    return next((i for i, label in enumerate(labels) if str(label).lower() not in BACKGROUND_NAMES), 0)


def object_mask(ex: engine.Explainer, item: SampleItem) -> tuple[np.ndarray | None, str]:
    """The object's mask at the image's resolution, and where it came from."""
    if item.mask is not None:
        h, w = ex.image.size
        mask = cv2.resize(np.asarray(item.mask, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        return (mask, "label mask") if mask.any() else (None, "class not in the label mask")
    if ex.prediction.task == "segmentation":
        predicted = np.asarray(ex.prediction.mask) == ex.target.index
        return (predicted, "predicted mask") if predicted.any() else (None, "class not predicted")
    if item.boxes:
        return metrics.boxes_mask(ex.image.size, [list(b) for b in item.boxes]), "label boxes"
    if ex.prediction.task == "detection" and ex.target.boxes:  # a detector's own object: the box it explains
        h, w = ex.image.size
        return metrics.boxes_mask((h, w), [[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]
                                           for x0, y0, x1, y1 in ex.target.boxes]), "explained box"
    return None, "no boxes for this class"


def rank_by_share_inside(
    model: LoadedModel,
    items: Sequence[SampleItem],
    method: str,
    layer: str,
    target: str,
    threshold: float = metrics.DEFAULT_BACKGROUND_THRESHOLD,
    input_size: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    batch: int = 8,
) -> list[RankRow]:
    """Samples ranked by the share of heatmap mass inside the object, worst first."""
    rows: list[RankRow] = []
    started = time.perf_counter()

    def tell(doing: str) -> None:  # per sample, with a rate and what is left once one is done
        if progress:
            progress(len(rows) / max(1, len(items)), f"{rate_line(len(rows), len(items), started)} · {doing}")

    for start in range(0, len(items), batch):
        if cancel is not None and cancel.is_set():
            raise Cancelled("Ranking cancelled.")
        group = items[start:start + batch]
        tell(f"running the model on samples {start + 1:,}-{start + len(group):,} (one pass for {len(group)})")
        loaded = []
        for item in group:
            try:
                loaded.append((item, images.load_image(item.filepath)))
            except CamError as exc:  # one bad image must not stop the ranking
                rows.append(RankRow(item.sample_id, item.filepath, None, False, None, "", str(exc)))
        explainers = engine.explain_many(model, [img for _i, img in loaded], target, (layer,), input_size, batch)
        for (item, _img), ex in zip(loaded, explainers, strict=True):
            try:
                if isinstance(ex, CamError):
                    raise ex
                h = ex.heatmap(method, layer)
                mask, source = object_mask(ex, item)
                share = metrics.mass_inside(h.map, mask) if mask is not None else None
                flagged = share is not None and metrics.background_dominated(share, threshold)
                rows.append(RankRow(item.sample_id, item.filepath, share, flagged, h, source))
            except CamError as exc:
                rows.append(RankRow(item.sample_id, item.filepath, None, False, None, "", str(exc)))
            tell(f"{method} on {layer}")
    if progress:
        progress(1.0, "done")
    return sorted(rows, key=lambda r: (r.share_inside is None, r.share_inside if r.share_inside is not None else 0))
