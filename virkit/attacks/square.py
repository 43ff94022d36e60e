"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square attack: a
query-efficient black-box adversarial attack via random search"), L-inf and L2, score-based black box.

The attack only reads the model's logits (no gradients). It starts from vertical stripes of
+-eps, then repeatedly proposes to set a random square window (per example, per channel a random
sign) to x +- eps, and keeps the proposal when the margin loss ``z_y - max_{j!=y} z_j`` decreases.
The side of the window shrinks with the schedule of the paper (fraction ``p`` of the pixels,
starting at ``p_init = 0.8``, halved at fixed query counts). The official code can rescale those
counts from 10,000 queries to the budget (``resc_schedule``): its ``SquareAttack`` class does by
default, and so does virkit's standalone Square (the paper's Square-5000 rows); standard AutoAttack
builds its Square with ``resc_schedule=False``, the raw schedule, and so does virkit's AutoAttack.
A point is done as soon as its margin is negative (misclassified).

L2 (``norm='L2'``, the official code's L2 version): the start is a grid of ``h // 5``-sized tiles,
each holding the L2 pattern (two halves of opposite sign made of nested rectangles weighted
1/(k+1)^2, transposed at random) times a random sign per channel, scaled to norm eps. Each step
moves the mass of one window (side from the p-schedule, odd, at least 3) to another: the
perturbation in the second window is removed, the first window gets a new pattern plus its old
content, rescaled so that the norm budget is used, and the whole perturbation is rescaled to norm
eps before clipping to the box. As for L-inf, virkit draws the windows, signs and transposes per
example (the official PyTorch port shares the windows across the batch).
"""

from __future__ import annotations

import math

import torch

from virkit.attacks.base import Attack, attack_rounds, correct_mask, margin, register
from virkit.attacks.norms import per_example_norm

__all__ = ["Square", "square_p_schedule"]


def square_p_schedule(it: int, n_queries: int, p_init: float = 0.8, rescale: bool = True) -> float:
    """Fraction of pixels changed at iteration ``it`` (Andriushchenko et al. 2020). With ``rescale``
    the schedule's query counts (written for 10,000 queries) are stretched to ``n_queries`` (the
    official ``SquareAttack`` default); without it they are used as written (what standard
    AutoAttack does: ``resc_schedule=False``)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, div in (
        (10, 1),
        (50, 2),
        (200, 4),
        (500, 8),
        (1000, 16),
        (2000, 32),
        (4000, 64),
        (6000, 128),
        (8000, 256),
    ):
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
    norms = ("Linf", "L2")

    quiet_defaults = {"early_stop": True, "inference_mode": True}

    def __init__(
        self,
        eps: float = 8 / 255,
        n_queries: int = 5000,
        p_init: float = 0.8,
        n_restarts: int = 1,
        check_every: int = 10,
        resc_schedule: bool = True,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        norm: str = "Linf",
        early_stop: bool = True,
        inference_mode: bool = True,
    ):
        super().__init__(eps, bounds, seed, norm)
        self.early_stop, self.inference_mode = bool(early_stop), bool(inference_mode)
        self.n_queries, self.p_init, self.n_restarts = int(n_queries), float(p_init), int(n_restarts)
        self.resc_schedule = bool(resc_schedule)
        self.check_every = max(int(check_every), 1)
        self.name = f"Square ({self.n_queries} queries)"

    def _sign(self, shape, gen, device):
        return torch.randint(0, 2, shape, generator=gen, device=device).to(torch.float32) * 2 - 1

    def _clip(self, z):
        return z.clamp(*self.bounds) if self.bounds is not None else z

    def _grad_free(self):
        return torch.inference_mode() if self.inference_mode else torch.no_grad()

    def _run(self, model, x, y, gen):
        """One restart on points ``x`` (all classified correctly). Returns (x_best, margin)."""
        with self._grad_free():
            out = (self._run_compact if self.early_stop else self._run_plain)(model, x, y, gen)
        return tuple(t.clone() for t in out)  # ordinary tensors again outside inference mode

    def _run_compact(self, model, x, y, gen):
        """:meth:`_run_plain` with the rows still querying kept in compact tensors between the looks
        for fooled points (every ``check_every`` iterations) instead of gathered and scattered back
        at every query: the same random draws, in the same order and shapes, the same result."""
        n, c, h, w = x.shape
        dev = x.device
        x_best = self._clip(x + self.eps * self._sign((n, c, 1, w), gen, dev))
        m = margin(model(x_best), y)
        rows = torch.arange(h, device=dev).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, 1, w)
        # the rows still querying and their compact tensors: None until the first look (it == 1)
        active: torch.Tensor | None = None
        xa: torch.Tensor | None = None
        ya: torch.Tensor | None = None
        xb_a: torch.Tensor | None = None
        m_a: torch.Tensor | None = None
        k = 0
        for it in range(1, self.n_queries):
            if (it - 1) % self.check_every == 0:
                if active is not None:
                    assert xb_a is not None and m_a is not None  # set with ``active``
                    x_best[active], m[active] = xb_a, m_a
                active = (m > 0).nonzero().squeeze(1)
                if active.numel() == 0:
                    break
                xa, ya, xb_a, m_a = x[active], y[active], x_best[active], m[active]
                k = active.numel()
            assert xa is not None and ya is not None and xb_a is not None and m_a is not None  # the look at it == 1
            p = square_p_schedule(it - 1, self.n_queries, self.p_init, self.resc_schedule)
            s = max(int(round(math.sqrt(p * h * w))), 1)
            s = min(s, h - 1, w - 1) if min(h, w) > 1 else 1
            vh = torch.randint(0, max(h - s, 1), (k, 1, 1, 1), generator=gen, device=dev)
            vw = torch.randint(0, max(w - s, 1), (k, 1, 1, 1), generator=gen, device=dev)
            sign = self._sign((k, c, 1, 1), gen, dev)
            window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
            x_new = torch.where(window, self._clip(xa + self.eps * sign), xb_a)
            m_new = margin(model(x_new), ya)
            better = m_new < m_a
            xb_a = torch.where(better.view(-1, 1, 1, 1), x_new, xb_a)
            m_a = torch.where(better, m_new, m_a)
        else:
            if active is not None and active.numel():
                assert xb_a is not None and m_a is not None  # set with ``active``
                x_best[active], m[active] = xb_a, m_a
        return x_best, m

    def _run_plain(self, model, x, y, gen):
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
            # the window's corner in [0, h - s) as both official codes draw it (never the last position)
            vh = torch.randint(0, max(h - s, 1), (k, 1, 1, 1), generator=gen, device=dev)
            vw = torch.randint(0, max(w - s, 1), (k, 1, 1, 1), generator=gen, device=dev)
            sign = self._sign((k, c, 1, 1), gen, dev)
            window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
            xa = x[active]
            x_new = torch.where(window, self._clip(xa + self.eps * sign), x_best[active])
            m_new = margin(model(x_new), y[active])
            better = m_new < m[active]
            x_best[active] = torch.where(better.view(-1, 1, 1, 1), x_new, x_best[active])
            m[active] = torch.where(better, m_new, m[active])
        return x_best, m

    # ------------------------------------------------------------------------------------------ L2
    @staticmethod
    def _pattern(s: int, device) -> torch.Tensor:
        """The official L2 window pattern (s x s, unit L2 norm): the top half ``s // 2`` rows and the
        bottom half of opposite sign, each a sum of nested rectangles around its centre weighted
        ``1 / (k + 1)^2``."""

        def rectangles(a: int, b: int) -> torch.Tensor:
            out = torch.zeros(a, b, device=device)
            r0, c0 = a // 2, b // 2
            for k in range(max(r0 + 1, c0 + 1)):
                out[max(r0 - k, 0) : min(r0 + k + 1, a), max(c0 - k, 0) : min(c0 + k + 1, b)] += 1.0 / (k + 1) ** 2
            return out / out.pow(2).sum().sqrt().clamp_min(1e-12)

        top = s // 2
        p = torch.cat((rectangles(top, s), -rectangles(s - top, s))) if top > 0 else -rectangles(s, s)
        return p / p.pow(2).sum().sqrt().clamp_min(1e-12)

    def _placed(self, n, c, h, w, vh, vw, s, gen, dev) -> torch.Tensor:
        """Per example the pattern (transposed with probability 1/2) times a random sign per channel,
        placed with its corner at (vh, vw) in an n x c x h x w zero tensor."""
        pat = self._pattern(s, dev)
        flip = torch.rand((n, 1, 1, 1), generator=gen, device=dev) > 0.5
        rr = torch.arange(h, device=dev).view(1, 1, h, 1) - vh
        cc = torch.arange(w, device=dev).view(1, 1, 1, w) - vw
        inside = (rr >= 0) & (rr < s) & (cc >= 0) & (cc < s)
        r, q = rr.clamp(0, s - 1), cc.clamp(0, s - 1)
        val = torch.where(flip, pat[q, r], pat[r, q])
        return torch.where(inside, val, torch.zeros((), device=dev)) * self._sign((n, c, 1, 1), gen, dev)

    def _l2_step(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return self._clip(x + delta * (self.eps / (per_example_norm(delta, "L2") + 1e-12)).view(-1, 1, 1, 1))

    @torch.no_grad()
    def _run_l2(self, model, x, y, gen):
        """One L2 restart on points ``x`` (all classified correctly). Returns (x_best, margin)."""
        n, c, h, w = x.shape
        dev = x.device
        s0 = max(h // 5, 1)
        start = (h - s0 * 5) // 2
        delta = torch.zeros_like(x)
        for i in range(h // s0):
            for j in range(w // s0):
                delta = delta + self._placed(n, c, h, w, start + i * s0, start + j * s0, s0, gen, dev)
        x_best = self._l2_step(x, delta)
        m = margin(model(x_best), y)
        active = torch.arange(n, device=dev)
        zero = torch.zeros((), device=dev)
        for it in range(1, self.n_queries):
            if (it - 1) % self.check_every == 0:
                active = (m > 0).nonzero().squeeze(1)
                if active.numel() == 0:
                    break
            p = square_p_schedule(it - 1, self.n_queries, self.p_init, self.resc_schedule)
            s = max(int(round(math.sqrt(p * h * w))), 3)
            s = min(s + 1 if s % 2 == 0 else s, h, w)
            k = active.numel()
            pos = [torch.randint(0, max(dim - s, 1), (k, 1, 1, 1), generator=gen, device=dev) for dim in (h, w, h, w)]
            rows = torch.arange(h, device=dev).view(1, 1, h, 1)
            cols = torch.arange(w, device=dev).view(1, 1, 1, w)
            win1 = (rows >= pos[0]) & (rows < pos[0] + s) & (cols >= pos[1]) & (cols < pos[1] + s)
            win2 = (rows >= pos[2]) & (rows < pos[2] + s) & (cols >= pos[3]) & (cols < pos[3] + s)
            xa, d = x[active], x_best[active] - x[active]
            chan_norm = lambda t: t.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
            in1 = torch.where(win1, d, zero)
            budget = (self.eps**2 - per_example_norm(d, "L2").pow(2)).clamp_min(0.0).view(-1, 1, 1, 1) / c
            new = self._placed(k, c, h, w, pos[0], pos[1], s, gen, dev) + in1 / (chan_norm(in1) + 1e-12)
            new = new / (chan_norm(new) + 1e-12) * (budget + chan_norm(torch.where(win1 | win2, d, zero)).pow(2)).sqrt()
            d_new = torch.where(win1, new, torch.where(win2, zero, d))
            x_new = self._l2_step(xa, d_new)
            m_new = margin(model(x_new), y[active])
            better = (m_new < m[active]) | (m_new <= 0)
            x_best[active] = torch.where(better.view(-1, 1, 1, 1), x_new, x_best[active])
            m[active] = torch.where(better, m_new, m[active])
        return x_best, m

    def perturb(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        gen = self.generator(x.device)
        run_one = self._run if self.norm == "Linf" else self._run_l2

        def run(idx, _restart):
            xb, m = run_one(model, x[idx], y[idx], gen)
            return xb, m <= 0

        robust = correct_mask(model, x, y) if clean_logits is None else clean_logits.argmax(1) == y
        return attack_rounds(x, robust, range(self.n_restarts), run)
