"""The plugin manager: loads the ``kdbench`` entry-point group, isolating failures.

The only global state in kdbench is the manager built here (cached). A plugin
that fails to import, or whose hook raises or returns something that is not a
``Distiller`` (``kdbench_distillers``) or a ``Resolver`` (``kdbench_resolvers``), is
recorded with its error and skipped; the rest keeps working.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

import pluggy

from kdbench import hookspecs
from kdbench.distiller import Distiller, DistillerError, Shape
from kdbench.resolver import Resolver, ResolverError

ENTRY_POINT_GROUP = "kdbench"


@dataclass
class PluginRegistry:
    """What was loaded: the manager, distillers by name, and broken plugins."""

    manager: pluggy.PluginManager
    distillers: dict[str, type[Distiller]] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)  # distiller name -> distribution
    resolvers: dict[str, type[Resolver]] = field(default_factory=dict)
    resolver_providers: dict[str, str] = field(default_factory=dict)  # resolver name -> distribution
    errors: dict[str, str] = field(default_factory=dict)  # plugin name -> one-line error


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _validate(cls: Any) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Distiller)):
        return f"{cls!r} is not a kdbench.Distiller subclass"
    if not cls.name or not isinstance(cls.name, str):
        return f"{cls.__name__} has no 'name'"
    if not cls.modes or not all(m in ("rgb", "both") for m in cls.modes):
        return f"{cls.__name__}.modes must be a non-empty subset of ('rgb', 'both')"
    return None


def _validate_resolver(cls: Any) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Resolver)):
        return f"{cls!r} is not a kdbench.Resolver subclass"
    if not cls.name or not isinstance(cls.name, str):
        return f"{cls.__name__} has no 'name'"
    if cls.resolve is Resolver.resolve:
        return f"{cls.__name__} does not implement resolve()"
    return None


def _collect(reg: PluginRegistry, hook: Any, validate: Callable[[Any], str | None], kind: str,
             into: dict[str, Any], providers: dict[str, str], dists: Mapping[str, str]) -> None:
    """The classes every implementation of ``hook`` returns, validated, into ``into`` by name."""
    for impl in hook.get_hookimpls():
        try:
            classes = impl.function() or []
        except Exception as exc:  # noqa: BLE001
            reg.errors[impl.plugin_name] = _one_line(exc)
            continue
        for cls in classes:
            problem = validate(cls)
            if problem:
                reg.errors[impl.plugin_name] = problem
                continue
            if cls.name in into:
                reg.errors[impl.plugin_name] = f"{kind} name {cls.name!r} already provided by {providers[cls.name]}"
                continue
            into[cls.name] = cls
            providers[cls.name] = dists.get(impl.plugin_name, impl.plugin_name)


def build_registry(group: str = ENTRY_POINT_GROUP) -> PluginRegistry:
    """Load every entry point of ``group`` into a fresh plugin manager."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = PluginRegistry(pm)
    dists: dict[str, str] = {}
    for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
        try:
            module = importlib.import_module(ep.value.split(":")[0])
            if pm.is_registered(module):
                continue
            pm.register(module, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any plugin failure is isolated
            reg.errors[ep.name] = _one_line(exc)
            continue
        dists[ep.name] = ep.dist.name if ep.dist else "?"
    _collect(reg, pm.hook.kdbench_distillers, _validate, "distiller", reg.distillers, reg.providers, dists)
    _collect(reg, pm.hook.kdbench_resolvers, _validate_resolver, "resolver", reg.resolvers,
             reg.resolver_providers, dists)
    return reg


@lru_cache(maxsize=1)
def registry() -> PluginRegistry:
    """The process-wide registry (built on first use)."""
    return build_registry()


def available_distillers() -> dict[str, type[Distiller]]:
    """Installed distillers by CLI name."""
    return dict(registry().distillers)


def get_distiller_class(name: str) -> type[Distiller]:
    reg = registry()
    if name in reg.distillers:
        return reg.distillers[name]
    if name in reg.errors:
        raise DistillerError(f"distiller plugin {name!r} is broken: {reg.errors[name]}")
    raise DistillerError(f"unknown method {name!r}; choose one of: {', '.join(sorted(reg.distillers))}")


def create_distiller(
    name: str,
    mode: str,
    student_shapes: Mapping[str, Shape],
    teacher_shapes: Mapping[str, Shape],
    **hparams: Any,
) -> Distiller:
    """Build the distiller ``name`` for ``mode`` from probed tap shapes."""
    return get_distiller_class(name)(mode, student_shapes, teacher_shapes, **hparams)


def available_resolvers() -> dict[str, type[Resolver]]:
    """Installed gradient-conflict resolvers by CLI name."""
    return dict(registry().resolvers)


def get_resolver_class(name: str) -> type[Resolver]:
    reg = registry()
    if name in reg.resolvers:
        return reg.resolvers[name]
    if name in reg.errors:
        raise ResolverError(f"resolver plugin {name!r} is broken: {reg.errors[name]}")
    raise ResolverError(f"unknown resolver {name!r}; choose one of: {', '.join(sorted(reg.resolvers))}")


def create_resolver(name: str, **hparams: Any) -> Resolver:
    """Build the resolver ``name`` with hyper-parameter overrides."""
    return get_resolver_class(name)(**hparams)


def emit(event: str, run: dict[str, Any], payload: dict[str, Any]) -> None:
    """Send an event to logger plugins; a failing logger never stops a run."""
    for impl in registry().manager.hook.kdbench_on_event.get_hookimpls():
        try:
            impl.function(event=event, run=run, payload=payload)
        except Exception:  # noqa: BLE001
            pass
