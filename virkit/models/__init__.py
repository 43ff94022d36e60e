"""Models: the architectures (:mod:`.registry`; every model takes images in [0, 1], normalization
lives inside it) and the checkpoint format that stores them (:mod:`.checkpoint`).

>>> from virkit.models import build_model
>>> net = build_model("resnet18", num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
"""

from virkit.models.checkpoint import (
    FORMAT,
    build_model_from_meta,
    load_checkpoint,
    read_checkpoint,
    resolve_checkpoint_path,
)
from virkit.models.registry import MODELS, Normalized, build_model, model_names

__all__ = [
    "MODELS",
    "build_model",
    "Normalized",
    "model_names",
    "FORMAT",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "build_model_from_meta",
]
