"""Evaluating a run: :func:`evaluate_run` takes a virkit run directory or checkpoint, evaluates what
the trainer evaluated by default (the run's eval checkpoint, seed, eps and test subset) under the
eval.json's writer lock, and hands the work to :func:`virkit.evaluation.evaluate.evaluate_model`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from virkit.devices import resolve_device
from virkit.distributed import DistContext
from virkit.errors import VirkitError
from virkit.evaluation.evaluate import EvalSettings, evaluate_model

if TYPE_CHECKING:
    from virkit.data import Split
    from virkit.locks import WriterLock

__all__ = ["evaluate_run", "writer_lock"]


def evaluate_run(
    source: str | os.PathLike,
    settings: EvalSettings | None = None,
    *,
    which: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    device: str | torch.device = "auto",
    out: str | os.PathLike | None = None,
    test_split: Split | None = None,
    log: Callable[[str], None] | None = None,
    dist: DistContext | None = None,
) -> dict:
    """Evaluate a virkit run directory (or one of its checkpoints) under ``settings`` (an
    :class:`virkit.evaluation.EvalSettings`; None: the defaults) and write its eval.json.

    What ``settings`` leaves unset is the run's own (:meth:`EvalSettings.resolved`): it evaluates
    what the trainer evaluated, the run's ``eval_attacks``, seed and eps (under ``norm='L2'`` the L2
    default 0.5, not the training eps) and its seeded class-balanced test subset
    (:func:`virkit.data.datasets.test_subset`), so adding attacks extends the run's own
    ``eval.json``; ``n_examples`` takes the same seeded draw with another size. ``which``: the
    checkpoint (default: the run's eval checkpoint, ``last`` unless the run says otherwise);
    ``dataset``/``data_root``: the test images (default: the run's); ``out`` writes elsewhere. The
    eval.json (and, for a run's own eval.json, the run) is locked for the whole evaluation: a
    second writer is refused. ``test_split`` (already on the device) skips reading the data again
    (the trainer's final evaluation). Returns the eval.json document; with ``log`` a one-line
    summary is logged.
    """
    from virkit.data import load_dataset, test_subset
    from virkit.models import load_checkpoint, resolve_checkpoint_path
    from virkit.runs import RunDir

    dist = dist or DistContext()
    settings = EvalSettings.given(settings, "evaluate_run")  # checked when made: before anything is written
    src = Path(source)
    run = RunDir(src if src.is_dir() else src.parent)
    out_path = Path(out) if out is not None else run.eval_file
    # one writer per eval.json: refused before anything else when its folder exists (a run's own
    # eval.json); a new --out folder is only created once every input has been checked
    lock = writer_lock(out_path, dist) if out_path.parent.is_dir() else None
    try:
        if which is None:
            which = (run.read_config() or {}).get("eval_checkpoint") if src.is_dir() else None
            which = which if which in ("best", "last") else "last"
        ck_path = resolve_checkpoint_path(src, which)
        dev = dist.device if dist.enabled and dist.device is not None else resolve_device(device)
        settings.check_device(dev)
        model, cfg = load_checkpoint(ck_path, "cpu")
        ds = dataset or cfg["dataset"]
        n = (
            settings.n_examples
            if settings.n_examples is not None
            else (cfg.get("test_subset") if ds == cfg["dataset"] else None)
        )
        # what the settings leave unset is the run's own (its training eps is a Linf radius)
        own = settings.resolved(
            attacks=list(cfg.get("eval_attacks") or ["natural"]),
            eps=float(cfg.get("eps", 8 / 255)) if settings.norm == "Linf" else None,
            seed=int(cfg.get("seed", 0)),
        )
        if test_split is None:
            full = load_dataset(
                ds,
                data_root or cfg.get("data_root"),
                "test",
                gmm=(cfg.get("extra") or {}).get("gmm") if ds == "gaussian-mixture" else None,
            )
            n_model = len((cfg.get("data") or {}).get("classes") or full.classes)
            if n_model != full.num_classes:
                raise VirkitError(
                    f"checkpoint {ck_path} has {n_model} classes but the dataset has "
                    f"{full.num_classes}; evaluate it on the dataset it was trained on"
                )
            if n is not None and n > len(full):
                raise VirkitError(
                    f"--n-examples={n} is more than the test set has ({len(full)}); use at most {len(full)}"
                )
            test_split = test_subset(full, n).to(dev)
        own = dataclasses.replace(
            own,
            n_examples=None,
            extra={**settings.extra, "checkpoint": ck_path.name, "test_subset": n, "dataset_source": test_split.source},
        )
        if lock is None:
            lock = writer_lock(out_path, dist)
        doc = evaluate_model(model.to(dev), test_split, own, device=dev, out_path=out_path, dist=dist)
    finally:
        if lock is not None:
            lock.release()
    if log is not None:
        log(
            f"final evaluation ({ck_path.name}, {len(test_split)} test images): "
            + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in doc["attacks"].items())
        )
    return doc


class _NoLock:
    def release(self) -> None:
        pass


def writer_lock(out_path: Path, dist: DistContext) -> WriterLock | _NoLock:
    """The writer lock of ``out_path`` (rank 0 holds it for every rank of a sharded evaluation; if it
    is refused, every rank raises)."""
    from virkit.runs import eval_lock

    if not dist.enabled:
        return eval_lock(out_path)
    held: list = []
    dist.on_main(lambda: held.append(eval_lock(out_path)))
    return held[0] if held else _NoLock()
