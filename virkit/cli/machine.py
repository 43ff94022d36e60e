"""What lives on this machine: ``virkit fetch`` (a dataset into the data folder ahead of its first
use) and ``virkit doctor`` (versions, device, speed calibration, datasets and caches)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from virkit.cli.common import Parser

__all__ = ["add_fetch", "add_doctor"]


def add_fetch(sub: argparse._SubParsersAction[Parser]) -> None:
    from virkit.data import FETCHABLE

    p = sub.add_parser(
        "fetch",
        help="download a dataset into the data folder now (otherwise fetched on first use)",
        description="Download a dataset's official archive (checksum verified) and unpack it into the "
        "data folder. Every command does this on first use; this one does it ahead of "
        "time. VIRKIT_DATA_MIRROR=URL fetches from a mirror instead.",
    )
    p.add_argument("dataset", choices=list(FETCHABLE))
    p.add_argument("--data-root", help="data folder (default: $VIRKIT_DATA, else ~/.cache/virkit/data)")
    p.set_defaults(func=_cmd_fetch)


def _cmd_fetch(args) -> int:
    from virkit.data import data_root, ensure_dataset, is_present

    root = data_root(args.data_root)
    if is_present(args.dataset, root):
        print(f"{args.dataset} is already under {root}")
        return 0
    ensure_dataset(args.dataset, root)
    return 0


def add_doctor(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="versions, device, speed calibration, datasets and caches: one screen for a bug report",
        description="Print what virkit sees on this machine (in the spirit of torch.utils.collect_env); "
        "changes nothing unless --calibrate.",
    )
    p.add_argument("--data-root", help="data folder to inspect (default: $VIRKIT_DATA, else ~/.cache/virkit/data)")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the demo's training step now (fp32/bf16 x contiguous/channels_last) and cache it",
    )
    p.add_argument("--json", action="store_true", help="the same as JSON")
    p.add_argument(
        "--no-network",
        dest="network",
        action="store_false",
        help="skip the reachability check of the mirror or the official hosts",
    )
    p.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args) -> int:
    from virkit.doctor import main as doctor_main

    return doctor_main(args.data_root, args.calibrate, args.json, args.network)
