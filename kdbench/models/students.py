"""Student networks: half-width ResNets (res18t, res34t) and Xception.

Every student exposes the taps ``stage1..stage4`` (stage outputs; ``stage4`` is
S_B(x), the map the classifier pools) and ``pooled`` (the classifier's input).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import timm
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from kdbench.models.pretrained import load_backbone
from kdbench.models.taps import TappedModel

THIN_WIDTHS = (32, 64, 128, 256)
RESNET_TAPS = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4", "pooled": "avgpool"}
# Xception stage outputs at 299 px: 128@74, 256@37, 728@19 (end of middle flow), 2048@10.
XCEPTION_TAPS = {"stage1": "block1", "stage2": "block2", "stage3": "block11", "stage4": "act4", "pooled": "global_pool"}


class ThinResNet(ResNet):
    """torchvision's ResNet with every width halved, the 7x7 stem included (32 wide)."""

    def __init__(self, layers: list[int], num_classes: int = 2, widths: tuple[int, ...] = THIN_WIDTHS) -> None:
        super().__init__(BasicBlock, layers, num_classes=num_classes)
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(widths[0])
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def res10t(num_classes: int = 2) -> nn.Module:
    """A one-block-per-stage thin ResNet: the small teacher branch of the CPU profiles."""
    return ThinResNet([1, 1, 1, 1], num_classes)


def res18t(num_classes: int = 2) -> nn.Module:
    return ThinResNet([2, 2, 2, 2], num_classes)


def res34t(num_classes: int = 2) -> nn.Module:
    return ThinResNet([3, 4, 6, 3], num_classes)


def xception(num_classes: int = 2) -> nn.Module:
    """timm's ``legacy_xception`` (Chollet's Xception as in FF++), never downloaded: ImageNet
    weights come from a local file (``build_student(..., weights=)``, ``--student-weights``)."""
    return timm.create_model("legacy_xception", pretrained=False, num_classes=num_classes)


NETWORKS: dict[str, tuple[Callable[[int], nn.Module], dict[str, str]]] = {
    "res10t": (res10t, RESNET_TAPS),
    "res18t": (res18t, RESNET_TAPS),
    "res34t": (res34t, RESNET_TAPS),
    "xception": (xception, XCEPTION_TAPS),
}
STUDENTS = ("res18t", "res34t", "xception")


def build_student(name: str, num_classes: int = 2, weights: str | Path | None = None) -> TappedModel:
    """A tapped student network by name (built-ins, then ``kdbench_students`` plugins).

    ``weights``: a local pretrained state dict for a built-in's backbone (ImageNet Xception in
    timm's or the Keras port's layout; ``kdbench.models.pretrained``); the classifier keeps its
    seeded initialisation."""
    from kdbench.plugins import registry

    if name in NETWORKS:
        builder, taps = NETWORKS[name]
        net = builder(num_classes)
        if weights is not None:
            load_backbone(net, weights, name, "student")
        return TappedModel(net, taps)
    plugin_builder = registry().students.get(name)
    if plugin_builder is not None:
        if weights is not None:
            raise ValueError(f"student weights are for the built-in students ({', '.join(STUDENTS)}); "
                             f"the plugin student {name!r} loads its own")
        try:
            model = plugin_builder(num_classes)
        except Exception as exc:  # noqa: BLE001 - the plugin's failure, in one line
            raise ValueError(f"student plugin {name!r} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, TappedModel):
            raise ValueError(f"student plugin {name!r} must return a kdbench TappedModel")
        return model
    raise ValueError(f"unknown student {name!r}; choose one of: {', '.join(available_students())}")


def available_students() -> list[str]:
    from kdbench.plugins import registry

    return [*STUDENTS, *(n for n in registry().students if n not in STUDENTS)]
