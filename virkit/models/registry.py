"""The model registry. Every model takes images in [0, 1]; normalization lives inside the model.

>>> from virkit.models import build_model
>>> net = build_model("resnet18", num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from virkit.errors import check_choice
from virkit.models.preact_resnet import PreActResNet18
from virkit.models.resnet import ResNet18
from virkit.models.small import LinearModel, SmallCNN
from virkit.models.wideresnet import WideResNet

__all__ = ["MODELS", "build_model", "Normalized", "model_names"]


class Normalized(nn.Module):
    """Wraps a network: ``net((x - mean) / std)``. Inputs stay in [0, 1] outside the model."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.net = net
        if mean is None or std is None:
            self.register_buffer("mean", torch.zeros(0), persistent=False)
            self.register_buffer("std", torch.zeros(0), persistent=False)
        else:
            shape = (1, len(mean), 1, 1)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.numel():
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.net(x)


# name -> (constructor(num_classes, in_channels, image_size), one-line description)
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "preact-resnet18": (lambda k, c, s: PreActResNet18(k, c), "PreActResNet-18 (He et al. 2016b), 11.2M params"),
    "resnet18": (lambda k, c, s: ResNet18(k, c), "ResNet-18, CIFAR variant (3x3 stem, no max-pool), 11.2M params"),
    "wrn-34-10": (
        lambda k, c, s: WideResNet(34, 10, k, c),
        "WideResNet-34-10 (Zagoruyko & Komodakis 2016), 46.2M params",
    ),
    "wrn-28-10": (lambda k, c, s: WideResNet(28, 10, k, c), "WideResNet-28-10, 36.5M params"),
    "small-cnn": (lambda k, c, s: SmallCNN(k, c), "4-conv CNN with BatchNorm for CPU presets, 0.39M params"),
    "linear": (lambda k, c, s: LinearModel(k, c, s), "linear classifier on flattened inputs (Gaussian-mixture theory)"),
}


def model_names() -> list[str]:
    return list(MODELS)


def build_model(
    name: str,
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    in_channels: int = 3,
    image_size: int = 32,
) -> nn.Module:
    """Build a registered model wrapped in :class:`Normalized`.

    ``mean``/``std`` are per-channel statistics of the training data (``None``: no normalization).
    Unknown names raise :class:`virkit.errors.VirkitError` listing the valid ones.
    """
    check_choice("model", name, MODELS)
    ctor, _ = MODELS[name]
    net = ctor(num_classes, in_channels, image_size)
    if name == "linear":
        mean = std = None
    return Normalized(net, mean, std)
