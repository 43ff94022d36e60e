"""Fingerprints of seeded ``tiny`` runs of every method, to show that a change of code leaves
training bit for bit as it was (the check behind a refactoring's "behaviour unchanged").

For each method it trains ``virkit train --preset tiny --method M --seed 0`` on the CPU through the
command line (the one interface every version of virkit shares), then hashes the run's history
(every number of every epoch, wall-clock fields left out), the per-class weights it logged and
the weights of last.pt and best.pt, tensor by tensor. Run it at two commits and compare:

    python benchmarks/run_fingerprints.py --out before.json          # at the old commit
    python benchmarks/run_fingerprints.py --out after.json           # at the new one
    python benchmarks/run_fingerprints.py --compare before.json after.json

The training data is whatever virkit finds (VIRKIT_DATA, the cache, a fetch); both sides must
read the same. Threads are pinned to 1 so that the CPU kernels are the same on both sides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = ("seconds", "images_per_s", "seconds_with_holdout")


def _history_hash(path: Path) -> tuple[str, list]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    weights = [r.get("weight_mean_per_class") for r in rows]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest(), weights


def _weights_hash(path: Path) -> str:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(methods: list[str], work: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = {}
    for m in methods:
        run = work / m
        cmd = [
            sys.executable,
            "-m",
            "virkit",
            "train",
            "--preset",
            "tiny",
            "--method",
            m,
            "--seed",
            "0",
            "--device",
            "cpu",
            "--out",
            str(run),
        ]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{m}: virkit train failed (exit {r.returncode}): {r.stderr.strip()[-400:]}")
        hist, weights = _history_hash(run / "history.jsonl")
        out[m] = {
            "history": hist,
            "weight_mean_per_class": weights,
            "last.pt": _weights_hash(run / "last.pt"),
            "best.pt": _weights_hash(run / "best.pt"),
        }
        print(
            f"{m:18s} history {hist[:12]}  last.pt {out[m]['last.pt'][:12]}  best.pt {out[m]['best.pt'][:12]}",
            flush=True,
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the fingerprints here (JSON)")
    p.add_argument("--methods", nargs="*", help="default: every method virkit registers")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two fingerprint files")
    a = p.parse_args()
    if a.compare:
        before, after = (json.loads(Path(f).read_text()) for f in a.compare)
        differ = [m for m in before if before[m] != after.get(m)]
        missing = sorted(set(before) ^ set(after))
        for m in before:
            print(f"{m:18s} {'identical' if m not in differ else 'DIFFERENT'}")
        if missing:
            print(f"only on one side: {', '.join(missing)}")
        return 1 if differ or missing else 0
    if not a.out:
        p.error("--out FILE (or --compare BEFORE AFTER)")
    methods = a.methods
    if not methods:
        # the methods registry: virkit.training.methods (virkit.methods before the package tree)
        probe = (
            "try:\n import virkit.training.methods as m\nexcept ImportError:\n import virkit.methods as m\n"
            "print(' '.join(m.METHODS))"
        )
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        methods = r.stdout.split()
    with tempfile.TemporaryDirectory() as d:
        doc = fingerprint(methods, Path(d))
    Path(a.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
