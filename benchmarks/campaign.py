#!/usr/bin/env python
"""The phases of ``benchmarks/gpu_campaign.sh``, one per process (the shell script runs each under
its own hard cap with ``timeout``). Each phase gets a soft budget (``--budget`` seconds), plans its
work to fit it, and rewrites ``<work>/<phase>.json`` after every piece of work, so a phase killed at
its hard cap still leaves what it measured (``status`` stays ``running`` and ``current`` says what
was cut off). ``benchmarks/campaign_report.py`` collects the files.

Phases (``--mode gpu``: one CUDA device; ``--mode smoke``: the CPU, tiny everything, the same files):

* ``prep``: environment (device, driver, torch/CUDA/cuDNN/Triton versions, torchattacks or why
  not) and the CIFAR-10 stand-in decoded once into virkit's cache (GPU mode).
* ``a_train``: ``bench.bench_pair`` for ResNet-18 x VIR-AT, AT, VIR-TRADES, TRADES (batch 128,
  PGD-10): virkit's fast path (bf16 autocast, channels_last, torch.compile with the trainer's
  fallback to eager) against the reference-style loop; img/s and ``torch.cuda.max_memory_allocated``.
  Compilation is dropped (and recorded) for a method when the budget left cannot pay for it.
* ``a_wrn``: WideResNet-34-10 VIR-AT, eager (with the reference), then compiled if time is left.
* ``d_concurrency``: 4 worker processes (ResNet-18 VIR-AT, batch 128, PGD-10, eager bf16) start
  together; in timed windows 1, then 2, then 4 of them train at once; aggregate img/s per window.
* ``c_fidelity``: ResNet-18 AT and VIR-AT (and ``vir-at-flat`` when virkit has it) trained at once
  with ``virkit.training.trainer.train`` on the stand-in, as many epochs as fit the budget (planned from
  d's measured rates), the paper's schedule scaled to those epochs; natural and PGD-20 accuracy on
  1,000 test images, AutoAttack on 200 when time is left.
* ``b_autoattack``: standard AutoAttack on 1,000 test images of c's AT model, virkit and
  torchattacks (``MultiAttack`` of the same four attacks at the standard budget) alternating on the
  same chunks of images, as many chunks as fit; time and robust accuracy of both.

    python benchmarks/campaign.py PHASE --work DIR --mode gpu|smoke --budget S [--data-root DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench  # noqa: E402  (benchmarks/bench.py)
import torch  # noqa: E402
from campaign_report import PHASES, write_json_atomic  # noqa: E402

from virkit.devices import compile_model, tf32_mode  # noqa: E402

PAPER_EPOCHS, PAPER_MILESTONES, PAPER_REWEIGHT = 115, (75, 90), 76  # Sec. 5.1


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def log(msg: str) -> None:
    print(f"[campaign {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Phase:
    """A phase's result file: rewritten after every piece of work."""

    def __init__(self, name: str, args):
        self.name, self.args = name, args
        self.t0 = time.time()
        self.deadline = self.t0 + args.budget
        self.path = Path(args.work) / f"{name}.json"
        self.doc = {
            "phase": name,
            "status": "running",
            "mode": args.mode,
            "budget_s": args.budget,
            "cap_s": args.cap,
            "started": now_iso(),
            "current": None,
            "skipped": [],
            "notes": [],
        }
        self.save()

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.doc["seconds"] = round(time.time() - self.t0, 2)
        write_json_atomic(self.path, self.doc)

    def running(self, what: str | None) -> None:
        self.doc["current"] = what
        if what:
            log(f"{self.name}: {what} ({self.left():.0f} s of budget left)")
        self.save()

    def skip(self, what: str, why: str) -> None:
        self.doc["skipped"].append({"what": what, "why": why})
        log(f"{self.name}: SKIPPED {what}: {why}")
        self.save()

    def note(self, msg: str) -> None:
        self.doc["notes"].append(msg)
        log(f"{self.name}: {msg}")
        self.save()

    def done(self, status: str = "ok", why: str | None = None) -> None:
        self.doc.update({"status": status, "current": None, "finished": now_iso()})
        if why:
            self.doc["status_why"] = why
        self.save()
        log(f"{self.name}: {status} in {time.time() - self.t0:.1f} s" + (f" ({why})" if why else ""))


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"


def smoke(args) -> bool:
    return args.mode == "smoke"


def device_or_skip(ph: Phase) -> torch.device | None:
    if smoke(ph.args):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        ph.done("skipped", "CUDA is not available on this machine (GPU mode); run with --smoke on a CPU")
        return None
    return torch.device("cuda")


def read_phase(args, name: str) -> dict:
    try:
        return json.loads((Path(args.work) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def data_found(root: str | None) -> bool:
    return bool(root) and (
        (Path(root) / "cifar10-jpeg.tar.gz").is_file() or (Path(root) / "cifar-10-batches-py").is_dir()
    )


def bench_args(args, extra: list[str]) -> argparse.Namespace:
    """bench.py's settings for this mode (its CPU or GPU defaults) with ``extra`` flags."""
    base = ["--mode", "cpu" if smoke(args) else "gpu"]
    if smoke(args):
        base += ["--batch-size", "16", "--attack-steps", "1", "--threads", "1", "--data-n", "64"]
    return bench.parse_args(base + extra)


def paper_schedule(epochs: int, method: str = "vir-at") -> dict:
    """The paper's 115-epoch schedule scaled to ``epochs`` as virkit's scaled presets scale it
    (``virkit.training.config.scaled_schedule``: lr /10 after round(75/115 E) and round(90/115 E), kept
    distinct), and ``method``'s first reweighted epoch by its own rule
    (``virkit.training.config.default_reweight_start``: the epoch after the first lr drop for VIR, the
    paper's 76th of 115), capped at the last epoch so that a very short run still reweights."""
    from virkit.training.config import default_reweight_start, scaled_schedule

    milestones = tuple(int(m) for m in scaled_schedule(epochs)["lr_milestones"])
    reweight = max(1, min(epochs, default_reweight_start(method, milestones, epochs)))
    return {
        "epochs": epochs,
        "lr_milestones": milestones,
        "reweight_start": reweight,
        "scaled_from": {
            "epochs": PAPER_EPOCHS,
            "lr_milestones": list(PAPER_MILESTONES),
            "reweight_start": PAPER_REWEIGHT,
        },
    }


# ------------------------------------------------------------------------------------------------
# prep
# ------------------------------------------------------------------------------------------------
def _nvidia_smi() -> dict:
    q = (
        "name,driver_version,memory.total,memory.used,utilization.gpu,clocks.sm,clocks.max.sm,power.limit,"
        "temperature.gpu"
    )
    try:
        p = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=15
        )
        if p.returncode == 0 and p.stdout.strip():
            vals = [v.strip() for v in p.stdout.strip().splitlines()[0].split(",")]
            return dict(zip(q.split(","), vals))
        return {"error": (p.stderr or p.stdout).strip()[:200]}
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": _err(e)}


def environment(dev: torch.device) -> dict:
    """bench.py's record (virkit's one environment record, :func:`virkit.environment.environment_record`,
    plus cuDNN and torchattacks) and what the campaign adds: interpreter, host, Triton, the GPU's
    memory, SMs, capability and driver, and where torchattacks comes from."""
    env = bench.environment(dev)
    env["python_executable"] = sys.executable
    env["hostname"] = os.uname().nodename
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_sms"] = props.multi_processor_count
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        smi = _nvidia_smi()
        env["nvidia_smi"] = smi
        env["driver"] = smi.get("driver_version")
    try:
        import torchattacks

        env["torchattacks"] = torchattacks.__version__
        env["torchattacks_from"] = str(Path(torchattacks.__file__).parent)
    except Exception as e:
        env["torchattacks"] = None
        env["torchattacks_missing"] = (
            f"torchattacks not importable ({_err(e)}); copy its wheel into the "
            "checkout's data/ folder (BENCHMARKS.md, GPU campaign)"
        )
    return env


def phase_prep(ph: Phase, args) -> None:
    dev = torch.device("cpu") if smoke(args) else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ph.running("environment")
    ph.doc["env"] = environment(dev)
    ph.doc["cuda_available"] = torch.cuda.is_available()
    from virkit.training.methods import METHODS

    ph.doc["methods"] = sorted(METHODS)
    ph.doc["vir_at_flat"] = "vir-at-flat" in METHODS
    data = {"root": args.data_root, "found": data_found(args.data_root)}
    ph.doc["data"] = data
    ph.save()
    if not smoke(args) and not torch.cuda.is_available():
        ph.note("CUDA is not available: every GPU phase will skip itself")
    warm = None
    if not smoke(args) and torch.cuda.is_available():
        # compile ResNet-18's training graphs now, on other cores while the data decodes: a_train's
        # torch.compile then finds inductor's on-disk caches warm (/tmp/torchinductor_<user>)
        with open(Path(args.work) / "prep_warm_compile.log", "wb") as wlog:
            warm = subprocess.Popen(
                [
                    sys.executable,
                    "-u",
                    str(Path(__file__).resolve()),
                    "_warm_compile",
                    "--work",
                    args.work,
                    "--mode",
                    args.mode,
                    "--budget",
                    str(args.budget),
                ],
                stdout=wlog,
                stderr=subprocess.STDOUT,
                env=_child_env(max(1, (os.cpu_count() or 2) - 2)),
            )
        ph.doc["warm_compile"] = {"started": True}
    if smoke(args):
        data["decoded"] = False
        data["note"] = "smoke mode uses synthetic images (the stand-in is only looked for)"
    elif not torch.cuda.is_available():
        data["decoded"] = False
        data["note"] = "not decoded: no CUDA, so no phase would use it"
    elif not data["found"]:
        ph.skip(
            "decode the CIFAR-10 stand-in",
            f"not found under {args.data_root!r} (copy cifar10-jpeg.tar.gz into "
            "data/ of the checkout, or pass --data-root); a_train/a_wrn/d use synthetic images, c is skipped, "
            "b trains its model on synthetic images",
        )
    else:
        from virkit.data import load_dataset

        ph.running("decoding the CIFAR-10 stand-in into virkit's cache (once for all phases)")
        t = time.perf_counter()
        try:
            tr = load_dataset("cifar10", args.data_root, "train")
            te = load_dataset("cifar10", args.data_root, "test")
            data.update(
                {
                    "decoded": True,
                    "n_train": len(tr),
                    "n_test": len(te),
                    "source": tr.source,
                    "seconds": round(time.perf_counter() - t, 1),
                }
            )
        except Exception as e:
            data.update({"decoded": False, "error": _err(e)})
            ph.skip("decode the CIFAR-10 stand-in", _err(e))
    if warm is not None:
        ph.running("waiting for the compile warm-up (ResNet-18, bf16, channels_last)")
        while warm.poll() is None and ph.left() > 1.0:
            time.sleep(0.2)
        if warm.poll() is None:
            _stop([warm])
            ph.note("compile warm-up cut off at the phase budget (what it compiled stays cached)")
        try:
            ph.doc["warm_compile"] = json.loads((Path(args.work) / "prep_warm_compile.json").read_text())
        except (OSError, ValueError):
            ph.doc["warm_compile"] = {"finished": False, "returncode": warm.returncode}
        if not ph.doc["warm_compile"].get("finished"):
            ph.doc["warm_compile"]["log_tail"] = (
                (Path(args.work) / "prep_warm_compile.log").read_text(errors="replace").splitlines()[-6:]
            )
    ph.done()


def worker_warm_compile(args) -> None:
    """prep's helper: a few compiled training steps of ResNet-18 VIR-AT and VIR-TRADES (the graphs
    of AT and TRADES are among theirs) on synthetic images, filling inductor's caches."""
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    out = {"finished": False, "steps": {}}
    path = Path(args.work) / "prep_warm_compile.json"
    ns = bench_args(args, [])
    split = bench.synthetic_split(ns.batch_size * 4, seed=5).to(dev)
    for m in ("vir-at", "vir-trades"):
        t = time.time()
        loop = bench.VirkitLoop("resnet18", m, split, dev, argparse.Namespace(**{**vars(ns), "compile": True}))
        for _ in range(2):
            loop.step()
        bench.sync(dev)
        out["steps"][m] = {"seconds": round(time.time() - t, 1), "compile": loop.compiled, "log": loop.log}
        write_json_atomic(path, out)
    out["finished"] = True
    write_json_atomic(path, out)


# ------------------------------------------------------------------------------------------------
# (a) training throughput
# ------------------------------------------------------------------------------------------------
def _train_data(ph: Phase, args, n: int, dev: torch.device):
    kind = "cifar10" if (not smoke(args) and data_found(args.data_root)) else "synthetic"
    train, _, note = bench.load_data(kind, args.data_root, n, 1)
    ph.doc["data"] = {"kind": kind, "n": len(train), "note": note}
    return train.to(dev)


def _pair(ph: Phase, model: str, method: str, split, dev, ns) -> dict | None:
    t = time.time()
    try:
        r = bench.bench_pair(model, method, split, dev, ns)
    except Exception as e:
        ph.skip(f"{model} {method} (compile {'on' if ns.compile else 'off'})", f"failed: {_err(e)}")
        traceback.print_exc()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return None
    r["pair_seconds"] = round(time.time() - t, 2)
    r["compile_requested"] = bool(ns.compile)
    log(
        f"{ph.name}: {model} {method}: virkit {r['virkit_img_s']:.0f} img/s ({r['virkit_compile']}), reference "
        f"{r.get('reference_img_s', float('nan')):.0f} img/s, ratio {r.get('ratio', float('nan')):.2f}x, peak "
        f"{r['virkit_peak_mem_mib']:.0f} MiB, {r['pair_seconds']:.0f} s"
    )
    return r


def phase_a_train(ph: Phase, args) -> None:
    dev = device_or_skip(ph)
    if dev is None:
        return
    model = "small-cnn" if smoke(args) else "resnet18"
    ns = bench_args(
        args,
        ["--steps", "2", "--warmup", "1", "--rounds", "2"]
        if smoke(args)
        else ["--steps", "48", "--warmup", "8", "--rounds", "3"],
    )
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    split = _train_data(ph, args, ns.data_n, dev)
    ph.doc.update(
        {
            "model": model,
            "settings": {
                k: getattr(ns, k)
                for k in (
                    "batch_size",
                    "attack_steps",
                    "eps",
                    "step_size",
                    "precision",
                    "channels_last",
                    "compile",
                    "warmup",
                    "steps",
                    "rounds",
                    "ref_workers",
                )
            },
            "results": [],
        }
    )
    methods = ["vir-at", "at", "vir-trades", "trades"]  # the targets' methods first
    compile_ok = bool(ns.compile)
    compile_late = False  # eager pairs first, one compiled VIR-AT at the end (when compiling is not known to be quick)
    if compile_ok:
        warm = read_phase(args, "prep").get("warm_compile") or {}
        logs = "; ".join(x for st in (warm.get("steps") or {}).values() for x in st.get("log", []))
        if any(st.get("compile") == "fallback-eager" for st in (warm.get("steps") or {}).values()):
            compile_ok = False
            ph.note(f"torch.compile failed in prep's warm-up ({logs[:300]}): every method runs eager")
        elif not warm.get("finished"):
            compile_late = True
            ph.note(
                "prep's compile warm-up did not finish, so compiling may be slow: the four pairs run eager "
                "first, then a compiled VIR-AT (virkit only) if time is left"
            )
    last_compiled = eager_est = None
    for i, m in enumerate(methods):
        left, n_after = ph.left(), len(methods) - i - 1
        if eager_est is not None and left < eager_est:
            ph.skip(f"{model} {m}", f"phase budget: {left:.0f} s left, a pair takes about {eager_est:.0f} s eager")
            continue
        use_compile = (
            compile_ok
            and not compile_late
            and (last_compiled is None or left >= last_compiled + n_after * (eager_est or 0))
        )
        if compile_ok and not compile_late and not use_compile:
            ph.note(
                f"{m}: torch.compile not attempted (phase budget: {left:.0f} s left, a compiled pair took "
                f"{last_compiled:.0f} s); eager bf16 channels_last instead"
            )
        ph.running(f"{model} {m}, virkit (compile {'on' if use_compile else 'off'}) vs reference")
        r = _pair(ph, model, m, split, dev, argparse.Namespace(**{**vars(ns), "compile": use_compile}))
        if r is None and use_compile and ph.left() > (eager_est or 10):
            compile_ok = False
            ph.note(f"{m}: retried with compile off after the failure")
            r = _pair(ph, model, m, split, dev, argparse.Namespace(**{**vars(ns), "compile": False}))
        if r is None:
            continue
        ph.doc["results"].append(r)
        ph.save()
        if use_compile:
            last_compiled = r["pair_seconds"]
            if r["virkit_compile"] == "fallback-eager":
                compile_ok = False
                ph.note(
                    f"torch.compile failed on {m} ({'; '.join(r.get('virkit_log', []))[:300]}); the trainer's "
                    "fallback ran eager mode; later methods run eager"
                )
        eager_est = max(2.0, r["pair_seconds"] - r["virkit_warmup_s"] + (1.0 if smoke(args) else 3.0))
    if compile_late:
        eager = next((r for r in ph.doc["results"] if r["method"] == "vir-at"), None)
        if ph.left() < 20:
            ph.skip(f"{model} vir-at compiled", f"phase budget: {ph.left():.0f} s left after the eager pairs")
        else:
            ph.running(f"{model} vir-at, virkit compiled (no reference); the hard cap may cut this off")
            r = _pair(
                ph,
                model,
                "vir-at",
                split,
                dev,
                argparse.Namespace(**{**vars(ns), "compile": True, "no_reference": True}),
            )
            if r is not None:
                if eager is not None:  # the reference does not depend on virkit's setting: the eager pair's
                    r.update(
                        {
                            "reference_img_s": eager["reference_img_s"],
                            "ratio": r["virkit_img_s"] / eager["reference_img_s"],
                            "reference_peak_mem_mib": eager["reference_peak_mem_mib"],
                            "reference_from": "the eager vir-at pair of this phase",
                        }
                    )
                ph.doc["results"].append(r)
    ph.done("ok" if ph.doc["results"] else "failed", None if ph.doc["results"] else "no method measured")


def phase_a_wrn(ph: Phase, args) -> None:
    dev = device_or_skip(ph)
    if dev is None:
        return
    model = "small-cnn" if smoke(args) else "wrn-34-10"
    if smoke(args):
        ph.note("smoke: small-cnn stands in for WideResNet-34-10")
    ns = bench_args(
        args,
        ["--steps", "2", "--warmup", "1", "--rounds", "2"]
        if smoke(args)
        else ["--steps", "8", "--warmup", "3", "--rounds", "2", "--data-n", "10240"],
    )
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    split = _train_data(ph, args, ns.data_n, dev)
    ph.doc.update({"model": model, "results": []})
    ph.running(f"{model} vir-at, virkit eager ({ns.precision}, channels_last) vs reference")
    r = _pair(ph, model, "vir-at", split, dev, argparse.Namespace(**{**vars(ns), "compile": False}))
    if r is not None:
        ph.doc["results"].append(r)
        ph.save()
    if smoke(args) or not ns.compile:
        ph.skip(f"{model} vir-at compiled", "smoke mode: no torch.compile on the CPU")
    elif r is not None and ph.left() < max(25.0, 2 * r["pair_seconds"]):
        ph.skip(f"{model} vir-at compiled", f"phase budget: {ph.left():.0f} s left (compiling WRN-34-10 takes longer)")
    else:
        ph.running(f"{model} vir-at, virkit compiled (no reference); the hard cap may cut this off")
        r2 = _pair(
            ph, model, "vir-at", split, dev, argparse.Namespace(**{**vars(ns), "compile": True, "no_reference": True})
        )
        if r2 is not None:
            ph.doc["results"].append(r2)
    ph.done("ok" if ph.doc["results"] else "failed", None if ph.doc["results"] else "nothing measured")


# ------------------------------------------------------------------------------------------------
# (d) several training processes on one GPU
# ------------------------------------------------------------------------------------------------
def _wait_file(path: Path, timeout: float, proc: subprocess.Popen | None = None) -> dict | None:
    """The JSON at ``path`` once it appears (None after ``timeout`` s, or once ``proc`` has ended without it)."""
    end = time.time() + timeout
    while True:
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        if time.time() >= end or (proc is not None and proc.poll() is not None and not path.is_file()):
            return None
        time.sleep(0.02)


def worker_d(args) -> None:
    """One training process of phase d: warm up, report ready, train in the windows it belongs to."""
    sync_dir, i = Path(args.sync_dir), args.index
    dev = torch.device("cpu" if smoke(args) else "cuda")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ns = bench_args(args, [])
    ns.compile = False
    split = bench.synthetic_split(ns.batch_size * 8, seed=i).to(dev)
    loop = bench.VirkitLoop(args.model, args.method, split, dev, ns, seed=i)
    for _ in range(args.warmup):
        loop.step()
    bench.sync(dev)
    write_json_atomic(sync_dir / f"ready-{i}.json", {"pid": os.getpid(), "t": time.time()})
    plan = _wait_file(sync_dir / "start.json", args.wait)
    out = {"index": i, "pid": os.getpid(), "windows": []}
    if plan is None:
        out["error"] = "no start signal"
    else:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for w in plan["windows"]:
            if i not in w["members"]:
                continue
            time.sleep(max(0.0, w["start"] - time.time()))
            t0, steps = time.time(), 0
            while True:
                loop.step()
                bench.sync(dev)
                steps += 1
                if time.time() >= w["end"]:
                    break
            dt = time.time() - t0
            out["windows"].append(
                {"processes": w["processes"], "steps": steps, "seconds": dt, "img_s": steps * ns.batch_size / dt}
            )
        out["finite"] = loop.finite()
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    write_json_atomic(sync_dir / f"result-{i}.json", out)


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(HERE), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    return env


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    end = time.time() + 3
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def phase_d_concurrency(ph: Phase, args) -> None:
    dev = device_or_skip(ph)
    if dev is None:
        return
    model = "small-cnn" if smoke(args) else "resnet18"
    levels = [1, 2] if smoke(args) else [1, 2, 4]
    ns = bench_args(args, [])
    warmup = 1 if smoke(args) else 10
    ph.doc.update(
        {
            "model": model,
            "method": "vir-at",
            "batch_size": ns.batch_size,
            "attack_steps": ns.attack_steps,
            "precision": ns.precision,
            "channels_last": ns.channels_last,
            "compile": False,
            "warmup": warmup,
            "levels_planned": levels,
            "levels": [],
            "how": "max(levels) processes start and warm up together; then in consecutive windows the first 1, "
            "2, 4 of them train at once (synchronizing after every step); a window's aggregate is the "
            "sum of its processes' img/s",
        }
    )
    sync_dir = Path(args.work) / "d_sync"
    shutil.rmtree(sync_dir, ignore_errors=True)
    sync_dir.mkdir(parents=True)
    n = max(levels)
    threads = 1 if smoke(args) else max(1, (os.cpu_count() or 2) // n)
    logs = [open(Path(args.work) / f"d_worker-{i}.log", "wb") for i in range(n)]
    cmd = [
        sys.executable,
        "-u",
        str(Path(__file__).resolve()),
        "_d_worker",
        "--work",
        args.work,
        "--mode",
        args.mode,
        "--budget",
        str(args.budget),
        "--model",
        model,
        "--method",
        "vir-at",
        "--sync-dir",
        str(sync_dir),
        "--warmup",
        str(warmup),
        "--wait",
        str(max(5.0, args.budget)),
    ]
    ph.running(f"starting {n} worker processes ({model} vir-at)")
    procs = [
        subprocess.Popen(cmd + ["--index", str(i)], stdout=logs[i], stderr=subprocess.STDOUT, env=_child_env(threads))
        for i in range(n)
    ]
    try:
        ready_by = ph.t0 + 0.6 * args.budget
        while time.time() < ready_by:
            ready = [i for i in range(n) if (sync_dir / f"ready-{i}.json").is_file()]
            if len(ready) == n or all(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        ready = [i for i in range(n) if (sync_dir / f"ready-{i}.json").is_file()]
        ph.doc["ready"] = len(ready)
        ph.doc["startup_s"] = round(time.time() - ph.t0, 1)
        if len(ready) < n:
            ph.note(
                f"only {len(ready)} of {n} workers were ready after {time.time() - ph.t0:.0f} s; the others are "
                "stopped (their warm-up would run into the timed windows)"
            )
            _stop([procs[i] for i in range(n) if i not in ready])
        run_levels = [lv for lv in levels if lv <= len(ready)]
        for lv in levels:
            if lv not in run_levels:
                ph.skip(f"{lv} processes", f"only {len(ready)} worker(s) started and warmed up in time")
        if not run_levels:
            ph.done("failed", "no worker became ready")
            return
        gap = 0.3 if smoke(args) else 1.0
        window = (ph.left() - 3.0) / len(run_levels) - gap
        window = max(0.3 if smoke(args) else 1.5, min(1.0 if smoke(args) else 6.0, window))
        t = time.time() + 0.3
        windows = []
        for lv in run_levels:
            windows.append({"processes": lv, "members": ready[:lv], "start": t, "end": t + window})
            t += window + gap
        ph.doc["window_s"] = window
        write_json_atomic(sync_dir / "start.json", {"windows": windows})
        ph.running(f"timed windows of {window:.1f} s with {run_levels} processes")
        results = []
        for i in ready:
            r = _wait_file(sync_dir / f"result-{i}.json", max(1.0, t - time.time() + 20), procs[i])
            results.append(r or {"index": i, "error": f"no result (exit code {procs[i].poll()})"})
        ph.doc["workers"] = results
        base = None
        for lv in run_levels:
            rates = [w["img_s"] for r in results for w in r.get("windows", []) if w["processes"] == lv]
            entry = {
                "processes": lv,
                "aggregate_img_s": sum(rates),
                "per_process_img_s": rates,
                "complete": len(rates) == lv,
            }
            if lv == 1 and rates:
                base = sum(rates)
            entry["vs_1_process"] = sum(rates) / base if base else None
            ph.doc["levels"].append(entry)
        ph.doc["peak_mem_mib_per_process"] = [r.get("peak_mem_mib") for r in results]
        log(
            f"{ph.name}: "
            + ", ".join(f"{e['processes']} proc {e['aggregate_img_s']:.0f} img/s" for e in ph.doc["levels"])
        )
    finally:
        _stop(procs)
        for f in logs:
            f.close()
    bad = [r for r in ph.doc.get("workers", []) if "error" in r]
    for r in bad:
        tail = (Path(args.work) / f"d_worker-{r['index']}.log").read_text(errors="replace").splitlines()[-5:]
        ph.skip(f"worker {r['index']}", f"{r['error']}; log tail: {' | '.join(tail)}")
    ph.done("ok" if ph.doc["levels"] and not bad else "failed", None if not bad else f"{len(bad)} worker(s) failed")


# ------------------------------------------------------------------------------------------------
# (c) short fidelity run
# ------------------------------------------------------------------------------------------------
def _smoke_imagefolder(root: Path) -> Path:
    """A tiny ImageFolder tree of synthetic 32x32 PNGs (10 classes) for the smoke run of phase c."""
    from PIL import Image

    if (root / "test").is_dir():
        return root
    s = bench.synthetic_split(10 * 12, seed=3)
    for i in range(len(s)):
        split = "train" if i < 10 * 8 else "test"
        d = root / split / f"c{int(s.y[i])}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(s.x[i].permute(1, 2, 0).numpy()).save(d / f"{i:04d}.png")
    for split in ("train", "test"):  # every class in both splits
        for c in range(10):
            d = root / split / f"c{c}"
            if not d.is_dir():
                d.mkdir(parents=True)
                Image.fromarray(s.x[c].permute(1, 2, 0).numpy()).save(d / f"x{c}.png")
    return root


def _rate_per_run(args, k: int) -> tuple[float, str]:
    """Images/s one of ``k`` concurrent ResNet-18 VIR-AT trainings gets, from phase d (else a)."""
    d = read_phase(args, "d_concurrency")
    pts = {lv["processes"]: lv["aggregate_img_s"] for lv in d.get("levels", []) if lv.get("complete")}
    if pts:
        xs = sorted(pts)
        if k in pts:
            agg = pts[k]
        elif k > xs[-1]:
            agg = pts[xs[-1]]
        elif k < xs[0]:
            agg = pts[xs[0]]
        else:
            lo = max(x for x in xs if x < k)
            hi = min(x for x in xs if x > k)
            agg = pts[lo] + (pts[hi] - pts[lo]) * (k - lo) / (hi - lo)
        return agg / k, f"phase d: {agg:.0f} img/s aggregate for {k} processes (interpolated if not measured)"
    a = read_phase(args, "a_train")
    for r in a.get("results", []):
        if r.get("method") == "vir-at":
            return 0.6 * r["virkit_img_s"] / k, (
                f"phase a: 0.6 x the single-process VIR-AT rate, shared by {k} runs (phase d has no rate)"
            )
    return 1500.0 / k, "assumed 1,500 img/s shared by the runs (neither phase d nor a measured a rate)"


def worker_c(args) -> None:
    """One training run of phase c (a child process): ``virkit.training.trainer.train``."""
    from virkit.training.config import TrainConfig
    from virkit.training.trainer import train

    if torch.cuda.is_available() and not smoke(args):
        torch.backends.cudnn.benchmark = True
    if smoke(args):
        torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads(args.cfg_json))
    train(cfg, args.run_dir, overwrite=True, log=lambda s: print(s, flush=True))


def phase_c_fidelity(ph: Phase, args) -> None:
    dev = device_or_skip(ph)
    if dev is None:
        return
    from virkit.training.config import resolve_config
    from virkit.training.methods import METHODS

    methods = ["at", "vir-at"] + (["vir-at-flat"] if "vir-at-flat" in METHODS else [])
    if "vir-at-flat" not in METHODS:
        ph.skip("vir-at-flat", "virkit.training.methods.METHODS has no 'vir-at-flat' in this checkout")
    k = len(methods)
    if smoke(args):
        model, dataset, root = "small-cnn", "imagefolder", str(_smoke_imagefolder(Path(args.work) / "smoke-images"))
        n_train, n_eval, n_aa = 80, 20, 8
        epochs, estimate = 2, {"note": "smoke: 2 epochs"}
        extra = {
            "batch_size": 16,
            "attack_steps": 1,
            "step_size": 8 / 255,
            "holdout": 16,
            "holdout_pgd_steps": 1,
            "train_subset": None,
        }
        precision, channels_last = "fp32", True
    else:
        if not data_found(args.data_root):
            ph.done(
                "skipped", f"the CIFAR-10 stand-in is not under {args.data_root!r}; copy it into data/ (BENCHMARKS.md)"
            )
            return
        model, dataset, root = "resnet18", "cifar10", args.data_root
        n_train = (read_phase(args, "prep").get("data") or {}).get("n_train") or 50000
        n_eval, n_aa = 1000, 200
        per_run, source = _rate_per_run(args, k)
        startup, holdout_s, ckpt_s = 15.0, 2.0, 1.0
        eval_reserve = 4.0 * k + 5.0
        epoch_s = n_train / per_run + holdout_s + ckpt_s
        window = args.budget - startup - eval_reserve - 3.0
        epochs = int(max(1, min(PAPER_EPOCHS, math.floor(window / epoch_s))))
        estimate = {
            "per_run_img_s": per_run,
            "source": source,
            "epoch_s": epoch_s,
            "train_window_s": window,
            "startup_s": startup,
            "eval_reserve_s": eval_reserve,
        }
        extra = {"holdout": 1000, "holdout_pgd_steps": 10}
        precision, channels_last = "bf16", True
    sched = paper_schedule(epochs)
    ph.doc.update(
        {
            "model": model,
            "dataset": dataset,
            "data_root": root,
            "methods": methods,
            "concurrent_runs": k,
            "schedule": {**sched, "lr_milestones": list(sched["lr_milestones"])},
            "estimate": estimate,
            "runs": [],
        }
    )
    cfgs = {}
    for m in methods:
        cfgs[m] = resolve_config(
            "paper",
            model=model,
            method=m,
            dataset=dataset,
            data_root=root,
            seed=0,
            epochs=epochs,
            lr_milestones=sched["lr_milestones"],
            reweight_start=paper_schedule(epochs, m)["reweight_start"],
            device=str(dev),
            precision=precision,
            channels_last=channels_last,
            compile=False,
            eval_attacks=(),
            **extra,
        )
    ph.doc["config"] = {k2: v for k2, v in cfgs[methods[-1]].to_dict().items() if k2 not in ("method",)}
    eval_reserve = estimate.get("eval_reserve_s", 0.0) if not smoke(args) else 0.0
    run_root = Path(args.work) / "c_runs"
    threads = 1 if smoke(args) else max(1, (os.cpu_count() or 2) // k)
    procs, logs = {}, {}
    ph.running(f"training {', '.join(methods)} at once, {epochs} epoch(s) each ({model}, {dataset})")
    for m in methods:
        logs[m] = open(Path(args.work) / f"c_{m}.log", "wb")
        procs[m] = subprocess.Popen(
            [
                sys.executable,
                "-u",
                str(Path(__file__).resolve()),
                "_c_train",
                "--work",
                args.work,
                "--mode",
                args.mode,
                "--budget",
                str(args.budget),
                "--cfg-json",
                json.dumps(cfgs[m].to_dict()),
                "--run-dir",
                str(run_root / m),
            ],
            stdout=logs[m],
            stderr=subprocess.STDOUT,
            env=_child_env(threads),
        )
    stop_at = ph.deadline - eval_reserve
    try:
        while time.time() < stop_at and any(p.poll() is None for p in procs.values()):
            time.sleep(0.2)
        cut = [m for m, p in procs.items() if p.poll() is None]
        if cut:
            ph.note(
                f"training of {', '.join(cut)} stopped at the phase's training deadline (the last finished epoch's "
                "checkpoint is evaluated)"
            )
    finally:
        _stop(list(procs.values()))
        for f in logs.values():
            f.close()
    from virkit.data import load_dataset, test_subset
    from virkit.evaluation import EvalSettings, evaluate_model
    from virkit.models.checkpoint import load_checkpoint

    test = None
    try:
        test = test_subset(load_dataset(dataset, root, "test"), n_eval).to(dev)
    except Exception as e:
        ph.skip("evaluation", f"cannot load the test split: {_err(e)}")
    aa_over = {"aa": {"apgd_steps": 2, "fab_steps": 2, "square_queries": 10}} if smoke(args) else {}
    for m in methods:
        run_dir = run_root / m
        hist = []
        try:
            hist = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines() if x.strip()]
        except OSError:
            pass
        rec = {
            "method": m,
            "run_dir": str(run_dir),
            "returncode": procs[m].returncode,
            "epochs_done": len(hist),
            "reweight_start": cfgs[m].reweight_start if METHODS[m].reweighted else None,
            "history": [
                {
                    k2: h.get(k2)
                    for k2 in (
                        "epoch",
                        "lr",
                        "train_loss",
                        "train_adv_acc",
                        "holdout_nat_acc",
                        "holdout_pgd_acc",
                        "reweighting_active",
                        "weight_mean",
                        "images_per_s",
                        "seconds",
                    )
                }
                for h in hist
            ],
            "train_img_s_mean": (sum(h["images_per_s"] for h in hist) / len(hist)) if hist else None,
            "eval": {},
        }
        ph.doc["runs"].append(rec)
        if m == "at":
            ph.doc["at_checkpoint"] = str(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None
        if not hist or not (run_dir / "last.pt").is_file():
            tail = (Path(args.work) / f"c_{m}.log").read_text(errors="replace").splitlines()[-8:]
            ph.skip(f"{m} evaluation", f"no epoch finished (rc {procs[m].returncode}); log tail: {' | '.join(tail)}")
            continue
        if test is None:
            continue
        ph.running(f"evaluating {m}: natural and PGD-20 on {len(test)} test images")
        try:
            mdl, _ = load_checkpoint(run_dir / "last.pt", dev)
            doc = evaluate_model(
                mdl, test, EvalSettings(["natural", "pgd20"], batch_size=500, progress=False), device=dev
            )
            rec["eval"].update({a: doc["attacks"][a]["accuracy"] for a in ("natural", "pgd20")})
            rec["eval"]["n"] = len(test)
            rec["eval"]["seconds"] = round(sum(doc["attacks"][a].get("seconds", 0.0) for a in doc["attacks"]), 2)
        except Exception as e:
            ph.skip(f"{m} evaluation", _err(e))
        ph.save()
    # AutoAttack on a subset with what is left
    aa_est = 2.0 if smoke(args) else 20.0
    for rec in ph.doc["runs"]:
        if "natural" not in rec["eval"] or test is None:
            continue
        if ph.left() < aa_est:
            ph.skip(
                f"{rec['method']} AutoAttack on {n_aa} images",
                f"phase budget ({ph.left():.0f} s left, about {aa_est:.0f} s needed)",
            )
            continue
        ph.running(f"AutoAttack on {n_aa} test images of {rec['method']}")
        t = time.time()
        try:
            mdl, _ = load_checkpoint(Path(rec["run_dir"]) / "last.pt", dev)
            sub = type(test)(test.x[:n_aa], test.y[:n_aa], test.classes, test.name, test.source, test.mean, test.std)
            doc = evaluate_model(
                mdl, sub, EvalSettings(["aa"], batch_size=500, progress=False, attack_overrides=aa_over), device=dev
            )
            rec["eval"].update(
                {
                    "aa": doc["attacks"]["aa"]["accuracy"],
                    "aa_n": n_aa,
                    "aa_seconds": round(doc["attacks"]["aa"].get("seconds", 0.0), 2),
                    "aa_budget": "smoke (APGD/FAB 2 steps, Square 10 queries)" if smoke(args) else "standard",
                }
            )
        except Exception as e:
            ph.skip(f"{rec['method']} AutoAttack", _err(e))
        aa_est = max(aa_est, 1.3 * (time.time() - t))
        ph.save()
    ok = all(r["epochs_done"] > 0 for r in ph.doc["runs"])
    ph.done("ok" if ok else "failed", None if ok else "a run finished no epoch")


# ------------------------------------------------------------------------------------------------
# (b) AutoAttack
# ------------------------------------------------------------------------------------------------
def _aa_budget(args) -> dict:
    if smoke(args):
        return {
            "name": "smoke: APGD/FAB 2 steps, Square 10 queries",
            "apgd_steps": 2,
            "fab_steps": 2,
            "square_queries": 10,
        }
    return {
        "name": "standard: APGD-CE, APGD-T, FAB-T 100 steps, 9 targets, Square 5000",
        "apgd_steps": 100,
        "fab_steps": 100,
        "square_queries": 5000,
    }


def _b_model(ph: Phase, args, dev):
    """(model, origin, test split): c's AT checkpoint, else a quick AT model trained here."""
    from virkit.data import load_dataset, test_subset

    c = read_phase(args, "c_fidelity")
    ck = c.get("at_checkpoint")
    n = 12 if smoke(args) else 1000
    if ck and Path(ck).is_file():
        from virkit.models.checkpoint import load_checkpoint

        model, cfg = load_checkpoint(ck, dev)
        test = test_subset(load_dataset(c["dataset"], c["data_root"], "test"), n)
        at = next((r for r in c.get("runs", []) if r["method"] == "at"), {})
        return model, f"phase c's AT {cfg.get('model')} after {at.get('epochs_done')} epoch(s) ({ck})", test
    ph.note("phase c left no AT checkpoint: training a quick AT model here")
    real = not smoke(args) and data_found(args.data_root)
    ns = bench_args(args, [])
    ns.compile = False
    if real:
        train = load_dataset("cifar10", args.data_root, "train")
        test = test_subset(load_dataset("cifar10", args.data_root, "test"), n)
    else:
        pool = bench.synthetic_split(2048 + n, 0)
        train = bench.Split(pool.x[:2048], pool.y[:2048], pool.classes, pool.name, pool.source, pool.mean, pool.std)
        test = bench.Split(pool.x[2048:], pool.y[2048:], pool.classes, pool.name, pool.source, pool.mean, pool.std)
    model_name = "small-cnn" if smoke(args) else "resnet18"
    loop = bench.VirkitLoop(model_name, "at", train.to(dev), dev, ns, seed=1)
    t, steps, limit = time.time(), 0, (20 if smoke(args) else 600)
    train_until = time.time() + 0.3 * ph.left()
    while steps < limit and time.time() < train_until:
        loop.step()
        steps += 1
    bench.sync(dev)
    return (
        loop.model.eval(),
        (
            f"{model_name} trained here: virkit PGD-{ns.attack_steps} AT, {steps} steps of "
            f"{ns.batch_size} on {'CIFAR-10 stand-in' if real else 'synthetic images'} "
            f"({time.time() - t:.0f} s)"
        ),
        test,
    )


def _b_compiled(ph: Phase, args, model, vk, timed, xb, yb, eager_s) -> None:
    """virkit's AutoAttack once more on the first chunk, with the model torch.compile'd as
    ``virkit evaluate --compile on`` does it (automatic dynamic shapes), if the budget pays for the
    compilation: seconds and robust count next to the eager chunk's."""
    est = 60.0 + 1.2 * (eager_s or 0.0)  # compiling ResNet-18 forward + backward, then one chunk
    if smoke(args) or eager_s is None or ph.left() < est:
        ph.skip(
            "virkit AutoAttack, compiled model",
            "smoke mode"
            if smoke(args)
            else f"phase budget: {ph.left():.0f} s left, compiling and one chunk take about {est:.0f} s",
        )
        return
    ph.running(f"virkit AutoAttack on images 0-{len(yb) - 1} again, model torch.compile'd")
    t = time.perf_counter()
    compiled = compile_model(model, xb, dynamic=None, log=ph.note)
    compile_s = time.perf_counter() - t
    if compiled is model:
        ph.doc["virkit_compiled"] = {"status": "fallback-eager", "compile_s": compile_s}
        return
    rc = timed(lambda a, b: vk(compiled, a, b), xb, yb)
    first = ph.doc["virkit"]["chunks"][0]
    ph.doc["virkit_compiled"] = {
        "status": "compiled",
        "compile_s": compile_s,
        **rc,
        "eager_seconds": first["seconds"],
        "eager_robust": first["robust"],
        "speedup_vs_eager": first["seconds"] / rc["seconds"] if rc["seconds"] > 0 else None,
        "note": "the first timed call includes the recompiles of the shrinking batches",
    }
    ph.save()


def phase_b_autoattack(ph: Phase, args) -> None:
    dev = device_or_skip(ph)
    if dev is None:
        return
    from virkit.attacks.autoattack import AutoAttack

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False  # AutoAttack's shrinking subsets: no autotuning for every new shape
    budget = _aa_budget(args)
    # fp32 as virkit's evaluation runs it: TF32 off for both implementations (PyTorch leaves cuDNN's
    # on), for the rest of this process (the phase is one process)
    ph.doc["tf32"] = tf32_mode(dev, allow=False).__enter__()
    ph.running("preparing the model")
    model, origin, test = _b_model(ph, args, dev)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = test.float_images().contiguous().to(dev)  # contiguous NCHW (torchattacks' FAB uses .view)
    y = test.y.to(dev)
    n, chunk = len(y), (6 if smoke(args) else 250)
    eps = 8 / 255
    nat = bench._accuracy(model, x, y, chunk)
    xw = x[:chunk].clone().requires_grad_(True)  # warm-up (kernels, handles) before anything is timed
    torch.nn.functional.cross_entropy(model(xw), y[:chunk]).backward()
    bench.sync(dev)
    ph.doc.update(
        {
            "model": "small-cnn" if smoke(args) else "resnet18",
            "model_origin": origin,
            "n_planned": n,
            "chunk": chunk,
            "eps": eps,
            "natural_acc": nat,
            "budget_name": budget["name"],
            "budget": budget,
            "cudnn_benchmark": False,
            "virkit": {"chunks": []},
        }
    )
    try:
        import torchattacks

        ph.doc["torchattacks"] = {
            "version": torchattacks.__version__,
            "chunks": [],
            "what": "MultiAttack(APGD-CE, APGD-T, FAB-T multi-targeted, Square) at the same budget as virkit",
        }
    except Exception as e:
        torchattacks = None
        ph.doc["torchattacks"] = {"skipped": f"torchattacks not importable ({_err(e)}): put its wheel in data/"}
        ph.skip("torchattacks comparison", ph.doc["torchattacks"]["skipped"])
    vk = AutoAttack(
        eps=eps,
        apgd_steps=budget["apgd_steps"],
        fab_steps=budget["fab_steps"],
        square_queries=budget["square_queries"],
        seed=0,
    )
    ta = None
    if torchattacks is not None:
        k = test.num_classes
        ta = torchattacks.MultiAttack(
            [
                torchattacks.APGD(
                    model, norm="Linf", eps=eps, steps=budget["apgd_steps"], n_restarts=1, loss="ce", seed=0
                ),
                torchattacks.APGDT(
                    model, norm="Linf", eps=eps, steps=budget["apgd_steps"], n_restarts=1, n_classes=k, seed=0
                ),
                torchattacks.FAB(
                    model,
                    norm="Linf",
                    eps=eps,
                    steps=budget["fab_steps"],
                    n_restarts=1,
                    multi_targeted=True,
                    n_classes=k,
                    seed=0,
                ),
                torchattacks.Square(
                    model, norm="Linf", eps=eps, n_queries=budget["square_queries"], n_restarts=1, seed=0
                ),
            ]
        )

    def timed(fn, xb, yb) -> dict:
        mem = bench.PeakMemory(dev)
        with mem.measure():
            bench.sync(dev)
            t = time.perf_counter()
            xa = fn(xb, yb).detach()
            bench.sync(dev)
            dt = time.perf_counter() - t
        with torch.no_grad():
            robust = int((model(xa).argmax(1) == yb).sum())
        return {
            "n": len(yb),
            "seconds": dt,
            "robust": robust,
            "max_linf": float((xa - xb).abs().amax()),
            "peak_mem_mib": mem.peak,
        }

    # chunk by chunk, virkit then torchattacks on the same images; once both no longer fit, virkit
    # alone goes on (the comparison stays on the chunks both finished: always the first ones)
    last_vk = last_ta = None
    for s in range(0, n, chunk):
        xb, yb = x[s : s + chunk], y[s : s + chunk]
        rest = f"images {s}-{n - 1}"
        if ta is not None and last_ta is not None and ph.left() < 1.15 * (last_vk + last_ta):
            ph.skip(
                f"torchattacks on {rest}",
                f"phase budget: {ph.left():.0f} s left, a chunk takes about "
                f"{last_vk + last_ta:.0f} s for both; virkit goes on alone",
            )
            ta = None
        if last_vk is not None and ph.left() < 1.15 * last_vk:
            ph.skip(f"virkit on {rest}", f"phase budget: {ph.left():.0f} s left, a chunk takes about {last_vk:.0f} s")
            break
        ph.running(f"virkit AutoAttack on images {s}-{s + len(yb) - 1}")
        rv = timed(lambda a, b: vk(model, a, b), xb, yb)
        det = getattr(vk, "details", None)
        if isinstance(det, dict) and isinstance(det.get("components"), dict):  # robust after each component
            rv["robust_after"] = {k: int(v.sum()) for k, v in det["components"].items()}
        ph.doc["virkit"]["chunks"].append(rv)
        ph.save()
        last_vk = rv["seconds"]
        if ta is not None:
            if last_ta is None and ph.left() < 1.5 * last_vk:
                ph.skip(f"torchattacks on {rest}", f"phase budget: {ph.left():.0f} s left after virkit's first chunk")
                ta = None
                continue
            ph.running(f"torchattacks AutoAttack on images {s}-{s + len(yb) - 1}")
            try:
                rt = timed(lambda a, b: ta(a, b), xb, yb)
                ph.doc["torchattacks"]["chunks"].append(rt)
                last_ta = rt["seconds"]
            except Exception as e:
                ph.doc["torchattacks"]["error"] = _err(e)
                ph.skip("torchattacks", f"failed: {_err(e)}")
                ta = None
            ph.save()

    def total(side: dict, upto: int | None = None) -> dict:
        ch = side.get("chunks", [])[:upto]
        if not ch:
            return {}
        n_ = sum(c["n"] for c in ch)
        return {
            "n": n_,
            "seconds": sum(c["seconds"] for c in ch),
            "robust_acc": sum(c["robust"] for c in ch) / n_,
            "max_linf": max(c["max_linf"] for c in ch),
            "peak_mem_mib": max(c["peak_mem_mib"] for c in ch),
        }

    ph.doc["virkit"].update(total(ph.doc["virkit"]))
    _b_compiled(ph, args, model, vk, timed, x[:chunk], y[:chunk], last_vk)
    if "chunks" in ph.doc["torchattacks"] and ph.doc["torchattacks"]["chunks"]:
        both = len(ph.doc["torchattacks"]["chunks"])
        ph.doc["torchattacks"].update(total(ph.doc["torchattacks"]))
        v, t = total(ph.doc["virkit"], both), total(ph.doc["torchattacks"], both)
        ph.doc["compare"] = {
            "n": v["n"],
            "virkit_seconds": v["seconds"],
            "torchattacks_seconds": t["seconds"],
            "speedup": t["seconds"] / v["seconds"] if v["seconds"] > 0 else None,
            "virkit_robust_acc": v["robust_acc"],
            "torchattacks_robust_acc": t["robust_acc"],
            "robust_acc_diff_points": 100 * (v["robust_acc"] - t["robust_acc"]),
        }
    ok = bool(ph.doc["virkit"].get("chunks"))
    ph.done("ok" if ok else "failed", None if ok else "nothing measured")


# ------------------------------------------------------------------------------------------------
PHASE_FUNCS = {
    "prep": phase_prep,
    "a_train": phase_a_train,
    "a_wrn": phase_a_wrn,
    "d_concurrency": phase_d_concurrency,
    "c_fidelity": phase_c_fidelity,
    "b_autoattack": phase_b_autoattack,
}
assert tuple(PHASE_FUNCS) == tuple(sorted(PHASE_FUNCS, key=PHASES.index))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=[*PHASE_FUNCS, "_d_worker", "_c_train", "_warm_compile"])
    p.add_argument("--work", required=True, help="the campaign's work folder (phase files, logs, run directories)")
    p.add_argument("--mode", choices=["gpu", "smoke"], default="gpu")
    p.add_argument("--budget", type=float, required=True, help="the phase's soft budget in seconds")
    p.add_argument("--cap", type=float, help="the phase's hard cap (recorded; the shell enforces it)")
    p.add_argument("--data-root", help="folder holding cifar10-jpeg.tar.gz")
    # workers
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--model")
    p.add_argument("--method")
    p.add_argument("--sync-dir")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--wait", type=float, default=60.0)
    p.add_argument("--cfg-json")
    p.add_argument("--run-dir")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.mode == "smoke":
        torch.set_num_threads(1)
    if args.phase == "_d_worker":
        return worker_d(args)
    if args.phase == "_c_train":
        return worker_c(args)
    if args.phase == "_warm_compile":
        return worker_warm_compile(args)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # the hard cap: exit (children die with the group)
    ph = Phase(args.phase, args)
    try:
        if os.environ.get("CAMPAIGN_TEST_STALL") == args.phase:  # tests: a phase that overruns its hard cap
            ph.running("stalling (CAMPAIGN_TEST_STALL)")
            time.sleep(3600)
        PHASE_FUNCS[args.phase](ph, args)
    except SystemExit:
        raise
    except BaseException as e:
        ph.doc["error"] = _err(e)
        ph.doc["traceback"] = traceback.format_exc()[-3000:]
        ph.done("failed", _err(e))
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
