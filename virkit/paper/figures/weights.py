"""Notebook 01 (weight explorer): the weight functions of VIR, GAIRAT and MAIL over their inputs, and
real weights of a checkpoint on a batch, per class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from virkit.paper import catalogue as paper
from virkit.paper.figures.style import SEQ_CMAP, finish_figure, fmt_number, styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_weight_landscape", "plot_weight_histograms"]


@styled
def plot_weight_landscape(
    vir_grid: dict, vir_curves: dict, gairat: dict, mail: dict, title: str | None = None
) -> Figure:
    """Four panels: VIR w over (p_y, KL) as a heatmap; VIR w against p_y for a few KL values;
    GAIRAT w against kappa; MAIL w against the probability margin.

    ``vir_grid``: ``p`` (P,), ``kl`` (Q,), ``w`` (Q, P), ``params`` (dict for the title);
    ``vir_curves``: ``p`` (P,), ``curves`` {KL value: (P,)}; ``gairat``: ``kappa``, ``w``, ``params``;
    ``mail``: ``pm``, ``w``, ``params``. :mod:`virkit.notebooks.explorer` builds these from slider values.
    """
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.1), gridspec_kw={"width_ratios": [1.25, 1, 1, 1]})
    ax = axes[0]
    p, kl, w = vir_grid["p"], vir_grid["kl"], vir_grid["w"]
    from matplotlib.colors import LogNorm

    wmax = float(np.max(w))
    pos = w[w > 0]
    vmin = max(float(pos.min()) if pos.size else 1e-4, 1e-4 * max(wmax, 1e-12))
    norm = LogNorm(vmin=vmin, vmax=max(wmax, vmin * 10))
    im = ax.pcolormesh(p, kl, np.clip(w, vmin, None), shading="auto", cmap="magma", norm=norm)
    levels = [lv for lv in (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30) if vmin < lv < wmax]
    if levels:
        cs = ax.contour(p, kl, w, levels=levels, colors="white", linewidths=0.7, alpha=0.8)
        ax.clabel(cs, fontsize=7, fmt="%g")
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    cb.set_label("weight w (log scale)")
    ax.set_xlabel("true-class probability $p_y(x)$ (natural input)")
    ax.set_ylabel("discrepancy KL$(p(x)\\,\\|\\,p(x'))$ [nats]")
    pr = vir_grid.get("params", {})
    ax.set_title("VIR  w = α·exp(−γ·$p_y$)·KL + β\n" + ", ".join(f"{k}={fmt_number(v)}" for k, v in pr.items()))
    ax.grid(False)

    ax = axes[1]
    cmap = plt.get_cmap("viridis")
    items = list(vir_curves["curves"].items())
    for i, (k, v) in enumerate(items):
        ax.plot(vir_curves["p"], v, color=cmap(i / max(len(items) - 1, 1)), label=f"KL = {fmt_number(k)}")
    beta = vir_grid.get("params", {}).get("β")
    if beta:
        ax.axhline(beta, color="#999999", ls="--", lw=0.9, label=f"floor β = {fmt_number(beta)}")
    ax.set_yscale("log")
    ax.set_xlabel("true-class probability $p_y(x)$")
    ax.set_ylabel("weight w (log scale)")
    ax.set_title("VIR weight vs. vulnerability")
    ax.legend(title="discrepancy", loc="upper right", fontsize=8)

    ax = axes[2]
    gp = gairat.get("params", {})
    ax.plot(gairat["kappa"], gairat["w"], "o-", color=paper.SCHEMES["GAIRAT"].color, drawstyle="default")
    ax.set_xlabel("κ: PGD steps still classified correctly")
    ax.set_ylabel("weight (before batch normalization)")
    ax.set_title(
        "GAIRAT  w = (1 + tanh(λ + 5(1 − 2κ/K)))/2\n" + ", ".join(f"{k}={fmt_number(v)}" for k, v in gp.items())
    )
    ax.set_ylim(0, 1.05)
    ax.set_xticks(gairat["kappa"])

    ax = axes[3]
    mp = mail.get("params", {})
    ax.plot(mail["pm"], mail["w"], color=paper.SCHEMES["MAIL"].color)
    ax.axvline(0, color="k", lw=0.6, alpha=0.5)
    ax.set_xlabel("probability margin PM = $p_y(x')$ − max$_{j≠y}\\,p_j(x')$")
    ax.set_ylabel("weight w")
    ax.set_title("MAIL  w = s·sigmoid(−γ(PM − β))\n" + ", ".join(f"{k}={fmt_number(v)}" for k, v in mp.items()))
    ax.set_ylim(bottom=0)
    return finish_figure(fig, title)


@styled
def plot_weight_histograms(
    per_method: Mapping[str, tuple], classes: Sequence[str], bins: int = 24, title: str | None = None
) -> Figure:
    """Per-class histograms of real weights on a batch, one panel per weighting scheme.

    ``per_method``: {label: (weights (N,), labels (N,))}. Each panel is a class x weight-bin heatmap
    (colour: share of that class's examples in the bin; rows sum to 1) with the class mean marked.
    """
    n = len(per_method)
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n, 0.38 * len(classes) + 2.0), squeeze=False)
    k = len(classes)
    for ax, (name, (w, y)) in zip(axes[0], per_method.items()):
        w = np.asarray(w, dtype=float)
        y = np.asarray(y, dtype=int)
        lo, hi = float(np.min(w)), float(np.max(w))
        if hi - lo < 1e-9 * max(1.0, abs(hi)):
            lo, hi = lo - 0.5, hi + 0.5
        log = lo > 0 and hi / lo > 50  # VIR weights span decades: log-spaced bins
        edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
        H = np.zeros((k, bins))
        means = np.full(k, np.nan)
        for c in range(k):
            wc = w[y == c]
            if len(wc):
                h, _ = np.histogram(wc, bins=edges)
                H[c] = h / len(wc)
                means[c] = wc.mean()
        im = ax.pcolormesh(edges, np.arange(k + 1) - 0.5, H, cmap=SEQ_CMAP, vmin=0, vmax=max(H.max(), 1e-9))
        ax.plot(means, np.arange(k), "D", color="#d62728", ms=5, label="class mean")
        ax.set_yticks(np.arange(k))
        ax.set_yticklabels(classes)
        ax.invert_yaxis()
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(5))  # default formatter: an offset when the range is tiny
        ax.set_xlabel("weight w" + (" (log scale)" if log else ""))
        ax.set_title(f"{name}  (n={len(w)}, mean {w.mean():.3g})")
        ax.grid(False)
        cb = fig.colorbar(im, ax=ax, pad=0.02)
        cb.set_label("share of class in bin")
        ax.legend(loc="lower right", fontsize=8, frameon=True)
    axes[0][0].set_ylabel("true class")
    return finish_figure(fig, title)
