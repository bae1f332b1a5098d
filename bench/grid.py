"""Benchmark: the layer x method grid, ours (one shared pass) vs pytorch-grad-cam the article's way
(one CAM object and call per method and layer), against the floor (one forward + backward).

    .venv/bin/python bench/grid.py --quick      # small sizes, CPU, under a minute or two
    .venv/bin/python bench/grid.py              # DeepLabV3 at 520 on the short side, DeiT-tiny
    .venv/bin/python bench/grid.py --skip-grid --perturbation deeplabv3:layer4   # ScoreCAM/AblationCAM

First, Score-CAM and Ablation-CAM on --perturbation against the same number of batched forwards.

Untrained weights (speed does not depend on them). Last line:
grid_vs_floor=<ratio> speedup_vs_reference=<ratio> maxdiff=<value>
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

from camcore import engine, images, methods, models, perturbation  # noqa: E402

GRID_METHODS = ("gradcam", "gradcam++", "xgradcam", "eigencam", "eigengradcam", "layercam")


def floor_seconds(loaded: models.LoadedModel, x: torch.Tensor, target) -> float:
    """One forward + backward of the model, nothing else: the least any CAM grid can cost."""
    start = time.perf_counter()
    with torch.enable_grad():
        x = x.to(loaded.device).requires_grad_(True)
        out = loaded.module(x)[0]
        target(out).backward()
    loaded.module.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def reference_grid(loaded, x, target, layers, reshape) -> tuple[float, dict]:
    maps = {}
    start = time.perf_counter()
    for m in GRID_METHODS:
        cls = methods.METHODS[m].cls
        for layer in layers:
            with cls(loaded.module, [loaded.layer_module(layer)], reshape_transform=reshape) as cam:
                maps[m, layer] = cam(x, [target])[0]
    return time.perf_counter() - start, maps


def eigen_reference_flipped(ex: engine.Explainer, m: str, layer: str) -> np.ndarray:
    """The library's map for the other sign of the principal direction."""
    acts, grads = ex.fp.activations[layer], ex.fp.gradients[layer]
    proj = -get_2d_projection(acts if m == "eigencam" else grads * acts)
    return engine.normalise_like_library(proj, ex.input_hw)[0]


def run(model_key: str, size: int | None, layers: list[str], repeats: int) -> tuple[float, float, float]:
    loaded = models.load_model(model_key, "untrained")
    img = images.from_array(skimage.data.astronaut())
    ours_times, floors = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ex = engine.Explainer(loaded, img, None, tuple(layers), False, size)
        hms, errors = ex.heatmaps(GRID_METHODS, layers)
        ours_times.append(time.perf_counter() - start)
        assert not errors, errors
        floors.append(floor_seconds(loaded, ex.x, ex.grad_target))
    # switching method or layer after the pass: a new map from the kept activations
    ex2 = engine.Explainer(loaded, img, None, tuple(layers), False, size)
    start = time.perf_counter()
    ex2.heatmap("gradcam++", layers[0])
    switch = time.perf_counter() - start
    ref_time, ref_maps = reference_grid(loaded, ex.x, ex.grad_target, layers, ex.reshape)
    maxdiff = 0.0
    for h in hms:
        ours = engine.normalise_like_library(np.maximum(h.raw[None], 0), ex.input_hw)[0]
        diff = float(np.abs(ours - ref_maps[h.method, h.layer]).max())
        if methods.METHODS[h.method].projection:
            diff = min(diff, float(np.abs(ours - eigen_reference_flipped(ex, h.method, h.layer)).max()))
        maxdiff = max(maxdiff, diff)
    ours_t, floor_t = min(ours_times), min(floors)
    print(f"{model_key:10s} input {ex.input_hw[1]}x{ex.input_hw[0]} layers {','.join(layers)}: "
          f"floor {floor_t:.2f}s  ours {ours_t:.2f}s ({ours_t / floor_t:.2f}x floor)  "
          f"reference {ref_time:.2f}s ({ref_time / ours_t:.1f}x slower)  switch {switch * 1000:.0f} ms  "
          f"maxdiff {maxdiff:.2e}")
    return ours_t / floor_t, ref_time / ours_t, maxdiff


def perturbation_vs_forwards(model_key: str, layer: str, batch: int, input_size: int | None = None,
                             device: str | None = None) -> dict[str, float]:
    """Score-CAM and Ablation-CAM (ours, one map each) against their limit: the same number of
    forwards (one per channel of the layer), run in batches of the same size, nothing else."""
    loaded = models.load_model(model_key, "untrained", device)
    img = images.from_array(skimage.data.astronaut())
    ex = engine.Explainer(loaded, img, None, (layer,), False, input_size, batch_size=batch)
    channels = ex.fp.activations[layer].shape[1]
    x = ex.x.to(loaded.device)
    size = perturbation.default_batch_size(loaded.device, ex.input_hw, batch)

    def sync():
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        loaded.module(x.repeat(min(size, channels), 1, 1, 1))  # warm-up at the batch shape
        sync()
        start = time.perf_counter()
        for i in range(0, channels, size):
            loaded.module(x.repeat(min(size, channels - i), 1, 1, 1))
        sync()
    forwards = time.perf_counter() - start
    ratios = {}
    for m in ("scorecam", "ablationcam"):
        start = time.perf_counter()
        ex.heatmap(m, layer)
        sync()
        ours = time.perf_counter() - start
        ratios[m] = ours / forwards
        print(f"{m:11s} {model_key}.{layer} ({channels} channels, batch {size}): ours {ours:.2f}s, "
              f"{channels} batched forwards {forwards:.2f}s -> {ours / forwards:.2f}x")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes that run on a CPU quickly")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--perturbation", default="deit_tiny:block11",
                        help="MODEL:LAYER for Score-CAM / Ablation-CAM vs their batched forwards "
                             "(deeplabv3:layer4 is the issue's case: 2048 forwards, for a GPU)")
    parser.add_argument("--perturbation-batch", type=int, default=64)
    parser.add_argument("--skip-grid", action="store_true", help="only the perturbation part")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device {models.default_device()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    model_key, layer = args.perturbation.split(":")
    perturbation_vs_forwards(model_key, layer, args.perturbation_batch)
    if args.skip_grid:
        return
    results = [
        run("deeplabv3", 160 if args.quick else 520, ["layer1", "layer2", "layer3", "layer4"], args.repeats),
        run("deit_tiny", None, ["block0", "block5", "block11"] if args.quick else [f"block{i}" for i in range(12)],
            args.repeats),
    ]
    grid_vs_floor = max(r[0] for r in results)
    speedup = min(r[1] for r in results)
    maxdiff = max(r[2] for r in results)
    print(f"grid_vs_floor={grid_vs_floor:.2f} speedup_vs_reference={speedup:.1f} maxdiff={maxdiff:.2e}")


if __name__ == "__main__":
    main()
