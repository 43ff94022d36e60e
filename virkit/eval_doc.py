"""The eval.json document: its header (what was evaluated), per-attack summaries, the worst case,
fairness figures and gradient-masking warnings, and the rule for resuming or replacing an earlier one.

:mod:`virkit.evaluate` runs the attacks; this module owns what the file says.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from .errors import VirkitError

__all__ = ["EVAL_FORMAT", "masking_warnings", "model_fingerprint", "tensors_fingerprint", "summarize",
           "build_document", "load_previous"]

EVAL_FORMAT = "virkit-eval-v1"


def _threat_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(iterative white-box, black-box) attack names, from the attack classes themselves. The
    single-step FGSM is left out of the first: a good black-box attack may beat it without any
    gradient masking."""
    from .attacks import black_box_attacks, white_box_attacks
    return tuple(a for a in white_box_attacks() if a != "fgsm"), black_box_attacks()


def tensors_fingerprint(tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        h.update(t.reshape(-1).numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    return tensors_fingerprint([v.float() if v.is_floating_point() else v for v in model.state_dict().values()])


def summarize(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    correct = (pred == y)
    conf = torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)
    per_class = []
    for c in range(num_classes):
        n_c = int(conf[c].sum())
        per_class.append(float(conf[c, c]) / n_c if n_c else None)
    return {"accuracy": float(correct.float().mean()) if len(y) else 0.0, "per_class_accuracy": per_class,
            "confusion_matrix": conf.tolist(), "robust": correct.int().tolist(), "predictions": pred.tolist()}


def _fairness(per_class: list, classes: list[str]) -> dict:
    vals = [(v, c) for v, c in zip(per_class, classes) if v is not None]
    if not vals:
        return {"worst_class_accuracy": None, "worst_class": None, "best_minus_worst": None,
                "std_across_classes": None}
    accs = [v for v, _ in vals]
    worst_v, worst_c = min(vals, key=lambda t: t[0])
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    return {"worst_class_accuracy": worst_v, "worst_class": worst_c, "best_minus_worst": max(accs) - worst_v,
            "std_across_classes": std}


def masking_warnings(acc: dict[str, float]) -> list[str]:
    """Gradient-masking red flags from robust accuracies (fractions) by attack name.

    * an iterative attack (PGD-k) above FGSM (Athalye et al. 2018: iterative attacks must be stronger);
    * AutoAttack or MDE above PGD (a stronger ensemble cannot do worse than one of its ingredients'
      weaker relative);
    * a black-box attack (Square, SPSA) below a white-box attack (Athalye et al. 2018, Carlini et al.
      2019: with useful gradients white-box attacks should be stronger);
    * accuracy rising with more PGD steps (pgd100 above pgd20 or pgd10; pgd20 above pgd10).
    """
    out = []
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    pgds = sorted((int(k[3:]), k) for k in acc if k.startswith("pgd") and k[3:].isdigit())
    if "fgsm" in acc:
        for _, k in pgds:
            if acc[k] > acc["fgsm"]:
                out.append(f"{k} accuracy {pct(acc[k])} is above fgsm accuracy {pct(acc['fgsm'])}: an iterative attack "
                           "weaker than a single step suggests gradient masking")
    for ens in ("aa", "mde"):
        if ens in acc:
            for _, k in pgds:
                if acc[ens] > acc[k]:
                    out.append(f"{ens} accuracy {pct(acc[ens])} is above {k} accuracy {pct(acc[k])}: the stronger "
                               "attack did worse, check the evaluation for gradient masking or a bug")
    white, black = _threat_lists()
    for bb in black:
        if bb in acc:
            beaten = [k for k in white if k in acc and acc[bb] < acc[k]]
            if beaten:
                out.append(f"black-box {bb} accuracy {pct(acc[bb])} is below white-box "
                           + ", ".join(f"{k} {pct(acc[k])}" for k in beaten)
                           + ": gradient-based attacks are being obstructed (gradient masking)")
    for i, (s1, k1) in enumerate(pgds):
        for s2, k2 in pgds[i + 1:]:
            if s2 > s1 and acc[k2] > acc[k1]:
                out.append(f"{k2} accuracy {pct(acc[k2])} is above {k1} accuracy {pct(acc[k1])}: accuracy should not "
                           "rise with more attack steps (gradient masking)")
    return out


def _header_mismatch(doc: dict, header: dict) -> str | None:
    """The first header field in which an earlier evaluation differs from this one, else None."""
    for k, v in header.items():
        if k == "extra":  # recorded for the reader; the fingerprints already identify model and data
            continue
        if k == "eps":
            if not isinstance(doc.get("eps"), (int, float)) or abs(doc["eps"] - v) > 1e-12:
                return f"eps {doc.get('eps')!r} there, {v!r} here"
        elif doc.get(k) != v:
            if k in ("n_examples", "seed", "dataset"):
                return f"{k} {doc.get(k)!r} there, {v!r} here"
            return f"{k.replace('_', ' ')} differs (another model or other images)"
    return None


def load_previous(path: Path, header: dict, replace: bool = False) -> dict:
    """The finished attacks of an existing eval.json written with the same header, else {}.

    An existing virkit eval.json from another evaluation (other images, model, eps or seed) is never
    overwritten silently: without ``replace`` a :class:`VirkitError` names the difference; with it the
    old file is kept as ``<name>.prev.json`` and a new evaluation starts."""
    if path is None or not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != EVAL_FORMAT:
        if replace:
            return {}
        raise VirkitError(f"{path} exists and is not a virkit evaluation; choose another --out or pass --replace")
    diff = _header_mismatch(doc, header)
    if diff is not None:
        if not replace:
            raise VirkitError(f"{path} holds an evaluation with other settings ({diff}); pass --replace to start "
                              "a new one (the old file is kept as .prev.json) or --out to write elsewhere")
        return {}
    atts = doc.get("attacks")
    return atts if isinstance(atts, dict) else {}


def build_document(header: dict, results: dict[str, dict], order: list[str], classes: list[str],
              labels: torch.Tensor) -> dict:
    ordered = {k: results[k] for k in order if k in results}
    ordered.update({k: v for k, v in results.items() if k not in ordered})
    doc = {**header, "labels": labels.tolist(), "attacks": ordered}
    if ordered:
        robust = torch.ones(len(labels), dtype=torch.bool)
        worst_pred = labels.clone()
        for r in ordered.values():  # the prediction under the first attack (in run order) that broke it
            rb = torch.tensor(r["robust"], dtype=torch.bool)
            pr = torch.tensor(r["predictions"], dtype=torch.long)
            worst_pred = torch.where(robust & ~rb, pr, worst_pred)
            robust &= rb
        worst = summarize(worst_pred, labels, len(classes))
        worst["seconds"] = sum(float(r.get("seconds", 0.0)) for r in ordered.values())
        worst["settings"] = {"name": "worst case", "attacks": list(ordered)}
        doc["worst_case"] = worst
        doc["fairness"] = {name: _fairness(r["per_class_accuracy"], classes) for name, r in ordered.items()}
        doc["fairness"]["worst_case"] = _fairness(worst["per_class_accuracy"], classes)
    else:
        doc["worst_case"] = None
        doc["fairness"] = {}
    doc["warnings"] = masking_warnings({k: r["accuracy"] for k, r in ordered.items()})
    return doc
