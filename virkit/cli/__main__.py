"""``python -m virkit.cli ...`` (as ``virkit ...``)."""

import sys

from virkit.cli import main

sys.exit(main())
