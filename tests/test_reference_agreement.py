"""virkit's attacks against reference implementations, on the same adversarially trained model and
the same CIFAR-10 (JPEG stand-in) test images: robust accuracy must agree within 1.5 points (and so
is never higher than the reference's by more than 1.5 points).

References: torchattacks (APGD-CE, APGD-T, FAB-T, Square, AutoAttack's composition, SPSA; install
with ``pip install --no-deps torchattacks``) and Foolbox (FMN, the implementation by FMN's authors).

The model is a ``small-cnn`` trained once per session with virkit's trainer (PGD adversarial
training, ``quick``-style settings, shortened). Both sides run with *identical, reduced* settings so
that the whole file runs in a few minutes on 2 CPU cores (see ``SETTINGS``; docs/EVALUATION.md
records them and the measured numbers). Both sides see only the naturally correct images (a
misclassified image counts as non-robust for both), and accuracy is over all ``N`` images.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

torchattacks = pytest.importorskip("torchattacks")
foolbox = pytest.importorskip("foolbox")

from virkit.attacks import get_attack  # noqa: E402

N = 500                 # test images (class-balanced, seeded subset of the stand-in test split)
EPS = 8 / 255
TOL = 1.5               # percentage points
#: reduced budgets, identical on both sides (paper values in brackets)
SETTINGS = {
    "apgd_steps": 8,        # [100]
    "n_targets": 2,         # target classes of APGD-T / FAB-T [9]
    "fab_steps": 8,         # [100]
    "square_queries": 60,   # [5000]
    "spsa_iterations": 2,   # [100]
    "spsa_samples": 16,     # [256]; perturbation 0.001 and lr 0.01 as in the paper
    "fmn_steps": 16,        # [100]
}
RESULTS: dict[str, dict] = {}


def _data_root() -> Path | None:
    for cand in (os.environ.get("VIRKIT_DATA"), "/work/shared/datasets"):
        if cand and ((Path(cand) / "cifar10-jpeg.tar.gz").is_file() or (Path(cand) / "cifar-10-batches-py").is_dir()):
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def reference_setup(tmp_path_factory):
    """(model, x, y, correct): the adversarially trained small CNN and N test images."""
    root = _data_root()
    if root is None:
        pytest.skip("CIFAR-10 (or its JPEG stand-in) not found; set VIRKIT_DATA")
    from virkit.checkpoint import load_checkpoint
    from virkit.config import resolve_config
    from virkit.data import load_dataset, subset
    from virkit.trainer import train

    # quick preset (small-cnn, PGD adversarial training), shortened to keep the session in minutes
    cfg = resolve_config("quick", method="at", data_root=str(root), train_subset=2000, epochs=3,
                         lr_milestones=(3,), reweight_start=3, attack_steps=2, step_size=2.5 * EPS / 2,
                         holdout=0, eval_attacks=(), test_subset=None, seed=0, device="cpu")
    t0 = time.time()
    run = train(cfg, tmp_path_factory.mktemp("reference-model") / "at", log=None)
    model, _ = load_checkpoint(run, which="last")
    model.eval()
    test = subset(load_dataset("cifar10", str(root), "test"), N, seed=0)
    x, y = test.float_images().contiguous(), test.y   # torchattacks' FAB needs contiguous inputs
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    RESULTS["_setup"] = {"train_seconds": round(time.time() - t0, 1), "natural": 100 * float(correct.float().mean())}
    return model, x, y, correct


def _robust_accuracy(model, x_adv, y, idx) -> float:
    """Accuracy over all N images; only the naturally correct ones (``idx``) can be robust."""
    with torch.no_grad():
        ok = model(x_adv).argmax(1) == y[idx]
    return 100.0 * float(ok.sum()) / N


def _virkit(name, model, xs, ys, **kw):
    atk = get_attack(name, eps=EPS, seed=0, **kw)
    xa = atk(model, xs, ys)
    assert (xa - xs).abs().max() <= EPS + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    return xa


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward returns a contiguous gradient: torchattacks' FAB calls ``.view`` on
    input gradients, which fails when a CPU convolution returns them in another memory layout."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


class _ForReference(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ContiguousGrad.apply(x))


def _reference(name, model, xs, ys):
    s = SETTINGS
    ta = torchattacks
    model = _ForReference(model).eval()
    if name == "fmn":
        fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
        _, clipped, _ = foolbox.attacks.LInfFMNAttack(steps=s["fmn_steps"])(fmodel, xs, ys, epsilons=EPS)
        return clipped
    apgd = lambda: ta.APGD(model, norm="Linf", eps=EPS, steps=s["apgd_steps"], n_restarts=1, seed=0, loss="ce",  # noqa: E731
                           rho=0.75)
    apgdt = lambda: ta.APGDT(model, norm="Linf", eps=EPS, steps=s["apgd_steps"], n_restarts=1, seed=0,  # noqa: E731
                             n_classes=s["n_targets"] + 1)
    fabt = lambda: ta.FAB(model, norm="Linf", eps=EPS, steps=s["fab_steps"], n_restarts=1, seed=0,  # noqa: E731
                          multi_targeted=True, n_classes=s["n_targets"] + 1)
    square = lambda: ta.Square(model, norm="Linf", eps=EPS, n_queries=s["square_queries"], n_restarts=1,  # noqa: E731
                               p_init=0.8, loss="margin", resc_schedule=True, seed=0)
    atk = {"apgd-ce": apgd, "apgd-t": apgdt, "fab-t": fabt, "square": square,
           # torchattacks' AutoAttack('standard') is exactly this MultiAttack (with its own budgets)
           "aa": lambda: ta.MultiAttack([apgd(), apgdt(), fabt(), square()]),
           "spsa": lambda: ta.SPSA(model, eps=EPS, delta=0.001, lr=0.01, nb_iter=s["spsa_iterations"],
                                   nb_sample=s["spsa_samples"], max_batch_size=s["spsa_samples"])}[name]()
    return atk(xs, ys)


CASES = {
    "apgd-ce": {"steps": SETTINGS["apgd_steps"]},
    "apgd-t": {"steps": SETTINGS["apgd_steps"], "n_target_classes": SETTINGS["n_targets"]},
    "fab-t": {"steps": SETTINGS["fab_steps"], "n_target_classes": SETTINGS["n_targets"]},
    "square": {"n_queries": SETTINGS["square_queries"]},
    "aa": {"apgd_steps": SETTINGS["apgd_steps"], "n_target_classes": SETTINGS["n_targets"],
           "fab_steps": SETTINGS["fab_steps"], "square_queries": SETTINGS["square_queries"]},
    "spsa": {"iterations": SETTINGS["spsa_iterations"], "samples": SETTINGS["spsa_samples"]},
    "fmn": {"steps": SETTINGS["fmn_steps"]},
}


@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_reference(name, reference_setup):
    model, x, y, correct = reference_setup
    idx = correct.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    t0 = time.time()
    ours = _robust_accuracy(model, _virkit("fmn100" if name == "fmn" else name, model, xs, ys, **CASES[name]), y, idx)
    t1 = time.time()
    torch.manual_seed(0)
    ref = _robust_accuracy(model, _reference(name, model, xs, ys).detach(), y, idx)
    t2 = time.time()
    RESULTS[name] = {"virkit": round(ours, 2), "reference": round(ref, 2), "diff": round(ours - ref, 2),
                     "virkit_s": round(t1 - t0, 1), "reference_s": round(t2 - t1, 1)}
    print(f"\n{name}: virkit {ours:.2f}%  reference {ref:.2f}%  (natural {RESULTS['_setup']['natural']:.2f}%, "
          f"{t1 - t0:.0f} s vs {t2 - t1:.0f} s)")
    assert abs(ours - ref) <= TOL, f"{name}: virkit {ours:.2f}% vs reference {ref:.2f}%"
    assert ours - ref <= TOL


def test_report_numbers(reference_setup, tmp_path_factory):
    """Write what was measured (for docs/EVALUATION.md); runs last in the file."""
    out = tmp_path_factory.getbasetemp() / "reference_agreement.json"
    out.write_text(json.dumps({"settings": SETTINGS, "n": N, **RESULTS}, indent=2))
    print(f"\nreference agreement: {json.dumps(RESULTS)}\n(written to {out})")
