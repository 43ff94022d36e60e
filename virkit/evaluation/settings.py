"""The settings of one evaluation, written once: :class:`EvalSettings` (attacks, threat model and
eps, seed, batch size, number of examples, per-attack overrides, resuming, adversarial examples
saved, numerics) and their defaults (:data:`DEFAULT_ATTACKS` among them), checked when made. Every
entry point (:func:`virkit.evaluation.evaluate_model`, :func:`virkit.evaluation.evaluate_run`,
:func:`virkit.evaluation.evaluate_source`, ``virkit evaluate``, notebooks and sweeps) takes one,
plus only what is its own (the model, run or source; device, output file, processes)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from virkit.attacks import ATTACK_PRESETS, DEFAULT_EPS, NORMS, attack_names, get_attack
from virkit.errors import VirkitError, check_choice, check_range

__all__ = ["EvalSettings", "attack_list", "DEFAULT_ATTACKS", "COMPILE_MODES"]

#: ``EvalSettings.compile``: eager, ``torch.compile``, or ``torch.compile`` with CUDA graphs
COMPILE_MODES = ("off", "on", "cudagraphs")

#: the attacks of an evaluation that names none, per threat model (``virkit evaluate`` without
#: ``--attacks``, :func:`virkit.evaluation.evaluate_source`, :func:`virkit.evaluation.evaluate_model`;
#: :func:`virkit.evaluation.evaluate_run` takes the run's ``eval_attacks``); C&W has no L2 form here
DEFAULT_ATTACKS = {"Linf": ("natural", "fgsm", "pgd100", "cw"), "L2": ("natural", "fgsm", "pgd100")}


def attack_list(attacks: str | Iterable[str]) -> list[str]:
    if isinstance(attacks, str):
        attacks = [a for a in attacks.split(",") if a.strip()]
    valid = attack_names()
    names: list[str] = []
    for a in attacks:
        a = a.strip()
        if a not in valid:
            raise VirkitError(f"unknown attack {a!r}; valid attacks: {', '.join(valid)}")
        if a not in names:
            names.append(a)
    if not names:
        raise VirkitError(f"no attacks given; valid attacks: {', '.join(valid)}")
    return names


@dataclass
class EvalSettings:
    """What one evaluation runs, checked once when it is made (a bad value is one
    :class:`VirkitError` naming it).

    ``attacks``: names from :func:`virkit.attacks.attack_names` (a list or a comma-separated
    string); ``norm``: ``Linf`` or ``L2`` (every attack in that threat model); ``n_examples``: how
    many test images (:func:`virkit.evaluation.evaluate_model`: the first N of the split; a run or
    an outside source: the seeded class-balanced draw of N); ``attack_overrides`` maps an attack
    name to settings that replace the paper's (e.g. ``{"spsa": {"iterations": 10}}``), recorded in
    each attack's ``settings``; ``extra`` is recorded as is; ``replace``: an output file holding
    another evaluation is kept as ``.prev.json`` and a new one starts (without it that is an
    error); ``progress``: a bar per attack and a line per finished attack; ``save_adv``: a folder
    for each attack's adversarial examples (``save_adv_png``: one PNG per image as well);
    ``allow_tf32``: TF32 matmuls and convolutions on CUDA (off by default: the evaluation is fp32);
    ``compile``: ``off`` (default), ``on`` (``torch.compile``, any device) or ``cudagraphs``
    (``torch.compile`` with CUDA graphs, ``mode="reduce-overhead"``; CUDA only); ``reuse_from``:
    other eval.json files; when the output file holds nothing to resume, the first of them written
    with the same header (the same model weights, images, eps, norm, seed and numerics) gives the
    attacks it finished with the same settings, marked ``reused_from`` (a run branched from
    another's burn-in whose best.pt is a burn-in epoch has the weights its parent's best.pt had).

    Unset (None) means "the run's own value, else the default", filled by :meth:`resolved`:
    ``attacks`` (a run's ``eval_attacks``, else :data:`DEFAULT_ATTACKS` of ``norm``), ``eps`` (a
    run's training eps under Linf, else 8/255 for Linf and 0.5 for L2), ``seed`` (a run's seed,
    else 0) and ``n_examples`` (a run's test subset, else every image).
    """

    attacks: list[str] | None = None
    eps: float | None = None
    seed: int | None = None
    batch_size: int = 256
    n_examples: int | None = None
    attack_overrides: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    replace: bool = False
    progress: bool = True
    norm: str = "Linf"
    save_adv: str | os.PathLike | None = None
    save_adv_png: bool = False
    allow_tf32: bool = False
    compile: str = "off"
    reuse_from: list = field(default_factory=list)

    def __post_init__(self):
        if self.attacks is not None:
            self.attacks = attack_list(self.attacks)
        check_choice("norm", self.norm, NORMS)
        if self.compile in (True, False, None):
            self.compile = "on" if self.compile else "off"
        check_choice("compile", self.compile, COMPILE_MODES)
        self.attack_overrides = dict(self.attack_overrides or {})
        for k in self.attack_overrides:
            if k not in ATTACK_PRESETS:
                raise VirkitError(f"attack_overrides names unknown attack {k!r}; valid: {', '.join(ATTACK_PRESETS)}")
        if self.eps is not None:
            hint = (
                " (eps is a fraction of the [0,1] pixel range: 8/255 = 0.0314)"
                if self.norm == "Linf"
                else " (an L2 radius in [0,1] pixel units; RobustBench's CIFAR-10 L2 is 0.5)"
            )
            check_range("eps", self.eps, 0.0, 1.0 if self.norm == "Linf" else 1e4, hint=hint)
        check_range("batch_size", self.batch_size, 1, 10**7)
        if self.n_examples is not None and int(self.n_examples) <= 0:
            raise VirkitError(f"n_examples must be positive, got {self.n_examples}")
        self.extra = dict(self.extra or {})
        self.reuse_from = list(self.reuse_from or [])
        eps = self.eps if self.eps is not None else DEFAULT_EPS[self.norm]
        for a in self.attacks or ():  # an attack without this norm is refused now, not after hours of others
            if a != "natural":
                try:
                    get_attack(a, eps=eps, seed=self.seed or 0, norm=self.norm, **self.attack_overrides.get(a, {}))
                except (TypeError, ValueError) as e:
                    raise VirkitError(f"attack {a!r}: {e}") from None

    def resolved(
        self, *, attacks: Iterable[str] | None = None, eps: float | None = None, seed: int | None = None
    ) -> EvalSettings:
        """A copy with ``attacks``, ``eps`` and ``seed`` set (checked again): this object's where it
        sets them, else the given ones (a run's own values), else the defaults (:data:`DEFAULT_ATTACKS`
        of the norm, :data:`virkit.attacks.DEFAULT_EPS` of the norm, 0). ``n_examples`` is left to
        the entry point (None: every image of a split, a run's test subset)."""
        if self.attacks is not None and self.eps is not None and self.seed is not None:
            return self

        def pick(own, given, default):
            return own if own is not None else given if given is not None else default

        return dataclasses.replace(
            self,
            attacks=list(pick(self.attacks, attacks, DEFAULT_ATTACKS[self.norm])),
            eps=pick(self.eps, eps, DEFAULT_EPS[self.norm]),
            seed=pick(self.seed, seed, 0),
        )

    @classmethod
    def given(cls, settings: EvalSettings | None, entry: str) -> EvalSettings:
        """``settings``, or the defaults when None; anything else (a list of attacks, the old
        signature) is a :class:`TypeError` naming ``entry``."""
        if settings is None:
            return cls()
        if not isinstance(settings, cls):
            raise TypeError(
                f"{entry} takes an EvalSettings (virkit.evaluation.EvalSettings(attacks=[...], eps=..., "
                f"...)), not {type(settings).__name__}"
            )
        return settings

    def check_device(self, dev: torch.device) -> None:
        """Refuse what ``dev`` cannot run, before anything is written."""
        if self.compile == "cudagraphs" and dev.type != "cuda":
            raise VirkitError(
                f"compile=cudagraphs needs a CUDA device (this evaluation runs on {dev.type}); use --compile on"
            )
