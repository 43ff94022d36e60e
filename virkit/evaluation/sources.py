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
instead of logits is refused with one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from virkit.errors import VirkitError
from virkit.evaluation.settings import EvalSettings

__all__ = [
    "ModelSource",
    "classify",
    "robustbench_zoo",
    "load_source",
    "evaluate_source",
    "default_out",
    "source_slug",
    "load_state_dict_file",
    "fit_state_dict",
    "check_model",
    "parse_normalize",
    "LogProbabilities",
    "NORMALIZATIONS",
    "robustbench_weights_path",
]

#: named normalizations for ``--normalize``
NORMALIZATIONS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_RB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}


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

    def forward(self, x):
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


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def parse_normalize(text: str | None):
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


# ------------------------------------------------------------------------------------------------ weights
def load_state_dict_file(path: str | os.PathLike) -> dict:
    """A state dict from ``.safetensors`` or a ``.pt``/``.pth``/``.bin`` file (``weights_only=True``).
    A checkpoint holding it under ``state_dict``/``model``/``last`` is unwrapped; ``module.`` prefixes
    (DataParallel) are removed."""
    from virkit.io import safe_torch_load

    p = Path(path)
    if not p.is_file():
        raise VirkitError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise VirkitError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        try:
            sd = load_file(str(p), device="cpu")
        except Exception as e:
            raise VirkitError(f"cannot read {p}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    else:
        sd = safe_torch_load(p)
        for key in ("state_dict", "model", "last"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict) and not torch.is_tensor(sd.get(key)):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise VirkitError(
            f"{p} holds no state dict (a mapping of names to tensors); save one with "
            "torch.save(model.state_dict(), FILE) or safetensors"
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def fit_state_dict(model: nn.Module, sd: dict, what: str, optional=()) -> None:
    """Load ``sd`` strictly; on a mismatch one :class:`VirkitError` naming the first five missing and
    unexpected keys (and the first shape mismatch). Keys in ``optional`` may be missing (buffers a
    constructor sets, such as RobustBench's normalization constants)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        first5 = lambda keys: ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {first5(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {first5(unexpected)}")
        if shapes:
            k = shapes[0]
            parts.append(f"size mismatch for {k}: {list(sd[k].shape)} in the file, {list(own[k].shape)} in the model")
        raise VirkitError(f"the weights do not fit {what} ({'; '.join(parts)}); pass the weights of this architecture")
    model.load_state_dict(sd, strict=not any(k not in sd for k in own))


# ------------------------------------------------------------------------------------------------ sources
def _load_callable(spec: str) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise VirkitError(
            f"--model {spec}: cannot import module {mod_name!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''}); check the name and that it is on "
            "PYTHONPATH or in the current directory"
        ) from None
    obj = mod
    for part in fn_name.split("."):
        if not hasattr(obj, part):
            raise VirkitError(f"--model {spec}: module {mod_name!r} has no attribute {fn_name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise VirkitError(
            f"--model {spec}: {fn_name!r} is not callable; name a function or class that returns an nn.Module"
        )
    try:
        model = obj() if not isinstance(obj, nn.Module) else obj
    except Exception as e:
        raise VirkitError(
            f"--model {spec}: calling {fn_name}() failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''})"
        ) from None
    if not isinstance(model, nn.Module):
        raise VirkitError(
            f"--model {spec}: {fn_name}() returned {type(model).__name__}, not a torch.nn.Module; "
            "return the model (taking images in [0, 1], returning logits)"
        )
    return model


def robustbench_zoo():
    """RobustBench's model dictionaries. robustbench 1.1's package ``__init__`` imports its data loaders,
    which import ``pkg_resources`` (gone from setuptools >= 81); when that fails the model zoo is
    imported under a bare ``robustbench`` package module (its loaders and download helpers are never
    imported; virkit does not use them). timm's import-time warnings are silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
            from robustbench.model_zoo.models import model_dicts

            return model_dicts, BenchmarkDataset, ThreatModel
        except ImportError as e:
            if "pkg_resources" not in str(e):
                raise VirkitError(
                    f"robustbench:NAME needs the robustbench package ({e}): pip install 'virkit[robustbench]'"
                ) from None
        import importlib.util
        import types

        spec = importlib.util.find_spec("robustbench")
        if spec is None or not spec.submodule_search_locations:  # pragma: no cover
            raise VirkitError("robustbench:NAME needs the robustbench package: pip install 'virkit[robustbench]'")
        for k in [k for k in sys.modules if k == "robustbench" or k.startswith("robustbench.")]:
            del sys.modules[k]
        stub = types.ModuleType("robustbench")
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__file__ = spec.origin
        sys.modules["robustbench"] = stub
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.model_zoo.models import model_dicts

        return model_dicts, BenchmarkDataset, ThreatModel


def robustbench_weights_path(name: str, dataset: str, threat_model: str, model_dir="./models") -> Path:
    """Where RobustBench's ``load_model`` keeps the weights of ``name``."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def _load_robustbench(spec: str, dataset: str, threat_model: str, weights, model_dir) -> tuple[nn.Module, dict]:
    name = spec.split(":", 1)[1]
    if dataset not in _RB_DATASETS:
        raise VirkitError(
            f"robustbench:{name}: virkit evaluates RobustBench's cifar10 and cifar100 models, not --dataset {dataset}"
        )
    model_dicts, BenchmarkDataset, ThreatModel = robustbench_zoo()
    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    except (ValueError, KeyError):
        raise VirkitError(f"RobustBench has no {dataset} {threat_model} models; --threat-model is Linf or L2") from None
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=3)
        raise VirkitError(
            f"RobustBench has no {dataset} {threat_model} model {name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else f" ({len(zoo)} models there)")
        )
    entry = zoo[name]
    if isinstance(entry.get("gdrive_id"), list):
        raise VirkitError(
            f"robustbench:{name} is an ensemble of several checkpoints; virkit loads single-checkpoint "
            "models (wrap the ensemble in a module:callable)"
        )
    path = Path(weights) if weights else robustbench_weights_path(name, dataset, threat_model, model_dir)
    if not path.is_file():
        raise VirkitError(
            f"weights of robustbench:{name} not found at {path} (virkit never downloads); put "
            f"RobustBench's file there (robustbench.utils.load_model('{name}', dataset='{dataset}', "
            f"threat_model='{threat_model}') saves it as models/{dataset}/{threat_model}/{name}.pt), "
            "or pass --weights FILE"
        )
    try:
        model = entry["model"]()
    except Exception as e:
        raise VirkitError(f"building RobustBench's architecture of {name} failed ({type(e).__name__}: {e})") from None
    sd = load_state_dict_file(path)
    for prefix in ("module.", "model."):  # as RobustBench's load_model
        if all(k.startswith(prefix) for k in sd) and not all(k.startswith(prefix) for k in model.state_dict()):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    fit_state_dict(
        model,
        sd,
        f"RobustBench's architecture of {name}",
        optional=("mu", "sigma", "mean", "std", "normalize.mean", "normalize.std"),
    )
    return model, {
        "robustbench_name": name,
        "threat_model": threat_model,
        "weights": str(path),
        "weights_sha1": _file_digest(path),
    }


def load_source(
    spec: str,
    *,
    weights=None,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir="./models",
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
        model = _load_callable(spec)
        if weights:
            fit_state_dict(model, load_state_dict_file(weights), f"the model of {spec}")
            info.update(weights=str(weights), weights_sha1=_file_digest(Path(weights)))
    elif kind == "robustbench":
        model, extra = _load_robustbench(spec, dataset, threat_model, weights, model_dir)
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
        info["sha1"] = _file_digest(Path(spec))
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
    model: nn.Module, x: torch.Tensor, num_classes: int, dataset: str = "the dataset", what: str = "the model", log=None
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
def default_out(slug: str, dataset: str, norm: str, root="runs/eval") -> Path:
    """Where ``virkit evaluate --model SOURCE`` writes without ``--out``:
    ``runs/eval/<source>-<dataset>-<norm>/eval.json``."""
    return Path(root) / f"{slug}-{dataset}-{norm}" / "eval.json"


def evaluate_source(
    source: str,
    settings: EvalSettings | None = None,
    *,
    weights=None,
    dataset: str = "cifar10",
    threat_model: str | None = None,
    model_dir="./models",
    normalize: str | None = None,
    probabilities: bool = False,
    data_root: str | None = None,
    device="auto",
    out=None,
    dist=None,
    log=None,
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
