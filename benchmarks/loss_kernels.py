"""The fused loss reductions of VID and AT against their textbook elementwise forms.

VID's Gaussian likelihood (``kdbench_plugins.vid.gaussian_nll``) and AT's energy map
(``kdbench_plugins.at.at_energy``) each read a map in one reduction; the elementwise
forms below build map-sized temporaries (and, under bf16 autocast, fp32 copies:
``pow`` is on autocast's fp32 list). Both forms give the same number (checked
here and in tests/test_baselines.py). Timed: forward + backward, median of
``--repeat`` calls, on maps of the shapes a 299 px Xception stage has, in the
device's layout (channels_last and bf16 autocast on a GPU, NCHW fp32 on a CPU).

    python benchmarks/loss_kernels.py                      # CPU, one thread is enough
    python benchmarks/loss_kernels.py --layout channels_last   # the GPU layout, on a CPU
    python benchmarks/loss_kernels.py --device cuda --json loss_kernels.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from kdbench_plugins.at import at_energy
from kdbench_plugins.vid import gaussian_nll

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py's timer
from speed import timed  # noqa: E402

# (C, H, W) of a 299 px Xception's stage1..stage4 maps
SHAPES = ((128, 74, 74), (256, 37, 37), (728, 19, 19), (2048, 10, 10))


def nll_elementwise(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    return (0.5 * ((mean - target) ** 2 / var + var.log())).mean()


def energy_elementwise(feature: Tensor) -> Tensor:
    return feature.pow(2).mean(1, keepdim=True)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 64 on a GPU, 8 on a CPU")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--layout", choices=("auto", "nchw", "channels_last"), default="auto",
                   help="auto: channels_last on a GPU, NCHW on a CPU (as the trainer lays maps out)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n = args.batch or (64 if cuda else 8)
    cl = args.layout == "channels_last" or (args.layout == "auto" and cuda)
    layout = torch.channels_last if cl else torch.contiguous_format
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    rows = []
    torch.manual_seed(0)
    for c, h, w in SHAPES:
        x = torch.randn(n, c, h, w, device=device).to(memory_format=layout).requires_grad_(True)
        t = torch.randn(n, c, h, w, device=device).to(memory_format=layout)
        alpha = torch.rand(c, device=device, requires_grad=True)

        def vid(nll: Callable) -> Callable[[], Tensor]:
            def run() -> Tensor:
                with autocast:  # the map enters as the regressor's output would: bf16 on a GPU
                    mean = x * 1.0
                    return nll(mean, (torch.nn.functional.softplus(alpha) + 1e-5).view(1, -1, 1, 1), t)
            return run

        def at(energy: Callable) -> Callable[[], Tensor]:
            def run() -> Tensor:
                with autocast:
                    return energy(x * 1.0).float().sum()
            return run

        for name, fused, plain in (("vid_nll", vid(gaussian_nll), vid(nll_elementwise)),
                                   ("at_energy", at(at_energy), at(energy_elementwise))):
            a, b = fused().item(), plain().item()
            assert abs(a - b) <= 1e-2 * abs(b), (name, a, b)  # the same number, to bf16 precision
            tf, tp = (timed(lambda f=f: f().backward(), args.repeat, device, warmup=1) for f in (fused, plain))
            rows.append({"loss": name, "map": f"{n}x{c}x{h}x{w}", "fused_ms": tf * 1e3,
                         "elementwise_ms": tp * 1e3, "speedup": tp / tf})
    from tabulate import tabulate

    print(f"# {torch.cuda.get_device_name(device) if cuda else 'cpu'}, torch {torch.__version__}, "
          f"{'bf16 autocast' if cuda else 'fp32'}, {'channels_last' if cl else 'NCHW'}, forward + backward")
    print(tabulate([{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
                   headers="keys", tablefmt="github"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "torch": torch.__version__, "channels_last": cl, "rows": rows}, fh,
                      indent=2)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
