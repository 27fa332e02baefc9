"""The results store: one SQLite record per run, keyed by the resolved-config hash.

WAL mode and a busy timeout let several ``kdbench grid --shard`` processes
write to one store at once; every write is a single short transaction.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    hash TEXT PRIMARY KEY,
    cell TEXT,
    method TEXT, mode TEXT, student TEXT, dataset TEXT, test_dataset TEXT,
    profile TEXT, seed INTEGER, spec TEXT,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT, history TEXT, error TEXT,
    wall_time REAL, device TEXT, versions TEXT, teacher TEXT,
    created REAL, updated REAL
);
CREATE INDEX IF NOT EXISTS runs_cell ON runs (cell);
"""
COLUMNS = ("hash", "cell", "method", "mode", "student", "dataset", "test_dataset", "profile", "seed", "spec",
           "status", "config", "metrics", "history", "error", "wall_time", "device", "versions", "teacher",
           "created", "updated")
JSON_COLUMNS = ("config", "metrics", "history", "versions")


class StoreError(RuntimeError):
    """The results database cannot be opened or written (locked, full disk, corrupt)."""


@dataclass
class RunRecord:
    hash: str
    cell: str
    method: str
    mode: str
    student: str
    dataset: str
    test_dataset: str
    profile: str
    seed: int
    spec: str
    status: str  # running | done | failed | interrupted
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    error: str | None = None
    wall_time: float | None = None
    device: str | None = None
    versions: dict[str, str] | None = None
    teacher: str | None = None
    created: float = 0.0
    updated: float = 0.0


def this_process() -> dict[str, Any]:
    """What a ``running`` record keeps so that a reader can tell whether its process still lives."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def process_gone(proc: dict[str, Any] | None) -> bool:
    """True when ``proc`` (``this_process()`` of some run) ran on this host and has ended.
    Another host's process cannot be checked from here: it counts as alive."""
    if not proc or proc.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(proc["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, KeyError, TypeError):
        return False
    return False


class ResultsStore:
    """``readonly``: for commands that only read (``results``, ``table``, ``figure``): the
    store is opened without writing anything (no directory, schema or WAL switch), and where
    SQLite cannot even create its shared-memory file (a full disk, a read-only mount) it is
    read as an immutable file, so the results stay readable when nothing else works."""

    def __init__(self, path: str | Path, timeout: float | None = None, readonly: bool = False) -> None:
        self.path = Path(path)
        self.timeout = float(os.environ.get("KDBENCH_DB_TIMEOUT", 60.0)) if timeout is None else timeout
        self.readonly = readonly
        self._immutable = False
        self.warning: str | None = None
        if self.path.is_file() and self.path.stat().st_size == 0:
            self.warning = (f"results store {self.path} is an empty (0-byte) file, not a database with runs: "
                            "taken as a new, empty store")
        if readonly:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._init()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from None

    def _init(self) -> None:
        """WAL mode and the schema. Shards started together race to set up a new file, and
        switching to WAL answers "locked" at once, without waiting out the busy timeout
        (tests/test_concurrency.py starts processes together on a new store): so retry until the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with self._connect() as db:
                    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            uri = self.path.resolve().as_uri() + ("?immutable=1" if self._immutable else "?mode=ro")
            db = sqlite3.connect(uri, uri=True, timeout=self.timeout)
        else:
            db = sqlite3.connect(self.path, timeout=self.timeout)
        try:
            with db:
                yield db
        finally:
            db.close()

    def _write(self, sql: str, args: tuple) -> None:
        try:
            with self._connect() as db:
                db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write results store {self.path}: {exc}") from None

    def put(self, rec: RunRecord) -> None:
        now = time.time()
        rec.created = rec.created or now
        rec.updated = now
        values = tuple(json.dumps(getattr(rec, c)) if c in JSON_COLUMNS else getattr(rec, c) for c in COLUMNS)
        marks = ",".join("?" * len(COLUMNS))
        self._write(f"INSERT OR REPLACE INTO runs ({','.join(COLUMNS)}) VALUES ({marks})", values)

    def get(self, run_hash: str) -> RunRecord | None:
        rows = self.query("hash = ?", (run_hash,))
        return rows[0] if rows else None

    def query(self, where: str = "1", args: tuple = ()) -> list[RunRecord]:
        """Records, oldest first; a ``running`` record whose process has ended (killed, the
        machine rebooted) reads as ``interrupted``: re-running its command resumes it."""
        if self.readonly and (not self.path.is_file() or self.path.stat().st_size == 0):
            return []  # nothing stored yet, and a reader creates nothing
        sql = f"SELECT {','.join(COLUMNS)} FROM runs WHERE {where} ORDER BY created"
        try:
            rows = self._select(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read results store {self.path}: {exc}") from None
        out = []
        for row in rows:
            data = dict(zip(COLUMNS, row))
            for c in JSON_COLUMNS:
                data[c] = json.loads(data[c]) if data[c] else None
            rec = RunRecord(**data)
            if rec.status == "running" and process_gone((rec.history or {}).get("process")):
                rec.status = "interrupted"
            out.append(rec)
        return out

    def _select(self, sql: str, args: tuple) -> list[tuple]:
        try:
            with self._connect() as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if not self.readonly or self._immutable or "no such table" in str(exc):
                raise
            self._immutable = True  # cannot create the -shm (full disk, read-only mount): read the file as is
            with self._connect() as db:
                return db.execute(sql, args).fetchall()

    def counts(self, column: str, **equal: Any) -> dict[str, int]:
        """Records per value of ``column`` (a fixed name from COLUMNS), where ``equal``'s columns match."""
        if column not in COLUMNS or not set(equal) <= set(COLUMNS):
            raise ValueError(f"unknown column in {column!r}, {sorted(equal)}")
        where = " AND ".join(f"{k} = ?" for k in equal) or "1"
        if self.readonly and (not self.path.is_file() or self.path.stat().st_size == 0):
            return {}
        try:
            rows = self._select(f"SELECT {column}, COUNT(*) FROM runs WHERE {where} GROUP BY {column}",
                                tuple(equal.values()))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read results store {self.path}: {exc}") from None
        return {value: n for value, n in rows if value is not None}

    def distinct(self, column: str, **equal: Any) -> list[str]:
        """The values of ``column`` where ``equal``'s columns match, in sorted order."""
        return sorted(self.counts(column, **equal))

    def by_cell(self, cell: str) -> list[RunRecord]:
        """Finished runs of one table cell (all seeds)."""
        return self.query("cell = ? AND status = 'done'", (cell,))

    def delete(self, run_hash: str) -> bool:
        """Delete one record; False when there was none with this hash."""
        try:
            with self._connect() as db:
                return db.execute("DELETE FROM runs WHERE hash = ?", (run_hash,)).rowcount > 0
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write results store {self.path}: {exc}") from None
