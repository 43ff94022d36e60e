"""The analyses the notebooks show: evaluation tables, the paper's Tables 1-5 built from shared runs,
per-class and fairness summaries, weights against vulnerability, the Theorem 1 check and attributions
of the most and least vulnerable test images; the ablation Tables 6, 7 and 9-12 (notebook 07) are built
in :mod:`virkit.notebooks.ablations`.

What a table holds (datasets, model, attacks, rows) comes from :mod:`virkit.paper.tables`, every label
from :mod:`virkit.paper.catalogue`; *mean ± std* cells from :func:`virkit.paper.report.mean_std`.
Functions that train take a :class:`virkit.notebooks.NotebookContext` (``ctx.run``), so the notebooks' runs are shared.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from virkit.errors import VirkitError
from virkit.paper import catalogue as paper
from virkit.paper.tables import TABLES, Table

if TYPE_CHECKING:
    import pandas as pd
    from numpy.typing import ArrayLike

    from virkit.notebooks.context import NotebookContext

__all__ = [
    "eval_table",
    "robust_attack",
    "table_runs",
    "paper_table",
    "class_accuracy",
    "per_class_accuracy",
    "fairness_rows",
    "confusion_panels",
    "class_accuracy_table",
    "weight_vs_robustness",
    "class_weight_totals",
    "figure3_verdict",
    "theorem1_check",
    "robust_error_table",
    "vulnerability_attributions",
]

#: the model of the paper's Tables 1, 3 and 4, for which the preset's own model stands in
_STAND_IN_MODEL = "resnet18"


# ------------------------------------------------------------------------------------------------
# One run's evaluation
# ------------------------------------------------------------------------------------------------


def eval_table(ev: Mapping, percent: bool = True) -> pd.DataFrame:
    """A DataFrame of one eval.json: accuracy, worst class and its accuracy, per attack."""
    import pandas as pd

    rows = []
    scale = 100.0 if percent else 1.0
    for name, r in ev["attacks"].items():
        fair = (ev.get("fairness") or {}).get(name) or {}
        rows.append(
            {
                "attack": name,
                "accuracy": scale * r["accuracy"],
                "worst class": fair.get("worst_class"),
                "worst-class accuracy": None
                if fair.get("worst_class_accuracy") is None
                else scale * fair["worst_class_accuracy"],
                "seconds": r.get("seconds"),
            }
        )
    return pd.DataFrame(rows).set_index("attack").round(2)


def robust_attack(ev: Mapping, preferred: str) -> str:
    """``preferred`` if the evaluation ran it, else its last attack."""
    return preferred if preferred in ev["attacks"] else list(ev["attacks"])[-1]


def class_accuracy(ev: Mapping, attack: str) -> list[float]:
    """Per-class accuracy (%) of one evaluation under ``attack`` (a class without examples: 0)."""
    return [100 * (v or 0) for v in ev["attacks"][attack]["per_class_accuracy"]]


# ------------------------------------------------------------------------------------------------
# Tables 1-5 (notebook 06)
# ------------------------------------------------------------------------------------------------


def table_runs(
    ctx: NotebookContext, tables: Iterable[int], methods: Sequence[str], seeds: Sequence[int]
) -> dict[int, list[Path]]:
    """{table: run dirs} for Tables 1-5 (datasets and model from :data:`virkit.paper.tables.TABLES`; the
    preset's model stands in for ResNet-18), training what is missing. A table whose runs cannot be
    made with this preset (missing dataset; WideResNet runs, which only the ``paper`` preset trains)
    gets an empty list and a printed reason instead of stopping the notebook."""
    out: dict[int, list[Path]] = {}
    for t in tables:
        if not 1 <= t <= 5:
            raise VirkitError(f"Tables 1-5 only here (got {t}); Tables 6-7 and 9-12 are in 07_ablations")
        spec = TABLES[t]
        model = None if spec.model == _STAND_IN_MODEL else spec.model
        if model and ctx.preset != "paper":
            print(f"Table {t}: needs {model} runs, trained only by the paper preset; skipped")
            out[t] = []
            continue
        runs = []
        try:
            for ds in spec.datasets:
                extra = {"dataset": ds}
                if model:
                    extra["model"] = model
                if ds == "tiny-imagenet" and ctx.preset == "paper":
                    extra["step_size"] = 1 / 255  # Table 4 caption: step 1/255
                runs += [ctx.run(m, seed=s, **extra) for m in methods for s in seeds]
        except VirkitError as e:
            print(f"Table {t}: cannot train its runs with preset {ctx.preset!r}: {e}")
            runs = []
        out[t] = runs
    return out


def paper_table(df: pd.DataFrame, table: int) -> pd.DataFrame:
    """:func:`virkit.paper.report.make_table`, plus a column for every evaluated attack the paper's layout
    lacks (e.g. PGD-10 in the demo preset), and without columns no run evaluated; the caption
    names the dropped columns."""
    import pandas as pd

    from virkit.paper import report

    tab = report.make_table(df, table)
    spec = TABLES[table]
    if isinstance(tab.columns, pd.MultiIndex):
        return tab
    attack_cols = [c for c in df.columns if c in paper.ATTACK_SPELLINGS and c != "worst_case"]
    extra = [a for a in attack_cols if a not in spec.attacks]
    sub = df if spec.open_rows else df[df["method"].isin(spec.methods)]
    dropped = [c for c in tab.columns if (tab[c] == report.DASH).all()]
    out = tab.drop(columns=dropped)
    for a in extra:
        vals = []
        for idx in tab.index:
            method = _method_of_label(idx, sub, spec)
            vals.append(report.mean_std(sub[sub["method"] == method][a].tolist()).text if method else report.DASH)
        out[paper.attack_label(a)] = vals
    out.attrs = dict(tab.attrs)
    if dropped:
        out.attrs["caption"] = (
            tab.attrs.get("caption", "").rstrip(".")
            + f". Not evaluated in this preset: {', '.join(map(str, dropped))}."
        )
    return out


def _method_of_label(label: str, df: pd.DataFrame, spec: Table) -> str | None:
    """The method a row label of :func:`virkit.paper.report.make_table` stands for (longest label first)."""
    cands = [(lab, m) for m in df["method"].unique() for lab in {paper.method_label(m), spec.row_label(m)}]
    for lab, m in sorted(cands, key=lambda c: -len(c[0])):
        if str(label) == lab or str(label).startswith(lab + " ("):
            return m
    return None


# ------------------------------------------------------------------------------------------------
# Per-class views (notebooks 04, 05, 06)
# ------------------------------------------------------------------------------------------------


def per_class_accuracy(evals: Mapping[str, Sequence[Mapping]], attack: str) -> tuple[dict, dict | None]:
    """{method: per-class accuracy (%) under ``attack``, mean over the method's evaluations (seeds)}
    and the sample std the same way (None with one evaluation per method)."""
    import numpy as np

    mean = {m: np.mean([class_accuracy(e, attack) for e in es], 0) for m, es in evals.items()}
    several = all(len(es) > 1 for es in evals.values())
    std = (
        {m: np.std([class_accuracy(e, attack) for e in es], 0, ddof=1) for m, es in evals.items()} if several else None
    )
    return mean, std


def fairness_rows(evals: Mapping[str, Sequence[Mapping]], attacks: Sequence[str]) -> list[dict]:
    """Rows for :func:`virkit.paper.figures.plot_fairness`: per method and attack, the average class
    accuracy, the worst class's, the mean of the three worst and the spread (std) of the classes,
    each averaged over the method's evaluations (seeds)."""
    import numpy as np

    rows = []
    for m, es in evals.items():
        for a in attacks:
            accs = np.array([class_accuracy(e, a) for e in es])
            rows.append(
                {
                    "method": m,
                    "attack": a,
                    "average": accs.mean(),
                    "worst": accs.min(1).mean(),
                    "worst3": np.sort(accs, 1)[:, :3].mean(),
                    "std": accs.std(1).mean(),
                }
            )
    return rows


def _shown(method: str, attack: str) -> str:
    """Figure 1 shows naturally trained models on natural images, every other one under ``attack``."""
    return "natural" if method == "natural" else attack


def confusion_panels(evals: Mapping[str, Mapping], methods: Sequence[str], attack: str) -> dict:
    """{"<method> · <attack>": confusion matrix} for Figures 1-2 (natural training on natural images)."""
    for m in methods:
        if attack not in evals[m]["attacks"]:
            raise VirkitError(
                f"run {m} was not evaluated under {attack!r} (has {list(evals[m]['attacks'])}); pick one of those"
            )
    out = {}
    for m in methods:
        a = _shown(m, attack)
        shown = "natural images" if a == "natural" else paper.attack_label(a, "figure")
        out[f"{paper.method_label(m, 'figure')} · {shown}"] = evals[m]["attacks"][a]["confusion_matrix"]
    return out


def class_accuracy_table(
    evals: Mapping[str, Mapping], methods: Sequence[str], attack: str, classes: Sequence[str]
) -> pd.DataFrame:
    """The diagonals of :func:`confusion_panels` side by side: per-class accuracy (%), one column per method."""
    import pandas as pd

    return pd.DataFrame(
        {paper.method_label(m, "figure"): class_accuracy(evals[m], _shown(m, attack)) for m in methods}, index=classes
    ).round(1)


def class_weight_totals(hist: Sequence[Mapping]) -> tuple[list[float], int]:
    """Figure 3's quantity summed over the reweighted epochs of one run: per class, the sum of all
    sample weights over every epoch with reweighting active, and how many such epochs there were
    (burn-in epochs, where every weight is 1, are left out: they only count images)."""
    active = [h for h in hist if h.get("reweighting_active")]
    if not active:
        return [], 0
    k = len(active[0]["weight_sum_per_class"])
    return [sum(float(h["weight_sum_per_class"][c]) for h in active) for c in range(k)], len(active)


def figure3_verdict(hists: Mapping[str, Sequence[Mapping]], classes: Sequence[str]) -> list[str]:
    """One sentence per method: which class got the most and the least total weight over the
    reweighted epochs, against the paper's finding (:data:`virkit.paper.catalogue.FIGURE3_MOST_WEIGHT`,
    :data:`~virkit.paper.catalogue.FIGURE3_LEAST_WEIGHT`), and whether this run agrees."""
    out = []
    for m, hist in hists.items():
        tot, n = class_weight_totals(hist)
        label = paper.method_label(m, "figure")
        if not n:
            out.append(f"{label}: no reweighted epoch in this run, so nothing to compare with the paper.")
            continue
        most, least = classes[tot.index(max(tot))], classes[tot.index(min(tot))]
        if paper.FIGURE3_MOST_WEIGHT not in classes or paper.FIGURE3_LEAST_WEIGHT not in classes:
            out.append(
                f"{label}: over {n} reweighted epoch(s) the most total weight went to {most!r} and the least "
                f"to {least!r} (the paper's Figure 3 is about CIFAR-10's classes)."
            )
            continue
        agree = [most == paper.FIGURE3_MOST_WEIGHT, least == paper.FIGURE3_LEAST_WEIGHT]
        verdict = (
            "agrees with the paper on both"
            if all(agree)
            else "agrees with the paper on the most-weighted class only"
            if agree[0]
            else "agrees with the paper on the least-weighted class only"
            if agree[1]
            else "agrees with the paper on neither"
        )
        rank = sorted(range(len(tot)), key=lambda c: -tot[c])
        out.append(
            f"{label}: over {n} reweighted epoch(s) the most total weight went to {most!r} and the least to "
            f"{least!r} (the paper: {paper.FIGURE3_MOST_WEIGHT!r} most, {paper.FIGURE3_LEAST_WEIGHT!r} least); "
            f"this run {verdict} ('{paper.FIGURE3_MOST_WEIGHT}' ranks "
            f"{rank.index(classes.index(paper.FIGURE3_MOST_WEIGHT)) + 1} of {len(tot)}, "
            f"'{paper.FIGURE3_LEAST_WEIGHT}' {rank.index(classes.index(paper.FIGURE3_LEAST_WEIGHT)) + 1})."
        )
    return out


def weight_vs_robustness(
    hists: Mapping[str, list], evals: Mapping[str, Mapping], classes: Sequence[str], preferred: str
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Mean sample weight per class in the last epoch against the class's robust accuracy (%), per
    method: ``(DataFrame, {method label: Spearman correlation})``."""
    import pandas as pd

    rows = []
    for m, ev in evals.items():
        a = robust_attack(ev, preferred)
        for c, (wm, acc) in enumerate(
            zip(hists[m][-1]["weight_mean_per_class"], ev["attacks"][a]["per_class_accuracy"])
        ):
            rows.append(
                {
                    "method": paper.method_label(m, "figure"),
                    "class": classes[c],
                    "mean weight": wm,
                    f"robust acc ({a})": 100 * (acc or 0),
                }
            )
    df = pd.DataFrame(rows)
    rho = {m: g["mean weight"].rank().corr(g.iloc[:, -1].rank()) for m, g in df.groupby("method")}
    return df, rho


# ------------------------------------------------------------------------------------------------
# Appendix A (notebook 02)
# ------------------------------------------------------------------------------------------------


def theorem1_check(d: int, eta: float, sigma: float, K_grid: Sequence[float], mc_samples: int, seed: int) -> dict:
    """Theorem 1's class risks against Monte Carlo of the optimal linear classifier and the quadratic
    Bayes rule, for every K of ``K_grid``: ``{"table", "closed", "mc", "se", "bayes"}`` (arrays of
    (R-, R+) per K); ``table["max |z|"]`` is the larger deviation in standard errors."""
    import numpy as np
    import pandas as pd

    from virkit.paper import theory, theory_empirical

    rows, closed, mc, se, bayes = [], [], [], [], []
    for k in K_grid:
        r = theory.class_risks(d, eta, sigma, k)
        w, b = theory.optimal_linear_classifier(d, eta, sigma, k)
        m, s = theory_empirical.monte_carlo_linear_risks(w, b, d, eta, sigma, k, n=mc_samples, seed=seed)
        bq = theory.bayes_quadratic_risks(d, eta, sigma, k)
        closed.append(r)
        mc.append(m)
        se.append(s)
        bayes.append(bq)
        rows.append(
            {
                "K": k,
                "R- closed": r[0],
                "R- MC": m[0],
                "R+ closed": r[1],
                "R+ MC": m[1],
                "max |z|": max(abs(r[i] - m[i]) / max(s[i], 1e-12) for i in (0, 1)),
                "R- Bayes (quadratic)": bq[0],
                "R+ Bayes (quadratic)": bq[1],
                "threshold b": b,
            }
        )
    return {
        "table": pd.DataFrame(rows).set_index("K"),
        "closed": np.array(closed),
        "mc": np.array(mc),
        "se": np.array(se),
        "bayes": np.array(bayes),
    }


def robust_error_table(curves: Mapping, eps_grid: ArrayLike, train_eps: float) -> pd.DataFrame:
    """Class-wise robust errors of each model of :func:`virkit.paper.theory_empirical.robust_error_curves` at the
    training radius and at ε = 0, and the gap between the classes."""
    import numpy as np
    import pandas as pd

    i = int(np.argmin(np.abs(np.asarray(eps_grid) - train_eps)))
    rows = [
        {
            "model": name,
            "R- at ε_train": arr[i, 0],
            "R+ at ε_train": arr[i, 1],
            "gap (R+ - R-)": arr[i, 1] - arr[i, 0],
            "R- at ε=0": arr[0, 0],
            "R+ at ε=0": arr[0, 1],
        }
        for name, arr in curves.items()
    ]
    return pd.DataFrame(rows).set_index("model")


# ------------------------------------------------------------------------------------------------
# Attributions (notebook 08)
# ------------------------------------------------------------------------------------------------


def vulnerability_attributions(
    runs: Mapping[str, os.PathLike], n_examples: int = 4, n_pool: int = 500, ig_steps: int = 32, device: str = "cpu"
) -> dict:
    """Integrated Gradients and saliency (captum) of several models on the most and least vulnerable
    test images, vulnerability ranked by the *first* model's natural true-class probability p_y.

    Attributions are of log p_y (the log-softmax of the true class) with respect to the input, summed
    in absolute value over colour channels; IG uses the black image as baseline. Returns
    ``{"most": {...}, "least": {...}, "table": DataFrame, "mean_p_y"}``, each part with ``images``
    (N, C, H, W), ``rows`` (labels) and ``columns`` ({"<method> · IG": maps, "<method> · saliency": maps}).
    """
    import pandas as pd
    import torch
    from captum.attr import IntegratedGradients, Saliency

    from virkit.data import load_dataset, test_subset
    from virkit.models import load_checkpoint

    def label(m: str) -> str:
        return paper.method_label(m, "figure")

    models, cfg = {}, None
    for m, r in runs.items():
        models[m], c = load_checkpoint(r, device=device)
        cfg = cfg or c
    test = load_dataset(cfg["dataset"], cfg.get("data_root"), "test", gmm=(cfg.get("extra") or {}).get("gmm"))
    test = test_subset(test, min(n_pool, len(test)))
    x, y = test.float_images().to(device), test.y.to(device)
    with torch.no_grad():
        p_y = {
            m: torch.softmax(net(x).float(), 1).gather(1, y.view(-1, 1)).squeeze(1).cpu() for m, net in models.items()
        }
    order = torch.argsort(p_y[next(iter(models))])
    picks = {"most": order[:n_examples], "least": order.flip(0)[:n_examples]}

    def logp(net):
        return lambda inp: torch.log_softmax(net(inp).float(), 1)

    out, rows = {}, []
    for which, idx in picks.items():
        xi, yi = x[idx], y[idx]
        cols = {}
        for m, net in models.items():
            ig = IntegratedGradients(logp(net)).attribute(
                xi, baselines=torch.zeros_like(xi), target=yi, n_steps=ig_steps
            )
            sal = Saliency(logp(net)).attribute(xi.clone().requires_grad_(True), target=yi, abs=True)
            cols[f"{label(m)} · IG"] = ig.abs().sum(1).detach().cpu().numpy()
            cols[f"{label(m)} · saliency"] = sal.sum(1).detach().cpu().numpy()
        labels = []
        for i in idx.tolist():
            cls = test.classes[int(y[i])]
            labels.append(cls + "\n" + "\n".join(f"{label(m)} p_y={float(p_y[m][i]):.2f}" for m in models))
            rows.append(
                {
                    "set": f"{which} vulnerable",
                    "test index": i,
                    "class": cls,
                    **{f"p_y {label(m)}": float(p_y[m][i]) for m in models},
                }
            )
        out[which] = {"images": xi.cpu().numpy(), "rows": labels, "columns": cols}
    out["table"] = pd.DataFrame(rows).round(3)
    out["mean_p_y"] = {label(m): float(v.mean()) for m, v in p_y.items()}
    return out
