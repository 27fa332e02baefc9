"""Embedded procedural forgery set: face-like "reals", blended and resampled "fakes".

Why procedural: the default dataset needs no download, is deterministic per
(seed, split, index) and has a tunable difficulty, so the whole pipeline can
be smoke-tested and profiled anywhere. Reals have natural-image statistics
(1/f background, smooth illumination, blur, sensor noise) and a face-like
structure; fakes additionally carry the two traces a face swap leaves: a
spatial one (a colour-shifted region blended in with a soft alpha mask) and a
spectral one (that region was down- then up-sampled, so it lacks the sensor
noise and fine detail around it and may alias). Every image, real or fake,
then goes through low-quality JPEG, which hides much of both, as FF++ c40 does.
See docs/synthetic-data.md.
"""
from __future__ import annotations

import io
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
import torch
from PIL import Image

from kdbench.data.frames import FAKE, REAL, SPLITS, FrameSet

SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}


@dataclass(frozen=True)
class SyntheticConfig:
    image_size: int = 64
    n_train: int = 2000
    n_val: int = 500
    n_test: int = 1000
    seed: int = 0  # dataset seed (independent of the training seed)
    difficulty: float = 0.4  # 0 = easy, 1 = hard: scales both traces' strength; 0.4 tuned (docs)
    jpeg_quality: int = 30  # low quality, like FF++ c40 (jittered by +-5 per image)
    fake_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.difficulty <= 1.0 and 0.0 <= self.fake_fraction <= 1.0):
            raise ValueError("difficulty and fake_fraction must lie in [0, 1]")
        if self.image_size < 16:
            raise ValueError(f"image_size {self.image_size} is too small for a face (min 16)")

    def size_of(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


def _lerp(easy: float, hard: float, d: float) -> float:
    return easy + (hard - easy) * d


def _soft(dist: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a shape from its signed inside-distance: anti-aliased, no hard 0/1 edges."""
    return np.clip(dist / max(width, 1e-6) + 0.5, 0.0, 1.0)


@lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, and squared rfft2 frequencies on the FFT-friendly size >= ``size``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    n = sfft.next_fast_len(size, real=True)  # 299 = 13 * 23 is slow, 300 is fast
    f2 = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.rfftfreq(n)[None, :] ** 2
    f2[0, 0] = 1.0 / n**2
    return yy, xx, f2


def _pink(rng: np.random.Generator, size: int, exponents: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std noise, one channel per exponent, amplitude ~ 1/f^e (natural images: ~1)."""
    f2 = _grids(size)[2]
    n = f2.shape[0]
    white = rng.random((len(exponents), n, n), dtype=np.float32)  # uniform is cheaper; 1/f makes it Gaussian
    amp = (f2[None] ** (-0.5 * exponents[:, None, None])).astype(np.float32)
    amp[:, 0, 0] = 0.0
    field = sfft.irfft2(sfft.rfft2(white) * amp, s=(n, n))[:, :size, :size]
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-8)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a (3, S, S) image in the Fourier domain (the camera's optics)."""
    size, f2 = img.shape[-1], _grids(img.shape[-1])[2]
    n = f2.shape[0]
    padded = np.pad(img, ((0, 0), (0, n - size), (0, n - size)), mode="edge") if n > size else img
    gain = np.exp(-2 * np.pi**2 * sigma**2 * f2).astype(np.float32)
    return sfft.irfft2(sfft.rfft2(padded) * gain, s=(n, n))[:, :size, :size]


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float, px: float) -> np.ndarray:
    """Soft ellipse in face coordinates; ``px`` is one pixel in those units."""
    r = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return _soft((1.0 - r) * min(ru, rv), px)


def _mix(img: np.ndarray, colour: np.ndarray | np.floating, alpha: np.ndarray) -> np.ndarray:
    return img + alpha[None] * (colour - img)


def _render_real(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A face-like "real" frame in [0, 1], (3, S, S), plus its face coordinates (u, v)."""
    s = float(size)
    yy, xx = _grids(size)[:2]
    # Four 1/f fields: background luminance and chroma (chroma doubles as skin and hair texture).
    noise = _pink(rng, size, np.array([rng.uniform(0.9, 1.4), 1.2, 1.0, 0.8]))
    img = rng.uniform(0.15, 0.85, (3, 1, 1)).astype(np.float32) + rng.uniform(0.06, 0.18) * noise[:1] + 0.04 * noise[1:]
    # Face pose: position, scale, in-plane rotation, yaw (feature shift).
    a = s * rng.uniform(0.22, 0.30)
    b = a * rng.uniform(1.2, 1.4)
    cx, cy = s * (0.5 + rng.uniform(-0.08, 0.08)), s * (0.52 + rng.uniform(-0.06, 0.08))
    ang, yaw = rng.uniform(-0.35, 0.35), rng.uniform(-0.2, 0.2)
    dx, dy = xx - cx, yy - cy
    u = (dx * math.cos(ang) + dy * math.sin(ang)) / a
    v = (-dx * math.sin(ang) + dy * math.cos(ang)) / b
    px = 1.0 / a
    # Skin tone between dark and light, sphere-like shading, faint texture.
    tone = rng.uniform()
    skin = (np.array([0.36, 0.24, 0.18]) * (1 - tone) + np.array([0.95, 0.78, 0.68]) * tone) * rng.uniform(0.8, 1.1)
    skin = np.clip(skin + rng.normal(0, 0.03, 3), 0.05, 1.0)[:, None, None].astype(np.float32)
    light = rng.normal(0, 0.5, 3) + np.array([0, 0, 1.5])
    lx, ly, lz = (light / np.linalg.norm(light)).tolist()
    hair = (rng.uniform(0.03, 0.5) * rng.uniform(0.6, 1.0, (3, 1, 1))).astype(np.float32)
    hair_img = hair * (1 + 0.15 * noise[2:3])
    # Back hair and neck on the whole frame; the face only inside its bounding box (speed).
    img = _mix(img, hair_img, _ellipse(u, v, 0, -0.2, rng.uniform(1.05, 1.3), rng.uniform(0.95, 1.15), px))
    img = _mix(img, skin * 0.8, _soft((0.5 - np.abs(u)) * a, 1.0) * _soft((v - 0.6) * b, 1.0))
    ex, ey = math.hypot(a * math.cos(ang), b * math.sin(ang)) + 2, math.hypot(a * math.sin(ang), b * math.cos(ang)) + 2
    box = (slice(max(0, int(cy - ey)), max(0, int(cy + ey) + 1)), slice(max(0, int(cx - ex)), max(0, int(cx + ex) + 1)))
    fu, fv, fimg, hair_img = u[box], v[box], img[(slice(None), *box)], hair_img[(slice(None), *box)]
    nz = np.sqrt(np.clip(1 - fu**2 - fv**2, 0, 1))
    skin_img = skin * ((0.6 + 0.4 * (lx * fu + ly * fv + lz * nz)) * (1 + 0.03 * noise[1][box]))[None]
    face = _ellipse(fu, fv, 0, 0, 1, 1, px)
    fimg[:] = _mix(fimg, skin_img, face)
    hairline = rng.uniform(-0.75, -0.5) + 0.08 * np.cos(3 * fu + rng.uniform(0, 6))
    fimg[:] = _mix(fimg, hair_img, face * _soft((hairline - fv) * b, 1.0))
    # Features, mirror-symmetric about the yawed midline: brows, eyes, irises, nostrils, nose, mouth.
    side = np.abs(fu - yaw)
    eye_v, eye_u = rng.uniform(-0.25, -0.12), rng.uniform(0.33, 0.43)
    fimg[:] = _mix(fimg, hair, _ellipse(side, fv, eye_u, eye_v - 0.2, 0.22, 0.045, px))
    fimg[:] = _mix(fimg, np.float32(rng.uniform(0.75, 0.95)), _ellipse(side, fv, eye_u, eye_v, 0.17, 0.075, px))
    iris = (rng.uniform(0.05, 0.4) * rng.uniform(0.5, 1.0, (3, 1, 1))).astype(np.float32)
    fimg[:] = _mix(fimg, iris, _ellipse(np.abs(fu - 1.3 * yaw), fv, eye_u, eye_v, 0.075, 0.07, px))
    fimg[:] = _mix(fimg, skin * 0.35, _ellipse(side, fv, 0.08, 0.33, 0.045, 0.03, px))
    fimg *= (1 - 0.25 * _ellipse(fu, fv, 0.06 + 1.2 * yaw, 0.13, 0.08, 0.22, px))[None]
    lips = skin * np.array([1.1, 0.65, 0.65], dtype=np.float32)[:, None, None]
    mouth = (rng.uniform(0.5, 0.6), rng.uniform(0.22, 0.35), rng.uniform(0.04, 0.1))
    fimg[:] = _mix(fimg, lips, _ellipse(fu, fv, 0.6 * yaw, mouth[0], mouth[1], mouth[2], px))
    # Camera: smooth illumination, optics blur, sensor noise.
    gx, gy, gq = rng.normal(0, 0.25), rng.normal(0, 0.25), rng.normal(0, 0.1)
    xn, yn = xx / s - 0.5, yy / s - 0.5
    img = img * (1 + gx * xn + gy * yn + gq * (xn**2 + yn**2))[None]
    img = _blur(img, rng.uniform(0.3, 0.8) * s / 64)
    img = img + np.float32(rng.uniform(0.035, 0.1)) * (rng.random(img.shape, dtype=np.float32) - 0.5)  # std 0.01-0.03
    return np.clip(img, 0, 1), u, v


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


def _resample(img: np.ndarray, factor: float) -> np.ndarray:
    """Down-sample by ``factor`` (no anti-aliasing filter, so it aliases) and up-sample back."""
    size = img.shape[-1]
    small = max(2, round(size / factor))
    pil = Image.fromarray(_to_uint8(img)).resize((small, small), Image.Resampling.NEAREST)
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).transpose(2, 0, 1) / 255


def _forge(rng: np.random.Generator, img: np.ndarray, u: np.ndarray, v: np.ndarray, d: float) -> np.ndarray:
    """Blend a resampled, colour-shifted copy of the inner face back with a soft alpha mask."""
    ru, rv = rng.uniform(0.65, 0.85), rng.uniform(0.65, 0.8)
    r = np.sqrt((u - rng.uniform(-0.1, 0.1)) ** 2 / ru**2 + (v - rng.uniform(0.05, 0.2)) ** 2 / rv**2)
    feather = rng.uniform(0.15, 0.4)
    alpha = _lerp(1.0, 0.3, d) * rng.uniform(0.75, 1.0) * np.clip((1 - r) / feather, 0, 1) ** 2
    factor = float(np.exp(np.log(_lerp(4.0, 1.15, d)) * rng.uniform(0.7, 1.3)))
    shift = rng.normal(0, 1, 3).astype(np.float32)
    shift *= _lerp(0.15, 0.01, d) * rng.uniform(0.5, 1.5) / np.linalg.norm(shift)
    forged = _resample(img, factor) * (1 + shift[:, None, None]) + shift[:, None, None] * 0.3
    return np.clip(_mix(img, forged, alpha), 0, 1)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(img)).save(buf, format="JPEG", quality=int(np.clip(quality, 1, 95)))
    buf.seek(0)
    return np.array(Image.open(buf).convert("RGB"), dtype=np.uint8)  # writable copy


def synthetic_image(cfg: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, int]:
    """Image ``index`` of ``split``: (H, W, 3) uint8 and its label, from its own RNG stream.

    The stream is seeded by (seed, split id, index) only, so an image never
    depends on how many others are generated, nor in what order. The label is
    drawn first and a fake is its real render plus the forgery, so the same
    index with ``fake_fraction`` 0 and 1 gives a (real, fake) pair.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], index])
    label = FAKE if rng.uniform() < cfg.fake_fraction else REAL
    img, u, v = _render_real(rng, cfg.image_size)
    if label == FAKE:  # own stream: the real render and the JPEG quality stay those of the real
        img = _forge(np.random.default_rng([cfg.seed, SPLIT_IDS[split], index, 1]), img, u, v, cfg.difficulty)
    quality = cfg.jpeg_quality + int(rng.integers(-5, 6))
    return _jpeg(img, quality), label


PARALLEL_FROM = 4000  # images: below this, starting worker processes costs more than it saves
CHUNK = 256


def _render_range(cfg: SyntheticConfig, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((stop - start, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    labels = np.empty(stop - start, dtype=np.int64)
    for i in range(start, stop):
        images[i - start], labels[i - start] = synthetic_image(cfg, split, i)
    return images, labels


def build_synthetic(cfg: SyntheticConfig, workers: int | None = None) -> dict[str, FrameSet]:
    """All three splits as ``FrameSet``s (each frame its own "video"). Every image has its own
    RNG stream, so large sets are rendered by ``workers`` processes (default: one per core from
    ``PARALLEL_FROM`` images on) with the same result as one process."""
    if workers is None:
        total = sum(cfg.size_of(split) for split in SPLITS)
        workers = min(os.cpu_count() or 1, 32) if total >= PARALLEL_FROM else 1
    jobs = [(split, start, min(start + CHUNK, cfg.size_of(split)))
            for split in SPLITS for start in range(0, cfg.size_of(split), CHUNK)]
    if workers > 1:  # spawn, not fork: the parent may hold CUDA and threads
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = [f.result() for f in [pool.submit(_render_range, cfg, *job) for job in jobs]]
    else:
        parts = [_render_range(cfg, *job) for job in jobs]
    out: dict[str, FrameSet] = {}
    for split in SPLITS:
        mine = [part for job, part in zip(jobs, parts) if job[0] == split] or [_render_range(cfg, split, 0, 0)]
        images, labels = np.concatenate([p[0] for p in mine]), np.concatenate([p[1] for p in mine])
        out[split] = FrameSet(
            images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            labels=torch.from_numpy(labels),
            videos=[f"synthetic-{cfg.seed}-{split}-{i}" for i in range(len(labels))],
        )
    return out
