"""The GPU speed paths, exercised on the CPU where PyTorch allows: bf16 autocast training,
torch.compile (or its clean fallback), channels_last, input-only attack gradients, and evaluation
staying fp32 after bf16 training. No timing asserts (timings live in benchmarks/bench.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from virkit.attacks.pgd import input_grad_only, pgd
from virkit.config import resolve_config
from virkit.methods import method_step
from virkit.models import build_model


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _history(out) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]


FAST = dict(epochs=1, train_subset=128, holdout=32, attack_steps=1, holdout_pgd_steps=1)  # a tiny epoch


def _bf16():
    return lambda: torch.autocast(device_type="cpu", dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------- bf16 autocast
@pytest.mark.parametrize("method", ["at", "trades", "mart", "gairat", "mail-at", "vir-at", "vir-trades"])
def test_bf16_method_step_finite_fp32_loss(method):
    cfg = resolve_config("tiny", method=method, attack_steps=2, precision="bf16", device="cpu")
    model = _tiny_model()
    x, y = _batch()
    model.train()
    res = method_step(model, x, y, cfg, cfg.reweight_start, autocast=_bf16(),
                      generator=torch.Generator().manual_seed(0))
    assert res.loss.dtype == torch.float32 and torch.isfinite(res.loss)
    assert res.logits_adv.dtype == torch.float32           # losses are computed in fp32 from bf16 logits
    assert res.x_adv.dtype == torch.float32 and (res.x_adv - x).abs().max() <= cfg.eps + 1e-6
    res.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_bf16_training_epoch_is_finite(tiny_cfg, tmp_path):
    from virkit.trainer import train
    cfg = tiny_cfg("vir-at", precision="bf16", reweight_start=1, **FAST)
    out = train(cfg, tmp_path / "run", log=False)
    (rec,) = _history(out)
    assert math.isfinite(rec["train_loss"]) and rec["train_loss"] > 0
    assert 0.0 <= rec["holdout_nat_acc"] <= 1.0 and 0.0 <= rec["holdout_pgd_acc"] <= 1.0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"


def test_evaluation_stays_fp32_after_bf16_training(tiny_cfg, tmp_path, monkeypatch):
    """Every module output in the held-out evaluation and the final evaluation is fp32 and autocast
    is off there, although training ran under bf16 autocast."""
    import virkit.evaluate as ev
    import virkit.trainer as tr

    state = {"eval": False, "seen": [], "train_bf16": 0}

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            if state["eval"]:
                state["seen"].append((type(module).__name__, output.dtype, torch.is_autocast_enabled("cpu")))
            elif output.dtype == torch.bfloat16:
                state["train_bf16"] += 1

    def flagged(fn):
        def wrapper(*a, **k):
            state["eval"] = True
            try:
                return fn(*a, **k)
            finally:
                state["eval"] = False
        return wrapper

    monkeypatch.setattr(tr, "holdout_accuracy", flagged(tr.holdout_accuracy))
    monkeypatch.setattr(ev, "evaluate_model", flagged(ev.evaluate_model))
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        cfg = tiny_cfg("at", precision="bf16", test_subset=32, eval_attacks=("natural", "fgsm"), **FAST)
        out = tr.train(cfg, tmp_path / "run", log=False)
    finally:
        handle.remove()
    assert state["train_bf16"] > 0, "training did not run under bf16 autocast"
    assert state["seen"], "no forward ran in the evaluation phases"
    bad = {(name, str(dt), ac) for name, dt, ac in state["seen"] if dt != torch.float32 or ac}
    assert not bad, f"non-fp32 outputs or autocast in evaluation: {sorted(bad)[:5]}"
    assert (out / "eval.json").is_file()


# ------------------------------------------------------------------------------- channels_last
def test_channels_last_method_step_matches_contiguous():
    cfg = resolve_config("tiny", method="vir-trades", attack_steps=2, device="cpu")
    x, y = _batch()
    outs = []
    for cl in (False, True):
        model = _tiny_model()
        xx = x
        if cl:
            model = model.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        model.train()
        res = method_step(model, xx, y, cfg, cfg.reweight_start, generator=torch.Generator().manual_seed(0))
        res.loss.backward()
        outs.append((res.loss.detach(), model.net.head.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-2, atol=1e-4)


def test_channels_last_flag_trains(tiny_cfg, tmp_path):
    from virkit.trainer import train
    cfg = tiny_cfg("at", channels_last=True, **FAST)
    out = train(cfg, tmp_path / "run", log=False)
    (rec,) = _history(out)
    assert math.isfinite(rec["train_loss"])


# ------------------------------------------------------------------------- input-only gradients
def test_input_grad_only_restores_and_keeps_result():
    model = _tiny_model().eval()
    model.net.head.bias.requires_grad_(False)       # a frozen parameter stays frozen afterwards
    x, y = _batch()
    with input_grad_only(model):
        assert not any(p.requires_grad for p in model.parameters())
        with input_grad_only(model):                 # nested: harmless
            pass
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [p is not model.net.head.bias for p in model.parameters()]
    with pytest.raises(RuntimeError):
        with input_grad_only(model):
            raise RuntimeError("boom")
    assert model.net.head.weight.requires_grad       # restored on error too

    # pgd's result does not depend on whether parameters require grad; no .grad is written
    a = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(1))
    for p in model.parameters():
        p.requires_grad_(False)
    b = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------- torch.compile
def test_compile_failure_falls_back_to_eager(tiny_cfg, tmp_path, monkeypatch):
    from virkit.trainer import train

    def broken(*a, **k):
        raise RuntimeError("no backend here")
    monkeypatch.setattr(torch, "compile", broken)
    logs = []
    cfg = tiny_cfg("at", compile=True, **FAST)
    out = train(cfg, tmp_path / "run", log=logs.append)
    assert any("torch.compile failed" in line and "eager" in line for line in logs), logs
    assert math.isfinite(_history(out)[0]["train_loss"])


@pytest.mark.slow
def test_compile_on_cpu_compiles_or_falls_back_cleanly():
    """Real torch.compile of the trainer's path (inductor needs a C++ compiler on the CPU): either it
    compiles, and crafting through the compiled model gives the eager result with parameter grads
    untouched and requires_grad restored, or it falls back with one log line."""
    from virkit.trainer import _maybe_compile
    cfg = resolve_config("tiny", method="vir-at", attack_steps=2, compile=True, device="cpu")
    model = _tiny_model()
    x, y = _batch(8)
    logs = []
    run_model = _maybe_compile(model, cfg, x[:2], logs.append)
    if run_model is model:
        assert len(logs) == 1 and "torch.compile failed" in logs[0]
        return
    assert not logs
    model.train()
    res_c = method_step(run_model, x, y, cfg, cfg.reweight_start, generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
    res_c.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model2 = _tiny_model()  # same initial weights and running statistics as ``model`` had
    model2.train()
    res_e = method_step(model2, x, y, cfg, cfg.reweight_start, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res_c.loss.detach(), res_e.loss.detach(), rtol=1e-3, atol=1e-4)
    # compiled kernels round differently: a gradient component near 0 may flip its sign, rarely
    assert (res_c.x_adv != res_e.x_adv).float().mean() < 0.02
    torch.testing.assert_close(res_c.weights, res_e.weights, rtol=1e-2, atol=1e-4)
