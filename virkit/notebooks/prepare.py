"""Training a notebook preset's shared runs before its notebooks execute, several at a time.

A preset lists the runs its notebooks ask for (``NOTEBOOK_PRESETS[name]["runs"]``: method names, or
``{"method": ..., **overrides}``), for each of its seeds. :func:`prepare_runs` trains them with
``jobs`` worker processes (``python -m virkit.notebooks --train-one SPEC``, each calling
:func:`virkit.notebooks.presets.shared_run`, so the run directories, locks and evaluation are exactly
those a notebook would make) and ``threads`` torch threads each. On a CPU, one thread per worker and
one worker per core beats one process with every thread: the small models of the CPU presets keep
one core busy but not two (docs/NOTEBOOKS.md has the measurement).

Shared burn-in: runs with the same :func:`virkit.training.config.burnin_key` train epochs 1 ..
``reweight_start - 1`` identically, so only one of them (the one whose reweighting starts first) trains
them; the others wait until its ``burnin.pt`` exists and then branch from it (``shared_run`` finds it).
Ready runs start in order of their expected cost, longest first (TRADES-style pipelines, then MART,
AT, natural; a burn-in parent before runs that only train the reweighted tail).

A run the list misses is still trained by the notebook that asks for it (one process, the notebook's
threads), so the list only decides speed, never results; the runner says which runs were trained
during the notebooks so that the list can be completed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from virkit.errors import VirkitError
from virkit.notebooks.context import REPO_ROOT
from virkit.notebooks.presets import NOTEBOOK_PRESETS, run_dir_for, train_config

__all__ = ["PlannedRun", "planned_runs", "prepare_runs", "default_train_jobs", "expected_seconds"]

#: relative cost of one training image by pipeline family on a CPU (AT with the preset's attack = 1),
#: measured with the demo preset (single thread, PGD-2, small CNN): only the order of starts uses it
_FAMILY_COST = {"natural": 0.3, "at": 1.0, "mart": 1.4, "trades": 1.8}


@dataclass
class PlannedRun:
    method: str
    seed: int
    overrides: dict
    path: Path
    key: str  # burn-in key (virkit.training.config.burnin_key)
    reweight_start: int
    epochs: int
    cost: float  # expected cost of the whole run (image-epochs x family cost)
    parent: PlannedRun | None = None  # the run whose burn-in this one branches from
    status: str = "pending"  # pending | running | done | failed
    seconds: float = 0.0
    error: str = ""
    children: list = field(default_factory=list)

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.overrides.items())
        return f"{self.method}{extra} (seed {self.seed})"

    def tail_cost(self) -> float:
        """The cost left once it branches: the epochs from its parent's burn-in on."""
        if self.parent is None:
            return self.cost
        return self.cost * (self.epochs - (self.parent.reweight_start - 1)) / self.epochs


def _entries(preset: str) -> list[tuple[str, dict]]:
    out = []
    for e in NOTEBOOK_PRESETS[preset].get("runs") or []:
        if isinstance(e, str):
            out.append((e, {}))
        else:
            d = dict(e)
            out.append((d.pop("method"), d))
    return out


def planned_runs(preset: str, runs_root: str | os.PathLike, seeds: Iterable[int] | None = None) -> list[PlannedRun]:
    """The preset's runs (each seed), with their burn-in parents assigned: in each group of the
    same burn-in key, the run whose reweighting starts first trains the burn-in for the others."""
    from virkit.training import METHODS, burnin_key

    seeds = list(seeds if seeds is not None else NOTEBOOK_PRESETS[preset].get("seeds") or [0])
    plan: list[PlannedRun] = []
    seen = set()
    for seed in seeds:
        for method, over in _entries(preset):
            cfg = train_config(preset, method, seed, **over)
            path = run_dir_for(cfg, runs_root)
            if path in seen:
                continue
            seen.add(path)
            n = cfg.train_subset or 50000
            cost = n * cfg.epochs * _FAMILY_COST.get(METHODS[method].family, 1.0)
            plan.append(
                PlannedRun(
                    method, int(seed), over, path, burnin_key(cfg), int(cfg.reweight_start), int(cfg.epochs), cost
                )
            )
    groups: dict[str, list[PlannedRun]] = {}
    for r in plan:
        groups.setdefault(r.key, []).append(r)
    for members in groups.values():
        members.sort(key=lambda r: (r.reweight_start, -r.cost))
        head = members[0]
        for r in members[1:]:
            if head.reweight_start - 1 >= 1:
                r.parent = head
                head.children.append(r)
    return plan


#: the training loop's images/s over the calibration's (virkit.training.speed times the bare step on synthetic
#: images; the trainer adds the data pipeline, statistics and the weights' extra forwards)
_TRAIN_EFFICIENCY = 0.85
#: final-evaluation cost of one test image per attack, in AT training images of the preset's PGD-2 step
#: (3 forward-backward passes): PGD-K is K passes, FGSM 1, natural a forward
_EVAL_COST = {"natural": 0.1, "fgsm": 0.4}
#: seconds of the demo outside training: process start-ups, data loading, the nine notebooks
_FIXED_S = 90.0


def _eval_units(cfg) -> float:
    n = cfg.test_subset or 10000
    total = 0.0
    for a in cfg.eval_attacks:
        steps = "".join(ch for ch in a if ch.isdigit())
        total += _EVAL_COST.get(a, (int(steps) + 1) / 3 if a.startswith("pgd") and steps else 1.0)
    return n * total


def expected_seconds(preset: str, rate: float, jobs: int, runs_root: str | os.PathLike | None = None) -> float:
    """Expected wall seconds of ``virkit notebooks run --preset PRESET`` from scratch on a machine whose
    training step runs ``rate`` images/s a job (:mod:`virkit.training.speed`) with ``jobs`` jobs: the planned
    runs' training work (image-epochs x family cost, burn-ins shared) and final evaluations, spread over
    the jobs, plus the fixed cost of start-ups and notebooks. A model, checked against measured demos
    in docs/NOTEBOOKS.md."""
    import tempfile

    plan = planned_runs(preset, runs_root or tempfile.gettempdir())
    work = sum(r.tail_cost() + _eval_units(train_config(preset, r.method, r.seed, **r.overrides)) for r in plan)
    return work / (max(rate, 1e-9) * _TRAIN_EFFICIENCY) / max(1, min(jobs, len(plan))) + _FIXED_S


def default_train_jobs() -> int:
    """One worker per CPU core without a GPU (single-threaded workers), else one."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, os.cpu_count() or 1)


def _ready(r: PlannedRun) -> bool:
    if r.status != "pending":
        return False
    p = r.parent
    if p is None or p.status in ("done", "failed"):
        return True
    # the parent is running (or waits): ready once its burn-in state is on disk
    return p.status == "running" and (p.path / "burnin.pt").is_file()


def _priority(r: PlannedRun) -> float:
    """Longest expected remaining work first: a run's own cost plus the tails that wait for it."""
    return r.tail_cost() + sum(c.tail_cost() for c in r.children if c.status == "pending")


def _train_subprocess(r: PlannedRun, preset: str, runs_root: Path, threads: int) -> tuple[str, str]:
    spec = json.dumps(
        {"method": r.method, "preset": preset, "runs_root": str(runs_root), "seed": r.seed, "overrides": r.overrides}
    )
    env = os.environ.copy()
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "virkit.notebooks", "--train-one", spec], capture_output=True, text=True, env=env
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{") and '"status"' in line:
            d = json.loads(line)
            return d["status"], d.get("error", "")
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return "failed", f"exited with {proc.returncode}: {tail[:300]}"


def train_one(spec: dict) -> dict:
    """The ``--train-one`` worker: train (or reuse) one shared run; returns ``{"status", "error"}``."""
    from virkit.notebooks.presets import shared_run

    try:
        shared_run(spec["method"], spec["preset"], spec["runs_root"], seed=int(spec["seed"]), **spec["overrides"])
        return {"status": "done", "error": ""}
    except Exception as e:
        line = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return {"status": "failed", "error": line}


def _epochs_done(r: PlannedRun) -> int:
    """Finished epochs of a running run (lines of its history.jsonl; a branch starts with its parent's)."""
    try:
        with open(r.path / "history.jsonl", "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def prepare_runs(
    preset: str,
    runs_root: str | os.PathLike,
    jobs: int | None = None,
    threads: int | None = None,
    say: Callable[[str], None] = print,
    seeds: Iterable[int] | None = None,
    expected_s: float | None = None,
) -> list[PlannedRun]:
    """Train the preset's runs (:func:`planned_runs`) that are not finished yet, ``jobs`` at a time
    with ``threads`` torch threads each (defaults: :func:`default_train_jobs`, cores // jobs).
    Prints a line per finished epoch and per finished run, each with the time left (at the pace so far;
    before the first epoch, ``expected_s`` if given); returns the plan with each run's status and
    seconds. A failed run is reported and left to the notebook that needs it (which then fails with
    the error in place)."""
    from virkit.runs import RunDir

    runs_root = Path(runs_root)
    jobs = int(jobs or default_train_jobs())
    if jobs < 1:
        raise VirkitError(f"--train-jobs must be >= 1, got {jobs}")
    threads = int(threads or max(1, (os.cpu_count() or 1) // jobs))
    plan = planned_runs(preset, runs_root, seeds)
    for r in plan:
        if RunDir(r.path).is_finished():
            r.status = "done"
    todo = [r for r in plan if r.status == "pending"]
    if not todo:
        return plan
    runs_root.mkdir(parents=True, exist_ok=True)
    say(
        f"training {len(todo)} shared run(s), {jobs} at a time, {threads} thread(s) each "
        f"({sum(1 for r in todo if r.parent is not None)} branch from a shared burn-in)"
    )
    lock = threading.Lock()
    t0 = time.time()
    done_count = [0]
    done_cost = [0.0]

    epochs_seen: dict = {}

    def partial(r: PlannedRun) -> float:
        """The work a running run has done: its own epochs finished so far (not the inherited burn-in)."""
        start = r.parent.reweight_start - 1 if r.parent is not None else 0
        own = max(0, epochs_seen.get(r.path, 0) - start)
        return r.tail_cost() * own / max(1, r.epochs - start)

    def left() -> str:
        """Expected time left: the work not done yet at the pace of the work done so far."""
        running = [r for r in todo if r.status == "running"]
        done_now = done_cost[0] + sum(partial(r) for r in running)
        rest = sum(r.tail_cost() for r in todo if r.status in ("pending", "running")) - sum(partial(r) for r in running)
        if rest <= 0:
            return "done"
        if not done_now:
            return f"expected {expected_s / 60:.1f} min in all" if expected_s else "estimating"
        est = rest * (time.time() - t0) / done_now
        return f"about {est / 60:.1f} min left" if est >= 60 else f"about {est:.0f} s left"

    def report_epochs() -> None:
        for r in todo:
            if r.status != "running":
                continue
            n = _epochs_done(r)
            if n > epochs_seen.get(r.path, 0):
                epochs_seen[r.path] = n
                say(f"    {r.label:28s} epoch {n}/{r.epochs}  [{time.time() - t0:.0f} s so far, {left()}]")

    def work(r: PlannedRun) -> None:
        t = time.time()
        status, err = _train_subprocess(r, preset, runs_root, threads)
        with lock:
            epochs_seen.pop(r.path, None)
            r.status, r.error, r.seconds = status, err, time.time() - t
            done_count[0] += 1
            done_cost[0] += r.tail_cost()
            how = f"branched from {r.parent.method}" if r.parent is not None and status == "done" else "from scratch"
            say(
                f"  {'trained' if status == 'done' else 'FAILED '} {r.label:28s} {r.seconds:6.0f} s  {how:20s}  "
                f"[{done_count[0]}/{len(todo)}, {time.time() - t0:.0f} s so far, {left()}]"
                + (f"  {err}" if err else "")
            )

    threads_running: list[threading.Thread] = []
    while True:
        with lock:
            threads_running = [th for th in threads_running if th.is_alive()]
            pending = [r for r in todo if r.status == "pending"]
            if not pending and not threads_running:
                break
            report_epochs()
            free = jobs - len(threads_running)
            ready = sorted((r for r in pending if _ready(r)), key=_priority, reverse=True)
            for r in ready[: max(free, 0)]:
                r.status = "running"
                th = threading.Thread(target=work, args=(r,), daemon=True)
                th.start()
                threads_running.append(th)
        time.sleep(0.2)
    failed = [r for r in todo if r.status == "failed"]
    say(f"shared runs: {len(todo) - len(failed)} trained, {len(failed)} failed, {time.time() - t0:.0f} s")
    return plan
