"""The broker's door to Slurm: a confined engine's ``sbatch``, ``scancel`` and queries.

The run's broker (:mod:`cratebridge.containers.broker`) hands every Slurm command of the
engine's here. Each passes an allow-list (:mod:`cratebridge.containers.scheduler`);
``sbatch`` never submits the engine's script itself but a wrapper that rebuilds the
run's room on the node from a spec in the broker's own folder
(:mod:`cratebridge.containers.jobroom`), with the job's own broker there when
``[slurm] broker = "node"``. Each submission is a line in the run's ledger; the jobs
still there when the run ends are cancelled.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cratebridge.containers.confine import BROKER_DIR, ROOM_USER, Room
from cratebridge.containers.hardening import Authorised, Refused
from cratebridge.containers.ledger import now
from cratebridge.containers.sandbox import Sandbox, client_env
from cratebridge.containers.scheduler import (
    authorise_query,
    authorise_sbatch,
    authorise_scancel,
    directives,
)
from cratebridge.containers.shim import STDERR, STDIN, STDOUT, read_frame, send_frame

__all__ = ["SlurmDoor"]

MAX_SCRIPT = 1024 * 1024


class SlurmDoor:
    """One run's Slurm commands.

    ``room``: the engine's, rebuilt for each job (``None`` for a job's own broker, which
    submits nothing). ``ledger`` writes a line to the run's ledger; ``run_query`` runs an
    authorised query and streams its output to the engine's client, as the broker runs
    any command.
    """

    def __init__(self, sandbox: Sandbox, socket_path: Path, room: Room | None, uid: int,
                 gid: int, ledger: Callable[[dict[str, object]], None],
                 run_query: Callable[[socket.socket, Authorised], int]) -> None:
        self.sandbox = sandbox
        self.socket_folder = socket_path.parent
        self.folder = sandbox.ledger.parent
        self.room = room
        self.uid, self.gid = uid, gid
        self.ledger = ledger
        self._run_query = run_query
        self.jobs: set[str] = set()  # Slurm jobs this run submitted

    def answer(self, sock: socket.socket, tool: str, argv: list[str], cwd: str,
               env: dict[str, str]) -> int:
        """A Slurm command of the engine's (``cwd`` and ``env`` are its own)."""
        if self.sandbox.scheduler != "slurm":
            raise Refused(f"'{tool}': this run has no scheduler; the engine runs its steps "
                          "here")
        if self.room is None:  # a Slurm job's own broker, on its node
            raise Refused(f"'{tool}': a Slurm job of this run cannot submit jobs of its own")
        program = shutil.which(tool)
        if program is None:
            raise Refused(f"'{tool}' is not installed on this host")
        if tool == "sbatch":
            return self._submit(sock, program, argv, cwd, env)
        allowed = authorise_scancel(argv, self.jobs) if tool == "scancel" \
            else authorise_query(tool, argv, ROOM_USER, getpass.getuser())
        return self._run_query(sock, Authorised(tuple(allowed[1:]), tool, program=program))

    def _submit(self, sock: socket.socket, program: str, argv: list[str], client_cwd: str,
                env: dict[str, str]) -> int:
        """sbatch a job that runs the engine's script in a room of its own (see jobroom)."""
        assert self.room is not None
        submission = authorise_sbatch(argv)
        cwd = self._inside_run(client_cwd or str(self.sandbox.writable[0]), "cwd")
        script = submission.script or self._script(sock, submission.script_path or "", cwd)
        if submission.script is None:  # its #SBATCH lines pass the same allow-list
            submission = replace(authorise_sbatch([*directives(script), *argv]), script=script)
        job_env = dict(env)
        job_env.update(v.partition("=")[::2] for v in submission.export)
        number = f"{time.time_ns()}"
        scripts = self.socket_folder / "jobs"  # seen by the room, read-only
        scripts.mkdir(exist_ok=True)
        (scripts / f"{number}.sh").write_text(script)
        (scripts / f"{number}.sh").chmod(0o755)  # run by its own #! line, as sbatch would
        jobs = self.folder / "jobs"  # the broker's own: the engine cannot change the spec
        jobs.mkdir(exist_ok=True)
        spec = jobs / f"{number}.json"
        node = {"sandbox": self.sandbox.to_json(), "uid": self.uid, "gid": self.gid} \
            if self.sandbox.slurm_broker == "node" else None
        spec.write_text(json.dumps({"room": self.room.to_json(), "env": job_env,
                                    "cwd": str(cwd), "shebang": script.startswith("#!"),
                                    "script": str(BROKER_DIR / "jobs" / f"{number}.sh"),
                                    "node_broker": node, "ledger": str(self.sandbox.ledger),
                                    "broker_host": socket.gethostname()}))
        wrapper = jobs / f"{number}.job"
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m "
                           f"cratebridge.containers.jobroom {spec}\n")
        logs = {"--output": submission.output, "--error": submission.error}
        log_flags = [f"{flag}={self._inside_run(value, flag, writable=True)}"
                     for flag, value in logs.items() if value]
        if not submission.output:
            log_flags.append(f"--output={jobs}/slurm-%j.out")
        command = [program, *submission.flags, "--export=NONE", f"--chdir={cwd}", *log_flags,
                   str(wrapper)]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              env=client_env())
        words = done.stdout.strip().split()
        if done.returncode == 0 and words:
            self.jobs.add(words[-1].split(";")[0])
        self.ledger({"slurm_job": words[-1].split(";")[0] if words else None,
                     "argv": command, "exit_code": done.returncode, "time": now()})
        send_frame(sock, STDOUT, done.stdout.encode())
        send_frame(sock, STDERR, done.stderr.encode())
        return done.returncode

    def _script(self, sock: socket.socket, path: str, cwd: Path) -> str:
        """The job script: from the client's standard input, or a file in the run."""
        if path in ("/dev/stdin", "-"):
            data = b""
            while (frame := read_frame(sock)) is not None and frame[0] == STDIN \
                    and frame[1]:
                data += frame[1]
                if len(data) > MAX_SCRIPT:
                    raise Refused("sbatch: the job script is too long")
            return data.decode(errors="replace")
        host = self._inside_run(path if path.startswith("/") else str(cwd / path), "script")
        if not host.is_file() or host.stat().st_size > MAX_SCRIPT:
            raise Refused(f"sbatch: {path} is not a job script in the run's folder")
        return host.read_text(errors="replace")

    def _inside_run(self, path: str, what: str, writable: bool = False) -> Path:
        """A path the engine gave, on the host: inside the run's folder, or refused."""
        if not path.startswith("/"):
            raise Refused(f"sbatch: {what} {path!r} is not an absolute path")
        host = self.sandbox.host_path(Path(path))
        real = Path(os.path.realpath(host.parent if writable else host))
        roots = self.sandbox.writable if writable else self.sandbox.mountable
        if not any(real == Path(os.path.realpath(r)) or Path(os.path.realpath(r)) in
                   real.parents for r in roots):
            raise Refused(f"sbatch: {what} {path} is outside the run's folder")
        return real / host.name if writable else real

    def cancel_jobs(self) -> None:
        """Cancel every job this run submitted that Slurm still has (the run has ended)."""
        program = shutil.which("scancel")
        if self.jobs and program:
            subprocess.run([program, *sorted(self.jobs)], capture_output=True, check=False)
