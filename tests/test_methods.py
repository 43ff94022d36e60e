"""Every method trains an epoch on a real subset with a finite loss; burn-in weights are 1."""

import json
import os
from pathlib import Path

import pytest
import torch

from virkit.data import DeviceLoader, load_dataset, subset
from virkit.models import build_model
from virkit.training.config import resolve_config
from virkit.training.methods import METHODS, method_step
from virkit.training.trainer import train

STANDIN = Path(os.environ.get("VIRKIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
pytestmark = pytest.mark.skipif(not (STANDIN / "cifar10-jpeg.tar.gz").is_file(), reason="CIFAR-10 stand-in absent")


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_an_epoch(tmp_path, method):
    cfg = resolve_config(
        "tiny",
        method=method,
        epochs=2,
        reweight_start=2,
        train_subset=256,
        holdout=64,
        eval_attacks=(),
        data_root=str(STANDIN),
        batch_size=128,
    )
    run = train(cfg, tmp_path / method, quiet=True)
    hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 2
    for rec in hist:
        assert rec["train_loss"] == rec["train_loss"] and abs(rec["train_loss"]) < 1e6  # finite
    # burn-in: epoch 1 has weights exactly 1; epoch 2 (reweighting active) does not, for reweighted methods
    assert hist[0]["weight_min"] == hist[0]["weight_max"] == 1.0 and not hist[0]["reweighting_active"]
    if METHODS[method].reweighted:
        assert hist[1]["reweighting_active"]
        assert hist[1]["weight_min"] != hist[1]["weight_max"]
        assert sum(hist[1]["weight_sum_per_class"]) > 0
    else:
        assert hist[1]["weight_min"] == hist[1]["weight_max"] == 1.0


def _batch():
    train = subset(load_dataset("cifar10", STANDIN, "train"), 64, seed=0)
    x, y, _ = next(DeviceLoader(train, 64).epoch(0))
    return train, x, y


def test_vir_at_weights_follow_equation_7_from_eval_mode_logits():
    """weight_logits='eval': weights are Eq. 7 on eval-mode logits taken before the training forward;
    crafting and weighting never touch BatchNorm statistics (only the training forward does)."""
    from virkit import reweighting as rw

    train, x, y = _batch()
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, train.mean, train.std)
    cfg = resolve_config("tiny", method="vir-at", reweight_start=1, attack_steps=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    out = method_step(model, x, y, cfg, epoch=1)
    ref = build_model("small-cnn", 10, train.mean, train.std)
    ref.load_state_dict(before)
    ref.eval()
    with torch.no_grad():
        w = rw.vir_weights(ref(x), ref(out.x_adv), y, 7.0, 10.0, 0.007)
    assert torch.allclose(out.weights, w, rtol=1e-5, atol=1e-7)
    assert not out.weights.requires_grad and out.loss.requires_grad
    # exactly one train-mode forward happened: BN's batch counter advanced by one
    counts = [int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counts and all(c == 1 for c in counts)
    expected = (w * torch.nn.functional.cross_entropy(out.logits_adv, y, reduction="none")).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_vir_weights_large_for_unsure_examples_in_a_real_step():
    train, x, y = _batch()
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, train.mean, train.std)
    cfg = resolve_config("tiny", method="vir-at-sv", reweight_start=1, attack_steps=2)
    out = method_step(model, x, y, cfg, epoch=1)
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), 1).gather(1, y.view(-1, 1)).squeeze(1)
    order = torch.argsort(p)
    # S_v is monotone decreasing in p_y (up to the BN-statistics change of one forward)
    assert out.weights[order[0]] > out.weights[order[-1]]


def test_trades_loss_matches_hand_formula_at_burn_in():
    train, x, y = _batch()
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, train.mean, train.std)
    cfg = resolve_config("tiny", method="trades", attack_steps=1)
    g = torch.Generator().manual_seed(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = method_step(model, x, y, cfg, epoch=1, generator=g)
    model.load_state_dict(state)
    model.train()
    ln, la = model(x), model(out.x_adv)
    kl = (torch.softmax(ln, 1) * (torch.log_softmax(ln, 1) - torch.log_softmax(la, 1))).sum(1)
    expected = torch.nn.functional.cross_entropy(ln, y) + 4.0 * kl.mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


# ------------------------------------------------------------------------------------------ issue 13
def _step(method, x, y, **over):
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, (0.5,) * 3, (0.25,) * 3)
    cfg = resolve_config("tiny", method=method, device="cpu", attack_steps=2, **over)
    out = method_step(model, x, y, cfg, epoch=cfg.reweight_start, generator=torch.Generator().manual_seed(1))
    return model, out


def test_scale_matched_controls_keep_total_or_redistribution():
    """vir-at-flat: every example gets VIR's batch-mean weight; vir-at-mean1: VIR's weights over their
    batch mean. Same model, batch and attack start, so the VIR weights are the same three times."""
    _, x, y = _batch()
    _, vir = _step("vir-at", x, y)
    _, flat = _step("vir-at-flat", x, y)
    _, mean1 = _step("vir-at-mean1", x, y)
    assert torch.equal(vir.x_adv, flat.x_adv) and torch.equal(vir.x_adv, mean1.x_adv)
    assert torch.allclose(flat.weights, vir.weights.mean().expand_as(vir.weights))
    # one value for every example (compared exactly: std() of a constant vector need not be 0.0, a
    # vectorized mean of equal floats can differ from them in the last bit, as on AVX-512)
    assert torch.equal(flat.weights, flat.weights[:1].expand_as(flat.weights))
    assert float(vir.weights.std()) > 0
    assert torch.allclose(mean1.weights, vir.weights / vir.weights.mean())
    # the batch loss: flat has VIR's total weight, mean1 the unweighted scale
    ce = vir.loss_per_example / vir.weights
    assert torch.allclose(flat.loss, (vir.weights.mean() * ce).mean(), rtol=1e-5)
    assert torch.allclose(mean1.loss, (mean1.weights * ce).mean(), rtol=1e-5)


def test_vir_at_w1_is_at_with_the_vir_start():
    """Table 6's first row: the VIR pipeline with w = 1 is `at` with the 0.001 N(0, I) start."""
    _, x, y = _batch()
    _, w1 = _step("vir-at-w1", x, y)
    _, at = _step("at", x, y, random_start="normal")
    _, at_uniform = _step("at", x, y)
    assert torch.equal(w1.loss, at.loss) and torch.equal(w1.weights, torch.ones_like(w1.weights))
    assert not torch.equal(w1.x_adv, at_uniform.x_adv)


def test_trades_runs_three_train_forwards_like_the_official_code():
    """trades.py runs model(x), model(x'), model(x) in train mode: BatchNorm's running statistics see
    x twice. The default does the same (the third forward without a graph); the loss is unchanged."""
    _, x, y = _batch()
    m3, out3 = _step("trades", x, y)
    m2, out2 = _step("trades", x, y, trades_forwards=2)
    assert torch.allclose(out3.loss, out2.loss, rtol=1e-5, atol=1e-6)
    # replay the official order by hand on a fresh copy of the model
    torch.manual_seed(0)
    ref = build_model("small-cnn", 10, (0.5,) * 3, (0.25,) * 3)
    ref.train()
    with torch.no_grad():
        for inp in (x, out3.x_adv, x):
            ref(inp)
    bn = lambda m: [b for n, b in m.named_buffers() if n.endswith("running_mean")]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(bn(m3), bn(ref)))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(bn(m2), bn(ref)))


def test_reweighting_starts_follow_each_official_code():
    """VIR: the 76th epoch (Sec. 5.1); GAIRAT: its first lr drop; MAIL: one epoch later (0-based > 75)."""
    starts = {
        m: resolve_config("paper", method=m).reweight_start
        for m in ("vir-at", "vir-trades", "gairat", "mail-at", "mail-trades")
    }
    assert starts == {"vir-at": 76, "vir-trades": 76, "gairat": 76, "mail-at": 77, "mail-trades": 77}
    q = resolve_config("quick", method="vir-at")
    # the quick preset's schedule is the paper's scaled to 10 epochs: the lr drops and reweighting
    # starts in the same epoch, as at 75/76 of 115
    assert q.lr_milestones == (7, 8) and q.reweight_start == 8
    assert resolve_config("paper", method="vir-at", reweight_start=77).reweight_start == 77


def test_onecycle_schedule_per_step():
    """``lr_schedule="onecycle"``: per step, linear from 0 to lr at ``lr_peak`` of training, then
    linear to 0; the step schedule keeps Sec. 5.1's piecewise-constant values; a onecycle config
    with milestones is refused in one line; the default schedule leaves the config hash alone."""
    from virkit.errors import VirkitError
    from virkit.training.config import TrainConfig, config_hash, validate
    from virkit.training.epoch import lr_at

    step = resolve_config("paper", method="at")
    assert [lr_at(step, e) for e in (1, 75, 76, 90, 91)] == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001])
    cyc = resolve_config("paper", method="at", epochs=10, lr=0.1, lr_schedule="onecycle")
    assert cyc.lr_milestones == () and cyc.reweight_start == 8  # no milestones: round(75/115 * 10) + 1
    n = 4
    lrs = [lr_at(cyc, e, s, n) for e in range(1, 11) for s in range(n)]
    u = [(i + 0.5) / 40 for i in range(40)]
    assert lrs == pytest.approx([0.1 * (x / 0.3 if x <= 0.3 else (1 - x) / 0.7) for x in u])
    assert max(lrs) <= 0.1 and lrs[0] > 0 and lrs[-1] > 0 and lrs.index(max(lrs)) == 12
    assert lr_at(cyc, 3) == pytest.approx(0.1 * 0.25 / 0.3)  # an epoch's record: its middle
    with pytest.raises(VirkitError, match="lr_milestones \\[5\\] do not apply to the onecycle schedule"):
        validate(resolve_config("paper", method="at", lr_schedule="onecycle", lr_milestones=(5,)))
    assert config_hash(TrainConfig(method="at")) == config_hash(
        {k: v for k, v in TrainConfig(method="at").to_dict().items() if k not in ("lr_schedule", "lr_peak")}
    )
