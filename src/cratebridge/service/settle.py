"""Write the failed result crate of a run that ended without one (its server was killed).

``python -m cratebridge.service.settle REQUEST OUT REASON [--config F] [--engine E]``
runs the request through the same pipeline as ``cratebridge run`` with a stop
already asked: intake, policy and the engine's plan happen, no engine starts,
and the pipeline writes a result crate with ``FailedActionStatus`` whose error
is ``REASON`` (and that the crate was written at the restart, without the
run's steps). Prints the ``--json`` document of ``cratebridge run``; exit
codes as ``cratebridge run``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cratebridge.api import describe_run
from cratebridge.engines.process import Stop
from cratebridge.errors import CratebridgeError
from cratebridge.pipeline import run

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cratebridge.service.settle")
    parser.add_argument("request", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("reason")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--engine")
    args = parser.parse_args(argv)
    stop = Stop()
    stop.request("the server's restart", before_start=f"{args.reason} (this crate was written "
                 "when the server restarted: the run's steps are not in it)")
    try:
        outcome = run(args.request, args.out, engine=args.engine, config=args.config,
                      stop=stop)
    except CratebridgeError as err:
        json.dump(err.to_json(), sys.stdout)
        print(f"cratebridge: error: {err}", file=sys.stderr)
        return err.exit_code
    json.dump(describe_run(outcome), sys.stdout, default=str)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
