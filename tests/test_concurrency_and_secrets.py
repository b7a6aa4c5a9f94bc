"""Eight runs at once stay apart; secrets and the caller's environment do not leave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cratebridge.testing import FileInput, RequestSpec, ValueInput, ZipLayout, write_request_zip

REPO = Path(__file__).resolve().parent.parent
THREE_STEP = REPO / "fixtures" / "workflows" / "cwl" / "three-step"

pytestmark = pytest.mark.docker


def request(tmp_path: Path, marker: str) -> Path:
    data = tmp_path / f"{marker}.txt"
    data.write_text(f"{marker} one\n{marker} two\n{marker} three\n")
    spec = RequestSpec(workflow_dir=THREE_STEP, main_workflow="workflow.cwl",
                       inputs=(FileInput("data", data), ValueInput("repeat", 1)),
                       name=f"Concurrent request {marker}")
    return write_request_zip(spec, tmp_path / f"{marker}.zip", ZipLayout.FOLDER)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cratebridge.cli", *args], capture_output=True,
                          text=True, check=False, env=env)


def test_eight_runs_at_once_each_with_its_own_folder_and_outputs(
        tmp_path: Path, docker_available: bool) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n[limits]\ncpus = 0.25\n')
    markers = [f"marker{i}" for i in range(8)]
    crates = {m: request(tmp_path, m) for m in markers}

    def go(marker: str) -> subprocess.CompletedProcess[str]:
        return cli("run", str(crates[marker]), "--out", str(tmp_path / f"{marker}-result"),
                   "--json", "--config", str(config))

    with ThreadPoolExecutor(8) as pool:
        done = dict(zip(markers, pool.map(go, markers), strict=True))
    run_dirs = set()
    for marker, result in done.items():
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        run_dirs.add(doc["run_dir"])
        report = next((tmp_path / f"{marker}-result").rglob("outputs/report.txt")).read_text()
        assert f"{marker} one" in report
        others = [m for m in markers if m != marker]
        everything = "".join(p.read_text(errors="replace")
                             for p in (tmp_path / f"{marker}-result").rglob("*") if p.is_file())
        assert not any(f"{o} one" in everything for o in others)
    assert len(run_dirs) == 8


def test_secret_values_never_appear_in_plans_results_or_logs(tmp_path: Path,
                                                             docker_available: bool) -> None:
    secret = "TOPSECRET-c0ffee-42"
    config = tmp_path / "c.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n'
                      '[env]\nallow = ["LANG", "TRE_DB_PASSWORD"]\n'
                      '[secrets]\ndb = { env = "TRE_DB_PASSWORD" }\n')
    env = {**os.environ, "TRE_DB_PASSWORD": secret, "UNLISTED_VARIABLE": "leak-me-not"}
    crate = request(tmp_path, "secretive")
    plan = cli("plan", str(crate), "--json", "--config", str(config), env=env)
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert secret not in plan.stdout and doc["env"]["TRE_DB_PASSWORD"] == "<secret:db>"
    assert "UNLISTED_VARIABLE" not in doc["env"]
    out = tmp_path / "result"
    run = cli("run", str(crate), "--out", str(out), "--json", "--config", str(config), env=env)
    assert run.returncode == 0, run.stderr
    assert secret not in run.stdout + run.stderr
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert secret not in text and "leak-me-not" not in text, path
