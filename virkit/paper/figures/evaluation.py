"""Results of evaluated runs: confusion matrices (Figures 1-2), per-class accuracy and class
disparity (notebooks 04, 06), accuracy against a swept hyperparameter (notebook 07, Tables 9-12) and
results tables drawn as figures."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from virkit.paper.figures.style import (
    SEQ_CMAP,
    attack_label,
    finish_figure,
    fmt_number,
    method_color,
    method_label,
    styled,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrices", "plot_per_class_accuracy", "plot_fairness", "plot_ablation", "table_figure"]


@styled
def plot_confusion_matrices(
    mats: Mapping[str, np.ndarray],
    classes: Sequence[str],
    title: str | None = None,
    ncols: int | None = None,
    normalize: bool = True,
) -> Figure:
    """Confusion matrices (rows: true class, columns: predicted), one panel each, as in Figures 1-2.

    ``mats``: {panel title: counts (C, C)}. With ``normalize`` each row is shown in % of the class,
    so the diagonal is the class-wise accuracy; cells are annotated (when C <= 12). Class names
    label both axes of the first column; the other panels share its rows.
    """
    n = len(mats)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    k = len(classes)
    size = 0.36 * k + 1.2
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols + 2.2, size * nrows + 1.4), squeeze=False, constrained_layout=True
    )
    im = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        name, cm = list(mats.items())[i]
        cm = np.asarray(cm, dtype=float)
        rows = cm.sum(1, keepdims=True)
        show = 100 * cm / np.where(rows == 0, 1, rows) if normalize else cm
        im = ax.imshow(show, cmap=SEQ_CMAP, vmin=0, vmax=100 if normalize else show.max())
        acc = 100 * np.trace(cm) / max(cm.sum(), 1)
        ax.set_title(f"{name}\n(accuracy {acc:.1f}%)")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(classes, rotation=60, ha="right")
        ax.set_xlabel("predicted class")
        if i % ncols == 0:
            ax.set_yticklabels(classes)
            ax.set_ylabel("true class")
        else:
            ax.set_yticklabels([])
        ax.grid(False)
        if k <= 12:
            for r in range(k):
                for c in range(k):
                    v = show[r, c]
                    if v >= 0.5 or r == c:
                        ax.text(
                            c,
                            r,
                            f"{v:.0f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            fontweight="bold" if r == c else "normal",
                            color="white" if v > 55 else "#222222",
                        )
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, pad=0.01, aspect=30)
        cb.set_label("% of the true class" if normalize else "count")
    if title:
        fig.suptitle(title, y=1.04)  # above the panel titles (the figure is saved with a tight bbox)
    return fig


@styled
def plot_per_class_accuracy(
    per_method: Mapping[str, Sequence[float]],
    classes: Sequence[str],
    errors: Mapping[str, Sequence[float]] | None = None,
    ylabel: str = "accuracy (%)",
    title: str | None = None,
) -> Figure:
    """Grouped bars: per-class accuracy (%) for each method (values 0-100), optional std error bars."""
    methods = list(per_method)
    k = len(classes)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(min(15.0, 4.0 + 0.36 * k * max(1, len(methods)) ** 0.5), 4.3))
    x = np.arange(k)
    for i, m in enumerate(methods):
        v = np.asarray(per_method[m], dtype=float)
        err = None if errors is None or m not in errors else np.asarray(errors[m], dtype=float)
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            v,
            width,
            yerr=err,
            capsize=2,
            color=method_color(m, i),
            label=method_label(m),
            edgecolor="white",
            linewidth=0.4,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set_xlabel("true class")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(ncol=min(len(methods), 4), loc="upper left", bbox_to_anchor=(0, 1.0))
    ax.grid(axis="x", visible=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


@styled
def plot_fairness(rows: Sequence[Mapping], title: str | None = None) -> Figure:
    """Robustness vs. class disparity: one point per method (and attack).

    ``rows``: dicts with ``method``, ``attack``, ``average`` (%), ``worst`` (worst-class %),
    ``std`` (std of class accuracies, %) and optionally ``worst3`` (mean of the three worst classes,
    %; used instead of ``worst`` when present, as it still separates methods whose worst class is at
    0). Left: worst classes vs. average accuracy (up-right is better and fairer); right: spread of
    class accuracies per method and attack.
    """
    key = "worst3" if all("worst3" in r for r in rows) else "worst"
    ylab = "mean accuracy of the 3 worst classes (%)" if key == "worst3" else "worst-class accuracy (%)"
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = "osD^vP*Xh"
    ax = axes[0]
    for r in rows:
        ax.scatter(
            r["average"],
            r[key],
            s=55,
            color=method_color(r["method"], methods.index(r["method"])),
            marker=markers[attacks.index(r["attack"]) % len(markers)],
            edgecolor="k",
            linewidth=0.4,
        )
    lo = min([r[key] for r in rows] + [0])
    hi = max([r["average"] for r in rows] + [1])
    ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.8, ls="--", label="equal to the average")
    ax.set_xlabel("average accuracy (%)")
    ax.set_ylabel(ylab)
    ax.set_title("Worst classes vs. average")
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=method_color(m, i), label=method_label(m))
        for i, m in enumerate(methods)
    ]
    handles += [
        plt.Line2D([], [], ls="", marker=markers[i % len(markers)], color="#555555", label=attack_label(a))
        for i, a in enumerate(attacks)
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=8, ncol=2)
    ax = axes[1]
    width = 0.8 / max(len(attacks), 1)
    x = np.arange(len(methods))
    for j, a in enumerate(attacks):
        vals = [next((r["std"] for r in rows if r["method"] == m and r["attack"] == a), np.nan) for m in methods]
        ax.bar(
            x + (j - (len(attacks) - 1) / 2) * width,
            vals,
            width,
            label=attack_label(a),
            color=plt.get_cmap("Greys")(0.35 + 0.55 * j / max(len(attacks) - 1, 1)),
            edgecolor="white",
        )
    ax.set_xticks(x)
    ax.set_xticklabels([method_label(m) for m in methods], rotation=30, ha="right")
    ax.set_ylabel("std of class accuracies (%)")
    ax.set_title("Class disparity (lower is fairer)")
    ax.legend(title="attack")
    ax.grid(axis="x", visible=False)
    return finish_figure(fig, title)


@styled
def plot_ablation(panels: Mapping[str, Mapping], ylabel: str = "accuracy (%)", title: str | None = None) -> Figure:
    """Accuracy against a hyperparameter, one panel per sweep.

    ``panels``: {panel title: {"x": values, "xlabel": str, "series": {attack: (means, stds)},
    "default": x of the paper's setting (marked)}}. Categorical x (strings) are plotted as bars.
    """
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n + 0.8, 4.0), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, p) in zip(axes[0], panels.items()):
        xs = list(p["x"])
        categorical = any(isinstance(v, str) for v in xs)
        pos = np.arange(len(xs)) if categorical else np.asarray(xs, dtype=float)
        series = p["series"]
        for i, (attack, (mean, std)) in enumerate(series.items()):
            mean = np.asarray(mean, dtype=float)
            std = np.asarray(std, dtype=float) if std is not None else None
            if categorical:
                width = 0.8 / len(series)
                ax.bar(
                    pos + (i - (len(series) - 1) / 2) * width,
                    mean,
                    width,
                    yerr=std,
                    capsize=2,
                    color=cmap(i),
                    label=attack_label(attack),
                )
            else:
                ax.errorbar(pos, mean, yerr=std, fmt="o-", capsize=3, color=cmap(i), label=attack_label(attack))
        if p.get("default") is not None and not categorical:
            ax.axvline(float(p["default"]), color="#999999", ls="--", lw=0.9, label="paper's value")
        if categorical:
            ax.set_xticks(pos)
            ax.set_xticklabels(xs, rotation=20, ha="right")
            ax.grid(axis="x", visible=False)
        else:
            ax.set_xticks(pos)
            ax.set_xticklabels([fmt_number(v) for v in xs])
        ax.set_xlabel(p.get("xlabel", ""))
        ax.set_ylabel(ylabel)
        ax.set_title(name)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="attack")
    return finish_figure(fig, title)


@styled
def table_figure(df: pd.DataFrame, title: str | None = None, highlight_max: bool = True) -> Figure:
    """Render a small results table (pandas DataFrame of strings/numbers) as a figure, with the best
    value of each numeric column in bold (cells of the form 'mean ± std' compare by mean)."""
    import pandas as pd

    nrows, ncols = df.shape
    cols = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]
    if isinstance(df.columns, pd.MultiIndex):
        cols = ["\n".join(map(str, c)) for c in df.columns]
    cells = [[str(v) for v in row] for row in df.values]
    rows = [str(i) for i in df.index]
    # column widths in characters -> inches
    cw = [max(1.3 * len(cols[j].split("\n")[-1]) + 1, *(len(c[j]) + 2 for c in cells)) for j in range(ncols)]
    rw = max([len(r) for r in rows] + [len(str(df.index.name or ""))])
    unit = 0.085
    width = min(unit * (rw + sum(cw)) + 0.3 * (ncols + 1), 22)
    height = 0.3 * (nrows + 1 + (1 if isinstance(df.columns, pd.MultiIndex) else 0)) + 0.25
    fig, ax = plt.subplots(figsize=(max(width, 4.0), height + (0.45 if title else 0)))
    ax.axis("off")
    total = rw + sum(cw)
    tbl = ax.table(
        cellText=cells,
        colLabels=cols,
        rowLabels=rows,
        cellLoc="center",
        rowLoc="left",
        colWidths=[c / total for c in cw],
        bbox=[rw / total, 0, 1 - rw / total, 1],
    )
    tbl.auto_set_font_size(False)
    tbl.set_fontsize(9)
    if highlight_max:
        for j in range(ncols):
            vals = [_lead_number(c[j]) for c in cells]
            if all(v is None for v in vals):
                continue
            best = max(v for v in vals if v is not None)
            for i, v in enumerate(vals):
                if v is not None and v == best:
                    tbl[(i + 1, j)].set_text_props(fontweight="bold")
    for (r, c), cell in tbl.get_celld().items():
        cell.set_edgecolor("#dddddd")
        if r == 0 or c == -1:
            cell.set_facecolor("#f0f0f0")
            cell.set_text_props(fontweight="bold")
    if title:
        ax.set_title(title, pad=8, loc="left")
    return fig


def _lead_number(s):
    m = re.match(r"\s*(-?\d+(?:\.\d+)?)", str(s))
    return float(m.group(1)) if m else None
