"""The embedded synthetic forgery set: determinism, disjoint splits, balance, traces."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from kdbench.data.frames import FAKE, REAL, SPLITS
from kdbench.data.synthetic import SyntheticConfig, build_synthetic, synthetic_image
from kdbench.models.frequency import FrequencyTransform

SMALL = SyntheticConfig(image_size=32, n_train=24, n_val=12, n_test=12)


@pytest.fixture(scope="module")
def small() -> dict:
    return build_synthetic(SMALL)


def _highpass_energy(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> per-pixel energy of the teacher's high-pass view, (N, H, W)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return (FrequencyTransform(x.shape[-1])(x) ** 2).mean(1)


def test_shapes_and_dtypes(small: dict) -> None:
    assert set(small) == set(SPLITS)
    for split, frames in small.items():
        n = SMALL.size_of(split)
        assert frames.images.shape == (n, 3, 32, 32) and frames.images.dtype == torch.uint8
        assert frames.labels.shape == (n,) and frames.labels.dtype == torch.int64
        assert set(frames.labels.tolist()) <= {REAL, FAKE}
        assert len(set(frames.videos)) == n
    image, label = synthetic_image(SMALL, "val", 0)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label in (REAL, FAKE)


def test_deterministic_per_index_whatever_n_or_order(small: dict) -> None:
    bigger = build_synthetic(replace(SMALL, n_train=30, n_val=2, n_test=1))
    for split in SPLITS:
        for i in reversed(range(min(len(small[split]), len(bigger[split])))):
            image, label = synthetic_image(SMALL, split, i)
            assert torch.equal(small[split].images[i], torch.from_numpy(image).permute(2, 0, 1))
            assert torch.equal(bigger[split].images[i], small[split].images[i])
            assert small[split].labels[i].item() == label
    other_seed, _ = synthetic_image(replace(SMALL, seed=1), "train", 0)
    assert not np.array_equal(other_seed, synthetic_image(SMALL, "train", 0)[0])


def test_splits_disjoint(small: dict) -> None:
    seen: dict[bytes, str] = {}
    for split, frames in small.items():
        for image in frames.images:
            key = image.numpy().tobytes()
            assert key not in seen, f"an image of {split} repeats one of {seen.get(key)}"
            seen[key] = split


@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_label_balance(fraction: float) -> None:
    cfg = replace(SMALL, image_size=16, fake_fraction=fraction)
    labels = np.array([synthetic_image(cfg, "train", i)[1] for i in range(400)])
    assert abs(labels.mean() - fraction) < 0.07


def test_fake_is_its_real_plus_a_face_region_trace() -> None:
    """Same index, fake_fraction 0 vs 1: the same real render, altered inside the face only.

    The region was resampled, so its high-pass energy drops, and the
    alteration shrinks as ``difficulty`` grows.
    """
    deltas = []
    for difficulty in (0.0, SyntheticConfig.difficulty, 1.0):
        cfg = SyntheticConfig(difficulty=difficulty)
        reals = np.stack([synthetic_image(replace(cfg, fake_fraction=0.0), "val", i)[0] for i in range(40)])
        fakes = np.stack([synthetic_image(replace(cfg, fake_fraction=1.0), "val", i)[0] for i in range(40)])
        diff = np.abs(reals.astype(np.float64) - fakes).mean(-1)
        centre, border = diff[:, 20:44, 20:44].mean(), diff[:, :, :6].mean() + diff[:, :, -6:].mean()
        assert centre > 5 * border
        deltas.append(centre)
        if difficulty == SyntheticConfig.difficulty:
            lower = _highpass_energy(fakes)[:, 20:44, 20:44].mean((1, 2)) < _highpass_energy(reals)[:, 20:44, 20:44].mean((1, 2))
            assert lower.float().mean() > 0.9
    assert deltas[0] > deltas[1] > deltas[2] > 0


def test_highpass_view_alone_beats_chance() -> None:
    """Unpaired: a logistic regression on 8x8-block high-pass log-energies separates fakes."""
    cfg = SyntheticConfig(n_train=400, n_val=1, n_test=200)
    data = build_synthetic(cfg)

    def features(split: str) -> np.ndarray:
        energy = _highpass_energy(data[split].images.permute(0, 2, 3, 1).numpy())
        blocks = energy.reshape(len(energy), 8, 8, 8, 8).mean((2, 4)).reshape(len(energy), -1)
        return torch.log(blocks + 1e-6).numpy()

    clf = LogisticRegression(max_iter=2000).fit(features("train"), data["train"].labels.numpy())
    assert clf.score(features("test"), data["test"].labels.numpy()) > 0.6


def test_odd_size_299() -> None:
    cfg = SyntheticConfig(image_size=299, fake_fraction=0.5)
    for i in range(2):
        image, label = synthetic_image(cfg, "test", i)
        assert image.shape == (299, 299, 3) and image.dtype == np.uint8 and label in (REAL, FAKE)
        assert image.std() > 5  # not blank
    fake, _ = synthetic_image(replace(cfg, fake_fraction=1.0), "test", 0)
    real, _ = synthetic_image(replace(cfg, fake_fraction=0.0), "test", 0)
    assert np.abs(fake.astype(int) - real).mean() > 0.5


def test_worker_processes_render_the_same_set(small: dict, monkeypatch) -> None:
    """Large sets are rendered by several processes (each image has its own RNG stream): the
    result is the one-process set, chunk boundaries included."""
    import kdbench.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "CHUNK", 5)  # several chunks per split, one cut mid-split
    parallel = build_synthetic(SMALL, workers=2)
    for split in SPLITS:
        assert torch.equal(parallel[split].images, small[split].images)
        assert torch.equal(parallel[split].labels, small[split].labels)
        assert parallel[split].videos == small[split].videos
