"""scripts/run-snakemake-comparison on a small Snakemake-like checkout written here.

The checkout has the layout of Snakemake's own (tests/tests.py and tests/test*/ with a
Snakefile and expected-results/): two workflows pass both ways (one with a service()),
one is refused by cratebridge (it reads a host file), one produces the wrong content
both ways, and a few are excluded by the selection rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cratebridge.testing.snakemake_selection import select_workflows
from cratebridge.testing.snakemake_suite import (
    DifferenceKind,
    FileDifference,
    compare_results,
    expected_files,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run-snakemake-comparison"

TESTS_PY = '''\
from .common import run, dpath, connected


def test_ok():
    run(dpath("test_ok"))


def test_service():
    """A docstring does not count as extra test code."""
    run(dpath("test_service"))


def test_host_file():
    run(dpath("test_host_file"))


def test_wrong():
    run(dpath("test_wrong"))


def test_targets():
    run(dpath("test_targets"), targets=["a.txt"])


@connected
def test_net():
    run(dpath("test_net"))


def test_checked():
    tmp = run(dpath("test_checked"), cleanup=False)
    assert tmp


def test_plain():
    run(dpath("test_conda"))


def test_grouped():
    run(dpath("test_grouped"), cluster="./qsub", nodes=2)


def test_ok_retried():
    run(dpath("test_ok"), cluster="./qsub", retries=2)
'''

OK_SNAKEFILE = '''\
rule all:
    input: "out/b.txt"

rule a:
    output: "a.txt"
    shell: "echo hello > {output}"

rule b:
    input: "a.txt"
    output: "out/b.txt"
    shell: "cat {input} {input} > {output}"
'''

# A service() output: bare Snakemake runs the service beside the job reading it and
# stops it when that job ends; so does cratebridge, each in its own container.
SERVICE_SNAKEFILE = '''\
rule all:
    input: "c.txt"

rule s:
    output: service("s.txt")
    shell: "echo from a service > {output}; sleep 60"

rule c:
    input: "s.txt"
    output: "c.txt"
    shell: "while [ ! -s {input} ]; do sleep 0.1; done; cat {input} > {output}"
'''

# A file of the host: bare Snakemake reads it; a TRE request sees only its own crate,
# and cratebridge refuses the reference.
HOST_FILE_SNAKEFILE = '''\
rule all:
    input: "h.txt"

rule h:
    input: "/etc/hostname"
    output: "h.txt"
    shell: "echo read > {output}"
'''

# A group: two jobs that Snakemake runs as one cluster job (on one machine it ignores
# group:), the first's output the second's input.
GROUPED_SNAKEFILE = '''\
rule all:
    input: "two.txt"

rule one:
    output: "one.txt"
    group: "g"
    shell: "echo one > {output}"

rule two:
    input: "one.txt"
    output: "two.txt"
    group: "g"
    shell: "cat {input} > {output}; echo two >> {output}"
'''

WRONG_SNAKEFILE = '''\
rule all:
    input: "w.txt"

rule w:
    output: "w.txt"
    shell: "echo actual > {output}"
'''


def _workflow(tests: Path, name: str, snakefile: str, expected: dict[str, str]) -> None:
    folder = tests / name
    (folder / "expected-results").mkdir(parents=True)
    (folder / "Snakefile").write_text(snakefile)
    for rel, text in expected.items():
        path = folder / "expected-results" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout shaped like Snakemake's, with workflows chosen and excluded."""
    root = tmp_path / "snakemake"
    tests = root / "tests"
    tests.mkdir(parents=True)
    (tests / "tests.py").write_text(TESTS_PY)
    _workflow(tests, "test_ok", OK_SNAKEFILE, {"out/b.txt": "hello\nhello\n"})
    _workflow(tests, "test_service", SERVICE_SNAKEFILE, {"c.txt": "from a service\n"})
    _workflow(tests, "test_host_file", HOST_FILE_SNAKEFILE, {"h.txt": "read\n"})
    _workflow(tests, "test_wrong", WRONG_SNAKEFILE, {"w.txt": "expected\n"})
    _workflow(tests, "test_targets", OK_SNAKEFILE, {"a.txt": "hello\n"})
    _workflow(tests, "test_net", OK_SNAKEFILE, {})
    _workflow(tests, "test_checked", OK_SNAKEFILE, {})
    _workflow(tests, "test_conda", 'rule x:\n    output: "x"\n    conda: "env.yaml"\n'
              '    shell: "touch {output}"\n', {"x": ""})
    _workflow(tests, "test_orphan", OK_SNAKEFILE, {})
    _workflow(tests, "test_grouped", GROUPED_SNAKEFILE, {"two.txt": "one\ntwo\n"})
    return root


def test_selection_keeps_default_runs_and_says_why_others_are_left_out(checkout: Path) -> None:
    selection = select_workflows(checkout)
    assert [w.name for w in selection.chosen] == ["test_host_file", "test_ok", "test_service",
                                                  "test_wrong"]
    reasons = {e.name: e.reason for e in selection.excluded}
    assert reasons == {
        "test_targets": "run with special arguments: targets",
        "test_net": "needs the network (@connected)",
        "test_checked": "run with special arguments: cleanup",
        "test_conda": "uses conda (conda: directive) in Snakefile",
        "test_orphan": "not run by tests/tests.py",
        "test_grouped": "run with special arguments: cluster, nodes",
    }


def test_cluster_selection_keeps_the_cluster_tests_alone(checkout: Path) -> None:
    selection = select_workflows(checkout, cluster=True)
    assert [w.name for w in selection.chosen] == ["test_grouped"]
    reasons = {e.name: e.reason for e in selection.excluded}
    assert reasons["test_ok"] == "not a cluster test (run without cluster=)"
    assert reasons["test_targets"] == "not a cluster test (run without cluster=)"
    assert reasons["test_net"] == "needs the network (@connected)"


def test_files_are_compared_as_snakemakes_run_does(tmp_path: Path) -> None:
    expected, produced = tmp_path / "expected", tmp_path / "produced"
    for rel, text in {"same.txt": "a\n", "spaces.txt": "b", "sub/other.txt": "c",
                      "gone.txt": "d", ".hidden": "x", "only_WIN": "w", ".gitkeep": ""}.items():
        (expected / rel).parent.mkdir(parents=True, exist_ok=True)
        (expected / rel).write_text(text)
    for rel, text in {"same.txt": "a\n", "spaces.txt": "\n b \n\n", "sub/other.txt": "C"}.items():
        (produced / rel).parent.mkdir(parents=True, exist_ok=True)
        (produced / rel).write_text(text)
    # Hidden files and *_WIN are not checked; content is compared stripped.
    assert expected_files(expected) == ["gone.txt", "same.txt", "spaces.txt", "sub/other.txt"]
    assert compare_results(expected, produced) == (
        FileDifference("gone.txt", DifferenceKind.MISSING),
        FileDifference("sub/other.txt", DifferenceKind.DIFFERENT),
    )
    # In a result crate, a file missing from outputs/ is looked for elsewhere in the crate.
    payload = tmp_path / "payload"
    (payload / "outputs").mkdir(parents=True)
    (payload / "provenance" / "work").mkdir(parents=True)
    (payload / "provenance" / "work" / "gone.txt").write_text("d\n")
    found = compare_results(expected, payload / "outputs", payload)
    assert found[0] == FileDifference(
        "gone.txt", DifferenceKind.MISSING, "provenance/work/gone.txt", True)


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VENV=sys.prefix)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=1200, check=False)


def test_script_refuses_what_it_cannot_run(checkout: Path, tmp_path: Path) -> None:
    done = _script(str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "no tests/tests.py" in done.stderr
    listed = _script(str(checkout), "--list")
    assert listed.returncode == 0, listed.stderr
    assert "chosen   test_ok" in listed.stdout
    assert "excluded test_net: needs the network (@connected)" in listed.stdout


@pytest.mark.docker
def test_script_reports_both_counts_and_every_difference(
    checkout: Path, tmp_path: Path, docker_available: bool
) -> None:
    out = tmp_path / "out"
    done = _script(str(checkout), "--out", str(out), "--timeout", "300")
    assert done.returncode == 0, done.stderr
    assert "bare Snakemake: 3/4 passed" in done.stdout
    assert "cratebridge:    2/4 passed" in done.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {
        "workflows": 4, "bare_passed": 3, "cratebridge_passed": 2, "both_passed": 2,
        "bare_only": 1, "cratebridge_only": 0, "neither": 1,
        "cratebridge_passed_counting_crate": 2,
    }
    by_name = {w["name"]: w for w in summary["workflows"]}
    for name in ("test_ok", "test_service"):
        assert by_name[name]["bare"]["passed"] and by_name[name]["cratebridge"]["passed"]

    refused = by_name["test_host_file"]
    assert refused["bare"]["passed"]
    assert refused["cratebridge"]["exit_code"] == 3
    assert "/etc/hostname" in refused["cratebridge"]["reason"]

    wrong = by_name["test_wrong"]
    for side in ("bare", "cratebridge"):
        assert wrong[side]["exit_code"] == 0
        assert wrong[side]["differences"] == [
            {"path": "w.txt", "kind": "different content", "found_at": None,
             "found_matches": False}]
    assert {e["name"] for e in summary["excluded"]} >= {"test_targets", "test_net"}
    assert summary["snakemake_version"] and summary["command"].startswith("scripts/")

    report = (out / "report.md").read_text()
    assert "| test_host_file | pass | FAIL | exit 3: " in report
    assert "| test_net | needs the network (@connected) |" in report
    assert (out / "logs" / "test_ok" / "cratebridge.json").is_file()


@pytest.mark.slurm
@pytest.mark.docker
def test_script_runs_the_cluster_tests_both_ways_on_slurm(
    checkout: Path, tmp_path: Path, slurm: bool, docker_available: bool
) -> None:
    # bare: Snakemake's Slurm plugin, each group one Slurm job; cratebridge: the same,
    # its group's jobs in containers
    out = tmp_path / "out"
    done = _script(str(checkout), "--executor", "slurm", "--out", str(out), "--timeout", "300")
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["executor"] == "slurm"
    assert summary["counts"]["workflows"] == 1
    (grouped,) = summary["workflows"]
    assert grouped["name"] == "test_grouped"
    assert grouped["bare"]["passed"], grouped["bare"]
    assert grouped["cratebridge"]["passed"], grouped["cratebridge"]
