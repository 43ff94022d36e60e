"""The notebooks' side of virkit: presets, the context each notebook sets up, and the batch runner
(``virkit notebooks run|list``).

The notebooks in ``notebooks/`` are thin: a ``parameters`` cell (papermill), ``ctx = setup(name, **its parameters)``,
then calls into :mod:`virkit.notebooks.analysis`, :mod:`virkit.paper.figures`, :mod:`virkit.paper.theory`,
:mod:`virkit.paper.theory_empirical` and :mod:`virkit.notebooks.explorer`. This package is

* :mod:`.presets` -- the notebook presets (:data:`NOTEBOOK_PRESETS`: ``smoke`` for tests, ``demo`` for 2
  CPU cores, ``paper`` for a GPU), each named after the trainer preset its runs use, and
  :func:`shared_run`, which trains a run once per configuration under
  ``runs/notebooks/<preset>/runs/`` so that every notebook asking for it reuses it;
* :mod:`.context` -- :func:`setup` and :class:`NotebookContext`: the notebook's validated
  parameters, where figures and runs go, ``ctx.run``/``ctx.show``;
* :mod:`.parameters` -- finding notebooks and reading their parameters cell (papermill's
  inspection plus virkit's checks: an unknown name or a wrong type is a one-line error);
* :mod:`.runner` -- the private kernelspec, papermill execution and the batch run;
* :mod:`.pages` -- the executed notebooks as static HTML pages and the figure index (``index.md``,
  ``index.html``);
* :mod:`.overfitting` -- the control grid in the robust-overfitting regime read from its run
  directories (notebook 10);
* :mod:`.headline` -- what a batch run ends with (:func:`~virkit.notebooks.headline.batch_headline`,
  the demo's headline numbers);
* :mod:`.cli` -- ``virkit notebooks run|list`` and ``python -m virkit.notebooks``.

The analyses the notebooks call live in :mod:`virkit.notebooks.analysis` and, for the ablation tables of
notebook 07, :mod:`virkit.notebooks.ablations`; their names are re-exported here for code written against the
single-module version.
"""

from __future__ import annotations

from virkit.notebooks.ablations import ablation_results
from virkit.notebooks.analysis import eval_table, paper_table, table_runs, vulnerability_attributions
from virkit.notebooks.cli import add_cli, main
from virkit.notebooks.context import REPO_ROOT, NotebookContext, setup
from virkit.notebooks.pages import write_index
from virkit.notebooks.parameters import (
    Parameter,
    check_values,
    find_notebook,
    list_notebooks,
    notebook_dir,
    notebook_parameters,
    parse_parameter_value,
    planned_parameters,
    resolve_notebooks,
    validate_parameters,
)
from virkit.notebooks.presets import (
    COMMON_PARAMETERS,
    NOTEBOOK_PRESETS,
    default_runs_root,
    load_eval,
    load_history,
    preset_notebooks,
    preset_settings,
    run_paths,
    shared_run,
    train_config,
)
from virkit.notebooks.runner import (
    KERNEL_NAME,
    KERNEL_START_TIMEOUT_S,
    NotebookResult,
    ensure_kernelspec,
    execute_one,
    run_notebooks,
)
from virkit.notebooks.tiers import DEMO_BUDGET_S, DEMO_TIERS, TierChoice, choose_demo_tier, default_demo_preset

__all__ = [
    "NOTEBOOK_PRESETS",
    "COMMON_PARAMETERS",
    "DEMO_TIERS",
    "DEMO_BUDGET_S",
    "TierChoice",
    "choose_demo_tier",
    "default_demo_preset",
    "notebook_dir",
    "list_notebooks",
    "find_notebook",
    "notebook_parameters",
    "parse_parameter_value",
    "validate_parameters",
    "check_values",
    "resolve_notebooks",
    "planned_parameters",
    "run_notebooks",
    "write_index",
    "add_cli",
    "main",
    "preset_settings",
    "train_config",
    "shared_run",
    "run_paths",
    "preset_notebooks",
    "default_runs_root",
    "load_history",
    "load_eval",
    "NotebookResult",
    "ensure_kernelspec",
    "execute_one",
    "KERNEL_NAME",
    "KERNEL_START_TIMEOUT_S",
    "NotebookContext",
    "setup",
    "Parameter",
    "REPO_ROOT",
    "eval_table",
    "table_runs",
    "paper_table",
    "ablation_results",
    "vulnerability_attributions",
]
