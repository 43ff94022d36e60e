"""Every plot virkit draws, in one style.

Each ``plot_*`` function takes plain data (arrays, dicts, lists), returns a matplotlib ``Figure``
and never reads files or trains anything, so notebooks stay thin and tests can call them directly.
:class:`FigureSaver` writes a figure as PNG and PDF and records it (notebook, parameters, caption)
in a manifest that :func:`virkit.notebooks.write_index` turns into ``index.md`` / ``index.html``.

Style: one rc dictionary (:data:`STYLE`), applied by every function through :func:`styled`;
methods keep the same colour in every figure (:data:`METHOD_COLORS`), classes use ``tab10``.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LinearSegmentedColormap

__all__ = [
    "STYLE", "METHOD_COLORS", "METHOD_LABELS", "styled", "method_label", "dataset_label", "method_color", "FigureSaver",
    "figure_to_png", "plot_weight_landscape", "plot_weight_histograms", "plot_confusion_matrices",
    "plot_class_weights", "plot_per_class_accuracy", "plot_fairness", "plot_ablation",
    "plot_attributions", "plot_theory_risks", "plot_true_class_probability", "plot_robust_class_errors",
    "plot_training_curves", "table_figure",
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

METHOD_LABELS = {
    "natural": "Natural training", "at": "AT", "trades": "TRADES", "mart": "MART", "gairat": "GAIRAT",
    "mail-at": "MAIL-AT", "mail-trades": "MAIL-TRADES", "vir-at": "VIR-AT", "vir-trades": "VIR-TRADES",
    "vir-at-sv": "VIR-AT (S_v only)", "vir-at-sd": "VIR-AT (S_d only)",
    "vir-trades-sv": "VIR-TRADES (S_v only)", "vir-trades-sd": "VIR-TRADES (S_d only)",
}
METHOD_COLORS = {
    "natural": "#7f7f7f", "at": "#1f77b4", "trades": "#ff7f0e", "mart": "#2ca02c", "gairat": "#9467bd",
    "mail-at": "#8c564b", "mail-trades": "#e377c2", "vir-at": "#d62728", "vir-trades": "#bcbd22",
    "vir-at-sv": "#ff9896", "vir-at-sd": "#c49c94", "vir-trades-sv": "#dbdb8d", "vir-trades-sd": "#c7c7c7",
    "VIR": "#d62728", "GAIRAT": "#9467bd", "MAIL": "#8c564b",
}
ATTACK_LABELS = {"natural": "Natural", "fgsm": "FGSM", "pgd10": "PGD-10", "pgd20": "PGD-20", "pgd100": "PGD-100",
                 "cw": "CW", "fmn100": "FMN-100", "aa": "AA", "mde": "MDE", "square": "Square", "spsa": "SPSA"}
# white -> blue, for accuracies / shares (0 is white so empty cells read as empty)
SEQ_CMAP = LinearSegmentedColormap.from_list("virkit_blues", ["#ffffff", "#c6dbef", "#4292c6", "#08306b"])


def _finish(fig, title: str | None):
    """The common ending of the plot functions: optional suptitle, tight layout, the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def method_label(m: str) -> str:
    return METHOD_LABELS.get(m, m)


def dataset_label(d: str) -> str:
    """``cifar10`` -> ``CIFAR-10`` (the paper's spelling), unknown names unchanged."""
    from .report import DATASET_LABELS
    return DATASET_LABELS.get(d, d)


def method_color(m: str, i: int = 0) -> str:
    return METHOD_COLORS.get(m, plt.get_cmap("tab10")(i % 10))


def attack_label(a: str) -> str:
    return ATTACK_LABELS.get(a, a)


def styled(fn):
    """Run a plotting function inside ``plt.rc_context(STYLE)`` so every figure shares one style."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def figure_to_png(fig, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (for ipywidgets.Image and tests)."""
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    if not s:
        raise ValueError(f"figure name {name!r} has no usable characters")
    return s


class FigureSaver:
    """Save figures of one notebook as ``<fig_dir>/<notebook>__<name>.png`` and ``.pdf``.

    Every save appends a record (file names, notebook, parameters, caption) to
    ``<fig_dir>/.manifest/<notebook>.jsonl``; the batch runner clears that file before executing the
    notebook and builds the index from all manifests. ``fig_dir=None`` only displays.
    """

    def __init__(self, fig_dir: str | os.PathLike | None, notebook: str, parameters: Mapping | None = None,
                 formats: Sequence[str] = ("png", "pdf"), close: bool = False):
        self.fig_dir = Path(fig_dir) if fig_dir else None
        self.notebook = notebook
        self.parameters = dict(parameters or {})
        self.formats = tuple(formats)
        self.close = close
        self.saved: list[Path] = []
        if self.fig_dir is not None:
            self.fig_dir.mkdir(parents=True, exist_ok=True)

    @property
    def manifest(self) -> Path | None:
        return None if self.fig_dir is None else self.fig_dir / ".manifest" / f"{_slug(self.notebook)}.jsonl"

    def reset(self) -> None:
        """Forget earlier records of this notebook (start of a fresh execution)."""
        if self.manifest is not None and self.manifest.exists():
            self.manifest.unlink()

    def save(self, fig, name: str, caption: str = "") -> list[Path]:
        if self.fig_dir is None:
            return []
        stem = f"{_slug(self.notebook)}__{_slug(name)}"
        paths = []
        # fontTools warns about the embedded fonts' old timestamps when writing PDFs: noise
        logging.getLogger("fontTools").setLevel(logging.ERROR)
        with plt.rc_context(STYLE):
            for ext in self.formats:
                p = self.fig_dir / f"{stem}.{ext}"
                fig.savefig(p, format=ext, dpi=STYLE["savefig.dpi"])
                paths.append(p)
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        rec = {"name": name, "stem": stem, "files": [p.name for p in paths], "notebook": self.notebook,
               "parameters": _jsonable(self.parameters), "caption": caption}
        # one record per figure: a re-run (e.g. interactively in JupyterLab) replaces the old record
        old = []
        if self.manifest.is_file():
            old = [ln for ln in self.manifest.read_text(encoding="utf-8").splitlines()
                   if ln.strip() and json.loads(ln).get("stem") != stem]
        self.manifest.write_text("".join(ln + "\n" for ln in [*old, json.dumps(rec)]), encoding="utf-8")
        self.saved.extend(paths)
        if self.close:
            plt.close(fig)
        return paths


def _jsonable(v):
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return str(v)


# ----------------------------------------------------------------------------------------------
# 01 weight explorer
# ----------------------------------------------------------------------------------------------

@styled
def plot_weight_landscape(vir_grid: dict, vir_curves: dict, gairat: dict, mail: dict, title: str | None = None):
    """Four panels: VIR w over (p_y, KL) as a heatmap; VIR w against p_y for a few KL values;
    GAIRAT w against kappa; MAIL w against the probability margin.

    ``vir_grid``: ``p`` (P,), ``kl`` (Q,), ``w`` (Q, P), ``params`` (dict for the title);
    ``vir_curves``: ``p`` (P,), ``curves`` {KL value: (P,)}; ``gairat``: ``kappa``, ``w``, ``params``;
    ``mail``: ``pm``, ``w``, ``params``. :mod:`virkit.explorer` builds these from slider values.
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
    ax.set_title("VIR  w = α·exp(−γ·$p_y$)·KL + β\n" + ", ".join(f"{k}={_fmt(v)}" for k, v in pr.items()))
    ax.grid(False)

    ax = axes[1]
    cmap = plt.get_cmap("viridis")
    items = list(vir_curves["curves"].items())
    for i, (k, v) in enumerate(items):
        ax.plot(vir_curves["p"], v, color=cmap(i / max(len(items) - 1, 1)), label=f"KL = {_fmt(k)}")
    beta = vir_grid.get("params", {}).get("β")
    if beta:
        ax.axhline(beta, color="#999999", ls="--", lw=0.9, label=f"floor β = {_fmt(beta)}")
    ax.set_yscale("log")
    ax.set_xlabel("true-class probability $p_y(x)$")
    ax.set_ylabel("weight w (log scale)")
    ax.set_title("VIR weight vs. vulnerability")
    ax.legend(title="discrepancy", loc="upper right", fontsize=8)

    ax = axes[2]
    gp = gairat.get("params", {})
    ax.plot(gairat["kappa"], gairat["w"], "o-", color=METHOD_COLORS["GAIRAT"], drawstyle="default")
    ax.set_xlabel("κ: PGD steps still classified correctly")
    ax.set_ylabel("weight (before batch normalization)")
    ax.set_title("GAIRAT  w = (1 + tanh(λ + 5(1 − 2κ/K)))/2\n" + ", ".join(f"{k}={_fmt(v)}" for k, v in gp.items()))
    ax.set_ylim(0, 1.05)
    ax.set_xticks(gairat["kappa"])

    ax = axes[3]
    mp = mail.get("params", {})
    ax.plot(mail["pm"], mail["w"], color=METHOD_COLORS["MAIL"])
    ax.axvline(0, color="k", lw=0.6, alpha=0.5)
    ax.set_xlabel("probability margin PM = $p_y(x')$ − max$_{j≠y}\\,p_j(x')$")
    ax.set_ylabel("weight w")
    ax.set_title("MAIL  w = s·sigmoid(−γ(PM − β))\n" + ", ".join(f"{k}={_fmt(v)}" for k, v in mp.items()))
    ax.set_ylim(bottom=0)
    return _finish(fig, title)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


@styled
def plot_weight_histograms(per_method: Mapping[str, tuple], classes: Sequence[str], bins: int = 24,
                           title: str | None = None):
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
        log = lo > 0 and hi / lo > 50          # VIR weights span decades: log-spaced bins
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
    return _finish(fig, title)


# ----------------------------------------------------------------------------------------------
# 04 confusion matrices, 05 class weights, 06 per-class / fairness, 07 ablations
# ----------------------------------------------------------------------------------------------

@styled
def plot_confusion_matrices(mats: Mapping[str, np.ndarray], classes: Sequence[str], title: str | None = None,
                            ncols: int | None = None, normalize: bool = True):
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 2.2, size * nrows + 1.4), squeeze=False,
                             constrained_layout=True)
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
                        ax.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=7,
                                fontweight="bold" if r == c else "normal",
                                color="white" if v > 55 else "#222222")
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, pad=0.01, aspect=30)
        cb.set_label("% of the true class" if normalize else "count")
    if title:
        fig.suptitle(title, y=1.04)  # above the panel titles (the figure is saved with a tight bbox)
    return fig


@styled
def plot_class_weights(histories: Mapping[str, Sequence[Mapping]], classes: Sequence[str],
                       key: str = "weight_sum_per_class", title: str | None = None):
    """Figure 3: per-class sum of sample weights, one column per method.

    Top: the sums in the last epoch (bars, the largest and smallest class marked). Bottom: each
    class's share of the total weight per epoch (%), so epochs with different weight scales are
    comparable; burn-in epochs (all weights 1, shares equal to class frequencies) are shaded.
    ``histories``: {method: history records with ``epoch``, ``key`` and ``reweighting_active``}.
    """
    n = len(histories)
    fig, axes = plt.subplots(2, n, figsize=(6.4 * n + 1.6, 7.4), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.1]})
    cmap = plt.get_cmap("tab10")
    colors = [cmap(c % 10) for c in range(len(classes))]
    for j, (method, hist) in enumerate(histories.items()):
        ep = np.array([h["epoch"] for h in hist])
        vals = np.array([h[key] for h in hist], dtype=float)
        active = np.array([bool(h.get("reweighting_active", True)) for h in hist])
        ax = axes[0][j]
        last = vals[-1]
        bars = ax.bar(range(len(classes)), last, color=colors, edgecolor="white")
        hi, lo = int(np.argmax(last)), int(np.argmin(last))
        bars[hi].set_edgecolor("k")
        bars[hi].set_linewidth(1.5)
        ax.annotate("largest", (hi, last[hi]), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
        ax.annotate("smallest", (lo, last[lo]), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels(classes, rotation=35, ha="right")
        ax.set_ylabel("sum of sample weights")
        state = "reweighting active" if active[-1] else "burn-in, w = 1"
        ax.set_title(f"{method_label(method)}: last epoch ({int(ep[-1])}, {state})")
        ax.grid(axis="x", visible=False)
        ax.set_ylim(0, last.max() * 1.15 if last.max() > 0 else 1)
        ax = axes[1][j]
        share = 100 * vals / np.where(vals.sum(1, keepdims=True) == 0, 1, vals.sum(1, keepdims=True))
        if (~active).any():
            ax.axvspan(ep.min() - 0.5, ep[~active].max() + 0.5, color="#cccccc", alpha=0.35, lw=0,
                       label="burn-in (w = 1)")
        for c in range(vals.shape[1]):
            ax.plot(ep, share[:, c], "o-", ms=3.5, color=colors[c], label=classes[c])
        ax.set_xlabel("epoch")
        ax.set_ylabel("share of the total weight (%)")
        ax.set_title(f"{method_label(method)}: class shares during training")
        ax.set_xticks(ep if len(ep) <= 20 else ep[:: max(1, len(ep) // 10)])
    axes[1][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="class")
    return _finish(fig, title)


@styled
def plot_per_class_accuracy(per_method: Mapping[str, Sequence[float]], classes: Sequence[str],
                            errors: Mapping[str, Sequence[float]] | None = None, ylabel: str = "accuracy (%)",
                            title: str | None = None):
    """Grouped bars: per-class accuracy (%) for each method (values 0-100), optional std error bars."""
    methods = list(per_method)
    k = len(classes)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(min(15.0, 4.0 + 0.36 * k * max(1, len(methods)) ** 0.5), 4.3))
    x = np.arange(k)
    for i, m in enumerate(methods):
        v = np.asarray(per_method[m], dtype=float)
        err = None if errors is None or m not in errors else np.asarray(errors[m], dtype=float)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, v, width, yerr=err, capsize=2,
               color=method_color(m, i), label=method_label(m), edgecolor="white", linewidth=0.4)
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
def plot_fairness(rows: Sequence[Mapping], title: str | None = None):
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
        ax.scatter(r["average"], r[key], s=55, color=method_color(r["method"], methods.index(r["method"])),
                   marker=markers[attacks.index(r["attack"]) % len(markers)], edgecolor="k", linewidth=0.4)
    lo = min([r[key] for r in rows] + [0])
    hi = max([r["average"] for r in rows] + [1])
    ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.8, ls="--", label="equal to the average")
    ax.set_xlabel("average accuracy (%)")
    ax.set_ylabel(ylab)
    ax.set_title("Worst classes vs. average")
    handles = [plt.Line2D([], [], ls="", marker="o", color=method_color(m, i), label=method_label(m))
               for i, m in enumerate(methods)]
    handles += [plt.Line2D([], [], ls="", marker=markers[i % len(markers)], color="#555555", label=attack_label(a))
                for i, a in enumerate(attacks)]
    ax.legend(handles=handles, loc="upper left", fontsize=8, ncol=2)
    ax = axes[1]
    width = 0.8 / max(len(attacks), 1)
    x = np.arange(len(methods))
    for j, a in enumerate(attacks):
        vals = [next((r["std"] for r in rows if r["method"] == m and r["attack"] == a), np.nan) for m in methods]
        ax.bar(x + (j - (len(attacks) - 1) / 2) * width, vals, width, label=attack_label(a),
               color=plt.get_cmap("Greys")(0.35 + 0.55 * j / max(len(attacks) - 1, 1)), edgecolor="white")
    ax.set_xticks(x)
    ax.set_xticklabels([method_label(m) for m in methods], rotation=30, ha="right")
    ax.set_ylabel("std of class accuracies (%)")
    ax.set_title("Class disparity (lower is fairer)")
    ax.legend(title="attack")
    ax.grid(axis="x", visible=False)
    return _finish(fig, title)


@styled
def plot_ablation(panels: Mapping[str, Mapping], ylabel: str = "accuracy (%)", title: str | None = None):
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
                ax.bar(pos + (i - (len(series) - 1) / 2) * width, mean, width, yerr=std, capsize=2,
                       color=cmap(i), label=attack_label(attack))
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
            ax.set_xticklabels([_fmt(v) for v in xs])
        ax.set_xlabel(p.get("xlabel", ""))
        ax.set_ylabel(ylabel)
        ax.set_title(name)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="attack")
    return _finish(fig, title)


@styled
def plot_training_curves(histories: Mapping[str, Sequence[Mapping]], title: str | None = None):
    """Held-out natural and PGD accuracy per epoch for each run (labels: method names)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for i, (m, hist) in enumerate(histories.items()):
        ep = [h["epoch"] for h in hist]
        axes[0].plot(ep, [100 * h["holdout_nat_acc"] for h in hist], "o-", ms=3, color=method_color(m, i),
                     label=method_label(m))
        axes[1].plot(ep, [100 * h["holdout_pgd_acc"] for h in hist], "o-", ms=3, color=method_color(m, i),
                     label=method_label(m))
    from matplotlib.ticker import MaxNLocator

    for ax, what in zip(axes, ("natural", "PGD")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"held-out {what} accuracy (%)")
        ax.set_title(f"Held-out {what} accuracy")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _finish(fig, title)


@styled
def table_figure(df, title: str | None = None, highlight_max: bool = True):
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
    tbl = ax.table(cellText=cells, colLabels=cols, rowLabels=rows, cellLoc="center", rowLoc="left",
                   colWidths=[c / total for c in cw], bbox=[rw / total, 0, 1 - rw / total, 1])
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


# ----------------------------------------------------------------------------------------------
# 08 attributions
# ----------------------------------------------------------------------------------------------

@styled
def plot_attributions(images: np.ndarray, rows: Sequence[str], columns: Mapping[str, np.ndarray],
                      title: str | None = None):
    """A grid: one row per example (``rows`` are its labels), first column the image, then one column
    per attribution map (``columns``: {column title: maps (N, H, W)}, shown as |attribution|
    normalized per map to its 99th percentile)."""
    n = len(rows)
    ncol = 1 + len(columns)
    fig, axes = plt.subplots(n, ncol, figsize=(1.75 * ncol + 0.4, 1.85 * n + 0.8), squeeze=False)
    for i in range(n):
        img = np.asarray(images[i])
        if img.ndim == 3 and img.shape[0] in (1, 3):
            img = img.transpose(1, 2, 0)
        axes[i][0].imshow(np.clip(img.squeeze(), 0, 1), cmap="gray" if img.shape[-1] == 1 else None)
        axes[i][0].set_ylabel(rows[i], fontsize=8, rotation=0, ha="right", va="center", labelpad=4)
        for j, (name, maps) in enumerate(columns.items()):
            m = np.abs(np.asarray(maps[i], dtype=float))
            scale = np.percentile(m, 99) or 1.0
            axes[i][j + 1].imshow(np.clip(m / scale, 0, 1), cmap="inferno", vmin=0, vmax=1)
            if i == 0:
                axes[i][j + 1].set_title(name, fontsize=9)
        if i == 0:
            axes[i][0].set_title("image", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for s in ax.spines.values():
            s.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    if columns:
        sm = plt.cm.ScalarMappable(cmap="inferno", norm=plt.Normalize(0, 1))
        cax = fig.add_axes((0.915, 0.2, 0.015, 0.6))
        cb = fig.colorbar(sm, cax=cax)
        cb.set_label("|attribution| / 99th percentile of the map")
    return fig


# ----------------------------------------------------------------------------------------------
# 02 Gaussian-mixture theory
# ----------------------------------------------------------------------------------------------

@styled
def plot_theory_risks(K: np.ndarray, closed: np.ndarray, bayes: np.ndarray | None = None,
                      K_mc: np.ndarray | None = None, mc: np.ndarray | None = None, mc_se: np.ndarray | None = None,
                      title: str | None = None):
    """Theorem 1: class-wise natural risk of the best linear classifier against K (closed form,
    lines), Monte-Carlo estimates at ``K_mc`` (markers with 2-sigma bars) and optionally the
    quadratic Bayes classifier (dashed). Risk arrays have shape (len(K), 2): (R_minus, R_plus)."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    colors = ("#1f77b4", "#d62728")
    names = ("class −1 (std σ)", "class +1 (std Kσ)")
    for c in (0, 1):
        ax.plot(K, 100 * closed[:, c], color=colors[c], label=f"{names[c]}: Theorem 1 (best linear rule)")
        if bayes is not None:
            ax.plot(K, 100 * bayes[:, c], ls="--", color=colors[c], alpha=0.7,
                    label=f"{names[c]}: quadratic Bayes rule")
        if mc is not None:
            ax.errorbar(K_mc, 100 * mc[:, c], yerr=None if mc_se is None else 200 * mc_se[:, c], fmt="o", ms=5,
                        color=colors[c], mfc="white", mew=1.4, capsize=2, label=f"{names[c]}: Monte Carlo")
    ax.set_xlabel("K = std(class +1) / std(class −1)")
    ax.set_ylabel("class-wise natural error (%)")
    ax.set_title(title or "Class-wise risk of the optimal linear classifier")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


@styled
def plot_true_class_probability(p_y: np.ndarray, y: np.ndarray, class_names: Sequence[str] = ("class −1", "class +1"),
                                title: str | None = None):
    """Corollary 1: histogram of the logistic model's true-class probability p_y(x) per class
    (left), and the cumulative share of each class among the k most vulnerable examples (right)."""
    p_y = np.asarray(p_y, dtype=float)
    y = np.asarray(y, dtype=int)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = ("#1f77b4", "#d62728")
    edges = np.linspace(0, 1, 41)
    for c in (0, 1):
        v = p_y[y == c]
        axes[0].hist(v, bins=edges, density=True, histtype="stepfilled", alpha=0.35, color=colors[c],
                     label=f"{class_names[c]} (mean {v.mean():.3f}, 10th pct {np.quantile(v, 0.1):.3f})")
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
    return _finish(fig, title)


@styled
def plot_robust_class_errors(eps: np.ndarray, curves: Mapping[str, np.ndarray], train_eps: float | None = None,
                             title: str | None = None):
    """Class-wise robust error against the attack radius eps for several linear models.

    ``curves``: {model label: array (len(eps), 2) with columns (R_minus, R_plus)}. Left: class −1,
    middle: class +1, right: the gap R_plus − R_minus."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = ["-", "--", "-.", ":"]
    for i, (name, arr) in enumerate(curves.items()):
        key = name.split()[0].lower()
        kw = dict(color=METHOD_COLORS.get(key, "#000000"), ls=styles[i % len(styles)], label=name,
                  lw=2.4 if key.startswith("vir") else 1.8)
        axes[0].plot(eps, 100 * arr[:, 0], **kw)
        axes[1].plot(eps, 100 * arr[:, 1], **kw)
        axes[2].plot(eps, 100 * (arr[:, 1] - arr[:, 0]), **kw)
    titles = ("Class −1 (std σ): robust error", "Class +1 (std Kσ): robust error",
              "Disparity: class +1 − class −1")
    for ax, t in zip(axes, titles):
        ax.set_xlabel("L∞ attack radius ε")
        ax.set_title(t)
        if train_eps is not None:
            ax.axvline(train_eps, color="#999999", ls="--", lw=0.8)
    axes[0].set_ylabel("robust error (%)")
    axes[1].set_ylabel("robust error (%)")
    axes[2].set_ylabel("error gap (percentage points)")
    axes[2].legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _finish(fig, title)
