"""Shared test fixtures (small and generic; test modules keep their own specifics)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# `make test` runs the suite on pytest-xdist workers (`-n 2`, one per core): each worker gets its
# share of the cores, so two workers do not fight over both (the small models of the suite run no
# faster on two threads than on one, and oversubscribed threads wait for each other).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


# The suite's speed calibrations (virkit.training.speed, for runs with --precision auto) are measured on a loaded
# machine: they go to a cache of the test session's own, never to the user's ~/.cache/virkit, where a
# later `make demo` would trust them. (Decoded stand-in images are cached beside $VIRKIT_DATA.)
# torch.compile's kernel cache goes there too (not /tmp/torchinductor_$USER), and the controller that made
# the folder removes it at exit: a test run leaves nothing behind on a disk that CI and users share.
if "VIRKIT_TEST_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["VIRKIT_TEST_CACHE"] = tempfile.mkdtemp(prefix="virkit-test-cache-")
    os.environ["XDG_CACHE_HOME"] = os.environ["VIRKIT_TEST_CACHE"]
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(os.environ["VIRKIT_TEST_CACHE"], "inductor"))
    atexit.register(shutil.rmtree, os.environ["VIRKIT_TEST_CACHE"], True)


# The suite never fetches from the internet: a missing dataset is the one-line error (tests/test_fetch.py
# serves its own mirror on 127.0.0.1 and clears this for its subprocesses).
os.environ["VIRKIT_OFFLINE"] = "1"


def _stand_in_root() -> Path:
    env = os.environ.get("VIRKIT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def stand_in_root() -> Path:
    """The folder holding the CIFAR-10 stand-in (``$VIRKIT_DATA``, else ../shared/datasets beside the
    checkout); the test is skipped when it holds no CIFAR-10."""
    root = _stand_in_root()
    if not ((root / "cifar10-jpeg.tar.gz").is_file() or (root / "cifar-10-batches-py").is_dir()):
        pytest.skip(f"CIFAR-10 stand-in not found under {root} (set VIRKIT_DATA)")
    return root


@pytest.fixture
def tiny_cfg(stand_in_root):
    """Factory: ``tiny_cfg(method='vir-at', **overrides)`` -> a validated ``tiny``-preset TrainConfig on
    the CPU, reading the stand-in, with no final evaluation (``eval_attacks=()``)."""
    from virkit.training.config import resolve_config

    def make(method: str = "vir-at", **overrides):
        values = {"eval_attacks": (), "device": "cpu", "data_root": str(stand_in_root), **overrides}
        return resolve_config("tiny", method=method, **values)

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores);
    modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
