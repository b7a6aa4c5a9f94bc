"""One Snakemake job as a container: the ``docker run`` command and its JSON-line events.

Shared by the local and the Slurm executors. A job's shell command (the
rule's ``shell:`` formatted by Snakemake for this job) runs as ``sh -c`` in
the rule's ``container:`` image through ``docker``, which during a
cratebridge run is the sandbox shim. The job's working directory (Snakemake's
``--directory``) is mounted read-write at the same path; the workflow's own
folder and every input outside the working directory are mounted read-only
at their host paths, so the command sees the same paths Snakemake formatted.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cratebridge.containers.sandbox import STEP_LABEL

__all__ = ["EventLog", "JobSpec", "docker_argv", "image_of", "named_files", "now", "spec_for"]

DOCKER_PREFIX = "docker://"


def now() -> str:
    return datetime.now(UTC).isoformat()


def image_of(url: str | None) -> str | None:
    """A ``container:`` value as a local Docker image name (``docker://`` dropped)."""
    if not url:
        return None
    return url[len(DOCKER_PREFIX):] if url.startswith(DOCKER_PREFIX) else url


@dataclass(frozen=True)
class JobSpec:
    """Everything about one job the engine needs afterwards, and how to run it."""

    token: str
    jobid: int
    rule: str
    name: str
    wildcards: dict[str, str]
    inputs: list[tuple[str, str]]
    outputs: list[tuple[str, str]]
    logs: list[str]
    image: str
    image_source: str
    shellcmd: str
    workdir: str
    argv: list[str] = field(default_factory=list)


def _absolute(path: str, workdir: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(workdir, path))


def named_files(files: Any, workdir: str, kind: str) -> list[tuple[str, str]]:
    """A rule's input or output files as (name, absolute path): ``counts``, ``input_1``..."""
    paths = [_absolute(str(f), workdir) for f in files]
    names = [f"{kind}_{i}" if len(paths) > 1 else kind for i in range(len(paths))]
    get_names = getattr(files, "_get_names", None)
    for name, (start, end) in get_names() if get_names else ():
        span = range(start, end if end is not None else start + 1)
        for offset, index in enumerate(span):
            if index < len(names):
                names[index] = name if len(span) == 1 else f"{name}_{offset}"
    return list(zip(names, paths, strict=True))


def _job_name(rule: str, wildcards: dict[str, str]) -> str:
    if not wildcards:
        return rule
    return f"{rule}[{','.join(f'{k}={v}' for k, v in wildcards.items())}]"


def spec_for(job: Any, workdir: str, default_image: str | None) -> JobSpec:
    """Describe a Snakemake job (``JobExecutorInterface``) and build its container command.

    Raises ``ValueError`` for a job that cannot run in a container: no shell
    command, or no image and no operator default.
    """
    rule = job.rule
    if not rule.is_shell:
        raise ValueError(f"rule {rule.name}: only shell: rules run in containers under "
                         "cratebridge (run:, script:, wrapper:, notebook: are refused)")
    image = image_of(job.container_img_url)
    source = "container"
    if image is None:
        image, source = default_image, "operator default"
    if image is None:
        raise ValueError(f"rule {rule.name} has no container: directive and no default "
                         "image is configured")
    wildcards = {str(k): str(v) for k, v in dict(job.wildcards_dict).items()}
    spec = JobSpec(
        token=uuid.uuid4().hex, jobid=int(job.jobid), rule=rule.name,
        name=_job_name(rule.name, wildcards), wildcards=wildcards,
        inputs=named_files(job.input, workdir, "input"),
        outputs=named_files(job.output, workdir, "output"),
        logs=[_absolute(str(f), workdir) for f in job.log],
        image=image, image_source=source, shellcmd=str(job.shellcmd), workdir=workdir,
    )
    basedir = str(rule.basedir) if rule.basedir else None
    return JobSpec(**{**asdict(spec), "argv": docker_argv(spec, basedir)})


def docker_argv(spec: JobSpec, basedir: str | None) -> list[str]:
    """``docker run ...`` for a job; the sandbox shim adds the hardening flags."""
    work = os.path.realpath(spec.workdir)
    mounts = [f"--volume={work}:{work}"]
    seen = {work}
    read_only = [basedir] if basedir else []
    read_only += [p for _, p in spec.inputs if not _under(p, work)]
    for path in read_only:
        real = os.path.realpath(path)
        if real in seen or _under(real, work) or any(_under(real, s) for s in seen):
            continue
        seen.add(real)
        mounts.append(f"--volume={real}:{real}:ro")
    return [
        "docker", "run", "--rm", f"--label={STEP_LABEL}={spec.token}",
        f"--workdir={work}", *mounts, "--env=HOME=/tmp", "--entrypoint=/bin/sh",
        spec.image, "-c", "set -eu\n" + spec.shellcmd,
    ]


def _under(path: str, root: str) -> bool:
    path = os.path.realpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


class EventLog:
    """Appends job events as JSON lines (thread- and process-safe: one write per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **data: Any) -> None:
        line = json.dumps({"event": event, "time": now(), **data}) + "\n"
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def started(self, spec: JobSpec, **extra: Any) -> None:
        data = asdict(spec)
        data.pop("argv")
        self.write("started", **data, command=spec.argv, **extra)

    def finished(self, spec: JobSpec, start: str, exit_code: int | None, **extra: Any) -> None:
        self.write("finished", token=spec.token, jobid=spec.jobid, rule=spec.rule,
                   start=start, end=now(), exit_code=exit_code,
                   status="success" if exit_code == 0 else "failed", **extra)
