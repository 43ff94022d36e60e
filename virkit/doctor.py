"""``virkit doctor``: one screen about this machine, pasteable into a bug report.

In the spirit of ``python -m torch.utils.collect_env``: versions, the device and the CPU's instruction
sets, the speed calibration's measured rates and choices (:mod:`virkit.training.speed`), which datasets are
found where and which are missing, the cache folders, and whether the data mirror or the datasets'
official hosts can be reached. It changes nothing, except with ``--calibrate``, which measures the
training step now (and caches it).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["collect", "format_report", "main"]

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "not installed"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return []
    return [f for f in _FLAGS if f in flags]


def _reachable(url: str, timeout: float = 3.0) -> str:
    """'reachable' or why not: a HEAD request (a local folder for file:// URLs)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return (
            "reachable (local folder)"
            if Path(urllib.request.url2pathname(parsed.path)).is_dir()
            else "not reachable (no such folder)"
        )
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout):
            return "reachable"
    except urllib.error.HTTPError as e:  # the host answered
        return f"reachable (HTTP {e.code})"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"not reachable ({getattr(e, 'reason', e)})"


def _size(path: Path) -> str:
    if not path.exists():
        return "absent"
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 2**20:.1f} MiB"


def _short(git: dict) -> str:
    if not git["commit"]:
        return "-"
    return git["commit"][:7] + (" (with local changes)" if git["dirty"] else "")


def collect(data_root: str | None = None, calibrate: bool = False, network: bool = True) -> dict:
    """Everything the report shows, as a dict (``virkit doctor --json``)."""
    import torch

    from virkit.data import FETCHABLE, archives, is_present, mirror_url, offline
    from virkit.data import data_root as _data_root
    from virkit.devices import cpu_has_native_bf16, cpu_name, onednn_isa_cap, resolve_device
    from virkit.environment import __version__, git_commit
    from virkit.io import user_cache_dir
    from virkit.training import StepSpec, cache_file, cached_calibrations, calibration_for, device_label

    device = resolve_device("auto")
    info: dict = {
        "versions": {
            "virkit": f"{__version__} ({_short(git_commit())})",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "numpy": _version("numpy"),
            "papermill": _version("papermill"),
        },
        "platform": platform.platform(),
        "device": {
            "training device (auto)": str(device),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch threads": torch.get_num_threads(),
            "isa flags": " ".join(_cpu_flags()) or "-",
            "bf16 instructions": cpu_has_native_bf16(),
            "ONEDNN_MAX_CPU_ISA": onednn_isa_cap() or "unset",
            "cuda": (
                f"{torch.version.cuda}, "
                + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            )
            if torch.cuda.is_available()
            else "not available",
        },
    }
    # speed calibration: this machine's cached measurements (measured now with --calibrate)
    here = device_label(device)
    if calibrate:
        from virkit.training import resolve_config

        calibration_for(
            StepSpec.of(resolve_config("demo", method="at")), device, 1 if device.type == "cpu" else None, refresh=True
        )
    entries = cached_calibrations(here)
    info["calibration"] = {
        "file": str(cache_file()),
        "VIRKIT_SPEED": os.environ.get("VIRKIT_SPEED") or "unset",
        "entries": [
            {
                "step": e["key"].get("step"),
                "threads": e["key"].get("threads"),
                "torch": e["key"].get("torch"),
                "onednn_isa_cap": e["key"].get("onednn_isa_cap"),
                "rates": e.get("rates"),
                "chosen": f"{e.get('precision')}{' + channels_last' if e.get('channels_last') else ''}",
                "measured_at": e.get("measured_at"),
            }
            for e in entries
        ],
    }
    # datasets
    root = _data_root(data_root)
    src = "--data-root" if data_root else ("$VIRKIT_DATA" if os.environ.get("VIRKIT_DATA") else "default")
    info["data"] = {
        "root": f"{root} (from {src})",
        "datasets": {
            name: ("found" if is_present(name, root) else "missing (fetched on first use)") for name in FETCHABLE
        },
        "VIRKIT_OFFLINE": "set: nothing is fetched" if offline() else "unset",
        "VIRKIT_DATA_MIRROR": mirror_url() or "unset",
    }
    if (root / "cifar10-jpeg.tar.gz").is_file():
        info["data"]["datasets"]["cifar10"] = "found: the JPEG stand-in (cifar10-jpeg.tar.gz)"
    info["caches"] = {
        "user cache": f"{user_cache_dir()} ({_size(user_cache_dir())})",
        "data root": f"{root} ({_size(root)})",
    }
    # network: the mirror if set, else the official hosts
    if network:
        targets = (
            {mirror_url(): "mirror"}
            if mirror_url()
            else {
                f"{urllib.parse.urlparse(archives(n)[0].url).scheme}://{urllib.parse.urlparse(archives(n)[0].url).netloc}/": n
                for n in FETCHABLE
            }
        )
        info["network"] = {f"{url} ({what})": _reachable(url) for url, what in targets.items()}
    return info


def format_report(info: dict) -> str:
    lines = ["virkit doctor (paste this into a bug report)"]
    for section, body in info.items():
        if isinstance(body, str):
            lines.append(f"{section + ':':14s} {body}")
            continue
        lines.append(f"{section}:")
        for k, v in body.items():
            if k == "entries":
                if not v:
                    lines.append(
                        "  no measurement for this device yet (virkit doctor --calibrate, or any training "
                        "run with --precision auto, measures it)"
                    )
                for e in v:
                    st = e["step"] or {}
                    rates = ", ".join(f"{o} {r:.0f}" for o, r in (e["rates"] or {}).items())
                    lines.append(
                        f"  {st.get('model')} batch {st.get('batch_size')} PGD-{st.get('attack_steps')}, "
                        f"{e['threads']} thread(s), torch {e['torch']}"
                        f"{', oneDNN cap ' + e['onednn_isa_cap'] if e['onednn_isa_cap'] else ''}: "
                        f"img/s {rates} -> {e['chosen']} ({e['measured_at']})"
                    )
            elif isinstance(v, dict):
                lines.append(f"  {k}:")
                lines.extend(f"    {kk:22s} {vv}" for kk, vv in v.items())
            else:
                lines.append(f"  {k:24s} {v}")
    return "\n".join(lines)


def main(data_root: str | None = None, calibrate: bool = False, as_json: bool = False, network: bool = True) -> int:
    info = collect(data_root, calibrate, network)
    print(json.dumps(info, indent=1, default=str) if as_json else format_report(info))
    sys.stdout.flush()
    return 0
