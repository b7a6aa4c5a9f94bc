"""The ``cratebridge`` command line's grammar: its commands, options and help texts.

:mod:`cratebridge.cli` parses with it and runs the command; a usage error is a
:class:`~cratebridge.errors.UsageError`, so that it gets the documented exit code
(and one JSON document under ``--json``) like every other error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from cratebridge import __version__
from cratebridge.engines.interface import INTERFACE_VERSION
from cratebridge.errors import UsageError

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are a :class:`UsageError` (one JSON document under --json)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, where=self.prog)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``cratebridge``'s command line: every command, option and help text."""
    parser = _Parser(
        prog="cratebridge",
        description="Run research workflows from Five Safes RO-Crates inside a TRE.",
        epilog="Exit codes: 0 success, 1 workflow failed or stopped (result crate written), "
               "2 usage, 3 crate rejected, 4 refused by policy, 5 engine unavailable, "
               "6 internal error or no result crate could be written (the message names the "
               "log), 7 verify: the re-run's outputs differ from the recorded ones, "
               "130 interrupted before a run began.",
    )
    parser.add_argument("--version", action="version",
                        version=f"cratebridge {__version__} (plugin interface "
                                f"{INTERFACE_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a request crate and write the result crate")
    run.add_argument("crate", type=Path, help="request crate: a .zip or a folder")
    run.add_argument("--out", type=Path, required=True,
                     help="where to write the result crate: a folder, or a file ending .zip")
    run.add_argument("--events", metavar="FILE",
                     help="write the run's events as JSON lines to FILE ('-': standard output)")
    run.add_argument("--run-id", help="the run's id (default: a new one); names its folder")
    run.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                     help="a label kept in the result crate (repeatable)")
    _common(run, engine=True)

    plan = sub.add_parser("plan", help="dry run: validate, bind inputs, show the engine command")
    plan.add_argument("crate", type=Path)
    _common(plan, engine=True)

    verify = sub.add_parser(
        "verify", help="re-run a result crate's request and compare outputs with the record",
        description="Rebuild the request of the result crate RESULT, run it again with the "
                    "same inputs and images, and compare every output with its recorded "
                    "sha512 and every step's image id with the recorded one.",
        epilog="Exit codes: 0 every output identical; 7 an output is different, missing or "
               "extra, or a step's image changed; 1 the re-run failed; 2 usage; 3 RESULT is "
               "not an intact result crate of a Five Safes request; 4 refused by policy; "
               "5 engine unavailable; 6 internal error. Without --out the re-run's result "
               "crate is written in the verify folder (runs_dir/verify-ID), removed when "
               "everything is identical and kept otherwise.")
    verify.add_argument("result", type=Path, metavar="RESULT",
                        help="result crate: a .zip or a folder")
    verify.add_argument("--out", type=Path, metavar="PATH",
                        help="where to write the re-run's result crate: a folder, or a file "
                             "ending .zip (default: in the verify folder)")
    _common(verify, engine=True)

    validate = sub.add_parser("validate", help="check a request or result crate")
    validate.add_argument("crate", type=Path)
    _common(validate, engine=False)

    engines = sub.add_parser("engines", help="list the installed engine plugins")
    _common(engines, engine=False)

    version = sub.add_parser("version", help="versions: core, plugin interface, plugins, "
                                             "engines")
    _common(version, engine=False)

    cleanup = sub.add_parser("cleanup", help="remove what killed runs of the runs folder "
                                             "left: containers, pinned mounts")
    cleanup.add_argument("--all", action="store_true",
                         help="also remove containers of this runs folder's runs still in "
                              "progress (never another runs folder's)")
    _common(cleanup, engine=False)

    config = sub.add_parser("config", help="check the operator configuration, or show it")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="load a configuration file and say whether it "
                                             "is valid (exit 0) or what is wrong (exit 2)")
    check.add_argument("file", type=Path, help="the operator configuration (TOML)")
    check.add_argument("--json", action="store_true",
                       help="print one JSON document: the effective settings, or the error")
    show = actions.add_parser("show", help="print the effective settings, defaults included")
    _common(show, engine=False)
    _images_parser(sub)
    serve = sub.add_parser(
        "serve", help="serve GA4GH WES 1.1 over HTTP: runs go through this same pipeline",
        description="A Workflow Execution Service (GA4GH WES 1.1) for TRE agents that speak "
                    "HTTP: request crates are submitted as workflow attachments, queued, and "
                    "run as `cratebridge run` would; see docs/service.md. Logs go to stderr; "
                    "SIGTERM or SIGINT stops it (running runs are stopped and end with a "
                    "failed result crate; queued runs run at the next start).")
    serve.add_argument("--config", type=Path, help="operator configuration (TOML), its "
                                                   "[service] section above all")
    serve.add_argument("--host", help="address to listen on (default: [service] host)")
    serve.add_argument("--port", type=int, help="TCP port (default: [service] port)")
    return parser


def _images_parser(sub: Any) -> None:
    images = sub.add_parser(
        "images", help="list or build the demo and test images (nothing is pulled)",
        description="The images the demo and the tests use, built locally from Debian's "
                    "files with Docker: nothing is pulled from a registry. The python "
                    "image runs debootstrap (as root, minutes) against $DEBIAN_MIRROR "
                    "(default http://deb.debian.org/debian).",
        epilog="Exit codes: 0 done; 1 a build command failed; 2 usage (an unknown image); "
               "5 Docker, or a file a recipe needs (the message names the Debian package), "
               "is missing.")
    actions = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    for action, text in (("list", "each image: what it needs, present or not, its local id"),
                         ("build", "build the missing images (all, or those named)")):
        cmd = actions.add_parser(action, help=text)
        cmd.add_argument("names", nargs="*", metavar="NAME",
                         help="an image (e.g. cratebridge/busybox:1); default: all")
        if action == "build":
            cmd.add_argument("--force", action="store_true",
                             help="rebuild even when the image is present")
        cmd.add_argument("--tag-prefix", default="", metavar="PREFIX",
                         help="put PREFIX before every tag (e.g. test/), leaving the "
                              "images in use alone")
        cmd.add_argument("--json", action="store_true",
                         help="print one JSON document on stdout; messages go to stderr")


def _common(parser: argparse.ArgumentParser, *, engine: bool) -> None:
    if engine:
        parser.add_argument("--engine", help="engine plugin to use (default: by language)")
    parser.add_argument("--config", type=Path, help="operator configuration (TOML)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout; messages go to stderr")
