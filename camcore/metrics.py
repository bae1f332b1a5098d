"""Scores of one heatmap: does the model rely on what it highlights, and is that the object?

Faithfulness comes from pytorch_grad_cam.metrics (the reference), run on the model's input:
  - confidence change when the image is multiplied by the map, and by one minus the map
    (CamMultImageConfidenceChange): a faithful map keeps the score when only its highlight is
    kept and drops it when the highlight is removed. One forward each: shown next to every map.
  - ROAD (Rong et al. 2022): remove the most / least relevant pixels with a noisy linear
    imputation and watch the score; combined = (LeRF - MoRF) / 2, higher is more faithful.
    A sparse solve per point: seconds, computed on request.
The bias helper measures the share of heatmap mass inside the object's mask.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst

from camcore.defaults import DEFAULT_BACKGROUND_THRESHOLD as DEFAULT_BACKGROUND_THRESHOLD  # re-exported
from camcore.models import LoadedModel

ROAD_PERCENTILES = (20, 40, 60, 80)


@dataclass(frozen=True)
class Faithfulness:
    """Cheap scores (one forward each), shown next to every heatmap."""

    original_score: float  # the target's score on the unchanged input
    keep_change: float  # score change when the image is multiplied by the map (keep the highlight)
    remove_change: float  # score change when multiplied by (1 - map) (remove the highlight)

    @property
    def relies_on_highlight(self) -> bool:
        """Removing the highlight hurts more than keeping only it."""
        return self.remove_change < self.keep_change

    @property
    def keep_relative(self) -> float | None:
        """keep_change as a fraction of the original score (see relative_change)."""
        return relative_change(self.keep_change, self.original_score)

    @property
    def remove_relative(self) -> float | None:
        """remove_change as a fraction of the original score (see relative_change)."""
        return relative_change(self.remove_change, self.original_score)


def relative_change(change: float, original: float, eps: float = 1e-6) -> float | None:
    """A score change on a scale that compares across models and targets: the fraction of the
    original score's magnitude (-0.12: the score fell by 12% of what it was). A classifier's
    score is a logit, a segmentation target's is a sum over its mask (thousands): the raw
    changes are not comparable, the relative ones are. None where the original score is (about)
    zero or a value is not finite: no scale to compare with."""
    change, original = float(change), float(original)
    if not (math.isfinite(change) and math.isfinite(original)) or abs(original) < eps:
        return None
    return change / abs(original)


@dataclass(frozen=True)
class RoadCurve:
    """ROAD, slower (a sparse imputation per point): computed on request."""

    morf: tuple[tuple[int, float], ...]  # (percentile, score change), most relevant removed first
    lerf: tuple[tuple[int, float], ...]  # least relevant removed first
    combined: float  # mean of (LeRF - MoRF) / 2: higher is more faithful
    original_score: float = math.nan  # the target's score on the unchanged input (for relative_change)

    def relative(self, points: tuple[tuple[int, float], ...]) -> list[tuple[int, float | None]]:
        """(percentile, change as a fraction of the original score) for morf or lerf."""
        return [(p, relative_change(v, self.original_score)) for p, v in points]


def input_map(heatmap: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """The 0..1 map at the model input's resolution, as the metrics expect it."""
    return cv2.resize(heatmap.astype(np.float32), (input_hw[1], input_hw[0]), interpolation=cv2.INTER_LINEAR)


def _cams(x: torch.Tensor, heatmap: np.ndarray) -> np.ndarray:
    return input_map(heatmap, (int(x.shape[-2]), int(x.shape[-1])))[None]


FAITH_ROWS = 8  # perturbed inputs per batched forward of the faithfulness scores


def target_score(model: LoadedModel, x: torch.Tensor, target) -> float:
    """The target's score on the unchanged input: one forward (an Explainer has it from its pass)."""
    with model.lock, torch.no_grad():
        model.module.eval()
        return float(target(model.module(x.to(model.device))[0]).detach().float().cpu())


def faithfulness(model: LoadedModel, x: torch.Tensor, heatmap: np.ndarray, target,
                 original: float | None = None) -> Faithfulness:
    """Confidence change keeping / removing what one heatmap (image resolution, 0..1) highlights."""
    return faithfulness_many(model, x, [heatmap], target, original)[0]


def faithfulness_many(model: LoadedModel, x: torch.Tensor, heatmaps: Sequence[np.ndarray], target,
                      original: float | None = None) -> list[Faithfulness]:
    """faithfulness of several heatmaps of one input and target, as pytorch_grad_cam's
    CamMultImageConfidenceChange computes it (the target's score on the input multiplied by the map,
    and by one minus it, less its score on the input), with the perturbed inputs in batched forwards
    and the unchanged input's score computed once (or given: the shared pass's output has it). The
    library's metric runs the unchanged input again on each call: five forwards a map, here two
    rows of a batch."""
    x = x.to(model.device)
    if original is None:
        original = target_score(model, x, target)
    rows = []
    for heatmap in heatmaps:
        cam = torch.from_numpy(_cams(x, heatmap)[0]).to(x.device)
        rows += [x[0] * cam, x[0] * (1.0 - cam)]
    scores: list[float] = []
    with model.lock, torch.no_grad():
        model.module.eval()
        for start in range(0, len(rows), FAITH_ROWS):
            out = model.module(torch.stack(rows[start:start + FAITH_ROWS]))
            scores += [float(target(o).detach().float().cpu()) for o in out]
    return [Faithfulness(original, scores[2 * i] - original, scores[2 * i + 1] - original)
            for i in range(len(heatmaps))]


def road(model: LoadedModel, x: torch.Tensor, heatmap: np.ndarray, target, percentiles=ROAD_PERCENTILES,
         progress: Callable[[float, str], None] | None = None, original: float | None = None) -> RoadCurve:
    """ROAD most- and least-relevant-first curves and their combined score.
    progress(fraction done, message) is called before each point (a sparse solve each). The
    library's metric scores the unchanged input on every call: asked for the imputed score only
    (return_diff=False), the original is scored once (or given)."""
    x = x.to(model.device)
    cams = _cams(x, heatmap)
    if original is None:
        original = target_score(model, x, target)
    points = [(kind, p) for kind in ("MoRF", "LeRF") for p in percentiles]
    values: dict[tuple[str, int], float] = {}
    with model.lock, torch.no_grad():
        model.module.eval()
        for i, (kind, p) in enumerate(points):
            if progress is not None:
                progress(i / len(points), f"{kind}: {p}% of the pixels removed ({i + 1}/{len(points)})")
            metric = ROADMostRelevantFirst(p) if kind == "MoRF" else ROADLeastRelevantFirst(p)
            values[kind, p] = float(metric(x, cams, [target], model.module, return_diff=False)[0]) - original
    if progress is not None:
        progress(1.0, "done")
    morf = [(p, values["MoRF", p]) for p in percentiles]
    lerf = [(p, values["LeRF", p]) for p in percentiles]
    combined = float(np.mean([(le - mo) / 2 for (_, le), (_, mo) in zip(lerf, morf, strict=True)]))
    return RoadCurve(tuple(morf), tuple(lerf), combined, original)


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share (0..1) of the heatmap's mass that falls inside the object mask."""
    if mask.shape != heatmap.shape:
        mask = cv2.resize(mask.astype(np.uint8), (heatmap.shape[1], heatmap.shape[0]),
                          interpolation=cv2.INTER_NEAREST)
    total = float(heatmap.sum())
    if total <= 0:
        return 0.0
    return float(heatmap[mask.astype(bool)].sum() / total)


def background_dominated(share_inside: float, threshold: float = DEFAULT_BACKGROUND_THRESHOLD) -> bool:
    return share_inside < threshold


def boxes_mask(shape: tuple[int, int], boxes: list[list[float]]) -> np.ndarray:
    """A bool mask of FiftyOne boxes ([x, y, w, h] relative to the image) at (height, width)."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, bw, bh in boxes:
        c0, r0 = int(np.floor(x0 * w)), int(np.floor(y0 * h))
        c1, r1 = int(np.ceil((x0 + bw) * w)), int(np.ceil((y0 + bh) * h))
        mask[max(0, r0) : min(h, r1), max(0, c0) : min(w, c1)] = True
    return mask
