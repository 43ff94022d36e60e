#!/usr/bin/env python
"""bf16 autocast vs fp32 training on a short schedule: same robust accuracy within seed noise?

Trains ``resolve_config(preset, method=..., train_subset=N, epochs=E, precision=p, seed=s)`` for
p in (fp32, bf16) and the given seeds with :func:`virkit.trainer.train` (the real training loop,
held-out evaluation in fp32), then reports the last epoch's held-out natural and PGD accuracy per
run, the mean per precision, the seed-to-seed spread within each precision and the bf16 - fp32
difference of the means.

    python benchmarks/bf16_equivalence.py --device cpu --train-subset 4000 --epochs 4 --seeds 0,1
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

from virkit.config import resolve_config  # noqa: E402
from virkit.trainer import train  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--method", default="at")
    p.add_argument("--train-subset", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--holdout", type=int, default=1000)
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
    runs = []
    t_all = time.time()
    for prec in precs:
        for seed in seeds:
            over = dict(method=args.method, train_subset=args.train_subset, epochs=args.epochs, precision=prec,
                        seed=seed, device=args.device, holdout=args.holdout, eval_attacks=(),
                        data_root=args.data_root)
            if args.epochs < resolve_config(args.preset).reweight_start:
                over["reweight_start"] = args.epochs  # only validated for reweighted methods
            cfg = resolve_config(args.preset, **over)
            out = Path(args.out) / f"{args.method}-{prec}-s{seed}"
            load = os.getloadavg()
            t = time.time()
            train(cfg, out, overwrite=True, log=lambda s: print(f"[{prec} s{seed}] {s}", flush=True))
            hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines() if l.strip()]
            last = hist[-1]
            runs.append({"precision": prec, "seed": seed, "holdout_nat_acc": last["holdout_nat_acc"],
                         "holdout_pgd_acc": last["holdout_pgd_acc"], "train_loss": last["train_loss"],
                         "train_img_s_mean": statistics.mean(h["images_per_s"] for h in hist),
                         "wall_s": time.time() - t, "load_avg_before": [round(v, 2) for v in load],
                         "per_epoch": [{k: h[k] for k in ("epoch", "train_loss", "holdout_nat_acc", "holdout_pgd_acc",
                                                           "images_per_s")} for h in hist]})
    summary = {}
    for prec in precs:
        rs = [r for r in runs if r["precision"] == prec]
        summary[prec] = {k: {"mean": statistics.mean(r[k] for r in rs),
                             "spread": max(r[k] for r in rs) - min(r[k] for r in rs)}
                         for k in ("holdout_nat_acc", "holdout_pgd_acc")}
    verdict = {}
    if "fp32" in summary and "bf16" in summary:
        for k in ("holdout_nat_acc", "holdout_pgd_acc"):
            diff = summary["bf16"][k]["mean"] - summary["fp32"][k]["mean"]
            spread = max(summary["fp32"][k]["spread"], summary["bf16"][k]["spread"])
            verdict[k] = {"bf16_minus_fp32": diff, "max_seed_spread": spread, "within_seed_spread": abs(diff) <= spread}
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "torch": torch.__version__,
           "device": args.device, "threads": torch.get_num_threads(), "settings": vars(args), "runs": runs,
           "summary": summary, "verdict": verdict, "wall_s": time.time() - t_all}
    text = json.dumps(res, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    for r in runs:
        print(f"| {r['precision']} | {r['seed']} | {100 * r['holdout_nat_acc']:.1f} | "
              f"{100 * r['holdout_pgd_acc']:.1f} | "
              f"{r['train_loss']:.4f} | {r['train_img_s_mean']:.1f} |", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
