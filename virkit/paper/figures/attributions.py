"""Notebook 08: attribution maps (Integrated Gradients, saliency) of the most and least vulnerable
test images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from virkit.paper.figures.style import styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_attributions"]


@styled
def plot_attributions(
    images: np.ndarray, rows: Sequence[str], columns: Mapping[str, np.ndarray], title: str | None = None
) -> Figure:
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
