"""Benchmark: a detector's batch with several box rules (issue 24): before vs after, in one run.

Before: one run_batch per box rule (top:3 = det:0, det:1, det:2), each its own pass over the view:
a forward + backward per image per box (images of one shape batched, --chunk at a time).
After: run_batches, one run for all rules: per image one forward kept with its graph, then one
backward per box for the gradient methods, nothing more for Eigen-CAM.
Both write the same fields into a fresh dataset each (no resume); repeats alternate the two and
the best of each is kept, by the process's CPU time (the wall clock is printed too: on a machine
shared with other sessions it measures their load as much as ours; under load the CPU time too).
Also counted: images through the model's forward, backwards.

    .venv/bin/python bench/batch_boxes.py --quick       # SSDlite 320, 4 images, CPU
    .venv/bin/python bench/batch_boxes.py               # Faster R-CNN MobileNetV3-FPN (800), 4 images

Untrained weights, the score threshold at 0 (speed does not depend on the weights). Starts a
private mongod (bench/scale.py) unless FIFTYONE_DATABASE_URI is set.
Last line: after_vs_before=<CPU ratio, gradcam+eigencam> eigen_after_vs_before=<CPU ratio, eigencam only>
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from scale import bench_database  # noqa: E402  (beside this file; sets sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, n: int, side: int) -> list[str]:
    """n different side x side crops of scikit-image's photos (one shape: "before" may batch them)."""
    import cv2
    import numpy as np
    import skimage

    data = Path(skimage.__file__).parent / "data"
    sources = [cv2.imread(str(data / name)) for name in ("astronaut.png", "coffee.png", "rocket.jpg")]  # all >= 400 px
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        y, x = (int(rng.integers(0, s - side + 1)) for s in src.shape[:2])
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), src[y:y + side, x:x + side])
        out.append(str(path))
    return out


class Counts:
    def __init__(self, module) -> None:
        import torch

        self.images = self.backwards = 0
        self.handle = module.register_forward_hook(self._forward)
        self._grad = torch.autograd.grad

        def counted(*args, **kwargs):
            self.backwards += 1
            return self._grad(*args, **kwargs)
        torch.autograd.grad = counted

    def _forward(self, _m, inputs, _o) -> None:
        x = inputs[0]
        self.images += len(x) if isinstance(x, (list, tuple)) or x.dim() == 4 else 1

    def close(self) -> None:
        import torch

        torch.autograd.grad = self._grad
        self.handle.remove()


def timed(way: str, paths: list[str], runs, model) -> tuple[float, float, int, int]:
    """(CPU seconds, wall seconds, images through the forward, backwards) of one batch of `runs` into
    a fresh dataset. CPU time (this process's, all threads) is the measure on a shared machine:
    other sessions' load stretches the wall clock, not the work done."""
    import fiftyone as fo

    from camcore import batch

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    counts = Counts(model.module)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        if way == "before":
            reports = [batch.run_batch(ds, r) for r in runs]
        else:
            reports = [batch.run_batches(ds, runs)]
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        counts.close()
        ds.delete()
    done = sum(r.done for r in reports)
    failed = [f for r in reports for f in r.failed]
    if done != len(paths) * len(runs) or failed:
        raise SystemExit(f"{way}: {done} done, failed {failed[:2]}")
    return cpu, seconds, counts.images, counts.backwards


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="SSDlite 320 instead of Faster R-CNN MobileNetV3-FPN")
    ap.add_argument("--n", type=int, default=4, help="images")
    ap.add_argument("--k", type=int, default=3, help="boxes per image: top:<k>")
    ap.add_argument("--size", type=int, default=320, help="image side (the model resizes inside)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    folder, mongod = bench_database(None, "bench-batch-boxes-")
    os.environ["CAM_EXPLORER_HOME"] = str(folder / "home")  # journals, heatmaps: never the user's
    try:
        import fiftyone as fo

        from camcore import batch
        from camcore.models import load_model

        key = "ssdlite320_mobilenet_v3_large" if args.quick else "fasterrcnn_mobilenet_v3_large_fpn"
        model = load_model(key, "untrained", args.device)  # the one the batch loads (once per process)
        for obj in (model.module, getattr(model.module, "roi_heads", None)):
            if obj is not None and hasattr(obj, "score_thresh"):
                obj.score_thresh = 0.0
        paths = make_images(folder / "images", args.n, args.size)
        ratios = {}
        for label, methods in (("gradcam+eigencam", ("gradcam", "eigencam")), ("eigencam", ("eigencam",))):
            options = batch.BatchOptions(model=key, weights="untrained", methods=methods, layers=("fpn",),
                                         device=args.device, chunk=args.chunk, heatmap_dir=str(folder / "hm"))
            probe = fo.Dataset()
            probe.add_samples([fo.Sample(filepath=p) for p in paths[:1]])
            runs = batch.box_batches(probe, options, f"top:{args.k}@0")
            probe.delete()
            timed("after", paths[:1], runs, model)  # warm up (allocator, lazy imports)
            best: dict[str, tuple[float, float, int, int]] = {}
            for _ in range(args.repeats):
                for way in ("before", "after"):
                    got = timed(way, paths, runs, model)
                    if way not in best or got[0] < best[way][0]:
                        best[way] = got
            b, a = best["before"], best["after"]
            ratios[label] = a[0] / b[0]
            print(f"{key} {label} top:{args.k} x {args.n} images: before {b[0]:.2f} s CPU ({b[1]:.2f} s wall; "
                  f"{b[2]} image forwards, {b[3]} backwards), after {a[0]:.2f} s CPU ({a[1]:.2f} s wall; {a[2]} image "
                  f"forwards, {a[3]} backwards): {ratios[label]:.2f}x CPU, {a[1] / b[1]:.2f}x wall", flush=True)
        print(f"after_vs_before={ratios['gradcam+eigencam']:.2f} eigen_after_vs_before={ratios['eigencam']:.2f}")
    finally:
        if mongod is not None:
            mongod.terminate()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
