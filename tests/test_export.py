"""Issue #15, export: ``virkit export RUN --format robustbench`` writes the weights in RobustBench's key
layout and a model-info JSON with RobustBench's fields. The round trip: the exported WideResNet and
PreActResNet-18 load into RobustBench's own classes (strict) and give virkit's logits on [0, 1] inputs,
with normalization inside (RobustBench's ``mu``/``sigma``) and without.

The runs are written directly (random weights with randomized BatchNorm statistics, a synthetic
eval.json): nothing is trained.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from virkit.cli import main

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        importlib.util.find_spec("robustbench") is None,
        reason="robustbench not installed (pip install 'virkit[robustbench]')",
    ),
]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]


def fake_run(
    folder: Path,
    model: str,
    normalize: str = "dataset",
    n: int = 10000,
    aa: dict | None = None,
    source: str = "CIFAR-10 (torchvision)",
) -> Path:
    from virkit.io import atomic_torch_save
    from virkit.models.checkpoint import FORMAT, build_model_from_meta
    from virkit.training.config import config_hash, resolve_config

    cfg = resolve_config("tiny", eval_attacks=(), device="cpu", model=model, normalize=normalize)
    meta = {"classes": CLASSES, "mean": MEAN, "std": STD, "shape": [3, 32, 32], "source": source, "dataset": "cifar10"}
    torch.manual_seed(0)
    net = build_model_from_meta(cfg.to_dict(), meta)
    for m in net.modules():  # BatchNorm statistics and affine parameters away from their defaults
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "config_hash": config_hash(cfg)}))
    atomic_torch_save(
        {
            "format": FORMAT,
            "model": net.state_dict(),
            "optimizer": {},
            "epoch": 1,
            "best_metric": 0.0,
            "history": [],
            "config": json.dumps(cfg.to_dict()),
            "data": meta,
        },
        folder / "last.pt",
    )
    aa_settings = {
        "name": "AutoAttack (standard)",
        "norm": "Linf",
        "version": "standard",
        "apgd_steps": 100,
        "n_target_classes": 9,
        "fab_steps": 100,
        "square_queries": 5000,
        **(aa or {}),
    }
    doc = {
        "format": "virkit-eval-v1",
        "dataset": "cifar10",
        "source": source,
        "n_examples": n,
        "eps": 8 / 255,
        "norm": "Linf",
        "seed": 0,
        "attacks": {
            "natural": {"accuracy": 0.8512, "settings": {"name": "natural"}},
            "aa": {"accuracy": 0.5237, "settings": aa_settings},
        },
    }
    (folder / "eval.json").write_text(json.dumps(doc))
    return folder


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    "model,normalize",
    [("wrn-28-10", "dataset"), ("wrn-34-10", "none"), ("preact-resnet18", "dataset"), ("preact-resnet18", "none")],
)
def test_export_round_trip_into_robustbench_architectures(tmp_path, capsys, model, normalize):
    from virkit.evaluation.export import robustbench_architecture
    from virkit.models.checkpoint import load_checkpoint

    run = fake_run(tmp_path / "run", model, normalize)
    assert main(["export", str(run), "--format", "robustbench", "--name", "Virkit2025Test"]) == 0
    out = capsys.readouterr().out
    root = run / "export-robustbench"
    weights = root / "models" / "cifar10" / "Linf" / "Virkit2025Test.pt"
    info = json.loads((root / "model_info" / "cifar10" / "Linf" / "Virkit2025Test.json").read_text())
    assert info["name"] == "Virkit2025Test" and info["eps"] == "8/255" and info["dataset"] == "cifar10"
    assert info["clean_acc"] == "85.12" and info["autoattack_acc"] == "52.37" and info["reported"] == "52.37"
    assert (
        info["architecture"]
        == {"wrn-28-10": "WideResNet-28-10", "wrn-34-10": "WideResNet-34-10", "preact-resnet18": "PreActResNet-18"}[
            model
        ]
    )
    assert info["additional_data"] is False and info["number_forward_passes"] == 1 and info["footnote"] == ""
    for field in ("link", "authors", "venue", "unreliable"):
        assert field in info

    # RobustBench's own class (Rice2020OverfittingNet / -L2 with mu, sigma; the plain ones without)
    rb = robustbench_architecture(model, 10, normalized=normalize == "dataset").eval()
    assert type(rb).__module__.startswith("robustbench.")
    ck = torch.load(weights, weights_only=True)
    rb.load_state_dict(ck["state_dict"], strict=True)
    assert ("mu" in ck["state_dict"]) == (normalize == "dataset")
    ours, _ = load_checkpoint(run / "last.pt")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # [0, 1] inputs
    with torch.no_grad():
        a, b = ours(x), rb(x)
    torch.testing.assert_close(b, a, atol=2e-5 * float(a.abs().max()) + 1e-6, rtol=1e-4)
    assert "robustbench_class" in out


def test_export_refuses_a_subset_unless_allowed_and_then_says_so(tmp_path, capsys):
    run = fake_run(tmp_path / "run", "preact-resnet18", n=1000, aa={"apgd_steps": 10})
    before = snapshot(tmp_path)
    rc = main(["export", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "1000 of the 10,000 test images" in err[0] and "--allow-subset" in err[0]
    assert snapshot(tmp_path) == before
    assert main(["export", str(run), "--allow-subset", "--out", str(tmp_path / "exp")]) == 0
    info = json.loads(next((tmp_path / "exp" / "model_info").rglob("*.json")).read_text())
    assert "1000 of the 10,000 test images" in info["footnote"] and "apgd_steps 10" in info["footnote"]


@pytest.mark.parametrize(
    "case,expected",
    [
        ("no-aa", "no aa result"),
        ("plus", "standard AutoAttack"),
        ("stand-in", "JPEG stand-in"),
        ("small-cnn", "needs one of wrn-34-10, wrn-28-10, preact-resnet18"),
    ],
)
def test_export_errors_one_line_nothing_written(tmp_path, capsys, case, expected):
    model = "small-cnn" if case == "small-cnn" else "preact-resnet18"
    run = fake_run(
        tmp_path / "run",
        model,
        source="CIFAR-10 (JPEG stand-in)" if case == "stand-in" else "CIFAR-10",
        aa={"version": "plus"} if case == "plus" else None,
    )
    if case == "no-aa":
        doc = json.loads((run / "eval.json").read_text())
        del doc["attacks"]["aa"]
        (run / "eval.json").write_text(json.dumps(doc))
    before = snapshot(tmp_path)
    rc = main(["export", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and expected in err[0], err
    assert snapshot(tmp_path) == before
