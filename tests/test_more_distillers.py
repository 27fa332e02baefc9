"""KD, DKD, DIST, RKD, CC, CRD and ReviewKD: golden values against torchdistill's implementations
(KD, DIST, RKD, CC, CRD, ReviewKD) and an independent re-derivation (DKD), the two-class
reductions the docstrings state, the fused mode, CRD's sampler and memory bank, and the trainer's
``ce_weight`` and ``index``."""
from __future__ import annotations

import pytest
import reference_losses as ref
import torch
import torch.nn.functional as F
from torchdistill.losses.mid_level import (
    CCKDLoss,
    CRDLoss,
    DISTLoss,
    HierarchicalContextLoss,
    KDLoss,
    LogitStdKDLoss,
    RKDLoss,
)
from torchdistill.models.wrapper import AttentionBasedFusion

from kdbench import DistillerError, available_distillers, create_distiller

pytestmark = pytest.mark.usefixtures("one_thread")
NEW = ("kd", "dkd", "dist", "rkd", "cc", "crd", "reviewkd")


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


def io(**taps):
    return {k: {"output": v} for k, v in taps.items()}


def logit_shapes(classes=2):
    return {"logits": (classes,)}, {"logits": (classes,)}


def randn(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(grad)


def vector_shapes(s_dim=16, t_dim=24):
    return {"pooled": (s_dim,)}, {"rgb.pooled": (t_dim,), "fre.pooled": (t_dim,)}


# -- registry and modes ----------------------------------------------------------
def test_registered_with_modes_and_sourced_defaults():
    found = available_distillers()
    for m in NEW:
        assert m in found, m
        assert all(h.source for h in found[m].defaults.values()), m
    assert {m: found[m].modes for m in ("kd", "dkd", "dist")} == {m: ("fused",) for m in ("kd", "dkd", "dist")}
    assert all(found[m].modes == ("rgb", "both") for m in ("rkd", "cc", "crd", "reviewkd"))


def test_logit_methods_read_the_fused_logits_only():
    for m in ("kd", "dkd", "dist"):
        d = create_distiller(m, "fused", *logit_shapes())
        assert d.branches == () and d.student_taps() == ["logits"] and d.teacher_taps() == ["logits"]
        with pytest.raises(DistillerError, match="no mode 'rgb'"):
            create_distiller(m, "rgb", *logit_shapes())
    with pytest.raises(DistillerError, match="same classes"):
        create_distiller("kd", "fused", {"logits": (2,)}, {"logits": (3,)})


def test_teacher_and_student_expose_logits_taps():
    from kdbench.models.students import build_student
    from kdbench.models.teacher import DualBranchTeacher

    x = torch.randn(2, 3, 48, 48)
    teacher = DualBranchTeacher("res10t", image_size=48, proj_channels=16).eval()
    logits, taps = teacher(x)
    assert taps["logits"] is logits and "rgb.logits" not in taps
    s_logits, s_taps = build_student("res18t")(x)
    assert s_taps["logits"] is s_logits


# -- KD ----------------------------------------------------------------------------
def test_kd_matches_torchdistill_with_ce_weight():
    z_s, z_t, y = randn(6, 2, seed=1), randn(6, 2, seed=2) * 3, torch.tensor([0, 1, 1, 0, 1, 0])
    d = create_distiller("kd", "fused", *logit_shapes())
    ours = d.ce_weight * F.cross_entropy(z_s, y) + d({"logits": z_s}, {"logits": z_t}, y)["kd"]
    theirs = KDLoss("s", "output", "t", "output", temperature=4.0, alpha=0.1, beta=0.9)(
        io(s=z_s), io(t=z_t), y)
    assert d.ce_weight == 0.1
    close(ours, theirs)


def test_kd_standardised_matches_torchdistill_and_is_degenerate_at_two_classes():
    z_s, z_t, y = randn(5, 3, seed=3), randn(5, 3, seed=4), torch.zeros(5, dtype=torch.long)
    d = create_distiller("kd", "fused", *logit_shapes(3), standardize=True, temperature=2.0)
    soft = LogitStdKDLoss("s", "output", "t", "output", temperature=2.0, alpha=0)(io(s=z_s), io(t=z_t))
    close(d({"logits": z_s}, {"logits": z_t}, y)["kd"], 0.9 * 4.0 * soft)
    # two classes: the standardised logits are +-1/sqrt(2), so the student gets (almost) no gradient
    z2 = randn(5, 2, seed=5, grad=True)
    d2 = create_distiller("kd", "fused", *logit_shapes(2), standardize=True)
    d2({"logits": z2}, {"logits": randn(5, 2, seed=6)}, y)["kd"].backward()
    plain = z2.detach().clone().requires_grad_(True)
    create_distiller("kd", "fused", *logit_shapes(2))({"logits": plain}, {"logits": randn(5, 2, seed=6)}, y)["kd"].backward()
    assert z2.grad.abs().max() < 1e-4 * plain.grad.abs().max()


# -- DKD ---------------------------------------------------------------------------
def test_dkd_matches_an_independent_derivation_at_three_classes():
    z_s, z_t, y = randn(5, 3, seed=7), randn(5, 3, seed=8) * 2, torch.tensor([0, 1, 2, 1, 0])
    d = create_distiller("dkd", "fused", *logit_shapes(3))
    terms = d({"logits": z_s}, {"logits": z_t}, y)
    tckd, nckd = ref.ref_dkd(z_s, z_t, y, 4.0)
    close(terms["kd_tckd"], 1.0 * tckd)
    close(terms["kd_nckd"], 8.0 * nckd)
    assert float(nckd) > 1e-4  # a real non-target term at three classes


def test_dkd_at_two_classes_is_kd_with_alpha():
    z_s, z_t, y = randn(6, 2, seed=9, grad=True), randn(6, 2, seed=10) * 2, torch.tensor([0, 1, 1, 0, 0, 1])
    d = create_distiller("dkd", "fused", *logit_shapes())
    terms = d({"logits": z_s}, {"logits": z_t}, y)
    assert float(terms["kd_nckd"].detach()) == 0.0
    (g,) = torch.autograd.grad(terms["kd_nckd"], z_s, retain_graph=True)
    assert float(g.abs().max()) == 0.0
    tckd, _ = ref.ref_dkd(z_s.detach(), z_t, y, 4.0)
    close(terms["kd_tckd"], tckd)
    kd = create_distiller("kd", "fused", *logit_shapes(), alpha=1.0)({"logits": z_s}, {"logits": z_t}, y)["kd"]
    close(terms["kd_tckd"], kd)


# -- DIST --------------------------------------------------------------------------
def test_dist_matches_torchdistill_and_inter_term_is_flat_at_two_classes():
    z_s, z_t = randn(8, 2, seed=11, grad=True), randn(8, 2, seed=12)
    d = create_distiller("dist", "fused", *logit_shapes())
    terms = d({"logits": z_s}, {"logits": z_t}, torch.zeros(8, dtype=torch.long))
    theirs = DISTLoss("s", "output", "t", "output")(io(s=z_s), io(t=z_t))
    close(terms["kd_inter"] + terms["kd_intra"], theirs)
    (g_inter,) = torch.autograd.grad(terms["kd_inter"], z_s, retain_graph=True)
    (g_intra,) = torch.autograd.grad(terms["kd_intra"], z_s)
    assert g_inter.abs().max() < 1e-6 < g_intra.abs().max()


# -- RKD ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["rgb", "both"])
def test_rkd_matches_torchdistill(mode):
    s_shapes, t_shapes = vector_shapes()
    d = create_distiller("rkd", mode, s_shapes, t_shapes)
    s = randn(6, 16, seed=13)
    t = {"rgb.pooled": randn(6, 24, seed=14), "fre.pooled": randn(6, 24, seed=15)}
    terms = d({"pooled": s}, t, torch.zeros(6, dtype=torch.long))
    theirs = RKDLoss("s", "t", dist_factor=25.0, angle_factor=50.0, reduction="mean")
    assert sorted(terms) == [f"kd_{b}" for b in sorted(d.branches)]
    for b in d.branches:
        close(terms[f"kd_{b}"], theirs(io(s=s), io(t=t[f"{b}.pooled"])))


# -- CC ----------------------------------------------------------------------------
def test_cc_kernel_matches_torchdistill_and_loss_is_the_squared_norm():
    from kdbench_plugins.cc import cc_embedding, rbf_correlation

    s_shapes, t_shapes = vector_shapes()
    d = create_distiller("cc", "rgb", s_shapes, t_shapes, beta=2.0)
    s, t = randn(7, 16, seed=16), randn(7, 24, seed=17)
    td = CCKDLoss("s", "t", {"type": "gaussian", "gamma": 0.4, "max_p": 2}, reduction="batchmean")
    fs, ft = F.normalize(s, dim=1), F.normalize(t, dim=1)
    close(rbf_correlation(fs, 0.4, 2), td.compute_cc_mat_by_gaussian_rbf(fs))
    # the kernel approximates exp(-gamma ||a - b||^2) for unit vectors
    exact = torch.exp(-0.4 * torch.cdist(fs, fs) ** 2)
    assert (rbf_correlation(fs, 0.4, 8) - exact).abs().max() < 1e-5
    term = d({"pooled": s}, {"rgb.pooled": cc_embedding(t)}, torch.zeros(7, dtype=torch.long))["kd_rgb"]
    unsquared = td(io(s=fs), io(t=ft))  # torchdistill: ||C_s - C_t||_F / n^2
    close(term, 2.0 * unsquared ** 2 * 7 ** 2)


# -- CRD ---------------------------------------------------------------------------
def crd(mode="rgb", labels=None, **hp):
    s_shapes, t_shapes = vector_shapes()
    d = create_distiller("crd", mode, s_shapes, t_shapes, **hp)
    d.prepare(labels if labels is not None else torch.tensor([0, 1] * 4))
    return d


def test_crd_sized_from_the_data_and_negatives_from_other_classes():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 0, 1])
    d = crd("both", labels, nce_k=64)
    assert d.k == 4  # capped at the smaller other-class pool (4 class-0 samples)
    assert all(h.memory_s.shape == (10, 128) and h.memory_t.shape == (10, 128) for h in d.heads.values())
    index = torch.arange(10)
    for _ in range(5):
        c = d.contrast_indices(labels, index)
        assert torch.equal(c[:, 0], index)
        assert bool((labels[c[:, 1:]] != labels[:, None]).all())
    with pytest.raises(DistillerError, match="two classes"):
        crd(labels=torch.zeros(6, dtype=torch.long))


def test_crd_matches_torchdistill():
    labels = torch.tensor([0, 1] * 4)
    d = crd(nce_k=4, beta=1.0)
    head = d.heads["rgb"]
    td = CRDLoss("s", "e", "t", input_size=128, output_size=8, num_negative_samples=4, num_samples=8)
    td.memory_v1.copy_(head.memory_s)  # RepDistiller's v1: the student's bank, v2: the teacher's
    td.memory_v2.copy_(head.memory_t)
    s, t, index = randn(4, 16, seed=18), randn(4, 24, seed=19), torch.tensor([5, 2, 7, 0])
    state = d.generator.get_state()
    contrast = d.contrast_indices(labels[index], index)
    d.generator.set_state(state)
    for step in range(2):  # the second step uses the updated banks and the fixed Z
        ours = d({"pooled": s}, {"rgb.pooled": t}, labels[index], index=index)["kd_rgb"]
        with torch.no_grad():
            v_s, v_t = head.embed_s(s), head.embed_t(t)
        extra = {"e": {"input": {"pos_idx": index, "contrast_idx": contrast}}}
        theirs = td(io(s=v_s) | extra, io(t=v_t))
        close(ours, theirs, rtol=1e-4)
        close(head.memory_s, td.memory_v1)
        close(head.memory_t, td.memory_v2)
        state = d.generator.get_state()
        contrast = d.contrast_indices(labels[index], index)
        d.generator.set_state(state)


# -- ReviewKD ----------------------------------------------------------------------
def test_reviewkd_matches_torchdistill_on_square_maps():
    s_shapes = {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "pooled": (6,)}
    t_shapes = {"rgb.stage1": (5, 8, 8), "rgb.stage2": (7, 4, 4), "rgb.pooled": (7,)}
    torch.manual_seed(0)
    d = create_distiller("reviewkd", "rgb", s_shapes, t_shapes, levels="stage1,stage2,pooled", mid_channels=3)
    s = {"stage1": randn(3, 4, 8, 8, seed=20), "stage2": randn(3, 6, 4, 4, seed=21), "pooled": randn(3, 6, seed=22)}
    t = {"rgb.stage1": randn(3, 5, 8, 8, seed=23), "rgb.stage2": randn(3, 7, 4, 4, seed=24),
         "rgb.pooled": randn(3, 7, seed=25)}
    ours = d(s, t, torch.zeros(3, dtype=torch.long))["kd_rgb"]
    # torchdistill's ABFs with our weights, chained as Student4KnowledgeReview does (deepest first)
    chain = d.abfs["rgb"]
    abfs = []
    for i, (cin, cout) in enumerate([(4, 5), (6, 7), (6, 7)]):
        abf = AttentionBasedFusion(cin, 3, cout, uses_attention=i < 2)
        state = {k.replace("att_conv", "attention_conv"): v for k, v in chain[i].state_dict().items()}
        abf.load_state_dict(state)
        abfs.append(abf)
    feats = [s["pooled"][:, :, None, None], s["stage2"], s["stage1"]]
    out, res = abfs[2](feats[0])
    outs = [out]
    for x, abf, size in zip(feats[1:], abfs[1::-1], (4, 8)):
        out, res = abf(x, res, size)
        outs.insert(0, out)
    hcl = HierarchicalContextLoss("s", "output", "t", "output")
    targets = [t["rgb.stage1"], t["rgb.stage2"], t["rgb.pooled"][:, :, None, None]]
    theirs = sum(hcl({"s": {"output": (o, None)}}, {"t": {"output": g}}) for o, g in zip(outs, targets))
    close(ours, theirs)


def test_reviewkd_aligns_unequal_grids_to_the_teacher():
    s_shapes = {"stage1": (4, 9, 7), "stage2": (6, 5, 4), "pooled": (6,)}
    t_shapes = {f"{b}.{k}": v for b in ("rgb", "fre")
                for k, v in {"stage1": (5, 8, 8), "stage2": (7, 4, 4), "pooled": (7,)}.items()}
    d = create_distiller("reviewkd", "both", s_shapes, t_shapes, levels="pooled,stage2,stage1")
    assert d.levels == ["stage1", "stage2", "pooled"]
    s = {k: randn(2, *v, seed=i) for i, (k, v) in enumerate(s_shapes.items())}
    t = {k: randn(2, *v, seed=10 + i) for i, (k, v) in enumerate(t_shapes.items())}
    terms = d(s, t, torch.zeros(2, dtype=torch.long))
    assert set(terms) == {"kd_rgb", "kd_fre"} and all(torch.isfinite(v) for v in terms.values())
    assert set(d.abfs) == {"rgb", "fre"} and d.abfs["rgb"] is not d.abfs["fre"]


# -- the trainer: ce_weight and index ------------------------------------------------
def test_trainer_weights_ce_and_passes_the_batch_index():
    from kdbench.config import TrainConfig
    from kdbench.data.frames import FrameSet
    from kdbench.distiller import Distiller
    from kdbench.train import trainer

    seen: list[torch.Tensor] = []

    class Recorder(Distiller):
        name, modes, wants_index = "recorder", ("rgb",), True
        defaults = {"ce_weight": __import__("kdbench").HParam(0.25, "test")}

        def forward(self, student, teacher, labels, index=None):
            seen.append(index)
            return {}

    n = 10
    g = torch.Generator().manual_seed(0)
    frames = FrameSet(torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.tensor([0, 1] * 5), [f"v{i}" for i in range(n)])
    from kdbench.models.students import build_student
    torch.manual_seed(0)
    model = build_student("res18t")
    cfg = TrainConfig(image_size=32, epochs=1, batch_size=4, lr=1e-3, lr_step=5, lr_gamma=0.1, log_every=0)
    d = Recorder("rgb", {}, {})
    result = trainer.fit(model, frames, frames, frames, cfg, seed=0, distiller=d, progress=False)
    assert sorted(torch.cat(seen).tolist()) == list(range(n))
    ce = result.history["epochs"][0]["loss_ce"]
    assert 0 < ce < 0.25 * 2  # the logged CE is the weighted one (CE of 2 classes at init ~ 0.7)


# -- extended Table 3 ----------------------------------------------------------------
def test_table3x_spec_covers_every_builtin_in_each_mode(tmp_path):
    from typer.testing import CliRunner

    from kdbench.cli import app
    from kdbench.grid import expand
    from kdbench.report.tables import METHOD_ORDER, build_table
    from kdbench.store import ResultsStore

    cells = expand("table3x", students=["res18t"], profile="smoke", seeds=[0])
    found = {(c.cfg.method, c.cfg.mode) for c in cells}
    builtins = {*METHOD_ORDER, "vanilla"}
    expected = {(name, mode) for name, cls in available_distillers().items() if name in builtins for mode in cls.modes}
    assert {name for name, _ in expected} == builtins
    assert found == expected
    grid = build_table(3, ResultsStore(tmp_path / "r.sqlite"), "smoke", ["res18t"], spec="table3x")
    assert "KD Fused" in grid.header and "KD RGB" not in grid.header and "RKD Both" in grid.header
    assert any("fused-head logits" in n for n in grid.notes)
    result = CliRunner().invoke(app, ["table", "5", "--spec", "table3x", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "Table 3 and the cells table only" in result.output
