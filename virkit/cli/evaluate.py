"""``virkit evaluate``: its options (those that are :class:`virkit.evaluation.EvalSettings` fields
default to unset), the AutoAttack options and ``--attack-settings`` as per-attack overrides
(:func:`attack_overrides`), and the call of :func:`virkit.evaluation.evaluate_run` (a virkit run) or
:func:`virkit.evaluation.evaluate_source` (any other model)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from virkit.cli.common import Parser, epilog, fraction
from virkit.errors import VirkitError

__all__ = ["add_evaluate", "attack_overrides"]


def add_evaluate(sub: argparse._SubParsersAction[Parser]) -> None:
    from virkit.evaluation.settings import DEFAULT_ATTACKS, EvalSettings

    default = {f: EvalSettings.__dataclass_fields__[f].default for f in ("batch_size", "compile")}
    # the options that are EvalSettings fields default to None: unset, EvalSettings's own default
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model under attacks (a virkit run, module:callable, robustbench:NAME, a TorchScript file)",
        epilog=epilog(),
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
        type=fraction,
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


def attack_overrides(args: argparse.Namespace, attacks: list[str]) -> dict:
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
    overrides = attack_overrides(args, attacks)
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
