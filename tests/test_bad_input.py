"""Issue #6, bad input: every mistake gives ONE line ``virkit: error: ...``, exit code 2, and
nothing is created or overwritten (the whole temporary tree is compared byte for byte).

Most cases run the CLI in-process (``virkit.cli.main``); two go through a real subprocess to check
the exit status and that stderr is exactly one line.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from virkit.cli import main

REPO = Path(__file__).resolve().parents[1]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# a tiny, valid training request: errors must come from the one bad option added to it
TRAIN = ["train", "--preset", "tiny", "--device", "cpu", "--eval-attacks", ""]


# ---------------------------------------------------------------------------------------------- helpers
def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def png(size: int, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def cifar_batch(n: int = 10, values: int = 3072) -> bytes:
    return pickle.dumps(
        {
            b"batch_label": b"x",
            b"labels": [i % 10 for i in range(n)],
            b"data": np.zeros((n, values), dtype=np.uint8),
            b"filenames": [b"f"] * n,
        },
        protocol=2,
    )


def cifar_folder(root: Path, first: bytes) -> Path:
    """``root/cifar-10-batches-py`` in torchvision's layout whose ``data_batch_1`` holds ``first``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (folder / name).write_bytes(first if name == "data_batch_1" else cifar_batch())
    return root


def write_checkpoint(
    path: Path, model: str = "small-cnn", classes=CIFAR10_CLASSES, weights_of: str | None = None, **cfg_overrides
) -> Path:
    """A checkpoint in virkit's format (untrained weights); ``weights_of`` builds the state dict
    from another architecture than the one the config names."""
    from virkit.io import atomic_torch_save
    from virkit.models.checkpoint import FORMAT, build_model_from_meta
    from virkit.training.config import resolve_config

    cfg = {**resolve_config("tiny", eval_attacks=()).to_dict(), "model": model, **cfg_overrides}
    meta = {
        "classes": list(classes),
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "shape": [3, 32, 32],
        "source": "test",
        "dataset": cfg["dataset"],
    }
    net = build_model_from_meta({**cfg, "model": weights_of or model}, meta)
    atomic_torch_save(
        {
            "format": FORMAT,
            "model": net.state_dict(),
            "optimizer": {},
            "epoch": 1,
            "best_metric": 0.0,
            "history": [],
            "config": json.dumps(cfg),
            "data": meta,
        },
        path,
    )
    return path


def fake_run(folder: Path, finished: bool) -> Path:
    """A run directory as ``virkit train`` leaves it (finished or not); bytes only, no training."""
    from virkit.training.config import config_hash, resolve_config

    cfg = resolve_config("tiny", eval_attacks=(), device="cpu")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "config_hash": config_hash(cfg)}))
    (folder / "history.jsonl").write_text('{"epoch": 1}\n')
    write_checkpoint(folder / "last.pt")
    if finished:
        (folder / "summary.json").write_text(json.dumps({"status": "finished"}))
    return folder


# ---------------------------------------------------------------------------------------------- cases
# Each builder gets (tmp, ctx) and returns the argv; ``tmp/out`` is the output it must not create.
def _root_with(tmp: Path, first: bytes) -> list[str]:
    return TRAIN + ["--data-root", str(cifar_folder(tmp / "data", first))]


def _imagefolder(tmp: Path, sizes: dict[str, int], n: int = 1) -> list[str]:
    for split in ("train", "test"):
        for cls, size in sizes.items():
            d = tmp / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.png").write_bytes(png(size))
    return TRAIN + ["--dataset", "imagefolder", "--data-root", str(tmp / "data")]


def _empty_imagefolder(tmp: Path) -> list[str]:
    for split in ("train", "test"):
        (tmp / "data" / split / "cat").mkdir(parents=True)
    return TRAIN + ["--dataset", "imagefolder", "--data-root", str(tmp / "data")]


def _small_standin(tmp: Path) -> list[str]:
    """The stand-in's cifar10 layout (an archive of class folders) holding 16x16 PNGs."""
    (tmp / "data").mkdir()
    with tarfile.open(tmp / "data" / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            for cls in CIFAR10_CLASSES:
                blob = png(16)
                info = tarfile.TarInfo(f"{split}/{cls}/0000.png")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return TRAIN + ["--data-root", str(tmp / "data")]


def _corrupt_image(tmp: Path) -> list[str]:
    argv = _imagefolder(tmp, {"a": 32, "b": 32})
    (tmp / "data" / "train" / "b" / "0.png").write_bytes(b"\x89PNG but not really")
    return argv


def _truncated_standin(tmp: Path) -> list[str]:
    argv = _small_standin(tmp)
    archive = tmp / "data" / "cifar10-jpeg.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return argv


def _evaluate(tmp: Path, ctx, ckpt_kwargs: dict, *extra: str) -> list[str]:
    root = ctx.stand_in()
    (tmp / "ck").mkdir()
    ck = write_checkpoint(tmp / "ck" / "model.pt", **ckpt_kwargs)
    return [
        "evaluate",
        "--checkpoint",
        str(ck),
        "--attacks",
        "natural",
        "--device",
        "cpu",
        "--data-root",
        str(root),
        "--out",
        str(tmp / "out" / "eval.json"),
        *extra,
    ]


CASES = [
    # unknown names: the message lists the valid ones
    ("dataset", lambda t, r: TRAIN + ["--dataset", "mnist"], ["unknown dataset 'mnist'", "cifar10", "imagefolder"]),
    ("model", lambda t, r: TRAIN + ["--model", "resnet9000"], ["unknown model 'resnet9000'", "small-cnn", "resnet18"]),
    ("method", lambda t, r: TRAIN + ["--method", "vir"], ["unknown method 'vir'", "vir-at", "trades"]),
    (
        "preset",
        lambda t, r: ["train", "--preset", "huge", "--device", "cpu"],
        ["unknown preset 'huge'", "tiny", "paper"],
    ),
    ("train-attack", lambda t, r: TRAIN[:-1] + ["natural,pgd7"], ["unknown attack 'pgd7'", "pgd100", "fgsm"]),
    (
        "evaluate-attack",
        lambda t, r: ["evaluate", "--checkpoint", str(t / "nothing.pt"), "--attacks", "natural,pgd"],
        ["unknown attack 'pgd'", "pgd100"],
    ),
    # values out of range
    ("eps-high", lambda t, r: TRAIN + ["--eps", "8"], ["eps=8.0 is out of range", "8/255"]),
    ("eps-negative", lambda t, r: TRAIN + ["--eps=-8/255"], ["eps=-0.031", "out of range"]),
    ("not-a-number", lambda t, r: TRAIN + ["--epochs", "two"], ["argument --epochs: invalid int value: 'two'"]),
    ("step-size", lambda t, r: TRAIN + ["--step-size", "0"], ["step_size=0.0 is out of range"]),
    ("lr-zero", lambda t, r: TRAIN + ["--lr", "0"], ["lr=0.0 is out of range"]),
    ("lr-nan", lambda t, r: TRAIN + ["--lr", "nan"], ["lr=nan is out of range"]),
    ("epochs", lambda t, r: TRAIN + ["--epochs", "0"], ["epochs=0 is out of range"]),
    ("batch-size", lambda t, r: TRAIN + ["--batch-size", "0"], ["batch_size=0 is out of range"]),
    ("alpha", lambda t, r: TRAIN + ["--alpha", "-1"], ["alpha=-1.0 is out of range"]),
    ("beta", lambda t, r: TRAIN + ["--beta", "1e9"], ["beta=1000000000.0 is out of range"]),
    ("gamma", lambda t, r: TRAIN + ["--gamma", "-2"], ["gamma=-2.0 is out of range"]),
    (
        "reweight-start",
        lambda t, r: TRAIN + ["--epochs", "3", "--reweight-start", "4"],
        ["reweight_start=4 is after the last epoch (3)", "--reweight-start <= 3"],
    ),
    # data roots: missing or corrupt
    ("data-missing", lambda t, r: TRAIN + ["--data-root", str(t / "nowhere")], ["not found", "nowhere"]),
    ("cifar-truncated", lambda t, r: _root_with(t, cifar_batch()[:500]), ["corrupt dataset file", "data_batch_1"]),
    ("cifar-garbage", lambda t, r: _root_with(t, b"\x00not a pickle at all"), ["corrupt dataset file", "data_batch_1"]),
    ("cifar-wrong-size", lambda t, r: _root_with(t, cifar_batch(values=3 * 16 * 16)), ["corrupt dataset file", "3072"]),
    ("standin-16x16", lambda t, r: _small_standin(t), ["16x16 images, expected 32x32"]),
    ("imagefolder-empty", lambda t, r: _empty_imagefolder(t), ["no images for split 'train'"]),
    ("imagefolder-mixed-sizes", lambda t, r: _imagefolder(t, {"a": 32, "b": 16}), ["has size 16x16", "same size"]),
    ("imagefolder-corrupt-image", lambda t, r: _corrupt_image(t), ["corrupt image", "0.png"]),
    ("standin-truncated-archive", lambda t, r: _truncated_standin(t), ["corrupt archive", "cifar10-jpeg.tar.gz"]),
    # checkpoints that do not fit
    (
        "ckpt-architecture",
        lambda t, r: _evaluate(t, r, {"model": "resnet18", "weights_of": "small-cnn"}),
        ["does not match the 'resnet18' architecture"],
    ),
    (
        "ckpt-classes",
        lambda t, r: _evaluate(t, r, {"classes": ["a", "b", "c", "d", "e"]}),
        ["has 5 classes but the dataset has 10"],
    ),
    (
        "ckpt-truncated",
        lambda t, r: ["evaluate", "--checkpoint", str(_truncated_ckpt(t)), "--attacks", "natural"],
        ["cannot read checkpoint", "truncated"],
    ),
    (
        "ckpt-missing",
        lambda t, r: ["evaluate", "--checkpoint", str(t / "none.pt"), "--attacks", "natural"],
        ["does not exist"],
    ),
    (
        "ckpt-not-virkit",
        lambda t, r: ["evaluate", "--checkpoint", str(_foreign_ckpt(t)), "--attacks", "natural"],
        ["is not a virkit checkpoint"],
    ),
    (
        "n-examples",
        lambda t, r: _evaluate(t, r, {}, "--n-examples", "10001"),
        ["--n-examples=10001 is more than the test set has (10000)"],
    ),
    (
        "compile-cudagraphs-cpu",
        lambda t, r: _evaluate(t, r, {}, "--compile", "cudagraphs"),
        ["compile=cudagraphs needs a CUDA device", "--compile on"],
    ),
    # output directories holding a run
    (
        "out-finished",
        lambda t, r: (fake_run(t / "run", True), TRAIN + ["--out", str(t / "run")])[1],
        ["already holds a finished run", "--resume", "--overwrite"],
    ),
    (
        "out-unfinished",
        lambda t, r: (fake_run(t / "run", False), TRAIN + ["--out", str(t / "run")])[1],
        ["already holds an unfinished run", "--resume"],
    ),
    (
        "resume-other-config",
        lambda t, r: (fake_run(t / "run", False), TRAIN + ["--lr", "0.01", "--out", str(t / "run"), "--resume"])[1],
        ["cannot resume", "config differs", "--overwrite"],
    ),
    (
        "resume-finished-other-config",
        lambda t, r: (fake_run(t / "run", True), TRAIN + ["--lr", "0.01", "--out", str(t / "run"), "--resume"])[1],
        ["holds a finished run with a different config"],
    ),
]


def _truncated_ckpt(tmp: Path) -> Path:
    good = write_checkpoint(tmp / "good.pt")
    bad = tmp / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    return bad


def _foreign_ckpt(tmp: Path) -> Path:
    import torch

    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp / "foreign.pt")
    return tmp / "foreign.pt"


class Ctx:
    """Decoded-image caches go to a private folder (not the shared stand-in, not the compared tree),
    except for cases that read the real stand-in (``stand_in()``: skipped when it is absent)."""

    def __init__(self, request):
        self.request, self.root = request, None

    def stand_in(self) -> Path:
        self.root = self.request.getfixturevalue("stand_in_root")
        return self.root


@pytest.mark.parametrize("build,expected", [pytest.param(b, e, id=i) for i, b, e in CASES])
def test_bad_input_one_line_exit_2_nothing_written(build, expected, tmp_path, request, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    ctx = Ctx(request)
    argv = build(work, ctx)
    # the stand-in's decoded cache lives beside it; other caches go to a private folder
    monkeypatch.setenv("VIRKIT_DATA", str(ctx.root or tmp_path / "cache"))
    if argv[0] == "train" and "--out" not in argv:
        argv = argv + ["--out", str(work / "out")]
    before = snapshot(work)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("virkit: error: "), err
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
    assert not (work / "out").exists(), "an output directory was created despite the error"
    assert snapshot(work) == before, "files were created or changed despite the error"


@pytest.mark.parametrize(
    "argv,expected",
    [
        pytest.param(TRAIN + ["--method", "vir-atx"], "unknown method 'vir-atx'", id="method"),
        pytest.param(TRAIN + ["--data-root", "{tmp}/missing"], "not found", id="data-root"),
    ],
)
def test_bad_input_subprocess(argv, expected, tmp_path):
    """The real entry point: exit status 2, exactly one line on stderr, nothing on stdout, no --out."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "out")]
    env = {**os.environ, "VIRKIT_DATA": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-m", "virkit", *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("virkit: error: ") and expected in p.stderr, p.stderr
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)
