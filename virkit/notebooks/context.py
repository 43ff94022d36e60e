"""What a notebook does right after its parameters cell:
``ctx = setup("07_ablations", preset=preset, fig_dir=fig_dir, runs_root=runs_root, tables=tables, ...)``.

:func:`setup` takes the values of the notebook's parameters (every name of its ``parameters`` cell,
passed explicitly as keywords), validates them once against the cell's defaults, and returns a
:class:`NotebookContext`: the validated values (``ctx.params``), the preset's settings, where
figures and shared runs go, and shortcuts to train/reuse runs and to save + show figures.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virkit.errors import VirkitError
from virkit.notebooks.parameters import check_values, find_notebook, notebook_parameters
from virkit.notebooks.presets import COMMON_PARAMETERS, preset_settings, run_paths, shared_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["REPO_ROOT", "NotebookContext", "setup", "output_root"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def output_root() -> Path:
    """Where a notebook writes when its ``fig_dir`` / ``runs_root`` are empty (run by hand with its
    defaults): ``$VIRKIT_NOTEBOOK_OUTPUT`` if set, else this checkout."""
    env = os.environ.get("VIRKIT_NOTEBOOK_OUTPUT")
    return Path(env) if env else REPO_ROOT


class NotebookContext:
    """A notebook's parameters, its preset's settings, and where its figures and runs go.

    Empty ``fig_dir`` / ``runs_root`` mean ``<repo>/figures/<preset>`` and
    ``<repo>/runs/notebooks/<preset>/runs`` (what ``virkit notebooks run`` uses too; ``<repo>`` is
    ``$VIRKIT_NOTEBOOK_OUTPUT`` when set, :func:`output_root`).
    ``params``: every parameter of the notebook, validated (:func:`setup`).
    """

    def __init__(
        self,
        notebook: str,
        preset: str,
        fig_dir: str = "",
        runs_root: str = "",
        parameters: Mapping[str, Any] | None = None,
    ):
        from virkit.paper.figures import FigureSaver

        self.notebook = notebook
        self.preset = preset
        self.settings = preset_settings(preset)
        self.fig_dir = Path(fig_dir) if fig_dir else output_root() / "figures" / preset
        self.runs_root = Path(runs_root) if runs_root else output_root() / "runs" / "notebooks" / preset / "runs"
        self.params = {**dict(parameters or {}), "preset": preset, "fig_dir": fig_dir, "runs_root": runs_root}
        # what the figure index records: the values that shape the figures (paths are machine-specific)
        self.parameters = {"preset": preset, **{k: v for k, v in self.params.items() if k not in COMMON_PARAMETERS}}
        self.saver = FigureSaver(self.fig_dir, notebook, self.parameters)
        self.robust_attack = self.settings["robust_attack"]
        self.seeds = list(self.settings["seeds"])

    def run(self, method: str, seed: int = 0, **overrides: Any) -> Path:
        """The run directory of ``method``/``seed`` with this preset's budget (trained once, shared)."""
        return shared_run(method, self.preset, self.runs_root, seed=seed, **overrides)

    def runs(
        self, methods: Iterable[str], seeds: Iterable[int] | None = None, **overrides: Any
    ) -> dict[tuple[str, int], Path]:
        return run_paths(methods, self.preset, self.runs_root, self.seeds if seeds is None else seeds, **overrides)

    def show(self, fig: Figure, name: str, caption: str = "") -> None:
        """Save ``fig`` (PNG + PDF, recorded for the index), display it, close it."""
        import matplotlib.pyplot as plt

        paths = self.saver.save(fig, name, caption)
        try:
            from IPython.display import Image, display
        except ImportError:  # pragma: no cover
            plt.close(fig)
            return
        # the PNG itself, not the figure object: a figure displays as an image only under the inline
        # backend, and `make demo` runs the kernels with MPLBACKEND=Agg
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png is None:
            import io

            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            display(Image(data=buf.getvalue()))
        else:
            display(Image(filename=str(png)))
        plt.close(fig)

    def __repr__(self) -> str:
        return (
            f"NotebookContext({self.notebook!r}, preset={self.preset!r}: {self.settings['description']}; "
            f"figures -> {self.fig_dir}; runs -> {self.runs_root})"
        )


def setup(notebook: str, /, **parameters: Any) -> NotebookContext:
    """Called by each notebook right after its parameters cell, with every parameter of that cell:
    ``ctx = setup("03_train_and_evaluate", preset=preset, fig_dir=fig_dir, runs_root=runs_root, method=method, ...)``.

    Checks ``parameters`` against the cell's names and defaults (one-line :class:`VirkitError` for
    a parameter of the cell not passed, a name the cell does not have, or a wrong type) and
    returns the context, with the values in ``ctx.params``.
    """
    path = find_notebook(notebook)
    declared = notebook_parameters(path)
    name = path.stem
    lacking = [p for p in COMMON_PARAMETERS if p not in declared]
    if lacking:
        raise VirkitError(
            f"notebook {name}: its parameters cell lacks {', '.join(lacking)} (every notebook has "
            f"{', '.join(COMMON_PARAMETERS)})"
        )
    # in the cell's order (the figure index records them so), then any name the cell lacks (an error)
    values = check_values(declared, {p: parameters[p] for p in declared if p in parameters} | parameters, name)
    missing = [p for p in declared if p not in values]
    if missing:
        raise VirkitError(
            f"notebook {name}: parameter(s) {', '.join(missing)} not passed to setup(); pass every "
            "parameter of the parameters cell"
        )
    ctx = NotebookContext(notebook, values["preset"], values["fig_dir"] or "", values["runs_root"] or "", values)
    print(ctx)
    return ctx
