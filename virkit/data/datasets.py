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
import io
import json
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from virkit.data.fetch import ensure_dataset, source_note
from virkit.errors import VirkitError, check_choice

__all__ = [
    "DATASETS",
    "Split",
    "load_dataset",
    "data_root",
    "dataset_names",
    "subset",
    "HOLDOUT_SEED",
    "holdout_subset",
    "test_subset",
    "validation_split",
    "subset_indices",
    "take",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STANDIN_ARCHIVE = "cifar10-jpeg.tar.gz"

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

    def to(self, device) -> Split:
        return Split(
            self.x.to(device), self.y.to(device), self.classes, self.name, self.source, self.mean, self.std, self.extra
        )

    def float_images(self, idx=None) -> torch.Tensor:
        """The (selected) inputs as float32 in [0, 1] (uint8 / 255), or the raw features."""
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def data_root(root: str | os.PathLike | None = None) -> Path:
    if root:
        return Path(root).expanduser()
    env = os.environ.get("VIRKIT_DATA")
    if env:
        return Path(env).expanduser()
    from virkit.io import user_cache_dir

    return user_cache_dir() / "data"


def _missing(name: str, root: Path, layout: str) -> VirkitError:
    return VirkitError(
        f"dataset {name!r} not found under {root} (from --data-root, else $VIRKIT_DATA, else ~/.cache/virkit/data); "
        f"expected {layout}; point --data-root (or VIRKIT_DATA) at a folder holding it"
    )


# ----------------------------------------------------------------------------------------------
# Safe pickle reading (CIFAR's python batches are pickles; never let them run code)
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise VirkitError(
            f"corrupt dataset file {path}: {type(e).__name__}: {e}; delete it and re-download (or rebuild it)"
        ) from None


def _cifar_batches(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fn in files:
        d = _load_pickle(folder / fn)
        d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
        if "data" not in d or label_key not in d:
            raise VirkitError(
                f"corrupt dataset file {folder / fn}: keys 'data'/{label_key!r} missing; re-download or rebuild it"
            )
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise VirkitError(
                f"corrupt dataset file {folder / fn}: images have shape {data.shape[1:]}, "
                "expected 3072 values (3x32x32)"
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _load_cifar10(root: Path, split: str) -> Split:
    folder = root / "cifar-10-batches-py"
    if folder.is_dir():
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise VirkitError(
                f"dataset 'cifar10' is incomplete: {folder} lacks {', '.join(missing)}; re-download it or rebuild it"
            )
        x, y = _cifar_batches(folder, files, "labels")
        return Split(
            torch.from_numpy(x),
            torch.from_numpy(y),
            list(CIFAR10_CLASSES),
            "cifar10",
            f"CIFAR-10 ({folder}{source_note(folder)})",
        )
    archive = root / STANDIN_ARCHIVE
    if archive.is_file():
        s = _load_imagefolder(archive, split)
        if s.classes != CIFAR10_CLASSES:
            raise VirkitError(f"{archive} does not hold the 10 CIFAR-10 class folders; found {s.classes[:12]}")
        s.name, s.source = "cifar10", f"CIFAR-10 (JPEG stand-in, {archive})"
        return _original_order(s, root / "cifar10-original-order.json", split)
    raise _missing("cifar10", root, f"{folder}/data_batch_1..5,test_batch (torchvision layout) or {archive}")


def _original_order(s: Split, order_file: Path, split: str) -> Split:
    """Reorder the stand-in so that index i is image i of the original CIFAR-10 files, when the
    label sequence ``cifar10-original-order.json`` lies beside the archive (else keep class order)."""
    if not order_file.is_file():
        return s
    try:
        labels = torch.tensor(json.loads(order_file.read_text())[split], dtype=torch.int64)
    except (OSError, ValueError, KeyError) as e:
        raise VirkitError(f"corrupt {order_file}: {e}; re-copy it or remove it") from None
    counts = torch.bincount(s.y, minlength=s.num_classes)
    if len(labels) != len(s) or not torch.equal(torch.bincount(labels, minlength=s.num_classes), counts):
        raise VirkitError(f"{order_file} does not match the archive's {split} split; re-copy both files")
    start = torch.cumsum(counts, 0) - counts
    rank = torch.zeros_like(labels)
    for c in range(s.num_classes):
        m = labels == c
        rank[m] = torch.arange(int(m.sum()))
    perm = start[labels] + rank
    return Split(s.x[perm], s.y[perm], s.classes, s.name, s.source + ", original order", s.mean, s.std, s.extra)


def _load_cifar100(root: Path, split: str) -> Split:
    folder = root / "cifar-100-python"
    if not (folder / split).is_file():
        raise _missing("cifar100", root, f"{folder}/train, test, meta (torchvision layout)")
    x, y = _cifar_batches(folder, [split], "fine_labels")
    meta = {(k.decode() if isinstance(k, bytes) else k): v for k, v in _load_pickle(folder / "meta").items()}
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta.get("fine_label_names", range(100))]
    return Split(
        torch.from_numpy(x),
        torch.from_numpy(y),
        [str(c) for c in classes],
        "cifar100",
        f"CIFAR-100 ({folder}{source_note(folder)})",
    )


def _load_svhn(root: Path, split: str) -> Split:
    path = root / f"{split}_32x32.mat"
    if not path.is_file():
        raise _missing("svhn", root, f"{root}/train_32x32.mat and test_32x32.mat (torchvision layout)")
    try:
        import scipy.io as sio
    except ImportError:  # pragma: no cover
        raise VirkitError("reading SVHN needs scipy; pip install scipy") from None
    try:
        mat = sio.loadmat(str(path))
    except Exception as e:
        raise VirkitError(f"corrupt dataset file {path}: {e}; re-download it") from None
    x = np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8)
    y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels digit 0 as 10
    return Split(
        torch.from_numpy(np.ascontiguousarray(x)),
        torch.from_numpy(y),
        [str(i) for i in range(10)],
        "svhn",
        f"SVHN ({root})",
    )


def _decode_images(blobs: list[tuple[str, bytes]], what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out, size = [], None
    for name, blob in blobs:
        try:
            img = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise VirkitError(f"corrupt image {name} in {what}: {e}; replace or remove it") from None
        if size is None:
            size = img.shape
        elif img.shape != size:
            raise VirkitError(
                f"image {name} in {what} has size {img.shape[1]}x{img.shape[0]}, the others "
                f"{size[1]}x{size[0]}; every image of a dataset must have the same size"
            )
        out.append(img.transpose(2, 0, 1))
    return np.stack(out)


_IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def _cache_path(src: Path, split: str) -> Path:
    st = src.stat()
    key = hashlib.sha1(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{split}|v1".encode()).hexdigest()[:16]
    return data_root(None) / "decoded" / f"{src.name}-{split}-{key}.pt"


def _load_imagefolder(root: Path, split: str) -> Split:
    """ImageFolder tree (``<root>/<split>/<class>/<image>``) or a .tar.gz of one. Decoded images are
    cached as a tensor file under the data cache, keyed by the source's path, size and mtime."""
    split_names = ("train",) if split == "train" else ("test", "val")
    if not root.exists():
        raise _missing("imagefolder", root, "a folder or .tar.gz with train/<class>/*.jpg and test/<class>/*.jpg")
    cache = _cache_path(root, split)
    if cache.is_file():
        try:
            d = torch.load(cache, weights_only=True)
            return Split(d["x"], d["y"], list(d["classes"]), "imagefolder", str(root))
        except Exception:
            pass
    entries: list[tuple[str, str, bytes]] = []  # (class, name, bytes)
    if root.is_file():
        try:
            with tarfile.open(root) as tar:
                for m in tar.getmembers():
                    parts = Path(m.name).parts
                    parts = parts[1:] if len(parts) == 4 else parts  # allow one top folder
                    if m.isfile() and len(parts) == 3 and parts[0] in split_names and m.name.lower().endswith(_IMG_EXT):
                        entries.append((parts[1], m.name, tar.extractfile(m).read()))
        except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
            raise VirkitError(f"corrupt archive {root}: {e}; re-copy it") from None
    else:
        base = next((root / s for s in split_names if (root / s).is_dir()), None)
        if base is None:
            raise _missing("imagefolder", root, f"{root}/{split_names[0]}/<class>/<image>")
        for cdir in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(cdir.iterdir()):
                if f.suffix.lower() in _IMG_EXT:
                    entries.append((cdir.name, str(f), f.read_bytes()))
    if not entries:
        raise VirkitError(
            f"no images for split {split!r} in {root}; expected {split_names[0]}/<class>/<image> "
            f"with extensions {', '.join(_IMG_EXT)}"
        )
    entries.sort(key=lambda e: (e[0], e[1]))
    classes = sorted({c for c, _, _ in entries})
    x = _decode_images([(n, b) for _, n, b in entries], str(root))
    y = np.array([classes.index(c) for c, _, _ in entries], dtype=np.int64)
    out = Split(torch.from_numpy(x), torch.from_numpy(y), classes, "imagefolder", str(root))
    try:
        from virkit.io import atomic_torch_save

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"x": out.x, "y": out.y, "classes": classes}, cache)
    except OSError:
        pass  # the cache is an optimization only
    return out


def zlib_error():
    import zlib

    return zlib.error


def _load_tiny_imagenet(root: Path, split: str) -> Split:
    base = root / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise _missing(
            "tiny-imagenet", root, f"{base}/wnids.txt, train/<wnid>/images/*.JPEG, val/images + val/val_annotations.txt"
        )
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    blobs, labels = [], []
    if split == "train":
        for i, w in enumerate(wnids):
            for f in sorted((base / "train" / w / "images").glob("*.JPEG")):
                blobs.append((str(f), f.read_bytes()))
                labels.append(i)
    else:
        ann = base / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise _missing("tiny-imagenet", root, f"{ann}")
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                f = base / "val" / "images" / parts[0]
                blobs.append((str(f), f.read_bytes()))
                labels.append(wnids.index(parts[1]))
    x = _decode_images(blobs, str(base))
    return Split(
        torch.from_numpy(x),
        torch.tensor(labels, dtype=torch.int64),
        wnids,
        "tiny-imagenet",
        f"Tiny-ImageNet ({base}{source_note(base)})",
    )


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
        s = _load_imagefolder(r, split)
    else:
        if download is not False:
            ensure_dataset(name, r)  # fetched on first use, with a notice (virkit.data.fetch)
        s = {
            "cifar10": _load_cifar10,
            "cifar100": _load_cifar100,
            "svhn": _load_svhn,
            "tiny-imagenet": _load_tiny_imagenet,
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


def take(split: Split, idx: torch.Tensor, **extra) -> Split:
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
