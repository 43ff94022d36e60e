"""APGD-CE / APGD-DLR and APGD-T (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks"), L-inf and L2.

Also the losses other attacks of :mod:`virkit.attacks` use (DLR, targeted DLR, logit margin). The
helpers "attack only the points that are still classified correctly" and the target classes of
targeted attacks live in :mod:`virkit.attacks.base` (re-exported here).

APGD in brief (Algorithm 1 of the paper): sign-gradient steps with momentum 0.75 from a random
start at the border of the eps-ball, a per-example step size that starts at 2*eps and is halved
at checkpoints when the loss oscillates (fewer than ``rho``-fraction of the last steps increased
it) or when it has not improved since the previous checkpoint (in which case the iterate restarts
from the best point found). Checkpoints come after 22% of the steps, then at shrinking intervals
(by 3% of the steps, at least 6%). Everything runs on the whole batch on its device: the
checkpoint schedule is fixed in advance, so the loop never synchronises with the host.

L2 (``norm='L2'``), as the official ``autopgd_base.py``: the start is ``x + eps * t / ||t||_2`` with
``t`` standard normal, each step moves ``step * g / ||g||_2`` and every point is projected onto the
L2 ball (``x + d / ||d|| * min(eps, ||d||)``) and then the box, before and after the momentum
combination. EOT (``eot_iter > 1``, AutoAttack's ``rand`` version for randomized models): the
gradient is the mean over ``eot_iter`` forward/backward passes at the same point; the loss and the
prediction are those of the last pass.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import true_and_best_other
from .base import (Attack, attack_rounds, clean_targets, correct_mask, on_correct,  # noqa: F401 (re-exported)
                   project_linf, register, target_classes)
from .norms import project, random_on_sphere, steepest

__all__ = ["APGD", "APGDTargeted", "apgd_run", "dlr_loss", "dlr_targeted_loss", "margin",
           "correct_mask", "on_correct", "target_classes"]


# ---------------------------------------------------------------------------------------------
# losses (per example, larger = more adversarial unless stated)
def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j``: positive iff the example is classified correctly (ties aside)."""
    z_y, z_other = true_and_best_other(logits.float(), y)
    return z_y - z_other


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020, Eq. 5), to maximize:
    ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)`` with ``z_pi`` the sorted logits (descending).
    Invariant to shifting and rescaling the logits. Needs >= 3 classes; with 2 the denominator
    falls back to ``z_pi1 - z_pi2``."""
    logits = logits.float()
    s = logits.sort(dim=1, descending=True).values
    z_y, z_other = true_and_best_other(logits, y)
    low = s[:, 2] if s.shape[1] >= 3 else s[:, -1]
    return -(z_y - z_other) / (s[:, 0] - low + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (Croce & Hein 2020, Eq. 6), to maximize:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Needs >= 4 classes; with fewer the
    denominator falls back to ``z_pi1 - z_pimin``."""
    logits = logits.float()
    s = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    z_t = logits.gather(1, target.view(-1, 1)).squeeze(1)
    if s.shape[1] >= 4:
        den = s[:, 0] - 0.5 * (s[:, 2] + s[:, 3])
    else:
        den = s[:, 0] - s[:, -1]
    return -(z_y - z_t) / (den + 1e-12)


def _uniform(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _schedule(steps: int) -> dict[int, int]:
    """APGD checkpoints: {iteration index: window length k}. First after 22% of the steps, then the
    window shrinks by 3% of the steps per checkpoint, down to 6% (Croce & Hein 2020, Sec. 3.2)."""
    k, k_min, decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, pos = {}, 0
    while pos + k <= steps:
        pos += k
        out[pos - 1] = k
        k = max(k - decr, k_min)
    return out


def apgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, eps: float, steps: int,
             rho: float = 0.75, momentum: float = 0.75, bounds=(0.0, 1.0),
             generator: torch.Generator | None = None, norm: str = "Linf",
             eot_iter: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run on the whole batch; ``loss_fn(logits, y)`` gives the per-example loss to maximize.

    Returns ``(x_adv, fooled)``: ``fooled[i]`` is True when some iterate was misclassified, and then
    ``x_adv[i]`` is the last such iterate; otherwise ``x_adv[i]`` is the iterate of highest loss.
    """
    x = x.detach()
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    if norm == "Linf":
        t = 2 * _uniform(x.shape, generator, x.device) - 1
        t = t / t.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(view)
    else:
        t = random_on_sphere(x, norm, generator)
    x_adv = x + eps * t
    if bounds is not None:
        x_adv = x_adv.clamp(*bounds)

    def proj(z):
        return project_linf(z, x, eps, bounds) if norm == "Linf" else project(z, x, eps, norm, bounds)

    def evaluate(z):
        z = z.detach().requires_grad_(True)
        g = None
        for _ in range(eot_iter):
            with torch.enable_grad():
                logits = model(z)
                lvec = loss_fn(logits, y)
                gi, = torch.autograd.grad(lvec.sum(), z)
            g = gi if g is None else g + gi
        if eot_iter > 1:
            g = g / eot_iter
        return lvec.detach(), logits.detach(), g.detach()

    loss, logits, grad = evaluate(x_adv)
    fooled = logits.argmax(1) != y
    x_fool = x_adv.clone()
    x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
    step = torch.full(view, 2.0 * eps, device=x.device, dtype=x.dtype)
    hist = torch.zeros(steps + 1, b, device=x.device, dtype=loss.dtype)
    hist[0] = loss
    checkpoints = _schedule(steps)
    loss_best_last = loss_best.clone()
    reduced_last = torch.ones(b, dtype=torch.bool, device=x.device)
    x_prev = x_adv
    for i in range(steps):
        a = momentum if i > 0 else 1.0
        direction = grad.sign() if norm == "Linf" else steepest(grad, norm)
        z = proj(x_adv + step * direction)
        z = proj(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev))
        x_prev, x_adv = x_adv, z
        loss, logits, grad = evaluate(x_adv)
        mis = logits.argmax(1) != y
        x_fool = torch.where(mis.view(view), x_adv, x_fool)
        fooled |= mis
        hist[i + 1] = loss
        better = loss > loss_best
        x_best = torch.where(better.view(view), x_adv, x_best)
        grad_best = torch.where(better.view(view), grad, grad_best)
        loss_best = torch.where(better, loss, loss_best)
        k = checkpoints.get(i)
        if k is not None:
            increases = (hist[i + 2 - k:i + 2] > hist[i + 1 - k:i + 1]).sum(dim=0)
            oscillating = increases <= k * rho
            stalled = ~reduced_last & (loss_best_last >= loss_best)
            reduce = oscillating | stalled
            reduced_last, loss_best_last = reduce, loss_best.clone()
            step = torch.where(reduce.view(view), step / 2, step)
            x_adv = torch.where(reduce.view(view), x_best, x_adv)
            grad = torch.where(reduce.view(view), grad_best, grad)
    return torch.where(fooled.view(view), x_fool, x_best), fooled


@register("apgd")
class APGD(Attack):
    """APGD (Croce & Hein, ICML 2020), L-inf or L2, untargeted, on the cross-entropy (``loss='ce'``,
    AutoAttack's APGD-CE) or the DLR loss (``loss='dlr'``). AutoAttack-standard settings: eps 8/255
    (L2: 0.5), 100 steps, 1 restart, rho 0.75, momentum 0.75, initial step 2*eps; ``eot_iter`` 1
    (20 in AutoAttack's ``rand`` version). Only correctly classified points are attacked; each
    restart only those not yet fooled."""

    name = "APGD-CE"
    paper = "Croce & Hein, ICML 2020"
    norms = ("Linf", "L2")
    quiet_defaults = {"eot_iter": 1}

    def __init__(self, eps: float = 8 / 255, steps: int = 100, n_restarts: int = 1, loss: str = "ce",
                 rho: float = 0.75, bounds=(0.0, 1.0), seed: int = 0, norm: str = "Linf", eot_iter: int = 1):
        super().__init__(eps, bounds, seed, norm)
        if loss not in ("ce", "dlr"):
            raise ValueError(f"unknown APGD loss {loss!r}; valid: ce, dlr")
        self.steps, self.n_restarts, self.loss, self.rho = int(steps), int(n_restarts), loss, float(rho)
        self.eot_iter = max(int(eot_iter), 1)
        self.name = f"APGD-{loss.upper()}"

    def _loss(self, logits, y):
        if self.loss == "ce":
            return F.cross_entropy(logits.float(), y, reduction="none")
        return dlr_loss(logits, y)

    def perturb(self, model, x, y):
        gen = self.generator(x.device)

        def run(idx, _restart):
            return apgd_run(model, x[idx], y[idx], self._loss, eps=self.eps, steps=self.steps, rho=self.rho,
                            bounds=self.bounds, generator=gen, norm=self.norm, eot_iter=self.eot_iter)

        return attack_rounds(x, correct_mask(model, x, y), range(self.n_restarts), run)


@register("apgd-t")
class APGDTargeted(Attack):
    """APGD-T (Croce & Hein, ICML 2020), L-inf or L2: APGD on the targeted DLR loss, once per target
    class, the targets being the ``n_target_classes`` highest non-true logits of the clean input
    (9 for CIFAR-10, as in AutoAttack standard). eps 8/255 (L2: 0.5), 100 steps per target,
    1 restart. Each target run only attacks points not yet fooled."""

    name = "APGD-T"
    paper = "Croce & Hein, ICML 2020"
    norms = ("Linf", "L2")
    quiet_defaults = {"eot_iter": 1}

    def __init__(self, eps: float = 8 / 255, steps: int = 100, n_target_classes: int = 9, n_restarts: int = 1,
                 rho: float = 0.75, bounds=(0.0, 1.0), seed: int = 0, norm: str = "Linf", eot_iter: int = 1):
        super().__init__(eps, bounds, seed, norm)
        self.steps, self.n_target_classes = int(steps), int(n_target_classes)
        self.n_restarts, self.rho = int(n_restarts), float(rho)
        self.eot_iter = max(int(eot_iter), 1)

    def perturb(self, model, x, y):
        gen = self.generator(x.device)
        robust, targets = clean_targets(model, x, y, self.n_target_classes)

        def run(idx, round_):
            t = targets[idx, round_[0]]
            return apgd_run(model, x[idx], y[idx], lambda z, yy: dlr_targeted_loss(z, yy, t), eps=self.eps,
                            steps=self.steps, rho=self.rho, bounds=self.bounds, generator=gen, norm=self.norm,
                            eot_iter=self.eot_iter)

        rounds = [(k, r) for k in range(targets.shape[1]) for r in range(self.n_restarts)]
        return attack_rounds(x, robust, rounds, run)
