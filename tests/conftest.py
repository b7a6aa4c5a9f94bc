"""Shared fixtures: where the repo and shared/ are, Docker, and the external validator."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cratebridge.testing.cluster import slurm_down
from cratebridge.testing.validator import ExternalValidator

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"

# (ok, output) for one validator run.
Validator = Callable[..., tuple[bool, str]]


def _docker_up() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        done = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def slurm() -> bool:
    """Skip unless the local Slurm cluster answers (``make slurm`` starts it)."""
    reason = slurm_down()
    if reason:
        pytest.skip(reason)
    return True


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo>/../shared``: reference crates, contexts, validator profiles. Skips if absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared folder not found at {SHARED_DIR} (it must sit beside the repo)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def docker_available() -> bool:
    """Skip the test unless a Docker daemon answers ``docker info``."""
    if not _docker_up():
        pytest.skip("no Docker daemon: run `make setup` (starts dockerd via scripts/start-dockerd)")
    return True


@pytest.fixture(scope="session")
def validator(shared_dir: Path) -> Validator:
    """A function running ``rocrate-validator`` offline on a crate folder.

    Call it as ``validator(folder, profile="five-safes-crate", severity="REQUIRED")``;
    it returns ``(ok, output)``. The shared Five Safes profile is always added
    as an extra profile; the validator's cache is seeded once so ``--offline``
    works (see :class:`cratebridge.testing.validator.ExternalValidator`).
    """
    found = ExternalValidator.find()
    if found is None:
        pytest.skip("rocrate-validator is not installed (pip install -e '.[test]')")

    def run(
        crate_dir: Path, profile: str = "five-safes-crate", severity: str = "REQUIRED"
    ) -> tuple[bool, str]:
        result = found.validate(crate_dir, profile, severity)
        return result.ok, result.output

    return run
