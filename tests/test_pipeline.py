"""The core pipeline on the smoke profile: teacher cache, selection on val, determinism."""
import dataclasses

import pytest
import torch

import kdbench.train.trainer as trainer
from kdbench.config import resolve
from kdbench.data.registry import load_dataset
from kdbench.store import ResultsStore
from kdbench.train.runner import Workspace, run
from kdbench.train.runtime import Runtime
from kdbench.train.teacher_cache import ensure_teacher

CPU = torch.device("cpu")
RT = Runtime()


def smoke(method="vanilla", **kw):
    return resolve(method=method, profile="smoke", **kw)


@pytest.fixture(scope="module")
def splits():
    cfg = smoke()
    return load_dataset(cfg.dataset, cfg.train.image_size, cfg.data)


def test_teacher_cache_reuse_and_invalidation(tmp_path, splits):
    cfg = smoke()
    logs = []
    first = ensure_teacher(cfg, splits, tmp_path, RT, log=logs.append, progress=False)
    assert not first.cached and any("training" in m for m in logs)
    logs.clear()
    second = ensure_teacher(cfg, splits, tmp_path, RT, log=logs.append, progress=False)
    assert second.cached and second.hash == first.hash
    assert logs == [m for m in logs if m.startswith(f"teacher: cached {first.hash}")]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)

    # a different teacher config is a different key
    other = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, epochs=1))
    assert ensure_teacher(other, splits, tmp_path, RT, log=logs.append, progress=False).hash != first.hash

    # features are cached (in the file, and in memory for the Teacher that read or wrote them),
    # and a corrupt feature file is detected and rebuilt
    feats = first.features("val", splits["val"], ["rgb.pooled"], {}, CPU, log=logs.append)
    again = second.features("val", splits["val"], ["rgb.pooled"], {}, CPU, log=logs.append)  # from the file
    assert torch.equal(feats["rgb.pooled"], again["rgb.pooled"])
    (path,) = (first.root / "features").glob("val-rgb.pooled-*.pt")
    path.write_bytes(b"garbage")
    assert first.features("val", splits["val"], ["rgb.pooled"], {}, CPU)["rgb.pooled"] is feats["rgb.pooled"]
    logs.clear()
    fresh = ensure_teacher(cfg, splits, tmp_path, RT, log=lambda m: None, progress=False)
    rebuilt = fresh.features("val", splits["val"], ["rgb.pooled"], {}, CPU, log=logs.append)
    assert any("corrupt feature file" in m for m in logs)
    assert torch.equal(rebuilt["rgb.pooled"], feats["rgb.pooled"])
    # flipped bits inside the values (a file that still loads, with finite numbers): caught by its digest
    data = bytearray(path.read_bytes())
    start = data.find(feats["rgb.pooled"].numpy().tobytes())
    assert start > 0
    for i in range(100):
        data[start + 4 * i + 1] ^= 0x04  # a low mantissa bit of 100 values
    path.write_bytes(bytes(data))
    logs.clear()
    fresh = ensure_teacher(cfg, splits, tmp_path, RT, log=lambda m: None, progress=False)
    assert torch.equal(fresh.features("val", splits["val"], ["rgb.pooled"], {}, CPU, log=logs.append)["rgb.pooled"],
                       feats["rgb.pooled"])
    assert any("does not match its digest" in m for m in logs)

    # a corrupt teacher checkpoint is detected and the teacher is retrained
    (first.root / "teacher.pt").write_bytes(b"\0" * 100)
    logs.clear()
    third = ensure_teacher(cfg, splits, tmp_path, RT, log=logs.append, progress=False)
    assert not third.cached
    assert any("rebuilding" in m for m in logs)


def test_selection_on_validation_not_test(splits, monkeypatch):
    seen = []
    real_evaluate = trainer.evaluate

    def spy(model, frames, batch_size, rt):
        seen.append("test" if frames is splits["test"] else "val" if frames is splits["val"] else "?")
        return real_evaluate(model, frames, batch_size, rt)

    monkeypatch.setattr(trainer, "evaluate", spy)
    from kdbench.models.students import build_student

    torch.manual_seed(0)
    cfg = dataclasses.replace(smoke().train, epochs=3)
    res = trainer.fit(build_student("res18t"), splits["train"], splits["val"], splits["test"], cfg, seed=0,
                      progress=False)
    assert seen == ["val", "val", "val", "test"]  # test once, after selection
    val_accs = [row["val_acc"] for row in res.history["epochs"]]
    assert res.best_epoch == val_accs.index(max(val_accs))
    assert res.val["acc"] == max(val_accs)


@pytest.mark.slow
def test_two_identical_runs_are_identical(tmp_path):
    cfg = smoke("fitnet", mode="both", train={"epochs": 1}, teacher={"epochs": 1})
    metrics = []
    for name in ("a", "b"):
        ws = Workspace(tmp_path / name)
        rec = run(cfg, ws, ResultsStore(ws.store_path), RT, log=lambda m: None, progress=False)
        assert rec.status == "done"
        metrics.append((rec.metrics["test"], [r["loss_ce"] for r in rec.history["epochs"]]))
        stored = ResultsStore(ws.store_path).get(cfg.hash)
        assert stored.status == "done" and stored.metrics["test"] == rec.metrics["test"]
        assert {"kd_rgb", "kd_fre"} <= {k[5:] for k in rec.history["epochs"][0] if k.startswith("loss_")}
        assert any("grad_cos" in d for d in rec.history["diagnostics"])
        assert set(rec.history["balance"]["start"]) == {"kd_rgb", "kd_fre"}
    assert metrics[0] == metrics[1]


def test_dataset_cache_loads_once_and_isolates_runs():
    from kdbench.data.registry import DatasetCache

    cache, cfg = DatasetCache(), smoke()
    a = cache.load(cfg.dataset, cfg.train.image_size, cfg.data)
    b = cache.load(cfg.dataset, cfg.train.image_size, cfg.data)
    assert a["train"].images is b["train"].images  # generated once
    a["test"] = a["val"]  # a cross-dataset run replaces its test split ...
    a["train"].images = a["train"].images[:1]  # ... or re-places frames
    c = cache.load(cfg.dataset, cfg.train.image_size, cfg.data)
    assert c["test"].images is b["test"].images and len(c["train"]) == len(b["train"])  # ... without touching others


def test_plan_taps_fills_device_then_host_smallest_first():
    from kdbench.train.runner import plan_taps

    sizes = {"s1": 400, "s2": 100, "s3": 30, "s4": 10}
    assert plan_taps(sizes, 10**6, 10**6) == dict.fromkeys(sizes, "device")
    assert plan_taps(sizes, 45, 150) == {"s4": "device", "s3": "device", "s2": "host", "s1": "online"}
    assert plan_taps(sizes, 0, 0) == dict.fromkeys(sizes, "online")


@pytest.mark.slow
def test_taps_over_the_budget_come_from_an_online_teacher(tmp_path, monkeypatch):
    """VID's four teacher maps per branch: with a budget that holds only the small ones, the big
    ones are computed online (the record says which) and training sees the same features."""
    from kdbench.train.runtime import Runtime

    cfg = smoke("vid", mode="both", train={"epochs": 1})
    ws = Workspace(tmp_path)
    quiet = dict(log=lambda m: None, progress=False)
    cached = run(cfg, ws, ResultsStore(ws.store_path), RT, **quiet)
    assert cached.history["runtime"]["teacher_features"] == "host cache"
    monkeypatch.setattr(Runtime, "free_bytes", lambda self: 5_000_000)  # smoke: stage3/4 maps fit (4.5 MB), stage1/2 not
    mixed = run(cfg, ws, ResultsStore(ws.store_path), RT, **quiet)
    label = mixed.history["runtime"]["teacher_features"]
    assert label.startswith("mixed: ") and "rgb.stage1=online" in label and "fre.stage4=host cache" in label
    for a, b in zip(cached.history["epochs"], mixed.history["epochs"]):
        assert abs(a["loss_kd_fre"] - b["loss_kd_fre"]) <= 1e-4 * abs(a["loss_kd_fre"])
    monkeypatch.setattr(Runtime, "free_bytes", lambda self: 0)
    online = run(cfg, ws, ResultsStore(ws.store_path), RT, **quiet)
    assert online.history["runtime"]["teacher_features"] == "online"


@pytest.mark.skipif(not (__import__("shutil").which("g++") or __import__("shutil").which("c++")),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_matches_eager(splits):
    """`--compile`: the student's forward (hook taps included) through torch.compile. A step
    gives the eager loss and gradients; a whole epoch then runs (the curves part by float drift
    that Adam amplifies: 7e-8 after one step, ~0.5 % after eight, measured)."""
    from kdbench.distiller import StepInfo
    from kdbench.models.students import build_student

    train = splits["train"]
    x, y = trainer.to_input(train.images[:32], RT), train.labels[:32]
    info = StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=1, student_lr=1e-3, base_lr=1e-3)
    cfg = dataclasses.replace(smoke().train, epochs=1)
    step, fits = {}, {}
    for compiled in (False, True):
        torch.manual_seed(0)
        net = build_student("res18t")
        params = list(net.parameters())
        terms, _ = trainer.train_step(torch.compile(net) if compiled else net, None,
                                      trainer.make_optimizer(params, RT, 1e-3), params, RT, x, y, {}, info)
        step[compiled] = float(terms["ce"].detach()), torch.cat([p.grad.flatten() for p in params])
        torch.manual_seed(0)
        fits[compiled] = trainer.fit(build_student("res18t"), train, splits["val"], splits["test"], cfg, seed=0,
                                     rt=dataclasses.replace(RT, compile=compiled), progress=False)
    assert abs(step[True][0] - step[False][0]) <= 1e-5 * step[False][0]
    assert float((step[True][1] - step[False][1]).norm() / step[False][1].norm()) < 1e-4
    eager, comp = fits[False].history["epochs"][0], fits[True].history["epochs"][0]
    assert abs(comp["loss_ce"] - eager["loss_ce"]) <= 0.05 * eager["loss_ce"]
    assert 0.0 <= fits[True].test["auc"] <= 100.0  # percent


def test_a_bf16_run_caches_teacher_taps_in_bf16_and_distillers_see_fp32(tmp_path, splits):
    """On a bf16 run the feature cache is bf16 (its own files, half the bytes); the trainer hands the
    taps to the distiller in fp32, equal to the fp32 cache's to bf16 precision."""
    from kdbench.distiller import StepInfo
    from kdbench.models.students import build_student
    from kdbench.models.taps import probe_shapes
    from kdbench.plugins import create_distiller
    from kdbench.train.runner import teacher_source

    cfg = smoke("fitnet", mode="both")
    teacher = ensure_teacher(cfg, splits, tmp_path, RT, log=lambda m: None, progress=False)
    student = build_student(cfg.student)
    size = cfg.train.image_size
    d = create_distiller("fitnet", "both", probe_shapes(student, size), probe_shapes(teacher.model, size))
    half = Runtime(precision="bf16")
    f32, _, _ = teacher_source(teacher, d, splits["train"], RT, lambda m: None)
    f16, _, _ = teacher_source(teacher, d, splits["train"], half, lambda m: None)
    for tap, v in f16.items():
        assert v.dtype == torch.bfloat16 and f32[tap].dtype == torch.float32
        assert torch.allclose(v.float(), f32[tap], rtol=1 / 128, atol=1e-6)
    files = sorted(p.name for p in (teacher.root / "features").glob("train-*.pt"))
    assert len(files) == 4 and sum(name.endswith("-bfloat16.pt") for name in files) == 2

    seen = []
    forward = d.forward
    d.forward = lambda s, t, y: seen.extend(v.dtype for v in t.values()) or forward(s, t, y)
    idx = torch.arange(8)
    x, y = trainer.to_input(splits["train"].images[idx], half), splits["train"].labels[idx]
    params = [*student.parameters(), *d.student_parameters()]
    info = StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=1, student_lr=1e-3, base_lr=1e-3)
    trainer.train_step(student, d, trainer.make_optimizer(params, RT, 1e-3), params, half, x, y,
                       {t: v[idx] for t, v in f16.items()}, info)
    assert seen == [torch.float32, torch.float32]


def test_features_another_shard_wrote_while_this_one_waited_are_read(tmp_path, splits, monkeypatch):
    """Two grid shards needing the same taps: the one that waited for the lock reads what the
    other wrote instead of computing (and writing) it again."""
    from contextlib import contextmanager

    from kdbench.train import teacher_cache

    cfg = smoke()
    quiet = dict(log=lambda m: None, progress=False)
    mine = ensure_teacher(cfg, splits, tmp_path, RT, **quiet)
    other = ensure_teacher(cfg, splits, tmp_path, RT, **quiet)  # the other shard's view of the same teacher
    real_lock, real_compute = teacher_cache.locked, teacher_cache.Teacher._compute
    computed_by, waited = [], []

    @contextmanager
    def lock_taken_by_the_other_shard(root):
        if not waited:  # this shard waits while the other one computes and writes the taps
            waited.append(True)
            other.features("val", splits["val"], ["rgb.stage4"], {}, CPU)
        with real_lock(root):
            yield

    monkeypatch.setattr(teacher_cache, "locked", lock_taken_by_the_other_shard)
    monkeypatch.setattr(teacher_cache.Teacher, "_compute",
                        lambda self, *a, **k: computed_by.append(self) or real_compute(self, *a, **k))
    feats = mine.features("val", splits["val"], ["rgb.stage4"], {}, CPU)
    assert computed_by == [other]  # computed once, by the other shard
    assert torch.equal(feats["rgb.stage4"], other.features("val", splits["val"], ["rgb.stage4"], {}, CPU)["rgb.stage4"])


@pytest.mark.slow
def test_a_grid_reads_each_teacher_and_feature_file_once(tmp_path, monkeypatch):
    """Runs sharing a TeacherCache (as `kdbench grid` does) read the teacher checkpoint and each
    feature file once, and train exactly as runs that read everything afresh."""
    from kdbench.train import teacher_cache
    from kdbench.train.teacher_cache import TeacherCache

    quiet = dict(log=lambda m: None, progress=False)
    both, rgb = (smoke("fitnet", mode=m, train={"epochs": 1}) for m in ("both", "rgb"))  # rgb's tap is one of both's two
    fresh = {}
    for cfg in (both, rgb):
        ws = Workspace(tmp_path / f"fresh-{cfg.mode}")
        fresh[cfg.mode] = run(cfg, ws, ResultsStore(ws.store_path), RT, **quiet)
    reads = []
    for reader in ("safe_load", "load_verified"):  # the teacher's checkpoint, the digested feature files
        real = getattr(teacher_cache, reader)
        monkeypatch.setattr(teacher_cache, reader, lambda path, *a, real=real: reads.append(path.name) or real(path, *a))
    builds, real_build = [], teacher_cache.build_teacher
    monkeypatch.setattr(teacher_cache, "build_teacher",
                        lambda cfg, load_weights=True: builds.append(load_weights) or real_build(cfg, load_weights))
    ws, teachers = Workspace(tmp_path / "fresh-both"), TeacherCache()  # its teacher and features exist
    shared = {cfg.mode: run(cfg, ws, ResultsStore(ws.store_path), RT, teachers=teachers, **quiet)
              for cfg in (both, rgb)}
    assert sorted(reads) == sorted(["teacher.pt", *{f.name for f in (ws.root / "teachers").rglob("train-*.pt")}])
    assert builds == [False]  # the teacher's architecture was built once, to probe its tap shapes
    for mode in ("both", "rgb"):
        assert shared[mode].metrics["test"] == fresh[mode].metrics["test"]


def test_the_logged_gradient_cosine_is_taken_at_the_taps():
    """Fig. 4's cosine for a multi-stage distiller (AT: four stages) is between the KD terms'
    gradients at the taps themselves: the partial derivatives, not totals that also gather, at
    stage 1, what flows back through the backbone from stages 2-4."""
    import torch.nn.functional as F
    from step_factory import step_case

    from kdbench.distiller import StepInfo

    frames = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 2
    s, d, params, x, feats = step_case("at", RT, frames)
    _, taps = s(x)
    leaves = {k: taps[k].detach().requires_grad_() for k in d.student_taps()}
    kd = d(leaves, feats, y)

    def flat(term):
        grads = torch.autograd.grad(term, list(leaves.values()), retain_graph=True)
        return torch.cat([g.flatten(1) for g in grads], 1)

    expected = float(F.cosine_similarity(flat(kd["kd_rgb"]), flat(kd["kd_fre"]), dim=1).mean())
    info = StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=10, student_lr=1e-3, base_lr=1e-3, log=True)
    _, diag = trainer.train_step(s, d, trainer.make_optimizer(params, RT, 1e-3), params, RT, x, y, feats, info)
    assert diag["grad_cos"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_the_trainer_tells_the_leader_step_its_global_batch(smoke_workspace, monkeypatch):
    """StepInfo.batch_size reaches TOKD's leader step: under torchrun it bounds the averaged
    step alike on every rank (tests/test_ddp.py), so no rank reads the step back."""
    from kdbench.rotation import Rotation

    seen = []
    real = Rotation.leader_step
    monkeypatch.setattr(Rotation, "leader_step",
                        lambda self, *a, **kw: (seen.append(kw.get("global_rows")), real(self, *a, **kw))[1])
    cfg = smoke("tokd", mode="both", train={"epochs": 1})
    run(cfg, smoke_workspace, ResultsStore(smoke_workspace.store_path), RT, log=lambda m: None, progress=False)
    assert seen and seen[0] == cfg.train.batch_size and all(0 < r <= cfg.train.batch_size for r in seen)


@pytest.mark.parametrize("method", ["at", "fitnet", "pkt", "sp", "vid", "tokd", "kd", "dkd", "dist", "rkd", "cc", "crd",
                                    "reviewkd"])
def test_every_distiller_has_its_loss_balance_measured_on_a_logging_step(method):
    """One logging step of each built-in distiller (trainer.train_step, as a run takes it) gives
    every weighted KD term a finite, positive ratio at its taps and over the student's parameters."""
    from step_factory import step_case

    from kdbench.distiller import StepInfo
    from kdbench.train.trainer import train_step

    frames = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 2
    s, d, params, x, feats = step_case(method, RT, frames, rotation_dim=64)
    opt = torch.optim.Adam(params, lr=1e-4)
    info = StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=1, student_lr=1e-4, base_lr=1e-4, log=True)
    index = torch.arange(8) if d.wants_index else None
    terms, diag = train_step(s, d, opt, params, RT, x, y, feats, info, index=index, student_params=list(s.parameters()))
    kd = [t for t in terms if t != "ce"]
    assert kd, terms
    for term in kd:
        for where in ("taps", "student"):
            ratio = diag[f"balance_{where}/{term}"]
            if (method, term) == ("dkd", "kd_nckd"):  # exactly 0 with two classes (kdbench_plugins/dkd.py)
                assert ratio == 0.0
            else:
                assert 0 < ratio < float("inf"), (term, where, ratio)


def test_a_run_records_its_loss_balance_and_the_table_shows_it(smoke_workspace):
    """Smoke runs store each KD term's start/middle/end ratios in their records, and
    `kdbench table balance` lists every one of them (one row per term)."""
    from typer.testing import CliRunner

    from kdbench.cli import app

    store = ResultsStore(smoke_workspace.store_path)
    methods = ("at", "tokd")
    for method in methods:
        rec = run(smoke(method, mode="both", train={"epochs": 1}), smoke_workspace, store, RT, log=lambda m: None,
                  progress=False)
        summary = ResultsStore(smoke_workspace.store_path).get(rec.hash).history["balance"]
        assert set(summary) == {"start", "middle", "end"} and set(summary["start"]) == {"kd_rgb", "kd_fre"}
        assert all(v["taps"] > 0 and v["student"] > 0 for v in summary["start"].values())
    res = CliRunner().invoke(app, ["table", "balance", "--profile", "smoke", "--format", "csv",
                                   "--workdir", str(smoke_workspace.root)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    for method in methods:
        assert sum(1 for line in lines if f",{method}," in line.lower().replace(" ", "")) >= 2, method
