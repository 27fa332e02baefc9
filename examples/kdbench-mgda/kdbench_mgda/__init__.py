"""MGDA's min-norm combination of the two branches' KD gradients (Sener & Koltun, NeurIPS 2018).

MGDA moves along the minimum-norm element of the convex hull of the task gradients,
d = a g1 + (1 - a) g2 with a in [0, 1]. For two gradients the paper (Alg. 1) gives it in
closed form: a = clip((g2 - g1) . g2 / |g1 - g2|^2, 0, 1). Where the gradients do not
conflict much, d leans toward the smaller one; where they are exactly opposite, d = 0
(a Pareto-stationary point: no direction improves both). kdbench resolves at the student
taps, which makes this the paper's MGDA-UB. The rows returned keep the scale of the plain
sum (``kdbench.Resolver.resolve``): 2 a g1 and 2 (1 - a) g2.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kdbench import HParam, Resolver, ResolverError, hookimpl


class MGDA(Resolver):
    name = "mgda"
    description = "MGDA-UB: the minimum-norm convex combination of the two branches' gradients."
    defaults = {
        "scale": HParam("sum", "kdbench convention: sum = rows x 2 (the plain sum's scale); convex = as in the paper"),
    }

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)
        if self.hp["scale"] not in ("sum", "convex"):
            raise ResolverError(f"mgda: scale={self.hp['scale']!r} is not 'sum' or 'convex'")

    def resolve(self, grads: Tensor) -> Tensor:
        if grads.shape[0] != 2:
            raise ResolverError(f"mgda: the closed form is for two gradients, got {grads.shape[0]}")
        g = grads.double()
        g1, g2 = g[0], g[1]
        diff = g1 - g2
        # torch.where, not an if: no value is read back on the host (a GPU keeps queueing work)
        a = torch.where(diff @ diff > 0, ((g2 - g1) @ g2) / (diff @ diff).clamp_min(1e-30),
                        torch.full((), 0.5, dtype=g.dtype, device=g.device)).clamp(0, 1)
        weights = torch.stack([a, 1 - a]) * (2.0 if self.hp["scale"] == "sum" else 1.0)
        return (weights[:, None] * g).to(grads.dtype)


@hookimpl
def kdbench_resolvers() -> list[type[Resolver]]:
    return [MGDA]
