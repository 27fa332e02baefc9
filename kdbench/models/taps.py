"""Forward-hook feature taps (torchdistill-style): no model code is forked.

``TappedModel(net, {"stage1": "layer1", ...})`` runs ``net`` and returns its
logits together with the outputs of the named sub-modules, and the logits
themselves as the ``logits`` tap (what logit distillers such as KD read).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

Shape = tuple[int, ...]


class TappedModel(nn.Module):
    """``forward(x) -> (logits, {tap: tensor})``; ``net`` is the deployable model."""

    def __init__(self, net: nn.Module, taps: Mapping[str, str]) -> None:
        super().__init__()
        self.net = net
        self.tap_paths = dict(taps)
        self._store: dict[str, Tensor] = {}
        modules = dict(net.named_modules())
        for tap, path in self.tap_paths.items():
            if path not in modules:
                raise KeyError(f"tap {tap!r}: no sub-module {path!r} in {type(net).__name__}")
            modules[path].register_forward_hook(self._hook(tap))

    def _hook(self, tap: str):
        def save(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            self._store[tap] = output.flatten(1) if tap == "pooled" else output

        return save

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        self._store = {}
        logits = self.net(x)
        taps, self._store = self._store, {}
        taps["logits"] = logits
        return logits, taps

    @property
    def tap_names(self) -> list[str]:
        return [*self.tap_paths, "logits"]


@torch.no_grad()
def probe_shapes(model: nn.Module, image_size: int, device: torch.device | str = "cpu") -> dict[str, Shape]:
    """Tap shapes without the batch dim, probed in eval mode so no BN statistic moves."""
    was_training = model.training
    model.eval()
    try:
        _, taps = model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return {k: tuple(v.shape[1:]) for k, v in taps.items()}
