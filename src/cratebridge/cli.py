"""The command line: argument parsing, output and exit codes, and nothing else.

Library errors become exit codes here and only here (see :mod:`cratebridge.errors`).
Importing this module imports no engine: each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from cratebridge.errors import CratebridgeError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cratebridge",
        description="Run research workflows from Five Safes RO-Crates inside a TRE.",
        epilog="Exit codes: 0 success, 1 workflow failed (result crate written), 2 usage, "
               "3 crate rejected, 4 refused by policy, 5 engine unavailable.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a request crate and write the result crate")
    run.add_argument("crate", type=Path, help="request crate: a .zip or a folder")
    run.add_argument("--out", type=Path, required=True,
                     help="where to write the result crate: a folder, or a file ending .zip")
    _common(run, engine=True)

    plan = sub.add_parser("plan", help="dry run: validate, bind inputs, show the engine command")
    plan.add_argument("crate", type=Path)
    _common(plan, engine=True)

    validate = sub.add_parser("validate", help="check a request or result crate")
    validate.add_argument("crate", type=Path)
    _common(validate, engine=False)

    engines = sub.add_parser("engines", help="list the installed engine plugins")
    _common(engines, engine=False)

    cleanup = sub.add_parser("cleanup", help="remove containers left by killed runs")
    cleanup.add_argument("--all", action="store_true",
                         help="also remove containers of runs still in progress")
    _common(cleanup, engine=False)
    return parser


def _common(parser: argparse.ArgumentParser, *, engine: bool) -> None:
    if engine:
        parser.add_argument("--engine", help="engine plugin to use (default: by language)")
    parser.add_argument("--config", type=Path, help="operator configuration (TOML)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout; messages go to stderr")


def _emit(doc: dict[str, Any], as_json: bool, human: Callable[[], str]) -> None:
    if as_json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(human())


def _progress_printer(stream: TextIO) -> Callable[[Any], None]:
    def show(event: Any) -> None:
        mark = {"started": "▶", "finished": "✔", "failed": "✘"}.get(event.kind, "·")
        stream.write(f"{mark} {event.step} {event.kind} {event.detail}".rstrip() + "\n")
        stream.flush()
    return show


def _cmd_run(args: argparse.Namespace) -> int:
    from cratebridge import api

    progress = _progress_printer(sys.stderr) if sys.stderr.isatty() else None
    outcome = api.run(args.crate, args.out, engine=args.engine, config=args.config,
                      progress=progress)
    doc = api.describe_run(outcome)

    def human() -> str:
        lines = [f"{outcome.status.value}: result crate written to {outcome.result}",
                 f"run folder: {outcome.run_dir}",
                 f"steps: {len(outcome.record.steps)}"]
        if outcome.record.error:
            lines.append(f"error: {outcome.record.error}")
        return "\n".join(lines)

    _emit(doc, args.json, human)
    return outcome.exit_code


def _cmd_plan(args: argparse.Namespace) -> int:
    from cratebridge import api

    outcome = api.plan(args.crate, engine=args.engine, config=args.config)
    doc = api.describe_plan(outcome)

    def human() -> str:
        d = doc
        lines = [f"engine: {d['engine']} ({d['engine_version']})",
                 f"language: {d['language']}", f"workflow: {d['workflow']['main_file']}",
                 *(f"note: {n}" for n in d["notes"]),
                 "inputs:", *(f"  {k} = {json.dumps(v)}" for k, v in d["inputs"].items()),
                 "images:", *(f"  {i['image']} [{'present' if i['present'] else 'MISSING'}] "
                              f"{i['image_id'] or ''} steps: {', '.join(i['steps'])}"
                              for i in d["images"]),
                 "steps: " + ", ".join(d["steps"]),
                 "command:", "  " + shlex.join(d["command"]),
                 "environment:", *(f"  {k}={v}" for k, v in d["env"].items())]
        for name, content in d["files"].items():
            lines += [f"file {name}:", *(f"  {line}" for line in content.splitlines())]
        return "\n".join(lines)

    _emit(doc, args.json, human)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from cratebridge import api

    report = api.validate(args.crate)
    doc = report.to_json()

    def human() -> str:
        head = f"{report.kind}: {'valid' if report.ok else 'INVALID'} ({args.crate})"
        return "\n".join([head, *(f"  - {p}" for p in report.problems)])

    _emit(doc, args.json, human)
    return 0 if report.ok else 3


def _cmd_engines(args: argparse.Namespace) -> int:
    from cratebridge import api

    engines = api.engines(config=args.config)

    def human() -> str:
        rows = []
        for e in engines:
            found = f"{e['program']} {e['program_version']}" if e["available"] \
                else f"NOT AVAILABLE: {e['problem']}"
            rows.append(f"{e['name']:<10} {e['language'] or '?':<10} "
                        f"{e['distribution']} {e['version']}  {found}")
        return "\n".join(rows) or "no engine plugins installed"

    _emit({"engines": engines}, args.json, human)
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from cratebridge import api

    removed = api.cleanup(everything=args.all, config=args.config)
    _emit({"removed": removed}, args.json,
          lambda: f"removed {len(removed)} container(s)" if removed else "nothing to remove")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run, "plan": _cmd_plan, "validate": _cmd_validate,
    "engines": _cmd_engines, "cleanup": _cmd_cleanup,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args)
    except CratebridgeError as err:
        if getattr(args, "json", False):
            json.dump(err.to_json(), sys.stdout, indent=2)
            sys.stdout.write("\n")
        print(f"cratebridge: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("cratebridge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
