"""Overhead: ``cratebridge run`` of the demo request against bare ``cwltool`` on the same workflow.

The bare run is ``cwltool --disable-pull`` on the workflow folder and test job
taken out of ``fixtures/crates/demo-request.zip`` (the same three CWL steps, the
same image, the same inputs), cwltool running ``docker`` itself. The
cratebridge run does everything a TRE run does: unpack, BagIt verify, parse,
plan, run through the sandbox's docker shim, build the result crate, zip it as
BagIt. Pairs alternate (and swap order every pair); one unmeasured warm-up pair.
Target: median ratio <= 1.15 and median added time <= 2 s.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import zipfile
from pathlib import Path

from _common import ROOT, VENV_BIN, env_with, main_guard, median, timed_run, verdict

CRATE = ROOT / "fixtures" / "crates" / "demo-request.zip"
MAX_RATIO = 1.15
MAX_ADDED = 2.0


def bare_workflow(scratch: Path) -> Path:
    """The request's workflow folder (with test/job.yml), unpacked for bare cwltool."""
    with zipfile.ZipFile(CRATE) as archive:
        archive.extractall(scratch / "crate")
    (folder,) = (scratch / "crate").glob("*/data/workflow")
    if not (folder / "workflow.cwl").is_file() or not (folder / "test" / "job.yml").is_file():
        raise SystemExit(f"{folder}: no workflow.cwl and test/job.yml")
    return folder


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cratebridge-bench-overhead-"))
    try:
        workflow = bare_workflow(scratch)
        env = env_with(CRATEBRIDGE_RUNS_DIR=str(scratch / "runs"))
        counter = iter(range(10_000))

        def cratebridge() -> float:
            out = scratch / f"result-{next(counter)}.zip"
            return timed_run([str(VENV_BIN / "cratebridge"), "run", str(CRATE), "--out", str(out)],
                             env=env)

        def bare() -> float:
            out = scratch / f"bare-{next(counter)}"
            return timed_run([str(VENV_BIN / "cwltool"), "--disable-pull", "--quiet",
                              "--outdir", str(out), "workflow.cwl", "test/job.yml"],
                             env=env, cwd=workflow)

        cratebridge(), bare()  # warm-up: page cache, docker, .pyc files
        ours: list[float] = []
        base: list[float] = []
        for i in range(args.pairs):
            if i % 2 == 0:
                ours.append(cratebridge())
                base.append(bare())
            else:
                base.append(bare())
                ours.append(cratebridge())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = sorted(o / b for o, b in zip(ours, base, strict=True))
    added = sorted(o - b for o, b in zip(ours, base, strict=True))
    ratio, extra = median(ratios), median(added)
    print(f"overhead, {args.pairs} alternating pairs, {CRATE.relative_to(ROOT)}")
    print("  bare cwltool --disable-pull : " + " ".join(f"{t:5.2f}" for t in base)
          + f"  median {median(base):5.2f} s")
    print("  cratebridge run             : " + " ".join(f"{t:5.2f}" for t in ours)
          + f"  median {median(ours):5.2f} s")
    print("  ratio per pair: " + " ".join(f"{r:4.2f}" for r in ratios)
          + f"  median {ratio:4.2f}")
    print("  added seconds per pair: " + " ".join(f"{a:+5.2f}" for a in added)
          + f"  median {extra:+5.2f} s")
    print(verdict(ratio <= MAX_RATIO and extra <= MAX_ADDED,
                  f"median ratio {ratio:.2f} (<= {MAX_RATIO}), median added {extra:.2f} s "
                  f"(<= {MAX_ADDED} s)"))
    return 0


if __name__ == "__main__":
    main_guard(run)
