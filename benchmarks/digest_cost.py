"""What the SHA-256 digests cost: writing a feature file with its digest, and reading it back
verified, against plain ``torch.save`` / ``torch.load``.

A grid reads each feature file once per process (``TeacherCache``), so the verification is
paid once per file per grid, not once per run.

    python benchmarks/digest_cost.py                        # a 256 MB feature file, 5 repeats
    python benchmarks/digest_cost.py --mb 1024 --dir /scratch
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from kdbench.io import atomic_save, load_verified, safe_load


def median_s(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=256, help="feature file size in MB (float32 values)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = p.parse_args(argv)
    entry = {"format": 1, "split": "train", "values": torch.randn(args.mb * 2**20 // 4)}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain, verified = Path(tmp) / "plain.pt", Path(tmp) / "verified.pt"
        save = median_s(lambda: torch.save(entry, plain), args.repeat)
        save_digest = median_s(lambda: atomic_save(entry, verified), args.repeat)
        load = median_s(lambda: safe_load(plain), args.repeat)  # both warm in the page cache
        load_digest = median_s(lambda: load_verified(verified), args.repeat)
    print(f"{args.mb} MB feature file, median of {args.repeat} ({torch.get_num_threads()} torch threads)")
    print(f"write: torch.save {save:.3f} s, atomic_save with digest {save_digest:.3f} s "
          f"(+{save_digest - save:.3f} s, {save_digest / save - 1:+.0%})")
    print(f"read:  safe_load {load:.3f} s, load_verified {load_digest:.3f} s "
          f"(+{load_digest - load:.3f} s, {load_digest / load - 1:+.0%}; "
          f"hashing at {args.mb / max(load_digest - load, 1e-9):.0f} MB/s)")


if __name__ == "__main__":
    main()
