"""FaceForensics++: the download layout, the official split files, and the ``ffpp-*`` builders.

Layout (as ``download-FaceForensics.py`` writes it)::

    <root>/original_sequences/youtube/<comp>/videos/000.mp4             real
    <root>/manipulated_sequences/<Method>/<comp>/videos/000_003.mp4     fake

``<comp>`` is ``c40``, ``c23`` or ``raw`` (older releases: ``c0``); the ``videos/``
level may be missing. Splits come only from the official ``train/val/test.json``
(lists of id pairs ``[a, b]``; the fakes ``a_b`` and ``b_a`` belong to the
pair's split), never from a random split. Video ids carry the method
(``Deepfakes/000_003``, ``youtube/000``) so that the same-named fakes of four
methods stay four videos in video-level AUC.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from kdbench.data.frames import FAKE, REAL, FrameSplits
from kdbench.data.prepared import Discovery, SourceVideo, as_list, load_prepared, one_line
from kdbench.data.registry import DatasetError

METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")  # the paper's four (FF++ "all")
ALL_METHODS = METHODS + ("FaceShifter",)
REAL_SOURCE = "youtube"
COMPRESSIONS = {"c40": ("c40",), "c23": ("c23",), "raw": ("raw", "c0"), "c0": ("raw", "c0")}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


def canonical_compression(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise DatasetError(f"unknown FF++ compression {compression!r}; choose one of: c40, c23, raw (or c0)")
    return "raw" if compression == "c0" else compression


def parse_methods(methods: Any) -> tuple[str, ...]:
    chosen = as_list(methods)
    if chosen is None:
        return METHODS
    by_lower = {m.lower(): m for m in ALL_METHODS}
    unknown = [m for m in chosen if m.lower() not in by_lower]
    if unknown:
        raise DatasetError(f"unknown FF++ method {', '.join(unknown)}; choose from: {', '.join(ALL_METHODS)}")
    return tuple(dict.fromkeys(by_lower[m.lower()] for m in chosen))


def read_splits(split_dir: Path) -> dict[str, str]:
    """Official split files -> {original id: split}. A missing or malformed file is one line."""
    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        path = split_dir / f"{split}.json"
        if not path.is_file():
            raise DatasetError(f"FF++ split file not found: {path} (pass --splits DIR holding train.json, val.json, "
                               f"test.json from the FaceForensics repository's dataset/splits/)")
        try:
            pairs = json.loads(path.read_text())
            ids = [str(v) for pair in pairs for v in pair]
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
                raise ValueError("expected a list of [id, id] pairs")
        except (OSError, ValueError, TypeError) as exc:
            raise DatasetError(f"malformed FF++ split file {path}: {one_line(exc)}") from None
        for vid in ids:
            if split_of.setdefault(vid, split) != split:
                raise DatasetError(f"FF++ split files disagree: video {vid} is in both {split_of[vid]} and {split}")
    return split_of


def videos_dir(base: Path, compression: str) -> Path | None:
    """``<base>/<comp>/videos`` or ``<base>/<comp>`` (some mirrors drop ``videos/``)."""
    for comp in COMPRESSIONS[compression]:
        for candidate in (base / comp / "videos", base / comp):
            if candidate.is_dir() and any(p.suffix.lower() in VIDEO_SUFFIXES for p in candidate.iterdir()):
                return candidate
    return None


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def discover(root: Path, compression: str = "c40", methods: Any = None, splits: Path | None = None) -> Discovery:
    """Every FF++ video of the chosen compression and methods, with its label and official split."""
    comp = canonical_compression(compression)
    chosen = parse_methods(methods)
    if not (root / "original_sequences" / REAL_SOURCE).is_dir():
        raise DatasetError(f"not an FF++ root: {root} has no original_sequences/{REAL_SOURCE} "
                           f"(give the folder download-FaceForensics.py wrote)")
    split_of = read_splits(Path(splits) if splits else root / "splits")
    found = Discovery(meta={"compression": comp, "methods": list(chosen)})
    sources = [(REAL_SOURCE, root / "original_sequences" / REAL_SOURCE, REAL)]
    sources += [(m, root / "manipulated_sequences" / m, FAKE) for m in chosen]
    outside = 0
    for source, base, label in sources:
        folder = videos_dir(base, comp)
        if folder is None:
            raise DatasetError(f"no {comp} videos for FF++ {source}: looked in {base / comp}/videos "
                               f"(download it, or choose the methods you have with --methods)")
        for path in _videos(folder):
            target = path.stem.split("_")[0]  # a fake a_b belongs to its pair's split
            split = split_of.get(path.stem if label == REAL else target)
            if split is None:
                outside += 1
                continue
            found.videos.append(SourceVideo(f"{source}/{path.stem}", label, split, source, (path,)))
    found.meta["outside_splits"] = outside
    return found


def builder(compression: str):
    """The training-time builder of ``ffpp-<compression>``: a prepared directory, official splits."""
    comp = canonical_compression(compression)

    def build(image_size: int, options: Mapping[str, Any]) -> FrameSplits:
        chosen = as_list(options.get("methods"))
        sources = {REAL_SOURCE, *parse_methods(chosen)} if chosen else None
        return load_prepared(f"ffpp-{compression}", image_size, options, {"dataset": "ffpp", "compression": comp},
                             sources=sources)

    return build
