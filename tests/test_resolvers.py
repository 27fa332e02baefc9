"""Gradient-conflict resolvers: their math against independent formulas, the trainer's
injection at the taps, ``none`` against no option, and third-party resolvers."""

import numpy as np
import pytest
import torch

from kdbench.plugins import build_registry, create_resolver

RES = ("none", "pcgrad", "cagrad")


def test_pcgrad_on_hand_made_vectors():
    # g1 = (1, 0), g2 = (-1, 1) conflict (g1.g2 = -1): g1' = g1 + g2/2 = (1/2, 1/2), g2' = g2 + g1 = (0, 1)
    out = create_resolver("pcgrad").resolve(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    assert torch.allclose(out, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    # no conflict (g1.g2 = 1 > 0): untouched
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(create_resolver("pcgrad").resolve(g), g)
    # exactly opposite: each projected onto the normal plane of the other, nothing is left
    assert torch.allclose(create_resolver("pcgrad").resolve(torch.tensor([[2.0, 1.0], [-2.0, -1.0]])),
                          torch.zeros(2, 2))


def test_pcgrad_leaves_each_gradient_orthogonal_to_the_other_in_high_dimension():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(1000, generator=gen, dtype=torch.float64)
    b = -0.7 * a + torch.randn(1000, generator=gen, dtype=torch.float64)
    out = create_resolver("pcgrad").resolve(torch.stack([a, b]))
    # paper's Alg. 1 for two tasks, written out: g_i - min(g_i.g_j, 0) / |g_j|^2 g_j
    assert torch.allclose(out[0], a - (a @ b) / (b @ b) * b) and torch.allclose(out[1], b - (a @ b) / (a @ a) * a)
    assert abs(float(out[0] @ b)) < 1e-9 and abs(float(out[1] @ a)) < 1e-9


def cagrad_direction(a, b, c):
    """kdbench's CAGrad as d (unscaled, the paper's Eq.): rows / 2 undo the sum scale, rescale=0."""
    out = create_resolver("cagrad", c=c, rescale=0).resolve(torch.tensor(np.stack([a, b])))
    return out.numpy().sum(0) / 2


def pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    for k in range(n):
        dim = int(rng.integers(2, 7))
        a, b = rng.normal(size=dim), rng.normal(size=dim) * rng.uniform(0.1, 3)
        if k % 3 == 0:  # strong conflict
            b = -a * rng.uniform(0.2, 2) + 0.05 * rng.normal(size=dim)
        yield a, b, float(rng.uniform(0.05, 0.95))


def test_cagrad_against_brute_force_minimisation_of_the_dual():
    """min over w in the simplex of g_w.g0 + c|g0||g_w| on a grid of 200001 points, then the
    paper's d = g0 + c|g0|/|g_w| g_w."""
    xs = np.linspace(0, 1, 200001)[:, None]
    for a, b, c in pairs(60):
        g0 = (a + b) / 2
        gw = xs * a + (1 - xs) * b
        obj = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
        best = gw[obj.argmin()]
        expected = g0 + c * np.linalg.norm(g0) / np.linalg.norm(best) * best
        d = cagrad_direction(a, b, c)
        assert np.linalg.norm(d - expected) <= 2e-3 * np.linalg.norm(expected), (a, b, c)


def test_cagrad_solves_the_primal_problem():
    """d maximises min_i g_i.d over the ball |d - g0| <= c|g0| (searched on its boundary in the
    plane of the two gradients, where the optimum lies), independently of the dual."""
    theta = np.linspace(0, 2 * np.pi, 400001)
    for a, b, c in pairs(40, seed=1):
        g0 = (a + b) / 2
        u1 = a / np.linalg.norm(a)
        u2 = b - (b @ u1) * u1
        u2 /= np.linalg.norm(u2)
        ds = g0 + c * np.linalg.norm(g0) * (np.cos(theta)[:, None] * u1 + np.sin(theta)[:, None] * u2)
        worst = np.minimum(ds @ a, ds @ b)
        d = cagrad_direction(a, b, c)
        assert min(d @ a, d @ b) >= worst.max() - 1e-4 * np.linalg.norm(a) * np.linalg.norm(b)
        assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-9)


def test_cagrad_scale_and_limits():
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(2, 50, generator=gen)
    # c = 0: the average gradient, on the scale of the sum (what `none` applies)
    assert torch.allclose(create_resolver("cagrad", c=0.0).resolve(g).sum(0), g.sum(0), atol=1e-6)
    # the reference code's default rescale divides by 1 + c^2
    d0 = create_resolver("cagrad", c=0.5, rescale=0).resolve(g)
    assert torch.allclose(create_resolver("cagrad").resolve(g) * 1.25, d0, atol=1e-6)
    assert torch.isfinite(create_resolver("cagrad").resolve(torch.zeros(2, 5))).all()


def test_resolver_hyper_parameters_are_checked():
    from kdbench.distiller import DistillerError
    from kdbench.resolver import ResolverError

    with pytest.raises(ResolverError, match=r"c=1.5 is outside \[0, 1\)"):
        create_resolver("cagrad", c=1.5)
    with pytest.raises(DistillerError, match="unknown hyper-parameter"):
        create_resolver("pcgrad", c=0.5)


def test_builtins_keep_the_contract():
    from kdbench.contract import check_resolver

    for name in RES:
        results = check_resolver(name)
        assert results and all(r.ok for r in results), [(r.check, r.detail) for r in results if not r.ok]


# -- the trainer: resolved gradients injected at the taps ---------------------------------

def step_parts(method):
    from step_factory import step_case

    from kdbench.train.runtime import Runtime

    frames = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    rt = Runtime()
    s, d, params, x, feats = step_case(method, rt, frames)
    return rt, s, d, params, x, torch.arange(8) % 2, feats


def applied_gradients(method, resolver):
    """What train_step applies (SGD with lr 1: the change of each parameter) and its diagnostics."""
    from kdbench.distiller import StepInfo
    from kdbench.train import trainer

    rt, s, d, params, x, y, feats = step_parts(method)
    before = [p.detach().clone() for p in params]
    info = StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=1, student_lr=1.0, base_lr=1.0, log=True)
    _, diag = trainer.train_step(s, d, torch.optim.SGD(params, lr=1.0), params, rt, x, y, feats, info,
                                 resolver=resolver)
    return [b - p.detach() for b, p in zip(before, params)], diag


def test_pcgrad_step_equals_a_surrogate_loss_built_by_hand(one_thread):
    """Independent construction: each branch's gradient at views of the taps, PCGrad written out,
    and the backbone's gradient from CE + sum(view * resolved) (a surrogate whose gradient at the
    views is the resolved sum) through an ordinary backward."""
    import torch.nn.functional as F

    rt, s, d, params, x, y, feats = step_parts("at")  # four taps: the split back per tap is exercised
    logits, taps = s(x)
    views = {k: taps[k].view_as(taps[k]) for k in d.student_taps()}
    kd = d.forward(views, feats, y)

    def flat(term):
        return torch.cat([g.flatten() for g in torch.autograd.grad(term, list(views.values()), retain_graph=True)])

    a, b = flat(kd["kd_rgb"]).double(), flat(kd["kd_fre"]).double()
    dot = a @ b
    ra = a - (dot / (b @ b)) * b if dot < 0 else a
    rb = b - (dot / (a @ a)) * a if dot < 0 else b
    total, at = (ra + rb).float(), 0
    surrogate = F.cross_entropy(logits, y)
    for v in views.values():
        surrogate = surrogate + (v * total[at:at + v.numel()].view_as(v)).sum()
        at += v.numel()
    expected = torch.autograd.grad(surrogate, params, allow_unused=True)
    got, diag = applied_gradients("at", create_resolver("pcgrad"))
    for e, g in zip(expected, got):
        e = e if e is not None else torch.zeros_like(g)
        assert float((g - e).norm()) <= 1e-5 * float(e.norm()) + 1e-9
    assert {"grad_cos", "grad_cos_resolved"} <= set(diag) and -1 <= diag["grad_cos_resolved"] <= 1


def test_the_none_resolver_through_the_resolving_path_matches_the_single_backward(one_thread):
    """The injection machinery itself changes nothing: the `none` plugin (the plain sum) forced
    through it applies the gradients of the ordinary single backward (up to summation order)."""
    plain, diag_plain = applied_gradients("sp", None)
    forced, diag_forced = applied_gradients("sp", create_resolver("none"))
    for p, f in zip(plain, forced):  # fp32 sums in another order: close in norm, per tensor
        assert float((p - f).norm()) <= 1e-5 * float(p.norm()) + 1e-9
    assert diag_forced["grad_cos"] == pytest.approx(diag_plain["grad_cos"], abs=1e-5)
    assert diag_forced["grad_cos_resolved"] == pytest.approx(diag_forced["grad_cos"], abs=1e-6)


def test_a_distiller_without_branch_terms_is_refused_in_one_line(one_thread):
    from kdbench.distiller import StepInfo
    from kdbench.train import trainer

    rt, s, d, params, x, y, feats = step_parts("sp")
    d.forward = lambda student, teacher, labels: {"kd": student["stage4"].pow(2).mean()}
    info = StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=1, student_lr=1.0, base_lr=1.0)
    with pytest.raises(trainer.TrainingError, match="combines the terms kd_rgb and kd_fre; the distiller returned kd$"):
        trainer.train_step(s, d, torch.optim.SGD(params, lr=1.0), params, rt, x, y, feats, info,
                           resolver=create_resolver("pcgrad"))


# -- configuration, hashes and grids --------------------------------------------------------

def test_none_keeps_every_existing_hash_and_others_change_it():
    from kdbench.config import ConfigError, resolve

    plain = resolve("sp", "both", profile="smoke")
    assert resolve("sp", "both", profile="smoke", resolver="none").hash == plain.hash
    assert plain.hash == "10ec89f898cdcdfd"  # computed before resolvers existed (commit 2a6585d)
    hashes = {resolve("sp", "both", profile="smoke", resolver=r).hash for r in RES}
    assert len(hashes) == 3
    assert resolve("sp", "both", profile="smoke", resolver="cagrad", resolver_hp={"c": "0.4"}).hash != \
        resolve("sp", "both", profile="smoke", resolver="cagrad").hash
    with pytest.raises(ConfigError, match="resolver 'pcgrad' combines the two branches' KD gradients"):
        resolve("sp", "rgb", profile="smoke", resolver="pcgrad")
    # a config file's resolver reaches Both-mode runs only
    cfg = {"resolver": "cagrad", "resolver_hp": {"cagrad": {"c": 0.3}}}
    assert resolve("sp", "both", profile="smoke", config=cfg).resolver_hp == {"c": 0.3, "rescale": 1}
    assert resolve("sp", "rgb", profile="smoke", config=cfg).hash == resolve("sp", "rgb", profile="smoke").hash


def test_the_resolvers_spec_crosses_both_mode_with_every_resolver(tmp_path):
    from kdbench.grid import expand

    cells = expand("resolvers", profile="smoke")
    methods = {c.cfg.method for c in cells}
    assert {"tokd", "at", "pkt", "vid", "sp", "fitnet"} <= methods
    assert {(c.cfg.method, c.cfg.resolver) for c in cells} == {(m, r) for m in methods for r in RES}
    assert all(c.cfg.mode == "both" for c in cells)
    # the `none` cells are the extended Table 3's Both cells: one run counts in both tables
    table3 = {c.cfg.hash for c in expand("table3x", profile="smoke", students=["res18t"])}
    assert {c.cfg.hash for c in cells if c.cfg.resolver == "none"} <= table3
    # --resolver on a grid: every Both cell gets it, RGB and vanilla cells keep the plain sum
    swapped = expand("table3", profile="smoke", students=["res18t"], resolver="pcgrad")
    assert {(c.cfg.mode, c.cfg.resolver) for c in swapped} == {("rgb", "none"), ("both", "pcgrad")}
    # a group's resolvers reach its Both cells; its RGB cell is there once, plain
    spec = tmp_path / "mine.toml"
    spec.write_text('[[group]]\nmethods = ["at"]\nmodes = ["rgb", "both"]\nresolvers = ["none", "cagrad"]\n'
                    'resolver_hp = { cagrad = { c = 0.25 } }\n')
    mine = expand(str(spec), profile="smoke")
    assert sorted((c.cfg.mode, c.cfg.resolver, c.cfg.resolver_hp.get("c")) for c in mine) == \
        [("both", "cagrad", 0.25), ("both", "none", None), ("rgb", "none", None)]


# -- end to end -----------------------------------------------------------------------------

def test_resolver_none_gives_the_records_of_no_option(smoke_workspace, tmp_path, one_thread):
    """Two smoke runs, with and without `resolver="none"`, in separate stores: the same hash and
    the same record values (metrics, losses, diagnostics)."""
    from kdbench.config import resolve
    from kdbench.store import ResultsStore
    from kdbench.train.runner import run
    from kdbench.train.runtime import Runtime

    recs = []
    one_epoch = {"epochs": 1}
    for i, cfg in enumerate((resolve("pkt", "both", profile="smoke", train=one_epoch),
                             resolve("pkt", "both", profile="smoke", train=one_epoch, resolver="none"))):
        rec = run(cfg, smoke_workspace, ResultsStore(tmp_path / f"{i}.sqlite"), Runtime(), log=lambda _m: None,
                  progress=False)
        recs.append(rec)
    a, b = recs
    assert a.hash == b.hash and a.config == b.config
    assert a.metrics == b.metrics
    strip = lambda h: [{k: v for k, v in row.items() if "time" not in k and k != "img_per_s"} for row in h]  # noqa: E731
    assert strip(a.history["epochs"]) == strip(b.history["epochs"])
    assert a.history["diagnostics"] == b.history["diagnostics"]


@pytest.mark.slow
def test_cli_runs_sp_both_with_pcgrad_and_logs_both_cosines(smoke_workspace, kdbench):
    from kdbench.config import resolve
    from kdbench.store import ResultsStore

    cmd = ["run", "--method", "sp", "--mode", "both", "--resolver", "pcgrad", "--student", "res18t", "--profile", "smoke",
           "--no-progress"]
    proc = kdbench(*cmd, home=smoke_workspace.root)  # the session's teacher
    assert proc.returncode == 0, proc.stderr
    rec = ResultsStore(smoke_workspace.store_path).get(resolve("sp", "both", profile="smoke", resolver="pcgrad").hash)
    assert rec is not None and rec.config["resolver"] == "pcgrad" and rec.status == "done"
    assert rec.history["diagnostics"] and all({"grad_cos", "grad_cos_resolved"} <= set(d)
                                               for d in rec.history["diagnostics"])
    bad = kdbench(*cmd[:-1], "--mode", "rgb", home=smoke_workspace.root)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "mode 'rgb'" in bad.stderr


# -- third-party resolvers ------------------------------------------------------------------

BROKEN = '''
from kdbench import hookimpl

@hookimpl
def kdbench_resolvers():
    raise RuntimeError("resolver boom")
'''

NOT_A_RESOLVER = '''
from kdbench import hookimpl

@hookimpl
def kdbench_resolvers():
    return [dict]
'''

ASCENT = '''
from kdbench import Resolver, hookimpl

class Ascent(Resolver):
    name = "ascent"
    def resolve(self, grads):
        return -grads

@hookimpl
def kdbench_resolvers():
    return [Ascent]
'''


def test_third_party_resolvers_are_found_isolated_and_checked(tmp_path, monkeypatch):
    from test_plugins import install_fake

    monkeypatch.syspath_prepend(str(tmp_path))
    install_fake(tmp_path, "kdb-rboom", "kdbtest_rboom", BROKEN)
    install_fake(tmp_path, "kdb-rdict", "kdbtest_rdict", NOT_A_RESOLVER)
    install_fake(tmp_path, "kdb-ascent", "kdbtest_ascent", ASCENT)
    with pytest.warns(UserWarning, match="plugin rboom is broken"):
        reg = build_registry()
    assert reg.errors["rboom"] == "kdbench_resolvers: RuntimeError: resolver boom"
    assert "is not a kdbench.Resolver subclass" in reg.errors["rdict"]
    assert reg.resolver_providers["ascent"] == "kdb-ascent" and set(RES) <= set(reg.resolvers)
    monkeypatch.setattr("kdbench.plugins.registry", lambda: reg)
    from kdbench.contract import check_resolver

    failed = [r for r in check_resolver("ascent") if not r.ok]
    assert [r.check for r in failed] == ["a descent direction of the summed terms"]


@pytest.mark.slow
def test_cli_names_a_broken_resolver_in_one_line(tmp_path, kdbench):
    from test_plugins import install_fake

    install_fake(tmp_path, "kdb-rboom", "kdbtest_rboom", BROKEN)
    listing = kdbench("plugins", site=tmp_path, home=tmp_path)
    assert listing.returncode == 0 and "pcgrad" in listing.stdout
    assert "broken plugin rboom: kdbench_resolvers: RuntimeError: resolver boom" in listing.stdout
    run = kdbench("run", "--method", "sp", "--resolver", "rboom", "--profile", "smoke", site=tmp_path, home=tmp_path)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and errors == \
        ["error: resolver plugin 'rboom' is broken: kdbench_resolvers: RuntimeError: resolver boom"]


# -- the resolvers table --------------------------------------------------------------------

def test_the_resolvers_table_marks_each_resolver_against_the_plain_sum(tmp_path):
    """FAKE records (test fixtures): SP with three resolvers, 3 seeds each."""
    import dataclasses

    from test_tables import fake_record

    from kdbench.grid import expand
    from kdbench.report.render import render
    from kdbench.report.tables import build_table
    from kdbench.store import ResultsStore

    store = ResultsStore(tmp_path / "r.sqlite")
    accs = {"none": [80.0, 80.5, 81.0], "pcgrad": [83.0, 83.5, 84.0], "cagrad": [80.2, 81.2, 79.7]}
    cos = {"none": ("grad_cos", -0.8), "pcgrad": ("grad_cos_resolved", 0.1), "cagrad": ("grad_cos_resolved", -0.8)}
    for cell in expand("resolvers", profile="smoke"):
        if cell.cfg.method == "sp":
            key, value = cos[cell.cfg.resolver]
            for seed, acc in enumerate(accs[cell.cfg.resolver]):
                diags = [{"step": s, "epoch": 0, key: value if s >= 10 else 0.5} for s in range(0, 21, 5)]
                store.put(fake_record(dataclasses.replace(cell.cfg, seed=seed), acc, diagnostics=diags))
    grid = build_table("resolvers", store, profile="smoke")
    assert grid.header[2:] == ["Distiller", "Both", "Both + PCGrad", "Both + CAGrad"]
    body, _ = render(grid, "markdown")
    sp = next(line for line in body.splitlines() if "| SP " in line)
    assert "80.50 ± 0.50" in sp and "83.50 ± 0.50 ↑" in sp and "80.37 ± 0.76 ≈" in sp
    cos_body, cos_notes = render(build_table("resolvers", store, profile="smoke", metric="cos"), "markdown")
    sp = next(line for line in cos_body.splitlines() if "| SP " in line)
    assert "-0.80 ± 0.00" in sp and "0.10 ± 0.00" in sp and "↑" not in sp  # second half only, no marks
    assert "Cosine (-1..1); mean ± sample std" in cos_notes and "(%)" not in cos_notes  # not a test percentage
