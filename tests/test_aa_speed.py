"""AutoAttack's speed levers (issue 14) keep the attacks' results: active-set compaction
(``early_stop``), several target classes in one batch (``batch_targets``), clean logits computed
once (``reuse_logits``), Square under inference mode and channels-last inputs give the same robust
flags as the code path without them (``fast=False``), and batched targets give what one target
after another gives.

The model is the tiny BatchNorm CNN of ``test_attacks.py`` on 3x8x8 synthetic images; eps 3/255,
where it is neither fully robust nor fully broken, so that every attack has points of both kinds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from virkit.attacks import get_attack
from virkit.attacks.apgd import apgd_run, apgd_start
from virkit.attacks.apgd_targeted import APGDTargeted, dlr_targeted_loss
from virkit.attacks.autoattack import AutoAttack
from virkit.attacks.base import target_classes, targets_in_one_batch
from virkit.attacks.fab import FABTargeted, fab_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_attacks import synthetic, train_tiny

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 3 / 255


@pytest.fixture(scope="module")
def model():
    m = train_tiny()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def batch():
    return synthetic(64, seed=7)


def _robust(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _mixed(model, x, y, x_adv):
    """The case is informative: some points broken, some robust."""
    nat = _robust(model, x, y)
    rob = _robust(model, x_adv, y)
    assert rob.sum() > 0 and (nat & ~rob).sum() > 0, (int(nat.sum()), int(rob.sum()))


@pytest.mark.parametrize(
    "name,settings",
    [
        ("apgd-ce", {"steps": 20}),
        ("apgd-dlr", {"steps": 20}),
        ("apgd-t", {"steps": 10, "n_target_classes": 4, "batch_targets": False}),
        ("fab-t", {"steps": 10, "n_target_classes": 4, "batch_targets": False}),
        ("fab-t", {"steps": 10, "n_target_classes": 4}),
        ("fab", {"steps": 6, "n_restarts": 2}),
    ],
)
def test_early_stop_keeps_the_robust_flags(name, settings, model, batch):
    """Compaction stops points whose attack already succeeded; every step is per example, so the
    others' trajectories and every point's success flag are those of the full run."""
    x, y = batch
    on = get_attack(name, eps=EPS, seed=3, early_stop=True, **settings)(model, x, y)
    off = get_attack(name, eps=EPS, seed=3, early_stop=False, **settings)(model, x, y)
    _mixed(model, x, y, off)
    assert torch.equal(_robust(model, on, y), _robust(model, off, y))
    every4 = get_attack(name, eps=EPS, seed=3, early_stop=True, compact_every=4, **settings)(model, x, y)
    assert torch.equal(_robust(model, every4, y), _robust(model, off, y))


def test_apgd_early_stop_returns_the_first_misclassified_iterate(model, batch):
    """With early_stop a fooled row keeps its first misclassified iterate, whenever the compaction
    happens to look (every step, or every 7 steps while the fooled rows keep running); that point is
    misclassified, and the full run (which returns the last one) fools the same rows."""
    x, y = batch
    t = apgd_start(x, "Linf", torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy

    def run(**kw):
        return apgd_run(model, x, y, lambda z, yy: loss(z, yy, reduction="none"), eps=EPS, steps=20, start=t, **kw)

    x1, f1 = run(early_stop=True, compact_every=1)
    x7, f7 = run(early_stop=True, compact_every=7)
    xf, ff = run(early_stop=False)
    assert f1.any() and (~f1).any()
    assert torch.equal(f1, f7) and torch.equal(f1, ff)
    assert torch.equal(x1, x7)
    assert not _robust(model, x1[f1], y[f1]).any()
    assert torch.equal(x1[~f1], xf[~f1])  # not fooled: the best-loss point, as the full run


def test_square_levers_change_nothing(model, batch):
    """Square keeps its draws (same shapes, same order) with the compacted state and inference mode."""
    x, y = batch
    a = get_attack("square", eps=EPS, seed=2, n_queries=150)(model, x, y)
    b = get_attack("square", eps=EPS, seed=2, n_queries=150, early_stop=False, inference_mode=False)(model, x, y)
    _mixed(model, x, y, b)
    assert torch.equal(a, b)
    assert not a.is_inference()


def test_autoattack_levers_on_and_off_give_the_same_flags(model, batch):
    """Every lever whose definition guarantees it (all but batch_targets, which draws APGD-T's random
    starts for a differently composed batch): identical robust flags per component and in the end."""
    x, y = batch
    kw = dict(eps=EPS, seed=1, apgd_steps=10, n_target_classes=4, fab_steps=10, square_queries=100)
    old = AutoAttack(fast=False, **kw)
    x_old = old(model, x, y)
    _mixed(model, x, y, x_old)
    for levers in (
        {"batch_targets": False, "channels_last": False},
        {"batch_targets": False, "channels_last": True},
        {"fast": False, "early_stop": True},
        {"fast": False, "reuse_logits": True},
        {"fast": False, "inference_mode": True},
    ):
        new = AutoAttack(**levers, **kw)
        x_new = new(model, x, y)
        assert torch.equal(_robust(model, x_new, y), _robust(model, x_old, y)), levers
        for c, f in old.details["components"].items():
            assert torch.equal(new.details["components"][c], f), (levers, c)


def test_fast_autoattack_is_within_reach_of_the_old_path(model, batch):
    """All levers on (APGD-T's starts drawn per target for all points at once): the same FAB-T and
    Square definitions, robust accuracy within a point or two of the old path on 64 images."""
    x, y = batch
    kw = dict(eps=EPS, seed=1, apgd_steps=10, n_target_classes=4, fab_steps=10, square_queries=100)
    r_new = _robust(model, AutoAttack(**kw)(model, x, y), y).sum()
    r_old = _robust(model, AutoAttack(fast=False, **kw)(model, x, y), y).sum()
    assert abs(int(r_new) - int(r_old)) <= 2


def test_fab_t_batched_targets_equal_one_target_after_another(model, batch):
    """FAB-T's first run has no random start, so one batch of all targets must give exactly what one
    target after another gives: same flags, same returned points (the first breaking target's)."""
    x, y = batch
    for early_stop in (True, False):
        kw = dict(eps=EPS, seed=0, steps=10, n_target_classes=5, early_stop=early_stop)
        seq = FABTargeted(batch_targets=False, **kw)(model, x, y)
        one = FABTargeted(batch_targets=True, **kw)(model, x, y)
        two = FABTargeted(batch_targets=2, **kw)(model, x, y)
        _mixed(model, x, y, seq)
        assert torch.equal(_robust(model, one, y), _robust(model, seq, y))
        assert torch.allclose(one, seq, atol=1e-6) and torch.allclose(two, seq, atol=1e-6)


def test_apgd_t_batched_targets_equal_one_target_after_another_with_the_same_starts(model, batch):
    """APGD-T with batched targets against a sequential loop written here: target k runs on the points
    no earlier target fooled, from the same start directions (drawn per target for all points)."""
    x, y = batch
    n_t, steps, seed = 4, 10, 5
    atk = APGDTargeted(eps=EPS, seed=seed, steps=steps, n_target_classes=n_t)
    batched = atk(model, x, y)
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    idx = correct.nonzero().squeeze(1)
    xs, ys, ts = x[idx], y[idx], target_classes(logits[idx], y[idx], n_t)
    gen = torch.Generator().manual_seed(seed)
    starts = [apgd_start(xs, "Linf", gen) for _ in range(n_t)]
    out, robust = xs.clone(), torch.ones(len(idx), dtype=torch.bool)
    for k in range(n_t):
        r = robust.nonzero().squeeze(1)
        xa, fooled = apgd_run(
            model,
            xs[r],
            ys[r],
            dlr_targeted_loss,
            target=ts[r, k],
            start=starts[k][r],
            eps=EPS,
            steps=steps,
            early_stop=True,
        )
        out[r[fooled]] = xa[fooled]
        robust[r[fooled]] = False
    seq = x.clone()
    seq[idx] = out
    _mixed(model, x, y, seq)
    assert torch.equal(_robust(model, batched, y), _robust(model, seq, y))
    assert torch.allclose(batched, seq, atol=1e-6)
    # groups of targets give the same
    assert torch.allclose(
        APGDTargeted(eps=EPS, seed=seed, steps=steps, n_target_classes=n_t, batch_targets=3)(model, x, y),
        seq,
        atol=1e-6,
    )


def test_targets_in_one_batch_takes_the_first_target_in_order():
    """A constructed case: example 0 is fooled by targets 1 and 2 (target 2's run finishes first in a
    real run, but order decides), example 1 only by target 0, example 2 by none, example 3 by target
    3 only; in groups of two targets, an example fooled in the first group skips the second."""
    x = torch.zeros(4, 1)
    fooled = torch.tensor(
        [
            [False, True, True, False],
            [True, False, False, False],
            [False, False, False, False],
            [False, False, False, True],
        ]
    )
    calls = []

    def run(ii, kk, group):
        calls.append((ii.tolist(), kk.tolist()))
        return (10 * ii + kk).float().unsqueeze(1) + 1, fooled[ii, kk]

    for gs in (None, 2, 1):
        calls.clear()
        out, f = targets_in_one_batch(x, 4, run, gs)
        assert f.tolist() == [True, True, False, True]
        assert out.squeeze(1).tolist() == [0 * 10 + 1 + 1, 10 + 0 + 1, 0.0, 30 + 3 + 1]
        if gs == 2:
            # second group (targets 2, 3) only for the examples the first left robust: 2 and 3
            assert calls[1] == ([2, 3, 2, 3], [2, 2, 3, 3])


def test_rank_drops_later_targets_once_an_earlier_one_succeeds(model, batch):
    """Rows of the same example with a higher rank stop once a lower rank fooled it (their result can no
    longer matter); they report not fooled, and the lowest-rank success is kept."""
    x, y = batch
    with torch.no_grad():
        logits = model(x)
    keep = (logits.argmax(1) == y).nonzero().squeeze(1)[:16]
    xs, ys = x[keep], y[keep]
    ts = target_classes(logits[keep], ys, 3)
    m = len(keep)
    ii = torch.arange(m).repeat(3)
    kk = torch.arange(3).repeat_interleave(m)
    g = torch.arange(m).repeat(3)
    xb, dist = fab_run(model, xs[ii], ys[ii], ts[ii, kk], eps=EPS, steps=10, early_stop=True, group=g, rank=kk)
    ok = dist <= EPS
    alone, dist_alone = fab_run(model, xs[ii], ys[ii], ts[ii, kk], eps=EPS, steps=10, early_stop=True)
    ok_alone = dist_alone <= EPS
    for j in range(m):
        first = [k for k in range(3) if ok_alone[k * m + j]]
        if first:
            assert ok[first[0] * m + j]  # the first success is kept
            assert not any(ok[k * m + j] for k in range(first[0] + 1, 3) if not ok_alone[k * m + j])
    assert ok_alone.any()


def test_describe_records_levers_only_when_off():
    assert set(AutoAttack().describe()) == set(get_attack("aa").describe())
    d = AutoAttack(fast=False).describe()
    assert d["early_stop"] is False and d["batch_targets"] is False and d["reuse_logits"] is False
    assert d["inference_mode"] is False and d["channels_last"] is False
