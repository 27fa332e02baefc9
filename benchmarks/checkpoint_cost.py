"""What an epoch checkpoint costs the training thread: ``atomic_save`` against ``BackgroundSaver.save``.

The state is what ``trainer.fit`` writes each epoch for a student: weights, Adam's
two moments, and the best epoch's weights. ``BackgroundSaver.save`` returns after
copying that state (device-to-host on a GPU, a clone on a CPU); the disk write
then runs on a worker thread while the next epoch trains.

    python benchmarks/checkpoint_cost.py                     # Xception, in a temporary directory
    python benchmarks/checkpoint_cost.py --student res18t --dir /scratch --device cuda
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdbench.io import BackgroundSaver, atomic_save
from kdbench.models.students import build_student
from kdbench.train.runtime import Runtime
from kdbench.train.trainer import make_optimizer


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="xception")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    model = build_student(args.student).to(device)
    opt = make_optimizer(list(model.parameters()), Runtime(device=device), 1e-3)
    model(torch.randn(2, 3, 64, 64, device=device))[0].sum().backward()
    opt.step()  # Adam's moments exist, as after any epoch
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "best_state": copy.deepcopy(model.state_dict())}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "state.pt"
        direct, returned, total = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            atomic_save(state, path)
            direct.append(time.perf_counter() - t0)
            with BackgroundSaver() as saver:
                t0 = time.perf_counter()
                saver.save(state, path)
                returned.append(time.perf_counter() - t0)
            total.append(time.perf_counter() - t0)
        size = path.stat().st_size
    out = {"student": args.student, "mb": size / 1e6, "atomic_save_s": statistics.median(direct),
           "background_returns_s": statistics.median(returned), "background_total_s": statistics.median(total)}
    print(f"{args.student} on {device}: checkpoint {out['mb']:.0f} MB; atomic_save {out['atomic_save_s']:.3f} s; "
          f"BackgroundSaver.save returns after {out['background_returns_s']:.3f} s "
          f"(write done after {out['background_total_s']:.3f} s); medians of {args.repeat}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
