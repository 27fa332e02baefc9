"""SP: similarity-preserving KD (Tung & Mori, ICCV 2019).

L = beta * ||rownorm(G_s) - rownorm(G_t)||_F^2 / N^2 with G = Q Q^T over the
flattened last-stage maps Q (N x CHW). Channel- and spatial-agnostic (the Gram
is N x N), so no connector and no alignment. The Gram couples the samples of a
batch, so it cannot be precomputed per sample: the teacher's raw ``stage4``
map is consumed (it is the smallest map).

Computed here, not with torchdistill: its ``SPKDLoss`` (1.1.5) calls
``normalize(G, 1)``, whose second positional argument is the norm order ``p``,
so it normalises Gram rows by their L1 norm; the paper (Eq. 2) and RepDistiller
use the L2 norm. Tests pin both facts.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import Distiller, HParam, hookimpl
from kdbench.connectors import fp32, map_shape

TAP = "stage4"


def similarity(feature: Tensor) -> Tensor:
    """The batch's Gram matrix of flattened maps, each row L2-normalised: N x N."""
    q = feature.flatten(1)
    return F.normalize(q @ q.t(), p=2, dim=1)


class SP(Distiller):
    name = "sp"
    description = "Similarity-preserving KD: match the batch's normalised Gram matrices of the last stage."
    defaults = {
        "beta": HParam(3000.0, source="RepDistiller scripts/run_cifar_distill.sh: --distill similarity -b 3000", low=0.0),
    }

    def setup(self) -> None:
        map_shape(self.student_shapes, TAP, "student")
        for tap in self.teacher_taps():
            map_shape(self.teacher_shapes, tap, "teacher")

    def student_taps(self) -> list[str]:
        return [TAP]

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        s = student[TAP]
        terms = {}
        with torch.autocast(s.device.type, enabled=False):  # Gram of long vectors in fp32
            g_s = similarity(fp32(s))
            for b in self.branches:
                g_t = similarity(fp32(teacher[f"{b}.{TAP}"]))
                terms[f"kd_{b}"] = self.hp["beta"] * (g_s - g_t).pow(2).sum() / s.shape[0] ** 2
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [SP]
