"""Score-CAM's channel weights, batched: pytorch-grad-cam's math without its memory spike.

The library builds every masked input at once (C x 3 x H x W: 8.8 GB for DeepLabV3 layer4 at
520x693) and moves each score to the host on its own. Here each batch of channels is upsampled,
masked and scored on the device, scores stay there until the end, progress is reported and the
user can cancel. Out of GPU memory, the batch is halved and the work goes on.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from camcore.errors import Cancelled

Progress = Callable[[float, str], None]
MIN_BATCH = 1


def default_batch_size(device: torch.device, input_hw: tuple[int, int], requested: int) -> int:
    """On a GPU, as many masked inputs as a quarter of the free memory holds (activations of the
    forward pass need the rest); elsewhere the requested size."""
    if device.type != "cuda":
        return requested
    free, _total = torch.cuda.mem_get_info(device)
    per_image = 3 * input_hw[0] * input_hw[1] * 4 * 40  # input + a generous allowance for activations
    return int(max(MIN_BATCH, min(1024, free // 4 // per_image)))


def score_cam_weights(
    model: torch.nn.Module,
    x: torch.Tensor,
    activations: np.ndarray,
    target: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 64,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Softmax over channels of target(model(x * normalised upsampled channel)): 1 x C."""
    device = x.device
    acts = torch.from_numpy(np.ascontiguousarray(activations)).to(device)
    channels = acts.shape[1]
    size = x.shape[-2:]
    scores: list[torch.Tensor] = []
    start, bs = 0, max(MIN_BATCH, int(batch_size))
    with torch.no_grad():
        while start < channels:
            if cancel is not None and cancel.is_set():
                raise Cancelled("Score-CAM cancelled.")
            try:
                stop = min(channels, start + bs)
                # UpsamplingBilinear2d in the library is bilinear with align_corners=True.
                up = F.interpolate(acts[:, start:stop], size=size, mode="bilinear", align_corners=True)[0]
                flat = up.reshape(up.shape[0], -1)
                mins = flat.min(dim=1).values[:, None, None]
                maxs = flat.max(dim=1).values[:, None, None]
                masks = (up - mins) / (maxs - mins + 1e-8)
                outputs = model(x[0][None] * masks[:, None])
                scores.append(torch.stack([target(o) for o in outputs]).float())
                start = stop
            except torch.cuda.OutOfMemoryError:
                if bs == MIN_BATCH:
                    raise
                bs = max(MIN_BATCH, bs // 2)  # retry this batch smaller
                torch.cuda.empty_cache()
                if progress:
                    progress(start / channels, f"out of GPU memory: batch size lowered to {bs}")
                continue
            if progress:
                progress(start / channels, f"Score-CAM: {start}/{channels} channels")
    all_scores = torch.cat(scores)[None]
    return torch.softmax(all_scores, dim=-1).cpu().numpy()
