"""One evaluation as the reports read it: :class:`Evaluation` (an ``eval.json`` document, the run's
``config.json``, where it came from and the label it goes by) and :func:`load_evaluation`, which reads a
virkit run directory, a folder holding an ``eval.json`` or the file itself, and says what is wrong with
one it cannot read; :func:`checkpoint_eval_file` names the file that holds a run's evaluation of its last
or best checkpoint (the tables of :mod:`virkit.paper.report` read it too).

The page that shows evaluations is :mod:`virkit.paper.report_html`'s; what eval.json holds is
:mod:`virkit.evaluation.document`'s.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from virkit.errors import VirkitError
from virkit.evaluation import EVAL_FORMAT
from virkit.runs import RunDir, eval_state_root

__all__ = ["Evaluation", "load_evaluation", "checkpoint_eval_file"]


@dataclass
class Evaluation:
    """One evaluation as the page shows it: the eval.json document, the run's config.json (None for an
    outside model), where it came from and the label it goes by on the page."""

    path: Path
    doc: dict
    config: dict | None
    label: str
    note: str = ""

    @property
    def attacks(self) -> dict[str, dict]:
        return {k: v for k, v in self.doc["attacks"].items() if isinstance(v, dict) and "accuracy" in v}

    @property
    def classes(self) -> list[str]:
        return list(self.doc.get("classes") or [])

    def strongest(self) -> str:
        """The attack with the lowest accuracy (natural only when nothing else ran)."""
        atts = self.attacks
        pool = [a for a in atts if a != "natural"] or list(atts)
        return min(pool, key=lambda a: (atts[a]["accuracy"], list(atts).index(a)))


def checkpoint_eval_file(run: RunDir, checkpoint: str | None) -> Path:
    """eval.json, or the evaluation of ``checkpoint`` (``last``/``best``): the file the trainer's
    ``checkpoints`` record in eval.json names, else eval.json itself when it evaluated that checkpoint
    (``virkit evaluate --checkpoint RUN/best.pt``), else ``eval-<checkpoint>.json``."""
    if checkpoint is None:
        return run.eval_file
    try:
        doc = json.loads(run.eval_file.read_text())
    except (OSError, ValueError):
        doc = {}
    rec = (doc.get("checkpoints") or {}).get(checkpoint) or {}
    if rec.get("file"):
        return run.path / rec["file"]
    if Path(str((doc.get("extra") or {}).get("checkpoint", ""))).name == f"{checkpoint}.pt":
        return run.eval_file
    return run.eval_file_for(checkpoint)


def load_evaluation(path: str | os.PathLike, checkpoint: str | None = None) -> Evaluation:
    """Read one evaluation: a run directory (its eval.json, or the evaluation of ``checkpoint``
    ``last``/``best``), a folder with an eval.json, or an eval.json file. Raises :class:`VirkitError`
    naming the problem and the fix."""
    p = Path(path)
    if p.is_dir():
        run = RunDir(p)
        ev_file = checkpoint_eval_file(run, checkpoint) if run.config_file.is_file() else p / "eval.json"
        config = run.read_config() if run.config_file.is_file() else None
    elif p.is_file():
        ev_file, config = p, None
        if (p.parent / "config.json").is_file() and p.name.startswith("eval"):
            config = RunDir(p.parent).read_config()
    else:
        raise VirkitError(f"{p} does not exist; give a run directory, a folder with eval.json or an eval.json file")
    if not ev_file.is_file():
        raise VirkitError(
            f"{p} holds no evaluation ({ev_file.name} is missing); evaluate it first: virkit evaluate --model {p}"
        )
    try:
        doc = json.loads(ev_file.read_text())
    except (OSError, ValueError) as e:
        raise VirkitError(f"{ev_file} is not readable JSON ({e}); rerun the evaluation that wrote it") from None
    if not isinstance(doc, dict) or doc.get("format") != EVAL_FORMAT or not isinstance(doc.get("attacks"), dict):
        raise VirkitError(
            f"{ev_file} is not a virkit evaluation (format {EVAL_FORMAT}); write one with virkit evaluate"
        )
    if not any(isinstance(v, dict) and "accuracy" in v for v in doc["attacks"].values()):
        raise VirkitError(f"{ev_file} holds no finished attack; rerun the evaluation that wrote it")
    note = ""
    state = eval_state_root(ev_file)
    if state.is_dir():
        busy = ", ".join(sorted(d.name for d in state.iterdir())) or "unknown"
        note = f"unfinished evaluation: attacks in progress ({busy}) are not shown"
    return Evaluation(ev_file, doc, config if isinstance(config, dict) else None, _label(doc, config, p), note)


def _label(doc: dict, config: dict | None, path: Path) -> str:
    from virkit.paper.figures import method_label

    if isinstance(config, dict) and config.get("method"):
        ck = str((doc.get("extra") or {}).get("checkpoint") or "")
        label = f"{method_label(config['method'])} (seed {config.get('seed', '?')}"
        return label + (f", {ck})" if ck and ck != "last.pt" else ")")
    src = doc.get("model_source") or {}
    if isinstance(src, dict) and src.get("source"):
        return str(src["source"])
    return (path.parent.name if path.is_file() else path.name) or str(path)
