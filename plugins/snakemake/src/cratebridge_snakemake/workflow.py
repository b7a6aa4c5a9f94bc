"""A Snakefile, read offline by Snakemake: its rules, images and jobs; binding a request to it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cratebridge.errors import MetadataError, PolicyRefused, UnsupportedCrate
from cratebridge.intake.request import InputKind, RunRequest

__all__ = ["SnakeJob", "SnakeRule", "SnakeWorkflow", "bind_config", "check_rules",
           "config_value", "load_workflow"]

# Rules whose code would run in Snakemake's own process or fetch code at run time.
REFUSED_KINDS = {
    "run": "a run: block executes Python inside Snakemake's own process, outside any container",
    "script": "script: needs Snakemake's Python object inside the container (not supported yet)",
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


@dataclass(frozen=True)
class SnakeJob:
    jobid: int
    rule: str
    wildcards: Mapping[str, str]
    image: str | None
    target: bool


@dataclass(frozen=True)
class SnakeWorkflow:
    snakefile: Path
    snakemake_version: str
    default_target: str | None
    rules: tuple[SnakeRule, ...]
    jobs: tuple[SnakeJob, ...]

    def rule(self, name: str) -> SnakeRule:
        return next(r for r in self.rules if r.name == name)

    def used_rules(self) -> tuple[SnakeRule, ...]:
        """Rules with at least one job in the DAG, in the Snakefile's order."""
        used = {job.rule for job in self.jobs}
        return tuple(r for r in self.rules if r.name in used)


def load_workflow(snakefile: Path, workdir: Path, configfile: Path, env: Mapping[str, str],
                  timeout: float = 300) -> SnakeWorkflow:
    """Build the DAG as ``snakemake -n`` does, in a child process; runs no job."""
    if not snakefile.is_file():
        raise UnsupportedCrate("the workflow's main file is missing", where=str(snakefile))
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "cratebridge_snakemake.inspect", "--snakefile",
               str(snakefile), "--directory", str(workdir), "--configfile", str(configfile)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=dict(env),
                              cwd=workdir, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UnsupportedCrate(f"reading the Snakefile took longer than {timeout:.0f}s",
                               where=str(snakefile)) from None
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise UnsupportedCrate(f"Snakemake could not read the workflow: {tail}",
                               where=str(snakefile)) from None
    if "error" in data:
        raise UnsupportedCrate(f"Snakemake could not read the workflow (check that every "
                               f"config key it uses is given as an input): {data['error']}",
                               where=str(snakefile))
    return SnakeWorkflow(
        snakefile=snakefile, snakemake_version=data["snakemake_version"],
        default_target=data.get("default_target"),
        rules=tuple(SnakeRule(r["name"], r["kind"], r["image"], r["local"])
                    for r in data["rules"]),
        jobs=tuple(SnakeJob(j["jobid"], j["rule"], j["wildcards"], j["image"], j["target"])
                   for j in data["jobs"]),
    )


def check_rules(workflow: SnakeWorkflow, default_image: str | None, cluster: bool) -> None:
    """Refuse rules that could not run in a container under our executor."""
    for rule in workflow.used_rules():
        if rule.kind == "norun":
            continue
        where = f"rule {rule.name} in {workflow.snakefile.name}"
        if rule.kind in REFUSED_KINDS:
            raise UnsupportedCrate(
                f"rule {rule.name} cannot run in the cratebridge sandbox: "
                f"{REFUSED_KINDS[rule.kind]}; rewrite it as a shell: rule with a container:",
                where=where)
        if rule.image is None and default_image is None:
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
