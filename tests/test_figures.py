"""Figures (virkit.paper.figures) and the weight explorer's logic (virkit.notebooks.explorer), without a browser."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from virkit import reweighting as rw
from virkit.notebooks import explorer as E
from virkit.paper import figures as F

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _png_ok(fig, tmp_path, name):
    p = tmp_path / f"{name}.png"
    fig.savefig(p)
    assert p.stat().st_size > 5000
    import matplotlib.pyplot as plt

    plt.close(fig)


def _fake_stats(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    ln = torch.randn(n, 10, generator=g) * 2
    la = ln + torch.randn(n, 10, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    kappa = torch.randint(0, 11, (n,), generator=g)
    return E.BatchStats(ln, la, kappa, y, 10, CLASSES)


def test_vir_grid_is_the_reweighting_formula():
    st = _fake_stats()
    p = rw.true_class_probability(st.logits_nat, st.y).numpy()
    kl = rw.discrepancy_score(st.logits_nat, st.logits_adv).numpy()
    alpha, gamma, beta = 7.0, 10.0, 0.007
    w = rw.vir_weights(st.logits_nat, st.logits_adv, st.y, alpha, gamma, beta).numpy()
    assert np.allclose(alpha * np.exp(-gamma * p) * kl + beta, w, rtol=1e-5, atol=1e-6)
    g = E.vir_grid(alpha, gamma, beta, kl_max=2.0, n=11)
    assert g["w"].shape == (11, 11)
    assert g["w"][0, 0] == pytest.approx(beta)  # KL = 0 -> the floor
    assert g["w"][-1, 0] == pytest.approx(alpha * 2.0 + beta)  # p_y = 0, KL = 2
    assert np.all(np.diff(g["w"][-1]) < 0)  # decreasing in p_y


def test_gairat_and_mail_curves_match_reweighting():
    kappa = torch.arange(11)
    raw = E.gairat_raw(kappa.numpy(), 10, -1.0)
    norm = rw.gairat_weights(kappa, 10, -1.0).numpy()
    assert np.allclose(raw / raw.mean(), norm, rtol=1e-4, atol=1e-5)  # float32 tanh near -1
    m = E.mail_curve(10.0, -0.5, 3.0)
    assert np.all(np.diff(m["w"]) <= 1e-7)  # smaller margin, larger weight
    assert m["w"][0] == pytest.approx(3.0 / (1.0 + np.exp(-10.0 * (0.999 - 0.5))), rel=1e-5)


def test_batch_weights_and_histogram(tmp_path):
    st = _fake_stats()
    w = E.batch_weights(st, alpha=7.0, gamma=10.0, beta=0.007)
    assert set(w) == {"VIR", "GAIRAT", "MAIL"}
    assert float(np.mean(w["GAIRAT"][0])) == pytest.approx(1.0, rel=1e-5)
    _png_ok(E.histogram_figure(st), tmp_path, "hist")


def test_batch_statistics_on_a_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    x = torch.rand(16, 3, 4, 4)
    y = torch.randint(0, 10, (16,))
    st = E.batch_statistics(net, x, y, CLASSES, eps=8 / 255, step_size=2 / 255, steps=3)
    assert st.logits_nat.shape == (16, 10) and st.logits_adv.shape == (16, 10)
    assert int(st.kappa.min()) >= 0 and int(st.kappa.max()) <= 3
    # PGD raises the loss
    ce = torch.nn.functional.cross_entropy
    assert float(ce(st.logits_adv, y)) >= float(ce(st.logits_nat, y))


def test_explorer_widget_redraws():
    pytest.importorskip("ipywidgets")
    app = E.WeightExplorer(_fake_stats())
    before_land, before_hist = app.landscape.value, app.histogram.value
    assert before_land[:4] == b"\x89PNG" and before_hist[:4] == b"\x89PNG"
    app.sliders["gamma"].value = 3.0
    assert app.redraws == 2
    assert app.landscape.value != before_land and app.histogram.value != before_hist
    assert "gamma=3" in app.status.value
    app2 = E.WeightExplorer(None)
    assert len(app2.widget.children) == 2  # no histogram without a checkpoint


def test_every_plot_function(tmp_path):
    _png_ok(E.landscape_figure(), tmp_path, "land")
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, size=(10, 10)) + np.eye(10, dtype=int) * 50
    _png_ok(F.plot_confusion_matrices({"AT · PGD-20": cm, "TRADES · PGD-20": cm.T}, CLASSES, title="t"), tmp_path, "cm")
    hist = [
        {
            "epoch": e,
            "weight_sum_per_class": list(rng.uniform(50, 100, 10)),
            "reweighting_active": e > 2,
            "holdout_nat_acc": 0.1 * e,
            "holdout_pgd_acc": 0.05 * e,
            "weight_mean_per_class": [1.0] * 10,
        }
        for e in range(1, 6)
    ]
    _png_ok(F.plot_class_weights({"vir-at": hist, "vir-trades": hist}, CLASSES), tmp_path, "cw")
    _png_ok(F.plot_training_curves({"vir-at": hist, "at": hist}), tmp_path, "tc")
    _png_ok(
        F.plot_per_class_accuracy(
            {"at": rng.uniform(0, 100, 10), "vir-at": rng.uniform(0, 100, 10)},
            CLASSES,
            {"at": np.ones(10), "vir-at": np.ones(10)},
        ),
        tmp_path,
        "pc",
    )
    rows = [
        {"method": m, "attack": a, "average": 50.0 + i, "worst": 20.0 + i, "std": 10.0 - i}
        for i, m in enumerate(["at", "vir-at"])
        for a in ["natural", "pgd20"]
    ]
    _png_ok(F.plot_fairness(rows), tmp_path, "fair")
    panels = {
        "β": {
            "x": [0.0, 0.007, 0.1],
            "xlabel": "β",
            "default": 0.007,
            "series": {"natural": ([80, 81, 79], [0.1, 0.2, 0.1]), "pgd100": ([50, 52, 49], None)},
        }
    }
    _png_ok(F.plot_ablation(panels), tmp_path, "abl")
    import pandas as pd

    df = pd.DataFrame(
        {"NATURAL": ["84.12 ± 0.16", "84.59 ± 0.18"], "PGD-100": ["51.58", "56.42"]}, index=["AT", "VIR-AT"]
    )
    _png_ok(F.table_figure(df, title="Table 1"), tmp_path, "table")
    imgs = rng.uniform(0, 1, size=(2, 3, 8, 8))
    _png_ok(
        F.plot_attributions(
            imgs,
            ["cat\np_y=0.1", "dog\np_y=0.2"],
            {"AT · IG": rng.normal(size=(2, 8, 8)), "AT · saliency": rng.uniform(size=(2, 8, 8))},
        ),
        tmp_path,
        "attr",
    )
    K = np.linspace(1, 3, 5)
    risks = np.stack([np.linspace(0.05, 0.07, 5), np.linspace(0.05, 0.3, 5)], 1)
    _png_ok(F.plot_theory_risks(K, risks, risks / 2, K[::2], risks[::2], np.full((3, 2), 0.001)), tmp_path, "th")
    _png_ok(F.plot_true_class_probability(rng.uniform(size=400), rng.integers(0, 2, size=400)), tmp_path, "py")
    _png_ok(
        F.plot_robust_class_errors(
            np.linspace(0, 0.3, 4), {"natural": risks[:4], "VIR-AT (ε=0.1)": risks[1:]}, train_eps=0.1
        ),
        tmp_path,
        "rob",
    )


def test_figure_saver_and_index(tmp_path):
    from virkit.notebooks import write_index

    saver = F.FigureSaver(tmp_path, "99_demo", {"preset": "tiny", "seed": 0})
    fig = E.landscape_figure()
    paths = saver.save(fig, "landscape", "a caption")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.is_file() for p in paths)
    saver.save(fig, "landscape", "a caption, again")  # re-running replaces the record
    saver.save(fig, "second one")
    recs = [json.loads(x) for x in saver.manifest.read_text().splitlines()]
    assert [r["name"] for r in recs] == ["landscape", "second one"]
    md, html = write_index(tmp_path, "tiny")
    text = md.read_text()
    assert "99_demo__landscape.png" in text and "99_demo__second_one.pdf" in text and "seed=0" in text
    assert "<img src='99_demo__landscape.png'" in html.read_text()
    assert F.figure_to_png(fig)[:4] == b"\x89PNG"
