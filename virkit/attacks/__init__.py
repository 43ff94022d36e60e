"""Adversarial attacks, one call signature: ``attack = get_attack(name, **overrides)``, then
``x_adv = attack(model, x, y)``. :data:`ATTACK_PRESETS` maps the names used on the command line
(``pgd100``, ``cw``, ...) to a registered class and the paper's settings. ``norm='L2'`` builds the
L2 version of the attacks that have one (:func:`l2_attacks`)."""

from __future__ import annotations

from typing import Any

from virkit.attacks import apgd as _apgd  # noqa: F401  (registers apgd)
from virkit.attacks import apgd_targeted as _apgd_targeted  # noqa: F401  (registers apgd-t)
from virkit.attacks import autoattack as _autoattack  # noqa: F401  (registers autoattack)
from virkit.attacks import fab as _fab  # noqa: F401  (registers fab, fab-t)
from virkit.attacks import fmn as _fmn  # noqa: F401  (registers fmn)
from virkit.attacks import mde as _mde  # noqa: F401  (registers md, mde)
from virkit.attacks import pgd as _pgd  # noqa: F401  (registers fgsm, pgd, cw)
from virkit.attacks import spsa as _spsa  # noqa: F401  (registers spsa)
from virkit.attacks import square as _square  # noqa: F401  (registers square)
from virkit.attacks.autoattack import AA_COMPONENTS, AA_VERSIONS
from virkit.attacks.base import ATTACKS, Attack, eval_mode, project_linf
from virkit.attacks.norms import DEFAULT_EPS, NORMS, per_example_norm, project
from virkit.attacks.pgd import attack_loss, cw_margin_loss, pgd
from virkit.errors import VirkitError, check_choice

__all__ = [
    "ATTACKS",
    "ATTACK_PRESETS",
    "Attack",
    "attack_loss",
    "cw_margin_loss",
    "eval_mode",
    "get_attack",
    "pgd",
    "project_linf",
    "project",
    "per_example_norm",
    "attack_names",
    "white_box_attacks",
    "black_box_attacks",
    "l2_attacks",
    "NORMS",
    "DEFAULT_EPS",
    "AA_VERSIONS",
    "AA_COMPONENTS",
    "is_autoattack",
]

# CLI name -> (registered class name, keyword settings). Settings follow Sec. 5.4 of the paper.
ATTACK_PRESETS: dict[str, tuple[str, dict]] = {
    "fgsm": ("fgsm", {}),
    "pgd10": ("pgd", {"steps": 10, "step_size": 2 / 255}),
    "pgd20": ("pgd", {"steps": 20, "step_size": 1 / 255}),
    "pgd100": ("pgd", {"steps": 100, "step_size": 1 / 255}),
    "cw": ("cw", {"steps": 20, "step_size": 1 / 255, "kappa": 50.0}),
    "fmn100": ("fmn", {"steps": 100}),
    "aa": (
        "autoattack",
        {"version": "standard", "apgd_steps": 100, "n_target_classes": 9, "fab_steps": 100, "square_queries": 5000},
    ),
    "aa-plus": (
        "autoattack",
        {"version": "plus", "apgd_steps": 100, "n_target_classes": 9, "fab_steps": 100, "square_queries": 5000},
    ),
    "aa-rand": ("autoattack", {"version": "rand", "apgd_steps": 100}),
    "apgd-ce": ("apgd", {"loss": "ce", "steps": 100}),
    "apgd-dlr": ("apgd", {"loss": "dlr", "steps": 100}),
    "fab": ("fab", {"steps": 100}),
    "apgd-t": ("apgd-t", {"steps": 100, "n_target_classes": 9}),
    "fab-t": ("fab-t", {"steps": 100, "n_target_classes": 9}),
    "square": ("square", {"n_queries": 5000}),
    "spsa": ("spsa", {"iterations": 100, "delta": 0.001, "lr": 0.01, "samples": 256}),
    "mde": ("mde", {"apgd_steps": 100, "md_steps": 50, "change_point": 20, "n_target_classes": 9, "fab_steps": 100}),
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


def l2_attacks() -> tuple[str, ...]:
    """The preset names of the attacks that also run in the L2 ball (``norm='L2'``)."""
    return tuple(n for n, (cls_name, _) in ATTACK_PRESETS.items() if "L2" in ATTACKS[cls_name].norms)


def is_autoattack(name: str) -> bool:
    """True for the AutoAttack presets (``aa``, ``aa-plus``, ``aa-rand``)."""
    return name in ATTACK_PRESETS and ATTACK_PRESETS[name][0] == "autoattack"


def get_attack(name: str, eps: float = 8 / 255, seed: int = 0, norm: str = "Linf", **overrides: Any) -> Attack:
    """Build the attack registered as ``name`` (a CLI preset such as ``pgd100`` or a registered
    class name such as ``pgd``) with the paper's settings, overridden by ``overrides``.

    ``norm='L2'`` builds the L2 version (an error for the L-inf-only attacks: CW-inf, MD/MDE, SPSA).
    The PGD presets' step sizes are L-inf values for 8/255; in L2 they keep their fraction of the
    radius (``pgd10``: eps/4, ``pgd20``/``pgd100``: eps/8) unless ``step_size`` is overridden."""
    if name in ATTACK_PRESETS:
        cls_name, settings = ATTACK_PRESETS[name]
    elif name in ATTACKS:
        cls_name, settings = name, {}
    else:
        check_choice("attack", name, attack_names())
        raise VirkitError(f"unknown attack {name!r}")  # pragma: no cover
    check_choice("norm", norm, NORMS)
    cls = ATTACKS[cls_name]
    if norm not in cls.norms:
        raise VirkitError(
            f"attack {name!r} is {'/'.join(cls.norms)} only; with norm {norm} use one of: {', '.join(l2_attacks())}"
        )
    settings = dict(settings)
    if norm != "Linf" and "step_size" in settings:
        settings["step_size"] = settings["step_size"] / (8 / 255) * eps
    kwargs = {**settings, **overrides, "eps": eps, "seed": seed}
    if cls.norms != ("Linf",):  # the attacks with an L2 version take ``norm``; the L-inf-only ones do not
        kwargs["norm"] = norm
    return cls(**kwargs)
