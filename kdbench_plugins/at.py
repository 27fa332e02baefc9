"""AT: attention transfer (Zagoruyko & Komodakis, ICLR 2017), RepDistiller's formula.

a(F) = normalize(vec(mean_c |F_c|^p)); L = beta * sum_stages mean((a_s - a_t)^2).

The teacher side is cached as the *energy map* ``mean_c F^2`` (1 x H x W, per
sample, parameter-free; ``at_energy``), not as the normalised vector: the
energy map does not depend on the student, so one cache entry serves every
student. When the grids differ, both energy maps are average-pooled to the
per-dimension minimum (H, W) and only then normalised. Pooling the energy
(mean of squares) rather than the raw features (RepDistiller) keeps opposite-
signed activations from cancelling, and, the channel mean being linear, equals
the channel mean of the pooled squared activations.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import Distiller, DistillerError, HParam, branch_taps, hookimpl
from kdbench.connectors import common_size, fp32, map_shape, parse_stages, resize
from kdbench.distiller import Reduction

CACHED_P = 2  # the exponent whose energy map the teacher cache stores


def at_energy(feature: Tensor) -> Tensor:
    """Teacher reduction: channel mean of the squared map, N x 1 x H x W (fp32 or wider).

    On a channels_last map (the GPU layout) the channels are contiguous, and one fused
    reduction (a norm) reads the map once, without the squared copy, fp32 under bf16 autocast,
    that ``pow`` makes. On an NCHW map torch's CPU norm over channels is slower than
    squaring (``benchmarks/loss_kernels.py``), so that layout keeps the plain formula.
    """
    acc = torch.promote_types(feature.dtype, torch.float32)
    if feature.dim() == 4 and feature.is_contiguous(memory_format=torch.channels_last):
        return torch.linalg.vector_norm(feature, dim=1, keepdim=True, dtype=acc).square() / feature.shape[1]
    return feature.pow(2).mean(1, keepdim=True).to(acc)


def energy(feature: Tensor, p: float) -> Tensor:
    """mean_c |F|^p, N x 1 x H x W (equal to ``at_energy`` for p = 2)."""
    return at_energy(feature) if p == CACHED_P else feature.abs().pow(p).mean(1, keepdim=True)


def attention(energy_map: Tensor, size: tuple[int, int]) -> Tensor:
    """Pool an energy map to ``size``, flatten, L2-normalise per sample: a(F), N x HW."""
    return F.normalize(resize(fp32(energy_map), size).flatten(1), dim=1)


class AT(Distiller):
    name = "at"
    description = "Attention transfer: match normalised spatial attention maps of stage outputs."
    defaults = {
        "beta": HParam(1000.0, source="RepDistiller scripts/run_cifar_distill.sh: --distill attention -b 1000", low=0.0),
        "p": HParam(2, source="AT paper (p=2) and RepDistiller Attention(p=2)", low=0, low_open=True),
        "stages": HParam("stage1,stage2,stage3,stage4",
                         source="RepDistiller: every residual stage (feat[1:-1]); the 4 stages of ImageNet-style nets"),
    }

    def setup(self) -> None:
        self.stages = parse_stages(self.hp["stages"])
        self.sizes: dict[str, tuple[int, int]] = {}  # teacher tap -> common grid
        for stage in self.stages:
            s = map_shape(self.student_shapes, stage, "student")
            for tap in branch_taps(self.branches, [stage]):
                self.sizes[tap] = common_size(s[1:], map_shape(self.teacher_shapes, tap, "teacher")[1:])

    def student_taps(self) -> list[str]:
        return list(self.stages)

    def teacher_reductions(self) -> dict[str, Reduction]:
        # Only p = 2 is cached; other exponents need the raw map in forward.
        return {tap: at_energy for tap in self.teacher_taps()} if self.hp["p"] == CACHED_P else {}

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        p = self.hp["p"]
        s_energy = {st: energy(student[st], p) for st in self.stages}
        terms = {}
        for branch in self.branches:
            loss: Tensor | float = 0.0
            for st in self.stages:
                tap = f"{branch}.{st}"
                if p == CACHED_P:  # already reduced by at_energy
                    t_energy = teacher[tap]
                    if t_energy.shape[1] != 1:
                        raise DistillerError(f"AT expects {tap!r} reduced by at_energy (N x 1 x H x W), "
                                             f"got {tuple(t_energy.shape)}")
                else:
                    t_energy = energy(teacher[tap], p)
                size = self.sizes[tap]
                loss = loss + (attention(s_energy[st], size) - attention(t_energy, size)).pow(2).mean()
            terms[f"kd_{branch}"] = self.hp["beta"] * loss
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [AT]
