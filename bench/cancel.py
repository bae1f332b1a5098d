"""Benchmark: time from Cancel to stop for Score-CAM on DeepLabV3 layer4 (2048 channels, one
forward each), batches of a fixed 64 (before) vs batches sized by time (perturbation.py), in the
same run on this machine's CPU (issue 22 item 7: Cancel within 2 s, the maps computed so far kept).

    .venv/bin/python bench/cancel.py                    # 520x520, cancel 3 s into the work
    .venv/bin/python bench/cancel.py --size 256         # quicker

Untrained DeepLabV3-ResNet50 (no download: the cost of a forward does not depend on the weights).
Last line: cancel_fixed64=<s> cancel_time_sized=<s> ratio=<fixed/time-sized>
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget  # noqa: E402

from camcore import perturbation  # noqa: E402
from camcore.errors import Cancelled  # noqa: E402


class Out(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


def cancel_delay(model, layer, x, acts, target, fixed: bool, after: float) -> tuple[float, int]:
    """Start Score-CAM, press Cancel `after` seconds in; seconds from Cancel to Cancelled, and
    the channels scored when it stopped."""
    real = perturbation.time_sized_batch
    if fixed:  # before: every batch the requested 64, whatever a forward costs
        perturbation.time_sized_batch = lambda spc, cap, budget=perturbation.BATCH_SECONDS: cap  # type: ignore
    cancel, done, seen = threading.Event(), {}, {"channels": 0}

    def progress(fraction, message):
        seen["channels"] = round(fraction * acts.shape[1])

    def work():
        try:
            perturbation.score_cam_weights(model, layer, x, acts, target, batch_size=64, progress=progress,
                                           cancel=cancel)
        except Cancelled:
            done["at"] = time.perf_counter()

    try:
        t = threading.Thread(target=work)
        t.start()
        time.sleep(after)
        pressed = time.perf_counter()
        cancel.set()
        t.join()
    finally:
        perturbation.time_sized_batch = real
    return done["at"] - pressed, seen["channels"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=520)
    ap.add_argument("--after", type=float, default=3.0)
    args = ap.parse_args()
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    model = Out(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)).eval()
    layer = model.m.backbone.layer4
    x = torch.randn(1, 3, args.size, args.size)
    store = {}
    h = layer.register_forward_hook(lambda _m, _i, o: store.update(a=o.detach()))
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(x)
        one = time.perf_counter() - t0
    h.remove()
    target = SemanticSegmentationTarget(int(out[0].argmax(0).flatten().mode().values), (out[0].argmax(0) >= 0).numpy())
    print(f"DeepLabV3 layer4, {args.size}x{args.size}, {torch.get_num_threads()} threads: one forward {one:.2f} s, "
          f"{store['a'].shape[1]} channels", flush=True)
    rows = {}
    for name, fixed in (("fixed64", True), ("time_sized", False)):
        delay, channels = cancel_delay(model, layer, x, store["a"], target, fixed, args.after)
        rows[name] = delay
        print(f"{name}: Cancel at {args.after:.0f} s -> stopped {delay:.2f} s later, {channels} channels scored", flush=True)
    print(f"cancel_fixed64={rows['fixed64']:.2f} cancel_time_sized={rows['time_sized']:.2f} "
          f"ratio={rows['fixed64'] / rows['time_sized']:.1f}")


if __name__ == "__main__":
    main()
