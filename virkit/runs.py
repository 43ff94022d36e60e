"""Run directories: the one module that knows a run's files, its status and who may write it.

A run directory holds

=================  ===========================================================================
``config.json``    the resolved config, its hash, versions, device, data (before epoch 1)
``history.jsonl``  one JSON object per finished epoch
``last.pt``        after every epoch (atomic); ``best.pt`` whenever validation PGD accuracy improves
``burnin.pt``      the state after the last epoch before reweighting (``reweight_start - 1``): other
                   runs with the same burn-in start from it (``virkit train --from RUN``)
``eval.json``      the final evaluation of the eval checkpoint (and what ``virkit evaluate`` adds to
                   it); ``eval-best.json`` the same of ``best.pt`` (robust overfitting is what separates
                   them), summarised in eval.json under ``checkpoints``
``summary.json``   written last: ``status: finished`` (or ``failed`` with the reason)
``.lock``          while a process writes the run: its PID, host, command and start time
=================  ===========================================================================

Every other module (trainer, evaluate, notebooks, sweep, report, cli) goes through :class:`RunDir`
instead of opening these files by name.

**One writer at a time.** ``train`` and ``evaluate`` hold :meth:`RunDir.lock` for their whole life:
an exclusive ``flock`` on ``.lock`` (:class:`virkit.locks.WriterLock`). A second writer is refused
with one line naming the directory and the holder's PID (:class:`virkit.locks.RunLockedError`, exit
code 2) before it changes anything. The kernel drops a ``flock`` when its process dies, however it
dies, so a lock left by a killed process is simply taken over (with a note naming the dead PID).
Within one process the lock is re-entrant (the trainer's final evaluation runs under the trainer's
lock). See docs/RELIABILITY.md for shared network storage.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from virkit.errors import VirkitError
from virkit.io import append_jsonl, atomic_torch_save, atomic_write_json
from virkit.locks import RunLockedError, WriterLock, describe_holder

__all__ = [
    "RunDir",
    "RunClaim",
    "RunStatus",
    "RunAction",
    "eval_lock",
    "expand_run_dirs",
    "RUN_FILES",
    "LOCK_FILE",
]

RUN_FILES = (
    "config.json",
    "history.jsonl",
    "last.pt",
    "best.pt",
    "burnin.pt",
    "eval.json",
    "eval-best.json",
    "eval-last.json",
    "summary.json",
)
LOCK_FILE = ".lock"


class RunStatus(str, enum.Enum):
    """``new``: nothing of a run; ``running``: a live process holds the lock; ``finished``:
    ``summary.json`` says so; ``failed``: files of a run that no process is writing and that did not
    finish (killed, crashed or stopped on an error; resumable when ``last.pt`` exists)."""

    NEW = "new"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class RunAction(str, enum.Enum):
    """What ``train`` does with a run directory (:meth:`RunDir.plan`)."""

    NEW = "new"
    RESUME = "resume"
    REUSE = "reuse"
    OVERWRITE = "overwrite"


# ------------------------------------------------------------------------------------------------
# The run directory
# ------------------------------------------------------------------------------------------------


class RunDir:
    """One run directory: paths of its files, readers and atomic writers, status, the
    resume/overwrite/reuse decision, and the writer lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---- files ------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def history_file(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.json"

    def eval_file_for(self, which: str) -> Path:
        """The evaluation of ``which`` checkpoint when it is not the run's eval checkpoint:
        ``eval-best.json`` (or ``eval-last.json``) beside ``eval.json``."""
        return self.path / f"eval-{which}.json"

    def note_checkpoints(self, record: dict) -> None:
        """Add ``record`` (``{"last": {...}, "best": {...}}``: file, epoch and accuracies of each
        checkpoint's final evaluation) to eval.json under ``checkpoints``, atomically."""
        doc = self.read_eval()
        doc["checkpoints"] = record
        atomic_write_json(self.eval_file, doc)

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    def checkpoint(self, which: str = "last") -> Path:
        """The path of ``last.pt``, ``best.pt`` or ``burnin.pt`` (whether or not it exists yet)."""
        if which not in ("last", "best", "burnin"):
            raise VirkitError(f"unknown checkpoint {which!r}; use last or best")
        return self.path / f"{which}.pt"

    def existing_checkpoint(self, which: str = "last") -> Path:
        """``which``.pt if present, else the other one; a one-line error when there is none."""
        for name in (which, "last", "best"):
            if self.checkpoint(name).is_file():
                return self.checkpoint(name)
        raise VirkitError(f"run directory {self.path} holds no checkpoint (best.pt / last.pt); train it first")

    # ---- readers ----------------------------------------------------------------------------------
    @staticmethod
    def _json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def read_config(self) -> dict | None:
        d = self._json(self.config_file)
        return d if isinstance(d, dict) else None

    def config_hash(self) -> str | None:
        return (self.read_config() or {}).get("config_hash")

    def read_summary(self) -> dict | None:
        d = self._json(self.summary_file)
        return d if isinstance(d, dict) else None

    def read_history(self) -> list[dict]:
        if not self.history_file.is_file():
            raise VirkitError(f"{self.history_file} does not exist; the run in {self.path} has not finished an epoch")
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]

    def read_eval(self) -> dict:
        if not self.eval_file.is_file():
            raise VirkitError(
                f"{self.eval_file} does not exist; train the run with eval_attacks or run "
                f"'virkit evaluate --checkpoint {self.path}'"
            )
        d = self._json(self.eval_file)
        if not isinstance(d, dict):
            raise VirkitError(
                f"{self.eval_file} is not valid JSON; rerun 'virkit evaluate --checkpoint {self.path} --replace'"
            )
        return d

    def has_run_files(self) -> bool:
        return any((self.path / f).exists() for f in RUN_FILES)

    def status(self) -> RunStatus:
        s = self.read_summary()
        if s is not None and s.get("status") == "finished":
            return RunStatus.FINISHED
        if WriterLock.held_by_other(self.lock_file) is not None:
            return RunStatus.RUNNING
        return RunStatus.FAILED if self.has_run_files() else RunStatus.NEW

    def is_finished(self) -> bool:
        return self.status() is RunStatus.FINISHED

    # ---- the decision ----------------------------------------------------------------------------
    def plan(self, cfg_hash: str, resume: bool = False, overwrite: bool = False, reuse: bool = False) -> RunAction:
        """What ``train`` does here: new, resume, reuse or overwrite. Raises :class:`VirkitError`,
        before anything is written, when the request would lose a run."""
        if self.path.exists() and not self.path.is_dir():
            raise VirkitError(f"output path {self.path} exists and is not a directory; choose another --out")
        status = self.status() if self.path.exists() else RunStatus.NEW
        if status is RunStatus.RUNNING:
            holder = WriterLock.held_by_other(self.lock_file) or {}
            raise RunLockedError(
                f"{self.path} is being written by {describe_holder(holder)}; wait for it to "
                "finish, stop it, or choose another --out"
            )
        if status is RunStatus.NEW:
            return RunAction.NEW
        old = self.config_hash()
        same = old == cfg_hash
        if status is RunStatus.FINISHED and reuse and same:
            return RunAction.REUSE
        if overwrite:
            return RunAction.OVERWRITE
        if resume:
            if status is RunStatus.FINISHED:
                if same:
                    return RunAction.REUSE
                raise VirkitError(
                    f"{self.path} holds a finished run with a different config; use --overwrite to "
                    "replace it or another --out"
                )
            if not self.checkpoint("last").is_file():
                if old is None or same:
                    return RunAction.OVERWRITE
                raise VirkitError(
                    f"{self.path} holds an unfinished run with a different config and no last.pt; use --overwrite"
                )
            if old is not None and not same:
                raise VirkitError(
                    f"cannot resume {self.path}: its config differs from the one given (hash {old} vs "
                    f"{cfg_hash}); rerun with the same options or use --overwrite"
                )
            return RunAction.RESUME
        what = "a finished run" if status is RunStatus.FINISHED else "an unfinished run"
        raise VirkitError(
            f"{self.path} already holds {what}; pass --resume to continue it, --overwrite to replace "
            "it, or choose another --out"
        )

    # ---- writers (callers hold the lock) ---------------------------------------------------------
    def clear(self) -> None:
        """Remove the run's files (``--overwrite``)."""
        for f in RUN_FILES:
            (self.path / f).unlink(missing_ok=True)

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, record: dict) -> None:
        atomic_write_json(self.config_file, record)

    def write_history(self, records: list[dict]) -> None:
        append_jsonl(self.history_file, records)

    def save_checkpoint(self, state: dict, which: str = "last") -> None:
        atomic_torch_save(state, self.checkpoint(which))

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary_file, summary)

    # ---- the lock --------------------------------------------------------------------------------
    def lock(self, command: str = "train", wait: bool = False, note: Callable[[str], None] | None = None) -> WriterLock:
        """Take the run's writer lock (``.lock`` in the directory) and return it held: a
        :class:`WriterLock`, released by ``release()`` or by leaving its ``with`` block. Creates the
        directory (and its parents) if needed and leaves it there, also when the lock cannot be had
        (:class:`RunLockedError`, or :class:`VirkitError` where the file system has no ``flock``);
        :meth:`claim` is the variant that removes a directory it created. ``wait=True`` blocks until
        the holder releases it; ``note`` (default: a line on stderr) is told when the lock file of
        an earlier holder is taken over."""
        note = note if note is not None else (lambda s: print(f"virkit: {s}", file=sys.stderr))
        if self.path.exists() and not self.path.is_dir():
            raise VirkitError(f"output path {self.path} exists and is not a directory; choose another --out")
        lk = WriterLock(self.lock_file, f"run directory {self.path}", command)
        return lk.acquire(wait=wait, note=note)

    def claim(self, command: str = "train", note: Callable[[str], None] | None = None) -> RunClaim:
        """A context manager around the writer lock: :meth:`RunClaim.acquire` takes it (creating the
        directory), leaving the block releases it and removes a directory that the claim created and
        that holds nothing (a refused or failed request leaves nothing behind)."""
        return RunClaim(self, command, note)


class RunClaim:
    """See :meth:`RunDir.claim`."""

    def __init__(self, run: RunDir, command: str, note: Callable[[str], None] | None):
        self.run, self.command, self.note = run, command, note
        self.lock: WriterLock | None = None
        self.created = False

    def acquire(self) -> RunClaim:
        self.created = not self.run.path.exists()
        self.lock = self.run.lock(self.command, note=self.note)
        return self

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            if self.created:
                with contextlib.suppress(OSError):
                    self.run.path.rmdir()  # only succeeds when empty


def expand_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """``paths`` with every folder that is not a run directory (no ``config.json``) but holds run
    directories, such as a sweep's ``--out`` folder, replaced by those run directories (sorted by
    name). Anything else is kept as given, for the caller to judge."""
    out: list[Path] = []
    for p in map(Path, paths):
        runs = []
        if p.is_dir() and not RunDir(p).config_file.is_file():
            runs = sorted(c for c in p.iterdir() if c.is_dir() and RunDir(c).config_file.is_file())
        out.extend(runs or [p])
    return out


def eval_lock(path: str | os.PathLike, command: str = "evaluate") -> WriterLock:
    """The lock for writing an eval.json: its run directory's lock when it is a run's ``eval.json``,
    else ``.<name>.lock`` beside it."""
    p = Path(path)
    if p.name == "eval.json" and (p.parent / "config.json").is_file():
        return RunDir(p.parent).lock(command)
    lk = WriterLock(p.parent / f".{p.name}.lock", f"evaluation file {p}", command)
    return lk.acquire(note=lambda s: print(f"virkit: {s}", file=sys.stderr))


def eval_state_root(eval_path: str | os.PathLike) -> Path:
    """``.<eval file name>.state/`` beside an eval.json: one folder per attack in progress, each holding
    its finished batches (:class:`virkit.evaluation.document.AttackState`); it exists only while the evaluation
    is unfinished."""
    p = Path(eval_path)
    return p.parent / f".{p.name}.state"
