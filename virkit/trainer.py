"""One training loop for every method.

``train(cfg, out_dir)`` writes, in ``out_dir``:

* ``config.json``  the resolved config, seed, versions and device (written before the first epoch);
* ``history.jsonl`` one JSON object per finished epoch (losses, lr, held-out natural and PGD
  accuracy, per-class sum and mean of the weights, weight min/mean/max, seconds, images/s);
* ``last.pt``      after every epoch (atomic); ``best.pt`` whenever held-out PGD accuracy improves;
* ``eval.json``    the final evaluation (``cfg.eval_attacks``) of ``cfg.eval_checkpoint``;
* ``summary.json`` written last: status ``finished``, final numbers, wall time.

Randomness of epoch ``e`` (shuffling, augmentation, attack starts) is drawn from generators seeded
with ``(seed, e)`` alone, so a run resumed from ``last.pt`` ends with exactly the weights of an
uninterrupted run (on CPU; cuDNN may differ in the last bits on GPU).
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .attacks.base import eval_mode
from .attacks.pgd import pgd
from .checkpoint import FORMAT, build_model_from_meta, read_checkpoint
from .config import TrainConfig, config_hash, validate
from .data import DeviceLoader, Split, load_dataset, subset
from .distributed import setup as _dist_setup
from .errors import NonFiniteLossError, VirkitError
from .io import append_jsonl, atomic_torch_save, atomic_write_json
from .methods import METHODS, method_step

__all__ = ["train", "resolve_device", "default_run_dir", "run_status", "environment_info", "prepare_data",
           "holdout_accuracy"]

RUN_FILES = ("config.json", "history.jsonl", "last.pt", "best.pt", "eval.json", "summary.json")
HOLDOUT_SEED = 20240101  # fixed: every run of a dataset is selected/monitored on the same held-out set


def _print_flush(msg: str) -> None:
    print(msg, flush=True)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise VirkitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VirkitError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    return dev


def environment_info(device: torch.device) -> dict:
    import numpy
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
            "platform": platform.platform(), "device": str(device), "threads": torch.get_num_threads()}
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    from . import __version__
    info["virkit"] = __version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def default_run_dir(cfg: TrainConfig, root: str | os.PathLike = "runs") -> Path:
    return Path(root) / f"{cfg.dataset}-{cfg.model}-{cfg.method}-{cfg.preset}-s{cfg.seed}"


def run_status(out_dir: Path) -> str:
    """``empty`` (nothing of a run), ``finished``, or ``partial`` (config written, not finished)."""
    if (out_dir / "summary.json").is_file():
        try:
            if json.loads((out_dir / "summary.json").read_text()).get("status") == "finished":
                return "finished"
        except (OSError, json.JSONDecodeError):
            pass
    if any((out_dir / f).exists() for f in RUN_FILES):
        return "partial"
    return "empty"


def prepare_data(cfg: TrainConfig, device: torch.device) -> tuple[Split, Split, Split]:
    """(train, test, holdout) splits on ``device``; subsets seeded, holdout fixed per dataset."""
    gmm = cfg.extra.get("gmm") if cfg.dataset == "gaussian-mixture" else None
    train = load_dataset(cfg.dataset, cfg.data_root, "train", gmm=gmm)
    test = load_dataset(cfg.dataset, cfg.data_root, "test", gmm=gmm)
    train = subset(train, cfg.train_subset, seed=cfg.seed)
    holdout = subset(test, min(cfg.holdout, len(test)), seed=HOLDOUT_SEED) if cfg.holdout else None
    test = subset(test, cfg.test_subset, seed=HOLDOUT_SEED + 1)
    if cfg.batch_size > len(train):
        raise VirkitError(f"batch_size={cfg.batch_size} is larger than the training set ({len(train)} examples); "
                          "lower --batch-size or raise --train-subset")
    return train.to(device), test.to(device), holdout.to(device) if holdout is not None else None


def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Piecewise-constant schedule: lr * gamma^(number of milestones m with m < epoch), epoch 1-based.
    With milestones (75, 90): epochs 1-75 at lr, 76-90 at lr/10, 91+ at lr/100 (Sec. 5.1)."""
    return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if m < epoch)


def _epoch_seed(cfg: TrainConfig, epoch: int) -> int:
    return (cfg.seed * 1_000_003 + epoch * 7919) % (2 ** 62)


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
                xa = pgd(model, x, y, eps=cfg.eps, step_size=step, steps=cfg.holdout_pgd_steps, loss="ce",
                         random_start="uniform", generator=g)
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
    try:
        compiled = torch.compile(model, dynamic=False)
        with torch.no_grad(), eval_mode(compiled):
            compiled(example[:2])
        return compiled
    except Exception as e:  # noqa: BLE001 - any backend failure falls back to eager mode
        log(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); continuing in eager mode")
        return model


def _check_out_dir(out_dir: Path, cfg: TrainConfig, resume: bool, overwrite: bool, reuse: bool) -> str:
    """Decide what to do with ``out_dir``: 'new', 'resume', 'reuse' or 'overwrite'. Raises before
    anything is written when the request would lose a run."""
    status = run_status(out_dir) if out_dir.exists() else "empty"
    if out_dir.exists() and not out_dir.is_dir():
        raise VirkitError(f"output path {out_dir} exists and is not a directory; choose another --out")
    if status == "empty":
        return "new"
    old_cfg = None
    try:
        old_cfg = json.loads((out_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    same = old_cfg is not None and old_cfg.get("config_hash") == config_hash(cfg)
    if status == "finished" and reuse and same:
        return "reuse"
    if overwrite:
        return "overwrite"
    if resume:
        if status == "finished":
            if same:
                return "reuse"
            raise VirkitError(f"{out_dir} holds a finished run with a different config; use --overwrite to replace it "
                              "or another --out")
        if not (out_dir / "last.pt").is_file():
            return "overwrite" if old_cfg is None or same else "conflict"
        if old_cfg is not None and not same:
            raise VirkitError(f"cannot resume {out_dir}: its config differs from the one given (hash "
                              f"{old_cfg.get('config_hash')} vs {config_hash(cfg)}); rerun with the same options "
                              "or use --overwrite")
        return "resume"
    what = "a finished run" if status == "finished" else "an unfinished run"
    raise VirkitError(f"{out_dir} already holds {what}; pass --resume to continue it, --overwrite to replace it, "
                      "or choose another --out")


def train(cfg: TrainConfig, out_dir: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
          reuse: bool = False, log: Callable[[str], None] | None = None, progress: bool = False,
          stop_after_epoch: int | None = None, sync_bn: bool | None = None) -> Path:
    """Train ``cfg`` into ``out_dir`` (default ``runs/<dataset>-<model>-<method>-<preset>-s<seed>``).

    ``resume``: continue from ``last.pt``; ``overwrite``: replace a run already there; ``reuse``:
    return a finished run with the same config without training. ``stop_after_epoch`` ends the
    run early (unfinished, resumable), for tests. Returns the run directory.

    Launched by torchrun with several processes, this is one DistributedDataParallel run
    (:mod:`virkit.distributed`): ``cfg.batch_size`` is the global batch, only rank 0 writes files;
    ``sync_bn`` (default ``$VIRKIT_SYNC_BN``, set by ``--sync-bn``) uses SyncBatchNorm.
    """
    log = _print_flush if log is None else (log or (lambda s: None))  # None: print; False: silent
    validate(cfg)
    dctx = _dist_setup(cfg.device, cfg.batch_size, sync_bn, log)   # single-process unless torchrun
    if not dctx.is_main:
        log, progress = (lambda s: None), False
    out = Path(out_dir) if out_dir is not None else default_run_dir(cfg)
    action = dctx.on_main(lambda: _check_out_dir(out, cfg, resume, overwrite, reuse))  # rank 0 decides
    if action == "reuse":
        log(f"reusing finished run {out}")
        dctx.close()
        return out
    if action == "conflict":
        raise VirkitError(f"{out} holds an unfinished run with a different config and no last.pt; use --overwrite")
    device = dctx.device if dctx.enabled else resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_split, test_split, holdout = dctx.everywhere(lambda: prepare_data(cfg, device))  # leaves out_dir untouched

    data_meta = {"classes": train_split.classes, "mean": list(train_split.mean) if train_split.mean else None,
                 "std": list(train_split.std) if train_split.std else None, "shape": list(train_split.x.shape[1:]),
                 "source": train_split.source, "dataset": cfg.dataset}
    model = build_model_from_meta(cfg.to_dict(), data_meta).to(device)
    if cfg.channels_last and device.type in ("cuda", "cpu"):   # CPU too: oneDNN convs are faster in NHWC
        model = model.to(memory_format=torch.channels_last)
    model = dctx.prepare_model(model, log)   # SyncBatchNorm with --sync-bn under torchrun
    opt_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if device.type == "cuda":
        opt_kwargs["fused"] = True
    optimizer = torch.optim.SGD(model.parameters(), **opt_kwargs)

    start_epoch, best, history = 1, -1.0, []
    if action == "resume":
        ck = dctx.on_main(lambda: read_checkpoint(out / "last.pt", "last",   # rank 0 reads, all get it
                                                  map_location="cpu" if dctx.enabled else device))
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch, best, history = int(ck["epoch"]) + 1, float(ck["best_metric"]), list(ck["history"])
        log(f"resuming {out} after epoch {start_epoch - 1}")
    elif action == "overwrite" and dctx.is_main:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
    if dctx.is_main:   # only rank 0 writes files
        out.mkdir(parents=True, exist_ok=True)
    env = environment_info(device)
    cfg_record = {**cfg.to_dict(), "config_hash": config_hash(cfg), "environment": env, "data": data_meta,
                  "method_description": METHODS[cfg.method].description,
                  "resolved_hyperparameters": {k: cfg.hp(k) for k in ("alpha", "beta", "gamma", "trades_beta")},
                  "random_start_resolved": cfg.random_start or METHODS[cfg.method].random_start,
                  **({"distributed": dctx.describe()} if dctx.enabled else {})}
    config_error = None
    try:
        if dctx.is_main:
            atomic_write_json(out / "config.json", cfg_record)
    except OSError as e:
        config_error = VirkitError(f"cannot write to {out}: {e.strerror}; choose a writable --out")
    dctx.raise_if_main_failed(config_error)   # every rank raises rank 0's error

    autocast = _autocast_factory(cfg, device)
    loader = DeviceLoader(train_split, cfg.batch_size, shuffle=True, augment=train_split.x.dtype == torch.uint8,
                          drop_last=False, rank=dctx.rank, world_size=dctx.world_size)  # this rank's shard
    run_model = _maybe_compile(model, cfg, train_split.float_images(torch.arange(2, device=device)), log)
    run_model = dctx.wrap(run_model)   # DistributedDataParallel for the training forwards under torchrun
    num_classes = train_split.num_classes
    t_run = time.time()
    for epoch in range(start_epoch, cfg.epochs + 1):
        lr = _lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seed = _epoch_seed(cfg, epoch)
        torch.manual_seed(seed)
        gen = torch.Generator(device=device)
        gen.manual_seed(dctx.rank_seed(seed + 2))   # attack starts: rank 0 draws the single-process stream
        model.train()
        t0 = time.time()
        # statistics accumulated on the device: no host synchronisation inside the epoch
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        adv_correct = torch.zeros((), device=device, dtype=torch.int64)
        w_sum = torch.zeros(num_classes, device=device, dtype=torch.float64)
        w_cnt = torch.zeros(num_classes, device=device, dtype=torch.float64)
        w_min = torch.full((), math.inf, device=device)
        w_max = torch.full((), -math.inf, device=device)
        bad_step = torch.full((), -1, device=device, dtype=torch.int64)
        seen = 0
        iterator = loader.epoch(seed)
        if progress:
            from tqdm.auto import tqdm
            iterator = tqdm(iterator, total=len(loader), desc=f"epoch {epoch}/{cfg.epochs}", leave=False)
        for step, (x, y, _idx) in enumerate(iterator):
            if cfg.channels_last and device.type in ("cuda", "cpu"):
                x = x.contiguous(memory_format=torch.channels_last)
            res = method_step(run_model, x, y, cfg, epoch, autocast=autocast, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            # distributed: scale the shard's loss so that DDP's gradient average is the global-batch gradient
            scale = dctx.loss_scale(x.shape[0], min(cfg.batch_size, len(train_split) - step * cfg.batch_size),
                                    cfg.batch_reduction)
            (res.loss if scale == 1.0 else res.loss * scale).backward()
            optimizer.step()
            finite = torch.isfinite(res.loss.detach())
            bad_step = torch.where((bad_step < 0) & ~finite, torch.tensor(step, device=device), bad_step)
            loss_sum += res.loss.detach().double() * (1 if cfg.batch_reduction == "sum" else x.shape[0])
            if res.logits_adv is not None:
                adv_correct += (res.logits_adv.argmax(1) == y).sum()
            w = res.weights.double()
            w_sum.index_add_(0, y, w)
            w_cnt.index_add_(0, y, torch.ones_like(w))
            w_min = torch.minimum(w_min, res.weights.min().float())
            w_max = torch.maximum(w_max, res.weights.max().float())
            seen += x.shape[0]
            if device.type == "cpu" or step % 50 == 49:
                bad_step = dctx.first_bad_step(bad_step)   # agreed by all ranks: they stop together
                if int(bad_step) >= 0:
                    break
        bad_step = dctx.first_bad_step(bad_step)
        if int(bad_step) >= 0:
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, step {int(bad_step) + 1} (method {cfg.method}, lr {lr:g}); "
                f"stopped, last good checkpoint kept in {out / 'last.pt'}; lower --lr or use --precision fp32")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if dctx.enabled:   # the epoch's statistics over the global batch (all ranks' shards)
            dctx.all_reduce_(loss_sum, adv_correct, w_sum, w_cnt)
            dctx.all_reduce_(w_min, op="min")
            dctx.all_reduce_(w_max, op="max")
            seen = dctx.sum_int(seen)
        train_seconds = time.time() - t0
        hold_nat, hold_rob = (holdout_accuracy(model, holdout, cfg) if holdout is not None and dctx.is_main
                              else (math.nan, math.nan))   # rank 0 only; the others wait for its save
        spec = METHODS[cfg.method]
        w_mean_cls = (w_sum / w_cnt.clamp_min(1)).tolist()
        record = {
            "epoch": epoch, "lr": lr,
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_adv_acc": float(adv_correct) / max(seen, 1) if spec.family != "natural" else None,
            "holdout_nat_acc": hold_nat, "holdout_pgd_acc": hold_rob,
            "reweighting_active": bool(spec.reweighted and epoch >= cfg.reweight_start),
            "weight_sum_per_class": w_sum.tolist(), "weight_mean_per_class": w_mean_cls,
            "weight_min": float(w_min), "weight_mean": float(w_sum.sum() / w_cnt.sum().clamp_min(1)),
            "weight_max": float(w_max),
            "seconds": train_seconds, "images_per_s": seen / max(train_seconds, 1e-9),
            "seconds_with_holdout": time.time() - t0,
        }
        history.append(record)
        improved = hold_rob > best if not math.isnan(hold_rob) else True
        if improved:
            best = hold_rob if not math.isnan(hold_rob) else best
        state = {"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "best_metric": best, "history": history, "config": json.dumps(cfg_record), "data": data_meta}
        save_error = None
        try:
            if dctx.is_main:   # only rank 0 writes; every rank raises if it fails
                atomic_torch_save(state, out / "last.pt")
                if improved:
                    atomic_torch_save({**state, "optimizer": {}}, out / "best.pt")
                append_jsonl(out / "history.jsonl", history)
        except OSError as e:
            save_error = VirkitError(f"cannot write checkpoint in {out}: {e.strerror or e}; training stopped so that no "
                                     "epoch goes unsaved; free space or fix permissions, then --resume")
        dctx.raise_if_main_failed(save_error)
        log(f"epoch {epoch:3d}/{cfg.epochs} lr {lr:.4g} loss {record['train_loss']:.4f} "
            f"holdout nat {hold_nat:.3f} pgd{cfg.holdout_pgd_steps} {hold_rob:.3f} "
            f"w[{record['weight_min']:.3g},{record['weight_mean']:.3g},{record['weight_max']:.3g}] "
            f"{record['images_per_s']:.0f} img/s")
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            dctx.close()
            return out

    dctx.close()   # every rank leaves the process group together; rank 0 alone evaluates and writes summary.json
    if not dctx.is_main:
        return out
    summary = {"status": "finished", "epochs": cfg.epochs, "wall_seconds_this_session": time.time() - t_run,
               "final": history[-1] if history else {}, "best_holdout_pgd_acc": best, "config_hash": config_hash(cfg)}
    if cfg.eval_attacks:
        summary["eval"] = _final_eval(out, cfg, test_split, device, log)
    atomic_write_json(out / "summary.json", summary)
    return out


def _final_eval(out: Path, cfg: TrainConfig, test_split: Split, device: torch.device, log) -> dict:
    from .checkpoint import load_checkpoint
    from .evaluate import evaluate_model

    model, _ = load_checkpoint(out, device=device, which=cfg.eval_checkpoint)
    res = evaluate_model(model, test_split, list(cfg.eval_attacks), batch_size=cfg.eval_batch_size, device=device,
                         seed=cfg.seed, eps=cfg.eps, out_path=out / "eval.json", progress=False, replace=True,
                         extra={"checkpoint": f"{cfg.eval_checkpoint}.pt", "test_subset": cfg.test_subset,
                                "dataset_source": test_split.source})
    accs = {k: v["accuracy"] for k, v in res["attacks"].items()}
    log("final evaluation (" + cfg.eval_checkpoint + ".pt, " + str(len(test_split)) + " test images): " +
        ", ".join(f"{k} {v:.3f}" for k, v in accs.items()))
    return accs
