"""Celeb-DF (v2, also v1): the layout, the official test list, and the ``celebdf`` builder.

Layout::

    <root>/Celeb-real/id0_0000.mp4          real
    <root>/YouTube-real/00170.mp4           real   ("Youtube-real" accepted)
    <root>/Celeb-synthesis/id0_id1_0000.mp4 fake
    <root>/List_of_testing_videos.txt       "<label> <subset>/<file>.mp4", label 1 = REAL

Each subset may have an extra ``videos/`` level, or hold DeepfakeBench-style
extracted frames (``frames/<stem>/*.png``). Test = the listed videos; every
other video is ``trainval`` and val is carved from it at load time (seeded,
stratified by label), so no test video can reach train or val -- the leak
of DeepfakeBench's Celeb-DF split, which puts all videos into train.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from kdbench.data.frames import FAKE, REAL, FrameSplits
from kdbench.data.prepared import TRAINVAL, Discovery, SourceVideo, load_prepared
from kdbench.data.registry import DatasetError

SUBSETS = {"Celeb-real": REAL, "YouTube-real": REAL, "Celeb-synthesis": FAKE}
TEST_LIST = "List_of_testing_videos.txt"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def canonical_subset(name: str) -> str | None:
    """``Youtube-real`` -> ``YouTube-real``; None for anything that is not a subset."""
    return {s.lower(): s for s in SUBSETS}.get(name.lower())


def read_test_list(path: Path) -> dict[str, int]:
    """{video id: kdbench label (0 real, 1 fake)}; the file's 1 means REAL, so it is flipped here."""
    if not path.is_file():
        raise DatasetError(f"Celeb-DF test list not found: {path} (it ships with the dataset)")
    tests: dict[str, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        rel = Path(parts[-1].strip().replace("\\", "/"))
        subset = canonical_subset(rel.parts[0]) if len(rel.parts) >= 2 else None
        if len(parts) != 2 or parts[0] not in ("0", "1") or subset is None:
            raise DatasetError(f"{path}:{n}: expected '<1 real|0 fake> <subset>/<file>', got {line.strip()!r}")
        tests[f"{subset}/{rel.stem}"] = REAL if parts[0] == "1" else FAKE
    return tests


def _subset_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        subset = canonical_subset(child.name)
        if subset and child.is_dir():
            if subset in found:
                raise DatasetError(f"Celeb-DF subset {subset} appears twice: {found[subset]} and {child}")
            found[subset] = child
    return found


def _units(folder: Path) -> list[tuple[str, tuple[Path, ...], str]]:
    """(stem, paths, kind) per video in a subset folder, any accepted variant."""
    base = folder / "videos" if (folder / "videos").is_dir() else folder
    units: list[tuple[str, tuple[Path, ...], str]] = [
        (p.stem, (p,), "video") for p in sorted(base.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]
    frames_dir = folder / "frames"
    if not units and frames_dir.is_dir():
        for d in sorted(p for p in frames_dir.iterdir() if p.is_dir()):
            imgs = tuple(sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
            if imgs:
                units.append((d.name, imgs, "images"))
    return units


def discover(root: Path) -> Discovery:
    """All Celeb-DF videos: listed ones are test, the rest trainval; absent listed ones are reported."""
    subsets = _subset_dirs(root)
    if not subsets:
        raise DatasetError(f"not a Celeb-DF root: {root} has none of {', '.join(SUBSETS)}")
    tests = read_test_list(root / TEST_LIST)
    found = Discovery(meta={"subsets": sorted(subsets)})
    seen: set[str] = set()
    for subset, folder in subsets.items():
        for stem, paths, kind in _units(folder):
            vid = f"{subset}/{stem}"
            label = SUBSETS[subset]
            if vid in tests and tests[vid] != label:
                raise DatasetError(f"{root / TEST_LIST} labels {vid} {'real' if tests[vid] == REAL else 'fake'}, "
                                   f"but it sits in {subset} (the file's 1 means REAL)")
            seen.add(vid)
            found.videos.append(SourceVideo(vid, label, "test" if vid in tests else TRAINVAL, subset, paths, kind))
    for vid in sorted(set(tests) - seen):
        found.skipped.append({"video": vid, "path": str(root / vid), "reason": f"listed in {TEST_LIST} but not found"})
    return found


def build(image_size: int, options: Mapping[str, Any]) -> FrameSplits:
    """The ``celebdf`` builder: test from the official list, val carved from the rest."""
    return load_prepared("celebdf", image_size, options, {"dataset": "celebdf"})
