"""What a Slurm job left on its node: ``python -m cratebridge.containers.epilog``.

For the cluster's ``Epilog`` (slurm.conf), which slurmd runs as root on the node
after every job, however the job ended. A job with a broker of its own
(``[slurm] broker = "node"``) removes its containers and releases its pinned
mounts itself when it ends or is cancelled, and its reaper does when the
wrapper alone is killed; a kill of the whole job at once (``scancel -s KILL``,
the job's processes killed together) takes the reaper too, and Docker's
containers, which are not the job's processes, would stay. The epilog removes
the containers labelled with the job (``org.cratebridge.slurm_job``, set by the
job's broker only) and detaches the mounts pinned under the job's folder
(``.../broker/nodes/job-<id>/broker/mounts/``), found in this node's mount table.

It reads only ``SLURM_JOB_ID``, never fails the job or the node (slurmd drains a
node whose epilog fails): it always exits 0, and says what it did on standard
error, which slurmd logs.
"""

from __future__ import annotations

import os
import subprocess
import sys

from cratebridge.containers.mounts import release_job_pins
from cratebridge.containers.reaper import remove_labelled
from cratebridge.containers.sandbox import SLURM_JOB_LABEL, find_docker

__all__ = ["clear_job", "main"]


def clear_job(job: str, docker: str) -> tuple[list[str], list[str]]:
    """Remove job ``job``'s containers on this node and release its pinned mounts:
    the container ids and the mount points."""
    return remove_labelled(docker, f"{SLURM_JOB_LABEL}={job}"), release_job_pins(job)


def main() -> int:
    job = os.environ.get("SLURM_JOB_ID", "")
    if not job.isdigit():
        return 0
    try:
        containers, mounts = clear_job(job, find_docker() or "docker")
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"cratebridge epilog: job {job}: {exc}", file=sys.stderr)
        return 0
    if containers or mounts:
        print(f"cratebridge epilog: job {job}: removed {len(containers)} container(s) "
              f"{' '.join(containers)}; released {len(mounts)} pinned mount(s)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
