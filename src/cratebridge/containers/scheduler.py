"""The broker's Slurm door: what a confined engine may ask of the scheduler.

An engine on Slurm (Toil's leader, Snakemake's Slurm executor) submits and
watches jobs from inside its room, which has no network and no munge socket:
its ``sbatch``, ``squeue``, ... are the broker's client, and the broker decides
here, from allow-lists. Queries that only read (``squeue``, ``sacct``,
``sinfo``, ``sshare``, ``scontrol show``, ``sacctmgr list``) run as given;
``scancel`` names only jobs this run submitted; ``sbatch`` keeps a closed list
of resource and naming flags and never runs the engine's script as it is: the
broker writes it into its own folder and submits a job that starts a room of
its own on the node (:mod:`cratebridge.containers.jobroom`) and runs the
script there, as the engine's uid, with the engine's environment and the same
broker as its door to Docker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cratebridge.containers.hardening import Refused
from cratebridge.containers.shim import SLURM_TOOLS

__all__ = [
    "QUERIES",
    "Submission",
    "authorise_query",
    "authorise_sbatch",
    "authorise_scancel",
    "directives",
]

QUERIES = frozenset(SLURM_TOOLS) - {"sbatch", "scancel"}

# sbatch flags kept as given (resources, names, accounting); anything else is refused.
SBATCH_KEPT = {"-J", "--job-name", "-t", "--time", "--mem", "--mem-per-cpu", "-c",
               "--cpus-per-task", "-n", "--ntasks", "-N", "--nodes", "-p", "--partition",
               "--qos", "-q", "-A", "--account", "--gres", "-C", "--constraint", "--signal",
               "--requeue", "--no-requeue", "--parsable", "--nice", "--time-min",
               "--ntasks-per-node", "--comment"}
SBATCH_BOOLEANS = {"--requeue", "--no-requeue", "--parsable"}
# Owned by the policy: the job's environment, folder, logs and script are the broker's.
SBATCH_OWNED = {"--export", "-D", "--chdir", "-o", "--output", "-e", "--error", "--wrap"}
SCANCEL_VALUED = {"-s", "--signal", "-M", "--clusters"}
SCANCEL_BOOLEANS = {"-b", "--batch", "-f", "--full", "-Q", "--quiet"}
SCANCEL_DROPPED = {"-M", "--clusters"}  # one cluster: the one this broker submits to


@dataclass
class Submission:
    """An ``sbatch`` the broker may make: kept flags, and what the engine asked for."""

    flags: list[str]
    script: str | None = None  # --wrap command, as a script
    script_path: str | None = None  # a script file (``/dev/stdin``: read from the client)
    output: str | None = None
    error: str | None = None
    export: list[str] = field(default_factory=list)  # NAME=VALUE pairs from --export


def _options(args: list[str], valued: set[str], booleans: set[str],
             tool: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(flag, value) pairs and positional arguments; unknown flags refused."""
    found: list[tuple[str, str | None]] = []
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if not arg.startswith("--") and len(arg) > 2 and name not in valued | booleans:
            name, eq, value = arg[:2], "=", arg[2:]  # -J<name>
        if name in booleans:
            found.append((name, None))
        elif name in valued:
            if not eq:
                i += 1
                if i >= len(args):
                    raise Refused(f"{tool}: {name} has no value")
                value = args[i]
            found.append((name, value))
        else:
            raise Refused(f"{tool}: option {name} is not allowed inside a cratebridge run")
        i += 1
    return found, positional


def _tokens(name: str, value: str | None) -> list[str]:
    """A flag as Slurm's option parser takes it (``-p VALUE``, ``--partition=VALUE``)."""
    if value is None:
        return [name]
    return [f"{name}={value}"] if name.startswith("--") else [name, value]


def authorise_query(tool: str, args: list[str], room_user: str = "",
                    submitter: str = "") -> list[str]:
    """A read-only query; ``scontrol`` and ``sacctmgr`` only show and list.

    The broker submits the run's jobs, so Slurm knows them as ``submitter``'s: a
    query for the room's user (``-u engine``) asks for those.
    """
    if room_user and submitter:
        args = [_user(a, room_user, submitter) for a in args]
    if tool not in QUERIES:
        raise Refused(f"'{tool}' is not allowed inside a cratebridge run")
    words = [a for a in args if not a.startswith("-")]
    if tool == "scontrol" and (not words or words[0] != "show"):
        raise Refused("scontrol: only 'scontrol show ...' is allowed inside a cratebridge run")
    if tool == "sacctmgr" and (not words or words[0] not in ("list", "show")):
        raise Refused("sacctmgr: only 'sacctmgr list|show ...' is allowed inside a "
                      "cratebridge run")
    return [tool, *args]


def _user(arg: str, room_user: str, submitter: str) -> str:
    if arg == room_user:
        return submitter
    for flag in ("--user=", "-u"):
        if arg == f"{flag}{room_user}":
            return f"{flag}{submitter}"
    return arg


def authorise_scancel(args: list[str], ours: set[str]) -> list[str]:
    """``scancel`` of jobs this run submitted (by id), with a few harmless flags."""
    found, ids = _options(args, SCANCEL_VALUED, SCANCEL_BOOLEANS, "scancel")
    if not ids:
        raise Refused("scancel: name the jobs to cancel by id")
    strangers = [i for i in ids if i.split("_")[0].split(".")[0] not in ours]
    if strangers:
        raise Refused(f"scancel: {', '.join(strangers)} is not a job of this run")
    flags = [t for name, value in found if name not in SCANCEL_DROPPED
             for t in _tokens(name, value)]
    return ["scancel", *flags, *ids]


def directives(script: str) -> list[str]:
    """The ``#SBATCH`` options at the head of a job script (sbatch reads them too)."""
    found: list[str] = []
    for line in script.splitlines()[1:]:
        text = line.strip()
        if text.startswith("#SBATCH"):
            found += text.removeprefix("#SBATCH").split()
        elif text and not text.startswith("#"):
            break
    return found


def authorise_sbatch(args: list[str]) -> Submission:
    """What of an engine's ``sbatch`` the broker keeps; the script it asked to run."""
    booleans = SBATCH_BOOLEANS
    found, positional = _options(args, (SBATCH_KEPT | SBATCH_OWNED) - booleans, booleans,
                                 "sbatch")
    submission = Submission(flags=[])
    for name, value in found:
        if name in ("-o", "--output"):
            submission.output = value
        elif name in ("-e", "--error"):
            submission.error = value
        elif name == "--wrap":
            submission.script = f"#!/bin/sh\n{value}\n"
        elif name == "--export" and value:
            submission.export += [v for v in value.split(",") if "=" in v]
        elif name in SBATCH_KEPT:
            submission.flags += _tokens(name, value)
    if submission.script is None:
        if not positional:
            raise Refused("sbatch: give a script or --wrap")
        submission.script_path = positional[0]
        if len(positional) > 1:
            raise Refused("sbatch: script arguments are not allowed inside a cratebridge run")
    elif positional:
        raise Refused("sbatch: a script and --wrap together")
    return submission

