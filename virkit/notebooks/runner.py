"""Executing notebooks: the private kernelspec, papermill and the batch run.

* :func:`ensure_kernelspec` writes a kernelspec (``virkit-python``) that points at the *current*
  interpreter with this checkout on ``PYTHONPATH``, so a fresh ``.venv`` needs no
  ``ipykernel install``;
* :func:`run_notebooks` validates every parameter first (one-line error, exit code 2), then
  executes the notebooks with papermill (executed copies to ``runs/notebooks/<preset>/``, figures
  to ``figures/<preset>/``), keeps going when one fails, prints a summary and returns 1 if any
  failed; ``--jobs N`` runs each notebook in a subprocess (``python -m virkit.notebooks
  --exec-one SPEC``);
* at the end, the executed notebooks' HTML pages and the figure index (:mod:`virkit.notebooks.pages`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virkit.errors import VirkitError, check_choice
from virkit.notebooks.context import REPO_ROOT
from virkit.notebooks.pages import PAGES_DIR, export_html, write_index
from virkit.notebooks.parameters import notebook_dir, notebook_parameters, planned_parameters, resolve_notebooks
from virkit.notebooks.presets import NOTEBOOK_PRESETS, preset_notebooks

__all__ = [
    "KERNEL_NAME",
    "KERNEL_START_TIMEOUT_S",
    "ensure_kernelspec",
    "NotebookResult",
    "execute_one",
    "run_notebooks",
]

KERNEL_NAME = "virkit-python"
# seconds papermill waits for a kernel to answer after starting it (papermill's default: 60). A kernel
# starts in 1-3 s on an idle machine; with two notebooks in parallel (--jobs N) beside the test suite's
# other worker on two cores, a notebook failed after 68 s without reaching its cell (its error text was
# cut from the log; 60 s + shutdown is papermill's start timeout). A kernel that never starts still
# fails, after this long.
KERNEL_START_TIMEOUT_S = 600


def ensure_kernelspec(root: str | os.PathLike, threads: int | None = None) -> Path:
    """Write a kernelspec ``virkit-python`` for ``sys.executable`` (with this checkout on
    ``PYTHONPATH``) under ``root/jupyter/kernels`` and put ``root/jupyter`` first on
    ``JUPYTER_PATH`` (this process and its children). ``threads`` sets the kernels' intra-op
    threads (``OMP_NUM_THREADS``; torch reads it at start-up)."""
    base = Path(root).resolve() / "jupyter"
    kdir = base / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    # the kernel imports this checkout of virkit even when it is not installed
    pythonpath = os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p)
    # log level ERROR: the kernel's start-up warning that it talks over local TCP without encryption
    # (printed once per notebook) is noise here; errors still show, and cells' output goes to the notebook
    spec = {
        "argv": [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--IPKernelApp.log_level=ERROR",
        ],
        "display_name": f"Python ({Path(sys.executable).name}, virkit)",
        "language": "python",
        "env": {"PYTHONPATH": pythonpath},
        "metadata": {"debugger": False},
    }
    if threads:
        spec["env"].update({"OMP_NUM_THREADS": str(int(threads)), "MKL_NUM_THREADS": str(int(threads))})
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1))
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if str(base) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(base), *paths])
    return kdir


@dataclass
class NotebookResult:
    name: str
    status: str  # ok | failed
    seconds: float
    output: str
    error: str = ""
    figures: int = 0
    parameters: dict = field(default_factory=dict)


def _clean_error(e: BaseException) -> str:
    ename = getattr(e, "ename", type(e).__name__)
    evalue = getattr(e, "evalue", str(e))
    line = f"{ename}: {evalue}".strip()
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    return line.splitlines()[0][:300] if line else ename


def execute_one(nb_path: str, out_path: str, parameters: dict, cwd: str, timeout: int | None) -> tuple[str, str]:
    """Run one notebook with papermill in this process; returns (status, error line)."""
    import papermill as pm

    try:
        pm.execute_notebook(
            nb_path,
            out_path,
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            cwd=cwd,
            progress_bar=False,
            log_output=False,
            request_save_on_cell_execute=True,
            execution_timeout=timeout,
            start_timeout=KERNEL_START_TIMEOUT_S,
        )
        return "ok", ""
    except Exception as e:
        return "failed", _clean_error(e)


def _execute_subprocess(
    nb_path: str, out_path: str, parameters: dict, cwd: str, timeout: int | None
) -> tuple[str, str]:
    spec = json.dumps({"nb": nb_path, "out": out_path, "parameters": parameters, "cwd": cwd, "timeout": timeout})
    proc = subprocess.run(
        [sys.executable, "-m", "virkit.notebooks", "--exec-one", spec],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{") and '"status"' in line:
            d = json.loads(line)
            return d["status"], d["error"]
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return "failed", f"runner subprocess exited with {proc.returncode}: {tail[:300]}"


def _expected(preset: str, train_jobs: int | None, say) -> float | None:
    """The expected seconds of a demo tier on this machine, from the cached speed calibration (said in
    one line); None for other presets or when the machine has not been measured."""
    from virkit.notebooks.tiers import DEMO_TIERS, choose_demo_tier

    if preset not in DEMO_TIERS:
        return None
    c = choose_demo_tier(train_jobs, measure=False)
    if preset not in c.expected_s:
        return None
    say(
        f"expected time for {preset} here: about {c.expected_s[preset] / 60:.1f} min ({c.rate:.0f} img/s a training "
        f"job, {c.speed}, {c.jobs} job(s))"
    )
    return c.expected_s[preset]


def ensure_preset_data(preset: str) -> None:
    """The dataset the preset's runs train on, in place before any notebook or run starts (fetched on
    first use, :func:`virkit.data.fetch.ensure_dataset`); a machine that has neither the data nor the
    network gets one line here instead of one failure per notebook."""
    from virkit.data import data_root, ensure_dataset
    from virkit.notebooks.presets import train_config

    cfg = train_config(preset, "at")
    ensure_dataset(cfg.dataset, data_root(cfg.data_root))


def run_notebooks(
    preset: str = "demo",
    only: str | Sequence[str] | None = None,
    jobs: int = 1,
    out_root: str | os.PathLike = "runs/notebooks",
    fig_root: str | os.PathLike = "figures",
    parameters_override: Mapping[str, Any] | None = None,
    folder: str | os.PathLike | None = None,
    timeout: int | None = None,
    quiet: bool = False,
    threads: int | None = None,
    train_jobs: int | None = None,
    tier_why: str | None = None,
) -> int:
    """Execute the notebooks of ``preset`` with papermill; returns the exit code (0: all passed,
    1: some failed). Raises :class:`VirkitError` (exit 2) on bad presets, names or parameters, before
    any notebook runs.

    ``threads``: torch threads per kernel (default: torch's own choice with ``jobs=1``, and
    cores // jobs with ``jobs > 1`` so parallel notebooks do not oversubscribe the CPU).

    When every notebook runs (no ``only``) and the preset lists its runs, those are trained first,
    ``train_jobs`` at a time (:func:`virkit.notebooks.prepare.prepare_runs`); the notebooks then reuse them.
    ``tier_why``: why this demo tier was chosen for this machine (printed again in the summary)."""
    check_choice("notebook preset", preset, NOTEBOOK_PRESETS)
    if int(jobs) < 1:
        raise VirkitError(f"--jobs must be >= 1, got {jobs}")
    nbs = resolve_notebooks(only, folder)
    if not only:
        nbs = preset_notebooks(preset, nbs)
    out_dir = Path(out_root).resolve() / preset
    fig_dir = Path(fig_root).resolve() / preset
    runs_root = out_dir / "runs"
    overrides = dict(parameters_override or {})
    # validate everything first: unknown override names (in none of the selected notebooks) and types
    known = set()
    for nb in nbs:
        known |= set(notebook_parameters(nb))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise VirkitError(
            f"unknown notebook parameter(s) {', '.join(map(repr, unknown))}; parameters of the "
            f"selected notebooks: {', '.join(sorted(known))}"
        )
    plans = [(nb, planned_parameters(nb, preset, fig_dir, runs_root, overrides)) for nb in nbs]
    # the data, once, before any notebook: fetched on first use, or one line naming the fixes
    ensure_preset_data(preset)

    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    if threads is not None and int(threads) < 1:
        raise VirkitError(f"--threads must be >= 1, got {threads}")
    if threads is None and int(jobs) > 1:
        threads = max(1, (os.cpu_count() or 1) // int(jobs))
    ensure_kernelspec(out_dir, threads)
    cwd = str(Path(folder).resolve() if folder else notebook_dir().resolve())
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(
        f"virkit notebooks: preset {preset!r} ({NOTEBOOK_PRESETS[preset]['description']}), {len(nbs)} notebook(s), "
        f"jobs={jobs}"
    )

    previous = _previous_seconds(out_dir / "summary.json")
    t_start = time.time()
    before = _run_dirs(runs_root)
    # the preset's run list describes the repo's notebooks: with another folder or a subset, each
    # notebook trains what it needs itself
    prepare = (
        only is None and folder is None and bool(NOTEBOOK_PRESETS[preset].get("runs")) and "runs_root" not in overrides
    )
    if prepare:
        from virkit.notebooks.prepare import prepare_runs

        prepare_runs(preset, runs_root, jobs=train_jobs, say=say, expected_s=_expected(preset, train_jobs, say))
    t0 = time.time()
    finished: dict[str, float] = {}

    def left(names_left: list[str]) -> str:
        """An estimate of what is left: the last run's time of each notebook left, else the mean so far."""
        if not names_left:
            return "done"
        mean = sum(finished.values()) / max(len(finished), 1)
        est = sum(previous.get(n, mean) for n in names_left)
        return f"about {est / 60:.1f} min left" if est >= 60 else f"about {est:.0f} s left"

    def one(plan) -> NotebookResult:
        nb, params = plan
        out_nb = out_dir / nb.name
        manifest = fig_dir / ".manifest" / f"{nb.stem}.jsonl"
        manifest.unlink(missing_ok=True)
        t = time.time()
        runner = execute_one if int(jobs) == 1 else _execute_subprocess
        status, err = runner(str(nb), str(out_nb), params, cwd, timeout)
        page_err = _export_page(out_nb, fig_dir)
        if page_err and status == "ok":
            err = page_err
        n_fig = len(manifest.read_text().splitlines()) if manifest.is_file() else 0
        res = NotebookResult(nb.stem, status, time.time() - t, str(out_nb), err, n_fig, params)
        finished[nb.stem] = res.seconds
        rest = [p.stem for p, _ in plans if p.stem not in finished]
        say(
            f"  {'ok    ' if status == 'ok' else 'FAILED'} {nb.stem:32s} {res.seconds:7.1f} s  {n_fig:2d} figure(s)"
            f"  [{len(finished)}/{len(plans)}, {time.time() - t0:.0f} s so far, {left(rest)}]"
            + (f"  {err}" if err else "")
        )
        return res

    if int(jobs) == 1:
        results = [one(p) for p in plans]
    else:
        with ThreadPoolExecutor(max_workers=int(jobs)) as ex:
            results = list(ex.map(one, plans))
    total = time.time() - t_start
    idx_md, idx_html = write_index(fig_dir, preset, out_dir)
    from virkit.notebooks.headline import batch_headline

    heads = batch_headline(runs_root, preset)
    if tier_why:
        heads = [f"tier: {preset} ({tier_why})", *heads]
    summary = {
        "preset": preset,
        "seconds": total,
        "results": [r.__dict__ for r in results],
        "provenance": provenance(),
        "headline": heads,
        "tier": {"preset": preset, "why": tier_why},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    failed = [r for r in results if r.status != "ok"]
    say(
        f"summary: {len(results) - len(failed)} passed, {len(failed)} failed, {total:.0f} s total; "
        f"executed notebooks in {out_dir}; figures and index in {idx_md.parent} ({idx_md.name}, {idx_html.name})"
    )
    for r in failed:
        say(f"  failed: {r.name}: {r.error} (see {r.output})")
    if prepare:
        from virkit.notebooks.prepare import planned_runs

        extra = sorted(_run_dirs(runs_root) - before - {r.path.name for r in planned_runs(preset, runs_root)})
        if extra:
            say(
                f"note: the notebooks trained {len(extra)} run(s) the preset's run list lacks (one at a time): "
                f"{', '.join(extra)}; add them to NOTEBOOK_PRESETS[{preset!r}]['runs'] in virkit/notebooks/presets.py"
            )
    for line in heads:
        say(line)
    say(f"index page: {idx_html}")
    return 1 if failed else 0


def _export_page(executed: Path, fig_dir: Path) -> str:
    """The HTML page of an executed notebook (a failed one too: it shows where it stopped); returns an
    error line, or "" when the page was written."""
    if not executed.is_file():
        return ""
    try:
        export_html(executed, fig_dir / PAGES_DIR / f"{executed.stem}.html")
        return ""
    except Exception as e:
        return f"HTML page not written: {_clean_error(e)}"


def provenance() -> dict:
    """Where a batch run happened: commit (and whether the checkout had changes), date, machine,
    versions (:func:`virkit.environment.environment_record`) and the command line; summary.json
    keeps it, the figure gallery cites it."""
    import torch

    from virkit.environment import environment_record

    gpu = "cuda" if torch.cuda.is_available() else None
    return {
        **environment_record(gpu, commit=True),
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["virkit", *sys.argv[1:]]) if sys.argv and "virkit" in sys.argv[0] else " ".join(sys.argv),
    }


def _run_dirs(runs_root: Path) -> set[str]:
    return {p.name for p in runs_root.iterdir() if p.is_dir()} if runs_root.is_dir() else set()


def _previous_seconds(path: Path) -> dict[str, float]:
    """{notebook: seconds} of the last batch run of this preset (for the time-left estimate)."""
    try:
        doc = json.loads(path.read_text())
        return {r["name"]: float(r["seconds"]) for r in doc.get("results", []) if r.get("status") == "ok"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
