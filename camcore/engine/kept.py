"""One image's forward, kept with its graph: another target on the same image costs one backward.

A detector's other box (or a classifier's other class) changes only the score the gradients are
of, not the forward: the activations are the same, and the gradients are one backward of the new
score through the same graph (retain_graph). So:

- a method that needs no gradients (Eigen-CAM, and Score-CAM / Ablation-CAM's activations) runs
  no pass at all for another box of the same image;
- a gradient method runs one backward, not a forward + backward.

Its maps equal a fresh pass's (tests/test_detection_switch.py). What it cannot reuse, and runs
again: another image, model, weights or input size (the kept graph is dropped first: one image's
graph at a time bounds the memory), aug_smooth (its six augmented passes are per target), and
Score-CAM / Ablation-CAM's own per-channel forwards (scored for the target they explain).

An app session holds one KeptForward (ui/compute.py) and hands it to its Explainers.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from camcore import modellock
from camcore.engine.passes import FeaturePass, Forward, Progress, hooked_forward, layer_gradients
from camcore.models import LoadedModel
from camcore.preprocessing import ReshapeTransform


@dataclass
class _Held:
    model: LoadedModel
    version: tuple
    x: torch.Tensor  # the input as the Explainer made it (before moving to the device)
    layers: tuple[str, ...]
    forward: Forward
    output: Any  # the image's detached output (no batch dimension)

    def serves(self, model: LoadedModel, x: torch.Tensor, layers: Sequence[str]) -> bool:
        return (self.model is model and self.version == model.version and set(layers) <= set(self.layers)
                and self.x.shape == x.shape and self.x.dtype == x.dtype
                and (self.x is x or torch.equal(self.x, x)))


class KeptForward:
    """The latest image's hooked forward with its graph, shared by the Explainers of one session.

    Thread-safe (one lock); `forwards` and `backwards` count the passes it ran."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._held: _Held | None = None
        self.forwards = 0
        self.backwards = 0
        self.backward_seconds = 0.0  # the last backward's

    def drop(self) -> None:
        """Let go of the kept graph (its memory)."""
        with self._lock:
            self._held = None

    @property
    def holds(self) -> bool:
        return self._held is not None

    def pass_for(
        self,
        model: LoadedModel,
        x: torch.Tensor,
        layers: Sequence[str],
        make_target: Callable[[Any], object],
        reshape: ReshapeTransform | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[FeaturePass, object, bool]:
        """(the pass, the target, whether the kept forward served it) of one image (x: 1 x C x H
        x W) for the target make_target(output) picks: the kept forward when it is this image's,
        else a new one (which replaces it). Its gradients are one backward, run when a method
        first asks for them."""
        with self._lock:
            reused = self._held is not None and self._held.serves(model, x, layers)
            held = self._ensure(model, x, layers, reshape, progress, cancel)
            with torch.enable_grad():  # the target may build on the output (a segmentation mask)
                target = make_target(held.forward.output[0])
        layers = tuple(layers)

        def backward() -> dict[str, torch.Tensor]:
            return self._gradients(model, x, layers, reshape, target)

        acts = {n: held.forward.activations[n] for n in layers}
        return FeaturePass(held.output, acts, None, held.forward.seconds, backward=backward), target, reused

    def _ensure(self, model: LoadedModel, x: torch.Tensor, layers: Sequence[str], reshape: ReshapeTransform | None,
                progress: Progress | None = None, cancel: threading.Event | None = None) -> _Held:
        held = self._held
        if held is not None and held.serves(model, x, layers):
            return held
        self._held = None  # free the old graph before the new forward: one image's graph at a time
        with modellock.hold(model.lock, model.spec.key, "a model pass", progress, cancel):
            fw = hooked_forward(model, x, layers, reshape)
        self.forwards += 1
        out = fw.detached_output()
        self._held = _Held(model, model.version, x, tuple(layers), fw, out[0])
        return self._held

    def _gradients(self, model: LoadedModel, x: torch.Tensor, layers: tuple[str, ...],
                   reshape: ReshapeTransform | None, target: Any) -> dict[str, torch.Tensor]:
        """One backward of target's score through the kept graph (a new forward first when the
        graph kept now is another image's: the session went on, then came back)."""
        with self._lock:
            held = self._ensure(model, x, layers, reshape)
            start = time.perf_counter()
            with torch.enable_grad():
                loss = target(held.forward.output[0])
                grads = layer_gradients(held.forward, layers, loss, reshape, retain_graph=True)
            self.backwards += 1
            self.backward_seconds = time.perf_counter() - start
        return grads
