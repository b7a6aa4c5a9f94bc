"""Overhead: ``cratebridge run`` of a request against the bare engine on the same workflow.

Workloads (``--workload``):

- ``demo`` (default): ``fixtures/crates/demo-request.zip`` against bare
  ``cwltool --disable-pull`` on the workflow folder and test job taken out of
  that zip (the same three CWL steps, the same images, the same inputs).
- ``scatter``: ``fixtures/workflows/cwl/scatter-50`` with ``n`` parts
  (``--parts``, 100 by default): one step, then ``n`` scattered jobs, each its
  own container; against bare cwltool on the same folder with ``{"n": parts}``.
  The per-step cost of the layer (broker, records, ledger) shows here.
- ``toil``: the demo request through ``--engine toil`` against bare
  ``toil-cwl-runner --no-prepull`` on the same workflow and job.
- ``snakemake``: ``fixtures/workflows/snakemake/three-step`` as a request
  against bare ``snakemake --cores 1`` in a copy of that folder. Bare Snakemake
  runs each rule's shell on the host (released Snakemake runs ``container:``
  only through Apptainer); through cratebridge every rule runs in its Docker
  container, so this figure includes three container starts.

In the bare CWL runs the engine calls ``docker`` itself. The cratebridge run
does everything a TRE run does: unpack, BagIt verify, parse, plan in the
engine's room, run the engine there with every ``docker`` call through the
run's broker, build the result crate, zip it as BagIt. Requests other than the
demo are written with the project's crate builder. Pairs alternate (the order
swapped every pair) after one unmeasured warm-up pair. CPU is user + system
seconds of every process of the run (see ``_common.measured_run``; Docker's
daemon and the containers are in neither figure).

Targets (issue 17), for ``demo`` and ``scatter``: median wall ratio <= 1.05 and
median added CPU <= 0.3 s per run. Toil and Snakemake: measured, no target yet.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from _common import ROOT, VENV_BIN, env_with, main_guard, measured_run, median, verdict

CRATE = ROOT / "fixtures" / "crates" / "demo-request.zip"
SCATTER = ROOT / "fixtures" / "workflows" / "cwl" / "scatter-50"
SNAKEMAKE = ROOT / "fixtures" / "workflows" / "snakemake" / "three-step"
MAX_RATIO = 1.05
MAX_ADDED_CPU = 0.3


def demo_workload(scratch: Path) -> tuple[Path, Path, Path]:
    """The demo request, and its workflow folder and job for bare cwltool."""
    with zipfile.ZipFile(CRATE) as archive:
        archive.extractall(scratch / "crate")
    (folder,) = (scratch / "crate").glob("*/data/workflow")
    if not (folder / "workflow.cwl").is_file() or not (folder / "test" / "job.yml").is_file():
        raise SystemExit(f"{folder}: no workflow.cwl and test/job.yml")
    return CRATE, folder, folder / "test" / "job.yml"


def scatter_workload(scratch: Path, parts: int) -> tuple[Path, Path, Path]:
    """A request running scatter-50 with ``parts`` parts, and the same for bare cwltool."""
    from cratebridge.testing.crates import RequestSpec, ValueInput, write_request_zip

    folder = scratch / "scatter"
    shutil.copytree(SCATTER, folder)
    job = folder / "bench-job.json"
    job.write_text(json.dumps({"n": parts}))
    crate = write_request_zip(RequestSpec(workflow_dir=SCATTER, main_workflow="workflow.cwl",
                                          inputs=(ValueInput("n", parts),)),
                              scratch / "scatter-request.zip")
    return crate, folder, job


def snakemake_workload(scratch: Path) -> tuple[Path, Path, Path]:
    """The three-step Snakemake request, and a copy of its folder for bare Snakemake."""
    from cratebridge.testing.crates import FileInput, RequestSpec, ValueInput, write_request_zip

    folder = scratch / "snakemake"
    shutil.copytree(SNAKEMAKE, folder)
    config = folder / "test" / "config.yaml"
    crate = write_request_zip(
        RequestSpec(workflow_dir=SNAKEMAKE, main_workflow="Snakefile",
                    inputs=(FileInput("data", SNAKEMAKE / "test" / "input.txt"),
                            ValueInput("repeat", 2))),
        scratch / "snakemake-request.zip")
    return crate, folder, config


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--workload", choices=("demo", "scatter", "toil", "snakemake"),
                        default="demo")
    parser.add_argument("--parts", type=int, default=100, help="scatter: how many jobs")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cratebridge-bench-overhead-"))
    engine: list[str] = []
    try:
        if args.workload == "scatter":
            crate, workflow, job = scatter_workload(scratch, args.parts)
            what = f"{SCATTER.relative_to(ROOT)} with {args.parts} parts"
        elif args.workload == "snakemake":
            crate, workflow, job = snakemake_workload(scratch)
            what, engine = str(SNAKEMAKE.relative_to(ROOT)), ["--engine", "snakemake"]
        else:
            crate, workflow, job = demo_workload(scratch)
            what = str(CRATE.relative_to(ROOT))
            if args.workload == "toil":
                what, engine = f"{what} with --engine toil", ["--engine", "toil"]
        env = env_with(CRATEBRIDGE_RUNS_DIR=str(scratch / "runs"))
        counter = iter(range(10_000))
        bare_name, bare_argv = _bare(args.workload, job)

        def cratebridge() -> tuple[float, float]:
            out = scratch / f"result-{next(counter)}.zip"
            return measured_run([str(VENV_BIN / "cratebridge"), "run", str(crate), *engine,
                                 "--out", str(out)], env=env)

        def bare() -> tuple[float, float]:
            out = scratch / f"bare-{next(counter)}"
            if args.workload == "snakemake":  # a fresh copy: Snakemake would find its outputs
                shutil.copytree(workflow, out)
                return measured_run(bare_argv, env=env, cwd=out)
            return measured_run([*bare_argv[:1], "--outdir", str(out), *bare_argv[1:]],
                                env=env, cwd=workflow)

        cratebridge(), bare()  # warm-up: page cache, docker, .pyc files
        ours: list[tuple[float, float]] = []
        base: list[tuple[float, float]] = []
        for i in range(args.pairs):
            if i % 2 == 0:
                ours.append(cratebridge())
                base.append(bare())
            else:
                base.append(bare())
                ours.append(cratebridge())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"overhead, {args.pairs} alternating pairs, {what}, against {bare_name}")
    ratio = _report("wall", [o[0] for o in ours], [b[0] for b in base])
    _report("CPU", [o[1] for o in ours], [b[1] for b in base])
    added_cpu = median([o[1] - b[1] for o, b in zip(ours, base, strict=True)])
    figure = (f"median wall ratio {ratio:.2f} (<= {MAX_RATIO}), median added CPU "
              f"{added_cpu:+.2f} s (<= {MAX_ADDED_CPU} s)")
    if args.workload in ("toil", "snakemake"):
        print(f"MEASURED (no target yet): {figure}")
    else:
        print(verdict(ratio <= MAX_RATIO and added_cpu <= MAX_ADDED_CPU, figure))
    return 0


def _bare(workload: str, job: Path) -> tuple[str, list[str]]:
    """The bare engine's name and command (``--outdir`` goes after its first word)."""
    if workload == "toil":
        return "bare toil-cwl-runner", [str(VENV_BIN / "toil-cwl-runner"), "--no-prepull",
                                        "--quiet", "workflow.cwl", str(job)]
    if workload == "snakemake":
        return "bare snakemake", [str(VENV_BIN / "snakemake"), "--cores", "1", "--quiet",
                                  "--configfile", str(job.relative_to(job.parent.parent))]
    return "bare cwltool", [str(VENV_BIN / "cwltool"), "--disable-pull", "--quiet",
                            "workflow.cwl", str(job)]


def _report(kind: str, ours: list[float], base: list[float]) -> float:
    """Print both series, the ratios and differences per pair; the median ratio."""
    ratios = sorted(o / b for o, b in zip(ours, base, strict=True))
    added = sorted(o - b for o, b in zip(ours, base, strict=True))
    print(f"  {kind:>4} bare engine     : " + " ".join(f"{t:6.2f}" for t in base)
          + f"  median {median(base):6.2f} s")
    print(f"  {kind:>4} cratebridge run : " + " ".join(f"{t:6.2f}" for t in ours)
          + f"  median {median(ours):6.2f} s")
    print(f"  {kind:>4} ratio per pair: " + " ".join(f"{r:4.2f}" for r in ratios)
          + f"  median {median(ratios):4.2f}")
    print(f"  {kind:>4} added seconds per pair: " + " ".join(f"{a:+5.2f}" for a in added)
          + f"  median {median(added):+5.2f} s")
    return median(ratios)


if __name__ == "__main__":
    main_guard(run)
