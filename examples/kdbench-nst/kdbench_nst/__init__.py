"""NST: match the distributions of per-channel spatial activation patterns.

Each channel's H*W activation map, L2-normalised, is one sample; the loss is
the squared MMD between the student's and the teacher's sets of samples with
the polynomial kernel k(a, b) = (a . b)^2 (the paper's best kernel). Channels
may differ in number; spatial sizes are aligned by average-pooling the larger
map to the smaller one (NST needs equal H*W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import Distiller, HParam, hookimpl
from kdbench.connectors import STAGES


def _channel_patterns(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, H*W), each channel's map L2-normalised."""
    return F.normalize(x.float().flatten(2), dim=2)


def _poly_mmd(s: Tensor, t: Tensor) -> Tensor:
    """Squared MMD with k(a, b) = (a . b)^2, averaged over the batch."""
    kss = (s @ s.transpose(1, 2)).pow(2).mean((1, 2))
    ktt = (t @ t.transpose(1, 2)).pow(2).mean((1, 2))
    kst = (s @ t.transpose(1, 2)).pow(2).mean((1, 2))
    return (kss + ktt - 2 * kst).mean()


def _align(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    h, w = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
    return F.adaptive_avg_pool2d(s, (h, w)), F.adaptive_avg_pool2d(t, (h, w))


class NST(Distiller):
    name = "nst"
    modes = ("rgb", "both")
    description = "Neural Selectivity Transfer: polynomial-kernel MMD of channel activation patterns."
    defaults = {
        "beta": HParam(50.0, "RepDistiller scripts: --distill nst -b 50"),
        "tap": HParam("stage4", "NST is applied to the last conv stage", choices=STAGES),
    }

    def student_taps(self) -> list[str]:
        return [self.hp["tap"]]  # the teacher taps default to these on every branch

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        tap = self.hp["tap"]
        terms = {}
        for branch in self.branches:
            s, t = _align(student[tap], teacher[f"{branch}.{tap}"])
            with torch.autocast(s.device.type, enabled=False):
                terms[f"kd_{branch}"] = self.hp["beta"] * _poly_mmd(_channel_patterns(s), _channel_patterns(t))
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [NST]
