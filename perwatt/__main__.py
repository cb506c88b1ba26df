"""``python -m perwatt``: the same command as ``perwatt``."""

import sys

from perwatt.cli import main

sys.exit(main())
