"""Running the external ``rocrate-validator`` on a crate folder, offline.

Our crates are judged by that validator, not by our reading of the specs; the
conformance kit and the test suites call it through :class:`ExternalValidator`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ACCEPTED_FINDINGS", "FAILED_ACTION_FINDINGS", "UNSTATED_FINDINGS",
           "ExternalValidator", "Finding", "ValidatorResult", "find_shared_dir"]

#: RECOMMENDED checks a result crate may still fail, whatever the request and the
#: operator give, each with the reason (docs/result-crate.md has the same table).
ACCEPTED_FINDINGS: dict[str, str] = {
    "process-run-crate-0.5_5.1": "a workflow or tool file in the crate has a relative id, as "
    "RO-Crate requires of data entities; the check wants an http(s) id",
    "process-run-crate-0.5_3.2": "a tool or workflow file has a web address (url) only when the "
    "request gives the workflow one; a tool inside it never has one of its own",
    "five-safes-crate-0.4_45.0": "a DownloadAction is written only when the workflow came from "
    "the operator's mirror; a workflow shipped inside the request was not downloaded",
    "workflow-run-crate-0.5_12.1": "an array of files or folders is a PropertyValue listing "
    "them, its parameter typed by its items (File, Dataset), as runcrate's converter writes "
    "it and runcrate run reads it back",
}
#: RECOMMENDED checks a *failed* action may fail (the finding names the action).
FAILED_ACTION_FINDINGS: dict[str, str] = {
    "process-run-crate-0.5_11.1": "an action that failed before it wrote anything has no "
    "result to name",
}
#: RECOMMENDED checks a result crate fails only when the request or the operator's
#: configuration leaves out what they need, with what to give.
UNSTATED_FINDINGS: dict[str, str] = {
    "process-run-crate-0.5_7.1": "the request's Workflow RO-Crate states no version of the "
    "workflow",
    "process-run-crate-0.5_4.1": "the request's Workflow RO-Crate states no version of the "
    "workflow (for tools that are not files)",
    "ro-crate-1.1_22.2": "the request names no agent and the operator no [publisher]",
    "process-run-crate-0.5_8.6": "the request names no agent and the operator no [publisher]",
    "ro-crate-1.1_22.3": "the operator's configuration has no [publisher] (the TRE)",
    "five-safes-crate-0.4_38.0": "the request records no ValidationCheck (the TRE agent's "
    "validation of the request, before cratebridge)",
    "five-safes-crate-0.4_50.0": "the request records no SignOff (the TRE's approval, before "
    "cratebridge; [policy] require_sign_off refuses such requests)",
}


@dataclass(frozen=True)
class Finding:
    """One failed check: its id (``process-run-crate-0.5_3.2``), severity, message, entity."""

    check: str
    severity: str
    message: str
    entity: str

    def __str__(self) -> str:
        return f"{self.check} ({self.severity}) {self.entity}: {self.message}"


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

    def findings(self, crate_dir: Path, profile: str,
                 severity: str = "RECOMMENDED") -> list[Finding]:
        """Every check of ``profile`` (down to ``severity``) that ``crate_dir`` fails."""
        self.seed()
        command = [self.executable, "-y", "validate", "--offline", "--no-paging",
                   "--output-format", "json", "-p", profile,
                   "--extra-profiles-path", str(self.shared_dir / "validator-profiles"),
                   "--requirement-severity", severity, str(crate_dir)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            raise RuntimeError(f"rocrate-validator gave no JSON report (exit "
                               f"{done.returncode}):\n{done.stdout}{done.stderr}") from None
        return [Finding(str(issue.get("check", {}).get("identifier")),
                        str(issue.get("severity")), str(issue.get("message")),
                        str(issue.get("violatingEntity") or ""))
                for issue in report.get("issues", [])]
