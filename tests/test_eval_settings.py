"""One evaluation signature: :class:`virkit.evaluation.EvalSettings` holds every setting and its
default, once; ``evaluate_model``, ``evaluate_run``, ``evaluate_source`` and ``virkit evaluate`` take
one and add only what is their own; what a run's evaluation leaves unset is the run's own value."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from virkit.errors import VirkitError
from virkit.evaluation import DEFAULT_ATTACKS, EvalSettings, evaluate_model, evaluate_run, evaluate_source

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {f.name for f in dataclasses.fields(EvalSettings)}
ENTRY_POINTS = (evaluate_model, evaluate_run, evaluate_source)


def _checkpoint(path: Path, **cfg) -> Path:
    from test_bad_input import write_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_checkpoint(path, **cfg)


def test_entry_points_take_settings_and_only_their_own_arguments():
    for fn in ENTRY_POINTS:
        params = inspect.signature(fn).parameters
        assert "settings" in list(params)[1:3], fn.__name__
        assert not FIELDS & set(params), f"{fn.__name__} restates {sorted(FIELDS & set(params))}"


def test_cli_options_that_are_settings_default_to_unset():
    from virkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    evaluate = sub.choices["evaluate"]
    named = [a for a in evaluate._actions if a.dest in FIELDS]
    assert {a.dest for a in named} >= {
        "attacks",
        "eps",
        "seed",
        "batch_size",
        "n_examples",
        "norm",
        "replace",
        "save_adv",
        "save_adv_png",
        "allow_tf32",
        "compile",
    }
    assert [a.dest for a in named if a.default is not None] == []
    assert ",".join(DEFAULT_ATTACKS["Linf"]) in evaluate.format_help().replace("\n", "").replace(" ", "")


def test_default_attack_list_is_written_once():
    defaults = {tuple(v) for v in DEFAULT_ATTACKS.values()}
    joined = {",".join(v) for v in defaults}
    holders = set()
    for path in sorted((ROOT / "virkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, (ast.List, ast.Tuple))
                and node.elts
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
            ):
                if tuple(e.value for e in node.elts) in defaults:
                    holders.add(path.relative_to(ROOT).as_posix())
            elif isinstance(node, ast.Constant) and node.value in joined:
                holders.add(path.relative_to(ROOT).as_posix())
    assert holders == {"virkit/evaluation/settings.py"}


def test_old_signatures_are_refused_by_name():
    for fn, args in ((evaluate_model, (None, None)), (evaluate_run, ("x",)), (evaluate_source, ("x",))):
        with pytest.raises(TypeError, match=f"{fn.__name__} takes an EvalSettings"):
            fn(*args, ["natural", "fgsm"])


def test_settings_are_checked_when_made_and_resolved_once():
    with pytest.raises(VirkitError, match="eps=2.0 is out of range"):
        EvalSettings(eps=2.0)
    with pytest.raises(VirkitError, match="attack 'cw'"):
        EvalSettings(["natural", "cw"], norm="L2")
    with pytest.raises(VirkitError, match="n_examples must be positive"):
        EvalSettings(n_examples=0)
    unset = EvalSettings(batch_size=8)
    assert (unset.attacks, unset.eps, unset.seed) == (None, None, None)
    full = unset.resolved()
    assert full.attacks == list(DEFAULT_ATTACKS["Linf"]) and full.eps == pytest.approx(8 / 255) and full.seed == 0
    assert full.batch_size == 8 and full.resolved() is full
    assert EvalSettings(norm="L2").resolved().attacks == list(DEFAULT_ATTACKS["L2"])
    assert EvalSettings(norm="L2").resolved(eps=None).eps == 0.5
    own = unset.resolved(attacks=["natural"], eps=4 / 255, seed=7)
    assert (own.attacks, own.eps, own.seed) == (["natural"], 4 / 255, 7)
    given = EvalSettings(["fgsm"], eps=2 / 255, seed=1).resolved(attacks=["natural"], eps=4 / 255, seed=7)
    assert (given.attacks, given.eps, given.seed) == (["fgsm"], 2 / 255, 1)


def test_one_settings_object_for_every_entry_point(stand_in_root, tmp_path):
    """The same EvalSettings evaluates a model on a split, a run and an outside source; the three
    see the same images, the model and the source the same weights and results; the settings
    object is not changed."""
    from virkit.data import load_dataset, test_subset
    from virkit.models.examples import tiny_cnn

    torch.manual_seed(0)
    net = tiny_cnn().eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    ck = _checkpoint(tmp_path / "run" / "last.pt", seed=5)
    settings = EvalSettings(["natural", "fgsm"], n_examples=16, batch_size=8, progress=False)
    frozen = copy.deepcopy(settings)

    split = test_subset(load_dataset("cifar10", stand_in_root, "test"), 16)
    on_split = evaluate_model(net, split, settings, device="cpu", out_path=tmp_path / "model.json")
    run = evaluate_run(ck, settings, device="cpu", data_root=str(stand_in_root), out=tmp_path / "run.json")
    source = evaluate_source(
        "virkit.models.examples:tiny_cnn",
        settings,
        weights=tmp_path / "w.pt",
        device="cpu",
        data_root=str(stand_in_root),
        out=tmp_path / "source.json",
    )

    assert settings == frozen
    for doc in (on_split, run, source):
        assert list(doc["attacks"]) == ["natural", "fgsm"] and doc["n_examples"] == 16
        assert doc["norm"] == "Linf" and doc["eps"] == pytest.approx(8 / 255)
        assert doc["labels"] == on_split["labels"]
    assert on_split["seed"] == source["seed"] == 0 and run["seed"] == 5  # unset: the run's own seed
    assert run["extra"]["checkpoint"] == "last.pt" and run["extra"]["test_subset"] == 16
    assert source["extra"]["test_subset"] == 16 and on_split["extra"] == {}
    assert source["model_fingerprint"] == on_split["model_fingerprint"]
    for name in ("natural", "fgsm"):
        assert source["attacks"][name]["robust"] == on_split["attacks"][name]["robust"]


def test_a_run_fills_what_the_settings_leave_unset(stand_in_root, tmp_path):
    ck = _checkpoint(
        tmp_path / "run" / "last.pt", seed=5, eps=4 / 255, eval_attacks=["natural", "fgsm"], test_subset=12
    )
    root = str(stand_in_root)
    doc = evaluate_run(
        ck, EvalSettings(batch_size=8, progress=False), device="cpu", data_root=root, out=tmp_path / "a.json"
    )
    assert (list(doc["attacks"]), doc["eps"], doc["seed"], doc["n_examples"]) == (["natural", "fgsm"], 4 / 255, 5, 12)
    doc = evaluate_run(
        ck,
        EvalSettings(["natural"], eps=2 / 255, seed=1, n_examples=8, progress=False),
        device="cpu",
        data_root=root,
        out=tmp_path / "b.json",
    )
    assert (list(doc["attacks"]), doc["eps"], doc["seed"], doc["n_examples"]) == (["natural"], 2 / 255, 1, 8)
    doc = evaluate_run(
        ck, EvalSettings(["natural"], norm="L2", progress=False), device="cpu", data_root=root, out=tmp_path / "c.json"
    )
    assert doc["norm"] == "L2" and doc["eps"] == 0.5  # not the training eps, a Linf radius
    # the run's own attacks are checked against the settings before anything is written
    cw = _checkpoint(tmp_path / "cw" / "last.pt", eval_attacks=["natural", "cw"])
    with pytest.raises(VirkitError, match="attack 'cw'"):
        evaluate_run(
            cw,
            EvalSettings(norm="L2", progress=False),
            device="cpu",
            data_root=root,
            out=tmp_path / "new" / "eval.json",
        )
    assert not (tmp_path / "new").exists()
