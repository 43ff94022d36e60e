"""The paper's tables: Tables 1-12 and the hyperparameter sweeps of its appendix, laid out from the
records of :mod:`virkit.paper.catalogue` (methods, attacks, datasets, models, hyperparameters).

* :data:`TABLES` -- Tables 1-12 (:class:`Table`): rows, columns (attacks), dataset(s), model;
  :data:`MAIN_TABLES` are Tables 1-7 of Sec. 5, the ones ``virkit report`` builds.
* :data:`SWEEPS` -- the hyperparameter grids of Tables 9-12 (Appendix C, :class:`Sweep`).
* :data:`PAPER_METHODS` -- the defenses of Tables 1-5, in the paper's row order.

Everything here is part of :mod:`virkit.paper`'s public face, beside the catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from virkit.paper.catalogue import PAPER_HYPERPARAMETERS, method

__all__ = ["Row", "Sweep", "Table", "TableKind", "TABLES", "MAIN_TABLES", "SWEEPS", "PAPER_METHODS"]


# ------------------------------------------------------------------------------------------------
# The sweeps of Appendix C
# ------------------------------------------------------------------------------------------------
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
    every method present (paper rows first, :data:`~virkit.paper.catalogue.METHOD_ORDER`), not only the paper's rows.

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

    def __getitem__(self, key: str) -> Any:
        if key not in self._LEGACY:
            raise KeyError(key)
        if key == "methods":
            return None if self.open_rows else list(self.methods)
        v = getattr(self, key)
        return list(v) if isinstance(v, tuple) else v

    def get(self, key: str, default: Any = None) -> Any:
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
