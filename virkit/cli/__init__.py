"""Command line: ``virkit train | evaluate | export | report | notebooks | sweep | list``.

Every user error prints one line ``virkit: error: ...`` and exits with code 2, before anything is
created or overwritten.

:func:`build_parser` gathers the commands: ``train`` (:mod:`.train`), ``evaluate`` (:mod:`.evaluate`),
``export`` and ``report`` (:mod:`.results`), ``fetch`` and ``doctor`` (:mod:`.machine`), ``notebooks``
and ``sweep`` (their packages' ``add_cli``) and ``list``; :mod:`.common` holds what their parsers share.
"""

from __future__ import annotations

import argparse
import sys

from virkit.cli.common import Parser, epilog
from virkit.cli.evaluate import add_evaluate
from virkit.cli.machine import add_doctor, add_fetch
from virkit.cli.results import add_export, add_report
from virkit.cli.train import add_train
from virkit.errors import VirkitError

__all__ = ["main", "build_parser"]


def _add_list(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("list", help="list datasets, models, methods, presets and attacks")
    p.set_defaults(func=lambda a: print(epilog()) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="virkit",
        description=(
            "virkit: adversarial training with vulnerability-aware instance reweighting (VIR) and its baselines."
        ),
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from virkit.environment import __version__

    parser.add_argument("--version", action="version", version=f"virkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_evaluate(sub)
    add_export(sub)
    add_report(sub)
    add_fetch(sub)
    add_doctor(sub)
    from virkit import notebooks, sweep

    notebooks.add_cli(sub)
    sweep.add_cli(sub)
    _add_list(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except VirkitError as e:
        print(f"virkit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("virkit: interrupted", file=sys.stderr)
        return 130
