"""A real, small detector for the tests: a Faster R-CNN on a tiny backbone, trained once on
synthetic images (one bright square or disc on noise, 64 x 64) and cached under /tmp."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from camcore import weights as weights_mod
from camcore.images import LoadedImage, from_array
from camcore.models import LayerSpec, LoadedModel, ModelSpec
from camcore.preprocessing import Preprocess

SIZE = 64
CLASSES = ("__background__", "square", "disc")
CACHE = Path(os.environ.get("CAM_TEST_DETECTOR_CACHE", "/tmp/camexplorer-test-cache/toy_frcnn_v1.pt"))


def build() -> torch.nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    def block(cin, cout, stride):
        return [torch.nn.Conv2d(cin, cout, 3, stride, 1), torch.nn.ReLU(inplace=False)]

    backbone = torch.nn.Sequential(*block(3, 16, 2), *block(16, 32, 2), *block(32, 32, 1), *block(32, 32, 2))
    backbone.out_channels = 32
    torch.manual_seed(0)
    return FasterRCNN(backbone, num_classes=len(CLASSES), min_size=SIZE, max_size=SIZE,
                      rpn_anchor_generator=AnchorGenerator(((12, 20, 28),), ((1.0,),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), representation_size=64,
                      image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
                      rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50,
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20,
                      box_batch_size_per_image=32, rpn_batch_size_per_image=64)


def synthetic(seed: int) -> tuple[np.ndarray, tuple[int, int, int, int], int]:
    """(H x W x 3 uint8 image, its shape's box x1, y1, x2, y2, its label)."""
    rng = np.random.default_rng(seed)
    rgb = (rng.random((SIZE, SIZE, 3)) * 90).astype(np.uint8)
    side = int(rng.integers(14, 26))
    x0, y0 = (int(v) for v in rng.integers(2, SIZE - side - 2, size=2))
    label = int(rng.integers(1, 3))
    if label == 1:
        rgb[y0:y0 + side, x0:x0 + side] = (230, 200, 60)
    else:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        r = side / 2
        rgb[(yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 <= r * r] = (230, 200, 60)
    return rgb, (x0, y0, x0 + side, y0 + side), label


def _train(model: torch.nn.Module, steps: int = 300, batch: int = 8) -> None:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(steps):
        images, targets = [], []
        for i in range(batch):
            rgb, box, label = synthetic(10_000 + step * batch + i)
            images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
            targets.append({"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([label])})
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def trained_module() -> torch.nn.Module:
    model = build()
    if CACHE.is_file():
        model.load_state_dict(torch.load(CACHE, weights_only=True))
        return model.eval()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _train(model)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(CACHE)  # atomic: parallel workers never read half a file
    return model


SPEC = ModelSpec(
    key="toy_frcnn", label="toy Faster R-CNN (tests)", task="detection", family="cnn", build=build,
    weights=weights_mod.WeightsSource(), preprocess=Preprocess("short_side", SIZE, (0, 0, 0), (1, 1, 1)),
    class_names=lambda: CLASSES, layers=(LayerSpec("body", "backbone"), LayerSpec("conv2", "backbone.2")),
    default_layer="body", arch="tests:toy_frcnn",
)


def loaded_detector() -> LoadedModel:
    weights = weights_mod.ResolvedWeights("toy (trained in the tests)", True, "file")
    return LoadedModel(spec=SPEC, module=trained_module(), weights=weights, device=torch.device("cpu"))


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
