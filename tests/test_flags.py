"""Every `--flag` the README, the docs and virkit's messages name exists.

Flags are collected from virkit's command-line parser (every subcommand), the benchmark scripts'
parsers and the GPU campaign script's options. Flags of other programs that the docs show in their
own commands (pytest, pip, ruff, torchrun, ray, papermill, git) are listed below with the program; virkit's
internal worker entry points are not user flags but appear in docstrings.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: flags of other programs, as the docs use them in those programs' commands
FOREIGN = {
    "pytest (Makefile)": {"--dist", "--durations"},
    "ruff format (Makefile)": {"--check"},
    "pip (Makefile)": {"--no-deps"},
    "ipykernel install (Makefile)": {"--sys-prefix"},
    "torchrun": {"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-backend", "--rdzv-endpoint", "--standalone"},
    "ray start": {"--head", "--port"},
    "papermill": {"--help-notebook"},
    "git (provenance)": {"--porcelain", "--short", "--untracked-files"},
    "virkit's worker processes (python -m virkit.notebooks / virkit.sweep)": {"--exec-one", "--train-one", "--worker"},
}
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    out = set()
    for action in parser._actions:
        out.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _parser_flags(sub)
    return out


def _defined_flags() -> set[str]:
    from virkit.cli import build_parser

    flags = _parser_flags(build_parser())
    for f in (ROOT / "benchmarks").glob("*.py"):
        flags |= set(re.findall(r'add_argument\(\s*"(--[a-z0-9-]+)"', f.read_text()))
    for f in (ROOT / "benchmarks").glob("*.sh"):
        flags |= set(re.findall(r"^\s*(--[a-z0-9-]+)\)", f.read_text(), re.M))
    return flags


def _texts() -> list[Path]:
    return (
        [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "Makefile", ROOT / "figures" / "README.md"]
        + sorted((ROOT / "docs").glob("*.md"))
        + sorted((ROOT / "virkit").rglob("*.py"))
    )


def test_every_named_flag_exists():
    known = _defined_flags() | set().union(*FOREIGN.values())
    unknown = {}
    for path in _texts():
        if not path.is_file():
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for flag in FLAG.findall(line):
                if flag not in known:
                    unknown.setdefault(flag, []).append(f"{path.relative_to(ROOT)}:{i}")
    assert not unknown, "flags named but defined nowhere: " + "; ".join(
        f"{flag} ({', '.join(where[:3])})" for flag, where in sorted(unknown.items())
    )


def test_the_check_catches_a_missing_flag(tmp_path, monkeypatch):
    """The scan is not vacuous: the parser's flags are found, and a flag no parser defines is not."""
    known = _defined_flags()
    assert {"--data-root", "--precision", "--channels-last", "--preset", "--calibrate"} <= known
    assert "--download" not in known and "--download" not in set().union(*FOREIGN.values())
    assert FLAG.findall("pass --download when online, or --data-root DIR") == ["--download", "--data-root"]
