"""``python -m virkit.sweep GRID.yaml ...`` (as ``virkit sweep``), and ``--worker SPEC.json``: one
trial in its own process (started by :func:`virkit.sweep.backends.run_trial_process`)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"] and len(sys.argv) == 3:
        from virkit.sweep.trial import worker

        sys.exit(worker(sys.argv[2]))
    from virkit.cli import main

    sys.exit(main(["sweep", *sys.argv[1:]]))
