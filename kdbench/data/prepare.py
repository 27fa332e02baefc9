"""``kdbench prepare``: videos -> evenly spaced frames -> square face crops -> PNG + index.

Why this shape: decoding and face detection dominate preprocessing, so they
run once and the result is a plain directory every builder (and ``predict``)
shares. Each video is finished by writing its ``done.json`` marker last, so an
interrupted run resumes where it stopped; a video that cannot be decoded or
shows no face is recorded in the index's ``skipped`` list, never fatal.
"""
from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from kdbench.data.prepared import (
    FORMAT,
    INDEX,
    RESAMPLE,
    Discovery,
    SourceVideo,
    index_items,
    one_line,
    read_index,
    write_json,
)
from kdbench.data.registry import DatasetError

SOURCES = ("ffpp", "celebdf", "folder")
DETECTORS = ("mtcnn", "none")
MARKER = "done.json"
FACENET_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels


class VideoError(Exception):
    """This one video cannot be used (undecodable, no face): reported and skipped."""


# ----------------------------------------------------------------------------- frames

def require_av() -> Any:
    try:
        import av
    except ImportError:
        raise DatasetError("reading videos needs PyAV: pip install 'kdbench[video]'") from None
    return av


def sample_indices(n: int, k: int) -> list[int]:
    """``k`` evenly spaced frame numbers in ``[0, n)`` (linspace, ends included); all when n <= k."""
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def _decode(path: Path, wanted: set[int]) -> tuple[int, dict[int, np.ndarray]]:
    """One pass over the stream: (frames decoded, the wanted ones as RGB arrays)."""
    av = require_av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        got: dict[int, np.ndarray] = {}
        n = 0
        for n, frame in enumerate(container.decode(stream), 1):
            if n - 1 in wanted:
                got[n - 1] = frame.to_ndarray(format="rgb24")
        return n, got


def read_frames(path: Path, k: int) -> tuple[list[int], list[np.ndarray]]:
    """``k`` evenly spaced RGB frames of a video and their original frame numbers."""
    av = require_av()
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            n = int(streams[0].frames) if streams else 0
        if n <= 0:  # the container does not say: count by decoding
            n, _ = _decode(path, set())
        total, got = _decode(path, set(sample_indices(n, k)))
        if len(got) < len(sample_indices(n, k)):  # the container over-declared its length
            total, got = _decode(path, set(sample_indices(total, k)))
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        raise VideoError(f"undecodable video: {one_line(exc)}") from None
    if not got:
        raise VideoError("undecodable video: no frame could be decoded")
    indices = sorted(got)
    return indices, [got[i] for i in indices]


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise VideoError(f"unreadable image {path.name}: {one_line(exc)}") from None


def load_unit(sv: SourceVideo, k: int) -> tuple[list[int], list[np.ndarray]]:
    """Sampled frames of a video file, or of an image group (its sorted images are its frames)."""
    if sv.kind == "video":
        return read_frames(sv.paths[0], k)
    indices = sample_indices(len(sv.paths), k)
    return indices, [read_rgb(sv.paths[i]) for i in indices]


# ----------------------------------------------------------------------------- faces

class FaceDetector(Protocol):
    name: str

    def boxes(self, frames: Sequence[np.ndarray]) -> list[Box | None]: ...


class CenterCrop:
    """``--detector none``: the centred square, for data that is already face-cropped."""

    name = "none"

    def boxes(self, frames: Sequence[np.ndarray]) -> list[Box | None]:
        return [(0.0, 0.0, float(f.shape[1]), float(f.shape[0])) for f in frames]


class Mtcnn:
    """facenet-pytorch's MTCNN (weights ship in its wheel: works offline); the largest confident face."""

    name = "mtcnn"

    def __init__(self, device: str = "auto", detect_size: int = 640, min_prob: float = 0.9, batch: int = 16) -> None:
        import torch

        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            why = "is not installed" if exc.name == "facenet_pytorch" else f"fails to import ({one_line(exc)})"
            raise DatasetError(f"face detector 'mtcnn': facenet-pytorch {why}: pip install 'kdbench[video]' && "
                               f"{FACENET_INSTALL} (or --detector none for already face-cropped data)") from None
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.net = MTCNN(keep_all=True, device=dev, post_process=False)
        self.detect_size, self.min_prob, self.batch = detect_size, min_prob, batch

    def _best(self, boxes: Any, probs: Any, scale: float) -> Box | None:
        if boxes is None:
            return None
        cands = [(b, p) for b, p in zip(boxes, probs) if b is not None and p is not None and p >= self.min_prob]
        if not cands:
            return None
        b = max(cands, key=lambda bp: (bp[0][2] - bp[0][0]) * (bp[0][3] - bp[0][1]))[0]
        return tuple(float(v) / scale for v in b)  # type: ignore[return-value]

    def boxes(self, frames: Sequence[np.ndarray]) -> list[Box | None]:
        out: list[Box | None] = [None] * len(frames)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            by_shape.setdefault(f.shape, []).append(i)
        for (h, w, _), idx in by_shape.items():
            scale = min(1.0, self.detect_size / max(h, w))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = [np.asarray(Image.fromarray(frames[i]).resize(size, Image.Resampling.BILINEAR))
                     if scale < 1 else frames[i] for i in idx]
            for start in range(0, len(idx), self.batch):
                boxes, probs = self.net.detect(np.stack(small[start:start + self.batch]))
                for j, b, p in zip(idx[start:start + self.batch], boxes, probs):
                    out[j] = self._best(b, np.atleast_1d(p) if p is not None else None, scale)
        return out


def make_detector(name: str, device: str = "auto") -> FaceDetector:
    if name == "none":
        return CenterCrop()
    if name == "mtcnn":
        return Mtcnn(device)
    raise DatasetError(f"unknown face detector {name!r}; choose one of: {', '.join(DETECTORS)}")


def square_box(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A square around the face, ``margin`` x its longer side, shifted (not padded) into the frame."""
    x1, y1, x2, y2 = box
    side = max(1, int(round(min(max(x2 - x1, y2 - y1) * margin, width, height))))
    left = int(round(min(max((x1 + x2) / 2 - side / 2, 0), width - side)))
    top = int(round(min(max((y1 + y2) / 2 - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def face_crops(frames: Sequence[np.ndarray], detector: FaceDetector, margin: float, size: int
               ) -> list[tuple[np.ndarray, tuple[int, int, int, int], bool]]:
    """(crop uint8 (size, size, 3), crop box, face detected in this frame) per frame.

    A frame where the detector finds no face borrows the box of the nearest
    frame that has one (faces move little between frames); no face at all is a VideoError.
    """
    boxes = detector.boxes(frames)
    hits = [i for i, b in enumerate(boxes) if b is not None]
    if not hits:
        raise VideoError(f"no face detected in any of the {len(frames)} sampled frames")
    out = []
    for i, frame in enumerate(frames):
        box = boxes[i] if boxes[i] is not None else boxes[min(hits, key=lambda j: abs(j - i))]
        assert box is not None, "hits holds only frames with a box"
        sq = square_box(box, margin if detector.name != "none" else 1.0, frame.shape[1], frame.shape[0])
        crop = Image.fromarray(frame).crop(sq).resize((size, size), RESAMPLE)
        out.append((np.asarray(crop), sq, boxes[i] is not None))
    return out


# ----------------------------------------------------------------------------- the pipeline

def discover(source: str, root: Path, compression: str = "c40", methods: Any = None,
             splits: Path | None = None) -> Discovery:
    if source == "ffpp":
        from kdbench.data import ffpp
        return ffpp.discover(root, compression, methods, splits)
    if source == "celebdf":
        from kdbench.data import celebdf
        return celebdf.discover(root)
    if source == "folder":
        from kdbench.data import folder
        return folder.discover(root)
    raise DatasetError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")


def video_dir(out: Path, video: str) -> Path:
    rel = PurePosixPath(video)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DatasetError(f"unsafe video id {video!r}: ids must be relative names")
    return out / "frames" / rel


def finished(out: Path, sv: SourceVideo, params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The frames of a video whose marker says it was done with these parameters."""
    try:
        marker = json.loads((video_dir(out, sv.video) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker["frames"] if marker.get("params") == params and marker.get("frames") else None


def process(sv: SourceVideo, out: Path, params: dict[str, Any], detector: FaceDetector) -> list[dict[str, Any]]:
    """Sample, crop and write one video; its marker goes last."""
    indices, frames = load_unit(sv, params["frames"])
    crops = face_crops(frames, detector, params["margin"] or 1.0, params["size"])
    vdir = video_dir(out, sv.video)
    vdir.mkdir(parents=True, exist_ok=True)
    for old in vdir.glob("*.png"):  # leftovers of an interrupted attempt (not sub-folders: other videos' ids)
        old.unlink()
    names = [f"{idx:04d}.png" for idx in indices]
    with ThreadPoolExecutor(max_workers=4) as pool:  # zlib releases the GIL
        list(pool.map(lambda nc: Image.fromarray(nc[1][0]).save(vdir / nc[0]), zip(names, crops)))
    rows = [{"path": (vdir / name).relative_to(out).as_posix(), "frame": idx, "box": list(box), "detected": detected}
            for name, idx, (_, box, detected) in zip(names, indices, crops)]
    write_json(vdir / MARKER, {"video": sv.video, "params": params, "frames": rows})
    return rows


@dataclass
class PrepareReport:
    index: Path
    videos: int = 0  # discovered
    prepared: int = 0  # in the index (done now or before)
    done_before: int = 0
    frames: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def check_out(out: Path, root: Path, source: str, params: dict[str, Any]) -> None:
    if source == "folder" and out.resolve().is_relative_to(root.resolve()):
        raise DatasetError(f"--out {out} is inside --root {root}: a re-run would read its own crops")
    if (out / INDEX).is_file():
        old = read_index(out / INDEX)
        diff = {k: old.get(k) for k, v in params.items() if old.get(k) != v}
        if diff:
            raise DatasetError(f"{out} was prepared with {', '.join(f'{k}={v}' for k, v in diff.items())}; "
                               f"use another --out, or the same options to resume")


def prepare(source: str, root: Path, out: Path, *, size: int = 299, frames: int = 32, compression: str = "c40",
            methods: Any = None, splits: Path | None = None, detector: str = "mtcnn", margin: float = 1.3,
            device: str = "auto", log: Callable[[str], None] = print, progress: Any = None) -> PrepareReport:
    """Prepare one dataset into ``out``; ``progress``: a rich Console to draw a bar on, or None."""
    if detector not in DETECTORS:
        raise DatasetError(f"unknown face detector {detector!r}; choose one of: {', '.join(DETECTORS)}")
    if size < 8 or frames < 1 or margin < 1:
        raise DatasetError("--size must be >= 8, --frames >= 1 and --margin >= 1")
    root, out = Path(root).expanduser(), Path(out).expanduser()
    if not root.exists():
        raise DatasetError(f"--root not found: {root}")
    if source != "ffpp" and (methods or splits):
        raise DatasetError("--methods and --splits apply to ffpp only")
    found = discover(source, root, compression, methods, splits)
    if found.meta.get("outside_splits"):
        log(f"prepare: {found.meta['outside_splits']} videos are in no split file; left out")
    for s in found.skipped:
        log(f"prepare: skipped {s['video']}: {s['reason']}")
    counts = Counter(sv.video for sv in found.videos)
    dup = sorted(v for v, n in counts.items() if n > 1)
    if dup:
        raise DatasetError(f"duplicate video ids {', '.join(dup[:3])}: rename files so each video is unique")
    params = {"dataset": source, **({"compression": found.meta["compression"]} if source == "ffpp" else {}),
              "size": size, "frames": frames, "detector": detector, "margin": margin if detector != "none" else None}
    check_out(out, root, source, params)
    report = PrepareReport(out / INDEX, videos=len(found.videos))
    frames_of: dict[str, list[dict[str, Any]]] = {}
    det: FaceDetector | None = None
    todo = []
    for sv in found.videos:
        done = finished(out, sv, params)
        if done is None:
            todo.append(sv)
        else:
            frames_of[sv.video] = done
    report.done_before = len(found.videos) - len(todo)
    if report.done_before:
        log(f"prepare: {report.done_before} of {len(found.videos)} videos already done; skipping them")
    if todo:
        if any(sv.kind == "video" for sv in todo):
            require_av()
        det = make_detector(detector, device)
    skipped: list[dict[str, str]] = []
    with _bar(progress, len(todo), f"prepare {source}") as advance:
        for sv in todo:
            try:
                frames_of[sv.video] = process(sv, out, params, det)  # type: ignore[arg-type]
            except (VideoError, OSError, ValueError, RuntimeError) as exc:
                reason = one_line(exc)
                skipped.append({"video": sv.video, "path": str(sv.paths[0]), "reason": reason})
                log(f"prepare: skipped {sv.video}: {reason}")
            advance()
    items = index_items(found.videos, frames_of)
    report.skipped = found.skipped + skipped
    report.frames, report.prepared = len(items), len(frames_of)
    write_json(out / INDEX, {"format": FORMAT, **params, "root": str(root), "meta": found.meta,
                             "videos": len(frames_of), "items": items, "skipped": report.skipped})
    return report


class _bar:
    """A rich progress bar over videos, or nothing when there is no terminal."""

    def __init__(self, console: Any, total: int, label: str) -> None:
        self.console, self.total, self.label = console, total, label

    def __enter__(self) -> Callable[[], None]:
        if self.console is None or self.total == 0:
            self.progress = None
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        task = self.progress.add_task(self.label, total=self.total)
        return lambda: self.progress.advance(task)  # type: ignore[union-attr]

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
