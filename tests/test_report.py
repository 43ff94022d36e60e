"""virkit.paper.report: collecting runs, the paper's Tables 1-7 (layout, order, mean ± std), Markdown/CSV."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest

from virkit.errors import VirkitError
from virkit.paper.report import MAIN_TABLES as TABLES
from virkit.paper.report import collect_runs, make_table, report_main, to_csv, to_markdown


def make_run(
    root,
    name,
    *,
    dataset="cifar10",
    model="resnet18",
    method="at",
    seed=0,
    accs=None,
    alpha=None,
    beta=None,
    gamma=None,
    with_eval=True,
    source="CIFAR-10 (cifar-10-batches-py)",
):
    d = root / name
    d.mkdir(parents=True)
    cfg = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "seed": seed,
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "preset": "paper",
        "resolved_hyperparameters": {"alpha": alpha, "beta": beta, "gamma": gamma},
    }
    (d / "config.json").write_text(json.dumps(cfg))
    if with_eval:
        accs = accs or {}
        ev = {
            "format": "virkit-eval-v1",
            "dataset": dataset,
            "source": source,
            "n_examples": 100,
            "eps": 8 / 255,
            "attacks": {k: {"accuracy": v} for k, v in accs.items()},
            "worst_case": {"accuracy": min(accs.values())} if accs else None,
        }
        (d / "eval.json").write_text(json.dumps(ev))
    return d


WB = {"natural": 0.84, "fgsm": 0.58, "pgd100": 0.52, "cw": 0.51, "fmn100": 0.49, "aa": 0.48, "mde": 0.478}


@pytest.fixture
def runs(tmp_path):
    dirs = []
    for seed, delta in ((0, 0.0), (1, 0.01), (2, 0.02)):
        dirs.append(
            make_run(tmp_path, f"at-{seed}", method="at", seed=seed, accs={k: v + delta for k, v in WB.items()})
        )
        dirs.append(
            make_run(
                tmp_path,
                f"vir-{seed}",
                method="vir-at",
                seed=seed,
                accs={k: v + 0.02 + delta for k, v in WB.items() if k != "mde"},
            )
        )
    dirs.append(make_run(tmp_path, "trades-0", method="trades", accs={"natural": 0.83, "pgd100": 0.52}))
    dirs.append(make_run(tmp_path, "gairat-0", method="gairat", accs={"natural": 0.83, "pgd100": 0.55}))
    return dirs


def test_collect_runs(runs, tmp_path, capsys):
    missing = make_run(tmp_path, "unevaluated", with_eval=False)
    df = collect_runs([*runs, missing, tmp_path / "does-not-exist"])
    assert len(df) == len(runs)
    assert {
        "run_dir",
        "dataset",
        "model",
        "method",
        "seed",
        "alpha",
        "beta",
        "gamma",
        "natural",
        "pgd100",
        "worst_case",
    } <= set(df.columns)
    err = capsys.readouterr().err
    assert "unevaluated" in err and "eval.json" in err and "does-not-exist" in err
    with pytest.raises(VirkitError):
        collect_runs([missing])
    with pytest.raises(VirkitError):
        collect_runs([])


def test_table1_layout_order_and_mean_std(runs):
    t = make_table(collect_runs(runs), 1)
    assert list(t.columns) == ["NATURAL", "FGSM", "PGD-100", "CW", "FMN-100", "AA", "MDE"]
    assert list(t.index) == ["AT", "TRADES", "GAIRAT", "VIR-AT"]  # the paper's method order
    assert t.index.name == "DEFENSE"
    vals = [100 * (0.84 + d) for d in (0.0, 0.01, 0.02)]
    mean = sum(vals) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)  # sample std over seeds
    assert t.loc["AT", "NATURAL"] == f"{mean:.2f} ± {std:.2f}"
    assert t.attrs["mean"].loc["AT", "NATURAL"] == pytest.approx(mean)
    assert t.attrs["n"].loc["AT", "NATURAL"] == 3
    assert t.loc["VIR-AT", "MDE"] == "–"  # attack not run
    assert t.loc["TRADES", "PGD-100"] == "52.00"  # one seed: no ± part
    assert t.loc["TRADES", "FGSM"] == "–"
    assert "ResNet-18 on CIFAR-10" in t.attrs["caption"] and "paper's Table" not in t.attrs["caption"]


def test_other_dataset_or_model_keeps_layout_and_says_so_in_caption(tmp_path):
    dirs = [
        make_run(
            tmp_path,
            f"q{m}",
            model="small-cnn",
            method=m,
            accs={"natural": 0.5, "pgd100": 0.3, "square": 0.4},
            source="CIFAR-10 (JPEG stand-in, /x/cifar10-jpeg.tar.gz)",
        )
        for m in ("vir-at", "at", "mart")
    ]
    t = make_table(collect_runs(dirs), 1)
    assert list(t.columns) == ["NATURAL", "FGSM", "PGD-100", "CW", "FMN-100", "AA", "MDE"]
    assert list(t.index) == ["AT", "MART", "VIR-AT"]
    cap = t.attrs["caption"]
    assert "small-cnn" in cap and "JPEG stand-in" in cap and "ResNet-18 on CIFAR-10" in cap
    assert "; 100 test images;" in cap  # how many images the numbers rest on
    t5 = make_table(collect_runs(dirs), 5)
    assert list(t5.columns) == ["SQUARE", "SPSA"] and t5.loc["AT", "SPSA"] == "–" and t5.loc["AT", "SQUARE"] == "40.00"
    assert "WideResNet-34-10" in t5.attrs["caption"]


def test_table3_two_datasets(tmp_path):
    dirs = [
        make_run(tmp_path, "svhn-at", dataset="svhn", method="at", accs={"natural": 0.93, "pgd100": 0.55, "aa": 0.46}),
        make_run(tmp_path, "c100-at", dataset="cifar100", method="at", accs={"natural": 0.6, "pgd100": 0.29}),
        make_run(tmp_path, "c10-at", dataset="cifar10", method="at", accs={"natural": 0.8}),
    ]
    t = make_table(collect_runs(dirs), 3)
    assert isinstance(t.columns, pd.MultiIndex)
    assert list(t.columns) == [
        ("SVHN", "NATURAL"),
        ("SVHN", "PGD-100"),
        ("SVHN", "AA"),
        ("CIFAR-100", "NATURAL"),
        ("CIFAR-100", "PGD-100"),
        ("CIFAR-100", "AA"),
    ]
    assert t.loc["AT", ("SVHN", "AA")] == "46.00" and t.loc["AT", ("CIFAR-100", "AA")] == "–"
    md = to_markdown(t)
    assert "SVHN NATURAL" in md and "CIFAR-100 AA" in md


def test_table4_and_ablation_tables(tmp_path):
    dirs = [make_run(tmp_path, "tin", dataset="tiny-imagenet", method="vir-at", accs={"natural": 0.49, "pgd20": 0.26})]
    t4 = make_table(collect_runs(dirs), 4)
    assert list(t4.columns) == ["NATURAL", "PGD-20", "AA"] and t4.loc["VIR-AT", "PGD-20"] == "26.00"
    abl = [
        make_run(tmp_path, m, method=m, accs={"natural": 0.84, "pgd100": 0.5, "spsa": 0.56})
        for m in (
            "vir-at",
            "vir-at-sd",
            "vir-at-w1",
            "vir-at-sv",
            "trades",
            "vir-trades",
            "vir-trades-sv",
            "vir-trades-sd",
            "vir-at-flat",
        )
    ]
    t6 = make_table(collect_runs(abl), 6)
    assert t6.index.name == "REWEIGHTING COMPONENT"
    assert list(t6.columns) == ["NATURAL", "PGD-100", "CW", "AA", "SQUARE", "SPSA"]
    # the first row is the VIR pipeline with w = 1 (an ablation varies the weight only); the
    # scale-matched control rows follow the paper's
    assert [s.split("[")[-1] for s in t6.index] == ["VIR-AT-W1]", "VIR-AT-SV]", "VIR-AT-SD]", "VIR-AT]", "VIR-AT-FLAT]"]
    assert t6.index[0] == "L_CE(f(x'), y) [VIR-AT-W1]" and t6.index[-1] == "mean(w) · L_CE(f(x'), y) [VIR-AT-FLAT]"
    t7 = make_table(collect_runs(abl), 7)
    assert [s.split("[")[-1] for s in t7.index] == ["TRADES]", "VIR-TRADES-SV]", "VIR-TRADES-SD]", "VIR-TRADES]"]
    mart = [make_run(tmp_path, "mart", method="mart", accs={"natural": 0.8})]
    with pytest.raises(VirkitError):
        make_table(collect_runs(mart), 6)  # no ablation runs
    with pytest.raises(VirkitError):
        make_table(collect_runs(dirs), 8)


def test_hyperparameter_variants_get_their_own_rows(tmp_path):
    dirs = [
        make_run(
            tmp_path,
            f"v{g}-{s}",
            method="vir-at",
            gamma=g,
            alpha=7,
            beta=0.007,
            seed=s,
            accs={"natural": 0.8 + g / 1000, "pgd100": 0.5},
        )
        for g in (5, 10)
        for s in (0, 1)
    ]
    t = make_table(collect_runs(dirs), 1)
    assert len(t) == 2 and all("γ=" in i for i in t.index)
    assert t.attrs["n"]["NATURAL"].tolist() == [2, 2]


def test_markdown_csv_and_report_main(runs, tmp_path, capsys):
    t = make_table(collect_runs(runs), 1)
    md = to_markdown(t)
    lines = md.strip().splitlines()
    assert lines[0].startswith("**Table 1:")
    assert lines[2] == "| DEFENSE | NATURAL | FGSM | PGD-100 | CW | FMN-100 | AA | MDE |"
    assert lines[4].startswith("| AT | ")
    back = pd.read_csv(io.StringIO(to_csv(t)), index_col=0)
    assert list(back.columns) == list(t.columns) and back.loc["VIR-AT", "MDE"] == "–"
    out = tmp_path / "out" / "table1.csv"
    assert report_main(runs, 1, "csv", out) == 0
    assert out.read_text() == to_csv(t) and capsys.readouterr().out == ""
    assert report_main(runs, "2", "md") == 0  # no WRN runs: layout kept, caption says so
    text = capsys.readouterr().out
    assert "| DEFENSE |" in text and "WideResNet-34-10" in text and "small" not in text
    with pytest.raises(VirkitError):
        report_main(runs, 1, "html")
    with pytest.raises(VirkitError):
        report_main(runs, 9, "md")


def test_all_tables_build_from_any_runs(runs):
    df = collect_runs(runs)
    for n in TABLES:
        if TABLES[n].get("ablation"):
            continue
        t = make_table(df, n)
        assert len(t) >= 1 and t.attrs["caption"].startswith(f"Table {n}:")


def test_cli_report(runs, tmp_path, capsys):
    from virkit.cli import main

    assert main(["report", *map(str, runs), "--table", "1"]) == 0
    assert "| AT |" in capsys.readouterr().out
    out = tmp_path / "t5.csv"
    assert main(["report", *map(str, runs), "--table", "5", "--format", "csv", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "DEFENSE,SQUARE,SPSA"
    empty = make_run(tmp_path, "no-eval", with_eval=False)
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "virkit: error:" in err and "no-eval" in err


def test_report_columns_chosen_with_attacks(tmp_path, capsys):
    """--attacks replaces the paper's columns (the control grid measures natural, PGD-20 and AA);
    Madry's AT appears in Table 6 as virkit's extension row after the paper's."""
    from virkit.cli import main

    dirs = [
        make_run(
            tmp_path,
            f"{m}-{s}",
            method=m,
            seed=s,
            accs={"natural": 0.40 + 0.01 * s, "pgd20": 0.25, "aa": 0.20 + (0.02 if m == "at" else 0.0)},
        )
        for m in ("at", "vir-at-w1", "vir-at")
        for s in (0, 1)
    ]
    t6 = make_table(collect_runs(dirs), 6, ["natural", "pgd20", "aa"])
    assert list(t6.columns) == ["NATURAL", "PGD-20", "AA"]
    assert [s.split("[")[-1] for s in t6.index] == ["VIR-AT-W1]", "VIR-AT]", "AT]"]
    assert t6.loc["L_CE(f(x'), y), uniform start [AT]", "AA"] == "22.00 ± 0.00"
    assert t6.loc["L_CE(f(x'), y) [VIR-AT-W1]", "NATURAL"] == "40.50 ± 0.71"
    assert main(["report", *map(str, dirs), "--table", "6", "--attacks", "natural,aa", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "REWEIGHTING COMPONENT,NATURAL,AA"
    assert main(["report", *map(str, dirs), "--table", "6", "--attacks", "natural,pgd7"]) == 2
    assert "unknown attack(s) pgd7" in capsys.readouterr().err


def test_checkpoint_choice_and_unfinished_evaluations(tmp_path, capsys):
    """``--checkpoint best`` reads eval.json when `virkit evaluate RUN/best.pt` wrote it (no trainer
    record), eval-best.json otherwise; an evaluation still in progress (its per-batch state folder
    beside it) is skipped with a line saying so, never reported as if finished."""
    from virkit.runs import eval_state_root

    manual = make_run(tmp_path, "manual", method="at", accs={"natural": 0.5, "aa": 0.2})
    doc = json.loads((manual / "eval.json").read_text())
    (manual / "eval.json").write_text(json.dumps({**doc, "extra": {"checkpoint": "best.pt"}}))
    trained = make_run(tmp_path, "trained", method="at", seed=1, accs={"natural": 0.6, "aa": 0.3})
    doc = json.loads((trained / "eval.json").read_text())
    (trained / "eval.json").write_text(json.dumps({**doc, "extra": {"checkpoint": "last.pt"}}))
    (trained / "eval-best.json").write_text(
        json.dumps({**doc, "attacks": {"natural": {"accuracy": 0.55}, "aa": {"accuracy": 0.25}}})
    )
    running = make_run(tmp_path, "running", method="at", seed=2, accs={"natural": 0.7})
    (eval_state_root(running / "eval.json") / "aa").mkdir(parents=True)

    best = collect_runs([manual, trained, running], checkpoint="best")
    assert sorted(best["natural"]) == [0.5, 0.55]  # manual's eval.json, trained's eval-best.json
    err = capsys.readouterr().err
    assert "running" in err and "eval-best.json is missing" in err
    last = collect_runs([manual, trained, running], checkpoint="last")
    assert list(last["natural"]) == [0.6]  # manual holds best.pt only
    assert "manual" in capsys.readouterr().err
    assert list(collect_runs([trained, running])["natural"]) == [0.6]
    err = capsys.readouterr().err
    assert "running" in err and "unfinished evaluation (attacks in progress: aa)" in err


def test_paired_with_gives_per_seed_differences(tmp_path):
    """--paired-with vir-at: each run minus VIR-AT's run of the same seed; seed 2 of the control has
    no VIR-AT partner and gives no number; the reference's own row is left out."""
    from virkit.paper.report import paired_differences

    dirs = [
        make_run(tmp_path, f"vir-{s}", method="vir-at", seed=s, accs={"natural": 0.40 + 0.05 * s, "aa": 0.20})
        for s in (0, 1)
    ]
    dirs += [
        make_run(
            tmp_path, f"m1-{s}", method="vir-at-mean1", seed=s, accs={"natural": 0.43 + 0.05 * s + 0.01 * s, "aa": 0.21}
        )
        for s in (0, 1, 2)
    ]
    t = make_table(paired_differences(collect_runs(dirs), "vir-at"), 6, ["natural", "aa"])
    assert list(t.index) == ["w / mean(w) · L_CE(f(x'), y) [VIR-AT-MEAN1]"]
    assert t.attrs["mean"].iloc[0].tolist() == pytest.approx([3.5, 1.0])  # (3 + 4) / 2 points, 1 point
    assert t.attrs["n"].iloc[0].tolist() == [2, 2]  # seed 2 has no partner
    assert t.iloc[0, 0] == "3.50 ± 0.71"
    with pytest.raises(VirkitError, match="no run of method at"):
        paired_differences(collect_runs(dirs), "at")
    out = tmp_path / "paired.md"
    assert report_main(dirs, 6, out=out, attacks="natural,aa", paired_with="vir-at") == 0
    assert "minus the vir-at run of the same seed" in out.read_text()


def test_a_folder_of_runs_stands_for_its_runs(tmp_path, capsys):
    """``virkit report GRID_DIR``: a sweep's --out folder (run directories and a logs/ folder) reads as
    the runs in it; a folder with neither is skipped with a warning naming it."""
    grid = tmp_path / "grid"
    grid.mkdir()
    made = [make_run(grid, f"method=at__seed={s}", accs={"natural": 0.8, "pgd100": 0.5}) for s in (0, 1)]
    (grid / "logs").mkdir()
    df = collect_runs([grid])
    assert sorted(df["run_dir"]) == sorted(str(p) for p in made)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(collect_runs([grid, empty])) == 2
    assert "empty: no config.json" in capsys.readouterr().err
