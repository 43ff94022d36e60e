"""The end of a training run: the final evaluation of last.pt and best.pt (robust overfitting is
what separates them) and summary.json. A sweep that asks a finished run for more attacks calls
:func:`evaluate_checkpoints` too."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from virkit.data import Split
from virkit.evaluation import EvalSettings, evaluate_run
from virkit.models import read_checkpoint
from virkit.runs import RunDir
from virkit.training.burnin import relative_evals
from virkit.training.config import TrainConfig, config_hash

if TYPE_CHECKING:
    from virkit.training.epoch import Progress

__all__ = ["finish", "evaluate_checkpoints"]


def finish(
    run: RunDir,
    cfg: TrainConfig,
    done: Progress,
    test: Split,
    device: torch.device,
    log: Callable[[str], None] | None,
    wall: float,
) -> None:
    """The final evaluation (:func:`evaluate_checkpoints`), then summary.json."""
    summary = {
        "status": "finished",
        "epochs": cfg.epochs,
        "wall_seconds_this_session": wall,
        "final": done.history[-1] if done.history else {},
        "best_holdout_pgd_acc": done.best,
        "config_hash": config_hash(cfg),
    }
    if cfg.eval_attacks:
        summary["eval"], summary["eval_checkpoints"] = evaluate_checkpoints(
            run, cfg, device, test=test, replace=True, log=log, last_epoch=done.epoch
        )
    run.write_summary(summary)


def evaluate_checkpoints(
    run: RunDir,
    cfg: TrainConfig,
    device: str | torch.device,
    *,
    test: Split | None = None,
    replace: bool = True,
    log: Callable[[str], None] | None = None,
    last_epoch: int | None = None,
) -> tuple[dict, dict]:
    """Evaluate a finished run's eval checkpoint (``cfg.eval_checkpoint``, into eval.json) and the
    other one (best.pt or last.pt, into ``eval-best.json`` / ``eval-last.json``) when it holds
    another epoch, under ``cfg.eval_attacks``; robust overfitting is what separates them. With
    ``replace=False`` the attacks an evaluation file already holds for the same weights are kept
    (a grid that asks a finished run for more attacks). Returns ``({attack: accuracy} of the eval
    checkpoint, the per-checkpoint record)``; the record is also written into eval.json."""
    log = log or (lambda m: None)
    main = cfg.eval_checkpoint
    other = "best" if main == "last" else "last"
    epochs = {
        "last": last_epoch if last_epoch is not None else _checkpoint_epoch(run, "last"),
        "best": _checkpoint_epoch(run, "best"),
    }
    settings = EvalSettings(list(cfg.eval_attacks), batch_size=cfg.eval_batch_size, replace=replace, progress=False)
    doc = evaluate_run(run.path, settings, which=main, device=device, test_split=test, log=log)
    accuracy = {k: v["accuracy"] for k, v in doc["attacks"].items()}
    record = {main: {"file": run.eval_file.name, "epoch": epochs[main], "accuracy": accuracy}}
    if run.checkpoint(other).is_file() and epochs[other] != epochs[main]:
        # a branched run's best.pt from the burn-in may be a relative's, already evaluated
        odoc = evaluate_run(
            run.path,
            dataclasses.replace(settings, reuse_from=relative_evals(run)),
            which=other,
            device=device,
            test_split=test,
            out=run.eval_file_for(other),
            log=lambda m: log(m.replace("final evaluation", f"final evaluation of {other}")),
        )
        record[other] = {
            "file": run.eval_file_for(other).name,
            "epoch": epochs[other],
            "accuracy": {k: v["accuracy"] for k, v in odoc["attacks"].items()},
        }
    elif run.checkpoint(other).is_file():
        record[other] = {**record[main], "same_as": main}
    run.note_checkpoints(record)
    return accuracy, record


def _checkpoint_epoch(run: RunDir, which: str) -> int | None:
    """The epoch ``which`` checkpoint holds (best.pt: the first with the highest validation PGD
    accuracy), else None."""
    path = run.checkpoint(which)
    return int(read_checkpoint(path, which, map_location="cpu")["epoch"]) if path.is_file() else None
