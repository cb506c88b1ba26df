import sys

from perwatt.cli import main

sys.exit(main())
