"""``run:`` and ``script:`` jobs: Snakemake's own per-job command, in a container with Snakemake.

A ``run:`` block is Python that Snakemake runs in its own process, and a
``script:`` needs Snakemake's ``snakemake`` object; neither is a shell command
a step image can run. So such a job runs as Snakemake's remote executors run
every job: ``python3 -m snakemake --target-jobs RULE:WILDCARDS ... --mode
subprocess`` (the command of ``RealExecutor.format_job_exec``), here inside
the rule's ``container:`` image or the operator's ``python_image``, either of
which must hold the same Snakemake (checked at plan time). The inner
Snakemake reads the Snakefile again in the container, runs that one job
there and exits with its status; the job's container is started through the
sandbox as every other job's is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from snakemake_interface_executor_plugins.executors.real import RealExecutor
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecMode
from snakemake_interface_executor_plugins.utils import format_cli_arg, join_cli_args

__all__ = ["PYTHON", "is_snakemake_job", "job_command", "job_files", "job_folders"]

# The interpreter the command names: found on the image's PATH (checked at plan time).
PYTHON = "python3"

# As Snakemake's own local executor runs a spawned job: no remote storage, a shared
# filesystem (the working folder is mounted at its host path).
_COMMON = CommonSettings(
    non_local_exec=False,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_envvar_declarations_to_cmd=True,
    auto_deploy_default_storage_provider=False,
)


def is_snakemake_job(job: Any) -> bool:
    """Whether the job's code is run by Snakemake itself: ``run:``, ``script:``, templates.

    Not ``notebook:``, ``wrapper:`` or ``cwl:`` jobs: refused at plan time, they
    fail if a checkpoint brings one in later.
    """
    rule = job.rule
    if job.is_norun:
        return False
    return not any(getattr(rule, f"is_{kind}", False)
                   for kind in ("shell", "notebook", "wrapper", "cwl"))


def job_command(executor: Any, job: Any) -> str:
    """Snakemake's command that runs ``job`` alone, for a shell in the job's container.

    Built as ``RealExecutor.format_job_exec`` builds it, with ``python3`` (the
    image's) as the interpreter and Snakemake's local executor's own extras, so
    the inner Snakemake runs the job in its own process (``--mode subprocess``,
    ``--force-use-threads``) with the outer run's settings (configfiles,
    ``--directory``, ``--config``, ...).
    """
    workflow = executor.workflow
    factory = workflow.spawned_job_args_factory
    exports = RealExecutor.get_envvar_declarations(_Declarations(workflow))
    cores = workflow.resource_settings.cores or max(int(job.threads), 1)
    return str(join_cli_args([
        exports,
        PYTHON, "-m snakemake",
        format_cli_arg("--snakefile", workflow.main_snakefile),
        RealExecutor.get_job_args(executor, job, cores=cores),
        factory.general_args(executor_common_settings=_COMMON),
        "--quiet progress rules host",
        format_cli_arg("--mode", ExecMode.SUBPROCESS.item_to_choice()),
    ]))


class _Declarations:
    """Just enough of an executor for ``RealExecutor.get_envvar_declarations``."""

    def __init__(self, workflow: Any) -> None:
        self.workflow = workflow
        self.common_settings = _COMMON

    def envvars(self) -> dict[str, str]:
        return dict(self.workflow.spawned_job_args_factory.envvars())


def job_files(workflow: Any) -> list[str]:
    """Files outside the working folder the inner Snakemake reads: configfiles and inputs.

    The run's configfiles (``--configfile``: the engine's ``config.json`` of the
    request's inputs) and the files and folders they name by absolute path (the
    request's File and Directory inputs, operator datasets), which the
    Snakefile's top level may read when the inner Snakemake reads it again.
    Mounted read-only at their paths; the broker allows only paths inside the
    run's folder or an operator dataset. (The Snakefile and what it includes are
    in the working folder, which every job mounts.)
    """
    found: list[str] = []
    for configfile in getattr(workflow, "overwrite_configfiles", ()) or ():
        found.append(os.path.realpath(str(configfile)))
        try:
            config = json.loads(Path(str(configfile)).read_text())
        except (OSError, ValueError):
            continue
        values = config.values() if isinstance(config, dict) else ()
        found += [os.path.realpath(v) for v in values
                  if isinstance(v, str) and os.path.isabs(v) and os.path.exists(v)
                  and os.path.realpath(v) != "/"]
    return list(dict.fromkeys(found))


def job_folders(workflow: Any) -> list[str]:
    """Folders outside the working folder the inner Snakemake writes: its source cache.

    The outer Snakemake passes its runtime source cache (``--runtime-source-cache-path``,
    under the engine's home in the run's work folder), as to the jobs it spawns
    itself on a shared filesystem; mounted read-write at its path.
    """
    cache = getattr(getattr(workflow, "sourcecache", None), "runtime_cache_path", None)
    return [os.path.realpath(str(cache))] if cache and os.path.isdir(str(cache)) else []
