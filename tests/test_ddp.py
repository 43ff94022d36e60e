"""Issue #7, one run on several processes (torchrun + DistributedDataParallel), on the CPU with gloo.

The equivalence tests compare a 2-process run with a single-process run of the same global batch.
They use the ``linear`` model (no BatchNorm) and ``random_start='none'``: with BatchNorm each
process normalises over its own half of the batch (plain DDP; ``--sync-bn`` is the CUDA-only
alternative, PyTorch's SyncBatchNorm has no CPU kernel), and the attack's random start is drawn
per process (same distribution, other numbers), so neither can match a single process bit for
bit. Everything else is exact up to float summation order: the same epoch permutation and
augmentation on every rank, each rank's slice of the global batch, the loss scaled so that DDP's
gradient average is the global-batch gradient, weights and metrics all-reduced. The training
set (83 images, batch 32) ends in a partial batch of 19 that splits 10/9, so the uneven-shard
scaling is covered too. Each launch takes a few seconds (2 processes, 1 thread each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from virkit import distributed
from virkit.data import DeviceLoader, Split
from virkit.distributed import DistContext, shard_bounds
from virkit.errors import VirkitError

REPO = Path(__file__).resolve().parents[1]
RUN = {
    "model": "linear",
    "method": "vir-at",
    "random_start": "none",
    "train_subset": 83,
    "batch_size": 32,
    "epochs": 2,
    "reweight_start": 2,
    "lr_milestones": (2,),
    "holdout": 32,
    "test_subset": 32,
    "attack_steps": 2,
    "seed": 3,
}
TIMING = {"seconds", "images_per_s", "seconds_with_holdout"}


def _env(root: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", distributed.SYNC_BN_ENV)
    }
    return {**env, "VIRKIT_DATA": str(root), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(root: Path, out: Path, **overrides) -> list[str]:
    args = [
        "train",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--eval-attacks",
        "",
        "--data-root",
        str(root),
        "--out",
        str(out),
    ]
    for k, v in {**RUN, **overrides}.items():
        args += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return args


def _torchrun(nproc: int, args: list[str], root: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(root), cwd=REPO, timeout=timeout)


def _history(run: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING}
        for line in (run / "history.jsonl").read_text().splitlines()
    ]


def _assert_same_run(a: Path, b: Path, atol: float = 1e-4) -> None:
    sa = torch.load(a / "last.pt", weights_only=True)
    sb = torch.load(b / "last.pt", weights_only=True)
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], atol=atol, rtol=0, msg=k)
    for k in sa["optimizer"]["state"]:  # momentum buffers
        torch.testing.assert_close(
            sa["optimizer"]["state"][k]["momentum_buffer"],
            sb["optimizer"]["state"][k]["momentum_buffer"],
            atol=atol,
            rtol=0,
        )
    ha, hb = _history(a), _history(b)
    assert len(ha) == len(hb) == RUN["epochs"]
    for ra, rb in zip(ha, hb):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float) or isinstance(ra[k], list):
                assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), k
            else:
                assert rb[k] == ra[k], k


# ------------------------------------------------------------------------------------------------
# sharding and scaling, in-process
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,w", [(32, 2), (19, 2), (7, 3), (128, 8), (5, 5)])
def test_shard_bounds_partition_the_batch_in_rank_order(n, w):
    bounds = [shard_bounds(n, r, w) for r in range(w)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(w - 1))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_loader_union_is_the_single_process_batch(world):
    g = torch.Generator().manual_seed(0)
    split = Split(
        torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g),
        torch.arange(50) % 10,
        [str(i) for i in range(10)],
    )
    batch = 12
    single = list(DeviceLoader(split, batch, shuffle=True, augment=True).epoch(7))
    shards = [
        list(DeviceLoader(split, batch, shuffle=True, augment=True, rank=r, world_size=world).epoch(7))
        for r in range(world)
    ]
    # 50 = 4 * 12 + 2: the last batch of 2 is kept with 2 ranks and skipped (by every rank) with 3
    expected_steps = len(single) if 50 % batch >= world else len(single) - 1
    assert all(len(s) == expected_steps for s in shards)
    for step in range(expected_steps):
        x = torch.cat([shards[r][step][0] for r in range(world)])
        y = torch.cat([shards[r][step][1] for r in range(world)])
        idx = torch.cat([shards[r][step][2] for r in range(world)])
        assert torch.equal(x, single[step][0]) and torch.equal(y, single[step][1]) and torch.equal(idx, single[step][2])


def test_loss_scale_makes_the_ddp_average_the_global_gradient():
    ctx = DistContext(rank=1, world_size=2)
    # mean over a shard of 10 of a global batch of 19: average of the 2 ranks' scaled means = sum / 19
    assert ctx.loss_scale(10, 19, "mean") == pytest.approx(2 * 10 / 19)
    assert ctx.loss_scale(16, 32, "mean") == 1.0
    assert ctx.loss_scale(16, 32, "sum") == 2.0
    assert DistContext().loss_scale(7, 32, "mean") == 1.0
    assert ctx.rank_seed(5) != DistContext().rank_seed(5) == 5


def test_setup_without_torchrun_is_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = distributed.setup("cpu", 33, sync_bn=True)
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1


def test_global_batch_not_divisible_and_sync_bn_on_cpu_are_errors_before_joining(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(VirkitError, match="global batch and must be divisible by the number of processes"):
        distributed.setup("cpu", 33)
    with pytest.raises(VirkitError, match="--sync-bn needs CUDA"):
        distributed.setup("cpu", 32, sync_bn=True)
    with pytest.raises(VirkitError, match="cuda:LOCAL_RANK"):
        distributed.setup("cuda:1", 32)
    assert not torch.distributed.is_initialized()


# ------------------------------------------------------------------------------------------------
# two processes (torchrun, gloo) against one
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(stand_in_root, tmp_path_factory):
    """A single-process run and the same run on 2 processes (torchrun CLI)."""
    base = tmp_path_factory.mktemp("ddp")
    single = subprocess.run(
        [sys.executable, "-m", "virkit", *_cli(stand_in_root, base / "single")],
        capture_output=True,
        text=True,
        env=_env(stand_in_root),
        cwd=REPO,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _torchrun(2, ["-m", "virkit", *_cli(stand_in_root, base / "ddp")], stand_in_root)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    return base / "single", base / "ddp", ddp


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    single, ddp, proc = runs
    _assert_same_run(single, ddp)
    cfg = json.loads((ddp / "config.json").read_text())
    assert cfg["distributed"] == {"world_size": 2, "backend": "gloo", "sync_bn": False, "launcher": "torchrun"}
    assert cfg["config_hash"] == json.loads((single / "config.json").read_text())["config_hash"]
    # every example of the epoch was trained on once, globally (83 = 2 * 32 + 19)
    assert sum(_history(ddp)[0]["weight_sum_per_class"]) == pytest.approx(83)
    # only rank 0 logs epochs and writes files
    assert proc.stdout.count("epoch   1/2") == 1
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert not list(ddp.glob(".*.tmp"))


def test_resume_on_two_processes_gives_the_uninterrupted_result(runs, stand_in_root, tmp_path):
    """Epoch 1 on 2 processes, stop; resume for epoch 2 on 2 processes: same as uninterrupted."""
    single, _, _ = runs
    script = tmp_path / "two_stage.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        from virkit.training.config import resolve_config
        from virkit.training.trainer import train
        overrides = {{**{RUN!r}, "device": "cpu", "eval_attacks": (), "data_root": {str(stand_in_root)!r}}}
        cfg = resolve_config("tiny", **overrides)
        if sys.argv[1] == "first":
            train(cfg, {str(tmp_path / "run")!r}, stop_after_epoch=1)
        else:
            train(cfg, {str(tmp_path / "run")!r}, resume=True)
    """)
    )
    first = _torchrun(2, [str(script), "first"], stand_in_root)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(_history(tmp_path / "run")) == 1 and not (tmp_path / "run" / "summary.json").exists()
    second = _torchrun(2, [str(script), "second"], stand_in_root)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout
    _assert_same_run(single, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"


def test_an_error_on_rank_0_is_raised_by_every_rank(stand_in_root, tmp_path):
    """Rank 0 decides what to do with --out; when that fails every rank reports it and exits 2
    (no rank is left waiting in a collective)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    proc = _torchrun(2, ["-m", "virkit", *_cli(stand_in_root, blocker)], stand_in_root, timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.count("virkit: error:") == 2, proc.stderr[-3000:]
    assert proc.stderr.count("is not a directory") == 2
    assert blocker.read_text() == "x"
