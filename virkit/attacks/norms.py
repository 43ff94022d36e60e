"""The threat models: L-inf and L2 balls around the input, intersected with the box of valid inputs.

Every attack draws its perturbation in one of them (``norm='Linf'`` or ``'L2'``). What the two share
is written once here: per-example norms, the projection onto the ball and then the box (in that
order, as the official AutoAttack / FAB / Square code does), the steepest-ascent direction of a
gradient (its sign for L-inf, the gradient divided by its L2 norm for L2) and the random starts.

Default radii: 8/255 for L-inf, 0.5 for L2 (CIFAR-10, RobustBench's threat models).
"""

from __future__ import annotations

import torch

__all__ = [
    "NORMS",
    "DEFAULT_EPS",
    "check_norm",
    "per_example_norm",
    "project",
    "project_l2",
    "steepest",
    "random_in_ball",
    "random_on_sphere",
]

NORMS = ("Linf", "L2")
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}
_TINY = 1e-12


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return norm


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view((-1,) + (1,) * (like.dim() - 1))


def per_example_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """``||d_i||`` per example (first dimension), in the dtype of ``d``."""
    flat = d.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(1)
    if norm == "L2":
        return flat.pow(2).sum(1).sqrt()
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def project_l2(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """Onto the L2 ball of radius ``eps`` around ``x`` (``x + d / ||d|| * min(eps, ||d||)``, the
    formula of the official APGD code), then onto the box. ``eps`` is a number or one per example."""
    d = x_adv - x
    n = per_example_norm(d, "L2")
    e = eps if not torch.is_tensor(eps) else eps.to(n.dtype)
    factor = torch.minimum(torch.as_tensor(e, dtype=n.dtype, device=n.device).expand_as(n), n) / (n + _TINY)
    out = x + d * _view(factor, d)
    return out.clamp(bounds[0], bounds[1]) if bounds is not None else out


def project(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    eps: float,
    norm: str = "Linf",
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """Onto the ``norm`` ball of radius ``eps`` around ``x``, then onto the box ``bounds``."""
    if norm == "Linf":
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
        return x_adv.clamp(bounds[0], bounds[1]) if bounds is not None else x_adv
    if norm == "L2":
        return project_l2(x_adv, x, eps, bounds)
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def steepest(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit step of steepest ascent for ``g`` in ``norm``: ``sign(g)`` (L-inf) or
    ``g / ||g||_2`` (L2, with 1e-12 added to the norm as the official APGD code)."""
    if norm == "Linf":
        return g.sign()
    if norm == "L2":
        return g / _view(per_example_norm(g, "L2") + _TINY, g)
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def random_on_sphere(x: torch.Tensor, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random direction of unit ``norm`` per example: for L-inf ``t / ||t||_inf`` with ``t``
    uniform in [-1, 1] (APGD's start), for L2 ``t / ||t||_2`` with ``t`` standard normal."""
    if norm == "Linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return t / _view(per_example_norm(t, norm).clamp_min(_TINY), t)


def random_in_ball(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD's uniform start: ``U(-eps, eps)`` per coordinate for L-inf; for L2 a random direction
    times a radius ``U(0, 1) * eps`` (as torchattacks' PGDL2). Not clipped to the box."""
    if norm == "Linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    r = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
    return random_on_sphere(x, "L2", generator) * _view(r * eps, x)
