"""kdbench.rotation: SO(d) rotations of the first d latent coordinates and TOKD's leader update.

Numbers refer to docs/design/rotation-design.md section 7. Sizes stay tiny (d <= 64 for
the parametrised maps) so the file runs in seconds on 2 shared cores.
"""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from step_factory import host_reads_refused  # tests/ has no __init__.py: on sys.path

from kdbench.distiller import DistillerError
from kdbench.rotation import (
    LeaderOptimizer,
    Rotation,
    exp_step,
    haar_rotation,
    orthonormalize,
    skew_of,
    target_vector,
    taylor_exp,
    taylor_radius,
)

UPDATES = ("riemannian", "expm", "cayley")


pytestmark = pytest.mark.usefixtures("one_thread")


def so_check(R: torch.Tensor, tol: float = 1e-4) -> None:
    R = R.detach().double()
    eye = torch.eye(R.shape[-1], dtype=R.dtype)
    assert (R.mT @ R - eye).abs().max() < tol
    sign, logabs = torch.linalg.slogdet(R)
    assert bool((sign == 1).all()) and float(logabs.abs().max()) < 1e-3


def conflicting(B: int = 16, D: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gr = torch.randn(B, D, generator=g)
    gf = -0.7 * gr + 0.7 * torch.randn(B, D, generator=g)
    return gr, gf


# 1 + 3: stays in SO(d) after many large steps, every update and optimiser
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_stays_in_so_d_after_many_large_steps(update, optimizer):
    torch.manual_seed(1)
    rot = Rotation((8, 2, 2), 16, update=update, optimizer=optimizer)
    for i in range(300):
        gr, gf = torch.randn(8, 32), torch.randn(8, 32)
        assert not rot.leader_step([gr, gf], lr=5.0).skipped
    assert rot.leader_steps == 300
    so_check(rot.matrices())
    assert rot.angles().min() > 0.5  # it really moved


# 2: Haar init is a rotation, not a reflection, at sizes where torch.det underflows
def test_haar_init_has_det_plus_one():
    torch.manual_seed(0)
    so_check(haar_rotation(4, 512))
    rot = Rotation((512, 1, 1), 512, init="haar", update="expm")
    so_check(rot.matrices())


# 3: drift is detected and re-orthonormalisation (manual and periodic) restores SO(d)
def test_drift_and_reorthonormalisation():
    torch.manual_seed(0)
    rot = Rotation((16, 2, 2), 64, reortho_every=5)
    for _ in range(3):
        rot.leader_step(list(conflicting(8, 64)), lr=0.5)
    with torch.no_grad():
        rot.R.add_(1e-3 * torch.randn_like(rot.R))
    assert rot.orthogonality_error() > 1e-4
    before = rot.R.clone()
    rot.reorthonormalize()
    assert rot.orthogonality_error() < 1e-5
    so_check(rot.R, tol=1e-5)
    assert (rot.R - before).abs().max() < 1e-2  # a projection, not a reset
    # periodic: drift injected after 2 of 5 steps is gone after the 5th
    for _ in range(2):
        rot.leader_step(list(conflicting(8, 64)), lr=0.1)
    with torch.no_grad():
        rot.R.add_(1e-3 * torch.randn_like(rot.R))
    for i in range(3):
        rot.leader_step(list(conflicting(8, 64, seed=i)), lr=0.1)
    assert rot.since_reortho == 0 and rot.orthogonality_error() < 1e-5
    # without it, fp32 drift is left alone
    lazy = Rotation((16, 2, 2), 64, reortho_every=0)
    with torch.no_grad():
        lazy.R.add_(1e-3 * torch.randn_like(lazy.R))
    for i in range(6):
        lazy.leader_step(list(conflicting(8, 64, seed=i)), lr=0.1)
    assert lazy.orthogonality_error() > 1e-4


def test_orthonormalize_keeps_sign_and_fixes_drift():
    R = haar_rotation(2, 32).double()
    assert torch.allclose(orthonormalize(R), R, atol=1e-6)
    so_check(orthonormalize(R + 1e-2 * torch.randn_like(R)), tol=1e-10)


# 4: identity is an exact no-op; any R keeps the tail, the norm, and is undone by rotate_back
@pytest.mark.parametrize("update", UPDATES)
def test_identity_noop_and_rotation_properties(update):
    torch.manual_seed(0)
    z = torch.randn(5, 8, 3, 3)
    rot = Rotation((8, 3, 3), 40, update=update)
    R = rot.matrices().detach()
    for k in range(2):
        assert torch.equal(rot.rotate(z, R[k]), z)
    Rh = haar_rotation(2, 40)
    m = rot.rotate(z, Rh[0])
    assert m.shape == z.shape
    assert torch.equal(m.flatten(1)[:, 40:], z.flatten(1)[:, 40:])
    assert torch.allclose(m.flatten(1).norm(dim=1), z.flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.allclose(rot.rotate_back(m.flatten(1), Rh[0]), z.flatten(1), atol=1e-5)
    # (C, H, W) order: coordinate j of vec(z) is channel j // 9, pixel j % 9
    assert torch.equal(m[:, 5], z[:, 5])
    assert not torch.allclose(m[:, 0], z[:, 0])


def test_rotation_of_first_d_matches_block_diagonal_matrix():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    rot = Rotation((4, 2, 2), 10)
    R = haar_rotation(1, 10)[0]
    full = torch.block_diag(R.double(), torch.eye(6, dtype=torch.float64))
    expected = (full @ z.flatten(1).T).T
    assert torch.allclose(rot.rotate(z.float(), R).flatten(1).double(), expected, atol=1e-5)


# 5: d > D fails at build time, by name, never clamped; d == D works; a run-time D change fails
def test_d_larger_than_latent_is_a_build_error():
    with pytest.raises(DistillerError) as err:
        Rotation((256, 2, 2), 2048)
    assert str(err.value) == (
        "rotation_dim d=2048 exceeds the student latent size D=C*H*W=256*2*2=1024; choose d <= 1024"
    )
    assert "\n" not in str(err.value)
    rot = Rotation((4, 2, 2), 16)
    assert rot.d == rot.D == 16
    with pytest.raises(DistillerError, match="latent changed"):
        rot.rotate(torch.randn(2, 4, 3, 3), rot.matrices())
    with pytest.raises(DistillerError, match=">= 1"):
        Rotation((4, 2, 2), 0)
    with pytest.raises(DistillerError, match="rotation_update"):
        Rotation((4, 2, 2), 4, update="householder")


def test_module_moves_like_any_module():
    for update in UPDATES:
        rot = Rotation((4, 2, 2), 16, update=update).to("cpu")
        rot.leader_step(list(conflicting(4, 16)), 0.1)
        assert rot.to(torch.device("cpu")) is rot and rot.matrices().device.type == "cpu"


def test_maps_are_fp32_outside_autocast():
    rot = Rotation((4, 2, 2), 16, update="cayley")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        R = rot.matrices()
        m = rot.rotate(torch.randn(2, 4, 2, 2).bfloat16(), R.detach()[0])
    assert R.dtype == torch.float32 and m.dtype == torch.bfloat16


# 8 (module level): the loss reaches only the leader state
def test_leader_gradient_touches_only_the_leader():
    rot = Rotation((4, 2, 2), 16, update="expm")
    z = torch.randn(3, 16, requires_grad=True)
    g = [torch.randn(3, 16), torch.randn(3, 16)]
    G, res = rot.leader_gradient(g)
    assert G.shape == rot.A.shape and rot.A.grad is None and z.grad is None
    assert float(G.abs().max()) > 0 and G.triu().abs().max() == 0  # only the strict lower triangle is free


# 9: on a conflicting problem the rotation loss falls and the gradient cosine rises
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adam", 0.01)])
def test_leader_aligns_conflicting_gradients(update, optimizer, lr):
    gr, gf = conflicting()
    assert float(F.cosine_similarity(gr, gf).mean()) < -0.3
    rot = Rotation((32, 1, 1), 32, update=update, optimizer=optimizer)
    losses = [float(rot.leader_step([gr, gf], lr).loss) for _ in range(150)]
    R = rot.matrices().detach()
    vr, vf = rot.rotate_back(gr, R[0]), rot.rotate_back(gf, R[1])
    assert losses[0] - losses[-1] > 1.0
    assert float(F.cosine_similarity(vr, vf).mean()) > 0.5
    so_check(R)


# 11 (metric), 15: target modes
def test_target_modes():
    torch.manual_seed(0)
    vr, vf = torch.randn(6, 20), torch.randn(6, 20)
    assert torch.allclose(target_vector([vr, vf], "mean"), (vr + vf) / 2)
    a = target_vector([vr, vf], "rotograd")
    b = target_vector([vr, 100 * vf], "rotograd")
    assert torch.allclose(F.normalize(a.flatten(), dim=0), F.normalize(b.flatten(), dim=0), atol=1e-6)
    # equal weights (alpha1 = alpha2): weighted and unweighted capture give the same target direction
    assert torch.allclose(target_vector([10 * vr, 10 * vf]), 10 * target_vector([vr, vf]))
    with pytest.raises(DistillerError):
        target_vector([vr, vf], "median")


# 16: non-finite captured gradients skip the step and leave R and the optimiser state alone
@pytest.mark.parametrize("update", UPDATES)
def test_non_finite_gradients_skip_the_step(update):
    rot = Rotation((4, 2, 2), 16, update=update, optimizer="adam")
    gr, gf = conflicting(4, 16)
    rot.leader_step([gr, gf], 0.1)
    state = {k: v.clone() for k, v in rot.state_dict().items() if isinstance(v, torch.Tensor)}
    opt = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in rot.opt.state_dict().items()}
    for bad in (float("inf"), float("nan")):
        g = gr.clone()
        g[1, 3] = bad
        res = rot.leader_step([g, gf], 0.1)
        assert res.skipped and not torch.isfinite(res.loss)
    for k, v in rot.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]), k
    assert rot.opt.t == opt["t"] and torch.equal(rot.opt.m, opt["m"])
    assert rot.skipped_steps == 2 and rot.leader_steps == 1


# 13: state_dict round trip, leader optimiser state included (through torch.save, weights_only)
@pytest.mark.parametrize("update", UPDATES)
def test_state_dict_round_trip_with_optimizer_state(update):
    torch.manual_seed(0)
    a = Rotation((4, 2, 2), 16, update=update, optimizer="adam")
    for i in range(3):
        a.leader_step(list(conflicting(4, 16, seed=i)), 0.05)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = Rotation((4, 2, 2), 16, update=update, optimizer="adam")
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a.matrices(), b.matrices())
    assert b.opt.t == 3 and b.leader_steps == 3 and torch.equal(a.opt.v, b.opt.v)
    assert b.opt.m is not a.opt.m  # loaded, not shared
    g = list(conflicting(4, 16, seed=9))
    a.leader_step(g, 0.05)
    b.leader_step(g, 0.05)
    assert torch.equal(a.matrices(), b.matrices())
    with pytest.raises(DistillerError, match="optimizer"):
        Rotation((4, 2, 2), 16, update=update, optimizer="sgd").load_state_dict(a.state_dict())


def test_leader_optimizer_sgd_is_eq16_and_adam_matches_torch():
    g = torch.randn(2, 5, 5)
    assert torch.equal(LeaderOptimizer("sgd").direction(g), g)
    p = torch.zeros(2, 5, 5, requires_grad=True)
    ref = torch.optim.Adam([p], lr=1.0)
    ours, x = LeaderOptimizer("adam"), torch.zeros(2, 5, 5)
    for i in range(4):
        grad = torch.randn(2, 5, 5)
        p.grad = grad.clone()
        ref.step()
        x -= ours.direction(grad)
    assert torch.allclose(x, p.detach(), atol=1e-6)


# 14: conformance with RotoGrad's formula, re-derived by hand (always runs)
def rotograd_reference_loss(R_full: torch.Tensor, grads_m: list[torch.Tensor]) -> torch.Tensor:
    """RotoGrad 0.1.6 ``_rep_grad`` for a flat (B, D) latent, written out: target
    v = mean_k(G_k * ||mean_k G_k||_F / ||G_k||_F) with G_k = R_k^T g~_k (the gradients
    w.r.t. the unrotated latent), loss sum_k sum_{n,i} (R_k v_n - g~_{k,n})_i^2 (its einsum
    sums over the batch too for 2-D latents)."""
    old = [g @ R_full[k].detach() for k, g in enumerate(grads_m)]  # rows: (R^T g~)^T = g~^T R
    mean = sum(old) / len(old)
    v = sum(g * (mean.norm() / g.norm()) for g in old) / len(old)
    return sum(torch.einsum("ij,ij->", v @ R_full[k].T - g, v @ R_full[k].T - g) for k, g in enumerate(grads_m))


@pytest.mark.parametrize("update", UPDATES)
def test_rotograd_mse_matches_hand_coded_rotograd_formula(update):
    torch.manual_seed(0)
    B, D, d = 6, 24, 16
    rot = Rotation((6, 2, 2), d, update=update, init="haar")
    if update != "riemannian":
        with torch.no_grad():
            rot.A.normal_(0, 0.3)
    grads = [torch.randn(B, D), 3 * torch.randn(B, D)]
    G, _ = rot.leader_gradient(grads, target="rotograd", loss="rotograd_mse")
    leaf = rot.R.clone().requires_grad_(True) if update == "riemannian" else rot.A
    Rk = leaf if update == "riemannian" else rot.matrices()
    R_full = torch.stack([torch.block_diag(Rk[k], torch.eye(D - d)) for k in range(2)])
    (ref,) = torch.autograd.grad(rotograd_reference_loss(R_full, grads), leaf)
    assert torch.allclose(G, ref, rtol=1e-4, atol=1e-6)


def skew(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M - M.mT)


@pytest.mark.parametrize("update", UPDATES)
def test_cosine_form_is_a_positive_per_sample_rescaling_of_rotograd_form(update):
    torch.manual_seed(0)
    rot = Rotation((6, 2, 2), 16, update=update, init="haar")
    g = [torch.randn(1, 24), torch.randn(1, 24)]
    target = torch.randn(1, 24)
    leaf = rot.R.clone().requires_grad_(True) if update == "riemannian" else rot.A
    Rs = leaf if update == "riemannian" else rot.matrices()
    for k in range(2):
        (gc,) = torch.autograd.grad(rot.rotation_loss([g[k]], Rs[k:k + 1], target, "cos"), leaf, retain_graph=True)
        (gm,) = torch.autograd.grad(rot.rotation_loss([g[k]], Rs[k:k + 1], target, "rotograd_mse"), leaf,
                                    retain_graph=True)
        if update == "riemannian":  # compare on the manifold: the Riemannian gradients skew(R^T G)
            gc, gm = skew(rot.R.mT @ gc), skew(rot.R.mT @ gm)
        assert float(F.cosine_similarity(gc.flatten(), gm.flatten(), dim=0)) > 1 - 1e-5


# 14 against the real package, where the optional extra is installed
def test_rotograd_mse_matches_reference_rotograd_package():
    rotograd = pytest.importorskip(
        "rotograd",
        reason="optional reference check: pip install -e '.[rotograd-ref]' (rotograd==0.1.6.0, geotorch==0.3.0)",
    )
    torch.manual_seed(0)
    B, n_in, D, d = 8, 10, 24, 16
    backbone = torch.nn.Linear(n_in, D)
    heads = [torch.nn.Linear(D, 3), torch.nn.Linear(D, 2)]
    ours_heads = [torch.nn.Linear(D, 3), torch.nn.Linear(D, 2)]
    for h, o in zip(heads, ours_heads):
        o.load_state_dict(h.state_dict())
    model = rotograd.RotateOnly(backbone, list(heads), d, burn_in_period=1)
    model.train()
    with torch.no_grad():  # a non-trivial point: random A on top of geotorch's Haar base
        for i in range(2):
            model.parametrizations[f"rotation_{i}"].original.normal_(0, 0.2)
    x, y0, y1 = torch.randn(B, n_in), torch.randn(B, 3), torch.randn(B, 2)
    preds = model(x)
    losses = [F.mse_loss(preds[0], y0), F.mse_loss(preds[1], y1)]
    model.backward(losses)
    ref = torch.stack([model.parametrizations[f"rotation_{i}"].original.grad for i in range(2)])

    rot = Rotation((D, 1, 1), d, update="expm")
    with torch.no_grad():
        for i in range(2):
            param = model.parametrizations[f"rotation_{i}"]
            rot.A[i].copy_(param.original)
            rot.base[i].copy_(param[0].base)
        z = backbone(x)
    R = rot.matrices()
    ms = [rot.rotate(z, R[i].detach()).requires_grad_(True) for i in range(2)]
    targets = (y0, y1)
    grads = [torch.autograd.grad(F.mse_loss(ours_heads[i](ms[i]), targets[i]), ms[i])[0] for i in range(2)]
    G, res = rot.leader_gradient(grads, R, target="rotograd", loss="rotograd_mse")
    assert torch.allclose(G, ref, rtol=1e-4, atol=1e-7), float((G - ref).abs().max())
    # and the backbone sees the same plain sum of R_k^T g~_k (RotateOnly's rep.backward)
    assert torch.allclose(sum(res.v), sum(model.original_grads), atol=1e-7)


def test_skew_of_uses_strict_lower_triangle():
    A = torch.arange(9.0).view(3, 3)
    S = skew_of(A)
    assert torch.equal(S, -S.T) and torch.equal(S.diagonal(), torch.zeros(3))
    assert S[1, 0] == A[1, 0] and S[0, 1] == -A[1, 0]


# DDP: the leader gradient is averaged across ranks (a one-rank gloo group exercises the path)
def test_distributed_leader_step_all_reduces_and_skips_together(tmp_path, monkeypatch):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gr, gf = conflicting(4, 16)
        plain = Rotation((4, 2, 2), 16)
        G_plain, _ = plain.leader_gradient([gr, gf])
        rot = Rotation((4, 2, 2), 16)
        assert not rot.leader_step([gr, gf], 0.1).skipped
        expected = torch.eye(16) @ torch.linalg.matrix_exp(-0.1 * 0.5 * (G_plain - G_plain.mT))
        assert torch.allclose(rot.R, expected, atol=1e-6)
        bad = gr.clone()
        bad[0, 0] = float("nan")
        R = rot.R.clone()
        assert rot.leader_step([bad, gf], 0.1).skipped and torch.equal(rot.R, R)
        # given the global batch, every rank bounds the averaged step alike: Taylor, no host read
        bounded = Rotation((4, 2, 2), 16)
        with host_reads_refused(monkeypatch, "a distributed leader step"):
            bounded.leader_step([gr, gf], 0.1, global_rows=len(gr))
        assert torch.allclose(bounded.R, expected, atol=1e-6)
        assert bounded._step_bound(0.1, 3, "cos", global_rows=8) == pytest.approx(0.1 * 1.01 * 8)  # world 1
        assert bounded._step_bound(0.1, 3, "cos") is None  # not given: matrix_exp
    finally:
        dist.destroy_process_group()


def test_rotation_products_run_in_full_fp32_and_restore_the_setting():
    from kdbench.rotation import ieee_fp32
    from kdbench.train.runtime import allow_tf32

    matmul = torch.backends.cuda.matmul
    old = matmul.fp32_precision
    allow_tf32(True)  # what make_runtime does on a GPU
    try:
        seen = []
        rot = Rotation((4, 2, 2), 16, update="riemannian")
        real = rot.opt.direction
        rot.opt.direction = lambda g, keep: (seen.append(matmul.fp32_precision), real(g, keep))[1]
        gr, gf = conflicting(4, 16)
        rot.leader_step([gr, gf], 0.1)
        assert seen == ["ieee"] and matmul.fp32_precision == "tf32"
        with pytest.raises(ValueError), ieee_fp32():
            raise ValueError
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = old
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's default


# the closed-form gradient of the default case (riemannian R, cosine L_R) equals autograd's
@pytest.mark.parametrize("d", [16, 10])  # d = D, and a tail of the latent outside the rotated block
@pytest.mark.parametrize("target", ["mean", "rotograd"])
def test_closed_form_cos_gradient_equals_autograd(d, target):
    torch.manual_seed(0)
    rot = Rotation((4, 2, 2), d, init="haar")
    gr, gf = conflicting(8, 16, seed=3)
    G, res = rot.leader_gradient([gr, gf], target=target)  # the closed form
    R = rot.R.detach().clone().requires_grad_(True)
    v = [rot.rotate_back(x, R[k].detach()) for k, x in enumerate((gr, gf))]
    tgt = target_vector(v, target)
    L = rot.rotation_loss([gr, gf], R, tgt, "cos")
    (expected,) = torch.autograd.grad(L, R)
    assert torch.allclose(G, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(res.loss, L.detach(), rtol=1e-6) and torch.allclose(res.target, tgt)
    assert all(torch.equal(a, b) for a, b in zip(res.v, v))


# the leader's matrix exponential without a host read: Taylor degree and squarings from a host bound
@pytest.mark.parametrize("degree", [4, 8, 12])
def test_taylor_exp_is_exact_to_float32_within_its_radius(degree):
    A = torch.randn(2, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    S = A - A.mT
    S = S * (taylor_radius(degree) / S.norm(dim=(1, 2)))[:, None, None]  # Frobenius norm at the radius
    exact = torch.linalg.matrix_exp(S)
    assert (taylor_exp(S, degree) - exact).abs().max() < 6e-8  # the truncation alone, in float64
    assert (taylor_exp(S.float(), degree).double() - exact).abs().max() < 2e-6


@pytest.mark.parametrize("scale", [1e-3, 0.5, 3.0, 40.0])  # no squaring .. several squarings
def test_exp_step_matches_matrix_exp_given_a_bound(scale):
    A = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(4))
    S = A - A.mT
    S = S * (scale / S.norm(dim=(1, 2)))[:, None, None]
    E = exp_step(S, bound=scale * 1.5)
    assert torch.allclose(E.double(), torch.linalg.matrix_exp(S.double()), atol=5e-6 * max(1.0, scale))
    assert torch.equal(exp_step(S, None), torch.stack([torch.linalg.matrix_exp(x) for x in S]))


def test_the_sgd_step_bound_holds():
    """The bound exp_step trusts: aligned, opposed and exploding gradients never give a step
    longer than it (a wrong bound would silently truncate the exponential)."""
    torch.manual_seed(5)
    B, d = 8, 12
    rot = Rotation((3, 2, 2), d)
    bound = rot._step_bound(1.0, B, "cos")
    worst = 0.0
    for i in range(60):
        gr = torch.randn(B, d) * (1e3 if i % 7 == 0 else 1e-3)
        gf = gr.clone() if i < 20 else -gr + 0.01 * torch.randn(B, d)
        if i == 59:  # every sample the same direction: the outer products add up
            gr = gf = torch.ones(B, d)
        G, _ = rot.leader_gradient([gr, gf])
        M = rot.R.mT @ G
        worst = max(worst, float(rot.opt.direction(0.5 * (M - M.mT)).norm(dim=(1, 2)).max()))
    assert worst <= bound
    assert rot._step_bound(1.0, B, "rotograd_mse") is None and Rotation((3, 2, 2), d, optimizer="adam")._step_bound(
        1.0, B, "cos") is None


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_leader_step_reads_nothing_back_to_the_host(monkeypatch, optimizer):
    """On a GPU every read of a tensor's value waits for the backward; the leader step takes
    its skip decision and counts on the device (tests/test_gpu.py checks CUDA's own syncs)."""
    rot = Rotation((4, 2, 2), 16, optimizer=optimizer)
    gr, gf = conflicting(4, 16)
    bad = gr.clone()
    bad[0, 0] = float("nan")
    with host_reads_refused(monkeypatch, "the leader step"):
        results = [rot.leader_step(g, 0.1) for g in ([gr, gf], [bad, gf], [gr, gf])]
    assert [bool(r.skipped) for r in results] == [False, True, False]
    assert int(rot.leader_steps) == 2 and int(rot.skipped_steps) == 1 and rot.opt.state_dict()["t"] == 2
    so_check(rot.R)
