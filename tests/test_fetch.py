"""Datasets fetched on first use (virkit.data.fetch), tested without internet.

A local HTTP server (127.0.0.1, an ephemeral port) plays the mirror named by VIRKIT_DATA_MIRROR. It
serves CIFAR-10 in torchvision's official layout (``cifar-10-python.tar.gz`` holding
``cifar-10-batches-py/``), built from the JPEG stand-in by ``../shared/datasets/build_cifar10_batches.py``.
Its bytes differ from the original download, so the tests name its checksum with VIRKIT_DATA_CHECKSUMS;
everything else is the path a user's first run takes: download, checksum, unpack, train.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = "cifar-10-python.tar.gz"


class _Handler(http.server.BaseHTTPRequestHandler):
    """/good/F: the file; /truncated/F: the full Content-Length, half the bytes, then the connection
    closes; /corrupt/F: same length, other bytes; /slow/F: the file at about 20 MB/s."""

    folder: Path
    requests: list

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        kind, _, name = self.path.strip("/").partition("/")
        self.requests.append(self.path)
        f = self.folder / name
        if not f.is_file() or kind not in ("good", "truncated", "corrupt", "slow"):
            self.send_error(404)
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if kind == "truncated":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif kind == "corrupt":
                self.wfile.write(data[:-1000] + bytes(1000))
            elif kind == "slow":
                for i in range(0, len(data), 1 << 18):
                    self.wfile.write(data[i : i + (1 << 18)])
                    time.sleep(0.0125)
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, stand_in_root):
    """(base URL, checksums file, request log): the stand-in as cifar-10-python.tar.gz on a local server."""
    build = stand_in_root / "build_cifar10_batches.py"
    if not build.is_file():
        pytest.skip(f"{build} not found")
    folder = tmp_path_factory.mktemp("mirror")
    work = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, str(build), str(work)], check=True, capture_output=True)
    with tarfile.open(folder / ARCHIVE, "w:gz", compresslevel=1) as tar:
        tar.add(work / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5((folder / ARCHIVE).read_bytes()).hexdigest()
    sums = folder / "checksums.json"
    sums.write_text(json.dumps({ARCHIVE: md5}))
    requests: list = []
    handler = type("H", (_Handler,), {"folder": folder, "requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", sums, requests
    server.shutdown()
    server.server_close()


def _user_env(home: Path, mirror_base: str | None, sums: Path | None, **extra) -> dict:
    """A new user's environment: empty HOME, no VIRKIT_DATA (no ../shared), the mirror named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRKIT_") and k not in ("XDG_CACHE_HOME", "HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if mirror_base:
        env["VIRKIT_DATA_MIRROR"] = mirror_base
    if sums:
        env["VIRKIT_DATA_CHECKSUMS"] = str(sums)
    env.update(extra)
    return env


def _virkit(args, env, cwd, **kw):
    return subprocess.run(
        [sys.executable, "-m", "virkit", *args], env=env, cwd=cwd, capture_output=True, text=True, **kw
    )


def _leftovers(root: Path) -> set[str]:
    """What a fetch left in the data folder (its lock files and virkit's decoded-statistics cache aside)."""
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if not p.name.startswith(".fetch-") and p.name != "decoded"}


@pytest.mark.slow
def test_first_run_fetches_checks_unpacks_and_trains(mirror, tmp_path):
    """The data step of a new user's first run, end to end: empty HOME, no ../shared beside the
    working folder, the mirror named; `virkit train` fetches, verifies, unpacks and trains."""
    base, sums, requests = mirror
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    env = _user_env(home, f"{base}/good", sums, VIRKIT_SPEED="fp32")
    p = _virkit(["train", "--preset", "smoke", "--method", "at", "--out", str(cwd / "run")], env, cwd, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    data = home / ".cache" / "virkit" / "data"
    assert f"fetching {ARCHIVE}" in p.stderr and f"from {base}/good/{ARCHIVE} into {data}" in p.stderr
    assert (data / "cifar-10-batches-py" / "data_batch_5").is_file() and (data / ARCHIVE).is_file()
    assert _leftovers(data) == {ARCHIVE, "cifar-10-batches-py"}  # no partial file, no temp folder
    cfg = json.loads((cwd / "run" / "config.json").read_text())
    source = cfg["data"]["source"] if "source" in cfg["data"] else json.dumps(cfg["data"])
    assert "NOT the original archive" in source  # the results say which data
    assert json.loads((cwd / "run" / "summary.json").read_text())["status"] == "finished"
    n = len(requests)
    again = _virkit(["fetch", "cifar10"], env, cwd, timeout=120)  # in place: nothing fetched again
    assert again.returncode == 0 and len(requests) == n and "already" in again.stdout


@pytest.mark.parametrize("kind, words", [("truncated", "truncated|broke off"), ("corrupt", "checksum mismatch")])
def test_a_broken_download_is_refused_and_leaves_nothing(mirror, tmp_path, kind, words):
    base, sums, _ = mirror
    root = tmp_path / "data"
    p = _virkit(
        ["fetch", "cifar10", "--data-root", str(root)],
        _user_env(tmp_path, f"{base}/{kind}", sums),
        tmp_path,
        timeout=300,
    )
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("virkit: error")]
    assert len(lines) == 1 and re.search(words, lines[0]) and "Traceback" not in p.stderr
    assert _leftovers(root) == set()  # nothing that looks complete


@pytest.mark.slow
def test_concurrent_fetches_download_once(mirror, tmp_path):
    """Two processes asking for the same dataset at once (two notebooks): one downloads, the other
    waits for it; both end with the same intact data."""
    base, sums, requests = mirror
    root = tmp_path / "data"
    env = _user_env(tmp_path, f"{base}/slow", sums)
    before = len(requests)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "virkit", "fetch", "cifar10", "--data-root", str(root)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(requests) - before == 1
    assert any("waiting for it" in err for _, err in outs)
    assert _leftovers(root) == {ARCHIVE, "cifar-10-batches-py"}
    sys.path.insert(0, str(ROOT))
    from virkit.data.datasets import load_dataset

    assert len(load_dataset("cifar10", root, "test", download=False)) == 10000


@pytest.mark.slow
def test_an_interrupted_download_leaves_nothing_that_looks_complete(mirror, tmp_path):
    base, sums, _ = mirror
    root = tmp_path / "data"
    env = _user_env(tmp_path, f"{base}/slow", sums)
    p = subprocess.Popen(
        [sys.executable, "-m", "virkit", "fetch", "cifar10", "--data-root", str(root)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(root.glob(".*.partial")):
        time.sleep(0.1)
    time.sleep(0.5)
    p.kill()
    p.wait()
    assert list(root.glob(".*.partial")) and not (root / ARCHIVE).exists()
    assert not (root / "cifar-10-batches-py").exists()
    done = _virkit(
        ["fetch", "cifar10", "--data-root", str(root)], _user_env(tmp_path, f"{base}/good", sums), tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert _leftovers(root) == {ARCHIVE, "cifar-10-batches-py"}  # the stale partial file removed


def test_offline_without_data_stops_once_before_any_notebook(tmp_path):
    """No data and no network (the mirror names a closed port): `virkit notebooks run` stops with one
    line, exit 2, before any notebook runs, naming both fixes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    out = tmp_path / "out"
    env = _user_env(tmp_path / "home", f"http://127.0.0.1:{port}", None)
    p = _virkit(
        ["notebooks", "run", "--preset", "smoke", "--out-root", str(out), "--fig-root", str(tmp_path / "figs")],
        env,
        tmp_path,
        timeout=300,
    )
    assert p.returncode == 2
    errors = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, p.stderr
    assert "go online" in errors[0] and "VIRKIT_DATA" in errors[0] and "could not be reached" in errors[0]
    assert not list(out.rglob("*.ipynb"))  # no notebook started
    off = _virkit(
        ["fetch", "cifar10"], _user_env(tmp_path / "home", None, None, VIRKIT_OFFLINE="1"), tmp_path, timeout=120
    )
    assert off.returncode == 2 and "VIRKIT_OFFLINE" in off.stderr and len(off.stderr.strip().splitlines()) == 1


def test_official_sources_are_torchvisions():
    """The URLs and checksums are torchvision's own (read from its dataset classes), Tiny-ImageNet's
    the official archive; a mirror replaces the host only."""
    import torchvision.datasets as tvd

    from virkit.data import fetch

    (a,) = fetch.archives("cifar10")
    assert (a.url, a.md5, a.provides) == (tvd.CIFAR10.url, tvd.CIFAR10.tgz_md5, "cifar-10-batches-py")
    assert [x.filename for x in fetch.archives("svhn")] == ["train_32x32.mat", "test_32x32.mat"]
    assert fetch.archives("tiny-imagenet")[0].url.endswith("tiny-imagenet-200.zip")
    assert fetch.archives("cifar100")[0].md5 == tvd.CIFAR100.tgz_md5


def test_doctor_shows_one_screen_for_a_bug_report(tmp_path, stand_in_root):
    """`virkit doctor`: versions, device and ISA, the calibration, datasets found or missing, caches,
    and whether the mirror is reachable; --json gives the same as JSON."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _user_env(tmp_path / "home", f"http://127.0.0.1:{port}", None, VIRKIT_DATA=str(stand_in_root))
    p = _virkit(["doctor"], env, tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for words in (
        "versions:",
        "torch",
        "device:",
        "isa flags",
        "calibration:",
        "no measurement for this device yet",
        "data:",
        "JPEG stand-in",
        "cifar100",
        "missing (fetched on first use)",
        "caches:",
        "network:",
        f"http://127.0.0.1:{port} (mirror)",
        "not reachable",
    ):
        assert words in out, words
    assert len(out.splitlines()) < 60  # one screen
    j = _virkit(["doctor", "--json", "--no-network"], env, tmp_path, timeout=120)
    info = json.loads(j.stdout)
    assert info["data"]["datasets"]["cifar10"].startswith("found") and "network" not in info
