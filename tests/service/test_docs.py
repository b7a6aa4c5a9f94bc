"""docs/service.md: its ``sh`` examples run with bash against a live server; its TOML loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cratebridge.config_schema import check

from .conftest import DEMO, REPO, TOKENS, Server

PAGE = REPO / "docs" / "service.md"

pytestmark = pytest.mark.docker


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", PAGE.read_text(), re.S | re.M)


def test_the_toml_example_fits_the_schema() -> None:
    (block,) = blocks("toml")
    check(tomllib.loads(block), "docs/service.md")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_curl_examples_run_against_a_live_server(make_server: Any, tmp_path: Path) -> None:
    server: Server = make_server().start()
    script = "set -euo pipefail\n" + "\n".join(blocks("sh"))
    assert "curl" in script and "result-crate" in script
    env = {**os.environ, "WES": server.url, "TOKEN": TOKENS["alice"][0], "CRATE": str(DEMO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log()[-3000:]}"
    assert re.search(r"ended: COMPLETE", done.stdout), done.stdout
    assert "result: valid" in done.stdout, done.stdout
    assert (tmp_path / "result.zip").is_file()
    runs = server.get("/runs", "ops").json()["runs"]
    assert len(runs) == 2 and runs[0]["state"] in ("CANCELING", "CANCELED")
