"""A visual report of one evaluation or several side by side: ``virkit report EVAL_OR_RUN... --html OUT``.

:func:`write_html_report` reads each evaluation (a virkit run directory, a folder holding an
``eval.json``, or the file itself: a virkit run, an outside model of ``virkit evaluate --model``)
and writes one self-contained HTML page: every figure is an embedded base64 PNG, the style sheet is
inline, nothing is fetched, so the file can be mailed or attached as it is. The page holds

* the headline table (accuracy under every attack and the worst case, in %),
* per-class robust accuracy bars per attack,
* the confusion matrix under the strongest attack (the one with the lowest accuracy),
* the worst classes and the fairness figures (worst class, best-minus-worst gap, spread),
* the gradient-masking warnings of eval.json,
* provenance: model source, checkpoint, data, eps, attacks and their settings, fingerprints, and the
  virkit version and commit that wrote the page.

The figures are virkit's own (:mod:`virkit.paper.figures`); the evaluations are read by
:mod:`virkit.paper.report_evaluations`; what eval.json holds is :mod:`virkit.evaluation.document`'s.
"""

from __future__ import annotations

import base64
import html
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from virkit.errors import VirkitError
from virkit.paper.report_evaluations import Evaluation, load_evaluation

__all__ = ["build_html_report", "write_html_report"]

SECTIONS = {
    "headline": "Headline",
    "per-class": "Per-class robust accuracy",
    "confusion": "Confusion under the strongest attack",
    "worst-classes": "Worst classes",
    "fairness": "Fairness",
    "warnings": "Gradient-masking checks",
    "provenance": "Provenance",
}


# ------------------------------------------------------------------------------------------------ helpers
def _pct(v) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}"


def _eps(doc: dict) -> str:
    eps = doc.get("eps")
    if not isinstance(eps, (int, float)):
        return "?"
    norm = doc.get("norm", "Linf")
    return f"{eps:g} ({norm})" if norm == "L2" else f"{round(eps * 255, 3):g}/255 ({norm})"


def _img(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    from virkit.paper.figures import figure_to_png

    data = base64.b64encode(figure_to_png(fig, dpi=110)).decode("ascii")
    plt.close(fig)
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'>"


def _table(head: list[str] | None, rows: list[list[str]], bold: list[list[bool]] | None = None) -> str:
    out = [
        "<table>"
        + ("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>" if head else "")
        + "<tbody>"
    ]
    for i, r in enumerate(rows):
        cells = []
        for j, c in enumerate(r):
            text = html.escape(str(c))
            cells.append(f"<td><b>{text}</b></td>" if bold and bold[i][j] else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def _union(evals: list[Evaluation]) -> list[str]:
    names: list[str] = []
    for e in evals:
        names += [a for a in e.attacks if a not in names]
    return names


# ------------------------------------------------------------------------------------------------ sections
def _headline(evals: list[Evaluation], attacks: list[str]) -> str:
    from virkit.paper.figures import attack_label

    cols = [*attacks, "worst_case"]
    head = ["evaluation", *[attack_label(a) if a != "worst_case" else "worst case" for a in cols], "test images", "eps"]
    vals = []
    for e in evals:
        atts = e.attacks
        row = [atts[a]["accuracy"] if a in atts else None for a in cols[:-1]]
        wc = e.doc.get("worst_case")
        row.append(wc.get("accuracy") if isinstance(wc, dict) else None)
        vals.append(row)
    best = [max((r[j] for r in vals if r[j] is not None), default=None) for j in range(len(cols))]
    rows = [
        [
            e.label,
            *[_pct(v) for v in r],
            f"{e.doc.get('n_examples', '?'):,}" if isinstance(e.doc.get("n_examples"), int) else "?",
            _eps(e.doc),
        ]
        for e, r in zip(evals, vals)
    ]
    bold = [
        [False, *[len(evals) > 1 and v is not None and v == best[j] for j, v in enumerate(r)], False, False]
        for r in vals
    ]
    text = (
        "<p>Accuracy in % on the evaluated test images; <i>worst case</i> counts an image robust only if "
        "every attack failed on it." + (" Bold: the best of the evaluations." if len(evals) > 1 else "") + "</p>"
    )
    return text + _table(head, rows, bold)


def _comparability(evals: list[Evaluation]) -> str:
    if len(evals) < 2:
        return ""
    diffs = []
    for key, what in (
        ("dataset", "dataset"),
        ("norm", "threat model"),
        ("eps", "eps"),
        ("data_fingerprint", "test images"),
    ):
        values = {json.dumps(e.doc.get(key)) for e in evals}
        if len(values) > 1:
            diffs.append(what)
    if not diffs:
        return "<p class='ok'>All evaluations attacked the same test images with the same eps.</p>"
    return (
        f"<p class='warn'>The evaluations differ in {', '.join(diffs)}: their numbers are not directly comparable.</p>"
    )


def _per_class(evals: list[Evaluation], attacks: list[str]) -> str:
    from virkit.paper.figures import attack_label, plot_per_class_accuracy

    parts = ["<p>Accuracy of each true class in %: the bars a mean hides.</p>"]
    if len(evals) == 1:
        e = evals[0]
        series = {
            attack_label(a): [100 * (v if v is not None else float("nan")) for v in r["per_class_accuracy"]]
            for a, r in e.attacks.items()
        }
        parts.append(
            _img(
                plot_per_class_accuracy(series, e.classes, title=f"{e.label}: accuracy per class"), "per-class accuracy"
            )
        )
        return "\n".join(parts)
    for a in attacks:
        series = {
            e.label: [100 * (v if v is not None else float("nan")) for v in e.attacks[a]["per_class_accuracy"]]
            for e in evals
            if a in e.attacks
        }
        classes = next(e.classes for e in evals if a in e.attacks)
        parts.append(
            _img(
                plot_per_class_accuracy(series, classes, title=f"{attack_label(a)}: accuracy per class"),
                f"per-class accuracy under {a}",
            )
        )
    return "\n".join(parts)


def _confusion(evals: list[Evaluation]) -> str:
    from virkit.paper.figures import attack_label, plot_confusion_matrices

    mats = {
        f"{e.label}\n{attack_label(e.strongest())}": e.attacks[e.strongest()]["confusion_matrix"]
        for e in evals
        if e.attacks[e.strongest()].get("confusion_matrix")
    }
    if not mats:
        return "<p>eval.json holds no confusion matrix.</p>"
    classes = evals[0].classes
    text = (
        "<p>Rows: true class, columns: the class predicted under the strongest attack (lowest accuracy), "
        "in % of the true class; the diagonal is the per-class robust accuracy.</p>"
    )
    return text + _img(plot_confusion_matrices(mats, classes), "confusion matrix under the strongest attack")


def _worst_classes(evals: list[Evaluation]) -> str:
    from virkit.paper.figures import attack_label

    head = [
        "evaluation",
        "attack",
        "three worst classes (%)",
        "best class (%)",
        "best − worst (points)",
        "std across classes (points)",
    ]
    rows = []
    for e in evals:
        for a in dict.fromkeys(["natural", e.strongest()]):
            if a not in e.attacks:
                continue
            per = [(v, c) for v, c in zip(e.attacks[a]["per_class_accuracy"], e.classes) if v is not None]
            if not per:
                continue
            worst = sorted(per)[:3]
            best = max(per)
            fair = (e.doc.get("fairness") or {}).get(a) or {}
            std = fair.get("std_across_classes")
            rows.append(
                [
                    e.label,
                    attack_label(a),
                    ", ".join(f"{c} {_pct(v)}" for v, c in worst),
                    f"{best[1]} {_pct(best[0])}",
                    _pct(best[0] - worst[0][0]),
                    _pct(std),
                ]
            )
    return "<p>Under natural inputs and under the strongest attack.</p>" + _table(head, rows)


def _fairness(evals: list[Evaluation]) -> str:
    from virkit.paper.figures import plot_fairness

    rows = []
    for e in evals:
        for a, r in e.attacks.items():
            per = sorted(v for v in r["per_class_accuracy"] if v is not None)
            if not per:
                continue
            fair = (e.doc.get("fairness") or {}).get(a) or {}
            std = fair.get("std_across_classes")
            rows.append(
                {
                    "method": e.label,
                    "attack": a,
                    "average": 100 * r["accuracy"],
                    "worst": 100 * per[0],
                    "worst3": 100 * sum(per[:3]) / len(per[:3]),
                    "std": 100 * std if std is not None else 0.0,
                }
            )
    if not rows:
        return "<p>No per-class accuracies.</p>"
    text = (
        "<p>Left: the mean accuracy of the three worst classes against the average (the dashed line is "
        "equality; points far below it hide weak classes). Right: the spread of class accuracies.</p>"
    )
    return text + _img(plot_fairness(rows), "fairness")


def _warnings(evals: list[Evaluation]) -> str:
    parts = [
        "<p>virkit's red flags for gradient masking (iterative attacks weaker than FGSM, ensembles weaker "
        "than PGD, black-box attacks stronger than white-box ones, accuracy rising with more steps); "
        "they can only fire for attacks that were run.</p>"
    ]
    for e in evals:
        ws = e.doc.get("warnings") or []
        ran = ", ".join(e.attacks)
        if ws:
            items = "".join(f"<li>{html.escape(w)}</li>" for w in ws)
            parts.append(f"<h3>{html.escape(e.label)}</h3><ul class='warn'>{items}</ul>")
        else:
            parts.append(
                f"<h3>{html.escape(e.label)}</h3><p class='ok'>No warning among the attacks run "
                f"({html.escape(ran)}).</p>"
            )
    return "\n".join(parts)


def _model_text(e: Evaluation) -> str:
    from virkit.paper.figures import dataset_label, method_label

    src = e.doc.get("model_source")
    if isinstance(src, dict) and src:
        return "; ".join(f"{k}: {v}" for k, v in src.items())
    c = e.config or {}
    if c:
        bits = [
            f"virkit run {e.path.resolve().parent}",
            f"method {method_label(c.get('method', '?'))}",
            f"model {c.get('model', '?')}",
            f"dataset {dataset_label(c.get('dataset', '?'))}",
            f"preset {c.get('preset', '?')}",
            f"seed {c.get('seed', '?')}",
            f"{c.get('epochs', '?')} epochs",
        ]
        if c.get("config_hash"):
            bits.append(f"config {c['config_hash']}")
        return "; ".join(bits)
    return str(e.path)


def _setting(key: str, v, norm: str) -> str:
    """An attack setting as people read it: L-inf radii and steps in /255."""
    if isinstance(v, float) and norm == "Linf" and key in ("eps", "step_size", "alpha"):
        return f"{round(v * 255, 3):g}/255"
    return f"{round(v, 6):g}" if isinstance(v, float) else str(v)


def _provenance(evals: list[Evaluation], command: str) -> str:
    from virkit.paper.figures import attack_label, dataset_label

    parts = []
    for e in evals:
        d = e.doc
        extra = d.get("extra") or {}
        attacks = []
        for a, r in e.attacks.items():
            s = {k: v for k, v in (r.get("settings") or {}).items() if k not in ("name",)}
            s_txt = ", ".join(f"{k} {_setting(k, v, d.get('norm', 'Linf'))}" for k, v in s.items())
            secs = r.get("seconds")
            attacks.append(
                f"{attack_label(a)}"
                + (f" ({s_txt})" if s_txt else "")
                + (f", {secs:.1f} s" if isinstance(secs, (int, float)) else "")
            )
        rt = d.get("runtime") or {}
        rows = [
            ["file", str(e.path.resolve())],
            ["model", _model_text(e)],
            ["checkpoint", str(extra.get("checkpoint", "–"))],
            ["model fingerprint", str(d.get("model_fingerprint", "?"))],
            ["data", f"{dataset_label(d.get('dataset', '?'))}: {d.get('source') or extra.get('dataset_source', '')}"],
            [
                "test images",
                f"{d.get('n_examples', '?')} (seed {d.get('seed', '?')}, fingerprint {d.get('data_fingerprint', '?')})",
            ],
            ["eps", _eps(d)],
            ["attacks", "; ".join(attacks)],
            ["numerics", json.dumps(d.get("numerics", {}))],
            ["runtime", ", ".join(f"{k} {v}" for k, v in rt.items()) or "–"],
        ]
        if e.note:
            rows.append(["note", e.note])
        parts.append(f"<h3>{html.escape(e.label)}</h3>" + _table(None, rows))
    from virkit.environment import __version__, git_commit

    git = git_commit()
    commit = (
        (git["commit"] + (" (with local changes)" if git["dirty"] else ""))
        if git["commit"]
        else "unknown (not a git checkout)"
    )
    parts.append(
        f"<p class='small'>Page written {html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} by virkit "
        f"{html.escape(__version__)}, commit {html.escape(commit)}, command "
        f"<code>{html.escape(command)}</code>.</p>"
    )
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:1em 1.5em;color:#222}"
    "h1{margin-bottom:0.2em}h2{border-bottom:1px solid #ccc;padding-bottom:0.2em;margin-top:1.6em}"
    "table{border-collapse:collapse;margin:0.6em 0;font-size:0.92em}"
    "td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}img{max-width:100%;display:block;margin:0.8em 0}"
    ".warn{color:#a40000}.ok{color:#1d6b2a}.small{font-size:0.85em;color:#555}"
    "code{background:#f4f4f4;padding:0 3px}nav a{margin-right:1em}"
)


def build_html_report(evals: list[Evaluation], title: str | None = None, command: str = "") -> str:
    """The page for ``evals`` (one, or several side by side) as a string."""
    if not evals:
        raise VirkitError("no evaluation to report; give run directories or eval.json files")
    attacks = _union(evals)
    title = title or (
        "virkit evaluation: " + evals[0].label if len(evals) == 1 else f"virkit evaluations: {len(evals)} side by side"
    )
    body = {
        "headline": _comparability(evals) + _headline(evals, attacks),
        "per-class": _per_class(evals, attacks),
        "confusion": _confusion(evals),
        "worst-classes": _worst_classes(evals),
        "fairness": _fairness(evals),
        "warnings": _warnings(evals),
        "provenance": _provenance(evals, command),
    }
    nav = " ".join(f"<a href='#{k}'>{html.escape(v)}</a>" for k, v in SECTIONS.items())
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='small'>" + html.escape(", ".join(e.label for e in evals)) + "</p>",
        f"<nav>{nav}</nav>",
    ]
    for key, heading in SECTIONS.items():
        out.append(f"<section id='{key}'><h2>{html.escape(heading)}</h2>\n{body[key]}\n</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_html_report(
    paths: str | Path | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    checkpoint: str | None = None,
    title: str | None = None,
) -> Path:
    """Read the evaluations at ``paths`` (:func:`load_evaluation`), write the page to ``out``
    (atomically; folders created) and return its path."""
    from virkit.io import atomic_write_bytes

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    evals = [load_evaluation(p, checkpoint) for p in paths]
    seen: dict[str, int] = {}
    for e in evals:  # every evaluation needs its own name on the page
        seen[e.label] = seen.get(e.label, 0) + 1
    for e in evals:
        if seen[e.label] > 1:
            e.label = f"{e.label} [{e.path.parent.name}]"
    command = " ".join(["virkit", *sys.argv[1:]]) if sys.argv and "virkit" in sys.argv[0] else ""
    page = build_html_report(evals, title, command or "write_html_report(" + ", ".join(map(str, paths)) + ")")
    out = Path(out)
    if out.is_dir():
        raise VirkitError(f"--html {out} is a folder; give a file name such as {out / 'report.html'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, page.encode("utf-8"))
        out.chmod(0o644)  # a page to share: readable by others, like any file a browser saves
    except OSError as e:
        raise VirkitError(f"cannot write {out}: {e.strerror or e}; choose a writable --html path") from None
    return out
