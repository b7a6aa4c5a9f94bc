"""Helpers for the Snakemake engine tests: request crates for small ad-hoc Snakefiles, Slurm."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cratebridge.config import Config, load_config
from cratebridge.testing.cluster import slurm_down
from cratebridge.testing.crates import Input, RequestSpec, write_request_dir

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "workflows" / "snakemake"

# (snakefile text, inputs, config toml) -> request crate folder
MakeRequest = Callable[..., Path]


@pytest.fixture
def make_request(tmp_path: Path) -> MakeRequest:
    """Write a Five Safes request folder around an ad-hoc Snakefile.

    The workflow crate borrows the scalar-inputs fixture's metadata (main
    entity ``Snakefile``, language Snakemake); ``silent=True`` drops the
    language so that intake must recognise the Snakefile by its name.
    """
    counter = iter(range(1000))

    def make(snakefile: str, inputs: tuple[Input, ...] = (), silent: bool = False) -> Path:
        n = next(counter)
        workflow = tmp_path / f"workflow-{n}"
        workflow.mkdir()
        shutil.copy(FIXTURES / "scalar-inputs" / "ro-crate-metadata.json", workflow)
        shutil.copy(FIXTURES / "scalar-inputs" / "README.md", workflow)
        (workflow / "test").mkdir()
        shutil.copy(FIXTURES / "scalar-inputs" / "test" / "config.yaml", workflow / "test")
        (workflow / "Snakefile").write_text(snakefile)
        spec = RequestSpec(workflow_dir=workflow, main_workflow="Snakefile", inputs=inputs)
        crate = write_request_dir(spec, tmp_path / f"request-{n}")
        if silent:
            path = crate / "ro-crate-metadata.json"
            metadata = json.loads(path.read_text())
            for entity in metadata["@graph"]:
                entity.pop("programmingLanguage", None)
            path.write_text(json.dumps(metadata, indent=2))
        return crate

    return make


@pytest.fixture
def config(tmp_path: Path) -> Callable[[str], Config]:
    """An operator config with runs under tmp_path and the given extra TOML."""

    def make(extra: str = "") -> Config:
        path = tmp_path / "cratebridge.toml"
        path.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\ntimeout = "10m"\n'
                        f'keep_runs = true\n\n{extra}')
        return load_config(path)

    return make


@pytest.fixture(scope="session")
def docker_available() -> bool:
    """Skip unless a Docker daemon answers ``docker info``."""
    docker = shutil.which("docker")
    try:
        ok = docker is not None and subprocess.run(
            [docker, "info"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("no Docker daemon: run `make setup` (starts dockerd via scripts/start-dockerd)")
    return True


@pytest.fixture(scope="session")
def slurm() -> bool:
    """Skip unless the local Slurm cluster answers (scripts/setup-slurm, scripts/start-slurm)."""
    reason = slurm_down()
    if reason:
        pytest.skip(reason)
    return True
