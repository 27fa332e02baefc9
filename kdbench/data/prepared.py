"""The prepared-directory format: what ``kdbench prepare`` writes and the builders read.

A prepared directory holds face crops as PNG under ``frames/<video id>/`` and one
``index.json`` (its parameters, one item per frame: path, label, video, split,
source; and the ``skipped`` videos with their reason). Splits are decided by
the source's protocol when it has one (FF++'s official JSONs, Celeb-DF's test
list); what is left (``trainval`` or unsplit) is carved here, per video, seeded
and stratified by label, so frames of one video never straddle two splits.
Decoded frames are cached as one uint8 ``.npy`` per image size next to the
index, so a second load is a memory map instead of 100 k PNG decodes.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from kdbench.config import file_sha256
from kdbench.data.frames import SPLITS, FrameSet, FrameSplits
from kdbench.data.registry import DatasetError
from kdbench.io import CorruptFileError, atomic_write, check_digest, remove, write_digest

INDEX = "index.json"
FORMAT = "kdbench-prepared/1"
RESAMPLE = Image.Resampling.BICUBIC  # one resampling filter everywhere (prepare, load, predict)
TRAINVAL = "trainval"  # not test; val is carved from it at load time
UNSPLIT = ""  # no protocol split: test and val are both carved
KNOWN_OPTIONS = {"root", "methods", "val_fraction", "test_fraction", "seed"}


@dataclass(frozen=True)
class SourceVideo:
    """One unit to prepare: a video file, or a group of images that form one "video"."""

    video: str  # unique id across the whole dataset, e.g. "Deepfakes/000_003"
    label: int  # 0 real, 1 fake
    split: str  # train | val | test | trainval | "" (unsplit)
    source: str  # method or subset, e.g. "youtube", "Deepfakes", "Celeb-real"
    paths: tuple[Path, ...]
    kind: str = "video"  # video | images


@dataclass
class Discovery:
    """What a layout reader found: the units to prepare and what it had to leave out."""

    videos: list[SourceVideo] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"compression": "c40"}


def one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


# ----------------------------------------------------------------------------- splits

def _count(fraction: float, n: int) -> int:
    k = int(round(fraction * n))
    if fraction > 0 and k == 0 and n >= 2:
        k = 1  # a tiny class still gets one video, and keeps at least one for train
    return min(k, max(n - 1, 0))


def carve_splits(videos: Mapping[str, tuple[int, str]], val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0) -> dict[str, str]:
    """Final split per video id: protocol splits kept, ``trainval``/unsplit carved per label.

    Deterministic: depends on the sorted ids, the label and the seed, not on file order.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise DatasetError(f"{name} must be in [0, 1), got {value}")
    out = {vid: split for vid, (_, split) in videos.items() if split in SPLITS}
    for pool in (UNSPLIT, TRAINVAL):
        for label in sorted({lab for lab, split in videos.values() if split == pool}):
            ids = sorted(vid for vid, (lab, split) in videos.items() if split == pool and lab == label)
            order = [ids[i] for i in np.random.default_rng([seed, label, len(pool)]).permutation(len(ids))]
            n_test = _count(test_fraction, len(order)) if pool == UNSPLIT else 0
            n_val = _count(val_fraction, len(order) - n_test)
            for i, vid in enumerate(order):
                out[vid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    unknown = sorted({split for _, split in videos.values() if split not in (*SPLITS, TRAINVAL, UNSPLIT)})
    if unknown:
        raise DatasetError(f"unknown split name(s) {', '.join(unknown)}; use train, val or test")
    return out


# ----------------------------------------------------------------------------- the index

def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write: an interrupted prepare never leaves half an index or marker."""
    text = json.dumps(obj, indent=1).encode()
    atomic_write(path, lambda fh: fh.write(text))


def find_index(root: Path, name: str) -> Path:
    """``root/index.json``, or ``root/<dataset name>/index.json`` (one data root for many datasets)."""
    if not root.is_dir():
        raise DatasetError(f"data root not found: {root} (prepare it with `kdbench prepare`)")
    for candidate in (root / name / INDEX, root / INDEX):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"no {INDEX} in {root} or {root / name}: not a prepared directory "
                       f"(run `kdbench prepare ... --out DIR`; it writes the index when it finishes)")


def read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"unreadable index {path}: {one_line(exc)}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("items"), list):
        raise DatasetError(f"{path} is not a kdbench prepared index (format {FORMAT})")
    return index


def dataset_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate option names (typos are errors) and require ``root``."""
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise DatasetError(f"unknown data option {', '.join(unknown)} for {name!r}; valid: "
                           f"{', '.join(sorted(KNOWN_OPTIONS))}")
    if not options.get("root"):
        raise DatasetError(f"dataset {name!r} needs a prepared directory: set the data option root=DIR "
                           f"(`--data-root DIR`)")
    return dict(options)


def split_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """``val_fraction``, ``test_fraction``, ``seed`` typed (CLI values arrive as strings)."""
    out: dict[str, Any] = {}
    for key, typ, default in (("val_fraction", float, 0.1), ("test_fraction", float, 0.2), ("seed", int, 0)):
        try:
            out[key] = typ(opts.get(key, default))
        except (TypeError, ValueError):
            raise DatasetError(f"data option {key}={opts.get(key)!r} is not a valid {typ.__name__}") from None
    return out


def as_list(value: Any) -> list[str] | None:
    """``"A,B"`` (from ``--data methods=A,B``) or a list -> list; None/empty -> None."""
    if value is None or value == "" or value == []:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


# ----------------------------------------------------------------------------- decoding

def read_image(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 (3, size, size): centre square, resized. Corrupt -> one-line error."""
    try:
        with Image.open(path) as opened:
            img = opened.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"missing image file {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"corrupt image file {path}: {one_line(exc)}") from None
    w, h = img.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_images(paths: Sequence[Path], size: int, out: np.ndarray | None = None) -> np.ndarray:
    """All images as one uint8 (N, 3, size, size) array (``out``, e.g. a memory map, when given).

    PIL decodes in parallel threads; the first corrupt file stops it with its name.
    """
    if out is None:
        out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = read_image(paths[i], size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(paths))))
    return out


def cached_images(root: Path, paths: Sequence[str], size: int, key: str,
                  log: Callable[[str], None] | None = None) -> np.ndarray:
    """Decoded frames, memory-mapped from ``cache/frames-<size>-<key>.npy``.

    The first load decodes straight into that file (FF++ at 299 px is ~43 GB:
    it is never held twice in memory). ``key`` identifies the index content, so
    a re-prepared directory gets a fresh cache. A read-only directory goes without.
    """
    cache = root / "cache" / f"frames-{size}-{key}.npy"
    shape = (len(paths), 3, size, size)
    if cache.is_file():
        try:
            check_digest(cache)  # read once more from the page cache: seconds, against a full decode
            arr = np.load(cache, mmap_mode="r")
            if arr.shape == shape and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError, CorruptFileError):
            pass
        if log:
            log(f"data: cache {cache} unreadable or not matching its digest; decoding again")
    files = [root / p for p in paths]
    tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}.npy")
    try:
        cache.parent.mkdir(exist_ok=True)
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as exc:
        if log:
            log(f"data: cannot write a frame cache in {root} ({one_line(exc)}); decoding into memory")
        return decode_images(files, size)
    try:
        decode_images(files, size, out=arr)
        arr.flush()
        del arr
        for old in cache.parent.glob(f"frames-{size}-*.npy"):
            remove(old)
        write_digest(cache, file_sha256(tmp))
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(cache, mmap_mode="r")


# ----------------------------------------------------------------------------- items -> FrameSplits

def build_splits(items: Sequence[Mapping[str, Any]], images: np.ndarray, rows: Sequence[int] | None = None, *,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> FrameSplits:
    """Group items into train/val/test FrameSets by their video's split.

    Item ``i`` is ``images[rows[i]]`` (``images[i]`` without ``rows``); only the
    selected rows are copied out of a memory-mapped cache.
    """
    rows = list(range(len(items))) if rows is None else list(rows)
    videos: dict[str, tuple[int, str]] = {}
    for it in items:
        prev = videos.setdefault(it["video"], (int(it["label"]), it.get("split") or UNSPLIT))
        if prev != (int(it["label"]), it.get("split") or UNSPLIT):
            raise DatasetError(f"video {it['video']!r} has frames with different labels or splits")
    split_of = carve_splits(videos, val_fraction, test_fraction, seed)
    out: FrameSplits = {}
    for split in SPLITS:
        mine = [i for i, it in enumerate(items) if split_of[it["video"]] == split]
        out[split] = FrameSet(torch.from_numpy(np.ascontiguousarray(images[[rows[i] for i in mine]])),
                              torch.tensor([int(items[i]["label"]) for i in mine], dtype=torch.int64),
                              [items[i]["video"] for i in mine])
    return out


def load_prepared(name: str, image_size: int, options: Mapping[str, Any], expect: Mapping[str, Any],
                  sources: Collection[str] | None = None,
                  log: Callable[[str], None] | None = None) -> FrameSplits:
    """A prepared directory as FrameSplits, checked against what the dataset name promises.

    ``sources`` keeps only those sources (e.g. FF++ methods); each must be present.
    """
    opts = dataset_options(name, options)
    split_kw = split_options(opts)
    index_path = find_index(Path(opts["root"]).expanduser(), name)
    index = read_index(index_path)
    for key, want in expect.items():
        if index.get(key) != want:
            raise DatasetError(f"{index_path} holds {key}={index.get(key)!r}, but dataset {name!r} needs "
                               f"{key}={want!r}")
    if not index["items"]:
        raise DatasetError(f"{index_path} lists no frames (every video was skipped? see its 'skipped' list)")
    if sources is not None:
        present = {it["source"] for it in index["items"]}
        missing = sorted(set(sources) - present)
        if missing:
            raise DatasetError(f"{index_path} has no frames of {', '.join(missing)} (it has: "
                               f"{', '.join(sorted(present))}); prepare them or change the methods option")
    key = hashlib.sha256(index_path.read_bytes()).hexdigest()[:12]  # the cache follows the index content
    images = cached_images(index_path.parent, [it["path"] for it in index["items"]], image_size, key, log)
    rows = [i for i, it in enumerate(index["items"]) if sources is None or it["source"] in sources]
    items = [index["items"][i] for i in rows]
    return build_splits(items, images, rows, **split_kw)


def index_items(videos: Iterable[SourceVideo], frames_of: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Index rows: one per frame, the video's label/split/source from the current discovery."""
    rows = []
    for sv in videos:
        for fr in frames_of.get(sv.video, []):
            rows.append({"path": fr["path"], "label": sv.label, "video": sv.video, "split": sv.split,
                         "source": sv.source, "frame": fr["frame"], "box": fr.get("box"),
                         "detected": fr.get("detected", True)})
    return rows
