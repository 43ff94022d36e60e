"""Export a virkit run for RobustBench: its weights in RobustBench's key layout and a model-info JSON.

``virkit export RUN --format robustbench`` writes, under ``--out`` (default ``RUN/export-robustbench``),
the two files a RobustBench model-zoo entry needs, in the layout of RobustBench's repository::

    models/<dataset>/<threat_model>/<name>.pt          {"state_dict": ...} (what robustbench's load_model reads)
    model_info/<dataset>/<threat_model>/<name>.json    name, architecture, eps, clean_acc, autoattack_acc, ...

Architectures both have: ``wrn-34-10`` and ``wrn-28-10`` (RobustBench's ``WideResNet(depth, widen_factor=10)``,
TRADES' layout) and ``preact-resnet18`` (RobustBench's ``PreActResNet(PreActBlockV2, [2, 2, 2, 2],
bn_before_fc=True)``). virkit's models normalize inside; RobustBench's models take [0, 1] inputs and
the ones trained on normalized inputs carry the statistics as buffers ``mu`` and ``sigma``
(``Rice2020OverfittingNet``: a WideResNet, ``Rice2020OverfittingNetL2``: that PreActResNet-18). A
run trained with ``--normalize dataset`` is exported with ``mu``/``sigma`` (load it into those
classes), one trained with ``--normalize none`` without (the plain architectures). Either way the
exported model gives virkit's logits on [0, 1] inputs.

The model info is filled from the run's eval.json: ``clean_acc`` from ``natural``, ``autoattack_acc``
(and ``reported``) from ``aa``. RobustBench's number is standard AutoAttack on the full test set; an
evaluation on fewer images, with a reduced budget or on the CIFAR-10 JPEG stand-in is refused unless
``allow_subset``, and then the footnote says what it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from virkit.errors import VirkitError

__all__ = [
    "ARCHITECTURES",
    "robustbench_state_dict",
    "robustbench_architecture",
    "export_robustbench",
    "model_info",
    "run_weights",
    "TEST_SET_SIZE",
]

#: virkit model -> (RobustBench's architecture label, WideResNet depth or None)
ARCHITECTURES = {
    "wrn-34-10": ("WideResNet-34-10", 34),
    "wrn-28-10": ("WideResNet-28-10", 28),
    "preact-resnet18": ("PreActResNet-18", None),
}
TEST_SET_SIZE = {"cifar10": 10000, "cifar100": 10000}
_AA_STANDARD = {
    "version": "standard",
    "apgd_steps": 100,
    "n_target_classes": 9,
    "fab_steps": 100,
    "square_queries": 5000,
}


def robustbench_state_dict(
    model: str, sd: dict, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> dict:
    """virkit's state dict of ``model`` (keys ``net.*`` of :class:`virkit.models.Normalized`, or bare)
    in RobustBench's key layout; ``mean``/``std`` become the buffers ``mu`` and ``sigma``."""
    if model not in ARCHITECTURES:
        raise VirkitError(f"RobustBench export knows {', '.join(ARCHITECTURES)}, not {model!r}")
    sd = {k[4:] if k.startswith("net.") else k: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    depth = ARCHITECTURES[model][1]
    per_group = (depth - 4) // 6 if depth else 2
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] in ("blocks", "layers"):
            i = int(parts[1])
            group, j = i // per_group + 1, i % per_group
            rest = parts[2:]
            if depth:  # WideResNet: block{g}.layer.{j}, the 1x1 shortcut is convShortcut
                rest = ["convShortcut"] + rest[1:] if rest[0] == "shortcut" else rest
                key = ".".join([f"block{group}", "layer", str(j), *rest])
            else:  # PreActResNet: layer{g}.{j}, the shortcut is a Sequential
                rest = ["shortcut", "0"] + rest[1:] if rest[0] == "shortcut" else rest
                key = ".".join([f"layer{group}", str(j), *rest])
        elif depth and parts[0] == "bn":
            key = ".".join(["bn1", *parts[1:]])
        else:
            key = k
        out[key] = v.detach().cpu().clone()
    if mean is not None and std is not None:
        out["mu"] = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        out["sigma"] = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return out


def robustbench_architecture(model: str, num_classes: int = 10, normalized: bool = True) -> nn.Module:
    """RobustBench's architecture for ``model`` (needs the robustbench package): for 10 classes with
    normalization its own ``Rice2020OverfittingNet(depth, 10)`` / ``Rice2020OverfittingNetL2``."""
    from virkit.evaluation.loading import robustbench_zoo

    robustbench_zoo()  # imports robustbench's model zoo (works around its pkg_resources import)
    import sys

    cifar10 = sys.modules["robustbench.model_zoo.cifar10"]
    from robustbench.model_zoo.architectures.resnet import PreActBlockV2, PreActResNet
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    depth = ARCHITECTURES[model][1]
    if normalized and num_classes == 10:
        return cifar10.Rice2020OverfittingNet(depth, 10) if depth else cifar10.Rice2020OverfittingNetL2()
    net = (
        WideResNet(depth=depth, num_classes=num_classes, widen_factor=10)
        if depth
        else PreActResNet(PreActBlockV2, [2, 2, 2, 2], num_classes=num_classes, bn_before_fc=True)
    )
    if normalized:
        raise VirkitError(
            "RobustBench has no normalized architecture class for "
            f"{num_classes} classes; the export's mu/sigma need a subclass like Rice2020OverfittingNet"
        )
    return net


def _eps_text(eps: float, norm: str) -> str:
    k = eps * 255
    if norm == "Linf" and abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:g}"


def model_info(doc: dict, name: str, architecture: str, allow_subset: bool = False) -> dict:
    """RobustBench's model-info fields from an eval.json document (refuses numbers RobustBench would not
    accept unless ``allow_subset``; the footnote then says what they are)."""
    atts = doc.get("attacks") or {}
    if "natural" not in atts or "aa" not in atts:
        raise VirkitError(
            f"the eval.json has no {'natural' if 'natural' not in atts else 'aa'} result; evaluate the "
            "run with --attacks natural,aa first (RobustBench reports clean and AutoAttack accuracy)"
        )
    aa = atts["aa"].get("settings") or {}
    if aa.get("version", "standard") != "standard" or aa.get("individual"):
        raise VirkitError(
            "RobustBench's autoattack_acc is standard AutoAttack; the eval.json's aa is the "
            f"{aa.get('version')}{' individual' if aa.get('individual') else ''} version"
        )
    ds, n = doc.get("dataset", ""), int(doc.get("n_examples", 0))
    if ds not in TEST_SET_SIZE:
        raise VirkitError(f"RobustBench has no {ds!r} leaderboard (cifar10, cifar100)")
    notes = []
    if n < TEST_SET_SIZE[ds]:
        notes.append(f"evaluated on {n} of the {TEST_SET_SIZE[ds]:,} test images (class-balanced seeded subset)")
    reduced = {k: aa.get(k) for k, v in _AA_STANDARD.items() if k != "version" and aa.get(k) != v}
    if reduced:
        notes.append("AutoAttack with a reduced budget (" + ", ".join(f"{k} {v}" for k, v in reduced.items()) + ")")
    if "stand-in" in str(doc.get("source", "")):
        notes.append("on the CIFAR-10 JPEG stand-in, not the original test set")
    if notes and not allow_subset:
        raise VirkitError(
            f"refusing to fill autoattack_acc: {'; '.join(notes)}; RobustBench's number is standard "
            "AutoAttack on the full test set (pass --allow-subset to export anyway, with a footnote)"
        )
    pct = lambda v: f"{100 * float(v):.2f}"
    info = {
        "link": "",
        "name": name,
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": ds,
        "venue": "",
        "architecture": architecture,
        "eps": _eps_text(float(doc["eps"]), doc.get("norm", "Linf")),
        "clean_acc": pct(atts["natural"]["accuracy"]),
        "reported": pct(atts["aa"]["accuracy"]),
        "autoattack_acc": pct(atts["aa"]["accuracy"]),
        "footnote": ("Evaluated by virkit: " + "; ".join(notes) + ".") if notes else "",
        "unreliable": False,
    }
    return info


def _load_run(run, which):
    from virkit.models import load_checkpoint, resolve_checkpoint_path
    from virkit.runs import RunDir

    src = Path(run)
    rd = RunDir(src if src.is_dir() else src.parent)
    if which is None:
        which = ((rd.read_config() or {}).get("eval_checkpoint") if src.is_dir() else None) or "last"
    ck = resolve_checkpoint_path(src, which if which in ("best", "last") else "last")
    model, cfg = load_checkpoint(ck, "cpu")
    return rd, ck, model, cfg


def export_robustbench(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    which: str | None = None,
    eval_file: str | os.PathLike | None = None,
    allow_subset: bool = False,
) -> dict:
    """Export ``run`` (a run directory or checkpoint): see the module docstring. Returns the paths
    written and the RobustBench class to load the weights into. Nothing is written on an error."""
    from virkit.io import atomic_torch_save, atomic_write_json

    rd, ck, model, cfg = _load_run(run, which)
    arch = cfg["model"]
    if arch not in ARCHITECTURES:
        raise VirkitError(f"RobustBench export needs one of {', '.join(ARCHITECTURES)}; {ck} holds a {arch!r} model")
    ev = Path(eval_file) if eval_file else rd.eval_file
    if not ev.is_file():
        raise VirkitError(
            f"{ev} does not exist; evaluate the run first: virkit evaluate --model {run} --attacks natural,aa"
        )
    try:
        doc = json.loads(ev.read_text())
    except (OSError, ValueError) as e:
        raise VirkitError(f"cannot read {ev}: {e}") from None
    name = name or rd.path.name
    threat = doc.get("norm", "Linf")
    info = model_info(doc, name, ARCHITECTURES[arch][0], allow_subset)
    meta = cfg.get("data") or {}
    normalized = cfg.get("normalize", "dataset") == "dataset" and meta.get("mean") is not None
    sd = robustbench_state_dict(
        arch, model.state_dict(), meta.get("mean") if normalized else None, meta.get("std") if normalized else None
    )
    root = Path(out) if out else rd.path / "export-robustbench"
    weights = root / "models" / info["dataset"] / threat / f"{name}.pt"
    info_path = root / "model_info" / info["dataset"] / threat / f"{name}.json"
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        info_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"state_dict": sd}, weights)
        atomic_write_json(info_path, info)
    except OSError as e:
        raise VirkitError(f"cannot write in {root}: {e.strerror or e}; choose a writable --out") from None
    depth = ARCHITECTURES[arch][1]
    if normalized:
        cls = f"Rice2020OverfittingNet(depth={depth}, widen_factor=10)" if depth else "Rice2020OverfittingNetL2()"
    else:
        cls = (
            f"WideResNet(depth={depth}, widen_factor=10)"
            if depth
            else "PreActResNet(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)"
        )
    return {
        "weights": str(weights),
        "model_info": str(info_path),
        "robustbench_class": cls,
        "autoattack_acc": info["autoattack_acc"],
        "clean_acc": info["clean_acc"],
        "footnote": info["footnote"] or "-",
    }


def run_weights(run: str | os.PathLike, path: str | os.PathLike, which: str | None = None) -> dict:
    """Write a run's network weights (without virkit's normalization wrapper) to ``path``
    (``.safetensors``) and return what ``virkit evaluate --model virkit.models.examples:<builder>`` then needs:
    ``weights`` and ``normalize`` (the run's mean and std, or None). Notebook 09 evaluates a virkit
    run this way, as an outside model."""
    from safetensors.torch import save_file

    _, _, model, cfg = _load_run(run, which)
    sd = {k[4:] if k.startswith("net.") else k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    meta = cfg.get("data") or {}
    norm = None
    if cfg.get("normalize", "dataset") == "dataset" and meta.get("mean") is not None:
        norm = ",".join(f"{v:.6g}" for v in [*meta["mean"], *meta["std"]])
    return {"weights": str(path), "normalize": norm, "model": cfg["model"]}
