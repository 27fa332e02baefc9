"""TOKD: two-in-one knowledge distillation (paper Sec. 4, Eq. 2-16), through the public contract.

Student side: S_B(x) is the student's ``stage4`` tap (the map its own classifier
pools, unrotated: TOKD adds nothing to the inference path). In ``both`` mode two
rotations R_r, R_f in SO(d) (``kdbench.rotation``) act on the first d
coordinates of vec(S_B(x)); projectors G_Sr (2 x conv+BN+ReLU) and G_Sf
(3 x conv+BN+ReLU) map the rotated maps to the teacher's projection channels,
and each branch's loss is alpha * MSE between per-sample L2-normalised
flattened projections (Eq. 6, 7, 10). The rotations move in ``after_backward``
from the per-branch gradients that tensor hooks captured in the trainer's single
backward (Eq. 13-16). ``rgb`` mode (Table 3's RGB column) is projector
distillation from the RGB branch alone, without rotation. docs/tokd.md has the
design, the decisions and the defaults.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import Distiller, DistillerError, HParam, StepInfo, hookimpl
from kdbench.connectors import conv_bn_relu, map_shape, resize
from kdbench.distiller import Reduction
from kdbench.rotation import INITS, LOSSES, OPTIMIZERS, TARGETS, UPDATES, Rotation, target_vector

BRANCH_CHOICES = ("auto", "rgb", "fre", "both")


def student_projector(branch: str, cin: int, cout: int) -> nn.Sequential:
    """G_Sr: 1x1 then 3x3 conv; G_Sf: 1x1, 3x3, 3x3 conv; each conv followed by BN and ReLU
    (the first conv maps student channels to the teacher's projection channels)."""
    layers = conv_bn_relu(cin, cout, 1) + conv_bn_relu(cout, cout, 3)
    if branch == "fre":
        layers += conv_bn_relu(cout, cout, 3)
    return nn.Sequential(*layers)


DISTANCES = ("sq_l2", "mse")


def kd_distance(fs: Tensor, ft: Tensor, distance: str = "sq_l2") -> Tensor:
    """Eq. 6/7 between per-sample L2-normalised flattened maps.

    ``sq_l2``: the squared Euclidean distance of each sample's unit vectors (= 2 - 2 cos),
    averaged over the batch only, so its scale does not depend on the map's size.
    ``mse``: the mean over batch *and* elements, i.e. ``sq_l2`` divided by C*H*W, which
    makes alpha's effect shrink with the resolution (docs/tokd.md)."""
    diff = F.normalize(fs.float().flatten(1), dim=1) - F.normalize(ft.float().flatten(1), dim=1)
    sq = diff.square()
    return sq.mean() if distance == "mse" else sq.sum(1).mean()


class TOKD(Distiller):
    name = "tokd"
    modes = ("rgb", "both")
    description = "Two-in-One KD: per-branch projectors + rotation-based gradient homogenisation (Sec. 4)."
    # after_backward logs the Fig. 4 cosine from the gradients its hooks captured anyway, so the
    # trainer need not run its own per-term autograd.grad on log steps.
    reports_grad_cos = True
    defaults = {
        "alpha": HParam(10.0, "paper Sec. 5.1: alpha1 = alpha2 = 10 on FF++ (use 200 on Celeb-DF)", low=0.0),
        "distance": HParam("sq_l2", "Eq. 6/7: sq_l2 = per-sample ||a - b||^2 of unit maps (size-free); "
                                    "mse = mean over elements (the former form; docs/tokd.md)", choices=DISTANCES),
        "branches": HParam("auto", "Table 6 rows: auto = from mode (rgb -> rgb, both -> both); or rgb | fre | both",
                           choices=BRANCH_CHOICES),
        "projector": HParam(True, "paper Sec. 4.1; false = a single 1x1 conv adapter (Table 6 ablation)"),
        "rotation": HParam(True, "paper Sec. 4.2; only acts with two branches (ignored in rgb mode)"),
        "rotation_dim": HParam(1024, "paper Sec. 5.1 / Table 5: d = 1024; d > C*H*W is an error, 0 = off", low=0),
        "rotation_update": HParam("riemannian", "kdbench: geodesic step on SO(d) (riemannian | expm | cayley)",
                                  choices=UPDATES),
        "rotation_optimizer": HParam("sgd", "paper Eq. 16 (plain SGD, weight decay 0); adam as an option",
                                     choices=OPTIMIZERS),
        "rotation_lr": HParam(1e-3, "kdbench choice (paper gives none): SGD step on the batch-summed L_R", low=0),
        "rotation_gamma": HParam(0.7, "kdbench choice: eta_R/eta_S decays by gamma per epoch (Stackelberg)",
                                 low=0, high=1, low_open=True),
        "rotation_target": HParam("mean", "paper Eq. 15 literal; rotograd = Frobenius-normalised per task",
                                  choices=TARGETS),
        "rotation_loss": HParam("cos", "paper Eq. 13 (cosine); rotograd_mse = RotoGrad's ||R g - g~||^2",
                                choices=LOSSES),
        "rotation_init": HParam("identity", "kdbench: identity (first step = plain KD); haar as an option",
                                choices=INITS),
        "reortho_every": HParam(100, "kdbench: QR re-orthonormalisation period of the riemannian R (0 = never)"),
    }

    def setup(self) -> None:
        hp = self.hp
        self._branches = self._resolve_branches(hp["branches"])
        zs = map_shape(self.student_shapes, "stage4", "student")
        self.latent_shape = zs
        self.proj = nn.ModuleDict()
        self._hw: dict[str, tuple[int, int]] = {}
        for b in self._branches:
            ts = map_shape(self.teacher_shapes, f"{b}.proj", "teacher")
            if hp["projector"]:
                self.proj[b] = student_projector(b, zs[0], ts[0])
            else:  # direct matching: one 1x1 conv adapter from student to teacher channels
                self.proj[b] = nn.Conv2d(zs[0], ts[0], 1, bias=False)
            self._hw[b] = (min(zs[1], ts[1]), min(zs[2], ts[2]))
        self.rot: Rotation | None = None
        if hp["rotation"] and len(self._branches) == 2 and hp["rotation_dim"] > 0:
            self.rot = Rotation(zs, hp["rotation_dim"], num=2, update=hp["rotation_update"],
                                optimizer=hp["rotation_optimizer"], init=hp["rotation_init"],
                                reortho_every=hp["reortho_every"])
        self._cap: dict[str, Tensor] = {}
        self._Rs: Tensor | None = None

    # -- configuration ------------------------------------------------------
    def _resolve_branches(self, value: str) -> tuple[str, ...]:
        if value == "auto":
            return ("rgb",) if self.mode == "rgb" else ("rgb", "fre")
        if self.mode == "rgb" and value != "rgb":
            raise DistillerError(f"branches={value!r} needs mode 'both' (mode 'rgb' distills the RGB branch only)")
        return ("rgb", "fre") if value == "both" else (value,)

    @property
    def branches(self) -> tuple[str, ...]:
        return self._branches

    @property
    def rotation_active(self) -> bool:
        return self.rot is not None

    def student_taps(self) -> list[str]:
        return ["stage4"]

    def teacher_taps(self) -> list[str]:
        return [f"{b}.proj" for b in self._branches]

    def teacher_reductions(self) -> dict[str, Reduction]:
        """Pool a teacher projection larger than the student map down to the common size before
        caching (the size bound to ``resize`` is part of the cache key)."""
        out: dict[str, Reduction] = {}
        for b in self._branches:
            tap, hw = f"{b}.proj", self._hw[b]
            if tuple(self.teacher_shapes[tap][1:]) != hw:
                out[tap] = partial(resize, size=hw)
        return out

    def leader_parameters(self):
        return self.rot.leader_parameters() if self.rot is not None else ()

    # -- the step -----------------------------------------------------------
    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        z = student["stage4"]
        capture = len(self._branches) == 2 and torch.is_grad_enabled() and z.requires_grad
        self._cap, self._Rs = {}, None
        if self.rot is not None:
            if capture and self.rot.update != "riemannian":
                Rs = self._Rs = self.rot.matrices()  # evaluated once; its graph to A serves the leader step
            else:
                with torch.no_grad():
                    Rs = self.rot.matrices()
            inputs = {b: self.rot.rotate(z, Rs[k].detach()) for k, b in enumerate(self._branches)}
        else:  # distinct aliases so each branch's gradient can be hooked separately (Fig. 4 baseline)
            inputs = {b: z.view_as(z) if capture else z for b in self._branches}
        if capture:
            for b, m in inputs.items():
                m.register_hook(self._saver(self._cap, b))
        alpha = self.hp["alpha"]
        terms = {}
        for b in self._branches:
            hw = self._hw[b]
            fs = resize(self.proj[b](inputs[b]), hw)
            ft = resize(teacher[f"{b}.proj"], hw)
            terms[f"kd_{b}"] = alpha * kd_distance(fs, ft, self.hp["distance"])
        return terms

    @staticmethod
    def _saver(store: dict[str, Tensor], branch: str):
        def hook(grad: Tensor) -> None:
            store[branch] = grad

        return hook

    def rotation_lr(self, step: StepInfo) -> float:
        """eta_R(t) = rotation_lr * (eta_S(t) / eta_S0) * gamma ** (t / steps_per_epoch): eta_R / eta_S -> 0."""
        scale = step.student_lr / step.base_lr if step.base_lr > 0 else 1.0
        epochs = step.step / step.steps_per_epoch if step.steps_per_epoch > 0 else float(step.epoch)
        return self.hp["rotation_lr"] * scale * self.hp["rotation_gamma"] ** epochs

    def after_backward(self, step: StepInfo) -> dict[str, float] | None:
        cap, self._cap = self._cap, {}
        Rs, self._Rs = self._Rs, None
        if len(self._branches) < 2 or len(cap) < 2:
            return None
        alpha = self.hp["alpha"]
        scale = 1.0 / alpha if alpha else 1.0  # captured grads carry alpha; g~ is unweighted (Eq. 13)
        grads = [cap[b].detach().float().flatten(1) * scale for b in self._branches]
        result, lr = None, 0.0
        if self.rot is not None:
            lr = self.rotation_lr(step)
            result = self.rot.leader_step(grads, lr, Rs, target=self.hp["rotation_target"],
                                          loss=self.hp["rotation_loss"], global_rows=step.batch_size)
            v = result.v
        else:
            v = grads
        if not step.log:
            return None
        return self._diagnostics(v, result, lr, step)

    @torch.no_grad()
    def _diagnostics(self, v: list[Tensor], result, lr: float, step: StepInfo) -> dict[str, float]:
        """Fig. 4: mean_n cos(dL_rgb/dz_n, dL_fre/dz_n) over the full latent and the rotated block."""
        cos = lambda a, b: float(F.cosine_similarity(a, b, dim=1, eps=1e-12).mean())  # noqa: E731
        block = self.rot.d if self.rot is not None else min(self.hp["rotation_dim"], v[0].shape[1])
        out = {"grad_cos_full": cos(v[0], v[1])}
        out["grad_cos"] = out["grad_cos_full"]  # the trainer's key for every other distiller
        if block > 0:
            out["grad_cos_rot"] = cos(v[0][:, :block], v[1][:, :block])
        if self.rot is None:
            return out
        target = result.target if result.target is not None else target_vector(v, self.hp["rotation_target"])
        angles = self.rot.angles()
        out.update({
            "rot_loss": float(result.loss) if result.loss is not None else float("nan"),
            "rot_cos_r": cos(v[0], target),
            "rot_cos_f": cos(v[1], target),
            "rot_angle_r": float(angles[0]),
            "rot_angle_f": float(angles[1]),
            "rot_lr": lr,
            "rot_lr_ratio": lr / step.student_lr if step.student_lr > 0 else float("nan"),
            "rot_orth_err": self.rot.orthogonality_error(),
            "rot_skipped": float(self.rot.skipped_steps),  # cumulative count of skipped leader steps
        })
        return out


@hookimpl
def kdbench_distillers() -> list[type[Distiller]]:
    return [TOKD]
