"""virkit.training.losses: every method as a loss for one's own loop, on the very code path of the trainer.

* the loss and weights of ``method_loss(m)`` equal ``method_step``'s bit for bit on a seeded batch;
* weights are detached, the loss carries the gradient; reweighting follows ``epoch`` or ``active``;
* bad method names, settings and batches are one-line VirkitErrors.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from virkit.errors import VirkitError
from virkit.models import build_model
from virkit.training.config import TrainConfig, resolve_config
from virkit.training.losses import SETTINGS, LossResult, method_loss, method_names
from virkit.training.methods import METHODS, method_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    return build_model("small-cnn", 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


@pytest.mark.parametrize(
    "method", ["at", "trades", "mart", "gairat", "mail-at", "mail-trades", "vir-at", "vir-trades", "vir-at-flat"]
)
def test_loss_equals_method_step_bit_for_bit(method):
    x, y = _batch()
    cfg = resolve_config("tiny", method=method, device="cpu")
    loss_fn = method_loss(
        method,
        eps=cfg.eps,
        step_size=cfg.step_size,
        attack_steps=cfg.attack_steps,
        reweight_start=cfg.reweight_start,
        epochs=cfg.epochs,
        lr_milestones=cfg.lr_milestones,
    )
    outs = []
    for call in ("step", "loss"):
        model = _model().train()
        gen = torch.Generator().manual_seed(7)
        if call == "step":
            r = method_step(model, x, y, cfg, cfg.reweight_start, generator=gen)
            loss, w = r.loss, r.weights
        else:
            r = loss_fn(model, x, y, epoch=cfg.reweight_start, generator=gen)
            assert isinstance(r, LossResult) and r.reweighting == METHODS[method].reweighted
            loss, w = r.loss, r.weights
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        outs.append((loss.detach(), w, grads, r.x_adv))
    (l1, w1, g1, a1), (l2, w2, g2, a2) = outs
    assert torch.equal(l1, l2) and torch.equal(w1, w2) and torch.equal(g1, g2) and torch.equal(a1, a2)
    if METHODS[method].reweighted and method not in ("gairat", "vir-at-flat"):
        assert w2.min() != w2.max()  # the weights were on (GAIRAT's untrained kappas tie; -flat is flat)


def test_weights_are_detached_and_the_loss_is_not():
    x, y = _batch()
    model = _model().train()
    r = method_loss("vir-trades", attack_steps=1)(model, x, y, active=True)
    assert r.loss.requires_grad and r.loss.dim() == 0
    assert not r.weights.requires_grad and r.weights.grad_fn is None and r.weights.shape == (16,)
    assert not r.loss_per_example.requires_grad and not r.x_adv.requires_grad
    assert float(r.weights.min()) >= 1.6  # w = S_v S_d + beta with beta 1.6 (Sec. 5.3)


def test_reweighting_start_by_epoch_or_flag():
    x, y = _batch(8)
    vir = method_loss("vir-at", attack_steps=1)
    assert vir.config.reweight_start == 76  # Sec. 5.1: "on the 76th epoch" of 115
    model = _model().train()
    assert not vir(model, x, y, epoch=75).reweighting
    r = vir(model, x, y, epoch=75)
    assert torch.equal(r.weights, torch.ones(8))
    assert vir(model, x, y, epoch=76).reweighting and vir(model, x, y, active=True).reweighting
    assert not vir(model, x, y, active=False).reweighting
    # a shorter schedule moves the default start with its first lr drop; an explicit start wins
    assert method_loss("vir-at", epochs=30, lr_milestones=(20, 25)).config.reweight_start == 21
    assert method_loss("mail-at", epochs=30, lr_milestones=(20, 25)).config.reweight_start == 22
    assert method_loss("vir-at", reweight_start=3).config.reweight_start == 3
    # unweighted methods need neither
    assert not method_loss("at", attack_steps=1)(model, x, y).reweighting


def test_settings_resolve_the_papers_defaults():
    s = method_loss("vir-at").settings
    assert (s["alpha"], s["beta"], s["gamma"]) == (7.0, 0.007, 10.0)
    assert s["eps"] == 8 / 255 and s["step_size"] == 2 / 255 and s["attack_steps"] == 10
    assert s["random_start"] == "normal" and method_loss("at").settings["random_start"] == "uniform"
    assert method_loss("trades").settings["trades_beta"] == 4.0
    t = method_loss("vir-trades").settings
    assert (t["alpha"], t["beta"], t["gamma"], t["trades_beta"]) == (8.0, 1.6, 3.0, 5.0)
    assert set(SETTINGS) <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert method_names() == list(METHODS)


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_bad_input_is_one_line_virkit_error():
    with pytest.raises(VirkitError, match="unknown method 'vir_at'; valid methods: natural, at, ") as e:
        method_loss("vir_at")
    _one_line(e)
    with pytest.raises(VirkitError, match="unknown setting\\(s\\) lr for method_loss; valid settings: eps"):
        method_loss("at", lr=0.1)
    with pytest.raises(VirkitError, match="eps=2.0 is out of range"):
        method_loss("at", eps=2.0)
    x, y = _batch(4)
    model = _model().train()
    vir = method_loss("vir-at", attack_steps=1)
    with pytest.raises(VirkitError, match="pass epoch=E \\(1-based\\) or active=True/False"):
        vir(model, x, y)
    with pytest.raises(VirkitError, match="not both"):
        vir(model, x, y, epoch=1, active=True)
    with pytest.raises(VirkitError, match="1-based"):
        vir(model, x, y, epoch=0)
    with pytest.raises(VirkitError, match="outside \\[0, 1\\]"):
        vir(model, x * 255, y, epoch=1)
    with pytest.raises(VirkitError, match="float tensor"):
        vir(model, (x * 255).to(torch.uint8), y, epoch=1)
    with pytest.raises(VirkitError, match="y must be a 1-D int64"):
        vir(model, x, y[:2], epoch=1)
