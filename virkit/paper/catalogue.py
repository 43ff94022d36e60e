"""The paper's catalogue: the labels of methods, attacks, datasets and models, their colours, the
seeds and the hyperparameters of the paper, in one place.

Everything that names or lays out something of the paper reads it from here: :mod:`virkit.paper.report`
(Tables 1-7 from run directories), :mod:`virkit.paper.figures` (legends and titles), the notebooks and
``configs/grids/*.yaml`` (checked against this module and :mod:`virkit.paper.tables` by ``tests/test_paper.py``).

* :data:`METHOD_SPELLINGS` -- one :class:`Method` per training method of :mod:`virkit.training.methods`, with its
  spelling in the paper's tables (``table_label``, upper case: ``NATURAL TRAINING``, ``VIR-AT-SV``),
  in figures (``figure_label``: ``Natural training``, ``VIR-AT (S_v only)``) and its colour.
* :data:`ATTACK_SPELLINGS` -- one :class:`Attack` per evaluation attack of :mod:`virkit.attacks` (Sec. 5.4),
  again with a table spelling (``SQUARE``) and a figure spelling (``Square``).
* :data:`DATASET_SPELLINGS`, :data:`MODEL_SPELLINGS` -- the paper's spelling of each dataset and model.
* :data:`PAPER_HYPERPARAMETERS`, :data:`PAPER_SEEDS` -- the paper's VIR constants (Sec. 5.3) and its number of seeds.

The tables themselves (Tables 1-12, the sweeps of Tables 9-12) are laid out in :mod:`virkit.paper.tables`, from
the records kept here.

Names are virkit's (``vir-at``, ``pgd100``, ``wrn-34-10``). Lookups of names the catalogue does not
know (a method added later) fall back gracefully: :func:`method` returns a record whose table label
is the name in upper case, whose figure label is the name, and which has no colour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

__all__ = [
    "Method",
    "Attack",
    "Threat",
    "Dataset",
    "Model",
    "Scheme",
    "METHOD_SPELLINGS",
    "ATTACK_SPELLINGS",
    "DATASET_SPELLINGS",
    "MODEL_SPELLINGS",
    "SCHEMES",
    "METHOD_ORDER",
    "PAPER_HYPERPARAMETERS",
    "PAPER_SEEDS",
    "HYPERPARAMETERS",
    "HP_SYMBOLS",
    "method",
    "attack",
    "method_label",
    "attack_label",
    "dataset_label",
    "model_label",
    "method_color",
    "labels",
]


# ------------------------------------------------------------------------------------------------
# Methods (Sec. 5.2 baselines, Sec. 4 VIR, Tables 6-7 ablation variants)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A training method (``virkit.training.methods.METHODS`` name) and how it is spelled.

    ``table_label``: the paper's tables (upper case, Tables 1-5 "DEFENSE" column);
    ``figure_label``: legends and titles of figures; ``color``: the same in every figure
    (None: a method the catalogue does not know; figures pick a ``tab10`` colour)."""

    name: str
    table_label: str
    figure_label: str
    color: str | None = None


#: in the order rows are sorted when a table lists every method present: natural training first,
#: then the paper's row order of Tables 1-5 (MAIL-TRADES next to MAIL-AT), then the ablation variants
METHOD_SPELLINGS: Mapping[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in [
            Method("natural", "NATURAL TRAINING", "Natural training", "#7f7f7f"),
            Method("at", "AT", "AT", "#1f77b4"),
            Method("trades", "TRADES", "TRADES", "#ff7f0e"),
            Method("mart", "MART", "MART", "#2ca02c"),
            Method("gairat", "GAIRAT", "GAIRAT", "#9467bd"),
            Method("mail-at", "MAIL-AT", "MAIL-AT", "#8c564b"),
            Method("mail-trades", "MAIL-TRADES", "MAIL-TRADES", "#e377c2"),
            Method("vir-trades", "VIR-TRADES", "VIR-TRADES", "#bcbd22"),
            Method("vir-at", "VIR-AT", "VIR-AT", "#d62728"),
            Method("vir-at-sv", "VIR-AT-SV", "VIR-AT (S_v only)", "#ff9896"),
            Method("vir-at-sd", "VIR-AT-SD", "VIR-AT (S_d only)", "#c49c94"),
            Method("vir-trades-sv", "VIR-TRADES-SV", "VIR-TRADES (S_v only)", "#dbdb8d"),
            Method("vir-trades-sd", "VIR-TRADES-SD", "VIR-TRADES (S_d only)", "#c7c7c7"),
            # not in the paper: the first row of Table 6 as an ablation (the VIR pipeline with w = 1) and the
            # scale-matched controls (docs/RESULTS.md)
            Method("vir-at-w1", "VIR-AT-W1", "VIR-AT (w = 1)", "#17becf"),
            Method("vir-at-mean1", "VIR-AT-MEAN1", "VIR-AT (batch mean 1)", "#ff7f7f"),
            Method("vir-at-flat", "VIR-AT-FLAT", "VIR-AT (flat weight)", "#8c0000"),
            Method("vir-trades-mean1", "VIR-TRADES-MEAN1", "VIR-TRADES (batch mean 1)", "#e6e600"),
            Method("vir-trades-flat", "VIR-TRADES-FLAT", "VIR-TRADES (flat weight)", "#7f7f00"),
        ]
    }
)
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_SPELLINGS)


@dataclass(frozen=True)
class Scheme:
    """A weighting scheme as the weight explorer (notebook 01) names and draws it: VIR (Eq. 7),
    GAIRAT (Zhang et al., 2020) and MAIL (Liu et al., 2021), in the colour of their main method.
    ``name`` is also the label."""

    name: str
    color: str


SCHEMES: Mapping[str, Scheme] = MappingProxyType(
    {
        s.name: s
        for s in [
            Scheme("VIR", METHOD_SPELLINGS["vir-at"].color),
            Scheme("GAIRAT", METHOD_SPELLINGS["gairat"].color),
            Scheme("MAIL", METHOD_SPELLINGS["mail-at"].color),
        ]
    }
)


# ------------------------------------------------------------------------------------------------
# Attacks (Sec. 5.4 threat models)
# ------------------------------------------------------------------------------------------------
class Threat(str, Enum):
    """Which kind of evaluation an attack is (Sec. 5.4)."""

    NONE = "none"  # natural accuracy
    WHITE_BOX = "white-box"
    BLACK_BOX = "black-box"
    ENSEMBLE = "ensemble"  # AutoAttack, MDE
    SUMMARY = "summary"  # worst case over the attacks run (virkit's, not the paper's)


@dataclass(frozen=True)
class Attack:
    """An evaluation attack (``virkit.attacks.attack_names()`` name, plus ``worst_case``):
    ``table_label`` as in the paper's table headers (``PGD-100``, ``SQUARE``), ``figure_label``
    for figures (``Square``)."""

    name: str
    table_label: str
    figure_label: str
    threat: Threat


ATTACK_SPELLINGS: Mapping[str, Attack] = MappingProxyType(
    {
        a.name: a
        for a in [
            Attack("natural", "NATURAL", "Natural", Threat.NONE),
            Attack("fgsm", "FGSM", "FGSM", Threat.WHITE_BOX),
            Attack("pgd10", "PGD-10", "PGD-10", Threat.WHITE_BOX),
            Attack("pgd20", "PGD-20", "PGD-20", Threat.WHITE_BOX),
            Attack("pgd100", "PGD-100", "PGD-100", Threat.WHITE_BOX),
            Attack("cw", "CW", "CW", Threat.WHITE_BOX),
            Attack("fmn100", "FMN-100", "FMN-100", Threat.WHITE_BOX),
            Attack("aa", "AA", "AA", Threat.ENSEMBLE),
            Attack("mde", "MDE", "MDE", Threat.ENSEMBLE),
            Attack("square", "SQUARE", "Square", Threat.BLACK_BOX),
            Attack("spsa", "SPSA", "SPSA", Threat.BLACK_BOX),
            Attack("apgd-ce", "APGD-CE", "APGD-CE", Threat.WHITE_BOX),
            Attack("apgd-t", "APGD-T", "APGD-T", Threat.WHITE_BOX),
            Attack("fab-t", "FAB-T", "FAB-T", Threat.WHITE_BOX),
            # not in the paper's tables: AutoAttack's other versions and components (virkit evaluate)
            Attack("aa-plus", "AA+", "AA+", Threat.ENSEMBLE),
            Attack("aa-rand", "AA-RAND", "AA (rand)", Threat.ENSEMBLE),
            Attack("apgd-dlr", "APGD-DLR", "APGD-DLR", Threat.WHITE_BOX),
            Attack("fab", "FAB", "FAB", Threat.WHITE_BOX),
            Attack("worst_case", "WORST CASE", "Worst case", Threat.SUMMARY),
        ]
    }
)


# ------------------------------------------------------------------------------------------------
# Datasets and models (Sec. 5.1, Appendix B)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    name: str
    label: str


@dataclass(frozen=True)
class Model:
    name: str
    label: str


DATASET_SPELLINGS: Mapping[str, Dataset] = MappingProxyType(
    {
        d.name: d
        for d in [
            Dataset("cifar10", "CIFAR-10"),
            Dataset("cifar100", "CIFAR-100"),
            Dataset("svhn", "SVHN"),
            Dataset("tiny-imagenet", "Tiny-ImageNet"),
            Dataset("imagefolder", "ImageFolder"),
            Dataset("gaussian-mixture", "Gaussian mixture"),
        ]
    }
)
MODEL_SPELLINGS: Mapping[str, Model] = MappingProxyType(
    {
        m.name: m
        for m in [
            Model("resnet18", "ResNet-18"),
            Model("wrn-34-10", "WideResNet-34-10"),
            Model("wrn-28-10", "WideResNet-28-10"),
            Model("preact-resnet18", "PreActResNet-18"),
            Model("small-cnn", "small-cnn"),
            Model("linear", "linear"),
        ]
    }
)


# ------------------------------------------------------------------------------------------------
# Lookups
# ------------------------------------------------------------------------------------------------
def method(name: str) -> Method:
    """The catalogue's record of ``name``, or a stand-in for a method it does not know (table label
    ``NAME`` in upper case, figure label ``name``, no colour)."""
    m = METHOD_SPELLINGS.get(name) if isinstance(name, str) else None
    return m if m is not None else Method(str(name), str(name).upper(), str(name), None)


def attack(name: str) -> Attack:
    """The catalogue's record of ``name``, or a stand-in (both labels ``name``, white-box)."""
    a = ATTACK_SPELLINGS.get(name) if isinstance(name, str) else None
    return a if a is not None else Attack(str(name), str(name), str(name), Threat.WHITE_BOX)


def method_label(name: str, style: str = "table") -> str:
    """``style`` ``table`` (``NATURAL TRAINING``; unknown: upper case) or ``figure``
    (``Natural training``; unknown: unchanged)."""
    return getattr(method(name), f"{_style(style)}_label")


def attack_label(name: str, style: str = "table") -> str:
    """``style`` ``table`` (``SQUARE``) or ``figure`` (``Square``); unknown names unchanged."""
    return getattr(attack(name), f"{_style(style)}_label")


def dataset_label(name: str) -> str:
    """``cifar10`` -> ``CIFAR-10`` (the paper's spelling); unknown names unchanged (as ``str``)."""
    d = DATASET_SPELLINGS.get(name) if isinstance(name, str) else None
    return d.label if d is not None else str(name)


def model_label(name: str) -> str:
    """``wrn-34-10`` -> ``WideResNet-34-10``; unknown names unchanged (as ``str``)."""
    m = MODEL_SPELLINGS.get(name) if isinstance(name, str) else None
    return m.label if m is not None else str(name)


def method_color(name: str) -> str | None:
    """The method's colour, else a weighting scheme's (``VIR``, ``GAIRAT``, ``MAIL``), else None."""
    rec = METHOD_SPELLINGS.get(name) or SCHEMES.get(name)
    return rec.color if rec is not None else None


def labels(records: Mapping[str, Any], field: str = "label") -> Mapping[str, str]:
    """``{name: record.<field>}`` (read-only) for code that wants a plain mapping, e.g.
    ``labels(ATTACK_SPELLINGS, "table_label")``; records whose field is None are left out."""
    return MappingProxyType({k: getattr(r, field) for k, r in records.items() if getattr(r, field) is not None})


def _style(style: str) -> str:
    if style not in ("table", "figure"):
        raise ValueError(f"unknown label style {style!r}; valid styles: table, figure")
    return style


# ------------------------------------------------------------------------------------------------
# Hyperparameters (Sec. 5.3); their sweeps (Appendix C) are in virkit.paper.tables
# ------------------------------------------------------------------------------------------------
#: Sec. 5.5: "Experiments were repeated four times with different random seeds" (mean ± std over them)
#: Figure 3 (Sec. 5.5): "the largest weight to the most vulnerable class '3' and the least weight to
#: the least vulnerable class '1' for both VIR-AT and VIR-TRADES" (CIFAR-10: 3 = cat, 1 = automobile)
FIGURE3_MOST_WEIGHT: str = "cat"
FIGURE3_LEAST_WEIGHT: str = "automobile"

PAPER_SEEDS: int = 4

HYPERPARAMETERS: tuple[str, ...] = ("alpha", "beta", "gamma")
HP_SYMBOLS: Mapping[str, str] = MappingProxyType({"alpha": "α", "beta": "β", "gamma": "γ"})

#: the paper's VIR constants (Sec. 5.3): alpha, gamma, beta of Eqs. 5-7 (VIR-TRADES also 1/lambda = 5,
#: kept in :mod:`virkit.training.methods`). ``tests/test_paper.py`` checks them against the method defaults.
PAPER_HYPERPARAMETERS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "vir-at": MappingProxyType({"alpha": 7.0, "gamma": 10.0, "beta": 0.007}),
        "vir-trades": MappingProxyType({"alpha": 8.0, "gamma": 3.0, "beta": 1.6}),
    }
)
