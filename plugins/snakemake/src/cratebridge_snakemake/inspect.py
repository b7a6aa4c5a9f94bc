"""Reading a Snakefile with Snakemake itself: its rules, their images and the DAG's jobs.

Run by the engine's ``plan`` as ``python -m cratebridge_snakemake.inspect``
in a child process (Snakemake keeps global state and changes directory while
it loads a workflow). It builds the DAG exactly as ``snakemake -n`` would,
runs nothing, and prints one JSON document on stdout. Snakemake writes only
its ``.snakemake`` metadata folder, inside ``--directory``.

Besides rules and jobs it reports every file the workflow refers to
(``references``: ``include:``, ``configfile:``, ``workdir:``, ``script:``,
``notebook:``, ``conda:``; each job's input, output, log and benchmark files)
so that the engine can refuse, before anything runs, a workflow that reaches
outside its crate. Includes and configfiles are recorded as Snakemake reads
them, also when reading fails, so the parent can tell where an error came from.
A ``shell.executable(...)`` the Snakefile sets is reported as ``shell`` (the
program's name): Snakemake's own default (bash when the host has it) is not a
choice of the workflow's, and the jobs then run under ``sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
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
        "log": [str(f) for f in job.log],
        "benchmark": [str(job.benchmark)] if job.benchmark else [],
        "image": job.container_img_url if isinstance(job.container_img_url, str) else None,
        "target": job.jobid in targets,
    }


def _reference(kind: str, written: object, document: str | None, path: str | None,
               rule: str | None = None) -> dict[str, Any]:
    """One file reference: as written, where, and the absolute path Snakemake uses.

    ``path`` is None when the reference is not a local file (a URL, a git or
    hosting-provider source): such a reference can never be inside the crate.
    """
    return {"kind": kind, "written": str(written), "document": document, "path": path,
            "rule": rule}


def _local_path(source: Any) -> str | None:
    from snakemake.sourcecache import LocalSourceFile

    if isinstance(source, LocalSourceFile):
        return os.path.abspath(str(source.get_path_or_uri(secret_free=True)))
    return None


def _current_document(workflow: Any) -> str | None:
    if not workflow.included_stack:
        return None
    return str(workflow.included_stack[-1].get_path_or_uri(secret_free=True))


@contextlib.contextmanager
def _recording_shell(chosen: list[str | None]) -> Iterator[None]:
    """Record what the Snakefile passes to ``shell.executable`` (the last call wins)."""
    from snakemake.shell import shell

    original = shell.__dict__["executable"]

    def recorded(cls: Any, cmd: Any) -> Any:
        chosen.append(os.path.basename(str(cmd)) if cmd else None)
        return original.__func__(cls, cmd)

    shell.executable = classmethod(recorded)
    try:
        yield
    finally:
        shell.executable = original


@contextlib.contextmanager
def _recording(found: list[dict[str, Any]]) -> Iterator[None]:
    """Record ``include:``, ``configfile:`` and ``workdir:`` as Snakemake meets them.

    Patches Snakemake's ``Workflow`` class for the duration; this module always
    runs in its own process, so nothing else sees the patch. Each reference is
    recorded *before* Snakemake acts on it, so it is reported even when reading
    it fails. The ``--configfile`` we pass is not a directive and is not recorded.
    """
    from snakemake.sourcecache import infer_source_file
    from snakemake.workflow import Workflow

    include, configfile, workdir = Workflow.include, Workflow.configfile, Workflow.workdir

    def recorded_include(self: Any, snakefile: Any, *args: Any, **kwargs: Any) -> Any:
        document = _current_document(self)
        try:
            basedir = self.current_basedir if self.included_stack else None
            path = _local_path(infer_source_file(snakefile, basedir))
        except Exception:  # Snakemake itself reports a bad include below
            path = None
        found.append(_reference("include", snakefile, document, path))
        return include(self, snakefile, *args, **kwargs)

    def recorded_configfile(self: Any, fp: Any) -> Any:
        found.append(_reference("configfile", fp, _current_document(self),
                                os.path.abspath(fp)))
        return configfile(self, fp)

    def recorded_workdir(self: Any, folder: Any) -> Any:
        found.append(_reference("workdir", folder, _current_document(self),
                                os.path.abspath(folder)))
        return workdir(self, folder)

    Workflow.include = recorded_include
    Workflow.configfile = recorded_configfile
    Workflow.workdir = recorded_workdir
    try:
        yield
    finally:
        Workflow.include, Workflow.configfile, Workflow.workdir = include, configfile, workdir


def _rule_references(rule: Any) -> list[dict[str, Any]]:
    """The ``script:``, ``notebook:`` and ``conda:`` files of a rule, when given as text."""
    found = []
    document = str(rule.snakefile) if rule.snakefile else None
    for kind, value in (("script", rule.script), ("notebook", rule.notebook),
                        ("conda", rule.conda_env)):
        if not isinstance(value, (str, Path)):
            continue  # a function, or a source-file marker: resolved only at run time
        text = str(value)
        if kind == "conda" and not text.endswith((".yaml", ".yml")):
            continue  # the name of an existing environment, not a file
        path: str | None = None
        if "://" not in text:
            if os.path.isabs(text) or rule.basedir is None:
                path = os.path.abspath(text)
            else:
                path = _local_path(rule.basedir.join(text))
        found.append(_reference(kind, text, document, path, rule=rule.name))
    return found


def inspect(snakefile: Path, workdir: Path, configfile: Path | None,
            references: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Load the workflow and its DAG (as for a dry run) and describe them.

    ``configfile`` is the request's inputs, merged over the workflow's own
    configfile as ``--configfile`` does (None when the request has none).
    ``references`` receives the includes, configfiles and workdirs as they are
    met, so a caller still has them when loading fails.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    found: list[dict[str, Any]] = [] if references is None else references
    shell: list[str | None] = []
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api, _recording(found), \
            _recording_shell(shell):
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[configfile] if configfile else []),
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
            "shell": shell[-1] if shell else None,
            "rules": [
                {"name": rule.name, "kind": rule_kind(rule), "image": _image(rule),
                 "local": rule.name in workflow._localrules,
                 "snakefile": str(rule.snakefile) if rule.snakefile else None}
                for rule in workflow.rules
            ],
            "jobs": [_job(job, targets) for job in dag.jobs],
            "references": found + [ref for rule in workflow.rules
                                   for ref in _rule_references(rule)],
        }


def _version() -> str:
    import snakemake

    return str(snakemake.__version__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cratebridge_snakemake.inspect")
    parser.add_argument("--snakefile", type=Path, required=True)
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--configfile", type=Path)
    opts = parser.parse_args(argv)
    references: list[dict[str, Any]] = []
    try:
        described = inspect(opts.snakefile.absolute(), opts.directory.absolute(),
                            opts.configfile.absolute() if opts.configfile else None,
                            references)
    except Exception as exc:  # any Snakemake error: report it as data, not a traceback
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                          "references": references}))
        return 1
    print(json.dumps(described))
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # the report is out: end now, not when threads the Snakefile started (and may never
    # stop, e.g. a producer for from_queue()) are done
    os._exit(status)
