"""Per-example quantities on logits that the methods, the weights and the attacks share, written once.

* :func:`kl_per_example`: ``KL(softmax p || softmax q)`` per example -- TRADES' loss and attack
  loss, and the VIR discrepancy score S_d (Eq. 6);
* :func:`true_and_best_other`: the true-class value and the best other value per example -- the
  logit margin of APGD, Square, SPSA and MD, the DLR and CW losses, and MAIL's probability margin.

Both are plain tensor functions: no casts beyond the ones documented, gradients flow through
them, and callers decide about ``torch.no_grad()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["log_probs", "kl_per_example", "true_and_best_other"]


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the classes (dim 1), computed in fp32 whatever the logits' dtype."""
    return F.log_softmax(logits.float(), dim=1)


def kl_per_example(
    logits_p: torch.Tensor | None, logits_q: torch.Tensor, *, logp: torch.Tensor | None = None
) -> torch.Tensor:
    """``KL(softmax(logits_p) || softmax(logits_q))`` per example (shape B), in nats, computed in fp32
    from log-probabilities as ``sum_k p_k (log p_k - log q_k)`` with ``p_k = exp(log p_k)``.

    Differentiable in both arguments. ``logp`` passes ``log_probs(logits_p)`` already computed
    (an attack holds the natural distribution fixed over its steps); ``logits_p`` is then unused.
    The value can be a rounding error below 0 when the two distributions (nearly) coincide.
    """
    if logp is None:
        assert logits_p is not None, "kl_per_example needs logits_p or logp"
        logp = log_probs(logits_p)
    logq = log_probs(logits_q)
    return (logp.exp() * (logp - logq)).sum(dim=1)


def true_and_best_other(values: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values[i, y_i], max_{j != y_i} values[i, j])`` per row of a B x K tensor (logits or
    probabilities), in the dtype of ``values`` (callers cast first where they compute in fp32).
    Differentiable; with ties for the best other class the gradient is shared among them (``amax``)."""
    col = y.view(-1, 1)
    true = values.gather(1, col).squeeze(1)
    best_other = values.scatter(1, col, float("-inf")).amax(dim=1)
    return true, best_other
