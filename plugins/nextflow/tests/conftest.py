"""Fixtures for the Nextflow plugin's tests: which ``nextflow`` runs them, Docker, the validator.

Every end-to-end test runs twice: against the cratebridge STAND-IN
(``fixtures/nextflow-standin/nextflow``, not Nextflow) and against the real
``nextflow`` on PATH, which is skipped, saying why, when there is none.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"
STANDIN_DIR = REPO / "fixtures" / "nextflow-standin"
WORKFLOWS = REPO / "fixtures" / "workflows" / "nextflow"

Validator = Callable[[Path, str], tuple[bool, str]]


def _real_nextflow() -> str | None:
    """A ``nextflow`` on PATH that is not the stand-in."""
    found = shutil.which("nextflow")
    if found and Path(found).resolve().parent != STANDIN_DIR.resolve():
        return found
    return None


@pytest.fixture(params=["standin", "real"])
def nextflow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Which nextflow the test uses; puts the stand-in first on PATH for ``standin``."""
    if request.param == "real":
        real = _real_nextflow()
        if real is None:
            pytest.skip("no real Nextflow on PATH (it cannot be installed on this machine); "
                        "these checks ran against the stand-in only")
        yield real
        return
    monkeypatch.setenv("PATH", f"{STANDIN_DIR}:{shutil.os.environ['PATH']}")  # type: ignore[attr-defined]
    yield str(STANDIN_DIR / "nextflow")


@pytest.fixture(scope="session")
def docker_up() -> bool:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True,
                                        check=False).returncode != 0:
        pytest.skip("no Docker daemon: run scripts/start-dockerd")
    for image in ("cratebridge/python:3.11",):
        if subprocess.run([docker, "image", "inspect", image], capture_output=True,
                          check=False).returncode != 0:
            pytest.skip(f"image {image} is missing: run fixtures/images/python/build")
    return True


@pytest.fixture(scope="session")
def validator() -> Validator:
    """``rocrate-validator`` run offline on a folder: ``(ok, output)``."""
    executable = Path(sys.executable).parent / "rocrate-validator"
    if not executable.exists():
        pytest.skip("rocrate-validator is not installed (pip install -e '.[test]')")
    if not SHARED.is_dir():
        pytest.skip(f"shared folder not found at {SHARED}")
    seeded = subprocess.run([sys.executable, str(SHARED / "tools" / "seed-validator-cache")],
                            capture_output=True, text=True, check=False)
    if seeded.returncode != 0:
        pytest.fail(f"seed-validator-cache failed:\n{seeded.stdout}{seeded.stderr}")

    def run(crate: Path, profile: str) -> tuple[bool, str]:
        done = subprocess.run(
            [str(executable), "-y", "validate", "--offline", "--no-paging", "--verbose",
             "--output-line-width", "200", "-p", profile, "--extra-profiles-path",
             str(SHARED / "validator-profiles"), "--requirement-severity", "REQUIRED",
             str(crate)], capture_output=True, text=True, check=False)
        return done.returncode == 0, done.stdout + done.stderr

    return run
