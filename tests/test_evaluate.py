"""virkit.evaluation.evaluate: eval.json contents, the eps-ball check, resume, errors, gradient-masking warnings,
and (slow) an end-to-end run of every attack of the paper."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from virkit.attacks import ATTACK_PRESETS, ATTACKS, Attack
from virkit.data.split import Split
from virkit.errors import VirkitError
from virkit.evaluation import document as eval_doc
from virkit.evaluation import evaluate as ev
from virkit.evaluation.checks import AdversarialCheckError, check_adversarial
from virkit.evaluation.evaluate import (
    EvalSettings,
    evaluate_model,
    masking_warnings,
)

EPS = 8 / 255
CLASSES = [f"c{i}" for i in range(10)]


class TinyCNN(nn.Module):
    def __init__(self, k: int = 10):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, k),
        )

    def forward(self, x):
        return self.f(x)


def synthetic_split(n: int, seed: int) -> Split:
    """Ten classes of 3x8x8 uint8 images (prototype + noise), as a virkit Split."""
    protos = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (0.5 + 0.25 * (protos[y] - 0.5) + 0.12 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return Split((x * 255).round().to(torch.uint8), y, list(CLASSES), "synthetic", "test synthetic")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TinyCNN()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    tr = synthetic_split(2048, seed=1)
    x, y = tr.float_images(), tr.y
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = F.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def split():
    return synthetic_split(300, seed=5)


FAST = {"pgd10": {"steps": 4, "step_size": 4 / 255}, "pgd20": {"steps": 5}, "pgd100": {"steps": 8}, "cw": {"steps": 5}}


def _run(model, split, attacks, tmp_path=None, **kw):
    kw.setdefault("n_examples", 40)
    kw.setdefault("batch_size", 16)
    kw.setdefault("progress", False)
    kw.setdefault("attack_overrides", {k: v for k, v in FAST.items() if k in attacks})
    out = tmp_path / "eval.json" if tmp_path is not None else None
    return evaluate_model(model, split, EvalSettings(attacks, **kw), out_path=out)


def test_eval_json_contents(model, split, tmp_path):
    attacks = ["natural", "fgsm", "pgd10", "cw"]
    res = _run(model, split, attacks, tmp_path, extra={"run": "x"})
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert not [f for f in os.listdir(tmp_path) if f != "eval.json"], "temporary files left behind"
    n = 40
    assert res["dataset"] == "synthetic" and res["classes"] == CLASSES and res["n_examples"] == n
    assert res["eps"] == pytest.approx(EPS) and res["seed"] == 0 and res["extra"] == {"run": "x"}
    assert list(res["attacks"]) == attacks
    y = split.y[:n]
    for name, r in res["attacks"].items():
        assert 0.0 <= r["accuracy"] <= 1.0
        assert len(r["robust"]) == n and set(r["robust"]) <= {0, 1}
        assert r["accuracy"] == pytest.approx(sum(r["robust"]) / n)
        cm = torch.tensor(r["confusion_matrix"])
        assert cm.shape == (10, 10) and int(cm.sum()) == n
        assert cm.sum(1).tolist() == torch.bincount(y, minlength=10).tolist()  # rows = true classes
        assert int(cm.diag().sum()) == sum(r["robust"])
        assert len(r["per_class_accuracy"]) == 10
        for c in range(10):
            if int(cm[c].sum()):
                assert r["per_class_accuracy"][c] == pytest.approx(float(cm[c, c] / cm[c].sum()))
        assert r["seconds"] >= 0 and isinstance(r["settings"], dict)
        assert r["accuracy"] <= res["attacks"]["natural"]["accuracy"]
        # robust under an attack implies robust naturally
        assert all(a <= b for a, b in zip(r["robust"], res["attacks"]["natural"]["robust"]))
    assert res["attacks"]["pgd10"]["settings"]["steps"] == 4  # override recorded
    assert res["attacks"]["fgsm"]["settings"]["name"] == "FGSM"
    wc = res["worst_case"]
    expect = [min(r["robust"][i] for r in res["attacks"].values()) for i in range(n)]
    assert wc["robust"] == expect and wc["accuracy"] == pytest.approx(sum(expect) / n)
    assert int(torch.tensor(wc["confusion_matrix"]).sum()) == n
    assert set(res["fairness"]) == set(attacks) | {"worst_case"}
    for name, f in res["fairness"].items():
        pcs = (res["worst_case"] if name == "worst_case" else res["attacks"][name])["per_class_accuracy"]
        vals = [v for v in pcs if v is not None]
        assert f["worst_class_accuracy"] == pytest.approx(min(vals))
        assert f["worst_class"] in CLASSES and pcs[CLASSES.index(f["worst_class"])] == f["worst_class_accuracy"]
        assert f["best_minus_worst"] == pytest.approx(max(vals) - min(vals))
        assert f["std_across_classes"] == pytest.approx(
            float(torch.tensor(vals, dtype=torch.float64).std(unbiased=False)), abs=1e-9
        )
    assert isinstance(res["warnings"], list)


def test_first_n_examples_in_split_order_and_determinism(model, split):
    a = _run(model, split, ["natural", "pgd10"], n_examples=24, seed=3)
    b = _run(model, split, ["natural", "pgd10"], n_examples=24, seed=3, batch_size=24)
    c = _run(model, split, ["natural", "pgd10"], n_examples=24, seed=3)
    assert a["attacks"]["pgd10"]["robust"] == c["attacks"]["pgd10"]["robust"]
    with torch.no_grad():
        pred = model(split.float_images()[:24]).argmax(1)
    assert a["attacks"]["natural"]["predictions"] == pred.tolist() == b["attacks"]["natural"]["predictions"]


def test_model_mode_dtype_and_grads_restored(model, split):
    m = TinyCNN()
    m.load_state_dict(model.state_dict())
    m.train()
    m.double()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = _run(m, split, ["natural", "fgsm"], n_examples=16)
    assert m.training and all(x.training for x in m.modules())
    assert next(m.parameters()).dtype == torch.float64
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())
    # the evaluation ran in fp32, eval mode: same natural predictions as the fp32 model
    with torch.no_grad():
        pred = model(split.float_images()[:16]).argmax(1).tolist()
    assert res["attacks"]["natural"]["predictions"] == pred


class _Spy:
    def __init__(self, real, calls, name):
        self.real, self.calls, self.name = real, calls, name

    def __call__(self, model, x, y):
        self.calls[self.name] = self.calls.get(self.name, 0) + 1
        return self.real(model, x, y)

    def describe(self):
        return self.real.describe()

    def __getattr__(self, name):  # details (AutoAttack's components) and the rest: the real attack's
        return getattr(self.real, name)


def test_resume_keeps_finished_attacks(model, split, tmp_path, monkeypatch):
    calls: dict[str, int] = {}
    real = ev.get_attack
    monkeypatch.setattr(ev, "get_attack", lambda name, **kw: _Spy(real(name, **kw), calls, name))
    first = _run(model, split, ["natural", "fgsm", "pgd10"], tmp_path)
    assert set(calls) == {"fgsm", "pgd10"}
    calls.clear()
    second = _run(model, split, ["natural", "fgsm", "pgd10", "cw"], tmp_path)
    assert set(calls) == {"cw"}, "finished attacks were rerun"
    for k in ("natural", "fgsm", "pgd10"):
        assert second["attacks"][k] == first["attacks"][k]
    # a later call with fewer attacks keeps the others in the file
    calls.clear()
    third = _run(model, split, ["natural"], tmp_path)
    assert calls == {} and set(third["attacks"]) == {"natural", "fgsm", "pgd10", "cw"}
    assert third["worst_case"] == second["worst_case"]
    # changed settings: refused (nothing overwritten) unless replace=True, then everything is recomputed
    # and the old file is kept beside the new one
    calls.clear()
    kept = (tmp_path / "eval.json").read_bytes()
    with pytest.raises(VirkitError, match="other settings .eps"):
        _run(model, split, ["natural", "fgsm", "pgd10"], tmp_path, eps=4 / 255)
    assert calls == {} and (tmp_path / "eval.json").read_bytes() == kept
    _run(model, split, ["natural", "fgsm", "pgd10"], tmp_path, eps=4 / 255, replace=True)
    assert set(calls) == {"fgsm", "pgd10"}
    assert (tmp_path / "eval.prev.json").read_bytes() == kept
    # changed attack settings: that attack is recomputed
    calls.clear()
    _run(model, split, ["natural", "fgsm", "pgd10"], tmp_path, eps=4 / 255, attack_overrides={"pgd10": {"steps": 2}})
    assert set(calls) == {"pgd10"}
    # another model: nothing is reused
    calls.clear()
    other = TinyCNN().eval()
    with pytest.raises(VirkitError, match="model fingerprint differs"):
        _run(other, split, ["natural", "fgsm"], tmp_path, eps=4 / 255)
    _run(other, split, ["natural", "fgsm"], tmp_path, eps=4 / 255, replace=True)
    assert set(calls) <= {"fgsm"}
    assert json.loads((tmp_path / "eval.json").read_text())["attacks"].keys() == {"natural", "fgsm"}


def test_errors(model, split, tmp_path):
    with pytest.raises(VirkitError) as e:
        _run(model, split, ["natural", "pgd1000"])
    assert "pgd100" in str(e.value) and "mde" in str(e.value)  # lists the valid names
    with pytest.raises(VirkitError, match="n_examples"):
        _run(model, split, ["natural"], n_examples=len(split) + 1)
    with pytest.raises(VirkitError):
        _run(model, split, ["natural"], n_examples=0)
    with pytest.raises(VirkitError):
        _run(model, split, [])
    assert not (tmp_path / "eval.json").exists()


class _Broken(Attack):
    name = "broken"
    paper = "none"

    def __init__(self, eps=EPS, bounds=(0.0, 1.0), seed=0, mode="ball"):
        super().__init__(eps, bounds, seed)
        self.mode = mode

    def __call__(self, model, x, y):  # bypasses the base class projection on purpose
        if self.mode == "ball":
            return (x + 2 * self.eps).clamp(0, 1) if x.max() < 0.9 else (x - 2 * self.eps).clamp(0, 1)
        return x + 0.5


@pytest.mark.parametrize("mode", ["ball", "box"])
def test_adversarial_examples_are_checked_before_scoring(model, split, monkeypatch, mode):
    monkeypatch.setitem(ATTACKS, "broken", _Broken)
    monkeypatch.setitem(ATTACK_PRESETS, "broken", ("broken", {"mode": mode}))
    with pytest.raises(AdversarialCheckError):
        _run(model, split, ["natural", "broken"], attack_overrides={})


def test_check_adversarial():
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    check_adversarial(x + EPS, x, EPS)
    check_adversarial(x + EPS + 5e-7, x, EPS)  # within the 1e-6 tolerance
    with pytest.raises(AdversarialCheckError):
        check_adversarial(x + EPS + 1e-5, x, EPS)
    with pytest.raises(AdversarialCheckError):
        check_adversarial(torch.zeros_like(x) - 1e-4, torch.zeros_like(x), EPS)
    with pytest.raises(AdversarialCheckError):
        check_adversarial(x[:2], x, EPS)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(AdversarialCheckError):
        check_adversarial(bad, x, EPS)


def test_masking_warnings():
    assert (
        masking_warnings(
            {
                "natural": 0.8,
                "fgsm": 0.55,
                "pgd20": 0.5,
                "pgd100": 0.49,
                "cw": 0.48,
                "aa": 0.45,
                "square": 0.52,
                "spsa": 0.53,
            }
        )
        == []
    )
    w = masking_warnings({"fgsm": 0.5, "pgd100": 0.55})
    assert len(w) == 1 and "fgsm" in w[0] and "pgd100" in w[0]
    w = masking_warnings({"pgd100": 0.5, "aa": 0.52})
    assert len(w) == 1 and "aa" in w[0]
    w = masking_warnings({"pgd100": 0.5, "cw": 0.51, "square": 0.45})
    assert len(w) == 1 and "square" in w[0] and "pgd100" in w[0] and "cw" in w[0]
    w = masking_warnings({"pgd10": 0.5, "pgd20": 0.49, "pgd100": 0.51})
    assert len(w) == 2 and all("pgd100" in m for m in w)


def test_warnings_are_recorded_and_printed(model, split, monkeypatch, capsys):
    """A model that hides its gradients: PGD does worse than FGSM, which must be flagged."""

    class Masked(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):  # quantize the input: zero gradient almost everywhere except a straight-through part
            return self.net(x + (torch.round(x * 4) / 4 - x).detach())

    fake = {"fgsm": 0.2, "pgd10": 0.3}
    monkeypatch.setattr(eval_doc, "masking_warnings", lambda acc: masking_warnings({**acc, **fake}))
    res = _run(Masked(model), split, ["natural", "fgsm"], n_examples=16)
    assert res["warnings"] and "pgd10" in res["warnings"][0]
    assert "warning" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
PAPER_ATTACKS = ["natural", "fgsm", "pgd100", "cw", "fmn100", "aa", "mde", "square", "spsa"]


@pytest.mark.slow
def test_every_paper_attack_end_to_end_at_paper_settings(model, split, tmp_path):
    """All attacks of Sec. 5.4 with their paper settings (SPSA 100 x 256 samples, Square and
    AutoAttack's Square 5000 queries, ...) on 64 images, on the tiny CPU model."""
    t0 = time.time()
    res = evaluate_model(
        model,
        split,
        EvalSettings(PAPER_ATTACKS, n_examples=64, batch_size=64, progress=False),
        out_path=tmp_path / "eval.json",
    )
    elapsed = time.time() - t0
    acc = {k: v["accuracy"] for k, v in res["attacks"].items()}
    assert list(acc) == PAPER_ATTACKS
    assert all(v <= acc["natural"] for v in acc.values())
    assert acc["aa"] <= acc["pgd100"] + 1 / 64 and acc["mde"] <= acc["pgd100"] + 1 / 64
    assert res["worst_case"]["accuracy"] <= min(acc.values())
    assert (
        res["attacks"]["spsa"]["settings"]["samples"] == 256
        and res["attacks"]["square"]["settings"]["n_queries"] == 5000
    )
    print(
        f"every paper attack on 64 images: {elapsed:.1f} s; " + ", ".join(f"{k} {100 * v:.1f}" for k, v in acc.items())
    )


# ---------------------------------------------------------------------------------------------
# Issue #15: L2, AutoAttack components, adversarial examples out, resume inside an attack
AA_FAST = {"aa": {"apgd_steps": 4, "n_target_classes": 2, "fab_steps": 3, "square_queries": 20}}


def test_check_adversarial_l2_is_per_example():
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    d = torch.randn_like(x)
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5
    check_adversarial(x + d, x, 0.5, norm="L2")
    check_adversarial(x + d * (1 + 1e-6), x, 0.5, norm="L2")  # within the 1e-5 tolerance
    bad = x + d
    bad[2] = x[2] + d[2] * 1.01
    with pytest.raises(AdversarialCheckError, match="L2 norm .* at example 2"):
        check_adversarial(bad, x, 0.5, norm="L2")
    # an L2 ball of 0.5 allows large single pixels an L-inf check would refuse
    spike = x.clone()
    spike[:, 0, 0, 0] += 0.2
    check_adversarial(spike.clamp(0, 1), x, 0.5, norm="L2")
    with pytest.raises(AdversarialCheckError):
        check_adversarial(spike.clamp(0, 1), x, EPS)


def test_l2_evaluation(model, split, tmp_path):
    res = _run(
        model,
        split,
        ["natural", "pgd10", "aa"],
        tmp_path,
        norm="L2",
        eps=None,
        attack_overrides={"pgd10": {"steps": 4}, **AA_FAST},
    )
    assert res["norm"] == "L2" and res["eps"] == 0.5
    for k in ("pgd10", "aa"):
        assert res["attacks"][k]["settings"]["norm"] == "L2"
        assert res["attacks"][k]["accuracy"] <= res["attacks"]["natural"]["accuracy"]
    assert res["attacks"]["pgd10"]["settings"]["step_size"] == pytest.approx(0.5 / 4)
    # the same file cannot be resumed in the other threat model
    with pytest.raises(VirkitError, match="norm"):
        _run(model, split, ["natural"], tmp_path)
    with pytest.raises(VirkitError, match="'cw' is Linf only"):
        _run(model, split, ["natural", "cw"], norm="L2")


def test_files_written_before_l2_existed_are_resumed(model, split, tmp_path):
    first = _run(model, split, ["natural", "fgsm"], tmp_path)
    doc = json.loads((tmp_path / "eval.json").read_text())
    del doc["norm"]
    (tmp_path / "eval.json").write_text(json.dumps(doc))
    second = _run(model, split, ["natural", "fgsm"], tmp_path)
    assert second["attacks"]["fgsm"] == first["attacks"]["fgsm"]


@pytest.mark.parametrize("individual", [False, True])
def test_autoattack_components_in_eval_json(model, split, tmp_path, individual):
    over = {"aa": {**AA_FAST["aa"], "individual": individual}}
    res = _run(model, split, ["natural", "aa"], tmp_path, attack_overrides=over)
    aa = res["attacks"]["aa"]
    comps = aa["components"]
    assert comps["mode"] == ("individual" if individual else "sequential")
    names = [k for k in comps if k != "mode"]
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    # where the time went, per component, summed over the batches (not part of the results' identity)
    assert list(aa["component_seconds"]) == names and all(v >= 0 for v in aa["component_seconds"].values())
    assert sum(aa["component_seconds"].values()) <= aa["seconds"]
    nat = res["attacks"]["natural"]["robust"]
    for k in names:
        c = comps[k]
        assert len(c["robust"]) == 40 and c["accuracy"] == pytest.approx(sum(c["robust"]) / 40)
        assert all(a <= b for a, b in zip(c["robust"], nat))
    worst = [min(comps[k]["robust"][i] for k in names) for i in range(40)]
    assert aa["robust"] == worst  # both modes: robust only if every component failed
    if not individual:
        assert comps["square"]["robust"] == aa["robust"]


def test_save_adv_and_load_adversarial(model, split, tmp_path):
    adv = tmp_path / "adv"
    res = _run(model, split, ["natural", "fgsm", "pgd10"], tmp_path, save_adv=adv)
    assert sorted(p.name for p in adv.iterdir()) == ["fgsm", "pgd10"]
    x = split.float_images()[:40]
    for name in ("fgsm", "pgd10"):
        ds = ev.load_adversarial(adv, name)
        xa, y = ds.tensors
        assert xa.dtype == torch.float32 and xa.shape == x.shape and torch.equal(y, split.y[:40])
        assert (xa - x).abs().max() <= EPS + 1e-6
        with torch.no_grad():
            assert ((model(xa).argmax(1) == y).int().tolist()) == res["attacks"][name]["robust"]
        q, _, qpred = ev.load_adversarial(adv, name, quantized=True, with_predictions=True).tensors
        assert torch.equal(q * 255, (q * 255).round()) and (q - xa).abs().max() <= 0.5 / 255 + 1e-6
        u = res["attacks"][name]["uint8"]
        with torch.no_grad():
            assert torch.equal(model(q).argmax(1), qpred)
        assert u["robust"] == (qpred == y).int().tolist() and u["n_outside_ball"] == 0
        assert u["max_distance"] <= EPS + 1e-6  # eps = 8/255 lies on the grid: rounding stays in the ball
    with pytest.raises(VirkitError, match="no adversarial examples of 'cw'.*fgsm, pgd10"):
        ev.load_adversarial(adv, "cw")
    # asking for the examples of an attack finished without --save-adv reruns it
    calls: dict[str, int] = {}
    real = ev.get_attack
    import virkit.evaluation.evaluate as evm

    evm_get = evm.get_attack
    try:
        evm.get_attack = lambda name, **kw: _Spy(real(name, **kw), calls, name)
        _run(model, split, ["natural", "fgsm", "pgd10"], tmp_path, save_adv=tmp_path / "adv2")
    finally:
        evm.get_attack = evm_get
    assert set(calls) == {"fgsm", "pgd10"}


class _Interrupt(Exception):
    pass


def test_an_attack_interrupted_after_some_batches_continues_from_them(model, split, tmp_path, monkeypatch):
    ref = _run(model, split, ["natural", "aa"], attack_overrides=AA_FAST, batch_size=8)
    calls: dict[str, int] = {}
    real = ev.get_attack

    class Dies(_Spy):
        def __call__(self, model, x, y):
            if calls.get(self.name, 0) == 2:
                raise _Interrupt
            return super().__call__(model, x, y)

    monkeypatch.setattr(ev, "get_attack", lambda name, **kw: Dies(real(name, **kw), calls, name))
    with pytest.raises(_Interrupt):
        _run(model, split, ["natural", "aa"], tmp_path, attack_overrides=AA_FAST, batch_size=8)
    state = tmp_path / ".eval.json.state" / "aa"
    assert sorted(p.name for p in state.glob("b*.pt")) == ["b000000.pt", "b000001.pt"]
    calls.clear()
    monkeypatch.setattr(ev, "get_attack", lambda name, **kw: _Spy(real(name, **kw), calls, name))
    res = _run(model, split, ["natural", "aa"], tmp_path, attack_overrides=AA_FAST, batch_size=8)
    n_batches = -(-sum(ref["attacks"]["natural"]["robust"]) // 8)
    assert calls == {"aa": n_batches - 2}
    for k in ("robust", "predictions", "components", "uint8", "settings"):
        assert res["attacks"]["aa"][k] == ref["attacks"]["aa"][k], k
    assert sorted(os.listdir(tmp_path)) == ["eval.json"]
    # state of other settings is dropped, not mixed in
    calls.clear()
    monkeypatch.setattr(ev, "get_attack", lambda name, **kw: Dies(real(name, **kw), calls, name))
    with pytest.raises(_Interrupt):
        _run(model, split, ["natural", "aa"], tmp_path, attack_overrides=AA_FAST, batch_size=8, seed=1, replace=True)
    calls.clear()
    monkeypatch.setattr(ev, "get_attack", lambda name, **kw: _Spy(real(name, **kw), calls, name))
    _run(model, split, ["natural", "aa"], tmp_path, attack_overrides=AA_FAST, batch_size=6, seed=1)
    assert calls["aa"] == -(-sum(ref["attacks"]["natural"]["robust"]) // 6)
