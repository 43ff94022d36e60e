"""Instance weights for adversarial training: VIR (the paper's Eq. 5-7), GAIRAT (Eq. 2) and MAIL (Eq. 3-4).

Every function here is pure: it takes logits (or counts) and returns one weight per example,
computed under ``torch.no_grad()`` and detached, so no gradient ever flows through a weight
(Sec. 4.2: "it is used as a weighting (a value) and the gradient ... is not used").

Where the baselines' official code fixes a constant, the constant is the official one and the
docstring says so; see ``docs/BASELINES.md`` for the sources.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from virkit.ops import kl_per_example, true_and_best_other

__all__ = [
    "true_class_probability",
    "vulnerability_score",
    "discrepancy_score",
    "vir_weights",
    "gairat_weights",
    "mail_weights",
    "probability_margin",
    "normalize_batch_mean",
]


@torch.no_grad()
def true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p_y(x) = softmax(logits)[y], computed in fp32. Shape (B,)."""
    return F.softmax(logits.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)


@torch.no_grad()
def vulnerability_score(logits_nat: torch.Tensor, y: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """S_v(x, y) = alpha * exp(-gamma * p_y(x))  (Eq. 5).

    Low true-class probability on the natural input means a vulnerable example and a large score.
    Range: (alpha * exp(-gamma), alpha].
    """
    return alpha * torch.exp(-gamma * true_class_probability(logits_nat, y))


@torch.no_grad()
def discrepancy_score(logits_nat: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """S_d(x, x') = KL(softmax(f(x)) || softmax(f(x')))  per example (Eq. 6), in nats, >= 0.

    Computed from log-probabilities in fp32 (:func:`virkit.ops.kl_per_example`), clamped at 0.
    """
    return kl_per_example(logits_nat, logits_adv).clamp_min(0.0)


@torch.no_grad()
def vir_weights(
    logits_nat: torch.Tensor,
    logits_adv: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    gamma: float,
    beta: float,
    components: str = "both",
) -> torch.Tensor:
    """w(x, x', y) = S_v(x, y) * S_d(x, x') + beta  (Eq. 7).

    ``components`` selects the ablations of Tables 6-7: ``"both"`` (Eq. 7), ``"sv"`` (S_v alone)
    or ``"sd"`` (S_d alone). The ablation rows of the paper multiply the loss by S_v or S_d alone,
    without beta, so ``beta`` is only added for ``"both"``.
    """
    if components == "both":
        return vulnerability_score(logits_nat, y, alpha, gamma) * discrepancy_score(logits_nat, logits_adv) + beta
    if components == "sv":
        return vulnerability_score(logits_nat, y, alpha, gamma)
    if components == "sd":
        return discrepancy_score(logits_nat, logits_adv)
    raise ValueError(f"components must be 'both', 'sv' or 'sd', got {components!r}")


@torch.no_grad()
def normalize_batch_mean(w: torch.Tensor) -> torch.Tensor:
    """Rescale weights so that their batch mean is 1 (GAIRAT's normalization)."""
    return w * (w.numel() / w.sum().clamp_min(1e-12))


@torch.no_grad()
def gairat_weights(kappa: torch.Tensor, num_steps: int, lam: float) -> torch.Tensor:
    """GAIRAT's Tanh weight (Eq. 2), as in its official code, normalized to batch mean 1.

    ``kappa`` counts the PGD iterations at which the example was still classified correctly
    (GAIRAT increments it before each step when the prediction on the current iterate equals the
    label), so a large kappa means far from the boundary and a small weight:

        w = (1 + tanh(lam + 5 * (1 - 2 * kappa / K))) / 2,   K = num_steps,

    which the official code writes as ``tanh(lam + (K//2 - kappa) * 5 / (K//2))``; for even K the two
    are identical. We follow the official integer form ``K // 2``. The result is multiplied by
    ``B / sum(w)`` so the batch mean is 1.
    """
    half = max(num_steps // 2, 1)
    w = (torch.tanh(lam + (half - kappa.float()) * 5.0 / half) + 1.0) / 2.0
    return normalize_batch_mean(w)


@torch.no_grad()
def probability_margin(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PM(x', y) = p_y(x') - max_{j != y} p_j(x')  (Eq. 3), in [-1, 1]."""
    p_true, p_other = true_and_best_other(F.softmax(logits_adv.float(), dim=1), y)
    return p_true - p_other


@torch.no_grad()
def mail_weights(
    logits_adv: torch.Tensor, y: torch.Tensor, gamma: float, beta: float, scale: float = 1.0
) -> torch.Tensor:
    """MAIL's weight (Eq. 4): ``scale * sigmoid(-gamma * (PM - beta))``.

    MAIL's official code computes ``3 * sigmoid(slope * (m + bias))`` on the margin
    ``m = max_{j!=y} p_j(x') - p_y(x') = -PM``, which is the same function with the paper's
    ``gamma = slope`` and ``beta = bias``. Official defaults (its README): MAIL-AT bias -0.5,
    slope 10; MAIL-TRADES bias 0, slope 2; the constant ``scale = 3`` is a fixed multiplier, not a
    batch normalization. See docs/BASELINES.md.
    """
    return scale * torch.sigmoid(-gamma * (probability_margin(logits_adv, y) - beta))
