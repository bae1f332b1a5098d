"""Score-CAM / Ablation-CAM batches follow the measured time of a forward (issue 22 item 7), so
Cancel is seen within about perturbation.BATCH_SECONDS. The clock is the test's: the sizes must
follow what it says a forward costs, whatever this machine's speed (no timed test)."""
from __future__ import annotations

import threading

import pytest
import torch

from camcore import perturbation
from camcore.errors import Cancelled


class Clock:
    """Time that passes only when a batch is scored: `per_channel` seconds per channel."""

    def __init__(self, per_channel: float):
        self.now, self.per_channel, self.sizes = 0.0, per_channel, []

    def __call__(self) -> float:
        return self.now

    def score(self, start: int, stop: int) -> torch.Tensor:
        self.sizes.append(stop - start)
        self.now += self.per_channel * (stop - start)
        return torch.arange(start, stop, dtype=torch.float32)


@pytest.mark.parametrize("per_channel, cap, expected", [
    (1.25, 64, 1),     # DeepLabV3 layer4 on 2 CPU cores: one forward at a time
    (0.1, 64, 8),      # 0.8 s / 0.1 s
    (0.001, 64, 64),   # fast forwards: the memory bound
    (0.01, 16, 16),
])
def test_batch_size_follows_the_measured_time_of_a_forward(per_channel, cap, expected):
    clock = Clock(per_channel)
    scores = perturbation._in_batches(200, cap, clock.score, "Score-CAM", None, None, clock=clock)
    assert torch.equal(scores, torch.arange(200, dtype=torch.float32))  # every channel once, in order
    assert clock.sizes[0] == 1  # the first batch times one forward
    assert set(clock.sizes[1:-1]) == {expected}, clock.sizes
    assert all(s * per_channel <= max(perturbation.BATCH_SECONDS, per_channel) for s in clock.sizes)


def test_a_slower_forward_shrinks_the_next_batch():
    clock = Clock(0.01)
    seen: list[int] = []

    def score(start: int, stop: int) -> torch.Tensor:
        seen.append(stop - start)
        if sum(seen) > 100:
            clock.per_channel = 0.2  # the machine got busy
        return clock.score(start, stop)

    perturbation._in_batches(300, 64, score, "Score-CAM", None, None, clock=clock)
    assert seen[-1] <= perturbation.BATCH_SECONDS / 0.2, seen


def test_cancel_is_seen_after_one_time_sized_batch():
    clock, cancel = Clock(1.25), threading.Event()

    def score(start: int, stop: int) -> torch.Tensor:
        cancel.set()  # Cancel pressed during the first batch
        return clock.score(start, stop)

    with pytest.raises(Cancelled):
        perturbation._in_batches(2048, 64, score, "Score-CAM", None, cancel, clock=clock)
    assert clock.now <= 2.0, clock.sizes  # seconds of forwards from Cancel to stop
