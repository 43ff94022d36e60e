"""The GPU campaign (``benchmarks/gpu_campaign.sh``) on the CPU: the smoke mode runs every phase
with tiny budgets and writes the same files as on a GPU; a phase that overruns its hard cap is
killed and the next phase still runs; the report's pieces (status, rows, schedule, epoch planning)
on made-up phase files. No timing asserts: the campaign measures, the tests check its structure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_campaign.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import campaign_report

PHASES = ["prep", "a_train", "a_wrn", "d_concurrency", "c_fidelity", "b_autoattack"]


def _campaign(tmp_path, *args, env_extra=None, timeout=600):
    env = {
        **os.environ,
        "CAMPAIGN_WORK": str(tmp_path / "work"),
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
        **(env_extra or {}),
    }
    env.pop("OUT", None)
    t = time.time()
    p = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    return p, time.time() - t


@pytest.mark.slow  # about 50 s on 2 idle cores (11 Python processes); CI runs it
def test_campaign_smoke_runs_every_phase_and_writes_the_results(tmp_path):
    p, seconds = _campaign(tmp_path, "--smoke")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(f.name for f in out.iterdir()) == ["BENCHMARKS-rows.md", "campaign.json", "campaign.log"]
    doc = json.loads((out / "campaign.json").read_text())
    assert doc["mode"] == "smoke" and doc["command"] == f"bash benchmarks/gpu_campaign.sh --out {out} --smoke"
    assert doc["phase_order"] == PHASES and list(doc["phases"]) == PHASES
    assert set(doc["budgets"]) == set(PHASES) and all(b["cap_s"] >= b["budget_s"] for b in doc["budgets"].values())
    env = doc["env"]
    for k in ("torch", "python", "device", "cpu"):
        assert env.get(k), k
    assert "torchattacks" in env and "git" in doc and "date" in doc
    for name, ph in doc["phases"].items():
        assert ph["status"] == "ok", (name, ph.get("why"), ph.get("error"))
        assert ph["rc"] == 0 and ph["wall_s"] <= ph["cap_s"] + 3 and ph["mode"] == "smoke"
    ph = doc["phases"]
    assert [r["method"] for r in ph["a_train"]["results"]] == ["vir-at", "at", "vir-trades", "trades"]
    for r in ph["a_train"]["results"] + ph["a_wrn"]["results"]:
        assert r["virkit_img_s"] > 0 and r["reference_img_s"] > 0 and r["virkit_peak_mem_mib"] > 0
        assert r["virkit_finite"] and r["reference_finite"]
    assert [lv["processes"] for lv in ph["d_concurrency"]["levels"]] == [1, 2]
    assert all(lv["complete"] and lv["aggregate_img_s"] > 0 for lv in ph["d_concurrency"]["levels"])
    c = ph["c_fidelity"]
    assert [r["method"] for r in c["runs"]][:2] == ["at", "vir-at"]
    assert c["schedule"]["epochs"] == 2 and c["schedule"]["reweight_start"] == 2
    for r in c["runs"]:
        assert r["epochs_done"] == 2 and r["history"][-1]["reweighting_active"] == (r["method"] != "at")
        assert 0 <= r["eval"]["pgd20"] <= r["eval"]["natural"] <= 1
    b = ph["b_autoattack"]
    assert b["virkit"]["n"] == b["n_planned"] and b["virkit"]["max_linf"] <= 8 / 255 + 1e-5
    assert 0 <= b["virkit"]["robust_acc"] <= b["natural_acc"] + 1e-9
    if "skipped" in b["torchattacks"]:
        assert "torchattacks" in b["torchattacks"]["skipped"]
    else:
        assert b["compare"]["n"] == b["virkit"]["n"] and b["compare"]["speedup"] > 0
    rows = (out / "BENCHMARKS-rows.md").read_text()
    assert rows.count("| 1 | small-cnn, vir-at") == 1 and "SMOKE" in rows and "not measured" not in rows
    assert "phase            status" in p.stdout  # the final summary is printed
    print(f"\nsmoke campaign: {seconds:.0f} s wall")


def test_gpu_mode_without_cuda_skips_and_a_stalled_phase_is_killed_at_its_cap(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU mode would run for real")
    p, _ = _campaign(
        tmp_path, "--only", "prep,a_train", "--cap", "prep=6", env_extra={"CAMPAIGN_TEST_STALL": "prep"}, timeout=300
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    doc = json.loads((tmp_path / "out" / "campaign.json").read_text())
    prep, a = doc["phases"]["prep"], doc["phases"]["a_train"]
    assert doc["mode"] == "gpu"
    assert prep["status"] in ("killed (partial)", "killed"), prep
    assert prep["rc"] == 124 and prep["cap_s"] == 6
    if prep["status"] == "killed (partial)":
        assert "CAMPAIGN_TEST_STALL" in prep["why"]
    assert a["status"] == "skipped" and "CUDA is not available" in a["why"]
    for name in ("a_wrn", "d_concurrency", "c_fidelity", "b_autoattack"):
        assert doc["phases"][name]["status"] == "not run" and "--only" in doc["phases"][name]["why"]
    rows = (tmp_path / "out" / "BENCHMARKS-rows.md").read_text()
    assert "not measured" in rows


def test_help_and_syntax():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    p = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--smoke" in p.stdout and "b_autoattack" in p.stdout
    p = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert p.returncode == 2 and "--bogus" in p.stderr


# ------------------------------------------------------------------------------------------------
# pieces, on made-up files
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "doc,rc,status",
    [
        (None, None, "not run"),
        (None, {"rc": None, "skipped": "not selected"}, "not run"),
        ({"status": "ok"}, {"rc": 0, "cap_s": 10}, "ok"),
        ({"status": "skipped", "status_why": "no CUDA"}, {"rc": 0}, "skipped"),
        ({"status": "running", "current": "x"}, {"rc": 124, "cap_s": 10}, "killed (partial)"),
        ({"status": "running"}, {"rc": 1}, "failed (partial)"),
        (None, {"rc": 124, "cap_s": 5}, "killed"),
        (None, {"rc": 2}, "failed"),
    ],
)
def test_phase_status(doc, rc, status):
    assert campaign_report.phase_status(doc, rc)[0] == status


def _gpu_like_doc() -> dict:
    train = {
        "model": "resnet18",
        "method": "vir-at",
        "virkit_precision": "bf16",
        "virkit_channels_last": True,
        "virkit_compile": "compiled",
        "virkit_img_s": 6100.0,
        "reference_img_s": 1100.0,
        "ratio": 5.5,
        "virkit_peak_mem_mib": 2100.0,
        "reference_peak_mem_mib": 2500.0,
    }
    return {
        "date": "2026-12-01T10:00:00+00:00",
        "mode": "gpu",
        "command": "bash benchmarks/gpu_campaign.sh",
        "env": {"gpu": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0", "cudnn": 91000, "driver": "580"},
        "phases": {
            "a_train": {"status": "ok", "results": [train]},
            "a_wrn": {
                "status": "ok",
                "results": [
                    {**train, "model": "wrn-34-10", "virkit_img_s": 700.0, "reference_img_s": None, "ratio": None}
                ],
            },
            "b_autoattack": {
                "status": "ok",
                "model": "resnet18",
                "budget_name": "standard",
                "natural_acc": 0.5,
                "virkit": {"n": 1000, "seconds": 30.0, "robust_acc": 0.3},
                "torchattacks": {"n": 500, "seconds": 45.0, "robust_acc": 0.3},
                "compare": {"n": 500, "speedup": 3.1},
            },
            "c_fidelity": {
                "status": "ok",
                "model": "resnet18",
                "concurrent_runs": 3,
                "schedule": {"epochs": 3, "lr_milestones": [2], "reweight_start": 3},
                "runs": [
                    {
                        "method": "at",
                        "epochs_done": 3,
                        "train_img_s_mean": 2000.0,
                        "eval": {"natural": 0.45, "pgd20": 0.3, "aa": 0.25, "aa_n": 200},
                    }
                ],
            },
            "d_concurrency": {
                "status": "ok",
                "model": "resnet18",
                "method": "vir-at",
                "batch_size": 128,
                "attack_steps": 10,
                "precision": "bf16",
                "levels": [
                    {"processes": 1, "aggregate_img_s": 4000.0, "per_process_img_s": [4000.0], "vs_1_process": 1.0},
                    {
                        "processes": 2,
                        "aggregate_img_s": 5600.0,
                        "per_process_img_s": [2800.0, 2800.0],
                        "vs_1_process": 1.4,
                    },
                ],
            },
        },
    }


def test_markdown_rows_for_every_table():
    rows = campaign_report.markdown_rows(_gpu_like_doc())
    text = "\n".join(rows)
    assert (
        "| 2026-12-01 | NVIDIA H200 | resnet18 | vir-at | bf16, channels_last, compile compiled | 6100.0 | "
        "1100.0 | 5.50x | 2100 / 2500 |"
    ) in text
    assert "| wrn-34-10 | vir-at |" in text and "| 700.0 | - | - |" in text
    assert "3.10x (on the 500 images both finished)" in text
    assert "| resnet18 | at | 3/3 (lr /10 after [2], reweight from 3) | 45.0 | 30.0 | 25.0 (n=200) | 2000 (3) |" in text
    assert "| 2 | resnet18, vir-at (128, PGD-10, bf16, compile off) | 5600 | 2800, 2800 | 1.40x |" in text
    assert "not measured" not in text
    empty = "\n".join(campaign_report.markdown_rows({"date": "2026-12-01", "env": {}, "phases": {}}))
    assert empty.count("not measured") == 4  # one placeholder row per table


def test_meta_from_env():
    meta = campaign_report.meta_from_env(
        {
            "CAMPAIGN_META_MODE": "gpu",
            "CAMPAIGN_META_TOTAL_BUDGET_S": "415",
            "CAMPAIGN_META_BUDGETS": "prep=30:38,a_train=103:112",
            "CAMPAIGN_META_GIT_COMMIT": "abc",
            "CAMPAIGN_META_GIT_DIRTY": "",
            "CAMPAIGN_META_WHEELS": "/a.whl:/b.whl",
            "OTHER": "x",
        }
    )
    assert meta == {
        "mode": "gpu",
        "total_budget_s": 415.0,
        "wheels": ["/a.whl", "/b.whl"],
        "budgets": {"prep": {"budget_s": 30.0, "cap_s": 38.0}, "a_train": {"budget_s": 103.0, "cap_s": 112.0}},
        "git": {"commit": "abc", "dirty": False},
    }


def test_paper_schedule_scaled_and_epochs_planned_from_phase_d(tmp_path):
    import argparse

    import campaign

    s = campaign.paper_schedule(115)
    assert s["lr_milestones"] == (75, 90) and s["reweight_start"] == 76
    assert campaign.paper_schedule(4)["lr_milestones"] == (3,) and campaign.paper_schedule(4)["reweight_start"] == 4
    assert campaign.paper_schedule(10)["lr_milestones"] == (7, 8) and campaign.paper_schedule(10)["reweight_start"] == 8
    assert campaign.paper_schedule(1)["reweight_start"] == 1  # capped: a one-epoch run still reweights
    from virkit.training.config import resolve_config

    for e in range(1, 30):  # every scaled schedule is a valid config for the methods phase c trains
        for m in ("at", "vir-at", "vir-at-flat"):
            sc = campaign.paper_schedule(e, m)
            resolve_config(
                "paper", method=m, epochs=e, lr_milestones=sc["lr_milestones"], reweight_start=sc["reweight_start"]
            )
    args = argparse.Namespace(work=str(tmp_path))
    rate, src = campaign._rate_per_run(args, 3)
    assert rate == 500.0 and "assumed" in src
    (tmp_path / "a_train.json").write_text(json.dumps({"results": [{"method": "vir-at", "virkit_img_s": 6000.0}]}))
    rate, src = campaign._rate_per_run(args, 2)
    assert rate == pytest.approx(1800.0) and "phase a" in src
    (tmp_path / "d_concurrency.json").write_text(
        json.dumps(
            {
                "levels": [
                    {"processes": 1, "aggregate_img_s": 4000.0, "complete": True},
                    {"processes": 2, "aggregate_img_s": 5000.0, "complete": True},
                    {"processes": 4, "aggregate_img_s": 6000.0, "complete": True},
                ]
            }
        )
    )
    assert campaign._rate_per_run(args, 2)[0] == pytest.approx(2500.0)
    assert campaign._rate_per_run(args, 3)[0] == pytest.approx(5500.0 / 3)  # interpolated between 2 and 4
    assert campaign._rate_per_run(args, 8)[0] == pytest.approx(6000.0 / 8)
