"""Shared helpers for the benchmark scripts: timing, medians, verdicts, machine facts.

Every figure is a ratio against a baseline measured in the same run, with the
two alternated, because the machine is shared and its speed drifts.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable


class CannotMeasure(Exception):
    """The benchmark could not take its measurement (a tool missing, a run failing)."""


def timed_run(argv: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> float:
    """Wall seconds of one run of ``argv``; :class:`CannotMeasure` when it fails."""
    start = time.perf_counter()
    done = subprocess.run(list(argv), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise CannotMeasure(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{tail}")
    return elapsed


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(met: bool, what: str) -> str:
    return f"TARGET {'MET' if met else 'MISSED'}: {what}"


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def main_guard(run: object) -> None:
    """Run ``run()``; exit 2 with the reason when it cannot measure, else its code."""
    try:
        code = run()  # type: ignore[operator]
    except CannotMeasure as exc:
        print(f"CANNOT MEASURE: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
