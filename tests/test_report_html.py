"""virkit report ... --html: one self-contained page for a run, an outside model's eval.json, or several
side by side (smoke-preset runs, seconds)."""

from __future__ import annotations

import base64
import json
import re

import pytest

from virkit import cli
from virkit.errors import VirkitError
from virkit.paper.report_evaluations import load_evaluation
from virkit.paper.report_html import SECTIONS, write_html_report

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = re.compile(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory, stand_in_root):
    from virkit.training.config import resolve_config
    from virkit.training.trainer import train

    root = tmp_path_factory.mktemp("report_html")
    cfg = resolve_config("smoke", method="at", device="cpu", data_root=str(stand_in_root))
    run = train(cfg, root / "at", quiet=True)
    out = root / "outside" / "eval.json"
    code = cli.main(
        [
            "evaluate",
            "--model",
            "virkit.models.examples:tiny_cnn",
            "--dataset",
            "cifar10",
            "--data-root",
            str(stand_in_root),
            "--n-examples",
            "32",
            "--attacks",
            "natural,fgsm,pgd10",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return {"root": root, "run": run, "outside": out}


def _check_self_contained(page: str) -> list[bytes]:
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for key in SECTIONS:
        assert f"<section id='{key}'>" in page, key
    # no external assets: every image is inline, no style sheet, script or font is fetched
    assert "<link" not in page and "<script" not in page and "url(" not in page
    srcs = re.findall(r"src='([^']*)'", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    pngs = [base64.b64decode(m) for m in PNG.findall(page)]
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5_000 for p in pngs)
    return pngs


def test_page_for_one_run(evaluations, tmp_path, capsys):
    out = tmp_path / "page" / "at.html"
    assert cli.main(["report", str(evaluations["run"]), "--html", str(out)]) == 0
    assert f"written: {out}" in capsys.readouterr().out
    page = out.read_text()
    pngs = _check_self_contained(page)
    assert len(pngs) == 3  # per-class bars (one panel, every attack), confusion, fairness
    ev = json.loads((evaluations["run"] / "eval.json").read_text())
    assert "AT (seed 0)" in page and "Natural" in page and "FGSM" in page
    nat = f"{100 * ev['attacks']['natural']['accuracy']:.1f}"
    assert f"<td>{nat}</td>" in page or f"<b>{nat}</b>" in page  # the headline number
    assert "8/255 (Linf)" in page and ev["model_fingerprint"] in page and "preset smoke" in page
    assert "JPEG stand-in" in page and "commit " in page
    assert ("No warning among the attacks run" in page) == (not ev["warnings"])
    worst = ev["fairness"]["fgsm"]["worst_class"]
    assert worst in page.split("<section id='worst-classes'>")[1].split("</section>")[0]


def test_page_for_an_outside_model_and_side_by_side(evaluations, tmp_path):
    single = write_html_report(evaluations["outside"], tmp_path / "outside.html")
    page = single.read_text()
    _check_self_contained(page)
    assert "kind: callable; source: virkit.models.examples:tiny_cnn" in page and "PGD-10" in page
    both = write_html_report([evaluations["run"], evaluations["outside"].parent], tmp_path / "both.html")
    page = both.read_text()
    pngs = _check_self_contained(page)
    # per-class bars: one figure per attack of either (natural, fgsm, pgd10); confusion; fairness
    assert len(pngs) == 5
    head = page.split("<section id='headline'>")[1].split("</section>")[0]
    assert "AT (seed 0)" in head and "virkit.models.examples:tiny_cnn" in head
    assert "not directly comparable" in head  # 64 test images against 32
    prov = page.split("<section id='provenance'>")[1]
    assert prov.count("<h3>") == 2


def test_same_labels_are_told_apart(evaluations, tmp_path):
    import shutil

    twin = tmp_path / "at-copy"
    shutil.copytree(evaluations["run"], twin)
    page = write_html_report([evaluations["run"], twin], tmp_path / "twins.html").read_text()
    assert "AT (seed 0) [at]" in page and "AT (seed 0) [at-copy]" in page
    assert "same test images with the same eps" in page


def test_bad_input_is_one_line(evaluations, tmp_path, capsys):
    with pytest.raises(VirkitError, match="does not exist"):
        load_evaluation(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VirkitError, match="holds no evaluation .*virkit evaluate"):
        load_evaluation(tmp_path / "empty")
    (tmp_path / "other.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(VirkitError, match="is not a virkit evaluation"):
        load_evaluation(tmp_path / "other.json")
    assert cli.main(["report", str(tmp_path / "empty"), "--html", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("virkit: error: ")
    assert not (tmp_path / "x.html").exists()
