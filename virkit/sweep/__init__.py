"""Grids of runs: ``virkit sweep GRID.yaml [--backend local|ray] [--address A] [--jobs N] [--out DIR]``.

A grid file (YAML; ``configs/grids/`` holds the paper's tables) names a base preset, fixed
overrides, and the parameters to cross::

    name: table1_resnet18        # default: the file's stem; the default --out is runs/sweeps/<name>
    table: 1                     # the paper table the results are collected into (virkit.paper.report)
    kind: train                  # train (default) | notebook
    preset: paper                # trainer preset (virkit.training.config.PRESETS)
    fixed:                       # TrainConfig overrides shared by every trial
      model: resnet18
      eval_attacks: [natural, fgsm, pgd100, cw, fmn100, aa, mde]
    grid:                        # crossed: every combination is one trial
      method: [at, trades, mart, gairat, mail-at, vir-trades, vir-at]
      seed: [0, 1, 2, 3]
    points:                      # optional: explicit combinations, each crossed with `grid`
      - {alpha: 1, gamma: 10}

Each trial is a training plus its final evaluation (``eval_attacks``), in its own run directory
``<out>/<name>`` whose name lists the varied parameters (``method=vir-at__seed=0``), run in a
subprocess of its own so that a crash cannot take the grid down. ``kind: notebook`` runs a
notebook with papermill instead (``notebook: path.ipynb``; ``fixed``/``grid``/``points`` are its
parameters; executed copy in ``<out>/<name>/output.ipynb``).

Re-running a grid skips finished trials (the trainer's ``summary.json`` with the same config
hash and every requested attack evaluated), resumes unfinished ones from ``last.pt`` and retries
failed ones. A trial that fails is reported and the others go on. At the end the results are
written to ``<out>/results.json`` (per trial: status, seconds, error, accuracies) and
``<out>/results.md`` (the paper table via :mod:`virkit.paper.report` when it is available, else mean ±
std over seeds of every attack, plus the status of every trial).

Backends: ``local`` runs ``--jobs`` trials at a time on this machine (one GPU each through
``CUDA_VISIBLE_DEVICES``; on CPU the cores are split between them); ``ray`` submits each trial
as a Ray task (``num_gpus=1`` when the cluster has GPUs, else ``num_cpus=1``) to the cluster at
``--address`` (``auto``, ``ray://host:10001``) or to a local instance started for the grid. Ray is
optional (``pip install 'virkit[ray]'``); this module imports it only for ``--backend ray``.

Modules: :mod:`.grid` (grid files, trials), :mod:`.trial` (one trial, in its own process),
:mod:`.backends` (local processes, Ray), :mod:`.results` (``results.json``/``results.md``),
:mod:`.driver` (:func:`run_grid`, ``virkit sweep``).
"""

from __future__ import annotations

from virkit.sweep.driver import BACKENDS, add_cli, run_grid
from virkit.sweep.grid import GRID_KEYS, KINDS, Grid, Trial, expand, load_grid, trial_name
from virkit.sweep.results import simple_table, write_results
from virkit.sweep.trial import INJECT_ENV

__all__ = [
    "Grid",
    "Trial",
    "load_grid",
    "expand",
    "trial_name",
    "run_grid",
    "add_cli",
    "simple_table",
    "write_results",
    "GRID_KEYS",
    "KINDS",
    "BACKENDS",
    "INJECT_ENV",
]
