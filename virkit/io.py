"""Atomic file writes and safe checkpoint loading.

Every JSON and checkpoint virkit writes goes through :func:`atomic_write_bytes`: the bytes go to
a temporary file in the same folder, are fsync'ed, and the file is renamed over the target, then
the folder is fsync'ed. A kill at any moment leaves either the old file or the new one, whole.
Checkpoints are read with ``torch.load(weights_only=True)``, which refuses pickled code.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import VirkitError

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_torch_save", "safe_torch_load", "append_jsonl",
           "to_jsonable"]


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


def safe_torch_load(path: str | os.PathLike, map_location="cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors a person can act on.

    A file that needs arbitrary unpickling (a class, a function: anything that could run code) is
    refused and its payload never executes."""
    path = Path(path)
    if not path.is_file():
        raise VirkitError(f"checkpoint {path} does not exist; pass a run directory or a .pt file written by virkit")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "UnpicklingError" in type(e).__name__:
            # name what was refused (e.g. "unsupported GLOBAL posix.system"), not torch's generic preamble
            msg = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), msg)
            raise VirkitError(f"refusing to load {path}: it contains pickled objects that could run code "
                              f"({msg[:160]}); only load checkpoints written by virkit from sources you trust"
                              ) from None
        raise VirkitError(f"cannot read checkpoint {path}: {type(e).__name__}: {msg[:200]}; the file is corrupt or "
                          "truncated, use another checkpoint (e.g. best.pt or last.pt)") from None
