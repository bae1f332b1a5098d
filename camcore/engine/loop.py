"""The one method x layer loop: the app, the CLI and the batch all walk heatmaps through it.

iter_heatmaps() yields one HeatmapStep per requested (method, layer) pair, in order: the
heatmap, or why it failed. A failing pair never stops the others; only a cancel does.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from camcore.engine.passes import Progress
from camcore.errors import CamError, Cancelled, MethodError
from camcore.methods import get_method
from camcore.results import Heatmap

if TYPE_CHECKING:
    from camcore.engine.explainer import Explainer

# (index of the pair, method, layer) -> the progress callback for that pair's heatmap, or None
PairProgress = Callable[[int, str, str], Progress | None]


@dataclass(frozen=True)
class HeatmapStep:
    """One (method, layer) pair's outcome: a heatmap, or the error that stopped it."""

    index: int  # the pair's position in the pairs given
    method: str  # as given
    layer: str  # as given
    heatmap: Heatmap | None = None
    exception: CamError | None = None
    seconds: float = 0.0  # wall time of this step (about 0 for a memoised map)
    repeat: bool = False  # this heatmap was yielded before (a layer-independent method on another layer)

    @property
    def error(self) -> str | None:
        """'<method> on <layer>: <why>', or None on success."""
        return None if self.exception is None else f"{self.method} on {self.layer}: {self.exception}"


def grid_pairs(methods: Iterable[str], layers: Iterable[str]) -> list[tuple[str, str]]:
    """Every method on every layer: methods outer, layers inner."""
    layers = list(layers)
    return [(m, layer) for m in methods for layer in layers]


def iter_heatmaps(
    explainer: Explainer,
    pairs: Iterable[tuple[str, str]],
    eigen_smooth: bool = False,
    progress_for: PairProgress | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[HeatmapStep]:
    """Compute each (method, layer) pair with explainer.heatmap, one step per pair.

    Raises Cancelled before a pair when `cancel` is set (and lets one raised inside a heatmap
    through); every other CamError becomes a step with `exception` set. progress_for(i, method,
    layer) is called just before pair i is computed, never for an unknown or unsupported method,
    so a caller can announce slow work only for what will run."""
    seen: set[tuple[str, str]] = set()
    task, family = explainer.model.spec.task, explainer.model.spec.family
    for i, (method, layer) in enumerate(pairs):
        if cancel is not None and cancel.is_set():
            raise Cancelled("Cancelled.")
        started = time.perf_counter()
        try:
            reason = get_method(method).unsupported_reason(task, family)
            if reason:
                raise MethodError(reason)
            progress = progress_for(i, method, layer) if progress_for is not None else None
            h = explainer.heatmap(method, layer, eigen_smooth, progress, cancel)
        except Cancelled:
            raise
        except CamError as exc:
            yield HeatmapStep(i, method, layer, exception=exc, seconds=time.perf_counter() - started)
            continue
        repeat = (h.method, h.layer) in seen
        seen.add((h.method, h.layer))
        yield HeatmapStep(i, method, layer, heatmap=h, seconds=time.perf_counter() - started, repeat=repeat)


def collect(steps: Iterable[HeatmapStep]) -> tuple[list[Heatmap], list[str]]:
    """(each heatmap once, in order; the error lines of the pairs that failed)."""
    heatmaps: list[Heatmap] = []
    errors: list[str] = []
    for step in steps:
        if step.heatmap is None:
            errors.append(str(step.error))
        elif not step.repeat:
            heatmaps.append(step.heatmap)
    return heatmaps, errors
