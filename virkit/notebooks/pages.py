"""The batch run's pages: each executed notebook as one static HTML page, and the figure index.

* :func:`export_html` writes an executed notebook as a static HTML page (figures embedded, no
  scripts) to ``figures/<preset>/notebooks/``, so the figures folder reads without Jupyter;
* :func:`write_index` lists every figure with its notebook and parameters (``index.md``,
  ``index.html``) and links the notebooks' pages.

:func:`virkit.notebooks.runner.run_notebooks` calls both at the end of a batch run.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

__all__ = ["PAGES_DIR", "export_html", "write_index"]

#: where :func:`run_notebooks` writes the executed notebooks' HTML pages, inside the figures folder
PAGES_DIR = "notebooks"

# nbconvert's lab template without its scripts (require.js, MathJax, mermaid and the widget manager from a
# CDN): the notebooks' text is Markdown with Unicode symbols and their figures are PNG outputs, so the page
# needs none of them; a widget (notebook 01's sliders) needs a kernel anyway and is named, not drawn
_STATIC_TEMPLATE = "\n".join(
    [
        "{%- extends 'index.html.j2' -%}",
        "{% block html_head_js %}{% endblock %}",
        "{% block html_head_js_mathjax %}{% endblock %}",
        "{% block html_head_js_mermaidjs %}{% endblock %}",
        "{% block jupyter_widgets %}{% endblock %}",
        "{% block data_widget_view scoped %}<div class='jp-OutputArea-output'><pre>(an interactive widget: open the "
        "notebook in JupyterLab to use it)</pre></div>{% endblock %}",
        "{% block footer %}</html>{% endblock %}",
        "",
    ]
)


def export_html(notebook: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the (executed) ``notebook`` as one static HTML page at ``out``: nbconvert's lab layout,
    every output figure embedded as a base64 image, the style inline, no scripts, so it opens in any
    browser without Jupyter or a network."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"virkit_static.html.j2": _STATIC_TEMPLATE})],
        template_file="virkit_static.html.j2",
        embed_images=True,
    )
    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": Path(notebook).stem}})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def write_index(fig_dir: str | os.PathLike, preset: str, out_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``index.md`` and ``index.html`` in ``fig_dir`` listing every figure in the manifests,
    grouped by notebook, with its parameters and caption, and linking the executed notebooks' pages
    (``<fig_dir>/notebooks/<name>.html``, :func:`export_html`)."""
    fig_dir = Path(fig_dir)
    records: list[dict] = []
    for m in sorted((fig_dir / ".manifest").glob("*.jsonl")):
        for line in m.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if all((fig_dir / f).is_file() for f in rec["files"]):
                    records.append(rec)
    by_nb: dict[str, list[dict]] = {}
    for r in records:
        by_nb.setdefault(r["notebook"], []).append(r)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    md = [
        f"# virkit figures: preset `{preset}`",
        "",
        f"{len(records)} figures from {len(by_nb)} notebooks, generated {stamp} by `virkit notebooks run "
        f"--preset {preset}`. Every figure exists as PNG and PDF.",
        "",
    ]
    if out_dir is not None:
        md += [f"Executed notebooks: `{out_dir}`.", ""]
    pages = {p.stem: f"{PAGES_DIR}/{p.name}" for p in sorted((fig_dir / PAGES_DIR).glob("*.html"))}
    if pages:
        md += [
            "Executed notebooks as pages that open without Jupyter: "
            + " · ".join(f"[{name}]({href})" for name, href in pages.items()),
            "",
        ]
    hp = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>virkit figures: {html.escape(preset)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "figure{margin:1.5em 0;border-bottom:1px solid #ddd;padding-bottom:1em}"
        "img{max-width:100%}code{background:#f4f4f4;padding:0 3px}"
        "details{font-size:0.85em;color:#444}</style></head><body>",
        f"<h1>virkit figures: preset <code>{html.escape(preset)}</code></h1>",
        f"<p>{len(records)} figures from {len(by_nb)} notebooks, generated {stamp}.</p>",
    ]
    if pages:
        hp.append(
            "<p>Executed notebooks as pages that open without Jupyter: "
            + " · ".join(f"<a href='{html.escape(href)}'>{html.escape(name)}</a>" for name, href in pages.items())
            + "</p>"
        )
    for nb, recs in by_nb.items():
        params = recs[0]["parameters"]
        ptxt = ", ".join(f"{k}={v!r}" for k, v in params.items())
        md += [f"## {nb}", "", f"Parameters: `{ptxt}`", ""]
        hp += [
            f"<h2 id='{html.escape(nb)}'>{html.escape(nb)}</h2>",
            f"<details><summary>parameters</summary><code>{html.escape(ptxt)}</code></details>",
        ]
        if nb in pages:
            md += [f"The executed notebook: [{pages[nb]}]({pages[nb]})", ""]
            hp.append(f"<p><a href='{html.escape(pages[nb])}'>the executed notebook</a></p>")
        for r in recs:
            png = next((f for f in r["files"] if f.endswith(".png")), r["files"][0])
            links = " · ".join(f"[{f.rsplit('.', 1)[-1].upper()}]({f})" for f in r["files"])
            md += [f"### {r['name']}", "", f"![{r['name']}]({png})", "", (r.get("caption") or "") + f" ({links})", ""]
            hl = " · ".join(
                f"<a href='{html.escape(f)}'>{html.escape(f.rsplit('.', 1)[-1].upper())}</a>" for f in r["files"]
            )
            hp += [
                f"<figure><img src='{html.escape(png)}' alt='{html.escape(r['name'])}'>"
                f"<figcaption><b>{html.escape(r['name'])}</b> ({html.escape(nb)}) "
                f"{html.escape(r.get('caption') or '')} {hl}</figcaption></figure>"
            ]
    hp.append("</body></html>")
    fig_dir.mkdir(parents=True, exist_ok=True)
    p_md, p_html = fig_dir / "index.md", fig_dir / "index.html"
    p_md.write_text("\n".join(md) + "\n", encoding="utf-8")
    p_html.write_text("\n".join(hp) + "\n", encoding="utf-8")
    return p_md, p_html
