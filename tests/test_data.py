"""Data: the stand-in loads, batches are (x, y, index) in [0,1], augmentation on the device, seeded subsets."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from virkit.data import DeviceLoader, load_dataset, random_crop_flip, subset
from virkit.data.datasets import gaussian_mixture
from virkit.data.loader import training_loader
from virkit.errors import VirkitError

STANDIN = Path(os.environ.get("VIRKIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
needs_standin = pytest.mark.skipif(not (STANDIN / "cifar10-jpeg.tar.gz").is_file(), reason="CIFAR-10 stand-in absent")


@needs_standin
def test_cifar10_standin_loads_in_original_order():
    test = load_dataset("cifar10", STANDIN, "test")
    assert test.x.shape == (10000, 3, 32, 32) and test.x.dtype == torch.uint8
    assert test.classes[3] == "cat" and test.classes[8] == "ship"
    assert "JPEG stand-in" in test.source
    # the original CIFAR-10 test labels start 3, 8, 8, 0, 6, 6, 1, 6, 3, 1
    assert test.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert test.mean is not None and 0.4 < test.mean[0] < 0.55


@needs_standin
def test_loader_batches_and_augmentation():
    train = subset(load_dataset("cifar10", STANDIN, "train"), 300, seed=1)
    assert torch.bincount(train.y, minlength=10).tolist() == [30] * 10  # class-balanced
    loader = DeviceLoader(train, 128, shuffle=True, augment=True)
    batches = list(loader.epoch(5))
    assert [b[0].shape[0] for b in batches] == [128, 128, 44]
    x, y, idx = batches[0]
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(y, train.y[idx])
    again = list(loader.epoch(5))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(batches, again))
    other = list(loader.epoch(6))
    assert not torch.equal(batches[0][2], other[0][2])
    all_idx = torch.cat([b[2] for b in batches])
    assert sorted(all_idx.tolist()) == list(range(300))


def test_random_crop_flip_is_a_shifted_flipped_copy():
    x = torch.rand(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, 2, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):
        found = False
        for dy in range(5):
            for dx in range(5):
                crop = padded[i, :, dy : dy + 8, dx : dx + 8]
                if torch.equal(out[i], crop) or torch.equal(out[i], crop.flip(-1)):
                    found = True
        assert found
    flipped = sum(not torch.equal(out[i], padded[i, :, 2:10, 2:10]) for i in range(64))
    assert flipped > 10


def test_subset_is_seeded():
    s = gaussian_mixture(1000, d=5)
    a, b, c = subset(s, 100, 0), subset(s, 100, 0), subset(s, 100, 1)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


def test_gaussian_mixture_matches_definition():
    s = gaussian_mixture(20000, d=10, eta=0.5, sigma=1.0, K=3.0, seed=0)
    x0, x1 = s.x[s.y == 0], s.x[s.y == 1]
    assert x0.mean().item() == pytest.approx(-0.5, abs=0.03)
    assert x1.mean().item() == pytest.approx(0.5, abs=0.06)
    assert x1.std().item() / x0.std().item() == pytest.approx(3.0, rel=0.05)


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    s = load_dataset("imagefolder", tmp_path, "train")
    assert s.classes == ["cat", "dog"] and s.x.shape == (6, 3, 32, 32) and s.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_missing_data_names_path_variable_and_layout(tmp_path):
    with pytest.raises(VirkitError) as e:
        load_dataset("cifar10", tmp_path / "nowhere", "train")
    msg = str(e.value)
    assert "nowhere" in msg and "VIRKIT_DATA" in msg and "cifar-10-batches-py" in msg and "\n" not in msg


def test_truncated_cifar_pickle_is_a_clear_error(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / n).write_bytes(b"\x80\x04\x95garbage")
    with pytest.raises(VirkitError, match="corrupt"):
        load_dataset("cifar10", tmp_path, "test")


def test_validation_split_is_carved_from_train_and_picks_best_without_test_images(tiny_cfg):
    """best.pt is chosen on a seeded class-balanced validation split of the training set (issue 13);
    the run trains on the rest and no test image is in it."""
    from virkit.data.datasets import validation_split
    from virkit.training.trainer import prepare_data

    cfg = tiny_cfg("vir-at", holdout=100)
    d = prepare_data(cfg, torch.device("cpu"))
    rows = lambda s: {bytes(r) for r in s.x.flatten(1).numpy()}
    full_train = load_dataset("cifar10", cfg.data_root, "train")
    full_test = load_dataset("cifar10", cfg.data_root, "test")
    val, train, test_rows = rows(d.holdout), rows(d.train), rows(full_test)
    assert len(d.holdout) == 100 and not (val & train), "validation images leak into training"
    assert val <= rows(full_train) and not (val & test_rows), "validation must come from the training split"
    assert torch.bincount(d.holdout.y, minlength=10).tolist() == [10] * 10
    assert d.meta["holdout"]["from"] == "train" and d.meta["holdout"]["size"] == 100
    # fixed per dataset: the same images whatever the run's seed
    rest, val2, rec = validation_split(full_train, 100)
    assert rows(val2) == val and rec == d.meta["holdout"] and len(rest) == len(full_train) - 100
    old = prepare_data(tiny_cfg("vir-at", holdout=100, holdout_from="test"), torch.device("cpu"))
    assert rows(old.holdout) <= test_rows and old.meta["holdout"]["from"] == "test"


@needs_standin
def test_training_loader_augmentations():
    """``augment``: "none" yields the images as they are, "flip" each image or its mirror (both
    occur), "crop-flip" shifted copies too; an unknown name is one clear error."""
    train = subset(load_dataset("cifar10", STANDIN, "train"), 200, seed=1)
    plain = {}
    for mode in ("none", "flip", "crop-flip"):
        x, _, idx = next(iter(training_loader(train, 200, mode).epoch(3)))
        ref = train.float_images(idx)
        same = [torch.equal(x[i], ref[i]) for i in range(200)]
        mirrored = [torch.equal(x[i], ref[i].flip(-1)) for i in range(200)]
        plain[mode] = (sum(same), sum(mirrored), sum(not (s or m) for s, m in zip(same, mirrored)))
    assert plain["none"][0] == 200
    assert plain["flip"][2] == 0 and plain["flip"][0] > 50 and plain["flip"][1] > 50
    assert plain["crop-flip"][2] > 100  # most crops are shifted (1 in 81 offsets is not)
    with pytest.raises(VirkitError, match="unknown augment 'jitter'; valid augments: crop-flip, flip, none"):
        training_loader(train, 8, "jitter")
