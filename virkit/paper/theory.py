"""Appendix A of the paper: class-wise risk in a two-class Gaussian mixture, in closed form.

Setting (Definition A.1, following Xu et al. 2021)::

    y ~ uniform{-1, +1},  mu = (eta, ..., eta) in R^d
    x | y = -1 ~ N(-mu, sigma^2 I)           (the "robust" class)
    x | y = +1 ~ N(+mu, K^2 sigma^2 I)       (the "vulnerable" class, K > 1)

Class indices: everywhere in this module and in the tensors it returns, **class index 0 is
y = -1 and class index 1 is y = +1**. ``R_minus`` is the risk of misclassifying a y = -1 example,
``R_plus`` that of a y = +1 example (Eq. 13).

Derivation of Theorem 1 (done here from scratch, and checked against Monte Carlo in
``tests/test_theory.py``). A linear classifier ``sign(<w, x> + b)`` only sees the projection
z = <w, x> / ||w||. By the symmetry of the problem the best direction is w ∝ mu, i.e.
w = 1/sqrt(d) (1, ..., 1) (any other direction shrinks the mean gap by cos(w, mu) without changing
the noise). Then z | -1 ~ N(-m, sigma^2), z | +1 ~ N(m, K^2 sigma^2) with m = sqrt(d) eta. With
threshold t (predict +1 iff z >= t) and u = t / sigma, a = m / sigma::

    R_minus(t) = Phi(-(u + a)),    R_plus(t) = Phi((u - a) / K).

Setting d/dt [R_minus + R_plus] = 0 gives phi(u + a) = phi((u - a) / K) / K, i.e. the quadratic
(K^2 - 1) u^2 + 2 a (K^2 + 1) u + (K^2 - 1) a^2 - 2 K^2 log K = 0. Its discriminant is
K^2 (4 a^2 + 2 (K^2 - 1) log K); the root between -a and a (the other is the second crossing of the
two weighted densities, a maximum of the risk) is::

    u* = -A (K^2 + 1) / 2 + K sqrt(A^2 + q(K)),
    A = 2 a / (K^2 - 1) = 2 sqrt(d) eta / ((K^2 - 1) sigma),   q(K) = 2 log K / (K^2 - 1).

Substituting (a = A (K^2 - 1) / 2): u* + a = K sqrt(A^2 + q) - A and (u* - a) / K = sqrt(A^2 + q) - K A,
hence::

    R_minus = Pr{N(0,1) <= A - K sqrt(A^2 + q(K))}
    R_plus  = Pr{N(0,1) <= -K A + sqrt(A^2 + q(K))}

which is exactly the paper's Theorem 1 (the expressions belong to the classes the paper assigns
them to), with sigma = sigma_- (the smaller standard deviation). Since sqrt(A^2 + q) > A,
(A - K s) - (s - K A) = (1 + K)(A - s) < 0, so R_minus < R_plus for every K > 1.

Discrepancies in the paper's Appendix A (documented, the code implements the correct versions):

1. Theorem 1 says f_nat minimizes the natural risk over *all* f. The closed form is the risk of
   the best **linear** classifier (the hypothesis class of Eq. 12, as in Xu et al. 2021). Because
   the two classes have different covariances, the unrestricted Bayes classifier is *quadratic*
   (a ball around -c mu, c = (K^2+1)/(K^2-1)); its class risks are noncentral chi-square tail
   probabilities, implemented in :func:`bayes_quadratic_risks`. It has lower total risk and also
   R_minus < R_plus.
2. Proof 1 (Corollary 1) swaps the two class-wise risks: it writes R_minus = Pr(f = -1 | y = +1),
   which is R_plus by Eq. 13, and R_plus = Pr(f = +1 | y = -1), which is R_minus; it also equates
   the event f = -1 with <w, x> + b > 0, while Eq. 12 gives f = -1 iff <w, x> + b < 0. The
   conclusion (the class with larger variance has lower accuracy) is unaffected.
3. Definition A.1 calls sigma_-, sigma_+ "variances" but uses them as standard deviations
   (N(mu, sigma_+^2 I)); K is the ratio of standard deviations (the variances differ by K^2).
4. P^-_nat and P^+_nat in Proof 1 are class-wise *accuracies*, not a classifier's estimated
   class probability p_y(x). That a trained probabilistic classifier assigns lower p_y to the
   high-variance class is what :func:`~virkit.paper.theory_empirical.corollary_true_class_probability`
   measures with a logistic model (it is an empirical check, not implied by the proof).

Adversarial setting: under an L-inf adversary of radius eps, a linear score s = <w, x> + b moves by
at most eps ||w||_1, so robust class errors of any linear classifier are closed-form Gaussian
probabilities (:func:`linear_class_risks`), and adversarial training of a linear model is exact
(:func:`~virkit.paper.theory_empirical.train_linear` uses the worst-case perturbation
x' = x - eps * y * sign(w)).

This module holds the closed forms; sampling the mixture, Monte Carlo of the class risks and the trained
linear models are :mod:`virkit.paper.theory_empirical`'s.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from virkit.errors import VirkitError, check_range

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "q_of_k",
    "a_of",
    "class_risks",
    "optimal_linear_classifier",
    "linear_class_risks",
    "robust_class_risks",
    "bayes_quadratic_risks",
    "CLASS_NAMES",
]

CLASS_NAMES = ["y = -1 (σ)", "y = +1 (Kσ)"]


def _phi_cdf(z: float) -> float:
    """Standard normal CDF, accurate in the tails (via erfc)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def check_mixture(d: float, eta: float, sigma: float, K: float) -> None:
    """Raise :class:`VirkitError` unless (d, eta, sigma, K) is a mixture of Definition A.1 (K >= 1)."""
    if int(d) != d or d < 1:
        raise VirkitError(f"d={d} must be a positive integer")
    check_range("eta", eta, low=0.0, low_open=True)
    check_range("sigma", sigma, low=0.0, low_open=True)
    check_range("K", K, low=1.0, hint=" (class +1 is the high-variance class; K >= 1)")


def q_of_k(K: float) -> float:
    """q(K) = 2 log K / (K^2 - 1); its limit at K = 1 is 1."""
    if K == 1.0:
        return 1.0
    return 2.0 * math.log(K) / (K * K - 1.0)


def a_of(d: int, eta: float, sigma: float, K: float) -> float:
    """A = 2 / (K^2 - 1) * sqrt(d) eta / sigma  (infinite at K = 1)."""
    if K == 1.0:
        return math.inf
    return 2.0 / (K * K - 1.0) * math.sqrt(d) * eta / sigma


def class_risks(d: int, eta: float, sigma: float, K: float) -> tuple[float, float]:
    """Theorem 1: ``(R_minus, R_plus)`` of the risk-minimizing linear classifier.

    R_minus = Phi(A - K sqrt(A^2 + q(K))) is the error on y = -1 (std sigma) and
    R_plus = Phi(-K A + sqrt(A^2 + q(K))) the error on y = +1 (std K sigma); see the module
    docstring for the derivation and for why "optimal" means optimal among linear classifiers.
    At K = 1 both equal Phi(-sqrt(d) eta / sigma).
    """
    check_mixture(d, eta, sigma, K)
    if K == 1.0:
        r = _phi_cdf(-math.sqrt(d) * eta / sigma)
        return r, r
    A, q = a_of(d, eta, sigma, K), q_of_k(K)
    s = math.sqrt(A * A + q)
    return _phi_cdf(A - K * s), _phi_cdf(-K * A + s)


def optimal_linear_classifier(d: int, eta: float, sigma: float, K: float) -> tuple[np.ndarray, float]:
    """The linear classifier ``sign(<w, x> + b)`` that attains :func:`class_risks`.

    Returns unit-norm ``w = (1, ..., 1) / sqrt(d)`` and ``b = -sigma * u*`` with
    u* = -A (K^2 + 1) / 2 + K sqrt(A^2 + q(K)) (u* = 0 at K = 1). b can have either sign: for well separated
    classes (large A) the boundary moves towards the tight class -1 (b > 0); for heavily
    overlapping ones (small A) the wide class +1 spills over both sides and it moves the other way.
    """
    check_mixture(d, eta, sigma, K)
    w = np.full(d, 1.0 / math.sqrt(d))
    if K == 1.0:
        return w, 0.0
    A, q = a_of(d, eta, sigma, K), q_of_k(K)
    u = -A * (K * K + 1.0) / 2.0 + K * math.sqrt(A * A + q)
    return w, -sigma * u


def linear_class_risks(
    w: ArrayLike, b: float, d: int, eta: float, sigma: float, K: float, eps: float = 0.0
) -> tuple[float, float]:
    """Exact class-wise (robust) errors of ``sign(<w, x> + b)`` under an L-inf adversary of radius eps.

    The adversary moves the score by eps ||w||_1 against the label, so::

        R_minus = Pr(<w,x> + b + eps ||w||_1 >= 0 | y=-1) = Phi((b - <w,mu> + eps ||w||_1) / (sigma ||w||_2))
        R_plus  = Pr(<w,x> + b - eps ||w||_1 <  0 | y=+1) = Phi((eps ||w||_1 - b - <w,mu>) / (K sigma ||w||_2))

    eps = 0 gives the natural class risks.
    """
    check_mixture(d, eta, sigma, K)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape[0] != d:
        raise VirkitError(f"w has {w.shape[0]} entries, expected d={d}")
    n2 = float(np.linalg.norm(w))
    if n2 == 0.0:
        # constant classifier: sign(b) (b >= 0 predicts +1 everywhere)
        return (1.0, 0.0) if b >= 0 else (0.0, 1.0)
    wmu = float(w.sum()) * eta
    shift = eps * float(np.abs(w).sum())
    return (_phi_cdf((b - wmu + shift) / (sigma * n2)), _phi_cdf((shift - b - wmu) / (K * sigma * n2)))


def robust_class_risks(d: int, eta: float, sigma: float, K: float, eps: float) -> tuple[float, float]:
    """Class-wise robust risks of the best linear classifier against an L-inf adversary of radius eps.

    With w ∝ (1, ..., 1), the adversary shifts every coordinate of the mean by eps towards the other
    class, so this is Theorem 1 with eta replaced by eta - eps (for eps < eta; beyond that the
    class means coincide and no linear rule beats a coin flip; such eps raise an error).
    The disparity R_plus - R_minus grows with eps (Xu et al. 2021).
    """
    check_range(
        "eps",
        eps,
        low=0.0,
        high=eta,
        high_open=True,
        hint=" (at eps >= eta the adversary can move both class means onto each other)",
    )
    return class_risks(d, eta - eps, sigma, K)


def bayes_quadratic_risks(d: int, eta: float, sigma: float, K: float) -> tuple[float, float]:
    """Class-wise risks of the unrestricted Bayes-optimal classifier (equal priors).

    It predicts +1 iff log N(x; mu, K^2 sigma^2 I) >= log N(x; -mu, sigma^2 I), i.e.
    ``||x + c mu||^2 >= T`` with c = (K^2+1)/(K^2-1) and
    T = 2 d K^2 sigma^2 log K / (K^2-1) + 4 K^2 ||mu||^2 / (K^2-1)^2. Given y, ||x + c mu||^2 is a
    scaled noncentral chi-square with d degrees of freedom, so::

        R_minus = P(chi2'(d, (c-1)^2 ||mu||^2 / sigma^2) >= T / sigma^2)
        R_plus  = P(chi2'(d, (c+1)^2 ||mu||^2 / (K sigma)^2) < T / (K sigma)^2)
    """
    from scipy.stats import ncx2  # scipy is a dependency of the notebooks extra

    check_mixture(d, eta, sigma, K)
    if K == 1.0:
        return class_risks(d, eta, sigma, K)
    k2 = K * K
    mu2 = d * eta * eta
    c = (k2 + 1.0) / (k2 - 1.0)
    T = 2.0 * d * k2 * sigma**2 * math.log(K) / (k2 - 1.0) + 4.0 * k2 * mu2 / (k2 - 1.0) ** 2
    r_minus = float(ncx2.sf(T / sigma**2, d, (c - 1.0) ** 2 * mu2 / sigma**2))
    r_plus = float(ncx2.cdf(T / (k2 * sigma**2), d, (c + 1.0) ** 2 * mu2 / (k2 * sigma**2)))
    return r_minus, r_plus
