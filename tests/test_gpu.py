"""The GPU path against the CPU path (skipped without CUDA; `benchmarks/gpu_check.sh` runs it
first on the GPU machine): same numbers within tolerance, the pinned/streamed feeder, the
placement tiers of frames and teacher features, the deferred NaN check, and training steps that
never wait for the GPU (CUDA's sync debug mode set to error)."""

import pytest
import torch
from step_factory import step_case  # tests/ has no __init__.py, so pytest puts it on sys.path

from kdbench.config import resolve
from kdbench.data.feeder import feed
from kdbench.distiller import StepInfo
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.plugins import create_distiller
from kdbench.rotation import expm_each
from kdbench.store import ResultsStore
from kdbench.train.runner import Workspace, run
from kdbench.train.runtime import Runtime, allow_tf32, prepare_module
from kdbench.train.trainer import LossWatch, TrainingError, make_optimizer, to_input, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CPU = Runtime()
SIZE = 64
METHODS = ("vanilla", "at", "pkt", "sp", "fitnet", "vid", "tokd")


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 comparisons without TF32 (make_runtime turns it on for speed), and deterministic
    cuDNN kernels: training amplifies a 1e-7 difference from atomics to ~1e-3 in an epoch."""
    cudnn = torch.backends.cudnn
    allow_tf32(False)
    cudnn.benchmark, cudnn.deterministic = False, True
    yield
    allow_tf32(False)


def gpu(precision="fp32"):
    return Runtime(device=torch.device("cuda"), precision=precision, channels_last=True)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def test_feed_through_pinned_buffers_and_a_side_stream():
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=gen)
    feats = torch.randn(300, 64, 4, 4, generator=gen)
    batches = [torch.randperm(300, generator=gen)[:64] for _ in range(25)]
    sources = {"frames": frames.pin_memory(), "f": feats.pin_memory(), "resident": feats.cuda()}
    busy = torch.randn(2048, 2048, device="cuda")
    for idx, batch in zip(batches, feed(sources, batches, torch.device("cuda"), depth=3)):
        busy = busy @ busy / 2048  # keep the compute stream busy while copies run on the side stream
        assert batch["frames"].is_cuda and torch.equal(batch["frames"].cpu(), frames[idx])
        assert torch.equal(batch["f"].cpu(), feats[idx]) and torch.equal(batch["resident"].cpu(), feats[idx])


def test_batched_matrix_exp_on_cuda_matches_one_call_per_matrix():
    A = torch.randn(2, 512, 512, device="cuda") * 0.01
    S = A - A.transpose(-2, -1)
    single = torch.stack([torch.linalg.matrix_exp(s) for s in S.double()])
    assert rel(expm_each(S), single) < 1e-5


def test_leader_step_never_waits_for_the_gpu():
    """TOKD's leader step (its defaults: riemannian, SGD, cosine L_R) decides skips on the device
    and exponentiates without reading norms (exp_step), so the host can launch the next step
    while the GPU still runs the backward."""
    from kdbench.rotation import Rotation

    rot = Rotation((64, 4, 4), 1024).cuda()
    grads = [torch.randn(64, 1024, device="cuda") for _ in range(2)]
    rot.leader_step(grads, 1e-3)  # first call: cuBLAS handles, the optimiser state
    before = rot.R.clone()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            rot.leader_step(grads, 1e-3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert int(rot.leader_steps) == 4 and not torch.equal(rot.R, before)
    assert rot.orthogonality_error() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_a_training_step_that_does_not_log_never_syncs(method):
    """The trainer's step on GPU-resident data (bf16, channels_last, fused Adam, the deferred NaN
    check), each distiller's loss and TOKD's leader step included: nothing in it reads device
    values back to the host."""
    rt = gpu("bf16")
    frames = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8, device="cuda")
    s, d, params, x, feats = step_case(method, rt, frames, cache_dtype=torch.bfloat16)
    opt = make_optimizer(params, rt, lr=1e-4)
    y = torch.arange(8, device="cuda") % 2
    watch = LossWatch(every=50)
    info = StepInfo(step=1, epoch=0, epochs=1, steps_per_epoch=10, student_lr=1e-4, base_lr=1e-4, log=False)
    train_step(s, d, opt, params, rt, x, y, feats, info, watch)  # warm-up: allocations, autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            train_step(s, d, opt, params, rt, x, y, feats, info, watch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    watch.check()


@pytest.mark.parametrize("update", ["riemannian", "expm", "cayley"])
def test_rotations_stay_on_so_d_with_tf32_on(update):
    """make_runtime turns TF32 on; the rotation's own products must not use it (a TF32 product
    leaves R ~1e-3 off SO(d) at once). 100 large steps without re-orthonormalisation stay
    within 10x of the CPU's fp32 drift (5e-5 measured at d = 512)."""
    from kdbench.rotation import Rotation

    allow_tf32(True)  # as make_runtime leaves it; the fixture turns it off again
    rot = Rotation((32, 4, 4), 512, update=update, reortho_every=0).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(100):
        rot.leader_step([torch.randn(32, 512, device="cuda", generator=gen) for _ in range(2)], lr=0.5)
    assert rot.orthogonality_error() < 5e-4
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_matches_cpu(method):
    """Each distiller's first step on the GPU (fp32, channels_last) gives the CPU's loss terms
    and gradients; in bf16 autocast the terms agree to bf16 precision."""
    frames = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 2
    info = StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=10, student_lr=1e-4, base_lr=1e-4, log=False)

    def step(rt):
        s, d, params, x, feats = step_case(method, rt, frames)  # the same initial weights on every device
        opt = make_optimizer(params, rt, lr=1e-4)
        terms, _ = train_step(s, d, opt, params, rt, x, y.to(rt.device), feats, info, LossWatch())
        grads = torch.cat([p.grad.detach().float().flatten().cpu() for p in params if p.grad is not None])
        return {k: v.detach().float().cpu() for k, v in terms.items()}, grads

    cpu_terms, cpu_grads = step(CPU)
    gpu_terms, gpu_grads = step(gpu())
    assert cpu_terms.keys() == gpu_terms.keys()
    for k in cpu_terms:
        assert rel(gpu_terms[k], cpu_terms[k]) < 1e-3, k
    # gradients, not the Adam-updated weights: Adam's first step is lr * sign(g), so a parameter
    # whose gradient is ~1e-9 moves by +-lr depending on rounding (seen on an H200 for PKT)
    assert rel(gpu_grads, cpu_grads) < 1e-3
    bf16_terms, _ = step(gpu("bf16"))
    for k in cpu_terms:
        assert rel(bf16_terms[k], cpu_terms[k]) < 5e-2, k


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_runs_on_every_placement_tier_agree(tmp_path, monkeypatch, precision):
    """The same FitNet run with frames and teacher features on the GPU, then pinned in host
    memory (prefetched), then with an online teacher: the record says which; the first two
    train identically, and the online teacher's taps equal the cached ones to bf16 precision.
    A bf16 run caches its taps in bf16."""
    from kdbench.data.registry import load_dataset
    from kdbench.train.runner import teacher_source
    from kdbench.train.teacher_cache import ensure_teacher

    cfg = resolve(method="fitnet", mode="both", profile="smoke")
    ws = Workspace(tmp_path)  # one workspace: one teacher, trained once
    store = ResultsStore(ws.store_path)
    quiet = dict(progress=False, log=lambda m: None)
    rt = gpu(precision)
    records = {"device": run(cfg, ws, store, rt, **quiet)}
    monkeypatch.setattr(Runtime, "free_bytes", lambda self: 0)  # nothing fits the GPU: host tier
    records["host"] = run(cfg, ws, store, rt, **quiet)
    monkeypatch.setattr(Runtime, "host_free_bytes", lambda self: 0)  # nor the host: online teacher
    records["online"] = run(cfg, ws, store, rt, **quiet)
    placement = {k: (r.history["runtime"]["frames"], r.history["runtime"]["teacher_features"])
                 for k, r in records.items()}
    assert placement == {"device": ("device", "device cache"), "host": ("pinned host", "pinned host cache"),
                         "online": ("pinned host", "online")}
    device, host = (records[k].history["epochs"] for k in ("device", "host"))
    for a, b in zip(device, host):  # same cached values; bf16 kernels may differ run to run
        assert abs(a["loss_ce"] - b["loss_ce"]) <= (1e-4 if precision == "fp32" else 1e-2) * a["loss_ce"]

    splits = load_dataset(cfg.dataset, cfg.train.image_size, cfg.data)
    teacher = ensure_teacher(cfg, splits, ws.root, rt, **quiet)
    student = build_student(cfg.student)
    d = create_distiller("fitnet", "both", probe_shapes(student, cfg.train.image_size),
                         probe_shapes(teacher.model, cfg.train.image_size, "cuda"))
    feats, online, _ = teacher_source(teacher, d, splits["train"], rt, lambda m: None)
    assert online is not None and feats == {}
    monkeypatch.undo()
    cached, none, label = teacher_source(teacher, d, splits["train"], rt, lambda m: None)
    assert none is None and label == "device cache"
    assert {v.dtype for v in cached.values()} == {torch.float32 if precision == "fp32" else torch.bfloat16}
    idx = torch.arange(0, len(splits["train"]), 7)
    live = online(to_input(splits["train"].images[idx].cuda(), rt))
    for t in d.teacher_taps():
        assert rel(live[t], cached[t][idx.cuda()]) < 2e-2, t


def test_nan_loss_stops_a_gpu_run_naming_the_step(tmp_path):
    """On a GPU the loss is read every log_every steps, not every step; the error still names
    the first bad step and term, and no checkpoint of the poisoned state is written."""
    from kdbench.config import TrainConfig
    from kdbench.data.registry import load_dataset
    from kdbench.train.trainer import fit

    cfg = resolve(profile="smoke")
    splits = load_dataset(cfg.dataset, cfg.train.image_size, cfg.data)
    for f in splits.values():
        f.images = f.images.cuda()
    student = prepare_module(build_student("res18t"), gpu())
    real_forward = student.forward
    calls = {"n": 0}

    def poisoned(x):
        logits, taps = real_forward(x)
        calls["n"] += 1
        return (logits * float("nan") if calls["n"] == 3 else logits), taps

    student.forward = poisoned
    tcfg = TrainConfig(image_size=cfg.train.image_size, epochs=1, batch_size=16, eval_batch_size=64, log_every=5)
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 0 step 2: term 'ce'"):
        fit(student, splits["train"], splits["val"], splits["test"], tcfg, seed=0, rt=gpu(),
            checkpoint=tmp_path / "state.pt", progress=False)
    assert not (tmp_path / "state.pt").exists()
