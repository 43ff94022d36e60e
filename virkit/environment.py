"""What a result was produced with: virkit's version and commit, the software and the machine.

One record, :func:`environment_record`, for every place that writes one down: a run's config.json,
the benchmarks, the notebooks runner's summary, `virkit doctor` and the HTML report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["__version__", "git_commit", "environment_record"]

__version__ = "0.1.0"

#: the checkout virkit runs from (its commit is recorded when it is a git checkout)
REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> dict:
    """``{"commit": full SHA or None (not a git checkout), "dirty": tracked files changed}``."""
    sha = _git("rev-parse", "HEAD") or None
    return {"commit": sha, "dirty": bool(sha and _git("status", "--porcelain", "--untracked-files=no"))}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def environment_record(device: torch.device | str | None = None, *, commit: bool = False) -> dict:
    """Versions (virkit, python, torch, torchvision, numpy), the platform, the CPU, its cores and
    whether it has native bf16 instructions, torch's thread count and, for ``device``, the device
    (a CUDA device adds the GPU's name and the CUDA version). ``commit=True`` adds the git commit
    of the checkout (``commit``, ``dirty``): it runs git, so run records written every epoch leave
    it out."""
    from virkit.devices import cpu_has_native_bf16, cpu_name

    info = {
        "virkit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
    }
    if device is not None:
        dev = torch.device(device)
        info["device"] = str(dev)
        if dev.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(dev)
            info["cuda"] = torch.version.cuda
    if commit:
        info.update(git_commit())
    return info
