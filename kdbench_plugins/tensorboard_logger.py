"""TensorBoard logger: a built-in event plugin (``kdbench_on_event``), opt-in.

Asked for with ``--log tensorboard`` (or ``log = ["tensorboard"]`` in a config file), it
writes each epoch's losses per term, validation metrics, learning rate and throughput,
and at the end the test metrics, to ``<workdir>/runs/<hash>/tensorboard/``:
``tensorboard --logdir .kdbench/runs`` compares runs. When not asked for it returns at
once and never imports tensorboard, so it costs nothing. It uses exactly the hook a
third-party logger (W&B, MLflow) would implement.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench import hookimpl

if TYPE_CHECKING:  # imported only when asked for (run_start)
    from torch.utils.tensorboard import SummaryWriter

NAME = "tensorboard"
_writers: dict[str, SummaryWriter] = {}  # run hash -> open SummaryWriter
SCALARS = {"loss_": "train/loss_", "val_": "val/", "lr": "train/lr", "img_per_s": "train/img_per_s"}


def tag(key: str) -> str | None:
    """``loss_kd_rgb`` -> ``train/loss_kd_rgb``, ``val_acc`` -> ``val/acc``; None: not a scalar to log."""
    for prefix, group in SCALARS.items():
        if key == prefix or (prefix.endswith("_") and key.startswith(prefix)):
            return group + key[len(prefix):]
    return None


@hookimpl
def kdbench_on_event(event: str, run: dict[str, Any], payload: dict[str, Any]) -> None:
    if NAME not in payload.get("loggers", ()):
        return
    run_hash = payload["hash"]
    if event == "run_start":
        from torch.utils.tensorboard import SummaryWriter

        new_writer = SummaryWriter(log_dir=str(Path(payload["run_dir"]) / NAME))
        new_writer.add_text("config", "```\n" + json.dumps(run, indent=2, default=str) + "\n```")
        _writers[run_hash] = new_writer
        return
    writer = _writers.get(run_hash)
    if writer is None:
        return
    if event == "epoch_end":
        step = int(payload["epoch"]) + 1
        for key, value in payload.items():
            name = tag(key)
            if name is not None and isinstance(value, (int, float)):
                writer.add_scalar(name, value, step)
        writer.flush()
    elif event in ("run_end", "run_failed"):
        for key, value in ((payload.get("metrics") or {}).get("test") or {}).items():
            if isinstance(value, (int, float)):
                writer.add_scalar(f"test/{key}", value, 0)
        writer.close()
        del _writers[run_hash]
