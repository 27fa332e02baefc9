"""The plugin manager: loads the ``kdbench`` entry-point group, isolating failures.

The only global state in kdbench is the manager built here (cached). Every hook
is called through one isolating call (``_call``): a plugin that fails to import
(even with ``sys.exit()``), whose hook raises or returns something of the wrong
kind, is recorded with its error, named in a one-line ``PluginWarning`` and in
``kdbench plugins``, and skipped; the rest keeps working. The hooks that provide
things (distillers, resolvers, students, datasets) are called once, when the registry is built.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

import pluggy

from kdbench import hookspecs
from kdbench.distiller import MODES, Distiller, DistillerError, Shape
from kdbench.resolver import Resolver, ResolverError

ENTRY_POINT_GROUP = "kdbench"


@dataclass
class PluginRegistry:
    """What was loaded: the manager, distillers by name, and broken plugins."""

    manager: pluggy.PluginManager
    distillers: dict[str, type[Distiller]] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)  # distiller name -> distribution
    errors: dict[str, str] = field(default_factory=dict)  # plugin name -> one-line error
    resolvers: dict[str, type[Resolver]] = field(default_factory=dict)  # from kdbench_resolvers
    resolver_providers: dict[str, str] = field(default_factory=dict)  # resolver name -> distribution
    students: dict[str, Callable[..., Any]] = field(default_factory=dict)  # from kdbench_students
    datasets: dict[str, Callable[..., Any]] = field(default_factory=dict)  # from kdbench_datasets

    def broken(self, plugin: str, problem: str) -> None:
        """Record ``plugin`` as broken (its first problem) and warn once."""
        if plugin not in self.errors:
            self.errors[plugin] = problem
            warnings.warn(f"plugin {plugin} is broken and skipped: {problem}", PluginWarning, stacklevel=3)


class PluginWarning(UserWarning):
    """A plugin failed and is skipped (the command line prints it as one line)."""


def _call(reg: PluginRegistry, hook: str, kwargs: Mapping[str, Any] | None = None,
          expect: type | tuple[type, ...] = object) -> list[tuple[str, Any]]:
    """(plugin, result) of every healthy plugin's ``hook``, each called on its own: one that
    raises (``SystemExit`` included) or returns something not ``expect`` becomes broken."""
    out = []
    for impl in getattr(reg.manager.hook, hook).get_hookimpls():
        if impl.plugin_name in reg.errors:
            continue
        try:
            result = impl.function(**(kwargs or {}))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any plugin failure is isolated
            reg.broken(impl.plugin_name, f"{hook}: {_one_line(exc)}")
            continue
        if result is not None and not isinstance(result, expect):
            reg.broken(impl.plugin_name, f"{hook} returned {type(result).__name__}, not "
                                         f"{getattr(expect, '__name__', expect)}")
            continue
        out.append((impl.plugin_name, result))
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _validate(cls: Any) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Distiller)):
        return f"{cls!r} is not a kdbench.Distiller subclass"
    if not cls.name or not isinstance(cls.name, str):
        return f"{cls.__name__} has no 'name'"
    if not cls.modes or not all(m in MODES for m in cls.modes):
        return f"{cls.__name__}.modes must be a non-empty subset of {MODES}"
    return None


def _validate_resolver(cls: Any) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Resolver)):
        return f"{cls!r} is not a kdbench.Resolver subclass"
    if not cls.name or not isinstance(cls.name, str):
        return f"{cls.__name__} has no 'name'"
    if cls.resolve is Resolver.resolve:
        return f"{cls.__name__} does not implement resolve()"
    return None


def _collect(reg: PluginRegistry, hook: str, validate: Callable[[Any], str | None], kind: str,
             into: dict[str, Any], providers: dict[str, str], dists: Mapping[str, str]) -> None:
    """The classes every healthy plugin's ``hook`` returns, validated, into ``into`` by name."""
    for plugin, classes in _call(reg, hook, expect=(list, tuple)):
        for cls in classes or []:
            problem = validate(cls)
            if problem is None and cls.name in into:
                problem = f"{kind} name {cls.name!r} already provided by {providers[cls.name]}"
            if problem:
                reg.broken(plugin, problem)
                continue
            into[cls.name] = cls
            providers[cls.name] = dists.get(plugin, plugin)


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
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any plugin failure is isolated, sys.exit() too
            reg.broken(ep.name, _one_line(exc))
            continue
        dists[ep.name] = ep.dist.name if ep.dist else "?"
    _collect(reg, "kdbench_distillers", _validate, "distiller", reg.distillers, reg.providers, dists)
    _collect(reg, "kdbench_resolvers", _validate_resolver, "resolver", reg.resolvers, reg.resolver_providers, dists)
    for hook, into in (("kdbench_students", reg.students), ("kdbench_datasets", reg.datasets)):
        for _, provided in _call(reg, hook, expect=Mapping):
            into.update({k: v for k, v in (provided or {}).items() if k not in into})
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
    """Send an event to logger plugins; a failing logger never stops a run (it is named once and
    skipped from then on)."""
    _call(registry(), "kdbench_on_event", {"event": event, "run": run, "payload": payload})
