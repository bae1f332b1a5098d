"""A real, small detector for the tests: a Faster R-CNN on a tiny backbone, trained once on
synthetic images (one yellow square or cyan disc on noise, 64 x 64) and cached under /tmp.

Each class has its own colour so that, as with real objects, what tells the classes apart lies
in the object's body: with one colour for both (v1) the detector named 60 of 100 held-out shapes
right (near chance); this one (300 steps, cosine lr, the same CPU cost) names 96 of 100, top box
IoU 0.93 (bench/detection_toy_quality.py, bench/RESULTS.md). Seeded and trained on one thread:
every fresh cache holds the same detector."""
from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision

from camcore import weights as weights_mod
from camcore.images import LoadedImage, from_array
from camcore.models import LayerSpec, LoadedModel, ModelSpec
from camcore.preprocessing import Preprocess

SIZE = 64
CLASSES = ("__background__", "square", "disc")
COLOURS = {1: (230, 200, 60), 2: (60, 200, 230)}  # square yellow, disc cyan
STEPS = 300
Shape = tuple[np.ndarray, tuple[int, int, int, int], int]  # an image, its shape's box and label
# the recipe in the name: a changed recipe never reads another's cache
CACHE = Path(os.environ.get("CAM_TEST_DETECTOR_CACHE", f"/tmp/camexplorer-test-cache/toy_frcnn_v2_{STEPS}.pt"))


def build(seed: int = 0) -> torch.nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    def block(cin, cout, stride):
        return [torch.nn.Conv2d(cin, cout, 3, stride, 1), torch.nn.ReLU(inplace=False)]

    # seeded before the backbone too (v1 seeded after it: its first weights were whatever the process's
    # random state was, so each fresh cache was another detector)
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(*block(3, 16, 2), *block(16, 32, 2), *block(32, 32, 1), *block(32, 32, 2))
    backbone.out_channels = 32
    # The box head is torchvision's own, 1024 wide: FasterRCNN has no representation_size argument
    # (one given here until 2026-12-07 went to its **kwargs unused; the weights were the same).
    return FasterRCNN(backbone, num_classes=len(CLASSES), min_size=SIZE, max_size=SIZE,
                      rpn_anchor_generator=AnchorGenerator(((12, 20, 28),), ((1.0,),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
                      image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
                      rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50,
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20,
                      box_batch_size_per_image=32, rpn_batch_size_per_image=64)


def synthetic(seed: int, one_colour: bool = False) -> Shape:
    """(H x W x 3 uint8 image, its shape's box x1, y1, x2, y2, its label). one_colour: v1's images
    (both shapes yellow), kept for bench/detection_toy_quality.py's before/after."""
    rng = np.random.default_rng(seed)
    rgb = (rng.random((SIZE, SIZE, 3)) * 90).astype(np.uint8)
    side = int(rng.integers(14, 26))
    x0, y0 = (int(v) for v in rng.integers(2, SIZE - side - 2, size=2))
    label = int(rng.integers(1, 3))
    colour = COLOURS[1] if one_colour else COLOURS[label]
    if label == 1:
        rgb[y0:y0 + side, x0:x0 + side] = colour
    else:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        r = side / 2
        rgb[(yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 <= r * r] = colour
    return rgb, (x0, y0, x0 + side, y0 + side), label


def _train(model: torch.nn.Module, steps: int = STEPS, batch: int = 8, one_colour: bool = False,
           cosine: bool = True, make: Callable[[int], Shape] | None = None) -> None:
    """Adam, lr 2e-3 decayed to 0 on a cosine (v1: constant, 300 steps), one thread: the same
    weights on every run here, whatever the thread count of the process. ``make`` (seed -> image,
    box, label) stands in for :func:`synthetic` (the benches' other images)."""
    make = make or (lambda seed: synthetic(seed, one_colour))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)) if cosine else 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            images, targets = [], []
            for i in range(batch):
                rgb, box, label = make(10_000 + step * batch + i)
                images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
                targets.append({"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([label])})
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            decay.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def held_out_quality(module: torch.nn.Module, make: Callable[[int], Shape]) -> tuple[int, list[float]]:
    """(labels right, the top box's IoU with the shape's box per image) on held-out seeds 0-99
    (training uses 10000 and up)."""
    right, ious = 0, []
    for seed in range(100):
        rgb, box, label = make(seed)
        with torch.no_grad():
            out = module([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0]
        if len(out["boxes"]) == 0:
            ious.append(0.0)
            continue
        ious.append(float(torchvision.ops.box_iou(torch.tensor([box], dtype=torch.float32), out["boxes"][:1])[0, 0]))
        right += int(out["labels"][0]) == label
    return right, ious


def trained_module() -> torch.nn.Module:
    """The trained detector: from the cache, else trained here. One test process trains it: the
    others that ask meanwhile (a clean machine's first run) wait for its file, not train it again."""
    model = build()
    if not CACHE.is_file():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        with open(CACHE.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            if not CACHE.is_file():
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    _train(model)
                tmp = CACHE.with_suffix(f".{os.getpid()}.tmp")
                torch.save(model.state_dict(), tmp)
                tmp.replace(CACHE)  # atomic: a reader never sees half a file
                return model
    model.load_state_dict(torch.load(CACHE, weights_only=True))
    return model.eval()


SPEC = ModelSpec(
    key="toy_frcnn", label="toy Faster R-CNN (tests)", task="detection", family="cnn", build=build,
    weights=weights_mod.WeightsSource(), preprocess=Preprocess("short_side", SIZE, (0, 0, 0), (1, 1, 1)),
    class_names=lambda: CLASSES, layers=(LayerSpec("body", "backbone"), LayerSpec("conv2", "backbone.2")),
    default_layer="body", arch="tests:toy_frcnn",
)


def loaded_detector(module: torch.nn.Module | None = None) -> LoadedModel:
    """The cached fixture, or the given module (a bench's own training) in its place."""
    weights = weights_mod.ResolvedWeights("toy (trained in the tests)", True, "file")
    module = trained_module() if module is None else module.eval()
    return LoadedModel(spec=SPEC, module=module, weights=weights, device=torch.device("cpu"))


def image(seed: int) -> tuple[LoadedImage, tuple[int, int, int, int], int]:
    rgb, box, label = synthetic(seed)
    return from_array(rgb), box, label


class PassCounter:
    """A detector's forwards (a hook on its top module: `forwards` calls, `images` through them,
    a batched forward counting each image) and backwards (torch.autograd.grad calls)."""

    def __init__(self, module: torch.nn.Module, monkeypatch) -> None:
        self.forwards = self.images = self.backwards = 0
        self.handle = module.register_forward_hook(self._forward)
        grad = torch.autograd.grad

        def counted(*args, **kwargs):
            self.backwards += 1
            return grad(*args, **kwargs)
        monkeypatch.setattr(torch.autograd, "grad", counted)

    def _forward(self, _module, inputs, _out) -> None:
        self.forwards += 1
        x = inputs[0]
        self.images += len(x) if isinstance(x, (list, tuple)) or getattr(x, "dim", lambda: 3)() == 4 else 1
