"""Where a traceback goes instead of the user's terminal.

No traceback reaches a user: a failure nobody foresaw becomes a one-line
message naming a log file, and the traceback is written there, with the
command, the version and the time, for whoever reports the bug.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["error_log_dir", "write_traceback"]


def error_log_dir() -> Path:
    """``$CRATEBRIDGE_ERROR_LOGS``, else ``~/.cache/cratebridge/errors``."""
    env = os.environ.get("CRATEBRIDGE_ERROR_LOGS")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "cratebridge" / "errors"


def write_traceback(exc: BaseException, folder: Path | None = None,
                    name: str | None = None) -> Path | None:
    """Write ``exc``'s traceback to a new file in ``folder``; its path, or None if none could be.

    Without ``folder``: :func:`error_log_dir`, falling back to the system's
    temporary folder when that cannot be written.
    """
    from cratebridge import __version__

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    text = "".join([
        f"cratebridge {__version__} at {stamp}\n",
        f"command: {' '.join(sys.argv)}\n\n",
        *traceback.format_exception(exc),
    ])
    places = [folder] if folder is not None else [error_log_dir(), Path(tempfile.gettempdir())]
    for place in places:
        try:
            place.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = place / (name or f"cratebridge-error-{stamp}-{os.getpid()}.log")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as log:
                log.write(text)
            return path
        except OSError:
            continue
    return None
