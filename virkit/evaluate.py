"""Robustness evaluation: run a list of attacks on the first ``n_examples`` of a split and write
``eval.json``.

Protocol (Sec. 5.4 of the paper, and AutoAttack's conventions):

* the model runs in eval mode and in fp32 (autocast off; a non-fp32 model is evaluated on an fp32
  copy); modes, devices and the caller's model are restored afterwards;
* an example the model misclassifies naturally counts as non-robust under every attack (the clean
  input lies in the eps-ball), so each attack only runs on the naturally correct examples;
  robust accuracy can therefore never exceed natural accuracy;
* every adversarial example is checked to lie in the L-inf eps-ball and in [0, 1] (tolerance
  1e-6) before it is scored; a violation raises :class:`AdversarialCheckError`;
* ``worst_case`` counts an example robust only if it is robust under every attack run;
* the file is written atomically after natural accuracy and after every attack, and a later call
  with the same settings (data, model weights, eps, seed, ``extra``) keeps the attacks already
  finished (resume after an interruption, or add attacks to an existing evaluation).

Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial
robustness") are recorded under ``warnings`` and printed.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import ATTACK_PRESETS, attack_names, get_attack
from .attacks.base import eval_mode
from .errors import VirkitError, check_range
from .io import atomic_write_json, to_jsonable

__all__ = ["evaluate_model", "check_adversarial", "AdversarialCheckError", "masking_warnings", "EVAL_FORMAT"]

EVAL_FORMAT = "virkit-eval-v1"
TOLERANCE = 1e-6

#: attacks that use gradients (white box) and those that only read scores (black box)
WHITE_BOX = ("pgd10", "pgd20", "pgd100", "cw", "fmn100", "aa", "mde", "apgd-ce", "apgd-t", "fab-t")
BLACK_BOX = ("square", "spsa")


class AdversarialCheckError(RuntimeError):
    """An attack returned a point outside the eps-ball or the box: a bug in the attack."""


def check_adversarial(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds=(0.0, 1.0), tol: float = TOLERANCE,
                      name: str = "attack") -> None:
    """Raise :class:`AdversarialCheckError` unless ``x_adv`` has the shape of ``x``, is finite, lies in the
    L-inf ball of radius ``eps`` around ``x`` and in ``bounds`` (each up to ``tol``)."""
    if x_adv.shape != x.shape:
        raise AdversarialCheckError(f"{name} returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}")
    if x_adv.numel() == 0:
        return
    diff = (x_adv.detach().float() - x.detach().float()).abs().flatten(1).amax(1)
    worst = float(diff.max())
    if not math.isfinite(worst) or not bool(torch.isfinite(x_adv).all()):
        raise AdversarialCheckError(f"{name} returned non-finite values")
    if worst > eps + tol:
        raise AdversarialCheckError(f"{name} returned a perturbation of L-inf norm {worst:.8f} > eps {eps:.8f} "
                                    f"(tolerance {tol:g}) at example {int(diff.argmax())} of the batch")
    if bounds is not None:
        lo, hi = float(x_adv.min()), float(x_adv.max())
        if lo < bounds[0] - tol or hi > bounds[1] + tol:
            raise AdversarialCheckError(f"{name} returned values in [{lo:.8f}, {hi:.8f}], outside the box {bounds}")


# ---------------------------------------------------------------------------------------------
def _validate_attacks(attacks) -> list[str]:
    if isinstance(attacks, str):
        attacks = [a for a in attacks.split(",") if a.strip()]
    valid = attack_names()
    names: list[str] = []
    for a in attacks:
        a = a.strip()
        if a not in valid:
            raise VirkitError(f"unknown attack {a!r}; valid attacks: {', '.join(valid)}")
        if a not in names:
            names.append(a)
    if not names:
        raise VirkitError(f"no attacks given; valid attacks: {', '.join(valid)}")
    return names


def _fingerprint_tensors(tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        h.update(t.reshape(-1).numpy().tobytes())
    return h.hexdigest()[:16]


def _model_fingerprint(model: nn.Module) -> str:
    return _fingerprint_tensors([v.float() if v.is_floating_point() else v for v in model.state_dict().values()])


def _summary(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
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
    for bb in BLACK_BOX:
        if bb in acc:
            beaten = [k for k in WHITE_BOX if k in acc and acc[bb] < acc[k]]
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


def _load_previous(path: Path, header: dict, replace: bool = False) -> dict:
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


def _resolve_device(model: nn.Module, device) -> torch.device:
    if device is not None and str(device) != "auto":
        return torch.device(device)
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def evaluate_model(model: nn.Module, split, attacks, n_examples: int | None = None, batch_size: int = 256,
                   device=None, seed: int = 0, eps: float = 8 / 255, out_path=None, progress: bool = True,
                   extra: dict | None = None, attack_overrides: dict[str, dict] | None = None,
                   replace: bool = False) -> dict:
    """Evaluate ``model`` on the first ``n_examples`` of ``split`` (split order) under ``attacks``.

    ``attacks``: names from :func:`virkit.attacks.attack_names` (``natural``, ``fgsm``, ``pgd100``,
    ``cw``, ``fmn100``, ``aa``, ``mde``, ``square``, ``spsa``, ...). ``attack_overrides`` maps an
    attack name to settings that replace the paper's (e.g. ``{"spsa": {"iterations": 10}}``); they
    are recorded in ``settings``. ``extra`` is recorded as is. An ``out_path`` holding an evaluation of
    the same model, images, eps and seed is resumed (its finished attacks are kept); one holding another
    evaluation raises :class:`VirkitError` unless ``replace`` (then it is kept as ``.prev.json``).
    Returns the dict written to ``out_path`` (if given) as ``eval.json``.
    """
    names = _validate_attacks(attacks)
    overrides = dict(attack_overrides or {})
    for k in overrides:
        if k not in ATTACK_PRESETS:
            raise VirkitError(f"attack_overrides names unknown attack {k!r}; valid: {', '.join(ATTACK_PRESETS)}")
    check_range("eps", eps, 0.0, 1.0, hint=" (eps is a fraction of the [0,1] pixel range: 8/255 = 0.0314)")
    check_range("batch_size", batch_size, 1, 10 ** 7)
    total = len(split)
    n = total if n_examples is None else int(n_examples)
    if n > total:
        raise VirkitError(f"n_examples={n} is larger than the {getattr(split, 'name', '') or 'test'} split "
                          f"({total} examples); use --n-examples <= {total}")
    if n <= 0:
        raise VirkitError(f"n_examples must be positive, got {n}")
    classes = [str(c) for c in split.classes]
    num_classes = len(classes)
    dev = _resolve_device(model, device)
    images = split.x.dtype == torch.uint8
    bounds = (0.0, 1.0) if images else None
    x_all, y_all = split.x[:n], split.y[:n].long().cpu()
    if int(y_all.min()) < 0 or int(y_all.max()) >= num_classes:
        raise VirkitError(f"labels outside 0..{num_classes - 1} in the split; the class list does not match the labels")

    # fp32 model on the evaluation device; the caller's model is restored afterwards
    work = model
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in list(model.parameters()) + list(model.buffers())):
        work = copy.deepcopy(model).float()
    orig_device = _resolve_device(work, None)
    moved = orig_device != dev
    if moved:
        work.to(dev)

    header = {"format": EVAL_FORMAT, "dataset": getattr(split, "name", ""), "source": getattr(split, "source", ""),
              "classes": classes, "n_examples": n, "eps": float(eps), "seed": int(seed),
              "data_fingerprint": _fingerprint_tensors([x_all, y_all]), "model_fingerprint": _model_fingerprint(work),
              "extra": to_jsonable(extra or {})}
    out_path = Path(out_path) if out_path is not None else None
    previous = _load_previous(out_path, header, replace)
    if out_path is not None:
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            if replace and not previous and out_path.is_file():
                os.replace(out_path, out_path.with_suffix(".prev.json"))
        except OSError as e:
            raise VirkitError(f"cannot write in {out_path.parent}: {e.strerror}; choose a writable output path") from None

    results: dict[str, dict] = {}
    doc: dict[str, Any] = {}

    def note(msg: str) -> None:
        if progress:
            print(f"virkit: {msg}", file=sys.stderr)

    def write() -> None:
        doc.clear()
        doc.update(_document(header, results, names, classes, y_all))
        if out_path is not None:
            try:
                atomic_write_json(out_path, doc)
            except OSError as e:
                raise VirkitError(f"cannot write {out_path}: {e.strerror or e}; choose a writable output path") from None

    for k in previous:  # attacks of an earlier call with the same settings stay in the file
        if k not in names:
            results[k] = previous[k]
    try:
        with eval_mode(work), _autocast_off(dev):
            _run_attacks(work, x_all, y_all, names, previous, results, overrides, write, note, dev=dev, eps=eps,
                         seed=seed, bounds=bounds, images=images, batch_size=batch_size, progress=progress,
                         num_classes=num_classes, out_path=out_path)
    finally:
        if moved:
            work.to(orig_device)
    write()
    for w in doc["warnings"]:
        print(f"virkit: warning: {w}", file=sys.stderr)
    return doc


def _run_attacks(work, x_all, y_all, names, previous, results, overrides, write, note, *, dev, eps, seed, bounds,
                 images, batch_size, progress, num_classes, out_path) -> None:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    n = len(y_all)
    # natural predictions (always needed: attacks only run on the naturally correct examples)
    nat_pred = torch.empty(n, dtype=torch.long)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            xb = _float_batch(x_all[s:s + batch_size], images).to(dev)
            nat_pred[s:s + batch_size] = work(xb).argmax(1).cpu()
    nat_seconds = time.perf_counter() - t0
    if "natural" in previous and previous["natural"].get("predictions") == nat_pred.tolist():
        results["natural"] = previous["natural"]
    elif "natural" in names:
        results["natural"] = {**_summary(nat_pred, y_all, num_classes), "seconds": nat_seconds,
                              "n_attacked": n, "settings": {"name": "natural"}}
    if "natural" in names:
        write()
    correct = (nat_pred == y_all).nonzero().squeeze(1)     # in split order; attacked in full batches
    for name in names:
        if name == "natural":
            continue
        atk = get_attack(name, eps=eps, seed=seed, **{**overrides.get(name, {}),
                                                      **({"bounds": None} if bounds is None else {})})
        settings = to_jsonable(atk.describe())
        if name in previous and previous[name].get("settings") == settings:
            results[name] = previous[name]
            note(f"{name}: kept from {out_path} (accuracy {100 * previous[name]['accuracy']:.2f}%)")
            continue
        pred = nat_pred.clone()
        seconds = 0.0
        bar = (tqdm(total=len(correct), desc=name, unit="img", leave=False, file=sys.stderr)
               if (progress and tqdm) else None)
        for s in range(0, len(correct), batch_size):
            idx = correct[s:s + batch_size]
            xb = _float_batch(x_all[idx.to(x_all.device)], images).to(dev)
            yb = y_all[idx].to(dev)
            t0 = time.perf_counter()
            xa = atk(work, xb, yb)
            check_adversarial(xa, xb, eps, bounds, name=name)
            with torch.no_grad():
                pred[idx] = work(xa.float()).argmax(1).cpu()
            seconds += time.perf_counter() - t0
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        results[name] = {**_summary(pred, y_all, num_classes), "seconds": seconds, "n_attacked": len(correct),
                         "settings": settings}
        note(f"{name}: accuracy {100 * results[name]['accuracy']:.2f}% ({seconds:.1f} s)")
        write()


def _float_batch(x: torch.Tensor, images: bool) -> torch.Tensor:
    return x.float().div_(255.0) if images else x.float()


class _autocast_off:
    def __init__(self, device: torch.device):
        self.ctx = None
        try:
            self.ctx = torch.autocast(device_type=device.type, enabled=False)
        except (RuntimeError, ValueError):  # pragma: no cover - device without autocast support
            self.ctx = None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


def _document(header: dict, results: dict[str, dict], order: list[str], classes: list[str],
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
        worst = _summary(worst_pred, labels, len(classes))
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
