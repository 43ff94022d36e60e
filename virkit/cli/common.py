"""What every command's parser shares: eps-like fractions (``8/255``), the epilog listing datasets,
models, methods, presets and attacks, and the parser whose usage errors are one line."""

from __future__ import annotations

import argparse
from typing import NoReturn

from virkit.errors import VirkitError

__all__ = ["fraction", "epilog", "Parser"]


def fraction(text: str) -> float:
    """Parse '8/255', '0.031' or '2/255'."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 8/255") from None


def epilog() -> str:
    from virkit.attacks import attack_names
    from virkit.data import DATASETS
    from virkit.models import MODELS
    from virkit.training import METHODS, PRESETS

    lines = [
        "datasets: " + ", ".join(DATASETS),
        "models:   " + ", ".join(MODELS),
        "methods:  " + ", ".join(METHODS),
        "presets:  " + ", ".join(PRESETS),
        "attacks:  " + ", ".join(attack_names()),
        "several GPUs: torchrun --nproc-per-node N -m virkit train ... (batch size is global; docs/SCALE_OUT.md)",
    ]
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """argparse's usage errors become one line ``virkit: error: ...`` (exit 2) like every other error."""

    def error(self, message: str) -> NoReturn:
        raise VirkitError(f"{message} (see '{self.prog} --help')")
