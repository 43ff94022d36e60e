"""Shared burn-in: until reweighting starts a reweighted method trains exactly like its base pipeline,
so a run can start from another run's state after epoch ``reweight_start - 1`` (``burnin.pt``).

:func:`virkit.training.config.burnin_key` says which runs train those epochs identically; this module finds
a parent (:func:`find_burnin_parent`, used by sweeps and notebooks) and reads and checks its state
(:func:`branch_state`, used by :func:`virkit.training.trainer.train` with ``branch_from`` / ``--from``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from virkit.errors import VirkitError
from virkit.models import read_checkpoint
from virkit.runs import RunDir
from virkit.training.config import TrainConfig, burnin_key

if TYPE_CHECKING:
    import torch

__all__ = ["burnin_epoch", "branch_state", "find_burnin_parent"]


def burnin_epoch(cfg: dict | TrainConfig) -> int:
    """The last epoch before reweighting can start: where ``burnin.pt`` is written."""
    start = cfg["reweight_start"] if isinstance(cfg, dict) else cfg.reweight_start
    return int(start) - 1


def branch_state(
    cfg: TrainConfig, parent: str | os.PathLike, device: str | torch.device, log: Callable[[str], None]
) -> tuple[dict, dict]:
    """The parent's ``burnin.pt`` (read on ``device``) and the record config.json keeps of it, after
    checking that the parent trained epochs 1 .. ``reweight_start - 1`` exactly as ``cfg`` would."""
    spec = str(parent)
    path, _, at = spec.partition("@")
    prun = RunDir(path)
    pcfg = prun.read_config()
    if pcfg is None:
        raise VirkitError(f"--from {spec}: {path} is not a virkit run directory (no config.json)")
    ck_path = prun.checkpoint("burnin")
    if not ck_path.is_file():
        raise VirkitError(
            f"--from {spec}: {path} has no burnin.pt (it has not finished epoch "
            f"{burnin_epoch(pcfg)} yet, or was trained before virkit wrote one)"
        )
    ck = read_checkpoint(ck_path, "burnin", map_location=device)
    epoch = int(ck["epoch"])
    if at and int(at) != epoch:
        raise VirkitError(f"--from {spec}: {path} keeps its burn-in state at epoch {epoch} only; use --from {path}")
    mine = burnin_key(cfg)
    theirs = burnin_key(TrainConfig.from_dict({k: v for k, v in pcfg.items() if k in TrainConfig.__dataclass_fields__}))
    if mine != theirs:
        raise VirkitError(
            f"--from {spec}: its burn-in differs from this run's (pipeline, seed, data, model or "
            f"schedule: key {theirs} vs {mine}); train from scratch or branch from a matching run"
        )
    if epoch > cfg.reweight_start - 1:
        raise VirkitError(
            f"--from {spec}: its burn-in ends at epoch {epoch}, after this run's reweighting starts "
            f"(epoch {cfg.reweight_start})"
        )
    if "best_checkpoint" not in ck:  # a burnin.pt written before it carried best.pt's state
        ck["best_checkpoint"] = _parent_best_until(prun, epoch, log)
    log(f"branching from {path} after epoch {epoch} (burn-in key {mine})")
    return ck, {
        "path": str(Path(path).resolve()),
        "config_hash": pcfg.get("config_hash"),
        "epoch": epoch,
        "burnin_key": mine,
    }


def best_record(best: dict | None) -> dict | None:
    """What ``burnin.pt`` keeps of ``best.pt`` (its model state, epoch, metric and history), or None."""
    if best is None:
        return None
    return {k: best[k] for k in ("model", "epoch", "best_metric", "history")}


def _parent_best_until(prun: RunDir, epoch: int, log) -> dict | None:
    """The parent's best.pt if it still holds an epoch of the burn-in (then it is the best state as of
    the burn-in epoch too), else None."""
    path = prun.checkpoint("best")
    if not path.is_file():
        return None
    best = read_checkpoint(path, "best", map_location="cpu")
    if int(best["epoch"]) <= epoch:
        return best_record(best)
    log(
        f"{prun.path}'s best.pt is from epoch {best['epoch']}, after its burn-in: the best state as of epoch "
        f"{epoch} is not kept, so this run's best.pt starts with its own epochs"
    )
    return None


def find_burnin_parent(
    cfg: TrainConfig, root: str | os.PathLike, exclude: str | os.PathLike | None = None
) -> Path | None:
    """A run directory under ``root`` (one level) whose ``burnin.pt`` ``cfg`` can branch from (same
    :func:`virkit.training.config.burnin_key`, burn-in ending before ``cfg``'s reweighting starts), else None.
    Sweeps and notebooks call it before training a run from scratch."""
    root = Path(root)
    if not root.is_dir() or cfg.reweight_start - 1 < 1:
        return None
    key, skip = burnin_key(cfg), Path(exclude).resolve() if exclude else None
    fields = TrainConfig.__dataclass_fields__
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        run = RunDir(d)
        pcfg = run.read_config()
        if pcfg is None or not run.checkpoint("burnin").is_file() or (skip and d.resolve() == skip):
            continue
        try:
            theirs = burnin_key(TrainConfig.from_dict({k: v for k, v in pcfg.items() if k in fields}))
        except (VirkitError, TypeError, ValueError):
            continue
        if theirs == key and burnin_epoch(pcfg) <= cfg.reweight_start - 1:
            return d
    return None


def relative_evals(run: RunDir) -> list[Path]:
    """The evaluation files of a branched run's relatives: its parent and the parent's other
    branches under the same folder (empty for a run trained from scratch). A branched run whose
    best.pt is a burn-in epoch has weights a relative's evaluation may already cover
    (:class:`virkit.evaluation.EvalSettings`'s ``reuse_from``: reused only on equal fingerprints)."""
    parent = ((run.read_config() or {}).get("parent") or {}).get("path")
    if not parent or not Path(parent).is_dir():
        return []
    here = run.path.resolve()
    family = [Path(parent)]
    for d in sorted(p for p in Path(parent).parent.iterdir() if p.is_dir()):
        if d.resolve() in (here, Path(parent).resolve()):
            continue
        cfg = RunDir(d).read_config() or {}
        if ((cfg.get("parent") or {}).get("path")) == parent:
            family.append(d)
    files = []
    for d in family:
        r = RunDir(d)
        files += [f for f in (r.eval_file, r.eval_file_for("best"), r.eval_file_for("last")) if f.is_file()]
    return files
