"""The HTTP side of ``cratebridge serve``: WES 1.1 routes on a threading HTTP server.

Every route but none needs a bearer token when tokens are configured; a run
another token submitted is "not found" (404), so run ids do not leak. A
submission's size is checked from its ``Content-Length`` before a byte of it
is read (chunked bodies are refused), and it is spooled to disk, never held
in memory. The only file ever served is a run's own result crate.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import re
import shutil
import signal
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cratebridge.config import Config, load_config
from cratebridge.errors import UsageError
from cratebridge.service.auth import Caller, Tokens, is_loopback
from cratebridge.service.multipart import BadForm, Form, boundary_of, read_form, spool
from cratebridge.service.scheduler import Scheduler, now
from cratebridge.service.store import Database, RunRow, Store
from cratebridge.service.wes import (
    API,
    FINAL,
    STATES,
    live_tasks,
    run_log,
    run_status,
    run_summary,
    task_logs,
)

__all__ = ["Service", "serve"]

_log = logging.getLogger("cratebridge.service")
_RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{20}$")
_ROUTE = re.compile(rf"^{API}/runs/([^/]+)(/status|/tasks|/cancel|/result-crate)?$")
_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")
MAX_PAGE = 500


class HttpError(Exception):
    """An error answer: the status and the message (a WES ErrorResponse)."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class Service:
    """What every request handler shares: the settings, the store, the scheduler."""

    def __init__(self, config: Config, store: Store, scheduler: Scheduler,
                 info: dict[str, Any], engines: frozenset[str]) -> None:
        self.config = config
        self.settings = config.service
        self.tokens = Tokens(config.service.tokens)
        self.store = store
        self.scheduler = scheduler
        self.info = info
        self.engines = engines
        self.submit_lock = threading.Lock()

    def visible(self, caller: Caller, run_id: str) -> RunRow:
        row = self.store.get(run_id) if _RUN_ID.match(run_id) else None
        if row is None or not caller.may_see(row.owner):
            raise HttpError(404, f"no run {run_id} (or not yours)")
        return row

    def shown_state(self, row: RunRow) -> tuple[str, list[dict[str, Any]]]:
        """The state as WES shows it, and the task logs (live while the run goes)."""
        files = self.scheduler.files(row.id)
        if row.state in FINAL:
            return row.state, task_logs(files.read_doc())
        if row.state in ("INITIALIZING", "RUNNING", "CANCELING"):
            executing, tasks = live_tasks(files.events)
            if row.state == "INITIALIZING" and executing:
                return "RUNNING", tasks
            return row.state, tasks
        return row.state, []

    def service_info(self) -> dict[str, Any]:
        counts = {state: 0 for state in STATES}
        counts.update(self.store.counts())
        return {**self.info, "system_state_counts": counts}


class Handler(BaseHTTPRequestHandler):
    """One request; routes, auth and errors. ``service`` is set on the server's class."""

    server_version = "cratebridge-wes"
    protocol_version = "HTTP/1.1"
    #: Seconds a client may stay silent mid-request (a slow upload) before it is dropped
    timeout = 120
    service: Service

    def log_message(self, format: str, *args: Any) -> None:
        _log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        try:
            caller = self.service.tokens.caller(self.headers.get("Authorization"))
            if caller is None:
                raise HttpError(401, "a valid bearer token is needed (Authorization: Bearer "
                                     "TOKEN)", close=method == "POST")
            self._route(method, caller)
        except HttpError as err:
            self._json(err.status, {"msg": err.message, "status_code": err.status},
                       close=err.close)
        except Exception:
            _log.exception("request %s %s failed", method, self.path)
            self._json(500, {"msg": "internal error; the server's log has the details",
                             "status_code": 500}, close=True)

    def _route(self, method: str, caller: Caller) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path.rstrip("/")
        if path == f"{API}/service-info" and method == "GET":
            return self._json(200, self.service.service_info())
        if path == f"{API}/runs":
            if method == "GET":
                return self._json(200, self._list(caller, query))
            if method == "POST":
                return self._json(200, {"run_id": self._submit(caller)})
            raise HttpError(405, f"{method} {path} is not allowed", close=True)
        match = _ROUTE.match(path)
        if not match:
            raise HttpError(404, f"no such endpoint: {path}", close=method != "GET")
        run_id, action = match.group(1), match.group(2) or ""
        allowed = "POST" if action == "/cancel" else "GET"
        if method != allowed:
            raise HttpError(405, f"{method} {path} is not allowed; use {allowed}", close=True)
        row = self.service.visible(caller, run_id)
        if action == "/cancel":
            return self._cancel(row, caller)
        if action == "/result-crate":
            return self._result(row)
        state, tasks = self.service.shown_state(row)
        if action == "/status":
            return self._json(200, run_status(row, state))
        if action == "/tasks":
            page, token = _paged(tasks, query)
            return self._json(200, {"task_logs": page, "next_page_token": token})
        doc = self.service.scheduler.files(row.id).read_doc() if state in FINAL else None
        return self._json(200, run_log(row, doc, tasks, self._base(), state))

    # -- the routes ----------------------------------------------------------------------------

    def _list(self, caller: Caller, query: dict[str, list[str]]) -> dict[str, Any]:
        size = _page_size(query)
        before = _token_value(query.get("page_token", [""])[0])
        rows = self.service.store.page(None if caller.operator else caller.name, size + 1,
                                       before)
        more = len(rows) > size
        rows = rows[:size]
        runs = [run_summary(row, self.service.shown_state(row)[0]) for row in rows]
        token = _token(rows[-1].seq) if more and rows else ""
        return {"runs": runs, "next_page_token": token}

    def _submit(self, caller: Caller) -> str:
        settings = self.service.settings
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "chunked bodies are refused: send a Content-Length",
                            close=True)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise HttpError(411, "a submission needs a Content-Length", close=True)
        if not length_text.isdigit():
            raise HttpError(400, "the Content-Length is not a number", close=True)
        length = int(length_text)
        if length > settings.max_request_bytes:
            raise HttpError(413, f"the submission is {length} bytes; this server takes at "
                                 f"most {settings.max_request_bytes}", close=True)
        if self.service.store.counts().get("QUEUED", 0) >= settings.max_queued_runs:
            raise HttpError(429, f"the queue is full ({settings.max_queued_runs} runs wait); "
                                 "submit again later", close=True)
        try:
            boundary = boundary_of(self.headers.get("Content-Type"))
        except BadForm as err:
            raise HttpError(400, str(err), close=True) from None
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:20]
        files = self.service.scheduler.files(run_id)
        files.folder.mkdir(parents=True, mode=0o700)
        try:
            body = files.folder / "body.upload"
            try:
                spool(self.rfile, length, body)
                form = read_form(body, boundary, files.folder)
            except BadForm as err:
                raise HttpError(400, str(err), close=True) from None
            except OSError as err:  # the client went quiet or away mid-upload
                raise HttpError(400, f"the body could not be read: {err}", close=True) \
                    from None
            finally:
                body.unlink(missing_ok=True)
            request, engine = self._run_request(form, files.request)
            with self.service.submit_lock:
                if not self.service.store.add(run_id, caller.name, now(), request, engine,
                                              settings.max_queued_runs):
                    raise HttpError(429, f"the queue is full ({settings.max_queued_runs} runs "
                                         "wait); submit again later")
        except BaseException:
            shutil.rmtree(files.folder, ignore_errors=True)
            raise
        _log.info("run %s queued for %s", run_id, caller.name)
        self.service.scheduler.wake()
        return run_id

    def _run_request(self, form: Form, dest: Path) -> tuple[dict[str, Any], str | None]:
        """The WES RunRequest fields kept with the run; the crate moved to ``dest``."""
        try:
            attachments = [f for f in form.files if f.field == "workflow_attachment"]
            if len(attachments) != 1 or len(form.files) != 1:
                raise BadForm("attach exactly one file, the request crate (a zip), as "
                              f"workflow_attachment; got {len(form.files)} file(s)")
            params = (form.one("workflow_params") or "").strip()
            if params not in ("", "{}"):
                raise BadForm("workflow_params must be empty or {}: the inputs come from "
                              "the request crate")
            tags = json.loads(form.one("tags") or "{}")
            if not isinstance(tags, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
                raise BadForm("tags must be a JSON object of strings")
            engine = form.one("workflow_engine") or None
            if engine is not None and engine not in self.service.engines:
                raise BadForm(f"workflow_engine {engine!r} is not an engine of this server; "
                              f"it offers {', '.join(sorted(self.service.engines))}")
        except json.JSONDecodeError:
            raise HttpError(400, "tags is not JSON") from None
        except BadForm as err:
            raise HttpError(400, str(err)) from None
        attachments[0].path.replace(dest)
        request = {"workflow_params": {}, "workflow_type": form.one("workflow_type"),
                   "workflow_type_version": form.one("workflow_type_version"),
                   "workflow_engine": engine,
                   "workflow_url": form.one("workflow_url") or attachments[0].filename,
                   "tags": tags}
        return request, engine

    def _cancel(self, row: RunRow, caller: Caller) -> None:
        if row.state in FINAL and row.state != "CANCELED":
            raise HttpError(409, f"run {row.id} has ended already ({row.state})")
        self.service.scheduler.cancel(row, caller.name)
        self._json(200, {"run_id": row.id})

    def _result(self, row: RunRow) -> None:
        path = self.service.scheduler.files(row.id).result
        if not row.has_result or not path.is_file():
            state = "ended without one" if row.state in FINAL else "has not ended"
            raise HttpError(404, f"run {row.id} has no result crate: it {state}")
        with path.open("rb") as handle:
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition",
                             f'attachment; filename="{row.id}-result.zip"')
            self.end_headers()
            shutil.copyfileobj(handle, self.wfile, 1024 * 1024)

    # -- answers -------------------------------------------------------------------------------

    def _base(self) -> str:
        host = self.headers.get("Host") or ""
        if not _HOST.match(host):
            host = "{}:{}".format(*self.server.server_address[:2])  # type: ignore[index]
        return f"http://{host}"

    def _json(self, status: int, doc: dict[str, Any], *, close: bool = False) -> None:
        body = json.dumps(doc, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="cratebridge"')
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


def _page_size(query: dict[str, list[str]]) -> int:
    text = query.get("page_size", ["50"])[0]
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise HttpError(400, f"page_size is a whole number from 1 to {MAX_PAGE}")
    return int(text)


def _token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def _token_value(token: str) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        return int(text.removeprefix("seq:")) if text.startswith("seq:") else int("x")
    except ValueError:
        raise HttpError(400, "page_token is not one this server gave") from None


def _paged(items: list[dict[str, Any]], query: dict[str, list[str]]) \
        -> tuple[list[dict[str, Any]], str]:
    size = _page_size(query)
    start = _token_value(query.get("page_token", [""])[0]) or 0
    token = _token(start + size) if start + size < len(items) else ""
    return items[start:start + size], token


def _service_info(config: Config) -> tuple[dict[str, Any], frozenset[str]]:
    from cratebridge import __version__, api

    engines = [e for e in api.engines(config) if e["available"]]
    wes_names = {"cwl": "CWL", "nextflow": "NFL", "snakemake": "SMK"}
    types: dict[str, dict[str, list[str]]] = {
        wes_names.get(e["language"], str(e["language"]).upper()): {"workflow_type_version": []}
        for e in engines}
    settings = config.service
    publisher = config.publisher
    info = {
        "id": "org.cratebridge.wes", "name": "cratebridge",
        "type": {"group": "org.ga4gh", "artifact": "wes", "version": "1.1.0"},
        "description": "Runs Five Safes request RO-Crates; each run's result crate at "
                       f"{API}/runs/{{run_id}}/result-crate",
        "organization": {"name": publisher.name if publisher else "cratebridge",
                         "url": publisher.url if publisher else ""},
        "version": __version__,
        "workflow_type_versions": types,
        "supported_wes_versions": ["1.1.0"],
        "supported_filesystem_protocols": [],
        "workflow_engine_versions": {e["name"]: {"workflow_engine_version":
                                                 [e["program_version"] or ""]}
                                     for e in engines},
        "default_workflow_engine_parameters": [],
        "auth_instructions_url": "docs/service.md",
        "tags": {"max_concurrent_runs": str(settings.max_concurrent_runs),
                 "max_queued_runs": str(settings.max_queued_runs),
                 "max_request_bytes": str(settings.max_request_bytes),
                 "workflow_attachment": "one Five Safes request RO-Crate (a BagIt zip)",
                 "result_crate": f"{API}/runs/{{run_id}}/result-crate"},
    }
    return info, frozenset(e["name"] for e in engines)


def serve(config_file: Path | None, host: str | None = None, port: int | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; the exit code."""
    config = load_config(config_file)
    settings = config.service
    host = host or settings.host
    port = settings.port if port is None else port
    if not settings.tokens:
        if not is_loopback(host):
            raise UsageError(f"no tokens are configured, so the server only listens on "
                             f"loopback (127.0.0.1 or ::1), not {host}: add [service] tokens "
                             "(see docs/service.md)", where="[service] tokens")
        _log.warning("no tokens configured: listening on loopback only, and every local "
                     "caller is an operator")
    state_dir = settings.state_folder(config.runs_dir)
    (state_dir / "runs").mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = (state_dir / "server.lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError("another cratebridge serve uses this state folder",
                         where=str(state_dir)) from None
    db = Database(settings.database_url(config.runs_dir))
    version = db.migrate()
    _log.info("database %s at schema version %d", db.dialect, version)
    store = Store(db)
    scheduler = Scheduler(store, settings, state_dir, config_file.absolute()
                          if config_file else None)
    info, engines = _service_info(config)
    handler = type("BoundHandler", (Handler,),
                   {"service": Service(config, store, scheduler, info, engines)})
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    stopped: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        if not stopped:
            stopped.append(signal.Signals(signum).name)
            threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    scheduler.start()
    address, bound = server.server_address[:2]
    _log.info("listening on http://%s:%d%s (state: %s)", address, bound, API, state_dir)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        reason = f"the server was shut down ({stopped[0] if stopped else 'an error'})"
        _log.info("%s: stopping the running runs", reason)
        server.server_close()
        scheduler.stop(f"{reason} while this run was running")
        db.close()
        lock.close()
    _log.info("stopped")
    return 0
