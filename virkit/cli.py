"""Command line: ``virkit train | evaluate | report | notebooks | sweep | list``.

Every user error prints one line ``virkit: error: ...`` and exits with code 2, before anything is
created or overwritten.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import VirkitError

__all__ = ["main", "build_parser"]


def _fraction(text: str) -> float:
    """Parse '8/255', '0.031' or '2/255'."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 8/255") from None


def _epilog() -> str:
    from .attacks import attack_names
    from .config import PRESETS
    from .data import DATASETS
    from .methods import METHODS
    from .models import MODELS
    lines = ["datasets: " + ", ".join(DATASETS), "models:   " + ", ".join(MODELS),
             "methods:  " + ", ".join(METHODS), "presets:  " + ", ".join(PRESETS),
             "attacks:  " + ", ".join(attack_names()),
             "several GPUs: torchrun --nproc-per-node N -m virkit train ... (batch size is global; docs/SCALE_OUT.md)"]
    return "\n".join(lines)


def _add_train(sub) -> None:
    from .config import TrainConfig
    p = sub.add_parser("train", help="train a model with one method", epilog=_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train with one method. Unset options take the preset's value (paper: Sec. 5.1/5.3).")
    p.add_argument("--preset", default="paper", help="paper | paper-wrn | quick | tiny (default: paper)")
    p.add_argument("--method", help="training method (default vir-at)")
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-root", help="data folder (default: $VIRKIT_DATA, else ~/.cache/virkit/data)")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--test-subset", type=int)
    p.add_argument("--holdout", type=int, help="held-out test images evaluated every epoch")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--lr-milestones", type=lambda s: tuple(int(v) for v in s.split(",") if v),
                   help="comma-separated epochs after which lr is divided by 10, e.g. 75,90")
    p.add_argument("--eps", type=_fraction, help="L-inf radius, e.g. 8/255")
    p.add_argument("--step-size", type=_fraction, help="training PGD step, e.g. 2/255")
    p.add_argument("--attack-steps", type=int)
    p.add_argument("--random-start", choices=["uniform", "normal", "none"])
    p.add_argument("--reweight-start", type=int, help="first epoch (1-based) with instance weights")
    p.add_argument("--alpha", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--gamma", type=float)
    p.add_argument("--trades-beta", type=float, help="1/lambda of TRADES-style losses, beta of MART")
    p.add_argument("--gairat-lambda", type=float)
    p.add_argument("--weight-logits", choices=["eval", "train"])
    p.add_argument("--weight-norm", choices=["none", "mean1"])
    p.add_argument("--batch-reduction", choices=["mean", "sum"])
    p.add_argument("--normalize", choices=["dataset", "none"])
    p.add_argument("--device")
    p.add_argument("--precision", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_const", const=True)
    p.add_argument("--compile", action="store_const", const=True)
    p.add_argument("--eval-attacks", type=lambda s: tuple(a for a in s.split(",") if a),
                   help="attacks run after training (comma-separated; '' for none)")
    p.add_argument("--eval-checkpoint", choices=["last", "best"])
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>-<method>-<preset>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--progress", action="store_true", help="progress bar per epoch")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on CUDA: SyncBatchNorm over the global batch instead of per-process "
                        "BatchNorm (docs/SCALE_OUT.md)")
    p.set_defaults(func=_cmd_train, _fields=[f for f in TrainConfig.__dataclass_fields__])


def _cmd_train(args) -> int:
    from .config import resolve_config
    from .trainer import train
    overrides = {k: getattr(args, k) for k in args._fields if hasattr(args, k) and k != "preset"}
    cfg = resolve_config(args.preset, **overrides)
    out = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=args.progress,
                sync_bn=args.sync_bn or None)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, also under torchrun
        print(f"run directory: {out}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint under attacks", epilog=_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory or .pt file")
    p.add_argument("--attacks", default="natural,fgsm,pgd100,cw", help="comma-separated attack names")
    p.add_argument("--n-examples", type=int,
                   help="a class-balanced subset of N test images, the same seeded draw as the trainer's "
                        "--test-subset (so a run's own eval.json is extended, not redone); default: the run's "
                        "test subset (all test images if it had none)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--which", choices=["best", "last"], default=None,
                   help="checkpoint in a run directory (default: the run's eval checkpoint, last unless set)")
    p.add_argument("--data-root")
    p.add_argument("--dataset", help="default: the checkpoint's dataset")
    p.add_argument("--eps", type=_fraction, default=None, help="default: the training eps")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=None, help="attacks' random seed (default: the run's seed)")
    p.add_argument("--out", help="eval.json path (default: beside the checkpoint)")
    p.add_argument("--replace", action="store_true",
                   help="if --out holds an evaluation with other settings, start anew (the old file is kept "
                        "as eval.prev.json); without it that is an error")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from .evaluate import evaluate_run
    from .runs import RunDir
    res = evaluate_run(args.checkpoint, args.attacks, which=args.which, n_examples=args.n_examples,
                       batch_size=args.batch_size, device=args.device, seed=args.seed, eps=args.eps,
                       dataset=args.dataset, data_root=args.data_root, out=args.out, replace=args.replace,
                       progress=sys.stderr.isatty())
    for name, r in res["attacks"].items():
        print(f"{name:>10s}: {100 * r['accuracy']:.2f}%  ({r['seconds']:.1f} s)")
    if res.get("worst_case"):
        print(f"{'worst case':>10s}: {100 * res['worst_case']['accuracy']:.2f}%")
    src = Path(args.checkpoint)
    out = Path(args.out) if args.out else RunDir(src if src.is_dir() else src.parent).eval_file
    print(f"written: {out} ({res['n_examples']} test images)")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="paper-style tables (mean ± std over seeds) from run directories")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--table", type=int, default=1, choices=range(1, 8), metavar="1..7")
    p.add_argument("--format", choices=["md", "csv"], default="md")
    p.add_argument("--out")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from .report import report_main
    return report_main(args.run_dirs, args.table, args.format, args.out) or 0


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list datasets, models, methods, presets and attacks")
    p.set_defaults(func=lambda a: print(_epilog()) or 0)


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors become one line ``virkit: error: ...`` (exit 2) like every other error."""

    def error(self, message):
        raise VirkitError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="virkit", description=(
        "virkit: adversarial training with vulnerability-aware instance reweighting (VIR) and its baselines."),
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"virkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_report(sub)
    from . import notebooks, sweep
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
