"""Which of a Snakemake checkout's test workflows the comparison runs, and why not the others."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLUSTER_KEYWORDS", "EXPECTED", "SELECTION_RULE", "Exclusion", "Selection",
           "TestWorkflow", "select_workflows"]

SELECTION_RULE = """\
A folder tests/NAME of the Snakemake checkout is chosen when:
 1. a test function in tests/tests.py runs it as `run(dpath("NAME"))` and does nothing
    else: no other argument (no targets, config, shouldfail, cores, executor,
    deployment method ...) and no extra checks after the run;
 2. that function has no decorator other than a Windows or macOS skip (so not
    @connected, @apptainer, @conda, @needs_strace, pytest.mark.skip/xfail, only_on_windows);
 3. the folder holds a Snakefile and an expected-results/ folder;
 4. no workflow code in the folder (Snakefile*, *.smk, *.rules, *.py; comment lines
    ignored) uses a conda:, container:, singularity:, containerized:, envmodules: or
    wrapper: directive, a storage or GitHub/GitLab source, or a URL (http, https, ftp, s3,
    gs).
Everything else is excluded, with the first reason that applies.
With --executor slurm, rule 1 asks instead for a test that runs the folder with
`cluster=` (Snakemake's own tests of cluster execution, through its qsub stand-in)
and no other argument but `nodes=`; both ways then run on the Slurm cluster."""
# The arguments a cluster test may have besides the folder (``nodes``: how many jobs
# at once, which the comparison's own -j/--cores stands for).
CLUSTER_KEYWORDS = frozenset({"cluster", "nodes"})
EXPECTED = "expected-results"
# Decorators that only skip a test on another OS: they do not change what runs on Linux.
_OS_SKIP = re.compile(
    r"^(skip_on_windows|skip_on_macos\w*|pytest\.mark\.skipif\(\s*ON_(MACOS|WINDOWS)\b)")
_DECORATOR_REASONS = (
    ("connected", "needs the network (@connected)"),
    ("apptainer", "needs Apptainer (@apptainer)"),
    ("conda", "needs conda (@conda)"),
    ("needs_strace", "needs strace (@needs_strace)"),
    ("needs_s3", "needs an S3 server (@needs_s3)"),
    ("needs_envmodules", "needs environment modules (@needs_envmodules)"),
    ("parametrize", "run with several parameter sets (@pytest.mark.parametrize)"),
    ("only_on_windows", "runs on Windows only"),
    ("xfail", "expected to fail upstream (xfail)"),
    ("pytest.mark.skip", "skipped upstream"),
)
_CONTENT_RULES = (
    (re.compile(r"^\s*conda\s*:", re.M), "uses conda (conda: directive)"),
    (re.compile(r"^\s*(container|singularity|containerized)\s*:", re.M),
     "names a container image, which bare Snakemake runs only with Apptainer"),
    (re.compile(r"^\s*envmodules\s*:", re.M), "uses environment modules (envmodules:)"),
    (re.compile(r"^\s*wrapper\s*:", re.M), "downloads a wrapper (wrapper:, network)"),
    (re.compile(r"\b(storage|github|gitlab)\s*[.(]|^\s*storage\b", re.M),
     "reads remote storage or a Git forge (network)"),
    (re.compile(r"\b(https?|ftp|s3|gs)://"), "names a URL (network)"),
)
_TEXT_LIMIT = 1 << 20
_CODE_SUFFIXES = (".smk", ".rules", ".py", ".snakefile")


@dataclass(frozen=True)
class TestWorkflow:
    """One chosen workflow: the folder ``tests/<name>`` and the test function that runs it."""

    __test__ = False  # not a pytest class

    name: str
    folder: Path
    test: str


@dataclass(frozen=True)
class Exclusion:
    """A workflow folder left out, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Selection:
    """The chosen workflows (sorted by name) and the excluded folders."""

    chosen: tuple[TestWorkflow, ...]
    excluded: tuple[Exclusion, ...]


def select_workflows(checkout: Path, cluster: bool = False) -> Selection:
    """Apply :data:`SELECTION_RULE` to a Snakemake checkout (``cluster``: its cluster tests).

    Raises:
        FileNotFoundError: if ``checkout/tests/tests.py`` does not exist.
        SyntaxError: if tests.py cannot be parsed.
    """
    tests_dir = checkout / "tests"
    source = (tests_dir / "tests.py").read_text(encoding="utf-8")
    verdicts: dict[str, list[tuple[str, str | None]]] = {}  # folder -> [(test, reason)]
    for func in ast.parse(source).body:
        if not isinstance(func, ast.FunctionDef) or not func.name.startswith("test"):
            continue
        for folder, reason in _test_verdicts(func, cluster):
            verdicts.setdefault(folder, []).append((func.name, reason))
    chosen: list[TestWorkflow] = []
    excluded: list[Exclusion] = []
    for name in sorted(set(verdicts) | set(_snakefile_folders(tests_dir))):
        runs = verdicts.get(name, [])
        default = [test for test, reason in runs if reason is None]
        if not runs:
            excluded.append(Exclusion(name, "not run by tests/tests.py"))
        elif not default:
            excluded.append(Exclusion(name, runs[0][1] or ""))
        else:
            reason = _folder_reason(tests_dir / name)
            if reason:
                excluded.append(Exclusion(name, reason))
            else:
                chosen.append(TestWorkflow(name, tests_dir / name, default[0]))
    return Selection(tuple(chosen), tuple(excluded))


def _test_verdicts(func: ast.FunctionDef,
                   cluster: bool) -> Iterator[tuple[str, str | None]]:
    """Each folder a test function names with dpath(), and why it is excluded (None: chosen)."""
    folders = [_dpath_arg(node) for node in ast.walk(func)]
    named = list(dict.fromkeys(f for f in folders if f is not None))
    if not named:
        return
    reason = _decorator_reason(func) or _call_reason(func, cluster)
    for folder in named:
        yield folder, reason


def _dpath_arg(node: ast.AST) -> str | None:
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "dpath" and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.args[0].value.strip("/")
    return None


def _decorator_reason(func: ast.FunctionDef) -> str | None:
    for decorator in func.decorator_list:
        text = ast.unparse(decorator)
        if _OS_SKIP.match(text):
            continue
        for marker, reason in _DECORATOR_REASONS:
            if marker in text:
                return reason
        return f"decorated @{text.split('(')[0]}"
    return None


def _call_reason(func: ast.FunctionDef, cluster: bool) -> str | None:
    body = [s for s in func.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    calls = [n for n in ast.walk(func) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "run"]
    keywords = sorted({k.arg or "**" for call in calls for k in call.keywords})
    if cluster and calls and "cluster" not in keywords:
        return "not a cluster test (run without cluster=)"
    special = [k for k in keywords if not (cluster and k in CLUSTER_KEYWORDS)]
    if special:
        return "run with special arguments: " + ", ".join(special)
    if not calls:
        return "not run through run() (its own test code)"
    only = body[0] if len(body) == 1 else None
    if (isinstance(only, ast.Expr) and isinstance(only.value, ast.Call)
            and only.value in calls and len(only.value.args) == 1
            and _dpath_arg(only.value.args[0]) is not None):
        return None
    if any(len(call.args) > 1 for call in calls):
        return "run with special arguments (positional)"
    return "checked by extra test code around run()"


def _snakefile_folders(tests_dir: Path) -> Iterator[str]:
    for path in sorted(tests_dir.iterdir()):
        if path.is_dir() and path.name.startswith("test") and (path / "Snakefile").is_file():
            yield path.name


def _folder_reason(folder: Path) -> str | None:
    if not (folder / "Snakefile").is_file():
        return "no Snakefile at the top of the folder"
    if not (folder / EXPECTED).is_dir():
        return f"no {EXPECTED}/ folder"
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts[0] == EXPECTED or not path.is_file() or path.stat().st_size > _TEXT_LIMIT:
            continue
        if not (path.name.startswith("Snakefile") or path.name.endswith(_CODE_SUFFIXES)):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for pattern, reason in _CONTENT_RULES:
            if pattern.search(code):
                return f"{reason} in {rel}"
    return None
