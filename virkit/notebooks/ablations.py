"""The ablation tables the notebooks show (notebook 07): Tables 6 and 7 (which VIR component matters)
and 9-12 (the hyperparameter sweeps of Appendix C), trained from shared runs and built as the paper
lays them out, plus the panels of accuracy against each swept hyperparameter.

What a table holds (rows, attacks, the grids of Tables 9-12) comes from :mod:`virkit.paper.tables`, every
label from :mod:`virkit.paper.catalogue`; Tables 6-7 are built by :func:`virkit.notebooks.analysis.paper_table`,
*mean ± std* cells by :func:`virkit.paper.report.mean_std`. Functions that train take a notebook context
(``ctx.run(method, seed=..., **overrides)``, ``ctx.robust_attack``), so the notebooks' runs are shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from virkit.errors import VirkitError
from virkit.notebooks.analysis import paper_table
from virkit.paper import catalogue as paper
from virkit.paper.tables import TABLES, Sweep

if TYPE_CHECKING:
    from virkit.notebooks.context import NotebookContext

__all__ = ["grid_parameter", "ablation_methods", "ablation_results"]

#: the order of the hyperparameters in a row of Tables 11-12 (α, γ, β)
_ROW_ORDER = ("alpha", "gamma", "beta")


def grid_parameter(hyperparameter: str, method: str) -> str:
    """The notebook parameter holding the extra values of ``hyperparameter`` for ``method``'s sweep:
    ``beta_grid_at`` (VIR-AT), ``gamma_grid_trades`` (VIR-TRADES)."""
    return f"{hyperparameter}_grid_{method.removeprefix('vir-')}"


def _sweep_points(sweep: Sweep, grids: Mapping) -> list[dict[str, float]]:
    """Full (alpha, gamma, beta) settings: the first swept hyperparameter over its grid plus the
    paper's value, then each other one over its grid (the paper's point is already in)."""
    d = sweep.defaults
    points = []
    for i, h in enumerate(sweep.swept):
        vals = {float(v) for v in grids.get(grid_parameter(h, sweep.method), [])}
        vals = vals | {d[h]} if i == 0 else vals - {d[h]}
        points += [{**d, h: v} for v in sorted(vals)]
    return points


def ablation_methods(table: int, components: Sequence[str]) -> list[str]:
    """The methods of Table 6 or 7's runs: the paper's first row (the pipeline with w = 1), the
    full method with each of ``components`` (``sv``, ``sd``; the controls ``mean1``, ``flat``), and
    the full method, e.g. ``["vir-at-w1", "vir-at-sv", "vir-at", "vir-at-flat"]``."""
    rows = TABLES[table].paper_rows
    base, full = rows[0].method, rows[-1].method
    return [
        base,
        *[f"{full}-{c}" for c in components if f"{full}-{c}" in paper.METHOD_SPELLINGS and c in ("sv", "sd")],
        full,
        *[f"{full}-{c}" for c in components if c not in ("sv", "sd")],
    ]


def ablation_results(
    ctx: NotebookContext, tables: Iterable[int], grids: Mapping[str, Sequence], seeds: Sequence[int]
) -> dict[int, dict]:
    """Train/reuse the runs of the ablation Tables 6, 7 and 9-12 and build each table.

    ``grids``: notebook 07's parameters (pass ``ctx.params``): ``components`` (Tables 6-7 rows
    besides the baseline and the full method, e.g. ``["sv", "sd"]``, and the scale-matched controls
    ``"mean1"``, ``"flat"``) and, for Tables 9-12, the
    extra values of each swept hyperparameter under :func:`grid_parameter`'s names
    (``beta_grid_at``, ``alpha_grid_trades``, ...); the paper's value (:data:`virkit.paper.tables.SWEEPS`)
    is always included. Returns {table: {"title", "table" (DataFrame of 'mean ± std' strings, %),
    "panels" (for :func:`virkit.paper.figures.plot_ablation`, Tables 9-12 only)}}.
    """
    import pandas as pd

    from virkit.paper import report

    out: dict[int, dict] = {}
    for t in tables:
        spec = TABLES.get(t)
        if spec is not None and spec.ablation:  # Tables 6-7: baseline, components, full method
            methods = ablation_methods(t, grids.get("components", []))
            runs = [ctx.run(m, seed=s) for m in methods for s in seeds]
            out[t] = {"title": spec.title, "table": paper_table(report.collect_runs(runs), t)}
            continue
        if spec is None or spec.sweep is None:
            raise VirkitError(f"ablation tables are 6, 7, 9, 10, 11, 12 (got {t})")
        sweep = spec.sweep
        d = sweep.defaults
        rows, records = [], []
        for pt in _sweep_points(sweep, grids):
            # the paper's value is the method default: pass only what differs, so the paper's point
            # reuses the main run of the method instead of training an identical one
            over = {k: v for k, v in pt.items() if v != d[k]}
            df = report.collect_runs([ctx.run(sweep.method, seed=s, **over) for s in seeds])
            attacks = [
                a
                for a in dict.fromkeys([*spec.attacks, ctx.robust_attack, *df.columns])
                if a in df.columns and a in paper.ATTACK_SPELLINGS and a != "worst_case"
            ]
            row = {
                "setting": ("★ " if pt == d else "") + ", ".join(f"{paper.HP_SYMBOLS[h]}={pt[h]:g}" for h in _ROW_ORDER)
            }
            stats = {}
            for a in attacks:
                cell = report.mean_std(df[a].tolist())
                row[paper.attack_label(a)] = cell.text
                stats[a] = (cell.mean, 0.0 if cell.std != cell.std else cell.std)
            rows.append(row)
            records.append((pt, stats))
        tab = pd.DataFrame(rows).set_index("setting")
        tab.index.name = "setting (★ = paper)"
        out[t] = {"title": spec.title, "table": tab, "panels": _sweep_panels(sweep, records)}
    return out


def _sweep_panels(sweep: Sweep, records: list[tuple[dict, dict]]) -> dict:
    """One panel per swept hyperparameter with at least two values: accuracy (mean, std) per attack
    against it, the others at the paper's values (each sweep holds the paper's point)."""
    d = sweep.defaults
    panels = {}
    for h in sweep.swept:
        sel = [r for r in records if all(r[0][o] == d[o] for o in sweep.swept if o != h)]
        if len(sel) < 2:
            continue
        sel = sorted(sel, key=lambda r: r[0][h])
        fixed = [o for o in (sweep.swept if len(sweep.swept) > 1 else _ROW_ORDER) if o != h]
        sym = paper.HP_SYMBOLS[h]
        panels[f"{sym} ({', '.join(paper.HP_SYMBOLS[o] for o in fixed)} at the paper's value)"] = {
            "x": [r[0][h] for r in sel],
            "xlabel": sym,
            "default": d[h],
            "series": {a: ([r[1][a][0] for r in sel], [r[1][a][1] for r in sel]) for a in sel[0][1]},
        }
    return panels
