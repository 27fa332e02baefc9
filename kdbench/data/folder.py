"""The generic ``folder`` dataset: anything that is not FF++ or Celeb-DF.

Accepted layouts (``root``):

- ``real/`` and ``fake/`` subfolders (any case) of images or videos; images
  directly inside are one "video" each, images in a sub-folder form one video
  (e.g. ``fake/clip7/*.png``); optionally under ``train/``, ``val/``, ``test/``;
- a CSV file (or a folder holding ``labels.csv``) with a header
  ``path,label[,video,split]``: paths relative to the CSV, label ``0``/``real``
  or ``1``/``fake`` (kdbench's convention: 1 = fake), rows sharing ``video``
  form one video.

Where no split is given, test and val are carved per video (seeded, stratified
by label). The builder reads a prepared directory (``kdbench prepare folder``),
or, for images that are already face crops, the raw layout directly.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from kdbench.data.frames import FAKE, REAL, SPLITS, FrameSplits
from kdbench.data.prepared import (
    INDEX,
    UNSPLIT,
    Discovery,
    SourceVideo,
    build_splits,
    dataset_options,
    decode_images,
    load_prepared,
    one_line,
    split_options,
)
from kdbench.data.registry import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
LABELS = {"0": REAL, "real": REAL, "1": FAKE, "fake": FAKE}
CSV_NAME = "labels.csv"


def parse_label(value: str, where: str) -> int:
    label = LABELS.get(value.strip().lower())
    if label is None:
        raise DatasetError(f"{where}: label {value!r} is not 0/real or 1/fake")
    return label


def _child(folder: Path, name: str) -> Path | None:
    return next((p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() == name), None)


def _scan_label_dir(base: Path, label_dir: Path, label: int, split: str) -> list[SourceVideo]:
    """Videos are units; images group by their parent folder (loose images: one unit each)."""
    units: list[SourceVideo] = []
    groups: dict[Path, list[Path]] = defaultdict(list)
    for path in sorted(p for p in label_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(base).with_suffix("").as_posix()
        if path.suffix.lower() in VIDEO_SUFFIXES:
            units.append(SourceVideo(rel, label, split, label_dir.name.lower(), (path,)))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if path.parent == label_dir:
                units.append(SourceVideo(rel, label, split, label_dir.name.lower(), (path,), "images"))
            else:
                groups[path.parent].append(path)
    for folder, paths in groups.items():
        units.append(SourceVideo(folder.relative_to(base).as_posix(), label, split, label_dir.name.lower(),
                                 tuple(paths), "images"))
    return units


def _discover_dirs(root: Path) -> Discovery:
    found = Discovery()
    split_roots = [(s, _child(root, s)) for s in SPLITS]
    roots = [(s, d) for s, d in split_roots if d is not None] or [(UNSPLIT, root)]
    for split, base in roots:
        for name, label in (("real", REAL), ("fake", FAKE)):
            label_dir = _child(base, name)
            if label_dir is not None:
                found.videos += _scan_label_dir(root, label_dir, label, split)
    if not found.videos:
        raise DatasetError(f"no images or videos under {root}: expected real/ and fake/ subfolders "
                           f"(optionally inside train/, val/, test/) or a {CSV_NAME}")
    return found


def _discover_csv(path: Path) -> Discovery:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"unreadable CSV {path}: {one_line(exc)}") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"{path}: expected a header path,label[,video,split] and at least one row")
    groups: dict[str, list[tuple[Path, int, str]]] = defaultdict(list)
    for n, row in enumerate(rows, 2):
        file = (path.parent / row["path"].strip()).resolve()
        video = (row.get("video") or "").strip() or Path(row["path"].strip()).with_suffix("").as_posix()
        split = (row.get("split") or "").strip().lower()
        if split not in (*SPLITS, UNSPLIT):
            raise DatasetError(f"{path}:{n}: split {split!r} is not train, val or test")
        groups[video].append((file, parse_label(row["label"], f"{path}:{n}"), split))
    found = Discovery()
    for video, members in groups.items():
        if len({(lab, s) for _, lab, s in members}) != 1:
            raise DatasetError(f"{path}: rows of video {video!r} disagree on label or split")
        paths = tuple(f for f, _, _ in members)
        is_video = len(paths) == 1 and paths[0].suffix.lower() in VIDEO_SUFFIXES
        label, split = members[0][1], members[0][2]
        found.videos.append(SourceVideo(video, label, split, "real" if label == REAL else "fake", paths,
                                        "video" if is_video else "images"))
    return found


def discover(root: Path) -> Discovery:
    """The units of a folder layout or CSV, with labels and (where given) splits."""
    if root.is_file() and root.suffix.lower() == ".csv":
        return _discover_csv(root)
    if not root.is_dir():
        raise DatasetError(f"folder dataset not found: {root}")
    if (root / CSV_NAME).is_file():
        return _discover_csv(root / CSV_NAME)
    return _discover_dirs(root)


def build(image_size: int, options: Mapping[str, Any]) -> FrameSplits:
    """A prepared directory, or a raw layout of face-crop images read as they are."""
    opts = dataset_options("folder", options)
    root = Path(opts["root"]).expanduser()
    if root.is_dir() and ((root / INDEX).is_file() or (root / "folder" / INDEX).is_file()):
        return load_prepared("folder", image_size, opts, {})
    found = discover(root)
    videos = [sv for sv in found.videos if sv.kind == "video"]
    if videos:
        raise DatasetError(f"{root} holds videos ({videos[0].paths[0].name}, ...): run `kdbench prepare folder "
                           f"--root {root} --out DIR` and use DIR")
    items: list[dict[str, Any]] = [{"path": str(p), "label": sv.label, "video": sv.video, "split": sv.split}
             for sv in found.videos for p in sv.paths]
    images = decode_images([Path(it["path"]) for it in items], image_size)
    return build_splits(items, images, **split_options(opts))
