"""The service's parts without a server: the state mapping, the form reader, tokens, the store.

A fast layer beside the end-to-end tests (which start the real server); the
store is exercised on a real SQLite file and, where one answers, on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from cratebridge.config import ServiceToken, load_config
from cratebridge.errors import UsageError
from cratebridge.service.auth import Tokens, is_loopback
from cratebridge.service.multipart import BadForm, boundary_of, read_form
from cratebridge.service.store import MIGRATIONS, Database, Store
from cratebridge.service.wes import outcome_of

from .conftest import POSTGRES_URL


@pytest.mark.parametrize(("code", "doc", "cancel", "stopped", "state", "outcome", "says"), [
    (0, {"error": None}, None, None, "COMPLETE", "completed", None),
    (1, {"error": "step head failed"}, None, None, "EXECUTOR_ERROR", "failed",
     "step head failed"),
    (3, {"message": "zip slip", "where": "../x"}, None, None, "EXECUTOR_ERROR", "rejected",
     "the request crate was rejected: ../x: zip slip"),
    (4, {"message": "not mapped", "rule": "datasets.map"}, None, None, "EXECUTOR_ERROR",
     "refused", "refused by the operator's policy (rule datasets.map): not mapped"),
    (1, {"error": "stopped by SIGTERM"}, "alice", None, "CANCELED", "cancelled",
     "cancelled by alice: stopped by SIGTERM"),
    (5, {"message": "no toil"}, None, None, "SYSTEM_ERROR", "engine-unavailable", "no toil"),
    (-9, None, None, None, "SYSTEM_ERROR", "error", "killed by signal 9"),
    (1, {"error": "stopped"}, None, "the server stopped", "SYSTEM_ERROR", "interrupted",
     "the server stopped: stopped"),
    (0, {"error": None}, None, "the server stopped", "COMPLETE", "completed", None),
])
def test_outcomes_map_to_wes_states(code: int, doc: dict[str, Any], cancel: str | None,
                                    stopped: str | None, state: str, outcome: str,
                                    says: str | None) -> None:
    got = outcome_of(code, doc, cancel_by=cancel, server_stopped=stopped)
    assert (got.state, got.outcome) == (state, outcome)
    assert got.reason == says if says is None else says in (got.reason or "")


def form(tmp_path: Path, body: bytes) -> Any:
    path = tmp_path / "body"
    path.write_bytes(body)
    return read_form(path, "XyZ", tmp_path)


def test_the_form_reader_takes_fields_and_files(tmp_path: Path) -> None:
    content = bytes(range(256)) * 1000 + b"\r\n--XyZ-not-quite"
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"tags\"\r\n\r\n{\"a\": \"b\"}\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"workflow_attachment\"; "
            b"filename=\"../../etc/passwd\"\r\nContent-Type: application/zip\r\n\r\n"
            + content + b"\r\n--XyZ--\r\n")
    got = form(tmp_path, body)
    assert got.fields == {"tags": ['{"a": "b"}']}
    (upload,) = got.files
    assert upload.filename == "../../etc/passwd" and upload.path == tmp_path / "part-2"
    assert upload.path.read_bytes() == content


@pytest.mark.parametrize("body", [
    b"garbage",
    b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
    b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n",
    b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n",
])
def test_the_form_reader_refuses_broken_bodies(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(BadForm):
        form(tmp_path, body)


def test_boundary_needs_multipart() -> None:
    assert boundary_of("multipart/form-data; boundary=abc") == "abc"
    for value in (None, "application/json", "multipart/form-data"):
        with pytest.raises(BadForm):
            boundary_of(value)


def test_tokens_by_digest() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    tokens = Tokens([ServiceToken("agent", digest), ServiceToken("ops", "0" * 64, True)])
    caller = tokens.caller("Bearer s3cret")
    assert caller is not None and caller.name == "agent" and not caller.operator
    assert caller.may_see("agent") and not caller.may_see("someone")
    for header in (None, "", "Bearer", "Bearer wrong", "Basic s3cret", digest):
        assert tokens.caller(header) is None
    assert Tokens([]).caller(None) is not None  # no tokens: the local operator
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")


@pytest.mark.parametrize(("text", "says"), [
    ('tokens = [{ name = "a", sha256 = "s3cret" }]', "never the token itself"),
    ('tokens = [{ name = "a b", sha256 = "' + "0" * 64 + '" }]', "name"),
    ('tokens = [{ name = "a", sha256 = "' + "0" * 64 + '" }, { name = "a", sha256 = "'
     + "1" * 64 + '" }]', "given twice"),
    ("max_concurrent_runs = 0", "at least 1"),
    ('database = ""', "non-empty"),
])
def test_bad_service_settings_are_usage_errors(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[service]\n{text}\n")
    with pytest.raises(UsageError, match=says):
        load_config(path)


def test_config_show_hides_the_database_password_and_reads_back(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tomllib

    digest = "ab" * 32
    path = tmp_path / "c.toml"
    path.write_text('[service]\ndatabase = "postgresql://cb:hunter2@db.example/cb"\n'
                    f'tokens = [{{ name = "agent", sha256 = "{digest}" }}]\n')
    done = subprocess.run([sys.executable, "-m", "cratebridge", "config", "show", "--config",
                           str(path)], capture_output=True, text=True, check=True)
    assert "hunter2" not in done.stdout
    shown = tomllib.loads(done.stdout)["service"]
    assert shown["database"] == "postgresql://cb:***@db.example/cb"
    assert shown["tokens"] == [{"name": "agent", "sha256": digest, "operator": False}]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    else:
        admin = request.getfixturevalue("postgres_admin")
        import uuid

        import psycopg

        name = f"cratebridge_parts_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        db = Database(POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}")

        def drop() -> None:
            db.close()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

        request.addfinalizer(drop)
    yield db
    db.close()


def test_the_store_migrates_once_and_claims_each_run_once(database: Database) -> None:
    assert database.migrate() == len(MIGRATIONS)
    assert database.migrate() == len(MIGRATIONS)  # again: nothing to do, nothing broken
    store = Store(database)
    for n in range(20):
        assert store.add(f"run-{n:02d}", "alice", "t", {"tags": {}}, None, max_queued=20)
    assert not store.add("one-too-many", "alice", "t", {}, None, max_queued=20)
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        while (row := store.claim_next("now")) is not None:
            with lock:
                claimed.append(row.id)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [f"run-{n:02d}" for n in range(20)]  # each once, none lost
    assert store.counts() == {"INITIALIZING": 20}
    assert [r.id for r in store.page("alice", 5, None)] == [f"run-{n:02d}"
                                                            for n in range(19, 14, -1)]
    assert store.page("bob", 5, None) == []


def test_an_unknown_database_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="sqlite:///PATH or postgresql://"):
        Database("mysql://x")
