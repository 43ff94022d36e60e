"""Paper tables from run directories: ``virkit report RUN_DIRS... --table N [--format md|csv] [--out FILE]``.

:func:`collect_runs` reads each run's ``config.json`` and ``eval.json`` into one row per run;
:func:`make_table` averages over seeds (mean ± sample standard deviation, in %) and lays the numbers
out as Table ``N`` of the paper (Tables 1-7): rows in the paper's method order, columns in the
paper's attack order, ``–`` where an attack was not run. When the runs come from another
dataset or model than the paper's table (e.g. ``small-cnn`` on the CIFAR-10 stand-in), the layout
is kept and the caption names what the numbers actually are.

The tables' layouts come from :mod:`virkit.paper.tables`, every label from :mod:`virkit.paper.catalogue`;
:func:`mean_std` is the one *mean ± std* formatter of virkit.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import pandas as pd

from virkit.errors import VirkitError
from virkit.paper import catalogue as paper
from virkit.paper.report_evaluations import checkpoint_eval_file
from virkit.paper.tables import MAIN_TABLES, Table
from virkit.runs import RunDir, eval_state_root, expand_run_dirs

__all__ = [
    "collect_runs",
    "make_table",
    "to_markdown",
    "to_csv",
    "report_main",
    "mean_std",
    "MeanStd",
    "MAIN_TABLES",
    "checkpoint_eval_file",
]

DASH = "–"

# MAIN_TABLES (Tables 1-7) comes from virkit.paper.tables, row orders and spellings from virkit.paper.catalogue.
METHOD_TABLE_LABELS = paper.labels(paper.METHOD_SPELLINGS, "table_label")
ATTACK_TABLE_LABELS = paper.labels(paper.ATTACK_SPELLINGS, "table_label")
DATASET_LABELS = paper.labels(paper.DATASET_SPELLINGS)
MODEL_LABELS = paper.labels(paper.MODEL_SPELLINGS)
#: Tables 6-7 row labels, ``component [METHOD]``
ABLATION_LABELS = MappingProxyType(
    {r.method: t.row_label(r.method) for t in MAIN_TABLES.values() if t.ablation for r in t.rows}
)
HYPER = paper.HYPERPARAMETERS


def _warn(msg: str) -> None:
    print(f"virkit: warning: {msg}", file=sys.stderr)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def collect_runs(run_dirs: str | Path | Iterable[str | os.PathLike], checkpoint: str | None = None) -> pd.DataFrame:
    """One row per run directory with ``config.json`` and ``eval.json``: ``run_dir``, ``dataset``, ``model``,
    ``method``, ``seed``, ``alpha``, ``beta``, ``gamma``, ``source``, ``n_examples``, ``eps`` and one column per
    attack (accuracy as a fraction) plus ``worst_case``. A folder of run directories (a sweep's
    ``--out``) stands for the runs in it. Directories without ``eval.json`` (or with an unreadable
    one) are skipped with a warning; if none is left a :class:`VirkitError` is raised."""
    rows = []
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    for d in expand_run_dirs(dirs):
        p = Path(d)
        run = RunDir(p)
        if not p.is_dir():
            _warn(f"skipping {p}: not a directory")
            continue
        if not run.config_file.is_file():
            _warn(f"skipping {p}: no config.json (neither a virkit run directory nor a folder of them)")
            continue
        ev_file = checkpoint_eval_file(run, checkpoint)
        if not ev_file.is_file():
            what = f"no evaluation of {checkpoint}.pt ({ev_file.name} is missing)" if checkpoint else "no eval.json"
            _warn(f"skipping {p}: {what} (evaluate the run first: virkit evaluate --checkpoint {p})")
            continue
        state = eval_state_root(ev_file)
        if state.is_dir():  # an attack's per-batch state: the evaluation has not finished
            _warn(
                f"skipping {p}: {ev_file.name} is an unfinished evaluation (attacks in progress: "
                f"{', '.join(sorted(d.name for d in state.iterdir())) or 'unknown'}); "
                "rerun the command that wrote it to finish it"
            )
            continue
        try:
            cfg = _read_json(run.config_file)
            ev = _read_json(ev_file)
        except ValueError as e:
            _warn(f"skipping {p}: unreadable JSON ({e})")
            continue
        if not isinstance(cfg, dict) or not isinstance(ev, dict) or not isinstance(ev.get("attacks"), dict):
            _warn(f"skipping {p}: config.json or eval.json is not in virkit's format")
            continue
        resolved = cfg.get("resolved_hyperparameters") or {}
        row = {
            "run_dir": str(p),
            "dataset": cfg.get("dataset", ev.get("dataset")),
            "model": cfg.get("model"),
            "checkpoint": (ev.get("extra") or {}).get("checkpoint"),
            "method": cfg.get("method"),
            "seed": cfg.get("seed"),
            "preset": cfg.get("preset"),
            "source": ev.get("source", ""),
            "n_examples": ev.get("n_examples"),
            "eps": ev.get("eps"),
        }
        for h in HYPER:
            v = cfg.get(h)
            row[h] = resolved.get(h) if v is None else v
        for name, r in ev["attacks"].items():
            if isinstance(r, dict) and isinstance(r.get("accuracy"), (int, float)):
                row[name] = float(r["accuracy"])
        wc = ev.get("worst_case")
        if isinstance(wc, dict) and isinstance(wc.get("accuracy"), (int, float)):
            row["worst_case"] = float(wc["accuracy"])
        rows.append(row)
    if not rows:
        raise VirkitError(
            "no run directory with config.json and eval.json among "
            f"{', '.join(str(d) for d in dirs) or 'the arguments'}; train and evaluate runs first"
        )
    return pd.DataFrame(rows)


class MeanStd(NamedTuple):
    """A cell of a table: ``text`` (``"84.12 ± 0.16"``, ``"84.12"`` for one value, ``empty`` for none),
    ``mean`` and ``std`` (sample standard deviation; NaN for fewer than two values), in percent
    when ``scale`` is 100, and ``n``, the number of values."""

    text: str
    mean: float
    std: float
    n: int


def mean_std(values: Iterable[float | None], scale: float = 100.0, empty: str = DASH) -> MeanStd:
    """Mean ± sample standard deviation of accuracies given as fractions (None and NaN are left out),
    as the paper reports them (*mean ± std* over seeds, Sec. 5.5; ``scale=100``: percent, two decimals)."""
    vals = [scale * v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return MeanStd(empty, math.nan, math.nan, 0)
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return MeanStd(f"{mean:.2f}", mean, math.nan, 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return MeanStd(f"{mean:.2f} ± {std:.2f}", mean, std, len(vals))


def _hp_label(row) -> str:
    parts = []
    for h in HYPER:
        sym = paper.HP_SYMBOLS[h]
        v = row.get(h)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{sym}={v:g}" if isinstance(v, (int, float)) else f"{sym}={v}")
    return ", ".join(parts)


def _method_rank(m: str) -> tuple:
    return (paper.METHOD_ORDER.index(m) if m in paper.METHOD_ORDER else len(paper.METHOD_ORDER), str(m))


def make_table(df: pd.DataFrame, table: int, attacks: list[str] | None = None) -> pd.DataFrame:
    """Table ``table`` (1-7) of the paper from :func:`collect_runs` rows: a DataFrame of strings
    (``mean ± std`` in %, ``–`` for attacks not run), index = defense (or reweighting component),
    columns = attacks (a (dataset, attack) MultiIndex for Table 3): the paper's, or ``attacks``
    (names as in eval.json, e.g. ``["natural", "pgd20", "aa"]``). ``.attrs`` holds ``caption``,
    ``table`` and the numbers: ``mean``, ``std`` and ``n`` (seeds) as DataFrames of the same shape."""
    if table not in MAIN_TABLES:
        raise VirkitError(f"unknown table {table}; valid tables: {', '.join(map(str, MAIN_TABLES))}")
    if df is None or len(df) == 0:
        raise VirkitError("no runs to tabulate")
    spec = MAIN_TABLES[table]
    df = df.copy()
    for col in ("dataset", "model", "method"):
        if col not in df:
            df[col] = None
    for h in HYPER:
        if h not in df:
            df[h] = None
    # which datasets / model: the paper's if runs exist for them, else whatever the runs are
    paper_ds = list(spec.datasets)
    if df["dataset"].isin(paper_ds).any():
        df = df[df["dataset"].isin(paper_ds)]
        slots = list(paper_ds)
    else:
        present = sorted(df["dataset"].dropna().unique(), key=str)
        slots = present[: len(paper_ds)] if len(paper_ds) > 1 else present
        if len(paper_ds) > 1:
            slots += [None] * (len(paper_ds) - len(slots))
    if (df["model"] == spec.model).any():
        df = df[df["model"] == spec.model]
    order = None if spec.open_rows else list(spec.methods)
    if order is not None:
        df = df[df["method"].isin(order)]
        if len(df) == 0:
            raise VirkitError(f"Table {table} needs runs of the methods {', '.join(order)}; none were given")
    models = sorted(df["model"].dropna().unique(), key=str)
    datasets_used = sorted(df["dataset"].dropna().unique(), key=str)
    grouped_slots = len(paper_ds) > 1

    # hyperparameter settings: label rows with them only when one method has several
    df = df.assign(_hp=[_hp_label(r) for _, r in df.iterrows()])
    multi_hp = df.groupby("method")["_hp"].nunique()
    row_keys = []
    extra_keys = []
    if len(models) > 1:
        extra_keys.append("model")
    if not grouped_slots and len(datasets_used) > 1:
        extra_keys.append("dataset")
    for key, _ in df.groupby(["method", "_hp", *extra_keys], dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row_keys.append(key)

    def sort_key(k):
        rank = (order.index(k[0]) if k[0] in order else len(order), "") if order else _method_rank(k[0])
        return (*rank, *[str(v) for v in k[1:]])

    row_keys.sort(key=sort_key)

    def label(key) -> str:
        method, hp = key[0], key[1]
        base = spec.row_label(method)
        bits = []
        if multi_hp.get(method, 1) > 1 and hp:
            bits.append(hp)
        bits += [str(v) for v in key[2:]]
        return f"{base} ({'; '.join(bits)})" if bits else base

    attacks = list(attacks) if attacks else list(spec.attacks)
    if grouped_slots:
        columns = pd.MultiIndex.from_tuples(
            [(paper.dataset_label(s) if s else "(no runs)", paper.attack_label(a)) for s in slots for a in attacks]
        )
    else:
        columns = pd.Index([paper.attack_label(a) for a in attacks])
    cells, means, stds, ns = [], [], [], []
    for key in row_keys:
        sel = df[(df["method"] == key[0]) & (df["_hp"] == key[1])]
        for col, v in zip(extra_keys, key[2:]):
            sel = sel[sel[col] == v]
        r_cells, r_means, r_stds, r_ns = [], [], [], []
        for s in slots if grouped_slots else [None]:
            part = sel if s is None and not grouped_slots else sel[sel["dataset"] == s]
            for a in attacks:
                vals = part[a].tolist() if a in part else []
                c, m, sd, k = mean_std(vals)
                r_cells.append(c)
                r_means.append(m)
                r_stds.append(sd)
                r_ns.append(k)
        cells.append(r_cells)
        means.append(r_means)
        stds.append(r_stds)
        ns.append(r_ns)
    index = pd.Index([label(k) for k in row_keys], name="REWEIGHTING COMPONENT" if spec.ablation else "DEFENSE")
    out = pd.DataFrame(cells, index=index, columns=columns)
    out.attrs["table"] = table
    out.attrs["mean"] = pd.DataFrame(means, index=index, columns=columns)
    out.attrs["std"] = pd.DataFrame(stds, index=index, columns=columns)
    out.attrs["n"] = pd.DataFrame(ns, index=index, columns=columns)
    out.attrs["caption"] = _caption(
        table, spec, models, [s for s in slots if s] if grouped_slots else datasets_used, df
    )
    return out


def _caption(table: int, spec: Table, models: list, datasets: list, df: pd.DataFrame) -> str:
    paper_where = f"{paper.model_label(spec.model)} on " + " and ".join(paper.dataset_label(d) for d in spec.datasets)
    standin = "source" in df and df["source"].fillna("").str.contains("stand-in").any()
    ds = " and ".join(paper.dataset_label(d) for d in datasets) or "no dataset"
    if standin:
        ds += " (JPEG stand-in)"
    actual = f"{', '.join(paper.model_label(m) for m in models) or 'unknown model'} on {ds}"
    seeds = df.groupby(["method"])["seed"].nunique().max() if "seed" in df and len(df) else 0
    text = f"Table {table}: {spec.title}, {actual}"
    if actual.split(" (JPEG")[0] != paper_where:
        text += f" (the paper's Table {table}: {paper_where})"
    eps = sorted({round(float(e) * 255, 3) for e in df["eps"].dropna()}) if "eps" in df else []
    if eps:
        text += f"; eps {', '.join(f'{e:g}' for e in eps)}/255"
    ns = sorted({int(n) for n in df["n_examples"].dropna()}) if "n_examples" in df else []
    if ns:
        text += f"; {' / '.join(f'{n:,}' for n in ns)} test images"
    text += f"; mean ± std over up to {int(seeds) if seeds == seeds else 0} seed(s)"
    cks = sorted({str(c) for c in df["checkpoint"].dropna()}) if "checkpoint" in df else []
    if cks:  # last.pt vs best.pt (chosen on the validation split) differ by robust overfitting
        text += f"; checkpoint {' / '.join(cks)}"
    return text + "."


META_COLUMNS = (
    "run_dir",
    "dataset",
    "model",
    "checkpoint",
    "method",
    "seed",
    "preset",
    "source",
    "n_examples",
    "eps",
    *HYPER,
)


def paired_differences(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each run's accuracies minus those of the ``reference`` method's run with the same seed, dataset
    and model (the reference's rows are left out). Runs that share a burn-in with their reference
    (VIR-AT and its controls: identical up to the reweighting start) differ only by what follows it,
    so the paired difference drops the seed-to-seed spread they share; a run without a partner gets
    no number. :func:`make_table` of the result gives mean ± std of the differences over seeds."""
    if "method" not in df or not (df["method"] == reference).any():
        raise VirkitError(
            f"--paired-with {reference}: no run of method {reference} among the runs given; "
            "add its run directories or choose another method"
        )
    key = ["dataset", "model", "seed"]
    ref = df[df["method"] == reference]
    dup = ref[ref.duplicated(key, keep=False)]
    if len(dup):
        raise VirkitError(
            f"--paired-with {reference}: several runs of {reference} with the same seed "
            f"({', '.join(dup['run_dir'])}); give one per seed"
        )
    values = [c for c in df.columns if c not in META_COLUMNS]
    out = df[df["method"] != reference].copy()
    partner = out[key].merge(ref[key + values], on=key, how="left")
    for c in values:
        out[c] = out[c].to_numpy(dtype=float) - partner[c].to_numpy(dtype=float)
    return out


def _flat_columns(table: pd.DataFrame) -> list[str]:
    if isinstance(table.columns, pd.MultiIndex):
        return [" ".join(str(p) for p in c) for c in table.columns]
    return [str(c) for c in table.columns]


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown, its caption first."""
    cols = [table.index.name or ""] + _flat_columns(table)
    lines = []
    cap = table.attrs.get("caption")
    if cap:
        lines += [f"**{cap}**", ""]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(cols) - 1)) + "|")
    for idx, row in table.iterrows():
        cells = [str(idx).replace("|", "\\|")] + [str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame, path: str | os.PathLike | None = None) -> str:
    """The table as CSV (flat column names, the index as the first column); written to ``path`` if given."""
    flat = table.copy()
    flat.columns = _flat_columns(table)
    buf = io.StringIO()
    flat.to_csv(buf, index=True, index_label=table.index.name or "")
    text = buf.getvalue()
    if path is not None:
        from virkit.io import atomic_write_bytes

        atomic_write_bytes(path, text.encode())
    return text


def report_main(
    run_dirs: str | Path | Iterable[str | os.PathLike],
    table: int,
    fmt: str = "md",
    out: str | os.PathLike | None = None,
    checkpoint: str | None = None,
    attacks: str | list[str] | None = None,
    paired_with: str | None = None,
) -> int:
    """What ``virkit report`` runs: collect the runs, build Table ``table`` (with the columns
    ``attacks`` instead of the paper's, if given; with ``paired_with``, each run's difference to that
    method's run of the same seed, :func:`paired_differences`), render it as Markdown (``md``) or CSV
    (``csv``), write it to ``out`` (atomically) or print it to stdout. Returns 0 (the exit code);
    errors a person can fix raise :class:`VirkitError`."""
    if fmt not in ("md", "csv"):
        raise VirkitError(f"unknown format {fmt!r}; valid formats: md, csv")
    try:
        table = int(table)
    except (TypeError, ValueError):
        raise VirkitError(f"--table must be a number 1-7, got {table!r}") from None
    if table not in MAIN_TABLES:
        raise VirkitError(f"unknown table {table}; valid tables: {', '.join(map(str, MAIN_TABLES))}")
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    if attacks:
        from virkit.attacks import attack_names

        valid = ["worst_case", *attack_names()]
        bad = [a for a in attacks if a not in valid]
        if bad:
            raise VirkitError(f"--attacks names unknown attack(s) {', '.join(bad)}; valid: {', '.join(valid)}")
    df = collect_runs(run_dirs, checkpoint)
    if paired_with:
        df = paired_differences(df, paired_with)
    t = make_table(df, table, attacks)
    if paired_with:
        t.attrs["caption"] = (
            t.attrs["caption"][:-1] + f"; each cell: the run minus the {paired_with} run of the "
            "same seed, in percentage points (mean ± std of the paired differences)."
        )
    text = to_markdown(t) if fmt == "md" else to_csv(t)
    if out is not None:
        from virkit.io import atomic_write_bytes

        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out, text.encode())
        except OSError as e:
            raise VirkitError(f"cannot write {out}: {e.strerror or e}; choose a writable --out") from None
    else:
        sys.stdout.write(text)
    return 0
