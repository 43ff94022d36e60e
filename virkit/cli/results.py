"""What becomes of finished runs: ``virkit export`` (a run for RobustBench) and ``virkit report``
(paper-style tables over seeds, or ``--html``: one visual page of any evaluations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from virkit.cli.common import Parser

__all__ = ["add_export", "add_report"]


def add_export(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "export",
        help="export a run for RobustBench (state dict in its key layout + model info)",
        description="Write a run's weights in RobustBench's key layout (WideResNet-34-10/-28-10, "
        "PreActResNet-18) and a model-info JSON with RobustBench's fields filled from the "
        "run's eval.json.",
    )
    p.add_argument("run", help="run directory (or checkpoint)")
    p.add_argument("--format", choices=["robustbench"], default="robustbench")
    p.add_argument("--out", default=None, help="folder (default <run>/export-robustbench)")
    p.add_argument("--name", default=None, help="model name (default: the run directory's name)")
    p.add_argument("--which", choices=["best", "last"], default=None, help="checkpoint (default: the run's eval one)")
    p.add_argument("--eval", dest="eval_file", default=None, help="eval.json to read (default: the run's)")
    p.add_argument(
        "--allow-subset",
        action="store_true",
        help="fill autoattack_acc from fewer than the full test set or a reduced AutoAttack budget; the "
        "footnote says so",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from virkit.evaluation import export_robustbench

    res = export_robustbench(
        args.run, args.out, name=args.name, which=args.which, eval_file=args.eval_file, allow_subset=args.allow_subset
    )
    for k, v in res.items():
        print(f"{k}: {v}")
    return 0


def add_report(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "report",
        help="paper-style tables (mean ± std over seeds) from run directories; --html: a "
        "visual report of any evaluation",
    )
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--table", type=int, default=1, choices=range(1, 8), metavar="1..7")
    p.add_argument("--format", choices=["md", "csv"], default="md")
    p.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        help="numbers of this checkpoint (default: each run's eval.json, its eval checkpoint)",
    )
    p.add_argument(
        "--attacks",
        metavar="LIST",
        help="columns instead of the paper's, as eval.json names them, e.g. natural,pgd20,aa,worst_case",
    )
    p.add_argument(
        "--paired-with",
        metavar="METHOD",
        help="each run minus METHOD's run of the same seed (percentage points; runs sharing a burn-in "
        "with it, e.g. VIR-AT's controls, differ by their reweighted epochs only)",
    )
    p.add_argument("--out")
    p.add_argument(
        "--html",
        metavar="OUT",
        help="instead of a table, write one self-contained HTML page (figures embedded) for the runs or "
        "eval.json files given, side by side",
    )
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    if args.html:
        return _cmd_report_html(args)
    from virkit.paper import report_main

    return (
        report_main(args.run_dirs, args.table, args.format, args.out, args.checkpoint, args.attacks, args.paired_with)
        or 0
    )


def _cmd_report_html(args) -> int:
    from virkit.paper import write_html_report

    print(f"written: {write_html_report(args.run_dirs, args.html, checkpoint=args.checkpoint)}")
    return 0
