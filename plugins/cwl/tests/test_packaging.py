"""Toil is an extra of cratebridge-cwl: without it the cwltool engine works and the toil
engine says it is unavailable (exit 5) and what to install.

Each test runs cratebridge in a fresh interpreter in which ``import toil`` fails as it
does when Toil is not installed (``sys.modules["toil"] = None``: the import raises
``ModuleNotFoundError`` and ``importlib.util.find_spec`` finds nothing), whatever this
venv holds. tests/test_wheels.py checks the same with Toil really absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cratebridge_cwl.toil_engine import INSTALL_TOIL

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "fixtures" / "crates" / "demo-request.zip"

#: Makes this interpreter one without Toil.
WITHOUT_TOIL = "import sys\nsys.modules['toil'] = None\n"
CLI = "from cratebridge.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"


def python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=False)


def cli_without_toil(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return python(WITHOUT_TOIL + CLI, *args, cwd=cwd)


def config(folder: Path) -> Path:
    path = folder / "cratebridge.toml"
    path.write_text(f'[run]\nruns_dir = "{folder / "runs"}"\n')
    return path


def engines(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)["engines"]}


def test_without_toil_engines_lists_toil_unavailable_with_the_fix(tmp_path: Path) -> None:
    listed = engines(cli_without_toil("engines", "--json", "--config", str(config(tmp_path)),
                                      cwd=tmp_path))
    toil, cwltool = listed["toil"], listed["cwltool"]
    assert toil["available"] is False
    assert toil["language"] == "cwl"  # the plugin module loaded: only the engine is missing
    assert INSTALL_TOIL in toil["problem"]
    assert toil["problem"].startswith("engine toil: Toil is not installed")
    assert cwltool["available"] is True, cwltool["problem"]

    human = cli_without_toil("engines", "--config", str(config(tmp_path)), cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    toil_line = next(line for line in human.stdout.splitlines() if line.startswith("toil "))
    assert "NOT AVAILABLE" in toil_line and INSTALL_TOIL in toil_line


def test_without_toil_the_plugin_modules_and_registry_import_and_info_says_why(
        tmp_path: Path) -> None:
    code = WITHOUT_TOIL + """
import json
import cratebridge_cwl.cwltool_engine, cratebridge_cwl.runner, cratebridge_cwl.toil_engine
from cratebridge.engines.registry import Registry
from cratebridge.errors import EngineUnavailable
registry = Registry.from_entry_points()
registry.load("cwltool").info()
try:
    registry.load("toil").info()
except EngineUnavailable as err:
    print(json.dumps({"exit_code": err.exit_code, "message": str(err)}))
"""
    done = python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    assert said["exit_code"] == 5
    assert INSTALL_TOIL in said["message"]


def test_listing_engines_does_not_import_toil(tmp_path: Path) -> None:
    """Toil is looked up, never imported, to say whether it is there (even when it is)."""
    code = """
import json, sys
from cratebridge import api
rows = api.engines()
print(json.dumps({"imported": sorted(m for m in sys.modules if m.split(".")[0] == "toil"),
                  "toil": next(r for r in rows if r["name"] == "toil")}))
"""
    done = python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    assert said["imported"] == []
    assert said["toil"]["language"] == "cwl"


@pytest.mark.docker
def test_without_toil_cwltool_plans_and_toil_is_refused_with_exit_5(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    planned = cli_without_toil("plan", str(DEMO), "--json", "--config", cfg, cwd=tmp_path)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert json.loads(planned.stdout)["engine"] == "cwltool"

    for command in (["plan", str(DEMO)], ["run", str(DEMO), "--out", str(tmp_path / "r.zip")]):
        refused = cli_without_toil(*command, "--engine", "toil", "--json", "--config", cfg,
                                   cwd=tmp_path)
        assert refused.returncode == 5, refused.stdout + refused.stderr
        error = json.loads(refused.stdout)
        assert error["error"] == "EngineUnavailable"
        assert INSTALL_TOIL in error["message"]
    # refused before anything ran: no result crate, no run folder left behind
    assert not (tmp_path / "r.zip").exists()
    assert not any((tmp_path / "runs").glob("*"))
