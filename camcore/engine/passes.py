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
    gradient_tensors: dict[str, torch.Tensor]
    seconds: float  # a batched pass: its time divided by the batch size
    _host: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

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
    outputs: dict[str, torch.Tensor] = {}
    snapshots: dict[str, torch.Tensor] = {}
    handles = []
    start = time.perf_counter()
    # Hooks are registered under the model's lock (re-entrant) too: another session's forward
    # must never fire them.
    with modellock.hold(model.lock, model.spec.key, "a model pass", progress, cancel):
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
                missing = [n for n in layers if n not in outputs]
                if missing:
                    raise CamError(f"Layer(s) {', '.join(missing)} did not run in the model's forward pass.")
                acts = {n: _reshaped(t, reshape) for n, t in snapshots.items()}
                snapshots.clear()
                grads: dict[str, torch.Tensor] = {}
                targets: list[Any] = [None] * len(output)
                if make_target is not None:
                    targets = [make_target(i, out) for i, out in enumerate(output)]
                    names = [n for n in layers if any(t.requires_grad for t in _tensors(outputs[n]))]
                    if names:
                        loss = cast(torch.Tensor, sum(t(out) for t, out in zip(targets, output, strict=True)))
                        flat = [t for n in names for t in _tensors(outputs[n])]
                        got = list(torch.autograd.grad(loss, flat, allow_unused=True)) if loss.requires_grad \
                            else [None] * len(flat)
                        for n in names:
                            tensors = _tensors(outputs[n])
                            mine = [torch.zeros_like(t) if g is None else g
                                    for t, g in zip(tensors, got[:len(tensors)], strict=True)]
                            got = got[len(tensors):]
                            g = dict(zip(outputs[n], mine, strict=True)) if isinstance(outputs[n], dict) else mine[0]
                            grads[n] = _reshaped(g, reshape).detach()
        finally:
            for h in handles:
                h.remove()
    seconds = (time.perf_counter() - start) / len(output)
    output = [_map(o, torch.Tensor.detach) for o in output] if isinstance(output, list) else output.detach()
    passes = [
        FeaturePass(output[i], {n: a[i:i + 1] for n, a in acts.items()}, {n: g[i:i + 1] for n, g in grads.items()},
                    seconds)
        for i in range(len(output))
    ]
    return passes, targets


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
