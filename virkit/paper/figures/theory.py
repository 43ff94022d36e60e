"""Notebook 02 (Gaussian-mixture theory, Appendix A): class-wise risks of Theorem 1,
the true-class probability of Corollary 1, and class-wise robust errors of linear models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from virkit.paper import catalogue as paper
from virkit.paper.figures.style import finish_figure, styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_theory_risks", "plot_true_class_probability", "plot_robust_class_errors"]


@styled
def plot_theory_risks(
    K: np.ndarray,
    closed: np.ndarray,
    bayes: np.ndarray | None = None,
    K_mc: np.ndarray | None = None,
    mc: np.ndarray | None = None,
    mc_se: np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """Theorem 1: class-wise natural risk of the best linear classifier against K (closed form,
    lines), Monte-Carlo estimates at ``K_mc`` (markers with 2-sigma bars) and optionally the
    quadratic Bayes classifier (dashed). Risk arrays have shape (len(K), 2): (R_minus, R_plus)."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    colors = ("#1f77b4", "#d62728")
    names = ("class −1 (std σ)", "class +1 (std Kσ)")
    for c in (0, 1):
        ax.plot(K, 100 * closed[:, c], color=colors[c], label=f"{names[c]}: Theorem 1 (best linear rule)")
        if bayes is not None:
            ax.plot(
                K, 100 * bayes[:, c], ls="--", color=colors[c], alpha=0.7, label=f"{names[c]}: quadratic Bayes rule"
            )
        if mc is not None:
            ax.errorbar(
                K_mc,
                100 * mc[:, c],
                yerr=None if mc_se is None else 200 * mc_se[:, c],
                fmt="o",
                ms=5,
                color=colors[c],
                mfc="white",
                mew=1.4,
                capsize=2,
                label=f"{names[c]}: Monte Carlo",
            )
    ax.set_xlabel("K = std(class +1) / std(class −1)")
    ax.set_ylabel("class-wise natural error (%)")
    ax.set_title(title or "Class-wise risk of the optimal linear classifier")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


@styled
def plot_true_class_probability(
    p_y: np.ndarray, y: np.ndarray, class_names: Sequence[str] = ("class −1", "class +1"), title: str | None = None
) -> Figure:
    """Corollary 1: histogram of the logistic model's true-class probability p_y(x) per class
    (left), and the cumulative share of each class among the k most vulnerable examples (right)."""
    p_y = np.asarray(p_y, dtype=float)
    y = np.asarray(y, dtype=int)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = ("#1f77b4", "#d62728")
    edges = np.linspace(0, 1, 41)
    for c in (0, 1):
        v = p_y[y == c]
        axes[0].hist(
            v,
            bins=edges,
            density=True,
            histtype="stepfilled",
            alpha=0.35,
            color=colors[c],
            label=f"{class_names[c]} (mean {v.mean():.3f}, 10th pct {np.quantile(v, 0.1):.3f})",
        )
        axes[0].hist(v, bins=edges, density=True, histtype="step", color=colors[c])
    axes[0].set_yscale("log")
    axes[0].set_xlabel("true-class probability $p_y(x)$ of a naturally trained logistic model")
    axes[0].set_ylabel("density (log scale)")
    axes[0].set_title("Who gets a low $p_y$?")
    axes[0].legend(loc="upper left", fontsize=8)
    order = np.argsort(p_y)
    frac = np.arange(1, len(order) + 1) / len(order)
    share_plus = np.cumsum(y[order] == 1) / np.arange(1, len(order) + 1)
    axes[1].plot(100 * frac, 100 * share_plus, color=colors[1], label=class_names[1])
    axes[1].plot(100 * frac, 100 * (1 - share_plus), color=colors[0], label=class_names[0])
    axes[1].axhline(100 * np.mean(y == 1), color="#999999", ls="--", lw=0.9, label="share in the data")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("most vulnerable examples considered (% of test set, lowest $p_y$ first)")
    axes[1].set_ylabel("share of class (%)")
    axes[1].set_title("Ranking by $p_y$ picks out the high-variance class")
    axes[1].set_ylim(0, 100)
    axes[1].legend(fontsize=8)
    return finish_figure(fig, title)


@styled
def plot_robust_class_errors(
    eps: np.ndarray, curves: Mapping[str, np.ndarray], train_eps: float | None = None, title: str | None = None
) -> Figure:
    """Class-wise robust error against the attack radius eps for several linear models.

    ``curves``: {model label: array (len(eps), 2) with columns (R_minus, R_plus)}. Left: class −1,
    middle: class +1, right: the gap R_plus − R_minus."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = ["-", "--", "-.", ":"]
    for i, (name, arr) in enumerate(curves.items()):
        key = name.split()[0].lower()
        kw = dict(
            color=paper.method_color(key) or "#000000",
            ls=styles[i % len(styles)],
            label=name,
            lw=2.4 if key.startswith("vir") else 1.8,
        )
        axes[0].plot(eps, 100 * arr[:, 0], **kw)
        axes[1].plot(eps, 100 * arr[:, 1], **kw)
        axes[2].plot(eps, 100 * (arr[:, 1] - arr[:, 0]), **kw)
    titles = ("Class −1 (std σ): robust error", "Class +1 (std Kσ): robust error", "Disparity: class +1 − class −1")
    for ax, t in zip(axes, titles):
        ax.set_xlabel("L∞ attack radius ε")
        ax.set_title(t)
        if train_eps is not None:
            ax.axvline(train_eps, color="#999999", ls="--", lw=0.8)
    axes[0].set_ylabel("robust error (%)")
    axes[1].set_ylabel("robust error (%)")
    axes[2].set_ylabel("error gap (percentage points)")
    axes[2].legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return finish_figure(fig, title)
