"""MD (Margin Decomposition) attack and the MDE ensemble (Ma, Jiang, Huang, Weng, Bailey & Jiang,
Machine Learning 2023, "Imbalanced gradients: a subtle cause of overestimated adversarial
robustness"), L-inf.

Imbalanced gradients: when the gradient of one term of the margin loss ``z_max - z_y`` dominates
the other, PGD on the margin follows the dominant term and can stall. MD decomposes the margin and
attacks in two stages: for the first ``change_point`` steps it maximizes a single term (``-z_y`` in
one run, ``z_max`` -- or ``z_t`` for a target ``t`` -- in a second run), then the full margin for the
remaining steps. The step size restarts at each stage and follows a cosine decay from 2*eps
(the authors' schedule); as in the authors' code the first step ascends ``z_y`` (which throws the
iterate to a far corner of the eps-ball before stage 1 starts). Every iterate is checked and
the first misclassified one is kept.

MDE runs APGD-CE, MD, targeted MD and FAB-T, every attack on every (correctly classified) point,
and keeps the worst case per example.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from virkit.attacks.apgd import APGD
from virkit.attacks.base import Attack, attack_rounds, clean_targets, correct_mask, project_linf, register
from virkit.attacks.fab import FABTargeted
from virkit.ops import true_and_best_other

__all__ = ["MD", "MDE", "md_run", "md_step_size"]


def md_step_size(i: int, steps: int, change_point: int, initial: float) -> float:
    """Step size of MD at step ``i`` (0-based): a cosine decay from ``initial`` over
    ``steps - change_point`` steps, restarted after the change point (authors' schedule)."""
    span = max(steps - change_point, 1)
    j = i - change_point - 1 if i > change_point else i - 1
    return initial * 0.5 * (1 + math.cos(j / span * math.pi))


def md_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 50,
    change_point: int = 20,
    initial_step: float | None = None,
    first_term: str = "true",
    target: torch.Tensor | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MD run. ``first_term``: ``'true'`` maximizes ``-z_y`` in stage 1, ``'other'`` maximizes
    ``z_max`` (or ``z_t`` when ``target`` is given). Stage 2 maximizes ``z_max - z_y`` (``z_t - z_y``).
    Returns ``(x_adv, fooled)``: the first misclassified iterate where one was found, else the last."""
    x = x.detach()
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    initial_step = 2 * eps if initial_step is None else initial_step
    u = torch.arange(b, device=x.device)
    noise = (2 * torch.rand(x.shape, generator=generator, device=x.device) - 1) * eps
    x_adv = x + noise
    if bounds is not None:
        x_adv = x_adv.clamp(*bounds)
    out = x_adv.clone()
    fooled = torch.zeros(b, dtype=torch.bool, device=x.device)
    for i in range(steps):
        z = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(z).float()
            if target is None:
                z_y, z_o = true_and_best_other(logits, y)
            else:
                z_y, z_o = logits[u, y], logits[u, target]
            if i < 1:
                loss = z_y
            elif i < change_point:
                loss = z_o if first_term == "other" else -z_y
            else:
                loss = z_o - z_y
            (g,) = torch.autograd.grad(loss.sum(), z)
        mis = logits.detach().argmax(1) != y
        new = mis & ~fooled
        out = torch.where(new.view(view), x_adv, out)
        fooled |= mis
        alpha = md_step_size(i, steps, change_point, initial_step)
        x_adv = project_linf(x_adv + alpha * g.sign(), x, eps, bounds)
    with torch.no_grad():
        mis = model(x_adv).argmax(1) != y
    out = torch.where((mis & ~fooled).view(view), x_adv, out)
    fooled |= mis
    return torch.where(fooled.view(view), out, x_adv), fooled


@register("md")
class MD(Attack):
    """MD attack (Ma et al., Machine Learning 2023), L-inf. Authors' MDE settings: 50 steps, change
    point 20, initial step 2*eps with cosine decay, 1 random start, each start two runs (stage 1
    on ``-z_y``, then on ``z_max``). ``targeted=True`` is MD-MT: the runs are repeated for each of
    the ``n_target_classes`` highest non-true classes with ``z_t`` in place of ``z_max``. Only
    correctly classified, not yet fooled points are attacked by each run."""

    name = "MD"
    paper = "Ma et al., Machine Learning 2023"

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 50,
        change_point: int = 20,
        n_restarts: int = 1,
        targeted: bool = False,
        n_target_classes: int = 9,
        initial_step: float | None = None,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
    ):
        super().__init__(eps, bounds, seed)
        self.steps, self.change_point, self.n_restarts = int(steps), int(change_point), int(n_restarts)
        self.targeted, self.n_target_classes = bool(targeted), int(n_target_classes)
        self.initial_step = 2 * self.eps if initial_step is None else float(initial_step)
        self.name = "MD-MT" if self.targeted else "MD"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.generator(x.device)
        robust, targets = clean_targets(model, x, y, self.n_target_classes if self.targeted else None)

        def run(idx, round_):
            k, _restart, term = round_
            t = targets[idx, k] if targets is not None else None
            return md_run(
                model,
                x[idx],
                y[idx],
                eps=self.eps,
                steps=self.steps,
                change_point=self.change_point,
                initial_step=self.initial_step,
                first_term=term,
                target=t,
                bounds=self.bounds,
                generator=gen,
            )

        n_t = targets.shape[1] if targets is not None else 1
        rounds = [(k, r, term) for k in range(n_t) for r in range(self.n_restarts) for term in ("true", "other")]
        return attack_rounds(x, robust, rounds, run)


@register("mde")
class MDE(Attack):
    """MDE, the Margin Decomposition Ensemble (Ma et al., Machine Learning 2023), L-inf: APGD-CE
    (100 steps), MD (50 steps), targeted MD (9 targets) and FAB-T (100 steps, 9 targets), every
    attack on every correctly classified point (unlike AutoAttack, which only attacks points that
    survived the previous attacks), worst case per example. eps 8/255."""

    name = "MDE"
    paper = "Ma et al., Machine Learning 2023"

    def __init__(
        self,
        eps: float = 8 / 255,
        apgd_steps: int = 100,
        md_steps: int = 50,
        change_point: int = 20,
        n_target_classes: int = 9,
        fab_steps: int = 100,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
    ):
        super().__init__(eps, bounds, seed)
        self.apgd_steps, self.md_steps, self.change_point = int(apgd_steps), int(md_steps), int(change_point)
        self.n_target_classes, self.fab_steps = int(n_target_classes), int(fab_steps)

    def components(self) -> list[Attack]:
        kw: dict[str, Any] = dict(eps=self.eps, bounds=self.bounds, seed=self.seed)
        return [
            APGD(steps=self.apgd_steps, loss="ce", **kw),
            MD(steps=self.md_steps, change_point=self.change_point, **kw),
            MD(
                steps=self.md_steps,
                change_point=self.change_point,
                targeted=True,
                n_target_classes=self.n_target_classes,
                **kw,
            ),
            FABTargeted(steps=self.fab_steps, n_target_classes=self.n_target_classes, **kw),
        ]

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        correct = correct_mask(model, x, y)
        idx = correct.nonzero().squeeze(1)
        if idx.numel() == 0:
            return x_adv
        xs, ys = x[idx], y[idx]
        robust = torch.ones(idx.numel(), dtype=torch.bool, device=x.device)
        best = xs.clone()
        for atk in self.components():
            xa = project_linf(atk.perturb(model, xs, ys), xs, self.eps, self.bounds)
            with torch.no_grad():
                fooled = model(xa).argmax(1) != ys
            new = fooled & robust
            best = torch.where(new.view(-1, *[1] * (x.dim() - 1)), xa, best)
            robust &= ~fooled
        x_adv[idx] = best
        return x_adv
