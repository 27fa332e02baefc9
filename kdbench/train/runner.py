"""One run end to end: data -> cached teacher -> student + distiller -> fit -> record."""
from __future__ import annotations

import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from kdbench import __version__
from kdbench.config import ConfigError, RunConfig, changed_settings
from kdbench.data.frames import FrameSet, FrameSplits
from kdbench.data.registry import DatasetCache
from kdbench.distiller import Distiller, reduce_taps
from kdbench.io import atomic_save, remove
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.plugins import create_distiller, create_resolver, emit
from kdbench.store import ResultsStore, RunRecord, StoreError, this_process
from kdbench.train.runtime import Runtime, main_first, prepare_module
from kdbench.train.teacher_cache import Teacher, TeacherCache
from kdbench.train.trainer import epoch_summary, fit
from kdbench.workspace import Workspace

Log = Callable[[str], None]


class PhaseClock:
    """Wall seconds per phase of a run (data, teacher, features, train...), kept in its record
    so that a slow grid shows where its time went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the last lap to ``phase``."""
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._mark, 3)
        self._mark = now

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())


def versions() -> dict[str, Any]:
    """The library versions and the environment a run ran in: recorded with it, never hashed
    (the same configuration on one or two CPU threads, or another torch build, may differ in
    the last digits; the record says which it was)."""
    import timm
    import torchvision

    return {"kdbench": __version__, "kdbench_commit": git_commit(), "torch": torch.__version__,
            "torch_build": torch_build(), "torchvision": torchvision.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def torch_build() -> str:
    """"CUDA 12.8", "ROCm 6.2" or "CPU-only"."""
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    return "CPU-only"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit of the kdbench checkout this runs from (with "+dirty" when files differ), or None
    for an installed wheel. Read with git itself; a missing git is simply no commit."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def place_frames(splits: FrameSplits, rt: Runtime) -> str:
    """Keep uint8 frames resident on the device when they fit the budget, else pinned on the host."""
    if rt.device.type == "cpu":
        return "host"
    need = sum(f.images.numel() for f in splits.values())
    if need <= rt.free_bytes():
        for f in splits.values():
            f.images = f.images.to(rt.device)
        return "device"
    for f in splits.values():
        f.images = f.images.pin_memory()
    return "pinned host"


def plan_taps(sizes: Mapping[str, int], device_budget: int, host_budget: int) -> dict[str, str]:
    """Each teacher tap's source, smallest cache first: ``device`` while it fits the device
    budget, then ``host`` (pinned) while it fits the host budget, else ``online``."""
    plan, left = {}, {"device": device_budget, "host": host_budget}
    for tap in sorted(sizes, key=lambda t: (sizes[t], t)):
        tier = next((k for k in ("device", "host") if sizes[tap] <= left[k]), "online")
        plan[tap] = tier
        if tier != "online":
            left[tier] -= sizes[tap]
    return plan


def cache_dtype(rt: Runtime) -> torch.dtype:
    """The teacher-feature cache's dtype: bf16 on a bf16 run (half the memory, disk and host-to-device
    traffic, the precision the online teacher has), else fp32. The trainer hands every tap to the
    distiller in fp32 whatever its cache's dtype (``train_step``)."""
    return torch.bfloat16 if rt.precision == "bf16" else torch.float32


def teacher_source(teacher: Teacher, distiller: Distiller, frames: FrameSet, rt: Runtime, log: Log) -> tuple[
        dict[str, torch.Tensor], Callable[[torch.Tensor], dict[str, torch.Tensor]] | None, str]:
    """Where each of the distiller's teacher taps comes from (``plan_taps``): the cache on the
    device, the cache pinned in host memory (batched by the prefetching feeder), or an online
    bf16 teacher for the taps that fit neither. Returns (cached features, the online teacher
    or None, a label for the run record)."""
    taps, reductions = distiller.teacher_taps(), distiller.teacher_reductions()
    if not taps:
        return {}, None, "none"
    dtype = cache_dtype(rt)
    # each tap's cache size, from the shapes the distiller was built with (no teacher forward)
    sample = {t: torch.zeros(1, *distiller.teacher_shapes[t]) for t in taps}
    sizes = {t: v.numel() * dtype.itemsize * len(frames) for t, v in reduce_taps(sample, taps, reductions).items()}
    cpu = rt.device.type == "cpu"  # one memory: no separate host tier
    plan = plan_taps(sizes, rt.free_bytes(), 0 if cpu else rt.host_free_bytes())
    cached = [t for t in taps if plan[t] != "online"]
    feats: dict[str, torch.Tensor] = {}
    if cached:
        with main_first(rt):
            feats = teacher.features("train", frames, cached, reductions, rt.device, log, dtype)
        if not cpu:
            feats = {t: v.to(rt.device) if plan[t] == "device" else v.pin_memory() for t, v in feats.items()}
    names = {"device": "host cache" if cpu else "device cache", "host": "pinned host cache", "online": "online"}
    tiers = {names[plan[t]] for t in taps}
    label = tiers.pop() if len(tiers) == 1 else "mixed: " + ", ".join(f"{t}={names[plan[t]]}" for t in taps)
    live = [t for t in taps if plan[t] == "online"]
    if not live:
        return feats, None, label
    gib = sum(sizes[t] for t in live) / 2**30
    log(f"teacher taps {', '.join(live)} ({gib:.1f} GiB as a cache) exceed the memory budget: computed online")
    return feats, online_teacher(teacher.model, live, reductions, rt), label


def online_teacher(model: torch.nn.Module, taps: list[str], reductions: Mapping[str, Callable],
                   rt: Runtime, truncate: bool = True) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``taps`` of the frozen teacher computed per batch from the student's input, bf16 on a GPU.
    ``truncate``: the teacher stops after the last segment these taps need (False: the whole
    forward, as torchdistill and RepDistiller run it)."""
    wanted = list(taps) if truncate else None

    @torch.no_grad()  # not inference_mode: the features enter the student's autograd graph
    def online(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.device.type != "cpu"):
            _, all_taps = model(x, wanted=wanted)
        return {t: v.float() for t, v in reduce_taps(all_taps, taps, reductions).items()}

    return online


def run(cfg: RunConfig, ws: Workspace, store: ResultsStore, rt: Runtime, spec: str = "",
        log: Log = print, progress: bool = True, datasets: DatasetCache | None = None,
        teachers: TeacherCache | None = None, loggers: Sequence[str] = ()) -> RunRecord:
    """Train ``cfg`` and store its record; a failure is recorded, then re-raised.
    ``datasets``, ``teachers``: caches shared by the runs of a grid (default: load afresh).
    ``progress``: a progress bar (a terminal); without one, a line per epoch goes to ``log``.
    ``loggers``: logger plugins asked for (``--log tensorboard``); every event carries them,
    the run's hash and its folder, and a logger not asked for does nothing."""
    previous = store.get(cfg.hash) if rt.is_main else None
    put = store.put if rt.is_main else (lambda _rec: None)  # one writer per run
    return train(cfg, ws, rt, put, previous, spec=spec, log=log, progress=progress, datasets=datasets,
                 teachers=teachers, loggers=loggers)


def train(cfg: RunConfig, ws: Workspace, rt: Runtime, put: Callable[[RunRecord], None],
          previous: RunRecord | None = None, spec: str = "", log: Log = print, progress: bool = True,
          datasets: DatasetCache | None = None, teachers: TeacherCache | None = None,
          loggers: Sequence[str] = ()) -> RunRecord:
    """``run`` without the store: the record goes to ``put`` when the run starts (after its
    set-up: a usage error leaves no record) and when it ends (done, failed or interrupted), so a
    process that must not write the store (a Ray worker, ``kdbench.grid_ray``) hands it to one
    that does. Checkpoints still go to ``ws``. ``previous``: the stored record of an earlier,
    unfinished attempt."""
    run_hash = cfg.hash
    rec = RunRecord(hash=run_hash, cell=cfg.cell, method=cfg.method, mode=cfg.mode, student=cfg.student, dataset=cfg.dataset,
                    test_dataset=cfg.test_dataset or cfg.dataset, profile=cfg.profile, seed=cfg.seed, spec=spec,
                    status="running", config=cfg.to_dict(), device=device_name(rt.device), versions=versions())
    try:  # what options and config files changed against the bare profile: `kdbench results` shows it
        changed = changed_settings(cfg)
    except ConfigError:  # a profile file that has since moved: nothing to compare with
        changed = {}
    if previous is not None:  # a resumed run keeps its creation time and accumulates wall time
        rec.created, rec.wall_time = previous.created, previous.wall_time
    context = {"hash": run_hash, "run_dir": str(ws.run_dir(run_hash)),
               "loggers": list(loggers) if rt.is_main else []}  # one process logs a torchrun run

    def on_epoch(row: dict[str, Any]) -> None:
        emit("epoch_end", rec.config, {**context, **row})
        if not progress:
            log(f"{cfg.method} {epoch_summary(row, cfg.train.epochs)}")

    t0 = time.perf_counter()
    clock = PhaseClock()

    def finish() -> None:
        rec.wall_time = (rec.wall_time or 0.0) + time.perf_counter() - t0
        put(rec)
        emit("run_end" if rec.status == "done" else "run_failed", rec.config,
             {**context, "status": rec.status, "metrics": rec.metrics or {}})

    # Set-up before the record: the distiller is built first (from the teacher's architecture,
    # not its weights), so a bad option fails in seconds, before the teacher trains, and a
    # usage error (a bad option or dataset) leaves no record behind.
    size = cfg.train.image_size
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, weights=cfg.student_weights)
    s_shapes = probe_shapes(student, size)
    teachers = teachers or TeacherCache()
    t_shapes = teachers.shapes(cfg)
    distiller = prepare_module(create_distiller(cfg.method, cfg.mode, s_shapes, t_shapes, **cfg.hp), rt)
    # none: the plain sum, on the trainer's single-backward path untouched
    resolver = create_resolver(cfg.resolver, **cfg.resolver_hp) if cfg.resolver != "none" else None
    student = prepare_module(student, rt)
    clock.lap("setup")
    datasets = datasets or DatasetCache()
    splits = datasets.load(cfg.dataset, size, cfg.data)
    placement = place_frames(splits, rt)
    # cross-dataset testing: the teacher (trained and tested below) stays the training dataset's
    cross_test = datasets.load(cfg.test_dataset, size, cfg.test_data)["test"] if cfg.test_dataset else None
    clock.lap("data")
    rec.history = {"process": this_process(), "changed": changed}  # a reader tells a live run from a killed one
    put(rec)
    emit("run_start", rec.config, context)
    try:
        teacher = teachers.get(cfg, splits, ws.root, rt, log=log, progress=progress)
        rec.teacher = teacher.hash
        if cross_test is not None:
            splits["test"] = cross_test
        clock.lap("teacher")
        features, online_teacher, source = teacher_source(teacher, distiller, splits["train"], rt, log)
        clock.lap("features")
        pretrained = " (pretrained)" if cfg.student_weights else ""
        via = f" + {cfg.resolver}" if resolver is not None else ""
        log(f"run {run_hash}: {cfg.method}/{cfg.mode}{via} -> {cfg.student}{pretrained} on {cfg.dataset} "
            f"({cfg.profile} profile, seed {cfg.seed}, {device_name(rt.device)}, teacher features: {source})")
        result = fit(student, splits["train"], splits["val"], splits["test"], cfg.train, cfg.seed,
                     distiller=distiller, features=features, online_teacher=online_teacher, rt=rt,
                     checkpoint=ws.run_dir(run_hash) / "state.pt", identity=run_hash, label=cfg.method,
                     progress=progress, resolver=resolver, warn=log, on_epoch=on_epoch)
        clock.lap("train")
        if rt.is_main:
            atomic_save({"student": cfg.student, "num_classes": 2, "image_size": size, "config": cfg.to_dict(),
                         "state_dict": result.best_state}, ws.run_dir(run_hash) / "student.pt")
            remove(ws.run_dir(run_hash) / "state.pt")  # resume state: no longer needed
        clock.lap("save")
        rec.metrics = {"test": result.test, "val": result.val, "best_epoch": result.best_epoch,
                       "teacher": teacher.metrics}
        runtime = {**rt.describe(), "frames": placement, "teacher_features": source, "phases": clock.seconds}
        rec.history = {**result.history, "runtime": runtime, "changed": changed}
        rec.status = "done"
        log(f"run {run_hash}: done in {sum(clock.seconds.values()):.1f} s ({clock.summary()})")
    except BaseException as exc:
        rec.status = "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        rec.error = f"{type(exc).__name__}: {exc}"
        rec.history = {"traceback": traceback.format_exc(limit=5), "changed": changed}
        try:
            finish()
        except StoreError as store_exc:  # the run's own failure is what the user must see
            log(f"warning: the failed run's record could not be stored ({store_exc})")
        raise
    finish()
    return rec
