"""Adversarial attacks, one call signature: ``attack = get_attack(name, **overrides)``, then
``x_adv = attack(model, x, y)``. :data:`ATTACK_PRESETS` maps the names used on the command line
(``pgd100``, ``cw``, ...) to a registered class and the paper's settings."""
from __future__ import annotations

from ..errors import VirkitError, check_choice
from . import pgd as _pgd  # noqa: F401  (registers fgsm, pgd, cw)
from .base import ATTACKS, Attack, eval_mode, project_linf
from .pgd import attack_loss, cw_margin_loss, pgd

__all__ = ["ATTACKS", "ATTACK_PRESETS", "Attack", "attack_loss", "cw_margin_loss", "eval_mode", "get_attack",
           "pgd", "project_linf", "attack_names"]

# CLI name -> (registered class name, keyword settings). Settings follow Sec. 5.4 of the paper.
ATTACK_PRESETS: dict[str, tuple[str, dict]] = {
    "fgsm": ("fgsm", {}),
    "pgd10": ("pgd", {"steps": 10, "step_size": 2 / 255}),
    "pgd20": ("pgd", {"steps": 20, "step_size": 1 / 255}),
    "pgd100": ("pgd", {"steps": 100, "step_size": 1 / 255}),
    "cw": ("cw", {"steps": 20, "step_size": 1 / 255, "kappa": 50.0}),
}


def attack_names() -> list[str]:
    return ["natural", *ATTACK_PRESETS]


def get_attack(name: str, eps: float = 8 / 255, seed: int = 0, **overrides) -> Attack:
    """Build the attack registered as ``name`` (a CLI preset such as ``pgd100`` or a registered
    class name such as ``pgd``) with the paper's settings, overridden by ``overrides``."""
    if name in ATTACK_PRESETS:
        cls_name, settings = ATTACK_PRESETS[name]
    elif name in ATTACKS:
        cls_name, settings = name, {}
    else:
        check_choice("attack", name, attack_names())
        raise VirkitError(f"unknown attack {name!r}")  # pragma: no cover
    kwargs = {**settings, **overrides, "eps": eps, "seed": seed}
    return ATTACKS[cls_name](**kwargs)
