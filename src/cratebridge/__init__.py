"""cratebridge: run workflows from Five Safes RO-Crates inside a Trusted Research Environment.

The public API: :func:`run`, :func:`plan`, :func:`validate`, :func:`verify`, :func:`engines`.
They return typed outcomes and raise :mod:`cratebridge.errors` exceptions.
Nothing heavy is imported until one of them is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cratebridge.lazy import names_from

__all__ = ["__version__", "cleanup", "engines", "plan", "run", "validate", "verify"]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cratebridge.api import cleanup, engines, plan, run, validate, verify

__getattr__ = names_from(__name__, dict.fromkeys(
    ["run", "plan", "validate", "verify", "engines", "cleanup"], "api"))
