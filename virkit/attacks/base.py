"""The one call signature every attack in virkit shares, plus helpers they all use: attack only the
points still classified correctly (:func:`correct_mask`, :func:`on_correct`, :func:`attack_rounds`),
the target classes of targeted attacks (:func:`target_classes`, :func:`clean_targets`), the logit
margin (:func:`margin`) and the active-set compaction of the ``early_stop`` loops
(:func:`compact_rows`, :func:`default_compact_every`, :func:`targets_in_one_batch`).

An attack is an object with ``attack(model, x, y) -> x_adv``:

* ``model`` maps images in [0, 1] to logits (normalization lives inside the model);
* ``x`` is a float batch in [0, 1] (shape B x C x H x W), ``y`` the int64 labels;
* ``x_adv`` has the shape of ``x``, lies in the ball of radius ``eps`` around ``x`` in the attack's
  ``norm`` (``Linf``, or ``L2`` for the attacks that have an L2 version: :mod:`virkit.attacks.norms`)
  and in the box ``bounds`` (checked again by :func:`virkit.evaluation.check_adversarial`).

Attacks put the model in eval mode while they run and restore its previous mode afterwards, and
take gradients with respect to the input only (``torch.autograd.grad``), so parameter ``.grad``
fields are never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol, TypeVar, overload

import torch
from torch import nn

from virkit.attacks.norms import NORMS, project
from virkit.devices import eval_mode  # re-exported: attacks run models in eval mode
from virkit.ops import true_and_best_other

__all__ = [
    "Attack",
    "eval_mode",
    "project_linf",
    "ATTACKS",
    "register",
    "correct_mask",
    "clean_targets",
    "attack_rounds",
    "on_correct",
    "target_classes",
    "targets_in_one_batch",
    "compact_rows",
    "default_compact_every",
    "first_rank_table",
    "margin",
]


def project_linf(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds: tuple[float, float] | None = (0.0, 1.0)
) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps around x, then onto the box ``bounds``."""
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    if bounds is not None:
        x_adv = x_adv.clamp(bounds[0], bounds[1])
    return x_adv


class Attack:
    """Base class. Subclasses set ``name``, ``paper``, ``norms`` and implement :meth:`perturb`.

    Parameters common to all: ``eps`` (radius, default 8/255), ``bounds`` (the valid input box,
    default (0, 1)), ``seed`` (attacks that draw random numbers use a generator seeded with it, so
    the same seed gives the same adversarial examples on the same device), ``norm`` (``Linf``; the
    attacks whose class lists ``L2`` in ``norms`` also run in the L2 ball and take ``norm`` as a
    constructor keyword; the L-inf-only ones have no such keyword). After a call,
    ensembles leave per-component robust flags of the batch in ``details`` (see AutoAttack).
    """

    name: str = "attack"
    paper: str = ""
    norm: str = "Linf"
    #: the threat models this attack implements; a class with more than ``("Linf",)`` takes a ``norm``
    #: constructor keyword (:func:`virkit.attacks.get_attack` passes it on only to those)
    norms: ClassVar[tuple[str, ...]] = ("Linf",)
    #: True for score-based black-box attacks, which read only the model's outputs (logits) and never
    #: its gradients (Square, SPSA); False for white-box attacks, which use input gradients (also
    #: the ensembles, AutoAttack and MDE, whose components are mostly gradient-based).
    black_box: ClassVar[bool] = False
    #: settings added after eval.json files were first written: left out of :meth:`describe` while
    #: they hold these values, so earlier evaluations with the same attack are still recognised
    quiet_defaults: dict = {}

    def __init__(
        self, eps: float = 8 / 255, bounds: tuple[float, float] | None = (0.0, 1.0), seed: int = 0, norm: str = "Linf"
    ):
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        if norm not in self.norms:
            raise ValueError(f"{self.name} is {' / '.join(self.norms)} only; it has no {norm} version")
        self.eps = float(eps)
        self.bounds = bounds
        self.seed = int(seed)
        self.norm = norm
        self.details: dict | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.details = None
        with eval_mode(model):
            x_adv = self.perturb(model, x.detach(), y.detach())
        return project(x_adv.detach(), x, self.eps, self.norm, self.bounds)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Onto this attack's ball (``norm``, ``eps``) around ``x``, then the box."""
        return project(x_adv, x, self.eps, self.norm, self.bounds)

    def describe(self) -> dict:
        """Settings of this attack as a JSON-serializable dict (written into eval.json)."""
        out: dict[str, int | float | str | bool | None] = {"name": self.name, "norm": self.norm, "paper": self.paper}
        for k, v in vars(self).items():
            if k == "details" or (k in self.quiet_defaults and v == self.quiet_defaults[k]):
                continue
            if isinstance(v, (int, float, str, bool)) or v is None:
                out[k] = v
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.describe().items() if k not in ('name', 'paper'))})"


#: name -> factory(**overrides) -> Attack. Filled by ``@register`` in the attack modules.
ATTACKS: dict[str, type[Attack]] = {}

_AttackClass = TypeVar("_AttackClass", bound=type[Attack])
_Round = TypeVar("_Round")  # an item of :func:`attack_rounds`' ``rounds``


def register(name: str) -> Callable[[_AttackClass], _AttackClass]:
    def deco(cls: _AttackClass) -> _AttackClass:
        ATTACKS[name] = cls
        return cls

    return deco


# ---------------------------------------------------------------------------------------------
# helpers shared by the attacks
@torch.no_grad()
def correct_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True where ``model`` classifies ``x`` correctly (one no-grad forward)."""
    return model(x).argmax(dim=1) == y


@torch.no_grad()
def target_classes(logits: torch.Tensor, y: torch.Tensor, n_targets: int) -> torch.Tensor:
    """The ``n_targets`` classes other than ``y`` with the highest logits, best first (B x n).
    For a correctly classified example these are the 2nd, 3rd, ... highest logits, the targets
    of APGD-T, FAB-T and the targeted MD attack."""
    masked = logits.float().scatter(1, y.view(-1, 1), float("-inf"))
    n = min(n_targets, logits.shape[1] - 1)
    return masked.topk(n, dim=1).indices


@overload
def clean_targets(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_targets: int, clean_logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def clean_targets(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_targets: None, clean_logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, None]: ...
@torch.no_grad()
def clean_targets(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_targets: int | None, clean_logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(robust mask, targets) from one clean forward pass: the correctly classified points and,
    if ``n_targets`` is given, their :func:`target_classes` (else None). With ``clean_logits`` (the
    caller already has them: AutoAttack computes the clean logits once for all components) from
    those instead, without a forward pass."""
    logits = model(x) if clean_logits is None else clean_logits
    return logits.argmax(1) == y, (target_classes(logits, y, n_targets) if n_targets is not None else None)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logit margin ``z_y - max_{j != y} z_j`` per example (in float32): positive iff the
    example is classified correctly (ties aside). Square and SPSA lower it."""
    z_y, z_other = true_and_best_other(logits.float(), y)
    return z_y - z_other


def attack_rounds(
    x: torch.Tensor,
    robust: torch.Tensor,
    rounds: Iterable[_Round],
    run: Callable[[torch.Tensor, _Round], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The loop shared by the multi-round attacks (restarts, target classes, MD's two terms,
    AutoAttack's components): for each item of ``rounds``, ``run(idx, item) -> (x_candidate, fooled)``
    attacks only the points ``idx`` that are still robust; fooled points keep their candidate and
    drop out of later rounds, as in the reference implementations. ``robust`` is updated in place.
    Returns the adversarial batch (the clean input where no round succeeded)."""
    x_adv = x.clone()
    view = (-1,) + (1,) * (x.dim() - 1)
    for item in rounds:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa, fooled = run(idx, item)
        x_adv[idx] = torch.where(fooled.view(view), xa, x_adv[idx])
        robust[idx] = ~fooled
    return x_adv


def default_compact_every(device: torch.device | str) -> int:
    """How often (in steps) the iterative attacks look for finished rows to compact away: every
    step on the CPU (the check is a host read that costs nothing there), every 8 steps elsewhere."""
    return 1 if torch.device(device).type == "cpu" else 8


def first_rank_table(group: torch.Tensor | None) -> torch.Tensor | None:
    """For :func:`compact_rows` with several targets of an example in one batch (``group``: each row's
    example, numbered from 0): per example the lowest rank of a row that succeeded so far, the
    largest int64 until one does. None without ``group``."""
    if group is None:
        return None
    n = int(group.max()) + 1 if group.numel() else 0
    return torch.full((n,), torch.iinfo(torch.long).max, dtype=torch.long, device=group.device)


class _RowState(Protocol):
    """What :func:`compact_rows` needs of a state: a dataclass with the ``group`` and ``rank`` fields."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    group: torch.Tensor | None
    rank: torch.Tensor | None


_State = TypeVar("_State", bound=_RowState)


def compact_rows(
    state: _State, done: torch.Tensor, best_rank: torch.Tensor | None, finish: Callable[[_State, torch.Tensor], None]
) -> _State:
    """One compaction step of the ``early_stop`` loops (APGD, FAB): the rows of ``state`` (a
    dataclass whose fields are tensors with one row per running attack, or None) whose attack
    succeeded (``done``) leave; with ``best_rank`` (several targets of an example in one batch:
    ``state.group``, ``state.rank``) so do the rows whose example was already broken by a target of
    lower rank. ``finish(state, mask)`` writes the leaving rows' results. Returns the state of the
    rows still running."""
    keep = ~done
    if best_rank is not None:
        group, rank = state.group, state.rank
        assert group is not None and rank is not None, "best_rank needs the state's group and rank"
        if bool(done.any()):
            best_rank.scatter_reduce_(0, group[done], rank[done], "amin")
        keep &= rank < best_rank[group]
    if bool(keep.all()):
        return state
    finish(state, ~keep)
    kidx = keep.nonzero().squeeze(1)
    return dataclasses.replace(
        state,
        **{
            f.name: getattr(state, f.name)[kidx]
            for f in dataclasses.fields(state)
            if getattr(state, f.name) is not None
        },
    )


def targets_in_one_batch(
    x: torch.Tensor,
    n_targets: int,
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    group_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Several target classes per example in one batch (APGD-T, FAB-T with ``batch_targets``).
    ``run(ii, kk, group) -> (x_rows, fooled_rows)`` attacks row ``r`` = example ``ii[r]`` towards its
    target number ``kk[r]``; ``group[r]`` numbers the examples of the call (0..m-1), so that a run
    may drop an example's later targets once an earlier one fooled it. The result of an example is
    that of its **first** target in order that fooled it: what running the targets one after
    another on the still-robust examples gives, when each row's result depends on that row alone.
    ``group_size`` targets at a time (default all); examples fooled by a group skip the later ones.
    Returns ``(x_adv, fooled)`` per example (``x`` where not fooled)."""
    n = x.shape[0]
    x_adv, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
    gs = n_targets if not group_size or group_size <= 0 else int(group_size)
    big = torch.iinfo(torch.long).max
    for k0 in range(0, n_targets, gs):
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        ks = torch.arange(k0, min(k0 + gs, n_targets), device=x.device)
        m = idx.numel()
        ii = idx.repeat(ks.numel())  # row k * m + j: example idx[j], target ks[k]
        kk = ks.repeat_interleave(m)
        group = torch.arange(m, device=x.device).repeat(ks.numel())
        xa, fo = run(ii, kk, group)
        first = torch.full((m,), big, dtype=torch.long, device=x.device)
        first.scatter_reduce_(0, group[fo], kk[fo], "amin")
        hit = first < big
        row = (first - k0).clamp(0, ks.numel() - 1) * m + torch.arange(m, device=x.device)
        x_adv[idx[hit]] = xa[row[hit]]
        fooled[idx[hit]] = True
    return x_adv, fooled


def on_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``fn(x_sub, y_sub) -> x_adv_sub`` on the examples the model classifies correctly (or on
    ``mask``); the others are returned unchanged (they are already misclassified, so the clean
    input is their adversarial example). Guarantees robust accuracy <= natural accuracy. Unlike
    :func:`attack_rounds`, every attacked point keeps ``fn``'s output, fooled or not (FMN, SPSA)."""
    if mask is None:
        mask = correct_mask(model, x, y)
    idx = mask.nonzero().squeeze(1)
    out = x.clone()
    if idx.numel():
        out[idx] = fn(x[idx], y[idx]).to(out.dtype)
    return out
