"""The operator's configuration: one TOML file, parsed into frozen settings.

Every section is optional; with no file at all cratebridge runs offline, lets
any image already present locally run, and keeps runs under
``$CRATEBRIDGE_RUNS_DIR`` (or ``~/.cache/cratebridge/runs``). See
``docs/configuration.md`` for each key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cratebridge.containers.sandbox import ImagePolicy, Limits
from cratebridge.errors import PolicyRefused, UsageError
from cratebridge.intake.unpack import IntakeLimits

__all__ = ["Config", "ImagePolicy", "load_config"]

SIGN_OFF = "https://w3id.org/shp#SignOff"

#: Variables an engine process may see from the caller's environment.
DEFAULT_ENV_ALLOW = ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE")


@dataclass(frozen=True)
class Config:
    """Everything the operator decides; see ``docs/configuration.md``."""

    source: Path | None = None
    runs_dir: Path = field(default_factory=lambda: _default_runs_dir())
    timeout: float | None = None
    keep_runs: bool = True
    engines: Mapping[str, str] = field(default_factory=dict)
    allowed_engines: tuple[str, ...] | None = None
    engine_settings: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    # an operator's TRE holds bigger crates than the library default allows
    intake: IntakeLimits = field(
        default_factory=lambda: IntakeLimits(max_total_bytes=20 * 1024**3))
    workflow_mirror: Path | None = None
    images: ImagePolicy = field(default_factory=ImagePolicy)
    require_sign_off: bool = False
    datasets: Mapping[str, Path] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    container_user: str = "1000:1000"
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    secrets: Mapping[str, str] = field(default_factory=dict)

    def check_sign_off(self, statuses: Mapping[str, str | None]) -> None:
        """Refuse when a completed sign-off is required and absent.

        ``statuses`` maps each review action's additionalType to its status.
        """
        if not self.require_sign_off:
            return
        status = statuses.get(SIGN_OFF)
        if status is None or not status.endswith("CompletedActionStatus"):
            raise PolicyRefused(
                "the request has no completed SignOff (https://w3id.org/shp#SignOff) "
                "and the operator requires one",
                rule="policy.require_sign_off",
            )

    @property
    def step_uid_gid(self) -> tuple[int, int]:
        """The unprivileged uid and gid the engine and every step run as."""
        uid, _, gid = self.container_user.partition(":")
        return int(uid), int(gid or uid)

    def redact(self, text: str) -> str:
        """Text with every secret value replaced by its name."""
        for name, value in self.secrets.items():
            if value:
                text = text.replace(value, f"<secret:{name}>")
        return text


def _default_runs_dir() -> Path:
    env = os.environ.get("CRATEBRIDGE_RUNS_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "cratebridge" / "runs"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def _duration(value: object, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise UsageError(f"{value!r} is not a duration such as 90, '30m' or '2h'", where=where)
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * scale


def _table(data: Mapping[str, object], key: str, where: str) -> Mapping[str, object]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"[{key}] must be a table", where=where)
    return value


_KNOWN = {"run", "engines", "intake", "workflows", "images", "policy", "datasets",
          "limits", "env", "secrets"}


def load_config(path: Path | None) -> Config:
    """Read the operator's TOML file (``None``: the defaults)."""
    if path is None:
        env = os.environ.get("CRATEBRIDGE_CONFIG")
        if not env:
            return Config()
        path = Path(env)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("configuration file not found", where=where) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"not valid TOML: {exc}", where=where) from None
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise UsageError(f"unknown section(s) {unknown}; known: {sorted(_KNOWN)}", where=where)
    return _build(data, path)


def _build(data: Mapping[str, object], path: Path) -> Config:
    where = str(path)
    base = path.parent
    run = _table(data, "run", where)
    engines = dict(_table(data, "engines", where))
    intake = _table(data, "intake", where)
    workflows = _table(data, "workflows", where)
    images = _table(data, "images", where)
    policy = _table(data, "policy", where)
    datasets = _table(data, "datasets", where)
    limits = _table(data, "limits", where)
    env = _table(data, "env", where)
    secrets = _table(data, "secrets", where)

    default = {k: str(v) for k, v in engines.items() if isinstance(v, str)}
    allowed = engines.get("allow")
    settings = {k: dict(v) for k, v in engines.items() if isinstance(v, dict)}
    secret_values = {str(k): _secret(v) for k, v in secrets.items()}
    return Config(
        source=path,
        runs_dir=_path(run.get("runs_dir"), base) or _default_runs_dir(),
        timeout=_duration(run["timeout"], f"{where} [run] timeout") if "timeout" in run else None,
        keep_runs=bool(run.get("keep_runs", True)),
        engines={k: v for k, v in default.items() if k != "allow"},
        allowed_engines=tuple(str(a) for a in allowed) if isinstance(allowed, list) else None,
        engine_settings=settings,
        intake=IntakeLimits(**{"max_total_bytes": 20 * 1024**3,  # type: ignore[arg-type]
                               **intake}),
        workflow_mirror=_path(workflows.get("mirror"), base),
        images=ImagePolicy(tuple(str(p) for p in _list(images.get("approved", [])))),
        require_sign_off=bool(policy.get("require_sign_off", False)),
        datasets={str(k): Path(str(v)) for k, v in datasets.items()},
        limits=Limits(
            memory=str(limits.get("memory", Limits.memory)),
            cpus=float(limits.get("cpus", Limits.cpus)),  # type: ignore[arg-type]
            pids=int(limits.get("pids", Limits.pids)),  # type: ignore[call-overload]
        ),
        container_user=_step_user(limits.get("user", "1000:1000"), f"{where} [limits] user"),
        env_allow=tuple(str(v) for v in _list(env.get("allow", list(DEFAULT_ENV_ALLOW)))),
        secrets=secret_values,
    )


_USER = re.compile(r"^([0-9]+)(?::([0-9]+))?$")


def _step_user(value: object, where: str) -> str:
    """``UID[:GID]``, numeric and never root: the engine and the steps run as this user."""
    match = _USER.match(str(value).strip())
    if not match:
        raise UsageError(f"{value!r} is not a numeric UID or UID:GID", where=where)
    uid, gid = int(match.group(1)), int(match.group(2) or match.group(1))
    if uid == 0 or gid == 0:
        raise UsageError("steps and engines never run as root (uid or gid 0); give an "
                         "unprivileged UID:GID such as 1000:1000", where=where)
    return f"{uid}:{gid}"


def _secret(value: object) -> str:
    """A secret is given inline or as ``{ env = "NAME" }`` / ``{ file = "PATH" }``."""
    if isinstance(value, dict):
        if "env" in value:
            return os.environ.get(str(value["env"]), "")
        if "file" in value:
            return Path(str(value["file"])).read_text().strip()
    return str(value)


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _path(value: object, base: Path) -> Path | None:
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()
