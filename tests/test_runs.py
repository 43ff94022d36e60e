"""Run directories (virkit.runs): status, the resume/overwrite/reuse decision, and one writer at a
time, tested with real processes (a second `virkit train` or `virkit evaluate` on a run another
process is writing is refused with one line naming the directory and the holder's PID, exit 2,
nothing changed; a lock left by a SIGKILLed process is taken over)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virkit.errors import VirkitError
from virkit.locks import RunLockedError, WriterLock
from virkit.runs import RunAction, RunDir, RunStatus
from virkit.training.config import config_hash, resolve_config

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from virkit.runs import RunDir
lock = RunDir(sys.argv[1]).lock("test-holder")
print("locked", flush=True)
time.sleep(120)
"""


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _fake_run(folder: Path, finished: bool) -> Path:
    cfg = resolve_config("tiny", eval_attacks=(), device="cpu")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "config_hash": config_hash(cfg)}))
    (folder / "history.jsonl").write_text('{"epoch": 1}\n')
    (folder / "last.pt").write_bytes(b"not read by these tests")
    if finished:
        (folder / "summary.json").write_text(json.dumps({"status": "finished"}))
    return folder


@pytest.fixture
def holder():
    """Start a real process that holds a run directory's lock; yields (start(path) -> Popen)."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=_env())
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


# ------------------------------------------------------------------------------------------ status and plan
def test_status_and_plan(tmp_path):
    h = config_hash(resolve_config("tiny", eval_attacks=(), device="cpu"))
    new = RunDir(tmp_path / "new")
    assert new.status() is RunStatus.NEW and new.plan(h) is RunAction.NEW
    failed = RunDir(_fake_run(tmp_path / "failed", finished=False))
    assert failed.status() is RunStatus.FAILED
    assert failed.plan(h, resume=True) is RunAction.RESUME
    assert failed.plan(h, overwrite=True) is RunAction.OVERWRITE
    with pytest.raises(VirkitError, match="already holds an unfinished run"):
        failed.plan(h)
    with pytest.raises(VirkitError, match="cannot resume .* config differs"):
        failed.plan("0" * 12, resume=True)
    done = RunDir(_fake_run(tmp_path / "done", finished=True))
    assert done.status() is RunStatus.FINISHED
    assert done.plan(h, reuse=True) is RunAction.REUSE and done.plan(h, resume=True) is RunAction.REUSE
    with pytest.raises(VirkitError, match="finished run with a different config"):
        done.plan("0" * 12, resume=True)
    with pytest.raises(VirkitError, match="not finished an epoch"):
        new.read_history()


def test_status_running_while_another_process_holds_the_lock(tmp_path, holder):
    run = RunDir(_fake_run(tmp_path / "run", finished=False))
    p = holder(run.path)
    assert run.status() is RunStatus.RUNNING
    info = WriterLock.held_by_other(run.lock_file)
    assert info["pid"] == p.pid and info["command"] == "test-holder"
    with pytest.raises(RunLockedError, match=f"PID {p.pid}"):
        run.plan(run.config_hash(), resume=True)
    p.kill()
    p.wait()
    assert run.status() is RunStatus.FAILED  # the kernel dropped the dead process's lock


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    run = RunDir(tmp_path / "run")
    outer = run.lock("a")
    inner = run.lock("b")
    assert inner is outer and run.lock_file.is_file()
    inner.release()
    assert run.lock_file.is_file(), "the inner release must not drop the outer hold"
    outer.release()
    assert not run.lock_file.exists()


# ------------------------------------------------------------------------------------------ CLI, real processes
def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "virkit", *args], capture_output=True, text=True, env=env or _env(), timeout=600
    )


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_second_writer_is_refused_and_changes_nothing(tmp_path, holder, stand_in_root, command):
    run = _fake_run(tmp_path / "run", finished=True)
    p = holder(run)
    before = _snapshot(run)
    if command == "train":
        argv = [
            "train",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--eval-attacks",
            "",
            "--data-root",
            str(stand_in_root),
            "--out",
            str(run),
            "--overwrite",
        ]
    else:
        argv = [
            "evaluate",
            "--checkpoint",
            str(run),
            "--attacks",
            "natural",
            "--device",
            "cpu",
            "--data-root",
            str(stand_in_root),
        ]
    r = _cli(*argv)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("virkit: error: ")
    assert str(run) in r.stderr and f"PID {p.pid}" in r.stderr, r.stderr
    assert _snapshot(run) == before, "the refused writer changed the run"


def test_two_trainings_into_one_directory_one_wins(tmp_path, stand_in_root):
    """The reported race: `virkit train --method at` and `--method vir-at` with the same --out,
    started 2 s apart. Before the lock both exited 0 and the directory held a mix."""
    out = tmp_path / "mix"
    common = [
        "train",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--eval-attacks",
        "",
        "--data-root",
        str(stand_in_root),
        "--out",
        str(out),
        "--epochs",
        "3",
    ]
    a = subprocess.Popen(
        [sys.executable, "-m", "virkit", *common, "--method", "at"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.time() + 120
    while not (out / ".lock").exists() and a.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(2)
    b = _cli(*common, "--method", "vir-at")
    a_out, a_err = a.communicate(timeout=600)
    assert a.returncode == 0, a_err
    assert b.returncode == 2 and f"PID {a.pid}" in b.stderr and str(out) in b.stderr, b.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "at" and json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert not (out / ".lock").exists(), "the lock file outlived the run"


def test_lock_of_a_killed_process_is_taken_over(tmp_path, holder, stand_in_root):
    run = _fake_run(tmp_path / "run", finished=True)
    p = holder(run)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == p.pid  # the dead process's record is still there
    r = _cli(
        "train",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--eval-attacks",
        "",
        "--data-root",
        str(stand_in_root),
        "--out",
        str(run),
        "--overwrite",
        "--method",
        "at",
        "--epochs",
        "1",
        "--train-subset",
        "128",
        "--holdout",
        "0",
    )
    assert r.returncode == 0, r.stderr
    assert f"took over the lock of run directory {run} left by PID {p.pid} (no longer running)" in r.stdout + r.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_refused_writer_leaves_no_new_directory(tmp_path, stand_in_root):
    """A request refused after the lock was taken (here: bad data) removes the folder it created."""
    out = tmp_path / "fresh"
    r = _cli(
        "train",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--eval-attacks",
        "",
        "--data-root",
        str(tmp_path / "no-data"),
        "--out",
        str(out),
    )
    assert r.returncode == 2 and not out.exists(), r.stderr


# ------------------------------------------------------------------------------------------ shared burn-in
def test_branched_run_equals_an_independent_run(tmp_path, tiny_cfg):
    """VIR-AT branched from the burn-in of the VIR pipeline with w = 1 ends with exactly the weights
    of a VIR-AT run trained from scratch (CPU), and config.json records the parent."""
    import torch

    from virkit.models.checkpoint import read_checkpoint
    from virkit.training.config import burnin_key
    from virkit.training.trainer import train

    torch.set_num_threads(1)
    common = dict(epochs=3, reweight_start=3, lr_milestones=(2,), train_subset=256, holdout=64, seed=5)
    parent = train(tiny_cfg("vir-at-w1", **common), tmp_path / "w1", quiet=True)
    assert read_checkpoint(parent / "burnin.pt", "burnin")["epoch"] == 2
    child = train(tiny_cfg("vir-at", **common), tmp_path / "child", quiet=True, branch_from=parent)
    alone = train(tiny_cfg("vir-at", **common), tmp_path / "alone", quiet=True)
    a, b = read_checkpoint(child / "last.pt")["model"], read_checkpoint(alone / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hist = lambda r: [json.loads(x) for x in (r / "history.jsonl").read_text().splitlines()]
    # epochs 1-2 were not trained again: their records (timings included) are the parent's
    assert hist(child)[:2] == hist(parent)[:2] and hist(child)[:2] != hist(alone)[:2]
    rec = json.loads((child / "config.json").read_text())["parent"]
    assert rec["epoch"] == 2 and rec["config_hash"] == json.loads((parent / "config.json").read_text())["config_hash"]
    assert rec["burnin_key"] == burnin_key(tiny_cfg("mail-at", **common)) != burnin_key(tiny_cfg("gairat", **common))
    # a run whose burn-in differs (TRADES pipeline) is refused with one line, before anything is written
    with pytest.raises(VirkitError, match="burn-in differs"):
        train(tiny_cfg("vir-trades", **common), tmp_path / "bad", quiet=True, branch_from=parent)
    assert not (tmp_path / "bad").exists()


def test_branched_run_holds_the_best_checkpoint_of_an_independent_run(tmp_path, tiny_cfg, monkeypatch):
    """When validation accuracy peaks during the burn-in, an independent run's best.pt holds a burn-in
    epoch: a branched run gets that same best.pt (from burnin.pt; from the parent's best.pt for a
    burnin.pt written before it carried one), and its final evaluation covers it."""
    import torch

    from virkit.models.checkpoint import read_checkpoint
    from virkit.training import trainer
    from virkit.training.trainer import train

    torch.set_num_threads(1)
    real = trainer.holdout_accuracy
    calls = []

    def falling(model, split, cfg):  # validation PGD accuracy falls every epoch: epoch 1 is the best
        nat, _ = real(model, split, cfg)
        calls.append(1)
        return nat, 0.5 - 0.1 * (len(calls) - 1)  # epoch e: 0.6 - 0.1 e

    common = dict(
        epochs=3, reweight_start=3, lr_milestones=(2,), train_subset=256, holdout=64, seed=5, eval_attacks=("natural",)
    )
    monkeypatch.setattr(trainer, "holdout_accuracy", falling)

    def run(method, out, **kw):
        calls[:] = [1, 1] if "branch_from" in kw else []  # a branched run's first epoch is epoch 3
        return train(tiny_cfg(method, **common), tmp_path / out, quiet=True, **kw)

    parent = run("vir-at-w1", "w1")
    alone = run("vir-at", "alone")
    child = run("vir-at", "child", branch_from=parent)
    best = lambda r: read_checkpoint(r / "best.pt", "best")
    assert best(alone)["epoch"] == 1 == best(child)["epoch"]
    a, b = best(child)["model"], best(alone)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert best(child)["history"] == best(parent)["history"]
    assert json.loads(best(child)["config"])["method"] == "vir-at"  # this run's config, not the parent's
    checkpoints = json.loads((child / "summary.json").read_text())["eval_checkpoints"]
    assert checkpoints["best"]["epoch"] == 1 and (child / checkpoints["best"]["file"]).is_file()
    # the same weights as the parent's best.pt: its evaluation is reused, and it is what evaluating
    # them independently (the run trained alone) gives
    ev = lambda r: json.loads((r / "eval-best.json").read_text())["attacks"]["natural"]
    assert ev(child)["reused_from"] == str(parent / "eval-best.json") and "reused_from" not in ev(alone)
    assert ev(child)["robust"] == ev(alone)["robust"] == ev(parent)["robust"]
    # a burnin.pt from before it carried best.pt's state: the parent's best.pt (epoch 1 <= 2) stands in
    ck = torch.load(parent / "burnin.pt", weights_only=False)
    del ck["best_checkpoint"]
    torch.save(ck, parent / "burnin.pt")
    old = run("vir-at", "old", branch_from=parent)
    a = best(old)["model"]
    assert best(old)["epoch"] == 1 and all(torch.equal(a[k], b[k]) for k in a)


def test_sweep_trials_branch_from_a_finished_trial_of_the_same_burn_in(tmp_path, stand_in_root):
    """In a sweep, vir-at starts from the burn-in of vir-at-w1 (run first, same pipeline) by itself;
    gairat would not (uniform start): its burn-in key differs."""
    from virkit import sweep

    grid = {
        "name": "burnin",
        "kind": "train",
        "preset": "tiny",
        "fixed": {
            "train_subset": 128,
            "batch_size": 64,
            "epochs": 2,
            "reweight_start": 2,
            "lr_milestones": [],
            "holdout": 32,
            "holdout_pgd_steps": 1,
            "attack_steps": 1,
            "device": "cpu",
            "eval_attacks": [],
            "data_root": str(stand_in_root),
        },
        "grid": {"method": ["vir-at-w1", "vir-at", "gairat"], "seed": [0]},
    }
    doc = sweep.run_grid(grid, backend="local", jobs=1, out=tmp_path / "out", log=None)
    assert all(t["status"] == "finished" for t in doc["trials"]), doc["trials"]
    cfg = {
        m: json.loads((tmp_path / "out" / f"method={m}__seed=0" / "config.json").read_text())
        for m in ("vir-at-w1", "vir-at", "gairat")
    }
    assert cfg["vir-at"]["parent"]["path"].endswith("method=vir-at-w1__seed=0")
    assert "parent" not in cfg["vir-at-w1"] and "parent" not in cfg["gairat"]


def test_final_evaluation_reports_last_and_best(tmp_path, tiny_cfg, monkeypatch):
    """best.pt (chosen on the validation split) and last.pt are both evaluated at the end; eval.json
    names both, and `virkit report --checkpoint best` reads best's numbers and says so."""
    from virkit.paper.report import collect_runs, make_table
    from virkit.training import trainer as tr

    accs = iter([(0.5, 0.40), (0.5, 0.30), (0.5, 0.20)])  # validation PGD accuracy falls: best is epoch 1
    monkeypatch.setattr(tr, "holdout_accuracy", lambda *a, **k: next(accs))
    run = tr.train(
        tiny_cfg(
            "at", epochs=3, lr_milestones=(2,), reweight_start=3, train_subset=128, eval_attacks=("natural", "fgsm")
        ),
        tmp_path / "run",
        quiet=True,
    )
    rec = json.loads((run / "eval.json").read_text())["checkpoints"]
    assert rec["last"]["epoch"] == 3 and rec["best"]["epoch"] == 1 and rec["best"]["file"] == "eval-best.json"
    best = json.loads((run / "eval-best.json").read_text())
    assert (
        best["extra"]["checkpoint"] == "best.pt"
        and best["attacks"]["natural"]["accuracy"] == rec["best"]["accuracy"]["natural"]
    )
    assert json.loads((run / "summary.json").read_text())["eval_checkpoints"] == rec
    df = collect_runs([run], "best")
    assert df["checkpoint"].tolist() == ["best.pt"]
    assert "checkpoint best.pt" in make_table(df, 1).attrs["caption"]
    assert collect_runs([run])["checkpoint"].tolist() == ["last.pt"]
