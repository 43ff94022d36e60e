"""Notebooks and their batch runner (virkit.notebooks).

* the sources are clean (no outputs) and every one has a papermill ``parameters`` cell that both
  papermill and virkit parse;
* parameter validation: unknown names and wrong types give a one-line error and exit code 2;
* a failing notebook does not stop the others and makes the run exit 1; ``--jobs 2`` works;
* every notebook executes through papermill with the ``smoke`` preset (fails on any error), writes
  its figures (PNG + PDF) and the index, and a second run reuses the trained runs;
* ``setup(name, preset=preset, ...)`` takes every parameter of the notebook explicitly and validates them;
  each notebook's setup call passes exactly the names of its parameters cell;
* a notebook preset is the trainer preset of the same name (no training overrides).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from virkit import notebooks as N
from virkit import paper
from virkit.errors import VirkitError
from virkit.notebooks import ablations

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
EXPECTED = [
    "01_weight_explorer",
    "02_gaussian_mixture_theory",
    "03_train_and_evaluate",
    "04_confusion_matrices",
    "05_class_weights",
    "06_robustness_tables",
    "07_ablations",
    "08_attributions",
    "09_outside_model",
    "10_robust_overfitting",
]
#: a notebook's default preset: the demo's, except notebook 10, which reads the robust-overfitting grid
DEFAULT_PRESET = {"10_robust_overfitting": "overfit"}


def test_notebooks_present_and_clean():
    nbs = N.list_notebooks(NB_DIR)
    assert [p.stem for p in nbs] == EXPECTED
    for p in nbs:
        nb = nbformat.read(p, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{p.name} has committed outputs"
                assert cell.execution_count is None, f"{p.name} has execution counts"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{p.name}: exactly one cell tagged 'parameters'"


@pytest.mark.parametrize("name", EXPECTED)
def test_parameters_parse_in_virkit_and_papermill(name, capsys):
    from papermill.inspection import inspect_notebook

    path = NB_DIR / f"{name}.ipynb"
    params = N.notebook_parameters(path)
    assert set(N.COMMON_PARAMETERS) <= set(params)
    assert params["preset"].default == DEFAULT_PRESET.get(name, "demo")
    pm_params = inspect_notebook(str(path))
    assert set(pm_params) == set(params)
    assert "Unable to parse" not in capsys.readouterr().err  # papermill reads every line


def test_every_preset_value_is_a_valid_parameter():
    for preset, spec in N.NOTEBOOK_PRESETS.items():
        for nb, values in spec["notebooks"].items():
            N.validate_parameters(NB_DIR / f"{nb}.ipynb", values)
        N.train_config(preset, "vir-at")  # the shared budget is a valid TrainConfig


def test_a_notebook_preset_is_the_trainer_preset_of_the_same_name():
    """``virkit notebooks run --preset demo`` trains what ``virkit train --preset demo`` trains."""
    from virkit.attacks import attack_names
    from virkit.training.config import PRESETS as TRAINER_PRESETS
    from virkit.training.config import resolve_config

    for preset, spec in N.NOTEBOOK_PRESETS.items():
        assert preset in TRAINER_PRESETS
        assert set(spec) <= {
            "description",
            "robust_attack",
            "seeds",
            "notebooks",
            "eval_attacks",
            "runs",
            "only",
            "skip",
        }, preset
        for m in ("natural", "at", "vir-at", "vir-trades-sd"):
            assert N.train_config(preset, m, seed=1) == resolve_config(preset, method=m, seed=1)
        assert set(spec.get("eval_attacks", [])) <= set(attack_names())
        evaluated = [
            *TRAINER_PRESETS[preset].get("eval_attacks", resolve_config(preset).eval_attacks),
            *spec.get("eval_attacks", []),
        ]
        assert spec["robust_attack"] in evaluated, preset
    demo = resolve_config("demo")
    # the demo's promises (issue 12): 1,000 test images, Figure 3 over at least 3 reweighted epochs
    assert demo.model == "small-cnn" and demo.test_subset == 1000
    assert demo.epochs - resolve_config("demo", method="vir-at").reweight_start + 1 >= 3
    # the smaller tiers are the demo with fewer images, nothing else
    sizes = [resolve_config(t).train_subset for t in N.DEMO_TIERS]
    assert N.DEMO_TIERS[0] == "demo" and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1500
    for tier in N.DEMO_TIERS[1:]:
        t = resolve_config(tier)
        assert {**t.to_dict(), "train_subset": 0, "preset": ""} == {**demo.to_dict(), "train_subset": 0, "preset": ""}
        assert N.NOTEBOOK_PRESETS[tier]["runs"] == N.NOTEBOOK_PRESETS["demo"]["runs"]
    smoke = resolve_config("smoke")
    assert (smoke.model, smoke.train_subset, smoke.epochs, smoke.attack_steps) == ("small-cnn", 128, 2, 1)


@pytest.mark.parametrize(
    "rate, expected", [(2000.0, "demo"), (600.0, "demo-mid"), (250.0, "demo-lite"), (60.0, "demo-min")]
)
def test_demo_tier_follows_the_measured_rate(monkeypatch, tmp_path, capsys, rate, expected):
    """Without --preset, `virkit notebooks run` measures the training step (virkit.training.speed) and takes the
    largest tier expected to finish in 10 minutes, saying which, the rate and the expected time; a
    machine too slow for every tier gets the smallest, and the line says so."""
    import torch

    from virkit.training import speed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(speed, "cache_file", lambda: tmp_path / "calibration.json")
    monkeypatch.delenv("VIRKIT_SPEED", raising=False)
    monkeypatch.setattr(
        speed,
        "calibrate",
        lambda spec, device, **kw: {
            "fp32": rate / 2,
            "fp32+channels_last": rate,
            "bf16": rate / 3,
            "bf16+channels_last": 0.0,
        },
    )
    choice = N.choose_demo_tier(jobs=2)
    assert choice.preset == expected and choice.rate == rate and choice.speed == "fp32 + channels_last"
    # expected times fall with the tier and follow the rate
    times = [choice.expected_s[t] for t in N.DEMO_TIERS]
    assert times == sorted(times, reverse=True)
    assert (choice.expected_s[expected] <= N.DEMO_BUDGET_S) == (rate > 60)
    assert f"{rate:.0f} img/s" in choice.why and ("even the smallest" in choice.why) == (rate == 60.0)
    # list/gallery do not measure: they read the cached calibration and name the same tier
    assert N.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"virkit notebooks: preset {expected!r} (" in out.splitlines()[0]
    assert f"values for preset {expected!r}" in out


def test_shared_run_progress_is_reported_per_epoch(tmp_path, stand_in_root, monkeypatch):
    """The shared-run phase says each finished epoch of each run, with an estimate of the time left."""
    from virkit.notebooks import prepare

    monkeypatch.setenv("VIRKIT_DATA", str(stand_in_root))
    monkeypatch.setitem(N.NOTEBOOK_PRESETS["smoke"], "runs", ["at", "vir-at"])  # a from-scratch run and a branch
    lines: list[str] = []
    plan = prepare.prepare_runs("smoke", tmp_path / "runs", jobs=1, threads=1, say=lines.append, expected_s=30.0)
    assert all(r.status == "done" for r in plan)
    epoch_lines = [ln for ln in lines if " epoch " in ln]
    assert any("epoch 1/2" in ln for ln in epoch_lines) and any("epoch 2/2" in ln for ln in epoch_lines)
    assert all("so far" in ln for ln in epoch_lines)
    assert any("left" in ln or "expected" in ln for ln in epoch_lines)


def test_ablation_grid_parameters_are_the_papers_grids():
    """Notebook 07's grid parameters are the names :func:`virkit.notebooks.ablations.ablation_results` reads, and
    their defaults plus the paper's value are the paper's grids (Tables 9-12)."""
    from virkit import paper

    params = N.notebook_parameters(NB_DIR / "07_ablations.ipynb")
    grid_names = {n for n in params if "_grid_" in n}
    expected = set()
    for sweep in paper.SWEEPS.values():
        for h in sweep.swept:
            name = ablations.grid_parameter(h, sweep.method)
            expected.add(name)
            assert sorted({*params[name].default, sweep.defaults[h]}) == sorted(sweep.values(h)), name
    assert grid_names == expected


def test_setup_takes_the_parameters_explicitly(tmp_path, capsys):
    values = {
        "preset": "smoke",
        "fig_dir": str(tmp_path / "f"),
        "runs_root": str(tmp_path / "r"),
        "dataset": "cifar10",
        "model": "",
        "method": "at",
        "seed": 3,
    }
    ctx = N.setup("03_train_and_evaluate", **values)
    assert ctx.params == values and ctx.preset == "smoke" and ctx.robust_attack == "fgsm"
    assert ctx.runs_root == tmp_path / "r" and ctx.fig_dir == tmp_path / "f"
    assert ctx.parameters == {"preset": "smoke", "dataset": "cifar10", "model": "", "method": "at", "seed": 3}
    assert "preset='smoke'" in capsys.readouterr().out
    # the cell's order, whatever the call's (the figure index records ctx.parameters)
    assert list(N.setup("03_train_and_evaluate", **dict(reversed(values.items()))).params) == list(values)

    with pytest.raises(VirkitError, match="parameter 'seed' must be int"):
        N.setup("03_train_and_evaluate", **{**values, "seed": "zero"})
    with pytest.raises(VirkitError, match="parameter\\(s\\) method, seed not passed to setup"):
        N.setup("03_train_and_evaluate", **{k: v for k, v in values.items() if k not in ("method", "seed")})
    with pytest.raises(VirkitError, match="unknown parameter 'metod'.*did you mean 'method'"):
        N.setup("03_train_and_evaluate", **values, metod="at")
    with pytest.raises(
        VirkitError,
        match="unknown notebook preset 'quick'; valid notebook presets: smoke, demo, paper, demo-mid, demo-lite, demo-min",
    ):
        N.setup("03_train_and_evaluate", **{**values, "preset": "quick"})
    with pytest.raises(VirkitError, match="cannot find notebook 99_nothing.ipynb"):
        N.setup("99_nothing", **values)


@pytest.mark.parametrize("name", EXPECTED)
def test_each_notebook_passes_its_parameters_to_setup(name):
    """The setup call right after the parameters cell names every parameter of that cell, as itself."""
    import ast

    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    calls = [
        node
        for c in nb.cells
        if c.cell_type == "code"
        for node in ast.walk(ast.parse(c.source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    ]
    assert len(calls) == 1, name
    call = calls[0]
    assert [a.value for a in call.args] == [name]
    assert all(isinstance(k.value, ast.Name) and k.value.id == k.arg for k in call.keywords), name
    assert [k.arg for k in call.keywords] == list(N.notebook_parameters(NB_DIR / f"{name}.ipynb")), name


def test_a_parameters_line_papermill_cannot_read_is_an_error(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    p = new_code_cell('preset = "demo"  # preset\nlabel = "a=b"  # papermill skips a line with two =')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p]
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    with pytest.raises(VirkitError, match="papermill cannot read label"):
        N.notebook_parameters(tmp_path / "01_x.ipynb")


def test_validation_errors():
    path = NB_DIR / "03_train_and_evaluate.ipynb"
    with pytest.raises(VirkitError, match="unknown parameter 'metod'.*valid parameters: .*method"):
        N.validate_parameters(path, {"metod": "at"})
    with pytest.raises(VirkitError, match="parameter 'seed' must be int"):
        N.validate_parameters(path, {"seed": "zero"})
    with pytest.raises(VirkitError, match="must be int"):
        N.validate_parameters(path, {"seed": 1.5})
    assert N.validate_parameters(NB_DIR / "02_gaussian_mixture_theory.ipynb", {"K": 3}) == {"K": 3.0}
    assert N.parse_parameter_value("[1, 2]") == [1, 2]
    assert N.parse_parameter_value("true") is True
    assert N.parse_parameter_value("vir-at") == "vir-at"
    assert N.parse_parameter_value("0.5") == 0.5


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    args = [
        "run",
        "--preset",
        "smoke",
        "--only",
        "03",
        "-p",
        "metod=at",
        "--out-root",
        str(tmp_path / "r"),
        "--fig-root",
        str(tmp_path / "f"),
    ]
    assert N.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("virkit: error: unknown notebook parameter(s) 'metod'")
    assert (
        N.main(
            [
                "run",
                "--preset",
                "smoke",
                "--only",
                "03",
                "-p",
                "seed=abc",
                "--out-root",
                str(tmp_path / "r"),
                "--fig-root",
                str(tmp_path / "f"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parameter 'seed' must be int" in err[0]
    assert N.main(["run", "--preset", "smoke", "--only", "nosuchbook", "--out-root", str(tmp_path / "r")]) == 2
    assert "matches 0 notebooks" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing created before validation passed
    # through the project CLI as well
    from virkit import cli

    argv = [
        "notebooks",
        "run",
        "--preset",
        "smoke",
        "--only",
        "03",
        "-p",
        "metod=at",
        "--out-root",
        str(tmp_path / "r"),
    ]
    assert cli.main(argv) == 2
    assert "metod" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_list_and_selection(capsys):
    assert N.main(["list", "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "02_gaussian_mixture_theory" in out and "mc_samples" in out and "20000" in out
    sel = N.resolve_notebooks("02,explorer,08_attributions", NB_DIR)
    assert [p.stem for p in sel] == ["02_gaussian_mixture_theory", "01_weight_explorer", "08_attributions"]
    with pytest.raises(VirkitError, match="matches"):
        N.resolve_notebooks("0", NB_DIR)


def _mini_notebook(path: Path, body: str) -> None:
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    p = new_code_cell('preset = "demo"  # preset\nfig_dir = ""  # figures\nruns_root = ""  # runs\nx = 1  # a number')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.parametrize("jobs", [1, 2])
def test_failure_does_not_stop_the_others(tmp_path, jobs, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _mini_notebook(folder / "01_fails.ipynb", "raise ValueError('boom in the notebook')")
    _mini_notebook(
        folder / "02_passes.ipynb",
        "import matplotlib.pyplot as plt\nfrom virkit.paper.figures import FigureSaver\n"
        "fig, ax = plt.subplots(); ax.plot([0, x]); ax.set_title('t')\n"
        "FigureSaver(fig_dir, '02_passes', {'x': x}).save(fig, 'line', 'a line')",
    )
    code = N.run_notebooks(
        "smoke",
        jobs=jobs,
        out_root=tmp_path / "out",
        fig_root=tmp_path / "fig",
        folder=folder,
        parameters_override={"x": 3},
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED 01_fails" in out and "ValueError: boom in the notebook" in out, out
    assert "1 passed, 1 failed" in out
    assert (tmp_path / "out" / "smoke" / "02_passes.ipynb").is_file()
    assert (tmp_path / "fig" / "smoke" / "02_passes__line.png").is_file()
    assert (tmp_path / "fig" / "smoke" / "02_passes__line.pdf").is_file()
    index = (tmp_path / "fig" / "smoke" / "index.md").read_text()
    assert "02_passes__line.png" in index and "x=3" in index
    summary = json.loads((tmp_path / "out" / "smoke" / "summary.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["failed", "ok"]


@pytest.mark.parametrize("start_timeout", [2, 60])
def test_a_kernel_slow_to_start_fails_only_past_the_start_timeout(tmp_path, monkeypatch, capsys, start_timeout):
    """A kernel that takes 6 s to answer (as on a loaded machine) fails the notebook before its first
    cell when the start timeout is shorter, with papermill's line, and runs it when the timeout allows."""
    import sys

    from virkit.notebooks import runner

    real = runner.ensure_kernelspec

    def slow_kernelspec(root, threads=None):
        kdir = real(root, threads)
        spec = json.loads((kdir / "kernel.json").read_text())
        launch = "import runpy, sys, time; time.sleep(6); sys.argv[0] = 'ipykernel_launcher'; "
        launch += "runpy.run_module('ipykernel_launcher', run_name='__main__')"
        spec["argv"] = [sys.executable, "-c", launch, *spec["argv"][3:]]
        (kdir / "kernel.json").write_text(json.dumps(spec))
        return kdir

    monkeypatch.setattr(runner, "ensure_kernelspec", slow_kernelspec)
    monkeypatch.setattr(runner, "KERNEL_START_TIMEOUT_S", start_timeout)
    folder = tmp_path / "nbs"
    folder.mkdir()
    _mini_notebook(folder / "01_slow.ipynb", "print(x)")
    code = N.run_notebooks(
        "smoke", out_root=tmp_path / "out", fig_root=tmp_path / "fig", folder=folder, parameters_override={"x": 3}
    )
    out = capsys.readouterr().out
    if start_timeout < 6:
        assert code == 1 and "RuntimeError: Kernel didn't respond in 2 seconds" in out, out
    else:
        assert code == 0 and "1 passed, 0 failed" in out, out


def test_kernelspec_uses_this_interpreter(tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("JUPYTER_PATH", "")
    kdir = N.ensure_kernelspec(tmp_path, threads=1)
    spec = json.loads((kdir / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert str(REPO) in spec["env"]["PYTHONPATH"] and spec["env"]["OMP_NUM_THREADS"] == "1"
    assert os.environ["JUPYTER_PATH"].split(os.pathsep)[0] == str((tmp_path / "jupyter").resolve())


# ------------------------------------------------------------------------------------------------
# every notebook, executed with the smoke preset
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_batch(tmp_path_factory, stand_in_root):
    root = tmp_path_factory.mktemp("nb_smoke")
    os.environ.setdefault("VIRKIT_DATA", str(stand_in_root))
    t = time.time()
    code = N.run_notebooks("smoke", out_root=root / "runs", fig_root=root / "figures", threads=1)
    return {"code": code, "root": root, "seconds": time.time() - t}


def test_all_notebooks_execute_with_smoke_preset(smoke_batch):
    root = smoke_batch["root"]
    summary = json.loads((root / "runs" / "smoke" / "summary.json").read_text())
    failed = {r["name"]: r["error"] for r in summary["results"] if r["status"] != "ok"}
    assert not failed, f"notebooks failed: {failed}"
    assert smoke_batch["code"] == 0
    assert [r["name"] for r in summary["results"]] == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_outputs(smoke_batch, name):
    root = smoke_batch["root"]
    nb = nbformat.read(root / "runs" / "smoke" / f"{name}.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'preset = "smoke"' in injected[0].source
    figs = root / "figures" / "smoke"
    pngs = sorted(figs.glob(f"{name}__*.png"))
    assert pngs, f"{name} saved no figure"
    for png in pngs:
        assert png.with_suffix(".pdf").is_file()
        assert png.stat().st_size > 10_000
    index = (figs / "index.md").read_text()
    assert all(p.name in index for p in pngs)
    assert f"## {name}" in index and (figs / "index.html").is_file()


def test_executed_notebooks_are_html_pages_linked_from_the_index(smoke_batch):
    """Every executed notebook is also a static HTML page in the figures folder (figures embedded, no
    script, nothing fetched), linked from index.html and index.md, so the folder can be shared as it is."""
    import base64
    import re

    figs = smoke_batch["root"] / "figures" / "smoke"
    index_html = (figs / "index.html").read_text()
    index_md = (figs / "index.md").read_text()
    for name in EXPECTED:
        page = figs / "notebooks" / f"{name}.html"
        assert page.is_file(), name
        text = page.read_text()
        assert "<script" not in text and "<link" not in text, name
        pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=\n]+)"', text)
        assert pngs and base64.b64decode(pngs[0]).startswith(b"\x89PNG"), name
        assert "What it trains." in text and "How long." in text  # the opening markdown cell
        assert f"href='notebooks/{name}.html'" in index_html and f"(notebooks/{name}.html)" in index_md


def test_presets_choose_their_notebooks():
    """The demo tiers and paper run notebooks 01-09 (10 reads a grid the demo's budget cannot train);
    overfit runs 10 alone; smoke runs all of them."""
    nbs = N.list_notebooks(NB_DIR)
    for preset in ("demo", "demo-mid", "demo-lite", "demo-min", "paper"):
        assert [p.stem for p in N.preset_notebooks(preset, nbs)] == EXPECTED[:9], preset
    assert [p.stem for p in N.preset_notebooks("overfit", nbs)] == ["10_robust_overfitting"]
    assert [p.stem for p in N.preset_notebooks("smoke", nbs)] == EXPECTED


def test_overfitting_reads_only_finished_runs_of_a_grid(tmp_path):
    from virkit.notebooks import overfitting

    (tmp_path / "empty").mkdir()
    with pytest.raises(VirkitError, match="no finished run of at, vir-at-w1"):
        overfitting.grid_runs(tmp_path / "empty")
    with pytest.raises(VirkitError, match="is not a folder"):
        overfitting.grid_runs(tmp_path / "missing")


def test_every_notebook_opens_with_what_it_shows_trains_and_costs():
    """The first cell is Markdown: a title, what the notebook shows, what it trains and how long it takes
    (durations only as docs/NOTEBOOKS.md records them, 'not measured' elsewhere)."""
    docs = (REPO / "docs" / "NOTEBOOKS.md").read_text()
    for p in N.list_notebooks(NB_DIR):
        first = nbformat.read(p, as_version=4).cells[0]
        assert first.cell_type == "markdown" and first.source.startswith(f"# {p.stem[:2]} · "), p.name
        assert "**What it trains.**" in first.source and "**How long.**" in first.source, p.name
        how_long = first.source.split("**How long.**")[1]
        for number in re.findall(r"\d+ min \d+ s|\d+ s\b", how_long):
            assert number in docs, f"{p.name}: {number!r} is not recorded in docs/NOTEBOOKS.md"
        assert "not measured" in how_long, p.name


def test_a_notebook_runs_by_hand_with_its_defaults(tmp_path, monkeypatch, stand_in_root):
    """Notebook 02 as a person runs it: plain nbclient, no papermill, no injected parameters, so the
    parameters cell's defaults (preset demo) are what runs; its outputs go to $VIRKIT_NOTEBOOK_OUTPUT
    instead of the checkout. About half a minute on one thread."""
    from nbclient import NotebookClient

    from virkit.notebooks.pages import export_html

    monkeypatch.setenv("VIRKIT_NOTEBOOK_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = NB_DIR / "02_gaussian_mixture_theory.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, startup_timeout=N.KERNEL_START_TIMEOUT_S, resources={"metadata": {"path": str(NB_DIR)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    pngs = sorted((tmp_path / "out" / "figures" / "demo").glob("02_gaussian_mixture_theory__*.png"))
    assert pngs, "the notebook saved no figure where $VIRKIT_NOTEBOOK_OUTPUT points"
    nbformat.write(nb, tmp_path / "02.ipynb")
    page = export_html(tmp_path / "02.ipynb", tmp_path / "02.html").read_text()
    assert page.count("data:image/png;base64,") >= len(pngs) and "<script" not in page


def test_shared_runs_are_reused(smoke_batch):
    """A run trained by one notebook is reused (not retrained) when asked for again."""
    runs_root = smoke_batch["root"] / "runs" / "smoke" / "runs"
    dirs = sorted(p for p in runs_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = {p.name.split("-s0-")[0] for p in dirs}
    # nine runs serve all ten notebooks (Table 6's first row is the VIR pipeline with w = 1; notebook 10
    # adds the scale-matched controls and the reweighting baselines)
    assert {
        "cifar10-small-cnn-natural",
        "cifar10-small-cnn-at",
        "cifar10-small-cnn-vir-at",
        "cifar10-small-cnn-vir-at-sv",
        "cifar10-small-cnn-vir-at-w1",
        "cifar10-small-cnn-vir-at-mean1",
        "cifar10-small-cnn-vir-at-flat",
        "cifar10-small-cnn-gairat",
        "cifar10-small-cnn-mail-at",
    } == names
    vir = next(p for p in dirs if p.name.startswith("cifar10-small-cnn-vir-at-s0-"))
    # trained before the notebooks (virkit.notebooks.prepare): the ablations branched from VIR-AT's burn-in
    for d in dirs:
        if d.name.startswith(
            (
                "cifar10-small-cnn-vir-at-w1-",
                "cifar10-small-cnn-vir-at-sv-",
                "cifar10-small-cnn-vir-at-mean1-",
                "cifar10-small-cnn-vir-at-flat-",
                "cifar10-small-cnn-mail-at-",
            )
        ):
            parent = json.loads((d / "config.json").read_text())["parent"]
            assert Path(parent["path"]) == vir.resolve() and parent["epoch"] == 1
    # GAIRAT's burn-in is AT's (the uniform start), not VIR-AT's
    at = next(p for p in dirs if p.name.startswith("cifar10-small-cnn-at-s0-"))
    gairat = next(p for p in dirs if p.name.startswith("cifar10-small-cnn-gairat-s0-"))
    parent = json.loads((gairat / "config.json").read_text())["parent"]
    assert Path(parent["path"]) == at.resolve() and parent["epoch"] == 1
    mtime = (vir / "last.pt").stat().st_mtime_ns
    again = N.shared_run("vir-at", "smoke", runs_root)  # found, not trained again: its checkpoint untouched
    assert again == vir
    assert (vir / "last.pt").stat().st_mtime_ns == mtime


def test_preset_eval_attacks_are_added_to_a_finished_run(smoke_batch, tmp_path, monkeypatch):
    """A preset's ``eval_attacks`` beyond its trainer preset's (``paper``: the tables' columns) are
    evaluated on a finished shared run and added to its eval.json, without training it again."""
    import shutil

    src = next((smoke_batch["root"] / "runs" / "smoke" / "runs").glob("cifar10-small-cnn-at-s0-*"))
    run = tmp_path / "runs" / src.name
    shutil.copytree(src, run)
    before = N.load_eval(run)
    assert set(before["attacks"]) == {"natural", "fgsm"}
    mtime = (run / "last.pt").stat().st_mtime_ns
    monkeypatch.setitem(N.NOTEBOOK_PRESETS["smoke"], "eval_attacks", ["natural", "fgsm", "pgd10"])
    assert N.shared_run("at", "smoke", tmp_path / "runs") == run
    after = N.load_eval(run)
    assert set(after["attacks"]) == {"natural", "fgsm", "pgd10"}
    assert after["attacks"]["fgsm"]["accuracy"] == before["attacks"]["fgsm"]["accuracy"]
    assert after["attacks"]["pgd10"]["accuracy"] <= after["attacks"]["natural"]["accuracy"]
    assert (run / "last.pt").stat().st_mtime_ns == mtime


def test_ablation_sweeps_logic(monkeypatch):
    """Tables 9-12 layout without training: fake runs whose accuracy encodes their hyperparameters."""
    import pandas as pd

    from virkit.paper import report

    class FakeCtx:
        preset, robust_attack = "smoke", "pgd10"
        calls: list = []

        def run(self, method, seed=0, **over):
            self.calls.append((method, seed, dict(over)))
            return (method, seed, tuple(sorted(over.items())))

    def fake_collect(runs):
        rows = []
        for method, seed, over in runs:
            o = dict(over)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "natural": 0.5 + 0.01 * o.get("alpha", 0),
                    "pgd10": 0.2 + 0.01 * o.get("gamma", 0) + o.get("beta", 0),
                }
            )
        return pd.DataFrame(rows)

    monkeypatch.setattr(report, "collect_runs", fake_collect)
    ctx = FakeCtx()
    grids = {
        "beta_grid_at": [0.0, 0.1],
        "alpha_grid_at": [1.0, 3.0],
        "gamma_grid_at": [2.0],
        "alpha_grid_trades": [],
        "gamma_grid_trades": [],
    }
    res = ablations.ablation_results(ctx, [9, 11, 12], grids, seeds=[0, 1])
    t9 = res[9]["table"]
    assert list(t9.index) == ["α=7, γ=10, β=0", "★ α=7, γ=10, β=0.007", "α=7, γ=10, β=0.1"]
    assert t9.loc["α=7, γ=10, β=0.1", "PGD-10"] == "30.00 ± 0.00"
    assert list(res[9]["panels"]) == ["β (α, γ at the paper's value)"]
    assert res[9]["panels"]["β (α, γ at the paper's value)"]["x"] == [0.0, 0.007, 0.1]
    t11 = res[11]["table"]
    assert len(t11) == 4 and sum(i.startswith("★") for i in t11.index) == 1  # α 1, 3, 7(★); γ 2
    assert res[11]["panels"]["α (γ at the paper's value)"]["x"] == [1.0, 3.0, 7.0]
    assert res[11]["panels"]["γ (α at the paper's value)"]["x"] == [2.0, 10.0]
    assert len(res[12]["table"]) == 1 and res[12]["panels"] == {}  # only the paper's point
    # the paper's point passes no override, so it reuses the method's main run
    assert ("vir-at", 0, {}) in ctx.calls and ("vir-trades", 1, {}) in ctx.calls
    assert not any(over == {"beta": 0.007} for _, _, over in ctx.calls)


def test_planned_runs_share_burn_ins(tmp_path):
    """The preset's run list, with the burn-in parents the parallel training phase uses: in each group
    of the same burn-in key, the run whose reweighting starts first trains epochs 1 .. start-1."""
    from virkit.notebooks.prepare import planned_runs

    by = {r.method: r for r in planned_runs("smoke", tmp_path)}
    assert set(by) == {
        "natural",
        "at",
        "vir-at",
        "vir-at-w1",
        "vir-at-sv",
        "vir-at-mean1",
        "vir-at-flat",
        "gairat",
        "mail-at",
    }
    assert all(
        by[m].parent is by["vir-at"] for m in ("vir-at-w1", "vir-at-sv", "vir-at-mean1", "vir-at-flat", "mail-at")
    )
    assert by["gairat"].parent is by["at"]
    assert by["at"].parent is None and by["natural"].parent is None and by["vir-at"].parent is None
    demo = {r.method: r for r in planned_runs("demo", tmp_path)}
    assert set(paper.TABLES[1].methods) <= set(demo)  # every row of Table 1's layout
    assert demo["gairat"].parent is demo["at"]  # the uniform-start AT pipeline
    assert demo["mail-at"].parent is demo["vir-at"]  # 0.001 N(0, I) start; MAIL starts one epoch later
    assert demo["trades"].parent is None and demo["vir-trades"].parent is None  # 1/lambda 4 vs 5


def test_gallery_copies_key_figures_with_provenance(smoke_batch, tmp_path):
    """``virkit notebooks gallery``: the key figures of a batch run, small, with the run's provenance;
    a missing batch run is a one-line error (exit 2) that writes nothing."""
    from virkit.notebooks.gallery import GALLERY, make_gallery

    root = smoke_batch["root"]
    dest = make_gallery("smoke", root / "figures", root / "runs", dest=tmp_path / "gallery")
    pngs = sorted(p.name for p in dest.glob("*.png"))
    assert pngs == sorted(f"{stem}.png" for stem, _ in GALLERY)
    assert sum((dest / p).stat().st_size for p in pngs) < 2_000_000
    prov = (dest / "PROVENANCE.md").read_text()
    summary = json.loads((root / "runs" / "smoke" / "summary.json").read_text())
    assert summary["provenance"]["commit"] and summary["provenance"]["commit"] in prov
    assert summary["provenance"]["cpu"] in prov and f"`{summary['provenance']['command']}`" in prov
    assert all(h.removeprefix("headline: ") in prov for h in summary["headline"])
    assert summary["headline"], "the smoke batch prints headline numbers"
    with pytest.raises(VirkitError, match="no batch run of preset 'demo'"):
        make_gallery("demo", root / "figures", tmp_path / "nothing", dest=tmp_path / "g2")
    assert not (tmp_path / "g2").exists()
    assert (
        N.main(
            ["gallery", "--preset", "demo", "--out-root", str(tmp_path / "nothing"), "--fig-root", str(tmp_path / "f")]
        )
        == 2
    )


def test_overfit_gallery_has_its_own_folder(smoke_batch, tmp_path):
    """``virkit notebooks gallery --preset overfit``: notebook 10's figures go to gallery/overfit/ with
    their own provenance, and leave the demo's gallery beside them alone."""
    import shutil

    from virkit.notebooks.gallery import OVERFIT_GALLERY, make_gallery

    root = smoke_batch["root"]
    figs, runs = tmp_path / "figures", tmp_path / "runs"
    (figs / "overfit").mkdir(parents=True)
    (runs / "overfit").mkdir(parents=True)
    for png in (root / "figures" / "smoke").glob("10_robust_overfitting__*.png"):
        shutil.copy(png, figs / "overfit" / png.name)
    shutil.copy(root / "runs" / "smoke" / "summary.json", runs / "overfit" / "summary.json")
    (figs / "gallery").mkdir()
    (figs / "gallery" / "demo-figure.png").write_bytes(b"kept")
    dest = make_gallery("overfit", figs, runs)
    assert dest == figs / "gallery" / "overfit"
    assert sorted(p.name for p in dest.glob("*.png")) == sorted(f"{s}.png" for s, _ in OVERFIT_GALLERY)
    assert "--preset overfit" in (dest / "PROVENANCE.md").read_text()
    assert (figs / "gallery" / "demo-figure.png").read_bytes() == b"kept"


def test_every_presets_figure_folder_is_ignored_by_git():
    """A batch run writes figures/<preset>/ (rewritten by every run): none of them may be committed by
    accident; only figures/gallery/ is tracked."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for preset in N.NOTEBOOK_PRESETS:
        r = subprocess.run(["git", "check-ignore", "-q", f"figures/{preset}/index.md"], cwd=REPO)
        assert r.returncode == 0, f"figures/{preset}/ is not in .gitignore"
