"""Where tensors run: the one place that turns a device name or a model into a ``torch.device``."""
from __future__ import annotations

import torch
from torch import nn

from .errors import VirkitError

__all__ = ["resolve_device", "model_device", "cpu_name", "cpu_has_native_bf16", "fast_defaults"]


def resolve_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` (or None): CUDA when available (``cuda:<local_rank>`` under torchrun), else the CPU;
    otherwise the named device, refused with one line when it cannot be used here."""
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise VirkitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VirkitError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        dev = torch.device("cuda", local_rank)
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for a model with neither."""
    t = next(iter(model.parameters()), None)
    if t is None:
        t = next(iter(model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else the platform's word for it)."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Intel AMX or AVX512-BF16, from /proc/cpuinfo's
    flags); oneDNN then runs bf16 convolutions and matmuls faster than fp32. Elsewhere bf16 is
    emulated and slower, so virkit's CPU default stays fp32 there."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fast_defaults(precision: str, channels_last: bool | None, device: torch.device) -> tuple[str, bool]:
    """What training runs with for ``precision`` (``auto`` | ``fp32`` | ``bf16``) and
    ``channels_last`` (None: auto) on ``device``. On a CPU, ``auto`` means channels_last (oneDNN's
    convolutions are faster in NHWC) and bf16 autocast where the CPU runs bf16 natively
    (:func:`cpu_has_native_bf16`), fp32 elsewhere; on other devices ``auto`` keeps fp32 and the
    contiguous format. Evaluation is fp32 whatever this says."""
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if channels_last is None:
        channels_last = device.type == "cpu"
    return precision, bool(channels_last)
