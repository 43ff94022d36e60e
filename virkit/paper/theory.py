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
   high-variance class is what :func:`corollary_true_class_probability` measures with a logistic
   model (it is an empirical check, not implied by the proof).

Adversarial setting: under an L-inf adversary of radius eps, a linear score s = <w, x> + b moves by
at most eps ||w||_1, so robust class errors of any linear classifier are closed-form Gaussian
probabilities (:func:`linear_class_risks`), and adversarial training of a linear model is exact
(:func:`train_linear` uses the worst-case perturbation x' = x - eps * y * sign(w)).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from virkit.errors import VirkitError, check_range
from virkit.reweighting import vir_weights

__all__ = [
    "q_of_k",
    "a_of",
    "class_risks",
    "optimal_linear_classifier",
    "linear_class_risks",
    "robust_class_risks",
    "bayes_quadratic_risks",
    "sample_gaussian_mixture",
    "monte_carlo_linear_risks",
    "monte_carlo_bayes_risks",
    "LinearResult",
    "train_linear",
    "linear_scores",
    "linear_true_class_probability",
    "corollary_true_class_probability",
    "robust_error_curves",
    "CLASS_NAMES",
]

CLASS_NAMES = ["y = -1 (σ)", "y = +1 (Kσ)"]


@contextlib.contextmanager
def _one_thread_cm():
    """Run small tensor code on one intra-op thread: for (n x 10) tensors extra threads only add
    synchronisation, which costs 10-100x when the CPU cores are busy with other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _single_threaded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _one_thread_cm():
            return fn(*args, **kwargs)

    return wrapper


def _phi_cdf(z: float) -> float:
    """Standard normal CDF, accurate in the tails (via erfc)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _check(d, eta, sigma, K):
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
    _check(d, eta, sigma, K)
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
    _check(d, eta, sigma, K)
    w = np.full(d, 1.0 / math.sqrt(d))
    if K == 1.0:
        return w, 0.0
    A, q = a_of(d, eta, sigma, K), q_of_k(K)
    u = -A * (K * K + 1.0) / 2.0 + K * math.sqrt(A * A + q)
    return w, -sigma * u


def linear_class_risks(
    w, b: float, d: int, eta: float, sigma: float, K: float, eps: float = 0.0
) -> tuple[float, float]:
    """Exact class-wise (robust) errors of ``sign(<w, x> + b)`` under an L-inf adversary of radius eps.

    The adversary moves the score by eps ||w||_1 against the label, so::

        R_minus = Pr(<w,x> + b + eps ||w||_1 >= 0 | y=-1) = Phi((b - <w,mu> + eps ||w||_1) / (sigma ||w||_2))
        R_plus  = Pr(<w,x> + b - eps ||w||_1 <  0 | y=+1) = Phi((eps ||w||_1 - b - <w,mu>) / (K sigma ||w||_2))

    eps = 0 gives the natural class risks.
    """
    _check(d, eta, sigma, K)
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

    _check(d, eta, sigma, K)
    if K == 1.0:
        return class_risks(d, eta, sigma, K)
    k2 = K * K
    mu2 = d * eta * eta
    c = (k2 + 1.0) / (k2 - 1.0)
    T = 2.0 * d * k2 * sigma**2 * math.log(K) / (k2 - 1.0) + 4.0 * k2 * mu2 / (k2 - 1.0) ** 2
    r_minus = float(ncx2.sf(T / sigma**2, d, (c - 1.0) ** 2 * mu2 / sigma**2))
    r_plus = float(ncx2.cdf(T / (k2 * sigma**2), d, (c + 1.0) ** 2 * mu2 / (k2 * sigma**2)))
    return r_minus, r_plus


@_single_threaded
def sample_gaussian_mixture(
    n: int, d: int, eta: float, sigma: float, K: float, seed: int = 0, balanced: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` examples: ``x`` float32 (n, d), ``y`` int64 class index (0 is y=-1, 1 is y=+1).

    ``balanced=True`` gives exactly n//2 (+1 for odd n) examples per class in random order.
    """
    _check(d, eta, sigma, K)
    g = torch.Generator().manual_seed(int(seed))
    if balanced:
        y = torch.cat([torch.zeros(n - n // 2, dtype=torch.int64), torch.ones(n // 2, dtype=torch.int64)])
        y = y[torch.randperm(n, generator=g)]
    else:
        y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).to(torch.float64).unsqueeze(1)
    scale = torch.where(y == 1, K * sigma, sigma).to(torch.float64).unsqueeze(1)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = sign * eta + scale * z
    return x.float(), y


@_single_threaded
def _mc(pred_fn, n: int, d, eta, sigma, K, seed, chunk=200_000):
    """Monte-Carlo class-wise error rates. ``pred_fn(x)`` returns an (m, 2) tensor of predicted class
    indices: column 0 is the prediction used if the example is a y=-1 example, column 1 if it is a
    y=+1 example (so an adversary may act against the label). Returns (risks, standard errors)."""
    errs = np.zeros(2)
    counts = np.zeros(2)
    done = 0
    i = 0
    while done < n:
        m = min(chunk, n - done)
        x, y = sample_gaussian_mixture(m, d, eta, sigma, K, seed=seed * 1000 + i)
        p = pred_fn(x.double())
        for c in (0, 1):
            mask = y == c
            counts[c] += int(mask.sum())
            errs[c] += int((p[mask, c] != c).sum())
        done += m
        i += 1
    r = errs / counts
    se = np.sqrt(r * (1 - r) / counts)
    return (float(r[0]), float(r[1])), (float(se[0]), float(se[1]))


def monte_carlo_linear_risks(
    w, b: float, d: int, eta: float, sigma: float, K: float, n: int = 1_000_000, seed: int = 0, eps: float = 0.0
):
    """Monte-Carlo class risks of ``sign(<w,x> + b)`` under the worst-case L-inf perturbation of
    radius eps (which moves the score by eps ||w||_1 against the label).

    Returns ``((R_minus, R_plus), (stderr_minus, stderr_plus))``.
    """
    w_t = torch.as_tensor(np.asarray(w, dtype=np.float64))
    l1 = float(w_t.abs().sum())

    def pred_fn(x):
        s = x @ w_t + b
        return torch.stack([(s + eps * l1 >= 0).long(), (s - eps * l1 >= 0).long()], 1)

    return _mc(pred_fn, n, d, eta, sigma, K, seed)


def monte_carlo_bayes_risks(d: int, eta: float, sigma: float, K: float, n: int = 1_000_000, seed: int = 0):
    """Monte-Carlo class risks of the quadratic Bayes classifier (compares log-densities directly,
    independently of the closed form used in :func:`bayes_quadratic_risks`)."""
    mu = torch.full((d,), float(eta), dtype=torch.float64)

    def pred_fn(x):
        lp_minus = -((x + mu) ** 2).sum(1) / (2 * sigma**2) - d * math.log(sigma)
        lp_plus = -((x - mu) ** 2).sum(1) / (2 * (K * sigma) ** 2) - d * math.log(K * sigma)
        p = (lp_plus >= lp_minus).long()
        return torch.stack([p, p], 1)

    return _mc(pred_fn, n, d, eta, sigma, K, seed)


# ----------------------------------------------------------------------------------------------
# Training a linear (logistic) model, naturally or adversarially, with or without VIR weights.
# ----------------------------------------------------------------------------------------------


@dataclass
class LinearResult:
    """A trained linear model ``s(x) = <w, x> + b``; p(y=+1 | x) = sigmoid(s)."""

    w: np.ndarray
    b: float
    eps: float
    reweight: str
    history: list = field(default_factory=list)  # per logged step: loss, weight_sum_per_class

    def class_risks(self, d, eta, sigma, K, eps: float = 0.0):
        return linear_class_risks(self.w, self.b, d, eta, sigma, K, eps)


def linear_scores(w, b, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ torch.as_tensor(np.asarray(w, dtype=np.float64)) + float(b)


def _two_class_logits(s: torch.Tensor) -> torch.Tensor:
    """Logits (n, 2) whose softmax is (1 - sigmoid(s), sigmoid(s)), for the shared VIR code."""
    return torch.stack([torch.zeros_like(s), s], dim=1)


@_single_threaded
def train_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 0.0,
    reweight: str = "none",
    alpha: float = 7.0,
    gamma: float = 10.0,
    beta: float = 0.007,
    steps: int = 400,
    lr: float = 0.05,
    burn_in: float = 0.5,
    weight_decay: float = 0.0,
    seed: int = 0,
    log_every: int = 20,
) -> LinearResult:
    """Train a logistic linear classifier on (x, y) by full-batch Adam; CPU, well under a second.

    * ``eps > 0``: adversarial training with the exact worst-case L-inf perturbation of a linear
      score, x' = x - eps * (2y - 1) * sign(w) (the inner maximization of AT is closed-form).
    * ``reweight='vir'``: after ``burn_in`` (fraction of steps) each example's loss is weighted by
      the VIR weight w = alpha exp(-gamma p_y(x)) KL(p(x) || p(x')) + beta (Eq. 7), computed with
      :func:`virkit.reweighting.vir_weights` on the two-class logits (0, s). With eps = 0 the
      discrepancy term is zero, so VIR reduces to the constant beta (no reweighting); use eps > 0.
      Weights are rescaled to mean 1 over the training set: the minimizer of a weighted convex loss
      depends only on relative weights, and the rescaling keeps the step size comparable with the
      unweighted run. ``reweight='sv'`` uses S_v alone (ablation).
    """
    if reweight not in ("none", "vir", "sv"):
        raise VirkitError(f"reweight must be 'none', 'vir' or 'sv', got {reweight!r}")
    check_range("eps", eps, low=0.0)
    torch.manual_seed(int(seed))
    x = x.double()
    y = y.long()
    d = x.shape[1]
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    # plain Adam (Kingma & Ba 2015), written out: torch.optim imports torch._dynamo (seconds)
    params = [w, b]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    b1, b2, adam_eps = 0.9, 0.999, 1e-8
    sign_y = (2 * y - 1).double()
    target = y.double()
    history = []
    start = int(round(burn_in * steps))
    for step in range(steps):
        s_nat = x @ w + b
        if eps > 0:
            x_adv = x - eps * sign_y.unsqueeze(1) * torch.sign(w.detach()).unsqueeze(0)
            s_adv = x_adv @ w + b
        else:
            s_adv = s_nat
        per_ex = F.binary_cross_entropy_with_logits(s_adv, target, reduction="none")
        active = reweight != "none" and step >= start
        if active:
            ln, la = _two_class_logits(s_nat.detach()), _two_class_logits(s_adv.detach())
            comp = "both" if reweight == "vir" else "sv"
            wt = vir_weights(ln.float(), la.float(), y, alpha, gamma, beta, components=comp).double()
            wt = wt / wt.mean().clamp_min(1e-12)
        else:
            wt = torch.ones_like(per_ex)
        loss = (wt * per_ex).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                g = g + weight_decay * p
                m1[i].mul_(b1).add_(g, alpha=1 - b1)
                m2[i].mul_(b2).addcmul_(g, g, value=1 - b2)
                mhat = m1[i] / (1 - b1 ** (step + 1))
                vhat = m2[i] / (1 - b2 ** (step + 1))
                p -= lr * mhat / (vhat.sqrt() + adam_eps)
        if step % log_every == 0 or step == steps - 1:
            history.append(
                {
                    "step": step,
                    "loss": float(loss.detach()),
                    "reweighting_active": bool(active),
                    "weight_sum_per_class": [float(wt[y == c].sum()) for c in (0, 1)],
                }
            )
    return LinearResult(w.detach().numpy().copy(), float(b.detach()), float(eps), reweight, history)


def linear_true_class_probability(w, b, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p_y(x) of the logistic model: sigmoid(s) for y = +1, 1 - sigmoid(s) for y = -1."""
    p_plus = torch.sigmoid(linear_scores(w, b, x))
    return torch.where(y == 1, p_plus, 1.0 - p_plus)


@_single_threaded
def corollary_true_class_probability(
    d: int = 10,
    eta: float = 0.5,
    sigma: float = 1.0,
    K: float = 2.0,
    n_train: int = 4000,
    n_test: int = 20000,
    seed: int = 0,
    most_vulnerable: float = 0.1,
) -> dict:
    """Corollary 1, measured: train a logistic model naturally and look at the true-class
    probability p_y(x) it assigns to fresh test data of each class.

    Returns a dict with, per class (index 0: y=-1, 1: y=+1): ``mean_p_y``, ``median_p_y``,
    ``q10_p_y`` (10th percentile), ``test_error`` (= share of p_y < 1/2); ``vulnerable_share``:
    the share of class +1 among the ``most_vulnerable`` fraction of test examples with the
    lowest p_y (0.5 would mean p_y carries no class information); and ``p_y``, ``y``, ``model``.

    What it shows (defaults, seeds 0-2): the high-variance class has a much heavier low-p_y tail
    (10th percentile about 0.25-0.29 vs 0.47-0.51 for K = 2) and about twice the error, so ranking
    examples by p_y (Definition 4.1) picks out mostly class +1 (``vulnerable_share`` 0.67-0.75 at
    K = 2, 0.88-0.93 at K = 3). The *mean* p_y of the two classes is about equal (its sign changes
    with the seed) and the *median* is higher for class +1: the wide class also has many far-out,
    very confident examples. So Corollary 1 holds for the low tail that reweighting acts on, not for
    every summary of p_y; the paper's proof only concerns class accuracies.
    """
    xtr, ytr = sample_gaussian_mixture(n_train, d, eta, sigma, K, seed=seed)
    xte, yte = sample_gaussian_mixture(n_test, d, eta, sigma, K, seed=seed + 1)
    model = train_linear(xtr, ytr, seed=seed)
    p_y = linear_true_class_probability(model.w, model.b, xte, yte)
    pred = (linear_scores(model.w, model.b, xte) >= 0).long()
    k = max(1, int(round(most_vulnerable * len(p_y))))
    lowest = torch.argsort(p_y)[:k]
    return {
        "mean_p_y": [float(p_y[yte == c].mean()) for c in (0, 1)],
        "median_p_y": [float(p_y[yte == c].median()) for c in (0, 1)],
        "q10_p_y": [float(p_y[yte == c].quantile(0.1)) for c in (0, 1)],
        "test_error": [float((pred[yte == c] != c).double().mean()) for c in (0, 1)],
        "vulnerable_share": float((yte[lowest] == 1).double().mean()),
        "p_y": p_y.float(),
        "y": yte,
        "model": model,
    }


def robust_error_curves(models: dict, eps_grid, d: int, eta: float, sigma: float, K: float) -> dict:
    """Exact class-wise robust errors of each trained linear model over ``eps_grid``.

    ``models`` maps a label to a :class:`LinearResult` (or a ``(w, b)`` pair). Returns
    ``{label: np.ndarray of shape (len(eps_grid), 2)}`` with columns (R_minus, R_plus).
    """
    out = {}
    for name, m in models.items():
        w, b = (m.w, m.b) if isinstance(m, LinearResult) else m
        out[name] = np.array([linear_class_risks(w, b, d, eta, sigma, K, float(e)) for e in eps_grid])
    return out
