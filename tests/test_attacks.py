"""Unit tests for every registered attack (one parametrized test over the registry), the presets,
and the building blocks (FAB's projection, DLR losses, schedules).

The model is a tiny CNN with BatchNorm on 3x8x8 synthetic images (ten classes), trained for a few
hundred steps, so that every attack has correctly classified points to work on and the whole file
runs in seconds. Heavy attacks get reduced settings here (``FAST``); their paper settings are
checked in ``test_presets_carry_paper_settings``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from virkit.attacks import (
    ATTACK_PRESETS,
    ATTACKS,
    attack_names,
    black_box_attacks,
    get_attack,
    l2_attacks,
    per_example_norm,
    pgd,
    white_box_attacks,
)
from virkit.attacks.apgd import dlr_loss
from virkit.attacks.apgd_targeted import dlr_targeted_loss
from virkit.attacks.base import target_classes
from virkit.attacks.fab_projection import project_hyperplane_box_l2, project_hyperplane_box_linf
from virkit.attacks.mde import md_step_size
from virkit.attacks.square import square_p_schedule
from virkit.errors import VirkitError

EPS = 8 / 255

#: reduced settings per registered attack, so that the registry test stays fast
FAST: dict[str, dict] = {
    "fgsm": {},
    "pgd": {"steps": 5, "step_size": 2 / 255},
    "cw": {"steps": 5, "step_size": 2 / 255},
    "apgd": {"steps": 10},
    "apgd-t": {"steps": 5, "n_target_classes": 3},
    "fab-t": {"steps": 5, "n_target_classes": 3},
    "fab": {"steps": 5, "n_restarts": 2},
    "square": {"n_queries": 60},
    "spsa": {"iterations": 3, "samples": 16},
    "fmn": {"steps": 10},
    "md": {"steps": 8, "change_point": 3},
    "mde": {"apgd_steps": 5, "md_steps": 6, "change_point": 2, "n_target_classes": 2, "fab_steps": 4},
    "autoattack": {"apgd_steps": 5, "n_target_classes": 2, "fab_steps": 4, "square_queries": 30},
}
#: extra variants of registered classes
VARIANTS = [
    ("apgd", {"loss": "dlr"}),
    ("md", {"targeted": True, "n_target_classes": 2}),
    ("apgd", {"eot_iter": 2}),
    ("autoattack", {"version": "plus"}),
    ("autoattack", {"version": "rand"}),
    ("autoattack", {"components": "apgd-ce,square"}),
    ("autoattack", {"individual": True}),
]
EPS_L2 = 0.5


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


def synthetic(n: int, seed: int, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes of 3x8x8 images: a fixed random prototype per class plus noise, in [0, 1]."""
    protos = torch.rand(k, 3, 8, 8, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = (0.5 + 0.25 * (protos[y] - 0.5) + 0.12 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def train_tiny(steps: int = 300, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = synthetic(2048, seed=1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


@pytest.fixture(scope="module")
def model():
    return train_tiny()


@pytest.fixture(scope="module")
def batch(model):
    x, y = synthetic(24, seed=7)
    return x, y


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _cases():
    cases = [(name, FAST.get(name)) for name in sorted(ATTACKS)]
    cases += [(name, {**FAST[name], **kw}) for name, kw in VARIANTS]
    return [
        pytest.param(n, kw, id=n + ("" if kw == FAST.get(n) else "-" + "-".join(map(str, kw.values()))))
        for n, kw in cases
    ]


@pytest.mark.parametrize("name,settings", _cases())
def test_every_registered_attack(name, settings, model, batch):
    assert settings is not None, f"attack {name!r} is registered but has no FAST settings in this test; add them"
    x, y = batch
    x0 = x.clone()
    attack = ATTACKS[name](eps=EPS, seed=3, **settings)

    # put the model in train mode, give some parameters a .grad and remember the BatchNorm statistics
    model.train()
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 7.0) if i % 2 == 0 else None
    stats = {k: v.clone() for k, v in model.state_dict().items()}

    x_adv = attack(model, x, y)
    x_adv2 = attack(model, x, y)

    # modes, gradients, weights and statistics untouched; input not modified in place
    assert model.training and all(m.training for m in model.modules())
    for i, p in enumerate(params):
        if i % 2 == 0:
            assert p.grad is not None and torch.equal(p.grad, torch.full_like(p, 7.0)), f"{name} changed a .grad"
        else:
            assert p.grad is None, f"{name} created a .grad"
        p.grad = None
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), f"{name} changed {k}"
    assert torch.equal(x, x0)
    model.eval()

    # in the eps-ball and the box, finite, same shape and dtype
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0

    # robust accuracy never above natural accuracy
    nat, rob = _accuracy(model, x, y), _accuracy(model, x_adv, y)
    assert nat > 0
    assert rob <= nat

    # deterministic under a seed
    assert torch.equal(x_adv, x_adv2), f"{name} is not deterministic under a fixed seed"

    # describe() is JSON-serializable and names the paper and the norm
    d = attack.describe()
    json.dumps(d)
    assert d["norm"] == "Linf" and d["paper"] and d["eps"] == EPS


@pytest.fixture(scope="module")
def weak_model():
    """Naturally trained (no adversarial training): every attack should break some points."""
    return train_tiny(steps=150, seed=1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_breaks_a_natural_model(name, weak_model):
    x, y = synthetic(24, seed=11)
    atk = ATTACKS[name](eps=16 / 255, seed=0, **FAST[name])
    nat = _accuracy(weak_model, x, y)
    rob = _accuracy(weak_model, atk(weak_model, x, y), y)
    assert rob < nat, f"{name} did not change a single prediction of a non-robust model at eps 16/255"


def test_different_seeds_give_different_random_starts(model, batch):
    x, y = batch
    a = get_attack("apgd-ce", seed=0, steps=3)(model, x, y)
    b = get_attack("apgd-ce", seed=1, steps=3)(model, x, y)
    assert not torch.equal(a, b)


def test_ensembles_never_weaker_than_their_first_attack(model, batch):
    """AutoAttack and MDE start with APGD-CE on the same points with the same seed, so they can only
    break more points than APGD-CE alone."""
    x, y = batch
    apgd = _accuracy(model, get_attack("apgd-ce", seed=5, steps=5)(model, x, y), y)
    aa = _accuracy(model, get_attack("aa", seed=5, **FAST["autoattack"])(model, x, y), y)
    mde = _accuracy(model, get_attack("mde", seed=5, **FAST["mde"])(model, x, y), y)
    assert aa <= apgd and mde <= apgd


def test_presets_carry_paper_settings():
    """Sec. 5.4 of the paper (and AutoAttack / MDE standard settings)."""
    d = {n: get_attack(n).describe() for n in attack_names() if n != "natural"}
    for n, v in d.items():
        json.dumps(v)
        assert v["eps"] == pytest.approx(8 / 255), n
    assert d["pgd100"]["steps"] == 100 and d["pgd100"]["step_size"] == pytest.approx(1 / 255)
    assert d["pgd20"]["steps"] == 20 and d["pgd20"]["step_size"] == pytest.approx(1 / 255)
    assert d["cw"]["steps"] == 20 and d["cw"]["kappa"] == 50 and d["cw"]["step_size"] == pytest.approx(1 / 255)
    assert d["fmn100"]["steps"] == 100
    assert d["aa"]["apgd_steps"] == 100 and d["aa"]["n_target_classes"] == 9 and d["aa"]["fab_steps"] == 100
    assert d["aa"]["square_queries"] == 5000 and d["aa"]["version"] == "standard"
    assert d["apgd-ce"]["loss"] == "ce" and d["apgd-ce"]["steps"] == 100
    assert d["apgd-t"]["n_target_classes"] == 9 and d["fab-t"]["n_target_classes"] == 9
    assert d["square"]["n_queries"] == 5000
    assert (d["spsa"]["iterations"], d["spsa"]["delta"], d["spsa"]["lr"], d["spsa"]["samples"]) == (
        100,
        0.001,
        0.01,
        256,
    )
    assert d["mde"]["apgd_steps"] == 100 and d["mde"]["md_steps"] == 50 and d["mde"]["fab_steps"] == 100
    for name in ("fmn100", "aa", "apgd-ce", "apgd-t", "fab-t", "square", "spsa", "mde"):
        assert name in ATTACK_PRESETS


def test_white_and_black_box_lists_come_from_the_classes():
    """Square and SPSA read only logits (score-based black box); every other preset uses gradients."""
    assert black_box_attacks() == ("square", "spsa")
    assert set(white_box_attacks()) | set(black_box_attacks()) == set(attack_names()) - {"natural"}
    assert not set(white_box_attacks()) & set(black_box_attacks())
    assert {"fgsm", "pgd100", "cw", "fmn100", "aa", "mde", "apgd-t", "fab-t"} <= set(white_box_attacks())
    assert [ATTACKS[c].black_box for c in ("square", "spsa", "pgd", "autoattack")] == [True, True, False, False]


def test_unknown_attack_lists_valid_names():
    with pytest.raises(VirkitError) as e:
        get_attack("pgd1000")
    assert "pgd100" in str(e.value) and "mde" in str(e.value)


def test_attack_docstrings_name_paper_norm_and_defaults():
    for name, cls in ATTACKS.items():
        doc = cls.__doc__ or ""
        assert "L-inf" in doc or "Linf" in doc or "L_inf" in doc, name
        assert any(ch.isdigit() for ch in doc), name  # a year / the default numbers
        assert cls.paper, name


# ---------------------------------------------------------------------------------------------
# building blocks
def test_fab_projection_matches_linear_programming():
    scipy_opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    g = torch.Generator().manual_seed(0)
    d_ = 7
    for trial in range(60):
        t = torch.rand(1, d_, generator=g, dtype=torch.float64)
        w = torch.randn(1, d_, generator=g, dtype=torch.float64)
        if trial % 3 == 0:
            w[0, :2] = 0
        b = torch.randn(1, generator=g, dtype=torch.float64) * 0.5
        d = project_hyperplane_box_linf(t, w, b)
        assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
        c = np.r_[np.zeros(d_), 1.0]
        a_ub = np.vstack([np.c_[np.eye(d_), -np.ones(d_)], np.c_[-np.eye(d_), -np.ones(d_)]])
        res = scipy_opt.linprog(
            c,
            A_ub=a_ub,
            b_ub=np.zeros(2 * d_),
            A_eq=np.r_[w[0].numpy(), 0.0][None],
            b_eq=[float(b - (w * t).sum())],
            bounds=[(-float(t[0, i]), 1 - float(t[0, i])) for i in range(d_)] + [(0, None)],
        )
        if res.status == 0:  # feasible: on the hyperplane with the smallest L-inf norm
            assert float((w * (t + d)).sum()) == pytest.approx(float(b), abs=1e-9)
            assert float(d.abs().max()) == pytest.approx(res.x[-1], abs=1e-8)
        else:  # unreachable within the box: the box corner towards the plane
            side = torch.sign(b - (w * t).sum())
            assert torch.allclose(t + d, torch.where(w * side > 0, 1.0, torch.where(w * side < 0, 0.0, t)))


def test_dlr_losses_are_shift_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    t = target_classes(z, y, 1)[:, 0]
    assert torch.allclose(dlr_loss(z, y), dlr_loss(3 * z + 5, y), atol=1e-5)
    assert torch.allclose(dlr_targeted_loss(z, y, t), dlr_targeted_loss(2 * z - 1, y, t), atol=1e-5)
    correct = z.argmax(1) == y
    assert (dlr_loss(z, y)[correct] < 0).all() and (dlr_loss(z, y)[~correct] >= 0).all()


def test_target_classes_are_the_best_other_classes():
    z = torch.tensor([[5.0, 1.0, 3.0, 4.0, 2.0]])
    assert target_classes(z, torch.tensor([0]), 9).tolist() == [[3, 2, 4, 1]]
    assert target_classes(z, torch.tensor([3]), 2).tolist() == [[0, 2]]


def test_square_schedule_and_md_step_sizes():
    assert square_p_schedule(0, 5000) == 0.8
    assert square_p_schedule(20, 5000) == 0.4  # 20 of 5000 -> 40 of 10000
    assert square_p_schedule(4999, 5000) == pytest.approx(0.8 / 512)
    assert md_step_size(0, 50, 20, 2 * EPS) == pytest.approx(2 * EPS * 0.5 * (1 + math.cos(-math.pi / 30)))
    assert md_step_size(21, 50, 20, 2 * EPS) == pytest.approx(2 * EPS)  # stage 2 restarts the cosine
    assert md_step_size(49, 50, 20, 2 * EPS) < 0.05 * EPS


def test_autoattack_square_uses_the_raw_schedule_standalone_square_the_rescaled_one():
    """Official AutoAttack builds SquareAttack(..., resc_schedule=False); the official class (and
    virkit's standalone Square, the paper's Square-5000 rows) rescales to the query budget."""
    # at query 4,500 of 5,000 the raw schedule is at p_init/128 (a 3-pixel side on 32x32 images),
    # the rescaled one at p_init/512 (1 pixel): squares shrink twice as fast
    assert square_p_schedule(4500, 5000, rescale=False) == pytest.approx(0.8 / 128)
    assert square_p_schedule(4500, 5000, rescale=True) == pytest.approx(0.8 / 512)
    assert [square_p_schedule(i, 5000, rescale=False) for i in (10, 11, 50, 51, 8000, 8001)] == pytest.approx(
        [0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512]
    )
    aa = get_attack("aa")
    square = aa.components()[-1]
    assert type(square).__name__ == "Square" and square.resc_schedule is False
    assert aa.describe()["square_resc_schedule"] is False
    assert get_attack("square").resc_schedule is True
    # the rescaled schedule inside AutoAttack on request (to measure what the fix changed)
    before = get_attack("aa", square_resc_schedule=True)
    assert before.components()[-1].resc_schedule is True and before.describe()["square_resc_schedule"] is True


def test_pgd_result_stays_in_the_box_even_without_steps():
    """The TRADES-style normal start is not clipped (the first forward sees it as drawn), but what
    pgd returns lies in the ball and the box, also with attack_steps=0."""
    x = torch.cat([torch.zeros(4, 3, 8, 8), torch.ones(4, 3, 8, 8)])
    y = torch.zeros(8, dtype=torch.long)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    g = torch.Generator().manual_seed(0)
    for steps in (0, 1):
        xa = pgd(net, x, y, eps=EPS, step_size=2 / 255, steps=steps, random_start="normal", generator=g)
        assert xa.min() >= 0 and xa.max() <= 1 and (xa - x).abs().max() <= EPS + 1e-7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attacks_run_on_cuda(model):
    m = train_tiny(steps=50).cuda()
    x, y = synthetic(16, seed=3)
    x, y = x.cuda(), y.cuda()
    for name in sorted(ATTACKS):
        xa = ATTACKS[name](eps=EPS, seed=0, **FAST[name])(m, x, y)
        assert xa.device == x.device and (xa - x).abs().max() <= EPS + 1e-6


# ---------------------------------------------------------------------------------------------
# the L2 threat model
L2_CLASSES = sorted(n for n, cls in ATTACKS.items() if "L2" in cls.norms)


def test_l2_attacks_are_the_documented_ones():
    assert L2_CLASSES == ["apgd", "apgd-t", "autoattack", "fab", "fab-t", "fgsm", "fmn", "pgd", "square"]
    assert set(l2_attacks()) == set(attack_names()) - {"natural", "cw", "spsa", "mde"}
    for name in ("cw", "spsa", "mde"):
        with pytest.raises(VirkitError, match=f"attack '{name}' is Linf only"):
            get_attack(name, eps=EPS_L2, norm="L2")
    with pytest.raises(VirkitError, match="unknown norm 'L1'"):
        get_attack("pgd10", norm="L1")


@pytest.mark.parametrize("name", L2_CLASSES)
def test_every_l2_attack_stays_in_the_l2_ball_and_the_box(name, model, batch):
    x, y = batch
    atk = ATTACKS[name](eps=EPS_L2, seed=3, norm="L2", **FAST[name])
    x_adv = atk(model, x, y)
    assert torch.equal(x_adv, atk(model, x, y)), f"{name} (L2) is not deterministic under a fixed seed"
    assert per_example_norm(x_adv - x, "L2").max() <= EPS_L2 + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and torch.isfinite(x_adv).all()
    assert _accuracy(model, x_adv, y) <= _accuracy(model, x, y)
    d = atk.describe()
    assert d["norm"] == "L2" and d["eps"] == EPS_L2
    json.dumps(d)


@pytest.mark.parametrize("name", L2_CLASSES)
def test_every_l2_attack_breaks_a_natural_model(name, weak_model):
    x, y = synthetic(24, seed=11)
    atk = ATTACKS[name](eps=1.0, seed=0, norm="L2", **FAST[name])
    assert _accuracy(weak_model, atk(weak_model, x, y), y) < _accuracy(weak_model, x, y), name


def test_pgd_l2_steps_along_the_normalised_gradient():
    """One PGD-L2 step without a random start moves exactly ``step_size`` in L2 (away from the box)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    x = torch.full((4, 3, 8, 8), 0.5)
    y = torch.arange(4)
    xa = pgd(net, x, y, eps=1.0, step_size=0.1, steps=1, random_start="none", norm="L2")
    assert per_example_norm(xa - x, "L2") == pytest.approx([0.1] * 4, abs=1e-6)
    xa = pgd(net, x, y, eps=0.05, step_size=0.1, steps=1, random_start="none", norm="L2")
    assert per_example_norm(xa - x, "L2") == pytest.approx([0.05] * 4, abs=1e-6)  # projected onto the ball
    # presets keep their step as a fraction of eps in L2
    assert get_attack("pgd10", eps=0.5, norm="L2").step_size == pytest.approx(0.5 / 4)
    assert get_attack("pgd100", eps=0.5, norm="L2").step_size == pytest.approx(0.5 / 8)
    assert get_attack("fgsm", eps=0.5, norm="L2").name == "FGM (L2)"


def test_fab_l2_projection_matches_a_quadratic_program_and_the_official_code():
    """Smallest L2 step onto the hyperplane within the box (scipy's SLSQP on small problems), and the
    official AutoAttack projection where it is installed (pyautoattack, a dependency of robustbench)."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    g = torch.Generator().manual_seed(0)
    d_ = 6
    for trial in range(40):
        t = torch.rand(1, d_, generator=g, dtype=torch.float64)
        w = torch.randn(1, d_, generator=g, dtype=torch.float64)
        if trial % 3 == 0:
            w[0, :2] = 0
        b = torch.randn(1, generator=g, dtype=torch.float64) * (2.0 if trial % 4 == 0 else 0.3)
        d = project_hyperplane_box_l2(t, w, b)
        assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
        c = float(b - (w * t).sum())
        reach = float(torch.where(w * np.sign(c) > 0, 1 - t, -t).mul(w).sum()) if c else 0.0
        if abs(reach) >= abs(c) - 1e-12:  # reachable: compare with the QP optimum
            res = scipy_opt.minimize(
                lambda v: float(v @ v),
                np.zeros(d_),
                jac=lambda v: 2 * v,
                method="SLSQP",
                constraints=[{"type": "eq", "fun": lambda v: float(w[0].numpy() @ v) - c}],
                bounds=[(-float(t[0, i]), 1 - float(t[0, i])) for i in range(d_)],
                options={"ftol": 1e-14, "maxiter": 500},
            )
            assert float((w * (t + d)).sum()) == pytest.approx(float(b), abs=1e-9)
            assert float(d.norm()) == pytest.approx(float(np.linalg.norm(res.x)), abs=1e-6)
    try:
        from pyautoattack.fab_projections import projection_l2
    except ImportError:
        return
    t = torch.rand(64, 50, generator=g)
    w = torch.randn(64, 50, generator=g)
    b = torch.randn(64, generator=g)
    torch.testing.assert_close(project_hyperplane_box_l2(t, w, b), projection_l2(t, w, b), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# AutoAttack's versions
def test_autoattack_versions_follow_the_official_code():
    std, plus, rand = (get_attack(n) for n in ("aa", "aa-plus", "aa-rand"))
    assert std.component_names() == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert plus.component_names() == ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
    assert rand.component_names() == ("apgd-ce", "apgd-dlr")
    assert (std.apgd_restarts, plus.apgd_restarts, plus.fab_restarts, rand.eot_iter) == (1, 5, 5, 20)
    comps = {type(c).__name__ + ("-" + c.loss if hasattr(c, "loss") else ""): c for c in plus.components()}
    assert comps["APGD-ce"].n_restarts == 5 and comps["APGD-dlr"].n_restarts == 5 and comps["FAB"].n_restarts == 5
    assert comps["APGDTargeted"].n_target_classes == 9 and comps["FABTargeted"].n_restarts == 1
    assert comps["Square"].n_queries == 5000 and comps["Square"].resc_schedule is False
    assert all(c.eot_iter == 20 and c.n_restarts == 1 for c in rand.components())
    custom = get_attack("aa", components="apgd-ce,square")
    assert custom.version == "custom" and custom.component_names() == ("apgd-ce", "square")
    assert custom.describe()["custom_components"] == "apgd-ce,square"
    assert get_attack("aa", components="apgd-ce,apgd-t,fab-t,square").version == "standard"
    with pytest.raises(ValueError, match="unknown AutoAttack component"):
        get_attack("aa", components="apgd-ce,pgd")
    # the standard L-inf settings read as before this issue (earlier eval.json files are recognised)
    assert set(std.describe()) == {
        "name",
        "norm",
        "paper",
        "eps",
        "seed",
        "version",
        "apgd_steps",
        "n_target_classes",
        "fab_steps",
        "square_queries",
        "square_resc_schedule",
    }


def test_autoattack_component_flags_sequential_and_individual(model, batch):
    x, y = batch
    fast = FAST["autoattack"]
    seq = get_attack("aa", seed=1, **fast)
    xs = seq(model, x, y)
    flags = seq.details["components"]
    assert seq.details["mode"] == "sequential" and list(flags) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        robust = model(xs).argmax(1) == y
    prev = correct
    for name, f in flags.items():  # running robust flags: never recover
        assert not (f & ~prev).any(), name
        prev = f
    assert torch.equal(prev, robust)
    ind = get_attack("aa", seed=1, individual=True, **fast)
    xi = ind(model, x, y)
    iflags = ind.details["components"]
    assert ind.details["mode"] == "individual"
    worst = correct.clone()
    for f in iflags.values():
        assert not (f & ~correct).any()
        worst &= f
    with torch.no_grad():
        assert torch.equal(model(xi).argmax(1) == y, worst)
    # APGD-CE runs first on the same points with the same seed in both modes
    assert torch.equal(iflags["apgd-ce"], flags["apgd-ce"])
