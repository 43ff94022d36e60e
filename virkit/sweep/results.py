"""A grid's results: ``<out>/results.json`` (per trial: status, seconds, error, accuracies) and
``<out>/results.md`` (the paper table via :mod:`virkit.paper.report` when the grid names one, mean ± std
over seeds of every attack, the status of every trial)."""

from __future__ import annotations

from pathlib import Path

from virkit.sweep.grid import Grid, fmt_value

__all__ = ["simple_table", "write_results"]


def _mean_std(values: list[float]) -> str:
    from virkit.paper import mean_std  # pandas: only when results are written

    return mean_std(values, empty="").text


def simple_table(trials: list[dict]) -> str:
    """Markdown: one row per combination of the varied parameters other than ``seed``, mean ± std
    (accuracy %) over seeds of every evaluated attack."""
    done = [t for t in trials if t["status"] in ("finished", "skipped") and t.get("eval")]
    if not done:
        return "_no finished trial with an evaluation_\n"
    attacks = list(dict.fromkeys(a for t in done for a in t["eval"]))
    keys = list(dict.fromkeys(k for t in done for k in t["params"] if k != "seed"))
    groups: dict[tuple, list[dict]] = {}
    for t in done:
        groups.setdefault(tuple(fmt_value(t["params"].get(k, "")) for k in keys), []).append(t)
    head = keys + ["seeds"] + attacks
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, ts in groups.items():
        cells = list(g) + [str(len(ts))]
        cells += [_mean_std([t["eval"][a] for t in ts if t["eval"].get(a) is not None]) for a in attacks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _report_table(grid: Grid, run_dirs: list[str]) -> tuple[str | None, str | None]:
    """The paper table from :mod:`virkit.paper.report`; (markdown, None) or (None, why not)."""
    if grid.kind != "train" or not run_dirs or grid.table is None:
        return None, None
    try:
        from virkit.paper import collect_runs, make_table, to_markdown
    except ImportError as e:
        return None, f"virkit.paper.report not available ({e})"
    try:
        df = collect_runs(run_dirs)
        return str(to_markdown(make_table(df, grid.table))), None
    except Exception as e:
        return None, f"virkit.paper.report could not build table {grid.table}: {type(e).__name__}: {str(e)[:200]}"


def write_results(grid: Grid, out: Path, trials: list[dict], meta: dict) -> dict:
    from virkit.io import atomic_write_json

    counts = {s: sum(1 for t in trials if t["status"] == s) for s in ("finished", "skipped", "failed")}
    doc = {
        "grid": grid.name,
        "grid_file": str(grid.path) if grid.path else None,
        "kind": grid.kind,
        "preset": grid.preset,
        "table": grid.table,
        "fixed": grid.fixed,
        **meta,
        "counts": counts,
        "trials": trials,
    }
    atomic_write_json(out / "results.json", doc)
    ok_dirs = [t["run_dir"] for t in trials if t["status"] in ("finished", "skipped")]
    md = [f"# Grid {grid.name}", ""]
    if grid.description:
        md += [grid.description.strip(), ""]
    md += [
        f"{counts['finished']} trained, {counts['skipped']} already done (skipped), {counts['failed']} failed; "
        f"backend {meta.get('backend')}, {meta.get('wall_seconds', 0):.0f} s.",
        "",
    ]
    if grid.kind == "train":
        report_md, why = _report_table(grid, ok_dirs)
        if report_md:
            md += [f"## Table {grid.table}" if grid.table is not None else "## Results", "", report_md, ""]
        md += ["## Accuracy (%) by parameters, mean ± std over seeds", "", simple_table(trials)]
        if why:
            md += [f"_({why})_", ""]
    md += ["## Trials", "", "| trial | status | seconds | error |", "|---|---|---|---|"]
    for t in trials:
        err = (t.get("error") or "").replace("|", "\\|").replace("\n", " ")[:300]
        sec = f"{t['seconds']:.0f}" if isinstance(t.get("seconds"), (int, float)) else ""
        md.append(f"| {t['name']} | {t['status']} | {sec} | {err} |")
    from virkit.io import atomic_write_bytes

    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode())
    return doc
