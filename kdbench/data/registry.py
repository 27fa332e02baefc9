"""Dataset lookup: built-ins first, then ``kdbench_datasets`` plugins."""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from kdbench.data.frames import FrameSet, FrameSplits

DatasetBuilder = Callable[[int, Mapping[str, Any]], FrameSplits]


class DatasetError(ValueError):
    """A dataset is unknown, missing or unreadable."""


def _synthetic(image_size: int, options: Mapping[str, Any]) -> FrameSplits:
    from kdbench.data.synthetic import SyntheticConfig, build_synthetic

    try:
        cfg = SyntheticConfig(image_size=image_size, **options)
    except TypeError as exc:
        raise DatasetError(f"bad synthetic dataset option: {exc}") from None
    return build_synthetic(cfg)


def _prepared(module: str, attr: str, *args: str) -> DatasetBuilder:
    """A builder of a prepared directory (kdbench.data.<module>), imported on first use."""

    def build(image_size: int, options: Mapping[str, Any]) -> FrameSplits:
        import importlib

        fn = getattr(importlib.import_module(f"kdbench.data.{module}"), attr)
        return (fn(*args) if args else fn)(image_size, options)

    return build


BUILTIN: dict[str, DatasetBuilder] = {
    "synthetic": _synthetic,
    "ffpp-c40": _prepared("ffpp", "builder", "c40"),
    "ffpp-c23": _prepared("ffpp", "builder", "c23"),
    "ffpp-raw": _prepared("ffpp", "builder", "raw"),
    "celebdf": _prepared("celebdf", "build"),
    "folder": _prepared("folder", "build"),
}


def dataset_builders() -> dict[str, DatasetBuilder]:
    from kdbench.plugins import registry

    return {**registry().datasets, **BUILTIN}  # a plugin cannot shadow a built-in


def load_dataset(name: str, image_size: int, options: Mapping[str, Any]) -> FrameSplits:
    builders = dataset_builders()
    if name not in builders:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(builders))}")
    try:
        splits = builders[name](image_size, options)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's dataset failing is one line, not a traceback
        if name in BUILTIN:
            raise
        raise DatasetError(f"dataset plugin {name!r} failed: {type(exc).__name__}: {exc}") from None
    for split, frames in splits.items():
        if len(frames) == 0:
            raise DatasetError(f"dataset {name!r}: split {split!r} is empty")
    return splits


class DatasetCache:
    """Datasets loaded once per process for a whole grid (a synthetic set takes seconds to
    generate, a prepared one to decode). Each call returns fresh ``FrameSet`` objects over
    the shared tensors, so a run may re-place or replace them without touching the cache."""

    def __init__(self) -> None:
        self._loaded: dict[str, FrameSplits] = {}

    def load(self, name: str, image_size: int, options: Mapping[str, Any]) -> FrameSplits:
        key = json.dumps([name, image_size, dict(options)], sort_keys=True, default=str)
        if key not in self._loaded:
            self._loaded[key] = load_dataset(name, image_size, options)
        return {split: FrameSet(f.images, f.labels, f.videos) for split, f in self._loaded[key].items()}
