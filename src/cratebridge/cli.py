"""The command line: each command's output and exit code, and nothing else.

Its grammar (commands, options, help) is :mod:`cratebridge.cli_parser`.

Library errors become exit codes here and only here (see :mod:`cratebridge.errors`).
Importing this module imports no engine: each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from cratebridge.cli_parser import build_parser
from cratebridge.errors import CratebridgeError, InternalError, Interrupted, UsageError
from cratebridge.leaving import leave

__all__ = ["console", "main"]


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


def _labels(given: list[str]) -> dict[str, str]:
    labels = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"a label is KEY=VALUE, not {item!r}", where="--label")
        labels[key] = value
    return labels


def _cmd_run(args: argparse.Namespace) -> int:
    from cratebridge import api
    from cratebridge.events import EventLog

    if args.events == "-" and args.json:
        raise UsageError("--events - and --json both want standard output; give --events a "
                         "file", where="--events")
    progress = _progress_printer(sys.stderr) if sys.stderr.isatty() else None
    stream: TextIO | None = None
    if args.events == "-":
        stream = sys.stdout
    elif args.events:
        try:
            stream = open(args.events, "a", encoding="utf-8")  # closed below
        except OSError as exc:
            raise UsageError(f"cannot write the events: {exc.strerror}",
                             where=args.events) from None
    try:
        outcome = api.run(args.crate, args.out, engine=args.engine, config=args.config,
                          progress=progress, events=EventLog(stream) if stream else None,
                          run_id=args.run_id, labels=_labels(args.label))
    finally:
        if stream is not None and stream is not sys.stdout:
            stream.close()
    if args.events == "-":
        return outcome.exit_code
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


def _cmd_verify(args: argparse.Namespace) -> int:
    from cratebridge import api

    progress = _progress_printer(sys.stderr) if sys.stderr.isatty() else None
    outcome = api.verify(args.result, args.out, engine=args.engine, config=args.config,
                         progress=progress)

    def human() -> str:
        lines = [f"{o.status.value:<10} {o.path}" for o in outcome.outputs]
        lines += [f"image      step {i.step}: {i.image} was {i.recorded_id}, now {i.new_id}"
                  for i in outcome.images]
        counts = {s: sum(o.status.value == s for o in outcome.outputs)
                  for s in ("identical", "different", "missing", "extra")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        changed = f", {len(outcome.images)} image(s) changed" if outcome.images else ""
        lines.append(f"{outcome.status.value}: {summary or 'no outputs'}{changed}")
        if outcome.rerun.record.error:
            lines.append(f"re-run error: {outcome.rerun.record.error}")
        if outcome.rerun_result:
            lines.append(f"re-run result crate: {outcome.rerun_result}")
        if outcome.kept:
            lines.append(f"verify folder kept: {outcome.kept}")
        return "\n".join(lines)

    _emit(outcome.to_json(), args.json, human)
    return outcome.exit_code


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


def _cmd_version(args: argparse.Namespace) -> int:
    from cratebridge import api

    doc = api.versions(config=args.config)

    def human() -> str:
        lines = [f"cratebridge {doc['cratebridge']} (plugin interface {doc['interface']})",
                 f"python {doc['python']}",
                 f"docker client in the rooms: {doc['docker_client']}" if doc["docker_client"]
                 else "docker client in the rooms: Python (make client compiles a faster one)"]
        for e in doc["engines"]:
            found = f"{e['program']} {e['program_version']}" if e["available"] \
                else "engine not available"
            lines.append(f"{e['name']}: {e['distribution']} {e['version']}, {found}")
        return "\n".join(lines)

    _emit(doc, args.json, human)
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from cratebridge import api

    removed = api.cleanup(everything=args.all, config=args.config)
    doc = {"removed": list(removed.containers), "mounts": list(removed.mounts),
           "left": list(removed.left)}

    def human() -> str:
        if not removed:
            return "nothing to remove"
        return (f"removed {len(removed.containers)} container(s), released "
                f"{len(removed.mounts)} pinned mount(s)")

    _emit(doc, args.json, human)
    if removed.left:
        print(f"cratebridge: warning: docker did not remove {len(removed.left)} container(s) "
              f"in time: {', '.join(removed.left)}; run cleanup again later", file=sys.stderr)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from cratebridge.config import describe, load_config

    path = args.file if args.config_command == "check" else args.config
    settings = describe(load_config(path))  # the same loading as a run: errors exit 2
    if args.config_command == "check":
        _emit({"valid": True, "config": settings}, args.json, lambda: f"{path}: valid")
    else:
        _emit({"config": settings}, args.json, lambda: _as_toml(settings))
    return 0


def _cmd_images(args: argparse.Namespace) -> int:
    from cratebridge import images

    docker = images.docker_client()
    if args.images_command == "list":
        rows = images.status(docker, args.names, prefix=args.tag_prefix)

        def listing() -> str:
            lines = []
            for r in rows:
                needs = ", ".join(f"{n.what} ({n.package}{'' if n.found() else ', MISSING'})"
                                  for n in r.needs)
                lines.append(f"{r.tag:<28} {'present' if r.present else 'MISSING':<8} "
                             f"{(r.image_id or '-')[:19]:<19}  needs: {needs}")
            return "\n".join(lines)

        _emit({"images": [r.to_json() for r in rows]}, args.json, listing)
        return 0

    def say(message: str) -> None:
        print(f"cratebridge: {message}", file=sys.stderr, flush=True)

    built = images.build(docker, args.names, force=args.force, prefix=args.tag_prefix,
                         progress=say)
    _emit({"images": [b.to_json() for b in built]}, args.json,
          lambda: "\n".join(f"{b.tag}: {b.action}" + (f" (also {', '.join(b.aliases)})"
                                                        if b.aliases else "")
                            for b in built))
    return 0


def _as_toml(settings: dict[str, dict[str, Any]]) -> str:
    """Effective settings shown as TOML (an unset key as a comment)."""
    def key(name: str) -> str:
        return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)

    lines: list[str] = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        for name, value in values.items():
            if name not in tables:
                lines.append(f"# {key(name)} is not set" if value is None
                             else f"{key(name)} = {_toml_value(value)}")
        for name, table in tables.items():
            lines.append(f"[{section}.{key(name)}]")
            lines += [f"{key(k)} = {json.dumps(v, default=str)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines).rstrip()


def _toml_value(value: Any) -> str:
    """A value as TOML writes it: JSON's scalars and lists, and inline tables."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def _cmd_serve(args: argparse.Namespace) -> int:
    from cratebridge.service.app import serve

    log = logging.getLogger("cratebridge.service")
    log.setLevel(logging.INFO)
    return serve(args.config, args.host, args.port)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run, "plan": _cmd_plan, "validate": _cmd_validate, "verify": _cmd_verify,
    "engines": _cmd_engines, "cleanup": _cmd_cleanup, "config": _cmd_config,
    "version": _cmd_version, "images": _cmd_images, "serve": _cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(given)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    except UsageError as err:  # one JSON document under --json, as for every error
        if "--json" not in given:
            parser.print_usage(sys.stderr)
        return _fail(err, argparse.Namespace(json="--json" in given))
    threading.excepthook = _thread_failed
    _warnings_to_stderr()
    try:
        return COMMANDS[args.command](args)
    except CratebridgeError as err:
        return _fail(err, args)
    except BrokenPipeError:  # the reader went away (``| head``): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (KeyboardInterrupt, Interrupted) as stop:
        print(f"cratebridge: interrupted{': ' + str(stop) if str(stop) else ''}",
              file=sys.stderr)
        return 130
    except Exception as exc:  # no traceback reaches a user: it goes to a log
        from cratebridge.crashlog import write_traceback

        log = write_traceback(exc)
        return _fail(InternalError(f"internal error: {type(exc).__name__}: {exc}",
                                   log=str(log) if log else None), args)


def _warnings_to_stderr() -> None:
    """What the library logs as a warning is one line on stderr."""
    log = logging.getLogger("cratebridge")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("cratebridge: %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)


def _thread_failed(hook: threading.ExceptHookArgs) -> None:
    """A helper thread that failed: one line here, its traceback in a log."""
    if hook.exc_type is SystemExit or hook.exc_value is None:
        return
    from cratebridge.crashlog import write_traceback

    log = write_traceback(hook.exc_value)
    name = hook.thread.name if hook.thread is not None else "a thread"
    print(f"cratebridge: warning: {name} failed: {hook.exc_type.__name__}: {hook.exc_value}"
          + (f" (details: {log})" if log else ""), file=sys.stderr)


def _fail(err: CratebridgeError, args: argparse.Namespace) -> int:
    """Report ``err`` on one line (and as JSON with ``--json``); its exit code."""
    if getattr(args, "json", False):
        try:
            json.dump(err.to_json(), sys.stdout, indent=2)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    message = " ".join(str(err).split())  # one line, whatever the message holds
    print(f"cratebridge: error: {message}", file=sys.stderr)
    return err.exit_code


def console() -> NoReturn:
    """The ``cratebridge`` command: :func:`main`, then the process ends at once."""
    leave(main())


if __name__ == "__main__":
    console()
