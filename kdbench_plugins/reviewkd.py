"""ReviewKD: distilling knowledge via knowledge review (Chen et al., CVPR 2021), the ImageNet code.

The student's levels (stage1..stage4 and the pooled vector as a 1 x 1 map) are fused from the
deepest up by attention-based fusion (ABF): level i's map goes through a 1x1 conv (to ``mid``
channels), is blended with the fused map from level i+1 (nearest-upsampled) by two sigmoid
attention maps, and a 3x3 conv gives the level's output with the teacher's channels. Each output is
matched to the teacher's map of the same level by the hierarchical context loss

HCL(F_s, F_t) = ( MSE(F_s, F_t) + sum_{k in 4,2,1; k < H} 2^-j MSE(pool_k F_s, pool_k F_t) ) / (1 + sum 2^-j)

L = beta * sum over levels HCL.

beta = 1 and the [4, 2, 1] pyramid are the ImageNet recipe (ReviewKD ``--kd-loss-weight 1``, its
``hcl``); the ABF and HCL are torchdistill's ``AttentionBasedFusion`` and
``HierarchicalContextLoss`` ports, re-implemented here with explicit (H, W) (the reference assumes
square maps and upsamples to ``(shape, shape)``) and tested against them on square maps. ``mid`` is
the ImageNet code's 512 (ResNet-18's widest stage), capped at the student's widest stage. An ABF
output whose grid differs from the teacher's (res18t's 75 x 75 against Xception's 74 x 74 at 299 px)
is resampled to the teacher's grid (``kdbench.connectors.resize``), so the teacher's map is never
altered. Not carried over: the CIFAR code's 20-epoch warm-up of beta (``forward`` does not see the
epoch), and the pre-activation teacher maps (our teacher's taps are its post-RFAM maps). The teacher
maps are matched raw, so nothing is reduced before caching (the large early maps are computed online
when they do not fit the memory budget).

Both mode: a separate ABF chain per branch, each matched to that branch's maps.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import Distiller, DistillerError, HParam, branch_taps, hookimpl
from kdbench.connectors import STAGES, parse_stages, resize

LEVELS = (*STAGES, "pooled")


def as_map(x: Tensor) -> Tensor:
    """A pooled N x C vector as an N x C x 1 x 1 map (ReviewKD's last level); maps unchanged."""
    return x[:, :, None, None] if x.dim() == 2 else x


def level_shape(shapes: Mapping, tap: str, owner: str) -> tuple[int, int, int]:
    if tap not in shapes:
        raise DistillerError(f"{owner} has no tap {tap!r}; probed taps: {', '.join(sorted(shapes))}")
    shape = tuple(int(d) for d in shapes[tap])
    if len(shape) == 1:
        return shape[0], 1, 1
    if len(shape) != 3:
        raise DistillerError(f"{owner} tap {tap!r} has shape {shape}; a map or a pooled vector is needed")
    return shape


class ABF(nn.Module):
    """Attention-based fusion (ReviewKD ImageNet ``ABF``): 1x1 conv + BN, optional fusion, 3x3 conv + BN."""

    def __init__(self, cin: int, mid: int, cout: int, fuse: bool) -> None:
        super().__init__()
        conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.conv1 = nn.Sequential(conv1, nn.BatchNorm2d(mid))
        conv2 = nn.Conv2d(mid, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Sequential(conv2, nn.BatchNorm2d(cout))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(conv1.weight, a=1)
        nn.init.kaiming_uniform_(conv2.weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(the level's output, the fused map handed to the next, shallower level)."""
        x = self.conv1(x)
        if self.att_conv is not None and residual is not None:
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        return self.conv2(x), x


def hcl(f_s: Tensor, f_t: Tensor, levels: tuple[int, ...] = (4, 2, 1)) -> Tensor:
    """ReviewKD's hierarchical context loss for one level (pyramid sizes below the map's height)."""
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    h = f_s.shape[2]
    for k in levels:
        if k >= h:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, (k, k)), F.adaptive_avg_pool2d(f_t, (k, k)))
        total += weight
    return loss / total


class ReviewKD(Distiller):
    name = "reviewkd"
    description = "Knowledge review: student levels fused deep-to-shallow (ABF), matched level by level (HCL)."
    defaults = {
        "beta": HParam(1.0, source="ReviewKD ImageNet train.py --kd-loss-weight 1.0", low=0.0),
        "mid_channels": HParam(512, source="ReviewKD ImageNet build_review_kd: mid_channel=512 (capped at the "
                                           "student's widest level)"),
        "levels": HParam("stage1,stage2,stage3,stage4,pooled",
                         source="ReviewKD ImageNet: the four stage outputs and the pooled feature"),
    }

    def __init__(self, mode: str, student_shapes: Mapping, teacher_shapes: Mapping, **hparams) -> None:
        super().__init__(mode, student_shapes, teacher_shapes, **hparams)
        chosen = parse_stages(self.hp["levels"], LEVELS)
        self.levels = [lv for lv in LEVELS if lv in chosen]  # shallow to deep, whatever the order given
        s_shapes = [level_shape(self.student_shapes, lv, "student") for lv in self.levels]
        mid = min(self.hp["mid_channels"], max(c for c, _, _ in s_shapes))
        if mid < 1:
            raise DistillerError(f"mid_channels={self.hp['mid_channels']} must be >= 1")
        self.grids: dict[str, tuple[int, int]] = {}
        chains = {}
        for b in self.branches:
            t_shapes = [level_shape(self.teacher_shapes, f"{b}.{lv}", "teacher") for lv in self.levels]
            deepest = len(self.levels) - 1
            chains[b] = nn.ModuleList(ABF(s[0], mid, t[0], fuse=i < deepest)
                                      for i, (s, t) in enumerate(zip(s_shapes, t_shapes)))
            self.grids.update({f"{b}.{lv}": t[1:] for lv, t in zip(self.levels, t_shapes)})
        self.abfs = nn.ModuleDict(chains)

    def student_taps(self) -> list[str]:
        return list(self.levels)

    def teacher_taps(self) -> list[str]:
        return branch_taps(self.branches, self.levels)

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        terms = {}
        for b, chain in self.abfs.items():
            assert isinstance(chain, nn.ModuleList), "one ABF chain per branch"
            loss: Tensor | float = 0.0
            residual: Tensor | None = None
            for lv, abf in reversed(list(zip(self.levels, chain))):  # deepest first
                out, residual = abf(as_map(student[lv]), residual)
                tap = f"{b}.{lv}"
                t = as_map(teacher[tap])
                loss = loss + hcl(resize(out, self.grids[tap]).to(t.dtype), t)
            terms[f"kd_{b}"] = self.hp["beta"] * loss
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [ReviewKD]
