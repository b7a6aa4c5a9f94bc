"""cratebridge-cwl-runner against bare cwltool over a slice of the CWL v1.2 conformance suite.

The suite is checked out from outside, never committed (``fetch`` of
common-workflow-language/cwl-v1.2): its folder is the argument, or
``$CWL_SUITE``. Each round runs ``scripts/run-cwl-conformance SUITE --only bare``,
the same with ``--bare-default-container``, and ``--only cratebridge`` (the order
turning each round) over the same tests (``--tests``, cwltest's ``-n``), one test at
a time; each figure is the median ratio of whole runs' wall times, with their CPU
(every process of the run, cwltest's included, in a cgroup of its own).

Two baselines, both reported. Bare cwltool as the suite runs it executes a tool
with no ``DockerRequirement`` on the host; cratebridge runs every step in a
container (a TRE's rule), so for such a tool it does more work: a container start
and cwltool's own wait on a container (it looks for the container's id after a
second). Bare cwltool with ``--default-container`` (cratebridge's default image)
does the same work as cratebridge: the ratio against it is the layer's own cost,
and the target is judged on it. All three should pass the same tests (a warning
names any difference: its times do not compare like with like).
Target (issue 17): at most 1.1x bare cwltool's time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from _common import ROOT, CannotMeasure, env_with, main_guard, measured_run, median, verdict

TARGET = 1.1
SCRIPT = ROOT / "scripts" / "run-cwl-conformance"
#: Each runner: its arguments to the script, and the name of its cwltest report.
RUNNERS = {
    "bare": (["--only", "bare"], "cwltool"),
    "bare-contained": (["--only", "bare", "--bare-default-container"], "cwltool"),
    "cratebridge": (["--only", "cratebridge"], "cratebridge"),
}
BASELINES = {"bare-contained": "bare cwltool --default-container (the same containers)",
             "bare": "bare cwltool as the suite runs it (no container for a tool "
                     "without DockerRequirement)"}


def _passed(report: Path) -> set[str]:
    if not report.is_file():
        raise CannotMeasure(f"no cwltest report {report}")
    passed = set()
    for case in ET.parse(report).getroot().iter("testcase"):
        if not any(case.find(kind) is not None for kind in ("failure", "error", "skipped")):
            passed.add(case.get("name", "?"))
    return passed


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default=os.environ.get("CWL_SUITE"),
                        help="the CWL v1.2 suite's folder (default $CWL_SUITE)")
    parser.add_argument("--tests", default="1-40", help="cwltest -n: which tests (1-40)")
    parser.add_argument("--pairs", type=int, default=2, help="rounds of the three runners (2)")
    args = parser.parse_args()
    if not args.suite or not (Path(args.suite) / "conformance_tests.yaml").is_file():
        raise CannotMeasure("no CWL v1.2 suite: give its folder or set $CWL_SUITE "
                            "(fetch common-workflow-language/cwl-v1.2)")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNNERS}
    passed: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory(prefix="cwl-suite-bench-") as tmp:
        for round_ in range(args.pairs):
            turn = round_ % len(RUNNERS)
            order = list(RUNNERS)[turn:] + list(RUNNERS)[:turn]
            for name in order:
                extra, report = RUNNERS[name]
                out = Path(tmp) / f"{name}-{round_}"
                wall, cpu = measured_run(
                    [str(SCRIPT), args.suite, *extra, "-j", "1", "-n", args.tests],
                    env=env_with(OUT=str(out)))
                times[name].append((wall, cpu))
                passed.setdefault(name, _passed(out / f"{report}.xml"))
                print(f"round {round_ + 1} {name}: {wall:.1f} s wall, {cpu:.1f} CPU-s",
                      flush=True)
    for name in BASELINES:
        if passed[name] != passed["cratebridge"]:
            differ = sorted(passed[name] ^ passed["cratebridge"])
            print(f"WARNING: {name} and cratebridge passed different tests "
                  f"({', '.join(differ)}); the times compare unlike runs of those")
    count = len(passed["cratebridge"])
    ours_wall = median([w for w, _ in times["cratebridge"]])
    ours_cpu = median([c for _, c in times["cratebridge"]])
    print(f"tests {args.tests}: {count} passed through cratebridge-cwl-runner, "
          f"{ours_wall:.1f} s, {ours_cpu:.1f} CPU-s (median of {args.pairs})")
    ratio = {}
    for name, label in BASELINES.items():
        ratios = [c[0] / b[0] for b, c in zip(times[name], times["cratebridge"], strict=True)]
        ratio[name] = median(ratios)
        wall = median([w for w, _ in times[name]])
        cpu = median([c for _, c in times[name]])
        print(f"against {label}: {wall:.1f} s, {cpu:.1f} CPU-s; ratios "
              f"{', '.join(f'{r:.2f}' for r in ratios)}, median {ratio[name]:.2f}; "
              f"+{(ours_wall - wall) / max(count, 1):.2f} s and "
              f"+{(ours_cpu - cpu) / max(count, 1):.2f} CPU-s a test")
    print(verdict(ratio["bare-contained"] <= TARGET,
                  f"median ratio {ratio['bare-contained']:.2f} (<= {TARGET}) against bare "
                  f"cwltool in the same containers over {count} tests (against bare cwltool "
                  f"as the suite runs it: {ratio['bare']:.2f})"))
    return 0


if __name__ == "__main__":
    main_guard(run)
