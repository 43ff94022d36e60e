"""Reweighting formulas against values computed by hand."""

import math

import pytest
import torch

from virkit import reweighting as rw


def _softmax(row):
    e = [math.exp(v) for v in row]
    s = sum(e)
    return [v / s for v in e]


LOGITS_NAT = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2]])
LOGITS_ADV = torch.tensor([[0.5, 1.0, -1.0], [0.0, 0.0, 1.5]])
Y = torch.tensor([0, 1])


def test_vulnerability_score_by_hand():
    alpha, gamma = 7.0, 10.0
    expected = [alpha * math.exp(-gamma * _softmax(r)[y]) for r, y in zip(LOGITS_NAT.tolist(), Y.tolist())]
    got = rw.vulnerability_score(LOGITS_NAT, Y, alpha, gamma)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_discrepancy_score_is_kl_nat_to_adv_by_hand():
    expected = []
    for rn, ra in zip(LOGITS_NAT.tolist(), LOGITS_ADV.tolist()):
        p, q = _softmax(rn), _softmax(ra)
        expected.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    got = rw.discrepancy_score(LOGITS_NAT, LOGITS_ADV)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    # KL(p||q) is not symmetric: the direction matters (Eq. 6 is KL(f(x) || f(x')))
    rev = rw.discrepancy_score(LOGITS_ADV, LOGITS_NAT)
    assert not torch.allclose(got, rev)
    assert torch.all(rw.discrepancy_score(LOGITS_NAT, LOGITS_NAT) < 1e-6)


def test_vir_weights_equation_7_and_ablations():
    a, g, b = 7.0, 10.0, 0.007
    sv = rw.vulnerability_score(LOGITS_NAT, Y, a, g)
    sd = rw.discrepancy_score(LOGITS_NAT, LOGITS_ADV)
    w = rw.vir_weights(LOGITS_NAT, LOGITS_ADV, Y, a, g, b)
    assert torch.allclose(w, sv * sd + b)
    # a concrete number: example 0
    p = _softmax([2.0, 0.0, -1.0])
    q = _softmax([0.5, 1.0, -1.0])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert w[0].item() == pytest.approx(7.0 * math.exp(-10.0 * p[0]) * kl + 0.007, rel=1e-5)
    assert torch.allclose(rw.vir_weights(LOGITS_NAT, LOGITS_ADV, Y, a, g, b, "sv"), sv)
    assert torch.allclose(rw.vir_weights(LOGITS_NAT, LOGITS_ADV, Y, a, g, b, "sd"), sd)
    with pytest.raises(ValueError):
        rw.vir_weights(LOGITS_NAT, LOGITS_ADV, Y, a, g, b, "nope")


def test_no_gradient_flows_through_weights():
    ln = LOGITS_NAT.clone().requires_grad_(True)
    la = LOGITS_ADV.clone().requires_grad_(True)
    w = rw.vir_weights(ln, la, Y, 7.0, 10.0, 0.007)
    assert not w.requires_grad and w.grad_fn is None
    assert not rw.mail_weights(la, Y, 10.0, -0.5).requires_grad


def test_vir_weights_larger_for_less_sure_examples():
    # same discrepancy, lower true-class probability -> larger weight
    sure = torch.tensor([[4.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.5, 0.0, 0.0]])
    y = torch.tensor([0])
    assert rw.vulnerability_score(unsure, y, 7, 10) > rw.vulnerability_score(sure, y, 7, 10)
    adv_s, adv_u = sure - torch.tensor([[2.0, 0, 0]]), unsure - torch.tensor([[2.0, 0, 0]])
    assert rw.vir_weights(unsure, adv_u, y, 7, 10, 0.007) > rw.vir_weights(sure, adv_s, y, 7, 10, 0.007)


def test_gairat_tanh_by_hand_and_normalized():
    kappa = torch.tensor([0, 5, 10, 3])
    K, lam = 10, -1.0
    raw = [(1 + math.tanh(lam + 5 * (1 - 2 * k / K))) / 2 for k in kappa.tolist()]
    expected = [r * len(raw) / sum(raw) for r in raw]
    got = rw.gairat_weights(kappa, K, lam)
    assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert got.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert got[0] > got[3] > got[1] > got[2]  # fewer correct steps = closer to the boundary = heavier


def test_mail_weights_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    gamma, beta, scale = 10.0, -0.5, 3.0
    exp = []
    for r, t in zip(logits.tolist(), y.tolist()):
        p = _softmax(r)
        pm = p[t] - max(v for j, v in enumerate(p) if j != t)
        exp.append(scale / (1 + math.exp(gamma * (pm - beta))))
    assert rw.mail_weights(logits, y, gamma, beta, scale).tolist() == pytest.approx(exp, rel=1e-5)
    assert rw.probability_margin(logits, y)[0] < 0 < rw.probability_margin(logits, y)[1]


def test_normalize_batch_mean():
    w = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert rw.normalize_batch_mean(w).mean().item() == pytest.approx(1.0)


def test_shared_kl_and_margin_helpers():
    """virkit.ops: the KL of TRADES' loss, its attack and S_d, and the true/best-other pair of the
    margins, written once."""
    from virkit import ops

    kl = ops.kl_per_example(LOGITS_NAT, LOGITS_ADV)
    assert torch.equal(kl.clamp_min(0.0), rw.discrepancy_score(LOGITS_NAT, LOGITS_ADV))
    assert torch.equal(ops.kl_per_example(None, LOGITS_ADV, logp=ops.log_probs(LOGITS_NAT)), kl)
    a = LOGITS_NAT.clone().requires_grad_(True)
    ops.kl_per_example(LOGITS_ADV, a).sum().backward()  # differentiable (TRADES' loss)
    assert a.grad is not None and torch.isfinite(a.grad).all()
    true, other = ops.true_and_best_other(LOGITS_ADV, Y)
    assert true.tolist() == [0.5, 0.0] and other.tolist() == [1.0, 1.5]
