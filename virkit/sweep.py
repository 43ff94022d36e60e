"""Grids of runs: ``virkit sweep GRID.yaml [--backend local|ray] [--address A] [--jobs N] [--out DIR]``.

A grid file (YAML; ``configs/grids/`` holds the paper's tables) names a base preset, fixed
overrides, and the parameters to cross::

    name: table1_resnet18        # default: the file's stem; the default --out is runs/sweeps/<name>
    table: 1                     # the paper table the results are collected into (virkit.report)
    kind: train                  # train (default) | notebook
    preset: paper                # trainer preset (virkit.config.PRESETS)
    fixed:                       # TrainConfig overrides shared by every trial
      model: resnet18
      eval_attacks: [natural, fgsm, pgd100, cw, fmn100, aa, mde]
    grid:                        # crossed: every combination is one trial
      method: [at, trades, mart, gairat, mail-at, vir-trades, vir-at]
      seed: [0, 1, 2, 3]
    points:                      # optional: explicit combinations, each crossed with `grid`
      - {alpha: 1, gamma: 10}

Each trial is a training plus its final evaluation (``eval_attacks``), in its own run directory
``<out>/<name>`` whose name lists the varied parameters (``method=vir-at__seed=0``), run in a
subprocess of its own so that a crash cannot take the grid down. ``kind: notebook`` runs a
notebook with papermill instead (``notebook: path.ipynb``; ``fixed``/``grid``/``points`` are its
parameters; executed copy in ``<out>/<name>/output.ipynb``).

Re-running a grid skips finished trials (the trainer's ``summary.json`` with the same config
hash and every requested attack evaluated), resumes unfinished ones from ``last.pt`` and retries
failed ones. A trial that fails is reported and the others go on. At the end the results are
written to ``<out>/results.json`` (per trial: status, seconds, error, accuracies) and
``<out>/results.md`` (the paper table via :mod:`virkit.report` when it is available, else mean ±
std over seeds of every attack, plus the status of every trial).

Backends: ``local`` runs ``--jobs`` trials at a time on this machine (one GPU each through
``CUDA_VISIBLE_DEVICES``; on CPU the cores are split between them); ``ray`` submits each trial
as a Ray task (``num_gpus=1`` when the cluster has GPUs, else ``num_cpus=1``) to the cluster at
``--address`` (``auto``, ``ray://host:10001``) or to a local instance started for the grid. Ray is
optional (``pip install 'virkit[ray]'``); this module imports it only for ``--backend ray``.
"""
from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import VirkitError

__all__ = ["Grid", "Trial", "load_grid", "expand", "run_grid", "add_cli", "GRID_KEYS"]

GRID_KEYS = ("name", "description", "table", "kind", "preset", "fixed", "grid", "points", "notebook")
KINDS = ("train", "notebook")
BACKENDS = ("local", "ray")
INJECT_ENV = "VIRKIT_SWEEP_INJECT_FAILURE"   # tests: "<glob>[:raise|kill]" makes matching trials fail
_TUPLE_FIELDS = ("lr_milestones", "eval_attacks")
_NAME_OK = re.compile(r"[^A-Za-z0-9._+-]")


# ------------------------------------------------------------------------------------------------
# Grid files
# ------------------------------------------------------------------------------------------------
@dataclass
class Grid:
    name: str
    kind: str = "train"
    preset: str | None = "paper"
    fixed: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    points: list = field(default_factory=list)
    table: int | None = None
    description: str = ""
    notebook: Path | None = None
    path: Path | None = None


@dataclass
class Trial:
    name: str
    params: dict          # the varied parameters of this trial
    overrides: dict       # fixed + params: TrainConfig overrides (train) or notebook parameters
    run_dir: Path


def _train_fields() -> list[str]:
    from .config import TrainConfig
    return [f for f in TrainConfig.__dataclass_fields__ if f != "preset"]


def _normalize(key: str, value: Any) -> Any:
    """YAML values -> TrainConfig values: 'a,b' or [a, b] for tuple fields."""
    if key in _TUPLE_FIELDS:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (int, float)):
            return [value]
    return value


def _check_names(names, valid: list[str], where: str, what: str) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise VirkitError(f"{where}: unknown {what}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"valid {what}s: {', '.join(valid)}")


def load_grid(source: str | os.PathLike | dict, sets: list[str] | dict | None = None) -> Grid:
    """Read and validate a grid file (or an already-parsed dict). ``sets`` (``["key=value"]`` or a
    dict) override ``fixed``. Unknown keys or parameters raise :class:`VirkitError` naming them;
    values are checked per trial (a bad value fails that trial only)."""
    import yaml

    path = None
    if isinstance(source, dict):
        data = dict(source)
        where = "grid"
    else:
        path = Path(source)
        where = f"grid file {path}"
        if not path.is_file():
            raise VirkitError(f"{where} does not exist; see configs/grids/ for examples")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise VirkitError(f"cannot read {where}: {e}") from None
        except yaml.YAMLError as e:
            raise VirkitError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise VirkitError(f"{where} must be a mapping with keys {', '.join(GRID_KEYS)}")
    _check_names(list(data), list(GRID_KEYS), where, "key")
    kind = data.get("kind") or "train"
    if kind not in KINDS:
        raise VirkitError(f"{where}: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    fixed = data.get("fixed") or {}
    axes = data.get("grid") or {}
    points = data.get("points") or []
    if not isinstance(fixed, dict):
        raise VirkitError(f"{where}: 'fixed' must be a mapping of parameter: value")
    if not isinstance(axes, dict):
        raise VirkitError(f"{where}: 'grid' must be a mapping of parameter: [values]")
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise VirkitError(f"{where}: grid.{k} must be a non-empty list of values (put a single value under "
                              "'fixed')")
    if not isinstance(points, list) or not all(isinstance(p, dict) and p for p in points):
        raise VirkitError(f"{where}: 'points' must be a list of non-empty mappings parameter: value")
    if isinstance(sets, dict):
        set_items = dict(sets)
    else:
        set_items = {}
        for s in sets or []:
            if "=" not in s:
                raise VirkitError(f"--set {s!r}: expected KEY=VALUE, e.g. --set epochs=1")
            k, v = s.split("=", 1)
            set_items[k.strip()] = yaml.safe_load(v) if v.strip() else None
    point_keys = list(dict.fromkeys(k for p in points for k in p))
    both = [k for k in point_keys if k in axes]
    if both:
        raise VirkitError(f"{where}: {', '.join(both)} given both in 'grid' and in 'points'; use one of them")
    varied = set(axes) | set(point_keys)
    clash = [k for k in set_items if k in varied]
    if clash:
        raise VirkitError(f"--set {', '.join(clash)}: varied by the grid; edit the grid file instead")
    fixed = {**fixed, **set_items}

    name = data.get("name") or (path.stem if path else "grid")
    if not isinstance(name, str) or _NAME_OK.search(name):
        raise VirkitError(f"{where}: name {name!r} may only hold letters, digits, '.', '_', '+' and '-'")
    table = data.get("table")
    if table is not None and (not isinstance(table, int) or isinstance(table, bool)):
        raise VirkitError(f"{where}: table must be a table number, got {table!r}")
    names = [k for k in fixed if k not in set_items] + list(axes) + point_keys
    notebook = None
    preset = data.get("preset")
    if kind == "train":
        from .config import PRESETS
        _check_names(names, _train_fields(), where, "parameter")
        _check_names(list(set_items), _train_fields(), "--set", "parameter")
        preset = preset or "paper"
        if preset not in PRESETS:
            raise VirkitError(f"{where}: unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        if data.get("notebook") is not None:
            raise VirkitError(f"{where}: 'notebook' is only for kind: notebook")
    else:
        if preset is not None:
            raise VirkitError(f"{where}: 'preset' is for kind: train; give a notebook's preset under 'fixed'")
        nb = data.get("notebook")
        if not nb:
            raise VirkitError(f"{where}: kind: notebook needs 'notebook: path/to/notebook.ipynb'")
        notebook = Path(nb)
        if not notebook.is_absolute() and not notebook.is_file() and path is not None:
            notebook = path.parent / nb
        if not notebook.is_file():
            raise VirkitError(f"{where}: notebook {nb} not found (relative paths: to the working directory or "
                              "the grid file)")
        from .notebooks import notebook_parameters
        valid = list(notebook_parameters(notebook))
        _check_names(names, valid, where, "notebook parameter")
        _check_names(list(set_items), valid, "--set", "notebook parameter")
    fixed = {k: _normalize(k, v) for k, v in fixed.items()}
    return Grid(name=name, kind=kind, preset=preset, fixed=fixed, grid=axes, points=points, table=table,
                description=str(data.get("description") or ""), notebook=notebook.resolve() if notebook else None,
                path=path)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt(x) for x in v)
    if v is None:
        return "none"
    return str(v)


def trial_name(params: dict) -> str:
    return "__".join(f"{k}={_NAME_OK.sub('_', _fmt(v))}" for k, v in params.items()) or "base"


def expand(grid: Grid, out: str | os.PathLike) -> list[Trial]:
    """The grid's trials, in file order (``points`` outermost, then ``grid`` axes in order); a
    trial's name lists its point's parameters, then the grid's."""
    keys = list(grid.grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid.grid[k] for k in keys))] or [{}]
    trials, seen = [], {}
    for point in grid.points or [{}]:
        for combo in combos:
            params = {**combo, **point}
            order = [k for k in point if k not in keys] + keys
            params = {k: params[k] for k in order}
            name = trial_name(params)
            if name in seen:
                raise VirkitError(f"grid {grid.name}: two trials are both named {name!r} (duplicate values?)")
            seen[name] = True
            overrides = {**grid.fixed, **{k: _normalize(k, v) for k, v in params.items()}}
            trials.append(Trial(name, params, overrides, Path(out) / name))
    return trials


# ------------------------------------------------------------------------------------------------
# One trial (runs in its own process)
# ------------------------------------------------------------------------------------------------
def _resolve(grid_preset: str, overrides: dict):
    from .config import resolve_config
    return resolve_config(grid_preset, **overrides)


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _plan(grid: Grid, trial: Trial) -> tuple[str, str | None]:
    """``("skip"|"run"|"fail", why)`` for one trial, from what its run directory holds."""
    if grid.kind == "notebook":
        try:
            state = json.loads((trial.run_dir / "trial.json").read_text())
        except (OSError, json.JSONDecodeError):
            return "run", None
        same = state.get("parameters") == json.loads(json.dumps(trial.overrides))
        return ("skip", None) if state.get("status") == "finished" and same else ("run", None)
    from .config import config_hash
    from .trainer import run_status
    try:
        cfg = _resolve(grid.preset, trial.overrides)
    except VirkitError as e:
        return "fail", str(e)
    status = run_status(trial.run_dir) if trial.run_dir.is_dir() else "empty"
    if status == "empty":
        return "run", None
    try:
        old = json.loads((trial.run_dir / "config.json").read_text()).get("config_hash")
    except (OSError, json.JSONDecodeError):
        old = None
    if old is not None and old != config_hash(cfg):
        return "fail", (f"{trial.run_dir} holds a run with another config (hash {old}, the grid asks for "
                        f"{config_hash(cfg)}): was the grid changed? delete that directory or use another --out")
    if status == "finished":
        done = _summary(trial.run_dir).get("eval") or {}
        if all(a in done for a in cfg.eval_attacks):
            return "skip", None
    return "run", None


def _run_train_trial(spec: dict) -> dict:
    from .io import atomic_write_json
    from .trainer import _final_eval, prepare_data, resolve_device, train

    cfg = _resolve(spec["preset"], spec["overrides"])
    out = train(cfg, spec["run_dir"], resume=True, reuse=True, log=lambda s: print(s, flush=True))
    summary = _summary(out)
    done = summary.get("eval") or {}
    missing = [a for a in cfg.eval_attacks if a not in done]
    if missing:   # a finished run reused with more attacks asked for: evaluate it again
        print(f"evaluating {out} under {', '.join(missing)}", flush=True)
        device = resolve_device(cfg.device)
        _, test_split, _ = prepare_data(cfg, device)
        summary["eval"] = {**done, **_final_eval(out, cfg, test_split, device, lambda s: print(s, flush=True))}
        atomic_write_json(out / "summary.json", summary)
    return summary.get("eval") or {}


def _run_notebook_trial(spec: dict) -> dict:
    from .io import atomic_write_json
    from .notebooks import _execute_one, ensure_kernelspec, validate_parameters

    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    params = validate_parameters(spec["notebook"], spec["overrides"])
    ensure_kernelspec(Path(spec["sweep_dir"]))
    status, error = _execute_one(spec["notebook"], str(run_dir / "output.ipynb"), params, str(run_dir),
                                 spec.get("timeout"))
    if status != "ok":
        raise VirkitError(f"notebook failed: {error}")
    atomic_write_json(run_dir / "trial.json", {"status": "finished", "parameters": spec["overrides"],
                                               "notebook": spec["notebook"]})
    return {}


def _worker(spec_path: str) -> int:
    """Entry point of a trial process: ``python -m virkit.sweep --worker SPEC.json``."""
    from .io import atomic_write_json

    spec = json.loads(Path(spec_path).read_text())
    t0 = time.time()
    result: dict[str, Any] = {"name": spec["name"], "status": "failed", "error": None}
    try:
        inject = spec.get("inject")
        if inject == "kill":
            print("injected failure: the trial process kills itself", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if inject == "raise":
            raise RuntimeError(f"injected failure ({INJECT_ENV})")
        run = _run_train_trial if spec["kind"] == "train" else _run_notebook_trial
        result["eval"] = run(spec)
        result["status"] = "finished"
    except VirkitError as e:
        result["error"] = str(e)
        print(f"virkit: error: {e}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - reported in results.json, the grid goes on
        result["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    result["seconds"] = time.time() - t0
    atomic_write_json(spec["result_path"], result)
    return 0 if result["status"] == "finished" else 1


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


_RUNNING: set = set()
_RUNNING_LOCK = threading.Lock()


def _run_trial_process(spec: dict, env_extra: dict | None = None, own_session: bool = True) -> dict:
    """Run one trial in a child process; returns its result (never raises for a failing trial)."""
    from .io import atomic_write_json
    import virkit

    t0 = time.time()
    result_path, log_path = Path(spec["result_path"]), Path(spec["log_path"])
    for p in (result_path, log_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    spec_path = result_path.with_name(result_path.name.replace(".result.json", ".spec.json"))
    atomic_write_json(spec_path, spec)
    env = {**os.environ, **(env_extra or {}), "PYTHONUNBUFFERED": "1"}
    pkg_root = str(Path(virkit.__file__).resolve().parent.parent)   # the same virkit in the child
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    timeout = spec.get("timeout")
    timed_out = False
    with open(log_path, "ab") as lf:
        lf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} trial {spec['name']} ===\n".encode())
        lf.flush()
        proc = subprocess.Popen([sys.executable, "-m", "virkit.sweep", "--worker", str(spec_path)], stdout=lf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=own_session)
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc, own_session)
            rc = proc.wait()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
    result = None
    if result_path.is_file() and not timed_out:
        try:
            result = json.loads(result_path.read_text())
        except (OSError, json.JSONDecodeError):
            result = None
    if result is None:
        if timed_out:
            why = f"timed out after {timeout:g} s (--timeout); killed"
        elif rc < 0:
            why = f"trial process killed by signal {-rc} ({signal.Signals(-rc).name if -rc in signal.valid_signals() else '?'})"
        else:
            why = f"trial process exited with code {rc} without a result"
        result = {"name": spec["name"], "status": "failed", "error": why}
    result["seconds"] = time.time() - t0
    result["returncode"] = rc
    result["log"] = str(log_path)
    if result["status"] != "finished":
        result["log_tail"] = _tail(log_path)
    return result


def _kill(proc: subprocess.Popen, own_session: bool) -> None:
    try:
        if own_session:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _ray_trial(spec: dict) -> dict:
    """The Ray task: the trial in a child process of the Ray worker (Ray's process-group cleanup
    ends it if the task is cancelled). Ray sets CUDA_VISIBLE_DEVICES for ``num_gpus=1``."""
    return _run_trial_process(spec, own_session=False)


# ------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------
def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


def _run_local(specs: list[dict], jobs: int | None, on_result: Callable[[dict], None]) -> None:
    gpus = _visible_gpus()
    jobs = max(1, jobs or len(gpus) or 1)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    slots: list[int] = list(range(jobs))
    lock = threading.Lock()

    def run(spec: dict) -> dict:
        with lock:
            slot = slots.pop(0)
        try:
            env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            return _run_trial_process(spec, env)
        finally:
            with lock:
                slots.append(slot)

    def _terminate(signum, frame):   # SIGTERM (a scheduler, kill): stop the trials too, like Ctrl-C
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="virkit-sweep")
    try:
        futures = {pool.submit(run, s): s for s in specs}
        for fut in as_completed(futures):
            on_result(fut.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        with _RUNNING_LOCK:
            for p in list(_RUNNING):
                _kill(p, True)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
    pool.shutdown(wait=True)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise VirkitError("--backend ray needs Ray, which is not installed: pip install 'virkit[ray]' (or pip install "
                          "ray), or use --backend local") from None
    return ray


def _run_ray(specs: list[dict], address: str | None, jobs: int | None, on_result: Callable[[dict], None],
             log: Callable[[str], None]) -> None:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=jobs or None, include_dashboard=False, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - connection errors come in many types
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise VirkitError(f"cannot start or reach {where}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                              ) from None
        started = True
    try:
        res = ray.cluster_resources()
        opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
        if res.get("GPU", 0) >= 1:
            opts["num_gpus"] = 1
        log(f"ray: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs; each trial takes "
            f"{'1 GPU' if 'num_gpus' in opts else '1 CPU'}")
        task = ray.remote(_ray_trial).options(**opts)
        limit = jobs or len(specs)
        pending = list(specs)
        inflight: dict = {}
        try:
            while pending or inflight:
                while pending and len(inflight) < limit:
                    s = pending.pop(0)
                    inflight[task.remote(s)] = s
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    s = inflight.pop(ref)
                    try:
                        r = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a lost worker or node: this trial fails
                        r = {"name": s["name"], "status": "failed", "seconds": None,
                             "error": f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                    on_result(r)
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> str:
    if not values:
        return ""
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{100 * m:.2f} ± {100 * sd:.2f}"


def simple_table(trials: list[dict]) -> str:
    """Markdown: one row per combination of the varied parameters other than ``seed``, mean ± std
    (accuracy %) over seeds of every evaluated attack."""
    done = [t for t in trials if t["status"] in ("finished", "skipped") and t.get("eval")]
    if not done:
        return "_no finished trial with an evaluation_\n"
    attacks = list(dict.fromkeys(a for t in done for a in t["eval"]))
    keys = list(dict.fromkeys(k for t in done for k in t["params"] if k != "seed"))
    groups: dict[tuple, list[dict]] = {}
    for t in done:
        groups.setdefault(tuple(_fmt(t["params"].get(k, "")) for k in keys), []).append(t)
    head = keys + ["seeds"] + attacks
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, ts in groups.items():
        cells = list(g) + [str(len(ts))]
        cells += [_mean_std([t["eval"][a] for t in ts if t["eval"].get(a) is not None]) for a in attacks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _report_table(grid: Grid, run_dirs: list[str]) -> tuple[str | None, str | None]:
    """The paper table from :mod:`virkit.report`; (markdown, None) or (None, why not)."""
    if grid.kind != "train" or not run_dirs or grid.table is None:
        return None, None
    try:
        from .report import collect_runs, make_table, to_markdown
    except ImportError as e:
        return None, f"virkit.report not available ({e})"
    try:
        df = collect_runs(run_dirs)
        return str(to_markdown(make_table(df, grid.table))), None
    except Exception as e:  # noqa: BLE001 - the grid's own table is written anyway
        return None, f"virkit.report could not build table {grid.table}: {type(e).__name__}: {str(e)[:200]}"


def write_results(grid: Grid, out: Path, trials: list[dict], meta: dict) -> dict:
    from .io import atomic_write_json

    counts = {s: sum(1 for t in trials if t["status"] == s) for s in ("finished", "skipped", "failed")}
    doc = {"grid": grid.name, "grid_file": str(grid.path) if grid.path else None, "kind": grid.kind,
           "preset": grid.preset, "table": grid.table, "fixed": grid.fixed, **meta, "counts": counts,
           "trials": trials}
    atomic_write_json(out / "results.json", doc)
    ok_dirs = [t["run_dir"] for t in trials if t["status"] in ("finished", "skipped")]
    md = [f"# Grid {grid.name}", ""]
    if grid.description:
        md += [grid.description.strip(), ""]
    md += [f"{counts['finished']} trained, {counts['skipped']} already done (skipped), {counts['failed']} failed; "
           f"backend {meta.get('backend')}, {meta.get('wall_seconds', 0):.0f} s.", ""]
    if grid.kind == "train":
        report_md, why = _report_table(grid, ok_dirs)
        if report_md:
            md += [f"## Table {grid.table}" if grid.table is not None else "## Results", "", report_md, ""]
        md += ["## Accuracy (%) by parameters, mean ± std over seeds", "", simple_table(trials)]
        if why:
            md += [f"_({why})_", ""]
    md += ["## Trials", "", "| trial | status | seconds | error |", "|---|---|---|---|"]
    for t in trials:
        err = (t.get("error") or "").replace("|", "\\|").replace("\n", " ")[:300]
        sec = f"{t['seconds']:.0f}" if isinstance(t.get("seconds"), (int, float)) else ""
        md.append(f"| {t['name']} | {t['status']} | {sec} | {err} |")
    from .io import atomic_write_bytes
    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode())
    return doc


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def _injection(name: str) -> str | None:
    value = os.environ.get(INJECT_ENV)
    if not value:
        return None
    pattern, _, mode = value.partition(":")
    return (mode or "raise") if fnmatch.fnmatch(name, pattern) else None


def run_grid(grid: str | os.PathLike | dict | Grid, backend: str = "local", out: str | os.PathLike | None = None,
             jobs: int | None = None, address: str | None = None, sets: list[str] | dict | None = None,
             only: list[str] | None = None, timeout: float | None = None, dry_run: bool = False,
             log: Callable[[str], None] | None = print) -> dict:
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
        _import_ray()   # fail before anything is written
    out_dir = Path(out) if out is not None else Path("runs") / "sweeps" / g.name
    trials = expand(g, out_dir)
    if only:
        trials = [t for t in trials if any(fnmatch.fnmatch(t.name, pat) for pat in only)]
        if not trials:
            raise VirkitError(f"--only {' '.join(only)} matches no trial of grid {g.name}")
    plans = {t.name: _plan(g, t) for t in trials}
    if dry_run:
        for t in trials:
            what, why = plans[t.name]
            log(f"{ {'run': 'run ', 'skip': 'skip', 'fail': 'FAIL'}[what]} {t.name}" + (f"  ({why})" if why else ""))
        return {"grid": g.name, "trials": [{"name": t.name, "plan": plans[t.name][0], "params": t.params}
                                            for t in trials]}
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
            results[t.name] = {**base, "status": "skipped", "seconds": 0.0, "error": None,
                               "eval": _summary(t.run_dir).get("eval") or {} if g.kind == "train" else {}}
        elif what == "fail":
            results[t.name] = {**base, "status": "failed", "seconds": 0.0, "error": why}
        else:
            specs.append({**base, "kind": g.kind, "preset": g.preset, "overrides": t.overrides,
                          "notebook": str(g.notebook) if g.notebook else None, "timeout": timeout,
                          "sweep_dir": str(out_dir.resolve()), "inject": _injection(t.name),
                          "result_path": str((out_dir / ".sweep" / f"{t.name}.result.json").resolve()),
                          "log_path": str((out_dir / "logs" / f"{t.name}.log").resolve())})
    n_skip = sum(1 for r in results.values() if r["status"] == "skipped")
    n_bad = sum(1 for r in results.values() if r["status"] == "failed")
    log(f"grid {g.name}: {len(trials)} trials, {n_skip} already finished, {n_bad} invalid, {len(specs)} to run "
        f"on backend {backend} -> {out_dir}")
    for r in results.values():
        if r["status"] == "failed":
            log(f"  FAILED {r['name']}: {r['error']}")
    done = [0]

    def on_result(r: dict) -> None:
        done[0] += 1
        name = r["name"]
        base = next(s for s in specs if s["name"] == name)
        r = {"name": name, "params": base["params"], "run_dir": base["run_dir"], **{k: v for k, v in r.items()
                                                                                     if k != "name"}}
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
            _run_local(specs, jobs, on_result)
        else:
            _run_ray(specs, address, jobs, on_result, log)
    ordered = [results[t.name] for t in trials if t.name in results]
    meta = {"backend": backend, "address": address, "jobs": jobs, "out": str(out_dir),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)),
            "wall_seconds": time.time() - t_start}
    doc = write_results(g, out_dir, ordered, meta)
    c = doc["counts"]
    log(f"grid {g.name}: {c['finished']} finished, {c['skipped']} skipped, {c['failed']} failed in "
        f"{meta['wall_seconds']:.0f} s; results in {out_dir / 'results.md'} and results.json")
    return doc


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a grid of trainings (a paper table) on this machine or a Ray cluster",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every trial of a grid file (configs/grids/*.yaml), skip the finished ones, collect the "
                    "results into <out>/results.md and results.json. See docs/SCALE_OUT.md.")
    p.add_argument("grid", help="grid file (YAML)")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local: subprocesses on this machine (default); ray: Ray tasks")
    p.add_argument("--address", help="Ray cluster address (auto, ray://host:10001); default: start a local instance")
    p.add_argument("--jobs", type=int, help="trials at a time (local default: one per GPU, else 1; ray: the "
                                            "local instance's CPUs / at most this many in flight)")
    p.add_argument("--out", help="folder of the run directories and results (default runs/sweeps/<grid name>)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fixed parameter of every trial (YAML value), e.g. --set epochs=1; repeatable")
    p.add_argument("--only", action="append", metavar="GLOB", help="run only trials whose name matches (repeatable)")
    p.add_argument("--timeout", type=float, help="seconds a trial may run before it is killed and marked failed")
    p.add_argument("--dry-run", action="store_true", help="list the trials and what would happen; run nothing")
    p.set_defaults(func=_cmd_sweep)
    from .distributed import add_train_cli
    add_train_cli(subparsers)   # `virkit train --sync-bn` (torchrun runs)


def _cmd_sweep(args) -> int:
    doc = run_grid(args.grid, backend=args.backend, out=args.out, jobs=args.jobs, address=args.address,
                   sets=args.sets, only=args.only, timeout=args.timeout, dry_run=args.dry_run)
    return 1 if doc.get("counts", {}).get("failed") else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"] and len(sys.argv) == 3:
        sys.exit(_worker(sys.argv[2]))
    from .cli import main
    sys.exit(main(["sweep", *sys.argv[1:]]))
