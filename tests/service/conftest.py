"""The real ``cratebridge serve`` on loopback, on SQLite and on PostgreSQL, and a client.

Each server is a subprocess with its own configuration, state folder, runs
folder and (on PostgreSQL) a database of its own, made for it and dropped
after. The PostgreSQL cluster is the one ``make postgres``
(``scripts/start-postgresql``) starts; its URL is
``$CRATEBRIDGE_TEST_POSTGRES_URL`` or that script's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cratebridge.testing import RequestSpec, ValueInput, ZipLayout, write_request_zip

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "fixtures" / "crates" / "demo-request.zip"
STEP_FAILS = REPO / "fixtures" / "crates" / "step-fails-request.zip"
SLEEP = REPO / "fixtures" / "workflows" / "cwl" / "sleep"
API = "/ga4gh/wes/v1"
POSTGRES_URL = os.environ.get(
    "CRATEBRIDGE_TEST_POSTGRES_URL",
    "postgresql://cratebridge:cratebridge-test@127.0.0.1:5432/cratebridge_test")
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}
#: name -> (token, operator)
TOKENS = {"alice": ("alice-secret-token", False), "bob": ("bob-secret-token", False),
          "ops": ("operator-secret-token", True)}

pytestmark = pytest.mark.docker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][0]}"}


class Server:
    """One ``cratebridge serve`` process; it can be killed and started again on its state."""

    def __init__(self, folder: Path, database: str, *, tokens: bool = True, **service: Any):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{API}"
        self.runs = folder / "runs"
        self.state = folder / "state"
        entries = ", ".join(
            f'{{ name = "{n}", sha256 = "{hashlib.sha256(t.encode()).hexdigest()}", '
            f'operator = {"true" if op else "false"} }}' for n, (t, op) in TOKENS.items())
        lines = ["[run]", f'runs_dir = "{self.runs}"', "[service]", 'host = "127.0.0.1"',
                 f"port = {self.port}", f'state_dir = "{self.state}"',
                 f'database = "{database}"', "shutdown_grace = 30"]
        if tokens:
            lines.append(f"tokens = [{entries}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in service.items()]
        self.config = folder / "cratebridge.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Server:
        self.starts += 1
        log = (self.folder / f"serve-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cratebridge", "serve", "--config", str(self.config)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log()}")
            try:
                requests.get(f"{self.url}/service-info", headers=auth("ops"), timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError(f"serve did not answer within 60 s: {self.log()}")

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.folder.glob("serve-*.log")))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    # -- the client ----------------------------------------------------------------------------

    def submit(self, crate: Path, who: str = "alice", **fields: str) -> requests.Response:
        with crate.open("rb") as handle:
            return requests.post(f"{self.url}/runs", headers=auth(who), data=fields,
                                 files={"workflow_attachment": (crate.name, handle,
                                                                "application/zip")},
                                 timeout=60)

    def run_id(self, crate: Path, who: str = "alice") -> str:
        answer = self.submit(crate, who)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["run_id"])

    def get(self, path: str, who: str = "alice") -> requests.Response:
        return requests.get(f"{self.url}{path}", headers=auth(who), timeout=60)

    def state_of(self, run_id: str, who: str = "alice") -> str:
        answer = self.get(f"/runs/{run_id}/status", who)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["state"])

    def wait(self, run_id: str, who: str = "alice", timeout: float = 300,
             until: Callable[[str], bool] = FINAL.__contains__) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state_of(run_id, who)
            if until(state):
                doc: dict[str, Any] = self.get(f"/runs/{run_id}", who).json()
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {state} after {timeout}s\n"
                                     f"{self.log()[-4000:]}")
            time.sleep(0.3)

    def download(self, run_id: str, dest: Path, who: str = "alice") -> Path:
        answer = self.get(f"/runs/{run_id}/result-crate", who)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == "application/zip"
        dest.write_bytes(answer.content)
        return dest


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """The PostgreSQL URL the tests' databases are made from; skip when none answers."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL} (make postgres starts one): {exc}")
    return POSTGRES_URL


def _database(backend: str, folder: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{folder / 'state' / 'service.sqlite'}"
    import psycopg

    admin = request.getfixturevalue("postgres_admin")
    name = f"cratebridge_svc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    request.addfinalizer(drop)
    return admin.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def make_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                docker_available: bool, backend: str) -> Iterator[Callable[..., Server]]:
    """Make (not start) a server on the test's backend; every one is stopped after."""
    made: list[Server] = []

    def make(**service: Any) -> Server:
        folder = tmp_path_factory.mktemp(f"serve-{backend}")
        server = Server(folder, _database(backend, folder, request), **service)
        made.append(server)
        return server

    yield make
    for server in made:
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGTERM)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sleep_crate(folder: Path, seconds: int) -> Path:
    """A request whose one step sleeps ``seconds`` in a container."""
    spec = RequestSpec(workflow_dir=SLEEP, main_workflow="workflow.cwl",
                       inputs=(ValueInput("seconds", seconds),), name="Sleep request")
    return write_request_zip(spec, folder / f"sleep-{seconds}-{uuid.uuid4().hex[:6]}.zip",
                             ZipLayout.FOLDER)


def unsafe_crate(folder: Path) -> Path:
    """A zip that climbs out of its folder: intake rejects it (exit 3)."""
    path = folder / "zip-slip.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ro-crate-metadata.json", "{}")
        z.writestr("../escaped.txt", "out of the crate")
    return path
