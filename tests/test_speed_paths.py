"""The GPU speed paths, exercised on the CPU where PyTorch allows: bf16 autocast training,
torch.compile (or its clean fallback), channels_last, input-only attack gradients, and evaluation
staying fp32 after bf16 training. No timing asserts (timings live in benchmarks/bench.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

from virkit.attacks.pgd import input_grad_only, pgd
from virkit.models import build_model
from virkit.training.config import resolve_config
from virkit.training.methods import METHODS, method_step


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
    res = method_step(
        model, x, y, cfg, cfg.reweight_start, autocast=_bf16(), generator=torch.Generator().manual_seed(0)
    )
    assert res.loss.dtype == torch.float32 and torch.isfinite(res.loss)
    assert res.logits_adv.dtype == torch.float32  # losses are computed in fp32 from bf16 logits
    assert res.x_adv.dtype == torch.float32 and (res.x_adv - x).abs().max() <= cfg.eps + 1e-6
    res.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_bf16_training_epoch_is_finite(tiny_cfg, tmp_path):
    from virkit.training.trainer import train

    cfg = tiny_cfg("vir-at", precision="bf16", reweight_start=1, **FAST)
    out = train(cfg, tmp_path / "run", quiet=True)
    (rec,) = _history(out)
    assert math.isfinite(rec["train_loss"]) and rec["train_loss"] > 0
    assert 0.0 <= rec["holdout_nat_acc"] <= 1.0 and 0.0 <= rec["holdout_pgd_acc"] <= 1.0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"


def test_evaluation_stays_fp32_after_bf16_training(tiny_cfg, tmp_path, monkeypatch):
    """Every module output in the held-out evaluation and the final evaluation is fp32 and autocast
    is off there, although training ran under bf16 autocast."""
    import virkit.evaluation.evaluate as ev
    import virkit.training.trainer as tr

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
        out = tr.train(cfg, tmp_path / "run", quiet=True)
    finally:
        handle.remove()
    assert state["train_bf16"] > 0, "training did not run under bf16 autocast"
    assert state["seen"], "no forward ran in the evaluation phases"
    bad = {(name, str(dt), ac) for name, dt, ac in state["seen"] if dt != torch.float32 or ac}
    assert not bad, f"non-fp32 outputs or autocast in evaluation: {sorted(bad)[:5]}"
    assert (out / "eval.json").is_file()


# ------------------------------------------------------------------------------- channels_last
# How fp32 results of two kernels (memory formats, compiled vs eager) are compared.
#
# Two fp32 paths never agree bit for bit: their kernels sum in different orders (and which kernel
# runs depends on the CPU: oneDNN picks AVX2, AVX-512 or AMX code at run time). A fixed atol/rtol
# on their difference is therefore a statement about one machine. Worse, method_step's PGD takes
# sign steps: where an input-gradient component is within rounding error of 0 (TRADES' first step
# starts next to x, where the KL and its gradient are ~0), the two paths step in opposite
# directions, and the direct difference of the losses then measures which pixels flipped, not the
# arithmetic (385 of 49,152 pixels differ between the formats on an AMD EPYC).
#
# So each fp32 path is compared with a float64 REFERENCE of the same computation, and its error
# must be within K times the error of the other fp32 path (the plain contiguous eager one):
#
# * the training step is replayed in float64 at the x' that the fp32 path itself crafted
#   (``virkit.training.methods.pgd`` patched to return it; in fp32 the replay reproduces the step bit for
#   bit), so the pixel flips drop out. Per-example losses (the loss is their mean), weights and
#   head-weight gradient are continuous functions of x' and the parameters (no ReLU/max-pool kink
#   lies between them and the logits), so their fp32 error is rounding only. Errors are Euclidean
#   norms of the difference: the ratio of two paths' norms over many rounding errors is stable,
#   while the ratio of two single rounding errors (one scalar, or the worst element) is not;
# * the crafting itself is checked on the input gradient of the attack loss (what PGD takes the
#   sign of) at a point on the eps-ball's border, where it is not ~0, with the 90th percentile of
#   the elementwise error: a ReLU or max-pool decision that rounds the other way in one path
#   reroutes the gradient of a few pixels, a wrong kernel changes nearly all of them.
#
# The other path's error is floored at ``n * u * size(reference)`` (u = 2**-24, n the number of
# terms of the last reduction: the classes for a per-example loss or weight, the training
# forwards' examples for the head gradient, 32 channels x 3 x 3 taps for an input-gradient pixel),
# the worst-case relative rounding error of that reduction alone (Higham, "Accuracy and Stability
# of Numerical Algorithms", Sec. 3.1), so a path that happens to be exact does not make the bound
# zero. Measured with vir-trades, vir-at, trades and mart on four batches, with oneDNN's AVX2 and
# SSE4.1 kernels and with PyTorch's own (mkldnn off), channels_last's error is at most 1/4 of the
# bound (for vir-trades 1/10), so K = 16 leaves room for other CPUs. A kernel that computes
# something different errs by the size of the quantity itself (the input gradient with rows and
# columns swapped: 400-5000 times the bound), and ``test_fp64_reference_check_rejects_a_small_change``
# shows the bound already rejects the effect on the head gradient of moving a 2 x 2 patch per
# image by one attack step (5-20 times the bound for vir-trades).
U32 = 2.0**-24  # unit roundoff of float32
K = 16.0


def _step_quantities(model, res) -> dict:
    # the loss itself is the batch mean of loss_per_example
    return {
        "loss_per_example": res.loss_per_example.double(),
        "weights": res.weights.double(),
        "head_grad": model.net.head.weight.grad.double(),
    }


def _terms(x, cfg) -> dict:
    """Terms of the last reduction of each quantity (see the comment above)."""
    forwards = 2 if METHODS[cfg.method].family in ("trades", "mart") else 1  # training forwards with a gradient
    return {"loss_per_example": 10, "weights": 10, "head_grad": forwards * x.shape[0]}


def _step(model, x, y, cfg, x_adv=None) -> tuple[dict, torch.Tensor]:
    """One method_step of ``model`` (train mode) and its backward; with ``x_adv`` the attack is
    skipped and the step uses that x' (cast to the dtype of ``x``)."""
    import virkit.training.methods as vm

    model.train()
    with pytest.MonkeyPatch.context() as mp:
        if x_adv is not None:
            mp.setattr(vm, "pgd", lambda *a, **k: x_adv.to(x.dtype))
        res = method_step(model, x, y, cfg, cfg.reweight_start, generator=torch.Generator().manual_seed(0))
    res.loss.backward()
    return _step_quantities(model, res), res.x_adv.detach()


def _fp64_replay(x, y, cfg, x_adv) -> dict:
    """The float64 reference: the same step, network in float64, at the given x'."""
    return _step(_tiny_model().double(), x.double(), y, cfg, x_adv)[0]


def _size(t: torch.Tensor, q: float | None = None) -> float:
    """Euclidean norm, or with ``q`` the q-quantile of the absolute values."""
    return float(t.norm() if q is None else torch.quantile(t.abs().flatten(), q))


def _error(got: torch.Tensor, ref: torch.Tensor, q: float | None = None) -> float:
    return _size(got.double() - ref, q)


def _assert_within(name, got, ref, other_err, n, q=None):
    mag = _size(ref, q)
    bound = K * max(other_err, n * U32 * mag)
    err = _error(got, ref, q)
    assert err <= bound, (
        f"{name}: error vs float64 {err:.3e} > bound {bound:.3e} (other fp32 path's error "
        f"{other_err:.3e}, |reference| {mag:.3e}, {n} terms)"
    )


def _assert_step_within(got: dict, ref: dict, other: dict, other_ref: dict, x, cfg):
    for k, n in _terms(x, cfg).items():
        _assert_within(k, got[k], ref[k], _error(other[k], other_ref[k]), n)


def _attack_input_grad(model, x, y, z, cfg):
    """Input gradient at ``z`` of the method's attack loss (TRADES: the KL to the clean prediction),
    in eval mode, as PGD takes it."""
    from virkit.attacks.pgd import attack_loss
    from virkit.ops import log_probs

    kind = METHODS[cfg.method].attack_loss
    model.eval()
    with torch.no_grad():
        logp = log_probs(model(x)) if kind == "kl" else None
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(attack_loss(kind, model(z), y, logp).sum(), z)
    return g


def _border_point(x):
    sign = 2 * torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype) - 1
    return (x + 8 / 255 * sign).clamp(0, 1)


def test_channels_last_method_step_matches_contiguous():
    """channels_last crafts the same attack and computes the same training step as the contiguous
    layout, up to rounding (see the comment above for how the tolerance is derived)."""
    cfg = resolve_config("tiny", method="vir-trades", attack_steps=2, device="cpu")
    x, y = _batch()
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)

    q_c, xa_c = _step(_tiny_model(), x, y, cfg)
    q_l, xa_l = _step(_tiny_model().to(memory_format=torch.channels_last), cl(x), y, cfg)
    # the replay is the same computation: at the run's own x' it reproduces the run exactly
    again, _ = _step(_tiny_model(), x, y, cfg, xa_c)
    assert all(torch.equal(again[k], q_c[k]) for k in q_c)
    ref_c, ref_l = _fp64_replay(x, y, cfg, xa_c), _fp64_replay(x, y, cfg, xa_l)
    _assert_step_within(q_l, ref_l, q_c, ref_c, x, cfg)
    assert (xa_l - x).abs().max() <= cfg.eps + 1e-6

    z = _border_point(x)
    g_c = _attack_input_grad(_tiny_model(), x, y, z, cfg)
    g_l = _attack_input_grad(_tiny_model().to(memory_format=torch.channels_last), cl(x), y, cl(z), cfg)
    g_ref = _attack_input_grad(_tiny_model().double(), x.double(), y, z.double(), cfg)
    _assert_within("attack input gradient", g_l, g_ref, _error(g_c, g_ref, 0.9), 32 * 9, q=0.9)


def test_fp64_reference_check_rejects_a_small_change():
    """The bound of the check above is tight enough to see a small real difference: the contiguous
    step's head-weight gradient checked against the float64 replay at an x' that differs in a
    2 x 2 patch per image by one attack step (4/255) fails it, and so does an input gradient with its
    rows and columns swapped (what a mixed-up memory format would compute)."""
    cfg = resolve_config("tiny", method="vir-trades", attack_steps=2, device="cpu")
    x, y = _batch()
    q_c, xa_c = _step(_tiny_model(), x, y, cfg)
    ref_c = _fp64_replay(x, y, cfg, xa_c)
    moved = xa_c.clone()
    pix = (slice(None), 0, slice(16, 18), slice(16, 18))  # a 2 x 2 patch of the red channel
    moved[pix] = (xa_c[pix] - torch.sign(xa_c[pix] - x[pix]) * cfg.step_size).clamp(0, 1)
    assert (moved != xa_c).sum() >= x.shape[0]
    ref_moved = _fp64_replay(x, y, cfg, moved)
    n = _terms(x, cfg)["head_grad"]
    _assert_within("head_grad", q_c["head_grad"], ref_c["head_grad"], _error(q_c["head_grad"], ref_c["head_grad"]), n)
    with pytest.raises(AssertionError, match="head_grad"):
        _assert_within(
            "head_grad", q_c["head_grad"], ref_moved["head_grad"], _error(q_c["head_grad"], ref_c["head_grad"]), n
        )

    z = _border_point(x)
    g_c = _attack_input_grad(_tiny_model(), x, y, z, cfg)
    g_ref = _attack_input_grad(_tiny_model().double(), x.double(), y, z.double(), cfg)
    with pytest.raises(AssertionError, match="attack input gradient"):
        _assert_within("attack input gradient", g_c.transpose(2, 3), g_ref, _error(g_c, g_ref, 0.9), 32 * 9, q=0.9)


def test_channels_last_flag_trains(tiny_cfg, tmp_path):
    from virkit.training.trainer import train

    cfg = tiny_cfg("at", channels_last=True, **FAST)
    out = train(cfg, tmp_path / "run", quiet=True)
    (rec,) = _history(out)
    assert math.isfinite(rec["train_loss"])


# ------------------------------------------------------------------------- input-only gradients
def test_input_grad_only_restores_and_keeps_result():
    model = _tiny_model().eval()
    model.net.head.bias.requires_grad_(False)  # a frozen parameter stays frozen afterwards
    x, y = _batch()
    with input_grad_only(model):
        assert not any(p.requires_grad for p in model.parameters())
        with input_grad_only(model):  # nested: harmless
            pass
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [p is not model.net.head.bias for p in model.parameters()]
    with pytest.raises(RuntimeError):
        with input_grad_only(model):
            raise RuntimeError("boom")
    assert model.net.head.weight.requires_grad  # restored on error too

    # pgd's result does not depend on whether parameters require grad; no .grad is written
    a = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(1))
    for p in model.parameters():
        p.requires_grad_(False)
    b = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------- torch.compile
def test_compile_failure_falls_back_to_eager(tiny_cfg, tmp_path, monkeypatch):
    from virkit.training.trainer import train

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
    from virkit.training.trainer import _maybe_compile

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
    # compiled kernels round differently (and may step some pixels the other way): each path is
    # checked against the float64 replay at its own x', within K times the eager path's error
    # (see the comment above test_channels_last_method_step_matches_contiguous)
    q_comp = _step_quantities(model, res_c)
    q_e, xa_e = _step(_tiny_model(), x, y, cfg)  # same initial weights and running statistics
    _assert_step_within(
        q_comp, _fp64_replay(x, y, cfg, res_c.x_adv.detach()), q_e, _fp64_replay(x, y, cfg, xa_e), x, cfg
    )
    z = _border_point(x)
    eager = _tiny_model()
    eager.load_state_dict(model.state_dict())  # the BatchNorm statistics after the training forwards
    g_comp = _attack_input_grad(run_model, x, y, z, cfg)
    g_e = _attack_input_grad(eager, x, y, z, cfg)
    g_ref = _attack_input_grad(copy.deepcopy(eager).double(), x.double(), y, z.double(), cfg)
    _assert_within("attack input gradient", g_comp, g_ref, _error(g_e, g_ref, 0.9), 32 * 9, q=0.9)


# ------------------------------------------------------------- speed chosen by measurement (issue 24)
# Rates (images/s) of the kinds of machine seen: the Intel Xeon with AVX512-BF16 and no AMX (bf16 0.78x
# fp32), an AMX Xeon (bf16 ~1.8x), a CUDA GPU (bf16 autocast ~2.5x).
INTEL_NO_AMX = {"fp32": 300.0, "fp32+channels_last": 430.0, "bf16": 250.0, "bf16+channels_last": 335.0}
AMX = {"fp32": 300.0, "fp32+channels_last": 340.0, "bf16": 500.0, "bf16+channels_last": 610.0}
CUDA = {"fp32": 1000.0, "fp32+channels_last": 1100.0, "bf16": 2400.0, "bf16+channels_last": 2700.0}


def test_choice_follows_the_measured_rates_not_a_flag():
    from virkit.training.speed import BF16_MARGIN, choose

    assert choose(INTEL_NO_AMX) == ("fp32", True)  # bf16 slower: fp32 whatever the CPU flags say
    assert choose(AMX) == ("bf16", True)
    assert choose(CUDA) == ("bf16", True)
    # bf16 changes the numerics: a tie (under the margin) keeps fp32; contiguous when NHWC is no faster
    tie = {"fp32": 400.0, "fp32+channels_last": 380.0, "bf16": 400 * BF16_MARGIN * 0.99, "bf16+channels_last": 0.0}
    assert choose(tie) == ("fp32", False)
    with pytest.raises(Exception, match="measured no option"):
        choose({"fp32": 0.0, "bf16": 0.0})


@pytest.fixture
def calib_cache(tmp_path, monkeypatch):
    """An empty user cache, no VIRKIT_SPEED, and a fake measurement that counts its calls."""
    from virkit.training import speed

    monkeypatch.setattr(speed, "cache_file", lambda: tmp_path / "cache" / "virkit" / "calibration.json")
    monkeypatch.delenv("VIRKIT_SPEED", raising=False)
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    calls = []

    def fake(spec, device, **kw):
        calls.append((spec, device.type, torch.get_num_threads()))
        return dict(CUDA if device.type == "cuda" else INTEL_NO_AMX)

    monkeypatch.setattr(speed, "calibrate", fake)
    return calls


def test_calibration_is_cached_per_machine_torch_and_threads(calib_cache, monkeypatch):
    from virkit.training import speed

    cpu, spec = torch.device("cpu"), speed.StepSpec()
    first = speed.calibration_for(spec, cpu, threads=1)
    assert (first.source, first.precision, first.channels_last, first.rate) == ("measured", "fp32", True, 430.0)
    again = speed.calibration_for(spec, cpu, threads=1)
    assert again.source == "cache" and again.rates == first.rates and len(calib_cache) == 1
    assert calib_cache[0][2] == 1  # measured with the thread count it is for
    speed.calibration_for(spec, cpu, threads=2)  # another thread count: measured again
    speed.calibration_for(speed.StepSpec(batch_size=128), cpu, threads=1)  # another step
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # other kernels
    speed.calibration_for(spec, cpu, threads=1)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch
    speed.calibration_for(spec, cpu, threads=1)
    monkeypatch.setattr(speed, "device_label", lambda d: "Another CPU")  # another CPU model
    speed.calibration_for(spec, cpu, threads=1)
    assert len(calib_cache) == 6
    assert len(json.loads(speed.cache_file().read_text())) == 6
    assert speed.calibration_for(spec, cpu, threads=1, refresh=True).source == "measured"


def test_cuda_mocked_calibration_chooses_bf16(calib_cache, monkeypatch):
    """On a CUDA machine the same mechanism measures and picks bf16 autocast (CUDA mocked: the
    device name and the measurement; the decision is the code under test)."""
    from virkit.training import speed

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    precision, cl, cal = speed.fast_defaults("auto", None, torch.device("cuda"), speed.StepSpec("resnet18", 128, 10))
    assert (precision, cl) == ("bf16", True) and cal.key["device"] == "NVIDIA H100 80GB HBM3"
    assert calib_cache[0][0].model == "resnet18" and calib_cache[0][1] == "cuda"
    # an explicit choice is kept; only what is auto comes from the calibration
    assert speed.fast_defaults("fp32", None, torch.device("cuda"))[:2] == ("fp32", True)
    assert speed.fast_defaults("bf16", False, torch.device("cuda")) == ("bf16", False, None)


def test_virkit_speed_env_skips_the_measurement(calib_cache, monkeypatch):
    from virkit.errors import VirkitError
    from virkit.training import speed

    monkeypatch.setenv("VIRKIT_SPEED", "bf16,contiguous")
    assert speed.fast_defaults("auto", None, torch.device("cpu"))[:2] == ("bf16", False)
    monkeypatch.setenv("VIRKIT_SPEED", "fast")
    with pytest.raises(VirkitError, match="VIRKIT_SPEED"):
        speed.fast_defaults("auto", None, torch.device("cpu"))
    assert not calib_cache


def test_trainer_records_the_calibration(calib_cache, tiny_cfg, tmp_path):
    """precision/channels_last 'auto' are decided by the calibration; config.json records the choice
    and the measured rates. The test presets pin fp32 and the contiguous layout (no calibration)."""
    from virkit.training import trainer as tr

    assert resolve_config("quick").precision == "auto" and resolve_config("tiny").precision == "fp32"
    cfg = dataclasses.replace(
        tiny_cfg("at", precision="auto", epochs=1, train_subset=128, holdout=0, reweight_start=1), channels_last=None
    )
    run = tr.train(cfg, tmp_path / "run", quiet=True)
    rec = json.loads((run / "config.json").read_text())
    assert rec["precision"] == "auto" and rec["channels_last"] is None
    sp = rec["speed"]
    assert (sp["precision"], sp["channels_last"], sp["chosen_by"]) == ("fp32", True, "calibration")
    assert sp["calibration"]["rates"] == INTEL_NO_AMX and sp["calibration"]["key"]["step"]["model"] == "small-cnn"
    run2 = tr.train(tiny_cfg("at", epochs=1, train_subset=128, holdout=0), tmp_path / "run2", quiet=True)
    assert json.loads((run2 / "config.json").read_text())["speed"]["chosen_by"] == "config"


def test_calibration_measures_the_real_step(tmp_path, monkeypatch):
    """The real measurement, tiny budget: every option gets a positive rate and the choice follows them."""
    from virkit.training import speed

    spec = speed.StepSpec("small-cnn", batch_size=8, attack_steps=1)
    rates = speed.calibrate(spec, torch.device("cpu"), budget_s=0.05, rounds=1)
    assert set(rates) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert all(v > 0 for v in rates.values())
    assert speed.choose(rates)[0] in ("fp32", "bf16")


def test_onednn_isa_cap_below_bf16_counts_as_no_native_bf16(monkeypatch, tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 (make test-avx2, or a user emulating an AVX2-only CPU) makes oneDNN
    emulate bf16: doctor reports no native bf16 there; caps at or above AVX512_CORE_BF16 leave the
    flags of /proc/cpuinfo to decide."""
    from virkit import devices

    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    from_flags = devices.cpu_has_native_bf16()
    for cap in ("AVX2", "avx512_core", "SSE41"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert devices.cpu_has_native_bf16() is False
    for cap in ("AVX512_CORE_AMX", "ALL", ""):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert devices.cpu_has_native_bf16() is from_flags
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert devices.cpu_has_native_bf16() is False
