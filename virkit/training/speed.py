"""Speed chosen by measurement: a short timed calibration of the actual training step.

Whether bf16 autocast or the channels_last layout pays depends on more than a CPU flag: bf16 trains
the small CNN 1.4-1.5x faster than fp32 on an AMD EPYC with AVX512-BF16 and ~1.8x with Intel AMX, but
0.78x on an Intel Xeon with AVX512-BF16 and no AMX (BENCHMARKS.md). So ``--precision auto`` and
``--channels-last auto`` time the step itself: :func:`calibrate` runs a few AT training steps
(:func:`virkit.training.methods.method_step` with the run's model, batch size and training attack, then backward
and an SGD step, on synthetic images) for each of fp32 / bf16 and contiguous / channels_last, and
:func:`choose` picks from the measured images per second:

* bf16 only when it is at least :data:`BF16_MARGIN` faster than the fastest fp32 option (it changes
  the numerics: a tie keeps fp32);
* channels_last when it is faster than the contiguous layout by at least :data:`LAYOUT_MARGIN`.

The result is cached in ``<user cache>/virkit/calibration.json`` (``$XDG_CACHE_HOME`` or ``~/.cache``),
keyed by the device (CPU model or GPU name), torch version, thread count, oneDNN's ISA cap and the step
(model, batch, image size, attack steps); a change of any of them measures again. Concurrent
processes wait for one calibration (a file lock) instead of timing each other. ``VIRKIT_SPEED``
(``fp32`` / ``bf16``, optionally ``,channels_last`` / ``,contiguous``) skips the measurement.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from virkit.errors import VirkitError
from virkit.io import user_cache_dir

if TYPE_CHECKING:
    from virkit.training.config import TrainConfig

__all__ = [
    "StepSpec",
    "Calibration",
    "calibrate",
    "choose",
    "choose_layout",
    "calibration_for",
    "fast_defaults",
    "cached_calibrations",
    "device_label",
    "cache_file",
    "user_cache_dir",
    "BF16_MARGIN",
    "LAYOUT_MARGIN",
    "OPTIONS",
]

#: bf16 must beat the fastest fp32 option by this factor to be chosen (it changes the numerics)
BF16_MARGIN = 1.10
#: channels_last must beat the contiguous layout of the same precision by this factor
LAYOUT_MARGIN = 1.03
#: the options timed: (precision, channels_last)
OPTIONS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
#: bump when the measurement changes, so old cache entries are not reused
_VERSION = 1


def cache_file() -> Path:
    return user_cache_dir() / "calibration.json"


@dataclass(frozen=True)
class StepSpec:
    """The training step that is timed: an AT step of ``model`` at ``batch_size`` with a PGD of
    ``attack_steps`` steps, on ``image_size`` images of ``num_classes`` classes."""

    model: str = "small-cnn"
    batch_size: int = 64
    attack_steps: int = 2
    image_size: int = 32
    num_classes: int = 10

    @classmethod
    def of(cls, cfg: TrainConfig) -> StepSpec:
        from virkit.data import DATASETS

        classes, size, _ = DATASETS.get(cfg.dataset, (10, 32, ""))
        return cls(cfg.model, int(cfg.batch_size), max(1, int(cfg.attack_steps)), int(size or 32), int(classes or 10))


@dataclass
class Calibration:
    """Measured images/s per option and the choice made from them."""

    precision: str
    channels_last: bool
    rates: dict  # "fp32", "fp32+channels_last", "bf16", "bf16+channels_last" -> images/s
    key: dict  # what the measurement depends on
    seconds: float  # how long the measurement took
    source: str  # "measured", "cache", "env" or "default"
    measured_at: str = ""  # local time of the measurement

    @property
    def rate(self) -> float:
        """Images/s of the chosen option (AT steps of the timed spec)."""
        return float(self.rates.get(_label(self.precision, self.channels_last)) or 0.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in self.rates.items() if v)
        return (
            f"{self.precision}{' + channels_last' if self.channels_last else ''} "
            f"({self.source}; img/s: {rates or 'not measured'})"
        )


def _label(precision: str, channels_last: bool) -> str:
    return precision + ("+channels_last" if channels_last else "")


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        from virkit.devices import cpu_name

        return cpu_name()
    return device.type


def _key(spec: StepSpec, device: torch.device, threads: int) -> dict:
    from virkit.devices import onednn_isa_cap

    return {
        "device": device_label(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": int(threads),
        "onednn_isa_cap": onednn_isa_cap(),
        "step": dataclasses.asdict(spec),
        "version": _VERSION,
    }


def choose(rates: dict) -> tuple[str, bool]:
    """(precision, channels_last) from measured images/s per option (see the module docstring).
    Options missing from ``rates`` (or 0: failed) are never chosen."""
    best = {p: max(_rate(rates, p, False), _rate(rates, p, True)) for p in ("fp32", "bf16")}
    if best["fp32"] <= 0 and best["bf16"] <= 0:
        raise VirkitError("the speed calibration measured no option; use --precision fp32 --channels-last off")
    precision = "bf16" if best["bf16"] >= BF16_MARGIN * best["fp32"] else "fp32"
    return precision, _layout(rates, precision)


def _rate(rates: dict, precision: str, channels_last: bool) -> float:
    return float(rates.get(_label(precision, channels_last)) or 0.0)


def _layout(rates: dict, precision: str) -> bool:
    """channels_last when it measured at least LAYOUT_MARGIN faster than contiguous for ``precision``."""
    cl = _rate(rates, precision, True)
    return cl > 0 and cl >= LAYOUT_MARGIN * _rate(rates, precision, False)


def _step_fn(spec: StepSpec, device: torch.device, precision: str, channels_last: bool) -> Callable[[], None]:
    """One AT training step (method_step, backward, SGD step) on fixed synthetic images, warmed up
    (kernel selection, allocations) before it is returned."""
    from virkit.models import build_model
    from virkit.training.config import resolve_config
    from virkit.training.methods import method_step

    torch.manual_seed(0)
    model = build_model(spec.model, spec.num_classes, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=spec.image_size).to(
        device
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    cfg = resolve_config(
        "tiny",
        model=spec.model,
        method="at",
        batch_size=spec.batch_size,
        attack_steps=spec.attack_steps,
        step_size=2.5 * 8 / 255 / spec.attack_steps,
        precision=precision,
        channels_last=channels_last,
    )
    g = torch.Generator().manual_seed(0)
    x = torch.rand(spec.batch_size, 3, spec.image_size, spec.image_size, generator=g).to(device)
    y = torch.randint(0, spec.num_classes, (spec.batch_size,), generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ac = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if precision == "bf16" else None
    gen = torch.Generator(device=device).manual_seed(0)
    model.train()

    def step() -> None:
        res = method_step(model, x, y, cfg, 1, autocast=ac, generator=gen)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()

    step()  # warm-up: kernel selection, allocations
    return step


def _time_steps(step: Callable[[], None], device: torch.device, batch_size: int, budget_s: float) -> float:
    """Images/s of ``step`` over about ``budget_s`` seconds (at least one step: emulated bf16 can take
    longer than the budget)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        sync()
        if time.perf_counter() - t0 >= budget_s:
            return n * batch_size / (time.perf_counter() - t0)


def calibrate(
    spec: StepSpec,
    device: torch.device,
    budget_s: float = 1.5,
    rounds: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure images/s of every option in :data:`OPTIONS`: ``rounds`` rounds that visit every option in
    turn (so a burst of load from another process hits all of them), about ``budget_s / rounds`` of
    timed steps each after a warm-up step; an option's rate is its best round. After the first round,
    an option slower than half the fastest is not timed again (emulated bf16 can take seconds a step
    and cannot win). An option that fails (bf16 unsupported on a device) gets 0."""
    options = [(p, cl) for p, cl in OPTIONS if device.type in ("cpu", "cuda") or not cl]
    steps = {}
    for precision, cl in options:
        try:
            steps[(precision, cl)] = _step_fn(spec, device, precision, cl)
        except (RuntimeError, TypeError) as e:  # e.g. bf16 autocast not supported on this device
            if log:
                log(f"calibration: {_label(precision, cl)} failed ({type(e).__name__}: {str(e)[:80]})")
    best = {o: 0.0 for o in options}
    for round_ in range(max(1, rounds)):
        for o, fn in list(steps.items()):
            if round_ and best[o] < 0.5 * max(best.values()):
                continue
            try:
                best[o] = max(best[o], _time_steps(fn, device, spec.batch_size, budget_s / max(1, rounds)))
            except (RuntimeError, TypeError) as e:
                steps.pop(o)
                best[o] = 0.0
                if log:
                    log(f"calibration: {_label(*o)} failed ({type(e).__name__}: {str(e)[:80]})")
    return {_label(*o): round(v, 1) for o, v in best.items()}


def _from_env() -> tuple[str, bool | None] | None:
    v = os.environ.get("VIRKIT_SPEED", "").strip().lower()
    if not v:
        return None
    parts = [p.strip() for p in v.split(",") if p.strip()]
    if parts[0] not in ("fp32", "bf16") or any(p not in ("channels_last", "contiguous") for p in parts[1:]):
        raise VirkitError(
            f"VIRKIT_SPEED={v!r} is not understood; use fp32 or bf16, optionally followed by "
            ",channels_last or ,contiguous (e.g. VIRKIT_SPEED=fp32,channels_last)"
        )
    cl = None if len(parts) == 1 else parts[1] == "channels_last"
    return parts[0], cl


def _read_cache(path: Path) -> list:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else []
    except (OSError, ValueError):
        return []


def cached_calibrations(device: str | None = None) -> list[dict]:
    """The cached calibration entries (all, or those of the device named like :func:`device_label`)."""
    return [
        e
        for e in _read_cache(cache_file())
        if isinstance(e, dict) and (device is None or e.get("key", {}).get("device") == device)
    ]


def _cached(path: Path, key: dict) -> Calibration | None:
    names = {f.name for f in dataclasses.fields(Calibration)}
    for entry in _read_cache(path):
        if isinstance(entry, dict) and entry.get("key") == key:
            try:
                return Calibration(**{**{k: v for k, v in entry.items() if k in names}, "source": "cache"})
            except TypeError:
                return None
    return None


def calibration_for(
    spec: StepSpec,
    device: torch.device,
    threads: int | None = None,
    *,
    refresh: bool = False,
    log: Callable[[str], None] | None = None,
    measure: bool = True,
) -> Calibration:
    """The cached calibration for ``spec`` on ``device`` with ``threads`` torch threads (default: the
    current count), measured (and cached) when missing or ``refresh``. ``measure=False`` returns
    ``source='default'`` (fp32, channels_last on a CPU, no rates) instead of measuring."""
    threads = int(threads or torch.get_num_threads())
    key = _key(spec, device, threads)
    env = _from_env()
    if env is not None:
        cl = env[1] if env[1] is not None else device.type == "cpu"
        return Calibration(env[0], bool(cl), {}, key, 0.0, "env")
    path = cache_file()
    if not refresh and (hit := _cached(path, key)) is not None:
        return hit
    if not measure:
        return Calibration("fp32", device.type == "cpu", {}, key, 0.0, "default")
    from virkit.io import atomic_write_json, file_lock

    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        if not refresh and (hit := _cached(path, key)) is not None:
            return hit  # another process measured while this one waited
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            t0 = time.perf_counter()
            if log:
                log(
                    f"calibrating the training step on {key['device']} ({threads} thread(s), {spec.model}, batch "
                    f"{spec.batch_size}, PGD-{spec.attack_steps}): fp32/bf16 x contiguous/channels_last, a few seconds"
                )
            rates = calibrate(spec, device, log=log)
            seconds = round(time.perf_counter() - t0, 1)
        finally:
            torch.set_num_threads(old_threads)
        precision, cl = choose(rates)
        cal = Calibration(precision, cl, rates, key, seconds, "measured")
        entries = [e for e in _read_cache(path) if e.get("key") != key][-49:]
        cal.measured_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        entries.append(cal.to_dict())
        try:
            atomic_write_json(path, entries)
        except OSError:
            pass  # a read-only cache: measured again next time
        if log:
            log(f"calibration: {cal.describe()}")
        return cal


def choose_layout(rates: dict, precision: str, device: torch.device) -> bool:
    """channels_last for ``precision`` from measured rates (no rates: on a CPU, as oneDNN prefers NHWC)."""
    if not _rate(rates, precision, True) and not _rate(rates, precision, False):
        return device.type == "cpu"
    return _layout(rates, precision)


def fast_defaults(
    precision: str,
    channels_last: bool | None,
    device: torch.device,
    spec: StepSpec | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[str, bool, Calibration | None]:
    """What training runs with for ``precision`` (``auto`` | ``fp32`` | ``bf16``) and ``channels_last``
    (None: auto) on ``device``: anything left on auto is decided by the calibration of ``spec``
    (:func:`calibration_for`, cached), which is returned too (None when nothing was automatic).
    Evaluation is fp32 whatever this says."""
    if precision != "auto" and channels_last is not None:
        return precision, bool(channels_last), None
    cal = calibration_for(spec or StepSpec(), device, threads, log=log)
    if precision == "auto":
        precision = cal.precision
        if channels_last is None:
            return precision, cal.channels_last, cal
    if channels_last is None:
        channels_last = choose_layout(cal.rates, precision, device)
    return precision, bool(channels_last), cal
