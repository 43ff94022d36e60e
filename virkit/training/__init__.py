"""The training layer: a run's configuration and presets (:mod:`.config`), one training step per
method (:mod:`.methods`; the same step as a drop-in loss in :mod:`.losses`), the precision and
layout chosen by a timed calibration (:mod:`.speed`), shared burn-in epochs (:mod:`.burnin`) and
the training loop with its epochs and its final evaluation (:mod:`.trainer`, :mod:`.epoch`,
:mod:`.final`), and :func:`ensure_run` (train, resume or branch a run, then add the attacks asked
for; :mod:`.ensure`)."""

from __future__ import annotations

from virkit.training.burnin import find_burnin_parent
from virkit.training.config import PRESETS, TrainConfig, burnin_key, config_hash, preset_names, resolve_config
from virkit.training.ensure import ensure_run
from virkit.training.final import evaluate_checkpoints
from virkit.training.losses import LossResult, MethodLoss, method_loss
from virkit.training.methods import METHODS, compute_step, method_names, method_step
from virkit.training.speed import StepSpec, cache_file, cached_calibrations, calibration_for, device_label
from virkit.training.trainer import train

__all__ = [
    "TrainConfig",
    "PRESETS",
    "resolve_config",
    "preset_names",
    "config_hash",
    "METHODS",
    "method_names",
    "method_step",
    "compute_step",
    "method_loss",
    "MethodLoss",
    "LossResult",
    "train",
    "evaluate_checkpoints",
    "ensure_run",
    "burnin_key",
    "find_burnin_parent",
    "StepSpec",
    "calibration_for",
    "cached_calibrations",
    "cache_file",
    "device_label",
]
