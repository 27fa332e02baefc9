"""A training step reads no tensor value back to the host (on a GPU each read waits for the
queued kernels, and the GPU idles while the host catches up). Checked on CPU by refusing
Python-level reads; tests/test_gpu.py checks the same steps under CUDA's sync debug mode."""
import pytest
import torch

from kdbench.distiller import StepInfo
from kdbench.train.runtime import Runtime
from kdbench.train.trainer import LossWatch, train_step
from step_factory import host_reads_refused, step_case  # tests/ has no __init__.py: on sys.path

SIZE = 48


@pytest.mark.parametrize("method", ["vanilla", "at", "pkt", "sp", "fitnet", "vid", "tokd",
                                    "kd", "dkd", "dist", "rkd", "cc", "crd", "reviewkd"])
def test_a_step_that_does_not_log_reads_nothing_back(monkeypatch, method):
    rt = Runtime(precision="bf16", channels_last=True)  # the GPU's settings, on the CPU
    frames = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    s, d, params, x, feats = step_case(method, rt, frames, rotation_dim=64, cache_dtype=torch.bfloat16)
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)  # as on a GPU (CPU's default Adam reads its step count)
    y = torch.arange(4) % 2
    watch = LossWatch(every=50)  # the GPU's deferred NaN check
    info = StepInfo(step=1, epoch=0, epochs=1, steps_per_epoch=10, student_lr=1e-4, base_lr=1e-4, log=False)
    index = torch.arange(4) if d is not None and d.wants_index else None
    train_step(s, d, opt, params, rt, x, y, feats, info, watch, index)  # first step: lazily built state
    with host_reads_refused(monkeypatch, f"{method}'s training step"):
        train_step(s, d, opt, params, rt, x, y, feats, info, watch, index)
    watch.check()
