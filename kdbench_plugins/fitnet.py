"""FitNet: hints (Romero et al., ICLR 2015), single stage as in RepDistiller.

L = beta * MSE(regressor(student hint), teacher hint), the regressor being a
conv (C_s -> C_t) + resize to the teacher's (H, W) + BN + ReLU
(``kdbench.connectors.HintRegressor``): RepDistiller's ConvReg with explicit,
any-shape spatial alignment, its ReLU kept only where the teacher's hint is
non-negative (a ResNet teacher's; an Xception block output is signed). Both mode
adds the same term against the frequency branch with its own regressor. The hint pre-training stage of the paper (and of
torchdistill's sample) is not run: kdbench follows RepDistiller's one-stage
recipe, which the paper's "default settings" refer to.
"""
from __future__ import annotations

from typing import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import Distiller, HParam, hookimpl
from kdbench.connectors import STAGES, HintRegressor, map_shape


class FitNet(Distiller):
    name = "fitnet"
    description = "FitNet hints: regress a teacher stage map from the student's through a conv connector."
    defaults = {
        "beta": HParam(100.0, source="RepDistiller scripts/run_cifar_distill.sh: --distill hint -a 0 -b 100", low=0.0),
        "hint": HParam("stage2", source="RepDistiller --hint_layer 2: the output of the 2nd residual stage",
                       choices=STAGES),
        "kernel": HParam(1, source="RepDistiller ConvReg for equal sizes (kernel 1+s_H-t_H = 1); "
                                   "torchdistill's FitNet sample ConvReg (k=1)"),
    }

    def setup(self) -> None:
        self.hint = self.hp["hint"]
        s = map_shape(self.student_shapes, self.hint, "student")
        self.regressors = nn.ModuleDict({
            b: HintRegressor(s, map_shape(self.teacher_shapes, f"{b}.{self.hint}", "teacher"), self.hp["kernel"])
            for b in self.branches
        })

    def student_taps(self) -> list[str]:
        return [self.hint]

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        s = student[self.hint]
        terms = {}
        for b in self.branches:
            target = teacher[f"{b}.{self.hint}"]
            regressor = self.regressors[b]
            assert isinstance(regressor, HintRegressor), "setup builds one HintRegressor per branch"
            regressor.decide(target)
            pred = regressor(s)
            terms[f"kd_{b}"] = self.hp["beta"] * F.mse_loss(pred, target.to(pred.dtype))
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [FitNet]
