"""Loss balance at initialisation: each distiller's terms beside CE, per image size.

For every distiller (or ``--methods``) and mode, one training step with ``log`` on
(``kdbench.train.trainer.train_step``: the diagnostic a run logs) on a batch of the
synthetic set, a random-initialised student and teacher (the seeds of a run): each
weighted term's gradient norm over CE's at the distiller's student taps ("taps") and
over the student's parameters ("student"). It says, before any training, whether a
distiller's default weight is sane at a given scale (docs/tables.md, "Loss balance").

    python benchmarks/loss_balance.py --sizes 299 --teacher-backbone xception --markdown out.md
    python benchmarks/loss_balance.py --sizes 64,128,299 --methods tokd --modes both \\
        --teacher-backbone res18t --hp tokd.distance=mse --hp tokd.distance=sq_l2
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

from kdbench.data.synthetic import SyntheticConfig, synthetic_image
from kdbench.distiller import StepInfo, reduce_taps
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher
from kdbench.plugins import available_distillers, create_distiller
from kdbench.train import balance
from kdbench.train.runtime import Runtime
from kdbench.train.trainer import make_optimizer, to_input, train_step


def batch(size: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images of the synthetic set at ``size`` px (uint8, labels)."""
    cfg = SyntheticConfig(image_size=size, n_train=n, n_val=1, n_test=1)
    images, labels = zip(*(synthetic_image(cfg, "train", i) for i in range(n)))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def variants(method: str, hp_args: list[str]) -> list[dict[str, Any]]:
    """The --hp values for ``method`` (each a separate variant), or the defaults alone."""
    out = []
    for item in hp_args:
        name, _, kv = item.partition(".")
        key, _, value = kv.partition("=")
        if name == method:
            out.append({key: value})
    return out or [{}]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="299")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--student", default="res18t")
    p.add_argument("--teacher-backbone", default="xception")
    p.add_argument("--proj-channels", type=int, default=0, help="0: 256 for xception, 128 otherwise (profiles)")
    p.add_argument("--methods", default="", help="comma-separated (default: every registered distiller)")
    p.add_argument("--modes", default="rgb,both")
    p.add_argument("--hp", action="append", default=[], help="method.key=value, repeatable: one variant each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    rt = Runtime()
    methods = [m for m in (args.methods.split(",") if args.methods else sorted(available_distillers()))
               if m != "vanilla"]
    proj = args.proj_channels or (256 if args.teacher_backbone == "xception" else 128)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for size in (int(s) for s in args.sizes.split(",")):
        frames, y = batch(size, args.batch)
        x = to_input(frames, rt)
        torch.manual_seed(args.seed)
        teacher = DualBranchTeacher(args.teacher_backbone, size, proj).eval()
        with torch.no_grad():
            _, all_taps = teacher(x)
        t_shapes = probe_shapes(teacher, size)
        for method in methods:
            for mode in args.modes.split(","):
                for hp in variants(method, args.hp):
                    torch.manual_seed(args.seed)
                    student = build_student(args.student)
                    try:
                        d = create_distiller(method, mode, probe_shapes(student, size), t_shapes, **hp)
                    except Exception as exc:  # noqa: BLE001 - a mode a distiller lacks: reported, not fatal
                        print(f"{method}/{mode} {hp}: {type(exc).__name__}: {exc}", file=sys.stderr)
                        continue
                    feats = reduce_taps(all_taps, d.teacher_taps(), d.teacher_reductions())
                    params = [*student.parameters(), *d.student_parameters()]
                    info = StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=1, student_lr=1e-4, base_lr=1e-4,
                                    log=True, batch_size=args.batch)
                    _, diag = train_step(student, d, make_optimizer(params, rt, 1e-4), params, rt, x, y, feats,
                                         info, student_params=list(student.parameters()))
                    for term in balance.terms_of(diag):
                        taps, whole = diag[balance.key("taps", term)], diag[balance.key("student", term)]
                        rows.append({"size": size, "method": method, "mode": mode,
                                     "settings": ", ".join(f"{k}={v}" for k, v in hp.items()) or "defaults",
                                     "weight": balance.weight_hparam(term, d.hp), "term": term, "taps": taps,
                                     "student": whole,
                                     "flag": "" if not balance.flagged({balance.key("taps", term): taps,
                                                                        balance.key("student", term): whole})
                                     else ("too weak" if min(taps, whole) < balance.LOW else "too strong")})
                    print(f"{size} px {method}/{mode} {hp or ''}: " + ", ".join(
                        f"{r['term']} {r['taps']:.1e} / {r['student']:.1e}" for r in rows
                        if (r["size"], r["method"], r["mode"]) == (size, method, mode)), flush=True)
    text = markdown(rows, args, time.perf_counter() - t_start)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    def weight(r: dict[str, Any]) -> str:
        return f"{r['weight']}" if r["weight"] else "?"

    lines = [f"Student {args.student}, teacher {args.teacher_backbone} branches (random init), batch {args.batch} "
             f"of the synthetic set, seed {args.seed}; one logging step at initialisation "
             f"({seconds:.0f} s wall, torch {torch.__version__}).", "",
             "| px | method | mode | settings | term | weight | taps | student | flag |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['method']} | {r['mode']} | {r['settings']} | {r['term']} | {weight(r)} "
                     f"| {r['taps']:.1e} | {r['student']:.1e} | {r['flag']} |")
    lines.append("")
    lines.append(f"taps: ||d term/d taps|| / ||d CE/d taps|| at the student taps the distiller reads; student: the "
                 f"same over all the student's parameters; flag: outside [{balance.LOW:g}, {balance.HIGH:g}].")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
