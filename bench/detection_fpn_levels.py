"""Finding, part 4 (issue 24's Grad-CAM xfail): what a real multi-level FPN changes, and what the
background's noise amplitude does to Grad-CAM's mass inside the box.

The tests' toy detector reads one feature map. Here the same shapes-on-noise task is learned by a
Faster R-CNN with a three-level FPN (torchvision's FeaturePyramidNetwork on a tiny backbone,
strides 4, 8, 16, MultiScaleRoIAlign over the three levels, torchvision's LevelMapper choosing the
level a box is pooled from). Two mappings:
  --canonical 224   torchvision's default: at 64 px every toy box (14-26 px) maps to the finest level
  --canonical 18    224 x 64/800: the toy's boxes map as objects of 175-325 px map in an 800 px photo
                    (levels 3 and 4, i.e. our fpn_1 / fpn_2), as most COCO-sized objects would
Then, for the own top box and the matched ground-truth box, seeds 0-11: the pointing game
(tests/test_detection.py's rule) for Grad-CAM and Eigen-CAM on the fused FPN (`fpn`), each level,
and "pooled" (the level LevelMapper pooled that box from); the share of the target's gradient that
reaches each level; Grad-CAM's mean mass inside the box.

--noise A trains and evaluates with background noise uniform in [0, A) (the fixture: 90).
--eval-noise A,B,...: evaluate one trained detector at several amplitudes (its training's too).

    .venv/bin/python bench/detection_fpn_levels.py --canonical 18
    .venv/bin/python bench/detection_fpn_levels.py --canonical 224
    .venv/bin/python bench/detection_fpn_levels.py --canonical 18 --noise 30
    .venv/bin/python bench/detection_fpn_levels.py --toy --eval-noise 0,30,90,150   # the tests' fixture
    .venv/bin/python bench/detection_fpn_levels.py --toy --noise 30 --eval-noise 30,90  # the toy, trained at 30

Training: 300 steps as the fixture (one thread; its CPU seconds printed), cached under /tmp.
Last line: key=value pairs of the pooled level's and the fused map's Grad-CAM hits.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

import detector_support as ds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from detection_pointing import hit  # noqa: E402

from camcore.engine import Explainer  # noqa: E402
from camcore.errors import TargetError  # noqa: E402
from camcore.images import from_array  # noqa: E402
from camcore.models import LayerSpec  # noqa: E402

LEVELS = ("0", "1", "2")
METHODS = ("gradcam", "eigencam")


def synthetic(seed: int, noise: float) -> tuple[np.ndarray, tuple[int, int, int, int], int]:
    """detector_support.synthetic with the background's amplitude as a parameter (90 there): the
    same random draws, so the same shapes at the same places."""
    rng = np.random.default_rng(seed)
    rgb = (rng.random((ds.SIZE, ds.SIZE, 3)) * noise).astype(np.uint8)
    side = int(rng.integers(14, 26))
    x0, y0 = (int(v) for v in rng.integers(2, ds.SIZE - side - 2, size=2))
    label = int(rng.integers(1, 3))
    if label == 1:
        rgb[y0:y0 + side, x0:x0 + side] = ds.COLOURS[1]
    else:
        yy, xx = np.mgrid[:ds.SIZE, :ds.SIZE]
        r = side / 2
        rgb[(yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 <= r * r] = ds.COLOURS[2]
    return rgb, (x0, y0, x0 + side, y0 + side), label


class Body(torch.nn.Module):
    """The toy's convolutions, with its stride-4 map (C2) and two coarser ones (C3, C4) out."""

    def __init__(self) -> None:
        super().__init__()
        conv = lambda cin, cout, s: torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, s, 1), torch.nn.ReLU())  # noqa: E731
        self.c2 = torch.nn.Sequential(conv(3, 16, 2), conv(16, 32, 2), conv(32, 32, 1))
        self.c3 = conv(32, 32, 2)
        self.c4 = conv(32, 32, 2)

    def forward(self, x: torch.Tensor) -> OrderedDict:
        c2 = self.c2(x)
        c3 = self.c3(c2)
        return OrderedDict([("0", c2), ("1", c3), ("2", self.c4(c3))])


class Backbone(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = Body()
        self.fpn = torchvision.ops.FeaturePyramidNetwork([32, 32, 32], 32)
        self.out_channels = 32

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(self.body(x))


def build(canonical: int, seed: int = 0) -> torch.nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(seed)
    pool = MultiScaleRoIAlign(list(LEVELS), 7, 2, canonical_scale=canonical)
    return FasterRCNN(Backbone(), num_classes=len(ds.CLASSES), min_size=ds.SIZE, max_size=ds.SIZE,
                      rpn_anchor_generator=AnchorGenerator(((12,), (20,), (28,)), ((1.0,),) * 3),
                      box_roi_pool=pool,  # the box head: torchvision's, 1024 wide (tests/detector_support.py)
                      image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
                      rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50,
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20,
                      box_batch_size_per_image=32, rpn_batch_size_per_image=64)


def train(model: torch.nn.Module, noise: float, steps: int = ds.STEPS) -> float:
    """detector_support's recipe (Adam 2e-3, cosine, one thread) on these images; CPU s."""
    cpu = time.process_time()
    ds._train(model, steps, make=lambda seed: synthetic(seed, noise))
    return time.process_time() - cpu


def quality(module: torch.nn.Module, noise: float) -> tuple[int, float]:
    right, ious = ds.held_out_quality(module, lambda seed: synthetic(seed, noise))
    return right, float(np.mean(ious))


def pooled_level(module: torch.nn.Module, box) -> int:
    """The FPN level torchvision's LevelMapper pools this box from (0 = the finest)."""
    pool = module.roi_heads.box_roi_pool
    if pool.map_levels is None:  # set on the first forward
        raise RuntimeError("run a forward first")
    return int(pool.map_levels([torch.tensor([box], dtype=torch.float32)])[0])


def mass_inside(m: np.ndarray, box) -> float:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return float(m[max(0, y0):y1, max(0, x0):x1].sum() / max(m.sum(), 1e-9))


def evaluate(loaded, noise: float, layers: dict[str, str], seeds: int, fpn: bool) -> dict:
    rows: dict = {}
    for which in ("own", "gt"):
        hits: dict[tuple[str, str], int] = {}
        masses: dict[tuple[str, str], list[float]] = {}
        grad_share = np.zeros(len(LEVELS))
        levels_seen: list[int] = []
        grad_levels: list[int] = []
        tried = 0
        for seed in range(seeds):
            rgb, box, label = synthetic(seed, noise)
            x0, y0, x1, y1 = (v / ds.SIZE for v in box)
            rule = "top" if which == "own" else f"box:{ds.CLASSES[label]}:{x0},{y0},{x1 - x0},{y1 - y0}:gt/g"
            try:
                ex = Explainer(loaded, from_array(rgb), rule, tuple(layers))
            except TargetError:
                continue
            tried += 1
            target = ex.target.boxes[0]
            names = list(layers)
            chosen: dict[str, str] = {}
            if fpn:
                level = pooled_level(loaded.module, target)
                levels_seen.append(level)
                ex.heatmap("gradcam", "fpn")  # the pass: gradients of every hooked layer
                g = np.array([float(np.abs(ex.fp.gradients[f"fpn_{k}"][0]).sum()) for k in LEVELS])
                grad_share += g / max(g.sum(), 1e-12)
                # the level the box's RoI was pooled from is where its gradient lives: the proposal's
                # level, which LevelMapper chose for the proposal, not for the refined box
                grad_levels.append(int(np.argmax(g)))
                chosen = {"pooled": f"fpn_{LEVELS[level]}", "grad level": f"fpn_{LEVELS[grad_levels[-1]]}"}
                names += list(chosen)
            for name in names:
                layer = chosen.get(name, name)
                for m in METHODS:
                    h = ex.heatmap(m, layer).map
                    hits[(m, name)] = hits.get((m, name), 0) + int(hit(h, target))
                    masses.setdefault((m, name), []).append(mass_inside(h, target))
        rows[which] = {"tried": tried, "hits": hits, "mass": {k: float(np.mean(v)) for k, v in masses.items()},
                       "grad_share": grad_share / max(tried, 1), "levels": levels_seen,
                       "agree": sum(a == b for a, b in zip(levels_seen, grad_levels, strict=True))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canonical", type=int, default=18, help="LevelMapper's canonical scale (torchvision: 224)")
    parser.add_argument("--noise", type=float, default=90.0, help="background amplitude for training (fixture: 90)")
    parser.add_argument("--eval-noise", default="", help="comma-separated amplitudes to evaluate (default: --noise)")
    parser.add_argument("--toy", action="store_true", help="the tests' one-level fixture instead of an FPN")
    parser.add_argument("--seeds", type=int, default=12)
    args = parser.parse_args()
    if args.toy:
        module = None
        if args.noise != 90:  # the fixture's recipe and network, trained on another background
            cache = Path(f"/tmp/camexplorer-test-cache/toy_frcnn_n{args.noise:g}_{ds.STEPS}.pt")
            module = ds.build()
            if cache.is_file():
                module.load_state_dict(torch.load(cache, weights_only=True))
            else:
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    cpu = train(module, args.noise)
                torch.save(module.state_dict(), cache)
                print(f"trained the toy {ds.STEPS} steps at noise {args.noise:g}: {cpu:.1f} CPU s (one thread)")
        loaded = ds.loaded_detector(module)
        layers = {"conv2": "backbone.2", "body": "backbone"}
        loaded = replace(loaded, spec=replace(ds.SPEC, layers=tuple(LayerSpec(n, p) for n, p in layers.items())))
        what = f"the tests' toy (one level), trained at noise {args.noise:g}"
    else:
        cache = Path(f"/tmp/camexplorer-test-cache/toy_fpn_c{args.canonical}_n{args.noise:g}_{ds.STEPS}.pt")
        module = build(args.canonical)
        if cache.is_file():
            module.load_state_dict(torch.load(cache, weights_only=True))
            module.eval()
            print(f"loaded {cache}")
        else:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                cpu = train(module, args.noise)
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(module.state_dict(), cache)
            print(f"trained {ds.STEPS} steps at noise {args.noise:g}: {cpu:.1f} CPU s (one thread)")
        layers = {"fpn": "backbone", **{f"fpn_{k}": "backbone" for k in LEVELS}}
        specs = (LayerSpec("fpn", "backbone"), *(LayerSpec(f"fpn_{k}", "backbone", k) for k in LEVELS))
        loaded = replace(ds.loaded_detector(module), spec=replace(ds.SPEC, layers=specs, default_layer="fpn"))
        what = f"3-level FPN, canonical scale {args.canonical}, trained at noise {args.noise:g}"
    last = {}
    for noise in [float(v) for v in (args.eval_noise.split(",") if args.eval_noise else [args.noise])]:
        right, iou = quality(loaded.module, noise)
        rows = evaluate(loaded, noise, layers, args.seeds, not args.toy)
        print(f"\n{what}; evaluated at noise {noise:g}: held-out labels {right}/100, top box IoU {iou:.3f}")
        names = list(layers) + ([] if args.toy else ["pooled", "grad level"])
        print("| box | map | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for which, r in rows.items():
            for m in METHODS:
                cells = [f"{r['hits'].get((m, n), 0)}/{r['tried']} ({r['mass'].get((m, n), 0):.2f})" for n in names]
                print(f"| {which} | {m} hits (mean mass in box) | " + " | ".join(cells) + " |")
            if not args.toy:
                counts = np.bincount(r["levels"], minlength=len(LEVELS))
                print(f"| {which} | boxes pooled from level 0/1/2 | {' / '.join(map(str, counts))} |")
                print(f"| {which} | share of |gradient| per level 0/1/2 | "
                      f"{' / '.join(f'{v:.2f}' for v in r['grad_share'])} |")
                print(f"| {which} | LevelMapper's level of the box = the level its gradient is on | "
                      f"{r['agree']}/{r['tried']} |")
        own = rows["own"]
        key = "pooled" if not args.toy else "conv2"
        last[noise] = (f"noise{noise:g}_own_gradcam_{key}={own['hits'].get(('gradcam', key), 0)}/{own['tried']} "
                       f"mass={own['mass'].get(('gradcam', key), 0):.2f}")
    print(" ".join(last.values()))


if __name__ == "__main__":
    main()
