"""Datasets fetched on first use, the ecosystem's way: official archives, official checksums.

When a dataset is missing from the data root (``--data-root``, else ``$VIRKIT_DATA``, else
``~/.cache/virkit/data``), virkit downloads its original archive, as torchvision does with
``download=True``, and says so first (what, from where, how big, into which folder), with a progress
bar. The convention is **automatic with a notice**; ``VIRKIT_OFFLINE=1`` turns it off (a missing
dataset is then one line naming the fixes).

* CIFAR-10, CIFAR-100, SVHN: torchvision's URLs and MD5 checksums (read from its dataset classes, so
  they are the ones torchvision itself verifies); Tiny-ImageNet: its official archive
  (``tiny-imagenet-200.zip``, cs231n) and the checksum the field's loaders use.
* ``VIRKIT_DATA_MIRROR=URL``: the base of a folder holding the same archive files (an institution's
  mirror or an offline cache, ``http(s)://`` or ``file://``); the archive's file name is appended.
* ``VIRKIT_DATA_CHECKSUMS=FILE``: a JSON ``{archive file name: md5}`` that replaces the official
  checksums, for a mirror of archives rebuilt elsewhere (the test suite serves archives built from the
  JPEG stand-in). Data fetched so is labelled as not the original in every result.

Safety: the download goes to a hidden ``.<name>.<pid>.partial`` file and becomes the archive only after
its checksum matched; extraction goes to a hidden folder renamed into place at the end. So an
interrupted download or extraction leaves nothing that looks complete (stale partial files are removed
by the next fetch). A corrupt archive is refused by its checksum with one line. Two processes fetching
the same dataset at once take turns on a file lock; the second finds the data in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virkit.errors import VirkitError

__all__ = [
    "Archive",
    "archives",
    "FETCHABLE",
    "is_present",
    "layout_of",
    "ensure_dataset",
    "fetch_dataset",
    "mirror_url",
    "offline",
    "source_note",
    "MARKER",
]

#: written into a fetched dataset's folder: where it came from and whether the checksum was the official one
MARKER = ".virkit-fetched.json"

_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


@dataclass(frozen=True)
class Archive:
    """One file to download: its official URL and MD5, and what it becomes under the data root."""

    filename: str  # the file's name on the server and under the data root
    url: str  # the official URL
    md5: str  # the official checksum
    extract: str  # "tar", "zip" or "none" (the file is used as it is)
    provides: str  # the folder (or file) under the root that exists once it is in place


def _tv():
    try:
        import torchvision.datasets as tvd
    except ImportError:  # pragma: no cover - torchvision is a dependency
        raise VirkitError("fetching datasets needs torchvision; pip install torchvision") from None
    return tvd


def archives(name: str) -> list[Archive]:
    """The archives of dataset ``name`` (one of :data:`FETCHABLE`)."""
    if name == "cifar10":
        c = _tv().CIFAR10
        return [Archive(c.filename, c.url, c.tgz_md5, "tar", c.base_folder)]
    if name == "cifar100":
        c = _tv().CIFAR100
        return [Archive(c.filename, c.url, c.tgz_md5, "tar", c.base_folder)]
    if name == "svhn":
        sl = _tv().SVHN.split_list
        return [Archive(sl[s][1], sl[s][0], sl[s][2], "none", sl[s][1]) for s in ("train", "test")]
    if name == "tiny-imagenet":
        return [Archive("tiny-imagenet-200.zip", _TINY_URL, _TINY_MD5, "zip", "tiny-imagenet-200")]
    raise VirkitError(f"dataset {name!r} cannot be fetched; fetchable: {', '.join(FETCHABLE)}")


#: dataset -> (label, the layout that must exist under the root, files that must exist in it)
FETCHABLE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cifar10": ("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)),
    "cifar100": ("CIFAR-100", "cifar-100-python", ("train", "test", "meta")),
    "svhn": ("SVHN", "", ("train_32x32.mat", "test_32x32.mat")),
    "tiny-imagenet": ("Tiny-ImageNet", "tiny-imagenet-200", ("wnids.txt",)),
}


def layout_of(name: str, root: Path) -> str:
    """The standard layout of ``name`` under ``root``, in words (for messages)."""
    _, folder, files = FETCHABLE[name]
    base = root / folder if folder else root
    return f"{base}/{{{','.join(files)}}}" if len(files) > 1 else str(base / files[0])


def is_present(name: str, root: Path) -> bool:
    """Whether ``name`` is in place under ``root`` (its standard layout, or for cifar10 the JPEG
    stand-in archive ``cifar10-jpeg.tar.gz``)."""
    if name == "cifar10" and (root / "cifar10-jpeg.tar.gz").is_file():
        return True
    _, folder, files = FETCHABLE[name]
    base = root / folder if folder else root
    return all((base / f).is_file() for f in files)


def offline() -> bool:
    return os.environ.get("VIRKIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def mirror_url() -> str | None:
    m = os.environ.get("VIRKIT_DATA_MIRROR", "").strip()
    return m.rstrip("/") if m else None


def _url(a: Archive) -> str:
    m = mirror_url()
    return f"{m}/{a.filename}" if m else a.url


def _expected_md5(a: Archive) -> tuple[str, bool]:
    """(md5 to verify against, whether it is the official one)."""
    path = os.environ.get("VIRKIT_DATA_CHECKSUMS", "").strip()
    if path:
        try:
            table = json.loads(Path(path).expanduser().read_text())
        except (OSError, ValueError) as e:
            raise VirkitError(
                f"VIRKIT_DATA_CHECKSUMS={path} is not a readable JSON file ({e}); fix it or unset it"
            ) from None
        if a.filename in table:
            return str(table[a.filename]).lower(), str(table[a.filename]).lower() == a.md5
    return a.md5, True


def source_note(folder: Path) -> str:
    """How a dataset folder came to be, for the ``source`` of its splits: '' (placed by hand),
    ', original download, md5 verified', or a warning that the checksum was not the official one."""
    try:
        rec = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return ""
    if rec.get("official_checksum"):
        return f", original archive from {rec.get('url')}, md5 verified"
    return f", NOT the original archive: fetched from {rec.get('url')}, md5 {rec.get('md5')} (VIRKIT_DATA_CHECKSUMS)"


def _human(n: float | None) -> str:
    if not n:
        return "size unknown"
    return f"{n / 2**20:.1f} MiB"


class _Progress:
    """A tqdm bar on a terminal; elsewhere (logs, notebooks' output, CI) a line at every quarter."""

    def __init__(self, total: int | None, label: str):
        self.total, self.label, self.done, self.bar, self.next_mark = total, label, 0, None, 0.25
        if sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr, leave=False
                )
            except ImportError:  # pragma: no cover
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.total and self.done / self.total >= self.next_mark:
            print(
                f"  {self.label}: {self.done / self.total:.0%} ({_human(self.done)} of {_human(self.total)})",
                file=sys.stderr,
                flush=True,
            )
            while self.next_mark <= self.done / self.total:
                self.next_mark += 0.25

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _download(a: Archive, root: Path, say: Callable[[str], None]) -> Path:
    """Download ``a`` into ``root`` (checksum verified); returns the archive's path."""
    url = _url(a)
    md5, official = _expected_md5(a)
    final = root / a.filename
    if final.is_file():
        if _md5(final) == md5:
            return final
        say(f"virkit: {final} does not match its checksum (an earlier copy?); fetching it again")
        final.unlink()
    part = root / f".{a.filename}.{os.getpid()}.partial"
    try:
        try:
            resp = urllib.request.urlopen(url, timeout=60)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise _Unreachable(url, e) from None
        with resp, open(part, "wb") as f:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            say(f"virkit: fetching {a.filename} ({_human(total)}) from {url} into {root}")
            h, bar = hashlib.md5(), _Progress(total, a.filename)
            try:
                while True:
                    try:
                        chunk = resp.read(1 << 20)
                    except (OSError, ValueError) as e:  # http.client.IncompleteRead, resets, timeouts
                        raise VirkitError(
                            f"the download of {a.filename} from {url} broke off after "
                            f"{_human(bar.done)} ({type(e).__name__}); nothing was kept: run again"
                        ) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
            if total is not None and bar.done != total:
                raise VirkitError(
                    f"the download of {a.filename} from {url} is truncated ({bar.done} of {total} "
                    "bytes); nothing was kept: run again"
                )
        got = h.hexdigest()
        if got != md5:
            raise VirkitError(
                f"checksum mismatch for {a.filename} from {url}: md5 {got}, expected {md5}"
                f"{'' if official else ' (VIRKIT_DATA_CHECKSUMS)'}; the archive is corrupt and was "
                "not kept: run again, or fix the mirror"
            )
        os.replace(part, final)
        return final
    finally:
        part.unlink(missing_ok=True)


class _Unreachable(VirkitError):
    def __init__(self, url: str, err: Exception):
        reason = getattr(err, "reason", None) or err
        super().__init__(f"{url} could not be reached ({reason})")
        self.url = url


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(a: Archive, archive: Path, root: Path, official: bool, url: str) -> None:
    """Unpack ``archive`` into a hidden folder, then rename its ``a.provides`` folder into place."""
    tmp = root / f".extract-{a.provides}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if a.extract == "tar":
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")  # refuses absolute paths, links out of the folder
            except (tarfile.TarError, EOFError, OSError) as e:
                raise VirkitError(f"cannot unpack {archive}: {e}; delete it and run again") from None
        else:
            try:
                with zipfile.ZipFile(archive) as z:
                    for n in z.namelist():
                        if n.startswith("/") or ".." in Path(n).parts:
                            raise VirkitError(f"{archive} holds an unsafe path {n!r}; refusing to unpack it")
                    z.extractall(tmp)
            except (zipfile.BadZipFile, OSError) as e:
                raise VirkitError(f"cannot unpack {archive}: {e}; delete it and run again") from None
        inside = tmp / a.provides
        if not inside.is_dir():
            raise VirkitError(f"{archive} does not hold the folder {a.provides}/; is the mirror's file the right one?")
        (inside / MARKER).write_text(
            json.dumps(
                {
                    "url": url,
                    "archive": a.filename,
                    "md5": _md5(archive),
                    "official_checksum": official,
                    "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            )
        )
        target = root / a.provides
        if target.exists():
            raise VirkitError(f"{target} exists but is incomplete; move it away (or delete it) and run again")
        os.rename(inside, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean_stale(root: Path) -> None:
    """Partial files and extraction folders of processes that no longer run."""
    for p in list(root.glob(".*.partial")) + list(root.glob(".extract-*")):
        pid = p.name.rsplit(".", 2)[-2] if p.name.endswith(".partial") else p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True


def fetch_dataset(name: str, root: Path, say: Callable[[str], None] | None = None) -> None:
    """Download (checksum verified) and unpack ``name`` into ``root``; a no-op when it is already
    there. Raises :class:`VirkitError` with one line when it cannot."""
    from virkit.io import file_lock

    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    label = FETCHABLE[name][0]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VirkitError(
            f"cannot create the data folder {root} ({e.strerror}); point VIRKIT_DATA (or --data-root) "
            "at a writable folder"
        ) from None
    with file_lock(
        root / f".fetch-{name}.lock",
        on_wait=lambda: say(f"virkit: another process is fetching {label} into {root}; waiting for it"),
    ):
        if is_present(name, root):
            return
        _clean_stale(root)
        for a in archives(name):
            if a.extract == "none" and (root / a.provides).is_file():
                continue
            path = _download(a, root, say)
            if a.extract != "none":
                say(f"virkit: unpacking {path.name}")
                _extract(a, path, root, _expected_md5(a)[1], _url(a))
        say(f"virkit: {label} is in {root}")


def ensure_dataset(name: str, root: Path, say: Callable[[str], None] | None = None) -> None:
    """Make sure ``name`` is under ``root``: fetch it when missing (unless ``VIRKIT_OFFLINE``). A
    dataset that is neither there nor reachable raises one :class:`VirkitError` line naming both fixes."""
    if name not in FETCHABLE or is_present(name, root):
        return
    layout = layout_of(name, root)
    fixes = (
        f"go online (or set VIRKIT_DATA_MIRROR to a folder or server holding {archives(name)[0].filename}), "
        f"or point VIRKIT_DATA (or --data-root) at a folder holding {FETCHABLE[name][1] or 'the files'} "
        "in torchvision's layout"
    )
    if offline():
        raise VirkitError(
            f"dataset {name!r} not found under {root} (expected {layout}) and VIRKIT_OFFLINE is set; "
            f"unset it and {fixes}"
        )
    try:
        fetch_dataset(name, root, say)
    except _Unreachable as e:
        raise VirkitError(f"dataset {name!r} not found under {root} and {e}; {fixes}") from None
