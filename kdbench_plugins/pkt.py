"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

KL divergence between the batch's cosine-similarity distributions (shifted to
[0, 1], row-normalised) of the teacher's and the student's pooled embeddings.
Dimension-agnostic (an N x N matrix per side), so no connector and no spatial
alignment; ``rgb.pooled`` is already small, so no teacher reduction either.
The loss itself is torchdistill's ``PKTLoss.cosine_similarity_loss``, called on
plain tensors.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor
from torchdistill.losses.mid_level import PKTLoss

from kdbench import Distiller, DistillerError, HParam, hookimpl
from kdbench.connectors import fp32

TAP = "pooled"


class PKT(Distiller):
    name = "pkt"
    description = "Probabilistic knowledge transfer on the pooled embedding (batch similarity distributions)."
    defaults = {
        "beta": HParam(30000.0, source="RepDistiller scripts/run_cifar_distill.sh: --distill pkt -b 30000", low=0.0),
        "eps": HParam(1e-7, source="RepDistiller PKT and torchdistill PKTLoss (eps=1e-7)"),
    }

    def setup(self) -> None:
        for owner, shapes, taps in (("student", self.student_shapes, [TAP]),
                                    ("teacher", self.teacher_shapes, self.teacher_taps())):
            for tap in taps:
                if tap not in shapes or len(shapes[tap]) != 1:
                    raise DistillerError(f"PKT needs a 1-D {owner} tap {tap!r}; got {shapes.get(tap)}")
        # torchdistill's module paths are unused: only its tensor method is called.
        self.loss = PKTLoss(TAP, "output", TAP, "output", eps=self.hp["eps"])

    def student_taps(self) -> list[str]:
        return [TAP]

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        s = student[TAP]
        terms = {}
        with torch.autocast(s.device.type, enabled=False):  # N x N similarities in fp32
            for b in self.branches:
                kl = self.loss.cosine_similarity_loss(fp32(s), fp32(teacher[f"{b}.{TAP}"]))
                terms[f"kd_{b}"] = self.hp["beta"] * kl
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [PKT]
