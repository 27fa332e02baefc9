"""Training-step speed of kdbench's paths, as ratios measured in one run on one machine.

(a) each distiller's step throughput as a ratio to the vanilla student's, and the
    cost of a logging step's diagnostics (the loss balance of every term and the
    RGB-vs-frequency gradient cosine) on a step that logs them;
(b) the cached-teacher step against an online-teacher step (the way
    torchdistill and RepDistiller run: the whole teacher forward per batch), per
    student, and against kdbench's own online fallback, which stops the teacher
    after the last tap the distiller needs;
(c) end to end: steps fed from frames (and then also the cached teacher
    features) in pinned host memory through the trainer's prefetching feeder
    (``kdbench.data.feeder``) against steps on GPU-resident tensors, both timed
    over a whole loop;
(d) the compiled vanilla step against the eager one, per ``torch.compile`` mode
    (``--compile-modes``; "reduce-overhead" adds CUDA graphs, which pays where the
    step is bound by kernel launches, as a thin ResNet's may be);
(e) peak GPU memory of each configuration;
and each step's forward arithmetic per image (``gflop_fwd_per_img``), whose ratio to
vanilla's (``flop_ratio``) is the throughput ratio an arithmetic-bound step would have.
Random data; the timings are medians over ``--steps`` steps after warm-up.

    python benchmarks/speed.py --device cuda --size 299 --batch 64 --json out.json
    python benchmarks/speed.py --quick            # tiny CPU run (what the tests execute)
    python benchmarks/speed.py --device cpu --sections flops --batch 2   # arithmetic only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdbench.data.feeder import feed
from kdbench.distiller import StepInfo
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher
from kdbench.plugins import create_distiller
from kdbench.train.runner import cache_dtype, online_teacher
from kdbench.train.runtime import Runtime, make_runtime, prepare_module
from kdbench.train.trainer import LossWatch, compiled_step, make_optimizer, to_input, train_step

METHODS = ("at", "pkt", "sp", "fitnet", "vid", "tokd")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], steps: int, device: torch.device, warmup: int = 5) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


class Case:
    """A student (+ distiller) with a step function over a fixed batch."""

    def __init__(self, args: argparse.Namespace, rt: Runtime, teacher: DualBranchTeacher, student: str,
                 method: str = "vanilla", mode: str = "rgb", compile: str | None = None) -> None:
        torch.manual_seed(0)
        net = build_student(student)
        s_shapes = probe_shapes(net, args.size)
        t_shapes = probe_shapes(teacher, args.size, rt.device)
        hp = {"rotation_dim": args.rotation_dim} if method == "tokd" else {}
        self.distiller = None if method == "vanilla" else prepare_module(
            create_distiller(method, mode, s_shapes, t_shapes, **hp), rt)
        self.model = prepare_module(net, rt)
        self.rt, self.teacher = rt, teacher
        if self.distiller is not None:  # the runner's online teacher; cached features are its output, kept
            taps, reductions = self.distiller.teacher_taps(), self.distiller.teacher_reductions()
            self.online = {"full": online_teacher(teacher, taps, reductions, rt, truncate=False),
                           "truncated": online_teacher(teacher, taps, reductions, rt)}
            self.teacher_feats = self.online["full"]
        self.forward = compiled_step(self.model, self.distiller, compile) if compile else self.model
        self.graphs = compile == "reduce-overhead"  # CUDA graphs: each step must say it is a new one
        self.student_params = list(self.model.parameters())
        self.params = [*self.student_params, *(self.distiller.student_parameters() if self.distiller else [])]
        self.opt = make_optimizer(self.params, rt, lr=1e-4)
        self.watch = LossWatch.for_run(rt, log_every=20)  # as the trainer checks
        n = args.batch
        self.pool_dev = torch.randint(0, 256, (4 * n, 3, args.size, args.size), dtype=torch.uint8, device=rt.device)
        self.frames_dev = self.pool_dev[:n]
        self.y = torch.randint(0, 2, (n,), device=rt.device)
        self.dtype = cache_dtype(rt)  # cached taps are stored as the runner stores them (bf16 on a bf16 run)
        self.feats = ({k: v.to(self.dtype) for k, v in self.teacher_feats(self.x(self.frames_dev)).items()}
                      if self.distiller else {})
        self.info = StepInfo(step=1, epoch=0, epochs=15, steps_per_epoch=100, student_lr=1e-4, base_lr=1e-4)

    def forward_gflop(self) -> float:
        """Forward arithmetic per image, student plus distiller loss (torch's FLOP counter: convolutions
        and matrix products). Its ratio to vanilla's is the step ratio a purely arithmetic-bound step
        would show: for VID's full-width heads that ceiling is far below 0.90 on the thin ResNets."""
        with torch.no_grad(), FlopCounterMode(display=False) as counter, self.rt.autocast():
            _, taps = self.model(self.x(self.frames_dev))
            if self.distiller is not None:
                self.distiller({k: taps[k] for k in self.distiller.student_taps()}, self.feats, self.y)
        return counter.get_total_flops() / len(self.y) / 1e9

    def x(self, frames: torch.Tensor) -> torch.Tensor:
        return to_input(frames, self.rt)

    def step(self, online: str | None = None, diagnose: bool = False,
             batch: dict[str, torch.Tensor] | None = None) -> None:
        """``online``: None (cached features), "full" (the whole teacher forward per batch, as
        torchdistill and RepDistiller) or "truncated" (kdbench's fallback: up to the last tap needed)."""
        batch = dict(batch or {})
        x = self.x(batch.pop("frames", self.frames_dev))
        feats = self.online[online](x) if online and self.distiller else (batch or self.feats)
        info = replace(self.info, log=diagnose)  # log=True: loss balance and the gradient cosine this step
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        train_step(self.forward, self.distiller, self.opt, self.params, self.rt, x, self.y, feats, info, self.watch,
                   student_params=self.student_params)

    def loop(self, steps: int, host_frames: bool = False, host_feats: bool = False) -> float:
        """Seconds per step over a loop of ``steps`` trainer-fed steps: frames and cached features
        from the device, or pinned in host memory through the prefetching feeder."""
        def place(t: torch.Tensor, host: bool) -> torch.Tensor:
            return (t.cpu().pin_memory() if self.rt.device.type == "cuda" else t.cpu()) if host else t

        n = len(self.y)
        chunks = [self.teacher_feats(self.x(c)) for c in self.pool_dev.split(n)] if self.distiller else []
        sources = {"frames": place(self.pool_dev, host_frames),
                   **{t: place(torch.cat([c[t] for c in chunks]).to(self.dtype), host_feats)
                      for t in (chunks[0] if chunks else {})}}
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randperm(len(self.pool_dev), generator=gen)[:n] for _ in range(steps + 2)]
        stream = feed(sources, batches, self.rt.device)
        for _ in range(2):  # warm-up
            self.step(batch=next(stream))
        sync(self.rt.device)
        t0 = time.perf_counter()
        for batch in stream:
            self.step(batch=batch)
        sync(self.rt.device)
        return (time.perf_counter() - t0) / steps


def measure(args: argparse.Namespace, rt: Runtime, teacher: DualBranchTeacher, student: str, method: str = "vanilla",
            mode: str = "rgb", **kw: Any) -> dict[str, Any]:
    compile_ = kw.pop("compile", None)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    case = Case(args, rt, teacher, student, method, mode, compile_)
    sec = timed(lambda: case.step(**kw), args.steps, rt.device)
    return {"student": student, "method": method, "mode": mode, "img_per_s": args.batch / sec,
            "ms_per_step": sec * 1e3, "peak_mib": peak_mib(rt.device), **kw, "compile": compile_,
            "gflop_fwd_per_img": case.forward_gflop()}


def case_parser(doc: str | None, steps: int, students: str, methods: str) -> argparse.ArgumentParser:
    """The options that define ``Case``s (shared with ``profile_step.py``)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--students", default=students)
    p.add_argument("--methods", default=methods)
    p.add_argument("--teacher-backbone", default="xception")
    p.add_argument("--rotation-dim", type=int, default=1024)
    return p


def frozen_teacher(args: argparse.Namespace, rt: Runtime) -> DualBranchTeacher:
    """A random-weight teacher laid out as the runner's (its speed does not depend on its weights)."""
    return prepare_module(DualBranchTeacher(args.teacher_backbone, args.size), rt).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = case_parser(__doc__, steps=20, students="res18t,res34t,xception", methods=",".join(METHODS))
    p.add_argument("--sections", default="a,b,c,d", help="a,b,c,d as above; or 'flops' alone: only count "
                   "each step's forward arithmetic (device-independent, fast on a CPU)")
    p.add_argument("--compile-modes", default="default,reduce-overhead",
                   help="torch.compile modes measured in (d), comma-separated")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="tiny CPU run: 48 px, batch 8, res18t, res10t teacher")
    args = p.parse_args(argv)
    if args.quick:
        args.device, args.size, args.batch, args.steps, args.students = "cpu", 48, 8, 1, "res18t"
        args.teacher_backbone, args.rotation_dim, args.sections = "res10t", 256, "a,b,c"
    rt = make_runtime(args.device)  # as `kdbench run`: bf16, channels_last, cuDNN benchmark and TF32 on a GPU
    dev, cuda = rt.device, rt.device.type == "cuda"
    teacher = frozen_teacher(args, rt)
    students = args.students.split(",")
    sections = set(args.sections.split(","))
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": torch.__version__,
                           "size": args.size, "batch": args.batch, "precision": rt.precision, "results": {}}
    res = out["results"]
    if sections == {"flops"}:  # arithmetic only, no timing: the same on every device
        for s in students:
            base = Case(args, rt, teacher, s).forward_gflop()
            for m in ("vanilla", *args.methods.split(",")):
                g = Case(args, rt, teacher, s, m, "both").forward_gflop() if m != "vanilla" else base
                res.setdefault("flops", []).append({"student": s, "method": m, "gflop_fwd_per_img": g,
                                                    "flop_ratio": base / g})
        save(out, args.json)
        print_tables(out)
        return out
    for s in students:
        base = measure(args, rt, teacher, s)
        res.setdefault("vanilla", []).append(base)
        if "a" in sections:
            rows = []
            for m in args.methods.split(","):
                try:
                    rows.append(measure(args, rt, teacher, s, m, "both"))
                except Exception as exc:  # noqa: BLE001 - one broken method must not cost the other figures
                    print(f"speed: {s}/{m} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    rows.append({"student": s, "method": m, "error": repr(exc)})
            # vanilla again after the distillers, and the faster of the two as the reference: the
            # first case of a student also pays for warming clocks and caches (seen on an H200)
            again = measure(args, rt, teacher, s)
            res["vanilla"].append({**again, "note": "re-measured after the distillers"})
            base = max(base, again, key=lambda r: r["img_per_s"])
            for r in rows:
                if "img_per_s" in r:
                    r["ratio_to_vanilla"] = r["img_per_s"] / base["img_per_s"]
                    r["flop_ratio"] = base["gflop_fwd_per_img"] / r["gflop_fwd_per_img"]  # arithmetic-bound ceiling
            res.setdefault("a_distillers", []).extend(rows)
            plain = next((r for r in res["a_distillers"] if r["student"] == s and r["method"] == "fitnet"
                          and "img_per_s" in r), None) or measure(args, rt, teacher, s, "fitnet", "both")
            diag = measure(args, rt, teacher, s, "fitnet", "both", diagnose=True)
            res.setdefault("a_grad_cosine_overhead", []).append(
                {"student": s, "method": "fitnet", "every_step_img_per_s": diag["img_per_s"],
                 "never_img_per_s": plain["img_per_s"], "ratio": diag["img_per_s"] / plain["img_per_s"],
                 "note": "a logging step (every term's loss balance and the gradient cosine); the trainer "
                         "logs every log_every steps, so its cost is this / log_every"})
        if "b" in sections:
            cached = measure(args, rt, teacher, s, "fitnet", "both")
            online = measure(args, rt, teacher, s, "fitnet", "both", online="full")
            cut = measure(args, rt, teacher, s, "fitnet", "both", online="truncated")
            res.setdefault("b_cached_vs_online", []).append(
                {"student": s, "cached_img_per_s": cached["img_per_s"], "online_img_per_s": online["img_per_s"],
                 "speedup": cached["img_per_s"] / online["img_per_s"], "peak_mib_online": online["peak_mib"],
                 "online_truncated_img_per_s": cut["img_per_s"], "speedup_over_truncated": cached["img_per_s"]
                 / cut["img_per_s"], "note": "online: the whole teacher per batch, as torchdistill and RepDistiller;"
                 " truncated: kdbench's online fallback, which stops after FitNet's stage-2 hint"})
        if "c" in sections:
            case = Case(args, rt, teacher, s, "fitnet", "both")
            resident, host = case.loop(args.steps), case.loop(args.steps, host_frames=True)
            host_feats = case.loop(args.steps, host_frames=True, host_feats=True)
            res.setdefault("c_host_vs_resident", []).append(
                {"student": s, "method": "fitnet", "resident_img_per_s": args.batch / resident,
                 "host_frames_img_per_s": args.batch / host, "ratio": resident / host,
                 "host_frames_and_cache_img_per_s": args.batch / host_feats, "ratio_cache_too": resident / host_feats,
                 "note": "loops of --steps steps; host tensors pinned, gathered 2 batches ahead"})
        if "d" in sections:
            for mode in args.compile_modes.split(","):
                try:
                    comp = measure(args, rt, teacher, s, compile=mode)
                    row = {"compiled_img_per_s": comp["img_per_s"], "eager_img_per_s": base["img_per_s"],
                           "speedup": comp["img_per_s"] / base["img_per_s"], "peak_mib": comp["peak_mib"]}
                except Exception as exc:  # noqa: BLE001 - a compiler failure is a finding, not the end of the run
                    print(f"speed: {s} compiled step ({mode}) failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    row = {"error": repr(exc)}
                res.setdefault("d_compiled_vs_eager", []).append({"student": s, "mode": mode, **row})
        save(out, args.json)  # after every student: a run stopped at its time limit keeps what it measured
    print_tables(out)
    return out


def save(out: dict[str, Any], path: str | None) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(out, fh, indent=2)


def print_tables(out: dict[str, Any]) -> None:
    from tabulate import tabulate

    print(f"# {out['device']}, torch {out['torch']}, {out['size']} px, batch {out['batch']}, {out['precision']}")
    for name, rows in out["results"].items():
        print(f"\n## {name}")
        print(tabulate([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                       headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main(sys.argv[1:])
