"""Notebook batch runner (``virkit notebooks run|list``) and the helpers the notebooks call.

The notebooks in ``notebooks/`` are thin: a ``parameters`` cell (papermill) and calls into virkit.
This module

* reads each notebook's parameters cell (plain ``name = literal  # help`` lines) and validates
  overrides before anything runs (unknown names or wrong types: one-line error, exit code 2);
* executes notebooks with papermill on a private kernelspec that points at the *current*
  interpreter (works inside a fresh ``.venv`` without ``ipykernel install``); executed copies go
  to ``runs/notebooks/<preset>/``, figures (PNG + PDF) to ``figures/<preset>/``, and an index
  (``index.md``, ``index.html``) lists every figure with its notebook and parameters;
* keeps going when a notebook fails, prints a summary and returns 1 if any failed;
* holds the notebook presets (:data:`PRESETS`: ``tiny`` for tests, ``quick`` for 2 CPU cores,
  ``paper`` for a GPU) and :func:`shared_run`, which trains a run once per configuration (file
  lock, trainer ``reuse=True``) under ``runs/notebooks/<preset>/runs/`` so that every notebook
  asking for the same run reuses it.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import html
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import VirkitError, check_choice

__all__ = ["PRESETS", "COMMON_PARAMETERS", "notebook_dir", "list_notebooks", "notebook_parameters",
           "parse_parameter_value", "validate_parameters", "resolve_notebooks", "run_notebooks", "write_index",
           "add_cli", "main", "preset_settings", "train_config", "shared_run", "run_paths", "load_history",
           "load_eval", "NotebookResult", "ensure_kernelspec", "KERNEL_NAME", "NotebookContext", "setup",
           "eval_table", "table_runs", "paper_table", "ablation_results", "vulnerability_attributions"]

KERNEL_NAME = "virkit-python"
COMMON_PARAMETERS = ("preset", "fig_dir", "runs_root")

# ------------------------------------------------------------------------------------------------
# Presets. ``train``: overrides on top of the trainer preset ``config_preset`` (virkit.config), the
# shared budget every notebook's runs use. ``notebooks``: per-notebook parameter values.
# ------------------------------------------------------------------------------------------------
_NO_SWEEPS = {"beta_grid_at": [], "beta_grid_trades": [], "alpha_grid_at": [], "gamma_grid_at": [],
              "alpha_grid_trades": [], "gamma_grid_trades": []}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "description": "smoke test for the test suite: 4 tiny runs, seconds per notebook, models barely trained",
        "config_preset": "tiny",
        "train": {"train_subset": 128, "test_subset": 64, "holdout": 32, "epochs": 2, "batch_size": 64,
                  "lr_milestones": (2,), "reweight_start": 2, "attack_steps": 1, "step_size": 8 / 255,
                  "holdout_pgd_steps": 1, "eval_attacks": ("natural", "fgsm")},
        "robust_attack": "fgsm",
        "seeds": [0],
        "notebooks": {
            "01_weight_explorer": {"batch_size": 32, "attack_steps": 2},
            "02_gaussian_mixture_theory": {"mc_samples": 20000, "K_grid": [1.0, 2.0, 3.0], "n_train": 1000,
                                           "eps_points": 5},
            "04_confusion_matrices": {"methods_fig1": ["natural", "at"], "methods_fig2": ["vir-at"]},
            "05_class_weights": {"methods": ["vir-at"]},
            "06_robustness_tables": {"methods": ["at", "vir-at"], "tables": [1]},
            "07_ablations": {"tables": [6], "components": ["sv"], **_NO_SWEEPS},
            "08_attributions": {"n_examples": 2, "n_pool": 64, "ig_steps": 8},
        },
    },
    "quick": {
        "description": ("2 CPU cores, all notebooks in about 4 minutes: small CNN, 1,500 CIFAR-10 images, 3 epochs "
                        "of PGD-2 training, 11 shared runs, 250 test images (natural, FGSM, PGD-10)"),
        "config_preset": "quick",
        "train": {"train_subset": 1500, "test_subset": 250, "holdout": 200, "epochs": 3, "batch_size": 100,
                  "lr": 0.05, "lr_milestones": (3,), "reweight_start": 2, "attack_steps": 2,
                  "step_size": 5 / 255, "holdout_pgd_steps": 2, "eval_attacks": ("natural", "fgsm", "pgd10")},
        "robust_attack": "pgd10",
        "seeds": [0],
        "notebooks": {
            "01_weight_explorer": {"batch_size": 200, "attack_steps": 5},
            "02_gaussian_mixture_theory": {"mc_samples": 200000},
            "06_robustness_tables": {"tables": [1]},
            "07_ablations": {"tables": [6, 9], "components": ["sv", "sd"], **_NO_SWEEPS, "beta_grid_at": [0.0]},
            "08_attributions": {"n_examples": 3, "n_pool": 250, "ig_steps": 24},
        },
    },
    "paper": {
        "description": "the paper's settings (Sec. 5): ResNet-18, 115 epochs, PGD-10, 4 seeds; needs a GPU",
        "config_preset": "paper",
        "train": {"eval_attacks": ("natural", "fgsm", "pgd100", "cw", "fmn100", "aa", "mde", "square", "spsa")},
        "robust_attack": "pgd100",
        "seeds": [0, 1, 2, 3],
        "notebooks": {
            "01_weight_explorer": {"batch_size": 512, "attack_steps": 10},
            "02_gaussian_mixture_theory": {"mc_samples": 2000000},
            "06_robustness_tables": {"tables": [1, 2, 3, 4, 5]},
            "07_ablations": {"tables": [6, 7, 9, 10, 11, 12]},
            "08_attributions": {"n_examples": 4, "ig_steps": 64},
        },
    },
}


def preset_settings(preset: str) -> dict:
    check_choice("notebook preset", preset, PRESETS)
    return copy.deepcopy(PRESETS[preset])


# ------------------------------------------------------------------------------------------------
# Shared training runs
# ------------------------------------------------------------------------------------------------

def train_config(preset: str, method: str, seed: int = 0, **overrides):
    """The TrainConfig a notebook run uses: trainer preset + this preset's budget + ``overrides``."""
    from .config import resolve_config

    s = preset_settings(preset)
    values = {**s["train"], **{k: v for k, v in overrides.items() if v is not None}}
    values.update(method=method, seed=int(seed))
    return resolve_config(s["config_preset"], **values)


def _run_name(cfg) -> str:
    from .config import config_hash

    return f"{cfg.dataset}-{cfg.model}-{cfg.method}-s{cfg.seed}-{config_hash(cfg)[:8]}"


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not on POSIX: no concurrent notebooks there
            pass
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                import fcntl
                fcntl.flock(f, fcntl.LOCK_UN)


def default_runs_root(preset: str, out_root: str | os.PathLike = "runs/notebooks") -> Path:
    return Path(out_root) / preset / "runs"


def shared_run(method: str, preset: str, runs_root: str | os.PathLike | None = None, seed: int = 0,
               verbose: bool = False, **overrides) -> Path:
    """Train (or reuse) the run ``method``/``seed`` of a notebook preset; returns its run directory.

    The directory name carries the config hash, so notebooks asking for the same configuration
    share one run (trainer ``reuse=True``) and a changed configuration never clobbers another.
    A file lock makes concurrent notebooks (``--jobs N``) wait for each other instead of training
    the same run twice.
    """
    from .trainer import run_status, train

    cfg = train_config(preset, method, seed, **overrides)
    root = Path(runs_root) if runs_root else default_runs_root(preset)
    out = root / _run_name(cfg)
    with _file_lock(root / ".locks" / f"{out.name}.lock"):
        if run_status(out) == "finished":
            return out
        t = time.time()
        log = print if verbose else None
        status = run_status(out) if out.exists() else "empty"
        train(cfg, out, resume=status == "partial" and (out / "last.pt").is_file(),
              overwrite=status == "partial" and not (out / "last.pt").is_file(), reuse=True, log=log)
        print(f"trained {out.name} in {time.time() - t:.0f} s")
    return out


def run_paths(methods: Iterable[str], preset: str, runs_root=None, seeds: Iterable[int] = (0,), **overrides
              ) -> dict[tuple[str, int], Path]:
    """{(method, seed): run dir} for every combination, training what is missing."""
    return {(m, s): shared_run(m, preset, runs_root, seed=s, **overrides) for m in methods for s in seeds}


def load_history(run_dir: str | os.PathLike) -> list[dict]:
    p = Path(run_dir) / "history.jsonl"
    if not p.is_file():
        raise VirkitError(f"{p} does not exist; the run in {run_dir} has not finished an epoch")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def load_eval(run_dir: str | os.PathLike) -> dict:
    p = Path(run_dir) / "eval.json"
    if not p.is_file():
        raise VirkitError(f"{p} does not exist; train the run with eval_attacks or run 'virkit evaluate {run_dir}'")
    return json.loads(p.read_text())


REPO_ROOT = Path(__file__).resolve().parent.parent


class NotebookContext:
    """What a notebook needs after its parameters cell: where figures and shared runs go, the
    preset's settings, and shortcuts to train/reuse runs and to save + show figures.

    Empty ``fig_dir`` / ``runs_root`` mean ``<repo>/figures/<preset>`` and
    ``<repo>/runs/notebooks/<preset>/runs`` (what ``virkit notebooks run`` uses too).
    """

    def __init__(self, notebook: str, preset: str, fig_dir: str = "", runs_root: str = "",
                 parameters: Mapping[str, Any] | None = None):
        from .figures import FigureSaver

        self.notebook = notebook
        self.preset = preset
        self.settings = preset_settings(preset)
        self.fig_dir = Path(fig_dir) if fig_dir else REPO_ROOT / "figures" / preset
        self.runs_root = Path(runs_root) if runs_root else REPO_ROOT / "runs" / "notebooks" / preset / "runs"
        self.parameters = {"preset": preset, **dict(parameters or {})}
        self.saver = FigureSaver(self.fig_dir, notebook, self.parameters)
        self.robust_attack = self.settings["robust_attack"]
        self.seeds = list(self.settings["seeds"])

    def run(self, method: str, seed: int = 0, **overrides) -> Path:
        return shared_run(method, self.preset, self.runs_root, seed=seed, **overrides)

    def runs(self, methods: Iterable[str], seeds: Iterable[int] | None = None, **overrides) -> dict:
        return run_paths(methods, self.preset, self.runs_root, self.seeds if seeds is None else seeds, **overrides)

    def show(self, fig, name: str, caption: str = "") -> None:
        """Save ``fig`` (PNG + PDF, recorded for the index), display it, close it."""
        import matplotlib.pyplot as plt

        self.saver.save(fig, name, caption)
        try:
            from IPython.display import display
            display(fig)
        except ImportError:  # pragma: no cover
            pass
        plt.close(fig)

    def __repr__(self) -> str:
        return (f"NotebookContext({self.notebook!r}, preset={self.preset!r}: {self.settings['description']}; "
                f"figures -> {self.fig_dir}; runs -> {self.runs_root})")


def setup(notebook: str, preset: str, fig_dir: str = "", runs_root: str = "", **parameters) -> NotebookContext:
    """Called by each notebook right after its parameters cell."""
    ctx = NotebookContext(notebook, preset, fig_dir, runs_root, parameters)
    print(ctx)
    return ctx


def eval_table(ev: Mapping, percent: bool = True):
    """A DataFrame of one eval.json: accuracy, worst class and its accuracy, per attack."""
    import pandas as pd

    rows = []
    scale = 100.0 if percent else 1.0
    for name, r in ev["attacks"].items():
        fair = (ev.get("fairness") or {}).get(name) or {}
        rows.append({"attack": name, "accuracy": scale * r["accuracy"],
                     "worst class": fair.get("worst_class"),
                     "worst-class accuracy": None if fair.get("worst_class_accuracy") is None
                     else scale * fair["worst_class_accuracy"],
                     "seconds": r.get("seconds")})
    return pd.DataFrame(rows).set_index("attack").round(2)


# ------------------------------------------------------------------------------------------------
# Helpers for notebooks 06 (tables), 07 (ablations) and 08 (attributions)
# ------------------------------------------------------------------------------------------------

#: what each of Tables 1-5 needs: dataset(s), model (None: the preset's), extra evaluation attacks
TABLE_RUNS = {
    1: {"datasets": ["cifar10"], "model": None},
    2: {"datasets": ["cifar10"], "model": "wrn-34-10"},
    3: {"datasets": ["svhn", "cifar100"], "model": None},
    4: {"datasets": ["tiny-imagenet"], "model": None},
    5: {"datasets": ["cifar10"], "model": "wrn-34-10"},
}


def table_runs(ctx: NotebookContext, tables: Iterable[int], methods: Sequence[str], seeds: Sequence[int]
               ) -> dict[int, list[Path]]:
    """{table: run dirs} for Tables 1-5, training what is missing. A table whose runs cannot be made
    with this preset (missing dataset, no GPU for WRN-34-10 on ``quick``) gets an empty list and a
    printed reason instead of stopping the notebook."""
    out: dict[int, list[Path]] = {}
    for t in tables:
        if t not in TABLE_RUNS:
            raise VirkitError(f"Tables 1-5 only here (got {t}); Tables 6-7 and 9-12 are in 07_ablations")
        spec = TABLE_RUNS[t]
        if spec["model"] and ctx.preset != "paper":
            print(f"Table {t}: needs {spec['model']} runs, trained only by the paper preset; skipped")
            out[t] = []
            continue
        runs = []
        try:
            for ds in spec["datasets"]:
                extra = {"dataset": ds}
                if spec["model"]:
                    extra["model"] = spec["model"]
                if ds == "tiny-imagenet" and ctx.preset == "paper":
                    extra["step_size"] = 1 / 255  # Table 4 caption: step 1/255
                runs += [ctx.run(m, seed=s, **extra) for m in methods for s in seeds]
        except VirkitError as e:
            print(f"Table {t}: cannot train its runs with preset {ctx.preset!r}: {e}")
            runs = []
        out[t] = runs
    return out


def paper_table(df, table: int):
    """:func:`virkit.report.make_table`, plus a column for every evaluated attack the paper's layout
    lacks (e.g. PGD-20 in the quick preset), and without columns no run evaluated; the caption
    names the dropped columns."""
    import pandas as pd

    from . import report

    tab = report.make_table(df, table)
    spec = report.TABLES[table]
    if isinstance(tab.columns, pd.MultiIndex):
        return tab
    attack_cols = [c for c in df.columns if c in report.ATTACK_LABELS and c != "worst_case"]
    extra = [a for a in attack_cols if a not in spec["attacks"]]
    sub = df[df["method"].isin(spec["methods"])] if spec.get("methods") else df
    dropped = [c for c in tab.columns if (tab[c] == report.DASH).all()]
    out = tab.drop(columns=dropped)
    if extra:
        for a in extra:
            vals = []
            for idx in tab.index:
                method = _method_of_label(idx, sub)
                vals.append(report._fmt(sub[sub["method"] == method][a].tolist())[0] if method else report.DASH)
            out[report.ATTACK_LABELS.get(a, a)] = vals
    out.attrs = dict(tab.attrs)
    if dropped:
        out.attrs["caption"] = (tab.attrs.get("caption", "").rstrip(".") +
                                f". Not evaluated in this preset: {', '.join(map(str, dropped))}.")
    return out


def _method_of_label(label: str, df) -> str | None:
    """The method a row label of :func:`virkit.report.make_table` stands for (longest label first)."""
    from . import report

    cands = []
    for m in df["method"].unique():
        for lab in (report.METHOD_LABELS.get(m, str(m).upper()), report.ABLATION_LABELS.get(m)):
            if lab:
                cands.append((lab, m))
    for lab, m in sorted(cands, key=lambda c: -len(c[0])):
        if str(label) == lab or str(label).startswith(lab + " ("):
            return m
    return None


#: Tables 9-12: (title, method, swept hyperparameter(s), paper defaults)
ABLATION_SWEEPS = {
    9: ("VIR-AT, floor β", "vir-at", "beta"),
    10: ("VIR-TRADES, floor β", "vir-trades", "beta"),
    11: ("VIR-AT, α and γ", "vir-at", "alpha/gamma"),
    12: ("VIR-TRADES, α and γ", "vir-trades", "alpha/gamma"),
}
_HP_ATTACKS = ["natural", "pgd100", "cw", "aa"]


def ablation_results(ctx: NotebookContext, tables: Iterable[int], grids: Mapping[str, Sequence], seeds: Sequence[int]
                     ) -> dict[int, dict]:
    """Train/reuse the runs of the ablation Tables 6, 7 and 9-12 and build each table.

    Returns {table: {"title", "table" (DataFrame of 'mean ± std' strings, %), "panels" (for
    :func:`virkit.figures.plot_ablation`, sweeps only)}}. ``grids`` keys: ``components``,
    ``beta_at``, ``beta_trades``, ``alpha_at``, ``gamma_at``, ``alpha_trades``, ``gamma_trades``;
    the paper's value of every swept hyperparameter is always included.
    """
    import pandas as pd

    from . import report
    from .methods import METHODS

    out: dict[int, dict] = {}
    for t in tables:
        if t in (6, 7):
            base, vir = ("at", "vir-at") if t == 6 else ("trades", "vir-trades")
            methods = [base, *[f"{vir}-{c}" for c in grids.get("components", [])], vir]
            runs = [ctx.run(m, seed=s) for m in methods for s in seeds]
            df = report.collect_runs(runs)
            tab = paper_table(df, t)
            out[t] = {"title": report.TABLES[t]["title"], "table": tab}
            continue
        if t not in ABLATION_SWEEPS:
            raise VirkitError(f"ablation tables are 6, 7, 9, 10, 11, 12 (got {t})")
        title, method, what = ABLATION_SWEEPS[t]
        d = METHODS[method].defaults
        suffix = "at" if method == "vir-at" else "trades"
        if what == "beta":
            points = [{"beta": float(b)} for b in sorted({*map(float, grids.get(f"beta_{suffix}", [])), d["beta"]})]
        else:
            points = [{"alpha": float(a), "gamma": d["gamma"]}
                      for a in sorted({*map(float, grids.get(f"alpha_{suffix}", [])), d["alpha"]})]
            points += [{"alpha": d["alpha"], "gamma": float(g)}
                       for g in sorted({*map(float, grids.get(f"gamma_{suffix}", []))} - {d["gamma"]})]
        rows, panels = [], {}
        records = []
        for pt in points:
            # the paper's value is the method default: pass only what differs, so the default point
            # reuses the main run of the method instead of training an identical one
            over = {k: v for k, v in pt.items() if v != d[k]}
            rs = [ctx.run(method, seed=s, **over) for s in seeds]
            df = report.collect_runs(rs)
            attacks = [a for a in dict.fromkeys([*_HP_ATTACKS, ctx.robust_attack, *df.columns])
                       if a in df.columns and a in report.ATTACK_LABELS and a != "worst_case"]
            full = {h: pt.get(h, d[h]) for h in ("alpha", "gamma", "beta")}
            row = {"setting": ("★ " if full == {h: d[h] for h in full} else "") +
                   f"α={full['alpha']:g}, γ={full['gamma']:g}, β={full['beta']:g}"}
            stats = {}
            for a in attacks:
                txt, mean, std, n = report._fmt(df[a].tolist())
                row[report.ATTACK_LABELS.get(a, a)] = txt
                stats[a] = (mean, 0.0 if std != std else std)
            rows.append(row)
            records.append((pt, stats))
        tab = pd.DataFrame(rows).set_index("setting")
        tab.index.name = "setting (★ = paper)"
        if what == "beta":
            sweeps = [("beta", records)]
        else:  # the α sweep runs at the paper's γ and the γ sweep at the paper's α; both hold the ★ point
            sweeps = [("alpha", [r for r in records if r[0]["gamma"] == d["gamma"]]),
                      ("gamma", [r for r in records if r[0]["alpha"] == d["alpha"]])]
        for hp, sel in sweeps:
            if len(sel) < 2:
                continue
            sel = sorted(sel, key=lambda r: r[0][hp])
            label = {"beta": "β", "alpha": "α", "gamma": "γ"}[hp]
            fixed = {"beta": "α, γ", "alpha": "γ", "gamma": "α"}[hp]
            panels[f"{label} ({fixed} at the paper's value)"] = {
                "x": [r[0][hp] for r in sel], "xlabel": label, "default": d[hp],
                "series": {a: ([r[1][a][0] for r in sel], [r[1][a][1] for r in sel]) for a in sel[0][1]}}
        out[t] = {"title": title, "table": tab, "panels": panels}
    return out


def vulnerability_attributions(runs: Mapping[str, os.PathLike], n_examples: int = 4, n_pool: int = 500,
                               ig_steps: int = 32, device: str = "cpu") -> dict:
    """Integrated Gradients and saliency (captum) of several models on the most and least vulnerable
    test images, vulnerability ranked by the *first* model's natural true-class probability p_y.

    Attributions are of log p_y (the log-softmax of the true class) with respect to the input, summed
    in absolute value over colour channels; IG uses the black image as baseline. Returns
    ``{"most": {...}, "least": {...}, "table": DataFrame}``, each part with ``images`` (N, C, H, W),
    ``rows`` (labels) and ``columns`` ({"<method> · IG": maps, "<method> · saliency": maps}).
    """
    import pandas as pd
    import torch
    from captum.attr import IntegratedGradients, Saliency

    from .checkpoint import load_checkpoint
    from .data import load_dataset, subset
    from .figures import method_label
    from .trainer import HOLDOUT_SEED

    models, cfg = {}, None
    for m, r in runs.items():
        models[m], c = load_checkpoint(r, device=device)
        cfg = cfg or c
    test = load_dataset(cfg["dataset"], cfg.get("data_root"), "test", gmm=(cfg.get("extra") or {}).get("gmm"))
    test = subset(test, min(n_pool, len(test)), seed=HOLDOUT_SEED + 1)
    x, y = test.float_images().to(device), test.y.to(device)
    with torch.no_grad():
        p_y = {m: torch.softmax(net(x).float(), 1).gather(1, y.view(-1, 1)).squeeze(1).cpu()
               for m, net in models.items()}
    first = next(iter(models))
    order = torch.argsort(p_y[first])
    picks = {"most": order[:n_examples], "least": order.flip(0)[:n_examples]}

    def logp(net):
        return lambda inp: torch.log_softmax(net(inp).float(), 1)

    out, rows = {}, []
    for which, idx in picks.items():
        xi, yi = x[idx], y[idx]
        cols = {}
        for m, net in models.items():
            ig = IntegratedGradients(logp(net)).attribute(xi, baselines=torch.zeros_like(xi), target=yi,
                                                          n_steps=ig_steps)
            sal = Saliency(logp(net)).attribute(xi.clone().requires_grad_(True), target=yi, abs=True)
            cols[f"{method_label(m)} · IG"] = ig.abs().sum(1).detach().cpu().numpy()
            cols[f"{method_label(m)} · saliency"] = sal.sum(1).detach().cpu().numpy()
        labels = []
        for j, i in enumerate(idx.tolist()):
            cls = test.classes[int(y[i])]
            labels.append(cls + "\n" + "\n".join(f"{method_label(m)} p_y={float(p_y[m][i]):.2f}" for m in models))
            rows.append({"set": f"{which} vulnerable", "test index": i, "class": cls,
                         **{f"p_y {method_label(m)}": float(p_y[m][i]) for m in models}})
        out[which] = {"images": xi.cpu().numpy(), "rows": labels, "columns": cols}
    out["table"] = pd.DataFrame(rows).round(3)
    out["mean_p_y"] = {method_label(m): float(v.mean()) for m, v in p_y.items()}
    return out


# ------------------------------------------------------------------------------------------------
# Notebook discovery and parameters
# ------------------------------------------------------------------------------------------------

def notebook_dir() -> Path:
    """``$VIRKIT_NOTEBOOKS`` or the repository's ``notebooks/`` folder."""
    env = os.environ.get("VIRKIT_NOTEBOOKS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "notebooks"


def list_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    folder = Path(folder) if folder else notebook_dir()
    if not folder.is_dir():
        raise VirkitError(f"notebook folder {folder} does not exist; run from a checkout of virkit or set "
                          "VIRKIT_NOTEBOOKS")
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("."))


@dataclass
class Parameter:
    name: str
    default: Any
    help: str = ""

    @property
    def type_name(self) -> str:
        return _type_name(self.default)


def _type_name(v) -> str:
    if v is None:
        return "any"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "dict"
    return type(v).__name__


def _parameters_source(nb_path: Path) -> str:
    try:
        nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VirkitError(f"cannot read notebook {nb_path}: {e}") from None
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            return "".join(src) if isinstance(src, list) else src
    raise VirkitError(f"notebook {nb_path.name} has no cell tagged 'parameters'")


def notebook_parameters(nb_path: str | os.PathLike) -> dict[str, Parameter]:
    """Parameters of a notebook: ``{name: Parameter(default, help)}`` from its ``parameters`` cell.

    The cell may only hold ``name = <python literal>`` assignments, each optionally followed by a
    ``# help`` comment.
    """
    nb_path = Path(nb_path)
    src = _parameters_source(nb_path)
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        raise VirkitError(f"parameters cell of {nb_path.name} is not valid Python: {e}") from None
    lines = src.splitlines()
    out: dict[str, Parameter] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise VirkitError(f"parameters cell of {nb_path.name}: line {node.lineno} is not 'name = literal'")
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            raise VirkitError(f"parameters cell of {nb_path.name}: {node.targets[0].id} is not a literal") from None
        line = lines[node.lineno - 1]
        help_ = line.split("#", 1)[1].strip() if "#" in line else ""
        out[node.targets[0].id] = Parameter(node.targets[0].id, value, help_)
    return out


def parse_parameter_value(text: str):
    """Parse a command-line value: a Python/JSON literal (``3``, ``0.5``, ``[1, 2]``, ``True``,
    ``null``), else the text itself as a string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(t)
    except (ValueError, SyntaxError):
        pass
    try:
        return json.loads(t)
    except json.JSONDecodeError:
        return text


def _type_ok(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def validate_parameters(nb_path: str | os.PathLike, values: Mapping[str, Any]) -> dict:
    """Check ``values`` against the notebook's parameters; return them with floats coerced.

    Raises :class:`VirkitError` (one line) for an unknown name or a value of the wrong type.
    """
    nb_path = Path(nb_path)
    params = notebook_parameters(nb_path)
    out = {}
    for k, v in values.items():
        if k not in params:
            close = [p for p in params if p.startswith(k[:3])] or list(params)
            raise VirkitError(f"notebook {nb_path.stem}: unknown parameter {k!r}; valid parameters: "
                              f"{', '.join(params)}" + (f" (did you mean {close[0]!r}?)" if close and
                                                          close != list(params) else ""))
        d = params[k].default
        if not _type_ok(d, v):
            raise VirkitError(f"notebook {nb_path.stem}: parameter {k!r} must be {_type_name(d)} "
                              f"(default {d!r}), got {type(v).__name__} {v!r}")
        if isinstance(d, float) and isinstance(v, int):
            v = float(v)
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def resolve_notebooks(only: str | Sequence[str] | None, folder=None) -> list[Path]:
    """All notebooks, or those selected by ``only``: names, stems, number prefixes or unique name
    fragments, comma-separated (``01,03``, ``02_gaussian_mixture_theory``, ``explorer``)."""
    nbs = list_notebooks(folder)
    if not only:
        return nbs
    items = [only] if isinstance(only, str) else list(only)
    keys = [k.strip() for item in items for k in str(item).split(",") if k.strip()]
    chosen: list[Path] = []
    for k in keys:
        k2 = k[:-6] if k.endswith(".ipynb") else k
        if k2.isdigit():
            match = [p for p in nbs if p.stem.startswith(k2.zfill(2) + "_")]
        else:
            match = [p for p in nbs if p.stem == k2] or [p for p in nbs if k2 in p.stem]
        if len(match) != 1:
            raise VirkitError(f"--only {k!r} matches {len(match)} notebooks; valid names: "
                              f"{', '.join(p.stem for p in nbs)}")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


def planned_parameters(nb_path: Path, preset: str, fig_dir: Path, runs_root: Path,
                       overrides: Mapping[str, Any] | None = None) -> dict:
    """The parameters a batch run passes to one notebook: common ones, the preset's, then overrides
    (``overrides`` may name parameters of several notebooks; each notebook gets those it has,
    a name no selected notebook has is an error raised by :func:`run_notebooks`)."""
    params = notebook_parameters(nb_path)
    s = preset_settings(preset)
    values = {"preset": preset, "fig_dir": str(fig_dir), "runs_root": str(runs_root)}
    values.update(s["notebooks"].get(nb_path.stem, {}))
    for k, v in (overrides or {}).items():
        if k in params:
            values[k] = v
    values = {k: v for k, v in values.items() if k in params}
    return validate_parameters(nb_path, values)


# ------------------------------------------------------------------------------------------------
# Execution
# ------------------------------------------------------------------------------------------------

def ensure_kernelspec(root: str | os.PathLike, threads: int | None = None) -> Path:
    """Write a kernelspec ``virkit-python`` for ``sys.executable`` (with this checkout on
    ``PYTHONPATH``) under ``root/jupyter/kernels`` and put ``root/jupyter`` first on
    ``JUPYTER_PATH`` (this process and its children). ``threads`` sets the kernels' intra-op
    threads (``OMP_NUM_THREADS``; torch reads it at start-up)."""
    base = Path(root).resolve() / "jupyter"
    kdir = base / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    # the kernel imports this checkout of virkit even when it is not installed
    pythonpath = os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({Path(sys.executable).name}, virkit)", "language": "python",
            "env": {"PYTHONPATH": pythonpath}, "metadata": {"debugger": False}}
    if threads:
        spec["env"].update({"OMP_NUM_THREADS": str(int(threads)), "MKL_NUM_THREADS": str(int(threads))})
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1))
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if str(base) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(base), *paths])
    return kdir


@dataclass
class NotebookResult:
    name: str
    status: str                      # ok | failed
    seconds: float
    output: str
    error: str = ""
    figures: int = 0
    parameters: dict = field(default_factory=dict)


def _clean_error(e: BaseException) -> str:
    ename = getattr(e, "ename", type(e).__name__)
    evalue = getattr(e, "evalue", str(e))
    line = f"{ename}: {evalue}".strip()
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    return line.splitlines()[0][:300] if line else ename


def _execute_one(nb_path: str, out_path: str, parameters: dict, cwd: str, timeout: int | None) -> tuple[str, str]:
    """Run one notebook with papermill in this process; returns (status, error line)."""
    import papermill as pm

    try:
        pm.execute_notebook(nb_path, out_path, parameters=parameters, kernel_name=KERNEL_NAME, cwd=cwd,
                            progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                            execution_timeout=timeout)
        return "ok", ""
    except Exception as e:  # noqa: BLE001 - a failing notebook must not stop the others
        return "failed", _clean_error(e)


def _execute_subprocess(nb_path: str, out_path: str, parameters: dict, cwd: str, timeout: int | None
                        ) -> tuple[str, str]:
    spec = json.dumps({"nb": nb_path, "out": out_path, "parameters": parameters, "cwd": cwd, "timeout": timeout})
    proc = subprocess.run([sys.executable, "-m", "virkit.notebooks", "--exec-one", spec], capture_output=True,
                          text=True, env=os.environ.copy())
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{") and '"status"' in line:
            d = json.loads(line)
            return d["status"], d["error"]
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return "failed", f"runner subprocess exited with {proc.returncode}: {tail[:300]}"


def run_notebooks(preset: str = "quick", only=None, jobs: int = 1, out_root: str | os.PathLike = "runs/notebooks",
                  fig_root: str | os.PathLike = "figures", parameters_override: Mapping[str, Any] | None = None,
                  folder: str | os.PathLike | None = None, timeout: int | None = None, quiet: bool = False,
                  threads: int | None = None) -> int:
    """Execute the notebooks of ``preset`` with papermill; returns the exit code (0: all passed,
    1: some failed). Raises :class:`VirkitError` (exit 2) on bad presets, names or parameters, before
    any notebook runs.

    ``threads``: torch threads per kernel (default: torch's own choice with ``jobs=1``, and
    cores // jobs with ``jobs > 1`` so parallel notebooks do not oversubscribe the CPU)."""
    check_choice("notebook preset", preset, PRESETS)
    if int(jobs) < 1:
        raise VirkitError(f"--jobs must be >= 1, got {jobs}")
    nbs = resolve_notebooks(only, folder)
    out_dir = Path(out_root).resolve() / preset
    fig_dir = Path(fig_root).resolve() / preset
    runs_root = out_dir / "runs"
    overrides = dict(parameters_override or {})
    # validate everything first: unknown override names (in none of the selected notebooks) and types
    known = set()
    for nb in nbs:
        known |= set(notebook_parameters(nb))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise VirkitError(f"unknown notebook parameter(s) {', '.join(map(repr, unknown))}; parameters of the "
                          f"selected notebooks: {', '.join(sorted(known))}")
    plans = [(nb, planned_parameters(nb, preset, fig_dir, runs_root, overrides)) for nb in nbs]

    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    if threads is not None and int(threads) < 1:
        raise VirkitError(f"--threads must be >= 1, got {threads}")
    if threads is None and int(jobs) > 1:
        threads = max(1, (os.cpu_count() or 1) // int(jobs))
    ensure_kernelspec(out_dir, threads)
    cwd = str(Path(folder).resolve() if folder else notebook_dir().resolve())
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"virkit notebooks: preset {preset!r} ({PRESETS[preset]['description']}), {len(nbs)} notebook(s), "
        f"jobs={jobs}")

    def one(plan) -> NotebookResult:
        nb, params = plan
        out_nb = out_dir / nb.name
        manifest = fig_dir / ".manifest" / f"{nb.stem}.jsonl"
        manifest.unlink(missing_ok=True)
        t = time.time()
        runner = _execute_one if int(jobs) == 1 else _execute_subprocess
        status, err = runner(str(nb), str(out_nb), params, cwd, timeout)
        n_fig = len(manifest.read_text().splitlines()) if manifest.is_file() else 0
        res = NotebookResult(nb.stem, status, time.time() - t, str(out_nb), err, n_fig, params)
        say(f"  {'ok    ' if status == 'ok' else 'FAILED'} {nb.stem:32s} {res.seconds:7.1f} s  {n_fig:2d} figure(s)"
            + (f"  {err}" if err else ""))
        return res

    t0 = time.time()
    if int(jobs) == 1:
        results = [one(p) for p in plans]
    else:
        with ThreadPoolExecutor(max_workers=int(jobs)) as ex:
            results = list(ex.map(one, plans))
    total = time.time() - t0
    idx_md, idx_html = write_index(fig_dir, preset, out_dir)
    summary = {"preset": preset, "seconds": total, "results": [r.__dict__ for r in results]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    failed = [r for r in results if r.status != "ok"]
    say(f"summary: {len(results) - len(failed)} passed, {len(failed)} failed, {total:.0f} s total; "
        f"executed notebooks in {out_dir}; figures and index in {idx_md.parent} ({idx_md.name}, {idx_html.name})")
    for r in failed:
        say(f"  failed: {r.name}: {r.error} (see {r.output})")
    return 1 if failed else 0


def write_index(fig_dir: str | os.PathLike, preset: str, out_dir: str | os.PathLike | None = None
                ) -> tuple[Path, Path]:
    """Write ``index.md`` and ``index.html`` in ``fig_dir`` listing every figure in the manifests,
    grouped by notebook, with its parameters and caption."""
    fig_dir = Path(fig_dir)
    records: list[dict] = []
    for m in sorted((fig_dir / ".manifest").glob("*.jsonl")):
        for line in m.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if all((fig_dir / f).is_file() for f in rec["files"]):
                    records.append(rec)
    by_nb: dict[str, list[dict]] = {}
    for r in records:
        by_nb.setdefault(r["notebook"], []).append(r)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    md = [f"# virkit figures: preset `{preset}`", "",
          f"{len(records)} figures from {len(by_nb)} notebooks, generated {stamp} by `virkit notebooks run "
          f"--preset {preset}`. Every figure exists as PNG and PDF.", ""]
    if out_dir is not None:
        md += [f"Executed notebooks: `{out_dir}`.", ""]
    hp = ["<!doctype html><html><head><meta charset='utf-8'>",
          f"<title>virkit figures: {html.escape(preset)}</title>",
          "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
          "figure{margin:1.5em 0;border-bottom:1px solid #ddd;padding-bottom:1em}"
          "img{max-width:100%}code{background:#f4f4f4;padding:0 3px}"
          "details{font-size:0.85em;color:#444}</style></head><body>",
          f"<h1>virkit figures: preset <code>{html.escape(preset)}</code></h1>",
          f"<p>{len(records)} figures from {len(by_nb)} notebooks, generated {stamp}.</p>"]
    for nb, recs in by_nb.items():
        params = recs[0]["parameters"]
        ptxt = ", ".join(f"{k}={v!r}" for k, v in params.items())
        md += [f"## {nb}", "", f"Parameters: `{ptxt}`", ""]
        hp += [f"<h2 id='{html.escape(nb)}'>{html.escape(nb)}</h2>",
               f"<details><summary>parameters</summary><code>{html.escape(ptxt)}</code></details>"]
        for r in recs:
            png = next((f for f in r["files"] if f.endswith(".png")), r["files"][0])
            links = " · ".join(f"[{f.rsplit('.', 1)[-1].upper()}]({f})" for f in r["files"])
            md += [f"### {r['name']}", "", f"![{r['name']}]({png})", "", (r.get("caption") or "") + f" ({links})", ""]
            hl = " · ".join(f"<a href='{html.escape(f)}'>{html.escape(f.rsplit('.', 1)[-1].upper())}</a>"
                            for f in r["files"])
            hp += [f"<figure><img src='{html.escape(png)}' alt='{html.escape(r['name'])}'>"
                   f"<figcaption><b>{html.escape(r['name'])}</b> ({html.escape(nb)}) "
                   f"{html.escape(r.get('caption') or '')} {hl}</figcaption></figure>"]
    hp.append("</body></html>")
    fig_dir.mkdir(parents=True, exist_ok=True)
    p_md, p_html = fig_dir / "index.md", fig_dir / "index.html"
    p_md.write_text("\n".join(md) + "\n", encoding="utf-8")
    p_html.write_text("\n".join(hp) + "\n", encoding="utf-8")
    return p_md, p_html


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def _param_pair(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    k, v = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k.strip()):
        raise argparse.ArgumentTypeError(f"{k!r} is not a parameter name")
    return k.strip(), parse_parameter_value(v)


def _cmd_run(args) -> int:
    return run_notebooks(preset=args.preset, only=args.only, jobs=args.jobs, out_root=args.out_root,
                         fig_root=args.fig_root, parameters_override=dict(args.param or []),
                         folder=args.notebook_dir, timeout=args.timeout, threads=args.threads)


def _cmd_list(args) -> int:
    nbs = list_notebooks(args.notebook_dir)
    s = preset_settings(args.preset)
    print(f"notebooks ({notebook_dir() if not args.notebook_dir else args.notebook_dir}); values for preset "
          f"{args.preset!r}: {s['description']}")
    for nb in nbs:
        print(f"\n{nb.stem}")
        preset_vals = s["notebooks"].get(nb.stem, {})
        for p in notebook_parameters(nb).values():
            val = preset_vals.get(p.name, p.default)
            if p.name == "preset":
                val = args.preset
            print(f"  {p.name:20s} {p.type_name:6s} {val!r:28s} {p.help}")
    print("\npresets: " + ", ".join(f"{k} ({v['description']})" for k, v in PRESETS.items()))
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``notebooks run`` and ``notebooks list`` on an argparse subparsers object."""
    p = subparsers.add_parser("notebooks", help="execute the notebooks with papermill and index their figures",
                              description="Execute notebooks/NN_*.ipynb with papermill (figures under "
                                          "figures/<preset>/, executed copies under runs/notebooks/<preset>/).")
    sub = p.add_subparsers(dest="notebooks_command", required=True)
    r = sub.add_parser("run", help="execute notebooks (all, or --only NAMES)")
    r.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help="tiny: seconds (tests); quick: ~4 min on 2 CPU cores; paper: the paper's settings (GPU)")
    r.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated notebook names, stems or numbers, e.g. 01,03 or weight_explorer")
    r.add_argument("--jobs", type=int, default=1, metavar="N", help="notebooks executed in parallel (default 1)")
    r.add_argument("-p", "--param", action="append", type=_param_pair, metavar="NAME=VALUE",
                   help="override a notebook parameter (repeatable), e.g. -p seed=1 -p method=vir-trades")
    r.add_argument("--out-root", default="runs/notebooks", help="executed notebooks and shared runs (default "
                                                                 "runs/notebooks)")
    r.add_argument("--fig-root", default="figures", help="figures and index (default figures)")
    r.add_argument("--notebook-dir", default=None, help="folder with the source notebooks (default: the repo's)")
    r.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per notebook kernel (default: torch's choice; cores/jobs with --jobs > 1); "
                        "1 is much faster on a CPU busy with other work")
    r.set_defaults(func=_cmd_run)
    ls = sub.add_parser("list", help="list notebooks and their parameters")
    ls.add_argument("--preset", default="quick", choices=list(PRESETS))
    ls.add_argument("--notebook-dir", default=None)
    ls.set_defaults(func=_cmd_list)
    return p


def main(argv=None) -> int:
    """``python -m virkit.notebooks run ...``; also accepts an already parsed namespace."""
    if isinstance(argv, argparse.Namespace):
        return int(argv.func(argv) or 0)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--exec-one"]:
        spec = json.loads(argv[1])
        status, err = _execute_one(spec["nb"], spec["out"], spec["parameters"], spec["cwd"], spec["timeout"])
        print(json.dumps({"status": status, "error": err}))
        return 0
    parser = argparse.ArgumentParser(prog="python -m virkit.notebooks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(["notebooks", *argv] if argv[:1] != ["notebooks"] else argv)
    try:
        return int(args.func(args) or 0)
    except VirkitError as e:
        print(f"virkit: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
