"""The eval.json document: its header (what was evaluated), per-attack summaries, the worst case,
fairness figures and gradient-masking warnings, and the rule for resuming or replacing an earlier one.
Also the two files an evaluation keeps beside it: the per-batch state of an attack in progress
(:class:`AttackState`) and the saved adversarial examples (:func:`write_adversarial`,
:func:`load_adversarial`).

:mod:`virkit.evaluation.evaluate` runs the attacks; this module owns what the files say.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from virkit.errors import VirkitError
from virkit.runs import eval_state_root

if TYPE_CHECKING:
    from torch.utils.data import TensorDataset

__all__ = [
    "EVAL_FORMAT",
    "ADV_FORMAT",
    "masking_warnings",
    "model_fingerprint",
    "tensors_fingerprint",
    "summarize",
    "build_document",
    "load_previous",
    "AttackState",
    "write_adversarial",
    "load_adversarial",
    "adversarial_file",
    "flags_summary",
]

EVAL_FORMAT = "virkit-eval-v1"


def _threat_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(iterative white-box, black-box) attack names, from the attack classes themselves. The
    single-step FGSM is left out of the first: a good black-box attack may beat it without any
    gradient masking."""
    from virkit.attacks import black_box_attacks, white_box_attacks

    return tuple(a for a in white_box_attacks() if a != "fgsm"), black_box_attacks()


def tensors_fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        h.update(t.reshape(-1).numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: nn.Module, extra: list[torch.Tensor] | None = None) -> str:
    """Fingerprint of the weights (``extra``: tensors that shape the outputs without being in the
    state dict, e.g. a normalization wrapped around an outside model)."""
    return tensors_fingerprint(
        [v.float() if v.is_floating_point() else v for v in model.state_dict().values()] + list(extra or [])
    )


def summarize(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    correct = pred == y
    conf = torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)
    per_class = []
    for c in range(num_classes):
        n_c = int(conf[c].sum())
        per_class.append(float(conf[c, c]) / n_c if n_c else None)
    return {
        "accuracy": float(correct.float().mean()) if len(y) else 0.0,
        "per_class_accuracy": per_class,
        "confusion_matrix": conf.tolist(),
        "robust": correct.int().tolist(),
        "predictions": pred.tolist(),
    }


def flags_summary(robust: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Accuracy, per-class accuracy and the 0/1 flags of per-example robust flags (bool, all examples)."""
    per_class = []
    for c in range(num_classes):
        m = y == c
        per_class.append(float(robust[m].float().mean()) if bool(m.any()) else None)
    return {
        "accuracy": float(robust.float().mean()) if len(y) else 0.0,
        "per_class_accuracy": per_class,
        "robust": robust.int().tolist(),
    }


def _fairness(per_class: list, classes: list[str]) -> dict:
    vals = [(v, c) for v, c in zip(per_class, classes) if v is not None]
    if not vals:
        return {"worst_class_accuracy": None, "worst_class": None, "best_minus_worst": None, "std_across_classes": None}
    accs = [v for v, _ in vals]
    worst_v, worst_c = min(vals, key=lambda t: t[0])
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    return {
        "worst_class_accuracy": worst_v,
        "worst_class": worst_c,
        "best_minus_worst": max(accs) - worst_v,
        "std_across_classes": std,
    }


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
    pct = lambda v: f"{100 * v:.2f}%"
    pgds = sorted((int(k[3:]), k) for k in acc if k.startswith("pgd") and k[3:].isdigit())
    ensembles = [k for k in ("aa", "aa-plus", "aa-rand", "mde") if k in acc]
    if "fgsm" in acc:
        for _, k in pgds:
            if acc[k] > acc["fgsm"]:
                out.append(
                    f"{k} accuracy {pct(acc[k])} is above fgsm accuracy {pct(acc['fgsm'])}: an iterative attack "
                    "weaker than a single step suggests gradient masking"
                )
    for ens in ensembles:
        if ens in acc:
            for _, k in pgds:
                if acc[ens] > acc[k]:
                    out.append(
                        f"{ens} accuracy {pct(acc[ens])} is above {k} accuracy {pct(acc[k])}: the stronger "
                        "attack did worse, check the evaluation for gradient masking or a bug"
                    )
    white, black = _threat_lists()
    for bb in black:
        if bb in acc:
            beaten = [k for k in white if k in acc and acc[bb] < acc[k]]
            if beaten:
                out.append(
                    f"black-box {bb} accuracy {pct(acc[bb])} is below white-box "
                    + ", ".join(f"{k} {pct(acc[k])}" for k in beaten)
                    + ": gradient-based attacks are being obstructed (gradient masking)"
                )
    for i, (s1, k1) in enumerate(pgds):
        for s2, k2 in pgds[i + 1 :]:
            if s2 > s1 and acc[k2] > acc[k1]:
                out.append(
                    f"{k2} accuracy {pct(acc[k2])} is above {k1} accuracy {pct(acc[k1])}: accuracy should not "
                    "rise with more attack steps (gradient masking)"
                )
    return out


def _header_mismatch(doc: dict, header: dict) -> str | None:
    """The first header field in which an earlier evaluation differs from this one, else None."""
    for k, v in header.items():
        if k in ("extra", "model_source", "runtime"):  # for the reader; the fingerprints identify model and data
            continue
        if k == "numerics":  # files written before TF32 was recorded are fp32 without TF32 (CPU only)
            there = doc.get("numerics") or {"dtype": "float32", "tf32": False}
            if there != v:
                return f"numerics {there} there, {v} here (--allow-tf32 differs)"
            continue
        if k == "norm":  # files written before L2 existed are L-inf
            if doc.get("norm", "Linf") != v:
                return f"norm {doc.get('norm', 'Linf')!r} there, {v!r} here"
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
            raise VirkitError(
                f"{path} holds an evaluation with other settings ({diff}); pass --replace to start "
                "a new one (the old file is kept as .prev.json) or --out to write elsewhere"
            )
        return {}
    atts = doc.get("attacks")
    return atts if isinstance(atts, dict) else {}


def build_document(
    header: dict, results: dict[str, dict], order: list[str], classes: list[str], labels: torch.Tensor
) -> dict:
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


# ------------------------------------------------------------------------------------------------
# The state of an attack in progress: one file per finished batch, in virkit.runs.eval_state_root
# ------------------------------------------------------------------------------------------------
class AttackState:
    """The finished batches of one attack of one evaluation: ``<eval_state_root>/<attack>/key.json`` (what
    the batches belong to: the eval.json header, the attack's settings, the batch layout) and
    ``b<index>.pt`` per finished batch (written atomically, read with ``weights_only=True``). A
    process killed in the middle leaves whole batch files; the next run with the same key skips
    them. Under torchrun every rank writes its own batches and rank 0 reads them all."""

    def __init__(self, out_path: Path, attack: str, key: dict):
        from virkit.io import to_jsonable

        self.dir = eval_state_root(out_path) / "".join(c if c.isalnum() or c in "-_." else "_" for c in attack)
        self.key = json.loads(json.dumps(to_jsonable(key), sort_keys=True))

    def prepare(self) -> int:
        """Keep the batches of the same evaluation, drop any other; returns how many are kept."""
        try:
            old = json.loads((self.dir / "key.json").read_text())
        except (OSError, ValueError):
            old = None
        if old != self.key:
            self.clear()
        from virkit.io import atomic_write_json

        self.dir.mkdir(parents=True, exist_ok=True)
        if old != self.key:
            atomic_write_json(self.dir / "key.json", self.key)
        return len(self.done())

    def done(self) -> set[int]:
        if not self.dir.is_dir():
            return set()
        return {int(p.stem[1:]) for p in self.dir.glob("b*.pt") if p.stem[1:].isdigit()}

    def save(self, index: int, record: dict) -> None:
        from virkit.io import atomic_torch_save

        atomic_torch_save(record, self.dir / f"b{index:06d}.pt")

    def load(self, index: int) -> dict:
        from virkit.io import safe_torch_load

        return safe_torch_load(self.dir / f"b{index:06d}.pt")

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()  # the state folder goes when its last attack is done
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------
# Saved adversarial examples (--save-adv DIR)
# ------------------------------------------------------------------------------------------------
ADV_FORMAT = "virkit-adv-v1"


def adversarial_file(folder: str | os.PathLike, attack: str) -> Path:
    """``DIR/<attack>/adversarial.safetensors``."""
    return Path(folder) / attack / "adversarial.safetensors"


def write_adversarial(
    folder: str | os.PathLike, attack: str, tensors: dict[str, torch.Tensor], meta: dict, png: bool = False
) -> Path:
    """Write one attack's adversarial examples: ``adversarial.safetensors`` holding ``x_adv`` (float32),
    ``x_adv_uint8`` (the PNG-exact copy: round to the nearest /255 value, clip), ``labels``,
    ``clean_pred``, ``adv_pred``, ``uint8_pred``, ``attacked`` and ``index`` (position in the
    evaluated subset), metadata as strings; with ``png`` one ``png/<i>.png`` per image as well."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise VirkitError("--save-adv needs the safetensors package: pip install safetensors") from None
    from virkit.io import atomic_write_bytes

    path = adversarial_file(folder, attack)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"format": ADV_FORMAT, **{k: json.dumps(v) for k, v in meta.items()}},
    )
    tmp.replace(path)
    if png:
        import io

        from PIL import Image

        q = tensors["x_adv_uint8"]
        if q.dim() == 4 and q.shape[1] in (1, 3):
            (path.parent / "png").mkdir(exist_ok=True)
            for i, img in enumerate(q):
                arr = img.permute(1, 2, 0).numpy()
                buf = io.BytesIO()
                Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
                atomic_write_bytes(path.parent / "png" / f"{i:06d}.png", buf.getvalue())
    return path


def load_adversarial(
    folder: str | os.PathLike, attack: str, quantized: bool = False, with_predictions: bool = False
) -> TensorDataset:
    """The adversarial examples of ``attack`` saved under ``folder`` (``--save-adv DIR``) as a
    ``torch.utils.data.TensorDataset`` of (image, label): float32 images as the attack returned them,
    or with ``quantized`` the uint8 copies as float32 /255 (what survives saving as an image).
    ``with_predictions`` adds the adversarial predictions as a third tensor."""
    from torch.utils.data import TensorDataset

    path = adversarial_file(folder, attack)
    if not path.is_file():
        have = sorted(p.parent.name for p in Path(folder).glob("*/adversarial.safetensors"))
        raise VirkitError(
            f"no adversarial examples of {attack!r} under {folder}"
            + (f" (there are: {', '.join(have)})" if have else "")
        )
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise VirkitError(
            "reading saved adversarial examples needs the safetensors package: pip install safetensors"
        ) from None
    t = load_file(str(path))
    x = t["x_adv_uint8"].float() / 255.0 if quantized else t["x_adv"]
    parts = [x, t["labels"]] + ([t["uint8_pred"] if quantized else t["adv_pred"]] if with_predictions else [])
    return TensorDataset(*parts)
