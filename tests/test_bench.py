"""Smoke test of benchmarks/bench.py in CPU mode, CI-sized: it runs and writes the JSON it documents.
No timing asserts: throughput is measured by the benchmark itself (BENCHMARKS.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench.py"
METHODS = ["at", "vir-at", "trades", "vir-trades"]


def _run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


# tiny everything; one thread: on a shared 2-core machine a 2-thread OpenMP pool under load is far slower
SMOKE = (
    "--mode",
    "cpu",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--rounds",
    "2",
    "--batch-size",
    "16",
    "--attack-steps",
    "1",
    "--data",
    "synthetic",
    "--data-n",
    "64",
    "--threads",
    "1",
)


def test_bench_cpu_smoke(tmp_path):
    out = tmp_path / "bench.json"
    p = _run(*SMOKE, "--methods", ",".join(METHODS), "--aa-n", "0", "--json", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res == json.loads(p.stdout)  # stdout holds the same JSON
    assert res["mode"] == "cpu" and res["env"]["device"] == "cpu" and res["env"]["torch"]
    for k in ("date", "command", "data", "load_avg_start", "settings", "markdown", "seconds"):
        assert k in res, k
    assert [(r["model"], r["method"]) for r in res["training"]] == [("small-cnn", m) for m in METHODS]
    for r in res["training"]:
        for k in ("virkit_img_s", "reference_img_s", "ratio", "virkit_peak_mem_mib", "reference_peak_mem_mib"):
            assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (k, r[k])
        assert len(r["virkit_img_s_rounds"]) == len(r["reference_img_s_rounds"]) == 2
        assert r["measured_steps"] == 2 and r["batch_size"] == 16 and r["attack_steps"] == 1
        assert r["virkit_precision"] == "fp32" and r["virkit_compile"] == "off"
        assert r["virkit_finite"] and r["reference_finite"]
        assert r["mem_kind"] == "process_peak_rss_mib"
    assert res["autoattack"] == {"skipped": "--aa-n 0"}
    assert len(res["markdown"]) == len(METHODS)
    assert all(row.startswith("| ") and row.endswith(" |") for row in res["markdown"])


@pytest.mark.slow
def test_bench_cpu_autoattack_part(tmp_path):
    """The AutoAttack comparison on 4 images (full standard AutoAttack on both sides: minutes on a
    loaded CPU when a point resists every attack)."""
    out = tmp_path / "bench.json"
    p = _run(
        *SMOKE,
        "--methods",
        "at",
        "--aa-n",
        "4",
        "--aa-batch",
        "4",
        "--aa-train-steps",
        "1",
        "--json",
        str(out),
        timeout=1800,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    aa = json.loads(out.read_text())["autoattack"]
    if "skipped" in aa:
        pytest.skip(aa["skipped"])
    assert aa["n"] == 4 and 0.0 <= aa["virkit"]["robust_acc"] <= aa["natural_acc"] + 1e-9
    assert aa["virkit"]["max_linf"] <= 8 / 255 + 1e-5 and aa["virkit"]["seconds"] > 0
    if "seconds" in aa["torchattacks"]:
        assert 0.0 <= aa["torchattacks"]["robust_acc"] <= 1.0 and aa["speedup"] > 0
        assert aa["torchattacks"]["max_linf"] <= 8 / 255 + 1e-5


def test_bench_gpu_mode_without_cuda_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU mode would run for real")
    p = _run("--mode", "gpu", "--steps", "1", timeout=300)
    assert p.returncode != 0 and "needs CUDA" in p.stderr


def test_bench_rejects_unknown_method():
    p = _run("--methods", "at,madry", timeout=300)
    assert p.returncode == 2 and "madry" in p.stderr
