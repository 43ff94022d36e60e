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
  example) and in [0, 1] before it is scored (:mod:`virkit.evaluation.checks`); a violation raises
  :class:`virkit.evaluation.checks.AdversarialCheckError`;
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
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from virkit.attacks import eval_mode, get_attack
from virkit.attacks.pgd import input_grad_only
from virkit.devices import compile_model, model_device, tf32_mode
from virkit.distributed import DistContext
from virkit.errors import VirkitError
from virkit.evaluation.batches import attack_batch, merge_records
from virkit.evaluation.document import (
    EVAL_FORMAT,
    AttackState,
    adversarial_file,
    build_document,
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

if TYPE_CHECKING:
    from virkit.data import Split

__all__ = [
    "evaluate_model",
    "EvalSettings",
    "DEFAULT_ATTACKS",
    "attack_list",
    "masking_warnings",
    "load_adversarial",
    "EVAL_FORMAT",
]


def evaluate_model(
    model: nn.Module,
    split: Split,
    settings: EvalSettings,
    *,
    device: torch.device | str | None = None,
    out_path: str | os.PathLike | None = None,
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
        return attack_batch(
            atk,
            name,
            self.attack_model,
            self.model,
            xb,
            yb,
            eps=s.eps,
            norm=s.norm,
            bounds=self.bounds,
            images=self.images,
            keep_adv=s.save_adv is not None,
        )

    def _merge(self, name: str, settings: dict, batches: list, nat_pred: torch.Tensor, state, records) -> None:
        """Rank 0: the batches (from memory or the state files) into the attack's eval.json entry."""
        x_adv = _float_batch(self.x_all, self.images).cpu().clone() if self.s.save_adv is not None else None
        result, tensors = merge_records(
            lambda i: records[i] if i in records else state.load(i),
            batches,
            nat_pred,
            self.y_all,
            self.num_classes,
            settings,
            eps=self.s.eps,
            norm=self.s.norm,
            images=self.images,
            x_adv=x_adv,
        )
        if tensors is not None:
            self._save_adv(name, tensors)
        self.results[name] = result
        self.note(f"{name}: accuracy {100 * result['accuracy']:.2f}% ({result['seconds']:.1f} s)")
        self.write()
        if state is not None:
            state.clear()

    def _save_adv(self, name: str, tensors: dict) -> None:
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
