"""Compute once, render many.

One forward (and one backward when a gradient method is asked for) with hooks on every chosen
layer feeds every pure method (methods.py) on every layer: after that pass, switching method or
layer never runs the model again. Perturbation methods reuse the pass's activations and add their
own batched forwards; FullGrad, ShapleyCAM and FinerCAM run pytorch-grad-cam's own pass.

- passes.py: the shared pass (hooks, forward, backward) for one image or a batch;
- kept.py: one image's forward kept with its graph: another target of it costs one backward;
- kinds.py: one strategy per kind of method, chosen from the method registry;
- explainer.py: Explainer (one image, memoised heatmaps) and explain_many (batched passes);
- loop.py: iter_heatmaps, the one method x layer loop of the app, the CLI and the batch.
"""
from camcore.engine.explainer import (
    ALL_LAYERS,
    DEFAULT_PERTURBATION_BATCH,
    Deferred,
    Estimate,
    Explainer,
    explain_many,
)
from camcore.engine.kept import KeptForward
from camcore.engine.kinds import normalise_like_library, strategy_for
from camcore.engine.loop import HeatmapStep, PairProgress, collect, grid_pairs, iter_heatmaps
from camcore.engine.passes import FeaturePass, Progress, run_pass, run_pass_batch

__all__ = [
    "ALL_LAYERS",
    "DEFAULT_PERTURBATION_BATCH",
    "Deferred",
    "Estimate",
    "Explainer",
    "FeaturePass",
    "HeatmapStep",
    "KeptForward",
    "PairProgress",
    "Progress",
    "collect",
    "explain_many",
    "grid_pairs",
    "iter_heatmaps",
    "normalise_like_library",
    "run_pass",
    "run_pass_batch",
    "strategy_for",
]
