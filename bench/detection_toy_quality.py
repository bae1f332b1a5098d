"""Finding, part 3: how good is the tests' toy detector, and does the pointing game follow its
quality? (issue 24's xfail, tests/test_detection.py.) Prints the detector's quality on held-out
images (seeds 0-99; training uses 10000+): the top box's IoU with the shape's box and whether its
label is right; then the pointing game (tests/test_detection.py's rule) per method x layer for the
model's own top box and the matched ground-truth box.

    .venv/bin/python bench/detection_toy_quality.py                  # the tests' fixture (cached)
    .venv/bin/python bench/detection_toy_quality.py --train --one-colour --constant --steps 300  # v1
    .venv/bin/python bench/detection_toy_quality.py --train --one-colour --steps 900  # v1 data, longer
    .venv/bin/python bench/detection_toy_quality.py --seeds 48       # the game over 48 images

--train trains a fresh detector as the fixture does (one thread; --seed, default 0, the fixture's)
and prints its CPU seconds.
Last line: label_right=<n>/100 iou=<mean> own_gradcam=<h>/<n> own_eigencam=<h>/<n> (conv2).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

import detector_support as ds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detection_pointing import hit  # noqa: E402

from camcore.engine import Explainer  # noqa: E402
from camcore.errors import TargetError  # noqa: E402
from camcore.images import from_array  # noqa: E402
from camcore.models import LayerSpec  # noqa: E402

LAYERS = {"conv2": "backbone.2", "relu2": "backbone.3", "body": "backbone"}
METHODS = ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam")
ABS = "gradcam abs(g) x abs(a)"  # Grad-CAM after the abs that pytorch-grad-cam's fasterrcnn_reshape_transform takes


def abs_gradcam(ex: Explainer, layer: str) -> np.ndarray:
    """Grad-CAM of |activations| and |gradients| (the tutorial transform's abs, on one level), 0..1."""
    import cv2

    acts, grads = np.abs(ex.fp.activations[layer][0]), np.abs(ex.fp.gradients[layer][0])
    raw = (grads.mean(axis=(1, 2))[:, None, None] * acts).sum(0)
    up = cv2.resize(raw, (ex.image.size[1], ex.image.size[0]))
    return (up - up.min()) / max(float(up.max() - up.min()), 1e-9)


def quality(module: torch.nn.Module, one_colour: bool) -> tuple[int, float, float]:
    """(labels right of 100, mean IoU of the top box, share with IoU > 0.75) on seeds 0-99."""
    right, ious = ds.held_out_quality(module, lambda seed: ds.synthetic(seed, one_colour))
    return right, float(np.mean(ious)), float(np.mean(np.array(ious) > 0.75))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train a fresh detector (not the cached fixture)")
    parser.add_argument("--steps", type=int, default=ds.STEPS)
    parser.add_argument("--one-colour", action="store_true", help="v1's images: both shapes yellow")
    parser.add_argument("--constant", action="store_true", help="v1's constant learning rate (no cosine decay)")
    parser.add_argument("--seed", type=int, default=0, help="with --train: the training's seed (the fixture's: 0)")
    parser.add_argument("--seeds", type=int, default=12, help="pointing-game images (the tests use 12)")
    args = parser.parse_args()
    module = None
    if args.train:
        module = ds.build(args.seed)
        cpu = time.process_time()
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            ds._train(module, steps=args.steps, one_colour=args.one_colour, cosine=not args.constant)
        data = "one colour" if args.one_colour else "a colour per class"
        print(f"trained {args.steps} steps, seed {args.seed} ({data}, "
              f"{'constant' if args.constant else 'cosine'} lr): {time.process_time() - cpu:.1f} CPU s")
    loaded = ds.loaded_detector(module)
    loaded = replace(loaded, spec=replace(ds.SPEC, layers=tuple(LayerSpec(n, p) for n, p in LAYERS.items())))
    right, iou, good = quality(loaded.module, args.one_colour)
    print(f"held-out 0-99: label right {right}/100, top box IoU mean {iou:.3f}, IoU > 0.75 on {good:.0%}")
    ground_truth = "box:{name}:{x},{y},{w},{h}:ground_truth/g"
    rows = {}
    for which in ("own", "gt"):
        counts: dict[tuple[str, str], int] = {}
        tried = 0
        for seed in range(args.seeds):
            rgb, box, label = ds.synthetic(seed, args.one_colour)
            x0, y0, x1, y1 = (v / ds.SIZE for v in box)
            rule = "top" if which == "own" else ground_truth.format(
                name=ds.CLASSES[label], x=x0, y=y0, w=x1 - x0, h=y1 - y0)
            try:
                ex = Explainer(loaded, from_array(rgb), rule, tuple(LAYERS))
            except TargetError:
                continue
            tried += 1
            for layer in LAYERS:
                for m in METHODS:
                    got = hit(ex.heatmap(m, layer).map, ex.target.boxes[0])
                    counts[(m, layer)] = counts.get((m, layer), 0) + int(got)
                got = hit(abs_gradcam(ex, layer), ex.target.boxes[0])
                counts[(ABS, layer)] = counts.get((ABS, layer), 0) + int(got)
        rows[which] = (counts, tried)
    print("| box | method | " + " | ".join(LAYERS) + " |")
    print("|---|---|" + "---|" * len(LAYERS))
    for which, (counts, tried) in rows.items():
        for m in (*METHODS, ABS):
            print(f"| {which} | {m} | " + " | ".join(f"{counts[(m, layer)]}/{tried}" for layer in LAYERS) + " |")
    own, n = rows["own"]
    print(f"label_right={right}/100 iou={iou:.3f} own_gradcam={own[('gradcam', 'conv2')]}/{n} "
          f"own_eigencam={own[('eigencam', 'conv2')]}/{n}")


if __name__ == "__main__":
    main()
