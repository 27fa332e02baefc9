import numpy as np
import pytest
import scipy.fft
import torch

from kdbench.models.frequency import FrequencyTransform, dct_matrix, highpass_mask


def reference(x: np.ndarray, ratio: float = 1 / 3) -> np.ndarray:
    """Independent reference: scipy's orthonormal DCT-II, the same mask, scipy's inverse."""
    h, w = x.shape[-2:]
    coeff = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    u = np.arange(h)[:, None] / h
    v = np.arange(w)[None, :] / w
    coeff = coeff * ((u + v) >= ratio)
    return scipy.fft.idctn(coeff, type=2, norm="ortho", axes=(-2, -1))


@pytest.mark.parametrize("size", [64, 299])
def test_matches_scipy(size):
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    ours = FrequencyTransform(size)
    ours.dh, ours.dw, ours.mask = dct_matrix(size), dct_matrix(size), highpass_mask(size, size)
    np.testing.assert_allclose(ours(x).numpy(), reference(x.numpy()), atol=1e-9)


def test_float32_batched_non_square():
    x = torch.randn(4, 3, 37, 51)
    np.testing.assert_allclose(FrequencyTransform(37, 51)(x).numpy(), reference(x.double().numpy()), atol=1e-4)


def test_dct_orthonormal_and_mask_fraction():
    d = dct_matrix(299)
    assert torch.allclose(d @ d.T, torch.eye(299, dtype=d.dtype), atol=1e-10)
    zeroed = 1 - highpass_mask(299, 299).mean().item()
    assert abs(zeroed - 0.0565) < 1e-3


def test_constant_image_has_no_high_frequencies():
    x = torch.full((1, 3, 31, 31), 0.7)
    assert FrequencyTransform(31)(x).abs().max() < 1e-5
