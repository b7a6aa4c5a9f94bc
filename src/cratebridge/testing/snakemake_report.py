"""The comparison's report and command line: counts, causes, ``report.md``, ``summary.json``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from cratebridge.testing.snakemake_selection import (
    SELECTION_RULE,
    Selection,
    TestWorkflow,
    select_workflows,
)
from cratebridge.testing.snakemake_suite import (
    Comparison,
    Settings,
    SideResult,
    run_bare,
    run_cratebridge,
)

__all__ = ["counts", "counts_lines", "main", "write_report"]

# --- the report ---------------------------------------------------------------------------


def counts(results: Sequence[Comparison]) -> dict[str, int]:
    """Pass counts both ways and where they differ."""
    bare = [r.bare.passed for r in results]
    ours = [r.cratebridge.passed for r in results]
    return {
        "workflows": len(results),
        "bare_passed": sum(bare),
        "cratebridge_passed": sum(ours),
        "both_passed": sum(b and o for b, o in zip(bare, ours, strict=True)),
        "bare_only": sum(b and not o for b, o in zip(bare, ours, strict=True)),
        "cratebridge_only": sum(o and not b for b, o in zip(bare, ours, strict=True)),
        "neither": sum(not b and not o for b, o in zip(bare, ours, strict=True)),
        "cratebridge_passed_counting_crate": sum(
            r.cratebridge.passes_counting_crate for r in results),
    }


def write_report(
    out: Path, results: Sequence[Comparison], selection: Selection, header: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``report.md`` into ``out``; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: r.workflow.name)
    summary = {
        **header,
        "selection_rule": SELECTION_RULE,
        "counts": counts(ordered),
        "workflows": [r.to_json() for r in ordered],
        "excluded": [dataclasses.asdict(e) for e in selection.excluded],
    }
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    md_path = out / "report.md"
    md_path.write_text(_markdown(ordered, selection, header, summary["counts"]), encoding="utf-8")
    return json_path, md_path


def _markdown(results: Sequence[Comparison], selection: Selection, header: dict[str, Any],
              total: dict[str, int]) -> str:
    lines = ["# Snakemake's test workflows: bare Snakemake and cratebridge", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", *counts_lines(total), "",
              "| workflow | bare | cratebridge | difference |", "|---|---|---|---|"]
    for r in results:
        reason = r.cratebridge.reason() if r.bare.passed else r.bare.reason()
        if r.bare.passed != r.cratebridge.passed or not r.bare.passed:
            diff = _md_cell(("bare: " if not r.bare.passed else "") + reason)
            if not r.bare.passed and not r.cratebridge.passed:
                diff += "<br>cratebridge: " + _md_cell(r.cratebridge.reason())
        else:
            diff = ""
        lines.append(f"| {r.workflow.name} | {_word(r.bare)} | {_word(r.cratebridge)} | {diff} |")
    lines += ["", "## Differences by cause", ""]
    groups: dict[str, list[Comparison]] = {}
    for r in results:
        if r.bare.passed != r.cratebridge.passed:
            groups.setdefault(r.category(), []).append(r)
    for category, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"- **{category}** ({len(members)}): "
                     + ", ".join(m.workflow.name for m in members))
    if not groups:
        lines.append("None: every workflow has the same outcome both ways.")
    lines += ["", "## Details of every failure", ""]
    for r in results:
        for label, side in (("bare", r.bare), ("cratebridge", r.cratebridge)):
            if side.passed:
                continue
            lines += [f"### {r.workflow.name}: {label}", "", side.reason(), ""]
            if side.tail:
                lines += ["```", *side.tail, "```", ""]
    lines += ["## Selection", "", "```", SELECTION_RULE, "```", "",
              f"## Excluded ({len(selection.excluded)})", "", "| folder | reason |", "|---|---|"]
    lines += [f"| {e.name} | {_md_cell(e.reason)} |" for e in selection.excluded]
    return "\n".join(lines) + "\n"


def counts_lines(total: dict[str, int]) -> list[str]:
    """The counts as a few human lines."""
    n = total["workflows"]
    return [
        f"bare Snakemake: {total['bare_passed']}/{n} passed",
        f"cratebridge:    {total['cratebridge_passed']}/{n} passed",
        f"passing bare but not through cratebridge: {total['bare_only']}",
        f"passing through cratebridge but not bare: {total['cratebridge_only']}",
        f"failing both ways: {total['neither']}",
        "cratebridge, counting expected files found elsewhere in the result crate: "
        f"{total['cratebridge_passed_counting_crate']}/{n}",
    ]


def _word(side: SideResult) -> str:
    return "pass" if side.passed else ("timeout" if side.timed_out else "FAIL")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the command line ---------------------------------------------------------------------


def _step_image() -> str:
    """The image ``cratebridge images build`` makes for this venv's Snakemake."""
    try:
        return f"cratebridge/snakemake:{importlib_metadata.version('snakemake')}"
    except importlib_metadata.PackageNotFoundError:
        return "cratebridge/python:3.11"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run-snakemake-comparison",
        description="Run Snakemake's own test workflows with bare Snakemake and through "
                    "cratebridge; report both pass counts and every difference.",
        epilog=SELECTION_RULE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a Snakemake checkout (tests/tests.py)")
    parser.add_argument("--only", nargs="+", action="extend", default=[], metavar="NAME",
                        help="run only these workflow folders (tests/NAME)")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="workflows at once (default 1)")
    parser.add_argument("--out", type=Path, default=Path("snakemake-comparison-results"),
                        help="report folder (default ./snakemake-comparison-results)")
    parser.add_argument("--cores", type=int, default=3,
                        help="snakemake --cores, both ways (default 3, as Snakemake's run())")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds per workflow and way (default 600)")
    parser.add_argument("--image", default=_step_image(),
                        help="[engines.snakemake] default_container (default %(default)s: "
                        "Python with this venv's Snakemake and its dependencies, as on the "
                        "host bare Snakemake runs on; `cratebridge images build` makes it)")
    parser.add_argument("--bin", type=Path, default=Path(sys.prefix) / "bin",
                        help="folder holding snakemake and cratebridge (default: this venv)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch folders (under OUT/work)")
    parser.add_argument("--list", action="store_true",
                        help="print the chosen and excluded workflows and stop")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="local (default), or slurm: Snakemake's cluster tests, both "
                        "ways on the Slurm cluster (bare: --executor slurm), --cores jobs "
                        "at once")
    return parser


def _check_setup(args: argparse.Namespace) -> str | None:
    """What stops the script from running at all (None: nothing)."""
    if not (args.checkout / "tests" / "tests.py").is_file():
        return f"{args.checkout} is not a Snakemake checkout: no tests/tests.py"
    for tool in ("snakemake", "cratebridge"):
        if not os.access(args.bin / tool, os.X_OK):
            return f"no {tool} in {args.bin}; give --bin or install it"
    docker = shutil.which("docker")
    if docker is None:
        return "no docker on PATH"
    found = subprocess.run([docker, "image", "inspect", args.image], capture_output=True,
                           check=False)
    if found.returncode != 0:
        return f"image {args.image} is not present locally (make setup builds it)"
    if args.jobs < 1 or args.cores < 1 or args.timeout < 1:
        return "-j, --cores and --timeout must be at least 1"
    if args.executor == "slurm" and (shutil.which("sinfo") is None or subprocess.run(
            ["sinfo"], capture_output=True, check=False).returncode != 0):
        return "--executor slurm: no Slurm cluster answers `sinfo` (make slurm starts one)"
    return None


def _header(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    def output(cmd: list[str]) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return done.stdout.strip() or "unknown"

    try:
        ours = importlib_metadata.version("cratebridge")
    except importlib_metadata.PackageNotFoundError:
        ours = "unknown"
    checkout = args.checkout.resolve()
    return {
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "command": "scripts/run-snakemake-comparison " + shlex.join(argv),
        "snakemake_checkout": str(checkout),
        "snakemake_checkout_ref": output(["git", "-C", str(checkout), "describe", "--tags",
                                          "--always"]),
        "snakemake_version": output([str(args.bin / "snakemake"), "--version"]),
        "cratebridge_version": ours,
        "cratebridge_commit": output(["git", "-C", str(Path(__file__).resolve().parent),
                                      "describe", "--always", "--dirty"]),
        "cores": args.cores,
        "executor": args.executor,
        "timeout_seconds": args.timeout,
        "default_container": args.image,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The script's entry point; 0 once the comparison ran, whatever it found."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    problem = _check_setup(args)
    if problem:
        print(f"run-snakemake-comparison: {problem}", file=sys.stderr)
        return 2
    selection = select_workflows(args.checkout, cluster=args.executor == "slurm")
    chosen = selection.chosen
    if args.only:
        by_name = {w.name: w for w in chosen}
        why = {e.name: e.reason for e in selection.excluded}
        unknown = [n for n in args.only if n not in by_name]
        if unknown:
            for name in unknown:
                print(f"run-snakemake-comparison: {name}: "
                      f"{'excluded: ' + why[name] if name in why else 'no such workflow'}",
                      file=sys.stderr)
            return 2
        chosen = tuple(by_name[n] for n in dict.fromkeys(args.only))
    if args.list:
        for w in chosen:
            print(f"chosen   {w.name}  ({w.test})")
        for e in selection.excluded:
            print(f"excluded {e.name}: {e.reason}")
        return 0
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(bin_dir=args.bin, cores=args.cores, timeout=args.timeout,
                        default_container=args.image, logs=out / "logs",
                        executor=args.executor)
    header = _header(args, argv)
    print(f"{len(chosen)} workflows chosen, {len(selection.excluded)} folders excluded; "
          f"results in {out}", file=sys.stderr)
    if args.keep:
        scratch_root = out / "work"
        scratch_root.mkdir(exist_ok=True)
        results = _run_all(chosen, scratch_root, settings, args.jobs, keep=True)
    else:
        with tempfile.TemporaryDirectory(prefix="snakemake-comparison-") as scratch:
            results = _run_all(chosen, Path(scratch), settings, args.jobs, keep=False)
    json_path, md_path = write_report(out, results, selection, header)
    total = counts(results)
    for r in sorted(results, key=lambda r: r.workflow.name):
        if r.bare.passed != r.cratebridge.passed:
            print(f"  {r.workflow.name}: bare {_word(r.bare)}, cratebridge "
                  f"{_word(r.cratebridge)}: {r.category()}")
    print("\n".join(counts_lines(total)))
    print(f"report: {md_path}\nsummary: {json_path}")
    return 0


def _run_all(chosen: Sequence[TestWorkflow], scratch_root: Path, settings: Settings,
             jobs: int, keep: bool) -> list[Comparison]:
    lock = threading.Lock()

    def one(workflow: TestWorkflow) -> Comparison:
        scratch = scratch_root / workflow.name
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        bare = run_bare(workflow, scratch, settings)
        ours = run_cratebridge(workflow, scratch, settings)
        if not keep:  # one workflow's run folders at a time, not all of them
            shutil.rmtree(scratch, ignore_errors=True)
        with lock:
            print(f"{workflow.name}: bare {_word(bare)} ({bare.seconds:.0f} s), cratebridge "
                  f"{_word(ours)} ({ours.seconds:.0f} s)", file=sys.stderr)
        return Comparison(workflow, bare, ours)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, chosen))


if __name__ == "__main__":
    sys.exit(main())
