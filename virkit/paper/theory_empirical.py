"""Appendix A of the paper, measured: samples of the two-class Gaussian mixture, Monte Carlo of the
class-wise risks and trained linear (logistic) classifiers, naturally or adversarially, with or without
VIR weights.

The setting, the class indices (**class index 0 is y = -1, class index 1 is y = +1**) and the closed
forms these are checked against are :mod:`virkit.paper.theory`'s (``tests/test_theory.py`` compares
the two); notebook 02 draws both.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from virkit.errors import VirkitError, check_range
from virkit.paper.theory import check_mixture, linear_class_risks
from virkit.reweighting import vir_weights

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "sample_gaussian_mixture",
    "monte_carlo_linear_risks",
    "monte_carlo_bayes_risks",
    "LinearResult",
    "train_linear",
    "linear_scores",
    "linear_true_class_probability",
    "corollary_true_class_probability",
    "robust_error_curves",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextlib.contextmanager
def _one_thread_cm() -> Iterator[None]:
    """Run small tensor code on one intra-op thread: for (n x 10) tensors extra threads only add
    synchronisation, which costs 10-100x when the CPU cores are busy with other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _single_threaded(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _one_thread_cm():
            return fn(*args, **kwargs)

    return wrapper


@_single_threaded
def sample_gaussian_mixture(
    n: int, d: int, eta: float, sigma: float, K: float, seed: int = 0, balanced: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` examples: ``x`` float32 (n, d), ``y`` int64 class index (0 is y=-1, 1 is y=+1).

    ``balanced=True`` gives exactly n//2 (+1 for odd n) examples per class in random order.
    """
    check_mixture(d, eta, sigma, K)
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
    w: ArrayLike,
    b: float,
    d: int,
    eta: float,
    sigma: float,
    K: float,
    n: int = 1_000_000,
    seed: int = 0,
    eps: float = 0.0,
) -> tuple[tuple[float, float], tuple[float, float]]:
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


def monte_carlo_bayes_risks(
    d: int, eta: float, sigma: float, K: float, n: int = 1_000_000, seed: int = 0
) -> tuple[tuple[float, float], tuple[float, float]]:
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

    def class_risks(self, d: int, eta: float, sigma: float, K: float, eps: float = 0.0) -> tuple[float, float]:
        return linear_class_risks(self.w, self.b, d, eta, sigma, K, eps)


def linear_scores(w: ArrayLike, b: float, x: torch.Tensor) -> torch.Tensor:
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


def linear_true_class_probability(w: ArrayLike, b: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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


def robust_error_curves(models: dict, eps_grid: Iterable[float], d: int, eta: float, sigma: float, K: float) -> dict:
    """Exact class-wise robust errors of each trained linear model over ``eps_grid``.

    ``models`` maps a label to a :class:`LinearResult` (or a ``(w, b)`` pair). Returns
    ``{label: np.ndarray of shape (len(eps_grid), 2)}`` with columns (R_minus, R_plus).
    """
    out = {}
    for name, m in models.items():
        w, b = (m.w, m.b) if isinstance(m, LinearResult) else m
        out[name] = np.array([linear_class_risks(w, b, d, eta, sigma, K, float(e)) for e in eps_grid])
    return out
