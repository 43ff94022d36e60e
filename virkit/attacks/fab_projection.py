"""FAB's geometry (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast
adaptive boundary attack"): the decision boundary between the true class and another class,
linearised at an iterate (:func:`linearised_boundary`), and the projections onto such a hyperplane
within the box ``[lo, hi]`` at minimal distance in L-inf or L2 (:func:`project_hyperplane_box_linf`,
:func:`project_hyperplane_box_l2`), exact, with one sort and a search per row. The FAB iteration
that uses them is :mod:`virkit.attacks.fab`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "linearised_boundary",
    "hyperplane_projection",
    "project_hyperplane_box_linf",
    "project_hyperplane_box_l2",
]


def project_hyperplane_box_linf(
    t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
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
    cum_a = a_sorted.cumsum(dim=1)  # sum_{j<=k} a_j
    cum_ar = (a_sorted * r_sorted).cumsum(dim=1)  # sum_{j<=k} a_j r_j
    total_a = cum_a[:, -1:]
    g_at = cum_ar + r_sorted * (total_a - cum_a)  # g(r_k), non-decreasing in k
    k = torch.searchsorted(g_at.contiguous(), c.unsqueeze(1).contiguous()).clamp(max=room.shape[1] - 1)
    prev_ar = torch.where(k > 0, cum_ar.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(c.unsqueeze(1)))
    prev_a = torch.where(k > 0, cum_a.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(c.unsqueeze(1)))
    lam = (c.unsqueeze(1) - prev_ar) / (total_a - prev_a).clamp_min(1e-12)
    reachable = g_at[:, -1:] >= c.unsqueeze(1)
    lam = torch.where(reachable, lam, r_sorted[:, -1:]).clamp_min(0.0)
    return sgn * torch.minimum(lam, room)


def project_hyperplane_box_l2(
    t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    """Per row: the perturbation ``d`` of smallest L2 norm with ``w . (t + d) = b`` and
    ``lo <= t + d <= hi`` (the L2 projection of FAB); when the box makes the hyperplane
    unreachable, the corner in the direction of ``sign(w)``.

    With ``c = b - w.t >= 0`` (flipping ``w`` otherwise), the optimum is
    ``d_i = sign(w_i) * min(lam * |w_i|, r_i)`` with ``r_i`` the room to the box in that direction
    and ``lam`` solving ``g(lam) = sum_i |w_i| min(lam |w_i|, r_i) = c``: piecewise linear and
    increasing with kinks at ``r_i / |w_i|``, solved with one sort and a search.
    """
    c = b - (w * t).sum(dim=1)
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * flip.unsqueeze(1)
    c = c * flip
    a = w.abs()
    active = a > 1e-12
    room = torch.where(w > 0, hi - t, t - lo).clamp_min(0.0)
    room = torch.where(active, room, torch.zeros_like(room))
    kink = torch.where(active, room / a.clamp_min(1e-30), torch.zeros_like(room))
    k_sorted, order = kink.sort(dim=1)
    a_sorted, r_sorted = a.gather(1, order), room.gather(1, order)
    cum_ar = (a_sorted * r_sorted).cumsum(dim=1)  # saturated part: sum_{j<=k} |w_j| r_j
    cum_a2 = (a_sorted * a_sorted).cumsum(dim=1)
    total_a2 = cum_a2[:, -1:]
    g_at = cum_ar + k_sorted * (total_a2 - cum_a2)  # g at each kink, non-decreasing
    cc = c.unsqueeze(1)
    k = torch.searchsorted(g_at.contiguous(), cc.contiguous()).clamp(max=room.shape[1] - 1)
    prev_ar = torch.where(k > 0, cum_ar.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(cc))
    prev_a2 = torch.where(k > 0, cum_a2.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(cc))
    lam = (cc - prev_ar) / (total_a2 - prev_a2).clamp_min(1e-30)
    reachable = g_at[:, -1:] >= cc
    lam = torch.where(reachable, lam, k_sorted[:, -1:]).clamp_min(0.0)
    return torch.sign(w) * torch.minimum(lam * a, room)


def hyperplane_projection(
    norm: str,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor]:
    """The projection onto a hyperplane within the box in ``norm``: :func:`project_hyperplane_box_linf`
    or :func:`project_hyperplane_box_l2`."""
    return project_hyperplane_box_linf if norm == "Linf" else project_hyperplane_box_l2


def _dual(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The dual norm of each row of ``g`` (last dimension): L1 for L-inf, L2 for L2."""
    return g.abs().sum(-1) if norm == "Linf" else g.pow(2).sum(-1).sqrt()


def linearised_boundary(
    model: nn.Module, z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, g): the logit difference ``z_t - z_y`` (> 0: classified as ``t``) at ``z`` and its input
    gradient (B x D), for the target, or (untargeted) for the class ``t`` whose linearised boundary
    is nearest in ``norm`` (``|f| / ||g||_dual``, as the official FAB)."""
    z = z.detach().requires_grad_(True)
    u = torch.arange(z.shape[0], device=z.device)
    with torch.enable_grad():
        logits = model(z).float()
        if target is not None:
            f = logits[u, target] - logits[u, y]
            (g,) = torch.autograd.grad(f.sum(), z)
            return f.detach(), g.detach().flatten(1)
        k = logits.shape[1]
        grads = []
        for j in range(k):  # the Jacobian, one backward per class
            (gj,) = torch.autograd.grad(logits[:, j].sum(), z, retain_graph=j < k - 1)
            grads.append(gj.flatten(1))
    jac = torch.stack(grads, 1)  # B x K x D
    lg = logits.detach()
    df = lg - lg[u, y].unsqueeze(1)
    dg = jac - jac[u, y].unsqueeze(1)
    dist = df.abs() / (_dual(dg, norm) + 1e-12)
    dist[u, y] = float("inf")
    t = dist.argmin(1)
    return df[u, t], dg[u, t]
