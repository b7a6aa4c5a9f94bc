"""Run Snakemake's own test workflows with bare Snakemake and through cratebridge, and compare.

The engine behind ``scripts/run-snakemake-comparison``: choose the workflows of a Snakemake
checkout that its ``tests/tests.py`` runs with default arguments, run each one both ways,
check the produced files against its ``expected-results/`` as Snakemake's ``run()`` does,
and write a report. It runs ``snakemake`` and ``cratebridge`` as subprocesses and imports
no engine. This module holds what is compared and how each side runs; the choice of
workflows is :mod:`cratebridge.testing.snakemake_selection`, the report and the command
line :mod:`cratebridge.testing.snakemake_report`.
"""

from __future__ import annotations

import dataclasses
import enum
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cratebridge.testing.crates import RequestSpec, write_request_zip
from cratebridge.testing.snakemake_selection import EXPECTED, TestWorkflow

__all__ = [
    "SNAKEMAKE_LANGUAGE",
    "Comparison",
    "DifferenceKind",
    "FileDifference",
    "Settings",
    "SideResult",
    "categorize",
    "compare_results",
    "expected_files",
    "run_bare",
    "run_cratebridge",
    "workflow_crate_metadata",
    "write_config",
]

SNAKEMAKE_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#snakemake"


# --- what is compared ---------------------------------------------------------------------


class DifferenceKind(enum.StrEnum):
    """How an expected file differs."""

    MISSING = "missing"
    DIFFERENT = "different content"


@dataclass(frozen=True)
class FileDifference:
    """One expected file that was not produced as expected.

    For cratebridge, a file
    missing from ``outputs/`` may still be elsewhere in the result crate (``found_at``,
    relative to the crate's payload), e.g. an intermediate file kept with a step's
    provenance; ``found_matches`` says whether that copy has the expected content.
    """

    path: str
    kind: DifferenceKind
    found_at: str | None = None
    found_matches: bool = False


@dataclass(frozen=True)
class SideResult:
    """How one workflow went one way (bare Snakemake or cratebridge)."""

    passed: bool
    exit_code: int | None
    seconds: float
    timed_out: bool = False
    error: str = ""
    """cratebridge's JSON error (with its message), empty for bare Snakemake."""
    tail: tuple[str, ...] = ()
    """The last lines of the run's error output, when it failed."""
    differences: tuple[FileDifference, ...] = ()
    checked: int = 0
    """How many expected files were compared."""
    exported: int | None = None
    """cratebridge: how many files the result crate has under outputs/."""
    note: str = ""

    @property
    def passes_counting_crate(self) -> bool:
        """Passed, or failed only by files that are elsewhere in the result crate, intact."""
        if self.passed:
            return True
        if self.exit_code != 0 or not self.differences:
            return False
        return all(d.found_at is not None and d.found_matches for d in self.differences)

    def reason(self) -> str:
        """One line: why this side failed (empty when it passed)."""
        if self.passed:
            return ""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        if self.note and self.exit_code is None:
            return self.note
        if self.exit_code != 0:
            head = self.error or _error_line(self.tail)
            return f"exit {self.exit_code}: {_one_line(head)}"
        return _files_line(self.differences)

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["tail"] = list(self.tail)
        doc["reason"] = self.reason()
        doc["seconds"] = round(self.seconds, 1)
        return doc


@dataclass(frozen=True)
class Comparison:
    """Both runs of one workflow."""

    workflow: TestWorkflow
    bare: SideResult
    cratebridge: SideResult

    def category(self) -> str:
        """A coarse cause for grouping: what went wrong through cratebridge (or bare)."""
        if self.bare.passed == self.cratebridge.passed:
            return "same outcome" if self.bare.passed else "fails both ways"
        if not self.bare.passed:
            return "passes only through cratebridge: " + categorize(self.bare)
        return categorize(self.cratebridge)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.workflow.name,
            "test": self.workflow.test,
            "bare": self.bare.to_json(),
            "cratebridge": self.cratebridge.to_json(),
            "category": self.category(),
        }


@dataclass(frozen=True)
class Settings:
    """How to run: binaries, cores, per-run time limit, the image for rules without one."""

    bin_dir: Path = field(default_factory=lambda: Path(sys.prefix) / "bin")
    cores: int = 3
    timeout: int = 600
    default_container: str = "cratebridge/python:3.11"
    logs: Path | None = None
    executor: str = "local"
    """``local``, or ``slurm``: both ways on the Slurm cluster, ``cores`` jobs at once."""

    @property
    def snakemake(self) -> Path:
        return self.bin_dir / "snakemake"

    @property
    def cratebridge(self) -> Path:
        return self.bin_dir / "cratebridge"


# --- comparing files as Snakemake's tests/common.py run() does ----------------------------


def expected_files(results_dir: Path) -> list[str]:
    """The files ``run()`` checks: glob ``**/**`` (no hidden names), minus .gitignore,
    .gitkeep, folders and Windows-only ``*_WIN`` files (each once: the glob repeats some)."""
    found = set()
    for path in glob.iglob(os.path.join(results_dir, "**/**"), recursive=True):
        rel = os.path.relpath(path, results_dir)
        if os.path.isdir(path) or rel in (".gitignore", ".gitkeep"):
            continue
        if not os.path.isfile(path) or rel.endswith("_WIN"):
            continue
        found.add(rel)
    return sorted(found)


def _same_content(expected: Path, produced: Path) -> bool:
    # run() compares md5 sums of the bytes stripped of leading and trailing whitespace.
    return expected.read_bytes().strip() == produced.read_bytes().strip()


def compare_results(
    results_dir: Path, produced_dir: Path, elsewhere: Path | None = None
) -> tuple[FileDifference, ...]:
    """Each expected file missing from ``produced_dir`` or with other content.

    With ``elsewhere`` (a result crate's payload), a missing file is also looked for
    there, outside ``produced_dir``, and where it was found is recorded.
    """
    differences = []
    for rel in expected_files(results_dir):
        produced = produced_dir / rel
        if not produced.exists():
            found = _find_elsewhere(elsewhere, produced_dir, rel) if elsewhere else None
            differences.append(FileDifference(
                rel, DifferenceKind.MISSING,
                found_at=str(found.relative_to(elsewhere)) if found and elsewhere else None,
                found_matches=bool(found and _same_content(results_dir / rel, found))))
        elif not produced.is_file() or not _same_content(results_dir / rel, produced):
            differences.append(FileDifference(rel, DifferenceKind.DIFFERENT))
    return tuple(differences)


def _find_elsewhere(payload: Path, skip: Path, rel: str) -> Path | None:
    hits = [p for p in payload.rglob(Path(rel).name)
            if p.is_file() and not p.is_relative_to(skip)
            and p.as_posix().endswith("/" + Path(rel).as_posix())]
    # Prefer a step's copy in the provenance over the request's own files.
    hits.sort(key=lambda p: (not p.relative_to(payload).as_posix().startswith("provenance/"), p))
    return hits[0] if hits else None


# --- running ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Process:
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


def _run_process(argv: Sequence[str], cwd: Path, timeout: int, env: dict[str, str]) -> _Process:
    """Run argv in its own process group; on time-out stop the whole group."""
    start = time.monotonic()
    with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace",
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
            out, err = proc.communicate()
    return _Process(None if timed_out else proc.returncode, out, err,
                    time.monotonic() - start, timed_out)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    # SIGTERM first: cratebridge then stops its containers and writes its result crate.
    for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _env(bin_dir: Path) -> dict[str, str]:
    """The caller's environment with bin_dir first on PATH, as in an activated venv.

    Snakemake's tests run in its environment, and some workflows call
    ``python -m snakemake`` from a shell: rule.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("CRATEBRIDGE_CONFIG", None)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", os.defpath)])
    return env


def _copy_workflow(folder: Path, dest: Path) -> None:
    """The test folder without expected-results/ (Snakemake's run() copies it along)."""
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [EXPECTED] if Path(directory) == folder and EXPECTED in names else []

    shutil.copytree(folder, dest, symlinks=True, ignore=ignore)


# How often the Slurm plugin asks Slurm for its jobs' states, both ways (seconds).
SLURM_STATUS_INTERVAL = 5


def run_bare(workflow: TestWorkflow, scratch: Path, settings: Settings) -> SideResult:
    """Copy the workflow to ``scratch/bare`` and run ``snakemake --cores N`` there (on
    Slurm: ``--executor slurm --jobs N``, each job on the node through ``srun``)."""
    work = scratch / "bare"
    _copy_workflow(workflow.folder, work)
    if settings.executor == "slurm":
        how = ["--executor", "slurm", "--jobs", str(settings.cores),
               "--slurm-init-seconds-before-status-checks", str(SLURM_STATUS_INTERVAL)]
    else:
        how = ["--cores", str(settings.cores)]
    done = _run_process([str(settings.snakemake), *how],
                        work, settings.timeout, _env(settings.bin_dir))
    _keep_log(settings, workflow, "bare.stderr.log", done.stderr)
    if done.exit_code != 0:
        return SideResult(False, done.exit_code, done.seconds, done.timed_out,
                          tail=_tail(done.stderr))
    checked = len(expected_files(workflow.folder / EXPECTED))
    differences = compare_results(workflow.folder / EXPECTED, work)
    return SideResult(not differences, 0, done.seconds, differences=differences, checked=checked)


def workflow_crate_metadata(name: str) -> dict[str, Any]:
    """A minimal Workflow RO-Crate for a folder whose main file is ``Snakefile``."""
    return {
        "@context": "https://w3id.org/ro/crate/1.1/context",
        "@graph": [
            {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"},
             "conformsTo": [{"@id": "https://w3id.org/ro/crate/1.1"},
                            {"@id": "https://w3id.org/workflowhub/workflow-ro-crate/1.0"}]},
            {"@id": "./", "@type": "Dataset", "name": name,
             "description": f"Snakemake's test workflow {name}",
             "mainEntity": {"@id": "Snakefile"}, "hasPart": [{"@id": "Snakefile"}]},
            {"@id": "Snakefile", "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
             "name": name, "programmingLanguage": {"@id": SNAKEMAKE_LANGUAGE}},
            {"@id": SNAKEMAKE_LANGUAGE, "@type": "ComputerLanguage", "name": "Snakemake",
             "url": {"@id": "https://snakemake.github.io"}},
        ],
    }


def write_config(path: Path, runs_dir: Path, settings: Settings) -> Path:
    """The operator configuration for one cratebridge run."""
    path.write_text(
        "[run]\n"
        f"runs_dir = {json.dumps(str(runs_dir))}\n"
        f"timeout = {settings.timeout}\n"
        "keep_runs = true\n\n"
        "[engines.snakemake]\n"
        f"cores = {settings.cores}\n"
        f"default_container = {json.dumps(settings.default_container)}\n"
        + (f'executor = "slurm"\njobs = {settings.cores}\n'
           f"status_interval = {SLURM_STATUS_INTERVAL}\n" if settings.executor == "slurm"
           else ""),
        encoding="utf-8")
    return path


def run_cratebridge(workflow: TestWorkflow, scratch: Path, settings: Settings) -> SideResult:
    """Package the workflow as a Five Safes request zip, ``cratebridge run`` it, check outputs/.

    The request is a BagIt zip written by :func:`write_request_zip`, its workflow
    folder the test folder (without expected-results/) plus a minimal Workflow
    RO-Crate ``ro-crate-metadata.json`` naming ``Snakefile`` as a Snakemake workflow.
    """
    work = scratch / "cratebridge"
    folder = work / "workflow"
    _copy_workflow(workflow.folder, folder)
    metadata = folder / "ro-crate-metadata.json"
    note = ""
    if metadata.exists():
        note = "the test folder has its own ro-crate-metadata.json; kept"
    else:
        metadata.write_text(json.dumps(workflow_crate_metadata(workflow.name), indent=2))
    request = work / "request.zip"
    try:
        spec = RequestSpec(workflow_dir=folder, main_workflow="Snakefile",
                           name=f"Snakemake test workflow {workflow.name}")
        write_request_zip(spec, request)
    except (OSError, ValueError) as err:
        return SideResult(False, None, 0.0, note=f"could not package the request: {err}")
    config = write_config(work / "cratebridge.toml", work / "runs", settings)
    result = work / "result"
    # A margin over cratebridge's own time limit, so that it stops the run itself.
    done = _run_process(
        [str(settings.cratebridge), "run", str(request), "--out", str(result),
         "--config", str(config), "--json"],
        work, settings.timeout + 120, _env(settings.bin_dir))
    _keep_log(settings, workflow, "cratebridge.stderr.log", done.stderr)
    _keep_log(settings, workflow, "cratebridge.json", done.stdout)
    doc = _json_or_empty(done.stdout)
    payload = result / "data" if (result / "bagit.txt").is_file() else result
    if (payload / "provenance" / "ro-crate-metadata.json").is_file():
        payload = payload / "provenance"  # a Five Safes result keeps its files there
    if done.exit_code != 0:
        lines = _tail(done.stderr)
        engine_log = payload / "logs" / "snakemake.stderr.log"
        if engine_log.is_file():
            lines += ("[result crate, logs/snakemake.stderr.log:]",
                      *_tail(engine_log.read_text(errors="replace")))
        return SideResult(False, done.exit_code, done.seconds, done.timed_out,
                          error=_cratebridge_error(doc), tail=lines, note=note)
    checked = len(expected_files(workflow.folder / EXPECTED))
    outputs = payload / "outputs"
    differences = compare_results(workflow.folder / EXPECTED, outputs, payload)
    exported = sum(1 for p in outputs.rglob("*") if p.is_file()) if outputs.is_dir() else 0
    return SideResult(not differences, 0, done.seconds, differences=differences,
                      checked=checked, exported=exported, note=note)


def _json_or_empty(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _cratebridge_error(doc: dict[str, Any]) -> str:
    """The JSON error: ``Class: message`` for a refusal, the run's error for a failed run."""
    if "message" in doc:
        return f"{doc.get('error')}: {doc['message']}"
    error = doc.get("error")
    failed = [s for s in doc.get("steps") or () if isinstance(s, dict) and s.get("error")]
    parts = [str(error)] if error else []
    parts += [f"step {s.get('name')}: {s.get('error')}" for s in failed[:3]]
    return "; ".join(parts)


def _keep_log(settings: Settings, workflow: TestWorkflow, name: str, text: str) -> None:
    if settings.logs is not None:
        folder = settings.logs / workflow.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")


def _tail(text: str, count: int = 24) -> tuple[str, ...]:
    """The error output's telling lines: from Snakemake's first error block, and the end."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if _ERROR_START.match(line)), None)
    if start is None or len(lines) - start <= count:
        return tuple(lines[-count:])
    block = lines[start:start + count - 5]
    return (*block, "[...]", *lines[-4:])


_ERROR_START = re.compile(
    r"(Error in rule |RuleException|\w+(Error|Exception) in (file|rule|line) )")
_EXCEPTION = re.compile(r"\b([A-Z]\w*(?:Exception|Error))\b")


def _error_line(lines: Iterable[str]) -> str:
    """The most telling line of Snakemake's error output: an exception or 'Error in rule'."""
    lines = list(lines)
    for line in lines:
        if _EXCEPTION.search(line) or line.startswith("Error in rule"):
            return line
    return lines[-1] if lines else "no error output"


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _files_line(differences: Sequence[FileDifference]) -> str:
    missing = [d for d in differences if d.kind is DifferenceKind.MISSING]
    different = [d for d in differences if d.kind is DifferenceKind.DIFFERENT]
    parts = []
    if missing:
        names = []
        for d in missing:
            where = f" (in the crate at {d.found_at}"
            where += ", same content)" if d.found_matches else ", other content)"
            names.append(d.path + (where if d.found_at else ""))
        parts.append("missing: " + ", ".join(names))
    if different:
        parts.append("different content: " + ", ".join(d.path for d in different))
    return "exit 0 but " + "; ".join(parts)


def categorize(side: SideResult) -> str:
    """A coarse, automatic cause of one side's failure, for grouping."""
    if side.timed_out:
        return "timed out"
    if side.exit_code is None:
        return side.note or "did not run"
    if side.exit_code == 0:
        if side.passes_counting_crate and side.exported == 0:
            return "exit 0, outputs/ empty: the expected files only elsewhere in the result crate"
        if side.passes_counting_crate:
            return "expected files not in outputs/ but elsewhere in the result crate"
        if any(d.kind is DifferenceKind.MISSING for d in side.differences):
            return "exit 0 but expected files missing"
        return "exit 0 but different content"
    text = side.error + "\n" + "\n".join(side.tail)
    refused = re.search(r"cannot run in the cratebridge sandbox: ([^;]*)", text)
    if refused:
        kind = re.search(r"\b(run|script|notebook|wrapper|template_engine)\b", refused.group(1))
        return f"refused: {kind.group(1) + ':' if kind else refused.group(1)} rule"
    joined = re.search(r"has the output (pipe|service)\(", text)
    if joined:
        return f"refused: {joined.group(1)}() output"
    if side.exit_code == 1 and re.search(
            r"rule\(s\) failed|Error in rule|job execution failed", text):
        return "a job failed (exit 1)"
    label = {3: "rejected", 4: "refused by policy", 5: "engine unavailable"}.get(side.exit_code)
    found = _EXCEPTION.search(text)
    if label:
        return f"{label} (exit {side.exit_code})" + (f": {found.group(1)}" if found else "")
    return f"exit {side.exit_code}" + (f": {found.group(1)}" if found else "")
