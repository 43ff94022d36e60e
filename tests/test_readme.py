"""Examples in the docs that cannot rot: every ```python block of README.md, and every ```python block of
docs/*.md whose fence follows a ``<!-- test -->`` line, runs as printed in a fresh interpreter.

Each block runs in its own process, in an empty folder, with this checkout on PYTHONPATH, the CIFAR-10
stand-in as ``$VIRKIT_DATA`` and ``VIR_SMOKE=1``: the README's training loop reads that variable to
train 2 epochs of 64 images on a small CNN instead of the paper's budget (the block says so in a
comment). Nothing else about a block is changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- test -->"
FENCE = re.compile(r"^```python[ \t]*$")


def python_blocks(text: str, marked_only: bool) -> list[tuple[int, str]]:
    """(line number of the opening fence, source) of each ```python block of a Markdown text; with ``marked_only`` only
    the blocks whose fence comes right after a ``<!-- test -->`` line."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i
            j = i + 1
            while j < len(lines) and lines[j].rstrip() != "```":
                j += 1
            if j == len(lines):
                raise ValueError(f"line {start + 1}: ```python block without a closing fence")
            marked = start > 0 and lines[start - 1].strip() == MARK
            if marked or not marked_only:
                out.append((start + 1, "\n".join(lines[start + 1 : j]) + "\n"))
            i = j + 1
        else:
            i += 1
    return out


def _all_blocks() -> list:
    params = []
    for line, src in python_blocks((REPO / "README.md").read_text(encoding="utf-8"), marked_only=False):
        params.append(pytest.param(src, id=f"README.md:{line}"))
    for doc in sorted((REPO / "docs").glob("*.md")):
        for line, src in python_blocks(doc.read_text(encoding="utf-8"), marked_only=True):
            params.append(pytest.param(src, id=f"docs/{doc.name}:{line}"))
    return params


BLOCKS = _all_blocks()


def test_the_extraction_finds_what_it_should():
    text = "\n".join(
        [
            "# t",
            "```python",
            "a = 1",
            "```",
            "",
            "<!-- test -->",
            "```python",
            "b = 2",
            "",
            "```",
            "```bash",
            "ls",
            "```",
            "```python",
            "c = 3",
            "```",
        ]
    )
    assert python_blocks(text, marked_only=False) == [(2, "a = 1\n"), (7, "b = 2\n\n"), (14, "c = 3\n")]
    assert python_blocks(text, marked_only=True) == [(7, "b = 2\n\n")]
    with pytest.raises(ValueError, match="without a closing fence"):
        python_blocks("```python\nx = 1\n", marked_only=False)
    ids = [p.id for p in BLOCKS]
    assert any(i.startswith("README.md:") for i in ids), "README.md has no python block"
    assert any(i.startswith("docs/") for i in ids), "no docs/*.md block is marked <!-- test -->"


@pytest.mark.parametrize("source", BLOCKS)
def test_block_runs_as_printed(source, tmp_path, stand_in_root):
    env = {
        **os.environ,
        "VIRKIT_DATA": str(stand_in_root),
        "VIR_SMOKE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p),
    }
    script = tmp_path / "block.py"
    script.write_text(source, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"the block failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
