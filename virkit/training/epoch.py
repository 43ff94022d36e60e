"""One training epoch: its learning rate (:func:`lr_at`) and seeds, the loop over its batches
(:func:`train_epoch`), its statistics accumulated on the device (:class:`EpochStats`) and its record
in history.jsonl, where the run stands (:class:`Progress`), and the checkpoints written after it
(:func:`save_epoch`: last.pt, best.pt, burnin.pt).

Randomness of epoch ``e`` (shuffling, augmentation, attack starts) is drawn from generators seeded
with ``(seed, e)`` alone, so a resumed run repeats the epochs an uninterrupted run would train.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from virkit.data import DeviceLoader
from virkit.distributed import DistContext
from virkit.errors import VirkitError
from virkit.models import FORMAT, read_checkpoint
from virkit.runs import RunDir
from virkit.training.burnin import best_record, burnin_epoch
from virkit.training.config import TrainConfig
from virkit.training.methods import METHODS, StepOutput, method_step

__all__ = ["lr_at", "Progress", "EpochStats", "train_epoch", "save_epoch", "epoch_line"]


def lr_at(cfg: TrainConfig, epoch: int, step: int | None = None, steps: int | None = None) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps`` in ``epoch`` (1-based); without a
    step, the epoch's value (onecycle: the one at the middle of the epoch, as history.jsonl records).

    ``step`` schedule: lr * gamma^(number of milestones m with m < epoch), constant within an epoch.
    With milestones (75, 90): epochs 1-75 at lr, 76-90 at lr/10, 91+ at lr/100 (Sec. 5.1).
    ``onecycle``: at the training fraction u (midpoint of the step), lr * u / peak up to ``lr_peak``,
    then lr * (1 - u) / (1 - peak)."""
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if m < epoch)
    frac = 0.5 if step is None or not steps else (step + 0.5) / steps
    u = (epoch - 1 + frac) / cfg.epochs
    peak = cfg.lr_peak
    return cfg.lr * (u / peak if u <= peak else (1.0 - u) / (1.0 - peak))


def _epoch_seed(cfg: TrainConfig, epoch: int) -> int:
    return (cfg.seed * 1_000_003 + epoch * 7919) % (2**62)


@dataclass
class Progress:
    """Where a run stands: the last finished epoch, the best held-out PGD accuracy, the history."""

    epoch: int = 0
    best: float = -1.0
    history: list = field(default_factory=list)

    def add(self, record: dict) -> bool:
        """Append an epoch's record; True when it improves the best held-out PGD accuracy (always
        when there is no held-out PGD accuracy to compare)."""
        self.history.append(record)
        self.epoch = record["epoch"]
        rob = record["holdout_pgd_acc"]
        improved = rob > self.best if not math.isnan(rob) else True
        if improved and not math.isnan(rob):
            self.best = rob
        return improved


@dataclass
class EpochStats:
    """One epoch's statistics, accumulated on the device (no host synchronisation inside the epoch)."""

    loss_sum: torch.Tensor
    adv_correct: torch.Tensor
    w_sum: torch.Tensor
    w_cnt: torch.Tensor
    w_min: torch.Tensor
    w_max: torch.Tensor
    bad_step: torch.Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device) -> EpochStats:
        return cls(
            torch.zeros((), device=device, dtype=torch.float64),
            torch.zeros((), device=device, dtype=torch.int64),
            torch.zeros(num_classes, device=device, dtype=torch.float64),
            torch.zeros(num_classes, device=device, dtype=torch.float64),
            torch.full((), math.inf, device=device),
            torch.full((), -math.inf, device=device),
            torch.full((), -1, device=device, dtype=torch.int64),
        )

    def add(self, step: int, res: StepOutput, y: torch.Tensor, batch_reduction: str) -> None:
        finite = torch.isfinite(res.loss.detach())
        self.bad_step = torch.where((self.bad_step < 0) & ~finite, torch.tensor(step, device=y.device), self.bad_step)
        self.loss_sum += res.loss.detach().double() * (1 if batch_reduction == "sum" else y.shape[0])
        if res.logits_adv is not None:
            self.adv_correct += (res.logits_adv.argmax(1) == y).sum()
        w = res.weights.double()
        self.w_sum.index_add_(0, y, w)
        self.w_cnt.index_add_(0, y, torch.ones_like(w))
        self.w_min = torch.minimum(self.w_min, res.weights.min().float())
        self.w_max = torch.maximum(self.w_max, res.weights.max().float())
        self.seen += y.shape[0]

    def all_reduce(self, dctx: DistContext) -> None:
        """The epoch's statistics over the global batch (all ranks' shards)."""
        if dctx.enabled:
            dctx.all_reduce_(self.loss_sum, self.adv_correct, self.w_sum, self.w_cnt)
            dctx.all_reduce_(self.w_min, op="min")
            dctx.all_reduce_(self.w_max, op="max")
            self.seen = dctx.sum_int(self.seen)

    def record(self, cfg: TrainConfig, epoch: int, lr: float, holdout: tuple[float, float], seconds: float) -> dict:
        spec = METHODS[cfg.method]
        seen = max(self.seen, 1)
        return {
            "epoch": epoch,
            "lr": lr,
            "train_loss": float(self.loss_sum) / seen,
            "train_adv_acc": float(self.adv_correct) / seen if spec.family != "natural" else None,
            "holdout_nat_acc": holdout[0],
            "holdout_pgd_acc": holdout[1],
            "reweighting_active": bool(spec.reweighted and epoch >= cfg.reweight_start),
            "weight_sum_per_class": self.w_sum.tolist(),
            "weight_mean_per_class": (self.w_sum / self.w_cnt.clamp_min(1)).tolist(),
            "weight_min": float(self.w_min),
            "weight_mean": float(self.w_sum.sum() / self.w_cnt.sum().clamp_min(1)),
            "weight_max": float(self.w_max),
            "seconds": seconds,
            "images_per_s": self.seen / max(seconds, 1e-9),
        }


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DeviceLoader,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    dctx: DistContext,
    autocast: Callable[[], AbstractContextManager[Any]] | None,
    n_train: int,
    progress: bool,
) -> EpochStats:
    """One epoch of ``cfg.method``; stops early (all ranks together) at the first non-finite loss."""
    per_step = cfg.lr_schedule != "step"
    if not per_step:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)
    seed = _epoch_seed(cfg, epoch)
    torch.manual_seed(seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(dctx.rank_seed(seed + 2))  # attack starts: rank 0 draws the single-process stream
    model.train()
    stats = EpochStats.zeros(loader.split.num_classes, device)
    iterator = loader.epoch(seed)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(loader), desc=f"epoch {epoch}/{cfg.epochs}", leave=False)
    for step, (x, y, _idx) in enumerate(iterator):
        if cfg.channels_last and device.type in ("cuda", "cpu"):
            x = x.contiguous(memory_format=torch.channels_last)
        if per_step:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, epoch, step, len(loader))
        res = method_step(model, x, y, cfg, epoch, autocast=autocast, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        # distributed: scale the shard's loss so that DDP's gradient average is the global-batch gradient
        scale = dctx.loss_scale(x.shape[0], min(cfg.batch_size, n_train - step * cfg.batch_size), cfg.batch_reduction)
        (res.loss if scale == 1.0 else res.loss * scale).backward()
        optimizer.step()
        stats.add(step, res, y, cfg.batch_reduction)
        if device.type == "cpu" or step % 50 == 49:
            stats.bad_step = dctx.first_bad_step(stats.bad_step)  # agreed by all ranks: they stop together
            if int(stats.bad_step) >= 0:
                break
    stats.bad_step = dctx.first_bad_step(stats.bad_step)
    return stats


def save_epoch(
    run: RunDir,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    improved: bool,
    cfg_record: dict,
    meta: dict,
    dctx: DistContext,
) -> None:
    """last.pt (and best.pt when improved) and history.jsonl, by rank 0; every rank raises if it fails."""
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": progress.epoch,
        "best_metric": progress.best,
        "history": progress.history,
        "config": json.dumps(cfg_record),
        "data": meta,
    }
    error = None
    try:
        if dctx.is_main:
            run.save_checkpoint(state, "last")
            if improved:
                run.save_checkpoint({**state, "optimizer": {}}, "best")
            if progress.epoch == burnin_epoch(json.loads(state["config"])):
                # other runs with the same burn-in branch from here; best.pt as it stands now goes with
                # it, so that a branched run holds the best.pt an independent run would have
                best = (
                    read_checkpoint(run.checkpoint("best"), "best", map_location="cpu")
                    if run.checkpoint("best").is_file()
                    else None
                )
                run.save_checkpoint({**state, "best_checkpoint": best_record(best)}, "burnin")
            run.write_history(progress.history)
    except OSError as e:
        error = VirkitError(
            f"cannot write checkpoint in {run.path}: {e.strerror or e}; training stopped so that no "
            "epoch goes unsaved; free space or fix permissions, then --resume"
        )
    dctx.raise_if_main_failed(error)


def epoch_line(cfg: TrainConfig, r: dict) -> str:
    return (
        f"epoch {r['epoch']:3d}/{cfg.epochs} lr {r['lr']:.4g} loss {r['train_loss']:.4f} "
        f"holdout nat {r['holdout_nat_acc']:.3f} pgd{cfg.holdout_pgd_steps} {r['holdout_pgd_acc']:.3f} "
        f"w[{r['weight_min']:.3g},{r['weight_mean']:.3g},{r['weight_max']:.3g}] {r['images_per_s']:.0f} img/s"
    )
