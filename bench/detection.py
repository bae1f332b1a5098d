"""Benchmark: explaining a detector's box (issue 24). For one detection model at a realistic input:
the box grid (every offered one-pass method x the layers) against the floor (one forward +
backward of the box score, no hooks), pytorch-grad-cam the tutorial's way (one CAM object and
call on the fused FPN: Eigen-CAM, the one its hooks can do there), and the cost of switching:
another method or layer of the same box (from the kept pass), and another box: with the session's kept forward (KeptForward: one
backward for Grad-CAM, nothing for Eigen-CAM) and, for comparison in the same run, without it (a
new forward + backward, as before issue 24's switch). Also the kept graph's memory.

    .venv/bin/python bench/detection.py --quick     # Faster R-CNN MobileNetV3 FPN at 320, CPU
    .venv/bin/python bench/detection.py             # Faster R-CNN ResNet-50 FPN v2 at 800

Untrained weights, score threshold lowered to 0 (speed does not depend on the weights; an
untrained detector scores its boxes low). Last line:
grid_vs_floor=<ratio> speedup_vs_reference=<ratio> switch_box_vs_floor=<ratio> switch_map_ms=<ms>
switch_box_fresh_vs_floor=<ratio> switch_box_eigen_ms=<ms> kept_graph_mb=<MB>
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import skimage.data  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform  # noqa: E402

from camcore import engine, images, methods, models  # noqa: E402

# pytorch-grad-cam's hooks get no gradient from a module whose output is a dict (the FPN's): its
# Grad-CAM on model.backbone fails ('NoneType' has no shape), which is why its tutorial uses Eigen-CAM.
REFERENCE_METHODS = ("eigencam",)


def low_threshold(loaded: models.LoadedModel) -> models.LoadedModel:
    for obj in (loaded.module, getattr(loaded.module, "roi_heads", None)):
        if obj is not None and hasattr(obj, "score_thresh"):
            obj.score_thresh = 0.0
    return loaded


def floor_seconds(loaded: models.LoadedModel, x: torch.Tensor, target) -> float:
    """One forward + backward of the box score, nothing else: the least any box's grid can cost."""
    start = time.perf_counter()
    with torch.enable_grad():
        out = loaded.module(x.to(loaded.device).requires_grad_(True))[0]
        target(out).backward()
    if loaded.device.type == "cuda":  # the kernels are queued: wait for them before the clock stops
        torch.cuda.synchronize()
    loaded.module.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def reference_seconds(loaded: models.LoadedModel, x: torch.Tensor, target) -> float:
    """pytorch-grad-cam's tutorial: a CAM object per method on model.backbone (the FPN), fused by
    fasterrcnn_reshape_transform, the box score target."""
    start = time.perf_counter()
    for m in REFERENCE_METHODS:
        with methods.METHODS[m].cls(loaded.module, [loaded.module.backbone],
                                    reshape_transform=fasterrcnn_reshape_transform) as cam:
            cam(x, [target])
    return time.perf_counter() - start


def kept_graph_mb(loaded: models.LoadedModel, img, layers: list[str], size: int) -> float:
    """What holding one image's forward with its graph costs: the device's allocated memory on a
    GPU, the process's resident memory on the CPU (rougher: the allocator keeps freed pages)."""
    gc.collect()
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(loaded.device)
    else:
        import psutil

        before = psutil.Process().memory_info().rss
    kept = engine.KeptForward()
    engine.Explainer(loaded, img, "top@0", tuple(layers), False, size, kept=kept)
    after = torch.cuda.memory_allocated(loaded.device) if cuda else __import__("psutil").Process().memory_info().rss
    kept.drop()
    gc.collect()
    return (after - before) / 2**20


def run(model_key: str, size: int, layers: list[str], repeats: int) -> dict:
    loaded = low_threshold(models.load_model(model_key, "untrained"))
    img = images.from_array(skimage.data.astronaut())
    offered = [m.key for m in methods.methods_for("detection", "cnn") if not m.slow and m.key != "randomcam"]
    grid, floors = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ex = engine.Explainer(loaded, img, "top@0", tuple(layers), False, size)
        hms, errors = ex.heatmaps(offered, layers)
        grid.append(time.perf_counter() - start)
        assert not errors, errors
        floors.append(floor_seconds(loaded, ex.x, ex.grad_target))
    start = time.perf_counter()
    ex.heatmap("gradcam++", layers[-1], eigen_smooth=True)  # another map of the same box: no pass
    switch_map = time.perf_counter() - start
    fresh, kept_s, eigen = [], [], []
    for i in range(1, repeats + 1):  # another box without a kept forward: a new pass (before)
        start = time.perf_counter()
        engine.Explainer(loaded, img, f"det:{i}@0", tuple(layers), False, size).heatmap("gradcam", layers[0])
        fresh.append(time.perf_counter() - start)
    graph_mb = kept_graph_mb(loaded, img, layers, size)
    kept = engine.KeptForward()
    engine.Explainer(loaded, img, "top@0", tuple(layers), False, size, kept=kept).heatmap("gradcam", layers[0])
    for i in range(1, repeats + 1):  # another box of the kept forward: Grad-CAM one backward, Eigen-CAM nothing
        start = time.perf_counter()
        engine.Explainer(loaded, img, f"det:{i}@0", tuple(layers), False, size, kept=kept).heatmap("gradcam", layers[0])
        kept_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        engine.Explainer(loaded, img, f"det:{i + repeats}@0", tuple(layers), False, size,
                         kept=kept).heatmap("eigencam", layers[0])
        eigen.append(time.perf_counter() - start)
    assert kept.forwards == 1, kept.forwards
    kept.drop()
    reference = reference_seconds(loaded, ex.x, ex.grad_target)
    grid_t, floor_t, switch_t, fresh_t = min(grid), min(floors), min(kept_s), min(fresh)
    ours_ref = grid_t * len(REFERENCE_METHODS) / len(offered) / len(layers)  # pro rata: same maps
    row = {"model": model_key, "input": f"{ex.input_hw[1]}x{ex.input_hw[0]}", "maps": len(hms),
           "methods": len(offered), "layers": ",".join(layers), "floor": floor_t, "grid": grid_t,
           "grid_vs_floor": grid_t / floor_t, "reference": reference,
           "speedup": reference / max(ours_ref, 1e-9), "switch_map_ms": switch_map * 1000,
           "switch_box": switch_t, "switch_box_vs_floor": switch_t / floor_t, "switch_box_fresh": fresh_t,
           "switch_box_fresh_vs_floor": fresh_t / floor_t, "switch_box_eigen_ms": min(eigen) * 1000,
           "kept_graph_mb": graph_mb}
    print(f"{model_key} input {row['input']} {len(offered)} methods x {len(layers)} layers ({len(hms)} maps): "
          f"floor {floor_t:.2f}s  grid {grid_t:.2f}s ({row['grid_vs_floor']:.2f}x floor)  "
          f"reference ({len(REFERENCE_METHODS)} methods on fpn) {reference:.2f}s ({row['speedup']:.1f}x ours pro rata)  "
          f"switch map {row['switch_map_ms']:.0f} ms  switch box: Grad-CAM {switch_t:.2f}s "
          f"({row['switch_box_vs_floor']:.2f}x floor), Eigen-CAM {row['switch_box_eigen_ms']:.0f} ms; without the "
          f"kept forward {fresh_t:.2f}s ({row['switch_box_fresh_vs_floor']:.2f}x floor); kept graph {graph_mb:.0f} MB")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small detector at 320: a CPU minute")
    parser.add_argument("--model", help="a detection model key (default by --quick)")
    parser.add_argument("--size", type=int, help="the shorter side of the input (default 320 quick, else 800)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device {models.default_device()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    key = args.model or ("fasterrcnn_mobilenet_v3_large_fpn" if args.quick else "fasterrcnn_resnet50_fpn_v2")
    spec = models.get_spec(key)
    stages = [s.name for s in spec.layers if not s.name.startswith("fpn")]
    row = run(key, args.size or (320 if args.quick else 800), ["fpn", "fpn_0", stages[-1]], args.repeats)
    print(f"grid_vs_floor={row['grid_vs_floor']:.2f} speedup_vs_reference={row['speedup']:.1f} "
          f"switch_box_vs_floor={row['switch_box_vs_floor']:.2f} switch_map_ms={row['switch_map_ms']:.0f}")
    print(f"switch_box_fresh_vs_floor={row['switch_box_fresh_vs_floor']:.2f} "
          f"switch_box_eigen_ms={row['switch_box_eigen_ms']:.0f} kept_graph_mb={row['kept_graph_mb']:.0f}")


if __name__ == "__main__":
    main()
