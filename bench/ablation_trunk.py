"""Benchmark: Ablation-CAM with its copies sharing the layers before the ablated one (one input
image per batch, perturbation._trunk_can_be_shared) against every copy a whole forward (as before,
and as pytorch-grad-cam runs it), both in this run, on the same Explainer settings. Untrained
weights (speed does not depend on them); the two maps must be equal.

    .venv/bin/python bench/ablation_trunk.py                       # DeiT-tiny and EfficientNet-Lite0
    .venv/bin/python bench/ablation_trunk.py --cases deeplabv3:layer4 --size 128
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from camcore import engine, images, models, perturbation  # noqa: E402

CASES = "deit_tiny:block10,deit_tiny:block2,efficientnet_lite0:stage5,efficientnet_lite0:stage2"


def _timed(loaded, img, layer: str, size: int | None, batch: int) -> tuple[float, np.ndarray]:
    ex = engine.Explainer(loaded, img, None, (layer,), False, size, batch_size=batch)
    start = time.perf_counter()
    heatmap = ex.heatmap("ablationcam", layer)
    return time.perf_counter() - start, heatmap.map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=CASES, help="model:layer,...")
    ap.add_argument("--size", type=int, help="the input's short side (default: the model's)")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    img = images.from_array(skimage.data.astronaut())
    can_share = perturbation._trunk_can_be_shared
    for case in args.cases.split(","):
        model_key, layer = case.split(":")
        loaded = models.load_model(model_key, "untrained", None)
        shared_s, shared = _timed(loaded, img, layer, args.size, args.batch)
        perturbation._trunk_can_be_shared = lambda *_: False  # every copy a whole forward
        try:
            whole_s, whole = _timed(loaded, img, layer, args.size, args.batch)
        finally:
            perturbation._trunk_can_be_shared = can_share
        print(f"ablationcam {case}: shared trunk {shared_s:.2f} s, every copy a whole forward {whole_s:.2f} s "
              f"-> {shared_s / whole_s:.2f}x; maps differ by {float(np.abs(shared - whole).max()):.1e}", flush=True)


if __name__ == "__main__":
    main()
