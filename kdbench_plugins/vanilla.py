"""Vanilla: the student trained with cross-entropy alone (Table 3's first column)."""
from __future__ import annotations

from kdbench import Distiller, hookimpl


class Vanilla(Distiller):
    name = "vanilla"
    modes = ("rgb",)
    description = "No distillation: cross-entropy only."
    defaults = {}


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [Vanilla]
