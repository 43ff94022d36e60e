"""AutoAttack, standard version (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks"), L-inf.

APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000 queries) run one after the other;
each attack only sees the points that every previous attack failed to break, and an example is
robust only if it survives all four (worst case per example).
"""
from __future__ import annotations

import torch

from .apgd import APGD, APGDTargeted
from .base import Attack, attack_rounds, correct_mask, project_linf, register
from .fab import FABTargeted
from .square import Square

__all__ = ["AutoAttack"]


@register("autoattack")
class AutoAttack(Attack):
    """AutoAttack standard (Croce & Hein, ICML 2020), L-inf, eps 8/255: APGD-CE (100 steps),
    APGD-T (100 steps, ``n_target_classes`` 9), FAB-T (100 steps, 9 targets), Square (5000
    queries, the raw p-schedule: the official code builds it with ``resc_schedule=False``), each on
    the points still robust after the previous ones; the same seed for all. ``n_target_classes``
    is capped at the number of classes minus one."""

    name = "AutoAttack (standard)"
    paper = "Croce & Hein, ICML 2020"

    def __init__(self, eps: float = 8 / 255, apgd_steps: int = 100, n_target_classes: int = 9,
                 fab_steps: int = 100, square_queries: int = 5000, version: str = "standard",
                 bounds=(0.0, 1.0), seed: int = 0):
        super().__init__(eps, bounds, seed)
        if version != "standard":
            raise ValueError("only AutoAttack version 'standard' is implemented")
        self.version = version
        self.apgd_steps, self.n_target_classes = int(apgd_steps), int(n_target_classes)
        self.fab_steps, self.square_queries = int(fab_steps), int(square_queries)
        self.square_resc_schedule = False   # as the official standard version (recorded in eval.json)

    def components(self) -> list[Attack]:
        kw = dict(eps=self.eps, bounds=self.bounds, seed=self.seed)
        return [APGD(steps=self.apgd_steps, loss="ce", **kw),
                APGDTargeted(steps=self.apgd_steps, n_target_classes=self.n_target_classes, **kw),
                FABTargeted(steps=self.fab_steps, n_target_classes=self.n_target_classes, **kw),
                Square(n_queries=self.square_queries, resc_schedule=self.square_resc_schedule, **kw)]

    def perturb(self, model, x, y):
        def run(idx, atk):   # one component on the points every previous component failed to break
            xs, ys = x[idx], y[idx]
            xa = project_linf(atk.perturb(model, xs, ys), xs, self.eps, self.bounds)
            with torch.no_grad():
                return xa, model(xa).argmax(1) != ys

        return attack_rounds(x, correct_mask(model, x, y), self.components(), run)
