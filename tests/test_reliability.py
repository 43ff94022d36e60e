"""Issue #6, reliability: kill and resume, atomic writes, hostile files, numerical and disk faults,
determinism. Each test fails when the protection it covers is removed (see docs/RELIABILITY.md).

Training runs use the ``tiny`` preset shrunk further (192 training images, 3 steps an epoch) on the
CPU, with one thread: the whole module needs about a minute of CPU time.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from virkit.cli import main
from virkit.errors import NonFiniteLossError, VirkitError
from virkit.models.checkpoint import FORMAT, load_checkpoint, read_checkpoint
from virkit.training import epoch as training_epoch
from virkit.training import trainer

REPO = Path(__file__).resolve().parents[1]
# The same run as CLI options and as TrainConfig overrides. vir-at from epoch 2 and an lr step after
# epoch 2, so that the resumed epochs differ from the first (weights, schedule, momentum).
RUN = {
    "train_subset": 192,
    "batch_size": 64,
    "holdout": 32,
    "attack_steps": 1,
    "epochs": 3,
    "seed": 7,
    "lr_milestones": (2,),
    "reweight_start": 2,
}
STEPS = -(-RUN["train_subset"] // RUN["batch_size"])  # steps an epoch (3)
TIMING_KEYS = {"seconds", "images_per_s", "seconds_with_holdout"}


def cli_args(root: Path, **overrides) -> list[str]:
    opts = {**RUN, **overrides}
    args = ["--preset", "tiny", "--method", "vir-at", "--device", "cpu", "--eval-attacks", "", "--data-root", str(root)]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return args


def subprocess_env(root: Path) -> dict:
    # same thread count as this process: CPU kernels then reduce in the same order, bit for bit
    return {
        **os.environ,
        "VIRKIT_DATA": str(root),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def metrics(hist: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in hist]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = read_checkpoint(a / "last.pt", "last")["model"], read_checkpoint(b / "last.pt", "last")["model"]
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"tensors differ: {diff}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here and in the subprocesses (``subprocess_env``): results are bitwise
    comparable between them, and on 2 shared cores one thread trains faster than two."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def env_data(stand_in_root):
    """VIRKIT_DATA -> the stand-in for this module (its decoded cache lives there)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VIRKIT_DATA", str(stand_in_root))
    yield stand_in_root
    mp.undo()


@pytest.fixture(scope="module")
def reference_run(env_data, tmp_path_factory):
    """An uninterrupted 3-epoch run, in this process."""
    from virkit.training.config import resolve_config

    cfg = resolve_config("tiny", method="vir-at", device="cpu", eval_attacks=(), data_root=str(env_data), **RUN)
    return trainer.train(cfg, tmp_path_factory.mktemp("reference") / "run", log=None)


# ------------------------------------------------------------------------------------------ kill / resume
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(reference_run, env_data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "virkit", "train", *cli_args(env_data), "--out", str(run)]
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(cmd, env=subprocess_env(env_data), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # history.jsonl is written after last.pt
            if (run / "history.jsonl").is_file() and len(history(run)) == 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()
        # epoch 2 is under way: kill it a third of an epoch in
        time.sleep(history(run)[0]["seconds"] / 3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(run / "last.pt", "last")["epoch"] == 1, "the kill did not land inside epoch 2"
    assert len(history(run)) == 1 and not (run / "summary.json").exists()

    p = subprocess.run(
        cmd + ["--resume"], env=subprocess_env(env_data), capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resuming" in p.stdout and "after epoch 1" in p.stdout
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert_same_weights(run, reference_run)
    assert metrics(history(run)) == metrics(history(reference_run))
    mom = [read_checkpoint(r / "last.pt", "last")["optimizer"]["state"] for r in (run, reference_run)]
    assert mom[0].keys() == mom[1].keys() and all(
        torch.equal(mom[0][k]["momentum_buffer"], mom[1][k]["momentum_buffer"]) for k in mom[0]
    )


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_history_and_weights(reference_run, env_data, tiny_cfg, tmp_path):
    again = trainer.train(tiny_cfg(**RUN), tmp_path / "again", log=None)
    assert_same_weights(again, reference_run)
    assert metrics(history(again)) == metrics(history(reference_run))
    assert len(history(again)) == RUN["epochs"]
    rec = json.loads((again / "config.json").read_text())
    assert rec["seed"] == RUN["seed"] and rec["config_hash"]
    env = rec["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["python"] == sys.version.split()[0] and env["virkit"]


# ------------------------------------------------------------------------------------------ atomic writes
WRITER = textwrap.dedent("""
    import sys
    from virkit.io import atomic_write_bytes
    target, size = sys.argv[1], int(sys.argv[2])
    blobs = [b"A" * size, b"B" * size]
    i = 0
    while True:
        atomic_write_bytes(target, blobs[i % 2])
        i += 1
        if i == 2:
            print("ready", flush=True)
""")


def test_sigkill_during_atomic_writes_leaves_old_or_new_file(tmp_path):
    """A process rewriting a 16 MB file in a loop is SIGKILLed at random moments: the target always
    holds one whole version, never a truncated or mixed one."""
    from virkit.io import atomic_write_bytes

    size = 16 * 2**20
    target = tmp_path / "data" / "state.bin"
    target.parent.mkdir()
    atomic_write_bytes(target, b"A" * size)
    (tmp_path / "writer.py").write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(0)
    for _ in range(3):  # written in place, 8 kills out of 8 left a truncated or mixed file
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "writer.py"), str(target), str(size)], env=env, stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        data = target.read_bytes()
        assert len(data) == size and data in (b"A" * size, b"B" * size), (
            f"partial file after a kill: {len(data)} bytes, starts {data[:1]!r}, ends {data[-1:]!r}"
        )
    # only the target and, perhaps, temporaries of interrupted writes (never mistaken for it)
    assert all(
        p.name == "state.bin" or (p.name.startswith(".state.bin.") and p.name.endswith(".tmp"))
        for p in target.parent.iterdir()
    )


def test_failed_atomic_write_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    from virkit import io as vio

    target = tmp_path / "f.json"
    vio.atomic_write_json(target, {"v": 1})
    before = target.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(vio.os, "fsync", no_space)
    with pytest.raises(OSError) as e:
        vio.atomic_write_json(target, {"v": 2, "pad": "x" * 100000})
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"], "temporary file left behind"


# ------------------------------------------------------------------------------------------ hostile files
class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def evil_checkpoint(path: Path, marker: Path, kind: str = "zip") -> Path:
    """A virkit-looking checkpoint carrying ``Payload``: torch's zip format, its legacy format, or a
    bare pickle."""
    obj = {"format": FORMAT, "model": {}, "config": "{}", "data": {}, "payload": Payload(marker)}
    if kind == "pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=kind == "zip")
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_load_checkpoint_refuses_code(kind, tmp_path):
    marker = tmp_path / "PWNED"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker, kind)
    with pytest.raises(VirkitError, match="refusing to load .*evil.pt.*could run code") as e:
        load_checkpoint(evil)
    assert not marker.exists(), "the pickled payload ran"
    if kind != "pickle":
        assert "posix.system" in str(e.value)  # the message names what was refused


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "text"])
def test_damaged_checkpoint_is_called_corrupt_not_hostile(kind, tmp_path):
    """Random bytes or a cut-short file are no hostile pickle: the message says what is wrong."""
    good = tmp_path / "good.pt"
    torch.save({"format": FORMAT, "model": {"w": torch.zeros(64)}, "config": "{}", "data": {}}, good)
    data = {
        "random": random.Random(0).randbytes(5000),
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "empty": b"",
        "text": b"hello world\n" * 10,
    }[kind]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data)
    with pytest.raises(VirkitError) as e:
        load_checkpoint(bad)
    assert "not a virkit checkpoint (corrupt or truncated" in str(e.value), str(e.value)
    assert "could run code" not in str(e.value)


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)

    capsys.readouterr()
    rc = main(["evaluate", "--checkpoint", str(evil), "--attacks", "natural", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("virkit: error: refusing to load"), err
    assert not marker.exists(), "the pickled payload ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"], "evaluate wrote something"

    # the payload is live: an unsafe load (weights_only=False) would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_evaluate_subprocess_refuses_hostile_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "virkit",
            "evaluate",
            "--checkpoint",
            str(evil),
            "--attacks",
            "natural",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("virkit: error: refusing to load"), p.stderr
    assert not marker.exists()


def test_resume_from_hostile_last_pt_is_refused(env_data, tmp_path, capsys):
    from virkit.training.config import config_hash, resolve_config

    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    cfg = resolve_config("tiny", method="vir-at", device="cpu", eval_attacks=(), data_root=str(env_data), **RUN)
    (run / "config.json").write_text(json.dumps({"config_hash": config_hash(cfg)}))
    evil_checkpoint(run / "last.pt", marker)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    rc = main(["train", *cli_args(env_data), "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "refusing to load" in err and "last.pt" in err, err
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_cifar_pickle_with_code_is_refused(tmp_path, monkeypatch, capsys):
    from virkit.data.datasets import load_dataset

    marker = tmp_path / "PWNED"
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {b"labels": [0] * 4, b"data": np.zeros((4, 3072), dtype=np.uint8)}
    for name in ["data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good, protocol=2))
    (folder / "data_batch_1").write_bytes(pickle.dumps({**good, b"x": Payload(marker)}, protocol=2))
    monkeypatch.setenv("VIRKIT_DATA", str(tmp_path / "cache"))

    with pytest.raises(VirkitError, match="corrupt dataset file .*data_batch_1.*refusing to load posix.system"):
        load_dataset("cifar10", tmp_path / "data", "train")
    assert not marker.exists()
    rc = main(
        [
            "train",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "data_batch_1" in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()

    with open(folder / "data_batch_1", "rb") as f:  # the payload is live for a plain unpickler
        pickle.load(f)
    assert marker.exists()


# ------------------------------------------------------------------------------------------ numerical faults
def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(env_data, tmp_path, monkeypatch, capsys):
    real = training_epoch.method_step
    calls: dict[int, int] = {}

    def nan_at_epoch2_step3(model, x, y, cfg, epoch, **kw):
        out = real(model, x, y, cfg, epoch, **kw)
        calls[epoch] = calls.get(epoch, 0) + 1
        if epoch == 2 and calls[epoch] == 3:
            out = dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(training_epoch, "method_step", nan_at_epoch2_step3)
    run = tmp_path / "run"
    capsys.readouterr()
    rc = main(["train", *cli_args(env_data), "--out", str(run)])
    err = capsys.readouterr().err
    assert rc == NonFiniteLossError.exit_code == 3, err
    assert err.count("\n") == 1 and "non-finite loss at epoch 2, step 3" in err and "last.pt" in err, err
    assert calls == {1: STEPS, 2: 3}, "training went on after the NaN"
    ck = read_checkpoint(run / "last.pt", "last")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    model, _ = load_checkpoint(run, which="last")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(history(run)) == 1 and not (run / "summary.json").exists()


# ------------------------------------------------------------------------------------------ disk faults
def test_failed_checkpoint_write_stops_training(env_data, tmp_path, monkeypatch, capsys):
    """ENOSPC on the second write of last.pt (as root, chmod cannot make a folder read-only)."""
    from virkit import io as vio

    real_write, real_step = vio.atomic_write_bytes, training_epoch.method_step
    writes, epochs = [], set()

    def flaky_write(path, data):
        if Path(path).name == "last.pt":
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    def step(model, x, y, cfg, epoch, **kw):
        epochs.add(epoch)
        return real_step(model, x, y, cfg, epoch, **kw)

    monkeypatch.setattr(vio, "atomic_write_bytes", flaky_write)
    monkeypatch.setattr(training_epoch, "method_step", step)
    run = tmp_path / "run"
    capsys.readouterr()
    rc = main(["train", *cli_args(env_data), "--out", str(run)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "cannot write checkpoint" in err and "No space left on device" in err and "--resume" in err, err
    assert epochs == {1, 2}, "training continued without a checkpoint"
    assert read_checkpoint(run / "last.pt", "last")["epoch"] == 1
    assert not (run / "summary.json").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], "temporary checkpoint left behind"


# ------------------------------------------------------------------------------------------ notebooks
def write_notebook(path: Path, body: str) -> Path:
    """A notebook with a papermill ``parameters`` cell (``marker``, ``seed``) and one code cell."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("marker = ''  # file the notebook creates\nseed = 0  # an int")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, str(path))
    return path


@pytest.mark.parametrize(
    "param,expected",
    [
        pytest.param("sede=1", ["unknown", "'sede'", "marker, seed"], id="unknown-name"),
        pytest.param("seed=abc", ["'seed' must be int", "'abc'"], id="wrong-type"),
        pytest.param("seed", ["'seed' is not NAME=VALUE"], id="not-name-value"),
    ],
)
def test_notebook_parameters_validated_before_anything_runs(param, expected, tmp_path, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    marker = tmp_path / "RAN"
    write_notebook(folder / "01_touch.ipynb", f"open({str(marker)!r}, 'w').write('ran')")
    capsys.readouterr()
    rc = main(
        [
            "notebooks",
            "run",
            "--preset",
            "smoke",
            "--notebook-dir",
            str(folder),
            "-p",
            param,
            "--out-root",
            str(tmp_path / "out"),
            "--fig-root",
            str(tmp_path / "fig"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("virkit: error: "), err
    assert all(piece in err for piece in expected), err
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "fig").exists()


def test_failing_notebook_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    from virkit import notebooks as nb

    monkeypatch.setenv("JUPYTER_PATH", os.environ.get("JUPYTER_PATH", ""))  # run_notebooks changes it; restored
    folder = tmp_path / "nbs"
    folder.mkdir()
    write_notebook(folder / "01_fails.ipynb", "raise ValueError('boom from notebook 01')")
    write_notebook(folder / "02_works.ipynb", "open(marker, 'w').write(f'ran with seed {seed}')")
    marker = tmp_path / "RAN"
    rc = nb.run_notebooks(
        preset="smoke",
        folder=folder,
        out_root=tmp_path / "out",
        fig_root=tmp_path / "fig",
        parameters_override={"marker": str(marker), "seed": 3},
        timeout=120,
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert marker.read_text() == "ran with seed 3", "the notebook after the failing one did not run"
    summary = json.loads((tmp_path / "out" / "smoke" / "summary.json").read_text())
    status = {r["name"]: (r["status"], r["error"]) for r in summary["results"]}
    assert status["02_works"] == ("ok", "")
    assert status["01_fails"][0] == "failed" and "ValueError: boom from notebook 01" in status["01_fails"][1]
    assert "failed: 01_fails: ValueError: boom from notebook 01" in out
