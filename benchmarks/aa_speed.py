"""Standard AutoAttack speed, side by side in one process: virkit (speed levers on), virkit with each
lever turned off (one at a time, or cumulatively), torchattacks' MultiAttack at the same budget, and the
official auto-attack code from a local copy.

Same model, same images, same budget for all (L-inf 8/255: APGD-CE 100 steps, APGD-T 9 targets x 100,
FAB-T 9 targets x 100, Square 5000 queries, each component only on the points still robust). Records
seconds per implementation (and per component where measurable), robust accuracy, the number of
per-example robust flags that differ from each reference, speed-up ratios, the environment and the
command line; JSON to ``--json`` (default ``benchmarks/results/cpu-aa-speed-<date>.json``) and
Markdown rows for BENCHMARKS.md on stderr.

    python benchmarks/aa_speed.py --checkpoint runs/RUN --official /tmp/official --n 100

Without ``--checkpoint`` a small-cnn is trained here with virkit's trainer (``quick`` preset, PGD AT,
``--train-epochs`` epochs). The images are the first ``--n`` of the seeded class-balanced draw of the
CIFAR-10 (stand-in) test split that ``benchmarks/bench.py`` uses (``subset(test, n, seed=1)``).
torchattacks and the official code are only imported (the installed wheel; the folder given by
``--official``), never copied; either is skipped with the reason when it cannot be imported.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from virkit.attacks.autoattack import AutoAttack  # noqa: E402
from virkit.data import load_dataset, subset  # noqa: E402
from virkit.environment import environment_record  # noqa: E402

#: the levers of virkit's AutoAttack (constructor keywords) and their "off" values
LEVERS = {
    "early_stop": False,
    "batch_targets": False,
    "reuse_logits": False,
    "inference_mode": False,
    "channels_last": False,
}
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def environment() -> dict:
    """The one environment record (:func:`virkit.environment.environment_record`) plus what this
    benchmark adds: whether oneDNN is there, torchattacks' version, and the cores and threads under
    the names earlier result files use (``cpu_count``, ``torch_threads``)."""
    env = {
        **environment_record(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    try:
        import torchattacks

        env["torchattacks"] = torchattacks.__version__
    except Exception:
        pass
    return env


# ---------------------------------------------------------------------------------------------
def get_model(args, device):
    if args.checkpoint:
        from virkit.models.checkpoint import load_checkpoint

        model, _ = load_checkpoint(args.checkpoint, device=device)
        return model.eval().float(), f"checkpoint {args.checkpoint}"
    from virkit.models.checkpoint import load_checkpoint
    from virkit.training.config import resolve_config
    from virkit.training.trainer import train

    out = Path(args.train_out)
    cfg = resolve_config(
        "quick",
        method="at",
        epochs=args.train_epochs,
        eval_attacks=("natural",),
        device=str(device),
        data_root=args.data_root,
    )
    t = time.perf_counter()
    run = train(cfg, out, reuse=True, log=lambda s: print(f"[train] {s}", file=sys.stderr, flush=True))
    model, _ = load_checkpoint(run, device=device)
    return model.eval().float(), (
        f"small-cnn trained here: virkit train --preset quick --method at --epochs "
        f"{args.train_epochs} ({time.perf_counter() - t:.0f} s, {run})"
    )


def get_images(args, device):
    test = load_dataset("cifar10", args.data_root, "test")
    n = min(args.n, len(test))
    s = subset(test, n, seed=1)  # the draw benchmarks/bench.py uses for its AutoAttack images
    x = s.float_images(torch.arange(n)).contiguous().to(device)
    return x, s.y[:n].to(device), test.source


@torch.no_grad()
def robust_flags(model, x, x_adv, y, bs) -> torch.Tensor:
    return torch.cat([model(x_adv[i : i + bs]).argmax(1) == y[i : i + bs] for i in range(0, len(y), bs)])


def timed(model, x, y, bs, fn, counter=None) -> dict:
    """Run ``fn(xb, yb) -> (x_adv_b, component_seconds or None)`` over the batches; seconds, flags."""
    comp: dict[str, float] = {}
    if counter is not None:
        counter.reset()
    c0 = time.process_time()
    t = time.perf_counter()
    outs = []
    for i in range(0, len(y), bs):
        xa, cs = fn(x[i : i + bs], y[i : i + bs])
        outs.append(xa.detach())
        for k, v in (cs or {}).items():
            comp[k] = comp.get(k, 0.0) + v
    dt = time.perf_counter() - t
    cpu = time.process_time() - c0
    x_adv = torch.cat(outs)
    left_training = model.training or (counter is not None and counter.training)
    model.eval()
    if counter is not None:
        counter.eval()
    flags = robust_flags(model, x, x_adv, y, bs)
    r = {
        "seconds": round(dt, 3),
        "cpu_seconds": round(cpu, 3),
        "robust_acc": float(flags.float().mean()),
        "n_robust": int(flags.sum()),
        "max_linf": float((x_adv - x).abs().amax()),
        "load_avg_after": load_average(),
    }
    if counter is not None:
        r["model_calls"] = counter.calls
        r["images_forward_with_grad"] = counter.grad_images
        r["images_forward_without_grad"] = counter.nograd_images
    if comp:
        r["component_seconds"] = {k: round(v, 3) for k, v in comp.items()}
    r["_flags"] = flags
    if left_training:
        r["left_training"] = True
    return r


class CountingModel(torch.nn.Module):
    """The model, counting the images it sees with and without autograd (a measure of work that
    other processes on the machine cannot disturb). Numerically the model itself."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.reset()

    def reset(self):
        self.grad_images = self.nograd_images = self.calls = 0

    def forward(self, z):
        self.calls += 1
        if torch.is_grad_enabled() and z.requires_grad:
            self.grad_images += z.shape[0]
        else:
            self.nograd_images += z.shape[0]
        return self.model(z)


def warm_up(model, x, y) -> None:
    """One-time costs (oneDNN's first calls, lazy initialisation) paid before any timing, alike for all:
    a forward and a backward of the model in both memory formats at a few batch sizes."""
    for b in sorted({1, max(len(y) // 4, 1), max(len(y) // 2, 1), len(y)}):
        for fmt in (torch.contiguous_format, torch.channels_last):
            z = x[:b].contiguous(memory_format=fmt).requires_grad_(True)
            torch.autograd.grad(model(z).sum(), z)


def virkit_runner(model, args, **levers):
    atk = AutoAttack(
        eps=args.eps,
        seed=args.seed,
        apgd_steps=args.apgd_steps,
        n_target_classes=args.n_targets,
        fab_steps=args.fab_steps,
        square_queries=args.square_queries,
        **levers,
    )

    def fn(xb, yb):
        xa = atk(model, xb, yb)
        return xa, dict(atk.timings)

    return atk, fn


def torchattacks_runner(model, args, k):
    import torchattacks

    ta = torchattacks.MultiAttack(
        [
            torchattacks.APGD(
                model, norm="Linf", eps=args.eps, steps=args.apgd_steps, n_restarts=1, loss="ce", seed=args.seed
            ),
            torchattacks.APGDT(
                model, norm="Linf", eps=args.eps, steps=args.apgd_steps, n_restarts=1, n_classes=k, seed=args.seed
            ),
            torchattacks.FAB(
                model,
                norm="Linf",
                eps=args.eps,
                steps=args.fab_steps,
                n_restarts=1,
                multi_targeted=True,
                n_classes=k,
                seed=args.seed,
            ),
            torchattacks.Square(
                model, norm="Linf", eps=args.eps, n_queries=args.square_queries, n_restarts=1, seed=args.seed
            ),
        ]
    )
    # torchattacks' APGDT / FAB attack n_classes - 1 targets: the standard 9 on CIFAR-10
    return lambda xb, yb: (ta(xb, yb), None)


def official_runner(model, args, path, device):
    sys.path.insert(0, str(Path(path).resolve()))
    from autoattack import AutoAttack as OfficialAA  # the user's local copy, imported, never copied

    log = Path(args.json_path).with_suffix(".official.log") if args.keep_official_log else None
    tmp_log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"aa_speed_official_{os.getpid()}.log"

    def fn(xb, yb):
        if tmp_log.exists():
            tmp_log.unlink()
        aa = OfficialAA(
            model,
            norm="Linf",
            eps=args.eps,
            version="standard",
            seed=args.seed,
            device=str(device),
            log_path=str(tmp_log),
            verbose=True,
        )
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = args.apgd_steps
        aa.fab.n_iter = args.fab_steps
        aa.square.n_queries = args.square_queries
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = args.n_targets
        with _quiet():
            xa = aa.run_standard_evaluation(xb, yb, bs=len(yb))
        return xa, _official_component_seconds(tmp_log)

    return fn


class _quiet:
    """Silence stdout (the official code prints its progress) while keeping it for errors."""

    def __enter__(self):
        self._old, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self._old


def _official_component_seconds(log: Path) -> dict | None:
    """Per-component seconds from the official log's 'robust accuracy after X: ... (total time T s)'
    lines (cumulative times; differences give each component's)."""
    try:
        text = log.read_text()
    except OSError:
        return None
    out, prev = {}, 0.0
    for name, total in re.findall(r"robust accuracy after ([A-Z-]+): .*?\(total time ([0-9.]+) s\)", text):
        out[name.lower()] = float(total) - prev
        prev = float(total)
    return out or None


# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="virkit run directory or .pt (default: train a small-cnn AT model here)")
    p.add_argument("--n", type=int, default=100, help="test images (default 100)")
    p.add_argument("--batch-size", type=int, help="images per attack call (default: all --n at once)")
    p.add_argument("--official", help="folder holding the official auto-attack package (skipped when absent)")
    p.add_argument("--json", help="result file (default benchmarks/results/cpu-aa-speed-<date>.json)")
    p.add_argument(
        "--ablation",
        choices=["one-off", "cumulative", "none"],
        default="one-off",
        help="virkit with each lever off alone (default), cumulatively off in turn, or not at all",
    )
    p.add_argument("--skip", default="", help="comma-separated: torchattacks, official, virkit-off (fast=False)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--data-root", default=os.environ.get("VIRKIT_DATA"), help="as virkit's --data-root")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apgd-steps", type=int, default=100, help="APGD-CE / APGD-T steps (standard 100)")
    p.add_argument("--fab-steps", type=int, default=100, help="FAB-T steps (standard 100)")
    p.add_argument("--square-queries", type=int, default=5000, help="Square queries (standard 5000)")
    p.add_argument("--n-targets", type=int, default=9, help="APGD-T / FAB-T targets (standard 9)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds: every implementation runs once per round, the order reversed every other round; "
        "seconds are the median over rounds (default 1)",
    )
    p.add_argument("--train-epochs", type=int, default=10, help="epochs when training the model here")
    p.add_argument("--train-out", default="runs/aa_speed_model", help="where the model trained here goes")
    p.add_argument("--keep-official-log", action="store_true")
    args = p.parse_args(argv)
    date = datetime.date.today().isoformat()
    args.json_path = args.json or str(ROOT / "benchmarks" / "results" / f"cpu-aa-speed-{date}.json")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    t_start = time.perf_counter()
    model, origin = get_model(args, device)
    for p_ in model.parameters():
        p_.requires_grad_(False)
    x, y, source = get_images(args, device)
    bs = args.batch_size or len(y)
    k = int(model(x[:1]).shape[1])
    standard = (args.apgd_steps, args.fab_steps, args.square_queries, args.n_targets) == (100, 100, 5000, 9)
    res = {
        "benchmark": "benchmarks/aa_speed.py",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/aa_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "env": environment(),
        "model": origin,
        "data": source,
        "n": len(y),
        "batch_size": bs,
        "eps": args.eps,
        "seed": args.seed,
        "standard_budget": standard,
        "budget": {
            "apgd_steps": args.apgd_steps,
            "n_targets": args.n_targets,
            "fab_steps": args.fab_steps,
            "square_queries": args.square_queries,
        },
        "load_avg_start": load_average(),
    }
    with torch.no_grad():
        res["natural_acc"] = float(robust_flags(model, x, x, y, bs).float().mean())
    warm_up(model, x, y)
    impl: dict[str, dict] = {}
    # eval mode for the wrapper too: the official code does not set it, and torchattacks restores the
    # mode it found (a new nn.Module is in training mode: BatchNorm would use and update batch statistics)
    cm = CountingModel(model).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    entries: list[tuple[str, object, str]] = []  # (name, fn, what), timed in alternating rounds

    atk, fn = virkit_runner(cm, args)
    res["virkit_settings"] = atk.describe() | {lv: getattr(atk, lv) for lv in (*LEVERS, "compact_every")}
    entries.append(("virkit", fn, "virkit AutoAttack, every speed lever on (the default)"))
    if args.ablation != "none":
        off: dict = {}
        for lever, value in LEVERS.items():
            levers = {**off, lever: value} if args.ablation == "cumulative" else {lever: value}
            if args.ablation == "cumulative":
                off = levers
            label = "+".join(levers) if args.ablation == "cumulative" else lever
            entries.append(
                (
                    f"virkit[{label}=off]",
                    virkit_runner(cm, args, **levers)[1],
                    f"virkit AutoAttack with {', '.join(levers)} off",
                )
            )
    if "virkit-off" not in args.skip:
        entries.append(
            (
                "virkit[fast=False]",
                virkit_runner(cm, args, fast=False)[1],
                "virkit AutoAttack with every lever off (fast=False): the code path before issue 14",
            )
        )
    if "torchattacks" in args.skip:
        impl["torchattacks"] = {"skipped": "--skip torchattacks"}
    else:
        try:
            entries.append(
                (
                    "torchattacks",
                    torchattacks_runner(cm, args, k),
                    "torchattacks MultiAttack(APGD-CE, APGD-T, FAB-T multi-targeted, Square) at the given "
                    "budget (as benchmarks/bench.py)",
                )
            )
        except Exception as e:
            impl["torchattacks"] = {"skipped": f"torchattacks not importable ({type(e).__name__}: {e})"}
    if "official" in args.skip or not args.official:
        impl["official"] = {"skipped": "--official PATH not given" if not args.official else "--skip official"}
    else:
        try:
            entries.append(
                (
                    "official",
                    official_runner(cm, args, args.official, device),
                    f"official auto-attack, version='standard' (budget set to the given one), from {args.official}",
                )
            )
        except Exception as e:
            impl["official"] = {
                "skipped": f"official AutoAttack not importable from {args.official} ({type(e).__name__}: {e})"
            }

    runs: dict[str, list[dict]] = {}
    for rnd in range(args.repeat):
        order = entries if rnd % 2 == 0 else entries[::-1]  # alternate the order between rounds
        for name, fn, what in order:
            if name in impl and "error" in impl[name]:
                continue
            print(f"[aa_speed] round {rnd + 1}/{args.repeat}: {name} ...", file=sys.stderr, flush=True)
            try:
                r = timed(model, x, y, bs, fn, cm)
            except Exception as e:
                impl[name] = {"error": f"{type(e).__name__}: {e}", "what": what}
                print(f"[aa_speed] {name} failed: {impl[name]['error']}", file=sys.stderr)
                continue
            changed = [k for k, v in model.state_dict().items() if not torch.equal(v, weights[k])]
            if changed or r.pop("left_training", False):
                r["warning"] = f"the model was left in training mode or its state changed ({changed[:3]}); restored"
                model.load_state_dict(weights)
                cm.eval()
                print(f"[aa_speed] {name}: {r['warning']}", file=sys.stderr)
            runs.setdefault(name, []).append(r)
            print(
                f"[aa_speed] {name}: {r['seconds']:.1f} s (cpu {r['cpu_seconds']:.1f} s), robust "
                f"{100 * r['robust_acc']:.1f}%, {r['images_forward_with_grad']} + {r['images_forward_without_grad']} "
                f"images forward (grad + no grad) {r.get('component_seconds', '')}",
                file=sys.stderr,
                flush=True,
            )
    for name, fn, what in entries:
        rs = runs.get(name)
        if not rs:
            continue
        r = dict(rs[0])
        r["what"] = what
        if len(rs) > 1:
            r["seconds_all"] = [q["seconds"] for q in rs]
            r["seconds"] = round(statistics.median(r["seconds_all"]), 3)
            r["cpu_seconds"] = round(statistics.median(q["cpu_seconds"] for q in rs), 3)
            if "component_seconds" in r:
                r["component_seconds"] = {
                    c: round(statistics.median(q["component_seconds"].get(c, 0.0) for q in rs), 3)
                    for c in r["component_seconds"]
                }
            r["flags_same_in_every_round"] = all(torch.equal(q["_flags"], rs[0]["_flags"]) for q in rs)
        impl[name] = r

    # agreement and ratios
    v = impl.get("virkit", {})
    for name, r in impl.items():
        if "_flags" not in r:
            continue
        for ref in ("torchattacks", "official", "virkit[fast=False]"):
            if ref != name and "_flags" in impl.get(ref, {}):
                r.setdefault("flags_differing_from", {})[ref] = int((r["_flags"] != impl[ref]["_flags"]).sum())
        if "seconds" in v and name != "virkit":
            r["virkit_speedup"] = round(r["seconds"] / v["seconds"], 3)
            r["robust_acc_diff_points_virkit_minus_this"] = round(100 * (v["robust_acc"] - r["robust_acc"]), 2)
    for r in impl.values():
        f = r.pop("_flags", None)
        if f is not None:
            r["robust"] = f.int().tolist()
    res["implementations"] = impl
    res["load_avg_end"] = load_average()
    res["seconds_total"] = round(time.perf_counter() - t_start, 1)
    res["markdown"] = markdown_rows(res)
    Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_path).write_text(json.dumps(res, indent=2) + "\n")
    print("\n".join(res["markdown"]))
    print(f"[aa_speed] wrote {args.json_path} ({res['seconds_total']:.0f} s)", file=sys.stderr)
    return res


def markdown_rows(res: dict) -> list[str]:
    impl, date = res["implementations"], res["date"][:10]
    dev = f"{res['env']['cpu']} ({res['env']['torch_threads']} threads)"
    head = [
        "| date | device | implementation | seconds | robust % | flags differing (torchattacks / official / "
        "virkit fast=False) | virkit speed-up | per component s (APGD-CE, APGD-T, FAB-T, Square) |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | --- |",
    ]
    rows = []
    for name, r in impl.items():
        if "seconds" not in r:
            rows.append(f"| {date} | {dev} | {name} | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        diff = r.get("flags_differing_from", {})
        d = " / ".join(str(diff.get(ref, "-")) for ref in ("torchattacks", "official", "virkit[fast=False]"))
        cs = r.get("component_seconds") or {}
        comp = ", ".join(f"{cs[c]:.1f}" if c in cs else "-" for c in COMPONENTS) if cs else "-"
        sp = f"{r['virkit_speedup']:.2f}x" if "virkit_speedup" in r else "-"
        rows.append(
            f"| {date} | {dev} | {name} | {r['seconds']:.1f} | {100 * r['robust_acc']:.1f} | {d} | {sp} | {comp} |"
        )
    note = (
        f"n={res['n']}, batch {res['batch_size']}, natural {100 * res['natural_acc']:.1f}%, "
        f"{'standard budget' if res['standard_budget'] else 'REDUCED budget ' + json.dumps(res['budget'])}, "
        f"model: {res['model']}; load avg {res['load_avg_start']} -> {res['load_avg_end']}"
    )
    return [note, *head, *rows]


if __name__ == "__main__":
    main()
