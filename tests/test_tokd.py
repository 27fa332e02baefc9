"""The TOKD distiller plugin, through the public contract only (create_distiller, StepInfo).

Numbers refer to docs/design/rotation-design.md section 7. Most tests use a toy latent
(8, 4, 4) so they run in milliseconds; the smoke tests use res18t against a
res10t dual-branch teacher at 48 px.
"""
from __future__ import annotations

import copy
import gc
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import DistillerError, StepInfo, available_distillers, create_distiller
from kdbench.rotation import haar_rotation

S_SHAPES = {"stage1": (4, 8, 8), "stage4": (8, 4, 4), "pooled": (8,)}
T_SHAPES = {"rgb.proj": (6, 4, 4), "fre.proj": (6, 4, 4), "rgb.stage4": (16, 4, 4)}
B = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def make(mode: str = "both", s_shapes=S_SHAPES, t_shapes=T_SHAPES, seed: int = 0, **hp):
    torch.manual_seed(seed)
    return create_distiller("tokd", mode, s_shapes, t_shapes, **hp)


def step_info(step: int = 0, log: bool = True, lr: float = 1e-3, base: float = 1e-3) -> StepInfo:
    return StepInfo(step=step, epoch=step // 10, epochs=15, steps_per_epoch=10, student_lr=lr, base_lr=base, log=log)


class Toy(nn.Module):
    """A student whose stage4 is (8, 4, 4) and whose classifier pools stage4 (unrotated)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        z = torch.relu(self.body(x))
        return self.fc(z.mean((2, 3))), {"stage4": z}


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, 4, 4, generator=g)
    teacher = {"rgb.proj": torch.randn(B, 6, 4, 4, generator=g), "fre.proj": torch.randn(B, 6, 4, 4, generator=g)}
    return x, teacher, torch.randint(0, 2, (B,), generator=g)


def train_step(student, dist, seed=0, step=0, log=True):
    x, teacher, y = batch(seed)
    logits, taps = student(x)
    terms = dist(taps, teacher, y)
    loss = F.cross_entropy(logits, y) + sum(terms.values())
    student.zero_grad()
    dist.zero_grad()
    loss.backward()
    return terms, dist.after_backward(step_info(step, log))


# -- contract, hyper-parameters, taps ------------------------------------------
def test_registered_with_documented_defaults():
    assert "tokd" in available_distillers()
    defaults = {k: h.value for k, h in available_distillers()["tokd"].defaults.items()}
    assert defaults["alpha"] == 10.0 and defaults["rotation_dim"] == 1024
    assert defaults["rotation_update"] == "riemannian" and defaults["rotation_optimizer"] == "sgd"
    assert defaults["rotation_target"] == "mean" and defaults["rotation_loss"] == "cos"
    assert defaults["projector"] is True and defaults["rotation"] is True and defaults["branches"] == "auto"
    assert all(h.source for h in available_distillers()["tokd"].defaults.values())
    d = make(rotation_dim=64)
    assert d.rotation_active and d.leader_parameters() == ()


def test_hparam_errors_and_coercion():
    with pytest.raises(DistillerError, match="unknown hyper-parameter"):
        make(rotation_size=4)
    assert make(rotation="false", rotation_dim=64).rotation_active is False
    assert make(rotation="true", rotation_dim="64").rotation_active is True
    for bad in ({"rotation_update": "qr"}, {"rotation_optimizer": "rmsprop"}, {"rotation_target": "sum"},
                {"rotation_loss": "l1"}, {"branches": "all"}, {"rotation_gamma": 1.5}, {"rotation_dim": -1},
                {"rotation_init": "random"}):
        with pytest.raises(DistillerError):
            make(rotation_dim=64, **bad) if "rotation_dim" not in bad else make(**bad)
    with pytest.raises(DistillerError, match="mode 'both'"):
        make("rgb", branches="both")
    with pytest.raises(DistillerError, match="has no mode"):
        make("fre")
    with pytest.raises(DistillerError, match="'fre.proj'"):
        make(t_shapes={"rgb.proj": (6, 4, 4)}, rotation_dim=64)


@pytest.mark.parametrize(
    "mode,hp,taps,rotation",
    [
        ("rgb", {}, ["rgb.proj"], False),
        ("rgb", {"branches": "rgb", "rotation": True}, ["rgb.proj"], False),
        ("both", {}, ["rgb.proj", "fre.proj"], True),
        ("both", {"branches": "fre"}, ["fre.proj"], False),
        ("both", {"branches": "rgb"}, ["rgb.proj"], False),
        ("both", {"rotation": False}, ["rgb.proj", "fre.proj"], False),
        ("both", {"rotation_dim": 0}, ["rgb.proj", "fre.proj"], False),
    ],
)
def test_taps_branches_and_rotation_switch(mode, hp, taps, rotation):
    d = make(mode, **{"rotation_dim": 64, **hp})
    assert d.student_taps() == ["stage4"] and d.teacher_taps() == taps
    assert d.branches == tuple(t.split(".")[0] for t in taps)
    assert d.rotation_active is rotation
    x, teacher, y = batch()
    _, st = Toy()(x)
    assert sorted(d(st, teacher, y)) == sorted(f"kd_{t.split('.')[0]}" for t in taps)


# 5: d > D fails at build time with a one-line message naming C, H, W and D
def test_rotation_dim_exceeding_the_latent_fails_at_build():
    from kdbench.models.students import build_student
    from kdbench.models.taps import probe_shapes

    shapes = probe_shapes(build_student("res18t"), 64)
    assert shapes["stage4"] == (256, 2, 2)
    t_shapes = {"rgb.proj": (256, 2, 2), "fre.proj": (256, 2, 2)}
    with pytest.raises(DistillerError) as err:
        create_distiller("tokd", "both", shapes, t_shapes, rotation_dim=2048)
    assert str(err.value) == (
        "rotation_dim d=2048 exceeds the student latent size D=C*H*W=256*2*2=1024; choose d <= 1024"
    )
    assert create_distiller("tokd", "both", shapes, t_shapes, rotation_dim=1024).rot.d == 1024  # d == D
    # the default d = 1024 against the toy latent D = 128 is the same error, never a silent clamp
    with pytest.raises(DistillerError, match="D=C\\*H\\*W=8\\*4\\*4=128"):
        make()
    # rotation off, or rgb mode (no rotation), does not care about d
    assert create_distiller("tokd", "both", shapes, t_shapes, rotation_dim=2048, rotation=False).rot is None
    assert create_distiller("tokd", "rgb", shapes, t_shapes, rotation_dim=2048).rot is None


# -- the loss --------------------------------------------------------------------
def test_distance_of_normalised_projections_weighted_by_alpha():
    """sq_l2 = 2 - 2 cos per sample, batch-averaged (free of the map's size); mse = its mean over elements."""
    from kdbench_plugins.tokd import kd_distance

    s, t = torch.randn(3, 6, 4, 4), torch.randn(3, 6, 4, 4)
    cos = F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)
    assert torch.allclose(kd_distance(s, t, "sq_l2"), (2 - 2 * cos).mean())
    assert torch.allclose(kd_distance(s, t, "mse"), (2 - 2 * cos).mean() / (6 * 4 * 4))
    for form in ("sq_l2", "mse"):
        assert torch.allclose(kd_distance(s, 7 * t, form), kd_distance(s, t, form))  # per-sample scale-free
    big_s, big_t = s.repeat(1, 1, 4, 4), t.repeat(1, 1, 4, 4)  # the same maps at 16x the resolution
    assert torch.allclose(kd_distance(big_s, big_t, "sq_l2"), kd_distance(s, t, "sq_l2"), atol=1e-6)
    assert torch.allclose(kd_distance(big_s, big_t, "mse") * 16, kd_distance(s, t, "mse"), atol=1e-6)
    with pytest.raises(DistillerError, match="distance='l1' for 'tokd': choose one of: sq_l2, mse"):
        make("rgb", distance="l1")
    x, teacher, y = batch()
    _, st = Toy()(x)
    t10 = make("rgb")(st, teacher, y)["kd_rgb"]
    t200 = make("rgb", alpha=200)(st, teacher, y)["kd_rgb"]
    assert torch.allclose(t200, 20 * t10)


def test_projector_architectures_and_the_no_projector_adapter():
    d = make(rotation_dim=64)
    convs = lambda m: [c for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    bns = lambda m: [c for c in m.modules() if isinstance(c, nn.BatchNorm2d)]  # noqa: E731
    assert len(convs(d.proj["rgb"])) == 2 and len(bns(d.proj["rgb"])) == 2
    assert len(convs(d.proj["fre"])) == 3 and len(bns(d.proj["fre"])) == 3
    assert isinstance(d.proj["rgb"][-1], nn.ReLU) and d.proj["rgb"][0].in_channels == 8
    assert d.proj["fre"][-3].out_channels == 6
    off = make(projector=False, rotation_dim=64)
    for b in ("rgb", "fre"):
        p = off.proj[b]
        assert isinstance(p, nn.Conv2d) and p.kernel_size == (1, 1) and (p.in_channels, p.out_channels) == (8, 6)


@pytest.mark.parametrize("t_hw,s_hw", [((2, 2), (4, 4)), ((8, 8), (4, 4)), ((5, 3), (4, 4))])
def test_spatial_sizes_are_aligned_by_pooling_the_larger_map(t_hw, s_hw):
    t_shapes = {"rgb.proj": (6, *t_hw), "fre.proj": (6, *t_hw)}
    d = make(t_shapes=t_shapes, rotation_dim=64)
    hw = (min(t_hw[0], s_hw[0]), min(t_hw[1], s_hw[1]))
    reductions = d.teacher_reductions()
    x, _, y = batch()
    _, st = Toy()(x)
    raw = {k: torch.randn(B, 6, *t_hw) for k in t_shapes}
    if t_hw[0] > hw[0] or t_hw[1] > hw[1]:
        assert sorted(reductions) == ["fre.proj", "rgb.proj"]
        reduced = {k: reductions[k](v) for k, v in raw.items()}
        assert reduced["rgb.proj"].shape[-2:] == hw
        a, b = d(st, raw, y), d(st, reduced, y)  # the forward accepts cached (reduced) and online (raw) maps
        assert all(torch.allclose(a[k], b[k]) for k in a)
    else:
        assert reductions == {}
        a = d(st, raw, y)
    assert all(torch.isfinite(v) for v in a.values())


# -- the single backward, hooks, isolation --------------------------------------
@pytest.mark.parametrize("update", ["riemannian", "expm", "cayley"])
def test_hook_capture_equals_per_task_autograd(update):
    d = make(rotation_dim=64, rotation_update=update, rotation_init="haar", alpha=3.0)
    x, teacher, y = batch()
    z = torch.randn(B, 8, 4, 4, requires_grad=True)
    head = nn.Linear(8, 2)
    terms = d({"stage4": z}, teacher, y)
    per_task = {k: torch.autograd.grad(v, z, retain_graph=True)[0] for k, v in terms.items()}
    ce = F.cross_entropy(head(z.mean((2, 3))), y)
    (ce_grad,) = torch.autograd.grad(ce, z, retain_graph=True)
    (ce + sum(terms.values())).backward()
    R = d.rot.matrices().detach()
    for k, b in enumerate(("rgb", "fre")):
        v = d.rot.rotate_back(d._cap[b].flatten(1), R[k]).view_as(z)  # R_k^T (alpha * g~_k)
        assert torch.allclose(v, per_task[f"kd_{b}"], atol=1e-6)
    assert torch.allclose(z.grad, ce_grad + per_task["kd_rgb"] + per_task["kd_fre"], atol=1e-6)


# 7: R = I reproduces plain KD gradients exactly
@pytest.mark.parametrize("update", ["riemannian", "expm", "cayley"])
def test_identity_rotation_reproduces_plain_kd_gradients(update):
    torch.manual_seed(0)
    student = Toy()
    plain, rotated = make(rotation=False, seed=1), make(rotation_dim=100, rotation_update=update, seed=1)
    s_plain, s_rot = copy.deepcopy(student), copy.deepcopy(student)
    t_plain, _ = train_step(s_plain, plain, log=False)
    t_rot, _ = train_step(s_rot, rotated, log=False)
    assert all(torch.equal(t_plain[k], t_rot[k]) for k in t_plain)
    for (n, p), q in zip(list(s_plain.named_parameters()) + list(plain.proj.named_parameters()),
                         list(s_rot.parameters()) + list(rotated.proj.parameters())):
        assert torch.equal(p.grad, q.grad), n


# 8: the student loss never reaches R, the rotation loss never reaches the student
@pytest.mark.parametrize("update", ["riemannian", "expm", "cayley"])
def test_isolation_both_ways(update):
    student = Toy()
    d = make(rotation_dim=64, rotation_update=update, rotation_lr=0.5)
    before = copy.deepcopy(d.rot.state_dict())
    x, teacher, y = batch()
    logits, taps = student(x)
    loss = F.cross_entropy(logits, y) + sum(d(taps, teacher, y).values())
    loss.backward()
    for k, v in d.rot.state_dict().items():  # backward moved nothing of the rotation
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, before[k])
    assert all(p.grad is None for p in d.leader_parameters())
    grads = {n: p.grad.clone() for n, p in list(student.named_parameters()) + list(d.proj.named_parameters())}
    d.after_backward(step_info())
    for n, p in list(student.named_parameters()) + list(d.proj.named_parameters()):
        assert torch.equal(p.grad, grads[n]), n
    assert all(p.grad is None for p in d.leader_parameters())
    assert float(d.rot.angles().min()) > 0  # but R moved


def test_no_second_backward_through_the_network():
    """The leader step runs no backward through the student: a gradient hook on its conv weight counts."""
    student = Toy()
    calls = []
    student.body.weight.register_hook(lambda g: calls.append(1))
    d = make(rotation_dim=64)
    train_step(student, d)
    assert len(calls) == 1


# 10: the classifier reads the unrotated S_B(x): predictions do not depend on the distiller
def test_inference_path_ignores_rotation_and_projectors():
    from kdbench.models.students import build_student
    from kdbench.models.taps import probe_shapes

    torch.manual_seed(0)
    student = build_student("res18t")
    shapes = probe_shapes(student, 48)
    t_shapes = {"rgb.proj": (16, 2, 2), "fre.proj": (16, 2, 2)}
    d = create_distiller("tokd", "both", shapes, t_shapes, rotation_dim=256, rotation_lr=1.0)
    x = torch.randn(2, 3, 48, 48)
    teacher = {k: torch.randn(2, *v) for k, v in t_shapes.items()}
    logits, taps = student(x)
    (F.cross_entropy(logits, torch.tensor([0, 1])) + sum(d(taps, teacher, torch.tensor([0, 1])).values())).backward()
    d.after_backward(step_info())
    student.eval()
    with torch.no_grad():
        ref = student(x)[0]
        assert torch.equal(student.net(x), ref)  # the deployable net alone
        d.rot.R.copy_(haar_rotation(2, 256))
        assert torch.equal(student(x)[0], ref)
        del d
        gc.collect()
        assert torch.equal(student(x)[0], ref)
    keys = list(student.state_dict())
    assert not any("rot" in k or "proj" in k for k in keys)


# 12: Stackelberg schedule: eta_R / eta_S strictly decreases and goes to 0
def test_schedule_ratio_goes_to_zero():
    d = make(rotation_dim=64)
    steps_per_epoch, base = 50, 1e-4
    ratios, lrs = [], []
    for t in range(15 * steps_per_epoch):
        epoch = t // steps_per_epoch
        student_lr = base * 0.1 ** (epoch // 5)  # StepLR(5, 0.1)
        info = StepInfo(t, epoch, 15, steps_per_epoch, student_lr, base)
        lrs.append(d.rotation_lr(info))
        ratios.append(lrs[-1] / student_lr)
    assert all(b < a for a, b in zip(ratios, ratios[1:]))
    assert ratios[-1] < 0.01 * ratios[0]
    assert lrs[0] == d.hp["rotation_lr"]
    # eta_R decays faster than eta_S at every step
    for t in (1, 100, 400, 749):
        s_lr = base * 0.1 ** ((t // steps_per_epoch) // 5)
        assert lrs[t] / lrs[0] < s_lr / base


# 13: state_dict round trip, the leader optimiser state included (extra_state)
@pytest.mark.parametrize("update", ["riemannian", "expm"])
def test_state_dict_round_trip_resumes_exactly(update):
    student = Toy()
    hp = dict(rotation_dim=64, rotation_update=update, rotation_optimizer="adam", rotation_lr=1e-2)
    a = make(**hp)
    for i in range(2):
        train_step(student, a, seed=i, step=i, log=False)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert "rot._extra_state" in state and state["rot._extra_state"]["opt"]["t"] == 2
    b = make(seed=5, **hp)
    b.load_state_dict(state)
    assert b.rot.opt.t == 2 and b.rot.leader_steps == 2
    s2 = copy.deepcopy(student)
    train_step(student, a, seed=7, step=2, log=False)
    train_step(s2, b, seed=7, step=2, log=False)
    assert torch.equal(a.rot.matrices(), b.rot.matrices())


# 17: optimiser membership: every parameter in exactly one optimiser
@pytest.mark.parametrize("update", ["riemannian", "expm", "cayley"])
def test_optimizer_membership(update):
    d = make(rotation_dim=64, rotation_update=update)
    leader, student = list(d.leader_parameters()), d.student_parameters()
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(leader).isdisjoint(ids(student))
    assert ids(leader) | ids(student) == ids(d.parameters())
    if update == "riemannian":
        assert leader == [] and "rot.R" in dict(d.named_buffers())
    else:
        assert leader == [d.rot.A]
    opt = torch.optim.Adam(list(Toy().parameters()) + student, 1e-3)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids(leader).isdisjoint(in_opt)
    assert make("rgb").leader_parameters() == ()


# 16: non-finite captured gradients skip the rotation step
def test_non_finite_captured_gradient_skips_the_rotation_step():
    student = Toy()
    d = make(rotation_dim=64, rotation_lr=1.0)
    x, teacher, y = batch()
    logits, taps = student(x)
    (F.cross_entropy(logits, y) + sum(d(taps, teacher, y).values())).backward()
    d._cap["fre"] = d._cap["fre"].clone()
    d._cap["fre"][0, 0, 0, 0] = float("inf")
    R = d.rot.R.clone()
    diag = d.after_backward(step_info())
    assert torch.equal(d.rot.R, R) and diag["rot_skipped"] == 1.0 and d.rot.leader_steps == 0
    train_step(student, d)
    assert not torch.equal(d.rot.R, R) and d.rot.leader_steps == 1


# 11 + Fig. 4 diagnostics ------------------------------------------------------
def test_fig4_diagnostics_with_rotation():
    student = Toy()
    d = make(rotation_dim=64)
    _, diag = train_step(student, d, log=True)
    expected = {"grad_cos", "grad_cos_full", "grad_cos_rot", "rot_loss", "rot_angle_r", "rot_angle_f",
                "rot_lr_ratio"}
    assert expected <= set(diag) and all(isinstance(v, float) for v in diag.values())
    assert -1.0 <= diag["grad_cos_full"] <= 1.0 and diag["rot_lr_ratio"] == pytest.approx(1.0)
    assert diag["rot_orth_err"] < 1e-5
    assert train_step(student, d, log=False)[1] is None  # only on log steps
    assert make("rgb").after_backward(step_info()) is None  # one branch: nothing to compare


def test_fig4_diagnostics_without_rotation_match_per_branch_autograd():
    d = make(rotation=False, rotation_dim=64)
    x, teacher, y = batch()
    z = torch.randn(B, 8, 4, 4, requires_grad=True)
    terms = d({"stage4": z}, teacher, y)
    gr, gf = (torch.autograd.grad(terms[k], z, retain_graph=True)[0].flatten(1) for k in ("kd_rgb", "kd_fre"))
    sum(terms.values()).backward()
    diag = d.after_backward(step_info())
    assert set(diag) == {"grad_cos", "grad_cos_full", "grad_cos_rot"}
    assert diag["grad_cos_full"] == pytest.approx(float(F.cosine_similarity(gr, gf).mean()), abs=1e-6)
    assert diag["grad_cos_rot"] == pytest.approx(float(F.cosine_similarity(gr[:, :64], gf[:, :64]).mean()), abs=1e-6)


def test_fig4_metric_sanity():
    d = make(rotation=False, rotation_dim=64)
    g = torch.randn(B, 8, 4, 4)
    for other, expected in ((-g, -1.0), (g, 1.0), (5 * g, 1.0)):
        d._cap = {"rgb": g, "fre": other}
        assert d.after_backward(step_info())["grad_cos_full"] == pytest.approx(expected, abs=1e-6)


# -- end-to-end smoke with a real student and teacher ------------------------------
@pytest.fixture(scope="module")
def real_setup():
    from kdbench.models.students import build_student
    from kdbench.models.taps import probe_shapes
    from kdbench.models.teacher import DualBranchTeacher

    torch.manual_seed(0)
    teacher = DualBranchTeacher("res10t", image_size=48).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        _, t_taps = teacher(x)
    return probe_shapes(build_student("res18t"), 48), probe_shapes(teacher, 48), x, y, t_taps


@pytest.mark.parametrize(
    "mode,hp,keys",
    [
        ("rgb", {}, {"kd_rgb"}),
        ("both", {}, {"kd_rgb", "kd_fre"}),
        ("both", {"rotation": False}, {"kd_rgb", "kd_fre"}),
        ("both", {"projector": False}, {"kd_rgb", "kd_fre"}),
        ("both", {"branches": "fre"}, {"kd_fre"}),
        ("both", {"rotation_update": "cayley", "rotation_optimizer": "adam", "rotation_lr": 1e-5},
         {"kd_rgb", "kd_fre"}),
    ],
)
def test_end_to_end_step_with_res18t(real_setup, mode, hp, keys):
    from kdbench.models.students import build_student

    s_shapes, t_shapes, x, y, t_taps = real_setup
    torch.manual_seed(0)
    student = build_student("res18t")
    d = create_distiller("tokd", mode, s_shapes, t_shapes, rotation_dim=256, **hp)
    teacher_in = {k: t_taps[k] for k in d.teacher_taps()}
    opt = torch.optim.Adam(list(student.parameters()) + d.student_parameters(), 1e-3)
    logits, taps = student(x)
    terms = d({k: taps[k] for k in d.student_taps()}, teacher_in, y)
    assert set(terms) == keys
    loss = F.cross_entropy(logits, y) + sum(terms.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    before = student.net.fc.weight.detach().clone()
    diag = d.after_backward(StepInfo(0, 0, 15, 100, 1e-3, 1e-3, log=True))
    opt.step()
    assert not torch.equal(student.net.fc.weight, before)
    if len(keys) == 2:
        assert diag is not None and -1 <= diag["grad_cos_full"] <= 1
        if d.rotation_active:
            assert diag["rot_skipped"] == 0 and float(d.rot.angles().min()) > 0
    else:
        assert diag is None


def test_bf16_autocast_step():
    student = Toy()
    d = make(rotation_dim=64, rotation_lr=0.5)
    x, teacher, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, taps = student(x)
        terms = d(taps, teacher, y)
        loss = F.cross_entropy(logits.float(), y) + sum(terms.values())
    loss.backward()
    diag = d.after_backward(step_info())
    assert d.rot.R.dtype == torch.float32 and diag["rot_skipped"] == 0 and diag["rot_orth_err"] < 1e-5
    assert float(d.rot.angles().min()) > 0


def test_with_the_trainer_logs_fig4_and_resumes_the_leader_exactly(tmp_path):
    """kdbench.train.trainer.fit end to end: diagnostics reach the history; a run resumed from its
    epoch checkpoint ends with the same rotation (and Adam state) as an uninterrupted one."""
    from kdbench.config import TrainConfig
    from kdbench.data.frames import FrameSet
    from kdbench.models.students import build_student
    from kdbench.models.taps import probe_shapes
    from kdbench.train.trainer import fit

    g = torch.Generator().manual_seed(0)

    def frames(n):
        return FrameSet(torch.randint(0, 256, (n, 3, 48, 48), generator=g, dtype=torch.uint8),
                        torch.arange(n) % 2)

    train, val, test = frames(16), frames(8), frames(8)
    t_shapes = {"rgb.proj": (16, 2, 2), "fre.proj": (16, 2, 2)}
    feats = {k: torch.randn(16, *v, generator=g) for k, v in t_shapes.items()}
    hp = dict(rotation_dim=256, rotation_optimizer="adam", rotation_lr=1e-3)

    def run(epochs, checkpoint=None):
        torch.manual_seed(0)
        student = build_student("res18t")
        d = create_distiller("tokd", "both", probe_shapes(student, 48), t_shapes, **hp)
        cfg = TrainConfig(image_size=48, epochs=epochs, batch_size=8, eval_batch_size=16, log_every=1)
        res = fit(student, train, val, test, cfg, seed=0, distiller=d,
                  features=feats,
                  checkpoint=checkpoint, identity="tokd-test", progress=False)
        return d, res

    straight, res = run(2)
    diag = res.history["diagnostics"]
    assert len(diag) == 4 and all({"grad_cos", "grad_cos_rot", "rot_loss", "rot_angle_r"} <= set(x) for x in diag)
    assert straight.rot.leader_steps == 4 and straight.rot.opt.t == 4
    ckpt = tmp_path / "state.pt"
    run(1, ckpt)
    resumed, _ = run(2, ckpt)
    assert resumed.rot.leader_steps == 4 and resumed.rot.opt.t == 4
    assert torch.equal(resumed.rot.R, straight.rot.R)
    assert torch.equal(resumed.rot.opt.m, straight.rot.opt.m)
