"""TOKD's rotation module: R_k in SO(d) acting on the first d coordinates of vec(S_B(x)).

Layout (docs/design/rotation-design.md, section 0): each sample's feature z of shape
(C, H, W) is flattened in logical (C, H, W) order to a vector of length
D = C*H*W; R_k rotates its first d coordinates, ``m_k = diag(R_k, I_{D-d}) vec(z)``
(RotoGrad's partial rotation of a flat latent). Rows are samples, so in code a
rotation is ``z[:, :d] @ R.T`` and its transpose ``g[:, :d] @ R``.

The leader (Eq. 13-16) never sees the network: it gets the per-branch
gradients w.r.t. m_k that tensor hooks captured during the trainer's single
backward, builds L_R on a tiny graph (B x d times d x d) and moves R. Three
updates (``update``):

* ``riemannian`` (default): R is a buffer. The Euclidean gradient G of L_R
  w.r.t. R is projected to the Lie algebra, Omega = skew(R^T G), and R moves
  along the geodesic R <- R exp(-lr * step(Omega)) (``exp_step``: a gradient-free
  matrix exponential). QR with a sign fix re-orthonormalises every
  ``reortho_every`` leader steps so float drift cannot accumulate.
* ``expm``: R = B expm(A - A^T) with A (strict lower triangle) a parameter and
  B a buffer: RotoGrad's geotorch trivialisation; autograd through matrix_exp,
  evaluated in float64 (A is unbounded; see ``matrices``).
* ``cayley``: R = B (I - S/2)^{-1} (I + S/2), S = A - A^T; autograd through a QR
  and a triangular solve (``cayley``).

Maps and updates run in float32 (the expm map in float64) with autocast off. No
step uses an LU factorisation: on the CPU, MKL's LU gave wrong determinants and
crashed with two threads at d >= 256 (``signed_qr``, ``cayley``). The leader optimiser (SGD or
Adam, weight decay 0) is ours, acting on Omega (riemannian) or on A; its state
and step counters travel in ``get_extra_state`` so checkpoints resume exactly.
At the defaults (riemannian, SGD, cosine L_R) a leader step reads nothing back to
the host: a step with non-finite gradients is skipped on the device
(``torch.where``), its counters are device tensors, and ``exp_step`` picks its
degree from a host-side bound. So on a GPU the step does not hold the host until
the backward has run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdbench.distiller import DistillerError
from kdbench.train.runtime import ieee_fp32  # rotations are built and updated without TF32 (drift off SO(d))

UPDATES = ("riemannian", "expm", "cayley")
OPTIMIZERS = ("sgd", "adam")
TARGETS = ("mean", "rotograd")
LOSSES = ("cos", "rotograd_mse")
INITS = ("identity", "haar")
EPS = 1e-12


def skew_of(A: Tensor) -> Tensor:
    """The skew-symmetric matrix S = L - L^T of A's strict lower triangle L (geotorch's frame)."""
    L = A.tril(-1)
    return L - L.transpose(-2, -1)


def expm_each(S: Tensor) -> Tensor:
    """matrix_exp of each (d, d) matrix of a (K, d, d) stack. On CPU one call per matrix: the
    batched CPU kernel picks one (the costliest) degree for all, which costs more at large d.
    On a GPU one batched call (it reads the norms to the host once, not once per matrix)."""
    if S.is_cuda:
        return torch.linalg.matrix_exp(S)
    return torch.stack([torch.linalg.matrix_exp(x) for x in S.unbind(0)])


UNIT_ROUNDOFF = 2.0**-24  # float32


def taylor_radius(degree: int) -> float:
    """The largest norm at which the degree-m Taylor polynomial of exp is exact to float32:
    its remainder, at most about r^(m+1)/(m+1)! for any submultiplicative norm r, stays
    below half a unit roundoff."""
    return (UNIT_ROUNDOFF / 2 * math.factorial(degree + 1)) ** (1.0 / (degree + 1))


TAYLOR_DEGREES = (4, 8, 12)


def taylor_exp(X: Tensor, degree: int) -> Tensor:
    """The degree-m Taylor polynomial of exp for a (K, d, d) stack, by Paterson-Stockmeyer:
    about 2 sqrt(m) matrix products (2 for m = 4, 4 for m = 8, 5 for m = 12)."""
    q = math.isqrt(degree - 1) + 1  # ceil(sqrt(m)): powers X^1..X^q, then Horner in X^q
    powers = [X]
    for _ in range(q - 1):
        powers.append(powers[-1] @ X)
    c = [1.0 / math.factorial(k) for k in range(degree + 1)]

    def block(k: int) -> Tensor:  # sum_j c_{k+j} X^j: j < q, except in the top block, which runs to the degree
        top = degree - k if k + q >= degree else q - 1
        terms = [c[k + j] * powers[j - 1] for j in range(1, top + 1)]
        B = sum(terms[1:], terms[0])  # not sum(terms): 0 + X would be one more kernel per block
        B.diagonal(dim1=-2, dim2=-1).add_(c[k])
        return B

    starts = list(range(0, degree + 1, q))
    if starts[-1] == degree and degree > 0:  # a lone c_m I block is folded into the one below
        starts.pop()
    out = block(starts[-1])
    for k in reversed(starts[:-1]):
        out = torch.baddbmm(block(k), powers[-1], out)
    return out


def exp_step(S: Tensor, bound: float | None) -> Tensor:
    """exp(S) of each (d, d) leader step of a (K, d, d) stack, given ``bound`` >= every step's
    Frobenius norm, known on the host from the step's own formula (``Rotation._step_bound``).

    With the bound, the Taylor degree and the number of squarings are chosen on the host
    (scaling and squaring), so nothing is read back: ``torch.linalg.matrix_exp`` reads the
    norms to choose its degree, which on a GPU is a sync per leader step that idles the GPU
    while the host launches what follows. Typical TOKD steps need degree 4 and no squaring
    (two products, what matrix_exp picks for them). ``bound=None`` falls back to matrix_exp."""
    if bound is None:
        return expm_each(S)
    squarings = max(0, math.ceil(math.log2(bound / taylor_radius(12)))) if bound > 0 else 0
    scaled = bound / 2**squarings
    degree = next(m for m in TAYLOR_DEGREES if scaled <= taylor_radius(m) or m == TAYLOR_DEGREES[-1])
    E = taylor_exp(S / 2**squarings if squarings else S, degree)  # the usual step: no division by 1
    for _ in range(squarings):
        E = E @ E
    return E


def signed_qr(X: Tensor) -> tuple[Tensor, Tensor]:
    """Q of X's QR with the sign fix (diag of the triangle > 0, so Q is unique) and det(Q) in {-1, +1}.

    Householder QR and nothing else: Q = H_1...H_n diag(s) with H_i = I - tau_i v_i v_i^T, a
    reflection (det -1) where tau_i != 0, and s the signs of R's diagonal. So det(Q) is read off
    tau and s exactly, with no LU: ``slogdet`` (LU) on the CPU gave wrong signs at d = 512 with two
    MKL threads ("SLASWP parameter 6 incorrect"), and ``det`` underflows to 0 in float32 there."""
    a, tau = torch.geqrf(X)
    s = a.diagonal(dim1=-2, dim2=-1).sign()
    s = torch.where(s == 0, torch.ones_like(s), s)  # a zero pivot (rank-deficient X): keep the column
    q = torch.linalg.householder_product(a, tau) * s.unsqueeze(-2)
    reflections = (tau != 0).sum(-1) + (s < 0).sum(-1)
    return q, 1.0 - 2.0 * (reflections % 2).to(q.dtype)


def haar_rotation(k: int, d: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """k Haar-distributed rotations (k, d, d), float32: Q of a Gaussian's signed QR (Haar on O(d)),
    with the first column flipped where det(Q) = -1 (Haar on SO(d)). Float64 and LU-free
    (``signed_qr``), so correct with any thread count; ``device``: where to draw and factorise."""
    q, det = signed_qr(torch.randn(k, d, d, generator=generator, dtype=torch.float64, device=device))
    q[..., 0] *= det.unsqueeze(-1)
    return q.float()


def orthonormalize(R: Tensor) -> Tensor:
    """Nearest-by-QR rotation: Q of R's signed QR, so det(Q) = sign det(R) (a rotation stays one)."""
    return signed_qr(R.double())[0].to(R.dtype)


def cayley(S: Tensor) -> Tensor:
    """The Cayley map (I - S/2)^{-1} (I + S/2) of a (K, d, d) skew stack, solved through a QR of
    M = I - S/2 and a triangular solve: no LU, whose CPU path crashed at d >= 256 with two MKL
    threads (``torch.linalg.solve``). M is well conditioned (its singular values are
    sqrt(1 + sigma^2/4) for the singular values sigma of S), so QR loses no accuracy."""
    eye = torch.eye(S.shape[-1], device=S.device, dtype=S.dtype)
    q, r = torch.linalg.qr(eye - 0.5 * S)
    return torch.linalg.solve_triangular(r, q.transpose(-2, -1) @ (eye + 0.5 * S), upper=True)


def target_vector(v: Sequence[Tensor], kind: str = "mean") -> Tensor:
    """Eq. 15's g (B, D) from per-branch gradients v^k = dL_k/dz: ``mean`` is (1/K) sum_k v^k;
    ``rotograd`` first rescales each task's B x D matrix to the Frobenius norm of their mean."""
    mean = torch.stack(list(v)).mean(0)
    if kind == "mean":
        return mean
    if kind == "rotograd":
        norm = mean.norm()
        return torch.stack([x * (norm / x.norm().clamp_min(EPS)) for x in v]).mean(0)
    raise DistillerError(f"rotation_target {kind!r} unknown; choose one of: {', '.join(TARGETS)}")


class LeaderOptimizer:
    """SGD (Eq. 16) or Adam on a (K, d, d) gradient; returns the step direction (the caller scales by lr)."""

    def __init__(self, kind: str = "sgd", betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if kind not in OPTIMIZERS:
            raise DistillerError(f"rotation_optimizer {kind!r} unknown; choose one of: {', '.join(OPTIMIZERS)}")
        self.kind, self.betas, self.eps = kind, betas, eps
        self.t: int | Tensor = 0  # steps taken; a device tensor from the first step on
        self.m: Tensor | None = None
        self.v: Tensor | None = None

    def direction(self, grad: Tensor, keep: Tensor | None = None) -> Tensor:
        """The step direction for ``grad``. ``keep`` (a 0-dim bool on grad's device) False skips the
        step: zero direction, state untouched, decided on the device (no host read)."""
        if keep is None:
            keep = torch.ones((), dtype=torch.bool, device=grad.device)
        if not isinstance(self.t, Tensor):  # a fill, not a copy from the host (which would sync)
            self.t = torch.full((), float(self.t), dtype=torch.float64, device=grad.device)  # f64: 1 - 0.999**t
        self.t = self.t.to(grad.device) + keep
        if self.kind == "sgd":
            return torch.where(keep, grad, 0.0)
        b1, b2 = self.betas
        if self.m is None:
            self.m, self.v = torch.zeros_like(grad), torch.zeros_like(grad)
        assert self.v is not None, "m and v are set together"
        m, v = self.m.to(grad.device), self.v.to(grad.device)
        self.m = torch.where(keep, b1 * m + (1 - b1) * grad, m)
        self.v = torch.where(keep, b2 * v + (1 - b2) * grad * grad, v)
        m_hat = self.m / (1 - b1**self.t)  # t = 0 (every step so far skipped) gives 0/0, discarded below
        v_hat = self.v / (1 - b2**self.t)
        return torch.where(keep, m_hat / (v_hat.sqrt() + self.eps), 0.0)  # skew in, skew out (v symmetric)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "t": int(self.t), "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise DistillerError(f"checkpoint has a {state['kind']!r} rotation optimizer, this run uses {self.kind!r}")
        clone = lambda x: None if x is None else x.detach().clone()  # noqa: E731 - never share buffers
        self.t, self.m, self.v = int(state["t"]), clone(state["m"]), clone(state["v"])


@dataclass
class LeaderResult:
    """What one leader step saw: v^k = R_k^T g~_k (pre-update R), the target, L_R, and whether it
    was skipped (a 0-dim bool tensor: reading it is a host sync, so the trainer never does)."""

    v: list[Tensor]
    target: Tensor | None
    loss: Tensor | None
    skipped: Tensor | bool


class Rotation(nn.Module):
    """K rotations in SO(d) of the first d coordinates of a (C, H, W) latent, with their leader update."""

    # buffers (register_buffer), typed for the checker; R for riemannian, base for expm/cayley
    R: Tensor
    base: Tensor
    leader_steps: Tensor
    skipped_steps: Tensor

    def __init__(self, latent_shape: Sequence[int], dim: int, num: int = 2, update: str = "riemannian",
                 optimizer: str = "sgd", init: str = "identity", reortho_every: int = 100) -> None:
        super().__init__()
        shape = tuple(int(s) for s in latent_shape)
        D = math.prod(shape)
        named = "*".join("CHW"[: len(shape)]) if len(shape) <= 3 else "numel"
        if dim > D:
            raise DistillerError(
                f"rotation_dim d={dim} exceeds the student latent size D={named}="
                f"{'*'.join(map(str, shape))}={D}; choose d <= {D}"
            )
        if dim < 1:
            raise DistillerError(f"rotation_dim d={dim} must be >= 1 (turn rotation off with rotation=false)")
        if update not in UPDATES:
            raise DistillerError(f"rotation_update {update!r} unknown; choose one of: {', '.join(UPDATES)}")
        if init not in INITS:
            raise DistillerError(f"rotation_init {init!r} unknown; choose one of: {', '.join(INITS)}")
        self.latent_shape, self.D, self.d, self.num, self.update = shape, D, int(dim), int(num), update
        self.reortho_every = int(reortho_every)
        start = torch.eye(dim).expand(num, dim, dim).clone() if init == "identity" else haar_rotation(num, dim)
        if update == "riemannian":
            self.register_buffer("R", start)
        else:
            self.A = nn.Parameter(torch.zeros(num, dim, dim))
            self.register_buffer("base", start)
        self.opt = LeaderOptimizer(optimizer)
        # device counters (in the extra state, not the state dict): updates applied and skipped
        # (non-finite gradients)
        for counter in ("leader_steps", "skipped_steps"):
            self.register_buffer(counter, torch.zeros((), dtype=torch.long), persistent=False)
        self.since_reortho = 0  # leader steps (applied or skipped) since the last re-orthonormalisation

    # -- the map ----------------------------------------------------------
    def leader_parameters(self) -> tuple[nn.Parameter, ...]:
        return () if self.update == "riemannian" else (self.A,)

    def matrices(self) -> Tensor:
        """(K, d, d) rotations in float32; for expm/cayley the graph to A is kept (evaluate once per step)."""
        if self.update == "riemannian":
            return self.R
        with torch.autocast(self.A.device.type, enabled=False), ieee_fp32():
            if self.update == "expm":
                # float64: A grows without bound (Adam at lr 5 reached |A| ~ 250 in 300 steps), and
                # expm's scaling and squaring multiplies float32 roundoff by 2^squarings (an
                # orthogonality error of 1e-4 there); in float64 the product rounds once to float32
                Q = expm_each(skew_of(self.A.double()))
                return (self.base.double() @ Q).float()
            return self.base.float() @ cayley(skew_of(self.A.float()))

    def _check(self, z: Tensor) -> None:
        if math.prod(z.shape[1:]) != self.D:
            raise DistillerError(
                f"student latent changed: rotation built for D={self.D} {self.latent_shape}, got {tuple(z.shape[1:])}"
            )

    def rotate(self, z: Tensor, R: Tensor) -> Tensor:
        """m = diag(R, I) vec(z) per sample, same shape and dtype as z; pass ``R.detach()`` in the forward."""
        self._check(z)
        flat = z.flatten(1)
        with torch.autocast(z.device.type, enabled=False):
            head = (flat[:, : self.d].float() @ R.transpose(-2, -1)).to(z.dtype)
        out = head if self.d == self.D else torch.cat([head, flat[:, self.d:]], dim=1)
        return out.view(z.shape)

    def rotate_back(self, g: Tensor, R: Tensor) -> Tensor:
        """R^T g per sample on a flat (B, D) float tensor (the gradient w.r.t. z from one w.r.t. m)."""
        head = g[:, : self.d] @ R
        return head if self.d == self.D else torch.cat([head, g[:, self.d:]], dim=1)

    # -- the leader ---------------------------------------------------------
    def rotation_loss(self, grads: Sequence[Tensor], Rs: Tensor, target: Tensor, loss: str = "cos") -> Tensor:
        """L_R summed over branches k and samples n (Eq. 13, sum not mean; cosine over the full D).

        ``cos``: -sum_k sum_n cos(R_k^T g~_{k,n}, g_n). ``rotograd_mse``: RotoGrad's
        sum_k sum_n ||R_k g_n - g~_{k,n}||^2 (its batch-sum for flat latents). Only the first d
        coordinates depend on R; the tail enters as a constant."""
        d, total = self.d, Rs.new_zeros(())
        for k, g in enumerate(grads):
            if loss == "cos":
                dot = ((g[:, :d] @ Rs[k]) * target[:, :d]).sum(1) + (g[:, d:] * target[:, d:]).sum(1)
                total = total - (dot / (g.norm(dim=1) * target.norm(dim=1)).clamp_min(EPS)).sum()
            elif loss == "rotograd_mse":
                diff = target[:, :d] @ Rs[k].transpose(-2, -1) - g[:, :d]
                total = total + diff.square().sum() + (target[:, d:] - g[:, d:]).square().sum()
            else:
                raise DistillerError(f"rotation_loss {loss!r} unknown; choose one of: {', '.join(LOSSES)}")
        return total

    @torch.no_grad()
    def reorthonormalize(self) -> None:
        """Project the kept rotations back onto SO(d) (riemannian R, or the expm/cayley base)."""
        buf = self.R if self.update == "riemannian" else self.base
        buf.copy_(orthonormalize(buf))
        self.since_reortho = 0

    def leader_gradient(self, grads: Sequence[Tensor], matrices: Tensor | None = None, target: str = "mean",
                        loss: str = "cos") -> tuple[Tensor, LeaderResult]:
        """Euclidean gradient of L_R w.r.t. the leader state (R for riemannian, A otherwise).

        ``grads``: captured g~_k w.r.t. m_k, (B, ...) per branch, unweighted. ``matrices``: the
        (K, d, d) rotations the forward used (with their graph to A for expm/cayley); recomputed
        when omitted. Returns the gradient and what the step saw (v^k = R_k^T g~_k, target, L_R)."""
        device = grads[0].device
        if self.update == "riemannian" and loss == "cos":
            return self._cos_gradient(grads, self.R if matrices is None else matrices, target)
        with torch.autocast(device.type, enabled=False), torch.enable_grad():
            g = [x.detach().float().flatten(1) for x in grads]
            Rs = self.matrices() if matrices is None else matrices
            if self.update == "riemannian":
                Rs = leaf = Rs.detach().clone().requires_grad_(True)
            else:
                leaf = self.A
            v = [self.rotate_back(x, Rs[k].detach()) for k, x in enumerate(g)]
            tgt = target_vector(v, target).detach()
            L = self.rotation_loss(g, Rs, tgt, loss)
            (G,) = torch.autograd.grad(L, leaf)
        return G, LeaderResult(v, tgt, L.detach(), False)

    @torch.no_grad()
    def _cos_gradient(self, grads: Sequence[Tensor], Rs: Tensor, target: str) -> tuple[Tensor, LeaderResult]:
        """``leader_gradient`` for the default case (riemannian R, cosine L_R) in closed form.

        L_R = -sum_k sum_n (v_kn . t_n) w_kn with v_k = R_k^T g~_k and w_kn = 1 / (|g~_kn| |t_n|), which
        does not depend on R (rotations keep norms; the target is held fixed), so
        dL_R/dR_k = -(w_k * g~_k[:, :d])^T t[:, :d]: a few products instead of an autograd graph and
        pass (two thirds of the ATen calls; tests/test_rotation.py checks it against autograd)."""
        d = self.d
        with torch.autocast(grads[0].device.type, enabled=False):
            g = [x.detach().float().flatten(1) for x in grads]
            R = Rs.detach()
            v = [self.rotate_back(x, R[k]) for k, x in enumerate(g)]
            tgt = target_vector(v, target)
            t_norm = tgt.norm(dim=1)
            w = [1.0 / (x.norm(dim=1) * t_norm).clamp_min(EPS) for x in g]
            G = torch.stack([-(x[:, :d] * wk[:, None]).transpose(0, 1) @ tgt[:, :d] for x, wk in zip(g, w)])
            L = -sum(((vk * tgt).sum(1) * wk).sum() for vk, wk in zip(v, w))
        return G, LeaderResult(v, tgt, L, False)

    def leader_step(self, grads: Sequence[Tensor], lr: float, matrices: Tensor | None = None,
                    target: str = "mean", loss: str = "cos", global_rows: int | None = None) -> LeaderResult:
        """One leader update (Eq. 13-16) from captured gradients; see ``leader_gradient``.

        Non-finite gradients skip the update (R and the optimiser state unchanged): a NaN or
        inf in a captured gradient makes L_R and so G non-finite. The skip is decided on the
        device, so the step never waits for the GPU. Under torch.distributed G is averaged
        across ranks first (a non-finite rank poisons the average, so every rank skips
        together): all ranks keep the same R. ``global_rows``: the rows of the global batch
        (every rank's ``grads`` together; None or 0 when not known), which under
        torch.distributed lets every rank bound the averaged step alike and so skip
        matrix_exp's host read (see ``_step_bound``)."""
        G, result = self.leader_gradient(grads, matrices, target, loss)
        if dist.is_available() and dist.is_initialized():  # identical R on every rank: average G
            dist.all_reduce(G)
            G /= dist.get_world_size()
        finite = torch.isfinite(G).all()
        self._update(G, lr, finite, self._step_bound(lr, len(grads[0]), loss, global_rows))
        result.skipped = ~finite
        self.skipped_steps.add_(result.skipped)
        return result

    def _step_bound(self, lr: float, rows: float, loss: str, global_rows: int | None = None) -> float | None:
        """A host-side bound on the Frobenius norm of the riemannian SGD step lr * Omega, from
        which ``exp_step`` picks its degree without reading the step. For the cosine L_R,
        G_k = -sum_n w_kn g~_kn[:d] t_n[:d]^T is a sum of ``rows`` outer products of norm <= 1
        (w_kn = 1 / (|g~_kn| |t_n|)), so ||Omega_k|| <= ||R_k^T G_k|| <= rows (1 % kept for R's
        drift off SO(d)); at the defaults (lr 1e-3) the bound needs no squaring up to 1,400 rows.
        None (matrix_exp, one host read) for the other loss; for Adam, whose only bound on its
        step (7.3 per entry) is so loose that the squarings it asks for cost accuracy at large
        d. Under torch.distributed ranks may hold one row more or less yet must pick the same
        degree: G is the ranks' average, bounded by global_rows / world on every rank alike
        (None, so matrix_exp, when the global batch is not given)."""
        if loss != "cos" or self.opt.kind != "sgd":
            return None
        if dist.is_available() and dist.is_initialized():
            if not global_rows:
                return None
            rows = global_rows / dist.get_world_size()
        return lr * 1.01 * rows

    @torch.no_grad()
    @ieee_fp32()
    def _update(self, G: Tensor, lr: float, keep: Tensor, bound: float | None = None) -> None:
        if self.update == "riemannian":
            R = self.R
            M = R.transpose(-2, -1) @ G
            omega = 0.5 * (M - M.transpose(-2, -1))  # Riemannian gradient, left-trivialised
            # a skipped step's direction is zero (``direction``), so E = I exactly and R stays as it is
            self.R.copy_(R @ exp_step(-lr * self.opt.direction(omega, keep), bound))
            self.since_reortho += 1
            if self.reortho_every > 0 and self.since_reortho >= self.reortho_every:
                self.reorthonormalize()
        else:
            self.A.sub_(lr * self.opt.direction(G, keep))
        self.leader_steps.add_(keep)

    # -- diagnostics & checkpoints --------------------------------------------
    @torch.no_grad()
    def angles(self, R: Tensor | None = None) -> Tensor:
        """||R_k - I||_F per rotation (0 at the identity); ``R`` defaults to the current matrices."""
        R = (self.matrices() if R is None else R).detach()
        return (R - torch.eye(self.d, device=R.device)).flatten(1).norm(dim=1)

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        R = self.matrices().detach().double()
        return float((R.transpose(-2, -1) @ R - torch.eye(self.d, dtype=R.dtype, device=R.device)).abs().max())

    def get_extra_state(self) -> dict:
        return {"update": self.update, "opt": self.opt.state_dict(), "leader_steps": int(self.leader_steps),
                "skipped_steps": int(self.skipped_steps), "since_reortho": self.since_reortho}

    def set_extra_state(self, state: dict) -> None:
        if state["update"] != self.update:
            raise DistillerError(f"checkpoint has rotation_update={state['update']!r}, this run uses {self.update!r}")
        self.opt.load_state_dict(state["opt"])
        for counter in ("leader_steps", "skipped_steps"):
            getattr(self, counter).fill_(int(state[counter]))
        self.since_reortho = int(state["since_reortho"])

    def extra_repr(self) -> str:
        return f"d={self.d}, D={self.D}, num={self.num}, update={self.update}, optimizer={self.opt.kind}"
