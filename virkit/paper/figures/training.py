"""Training runs: per-class sums of sample weights over the epochs (Figure 3, notebook 05) and
held-out accuracy per epoch (notebook 03)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from virkit.paper.figures.style import attack_label, finish_figure, method_color, method_label, styled

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "plot_class_weights",
    "plot_training_curves",
    "plot_overfitting_curves",
    "plot_overfitting_outcomes",
    "effective_lr",
]


@styled
def plot_class_weights(
    histories: Mapping[str, Sequence[Mapping]],
    classes: Sequence[str],
    key: str = "weight_sum_per_class",
    title: str | None = None,
) -> Figure:
    """Figure 3: per-class sum of sample weights, one column per method.

    Top: the sums over every reweighted epoch (bars, the largest and smallest class marked; the last
    epoch when no epoch reweighted), the quantity the paper's Figure 3 ranks classes by. Bottom: each
    class's share of the total weight per epoch (%), so epochs with different weight scales are
    comparable; burn-in epochs (all weights 1, shares equal to class frequencies) are shaded.
    ``histories``: {method: history records with ``epoch``, ``key`` and ``reweighting_active``}.
    """
    n = len(histories)
    fig, axes = plt.subplots(2, n, figsize=(6.4 * n + 1.6, 7.4), squeeze=False, gridspec_kw={"height_ratios": [1, 1.1]})
    cmap = plt.get_cmap("tab10")
    colors = [cmap(c % 10) for c in range(len(classes))]
    for j, (method, hist) in enumerate(histories.items()):
        ep = np.array([h["epoch"] for h in hist])
        vals = np.array([h[key] for h in hist], dtype=float)
        active = np.array([bool(h.get("reweighting_active", True)) for h in hist])
        ax = axes[0][j]
        last = vals[active].sum(0) if active.any() else vals[-1]
        bars = ax.bar(range(len(classes)), last, color=colors, edgecolor="white")
        hi, lo = int(np.argmax(last)), int(np.argmin(last))
        bars[hi].set_edgecolor("k")
        bars[hi].set_linewidth(1.5)
        ax.annotate(
            "largest", (hi, last[hi]), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points"
        )
        ax.annotate(
            "smallest", (lo, last[lo]), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points"
        )
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels(classes, rotation=35, ha="right")
        ax.set_ylabel("sum of sample weights")
        n_active = int(active.sum())
        ax.set_title(
            f"{method_label(method)}: summed over {n_active} reweighted epoch(s) "
            f"({int(ep[active].min())}-{int(ep[active].max())})"
            if n_active
            else f"{method_label(method)}: last epoch ({int(ep[-1])}, burn-in, w = 1)"
        )
        ax.grid(axis="x", visible=False)
        ax.set_ylim(0, last.max() * 1.15 if last.max() > 0 else 1)
        ax = axes[1][j]
        share = 100 * vals / np.where(vals.sum(1, keepdims=True) == 0, 1, vals.sum(1, keepdims=True))
        if (~active).any():
            ax.axvspan(
                ep.min() - 0.5, ep[~active].max() + 0.5, color="#cccccc", alpha=0.35, lw=0, label="burn-in (w = 1)"
            )
        for c in range(vals.shape[1]):
            ax.plot(ep, share[:, c], "o-", ms=3.5, color=colors[c], label=classes[c])
        ax.set_xlabel("epoch")
        ax.set_ylabel("share of the total weight (%)")
        ax.set_title(f"{method_label(method)}: class shares during training")
        ax.set_xticks(ep if len(ep) <= 20 else ep[:: max(1, len(ep) // 10)])
    axes[1][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="class")
    return finish_figure(fig, title)


def effective_lr(hist: Sequence[Mapping]) -> list[float]:
    """Per epoch, the learning rate times the epoch's mean sample weight: the step size the weighted
    loss actually takes (with raw VIR weights far below 1 it falls long before the lr schedule does)."""
    return [float(h["lr"]) * float(h.get("weight_mean", 1.0)) for h in hist]


@styled
def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping]], title: str | None = None, effective: bool | None = None
) -> Figure:
    """Held-out natural and PGD accuracy per epoch for each run (labels: method names) and, with
    ``effective`` (default: when the histories record ``lr``), the effective learning rate
    (lr × mean sample weight, log scale) side by side."""
    from matplotlib.ticker import MaxNLocator

    if effective is None:
        effective = all("lr" in h for hist in histories.values() for h in hist)

    def acc(h, key):
        v = h.get(key)
        return math.nan if v is None else 100 * float(v)

    # runs without per-epoch held-out PGD (e.g. holdout_pgd_steps=0) get no PGD panel
    panels = [
        k
        for k in ("holdout_nat_acc", "holdout_pgd_acc")
        if any(not math.isnan(acc(h, k)) for hist in histories.values() for h in hist)
    ] or ["holdout_nat_acc"]
    n = len(panels) + bool(effective)
    fig, axes = plt.subplots(1, n, figsize=(5.7 * n, 4))
    axes = list(axes) if n > 1 else [axes]
    for i, (m, hist) in enumerate(histories.items()):
        ep = [h["epoch"] for h in hist]
        style = dict(ms=3, color=method_color(m, i), label=method_label(m))
        for ax, key in zip(axes, panels):
            ax.plot(ep, [acc(h, key) for h in hist], "o-", **style)
        if effective:
            axes[-1].plot(ep, [float(h["lr"]) for h in hist], ":", lw=1, color=style["color"])
            axes[-1].plot(ep, effective_lr(hist), "o-", **style)
    for ax, key in zip(axes, panels):
        what = "natural" if key == "holdout_nat_acc" else "PGD"
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"held-out {what} accuracy (%)")
        ax.set_title(f"Held-out {what} accuracy")
    if effective:
        axes[-1].set_yscale("log")
        axes[-1].set_ylabel("lr × mean sample weight")
        axes[-1].set_title("Effective learning rate (dotted: lr)")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return finish_figure(fig, title)


@styled
def plot_overfitting_curves(curves: pd.DataFrame, title: str | None = None) -> Figure:
    """Robust overfitting and the weights (notebook 10): per method (mean over seeds, band: min to
    max), validation PGD accuracy per epoch (left) and lr x mean sample weight per epoch, the step
    the weights leave the optimizer (right, log scale); dotted lines at the lr drops.
    ``curves``: :func:`virkit.notebooks.overfitting.epoch_curves`'s table."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    dashes = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]  # runs that coincide (the same burn-in) stay visible
    for i, (method, g) in enumerate(curves.groupby("method", sort=False)):
        by_epoch = g.groupby("epoch")
        color = method_color(method, i)
        n = g["seed"].nunique()
        for ax, key in zip(axes, ("val_pgd", "lr_x_weight")):
            mean = by_epoch[key].mean()
            ax.plot(
                mean.index,
                mean.values,
                ls=dashes[i % len(dashes)],
                lw=1.6,
                color=color,
                label=f"{method_label(method)} ({n} seed{'s' if n != 1 else ''})",
            )
            if n > 1:
                ax.fill_between(
                    mean.index, by_epoch[key].min().values, by_epoch[key].max().values, color=color, alpha=0.12, lw=0
                )
    lr = curves.groupby("epoch")["lr"].first()
    drops = [int(e) for e, a, b in zip(lr.index[1:], lr.values[:-1], lr.values[1:]) if b < a]
    for ax in axes:
        for e in drops:
            ax.axvline(e - 0.5, ls=":", lw=1, color="0.4")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("validation PGD accuracy (%)")
    axes[0].set_title("Robust accuracy per epoch (dotted: lr drops)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("lr × mean sample weight")
    axes[1].set_title("The step the weights leave the optimizer")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return finish_figure(fig, title)


@styled
def plot_overfitting_outcomes(
    results: pd.DataFrame,
    fairness: pd.DataFrame,
    attack: str = "aa",
    reference: str = "at",
    title: str | None = None,
) -> Figure:
    """What each method ends with (notebook 10). Left: test accuracy under ``attack`` of the last and
    the best checkpoint, one marker per seed (a seed's two checkpoints joined by a line), the mean as
    a bar, and ``reference``'s last and best means as horizontal lines: does a method's last checkpoint
    beat the reference's last, and reach its best? Right: per-class accuracy under ``attack`` of the
    last checkpoints (mean over seeds, range over seeds as a bar), classes ordered by the reference's
    accuracy, weakest first: do the weak classes move?
    ``results``: :func:`virkit.notebooks.overfitting.checkpoint_results`; ``fairness``:
    :func:`~virkit.notebooks.overfitting.class_fairness` of the last checkpoints, same ``attack``."""
    methods = list(dict.fromkeys(results["method"]))
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.6), gridspec_kw={"width_ratios": [1, 1.35]})
    ax = axes[0]
    ref = results[results.method == reference]
    for ck, ls in (("last", "--"), ("best", ":")):
        vals = ref[ref.checkpoint == ck][attack].dropna()
        if len(vals):
            ax.axhline(vals.mean(), ls=ls, lw=1, color="0.35", label=f"{method_label(reference)} {ck}.pt, mean")
    offsets = {"last": -0.17, "best": 0.17}
    for i, m in enumerate(methods):
        g = results[results.method == m]
        color = method_color(m, i)
        for _, gs in g.groupby("seed"):
            pts = {ck: gs[gs.checkpoint == ck][attack].mean() for ck in offsets}
            ax.plot(
                [i + offsets["last"], i + offsets["best"]], [pts["last"], pts["best"]], color=color, lw=0.8, alpha=0.5
            )
        for ck, dx in offsets.items():
            v = g[g.checkpoint == ck][attack].dropna()
            ax.scatter(
                np.full(len(v), i + dx),
                v,
                s=22,
                color=color if ck == "last" else "white",
                edgecolors=color,
                zorder=3,
            )
            if len(v):
                ax.hlines(v.mean(), i + dx - 0.11, i + dx + 0.11, color=color, lw=2.2)
    ax.scatter([], [], s=22, color="0.3", label="last.pt (one per seed)")
    ax.scatter([], [], s=22, color="white", edgecolors="0.3", label="best.pt (one per seed)")
    ax.set_xticks(range(len(methods)), [method_label(m) for m in methods], rotation=20, ha="right")
    ax.set_ylabel(f"test accuracy under {attack_label(attack)} (%)")
    ax.set_title("Last and best checkpoint, per seed (bar: mean)")
    ax.legend(fontsize="small", loc="best")

    ax = axes[1]
    classes = [c for c in fairness.columns if c not in ("method", "seed", "worst class", "worst", "spread")]
    ref_f = fairness[fairness.method == reference]
    order = sorted(classes, key=lambda c: ref_f[c].mean()) if len(ref_f) else classes
    x = np.arange(len(order))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        g = fairness[fairness.method == m]
        if not len(g):
            continue
        mean, lo, hi = g[order].mean().values, g[order].min().values, g[order].max().values
        xs = x - 0.4 + width * (i + 0.5)
        ax.bar(xs, mean, width, color=method_color(m, i), label=method_label(m), alpha=0.9)
        if len(g) > 1:
            ax.vlines(xs, lo, hi, color="0.2", lw=0.8)
    ax.set_xticks(x, order, rotation=30, ha="right")
    ax.set_ylabel(f"accuracy under {attack_label(attack)} (%), last.pt")
    ax.set_title(f"Per class, weakest under {method_label(reference)} first (bar: mean, line: range over seeds)")
    ax.legend(fontsize="small", ncol=2, loc="upper left")
    return finish_figure(fig, title)
