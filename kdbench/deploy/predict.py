"""``kdbench predict``: P(forgery) per frame and per video from a trained student.

A video goes through exactly what ``prepare`` does (evenly spaced frames, the
same face crop and resampling), so a prediction sees what training saw. Only
the deployable network runs: the student's ``.net`` (S_B + classifier).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from kdbench.data.frames import normalize
from kdbench.data.prepared import RESAMPLE, SourceVideo, one_line
from kdbench.data.registry import DatasetError
from kdbench.io import CorruptFileError, load_verified

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


class CheckpointError(ValueError):
    """The file is not a kdbench student checkpoint."""


def load_student(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The deployable student network (eval mode) and its checkpoint metadata.

    ``student.pt`` holds a TappedModel's state dict; its ``net.`` entries are the
    network. Anything else (there should be nothing: no distiller, projector or
    rotation is ever saved there) is dropped, and the network must load strictly.
    """
    from kdbench.models.students import build_student

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = load_verified(path, required=False)  # verified where its digest file came along
    except CorruptFileError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - unpickling raises many types
        # not torch's message: it suggests weights_only=False, which runs whatever a malicious file holds
        raise CheckpointError(f"unreadable checkpoint {path} ({type(exc).__name__}): not a kdbench student "
                              "checkpoint, or damaged (kdbench loads weights only, never code)") from None
    if not isinstance(ckpt, dict) or not {"student", "state_dict", "image_size"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a kdbench student checkpoint (<workdir>/runs/<hash>/student.pt)")
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net = build_student(ckpt["student"], int(ckpt.get("num_classes", 2))).net
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit student {ckpt['student']!r}: "
                              f"{one_line(exc)[:300]}") from None
    meta = {"student": ckpt["student"], "image_size": int(ckpt["image_size"]),
            "num_classes": int(ckpt.get("num_classes", 2))}
    return net.eval(), meta


@dataclass
class Prediction:
    """One input: a single image, a folder of frames, or a video."""

    path: str
    kind: str
    frames: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    error: str | None = None
    warning: str | None = None  # a verdict given, but on too little to go on (a tiny image)

    @property
    def prob(self) -> float | None:
        """Video-level P(fake): the mean frame probability, as in video-level AUC."""
        return float(np.mean(self.probs)) if self.probs else None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "prob_fake": self.prob,
                "label": None if self.prob is None else ("fake" if self.prob > 0.5 else "real"),
                "frames": [{"frame": f, "prob_fake": p, "face_detected": d}
                           for f, p, d in zip(self.frames, self.probs, self.detected)],
                "error": self.error, "warning": self.warning}


def collect(paths: Sequence[Path]) -> list[SourceVideo]:
    """Inputs as units: an image, a video, or (inside folders) each folder's images together and each video."""
    units: list[SourceVideo] = []
    for path in map(Path, paths):
        if not path.exists():
            raise DatasetError(f"input not found: {path}")
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
                raise DatasetError(f"not an image or video: {path} (images: {', '.join(IMAGE_SUFFIXES)}; "
                                   f"videos: {', '.join(VIDEO_SUFFIXES)})")
            kind = "video" if suffix in VIDEO_SUFFIXES else "images"
            units.append(SourceVideo(str(path), -1, "", "image" if kind == "images" else "video", (path,), kind))
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for d in sorted({p.parent for p in files if p.suffix.lower() in IMAGE_SUFFIXES}):
            imgs = tuple(p for p in files if p.parent == d and p.suffix.lower() in IMAGE_SUFFIXES)
            units.append(SourceVideo(str(d), -1, "", "frames", imgs, "images"))
        units += [SourceVideo(str(p), -1, "", "video", (p,)) for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        if not any(u.paths[0].is_relative_to(path) for u in units):
            raise DatasetError(f"no images or videos in {path}")
    return units


@torch.no_grad()
def score(net: nn.Module, crops: np.ndarray, device: torch.device, batch_size: int = 64) -> list[float]:
    """P(fake) = softmax(logits)[:, 1] for uint8 (N, 3, S, S) crops."""
    x = torch.from_numpy(crops)
    probs = [torch.softmax(net(normalize(x[i:i + batch_size].to(device))).float(), 1)[:, 1].cpu()
             for i in range(0, len(x), batch_size)]
    return torch.cat(probs).tolist()


def predict(checkpoint: Path, paths: Sequence[Path], *, frames: int = 32, size: int = 299, detector: str = "mtcnn",
            margin: float = 1.3, device: str = "auto", batch_size: int = 64) -> list[Prediction]:
    """Predictions for every input; an input that fails is reported in its row, not fatal."""
    from kdbench.data.prepare import VideoError, face_crops, load_unit, make_detector, require_av

    units = collect(paths)
    net, meta = load_student(checkpoint)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    net = net.to(dev)
    if any(u.kind == "video" for u in units):
        require_av()
    det = make_detector(detector, device)
    out: list[Prediction] = []
    for unit in units:
        pred = Prediction(unit.video, unit.source)
        try:
            indices, imgs = load_unit(unit, frames)
            crops = face_crops(imgs, det, margin, size)
        except (VideoError, OSError, ValueError) as exc:
            pred.error = one_line(exc)
            out.append(pred)
            continue
        s = meta["image_size"]
        side = min(min(img.shape[:2]) for img in imgs)
        if side < s // 4:
            pred.warning = (f"input is only {side} px on its shorter side (the student sees {s} px): "
                            "the verdict is unreliable")
        arr = np.stack([np.asarray(Image.fromarray(c).resize((s, s), RESAMPLE)) if c.shape[0] != s else c
                        for c, _, _ in crops]).transpose(0, 3, 1, 2)
        pred.frames, pred.detected = indices, [d for _, _, d in crops]
        pred.probs = score(net, np.ascontiguousarray(arr), dev, batch_size)
        out.append(pred)
    return out
