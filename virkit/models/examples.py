"""Small models "from outside virkit", as ``virkit evaluate --model virkit.models.examples:NAME`` sees them.

Each function takes no argument and returns an ``nn.Module`` on [0, 1] images that returns logits,
which is all ``module:callable`` asks of a model. They have no normalization inside: pass
``--normalize MEAN,STD`` when their weights were trained on normalized inputs (as a virkit run's,
:func:`virkit.evaluation.export.run_weights` writes them with the run's mean and std). Used by notebook 09
and the tests.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["small_cnn", "small_cnn100", "resnet18", "tiny_cnn"]


def small_cnn() -> nn.Module:
    """virkit's ``small-cnn`` for 10 classes (the architecture of the demo preset), without normalization."""
    from virkit.models.small import SmallCNN

    return SmallCNN(10, 3)


def small_cnn100() -> nn.Module:
    """The same for 100 classes (CIFAR-100)."""
    from virkit.models.small import SmallCNN

    return SmallCNN(100, 3)


def resnet18() -> nn.Module:
    """virkit's ``resnet18`` (CIFAR variant) for 10 classes, without normalization (the paper preset's model)."""
    from virkit.models.resnet import ResNet18

    return ResNet18(10, 3)


class _Tiny(nn.Module):
    def __init__(self, k: int = 10):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, k),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


def tiny_cnn() -> nn.Module:
    """A two-convolution CNN (about 3,000 parameters) for tests: milliseconds per attack step on a CPU."""
    return _Tiny(10)
