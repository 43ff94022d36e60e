"""Batches from a :class:`~virkit.data.split.Split` that already lives on the device, with crop and flip
done there (airbench-style: no worker processes, no PIL in the loop)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from virkit.errors import VirkitError, check_choice

if TYPE_CHECKING:
    from virkit.data.split import Split

__all__ = ["DeviceLoader", "random_crop_flip", "training_loader", "AUGMENTATIONS"]


class DeviceLoader:
    """Iterates over a :class:`Split` already on the device in batches ``(x, y, index)``.

    ``x`` is float32 in [0, 1]. With ``augment``: random crop with zero padding ``pad`` and a
    horizontal flip with probability 1/2, drawn per example from ``generator`` on the device.
    ``index`` holds positions in the split, so per-example state (weights, GAIRAT's kappa) can be
    scattered back. Shuffling and augmentation draw only from the given generators, so an epoch
    is reproducible from its seed alone (this is what makes resume exact).

    Sharded (``world_size > 1``, one loader per process of a distributed run): ``batch_size`` is
    the global batch; every rank draws the same order and the same augmentation for the whole
    global batch and yields its contiguous slice (:func:`virkit.distributed.shard_bounds`), so the
    ranks' slices of a step together are exactly the unsharded batch. A last partial batch with
    fewer examples than ranks is skipped (by every rank).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        pad: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.split, self.batch_size, self.shuffle, self.augment = split, int(batch_size), shuffle, augment
        self.drop_last, self.pad = drop_last, pad
        self.images = split.x.dtype == torch.uint8 and split.x.ndim == 4
        self.rank, self.world_size = int(rank), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise VirkitError(f"rank={rank} must lie in [0, world_size={world_size})")

    def __len__(self) -> int:
        n = len(self.split)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and not self.drop_last and rest >= self.world_size else 0)

    def epoch(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of one epoch whose order and augmentation are a function of ``seed`` only."""
        device = self.split.x.device
        n = len(self.split)
        g_cpu = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g_cpu).to(device) if self.shuffle else torch.arange(n, device=device)
        g_dev = torch.Generator(device=device)
        g_dev.manual_seed(seed + 1)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.split.x[idx]
            if self.images:
                x = x.float().div_(255.0)
                if self.augment:
                    x = random_crop_flip(x, self.pad, g_dev)
            else:
                x = x.float()
            if self.world_size > 1:
                from virkit.distributed import shard_bounds

                lo, hi = shard_bounds(len(idx), self.rank, self.world_size)
                x, idx = x[lo:hi], idx[lo:hi]
            yield x, self.split.y[idx], idx

    def __iter__(self):
        return self.epoch(0)


#: training augmentations (``TrainConfig.augment``): name -> (augment, zero padding of the crop)
AUGMENTATIONS = {
    "crop-flip": (True, 4),  # random 32x32 crop of the image padded by 4, and a flip: every
    # baseline's code (TRADES, MART, GAIRAT, MAIL) trains with it
    "flip": (True, 0),  # the horizontal flip alone (a crop of the unpadded image)
    "none": (False, 0),
}


def training_loader(
    split: Split, batch_size: int, augment: str = "crop-flip", rank: int = 0, world_size: int = 1
) -> DeviceLoader:
    """The shuffled training loader of a run, with the augmentation ``augment`` names
    (:data:`AUGMENTATIONS`; images only: feature splits are never augmented)."""
    on, pad = AUGMENTATIONS[check_choice("augment", augment, AUGMENTATIONS)]
    return DeviceLoader(
        split,
        batch_size,
        shuffle=True,
        augment=on and split.x.dtype == torch.uint8,
        pad=pad,
        drop_last=False,
        rank=rank,
        world_size=world_size,
    )


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-example random crop (zero padding ``pad``, as torchvision's RandomCrop(padding=pad)) and
    horizontal flip with probability 1/2, done with one gather on the device."""
    b, c, h, w = x.shape
    dev = x.device
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    rows = oy.view(b, 1) + torch.arange(h, device=dev).view(1, h)  # b x h
    cols = torch.arange(w, device=dev).view(1, w).expand(b, w)
    cols = torch.where(flip.view(b, 1), w - 1 - cols, cols) + ox.view(b, 1)  # b x w
    xp = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))
    return xp.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))
