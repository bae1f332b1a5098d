"""Models whose output the CAM engine cannot take as it is, wrapped to return one tensor."""
from __future__ import annotations

import torch


class SegmentationOutput(torch.nn.Module):
    """torchvision segmentation models return a dict; CAM targets need the `out` tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]
