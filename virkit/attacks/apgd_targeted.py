"""APGD-T (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), L-inf and L2: APGD (:mod:`virkit.attacks.apgd`) on the targeted DLR
loss, once per target class, the targets being the highest non-true logits of the clean input.

Also the targeted DLR loss and :func:`apgd_targets_batched`, which runs the targets of every point in
one batch (``batch_targets``, :func:`virkit.attacks.base.targets_in_one_batch`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from virkit.attacks.apgd import apgd_run, apgd_start
from virkit.attacks.base import Attack, attack_rounds, clean_targets, register, targets_in_one_batch

__all__ = ["APGDTargeted", "apgd_targets_batched", "dlr_targeted_loss"]


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


def apgd_targets_batched(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor,
    starts: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
    *,
    group_size: int | None = None,
    early_stop: bool = True,
    **kw: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD runs towards several targets per example in one batch
    (:func:`~virkit.attacks.base.targets_in_one_batch`): row (i, k) attacks example ``i`` towards
    ``targets[i, k]`` with ``loss_fn(logits, y, target)`` from ``x[i] + eps * starts[k, i]``;
    ``kw``: the other keywords of :func:`apgd_run`. Returns ``(x_adv, fooled)`` per example."""

    def run(ii, kk, group):
        return apgd_run(
            model,
            x[ii],
            y[ii],
            loss_fn,
            target=targets[ii, kk],
            start=starts[kk, ii],
            early_stop=early_stop,
            group=group,
            rank=kk,
            **kw,
        )

    return targets_in_one_batch(x, targets.shape[1], run, group_size)


@register("apgd-t")
class APGDTargeted(Attack):
    """APGD-T (Croce & Hein, ICML 2020), L-inf or L2: APGD on the targeted DLR loss, once per target
    class, the targets being the ``n_target_classes`` highest non-true logits of the clean input
    (9 for CIFAR-10, as in AutoAttack standard). eps 8/255 (L2: 0.5), 100 steps per target,
    1 restart. Each target run only attacks points not yet fooled. ``early_stop`` and
    ``compact_every`` as for :class:`virkit.attacks.apgd.APGD`; ``batch_targets`` (default True; an int: that many
    targets at a time): the targets of every still-robust point run in one batch, a point's result
    being its first target in order that fools it (as one target after another gives); the random
    starts are then drawn per target for all attacked points at once, before the runs (one target
    after another, ``batch_targets=False``, draws each target's starts for the points still robust
    at its turn), so the two orders differ only through those draws."""

    name = "APGD-T"
    paper = "Croce & Hein, ICML 2020"
    norms = ("Linf", "L2")
    quiet_defaults = {"eot_iter": 1, "early_stop": True, "batch_targets": True, "compact_every": None}

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 100,
        n_target_classes: int = 9,
        n_restarts: int = 1,
        rho: float = 0.75,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        norm: str = "Linf",
        eot_iter: int = 1,
        early_stop: bool = True,
        batch_targets: bool | int = True,
        compact_every: int | None = None,
    ):
        super().__init__(eps, bounds, seed, norm)
        self.steps, self.n_target_classes = int(steps), int(n_target_classes)
        self.n_restarts, self.rho = int(n_restarts), float(rho)
        self.eot_iter = max(int(eot_iter), 1)
        self.early_stop = bool(early_stop)
        self.batch_targets = batch_targets if isinstance(batch_targets, bool) else int(batch_targets)
        self.compact_every = None if compact_every is None else int(compact_every)

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        gen = self.generator(x.device)
        robust, targets = clean_targets(model, x, y, self.n_target_classes, clean_logits)
        kw: dict[str, Any] = dict(
            eps=self.eps,
            steps=self.steps,
            rho=self.rho,
            bounds=self.bounds,
            norm=self.norm,
            eot_iter=self.eot_iter,
            compact_every=self.compact_every,
        )
        if self.batch_targets is not False and self.n_restarts == 1:
            idx = robust.nonzero().squeeze(1)
            x_adv = x.clone()
            if idx.numel() == 0:
                return x_adv
            xs = x[idx]
            starts = torch.stack([apgd_start(xs, self.norm, gen) for _ in range(targets.shape[1])])
            gs = None if self.batch_targets is True else int(self.batch_targets)
            xa, _ = apgd_targets_batched(
                model,
                xs,
                y[idx],
                targets[idx],
                starts,
                dlr_targeted_loss,
                group_size=gs,
                early_stop=self.early_stop,
                **kw,
            )
            x_adv[idx] = xa
            return x_adv

        def run(idx, round_):
            return apgd_run(
                model,
                x[idx],
                y[idx],
                dlr_targeted_loss,
                target=targets[idx, round_[0]],
                generator=gen,
                early_stop=self.early_stop,
                **kw,
            )

        rounds = [(k, r) for k in range(targets.shape[1]) for r in range(self.n_restarts)]
        return attack_rounds(x, robust, rounds, run)
