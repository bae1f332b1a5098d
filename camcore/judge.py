"""Judging heatmaps across samples: where does the model look for one class, object or background?

For each sample: one Explainer pass for the class, one heatmap, the object's mask (the predicted
mask for segmentation; boxes from a label field for classification), the share of heatmap mass
inside it. Ranked worst first, so background-biased samples come to the top.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from camcore import engine, images, metrics
from camcore.errors import CamError, Cancelled
from camcore.models import LoadedModel
from camcore.results import Heatmap


@dataclass(frozen=True)
class SampleItem:
    sample_id: str
    filepath: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # relative [x, y, w, h] of the object


@dataclass(frozen=True)
class RankRow:
    sample_id: str
    filepath: str
    share_inside: float | None  # None: no object mask for this sample
    background_dominated: bool
    heatmap: Heatmap | None
    mask_source: str
    error: str = ""


def object_mask(ex: engine.Explainer, item: SampleItem) -> tuple[np.ndarray | None, str]:
    """The object's mask at the image's resolution, and where it came from."""
    if ex.prediction.task == "segmentation":
        mask = ex.prediction.mask == ex.target.index
        return (mask, "predicted mask") if mask.any() else (None, "class not predicted")
    if item.boxes:
        return metrics.boxes_mask(ex.image.size, [list(b) for b in item.boxes]), "label boxes"
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
) -> list[RankRow]:
    """Samples ranked by the share of heatmap mass inside the object, worst first."""
    rows = []
    for i, item in enumerate(items):
        if cancel is not None and cancel.is_set():
            raise Cancelled("Ranking cancelled.")
        if progress:
            progress(i / max(1, len(items)), f"{i + 1}/{len(items)}: {item.filepath.rsplit('/', 1)[-1]}")
        try:
            img = images.load_image(item.filepath)
            ex = engine.Explainer(model, img, target, (layer,), False, input_size)
            h = ex.heatmap(method, layer)
            mask, source = object_mask(ex, item)
            share = metrics.mass_inside(h.map, mask) if mask is not None else None
            flagged = share is not None and metrics.background_dominated(share, threshold)
            rows.append(RankRow(item.sample_id, item.filepath, share, flagged, h, source))
        except CamError as exc:  # one bad image must not stop the ranking
            rows.append(RankRow(item.sample_id, item.filepath, None, False, None, "", str(exc)))
    if progress:
        progress(1.0, "done")
    return sorted(rows, key=lambda r: (r.share_inside is None, r.share_inside if r.share_inside is not None else 0))
