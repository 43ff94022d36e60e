"""One trial, in its own process (``python -m virkit.sweep --worker SPEC.json``): what to do with
its run directory (:func:`plan_trial`), and the training + evaluation (or notebook) it runs.

A training trial goes through :class:`virkit.runs.RunDir` (status, config hash, summary) and
:func:`virkit.training.ensure_run` (training, resuming or branching, then the attacks asked for later
than the run was trained) only.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from virkit.errors import VirkitError
from virkit.sweep.grid import Grid, Trial

__all__ = ["INJECT_ENV", "plan_trial", "finished_eval", "injection", "worker"]

INJECT_ENV = "VIRKIT_SWEEP_INJECT_FAILURE"  # tests: "<glob>[:raise|kill]" makes matching trials fail


def _resolve(grid_preset: str, overrides: dict):
    from virkit.training import resolve_config

    return resolve_config(grid_preset, **overrides)


def plan_trial(grid: Grid, trial: Trial) -> tuple[str, str | None]:
    """``("skip"|"run"|"fail", why)`` for one trial, from what its run directory holds."""
    if grid.kind == "notebook":
        try:
            state = json.loads((trial.run_dir / "trial.json").read_text())
        except (OSError, json.JSONDecodeError):
            return "run", None
        same = state.get("parameters") == json.loads(json.dumps(trial.overrides))
        return ("skip", None) if state.get("status") == "finished" and same else ("run", None)
    from virkit.runs import RunDir, RunStatus
    from virkit.training import config_hash

    try:
        cfg = _resolve(grid.preset, trial.overrides)
    except VirkitError as e:
        return "fail", str(e)
    run = RunDir(trial.run_dir)
    status = run.status()
    if status is RunStatus.NEW:
        return "run", None
    old = run.config_hash()
    if old is not None and old != config_hash(cfg):
        return "fail", (
            f"{trial.run_dir} holds a run with another config (hash {old}, the grid asks for "
            f"{config_hash(cfg)}): was the grid changed? delete that directory or use another --out"
        )
    if status is RunStatus.FINISHED:
        done = finished_eval(run.path)
        if all(a in done for a in cfg.eval_attacks):
            return "skip", None
    return "run", None


def finished_eval(run_dir: str | os.PathLike) -> dict:
    """The accuracies a finished run's summary records (``{attack: accuracy}``; empty if none)."""
    from virkit.runs import RunDir

    return (RunDir(run_dir).read_summary() or {}).get("eval") or {}


def _run_train_trial(spec: dict) -> dict:
    from virkit.training import ensure_run

    # a finished trial of the same burn-in in this sweep (e.g. AT for GAIRAT) saves the first epochs; a
    # finished run reused with more attacks asked for gets them added, to both checkpoints
    ensure_run(_resolve(spec["preset"], spec["overrides"]), spec["run_dir"], command="sweep")
    return finished_eval(spec["run_dir"])


def _run_notebook_trial(spec: dict) -> dict:
    from virkit.io import atomic_write_json
    from virkit.notebooks import ensure_kernelspec, execute_one, validate_parameters

    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    params = validate_parameters(spec["notebook"], spec["overrides"])
    ensure_kernelspec(Path(spec["sweep_dir"]))
    status, error = execute_one(
        spec["notebook"], str(run_dir / "output.ipynb"), params, str(run_dir), spec.get("timeout")
    )
    if status != "ok":
        raise VirkitError(f"notebook failed: {error}")
    atomic_write_json(
        run_dir / "trial.json", {"status": "finished", "parameters": spec["overrides"], "notebook": spec["notebook"]}
    )
    return {}


def worker(spec_path: str) -> int:
    """Entry point of a trial process: ``python -m virkit.sweep --worker SPEC.json``."""
    from virkit.io import atomic_write_json

    spec = json.loads(Path(spec_path).read_text())
    t0 = time.time()
    result: dict[str, Any] = {"name": spec["name"], "status": "failed", "error": None}
    try:
        inject = spec.get("inject")
        if inject == "kill":
            print("injected failure: the trial process kills itself", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if inject == "raise":
            raise RuntimeError(f"injected failure ({INJECT_ENV})")
        run = _run_train_trial if spec["kind"] == "train" else _run_notebook_trial
        result["eval"] = run(spec)
        result["status"] = "finished"
    except VirkitError as e:
        result["error"] = str(e)
        print(f"virkit: error: {e}", file=sys.stderr, flush=True)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    result["seconds"] = time.time() - t0
    atomic_write_json(spec["result_path"], result)
    return 0 if result["status"] == "finished" else 1


def injection(name: str) -> str | None:
    value = os.environ.get(INJECT_ENV)
    if not value:
        return None
    pattern, _, mode = value.partition(":")
    return (mode or "raise") if fnmatch.fnmatch(name, pattern) else None
