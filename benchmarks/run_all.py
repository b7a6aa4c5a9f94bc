"""Runs every benchmark in turn and summarises TARGET MET / MISSED.

``--skip-intake`` leaves out the 1 GiB intake benchmark (it needs ~15 GiB of
/tmp and a few minutes); ``--quick`` runs each with fewer rounds;
``--cwl-suite DIR`` (or ``$CWL_SUITE``) adds the CWL conformance suite's ratio.
Exits non-zero only when a benchmark could not measure.

The intake runs second, before the benchmarks that create and delete tens of
thousands of files (the runs' folders, provenance at 10,000 steps): on a file
system like this machine's (ext4 without a journal), files created in the
minute after a mass deletion are slow to create, for ``cp -r`` as for the
intake, and the figure would measure the deletions (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-intake", action="store_true", help="leave out the 1 GiB intake")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (figures are rougher)")
    parser.add_argument("--cwl-suite", default=os.environ.get("CWL_SUITE"),
                        help="the CWL v1.2 suite's folder, checked out from outside "
                             "(default $CWL_SUITE; without it the suite's ratio is not run)")
    args = parser.parse_args()
    # (script, its arguments, and with --quick)
    runs = [
        ("startup.py", [], ["--rounds", "5"]),
        ("intake.py", [], ["--rounds", "1"]),
        ("overhead.py", [], ["--pairs", "3"]),
        ("overhead.py", ["--workload", "scatter", "--pairs", "2"],
         ["--workload", "scatter", "--pairs", "1", "--parts", "20"]),
        ("overhead.py", ["--workload", "toil", "--pairs", "3"],
         ["--workload", "toil", "--pairs", "1"]),
        ("overhead.py", ["--workload", "snakemake", "--pairs", "3"],
         ["--workload", "snakemake", "--pairs", "1"]),
        ("confinement.py", [], ["--rounds", "5"]),
        ("provenance_scale.py", [], ["--repeats", "1"]),
    ]
    if args.cwl_suite:
        runs.append(("cwl_suite.py", [args.cwl_suite], [args.cwl_suite, "--pairs", "1",
                                                       "--tests", "1-20"]))
    if args.skip_intake:
        runs = [r for r in runs if r[0] != "intake.py"]
    verdicts, failed = [], []
    for script, normal, quick in runs:
        extra = quick if args.quick else normal
        print(f"== {' '.join([script, *extra])}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / script), *extra],
                              stdout=subprocess.PIPE, text=True, check=False)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            failed.append(script)
        verdicts += [f"{script}: {line}" for line in done.stdout.splitlines()
                     if line.startswith(("TARGET ", "MEASURED "))]
        print(flush=True)
    print("== summary")
    for line in verdicts:
        print(line)
    for script in failed:
        print(f"{script}: CANNOT MEASURE (see its error above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
