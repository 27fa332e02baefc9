"""Loss balance of each distiller at its defaults: ||grad of the weighted KD terms|| over
||grad of the (weighted) CE|| on the student's parameters, one batch, at initialisation.

    python benchmarks/distiller_balance.py --size 64 --teacher res18t --batch 32
    python benchmarks/distiller_balance.py --size 299 --teacher xception --batch 8

Untrained student and teacher (random init, seeded): an order-of-magnitude check of the
defaults' weights, not the balance during training (a trained teacher's logits are sharper).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kdbench.distiller import reduce_taps
from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher
from kdbench.plugins import available_distillers, create_distiller


def grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--teacher", default="res18t")
    ap.add_argument("--student", default="res18t")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--methods", default="kd,dkd,dist,rkd,cc,crd,reviewkd")
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher = DualBranchTeacher(args.teacher, image_size=args.size).eval()
    x = torch.randn(args.batch, 3, args.size, args.size).clamp(-1, 1)
    y = torch.arange(args.batch) % 2
    with torch.no_grad():
        _, t_taps = teacher(x)
    t_shapes = probe_shapes(teacher, args.size)
    print(f"| method | mode | KD/CE grad ratio ({args.size} px, {args.student} <- {args.teacher}, batch {args.batch}) |")
    print("|---|---|---|")
    for name in args.methods.split(","):
        for mode in available_distillers()[name].modes:
            torch.manual_seed(0)
            student = build_student(args.student)
            d = create_distiller(name, mode, probe_shapes(student, args.size), t_shapes)
            d.prepare(torch.arange(max(args.batch, 64)) % 2)
            logits, taps = student(x)
            extra = {"index": torch.arange(args.batch)} if d.wants_index else {}
            terms = d({k: taps[k] for k in d.student_taps()},
                      reduce_taps(t_taps, d.teacher_taps(), d.teacher_reductions()), y, **extra)
            params = list(student.parameters())
            ce = d.ce_weight * F.cross_entropy(logits, y)
            kd = sum(terms.values())
            print(f"| {name} | {mode} | {grad_norm(kd, params) / grad_norm(ce, params):.3g} |", flush=True)


if __name__ == "__main__":
    main()
