"""The teacher's frequency input x^F = IDCT(HighPass(DCT(x))), as matrix products.

Per channel, whole image, orthonormal DCT-II ``X = D_H x D_W^T`` (any size,
odd ones like 299 included; batched; CPU or GPU), coefficients with
``u/H + v/W < r`` zeroed (DC included, r = 1/3 by default), then the
orthonormal inverse ``x = D_H^T X D_W``. The mask and the two transforms fold
into one linear map per axis pair, applied as four matmuls.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix: ``D[k, i] = a_k cos(pi (2i+1) k / 2n)``."""
    k = torch.arange(n, dtype=dtype).unsqueeze(1)
    i = torch.arange(n, dtype=dtype).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n))
    d[0] *= math.sqrt(1.0 / n)
    d[1:] *= math.sqrt(2.0 / n)
    return d


def highpass_mask(h: int, w: int, ratio: float = 1 / 3, dtype: torch.dtype = torch.float64) -> Tensor:
    """1 where ``u/H + v/W >= ratio`` (kept), 0 in the low-frequency triangle."""
    u = torch.arange(h, dtype=dtype).unsqueeze(1) / h
    v = torch.arange(w, dtype=dtype).unsqueeze(0) / w
    return ((u + v) >= ratio).to(dtype)


class FrequencyTransform(nn.Module):
    """``x -> IDCT(mask * DCT(x))`` on ``(..., H, W)`` tensors; fixed, no parameters."""

    dh: Tensor  # buffers (register_buffer), typed for the checker
    dw: Tensor
    mask: Tensor

    def __init__(self, height: int, width: int | None = None, ratio: float = 1 / 3) -> None:
        super().__init__()
        width = height if width is None else width
        self.ratio = ratio
        self.register_buffer("dh", dct_matrix(height).float(), persistent=False)
        self.register_buffer("dw", dct_matrix(width).float(), persistent=False)
        self.register_buffer("mask", highpass_mask(height, width, ratio).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):  # fp32 even under bf16 autocast
            x = x.to(self.dh.dtype)
            coeff = self.dh @ x @ self.dw.T
            return (self.dh.T @ (coeff * self.mask) @ self.dw).to(dtype)
