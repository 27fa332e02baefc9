"""Independent reference implementations of the baseline losses, for tests.

Written from the papers' formulas (and kdbench's documented alignment rule),
deliberately in a different style from the plugins: explicit resampling
matrices instead of ``adaptive_avg_pool2d``/``interpolate``, per-sample loops,
hand-written batch norm. Slow and only meant for tiny tensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def pool_matrix(n_in: int, n_out: int) -> Tensor:
    """Adaptive average pooling along one axis: output i averages inputs
    floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """Linear interpolation along one axis with half-pixel centres (align_corners=False)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = n_in / n_out
    for i in range(n_out):
        x = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(x)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = x - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m


def axis_matrix(n_in: int, n_out: int) -> Tensor:
    if n_out == n_in:
        return torch.eye(n_in, dtype=torch.float64)
    return pool_matrix(n_in, n_out) if n_out < n_in else bilinear_matrix(n_in, n_out)


def ref_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Shrink each axis by averaging, then grow each axis by linear interpolation."""
    h, w = x.shape[-2:]
    mh, mw = min(h, size[0]), min(w, size[1])
    rows = axis_matrix(mh, size[0]) @ axis_matrix(h, mh)
    cols = axis_matrix(mw, size[1]) @ axis_matrix(w, mw)
    return torch.einsum("oh,nchw,pw->ncop", rows, x.double(), cols)


def ref_at(student: list[Tensor], teacher: list[Tensor], p: float = 2) -> Tensor:
    """Zagoruyko & Komodakis: sum over stages of the mean squared difference of
    L2-normalised spatial attention vectors mean_c |F_c|^p, compared on the
    per-axis smaller grid (average-pooled)."""
    total = torch.zeros((), dtype=torch.float64)
    for fs, ft in zip(student, teacher):
        size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
        qs = ref_resize(fs.double().abs().pow(p).mean(1, keepdim=True), size)
        qt = ref_resize(ft.double().abs().pow(p).mean(1, keepdim=True), size)
        n = fs.shape[0]
        acc = 0.0
        for i in range(n):
            vs, vt = qs[i].flatten(), qt[i].flatten()
            acc = acc + ((vs / vs.norm() - vt / vt.norm()) ** 2).sum()
        total = total + acc / (n * size[0] * size[1])
    return total


def ref_pkt(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Passalis & Tefas: KL(P_t || P_s) of the row-normalised, [0,1]-shifted cosine
    similarities, averaged over all N^2 entries."""
    def probabilities(x: Tensor) -> Tensor:
        x = x.double()
        n = x.shape[0]
        unit = [x[i] / (x[i].norm() + eps) for i in range(n)]
        k = torch.tensor([[(float(unit[i] @ unit[j]) + 1) / 2 for j in range(n)] for i in range(n)], dtype=torch.float64)
        return k / k.sum(1, keepdim=True)

    ps, pt = probabilities(student), probabilities(teacher)
    return (pt * torch.log((pt + eps) / (ps + eps))).sum() / pt.numel()


def ref_sp(student: Tensor, teacher: Tensor) -> Tensor:
    """Tung & Mori: ||rownorm(Q_s Q_s^T) - rownorm(Q_t Q_t^T)||_F^2 / N^2."""
    def gram(f: Tensor) -> Tensor:
        q = f.double().reshape(f.shape[0], -1)
        g = q @ q.T
        return g / g.norm(dim=1, keepdim=True)

    n = student.shape[0]
    return ((gram(student) - gram(teacher)) ** 2).sum() / n**2


def ref_vid(student: Tensor, teacher: Tensor, weights: list[Tensor], alpha: Tensor, eps: float) -> Tensor:
    """Ahn et al.: mean Gaussian NLL (without the 2 pi constant) of the teacher map
    under mean r(resized student) and per-channel variance softplus(alpha) + eps."""
    x = ref_resize(student, tuple(teacher.shape[2:]))
    for k, w in enumerate(weights):
        x = torch.einsum("oc,nchw->nohw", w.double().flatten(1), x)
        if k < len(weights) - 1:
            x = x.clamp_min(0)
    var = (torch.log1p(torch.exp(alpha.double())) + eps).view(1, -1, 1, 1)
    t = teacher.double()
    return (0.5 * ((x - t) ** 2 / var + torch.log(var))).mean()


def ref_fitnet(student: Tensor, teacher: Tensor, conv_w: Tensor, conv_b: Tensor,
               bn_w: Tensor, bn_b: Tensor, bn_eps: float = 1e-5) -> Tensor:
    """Romero et al. (single stage, RepDistiller style): MSE between the teacher hint and
    ReLU(BN_train(resize(conv(student)))), BN using the batch's biased statistics."""
    k = conv_w.shape[-1]
    x = F.conv2d(student.double(), conv_w.double(), conv_b.double(), padding=k // 2)
    x = ref_resize(x, tuple(teacher.shape[2:]))
    mu = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    x = (x - mu) / torch.sqrt(var + bn_eps) * bn_w.double().view(1, -1, 1, 1) + bn_b.double().view(1, -1, 1, 1)
    return ((x.clamp_min(0) - teacher.double()) ** 2).mean()


def ref_dkd(student: Tensor, teacher: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Zhao et al. (Eqs. 1-4), re-derived per sample with explicit class sums: b = (p_gt, 1 - p_gt),
    p^ the softmax renormalised over the non-target classes (p_i / (1 - p_gt)); returns
    (T^2 * mean KL(b_t || b_s), T^2 * mean KL(p^_t || p^_s))."""
    tckd = nckd = 0.0
    n = student.shape[0]
    for i in range(n):
        ps = torch.exp(student[i].double() / temperature)
        ps = ps / ps.sum()
        pt = torch.exp(teacher[i].double() / temperature)
        pt = pt / pt.sum()
        g = int(labels[i])
        bs, bt = [ps[g], 1 - ps[g]], [pt[g], 1 - pt[g]]
        tckd = tckd + sum(bt[k] * math.log(bt[k] / bs[k]) for k in range(2))
        others = [c for c in range(len(ps)) if c != g]
        for c in others:
            qs, qt = ps[c] / (1 - ps[g]), pt[c] / (1 - pt[g])
            nckd = nckd + qt * math.log(qt / qs)
    scale = temperature ** 2 / n
    return torch.as_tensor(tckd * scale), torch.as_tensor(nckd * scale)


# -- NumPy derivations from the papers, for the golden tests ------------------------------------
# No torch at all, so neither the plugins' code nor torchdistill's (which PKT calls) can agree with
# them by construction.
def np_pkt(student, teacher, eps: float = 1e-7) -> float:
    """Passalis & Tefas (ECCV 2018), Eq. 8-10 with the cosine kernel, as their code computes it:
    K(a, b) = (cos(a, b) + 1) / 2 over the batch, conditional probabilities p_{i|j} = K_ij / sum_k K_kj
    (self-similarity included), and KL(P_t || P_s) averaged over the N^2 entries."""
    import numpy as np

    def conditional(x):
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        out = np.empty((len(x), len(x)))
        for i, a in enumerate(x):
            for j, b in enumerate(x):
                out[i, j] = (np.dot(a, b) / ((np.linalg.norm(a) + eps) * (np.linalg.norm(b) + eps)) + 1) / 2
        return out / out.sum(axis=1, keepdims=True)

    p, q = conditional(teacher), conditional(student)
    return float(np.mean(p * np.log((p + eps) / (q + eps))))


def np_sp(student, teacher) -> float:
    """Tung & Mori (ICCV 2019), Eq. 1-4: G~ = Q Q^T of the flattened activations, each row divided by
    its L2 norm, L = ||G_s - G_t||_F^2 / b^2."""
    import numpy as np

    def gram(x):
        q = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        g = q @ q.T
        return g / np.sqrt((g**2).sum(axis=1))[:, None]

    b = len(student)
    return float(((gram(student) - gram(teacher)) ** 2).sum() / b**2)
