"""A training step reads no tensor value back to the host (on a GPU each read waits for the
queued kernels, and the GPU idles while the host catches up). Checked on CPU by refusing
Python-level reads; tests/test_gpu.py checks the same steps under CUDA's sync debug mode."""
import pytest
import torch

from kdbench.distiller import StepInfo, reduce_taps
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher
from kdbench.plugins import create_distiller
from kdbench.runtime import Runtime, prepare_module
from kdbench.trainer import LossWatch, to_input, train_step

SIZE = 48
READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("method", ["vanilla", "at", "pkt", "sp", "fitnet", "vid", "tokd"])
def test_a_step_that_does_not_log_reads_nothing_back(monkeypatch, method):
    rt = Runtime(precision="bf16", channels_last=True)  # the GPU's settings, on the CPU
    torch.manual_seed(0)
    t, s = DualBranchTeacher("res10t", SIZE).eval(), build_student("res18t")
    hp = {"rotation_dim": 64} if method == "tokd" else {}
    d = None if method == "vanilla" else prepare_module(
        create_distiller(method, "both", probe_shapes(s, SIZE), probe_shapes(t, SIZE), **hp), rt)
    s = prepare_module(s, rt)
    params = [*s.parameters(), *(d.student_parameters() if d is not None else [])]
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)  # as on a GPU (CPU's default Adam reads its step count)
    x = to_input(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8), rt)
    y = torch.arange(4) % 2
    feats = {}
    if d is not None:
        with torch.no_grad():
            _, taps = t(x)
        feats = {k: v.to(torch.bfloat16) for k, v in reduce_taps(taps, d.teacher_taps(), d.teacher_reductions()).items()}
    watch = LossWatch(every=50)  # the GPU's deferred NaN check
    info = StepInfo(step=1, epoch=0, epochs=1, steps_per_epoch=10, student_lr=1e-4, base_lr=1e-4, log=False)
    train_step(s, d, opt, params, rt, x, y, feats, info, watch)  # first step: lazily built state

    def refuse(*_args):
        raise AssertionError(f"{method}: a tensor value was read on the host during a training step")

    with monkeypatch.context() as patch:
        for name in READS:
            patch.setattr(torch.Tensor, name, refuse)
        train_step(s, d, opt, params, rt, x, y, feats, info, watch)
    watch.check()
