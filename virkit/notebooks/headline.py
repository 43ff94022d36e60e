"""What a batch run of the notebooks reports at its end, and its summary.json keeps (the figure
gallery cites it): :func:`batch_headline`, the one hook :func:`virkit.notebooks.runner.run_notebooks`
calls. For the notebook presets that is the demo's headline (:func:`demo_headline`): AT's accuracy,
its best and worst class, and Figure 3's verdict on VIR-AT's weights, read from the shared runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from virkit.notebooks.analysis import class_weight_totals, figure3_verdict
from virkit.notebooks.presets import NOTEBOOK_PRESETS

__all__ = ["batch_headline", "demo_headline"]


def batch_headline(runs_root: str | os.PathLike, preset: str) -> list[str]:
    """The lines a batch run of ``preset`` ends with (each ``headline: ...``), from the runs under
    ``runs_root``; empty when the runs they need are not there."""
    return demo_headline(runs_root, preset)


def demo_headline(runs_root: str | os.PathLike, preset: str) -> list[str]:
    """The demo's headline numbers from its shared runs: the AT model's natural accuracy and its
    accuracy under the preset's robust attack, the gap between its best and worst class under that
    attack, and how many epochs of VIR-AT reweighting Figure 3 sums over. Empty when the runs are
    not there."""
    from virkit.runs import RunDir

    attack = NOTEBOOK_PRESETS[preset].get("robust_attack", "pgd10")
    runs: dict[str, RunDir] = {}
    root = Path(runs_root)
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        cfg = RunDir(d).read_config()
        if cfg and cfg.get("method") in ("at", "vir-at") and RunDir(d).is_finished():
            runs.setdefault(cfg["method"], RunDir(d))
    out = []
    if "at" in runs and runs["at"].eval_file.is_file():
        ev = runs["at"].read_eval()
        att = ev.get("attacks", {})
        if "natural" in att and attack in att:
            fair = (ev.get("fairness") or {}).get(attack) or {}
            per = att[attack].get("per_class_accuracy") or []
            best = max((v for v in per if v is not None), default=None)
            out.append(
                f"headline: AT on {ev.get('n_examples')} test images: natural {100 * att['natural']['accuracy']:.1f}%, "
                f"{attack} {100 * att[attack]['accuracy']:.1f}%"
            )
            if best is not None and fair.get("worst_class") is not None:
                best_cls = ev["classes"][per.index(best)]
                out.append(
                    f"headline: classes under {attack}: best {best_cls} {100 * best:.1f}%, worst "
                    f"{fair['worst_class']} {100 * fair['worst_class_accuracy']:.1f}% "
                    f"(gap {100 * fair['best_minus_worst']:.1f} points)"
                )
    if "vir-at" in runs and runs["vir-at"].history_file.is_file():
        hist = runs["vir-at"].read_history()
        tot, n = class_weight_totals(hist)
        if n:
            cfg = runs["vir-at"].read_config() or {}
            classes = (cfg.get("data") or {}).get("classes") or [str(c) for c in range(len(tot))]
            out.append("headline: Figure 3: " + figure3_verdict({"vir-at": hist}, classes)[0])
    return out
