"""kdbench.rotation with two CPU threads: the factorisations that MKL's multi-threaded LU broke.

tests/test_rotation.py pins one thread (module fixture), which hid both failures: with two
threads ``slogdet`` (LU) gave det -1 to 7 of 12 Haar rotations at d = 512, and the Cayley
map's ``solve`` crashed at d >= 256 ("SLASWP parameter 6 incorrect"). Here two threads are
set explicitly, and each result is checked by a property independent of how it was computed.
"""
from __future__ import annotations

import pytest
import torch

from kdbench.rotation import Rotation, haar_rotation, signed_qr, skew_of


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def det_signs(X: torch.Tensor) -> list[float]:
    """det signs by LU on one thread, where MKL's LU is right (the reference, not the code under test)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.slogdet(X.double()).sign.tolist()
    finally:
        torch.set_num_threads(old)


def test_signed_qr_reads_the_determinant_sign_off_the_reflections(two_threads):
    X = torch.randn(8, 24, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    Q, det = signed_qr(X)
    assert det.tolist() == det_signs(X)  # sign det Q = sign det X, since R's diagonal is positive
    assert det.tolist() == det_signs(Q)
    assert torch.allclose(Q.mT @ Q, torch.eye(24, dtype=X.dtype).expand_as(Q), atol=1e-12)
    assert set(det.tolist()) == {-1.0, 1.0}  # both signs occur: the check can fail


def test_haar_rotations_at_d512_are_rotations_with_two_threads(two_threads):
    R = haar_rotation(4, 512, generator=torch.Generator().manual_seed(0))
    assert R.dtype == torch.float32
    eye = torch.eye(512, dtype=torch.float64)
    assert float((R.double().mT @ R.double() - eye).abs().max()) < 1e-5
    assert det_signs(R) == [1.0] * 4


def test_cayley_map_at_d256_with_two_threads(two_threads):
    rot = Rotation((256, 1, 1), 256, num=1, update="cayley", optimizer="adam")
    with torch.no_grad():
        rot.A.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    R = rot.matrices().detach().double()
    S = skew_of(rot.A.detach().double())[0]
    eye = torch.eye(256, dtype=torch.float64)
    # the defining equation of the Cayley map, (I - S/2) R = I + S/2 (the base is I), and SO(d)
    assert float(((eye - 0.5 * S) @ R[0] - (eye + 0.5 * S)).abs().max()) < 1e-4
    assert float((R[0].mT @ R[0] - eye).abs().max()) < 1e-5
    assert det_signs(R) == [1.0]
    g = torch.randn(4, 256, generator=torch.Generator().manual_seed(2))
    rot.leader_step([g], lr=0.1)  # autograd through the map at d = 256
    assert torch.isfinite(rot.A).all() and rot.leader_steps == 1
