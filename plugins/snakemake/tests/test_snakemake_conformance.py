"""The conformance kit against real Snakemake, real Docker (via the shim), the real validator."""

from __future__ import annotations

from pathlib import Path

import pytest

from cratebridge.testing.kit import EngineConformance

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.docker
class TestSnakemakeConformance(EngineConformance):
    __test__ = True
    engine = "snakemake"
    workflows = REPO / "fixtures" / "workflows" / "snakemake"
    main_file = "Snakefile"
