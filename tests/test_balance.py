"""The loss-balance diagnostic (kdbench.train.balance): its definition checked against separate
forward/backward passes, that it leaves training unchanged, TOKD's two distances, the one
warning line, and the record's start/middle/end summary."""
import math

import pytest
import torch
import torch.nn.functional as F
from step_factory import step_case

from kdbench.distiller import StepInfo
from kdbench.train import balance, trainer
from kdbench.train.runtime import Runtime

RT = Runtime()
INFO = dict(step=0, epoch=0, epochs=1, steps_per_epoch=10, student_lr=1e-3, base_lr=1e-3)


def frames(seed=0, n=8, size=48):
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)),
            torch.arange(n) % 2)


def norm(grads):
    return math.sqrt(sum(float(g.square().sum()) for g in grads if g is not None))


@pytest.mark.parametrize("method", ["at", "fitnet", "pkt"])  # pkt: the "pooled" tap
def test_ratios_are_gradient_norms_of_each_term_over_ces(method):
    """Each term's ratio, recomputed here from fresh forwards: at the taps, the term's partial
    derivative at the (detached) taps over CE's derivative at them; over the student, the
    term's backward over CE's backward, each on its own, with .grad."""
    x_u8, y = frames()
    s, d, params, x, feats = step_case(method, RT, x_u8)
    student_params = list(s.parameters())
    state = {k: v.clone() for k, v in s.state_dict().items()}

    def fresh():
        s.load_state_dict(state)
        logits, taps = s(x)
        return F.cross_entropy(logits, y), taps

    ce, taps = fresh()
    names = d.student_taps()
    ce_taps = norm(torch.autograd.grad(ce, [taps[k] for k in names]))
    leaves = {k: taps[k].detach().requires_grad_() for k in names}
    kd = d(leaves, feats, y)
    expected = {}
    for term, value in kd.items():
        at_taps = norm(torch.autograd.grad(value, list(leaves.values()), retain_graph=True, allow_unused=True))
        expected[f"balance_taps/{term}"] = at_taps / ce_taps
    for who in ["ce", *kd]:
        ce, taps = fresh()
        s.zero_grad(set_to_none=True)
        (ce if who == "ce" else d({k: taps[k] for k in names}, feats, y)[who]).backward()
        expected[who] = norm([p.grad for p in student_params])
    for term in kd:
        expected[f"balance_student/{term}"] = expected.pop(term) / expected["ce"]
    del expected["ce"]

    s.load_state_dict(state)
    _, diag = trainer.train_step(s, d, trainer.make_optimizer(params, RT, 1e-3), params, RT, x, y, feats,
                                 StepInfo(**INFO, log=True), student_params=student_params)
    got = {k: v for k, v in diag.items() if k.startswith("balance_")}
    assert got.keys() == expected.keys() and len(got) == 4
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-4), k


def test_a_logging_step_trains_exactly_like_any_other():
    """The diagnostic's extra backward passes accumulate nothing: the weights after a logging
    step equal those after a plain one, bit for bit."""
    x_u8, y = frames(1)
    after = {}
    for log in (False, True):
        s, d, params, x, feats = step_case("vid", RT, x_u8)
        trainer.train_step(s, d, trainer.make_optimizer(params, RT, 1e-3), params, RT, x, y, feats,
                           StepInfo(**INFO, log=log), student_params=list(s.parameters()))
        after[log] = [p.detach().clone() for p in params]
    assert all(torch.equal(a, b) for a, b in zip(after[False], after[True]))


def test_tokd_sq_l2_is_mse_times_the_map_size_and_both_are_cells():
    """The two distances differ by exactly C*H*W of the compared map, so their balance ratios do;
    and they are different hyper-parameter values, hence different runs."""
    from kdbench.config import resolve

    x_u8, y = frames(2)
    ratios = {}
    for distance in ("mse", "sq_l2"):
        s, d, params, x, feats = step_case("tokd", RT, x_u8, rotation_dim=64)
        d.hp["distance"] = distance
        _, diag = trainer.train_step(s, d, trainer.make_optimizer(params, RT, 1e-3), params, RT, x, y, feats,
                                     StepInfo(**INFO, log=True), student_params=list(s.parameters()))
        ratios[distance] = diag["balance_taps/kd_rgb"]
    (h, w), c = d._hw["rgb"], feats["rgb.proj"].shape[1]
    assert ratios["sq_l2"] / ratios["mse"] == pytest.approx(c * h * w, rel=1e-3)
    cells = {resolve(method="tokd", mode="both", profile="smoke", hp={"distance": v}).cell for v in ("mse", "sq_l2")}
    assert len(cells) == 2


def test_warning_names_the_term_and_its_weight():
    row = {"balance_taps/kd_rgb": 2e-4, "balance_student/kd_rgb": 5e-4,
           "balance_taps/kd_fre": 0.5, "balance_student/kd_fre": 2e3}
    line = balance.warning(row, {"beta": 1.0, "p": 2})
    assert line is not None and "\n" not in line
    assert "kd_rgb is 2.0e-04 of CE" in line and "raise beta" in line and "lower beta" in line
    assert balance.warning({"balance_taps/kd_rgb": 0.1, "balance_student/kd_rgb": 10.0}, {"beta": 1}) is None
    assert balance.weight_hparam("kd_rgb", {"alpha": 10.0, "kd_rgb_weight": 2.0}) == "kd_rgb_weight"
    assert balance.weight_hparam("kd_rgb", {"stages": "a"}) is None


def test_fit_warns_once_and_records_start_middle_end():
    """A FitNet weight far too small: one warning line after the first logging step, naming
    kd_rgb and beta; the history keeps every logging step's ratios and their summary."""
    from kdbench.config import TrainConfig
    from kdbench.data.frames import FrameSet
    from kdbench.models.students import build_student
    from kdbench.models.taps import probe_shapes
    from kdbench.plugins import create_distiller

    g = torch.Generator().manual_seed(0)

    def split(n):
        return FrameSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 2)

    train, val, test = split(24), split(8), split(8)
    t_shapes = {"rgb.stage2": (16, 4, 4), "fre.stage2": (16, 4, 4)}
    feats = {k: torch.randn(24, *v, generator=g) for k, v in t_shapes.items()}
    torch.manual_seed(0)
    student = build_student("res18t")
    d = create_distiller("fitnet", "both", probe_shapes(student, 32), t_shapes, beta=1e-7)
    lines = []
    cfg = TrainConfig(image_size=32, epochs=2, batch_size=8, eval_batch_size=8, log_every=1)
    res = trainer.fit(student, train, val, test, cfg, seed=0, distiller=d, features=feats, progress=False,
                      warn=lines.append)
    assert len(lines) == 1 and "kd_rgb" in lines[0] and "raise beta" in lines[0]
    rows = res.history["diagnostics"]
    assert len(rows) == 6 and all("balance_student/kd_fre" in r for r in rows)
    summary = res.history["balance"]
    assert [summary[p]["kd_rgb"]["step"] for p in balance.PHASES] == [0, 2, 5]
    assert summary["start"]["kd_rgb"]["taps"] == rows[0]["balance_taps/kd_rgb"] < balance.LOW
