"""Safe file I/O: atomic writes and weights-only loads (no pickle runs code)."""
from __future__ import annotations

import os
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
