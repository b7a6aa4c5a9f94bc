"""The conformance kit through the Nextflow engine.

Runs against the cratebridge STAND-IN (``fixtures/nextflow-standin/nextflow``,
not Nextflow) and again against a real ``nextflow`` on PATH, when there is one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cratebridge.testing.kit import EngineConformance

REPO = Path(__file__).resolve().parents[3]
STANDIN = REPO / "fixtures" / "nextflow-standin" / "nextflow"
REAL = shutil.which("nextflow")
if REAL and Path(REAL).resolve() == STANDIN.resolve():
    REAL = None


@pytest.mark.docker
class TestNextflowStandInConformance(EngineConformance):
    __test__ = True
    engine = "nextflow"
    workflows = REPO / "fixtures" / "workflows" / "nextflow"
    main_file = "main.nf"
    config_toml = f'[engines.nextflow]\nprogram = "{STANDIN}"\n'


@pytest.mark.docker
@pytest.mark.skipif(REAL is None, reason="no real Nextflow on PATH (it cannot be installed "
                                         "here); the stand-in class above ran these checks")
class TestRealNextflowConformance(EngineConformance):
    __test__ = True
    engine = "nextflow"
    workflows = REPO / "fixtures" / "workflows" / "nextflow"
    main_file = "main.nf"
    config_toml = f'[engines.nextflow]\nprogram = "{REAL}"\n'
