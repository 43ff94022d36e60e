"""An attack's batches and their records. :func:`virkit.evaluation.evaluate_model` attacks the naturally
correct examples in batches (split order; batch ``i`` on rank ``i mod W`` under torchrun). Each batch is
attacked, its adversarial examples checked (:mod:`virkit.evaluation.checks`) and scored, into a record
(:func:`attack_batch`), kept in memory or in the attack's state file
(:class:`virkit.evaluation.document.AttackState`): ``pred`` (the predictions on the adversarial examples),
``seconds``; for AutoAttack ``components`` (each component's robust flags), ``mode`` and
``component_seconds``; for images ``uint8_pred`` and ``uint8_dist`` (the prediction on the adversarial
image rounded to 8 bits, and its distance to the input); with ``save_adv`` the examples, ``x_adv``.
:func:`merge_records` turns an attack's records into its eval.json entry and the tensors of its
``save_adv`` file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from virkit.attacks import Attack, per_example_norm
from virkit.evaluation.checks import (
    L2_TOLERANCE,
    TOLERANCE,
    UINT8_SLACK,
    AdversarialCheckError,
    check_adversarial,
    quantize,
)
from virkit.evaluation.document import flags_summary, summarize

__all__ = ["attack_batch", "merge_records"]


def attack_batch(
    atk: Attack,
    name: str,
    attack_model: nn.Module,
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float] | None,
    images: bool,
    keep_adv: bool,
) -> dict:
    """The record of one batch (``xb``, ``yb``, on the evaluation's device): attacked by ``atk`` calling
    ``attack_model``, checked (:func:`check_adversarial`), scored by the eager fp32 ``model``; with
    ``images`` also the 8-bit copies, with ``keep_adv`` the adversarial examples."""
    t0 = time.perf_counter()
    xa = atk(attack_model, xb, yb)
    check_adversarial(xa, xb, eps, bounds, name=name, norm=norm)
    with torch.no_grad():  # scored by the eager fp32 model, whatever the attack ran on
        rec: dict[str, Any] = {"pred": model(xa.float()).argmax(1).cpu()}
        details = getattr(atk, "details", None)
        if details:
            rec["components"] = {k: v.cpu() for k, v in details["components"].items()}
            rec["mode"] = details["mode"]
            rec["component_seconds"] = dict(getattr(atk, "timings", None) or {})
        if images:  # what survives saving the adversarial image with 8 bits per value
            q = quantize(xa.float())
            dist_q = per_example_norm(q - xb, norm)
            if norm == "Linf" and float(dist_q.max()) > eps + UINT8_SLACK + TOLERANCE:
                raise AdversarialCheckError(
                    f"{name}: a quantized image lies {float(dist_q.max()):.6f} from its input, more than eps + 0.5/255"
                )
            rec["uint8_pred"] = model(q).argmax(1).cpu()
            rec["uint8_dist"] = dist_q.cpu()
        if keep_adv:
            rec["x_adv"] = xa.detach().float().cpu()
    rec["seconds"] = time.perf_counter() - t0
    return rec


def merge_records(
    load: Callable[[int], dict],
    batches: list,
    nat_pred: torch.Tensor,
    y_all: torch.Tensor,
    num_classes: int,
    settings: dict,
    *,
    eps: float,
    norm: str,
    images: bool,
    x_adv: torch.Tensor | None = None,
) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """An attack's eval.json entry from its records (``load(i)``: the record of batch ``i``, whose examples are
    ``batches[i]``; ``settings``: the attack's). With ``x_adv`` (the split's images as floats, where the
    adversarial examples are written) also the tensors of its ``save_adv`` file, else None."""
    n = len(y_all)
    pred, seconds = nat_pred.clone(), 0.0
    comps: dict[str, torch.Tensor] = {}
    comp_seconds: dict[str, float] = {}
    mode = None
    upred, udist = nat_pred.clone(), torch.zeros(n)
    correct = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
    for i, idx in enumerate(batches):
        rec = load(i)
        pred[idx] = rec["pred"]
        seconds += float(rec["seconds"])
        for k, v in (rec.get("components") or {}).items():
            comps.setdefault(k, torch.zeros(n, dtype=torch.bool))[idx] = v.bool()
        mode = rec.get("mode", mode)
        for k, v in (rec.get("component_seconds") or {}).items():
            comp_seconds[k] = comp_seconds.get(k, 0.0) + float(v)
        if "uint8_pred" in rec:
            upred[idx], udist[idx] = rec["uint8_pred"], rec["uint8_dist"].float()
        if x_adv is not None:
            x_adv[idx] = rec["x_adv"]
    result = {
        **summarize(pred, y_all, num_classes),
        "seconds": seconds,
        "n_attacked": len(correct),
        "settings": settings,
    }
    if comps:
        result["components"] = {
            "mode": mode,
            **{k: flags_summary(v, y_all, num_classes) for k, v in comps.items()},
        }
    if comp_seconds:  # where an AutoAttack's time went (summed over batches)
        result["component_seconds"] = comp_seconds
    if images and len(correct):
        ok = upred == y_all
        result["uint8"] = {
            **flags_summary(ok, y_all, num_classes),
            "rule": "round to the nearest /255 value, clip to [0, 1], predict again; the point may "
            "leave the eps-ball by at most 0.5/255 per pixel",
            "max_distance": float(udist.max()),
            "n_outside_ball": int((udist > eps + (TOLERANCE if norm == "Linf" else L2_TOLERANCE)).sum()),
        }
    if x_adv is None:
        return result, None
    attacked = torch.zeros(len(y_all), dtype=torch.uint8)
    attacked[correct] = 1
    tensors = {
        "x_adv": x_adv,
        "labels": y_all,
        "clean_pred": nat_pred,
        "adv_pred": pred,
        "uint8_pred": upred,
        "attacked": attacked,
        "index": torch.arange(len(y_all)),
    }
    if images:
        tensors["x_adv_uint8"] = (x_adv * 255).round().clamp(0, 255).to(torch.uint8)
    return result, tensors
