"""Shared helpers for the benchmark scripts: timing, medians, verdicts, machine facts.

Every figure is a ratio against a baseline measured in the same run, with the
two alternated, because the machine is shared and its speed drifts.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable


class CannotMeasure(Exception):
    """The benchmark could not take its measurement (a tool missing, a run failing)."""


def timed_run(argv: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> float:
    """Wall seconds of one run of ``argv``; :class:`CannotMeasure` when it fails."""
    return measured_run(argv, env=env, cwd=cwd)[0]


#: cgroup v1's CPU accounting; every process a run starts stays in its group, however far
#: it is reparented (a room's processes, a reaper)
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def measured_run(argv: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of ``argv``; :class:`CannotMeasure`
    when it fails.

    CPU counts every process of the run, in a cgroup of its own where the machine
    allows one (else the processes it waited for). Docker's daemon and the
    containers are in Docker's own groups: in neither figure.
    """
    group = _cpu_group()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(list(argv), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False,
                          preexec_fn=None if group is None else _joiner(group))
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise CannotMeasure(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{tail}")
    if group is not None:
        cpu = int((group / "cpuacct.usage").read_text()) / 1e9
        try:
            group.rmdir()
        except OSError:  # a process of the run still lives (a reaper finishing): leave it
            pass
        return elapsed, cpu
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _cpu_group() -> Path | None:
    try:
        group = CPUACCT / f"cratebridge-bench-{os.getpid()}-{time.monotonic_ns()}"
        group.mkdir()
    except OSError:
        return None
    return group


def _joiner(group: Path) -> Callable[[], None]:
    def join() -> None:  # in the child, before it runs the program
        (group / "cgroup.procs").write_text(str(os.getpid()))

    return join


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(met: bool, what: str) -> str:
    return f"TARGET {'MET' if met else 'MISSED'}: {what}"


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def compile_sources() -> None:
    """Byte-compile the project's own modules, as installing its wheels does.

    The checkout is installed editable, so with ``PYTHONDONTWRITEBYTECODE`` set
    (or a read-only tree) every run, and every engine room, would compile
    cratebridge from source: about 0.3 s a process that no installed
    cratebridge pays, while the engines' own packages come compiled.
    """
    folders = [ROOT / "src", *sorted((ROOT / "plugins").glob("*/src"))]
    done = subprocess.run([PYTHON, "-m", "compileall", "-q", *map(str, folders)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise CannotMeasure(f"compileall failed: {done.stderr.decode(errors='replace')[-500:]}")


def main_guard(run: object) -> None:
    """Compile the sources; run ``run()``; exit 2 with the reason when it cannot measure."""
    try:
        compile_sources()
        code = run()  # type: ignore[operator]
    except CannotMeasure as exc:
        print(f"CANNOT MEASURE: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
