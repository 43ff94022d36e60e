"""Writing figures: :class:`FigureSaver` saves PNG + PDF and records each figure (notebook,
parameters, caption) in a manifest that :func:`virkit.notebooks.write_index` turns into
``index.md`` / ``index.html``."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt

from virkit.paper.figures.style import STYLE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FigureSaver"]


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

    def __init__(
        self,
        fig_dir: str | os.PathLike | None,
        notebook: str,
        parameters: Mapping | None = None,
        formats: Sequence[str] = ("png", "pdf"),
        close: bool = False,
    ):
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

    def save(self, fig: Figure, name: str, caption: str = "") -> list[Path]:
        if self.fig_dir is None:
            return []
        from virkit.io import to_jsonable  # imports torch: only when a figure is written

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
        rec = {
            "name": name,
            "stem": stem,
            "files": [p.name for p in paths],
            "notebook": self.notebook,
            "parameters": to_jsonable(self.parameters),
            "caption": caption,
        }
        # one record per figure: a re-run (e.g. interactively in JupyterLab) replaces the old record
        old = []
        if self.manifest.is_file():
            old = [
                ln
                for ln in self.manifest.read_text(encoding="utf-8").splitlines()
                if ln.strip() and json.loads(ln).get("stem") != stem
            ]
        self.manifest.write_text("".join(ln + "\n" for ln in [*old, json.dumps(rec)]), encoding="utf-8")
        self.saved.extend(paths)
        if self.close:
            plt.close(fig)
        return paths
