"""virkit: adversarial training with vulnerability-aware instance reweighting.

Public API (data flows one way: dataset -> model -> attack -> reweighting -> loss -> trainer ->
evaluation -> report/figures -> notebooks)::

    from virkit import resolve_config, train, load_checkpoint
    cfg = resolve_config("quick", method="vir-at", seed=0)
    run_dir = train(cfg, "runs/quick-vir-at")
    model, config = load_checkpoint(run_dir)

Any method as a loss in your own loop: ``virkit.method_loss("vir-at")`` (:mod:`virkit.training.losses`).
"""

from __future__ import annotations

from virkit.environment import __version__
from virkit.errors import VirkitError


def __getattr__(name):  # lazy: importing virkit stays cheap
    if name in ("resolve_config", "TrainConfig", "PRESETS"):
        from virkit.training import config

        return getattr(config, name)
    if name == "train":
        from virkit.training import train

        return train
    if name == "load_checkpoint":
        from virkit.models import load_checkpoint

        return load_checkpoint
    if name == "load_dataset":
        from virkit.data import load_dataset

        return load_dataset
    if name == "method_loss":
        from virkit.training import method_loss

        return method_loss
    if name == "build_model":
        from virkit.models import build_model

        return build_model
    raise AttributeError(f"module 'virkit' has no attribute {name!r}")


__all__ = [
    "VirkitError",
    "TrainConfig",
    "PRESETS",
    "resolve_config",
    "train",
    "load_checkpoint",
    "load_dataset",
    "build_model",
    "method_loss",
    "__version__",
]
