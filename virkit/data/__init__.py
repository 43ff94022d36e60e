"""The data layer: datasets as tensors on the device (:mod:`.datasets`; a :class:`Split` each,
:mod:`.split`; read from their on-disk formats by :mod:`.formats`), batches ``(x, y, index)``
with on-device augmentation (:mod:`.loader`) and the official archives fetched on first use
(:mod:`.fetch`). Images are float32 in [0, 1]; normalization lives in the model."""

from virkit.data.datasets import (
    DATASETS,
    HOLDOUT_SEED,
    dataset_names,
    holdout_subset,
    load_dataset,
    subset,
    subset_indices,
    take,
    test_subset,
    validation_split,
)
from virkit.data.fetch import (
    FETCHABLE,
    archives,
    ensure_dataset,
    fetch_dataset,
    is_present,
    mirror_url,
    offline,
    source_note,
)
from virkit.data.formats import data_root
from virkit.data.loader import AUGMENTATIONS, DeviceLoader, random_crop_flip, training_loader
from virkit.data.split import Split

__all__ = [
    "DATASETS",
    "HOLDOUT_SEED",
    "Split",
    "data_root",
    "dataset_names",
    "holdout_subset",
    "load_dataset",
    "subset",
    "subset_indices",
    "take",
    "test_subset",
    "validation_split",
    "FETCHABLE",
    "archives",
    "ensure_dataset",
    "fetch_dataset",
    "is_present",
    "mirror_url",
    "offline",
    "source_note",
    "AUGMENTATIONS",
    "DeviceLoader",
    "random_crop_flip",
    "training_loader",
]
