"""The shared, cached dual-branch teacher.

The teacher is trained once per (dataset config, teacher config, teacher
seed) and its tapped features are cached per split, tap and reduction; both
are keyed by a content hash, verified on load, and rebuilt when stale or
corrupt (never silently used). Every distiller and student reuses them.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from kdbench.config import RunConfig, TrainConfig, digest
from kdbench.data.frames import FrameSet, FrameSplits, normalize
from kdbench.distiller import reduce_taps
from kdbench.io import CorruptFileError, atomic_save, atomic_write, load_verified, locked, remove, safe_load, verify
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher
from kdbench.train.runtime import Runtime, main_first, prepare_module

TEACHER_FORMAT = 1
Log = Callable[[str], None]


class CacheError(RuntimeError):
    """A cache entry is stale, corrupt or from an incompatible version."""


def teacher_key(cfg: RunConfig) -> dict[str, Any]:
    """Everything that determines the teacher's weights and features."""
    teacher = asdict(cfg.teacher)
    teacher.pop("weights")  # the file's content (weights_sha256) matters, not where it lies
    return {"format": TEACHER_FORMAT, "dataset": cfg.dataset, "data": cfg.identity()["data"],
            "image_size": cfg.train.image_size, "teacher": teacher}


def reduction_name(fn: Callable[[Tensor], Tensor] | None) -> str:
    """What a cached tap's reduction is called in its cache key: ``module.qualname`` of a
    module-level function, with the bound arguments of a ``functools.partial`` of one
    (``kdbench_plugins.tokd.align(hw=(6, 6))``), so two parameterisations never share a file."""
    if fn is None:
        return "raw"
    if isinstance(fn, functools.partial):
        bound = [*map(repr, fn.args), *(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))]
        return f"{reduction_name(fn.func)}({', '.join(bound)})"
    return f"{fn.__module__}.{fn.__qualname__}"


@dataclass
class Teacher:
    """A trained, frozen teacher and where its cache lives."""

    model: DualBranchTeacher
    hash: str
    root: Path
    metrics: dict[str, Any]
    cached: bool  # True when loaded from the cache rather than trained now
    loaded: dict[Path, Tensor] = field(default_factory=dict, repr=False)  # feature files read (or written) so far

    @torch.inference_mode()
    def _compute(self, frames: FrameSet, taps: list[str], reductions: Mapping[str, Callable], device: torch.device,
                 dtype: torch.dtype = torch.float32, batch_size: int = 128) -> dict[str, Tensor]:
        """The taps for every frame, stored as ``dtype``; a bf16 cache is computed under bf16 autocast
        on a GPU, as the online teacher computes its taps."""
        out: dict[str, list[Tensor]] = {t: [] for t in taps}
        bf16 = dtype == torch.bfloat16 and device.type == "cuda"
        for start in range(0, len(frames), batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                _, all_taps = self.model(normalize(frames.images[start:start + batch_size].to(device)))
            for t, value in reduce_taps(all_taps, taps, reductions).items():
                out[t].append(value.to(dtype).cpu())
        return {t: torch.cat(v) for t, v in out.items()}

    def features(self, split: str, frames: FrameSet, taps: list[str], reductions: Mapping[str, Callable],
                 device: torch.device, log: Log = print, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """Cached teacher taps for every frame of ``split`` (computed once, then reused; each
        file is read and verified once per ``Teacher`` object, which a grid keeps for all its runs).
        ``dtype``: float32, or bfloat16 for bf16 runs (a separate cache at half the size)."""
        result: dict[str, Tensor] = {}
        missing = self._read(split, frames, taps, reductions, dtype, result, log)
        if missing:
            with locked(self.root):
                # another process (a grid shard) may have written them while this one waited
                missing = self._read(split, frames, missing, reductions, dtype, result, lambda m: None)
                computed = self._compute(frames, missing, reductions, device, dtype) if missing else {}
                for tap, value in computed.items():
                    red = reductions.get(tap)
                    path = self._feature_path(split, tap, red, dtype)
                    atomic_save({"format": TEACHER_FORMAT, "teacher": self.hash, "split": split, "tap": tap,
                                  "reduction": reduction_name(red), "n": len(frames), "values": value}, path)
                    self.loaded[path] = value
                result.update(computed)
        return result

    def _read(self, split: str, frames: FrameSet, taps: list[str], reductions: Mapping[str, Callable],
              dtype: torch.dtype, into: dict[str, Tensor], log: Log) -> list[str]:
        """Read the cached ``taps`` into ``into``; return those not cached (or stale, or corrupt)."""
        missing = []
        for tap in taps:
            path = self._feature_path(split, tap, reductions.get(tap), dtype)
            if path in self.loaded:
                into[tap] = self.loaded[path]
                continue
            try:
                into[tap] = self.loaded[path] = self._load_feature(path, split, tap, reductions.get(tap), len(frames),
                                                                   dtype)
            except FileNotFoundError:
                missing.append(tap)
            except CacheError as exc:
                log(f"teacher {self.hash}: {exc}; rebuilding")
                missing.append(tap)
        return missing

    def _feature_path(self, split: str, tap: str, reduction: Callable | None, dtype: torch.dtype) -> Path:
        suffix = "" if dtype == torch.float32 else f"-{str(dtype).removeprefix('torch.')}"
        return self.root / "features" / f"{split}-{tap}-{digest(reduction_name(reduction))[:8]}{suffix}.pt"

    def _load_feature(self, path: Path, split: str, tap: str, reduction: Callable | None, n: int,
                      dtype: torch.dtype) -> Tensor:
        if not path.is_file():
            raise FileNotFoundError(path)
        try:
            entry = load_verified(path)
        except CorruptFileError:
            raise CacheError(f"corrupt feature file {path.name} (does not match its digest)") from None
        except Exception as exc:  # noqa: BLE001
            raise CacheError(f"corrupt feature file {path.name} ({type(exc).__name__})") from None
        expected = {"format": TEACHER_FORMAT, "teacher": self.hash, "split": split, "tap": tap,
                    "reduction": reduction_name(reduction), "n": n}
        if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in expected.items()):
            raise CacheError(f"stale feature file {path.name}")
        values = entry["values"]
        if not isinstance(values, Tensor) or values.shape[0] != n or values.dtype != dtype \
                or not torch.isfinite(values).all():
            raise CacheError(f"corrupt feature file {path.name} (bad values)")
        return values


def build_teacher(cfg: RunConfig, load_weights: bool = True) -> DualBranchTeacher:
    t = cfg.teacher
    model = DualBranchTeacher(t.backbone, cfg.train.image_size, t.proj_channels, freq_ratio=t.freq_ratio)
    if t.weights and load_weights:
        model.load_branch_weights(t.weights)
    return model


def _load_teacher(root: Path, key_hash: str, cfg: RunConfig) -> tuple[DualBranchTeacher, dict[str, Any]]:
    path = root / "teacher.pt"
    manifest = root / "manifest.json"
    if not path.is_file() or not manifest.is_file():
        raise FileNotFoundError(path)
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        raise CacheError("unreadable manifest") from None
    if meta.get("format") != TEACHER_FORMAT or meta.get("hash") != key_hash:
        raise CacheError(f"stale entry (format {meta.get('format')}, key {meta.get('hash')})")
    try:
        verify(path, [meta.get("sha256")])
    except CorruptFileError:
        raise CacheError("checkpoint does not match its recorded checksum (corrupt or modified)") from None
    try:
        state = safe_load(path)
    except Exception as exc:  # noqa: BLE001
        raise CacheError(f"unreadable checkpoint ({type(exc).__name__})") from None
    model = DualBranchTeacher(cfg.teacher.backbone, cfg.train.image_size, cfg.teacher.proj_channels,
                              freq_ratio=cfg.teacher.freq_ratio)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise CacheError("checkpoint does not fit the configured teacher") from None
    return model, meta.get("metrics", {})


class TeacherCache:
    """Teachers kept in memory for the runs of a grid, each with the feature files it has read:
    a teacher checkpoint and a feature file are read and verified once per process, not once
    per run (at 128 px VID's eight raw maps alone are 16 GiB)."""

    def __init__(self) -> None:
        self._teachers: dict[tuple[Path, str], Teacher] = {}
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}

    def shapes(self, cfg: RunConfig) -> dict[str, tuple[int, ...]]:
        """The teacher's tap shapes, from its architecture alone (no weights, no training), probed once
        per architecture: building two Xceptions costs about half a second on a CPU, every run."""
        arch = {"backbone": cfg.teacher.backbone, "proj_channels": cfg.teacher.proj_channels,
                "freq_ratio": cfg.teacher.freq_ratio, "image_size": cfg.train.image_size}
        key = digest(arch)
        if key not in self._shapes:
            with torch.random.fork_rng(devices=[]):  # building must not move the run's seeded RNG
                self._shapes[key] = probe_shapes(build_teacher(cfg, load_weights=False), cfg.train.image_size)
        return self._shapes[key]

    def get(self, cfg: RunConfig, splits: FrameSplits, workdir: Path, rt: Runtime, log: Log = print,
            progress: bool = True) -> Teacher:
        key = (Path(workdir).resolve(), digest(teacher_key(cfg)))
        if key not in self._teachers:
            self._teachers[key] = ensure_teacher(cfg, splits, workdir, rt, log=log, progress=progress)
        else:
            log(f"teacher: {key[1]} (in memory)")
        return self._teachers[key]


def ensure_teacher(cfg: RunConfig, splits: FrameSplits, workdir: Path, rt: Runtime,
                   log: Log = print, progress: bool = True) -> Teacher:
    """The cached teacher for ``cfg``, trained now if there is none (or it is stale/corrupt).
    Under torchrun, rank 0 trains it alone while the other processes wait, then all load it."""
    from kdbench.train.trainer import epoch_summary, fit

    key_hash = digest(teacher_key(cfg))
    root = workdir / "teachers" / key_hash
    single = replace(rt, rank=0, world=1)
    with main_first(rt), locked(root):
        try:
            model, metrics = _load_teacher(root, key_hash, cfg)
            log(f"teacher: cached {key_hash} (val acc {metrics.get('val', {}).get('acc', float('nan')):.2f}, "
                f"test acc {metrics.get('test', {}).get('acc', float('nan')):.2f})")
            cached = True
        except FileNotFoundError:
            model, metrics, cached = None, {}, False
        except CacheError as exc:
            log(f"teacher {key_hash}: {exc}; rebuilding")
            for stale in (root / "features").glob("*.pt"):
                remove(stale)
            model, metrics, cached = None, {}, False
        if model is None:
            log(f"teacher: training {key_hash} ({cfg.teacher.backbone} branches, {cfg.teacher.epochs} epochs)")
            t, t0 = cfg.teacher, time.perf_counter()
            torch.manual_seed(t.seed)
            model = prepare_module(build_teacher(cfg), single)
            tcfg = TrainConfig(image_size=cfg.train.image_size, epochs=t.epochs, batch_size=t.batch_size,
                               eval_batch_size=cfg.train.eval_batch_size, lr=t.lr, lr_step=t.lr_step,
                               lr_gamma=t.lr_gamma, log_every=0)
            res = fit(model, splits["train"], splits["val"], splits["test"], tcfg, seed=t.seed, rt=single,
                      label="teacher", progress=progress,
                      on_epoch=None if progress else lambda row: log(f"teacher {epoch_summary(row, t.epochs)}"))
            metrics = {"best_epoch": res.best_epoch, "val": res.val, "test": res.test,
                       "params": sum(p.numel() for p in model.parameters()),
                       "train_s": round(time.perf_counter() - t0, 1)}
            sha = atomic_save(res.best_state, root / "teacher.pt", digest_file=False)  # the manifest keeps it
            manifest = {"format": TEACHER_FORMAT, "hash": key_hash, "key": teacher_key(cfg),
                        "sha256": sha, "metrics": metrics}
            text = json.dumps(manifest, indent=2, default=str).encode()
            atomic_write(root / "manifest.json", lambda fh: fh.write(text))
            log(f"teacher: trained {key_hash} in {metrics['train_s']:.0f} s (val acc {res.val['acc']:.2f}, "
                f"test acc {res.test['acc']:.2f})")
    # channels_last on a GPU; never SyncBN (inference only)
    model = prepare_module(model, single).eval().requires_grad_(False)
    return Teacher(model=model, hash=key_hash, root=root, metrics=metrics, cached=cached)
