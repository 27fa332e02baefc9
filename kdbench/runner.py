"""One run end to end: data -> cached teacher -> student + distiller -> fit -> record."""
from __future__ import annotations

import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kdbench import __version__
from kdbench.config import RunConfig
from kdbench.data.registry import load_dataset
from kdbench.io import atomic_save
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.plugins import create_distiller, emit
from kdbench.store import ResultsStore, RunRecord
from kdbench.teacher_cache import build_teacher, ensure_teacher
from kdbench.trainer import fit

Log = Callable[[str], None]


@dataclass(frozen=True)
class Workspace:
    """Where a run's artefacts go: the results store, teacher cache and run checkpoints."""

    root: Path

    @property
    def store_path(self) -> Path:
        return self.root / "results.sqlite"

    def run_dir(self, run_hash: str) -> Path:
        return self.root / "runs" / run_hash


def versions() -> dict[str, str]:
    import timm
    import torchvision

    return {"kdbench": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(cfg: RunConfig, ws: Workspace, store: ResultsStore, device: torch.device, spec: str = "",
        log: Log = print, progress: bool = True) -> RunRecord:
    """Train ``cfg`` and store its record; a failure is recorded, then re-raised."""
    run_hash = cfg.hash
    rec = RunRecord(hash=run_hash, cell=cfg.cell, method=cfg.method, mode=cfg.mode, student=cfg.student, dataset=cfg.dataset,
                    test_dataset=cfg.test_dataset or cfg.dataset, profile=cfg.profile, seed=cfg.seed, spec=spec,
                    status="running", config=cfg.to_dict(), device=device_name(device), versions=versions())
    previous = store.get(run_hash)
    if previous is not None:  # a resumed run keeps its creation time and accumulates wall time
        rec.created, rec.wall_time = previous.created, previous.wall_time
    store.put(rec)
    emit("run_start", rec.config, {"hash": run_hash})
    t0 = time.perf_counter()
    try:
        size = cfg.train.image_size
        # Build the distiller first (from the teacher's architecture, not its weights), so a bad
        # option fails in seconds instead of after the teacher has trained.
        torch.manual_seed(cfg.seed)
        student = build_student(cfg.student).to(device)
        s_shapes = probe_shapes(student, size, device)
        with torch.random.fork_rng(devices=[]):
            t_shapes = probe_shapes(build_teacher(cfg, load_weights=False), size)
        distiller = create_distiller(cfg.method, cfg.mode, s_shapes, t_shapes, **cfg.hp).to(device)
        splits = load_dataset(cfg.dataset, size, cfg.data)
        teacher = ensure_teacher(cfg, splits, ws.root, device, log=log, progress=progress)
        rec.teacher = teacher.hash
        if cfg.test_dataset:  # cross-dataset testing: the teacher stays the training dataset's
            splits["test"] = load_dataset(cfg.test_dataset, size, cfg.test_data)["test"]
        reductions = distiller.teacher_reductions()
        t_taps = distiller.teacher_taps()
        feats = {k: v.to(device) for k, v in
                 teacher.features("train", splits["train"], t_taps, reductions, device, log).items()}

        def teacher_features(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            idx = idx.to(device)
            return {k: v[idx] for k, v in feats.items()}

        log(f"run {run_hash}: {cfg.method}/{cfg.mode} -> {cfg.student} on {cfg.dataset} "
            f"({cfg.profile} profile, seed {cfg.seed}, {device_name(device)})")
        result = fit(student, splits["train"], splits["val"], splits["test"], cfg.train, cfg.seed,
                     distiller=distiller, teacher_features=teacher_features, device=device,
                     checkpoint=ws.run_dir(run_hash) / "state.pt", identity=run_hash, label=cfg.method,
                     progress=progress,
                     on_epoch=lambda row: emit("epoch_end", rec.config, row))
        atomic_save({"student": cfg.student, "num_classes": 2, "image_size": size, "config": cfg.to_dict(),
                     "state_dict": result.best_state}, ws.run_dir(run_hash) / "student.pt")
        rec.metrics = {"test": result.test, "val": result.val, "best_epoch": result.best_epoch,
                       "teacher": teacher.metrics}
        rec.history = result.history
        rec.status = "done"
    except BaseException as exc:
        rec.status = "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        rec.error = f"{type(exc).__name__}: {exc}"
        rec.history = {"traceback": traceback.format_exc(limit=5)}
        raise
    finally:
        rec.wall_time = (rec.wall_time or 0.0) + time.perf_counter() - t0
        store.put(rec)
        emit("run_end" if rec.status == "done" else "run_failed", rec.config, {"hash": run_hash, "status": rec.status})
    return rec
