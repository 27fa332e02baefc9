"""Tiny on-the-fly datasets for the data tests: real face photos in short H.264 videos.

The faces are photos that ship inside installed packages (scikit-image's
astronaut, matplotlib's Grace Hopper), so nothing is downloaded. Each video
pans a square window over a photo; ``FACE`` records where the face sits in it,
so tests can check that a crop contains the face.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

FRAME = 112  # video side, px (H.264 wants even sizes)
N_FRAMES = 12
# (photo, square window around the face in photo pixels, face box in the photo): measured with MTCNN
WINDOWS = {"astronaut": ((104, 0, 344, 240), (181, 64, 268, 176)),
           "hopper": ((43, 4, 483, 444), (172, 115, 354, 334))}


@lru_cache(maxsize=None)
def photo(name: str) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """(photo, window, face box); the astronaut falls back to Grace Hopper without scikit-image."""
    if name == "astronaut":
        try:
            from skimage import data

            return (data.astronaut(), *WINDOWS["astronaut"])
        except ImportError:
            pass
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return (np.asarray(Image.open(fh).convert("RGB")), *WINDOWS["hopper"])


def pan_frames(name: str, n: int = N_FRAMES, size: int = FRAME, shift: int = 6, seed: int = 0,
               fake: bool = False) -> tuple[list[np.ndarray], list[tuple[float, float, float, float]]]:
    """Frames of a slow pan over a face photo and the face box in each frame (frame pixels)."""
    img, (wx1, wy1, wx2, wy2), (fx1, fy1, fx2, fy2) = photo(name)
    rng = np.random.default_rng(seed)
    frames, faces = [], []
    for t in range(n):
        dx, dy = (rng.integers(-shift, shift + 1, size=2) if t else (0, 0))
        box = (wx1 + dx, wy1 + dy, wx2 + dx, wy2 + dy)
        s = size / (box[2] - box[0])
        crop = Image.fromarray(img).crop(box).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(crop).copy()
        face = ((fx1 - box[0]) * s, (fy1 - box[1]) * s, (fx2 - box[0]) * s, (fy2 - box[1]) * s)
        if fake:  # a crude "manipulation": the face region colour-shifted
            x1, y1, x2, y2 = (int(v) for v in face)
            arr[y1:y2, x1:x2] = np.clip(arr[y1:y2, x1:x2].astype(int) + (25, -15, 10), 0, 255)
        frames.append(arr)
        faces.append(face)
    return frames, faces


def faceless_frames(n: int = N_FRAMES, size: int = FRAME) -> list[np.ndarray]:
    """Smooth colour gradients: nothing a face detector should fire on."""
    y, x = np.mgrid[0:size, 0:size] / size
    return [np.stack([(x * 200 + 5 * t) % 255, y * 180, (x + y) * 100], -1).astype(np.uint8) for t in range(n)]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def face_video(path: Path, i: int, fake: bool = False, n: int = N_FRAMES) -> Path:
    frames, _ = pan_frames(("astronaut", "hopper")[i % 2], n=n, seed=i, fake=fake)
    return write_video(path, frames)


def corrupt_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(2000))
    return path


# ----------------------------------------------------------------------------- layouts

FFPP_PAIRS = {"train": [["000", "001"], ["002", "003"]], "val": [["004", "005"]], "test": [["006", "007"]]}


def make_ffpp(root: Path, methods=("Deepfakes", "Face2Face"), compression: str = "c40", pairs=FFPP_PAIRS,
              videos_level: bool = True, splits: bool = True) -> Path:
    """``original_sequences/youtube`` + ``manipulated_sequences/<Method>``, fakes a_b and b_a per pair."""
    sub = (compression, "videos") if videos_level else (compression,)
    ids = [v for split in pairs.values() for pair in split for v in pair]
    for k, vid in enumerate(ids):
        face_video(root.joinpath("original_sequences", "youtube", *sub, f"{vid}.mp4"), k)
    for m, method in enumerate(methods):
        for split in pairs.values():
            for a, b in split:
                for k, name in enumerate((f"{a}_{b}", f"{b}_{a}")):
                    face_video(root.joinpath("manipulated_sequences", method, *sub, f"{name}.mp4"), m + k + int(a),
                               fake=True)
    if splits:
        (root / "splits").mkdir(parents=True, exist_ok=True)
        for split, p in pairs.items():
            (root / "splits" / f"{split}.json").write_text(json.dumps(p))
    return root


CELEB = {"Celeb-real": ["id0_0000", "id0_0001", "id1_0000", "id1_0001"],
         "Youtube-real": ["00000", "00001", "00002"],  # the lower-case "t" variant
         "Celeb-synthesis": ["id0_id1_0000", "id0_id1_0001", "id1_id0_0000", "id1_id0_0001", "id0_id1_0002",
                             "id1_id0_0002"]}
CELEB_TEST = ["1 Celeb-real/id1_0001.mp4", "1 YouTube-real/00002.mp4", "0 Celeb-synthesis/id1_id0_0001.mp4",
              "0 Celeb-synthesis/id1_id0_0002.mp4"]


def make_celebdf(root: Path, videos_level: bool = True) -> Path:
    """Celeb-DF v2 with the variants: an extra ``videos/`` level, "Youtube-real"."""
    for s, (subset, stems) in enumerate(CELEB.items()):
        for k, stem in enumerate(stems):
            parts = (subset, "videos") if videos_level else (subset,)
            face_video(root.joinpath(*parts, f"{stem}.mp4"), s + k, fake=subset == "Celeb-synthesis", n=8)
    (root / "List_of_testing_videos.txt").write_text("\n".join(CELEB_TEST) + "\n")
    return root


def make_image_folder(root: Path, n_per_label: int = 6, size: int = 64, frames: int = 2) -> Path:
    """``real/`` and ``fake/`` of face-crop image groups (one sub-folder per "video")."""
    for label, fake in (("real", False), ("fake", True)):
        for v in range(n_per_label):
            imgs, faces = pan_frames(("astronaut", "hopper")[v % 2], n=frames, size=size, seed=v, fake=fake)
            for t, arr in enumerate(imgs):
                d = root / label / f"clip{v}"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(d / f"{t:03d}.png")
    return root
