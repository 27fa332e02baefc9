"""VID: variational information distillation (Ahn et al., CVPR 2019), RepDistiller's form.

Per stage, the teacher map t is scored under a Gaussian whose mean is a
3-layer 1x1-conv regressor of the student map and whose variance is learned per
teacher channel: L = beta * sum_stages mean(0.5 * ((mu - t)^2 / var + log var)).
Each branch has its own regressors (Both mode). The student map is resized to
the teacher's (H, W) before the regressor (``kdbench.connectors``), so the
teacher map is used as is. torchdistill's ``VIDLoss`` reads io_dicts only, so
the NLL is computed here and torchdistill is the golden reference in tests.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from kdbench import Distiller, HParam, hookimpl
from kdbench.connectors import VIDRegressor, map_shape, parse_stages


def gaussian_nll(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    """Mean over elements of -log N(target; mean, var) up to the constant 0.5 log(2 pi).

    ``var`` is per channel (1 x C x 1 x 1), so the mean is taken per channel first:
    0.5 * mean_c(msd_c / var_c + log var_c), with msd_c the channel's mean squared
    difference. That equals the elementwise form but reads the maps in one fused
    reduction, and divides and takes logs on C values instead of N*C*H*W.
    """
    diff = mean - target
    acc = torch.promote_types(diff.dtype, torch.float32)  # bf16 maps are summed in fp32
    per_channel = torch.linalg.vector_norm(diff, dim=(0, 2, 3), dtype=acc).square() / (diff.numel() // diff.shape[1])
    v = var.flatten().to(acc)
    return 0.5 * (per_channel / v + v.log()).mean()


class VID(Distiller):
    name = "vid"
    description = "Variational information distillation: Gaussian likelihood of teacher maps given student maps."
    defaults = {
        "beta": HParam(1.0, source="RepDistiller scripts/run_cifar_distill.sh: --distill vid -b 1", low=0.0),
        "init_pred_var": HParam(5.0, source="RepDistiller VIDLoss(init_pred_var=5.0)"),
        "eps": HParam(1e-5, source="RepDistiller VIDLoss(eps=1e-5)"),
        "stages": HParam("stage1,stage2,stage3,stage4",
                         source="RepDistiller: every residual stage (feat[1:-1]); torchdistill sample: layer1..4"),
    }

    def setup(self) -> None:
        self.stages = parse_stages(self.hp["stages"])
        self.regressors = nn.ModuleDict()  # branch -> stage -> VIDRegressor
        for branch in self.branches:
            per_stage = nn.ModuleDict()
            for stage in self.stages:
                per_stage[stage] = VIDRegressor(
                    map_shape(self.student_shapes, stage, "student"),
                    map_shape(self.teacher_shapes, f"{branch}.{stage}", "teacher"),
                    init_pred_var=self.hp["init_pred_var"],
                    eps=self.hp["eps"],
                )
            self.regressors[branch] = per_stage

    def student_taps(self) -> list[str]:
        return list(self.stages)

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        terms = {}
        for branch in self.branches:
            per_stage = self.regressors[branch]
            assert isinstance(per_stage, nn.ModuleDict), "setup builds branch -> stage -> VIDRegressor"
            loss: Tensor | float = 0.0
            for stage in self.stages:
                mean, var = per_stage[stage](student[stage])
                loss = loss + gaussian_nll(mean, var, teacher[f"{branch}.{stage}"].to(mean.dtype))
            terms[f"kd_{branch}"] = self.hp["beta"] * loss
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [VID]
