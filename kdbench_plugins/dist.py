"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022).

With Y = softmax(Z / tau) (batch x classes) and the Pearson correlation rho (cosine of centred vectors):

L = beta * tau^2 * (1 - mean_i rho(Y_s[i, :], Y_t[i, :]))    inter-class: each sample's class scores
  + gamma * tau^2 * (1 - mean_c rho(Y_s[:, c], Y_t[:, c]))   intra-class: each class over the batch

Defaults beta = gamma = tau = 1 are the paper's ImageNet setting and torchdistill's ``DISTLoss``
defaults; the loss itself is that class's tensor methods on plain tensors. The CE weight stays 1
(the paper's recipe adds DIST to the unweighted CE).

**Two classes.** Each row of Y is (p, 1 - p); centred, it is (p - 1/2)(1, -1), so the inter-class
correlation of a sample is +-1: the sign of agreement between teacher and student, constant almost
everywhere with zero gradient. Only the intra-class term (each class's probabilities correlated over
the batch) trains the student here; both are returned, as ``kd_inter`` and ``kd_intra``, so the logs
show it.

Mode ``fused``: the teacher's fused-head logits (it has no per-branch classifier).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor
from torchdistill.losses.mid_level import DISTLoss

from kdbench import Distiller, DistillerError, HParam, hookimpl
from kdbench.connectors import fp32, logit_classes

TAP = "logits"


class DIST(Distiller):
    name = "dist"
    modes = ("fused",)
    description = ("DIST: Pearson correlation of class scores (inter) and over the batch (intra) on the teacher's "
                   "fused-head logits; with two classes only the intra term has a gradient.")
    defaults = {
        "beta": HParam(1.0, source="Huang et al. 2022 ImageNet setting; torchdistill DISTLoss beta=1.0", low=0.0),
        "gamma": HParam(1.0, source="Huang et al. 2022 ImageNet setting; torchdistill DISTLoss gamma=1.0"),
        "tau": HParam(1.0, source="Huang et al. 2022 ImageNet setting; torchdistill DISTLoss tau=1.0"),
        "eps": HParam(1e-8, source="torchdistill DISTLoss eps=1e-8 (cosine similarity)"),
    }

    def __init__(self, mode: str, student_shapes: Mapping, teacher_shapes: Mapping, **hparams) -> None:
        super().__init__(mode, student_shapes, teacher_shapes, **hparams)
        if self.hp["tau"] <= 0:
            raise DistillerError(f"tau={self.hp['tau']} must be positive")
        logit_classes(self.student_shapes, self.teacher_shapes)
        # torchdistill's module paths are unused: only its tensor methods are called.
        self.loss = DISTLoss(TAP, "output", TAP, "output", beta=self.hp["beta"], gamma=self.hp["gamma"],
                             tau=self.hp["tau"], eps=self.hp["eps"])

    def student_taps(self) -> list[str]:
        return [TAP]

    def teacher_taps(self) -> list[str]:
        return [TAP]

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        z_s, tau = student[TAP], self.hp["tau"]
        with torch.autocast(z_s.device.type, enabled=False):
            y_s, y_t = (fp32(z_s) / tau).softmax(dim=1), (fp32(teacher[TAP]) / tau).softmax(dim=1)
            inter = tau ** 2 * self.loss.inter_class_relation(y_s, y_t)
            intra = tau ** 2 * self.loss.intra_class_relation(y_s, y_t)
        return {"kd_inter": self.hp["beta"] * inter, "kd_intra": self.hp["gamma"] * intra}


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [DIST]
