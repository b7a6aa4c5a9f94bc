"""Running the external ``rocrate-validator`` on a crate folder, offline.

Our crates are judged by that validator, not by our reading of the specs; the
conformance kit and the test suites call it through :class:`ExternalValidator`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExternalValidator", "ValidatorResult", "find_shared_dir"]


@dataclass(frozen=True)
class ValidatorResult:
    ok: bool
    output: str


def find_shared_dir(start: Path | None = None) -> Path | None:
    """The ``shared/`` folder (validator profiles, contexts): ``$CRATEBRIDGE_SHARED_DIR``,
    or a ``shared`` folder beside a parent of ``start`` (the repository's checkout)."""
    env = os.environ.get("CRATEBRIDGE_SHARED_DIR")
    if env:
        return Path(env)
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "validator-profiles"
        if candidate.is_dir():
            return candidate.parent
    return None


@dataclass
class ExternalValidator:
    """``rocrate-validator validate --offline`` with the Five Safes profile added."""

    executable: str
    shared_dir: Path
    seeded: bool = False

    @classmethod
    def find(cls) -> ExternalValidator | None:
        beside = Path(sys.executable).parent / "rocrate-validator"
        executable = str(beside) if beside.exists() else shutil.which("rocrate-validator")
        shared = find_shared_dir()
        if executable is None or shared is None:
            return None
        return cls(executable, shared)

    def seed(self) -> None:
        """Put the JSON-LD contexts in the validator's cache so ``--offline`` works."""
        if self.seeded:
            return
        tool = self.shared_dir / "tools" / "seed-validator-cache"
        done = subprocess.run([sys.executable, str(tool)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"seed-validator-cache failed:\n{done.stdout}{done.stderr}")
        self.seeded = True

    def validate(self, crate_dir: Path, profile: str,
                 severity: str = "REQUIRED") -> ValidatorResult:
        self.seed()
        command = [self.executable, "-y", "validate", "--offline", "--no-paging",
                   "--verbose", "--output-line-width", "200", "-p", profile,
                   "--extra-profiles-path", str(self.shared_dir / "validator-profiles"),
                   "--requirement-severity", severity, str(crate_dir)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return ValidatorResult(done.returncode == 0, done.stdout + done.stderr)
