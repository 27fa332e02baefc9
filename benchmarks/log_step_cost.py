"""Cost of a logging step (each term's loss balance + Fig. 4's cosine) against a plain step, at the
cpu profile's shapes (Res18-T, res18t teacher, 64 px, batch 64, Both mode); median of 5 interleaved
steps per distiller. The steps are ``benchmarks/speed.py``'s.

    python benchmarks/log_step_cost.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py's Case: the same step
from speed import Case, frozen_teacher  # noqa: E402

from kdbench.train.runtime import Runtime  # noqa: E402


def main() -> None:
    args = argparse.Namespace(size=64, batch=64, rotation_dim=1024, teacher_backbone="res18t")
    rt = Runtime()
    teacher = frozen_teacher(args, rt)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, 64 px, batch 64, res18t student and teacher")
    for method in ("fitnet", "at", "vid", "tokd"):
        case = Case(args, rt, teacher, "res18t", method, "both")
        for _ in range(2):  # warm-up
            case.step()
            case.step(diagnose=True)
        plain: list[float] = []
        logged: list[float] = []
        for _ in range(5):
            for diagnose, out in ((False, plain), (True, logged)):
                t0 = time.perf_counter()
                case.step(diagnose=diagnose)
                out.append(time.perf_counter() - t0)
        p, lg = statistics.median(plain), statistics.median(logged)
        print(f"{method}: plain {p * 1e3:.0f} ms, logging {lg * 1e3:.0f} ms, ratio {lg / p:.2f}", flush=True)


if __name__ == "__main__":
    main()
