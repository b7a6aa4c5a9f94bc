"""A Snakefile, read offline by Snakemake: its rules, images and jobs; binding a request to it."""

from __future__ import annotations

import enum
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cratebridge.containers.confine import Room
from cratebridge.engines.process import run_confined, tail
from cratebridge.errors import MetadataError, PolicyRefused, UnsafeCrate, UnsupportedCrate
from cratebridge.intake.request import InputKind, RunRequest

__all__ = ["SNAKEMAKE_KINDS", "RefKind", "SnakeJob", "SnakeReference", "SnakeRule",
           "SnakeWorkflow", "bind_config", "check_references", "check_rules", "config_value",
           "load_workflow"]

# Rules whose jobs Snakemake itself runs, in a container with Snakemake (snakejob.py).
SNAKEMAKE_KINDS = frozenset(("run", "script"))
_WHAT = {"run": "a run: block", "script": "a script: directive"}
# Rules whose code needs what no step image has, or fetches code at run time.
REFUSED_KINDS = {
    "notebook": "notebook: needs Jupyter and Snakemake inside the container",
    "wrapper": "wrapper: downloads code from the wrapper repository at run time",
    "cwl": "cwl: rules are not supported; run the CWL tool with a CWL engine",
}


@dataclass(frozen=True)
class SnakeRule:
    name: str
    kind: str
    image: str | None
    local: bool
    snakefile: str | None = None  # the Snakefile the rule is written in


@dataclass(frozen=True)
class SnakeJob:
    """One job of the DAG; its file paths as Snakemake has them (relative to the workdir)."""

    jobid: int
    rule: str
    wildcards: Mapping[str, str]
    image: str | None
    target: bool
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    logs: tuple[str, ...] = ()
    benchmarks: tuple[str, ...] = ()


class RefKind(enum.Enum):
    """A directive by which a workflow names a file Snakemake itself reads or uses."""

    INCLUDE = "include"
    CONFIGFILE = "configfile"
    WORKDIR = "workdir"
    SCRIPT = "script"
    NOTEBOOK = "notebook"
    CONDA = "conda"


@dataclass(frozen=True)
class SnakeReference:
    """A file the workflow names in a directive.

    ``written`` is the reference as written, ``document`` the Snakefile it is
    written in, ``path`` the absolute path Snakemake resolved it to (None for a
    URL or a git or hosting-provider source, which is never inside a crate).
    """

    kind: RefKind
    written: str
    document: str | None
    path: str | None
    rule: str | None = None


@dataclass(frozen=True)
class SnakeWorkflow:
    snakefile: Path
    snakemake_version: str
    default_target: str | None
    rules: tuple[SnakeRule, ...]
    jobs: tuple[SnakeJob, ...]
    references: tuple[SnakeReference, ...] = ()
    shell: str | None = None  # the program a shell.executable(...) chose, by name

    def rule(self, name: str) -> SnakeRule:
        return next(r for r in self.rules if r.name == name)

    def used_rules(self) -> tuple[SnakeRule, ...]:
        """Rules with at least one job in the DAG, in the Snakefile's order."""
        used = {job.rule for job in self.jobs}
        return tuple(r for r in self.rules if r.name in used)


def load_workflow(snakefile: Path, workdir: Path, configfile: Path | None,
                  env: Mapping[str, str], room: Room, timeout: float = 300) -> SnakeWorkflow:
    """Build the DAG as ``snakemake -n`` does, confined in ``room``; runs no job.

    ``configfile`` (the request's inputs) is merged over the workflow's own
    ``configfile:``, as ``--configfile`` does; None when there is none, so
    that Snakemake reports a missing ``configfile:`` itself.
    """
    where = str(snakefile)
    if not snakefile.is_file():
        raise UnsupportedCrate("the workflow's main file is missing", where=where)
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "cratebridge_snakemake.inspect", "--snakefile",
               str(snakefile), "--directory", str(workdir)]
    if configfile is not None:
        command += ["--configfile", str(configfile)]
    out, err = run_confined(command, room=room, env=env, cwd=workdir, timeout=timeout,
                            what="reading the Snakefile", where=where)
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise UnsupportedCrate(f"Snakemake could not read the workflow: {tail(err)}",
                               where=where) from None
    references = _references(data.get("references", ()))
    if "error" in data:
        _withhold_foreign_error(snakefile, workdir, references)
        raise UnsupportedCrate(f"Snakemake could not read the workflow: {data['error']}"
                               + _hint(str(data["error"])), where=where)
    return SnakeWorkflow(
        snakefile=snakefile, snakemake_version=data["snakemake_version"],
        default_target=data.get("default_target"),
        rules=tuple(SnakeRule(r["name"], r["kind"], r["image"], r["local"], r.get("snakefile"))
                    for r in data["rules"]),
        jobs=tuple(_job(j) for j in data["jobs"]),
        references=references, shell=data.get("shell"),
    )


def _hint(error: str) -> str:
    """What to do about a failed load, where the error alone may mislead."""
    if "KeyError" in error:
        return ("; a config key the workflow uses is set neither by its own configfile nor "
                "by a request input of that name (each input's FormalParameter name is a "
                "config key, given over the workflow's configfile)")
    return ""


def _job(data: Mapping[str, Any]) -> SnakeJob:
    return SnakeJob(data["jobid"], data["rule"], data["wildcards"], data["image"],
                    data["target"], inputs=tuple(data.get("input", ())),
                    outputs=tuple(data.get("output", ())), logs=tuple(data.get("log", ())),
                    benchmarks=tuple(data.get("benchmark", ())))


def _references(data: Iterable[Mapping[str, Any]]) -> tuple[SnakeReference, ...]:
    return tuple(SnakeReference(RefKind(r["kind"]), r["written"], r.get("document"),
                                r.get("path"), r.get("rule")) for r in data)


def _withhold_foreign_error(snakefile: Path, workdir: Path,
                            references: tuple[SnakeReference, ...]) -> None:
    """Refuse, without Snakemake's message, a failed load that read a file from outside.

    Snakemake's error may quote the file it failed on; when the workflow had
    included or loaded a file outside the Snakefile's folder (the only part of
    the crate known here), that quote could be anything on the host. When the
    Snakefile is in the working copy (``workdir``), all of the copy counts.
    """
    work = _real(workdir)
    folder = work if _inside(_real(snakefile), (work,)) else _real(snakefile.parent)
    for ref in references:
        if ref.kind not in (RefKind.INCLUDE, RefKind.CONFIGFILE):
            continue
        allowed = (folder, work) if ref.kind is RefKind.CONFIGFILE else (folder,)
        if ref.path is None or not _inside(_real(Path(ref.path)), allowed):
            raise UnsafeCrate(
                f"Snakemake could not read the workflow, and its {ref.kind.value} "
                f"{ref.written!r} points outside the Snakefile's folder; Snakemake's error "
                "is not shown so that nothing from outside the crate is echoed. A workflow "
                "may only include and load files inside its crate, by relative paths",
                where=_document(ref, snakefile))


# Where each kind of reference may point: "roots" (the crate, the workflow's folder and
# the operator's datasets), "workdir" (Snakemake's --directory, the engine's writable folder).
_ALLOWED = {
    RefKind.INCLUDE: ("roots",), RefKind.SCRIPT: ("roots",), RefKind.NOTEBOOK: ("roots",),
    RefKind.CONDA: ("roots",), RefKind.CONFIGFILE: ("roots", "workdir"),
    RefKind.WORKDIR: ("workdir",),
}


def check_references(workflow: SnakeWorkflow, roots: tuple[Path, ...], workdir: Path) -> None:
    """Refuse a workflow that names a file outside the crate (defence in depth).

    Allow-list: a reference passes only if its real path (symlinks and ``..``
    resolved) lies inside an allowed folder. Included Snakefiles, ``script:``,
    ``notebook:`` and ``conda:`` files must be inside ``roots`` (the crate, the
    workflow's folder, operator-mapped datasets); configfiles and job inputs
    inside ``roots`` or ``workdir`` (Snakemake's ``--directory``); job outputs,
    logs, benchmarks and a ``workdir:`` directive inside ``workdir``. Relative
    job paths resolve against ``workdir``. Raises
    :class:`~cratebridge.errors.UnsafeCrate` naming the document and the
    reference as written; never shows a file's content.
    """
    folders = {"roots": tuple(_real(r) for r in roots), "workdir": (_real(workdir),)}
    ordered = sorted(workflow.references, key=lambda r: r.kind is not RefKind.INCLUDE)
    for ref in ordered:  # includes first: their content is only trusted once they pass
        allowed = tuple(f for name in _ALLOWED[ref.kind] for f in folders[name])
        if ref.path is None or not _inside(_real(Path(ref.path)), allowed):
            raise UnsafeCrate(_refusal(ref.kind.value, ref.written, _ALLOWED[ref.kind]),
                              where=_document(ref, workflow.snakefile))
    documents = {rule.name: rule.snakefile for rule in workflow.rules}
    for job in workflow.jobs:
        where = _label(job.rule, documents.get(job.rule), workflow.snakefile)
        for kind, paths, names in (("input", job.inputs, ("roots", "workdir")),
                                   ("output", job.outputs, ("workdir",)),
                                   ("log", job.logs, ("workdir",)),
                                   ("benchmark", job.benchmarks, ("workdir",))):
            allowed = tuple(f for name in names for f in folders[name])
            for path in paths:
                if not _inside(_real(workdir / path), allowed):
                    raise UnsafeCrate(_refusal(f"{kind} file", path, names), where=where)


def _refusal(kind: str, written: str, allowed: tuple[str, ...]) -> str:
    inside = ("the crate, an operator-mapped dataset or Snakemake's working folder"
              if allowed == ("roots", "workdir") else
              "Snakemake's working folder (use a relative path without '..')"
              if allowed == ("workdir",) else "the crate")
    return (f"{kind} {written!r} points outside the folders a workflow may use: it must "
            f"resolve (symlinks followed) to a path inside {inside}")


def _document(ref: SnakeReference, snakefile: Path) -> str:
    return _label(ref.rule, ref.document, snakefile)


def _label(rule: str | None, document: str | None, snakefile: Path) -> str:
    """``rule NAME in FILE`` or ``FILE``, FILE relative to the main Snakefile's folder."""
    path = Path(document) if document else snakefile
    if path.is_relative_to(snakefile.parent):
        path = path.relative_to(snakefile.parent)
    return f"rule {rule} in {path}" if rule else str(path)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(path == folder or path.is_relative_to(folder) for folder in folders)


def check_rules(workflow: SnakeWorkflow, default_image: str | None, cluster: bool,
                python_image: str | None = None) -> None:
    """Refuse rules that could not run in a container under our executor.

    On a cluster (``cluster``), a ``localrules:`` rule is refused: Snakemake would
    run it outside the sandbox.

    A ``run:`` / ``script:`` rule needs an image with Snakemake: its own
    ``container:`` or the operator's ``python_image`` (whether the image has
    Snakemake is checked by the engine, which can look into images).
    """
    for rule in workflow.used_rules():
        if rule.kind == "norun":
            continue
        where = f"rule {rule.name} in {workflow.snakefile.name}"
        if rule.kind in REFUSED_KINDS:
            raise UnsupportedCrate(
                f"rule {rule.name} cannot run in the cratebridge sandbox: "
                f"{REFUSED_KINDS[rule.kind]}; rewrite it as a shell: rule with a container:",
                where=where)
        if rule.kind in SNAKEMAKE_KINDS:
            if rule.image is None and python_image is None:
                raise UnsupportedCrate(
                    f"rule {rule.name} has {_WHAT[rule.kind]}, whose Python Snakemake runs "
                    "in a container with Snakemake, and it names no container: while "
                    "[engines.snakemake] python_image is set to none; set python_image "
                    "(e.g. the image `cratebridge images build` makes, "
                    "cratebridge/snakemake:<Snakemake version>), or give the rule a "
                    "container: with the same Snakemake", where=where)
        elif rule.image is None and default_image is None:
            raise PolicyRefused(
                f"rule {rule.name} has no container: directive and every rule must run in a "
                "container; add one, or set [engines.snakemake] default_container",
                rule="containers.required", where=where)
        if cluster and rule.local:
            raise UnsupportedCrate(
                f"rule {rule.name} is a localrule: on a cluster Snakemake would run it with "
                "its own local executor, outside the sandbox; remove it from localrules",
                where=where)


_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?")


def config_value(value: object) -> object:
    """A PropertyValue as a config value: JSON types kept, numeric/boolean strings parsed.

    ``"42"`` -> 42, ``"0.25"`` -> 0.25, ``"true"``/``"false"`` -> bool; anything
    else (``"007"``, ``"hello"``) stays a string. A Snakefile cannot declare
    types, so this is the rule, documented in docs/snakemake.md.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text) and any(c in text for c in ".eE"):
        return float(text)
    return value


def bind_config(request: RunRequest) -> dict[str, Any]:
    """The Snakemake config for a request: one key per FormalParameter name."""
    config: dict[str, Any] = {}
    for binding in request.inputs:
        where = f"input {binding.entity_id} (parameter {binding.parameter!r})"
        if binding.parameter in config:
            raise MetadataError("two inputs are bound to the same config key", where=where)
        if binding.kind in (InputKind.FILE, InputKind.DIRECTORY):
            if binding.path is None:
                raise MetadataError("the file input has no path", where=where)
            config[binding.parameter] = str(binding.path.resolve())
        else:
            config[binding.parameter] = config_value(binding.value)
    return config
