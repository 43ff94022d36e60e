"""``python -m virkit.cli ...`` (as ``virkit ...``)."""

from __future__ import annotations

import sys

from virkit.cli import main

sys.exit(main())
