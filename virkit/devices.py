"""Where tensors run: the one place that turns a device name or a model into a ``torch.device``."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

from virkit.errors import VirkitError

__all__ = [
    "resolve_device",
    "eval_mode",
    "model_device",
    "cpu_name",
    "onednn_isa_cap",
    "cpu_has_native_bf16",
    "tf32_mode",
    "compile_model",
]


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
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


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


#: oneDNN's CPU ISA levels (``ONEDNN_MAX_CPU_ISA``) below AVX512_CORE_BF16: capped there, oneDNN runs
#: no native bf16 kernel whatever the CPU has (AVX2_VNNI_2 only converts bf16)
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def onednn_isa_cap() -> str | None:
    """The CPU ISA oneDNN is capped at (``ONEDNN_MAX_CPU_ISA``, or the older ``DNNL_MAX_CPU_ISA``),
    upper-case, or None when not set."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap or None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (Intel AMX or AVX512-BF16, from /proc/cpuinfo's flags).
    Information only (``virkit doctor``): whether bf16 *pays* is measured, not read from a flag
    (:mod:`virkit.training.speed`; on an Intel Xeon with AVX512-BF16 and no AMX bf16 trains slower than fp32). ``ONEDNN_MAX_CPU_ISA`` (or
    ``DNNL_MAX_CPU_ISA``) capped below AVX512_CORE_BF16, e.g. ``AVX2``, counts as no native bf16:
    oneDNN then emulates it, as on a CPU without the instructions."""
    if onednn_isa_cap() in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32_flags(matmul: bool, cudnn: bool) -> None:
    try:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
    except RuntimeError:  # pragma: no cover - a caller already used the newer fp32_precision API
        torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if cudnn else "ieee"  # type: ignore[attr-defined]


@contextlib.contextmanager
def tf32_mode(device: torch.device, allow: bool = False) -> Iterator[bool]:
    """For the duration of the block, TF32 on CUDA for float32 matmuls and cuDNN convolutions on
    (``allow``) or off (the default), whatever the process had; restored afterwards. PyTorch's own
    default leaves cuDNN's TF32 *on* (10-bit mantissas inside every fp32 convolution on Ampere and
    newer), so an fp32 evaluation has to switch it off. Yields whether TF32 is in effect: never on
    a device other than CUDA (there is no TF32 there), ``allow`` on CUDA."""
    if device.type != "cuda":
        yield False
        return
    old = _tf32_flags()
    _set_tf32_flags(allow, allow)
    try:
        yield bool(allow)
    finally:
        _set_tf32_flags(*old)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration of the block, then restore every module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def compile_model(
    model: nn.Module,
    example: torch.Tensor,
    *,
    dynamic: bool | None = False,
    mode: str | None = None,
    log: Callable[[str], None] | None = None,
) -> nn.Module:
    """``torch.compile(model, dynamic=..., mode=...)``, checked by one no-grad forward of ``example``
    in eval mode; any failure (no C compiler, an unsupported op, a backend error) is logged and the
    eager ``model`` comes back. ``dynamic=None`` is PyTorch's automatic dynamic shapes: the first
    batch size is compiled static, a second one recompiles once with a symbolic batch dimension
    (what an attack that drops finished rows needs)."""
    try:
        compiled: nn.Module = torch.compile(model, dynamic=dynamic, mode=mode)  # type: ignore[assignment]
        with torch.no_grad(), eval_mode(compiled):
            compiled(example)
        return compiled
    except Exception as e:
        if log is not None:
            log(
                f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                "continuing in eager mode"
            )
        return model
