"""The in-memory form every dataset takes: uint8 frames, labels, video ids.

Frames stay uint8 (N, 3, H, W) until the batch is on its device, where they
are normalised (mean = std = 0.5); that keeps them small enough to live on a
GPU and makes teacher features cacheable per sample index.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

SPLITS = ("train", "val", "test")
REAL, FAKE = 0, 1


@dataclass
class FrameSet:
    """One split. ``labels``: 0 real, 1 fake. ``videos``: a unique id per source video."""

    images: Tensor  # uint8 (N, 3, H, W)
    labels: Tensor  # int64 (N,)
    videos: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"frames must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError("frames and labels differ in length")
        if not self.videos:
            self.videos = [f"frame{i}" for i in range(len(self.images))]
        if len(self.videos) != len(self.images):
            raise ValueError("frames and video ids differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


FrameSplits = dict[str, FrameSet]


def normalize(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 -> float in [-1, 1] (Xception's mean = std = 0.5)."""
    return images.to(dtype).div_(127.5).sub_(1.0)
