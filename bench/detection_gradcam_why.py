"""Finding, part 2: where a detector box's gradient lives, and what Grad-CAM's averaging makes of it
(issue 24's pointing-game xfail, tests/test_detection.py). On the tests' toy Faster R-CNN, seeds
0-11, for the model's own top box ("own") and the shape's matched ground-truth box ("gt"):

- grad in box: the share of |d target / d activations| (summed over channels) inside the explained
  box (and inside it grown by 4 px, about one conv2 cell): torchvision's proposals are detached
  and the box head reads the features through RoIAlign only, so the gradient should live inside
  the proposal;
- the pointing game (tests/test_detection.py's rule) for Grad-CAM (channel weights = the gradient
  averaged over the whole map, times the activations wherever they fire), HiResCAM (gradient x
  activation per position, summed over channels), Grad-CAM element-wise (its ReLU per position)
  and LayerCAM: the same gradient, kept where it is;
- Grad-CAM's mass inside the box when its weights are applied only where the gradient lives
  (a measurement, not a method offered);
- the same with the box's class logit as the target instead of its softmax score (the logit of
  the RoI row the detection came from, read with a hook on roi_heads.box_predictor): does the
  softmax's saturation matter?

    .venv/bin/python bench/detection_gradcam_why.py [--layer conv2] [--seeds 12] [--weights FILE]

Last line: own_gradcam=<h>/<n> own_hirescam=<h>/<n> own_grad_in_box=<share> own_logit_gradcam=<h>/<n>
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

import cv2  # noqa: E402
import detector_support as ds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detection_pointing import LAYERS, ground_truth_rule, hit  # noqa: E402

from camcore.engine import Explainer, run_pass  # noqa: E402
from camcore.errors import TargetError  # noqa: E402
from camcore.models import LayerSpec  # noqa: E402

MAPS = ("gradcam", "hirescam", "gradcamelementwise", "layercam", "eigencam")


class Logits:
    """The box head's class logits of the last forward (with their graph): a forward hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.roi_heads.box_predictor.register_forward_hook(self._keep)

    def _keep(self, _m, _i, out) -> None:
        self.value = out[0]  # (class_logits, box_regression)


class LogitTarget:
    """The logit of the class the detections' boxes were given, on the RoI rows they came from
    (found by their softmax score: postprocess_detections keeps softmax(logits)[row, label])."""

    def __init__(self, logits: Logits, labels, scores) -> None:
        self.logits, self.pairs = logits, []
        probs = torch.softmax(logits.value.detach(), -1)
        for label, score in zip(labels, scores, strict=True):
            row = int(torch.argmin((probs[:, label] - score).abs()))
            assert abs(float(probs[row, label]) - score) < 1e-5, "the detection's RoI row is not found"
            self.pairs.append((row, int(label)))

    def __call__(self, _output) -> torch.Tensor:
        return sum(self.logits.value[row, label] for row, label in self.pairs)


def box_mask(shape, box, grow: float = 0.0) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in (box[0] - grow, box[1] - grow, box[2] + grow, box[3] + grow))
    inside = np.zeros(shape, bool)
    inside[max(0, y0):y1, max(0, x0):x1] = True
    return inside


def up(m: np.ndarray, size) -> np.ndarray:
    return cv2.resize(m.astype(np.float32), (size[1], size[0]))


def scaled(m: np.ndarray) -> np.ndarray:
    m = np.maximum(m, 0)
    return (m - m.min()) / max(float(m.max() - m.min()), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", default="conv2", choices=list(LAYERS))
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--weights", help="a toy detector state dict (bench/detection_pointing.py --save)")
    args = parser.parse_args()
    loaded = ds.loaded_detector()
    if args.weights:
        module = ds.build()
        module.load_state_dict(torch.load(args.weights, weights_only=True))
        loaded = replace(loaded, module=module.eval())
    loaded = replace(loaded, spec=replace(ds.SPEC, layers=tuple(LayerSpec(n, p) for n, p in LAYERS.items())))
    layer = args.layer
    logits = Logits(loaded.module)
    rows: dict[str, dict[str, list]] = {}
    for which, rule_for in (("own", lambda box, label: "top"), ("gt", ground_truth_rule)):
        got: dict[str, list] = {}
        for seed in range(args.seeds):
            img, box, label = ds.image(seed)
            try:
                ex = Explainer(loaded, img, rule_for(box, label), (layer,))
            except TargetError:
                continue
            b, size = ex.target.boxes[0], img.size
            grads, acts = ex.fp.gradients[layer][0], ex.fp.activations[layer][0]  # C x h x w
            g = up(np.abs(grads).sum(0), size)
            got.setdefault("grad in box", []).append(float(g[box_mask(size, b)].sum() / max(g.sum(), 1e-12)))
            got.setdefault("grad in box+4px", []).append(float(g[box_mask(size, b, 4)].sum() / max(g.sum(), 1e-12)))
            cam = ex.heatmap("gradcam", layer).map  # where Grad-CAM's mass goes: the box, its rim, beyond
            got.setdefault("gradcam mass in box", []).append(float(cam[box_mask(size, b)].sum() / max(cam.sum(), 1e-9)))
            got.setdefault("gradcam mass in box+4px", []).append(
                float(cam[box_mask(size, b, 4)].sum() / max(cam.sum(), 1e-9)))
            for m in MAPS:
                got.setdefault(m, []).append(bool(hit(ex.heatmap(m, layer).map, b)))
            # Grad-CAM's own weights, applied only where the gradient is non-zero (what the averaging spreads)
            where = np.abs(grads).sum(0) > 1e-12 * max(float(np.abs(grads).max()), 1e-30)
            weighted = (grads.mean(axis=(1, 2))[:, None, None] * acts).sum(0) * where
            got.setdefault("gradcam where grad != 0", []).append(bool(hit(scaled(up(weighted, size)), b)))
            got.setdefault("grad != 0 cells", []).append(float(where.mean()))
            # the logit instead of the softmax score (same box, same layer)
            alone = Explainer(loaded, img, rule_for(box, label), (layer,), defer_pass=True)

            def logit_target(out, alone=alone):
                alone._make_target(out)  # the top box: the output's first detection (sorted by score)
                return LogitTarget(logits, [int(out["labels"][0])], [float(out["scores"][0].detach())])
            if which == "own":  # the own (top) box only: its RoI row is found by its score
                fp, t = run_pass(loaded, alone.x, (layer,), logit_target, alone.reshape)
                alone._set_pass(fp, t)
                got.setdefault("logit: gradcam", []).append(bool(hit(alone.heatmap("gradcam", layer).map, b)))
                got.setdefault("logit: hirescam", []).append(bool(hit(alone.heatmap("hirescam", layer).map, b)))
            got.setdefault("box score", []).append(float(ex.target.score or 0.0))
        rows[which] = got
    logits.handle.remove()
    print(f"layer {layer}; boxes: own {len(rows['own']['gradcam'])}, gt {len(rows['gt']['gradcam'])}")
    print("| measure | own box | matched ground-truth box |")
    print("|---|---|---|")
    for name in rows["own"]:
        cells = []
        for which in ("own", "gt"):
            values = rows[which].get(name)
            if not values:
                cells.append("—")
            elif isinstance(values[0], bool):
                cells.append(f"{sum(values)}/{len(values)}")
            else:
                cells.append(f"mean {np.mean(values):.3f} (min {np.min(values):.3f})")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    own = rows["own"]
    print(f"own_gradcam={sum(own['gradcam'])}/{len(own['gradcam'])} own_hirescam={sum(own['hirescam'])}/"
          f"{len(own['hirescam'])} own_grad_in_box={np.mean(own['grad in box']):.3f} "
          f"own_logit_gradcam={sum(own['logit: gradcam'])}/{len(own['logit: gradcam'])}")


if __name__ == "__main__":
    main()
