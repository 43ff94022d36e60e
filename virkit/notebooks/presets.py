"""Notebook presets and the training runs the notebooks share.

A notebook preset is named after the trainer preset (:data:`virkit.training.config.PRESETS`) its runs use,
unchanged: ``virkit notebooks run --preset demo`` trains exactly what ``virkit train --preset demo``
trains. The notebook preset adds only what is about the notebooks: a description, the seeds the
tables average over, the attack the figures call "robust", the attacks every run is evaluated under
when the tables need more than the trainer preset evaluates (``eval_attacks``, ``paper`` only), and
per-notebook parameter values.

:func:`shared_run` trains a run once per configuration under ``runs/notebooks/<preset>/runs/``
(the directory name carries the config hash; the run's writer lock makes concurrent notebooks wait
for each other), so that every notebook asking for the same run reuses it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virkit.errors import check_choice

if TYPE_CHECKING:
    from virkit.training.config import TrainConfig

__all__ = [
    "NOTEBOOK_PRESETS",
    "preset_notebooks",
    "COMMON_PARAMETERS",
    "preset_settings",
    "train_config",
    "shared_run",
    "run_paths",
    "run_dir_for",
    "default_runs_root",
    "load_history",
    "load_eval",
]

#: parameters every notebook has (the runner sets them)
COMMON_PARAMETERS = ("preset", "fig_dir", "runs_root")

# Tables 9-12 of notebook 07: no extra grid point (each table then has the paper's value only)
_NO_SWEEPS = {
    "beta_grid_at": [],
    "beta_grid_trades": [],
    "alpha_grid_at": [],
    "gamma_grid_at": [],
    "alpha_grid_trades": [],
    "gamma_grid_trades": [],
}

#: ``{name: {"description", "robust_attack", "seeds", "notebooks": {notebook: {parameter: value}}}}``,
#: plus ``eval_attacks`` where the notebooks need attacks the trainer preset does not evaluate, and
#: ``runs``: the runs the notebooks ask for (method names or ``{"method": ..., **overrides}``), which
#: ``virkit notebooks run`` trains first, several at a time (:mod:`virkit.notebooks.prepare`).
#: Each name is also a trainer preset: that is the budget of every run.
NOTEBOOK_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "description": "smoke test for the test suite: 9 tiny runs, seconds per notebook, models barely trained",
        "robust_attack": "fgsm",
        "seeds": [0],
        # the runs the notebooks ask for, trained first, in parallel (virkit.notebooks.prepare)
        "runs": [
            "natural",
            "at",
            "vir-at",
            "vir-at-w1",
            "vir-at-sv",
            "vir-at-mean1",
            "vir-at-flat",
            "gairat",
            "mail-at",
        ],
        "notebooks": {
            "01_weight_explorer": {"batch_size": 32, "attack_steps": 2},
            "02_gaussian_mixture_theory": {
                "mc_samples": 20000,
                "K_grid": [1.0, 2.0, 3.0],
                "n_train": 1000,
                "eps_points": 5,
            },
            "04_confusion_matrices": {"methods_fig1": ["natural", "at"], "methods_fig2": ["vir-at"]},
            "05_class_weights": {"methods": ["vir-at"]},
            "06_robustness_tables": {"methods": ["at", "vir-at"], "tables": [1]},
            "07_ablations": {"tables": [6], "components": ["sv"], **_NO_SWEEPS},
            "08_attributions": {"n_examples": 2, "n_pool": 64, "ig_steps": 8},
            "09_outside_model": {"attacks": ["natural", "fgsm"]},
            "10_robust_overfitting": {"seeds": [0], "attacks": ["natural", "fgsm"], "fairness_attack": "fgsm"},
        },
    },
    "demo": {
        "description": (
            "the largest demo tier: 2 CPU cores that train the small CNN fast (bf16 on an AVX512-BF16 "
            "EPYC) or a GPU, all notebooks in under 10 "
            "minutes: small CNN, 8,750 CIFAR-10 images (no augmentation), 8 epochs of PGD-2 training "
            "(onecycle), 9 shared runs trained two at a time, 1,000 test images (natural, FGSM, PGD-10)"
        ),
        "robust_attack": "pgd10",
        "seeds": [0],
        # Table 1's methods and natural training (notebooks 03-06, 08, 09), Table 6's first row (07)
        "runs": ["at", "vir-at", "trades", "vir-trades", "mart", "gairat", "mail-at", "natural", "vir-at-w1"],
        "notebooks": {
            "01_weight_explorer": {"batch_size": 500, "attack_steps": 10},
            "02_gaussian_mixture_theory": {"mc_samples": 200000},
            "06_robustness_tables": {"tables": [1]},
            # Table 6 as w = 1 against full VIR-AT (the S_v / S_d rows: -p 'components=["sv","sd"]', +2 runs)
            "07_ablations": {"tables": [6], "components": [], **_NO_SWEEPS},
            "08_attributions": {"n_examples": 3, "n_pool": 500, "ig_steps": 24},
        },
    },
    "paper": {
        "description": "the paper's settings (Sec. 5): ResNet-18, 115 epochs, PGD-10, 4 seeds; needs a GPU",
        "robust_attack": "pgd100",
        "seeds": [0, 1, 2, 3],
        # the columns of Tables 1-7; the trainer's paper preset evaluates natural, FGSM, PGD-100 and CW,
        # the rest is added to each run's eval.json (virkit.evaluation.evaluate_run)
        "eval_attacks": ["natural", "fgsm", "pgd100", "cw", "fmn100", "aa", "mde", "square", "spsa"],
        "notebooks": {
            "01_weight_explorer": {"batch_size": 512, "attack_steps": 10},
            "02_gaussian_mixture_theory": {"mc_samples": 2000000},
            "06_robustness_tables": {"tables": [1, 2, 3, 4, 5]},
            "07_ablations": {"tables": [6, 7, 9, 10, 11, 12]},
            "08_attributions": {"n_examples": 4, "ig_steps": 64},
            "09_outside_model": {"source": "virkit.models.examples:resnet18", "attacks": ["natural", "pgd100", "aa"]},
        },
    },
}


# The demo's tiers: the same runs and notebook values, fewer training images a run (the trainer presets of
# the same names). `make demo` runs the largest that this machine is expected to finish in 10 minutes.
NOTEBOOK_PRESETS["demo-mid"] = {
    **NOTEBOOK_PRESETS["demo"],
    "description": (
        "as demo with 5,000 CIFAR-10 images a run: all notebooks in under 10 minutes on 2 CPU cores that train the "
        "small CNN at about 400 images/s a core (fp32 on an Intel Xeon with AVX-512, for example)"
    ),
}
NOTEBOOK_PRESETS["demo-lite"] = {
    **NOTEBOOK_PRESETS["demo"],
    "description": (
        "as demo with 2,500 CIFAR-10 images a run: all notebooks in under 10 minutes on 2 CPU cores training about "
        "300 images/s a core (weaker models: AT about 42% natural, 24% PGD-10)"
    ),
}
NOTEBOOK_PRESETS["demo-min"] = {
    **NOTEBOOK_PRESETS["demo"],
    "description": (
        "as demo with 1,500 CIFAR-10 images a run, for the slowest CPUs (oneDNN's AVX2 kernels, for example): the "
        "weakest models"
    ),
}

NOTEBOOK_PRESETS["overfit"] = {
    "description": (
        "the robust-overfitting regime on a CPU (docs/RESULTS.md): notebook 10 over the control grid "
        "of configs/grids/control_overfit.yaml (AT, four VIR-AT variants, GAIRAT and MAIL-AT, 3 seeds; run it first: "
        "virkit sweep configs/grids/control_overfit.yaml --jobs 2 --out runs/grids/control_overfit)"
    ),
    "robust_attack": "pgd20",
    "seeds": [0, 1, 2],
    # the other notebooks belong to the paper's and the demo's budgets
    "only": ["10_robust_overfitting"],
    "notebooks": {"10_robust_overfitting": {"grid_dir": "runs/grids/control_overfit"}},
}
# notebook 10 reads a grid the demo's budget cannot train: the demo tiers and paper run 01-09
for _name in ("demo", "demo-mid", "demo-lite", "demo-min", "paper"):
    NOTEBOOK_PRESETS[_name]["skip"] = ["10_robust_overfitting"]


def preset_notebooks(preset: str, notebooks: list[Path]) -> list[Path]:
    """The notebooks a batch run of ``preset`` executes when none are named: the preset's ``only``
    list if it has one, else all of ``notebooks`` but its ``skip`` list."""
    settings = NOTEBOOK_PRESETS[preset]
    if settings.get("only"):
        return [nb for nb in notebooks if nb.stem in settings["only"]]
    return [nb for nb in notebooks if nb.stem not in (settings.get("skip") or [])]


def preset_settings(preset: str) -> dict:
    check_choice("notebook preset", preset, NOTEBOOK_PRESETS)
    return copy.deepcopy(NOTEBOOK_PRESETS[preset])


# ------------------------------------------------------------------------------------------------
# Shared training runs
# ------------------------------------------------------------------------------------------------


def train_config(preset: str, method: str, seed: int = 0, **overrides: Any) -> TrainConfig:
    """The TrainConfig of a notebook run: the trainer preset of the same name + ``overrides``
    (``None`` values ignored), with ``method`` and ``seed``."""
    from virkit.training import resolve_config

    check_choice("notebook preset", preset, NOTEBOOK_PRESETS)
    values = {k: v for k, v in overrides.items() if v is not None}
    values.update(method=method, seed=int(seed))
    return resolve_config(preset, **values)


def _run_name(cfg: TrainConfig) -> str:
    from virkit.training import config_hash

    return f"{cfg.dataset}-{cfg.model}-{cfg.method}-s{cfg.seed}-{config_hash(cfg)[:8]}"


def run_dir_for(cfg: TrainConfig, runs_root: str | os.PathLike) -> Path:
    """The directory of the shared run of ``cfg`` under ``runs_root`` (the name carries the config hash)."""
    return Path(runs_root) / _run_name(cfg)


def default_runs_root(preset: str, out_root: str | os.PathLike = "runs/notebooks") -> Path:
    return Path(out_root) / preset / "runs"


def shared_run(
    method: str, preset: str, runs_root: str | os.PathLike | None = None, seed: int = 0, **overrides: Any
) -> Path:
    """Train (or reuse) the run ``method``/``seed`` of a notebook preset; returns its run directory.

    The directory name carries the config hash, so notebooks asking for the same configuration
    share one run and a changed configuration never clobbers another. The run's writer lock
    (waited for) makes concurrent notebooks (``--jobs N``) wait for each other instead of training
    the same run twice; a run of the same burn-in (e.g. vir-at-w1 for vir-at) saves the first
    epochs. Attacks of the preset's ``eval_attacks`` that the run lacks are evaluated and added
    (:func:`virkit.training.ensure_run`).
    """
    from virkit.training import ensure_run

    cfg = train_config(preset, method, seed, **overrides)
    root = Path(runs_root) if runs_root else default_runs_root(preset)
    return ensure_run(
        cfg,
        run_dir_for(cfg, root),
        attacks=NOTEBOOK_PRESETS[preset].get("eval_attacks") or [],
        command="notebook",
        wait=True,
    )


def run_paths(
    methods: Iterable[str],
    preset: str,
    runs_root: str | os.PathLike | None = None,
    seeds: Iterable[int] = (0,),
    **overrides: Any,
) -> dict[tuple[str, int], Path]:
    """{(method, seed): run dir} for every combination, training what is missing."""
    return {(m, s): shared_run(m, preset, runs_root, seed=s, **overrides) for m in methods for s in seeds}


def load_history(run_dir: str | os.PathLike) -> list[dict]:
    from virkit.runs import RunDir

    return RunDir(run_dir).read_history()


def load_eval(run_dir: str | os.PathLike) -> dict:
    from virkit.runs import RunDir

    return RunDir(run_dir).read_eval()
