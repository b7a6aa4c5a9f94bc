"""Reading a Snakefile with Snakemake itself: its rules, their images and the DAG's jobs.

Run by the engine's ``plan`` as ``python -m cratebridge_snakemake.inspect``
in a child process (Snakemake keeps global state and changes directory while
it loads a workflow). It builds the DAG exactly as ``snakemake -n`` would,
runs nothing, and prints one JSON document on stdout. Snakemake writes only
its ``.snakemake`` metadata folder, inside ``--directory``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "rule_kind"]


def rule_kind(rule: Any) -> str:
    """What runs for a rule: shell, norun, run, script, notebook, wrapper or cwl."""
    if rule.norun:
        return "norun"
    for kind in ("shell", "script", "notebook", "wrapper", "cwl"):
        if getattr(rule, f"is_{kind}", False):
            return kind
    return "run"


def _image(rule: Any) -> str | None:
    image = rule.container_img
    return str(image) if isinstance(image, str) and image else None


def _job(job: Any, targets: set[int]) -> dict[str, Any]:
    return {
        "jobid": job.jobid,
        "rule": job.rule.name,
        "wildcards": dict(job.wildcards_dict),
        "input": [str(f) for f in job.input],
        "output": [str(f) for f in job.output],
        "image": job.container_img_url if isinstance(job.container_img_url, str) else None,
        "target": job.jobid in targets,
    }


def inspect(snakefile: Path, workdir: Path, configfile: Path) -> dict[str, Any]:
    """Load the workflow and its DAG (as for a dry run) and describe them."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[configfile]),
            snakefile=snakefile,
            workdir=workdir,
        )
        dag_api = workflow_api.dag(DAGSettings())
        workflow = dag_api.workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True,
                              nolock=True)
        workflow._build_dag()
        dag = workflow.dag
        targets = {job.jobid for job in dag.targetjobs}
        default = workflow.default_target
        return {
            "snakemake_version": _version(),
            "default_target": default,
            "rules": [
                {"name": rule.name, "kind": rule_kind(rule), "image": _image(rule),
                 "local": rule.name in workflow._localrules}
                for rule in workflow.rules
            ],
            "jobs": [_job(job, targets) for job in dag.jobs],
        }


def _version() -> str:
    import snakemake

    return str(snakemake.__version__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cratebridge_snakemake.inspect")
    parser.add_argument("--snakefile", type=Path, required=True)
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--configfile", type=Path, required=True)
    opts = parser.parse_args(argv)
    try:
        described = inspect(opts.snakefile.absolute(), opts.directory.absolute(),
                            opts.configfile.absolute())
    except Exception as exc:  # any Snakemake error: report it as data, not a traceback
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(described))
    return 0


if __name__ == "__main__":
    sys.exit(main())
