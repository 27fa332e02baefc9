"""How a run executes (not what it computes): device, precision, memory, processes.

None of this enters the run hash. On CPU the defaults are fp32 and one
process, the tested path; on a GPU bf16 autocast, channels_last and
GPU-resident data are switched on; under ``torchrun`` each process takes its
slice of every global batch and gradients are averaged, so 1 and N processes
follow the same optimisation (BatchNorm statistics are synchronised on GPU).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Runtime:
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = False
    compile: bool = False
    memory_budget: float = 0.5  # fraction of free device memory for resident data and teacher features
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def free_bytes(self) -> int:
        """Memory we allow ourselves for resident frames and cached teacher features."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * self.memory_budget)
        return self.host_free_bytes()

    def host_free_bytes(self) -> int:
        """Host memory we allow ourselves (pinned feature caches, frames that miss the GPU)."""
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages * self.memory_budget)

    def describe(self) -> dict[str, object]:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "compile": self.compile, "world": self.world}


def make_runtime(device: str = "auto", precision: str = "auto", compile: bool = False,
                 memory_budget: float = 0.5) -> Runtime:
    """Pick the device (``auto``: CUDA when present) and join a ``torchrun`` group if launched by one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if world > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; choose one of: auto, fp32, bf16")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        allow_tf32(True)
    return Runtime(device=dev, precision=precision, channels_last=dev.type == "cuda", compile=compile,
                   memory_budget=memory_budget, rank=rank, world=world)


def _tf32_switches() -> list[tuple[object, str, object, object]]:
    """(backend, attribute, TF32 on, TF32 off) for CUDA matmuls and cuDNN convolutions: torch's
    per-backend ``fp32_precision`` where it has one (torch 2.11 refuses to read the global
    precision once the legacy ``allow_tf32`` flags and the newer API have both been used)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        # cudnn.conv exists on torch's CudnnModule (the module replaced in sys.modules), which its annotations miss
        conv = cudnn.conv  # type: ignore[attr-defined]
        return [(matmul, "fp32_precision", "tf32", "ieee"), (conv, "fp32_precision", "tf32", "ieee")]
    return [(matmul, "allow_tf32", True, False), (cudnn, "allow_tf32", True, False)]  # older torch


def allow_tf32(enabled: bool) -> None:
    """TF32 for fp32 matrix products and convolutions (on for speed on a GPU)."""
    for backend, attr, on, off in _tf32_switches():
        setattr(backend, attr, on if enabled else off)


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Full-precision fp32 matrix products inside the block, whatever ``allow_tf32`` set
    (CPU products have no TF32); the previous setting is restored after."""
    backend, attr, _, off = _tf32_switches()[0]
    old = getattr(backend, attr)
    setattr(backend, attr, off)
    try:
        yield
    finally:
        setattr(backend, attr, old)


M = TypeVar("M", bound=nn.Module)


def prepare_module(module: M, rt: Runtime) -> M:
    """Move to the device; sync BatchNorm across processes (CUDA only: torch's SyncBatchNorm
    has no CPU kernel, so gloo runs keep per-process statistics); channels_last on GPU."""
    if rt.distributed and rt.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module = module.to(rt.device)
    if rt.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def average_gradients(params: Iterable[nn.Parameter], rt: Runtime) -> None:
    """One all-reduce of every gradient (flattened), averaged over processes."""
    if not rt.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= rt.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(module: nn.Module, rt: Runtime) -> None:
    """Average floating-point buffers (BatchNorm running statistics) so every process
    evaluates and saves the same model."""
    if not rt.distributed:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf /= rt.world


def rank_slice(idx: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """This process's share of a global batch."""
    return idx[rt.rank::rt.world] if rt.distributed else idx


@contextlib.contextmanager
def main_first(rt: Runtime) -> Iterator[None]:
    """Let rank 0 do something (train the teacher, write a cache) before the others read it."""
    if rt.distributed and not rt.is_main:
        dist.barrier()
    yield
    if rt.distributed and rt.is_main:
        dist.barrier()
