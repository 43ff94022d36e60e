"""The demo's tiers (``demo``, ``demo-mid``, ``demo-lite``, ``demo-min``: the same nine notebooks on
fewer training images) and the choice among them: the largest tier this machine is expected to
finish within the demo's budget, from the speed calibration of the demo's training step and the
cost model of :func:`virkit.notebooks.prepare.expected_seconds`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from virkit.notebooks.prepare import default_train_jobs, expected_seconds
from virkit.notebooks.presets import train_config

__all__ = ["DEMO_TIERS", "DEMO_BUDGET_S", "TierChoice", "choose_demo_tier", "default_demo_preset"]

#: the demo tiers, largest first, and the wall-clock budget `make demo` chooses within
DEMO_TIERS = ("demo", "demo-mid", "demo-lite", "demo-min")
DEMO_BUDGET_S = 600.0


@dataclass
class TierChoice:
    """The demo tier chosen for this machine: the measured rate and each tier's expected seconds."""

    preset: str
    why: str
    rate: float  # images/s of one training job (calibration, chosen option)
    speed: str  # the chosen precision/layout, in words
    jobs: int
    expected_s: dict = field(default_factory=dict)  # tier -> expected wall seconds of the whole demo


def choose_demo_tier(
    jobs: int | None = None,
    budget_s: float = DEMO_BUDGET_S,
    log: Callable[[str], None] | None = None,
    measure: bool = True,
) -> TierChoice:
    """The largest of :data:`DEMO_TIERS` this machine is expected to finish within ``budget_s``, from
    the speed calibration of the demo's training step (:mod:`virkit.training.speed`, measured once and cached)
    with the threads each of ``jobs`` training workers gets, and the cost model of
    :func:`virkit.notebooks.prepare.expected_seconds`. Falls back to the smallest tier, saying so."""

    from virkit.devices import resolve_device
    from virkit.training import StepSpec, calibration_for

    jobs = int(jobs or default_train_jobs())
    threads = max(1, (os.cpu_count() or 1) // jobs)
    device = resolve_device("auto")
    cfg = train_config("demo", "at")
    cal = calibration_for(StepSpec.of(cfg), device, threads if device.type == "cpu" else None, log=log, measure=measure)
    rate = cal.rate or max(cal.rates.values() or [0.0])
    speed = f"{cal.precision}{' + channels_last' if cal.channels_last else ''}"
    expected = {t: expected_seconds(t, rate, jobs) for t in DEMO_TIERS} if rate > 0 else {}
    where = "a GPU" if device.type == "cuda" else f"{jobs} training job(s) x {threads} thread(s)"
    if not expected:  # no measurement (VIRKIT_SPEED set, or not measured yet): the largest tier, said so
        what = "VIRKIT_SPEED set" if cal.source == "env" else "not measured yet: `virkit notebooks run` measures"
        return TierChoice(DEMO_TIERS[0], f"no measured rate ({what}), so the largest tier", 0.0, speed, jobs)
    for tier in DEMO_TIERS:
        if expected[tier] <= budget_s:
            why = (
                f"{rate:.0f} img/s a training job measured ({speed}, {where}): expected {expected[tier] / 60:.1f} "
                f"min, the largest tier within {budget_s / 60:.0f}"
            )
            if tier != DEMO_TIERS[0]:
                bigger = DEMO_TIERS[DEMO_TIERS.index(tier) - 1]
                why += f"; {bigger} would take about {expected[bigger] / 60:.0f} min here"
            return TierChoice(tier, why, rate, speed, jobs, expected)
    tier = DEMO_TIERS[-1]
    return TierChoice(
        tier,
        f"{rate:.0f} img/s a training job measured ({speed}, {where}): even the smallest tier is "
        f"expected to take {expected[tier] / 60:.1f} min here",
        rate,
        speed,
        jobs,
        expected,
    )


def default_demo_preset(
    jobs: int | None = None, log: Callable[[str], None] | None = None, measure: bool = True
) -> tuple[str, str]:
    """The demo tier this machine runs in 10 minutes, and why (:func:`choose_demo_tier`). ``make demo``
    and ``virkit notebooks run`` without ``--preset`` use it."""
    c = choose_demo_tier(jobs, log=log, measure=measure)
    return c.preset, c.why
