"""The exception tree of cratebridge; each error knows its CLI exit code.

::

    CratebridgeError              (exit 1, the generic failure)
    ├── UsageError                (exit 2) bad arguments to the CLI or API
    ├── CrateRejected             (exit 3) malformed, unsafe or unsupported crate
    │   ├── UnsafeCrate           zip slip, symlinks, bombs, absolute paths
    │   ├── BagItError            manifest or checksum problems
    │   ├── MetadataError         bad JSON / JSON-LD, missing entities
    │   └── UnsupportedCrate      unknown language, profile, nothing runnable
    ├── PolicyRefused             (exit 4) the operator's policy says no
    ├── EngineUnavailable         (exit 5) no plugin, plugin fails to load, engine missing
    │   └── FailedToLoadPlugin    an entry point raised on import
    ├── InternalError             (exit 6) cratebridge could not finish its own work: a
    │                             failure nobody foresaw (a bug), or no result crate could
    │                             be written (the disk is full); the traceback is in a log
    ├── WorkflowFailed            (exit 1) the workflow ran and failed (result crate written)
    └── OutputsDiffer             (exit 7) verify: the re-run succeeded, but an output or a
                                  step's image is not the recorded one

    Interrupted                   (exit 130; a BaseException) a signal stopped cratebridge
                                  before a run began, or a second signal during one

The CLI maps these to exit codes in exactly one place (``cli.py``); nothing else
turns an error into a process exit.
"""

from __future__ import annotations

__all__ = [
    "BagItError",
    "CrateRejected",
    "CratebridgeError",
    "EngineUnavailable",
    "FailedToLoadPlugin",
    "InternalError",
    "Interrupted",
    "MetadataError",
    "OutputsDiffer",
    "PolicyRefused",
    "UnsafeCrate",
    "UnsupportedCrate",
    "UsageError",
    "WorkflowFailed",
]


class CratebridgeError(Exception):
    """Root of every error cratebridge raises on purpose.

    ``where`` names the file, entity or setting the problem is in, so that an
    operator can act on the message without a traceback.
    """

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        if self.where:
            return f"{self.where}: {self.message}"
        return self.message

    def to_json(self) -> dict[str, object]:
        """The error as a JSON object for ``--json`` output."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "where": self.where,
            "exit_code": self.exit_code,
        }


class UsageError(CratebridgeError):
    """The caller asked for something that makes no sense (bad path, bad flag)."""

    exit_code = 2


class CrateRejected(CratebridgeError):
    """The crate cannot be accepted: malformed, unsafe or unsupported."""

    exit_code = 3


class UnsafeCrate(CrateRejected):
    """The crate tries to escape its folder, hides links or would fill the disk."""


class BagItError(CrateRejected):
    """A BagIt bag is incomplete, or a file does not match its manifest."""


class MetadataError(CrateRejected):
    """``ro-crate-metadata.json`` is not JSON, not a crate, or lacks an entity."""


class UnsupportedCrate(CrateRejected):
    """The crate is well formed but asks for something cratebridge cannot run."""


class PolicyRefused(CratebridgeError):
    """The operator's policy refuses the request; ``rule`` names the rule."""

    exit_code = 4

    def __init__(self, message: str, *, rule: str, where: str | None = None) -> None:
        super().__init__(message, where=where)
        self.rule = rule

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "rule": self.rule}


class EngineUnavailable(CratebridgeError):
    """No engine can run the request: none registered, or its program is missing."""

    exit_code = 5


class FailedToLoadPlugin(EngineUnavailable):
    """Importing a plugin's entry point raised; ``cause`` is what it raised.

    ``group``: the entry point group it was registered in; ``kind``: what the group
    registers (``engine`` or ``language``), for the message.
    """

    def __init__(self, plugin: str, distribution: str, cause: BaseException, *,
                 group: str, kind: str = "engine") -> None:
        super().__init__(
            f"{kind} plugin {plugin!r} from {distribution} failed to load: "
            f"{type(cause).__name__}: {cause}",
            where=f"entry point {group}:{plugin}",
        )
        self.plugin = plugin
        self.distribution = distribution
        self.cause = cause


class InternalError(CratebridgeError):
    """cratebridge could not finish its own work; ``log`` holds the traceback, when there is one.

    Raised for a failure nobody foresaw (the CLI wraps any other exception in
    it), and when even a failed run's result crate cannot be written.
    """

    exit_code = 6

    def __init__(self, message: str, *, where: str | None = None,
                 log: str | None = None) -> None:
        super().__init__(message, where=where)
        self.log = log

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (details: {self.log})" if self.log else text

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "log": self.log}


class Interrupted(BaseException):
    """A signal stopped cratebridge where no result crate can record it (exit 130).

    Not a :class:`CratebridgeError`: like KeyboardInterrupt, it passes
    through ``except Exception``. ``str()`` names the signal.
    """

    exit_code = 130


class WorkflowFailed(CratebridgeError):
    """The workflow ran and failed; a result crate was still written."""

    exit_code = 1

    def __init__(self, message: str, *, result_path: str | None = None) -> None:
        super().__init__(message)
        self.result_path = result_path


class OutputsDiffer(CratebridgeError):
    """``cratebridge verify``: the re-run succeeded but did not reproduce the result crate.

    An output is different, missing or extra, or a step ran in an image whose
    local id is not the recorded one; ``result_path`` is the re-run's result crate.
    """

    exit_code = 7

    def __init__(self, message: str, *, result_path: str | None = None) -> None:
        super().__init__(message)
        self.result_path = result_path
