"""A run that is there when asked for: :func:`ensure_run` trains it if needed (from scratch,
resuming from ``last.pt``, or branching from a run of the same burn-in beside it), then makes
sure its evaluation files hold the attacks asked for. The notebooks' shared runs
(:func:`virkit.notebooks.presets.shared_run`) and the sweep's training trials
(:mod:`virkit.sweep.trial`) both go through it."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from virkit.runs import RunDir
from virkit.training.burnin import find_burnin_parent
from virkit.training.config import TrainConfig, config_hash
from virkit.training.final import evaluate_checkpoints
from virkit.training.trainer import train

__all__ = ["ensure_run"]


def _print_flush(msg: str) -> None:
    print(msg, flush=True)


def ensure_run(
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    attacks: Iterable[str] = (),
    command: str = "train",
    wait: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Make ``run_dir`` hold a finished run of ``cfg`` evaluated under ``cfg.eval_attacks`` and
    ``attacks``; returns the run directory.

    A finished run of the same config is kept as it is. Otherwise the run is trained: resumed from
    its ``last.pt``, else started again, branching from the ``burnin.pt`` of a run of the same
    burn-in in the same folder when there is one (:func:`virkit.training.burnin.find_burnin_parent`;
    the result equals training from scratch). A directory holding another config is refused
    (:func:`virkit.training.trainer.train`). Attacks the run's summary lacks are then evaluated on
    both checkpoints, keeping the attacks their files already hold
    (:func:`virkit.training.final.evaluate_checkpoints`), and added to summary.json.

    The run's lock is held throughout, recorded as ``command``; ``wait=True`` waits for another
    writer of the same run (a concurrent notebook) instead of refusing. ``log`` receives the
    messages (default: printed).
    """
    log = log if log is not None else _print_flush
    run = RunDir(run_dir)
    with run.lock(command, wait=wait):
        if not (run.is_finished() and run.config_hash() == config_hash(cfg)):
            t = time.time()
            # a run of the same burn-in beside this one (vir-at-w1 for vir-at, AT for GAIRAT) saves the first epochs
            parent = (
                None if run.checkpoint("last").is_file() else find_burnin_parent(cfg, run.path.parent, exclude=run.path)
            )
            train(cfg, run.path, resume=True, reuse=True, log=log, branch_from=parent)
            log(f"trained {run.path.name} in {time.time() - t:.0f} s")
        _evaluate_missing(run, cfg, attacks, log)
    return run.path


def _evaluate_missing(run: RunDir, cfg: TrainConfig, attacks: Iterable[str], log: Callable[[str], None]) -> None:
    """Evaluate a finished run under the attacks of ``cfg.eval_attacks`` and ``attacks`` that its
    summary lacks (the caller holds the run's lock)."""
    wanted = list(dict.fromkeys([*cfg.eval_attacks, *attacks]))
    summary = run.read_summary() or {}
    missing = [a for a in wanted if a not in (summary.get("eval") or {})]
    if not missing:
        return
    t = time.time()
    log(f"evaluating {run.path} under {', '.join(missing)}")
    summary["eval"], summary["eval_checkpoints"] = evaluate_checkpoints(
        run, dataclasses.replace(cfg, eval_attacks=tuple(wanted)), cfg.device, replace=False, log=log
    )
    run.write_summary(summary)
    log(f"evaluated {run.path.name} under {', '.join(missing)} in {time.time() - t:.0f} s")
