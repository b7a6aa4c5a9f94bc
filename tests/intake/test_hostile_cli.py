"""The hostile corpus through the real CLI: exit 3 in seconds, a message, nothing left anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import corpus

CASES = corpus.CASES


def snapshot(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_refuses_hostile_crate(case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "work"
    work.mkdir()
    built = case.build(work)
    runs = tmp_path / "runs"
    lines = [f'[run]\nruns_dir = "{runs}"\n']
    limits = built.limits
    lines.append(f"[intake]\nmax_total_bytes = {limits.max_total_bytes}\n"
                 f"max_files = {limits.max_files}\nmax_ratio = {limits.max_ratio}\n"
                 f"max_metadata_bytes = {limits.max_metadata_bytes}\n")
    if built.mirror:
        lines.append(f'[workflows]\nmirror = "{built.mirror}"\n')
    if built.dataset_map:
        lines.append("[datasets]\n" + "".join(f'"{k}" = "{v}"\n'
                                             for k, v in built.dataset_map.items()))
    config = tmp_path / "c.toml"
    config.write_text("".join(lines))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = snapshot(tmp_path)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cratebridge.cli", "run", str(built.source),
                           "--out", str(tmp_path / "out.zip"), "--json", "--config", str(config)],
                          capture_output=True, text=True, check=False, cwd=cwd)
    elapsed = time.monotonic() - started
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert elapsed < 20
    doc = json.loads(done.stdout)
    assert case.mentions in (doc["message"] + " " + (doc["where"] or ""))
    assert "Traceback" not in done.stderr
    after = snapshot(tmp_path)
    new = {p for p in after - before if p != runs}
    assert not new, f"left behind: {sorted(new)}"
    assert not runs.exists() or not any(runs.iterdir())
