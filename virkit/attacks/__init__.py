"""Adversarial attacks, one call signature: ``attack = get_attack(name, **overrides)``, then
``x_adv = attack(model, x, y)``. :data:`ATTACK_PRESETS` maps the names used on the command line
(``pgd100``, ``cw``, ...) to a registered class and the paper's settings."""
from __future__ import annotations

from ..errors import VirkitError, check_choice
from . import pgd as _pgd  # noqa: F401  (registers fgsm, pgd, cw)
from . import apgd as _apgd  # noqa: F401  (registers apgd, apgd-t)
from . import autoattack as _autoattack  # noqa: F401  (registers autoattack)
from . import fab as _fab  # noqa: F401  (registers fab-t)
from . import fmn as _fmn  # noqa: F401  (registers fmn)
from . import mde as _mde  # noqa: F401  (registers md, mde)
from . import spsa as _spsa  # noqa: F401  (registers spsa)
from . import square as _square  # noqa: F401  (registers square)
from .base import ATTACKS, Attack, eval_mode, project_linf
from .pgd import attack_loss, cw_margin_loss, pgd

__all__ = ["ATTACKS", "ATTACK_PRESETS", "Attack", "attack_loss", "cw_margin_loss", "eval_mode", "get_attack",
           "pgd", "project_linf", "attack_names", "white_box_attacks", "black_box_attacks"]

# CLI name -> (registered class name, keyword settings). Settings follow Sec. 5.4 of the paper.
ATTACK_PRESETS: dict[str, tuple[str, dict]] = {
    "fgsm": ("fgsm", {}),
    "pgd10": ("pgd", {"steps": 10, "step_size": 2 / 255}),
    "pgd20": ("pgd", {"steps": 20, "step_size": 1 / 255}),
    "pgd100": ("pgd", {"steps": 100, "step_size": 1 / 255}),
    "cw": ("cw", {"steps": 20, "step_size": 1 / 255, "kappa": 50.0}),
    "fmn100": ("fmn", {"steps": 100}),
    "aa": ("autoattack", {"version": "standard", "apgd_steps": 100, "n_target_classes": 9, "fab_steps": 100,
                          "square_queries": 5000}),
    "apgd-ce": ("apgd", {"loss": "ce", "steps": 100}),
    "apgd-t": ("apgd-t", {"steps": 100, "n_target_classes": 9}),
    "fab-t": ("fab-t", {"steps": 100, "n_target_classes": 9}),
    "square": ("square", {"n_queries": 5000}),
    "spsa": ("spsa", {"iterations": 100, "delta": 0.001, "lr": 0.01, "samples": 256}),
    "mde": ("mde", {"apgd_steps": 100, "md_steps": 50, "change_point": 20, "n_target_classes": 9,
                    "fab_steps": 100}),
}


def attack_names() -> list[str]:
    return ["natural", *ATTACK_PRESETS]


def white_box_attacks() -> tuple[str, ...]:
    """The preset names (as in :func:`attack_names`) of the attacks that use the model's gradients,
    from each class's ``black_box`` attribute; ``natural`` is no attack and is in neither list."""
    return tuple(n for n, (cls_name, _) in ATTACK_PRESETS.items() if not ATTACKS[cls_name].black_box)


def black_box_attacks() -> tuple[str, ...]:
    """The preset names of the score-based black-box attacks (they read only the logits)."""
    return tuple(n for n, (cls_name, _) in ATTACK_PRESETS.items() if ATTACKS[cls_name].black_box)


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
