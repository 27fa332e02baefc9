"""The training loop shared by students and the teacher.

CE plus the distiller's weighted terms, one backward, Adam(0.9, 0.999),
StepLR stepped once per epoch, validation every epoch; the state with the best
*validation* accuracy is kept and only it is evaluated on test. Every epoch
ends with an atomic full-state checkpoint (written on a background thread while
the next epoch trains), so a killed run resumes where it stopped and finishes
with the same numbers.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from kdbench.config import TrainConfig
from kdbench.data.feeder import feed
from kdbench.data.frames import FrameSet, normalize
from kdbench.distiller import Distiller, StepInfo, check_finite
from kdbench.io import BackgroundSaver, CorruptFileError, load_verified
from kdbench.resolver import Resolver
from kdbench.train import balance
from kdbench.train.metrics import forgery_metrics
from kdbench.train.runtime import Runtime, average_buffers, average_gradients, rank_slice

CHECKPOINT_FORMAT = 1


class TrainingError(RuntimeError):
    """A run cannot continue (non-finite loss, incompatible checkpoint)."""


@dataclass
class FitResult:
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    history: dict[str, Any]
    best_state: dict[str, Tensor] = field(repr=False)


def tap_grads(term: Tensor, inputs: list[Tensor]) -> Tensor:
    """``term``'s gradient w.r.t. each of ``inputs`` (zeros where it does not reach one),
    flattened per sample and concatenated in fp32: ``(N, sum of tap sizes)``."""
    grads = torch.autograd.grad(term, inputs, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(x)).flatten(1).float()
                      for g, x in zip(grads, inputs)], dim=1)


def batch_cosine(a: Tensor, b: Tensor) -> float:
    """The batch mean of the per-sample cosines of two ``(N, D)`` gradients (Fig. 4's quantity)."""
    return float(F.cosine_similarity(a, b, dim=1, eps=1e-12).mean())


def grad_cosine(terms: Mapping[str, Tensor], taps: Mapping[str, Tensor]) -> float | None:
    """Batch-mean cosine between the gradients of ``kd_rgb`` and ``kd_fre`` w.r.t. the
    student taps (the paper's Fig. 4 quantity). ``taps`` are what the distiller was given:
    ``train_step`` gives it a view of each tap, so the gradients stop there and this
    back-propagates through the distiller's own heads only. On the taps themselves a
    multi-stage distiller's (AT, VID) gradient at stage 1 would also gather what reaches
    it through the backbone from stages 2-4, and a compiled student could not give that."""
    if "kd_rgb" not in terms or "kd_fre" not in terms:
        return None
    inputs = [t for t in taps.values() if t.requires_grad]
    if not inputs:
        return None
    return batch_cosine(tap_grads(terms["kd_rgb"], inputs), tap_grads(terms["kd_fre"], inputs))


def resolved_tap_grads(resolver: Resolver, terms: Mapping[str, Tensor], leaves: Mapping[str, Tensor],
                       log: bool) -> tuple[list[Tensor], dict[str, float]]:
    """The gradient each student tap receives from the distiller's terms, with the two
    branches' parts combined by ``resolver``. ``leaves``: the detached taps the distiller
    was given (its terms' graphs end there), in tap order. Each branch's gradient at the
    leaves, over the whole batch, is one row of the ``(2, D)`` stack the resolver gets (one
    decision per step, as MGDA-UB takes one per batch); any other term that reaches the taps
    adds its gradient unresolved. On ``log`` steps Fig. 4's cosine is taken before
    (``grad_cos``) and after (``grad_cos_resolved``) resolution, per sample as ``grad_cosine``."""
    missing = [k for k in ("kd_rgb", "kd_fre") if k not in terms]
    if missing:
        raise TrainingError(f"resolver {resolver.name!r} combines the terms kd_rgb and kd_fre; the distiller "
                            f"returned {', '.join(sorted(terms)) or 'none'}")
    inputs = list(leaves.values())
    g = torch.stack([tap_grads(terms[k], inputs) for k in ("kd_rgb", "kd_fre")])  # (2, N, D)
    out = resolver.resolve(g.flatten(1)).view_as(g)
    diag = {"grad_cos": batch_cosine(g[0], g[1]), "grad_cos_resolved": batch_cosine(out[0], out[1])} if log else {}
    total = out.sum(0)
    others = [v for k, v in terms.items() if k not in ("kd_rgb", "kd_fre") and v.requires_grad]
    if others:
        rest = sum(others)
        assert isinstance(rest, Tensor), "a sum of one or more tensors"
        total = total + tap_grads(rest, inputs)
    pieces = total.split([x[0].numel() for x in inputs], dim=1)
    return [p.reshape(x.shape).to(x.dtype) for p, x in zip(pieces, inputs)], diag


@torch.no_grad()
def predict(model: nn.Module, frames: FrameSet, batch_size: int, rt: Runtime) -> Tensor:
    """P(fake) per frame, in eval mode."""
    was = model.training
    model.eval()
    probs = []
    for start in range(0, len(frames), batch_size):
        x = to_input(frames.images[start:start + batch_size], rt)
        with rt.autocast():
            logits, _ = model(x)
        probs.append(logits.float().softmax(1)[:, 1].cpu())
    model.train(was)
    return torch.cat(probs)


def evaluate(model: nn.Module, frames: FrameSet, batch_size: int, rt: Runtime) -> dict[str, float]:
    return forgery_metrics(frames.labels.numpy(), predict(model, frames, batch_size, rt).numpy(), frames.videos)


class LossWatch:
    """Stops training on a non-finite loss, naming the step and the term.

    ``every=1`` (the CPU default) checks each step before its backward. On a GPU
    that read is a host sync per step, so the trainer keeps the detached terms and
    reads them together every ``log_every`` steps and at each epoch end: a NaN then
    stops the run a few steps later, before the epoch's checkpoint is written."""

    def __init__(self, every: int = 1) -> None:
        self.every = max(1, every)
        self.pending: list[tuple[StepInfo, dict[str, Tensor], Tensor]] = []

    @classmethod
    def for_run(cls, rt: Runtime, log_every: int) -> LossWatch:
        """Every step on CPU; every ``log_every`` steps (50 when logging is off) on a GPU."""
        return cls(every=1 if rt.device.type == "cpu" else log_every if log_every > 0 else 50)

    def add(self, info: StepInfo, terms: Mapping[str, Tensor], loss: Tensor) -> None:
        self.pending.append((info, {k: v.detach() for k, v in terms.items()}, loss.detach()))
        if len(self.pending) >= self.every:
            self.check()

    def check(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        finite = torch.stack([loss.float() for _, _, loss in pending]).isfinite()
        if bool(finite.all()):
            return
        info, terms, loss = pending[int((~finite).nonzero()[0])]
        bad = check_finite(terms) or "total"
        raise TrainingError(f"non-finite loss at epoch {info.epoch} step {info.step}: term {bad!r} = "
                            f"{float(terms.get(bad, loss))}")


def make_optimizer(params: list[nn.Parameter], rt: Runtime, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam(0.9, 0.999); the fused CUDA kernel on a GPU (one launch instead of one per tensor group)."""
    fused = rt.device.type == "cuda" or None
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=fused)


def to_input(images: Tensor, rt: Runtime) -> Tensor:
    """uint8 frames (resident on the device or pinned on the host) -> a normalised input batch."""
    x = normalize(images.to(rt.device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x


def compiled_step(model: nn.Module, distiller: Distiller | None, mode: str | None = None
                  ) -> Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]]:
    """``--compile``: the student's forward through ``torch.compile`` (returned: the module itself
    keeps its checkpoint keys) and the distiller's loss compiled in place (its state_dict keys stay
    as they are), so the losses' many small kernels are fused too. A logging step runs both
    eagerly (``train_step``): its diagnostics take per-term gradients with the graph retained."""
    if distiller is not None:
        distiller.compile(mode=mode)
    return torch.compile(model, mode=mode)


def train_step(forward: Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]], distiller: Distiller | None,
               opt: torch.optim.Optimizer, params: list[nn.Parameter], rt: Runtime, x: Tensor, y: Tensor,
               feats: Mapping[str, Tensor], info: StepInfo,
               watch: LossWatch | None = None, index: Tensor | None = None, resolver: Resolver | None = None,
               student_params: Sequence[nn.Parameter] = ()
               ) -> tuple[dict[str, Tensor], dict[str, float]]:
    """One optimisation step: CE (times the distiller's ``ce_weight``) + the distiller's terms under
    autocast, one backward, gradient averaging across processes, the distiller's leader step, the
    optimizer step. ``watch``: where the loss is checked for NaN/inf (default: now, before the
    backward). ``index``: the batch's rows in the training split, for a distiller that ``wants_index``.
    ``resolver``: the branches' KD gradients at the taps are combined by it (``resolved_tap_grads``)
    and injected there in the same single backward; None (``--resolver none``) is this step
    exactly as it was before resolvers existed. On a logging step (``info.log``) the diagnostics
    also get each term's loss balance against the (weighted) CE term (``kdbench.train.balance``;
    over ``student_params``, the student's own parameters, when no resolver rewires the taps)."""
    diag: dict[str, float] = {}
    # a bf16 cache's taps reach the distiller in fp32 (at least), as the online teacher's do
    feats = {k: v.to(torch.promote_types(v.dtype, torch.float32)) for k, v in feats.items()}
    resolve = resolver is not None and distiller is not None
    diagnose = info.log and distiller is not None and distiller.mode == "both" \
        and not distiller.reports_grad_cos and not resolve
    weigh = info.log and distiller is not None  # the loss balance (kdbench.train.balance)
    if weigh:  # a compiled student's (--compile) returned taps are graph outputs CE never flows
        forward = getattr(forward, "_orig_mod", forward)  # through: a logging step runs it eagerly
    with rt.autocast():
        logits, taps = forward(x)
        ce = F.cross_entropy(logits, y)
        ce_weight = distiller.ce_weight if distiller is not None else 1.0
        terms = {"ce": ce if ce_weight == 1.0 else ce_weight * ce}  # 1.0: not even a multiply
        if distiller is not None:
            student = {k: taps[k] for k in distiller.student_taps()}
            if (diagnose or weigh) and not resolve:  # the Fig. 4 cosine (see grad_cosine) and the loss
                # balance. The loss then runs eagerly, as a compiled one (``--compile``: its buffers
                # donated to one backward) refuses a term-by-term backward
                student = {k: v.view_as(v) for k, v in student.items()}
            elif resolve:  # the terms' graphs end at leaves; the resolved gradient is injected at the taps
                student = {k: v.detach().requires_grad_(v.requires_grad) for k, v in student.items()}
            extra = {"index": index} if distiller.wants_index else {}
            kd = (distiller.forward if diagnose or resolve or weigh else distiller)(student, feats, y, **extra)
            terms.update(kd)
    if weigh:  # with a resolver the terms' graphs end at leaf taps: their ratios at the taps only
        diag.update(balance.measure(kd, terms["ce"], student, taps, () if resolve else student_params)[0])
    if diagnose:
        cos = grad_cosine(kd, student)
        if cos is not None:
            diag["grad_cos"] = cos
    roots: list[Tensor] = []
    injected: list[Tensor | None] = []
    if resolve:
        assert resolver is not None and distiller is not None
        wired = [k for k, v in student.items() if v.requires_grad]
        grads, rdiag = resolved_tap_grads(resolver, kd, {k: student[k] for k in wired}, info.log)
        roots, injected = [taps[k] for k in wired], list(grads)
        if getattr(distiller, "reports_grad_cos", False) and "grad_cos" in rdiag:
            rdiag["grad_cos_taps"] = rdiag.pop("grad_cos")  # the distiller reports its own (TOKD)
        diag.update(rdiag)
    loss = sum(terms.values())
    assert isinstance(loss, Tensor), "terms always holds ce"
    (watch or LossWatch()).add(info, terms, loss)
    opt.zero_grad(set_to_none=True)
    if roots:  # one backward from the loss and the taps together: the backbone is traversed once
        torch.autograd.backward([loss, *roots], [None, *injected])
    else:
        loss.backward()
    average_gradients(params, rt)
    if distiller is not None:
        diag.update(distiller.after_backward(info) or {})
    opt.step()
    return terms, diag


class Best(NamedTuple):
    """The epoch with the best validation accuracy so far, and the model's weights then."""
    acc: float
    epoch: int
    val: dict[str, float]
    state: dict[str, Tensor]


@dataclass
class TrainState:
    """Everything a run carries from one epoch to the next, and so what its checkpoint holds:
    ``to_dict`` writes it and ``load_dict`` reads it back, the one place both are spelled out."""
    model: nn.Module
    distiller: Distiller | None
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    history: dict[str, Any] = field(default_factory=lambda: {"epochs": [], "diagnostics": []})
    best: Best | None = None
    epoch: int = -1  # the last finished epoch

    @classmethod
    def start(cls, model: nn.Module, distiller: Distiller | None, train: FrameSet, cfg: TrainConfig, seed: int,
              rt: Runtime) -> TrainState:
        """A fresh run: the distiller prepared for ``train``, Adam over the student's parameters (and
        the distiller's student-side ones), StepLR, and the generator the batches are drawn with."""
        if distiller is not None:
            distiller.prepare(train.labels)  # per-sample state (CRD's memory bank) exists before a resume
        extra = distiller.student_parameters() if distiller is not None else []
        params = [*model.parameters(), *extra]
        opt = make_optimizer(params, rt, cfg.lr, cfg.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        return cls(model, distiller, params, opt, sched, torch.Generator().manual_seed(seed))

    def to_dict(self, identity: str) -> dict[str, Any]:
        assert self.best is not None, "a checkpoint is written after an epoch"
        return {"format": CHECKPOINT_FORMAT, "identity": identity, "epoch": self.epoch,
                "model": self.model.state_dict(),
                "distiller": self.distiller.state_dict() if self.distiller is not None else {},
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "history": self.history, "best_acc": self.best.acc, "best_epoch": self.best.epoch,
                "best_val": self.best.val, "best_state": self.best.state}

    def load_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``to_dict``'s output (checked by ``load_checkpoint``)."""
        self.model.load_state_dict(state["model"])
        if self.distiller is not None:
            self.distiller.load_state_dict(state["distiller"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = state["history"]
        self.best = Best(state["best_acc"], state["best_epoch"], state["best_val"], state["best_state"])
        self.epoch = state["epoch"]


@dataclass
class Loop:
    """What stays the same across a run's epochs."""
    cfg: TrainConfig
    rt: Runtime
    train: FrameSet
    val: FrameSet
    sources: dict[str, Tensor]  # the frames and the cached teacher taps, batched together
    forward: Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]]
    online_teacher: Callable[[Tensor], dict[str, Tensor]] | None
    watch: LossWatch
    resolver: Resolver | None = None  # Both mode's gradient-conflict resolver (None: the plain sum)
    warn: Callable[[str], None] | None = None  # the one loss-balance warning line (main process)

    @property
    def steps_per_epoch(self) -> int:
        n, bs = len(self.train), self.cfg.batch_size
        return max(1, n // bs) if n % bs < 2 else n // bs + 1  # no batch of one (BN)


def run_epoch(state: TrainState, loop: Loop, epoch: int, advance: Callable[[str | None], None]) -> dict[str, Any]:
    """Train one epoch, step the schedule, validate; the epoch's row is added to the history
    (and returned) and ``state.best`` follows the validation accuracy. ``advance(stats)`` is
    called after each step (``stats``: a progress line, or None to keep the last one)."""
    cfg, rt, model, distiller = loop.cfg, loop.rt, state.model, state.distiller
    steps_per_epoch, bs, n = loop.steps_per_epoch, cfg.batch_size, len(loop.train)
    model.train()
    if distiller is not None:
        distiller.train()
    perm = torch.randperm(n, generator=state.gen)
    global_batches = [perm[i * bs:(i + 1) * bs] for i in range(steps_per_epoch)]
    batches = [rank_slice(b, rt) for b in global_batches]
    sums: dict[str, Any] = {}
    seen, t0 = 0, time.perf_counter()
    stream = feed(loop.sources, batches, rt.device, depth=0 if rt.device.type == "cpu" else 2)
    for i, (idx, batch) in enumerate(zip(batches, stream)):
        step = epoch * steps_per_epoch + i
        log = cfg.log_every > 0 and step % cfg.log_every == 0
        x = to_input(batch.pop("frames"), rt)
        y = loop.train.labels[idx].to(rt.device, non_blocking=True)  # non_blocking: no host sync
        info = StepInfo(step=step, epoch=epoch, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                        student_lr=state.opt.param_groups[0]["lr"], base_lr=cfg.lr, log=log,
                        batch_size=len(global_batches[i]))
        feats = {**batch, **loop.online_teacher(x)} if loop.online_teacher is not None else batch
        index = idx.to(rt.device, non_blocking=True) if distiller is not None and distiller.wants_index else None
        terms, diag = train_step(loop.forward, distiller, state.opt, state.params, rt, x, y, feats, info, loop.watch,
                                 index, loop.resolver, student_params=list(model.parameters()) if log else ())
        for k, v in terms.items():  # summed on the device: no host sync per step
            sums[k] = sums.get(k, 0.0) + v.detach().float() * len(idx)
        seen += len(idx)
        if diag:
            state.history["diagnostics"].append({"step": step, "epoch": epoch, **diag})
            if len(state.history["diagnostics"]) == 1 and distiller is not None and loop.warn is not None:
                line = balance.warning(diag, distiller.hp)  # once: after the run's first logging step
                if line is not None:
                    loop.warn(line)
        stats = None
        if log or i == steps_per_epoch - 1:
            rate = seen * rt.world / max(time.perf_counter() - t0, 1e-9)
            loss = float(sum(v.detach() for v in terms.values()))
            stats = f"ep {epoch + 1}/{cfg.epochs} loss {loss:.4f} {rate:.0f} img/s"
        advance(stats)
    loop.watch.check()  # before validation and the checkpoint: a NaN run never saves its state
    train_time = time.perf_counter() - t0  # the check above waited for the epoch's last step
    state.sched.step()
    average_buffers(model, rt)
    val_metrics = evaluate(model, loop.val, cfg.eval_batch_size, rt)
    row = {"epoch": epoch, "lr": state.opt.param_groups[0]["lr"], "train_time": train_time,
           "eval_time": time.perf_counter() - t0 - train_time,
           "img_per_s": seen * rt.world / max(train_time, 1e-9),
           **{f"loss_{k}": float(v) / max(seen, 1) for k, v in sums.items()},
           **{f"val_{k}": v for k, v in val_metrics.items()}}
    state.history["epochs"].append(row)
    if state.best is None or val_metrics["acc"] > state.best.acc:
        state.best = Best(val_metrics["acc"], epoch, val_metrics, copy.deepcopy(model.state_dict()))
    state.epoch = epoch
    return row


def fit(
    model: nn.Module,
    train: FrameSet,
    val: FrameSet,
    test: FrameSet,
    cfg: TrainConfig,
    seed: int,
    distiller: Distiller | None = None,
    features: Mapping[str, Tensor] | None = None,
    online_teacher: Callable[[Tensor], dict[str, Tensor]] | None = None,
    rt: Runtime = Runtime(),
    checkpoint: Path | None = None,
    identity: str = "",
    label: str = "train",
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resolver: Resolver | None = None,
    warn: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``model`` (a ``(logits, taps)`` module) and return test metrics at the best-val epoch.

    The distiller's teacher taps come from ``features`` (cached and reduced, one row per
    training sample, on the device or in host memory: they are batched with the frames)
    and, for taps not cached, from ``online_teacher(x)`` on the batch the student sees.
    ``checkpoint``: where the per-epoch full state goes; if it exists and carries
    the same ``identity`` the run resumes from it. ``resolver``: see ``train_step``.
    """
    state = TrainState.start(model, distiller, train, cfg, seed, rt)
    if checkpoint is not None and checkpoint.is_file():
        state.load_dict(load_checkpoint(checkpoint, identity))
    forward = compiled_step(model, distiller) if rt.compile else model
    loop = Loop(cfg, rt, train, val, {"frames": train.images, **(features or {})}, forward, online_teacher,
                LossWatch.for_run(rt, cfg.log_every), resolver)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[stats]}"), TimeRemainingColumn())
    with BackgroundSaver() as saver, Progress(*columns, disable=not (progress and rt.is_main), transient=True) as bar:
        task = bar.add_task(label, total=(cfg.epochs - state.epoch - 1) * loop.steps_per_epoch, stats="")
        if rt.is_main:  # ``warn``: where the one loss-balance warning goes (default: above the bar)
            loop.warn = warn or (lambda text: bar.console.print(escape(text)))

        last_val = ""  # the previous epoch's validation, shown beside the running loss

        def advance(stats: str | None) -> None:
            if stats:  # two calls, not a ``**`` mapping: rich types each keyword of ``update``
                bar.update(task, advance=1, stats=stats + last_val)
            else:
                bar.update(task, advance=1)

        for epoch in range(state.epoch + 1, cfg.epochs):
            row = run_epoch(state, loop, epoch, advance)
            last_val = f" | val acc {row['val_acc']:.2f} auc {row['val_auc']:.2f}"
            bar.update(task, stats=f"ep {epoch + 1}/{cfg.epochs} done{last_val}")
            if checkpoint is not None and rt.is_main:
                saver.save(state.to_dict(identity), checkpoint)
            if on_epoch is not None:
                on_epoch(row)

    state.history["balance"] = balance.summarise(state.history["diagnostics"])
    best = state.best
    assert best is not None, "no epoch ran"
    model.load_state_dict(best.state)  # selected on validation; test is evaluated once, here
    test_metrics = evaluate(model, test, cfg.eval_batch_size, rt)
    return FitResult(best_epoch=best.epoch, val=best.val, test=test_metrics, history=state.history,
                     best_state=best.state)


def load_checkpoint(path: Path, identity: str) -> dict[str, Any]:
    """A checkpoint written by ``fit`` for the same run, or a one-line error saying why not."""
    try:
        state = load_verified(path)
    except CorruptFileError as exc:
        raise TrainingError(f"{exc}; delete it to start over") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is refused the same way
        raise TrainingError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it to start over") from None
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {path} is not a kdbench run checkpoint; delete it to start over")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"checkpoint {path} has format {state.get('format')}, this kdbench writes {CHECKPOINT_FORMAT}")
    if state.get("identity") != identity:
        raise TrainingError(f"checkpoint {path} belongs to another configuration ({state.get('identity')} != {identity})")
    return state


def epoch_summary(row: Mapping[str, Any], epochs: int) -> str:
    """One epoch in a line, for logs that are not a terminal (a progress bar draws nothing there):
    "epoch 2/6: loss 0.4512 (ce 0.3921, kd_rgb 0.0591), val acc 81.20 auc 88.31, 41 s"."""
    terms = {k[5:]: v for k, v in row.items() if k.startswith("loss_")}
    parts = ", ".join(f"{k} {v:.4f}" for k, v in terms.items())
    loss = f"loss {sum(terms.values()):.4f}" + (f" ({parts})" if len(terms) > 1 else "")
    val = " ".join(f"{k[4:]} {row[k]:.2f}" for k in ("val_acc", "val_auc") if k in row)
    secs = row.get("train_time", 0.0) + row.get("eval_time", 0.0)
    return f"epoch {row['epoch'] + 1}/{epochs}: {loss}, val {val}, {secs:.0f} s"
