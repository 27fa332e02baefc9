"""kdbench: knowledge distillation from a dual-branch forgery teacher, benchmarked."""
from kdbench.distiller import BRANCHES, Distiller, DistillerError, HParam, StepInfo, branch_taps
from kdbench.hookspecs import hookimpl
from kdbench.plugins import available_distillers, create_distiller

__version__ = "0.1.0"

__all__ = [
    "BRANCHES",
    "Distiller",
    "DistillerError",
    "HParam",
    "StepInfo",
    "available_distillers",
    "branch_taps",
    "create_distiller",
    "hookimpl",
    "__version__",
]
