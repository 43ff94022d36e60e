"""``python -m virkit.notebooks run|list ...`` and the ``--exec-one SPEC`` subprocess of ``--jobs N``."""

from __future__ import annotations

import sys

from virkit.notebooks.cli import main

if __name__ == "__main__":
    sys.exit(main())
