"""The dual-branch (RGB + frequency) teacher of the paper, Sec. 3.

Two branches of the same backbone: T_r sees x, T_f sees x^F (the DCT
high-pass image, computed inside the teacher so every caller feeds RGB only).
Three RFAMs fuse the branches at configurable depths; projectors G_Tr (3 conv)
and G_Tf (5 conv) condense each branch's last map and feed the fusion head
(concat -> ReLU -> pool -> FC), so they are trained by the teacher's own
classification loss. Taps: ``rgb.stage1..4``, ``rgb.pooled``, ``rgb.proj`` and
the same for ``fre``, and ``logits``: the fused head's output, the teacher's only
classifier (there is no per-branch logit to tap).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import torch
from torch import Tensor, nn

from kdbench.connectors import conv_bn_relu
from kdbench.models.frequency import FrequencyTransform
from kdbench.models.pretrained import load_backbone
from kdbench.models.students import NETWORKS


def rgb_projector(cin: int, width: int) -> nn.Sequential:
    """G_Tr: three convolutions, each followed by BN and ReLU."""
    return nn.Sequential(*conv_bn_relu(cin, width, 1), *conv_bn_relu(width, width, 3), *conv_bn_relu(width, width, 3))


def fre_projector(cin: int, width: int) -> nn.Sequential:
    """G_Tf: five convolutions, BN + ReLU after the 2nd and the 4th."""
    return nn.Sequential(
        nn.Conv2d(cin, width, 1, bias=False),
        *conv_bn_relu(width, width, 3),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        *conv_bn_relu(width, width, 3),
        nn.Conv2d(width, width, 1),
    )


class RFAM(nn.Module):
    """RGB-Frequency Attention Module (Chen et al., AAAI'21): one spatial map per branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attend = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, rgb: Tensor, fre: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attend(torch.cat([rgb, fre], dim=1))
        return rgb * a[:, 0:1], fre * a[:, 1:2]  # out of place: autograd-safe


@dataclass(frozen=True)
class BranchLayout:
    """How a backbone splits into segments, which segment ends a tap, and where RFAMs sit."""

    segments: list[list[str]]  # module names of the backbone, per segment
    taps: dict[int, str]  # segment index -> tap name
    rfam_after: tuple[int, ...]


RESNET_LAYOUT = BranchLayout(
    segments=[["conv1", "bn1", "relu", "maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]],
    taps={0: "stage1", 1: "stage2", 2: "stage3", 3: "stage4"},
    rfam_after=(1, 2, 3),
)
# Flow-level RFAMs (notes 5.2 (a)): after block3 (entry flow), block11 (middle), act4 (exit).
XCEPTION_LAYOUT = BranchLayout(
    segments=[
        ["conv1", "bn1", "act1", "conv2", "bn2", "act2", "block1"],
        ["block2"],
        ["block3"],
        [f"block{i}" for i in range(4, 12)],
        ["block12", "conv3", "bn3", "act3", "conv4", "bn4", "act4"],
    ],
    taps={0: "stage1", 1: "stage2", 3: "stage3", 4: "stage4"},
    rfam_after=(2, 3, 4),
)
LAYOUTS = {"res10t": RESNET_LAYOUT, "res18t": RESNET_LAYOUT, "res34t": RESNET_LAYOUT, "xception": XCEPTION_LAYOUT}


class Branch(nn.Module):
    """One backbone cut into segments (the backbone's own modules, re-used in order)."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        if backbone not in LAYOUTS:
            raise ValueError(f"unknown teacher backbone {backbone!r}; choose one of: {', '.join(LAYOUTS)}")
        self.layout = LAYOUTS[backbone]
        self.net = NETWORKS[backbone][0](2)
        self.net.fc = nn.Identity()  # the fusion head classifies; a branch FC would be dead weight
        mods = dict(self.net.named_children())
        self.segments = [nn.Sequential(*(mods[n] for n in names)) for names in self.layout.segments]


class DualBranchTeacher(nn.Module):
    """``forward(x) -> (logits, taps)``; x is the normalised RGB batch (``wanted`` cuts it short)."""

    def __init__(self, backbone: str = "xception", image_size: int = 299, proj_channels: int = 256,
                 num_classes: int = 2, freq_ratio: float = 1 / 3) -> None:
        super().__init__()
        self.backbone = backbone
        # any shape-keeping module (report/complexity swaps in a stand-in on the meta device)
        self.freq: nn.Module = FrequencyTransform(image_size, ratio=freq_ratio)
        self.rgb = Branch(backbone)
        self.fre = Branch(backbone)
        channels = self._segment_channels(image_size)
        self.rfams = nn.ModuleList(RFAM(channels[i]) for i in self.rgb.layout.rfam_after)
        self.rgb_proj = rgb_projector(channels[-1], proj_channels)
        self.fre_proj = fre_projector(channels[-1], proj_channels)
        self.fc = nn.Linear(2 * proj_channels, num_classes)

    @torch.no_grad()
    def _segment_channels(self, image_size: int) -> list[int]:
        x = torch.zeros(1, 3, image_size, image_size)
        was = self.rgb.training
        self.rgb.eval()
        out = []
        for seg in self.rgb.segments:
            x = seg(x)
            out.append(x.shape[1])
        self.rgb.train(was)
        return out

    def forward(self, x: Tensor, wanted: Collection[str] | None = None) -> tuple[Tensor | None, dict[str, Tensor]]:
        """``wanted``: stop as soon as these stage taps are computed and return ``(None, taps)``:
        an online teacher feeding FitNet's stage-2 hint needs two of Xception's five segments."""
        layout = self.rgb.layout
        wanted = set(wanted) if wanted is not None else None
        r, f = x, self.freq(x)
        taps: dict[str, Tensor] = {}
        rfams = iter(self.rfams)
        for i, (seg_r, seg_f) in enumerate(zip(self.rgb.segments, self.fre.segments)):
            r, f = seg_r(r), seg_f(f)
            if i in layout.rfam_after:
                r, f = next(rfams)(r, f)
            if i in layout.taps:
                taps[f"rgb.{layout.taps[i]}"], taps[f"fre.{layout.taps[i]}"] = r, f
            if wanted is not None and taps.keys() >= wanted:
                return None, taps
        taps["rgb.pooled"], taps["fre.pooled"] = r.mean((2, 3)), f.mean((2, 3))
        pr, pf = self.rgb_proj(r), self.fre_proj(f)
        taps["rgb.proj"], taps["fre.proj"] = pr, pf
        fused = torch.relu(torch.cat([pr, pf], dim=1)).mean((2, 3))
        taps["logits"] = logits = self.fc(fused)
        return logits, taps

    def load_branch_weights(self, path: str | Path) -> None:
        """Initialise both branches from one local backbone state dict (ImageNet Xception in
        either key layout, ``kdbench.models.pretrained``); the projectors, RFAMs and fusion
        head keep their seeded initialisation. A missing or mismatched file is an error."""
        for branch in (self.rgb, self.fre):
            load_backbone(branch.net, path, self.backbone, "teacher")
