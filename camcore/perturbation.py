"""Score-CAM's and Ablation-CAM's channel weights, batched: pytorch-grad-cam's math, faster.

Both need one forward per channel of the layer (2048 on DeepLabV3 layer4), so their limit is
those forwards run in large batches. The library builds every Score-CAM masked input at once
(C x 3 x H x W: 8.8 GB for DeepLabV3 layer4 at 520x693), and both of its loops move each
channel's score to the host on its own. Here each batch of channels is built and scored on the
device (the target evaluated for the whole batch at once), scores stay there until the end,
progress is reported and the user can cancel. Out of GPU memory, the batch is halved and the
work goes on.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

from camcore.errors import Cancelled

Progress = Callable[[float, str], None]
Guard = Callable[[], AbstractContextManager]  # held around each batch of forwards (the model's lock)
MIN_BATCH = 1
# One batch of forwards takes about this long: Cancel (and Streamlit's Stop) are seen between
# batches, so they take effect within about this time (issue 22 item 7: within 2 s).
BATCH_SECONDS = 0.8
Clock = Callable[[], float]


def time_sized_batch(seconds_per_channel: float, cap: int, budget: float = BATCH_SECONDS) -> int:
    """The batch that takes about `budget` seconds at the rate just measured, from 1 to `cap`
    (the memory bound: the requested size on a CPU, what the free GPU memory holds on a GPU)."""
    if seconds_per_channel <= 0:
        return max(MIN_BATCH, cap)
    return int(max(MIN_BATCH, min(cap, budget / seconds_per_channel + 1e-9)))


def default_batch_size(device: torch.device, input_hw: tuple[int, int], requested: int) -> int:
    """On a GPU, as many masked inputs as a quarter of the free memory holds (activations of the
    forward pass need the rest); elsewhere the requested size."""
    if device.type != "cuda":
        return requested
    free, _total = torch.cuda.mem_get_info(device)
    per_image = 3 * input_hw[0] * input_hw[1] * 4 * 40  # input + a generous allowance for activations
    return int(max(MIN_BATCH, min(1024, free // 4 // per_image)))


def batch_scorer(target: Callable, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """target(output) for a whole batch of outputs at once, on the device (B outputs -> B scores).
    The library's two targets are vectorised (the segmentation mask moved to the device once);
    any other target is called per output, as the library does."""
    if isinstance(target, ClassifierOutputTarget):
        return lambda outputs: outputs[:, target.category].float()
    if isinstance(target, SemanticSegmentationTarget):
        mask = torch.as_tensor(np.asarray(target.mask), dtype=torch.float32, device=device)
        return lambda outputs: (outputs[:, target.category].float() * mask).sum(dim=(1, 2))
    return lambda outputs: torch.stack([torch.as_tensor(target(o)) for o in outputs]).float()


def _in_batches(channels: int, batch_size: int, score_batch: Callable[[int, int], torch.Tensor], name: str,
                progress: Progress | None, cancel: threading.Event | None,
                guard: Guard | None = None, clock: Clock = time.perf_counter) -> torch.Tensor:
    """score_batch(start, stop) for every batch of channels, with cancel, progress and the OOM
    back-off; the C scores, still on the device. guard() is held around each batch (the model's
    lock): between batches other sessions' passes can run, and cancel is checked.

    Batches are sized by time: the first is one channel, each next one takes about
    BATCH_SECONDS at the rate the last one measured (time_sized_batch), never above
    `batch_size`, the memory bound. So cancel is seen within about a batch's time."""
    scores: list[torch.Tensor] = []
    cap = max(MIN_BATCH, int(batch_size))
    start, bs = 0, MIN_BATCH
    guard = guard or contextlib.nullcontext
    with torch.no_grad():
        while start < channels:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{name} cancelled.")
            stop = min(channels, start + bs)
            try:
                with guard():
                    began = clock()
                    scores.append(score_batch(start, stop))
                    if scores[-1].is_cuda:
                        torch.cuda.synchronize(scores[-1].device)  # the time of the work, not its launch
                    took = clock() - began
            except torch.cuda.OutOfMemoryError:
                if bs == MIN_BATCH:
                    raise
                bs = max(MIN_BATCH, bs // 2)  # retry this batch smaller
                cap = bs
                torch.cuda.empty_cache()
                if progress:
                    progress(start / channels, f"out of GPU memory: batch size lowered to {bs}")
                continue
            bs = time_sized_batch(took / (stop - start), cap)
            start = stop
            if progress:
                progress(start / channels, f"{name}: {start}/{channels} channels")
    return torch.cat(scores)


def score_cam_weights(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    x: torch.Tensor,
    activations: np.ndarray | torch.Tensor,
    target: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 64,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    vit: bool = False,
    guard: Guard | None = None,
) -> np.ndarray:
    """Softmax over channels of target(model(x * normalised upsampled channel)): 1 x C."""
    acts = torch.as_tensor(activations, device=x.device)  # the pass's tensor: no host round trip
    size = x.shape[-2:]
    score = batch_scorer(target, x.device)

    def score_batch(start: int, stop: int) -> torch.Tensor:
        # UpsamplingBilinear2d in the library is bilinear with align_corners=True.
        up = F.interpolate(acts[:, start:stop], size=size, mode="bilinear", align_corners=True)[0]
        flat = up.reshape(up.shape[0], -1)
        mins = flat.min(dim=1).values[:, None, None]
        maxs = flat.max(dim=1).values[:, None, None]
        masks = (up - mins) / (maxs - mins + 1e-8)
        return score(model(x[0][None] * masks[:, None]))

    scores = _in_batches(acts.shape[1], batch_size, score_batch, "Score-CAM", progress, cancel, guard)
    return torch.softmax(scores[None], dim=-1).cpu().numpy()


def _detached(out):
    """A layer's output, detached and copied (an FPN's dict level by level)."""
    if isinstance(out, dict):
        return type(out)((k, v.detach().clone()) for k, v in out.items())
    return out.detach().clone()


ABLATION_VALUE = 1e7  # the library's: an ablated channel sits this far below the layer's minimum


def ablated_copies(raw: torch.Tensor, channels: torch.Tensor, vit: bool) -> torch.Tensor:
    """len(channels) copies of the layer output `raw` (1 x ...), copy i with channel channels[i]
    ablated: set to 0 where the layer's minimum is 0 (after a ReLU), else to that minimum minus
    ABLATION_VALUE. CNN outputs are 1 x C x H x W; ViT tokens 1 x N x C (channel last)."""
    copies = raw.repeat(len(channels), *([1] * (raw.dim() - 1)))
    floor = raw.min()
    value = torch.zeros((), dtype=raw.dtype, device=raw.device) if floor == 0 else floor - ABLATION_VALUE
    rows = torch.arange(len(channels), device=raw.device)
    if vit:
        copies[rows, :, channels] = value
    else:
        copies[rows, channels] = value
    return copies


def ablated_level_copies(raw: dict, channels: torch.Tensor, level: str | None) -> dict:
    """A detector's FPN output (an ordered dict of levels, 1 x C x H x W each) as len(channels)
    copies, copy i with one channel ablated, as pytorch-grad-cam's AblationLayerFasterRCNN does:
    on one level (`level`), or on the levels fused (channel c: level c // C, channel c % C)."""
    keys = list(raw)
    per = int(raw[keys[0]].shape[1])
    copies = type(raw)((k, v.repeat(len(channels), 1, 1, 1)) for k, v in raw.items())
    for row, c in enumerate(channels.tolist()):
        key = level if level is not None else keys[c // per]
        tensor = copies[key]
        floor = raw[key].min()
        tensor[row, c % per if level is None else c] = 0 if floor == 0 else floor - ABLATION_VALUE
    return copies


def _trunk_can_be_shared(copies: torch.Tensor, score_copies: Callable[[torch.Tensor, int, bool], torch.Tensor]) -> bool:
    """Whether the ablated copies can be scored from one input image: the layers before the ablated
    one run once (batch 1) and the copies (batch B) go on from it, broadcast against the trunk's
    batch-1 tensors where they meet again (a ViT's or a ResNet's residual sum). On DeiT-tiny's
    block10 that takes a quarter of the time of B whole forwards, as the library runs them.

    A model may not allow it (a concatenation with an earlier tensor, a reshape to the input's
    batch size: an error, or worse, scores for the wrong copies); so the two ways are compared on
    `copies` (two: the first two channels' ablations), and any failure of the model or difference
    keeps the whole forwards. (A detector's FPN, a dict, keeps them: its heads count images from
    the input.)"""
    count = len(copies)
    with torch.no_grad():
        whole = score_copies(copies, count, False)
        try:
            shared = score_copies(copies, count, True)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception:  # noqa: BLE001 (any failure of the shortcut means: not this model)
            return False
    return shared.shape == whole.shape and bool(torch.allclose(shared, whole, rtol=1e-4, atol=1e-5))


def ablation_cam_weights(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    x: torch.Tensor,
    activations: np.ndarray | torch.Tensor,
    target: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 64,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    vit: bool = False,
    guard: Guard | None = None,
    level: str | None = None,
) -> np.ndarray:
    """(original score - score with channel c ablated) / original score: 1 x C.

    A layer whose output is a dict (a detector's FPN) is ablated per level (ablated_level_copies):
    `level` names the one level the activations are of, None for the levels fused.

    As in the library, the layer's output is computed once and each batch repeats it with one
    channel ablated per copy, put in place of the layer's output by a forward hook (the library
    swaps the layer inside the model; a hook leaves the shared model untouched). Where the model
    allows it, the batch's forward starts from one input image, so the layers before the ablated
    one run once per batch, not once per copy (_trunk_can_be_shared).

    One deliberate difference: the library's AblationLayer lowers the value row by row inside a
    batch (each row takes the minimum of a batch that already holds the previous rows' ablations,
    so row i gets min - (i+1) * 1e7 on layers without a ReLU), which makes its weights depend on
    the batch size. Every copy here gets min - 1e7: the library's output at batch size 1, for any
    batch size. After a ReLU (minimum 0) both set 0 and agree at every batch size.
    """
    captured: dict[str, torch.Tensor] = {}
    with (guard or contextlib.nullcontext)():
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.update(out=_detached(out)))
        try:
            with torch.no_grad():
                original = batch_scorer(target, x.device)(model(x))[0]
        finally:
            handle.remove()
    raw = captured["out"]
    score = batch_scorer(target, x.device)

    def copies_of(start: int, stop: int):
        channels = torch.arange(start, stop)
        return (ablated_level_copies(raw, channels, level) if isinstance(raw, dict)
                else ablated_copies(raw, channels.to(raw.device), vit))

    def score_copies(copies, count: int, shared: bool) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda _m, _i, _out: copies)
        try:
            return score(model(x[0][None] if shared else x[0][None].repeat(count, *([1] * (x.dim() - 1)))))
        finally:
            handle.remove()

    channels = int(activations.shape[1])
    shared = False
    if not isinstance(raw, dict) and channels >= 2:
        with (guard or contextlib.nullcontext)():
            shared = _trunk_can_be_shared(copies_of(0, 2), score_copies)

    def score_batch(start: int, stop: int) -> torch.Tensor:
        return score_copies(copies_of(start, stop), stop - start, shared)

    ablated = _in_batches(channels, batch_size, score_batch, "Ablation-CAM", progress, cancel, guard)
    # float32 as the library (np.float32 of the scores and of the original score)
    original32 = np.float32(original.item())
    return ((original32 - ablated.cpu().numpy().astype(np.float32)) / original32)[None]
