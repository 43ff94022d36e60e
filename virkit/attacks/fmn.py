"""FMN: Fast Minimum-Norm attack (Pintor, Roli, Brendel & Biggio, NeurIPS 2021, "Fast minimum-norm
adversarial attacks through adaptive norm constraints"), L-inf and L2.

FMN looks for the smallest perturbation that changes the prediction. It keeps a norm budget
``eps_k`` per example: while no adversarial point has been found, the budget is the current norm
plus a linear estimate of the distance to the boundary (``|margin| / ||grad||_1``, the dual norm);
after one is found, the budget shrinks by a factor ``1 - gamma_k`` whenever the iterate is
adversarial and grows by ``1 + gamma_k`` otherwise. The iterate takes a step of length
``alpha_k`` along the L2-normalised gradient of the negative logit margin and is projected onto
the L-inf ball of radius ``eps_k`` and the box. Both ``alpha_k`` and ``gamma_k`` decay with a
cosine schedule. At a fixed radius eps the attack succeeds when its smallest adversarial
perturbation has norm <= eps.

L2 (``norm='L2'``, Foolbox's ``L2FMNAttack``): norms in L2, the boundary estimate divides by the
L2 norm of the gradient (L2 is its own dual), the step is the same L2-normalised gradient step, and
the iterate is projected onto the L2 ball of radius ``eps_k`` (``d * min(1, eps_k / ||d||)``) and
the box. (Foolbox 3.3.4's L2 projection multiplies by ``min(1, ||x|| / ||x||) = 1``, i.e. it does
not project; virkit projects, as the paper's Algorithm 1 says.)
"""

from __future__ import annotations

import math

import torch

from virkit.attacks.base import Attack, on_correct, register
from virkit.attacks.norms import per_example_norm

__all__ = ["FMN", "fmn_linf", "fmn_run"]


def fmn_linf(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 100,
    alpha_init: float = 1.0,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf FMN (:func:`fmn_run` with ``norm='Linf'``)."""
    return fmn_run(
        model,
        x,
        y,
        steps=steps,
        alpha_init=alpha_init,
        alpha_final=alpha_final,
        gamma_init=gamma_init,
        gamma_final=gamma_final,
        bounds=bounds,
        norm="Linf",
    )


def fmn_run(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 100,
    alpha_init: float = 1.0,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    norm: str = "Linf",
) -> tuple[torch.Tensor, torch.Tensor]:
    """FMN in ``norm`` from ``delta = 0``. Returns ``(x + best_delta, best_norm)``; ``best_norm`` is
    ``inf`` where no adversarial point was found (and ``best_delta`` is 0 there)."""
    x = x.detach()
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
    lo, hi = bounds if bounds is not None else (-float("inf"), float("inf"))
    # largest distance inside the box: an upper bound for the budget
    worst = per_example_norm(torch.maximum(x - lo, hi - x), norm)
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
            marg = logits[u, y] - logits[u, other]  # > 0: still correct
            (g,) = torch.autograd.grad(-marg.sum(), z)  # ascent direction on -margin
        marg, g = marg.detach(), g.detach()
        adv = logits.detach().argmax(1) != y
        dn = per_example_norm(delta, norm)
        better = adv & (dn <= best_norm)
        best_norm = torch.where(better, dn, best_norm)
        best_delta = torch.where(better.view(view), delta, best_delta)
        found |= adv
        dual = g.flatten(1).abs().sum(1) if norm == "Linf" else g.flatten(1).norm(dim=1)
        to_boundary = marg.abs() / dual.clamp_min(1e-12)
        budget = torch.where(
            adv,
            torch.minimum(budget * (1 - gamma), per_example_norm(best_delta, norm)),
            torch.where(found, budget * (1 + gamma), dn + to_boundary),
        )
        budget = torch.minimum(budget, worst)
        g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        delta = delta + alpha * g / g_norm
        eb = budget.view(view)
        if norm == "Linf":
            delta = torch.maximum(torch.minimum(delta, eb), -eb)
        else:
            dl = per_example_norm(delta, norm).clamp_min(1e-12).view(view)
            delta = delta * torch.minimum(torch.ones_like(dl), eb / dl)
        delta = (x + delta).clamp(lo, hi) - x
    return x + best_delta, best_norm


@register("fmn")
class FMN(Attack):
    """FMN (Pintor et al., NeurIPS 2021), L-inf or L2, untargeted minimum-norm attack. Paper setting
    (Sec. 5.4): 100 steps (``fmn100``). Step size cosine-annealed from ``alpha_init`` 1.0 to 1/100 of
    it, budget factor gamma from 0.05 to 0.001 (the defaults of the authors' Foolbox
    implementation), no random start. An example is broken when FMN finds an adversarial
    perturbation of L-inf norm <= eps (the returned point is projected onto the eps-ball)."""

    name = "FMN"
    paper = "Pintor et al., NeurIPS 2021"
    norms = ("Linf", "L2")

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 100,
        alpha_init: float = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        norm: str = "Linf",
    ):
        super().__init__(eps, bounds, seed, norm)
        self.steps, self.alpha_init = int(steps), float(alpha_init)
        self.alpha_final = float(alpha_init) / 100 if alpha_final is None else float(alpha_final)
        self.gamma_init, self.gamma_final = float(gamma_init), float(gamma_final)
        self.name = f"FMN-{self.steps} ({'L-inf' if norm == 'Linf' else norm})"

    def perturb(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def run(xs, ys):
            return fmn_run(
                model,
                xs,
                ys,
                steps=self.steps,
                alpha_init=self.alpha_init,
                alpha_final=self.alpha_final,
                gamma_init=self.gamma_init,
                gamma_final=self.gamma_final,
                bounds=self.bounds,
                norm=self.norm,
            )[0]

        return on_correct(model, x, y, run)
