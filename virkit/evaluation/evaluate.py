"""Robustness evaluation: run a list of attacks on a split and write ``eval.json``.

Protocol (Sec. 5.4 of the paper, and AutoAttack's conventions):

* the model runs in eval mode and in fp32 (autocast off; a non-fp32 model is evaluated on an fp32
  copy; on CUDA TF32 off, which PyTorch leaves on for cuDNN convolutions, unless ``allow_tf32``);
  modes, devices, TF32 flags and the caller's model are restored afterwards; its parameters stop
  requiring gradients meanwhile (every attack differentiates with respect to the input only);
* ``compile``: the attacks call a ``torch.compile``'d model (automatic dynamic shapes, so the
  batches that shrink as points break recompile once; ``mode="reduce-overhead"``, CUDA graphs, on
  CUDA with ``compile="cudagraphs"``); eval.json records what ran under ``numerics`` and
  ``runtime``;
* an example the model misclassifies naturally counts as non-robust under every attack (the clean
  input lies in the eps-ball), so each attack only runs on the naturally correct examples;
  robust accuracy can therefore never exceed natural accuracy;
* every adversarial example is checked to lie in the eps-ball of the threat model (L-inf, or L2 per
  example) and in [0, 1] before it is scored; a violation raises :class:`AdversarialCheckError`;
* ``worst_case`` counts an example robust only if it is robust under every attack run;
* the file is written atomically after natural accuracy and after every attack, and a later call
  with the same settings (data, model weights, eps, norm, seed) keeps the attacks already finished;
  inside an attack every finished batch is kept in a state file beside eval.json, so a killed
  evaluation continues where it stopped (:class:`virkit.evaluation.document.AttackState`);
* under torchrun the batches of each attack are shared out across the ranks (batch ``i`` on rank
  ``i mod W``) and rank 0 merges them: the same per-example results as one process, because every
  batch is the same and its attack draws from a generator seeded with the seed alone.

Entry points: :func:`evaluate_model` (a model and a split), :func:`evaluate_run` (a run directory or
checkpoint: the run's own test subset, seed, eps and eval checkpoint by default, under the run's
writer lock) and :func:`evaluate_source` (any model: ``module:callable``, ``robustbench:NAME``, a
TorchScript file; :mod:`virkit.evaluation.sources`). What the files hold is :mod:`virkit.evaluation.document`'s business;
:func:`load_adversarial` reads the adversarial examples ``save_adv`` wrote.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from virkit.attacks import eval_mode, get_attack, per_example_norm
from virkit.attacks.pgd import input_grad_only
from virkit.devices import compile_model, model_device, tf32_mode
from virkit.distributed import DistContext
from virkit.errors import VirkitError
from virkit.evaluation.document import (
    EVAL_FORMAT,
    AttackState,
    adversarial_file,
    build_document,
    flags_summary,
    load_adversarial,
    load_previous,
    masking_warnings,
    model_fingerprint,
    summarize,
    tensors_fingerprint,
    write_adversarial,
)
from virkit.evaluation.settings import DEFAULT_ATTACKS, EvalSettings, attack_list
from virkit.io import atomic_write_json, to_jsonable

__all__ = [
    "evaluate_model",
    "EvalSettings",
    "DEFAULT_ATTACKS",
    "attack_list",
    "check_adversarial",
    "AdversarialCheckError",
    "masking_warnings",
    "load_adversarial",
    "EVAL_FORMAT",
    "TOLERANCE",
    "L2_TOLERANCE",
    "UINT8_SLACK",
]

TOLERANCE = 1e-6
#: an L2 norm summed over thousands of float32 coordinates carries a larger rounding error
L2_TOLERANCE = 1e-5
#: rounding an adversarial image to the nearest /255 value moves each pixel by at most half a level
UINT8_SLACK = 0.5 / 255


class AdversarialCheckError(RuntimeError):
    """An attack returned a point outside the eps-ball or the box: a bug in the attack."""


def check_adversarial(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    eps: float,
    bounds=(0.0, 1.0),
    tol: float | None = None,
    name: str = "attack",
    norm: str = "Linf",
) -> None:
    """Raise :class:`AdversarialCheckError` unless ``x_adv`` has the shape of ``x``, is finite, lies in the
    ``norm`` ball of radius ``eps`` around ``x`` (L-inf, or L2 per example) and in ``bounds``, each up
    to ``tol`` (default 1e-6; 1e-5 for L2 norms)."""
    if x_adv.shape != x.shape:
        raise AdversarialCheckError(f"{name} returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}")
    if x_adv.numel() == 0:
        return
    tol = (TOLERANCE if norm == "Linf" else L2_TOLERANCE) if tol is None else tol
    diff = per_example_norm(x_adv.detach().float() - x.detach().float(), norm)
    worst = float(diff.max())
    if not math.isfinite(worst) or not bool(torch.isfinite(x_adv).all()):
        raise AdversarialCheckError(f"{name} returned non-finite values")
    if worst > eps + tol:
        raise AdversarialCheckError(
            f"{name} returned a perturbation of {'L-inf' if norm == 'Linf' else norm} norm "
            f"{worst:.8f} > eps {eps:.8f} (tolerance {tol:g}) at example "
            f"{int(diff.argmax())} of the batch"
        )
    if bounds is not None:
        lo, hi = float(x_adv.min()), float(x_adv.max())
        if lo < bounds[0] - tol or hi > bounds[1] + tol:
            raise AdversarialCheckError(f"{name} returned values in [{lo:.8f}, {hi:.8f}], outside the box {bounds}")


def quantize(x_adv: torch.Tensor) -> torch.Tensor:
    """What survives saving as an 8-bit image: each value rounded to the nearest k/255, clipped to [0, 1]."""
    return (x_adv * 255).round().clamp(0, 255) / 255


def evaluate_model(
    model: nn.Module,
    split,
    settings: EvalSettings,
    *,
    device=None,
    out_path=None,
    dist: DistContext | None = None,
    model_source: dict | None = None,
    fingerprint_extra: list | None = None,
) -> dict:
    """Evaluate ``model`` on the first ``settings.n_examples`` of ``split`` (split order; all of it
    when unset) under ``settings`` (:class:`EvalSettings`; unset attacks, eps and seed take their
    defaults, :meth:`EvalSettings.resolved`). ``device``: where it runs (default: the model's). An
    ``out_path`` holding an evaluation of the same model, images, eps, norm and seed is resumed (its
    finished attacks are kept, and the finished batches of an attack in progress). ``dist`` (a
    :class:`virkit.distributed.DistContext` under torchrun) shares the batches out across ranks;
    ``model_source`` is recorded in the header; ``fingerprint_extra`` (tensors) joins the model
    fingerprint. Returns the dict written to ``out_path`` (if given) as ``eval.json``."""
    settings = EvalSettings.given(settings, "evaluate_model").resolved()
    return _Evaluation(
        model, split, settings, device, out_path, dist or DistContext(), model_source, fingerprint_extra
    ).run()


class _Evaluation:
    """One evaluation: the fp32 model on its device, the images, the header, the results so far."""

    def __init__(
        self,
        model: nn.Module,
        split,
        s: EvalSettings,
        device,
        out_path,
        dist: DistContext,
        model_source: dict | None = None,
        fingerprint_extra=None,
    ):
        total = len(split)
        n = total if s.n_examples is None else int(s.n_examples)
        if n > total:
            raise VirkitError(
                f"n_examples={n} is larger than the {getattr(split, 'name', '') or 'test'} split "
                f"({total} examples); use --n-examples <= {total}"
            )
        self.s, self.dist = s, dist
        self.classes = [str(c) for c in split.classes]
        self.num_classes = len(self.classes)
        self.dev = model_device(model) if device is None or str(device) == "auto" else torch.device(device)
        s.check_device(self.dev)
        self.images = split.x.dtype == torch.uint8
        self.bounds = (0.0, 1.0) if self.images else None
        self.x_all, self.y_all = split.x[:n], split.y[:n].long().cpu()
        if int(self.y_all.min()) < 0 or int(self.y_all.max()) >= self.num_classes:
            raise VirkitError(
                f"labels outside 0..{self.num_classes - 1} in the split; the class list does not match the labels"
            )
        # fp32 model on the evaluation device; the caller's model is restored afterwards
        self.model = model
        if any(
            t.is_floating_point() and t.dtype != torch.float32 for t in list(model.parameters()) + list(model.buffers())
        ):
            self.model = copy.deepcopy(model).float()
        self.header = {
            "format": EVAL_FORMAT,
            "dataset": getattr(split, "name", ""),
            "source": getattr(split, "source", ""),
            "classes": self.classes,
            "n_examples": n,
            "norm": s.norm,
            "eps": float(s.eps),
            "seed": int(s.seed),
            "data_fingerprint": tensors_fingerprint([self.x_all, self.y_all]),
            "model_fingerprint": model_fingerprint(self.model, fingerprint_extra),
            # TF32 changes the numbers: an evaluation with it is another evaluation
            "numerics": {"dtype": "float32", "tf32": bool(s.allow_tf32 and self.dev.type == "cuda")},
            "extra": to_jsonable(s.extra),
        }
        if model_source is not None:
            self.header["model_source"] = to_jsonable(model_source)
        self.out_path = Path(out_path) if out_path is not None else None
        if dist.enabled and self.out_path is None:
            raise VirkitError("a sharded evaluation (torchrun) needs an output file (--out)")
        own = dist.on_main(lambda: load_previous(self.out_path, self.header, s.replace))
        self.resumed = bool(own)  # out_path holds this evaluation (else, with replace, it is set aside)
        self.previous = own or dist.on_main(self._reusable)
        self.results: dict[str, dict] = {}
        self.doc: dict[str, Any] = {}

    def _reusable(self) -> dict:
        """The finished attacks of the first ``reuse_from`` file with this evaluation's header."""
        for cand in self.s.reuse_from:
            cand = Path(cand)
            if self.out_path is not None and cand.resolve() == self.out_path.resolve():
                continue
            try:
                prev = load_previous(cand, self.header, replace=True)
            except VirkitError:
                prev = {}
            if prev:
                self.note(f"reusing {', '.join(prev)} from {cand}: the same weights, images and settings")
                return {k: {**v, "reused_from": str(cand)} for k, v in prev.items()}
        return {}

    def note(self, msg: str) -> None:
        if self.s.progress and self.dist.is_main:
            print(f"virkit: {msg}", file=sys.stderr)

    def write(self) -> None:
        self.doc.clear()
        self.doc.update(build_document(self.header, self.results, self.s.attacks, self.classes, self.y_all))
        if self.out_path is not None and self.dist.is_main:
            try:
                atomic_write_json(self.out_path, self.doc)
            except OSError as e:
                raise VirkitError(
                    f"cannot write {self.out_path}: {e.strerror or e}; choose a writable output path"
                ) from None

    def _start(self) -> None:
        if self.out_path is None:
            return
        try:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            if self.s.replace and not self.resumed and self.out_path.is_file():
                os.replace(self.out_path, self.out_path.with_suffix(".prev.json"))
        except OSError as e:
            raise VirkitError(
                f"cannot write in {self.out_path.parent}: {e.strerror}; choose a writable output path"
            ) from None

    def run(self) -> dict:
        self.dist.on_main(self._start)
        for k in self.previous:  # attacks of an earlier call with the same settings stay in the file
            if k not in self.s.attacks:
                self.results[k] = self.previous[k]
        orig_device = model_device(self.model)
        moved = orig_device != self.dev
        if moved:
            self.model.to(self.dev)
        try:
            with (
                eval_mode(self.model),
                _autocast_off(self.dev),
                tf32_mode(self.dev, self.s.allow_tf32),
                input_grad_only(self.model),
            ):
                self._compile()
                nat_pred = self._natural()
                for name in self.s.attacks:
                    if name != "natural":
                        self._attack(name, nat_pred)
        finally:
            if moved:
                self.model.to(orig_device)
        self.dist.on_main(self.write)
        if self.dist.is_main:
            for w in self.doc["warnings"]:
                print(f"virkit: warning: {w}", file=sys.stderr)
        return self.doc

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        return _float_batch(x, self.images).to(self.dev)

    def _compile(self) -> None:
        """The model the attacks call: eager, or compiled (``runtime.compile`` says which ran:
        ``off``, ``compiled``, ``cudagraphs`` or ``fallback-eager`` after a compile failure)."""
        self.attack_model, status = self.model, "off"
        if self.s.compile != "off":
            example = self._batch(self.x_all[: min(len(self.y_all), self.s.batch_size)])
            mode = "reduce-overhead" if self.s.compile == "cudagraphs" else None
            self.attack_model = compile_model(self.model, example, dynamic=None, mode=mode, log=self.note)
            status = "fallback-eager" if self.attack_model is self.model else ("cudagraphs" if mode else "compiled")
        self.header["runtime"] = {"device": str(self.dev), "compile": status, "torch": torch.__version__}

    def _natural(self) -> torch.Tensor:
        """Natural predictions (always needed: attacks only run on the naturally correct examples)."""
        n, bs = len(self.y_all), self.s.batch_size
        nat_pred = torch.empty(n, dtype=torch.long)
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, n, bs):
                nat_pred[s : s + bs] = self.model(self._batch(self.x_all[s : s + bs])).argmax(1).cpu()
        seconds = time.perf_counter() - t0
        prev = self.previous.get("natural")
        if prev is not None and prev.get("predictions") == nat_pred.tolist():
            self.results["natural"] = prev
        elif "natural" in self.s.attacks:
            self.results["natural"] = {
                **summarize(nat_pred, self.y_all, self.num_classes),
                "seconds": seconds,
                "n_attacked": n,
                "settings": {"name": "natural"},
            }
        if "natural" in self.s.attacks:
            self.dist.on_main(self.write)
        return nat_pred

    def _attack(self, name: str, nat_pred: torch.Tensor) -> None:
        s, dist = self.s, self.dist
        atk = get_attack(
            name,
            eps=s.eps,
            seed=s.seed,
            **{
                **({"norm": s.norm} if s.norm != "Linf" else {}),
                **s.attack_overrides.get(name, {}),
                **({"bounds": None} if self.bounds is None else {}),
            },
        )
        settings = to_jsonable(atk.describe())
        correct = (nat_pred == self.y_all).nonzero().squeeze(1)  # in split order; attacked in full batches
        batches = [correct[b : b + s.batch_size] for b in range(0, len(correct), s.batch_size)]
        header = {k: v for k, v in self.header.items() if k not in ("extra", "model_source", "runtime")}
        key = {
            "settings": settings,
            "header": header,
            "batch_size": s.batch_size,
            "n_attacked": len(correct),
            "save_adv": s.save_adv is not None,
        }
        state = AttackState(self.out_path, name, key) if self.out_path is not None else None
        prev = self.previous.get(name)
        if (
            prev is not None
            and prev.get("settings") == settings
            and not (s.save_adv is not None and not adversarial_file(s.save_adv, name).is_file())
        ):
            self.results[name] = prev
            if state is not None:
                dist.on_main(state.clear)
            self.note(
                f"{name}: kept from {prev.get('reused_from') or self.out_path} (accuracy {100 * prev['accuracy']:.2f}%)"
            )
            return
        kept = dist.on_main(state.prepare) if state is not None else 0
        if kept and dist.is_main:  # always said: the evaluation continues, it does not start over
            print(f"virkit: {name}: {kept} of {len(batches)} batches kept from an interrupted run", file=sys.stderr)
        done = state.done() if state is not None else set()
        mine = [i for i in range(len(batches)) if i % dist.world_size == dist.rank and i not in done]
        records: dict[int, dict] = {}
        bar = _progress_bar(len(correct), name) if s.progress and dist.is_main else None
        if bar is not None:
            bar.update(sum(len(batches[i]) for i in done))

        def work():
            for i in mine:
                rec = self._run_batch(atk, name, batches[i])
                if state is not None:
                    state.save(i, rec)
                else:
                    records[i] = rec
                if bar is not None:
                    bar.update(len(batches[i]))

        try:
            dist.everywhere(work)
        finally:
            if bar is not None:
                bar.close()
        dist.on_main(lambda: self._merge(name, settings, batches, nat_pred, state, records))

    def _run_batch(self, atk, name: str, idx: torch.Tensor) -> dict:
        s = self.s
        xb = self._batch(self.x_all[idx.to(self.x_all.device)])
        yb = self.y_all[idx].to(self.dev)
        t0 = time.perf_counter()
        xa = atk(self.attack_model, xb, yb)
        check_adversarial(xa, xb, s.eps, self.bounds, name=name, norm=s.norm)
        with torch.no_grad():  # scored by the eager fp32 model, whatever the attack ran on
            rec: dict[str, Any] = {"pred": self.model(xa.float()).argmax(1).cpu()}
            details = getattr(atk, "details", None)
            if details:
                rec["components"] = {k: v.cpu() for k, v in details["components"].items()}
                rec["mode"] = details["mode"]
                rec["component_seconds"] = dict(getattr(atk, "timings", None) or {})
            if self.images:  # what survives saving the adversarial image with 8 bits per value
                q = quantize(xa.float())
                dist_q = per_example_norm(q - xb, s.norm)
                if s.norm == "Linf" and float(dist_q.max()) > s.eps + UINT8_SLACK + TOLERANCE:
                    raise AdversarialCheckError(
                        f"{name}: a quantized image lies {float(dist_q.max()):.6f} from its "
                        "input, more than eps + 0.5/255"
                    )
                rec["uint8_pred"] = self.model(q).argmax(1).cpu()
                rec["uint8_dist"] = dist_q.cpu()
            if s.save_adv is not None:
                rec["x_adv"] = xa.detach().float().cpu()
        rec["seconds"] = time.perf_counter() - t0
        return rec

    def _merge(self, name: str, settings: dict, batches: list, nat_pred: torch.Tensor, state, records) -> None:
        """Rank 0: the batches (from memory or the state files) into the attack's eval.json entry."""
        n = len(self.y_all)
        pred, seconds = nat_pred.clone(), 0.0
        comps: dict[str, torch.Tensor] = {}
        comp_seconds: dict[str, float] = {}
        mode = None
        upred, udist = nat_pred.clone(), torch.zeros(n)
        x_adv = _float_batch(self.x_all, self.images).cpu().clone() if self.s.save_adv is not None else None
        correct = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
        for i, idx in enumerate(batches):
            rec = records[i] if i in records else state.load(i)
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
            **summarize(pred, self.y_all, self.num_classes),
            "seconds": seconds,
            "n_attacked": len(correct),
            "settings": settings,
        }
        if comps:
            result["components"] = {
                "mode": mode,
                **{k: flags_summary(v, self.y_all, self.num_classes) for k, v in comps.items()},
            }
        if comp_seconds:  # where an AutoAttack's time went (summed over batches)
            result["component_seconds"] = comp_seconds
        if self.images and len(correct):
            ok = upred == self.y_all
            result["uint8"] = {
                **flags_summary(ok, self.y_all, self.num_classes),
                "rule": "round to the nearest /255 value, clip to [0, 1], predict again; the point may "
                "leave the eps-ball by at most 0.5/255 per pixel",
                "max_distance": float(udist.max()),
                "n_outside_ball": int(
                    (udist > self.s.eps + (TOLERANCE if self.s.norm == "Linf" else L2_TOLERANCE)).sum()
                ),
            }
        if x_adv is not None:
            self._save_adv(name, x_adv, nat_pred, pred, upred, correct)
        self.results[name] = result
        self.note(f"{name}: accuracy {100 * result['accuracy']:.2f}% ({seconds:.1f} s)")
        self.write()
        if state is not None:
            state.clear()

    def _save_adv(self, name, x_adv, nat_pred, pred, upred, correct) -> None:
        attacked = torch.zeros(len(self.y_all), dtype=torch.uint8)
        attacked[correct] = 1
        tensors = {
            "x_adv": x_adv,
            "labels": self.y_all,
            "clean_pred": nat_pred,
            "adv_pred": pred,
            "uint8_pred": upred,
            "attacked": attacked,
            "index": torch.arange(len(self.y_all)),
        }
        if self.images:
            tensors["x_adv_uint8"] = (x_adv * 255).round().clamp(0, 255).to(torch.uint8)
        meta = {
            "attack": name,
            "eps": self.s.eps,
            "norm": self.s.norm,
            "dataset": self.header["dataset"],
            "classes": self.classes,
            "data_fingerprint": self.header["data_fingerprint"],
            "model_fingerprint": self.header["model_fingerprint"],
        }
        write_adversarial(self.s.save_adv, name, tensors, meta, png=self.s.save_adv_png and self.images)


def _progress_bar(total: int, name: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=name, unit="img", leave=False, file=sys.stderr)


def _float_batch(x: torch.Tensor, images: bool) -> torch.Tensor:
    return x.float().div_(255.0) if images else x.float()


def _autocast_off(device: torch.device):
    """Autocast switched off on ``device``; a null context where the device has no autocast."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # pragma: no cover - device without autocast support
        return contextlib.nullcontext()
