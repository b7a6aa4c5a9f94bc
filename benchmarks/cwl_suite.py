"""cratebridge-cwl-runner against bare cwltool over a slice of the CWL v1.2 conformance suite.

The suite is checked out from outside, never committed (``fetch`` of
common-workflow-language/cwl-v1.2): its folder is the argument, or
``$CWL_SUITE``. Each round runs ``scripts/run-cwl-conformance SUITE --only
bare`` and then ``--only cratebridge`` (alternating which goes first) over the
same tests (``--tests``, cwltest's ``-n``), one test at a time; the figure is
the median ratio of the two whole runs' wall times, with their CPU (every
process of the run, cwltest's included, in a cgroup of its own). Both runners
should pass the same tests (a warning names any difference: its times do not
compare like with like).
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
RUNNERS = {"bare": "cwltool", "cratebridge": "cratebridge"}  # --only value: its report name


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
    parser.add_argument("--pairs", type=int, default=2, help="rounds of both runners (2)")
    args = parser.parse_args()
    if not args.suite or not (Path(args.suite) / "conformance_tests.yaml").is_file():
        raise CannotMeasure("no CWL v1.2 suite: give its folder or set $CWL_SUITE "
                            "(fetch common-workflow-language/cwl-v1.2)")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNNERS}
    passed: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory(prefix="cwl-suite-bench-") as tmp:
        for round_ in range(args.pairs):
            order = list(RUNNERS) if round_ % 2 == 0 else list(reversed(RUNNERS))
            for only in order:
                out = Path(tmp) / f"{only}-{round_}"
                wall, cpu = measured_run(
                    [str(SCRIPT), args.suite, "--only", only, "-j", "1", "-n", args.tests],
                    env=env_with(OUT=str(out)))
                times[only].append((wall, cpu))
                passed.setdefault(only, _passed(out / f"{RUNNERS[only]}.xml"))
                print(f"round {round_ + 1} {only}: {wall:.1f} s wall, {cpu:.1f} CPU-s",
                      flush=True)
    if passed["bare"] != passed["cratebridge"]:
        differ = sorted(passed["bare"] ^ passed["cratebridge"])
        print(f"WARNING: the runners passed different tests ({', '.join(differ)}); "
              "the times compare unlike runs of those")
    ratios = [c[0] / b[0] for b, c in zip(times["bare"], times["cratebridge"], strict=True)]
    bare_wall = median([w for w, _ in times["bare"]])
    ours_wall = median([w for w, _ in times["cratebridge"]])
    bare_cpu = median([c for _, c in times["bare"]])
    ours_cpu = median([c for _, c in times["cratebridge"]])
    count = len(passed["bare"])
    print(f"tests {args.tests}: {count} passed by both")
    print(f"bare cwltool {bare_wall:.1f} s, cratebridge-cwl-runner {ours_wall:.1f} s "
          f"(median of {args.pairs}); ratios {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"CPU: bare {bare_cpu:.1f} s, cratebridge {ours_cpu:.1f} s "
          f"(+{(ours_cpu - bare_cpu) / max(count, 1):.2f} CPU-s a test)")
    print(verdict(median(ratios) <= TARGET,
                  f"median ratio {median(ratios):.2f} (<= {TARGET}) over {count} tests"))
    return 0


if __name__ == "__main__":
    main_guard(run)
