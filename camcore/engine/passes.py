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
                def hook(_module, _inputs, out, name=name):
                    outputs[name] = out
                    # Copy now: a later in-place op in the network must not change what we keep.
                    snapshots[name] = out.detach().clone()
                handles.append(model.layer_module(name).register_forward_hook(hook))
            with torch.enable_grad():  # grad mode is thread-local: Streamlit reruns on new threads
                model.module.eval()
                output = model.module(x.to(model.device))
                missing = [n for n in layers if n not in outputs]
                if missing:
                    raise CamError(f"Layer(s) {', '.join(missing)} did not run in the model's forward pass.")
                acts = {n: (reshape(t) if reshape else t).float() for n, t in snapshots.items()}
                snapshots.clear()
                grads: dict[str, torch.Tensor] = {}
                targets: list[Any] = [None] * len(output)
                if make_target is not None:
                    targets = [make_target(i, out) for i, out in enumerate(output)]
                    names = [n for n in layers if outputs[n].requires_grad]
                    if names:
                        loss = cast(torch.Tensor, sum(t(out) for t, out in zip(targets, output, strict=True)))
                        got = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
                        for n, g in zip(names, got, strict=True):
                            g = torch.zeros_like(outputs[n]) if g is None else g
                            grads[n] = (reshape(g) if reshape else g).detach().float()
        finally:
            for h in handles:
                h.remove()
    seconds = (time.perf_counter() - start) / len(output)
    output = output.detach()
    passes = [
        FeaturePass(output[i], {n: a[i:i + 1] for n, a in acts.items()}, {n: g[i:i + 1] for n, g in grads.items()},
                    seconds)
        for i in range(len(output))
    ]
    return passes, targets
