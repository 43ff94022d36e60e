"""One split of a dataset in memory: :class:`Split`, what the readers of each on-disk format
(:mod:`.formats`) return, the seeded subsets (:mod:`.datasets`) select from and the loader
(:mod:`.loader`) batches on the device."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Split"]


@dataclass
class Split:
    """One split of a dataset. ``x`` is uint8 (images) or float32 (feature vectors)."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str = ""
    source: str = ""
    mean: tuple | None = None
    std: tuple | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> Split:
        return Split(
            self.x.to(device), self.y.to(device), self.classes, self.name, self.source, self.mean, self.std, self.extra
        )

    def float_images(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The (selected) inputs as float32 in [0, 1] (uint8 / 255), or the raw features."""
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
