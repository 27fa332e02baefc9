"""Safe file I/O: atomic writes (also from a background thread) with a digest of what was
written, verified loads, and weights-only loads (no pickle runs code)."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import torch

from kdbench.config import file_sha256

DIGEST_SUFFIX = ".sha256"


class NoSpaceError(OSError):
    """The disk filled up while writing ``filename`` (the temporary file is already removed)."""

    def __str__(self) -> str:
        return f"no space left on device writing {self.filename}"


class CorruptFileError(RuntimeError):
    """A file does not match the digest written with it (bit rot, truncation, an edit), or has none."""


def atomic_write(path: Path, write: Callable[[IO[bytes]], object],
                 before_rename: Callable[[], None] | None = None) -> None:
    """``write`` into a temporary file, then rename it over ``path``: a crash never leaves
    half a file, and a failure (a full disk above all) never leaves the temporary file
    behind to keep the disk full. ENOSPC is raised as ``NoSpaceError`` naming ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _disk_full(exc):
            raise NoSpaceError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


def _disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain: torch's zip writer answers a failed write with a
    RuntimeError of its own ("unexpected pos") raised over the OSError."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class _Hashing:
    """A write-only file that hashes what passes through: the digest costs no second read."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def atomic_save(obj: Any, path: Path, digest_file: bool = True) -> str:
    """``torch.save`` through ``atomic_write``; returns the SHA-256 of the bytes written.

    With ``digest_file`` the digest goes beside the file (``NAME.sha256``), for
    ``load_verified``. Both the old and the new digest are listed while the file is being
    replaced, so a crash between the two renames leaves a pair that still verifies.
    (The teacher cache keeps its digest in its manifest instead: ``digest_file=False``.)
    """
    sha = ""

    def write(fh: IO[bytes]) -> None:
        nonlocal sha
        hashing = _Hashing(fh)
        torch.save(obj, hashing)  # type: ignore[arg-type]  # torch.save takes any object with write and flush
        sha = hashing.sha.hexdigest()

    side = digest_path(path)

    def pending() -> None:  # the new digest, and the old one until the rename is done
        old = side.read_text().split()[:1] if side.is_file() else []
        _write_digests(side, [sha, *old])

    atomic_write(path, write, before_rename=pending if digest_file else None)
    if digest_file:
        write_digest(path, sha)
    return sha


def write_digest(path: Path, *digests: str) -> None:
    """``path``'s digest file (for files written otherwise than by ``atomic_save``)."""
    _write_digests(digest_path(path), digests)


def _write_digests(side: Path, digests: Iterable[str]) -> None:
    text = "".join(f"{d}\n" for d in digests).encode()
    atomic_write(side, lambda fh: fh.write(text))


def verify(path: Path, expected: Iterable[str]) -> None:
    """``CorruptFileError`` unless ``path``'s SHA-256 is one of ``expected``."""
    if file_sha256(path) not in set(expected):
        raise CorruptFileError(f"{path} does not match the digest written with it (corrupt or modified)")


def check_digest(path: Path, required: bool = True) -> None:
    """``CorruptFileError`` unless ``path`` matches its digest file. No digest file: an error
    when ``required``, else nothing is checked (a student checkpoint copied without it)."""
    side = digest_path(path)
    if side.is_file():
        verify(path, side.read_text().split())
    elif required and path.is_file():
        raise CorruptFileError(f"{path} has no digest file {side.name}, so it cannot be verified")


def load_verified(path: Path, required: bool = True) -> Any:
    """``safe_load`` of a file written by ``atomic_save``, after ``check_digest``."""
    check_digest(path, required)
    return safe_load(path)


def remove(path: Path) -> None:
    """Delete a file written by ``atomic_save`` and its digest."""
    path.unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


@contextmanager
def locked(folder: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """One process at a time in ``folder`` (an exclusive ``flock`` on ``folder/.lock``): grid
    shards sharing a teacher, two identical runs. ``on_wait`` is called once if another
    process holds the lock, before waiting for it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
