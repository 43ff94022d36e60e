"""One training loop for every method.

``train(cfg, out_dir)`` writes a run directory (:mod:`virkit.runs` owns its files): ``config.json``
before the first epoch, ``history.jsonl`` and ``last.pt`` after every epoch, ``best.pt`` whenever
held-out PGD accuracy improves, then the final evaluation (``eval.json``) and ``summary.json``.
It holds the run's writer lock for its whole life.

Randomness of epoch ``e`` (shuffling, augmentation, attack starts) is drawn from generators seeded
with ``(seed, e)`` alone, so a run resumed from ``last.pt`` ends with exactly the weights of an
uninterrupted run (on CPU; cuDNN may differ in the last bits on GPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from virkit.attacks import eval_mode, pgd
from virkit.data import (
    HOLDOUT_SEED,
    DeviceLoader,
    Split,
    holdout_subset,
    load_dataset,
    subset,
    test_subset,
    training_loader,
    validation_split,
)
from virkit.devices import compile_model, resolve_device
from virkit.distributed import DistContext
from virkit.distributed import setup as _dist_setup
from virkit.environment import environment_record
from virkit.errors import NonFiniteLossError, VirkitError
from virkit.models import FORMAT, build_model_from_meta, read_checkpoint
from virkit.runs import RunAction, RunDir
from virkit.training.burnin import branch_state
from virkit.training.config import TrainConfig, config_hash, validate
from virkit.training.epoch import Progress, epoch_line, lr_at, save_epoch, train_epoch
from virkit.training.final import finish
from virkit.training.methods import METHODS
from virkit.training.speed import StepSpec, fast_defaults

__all__ = ["train", "resolve_device", "default_run_dir", "prepare_data", "holdout_accuracy", "RunData"]


def _print_flush(msg: str) -> None:
    print(msg, flush=True)


def _silent(msg: str) -> None:
    pass


def default_run_dir(cfg: TrainConfig, root: str | os.PathLike = "runs") -> Path:
    return Path(root) / f"{cfg.dataset}-{cfg.model}-{cfg.method}-{cfg.preset}-s{cfg.seed}"


@dataclass
class RunData:
    """The splits of a run, on its device, and what the checkpoint records about them."""

    train: Split
    test: Split
    holdout: Split | None
    meta: dict


def prepare_data(cfg: TrainConfig, device: torch.device) -> RunData:
    """(train, test, holdout) splits on ``device``: the validation split carved from the training
    split (:func:`virkit.data.datasets.validation_split`, fixed per dataset), the training subset of the rest
    seeded by the run's seed, the test subset by :func:`virkit.data.datasets.test_subset`. Reads data only."""
    gmm = cfg.extra.get("gmm") if cfg.dataset == "gaussian-mixture" else None
    train = load_dataset(cfg.dataset, cfg.data_root, "train", gmm=gmm)
    test = load_dataset(cfg.dataset, cfg.data_root, "test", gmm=gmm)
    holdout, held = None, None
    if cfg.holdout and cfg.holdout_from == "train":
        train, holdout, held = validation_split(train, cfg.holdout)
    elif cfg.holdout:
        holdout = holdout_subset(test, cfg.holdout)
        held = {"from": "test", "size": len(holdout), "seed": HOLDOUT_SEED}
    train = subset(train, cfg.train_subset, seed=cfg.seed)
    test = test_subset(test, cfg.test_subset)
    if cfg.batch_size > len(train):
        raise VirkitError(
            f"batch_size={cfg.batch_size} is larger than the training set ({len(train)} examples); "
            "lower --batch-size or raise --train-subset"
        )
    meta = {
        "classes": train.classes,
        "mean": list(train.mean) if train.mean else None,
        "std": list(train.std) if train.std else None,
        "shape": list(train.x.shape[1:]),
        "source": train.source,
        "dataset": cfg.dataset,
        "holdout": held,
    }
    return RunData(train.to(device), test.to(device), holdout.to(device) if holdout is not None else None, meta)


@torch.no_grad()
def _natural_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def holdout_accuracy(model: nn.Module, split: Split, cfg: TrainConfig, batch_size: int = 500) -> tuple[float, float]:
    """Natural and PGD-k (eps, step max(2/255, 2.5 eps / k), uniform start) accuracy on the held-out
    set, in fp32 and eval mode."""
    nat = rob = 0
    g = torch.Generator(device=split.x.device)
    g.manual_seed(HOLDOUT_SEED)
    with eval_mode(model):
        for x, y, _ in DeviceLoader(split, batch_size).epoch(0):
            nat += int(_natural_correct(model, x, y).sum())
            if cfg.holdout_pgd_steps > 0:
                step = max(2 / 255, 2.5 * cfg.eps / cfg.holdout_pgd_steps)
                xa = pgd(
                    model,
                    x,
                    y,
                    eps=cfg.eps,
                    step_size=step,
                    steps=cfg.holdout_pgd_steps,
                    loss="ce",
                    random_start="uniform",
                    generator=g,
                )
                rob += int(_natural_correct(model, xa, y).sum())
    n = len(split)
    return nat / n, (rob / n if cfg.holdout_pgd_steps > 0 else float("nan"))


def _autocast_factory(cfg: TrainConfig, device: torch.device) -> Callable | None:
    if cfg.precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return None


def _maybe_compile(model: nn.Module, cfg: TrainConfig, example: torch.Tensor, log) -> nn.Module:
    if not cfg.compile:
        return model
    return compile_model(model, example[:2], dynamic=False, log=log)


def _build(
    cfg: TrainConfig, meta: dict, device: torch.device, dctx: DistContext, log
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model (channels_last if asked, SyncBatchNorm under ``--sync-bn``) and its SGD optimizer."""
    model = build_model_from_meta(cfg.to_dict(), meta).to(device)
    if cfg.channels_last and device.type in ("cuda", "cpu"):  # CPU too: oneDNN convs are faster in NHWC
        model = model.to(memory_format=torch.channels_last)
    model = dctx.prepare_model(model, log)  # SyncBatchNorm with --sync-bn under torchrun
    opt_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if device.type == "cuda":
        opt_kwargs["fused"] = True
    return model, torch.optim.SGD(model.parameters(), **opt_kwargs)


def _config_record(cfg: TrainConfig, device: torch.device, meta: dict, dctx: DistContext) -> dict:
    """What config.json (and every checkpoint) records about the run."""
    return {
        **cfg.to_dict(),
        "config_hash": config_hash(cfg),
        "environment": environment_record(device, commit=True),
        "data": meta,
        "method_description": METHODS[cfg.method].description,
        "resolved_hyperparameters": {k: cfg.hp(k) for k in ("alpha", "beta", "gamma", "trades_beta")},
        "random_start_resolved": cfg.random_start or METHODS[cfg.method].random_start,
        **({"distributed": dctx.describe()} if dctx.enabled else {}),
    }


def _branch_best(run: RunDir, best: dict | None, cfg_record: dict, meta: dict, log) -> None:
    """A branched run's best.pt: the parent's best state as of the burn-in epoch (what training from
    scratch would hold there), under this run's config."""
    if best is None:
        log("the parent's burn-in carries no best.pt state: best.pt starts with this run's first epoch")
        return
    run.save_checkpoint(
        {
            "format": FORMAT,
            "model": best["model"],
            "optimizer": {},
            "epoch": best["epoch"],
            "best_metric": best["best_metric"],
            "history": best["history"],
            "config": json.dumps(cfg_record),
            "data": meta,
        },
        "best",
    )


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    reuse: bool = False,
    log: Callable[[str], None] | None = None,
    quiet: bool = False,
    progress: bool = False,
    stop_after_epoch: int | None = None,
    sync_bn: bool | None = None,
    branch_from: str | os.PathLike | None = None,
) -> Path:
    """Train ``cfg`` into ``out_dir`` (default ``runs/<dataset>-<model>-<method>-<preset>-s<seed>``).

    ``resume``: continue from ``last.pt``; ``overwrite``: replace a run already there; ``reuse``:
    return a finished run with the same config without training. ``log`` receives the run's
    messages (default: printed); ``quiet=True`` drops them. ``stop_after_epoch`` ends the
    run early (unfinished, resumable), for tests. Returns the run directory. Another process
    writing the same directory is refused (:class:`virkit.locks.RunLockedError`, exit code 2).

    ``branch_from`` (``RUN`` or ``RUN@EPOCH``): start from another run's ``burnin.pt`` (the state
    after epoch ``reweight_start - 1``) when both train those epochs identically
    (:func:`virkit.training.config.burnin_key`); the result equals training from scratch, weight for weight
    on the CPU. config.json records the parent (path, config hash, epoch).

    Launched by torchrun with several processes, this is one DistributedDataParallel run
    (:mod:`virkit.distributed`): ``cfg.batch_size`` is the global batch, only rank 0 locks and writes
    files; ``sync_bn`` (default ``$VIRKIT_SYNC_BN``, set by ``--sync-bn``) uses SyncBatchNorm.
    """
    if quiet:
        log = _silent
    elif log is None:
        log = _print_flush
    validate(cfg)
    dctx = _dist_setup(cfg.device, cfg.batch_size, sync_bn, log)  # single-process unless torchrun
    if not dctx.is_main:
        log, progress = _silent, False
    run = RunDir(out_dir if out_dir is not None else default_run_dir(cfg))
    with run.claim("train", note=log) as claim:
        # rank 0 takes the run's lock and decides what to do with the directory; every rank learns it
        def claim_and_plan() -> RunAction:
            claim.acquire()
            return run.plan(config_hash(cfg), resume, overwrite, reuse)

        action = dctx.on_main(claim_and_plan)
        if action is RunAction.REUSE:
            log(f"reusing finished run {run.path}")
            dctx.close()
            return run.path
        device = dctx.device if dctx.enabled else resolve_device(cfg.device)
        precision, channels_last, calibration = fast_defaults(
            cfg.precision, cfg.channels_last, device, StepSpec.of(cfg), log=log
        )
        rcfg = dataclasses.replace(cfg, precision=precision, channels_last=channels_last)  # what runs
        torch.manual_seed(cfg.seed)
        data = dctx.everywhere(lambda: prepare_data(cfg, device))  # leaves the directory untouched
        model, optimizer = _build(rcfg, data.meta, device, dctx, log)
        done, parent = Progress(), None
        if branch_from is not None and action is not RunAction.RESUME:
            ck, parent = dctx.on_main(lambda: branch_state(cfg, branch_from, "cpu" if dctx.enabled else device, log))
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            done = Progress(int(ck["epoch"]), float(ck["best_metric"]), list(ck["history"]))
        if action is RunAction.RESUME:
            ck = dctx.on_main(
                lambda: read_checkpoint(
                    run.checkpoint("last"),
                    "last",  # rank 0 reads, all get it
                    map_location="cpu" if dctx.enabled else device,
                )
            )
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            done = Progress(int(ck["epoch"]), float(ck["best_metric"]), list(ck["history"]))
            log(f"resuming {run.path} after epoch {done.epoch}")
        cfg_record = {
            **_config_record(cfg, device, data.meta, dctx),
            "speed": {
                "precision": precision,
                "channels_last": channels_last,
                "chosen_by": "calibration" if calibration is not None else "config",
                **({"calibration": calibration.to_dict()} if calibration is not None else {}),
            },
        }
        if parent is not None:
            cfg_record["parent"] = parent
        elif action is RunAction.RESUME and run.read_config() and run.read_config().get("parent"):
            cfg_record["parent"] = run.read_config()["parent"]
        _start_files(run, action, cfg_record, dctx)
        if parent is not None:
            if ck.get("best_checkpoint") is None:
                done.best = -1.0  # no best state to inherit: best.pt starts with this run's own epochs
            if dctx.is_main:
                _branch_best(run, ck.get("best_checkpoint"), cfg_record, data.meta, log)

        autocast = _autocast_factory(rcfg, device)
        loader = training_loader(
            data.train, cfg.batch_size, cfg.augment, rank=dctx.rank, world_size=dctx.world_size
        )  # this rank's shard
        run_model = _maybe_compile(model, cfg, data.train.float_images(torch.arange(2, device=device)), log)
        run_model = dctx.wrap(run_model)  # DistributedDataParallel for the training forwards under torchrun
        t_run = time.time()
        for epoch in range(done.epoch + 1, cfg.epochs + 1):
            t0 = time.time()
            stats = train_epoch(
                run_model, optimizer, loader, rcfg, epoch, device, dctx, autocast, len(data.train), progress
            )
            if int(stats.bad_step) >= 0:
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, step {int(stats.bad_step) + 1} (method {cfg.method}, lr "
                    f"{lr_at(cfg, epoch):g}); stopped, last good checkpoint kept in {run.checkpoint('last')}; "
                    "lower --lr or use --precision fp32"
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats.all_reduce(dctx)
            seconds = time.time() - t0
            held = (
                holdout_accuracy(model, data.holdout, cfg)
                if data.holdout is not None and dctx.is_main
                else (math.nan, math.nan)
            )  # rank 0 only; the others wait for its save
            record = {
                **stats.record(cfg, epoch, lr_at(cfg, epoch), held, seconds),
                "seconds_with_holdout": time.time() - t0,
            }
            improved = done.add(record)
            save_epoch(run, model, optimizer, done, improved, cfg_record, data.meta, dctx)
            log(epoch_line(cfg, record))
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
                model = optimizer = None  # the DDP wrapper (its reducer holds the group) goes before the group
                dctx.close()
                return run.path

        model = optimizer = None  # as above: free the DDP wrapper while its process group still exists
        dctx.close()  # every rank leaves the process group together; rank 0 alone evaluates and writes summary.json
        if dctx.is_main:
            finish(run, cfg, done, data.test, device, log, time.time() - t_run)
    return run.path


def _start_files(run: RunDir, action: RunAction, cfg_record: dict, dctx: DistContext) -> None:
    """Clear an overwritten run and write config.json (rank 0); every rank raises if that fails."""
    error = None
    try:
        if dctx.is_main:
            if action is RunAction.OVERWRITE:
                run.clear()
            run.create()
            run.write_config(cfg_record)
    except OSError as e:
        error = VirkitError(f"cannot write to {run.path}: {e.strerror}; choose a writable --out")
    dctx.raise_if_main_failed(error)  # every rank raises rank 0's error
