"""The conformance kit against the real cwltool, real Docker and the real validator."""

from __future__ import annotations

from pathlib import Path

import pytest

from cratebridge.testing.kit import EngineConformance

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.docker
class TestCwltoolConformance(EngineConformance):
    __test__ = True
    engine = "cwltool"
    workflows = REPO / "fixtures" / "workflows" / "cwl"
    main_file = "workflow.cwl"
