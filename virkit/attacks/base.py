"""The one call signature every attack in virkit shares, plus helpers they all use.

An attack is an object with ``attack(model, x, y) -> x_adv``:

* ``model`` maps images in [0, 1] to logits (normalization lives inside the model);
* ``x`` is a float batch in [0, 1] (shape B x C x H x W), ``y`` the int64 labels;
* ``x_adv`` has the shape of ``x``, lies in the L-inf ball of radius ``eps`` around ``x`` and in
  the box ``bounds`` (checked again by :func:`virkit.evaluate.check_adversarial`).

Attacks put the model in eval mode while they run and restore its previous mode afterwards, and
take gradients with respect to the input only (``torch.autograd.grad``), so parameter ``.grad``
fields are never touched.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["Attack", "eval_mode", "project_linf", "ATTACKS", "register"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration of the block, then restore every module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds=(0.0, 1.0)) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps around x, then onto the box ``bounds``."""
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    if bounds is not None:
        x_adv = x_adv.clamp(bounds[0], bounds[1])
    return x_adv


class Attack:
    """Base class. Subclasses set ``name``, ``paper``, ``norm`` and implement :meth:`perturb`.

    Parameters common to all: ``eps`` (L-inf radius, default 8/255), ``bounds`` (the valid input
    box, default (0, 1)), ``seed`` (attacks that draw random numbers use a generator seeded with
    it, so the same seed gives the same adversarial examples on the same device).
    """

    name: str = "attack"
    paper: str = ""
    norm: str = "Linf"
    #: True when robust accuracy of this attack can be computed on the still-robust points only
    #: (every attack that returns one example per input and keeps no state across examples).
    black_box: bool = False

    def __init__(self, eps: float = 8 / 255, bounds=(0.0, 1.0), seed: int = 0):
        self.eps = float(eps)
        self.bounds = bounds
        self.seed = int(seed)

    def generator(self, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            x_adv = self.perturb(model, x.detach(), y.detach())
        return project_linf(x_adv.detach(), x, self.eps, self.bounds)

    def describe(self) -> dict:
        """Settings of this attack as a JSON-serializable dict (written into eval.json)."""
        out = {"name": self.name, "norm": self.norm, "paper": self.paper}
        for k, v in vars(self).items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                out[k] = v
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.describe().items() if k not in ('name', 'paper'))})"


#: name -> factory(**overrides) -> Attack. Filled by ``@register`` in the attack modules.
ATTACKS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        ATTACKS[name] = cls
        cls.registry_name = name
        return cls
    return deco
