"""Training batches (frames and cached teacher features) from wherever they live,
with the next batches prepared ahead.

Tensors resident on the GPU are gathered there (nothing to overlap). Tensors
in host memory are gathered by a worker thread, ``depth`` batches ahead of the
step that uses them, and for a GPU into freshly pinned buffers copied on a
side stream: the host gather and the copy engine run while the GPU trains,
which keeps a GPU fed when a dataset or a feature cache does not fit on it.
The batches and their order are exactly those of a plain ``t[idx]`` loop.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator, Mapping

import torch
from torch import Tensor


def _gather_host(sources: Mapping[str, Tensor], idx: Tensor, device: torch.device,
                 stream: torch.cuda.Stream | None) -> tuple[dict[str, Tensor], torch.cuda.Event | None]:
    """``t[idx]`` of each host tensor, moved to ``device`` through pinned buffers on ``stream``."""
    if stream is None:
        return {k: t[idx].to(device) for k, t in sources.items()}, None
    out = {}
    for k, t in sources.items():
        pinned = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
        torch.index_select(t, 0, idx, out=pinned)
        with torch.cuda.stream(stream):
            out[k] = pinned.to(device, non_blocking=True)  # the host allocator keeps `pinned` until the copy ends
    with torch.cuda.stream(stream):
        done = torch.cuda.Event()
        done.record(stream)
    return out, done


def feed(sources: Mapping[str, Tensor], batches: Iterable[Tensor], device: torch.device,
         depth: int = 2) -> Iterator[dict[str, Tensor]]:
    """Yield ``{name: t[idx]}`` on ``device`` for each index batch. Host tensors are gathered
    ``depth`` batches ahead on a worker thread (``depth=0``: when asked for, the CPU trainer's
    choice, where the gather is cheap and a second thread competes for the cores)."""
    host = {k: t for k, t in sources.items() if t.device.type == "cpu"} if depth > 0 else {}
    resident = {k: t for k, t in sources.items() if k not in host}

    def here(idx: Tensor) -> dict[str, Tensor]:
        if not resident:
            return {}
        on = idx.to(next(iter(resident.values())).device, non_blocking=True)  # they share one device: copy once
        return {k: t[on].to(device) for k, t in resident.items()}

    if not host:
        for idx in batches:
            yield here(idx)
        return
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    pending: deque[tuple[Tensor, Future]] = deque()
    it = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="kdbench-feed") as pool:
        submit = lambda idx: pending.append((idx, pool.submit(_gather_host, host, idx, device, stream)))  # noqa: E731
        for idx in it:
            submit(idx)
            if len(pending) > depth:
                break
        while pending:
            idx, future = pending.popleft()
            batch, done = future.result()
            nxt = next(it, None)
            if nxt is not None:
                submit(nxt)
            if done is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(done)
                for t in batch.values():
                    t.record_stream(current)  # allocated on the side stream, used on this one
            yield {**here(idx), **batch}
