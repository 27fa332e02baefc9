"""Cost of TOKD's rotation (leader) update alone, per option and rotation size d.

What one measurement covers, for the K = 2 rotations of TOKD's ``both`` mode and
B captured per-sample gradients (flat latent with D = d):

* ``riemannian``: the leader step: L_R and its gradient w.r.t. R (closed form for the cosine loss),
  skew(R^T G), the gradient-free matrix exponential and R <- R expm(-lr Omega)
  (QR re-orthonormalisation is amortised: once per ``reortho_every`` steps; not timed).
* ``expm`` / ``cayley``: the map R(A) with its graph (what the distiller's forward
  evaluates once per step) plus the leader step (backward through the map, A update).

The student network is not involved. fp32, TF32 off (the rotation runs in fp32).
Two times per step: ``ms`` from an idle GPU to the update's end (sync to sync), and
``host ms``, how long the call holds the host. A step that reads nothing back
returns once its kernels are queued (host ms well below ms), so in training the
host goes on to launch the next step while the GPU runs this one; a step that
reads a value back holds the host until the GPU has caught up (host ms ~ ms).

    python benchmarks/rotation_cost.py --quick                 # a few seconds on CPU
    python benchmarks/rotation_cost.py --device cuda --json results/rotation_cost_h200.json
    python benchmarks/rotation_cost.py --sizes 256 1024 --repeat 3

Large CPU cells are slow (expm at d = 2048 is tens of seconds per step): a cell
whose warm-up exceeds ``--budget`` seconds for the requested repeats is cut to
fewer repeats (at least one), and the table says how many ran.
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

from kdbench.rotation import UPDATES, Rotation
from kdbench.train.runtime import allow_tf32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_step(rot: Rotation, grads: list[torch.Tensor], lr: float) -> None:
    matrices = rot.matrices() if rot.update != "riemannian" else None
    rot.leader_step(grads, lr, matrices)


def measure(update: str, d: int, batch: int, repeat: int, budget: float, device: torch.device) -> dict:
    torch.manual_seed(0)
    rot = Rotation((d, 1, 1), d, update=update, reortho_every=0).to(device)
    grads = [torch.randn(batch, d, device=device), torch.randn(batch, d, device=device)]
    sync(device)
    start = time.perf_counter()
    one_step(rot, grads, 1e-3)  # warm-up (also moves R away from the identity)
    sync(device)
    warm = time.perf_counter() - start
    runs = max(1, min(repeat, int(budget / max(warm, 1e-9))))
    times, host = [], []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        one_step(rot, grads, 1e-3)
        host.append((time.perf_counter() - start) * 1e3)
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "update": update,
        "d": d,
        "batch": batch,
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "host_ms_median": statistics.median(host),
        "repeats": runs,
        "orth_err": rot.orthogonality_error(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--updates", nargs="+", default=list(UPDATES), choices=UPDATES)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per cell before repeats are cut")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--quick", action="store_true", help="tiny CPU run: d = 64, 128; 2 repeats")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat = [64, 128], 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("CUDA is not available here; use --device cpu", file=sys.stderr)
            return 2
    allow_tf32(False)  # the rotation runs in full fp32 (kdbench.rotation.ieee_fp32) in any case
    results = [measure(u, d, args.batch, args.repeat, args.budget, device) for d in args.sizes for u in args.updates]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"rotation update cost, K=2 rotations, B={args.batch}, fp32, {device.type} ({name}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'d':>6} {'update':>11} {'median ms':>11} {'min ms':>10} {'host ms':>9} {'runs':>5} {'orth err':>9}")
    for r in results:
        print(f"{r['d']:>6} {r['update']:>11} {r['ms_median']:>11.2f} {r['ms_min']:>10.2f} "
              f"{r['host_ms_median']:>9.2f} {r['repeats']:>5} {r['orth_err']:>9.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": device.type, "device_name": name, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "batch": args.batch, "command": " ".join(sys.argv)}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
