"""Every plot virkit draws, in one style.

Each ``plot_*`` function takes plain data (arrays, dicts, lists), returns a matplotlib ``Figure``
and never reads files or trains anything, so notebooks stay thin and tests can call them directly.
:class:`FigureSaver` writes a figure as PNG and PDF and records it (notebook, parameters, caption)
in a manifest that :func:`virkit.notebooks.write_index` turns into ``index.md`` / ``index.html``.

Style: one rc dictionary (:data:`STYLE`), applied by every function through :func:`styled`;
methods keep the same colour in every figure (:func:`method_color`), classes use ``tab10``.
Labels and colours come from :mod:`virkit.paper.catalogue` (figure spelling).

Modules: :mod:`~virkit.paper.figures.style` (style, labels, colours), :mod:`~virkit.paper.figures.saver`
(:class:`FigureSaver`), :mod:`~virkit.paper.figures.weights` (notebook 01),
:mod:`~virkit.paper.figures.theory` (notebook 02), :mod:`~virkit.paper.figures.training` (notebooks 03, 05),
:mod:`~virkit.paper.figures.evaluation` (notebooks 03, 04, 06, 07), :mod:`~virkit.paper.figures.attributions`
(notebook 08). Everything public is importable from ``virkit.paper.figures`` itself.
"""

from __future__ import annotations

from virkit.paper.figures.attributions import plot_attributions
from virkit.paper.figures.evaluation import (
    plot_ablation,
    plot_confusion_matrices,
    plot_fairness,
    plot_per_class_accuracy,
    table_figure,
)
from virkit.paper.figures.saver import FigureSaver
from virkit.paper.figures.style import (
    ATTACK_FIGURE_LABELS,
    METHOD_COLORS,
    METHOD_FIGURE_LABELS,
    SEQ_CMAP,
    STYLE,
    attack_label,
    dataset_label,
    figure_to_png,
    method_color,
    method_label,
    styled,
)
from virkit.paper.figures.theory import plot_robust_class_errors, plot_theory_risks, plot_true_class_probability
from virkit.paper.figures.training import (
    plot_class_weights,
    plot_overfitting_curves,
    plot_overfitting_outcomes,
    plot_training_curves,
)
from virkit.paper.figures.weights import plot_weight_histograms, plot_weight_landscape

__all__ = [
    "STYLE",
    "METHOD_COLORS",
    "METHOD_FIGURE_LABELS",
    "ATTACK_FIGURE_LABELS",
    "SEQ_CMAP",
    "styled",
    "method_label",
    "dataset_label",
    "method_color",
    "attack_label",
    "FigureSaver",
    "figure_to_png",
    "plot_weight_landscape",
    "plot_weight_histograms",
    "plot_confusion_matrices",
    "plot_class_weights",
    "plot_per_class_accuracy",
    "plot_fairness",
    "plot_ablation",
    "plot_attributions",
    "plot_theory_risks",
    "plot_true_class_probability",
    "plot_robust_class_errors",
    "plot_training_curves",
    "plot_overfitting_curves",
    "plot_overfitting_outcomes",
    "table_figure",
]
