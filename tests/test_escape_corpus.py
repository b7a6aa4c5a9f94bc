"""The escape corpus: hostile workflows against the two walls, through the real CLI.

Every test runs ``cratebridge run`` and/or ``cratebridge plan`` as a subprocess on
a request crate whose workflow code tries to leave the engine's room (read host
files, write markers on the host, list other runs), to get past the run's Docker
broker, or to make the executor's own host-side code copy host files for it.
Each attack records what it saw inside the run folder, so a test can tell a
refused attempt from one that never ran.

The host holds secrets the workflow knows the paths of: a file in the test's
``host`` folder (under /tmp, which the room replaces with the run's own tmp), a
fixture file outside /tmp (``fixtures/escape/host-secret.txt``), a file of
another run, ``/etc/shadow``, ``/etc/passwd`` and a variable in cratebridge's own
environment. After every command none of them may appear in its output, its
result crate or its kept run folder, and no marker may exist outside the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cratebridge.containers.confine import python_runtime
from cratebridge.testing.crates import (
    FileInput,
    Input,
    RequestSpec,
    ValueInput,
    write_request_zip,
)

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
CRATEBRIDGE = Path(sys.executable).parent / "cratebridge"
SNAKEMAKE_FIXTURE = REPO / "fixtures" / "workflows" / "snakemake" / "scalar-inputs"
CWL_FIXTURE = REPO / "fixtures" / "workflows" / "cwl" / "three-step"
NEXTFLOW_FIXTURE = REPO / "fixtures" / "workflows" / "nextflow" / "three-step"
STANDIN = REPO / "fixtures" / "nextflow-standin"
FIXTURE_SECRET = REPO / "fixtures" / "escape" / "host-secret.txt"
BUSYBOX = "cratebridge/busybox:1"
PYTHON_IMAGE = "cratebridge/python:3.11"
SECRET_ENV = "CRATEBRIDGE_ESCAPE_EXECUTOR_SECRET"
KEEP = '[run]\nkeep_runs = true\ntimeout = "5m"\n'


# -- the host, its secrets and the CLI ---------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """What lies outside the run folder: secrets, where markers would land, the runs folder."""

    root: Path
    folder: Path  # the secret and, world-writable, where a marker would land
    secret: Path
    tmp_marker: Path  # /tmp/cratebridge-escape-<uuid> on the host
    runs: Path
    other_run: Path  # an earlier run of someone else, in the same runs folder
    other_secret: Path
    config: Path
    env: dict[str, str]
    needles: dict[str, bytes]  # name -> text that must never leave the host

    @property
    def attack_paths(self) -> dict[str, Any]:
        """The paths a workflow's attack code is given (it knows them, not their content)."""
        return {
            "secrets": {"tmp secret": str(self.secret), "fixture secret": str(FIXTURE_SECRET),
                        "shadow": "/etc/shadow", "root bashrc": "/root/.bashrc",
                        "other run": str(self.other_secret)},
            "markers": {"next to the secret": str(self.folder / "pwned"),
                        "host tmp": str(self.tmp_marker),
                        "next to the fixture": str(FIXTURE_SECRET.parent / "pwned")},
            "runs": str(self.runs),
            "host_dir": str(self.folder),
            "image": BUSYBOX,
        }


def make_host(root: Path, runs: Path | None = None) -> Host:
    folder = root / "host"
    folder.mkdir()
    folder.chmod(0o1777)  # so that a container that reached it as uid 1000 could leave a marker
    token = uuid.uuid4().hex
    secret = folder / "secret.txt"
    secret.write_text(f"HOST-SECRET-{token}\n")
    runs = runs or root / "runs"
    other_run = runs / "20200101T000000Z-0ther0ne"
    (other_run / "outputs").mkdir(parents=True, exist_ok=True)
    other_run.chmod(0o700)
    other_secret = other_run / "outputs" / "result.txt"
    if not other_secret.exists():
        other_secret.write_text(f"OTHER-RUN-SECRET-{uuid.uuid4().hex}\n")
    config = root / "keep.toml"
    config.write_text(KEEP)
    env_secret = f"EXECUTOR-ENV-SECRET-{token}"
    env = {k: v for k, v in os.environ.items() if k != "CRATEBRIDGE_CONFIG"}
    env.update({"CRATEBRIDGE_RUNS_DIR": str(runs), SECRET_ENV: env_secret})
    needles = {"the host secret": secret.read_bytes().strip(),
               "the fixture secret": FIXTURE_SECRET.read_bytes().splitlines()[0],
               "the other run's file": other_secret.read_bytes().strip(),
               "cratebridge's environment": env_secret.encode(),
               "/etc/passwd": Path("/etc/passwd").read_bytes()}
    if os.access("/etc/shadow", os.R_OK):
        needles["/etc/shadow"] = Path("/etc/shadow").read_bytes()
    return Host(root, folder, secret, Path(f"/tmp/cratebridge-escape-{token}"), runs, other_run,
                other_secret, config, env, needles)


@pytest.fixture(scope="session")
def room_ready(docker_available: bool) -> bool:
    """Docker and bubblewrap (every engine runs in a bwrap room), and the step images."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed: apt-get install bubblewrap")
    for image in (BUSYBOX, PYTHON_IMAGE):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                          check=False).returncode != 0:
            pytest.skip(f"image {image} is missing: run `make images`")
    return True


@pytest.fixture
def host(tmp_path: Path, room_ready: bool) -> Iterator[Host]:
    made = make_host(tmp_path)
    yield made
    made.tmp_marker.unlink(missing_ok=True)  # only there after an escape; keep /tmp clean


@dataclass
class Outcome:
    """One CLI command: exit code, output, its JSON document and where things went."""

    command: str
    code: int
    stdout: str
    stderr: str
    seconds: float
    result: Path | None = None
    doc: dict[str, Any] | None = field(default=None)
    run_dir: Path | None = None

    @property
    def message(self) -> str:
        return str((self.doc or {}).get("message", ""))

    def __str__(self) -> str:
        return (f"cratebridge {self.command} exited {self.code} after {self.seconds:.1f}s\n"
                f"stdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}")


def cratebridge(host: Host, command: str, crate: Path, *extra: str) -> Outcome:
    """``cratebridge run CRATE --out ZIP --json`` or ``cratebridge plan CRATE --json``."""
    args = [str(CRATEBRIDGE), command, str(crate), "--json", "--config", str(host.config),
            *extra]
    result = None
    if command == "run":
        result = host.root / f"result-{uuid.uuid4().hex[:8]}.zip"
        args += ["--out", str(result)]
    before = set(host.runs.iterdir()) if host.runs.is_dir() else set()
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, env=host.env, timeout=600,
                          check=False)
    outcome = Outcome(command, done.returncode, done.stdout, done.stderr,
                      time.monotonic() - started, result)
    try:
        outcome.doc = json.loads(done.stdout)
    except json.JSONDecodeError:
        outcome.doc = None
    if outcome.doc and outcome.doc.get("run_dir"):
        outcome.run_dir = Path(outcome.doc["run_dir"])
    elif command == "run" and host.runs.is_dir():
        new = sorted(set(host.runs.iterdir()) - before)
        outcome.run_dir = new[-1] if new else None
    return outcome


def assert_contained(host: Host, outcome: Outcome) -> None:
    """No marker outside the run folder; no host secret in any output, result or run file."""
    assert sorted(p.name for p in host.folder.iterdir()) == ["secret.txt"], \
        f"a marker was left next to the host secret\n{outcome}"
    assert not host.tmp_marker.exists(), f"a marker was left in the host's /tmp\n{outcome}"
    assert sorted(p.name for p in FIXTURE_SECRET.parent.iterdir()) == [FIXTURE_SECRET.name], \
        f"a marker was left next to the fixture secret\n{outcome}"
    assert sorted(p.name for p in host.other_run.rglob("*")) == ["outputs", "result.txt"], \
        f"the other run's folder was changed\n{outcome}"
    places: list[tuple[str, bytes]] = [("stdout", outcome.stdout.encode()),
                                       ("stderr", outcome.stderr.encode())]
    if outcome.result is not None and outcome.result.is_file():
        with zipfile.ZipFile(outcome.result) as archive:
            places += [(f"result crate {name}", archive.read(name))
                       for name in archive.namelist() if not name.endswith("/")]
    if outcome.run_dir is not None and outcome.run_dir.is_dir():
        places += [(f"run folder {p.relative_to(outcome.run_dir)}", p.read_bytes())
                   for p in outcome.run_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    for name, needle in host.needles.items():
        leaked = [where for where, data in places if needle in data]
        assert not leaked, f"{name} leaked into {leaked[:5]}\n{outcome}"


def assert_exit(outcome: Outcome, *codes: int) -> None:
    assert outcome.code in codes, str(outcome)
    assert outcome.doc is not None, f"--json printed no JSON document\n{outcome}"


def assert_result_written(outcome: Outcome) -> None:
    """A workflow that ran yields a result crate, failed or not (DESIGN: nothing is lost)."""
    assert outcome.result is not None and outcome.result.is_file(), \
        f"no result crate was written\n{outcome}"


# -- request crates ------------------------------------------------------------------------------


def request(host: Host, name: str, files: dict[str, str], *, language: str,
            inputs: tuple[Input, ...] = ()) -> Path:
    """A Five Safes request zip around a workflow folder holding ``files``.

    The folder borrows a fixture workflow's ``ro-crate-metadata.json`` (main file and
    language), as plugins/snakemake/tests/conftest.py does.
    """
    folder = host.root / f"workflow-{name}"
    folder.mkdir()
    if language == "snakemake":
        shutil.copy(SNAKEMAKE_FIXTURE / "ro-crate-metadata.json", folder)
        main = "Snakefile"
    elif language == "nextflow":
        shutil.copy(NEXTFLOW_FIXTURE / "ro-crate-metadata.json", folder)
        main = "main.nf"
    else:
        shutil.copy(CWL_FIXTURE / "ro-crate-metadata.json", folder)
        main = "workflow.cwl"
    for relative, text in files.items():
        (folder / relative).write_text(text)
    spec = RequestSpec(workflow_dir=folder, main_workflow=main, inputs=inputs,
                       name=f"escape corpus: {name}")
    return write_request_zip(spec, host.root / f"request-{name}.zip")


def snakefile(host: Host, body: str, **constants: Any) -> str:
    """A Snakefile: the attack constants, the escape helper, then ``body``."""
    values = {**host.attack_paths, **constants}
    return f"T = {values!r}\n{ESCAPE_PY}\n{body}"


def cwl(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1)


ESCAPE_PY = '''
import json as _json, os as _os, sys as _sys

SEEN = []


def escape(place):
    """Read the host's secrets, leave markers on the host, look for other runs."""
    found = {"place": place, "uid": _os.getuid()}
    for name, path in T["secrets"].items():
        try:
            with open(path) as handle:
                found["read " + name] = handle.read()
        except OSError as exc:
            found["read " + name] = "denied " + type(exc).__name__
    for name, path in T["markers"].items():
        try:
            with open(path, "a") as handle:
                handle.write("escaped from " + place + "\\n")
            found["write " + name] = "written"
        except OSError as exc:
            found["write " + name] = "denied " + type(exc).__name__
    try:
        found["runs"] = sorted(_os.listdir(T["runs"]))
    except OSError as exc:
        found["runs"] = "denied " + type(exc).__name__
    line = _json.dumps(found)
    SEEN.append(found)
    print("escape attempt: " + line, file=_sys.stderr)
    with open("escape-evidence.jsonl", "a") as handle:
        handle.write(line + "\\n")
    return line
'''

ESCAPE_JS = r"""
function escape(place) {
  var found = {place: place};
  var p;
  try {
    p = globalThis.constructor.constructor('return process')();
  } catch (e) {
    found.vm = 'held: ' + e;
    return JSON.stringify(found);
  }
  found.escaped_vm = typeof p.pid === 'number';
  var req = function (name) {
    return p.mainModule ? p.mainModule.require(name) : p.getBuiltinModule(name);
  };
  var fs = req('fs');
  found.uid = p.getuid();
  Object.keys(T.secrets).forEach(function (k) {
    try { found['read ' + k] = fs.readFileSync(T.secrets[k], 'utf8'); }
    catch (e) { found['read ' + k] = 'denied ' + e.code; }
  });
  Object.keys(T.markers).forEach(function (k) {
    try {
      fs.appendFileSync(T.markers[k], 'escaped from ' + place + '\n');
      found['write ' + k] = 'written';
    } catch (e) { found['write ' + k] = 'denied ' + e.code; }
  });
  try { found.runs = fs.readdirSync(T.runs).sort(); }
  catch (e) { found.runs = 'denied ' + e.code; }
  try {
    found.shell = String(req('child_process').execSync(
      'id -u; cat ' + T.secrets['tmp secret'] + ' 2>&1; cat /etc/shadow 2>&1; true'));
  } catch (e) { found.shell = 'denied ' + e; }
  return JSON.stringify(found);
}
"""


def js_lib(host: Host, *code: str, **constants: Any) -> list[str]:
    values = {**host.attack_paths, **constants}
    return [f"var T = {json.dumps(values)};", *code]


def assert_denied(found: dict[str, Any], run_dir: Path | None) -> None:
    """One attempt's own record: every host read and host write failed inside the room."""
    where = found.get("place", "?")
    assert found["uid"] == 1000, found
    for key, value in found.items():
        if key.startswith("read "):
            assert str(value).startswith("denied"), f"{where}: {key} succeeded"
        if key.startswith("write ") and key != "write host tmp":
            assert str(value).startswith("denied"), f"{where}: {key} succeeded"
    runs = found["runs"]
    assert str(runs).startswith("denied") or runs == ([run_dir.name] if run_dir else []), \
        f"{where}: the runs folder showed {runs}"


# -- 1. workflow-language code that reads and writes the host -----------------------------------

SNAKE_PLACES = '''
escape("top level")

onstart:
    escape("onstart")

onsuccess:
    escape("onsuccess")

onerror:
    escape("onerror")


def _inputs(wildcards):
    escape("input function")
    if config.get("evidence_in_error"):
        raise ValueError("EVIDENCE>" + _json.dumps(SEEN) + "<EVIDENCE")
    return []


rule all:
    input: "leak.txt"

rule leak:
    input: _inputs
    output: "leak.txt"
    params: leak=lambda wildcards: escape("params lambda")
    container: "docker://cratebridge/busybox:1"
    shell: "echo {params.leak:q} > {output}"
'''

SNAKE_RUN_BLOCK = '''
escape("before a run: block")


def reach(place):
    """From a job: the network, the Docker sockets and the host's name."""
    import socket
    found = {"place": place, "container": _os.path.exists("/.dockerenv"),
             "interfaces": [name for _, name in socket.if_nameindex()],
             "hostname": open("/etc/hostname").read().strip(),
             "sockets": [p for p in ("/var/run/docker.sock", "/run/docker.sock",
                                     "/run/cratebridge/docker.sock") if _os.path.exists(p)]}
    for name, address in (("tcp 1.1.1.1:53", ("1.1.1.1", 53)),
                          ("tcp 8.8.8.8:443", ("8.8.8.8", 443))):
        try:
            socket.create_connection(address, timeout=3).close()
            found[name] = "connected"
        except OSError as exc:
            found[name] = "denied " + type(exc).__name__
    with open("reach-evidence.jsonl", "a") as handle:
        handle.write(_json.dumps(found) + "\\n")


rule all:
    input: "ran.txt", "scripted.txt"

rule python_in_snakemake:
    output: "ran.txt"
    run:
        escape("inside a run: block")
        reach("inside a run: block")
        with open(output[0], "w") as handle:
            handle.write("python in Snakemake's job command, in a container")

rule script_in_snakemake:
    output: "scripted.txt"
    script: "attack.py"
'''

SNAKE_SCRIPT = '''
escape("inside a script:")
reach("inside a script:")
with open(snakemake.output[0], "w") as handle:
    handle.write("a script: in a container")
'''


def _evidence(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "work" / "snakemake" / "escape-evidence.jsonl"
    assert path.is_file(), "the attack code left no record: did it run?"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("command", ["plan", "run"])
def test_snakemake_python_at_parse_and_dag_time_stays_in_the_room(
        host: Host, command: str) -> None:
    """Snakemake: Python at the top level, in an input function, a params lambda, onstart,
    onsuccess and onerror reads host secrets, writes markers and lists the runs folder.

    Expected: ``plan`` exits 0 and ``run`` exits 0 (the rule still succeeds); every attempt
    is denied inside the room. For ``plan`` a second crate makes the input function raise
    with what it saw: exit 3 (Snakemake could not read the workflow), the record in the
    message.
    """
    crate = request(host, "snake-places", {"Snakefile": snakefile(host, SNAKE_PLACES)},
                    language="snakemake")
    outcome = cratebridge(host, command, crate)
    assert_exit(outcome, 0)
    assert_contained(host, outcome)
    if command == "run":
        assert_result_written(outcome)
        assert outcome.run_dir is not None
        seen = _evidence(outcome.run_dir)
        assert {f["place"] for f in seen} >= {"top level", "input function", "params lambda",
                                              "onstart", "onsuccess"}
        for found in seen:
            assert_denied(found, outcome.run_dir)
        # the room's /tmp is the run's own tmp folder: the "host" /tmp marker landed there
        assert (outcome.run_dir / "tmp" / host.tmp_marker.name).is_file()
        return
    told = request(host, "snake-places-evidence",
                   {"Snakefile": snakefile(host, SNAKE_PLACES)}, language="snakemake",
                   inputs=(ValueInput("evidence_in_error", True),))
    shown = cratebridge(host, "plan", told)
    assert_exit(shown, 3)
    assert_contained(host, shown)
    match = re.search(r"EVIDENCE>(.*)<EVIDENCE", shown.message, re.DOTALL)
    assert match, str(shown)
    seen = json.loads(match.group(1))
    assert {f["place"] for f in seen} >= {"top level", "input function"}
    plan_dir = Path(str((shown.doc or {}).get("where", "/x/x/x/x"))).parents[2]
    for found in seen:
        assert_denied(found, plan_dir)


def _reach(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "work" / "snakemake" / "reach-evidence.jsonl"
    assert path.is_file(), "the jobs left no record: did they run?"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("command", ["plan", "run"])
def test_snakemake_run_and_script_jobs_stay_in_a_container(host: Host, command: str) -> None:
    """Snakemake: a ``run:`` block and a ``script:`` read host secrets, write markers, list
    the runs folder, open TCP connections and look for Docker sockets; the Snakefile's top
    level does the same at parse time (in the room, then again in each job's container).

    Expected: exit 0 for ``plan`` and ``run``; each job ran in a container (the image with
    Snakemake) with only a loopback interface, no connection, no Docker socket, not the
    host's name, as uid 1000, and every host read and write denied.
    """
    reach_py = SNAKE_RUN_BLOCK[SNAKE_RUN_BLOCK.index("def reach"):
                               SNAKE_RUN_BLOCK.index("rule all")]
    attack = f"T = {host.attack_paths!r}\n{ESCAPE_PY}\n{reach_py}\n{SNAKE_SCRIPT}"
    crate = request(host, "snake-run-block",
                    {"Snakefile": snakefile(host, SNAKE_RUN_BLOCK), "attack.py": attack},
                    language="snakemake")
    outcome = cratebridge(host, command, crate)
    assert_exit(outcome, 0)
    assert_contained(host, outcome)
    if command == "plan":
        return
    assert_result_written(outcome)
    assert outcome.run_dir is not None
    seen = _evidence(outcome.run_dir)
    assert {f["place"] for f in seen} >= {"before a run: block", "inside a run: block",
                                          "inside a script:"}
    for found in seen:
        assert_denied(found, outcome.run_dir)
    reached = _reach(outcome.run_dir)
    assert sorted(f["place"] for f in reached) == ["inside a run: block", "inside a script:"]
    host_name = Path("/etc/hostname").read_text().strip()
    for found in reached:
        assert found["container"] is True, found
        assert found["interfaces"] == ["lo"], found
        assert found["sockets"] == [], found
        assert found["hostname"] != host_name, found
        for address in ("tcp 1.1.1.1:53", "tcp 8.8.8.8:443"):
            assert str(found[address]).startswith("denied"), found


def cwl_escape_files(host: Host) -> dict[str, str]:
    lib = {"class": "InlineJavascriptRequirement", "expressionLib": js_lib(host, ESCAPE_JS)}
    expression = {
        "cwlVersion": "v1.2", "class": "ExpressionTool", "requirements": [lib],
        "inputs": [], "outputs": [{"id": "report", "type": "string"}],
        "expression": "${ return {report: escape('ExpressionTool')}; }",
    }
    tool = {
        "cwlVersion": "v1.2", "class": "CommandLineTool",
        "requirements": [lib, {"class": "DockerRequirement", "dockerPull": BUSYBOX}],
        "baseCommand": ["echo"],
        "arguments": [{"valueFrom": "${ return escape('CommandLineTool arguments'); }"}],
        "inputs": [], "outputs": [{"id": "report", "type": "stdout"}], "stdout": "report.txt",
    }
    workflow = {
        "cwlVersion": "v1.2", "class": "Workflow", "inputs": [],
        "outputs": [{"id": "from_expression", "type": "string",
                     "outputSource": "expression/report"},
                    {"id": "from_tool", "type": "File", "outputSource": "tool/report"}],
        "steps": [{"id": "expression", "run": "expression.cwl", "in": [], "out": ["report"]},
                  {"id": "tool", "run": "tool.cwl", "in": [], "out": ["report"]}],
    }
    return {"workflow.cwl": cwl(workflow), "expression.cwl": cwl(expression),
            "tool.cwl": cwl(tool)}


def _output(outcome: Outcome, parameter: str) -> dict[str, Any]:
    outputs = (outcome.doc or {}).get("outputs", [])
    found = [o for o in outputs if o.get("parameter") == parameter]
    assert found, f"no output {parameter}\n{outcome}"
    return dict(found[0])


@pytest.mark.parametrize(("engine", "command"), [("cwltool", "plan"), ("cwltool", "run"),
                                                 ("toil", "plan"), ("toil", "run")])
def test_cwl_javascript_that_leaves_nodes_vm_stays_in_the_room(
        host: Host, engine: str, command: str) -> None:
    """CWL: an ExpressionTool and a CommandLineTool's ``arguments`` escape Node's vm through
    ``globalThis.constructor.constructor('return process')()``, then read host secrets,
    write markers and run a shell with ``child_process``.

    Expected: ``plan`` exits 0 (no JavaScript runs at plan time); ``run`` exits 0: the vm
    escape works (the record says so), and everything it tries is denied by the room.
    """
    crate = request(host, f"cwl-js-{engine}", cwl_escape_files(host), language="cwl")
    outcome = cratebridge(host, command, crate, "--engine", engine)
    assert_exit(outcome, 0)
    assert_contained(host, outcome)
    if command == "plan":
        return
    assert_result_written(outcome)
    found = json.loads(_output(outcome, "from_expression")["value"])
    assert found["escaped_vm"] is True, found  # the attack reached Node's process object
    assert_denied(found, outcome.run_dir)
    assert found["shell"].splitlines()[0] == "1000"
    tool_report = Path(_output(outcome, "from_tool")["path"]).read_text()
    from_tool = json.loads(tool_report)
    assert from_tool["place"] == "CommandLineTool arguments" and from_tool["escaped_vm"]
    assert_denied(from_tool, outcome.run_dir)


def nextflow_host(host: Host) -> Host:
    """The same host, with the Nextflow stand-in first on PATH (plugins/nextflow/tests)."""
    env = {**host.env, "PATH": f"{STANDIN}{os.pathsep}{host.env.get('PATH', '')}"}
    return Host(**{**host.__dict__, "env": env})


NF_ESCAPE = """\
params.outdir = 'results'

process ESCAPE {{
    container '{image}'
    publishDir params.outdir, mode: 'copy'

    output:
    path 'report.txt'

    script:
    \"\"\"
    echo "uid \\$(id -u)" > report.txt
{reads}
{writes}
    ls {runs} >> report.txt 2>&1 || echo "runs denied" >> report.txt
    echo "interfaces \\$(ls /sys/class/net)" >> report.txt
    \"\"\"
}}

workflow {{
    ESCAPE()
}}
"""


@pytest.mark.parametrize("command", ["plan", "run"])
def test_nextflow_process_script_cannot_reach_the_host(host: Host, command: str) -> None:
    """Nextflow (stand-in): a process script, in its container, reads host secrets and
    writes markers next to them.

    Expected: ``plan`` exits 0, ``run`` exits 0; the container sees none of the host.
    """
    paths = host.attack_paths
    reads = "\n".join(f"    cat {p} >> report.txt 2>&1 || echo 'read denied' >> report.txt"
                      for p in paths["secrets"].values())
    writes = "\n".join(f"    touch {p} 2>> report.txt || echo 'write denied' >> report.txt"
                       for p in paths["markers"].values())
    main = NF_ESCAPE.format(image=PYTHON_IMAGE, reads=reads, writes=writes, runs=host.runs)
    nf = nextflow_host(host)
    crate = request(nf, "nf-escape", {"main.nf": main}, language="nextflow")
    outcome = cratebridge(nf, command, crate)
    assert_exit(outcome, 0)
    assert_contained(nf, outcome)
    if command == "run":
        assert_result_written(outcome)
        report = Path(_output(outcome, "report.txt")["path"]).read_text()
        assert report.startswith("uid 1000\n") and "interfaces lo" in report, report
        # all but /root/.bashrc, which may be the image's own
        assert report.count("read denied") >= len(paths["secrets"]) - 1, report
        # all but the one in /tmp, the container's own tmpfs
        assert report.count("write denied") >= len(paths["markers"]) - 1, report


NF_HOST_INPUT = """\
params.data = {data}
params.outdir = 'results'

process SHOW {{
    container '{image}'
    publishDir params.outdir, mode: 'copy'

    input:
    path data

    output:
    path 'copy.txt'

    script:
    \"\"\"
    cat ${{data}} > copy.txt
    \"\"\"
}}

workflow {{
    data = Channel.fromPath({source})
    SHOW(data)
}}
"""


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("where", ["params in main.nf", "params in nextflow.config",
                                   "literal path of another run"])
def test_nextflow_host_paths_are_refused_at_plan_time(host: Host, where: str,
                                                      command: str) -> None:
    """Nextflow (stand-in): a workflow whose params or channels name host files (outside
    the crate): the host secret, the fixture secret, another run's output.

    Expected: exit 3 for ``plan`` and ``run`` (DESIGN: every file reference outside the
    crate is refused at plan time), the message naming the path, no content shown.
    """
    files: dict[str, str]
    if where == "params in main.nf":
        target = host.secret
        files = {"main.nf": NF_HOST_INPUT.format(data=repr(str(target)), image=PYTHON_IMAGE,
                                                 source="params.data")}
    elif where == "params in nextflow.config":
        target = FIXTURE_SECRET
        files = {"main.nf": NF_HOST_INPUT.format(data="null", image=PYTHON_IMAGE,
                                                 source="params.data"),
                 "nextflow.config": f"params.data = {str(target)!r}\n"}
    else:
        target = host.other_secret
        files = {"main.nf": NF_HOST_INPUT.format(data="null", image=PYTHON_IMAGE,
                                                 source=repr(str(target)))}
    nf = nextflow_host(host)
    crate = request(nf, "nf-host-path", files, language="nextflow")
    outcome = cratebridge(nf, command, crate)
    assert_contained(nf, outcome)
    assert_exit(outcome, 3)
    assert str(target) in outcome.message, str(outcome)


# -- 2. workflow code that tries to get past the broker ------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One ``docker`` call made by workflow code; ``started``: the broker runs it, hardened."""

    name: str
    argv: tuple[str, ...]
    started: bool = False

    def expanded(self, host: Host) -> list[str]:
        return [a.replace("{NAME}", self.name).replace("{HOST}", str(host.folder))
                for a in self.argv]


W = ("-v", "{W}:/w")
PROBE = ("sh", "-c", "touch /w/started-{NAME}; (id -u; ls /sys/class/net; "
         "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status) > /w/probe-{NAME}; "
         "touch /m/pwned-{NAME} 2>/dev/null; true")
TO_HOST = ("sh", "-c", "touch /w/started-{NAME}; touch /host{HOST}/pwned-{NAME}")
ATTEMPTS = (
    Attempt("global-log-level", ("-l", "error", "run", "--rm", *W, BUSYBOX, *PROBE), True),
    Attempt("container-run", ("container", "run", "--rm", *W, BUSYBOX, *PROBE), True),
    Attempt("network-host", ("run", "--rm", "--network", "host", *W, BUSYBOX, *PROBE), True),
    Attempt("user-root", ("run", "--rm", "--user", "0:0", *W, BUSYBOX, *PROBE), True),
    Attempt("create", ("create", "--name", "cratebridge-escape-victim", *W, BUSYBOX, *PROBE)),
    Attempt("start", ("start", "cratebridge-escape-victim")),
    Attempt("exec", ("exec", "cratebridge-escape-victim", *PROBE)),
    Attempt("pull", ("pull", "busybox:latest")),
    Attempt("privileged", ("run", "--rm", "--privileged", *W, BUSYBOX, *PROBE)),
    Attempt("cap-add", ("run", "--rm", "--cap-add", "SYS_ADMIN", *W, BUSYBOX, *PROBE)),
    Attempt("security-opt", ("run", "--rm", "--security-opt", "seccomp=unconfined", *W,
                             BUSYBOX, *PROBE)),
    Attempt("pid-host", ("run", "--rm", "--pid", "host", *W, BUSYBOX, *PROBE)),
    Attempt("device", ("run", "--rm", "--device", "/dev/sda", *W, BUSYBOX, *PROBE)),
    Attempt("volumes-from", ("run", "--rm", "--volumes-from", "cratebridge-escape-victim",
                             *W, BUSYBOX, *PROBE)),
    Attempt("root-bind", ("run", "--rm", "-v", "/:/host", *W, BUSYBOX, *TO_HOST)),
    Attempt("root-mount", ("run", "--rm", "--mount", "type=bind,source=/,target=/host", *W,
                           BUSYBOX, *TO_HOST)),
    Attempt("host-folder", ("run", "--rm", "-v", "{HOST}:/m", *W, BUSYBOX, *PROBE)),
    Attempt("docker-socket", ("run", "--rm", "-v", "/var/run/docker.sock:/var/run/docker.sock",
                              *W, BUSYBOX, *PROBE)),
    Attempt("named-volume", ("run", "--rm", "-v", "cratebridge-escape:/m", *W, BUSYBOX,
                             *PROBE)),
    Attempt("host-option", ("-H", "unix:///var/run/docker.sock", "ps")),
    Attempt("context-option", ("--context", "default", "ps")),
)


def attempts_for(host: Host) -> list[dict[str, Any]]:
    return [{"name": a.name, "argv": a.expanded(host)} for a in ATTEMPTS]


def real_docker() -> str:
    return shutil.which("docker") or "/usr/bin/docker"


BYPASS_PY = '''
import socket as _socket, subprocess as _subprocess

W = _os.getcwd()
FOUND = {"cwd": W, "attempts": {}, "direct": {}}
for attempt in T["attempts"]:
    argv = [arg.replace("{W}", W) for arg in attempt["argv"]]
    try:
        done = _subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=60)
        FOUND["attempts"][attempt["name"]] = [done.returncode, done.stderr[-400:]]
    except _subprocess.TimeoutExpired:
        FOUND["attempts"][attempt["name"]] = ["timeout", ""]
for path in ("/var/run/docker.sock", "/run/docker.sock"):
    try:
        with _socket.socket(_socket.AF_UNIX) as sock:
            sock.connect(path)
        FOUND["direct"]["connect " + path] = "connected"
    except OSError as exc:
        FOUND["direct"]["connect " + path] = "denied " + type(exc).__name__
broker = "unix://" + _os.environ.get("CRATEBRIDGE_BROKER", "")
for name, argv in (("real client", [T["real_docker"], "ps"]),
                   ("real client at the broker", [T["real_docker"], "-H", broker, "ps"])):
    try:
        FOUND["direct"][name] = _subprocess.run(argv, capture_output=True,
                                                timeout=3).returncode
    except (OSError, _subprocess.TimeoutExpired) as exc:
        FOUND["direct"][name] = "denied " + type(exc).__name__
with open("bypass.json", "w") as handle:
    _json.dump(FOUND, handle)

rule all:
    input: "out.txt"

rule r:
    output: "out.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo ok > {output}"
'''

BYPASS_JS = r"""
function bypass() {
  var p = globalThis.constructor.constructor('return process')();
  var req = function (name) {
    return p.mainModule ? p.mainModule.require(name) : p.getBuiltinModule(name);
  };
  var cp = req('child_process');
  var W = p.cwd();
  var found = {cwd: W, attempts: {}, direct: {}};
  T.attempts.forEach(function (a) {
    var argv = a.argv.map(function (x) { return x.split('{W}').join(W); });
    var r = cp.spawnSync('docker', argv, {encoding: 'utf8', timeout: 60000});
    found.attempts[a.name] = [r.status === null ? 'timeout' : r.status,
                              String(r.stderr || '').slice(-400)];
  });
  ['/var/run/docker.sock', '/run/docker.sock'].forEach(function (s) {
    var r = cp.spawnSync('python3', ['-c', 'import socket, sys; ' +
      'socket.socket(socket.AF_UNIX).connect(sys.argv[1])', s],
      {encoding: 'utf8', timeout: 10000});
    found.direct['connect ' + s] = r.status === 0 ? 'connected' : 'denied';
  });
  var real = cp.spawnSync(T.real_docker, ['ps'], {timeout: 3000});
  found.direct['real client'] = real.status === null ? 'denied timeout' : real.status;
  var at = cp.spawnSync(T.real_docker, ['-H', 'unix://' + p.env.CRATEBRIDGE_BROKER, 'ps'],
                        {timeout: 3000});
  found.direct['real client at the broker'] = at.status === null ? 'denied timeout' : at.status;
  return JSON.stringify(found);
}
"""


def _ledger(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "broker" / "ledger.jsonl"
    assert path.is_file(), f"no ledger at {path}"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_bypass(host: Host, outcome: Outcome, found: dict[str, Any]) -> None:
    """Refused attempts are refused and in the ledger; those run are hardened; no door left."""
    assert outcome.run_dir is not None
    workdir = Path(found["cwd"])
    ledger = _ledger(outcome.run_dir)
    refused = [e["argv"] for e in ledger if "refused" in e]
    ran = [e["argv"] for e in ledger if "argv" in e and "refused" not in e]  # ended ones
    for attempt in ATTEMPTS:
        code, stderr = found["attempts"][attempt.name]
        sent = [a.replace("{W}", str(workdir)) for a in attempt.expanded(host)]
        if attempt.started:
            assert code == 0, (attempt.name, code, stderr)
            probe = (workdir / f"probe-{attempt.name}").read_text().split()
            assert probe[:2] == ["1000", "lo"], (attempt.name, probe)
            assert probe[3] == "0000000000000000" and probe[5] == "1", (attempt.name, probe)
            runs = [a for a in ran if any(f"started-{attempt.name}" in x for x in a)]
            assert runs, f"{attempt.name} ran but the ledger has no record of it"
            argv = runs[0]
            for flag in ("--network=none", "--user=1000:1000", "--cap-drop=ALL",
                         "--security-opt=no-new-privileges", "--read-only", "--pull=never"):
                assert flag in argv, (attempt.name, flag, argv)
            assert not {"--network=host", "--user=0:0", "--privileged"} & set(argv), argv
        else:
            assert code == 125 and "cratebridge-docker: refused" in stderr, \
                (attempt.name, code, stderr)
            assert sent in refused or ["docker", *sent] in refused, \
                f"{attempt.name}: no refusal of {sent} in the ledger"
            assert not (workdir / f"started-{attempt.name}").exists(), attempt.name
    for name, value in found["direct"].items():
        assert value not in (0, "connected"), f"{name}: {value}"


@pytest.mark.parametrize("command", ["plan", "run"])
def test_docker_bypass_attempts_from_a_snakefile(host: Host, command: str) -> None:
    """Snakemake: the Snakefile's top level calls ``docker`` with every bypass we know
    (global options, ``container run``, create/start/exec, pull, --privileged, host binds,
    the Docker socket, --network host, --user 0, -H, --context) and tries the real socket
    and the real client.

    Expected: ``plan`` exits 0 (there is no broker at plan time at all); ``run`` exits 0,
    each refusal is in the ledger, each container that ran ran hardened.
    """
    body = snakefile(host, BYPASS_PY, attempts=attempts_for(host), real_docker=real_docker())
    crate = request(host, "snake-bypass", {"Snakefile": body}, language="snakemake")
    outcome = cratebridge(host, command, crate)
    assert_exit(outcome, 0)
    assert_contained(host, outcome)
    if command == "run":
        assert_result_written(outcome)
        assert outcome.run_dir is not None
        found = json.loads((outcome.run_dir / "work" / "snakemake" / "bypass.json").read_text())
        check_bypass(host, outcome, found)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_docker_bypass_attempts_from_cwl_javascript(host: Host, command: str) -> None:
    """CWL (cwltool): an ExpressionTool leaves Node's vm and makes the same ``docker`` calls
    with ``child_process.spawnSync``.

    Expected: ``plan`` exits 0 (no JavaScript at plan time); ``run`` exits 0, each refusal
    is in the ledger, each container that ran ran hardened.
    """
    lib = js_lib(host, BYPASS_JS, attempts=attempts_for(host), real_docker=real_docker())
    tool = {"cwlVersion": "v1.2", "class": "ExpressionTool",
            "requirements": [{"class": "InlineJavascriptRequirement", "expressionLib": lib}],
            "inputs": [], "outputs": [{"id": "report", "type": "string"}],
            "expression": "${ return {report: bypass()}; }"}
    crate = request(host, "cwl-bypass", {"workflow.cwl": cwl(tool)}, language="cwl")
    outcome = cratebridge(host, command, crate, "--engine", "cwltool")
    assert_exit(outcome, 0)
    assert_contained(host, outcome)
    if command == "run":
        assert_result_written(outcome)
        check_bypass(host, outcome, json.loads(_output(outcome, "report")["value"]))


RACE_PY = '''
import ctypes as _ctypes, subprocess as _subprocess, threading as _threading, time as _time

W = _os.getcwd()
FLIP = _os.path.join(W, "flip")
OTHER = _os.path.join(W, "flip.other")
_os.makedirs(FLIP, exist_ok=True)
if not _os.path.lexists(OTHER):
    _os.symlink(T["host_dir"], OTHER)
_renameat2 = _ctypes.CDLL(None, use_errno=True).renameat2


def _flip(stop):
    """Swap, atomically and again and again, the folder the broker allows and a link to
    the host folder (renameat2 RENAME_EXCHANGE: the path never goes missing)."""
    while not stop.is_set():
        _renameat2(-100, FLIP.encode(), -100, OTHER.encode(), 2)
        _time.sleep(0.001)


TRIES = []
if _os.path.exists(_os.environ.get("CRATEBRIDGE_BROKER", "/nonexistent")):
    stop = _threading.Event()
    _threading.Thread(target=_flip, args=(stop,), daemon=True).start()
    for _ in range(T["tries"]):
        try:
            done = _subprocess.run(
                ["docker", "run", "--rm", "-v", FLIP + ":/m", "-v", W + ":/w", T["image"],
                 "sh", "-c", "cat /m/secret.txt > /w/race-leak.txt 2>/dev/null; "
                 "touch /m/pwned-by-race 2>/dev/null; true"],
                capture_output=True, text=True, timeout=20)
            TRIES.append([done.returncode, done.stderr[-200:]])
        except _subprocess.TimeoutExpired:
            TRIES.append("timeout")
        if _os.path.exists("race-leak.txt") and _os.path.getsize("race-leak.txt"):
            break
    stop.set()
    with open("race-tries.json", "w") as handle:
        _json.dump(TRIES, handle)

rule all:
    input: "race.txt"

rule race:
    output: "race.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "cat race-leak.txt > {output} 2>/dev/null || echo nothing > {output}"
'''


def test_bind_source_swapped_for_a_symlink_after_the_brokers_check(host: Host) -> None:
    """Snakemake, broker: the top level flips a folder in its work folder between a real
    folder (which the broker allows as a bind source) and a symlink to the host folder,
    while it asks for ``docker run -v work/flip:/m`` again and again; the container reads
    the host secret into the work folder, and the rule's output carries it out.

    Expected: ``run`` exits 0 (or 1), the secret reaches neither the work folder nor the
    result crate, and no marker appears in the host folder.
    """
    body = snakefile(host, RACE_PY, tries=8)
    crate = request(host, "snake-race", {"Snakefile": body}, language="snakemake")
    outcome = cratebridge(host, "run", crate)
    assert_exit(outcome, 0, 1)
    assert outcome.run_dir is not None
    tries = (outcome.run_dir / "work" / "snakemake" / "race-tries.json")
    assert tries.is_file(), f"the race never ran\n{outcome}"
    assert_contained(host, outcome)


# -- the executor's host-side bookkeeping, fed by the confined engine ----------------------------

EVENTS_PY = '''
import sys as _sys
EVENTS = (_sys.argv[_sys.argv.index("--cratebridge-events") + 1]
          if "--cratebridge-events" in _sys.argv
          else _os.path.join(_os.path.dirname(_os.getcwd()), "events.jsonl"))
'''

FORGED_TARGETS = EVENTS_PY + '''
with open(EVENTS, "a") as handle:
    handle.write(_json.dumps({"event": "workflow", "workdir": "/", "targets": [
        T["secrets"]["tmp secret"], T["secrets"]["fixture secret"], "/etc/shadow",
        "/proc/self/environ"]}) + "\\n")

rule all:
    input: "out.txt"

rule r:
    output: "out.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo ok > {output}"
'''

FORGED_STEP = EVENTS_PY + '''
S = T["secrets"]["tmp secret"]
with open(EVENTS, "a") as handle:
    handle.write(_json.dumps({"event": "started", "token": "forged", "name": "forged",
                              "rule": "forged", "image": "x", "inputs": [["in", S]],
                              "outputs": [["out", S]], "logs": [S, "/etc/shadow"],
                              "start": "2026-01-01T00:00:00+00:00"}) + "\\n")
    handle.write(_json.dumps({"event": "finished", "token": "forged", "status": "success",
                              "exit_code": 0, "start": "2026-01-01T00:00:00+00:00",
                              "end": "2026-01-01T00:00:01+00:00"}) + "\\n")

rule all:
    input: "out.txt"

rule r:
    output: "out.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo ok > {output}"
'''

SWAPPED_TARGET = '''
# At plan time a plain file (the plan's reference check passes); once the broker listens
# (the run), a symlink to a path that exists in the room and on the host alike.
RUNNING = _os.path.exists(_os.environ.get("CRATEBRIDGE_BROKER", "/nonexistent"))
for _name, _target in (("passwd.txt", "/etc/passwd"), ("environ.txt", "/proc/self/environ")):
    if _os.path.lexists(_name):
        _os.unlink(_name)
    if RUNNING:
        _os.symlink(_target, _name)
    else:
        with open(_name, "w") as handle:
            handle.write("harmless\\n")

rule all:
    input: "passwd.txt", "environ.txt"
'''

LINKS_IN_OUTPUT = '''
rule all:
    input: "made"

rule r:
    output: directory("made")
    container: "docker://cratebridge/busybox:1"
    shell:
        "mkdir -p {output}; ln -s /etc/shadow {output}/shadow; "
        "ln -s /etc/passwd {output}/passwd; ln -s %s {output}/secret"
'''

FORGED_CWL_JS = r"""
function forge() {
  var p = globalThis.constructor.constructor('return process')();
  var fs = p.mainModule ? p.mainModule.require('fs') : p.getBuiltinModule('fs');
  var events = p.cwd() + '/events.jsonl';
  var S = {'class': 'File', path: T.secrets['tmp secret'],
           location: 'file://' + T.secrets['tmp secret']};
  var when = '2026-01-01T00:00:00+00:00';
  fs.appendFileSync(events, JSON.stringify({event: 'started', token: 'forged', name: 'forged',
    step: 'forged', tool: 'forged', time: when}) + '\n');
  fs.appendFileSync(events, JSON.stringify({event: 'finished', token: 'forged', name: 'forged',
    status: 'success', start: when, end: when, inputs: {a: S}, outputs: {b: S},
    command: []}) + '\n');
  return events;
}
"""


def _bookkeeping_crate(host: Host, kind: str) -> tuple[Path, tuple[str, ...]]:
    if kind == "cwl forged step record":
        lib = js_lib(host, FORGED_CWL_JS)
        tool = {"cwlVersion": "v1.2", "class": "ExpressionTool",
                "requirements": [{"class": "InlineJavascriptRequirement",
                                  "expressionLib": lib}],
                "inputs": [], "outputs": [{"id": "report", "type": "string"}],
                "expression": "${ return {report: forge()}; }"}
        return request(host, "cwl-forged", {"workflow.cwl": cwl(tool)}, language="cwl"), \
            ("--engine", "cwltool")
    body = {"snakemake forged targets": FORGED_TARGETS,
            "snakemake forged step record": FORGED_STEP,
            "snakemake target swapped for a symlink after plan": SWAPPED_TARGET,
            "snakemake container-made symlinks in a directory output":
                LINKS_IN_OUTPUT % host.secret}[kind]
    return request(host, "snake-bookkeeping", {"Snakefile": snakefile(host, body)},
                   language="snakemake"), ()


@pytest.mark.parametrize("kind", [
    "snakemake forged targets",
    "snakemake target swapped for a symlink after plan",
    "snakemake container-made symlinks in a directory output",
    "snakemake forged step record",
    "cwl forged step record",
])
def test_host_side_bookkeeping_copies_nothing_from_the_host(host: Host, kind: str) -> None:
    """Snakemake and CWL: the engine's events file (written inside the room) and the
    workflow's outputs are read on the host side, as the executor, to collect outputs,
    step records and logs. Workflow code forges events naming host files, swaps a target
    for a symlink after the plan's check, or has its container leave symlinks to host
    files in a directory output.

    Expected: ``run`` exits 0 or 1 with a result crate (a workflow that ran), and no host
    file is copied into the run folder or the result crate.
    """
    crate, extra = _bookkeeping_crate(host, kind)
    outcome = cratebridge(host, "run", crate, *extra)
    assert_contained(host, outcome)
    assert_exit(outcome, 0, 1)
    assert_result_written(outcome)


NF_FIFO = """\
params.outdir = 'results'

process FIFO {{
    container '{image}'
    publishDir params.outdir, mode: 'copy'

    output:
    path 'made'

    script:
    \"\"\"
    mkdir made && echo hi > made/a.txt && mkfifo made/pipe
    \"\"\"
}}

workflow {{
    FIFO()
}}
"""


@pytest.mark.parametrize("engine", ["cwltool", "nextflow"])
def test_a_fifo_in_a_steps_output_ends_the_run_with_its_crate(host: Host, engine: str) -> None:
    """A step leaves a fifo among its outputs. Opened to be hashed or copied, a fifo
    waits for a writer forever: the executor's host side would hang, and with it the
    TRE agent. (Snakemake: test_snakemake_worktree.py.)

    Expected: ``run`` ends, exit 1, with a result crate (its logs); the fifo is in it
    nowhere.
    """
    if engine == "cwltool":
        tool = {"cwlVersion": "v1.2", "class": "CommandLineTool",
                "requirements": [{"class": "DockerRequirement", "dockerPull": BUSYBOX},
                                 {"class": "ShellCommandRequirement"}],
                "arguments": [{"valueFrom": "mkdir made && echo hi > made/a.txt && "
                                            "mkfifo made/pipe", "shellQuote": False}],
                "inputs": [], "outputs": [{"id": "made", "type": "Directory",
                                           "outputBinding": {"glob": "made"}}]}
        where = host
        crate = request(host, "cwl-fifo", {"workflow.cwl": cwl(tool)}, language="cwl")
    else:
        where = nextflow_host(host)
        crate = request(where, "nf-fifo", {"main.nf": NF_FIFO.format(image=PYTHON_IMAGE)},
                        language="nextflow")
    outcome = cratebridge(where, "run", crate, *(("--engine", engine) if engine == "cwltool"
                                                 else ()))
    assert_exit(outcome, 1)
    assert_result_written(outcome)
    assert_contained(where, outcome)
    assert outcome.doc is not None and "pipe: not a regular file" in outcome.doc["error"], \
        str(outcome)
    assert outcome.result is not None
    with zipfile.ZipFile(outcome.result) as zf:
        assert not [n for n in zf.namelist() if n.endswith("/pipe")], zf.namelist()


# -- 3. what the engine and a step see from inside -----------------------------------------------

PROBE_PY = '''
import socket as _socket
from pathlib import Path as _Path

_here = _Path.cwd()  # <run>/work/snakemake
_run = _here.parents[1]
_status = dict(line.split(":", 1) for line in open("/proc/self/status"))
REPORT = {
    "uid": _os.getuid(), "gid": _os.getgid(), "groups": _os.getgroups(),
    "status": {k: v.strip() for k, v in _status.items()
               if k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")},
    "mountinfo": open("/proc/self/mountinfo").read().splitlines(),
    "interfaces": [name for _, name in _socket.if_nameindex()],
    "etc": sorted(_os.listdir("/etc")),
    "passwd": open("/etc/passwd").read().splitlines(),
    "root": sorted(_os.listdir("/root")) if _os.path.isdir("/root") else None,
    "root bashrc": _os.path.exists("/root/.bashrc"),
    "run_dir": str(_run),
    "runs": sorted(_os.listdir(_run.parent)),
    "docker sockets": [p for p in ("/var/run/docker.sock", "/run/docker.sock")
                       if _os.path.exists(p)],
    "ledger": _os.path.exists(_run / "broker" / "ledger.jsonl"),
    "processes": sorted(int(p) for p in _os.listdir("/proc") if p.isdigit()),
}
if config.get("report_in_error"):
    raise RuntimeError("PROBE>" + _json.dumps(REPORT) + "<PROBE")
_Path("engine-probe.json").write_text(_json.dumps(REPORT))

rule all:
    input: "step-probe.txt"

rule step:
    output: "step-probe.txt"
    container: "docker://cratebridge/busybox:1"
    shell:
        "(echo uid=$(id -u) gid=$(id -g); "
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
        "echo interfaces=$(ls /sys/class/net)) > {output}"
'''


@dataclass(frozen=True)
class ProbeRun:
    """One kept Snakemake run (the probe), shared by the tests that need an earlier run."""

    host: Host
    outcome: Outcome
    run_dir: Path
    data: Path  # the run's input file, inside its folder; its text is a secret of its own
    data_text: bytes


def probe_crate(host: Host, name: str, *inputs: Input) -> Path:
    return request(host, name, {"Snakefile": snakefile(host, PROBE_PY)},
                   language="snakemake", inputs=inputs)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory, room_ready: bool) -> ProbeRun:
    host = make_host(tmp_path_factory.mktemp("probe"))
    token = uuid.uuid4().hex
    data = host.root / "private-data.txt"
    # not YAML, not a Snakefile: a reader that loaded it would quote it in its error
    data.write_text(f"FIRST-RUN-DATA-{token}\n  : [not yaml FIRST-RUN-DATA-{token}\n")
    crate = probe_crate(host, "probe", FileInput("data", data))
    outcome = cratebridge(host, "run", crate)
    assert_exit(outcome, 0)
    assert outcome.run_dir is not None
    inside = next(outcome.run_dir.joinpath("request").rglob(data.name))
    return ProbeRun(host, outcome, outcome.run_dir, inside, f"FIRST-RUN-DATA-{token}".encode())


def check_engine_probe(report: dict[str, Any], run_dir: Path) -> None:
    assert report["uid"] == 1000 and report["gid"] == 1000, report
    assert report["groups"] in ([], [1000]), report["groups"]
    status = report["status"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status)
    assert status["NoNewPrivs"] == "1"
    assert report["interfaces"] == ["lo"]
    assert not {"shadow", "gshadow", "sudoers", "ssh", "docker"} & set(report["etc"])
    host_lines = set(Path("/etc/passwd").read_text().splitlines())
    shared = set(report["passwd"]) & host_lines
    assert {line.split(":")[0] for line in shared} <= {"root", "nobody"}, shared
    assert {line.split(":")[0] for line in report["passwd"]} <= {"root", "engine", "nobody"}
    assert not report["root bashrc"]
    runtime = {p for p in python_runtime() if p.parts[1:2] == ("root",)}
    assert report["root"] in (None, sorted({p.parts[2] for p in runtime})), report["root"]
    # besides this run, only the folders leading to the runtime, when it lives there too
    # (a checkout under /tmp: the plan's scratch folder is in /tmp as well)
    leading = {p.parts[len(run_dir.parent.parts)] for p in python_runtime()
               if p.is_relative_to(run_dir.parent) and p != run_dir.parent}
    assert set(report["runs"]) - leading == {run_dir.name}, report["runs"]
    assert report["docker sockets"] == []
    assert report["ledger"] is False
    assert len(report["processes"]) < 10, report["processes"]  # its own PID namespace
    allowed = {"/", "/tmp", "/usr", "/etc", "/proc", "/dev", "/run/cratebridge",
               *map(str, python_runtime()), str(run_dir)}
    writable = {"/", "/tmp", "/proc", "/dev", str(run_dir / "work"), str(run_dir / "outputs"),
                str(run_dir / "logs")}
    for line in report["mountinfo"]:
        fields = line.split()
        point, options = fields[4], fields[5].split(",")
        assert any(point == a or point.startswith(a.rstrip("/") + "/") for a in allowed), line
        if "rw" in options:
            assert any(point == a or point.startswith(a + "/") for a in writable), line


def test_the_engine_room_seen_from_inside_at_run_time(probe_run: ProbeRun) -> None:
    """Snakemake, ``run``: the Snakefile's top level reports what the engine sees.

    Expected: exit 0; uid 1000, no capabilities, no new privileges, loopback only, a
    generated /etc with no host user, no /root/.bashrc, no Docker socket, no ledger, the
    runs folder holding this run only, and no host mount but the runtime and the run.
    """
    assert_contained(probe_run.host, probe_run.outcome)
    report = json.loads((probe_run.run_dir / "work" / "snakemake" / "engine-probe.json")
                        .read_text())
    check_engine_probe(report, probe_run.run_dir)


def test_a_step_container_seen_from_inside(probe_run: ProbeRun) -> None:
    """Snakemake, ``run``: the rule's container reports its user, capabilities, network.

    Expected: exit 0; uid 1000, CapEff and CapBnd 0, NoNewPrivs 1, loopback only.
    """
    text = (probe_run.run_dir / "outputs" / "step-probe.txt").read_text().split()
    assert text[:2] == ["uid=1000", "gid=1000"], text
    assert text[2:8] == ["CapEff:", "0000000000000000", "CapBnd:", "0000000000000000",
                         "NoNewPrivs:", "1"], text
    assert text[8:] == ["interfaces=lo"], text


def test_the_engine_room_seen_from_inside_at_plan_time(host: Host) -> None:
    """Snakemake, ``plan``: the same report, raised from the Snakefile so that it shows.

    Expected: exit 3 (Snakemake could not read the workflow); the report shows the same
    room, its "runs folder" holding the plan's scratch folder only.
    """
    crate = probe_crate(host, "probe-plan", ValueInput("report_in_error", True))
    outcome = cratebridge(host, "plan", crate)
    assert_exit(outcome, 3)
    assert_contained(host, outcome)
    match = re.search(r"PROBE>(.*)<PROBE", outcome.message, re.DOTALL)
    assert match, str(outcome)
    report = json.loads(match.group(1))
    check_engine_probe(report, Path(report["run_dir"]))


# -- 4. references to another run's folder and to host files ------------------------------------


def _cwl_reference(kind: str, target: Path) -> dict[str, str]:
    if kind == "default File location (file URI)":
        workflow = {"cwlVersion": "v1.2", "class": "Workflow", "outputs": [], "steps": [],
                    "inputs": [{"id": "a", "type": "File",
                                "default": {"class": "File", "location": target.as_uri()}}]}
    elif kind == "default File path":
        workflow = {"cwlVersion": "v1.2", "class": "Workflow", "outputs": [], "steps": [],
                    "inputs": [{"id": "a", "type": "File",
                                "default": {"class": "File", "path": str(target)}}]}
    else:
        workflow = {"cwlVersion": "v1.2", "class": "Workflow", "inputs": [], "outputs": [],
                    "steps": [{"id": "s", "run": str(target), "in": [], "out": []}]}
    return {"workflow.cwl": cwl(workflow)}


REFERENCES = [
    ("cwl", "default File location (file URI)", "other run"),
    ("cwl", "step run: absolute path", "other run"),
    ("cwl", "default File path", "host secret"),
    ("snakemake", "include: absolute path", "other run"),
    ("snakemake", "rule input: absolute path", "other run"),
    ("snakemake", "rule input: absolute path", "host file in the room"),
]


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize(("language", "kind", "what"), REFERENCES)
def test_references_to_other_runs_and_host_files_are_refused(
        probe_run: ProbeRun, tmp_path: Path, language: str, kind: str, what: str,
        command: str) -> None:
    """CWL and Snakemake: a crate names, by absolute path, a file in an earlier run's
    folder (kept, in the same runs folder) or a host file.

    Expected: exit 3 for ``plan`` and ``run`` (crate refused at plan time), the message
    naming the reference, no content of the file shown anywhere.
    """
    host = make_host(tmp_path, probe_run.host.runs)
    host.needles["the earlier run's data"] = probe_run.data_text
    target = {"other run": probe_run.data, "host secret": host.secret,
              "host file in the room": Path("/etc/hostname")}[what]
    if language == "cwl":
        crate = request(host, "cwl-reference", _cwl_reference(kind, target), language="cwl")
    else:
        body = (f"include: {str(target)!r}\n" if kind.startswith("include") else
                f"rule all:\n    input: 'out.txt'\n\nrule r:\n    input: {str(target)!r}\n"
                f"    output: 'out.txt'\n    container: 'docker://{BUSYBOX}'\n"
                "    shell: 'cp {input} {output}'\n")
        crate = request(host, "snake-reference", {"Snakefile": snakefile(host, body)},
                        language="snakemake")
    outcome = cratebridge(host, command, crate)
    assert_contained(host, outcome)
    assert_exit(outcome, 3)
    assert str(target) in outcome.message, str(outcome)


# -- 5. configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_root_step_user_is_a_usage_error(host: Host, command: str) -> None:
    """Configuration: ``[limits] user = "0:0"``.

    Expected: exit 2 (usage error) for ``plan`` and ``run``, naming the setting; no run
    folder is made.
    """
    host.config.write_text(KEEP + '\n[limits]\nuser = "0:0"\n')
    crate = probe_crate(host, "root-user")
    outcome = cratebridge(host, command, crate)
    assert_exit(outcome, 2)
    assert "[limits] user" in str((outcome.doc or {}).get("where")), str(outcome)
    assert sorted(p.name for p in host.runs.iterdir()) == [host.other_run.name]


def test_a_kept_run_folder_is_private(probe_run: ProbeRun) -> None:
    """Configuration: ``[run] keep_runs = true``; the kept run folder and its broker folder.

    Expected: both are mode 0700, owned by the executor.
    """
    for folder in (probe_run.run_dir, probe_run.run_dir / "broker"):
        mode = stat.S_IMODE(folder.stat().st_mode)
        assert mode == 0o700, f"{folder} is {oct(mode)}"
        assert folder.stat().st_uid == os.geteuid()


# -- on Slurm: the engine and its jobs, through the broker's Slurm door --------------------------

SLURM_CONFIG = KEEP + '[engines.snakemake]\nexecutor = "slurm"\njobs = 2\nstatus_interval = 5\n'

SNAKE_SLURM = '''
import subprocess as _sp
escape("top level")
# a job of our own: it runs in a room of its own on the node, as uid 1000
_job = _sp.run(["sbatch", "--parsable", "-J", "escape", "--wrap",
                "id -u > job-uid; cat " + T["secrets"]["fixture secret"] + " > job-read 2>&1; "
                "touch " + T["markers"]["next to the fixture"] + " 2>/dev/null; true"],
               capture_output=True, text=True)
_tried = [{"place": "sbatch", "uid": _os.getuid(), "code": _job.returncode,
           "err": _job.stderr[-300:]}]
for _argv in (["scontrol", "update", "jobid=1", "priority=1"], ["scancel", "-u", "root"],
              ["sbatch", "--uid=0", "--wrap", "id"], ["sacctmgr", "-i", "add", "user", "x"]):
    _done = _sp.run(_argv, capture_output=True, text=True)
    _tried.append({"place": " ".join(_argv[:2]), "uid": _os.getuid(),
                   "code": _done.returncode})
with open("escape-evidence.jsonl", "a") as _handle:
    _handle.writelines(_json.dumps(t) + "\\n" for t in _tried)

rule all:
    input: "leak.txt"

rule leak:
    output: "leak.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "id -u > {output}; cat /proc/net/dev >> {output}"
'''


@pytest.mark.slurm
def test_snakemake_on_slurm_stays_in_rooms(host: Host, slurm: bool) -> None:
    """Snakemake with the Slurm executor: its Python at parse time, a job it submits itself with
    ``sbatch --wrap`` that reads the host secret and writes a marker, and Slurm commands outside
    the door's allow-list (``scontrol update``, ``scancel -u``, ``sbatch --uid``,
    ``sacctmgr add``).

    Expected: exit 0; the Snakefile's own job ran as uid 1000 without the host secret, the
    forbidden commands were refused (exit 125) and recorded in the ledger; the rule's job ran
    on Slurm in its container.
    """
    host.config.write_text(SLURM_CONFIG)
    crate = request(host, "snake-slurm", {"Snakefile": snakefile(host, SNAKE_SLURM)},
                    language="snakemake")
    outcome = cratebridge(host, "run", crate)
    assert_exit(outcome, 0)
    assert_contained(host, outcome)
    assert_result_written(outcome)
    assert outcome.run_dir is not None
    seen = {f["place"]: f for f in _evidence(outcome.run_dir)}
    assert seen["sbatch"]["code"] == 0, seen["sbatch"]
    for refused in ("scontrol update", "scancel -u", "sbatch --uid=0", "sacctmgr -i"):
        assert seen[refused]["code"] == 125, refused
    work = outcome.run_dir / "work" / "snakemake"
    for _ in range(60):  # the Snakefile's own job may still be finishing
        if (work / "job-read").is_file():
            break
        time.sleep(1)
    assert (work / "job-uid").read_text().strip() == "1000"
    assert FIXTURE_SECRET.read_text().splitlines()[0] not in (work / "job-read").read_text()
    ledger = [json.loads(line) for line in
              (outcome.run_dir / "broker" / "ledger.jsonl").read_text().splitlines()]
    assert sum(1 for e in ledger if e.get("slurm_job")) >= 2  # ours and the rule's
    assert sum(1 for e in ledger if "refused" in e) >= 4
    leak = (work / "leak.txt").read_text().split()
    assert leak[0] == "1000" and "eth0:" not in leak
