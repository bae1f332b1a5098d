"""Benchmark: the faithfulness scores under Compare's maps (and a measuring batch), ours vs the
library's way, on one sample: what a Compare ▶ costs with scores on.

The library's CamMultImageConfidenceChange scores the unchanged input on every call, so the way
the app used it (the original score, then keep, then remove) ran five forwards a map. Ours takes
the original score from the shared pass and runs each map's two perturbed inputs as rows of
batched forwards (camcore.metrics.faithfulness_many).

    .venv/bin/python bench/faithfulness.py --quick     # DeepLabV3 at 128 px, EfficientNet-Lite0
    .venv/bin/python bench/faithfulness.py             # DeepLabV3 at 320 px (the CPU default), 4 layers

Untrained DeepLabV3 (speed does not depend on weights). Last line:
scores_speedup=<ours vs the library's way> step_speedup=<a Compare ▶ with scores> maxdiff=<relative>
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import skimage.data  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange  # noqa: E402

from camcore import engine, images, metrics, models  # noqa: E402

LAYERS = {"deeplabv3": ["layer1", "layer2", "layer3", "layer4"], "efficientnet_lite0": ["stage4", "stage6", "head"]}


def library_way(ex: engine.Explainer, heatmaps) -> tuple[float, list[tuple[float, float, float]]]:
    """What the app did before: per map, the original score and the library's metric twice."""
    start = time.perf_counter()
    module, target, x = ex.model.module, ex.grad_target, ex.x
    out = []
    with torch.no_grad():
        for h in heatmaps:
            cams = metrics.input_map(h.map, ex.input_hw)[None]
            original = float(target(module(x)[0]))
            keep = float(CamMultImageConfidenceChange()(x, cams, [target], module)[0])
            remove = float(CamMultImageConfidenceChange()(x, 1 - cams, [target], module)[0])
            out.append((original, keep, remove))
    return time.perf_counter() - start, out


def run(model_key: str, size: int | None, repeats: int) -> tuple[float, float, float]:
    loaded = models.load_model(model_key, "untrained" if model_key == "deeplabv3" else "auto")
    layers = LAYERS[model_key]
    image = images.from_array(skimage.data.astronaut(), "astronaut.png")
    best_ours, best_lib, best_pass, diff = float("inf"), float("inf"), float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        ex = engine.Explainer(loaded, image, None, tuple(layers), input_size=size)
        heatmaps = [ex.heatmap("gradcam", layer) for layer in layers]
        best_pass = min(best_pass, time.perf_counter() - start)
        lib_seconds, lib = library_way(ex, heatmaps)
        start = time.perf_counter()
        ours = ex.faithfulness_of(heatmaps)
        best_ours = min(best_ours, time.perf_counter() - start)
        best_lib = min(best_lib, lib_seconds)
        for f, (original, keep, remove) in zip(ours, lib, strict=True):
            scale = max(1.0, abs(original))
            diff = max(diff, abs(f.original_score - original) / scale, abs(f.keep_change - keep) / scale,
                       abs(f.remove_change - remove) / scale)
    step_lib, step_ours = best_pass + best_lib, best_pass + best_ours
    print(f"{model_key} at {ex.input_hw[0]}x{ex.input_hw[1]}, {len(layers)} maps: pass+maps {best_pass:.2f} s; "
          f"scores library's way {best_lib:.2f} s, ours {best_ours:.2f} s ({best_lib / best_ours:.2f}x); "
          f"a Compare step with scores {step_lib:.2f} s -> {step_ours:.2f} s ({step_lib / step_ours:.2f}x); "
          f"max relative diff {diff:.2e}", flush=True)
    return best_lib / best_ours, step_lib / step_ours, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes that run on a CPU quickly")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = [run("deeplabv3", 128 if args.quick else 320, args.repeats)]
    results.append(run("efficientnet_lite0", None, args.repeats))
    scores, step, diff = results[0][0], results[0][1], max(r[2] for r in results)
    print(f"scores_speedup={scores:.2f} step_speedup={step:.2f} maxdiff={diff:.2e}")


if __name__ == "__main__":
    main()
