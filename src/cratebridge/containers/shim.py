"""``cratebridge-docker``: the ``docker`` every engine sees during a run.

It forwards harmless commands (``inspect``, ``ps``, ``version``, ``kill``...) to
the real client by becoming it, refuses anything that would fetch or build an
image, and hands every ``docker run`` to :mod:`cratebridge.containers.hardening`.
Engines call it several times per step, so the pass-through path imports next
to nothing.
"""

from __future__ import annotations

import json
import os
import sys

SANDBOX_ENV = "CRATEBRIDGE_SANDBOX"

#: docker commands never allowed during a run: nothing is fetched, built or published.
REFUSED = frozenset({"pull", "push", "build", "buildx", "load", "import", "login", "commit",
                     "save", "plugin", "swarm", "compose", "context"})

__all__ = ["REFUSED", "SANDBOX_ENV", "main"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    settings = os.environ.get(SANDBOX_ENV)
    if not settings:
        print("cratebridge-docker: CRATEBRIDGE_SANDBOX is not set; this shim runs only "
              "inside a cratebridge run", file=sys.stderr)
        return 125
    with open(settings, encoding="utf-8") as handle:
        text = handle.read()
    command = next((a for a in args if not a.startswith("-")), "")
    if command == "run" or command in REFUSED or (command == "image" and "pull" in args):
        return _guarded(args, command, text)
    # Become the real client: an engine that kills "docker stats" or "docker wait"
    # must kill the process that holds its pipes, not a parent of it.
    docker = str(json.loads(text)["docker"])
    os.execv(docker, [docker, *args])


def _guarded(args: list[str], command: str, settings: str) -> int:
    from cratebridge.containers.hardening import Refused, ledger, now, run
    from cratebridge.containers.sandbox import Sandbox

    sandbox = Sandbox.from_json(settings)
    try:
        if command in REFUSED or command == "image":
            raise Refused(f"'docker {command}' is not allowed inside a cratebridge run: "
                          "images are never fetched or built during a run")
        return run(args[args.index("run") + 1:], sandbox)
    except Refused as refused:
        print(f"cratebridge-docker: refused: {refused}", file=sys.stderr)
        ledger(sandbox, {"refused": str(refused), "argv": args, "time": now()})
        return 125


if __name__ == "__main__":
    sys.exit(main())
