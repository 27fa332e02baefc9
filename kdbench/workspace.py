"""Where a run's artefacts go: the results store, the teacher cache and per-run folders.

Its own module so that the commands which only read the store (``kdbench results``,
``table``, ``figure``) find it without importing torch through the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    """Where a run's artefacts go: the results store, teacher cache and run checkpoints."""

    root: Path

    @property
    def store_path(self) -> Path:
        return self.root / "results.sqlite"

    def run_dir(self, run_hash: str) -> Path:
        return self.root / "runs" / run_hash
