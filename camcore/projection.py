"""The first principal component projection behind Eigen-CAM, EigenGrad-CAM and eigen_smooth.

pytorch-grad-cam's get_2d_projection calls np.linalg.svd(full_matrices=True) on the centred
(H*W x C) matrix: it builds an H*W x H*W matrix to use one row of V^T (seconds per map at 520 px).
We need only the top right singular vector v, so:
  - small matrices: economy SVD (exact, cheap);
  - large ones: Lanczos (ARPACK eigsh) on X^T X or X X^T, whichever is smaller, through
    matrix-vector products in float64, converged to machine precision.

Sign rule (SVD's sign is arbitrary): the projection is flipped so that its extreme of larger
magnitude is positive (|max| >= |min|), the rule of Seg-Eigen-CAM (Chung & Ying 2025, eq. 13).
It is deterministic, so a heatmap never flips between runs or machines.
"""
from __future__ import annotations

import numpy as np

EXACT_LIMIT = 256  # below this many channels or positions an economy SVD is fastest


def _top_direction(x: np.ndarray) -> np.ndarray:
    """Unit vector v maximising |x v| for a centred N x C matrix x (float64)."""
    n, c = x.shape
    if min(n, c) <= EXACT_LIMIT:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return vt[0]
    from scipy.sparse.linalg import LinearOperator, eigsh

    if c <= n:
        op = LinearOperator((c, c), matvec=lambda v: x.T @ (x @ v), dtype=np.float64)
        _, vecs = eigsh(op, k=1, which="LA", tol=0, v0=np.ones(c))
        return vecs[:, 0]
    op = LinearOperator((n, n), matvec=lambda u: x @ (x.T @ u), dtype=np.float64)
    _, vecs = eigsh(op, k=1, which="LA", tol=0, v0=np.ones(n))
    v = x.T @ vecs[:, 0]
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def first_component_projection(batch: np.ndarray) -> np.ndarray:
    """B x C x H x W -> B x H x W float32: each map projected on its first principal direction."""
    batch = np.nan_to_num(np.asarray(batch, dtype=np.float64), nan=0.0)
    out = []
    for activations in batch:
        x = activations.reshape(activations.shape[0], -1).T
        x = x - x.mean(axis=0)
        projection = x @ _top_direction(x)
        if abs(projection.min()) > abs(projection.max()):
            projection = -projection
        out.append(projection.reshape(activations.shape[1:]))
    return np.float32(out)
