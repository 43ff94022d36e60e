"""Training methods: each is a loss built from ``reduction='none'`` parts combined explicitly.

One function, :func:`method_step`, crafts the training attack and computes the loss for every
method; :data:`METHODS` holds each method's family, attack and defaults. The semantics follow
the official code of each baseline (see docs/BASELINES.md):

=============  =========  ===========  =============================================================
method         attack     start        loss per example i (then mean over the batch)
=============  =========  ===========  =============================================================
natural        none       --           CE(f(x_i), y_i)
at             PGD CE     uniform      CE(f(x'_i), y_i)                                (Madry et al.)
trades         PGD KL     normal       CE(f(x_i), y_i) + (1/lambda) KL_i                (TRADES code)
mart           PGD CE     normal       BCE_i + beta KL_i (1 - p_y(x_i))                    (MART code)
gairat         PGD CE     uniform      w_i CE(f(x'_i), y_i), w = GAIR Tanh(kappa)        (GAIRAT code)
mail-at        PGD CE     normal       w_i CE(f(x'_i), y_i), w = 3 sigmoid(...)            (MAIL code)
mail-trades    PGD KL     normal       CE(f(x_i), y_i) + (1/lambda) w_i KL_i               (MAIL code)
vir-at         PGD CE     normal       w_i CE(f(x'_i), y_i), w = S_v S_d + beta      (Eq. 8, Alg. 1)
vir-trades     PGD KL     normal       CE(f(x_i), y_i) + (1/lambda) w_i KL_i                  (Eq. 10)
vir-at-sv/-sd, vir-trades-sv/-sd: Tables 6-7 ablations, w = S_v or w = S_d alone.
vir-at-w1      PGD CE     normal       CE(f(x'_i), y_i): the VIR pipeline with w = 1 (Table 6, first row)
vir-at-mean1, vir-trades-mean1: VIR's weights rescaled to batch mean 1 (redistribution only)
vir-at-flat, vir-trades-flat: every example gets VIR's batch-mean weight (rescaling only)
=============  =========  ===========  =============================================================

The last two pairs are the scale-matched control: with the paper's raw weights the mean VIR-AT
weight after burn-in is far below 1, so the reweighted epochs take much smaller steps. ``-flat``
keeps that total weight but spreads it evenly, ``-mean1`` keeps VIR's redistribution at the
unweighted step size; together they separate *where* VIR puts its weight from *how much*.

KL_i = KL(softmax f(x_i) || softmax f(x'_i)). Before ``reweight_start`` every weight is 1; its default
follows each official code relative to the first lr drop (:attr:`MethodSpec.reweight_delay`).
Crafting always runs with the model in eval mode (as every official code does) and restores it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from virkit import reweighting as rw
from virkit.attacks import eval_mode, pgd
from virkit.ops import kl_per_example

__all__ = ["METHODS", "MethodSpec", "method_step", "compute_step", "reweighting_active", "method_names", "StepOutput"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # natural | at | trades | mart
    attack_loss: str | None  # ce | kl | None
    random_start: str  # uniform | normal
    weighting: str  # none | vir | vir-sv | vir-sd | gairat | mail
    description: str
    defaults: dict = field(default_factory=dict)
    #: the default first reweighted epoch is the first lr milestone + this: 1 is the first epoch at
    #: the lowered lr (VIR: "on the 76th epoch" with the drop after 75; GAIRAT's code: begin_epoch =
    #: its first lr drop), 2 is one epoch later (MAIL's code: a 0-based ``epoch > 75``, lr dropped at 75)
    reweight_delay: int = 1
    #: what happens to the weights of a batch: none | mean1 (rescaled to batch mean 1) | flat (every
    #: example gets the batch mean)
    weight_transform: str = "none"

    @property
    def reweighted(self) -> bool:
        return self.weighting != "none"


_VIR_AT = {"alpha": 7.0, "beta": 0.007, "gamma": 10.0}  # Sec. 5.3
_VIR_TRADES = {"alpha": 8.0, "beta": 1.6, "gamma": 3.0, "trades_beta": 5.0}  # Sec. 5.3, 1/lambda = 5

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("natural", "natural", None, "none", "none", "standard training on natural images"),
        MethodSpec("at", "at", "ce", "uniform", "none", "PGD adversarial training (Madry et al. 2018)"),
        MethodSpec(
            "trades",
            "trades",
            "kl",
            "normal",
            "none",
            "TRADES (Zhang et al. 2019), 1/lambda=4 (RN-18)",
            {"trades_beta": 4.0},
        ),
        MethodSpec("mart", "mart", "ce", "normal", "none", "MART (Wang et al. 2019), beta=5", {"trades_beta": 5.0}),
        MethodSpec("gairat", "at", "ce", "uniform", "gairat", "GAIRAT (Zhang et al. 2020), Tanh weights, lambda=-1"),
        MethodSpec(
            "mail-at",
            "at",
            "ce",
            "normal",
            "mail",
            "MAIL-AT (Liu et al. 2021), gamma(slope)=10, beta(bias)=-0.5",
            {"gamma": 10.0, "beta": -0.5},
            reweight_delay=2,
        ),
        MethodSpec(
            "mail-trades",
            "trades",
            "kl",
            "normal",
            "mail",
            "MAIL-TRADES (Liu et al. 2021), gamma(slope)=2, beta(bias)=0, 1/lambda=5",
            {"gamma": 2.0, "beta": 0.0, "trades_beta": 5.0},
            reweight_delay=2,
        ),
        MethodSpec("vir-at", "at", "ce", "normal", "vir", "VIR-AT (Eq. 8): alpha=7, beta=0.007, gamma=10", _VIR_AT),
        MethodSpec(
            "vir-trades",
            "trades",
            "kl",
            "normal",
            "vir",
            "VIR-TRADES (Eq. 10): alpha=8, beta=1.6, gamma=3, 1/lambda=5",
            _VIR_TRADES,
        ),
        MethodSpec("vir-at-sv", "at", "ce", "normal", "vir-sv", "Table 6 ablation: S_v * CE(x')", _VIR_AT),
        MethodSpec("vir-at-sd", "at", "ce", "normal", "vir-sd", "Table 6 ablation: S_d * CE(x')", _VIR_AT),
        MethodSpec(
            "vir-trades-sv", "trades", "kl", "normal", "vir-sv", "Table 7 ablation: CE + (1/lambda) S_v KL", _VIR_TRADES
        ),
        MethodSpec(
            "vir-trades-sd", "trades", "kl", "normal", "vir-sd", "Table 7 ablation: CE + (1/lambda) S_d KL", _VIR_TRADES
        ),
        MethodSpec(
            "vir-at-w1",
            "at",
            "ce",
            "normal",
            "none",
            "Table 6 first row: the VIR-AT pipeline (0.001 N(0, I) start, Algorithm 1) with w = 1",
            _VIR_AT,
        ),
        MethodSpec(
            "vir-at-mean1",
            "at",
            "ce",
            "normal",
            "vir",
            "control: VIR-AT weights rescaled to batch mean 1",
            _VIR_AT,
            weight_transform="mean1",
        ),
        MethodSpec(
            "vir-at-flat",
            "at",
            "ce",
            "normal",
            "vir",
            "control: every example gets VIR-AT's batch-mean weight (same total weight, no redistribution)",
            _VIR_AT,
            weight_transform="flat",
        ),
        MethodSpec(
            "vir-trades-mean1",
            "trades",
            "kl",
            "normal",
            "vir",
            "control: VIR-TRADES weights rescaled to batch mean 1",
            _VIR_TRADES,
            weight_transform="mean1",
        ),
        MethodSpec(
            "vir-trades-flat",
            "trades",
            "kl",
            "normal",
            "vir",
            "control: every example gets VIR-TRADES' batch-mean weight (same total weight, no redistribution)",
            _VIR_TRADES,
            weight_transform="flat",
        ),
    ]
}

MAIL_SCALE = 3.0  # MAIL's official constant multiplier on the sigmoid (docs/BASELINES.md)


def method_names() -> list[str]:
    return list(METHODS)


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to backpropagate
    loss_per_example: torch.Tensor  # detached, (B,)
    weights: torch.Tensor  # detached per-example weights actually used, (B,)
    logits_adv: torch.Tensor | None  # detached training-forward logits on x' (None for natural)
    x_adv: torch.Tensor | None


class StepConfig(Protocol):
    """What a step reads of its configuration, a :class:`virkit.training.config.TrainConfig` (named by
    its fields here: that module imports this one)."""

    method: str
    reweight_start: int | None
    eps: float
    step_size: float
    attack_steps: int
    random_start: str | None
    gairat_lambda: float
    weight_logits: str
    weight_norm: str
    batch_reduction: str
    trades_forwards: int

    def hp(self, name: str) -> Any: ...


def _reduce(v: torch.Tensor, how: str) -> torch.Tensor:
    return v.sum() if how == "sum" else v.mean()


def reweighting_active(cfg: StepConfig, epoch: int) -> bool:
    """Whether ``cfg.method`` reweights in (1-based) ``epoch``: from ``cfg.reweight_start`` on."""
    return METHODS[cfg.method].reweighted and epoch >= cfg.reweight_start


def method_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: StepConfig,
    epoch: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """Craft the training attack for ``cfg.method`` and return the loss for one batch.

    ``epoch`` is 1-based; reweighting is active from ``cfg.reweight_start`` on. ``autocast`` is a
    context-manager factory for mixed precision (None: fp32). The step itself is
    :func:`compute_step`, which :mod:`virkit.training.losses` calls too.
    """
    return compute_step(model, x, y, cfg, reweighting_active(cfg, epoch), autocast, generator)


def compute_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: StepConfig,
    active: bool,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """The one implementation of every method's step: attack -> weights -> loss.

    ``cfg`` is a :class:`virkit.training.config.TrainConfig` (its method, attack and hyperparameters);
    ``active`` says whether the weights are on (before the reweighting start every weight is 1).
    The training forwards run in the model's current mode (the trainer puts it in train mode);
    crafting and the eval-mode weight logits switch to eval mode and restore it.
    """
    spec = METHODS[cfg.method]
    ac = autocast or contextlib.nullcontext
    active = spec.reweighted and bool(active)
    b = x.shape[0]
    ones = torch.ones(b, device=x.device)

    if spec.family == "natural":
        with ac():
            logits = model(x)
        lvec = F.cross_entropy(logits.float(), y, reduction="none")
        return StepOutput(_reduce(lvec, cfg.batch_reduction), lvec.detach(), ones, None, None)

    # ---- 1. craft x' in eval mode (BatchNorm uses running statistics, as every official code) ----
    start = cfg.random_start or spec.random_start
    need_kappa = spec.weighting == "gairat" and active
    with eval_mode(model):
        logits_nat_eval = None
        if spec.attack_loss == "kl" or (active and spec.weighting.startswith("vir") and cfg.weight_logits == "eval"):
            with torch.no_grad(), ac():
                logits_nat_eval = model(x).float()
        with ac():
            out = pgd(
                model,
                x,
                y,
                eps=cfg.eps,
                step_size=cfg.step_size,
                steps=cfg.attack_steps,
                loss=spec.attack_loss,
                random_start=start,
                target_logits=logits_nat_eval,
                generator=generator,
                count_correct=need_kappa,
            )
        x_adv, kappa = out if need_kappa else (out, None)
        logits_adv_eval = None
        if active and spec.weighting.startswith("vir") and cfg.weight_logits == "eval":
            with torch.no_grad(), ac():
                logits_adv_eval = model(x_adv).float()

    # ---- 2. training forwards in train mode -------------------------------------------------------
    with ac():
        if spec.family == "trades" and cfg.trades_forwards == 3:
            # as the official trades.py: model(x) for the CE term, then model(x') and model(x) again
            # for the KL term, so BatchNorm's running statistics see x, x', x. In train mode the
            # third forward's output equals the first's, so its gradient is the first's: run it
            # without a graph, for the statistics alone
            logits_nat = model(x)
            logits_adv = model(x_adv)
            with torch.no_grad():
                model(x)
        else:
            logits_adv = model(x_adv)
            logits_nat = model(x) if spec.family in ("trades", "mart") else None
        if active and spec.weighting.startswith("vir") and cfg.weight_logits == "train" and logits_nat is None:
            with torch.no_grad():
                logits_nat_w = model(x)  # extra natural forward in train mode (updates BN statistics)
    logits_adv = logits_adv.float()
    logits_nat = logits_nat.float() if logits_nat is not None else None

    # ---- 3. per-example weights (values: no gradient) --------------------------------------------
    w = ones
    if active:
        if spec.weighting.startswith("vir"):
            if cfg.weight_logits == "eval":
                ln, la = logits_nat_eval, logits_adv_eval
            else:
                ln = logits_nat.detach() if logits_nat is not None else logits_nat_w.float()
                la = logits_adv.detach()
            comp = {"vir": "both", "vir-sv": "sv", "vir-sd": "sd"}[spec.weighting]
            w = rw.vir_weights(ln, la, y, cfg.hp("alpha"), cfg.hp("gamma"), cfg.hp("beta"), comp)
        elif spec.weighting == "gairat":
            w = rw.gairat_weights(kappa, cfg.attack_steps, cfg.gairat_lambda)
        elif spec.weighting == "mail":
            # MAIL's official code uses the (detached) train-mode logits of the training forward
            w = rw.mail_weights(logits_adv.detach(), y, cfg.hp("gamma"), cfg.hp("beta"), MAIL_SCALE)
        if (cfg.weight_norm == "mean1" and spec.weighting not in ("gairat",)) or spec.weight_transform == "mean1":
            w = rw.normalize_batch_mean(w)
        elif spec.weight_transform == "flat":
            w = w.mean().expand_as(w).clone()  # the batch's total weight, spread evenly
        w = w.detach()

    # ---- 4. loss ------------------------------------------------------------------------------------
    if spec.family == "at":
        lvec = w * F.cross_entropy(logits_adv, y, reduction="none")
    elif spec.family == "trades":
        kl = kl_per_example(logits_nat, logits_adv)  # differentiable in both arguments (as TRADES)
        lvec = F.cross_entropy(logits_nat, y, reduction="none") + cfg.hp("trades_beta") * w * kl
    elif spec.family == "mart":
        lvec = _mart_per_example(logits_nat, logits_adv, y, cfg.hp("trades_beta"))
    else:  # pragma: no cover
        raise ValueError(spec.family)
    return StepOutput(_reduce(lvec, cfg.batch_reduction), lvec.detach(), w, logits_adv.detach(), x_adv)


def _mart_per_example(logits_nat, logits_adv, y, beta):
    """MART (Wang et al. 2019) as in its official code, per example:

    BCE_i = CE(f(x'_i), y_i) - log(1.0001 - p_{y~}(x'_i) + 1e-12), y~ the most likely wrong class on x';
    KL_i = KL(p(x_i) || p(x'_i)) computed as in the code (nn.KLDivLoss on log(adv probs + 1e-12));
    loss_i = BCE_i + beta * KL_i * (1.0000001 - p_y(x_i)); p_y(x_i) is not detached (as the code)."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.topk(adv_probs, 2, dim=1).indices
    new_y = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    bce = F.cross_entropy(logits_adv, y, reduction="none") - torch.log(
        1.0001 - adv_probs.gather(1, new_y.view(-1, 1)).squeeze(1) + 1e-12
    )
    nat_probs = F.softmax(logits_nat, dim=1)
    # nn.KLDivLoss(reduction='none')(log(adv + 1e-12), nat) = xlogy(nat, nat) - nat * log(adv + 1e-12)
    kl = (torch.special.xlogy(nat_probs, nat_probs) - nat_probs * torch.log(adv_probs + 1e-12)).sum(dim=1)
    true_probs = nat_probs.gather(1, y.view(-1, 1)).squeeze(1)
    return bce + beta * kl * (1.0000001 - true_probs)
