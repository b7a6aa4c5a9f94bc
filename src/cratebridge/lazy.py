"""Packages whose public names are imported at first use (PEP 562).

Several processes import one module of a package and need none of the rest:
the engine's process in its room, the ``docker`` client a step calls, a run's
host before its engine ends. A package lists where each public name lives and
lets :func:`names_from` import that module when the name is first asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["names_from"]


def names_from(package: str, modules: Mapping[str, str],
               under: str | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name in ``modules`` is taken from
    the module named there (in ``package``, or in ``under`` for a module beside its
    siblings), imported when the name is first used."""
    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{under or package}.{module}"), name)

    return __getattr__
