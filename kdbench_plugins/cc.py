"""CC: correlation congruence (Peng et al., ICCV 2019), the Gaussian-RBF kernel by its Taylor series.

On the L2-normalised pooled embeddings f_i of a batch of n, the correlation matrix

C_ij = exp(-gamma ||f_i - f_j||^2) = exp(-2 gamma) exp(2 gamma <f_i, f_j>)
     ~ exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * <f_i, f_j>^p          (unit vectors)

L = beta * ||C_s - C_t||_F^2 / n^2     (the paper's squared norm over n^2 pairs)

gamma = 0.4 and P = 2 as in torchdistill's ``CCKDLoss`` example (Peng et al.'s setting). The kernel
is computed on the whole Gram matrix at once (torchdistill's ``compute_cc_mat_by_gaussian_rbf``
loops over rows in Python; a test holds the two equal). torchdistill returns the *unsquared*
norm ``torch.dist(C_s, C_t) / n^2``; the squared one here has a gradient that vanishes with the
mismatch instead of a constant-size one, and a test pins the relation between the two.
Normalising the embeddings makes the series the RBF kernel it stands for (the identity above needs
unit vectors); torchdistill's and the paper's linear embedding layers are left out: the relation is
n x n whatever the widths, and a linear map on the frozen teacher side would be a fixed random
projection. The teacher side is therefore parameter-free and per sample: its normalised pooled
vector is what the cache stores (``cc_embedding``).

Both mode: the same loss against each branch's pooled embedding.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import Distiller, DistillerError, HParam, branch_taps, hookimpl
from kdbench.connectors import fp32, vector_shape
from kdbench.distiller import Reduction

TAP = "pooled"


def rbf_correlation(f: Tensor, gamma: float, order: int) -> Tensor:
    """exp(-2 gamma) * sum_{p=0..order} (2 gamma)^p / p! * G^p (elementwise powers), G = f f^T."""
    g = f @ f.t()
    total, term = torch.ones_like(g), torch.ones_like(g)
    for p in range(1, order + 1):
        term = term * g * (2 * gamma / p)
        total = total + term
    return math.exp(-2 * gamma) * total


def cc_embedding(pooled: Tensor) -> Tensor:
    """Teacher reduction: the pooled vector, L2-normalised (fp32 or wider)."""
    return F.normalize(fp32(pooled), dim=1)


class CC(Distiller):
    name = "cc"
    description = "Correlation congruence: match the batch's Gaussian-RBF correlation matrices of pooled embeddings."
    defaults = {
        "beta": HParam(80.0, source="kdbench: CC's KD/CE gradient ratio at initialisation (0.017 at beta 1, 64 px, "
                                    "benchmarks/distiller_balance.py) brought to RKD's at RepDistiller's weights (1.3); "
                                    "docs/baselines.md", low=0.0),
        "gamma": HParam(0.4, source="torchdistill CCKDLoss example (Peng et al.): gamma 0.4"),
        "order": HParam(2, source="torchdistill CCKDLoss example (Peng et al.): max_p 2"),
    }

    def __init__(self, mode: str, student_shapes: Mapping, teacher_shapes: Mapping, **hparams) -> None:
        super().__init__(mode, student_shapes, teacher_shapes, **hparams)
        if self.hp["order"] < 1 or self.hp["gamma"] <= 0:
            raise DistillerError(f"order={self.hp['order']} must be >= 1 and gamma={self.hp['gamma']} positive")
        vector_shape(self.student_shapes, TAP, "student")
        for tap in self.teacher_taps():
            vector_shape(self.teacher_shapes, tap, "teacher")

    def student_taps(self) -> list[str]:
        return [TAP]

    def teacher_taps(self) -> list[str]:
        return branch_taps(self.branches, [TAP])

    def teacher_reductions(self) -> dict[str, Reduction]:
        return {tap: cc_embedding for tap in self.teacher_taps()}

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        s = student[TAP]
        n = s.shape[0]
        terms = {}
        with torch.autocast(s.device.type, enabled=False):  # n x n kernels in fp32
            gamma, order = self.hp["gamma"], self.hp["order"]
            c_s = rbf_correlation(cc_embedding(s), gamma, order)
            for b in self.branches:
                c_t = rbf_correlation(fp32(teacher[f"{b}.{TAP}"]), gamma, order)
                terms[f"kd_{b}"] = self.hp["beta"] * (c_s - c_t).pow(2).sum() / n ** 2
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [CC]
