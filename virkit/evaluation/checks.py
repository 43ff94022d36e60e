"""The checks an adversarial example passes before it is scored: the right shape, finite, in the eps-ball
of the threat model (L-inf, or L2 per example) around its input and in the box (:func:`check_adversarial`,
which raises :class:`AdversarialCheckError`), each up to a float32 rounding tolerance; and what survives
saving it as an 8-bit image (:func:`quantize`), which may leave the ball by at most half a level
(:data:`UINT8_SLACK`). An attack that fails them has a bug: the evaluation stops rather than score it.
"""

from __future__ import annotations

import math

import torch

from virkit.attacks import per_example_norm

__all__ = ["check_adversarial", "AdversarialCheckError", "quantize", "TOLERANCE", "L2_TOLERANCE", "UINT8_SLACK"]

TOLERANCE = 1e-6
#: an L2 norm summed over thousands of float32 coordinates carries a larger rounding error
L2_TOLERANCE = 1e-5
#: rounding an adversarial image to the nearest /255 value moves each pixel by at most half a level
UINT8_SLACK = 0.5 / 255


class AdversarialCheckError(RuntimeError):
    """An attack returned a point outside the eps-ball or the box: a bug in the attack."""


def check_adversarial(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    eps: float,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    tol: float | None = None,
    name: str = "attack",
    norm: str = "Linf",
) -> None:
    """Raise :class:`AdversarialCheckError` unless ``x_adv`` has the shape of ``x``, is finite, lies in the
    ``norm`` ball of radius ``eps`` around ``x`` (L-inf, or L2 per example) and in ``bounds``, each up
    to ``tol`` (default 1e-6; 1e-5 for L2 norms)."""
    if x_adv.shape != x.shape:
        raise AdversarialCheckError(f"{name} returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}")
    if x_adv.numel() == 0:
        return
    tol = (TOLERANCE if norm == "Linf" else L2_TOLERANCE) if tol is None else tol
    diff = per_example_norm(x_adv.detach().float() - x.detach().float(), norm)
    worst = float(diff.max())
    if not math.isfinite(worst) or not bool(torch.isfinite(x_adv).all()):
        raise AdversarialCheckError(f"{name} returned non-finite values")
    if worst > eps + tol:
        raise AdversarialCheckError(
            f"{name} returned a perturbation of {'L-inf' if norm == 'Linf' else norm} norm "
            f"{worst:.8f} > eps {eps:.8f} (tolerance {tol:g}) at example "
            f"{int(diff.argmax())} of the batch"
        )
    if bounds is not None:
        lo, hi = float(x_adv.min()), float(x_adv.max())
        if lo < bounds[0] - tol or hi > bounds[1] + tol:
            raise AdversarialCheckError(f"{name} returned values in [{lo:.8f}, {hi:.8f}], outside the box {bounds}")


def quantize(x_adv: torch.Tensor) -> torch.Tensor:
    """What survives saving as an 8-bit image: each value rounded to the nearest k/255, clipped to [0, 1]."""
    return (x_adv * 255).round().clamp(0, 255) / 255
