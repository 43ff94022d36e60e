"""virkit.paper's catalogue and tables (virkit.paper.catalogue, virkit.paper.tables): labels, Tables 1-12, the
Appendix C grids, and the grid files of configs/grids/ that name a table agree with them (methods, model, dataset,
attacks, swept values)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from virkit import paper

REPO = Path(__file__).resolve().parents[1]
GRID_FILES = sorted((REPO / "configs" / "grids").glob("*.yaml"))


def _table_grids():
    import yaml

    return [p for p in GRID_FILES if (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("table") is not None]


# ------------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------------
def test_label_lookups():
    assert paper.method_label("natural") == "NATURAL TRAINING"
    assert paper.method_label("natural", "figure") == "Natural training"
    assert paper.method_label("vir-at-sv") == "VIR-AT-SV"
    assert paper.method_label("vir-at-sv", "figure") == "VIR-AT (S_v only)"
    assert paper.attack_label("square") == "SQUARE" and paper.attack_label("square", "figure") == "Square"
    assert paper.attack_label("pgd100") == "PGD-100" and paper.attack_label("worst_case") == "WORST CASE"
    assert paper.dataset_label("cifar10") == "CIFAR-10" and paper.dataset_label("tiny-imagenet") == "Tiny-ImageNet"
    assert paper.model_label("wrn-34-10") == "WideResNet-34-10" and paper.model_label("resnet18") == "ResNet-18"
    assert paper.method_color("vir-at") == paper.method_color("VIR") == "#d62728"
    with pytest.raises(ValueError):
        paper.method_label("at", "poster")


def test_unknown_names_fall_back():
    assert paper.method_label("new-method") == "NEW-METHOD"
    assert paper.method_label("new-method", "figure") == "new-method"
    assert paper.method_color("new-method") is None
    assert paper.attack_label("new-attack") == "new-attack" == paper.attack_label("new-attack", "figure")
    assert paper.dataset_label("mnist") == "mnist" and paper.model_label("vit") == "vit"


def test_figures_and_report_use_the_catalogue():
    import matplotlib.pyplot as plt

    from virkit.paper import figures, report

    assert figures.method_label("natural") == "Natural training" and figures.method_label("zzz") == "zzz"
    assert figures.attack_label("square") == "Square" and figures.dataset_label("svhn") == "SVHN"
    assert figures.method_color("at") == paper.METHOD_SPELLINGS["at"].color
    assert figures.method_color("zzz", 2) == plt.get_cmap("tab10")(2)
    assert figures.METHOD_COLORS["GAIRAT"] == paper.SCHEMES["GAIRAT"].color
    assert report.MAIN_TABLES is paper.MAIN_TABLES and list(report.MAIN_TABLES) == [1, 2, 3, 4, 5, 6, 7]
    assert (
        report.ATTACK_TABLE_LABELS["square"] == "SQUARE" and report.METHOD_TABLE_LABELS["natural"] == "NATURAL TRAINING"
    )
    assert report.ABLATION_LABELS["vir-at-sv"] == "S_v(x, y) · L_CE(f(x'), y) [VIR-AT-SV]"
    # the old dict layout still reads (virkit.notebooks): Tables 1-5 list every method present
    # Table 6's first row is the VIR pipeline with w = 1 (issue 13: an ablation varies the weight only),
    # then the paper's rows, then virkit's scale-matched controls and Madry et al.'s AT (uniform start)
    assert report.MAIN_TABLES[6]["methods"] == [
        "vir-at-w1",
        "vir-at-sv",
        "vir-at-sd",
        "vir-at",
        "vir-at-mean1",
        "vir-at-flat",
        "at",
    ]
    assert (
        report.MAIN_TABLES[1]["methods"] is None and report.MAIN_TABLES[1]["title"] == "White-box robust accuracy (%)"
    )
    assert report.MAIN_TABLES[3]["datasets"] == ["svhn", "cifar100"] and report.MAIN_TABLES[7].get("ablation") is True


def test_every_method_attack_dataset_and_model_has_a_label():
    from virkit.attacks import attack_names
    from virkit.data.datasets import dataset_names
    from virkit.models import model_names
    from virkit.training.methods import METHODS

    assert set(METHODS) <= set(paper.METHOD_SPELLINGS), set(METHODS) - set(paper.METHOD_SPELLINGS)
    assert {*attack_names(), "worst_case"} <= set(paper.ATTACK_SPELLINGS), set(attack_names()) - set(
        paper.ATTACK_SPELLINGS
    )
    assert set(dataset_names()) <= set(paper.DATASET_SPELLINGS)
    assert set(model_names()) <= set(paper.MODEL_SPELLINGS)
    for m in paper.METHOD_SPELLINGS.values():
        assert m.table_label and m.figure_label and m.color
    for a in paper.ATTACK_SPELLINGS.values():
        assert a.table_label and a.figure_label


def test_explorer_schemes_are_the_catalogues():
    import torch

    from virkit.notebooks import explorer

    st = explorer.BatchStats(
        torch.zeros(4, 10),
        torch.ones(4, 10),
        torch.zeros(4, dtype=torch.int64),
        torch.arange(4),
        10,
        list("abcdefghij"),
    )
    assert list(explorer.batch_weights(st)) == list(paper.SCHEMES)  # panel labels: VIR, GAIRAT, MAIL


# ------------------------------------------------------------------------------------------------
# tables and sweeps
# ------------------------------------------------------------------------------------------------
def test_tables_are_consistent():
    assert list(paper.TABLES) == list(range(1, 13))
    for n, t in paper.TABLES.items():
        assert t.number == n and t.title and t.caption and t.rows
        assert t.model in paper.MODEL_SPELLINGS and all(d in paper.DATASET_SPELLINGS for d in t.datasets)
        assert all(a in paper.ATTACK_SPELLINGS for a in t.attacks)
        assert all(r.method in paper.METHOD_SPELLINGS for r in t.rows)
        assert (t.sweep is not None) == (t.kind is paper.TableKind.HYPERPARAMETERS)
    assert paper.PAPER_METHODS == ("at", "trades", "mart", "gairat", "mail-at", "vir-trades", "vir-at")
    assert paper.TABLES[6].row_label("vir-at") == "w(x, x', y) · L_CE(f(x'), y) [VIR-AT]"
    assert paper.TABLES[1].row_label("mail-trades") == "MAIL-TRADES"
    assert paper.TABLES[8].model == "wrn-28-10" and paper.TABLES[8].methods == ("trades", "at", "vir-trades", "vir-at")


def test_sweeps_are_the_appendix_grids():
    s9, s10, s11, s12 = (paper.SWEEPS[n] for n in (9, 10, 11, 12))
    assert (s9.method, s9.swept, s9.values("beta")) == ("vir-at", ("beta",), (0.0, 0.007, 0.1))
    assert (s10.method, s10.values("beta")) == ("vir-trades", (0.5, 1.6, 2.0))
    assert s11.values("alpha") == (1, 2, 3, 5, 7, 8) and s11.values("gamma") == (2, 4, 6, 8, 10)
    assert s12.values("alpha") == (1, 2, 3, 5, 7, 8) and s12.values("gamma") == (1, 2, 3, 4)
    with pytest.raises(KeyError):
        s9.values("alpha")
    # Table 11's rows: alpha at gamma 10, then gamma at alpha 7; beta 0.007 throughout
    assert [(p["alpha"], p["gamma"]) for p in s11.points()] == [
        (1, 10),
        (2, 10),
        (3, 10),
        (5, 10),
        (7, 10),
        (8, 10),
        (7, 2),
        (7, 4),
        (7, 6),
        (7, 8),
    ]
    assert {p["beta"] for p in s11.points()} == {0.007}
    assert [(p["alpha"], p["gamma"]) for p in s12.points()] == [
        (1, 3),
        (2, 3),
        (3, 3),
        (5, 3),
        (7, 3),
        (8, 3),
        (8, 1),
        (8, 2),
        (8, 4),
    ]
    assert paper.TABLES[9].rows[1].label == "S_v(x, y) · S_d(x, x') + (β = 0.007)"
    assert paper.TABLES[12].rows[0].label == "α=1, γ=3, β=1.6"
    assert paper.TABLES[11].rows[-1].hyperparameters == {"alpha": 7.0, "gamma": 8.0, "beta": 0.007}


def test_paper_hyperparameters_are_the_method_defaults():
    from virkit.training.methods import METHODS

    for m, hp in paper.PAPER_HYPERPARAMETERS.items():
        assert {h: METHODS[m].defaults[h] for h in hp} == dict(hp)


def _paper_text() -> str | None:
    for p in (os.environ.get("VIRKIT_PAPER_TEXT"), REPO.parent / "shared" / "paper" / "vir-paper.txt"):
        if p and Path(p).is_file():
            return Path(p).read_text(encoding="utf-8")
    return None


def _paper_tables(text: str) -> dict[int, list[list[str]]]:
    """{table number: its tab-separated lines (header first)} from the paper's text."""
    out, lines = {}, text.splitlines()
    for i, ln in enumerate(lines):
        m = re.match(r"Table (\d+):", ln)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and "\t" not in lines[j]:
            j += 1
        rows = []
        while j < len(lines) and "\t" in lines[j]:
            rows.append(lines[j].split("\t"))
            j += 1
        out[int(m.group(1))] = rows
    return out


def test_tables_match_the_paper_text():
    """Columns, row methods and swept values of Tables 1-12 as printed in the paper (skipped when
    its text is not at ../shared/paper/vir-paper.txt or $VIRKIT_PAPER_TEXT)."""
    text = _paper_text()
    if text is None:
        pytest.skip("the paper's text is not available")
    found = _paper_tables(text)
    assert set(found) == set(paper.TABLES)
    by_label = {m.table_label: m.name for m in paper.METHOD_SPELLINGS.values()}
    for n, t in paper.TABLES.items():
        lines = found[n]
        header_at = 1 if len(t.datasets) > 1 else 0
        header = [c.strip() for c in lines[header_at] if c.strip()]
        rows = lines[header_at + 1 :]
        cols = [paper.attack_label(a) for a in t.attacks] * len(t.datasets)
        assert header[-len(cols) :] == cols, (n, header)
        if len(t.datasets) > 1:
            groups = [c.strip() for c in lines[0][1:] if c.strip()]
            assert groups == [paper.dataset_label(d) for d in t.datasets]
        assert len(rows) == len(t.paper_rows), n  # virkit's extension rows are not printed there
        if t.kind is paper.TableKind.DEFENSES:
            assert [by_label.get(r[0].strip()) for r in rows] == list(t.methods), n
        elif n in (9, 10):
            betas = [float(re.search(r"\\beta = (?:\\mathbf\{)?([\d.]+)", r[0]).group(1)) for r in rows]
            assert betas == [r.hyperparameters["beta"] for r in t.rows]
        elif t.sweep is not None:
            got = [tuple(float(x) for x in r[:3]) for r in rows]
            assert got == [
                (r.hyperparameters["alpha"], r.hyperparameters["gamma"], r.hyperparameters["beta"]) for r in t.rows
            ]


# ------------------------------------------------------------------------------------------------
# configs/grids/*.yaml
# ------------------------------------------------------------------------------------------------
def test_the_paper_tables_have_grid_files():
    import yaml

    tables = {yaml.safe_load(p.read_text(encoding="utf-8")).get("table") for p in _table_grids()}
    assert {1, 6, 7, 9, 10, 11, 12} <= tables


@pytest.mark.parametrize("path", _table_grids(), ids=lambda p: p.stem)
def test_grid_file_agrees_with_the_catalogue(path, tmp_path):
    from virkit.sweep import expand, load_grid
    from virkit.training.methods import METHODS

    g = load_grid(path)
    assert g.table in paper.TABLES, f"{path.name}: no Table {g.table} in the paper"
    t = paper.TABLES[g.table]
    where = f"{path.name} (Table {t.number})"
    assert g.kind == "train" and g.preset == "paper", where
    methods = g.grid.get("method") or [g.fixed.get("method")]
    assert list(methods) == list(t.methods), f"{where}: methods {methods} != the table's rows {list(t.methods)}"
    assert g.fixed.get("model") == t.model, where
    datasets = g.grid.get("dataset") or [g.fixed.get("dataset")]
    assert list(datasets) == list(t.datasets), where
    assert list(g.fixed.get("eval_attacks") or []) == list(t.attacks), f"{where}: eval_attacks are not the columns"
    seeds = g.grid.get("seed") or [g.fixed.get("seed")]
    assert len(set(seeds)) == paper.PAPER_SEEDS, where

    if t.sweep is None:  # the paper's hyperparameters are the methods' defaults: none overridden
        varied = {*g.fixed, *g.grid, *(k for p in g.points for k in p)}
        assert not varied & set(paper.HYPERPARAMETERS), f"{where}: overrides {varied & set(paper.HYPERPARAMETERS)}"
        return
    # Tables 9-12: every trial's (alpha, gamma, beta), method defaults filled in, are the table's rows
    settings = []
    for trial in expand(g, tmp_path):
        d = METHODS[trial.overrides["method"]].defaults
        hp = {h: float(trial.overrides.get(h, d[h])) for h in ("alpha", "gamma", "beta")}
        if hp not in settings:
            settings.append(hp)
    assert settings == t.sweep.points(), f"{where}: trained settings are not the paper's rows"


def test_scale_out_grid_table_counts_the_grid_files_trials():
    """docs/SCALE_OUT.md's table of grid files says how many trials each holds: it must say what
    `virkit sweep` would run (a grid that gains a method must not leave the document behind)."""
    from virkit.sweep.grid import expand, load_grid

    text = (REPO / "docs" / "SCALE_OUT.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([\w.]+\.yaml)` \| [^|]* \| (\d+) \|", text, flags=re.M))
    assert {p.name for p in GRID_FILES if p.name not in ("quick_2x2.yaml", "quick_tables.yaml")} <= set(rows)
    for p in GRID_FILES:
        if p.name in rows:
            assert int(rows[p.name]) == len(expand(load_grid(p), "/nonexistent")), p.name
