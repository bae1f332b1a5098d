"""How an image becomes the tensor a model sees, and how a ViT's tokens become a grid.

The model registry (models.py) names each model's `Preprocess`; the functions here apply it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: the registry's Preprocess needs none
    import torch

    from camcore.models import ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ReshapeTransform = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Preprocess:
    mode: str  # "short_side": keep aspect, short side = size; "square": size x size
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def input_size_for(spec: ModelSpec, image_hw: tuple[int, int], size: int | None = None) -> tuple[int, int]:
    """(height, width) of the tensor the model sees. ViTs have a fixed input size."""
    p = spec.preprocess
    size = size if (size and p.mode == "short_side") else p.size
    if p.mode == "square":
        return size, size
    h, w = image_hw
    scale = size / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def preprocess(spec: ModelSpec, rgb: np.ndarray, size: int | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x h x w float tensor, normalised as the model was trained.

    On a GPU `device`, the resized uint8 image is copied there and scaled there: the same three
    float32 operations, each correctly rounded on both, so the tensor is bit for bit the host's
    (bench/gpu_check.py checks it), without ~10 ms of numpy on the host per image at 520 px."""
    import torch

    h, w = input_size_for(spec, rgb.shape[:2], size)
    shrink = h * w < rgb.shape[0] * rgb.shape[1]
    resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if device is not None and torch.device(device).type != "cpu":
        t = torch.from_numpy(np.ascontiguousarray(resized)).to(device).permute(2, 0, 1).float()
        # divisors as device tensors: torch divides by a host scalar as a multiply by its reciprocal
        consts = torch.tensor([255.0, *spec.preprocess.mean, *spec.preprocess.std], dtype=torch.float32,
                              device=t.device)
        return ((t / consts[0] - consts[1:4, None, None]) / consts[4:7, None, None]).contiguous()[None]
    scaled = resized.astype(np.float32) / 255.0
    mean = np.asarray(spec.preprocess.mean, dtype=np.float32)
    x = (scaled - mean) / np.asarray(spec.preprocess.std, dtype=np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def reshape_transform_for(spec: ModelSpec, input_hw: tuple[int, int],
                          module: torch.nn.Module | None = None) -> ReshapeTransform | None:
    """ViT tokens -> B x C x gh x gw (prefix tokens such as the class token dropped); a detector's
    feature maps: FPN levels fused (camcore.detection.fuse_levels), the padding cropped away."""
    if spec.task == "detection" and module is not None:
        from camcore.detection import reshape_for

        return reshape_for(module, input_hw)
    if spec.family != "vit":
        return None
    gh, gw = input_hw[0] // spec.patch_size, input_hw[1] // spec.patch_size

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 4:
            return tensor
        tokens = tensor[:, tensor.size(1) - gh * gw :, :]
        return tokens.reshape(tensor.size(0), gh, gw, tensor.size(2)).permute(0, 3, 1, 2)

    return reshape
