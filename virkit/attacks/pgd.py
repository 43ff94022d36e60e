"""Gradient attacks used for training and for the core evaluation: FGSM, PGD and CW-inf.

:func:`pgd` is the functional core (used by the trainer with a pluggable loss); the classes
registered below wrap it with the paper's evaluation settings (Sec. 5.4). FGSM and PGD also have
an L2 version (``norm='L2'``: FGM and PGD-L2, steps along the L2-normalised gradient, projection
onto the L2 ball then the box); CW-inf is L-inf only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from virkit.attacks.base import Attack, project_linf, register
from virkit.attacks.norms import project, random_in_ball, steepest
from virkit.ops import kl_per_example, log_probs, true_and_best_other

__all__ = ["attack_loss", "cw_margin_loss", "input_grad_only", "pgd", "FGSM", "PGD", "CWInf"]


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per-example CW margin loss (Carlini & Wagner 2017), L-inf version as in GAIRAT/MART code:
    ``-clamp(z_y - max_{j!=y} z_j + kappa, min=0)``. Maximizing it pushes the true logit below the
    best other logit; ``kappa=50`` keeps the gradient alive past the boundary."""
    z_y, z_other = true_and_best_other(logits, y)
    return -(z_y - z_other + kappa).clamp_min(0.0)


def attack_loss(
    kind: str, logits: torch.Tensor, y: torch.Tensor, target_logp: torch.Tensor | None = None, kappa: float = 50.0
) -> torch.Tensor:
    """Per-example loss the attacker maximizes (``reduction='none'``).

    * ``ce``: cross-entropy of the label;
    * ``cw``: :func:`cw_margin_loss` with ``kappa``;
    * ``kl``: TRADES' KL(p_nat || p_adv) (:func:`virkit.ops.kl_per_example`), ``target_logp`` the
      natural log-probabilities (:func:`virkit.ops.log_probs` of the natural logits).
    """
    if kind == "ce":
        return F.cross_entropy(logits.float(), y, reduction="none")
    if kind == "cw":
        return cw_margin_loss(logits.float(), y, kappa)
    if kind == "kl":
        if target_logp is None:
            raise ValueError("the 'kl' attack loss needs target_logp (natural log-probabilities)")
        return kl_per_example(None, logits, logp=target_logp)
    raise ValueError(f"unknown attack loss {kind!r}; valid: ce, cw, kl")


def random_init(
    x: torch.Tensor,
    eps: float,
    kind: str,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    norm: str = "Linf",
) -> torch.Tensor:
    """Starting point of PGD.

    * ``uniform``: x + U(-eps, eps), clipped to the box (Madry et al. 2018); for ``norm='L2'`` a
      random direction with a radius drawn from U(0, eps) (:func:`virkit.attacks.norms.random_in_ball`);
    * ``normal``: x + 0.001 * N(0, I) (TRADES, MART, and the paper's Algorithm 1 line 5). As in
      the TRADES code the start is not clipped: the first forward sees it as drawn, and every
      step's projection (or, with no step, :func:`pgd`'s final projection) brings it back;
    * ``none``: x itself.
    """
    if kind == "none":
        return x.clone()
    if kind == "uniform" and norm == "L2":
        x0 = x + random_in_ball(x, eps, "L2", generator)
        return x0.clamp(*bounds) if bounds is not None else x0
    if kind == "uniform":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * (2 * eps) - eps
        x0 = x + noise
        return x0.clamp(*bounds) if bounds is not None else x0
    if kind == "normal":
        return x + 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"unknown random start {kind!r}; valid: uniform, normal, none")


@contextlib.contextmanager
def input_grad_only(model: nn.Module) -> Iterator[None]:
    """Parameters of ``model`` stop requiring gradients for the duration of the block (restored
    afterwards, also on error). The attack's result is unchanged: it takes
    ``torch.autograd.grad`` with respect to the input only and never touches ``.grad``. What
    changes is the work: a ``torch.compile``'d model's compiled backward otherwise computes the
    gradient of every parameter that requires one (then discards it), and eager autograd records
    less. Nested use is harmless."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    loss: str = "ce",
    random_start: str = "uniform",
    target_logits: torch.Tensor | None = None,
    kappa: float = 50.0,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
    count_correct: bool = False,
    norm: str = "Linf",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """PGD (Madry et al. 2018) with projection after every step: L-inf (sign steps, the default) or
    L2 (``norm='L2'``: steps of ``step_size`` along the L2-normalised gradient, projection onto the
    L2 ball and then the box).

    The caller chooses the model's mode (training attacks and evaluation both use eval mode;
    see :func:`virkit.attacks.base.eval_mode`). Gradients are taken with respect to the input
    only. Returns ``x_adv``, or ``(x_adv, kappa_count)`` when ``count_correct`` is set, where
    ``kappa_count[i]`` is the number of iterations at which the iterate was still classified
    correctly, counted before each step as in GAIRAT's official code (a value in 0..steps).
    """
    x = x.detach()
    target_logp = None
    if loss == "kl":
        if target_logits is None:
            with torch.no_grad():
                target_logits = model(x)
        target_logp = log_probs(target_logits.detach())
    x_adv = random_init(x, eps, random_start, generator, bounds, norm)
    count = torch.zeros(x.shape[0], device=x.device, dtype=torch.int32) if count_correct else None
    with input_grad_only(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_adv)
                lvec = attack_loss(loss, logits, y, target_logp, kappa)
                (grad,) = torch.autograd.grad(lvec.sum(), x_adv)
            if count is not None:
                count += (logits.detach().argmax(1) == y).int()
            if norm == "Linf":
                x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, eps, bounds)
            else:
                x_adv = project(x_adv.detach() + step_size * steepest(grad, norm), x, eps, norm, bounds)
    # the result always lies in the ball and the box: a no-op after a step (the projection is
    # idempotent), and with ``steps=0`` it clips the unclipped normal start
    x_adv = project(x_adv.detach(), x, eps, norm, bounds)
    return (x_adv, count) if count_correct else x_adv


@register("fgsm")
class FGSM(Attack):
    """FGSM (Goodfellow et al. 2015, "Explaining and harnessing adversarial examples"):
    one sign step of size eps on the cross-entropy, L-inf, no random start. Default eps 8/255.
    With ``norm='L2'`` it is FGM: one step of length eps along the L2-normalised gradient."""

    name = "FGSM"
    paper = "Goodfellow et al., ICLR 2015"
    norms = ("Linf", "L2")

    def __init__(
        self, eps: float = 8 / 255, bounds: tuple[float, float] | None = (0.0, 1.0), seed: int = 0, norm: str = "Linf"
    ):
        super().__init__(eps, bounds, seed, norm)
        if norm == "L2":
            self.name = "FGM (L2)"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # count_correct is off here, so pgd returns the examples alone
        return cast(
            torch.Tensor,
            pgd(
                model,
                x,
                y,
                eps=self.eps,
                step_size=self.eps,
                steps=1,
                loss="ce",
                random_start="none",
                bounds=self.bounds,
                norm=self.norm,
            ),
        )


@register("pgd")
class PGD(Attack):
    """PGD (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks"):
    L-inf, cross-entropy, sign steps. Paper evaluation (Sec. 5.4): eps 8/255, step 1/255, 100 steps
    (``pgd100``), uniform random start, one restart. ``pgd20`` is the Tiny-ImageNet setting.
    ``norm='L2'``: PGD-L2 (normalised-gradient steps of ``step_size``, L2 projection)."""

    name = "PGD"
    paper = "Madry et al., ICLR 2018"
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")  # the base's type: CW-inf narrows it to ("Linf",)

    def __init__(
        self,
        eps: float = 8 / 255,
        step_size: float = 1 / 255,
        steps: int = 100,
        random_start: str = "uniform",
        loss: str = "ce",
        kappa: float = 50.0,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        norm: str = "Linf",
    ):
        super().__init__(eps, bounds, seed, norm)
        self.step_size, self.steps, self.random_start = float(step_size), int(steps), random_start
        self.loss, self.kappa = loss, float(kappa)
        self.name = f"PGD-{self.steps}" if loss == "ce" else f"PGD-{self.steps} ({loss})"
        if norm == "L2":
            self.name += " (L2)"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # count_correct is off here, so pgd returns the examples alone
        return cast(
            torch.Tensor,
            pgd(
                model,
                x,
                y,
                eps=self.eps,
                step_size=self.step_size,
                steps=self.steps,
                loss=self.loss,
                random_start=self.random_start,
                kappa=self.kappa,
                bounds=self.bounds,
                generator=self.generator(x.device),
                norm=self.norm,
            ),
        )


@register("cw")
class CWInf(PGD):
    """CW-inf as evaluated in the paper (Sec. 5.4) and in MART/GAIRAT code: the CW margin loss
    (Carlini & Wagner 2017) with kappa=50 maximized by L-inf PGD-20, eps 8/255, step 1/255,
    uniform random start."""

    name = "CW-inf"
    paper = "Carlini & Wagner, IEEE S&P 2017 (loss); PGD-20 optimizer"
    norms = ("Linf",)

    def __init__(
        self,
        eps: float = 8 / 255,
        step_size: float = 1 / 255,
        steps: int = 20,
        kappa: float = 50.0,
        random_start: str = "uniform",
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
    ):
        super().__init__(eps, step_size, steps, random_start, "cw", kappa, bounds, seed)
        self.name = f"CW-inf (PGD-{self.steps}, kappa={kappa:g})"
