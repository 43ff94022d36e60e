"""Evaluation numerics and the compiled attack path: TF32 off unless asked (and recorded), the attacks
calling a torch.compile'd model, the fallback to eager mode, and one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from test_evaluate import FAST, _run, model, split  # noqa: F401 - module fixtures reused

from virkit import devices
from virkit.errors import VirkitError
from virkit.evaluation import evaluate as ev

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tf32_flags():
    """The process's TF32 flags, restored after the test whatever it did."""
    old = devices._tf32_flags()
    yield
    devices._set_tf32_flags(*old)


def test_tf32_mode_switches_off_and_restores(tf32_flags):
    # the flags are process-wide settings, readable and settable without a GPU
    devices._set_tf32_flags(True, True)  # what a user (or PyTorch's cuDNN default) may have left on
    with devices.tf32_mode(torch.device("cuda"), allow=False) as on:
        assert on is False and devices._tf32_flags() == (False, False)
    assert devices._tf32_flags() == (True, True)
    devices._set_tf32_flags(False, False)
    with devices.tf32_mode(torch.device("cuda"), allow=True) as on:
        assert on is True and devices._tf32_flags() == (True, True)
    assert devices._tf32_flags() == (False, False)
    with pytest.raises(RuntimeError):  # restored on error too
        with devices.tf32_mode(torch.device("cuda"), allow=True):
            raise RuntimeError("boom")
    assert devices._tf32_flags() == (False, False)
    with devices.tf32_mode(torch.device("cpu"), allow=True) as on:  # no TF32 outside CUDA: flags untouched
        assert on is False and devices._tf32_flags() == (False, False)


def test_eval_json_records_numerics_and_runtime(model, split, tmp_path):
    res = _run(model, split, ["natural", "pgd10"], tmp_path)
    assert res["numerics"] == {"dtype": "float32", "tf32": False}
    assert res["runtime"]["compile"] == "off" and res["runtime"]["device"] == "cpu"
    # --allow-tf32 on a CPU changes nothing (there is no TF32 there): same file, attacks kept
    again = _run(model, split, ["natural", "pgd10"], tmp_path, allow_tf32=True)
    assert again["numerics"]["tf32"] is False and again["attacks"] == res["attacks"]
    assert all(p.requires_grad for p in model.parameters()), "the caller's parameters must require grad again"


def test_tf32_evaluation_is_not_mixed_with_an_fp32_one(model, split, tmp_path):
    _run(model, split, ["natural"], tmp_path)
    path = tmp_path / "eval.json"
    doc = json.loads(path.read_text())
    doc["numerics"]["tf32"] = True  # as a CUDA evaluation with --allow-tf32 writes it
    path.write_text(json.dumps(doc))
    with pytest.raises(VirkitError, match="allow-tf32"):
        _run(model, split, ["natural"], tmp_path)
    # a file from before numerics were recorded is a CPU fp32 evaluation: resumed, not refused
    del doc["numerics"]
    path.write_text(json.dumps(doc))
    assert _run(model, split, ["natural"], tmp_path)["numerics"]["tf32"] is False


def test_bad_compile_values_are_refused(model, split):
    with pytest.raises(VirkitError, match="compile"):
        ev.EvalSettings(["natural"], compile="fast")
    with pytest.raises(VirkitError, match="needs a CUDA device"):
        _run(model, split, ["natural"], None, compile="cudagraphs")


def test_compile_failure_falls_back_to_eager(model, split, tmp_path, monkeypatch):
    eager = _run(model, split, ["natural", "pgd10"], None)

    def broken(*a, **k):
        raise RuntimeError("no C compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    res = _run(model, split, ["natural", "pgd10"], None, compile="on")
    assert res["runtime"]["compile"] == "fallback-eager"
    assert res["attacks"]["pgd10"]["robust"] == eager["attacks"]["pgd10"]["robust"]


def test_attacks_call_the_compiled_model(model, split, monkeypatch):
    """The attacks run on what compile_model returned, the scoring on the eager model."""
    calls = {"compiled": 0}

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls["compiled"] += 1
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", lambda m, **k: Counting(m))
    eager = _run(model, split, ["natural", "pgd10"], None)
    res = _run(model, split, ["natural", "pgd10"], None, compile="on")
    assert res["runtime"]["compile"] == "compiled"
    assert calls["compiled"] > 4 * 1  # the check forward plus every PGD step of every batch
    assert res["attacks"]["pgd10"]["robust"] == eager["attacks"]["pgd10"]["robust"]


@pytest.mark.slow
def test_real_torch_compile_matches_eager(model, split):
    """A real torch.compile (inductor, automatic dynamic shapes) under PGD and AutoAttack's APGD-CE,
    whose early stop shrinks the batch: the same robust flags as eager, up to one example whose
    gradient sign a fused kernel's rounding may flip."""
    attacks = ["natural", "pgd10", "aa"]
    over = {**FAST, "aa": {"version": "custom", "components": ["apgd-ce"], "apgd_steps": 10}}
    eager = _run(model, split, attacks, None, attack_overrides=over)
    res = _run(model, split, attacks, None, attack_overrides=over, compile="on")
    assert res["runtime"]["compile"] == "compiled", "torch.compile fell back to eager mode on this machine"
    for a in ("pgd10", "aa"):
        diff = sum(x != y for x, y in zip(res["attacks"][a]["robust"], eager["attacks"][a]["robust"]))
        assert diff <= 1, f"{a}: {diff} examples differ between the compiled and the eager model"
    assert eager["attacks"]["natural"]["accuracy"] > 0


def test_reuse_from_takes_only_an_evaluation_of_the_same_weights(model, split, tmp_path):
    import copy

    first = _run(model, split, ["natural", "pgd10"], tmp_path)
    src = tmp_path / "eval.json"
    (tmp_path / "b").mkdir()
    again = _run(model, split, ["natural", "pgd10"], tmp_path / "b", reuse_from=[tmp_path / "none.json", src])
    assert again["attacks"]["pgd10"]["reused_from"] == str(src)
    assert again["attacks"]["pgd10"]["robust"] == first["attacks"]["pgd10"]["robust"]
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.f[0].weight.mul_(1.01)  # other weights: computed, not reused
    (tmp_path / "c").mkdir()
    res = _run(other, split, ["natural", "pgd10"], tmp_path / "c", reuse_from=[src])
    assert all("reused_from" not in r for r in res["attacks"].values())
    # an attack with other settings than the reused file's is run, not taken
    (tmp_path / "d").mkdir()
    res = _run(
        model,
        split,
        ["natural", "pgd10"],
        tmp_path / "d",
        reuse_from=[src],
        attack_overrides={"pgd10": {"steps": 2, "step_size": 4 / 255}},
    )
    assert "reused_from" in res["attacks"]["natural"] and "reused_from" not in res["attacks"]["pgd10"]


def test_reuse_with_replace_still_sets_the_old_file_aside(model, split, tmp_path):
    import copy

    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    _run(model, split, ["natural"], src_dir)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.f[0].weight.mul_(1.01)
    old = _run(other, split, ["natural"], out_dir)  # out holds another model's evaluation
    res = _run(model, split, ["natural"], out_dir, replace=True, reuse_from=[src_dir / "eval.json"])
    assert res["attacks"]["natural"]["reused_from"] == str(src_dir / "eval.json")
    kept = json.loads((out_dir / "eval.prev.json").read_text())
    assert kept["model_fingerprint"] == old["model_fingerprint"] != res["model_fingerprint"]
