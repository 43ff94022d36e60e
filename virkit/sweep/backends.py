"""Where trials run: a child process per trial (:func:`run_trial_process`), ``--jobs`` of them at a
time on this machine (:func:`run_local`: the visible GPUs dealt out round-robin, so several trials
share a GPU when ``--jobs`` exceeds the number of GPUs, all of them on a one-GPU machine) or as Ray
tasks (:func:`run_ray`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virkit.errors import VirkitError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["run_trial_process", "run_local", "run_ray", "import_ray"]


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


_RUNNING: set = set()
_RUNNING_LOCK = threading.Lock()


def run_trial_process(spec: dict, env_extra: dict | None = None, own_session: bool = True) -> dict:
    """Run one trial in a child process; returns its result (never raises for a failing trial)."""
    import virkit
    from virkit.io import atomic_write_json

    t0 = time.time()
    result_path, log_path = Path(spec["result_path"]), Path(spec["log_path"])
    for p in (result_path, log_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    spec_path = result_path.with_name(result_path.name.replace(".result.json", ".spec.json"))
    atomic_write_json(spec_path, spec)
    env = {**os.environ, **(env_extra or {}), "PYTHONUNBUFFERED": "1"}
    pkg_root = str(Path(virkit.__file__).resolve().parent.parent)  # the same virkit in the child
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    timeout = spec.get("timeout")
    timed_out = False
    with open(log_path, "ab") as lf:
        lf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} trial {spec['name']} ===\n".encode())
        lf.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "virkit.sweep", "--worker", str(spec_path)],
            stdout=lf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=own_session,
        )
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
    return run_trial_process(spec, own_session=False)


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
    except Exception:
        return []


def slot_env(slot: int, gpus: list[str], jobs: int) -> dict:
    """The environment of the trial process in ``slot`` (0 .. jobs-1): the cores split between the
    ``jobs`` slots, and GPU ``gpus[slot % len(gpus)]`` as its only visible device. Slots share GPUs
    round-robin, so with one visible GPU every trial runs on it: ``--jobs N`` on a one-GPU machine
    runs N trials on that GPU at once (each its own process, CUDA context and memory)."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def run_local(specs: list[dict], jobs: int | None, on_result: Callable[[dict], None]) -> None:
    """Run ``specs`` as child processes, ``jobs`` at a time (default: one per visible GPU, else 1),
    each with :func:`slot_env`'s environment; ``on_result`` gets each result as it finishes."""
    gpus = _visible_gpus()
    jobs = max(1, jobs or len(gpus) or 1)
    slots: list[int] = list(range(jobs))
    lock = threading.Lock()

    def run(spec: dict) -> dict:
        with lock:
            slot = slots.pop(0)
        try:
            return run_trial_process(spec, slot_env(slot, gpus, jobs))
        finally:
            with lock:
                slots.append(slot)

    def _terminate(signum, frame):  # SIGTERM (a scheduler, kill): stop the trials too, like Ctrl-C
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


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise VirkitError(
            "--backend ray needs Ray, which is not installed: pip install 'virkit[ray]' (or pip install "
            "ray), or use --backend local"
        ) from None
    return ray


def run_ray(
    specs: list[dict],
    address: str | None,
    jobs: int | None,
    on_result: Callable[[dict], None],
    log: Callable[[str], None],
) -> None:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=jobs or None, include_dashboard=False, log_to_driver=False)
        except Exception as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise VirkitError(
                f"cannot start or reach {where}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            ) from None
        started = True
    try:
        res = ray.cluster_resources()
        opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
        if res.get("GPU", 0) >= 1:
            opts["num_gpus"] = 1
        log(
            f"ray: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs; each trial takes "
            f"{'1 GPU' if 'num_gpus' in opts else '1 CPU'}"
        )
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
                    except Exception as e:
                        r = {
                            "name": s["name"],
                            "status": "failed",
                            "seconds": None,
                            "error": f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                        }
                    on_result(r)
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
