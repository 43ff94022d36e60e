#!/usr/bin/env python
"""bf16 autocast vs fp32 training on a short schedule: same robust accuracy within seed noise?

Trains ``resolve_config(preset, method=m, precision=p, seed=s)`` for p in (fp32, bf16), the given
methods and seeds with :func:`virkit.training.trainer.train` (the real training loop; held-out and final
evaluation in fp32), then reports each run's last-epoch held-out accuracies and, with
``--eval-attacks``, its final evaluation on the preset's class-balanced test images; the mean per
precision, the seed-to-seed spread within each precision and the bf16 - fp32 difference of the means.
``--train-subset`` and ``--epochs`` default to the preset's.

Issue 12's check on the demo's own runs (where the CPU runs bf16 natively, bf16 is the demo's
training default; on other CPUs bf16 is emulated and about 12x slower):

    python benchmarks/bf16_equivalence.py --preset demo --methods at,vir-at --seeds 0,1,2 \
        --eval-attacks natural,pgd10 --json benchmarks/results/bf16-equivalence-demo-DATE.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from virkit.training.config import resolve_config  # noqa: E402
from virkit.training.trainer import train  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--methods", "--method", default="at", help="comma-separated, e.g. at,vir-at")
    p.add_argument("--train-subset", type=int, help="default: the preset's")
    p.add_argument("--epochs", type=int, help="default: the preset's")
    p.add_argument("--holdout", type=int, default=1000)
    p.add_argument(
        "--holdout-pgd-steps",
        type=int,
        default=10,
        help="per-epoch held-out PGD steps (the demo preset turns it off; this check wants it)",
    )
    p.add_argument(
        "--eval-attacks",
        default="",
        help="final evaluation (fp32, the preset's test_subset), e.g. natural,pgd10; default none",
    )
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bf16"))
    p.add_argument("--json")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (a loaded shared CPU runs faster with 1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    precs = [s for s in args.precisions.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    attacks = tuple(a for a in args.eval_attacks.split(",") if a)
    base = resolve_config(args.preset)
    epochs = args.epochs or base.epochs
    runs = []
    t_all = time.time()
    for method in methods:
        for prec in precs:
            for seed in seeds:
                over = dict(
                    method=method,
                    train_subset=args.train_subset or base.train_subset,
                    epochs=epochs,
                    precision=prec,
                    seed=seed,
                    device=args.device,
                    holdout=args.holdout,
                    holdout_pgd_steps=args.holdout_pgd_steps,
                    eval_attacks=attacks,
                    data_root=args.data_root,
                )
                if epochs < base.reweight_start:
                    over["reweight_start"] = epochs  # only validated for reweighted methods
                cfg = resolve_config(args.preset, **over)
                out = Path(args.out) / f"{method}-{prec}-s{seed}"
                load = os.getloadavg()
                t = time.time()
                train(cfg, out, overwrite=True, log=lambda s: print(f"[{method} {prec} s{seed}] {s}", flush=True))
                hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines() if l.strip()]
                last = hist[-1]
                r = {
                    "method": method,
                    "precision": prec,
                    "seed": seed,
                    "holdout_nat_acc": last["holdout_nat_acc"],
                    "holdout_pgd_acc": last["holdout_pgd_acc"],
                    "train_loss": last["train_loss"],
                    "train_img_s_mean": statistics.mean(h["images_per_s"] for h in hist),
                    "wall_s": time.time() - t,
                    "load_avg_before": [round(v, 2) for v in load],
                    "config_precision": json.loads((out / "config.json").read_text()).get("precision"),
                    "per_epoch": [
                        {k: h[k] for k in ("epoch", "train_loss", "holdout_nat_acc", "holdout_pgd_acc", "images_per_s")}
                        for h in hist
                    ],
                }
                if attacks:
                    ev = json.loads((out / "eval.json").read_text())
                    r["n_test"] = ev["n_examples"]
                    r.update({f"test_{a}_acc": ev["attacks"][a]["accuracy"] for a in attacks})
                runs.append(r)
    keys = ["holdout_nat_acc", "holdout_pgd_acc", *[f"test_{a}_acc" for a in attacks]]
    summary, verdict = {}, {}
    for method in methods:
        for prec in precs:
            rs = [r for r in runs if r["precision"] == prec and r["method"] == method]
            summary[f"{method}/{prec}"] = {
                k: {"mean": statistics.mean(r[k] for r in rs), "spread": max(r[k] for r in rs) - min(r[k] for r in rs)}
                for k in keys
            }
        if "fp32" in precs and "bf16" in precs:
            f, b = summary[f"{method}/fp32"], summary[f"{method}/bf16"]
            verdict[method] = {}
            for k in keys:
                diff = b[k]["mean"] - f[k]["mean"]
                spread = max(f[k]["spread"], b[k]["spread"])
                verdict[method][k] = {
                    "bf16_minus_fp32": diff,
                    "max_seed_spread": spread,
                    "within_seed_spread": abs(diff) <= spread,
                }
    from virkit.devices import cpu_has_native_bf16, cpu_name

    res = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": args.device,
        "cpu": cpu_name(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "runs": runs,
        "summary": summary,
        "verdict": verdict,
        "wall_s": time.time() - t_all,
    }
    text = json.dumps(res, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    for r in runs:  # BENCHMARKS.md rows: method, precision, seed, accuracies in %, last train loss, img/s
        accs = " | ".join(f"{100 * r[k]:.1f}" for k in keys)
        print(
            f"| {r['method']} | {r['precision']} | {r['seed']} | {accs} | "
            f"{r['train_loss']:.4f} | {r['train_img_s_mean']:.1f} |",
            file=sys.stderr,
        )
    return res


if __name__ == "__main__":
    main()
