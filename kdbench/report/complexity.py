"""Table 1: parameters and multiply-accumulates of the students and the teacher.

Counted from the models themselves at 299 x 299, every time (nothing cached).
The paper's "GFLOPs" are multiply-accumulates: ``torch.utils.flop_counter``
counts 2 FLOPs per MAC of every convolution and matrix product, so
GMACs = FLOPs / 2 / 1e9. BatchNorm, activations, additions and pooling are
not counted (the usual convention of MAC counters). The networks are built on
PyTorch's ``meta`` device, so no weights are allocated and no arithmetic runs:
a network is counted in about a second or less.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from kdbench.report.tables import Grid

IMAGE_SIZE = 299
MODEL_NAMES = {"res18t": "ResNet18-T", "res34t": "ResNet34-T", "xception": "Xception",
               "teacher": "Teacher (2x Xception + 3 RFAM + projectors)"}


@dataclass(frozen=True)
class Complexity:
    """One network under one head convention."""

    params: int
    macs: float

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


class _ShapeOnly(nn.Module):
    """Stands in for the teacher's DCT on the meta device (autocast has no meta backend)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def count(build: Callable[[], nn.Module], image_size: int = IMAGE_SIZE) -> Complexity:
    """Parameters and MACs of one forward pass of a single ``3 x S x S`` image."""
    with torch.device("meta"):
        model = build()
        freq = getattr(model, "freq", None)
        if freq is not None:
            model.freq = _ShapeOnly()
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, image_size, image_size))
    macs = counter.get_total_flops() / 2
    if freq is not None:  # the fixed DCT high-pass: four matrix products, counted on CPU
        macs += frequency_macs(image_size)
    return Complexity(params, macs)


def frequency_macs(image_size: int = IMAGE_SIZE) -> float:
    """MACs of the teacher's x -> IDCT(HighPass(DCT(x))) as implemented (matrix products)."""
    from kdbench.models.frequency import FrequencyTransform

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        FrequencyTransform(image_size)(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 2


def builders(num_classes: int) -> dict[str, Callable[[], nn.Module]]:
    """The networks of Table 1 at the paper's configuration (teacher: Xception branches, projector width 256)."""
    from kdbench.models.students import NETWORKS
    from kdbench.models.teacher import DualBranchTeacher

    out: dict[str, Callable[[], nn.Module]] = {
        name: partial(NETWORKS[name][0], num_classes) for name in ("res18t", "res34t", "xception")}
    out["teacher"] = lambda: DualBranchTeacher("xception", IMAGE_SIZE, 256, num_classes=num_classes)
    return out


def table1() -> dict[str, dict[int, Complexity]]:
    """``{model: {2: Complexity, 1000: Complexity}}`` for the two head conventions."""
    result: dict[str, dict[int, Complexity]] = {}
    for classes in (2, 1000):
        for name, build in builders(classes).items():
            result.setdefault(name, {})[classes] = count(build)
    return result


def teacher_breakdown(image_size: int = IMAGE_SIZE) -> dict[str, Complexity]:
    """Parameters and MACs of the teacher's parts (for docs/tables.md); the branches are the remainder."""
    from kdbench.models.teacher import DualBranchTeacher

    with torch.device("meta"):
        teacher = DualBranchTeacher("xception", image_size, 256)
        teacher.freq = _ShapeOnly()
        teacher.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            teacher(torch.zeros(1, 3, image_size, image_size))
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    parts = {"3 RFAMs": [f"rfams.{i}" for i in range(len(teacher.rfams))],
             "projectors G_Tr + G_Tf": ["rgb_proj", "fre_proj"], "fusion FC": ["fc"]}
    out: dict[str, Complexity] = {}
    for label, names in parts.items():
        params = sum(p.numel() for n in names for p in teacher.get_submodule(n).parameters())
        out[label] = Complexity(params, sum(flops.get(f"DualBranchTeacher.{n}", 0) for n in names) / 2)
    out["DCT high-pass (matrix products)"] = Complexity(0, frequency_macs(image_size))
    total = Complexity(sum(p.numel() for p in teacher.parameters()),
                       flops.get("DualBranchTeacher", 0) / 2 + frequency_macs(image_size))
    rest = (total.params - sum(c.params for c in out.values()), total.macs - sum(c.macs for c in out.values()))
    out = {"2 Xception branches (no FC)": Complexity(*rest), **out, "total": total}
    return out


def table1_grid(paper: bool = False) -> Grid:
    """Table 1 as a printable grid (both head conventions; the paper's numbers beside with ``paper``)."""
    from kdbench.report.tables import Entry, Grid, Paper, paper_results

    counts = table1()
    pub = paper_results()["table1"]
    header = ["Model", "Params (M) 2-class", "Params (M) 1000-class", "GMACs 2-class", "GMACs 1000-class"]
    header += ["paper Params (M)", "paper 'GFLOPs'"] if paper else []
    rows: list[list[Entry]] = []
    for name, by_head in counts.items():
        row: list[Entry] = [MODEL_NAMES[name], *(f"{by_head[k].params_m:.2f}" for k in (2, 1000)),
               *(f"{by_head[k].gmacs:.3f}" for k in (2, 1000))]
        rows.append(row + ([Paper(pub["params_m"][name]), Paper(pub["gflops"][name])] if paper else []))
    notes = [f"Counted at {IMAGE_SIZE}x{IMAGE_SIZE}, batch 1, with torch.utils.flop_counter: GMACs = FLOPs / 2 "
             "(convolutions and matrix products; BN, activations and pooling not counted). The paper's "
             "'GFLOPs' are these multiply-accumulates.",
             "The paper's 22.8 M for Xception is the 1000-class (ImageNet) head; its ResNet-T counts match the "
             "2-class head. Teacher: 2 Xception branches without FC, 3 RFAMs, projectors (width 256), 2-class "
             "fusion FC, DCT high-pass as matrix products; see docs/tables.md for why it differs from 62.8 M."]
    if paper:
        notes.append(f"paper: {pub['source']}.")
    return Grid("Table 1: parameters and multiply-accumulates", header, rows, notes)
