"""The schema of the operator's configuration: every section and key, declared once.

:mod:`cratebridge.config` checks a TOML file against :data:`SECTIONS` and builds
the settings from the parsed values; ``docs/configuration.md`` is tested against
the same declarations, so a key cannot be added to one and not the other.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cratebridge.containers.sandbox import Limits
from cratebridge.engines.registry import DEFAULT_ENGINES
from cratebridge.errors import UsageError
from cratebridge.intake.unpack import IntakeLimits

__all__ = [
    "DEFAULT_ENV_ALLOW",
    "ENGINE_TABLES",
    "OPERATOR_INTAKE",
    "SECTIONS",
    "Invalid",
    "Key",
    "Kind",
    "Section",
    "check",
    "parse_duration",
    "parse_size",
]

#: Variables an engine process may see from the caller's environment.
DEFAULT_ENV_ALLOW = ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE")

#: A run always ends: its wall-clock limit unless the operator sets another (or none).
DEFAULT_TIMEOUT = 24 * 3600.0

#: An operator's TRE holds bigger crates than the library's default allows.
OPERATOR_INTAKE = IntakeLimits(max_total_bytes=20 * 1024**3)


class Invalid(ValueError):
    """A value does not fit its kind; the message, when there is one, says why."""


@dataclass(frozen=True)
class Kind:
    """A type of value: what the operator is told to write, and the parser that checks it.

    ``parse`` returns the value as cratebridge uses it, or raises :class:`Invalid`.
    """

    expected: str
    parse: Callable[[object], object]


@dataclass(frozen=True)
class Key:
    """One key of a section: its name, kind, default (as parsed) and what it is for."""

    name: str
    kind: Kind
    default: object
    doc: str


@dataclass(frozen=True)
class Section:
    """One table of the file.

    ``free``: the kind of every value of a table whose key names are the
    operator's own (``[datasets]``, ``[secrets]``). ``tables``: the sub-tables
    the section may hold (``[engines.NAME]``); one named here has its keys
    checked, any other is accepted as given (a third-party plugin's settings).
    """

    name: str
    doc: str
    keys: tuple[Key, ...] = ()
    free: Kind | None = None
    tables: Mapping[str, Section] | None = None

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)


# -- kinds -----------------------------------------------------------------------------------

def _string(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid
    return value


def _text(value: object) -> str:
    if not _string(value).strip():
        raise Invalid
    return str(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid
    return value


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid
    return [str(v) for v in value]


def _string_or_strings(value: object) -> list[str]:
    return [value] if isinstance(value, str) else _strings(value)


def whole(minimum: int) -> Kind:
    """A whole number of at least ``minimum``."""
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise Invalid
        return value
    return Kind(f"a whole number of at least {minimum}", parse)


def _positive(value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise Invalid
    return float(value)


def choice(*options: str) -> Kind:
    """One of a few strings."""
    def parse(value: object) -> str:
        if value not in options:
            raise Invalid
        return str(value)
    return Kind("one of " + ", ".join(repr(o) for o in options), parse)


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?$", re.IGNORECASE)
_SIZE_SCALE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: object) -> int:
    """Bytes from a whole number or ``"20G"``, ``"500M"``, ``"1.5GiB"``, ``"4096B"``.

    K, M, G and T are binary multiples (``"1K"`` is 1024), case does not matter.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise Invalid
    return int(float(match.group(1)) * _SIZE_SCALE[(match.group(2) or "").lower()])


_SIZE_EXAMPLE = 'a size such as "20G", "500M" or a number of bytes'


def size(*, positive: bool = False) -> Kind:
    """A size in bytes (above 0 when ``positive``)."""
    def parse(value: object) -> int:
        if parse_size(value) < (1 if positive else 0):
            raise Invalid
        return parse_size(value)
    return Kind(_SIZE_EXAMPLE.replace("a size", "a size above 0") if positive else _SIZE_EXAMPLE,
                parse)


def _none(value: object) -> bool:
    """``false`` or ``"none"``: the operator turns a limit off."""
    return value is False or (isinstance(value, str) and value.strip().lower() == "none")


def _disk(value: object) -> int | None:
    if _none(value):
        return None
    if parse_size(value) <= 0:
        raise Invalid
    return parse_size(value)


_DOCKER_MIN_MEMORY = 6 * 1024**2


def _memory(value: object) -> str:
    """Docker's ``--memory``: a size it accepts, kept in the operator's spelling."""
    if parse_size(value) < _DOCKER_MIN_MEMORY:
        raise Invalid(f"must be at least 6M (Docker's minimum), not {value!r}")
    return re.sub(r"\s+", "", str(value))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match:
            raise Invalid
        scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        seconds = float(match.group(1)) * scale
    if seconds <= 0:
        raise Invalid
    return seconds


def _time_limit(value: object) -> float | None:
    return None if _none(value) else parse_duration(value)


_USER = re.compile(r"^([0-9]+)(?::([0-9]+))?$")


def _user(value: object) -> str:
    """``UID[:GID]``, numeric and never root."""
    match = _USER.match(str(value).strip()) if isinstance(value, (str, int)) else None
    if not match or isinstance(value, bool):
        raise Invalid
    uid, gid = int(match.group(1)), int(match.group(2) or match.group(1))
    if uid == 0 or gid == 0:
        raise Invalid("steps and engines never run as root (uid or gid 0); give an "
                      "unprivileged UID:GID such as 1000:1000")
    return f"{uid}:{gid}"


def _web_address(value: object) -> str:
    text = _text(value)
    if not text.startswith(("https://", "http://")) or any(c.isspace() for c in text):
        raise Invalid
    return text


def _secret(value: object) -> object:
    """Inline, or ``{ env = "NAME" }`` / ``{ file = "PATH" }``: checked, not yet read."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (how, where), = value.items()
        if how in ("env", "file") and isinstance(where, str) and where:
            return {how: where}
    raise Invalid


STRING = Kind("a string", _string)
NAME = Kind("a non-empty string", _text)
PATH = Kind("a path (a string)", _text)
BOOL = Kind("true or false", _bool)
STRINGS = Kind('a list of strings such as ["a", "b"]', _strings)
STRING_OR_STRINGS = Kind("a string or a list of strings", _string_or_strings)
POSITIVE = Kind("a number above 0 such as 2 or 0.5", _positive)
DURATION = Kind('a duration such as 90 (seconds), "30m", "2h" or "1d"', parse_duration)
MEMORY = Kind('a memory size such as "4g", "512M" or a number of bytes (at least 6M)', _memory)
TIME_LIMIT = Kind('a duration such as 90 (seconds), "30m", "2h" or "1d", or false (none)',
                  _time_limit)
DISK = Kind(_SIZE_EXAMPLE + ', or false (no budget)', _disk)
USER = Kind('a numeric UID or UID:GID such as "1000:1000"', _user)
WEB_ADDRESS = Kind("an http:// or https:// address", _web_address)
SECRET = Kind('a string, { env = "NAME" } or { file = "PATH" }', _secret)


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def _tokens(value: object) -> list[dict[str, object]]:
    """``[{ name = "alice", sha256 = "<hex>", operator = false }, ...]``: names unique."""
    if not isinstance(value, list):
        raise Invalid
    tokens: list[dict[str, object]] = []
    for entry in value:
        if not isinstance(entry, dict) or not set(entry) <= {"name", "sha256", "operator"}:
            raise Invalid
        name, digest = entry.get("name"), entry.get("sha256")
        operator = entry.get("operator", False)
        if not isinstance(name, str) or not _TOKEN_NAME.match(name):
            raise Invalid(f"a token's name is 1 to 64 letters, digits or '._@-', not {name!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest.lower()):
            raise Invalid(f"token {name!r}: sha256 must be the 64 hex digits of the token's "
                          "SHA-256 (printf %s TOKEN | sha256sum), never the token itself")
        if not isinstance(operator, bool):
            raise Invalid(f"token {name!r}: operator must be true or false")
        if any(t["name"] == name for t in tokens):
            raise Invalid(f"token name {name!r} is given twice")
        tokens.append({"name": name, "sha256": digest.lower(), "operator": operator})
    return tokens


TOKENS = Kind('a list of tables such as [{ name = "agent", sha256 = "<64 hex digits>", '
              'operator = false }]', _tokens)


# -- the built-in engines' settings ------------------------------------------------------------

def _engine(name: str, doc: str, *keys: tuple[str, Kind, object, str]) -> Section:
    return Section(f"engines.{name}", doc, tuple(Key(*k) for k in keys))


_CONTAINER = ("default_container", STRING, None, "image for steps that name none")
_HOLD = ("hold", BOOL, True, "the plan's confined reader becomes the run's driver")

#: The settings tables of the engines cratebridge ships; their keys are what each
#: plugin reads from ``RunContext.settings`` (see each plugin's settings class).
ENGINE_TABLES: Mapping[str, Section] = {s.name.split(".", 1)[1]: s for s in (
    _engine("cwltool", "the cwltool engine (docs/cwl-runner.md)",
            _CONTAINER,
            ("parallel", BOOL, False, "cwltool --parallel"),
            ("cache", BOOL, False, "cwltool --cachedir in the run's work folder"),
            _HOLD),
    _engine("toil", "the toil engine (docs/toil-and-slurm.md)",
            ("batch_system", NAME, "single_machine", "Toil batch system: single_machine, slurm"),
            ("args", STRINGS, [], "extra toil-cwl-runner arguments, appended as given"),
            ("retry_count", whole(0), 0, "Toil retries of a failed job"),
            ("slurm_partition", STRING, None, "--slurmPartition"),
            ("slurm_time", STRING, None, "--slurmTime"),
            ("slurm_args", STRING, None, "extra sbatch arguments (--slurmArgs)"),
            ("default_memory", STRING, None, "--defaultMemory for tools that ask for none"),
            ("max_cores", whole(1), None, "--maxCores"),
            _CONTAINER,
            ("keep_job_store", BOOL, False, "keep Toil's job store after a successful run"),
            _HOLD),
    _engine("snakemake", "the snakemake engine (docs/snakemake.md)",
            ("executor", choice("local", "slurm"), "local", "where jobs run"),
            ("cores", whole(1), None, "snakemake --cores (default: the machine's CPUs)"),
            _CONTAINER,
            ("jobs", whole(1), 4, "snakemake --jobs: Slurm jobs at once"),
            ("default_resources", STRING_OR_STRINGS, [], "snakemake --default-resources"),
            ("status_interval", whole(1), None, "seconds before the first sacct check"),
            ("python_image", STRING, None, "image with Snakemake for run: and script: rules "
             "(default cratebridge/snakemake:<installed Snakemake>; \"\" for none)"),
            ("outputs", choice("all", "targets"), "all", "what goes under outputs/: every "
             "file the jobs made and Snakemake kept or left undeclared, or only the final "
             "targets")),
    _engine("nextflow", "the nextflow engine (docs/nextflow.md)",
            ("program", PATH, None, "path of nextflow (default: the one on PATH)"),
            ("executor", choice("local", "slurm"), "local", "where tasks run"),
            ("queue", STRING, None, "Slurm queue"),
            ("cluster_options", STRING, None, "Slurm clusterOptions"),
            ("queue_size", whole(1), None, "executor.queueSize"),
            ("max_cpus", whole(1), None, "process.resourceLimits cpus"),
            ("max_memory", STRING, None, "process.resourceLimits memory"),
            ("max_time", STRING, None, "process.resourceLimits time"),
            _CONTAINER,
            ("framework_dir", PATH, None, "NXF_DIST: the installed framework jars"),
            ("java_home", PATH, None, "NXF_JAVA_HOME"),
            ("plugins_dir", PATH, None, "the folder of pre-installed plugins"),
            ("plugins", STRINGS, [], "pre-installed plugins that may start (id@version)")),
)}


# -- the file's sections -----------------------------------------------------------------------

_INTAKE_DOCS = {
    "max_total_bytes": "unpacked size limit (checked while unpacking)",
    "max_files": "most files a crate may hold",
    "max_ratio": "per-member compression ratio limit (zip bombs)",
    "max_metadata_bytes": "ro-crate-metadata.json size limit",
    "ratio_grace_bytes": "the ratio limit applies once a member passes this",
    "max_depth": "most components (folders and the file name) in one path",
    "max_name_bytes": "longest file or folder name, in UTF-8 bytes",
    "max_path_bytes": "longest path inside the crate, in UTF-8 bytes",
}


def _intake_key(f: dataclasses.Field[object]) -> Key:
    """A key per :class:`IntakeLimits` field, so a new limit is a known key at once."""
    default = getattr(OPERATOR_INTAKE, f.name)
    kind = (BOOL if isinstance(default, bool)
            else size() if f.name.endswith("_bytes")
            else whole(1) if isinstance(default, int)
            else POSITIVE if isinstance(default, float)
            else STRING)
    return Key(f.name, kind, default, _INTAKE_DOCS.get(f.name, "an intake limit"))


SECTIONS: Mapping[str, Section] = {s.name: s for s in (
    Section("run", "where runs live and how long they may take", (
        Key("runs_dir", PATH, None, "each run gets runs_dir/<run id>/ (default: "
            "$CRATEBRIDGE_RUNS_DIR, else ~/.cache/cratebridge/runs)"),
        Key("timeout", TIME_LIMIT, DEFAULT_TIMEOUT,
            'wall-clock limit per run (default "24h"; false: none)'),
        Key("keep_runs", BOOL, True, "false: delete a successful run's folder after packaging"),
    )),
    Section("engines", "which engine runs each language, and each engine's settings", (
        *(Key(language.short, NAME, engine, f"the engine for {language.short} workflows")
          for language, engine in DEFAULT_ENGINES.items()),
        Key("allow", STRINGS, None, "only these plugins may load (default: all installed)"),
    ), tables=ENGINE_TABLES),
    Section("intake", "how much an untrusted crate may unpack to",
            tuple(_intake_key(f) for f in dataclasses.fields(IntakeLimits))),
    Section("workflows", "workflows referenced by URL", (
        Key("mirror", PATH, None, "folder of approved Workflow RO-Crate zips"),
    )),
    Section("images", "which local images steps may use", (
        Key("approved", STRINGS, [], "fnmatch patterns, optionally pattern@sha256:...; "
            "empty: any local image"),
    )),
    Section("policy", "what a request must carry", (
        Key("require_sign_off", BOOL, False, "refuse (exit 4) without a completed shp#SignOff"),
    )),
    Section("datasets", "TRE-local dataset identifiers -> paths on this host",
            free=Kind("a path on this host (a string)", _text)),
    Section("limits", "resource limits of every run", (
        Key("memory", MEMORY, Limits.memory, "per step container (docker --memory)"),
        Key("cpus", POSITIVE, Limits.cpus, "per step container (docker --cpus)"),
        Key("pids", whole(1), Limits.pids, "processes per step container"),
        Key("disk", DISK, Limits.disk, "the run's budget for all it writes in its folder"),
        Key("log_size", size(positive=True), Limits.log_bytes, "the cap of each stored log"),
        Key("user", USER, "1000:1000", "the engine's uid and every container's"),
    )),
    Section("slurm", "Slurm jobs of every engine (docs/toil-and-slurm.md)", (
        Key("broker", choice("host", "node"), "host", "where a job's containers start: "
            "host (through the run's broker; jobs must run on cratebridge's host) or node "
            "(through a broker the job starts on its node)"),
    )),
    Section("env", "the caller's environment", (
        Key("allow", STRINGS, list(DEFAULT_ENV_ALLOW), "the only caller variables engines see"),
    )),
    Section("secrets", "values scrubbed from every log and error", free=SECRET),
    Section("publisher", "the TRE, named as publisher of every result crate", (
        Key("name", NAME, None, "the TRE's name, such as \"TRE 72 at the University of X\""),
        Key("url", WEB_ADDRESS, None, "the TRE's web address (https://...)"),
        Key("identifier", WEB_ADDRESS, None, "a persistent id such as a ROR URL "
            "(default: the url)"),
    )),
    Section("service", "`cratebridge serve`, the GA4GH WES endpoint (docs/service.md)", (
        Key("host", NAME, "127.0.0.1", "the address to listen on"),
        Key("port", whole(0), 8642, "the TCP port (0: any free port)"),
        Key("state_dir", PATH, None, "uploaded request crates, result crates, the SQLite "
            "database (default: service/ beside runs_dir)"),
        Key("database", NAME, None, "sqlite:///PATH or postgresql://... (default: "
            "state_dir/service.sqlite)"),
        Key("max_concurrent_runs", whole(1), 2, "runs going on at once"),
        Key("max_queued_runs", whole(0), 100, "runs waiting; one more is refused with 429"),
        Key("max_request_bytes", size(positive=True), 1024**3, "largest submission (the "
            "whole HTTP body)"),
        Key("tokens", TOKENS, [], "bearer tokens by SHA-256; none: loopback only"),
        Key("shutdown_grace", DURATION, 60.0, "on SIGTERM, how long stopped runs may take to "
            "write their result crates"),
    )),
)}


# -- checking a file ---------------------------------------------------------------------------

def check(data: Mapping[str, object], source: str,
          languages: Iterable[str] = ()) -> dict[str, dict[str, object]]:
    """Every section of ``data`` with its values parsed, or :class:`UsageError`.

    The error names ``source`` (the file), the section and key, and what was
    expected. Sub-tables (``[engines.NAME]``) come back as given, after checking.
    ``languages`` are the short names of the languages plugins register: each is
    a key of ``[engines]`` too, beside the built-in languages.
    """
    sections = dict(SECTIONS)
    sections["engines"] = with_languages(SECTIONS["engines"], languages)
    values: dict[str, dict[str, object]] = {}
    for name, table in data.items():
        section = sections.get(name)
        if section is None:
            raise UsageError(f"unknown section{_hint(name, SECTIONS)}; known sections: "
                             f"{', '.join(SECTIONS)}", where=f"{source} [{name}]")
        values[name] = _check_table(section, table, source)
    return values


def with_languages(engines: Section, languages: Iterable[str]) -> Section:
    """The ``[engines]`` section with a key for each of ``languages`` it lacks."""
    extra = sorted(set(languages) - {key.name for key in engines.keys})
    keys = tuple(Key(short, NAME, None, f"the engine for {short} workflows (a plugin's "
                 "language)") for short in extra)
    return dataclasses.replace(engines, keys=engines.keys + keys)


def _check_table(section: Section, table: object, source: str) -> dict[str, object]:
    if not isinstance(table, dict):
        raise UsageError(f"must be a table, not {table!r}", where=f"{source} [{section.name}]")
    parsed: dict[str, object] = {}
    for name, value in table.items():
        where = f"{source} [{section.name}] {name}"
        key = section.key(name)
        if section.tables is not None and isinstance(value, dict):
            # a table, even one named like a key ([engines.snakemake] and snakemake = ...)
            known = section.tables.get(name)
            if known is not None:
                _check_table(known, value, source)
            parsed[name] = dict(value)
        elif key is not None:
            parsed[name] = _parse(key.kind, value, where)
        elif section.free is not None:
            parsed[name] = _parse(section.free, value, where)
        else:
            raise UsageError(_unknown(name, section), where=where)
    return parsed


def _parse(kind: Kind, value: object, where: str) -> object:
    try:
        return kind.parse(value)
    except Invalid as exc:
        reason = str(exc) or f"must be {kind.expected}, not {_shown(value)}"
        raise UsageError(reason, where=where) from None


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _unknown(name: str, section: Section) -> str:
    known = [k.name for k in section.keys]
    also = " or an [engines.NAME] table of an engine's settings" if section.tables else ""
    return (f"unknown key{_hint(name, known)}; [{section.name}] takes "
            f"{', '.join(known)}{also}")


def _hint(name: str, known: Mapping[str, object] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

