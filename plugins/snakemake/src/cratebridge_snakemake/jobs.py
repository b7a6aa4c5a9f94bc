"""One Snakemake job as a container: the ``docker run`` command and its JSON-line events.

Shared by the local and the Slurm executors. A job's shell command (the
rule's ``shell:`` formatted by Snakemake for this job) runs as ``sh -c`` in
the rule's ``container:`` image through ``docker``, which during a
cratebridge run is the sandbox shim; under the program a
``shell.executable(...)`` chose (checked at plan time to be in the image)
when the workflow sets one. The job's working directory (Snakemake's
``--directory``) is mounted read-write at the same path; the workflow's own
folder and every input outside the working directory are mounted read-only
at their host paths, so the command sees the same paths Snakemake formatted.
A ``shadow:`` rule's command runs in the shadow folder Snakemake prepared
for the job (under ``.snakemake/shadow/`` in the working directory, so its
links resolve inside the mount), as Snakemake runs it there itself. A
``run:`` or ``script:`` job's command is Snakemake's own per-job command
(:mod:`cratebridge_snakemake.snakejob`), run under ``sh`` in an image with
Snakemake: the rule's ``container:`` or the operator's ``python_image``.

A job's container gets what the Snakefile's own code put in ``os.environ``
(its top level runs in the engine's process, before any job): bare Snakemake
runs its jobs with the engine's whole environment, which here is the room's
and ours, so only the difference from the environment Snakemake started with
is the workflow's (:func:`workflow_env`).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cratebridge.containers.sandbox import STEP_LABEL

__all__ = ["DEFAULT_SHELL", "EventLog", "JobSpec", "SnakemakeJob", "docker_argv", "image_of",
           "job_script", "named_files", "now", "shell_command", "slurm_job", "spec_for",
           "workflow_env"]

DOCKER_PREFIX = "docker://"
DEFAULT_SHELL = "sh"  # images need not have bash; see docs/snakemake.md
# A longer command goes to the shell as a file: one argument may hold at most 128 KiB
# (MAX_ARG_STRLEN); Snakemake's own limit for the same reason.
MAX_INLINE_SCRIPT = 16 * 4096 - 1
SCRIPTS_DIR = ".snakemake/cratebridge-scripts"  # in the workdir, which every job mounts


# The environment Snakemake started with, before it read the Snakefile: Snakemake imports
# every executor plugin (this module among them) while it builds its command line.
_START_ENV = dict(os.environ)
# Names a job takes from its image (the room's PATH names folders the image does not have)
# or from docker_argv.
_NOT_PASSED = frozenset(("PATH", "HOME", "USER", "PYTHONDONTWRITEBYTECODE"))


def workflow_env() -> dict[str, str]:
    """What the Snakefile set or changed in ``os.environ``: every job gets it, as in a bare run.

    A name it removed stays removed: the container starts from its image's
    environment, which never had the room's variables.
    """
    return {name: value for name, value in os.environ.items()
            if _START_ENV.get(name) != value and name not in _NOT_PASSED}


def slurm_job() -> dict[str, str]:
    """The Slurm job this process runs in: its id (a step's ``native_id``) and its node, as
    slurmd names it (the room's own hostname is "cratebridge"); {} outside one."""
    native = os.environ.get("SLURM_JOB_ID")
    if not native:
        return {}
    return {"native_id": native,
            "host": os.environ.get("SLURMD_NODENAME") or os.uname().nodename}


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
    image: str | None  # None: the job runs no command (Snakemake makes its touch() files)
    image_source: str
    shellcmd: str
    workdir: str
    argv: list[str] = field(default_factory=list)
    shell: str = DEFAULT_SHELL
    prefix: str | None = None  # shell.prefix(...) / shell.suffix(...) of the Snakefile
    suffix: str = ""
    script_file: str | None = None  # the script, when too long for one argument
    shadow_dir: str | None = None  # a shadow: rule's folder, which the command runs in
    snakemake: bool = False  # the command is Snakemake's own, running a run:/script: job
    env: dict[str, str] = field(default_factory=dict)  # what the Snakefile set (workflow_env)


@dataclass(frozen=True)
class SnakemakeJob:
    """How a ``run:`` / ``script:`` job runs: its image when the rule names none, its command.

    ``mounts`` are files outside the working folder the inner Snakemake reads
    (the run's configfiles), mounted read-only; ``writable`` folders it writes
    (its source cache), mounted read-write.
    """

    image: str | None
    command: str
    mounts: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()


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


def spec_for(job: Any, workdir: str, default_image: str | None,
             shell: str | None = None, norun: bool = False,
             snakemake: SnakemakeJob | None = None,
             bash_images: frozenset[str] = frozenset()) -> JobSpec:
    """Describe a Snakemake job (``JobExecutorInterface``) and build its container command.

    ``shell`` is the program the command runs under (by name, on the image's
    ``PATH``) when the Snakefile chose one; otherwise bash in the
    ``bash_images`` (those the plan found bash in, as Snakemake's own default
    is bash when there is one) and ``sh`` in any other. With ``norun``,
    describe a job that runs nothing (no image, no command). A ``run:`` or
    ``script:`` job needs ``snakemake``: Snakemake's own command for it, run
    under ``sh``. Raises ``ValueError`` for a job that cannot run in a
    container: no command, or no image and no operator default.
    """
    rule = job.rule
    if snakemake is not None and not norun:
        return _snakemake_spec(job, workdir, snakemake)
    image: str | None = None
    source = "none"
    if not norun:
        image, source = _image_for(job, default_image)
    if not shell:
        shell = "bash" if image in bash_images else DEFAULT_SHELL
    wildcards = {str(k): str(v) for k, v in dict(job.wildcards_dict).items()}
    spec = JobSpec(
        token=uuid.uuid4().hex, jobid=int(job.jobid), rule=rule.name,
        name=_job_name(rule.name, wildcards), wildcards=wildcards,
        inputs=named_files(job.input, workdir, "input"),
        outputs=named_files(job.output, workdir, "output"),
        logs=[_absolute(str(f), workdir) for f in job.log],
        image=image, image_source=source, shellcmd="" if norun else shell_command(job),
        workdir=workdir, shell=shell, env={} if norun else workflow_env(),
        **({} if norun else _affixes()),
    )
    if norun:
        return spec
    # set by job.prepare(): the folder Snakemake made for a shadow: rule, inside the workdir
    shadow = getattr(job, "shadow_dir", None)
    if shadow:
        spec = replace(spec, shadow_dir=_absolute(str(shadow), workdir))
    script = job_script(spec)
    if len(script.encode()) > MAX_INLINE_SCRIPT:
        spec = replace(spec, script_file=_write_script(script, workdir, spec.token))
    basedir = str(rule.basedir) if rule.basedir else None
    return replace(spec, argv=docker_argv(spec, basedir))


def _snakemake_spec(job: Any, workdir: str, snakemake: SnakemakeJob) -> JobSpec:
    """A ``run:`` / ``script:`` job: Snakemake's command, in the rule's image or the operator's.

    Snakemake inside the container prepares the job itself (a ``shadow:``
    folder, a ``benchmark:`` file), as in the jobs Snakemake spawns.
    """
    rule = job.rule
    image = image_of(job.container_img_url)
    source = "container"
    if image is None:
        image, source = snakemake.image, "operator python_image"
    if image is None:
        raise ValueError(f"rule {rule.name} runs Python in Snakemake (run: or script:), and "
                         "no image with Snakemake is configured ([engines.snakemake] "
                         "python_image)")
    wildcards = {str(k): str(v) for k, v in dict(job.wildcards_dict).items()}
    spec = JobSpec(
        token=uuid.uuid4().hex, jobid=int(job.jobid), rule=rule.name,
        name=_job_name(rule.name, wildcards), wildcards=wildcards,
        inputs=named_files(job.input, workdir, "input"),
        outputs=named_files(job.output, workdir, "output"),
        logs=[_absolute(str(f), workdir) for f in job.log],
        image=image, image_source=source, shellcmd=snakemake.command, workdir=workdir,
        snakemake=True, env=workflow_env())
    if len(job_script(spec).encode()) > MAX_INLINE_SCRIPT:
        spec = replace(spec, script_file=_write_script(job_script(spec), workdir, spec.token))
    basedir = str(rule.basedir) if rule.basedir else None
    return replace(spec, argv=docker_argv(spec, basedir, snakemake.mounts, snakemake.writable))


# What Snakemake's own run of a shell: rule has in view besides its Snakefile's globals.
_JOB_NAMES = frozenset(("input", "output", "params", "wildcards", "threads", "resources", "log",
                        "jobid", "name", "rule", "rulename", "bench_iteration"))


def shell_command(job: Any) -> str:
    """The job's ``shell:`` formatted as Snakemake formats it when it runs the job itself.

    Snakemake's ``job.shellcmd`` formats with the main Snakefile's globals,
    but its own run formats in the rule's function, whose globals are those of
    the Snakefile the rule is written in: for a rule of a ``module``, the
    module's (so ``{config}`` is the module's ``config:``). The job's own
    names (``input``, ``output``, ...) still come first.
    """
    rule = job.rule
    module = getattr(rule, "module_globals", None)
    if not isinstance(module, dict) or module is rule.workflow.globals:
        return str(job.shellcmd)
    # (and not the names of format_wildcards' own parameters)
    names = {k: v for k, v in module.items() if k not in _JOB_NAMES | {"self", "string"}}
    return str(job.format_wildcards(rule.shellcmd, **names))


def _write_script(script: str, workdir: str, token: str) -> str:
    folder = os.path.join(workdir, SCRIPTS_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{token}.sh")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as stream:
        stream.write(script + "\n")
    return os.path.realpath(path)


def _image_for(job: Any, default_image: str | None) -> tuple[str, str]:
    rule = job.rule
    if not rule.is_shell:
        raise ValueError(f"rule {rule.name}: only shell:, run: and script: rules run in "
                         "containers under cratebridge (wrapper:, notebook: and cwl: are "
                         "refused)")
    image = image_of(job.container_img_url)
    if image is not None:
        return image, "container"
    if default_image is None:
        raise ValueError(f"rule {rule.name} has no container: directive and no default "
                         "image is configured")
    return default_image, "operator default"


def _affixes() -> dict[str, Any]:
    """The Snakefile's ``shell.prefix(...)`` and ``shell.suffix(...)``, as Snakemake keeps them."""
    from snakemake.shell import shell

    prefix = getattr(shell, "_process_prefix", None)
    suffix = getattr(shell, "_process_suffix", "")
    return {"prefix": None if prefix is None else str(prefix), "suffix": str(suffix or "")}


def job_script(spec: JobSpec) -> str:
    """The text given to the shell's ``-c``: the job's command with Snakemake's affixes.

    Under the default ``sh`` it starts with ``set -eu``; under bash, as
    Snakemake does, with ``set -euo pipefail;`` unless the Snakefile set its own
    ``shell.prefix``.
    """
    if spec.shell == DEFAULT_SHELL:
        body = " ".join((spec.prefix or "", spec.shellcmd, spec.suffix)).strip()
        return "set -eu\n" + body
    prefix = spec.prefix
    if prefix is None:
        prefix = "set -euo pipefail; " if spec.shell == "bash" else ""
    return " ".join((prefix, spec.shellcmd, spec.suffix)).strip()


def docker_argv(spec: JobSpec, basedir: str | None, files: tuple[str, ...] = (),
                writable: tuple[str, ...] = ()) -> list[str]:
    """``docker run ...`` for a job; the sandbox shim adds the hardening flags.

    ``files`` are more paths to mount read-only (a Snakemake job's configfiles),
    ``writable`` more folders to mount read-write (its source cache); the
    broker allows either only inside the run's folders.
    """
    if spec.image is None:
        raise ValueError(f"rule {spec.rule} runs no command and needs no container")
    work = os.path.realpath(spec.workdir)
    cwd = os.path.realpath(spec.shadow_dir) if spec.shadow_dir else work
    if not _under(cwd, work):  # the container sees only the workdir: it must be inside
        raise ValueError(f"rule {spec.rule}: its shadow folder {spec.shadow_dir} is not "
                         "inside Snakemake's working folder")
    mounts = [f"--volume={work}:{work}"]
    seen = {work}
    for folder in writable:
        real = os.path.realpath(folder)
        if real not in seen and not _under(real, work):
            seen.add(real)
            mounts.append(f"--volume={real}:{real}")
    read_only = [basedir] if basedir else []
    read_only += [p for _, p in spec.inputs if not _under(p, work)]
    read_only += [p for p in files if not _under(p, work)]
    for path in read_only:
        real = os.path.realpath(path)
        if real in seen or _under(real, work) or any(_under(real, s) for s in seen):
            continue
        seen.add(real)
        mounts.append(f"--volume={real}:{real}:ro")
    # the default shell by its path; a chosen one by name, found on the image's PATH by
    # Docker as the plan's check found it
    entrypoint = "/bin/sh" if spec.shell == DEFAULT_SHELL else spec.shell
    # Snakemake asks for the user's name (getpass), which the step uid may not have
    # in the image's /etc/passwd; its Python leaves no __pycache__ in the working folder
    env = [*(f"--env={name}={value}" for name, value in sorted(spec.env.items())),
           "--env=HOME=/tmp",
           *(["--env=USER=snakemake", "--env=PYTHONDONTWRITEBYTECODE=1"] if spec.snakemake
             else [])]
    return [
        "docker", "run", "--rm", f"--label={STEP_LABEL}={spec.token}",
        f"--workdir={cwd}", *mounts, *env, f"--entrypoint={entrypoint}",
        spec.image, *([spec.script_file] if spec.script_file else ["-c", job_script(spec)]),
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

    def finished(self, spec: JobSpec, start: str, exit_code: int | None,
                 status: str | None = None, **extra: Any) -> None:
        """A job's end; inside a Slurm job (a group's Snakemake), with its id and host."""
        self.write("finished", token=spec.token, jobid=spec.jobid, rule=spec.rule,
                   start=start, end=now(), exit_code=exit_code,
                   status=status or ("success" if exit_code == 0 else "failed"),
                   **slurm_job(), **extra)
