"""AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), L-inf and L2, in the versions the official code defines.

=============  ==========================================================================================
``standard``   APGD-CE (1 restart), APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries)
``plus``       APGD-CE (5 restarts), APGD-DLR (5 restarts), FAB (untargeted, 5 restarts), Square (5000),
               APGD-T (9 targets), FAB-T (9 targets)
``rand``       APGD-CE and APGD-DLR (1 restart each) with EOT over 20 draws (``eot_iter=20``), for
               randomized models
``custom``     the components listed in ``components``, with the settings the official class gives
               them before a version is chosen: APGD 5 restarts, FAB 5 restarts, FAB-T 1 restart per
               target, APGD-T / FAB-T 9 targets, Square 5000 queries (what ``plus`` uses)
=============  ==========================================================================================

APGD and FAB run 100 steps; Square uses the raw p-schedule (``resc_schedule=False``, as the official
code builds it). Sequential mode (the official ``run_standard_evaluation``): each component only
sees the points that every previous one failed to break, and the returned point of an example is
the one of the first component that broke it. Individual mode (``individual=True``, the official
``run_standard_evaluation_individual``): every component runs on every correctly classified point;
the returned point is the first breaking component's in run order (the worst case).

After each call ``details`` holds, per component, the robust flags of the batch: in sequential
mode robust after that component and every earlier one (the official running accuracy), in
individual mode robust under that component alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TypedDict

import torch

from virkit.attacks.apgd import APGD
from virkit.attacks.apgd_targeted import APGDTargeted
from virkit.attacks.base import Attack, correct_mask, register
from virkit.attacks.fab import FAB, FABTargeted
from virkit.attacks.square import Square

__all__ = ["AutoAttack", "AA_VERSIONS", "AA_COMPONENTS", "component_list"]

AA_COMPONENTS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
AA_VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


def component_list(components: str | Iterable[str] | None) -> tuple[str, ...]:
    if isinstance(components, str):
        components = [c.strip() for c in components.split(",") if c.strip()]
    out = tuple(dict.fromkeys(components or ()))
    bad = [c for c in out if c not in AA_COMPONENTS]
    if bad or not out:
        raise ValueError(
            f"unknown AutoAttack component(s) {', '.join(bad) or '(none given)'}; valid: {', '.join(AA_COMPONENTS)}"
        )
    return out


class _Common(TypedDict):
    """The settings every component takes from the ensemble (:meth:`AutoAttack.build`)."""

    eps: float
    bounds: tuple[float, float] | None
    seed: int
    norm: str


class _Levers(TypedDict):
    """The speed levers the APGD and FAB components take (:meth:`AutoAttack.build`)."""

    early_stop: bool
    compact_every: int | None


@register("autoattack")
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein, ICML 2020), L-inf (eps 8/255) or L2 (eps 0.5), ``version``
    ``standard`` (default), ``plus``, ``rand`` or ``custom`` (with ``components``), sequential or
    ``individual``. ``apgd_steps``, ``fab_steps``, ``square_queries``, ``n_target_classes`` (capped
    at the number of classes minus one) and the restarts replace the version's budgets; the same
    seed for every component. ``square_resc_schedule=True`` rescales Square's p-schedule to its
    budget (the standalone class's default) instead of the official AutoAttack's raw schedule.

    Speed levers (docs/EVALUATION.md, "AutoAttack's speed levers"), none changes an attack's
    definition; ``None`` takes the value of ``fast`` (default True; ``fast=False``: the code path
    before issue 14): ``early_stop`` (active-set compaction in APGD, FAB and Square),
    ``batch_targets`` (APGD-T / FAB-T: all targets of the still-robust points in one batch, or that
    many at a time for an int), ``compact_every`` (steps between looks for finished points; default
    1 on the CPU, 8 elsewhere), ``reuse_logits`` (clean logits once for the correct mask and every
    component's targets), ``inference_mode`` (Square), ``channels_last`` (NHWC inputs; ``None``: on
    for 4-D inputs on the CPU). After a call ``timings`` holds the seconds of each component."""

    name = "AutoAttack (standard)"
    paper = "Croce & Hein, ICML 2020"
    norms = ("Linf", "L2")
    # settings added after the first eval.json files: hidden while they hold the standard values
    quiet_defaults = {
        "individual": False,
        "custom_components": None,
        "apgd_restarts": 1,
        "fab_restarts": 1,
        "eot_iter": 1,
        "early_stop": True,
        "batch_targets": True,
        "compact_every": None,
        "reuse_logits": True,
        "inference_mode": True,
        "channels_last": None,
    }

    def __init__(
        self,
        eps: float = 8 / 255,
        apgd_steps: int = 100,
        n_target_classes: int = 9,
        fab_steps: int = 100,
        square_queries: int = 5000,
        version: str = "standard",
        components: str | Iterable[str] | None = None,
        individual: bool = False,
        apgd_restarts: int | None = None,
        fab_restarts: int | None = None,
        eot_iter: int | None = None,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
        norm: str = "Linf",
        fast: bool = True,
        early_stop: bool | None = None,
        batch_targets: bool | int | None = None,
        compact_every: int | None = None,
        reuse_logits: bool | None = None,
        inference_mode: bool | None = None,
        channels_last: bool | None = None,
        square_resc_schedule: bool = False,
    ):
        super().__init__(eps, bounds, seed, norm)
        # the speed levers (docs/EVALUATION.md, "AutoAttack's speed levers"); None: the value of ``fast``
        fast = bool(fast)
        self.early_stop = fast if early_stop is None else bool(early_stop)
        self.batch_targets = (
            fast
            if batch_targets is None
            else (batch_targets if isinstance(batch_targets, bool) else int(batch_targets))
        )
        self.compact_every = None if compact_every is None else int(compact_every)
        self.reuse_logits = fast if reuse_logits is None else bool(reuse_logits)
        self.inference_mode = fast if inference_mode is None else bool(inference_mode)
        # None: on where measured faster with the same flags (CPU, 4-D images), when ``fast``
        self.channels_last = None if channels_last is None and fast else bool(channels_last)
        if version not in (*AA_VERSIONS, "custom"):
            raise ValueError(f"unknown AutoAttack version {version!r}; valid: {', '.join(AA_VERSIONS)}, custom")
        if components is not None and version != "custom" and component_list(components) != AA_VERSIONS[version]:
            version = "custom"
        if version == "custom" and components is None:
            raise ValueError("AutoAttack version 'custom' needs a list of components, e.g. apgd-ce,square")
        self.version = version
        self.custom_components = ",".join(component_list(components)) if version == "custom" else None
        self.individual = bool(individual)
        self.apgd_steps, self.n_target_classes = int(apgd_steps), int(n_target_classes)
        self.fab_steps, self.square_queries = int(fab_steps), int(square_queries)
        several = version in ("plus", "custom")
        self.apgd_restarts = int(apgd_restarts) if apgd_restarts is not None else (5 if several else 1)
        self.fab_restarts = int(fab_restarts) if fab_restarts is not None else (5 if several else 1)
        self.eot_iter = int(eot_iter) if eot_iter is not None else (20 if version == "rand" else 1)
        # False: the raw p-schedule, as the official code builds Square (recorded in eval.json); True:
        # rescaled to the budget (virkit's AutoAttack before issue 13; kept to measure the difference)
        self.square_resc_schedule = bool(square_resc_schedule)
        self.name = f"AutoAttack ({version}{', individual' if self.individual else ''}" + (
            f", {norm})" if norm != "Linf" else ")"
        )

    def component_names(self) -> tuple[str, ...]:
        return component_list(self.custom_components) if self.version == "custom" else AA_VERSIONS[self.version]

    def build(self, name: str) -> Attack:
        """The component ``name`` with this version's settings."""
        kw = _Common(eps=self.eps, bounds=self.bounds, seed=self.seed, norm=self.norm)
        lev = _Levers(early_stop=self.early_stop, compact_every=self.compact_every)
        if name in ("apgd-ce", "apgd-dlr"):
            return APGD(
                steps=self.apgd_steps, loss=name[5:], n_restarts=self.apgd_restarts, eot_iter=self.eot_iter, **lev, **kw
            )
        if name == "apgd-t":
            return APGDTargeted(
                steps=self.apgd_steps,
                n_target_classes=self.n_target_classes,
                eot_iter=self.eot_iter,
                batch_targets=self.batch_targets,
                **lev,
                **kw,
            )
        if name == "fab":
            return FAB(steps=self.fab_steps, n_restarts=self.fab_restarts, **lev, **kw)
        if name == "fab-t":
            return FABTargeted(
                steps=self.fab_steps,
                n_target_classes=self.n_target_classes,
                batch_targets=self.batch_targets,
                **lev,
                **kw,
            )
        return Square(
            n_queries=self.square_queries,
            resc_schedule=self.square_resc_schedule,
            early_stop=self.early_stop,
            inference_mode=self.inference_mode,
            **kw,
        )

    def components(self) -> list[Attack]:
        return [self.build(n) for n in self.component_names()]

    def perturb(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cl = self.channels_last if self.channels_last is not None else x.device.type == "cpu"
        if cl and x.dim() == 4:
            model = _ChannelsLast(model)
        if self.reuse_logits:
            with torch.no_grad():
                clean_logits = model(x).float()  # once: correct mask and every component's targets
            robust0 = clean_logits.argmax(1) == y
        else:
            clean_logits, robust0 = None, correct_mask(model, x, y)
        robust, x_adv = robust0.clone(), x.clone()
        broken = ~robust0
        view = (-1,) + (1,) * (x.dim() - 1)
        flags: dict[str, torch.Tensor] = {}
        self.timings = {}
        for name in self.component_names():
            t0 = time.perf_counter()
            # sequential: only the points every earlier component failed to break; individual: all
            idx = (robust0 if self.individual else robust).nonzero().squeeze(1)
            ok = (robust0 if self.individual else robust).clone()
            if idx.numel():
                atk = self.build(name)
                xs, ys = x[idx], y[idx]
                extra = {"clean_logits": clean_logits[idx]} if clean_logits is not None else {}
                xa = atk.project(atk.perturb(model, xs, ys, **extra), xs)
                with torch.no_grad():
                    fooled = model(xa).argmax(1) != ys
                first = fooled & ~broken[idx]  # the first component (in run order) to break it
                x_adv[idx] = torch.where(first.view(view), xa, x_adv[idx])
                broken[idx] |= fooled
                ok[idx] = ~fooled
                if not self.individual:
                    robust = ok
            flags[name] = ok.clone()
            self.timings[name] = time.perf_counter() - t0
        self.details = {"mode": "individual" if self.individual else "sequential", "components": flags}
        return x_adv


class _ChannelsLast(torch.nn.Module):
    """The model fed channels-last (NHWC) images, so that its convolutions take their NHWC kernels;
    the model's own parameters and memory format are left as they are (``channels_last=True``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model(z.contiguous(memory_format=torch.channels_last))
