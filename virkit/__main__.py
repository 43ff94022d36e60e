import sys

from virkit.cli import main

sys.exit(main())
