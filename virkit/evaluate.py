"""Robustness evaluation: run a list of attacks on a split and write ``eval.json``.

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
  with the same settings (data, model weights, eps, seed) keeps the attacks already finished
  (resume after an interruption, or add attacks to an existing evaluation).

Two entry points: :func:`evaluate_model` (a model and a split) and :func:`evaluate_run` (a run
directory or checkpoint: the run's own test subset, seed, eps and eval checkpoint by default, under
the run's writer lock). What the file holds is :mod:`virkit.eval_doc`'s business.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .attacks import ATTACK_PRESETS, attack_names, get_attack
from .attacks.base import eval_mode
from .devices import model_device, resolve_device
from .errors import VirkitError, check_range
from .eval_doc import (EVAL_FORMAT, build_document, load_previous, masking_warnings, model_fingerprint,
                       summarize, tensors_fingerprint)
from .io import atomic_write_json, to_jsonable

__all__ = ["evaluate_model", "evaluate_run", "EvalSettings", "check_adversarial", "AdversarialCheckError",
           "masking_warnings", "EVAL_FORMAT"]

TOLERANCE = 1e-6


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
def _attack_list(attacks) -> list[str]:
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


@dataclass
class EvalSettings:
    """What one evaluation runs, checked once when it is made (a bad value is one
    :class:`VirkitError` naming it).

    ``attacks``: names from :func:`virkit.attacks.attack_names` (a list or a comma-separated
    string); ``n_examples``: the first N of the split (None: all); ``attack_overrides`` maps an
    attack name to settings that replace the paper's (e.g. ``{"spsa": {"iterations": 10}}``),
    recorded in each attack's ``settings``; ``extra`` is recorded as is; ``replace``: an
    ``out_path`` holding another evaluation is kept as ``.prev.json`` and a new one starts
    (without it that is an error); ``progress``: a bar per attack and a line per finished attack.
    """

    attacks: list[str]
    eps: float = 8 / 255
    seed: int = 0
    batch_size: int = 256
    n_examples: int | None = None
    attack_overrides: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    replace: bool = False
    progress: bool = True

    def __post_init__(self):
        self.attacks = _attack_list(self.attacks)
        self.attack_overrides = dict(self.attack_overrides or {})
        for k in self.attack_overrides:
            if k not in ATTACK_PRESETS:
                raise VirkitError(f"attack_overrides names unknown attack {k!r}; valid: {', '.join(ATTACK_PRESETS)}")
        check_range("eps", self.eps, 0.0, 1.0, hint=" (eps is a fraction of the [0,1] pixel range: 8/255 = 0.0314)")
        check_range("batch_size", self.batch_size, 1, 10 ** 7)
        if self.n_examples is not None and int(self.n_examples) <= 0:
            raise VirkitError(f"n_examples must be positive, got {self.n_examples}")
        self.extra = dict(self.extra or {})


def evaluate_model(model: nn.Module, split, attacks, n_examples: int | None = None, batch_size: int = 256,
                   device=None, seed: int = 0, eps: float = 8 / 255, out_path=None, progress: bool = True,
                   extra: dict | None = None, attack_overrides: dict[str, dict] | None = None,
                   replace: bool = False) -> dict:
    """Evaluate ``model`` on the first ``n_examples`` of ``split`` (split order) under ``attacks``;
    the keyword arguments are those of :class:`EvalSettings` (or pass an :class:`EvalSettings` as
    ``attacks`` and leave them out). An ``out_path`` holding an evaluation of the same model, images,
    eps and seed is resumed (its finished attacks are kept). Returns the dict written to
    ``out_path`` (if given) as ``eval.json``."""
    settings = attacks if isinstance(attacks, EvalSettings) else EvalSettings(
        attacks, eps=eps, seed=seed, batch_size=batch_size, n_examples=n_examples,
        attack_overrides=attack_overrides or {}, extra=extra or {}, replace=replace, progress=progress)
    return _Evaluation(model, split, settings, device, out_path).run()


class _Evaluation:
    """One evaluation: the fp32 model on its device, the images, the header, the results so far."""

    def __init__(self, model: nn.Module, split, s: EvalSettings, device, out_path):
        total = len(split)
        n = total if s.n_examples is None else int(s.n_examples)
        if n > total:
            raise VirkitError(f"n_examples={n} is larger than the {getattr(split, 'name', '') or 'test'} split "
                              f"({total} examples); use --n-examples <= {total}")
        self.s = s
        self.classes = [str(c) for c in split.classes]
        self.num_classes = len(self.classes)
        self.dev = model_device(model) if device is None or str(device) == "auto" else torch.device(device)
        self.images = split.x.dtype == torch.uint8
        self.bounds = (0.0, 1.0) if self.images else None
        self.x_all, self.y_all = split.x[:n], split.y[:n].long().cpu()
        if int(self.y_all.min()) < 0 or int(self.y_all.max()) >= self.num_classes:
            raise VirkitError(f"labels outside 0..{self.num_classes - 1} in the split; the class list does not match "
                              "the labels")
        # fp32 model on the evaluation device; the caller's model is restored afterwards
        self.model = model
        if any(t.is_floating_point() and t.dtype != torch.float32
               for t in list(model.parameters()) + list(model.buffers())):
            self.model = copy.deepcopy(model).float()
        self.header = {"format": EVAL_FORMAT, "dataset": getattr(split, "name", ""),
                       "source": getattr(split, "source", ""), "classes": self.classes, "n_examples": n,
                       "eps": float(s.eps), "seed": int(s.seed),
                       "data_fingerprint": tensors_fingerprint([self.x_all, self.y_all]),
                       "model_fingerprint": model_fingerprint(self.model), "extra": to_jsonable(s.extra)}
        self.out_path = Path(out_path) if out_path is not None else None
        self.previous = load_previous(self.out_path, self.header, s.replace)
        self.results: dict[str, dict] = {}
        self.doc: dict[str, Any] = {}

    def note(self, msg: str) -> None:
        if self.s.progress:
            print(f"virkit: {msg}", file=sys.stderr)

    def write(self) -> None:
        self.doc.clear()
        self.doc.update(build_document(self.header, self.results, self.s.attacks, self.classes, self.y_all))
        if self.out_path is not None:
            try:
                atomic_write_json(self.out_path, self.doc)
            except OSError as e:
                raise VirkitError(f"cannot write {self.out_path}: {e.strerror or e}; choose a writable output path"
                                  ) from None

    def run(self) -> dict:
        if self.out_path is not None:
            try:
                self.out_path.parent.mkdir(parents=True, exist_ok=True)
                if self.s.replace and not self.previous and self.out_path.is_file():
                    os.replace(self.out_path, self.out_path.with_suffix(".prev.json"))
            except OSError as e:
                raise VirkitError(f"cannot write in {self.out_path.parent}: {e.strerror}; choose a writable output "
                                  "path") from None
        for k in self.previous:  # attacks of an earlier call with the same settings stay in the file
            if k not in self.s.attacks:
                self.results[k] = self.previous[k]
        orig_device = model_device(self.model)
        moved = orig_device != self.dev
        if moved:
            self.model.to(self.dev)
        try:
            with eval_mode(self.model), _autocast_off(self.dev):
                nat_pred = self._natural()
                for name in self.s.attacks:
                    if name != "natural":
                        self._attack(name, nat_pred)
        finally:
            if moved:
                self.model.to(orig_device)
        self.write()
        for w in self.doc["warnings"]:
            print(f"virkit: warning: {w}", file=sys.stderr)
        return self.doc

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        return _float_batch(x, self.images).to(self.dev)

    def _natural(self) -> torch.Tensor:
        """Natural predictions (always needed: attacks only run on the naturally correct examples)."""
        n, bs = len(self.y_all), self.s.batch_size
        nat_pred = torch.empty(n, dtype=torch.long)
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, n, bs):
                nat_pred[s:s + bs] = self.model(self._batch(self.x_all[s:s + bs])).argmax(1).cpu()
        seconds = time.perf_counter() - t0
        prev = self.previous.get("natural")
        if prev is not None and prev.get("predictions") == nat_pred.tolist():
            self.results["natural"] = prev
        elif "natural" in self.s.attacks:
            self.results["natural"] = {**summarize(nat_pred, self.y_all, self.num_classes), "seconds": seconds,
                                       "n_attacked": n, "settings": {"name": "natural"}}
        if "natural" in self.s.attacks:
            self.write()
        return nat_pred

    def _attack(self, name: str, nat_pred: torch.Tensor) -> None:
        s = self.s
        atk = get_attack(name, eps=s.eps, seed=s.seed, **{**s.attack_overrides.get(name, {}),
                                                          **({"bounds": None} if self.bounds is None else {})})
        settings = to_jsonable(atk.describe())
        prev = self.previous.get(name)
        if prev is not None and prev.get("settings") == settings:
            self.results[name] = prev
            self.note(f"{name}: kept from {self.out_path} (accuracy {100 * prev['accuracy']:.2f}%)")
            return
        correct = (nat_pred == self.y_all).nonzero().squeeze(1)     # in split order; attacked in full batches
        pred = nat_pred.clone()
        seconds = 0.0
        bar = _progress_bar(len(correct), name) if s.progress else None
        for b in range(0, len(correct), s.batch_size):
            idx = correct[b:b + s.batch_size]
            xb = self._batch(self.x_all[idx.to(self.x_all.device)])
            yb = self.y_all[idx].to(self.dev)
            t0 = time.perf_counter()
            xa = atk(self.model, xb, yb)
            check_adversarial(xa, xb, s.eps, self.bounds, name=name)
            with torch.no_grad():
                pred[idx] = self.model(xa.float()).argmax(1).cpu()
            seconds += time.perf_counter() - t0
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        self.results[name] = {**summarize(pred, self.y_all, self.num_classes), "seconds": seconds,
                              "n_attacked": len(correct), "settings": settings}
        self.note(f"{name}: accuracy {100 * self.results[name]['accuracy']:.2f}% ({seconds:.1f} s)")
        self.write()


def _progress_bar(total: int, name: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=name, unit="img", leave=False, file=sys.stderr)


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


# ---------------------------------------------------------------------------------------------
def evaluate_run(source: str | os.PathLike, attacks=None, *, which: str | None = None, n_examples: int | None = None,
                 batch_size: int = 256, device: str | torch.device = "auto", seed: int | None = None,
                 eps: float | None = None, dataset: str | None = None, data_root: str | None = None,
                 out: str | os.PathLike | None = None, replace: bool = False, progress: bool = False,
                 attack_overrides: dict | None = None, test_split=None, log: Callable[[str], None] | None = None
                 ) -> dict:
    """Evaluate a virkit run directory (or one of its checkpoints) and write its eval.json.

    By default it evaluates what the trainer evaluated: the run's eval checkpoint (``last`` unless
    the run says otherwise), its seed and eps, and its seeded class-balanced test subset
    (:func:`virkit.data.test_subset`), so adding attacks extends the run's own ``eval.json``.
    ``n_examples`` takes the same seeded draw with another size; ``out`` writes elsewhere. The
    eval.json (and, for a run's own eval.json, the run) is locked for the whole evaluation: a
    second writer is refused. ``attacks`` defaults to the run's ``eval_attacks``. ``test_split``
    (already on the device) skips reading the data again (the trainer's final evaluation).
    Returns the eval.json document; with ``log`` a one-line summary is logged.
    """
    from .checkpoint import load_checkpoint, resolve_checkpoint_path
    from .data import load_dataset, test_subset
    from .runs import RunDir, eval_lock

    early = EvalSettings(attacks if attacks is not None else ["natural"], batch_size=batch_size,
                         n_examples=n_examples, eps=eps if eps is not None else 8 / 255,
                         attack_overrides=attack_overrides or {}, replace=replace, progress=progress)
    src = Path(source)
    run = RunDir(src if src.is_dir() else src.parent)
    out_path = Path(out) if out is not None else run.eval_file
    # one writer per eval.json: refused before anything else when its folder exists (a run's own
    # eval.json); a new --out folder is only created once every input has been checked
    lock = eval_lock(out_path) if out_path.parent.is_dir() else None
    try:
        if which is None:
            which = (run.read_config() or {}).get("eval_checkpoint") if src.is_dir() else None
            which = which if which in ("best", "last") else "last"
        ck_path = resolve_checkpoint_path(src, which)
        dev = resolve_device(device)
        model, cfg = load_checkpoint(ck_path, "cpu")
        ds = dataset or cfg["dataset"]
        n = n_examples if n_examples is not None else (cfg.get("test_subset") if ds == cfg["dataset"] else None)
        settings = dataclasses.replace(early, attacks=attacks if attacks is not None else
                                       list(cfg.get("eval_attacks") or ["natural"]), n_examples=None,
                                       eps=eps if eps is not None else float(cfg.get("eps", 8 / 255)),
                                       seed=seed if seed is not None else int(cfg.get("seed", 0)))
        if test_split is None:
            full = load_dataset(ds, data_root or cfg.get("data_root"), "test",
                                gmm=(cfg.get("extra") or {}).get("gmm") if ds == "gaussian-mixture" else None)
            n_model = len((cfg.get("data") or {}).get("classes") or full.classes)
            if n_model != full.num_classes:
                raise VirkitError(f"checkpoint {ck_path} has {n_model} classes but the dataset has "
                                  f"{full.num_classes}; evaluate it on the dataset it was trained on")
            if n is not None and n > len(full):
                raise VirkitError(f"--n-examples={n} is more than the test set has ({len(full)}); use at most "
                                  f"{len(full)}")
            test_split = test_subset(full, n).to(dev)
        settings.extra = {"checkpoint": ck_path.name, "test_subset": n, "dataset_source": test_split.source}
        if lock is None:
            lock = eval_lock(out_path)
        doc = evaluate_model(model.to(dev), test_split, settings, device=dev, out_path=out_path)
    finally:
        if lock is not None:
            lock.release()
    if log is not None:
        log(f"final evaluation ({ck_path.name}, {len(test_split)} test images): " +
            ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in doc["attacks"].items()))
    return doc

