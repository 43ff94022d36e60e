"""Appendix A (virkit.paper.theory, virkit.paper.theory_empirical): Theorem 1's closed form against an
independent numerical optimization and against Monte Carlo, the quadratic Bayes rule, robust risks, and the
linear-model training used by notebook 02."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from virkit.errors import VirkitError
from virkit.paper import theory as T
from virkit.paper import theory_empirical as TE

scipy_stats = pytest.importorskip("scipy.stats")
from scipy.optimize import minimize_scalar

# (d, eta, sigma, K): well separated (b > 0), heavily overlapping (b < 0), high dimension, K near 1
CASES = [(10, 0.5, 1.0, 2.0), (1, 1.0, 1.0, 3.0), (50, 0.1, 1.0, 1.5), (4, 0.8, 2.0, 1.2), (3, 0.3, 0.5, 4.0)]


def _numeric_best_linear(d, eta, sigma, K):
    """Independent route: minimize R_minus(t) + R_plus(t) over the threshold t of z = <1, x>/sqrt(d)."""
    m = math.sqrt(d) * eta
    norm = scipy_stats.norm

    def total(t):
        return norm.sf((t + m) / sigma) + norm.cdf((t - m) / (K * sigma))

    res = minimize_scalar(
        total, bounds=(-m - 10 * K * sigma, m + 10 * K * sigma), method="bounded", options={"xatol": 1e-10}
    )
    t = res.x
    return norm.sf((t + m) / sigma), norm.cdf((t - m) / (K * sigma)), t


@pytest.mark.parametrize("d,eta,sigma,K", CASES)
def test_closed_form_equals_numerical_optimum(d, eta, sigma, K):
    r_minus, r_plus = T.class_risks(d, eta, sigma, K)
    n_minus, n_plus, t = _numeric_best_linear(d, eta, sigma, K)
    assert r_minus == pytest.approx(n_minus, abs=1e-6)
    assert r_plus == pytest.approx(n_plus, abs=1e-6)
    w, b = T.optimal_linear_classifier(d, eta, sigma, K)
    assert -b == pytest.approx(t, abs=1e-4)  # threshold on z is -b for the unit w
    assert np.allclose(w, 1 / math.sqrt(d))


@pytest.mark.parametrize("d,eta,sigma,K", CASES)
def test_closed_form_matches_monte_carlo(d, eta, sigma, K):
    """Which class gets which expression: R_minus must be the error on y=-1 (the low-variance class)."""
    r = T.class_risks(d, eta, sigma, K)
    w, b = T.optimal_linear_classifier(d, eta, sigma, K)
    mc, se = TE.monte_carlo_linear_risks(w, b, d, eta, sigma, K, n=400_000, seed=3)
    for i in (0, 1):
        assert abs(mc[i] - r[i]) < 4.5 * se[i] + 1e-4, (i, mc, r, se)
    assert r[0] < r[1]  # Theorem 1: the high-variance class has the larger risk


def test_theorem_values_and_limits():
    # d=10, eta=0.5, sigma=1, K=2: A = 2/3 * sqrt(10) * 0.5, q = 2 ln 2 / 3
    A = 2 / 3 * math.sqrt(10) * 0.5
    q = 2 * math.log(2) / 3
    s = math.sqrt(A * A + q)
    r = T.class_risks(10, 0.5, 1.0, 2.0)
    assert r[0] == pytest.approx(scipy_stats.norm.cdf(A - 2 * s), rel=1e-12)
    assert r[1] == pytest.approx(scipy_stats.norm.cdf(-2 * A + s), rel=1e-12)
    assert r == pytest.approx((0.0729094, 0.1965778), abs=1e-6)
    # K = 1: both classes Phi(-sqrt(d) eta / sigma), and the K -> 1 limit is continuous
    r1 = T.class_risks(10, 0.5, 1.0, 1.0)
    assert r1[0] == r1[1] == pytest.approx(scipy_stats.norm.cdf(-math.sqrt(10) * 0.5))
    assert T.class_risks(10, 0.5, 1.0, 1.0 + 1e-6) == pytest.approx(r1, abs=1e-5)
    assert T.q_of_k(1.0) == 1.0 and T.q_of_k(1.0 + 1e-9) == pytest.approx(1.0, abs=1e-6)


def test_disparity_for_every_k():
    for K in np.linspace(1.05, 6, 25):
        for eta in (0.05, 0.3, 1.0):
            r = T.class_risks(8, float(eta), 1.0, float(K))
            assert r[0] < r[1]


def test_direction_is_optimal():
    """No other direction (with its own best bias) beats w ∝ (1,...,1)."""
    d, eta, sigma, K = 6, 0.4, 1.0, 2.5
    best = sum(T.class_risks(d, eta, sigma, K))
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = np.ones(d) / math.sqrt(d) + 0.3 * rng.standard_normal(d)
        tot = min(sum(T.linear_class_risks(w, b, d, eta, sigma, K)) for b in np.linspace(-3, 3, 601))
        assert tot >= best - 1e-9


@pytest.mark.parametrize("d,eta,sigma,K", CASES[:4])
def test_bayes_quadratic_rule(d, eta, sigma, K):
    bq = T.bayes_quadratic_risks(d, eta, sigma, K)
    mc, se = TE.monte_carlo_bayes_risks(d, eta, sigma, K, n=400_000, seed=5)
    for i in (0, 1):
        assert abs(mc[i] - bq[i]) < 4.5 * se[i] + 1e-4, (i, mc, bq)
    # the unrestricted Bayes rule is at least as good as the best linear one, in total
    assert sum(bq) <= sum(T.class_risks(d, eta, sigma, K)) + 1e-9


def test_robust_risks():
    d, eta, sigma, K = 10, 0.5, 1.0, 2.0
    w, b = T.optimal_linear_classifier(d, eta, sigma, K)
    for eps in (0.0, 0.1, 0.25):
        closed = T.linear_class_risks(w, b, d, eta, sigma, K, eps)
        mc, se = TE.monte_carlo_linear_risks(w, b, d, eta, sigma, K, n=300_000, seed=11, eps=eps)
        for i in (0, 1):
            assert abs(mc[i] - closed[i]) < 4.5 * se[i] + 1e-4
    gaps = [np.subtract(*T.robust_class_risks(d, eta, sigma, K, e)[::-1]) for e in (0.0, 0.1, 0.2, 0.3)]
    assert all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:]))  # adversaries widen the class gap
    assert T.robust_class_risks(d, eta, sigma, K, 0.2) == T.class_risks(d, eta - 0.2, sigma, K)
    with pytest.raises(VirkitError):
        T.robust_class_risks(d, eta, sigma, K, eta)


def test_bad_input():
    with pytest.raises(VirkitError, match="K"):
        T.class_risks(10, 0.5, 1.0, 0.5)
    with pytest.raises(VirkitError):
        T.class_risks(0, 0.5, 1.0, 2.0)
    with pytest.raises(VirkitError):
        T.class_risks(10, 0.5, -1.0, 2.0)
    with pytest.raises(VirkitError):
        TE.train_linear(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), reweight="gairat")


def test_sampling_is_balanced_and_seeded():
    x, y = TE.sample_gaussian_mixture(1001, 3, 0.5, 1.0, 2.0, seed=1)
    assert x.shape == (1001, 3) and x.dtype == torch.float32
    assert int((y == 0).sum()) == 501 and int((y == 1).sum()) == 500
    x2, y2 = TE.sample_gaussian_mixture(1001, 3, 0.5, 1.0, 2.0, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # class +1 has K times the spread
    assert float(x[y == 1].std() / x[y == 0].std()) == pytest.approx(2.0, rel=0.1)


def test_logistic_model_is_near_optimal():
    d, eta, sigma, K = 10, 0.5, 1.0, 2.0
    x, y = TE.sample_gaussian_mixture(8000, d, eta, sigma, K, seed=0)
    m = TE.train_linear(x, y, steps=600, seed=0)
    assert sum(m.class_risks(d, eta, sigma, K)) < sum(T.class_risks(d, eta, sigma, K)) + 0.02


def test_corollary_low_tail():
    c = TE.corollary_true_class_probability(K=2.0, seed=0)
    assert c["q10_p_y"][1] < c["q10_p_y"][0] - 0.1  # heavier low-p_y tail for the wide class
    assert c["test_error"][1] > c["test_error"][0]
    assert c["vulnerable_share"] > 0.6  # ranking by p_y picks out class +1
    assert c["p_y"].shape == c["y"].shape


def test_vir_reweighting_reduces_class_gap_of_linear_model():
    d, eta, sigma, K, eps = 10, 0.5, 1.0, 2.0, 0.1
    x, y = TE.sample_gaussian_mixture(4000, d, eta, sigma, K, seed=0)
    at = TE.train_linear(x, y, eps=eps, seed=0)
    vir = TE.train_linear(x, y, eps=eps, reweight="vir", seed=0)
    g_at = np.subtract(*at.class_risks(d, eta, sigma, K, eps)[::-1])
    g_vir = np.subtract(*vir.class_risks(d, eta, sigma, K, eps)[::-1])
    assert g_vir < g_at
    # VIR puts more total weight on the vulnerable class once active
    ws = vir.history[-1]["weight_sum_per_class"]
    assert vir.history[-1]["reweighting_active"] and ws[1] > ws[0]
    # with eps = 0 the discrepancy term vanishes and VIR is the plain model
    nat = TE.train_linear(x, y, seed=0)
    nat_vir = TE.train_linear(x, y, reweight="vir", seed=0)
    assert np.allclose(nat.w, nat_vir.w) and nat.b == pytest.approx(nat_vir.b)


def test_robust_error_curves_shape():
    x, y = TE.sample_gaussian_mixture(500, 4, 0.5, 1.0, 2.0, seed=0)
    m = TE.train_linear(x, y, steps=50)
    out = TE.robust_error_curves(
        {"m": m, "opt": T.optimal_linear_classifier(4, 0.5, 1.0, 2.0)}, np.linspace(0, 0.3, 4), 4, 0.5, 1.0, 2.0
    )
    assert out["m"].shape == (4, 2) and out["opt"].shape == (4, 2)
    assert np.all(np.diff(out["opt"][:, 1]) > 0)  # robust error grows with eps
