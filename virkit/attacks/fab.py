"""FAB: the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), L-inf and L2, untargeted (``fab``, AutoAttack's
``plus`` version) and targeted (FAB-T, AutoAttack's ``standard`` version).

FAB is a minimum-norm attack. At each step it linearises the decision boundary between the true
class ``y`` and a class ``t`` at the current iterate (FAB-T: the target; untargeted FAB: the class
whose linearised boundary is nearest in the attack's norm, which needs the gradient of every
logit), projects both the iterate and the original point onto that hyperplane (within the [0,1]
box, minimal distance in the norm), moves to a convex combination of the two projections with
extrapolation ``eta``, and, once adversarial, steps back towards the original point by the factor
``beta``. The attack succeeds at radius eps when it finds an adversarial point no farther than eps
from the input. The linearisation and the projections are in :mod:`virkit.attacks.fab_projection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from virkit.attacks.base import (
    Attack,
    attack_rounds,
    clean_targets,
    compact_rows,
    default_compact_every,
    first_rank_table,
    register,
    targets_in_one_batch,
)
from virkit.attacks.fab_projection import hyperplane_projection, linearised_boundary
from virkit.attacks.norms import per_example_norm, random_on_sphere

__all__ = [
    "FAB",
    "FABTargeted",
    "fab_run",
    "fab_targeted_run",
]


def fab_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    eps: float,
    steps: int,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    norm: str = "Linf",
    early_stop: bool = False,
    group: torch.Tensor | None = None,
    rank: torch.Tensor | None = None,
    compact_every: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB run, towards ``target`` (FAB-T) or untargeted (``target=None``). Returns
    ``(x_best, dist)``: the adversarial point of smallest distance in ``norm`` found and that
    distance (``inf`` where none was found; ``x_best`` is ``x`` there). The random start
    (restarts after the first) lies at distance ``eps / 2``. Every row's trajectory depends on that
    row alone.

    ``early_stop=True`` (active-set compaction): a row stops as soon as it has an adversarial point
    within ``eps`` (it has succeeded at radius eps; its ``x_best`` is then the smallest-norm
    adversarial point found up to that step, which is its first one within eps) and leaves the
    batch, so the distance it returns is not the full run's minimum but the success flag
    ``dist <= eps`` is the full run's. ``group``, ``rank`` and ``compact_every`` as in
    :func:`virkit.attacks.apgd.apgd_run` (rows whose group was fooled at a lower rank stop and
    return their distance so far, above eps)."""
    lo, hi = bounds if bounds is not None else (-float("inf"), float("inf"))
    x = x.detach()
    bsz = x.shape[0]
    x1 = x.clone()
    if random_start:
        x1 = (x + 0.5 * eps * random_on_sphere(x, norm, generator)).clamp(lo, hi)
    if early_stop:
        return _fab_compact(
            model,
            x,
            y,
            target,
            x1,
            eps=eps,
            steps=steps,
            alpha_max=alpha_max,
            eta=eta,
            beta=beta,
            lo=lo,
            hi=hi,
            norm=norm,
            group=group,
            rank=rank,
            compact_every=compact_every,
        )
    view = (bsz,) + (1,) * (x.dim() - 1)
    best = x.clone()
    best_norm = torch.full((bsz,), float("inf"), device=x.device)
    for _ in range(steps):
        x1, best, best_norm = _fab_step(
            model,
            x,
            y,
            target,
            x1,
            best,
            best_norm,
            alpha_max=alpha_max,
            eta=eta,
            beta=beta,
            lo=lo,
            hi=hi,
            norm=norm,
            view=view,
        )
    return best, best_norm


def _fab_step(model, x, y, target, x1, best, best_norm, *, alpha_max, eta, beta, lo, hi, norm, view):
    """One FAB iteration on the rows of ``x`` (iterate ``x1``): returns the next iterate and the updated
    smallest-norm adversarial point and its distance."""
    bsz = x.shape[0]
    x0 = x.flatten(1)
    f, g = linearised_boundary(model, x1, y, target, norm)
    xf = x1.flatten(1)
    # hyperplane f + g.(p - x1) = 0  <=>  g.p = g.x1 - f
    bb = (g * xf).sum(1) - f
    d = hyperplane_projection(norm)(torch.cat((xf, x0)), torch.cat((g, g)), torch.cat((bb, bb)), lo, hi)
    d1, d2 = d[:bsz], d[bsz:]
    a1 = per_example_norm(d1, norm).clamp_min(1e-8)
    a2 = per_example_norm(d2, norm).clamp_min(1e-8)
    alpha = (a1 / (a1 + a2)).clamp(0.0, alpha_max).unsqueeze(1)
    xf = ((xf + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(lo, hi)
    x1 = xf.view_as(x)
    with torch.no_grad():
        adv = model(x1).argmax(1) != y
    dist = per_example_norm(x1 - x, norm)
    improve = adv & (dist < best_norm)
    best = torch.where(improve.view(view), x1, best)
    best_norm = torch.where(improve, dist, best_norm)
    x1 = torch.where(adv.view(view), x + (x1 - x) * beta, x1)
    return x1, best, best_norm


@dataclass
class _Rows:
    """FAB's state, one row per run still going (:func:`compact_rows` drops the finished ones)."""

    rows: torch.Tensor  # each row's index in the caller's batch
    x: torch.Tensor  # the clean input
    y: torch.Tensor
    target: torch.Tensor | None  # FAB-T's target class (None: untargeted)
    group: torch.Tensor | None  # several targets in one batch: the example and the target's order
    rank: torch.Tensor | None
    x1: torch.Tensor  # the iterate
    best: torch.Tensor  # the adversarial point of smallest distance found, and that distance
    best_norm: torch.Tensor


def _fab_compact(
    model, x, y, target, x1, *, eps, steps, alpha_max, eta, beta, lo, hi, norm, group, rank, compact_every
):
    """:func:`fab_run` with ``early_stop=True``: the same per-row iteration on the rows still running."""
    b, dev = x.shape[0], x.device
    every = max(int(compact_every or default_compact_every(dev)), 1)
    view = (-1,) + (1,) * (x.dim() - 1)
    out_best = x.clone()
    out_norm = torch.full((b,), float("inf"), device=dev)
    best_rank = first_rank_table(group)
    st = _Rows(
        rows=torch.arange(b, device=dev),
        x=x,
        y=y,
        target=target,
        group=group,
        rank=rank,
        x1=x1,
        best=x.clone(),
        best_norm=out_norm.clone(),
    )

    def finish(s: _Rows, done: torch.Tensor) -> None:
        r = s.rows[done]
        out_best[r] = s.best[done]
        out_norm[r] = s.best_norm[done]

    for i in range(steps):
        if st.rows.numel() == 0:
            break
        st.x1, st.best, st.best_norm = _fab_step(
            model,
            st.x,
            st.y,
            st.target,
            st.x1,
            st.best,
            st.best_norm,
            alpha_max=alpha_max,
            eta=eta,
            beta=beta,
            lo=lo,
            hi=hi,
            norm=norm,
            view=view,
        )
        if (i + 1) % every == 0:
            st = compact_rows(st, st.best_norm <= eps, best_rank, finish)
    if st.rows.numel():
        finish(st, torch.ones(st.rows.numel(), dtype=torch.bool, device=dev))
    return out_best, out_norm


def fab_targeted_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    steps: int,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    norm: str = "Linf",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB-T run towards ``target`` (:func:`fab_run` with a target)."""
    return fab_run(
        model,
        x,
        y,
        target,
        eps=eps,
        steps=steps,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
        random_start=random_start,
        generator=generator,
        bounds=bounds,
        norm=norm,
    )


@register("fab-t")
class FABTargeted(Attack):
    """FAB-T (Croce & Hein, ICML 2020), L-inf or L2, the targeted version used in AutoAttack standard:
    ``n_target_classes`` targets (the highest non-true logits, 9 for CIFAR-10), 100 steps each,
    1 restart (the first run starts at the input; later restarts from random points at half the
    radius), alpha_max 0.1, eta 1.05, beta 0.9, eps 8/255 (L2: 0.5). A point counts as broken when
    FAB finds an adversarial example within eps; only still-robust points are attacked for the next
    target. ``early_stop`` (default True): a point stops once it has an adversarial example within
    eps (returned: the smallest-norm one found until then; ``early_stop=False``: the smallest of
    the full run), same robust flags; ``batch_targets`` (default True, with 1 restart; an int: that
    many targets at a time): the targets of all points in one batch, a point's result being its
    first target in order that breaks it (the first run has no random start, so this is exactly
    one target after another); ``compact_every`` as for APGD."""

    name = "FAB-T"
    paper = "Croce & Hein, ICML 2020 (FAB); AutoAttack, ICML 2020"
    norms = ("Linf", "L2")
    quiet_defaults = {"early_stop": True, "batch_targets": True, "compact_every": None}

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 100,
        n_target_classes: int = 9,
        n_restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        norm: str = "Linf",
        early_stop: bool = True,
        batch_targets: bool | int = True,
        compact_every: int | None = None,
    ):
        super().__init__(eps, bounds, seed, norm)
        self.steps, self.n_target_classes, self.n_restarts = int(steps), int(n_target_classes), int(n_restarts)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        self.early_stop = bool(early_stop)
        self.batch_targets = batch_targets if isinstance(batch_targets, bool) else int(batch_targets)
        self.compact_every = None if compact_every is None else int(compact_every)

    def _kw(self):
        return dict(
            eps=self.eps,
            steps=self.steps,
            alpha_max=self.alpha_max,
            eta=self.eta,
            beta=self.beta,
            bounds=self.bounds,
            norm=self.norm,
            early_stop=self.early_stop,
            compact_every=self.compact_every,
        )

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        gen = self.generator(x.device)
        robust, targets = clean_targets(model, x, y, self.n_target_classes, clean_logits)
        if self.batch_targets is not False and self.n_restarts == 1:
            idx = robust.nonzero().squeeze(1)
            x_adv = x.clone()
            if idx.numel() == 0:
                return x_adv
            xs, ys, ts = x[idx], y[idx], targets[idx]

            def run_rows(ii, kk, group):
                xb, dist = fab_run(
                    model,
                    xs[ii],
                    ys[ii],
                    ts[ii, kk],
                    generator=gen,
                    group=group if self.early_stop else None,
                    rank=kk if self.early_stop else None,
                    **self._kw(),
                )
                return xb, dist <= self.eps

            gs = None if self.batch_targets is True else int(self.batch_targets)
            x_adv[idx] = targets_in_one_batch(xs, targets.shape[1], run_rows, gs)[0]
            return x_adv

        def run(idx, round_):
            k, r = round_
            xb, dist = fab_run(model, x[idx], y[idx], targets[idx, k], random_start=r > 0, generator=gen, **self._kw())
            return xb, dist <= self.eps

        rounds = [(k, r) for k in range(targets.shape[1]) for r in range(self.n_restarts)]
        return attack_rounds(x, robust, rounds, run)


@register("fab")
class FAB(FABTargeted):
    """FAB (Croce & Hein, ICML 2020), L-inf or L2, untargeted, as in AutoAttack's ``plus`` version:
    at every step the boundary of the nearest class (needs the gradient of every logit: one
    backward per class), ``n_restarts`` runs (5 in ``plus``; the first from the input, the others
    from random points at half the radius), 100 steps, alpha_max 0.1, eta 1.05, beta 0.9.
    ``early_stop`` and ``compact_every`` as for FAB-T."""

    name = "FAB"
    quiet_defaults = {"early_stop": True, "compact_every": None}

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 100,
        n_restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        norm: str = "Linf",
        early_stop: bool = True,
        compact_every: int | None = None,
    ):
        super().__init__(
            eps,
            steps,
            0,
            n_restarts,
            alpha_max,
            eta,
            beta,
            bounds,
            seed,
            norm,
            early_stop=early_stop,
            batch_targets=False,
            compact_every=compact_every,
        )
        del self.n_target_classes, self.batch_targets

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        gen = self.generator(x.device)

        def run(idx, r):
            xb, dist = fab_run(model, x[idx], y[idx], None, random_start=r > 0, generator=gen, **self._kw())
            return xb, dist <= self.eps

        return attack_rounds(x, clean_targets(model, x, y, None, clean_logits)[0], range(self.n_restarts), run)
