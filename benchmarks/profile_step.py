"""Where a training step's time goes: kernel launches, GPU busy time, ATen calls, TOKD's leader step.

For each case (a student, a method, eager or one ``torch.compile`` mode) it times
the step without the profiler, then profiles ``--steps`` steps with
``torch.profiler`` and prints per step: ATen calls dispatched, CUDA kernels
launched, the GPU's busy time, ``gpu_busy`` = busy time / wall time (near 1: the
GPU is the limit; well below 1: the host cannot launch fast enough, and fusion or
CUDA graphs would pay), the time inside TOKD's leader step (``after_backward``),
and the costliest kernels. The steps are ``benchmarks/speed.py``'s (random data,
cached teacher features).

    python benchmarks/profile_step.py --device cuda --students res18t --methods vanilla,tokd --compile-modes default
        (eager and compiled: vanilla and TOKD, whose ratio compiled is the one ``--compile`` runs see)
    python benchmarks/profile_step.py --quick        # tiny CPU run (what the tests execute)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py's Case: the same step
from speed import Case, case_parser, frozen_teacher, sync, timed  # noqa: E402

from kdbench.train.runtime import make_runtime  # noqa: E402

LEADER = "kdbench.leader_step"


def device_us(event: Any) -> float:
    """An event's own device time in microseconds (the attribute was renamed in torch 2.4)."""
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))


def profile_case(case: Case, steps: int, device: torch.device) -> dict[str, Any]:
    if case.distiller is not None:  # attribute the leader step (TOKD's rotation update) by name
        after = case.distiller.after_backward

        def labelled(info):  # type: ignore[no-untyped-def]
            with record_function(LEADER):
                return after(info)

        case.distiller.after_backward = labelled
    wall = timed(case.step, steps, device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            case.step()
        sync(device)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    busy_ms = sum(device_us(e) for e in kernels) / steps / 1e3
    leader = next((e for e in events if e.key == LEADER), None)
    top = sorted(kernels, key=device_us, reverse=True)[:6]
    return {
        "wall_ms": wall * 1e3,
        "aten_calls": sum(e.count for e in events if e.key.startswith("aten::")) / steps,
        "kernels": sum(e.count for e in kernels) / steps if cuda else None,
        "gpu_busy_ms": busy_ms if cuda else None,
        "gpu_busy": busy_ms / (wall * 1e3) if cuda else None,
        "leader_cpu_ms": leader.cpu_time_total / steps / 1e3 if leader else None,
        "top_kernels": [{"name": e.key[:80], "per_step": e.count / steps, "ms": device_us(e) / steps / 1e3}
                        for e in top],
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = case_parser(__doc__, steps=10, students="res18t", methods="vanilla,tokd")
    p.add_argument("--compile-modes", default="", help="also profile each method's compiled step (student and "
                   "distiller's loss) in these modes")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="tiny CPU run: 48 px, batch 8, res10t teacher")
    args = p.parse_args(argv)
    if args.quick:
        args.device, args.size, args.batch, args.steps = "cpu", 48, 8, 2
        args.teacher_backbone, args.rotation_dim = "res10t", 256
    rt = make_runtime(args.device)
    teacher = frozen_teacher(args, rt)
    cases = [(s, m, None) for s in args.students.split(",") for m in args.methods.split(",")]
    cases += [(s, m, mode) for s in args.students.split(",") for m in args.methods.split(",")
              for mode in filter(None, args.compile_modes.split(","))]
    rows = []
    for student, method, mode in cases:
        t0 = time.perf_counter()
        try:
            case = Case(args, rt, teacher, student, method, "both" if method != "vanilla" else "rgb", mode)
            row = profile_case(case, args.steps, rt.device)
        except Exception as exc:  # noqa: BLE001 - one failing case must not cost the others
            print(f"profile_step: {student}/{method}/{mode or 'eager'} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            row = {"error": repr(exc)}
        rows.append({"student": student, "method": method, "compile": mode or "eager", **row,
                     "case_s": time.perf_counter() - t0})
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"device": str(rt.device), "torch": torch.__version__, "size": args.size,
                           "batch": args.batch, "precision": rt.precision, "rows": rows}, fh, indent=2)
    print_rows(rows, rt.device)
    return rows


def print_rows(rows: list[dict[str, Any]], device: torch.device) -> None:
    from tabulate import tabulate

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}: per training step")
    flat = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "top_kernels"}
            for r in rows]
    print(tabulate(flat, headers="keys", tablefmt="github"))
    for r in rows:
        if r.get("top_kernels"):
            print(f"\n{r['student']}/{r['method']}/{r['compile']}: costliest kernels per step")
            print(tabulate(r["top_kernels"], headers="keys", tablefmt="github", floatfmt=".3f"))


if __name__ == "__main__":
    main(sys.argv[1:])
