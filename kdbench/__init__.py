"""kdbench: knowledge distillation from a dual-branch forgery teacher, benchmarked.

The names below are the public plugin API. They are loaded on first use
(PEP 562), so ``import kdbench`` and ``kdbench --help`` do not import torch.
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("kdbench")  # one place: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "BRANCHES": "kdbench.distiller",
    "Distiller": "kdbench.distiller",
    "DistillerError": "kdbench.distiller",
    "HParam": "kdbench.distiller",
    "StepInfo": "kdbench.distiller",
    "branch_taps": "kdbench.distiller",
    "Resolver": "kdbench.resolver",
    "ResolverError": "kdbench.resolver",
    "hookimpl": "kdbench.hookspecs",
    "available_distillers": "kdbench.plugins",
    "create_distiller": "kdbench.plugins",
    "available_resolvers": "kdbench.plugins",
    "create_resolver": "kdbench.plugins",
}

if TYPE_CHECKING:
    from kdbench.distiller import BRANCHES, Distiller, DistillerError, HParam, StepInfo, branch_taps
    from kdbench.hookspecs import hookimpl
    from kdbench.plugins import available_distillers, available_resolvers, create_distiller, create_resolver
    from kdbench.resolver import Resolver, ResolverError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdbench' has no attribute {name!r}")


__all__ = [*_EXPORTS, "__version__"]
