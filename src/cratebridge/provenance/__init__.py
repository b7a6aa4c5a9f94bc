"""Provenance: a RunRecord becomes the result crate, then a folder or ZIP (BagIt when asked).

Nothing is imported here eagerly: a run needs the crate's writers only once its
engine has ended (:func:`cratebridge.pipeline.run` loads them while it runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cratebridge.lazy import names_from

__all__ = ["build_result_crate", "write_result"]

if TYPE_CHECKING:
    from cratebridge.provenance.builder import build_result_crate
    from cratebridge.provenance.package import write_result

_MODULES = {"build_result_crate": "builder", "write_result": "package"}

__getattr__ = names_from(__name__, _MODULES)
