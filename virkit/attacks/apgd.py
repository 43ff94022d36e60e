"""APGD-CE / APGD-DLR (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks"), L-inf and L2: the APGD run (:func:`apgd_run`), which
APGD-T (:mod:`virkit.attacks.apgd_targeted`) shares, and the DLR loss.

The logit margin, the helpers "attack only the points that are still classified correctly" and the
target classes of targeted attacks live in :mod:`virkit.attacks.base` (re-exported here).

APGD in brief (Algorithm 1 of the paper): sign-gradient steps with momentum 0.75 from a random
start at the border of the eps-ball, a per-example step size that starts at 2*eps and is halved
at checkpoints when the loss oscillates (fewer than ``rho``-fraction of the last steps increased
it) or when it has not improved since the previous checkpoint (in which case the iterate restarts
from the best point found). Checkpoints come after 22% of the steps, then at shrinking intervals
(by 3% of the steps, at least 6%). Everything runs on the batch on its device: the checkpoint
schedule is fixed in advance, so the step-size rule never synchronises with the host. With
``early_stop`` (the default) points stop at their first misclassified iterate and leave the batch
(active-set compaction, looked for every ``compact_every`` steps); APGD-T runs all its targets in
one batch with ``batch_targets`` (:func:`virkit.attacks.apgd_targeted.apgd_targets_batched`).

L2 (``norm='L2'``), as the official ``autopgd_base.py``: the start is ``x + eps * t / ||t||_2`` with
``t`` standard normal, each step moves ``step * g / ||g||_2`` and every point is projected onto the
L2 ball (``x + d / ||d|| * min(eps, ||d||)``) and then the box, before and after the momentum
combination. EOT (``eot_iter > 1``, AutoAttack's ``rand`` version for randomized models): the
gradient is the mean over ``eot_iter`` forward/backward passes at the same point; the loss and the
prediction are those of the last pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from virkit.attacks.base import (
    Attack,
    attack_rounds,
    clean_targets,
    compact_rows,
    correct_mask,
    default_compact_every,
    first_rank_table,
    margin,
    on_correct,
    project_linf,
    register,
    target_classes,
)
from virkit.attacks.norms import project, random_on_sphere, steepest
from virkit.ops import true_and_best_other

__all__ = [
    "APGD",
    "apgd_run",
    "apgd_start",
    "dlr_loss",
    "margin",
    "correct_mask",
    "on_correct",
    "target_classes",
]


# ---------------------------------------------------------------------------------------------
# losses (per example, larger = more adversarial; the logit margin is in base.py)
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


def apgd_start(x: torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """APGD's random start directions for the rows of ``x`` (unit norm per row; the start is
    ``x + eps * t``): L-inf ``t = u / ||u||_inf`` with ``u`` uniform in [-1, 1], L2 ``t / ||t||_2`` with
    ``t`` standard normal (the official ``autopgd_base.py``)."""
    if norm == "Linf":
        view = (x.shape[0],) + (1,) * (x.dim() - 1)
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device) - 1
        return t / t.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(view)
    return random_on_sphere(x, norm, generator)


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


@dataclass
class _Rows:
    """APGD's state, one row per run still going (with ``early_stop``, :func:`compact_rows` drops the
    finished ones)."""

    rows: torch.Tensor  # each row's index in the caller's batch
    x: torch.Tensor  # the clean input
    y: torch.Tensor
    target: torch.Tensor | None  # APGD-T's target class (None: untargeted)
    group: torch.Tensor | None  # several targets in one batch: the example and ...
    rank: torch.Tensor | None  # ... the target's order (see apgd_run)
    x_adv: torch.Tensor  # the iterate
    x_prev: torch.Tensor  # the previous iterate (momentum)
    grad: torch.Tensor  # the gradient at x_adv
    step: torch.Tensor  # the step size (B)
    hist: torch.Tensor  # the loss at every iterate so far (B x steps+1)
    x_best: torch.Tensor  # the iterate of highest loss, its loss and gradient
    loss_best: torch.Tensor
    grad_best: torch.Tensor
    loss_best_last: torch.Tensor  # loss_best at the previous checkpoint
    reduced_last: torch.Tensor  # whether the step was halved at the previous checkpoint
    x_fool: torch.Tensor  # the misclassified iterate returned (first or last)
    fooled: torch.Tensor  # whether some iterate was misclassified

    def result(self) -> torch.Tensor:
        """Each row's returned point: its misclassified iterate if fooled, else its best one."""
        return torch.where(self.fooled.view((-1,) + (1,) * (self.x.dim() - 1)), self.x_fool, self.x_best)


def apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
    *,
    eps: float,
    steps: int,
    rho: float = 0.75,
    momentum: float = 0.75,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
    norm: str = "Linf",
    eot_iter: int = 1,
    target: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    early_stop: bool = False,
    group: torch.Tensor | None = None,
    rank: torch.Tensor | None = None,
    compact_every: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run on the whole batch; ``loss_fn(logits, y)`` (``loss_fn(logits, y, target)`` when a
    per-row ``target`` is given) gives the per-example loss to maximize.

    ``start``: the random start's unit directions (:func:`apgd_start`), drawn from ``generator``
    when not given. Returns ``(x_adv, fooled)``: ``fooled[i]`` is True when some iterate was
    misclassified; otherwise ``x_adv[i]`` is the iterate of highest loss. Every row's trajectory
    depends on that row alone (per-example step sizes, checkpoints and losses).

    ``early_stop=False`` (the full run): every row runs all ``steps``; a fooled row returns its
    **last** misclassified iterate (as the official code). ``early_stop=True`` (active-set
    compaction): a row stops at its **first** misclassified iterate, which it returns, and the
    remaining rows are compacted so that the model only sees rows still running; the robust flags
    are those of the full run. The fooled rows are found every ``compact_every`` steps (default 1
    on the CPU, where that costs nothing; 8 on accelerators, to wait for the device that seldom);
    until then a fooled row keeps its first misclassified iterate. With ``group`` (the example a
    row belongs to) and ``rank`` (its order among that example's runs, e.g. the target index),
    a row is also dropped once a row of the same group with a lower rank is fooled (several
    target classes in one batch: the example's result is its first target in order that breaks it,
    so later targets no longer matter); such a row returns ``fooled=False``. Without
    ``early_stop``, ``group``, ``rank`` and ``compact_every`` are ignored.
    """
    x = x.detach()
    b, dev = x.shape[0], x.device
    t = apgd_start(x, norm, generator) if start is None else start
    every = max(int(compact_every or default_compact_every(dev)), 1)
    if not early_stop:
        group = rank = None
    best_rank = first_rank_table(group)

    def v(m):  # a per-row mask or value, broadcast over the image dimensions
        return m.view((-1,) + (1,) * (x.dim() - 1))

    def proj(z, xx):
        return project_linf(z, xx, eps, bounds) if norm == "Linf" else project(z, xx, eps, norm, bounds)

    def evaluate(z, yy, tt):
        """(loss, logits, gradient) at ``z``; the gradient is the mean over ``eot_iter`` passes."""
        z = z.detach().requires_grad_(True)
        g = None
        for _ in range(eot_iter):
            with torch.enable_grad():
                logits = model(z)
                lvec = loss_fn(logits, yy) if tt is None else loss_fn(logits, yy, tt)
                (gi,) = torch.autograd.grad(lvec.sum(), z)
            g = gi if g is None else g + gi
        assert g is not None, "eot_iter must be >= 1"
        if eot_iter > 1:
            g = g / eot_iter
        return lvec.detach(), logits.detach(), g.detach()

    x_adv = x + eps * t
    if bounds is not None:
        x_adv = x_adv.clamp(*bounds)
    loss, logits, grad = evaluate(x_adv, y, target)
    hist = torch.zeros(b, steps + 1, device=dev, dtype=loss.dtype)
    hist[:, 0] = loss
    st = _Rows(
        rows=torch.arange(b, device=dev),
        x=x,
        y=y,
        target=target,
        group=group,
        rank=rank,
        x_adv=x_adv,
        x_prev=x_adv,
        grad=grad,
        step=torch.full((b,), 2.0 * eps, device=dev, dtype=x.dtype),
        hist=hist,
        x_best=x_adv.clone(),
        loss_best=loss.clone(),
        grad_best=grad.clone(),
        loss_best_last=loss.clone(),
        reduced_last=torch.ones(b, dtype=torch.bool, device=dev),
        x_fool=x_adv.clone(),
        fooled=logits.argmax(1) != y,
    )
    out_x = x.clone()
    out_fooled = torch.zeros(b, dtype=torch.bool, device=dev)

    def finish(s: _Rows, done: torch.Tensor) -> None:
        out_x[s.rows[done]] = s.result()[done]
        out_fooled[s.rows[done]] = s.fooled[done]

    def compact(s: _Rows) -> _Rows:
        return compact_rows(s, s.fooled, best_rank, finish) if early_stop else s

    st = compact(st)
    checkpoints = _schedule(steps)
    for i in range(steps):
        if st.rows.numel() == 0:
            break
        a = momentum if i > 0 else 1.0
        x_adv = st.x_adv
        direction = st.grad.sign() if norm == "Linf" else steepest(st.grad, norm)
        z = proj(x_adv + v(st.step) * direction, st.x)
        z = proj(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - st.x_prev), st.x)
        st.x_prev, st.x_adv = x_adv, z
        loss, logits, st.grad = evaluate(z, st.y, st.target)
        mis = logits.argmax(1) != st.y
        # early_stop: a row keeps its first misclassified iterate; the full run: its last one
        st.x_fool = torch.where(v(mis & ~st.fooled if early_stop else mis), z, st.x_fool)
        st.fooled = st.fooled | mis
        st.hist[:, i + 1] = loss
        better = loss > st.loss_best
        st.x_best = torch.where(v(better), z, st.x_best)
        st.grad_best = torch.where(v(better), st.grad, st.grad_best)
        st.loss_best = torch.where(better, loss, st.loss_best)
        k = checkpoints.get(i)
        if k is not None:  # halve the step where the loss oscillates or stalled, and restart from the best
            increases = (st.hist[:, i + 2 - k : i + 2] > st.hist[:, i + 1 - k : i + 1]).sum(dim=1)
            oscillating = increases <= k * rho
            stalled = ~st.reduced_last & (st.loss_best_last >= st.loss_best)
            reduce = oscillating | stalled
            st.reduced_last, st.loss_best_last = reduce, st.loss_best.clone()
            st.step = torch.where(reduce, st.step / 2, st.step)
            st.x_adv = torch.where(v(reduce), st.x_best, st.x_adv)
            st.grad = torch.where(v(reduce), st.grad_best, st.grad)
        if (i + 1) % every == 0:
            st = compact(st)
    if not early_stop:  # every row ran all the steps
        return st.result(), st.fooled
    if st.rows.numel():
        finish(st, torch.ones_like(st.fooled))
    return out_x, out_fooled


@register("apgd")
class APGD(Attack):
    """APGD (Croce & Hein, ICML 2020), L-inf or L2, untargeted, on the cross-entropy (``loss='ce'``,
    AutoAttack's APGD-CE) or the DLR loss (``loss='dlr'``). AutoAttack-standard settings: eps 8/255
    (L2: 0.5), 100 steps, 1 restart, rho 0.75, momentum 0.75, initial step 2*eps; ``eot_iter`` 1
    (20 in AutoAttack's ``rand`` version). Only correctly classified points are attacked; each
    restart only those not yet fooled. ``early_stop`` (default True): a point stops at its first
    misclassified iterate and leaves the batch (same robust flags as the full run, which
    ``early_stop=False`` gives); ``compact_every``: steps between looks for such points (default:
    1 on the CPU, 8 elsewhere)."""

    name = "APGD-CE"
    paper = "Croce & Hein, ICML 2020"
    norms = ("Linf", "L2")
    quiet_defaults = {"eot_iter": 1, "early_stop": True, "compact_every": None}

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 100,
        n_restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        norm: str = "Linf",
        eot_iter: int = 1,
        early_stop: bool = True,
        compact_every: int | None = None,
    ):
        super().__init__(eps, bounds, seed, norm)
        if loss not in ("ce", "dlr"):
            raise ValueError(f"unknown APGD loss {loss!r}; valid: ce, dlr")
        self.steps, self.n_restarts, self.loss, self.rho = int(steps), int(n_restarts), loss, float(rho)
        self.eot_iter = max(int(eot_iter), 1)
        self.early_stop = bool(early_stop)
        self.compact_every = None if compact_every is None else int(compact_every)
        self.name = f"APGD-{loss.upper()}"

    def _loss(self, logits, y):
        if self.loss == "ce":
            return F.cross_entropy(logits.float(), y, reduction="none")
        return dlr_loss(logits, y)

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        gen = self.generator(x.device)

        def run(idx, _restart):
            return apgd_run(
                model,
                x[idx],
                y[idx],
                self._loss,
                eps=self.eps,
                steps=self.steps,
                rho=self.rho,
                bounds=self.bounds,
                generator=gen,
                norm=self.norm,
                eot_iter=self.eot_iter,
                early_stop=self.early_stop,
                compact_every=self.compact_every,
            )

        robust, _ = clean_targets(model, x, y, None, clean_logits)
        return attack_rounds(x, robust, range(self.n_restarts), run)
