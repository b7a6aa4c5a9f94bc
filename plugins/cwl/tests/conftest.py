"""What the cwl-runner tests share: where the fixtures are, the runner, the images they need."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TOOLS = REPO / "fixtures" / "workflows" / "cwl-runner"


def need_image(image: str) -> None:
    """Skip the test, saying why, unless Docker holds ``image`` locally."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "image", "inspect", image],
                                        capture_output=True, check=False).returncode != 0:
        pytest.skip(f"needs Docker with the local image {image} (make setup builds it)")


def run_runner(*args: str | Path, cwd: Path = TOOLS) -> subprocess.CompletedProcess[str]:
    """``cratebridge-cwl-runner --quiet ARGS`` in ``cwd``, with the default configuration."""
    env = {k: v for k, v in os.environ.items() if k != "CRATEBRIDGE_CONFIG"}
    return subprocess.run([sys.executable, "-m", "cratebridge_cwl.runner", "--quiet",
                           *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          check=False, timeout=600, env=env)
