"""Reading a CWL workflow at plan time, in the run's room (``python -m cratebridge_cwl.inspect``).

Loading a CWL document evaluates the submitter's references (and, with
validation, expressions), so the engine's ``plan`` runs this in the room
(:func:`cratebridge.engines.process.confined_report`) rather than in
cratebridge's own process. It prints one JSON line: the workflow's class,
version, inputs and steps, or the error. With ``--hold`` it then waits to
become the engine of the run (:mod:`cratebridge.engines.held`), so cwltool
and the workflow are loaded once.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from cratebridge.engines.held import serve
from cratebridge.engines.process import print_report
from cratebridge.leaving import leave

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cratebridge_cwl.inspect")
    parser.add_argument("--root", type=Path, action="append", required=True,
                        help="a folder the workflow's references may point into")
    parser.add_argument("--hold", action="store_true",
                        help="after the report, wait to become the engine of the run")
    parser.add_argument("workflow", type=Path)
    opts = parser.parse_args(argv)
    try:
        from cratebridge_cwl.workflow import load_workflow

        workflow = load_workflow(opts.workflow, roots=tuple(opts.root))
    except Exception as exc:  # reported as data: the host raises it as a crate error
        return print_report(None, exc)
    described = asdict(workflow)
    described["path"] = str(workflow.path)
    print_report(described, None)
    return serve() if opts.hold else 0


if __name__ == "__main__":
    leave(main())  # after the run, when the reader became the engine
