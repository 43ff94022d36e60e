"""Atomic file writes and safe checkpoint loading.

Every JSON and checkpoint virkit writes goes through :func:`atomic_write_bytes`: the bytes go to
a temporary file in the same folder, are fsync'ed, and the file is renamed over the target, then
the folder is fsync'ed. A kill at any moment leaves either the old file or the new one, whole.
Checkpoints are read with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from virkit.errors import VirkitError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_torch_save",
    "safe_torch_load",
    "append_jsonl",
    "to_jsonable",
    "file_lock",
    "user_cache_dir",
]


def user_cache_dir() -> Path:
    """virkit's folder in the user cache: ``$XDG_CACHE_HOME/virkit``, else ``~/.cache/virkit`` (data,
    decoded images, the speed calibration)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "virkit"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the block, waited for; ``on_wait`` is
    called once when another process holds it. The kernel drops the lock when its process dies, so a
    killed holder never blocks the next one. (Run directories use :class:`virkit.locks.WriterLock`.)"""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + rename). Raises OSError on failure,
    leaving any previous file at ``path`` untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, paths and tuples into JSON-friendly values; NaN/Inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


def append_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Rewrite a JSON-lines file atomically with ``records`` (the whole history is small)."""
    atomic_write_bytes(path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in records).encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _pickle_streams(data: bytes) -> list[bytes]:
    """The pickle byte streams a checkpoint file holds: every ``*.pkl`` member of torch's zip format,
    else the file itself (torch's legacy format and bare pickles: consecutive pickles)."""
    import zipfile

    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    return [data]


def _imported_global(data: bytes) -> str | None:
    """The first global (``module.name``: a class or a function, what ``weights_only`` refuses and
    what could run code) that the file's pickles import; ``""`` when they parse and import none;
    None when the file does not parse as pickles at all (random bytes, a truncated file)."""
    import pickletools

    try:
        streams = _pickle_streams(data)
    except Exception:
        return None
    if not streams:
        return None
    for stream in streams:
        buf = io.BytesIO(stream)
        parsed_any, strings = False, list[str]()
        while buf.tell() < len(stream):
            try:
                for op, arg, _ in pickletools.genops(buf):
                    if isinstance(arg, str):
                        strings = (strings + [arg])[-2:]
                    if op.name in ("GLOBAL", "INST"):
                        return str(arg).replace(" ", ".")
                    if op.name == "STACK_GLOBAL":
                        return ".".join(strings) or "a global"
            except Exception:
                if not parsed_any:
                    return None
                break  # legacy format: raw tensor bytes follow the pickles
            parsed_any = True
    return ""


def safe_torch_load(path: str | os.PathLike, map_location: torch.device | str | None = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors a person can act on.

    A file that needs arbitrary unpickling (a class, a function: anything that could run code) is
    refused and its payload never executes. A file that is no checkpoint at all (random bytes, cut
    short by a failed copy) is reported as such, not as a hostile file."""
    path = Path(path)
    if not path.is_file():
        raise VirkitError(f"checkpoint {path} does not exist; pass a run directory or a .pt file written by virkit")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e)
        msg = text.splitlines()[0] if text else type(e).__name__
        refused = "GLOBAL" in text or ("weights_only" in text or "UnpicklingError" in type(e).__name__)
        imported = None if "GLOBAL" in text or not refused else _imported_global(path.read_bytes())
        if "GLOBAL" in text or imported:
            # name what was refused (e.g. "unsupported GLOBAL posix.system"), not torch's generic preamble
            msg = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln), f"unsupported GLOBAL {imported}")
            raise VirkitError(
                f"refusing to load {path}: it contains pickled objects that could run code "
                f"({msg[:160]}); only load checkpoints written by virkit from sources you trust"
            ) from None
        detail = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln), msg) if refused else msg
        raise VirkitError(
            f"cannot read checkpoint {path}: not a virkit checkpoint (corrupt or truncated: "
            f"{type(e).__name__}: {detail[:160]}); use another checkpoint (e.g. best.pt or last.pt)"
        ) from None
