"""Model sources for ``virkit evaluate --model SOURCE``: where an evaluated model comes from.

=====================  ==================================================================================
source                 what virkit does
=====================  ==================================================================================
run dir / ``.pt``      a virkit run directory or checkpoint (:func:`virkit.evaluation.evaluate_run`)
``module:callable``    imports ``module`` (the current directory is on the path), calls ``callable()``,
                       which returns an ``nn.Module`` on [0, 1] images; ``--weights FILE`` loads a
                       state dict (``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only=True``)
``robustbench:NAME``   builds RobustBench's architecture for NAME (``--dataset``, ``--threat-model``)
                       from the ``robustbench`` package and loads its weights from ``--weights`` or
                       RobustBench's cache layout ``<model-dir>/<dataset>/<threat_model>/NAME.pt``
                       (default ``./models``); never downloads
a TorchScript file     ``torch.jit.load`` (a ``.pt`` written by ``torch.jit.save``)
=====================  ==================================================================================

Normalization stays inside the model; ``--normalize MEAN,STD`` wraps a model that expects
normalized inputs. :func:`check_model` probes a model on a few clean test images before anything
is written: a model that fails, returns the wrong number of classes, NaN, or probabilities
instead of logits is refused with one line. Building a ``module:callable`` or RobustBench model and
reading weights files is :mod:`virkit.evaluation.loading`'s business.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from virkit.errors import VirkitError
from virkit.evaluation.loading import file_digest, fit_state_dict, load_callable, load_robustbench, load_state_dict_file
from virkit.evaluation.settings import EvalSettings

if TYPE_CHECKING:
    from virkit.distributed import DistContext

__all__ = [
    "ModelSource",
    "classify",
    "load_source",
    "evaluate_source",
    "default_out",
    "source_slug",
    "check_model",
    "parse_normalize",
    "LogProbabilities",
    "NORMALIZATIONS",
]

#: named normalizations for ``--normalize``
NORMALIZATIONS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class ModelSource:
    """A loaded model and what eval.json records about it (``info``)."""

    kind: str  # "callable", "robustbench", "torchscript"
    spec: str
    model: nn.Module
    info: dict = field(default_factory=dict)
    slug: str = "model"  # a file-name-safe name (default output folder)


class LogProbabilities(nn.Module):
    """Wraps a model whose outputs are probabilities: ``log(p)`` are logits with the same softmax."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).float().clamp_min(1e-30).log()


def classify(spec: str) -> str:
    """``virkit``, ``robustbench``, ``torchscript`` or ``callable`` for a ``--model`` value."""
    if spec.startswith("robustbench:"):
        return "robustbench"
    p = Path(spec)
    if p.is_dir():
        return "virkit"
    if p.is_file():
        return "torchscript" if _is_torchscript(p) else "virkit"
    mod, sep, fn = spec.partition(":")
    if (
        sep
        and mod
        and fn
        and all(part.isidentifier() for part in mod.split("."))
        and all(part.isidentifier() for part in fn.split("."))
    ):
        return "callable"
    if os.sep in spec or p.suffix in (".pt", ".pth", ".ts", ".jit", ".ckpt"):
        raise VirkitError(
            f"--model {spec} does not exist; pass a virkit run directory or checkpoint, a TorchScript "
            "file, module:callable or robustbench:NAME"
        )
    raise VirkitError(
        f"--model {spec}: no such file or directory, and not module:callable or robustbench:NAME; "
        "pass a virkit run directory or checkpoint, a TorchScript file, module:callable or "
        "robustbench:NAME"
    )


def source_slug(spec: str) -> str:
    """A file-name-safe name for a ``--model`` value (the default output folder)."""
    if spec.startswith("robustbench:"):
        s = "robustbench-" + spec.split(":", 1)[1]
    elif ":" in spec and not Path(spec).exists():
        s = spec.replace(":", ".")
    else:
        s = Path(spec).stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def parse_normalize(text: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``--normalize``: a name (cifar10, cifar100, imagenet), ``MEAN,STD`` (one number each, for every
    channel) or ``M1,M2,M3,S1,S2,S3`` (the first half the means). Returns (mean, std) or None."""
    if text is None or text == "":
        return None
    if text in NORMALIZATIONS:
        return NORMALIZATIONS[text]
    try:
        vals = [float(v) for v in text.replace(":", ",").split(",") if v.strip()]
    except ValueError:
        vals = []
    if len(vals) < 2 or len(vals) % 2 or any(v <= 0 for v in vals[len(vals) // 2 :]):
        raise VirkitError(
            f"--normalize {text!r}: give MEAN,STD (e.g. 0.5,0.5), per-channel means then stds "
            f"(e.g. 0.4914,0.4822,0.4465,0.2471,0.2435,0.2616) or one of {', '.join(NORMALIZATIONS)}"
        )
    h = len(vals) // 2
    return tuple(vals[:h]), tuple(vals[h:])


# ------------------------------------------------------------------------------------------------ sources
def load_source(
    spec: str,
    *,
    weights: str | os.PathLike | None = None,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike = "./models",
    normalize: str | None = None,
    probabilities: bool = False,
) -> ModelSource:
    """Build the model of an outside source (``module:callable``, ``robustbench:NAME``, TorchScript),
    in eval mode on the CPU. Every problem is one :class:`VirkitError`."""
    kind = classify(spec)
    if kind == "virkit":
        raise VirkitError(f"{spec} is a virkit run or checkpoint; evaluate it with virkit.evaluation.evaluate_run")
    info: dict = {"kind": kind, "source": spec}
    if kind == "callable":
        model = load_callable(spec)
        if weights:
            fit_state_dict(model, load_state_dict_file(weights), f"the model of {spec}")
            info.update(weights=str(weights), weights_sha1=file_digest(Path(weights)))
    elif kind == "robustbench":
        model, extra = load_robustbench(spec, dataset, threat_model, weights, model_dir)
        info.update(extra)
    else:
        if weights:
            raise VirkitError(f"--weights: {spec} is a TorchScript file and carries its own weights")
        try:
            model = torch.jit.load(spec, map_location="cpu")
        except Exception as e:
            raise VirkitError(
                f"cannot load TorchScript file {spec} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160] if str(e) else ''})"
            ) from None
        info["sha1"] = file_digest(Path(spec))
    norm = parse_normalize(normalize)
    if norm is not None:
        from virkit.models import Normalized

        model = Normalized(model, *norm)
        info["normalize"] = {"mean": list(norm[0]), "std": list(norm[1])}
    if probabilities:
        model = LogProbabilities(model)
        info["outputs"] = "probabilities (evaluated as log-probabilities)"
    model.eval()
    return ModelSource(kind, spec, model, info, source_slug(spec))


# ------------------------------------------------------------------------------------------------ checks
@torch.no_grad()
def check_model(
    model: nn.Module,
    x: torch.Tensor,
    num_classes: int,
    dataset: str = "the dataset",
    what: str = "the model",
    log: Callable[[str], None] | None = None,
) -> None:
    """Probe ``model`` on clean inputs ``x`` (a few test images): one :class:`VirkitError` if it fails,
    does not return B x ``num_classes`` outputs, returns NaN/inf, or returns probabilities (rows in
    [0, 1] summing to 1, AutoAttack's ``check_range_output``). A model whose outputs change between
    two identical calls is reported through ``log`` (randomized: use ``aa-rand``)."""
    training = model.training
    model.eval()
    try:
        out = model(x)
        again = model(x)
    except Exception as e:
        raise VirkitError(
            f"{what} failed on a batch of test images of shape {tuple(x.shape)} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''}); it must take images in [0, 1]"
        ) from None
    finally:
        model.train(training)
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise VirkitError(
            f"{what} returned {shape} for {x.shape[0]} images; it must return logits of shape (batch, classes)"
        )
    if out.shape[1] != num_classes:
        raise VirkitError(
            f"{what} returns {out.shape[1]} outputs per image but {dataset} has {num_classes} "
            "classes; pass the matching --dataset or a model for this dataset"
        )
    bad = ~torch.isfinite(out).all(1)
    if bool(bad.any()):
        raise VirkitError(
            f"{what} returned NaN or inf on clean test images (first at image {int(bad.nonzero()[0])}); "
            "check the weights and --normalize"
        )
    out = out.float()
    if bool(out.max() < 1 + 1e-5) and bool(out.min() > -1e-5) and bool(((out.sum(1) - 1).abs() < 1e-5).all()):
        raise VirkitError(
            f"{what} seems to return probabilities (every row in [0, 1] and summing to 1), not logits; "
            "attacks need logits: return them, or pass --probabilities to attack log-probabilities"
        )
    if log is not None and not torch.allclose(out, again.float(), rtol=1e-4, atol=1e-5):
        log(
            f"{what} gives different outputs for the same input: a randomized model; evaluate it with aa-rand "
            "(EOT over 20 draws)"
        )


# ------------------------------------------------------------------------------------------------ evaluate
def default_out(slug: str, dataset: str, norm: str, root: str | os.PathLike = "runs/eval") -> Path:
    """Where ``virkit evaluate --model SOURCE`` writes without ``--out``:
    ``runs/eval/<source>-<dataset>-<norm>/eval.json``."""
    return Path(root) / f"{slug}-{dataset}-{norm}" / "eval.json"


def evaluate_source(
    source: str,
    settings: EvalSettings | None = None,
    *,
    weights: str | os.PathLike | None = None,
    dataset: str = "cifar10",
    threat_model: str | None = None,
    model_dir: str | os.PathLike = "./models",
    normalize: str | None = None,
    probabilities: bool = False,
    data_root: str | None = None,
    device: torch.device | str = "auto",
    out: str | os.PathLike | None = None,
    dist: DistContext | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate a model from outside virkit (:mod:`virkit.evaluation.sources`: ``module:callable`` with optional
    ``weights``, ``robustbench:NAME``, a TorchScript file) under ``settings`` (an
    :class:`virkit.evaluation.EvalSettings`; None: the defaults) on the seeded class-balanced draw
    of ``settings.n_examples`` test images of ``dataset`` (all of them when unset).

    ``threat_model`` (RobustBench's folder, Linf or L2) defaults to ``settings.norm``; ``out``
    defaults to :func:`default_out`. Every input is checked, and the model probed on test images
    (:func:`virkit.evaluation.sources.check_model`), before anything is written. eval.json records
    the source under ``model_source``."""
    from virkit.attacks import NORMS
    from virkit.data import load_dataset, test_subset
    from virkit.devices import resolve_device
    from virkit.distributed import DistContext
    from virkit.errors import check_choice
    from virkit.evaluation.evaluate import evaluate_model
    from virkit.evaluation.run import writer_lock

    dist = dist or DistContext()
    settings = EvalSettings.given(settings, "evaluate_source")  # checked when made: before anything is written
    norm, n_examples = settings.norm, settings.n_examples
    threat_model = threat_model or norm
    check_choice("threat model", threat_model, NORMS)
    src = load_source(
        source,
        weights=weights,
        dataset=dataset,
        threat_model=threat_model,
        model_dir=model_dir,
        normalize=normalize,
        probabilities=probabilities,
    )
    full = load_dataset(dataset, data_root, "test")
    if n_examples is not None and n_examples > len(full):
        raise VirkitError(
            f"--n-examples={n_examples} is more than the {dataset} test set has ({len(full)}); use at most {len(full)}"
        )
    dev = dist.device if dist.enabled and dist.device is not None else resolve_device(device)
    settings.check_device(dev)
    split = test_subset(full, n_examples).to(dev)
    model = src.model.to(dev)
    probe = split.float_images(torch.arange(min(len(split), 16), device=split.x.device)).to(dev)
    check_model(
        model,
        probe,
        full.num_classes,
        dataset,
        f"the model of {source}",
        log=(lambda m: print(f"virkit: warning: {m}", file=sys.stderr)) if dist.is_main else None,
    )
    nz = parse_normalize(normalize)
    fp_extra = [torch.tensor([*nz[0], *nz[1]])] if nz is not None else []
    if probabilities:
        fp_extra.append(torch.tensor([1.0]))
    out_path = Path(out) if out is not None else default_out(src.slug, dataset, norm)
    own = dataclasses.replace(
        settings.resolved(),
        n_examples=None,
        extra={**settings.extra, "test_subset": n_examples, "dataset_source": split.source},
    )
    lock = writer_lock(out_path, dist)
    try:
        doc = evaluate_model(
            model,
            split,
            own,
            device=dev,
            out_path=out_path,
            dist=dist,
            model_source=src.info,
            fingerprint_extra=fp_extra,
        )
    finally:
        lock.release()
    if log is not None:
        log(
            f"evaluation of {source} ({len(split)} test images): "
            + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in doc.get("attacks", {}).items())
        )
    return doc
