"""CRD: contrastive representation distillation (Tian et al., ICLR 2020), RepDistiller's NCE form.

Pooled student and teacher vectors are embedded by a linear layer each and L2-normalised (v_s, v_t).
Two memory banks hold an embedding per training sample (M_s of v_s, M_t of v_t). For a batch row i
with sample index y_i and K negatives j_1..j_K drawn from the samples of *other* classes:

h(v, m) = exp(<v, m> / tau) / Z,   Z = N * mean of the first step's exp-scores (then fixed)
P_n = 1 / N (noise distribution),  with the K+1 scores x_0 (positive) and x_1..x_K:

NCE(x) = -( log(x_0 / (x_0 + K P_n)) + sum_k log(K P_n / (x_k + K P_n)) ), batch mean
L = beta * ( NCE(h(v_s, M_t[contrast])) + NCE(h(v_t, M_s[contrast])) )

after which M[y_i] <- normalise(m * M[y_i] + (1 - m) * v) for both banks (momentum m = 0.5).
Defaults (feature dim 128, K = 16384, tau = 0.07, m = 0.5, beta = 0.8) are RepDistiller's; the loss
agrees with torchdistill's ``CRDLoss`` (tested), which cannot be called here: its constants are read
back to the host every step and its alias sampler does not work for every size.

**Sized from the data.** ``prepare`` allocates the banks for the training split's N samples
(2 x N x 128 fp32 per branch: 118 MB per branch for FF++'s 115,200 training frames) and caps K at
the smallest other-class pool, so a small split does not draw the same negative many times over.
The per-step cost that dominates at scale is not the bank but the gathered negatives:
B x (K + 1) x 128 fp32 per bank, 537 MB at batch 64 and K = 16384: 1.07 GB per branch (two banks),
2.15 GB in Both mode, kept for the backward. ``--hp nce_k=4096`` quarters it.

Negatives come from the other classes, as RepDistiller's CIFAR sampler (``mode exact``) and
torchdistill's ``CRDDatasetWrapper`` draw them (``negatives=any``: from every sample), with
replacement and from the distiller's own generator, kept in its checkpoint state, so a resumed run
draws what an uninterrupted one would. With two classes the negatives of a fake frame are real frames
and vice versa. The banks are per process: under torchrun each rank updates its own (as the
reference, which is single-process).

Both mode: a head pair and a bank pair per branch (the teacher's pooled vector of that branch).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import Distiller, DistillerError, HParam, branch_taps, hookimpl
from kdbench.connectors import fp32, vector_shape

TAP = "pooled"
NEGATIVES = ("other-class", "any")


def nce_loss(x: Tensor, n_data: int, eps: float) -> Tensor:
    """RepDistiller's ContrastLoss on (B, K+1) scores, column 0 the positive."""
    m = x.shape[1] - 1
    noise = m / n_data
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (x[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


class Embed(nn.Module):
    """RepDistiller's Embed: linear, then L2-normalised."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x), dim=1)


class Head(nn.Module):
    """One branch's embeddings, memory banks and normalising constants."""

    memory_s: Tensor  # buffers (register_buffer), typed for the checker
    memory_t: Tensor
    z: Tensor

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int) -> None:
        super().__init__()
        self.embed_s, self.embed_t = Embed(s_dim, feat_dim), Embed(t_dim, feat_dim)
        self.register_buffer("memory_s", torch.zeros(0, feat_dim))
        self.register_buffer("memory_t", torch.zeros(0, feat_dim))
        self.register_buffer("z", torch.full((2,), -1.0))  # (student, teacher); < 0: not yet set

    def allocate(self, n: int) -> None:
        dim = self.memory_s.shape[1]
        stdv = 1.0 / math.sqrt(dim / 3)  # RepDistiller ContrastMemory's uniform init
        device = self.memory_s.device
        self.memory_s = torch.rand(n, dim, device=device).mul_(2 * stdv).add_(-stdv)
        self.memory_t = torch.rand(n, dim, device=device).mul_(2 * stdv).add_(-stdv)
        self.z.fill_(-1.0)


class CRD(Distiller):
    name = "crd"
    wants_index = True
    description = "Contrastive representation distillation: NCE against per-sample memory banks of pooled embeddings."
    defaults = {
        "beta": HParam(0.8, source="RepDistiller scripts/run_cifar_distill.sh: --distill crd -a 0 -b 0.8", low=0.0),
        "feat_dim": HParam(128, source="RepDistiller train_student.py --feat_dim 128"),
        "nce_k": HParam(16384, source="RepDistiller train_student.py --nce_k 16384 (capped at the negative pool)"),
        "nce_t": HParam(0.07, source="RepDistiller train_student.py --nce_t 0.07"),
        "nce_m": HParam(0.5, source="RepDistiller train_student.py --nce_m 0.5"),
        "negatives": HParam("other-class", source="RepDistiller CIFAR100InstanceSample / torchdistill "
                                                  "CRDDatasetWrapper: negatives from the other classes"),
        "eps": HParam(1e-7, source="RepDistiller ContrastLoss eps=1e-7"),
    }

    order: Tensor  # buffers (register_buffer), typed for the checker
    class_start: Tensor
    class_count: Tensor

    def __init__(self, mode: str, student_shapes: Mapping, teacher_shapes: Mapping, **hparams) -> None:
        super().__init__(mode, student_shapes, teacher_shapes, **hparams)
        if self.hp["negatives"] not in NEGATIVES:
            raise DistillerError(f"negatives={self.hp['negatives']!r}: choose one of {', '.join(NEGATIVES)}")
        if self.hp["nce_k"] < 1 or self.hp["feat_dim"] < 1 or self.hp["nce_t"] <= 0:
            raise DistillerError("nce_k and feat_dim must be >= 1 and nce_t positive")
        if not 0 <= self.hp["nce_m"] < 1:
            raise DistillerError(f"nce_m={self.hp['nce_m']} must lie in [0, 1)")
        s_dim = vector_shape(self.student_shapes, TAP, "student")
        self.heads = nn.ModuleDict({b: Head(s_dim, vector_shape(self.teacher_shapes, f"{b}.{TAP}", "teacher"),
                                            self.hp["feat_dim"]) for b in self.branches})
        # the sampler: sample indices sorted by class, and each class's start and size in that order
        for key in ("order", "class_start", "class_count"):
            self.register_buffer(key, torch.zeros(0, dtype=torch.long), persistent=False)
        self.n_data, self.k = 0, 0
        self.generator: torch.Generator | None = None

    def prepare(self, train_labels: Tensor) -> None:
        labels = train_labels.detach().long().cpu()
        n = len(labels)
        counts = torch.bincount(labels)
        pools = (n - counts[counts > 0]) if self.hp["negatives"] == "other-class" else torch.tensor([n])
        if n < 2 or int(pools.min()) < 1:
            raise DistillerError("CRD draws negatives from the other classes: the training split needs two classes")
        device = self.order.device
        self.n_data, self.k = n, min(self.hp["nce_k"], int(pools.min()))
        self.order = torch.argsort(labels, stable=True).to(device)
        self.class_count = counts.to(device)
        self.class_start = (torch.cumsum(counts, 0) - counts).to(device)
        for head in self.heads.values():
            assert isinstance(head, Head), "one Head per branch"
            head.allocate(n)
        seed = int(torch.randint(0, 2**62, (1,)))  # from the run's seed
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def get_extra_state(self) -> Any:
        return {"generator": self.generator.get_state() if self.generator is not None else None}

    def set_extra_state(self, state: Any) -> None:
        if state and state.get("generator") is not None:
            if self.generator is None:
                self.generator = torch.Generator(device=self.order.device)
            self.generator.set_state(state["generator"])

    def student_taps(self) -> list[str]:
        return [TAP]

    def teacher_taps(self) -> list[str]:
        return branch_taps(self.branches, [TAP])

    def contrast_indices(self, labels: Tensor, index: Tensor) -> Tensor:
        """(B, K+1): each row's own index, then K negatives (no host read)."""
        u = torch.rand(len(index), self.k, device=index.device, generator=self.generator)
        if self.hp["negatives"] == "any":
            neg = (u * self.n_data).long().clamp_max(self.n_data - 1)
        else:  # a uniform position in the sorted order outside the row's own class block
            start, count = self.class_start[labels].unsqueeze(1), self.class_count[labels].unsqueeze(1)
            pool = self.n_data - count
            r = torch.minimum((u * pool).long(), pool - 1)
            neg = self.order[r + (r >= start).long() * count]
        return torch.cat([index.unsqueeze(1), neg], dim=1)

    def branch_loss(self, head: Head, s: Tensor, t: Tensor, contrast: Tensor, index: Tensor) -> Tensor:
        v_s, v_t = head.embed_s(s), head.embed_t(t)
        b, k1 = contrast.shape
        rows = contrast.reshape(-1)
        w_t = head.memory_t.index_select(0, rows).view(b, k1, -1)  # buffers: no gradient
        w_s = head.memory_s.index_select(0, rows).view(b, k1, -1)
        out_s = torch.exp(torch.bmm(w_t, v_s.unsqueeze(2)).squeeze(2) / self.hp["nce_t"])
        out_t = torch.exp(torch.bmm(w_s, v_t.unsqueeze(2)).squeeze(2) / self.hp["nce_t"])
        with torch.no_grad():  # Z fixed at the first step (RepDistiller), set without a host read
            z = torch.where(head.z < 0, torch.stack([out_s.mean(), out_t.mean()]) * self.n_data, head.z)
            head.z.copy_(z)
        loss = nce_loss(out_s / z[0], self.n_data, self.hp["eps"]) + nce_loss(out_t / z[1], self.n_data, self.hp["eps"])
        with torch.no_grad():
            m = self.hp["nce_m"]
            for bank, v in ((head.memory_s, v_s), (head.memory_t, v_t)):
                bank.index_copy_(0, index, F.normalize(bank.index_select(0, index) * m + v.detach() * (1 - m), dim=1))
        return loss

    def forward(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor,
                index: Tensor | None = None) -> dict[str, Tensor]:
        if index is None or self.n_data == 0:
            raise DistillerError("CRD needs the batch's sample indices and a prepared memory bank (wants_index)")
        s = student[TAP]
        terms = {}
        with torch.autocast(s.device.type, enabled=False):  # exp(<v, m> / 0.07) in fp32
            contrast = self.contrast_indices(labels, index)
            for b, head in self.heads.items():
                assert isinstance(head, Head), "one Head per branch"
                terms[f"kd_{b}"] = self.hp["beta"] * self.branch_loss(head, fp32(s), fp32(teacher[f"{b}.{TAP}"]),
                                                                      contrast, index)
        return terms


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [CRD]
