"""Training attacks: eps-ball, box, lower accuracy, mode restored, input-only gradients."""

import pytest
import torch

from virkit.attacks import eval_mode, get_attack, pgd
from virkit.models import build_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def trained_pair():
    """A small CNN fitted for a few steps on a fixed random batch, so attacks have something to break."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.rand(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, x, y


@pytest.mark.parametrize(
    "loss,start", [("ce", "uniform"), ("ce", "normal"), ("cw", "uniform"), ("kl", "normal"), ("ce", "none")]
)
def test_pgd_stays_in_ball_and_box_and_lowers_accuracy(trained_pair, loss, start):
    model, x, y = trained_pair
    with torch.no_grad():
        nat = (model(x).argmax(1) == y).float().mean().item()
    assert nat > 0.9
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=10, loss=loss, random_start=start)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        adv = (model(x_adv).argmax(1) == y).float().mean().item()
    assert adv < nat - 0.2, (loss, start, nat, adv)


@pytest.mark.parametrize("name", ["fgsm", "pgd10", "pgd20", "cw"])
def test_registered_core_attacks_restore_mode_and_leave_param_grads(trained_pair, name):
    model, x, y = trained_pair
    model.train()
    for p in model.parameters():
        p.grad = None
    atk = get_attack(name)
    x_adv = atk(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    model.eval()


def test_pgd_runs_batchnorm_in_eval_mode_when_asked(trained_pair):
    model, x, y = trained_pair
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with eval_mode(model):
        pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3)
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # no BN statistics updated
    assert model.training
    model.eval()


def test_pgd_kappa_count_matches_per_step_correctness(trained_pair):
    model, x, y = trained_pair
    x_adv, kappa = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=10, random_start="none", count_correct=True)
    assert kappa.shape == y.shape and int(kappa.min()) >= 0 and int(kappa.max()) <= 10
    # the first count happens on the (unperturbed) start, so correctly classified points have kappa >= 1
    with torch.no_grad():
        correct0 = model(x).argmax(1) == y
    assert torch.all(kappa[correct0] >= 1)


def test_same_generator_seed_same_examples(trained_pair):
    model, x, y = trained_pair
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, generator=g1)
    b = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, generator=g2)
    assert torch.equal(a, b)
