"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square attack: a
query-efficient black-box adversarial attack via random search"), L-inf, score-based black box.

The attack only reads the model's logits (no gradients). It starts from vertical stripes of
+-eps, then repeatedly proposes to set a random square window (per example, per channel a random
sign) to x +- eps, and keeps the proposal when the margin loss ``z_y - max_{j!=y} z_j`` decreases.
The side of the window shrinks with the schedule of the paper (fraction ``p`` of the pixels,
starting at ``p_init = 0.8``, halved at fixed query counts). The official code can rescale those
counts from 10,000 queries to the budget (``resc_schedule``): its ``SquareAttack`` class does by
default, and so does virkit's standalone Square (the paper's Square-5000 rows); standard AutoAttack
builds its Square with ``resc_schedule=False``, the raw schedule, and so does virkit's AutoAttack.
A point is done as soon as its margin is negative (misclassified).
"""
from __future__ import annotations

import math

import torch

from .apgd import margin
from .base import Attack, attack_rounds, correct_mask, register

__all__ = ["Square", "square_p_schedule"]


def square_p_schedule(it: int, n_queries: int, p_init: float = 0.8, rescale: bool = True) -> float:
    """Fraction of pixels changed at iteration ``it`` (Andriushchenko et al. 2020). With ``rescale``
    the schedule's query counts (written for 10,000 queries) are stretched to ``n_queries`` (the
    official ``SquareAttack`` default); without it they are used as written (what standard
    AutoAttack does: ``resc_schedule=False``)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


@register("square")
class Square(Attack):
    """Square Attack (Andriushchenko et al., ECCV 2020), L-inf, untargeted, margin loss, black box
    (logits only). Paper setting (Sec. 5.4): 5000 queries per example (the initial stripes count
    as one), p_init 0.8, 1 restart, eps 8/255. ``resc_schedule`` (default True, as the official
    class): stretch the p-schedule to ``n_queries``; AutoAttack passes False. Only correctly
    classified points are attacked; a
    point stops querying once it is misclassified (checked every ``check_every`` iterations, to
    avoid a host synchronisation per query)."""

    name = "Square"
    paper = "Andriushchenko et al., ECCV 2020"
    black_box = True

    def __init__(self, eps: float = 8 / 255, n_queries: int = 5000, p_init: float = 0.8, n_restarts: int = 1,
                 check_every: int = 10, resc_schedule: bool = True, bounds=(0.0, 1.0), seed: int = 0):
        super().__init__(eps, bounds, seed)
        self.n_queries, self.p_init, self.n_restarts = int(n_queries), float(p_init), int(n_restarts)
        self.resc_schedule = bool(resc_schedule)
        self.check_every = max(int(check_every), 1)
        self.name = f"Square ({self.n_queries} queries)"

    def _sign(self, shape, gen, device):
        return torch.randint(0, 2, shape, generator=gen, device=device).to(torch.float32) * 2 - 1

    def _clip(self, z):
        return z.clamp(*self.bounds) if self.bounds is not None else z

    @torch.no_grad()
    def _run(self, model, x, y, gen):
        """One restart on points ``x`` (all classified correctly). Returns (x_best, margin)."""
        n, c, h, w = x.shape
        dev = x.device
        x_best = self._clip(x + self.eps * self._sign((n, c, 1, w), gen, dev))
        m = margin(model(x_best), y)
        rows = torch.arange(h, device=dev).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, 1, w)
        active = torch.arange(n, device=dev)
        for it in range(1, self.n_queries):
            if (it - 1) % self.check_every == 0:
                active = (m > 0).nonzero().squeeze(1)
                if active.numel() == 0:
                    break
            p = square_p_schedule(it - 1, self.n_queries, self.p_init, self.resc_schedule)
            s = max(int(round(math.sqrt(p * h * w))), 1)
            s = min(s, h - 1, w - 1) if min(h, w) > 1 else 1
            k = active.numel()
            vh = torch.randint(0, h - s + 1, (k, 1, 1, 1), generator=gen, device=dev)
            vw = torch.randint(0, w - s + 1, (k, 1, 1, 1), generator=gen, device=dev)
            sign = self._sign((k, c, 1, 1), gen, dev)
            window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
            xa = x[active]
            x_new = torch.where(window, self._clip(xa + self.eps * sign), x_best[active])
            m_new = margin(model(x_new), y[active])
            better = m_new < m[active]
            x_best[active] = torch.where(better.view(-1, 1, 1, 1), x_new, x_best[active])
            m[active] = torch.where(better, m_new, m[active])
        return x_best, m

    def perturb(self, model, x, y):
        gen = self.generator(x.device)

        def run(idx, _restart):
            xb, m = self._run(model, x[idx], y[idx], gen)
            return xb, m <= 0

        return attack_rounds(x, correct_mask(model, x, y), range(self.n_restarts), run)
