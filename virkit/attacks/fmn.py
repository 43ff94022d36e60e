"""FMN: Fast Minimum-Norm attack (Pintor, Roli, Brendel & Biggio, NeurIPS 2021, "Fast minimum-norm
adversarial attacks through adaptive norm constraints"), L-inf version.

FMN looks for the smallest perturbation that changes the prediction. It keeps a norm budget
``eps_k`` per example: while no adversarial point has been found, the budget is the current norm
plus a linear estimate of the distance to the boundary (``|margin| / ||grad||_1``, the dual norm);
after one is found, the budget shrinks by a factor ``1 - gamma_k`` whenever the iterate is
adversarial and grows by ``1 + gamma_k`` otherwise. The iterate takes a step of length
``alpha_k`` along the L2-normalised gradient of the negative logit margin and is projected onto
the L-inf ball of radius ``eps_k`` and the box. Both ``alpha_k`` and ``gamma_k`` decay with a
cosine schedule. At a fixed radius eps the attack succeeds when its smallest adversarial
perturbation has norm <= eps.
"""
from __future__ import annotations

import math

import torch

from .base import Attack, on_correct, register

__all__ = ["FMN", "fmn_linf"]


def fmn_linf(model, x: torch.Tensor, y: torch.Tensor, *, steps: int = 100, alpha_init: float = 1.0,
             alpha_final: float | None = None, gamma_init: float = 0.05, gamma_final: float = 0.001,
             bounds=(0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf FMN from ``delta = 0``. Returns ``(x + best_delta, best_norm)``; ``best_norm`` is ``inf``
    where no adversarial point was found (and ``best_delta`` is 0 there)."""
    x = x.detach()
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
    lo, hi = bounds if bounds is not None else (-float("inf"), float("inf"))
    # largest L-inf distance inside the box: an upper bound for the budget
    worst = torch.maximum(x - lo, hi - x).flatten(1).amax(1)
    delta = torch.zeros_like(x)
    best_delta = torch.zeros_like(x)
    best_norm = torch.full((b,), float("inf"), device=x.device)
    budget = torch.full((b,), float("inf"), device=x.device)
    found = torch.zeros(b, dtype=torch.bool, device=x.device)
    u = torch.arange(b, device=x.device)
    for k in range(steps):
        cos = (1 + math.cos(math.pi * k / steps)) / 2
        alpha = alpha_final + (alpha_init - alpha_final) * cos
        gamma = gamma_final + (gamma_init - gamma_final) * cos
        z = (x + delta).requires_grad_(True)
        with torch.enable_grad():
            logits = model(z).float()
            other = logits.scatter(1, y.view(-1, 1), float("-inf")).argmax(1)
            marg = logits[u, y] - logits[u, other]          # > 0: still correct
            g, = torch.autograd.grad(-marg.sum(), z)          # ascent direction on -margin
        marg, g = marg.detach(), g.detach()
        adv = logits.detach().argmax(1) != y
        norm = delta.flatten(1).abs().amax(1)
        better = adv & (norm <= best_norm)
        best_norm = torch.where(better, norm, best_norm)
        best_delta = torch.where(better.view(view), delta, best_delta)
        found |= adv
        to_boundary = marg.abs() / g.flatten(1).abs().sum(1).clamp_min(1e-12)
        budget = torch.where(adv, torch.minimum(budget * (1 - gamma), best_delta.flatten(1).abs().amax(1)),
                             torch.where(found, budget * (1 + gamma), norm + to_boundary))
        budget = torch.minimum(budget, worst)
        g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        delta = delta + alpha * g / g_norm
        eb = budget.view(view)
        delta = torch.maximum(torch.minimum(delta, eb), -eb)
        delta = (x + delta).clamp(lo, hi) - x
    return x + best_delta, best_norm


@register("fmn")
class FMN(Attack):
    """FMN (Pintor et al., NeurIPS 2021), L-inf, untargeted minimum-norm attack. Paper setting
    (Sec. 5.4): 100 steps (``fmn100``). Step size cosine-annealed from ``alpha_init`` 1.0 to 1/100 of
    it, budget factor gamma from 0.05 to 0.001 (the defaults of the authors' Foolbox
    implementation), no random start. An example is broken when FMN finds an adversarial
    perturbation of L-inf norm <= eps (the returned point is projected onto the eps-ball)."""

    name = "FMN"
    paper = "Pintor et al., NeurIPS 2021"

    def __init__(self, eps: float = 8 / 255, steps: int = 100, alpha_init: float = 1.0,
                 alpha_final: float | None = None, gamma_init: float = 0.05, gamma_final: float = 0.001,
                 bounds=(0.0, 1.0), seed: int = 0):
        super().__init__(eps, bounds, seed)
        self.steps, self.alpha_init = int(steps), float(alpha_init)
        self.alpha_final = float(alpha_init) / 100 if alpha_final is None else float(alpha_final)
        self.gamma_init, self.gamma_final = float(gamma_init), float(gamma_final)
        self.name = f"FMN-{self.steps} (L-inf)"

    def perturb(self, model, x, y):
        def run(xs, ys):
            return fmn_linf(model, xs, ys, steps=self.steps, alpha_init=self.alpha_init,
                            alpha_final=self.alpha_final, gamma_init=self.gamma_init,
                            gamma_final=self.gamma_final, bounds=self.bounds)[0]

        return on_correct(model, x, y, run)
