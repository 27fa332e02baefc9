"""RKD: relational knowledge distillation (Park et al., CVPR 2019), distance and angle terms.

On the pooled embeddings e_i of a batch (student s, teacher t), with Huber = smooth L1:

psi_D(i, j) = ||e_i - e_j|| / mu,  mu = mean of the off-diagonal distances
psi_A(i, j, k) = <(e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j||>

L = w_d * mean Huber(psi_D^s - psi_D^t) + w_a * mean Huber(psi_A^s - psi_A^t)

Weights 25 and 50 are RepDistiller's (its ``RKDLoss(w_d=25, w_a=50)`` with ``-b 1``), like the
weights of SP, AT and PKT here; the paper's metric-learning setting is 1 and 2 (torchdistill's
example). The embedding is the pooled vector (RepDistiller's ``feat[-1]``). Dimension-agnostic
(N x N and N x N x N relations), so no connector. The relations couple the batch, so the teacher
side cannot be reduced per sample: its raw ``pooled`` tap (already small) is cached.

The loss is torchdistill's ``RKDLoss`` tensor methods, except that the distance normaliser is the
mean over the off-diagonal entries in closed form: torchdistill's ``d[d > 0].mean()`` equals it
(the clamped distances are positive off the diagonal) but its boolean indexing is a host sync
every step. A test holds both against each other.

Both mode: the same loss against each branch's pooled embedding.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torchdistill.losses.mid_level import RKDLoss

from kdbench import Distiller, HParam, branch_taps, hookimpl
from kdbench.connectors import fp32, vector_shape

TAP = "pooled"


def normalised_distances(e: Tensor) -> Tensor:
    """Pairwise distances divided by their off-diagonal mean (the diagonal is 0)."""
    d = RKDLoss.pdist(e, squared=False)
    n = e.shape[0]
    return d / (d.sum() / max(n * n - n, 1))


class RKD(Distiller):
    name = "rkd"
    description = "Relational KD: distances and angles between the batch's pooled embeddings."
    defaults = {
        "dist_weight": HParam(25.0, source="RepDistiller distiller_zoo/RKD.py: RKDLoss(w_d=25)", low=0.0),
        "angle_weight": HParam(50.0, source="RepDistiller distiller_zoo/RKD.py: RKDLoss(w_a=50)", low=0.0),
    }

    def __init__(self, mode: str, student_shapes: Mapping, teacher_shapes: Mapping, **hparams) -> None:
        super().__init__(mode, student_shapes, teacher_shapes, **hparams)
        vector_shape(self.student_shapes, TAP, "student")
        for tap in self.teacher_taps():
            vector_shape(self.teacher_shapes, tap, "teacher")
        # torchdistill's module paths are unused: only its tensor methods are called.
        self.loss = RKDLoss(TAP, TAP, dist_factor=self.hp["dist_weight"], angle_factor=self.hp["angle_weight"],
                            reduction="mean")

    def student_taps(self) -> list[str]:
        return [TAP]

    def teacher_taps(self) -> list[str]:
        return branch_taps(self.branches, [TAP])

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        s = student[TAP]
        terms = {}
        with torch.autocast(s.device.type, enabled=False):  # relations in fp32
            s = fp32(s)
            d_s = normalised_distances(s)
            for b in self.branches:
                t = fp32(teacher[f"{b}.{TAP}"])
                with torch.no_grad():
                    d_t = normalised_distances(t)
                dist = F.smooth_l1_loss(d_s, d_t)
                angle = self.loss.compute_rkd_angle_loss(t, s)
                terms[f"kd_{b}"] = self.hp["dist_weight"] * dist + self.hp["angle_weight"] * angle
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [RKD]
