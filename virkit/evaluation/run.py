"""Evaluating a run: :func:`evaluate_run` takes a virkit run directory or checkpoint, evaluates what
the trainer evaluated by default (the run's eval checkpoint, seed, eps and test subset) under the
eval.json's writer lock, and hands the work to :func:`virkit.evaluation.evaluate.evaluate_model`."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from virkit.attacks import DEFAULT_EPS
from virkit.devices import resolve_device
from virkit.distributed import DistContext
from virkit.errors import VirkitError
from virkit.evaluation.evaluate import EvalSettings, evaluate_model

__all__ = ["evaluate_run", "writer_lock"]


def evaluate_run(source: str | os.PathLike, attacks=None, *, which: str | None = None, n_examples: int | None = None,
                 batch_size: int = 256, device: str | torch.device = "auto", seed: int | None = None,
                 eps: float | None = None, dataset: str | None = None, data_root: str | None = None,
                 out: str | os.PathLike | None = None, replace: bool = False, progress: bool = False,
                 attack_overrides: dict | None = None, test_split=None, log: Callable[[str], None] | None = None,
                 norm: str = "Linf", save_adv=None, save_adv_png: bool = False, dist: DistContext | None = None,
                 allow_tf32: bool = False, compile: str = "off", reuse_from: list | None = None) -> dict:
    """Evaluate a virkit run directory (or one of its checkpoints) and write its eval.json.

    By default it evaluates what the trainer evaluated: the run's eval checkpoint (``last`` unless
    the run says otherwise), its seed and eps, and its seeded class-balanced test subset
    (:func:`virkit.data.datasets.test_subset`), so adding attacks extends the run's own ``eval.json``.
    ``n_examples`` takes the same seeded draw with another size; ``out`` writes elsewhere. The
    eval.json (and, for a run's own eval.json, the run) is locked for the whole evaluation: a
    second writer is refused. ``attacks`` defaults to the run's ``eval_attacks``. ``test_split``
    (already on the device) skips reading the data again (the trainer's final evaluation).
    ``norm='L2'`` evaluates in the L2 threat model (eps default 0.5, not the training eps).
    ``allow_tf32``, ``compile`` and ``reuse_from`` as in :class:`virkit.evaluation.evaluate.EvalSettings`.
    Returns the eval.json document; with ``log`` a one-line summary is logged.
    """
    from virkit.data import load_dataset, test_subset
    from virkit.models import load_checkpoint, resolve_checkpoint_path
    from virkit.runs import RunDir

    dist = dist or DistContext()
    early = EvalSettings(attacks if attacks is not None else ["natural"], batch_size=batch_size,
                         n_examples=n_examples, eps=eps, norm=norm, attack_overrides=attack_overrides or {},
                         replace=replace, progress=progress, save_adv=save_adv, save_adv_png=save_adv_png,
                         allow_tf32=allow_tf32, compile=compile, reuse_from=list(reuse_from or []))
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
        early.check_device(dev)
        model, cfg = load_checkpoint(ck_path, "cpu")
        ds = dataset or cfg["dataset"]
        n = n_examples if n_examples is not None else (cfg.get("test_subset") if ds == cfg["dataset"] else None)
        run_eps = float(cfg.get("eps", 8 / 255)) if norm == "Linf" else DEFAULT_EPS[norm]
        settings = dataclasses.replace(early, attacks=attacks if attacks is not None else
                                       list(cfg.get("eval_attacks") or ["natural"]), n_examples=None,
                                       eps=eps if eps is not None else run_eps,
                                       seed=seed if seed is not None else int(cfg.get("seed", 0)))
        if test_split is None:
            full = load_dataset(ds, data_root or cfg.get("data_root"), "test",
                                gmm=(cfg.get("extra") or {}).get("gmm") if ds == "gaussian-mixture" else None)
            n_model = len((cfg.get("data") or {}).get("classes") or full.classes)
            if n_model != full.num_classes:
                raise VirkitError(f"checkpoint {ck_path} has {n_model} classes but the dataset has "
                                  f"{full.num_classes}; evaluate it on the dataset it was trained on")
            if n is not None and n > len(full):
                raise VirkitError(f"--n-examples={n} is more than the test set has ({len(full)}); use at most "
                                  f"{len(full)}")
            test_split = test_subset(full, n).to(dev)
        settings.extra = {"checkpoint": ck_path.name, "test_subset": n, "dataset_source": test_split.source}
        if lock is None:
            lock = writer_lock(out_path, dist)
        doc = evaluate_model(model.to(dev), test_split, settings, device=dev, out_path=out_path, dist=dist)
    finally:
        if lock is not None:
            lock.release()
    if log is not None:
        log(f"final evaluation ({ck_path.name}, {len(test_split)} test images): " +
            ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in doc["attacks"].items()))
    return doc


class _NoLock:
    def release(self) -> None:
        pass


def writer_lock(out_path: Path, dist: DistContext):
    """The writer lock of ``out_path`` (rank 0 holds it for every rank of a sharded evaluation; if it
    is refused, every rank raises)."""
    from virkit.runs import eval_lock
    if not dist.enabled:
        return eval_lock(out_path)
    held: list = []
    dist.on_main(lambda: held.append(eval_lock(out_path)))
    return held[0] if held else _NoLock()

