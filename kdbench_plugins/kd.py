"""KD: knowledge distillation (Hinton, Vinyals & Dean 2015), with the canonical recipe's weights.

L = ce_weight * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))     (batch mean)

T = 4, ce_weight = 0.1, alpha = 0.9: RepDistiller's KD recipe (``--kd_T 4 -r 0.1 -a 0.9``), the
usual reading of Hinton et al.'s "considerably lower weight on the hard targets" with the T^2
that keeps the soft term's gradient scale independent of T. The trainer applies ``ce_weight``
(the contract's ``Distiller.ce_weight``); this module returns the alpha-weighted soft term.

``standardize=true``: logit standardisation (Sun et al., CVPR 2024), both logit vectors replaced
by (z - mean(z)) / (eps + std(z)) before the temperature. With two classes it leaves only the sign
of z_0 - z_1 (the standardised logits are +-1/sqrt(2) whatever their gap), so the soft term is
constant in the student's logits and its gradient vanishes up to eps: offered for completeness and
for plugins with more classes, off by default, and a test pins the fact.

Mode ``fused``: the teacher's only classifier is its fused head (``logits`` tap); it has no
per-branch logits, so KD has no RGB or Both variant. The teacher's logits are cached (2 numbers a
sample).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import Distiller, DistillerError, HParam, hookimpl
from kdbench.connectors import fp32, logit_classes

TAP = "logits"


def standardize(z: Tensor, eps: float) -> Tensor:
    """Sun et al.'s Z-score of each logit vector (torch's unbiased std, as their code)."""
    return (z - z.mean(dim=1, keepdim=True)) / (eps + z.std(dim=1, keepdim=True))


def soft_kl(z_s: Tensor, z_t: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(p_t^T || p_s^T), mean over the batch."""
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    log_p_t = F.log_softmax(z_t / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


class KD(Distiller):
    name = "kd"
    modes = ("fused",)
    description = ("Hinton KD on logits (T=4, 0.1 CE + 0.9 KD); fused: the teacher's fused-head logits "
                   "(it has no per-branch classifier).")
    defaults = {
        "temperature": HParam(4.0, source="RepDistiller train_student.py --kd_T 4"),
        "alpha": HParam(0.9, source="RepDistiller scripts/run_cifar_distill.sh: --distill kd -r 0.1 -a 0.9", low=0.0),
        "ce_weight": HParam(0.1, source="RepDistiller scripts/run_cifar_distill.sh: -r 0.1 (the CE weight)"),
        "standardize": HParam(False, source="Sun et al. CVPR 2024 (logit standardisation): off, degenerate at 2 classes"),
        "eps": HParam(1e-7, source="Sun et al.'s code and torchdistill LogitStdKDLoss (eps=1e-7)"),
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
        z_s, z_t = student[TAP], teacher[TAP]
        with torch.autocast(z_s.device.type, enabled=False):  # softmax at T in fp32
            z_s, z_t = fp32(z_s), fp32(z_t)
            if self.hp["standardize"]:
                z_s, z_t = standardize(z_s, self.hp["eps"]), standardize(z_t, self.hp["eps"])
            return {"kd": self.hp["alpha"] * soft_kl(z_s, z_t, self.hp["temperature"])}


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [KD]
