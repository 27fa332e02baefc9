"""Cost per training step of resolving the branches' KD gradients at the taps.

For each distiller in Both mode, one ``train_step`` (forward, CE + KD, backward, Adam step) is
timed with every resolver, and the ratio to the plain step (``none``: the single backward) is
printed. The resolving path adds one ``autograd.grad`` per branch through the distiller's
own heads (never the backbone), a Gram matrix of the two flattened gradients and one
(2 x 2) @ (2 x D) product; the backbone is still traversed once. Steps alternate between the
resolvers (round-robin, after a warm-up of each), so a load change on a shared machine hits
every variant alike; the medians and their ratios come from this one run.

    python benchmarks/resolver_cost.py --quick                       # seconds on CPU
    python benchmarks/resolver_cost.py --repeat 20 --json results/bench/cpu-vm/resolver_cost.json
    python benchmarks/resolver_cost.py --device cuda --batch 64 --size 128
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from kdbench.distiller import StepInfo, reduce_taps
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher
from kdbench.plugins import create_distiller, create_resolver
from kdbench.train.runtime import Runtime, make_runtime, prepare_module
from kdbench.train.trainer import make_optimizer, to_input, train_step

RESOLVERS = ("none", "pcgrad", "cagrad")
METHODS = ("at", "pkt", "sp", "vid", "fitnet", "tokd")


def sync(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def measure(method: str, student: str, batch: int, size: int, repeat: int, rt: Runtime) -> dict:
    torch.manual_seed(0)
    teacher = prepare_module(DualBranchTeacher("res10t", size).eval(), rt)
    s = build_student(student)
    hp = {"rotation_dim": 256} if method == "tokd" else {}
    d = create_distiller(method, "both", probe_shapes(s, size), probe_shapes(teacher, size), **hp)
    s, d = prepare_module(s, rt), prepare_module(d, rt)
    params = [*s.parameters(), *d.student_parameters()]
    opt = make_optimizer(params, rt, 1e-4)
    frames = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    x, y = to_input(frames, rt), (torch.arange(batch) % 2).to(rt.device)
    with torch.no_grad():
        _, taps = teacher(x)
    feats = reduce_taps(taps, d.teacher_taps(), d.teacher_reductions())
    resolvers = {name: None if name == "none" else create_resolver(name) for name in RESOLVERS}
    info = StepInfo(step=1, epoch=0, epochs=1, steps_per_epoch=10, student_lr=1e-4, base_lr=1e-4, log=False)
    times: dict[str, list[float]] = {name: [] for name in RESOLVERS}
    for rep in range(repeat + 1):  # the first round is the warm-up
        for name, resolver in resolvers.items():
            sync(rt)
            t0 = time.perf_counter()
            train_step(s, d, opt, params, rt, x, y, feats, info, resolver=resolver)
            sync(rt)
            if rep:
                times[name].append(time.perf_counter() - t0)
    ms = {name: 1000 * statistics.median(v) for name, v in times.items()}
    return {"method": method, "student": student, "batch": batch, "size": size, "repeat": repeat,
            "ms": ms, "ratio_to_none": {name: ms[name] / ms["none"] for name in RESOLVERS}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--student", default="res18t")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64, help="image size (the cpu profile's)")
    ap.add_argument("--repeat", type=int, default=10, help="timed steps per resolver")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="batch 8, 48 px, 2 repeats, sp and at")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.repeat, args.methods = 8, 48, 2, ["sp", "at"]
    rt = make_runtime(args.device, "fp32")
    rows = []
    print(f"{'method':8} {'none ms':>9} {'pcgrad ms':>10} {'cagrad ms':>10} {'pcgrad/none':>12} {'cagrad/none':>12}")
    for method in args.methods:
        row = measure(method, args.student, args.batch, args.size, args.repeat, rt)
        rows.append(row)
        ms, ratio = row["ms"], row["ratio_to_none"]
        print(f"{method:8} {ms['none']:9.1f} {ms['pcgrad']:10.1f} {ms['cagrad']:10.1f} "
              f"{ratio['pcgrad']:12.3f} {ratio['cagrad']:12.3f}", flush=True)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "device": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else
            f"cpu ({torch.get_num_threads()} threads, {platform.machine()})", "torch": torch.__version__}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
