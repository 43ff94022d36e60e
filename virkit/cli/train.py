"""``virkit train``: its options (a :class:`virkit.training.TrainConfig` field each, unset ones
taking the preset's value) and the call of :func:`virkit.training.train`."""

from __future__ import annotations

import argparse
import os

from virkit.cli.common import Parser, epilog, fraction

__all__ = ["add_train"]


def add_train(sub: argparse._SubParsersAction[Parser]) -> None:
    from virkit.data import AUGMENTATIONS
    from virkit.training import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model with one method",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with one method. Unset options take the preset's value (paper: Sec. 5.1/5.3).",
    )
    from virkit.training import PRESETS

    p.add_argument(
        "--preset",
        default="paper",
        metavar="PRESET",
        help=f"{' | '.join(PRESETS)} (default: paper; docs/USAGE.md says what each is)",
    )
    p.add_argument("--method", help="training method (default vir-at)")
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-root", help="data folder (default: $VIRKIT_DATA, else ~/.cache/virkit/data)")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--test-subset", type=int)
    p.add_argument(
        "--holdout",
        type=int,
        help="validation images evaluated every epoch (best.pt is the best of them), carved from the training split",
    )
    p.add_argument(
        "--holdout-from",
        choices=["train", "test"],
        help="train (default): a validation split; test: held-out test images (the only choice before commit 61386ed)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument(
        "--lr-milestones",
        type=lambda s: tuple(int(v) for v in s.split(",") if v),
        help="comma-separated epochs after which lr is divided by 10, e.g. 75,90",
    )
    p.add_argument(
        "--lr-schedule",
        choices=["step", "onecycle"],
        help="step: lr/10 after each milestone (Sec. 5.1); onecycle: per step, linear up to --lr at "
        "--lr-peak of training, then linear to 0 (milestones dropped)",
    )
    p.add_argument("--lr-peak", type=float, help="onecycle: fraction of training at which lr peaks (default 0.3)")
    p.add_argument("--eps", type=fraction, help="L-inf radius, e.g. 8/255")
    p.add_argument("--step-size", type=fraction, help="training PGD step, e.g. 2/255")
    p.add_argument("--attack-steps", type=int)
    p.add_argument("--random-start", choices=["uniform", "normal", "none"])
    p.add_argument(
        "--reweight-start",
        type=int,
        help="first epoch (1-based) with instance weights (default: the method's own, docs/USAGE.md)",
    )
    p.add_argument(
        "--trades-forwards",
        type=int,
        choices=[2, 3],
        help="train-mode forwards per TRADES step: 3 (x, x', x) as trades.py (default) or 2",
    )
    p.add_argument("--alpha", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--gamma", type=float)
    p.add_argument("--trades-beta", type=float, help="1/lambda of TRADES-style losses, beta of MART")
    p.add_argument("--gairat-lambda", type=float)
    p.add_argument("--weight-logits", choices=["eval", "train"])
    p.add_argument("--weight-norm", choices=["none", "mean1"])
    p.add_argument("--batch-reduction", choices=["mean", "sum"])
    p.add_argument("--normalize", choices=["dataset", "none"])
    p.add_argument(
        "--augment",
        choices=list(AUGMENTATIONS),
        help="training augmentation (default crop-flip: random crop with zero padding 4 and a flip)",
    )
    p.add_argument("--device")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="training autocast (default auto: chosen by a timed calibration of the training step on "
        "this machine, cached; bf16 only where it measured faster); evaluation is always fp32",
    )
    p.add_argument(
        "--channels-last",
        nargs="?",
        const="on",
        choices=["auto", "on", "off"],
        help="NHWC memory format (default auto: chosen by the same calibration)",
    )
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_const",
        const="off",
        help="same as --channels-last off",
    )
    p.add_argument("--compile", action="store_const", const=True)
    p.add_argument(
        "--eval-attacks",
        type=lambda s: tuple(a for a in s.split(",") if a),
        help="attacks run after training (comma-separated; '' for none)",
    )
    p.add_argument("--eval-checkpoint", choices=["last", "best"])
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>-<method>-<preset>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument(
        "--from",
        dest="branch_from",
        metavar="RUN[@EPOCH]",
        help="start from another run's burn-in state (burnin.pt, after epoch reweight-start - 1) when "
        "both train the burn-in epochs identically, e.g. --method vir-at --from runs/vir-at-w1",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--progress", action="store_true", help="progress bar per epoch")
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on CUDA: SyncBatchNorm over the global batch instead of per-process "
        "BatchNorm (docs/SCALE_OUT.md)",
    )
    p.set_defaults(func=_cmd_train, _fields=[f for f in TrainConfig.__dataclass_fields__])


def _cmd_train(args) -> int:
    from virkit.training import resolve_config, train

    overrides = {k: getattr(args, k) for k in args._fields if hasattr(args, k) and k != "preset"}
    if overrides.get("channels_last") is not None:  # --channels-last auto|on|off
        overrides["channels_last"] = {"auto": None, "on": True, "off": False}[overrides["channels_last"]]
        if overrides["channels_last"] is None:
            overrides.pop("channels_last")
    cfg = resolve_config(args.preset, **overrides)
    out = train(
        cfg,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
        sync_bn=args.sync_bn or None,
        branch_from=args.branch_from,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, also under torchrun
        print(f"run directory: {out}")
    return 0
