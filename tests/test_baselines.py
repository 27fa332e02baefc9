"""AT, PKT, SP, VID and FitNet plugins: golden values (torchdistill, the papers' formulas in NumPy,
closed form),
independent references, shape mismatches, parameter hygiene, Both-mode
separation and a smoke training step for every method x mode x student."""
from __future__ import annotations

import importlib
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torchdistill.losses.mid_level import ATLoss, PKTLoss, SPKDLoss, VIDLoss
from torchdistill.models.adaptation import ConvReg
from torchdistill.models.wrapper import Regressor4VID

from kdbench import DistillerError, available_distillers, create_distiller
from kdbench.connectors import resize
from kdbench.models.students import STUDENTS, build_student
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher

import reference_losses as ref  # tests/ has no __init__.py, so pytest puts it on sys.path

METHODS = ("at", "pkt", "sp", "vid", "fitnet")
MODES = ("rgb", "both")
STAGES = ("stage1", "stage2", "stage3", "stage4")
IMAGE = 48
# (student C,H,W), (teacher C,H,W): matched grid, smaller, larger and mixed teacher grids.
SHAPE_CASES = {
    "same-hw": ((8, 6, 5), (12, 6, 5)),
    "teacher-smaller": ((24, 7, 9), (40, 5, 6)),
    "teacher-larger": ((24, 7, 9), (40, 11, 13)),
    "mixed": ((24, 7, 9), (40, 11, 6)),
}


pytestmark = pytest.mark.usefixtures("one_thread")


# -- helpers -------------------------------------------------------------------
def shapes(s_map, t_map, s_dim=16, t_dim=24):
    s = {st: s_map for st in STAGES} | {"pooled": (s_dim,)}
    t = {f"{b}.{st}": t_map for b in ("rgb", "fre") for st in STAGES}
    return s, t | {"rgb.pooled": (t_dim,), "fre.pooled": (t_dim,)}


def random_taps(shape_map, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((n, *v), generator=g) for k, v in shape_map.items()}


def reduce(d, raw):
    """What the trainer does: keep the declared teacher taps, apply their reductions."""
    red = d.teacher_reductions()
    return {k: red[k](raw[k]) if k in red else raw[k] for k in d.teacher_taps()}


def run(d, s_raw, t_raw):
    labels = torch.zeros(len(s_raw["pooled"]), dtype=torch.long)
    return d({k: s_raw[k] for k in d.student_taps()}, reduce(d, t_raw), labels)


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


def io(d):
    return {k: {"output": v} for k, v in d.items()}


def reference(method, d, s, t, branch):
    """The independent reference of ``method`` for one teacher branch, in the distiller's weighting."""
    beta = d.hp["beta"]
    if method == "at":
        return beta * ref.ref_at([s[st] for st in STAGES], [t[f"{branch}.{st}"] for st in STAGES], d.hp["p"])
    if method == "pkt":
        return beta * ref.ref_pkt(s["pooled"], t[f"{branch}.pooled"], d.hp["eps"])
    if method == "sp":
        return beta * ref.ref_sp(s["stage4"], t[f"{branch}.stage4"])
    if method == "vid":
        total = 0.0
        for st in STAGES:
            r = d.regressors[branch][st]
            ws = [r.regressor[i].weight.detach() for i in (0, 2, 4)]
            total = total + ref.ref_vid(s[st], t[f"{branch}.{st}"], ws, r.alpha.detach(), d.hp["eps"])
        return beta * total
    r = d.regressors[branch]
    return beta * ref.ref_fitnet(s["stage2"], t[f"{branch}.stage2"], r.conv.weight.detach(), r.conv.bias.detach(),
                                 r.bn.weight.detach(), r.bn.bias.detach(), r.bn.eps)


# -- registry ------------------------------------------------------------------
def test_registered_with_both_modes():
    found = available_distillers()
    for m in METHODS:
        assert m in found and found[m].modes == ("rgb", "both")
        assert "beta" in found[m].defaults and all(h.source for h in found[m].defaults.values())


def test_defaults():
    expect = {"at": 1000.0, "pkt": 30000.0, "sp": 3000.0, "vid": 1.0, "fitnet": 100.0}
    found = available_distillers()
    assert {m: found[m].defaults["beta"].value for m in METHODS} == expect
    assert found["at"].defaults["p"].value == 2 and found["pkt"].defaults["eps"].value == 1e-7
    assert found["vid"].defaults["init_pred_var"].value == 5.0 and found["vid"].defaults["eps"].value == 1e-5
    assert found["fitnet"].defaults["hint"].value == "stage2"


# -- spatial alignment ---------------------------------------------------------
def test_resize_closed_form():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    assert resize(x, (1, 2)).flatten().tolist() == [1.5, 3.5]
    y = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    close(resize(y, (1, 4)).flatten(), [1.0, 1.25, 1.75, 2.0])
    assert resize(x, (1, 4)) is x


@pytest.mark.parametrize("src,dst", [((7, 9), (5, 6)), ((7, 9), (11, 13)), ((7, 9), (11, 6)), ((5, 5), (3, 8))])
def test_resize_matches_reference(src, dst):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *src, dtype=torch.float64)  # float32 rounding sat at the tolerance's edge
    close(resize(x, dst), ref.ref_resize(x, dst))


# -- golden values: torchdistill on identical tensors ---------------------------
def test_at_equals_torchdistill():
    s_sh, t_sh = shapes((8, 6, 5), (12, 6, 5))
    s, t = random_taps(s_sh), random_taps(t_sh, seed=1)
    d = create_distiller("at", "rgb", s_sh, t_sh)
    pairs = {st: {"student": {"io": "output", "path": st}, "teacher": {"io": "output", "path": f"rgb.{st}"}, "weight": 1}
             for st in STAGES}
    golden = ATLoss(pairs, mode="code")(io(s), io(t))
    close(run(d, s, t)["kd_rgb"], 1000 * golden)


def test_pkt_golden_from_the_paper():
    """Against a NumPy derivation of Passalis & Tefas (tests/reference_losses.np_pkt): the plugin
    calls torchdistill's PKTLoss, so torchdistill is checked against it too, not against the plugin."""
    s_sh, t_sh = shapes((8, 6, 5), (12, 6, 5), s_dim=64, t_dim=256)
    s, t = random_taps(s_sh, n=8), random_taps(t_sh, n=8, seed=1)
    d = create_distiller("pkt", "rgb", s_sh, t_sh)
    golden = ref.np_pkt(s["pooled"].numpy(), t["rgb.pooled"].numpy(), d.hp["eps"])
    close(run(d, s, t)["kd_rgb"], 30000 * golden)
    close(PKTLoss("pooled", "output", "rgb.pooled", "output")(io(s), io(t)), golden)


def test_sp_golden_from_the_paper():
    """Against a NumPy derivation of Tung & Mori's Eq. 1-4 (tests/reference_losses.np_sp)."""
    s_sh, t_sh = shapes((8, 6, 5), (12, 3, 4))
    s, t = random_taps(s_sh, n=8), random_taps(t_sh, n=8, seed=1)
    d = create_distiller("sp", "rgb", s_sh, t_sh)
    close(run(d, s, t)["kd_rgb"], 3000 * ref.np_sp(s["stage4"].numpy(), t["rgb.stage4"].numpy()))


def test_torchdistill_sp_normalises_rows_by_l1():
    """Pins the upstream discrepancy documented in kdbench_plugins/sp.py and docs/baselines.md:
    on the closed-form case below, L1 rows give 1/4 where the paper's L2 rows give 1 - sqrt2/2."""
    s = {"stage4": torch.eye(2).view(2, 2, 1, 1)}
    t = {"rgb.stage4": torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)}
    stock = SPKDLoss("stage4", "rgb.stage4", reduction="batchmean")(io(s), io(t))
    close(stock, 0.25)


def test_vid_equals_torchdistill():
    s_sh, t_sh = shapes((8, 6, 5), (12, 6, 5))
    s, t = random_taps(s_sh), random_taps(t_sh, seed=1)
    d = create_distiller("vid", "rgb", s_sh, t_sh)
    pairs, s_io = {}, {}
    for st in STAGES:
        mine = d.regressors["rgb"][st]
        theirs = Regressor4VID(8, 12, 12, eps=1e-5, init_pred_var=5.0)
        close(theirs.soft_plus_param, mine.alpha)  # same initial variance parameter
        theirs.regressor.load_state_dict(mine.regressor.state_dict())
        with torch.no_grad():
            mine.alpha.uniform_(-1, 3)
            theirs.soft_plus_param.copy_(mine.alpha)
        s_io[f"reg.{st}"] = {"output": theirs(s[st])}
        pairs[st] = {"student": {"io": "output", "path": f"reg.{st}"}, "teacher": {"io": "output", "path": f"rgb.{st}"}}
    close(run(d, s, t)["kd_rgb"], VIDLoss(pairs)(s_io, io(t)))


@pytest.mark.parametrize("kernel", [1, 3])
def test_fitnet_equals_torchdistill_convreg(kernel):
    s_sh, t_sh = shapes((8, 6, 5), (12, 6, 5))
    s, t = random_taps(s_sh), random_taps(t_sh, seed=1)
    d = create_distiller("fitnet", "rgb", s_sh, t_sh, kernel=kernel)
    convreg = ConvReg(8, 12, kernel_size=kernel, stride=1, padding=kernel // 2)
    convreg.load_state_dict(d.regressors["rgb"].state_dict())
    golden = F.mse_loss(convreg(s["stage2"]), t["rgb.stage2"])
    close(run(d, s, t)["kd_rgb"], 100 * golden)


# -- golden values: closed form on hand-checkable tensors ----------------------
def tiny(method, shape_maps, student, teacher, **hp):
    """kd_rgb of a fresh rgb-mode distiller on hand-made tensors."""
    d = create_distiller(method, "rgb", *shapes(*shape_maps), **hp)
    return d, d(student, reduce(d, teacher), None)["kd_rgb"]


def test_at_closed_form():
    # student energy (9+16)/2 at pixel 0 only -> a_s = [1, 0]; teacher -> a_t = [0, 1]; mean sq diff = 1.
    s = {"stage1": torch.tensor([[[[3.0, 0.0]], [[4.0, 0.0]]]])}
    _, kd = tiny("at", ((2, 1, 2), (1, 1, 2)), s, {"rgb.stage1": torch.tensor([[[[0.0, 2.0]]]])}, stages="stage1")
    close(kd, 1000.0)
    # a 1x4 teacher is pooled to 1x2 before normalising: [1,1,0,0]^2 -> [1, 0] = a_s -> 0.
    t4 = {"rgb.stage1": torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])}
    _, kd = tiny("at", ((2, 1, 2), (1, 1, 4)), s, t4, stages="stage1")
    close(kd, 0.0)


def test_pkt_closed_form():
    # orthogonal students: P_s rows (2/3, 1/3); parallel teachers: P_t rows (1/2, 1/2).
    s, t = {"pooled": torch.eye(2)}, {"rgb.pooled": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    _, kd = tiny("pkt", ((1, 1, 1), (1, 1, 1), 2, 2), s, t)
    close(kd, 30000 * math.log(1.125) / 4)


def test_sp_closed_form():
    # G_s = I; G_t = ones -> L2 rows (1/sqrt2, 1/sqrt2); ||diff||^2 = 4 - 2 sqrt2, over N^2 = 4.
    s = {"stage4": torch.eye(2).view(2, 2, 1, 1)}
    t = {"rgb.stage4": torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)}
    _, kd = tiny("sp", ((2, 1, 1), (2, 1, 1)), s, t)
    close(kd, 3000 * (1 - math.sqrt(2) / 2))


def test_vid_closed_form():
    # unit weights: mu = relu(relu(2)) = 2; t = 3; var = 5 -> 0.5 * (1/5 + log 5).
    d = create_distiller("vid", "rgb", *shapes((1, 1, 1), (1, 1, 1)), stages="stage3")
    for p in d.regressors["rgb"]["stage3"].regressor.parameters():
        torch.nn.init.ones_(p)
    kd = d({"stage3": torch.full((1, 1, 1, 1), 2.0)}, {"rgb.stage3": torch.full((1, 1, 1, 1), 3.0)}, None)["kd_rgb"]
    close(kd, 0.5 * (1 / 5 + math.log(5)))


def test_fitnet_closed_form():
    # conv = identity; BN(train) of [1, 3] -> [-1, 1]/sqrt(1+eps); ReLU -> [0, ~1]; target 0 -> MSE ~ 1/2.
    d = create_distiller("fitnet", "rgb", *shapes((1, 1, 1), (1, 1, 1)))
    with torch.no_grad():
        d.regressors["rgb"].conv.weight.fill_(1.0)
        d.regressors["rgb"].conv.bias.zero_()
    kd = d({"stage2": torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)}, {"rgb.stage2": torch.zeros(2, 1, 1, 1)}, None)["kd_rgb"]
    close(kd, 100 * 0.5 / (1 + 1e-5))


# -- independent references, matched and mismatched shapes -----------------------
@pytest.mark.parametrize("case", SHAPE_CASES)
@pytest.mark.parametrize("method,hp", [("at", {}), ("at", {"p": 1}), ("at", {"p": 4}), ("pkt", {}), ("sp", {}),
                                       ("vid", {}), ("fitnet", {}), ("fitnet", {"kernel": 3})])
def test_matches_reference(method, hp, case):
    torch.manual_seed(0)
    s_sh, t_sh = shapes(*SHAPE_CASES[case])
    s, t = random_taps(s_sh), random_taps(t_sh, seed=1)
    d = create_distiller(method, "both", s_sh, t_sh, **hp)
    if method == "vid":  # move variances off their shared init so a channel mix-up would show
        with torch.no_grad():
            for p in d.parameters():
                if p.dim() == 1:
                    p.uniform_(-1, 3)
    terms = run(d, s, t)
    assert set(terms) == {"kd_rgb", "kd_fre"}
    for branch in ("rgb", "fre"):
        close(terms[f"kd_{branch}"], reference(method, d, s, t, branch), rtol=1e-4)


# Probed at 64 px (the 299 px shapes differ by one pixel in the same way: 75 vs 74, 38 vs 37).
RES18T_64 = {"stage1": (32, 16, 16), "stage2": (64, 8, 8), "stage3": (128, 4, 4), "stage4": (256, 2, 2), "pooled": (256,)}
XCEPTION_64 = {"stage1": (128, 15, 15), "stage2": (256, 8, 8), "stage3": (728, 4, 4), "stage4": (2048, 2, 2), "pooled": (2048,)}


@pytest.mark.parametrize("pair", ["res18t<-xception", "xception<-res18t"])
@pytest.mark.parametrize("method", METHODS)
def test_real_stage_shapes_match_reference(method, pair):
    s_tab, t_tab = (RES18T_64, XCEPTION_64) if pair == "res18t<-xception" else (XCEPTION_64, RES18T_64)
    s_sh, t_sh = s_tab, {f"{b}.{k}": v for b in ("rgb", "fre") for k, v in t_tab.items()}
    s = {k: v.double() for k, v in random_taps(s_sh, n=2).items()}  # float64: PKT's near-uniform
    t = {k: v.double() for k, v in random_taps(t_sh, n=2, seed=1).items()}  # KL cancels in float32
    d = create_distiller(method, "both", s_sh, t_sh).double()
    terms = run(d, s, t)
    for branch in ("rgb", "fre"):
        close(terms[f"kd_{branch}"], reference(method, d, s, t, branch), rtol=1e-7)


# -- Both mode: each term sees only its own branch --------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_both_mode_terms_are_separate(method):
    s_sh, t_sh = shapes(*SHAPE_CASES["teacher-larger"])
    s, t = random_taps(s_sh), random_taps(t_sh, seed=1)
    d = create_distiller(method, "both", s_sh, t_sh)
    rgb = sorted(x.split(".", 1)[1] for x in d.teacher_taps() if x.startswith("rgb."))
    assert sorted(d.teacher_taps()) == sorted(f"{b}.{x}" for b in ("rgb", "fre") for x in rgb)
    base = run(d, s, t)
    for changed, fixed in (("fre", "rgb"), ("rgb", "fre")):
        perturbed = {k: v * 2 + 1 if k.startswith(changed) else v for k, v in t.items()}
        out = run(d, s, perturbed)
        assert torch.equal(out[f"kd_{fixed}"], base[f"kd_{fixed}"])
        assert not torch.equal(out[f"kd_{changed}"], base[f"kd_{changed}"])
    assert set(run(create_distiller(method, "rgb", s_sh, t_sh), s, t)) == {"kd_rgb"}


# -- contract details --------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_reductions_are_named_and_per_sample(method):
    s_sh, t_sh = shapes(*SHAPE_CASES["teacher-smaller"])
    d = create_distiller(method, "both", s_sh, t_sh)
    red = d.teacher_reductions()
    assert set(red) <= set(d.teacher_taps())
    assert bool(red) == (method == "at")
    x = torch.randn(3, *t_sh["rgb.stage1"])
    for fn in red.values():
        assert getattr(importlib.import_module(fn.__module__), fn.__name__) is fn
        close(fn(x), torch.cat([fn(x[i : i + 1]) for i in range(3)]))
    if method == "at":
        assert not create_distiller("at", "both", s_sh, t_sh, p=1).teacher_reductions()


@pytest.mark.parametrize("method,hp", [
    ("at", {"gamma": 1}), ("at", {"p": 0}), ("at", {"stages": "stage5"}), ("vid", {"stages": ""}),
    ("vid", {"init_pred_var": 1e-6}), ("fitnet", {"hint": "pooled"}), ("fitnet", {"kernel": 2}),
])
def test_bad_hparams_rejected(method, hp):
    s_sh, t_sh = shapes(*SHAPE_CASES["same-hw"])
    with pytest.raises(DistillerError):
        create_distiller(method, "rgb", s_sh, t_sh, **hp)


@pytest.mark.parametrize("method", METHODS)
def test_missing_teacher_tap_rejected(method):
    s_sh, t_sh = shapes(*SHAPE_CASES["same-hw"])
    t_sh = {k: v for k, v in t_sh.items() if not k.startswith("fre.")}
    create_distiller(method, "rgb", s_sh, t_sh)
    with pytest.raises(DistillerError):
        create_distiller(method, "both", s_sh, t_sh)


# -- real networks: hygiene and a smoke training step ---------------------------------
@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    t = DualBranchTeacher("res10t", image_size=IMAGE).eval()
    t.requires_grad_(False)
    return t, probe_shapes(t, IMAGE)


@pytest.fixture(scope="module")
def students():
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(1)
            model = build_student(name)
            cache[name] = (model, probe_shapes(model, IMAGE))
        return cache[name]

    return get


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(before, after):
    """Bit-identical parameters and buffers (BN running stats included)."""
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def train_step(method, mode, student, s_shapes, teacher, t_shapes, batch=4):
    """One trainer-like step; returns the distiller, optimizer, terms and the KD grads at the taps."""
    before = snapshot(teacher)
    d = create_distiller(method, mode, s_shapes, t_shapes)
    assert_same(before, snapshot(teacher))
    opt = torch.optim.Adam([{"params": student.parameters()}, {"params": d.student_parameters()}], lr=1e-4)
    x = torch.rand(batch, 3, IMAGE, IMAGE) * 2 - 1
    y = torch.arange(batch) % 2
    with torch.no_grad():
        _, t_raw = teacher(x)
    student.train()
    logits, s_raw = student(x)
    s_taps = {k: s_raw[k] for k in d.student_taps()}
    terms = d(s_taps, reduce(d, t_raw), y)
    kd = sum(terms.values())
    tap_grads = torch.autograd.grad(kd, list(s_taps.values()), retain_graph=True)
    opt.zero_grad(set_to_none=True)
    (F.cross_entropy(logits, y) + kd).backward()
    opt.step()
    assert_same(before, snapshot(teacher))
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    return d, opt, terms, tap_grads


@pytest.mark.parametrize("method", METHODS)
def test_parameter_hygiene(method, teacher, students):
    t_model, t_shapes = teacher
    student, s_shapes = students("res18t")
    d, opt, _, _ = train_step(method, "both", student, s_shapes, t_model, t_shapes)
    in_state = {id(v) for v in d.state_dict(keep_vars=True).values()}
    assert all(id(p) in in_state for p in d.parameters())
    counts = Counter(id(p) for g in opt.param_groups for p in g["params"])
    assert all(counts[id(p)] == 1 for p in [*student.parameters(), *d.parameters()])
    assert all(p.grad is not None for p in d.parameters())  # connectors and variances are trained
    if method in ("vid", "fitnet"):
        assert sum(1 for _ in d.parameters()) > 0
    if method == "vid":
        alphas = [k for k in d.state_dict() if k.endswith(".alpha")]
        assert len(alphas) == 2 * 4 and all(k.startswith(("regressors.rgb.", "regressors.fre.")) for k in alphas)
    if method in ("at", "pkt", "sp"):
        assert not list(d.parameters())


@pytest.mark.parametrize("student_name", STUDENTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_smoke_step(method, mode, student_name, teacher, students):
    t_model, t_shapes = teacher
    student, s_shapes = students(student_name)
    _, _, terms, tap_grads = train_step(method, mode, student, s_shapes, t_model, t_shapes)
    assert set(terms) == {f"kd_{b}" for b in (("rgb",) if mode == "rgb" else ("rgb", "fre"))}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    assert any(g.abs().sum() > 0 for g in tap_grads)  # the KD terms reach the student
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
