"""The paper's catalogue: its tables, the labels of methods, attacks, datasets and models, and the
hyperparameter grids of its appendix, in one place.

Everything that names or lays out something of the paper reads it from here: :mod:`virkit.paper.report`
(Tables 1-7 from run directories), :mod:`virkit.paper.figures` (legends and titles), the notebooks and
``configs/grids/*.yaml`` (checked against this module by ``tests/test_paper.py``).

* :data:`METHOD_SPELLINGS` -- one :class:`Method` per training method of :mod:`virkit.training.methods`, with its
  spelling in the paper's tables (``table_label``, upper case: ``NATURAL TRAINING``, ``VIR-AT-SV``),
  in figures (``figure_label``: ``Natural training``, ``VIR-AT (S_v only)``) and its colour.
* :data:`ATTACK_SPELLINGS` -- one :class:`Attack` per evaluation attack of :mod:`virkit.attacks` (Sec. 5.4),
  again with a table spelling (``SQUARE``) and a figure spelling (``Square``).
* :data:`DATASET_SPELLINGS`, :data:`MODEL_SPELLINGS` -- the paper's spelling of each dataset and model.
* :data:`TABLES` -- Tables 1-12 (:class:`Table`): rows, columns (attacks), dataset(s), model;
  :data:`MAIN_TABLES` are Tables 1-7 of Sec. 5, the ones ``virkit report`` builds.
* :data:`SWEEPS` -- the hyperparameter grids of Tables 9-12 (Appendix C, :class:`Sweep`).

Names are virkit's (``vir-at``, ``pgd100``, ``wrn-34-10``). Lookups of names the catalogue does not
know (a method added later) fall back gracefully: :func:`method` returns a record whose table label
is the name in upper case, whose figure label is the name, and which has no colour.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    "Row",
    "Sweep",
    "Table",
    "TableKind",
    "METHOD_SPELLINGS",
    "ATTACK_SPELLINGS",
    "DATASET_SPELLINGS",
    "MODEL_SPELLINGS",
    "SCHEMES",
    "TABLES",
    "MAIN_TABLES",
    "SWEEPS",
    "METHOD_ORDER",
    "PAPER_METHODS",
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
# Hyperparameters (Sec. 5.3) and the sweeps of Appendix C
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


@dataclass(frozen=True)
class Sweep:
    """A hyperparameter study of Appendix C (Tables 9-12): ``method`` trained with one
    hyperparameter of ``axes`` changed at a time, the others at the paper's values (``defaults``).

    ``axes``: ``((hyperparameter, values), ...)`` in the paper's row order, each including the
    paper's value; :meth:`points` lists the table's rows as full (alpha, gamma, beta) settings."""

    method: str
    axes: tuple[tuple[str, tuple[float, ...]], ...]

    @property
    def defaults(self) -> dict[str, float]:
        return dict(PAPER_HYPERPARAMETERS[self.method])

    @property
    def swept(self) -> tuple[str, ...]:
        return tuple(h for h, _ in self.axes)

    def values(self, hyperparameter: str) -> tuple[float, ...]:
        """The values of ``hyperparameter`` the paper reports (its own value included)."""
        for h, vals in self.axes:
            if h == hyperparameter:
                return vals
        raise KeyError(
            f"Table sweep of {self.method} does not vary {hyperparameter!r}; it varies {', '.join(self.swept)}"
        )

    def points(self) -> list[dict[str, float]]:
        """One setting per row, one hyperparameter changed at a time (first axis first)."""
        out: list[dict[str, float]] = []
        for h, vals in self.axes:
            for v in vals:
                p = {**self.defaults, h: float(v)}
                if p not in out:
                    out.append(p)
        return out


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
class TableKind(str, Enum):
    DEFENSES = "defenses"  # Tables 1-5 and 8: one row per defense (method)
    COMPONENTS = "components"  # Tables 6-7: one row per reweighting component
    HYPERPARAMETERS = "hyperparameters"  # Tables 9-12: one row per hyperparameter setting


@dataclass(frozen=True)
class Row:
    """A row of a table: the method trained, its label in the paper (None: the method's table
    label) and, in Tables 9-12, the hyperparameters of the row (``((name, value), ...)``)."""

    method: str
    label: str | None = None
    params: tuple[tuple[str, float], ...] = ()
    #: a row virkit adds to the paper's table (the scale-matched controls of Tables 6-7)
    extension: bool = False

    @property
    def hyperparameters(self) -> dict[str, float]:
        return dict(self.params)


@dataclass(frozen=True)
class Table:
    """One table of the paper.

    ``title``: virkit's short title (captions of :mod:`virkit.paper.report` and the notebooks);
    ``caption``: the paper's; ``attacks``: the columns, in order; ``datasets``: one column group each
    (two in Table 3); ``rows``: in the paper's order. ``open_rows``: a report of the table lists
    every method present (paper rows first, :data:`METHOD_ORDER`), not only the paper's rows.

    For code written against the old dict layout, ``table["title"]``, ``["datasets"]``,
    ``["model"]``, ``["attacks"]``, ``["methods"]`` (None when ``open_rows``) and ``["ablation"]``
    (and ``.get``) still work."""

    number: int
    title: str
    caption: str
    section: str
    kind: TableKind
    datasets: tuple[str, ...]
    model: str
    attacks: tuple[str, ...]
    rows: tuple[Row, ...]
    open_rows: bool = False
    sweep: Sweep | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods of the rows, in the paper's order (virkit's extension rows last), each once."""
        return tuple(dict.fromkeys(r.method for r in self.rows))

    @property
    def paper_rows(self) -> tuple[Row, ...]:
        """The rows the paper prints (without virkit's extension rows)."""
        return tuple(r for r in self.rows if not r.extension)

    @property
    def ablation(self) -> bool:
        return self.kind is TableKind.COMPONENTS

    def row_label(self, name: str) -> str:
        """The label of ``name``'s row as :mod:`virkit.paper.report` prints it: in Tables 6-7 the
        reweighting component with the method in brackets (``S_v(x, y) · L_CE(f(x'), y) [VIR-AT-SV]``),
        else the method's table label."""
        if self.kind is TableKind.COMPONENTS:
            row = next((r for r in self.rows if r.method == name), None)
            if row is not None and row.label:
                return f"{row.label} [{method(name).table_label}]"
            return str(name)
        return method(name).table_label

    _LEGACY = ("title", "datasets", "model", "attacks", "methods", "ablation")

    def __getitem__(self, key: str):
        if key not in self._LEGACY:
            raise KeyError(key)
        if key == "methods":
            return None if self.open_rows else list(self.methods)
        v = getattr(self, key)
        return list(v) if isinstance(v, tuple) else v

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def _rows(methods: Iterable[str]) -> tuple[Row, ...]:
    return tuple(Row(m) for m in methods)


def _sweep_rows(sweep: Sweep, table: int) -> tuple[Row, ...]:
    rows = []
    for p in sweep.points():
        if table in (9, 10):  # "S_v(x_i, y_i) · S_d(x_i, x'_i) + (β = 0)"
            label = f"S_v(x, y) · S_d(x, x') + (β = {p['beta']:g})"
        else:  # columns α, γ, β
            label = f"α={p['alpha']:g}, γ={p['gamma']:g}, β={p['beta']:g}"
        rows.append(Row(sweep.method, label, tuple((h, p[h]) for h in ("alpha", "gamma", "beta"))))
    return tuple(rows)


_DEFENSES = ("at", "trades", "mart", "gairat", "mail-at", "vir-trades", "vir-at")  # Tables 1-5
_WHITE_BOX = ("natural", "fgsm", "pgd100", "cw", "fmn100", "aa", "mde")  # Tables 1-2
_ABLATION = ("natural", "pgd100", "cw", "aa", "square", "spsa")  # Tables 6-7
_APPENDIX = ("natural", "pgd100", "cw", "aa")  # Tables 8-12

#: Tables 9-12 (Appendix C): ResNet-18 on CIFAR-10, one hyperparameter varied at a time
SWEEPS: Mapping[int, Sweep] = MappingProxyType(
    {
        9: Sweep("vir-at", (("beta", (0.0, 0.007, 0.1)),)),
        10: Sweep("vir-trades", (("beta", (0.5, 1.6, 2.0)),)),
        11: Sweep("vir-at", (("alpha", (1.0, 2.0, 3.0, 5.0, 7.0, 8.0)), ("gamma", (2.0, 4.0, 6.0, 8.0, 10.0)))),
        12: Sweep("vir-trades", (("alpha", (1.0, 2.0, 3.0, 5.0, 7.0, 8.0)), ("gamma", (1.0, 2.0, 3.0, 4.0)))),
    }
)

_C10, _RN18 = ("cifar10",), "resnet18"
TABLES: Mapping[int, Table] = MappingProxyType(
    {
        t.number: t
        for t in [
            Table(
                1,
                "White-box robust accuracy (%)",
                "Comparing white-box attack robustness (accuracy %) for ResNet-18 on CIFAR-10. For all methods, "
                "distance eps = 0.031.",
                "Sec. 5.5",
                TableKind.DEFENSES,
                _C10,
                _RN18,
                _WHITE_BOX,
                _rows(_DEFENSES),
                open_rows=True,
            ),
            Table(
                2,
                "White-box robust accuracy (%)",
                "Comparing white-box attack robustness (accuracy %) for WideResNet-34-10 on CIFAR-10. For all "
                "methods, distance eps = 0.031.",
                "Sec. 5.5",
                TableKind.DEFENSES,
                _C10,
                "wrn-34-10",
                _WHITE_BOX,
                _rows(_DEFENSES),
                open_rows=True,
            ),
            Table(
                3,
                "White-box robust accuracy (%)",
                "Comparing white-box attack robustness (accuracy %) for RN-18 on SVHN and CIFAR-100. For all "
                "methods, distance eps = 0.031.",
                "Sec. 5.5",
                TableKind.DEFENSES,
                ("svhn", "cifar100"),
                _RN18,
                ("natural", "pgd100", "aa"),
                _rows(_DEFENSES),
                open_rows=True,
            ),
            Table(
                4,
                "White-box robust accuracy (%), eps 8/255, PGD step 1/255",
                "Comparing white-box attack robustness (accuracy %) for ResNet-18 on TinyImageNet. Perturbation size "
                "eps = 8/255 and step size kappa = 1/255 are used for all methods (VIR-AT: gamma = 3, Sec. 5.3).",
                "Sec. 5.5",
                TableKind.DEFENSES,
                ("tiny-imagenet",),
                _RN18,
                ("natural", "pgd20", "aa"),
                _rows(_DEFENSES),
                open_rows=True,
            ),
            Table(
                5,
                "Black-box robust accuracy (%)",
                "Comparing black-box attack robustness (accuracy %) for Wideresnet-34-10 trained on CIFAR-10.",
                "Sec. 5.5",
                TableKind.DEFENSES,
                _C10,
                "wrn-34-10",
                ("square", "spsa"),
                _rows(_DEFENSES),
                open_rows=True,
            ),
            Table(
                6,
                "Ablation of the VIR-AT reweighting components (accuracy %)",
                "Ablation studies on VIR-AT showing the impact of reweighting components proposed in Eq. 5 and 6 on "
                "white-box and black-box attack robustness (accuracy %).",
                "Sec. 5.6.1",
                TableKind.COMPONENTS,
                _C10,
                _RN18,
                _ABLATION,
                (
                    # the paper's first row equals its Table 1 AT row, i.e. the VIR pipeline with w = 1
                    # (0.001 N(0, I) start): vir-at-w1, so that the rows differ in the weight only
                    Row("vir-at-w1", "L_CE(f(x'), y)"),
                    Row("vir-at-sv", "S_v(x, y) · L_CE(f(x'), y)"),
                    Row("vir-at-sd", "S_d(x, x') · L_CE(f(x'), y)"),
                    Row("vir-at", "w(x, x', y) · L_CE(f(x'), y)"),
                    Row("vir-at-mean1", "w / mean(w) · L_CE(f(x'), y)", extension=True),
                    Row("vir-at-flat", "mean(w) · L_CE(f(x'), y)", extension=True),
                    # Madry et al.'s AT (uniform start): beside vir-at-w1 it shows what the random start alone does
                    Row("at", "L_CE(f(x'), y), uniform start", extension=True),
                ),
            ),
            Table(
                7,
                "Ablation of the VIR-TRADES reweighting components (accuracy %)",
                "Ablation studies on VIR-TRADES showing the impact of reweighting components proposed in Eq. 5 and 6 "
                "on white-box and black-box attack robustness (accuracy %).",
                "Sec. 5.6.1",
                TableKind.COMPONENTS,
                _C10,
                _RN18,
                _ABLATION,
                (
                    Row("trades", "L_CE(f(x), y) + 1/λ KL(f(x) ‖ f(x'))"),
                    Row("vir-trades-sv", "L_CE(f(x), y) + 1/λ S_v(x, y) KL(f(x) ‖ f(x'))"),
                    Row("vir-trades-sd", "L_CE(f(x), y) + 1/λ S_d(x, x') KL(f(x) ‖ f(x'))"),
                    Row("vir-trades", "L_CE(f(x), y) + 1/λ w(x, x', y) KL(f(x) ‖ f(x'))"),
                    Row("vir-trades-mean1", "L_CE(f(x), y) + 1/λ w / mean(w) KL(f(x) ‖ f(x'))", extension=True),
                    Row("vir-trades-flat", "L_CE(f(x), y) + 1/λ mean(w) KL(f(x) ‖ f(x'))", extension=True),
                ),
            ),
            Table(
                8,
                "Robust accuracy (%), trained on 20M EDM-generated images",
                "Comparing robustness (accuracy %) for Wideresnet-28-10 on CIFAR-10 trained on 20M EDM-generated data.",
                "Appendix B",
                TableKind.DEFENSES,
                _C10,
                "wrn-28-10",
                _APPENDIX,
                _rows(("trades", "at", "vir-trades", "vir-at")),
            ),
            *[
                Table(
                    n,
                    title,
                    caption,
                    "Appendix C",
                    TableKind.HYPERPARAMETERS,
                    _C10,
                    _RN18,
                    _APPENDIX,
                    _sweep_rows(SWEEPS[n], n),
                    sweep=SWEEPS[n],
                )
                for n, title, caption in [
                    (
                        9,
                        "VIR-AT, floor β",
                        "Ablation studies on VIR-AT showing the impact of the β hyperparameter on the "
                        "performance of the proposed reweighting function.",
                    ),
                    (
                        10,
                        "VIR-TRADES, floor β",
                        "Ablation studies on VIR-TRADES showing the impact of the β hyperparameter "
                        "on the performance of the proposed reweighting function.",
                    ),
                    (
                        11,
                        "VIR-AT, α and γ",
                        "Ablation studies on VIR-AT showing the impact of the α and γ hyperparameters "
                        "on the performance of the proposed reweighting function.",
                    ),
                    (
                        12,
                        "VIR-TRADES, α and γ",
                        "Ablation studies on VIR-TRADES showing the impact of the α and γ "
                        "hyperparameters on the performance of the proposed reweighting function.",
                    ),
                ]
            ],
        ]
    }
)

#: Tables 1-7 of the main text (Sec. 5.5-5.6): what ``virkit report --table N`` builds
MAIN_TABLES: Mapping[int, Table] = MappingProxyType({n: t for n, t in TABLES.items() if n <= 7})
#: the defenses of Tables 1-5, in the paper's row order
PAPER_METHODS: tuple[str, ...] = TABLES[1].methods
