"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack"), L-inf, as used in AutoAttack.

FAB is a minimum-norm attack. At each step it linearises the decision boundary between the true
class ``y`` and the target ``t`` at the current iterate, projects both the iterate and the original
point onto that hyperplane (within the [0,1] box, minimal L-inf distance), moves to a convex
combination of the two projections with extrapolation ``eta``, and, once adversarial, steps back
towards the original point by the factor ``beta``. The attack succeeds at radius eps when it
finds an adversarial point no farther than eps from the input.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Attack, attack_rounds, clean_targets, register

__all__ = ["FABTargeted", "project_hyperplane_box_linf", "fab_targeted_run"]


def project_hyperplane_box_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                                lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Per row: the perturbation ``d`` of smallest L-inf norm with ``w . (t + d) = b`` and
    ``lo <= t + d <= hi``. When the box makes the hyperplane unreachable, ``d`` goes as far towards
    it as the box allows (the corner in the direction of ``sign(w)``).

    With ``c = b - w.t`` (flipping ``w`` so that ``c >= 0``), the optimum is
    ``d_i = sign(w_i) * min(lam, r_i)`` where ``r_i`` is the room to the box in that direction and
    ``lam`` solves ``g(lam) = sum_i |w_i| min(lam, r_i) = c``; ``g`` is piecewise linear and
    increasing with kinks at the sorted ``r_i``, so ``lam`` is found with one sort and a search.
    Shapes: ``t``, ``w``: B x D; ``b``: B.
    """
    c = b - (w * t).sum(dim=1)
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * flip.unsqueeze(1)
    c = c * flip
    sgn = torch.sign(w)
    room = torch.where(w > 0, hi - t, t - lo).clamp_min(0.0)
    room = torch.where(w == 0, torch.zeros_like(room), room)
    a = w.abs()
    r_sorted, order = room.sort(dim=1)
    a_sorted = a.gather(1, order)
    cum_a = a_sorted.cumsum(dim=1)                       # sum_{j<=k} a_j
    cum_ar = (a_sorted * r_sorted).cumsum(dim=1)         # sum_{j<=k} a_j r_j
    total_a = cum_a[:, -1:]
    g_at = cum_ar + r_sorted * (total_a - cum_a)         # g(r_k), non-decreasing in k
    k = torch.searchsorted(g_at.contiguous(), c.unsqueeze(1).contiguous()).clamp(max=room.shape[1] - 1)
    prev_ar = torch.where(k > 0, cum_ar.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(c.unsqueeze(1)))
    prev_a = torch.where(k > 0, cum_a.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(c.unsqueeze(1)))
    lam = (c.unsqueeze(1) - prev_ar) / (total_a - prev_a).clamp_min(1e-12)
    reachable = g_at[:, -1:] >= c.unsqueeze(1)
    lam = torch.where(reachable, lam, r_sorted[:, -1:]).clamp_min(0.0)
    return sgn * torch.minimum(lam, room)


def fab_targeted_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, *, eps: float,
                     steps: int, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                     random_start: bool = False, generator: torch.Generator | None = None,
                     bounds=(0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB-T run towards ``target``. Returns ``(x_best, norm)``: the adversarial point of smallest
    L-inf distance found and that distance (``inf`` where none was found; ``x_best`` is ``x`` there).
    """
    lo, hi = bounds if bounds is not None else (-float("inf"), float("inf"))
    x = x.detach()
    bsz = x.shape[0]
    view = (bsz,) + (1,) * (x.dim() - 1)
    u = torch.arange(bsz, device=x.device)
    x0 = x.flatten(1)
    best = x.clone()
    best_norm = torch.full((bsz,), float("inf"), device=x.device)
    x1 = x.clone()
    if random_start:
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device) - 1
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(view)
        x1 = (x + 0.5 * eps * t).clamp(lo, hi)
    for _ in range(steps):
        z = x1.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(z).float()
            f = logits[u, target] - logits[u, y]              # > 0 means classified as the target
            g, = torch.autograd.grad(f.sum(), z)
        f, g = f.detach(), g.detach().flatten(1)
        xf = x1.flatten(1)
        # hyperplane f + g.(p - x1) = 0  <=>  g.p = g.x1 - f
        bb = (g * xf).sum(1) - f
        d = project_hyperplane_box_linf(torch.cat((xf, x0)), torch.cat((g, g)), torch.cat((bb, bb)), lo, hi)
        d1, d2 = d[:bsz], d[bsz:]
        a1 = d1.abs().amax(1).clamp_min(1e-8)
        a2 = d2.abs().amax(1).clamp_min(1e-8)
        alpha = (a1 / (a1 + a2)).clamp(0.0, alpha_max).unsqueeze(1)
        xf = ((xf + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(lo, hi)
        x1 = xf.view_as(x)
        with torch.no_grad():
            adv = model(x1).argmax(1) != y
        dist = (x1 - x).flatten(1).abs().amax(1)
        improve = adv & (dist < best_norm)
        best = torch.where(improve.view(view), x1, best)
        best_norm = torch.where(improve, dist, best_norm)
        x1 = torch.where(adv.view(view), x + (x1 - x) * beta, x1)
    return best, best_norm


@register("fab-t")
class FABTargeted(Attack):
    """FAB-T (Croce & Hein, ICML 2020), L-inf, the targeted version used in AutoAttack standard:
    ``n_target_classes`` targets (the highest non-true logits, 9 for CIFAR-10), 100 steps each,
    1 restart (the first run starts at the input; later restarts from random points at half the
    radius), alpha_max 0.1, eta 1.05, beta 0.9, eps 8/255. A point counts as broken when FAB finds
    an adversarial example within eps; only still-robust points are attacked for the next target."""

    name = "FAB-T"
    paper = "Croce & Hein, ICML 2020 (FAB); AutoAttack, ICML 2020"

    def __init__(self, eps: float = 8 / 255, steps: int = 100, n_target_classes: int = 9, n_restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, bounds=(0.0, 1.0), seed: int = 0):
        super().__init__(eps, bounds, seed)
        self.steps, self.n_target_classes, self.n_restarts = int(steps), int(n_target_classes), int(n_restarts)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)

    def perturb(self, model, x, y):
        gen = self.generator(x.device)
        robust, targets = clean_targets(model, x, y, self.n_target_classes)

        def run(idx, round_):
            k, r = round_
            xb, norm = fab_targeted_run(model, x[idx], y[idx], targets[idx, k], eps=self.eps, steps=self.steps,
                                        alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
                                        random_start=r > 0, generator=gen, bounds=self.bounds)
            return xb, norm <= self.eps

        rounds = [(k, r) for k in range(targets.shape[1]) for r in range(self.n_restarts)]
        return attack_rounds(x, robust, rounds, run)

