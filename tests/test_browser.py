"""The weight explorer (notebook 01) in a real browser: JupyterLab on 127.0.0.1 and headless
Chromium driven by Playwright. Runs the notebook, moves a slider, checks the figure changed.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package
(never ``playwright install``: the system Chromium is used through ``executable_path``). Skipped
with the reason when either is missing. Screenshots go to the test's tmp dir, and to
``figures/screenshots/`` when ``VIRKIT_SAVE_SCREENSHOTS`` is set.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("VIRKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _requirements():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(
            "the playwright Python package is not installed (pip install playwright; the system "
            "Chromium is used, no 'playwright install')"
        )
    for mod in ("jupyterlab", "ipywidgets", "papermill"):
        pytest.importorskip(mod)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 (random port, token set here), with isolated config/data/runtime
    dirs, serving a copy of notebook 01 parameterized for a quick, checkpoint-free run."""
    _requirements()
    from papermill.iorw import load_notebook_node, write_ipynb
    from papermill.parameterize import parameterize_notebook

    root = tmp_path / "lab"
    root.mkdir()
    nb = load_notebook_node(str(REPO / "notebooks" / "01_weight_explorer.ipynb"))
    nb = parameterize_notebook(
        nb,
        {"preset": "smoke", "checkpoint": "", "fig_dir": str(tmp_path / "figs"), "runs_root": str(tmp_path / "runs")},
        kernel_name="python3",
        language="python",
    )
    write_ipynb(nb, str(root / "01_weight_explorer.ipynb"))
    token = secrets.token_hex(16)
    port = _free_port()
    env = os.environ.copy()
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"),
            "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "jsettings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jworkspaces"),
            "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        }
    )
    log = tmp_path / "jupyter.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        "--LabApp.extension_manager=readonly",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_remote_access=False",
        "--ServerApp.disable_check_xsrf=False",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--ServerApp.terminals_enabled=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 120, proc, log)
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "root": root, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _status_text(page) -> str:
    loc = page.locator(".virkit-status")
    return loc.first.inner_text() if loc.count() else ""


def _wait_redraw(page, n: int, timeout_s: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if f"redraw #{n}" in _status_text(page):
            return
        page.wait_for_timeout(500)
    raise AssertionError(
        f"the explorer did not reach redraw #{n} within {timeout_s:.0f} s (status: {_status_text(page)!r})"
    )


def _wait_idle(page, timeout_s: float) -> None:
    """Wait until the notebook's kernel has been idle for two seconds in a row."""
    t0, idle_since = time.time(), None
    while time.time() - t0 < timeout_s:
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if idle:
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= 2:
                return
        else:
            idle_since = None
        page.wait_for_timeout(250)
    raise AssertionError(f"the kernel did not become idle within {timeout_s:.0f} s")


def _wait_loaded(page) -> None:
    page.wait_for_function(
        "() => { const i = document.querySelector('img.virkit-landscape');"
        " return i && i.complete && i.naturalWidth > 0; }",
        timeout=60_000,
    )
    page.wait_for_timeout(500)


def _wait_changed(page, src_before: str, timeout_s: float) -> bool:
    """True once the landscape image shows new content and the status reports a non-default gamma."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        src = page.locator("img.virkit-landscape").first.get_attribute("src")
        if src != src_before and ", gamma=10," not in _status_text(page):
            return True
        page.wait_for_timeout(500)
    return False


def _dismiss_dialogs(page, seen: list[str], wait_s: float = 3.0) -> None:
    """Accept any modal JupyterLab dialog (e.g. the kernel chooser when the kernel is still being
    resolved, or a first-start prompt) so that it cannot intercept the clicks that follow; the text
    of each dialog is kept in ``seen`` for the failure message."""
    t0 = time.time()
    while time.time() - t0 < wait_s:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and dialog.first.is_visible():
            seen.append(" ".join(dialog.first.inner_text().split())[:200])
            accept = dialog.first.locator(".jp-Dialog-button.jp-mod-accept")
            if accept.count():
                accept.first.click()
            else:
                page.keyboard.press("Escape")
            page.wait_for_timeout(500)
            t0 = time.time()  # a second dialog may follow the first
        else:
            page.wait_for_timeout(250)


def test_weight_explorer_in_jupyterlab(jupyter_lab, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    url = f"{jupyter_lab['url']}/lab/tree/01_weight_explorer.ipynb?token={jupyter_lab['token']}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1200})
            page.set_default_timeout(120_000)
            page.goto(url)
            # the notebook panel is open and its kernel started
            page.wait_for_selector(".jp-NotebookPanel", state="visible", timeout=180_000)
            page.wait_for_selector(
                ".jp-Notebook-ExecutionIndicator[data-status='idle'], .jp-Toolbar-kernelStatus", timeout=180_000
            )
            page.wait_for_timeout(1500)
            no_news = page.get_by_role("button", name="No")
            if no_news.count():
                no_news.first.click()
            dialogs: list[str] = []
            _dismiss_dialogs(page, dialogs)
            # Run > Run All Cells (a dialog that opens late is accepted and the click retried)
            for attempt in range(3):
                try:
                    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=30_000)
                    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click(timeout=30_000)
                    break
                except Exception:
                    if attempt == 2:
                        raise AssertionError(f"could not click Run > Run All Cells; dialogs seen: {dialogs}")
                    page.keyboard.press("Escape")
                    _dismiss_dialogs(page, dialogs)
            print("JupyterLab dialogs accepted:", dialogs or "none")
            page.wait_for_selector("img.virkit-landscape", state="visible", timeout=240_000)
            _wait_redraw(page, 1, 240)
            _wait_idle(page, 240)  # every cell has run: the kernel now only serves the widgets
            land = page.locator("img.virkit-landscape").first
            land.scroll_into_view_if_needed()
            _wait_loaded(page)
            src_before = land.get_attribute("src")
            before = land.screenshot(path=str(shots / "explorer_before.png"))
            page.screenshot(path=str(shots / "explorer_page_before.png"), full_page=False)

            _dismiss_dialogs(page, dialogs, 1.0)
            # move the VIR gamma slider like a user: focus its handle, press keys, then click elsewhere
            slider = page.locator(".widget-slider", has_text="VIR γ").first
            handle = slider.locator(".noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.click()
            for _ in range(10):
                handle.press("ArrowLeft")
            page.mouse.click(5, 300)
            if not _wait_changed(page, src_before, 60):
                # fall back to dragging the handle with the mouse
                box = handle.bounding_box()
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.mouse.down()
                page.mouse.move(box["x"] - 120, box["y"] + box["height"] / 2, steps=8)
                page.mouse.up()
                assert _wait_changed(page, src_before, 120), "moving the slider did not redraw the figure"
            _wait_idle(page, 120)
            land = page.locator("img.virkit-landscape").first
            land.scroll_into_view_if_needed()
            _wait_loaded(page)
            after = land.screenshot(path=str(shots / "explorer_after.png"))
            src_after = land.get_attribute("src")
            page.screenshot(path=str(shots / "explorer_page_after.png"), full_page=False)
            status = _status_text(page)
        except Exception:
            if page is not None:  # keep what the browser showed, for the failure report
                page.screenshot(path=str(shots / "failure.png"))
                print(f"screenshot of the failure: {shots / 'failure.png'}; jupyter log: {jupyter_lab['log']}")
            raise
        finally:
            browser.close()

    assert before != after, "the weight landscape did not change after moving the slider"
    assert src_before != src_after
    assert ", gamma=10," not in status, status  # the VIR gamma slider left its default value
    assert (shots / "explorer_after.png").stat().st_size > 10_000
    if os.environ.get("VIRKIT_SAVE_SCREENSHOTS"):
        dest = REPO / "figures" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        for f in shots.glob("*.png"):
            shutil.copy2(f, dest / f.name)
    (tmp_path / "status.json").write_text(json.dumps({"status": status}))
