"""Pure CAM methods computed where the activations are: on the GPU when there is one.

pytorch-grad-cam's method math is numpy on the host. On a GPU that means copying every hooked
layer's activations and gradients to the host and computing there, which costs many times the
model's own forward + backward. Here the same formulas (pytorch-grad-cam 1.5.7's: each method's
`Product.device` in methods.py, beside its numpy form), the Eigen projection (projection.py's
method: the top eigenvector of the smaller Gram matrix in float64, the same sign rule) and the
library's normalisation run as torch ops on the tensors' device; only the raw map and the
image-sized map come back to the host.

Used when the model is on a GPU. CAM_EXPLORER_DEVICE_MATH=1 forces it on the CPU (the tests
compare it there with the library), =0 turns it off.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from camcore.projection import GRAM_LIMIT

FORCE_ENV = "CAM_EXPLORER_DEVICE_MATH"


def enabled(device: torch.device) -> bool:
    flag = os.environ.get(FORCE_ENV, "")
    if flag == "0":
        return False
    return device.type != "cpu" or flag == "1"


def sum_hw(t: torch.Tensor) -> torch.Tensor:
    # Summed in float64: numpy's pairwise float32 sums are close to exact, and Grad-CAM++'s
    # denominator (2 g^2 + sum(a) g^3) can nearly cancel, which magnifies any rounding in the sum.
    return t.sum(dim=(2, 3), keepdim=True, dtype=torch.float64).to(t.dtype)


def first_component_projection(product: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x h x w float32, as projection.first_component_projection."""
    out = []
    for p in torch.nan_to_num(product.double(), nan=0.0):
        x = p.reshape(p.shape[0], -1).T
        x = x - x.mean(dim=0)
        n, c = x.shape
        if min(n, c) > GRAM_LIMIT and x.device.type == "cpu":
            # On the CPU the host's Lanczos is faster than a large dense eigh.
            from camcore.projection import first_component_projection as host_projection

            out.append(torch.from_numpy(host_projection(p[None].cpu().numpy())[0]).double())
            continue
        if c <= n:
            v = top_eigenvector(x.T @ x)
        else:
            v = x.T @ top_eigenvector(x @ x.T)
            v = v / v.norm().clamp(min=torch.finfo(v.dtype).tiny)
        projection = x @ v
        # the library's sign rule without a host round trip (a `if` would synchronise)
        flip = projection.min().abs() > projection.max().abs()
        projection = torch.where(flip, -projection, projection)
        out.append(projection.reshape(p.shape[1:]))
    return torch.stack(out).float()


SUBSPACE = 8  # block size of the subspace iteration
SQUARINGS = 7  # the block starts from G^128: a few large products, not a hundred small synced steps
REFINE = 2  # subspace steps with G itself after the squarings (their rounding is G's, not G^128's)
RESIDUAL = 1e-10  # relative residual |G v - l v| / l accepted from the iteration


def top_eigenvector(gram: torch.Tensor, iterative: bool | None = None) -> torch.Tensor:
    """The eigenvector of a symmetric positive semi-definite matrix's largest eigenvalue.

    A dense eigh of a 2048 x 2048 float64 matrix takes tens of milliseconds on a GPU, longer
    than the model's whole pass. Activations' Gram matrices have one dominant eigenvalue, so a
    block subspace iteration (8 vectors, a seeded start) converges fast. Its steps are many small
    QRs, each a synchronised solver call (60 of them cost ~10 ms a map on an H200, bench/
    gpu_check.py): the block instead starts from G^128, made by 7 squarings (normalised, so
    nothing overflows), then takes REFINE steps with G. The result is kept only if its residual
    shows machine precision, else the dense eigh decides. `iterative` defaults to: on a GPU, for
    matrices above 32."""
    m = gram.shape[0]
    if iterative is None:  # on a GPU a dense eigh of 256 x 256 costs milliseconds too
        iterative = gram.device.type != "cpu" and m > 4 * SUBSPACE
    if iterative and m > SUBSPACE:
        tiny = torch.finfo(gram.dtype).tiny
        power = gram / gram.norm().clamp(min=tiny)
        for _ in range(SQUARINGS):
            power = power @ power
            power = power / power.norm().clamp(min=tiny)
        generator = torch.Generator(device=gram.device).manual_seed(0)
        q = torch.randn(m, SUBSPACE, generator=generator, device=gram.device, dtype=gram.dtype)
        q = torch.linalg.qr(power @ q)[0]
        for _ in range(REFINE):
            q = torch.linalg.qr(gram @ q)[0]
        # Rayleigh-Ritz in the subspace: an 8 x 8 eigh is microseconds on the host and a
        # solver launch with its own synchronisation on a GPU
        values, vectors = torch.linalg.eigh((q.T @ gram @ q).cpu())
        v, top = q @ vectors[:, -1].to(q.device), values[-1]
        if top > 0 and (gram @ v - top * v).norm() <= RESIDUAL * top:
            return v
    return torch.linalg.eigh(gram)[1][:, -1]


def _min_max(t: torch.Tensor) -> torch.Tensor:
    # pytorch-grad-cam's scale_cam_image without the resize: x - min, / (1e-7 + max)
    t = t - t.amin(dim=(-2, -1), keepdim=True)
    return t / (1e-7 + t.amax(dim=(-2, -1), keepdim=True))


def resize(maps: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """B x h x w -> B x H x W bilinear with half-pixel centres, as cv2.resize's INTER_LINEAR."""
    return F.interpolate(maps[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]


def normalise_like_library(raw: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """engine.normalise_like_library on the device: 1 x h x w raw -> 1 x H x W in 0..1."""
    scaled = resize(_min_max(raw.clamp(min=0)), input_hw)
    return _min_max(scaled.clamp(min=0))
