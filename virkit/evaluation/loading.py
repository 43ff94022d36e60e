"""Building the model of an outside source (:mod:`virkit.evaluation.sources`): importing and calling
a ``module:callable``; RobustBench's architecture for ``robustbench:NAME`` from the ``robustbench``
package's model zoo, with its weights read from a local file (RobustBench's cache layout
``<model-dir>/<dataset>/<threat_model>/NAME.pt`` or ``--weights``; never downloaded); state-dict
files (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``) fitted to a
model with one error naming the keys that do not fit; and the digest of a weights file that
eval.json records.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
import sys
from collections.abc import Container
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from virkit.errors import VirkitError

__all__ = [
    "file_digest",
    "load_state_dict_file",
    "fit_state_dict",
    "load_callable",
    "robustbench_zoo",
    "robustbench_weights_path",
    "load_robustbench",
]

_RB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-1 (eval.json's ``weights_sha1`` and ``sha1``)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


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


def fit_state_dict(model: nn.Module, sd: dict, what: str, optional: Container[str] = ()) -> None:
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
def load_callable(spec: str) -> nn.Module:
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


def robustbench_zoo() -> tuple[dict[Any, Any], type[Enum], type[Enum]]:
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


def robustbench_weights_path(
    name: str, dataset: str, threat_model: str, model_dir: str | os.PathLike = "./models"
) -> Path:
    """Where RobustBench's ``load_model`` keeps the weights of ``name``."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def load_robustbench(
    spec: str, dataset: str, threat_model: str, weights: str | os.PathLike | None, model_dir: str | os.PathLike
) -> tuple[nn.Module, dict]:
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
        "weights_sha1": file_digest(path),
    }
