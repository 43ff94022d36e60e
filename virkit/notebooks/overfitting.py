"""Robust overfitting and VIR (issue 25, notebook 10, docs/RESULTS.md): the scale-matched control
grid in a regime where adversarial training overfits robustly, read from its run directories.

The grid (``configs/grids/control_overfit.yaml``) trains AT, four VIR-AT variants and the two
reweighting baselines over seeds:

=================  ===========================================================================
``at``             the unweighted baseline
``vir-at-w1``      the VIR-AT pipeline with w = 1 (differs from ``vir-at`` in the weight only)
``vir-at``         the paper's weights (alpha 7, beta 0.007, gamma 10)
``vir-at-mean1``   VIR's redistribution rescaled to batch mean 1 (redistribution, no rescaling)
``vir-at-flat``    VIR's batch-mean weight for every example (rescaling, no redistribution)
``gairat``         GAIRAT's geometry-aware weights (mean 1), from AT's burn-in
``mail-at``        MAIL-AT's margin-aware weights (3 sigmoid, not normalized), from ``vir-at-w1``'s burn-in
=================  ===========================================================================

If VIR's small weights act as early stopping, VIR-AT beats AT's last checkpoint and matches its
best, and so does VIR-AT-FLAT; if the redistribution matters, VIR-AT-MEAN1 does too. The functions
below give the per-epoch curves (validation PGD accuracy, lr x mean weight), the final table of
both checkpoints under every attack (mean ± std over seeds and paired differences by seed) and the
per-class fairness under the strongest attack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from virkit.errors import VirkitError
from virkit.notebooks.context import output_root
from virkit.paper.report import checkpoint_eval_file, mean_std
from virkit.runs import RunDir

__all__ = [
    "GRID_METHODS",
    "CHECKPOINTS",
    "grid_runs",
    "epoch_curves",
    "checkpoint_results",
    "summary_table",
    "paired_table",
    "class_fairness",
    "fairness_table",
]

#: the control grid's rows, in the order the tables show them
GRID_METHODS = ("at", "vir-at-w1", "vir-at", "vir-at-mean1", "vir-at-flat", "gairat", "mail-at")
CHECKPOINTS = ("last", "best")


def grid_runs(grid_dir: str | os.PathLike, methods: Sequence[str] = GRID_METHODS) -> dict[str, dict[int, Path]]:
    """The finished runs under a sweep's folder (or any folder of run directories): ``{method:
    {seed: run dir}}`` for ``methods``, read from each run's config.json and summary.json (not from
    folder names). A relative ``grid_dir`` that is not a folder here is taken from the checkout (or
    ``$VIRKIT_NOTEBOOK_OUTPUT``), where the notebooks write. Unfinished runs are left out; a folder
    without any finished run is an error."""
    root = Path(grid_dir)
    if not root.is_absolute() and not root.is_dir():
        root = output_root() / root
    if not root.is_dir():
        raise VirkitError(
            f"{root} is not a folder; give the grid's --out folder (virkit sweep "
            "configs/grids/control_overfit.yaml --out FOLDER)"
        )
    runs: dict[str, dict[int, Path]] = {m: {} for m in methods}
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        run = RunDir(path)
        cfg, summary = run.read_config() or {}, run.read_summary() or {}
        if cfg.get("method") in runs and summary.get("status") == "finished":
            runs[cfg["method"]][int(cfg.get("seed", 0))] = path
    runs = {m: dict(sorted(s.items())) for m, s in runs.items() if s}
    if not runs:
        raise VirkitError(f"{root} holds no finished run of {', '.join(methods)}; run the grid first")
    return runs


def epoch_curves(runs: Mapping[str, Mapping[int, str | os.PathLike]]) -> pd.DataFrame:
    """One row per method, seed and epoch: ``lr``, validation natural and PGD accuracy (%), training
    adversarial accuracy (%), mean sample weight and ``lr_x_weight`` (the step the weights leave
    the optimizer: lr x mean weight), ``reweighting`` (whether the weights were on)."""
    rows = []
    for method, seeds in runs.items():
        for seed, path in seeds.items():
            for h in RunDir(path).read_history():
                w = float(h.get("weight_mean", 1.0))
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "epoch": int(h["epoch"]),
                        "lr": float(h["lr"]),
                        "val_nat": 100 * float(h["holdout_nat_acc"]),
                        "val_pgd": 100 * float(h["holdout_pgd_acc"])
                        if h.get("holdout_pgd_acc") is not None
                        else float("nan"),
                        "train_adv": 100 * float(h["train_adv_acc"]),
                        "weight_mean": w,
                        "lr_x_weight": float(h["lr"]) * w,
                        "reweighting": bool(h.get("reweighting_active")),
                    }
                )
    return pd.DataFrame(rows)


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


def _checkpoint_eval(path: Path, checkpoint: str) -> tuple[dict, dict]:
    """The trainer's record of ``checkpoint`` (epoch, file; ``same_as`` when best.pt is last.pt's
    epoch) and the evaluation document that holds its numbers."""
    run = RunDir(path)
    rec = (_read_json(run.eval_file).get("checkpoints") or {}).get(checkpoint) or {}
    return rec, _read_json(checkpoint_eval_file(run, rec.get("same_as", checkpoint)))


def checkpoint_results(
    runs: Mapping[str, Mapping[int, str | os.PathLike]], attacks: Iterable[str] = ("natural", "pgd20", "aa")
) -> pd.DataFrame:
    """One row per method, seed and checkpoint (``last``, ``best``): the checkpoint's epoch and its
    test accuracy (%) under each attack, from the run's eval.json and eval-best.json (a best.pt
    that is last.pt's epoch has last.pt's numbers). Attacks a file does not hold are NaN."""
    attacks = list(attacks)
    rows = []
    for method, seeds in runs.items():
        for seed, path in seeds.items():
            for ck in CHECKPOINTS:
                rec, doc = _checkpoint_eval(Path(path), ck)
                acc = {
                    a: 100 * float(doc["attacks"][a]["accuracy"]) if a in doc.get("attacks", {}) else float("nan")
                    for a in attacks
                }
                rows.append({"method": method, "seed": seed, "checkpoint": ck, "epoch": rec.get("epoch"), **acc})
    return pd.DataFrame(rows)


def summary_table(results: pd.DataFrame, attacks: Sequence[str] = ("natural", "pgd20", "aa")) -> pd.DataFrame:
    """Mean ± std over seeds of each method's ``last`` and ``best`` checkpoint under each attack
    (cells as the paper writes them), with the number of seeds."""
    rows = []
    for (method, ck), g in results.groupby(["method", "checkpoint"], sort=False):
        row = {"method": method, "checkpoint": ck, "seeds": len(g)}
        row.update({a: mean_std([v / 100 for v in g[a]]).text for a in attacks if a in g})
        rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "checkpoint"])


def paired_table(results: pd.DataFrame, attack: str = "aa", reference: str = "at") -> pd.DataFrame:
    """Each method's accuracy under ``attack`` minus ``reference``'s of the same seed, against the
    reference's ``last`` and its ``best`` checkpoint (points, mean ± std over the seeds both have):
    the early-stopping question is whether a method's last checkpoint beats the reference's last
    and matches its best."""
    ref = results[results.method == reference].set_index(["seed", "checkpoint"])[attack]
    rows = []
    for method, g in results.groupby("method", sort=False):
        row = {"method": method}
        for ck in CHECKPOINTS:
            mine = g[g.checkpoint == ck].set_index("seed")[attack]
            for ref_ck in CHECKPOINTS:
                diffs = [mine[s] - ref[(s, ref_ck)] for s in mine.index if (s, ref_ck) in ref.index]
                row[f"{ck} - {reference} {ref_ck}"] = mean_std([d / 100 for d in diffs]).text
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def class_fairness(
    runs: Mapping[str, Mapping[int, str | os.PathLike]], attack: str = "aa", checkpoint: str = "last"
) -> pd.DataFrame:
    """One row per method and seed: per-class accuracy (%) under ``attack`` of ``checkpoint``, the
    worst class and its accuracy, and the spread (best class - worst class)."""
    rows = []
    for method, seeds in runs.items():
        for seed, path in seeds.items():
            _, doc = _checkpoint_eval(Path(path), checkpoint)
            if attack not in doc.get("attacks", {}):
                have = ", ".join(doc.get("attacks", {})) or "none"
                raise VirkitError(
                    f"{path}: the {checkpoint} checkpoint's evaluation has no {attack!r} (it has {have}); "
                    f"choose one of those or evaluate the run under {attack}"
                )
            per = [100 * float(v) for v in doc["attacks"][attack]["per_class_accuracy"]]
            classes = doc["classes"]
            worst = min(range(len(per)), key=per.__getitem__)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    **dict(zip(classes, per)),
                    "worst class": classes[worst],
                    "worst": per[worst],
                    "spread": max(per) - min(per),
                }
            )
    return pd.DataFrame(rows)


def fairness_table(fair: pd.DataFrame, classes: Sequence[str] = ("cat", "bird", "deer")) -> pd.DataFrame:
    """Per method, mean ± std over seeds of the worst class's accuracy, the spread across classes
    and the accuracy of ``classes`` (the paper's vulnerable classes), with the worst class of each
    seed."""
    rows = []
    for method, g in fair.groupby("method", sort=False):
        row = {
            "method": method,
            "worst class (per seed)": ", ".join(g["worst class"]),
            "worst": mean_std([v / 100 for v in g["worst"]]).text,
            "spread": mean_std([v / 100 for v in g["spread"]]).text,
        }
        row.update({c: mean_std([v / 100 for v in g[c]]).text for c in classes if c in g})
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")
