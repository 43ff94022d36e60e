"""Running a grid (:func:`run_grid`) and ``virkit sweep`` (:func:`add_cli`)."""

from __future__ import annotations

import argparse
import fnmatch
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virkit.errors import VirkitError
from virkit.sweep.backends import import_ray, run_local, run_ray
from virkit.sweep.grid import Grid, expand, load_grid
from virkit.sweep.results import write_results
from virkit.sweep.trial import finished_eval, injection, plan_trial

__all__ = ["BACKENDS", "run_grid", "add_cli"]

BACKENDS = ("local", "ray")


def run_grid(
    grid: str | os.PathLike | dict | Grid,
    backend: str = "local",
    out: str | os.PathLike | None = None,
    jobs: int | None = None,
    address: str | None = None,
    sets: list[str] | dict | None = None,
    only: list[str] | None = None,
    timeout: float | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Run every trial of ``grid`` not yet finished; write ``results.json``/``results.md`` in ``out``
    (default ``runs/sweeps/<grid name>``) and return the results document."""
    log = log or (lambda s: None)
    if backend not in BACKENDS:
        raise VirkitError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise VirkitError("--address is for --backend ray")
    if jobs is not None and jobs < 1:
        raise VirkitError(f"--jobs={jobs} must be at least 1")
    if timeout is not None and timeout <= 0:
        raise VirkitError(f"--timeout={timeout} must be positive (seconds)")
    g = grid if isinstance(grid, Grid) else load_grid(grid, sets)
    if backend == "ray" and not dry_run:
        import_ray()  # fail before anything is written
    out_dir = Path(out) if out is not None else Path("runs") / "sweeps" / g.name
    trials = expand(g, out_dir)
    if only:
        trials = [t for t in trials if any(fnmatch.fnmatch(t.name, pat) for pat in only)]
        if not trials:
            raise VirkitError(f"--only {' '.join(only)} matches no trial of grid {g.name}")
    plans = {t.name: plan_trial(g, t) for t in trials}
    if dry_run:
        for t in trials:
            what, why = plans[t.name]
            log(f"{ {'run': 'run ', 'skip': 'skip', 'fail': 'FAIL'}[what] } {t.name}" + (f"  ({why})" if why else ""))
        return {
            "grid": g.name,
            "trials": [{"name": t.name, "plan": plans[t.name][0], "params": t.params} for t in trials],
        }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VirkitError(f"cannot create {out_dir}: {e.strerror}; choose another --out") from None
    t_start = time.time()
    results: dict[str, dict] = {}
    specs = []
    for t in trials:
        what, why = plans[t.name]
        base = {"name": t.name, "params": t.params, "run_dir": str(t.run_dir.resolve())}
        if what == "skip":
            results[t.name] = {
                **base,
                "status": "skipped",
                "seconds": 0.0,
                "error": None,
                "eval": finished_eval(t.run_dir) if g.kind == "train" else {},
            }
        elif what == "fail":
            results[t.name] = {**base, "status": "failed", "seconds": 0.0, "error": why}
        else:
            specs.append(
                {
                    **base,
                    "kind": g.kind,
                    "preset": g.preset,
                    "overrides": t.overrides,
                    "notebook": str(g.notebook) if g.notebook else None,
                    "timeout": timeout,
                    "sweep_dir": str(out_dir.resolve()),
                    "inject": injection(t.name),
                    "result_path": str((out_dir / ".sweep" / f"{t.name}.result.json").resolve()),
                    "log_path": str((out_dir / "logs" / f"{t.name}.log").resolve()),
                }
            )
    n_skip = sum(1 for r in results.values() if r["status"] == "skipped")
    n_bad = sum(1 for r in results.values() if r["status"] == "failed")
    log(
        f"grid {g.name}: {len(trials)} trials, {n_skip} already finished, {n_bad} invalid, {len(specs)} to run "
        f"on backend {backend} -> {out_dir}"
    )
    for r in results.values():
        if r["status"] == "failed":
            log(f"  FAILED {r['name']}: {r['error']}")
    done = [0]

    def on_result(r: dict) -> None:
        done[0] += 1
        name = r["name"]
        base = next(s for s in specs if s["name"] == name)
        r = {
            "name": name,
            "params": base["params"],
            "run_dir": base["run_dir"],
            **{k: v for k, v in r.items() if k != "name"},
        }
        results[name] = r
        sec = f"{r['seconds']:.0f} s" if isinstance(r.get("seconds"), (int, float)) else ""
        msg = f"[{done[0]}/{len(specs)}] {name}: {r['status']} {sec}"
        if r["status"] != "finished":
            msg += f" - {r.get('error')} (log: {r.get('log', '?')})"
        elif r.get("eval"):
            msg += " - " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["eval"].items() if v is not None)
        log(msg)

    if specs:
        if backend == "local":
            run_local(specs, jobs, on_result)
        else:
            run_ray(specs, address, jobs, on_result, log)
    ordered = [results[t.name] for t in trials if t.name in results]
    meta = {
        "backend": backend,
        "address": address,
        "jobs": jobs,
        "out": str(out_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)),
        "wall_seconds": time.time() - t_start,
    }
    doc = write_results(g, out_dir, ordered, meta)
    c = doc["counts"]
    log(
        f"grid {g.name}: {c['finished']} finished, {c['skipped']} skipped, {c['failed']} failed in "
        f"{meta['wall_seconds']:.0f} s; results in {out_dir / 'results.md'} and results.json"
    )
    return doc


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def add_cli(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of trainings (a paper table) on this machine or a Ray cluster",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every trial of a grid file (configs/grids/*.yaml), skip the finished ones, collect the "
        "results into <out>/results.md and results.json. See docs/SCALE_OUT.md.",
    )
    p.add_argument("grid", help="grid file (YAML)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local: subprocesses on this machine (default); ray: Ray tasks",
    )
    p.add_argument("--address", help="Ray cluster address (auto, ray://host:10001); default: start a local instance")
    p.add_argument(
        "--jobs",
        type=int,
        help="trials at a time (local default: one per GPU, else 1; ray: the "
        "local instance's CPUs / at most this many in flight)",
    )
    p.add_argument("--out", help="folder of the run directories and results (default runs/sweeps/<grid name>)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a fixed parameter of every trial (YAML value), e.g. --set epochs=1; repeatable",
    )
    p.add_argument("--only", action="append", metavar="GLOB", help="run only trials whose name matches (repeatable)")
    p.add_argument("--timeout", type=float, help="seconds a trial may run before it is killed and marked failed")
    p.add_argument("--dry-run", action="store_true", help="list the trials and what would happen; run nothing")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    doc = run_grid(
        args.grid,
        backend=args.backend,
        out=args.out,
        jobs=args.jobs,
        address=args.address,
        sets=args.sets,
        only=args.only,
        timeout=args.timeout,
        dry_run=args.dry_run,
    )
    return 1 if doc.get("counts", {}).get("failed") else 0
