"""Directory inputs and outputs on Toil: the same outputs as bare ``toil-cwl-runner``, and a
step whose user cannot read what Toil staged fails instead of succeeding on nothing.

Real Toil, real Docker. The fixture ``fixtures/workflows/cwl/directories`` lists a folder
(with checksums), copies it with one more file into a new folder, and lists the copy: a
Directory input staged for two steps, and a Directory output staged for the next.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cratebridge.engines.process import EngineExit
from cratebridge_cwl import toil_driver
from cratebridge_cwl.toil_driver import open_to_step_user
from cratebridge_cwl.toil_engine import UNREADABLE, _error

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "fixtures" / "workflows" / "cwl" / "directories"
IMAGE = "cratebridge/busybox:1"
VENV_BIN = Path(sys.executable).parent
STEP_USER = (4242, 4242)  # a uid that owns nothing here, as a step user that is not the engine's


def _docker() -> str:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "image", "inspect", IMAGE],
                                        capture_output=True, check=False).returncode != 0:
        pytest.skip(f"needs Docker with the local image {IMAGE} (make setup builds it)")
    return docker


def _env() -> dict[str, str]:
    # Toil starts its workers as `_toil_worker`, from PATH
    env = {k: v for k, v in os.environ.items() if k != "CRATEBRIDGE_CONFIG"}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _described(value: dict[str, Any]) -> object:
    """An output as content: a file's name and checksum, a folder's tree of them."""
    path = Path(value["path"])
    if value["class"] == "File":
        return {"basename": value["basename"], "sha1": _sha1(path)}
    return {"basename": value["basename"],
            "tree": {p.relative_to(path).as_posix(): _sha1(p) if p.is_file() else "dir"
                     for p in sorted(path.rglob("*"))}}


def _outputs(output: dict[str, Any]) -> dict[str, object]:
    return {name: _described(value) for name, value in sorted(output.items())}


@pytest.fixture(scope="module")
def bare_toil(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The fixture's outputs from bare toil-cwl-runner, with the same job."""
    _docker()
    where = tmp_path_factory.mktemp("bare-toil")
    done = subprocess.run(
        [str(VENV_BIN / "toil-cwl-runner"), "--no-prepull", "--jobStore",
         f"file:{where / 'jobstore'}", "--workDir", str(where), "--outdir", str(where / "out"),
         str(FIXTURE / "workflow.cwl"), str(FIXTURE / "test" / "job.yml")],
        capture_output=True, text=True, cwd=where, env=_env(), check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return _outputs(json.loads(done.stdout))


@pytest.mark.docker
@pytest.mark.parametrize("engine", ["toil", "cwltool"])
def test_directory_outputs_match_bare_toil(engine: str, bare_toil: dict[str, object],
                                           tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cratebridge_cwl.runner", "--quiet", "--engine", engine,
         "--outdir", str(tmp_path), "workflow.cwl", "test/job.yml"],
        capture_output=True, text=True, cwd=FIXTURE, env=_env(), check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = _outputs(json.loads(done.stdout))
    assert ours == bare_toil

    listing = ours["listing"]
    assert isinstance(listing, dict)
    lines = Path(json.loads(done.stdout)["listing"]["path"]).read_text().splitlines()
    assert [line.split()[-1] for line in lines] == ["./a.txt", "./b.txt", "./sub/c.txt"]
    copied = ours["copied"]
    assert isinstance(copied, dict)
    assert sorted(copied["tree"]) == ["LISTING.txt", "a.txt", "b.txt", "sub", "sub/c.txt"]


# -- the step user reads what Toil staged -------------------------------------------------


def test_the_engine_looks_for_what_the_driver_logs() -> None:
    assert toil_driver.UNREADABLE == UNREADABLE


def _ls_as_step_user(docker: str, folder: Path) -> subprocess.CompletedProcess[str]:
    uid, gid = STEP_USER
    return subprocess.run(
        [docker, "run", "--rm", "--network=none", f"--user={uid}:{gid}",
         "--mount", f"type=bind,source={folder},target=/in,readonly", IMAGE,
         "sh", "-c", "cd /in && find . -type f | sort && cat sub/c.txt"],
        capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.docker
def test_a_folder_toil_staged_is_opened_to_the_step_user(tmp_path: Path) -> None:
    from toil.lib.io import mkdtemp  # what Toil stages a Directory in (mode 0711)

    docker = _docker()
    work = tmp_path / "work"
    work.mkdir()
    staged = Path(mkdtemp(dir=work))
    (staged / "sub").mkdir(mode=0o700)
    (staged / "a.txt").write_text("alpha\n")
    (staged / "sub" / "c.txt").write_text("gamma\n")
    (staged / "sub" / "c.txt").chmod(0o600)
    assert stat.S_IMODE(staged.stat().st_mode) == 0o711

    before = _ls_as_step_user(docker, staged)
    assert before.returncode != 0 or "a.txt" not in before.stdout  # others may not list it

    assert open_to_step_user([str(staged)], STEP_USER, work) == []
    after = _ls_as_step_user(docker, staged)
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines() == ["./a.txt", "./sub/c.txt", "gamma"]


def test_what_the_engine_did_not_make_in_its_work_folder_is_reported_not_changed(
        tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir(mode=0o700)
    (outside / "data.txt").write_text("x\n")
    (outside / "data.txt").chmod(0o600)
    staged = work / "staged"
    staged.mkdir()
    foreign = staged / "foreign.txt"
    foreign.write_text("not the engine's\n")
    foreign.chmod(0o600)
    os.chown(foreign, 4343, 4343)  # the tests run as root: a file someone else owns
    secret = tmp_path / "secret.txt"
    secret.write_text("s\n")
    secret.chmod(0o600)
    (staged / "link.txt").symlink_to(secret)

    unreadable = open_to_step_user([str(outside), str(staged)], STEP_USER, work)

    assert unreadable == [str(outside), str(outside / "data.txt"), str(foreign)]
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
    assert stat.S_IMODE(foreign.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600  # a link inside is never followed


def _driver(tmp_path: Path, open_within: Path) -> subprocess.CompletedProcess[str]:
    """The Toil driver as the engine starts it, outside any room, with a foreign step user."""
    uid, gid = STEP_USER
    work = tmp_path / "work"
    work.mkdir()
    return subprocess.run(
        [sys.executable, "-m", "cratebridge_cwl.toil_driver",
         "--events", str(work / "events.jsonl"), "--keep", str(work / "kept"),
         "--step-user", f"{uid}:{gid}", "--open-within", str(open_within), "--",
         "--no-prepull", "--jobStore", f"file:{work / 'jobstore'}", "--workDir", str(work),
         "--outdir", str(tmp_path / "out"), "--retryCount", "0",
         str(FIXTURE / "workflow.cwl"), str(FIXTURE / "test" / "job.yml")],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), check=False, timeout=900)


@pytest.mark.docker
def test_a_step_that_cannot_read_its_input_folder_fails_before_its_container(
        tmp_path: Path) -> None:
    _docker()
    # Nothing may be opened (the work folder is not DIR): Toil's 0711 folder stays
    # unlistable for the step user, so the first step must fail, not run on nothing.
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    done = _driver(tmp_path, nowhere)

    assert done.returncode != 0
    assert UNREADABLE in done.stderr, done.stderr[-3000:]
    events = [json.loads(line) for line in
              (tmp_path / "work" / "events.jsonl").read_text().splitlines()]
    finished = [e for e in events if e["event"] == "finished"]
    assert [(e["name"], e["status"]) for e in finished] == [("list", "permanentFail")]
    assert not (tmp_path / "out" / "listing.txt").exists()

    stderr = tmp_path / "toil.stderr.log"
    stderr.write_text(done.stderr)
    error = _error(EngineExit(exit_code=done.returncode), stderr, steps=())
    assert UNREADABLE in error and "uid 4242" in error


@pytest.mark.docker
def test_a_foreign_step_user_reads_the_staged_folders_once_opened(tmp_path: Path) -> None:
    _docker()
    done = _driver(tmp_path, tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    assert UNREADABLE not in done.stderr
    lines = (tmp_path / "out" / "listing.txt").read_text().splitlines()
    assert [line.split()[-1] for line in lines] == ["./a.txt", "./b.txt", "./sub/c.txt"]


# -- a tool's default file, read from Toil's job store ------------------------------------


@pytest.mark.docker
def test_a_default_file_toil_read_from_its_job_store_is_the_workflows_own(
        tmp_path: Path) -> None:
    if subprocess.run(["docker", "image", "inspect", "cratebridge/python:3.11"],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("needs the local image cratebridge/python:3.11 (make setup builds it)")
    tools = REPO / "fixtures" / "workflows" / "cwl-runner"
    done = subprocess.run(
        [sys.executable, "-m", "cratebridge_cwl.runner", "--quiet", "--engine", "toil",
         "--outdir", str(tmp_path), "inputs.cwl", "inputs-job.yml"],
        capture_output=True, text=True, cwd=tools, env=_env(), check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the job store is gone once the run succeeded; the step's input is the crate's file
    graph = json.loads((tmp_path / ".cratebridge-result" / "ro-crate-metadata.json")
                       .read_text())["@graph"]
    steps = [e for e in graph if e.get("@type") == "CreateAction"
             and "workflow/report.sh" in json.dumps(e.get("object"))]
    assert steps, "the tool's default file is not the step's input"
    assert not any("jobstore" in json.dumps(e) for e in graph)
