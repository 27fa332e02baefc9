"""pluggy hook specifications: what a kdbench plugin may implement.

A plugin is a module named in the ``kdbench`` entry-point group of its
distribution (``[project.entry-points.kdbench] name = "module"``). It
implements any of these hooks with ``@kdbench.hookimpl``. Every hook is called
without arguments except ``kdbench_on_event``; built-in names win over a
plugin's, and a plugin whose hook raises is reported, not fatal.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import pluggy

if TYPE_CHECKING:
    from kdbench.data.frames import FrameSplits
    from kdbench.distiller import Distiller
    from kdbench.models.taps import TappedModel
    from kdbench.resolver import Resolver

PROJECT = "kdbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kdbench_distillers() -> list[type[Distiller]]:
    """Distiller classes this plugin provides: ``kdbench.Distiller`` subclasses, each with a
    unique ``name`` (the CLI's ``--method``). Read once, when the plugin registry is built;
    a class that is not a well-formed distiller is listed by ``kdbench plugins`` as broken."""


@hookspec
def kdbench_resolvers() -> list[type[Resolver]]:
    """Gradient-conflict resolver classes this plugin provides (``kdbench.resolver``)."""


@hookspec
def kdbench_students() -> dict[str, Callable[[int], TappedModel]]:
    """Student networks ``name -> builder``: ``builder(num_classes)`` returns a
    ``kdbench.models.taps.TappedModel`` (``forward(x) -> (logits, {tap: tensor})``) exposing the
    taps ``stage1``..``stage4`` and ``pooled``. Called each time a student is looked up by name."""


@hookspec
def kdbench_datasets() -> dict[str, Callable[[int, Mapping[str, Any]], FrameSplits]]:
    """Dataset builders ``name -> builder``: ``builder(image_size, options)`` returns the
    splits ``{"train", "val", "test"} -> kdbench.data.frames.FrameSet`` (uint8 frames at
    ``image_size``, labels 0 real / 1 fake, video ids); ``options`` is the run configuration's
    ``data`` table (``test_data`` for a cross-dataset test set)."""


@hookspec
def kdbench_on_event(event: str, run: dict[str, Any], payload: dict[str, Any]) -> None:
    """Called on run events, for loggers; the return value is ignored and an exception is
    swallowed (a logger never stops a run). ``run`` is the run's configuration (as stored);
    ``payload`` by event: ``run_start`` ``{"hash"}``, ``epoch_end`` the epoch's history row
    (``epoch``, ``lr``, ``loss_*``, ``val_*``, times), ``run_end``/``run_failed``
    ``{"hash", "status"}``."""
