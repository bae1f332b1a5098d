"""Finding: why Grad-CAM misses the box on the tests' toy trained detector (issue 24, the xfail in
tests/test_detection.py). The pointing game (mass > 50% inside the box and the peak in it, as the
test counts) per backbone layer, for the model's own top box and the shape's matched ground-truth
box, with the target as we (and pytorch-grad-cam's FasterRCNNBoxScoreTarget) build it (IoU +
score) and with the score alone; Eigen-CAM beside it; and the negated Grad-CAM map (where the
gradient-weighted activations are most negative).

    .venv/bin/python bench/detection_pointing.py                     # the tests' cached detector
    .venv/bin/python bench/detection_pointing.py --train-steps 1200 --save /tmp/toy_1200.pt  # 4x longer
    .venv/bin/python bench/detection_pointing.py --weights /tmp/toy_1200.pt  # again, without training

Last line: own_gradcam=<hits>/<n> gt_gradcam=<hits>/<n> own_eigencam=<hits>/<n> (layer conv2).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import detector_support as ds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from camcore import detection  # noqa: E402
from camcore.engine import Explainer  # noqa: E402
from camcore.errors import TargetError  # noqa: E402
from camcore.models import LayerSpec  # noqa: E402

LAYERS = {"conv2": "backbone.2", "relu2": "backbone.3", "conv3": "backbone.4", "relu3": "backbone.5",
          "conv4": "backbone.6", "body": "backbone"}


class ScoreOnly(detection.BoxScoreTarget):
    """The box target without its IoU term: the matched output box's score alone."""

    def __call__(self, output: dict) -> torch.Tensor:
        total = torch.zeros((), dtype=output["boxes"].dtype)
        for label, box in zip(self.labels, self.boxes, strict=True):
            same = (output["labels"] == label).nonzero().flatten()
            if len(same):
                ious = torchvision.ops.box_iou(torch.tensor([box]), output["boxes"][same].detach())[0]
                if float(ious.max()) > self.iou_threshold:
                    total = total + output["scores"][same[int(ious.argmax())]]
        return total


def hit(m: np.ndarray, box) -> bool:
    """tests/test_detection.py's pointing game."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = np.zeros(m.shape, bool)
    inside[max(0, y0):y1, max(0, x0):x1] = True
    mass = float(m[inside].sum() / max(m.sum(), 1e-9))
    peak = np.unravel_index(np.argmax(m), m.shape)
    return mass > max(0.5, 3 * float(inside.mean())) and x0 - 2 <= peak[1] <= x1 + 2 and y0 - 2 <= peak[0] <= y1 + 2


def negated_gradcam(ex: Explainer, layer: str) -> np.ndarray:
    import cv2

    acts, grads = ex.fp.activations[layer][0], ex.fp.gradients[layer][0]
    raw = np.maximum(-(grads.mean(axis=(1, 2))[:, None, None] * acts).sum(0), 0)
    up = cv2.resize(raw, (ex.image.size[1], ex.image.size[0]))
    return (up - up.min()) / max(float(up.max() - up.min()), 1e-9)


def ground_truth_rule(box, label) -> str:
    x0, y0, x1, y1 = (v / ds.SIZE for v in box)
    return f"box:{ds.CLASSES[label]}:{x0},{y0},{x1 - x0},{y1 - y0}:ground_truth/g"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, help="train a fresh toy detector this long (default: the tests')")
    parser.add_argument("--save", help="where to save the trained weights (a state dict)")
    parser.add_argument("--weights", help="a toy detector state dict saved by --save, instead of training")
    parser.add_argument("--seeds", type=int, default=12)
    args = parser.parse_args()
    loaded = ds.loaded_detector()
    if args.train_steps or args.weights:
        module = ds.build()
        if args.weights:
            module.load_state_dict(torch.load(args.weights, weights_only=True))
        else:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                ds._train(module, steps=args.train_steps)
            if args.save:
                torch.save(module.state_dict(), args.save)
        loaded = replace(loaded, module=module.eval())
    loaded = replace(loaded, spec=replace(ds.SPEC, layers=tuple(LayerSpec(n, p) for n, p in LAYERS.items())))
    layers = tuple(LAYERS)
    counts: dict[tuple[str, str, str], int] = {}
    tried = {"own": 0, "gt": 0}
    for which, rule_for in (("own", lambda box, label: "top"), ("gt", ground_truth_rule)):
        scores = []
        for seed in range(args.seeds):
            img, box, label = ds.image(seed)
            try:
                ex = Explainer(loaded, img, rule_for(box, label), layers)
            except TargetError:
                continue
            tried[which] += 1
            scores.append(ex.target.score or 0.0)
            alone = Explainer(loaded, img, rule_for(box, label), layers, defer_pass=True)
            from camcore.engine import run_pass

            def score_only(out, alone=alone, t=ex.grad_target):
                alone._make_target(out)
                return ScoreOnly(t.labels, t.boxes)
            fp, t = run_pass(loaded, alone.x, layers, score_only, alone.reshape)
            alone._set_pass(fp, t)
            b = ex.target.boxes[0]
            for layer in layers:
                for name, m in (("gradcam", ex.heatmap("gradcam", layer).map),
                                ("gradcam score only", alone.heatmap("gradcam", layer).map),
                                ("gradcam negated", negated_gradcam(ex, layer)),
                                ("eigencam", ex.heatmap("eigencam", layer).map)):
                    counts[(which, name, layer)] = counts.get((which, name, layer), 0) + int(hit(m, b))
        print(f"{which}: {tried[which]} boxes, box scores {min(scores):.3f}..{max(scores):.3f}")
    print("| box | map | " + " | ".join(layers) + " |")
    print("|---|---|" + "---|" * len(layers))
    for which in ("own", "gt"):
        for name in ("gradcam", "gradcam score only", "gradcam negated", "eigencam"):
            cells = " | ".join(f"{counts[(which, name, layer)]}/{tried[which]}" for layer in layers)
            print(f"| {which} | {name} | {cells} |")
    print(f"own_gradcam={counts[('own', 'gradcam', 'conv2')]}/{tried['own']} "
          f"gt_gradcam={counts[('gt', 'gradcam', 'conv2')]}/{tried['gt']} "
          f"own_eigencam={counts[('own', 'eigencam', 'conv2')]}/{tried['own']}")


if __name__ == "__main__":
    main()
