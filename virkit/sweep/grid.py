"""Grid files: loading and validating them, and expanding a grid into named trials."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virkit.errors import VirkitError

__all__ = ["GRID_KEYS", "KINDS", "Grid", "Trial", "load_grid", "trial_name", "expand", "fmt_value"]

GRID_KEYS = ("name", "description", "table", "kind", "preset", "fixed", "grid", "points", "notebook")
KINDS = ("train", "notebook")
_TUPLE_FIELDS = ("lr_milestones", "eval_attacks")
_NAME_OK = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass
class Grid:
    name: str
    kind: str = "train"
    preset: str | None = "paper"
    fixed: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    points: list = field(default_factory=list)
    table: int | None = None
    description: str = ""
    notebook: Path | None = None
    path: Path | None = None


@dataclass
class Trial:
    name: str
    params: dict  # the varied parameters of this trial
    overrides: dict  # fixed + params: TrainConfig overrides (train) or notebook parameters
    run_dir: Path


def _train_fields() -> list[str]:
    from virkit.training import TrainConfig

    return [f for f in TrainConfig.__dataclass_fields__ if f != "preset"]


def _normalize(key: str, value: Any) -> Any:
    """YAML values -> TrainConfig values: 'a,b' or [a, b] for tuple fields."""
    if key in _TUPLE_FIELDS:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (int, float)):
            return [value]
    return value


def _check_names(names, valid: list[str], where: str, what: str) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise VirkitError(
            f"{where}: unknown {what}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid {what}s: {', '.join(valid)}"
        )


def load_grid(source: str | os.PathLike | dict, sets: list[str] | dict | None = None) -> Grid:
    """Read and validate a grid file (or an already-parsed dict). ``sets`` (``["key=value"]`` or a
    dict) override ``fixed``. Unknown keys or parameters raise :class:`VirkitError` naming them;
    values are checked per trial (a bad value fails that trial only)."""
    import yaml

    path = None
    if isinstance(source, dict):
        data = dict(source)
        where = "grid"
    else:
        path = Path(source)
        where = f"grid file {path}"
        if not path.is_file():
            raise VirkitError(f"{where} does not exist; see configs/grids/ for examples")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise VirkitError(f"cannot read {where}: {e}") from None
        except yaml.YAMLError as e:
            raise VirkitError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise VirkitError(f"{where} must be a mapping with keys {', '.join(GRID_KEYS)}")
    _check_names(list(data), list(GRID_KEYS), where, "key")
    kind = data.get("kind") or "train"
    if kind not in KINDS:
        raise VirkitError(f"{where}: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    fixed = data.get("fixed") or {}
    axes = data.get("grid") or {}
    points = data.get("points") or []
    if not isinstance(fixed, dict):
        raise VirkitError(f"{where}: 'fixed' must be a mapping of parameter: value")
    if not isinstance(axes, dict):
        raise VirkitError(f"{where}: 'grid' must be a mapping of parameter: [values]")
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise VirkitError(
                f"{where}: grid.{k} must be a non-empty list of values (put a single value under 'fixed')"
            )
    if not isinstance(points, list) or not all(isinstance(p, dict) and p for p in points):
        raise VirkitError(f"{where}: 'points' must be a list of non-empty mappings parameter: value")
    if isinstance(sets, dict):
        set_items = dict(sets)
    else:
        set_items = {}
        for s in sets or []:
            if "=" not in s:
                raise VirkitError(f"--set {s!r}: expected KEY=VALUE, e.g. --set epochs=1")
            k, v = s.split("=", 1)
            set_items[k.strip()] = yaml.safe_load(v) if v.strip() else None
    point_keys = list(dict.fromkeys(k for p in points for k in p))
    both = [k for k in point_keys if k in axes]
    if both:
        raise VirkitError(f"{where}: {', '.join(both)} given both in 'grid' and in 'points'; use one of them")
    varied = set(axes) | set(point_keys)
    clash = [k for k in set_items if k in varied]
    if clash:
        raise VirkitError(f"--set {', '.join(clash)}: varied by the grid; edit the grid file instead")
    fixed = {**fixed, **set_items}

    name = data.get("name") or (path.stem if path else "grid")
    if not isinstance(name, str) or _NAME_OK.search(name):
        raise VirkitError(f"{where}: name {name!r} may only hold letters, digits, '.', '_', '+' and '-'")
    table = data.get("table")
    if table is not None and (not isinstance(table, int) or isinstance(table, bool)):
        raise VirkitError(f"{where}: table must be a table number, got {table!r}")
    names = [k for k in fixed if k not in set_items] + list(axes) + point_keys
    notebook = None
    preset = data.get("preset")
    if kind == "train":
        from virkit.training import PRESETS

        _check_names(names, _train_fields(), where, "parameter")
        _check_names(list(set_items), _train_fields(), "--set", "parameter")
        preset = preset or "paper"
        if preset not in PRESETS:
            raise VirkitError(f"{where}: unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        if data.get("notebook") is not None:
            raise VirkitError(f"{where}: 'notebook' is only for kind: notebook")
    else:
        if preset is not None:
            raise VirkitError(f"{where}: 'preset' is for kind: train; give a notebook's preset under 'fixed'")
        nb = data.get("notebook")
        if not nb:
            raise VirkitError(f"{where}: kind: notebook needs 'notebook: path/to/notebook.ipynb'")
        notebook = Path(nb)
        if not notebook.is_absolute() and not notebook.is_file() and path is not None:
            notebook = path.parent / nb
        if not notebook.is_file():
            raise VirkitError(
                f"{where}: notebook {nb} not found (relative paths: to the working directory or the grid file)"
            )
        from virkit.notebooks import notebook_parameters

        valid = list(notebook_parameters(notebook))
        _check_names(names, valid, where, "notebook parameter")
        _check_names(list(set_items), valid, "--set", "notebook parameter")
    fixed = {k: _normalize(k, v) for k, v in fixed.items()}
    return Grid(
        name=name,
        kind=kind,
        preset=preset,
        fixed=fixed,
        grid=axes,
        points=points,
        table=table,
        description=str(data.get("description") or ""),
        notebook=notebook.resolve() if notebook else None,
        path=path,
    )


def fmt_value(v: Any) -> str:
    """A value as it appears in a trial's name and in the results table."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "+".join(fmt_value(x) for x in v)
    if v is None:
        return "none"
    return str(v)


def trial_name(params: dict) -> str:
    return "__".join(f"{k}={_NAME_OK.sub('_', fmt_value(v))}" for k, v in params.items()) or "base"


def expand(grid: Grid, out: str | os.PathLike) -> list[Trial]:
    """The grid's trials, in file order (``points`` outermost, then ``grid`` axes in order); a
    trial's name lists its point's parameters, then the grid's."""
    keys = list(grid.grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid.grid[k] for k in keys))] or [{}]
    trials, seen = [], {}
    for point in grid.points or [{}]:
        for combo in combos:
            params = {**combo, **point}
            order = [k for k in point if k not in keys] + keys
            params = {k: params[k] for k in order}
            name = trial_name(params)
            if name in seen:
                raise VirkitError(f"grid {grid.name}: two trials are both named {name!r} (duplicate values?)")
            seen[name] = True
            overrides = {**grid.fixed, **{k: _normalize(k, v) for k, v in params.items()}}
            trials.append(Trial(name, params, overrides, Path(out) / name))
    return trials
