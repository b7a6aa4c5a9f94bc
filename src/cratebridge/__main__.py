"""``python -m cratebridge``: the same command line as ``cratebridge``."""

import sys

from cratebridge.cli import main

sys.exit(main())
