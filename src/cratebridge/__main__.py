"""``python -m cratebridge``: the same command line as ``cratebridge``."""

from cratebridge.cli import console

console()
