"""Pretrained backbone weights from local files (nothing is ever downloaded).

The paper starts its teacher branches, and its Xception student in Tables 2, 4 and 7,
from ImageNet Xception. Two key layouts of that network are in circulation and both load:

* timm's ``legacy_xception`` state dict (``xception-43020ad28.pth``, what
  ``timm.create_model("legacy_xception", pretrained=True)`` fetches): our own layout;
* the original Keras port (Cadene's ``pretrainedmodels``, ``xception-b5690688.pth``, the
  file FaceForensics++ loads): the same key names (``conv1.weight``,
  ``block1.rep.0.conv1.weight``, ``fc.weight``), but every pointwise convolution stored as a
  2-D matrix (torch 0.3) and no ``num_batches_tracked`` buffers. FF++ unsqueezes the
  pointwise weights on load; so do we. A model saved after ``pretrainedmodels`` renamed its
  head calls it ``last_linear``.

The ImageNet classifier (1000 classes) is dropped: the detectors classify 2 and keep their
seeded head. The thin ResNets (res10t, res18t, res34t) are half-width networks of this
project; no public ImageNet weights exist for them, so only a state dict of the very same
network fits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdbench.io import safe_load

HEADS = ("fc.", "last_linear.")  # ImageNet classifiers: never loaded
THIN = ("res10t", "res18t", "res34t")


def read_state_dict(path: str | Path, what: str) -> dict[str, Tensor]:
    """A state dict from ``path`` (a bare one, or under ``"state_dict"``; DataParallel's
    ``module.`` prefix removed). ``what`` names the file in errors ("teacher", "student")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file not found: {path}")
    try:
        state: Any = safe_load(path)
    except Exception as exc:  # noqa: BLE001 - pickles of whole models, truncated files, non-torch files
        raise ValueError(f"{what} weights {path} are not a readable tensor state dict "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{what} weights {path} are not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _preview(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return f"{len(keys)} {keys[:n]}{more}"


def load_backbone(net: nn.Module, path: str | Path, backbone: str, what: str) -> None:
    """Load the backbone ``net`` (a ``backbone`` network) from ``path``, classifier excluded.

    Missing and unexpected keys and wrong shapes are one ``ValueError`` line that lists them
    all (counted, the first few by name): a silently random network would invalidate a table."""
    state = {k: v for k, v in read_state_dict(path, what).items() if not k.startswith(HEADS)}
    target = {k: v for k, v in net.state_dict().items() if not k.startswith(HEADS)}
    for key, value in list(state.items()):  # the Keras port's 2-D pointwise convolutions
        if key in target and value.dim() == 2 and target[key].dim() == 4:
            state[key] = value[:, :, None, None]
    optional = {k for k in target if k.endswith("num_batches_tracked")}  # absent from torch 0.3 files
    missing = sorted(set(target) - set(state) - optional)
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
                   for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        parts = [f"missing {_preview(missing)}" if missing else "",
                 f"unexpected {_preview(unexpected)}" if unexpected else "",
                 f"wrong shape {_preview(wrong, 2)}" if wrong else ""]
        hint = (f"; {backbone} is a thin ResNet of this project with no public ImageNet weights, so only "
                f"a state dict of {backbone} itself fits" if backbone in THIN else
                "; expected timm's legacy_xception or the Keras-ported xception-*.pth layout")
        raise ValueError(f"{what} weights {path} do not fit a {backbone}: "
                         f"{'; '.join(p for p in parts if p)}{hint}")
    net.load_state_dict(state, strict=False)
