"""The command line: help lists the registries; train and evaluate work end to end (tiny preset)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virkit.cli import main
from virkit.errors import VirkitError

STANDIN = Path(os.environ.get("VIRKIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def test_python_m_virkit_help_lists_names():
    out = subprocess.run(
        [sys.executable, "-m", "virkit", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in (
        "cifar10",
        "tiny-imagenet",
        "gaussian-mixture",
        "resnet18",
        "wrn-34-10",
        "preact-resnet18",
        "small-cnn",
        "vir-at",
        "vir-trades",
        "gairat",
        "mail-at",
        "mart",
        "quick",
        "paper",
    ):
        assert name in out, name


def test_list_command(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "methods:" in out and "vir-trades-sd" in out and "pgd100" in out


@pytest.mark.skipif(not (STANDIN / "cifar10-jpeg.tar.gz").is_file(), reason="CIFAR-10 stand-in absent")
def test_train_then_evaluate_via_cli(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--preset",
            "tiny",
            "--method",
            "vir-at",
            "--data-root",
            str(STANDIN),
            "--out",
            str(run),
            "--eval-attacks",
            "natural,fgsm",
            "--epochs",
            "1",
            "--reweight-start",
            "1",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["method"] == "vir-at" and cfg["environment"]["torch"]
    assert "JPEG stand-in" in cfg["data"]["source"]
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["attacks"]) >= {"natural", "fgsm"}
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(run),
            "--attacks",
            "natural,pgd10",
            "--n-examples",
            "64",
            "--data-root",
            str(STANDIN),
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    assert rc == 0
    ev2 = json.loads((tmp_path / "e.json").read_text())
    nat, pgd = ev2["attacks"]["natural"]["accuracy"], ev2["attacks"]["pgd10"]["accuracy"]
    assert 0 <= pgd <= nat <= 1
    assert len(ev2["attacks"]["pgd10"]["robust"]) == 64
    counts = [ev2["labels"].count(c) for c in range(10)]
    assert max(counts) - min(counts) <= 1  # class-balanced subset, as the trainer draws its test subset

    # by default the run's own test subset, seed and eval checkpoint: the training eval.json is extended
    before = json.loads((run / "eval.json").read_text())
    rc = main(["evaluate", "--checkpoint", str(run), "--attacks", "natural,fgsm,pgd10", "--data-root", str(STANDIN)])
    assert rc == 0
    after = json.loads((run / "eval.json").read_text())
    assert after["n_examples"] == before["n_examples"] == 256 and after["seed"] == 3
    for k in ("natural", "fgsm"):  # kept, not recomputed
        assert after["attacks"][k] == before["attacks"][k]
    assert "pgd10" in after["attacks"] and not (run / "eval.prev.json").exists()

    # another evaluation into the same file is refused (exit 2, file untouched) unless --replace
    capsys.readouterr()
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(run),
            "--attacks",
            "natural",
            "--n-examples",
            "40",
            "--data-root",
            str(STANDIN),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_examples 256 there, 40 here" in err[0] and "--replace" in err[0]
    assert json.loads((run / "eval.json").read_text()) == after
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(run),
            "--attacks",
            "natural",
            "--n-examples",
            "40",
            "--data-root",
            str(STANDIN),
            "--replace",
        ]
    )
    assert rc == 0
    assert json.loads((run / "eval.prev.json").read_text()) == after
    assert json.loads((run / "eval.json").read_text())["n_examples"] == 40


def test_evaluate_help_names_every_model_source_and_new_option():
    out = subprocess.run(
        [sys.executable, "-m", "virkit", "evaluate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for piece in (
        "--model",
        "--checkpoint",
        "module:callable",
        "robustbench:NAME",
        "TorchScript",
        "--weights",
        "--threat-model",
        "--model-dir",
        "--normalize",
        "--norm",
        "--aa-version",
        "--aa-components",
        "--aa-individual",
        "--save-adv",
        "torchrun",
    ):
        assert piece in out, piece
    out = subprocess.run(
        [sys.executable, "-m", "virkit", "export", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--format" in out and "robustbench" in out and "--allow-subset" in out


def test_autoattack_options_become_attack_settings():
    from virkit.cli import build_parser
    from virkit.cli.evaluate import attack_overrides

    p = build_parser()
    args = p.parse_args(
        [
            "evaluate",
            "--model",
            "x",
            "--aa-components",
            "apgd-ce,square",
            "--aa-individual",
            "--attack-settings",
            '{"aa": {"apgd_steps": 7}, "pgd10": {"steps": 3}}',
        ]
    )
    over = attack_overrides(args, ["natural", "aa", "aa-plus", "pgd10"])
    assert over["aa"] == {"apgd_steps": 7, "version": "custom", "components": ["apgd-ce", "square"], "individual": True}
    assert over["aa-plus"] == {"version": "custom", "components": ["apgd-ce", "square"], "individual": True}
    assert over["pgd10"] == {"steps": 3}
    args = p.parse_args(["evaluate", "--model", "x", "--aa-version", "plus"])
    with pytest.raises(VirkitError, match="need an AutoAttack in --attacks"):
        attack_overrides(args, ["natural", "pgd10"])
    args = p.parse_args(["evaluate", "--model", "x", "--aa-components", "apgd-ce,pgd"])
    with pytest.raises(VirkitError, match="unknown AutoAttack component"):
        attack_overrides(args, ["aa"])


@pytest.mark.skipif(not (STANDIN / "cifar10-jpeg.tar.gz").is_file(), reason="CIFAR-10 stand-in absent")
def test_evaluate_a_run_with_model_l2_autoattack_options_and_save_adv(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--method",
                "at",
                "--data-root",
                str(STANDIN),
                "--out",
                str(run),
                "--eval-attacks",
                "",
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    out, adv = tmp_path / "l2.json", tmp_path / "adv"
    rc = main(
        [
            "evaluate",
            "--model",
            str(run),
            "--norm",
            "L2",
            "--attacks",
            "natural,aa-plus",
            "--aa-individual",
            "--attack-settings",
            '{"aa-plus": {"apgd_steps": 3, "n_target_classes": 2, "fab_steps": 2, '
            '"square_queries": 10, "apgd_restarts": 1, "fab_restarts": 1}}',
            "--n-examples",
            "32",
            "--data-root",
            str(STANDIN),
            "--out",
            str(out),
            "--save-adv",
            str(adv),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["norm"] == "L2" and doc["eps"] == 0.5
    aa = doc["attacks"]["aa-plus"]
    assert aa["settings"]["individual"] is True and aa["components"]["mode"] == "individual"
    assert [k for k in aa["components"] if k != "mode"] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    from virkit.evaluation.evaluate import load_adversarial

    x, y = load_adversarial(adv, "aa-plus").tensors
    assert x.shape == (32, 3, 32, 32) and y.tolist() == doc["labels"]
    assert "as 8-bit images" in capsys.readouterr().out
