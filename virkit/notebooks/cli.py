"""``virkit notebooks run|list`` (and ``python -m virkit.notebooks``)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from virkit.errors import VirkitError
from virkit.notebooks.parameters import list_notebooks, notebook_dir, notebook_parameters, parse_parameter_value
from virkit.notebooks.presets import NOTEBOOK_PRESETS, preset_settings
from virkit.notebooks.runner import execute_one, run_notebooks
from virkit.notebooks.tiers import default_demo_preset

__all__ = ["add_cli", "main"]


def _param_pair(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    k, v = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k.strip()):
        raise argparse.ArgumentTypeError(f"{k!r} is not a parameter name")
    return k.strip(), parse_parameter_value(v)


def _preset(args, measure: bool = False) -> str:
    """``--preset``, else the demo tier this machine runs in 10 minutes (said in one line). Only
    ``run`` measures the machine for it (``measure``); ``list`` and ``gallery`` take the tier the last
    measurement chose, else the largest."""
    args.tier_why = None
    if args.preset is None:
        if measure:
            args.preset, args.tier_why = default_demo_preset(
                getattr(args, "train_jobs", None), log=lambda m: print(m, flush=True)
            )
        else:
            args.preset, args.tier_why = default_demo_preset(measure=False)
        print(f"virkit notebooks: preset {args.preset!r} ({args.tier_why}; --preset NAME chooses)", flush=True)
    return args.preset


def _cmd_run(args) -> int:
    from virkit.notebooks.runner import ensure_preset_data

    if args.preset is None:  # the data first: a machine without data or network stops before measuring
        ensure_preset_data("demo")
    return run_notebooks(
        preset=_preset(args, measure=True),
        only=args.only,
        jobs=args.jobs,
        out_root=args.out_root,
        fig_root=args.fig_root,
        parameters_override=dict(args.param or []),
        folder=args.notebook_dir,
        timeout=args.timeout,
        threads=args.threads,
        train_jobs=args.train_jobs,
        tier_why=args.tier_why,
    )


def _cmd_gallery(args) -> int:
    from virkit.notebooks.gallery import make_gallery

    dest = make_gallery(_preset(args), args.fig_root, args.out_root)
    print(f"gallery written to {dest} (PROVENANCE.md says where the figures come from)")
    return 0


def _cmd_list(args) -> int:
    nbs = list_notebooks(args.notebook_dir)
    s = preset_settings(_preset(args))
    print(
        f"notebooks ({notebook_dir() if not args.notebook_dir else args.notebook_dir}); values for preset "
        f"{args.preset!r}: {s['description']}"
    )
    for nb in nbs:
        print(f"\n{nb.stem}")
        preset_vals = s["notebooks"].get(nb.stem, {})
        for p in notebook_parameters(nb).values():
            val = preset_vals.get(p.name, p.default)
            if p.name == "preset":
                val = args.preset
            print(f"  {p.name:20s} {p.type_name:6s} {val!r:28s} {p.help}")
    print("\npresets: " + ", ".join(f"{k} ({v['description']})" for k, v in NOTEBOOK_PRESETS.items()))
    return 0


def add_cli(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Register ``notebooks run`` and ``notebooks list`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "notebooks",
        help="execute the notebooks with papermill and index their figures",
        description="Execute notebooks/NN_*.ipynb with papermill (figures under "
        "figures/<preset>/, executed copies under runs/notebooks/<preset>/).",
    )
    sub = p.add_subparsers(dest="notebooks_command", required=True)
    r = sub.add_parser("run", help="execute notebooks (all, or --only NAMES)")
    r.add_argument(
        "--preset",
        default=None,
        choices=list(NOTEBOOK_PRESETS),
        help="the trainer preset every run uses (virkit train --preset NAME trains the same; 'virkit "
        "notebooks list' describes each). Default: the largest demo tier "
        "this machine is expected to finish in 10 minutes, from a timed calibration of its training "
        "step",
    )
    r.add_argument(
        "--only",
        default=None,
        metavar="NAMES",
        help="comma-separated notebook names, stems or numbers, e.g. 01,03 or weight_explorer",
    )
    r.add_argument("--jobs", type=int, default=1, metavar="N", help="notebooks executed in parallel (default 1)")
    r.add_argument(
        "-p",
        "--param",
        action="append",
        type=_param_pair,
        metavar="NAME=VALUE",
        help="override a notebook parameter (repeatable), e.g. -p seed=1 -p method=vir-trades",
    )
    r.add_argument(
        "--out-root", default="runs/notebooks", help="executed notebooks and shared runs (default runs/notebooks)"
    )
    r.add_argument("--fig-root", default="figures", help="figures and index (default figures)")
    r.add_argument("--notebook-dir", default=None, help="folder with the source notebooks (default: the repo's)")
    r.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads per notebook kernel (default: torch's choice; cores/jobs with --jobs > 1); "
        "1 is much faster on a CPU busy with other work",
    )
    r.add_argument(
        "--train-jobs",
        type=int,
        default=None,
        metavar="N",
        help="before the notebooks, train the preset's shared runs N at a time, cores/N threads each "
        "(default: one per core without a GPU, else 1); only when every notebook runs",
    )
    r.set_defaults(func=_cmd_run)
    g = sub.add_parser(
        "gallery",
        help="copy the key figures of the last batch run into figures/gallery/ (tracked), with its provenance",
    )
    g.add_argument("--preset", default=None, choices=list(NOTEBOOK_PRESETS), help="default: as notebooks run")
    g.add_argument("--out-root", default="runs/notebooks")
    g.add_argument("--fig-root", default="figures")
    g.set_defaults(func=_cmd_gallery)
    ls = sub.add_parser("list", help="list notebooks and their parameters")
    ls.add_argument("--preset", default=None, choices=list(NOTEBOOK_PRESETS), help="default: as notebooks run")
    ls.add_argument("--notebook-dir", default=None)
    ls.set_defaults(func=_cmd_list)
    return p


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    """``python -m virkit.notebooks run ...``; also accepts an already parsed namespace."""
    if isinstance(argv, argparse.Namespace):
        return int(argv.func(argv) or 0)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--train-one"]:
        from virkit.notebooks.prepare import train_one

        print(json.dumps(train_one(json.loads(argv[1]))))
        return 0
    if argv[:1] == ["--exec-one"]:
        spec = json.loads(argv[1])
        status, err = execute_one(spec["nb"], spec["out"], spec["parameters"], spec["cwd"], spec["timeout"])
        print(json.dumps({"status": status, "error": err}))
        return 0
    parser = argparse.ArgumentParser(prog="python -m virkit.notebooks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(["notebooks", *argv] if argv[:1] != ["notebooks"] else argv)
    try:
        return int(args.func(args) or 0)
    except VirkitError as e:
        print(f"virkit: error: {e}", file=sys.stderr)
        return e.exit_code
