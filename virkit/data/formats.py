"""Datasets on disk: where they live (:func:`data_root`: ``--data-root``, else ``$VIRKIT_DATA``,
else ``~/.cache/virkit/data``) and one reader per on-disk layout, each returning a :class:`Split`
of uint8 images: CIFAR-10 (torchvision's python batches or the JPEG stand-in archive, in the
original order when its label sequence lies beside it), CIFAR-100, SVHN, ImageFolder trees and
archives (decoded once, cached under the data folder) and Tiny-ImageNet. CIFAR's pickles are read
by an unpickler that refuses anything but arrays; a missing or corrupt file is a one-line error
naming the path and the expected layout. :func:`virkit.data.datasets.load_dataset` picks the
reader.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from virkit.data.fetch import source_note
from virkit.data.split import Split
from virkit.errors import VirkitError

__all__ = [
    "data_root",
    "load_cifar10",
    "load_cifar100",
    "load_svhn",
    "load_imagefolder",
    "load_tiny_imagenet",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STANDIN_ARCHIVE = "cifar10-jpeg.tar.gz"


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


def load_cifar10(root: Path, split: str) -> Split:
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
        s = load_imagefolder(archive, split)
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


def load_cifar100(root: Path, split: str) -> Split:
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


def load_svhn(root: Path, split: str) -> Split:
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


def load_imagefolder(root: Path, split: str) -> Split:
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


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def load_tiny_imagenet(root: Path, split: str) -> Split:
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
