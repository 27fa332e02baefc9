"""Shape adaptation shared by the feature-based baselines (AT, VID, FitNet, ReviewKD), and the
shape checks every built-in distiller makes.

Student and teacher maps rarely agree: res18t gives 75x75 where an Xception
branch gives 74x74 at 299 px, and at 48 px an Xception student is 11x11 where a
res10t teacher is 12x12. RepDistiller's rules compare only H and assume square
maps and power-of-two ratios; here every resize names an explicit (H, W):

* ``resize`` shrinks with ``adaptive_avg_pool2d`` (an average, so no activation
  is dropped) and grows with bilinear interpolation, per dimension, so mixed
  cases (taller but narrower) work too;
* ``HintRegressor`` (FitNet) and ``VIDRegressor`` (VID) map the student's
  channels to the teacher's and resample to the teacher's (H, W), so the teacher
  map, the regression target, is never altered and one cached teacher tap
  serves every student. Neither clips a signed target: VID's mean ends in a
  conv, FitNet's ReLU is kept only for a non-negative teacher tap.

Channel and spatial handling are separate modules so each is testable alone.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import DistillerError, Shape

Size = tuple[int, int]
STAGES = ("stage1", "stage2", "stage3", "stage4")


def map_shape(shapes: Mapping[str, Shape], tap: str, owner: str) -> tuple[int, int, int]:
    """The (C, H, W) of a 4-D tap, or a DistillerError naming what is wrong."""
    if tap not in shapes:
        raise DistillerError(f"{owner} has no tap {tap!r}; probed taps: {', '.join(sorted(shapes))}")
    shape = tuple(int(d) for d in shapes[tap])
    if len(shape) != 3:
        raise DistillerError(f"{owner} tap {tap!r} has shape {shape}; a (C, H, W) feature map is needed")
    return shape


def vector_shape(shapes: Mapping[str, Shape], tap: str, owner: str) -> int:
    """The length of a 1-D tap (``pooled``, ``logits``), or a DistillerError naming what is wrong."""
    if tap not in shapes:
        raise DistillerError(f"{owner} has no tap {tap!r}; probed taps: {', '.join(sorted(shapes))}")
    shape = tuple(int(d) for d in shapes[tap])
    if len(shape) != 1:
        raise DistillerError(f"{owner} tap {tap!r} has shape {shape}; a 1-D vector is needed")
    return shape[0]


def logit_classes(student_shapes: Mapping[str, Shape], teacher_shapes: Mapping[str, Shape]) -> int:
    """The number of classes of the student's and the teacher's ``logits`` taps (the teacher's fused
    head: it has no per-branch classifier), or a DistillerError when they differ."""
    s = vector_shape(student_shapes, "logits", "student")
    t = vector_shape(teacher_shapes, "logits", "teacher")
    if s != t:
        raise DistillerError(f"student has {s} logits and the teacher {t}: a logit distiller needs the same classes")
    return s


def parse_stages(value: str, allowed: Iterable[str] = STAGES) -> list[str]:
    """``"stage3,stage4"`` -> ``["stage3", "stage4"]``; unknown or empty lists are errors."""
    allowed = tuple(allowed)
    stages = [s.strip() for s in str(value).split(",") if s.strip()]
    bad = [s for s in stages if s not in allowed]
    if not stages or bad or len(set(stages)) != len(stages):
        raise DistillerError(f"stages={value!r}: give distinct names from {', '.join(allowed)}")
    return stages


def conv_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    """A same-padded ``k`` x ``k`` conv (no bias), BN, ReLU: the layers of the teacher's and TOKD's projectors."""
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def fp32(x: Tensor) -> Tensor:
    """``x`` in at least float32: bf16/fp16 taps are promoted before Gram matrices and
    normalisations, float64 (tests) is kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def common_size(a: Size, b: Size) -> Size:
    """Per-dimension minimum: the grid both maps can be pooled to without up-sampling."""
    return min(a[0], b[0]), min(a[1], b[1])


def resize(x: Tensor, size: Size) -> Tensor:
    """Resample an N x C x H x W map to ``size``.

    Dimensions that shrink are average-pooled (``adaptive_avg_pool2d``, any
    ratio); dimensions that grow are then interpolated bilinearly
    (``align_corners=False``). An equal size is returned untouched.
    """
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if h > th or w > tw:
        x = F.adaptive_avg_pool2d(x, (min(h, th), min(w, tw)))
    if x.shape[-2] < th or x.shape[-1] < tw:
        x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
    return x


class SpatialAlign(nn.Module):
    """``resize`` as a parameter-free module, so it shows in a connector's repr."""

    def __init__(self, size: Size) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: Tensor) -> Tensor:
        return resize(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class HintRegressor(nn.Sequential):
    """FitNet connector: conv (C_s -> C_t), resize to the teacher's (H, W), BN, then a ReLU
    only where the teacher's hint is non-negative.

    RepDistiller's ConvReg (conv, BN, ReLU) with the spatial part made explicit:
    its kernel/stride rules only cover equal, doubled or halved square maps. The
    state-dict keys (``conv.*``, ``bn.*``) match torchdistill's ``ConvReg``.
    ConvReg's ReLU fits post-ReLU ResNet stage outputs; Xception's block outputs
    are signed (about half their entries negative), and a ReLU would leave that half
    out of reach and without gradient. Whether to clip is a property of the teacher's
    tap, never of the student: ``clip`` True/False fixes it; None (the default) lets
    the first target it is shown decide (``decide``: clip iff it has no negative
    entry). A post-ReLU tap is never negative, a signed one is on any real batch.
    """

    conv: nn.Conv2d
    align: SpatialAlign
    bn: nn.BatchNorm2d
    relu: nn.ReLU

    def __init__(self, student: tuple[int, int, int], teacher: tuple[int, int, int], kernel: int = 1,
                 clip: bool | None = None) -> None:
        if kernel < 1 or kernel % 2 == 0:
            raise DistillerError(f"kernel={kernel}: an odd kernel size >= 1 is needed (same padding)")
        cs, ct = student[0], teacher[0]
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(cs, ct, kernel_size=kernel, padding=kernel // 2),
                align=SpatialAlign(teacher[1:]),
                bn=nn.BatchNorm2d(ct),
                relu=nn.ReLU(),
            )
        )
        self.clip = clip

    def decide(self, target: Tensor) -> None:
        """Fix ``clip`` from the teacher's hint on its first batch (one host read per run)."""
        if self.clip is None:
            self.clip = not bool((target < 0).any())

    def forward(self, x: Tensor) -> Tensor:
        if self.clip is None:
            raise RuntimeError("HintRegressor: call decide(teacher_hint) before the first forward")
        x = self.bn(self.align(self.conv(x)))
        return self.relu(x) if self.clip else x

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


class VIDRegressor(nn.Module):
    """VID's Gaussian q(t | s): mean from a 3-layer 1x1-conv net, one learned variance per teacher channel.

    The student map is first resized to the teacher's (H, W), so the likelihood
    is always that of the untouched teacher map. ``alpha`` is a registered
    ``nn.Parameter`` (in ``state_dict`` and ``parameters()``): mdistiller kept it
    in a Python list and so never trained it.
    """

    def __init__(self, student: tuple[int, int, int], teacher: tuple[int, int, int],
                 init_pred_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        if init_pred_var <= eps:
            raise DistillerError(f"init_pred_var={init_pred_var} must exceed eps={eps}")
        cs, ct = student[0], teacher[0]
        self.eps = float(eps)
        self.align = SpatialAlign(teacher[1:])
        self.regressor = nn.Sequential(
            nn.Conv2d(cs, ct, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(ct, ct, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(ct, ct, 1, bias=False),
        )
        # softplus(alpha) + eps == init_pred_var at the start.
        start = math.log(math.expm1(init_pred_var - eps))
        self.alpha = nn.Parameter(torch.full((ct,), start))

    def variance(self) -> Tensor:
        """Per-channel variance, shape (1, C_t, 1, 1)."""
        return (F.softplus(self.alpha) + self.eps).view(1, -1, 1, 1)

    def forward(self, student: Tensor) -> tuple[Tensor, Tensor]:
        return self.regressor(self.align(student)), self.variance()
