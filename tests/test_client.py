"""The broker's two clients, compiled (``client.c``) and Python (``shim.py``), answer alike.

Most tests put each client, installed as the sandbox installs it, against a
scripted peer (a stand-in for the broker, named as such: it records the request
and sends the frames a test chooses), and compare byte for byte what each sends
and what each gives its caller. The last runs real containers through a real
broker with the compiled client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_sandbox import IMAGE, sandbox_for

from cratebridge.containers import client
from cratebridge.containers.broker import Broker
from cratebridge.containers.ledger import read_ledger
from cratebridge.containers.sandbox import Sandbox
from cratebridge.containers.shim import (
    CID,
    EXIT,
    REQUEST,
    STDERR,
    STDIN,
    STDOUT,
    read_frame,
    send_frame,
)

Script = Callable[[socket.socket, bytes], None]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client built here from the package's ``client.c`` (not ``make setup``'s build)."""
    folder = tmp_path_factory.mktemp("client")
    source = folder / "client.c"
    shutil.copyfile(client.SOURCE, source)
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here (make setup installs gcc)")
    return client.build(source)  # a compiler that refuses client.c fails every test here


@pytest.fixture
def clients(tmp_path: Path, compiled: Path) -> dict[str, Path]:
    """Both clients, each in a folder of its own as ``docker`` and ``sbatch``."""
    made = {}
    for kind, program in (("python", None), ("compiled", compiled)):
        folder = tmp_path / kind
        folder.mkdir()
        client.install(folder / "cratebridge-client", program)
        for name in ("docker", "sbatch"):
            (folder / name).symlink_to("cratebridge-client")
        made[kind] = folder
    return made


class Peer:
    """The scripted stand-in for the broker: one connection at a time on a short path."""

    def __init__(self, script: Script) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="cb-peer-"))
        self.path = self.folder / "docker.sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(4)
        self.requests: list[bytes] = []
        self.script = script
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                frame = read_frame(conn)
                assert frame is not None and frame[0] == REQUEST
                self.requests.append(frame[1])
                try:
                    self.script(conn, frame[1])
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def peer() -> Iterator[Callable[[Script], Peer]]:
    made: list[Peer] = []

    def make(script: Script) -> Peer:
        made.append(Peer(script))
        return made[-1]

    yield make
    for one in made:
        one.close()


def answer(*frames: tuple[int, bytes]) -> Script:
    def script(conn: socket.socket, request: bytes) -> None:
        for channel, payload in frames:
            send_frame(conn, channel, payload)
    return script


def call(program: Path, args: list[bytes], env: dict[bytes, bytes], cwd: Path,
         stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([bytes(program), *args], env=env, cwd=cwd, input=stdin,
                          capture_output=True, check=False, timeout=30)


# Text an engine may hand its docker: every JSON escape, beyond the BMP, and bytes
# that are not UTF-8 (which Python's os.fsdecode turns into surrogates)
AWKWARD = [b"run", b"plain", "caf\u00e9 \u00fcber \u2603 \U0001f600".encode(),
           b'quote" back\\slash', b"tab\tnew\nline\x01\x1f\x7f", b"",
           b"bad \xff\xfe", b"cut \xe2\x82A", b"surrogate \xed\xa0\x80", b"overlong \xc0\xaf",
           b"four \xf0\x9f\x98", b"high \xf4\x90\x80\x80", b"--label=k=v"]


def test_both_clients_send_the_same_request(clients: dict[str, Path],
                                            peer: Callable[[Script], Peer],
                                            tmp_path: Path) -> None:
    door = peer(answer((EXIT, b"0")))
    work = tmp_path / "w\u00e9rk \xff".encode("utf-8", "surrogateescape").decode(
        "utf-8", "surrogateescape")
    work.mkdir()
    # with a UTF-8 locale: under C, Python adds LC_CTYPE=C.UTF-8 to its environment
    # (PEP 538), which the compiled client rightly does not send
    env = {b"CRATEBRIDGE_BROKER": bytes(door.path), b"LC_ALL": b"C.UTF-8",
           b"PATH": b"/usr/bin:/bin", b"EMPTY": b"", b"EQUALS": b"a=b=c",
           b"ODD": b"\xff\xfe \xe2\x98\x83",
           "N\u00c4ME".encode(): b"x\ty"}
    for kind, folder in clients.items():
        for name in ("docker", "sbatch"):
            done = call(folder / name, AWKWARD, env, work)
            assert done.returncode == 0, (kind, done.stderr)
    python_docker, python_sbatch, compiled_docker, compiled_sbatch = door.requests
    assert compiled_docker == python_docker
    assert compiled_sbatch == python_sbatch
    assert b'"tool": "sbatch"' in compiled_sbatch and b'"tool": "docker"' in compiled_docker


@pytest.mark.parametrize("frames,code", [
    ([(STDOUT, b"out\n"), (STDERR, b"err\n"), (STDOUT, b"\x00\xff"), (EXIT, b"3")], 3),
    ([(STDERR, b"cratebridge-docker: refused: no\n"), (EXIT, b"125")], 125),
    ([(STDOUT, b"x" * 300_000), (EXIT, b"0")], 0),
    ([(EXIT, b"-9")], 247),  # a client killed by a signal, as Python's sys.exit(-9)
    ([(STDOUT, b"partial")], 125),  # the broker went without an exit code
    ([(STDOUT, b"")], 125),
])
def test_both_clients_give_their_caller_the_same(
        clients: dict[str, Path], peer: Callable[[Script], Peer], tmp_path: Path,
        frames: list[tuple[int, bytes]], code: int) -> None:
    door = peer(answer(*frames))
    env = {b"CRATEBRIDGE_BROKER": bytes(door.path)}
    seen = {kind: call(folder / "docker", [b"ps"], env, tmp_path)
            for kind, folder in clients.items()}
    assert seen["python"].returncode == code
    assert (seen["compiled"].returncode, seen["compiled"].stdout, seen["compiled"].stderr) == \
        (seen["python"].returncode, seen["python"].stdout, seen["python"].stderr)


def test_a_frame_too_large_ends_the_conversation(
        clients: dict[str, Path], peer: Callable[[Script], Peer], tmp_path: Path) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(bytes([STDOUT]) + (5 * 1024 * 1024).to_bytes(4, "big") + b"x" * 1024)
    door = peer(script)
    for kind, folder in clients.items():
        done = call(folder / "docker", [b"ps"], {b"CRATEBRIDGE_BROKER": bytes(door.path)},
                    tmp_path)
        assert done.returncode == 125 and done.stdout == b"", kind
        assert b"the broker closed the connection" in done.stderr, kind


def test_standard_input_reaches_the_broker_whole(
        clients: dict[str, Path], peer: Callable[[Script], Peer], tmp_path: Path) -> None:
    def echo(conn: socket.socket, request: bytes) -> None:
        got = b""
        while (frame := read_frame(conn)) is not None and frame == (STDIN, frame[1]) \
                and frame[1]:
            got += frame[1]
        send_frame(conn, STDOUT, got)
        send_frame(conn, EXIT, b"0")
    door = peer(echo)
    data = os.urandom(200_000) + b"\n-- end"
    for kind, folder in clients.items():
        done = call(folder / "docker", [b"run", b"-i"],
                    {b"CRATEBRIDGE_BROKER": bytes(door.path)}, tmp_path, stdin=data)
        assert (done.returncode, done.stdout) == (0, data), kind


def test_the_cidfile_is_written_by_the_client_and_never_over_another(
        clients: dict[str, Path], peer: Callable[[Script], Peer], tmp_path: Path) -> None:
    for kind, folder in clients.items():
        cidfile = tmp_path / f"{kind}.cid"
        door = peer(answer((CID, f"abc123\n{cidfile}".encode()), (EXIT, b"0")))
        env = {b"CRATEBRIDGE_BROKER": bytes(door.path)}
        done = call(folder / "docker", [b"run"], env, tmp_path)
        assert done.returncode == 0 and cidfile.read_text() == "abc123", kind
        again = call(folder / "docker", [b"run"], env, tmp_path)
        assert again.returncode != 0 and cidfile.read_text() == "abc123", kind  # as docker
        assert sorted(p.name for p in tmp_path.glob(f"{kind}.cid*")) == [f"{kind}.cid"]


def test_without_a_broker_both_clients_say_so(clients: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    said: dict[str, list[bytes]] = {}
    for kind, folder in clients.items():
        said[kind] = []
        for broker in (None, tmp_path / "no" / "docker.sock", tmp_path / "empty" / "docker.sock"):
            env = {} if broker is None else {b"CRATEBRIDGE_BROKER": bytes(broker)}
            done = call(folder / "docker", [b"ps"], env, tmp_path)
            assert done.returncode == 125 and done.stdout == b"", kind
            said[kind].append(done.stderr)
    assert said["compiled"] == said["python"]
    assert b"CRATEBRIDGE_BROKER is not set" in said["python"][0]
    assert b"does not answer ([Errno 2] No such file or directory: '" in said["python"][1]
    assert b"does not answer ([Errno 2] No such file or directory)" in said["python"][2]


def test_stopping_a_client_ends_its_conversation(
        clients: dict[str, Path], peer: Callable[[Script], Peer], tmp_path: Path) -> None:
    """SIGTERM, SIGINT or SIGHUP end the client at once, with 128 + the signal; the
    broker sees the connection close (and stops the container, see test_sandbox)."""
    closed = threading.Event()

    def hold(conn: socket.socket, request: bytes) -> None:
        send_frame(conn, STDOUT, b"started\n")
        while read_frame(conn) is not None:
            pass
        closed.set()
    door = peer(hold)
    for kind, folder in clients.items():
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            closed.clear()
            proc = subprocess.Popen([folder / "docker", "run"], stdout=subprocess.PIPE,
                                    stdin=subprocess.PIPE,
                                    env={"CRATEBRIDGE_BROKER": str(door.path)})
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"started\n"
            proc.send_signal(signum)
            assert proc.wait(10) == 128 + signum, (kind, signum)
            assert closed.wait(10), (kind, signum)


def test_the_sandbox_installs_the_compiled_client_only_when_built_from_this_source(
        tmp_path: Path, compiled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = sandbox_for(tmp_path)
    monkeypatch.setattr(client, "compiled", lambda: compiled)
    sb.engine_env(tmp_path / "a", Path("/run/cratebridge"))
    assert (tmp_path / "a" / "bin" / "docker").read_bytes() == compiled.read_bytes()
    monkeypatch.undo()
    source = tmp_path / "client.c"
    source.write_text(client.SOURCE.read_text() + "\n/* changed */\n")
    assert client.compiled(source) is None  # a build of another source is never used
    monkeypatch.setattr(client, "compiled", lambda: None)
    sb.engine_env(tmp_path / "b", Path("/run/cratebridge"))
    script = (tmp_path / "b" / "bin" / "docker").read_text()
    assert script.startswith("#!") and " -IS\n" in script.splitlines(keepends=True)[0]


@pytest.mark.docker
def test_a_container_through_a_real_broker_and_the_compiled_client(
        clients: dict[str, Path], tmp_path: Path, docker_available: bool) -> None:
    """Standard input in, output and exit code out, the cidfile, and the ledger's record."""
    sb: Sandbox = sandbox_for(tmp_path)
    short = Path(tempfile.mkdtemp(prefix="cb-"))
    try:
        with Broker(sb, short / "docker.sock", os.getuid(), os.getgid()).serving():
            cidfile = tmp_path / "cid"
            started = time.monotonic()
            done = call(clients["compiled"] / "docker",
                        [b"run", b"-i", b"--rm", f"--cidfile={cidfile}".encode(),
                         b"--label=org.cratebridge.step=echo", IMAGE.encode(), b"sh", b"-c",
                         b"cat; echo to-stderr >&2; exit 3"],
                        {b"CRATEBRIDGE_BROKER": bytes(short / "docker.sock")}, tmp_path,
                        stdin=b"hello from the engine\n")
            assert time.monotonic() - started < 60
    finally:
        sb.stop_all()
        shutil.rmtree(short, ignore_errors=True)
    assert (done.returncode, done.stdout) == (3, b"hello from the engine\n"), done.stderr
    assert b"to-stderr" in done.stderr
    entry = read_ledger(sb.ledger).entries[0]
    assert entry.token == "echo" and entry.exit_code == 3
    assert entry.container.container_id and \
        cidfile.read_text() == entry.container.container_id
