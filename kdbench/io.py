"""Safe file I/O: atomic writes (also from a background thread) and weights-only loads (no pickle runs code)."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def safe_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers."""
    return torch.load(path, map_location="cpu", weights_only=True)


def snapshot(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples whose tensors are detached CPU copies: what a
    background write may serialise while training goes on changing the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundSaver:
    """``atomic_save`` on a worker thread, one write at a time.

    ``save`` snapshots the object (a device-to-host copy, or a clone of CPU tensors),
    then returns: the disk write (about half a second for an Xception student's
    full training state) overlaps the next epoch instead of stalling it. A failed
    write is raised by the next ``save`` or ``wait``; ``wait`` (also on leaving a
    ``with`` block) makes sure no write is still in flight when the caller moves on
    (or deletes the file).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, obj: Any, path: Path) -> None:
        self.wait()
        copy = snapshot(obj)
        self._thread = threading.Thread(target=self._write, args=(copy, path), name="kdbench-save")
        self._thread.start()

    def _write(self, obj: Any, path: Path) -> None:
        try:
            atomic_save(obj, path)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = exc

    def __enter__(self) -> BackgroundSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
