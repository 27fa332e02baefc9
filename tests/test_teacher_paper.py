"""The teacher against the paper's description (Sec. 3, Sec. 4.1, Table 1), written from the text.

Sec. 3: "the RFAM first concatenate[s] the paired internal feature maps from two branches, then
pass[es] it through two convolutional modules and then split[s] the final output from the middle
by channel to obtain two attention maps for RGB and frequency branch, respectively. These attention
maps are used to enhance the RGB and frequency features in the network by multiplication."
Sec. 4.1: "G_Tr contains three convolutions followed by the BN and ReLU, while G_Tf contains five
convolutions with the BN and ReLU added after the second and fourth layer."
"""
from __future__ import annotations

import torch
from torch import nn

from kdbench.models.teacher import RFAM, DualBranchTeacher

C = 6


def rfam(seed: int = 0) -> RFAM:
    torch.manual_seed(seed)
    return RFAM(C).eval()


def convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_rfam_concatenates_both_branches_into_two_convolutions():
    m = rfam()
    first, last = convs(m)  # exactly two convolutional modules
    assert first.in_channels == 2 * C  # the concatenation of the paired maps
    assert last.out_channels % 2 == 0  # split from the middle into two equal halves


def test_rfam_multiplies_each_branch_by_its_own_spatial_attention_map():
    m = rfam()
    g = torch.Generator().manual_seed(1)
    rgb, fre = torch.randn(2, C, 5, 4, generator=g) + 3, torch.randn(2, C, 5, 4, generator=g) - 3  # no zeros
    with torch.no_grad():
        r, f = m(rgb, fre)
    for out, x in ((r, rgb), (f, fre)):
        a = out / x  # the attention map, wherever the multiplication put it
        assert torch.allclose(a, a[:, :1].expand_as(a), atol=1e-6)  # one map shared by the channels
        assert bool(((a > 0) & (a < 1)).all())  # an attention weight, not a shift
    assert not torch.allclose(r / rgb, f / fre)  # two different maps


def test_rfam_fuses_the_branches_and_splits_from_the_middle():
    m = rfam()
    g = torch.Generator().manual_seed(2)
    rgb, fre = torch.rand(1, C, 4, 4, generator=g) + 0.5, torch.rand(1, C, 4, 4, generator=g) + 0.5
    with torch.no_grad():
        r0, _ = m(rgb, fre)
        r1, _ = m(rgb, 2 * fre)
    assert not torch.allclose(r0, r1)  # the RGB output depends on the frequency branch: fusion
    # drive the first half of the last convolution's output up, the second half down: the RGB
    # map (first half) opens, the frequency map (second half) closes
    last = convs(m)[-1]
    with torch.no_grad():
        last.weight.zero_()
        half = last.out_channels // 2
        last.bias[:half], last.bias[half:] = 30.0, -30.0
        r, f = m(rgb, fre)
    assert torch.allclose(r, rgb, atol=1e-6) and torch.allclose(f, torch.zeros_like(f), atol=1e-6)


def layer_kinds(seq: nn.Sequential) -> list[str]:
    names = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu"}
    return [names[type(m)] for m in seq]


def test_teacher_projectors_follow_section_4_1():
    t = DualBranchTeacher("res10t", image_size=48, proj_channels=16)
    assert layer_kinds(t.rgb_proj) == ["conv", "bn", "relu"] * 3
    assert layer_kinds(t.fre_proj) == ["conv", "conv", "bn", "relu", "conv", "conv", "bn", "relu", "conv"]


def test_three_rfams_feed_the_following_layers():
    """Three RFAMs after intermediate layers; each branch carries the enhanced map on, so zeroing
    an RFAM's RGB attention changes everything the RGB branch computes after it."""
    torch.manual_seed(0)
    t = DualBranchTeacher("res10t", image_size=48, proj_channels=16).eval()
    assert len(t.rfams) == 3
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        _, before = t(x)
        last = convs(t.rfams[0])[-1]
        last.weight.zero_()
        last.bias.fill_(-60.0)  # both maps of the first RFAM ~ 0
        _, after = t(x)
    assert before["rgb.stage1"].equal(after["rgb.stage1"])  # before the first RFAM: untouched
    assert after["rgb.stage2"].abs().max() < 1e-12  # the RFAM's output is the tap and what follows
    assert not before["rgb.stage3"].equal(after["rgb.stage3"])
