"""Issue #15, models in: ``virkit evaluate --model SOURCE`` for ``module:callable`` (+ ``--weights`` in
.safetensors or .pt), ``robustbench:NAME`` (RobustBench's architecture, weights from a file in its cache
layout; random weights here, no network), TorchScript files and ``--normalize``; and bad input: one
line, exit 2, nothing written.

Every case evaluates a handful of CIFAR-10 stand-in test images with cheap attacks.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
import torch

from virkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
# robustbench is optional (virkit[robustbench]); find_spec, not import: robustbench 1.1's __init__ needs
# pkg_resources, which virkit.evaluation.loading works around
needs_robustbench = pytest.mark.skipif(
    importlib.util.find_spec("robustbench") is None,
    reason="robustbench not installed (pip install 'virkit[robustbench]')",
)

MODULE = "vk_outside_models"
SOURCE = textwrap.dedent("""
    import torch
    from torch import nn
    from virkit.models.examples import tiny_cnn

    def good():
        torch.manual_seed(0)
        return tiny_cnn()

    def not_a_module():
        return 42

    def raises():
        raise RuntimeError("no GPU here")

    class _Probs(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = good()

        def forward(self, x):
            return self.net(x).softmax(1)

    def probabilities():
        return _Probs()

    class _NaN(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = good()

        def forward(self, x):
            return self.net(x) * float("nan")

    def nan():
        return _NaN()

    def hundred_classes():
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 100))
""")


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def models_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outside")
    (folder / f"{MODULE}.py").write_text(SOURCE)
    return folder


@pytest.fixture
def env(models_module, stand_in_root, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(models_module))
    monkeypatch.setenv("VIRKIT_DATA", str(stand_in_root))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _good_state_dict() -> dict:
    from virkit.models.examples import tiny_cnn

    torch.manual_seed(1)
    return tiny_cnn().state_dict()


def _evaluate(*args: str, attacks: str = "natural,fgsm") -> list[str]:
    return ["evaluate", *args, "--attacks", attacks, "--n-examples", "20", "--device", "cpu", "--batch-size", "10"]


def test_module_callable_with_safetensors_and_pt_weights(env, capsys):
    from safetensors.torch import save_file

    sd = _good_state_dict()
    save_file(sd, str(env / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, env / "w.pt")  # DataParallel layout
    docs = []
    for w in ("w.safetensors", "w.pt"):
        out = env / w.replace(".", "_") / "eval.json"
        assert main(_evaluate("--model", f"{MODULE}:good", "--weights", w, "--out", str(out))) == 0
        docs.append(json.loads(out.read_text()))
    a, b = docs
    assert a["model_fingerprint"] == b["model_fingerprint"]  # the same weights from both files
    assert a["attacks"]["natural"]["predictions"] == b["attacks"]["natural"]["predictions"]
    src = a["model_source"]
    assert src["kind"] == "callable" and src["source"] == f"{MODULE}:good" and src["weights"] == "w.safetensors"
    assert a["n_examples"] == 20 and a["dataset"] == "cifar10" and a["norm"] == "Linf"
    counts = [a["labels"].count(c) for c in range(10)]
    assert counts == [2] * 10  # the seeded class-balanced draw
    # without --out: the documented default folder
    assert main(_evaluate("--model", f"{MODULE}:good", "--weights", "w.pt")) == 0
    assert (env / "runs" / "eval" / f"{MODULE}.good-cifar10-Linf" / "eval.json").is_file()
    assert "written: runs/eval" in capsys.readouterr().out


def test_normalize_wraps_the_model_and_is_part_of_its_identity(env):
    out1, out2 = env / "a" / "eval.json", env / "b" / "eval.json"
    assert main(_evaluate("--model", f"{MODULE}:good", "--out", str(out1), attacks="natural")) == 0
    assert (
        main(_evaluate("--model", f"{MODULE}:good", "--normalize", "cifar10", "--out", str(out2), attacks="natural"))
        == 0
    )
    a, b = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert a["model_fingerprint"] != b["model_fingerprint"]
    assert b["model_source"]["normalize"]["mean"] == [0.4914, 0.4822, 0.4465]
    from virkit.evaluation.sources import parse_normalize

    assert parse_normalize("0.5,0.25") == ((0.5,), (0.25,))
    assert parse_normalize("1,2,3,4,5,6") == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))


def test_torchscript_file(env):
    from virkit.models.examples import tiny_cnn

    torch.manual_seed(2)
    net = tiny_cnn().eval()
    torch.jit.save(torch.jit.script(net), str(env / "net.ts.pt"))
    out = env / "ts" / "eval.json"
    assert main(_evaluate("--model", str(env / "net.ts.pt"), "--out", str(out), attacks="natural,pgd10")) == 0
    doc = json.loads(out.read_text())
    assert doc["model_source"]["kind"] == "torchscript"
    from virkit.data.datasets import load_dataset, test_subset

    split = test_subset(load_dataset("cifar10", None, "test"), 20)
    with torch.no_grad():
        pred = net(split.float_images()).argmax(1).tolist()
    assert doc["attacks"]["natural"]["predictions"] == pred
    assert doc["attacks"]["pgd10"]["accuracy"] <= doc["attacks"]["natural"]["accuracy"]


# ------------------------------------------------------------------------------------------- RobustBench
def _rb_file(root: Path, name: str, threat: str, drop=(), prefix: str = "module.") -> Path:
    from virkit.evaluation.loading import robustbench_weights_path, robustbench_zoo

    zoo, BD, TM = robustbench_zoo()
    torch.manual_seed(0)
    model = zoo[BD("cifar10")][TM(threat)][name]["model"]()
    sd = {prefix + k: v for k, v in model.state_dict().items() if k not in drop}
    path = robustbench_weights_path(name, "cifar10", threat, root / "models")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": sd}, path)  # RobustBench's checkpoint layout (DataParallel keys)
    return path


@needs_robustbench
@pytest.mark.parametrize(
    "name,threat,drop", [("Ding2020MMA", "Linf", ()), ("Rice2020Overfitting", "L2", ("mu", "sigma"))]
)
def test_robustbench_architecture_with_weights_from_its_cache_layout(env, name, threat, drop):
    path = _rb_file(env, name, threat, drop)
    out = env / "rb" / "eval.json"
    assert (
        main(
            _evaluate(
                "--model",
                f"robustbench:{name}",
                "--threat-model",
                threat,
                "--model-dir",
                "models",
                "--out",
                str(out),
                attacks="natural,fgsm",
            )
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["norm"] == threat and doc["eps"] == pytest.approx(8 / 255 if threat == "Linf" else 0.5)
    assert doc["model_source"]["robustbench_name"] == name and doc["model_source"]["weights"] == str(
        Path("models") / "cifar10" / threat / f"{name}.pt"
    )
    assert path.is_file()


@needs_robustbench
def test_robustbench_without_weights_names_the_file_and_never_downloads(env, capsys):
    before = snapshot(env)
    rc = main(_evaluate("--model", "robustbench:Standard", "--out", str(env / "o" / "eval.json")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "models/cifar10/Linf/Standard.pt" in err[0] and "never downloads" in err[0]
    assert snapshot(env) == before
    rc = main(_evaluate("--model", "robustbench:Standrad"))
    assert rc == 2 and "did you mean Standard" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- bad input
def _weights_that_do_not_fit(env: Path) -> str:
    from safetensors.torch import save_file

    sd = _good_state_dict()
    sd = {("x." + k if i < 7 else k): v for i, (k, v) in enumerate(sd.items())}
    save_file(sd, str(env / "bad.safetensors"))
    return "bad.safetensors"


BAD = [
    ("no-module", lambda e: ["--model", "vk_no_such_module:good"], ["cannot import module 'vk_no_such_module'"]),
    ("no-attribute", lambda e: ["--model", f"{MODULE}:missing"], ["has no attribute 'missing'"]),
    ("not-a-module", lambda e: ["--model", f"{MODULE}:not_a_module"], ["returned int, not a torch.nn.Module"]),
    ("raises", lambda e: ["--model", f"{MODULE}:raises"], ["calling raises() failed", "no GPU here"]),
    (
        "weights-misfit",
        lambda e: ["--model", f"{MODULE}:good", "--weights", _weights_that_do_not_fit(e)],
        [
            "do not fit",
            "6 missing key(s): f.0.weight, f.0.bias, f.2.weight, f.2.bias, f.6.weight, ...",
            "6 unexpected key(s): x.f.0.bias, x.f.0.weight, x.f.2.bias, x.f.2.weight, x.f.6.bias, ...",
        ],
    ),
    ("classes", lambda e: ["--model", f"{MODULE}:hundred_classes"], ["returns 100 outputs per image", "10 classes"]),
    ("probabilities", lambda e: ["--model", f"{MODULE}:probabilities"], ["probabilities", "--probabilities"]),
    ("nan", lambda e: ["--model", f"{MODULE}:nan"], ["NaN"]),
    ("missing-file", lambda e: ["--model", "nothing/here.pt"], ["does not exist"]),
    (
        "l2-only-linf-attack",
        lambda e: ["--model", f"{MODULE}:good", "--norm", "L2", "--attacks", "natural,cw"],
        ["attack 'cw' is Linf only"],
    ),
]


@pytest.mark.parametrize("build,expected", [pytest.param(b, e, id=i) for i, b, e in BAD])
def test_bad_outside_model_one_line_exit_2_nothing_written(env, build, expected, capsys):
    args = build(env)
    before = snapshot(env)
    argv = ["evaluate", *args, "--out", str(env / "out" / "eval.json"), "--n-examples", "20", "--device", "cpu"]
    if "--attacks" not in argv:
        argv += ["--attacks", "natural,fgsm"]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("virkit: error: "), err
    for piece in expected:
        assert piece in err[0], (piece, err[0])
    assert snapshot(env) == before and not (env / "out").exists()


def test_probabilities_flag_evaluates_log_probabilities(env):
    out = env / "p" / "eval.json"
    assert main(_evaluate("--model", f"{MODULE}:probabilities", "--probabilities", "--out", str(out))) == 0
    ref = env / "g" / "eval.json"
    assert main(_evaluate("--model", f"{MODULE}:good", "--out", str(ref))) == 0
    a, b = json.loads(out.read_text()), json.loads(ref.read_text())
    assert a["attacks"]["natural"]["predictions"] == b["attacks"]["natural"]["predictions"]
    assert a["model_source"]["outputs"].startswith("probabilities")
