"""The public distiller contract shared by built-in and third-party plugins.

A distiller is an ``nn.Module`` built once from probed tap shapes. Each step
the trainer hands it the student's taps, the teacher's (cached) taps and the
labels; it returns *weighted* loss terms that the trainer adds to the
cross-entropy and back-propagates once. Everything it creates (connectors,
variances, rotations) lives in its own ``state_dict``.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import Tensor, nn

Shape = tuple[int, ...]
Reduction = Callable[[Tensor], Tensor]

BRANCHES = ("rgb", "fre")
# What a mode distils from: one teacher branch, both branches, or the teacher's fused classifier
# (its logits, the ``logits`` tap: the teacher has no per-branch classifier, so a logit method has
# no RGB-only or two-branch variant and offers this mode alone).
MODES = ("rgb", "both", "fused")


class DistillerError(ValueError):
    """A distiller was asked for something it cannot do (bad mode, hparam, shape)."""


@dataclass(frozen=True)
class HParam:
    """A hyper-parameter default with where it comes from (paper, repo, script)."""

    value: Any
    source: str = ""


@dataclass(frozen=True)
class StepInfo:
    """What a distiller's leader step may need to know about the follower."""

    step: int  # global optimisation step, from 0
    epoch: int  # current epoch, from 0
    epochs: int  # total epochs of the run
    steps_per_epoch: int
    student_lr: float  # the student's learning rate at this step
    base_lr: float  # the student's initial learning rate
    log: bool = False  # True on diagnostic steps (every ``log_every`` steps)
    batch_size: int = 0  # samples in this step's global batch, over all processes (0: not known)


class Distiller(nn.Module):
    """Base class of every distiller. Subclass it, then register it with the
    ``kdbench_distillers`` hook (see ``kdbench.hookspecs``)."""

    name: ClassVar[str] = ""
    modes: ClassVar[tuple[str, ...]] = ("rgb", "both")
    defaults: ClassVar[dict[str, HParam]] = {}
    description: ClassVar[str] = ""
    # True: ``forward`` also receives ``index=``, the batch's row numbers in the training split
    # (int64, on the batch's device), and ``prepare`` sizes per-sample state from the split (CRD).
    wants_index: ClassVar[bool] = False

    def __init__(
        self,
        mode: str,
        student_shapes: Mapping[str, Shape],
        teacher_shapes: Mapping[str, Shape],
        **hparams: Any,
    ) -> None:
        super().__init__()
        if mode not in self.modes:
            raise DistillerError(
                f"distiller {self.name!r} has no mode {mode!r}; choose one of: {', '.join(self.modes)}"
            )
        self.mode = mode
        self.hp = resolve_hparams(type(self), hparams)
        self.student_shapes = dict(student_shapes)
        self.teacher_shapes = dict(teacher_shapes)

    # -- what to tap -----------------------------------------------------
    @property
    def branches(self) -> tuple[str, ...]:
        """Teacher branches distilled from: ``("rgb",)``, ``("rgb", "fre")``, or none on their own
        (``()``) in the ``fused`` mode, which reads the teacher's fused ``logits`` tap."""
        return {"rgb": ("rgb",), "both": BRANCHES}.get(self.mode, ())

    @property
    def ce_weight(self) -> float:
        """The weight the trainer gives the cross-entropy: the ``ce_weight`` hyper-parameter where the
        distiller declares one (a canonical recipe that reweights CE, as KD's 0.1 CE + 0.9 KD does,
        so the weight is part of the run's configuration and hash), else 1.0 (unweighted: every
        distiller without one trains exactly as before this existed)."""
        return float(self.hp.get("ce_weight", 1.0))

    def prepare(self, train_labels: Tensor) -> None:
        """Called once by the trainer before training (and before a checkpoint is resumed) with
        the labels of the whole training split in index order. A distiller with per-sample state
        (CRD's memory bank) sizes it here, as buffers, so checkpoints carry it; others ignore it."""

    def student_taps(self) -> list[str]:
        return []

    def teacher_taps(self) -> list[str]:
        return []

    def teacher_reductions(self) -> dict[str, Reduction]:
        """Parameter-free reductions of teacher taps, applied before caching."""
        return {}

    # -- the step --------------------------------------------------------
    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        return {}

    def after_backward(self, step: StepInfo) -> dict[str, float] | None:
        """Optional leader step, run after the single backward and before the
        student optimizer steps. May return diagnostics to log."""
        return None

    def leader_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters updated by the distiller itself, kept out of the student optimizer."""
        return ()

    def student_parameters(self) -> list[nn.Parameter]:
        """The distiller's parameters trained by the student optimizer."""
        leader = {id(p) for p in self.leader_parameters()}
        return [p for p in self.parameters() if id(p) not in leader]


def resolve_hparams(cls: type[Distiller], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``cls`` updated by ``overrides``; values are cast to the default's type."""
    unknown = sorted(set(overrides) - set(cls.defaults))
    if unknown:
        valid = ", ".join(sorted(cls.defaults)) or "none"
        raise DistillerError(
            f"unknown hyper-parameter {', '.join(unknown)} for {cls.name!r}; valid: {valid}"
        )
    resolved = {k: v.value for k, v in cls.defaults.items()}
    for key, value in overrides.items():
        resolved[key] = coerce(value, cls.defaults[key].value, key)
    return resolved


def coerce(value: Any, default: Any, key: str = "") -> Any:
    """Cast a CLI/config value (often a string) to the type of its default."""
    if default is None or type(value) is type(default):
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError(value)
            return int(as_float)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):  # nan or inf: the loss would be nan after the whole set-up
                raise ValueError(value)
            return number
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise DistillerError(
            f"hyper-parameter {key}={value!r} is not a valid {type(default).__name__}"
        ) from None
    return value


def reduce_taps(all_taps: Mapping[str, Tensor], names: Iterable[str],
                reductions: Mapping[str, Reduction]) -> dict[str, Tensor]:
    """The named teacher taps, each through its declared reduction (if any): what
    ``forward`` receives, whether the taps come from the cache or an online teacher."""
    return {t: reductions[t](all_taps[t]) if t in reductions else all_taps[t] for t in names}


def branch_taps(branches: Iterable[str], taps: Iterable[str]) -> list[str]:
    """``["rgb.stage2", "fre.stage2"]`` from branches and tap names."""
    return [f"{b}.{t}" for b in branches for t in taps]


def check_finite(terms: Mapping[str, Tensor]) -> str | None:
    """Name of the first non-finite term, or None."""
    for key, value in terms.items():
        if not bool(torch.isfinite(value.detach()).all()):
            return key
    return None
