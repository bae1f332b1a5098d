"""The shared pass: one forward (+ one backward) with hooks on every chosen layer.

Its activations and gradients feed every pure method on every layer; perturbation methods
reuse its activations. Hooks live only inside one call and are removed even on errors.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from camcore import modellock
from camcore.errors import CamError
from camcore.models import LoadedModel
from camcore.preprocessing import ReshapeTransform

Progress = Callable[[float, str], None]


@dataclass
class FeaturePass:
    """Activations and gradients of the chosen layers for one input, as numpy (B x C x h x w)."""

    output: torch.Tensor  # the model's output for the one image, no batch dimension
    activation_tensors: dict[str, torch.Tensor]  # on the model's device
    _gradient_tensors: dict[str, torch.Tensor] | None
    seconds: float  # a batched pass: its time divided by the batch size
    # A pass from a kept forward (kept.py) has no gradients until a method asks for them: then
    # this runs the one backward, so Eigen-CAM on another box of the same image runs nothing.
    backward: Callable[[], dict[str, torch.Tensor]] | None = field(default=None, repr=False)
    _host: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    backward_seconds: float | None = None  # the lazy backward's, once it ran

    @property
    def gradient_tensors(self) -> dict[str, torch.Tensor]:
        if self._gradient_tensors is None:
            start = time.perf_counter()
            self._gradient_tensors = self.backward() if self.backward is not None else {}
            if self.backward is not None:
                self.backward_seconds = time.perf_counter() - start
        return self._gradient_tensors

    @property
    def has_gradients(self) -> bool:
        """Whether the backward has run (a kept forward's pass runs it on first use)."""
        return self._gradient_tensors is not None

    # Host (numpy) copies for the library's numpy math, made on first use: with device_math on a
    # GPU most maps never need them. On the CPU they share the tensors' memory.
    @property
    def activations(self) -> dict[str, np.ndarray]:
        return self._numpy("activations", self.activation_tensors)

    @property
    def gradients(self) -> dict[str, np.ndarray]:
        return self._numpy("gradients", self.gradient_tensors)

    def _numpy(self, kind: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        if kind not in self._host:
            self._host[kind] = {n: t.cpu().numpy() for n, t in tensors.items()}
        return self._host[kind]


def run_pass(
    model: LoadedModel,
    x: torch.Tensor,
    layers: Sequence[str],
    make_target: Callable[[torch.Tensor], object] | None,
    reshape: ReshapeTransform | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> tuple[FeaturePass, object]:
    """One forward (+ one backward when make_target is given) with hooks on `layers`, one image."""
    per_sample = None if make_target is None else (lambda _i, output: make_target(output))
    passes, targets = run_pass_batch(model, x, layers, per_sample, reshape, progress, cancel)
    return passes[0], targets[0]


def run_pass_batch(
    model: LoadedModel,
    x: torch.Tensor,
    layers: Sequence[str],
    make_target: Callable[[int, torch.Tensor], object] | None,
    reshape: ReshapeTransform | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> tuple[list[FeaturePass], list[object]]:
    """One batched forward (+ one backward) for B stacked images with hooks on `layers`.

    make_target(i, output_i) gives image i's target; the backward runs on the sum of the B
    targets. Every model here is in eval mode (no batch statistics), so image i's gradients
    depend on image i alone and equal those of a pass on it alone.

    Hooks live only inside this call, removed even on errors. Gradients are taken with
    torch.autograd.grad with respect to the layer outputs only: no parameter .grad is written,
    so nothing leaks between sessions sharing the model.

    Waiting for the model (another session's pass or Score-CAM batch) is reported through
    progress and ends with Cancelled when `cancel` is set (modellock.hold).
    """
    with modellock.hold(model.lock, model.spec.key, "a model pass", progress, cancel):
        fw = hooked_forward(model, x, layers, reshape)
        grads: dict[str, torch.Tensor] = {}
        targets: list[Any] = [None] * len(fw.output)
        if make_target is not None:
            with torch.enable_grad():
                targets = [make_target(i, out) for i, out in enumerate(fw.output)]
                loss = cast(torch.Tensor, sum(t(out) for t, out in zip(targets, fw.output, strict=True)))
                grads = layer_gradients(fw, layers, loss, reshape)
    seconds = (time.perf_counter() - fw.started) / len(fw.output)
    output = fw.detached_output()
    acts = fw.activations
    passes = [
        FeaturePass(output[i], {n: a[i:i + 1] for n, a in acts.items()}, {n: g[i:i + 1] for n, g in grads.items()},
                    seconds)
        for i in range(len(output))
    ]
    return passes, targets


@dataclass
class Forward:
    """One hooked forward: the output and the hooked layers' outputs still holding their graph
    (a backward's inputs), the activations as kept (detached copies, reshaped)."""

    output: Any  # a B x ... tensor, or a detector's list of B dicts
    layer_outputs: dict[str, Any]
    activations: dict[str, torch.Tensor]
    started: float  # perf_counter() when the forward began
    seconds: float

    def detached_output(self) -> Any:
        out = self.output
        return [_map(o, torch.Tensor.detach) for o in out] if isinstance(out, list) else out.detach()


def hooked_forward(model: LoadedModel, x: torch.Tensor, layers: Sequence[str],
                   reshape: ReshapeTransform | None = None) -> Forward:
    """One forward with hooks on `layers`, graph kept; the caller holds the model's lock (the
    hooks must never fire for another session's forward). Hooks are removed even on errors."""
    outputs: dict[str, Any] = {}
    snapshots: dict[str, Any] = {}
    handles = []
    start = time.perf_counter()
    with model.lock:  # re-entrant: the caller holds it (modellock.hold, which says whom it waits for)
        try:
            for name in layers:
                key = model.spec.layer(name).key  # a detector's FPN level: one entry of its dict output

                def hook(_module, _inputs, out, name=name, key=key):
                    out = out[key] if key else out
                    outputs[name] = out
                    # Copy now: a later in-place op in the network must not change what we keep.
                    snapshots[name] = _map(out, lambda t: t.detach().clone())
                handles.append(model.layer_module(name).register_forward_hook(hook))
            with torch.enable_grad():  # grad mode is thread-local: Streamlit reruns on new threads
                model.module.eval()
                output = model.module(x.to(model.device))
        finally:
            for h in handles:
                h.remove()
    missing = [n for n in layers if n not in outputs]
    if missing:
        raise CamError(f"Layer(s) {', '.join(missing)} did not run in the model's forward pass.")
    acts = {n: _reshaped(t, reshape) for n, t in snapshots.items()}
    return Forward(output, outputs, acts, start, time.perf_counter() - start)


def layer_gradients(fw: Forward, layers: Sequence[str], loss: torch.Tensor,
                    reshape: ReshapeTransform | None = None, retain_graph: bool = False) -> dict[str, torch.Tensor]:
    """d loss / d (each hooked layer's output), reshaped like the activations. Taken with
    torch.autograd.grad with respect to the layer outputs only: no parameter .grad is written, so
    nothing leaks between sessions sharing the model. retain_graph: keep the forward's graph for
    another target's backward (kept.py)."""
    names = [n for n in layers if any(t.requires_grad for t in _tensors(fw.layer_outputs[n]))]
    grads: dict[str, torch.Tensor] = {}
    if not names:
        return grads
    flat = [t for n in names for t in _tensors(fw.layer_outputs[n])]
    got = list(torch.autograd.grad(loss, flat, allow_unused=True, retain_graph=retain_graph)) \
        if loss.requires_grad else [None] * len(flat)
    for n in names:
        tensors = _tensors(fw.layer_outputs[n])
        mine = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, got[:len(tensors)], strict=True)]
        got = got[len(tensors):]
        out = fw.layer_outputs[n]
        g = dict(zip(out, mine, strict=True)) if isinstance(out, dict) else mine[0]
        grads[n] = _reshaped(g, reshape).detach()
    return grads


def _tensors(value: Any) -> list[torch.Tensor]:
    """A layer's output as a list of tensors: a detector's FPN gives a dict of levels."""
    return list(value.values()) if isinstance(value, dict) else [value]


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, dict):
        return type(value)((k, fn(v) if isinstance(v, torch.Tensor) else v) for k, v in value.items())
    return fn(value)


def _reshaped(value: Any, reshape: ReshapeTransform | None) -> torch.Tensor:
    out = reshape(value) if reshape else value
    if not isinstance(out, torch.Tensor):
        raise CamError("This layer gives several feature maps: the model needs a reshape transform for it.")
    return out.float()
