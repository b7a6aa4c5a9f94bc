"""The operator's configuration: one TOML file, checked against its schema, in frozen settings.

Every section is optional; with no file at all cratebridge runs offline, lets
any image already present locally run, and keeps runs under
``$CRATEBRIDGE_RUNS_DIR`` (or ``~/.cache/cratebridge/runs``). Each key is
declared once, in :mod:`cratebridge.config_schema`; ``docs/configuration.md``
documents them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cratebridge.config_schema import DEFAULT_ENV_ALLOW, DEFAULT_TIMEOUT, OPERATOR_INTAKE, check
from cratebridge.containers.sandbox import ImagePolicy, Limits
from cratebridge.engines.registry import DEFAULT_ENGINES, language_names
from cratebridge.errors import PolicyRefused, UsageError
from cratebridge.intake.request import BUILTIN_LANGUAGES
from cratebridge.intake.unpack import IntakeLimits
from cratebridge.provenance.entities import Publisher

__all__ = ["DEFAULT_ENV_ALLOW", "Config", "ImagePolicy", "ServiceSettings", "ServiceToken",
           "describe", "load_config", "redact"]

SIGN_OFF = "https://w3id.org/shp#SignOff"


@dataclass(frozen=True)
class ServiceToken:
    """A bearer token of ``cratebridge serve``: its name, the SHA-256 of its secret, its rights."""

    name: str
    sha256: str
    operator: bool = False


@dataclass(frozen=True)
class ServiceSettings:
    """The ``[service]`` section: where ``cratebridge serve`` listens, keeps state, its limits.

    ``state_dir`` and ``database`` are ``None`` for their defaults (service/ beside
    the runs folder; a SQLite file in it), resolved by :meth:`state_folder` and
    :meth:`database_url`.
    """

    host: str = "127.0.0.1"
    port: int = 8642
    state_dir: Path | None = None
    database: str | None = None
    max_concurrent_runs: int = 2
    max_queued_runs: int = 100
    max_request_bytes: int = 1024**3
    tokens: tuple[ServiceToken, ...] = ()
    shutdown_grace: float = 60.0

    def state_folder(self, runs_dir: Path) -> Path:
        return self.state_dir or runs_dir.parent / "service"

    def database_url(self, runs_dir: Path) -> str:
        return self.database or f"sqlite:///{self.state_folder(runs_dir) / 'service.sqlite'}"


@dataclass(frozen=True)
class Config:
    """Everything the operator decides; see ``docs/configuration.md``."""

    source: Path | None = None
    runs_dir: Path = field(default_factory=lambda: _default_runs_dir())
    timeout: float | None = DEFAULT_TIMEOUT
    keep_runs: bool = True
    engines: Mapping[str, str] = field(default_factory=dict)
    allowed_engines: tuple[str, ...] | None = None
    engine_settings: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    intake: IntakeLimits = OPERATOR_INTAKE
    workflow_mirror: Path | None = None
    images: ImagePolicy = field(default_factory=ImagePolicy)
    require_sign_off: bool = False
    datasets: Mapping[str, Path] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    container_user: str = "1000:1000"
    slurm_broker: str = "host"
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    secrets: Mapping[str, str] = field(default_factory=dict)
    publisher: Publisher | None = None
    service: ServiceSettings = field(default_factory=ServiceSettings)

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
        return redact(text, self.secrets)


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every value of ``secrets`` replaced by ``<secret:NAME>``."""
    for name, value in secrets.items():
        if value:
            text = text.replace(value, f"<secret:{name}>")
    return text


def _default_runs_dir() -> Path:
    env = os.environ.get("CRATEBRIDGE_RUNS_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "cratebridge" / "runs"


def load_config(path: Path | None, languages: Iterable[str] | None = None) -> Config:
    """Read the operator's TOML file (``None``: ``$CRATEBRIDGE_CONFIG``, else the defaults).

    ``[engines]`` takes the short names of the built-in languages and of
    ``languages`` as keys (default: those installed plugins register, found by
    name without importing them). Raises :class:`UsageError` naming the file,
    the section and key, and what was expected, for an unknown section or key
    or a value that does not fit.
    """
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
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the configuration file: {exc}", where=where) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"not valid TOML: {exc}", where=where) from None
    builtin = frozenset(lang.short for lang in BUILTIN_LANGUAGES)
    shorts = language_names() if languages is None else builtin | frozenset(languages)
    return _build(check(data, where, shorts), path, shorts)


def _build(values: Mapping[str, Mapping[str, object]], path: Path,
           languages: frozenset[str]) -> Config:
    """The settings from values the schema has parsed (so their types hold)."""
    base = path.parent

    def get(section: str, key: str, default: object = None) -> Any:
        return values.get(section, {}).get(key, default)

    engines = values.get("engines", {})
    allowed = get("engines", "allow")
    defaults = Limits()
    return Config(
        source=path,
        runs_dir=_path(get("run", "runs_dir"), base) or _default_runs_dir(),
        timeout=get("run", "timeout", DEFAULT_TIMEOUT),
        keep_runs=get("run", "keep_runs", True),
        engines={k: v for k, v in engines.items() if k in languages and isinstance(v, str)},
        allowed_engines=tuple(allowed) if allowed is not None else None,
        engine_settings={k: dict(v) for k, v in engines.items() if isinstance(v, dict)},
        intake=dataclasses.replace(OPERATOR_INTAKE, **dict[str, Any](values.get("intake", {}))),
        workflow_mirror=_path(get("workflows", "mirror"), base),
        images=ImagePolicy(tuple(get("images", "approved", []))),
        require_sign_off=get("policy", "require_sign_off", False),
        datasets={k: _path(v, base) or Path() for k, v in values.get("datasets", {}).items()},
        limits=Limits(
            memory=get("limits", "memory", defaults.memory),
            cpus=get("limits", "cpus", defaults.cpus),
            pids=get("limits", "pids", defaults.pids),
            disk=get("limits", "disk", defaults.disk),
            log_bytes=get("limits", "log_size", defaults.log_bytes),
        ),
        container_user=get("limits", "user", "1000:1000"),
        slurm_broker=get("slurm", "broker", "host"),
        env_allow=tuple(get("env", "allow", DEFAULT_ENV_ALLOW)),
        secrets={k: _secret(v, base, f"{path} [secrets] {k}")
                 for k, v in values.get("secrets", {}).items()},
        publisher=_publisher(values.get("publisher"), f"{path} [publisher]"),
        service=_service(values.get("service", {}), base),
    )


def _service(table: Mapping[str, Any], base: Path) -> ServiceSettings:
    defaults = ServiceSettings()
    return ServiceSettings(
        host=table.get("host", defaults.host), port=table.get("port", defaults.port),
        state_dir=_path(table.get("state_dir"), base), database=table.get("database"),
        max_concurrent_runs=table.get("max_concurrent_runs", defaults.max_concurrent_runs),
        max_queued_runs=table.get("max_queued_runs", defaults.max_queued_runs),
        max_request_bytes=table.get("max_request_bytes", defaults.max_request_bytes),
        tokens=tuple(ServiceToken(str(t["name"]), str(t["sha256"]), bool(t["operator"]))
                     for t in table.get("tokens", [])),
        shutdown_grace=table.get("shutdown_grace", defaults.shutdown_grace),
    )


def _publisher(table: Mapping[str, object] | None, where: str) -> Publisher | None:
    if table is None:
        return None
    missing = [key for key in ("name", "url") if not table.get(key)]
    if missing:
        raise UsageError(f"needs {' and '.join(missing)} (the TRE's name and web address)",
                         where=where)
    identifier = table.get("identifier")
    return Publisher(str(table["name"]), str(table["url"]),
                     str(identifier) if identifier else None)


def describe(config: Config) -> dict[str, dict[str, Any]]:
    """The effective settings by section and key, as JSON values; secrets shown by name."""
    limits = config.limits
    settings: dict[str, dict[str, Any]] = {
        "run": {"runs_dir": str(config.runs_dir), "timeout": config.timeout,
                "keep_runs": config.keep_runs},
        "engines": {**{lang.short: engine for lang, engine in DEFAULT_ENGINES.items()},
                    **config.engines,
                    "allow": list(config.allowed_engines)
                    if config.allowed_engines is not None else None,
                    **{k: dict(v) for k, v in config.engine_settings.items()}},
        "intake": dataclasses.asdict(config.intake),
        "workflows": {"mirror": str(config.workflow_mirror) if config.workflow_mirror else None},
        "images": {"approved": list(config.images.approved)},
        "policy": {"require_sign_off": config.require_sign_off},
        "datasets": {k: str(v) for k, v in config.datasets.items()},
        "limits": {"memory": limits.memory, "cpus": limits.cpus, "pids": limits.pids,
                   "disk": False if limits.disk is None else limits.disk,
                   "log_size": limits.log_bytes, "user": config.container_user},
        "slurm": {"broker": config.slurm_broker},
        "env": {"allow": list(config.env_allow)},
        "secrets": {k: f"<secret:{k}>" for k in config.secrets},
        "publisher": {"name": config.publisher.name, "url": config.publisher.url,
                      "identifier": config.publisher.identifier} if config.publisher else {},
        "service": _describe_service(config),
    }
    return {name: _redacted(table, config) for name, table in settings.items()}


def _describe_service(config: Config) -> dict[str, Any]:
    service = config.service
    return {"host": service.host, "port": service.port,
            "state_dir": str(service.state_folder(config.runs_dir)),
            "database": _without_password(service.database_url(config.runs_dir)),
            "max_concurrent_runs": service.max_concurrent_runs,
            "max_queued_runs": service.max_queued_runs,
            "max_request_bytes": service.max_request_bytes,
            "tokens": [{"name": t.name, "sha256": t.sha256, "operator": t.operator}
                       for t in service.tokens],
            "shutdown_grace": service.shutdown_grace}


def _without_password(url: str) -> str:
    """A database URL as it may be shown: its password replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _redacted(value: Any, config: Config) -> Any:
    """``value`` with every secret in its strings replaced by the secret's name."""
    if isinstance(value, str):
        return config.redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v, config) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, config) for v in value]
    return value


def _secret(value: object, base: Path, where: str) -> str:
    """A secret is given inline or as ``{ env = "NAME" }`` / ``{ file = "PATH" }``."""
    if not isinstance(value, dict):
        return str(value)
    if "env" in value:
        return os.environ.get(str(value["env"]), "")
    file = _path(value["file"], base) or Path()
    try:
        return file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the secret file {file}: "
                         f"{getattr(exc, 'strerror', None) or exc}", where=where) from None


def _path(value: object, base: Path) -> Path | None:
    """A path from the file; a relative one is taken from the file's folder."""
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()
