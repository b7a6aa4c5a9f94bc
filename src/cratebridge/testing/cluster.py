"""Whether the local Slurm cluster answers (scripts/setup-slurm, scripts/start-slurm)."""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["slurm_down"]


def slurm_down() -> str | None:
    """None when Slurm takes jobs here; otherwise why not, and what to run."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed: run scripts/setup-slurm"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=20, check=False)
        accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True,
                                    timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "sinfo or sacct does not answer: run scripts/start-slurm"
    if done.returncode != 0 or accounting.returncode != 0 or \
            not any(s in ("idle", "mixed", "allocated") for s in done.stdout.split()):
        return ("the local Slurm cluster is not running (no idle node in sinfo, or sacct "
                "fails): run scripts/start-slurm")
    return None
