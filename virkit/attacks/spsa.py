"""SPSA attack (Uesato, O'Donoghue, van den Oord & Kohli, ICML 2018, "Adversarial risk and the
dangers of evaluating against weak attacks"), L-inf, score-based black box.

The gradient of the margin ``z_y - max_{j!=y} z_j`` is estimated from logits only, by simultaneous
perturbation: ``g = mean_k (f(x + c v_k) - f(x - c v_k)) / (2 c) * v_k`` with Rademacher ``v_k``
(``1 / v = v`` for +-1 entries); Adam then lowers the margin and the iterate is projected onto the
eps-ball and the box after every step.
"""

from __future__ import annotations

import torch

from virkit.attacks.base import Attack, margin, on_correct, register

__all__ = ["SPSA"]


@register("spsa")
class SPSA(Attack):
    """SPSA (Uesato et al., ICML 2018), L-inf, black box (logits only). Paper setting (Sec. 5.4):
    100 iterations, perturbation size ``delta`` 0.001 for the finite differences, Adam learning
    rate 0.01, 256 samples (each two queries) per gradient estimate, eps 8/255. Every example draws
    its own random directions. Only correctly classified points are attacked, and a point stops
    once an iterate is misclassified (that iterate is returned). ``max_batch`` bounds the number
    of images per forward pass."""

    name = "SPSA"
    paper = "Uesato et al., ICML 2018"
    black_box = True

    def __init__(
        self,
        eps: float = 8 / 255,
        iterations: int = 100,
        delta: float = 0.001,
        lr: float = 0.01,
        samples: int = 256,
        max_batch: int = 4096,
        check_every: int = 1,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
    ):
        super().__init__(eps, bounds, seed)
        self.iterations, self.delta, self.lr = int(iterations), float(delta), float(lr)
        self.samples, self.max_batch, self.check_every = int(samples), int(max_batch), max(int(check_every), 1)
        self.name = f"SPSA ({self.iterations} it, {self.samples} samples)"

    @torch.no_grad()
    def _grad(self, model, x, y, gen):
        """SPSA estimate of the gradient of the margin at ``x`` (B x ...)."""
        b = x.shape[0]
        per = max(1, self.max_batch // (2 * b))
        g = torch.zeros_like(x)
        done = 0
        while done < self.samples:
            k = min(per, self.samples - done)
            v = torch.randint(0, 2, (b, k) + x.shape[1:], generator=gen, device=x.device).to(x.dtype) * 2 - 1
            xv = x.unsqueeze(1) + self.delta * v
            xm = x.unsqueeze(1) - self.delta * v
            batch = torch.cat((xv, xm)).flatten(0, 1)
            yy = y.repeat_interleave(k).repeat(2)
            f = margin(model(batch), yy).view(2, b, k)
            df = (f[0] - f[1]) / (2 * self.delta)
            g += (df.view(b, k, *[1] * (x.dim() - 1)) * v).sum(dim=1)
            done += k
        return g / self.samples

    @torch.no_grad()
    def _run(self, model, x, y, gen):
        n = x.shape[0]
        view = (-1,) + (1,) * (x.dim() - 1)
        delta = torch.zeros_like(x)
        m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        out = x.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        active = torch.arange(n, device=x.device)
        for t in range(1, self.iterations + 1):
            xa, ya, da = x[active], y[active], delta[active]
            g = self._grad(model, xa + da, ya, gen)
            m1a = b1 * m1[active] + (1 - b1) * g
            m2a = b2 * m2[active] + (1 - b2) * g * g
            step = self.lr * (m1a / (1 - b1**t)) / ((m2a / (1 - b2**t)).sqrt() + adam_eps)
            da = (da - step).clamp(-self.eps, self.eps)
            if self.bounds is not None:
                da = (xa + da).clamp(*self.bounds) - xa
            delta[active], m1[active], m2[active] = da, m1a, m2a
            mis = model(xa + da).argmax(1) != ya
            new = mis & ~fooled[active]
            out[active] = torch.where(new.view(view), xa + da, out[active])
            fooled[active] |= mis
            if t % self.check_every == 0:
                active = (~fooled).nonzero().squeeze(1)
                if active.numel() == 0:
                    break
        return torch.where(fooled.view(view), out, x + delta)

    def perturb(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.generator(x.device)
        return on_correct(model, x, y, lambda xs, ys: self._run(model, xs, ys, gen))
