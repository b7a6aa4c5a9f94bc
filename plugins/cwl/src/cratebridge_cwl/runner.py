"""``cratebridge-cwl-runner``: the standard ``cwl-runner`` command line, run as a request crate.

``cratebridge-cwl-runner [--outdir DIR] [--quiet] TOOL [JOB]`` wraps TOOL (and every
document it references) and JOB (and every file it names) into a Workflow RO-Crate
request, runs it through the normal pipeline (intake, plan, engine, provenance), moves
the outputs into ``--outdir`` and prints the output object as JSON on stdout. The
result crate is kept at ``<outdir>/.cratebridge-result/``. Exit codes follow the CWL
specification: 0 success, 33 an unsupported requirement, anything else a failure.
See ``docs/cwl-runner.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cratebridge.config import Config, load_config
from cratebridge.engines.installed import version as installed_version
from cratebridge.engines.interface import ProgressEvent
from cratebridge.engines.record import FileRecord, RunStatus
from cratebridge.errors import CratebridgeError
from cratebridge.leaving import leave
from cratebridge_cwl.runner_crate import write_request
from cratebridge_cwl.runner_read import (
    EXIT_UNSUPPORTED,
    UnsupportedRequirement,
    load_tool,
    local_path,
    paths_in,
)
from cratebridge_cwl.runner_tool import (
    RESULT_FOLDER,
    SecondaryFiles,
    declared_secondary_files,
    load_job,
)

__all__ = ["EXIT_UNSUPPORTED", "RESULT_FOLDER", "SecondaryFiles", "UnsupportedRequirement",
           "declared_secondary_files", "main", "write_request"]

_ENGINE_EXIT = re.compile(r"^\S+ exited (\d+)")

# -- running it ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerOptions:
    tool: str
    job: str | None
    outdir: Path
    quiet: bool
    engine: str | None
    config: Path | None
    default_container: str | None
    keep_run: bool


def _config(options: RunnerOptions, runs_dir: Path) -> Config:
    cfg = load_config(options.config)
    settings = {k: dict(v) for k, v in cfg.engine_settings.items()}
    if options.default_container:
        for engine in ("cwltool", "toil"):
            settings.setdefault(engine, {})["default_container"] = options.default_container
    return dataclasses.replace(cfg, runs_dir=runs_dir, keep_runs=True,
                               engine_settings=settings)


def run(options: RunnerOptions) -> dict[str, Any]:
    """Run TOOL on JOB through cratebridge; return the output object (files in outdir).

    Raises :class:`~cratebridge.errors.CratebridgeError` subclasses, and
    :class:`~cratebridge.errors.WorkflowFailed` when the run failed (its exit
    code is 33 when the engine found an unsupported requirement).
    """
    from cratebridge.errors import WorkflowFailed
    from cratebridge.pipeline import run as run_crate

    tool = load_tool(options.tool)
    job = load_job(options.job, tool)
    outdir = options.outdir.absolute()
    outdir.mkdir(parents=True, exist_ok=True)
    result = outdir / RESULT_FOLDER
    if result.exists():
        shutil.rmtree(result)
    scratch = Path(tempfile.mkdtemp(prefix="cratebridge-cwl-runner-"))
    try:
        request = write_request(tool, job, scratch / "request")
        for note in request.not_evaluated:
            print(f"cratebridge-cwl-runner: {note}", file=sys.stderr)
        cfg = _config(options, scratch / "runs")
        outcome = run_crate(request.folder, result, engine=options.engine, config=cfg,
                            progress=None if options.quiet else _progress)
        if outcome.status is not RunStatus.COMPLETED:
            error = WorkflowFailed(outcome.record.error or "the workflow failed",
                                   result_path=str(outcome.result))
            match = _ENGINE_EXIT.match(outcome.record.error or "")
            if match and int(match.group(1)) == EXIT_UNSUPPORTED:
                error.exit_code = EXIT_UNSUPPORTED
            raise error
        output = _output_object(outcome)
        _check_recorded(output, outcome.record.outputs)
        return _deliver(output, outcome.run_dir / "outputs", outdir)
    finally:
        if options.keep_run:
            print(f"cratebridge-cwl-runner: request crate and run folder kept in {scratch}",
                  file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _progress(event: ProgressEvent) -> None:
    print(f"[step {event.step}] {event.kind}" + (f": {event.detail}" if event.detail else ""),
          file=sys.stderr)


def _output_object(outcome: Any) -> dict[str, Any]:
    for log in outcome.record.logs:
        if log.name.endswith("output object"):
            text = log.path.read_text() or "{}"
            data = json.loads(text)
            if isinstance(data, dict):
                return data
    raise CratebridgeError("the engine wrote no output object", where=str(outcome.run_dir))


def _check_recorded(output: dict[str, Any], recorded: Iterable[Any]) -> None:
    """Every output file must be in the run record, so in the result crate: nothing is lost."""
    kept = [Path(r.path).resolve() for r in recorded if isinstance(r, FileRecord)]
    for path in paths_in([output[k] for k in output]):
        real = path.resolve()
        if not any(real == k or k in real.parents for k in kept):
            raise CratebridgeError(f"output {path} is missing from the run record and so "
                                   "from the result crate", where=str(path))


def _deliver(output: dict[str, Any], produced: Path, outdir: Path) -> dict[str, Any]:
    """Move the outputs into ``outdir`` and point the output object at them."""
    if produced.is_dir():
        for entry in sorted(produced.iterdir()):
            target = outdir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            shutil.move(str(entry), str(target))
    old, new = str(produced.resolve()), str(outdir.resolve())

    def moved(value: Any) -> Any:
        if isinstance(value, list):
            return [moved(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: moved(v) for k, v in value.items()}
        if value.get("class") in ("File", "Directory"):
            for key in ("location", "path"):
                text = value.get(key)
                if isinstance(text, str):
                    out[key] = _moved_path(text, old, new)
        return out

    return {k: moved(v) for k, v in output.items()}


def _moved_path(text: str, old: str, new: str) -> str:
    uri = text.startswith("file://")
    path = local_path(text) if uri else Path(text)
    try:
        rel = path.resolve().relative_to(old)
    except ValueError:
        return text
    target = Path(new) / rel
    return target.as_uri() if uri else str(target)


# -- the command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cratebridge-cwl-runner",
        description="Run a CWL tool or workflow as a cratebridge request crate; print the "
                    "output object. The result crate is kept in OUTDIR/" + RESULT_FOLDER)
    parser.add_argument("--outdir", type=Path, default=Path.cwd(),
                        help="where the outputs go (default: the current folder)")
    parser.add_argument("--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("--engine", choices=("cwltool", "toil"), default=None,
                        help="the CWL engine (default: the configuration's, else cwltool)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the operator's cratebridge.toml (default: $CRATEBRIDGE_CONFIG)")
    parser.add_argument("--default-container", default=None, metavar="IMAGE",
                        help="local image for tools with no DockerRequirement")
    parser.add_argument("--keep-run", action="store_true",
                        help="keep the request crate and run folder (path printed on stderr)")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("tool", metavar="TOOL", help="the CWL document (a fragment may follow #)")
    parser.add_argument("job", metavar="JOB", nargs="?", default=None,
                        help="the input object (YAML or JSON)")
    return parser


def _version() -> str:
    version = installed_version("cratebridge-cwl")
    return f"cratebridge-cwl-runner {version}" if version else \
        "cratebridge-cwl-runner (not installed)"


def main(argv: list[str] | None = None) -> int:
    """The console script: errors become messages on stderr and exit codes, here only."""
    args = _parser().parse_args(argv)
    options = RunnerOptions(
        tool=args.tool, job=args.job, outdir=args.outdir, quiet=args.quiet,
        engine=args.engine, config=args.config, default_container=args.default_container,
        keep_run=args.keep_run)
    try:
        output = run(options)
    except CratebridgeError as exc:
        print(f"cratebridge-cwl-runner: {exc}", file=sys.stderr)
        result_path = getattr(exc, "result_path", None)
        if result_path:
            print(f"cratebridge-cwl-runner: result crate at {result_path}", file=sys.stderr)
        return exc.exit_code
    json.dump(output, sys.stdout, indent=4)
    sys.stdout.write("\n")
    return 0


def console() -> NoReturn:
    """The ``cratebridge-cwl-runner`` command: :func:`main`, then the process ends at once."""
    leave(main())


if __name__ == "__main__":
    console()
