"""Errors virkit reports to people: one clear line, exit code 2."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

_Number = TypeVar("_Number", bound=float)  # an int or a float: check_range returns what it was given


class VirkitError(Exception):
    """A problem with what the user asked for (bad input, missing data, unsafe file).

    The CLI prints ``virkit: error: <message>`` on one line and exits with code 2; nothing is
    created or overwritten before such an error is raised. The message names the problem and
    the fix.
    """

    exit_code = 2


class NonFiniteLossError(VirkitError):
    """The training loss became NaN or Inf; the run stops and keeps its last good checkpoint."""

    exit_code = 3


def check_choice(kind: str, value: str, valid: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``valid``, else raise a VirkitError listing the names."""
    valid = list(valid)
    if value not in valid:
        raise VirkitError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")
    return value


def check_range(
    name: str,
    value: _Number,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> _Number:
    """Raise a VirkitError if ``value`` lies outside [low, high] (or the open variants)."""
    bad = False
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if value != value:  # NaN
        bad = True
    if bad:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = ("(" if low_open else "[") + f"{lo}, {hi}" + (")" if high_open else "]")
        raise VirkitError(f"{name}={value} is out of range; it must lie in {interval}{hint}")
    return value
