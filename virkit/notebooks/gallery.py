"""The tracked figure gallery: a few key figures of one recorded ``make demo`` run, with provenance.

``virkit notebooks gallery`` (``make gallery``) copies the figures of :data:`GALLERY` from
``figures/demo/`` (ignored, rewritten by every ``make demo``) into ``figures/gallery/`` (tracked),
re-encoded as palette PNGs to stay small (the whole gallery under 2 MB), and writes
``figures/gallery/PROVENANCE.md``: the commit, date, machine, command and wall time of the batch run
they come from, and its headline numbers, all read from that run's ``summary.json``.

``virkit notebooks gallery --preset overfit`` does the same for notebook 10's batch run over the
robust-overfitting grid (:data:`OVERFIT_GALLERY`, into ``figures/gallery/overfit/``): that grid takes
hours of CPU, so its figures have their own folder and provenance, and a new ``make demo`` leaves them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from virkit.errors import VirkitError

__all__ = ["GALLERY", "OVERFIT_GALLERY", "gallery_figures", "make_gallery"]

#: (figure file stem in figures/<preset>/, what it shows)
GALLERY: tuple[tuple[str, str], ...] = (
    (
        "01_weight_explorer__weight_landscape",
        "VIR's weight w = α e^(−γ p_y) · KL + β over the true-class probability p_y and the KL divergence, "
        "beside GAIRAT's and MAIL's weights, at the paper's values.",
    ),
    (
        "04_confusion_matrices__figure1_confusion",
        "Figure 1: confusion matrices of natural training on clean images and of AT, TRADES and MART under "
        "attack; the diagonal is per-class accuracy.",
    ),
    (
        "06_robustness_tables__per_class_robust_accuracy",
        "Per-class accuracy under attack of every Table 1 method: how far the least robust classes lag "
        "behind the most robust ones.",
    ),
    (
        "06_robustness_tables__fairness",
        "Robustness against class disparity per method: the mean of the three worst classes against the "
        "average, and the spread of class accuracies.",
    ),
    (
        "05_class_weights__figure3_class_weights",
        "Figure 3: the sum of VIR sample weights per class over the reweighted epochs (top) and each "
        "class's share per epoch (bottom; burn-in epochs, w = 1, shaded).",
    ),
    (
        "02_gaussian_mixture_theory__theorem1_class_risks",
        "Appendix A, Theorem 1: the class risks of the optimal linear classifier on the Gaussian mixture, "
        "closed form against Monte Carlo, as the variance ratio K grows.",
    ),
)

#: notebook 10's figures over the control grid of configs/grids/control_overfit.yaml (preset overfit)
OVERFIT_GALLERY: tuple[tuple[str, str], ...] = (
    (
        "10_robust_overfitting__overfitting_curves",
        "Robust overfitting: validation PGD-20 accuracy per epoch of AT, the VIR-AT variants, GAIRAT and MAIL-AT (mean over "
        "seeds, band: min to max) beside lr × mean sample weight, the step the weights leave the optimizer.",
    ),
    (
        "10_robust_overfitting__last_and_best",
        "Each method's last and best checkpoint under AutoAttack, one marker per seed, against AT's last and "
        "best means; per-class AutoAttack accuracy of the last checkpoints, the classes weakest under AT first.",
    ),
)

_LIMIT = 2_000_000  # bytes, the whole gallery


def gallery_figures(preset: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The folder under ``figures/gallery/`` (``""``: the gallery itself) and the figures that a batch
    run of ``preset`` contributes: ``overfit``, notebook 10's; every other preset, the demo's."""
    return ("overfit", OVERFIT_GALLERY) if preset == "overfit" else ("", GALLERY)


def _shrink(src: Path, dst: Path) -> None:
    """Re-encode ``src`` as an optimised 256-colour PNG (plots have few colours)."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        im.save(dst, optimize=True)


def make_gallery(
    preset: str = "demo",
    fig_root: str | os.PathLike = "figures",
    out_root: str | os.PathLike = "runs/notebooks",
    dest: str | os.PathLike | None = None,
) -> Path:
    """Copy the figures of ``preset`` (:func:`gallery_figures`) from ``fig_root/preset`` into ``dest``
    (default ``fig_root/gallery``, or its subfolder for the preset) and write ``PROVENANCE.md`` from
    ``out_root/preset/summary.json``. Raises :class:`VirkitError` (one line, exit 2) when the batch
    run is missing, failed, or lacks a figure, before writing."""
    sub, gallery = gallery_figures(preset)
    src_dir = Path(fig_root) / preset
    summary_path = Path(out_root) / preset / "summary.json"
    dest = Path(dest) if dest is not None else Path(fig_root) / "gallery" / sub
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        raise VirkitError(
            f"no batch run of preset {preset!r} to take the gallery from ({summary_path} missing or "
            f"unreadable); run `virkit notebooks run --preset {preset}`{'' if sub else ' (make demo)'} first"
        ) from None
    failed = [r["name"] for r in summary.get("results", []) if r.get("status") != "ok"]
    if failed:
        raise VirkitError(
            f"the last {preset} batch run had failed notebooks ({', '.join(failed)}); fix and rerun "
            "it before making the gallery"
        )
    missing = [stem for stem, _ in gallery if not (src_dir / f"{stem}.png").is_file()]
    if missing:
        raise VirkitError(
            f"figures missing in {src_dir}: {', '.join(missing)}; rerun `virkit notebooks run --preset {preset}`"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.png"):
        old.unlink()
    for stem, _ in gallery:
        _shrink(src_dir / f"{stem}.png", dest / f"{stem}.png")
    total = sum(p.stat().st_size for p in dest.glob("*.png"))
    if total > _LIMIT:
        raise VirkitError(
            f"the gallery is {total / 1e6:.2f} MB, over its {_LIMIT / 1e6:.0f} MB limit; drop a "
            "figure from virkit.notebooks.gallery's lists"
        )
    prov = summary.get("provenance") or {}
    n_nb = len(summary.get("results", []))
    lines = [
        "# Provenance of the gallery",
        "",
        f"Copied by `virkit notebooks gallery{' --preset overfit' if sub else ''}` from one `virkit notebooks run "
        f"--preset {preset}` batch run{'' if sub else ' (`make demo`)'}, re-encoded as 256-colour PNGs "
        f"({total / 1e6:.2f} MB in all)."
        + (
            " Notebook 10 read the finished runs of the grid named by its `grid_dir` parameter (see the "
            "command); the grid's numbers and what they answer are in docs/RESULTS.md."
            if sub
            else ""
        ),
        "",
        "| | |",
        "| --- | --- |",
        f"| commit | `{prov.get('commit')}`{' (with uncommitted changes)' if prov.get('dirty') else ''} |",
        f"| date | {prov.get('date')} |",
        f"| machine | {prov.get('cpu')}, {prov.get('cores')} cores"
        f"{', bf16 instructions' if prov.get('native_bf16') else ''}"
        f"{', GPU ' + prov['gpu'] if prov.get('gpu') else ''} |",
        f"| software | Python {prov.get('python')}, torch {prov.get('torch')} |",
        *(
            [f"| demo tier | {(summary.get('tier') or {}).get('preset')}: {(summary.get('tier') or {}).get('why')} |"]
            if (summary.get("tier") or {}).get("why")
            else []
        ),
        f"| command | `{prov.get('command')}` |",
        f"| wall time | {float(summary.get('seconds', 0)) / 60:.1f} min, {n_nb} notebook{'s' if n_nb != 1 else ''} |",
        "",
        "Headline of that run (printed by the batch run, from its eval.json and history.jsonl files):",
        "",
    ]
    lines += [f"* {h.removeprefix('headline: ')}" for h in summary.get("headline") or []] or ["* (none recorded)"]
    lines += ["", "| figure | what it shows |", "| --- | --- |"]
    lines += [f"| [{stem}]({stem}.png) | {what} |" for stem, what in gallery]
    (dest / "PROVENANCE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dest / "provenance.json").write_text(
        json.dumps(
            {
                "preset": preset,
                "summary_seconds": summary.get("seconds"),
                "provenance": prov,
                "headline": summary.get("headline"),
                "figures": [s for s, _ in gallery],
            },
            indent=1,
        )
        + "\n"
    )
    return dest
