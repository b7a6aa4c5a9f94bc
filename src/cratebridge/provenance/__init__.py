"""Provenance: a RunRecord becomes the result crate, then a folder or ZIP (BagIt when asked)."""

from cratebridge.provenance.builder import build_result_crate
from cratebridge.provenance.package import write_result

__all__ = ["build_result_crate", "write_result"]
