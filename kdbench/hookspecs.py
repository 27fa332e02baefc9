"""pluggy hook specifications: what a kdbench plugin may implement.

A plugin is a module named in the ``kdbench`` entry-point group of its
distribution (``[project.entry-points.kdbench] name = "module"``). It
implements any of these hooks with ``@kdbench.hookimpl``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from kdbench.distiller import Distiller
    from kdbench.resolver import Resolver

PROJECT = "kdbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kdbench_distillers() -> list[type[Distiller]]:
    """Distiller classes this plugin provides."""


@hookspec
def kdbench_resolvers() -> list[type[Resolver]]:
    """Gradient-conflict resolver classes this plugin provides (``kdbench.resolver``)."""


@hookspec
def kdbench_students() -> dict[str, Callable[..., nn.Module]]:
    """Student builders ``name -> builder(num_classes) -> StudentModel``."""


@hookspec
def kdbench_datasets() -> dict[str, Callable[..., Any]]:
    """Dataset builders ``name -> builder(config) -> FrameSplits``."""


@hookspec
def kdbench_on_event(event: str, run: dict[str, Any], payload: dict[str, Any]) -> None:
    """Called on run events (``run_start``, ``epoch_end``, ``run_end``, ``run_failed``); for loggers."""
