"""Logic behind notebook 01 (weight explorer): weight functions on grids, real weights of a
checkpoint on a batch, and the ipywidgets app that redraws both when a slider moves.

Formulas come from :mod:`virkit.reweighting`; the grid versions here evaluate the same formulas on
a mesh of (p_y, KL) values (``tests/test_figures.py`` checks they agree with
:func:`virkit.reweighting.vir_weights` on real logits).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from virkit import reweighting as rw

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULTS",
    "vir_grid",
    "vir_curves",
    "gairat_curve",
    "mail_curve",
    "landscape_figure",
    "BatchStats",
    "batch_statistics",
    "batch_weights",
    "histogram_figure",
    "WeightExplorer",
    "explorer_app",
]

# Slider defaults: the paper's VIR-AT values (Sec. 5.3), GAIRAT's official lambda, MAIL-AT's
# official slope/bias (see virkit.training.methods).
DEFAULTS = {
    "alpha": 7.0,
    "gamma": 10.0,
    "beta": 0.007,
    "gairat_lambda": -1.0,
    "gairat_steps": 10,
    "mail_gamma": 10.0,
    "mail_beta": -0.5,
    "mail_scale": 3.0,
    "kl_max": 2.0,
}


def vir_grid(alpha: float, gamma: float, beta: float, kl_max: float = 2.0, n: int = 121) -> dict:
    """VIR weight w = alpha exp(-gamma p) KL + beta on an n x n mesh p in [0, 1], KL in [0, kl_max]."""
    p = np.linspace(0.0, 1.0, n)
    kl = np.linspace(0.0, kl_max, n)
    sv = alpha * np.exp(-gamma * p)  # S_v (Eq. 5), one per column
    w = kl[:, None] * sv[None, :] + beta  # Eq. 7; rows: KL, columns: p_y
    return {"p": p, "kl": kl, "w": w, "params": {"α": alpha, "γ": gamma, "β": beta}}


def vir_curves(
    alpha: float, gamma: float, beta: float, kls: Iterable[float] = (0.05, 0.2, 0.5, 1.0, 2.0), n: int = 201
) -> dict:
    p = np.linspace(0.0, 1.0, n)
    return {"p": p, "curves": {float(k): alpha * np.exp(-gamma * p) * k + beta for k in kls}, "params": {"β": beta}}


def gairat_raw(kappa: np.ndarray, num_steps: int, lam: float) -> np.ndarray:
    """GAIRAT's weight *before* its batch normalization: (1 + tanh(lam + (K//2 - kappa) 5 / (K//2))) / 2.
    :func:`virkit.reweighting.gairat_weights` is this, rescaled to batch mean 1."""
    half = max(num_steps // 2, 1)
    return (np.tanh(lam + (half - np.asarray(kappa, dtype=float)) * 5.0 / half) + 1.0) / 2.0


def gairat_curve(lam: float, num_steps: int = 10) -> dict:
    kappa = np.arange(num_steps + 1)
    return {"kappa": kappa, "w": gairat_raw(kappa, num_steps, lam), "params": {"λ": lam, "K": num_steps}}


def mail_curve(gamma: float, beta: float, scale: float = 3.0, n: int = 201) -> dict:
    """MAIL's weight against the probability margin PM in [-1, 1], computed by
    :func:`virkit.reweighting.mail_weights` on two-class logits with exactly that margin."""
    pm = np.linspace(-0.999, 0.999, n)
    p_true = (1.0 + pm) / 2.0
    logits = torch.tensor(np.stack([np.log(p_true), np.log(1.0 - p_true)], 1), dtype=torch.float32)
    y = torch.zeros(n, dtype=torch.int64)
    w = rw.mail_weights(logits, y, gamma, beta, scale).numpy()
    return {"pm": pm, "w": w, "params": {"γ": gamma, "β": beta, "s": scale}}


def landscape_figure(
    alpha: float = DEFAULTS["alpha"],
    gamma: float = DEFAULTS["gamma"],
    beta: float = DEFAULTS["beta"],
    gairat_lambda: float = DEFAULTS["gairat_lambda"],
    gairat_steps: float = DEFAULTS["gairat_steps"],  # a number of steps: taken as int(gairat_steps)
    mail_gamma: float = DEFAULTS["mail_gamma"],
    mail_beta: float = DEFAULTS["mail_beta"],
    mail_scale: float = DEFAULTS["mail_scale"],
    kl_max: float = DEFAULTS["kl_max"],
) -> Figure:
    from virkit.paper.figures import plot_weight_landscape

    return plot_weight_landscape(
        vir_grid(alpha, gamma, beta, kl_max),
        vir_curves(alpha, gamma, beta),
        gairat_curve(gairat_lambda, int(gairat_steps)),
        mail_curve(mail_gamma, mail_beta, mail_scale),
        title="Instance weights of VIR, GAIRAT and MAIL",
    )


# ----------------------------------------------------------------------------------------------
# Real weights of a trained model on a batch
# ----------------------------------------------------------------------------------------------


@dataclass
class BatchStats:
    """What the weight functions need, computed once per batch (then sliders only re-weight)."""

    logits_nat: torch.Tensor
    logits_adv: torch.Tensor
    kappa: torch.Tensor  # GAIRAT: PGD iterations at which the iterate was still correct
    y: torch.Tensor
    steps: int
    classes: list


def batch_statistics(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: Sequence[str],
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    seed: int = 0,
) -> BatchStats:
    """PGD-``steps`` (CE, uniform start) on a batch in eval mode, counting GAIRAT's kappa on the way.

    The loop is written out here (instead of calling :func:`virkit.attacks.pgd`) only because it also
    counts, before each step, whether the current iterate is still classified correctly.
    """
    model.eval()
    g = torch.Generator(device=x.device).manual_seed(int(seed))
    with torch.no_grad():
        logits_nat = model(x).float()
    x_adv = (x + (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps).clamp(0, 1)
    kappa = torch.zeros(len(y), dtype=torch.int64, device=x.device)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        kappa += (logits.argmax(1) == y).long()
        loss = F.cross_entropy(logits.float(), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        logits_adv = model(x_adv).float()
    return BatchStats(logits_nat.cpu(), logits_adv.cpu(), kappa.cpu(), y.cpu(), steps, list(classes))


def batch_weights(
    stats: BatchStats,
    alpha: float = DEFAULTS["alpha"],
    gamma: float = DEFAULTS["gamma"],
    beta: float = DEFAULTS["beta"],
    gairat_lambda: float = DEFAULTS["gairat_lambda"],
    mail_gamma: float = DEFAULTS["mail_gamma"],
    mail_beta: float = DEFAULTS["mail_beta"],
    mail_scale: float = DEFAULTS["mail_scale"],
    **_ignored: Any,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{label: (weights, labels)} for VIR, GAIRAT (batch-normalized, as in training) and MAIL."""
    y = stats.y.numpy()
    vir = rw.vir_weights(stats.logits_nat, stats.logits_adv, stats.y, alpha, gamma, beta).numpy()
    gai = rw.gairat_weights(stats.kappa, stats.steps, gairat_lambda).numpy()
    mail = rw.mail_weights(stats.logits_adv, stats.y, mail_gamma, mail_beta, mail_scale).numpy()
    return {"VIR": (vir, y), "GAIRAT": (gai, y), "MAIL": (mail, y)}


def histogram_figure(stats: BatchStats, title: str | None = None, **params: float) -> Figure:
    from virkit.paper.figures import plot_weight_histograms

    p_y = rw.true_class_probability(stats.logits_nat, stats.y)
    title = title or (
        f"Weights on a batch of {len(stats.y)} test images "
        f"(PGD-{stats.steps}; mean natural $p_y$ {float(p_y.mean()):.2f})"
    )
    return plot_weight_histograms(batch_weights(stats, **params), stats.classes, title=title)


def load_batch(
    checkpoint: str | Path,
    n: int = 256,
    split: str = "test",
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    steps: int = 10,
    device: str = "cpu",
) -> BatchStats:
    """Load a trained model (run directory or .pt) and compute :class:`BatchStats` on ``n`` seeded
    test images of the dataset it was trained on."""
    from virkit.data import load_dataset, subset
    from virkit.models import load_checkpoint

    model, cfg = load_checkpoint(checkpoint, device=device)
    ds = load_dataset(cfg["dataset"], data_root or cfg.get("data_root"), split, gmm=cfg.get("extra", {}).get("gmm"))
    ds = subset(ds, min(n, len(ds)), seed=seed)
    x = ds.float_images().to(device)
    return batch_statistics(
        model,
        x,
        ds.y.to(device),
        ds.classes,
        eps=cfg.get("eps", 8 / 255),
        step_size=cfg.get("step_size", 2 / 255),
        steps=steps,
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------
# The widget app
# ----------------------------------------------------------------------------------------------


class WeightExplorer:
    """Sliders for alpha, gamma, beta, GAIRAT lambda and MAIL gamma/beta; two ``ipywidgets.Image``
    panels (the weight landscape and, with ``stats``, the per-class histogram of real weights)
    that are redrawn whenever a slider changes. ``redraw()`` can be called directly (tests)."""

    def __init__(
        self, stats: BatchStats | None = None, continuous_update: bool = False, dpi: int = 80, **values: float
    ):
        import ipywidgets as W

        self.stats = stats
        self.dpi = dpi
        v = {**DEFAULTS, **values}
        cu = continuous_update
        style = {"description_width": "110px"}
        layout = W.Layout(width="380px")
        self.sliders = {
            "alpha": W.FloatSlider(
                value=v["alpha"],
                min=0.5,
                max=20.0,
                step=0.5,
                description="VIR α",
                continuous_update=cu,
                style=style,
                layout=layout,
            ),
            "gamma": W.FloatSlider(
                value=v["gamma"],
                min=1.0,
                max=20.0,
                step=0.5,
                description="VIR γ",
                continuous_update=cu,
                style=style,
                layout=layout,
            ),
            "beta": W.FloatSlider(
                value=v["beta"],
                min=0.0,
                max=2.0,
                step=0.001,
                readout_format=".3f",
                description="VIR β",
                continuous_update=cu,
                style=style,
                layout=layout,
            ),
            "gairat_lambda": W.FloatSlider(
                value=v["gairat_lambda"],
                min=-3.0,
                max=3.0,
                step=0.25,
                description="GAIRAT λ",
                continuous_update=cu,
                style=style,
                layout=layout,
            ),
            "mail_gamma": W.FloatSlider(
                value=v["mail_gamma"],
                min=0.5,
                max=20.0,
                step=0.5,
                description="MAIL γ",
                continuous_update=cu,
                style=style,
                layout=layout,
            ),
            "mail_beta": W.FloatSlider(
                value=v["mail_beta"],
                min=-1.0,
                max=1.0,
                step=0.05,
                description="MAIL β",
                continuous_update=cu,
                style=style,
                layout=layout,
            ),
        }
        self.fixed = {
            "gairat_steps": int(v["gairat_steps"]),
            "mail_scale": float(v["mail_scale"]),
            "kl_max": float(v["kl_max"]),
        }
        self.landscape = W.Image(format="png", layout=W.Layout(width="100%"))
        self.landscape.add_class("virkit-landscape")
        self.histogram = W.Image(format="png", layout=W.Layout(width="100%"))
        self.histogram.add_class("virkit-histogram")
        self.status = W.HTML()
        self.status.add_class("virkit-status")
        self.redraws = 0
        for s in self.sliders.values():
            s.observe(lambda change: self.redraw(), names="value")
        controls = W.VBox(
            [
                W.HTML("<b>VIR</b> w = α·exp(−γ·p<sub>y</sub>)·KL + β"),
                self.sliders["alpha"],
                self.sliders["gamma"],
                self.sliders["beta"],
                W.HTML("<b>Baselines</b>"),
                self.sliders["gairat_lambda"],
                self.sliders["mail_gamma"],
                self.sliders["mail_beta"],
                self.status,
            ]
        )
        children = [W.HBox([controls]), self.landscape]
        if stats is not None:
            children.append(self.histogram)
        self.widget = W.VBox(children)
        self.widget.add_class("virkit-explorer")
        self.redraw()

    @property
    def values(self) -> dict:
        return {k: float(s.value) for k, s in self.sliders.items()}

    def figures(self) -> tuple[Figure, Figure | None]:
        """The current (landscape, histogram-or-None) matplotlib figures."""
        v = {**self.values, **self.fixed}
        land = landscape_figure(**v)
        hist = histogram_figure(self.stats, **v) if self.stats is not None else None
        return land, hist

    def redraw(self) -> None:
        import matplotlib.pyplot as plt

        from virkit.paper.figures import figure_to_png

        land, hist = self.figures()
        self.landscape.value = figure_to_png(land, dpi=self.dpi)
        plt.close(land)
        if hist is not None:
            self.histogram.value = figure_to_png(hist, dpi=self.dpi)
            plt.close(hist)
        self.redraws += 1
        self.status.value = (
            f"<span>redraw #{self.redraws}: " + ", ".join(f"{k}={val:g}" for k, val in self.values.items()) + "</span>"
        )


def explorer_app(
    checkpoint: str | Path | None = None,
    n: int = 256,
    steps: int = 10,
    data_root: str | os.PathLike | None = None,
    **values: Any,  # WeightExplorer's keywords: slider values, continuous_update, dpi
) -> WeightExplorer:
    """Build the explorer; with ``checkpoint`` (run dir or .pt) also the real-weight histogram."""
    stats = load_batch(checkpoint, n=n, steps=steps, data_root=data_root) if checkpoint else None
    return WeightExplorer(stats, **values)
