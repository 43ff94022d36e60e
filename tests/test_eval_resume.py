"""Issue #15, long evaluations survive: ``kill -9`` in the middle of AutoAttack on 1,000 images, the
same command again, and it continues from the finished batches; ``torchrun --nproc-per-node 2 -m
virkit evaluate`` (gloo, CPU) shares the batches out and rank 0 merges them. Both end with exactly the
per-example results of one uninterrupted process.

A tiny CNN (``virkit.models.examples:tiny_cnn``, trained for a few seconds on 5,000 stand-in images, about 30%
test accuracy) and AutoAttack with a reduced budget in batches of 16 keep each launch to seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
AA = {"aa": {"apgd_steps": 10, "n_target_classes": 3, "fab_steps": 5, "square_queries": 50}}


@pytest.fixture(scope="module")
def weights(stand_in_root, tmp_path_factory) -> Path:
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from virkit.data.datasets import load_dataset, subset
    from virkit.models.examples import tiny_cnn

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train = subset(load_dataset("cifar10", stand_in_root, "train"), 5000, seed=0)
        x, y = train.float_images(), train.y
        model = tiny_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        for _ in range(400):
            idx = torch.randint(0, len(x), (128,), generator=g)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(n)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def _args(weights: Path, out: Path) -> list[str]:
    return [
        "evaluate",
        "--model",
        "virkit.models.examples:tiny_cnn",
        "--weights",
        str(weights),
        "--attacks",
        "natural,aa",
        "--attack-settings",
        json.dumps(AA),
        "--n-examples",
        "1000",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def _env(root: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**env, "VIRKIT_DATA": str(root), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(args: list[str], root: Path, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)]
        if torchrun
        else [sys.executable]
    )
    p = subprocess.run(
        [*launcher, "-m", "virkit", *args], capture_output=True, text=True, env=_env(root), cwd=REPO, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def reference(weights, stand_in_root, tmp_path_factory) -> dict:
    """One uninterrupted process."""
    out = tmp_path_factory.mktemp("reference") / "eval.json"
    _run(_args(weights, out), stand_in_root)
    doc = json.loads(out.read_text())
    assert 200 < sum(doc["attacks"]["natural"]["robust"]) < 500, "the tiny model should get ~30% right"
    return doc


def _same_results(a: dict, b: dict) -> None:
    for k in ("natural", "aa"):
        for field in ("robust", "predictions", "per_class_accuracy", "confusion_matrix", "settings", "n_attacked"):
            assert a["attacks"][k][field] == b["attacks"][k][field], (k, field)
    assert a["attacks"]["aa"]["components"] == b["attacks"]["aa"]["components"]
    assert a["attacks"]["aa"]["uint8"] == b["attacks"]["aa"]["uint8"]
    assert a["worst_case"]["robust"] == b["worst_case"]["robust"]


def test_kill_9_in_the_middle_of_autoattack_then_the_same_command_continues(
    weights, stand_in_root, reference, tmp_path
):
    out = tmp_path / "eval.json"
    state = tmp_path / ".eval.json.state" / "aa"
    p = subprocess.Popen(
        [sys.executable, "-m", "virkit", *_args(weights, out)],
        env=_env(stand_in_root),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.time()
        while time.time() - t0 < 300 and p.poll() is None:
            if state.is_dir() and len(list(state.glob("b*.pt"))) >= 2:
                break
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    finished = sorted(f.name for f in state.glob("b*.pt"))
    n_batches = -(-sum(reference["attacks"]["natural"]["robust"]) // 16)
    assert 2 <= len(finished) < n_batches, f"killed too late or too early: {finished}"
    doc = json.loads(out.read_text())  # natural accuracy was written, AutoAttack was not
    assert set(doc["attacks"]) == {"natural"}

    again = _run(_args(weights, out), stand_in_root)
    assert f"aa: {len(finished)} of {n_batches} batches kept from an interrupted run" in again.stderr
    _same_results(reference, json.loads(out.read_text()))
    assert sorted(os.listdir(tmp_path)) == ["eval.json"], "state files left behind"


def test_two_ranks_give_the_results_of_one_process(weights, stand_in_root, reference, tmp_path):
    out = tmp_path / "eval.json"
    p = _run(_args(weights, out), stand_in_root, torchrun=2)
    assert p.stdout.count("written:") == 1  # rank 0 reports and writes
    _same_results(reference, json.loads(out.read_text()))
    assert sorted(os.listdir(tmp_path)) == ["eval.json"]
