"""Notebooks on disk and their parameters.

A notebook's parameters are the lines of its cell tagged ``parameters`` (papermill's convention),
each ``name = <python literal>  # help``. :func:`notebook_parameters` reads them with papermill's
own inspection of a Python parameters cell (the translator behind ``papermill.inspect_notebook``
and ``papermill --help-notebook``: names and help as papermill sees them when it injects values)
and checks on top that every statement of the cell is such a line and that papermill read every
one of them, so a line papermill could not read is an error here rather than a silently ignored
parameter. :func:`validate_parameters` checks values against
the defaults' types; every problem is one :class:`~virkit.errors.VirkitError` line.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virkit.errors import VirkitError
from virkit.notebooks.presets import preset_settings

__all__ = [
    "Parameter",
    "notebook_dir",
    "list_notebooks",
    "find_notebook",
    "notebook_parameters",
    "parse_parameter_value",
    "validate_parameters",
    "check_values",
    "resolve_notebooks",
    "planned_parameters",
]


def notebook_dir() -> Path:
    """``$VIRKIT_NOTEBOOKS`` or the repository's ``notebooks/`` folder."""
    env = os.environ.get("VIRKIT_NOTEBOOKS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "notebooks"


def list_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    folder = Path(folder) if folder else notebook_dir()
    if not folder.is_dir():
        raise VirkitError(
            f"notebook folder {folder} does not exist; run from a checkout of virkit or set VIRKIT_NOTEBOOKS"
        )
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("."))


def find_notebook(name: str) -> Path:
    """The file of notebook ``name`` (``07_ablations``): the one a Jupyter server says the kernel
    runs (``$JPY_SESSION_NAME``) if it has that name, else ``<cwd>/<name>.ipynb`` (papermill and
    JupyterLab run a notebook in its folder), else ``notebook_dir()/<name>.ipynb``."""
    fname = name if name.endswith(".ipynb") else f"{name}.ipynb"
    session = os.environ.get("JPY_SESSION_NAME")
    candidates = [Path(session)] if session and Path(session).name == fname else []
    candidates += [Path.cwd() / fname, notebook_dir() / fname]
    for c in candidates:
        if c.is_file():
            return c
    raise VirkitError(
        f"cannot find notebook {fname} (looked in {Path.cwd()} and {notebook_dir()}); run it from "
        "its folder or set VIRKIT_NOTEBOOKS"
    )


@dataclass
class Parameter:
    name: str
    default: Any
    help: str = ""

    @property
    def type_name(self) -> str:
        return _type_name(self.default)


def _type_name(v) -> str:
    if v is None:
        return "any"
    for t, name in (
        (bool, "bool"),
        (int, "int"),
        (float, "float"),
        (str, "str"),
        ((list, tuple), "list"),
        (dict, "dict"),
    ):
        if isinstance(v, t):
            return name
    return type(v).__name__


def _parameters_source(nb_path: Path) -> str:
    try:
        nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VirkitError(f"cannot read notebook {nb_path}: {e}") from None
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            return "".join(src) if isinstance(src, list) else src
    raise VirkitError(f"notebook {nb_path.name} has no cell tagged 'parameters'")


def notebook_parameters(nb_path: str | os.PathLike) -> dict[str, Parameter]:
    """Parameters of a notebook: ``{name: Parameter(default, help)}`` from its ``parameters`` cell.

    The cell may only hold ``name = <python literal>`` assignments, each optionally followed by a
    ``# help`` comment, all of which papermill must be able to read.
    """
    from papermill.translators import PythonTranslator

    nb_path = Path(nb_path)
    src = _parameters_source(nb_path)
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        raise VirkitError(f"parameters cell of {nb_path.name} is not valid Python: {e}") from None
    values: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise VirkitError(f"parameters cell of {nb_path.name}: line {node.lineno} is not 'name = literal'")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise VirkitError(f"parameters cell of {nb_path.name}: {node.targets[0].id} is not a literal") from None
    seen = {p.name: p for p in PythonTranslator.inspect({"source": src})}
    unread = [n for n in values if n not in seen]
    if unread:
        raise VirkitError(
            f"parameters cell of {nb_path.name}: papermill cannot read {', '.join(unread)} (one "
            "'name = literal  # help' per line, no '=' in the value or help)"
        )
    return {n: Parameter(n, v, seen[n].help) for n, v in values.items()}


def parse_parameter_value(text: str) -> Any:
    """Parse a command-line value: a Python/JSON literal (``3``, ``0.5``, ``[1, 2]``, ``True``,
    ``null``), else the text itself as a string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(t)
    except (ValueError, SyntaxError):
        pass
    try:
        return json.loads(t)
    except json.JSONDecodeError:
        return text


def _type_ok(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def check_values(params: Mapping[str, Parameter], values: Mapping[str, Any], notebook: str) -> dict:
    """``values`` checked against ``params`` (the notebook's), floats coerced and tuples made lists.

    Raises :class:`VirkitError` (one line) for an unknown name or a value of the wrong type."""
    out = {}
    for k, v in values.items():
        if k not in params:
            close = [p for p in params if p.startswith(k[:3])] or list(params)
            raise VirkitError(
                f"notebook {notebook}: unknown parameter {k!r}; valid parameters: "
                f"{', '.join(params)}" + (f" (did you mean {close[0]!r}?)" if close and close != list(params) else "")
            )
        d = params[k].default
        if not _type_ok(d, v):
            raise VirkitError(
                f"notebook {notebook}: parameter {k!r} must be {_type_name(d)} "
                f"(default {d!r}), got {type(v).__name__} {v!r}"
            )
        if isinstance(d, float) and isinstance(v, int):
            v = float(v)
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def validate_parameters(nb_path: str | os.PathLike, values: Mapping[str, Any]) -> dict:
    """Check ``values`` against the notebook's parameters; return them with floats coerced."""
    nb_path = Path(nb_path)
    return check_values(notebook_parameters(nb_path), values, nb_path.stem)


def resolve_notebooks(only: str | Sequence[str] | None, folder: str | os.PathLike | None = None) -> list[Path]:
    """All notebooks, or those selected by ``only``: names, stems, number prefixes or unique name
    fragments, comma-separated (``01,03``, ``02_gaussian_mixture_theory``, ``explorer``)."""
    nbs = list_notebooks(folder)
    if not only:
        return nbs
    items = [only] if isinstance(only, str) else list(only)
    keys = [k.strip() for item in items for k in str(item).split(",") if k.strip()]
    chosen: list[Path] = []
    for k in keys:
        k2 = k[:-6] if k.endswith(".ipynb") else k
        if k2.isdigit():
            match = [p for p in nbs if p.stem.startswith(k2.zfill(2) + "_")]
        else:
            match = [p for p in nbs if p.stem == k2] or [p for p in nbs if k2 in p.stem]
        if len(match) != 1:
            raise VirkitError(
                f"--only {k!r} matches {len(match)} notebooks; valid names: {', '.join(p.stem for p in nbs)}"
            )
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


def planned_parameters(
    nb_path: Path, preset: str, fig_dir: Path, runs_root: Path, overrides: Mapping[str, Any] | None = None
) -> dict:
    """The parameters a batch run passes to one notebook: common ones, the preset's, then overrides
    (``overrides`` may name parameters of several notebooks; each notebook gets those it has,
    a name no selected notebook has is an error raised by :func:`virkit.notebooks.run_notebooks`)."""
    params = notebook_parameters(nb_path)
    s = preset_settings(preset)
    values = {"preset": preset, "fig_dir": str(fig_dir), "runs_root": str(runs_root)}
    values.update(s["notebooks"].get(nb_path.stem, {}))
    for k, v in (overrides or {}).items():
        if k in params:
            values[k] = v
    values = {k: v for k, v in values.items() if k in params}
    return check_values(params, values, nb_path.stem)
