"""DKD: decoupled knowledge distillation (Zhao et al., CVPR 2022), mdistiller's formula.

With p = softmax(z / T), b = [p_gt, 1 - p_gt] (target vs all non-target classes) and
p^ = softmax over the non-target logits only:

L = alpha * T^2 * KL(b_t || b_s)  +  beta * T^2 * KL(p^_t || p^_s)        (TCKD + NCKD, batch mean)

Defaults are mdistiller's CIFAR-100 recipe (alpha 1, beta 8, T 4, CE weight 1). Both parts are
returned as separate terms, ``kd_tckd`` and ``kd_nckd``, so their balance shows in the logs.

**What it reduces to with two classes (real/fake).** The non-target set has a single class, so
p^ is the constant 1 for teacher and student alike: NCKD is exactly 0 and carries no gradient,
whatever beta. b is then the whole softmax, so TCKD is the classic KD term: DKD here is KD with
weight alpha and CE weight 1, i.e. KD with alpha 1 instead of 0.9 and CE 1 instead of 0.1. It is
implemented faithfully (the non-target softmax masks the target logit as mdistiller does) so that
a plugin with more classes gets real DKD; tests check both the formula at three classes against an
independent derivation and the two-class reduction.

Not carried over: mdistiller's linear warm-up of the DKD weight over the first 20 epochs
(``forward`` does not see the epoch, and our profiles train for 2 to 15 epochs).

Mode ``fused``: the teacher's fused-head logits (no per-branch classifier exists).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import Distiller, DistillerError, HParam, hookimpl
from kdbench.connectors import fp32, logit_classes

TAP = "logits"
MASK = 1000.0  # mdistiller subtracts 1000 * gt_mask: the target logit leaves the non-target softmax


def dkd_parts(z_s: Tensor, z_t: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each T^2 * KL summed over classes and averaged over the batch."""
    gt = F.one_hot(labels, z_s.shape[1]).to(z_s.dtype)
    p_s, p_t = F.softmax(z_s / temperature, dim=1), F.softmax(z_t / temperature, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(b_s.clamp_min(torch.finfo(b_s.dtype).tiny).log(), b_t, reduction="batchmean")
    log_q_s = F.log_softmax(z_s / temperature - MASK * gt, dim=1)
    log_q_t = F.log_softmax(z_t / temperature - MASK * gt, dim=1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return temperature ** 2 * tckd, temperature ** 2 * nckd


class DKD(Distiller):
    name = "dkd"
    modes = ("fused",)
    description = ("Decoupled KD (target + non-target parts) on the teacher's fused-head logits; with two "
                   "classes the non-target part is 0 and DKD is KD with alpha 1.")
    defaults = {
        "alpha": HParam(1.0, source="mdistiller configs/cifar100/dkd/*.yaml: DKD.ALPHA 1.0", low=0.0),
        "beta": HParam(8.0, source="mdistiller configs/cifar100/dkd/*.yaml: DKD.BETA 8.0", low=0.0),
        "temperature": HParam(4.0, source="mdistiller configs/cifar100/dkd/*.yaml: DKD.T 4.0"),
        "ce_weight": HParam(1.0, source="mdistiller configs/cifar100/dkd/*.yaml: DKD.CE_WEIGHT 1.0"),
    }

    def __init__(self, mode: str, student_shapes: Mapping, teacher_shapes: Mapping, **hparams) -> None:
        super().__init__(mode, student_shapes, teacher_shapes, **hparams)
        if self.hp["temperature"] <= 0:
            raise DistillerError(f"temperature={self.hp['temperature']} must be positive")
        logit_classes(self.student_shapes, self.teacher_shapes)

    def student_taps(self) -> list[str]:
        return [TAP]

    def teacher_taps(self) -> list[str]:
        return [TAP]

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        z_s = student[TAP]
        with torch.autocast(z_s.device.type, enabled=False):
            tckd, nckd = dkd_parts(fp32(z_s), fp32(teacher[TAP]), labels, self.hp["temperature"])
        return {"kd_tckd": self.hp["alpha"] * tckd, "kd_nckd": self.hp["beta"] * nckd}


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [DKD]
