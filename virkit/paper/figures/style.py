"""One style for every figure: the rc dictionary (:data:`STYLE`) applied through :func:`styled`,
the colour map for accuracies, and the labels and colours of methods, attacks and datasets (from
:mod:`virkit.paper.catalogue`, figure spelling: ``Natural training``, ``Square``)."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import matplotlib.pyplot as plt
from matplotlib.colors import LinearSegmentedColormap

from virkit.paper import catalogue as paper

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "STYLE",
    "SEQ_CMAP",
    "METHOD_COLORS",
    "METHOD_FIGURE_LABELS",
    "ATTACK_FIGURE_LABELS",
    "styled",
    "method_label",
    "method_color",
    "attack_label",
    "dataset_label",
    "figure_to_png",
]

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
    "pdf.fonttype": 42,
}


# white -> blue, for accuracies / shares (0 is white so empty cells read as empty)
SEQ_CMAP = LinearSegmentedColormap.from_list("virkit_blues", ["#ffffff", "#c6dbef", "#4292c6", "#08306b"])

# Read-only views of the catalogue (virkit.paper.catalogue) in the figure spelling, for code that wants a
# mapping; the functions below are the lookups. The weighting schemes of the weight explorer (VIR,
# GAIRAT, MAIL) have colours too.
METHOD_FIGURE_LABELS = paper.labels(paper.METHOD_SPELLINGS, "figure_label")
METHOD_COLORS = paper.labels({**paper.METHOD_SPELLINGS, **paper.SCHEMES}, "color")
ATTACK_FIGURE_LABELS = paper.labels(paper.ATTACK_SPELLINGS, "figure_label")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def finish_figure(fig: Figure, title: str | None) -> Figure:
    """The common ending of the plot functions: optional suptitle, tight layout, the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def method_label(m: str) -> str:
    """``natural`` -> ``Natural training``, ``vir-at-sv`` -> ``VIR-AT (S_v only)``; unknown names unchanged."""
    return paper.method_label(m, "figure")


def dataset_label(d: str) -> str:
    """``cifar10`` -> ``CIFAR-10`` (the paper's spelling), unknown names unchanged."""
    return paper.dataset_label(d)


def method_color(m: str, i: int = 0) -> str | tuple[float, float, float, float]:
    """The method's colour (every figure the same); unknown methods: colour ``i`` of ``tab10``."""
    c = paper.method_color(m)
    return c if c is not None else plt.get_cmap("tab10")(i % 10)


def attack_label(a: str) -> str:
    """``square`` -> ``Square``, ``pgd100`` -> ``PGD-100``; unknown names unchanged."""
    return paper.attack_label(a, "figure")


def styled(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a plotting function inside ``plt.rc_context(STYLE)`` so every figure shares one style."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (for ipywidgets.Image and tests)."""
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def fmt_number(v: object) -> str:
    """Numbers in titles and tick labels: floats with 3 significant digits."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
