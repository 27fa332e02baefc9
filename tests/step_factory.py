"""What ``train_step`` needs for one distiller: a res18t student, a res10t teacher's cached taps;
and a guard that refuses host reads of tensor values.

Shared by the tests that take single training steps on a runtime (the GPU against the CPU,
host reads refused, CUDA's sync debug mode, compiled against eager)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from torch import Tensor, nn

from kdbench.distiller import Distiller, reduce_taps
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher
from kdbench.plugins import create_distiller, get_distiller_class
from kdbench.train.runtime import Runtime, prepare_module
from kdbench.train.trainer import to_input


def step_case(method: str, rt: Runtime, frames: Tensor, rotation_dim: int = 256,
              cache_dtype: torch.dtype = torch.float32
              ) -> tuple[nn.Module, Distiller | None, list[nn.Parameter], Tensor, dict[str, Tensor]]:
    """(student, distiller or None, trainable parameters, input batch, cached teacher taps as
    ``cache_dtype``) for uint8 ``frames``; seeded, so every runtime starts from the same weights."""
    size = frames.shape[-1]
    torch.manual_seed(0)
    t, s = DualBranchTeacher("res10t", size).eval(), build_student("res18t")
    hp = {"rotation_dim": rotation_dim} if method == "tokd" else {}
    modes = () if method == "vanilla" else get_distiller_class(method).modes
    d = None if method == "vanilla" else create_distiller(
        method, "both" if "both" in modes else modes[0], probe_shapes(s, size), probe_shapes(t, size), **hp)
    s, t = prepare_module(s, rt), prepare_module(t, rt)
    d = prepare_module(d, rt) if d is not None else None
    if d is not None:
        d.prepare(torch.arange(len(frames)) % 2)  # the batch is the training split (labels as the tests' y)
    params = [*s.parameters(), *(d.student_parameters() if d is not None else [])]
    x = to_input(frames, rt)
    feats: dict[str, Tensor] = {}
    if d is not None:
        with torch.no_grad():
            _, taps = t(x)
        feats = {k: v.to(cache_dtype) for k, v in reduce_taps(taps, d.teacher_taps(), d.teacher_reductions()).items()}
    return s, d, params, x, feats


HOST_READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")


@contextmanager
def host_reads_refused(monkeypatch: pytest.MonkeyPatch, what: str) -> Iterator[None]:
    """Inside the block, reading a tensor's value on the host (Python-level) raises: on a GPU
    each such read waits for the queued kernels, and the GPU idles while the host catches up."""
    def refuse(*_args):
        raise AssertionError(f"{what}: a tensor value was read on the host")

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, refuse)
        yield
