"""Every training method of virkit as a loss for your own training loop.

::

    from virkit.training.losses import method_loss

    vir_at = method_loss("vir-at")            # Eq. 8, the paper's defaults, weights from epoch 76
    for epoch in range(1, 116):
        model.train()
        for x, y in loader:                  # x: images in [0, 1], y: class indices
            out = vir_at(model, x, y, epoch=epoch)
            opt.zero_grad()
            out.loss.backward()
            opt.step()

A :class:`MethodLoss` crafts the method's training attack (PGD with the method's loss and random
start), computes the per-example weights and returns the loss and the weights as a
:class:`LossResult`. It runs :func:`virkit.training.methods.compute_step`, the very function behind
``virkit train`` (:func:`virkit.training.methods.method_step` calls it too), so a loss from here is the loss
virkit trains with, bit for bit, for the same model, batch, settings and random stream.

The methods and their equations in the paper (VIR, Sec. 3-4):

============================  ==============================================================
method                        loss per example i, then the mean over the batch
============================  ==============================================================
``natural``                   CE(f(x_i), y_i)
``at``                        CE(f(x'_i), y_i), x' from PGD on Eq. (1) (Madry et al.)
``trades``                    CE(f(x_i), y_i) + (1/lambda) KL(f(x_i) || f(x'_i))  (Eq. 9)
``mart``                      MART's BCE + beta KL (1 - p_y(x_i))  (Wang et al. 2019, its code)
``gairat``                    w_i CE(f(x'_i), y_i), w from Eq. (2), batch mean 1
``mail-at`` / ``mail-trades``  w_i CE(f(x'_i), y_i) / CE + (1/lambda) w_i KL, w from Eq. (3)-(4)
``vir-at``                    w_i CE(f(x'_i), y_i)  (Eq. 8), w = S_v S_d + beta  (Eq. 5-7)
``vir-trades``                CE(f(x_i), y_i) + (1/lambda) w_i KL  (Eq. 10)
ablations and controls        ``vir-at-sv``, ``-sd``, ``-w1``, ``-mean1``, ``-flat`` and the
                              ``vir-trades-`` ones (docs/USAGE.md, Methods)
============================  ==============================================================

Defaults are the paper's (Sec. 5.1, 5.3) or the official code's, as :class:`virkit.training.config.TrainConfig`
holds them: PGD-10, eps 8/255, step 2/255; VIR-AT alpha 7, beta 0.007, gamma 10; VIR-TRADES alpha 8,
beta 1.6, gamma 3, 1/lambda 5; TRADES 1/lambda 4; MART beta 5; MAIL and GAIRAT as their code. The
loss is the batch *mean* of w_i L_i, as every baseline's code reduces (``batch_reduction="sum"``
gives the sums of Eq. 8 and 10 literally). Weights are values, never differentiated (Sec. 4.2);
before the reweighting start every weight is 1 (``epoch=`` or ``active=`` of each call).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from virkit.errors import VirkitError, check_choice
from virkit.training.methods import METHODS, compute_step, reweighting_active

if TYPE_CHECKING:
    from virkit.training.config import TrainConfig

__all__ = ["LossResult", "MethodLoss", "method_loss", "method_names", "SETTINGS"]

#: the :class:`virkit.training.config.TrainConfig` fields that shape a method's loss, and what they mean
SETTINGS: dict[str, str] = {
    "eps": "L-inf radius of the training attack, a fraction of the [0, 1] range (8/255)",
    "step_size": "PGD step (2/255)",
    "attack_steps": "PGD steps (10)",
    "random_start": "PGD start: the method's own (None), 'uniform', 'normal' (0.001 N(0, I)) or 'none'",
    "reweight_start": "first reweighted epoch, 1-based (None: the method's own for the schedule below)",
    "epochs": "length of the schedule the default reweight_start is taken from (115)",
    "lr_milestones": "lr drops of that schedule ((75, 90)); VIR and GAIRAT reweight from the first + 1",
    "alpha": "VIR's S_v scale (Eq. 5)",
    "gamma": "VIR's S_v exponent (Eq. 5) / MAIL's slope (Eq. 4)",
    "beta": "VIR's additive floor (Eq. 7) / MAIL's bias (Eq. 4)",
    "trades_beta": "1/lambda of TRADES, VIR-TRADES, MAIL-TRADES (Eq. 9-10); MART's beta",
    "gairat_lambda": "GAIRAT's lambda (Eq. 2, -1)",
    "weight_logits": "'eval': weight logits from extra no-grad eval-mode forwards; 'train': the training ones",
    "weight_norm": "'none' (raw weights, Algorithm 1) or 'mean1' (batch mean 1)",
    "batch_reduction": "'mean' of w_i L_i over the batch (the baselines' code) or 'sum' (Eq. 8, 10)",
    "trades_forwards": "TRADES-family train-mode forwards: 3 (x, x', x as trades.py) or 2",
}


def method_names() -> list[str]:
    """Every method :func:`method_loss` accepts (the methods table, docs/USAGE.md "Methods")."""
    return list(METHODS)


@dataclass(frozen=True)
class LossResult:
    """What one call of a :class:`MethodLoss` returns.

    ``loss``: the scalar to backpropagate (batch mean of ``w_i * L_i``, or the sum).
    ``weights``: the per-example weights used, shape (B,), detached (all 1 before the reweighting start
    and for unweighted methods). ``loss_per_example``: ``w_i * L_i``, detached. ``x_adv``: the training
    attack's examples, detached (None for ``natural``). ``reweighting``: whether the weights were on.
    """

    loss: torch.Tensor
    weights: torch.Tensor
    loss_per_example: torch.Tensor
    x_adv: torch.Tensor | None
    reweighting: bool


class MethodLoss:
    """One method of the methods table as a callable ``loss(model, x, y, epoch=...) -> LossResult``.

    Build it with :func:`method_loss`. ``settings`` shows the resolved attack and hyperparameters;
    ``config`` is the :class:`virkit.training.config.TrainConfig` behind them.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.method = config.method
        self.spec = METHODS[config.method]

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved settings of this loss (method defaults filled in)."""
        cfg = self.config
        out = {k: getattr(cfg, k) for k in SETTINGS if k not in ("alpha", "gamma", "beta", "trades_beta")}
        out["random_start"] = cfg.random_start or self.spec.random_start
        for k in ("alpha", "gamma", "beta", "trades_beta"):
            if cfg.hp(k) is not None:
                out[k] = cfg.hp(k)
        return {"method": self.method, **out}

    def __repr__(self) -> str:
        s = self.settings
        start = f", reweight_start={s['reweight_start']}" if self.spec.reweighted else ""
        return f"MethodLoss({self.method!r}, eps={s['eps']:.5g}, steps={s['attack_steps']}{start})"

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epoch: int | None = None,
        active: bool | None = None,
        generator: torch.Generator | None = None,
        autocast: Callable | None = None,
    ) -> LossResult:
        """The loss of one batch.

        ``x``: float images in [0, 1], shape (B, ...); ``y``: class indices, shape (B,). Put the model in
        train mode first, as for any training step: the training forwards run in its current mode,
        while the attack and the weight logits run in eval mode (restored after). ``epoch`` (1-based)
        turns the weights on from ``reweight_start``; or say it directly with ``active``. A reweighted
        method needs one of the two. ``generator`` draws the attack's random start (default: torch's
        global stream); ``autocast``: a context-manager factory for mixed precision (None: fp32).
        """
        if epoch is not None and active is not None:
            raise VirkitError(
                "pass epoch= or active=, not both: epoch turns the weights on from reweight_start, "
                "active turns them on or off directly"
            )
        if epoch is not None:
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise VirkitError(f"epoch={epoch!r} must be a 1-based epoch number (1, 2, ...)")
            on = reweighting_active(self.config, epoch)
        elif active is not None:
            on = bool(active)
        elif self.spec.reweighted:
            raise VirkitError(
                f"method {self.method!r} reweights from epoch {self.config.reweight_start}: pass "
                "epoch=E (1-based) or active=True/False to each call"
            )
        else:
            on = False
        _check_batch(x, y)
        out = compute_step(model, x, y, self.config, on, autocast, generator)
        return LossResult(out.loss, out.weights.detach(), out.loss_per_example, out.x_adv, on and self.spec.reweighted)


def method_loss(method: str, **settings: Any) -> MethodLoss:
    """The loss of ``method`` (any name of :func:`method_names`) with the paper's defaults, changed by
    ``settings`` (names and meanings in :data:`SETTINGS`; eps and step sizes as fractions of 255).

    Unknown methods, unknown settings and values out of range raise :class:`virkit.VirkitError`.
    """
    from virkit.training.config import TrainConfig, validate

    check_choice("method", method, METHODS)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise VirkitError(
            f"unknown setting(s) {', '.join(unknown)} for method_loss; valid settings: {', '.join(SETTINGS)}"
        )
    values = {k: v for k, v in settings.items() if v is not None}
    if "lr_milestones" in values:
        values["lr_milestones"] = tuple(values["lr_milestones"])
    cfg = TrainConfig(method=method, preset="paper", **values)  # the dataclass defaults are the paper's
    validate(cfg)
    return MethodLoss(cfg)


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise VirkitError("x must be a float tensor of images in [0, 1]; convert uint8 images with x.float() / 255")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise VirkitError(
            f"y must be a 1-D int64 tensor of class indices, one per image of x ({x.shape[0]}); "
            f"got {getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}"
        )
    if bool(((x < 0) | (x > 1)).any()):
        raise VirkitError(
            "x holds values outside [0, 1]; pass images in [0, 1] (normalize inside the model, "
            "e.g. virkit.build_model(..., mean, std))"
        )
