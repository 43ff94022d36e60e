"""Datasets as whole uint8 tensors on the training device, with augmentation there.

Every split is loaded once into a :class:`Split` (``x``: uint8 N x C x H x W, ``y``: int64) and
moved to the device; :class:`DeviceLoader` then yields ``(x, y, index)`` batches with ``x`` a float
tensor in [0, 1], random crop (zero padding 4) and horizontal flip applied on the device, per
batch, from a seeded generator (airbench-style: no worker processes, no PIL in the loop).

Supported names (:data:`DATASETS`): ``cifar10``, ``cifar100``, ``svhn``, ``tiny-imagenet`` in
torchvision's on-disk layouts, ``imagefolder`` (any ``train/<class>/*`` + ``test/<class>/*`` tree
or a ``.tar.gz`` of one, given as ``--data-root``) and ``gaussian-mixture`` (synthetic, Appendix A).

The root comes from ``--data-root``, else ``$VIRKIT_DATA``, else ``~/.cache/virkit/data``. A missing
CIFAR-10, CIFAR-100, SVHN or Tiny-ImageNet is fetched there on first use from its official source,
checksum verified (:mod:`virkit.data.fetch`: ``VIRKIT_DATA_MIRROR``, ``VIRKIT_OFFLINE``).
For ``cifar10`` the root may hold either torchvision's ``cifar-10-batches-py`` or the JPEG
stand-in archive ``cifar10-jpeg.tar.gz``; runs record which one was used, and results on the
stand-in are reported as "CIFAR-10 (JPEG stand-in)".
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from virkit.data.fetch import ensure_dataset
from virkit.data.formats import (
    data_root,
    load_cifar10,
    load_cifar100,
    load_imagefolder,
    load_svhn,
    load_tiny_imagenet,
)
from virkit.data.split import Split
from virkit.errors import VirkitError, check_choice

__all__ = [
    "DATASETS",
    "load_dataset",
    "dataset_names",
    "subset",
    "HOLDOUT_SEED",
    "holdout_subset",
    "test_subset",
    "validation_split",
    "subset_indices",
    "take",
]

# name -> (num_classes, image size, description)
DATASETS: dict[str, tuple[int, int, str]] = {
    "cifar10": (10, 32, "CIFAR-10 (cifar-10-batches-py, or the JPEG stand-in cifar10-jpeg.tar.gz)"),
    "cifar100": (100, 32, "CIFAR-100 (cifar-100-python)"),
    "svhn": (10, 32, "SVHN (train_32x32.mat, test_32x32.mat; needs scipy)"),
    "tiny-imagenet": (200, 64, "Tiny-ImageNet (tiny-imagenet-200/)"),
    "imagefolder": (0, 0, "an ImageFolder tree train/<class>/*, test/<class>/* or a .tar.gz of one (--data-root)"),
    "gaussian-mixture": (2, 0, "synthetic two-class Gaussian mixture of Appendix A (d=100 features)"),
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def gaussian_mixture(
    n: int, d: int = 100, eta: float = 0.1, sigma: float = 1.0, K: float = 2.0, seed: int = 0
) -> Split:
    """Appendix A's mixture: y uniform on {0 (the paper's -1), 1 (+1)}; x ~ N(-mu, sigma^2 I) for
    class 0 and N(mu, K^2 sigma^2 I) for class 1, mu = (eta, ..., eta) in R^d. Features are float32
    (not images): no box constraint applies to them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    z = torch.randn(n, d, generator=g)
    scale = torch.where(y == 1, K * sigma, sigma).view(-1, 1)
    mu = torch.full((d,), eta)
    x = torch.where((y == 1).view(-1, 1), mu, -mu) + scale * z
    return Split(
        x.float(),
        y.long(),
        ["-1 (low variance)", "+1 (high variance)"],
        "gaussian-mixture",
        f"synthetic N(+-{eta}, sigma={sigma}, K={K}), d={d}, seed={seed}",
        extra={"d": d, "eta": eta, "sigma": sigma, "K": K},
    )


def _channel_stats(x: torch.Tensor) -> tuple[tuple, tuple]:
    xf = x[: min(len(x), 20000)].float() / 255.0
    return tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).tolist())


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool | None = None,
    gmm: dict | None = None,
) -> Split:
    """Load one split into memory (CPU). A missing CIFAR-10, CIFAR-100, SVHN or Tiny-ImageNet is
    fetched first from its official source (:mod:`virkit.data.fetch`; ``download=False`` or
    ``VIRKIT_OFFLINE=1`` turn that off). Raises :class:`VirkitError` with the path, the variable and
    the expected layout when the data is missing, and a clear error when a file is corrupt.

    The split carries ``mean``/``std`` of its *training* split, for the model's normalization layer.
    """
    check_choice("dataset", name, DATASETS)
    check_choice("split", split, ["train", "test"])
    r = data_root(root)
    if name == "gaussian-mixture":
        opts = dict(gmm or {})
        n = opts.pop("n_train" if split == "train" else "n_test", 10000 if split == "train" else 2000)
        seed = opts.pop("seed", 0) + (0 if split == "train" else 1)
        opts.pop("n_test" if split == "train" else "n_train", None)
        return gaussian_mixture(n, seed=seed, **opts)
    if name == "imagefolder":
        if root is None and not os.environ.get("VIRKIT_DATA"):
            raise VirkitError(
                "dataset 'imagefolder' needs --data-root (or $VIRKIT_DATA) pointing at a folder or "
                ".tar.gz with train/<class>/* and test/<class>/*"
            )
        s = load_imagefolder(r, split)
    else:
        if download is not False:
            ensure_dataset(name, r)  # fetched on first use, with a notice (virkit.data.fetch)
        s = {
            "cifar10": load_cifar10,
            "cifar100": load_cifar100,
            "svhn": load_svhn,
            "tiny-imagenet": load_tiny_imagenet,
        }[name](r, split)
    if s.x.ndim != 4 or s.x.shape[1] != 3:
        raise VirkitError(f"dataset {name!r} at {r} has images of shape {tuple(s.x.shape[1:])}, expected 3xHxW")
    expected = DATASETS[name][1]
    if expected and s.x.shape[-1] != expected:
        raise VirkitError(
            f"dataset {name!r} at {r} has {s.x.shape[-1]}x{s.x.shape[-2]} images, expected "
            f"{expected}x{expected}; is this the right folder?"
        )
    train = s if split == "train" else None
    if train is None:
        stats_cache = data_root(None) / "decoded" / "stats"
        key = hashlib.sha1(f"{name}|{r.resolve()}".encode()).hexdigest()[:16]
        f = stats_cache / f"{key}.pt"
        if f.is_file():
            st = torch.load(f, weights_only=True)
            s.mean, s.std = tuple(st["mean"]), tuple(st["std"])
            return s
        train = load_dataset(name, root, "train", download)
        try:
            from virkit.io import atomic_torch_save

            f.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"mean": list(train.mean), "std": list(train.std)}, f)
        except OSError:
            pass
        s.mean, s.std = train.mean, train.std
        return s
    s.mean, s.std = _channel_stats(s.x)
    return s


def subset_indices(split: Split, n: int, seed: int, stratified: bool = True) -> torch.Tensor:
    """The sorted positions of a seeded subset of ``n`` examples (class-balanced when ``stratified``:
    round-robin over the classes in a seeded permutation)."""
    if n <= 0:
        raise VirkitError(f"subset size must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    if stratified:
        perm = torch.randperm(len(split), generator=g)
        y = split.y[perm]
        k = split.num_classes
        # round-robin over classes in the permuted order: take the first ceil(n/k) of each class
        rank = torch.zeros_like(y)
        for c in range(k):
            m = y == c
            rank[m] = torch.arange(int(m.sum()))
        order = torch.argsort(rank * k + y, stable=True)
        idx = perm[order[:n]]
    else:
        idx = torch.randperm(len(split), generator=g)[:n]
    return torch.sort(idx).values


def take(split: Split, idx: torch.Tensor, **extra: Any) -> Split:
    """The examples at positions ``idx`` (in that order), ``extra`` added to the split's record."""
    return Split(
        split.x[idx],
        split.y[idx],
        split.classes,
        split.name,
        split.source,
        split.mean,
        split.std,
        {**split.extra, **extra},
    )


def subset(split: Split, n: int | None, seed: int, stratified: bool = True) -> Split:
    """A seeded subset of ``n`` examples (class-balanced when ``stratified``), in a fixed order."""
    if n is None or n >= len(split):
        return split
    return take(split, subset_indices(split, n, seed, stratified), subset_indices_seed=seed)


# ------------------------------------------------------------------------------------------------
# The seeded draws every module shares (the trainer, evaluate, notebooks): one owner, here.
# ------------------------------------------------------------------------------------------------
#: fixed: every run of a dataset is selected/monitored on the same held-out images, and the same
#: seed (+1) draws the test subset of the final evaluation, so ``virkit evaluate`` extends a run's
#: eval.json instead of redoing it on other images
HOLDOUT_SEED = 20240101


def holdout_subset(test: Split, n: int) -> Split:
    """``n`` held-out test images (a seeded class-balanced draw): what runs with
    ``holdout_from='test'`` monitor every epoch (virkit before the validation split)."""
    return subset(test, min(n, len(test)), seed=HOLDOUT_SEED)


def validation_split(train: Split, n: int) -> tuple[Split, Split, dict]:
    """Carve a seeded, class-balanced validation split of ``n`` images out of the training split:
    returns ``(rest, validation, record)``; the trainer trains on ``rest`` and picks ``best.pt`` on
    ``validation``, so no test image selects a checkpoint. The draw is fixed per dataset
    (:data:`HOLDOUT_SEED`), so every run of a dataset is monitored on the same images; ``record``
    (size, seed, SHA-1 of the indices) goes into config.json."""
    import hashlib

    n = min(int(n), len(train) - 1)
    idx = subset_indices(train, n, seed=HOLDOUT_SEED)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[idx] = False
    record = {
        "from": "train",
        "size": n,
        "seed": HOLDOUT_SEED,
        "indices_sha1": hashlib.sha1(idx.numpy().astype("int64").tobytes()).hexdigest()[:16],
    }
    return take(train, keep.nonzero().squeeze(1)), take(train, idx, validation=True), record


def test_subset(test: Split, n: int | None) -> Split:
    """The first ``n`` of the seeded class-balanced draw of the test split that final evaluations
    use (all of it for ``None``); the same ``n`` always gives the same images."""
    return subset(test, n, seed=HOLDOUT_SEED + 1)
