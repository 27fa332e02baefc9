"""The public resolver contract: how the two branches' KD gradients are combined.

In Both mode a distiller returns one term per teacher branch (``kd_rgb``, ``kd_fre``).
Without a resolver their gradients simply add up on the way into the student. With one,
the trainer takes each term's gradient at the student taps the distiller reads (the
quantity of the paper's Fig. 4), stacks them as a ``(T, D)`` tensor (T = 2 branches,
rgb then fre; D = the whole batch's tap values, flattened) and hands it to
``Resolver.resolve``; the rows it returns are summed and injected at the taps, from where
they flow into the backbone with the cross-entropy's gradient in the same backward.

Resolving at the taps (the shared *representation*) rather than at the shared
*parameters* is the cheap variant MGDA-UB (Sener & Koltun, NeurIPS 2018) uses: one
gradient per branch of the size of a batch of tap maps instead of one per branch of the
size of the whole backbone, and a single backbone backward. ``docs/resolvers.md``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from kdbench.distiller import HParam, resolve_hparams

if TYPE_CHECKING:
    from torch import Tensor


class ResolverError(ValueError):
    """A resolver was asked for something it cannot do (unknown name or hyper-parameter)."""


class Resolver:
    """Base class of every gradient-conflict resolver. Subclass it, then register it with
    the ``kdbench_resolvers`` hook (see ``kdbench.hookspecs``).

    A resolver is stateless: ``resolve`` is a function of the gradients of one step (so it
    needs nothing in a checkpoint, and a resumed run resolves as an uninterrupted one)."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, HParam]] = {}
    description: ClassVar[str] = ""

    def __init__(self, **hparams: Any) -> None:
        self.hp = resolve_hparams(type(self), hparams)

    def resolve(self, grads: Tensor) -> Tensor:
        """``grads``: ``(T, D)`` fp32, detached, one row per branch (rgb, fre). Returns the
        ``(T, D)`` contributions actually applied: their sum is the gradient the taps receive
        (``none`` returns ``grads``: the plain sum). Keep the sum's scale (a resolver that
        averages multiplies by T), so a learning rate tuned without a resolver still fits.
        Avoid reading values on the host (``float(x)``, ``if x > 0``): on a GPU each read
        waits for the queued kernels; ``torch.where`` keeps a branch on the device."""
        raise NotImplementedError
