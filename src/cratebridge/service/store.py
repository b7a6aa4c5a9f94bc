"""The service's state: one table of runs, in SQLite (embedded) or PostgreSQL (by URL).

One small dialect layer: statements are written once with ``?`` placeholders
and run on either database. The schema is versioned (``schema_version``) and
migrated by the server itself at start, in one transaction. Changing a run's
state is a compare-and-set (``... WHERE id = ? AND state = ?``), so that two
threads can never both claim one queued run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cratebridge.errors import UsageError

__all__ = ["MIGRATIONS", "Database", "RunRow", "Store"]

#: Each migration: the statements that take the schema from the previous version to it.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            seq BIGINT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            state TEXT NOT NULL,
            submitted TEXT NOT NULL,
            started TEXT,
            ended TEXT,
            request TEXT NOT NULL,
            engine TEXT,
            pid INTEGER,
            pid_start TEXT,
            cancel_by TEXT,
            outcome TEXT,
            exit_code INTEGER,
            reason TEXT,
            has_result INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX runs_by_state ON runs (state, seq)",
        "CREATE INDEX runs_by_owner ON runs (owner, seq)",
    ),
)

_COLUMNS = ("id", "seq", "owner", "state", "submitted", "started", "ended", "request",
            "engine", "pid", "pid_start", "cancel_by", "outcome", "exit_code", "reason",
            "has_result")


@dataclass(frozen=True)
class RunRow:
    """One run as the database holds it."""

    id: str
    seq: int
    owner: str
    state: str
    submitted: str
    started: str | None
    ended: str | None
    request: dict[str, Any]
    engine: str | None
    pid: int | None
    pid_start: str | None
    cancel_by: str | None
    outcome: str | None
    exit_code: int | None
    reason: str | None
    has_result: bool

    @classmethod
    def of(cls, row: Sequence[Any]) -> RunRow:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["request"] = json.loads(values["request"])
        values["has_result"] = bool(values["has_result"])
        return cls(**values)


class Database:
    """One connection to SQLite or PostgreSQL, used under a lock, in autocommit mode.

    ``sqlite:///PATH`` (WAL, a busy timeout) or ``postgresql://...`` (psycopg 3,
    the ``service`` extra). A PostgreSQL connection that broke is opened again
    for the next statement.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        scheme = urlsplit(url).scheme
        if scheme == "sqlite":
            self.dialect = "sqlite"
        elif scheme in ("postgresql", "postgres"):
            self.dialect = "postgresql"
        else:
            raise UsageError("the database is sqlite:///PATH or postgresql://USER@HOST/DB, "
                             f"not {scheme or url!r}", where="[service] database")
        self._lock = threading.RLock()
        self._conn: Any = None
        self._in_transaction = False

    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            path = Path("/" + self.url[len("sqlite://"):].lstrip("/"))  # always absolute
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            return conn
        try:
            import psycopg
        except ImportError:
            raise UsageError("a PostgreSQL database needs psycopg: pip install "
                             "'cratebridge[service]'", where="[service] database") from None
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise UsageError(f"cannot connect to the database: {exc}".strip(),
                             where="[service] database") from None

    def _connection(self) -> Any:
        if self._conn is None or (self.dialect == "postgresql" and self._conn.closed):
            self._conn = self._connect()
        return self._conn

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgresql" else statement

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._lock:
            cur = self._connection().execute(self._sql(statement), tuple(params))
            return int(cur.rowcount)

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cur = self._connection().execute(self._sql(statement), tuple(params))
            return [tuple(r) for r in cur.fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Statements in the block commit together, or not at all."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def migrate(self) -> int:
        """Bring the schema to the newest version, in one transaction; that version."""
        with self.transaction():
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = self.query("SELECT version FROM schema_version")
            current = int(rows[0][0]) if rows else 0
            if current > len(MIGRATIONS):
                raise UsageError(f"the database's schema is version {current}, newer than "
                                 f"this cratebridge knows ({len(MIGRATIONS)}); upgrade "
                                 "cratebridge", where="[service] database")
            for statements in MIGRATIONS[current:]:
                for statement in statements:
                    self.execute(statement)
            if rows:
                self.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
            else:
                self.execute("INSERT INTO schema_version (version) VALUES (?)",
                             (len(MIGRATIONS),))
        return len(MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM runs"


class Store:
    """The runs table: add, claim, move between states, list."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, run_id: str, owner: str, submitted: str, request: dict[str, Any],
            engine: str | None, max_queued: int) -> bool:
        """Queue a run; False (nothing added) when ``max_queued`` runs wait already."""
        with self.db.transaction():
            waiting = self.db.query("SELECT COUNT(*) FROM runs WHERE state = 'QUEUED'")[0][0]
            if int(waiting) >= max_queued:
                return False
            seq = int(self.db.query("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs")[0][0])
            self.db.execute(
                "INSERT INTO runs (id, seq, owner, state, submitted, request, engine) "
                "VALUES (?, ?, ?, 'QUEUED', ?, ?, ?)",
                (run_id, seq, owner, submitted, json.dumps(request), engine))
        return True

    def get(self, run_id: str) -> RunRow | None:
        rows = self.db.query(f"{_SELECT} WHERE id = ?", (run_id,))
        return RunRow.of(rows[0]) if rows else None

    def page(self, owner: str | None, limit: int, before: int | None) -> list[RunRow]:
        """Runs newest first, of ``owner`` (every run: None), with ``seq`` below ``before``."""
        where: list[str] = []
        params: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if before is not None:
            where.append("seq < ?")
            params.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.query(f"{_SELECT}{clause} ORDER BY seq DESC LIMIT ?", (*params, limit))
        return [RunRow.of(r) for r in rows]

    def in_states(self, *states: str) -> list[RunRow]:
        marks = ", ".join("?" for _ in states)
        rows = self.db.query(f"{_SELECT} WHERE state IN ({marks}) ORDER BY seq", states)
        return [RunRow.of(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in
                self.db.query("SELECT state, COUNT(*) FROM runs GROUP BY state")}

    def claim_next(self, started: str) -> RunRow | None:
        """The oldest queued run, now INITIALIZING; None when none waits.

        A compare-and-set: of two claimers of one row, one changes it and the other
        tries the next.
        """
        while True:
            rows = self.db.query("SELECT id FROM runs WHERE state = 'QUEUED' "
                                 "ORDER BY seq LIMIT 1")
            if not rows:
                return None
            if self.move(rows[0][0], ("QUEUED",), "INITIALIZING", started=started):
                return self.get(rows[0][0])

    def move(self, run_id: str, from_states: Sequence[str], to_state: str,
             **values: Any) -> bool:
        """Set the state (and ``values``) when the run is in one of ``from_states``."""
        sets = ["state = ?", *(f"{k} = ?" for k in values)]
        marks = ", ".join("?" for _ in from_states)
        return self.db.execute(
            f"UPDATE runs SET {', '.join(sets)} WHERE id = ? AND state IN ({marks})",
            (to_state, *values.values(), run_id, *from_states)) == 1

    def update(self, run_id: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*values.values(), run_id))
