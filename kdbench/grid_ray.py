"""The grid on Ray: every cell a Ray task, spread over the GPUs and nodes of a cluster.

``kdbench grid SPEC --executor ray`` runs the cells ``run_grid`` would run one after another
as Ray tasks with resource requests (a fraction of a GPU, a whole GPU, or CPUs only), so that
one command fills an 8-GPU node or a cluster. Ray is imported here only, when the executor is
chosen: it is an optional extra (``kdbench[ray]``).

What goes where (docs/cluster.md):

- **The workdir is shared storage.** Every node must see the workdir (NFS or similar) at the
  same path: the teacher is trained once, by a task of its own that the cells of its teacher
  key wait for, and written there with its feature files; each cell reads them from there and
  checkpoints every epoch there, so a cell whose worker (or node) is lost is retried by Ray
  (``max_retries``) and resumes from its last epoch on any node. Ray's object store would
  copy each feature file into every node's shared memory (at 128 px VID's raw maps alone are
  16 GiB) and lose it with the driver; the files are needed on disk for the checkpoints anyway.
- **Only the driver writes the results store.** A worker trains with ``runner.train`` and
  returns the run's record; the driver stores it as it arrives. The SQLite store is never
  written from two nodes.
- **Finished cells are skipped** (as in a local grid) and a stopped driver can be started
  again: the cells in flight resume from their checkpoints.

The records equal, hash for hash, those of a local grid of the same spec (the same code
trains them; on CPU with the same thread count the metrics are equal too).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from kdbench.config import ConfigError, digest
from kdbench.grid import Cell, GridReport

if TYPE_CHECKING:
    from kdbench.store import ResultsStore, RunRecord
    from kdbench.train.runner import Workspace

INSTALL = "pip install 'kdbench[ray]'"


@dataclass(frozen=True)
class RaySettings:
    """How the cells run on Ray. ``gpus_per_run`` None: one GPU per run when the cluster has
    GPUs, else none; a fraction shares a GPU between runs (0.25: four thin students on one)."""

    address: str | None = None  # None: RAY_ADDRESS if set, else a new local Ray
    gpus_per_run: float | None = None
    cpus_per_run: float = 1.0
    precision: str = "auto"
    compile: bool = False
    max_retries: int = 3  # a lost worker's cell is retried this often, resuming from its checkpoint

    def check(self) -> None:
        if self.gpus_per_run is not None and not 0 <= self.gpus_per_run <= 1:
            raise ConfigError(f"--gpus-per-run must be between 0 and 1 (a run trains on one GPU; "
                              f"0.25 shares one GPU between four runs), got {self.gpus_per_run:g}")
        if not self.cpus_per_run > 0:
            raise ConfigError(f"--cpus-per-run must be positive, got {self.cpus_per_run:g}")

    @property
    def threads(self) -> int:
        """torch threads of a run: its whole CPUs (at least one)."""
        return max(1, math.floor(self.cpus_per_run))


def import_ray() -> Any:
    """Ray, or a one-line usage error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


# Per worker process, as a local grid keeps them per process: a worker that runs several cells
# (CPU tasks; a GPU task gets a fresh process, Ray's default) reads each dataset and teacher once.
_caches: dict[str, Any] = {}


def _worker(settings: RaySettings, gpus: float) -> tuple[Any, Any, Any]:
    """The runtime (this task's GPU, or the CPU) and the process's dataset and teacher caches."""
    import torch

    from kdbench.data.registry import DatasetCache
    from kdbench.train.runtime import make_runtime
    from kdbench.train.teacher_cache import TeacherCache

    torch.set_num_threads(settings.threads)
    rt = make_runtime("cuda" if gpus > 0 else "cpu", settings.precision, settings.compile)
    datasets = _caches.setdefault("datasets", DatasetCache())
    teachers = _caches.setdefault("teachers", TeacherCache())
    return rt, datasets, teachers


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # Ray forwards a worker's stderr to the driver's


def teacher_task(cell: Cell, root: str, settings: RaySettings, gpus: float) -> str:
    """Train (or find cached in the shared workdir) the teacher of ``cell``; its hash."""
    rt, datasets, teachers = _worker(settings, gpus)
    cfg = cell.cfg
    splits = datasets.load(cfg.dataset, cfg.train.image_size, cfg.data)
    return teachers.get(cfg, splits, Path(root), rt, log=_log, progress=False).hash


def cell_task(cell: Cell, root: str, settings: RaySettings, gpus: float, previous: RunRecord | None,
              teacher: str) -> RunRecord:
    """Train one cell with checkpoints in the shared workdir and return its record (done, or
    failed with the error); never touches the results store. ``teacher``: the teacher task's
    result, passed so that Ray starts the cell after it."""
    from kdbench.train.runner import Workspace, train

    rt, datasets, teachers = _worker(settings, gpus)
    records: list[RunRecord] = []
    try:
        train(cell.cfg, Workspace(Path(root)), rt, records.append, previous, spec=cell.spec, log=_log,
              progress=False, datasets=datasets, teachers=teachers)
    except Exception:  # noqa: BLE001 - the record carries the error; the driver stores it
        if not records:
            raise
    return records[-1]


def teacher_group(cell: Cell) -> str:
    """Cells with the same teacher key share one teacher task."""
    from kdbench.train.teacher_cache import teacher_key

    return digest(teacher_key(cell.cfg))


def _gpus(ray: Any, settings: RaySettings) -> float:
    """GPUs per run, checked against the cluster: a request no node can meet would wait forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = settings.gpus_per_run
    if gpus is None:
        gpus = 1.0 if any(r.get("GPU", 0) >= 1 for r in nodes) else 0.0
    if not any(r.get("GPU", 0) >= gpus and r.get("CPU", 0) >= settings.cpus_per_run for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in nodes)
        raise ConfigError(f"no node of the Ray cluster offers {gpus:g} GPU and {settings.cpus_per_run:g} CPU "
                          f"per run (nodes: {have}); lower --gpus-per-run / --cpus-per-run")
    return gpus


def _error(exc: BaseException) -> str:
    """One line for a task that raised or whose worker was lost for good."""
    cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the task's own exception
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def run_grid_ray(cells: Sequence[Cell], ws: Workspace, store: ResultsStore, settings: RaySettings,
                 log: Callable[[str], None] = print) -> GridReport:
    """Run every cell not yet done as a Ray task and store the records as they come back.
    Joins the cluster at ``settings.address`` (or starts a local Ray, shut down at the end)
    unless this process is already connected. KeyboardInterrupt cancels the tasks: the cells
    in flight keep their last checkpoint and resume when the grid is run again."""
    settings.check()
    ray = import_ray()
    report = GridReport()
    stored = {r.hash: r for r in store.query()}
    todo: list[Cell] = []
    for cell in cells:
        rec = stored.get(cell.cfg.hash)
        (report.done_before if rec is not None and rec.status == "done" else todo).append(cell)
    if not todo:
        log(f"grid: all {len(cells)} cells already done; nothing to run")
        return report
    started = not ray.is_initialized()
    if started:
        ray.init(address=settings.address, log_to_driver=True)
    refs: dict[Any, Cell] = {}
    teachers: dict[str, Any] = {}
    try:
        gpus = _gpus(ray, settings)
        total = ray.cluster_resources()
        log(f"grid: {len(todo)} of {len(cells)} cells to run ({len(report.done_before)} already done) on Ray "
            f"({total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU; {gpus:g} GPU and "
            f"{settings.cpus_per_run:g} CPU per run)")
        # A GPU task gets a fresh process (Ray's default for GPU functions, max_calls=1: CUDA keeps
        # the device a process first used); CPU workers are reused and keep their caches.
        # 0: no limit. Lost workers are retried; a task's own exception is not (it is recorded).
        task = ray.remote(num_cpus=settings.cpus_per_run, num_gpus=gpus, max_calls=1 if gpus > 0 else 0,
                          max_retries=settings.max_retries, retry_exceptions=False)
        run_teacher, run_cell = task(teacher_task), task(cell_task)
        root = str(ws.root.resolve())
        for cell in todo:
            group = teacher_group(cell)
            if group not in teachers:
                teachers[group] = run_teacher.options(name=f"teacher-{group}").remote(
                    cell, root, settings, gpus)
            c = cell.cfg
            ref = run_cell.options(name=f"{c.method}-{c.mode}-{c.student}-{c.hash}").remote(
                cell, root, settings, gpus, stored.get(c.hash), teachers[group])
            refs[ref] = cell
        pending, n = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            cell, n = refs.pop(ready[0]), n + 1
            c = cell.cfg
            what = f"{c.method}/{c.mode} {c.student} {c.dataset} seed {c.seed} {cell.variant or ''}".rstrip()
            try:
                rec = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # set-up or teacher failed, or the worker was lost for good:
                report.failed.append((cell, _error(exc)))  # no record, as a local run's set-up error leaves none
                log(f"[{n}/{len(todo)}] {what}: failed: {_error(exc)}")
                continue
            store.put(rec)
            report.records[rec.hash] = rec
            if rec.status == "done":
                report.ran.append(cell)
                log(f"[{n}/{len(todo)}] {what}: done ({rec.hash})")
            else:
                report.failed.append((cell, rec.error or rec.status))
                log(f"[{n}/{len(todo)}] {what}: failed: {rec.error}")
    except KeyboardInterrupt:
        for ref in [*refs, *teachers.values()]:
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()
    return report
