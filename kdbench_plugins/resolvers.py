"""The built-in gradient-conflict resolvers: none, PCGrad and CAGrad.

Each gets the ``(T, D)`` stack of the branches' KD gradients at the student taps
(``kdbench.resolver``) and returns the rows to apply, on the scale of their sum.
Both built-ins are linear in the gradients with coefficients read off the T x T Gram
matrix G = g g^T (computed in fp64: its entries are sums over the whole batch), so a
step costs one Gram, a few scalar operations and one (T x T) @ (T x D) product, and
nothing is read back on the host.

**PCGrad** (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Alg. 1):
for each task i, for each other task j, if g_i^PC . g_j < 0 then
g_i^PC <- g_i^PC - (g_i^PC . g_j / |g_j|^2) g_j, against the *original* g_j; the update is
the sum of the g_i^PC. The paper visits the other tasks in random order; with the two
branches of Both mode there is a single other task, so the order cannot matter. With more
than two rows kdbench visits them in index order (deterministic under a seed).

**CAGrad** (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021, Eq. 4 and Alg. 1): d = g0 + (sqrt(phi) / |g_w|) g_w with g0 the average
gradient, phi = c^2 |g0|^2 and w the minimiser over the simplex of
F(w) = g_w . g0 + sqrt(phi) |g_w|, g_w = sum_i w_i g_i; the reference code then divides d
by (1 + c^2) (``rescale=1``). With two gradients w = (x, 1 - x) and, writing a = g_1,
b = g_2, e = a - b, u = e . g0 = (|a|^2 - |b|^2) / 2, C = c |g0|:

    |g_w|^2 = |e|^2 t^2 + h^2,   t = x + (b . e) / |e|^2,   h^2 = |b|^2 - (b . e)^2 / |e|^2,
    F'(x) = u + C |e| s / sqrt(s^2 + h^2),   s = |e| t.

F is convex in x, so F' = 0 gives the minimiser: with r = -u / (C |e|), if |r| < 1 then
s = r h / sqrt(1 - r^2) (so x = s / |e| - (b . e) / |e|^2), if r >= 1 then F decreases on
[0, 1] and x = 1, if r <= -1 then x = 0; the result is clipped to [0, 1]. (h is the distance
from the origin to the line through a and b; |e| = 0 means a = b and any x gives g_w = a.)
``tests/test_resolvers.py`` holds this against a brute-force minimisation of F and against
the primal problem, max_d min_i g_i . d over the ball |d - g0| <= c |g0|.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kdbench import HParam, hookimpl
from kdbench.resolver import Resolver, ResolverError

TINY = 1e-30  # fp64: guards a division by a squared norm of exactly zero only


def gram(grads: Tensor) -> Tensor:
    g = grads.double()
    return g @ g.t()


def apply(weights: Tensor, grads: Tensor) -> Tensor:
    """Rows ``weights @ grads`` (weights fp64 ``(T, T)``, grads ``(T, D)``)."""
    return weights.to(grads.dtype) @ grads


def pcgrad_weights(G: Tensor) -> Tensor:
    """M with g^PC = M g, from the Gram matrix ``G`` (Alg. 1, the other tasks in index order)."""
    T = G.shape[0]
    M = torch.eye(T, dtype=G.dtype, device=G.device)
    for i in range(T):
        for j in range(T):
            if i != j:
                dot = M[i] @ G[:, j]  # g_i^PC . g_j
                M[i, j] = M[i, j] - torch.where(dot < 0, dot / G[j, j].clamp_min(TINY), torch.zeros_like(dot))
    return M


def cagrad_weights(G: Tensor, c: float, rescale: int) -> Tensor:
    """Diagonal coefficients (as a T x T matrix) with d * T = sum_i coef_i g_i, for T = 2."""
    if G.shape[0] != 2:
        raise ResolverError(f"cagrad: the closed form is for two gradients, got {G.shape[0]}")
    aa, ab, bb = G[0, 0], G[0, 1], G[1, 1]
    ee = (aa - 2 * ab + bb).clamp_min(0)
    be = ab - bb
    u = (aa - bb) / 2
    C = c * ((aa + 2 * ab + bb) / 4).clamp_min(0).sqrt()
    h2 = (bb - be * be / ee.clamp_min(TINY)).clamp_min(0)
    norm_e = ee.sqrt()
    r = -u / (C * norm_e).clamp_min(TINY)
    inner = r.abs() < 1
    s = r * h2.sqrt() / (1 - r * r).clamp_min(TINY).sqrt()
    x = torch.where(inner, s / norm_e.clamp_min(TINY) - be / ee.clamp_min(TINY),
                    torch.where(r >= 1, torch.ones_like(r), torch.zeros_like(r)))
    x = torch.where(ee > 0, x.clamp(0, 1), torch.full_like(x, 0.5))
    gw_norm = (ee * x * x + 2 * be * x + bb).clamp_min(0).sqrt()
    lam = C / gw_norm.clamp_min(TINY)
    scale = {0: 1.0, 1: 1 + c * c, 2: 1 + c}[rescale]
    coef = torch.stack([0.5 + lam * x, 0.5 + lam * (1 - x)]) * (2 / scale)  # x 2: on the scale of the sum
    return torch.diag(coef)


class NoResolver(Resolver):
    name = "none"
    description = "The plain sum of the branches' KD gradients: what the trainer does without a resolver."

    def resolve(self, grads: Tensor) -> Tensor:
        return grads


class PCGrad(Resolver):
    name = "pcgrad"
    description = "PCGrad: project each branch's gradient onto the normal plane of the other when they conflict."

    def resolve(self, grads: Tensor) -> Tensor:
        return apply(pcgrad_weights(gram(grads)), grads)


class CAGrad(Resolver):
    name = "cagrad"
    description = "CAGrad: the update in a ball around the mean gradient that most improves the worse branch."
    defaults = {
        "c": HParam(0.5, "CAGrad reference code: cagrad(grads, alpha=0.5, rescale=1); paper Sec. 3, c in [0, 1)"),
        "rescale": HParam(1, "CAGrad reference code: 1 = d / (1 + c^2); 0 = d as is; 2 = d / (1 + c)"),
    }

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)
        if not 0 <= self.hp["c"] < 1:
            raise ResolverError(f"cagrad: c={self.hp['c']} is outside [0, 1) (the paper's convergence condition)")
        if self.hp["rescale"] not in (0, 1, 2):
            raise ResolverError(f"cagrad: rescale={self.hp['rescale']} is not 0, 1 or 2")

    def resolve(self, grads: Tensor) -> Tensor:
        return apply(cagrad_weights(gram(grads), self.hp["c"], self.hp["rescale"]), grads)


@hookimpl
def kdbench_resolvers() -> list[type[Resolver]]:
    return [NoResolver, PCGrad, CAGrad]
