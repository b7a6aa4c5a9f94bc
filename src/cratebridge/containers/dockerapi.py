"""The local Docker daemon's API on its unix socket, for the host side's own requests.

A ``docker`` client process costs about 20 ms of CPU and more of wall time
(a Go program starting: ten ``docker image inspect`` took 0.22 CPU-s and
0.49 s here); the same question over the daemon's socket, about half a
millisecond of CPU. Used on the host side only (the room never sees the socket):
for cratebridge's own questions (an image's id and configuration, what a
container of it that never starts holds, which containers carry a run's
labels), and by the broker to carry out what its policy allowed of an
engine's ``docker`` command: an image inspect, and a step's ``docker run``
(:mod:`cratebridge.containers.apirun`). Every ``docker`` command of the
engine's goes through the broker's policy first, whichever carries it out.

Only a local daemon is asked this way: ``DOCKER_HOST=unix://...`` or, with
no ``DOCKER_HOST`` and no context chosen (``DOCKER_CONTEXT``, or the
client's ``currentContext`` in ``$DOCKER_CONFIG/config.json``),
``/var/run/docker.sock``. For anything else (a TCP or SSH daemon, a
context) :func:`local_api` returns None and callers use the client.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["DockerAPI", "local_api"]

DEFAULT_SOCKET = "/var/run/docker.sock"
_TIMEOUT = 60.0
# Go's os.FileMode type bits, as the archive API reports a path's mode
_MODE_SYMLINK = 1 << 27
_MODE_TYPE = 0xFFF00000  # every type bit: a regular file has none
_MAX_LINKS = 40  # as the kernel's limit on links followed in one lookup
_MAX_HEADERS = 64 << 10


def local_api(env: Mapping[str, str] | None = None,
              timeout: float = _TIMEOUT) -> DockerAPI | None:
    """The API of the daemon the ``docker`` client would use, when it is a local socket.

    Each request then waits at most ``timeout`` seconds for each answer
    (:class:`TimeoutError`).
    """
    env = os.environ if env is None else env
    host = env.get("DOCKER_HOST", "")
    if host:
        path = host[len("unix://"):] if host.startswith("unix://") else None
    elif env.get("DOCKER_CONTEXT", "default") != "default" or _config_context(env):
        path = None
    else:
        path = DEFAULT_SOCKET
    if path is None or not Path(path).is_socket():
        return None
    return DockerAPI(path, timeout)


def _config_context(env: Mapping[str, str]) -> bool:
    """Whether the client's config file chooses a context other than the default."""
    folder = env.get("DOCKER_CONFIG") or os.path.join(env.get("HOME", "/root"), ".docker")
    try:
        config = json.loads(Path(folder, "config.json").read_text())
    except (OSError, ValueError):
        return False
    context = config.get("currentContext") if isinstance(config, dict) else None
    return bool(context) and context != "default"


class DockerAPI:
    """Requests to one daemon socket; each raises :class:`OSError` when the daemon fails."""

    def __init__(self, path: str, timeout: float = _TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def image(self, name: str) -> dict[str, Any] | None:
        """``docker image inspect`` of one image, or None when it is not here.

        A name that is no image reference is None too, as a name the daemon's
        router would read as another path (an empty, ``.`` or ``..`` segment).
        """
        if not _routable(name):
            return None
        found, _ = self._image(name)
        return found

    def inspect_images(self, names: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """``docker image inspect`` of ``names``: the images found, in order, and the
        daemon's message for each that is not, as the ``docker`` client gets them.

        :class:`ValueError` for a name the API's router would read as another path.
        """
        found: list[dict[str, Any]] = []
        errors: list[str] = []
        for name in names:
            if not _routable(name):
                raise ValueError(f"{name!r}: not a name to put in an API path")
            image, error = self._image(name)
            if image is not None:
                found.append(image)
            else:
                errors.append(error)
        return found, errors

    def _image(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """An image, or None and the daemon's message when it is no reference or not here."""
        status, _, body = self._call("GET", f"/images/{_name(name)}/json")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status in (400, 404):  # not a valid reference, or not here
            message = answer.get("message") if isinstance(answer, dict) else None
            return None, str(message or f"No such image: {name}")
        if status != 200 or not isinstance(answer, dict):
            raise OSError(f"docker image inspect {name}: the daemon answered {status}")
        return answer, ""

    def create(self, image: str, labels: Mapping[str, str]) -> str | None:
        """A container of ``image`` that is never started (no network), or None when absent.

        The daemon never pulls on create: an image that is not here is None.
        """
        spec = {"Image": image, "Entrypoint": [""], "Cmd": ["cratebridge-probe"],
                "Labels": dict(labels), "NetworkDisabled": True,
                "HostConfig": {"NetworkMode": "none"}}
        status, _, body = self._call("POST", "/containers/create", json.dumps(spec).encode())
        if status in (400, 404):  # not a valid reference, or not here
            return None
        made = json.loads(body) if status == 201 else None
        if not isinstance(made, dict) or not isinstance(made.get("Id"), str):
            raise OSError(f"docker create {image}: the daemon answered {status}")
        return str(made["Id"])

    def create_container(self, body: Mapping[str, Any],
                         name: str | None = None) -> tuple[str | None, str]:
        """``docker create`` with the API's ``body``: the new container's id, or None and
        the daemon's message (the image is never pulled)."""
        query = "?" + urlencode({"name": name}) if name else ""
        status, _, answer = self._call("POST", f"/containers/create{query}",
                                       json.dumps(body).encode())
        made = _json(answer)
        if status == 201 and isinstance(made.get("Id"), str):
            return str(made["Id"]), ""
        return None, _message(made, status)

    def start(self, container: str) -> str:
        """Start a created container: "" when it started, else the daemon's message."""
        status, _, answer = self._call("POST", f"/containers/{quote(container)}/start")
        return "" if status in (204, 304) else _message(_json(answer), status)

    def begin_wait(self, container: str,
                   condition: str) -> Callable[[], tuple[int | None, str]]:
        """Ask the daemon to wait until the container reaches ``condition`` (``next-exit``,
        ``removed``); return once it has taken the request.

        The daemon answers the head of a wait as soon as the wait is in place, and
        the body when the condition is met, so the ``docker`` client starts the
        container only after the head: however soon the container then ends, its
        end is seen. The returned call reads the body, without a time limit: the
        exit code, or None and why not.
        """
        url = f"/containers/{quote(container)}/wait?" + urlencode({"condition": condition})
        sock = self._send("POST", url)
        try:
            status, _, rest = _head(sock, "POST", url, self.path)
        except BaseException:
            sock.close()
            raise

        def result() -> tuple[int | None, str]:
            try:
                sock.settimeout(None)
                found = _json(_body(sock, rest, 1 << 20))
            finally:
                sock.close()
            code, error = found.get("StatusCode"), found.get("Error")
            if status != 200 or not isinstance(code, int):
                return None, _message(found, status)
            return code, str(error.get("Message") or "") if isinstance(error, dict) else ""

        return result

    def attach(self, container: str, stdin: bool) -> socket.socket:
        """The container's output (and input, with ``stdin``) on one connection, as the
        client's ``docker run`` attaches before it starts the container: a socket giving
        the multiplexed stream (8-byte headers; ``apirun.ContainerProcess`` reads it).
        No time limit."""
        query = urlencode({"stream": 1, "stdin": int(stdin), "stdout": 1, "stderr": 1})
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(f"POST /containers/{quote(container)}/attach?{query} HTTP/1.1\r\n"
                         "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
                         .encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1)  # byte by byte: the stream starts right after
                if not chunk or len(head) > _MAX_HEADERS:
                    raise OSError(f"docker attach {container}: the daemon closed")
                head += chunk
            status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if status not in (b"101", b"200"):
                raise OSError(f"docker attach {container}: the daemon answered "
                              f"{status.decode('latin-1')}")
            sock.settimeout(None)
            return sock
        except BaseException:
            sock.close()
            raise

    def containers(self, *labels: str) -> list[dict[str, Any]]:
        """``docker ps -a`` of the containers carrying every label (``key[=value]``) given."""
        query = urlencode({"all": 1, "filters": json.dumps({"label": list(labels)})})
        status, _, body = self._call("GET", f"/containers/json?{query}", limit=64 << 20)
        found = json.loads(body) if status == 200 else None
        if not isinstance(found, list):
            raise OSError(f"docker ps: the daemon answered {status}")
        return [c for c in found if isinstance(c, dict) and isinstance(c.get("Id"), str)]

    def remove(self, container: str) -> None:
        self._call("DELETE", f"/containers/{container}?" + urlencode({"force": 1, "v": 1}))

    def is_executable(self, container: str, path: str) -> bool:
        """Whether ``path`` in the container (links followed) is an executable regular file."""
        for _ in range(_MAX_LINKS):
            status, headers, _ = self._call("HEAD", _archive(container, path))
            if status != 200:
                return False
            stat = _path_stat(headers)
            if not stat:
                return False
            mode = int(stat.get("mode", 0))
            if not mode & _MODE_SYMLINK:
                return not mode & _MODE_TYPE and bool(mode & 0o111)
            target = str(stat.get("linkTarget") or "")
            if not target.startswith("/"):
                return False
            path = target
        return False

    def read(self, container: str, path: str, limit: int = 1 << 20) -> str | None:
        """A small regular file of the container (links followed), or None."""
        for _ in range(_MAX_LINKS):
            # the tar headers, the file and its padding
            status, headers, body = self._call("GET", _archive(container, path),
                                               limit=limit + (64 << 10))
            if status != 200:
                return None
            stat = _path_stat(headers)
            if int(stat.get("mode", 0)) & _MODE_SYMLINK and str(stat.get("linkTarget") or ""):
                path = str(stat["linkTarget"])
                continue
            return _first_file(body, limit)
        return None

    def _call(self, method: str, url: str, body: bytes | None = None,
              limit: int = 1 << 20,
              timeout: float | bool | None = True) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.0 exchange (the daemon sends no chunks, then closes): status, headers, body.

        At most ``limit`` bytes of the body are read (and returned). ``timeout``:
        seconds, None for none, True for the API's own.
        """
        with self._send(method, url, body, timeout) as sock:
            status, headers, rest = _head(sock, method, url, self.path)
            return status, headers, b"" if method == "HEAD" else _body(sock, rest, limit)

    def _send(self, method: str, url: str, body: bytes | None = None,
              timeout: float | bool | None = True) -> socket.socket:
        """A connection that has sent the request (``timeout`` as :meth:`_call`'s)."""
        head = f"{method} {url} HTTP/1.0\r\nHost: docker\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout if timeout is True else timeout)
            sock.connect(self.path)
            sock.sendall(head.encode() + b"\r\n" + (body or b""))
        except BaseException:
            sock.close()
            raise
        return sock


def _head(sock: socket.socket, method: str, url: str,
          daemon: str) -> tuple[int, dict[str, str], bytes]:
    """An answer's status and headers, and what came of its body with them (``daemon``:
    the socket's path, for the error)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < _MAX_HEADERS:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    header, found, rest = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if not found or len(status) < 2 or not status[1].isdigit():
        raise OSError(f"the Docker daemon at {daemon} gave no HTTP answer to {method} "
                      f"{url.partition('?')[0]}")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(status[1]), headers, rest


def _body(sock: socket.socket, rest: bytes, limit: int) -> bytes:
    """The rest of an answer's body, to its end (the daemon closes) or ``limit`` bytes."""
    data = bytearray(rest)
    while len(data) < limit:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data[:limit])


def _json(body: bytes) -> dict[str, Any]:
    try:
        found = json.loads(body)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _message(answer: Mapping[str, Any], status: int) -> str:
    """The daemon's message in an error answer (``{"message": ...}``)."""
    return str(answer.get("message") or f"the daemon answered {status}")


def _path_stat(headers: Mapping[str, str]) -> dict[str, Any]:
    """The archive API's stat of a path (name, size, mode, linkTarget); {} when absent."""
    try:
        stat = json.loads(base64.b64decode(headers.get("x-docker-container-path-stat", "")))
    except ValueError:
        return {}
    return stat if isinstance(stat, dict) else {}


def _routable(name: str) -> bool:
    """Whether a name stays one path segment's worth in a URL (no empty, ``.`` or ``..``
    part the daemon's router would read as another path)."""
    return not any(part in ("", ".", "..") for part in name.split("/"))


def _name(image: str) -> str:
    return quote(image, safe="/:@")  # "?", "#", "%" and every other byte escaped


def _archive(container: str, path: str) -> str:
    return f"/containers/{container}/archive?" + urlencode({"path": path})


def _first_file(data: bytes, limit: int) -> str | None:
    import io
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            member = archive.next()
            if member is None or not member.isfile() or member.size > limit:
                return None
            stream = archive.extractfile(member)
            return stream.read().decode("utf-8", "replace") if stream else None
    except tarfile.TarError:
        return None
