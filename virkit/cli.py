"""Command line: ``virkit train | evaluate | export | report | notebooks | sweep | list``.

Every user error prints one line ``virkit: error: ...`` and exits with code 2, before anything is
created or overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from virkit.errors import VirkitError

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


def _add_train(sub) -> None:
    from virkit.data import AUGMENTATIONS
    from virkit.training import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model with one method",
        epilog=_epilog(),
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
    p.add_argument("--eps", type=_fraction, help="L-inf radius, e.g. 8/255")
    p.add_argument("--step-size", type=_fraction, help="training PGD step, e.g. 2/255")
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


def _add_evaluate(sub) -> None:
    from virkit.evaluation.settings import DEFAULT_ATTACKS, EvalSettings

    default = {f: EvalSettings.__dataclass_fields__[f].default for f in ("batch_size", "compile")}
    # the options that are EvalSettings fields default to None: unset, EvalSettings's own default
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model under attacks (a virkit run, module:callable, robustbench:NAME, a TorchScript file)",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a model under attacks and write eval.json. --model takes a virkit run "
        "directory or checkpoint, module:callable (an nn.Module on [0,1] images; "
        "--weights FILE), robustbench:NAME (weights from --weights or "
        "<model-dir>/<dataset>/<threat-model>/NAME.pt; never downloads) or a TorchScript "
        "file. Several processes: torchrun --nproc-per-node N -m virkit evaluate ...",
    )
    p.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        required=True,
        metavar="SOURCE",
        help="run directory or .pt checkpoint, module:callable, robustbench:NAME or a TorchScript file",
    )
    p.add_argument(
        "--attacks",
        default=None,
        help=f"comma-separated attack names (default {','.join(DEFAULT_ATTACKS['Linf'])}; for --norm L2 "
        f"{','.join(DEFAULT_ATTACKS['L2'])})",
    )
    p.add_argument(
        "--norm",
        choices=["Linf", "L2"],
        default=None,
        help="threat model of every attack (default Linf; a robustbench model: its --threat-model)",
    )
    p.add_argument(
        "--eps",
        type=_fraction,
        default=None,
        help="radius (default: the run's training eps; outside models 8/255 for Linf, 0.5 for L2)",
    )
    p.add_argument(
        "--aa-version",
        choices=["standard", "plus", "rand"],
        default=None,
        help="AutoAttack version of the attack 'aa' (also the names aa-plus, aa-rand)",
    )
    p.add_argument(
        "--aa-components",
        default=None,
        metavar="LIST",
        help="AutoAttack with these components (custom version), e.g. apgd-ce,square; from "
        "apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t",
    )
    p.add_argument(
        "--aa-individual",
        action="store_true",
        help="run every AutoAttack component on every point and report each (individual mode)",
    )
    p.add_argument(
        "--attack-settings",
        default=None,
        metavar="JSON",
        help='settings replacing the presets\' per attack, e.g. \'{"aa": {"apgd_steps": 10}}\'',
    )
    p.add_argument(
        "--n-examples",
        type=int,
        help="a class-balanced subset of N test images, the same seeded draw as the trainer's "
        "--test-subset (so a run's own eval.json is extended, not redone); default: the run's "
        "test subset (all test images if it had none; all for outside models)",
    )
    p.add_argument("--batch-size", type=int, default=None, help=f"default {default['batch_size']}")
    p.add_argument(
        "--which",
        choices=["best", "last"],
        default=None,
        help="checkpoint in a run directory (default: the run's eval checkpoint, last unless set)",
    )
    p.add_argument("--data-root")
    p.add_argument("--dataset", help="default: the checkpoint's dataset; outside models: cifar10")
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="state dict for module:callable or robustbench:NAME (.safetensors, or .pt read with weights_only=True)",
    )
    p.add_argument(
        "--threat-model",
        choices=["Linf", "L2"],
        default=None,
        help="robustbench:NAME: which of RobustBench's model zoos (default: --norm, else Linf)",
    )
    p.add_argument(
        "--model-dir",
        default="./models",
        help="RobustBench's weights folder: <model-dir>/<dataset>/<threat-model>/NAME.pt (default ./models)",
    )
    p.add_argument(
        "--normalize",
        metavar="MEAN,STD",
        default=None,
        help="wrap a model that expects normalized inputs: MEAN,STD, per-channel means then stds, or "
        "cifar10 | cifar100 | imagenet",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="the model returns probabilities: attack log-probabilities (logits with the same softmax)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=None, help="attacks' random seed (default: the run's seed; else 0)")
    p.add_argument(
        "--out",
        help="eval.json path (default: beside the checkpoint; outside models: "
        "runs/eval/<source>-<dataset>-<norm>/eval.json)",
    )
    p.add_argument(
        "--save-adv",
        metavar="DIR",
        default=None,
        help="write each attack's adversarial examples to DIR/<attack>/adversarial.safetensors",
    )
    p.add_argument(
        "--save-adv-png", action="store_true", default=None, help="with --save-adv: one PNG per adversarial image too"
    )
    p.add_argument(
        "--replace",
        action="store_true",
        default=None,
        help="if --out holds an evaluation with other settings, start anew (the old file is kept "
        "as eval.prev.json); without it that is an error",
    )
    p.add_argument(
        "--allow-tf32",
        action="store_true",
        default=None,
        help="CUDA: TF32 matmuls and convolutions (faster, 10-bit mantissas); default off, the evaluation "
        "is fp32; recorded in eval.json",
    )
    p.add_argument(
        "--compile",
        choices=["off", "on", "cudagraphs"],
        default=None,
        help="attack a torch.compile'd model (on), with CUDA graphs (cudagraphs, CUDA only); default "
        f"{default['compile']}; eval.json's runtime.compile says what ran",
    )
    p.set_defaults(func=_cmd_evaluate)


def _attack_overrides(args, attacks: list[str]) -> dict:
    import json

    from virkit.attacks import is_autoattack

    overrides: dict = {}
    if args.attack_settings:
        try:
            overrides = json.loads(args.attack_settings)
        except ValueError as e:
            raise VirkitError(f'--attack-settings is not JSON ({e}); e.g. \'{{"aa": {{"apgd_steps": 10}}}}\'') from None
        if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
            raise VirkitError('--attack-settings must map attack names to settings, e.g. \'{"pgd100": {"steps": 20}}\'')
    aa = {}
    if args.aa_version:
        aa["version"] = args.aa_version
    if args.aa_components:
        from virkit.attacks.autoattack import component_list

        try:
            aa.update(version="custom", components=list(component_list(args.aa_components)))
        except ValueError as e:
            raise VirkitError(f"--aa-components: {e}") from None
    if args.aa_individual:
        aa["individual"] = True
    for a in attacks:
        if aa and is_autoattack(a):
            overrides[a] = {**overrides.get(a, {}), **aa}
    if aa and not any(is_autoattack(a) for a in attacks):
        raise VirkitError(
            "--aa-version/--aa-components/--aa-individual need an AutoAttack in --attacks (aa, aa-plus or aa-rand)"
        )
    return overrides


def _cmd_evaluate(args) -> int:
    from virkit import distributed
    from virkit.evaluation import (
        DEFAULT_ATTACKS,
        EvalSettings,
        attack_list,
        classify,
        default_out,
        evaluate_run,
        evaluate_source,
        source_slug,
    )

    norm = args.norm or (args.threat_model if args.model.startswith("robustbench:") else None) or "Linf"
    attacks = attack_list(args.attacks or DEFAULT_ATTACKS[norm])
    kind = classify(args.model)
    overrides = _attack_overrides(args, attacks)
    if kind != "virkit":
        for flag, value in (("--which", args.which),):
            if value:
                raise VirkitError(f"{flag} is for virkit runs; {args.model} is a {kind} model")
    elif args.weights or args.normalize or args.probabilities or args.threat_model:
        raise VirkitError(
            "--weights, --normalize, --probabilities and --threat-model are for outside models; "
            f"{args.model} is a virkit run or checkpoint"
        )
    given = dict(
        eps=args.eps,
        seed=args.seed,
        batch_size=args.batch_size,
        n_examples=args.n_examples,
        replace=args.replace,
        save_adv=args.save_adv,
        save_adv_png=args.save_adv_png,
        allow_tf32=args.allow_tf32,
        compile=args.compile,
    )  # None: not given, EvalSettings's default
    settings = EvalSettings(
        attacks,
        norm=norm,
        attack_overrides=overrides,
        progress=sys.stderr.isatty(),
        **{k: v for k, v in given.items() if v is not None},
    )
    dist = distributed.setup(args.device) if distributed.launched_by_torchrun() else distributed.DistContext()
    common = dict(device=args.device, data_root=args.data_root, out=args.out, dist=dist)
    try:
        if kind == "virkit":
            res = evaluate_run(args.model, settings, which=args.which, dataset=args.dataset, **common)
        else:
            res = evaluate_source(
                args.model,
                settings,
                weights=args.weights,
                dataset=args.dataset or "cifar10",
                threat_model=args.threat_model,
                model_dir=args.model_dir,
                normalize=args.normalize,
                probabilities=args.probabilities,
                **common,
            )
    finally:
        dist.close()
    if not dist.is_main:
        return 0
    for name, r in res["attacks"].items():
        uint8 = f", {100 * r['uint8']['accuracy']:.2f}% as 8-bit images" if "uint8" in r and args.save_adv else ""
        print(f"{name:>10s}: {100 * r['accuracy']:.2f}%  ({r['seconds']:.1f} s{uint8})")
    if res.get("worst_case"):
        print(f"{'worst case':>10s}: {100 * res['worst_case']['accuracy']:.2f}%")
    if args.out:
        out = Path(args.out)
    elif kind == "virkit":
        from virkit.runs import RunDir

        src = Path(args.model)
        out = RunDir(src if src.is_dir() else src.parent).eval_file
    else:
        out = default_out(source_slug(args.model), args.dataset or "cifar10", norm)
    print(f"written: {out} ({res['n_examples']} test images)")
    if args.save_adv:
        print(
            f"adversarial examples: {args.save_adv}/<attack>/adversarial.safetensors "
            "(virkit.evaluation.evaluate.load_adversarial)"
        )
    return 0


def _add_export(sub) -> None:
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


def _add_report(sub) -> None:
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


def _add_fetch(sub) -> None:
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


def _add_doctor(sub) -> None:
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


def _cmd_report_html(args) -> int:
    from virkit.paper import write_html_report

    print(f"written: {write_html_report(args.run_dirs, args.html, checkpoint=args.checkpoint)}")
    return 0


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list datasets, models, methods, presets and attacks")
    p.set_defaults(func=lambda a: print(_epilog()) or 0)


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors become one line ``virkit: error: ...`` (exit 2) like every other error."""

    def error(self, message):
        raise VirkitError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="virkit",
        description=(
            "virkit: adversarial training with vulnerability-aware instance reweighting (VIR) and its baselines."
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from virkit.environment import __version__

    parser.add_argument("--version", action="version", version=f"virkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_report(sub)
    _add_fetch(sub)
    _add_doctor(sub)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
