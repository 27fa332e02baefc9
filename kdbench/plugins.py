"""The plugin manager: loads the ``kdbench`` entry-point group, isolating failures.

The only global state in kdbench is the manager built here (cached). Every hook
is called through one isolating call (``_call``): a plugin that fails to import
(even with ``sys.exit()``), whose hook raises or returns something of the wrong
kind, is recorded with its error, named in a one-line ``PluginWarning`` and in
``kdbench plugins``, and skipped; the rest keeps working. The hooks that provide
things (distillers, students, datasets) are called once, when the registry is built.
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

ENTRY_POINT_GROUP = "kdbench"


@dataclass
class PluginRegistry:
    """What was loaded: the manager, distillers by name, and broken plugins."""

    manager: pluggy.PluginManager
    distillers: dict[str, type[Distiller]] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)  # distiller name -> distribution
    errors: dict[str, str] = field(default_factory=dict)  # plugin name -> one-line error
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
    for plugin, classes in _call(reg, "kdbench_distillers", expect=(list, tuple)):
        for cls in classes or []:
            problem = _validate(cls)
            if problem is None and cls.name in reg.distillers:
                problem = f"distiller name {cls.name!r} already provided by {reg.providers[cls.name]}"
            if problem:
                reg.broken(plugin, problem)
                continue
            reg.distillers[cls.name] = cls
            reg.providers[cls.name] = dists.get(plugin, plugin)
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


def emit(event: str, run: dict[str, Any], payload: dict[str, Any]) -> None:
    """Send an event to logger plugins; a failing logger never stops a run (it is named once and
    skipped from then on)."""
    _call(registry(), "kdbench_on_event", {"event": event, "run": run, "payload": payload})
