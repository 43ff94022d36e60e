"""Checkpoints: what ``last.pt`` / ``best.pt`` hold, and loading them safely.

A checkpoint is a plain dict of tensors, numbers, strings and lists (loadable with
``torch.load(weights_only=True)``): ``format``, ``model`` (state dict), ``optimizer``, ``epoch``
(last finished, 1-based), ``best_metric``, ``history`` (list of per-epoch dicts), ``config`` (the
resolved TrainConfig as a JSON string), ``data`` (classes, mean, std, image shape).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from virkit.errors import VirkitError
from virkit.io import safe_torch_load
from virkit.models.registry import build_model

__all__ = ["FORMAT", "load_checkpoint", "read_checkpoint", "resolve_checkpoint_path", "build_model_from_meta"]

FORMAT = "virkit-checkpoint-v1"


def resolve_checkpoint_path(path: str | Path, which: str = "last") -> Path:
    """A run directory resolves to its ``which``.pt (``last`` by default, as the trainer's final
    evaluation and the CLI; the other one if it is missing); a file is returned as is."""
    from virkit.runs import RunDir

    p = Path(path)
    if p.is_dir():
        return RunDir(p).existing_checkpoint(which)
    if not p.exists():
        raise VirkitError(f"checkpoint {p} does not exist; pass a run directory or a .pt file written by virkit")
    return p


def read_checkpoint(path: str | Path, which: str = "last", map_location: torch.device | str | None = "cpu") -> dict:
    p = resolve_checkpoint_path(path, which)
    ck = safe_torch_load(p, map_location=map_location)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT or "model" not in ck:
        raise VirkitError(
            f"{p} is not a virkit checkpoint (no '{FORMAT}' marker); convert it or use one written by 'virkit train'"
        )
    return ck


def build_model_from_meta(cfg: dict, data_meta: dict) -> nn.Module:
    mean = data_meta.get("mean") if cfg.get("normalize", "dataset") == "dataset" else None
    std = data_meta.get("std") if cfg.get("normalize", "dataset") == "dataset" else None
    shape = data_meta.get("shape", [3, 32, 32])
    return build_model(
        cfg["model"],
        len(data_meta["classes"]),
        mean,
        std,
        in_channels=shape[0],
        image_size=shape[-1] if len(shape) == 3 else 1,
    )


def load_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    which: str = "last",
    expect_model: str | None = None,
    expect_num_classes: int | None = None,
) -> tuple[nn.Module, dict]:
    """Load a model from a run directory or ``.pt`` file; returns ``(model in eval mode, config dict)``.

    Raises :class:`VirkitError` if the file is not a virkit checkpoint, carries pickled code, or does
    not match ``expect_model`` / ``expect_num_classes``.
    """
    ck = read_checkpoint(path, which)
    meta = ck["data"]
    cfg = {**json.loads(ck["config"]), "data": meta}  # what the checkpoint says about its data, always
    if expect_model is not None and cfg["model"] != expect_model:
        raise VirkitError(
            f"checkpoint {path} holds a {cfg['model']!r} model, not {expect_model!r}; pass the matching "
            "--model or another checkpoint"
        )
    if expect_num_classes is not None and len(meta["classes"]) != expect_num_classes:
        raise VirkitError(
            f"checkpoint {path} has {len(meta['classes'])} classes but the dataset has "
            f"{expect_num_classes}; evaluate it on the dataset it was trained on"
        )
    model = build_model_from_meta(cfg, meta)
    try:
        model.load_state_dict(ck["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise VirkitError(
            f"checkpoint {path} does not match the {cfg['model']!r} architecture ({first[:160]}); "
            "it was written by another model or version"
        ) from None
    return model.to(device).eval(), cfg
