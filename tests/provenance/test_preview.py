"""ro-crate-preview.html: what a real headless Chromium shows of real result crates, offline.

The CLI runs the committed fixture requests (real cwltool, real containers);
the builder writes synthetic records (hostile text, a non-Five-Safes request);
a hand-made metadata folder checks the reader alone, fast. Chromium runs with
every host name unresolvable (a TRE's browser has no internet) and its network
log shows that the page asked for nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cratebridge.intake.request import CrateKind
from cratebridge.provenance import build_result_crate, builder, preview
from cratebridge.provenance.preview import PREVIEW, TAIL_LINES, write_preview

from .conftest import Run, make_run

REPO = Path(__file__).resolve().parents[2]
CRATES = REPO / "fixtures" / "crates"
HOSTILE = '<script>alert("x")</script>'
_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*:|//)")
_LOADS = {"script", "link", "img", "iframe", "object", "embed", "video", "audio", "source",
          "picture", "frame", "base", "svg", "math", "form"}


# -- reading what the browser made of the page ----------------------------------------


class Page(HTMLParser):
    """A page as a reader sees it: its text, its tables by section, its log blocks, its tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.pres: list[tuple[str, str]] = []  # (the h3 above it, the text)
        self.styles: list[str] = []
        self._text: list[str] = []
        self._open: list[str] = []
        self._h2 = self._h3 = ""

    @classmethod
    def of(cls, markup: str) -> Page:
        page = cls()
        page.feed(markup)
        page.close()
        return page

    @property
    def text(self) -> str:
        return " ".join(" ".join(self._text).split())

    def table(self, heading: str) -> list[list[str]]:
        """The rows of the table under ``heading``, each cell's text on one line."""
        return [[" ".join(c.split()) for c in row] for row in self.tables[heading]]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag == "br":
            self.handle_data(" ")
        if tag in ("br", "meta"):
            return
        self._open.append(tag)
        if tag in ("h2", "h3"):
            setattr(self, f"_{tag}", "")
        elif tag == "table":
            self.tables[self._h2] = []
        elif tag == "tr":
            self.tables[self._h2].append([])
        elif tag in ("td", "th"):
            self.tables[self._h2][-1].append("")
        elif tag == "pre":
            self.pres.append((self._h3, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        if "style" in self._open:
            self.styles.append(data)
            return
        if "title" in self._open:
            return
        self._text.append(data)
        if "h2" in self._open:
            self._h2 += data
        if "h3" in self._open:
            self._h3 += data
        if "td" in self._open or "th" in self._open:
            self.tables[self._h2][-1][-1] += data
        if "pre" in self._open:
            title, text = self.pres[-1]
            self.pres[-1] = (title, text + data)


@dataclass(frozen=True)
class Rendered:
    """A preview opened in headless Chromium: the file, the DOM it built, a screenshot."""

    source: str
    dom: Page
    screenshot: Path
    requests: list[str]


def _chromium_args(binary: str, profile: Path) -> list[str]:
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND"]


def render(chromium: str, page: Path, work: Path) -> Rendered:
    """Open ``page`` in Chromium twice: its DOM (with a network log), then a screenshot."""
    work.mkdir(parents=True, exist_ok=True)
    netlog, shot = work / "netlog.json", work / "preview.png"
    args = _chromium_args(chromium, work / "profile")
    dom = subprocess.run([*args, f"--log-net-log={netlog}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    done = subprocess.run([*args, f"--screenshot={shot}", "--window-size=1280,1800",
                           page.as_uri()], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    return Rendered(page.read_text(encoding="utf-8"), Page.of(dom.stdout), shot,
                    page_requests(netlog))


def page_requests(netlog: Path) -> list[str]:
    """The URLs the page (not the browser's own services) asked the network for."""
    text = netlog.read_text(encoding="utf-8", errors="replace").rstrip().rstrip(",")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # Chromium may leave the events list open
        log = json.loads(text + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"] if e["type"] == start
            and "url" in e.get("params", {})
            and "site=file://" in e["params"].get("site_for_cookies", "")]


def assert_png(path: Path, width: int, height: int) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == \
        (width, height)
    assert len(data) > 20_000, "a blank screenshot"


def assert_self_contained(rendered: Rendered) -> None:
    """Nothing to load and nothing to run: no script, no external reference, no request."""
    assert "<script" not in rendered.source.lower()
    source = Page.of(rendered.source)
    for markup in (source, rendered.dom):
        assert not [t for t, _ in markup.tags if t in _LOADS], "an element that loads or runs"
        for tag, attrs in markup.tags:
            for name, value in attrs.items():
                assert not name.startswith("on"), f"<{tag} {name}>"
                if name in ("href", "src", "srcset", "action", "data", "poster", "background"):
                    assert not _SCHEME.match(value), f"<{tag} {name}={value!r}>"
                if name == "style":
                    assert "url(" not in value and "expression(" not in value
        assert not [s for s in markup.styles if "url(" in s or "@import" in s or "@font" in s]
    csp = [a.get("content", "") for t, a in source.tags
           if t == "meta" and a.get("http-equiv", "").lower() == "content-security-policy"]
    assert csp and "default-src 'none'" in csp[0]
    assert rendered.requests == []


def steps_by_name(page: Page) -> dict[str, list[str]]:
    """Step rows (``# Step Status Start End Took Image Exit-code Timeline``) by step name."""
    rows = page.table("Steps")
    assert rows[0][:2] == ["#", "Step"]
    return {row[1]: row for row in rows[1:] if len(row) > 2}


def _manifest(bag: Path) -> dict[str, str]:
    lines = (bag / "manifest-sha512.txt").read_text().splitlines()
    return {path: digest for digest, path in (line.split("  ", 1) for line in lines)}


def _sha512(path: Path) -> str:
    return hashlib.sha512(path.read_bytes()).hexdigest()


def _graph(folder: Path) -> dict[str, dict[str, Any]]:
    document = json.loads((folder / "ro-crate-metadata.json").read_text())
    return {e["@id"]: e for e in document["@graph"]}


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed: run `make setup` (Debian package chromium)")
    return binary


@dataclass(frozen=True)
class CliRun:
    """A fixture request run by the CLI: its exit code and result bag (a folder)."""

    code: int
    bag: Path
    stderr: str

    @property
    def crate(self) -> Path:
        return self.bag / "data"


def _cli_run(request: Path, tmp: Path) -> CliRun:
    config = tmp / "c.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp / "runs"}"\n')
    out = tmp / "result"
    done = subprocess.run([sys.executable, "-m", "cratebridge.cli", "run", str(request),
                           "--out", str(out), "--config", str(config)],
                          capture_output=True, text=True, check=False, timeout=600)
    return CliRun(done.returncode, out, done.stderr)


@pytest.fixture(scope="module")
def demo(docker_available: bool, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    run = _cli_run(CRATES / "demo-request.zip", tmp_path_factory.mktemp("demo"))
    assert run.code == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def step_fails(docker_available: bool, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    run = _cli_run(CRATES / "step-fails-request.zip", tmp_path_factory.mktemp("fails"))
    assert run.code == 1, run.stderr
    return run


def _build(run: Run, tmp_path: Path) -> Path:
    return build_result_crate(run.request, run.record, run_dir=run.run_dir,
                              dest=tmp_path / "result", plan=run.plan)


# -- real runs, real browser ------------------------------------------------------------


@pytest.mark.docker
def test_completed_run_preview_shows_request_steps_and_outputs(
    demo: CliRun, chromium: str, tmp_path: Path
) -> None:
    shown = render(chromium, demo.crate / PREVIEW, tmp_path)
    assert_png(shown.screenshot, 1280, 1800)
    page = shown.dom
    assert "Run status: Completed" in page.text
    assert "Demo request: three-step" in page.text
    assert "Researcher Stian Soiland-Reyes (https://orcid.org/0000-0001-9842-9718)" in page.text
    assert "Project cratebridge fixture project (TRE72 project 81)" in page.text
    checks = {row[0]: row for row in page.table("Checks and approvals")[1:]}
    assert {"Check Value", "Validation Check", "Sign Off"} <= set(checks)  # the request's
    assert checks["Sign Off"][2].startswith("Josiah Carberry")
    steps = steps_by_name(page)
    assert set(steps) == {"count", "head", "combine"}
    assert {name: row[2] for name, row in steps.items()} == dict.fromkeys(steps, "Completed")
    assert steps["count"][6].startswith("cratebridge/busybox:1 sha256:")
    assert steps["head"][6].startswith("cratebridge/busybox:1 sha256:")
    assert steps["combine"][6].startswith("cratebridge/python:3.11 sha256:")
    assert [row[7] for row in steps.values()] == ["0", "0", "0"]
    outputs = {row[0]: row for row in page.table("Outputs")[1:]}
    report = demo.crate / "provenance" / "outputs" / "report.txt"
    assert outputs["provenance/outputs/report.txt"][1:] == [f"{report.stat().st_size} B",
                                                            _sha512(report)]
    assert "Logs of what failed" not in page.text
    assert_self_contained(shown)


@pytest.mark.docker
def test_failed_run_preview_shows_the_error_and_the_failed_steps_log_tail(
    step_fails: CliRun, chromium: str, tmp_path: Path
) -> None:
    shown = render(chromium, step_fails.crate / PREVIEW, tmp_path)
    assert_png(shown.screenshot, 1280, 1800)
    page = shown.dom
    assert "Run status: Failed" in page.text
    assert "Error cwltool exited 1: step(s) failed: head (exit 3)" in page.text
    steps = steps_by_name(page)
    assert steps["head"][2] == "Failed" and steps["head"][7] == "3"
    assert steps["head"][6].startswith("cratebridge/busybox:1")
    assert "Step head failed with exit code 3" in page.text
    assert steps["combine"][2] == "No run recorded"  # it needs head's output
    assert steps["count"][2] in ("Completed", "No run recorded")  # cwltool's order varies
    [(title, tail)] = [p for p in page.pres if p[0].startswith("head:")]
    assert title == "head: head stderr"
    assert "CRATEBRIDGE_FIXTURE_FAILURE: step head failed on purpose (boom)" in tail
    assert_self_contained(shown)


@pytest.mark.docker
def test_preview_is_packaged_but_not_described(demo: CliRun, step_fails: CliRun) -> None:
    """In the BagIt manifest like every file; no data entity (RO-Crate 1.2: SHOULD NOT)."""
    for run in (demo, step_fails):
        manifest = _manifest(run.bag)
        for folder in (run.crate, run.crate / "provenance"):
            page = folder / PREVIEW
            assert manifest[f"data/{page.relative_to(run.crate).as_posix()}"] == _sha512(page)
            graph = _graph(folder)
            assert not [i for i in graph if PREVIEW in i]
            assert PREVIEW not in json.dumps(graph["./"].get("hasPart"))


@pytest.mark.docker
def test_nested_run_crate_gets_its_own_preview(
    step_fails: CliRun, chromium: str, tmp_path: Path
) -> None:
    shown = render(chromium, step_fails.crate / "provenance" / PREVIEW, tmp_path)
    page = shown.dom
    assert "Run status: Failed" in page.text
    assert steps_by_name(page)["head"][2] == "Failed"
    assert any("CRATEBRIDGE_FIXTURE_FAILURE" in tail for _, tail in page.pres)
    assert_self_contained(shown)


# -- the builder's records: hostile text, a non-Five-Safes request -----------------------


def _hostile(tmp_path: Path) -> Run:
    run = make_run(tmp_path, failed=True)
    steps = list(run.record.steps)
    steps[2] = replace(steps[2], error=f"report broke: {HOSTILE}")
    record = replace(run.record, steps=tuple(steps),
                     error='<img src="x" onerror="alert(1)"> and </dd></dl><script>')
    metadata = json.loads(json.dumps(run.request.metadata))
    for entity in metadata["@graph"]:
        if entity["@id"] == "./":
            entity["name"] = f"</title>{HOSTILE}"
        if entity["@type"] == "Person":
            entity["name"] = '<a href="https://evil.example/">Mallory</a>'
    (run.run_dir / "logs" / "report.stderr").write_text(
        "report: boom\n</pre><script src=\"https://evil.example/x.js\"></script>\n")
    return replace(run, record=record, request=replace(run.request, metadata=metadata))


def test_hostile_text_is_escaped(tmp_path: Path, chromium: str) -> None:
    crate = _build(_hostile(tmp_path), tmp_path)
    shown = render(chromium, crate / PREVIEW, tmp_path / "browser")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in shown.source
    page = shown.dom
    assert f"report broke: {HOSTILE}" in page.text
    assert '<img src="x" onerror="alert(1)"> and </dd></dl><script>' in page.text
    assert '<a href="https://evil.example/">Mallory</a>' in page.text
    assert any('<script src="https://evil.example/x.js">' in tail for _, tail in page.pres)
    title = [t for t, _ in Page.of(shown.source).tags if t == "title"]
    assert title == ["title"]
    assert_self_contained(shown)


def test_workflow_request_preview_is_the_run_crates(tmp_path: Path, chromium: str) -> None:
    """Not Five Safes: the result crate is the run crate itself, and so is its preview."""
    crate = _build(make_run(tmp_path, kind=CrateKind.WORKFLOW, failed=True), tmp_path)
    assert not (crate / "provenance").exists()
    shown = render(chromium, crate / PREVIEW, tmp_path / "browser")
    page = shown.dom
    assert "Run status: Failed" in page.text
    assert "Error step report failed: exit code 1" in page.text
    steps = steps_by_name(page)
    assert list(steps) == ["sort", "count", "report"]  # by start time
    assert steps["report"][2] == "Failed" and steps["report"][7] == "1"
    assert steps["sort"][6].startswith("busybox:1.30")
    outputs = {row[0]: row for row in page.table("Outputs")[1:]}
    summary = crate / "outputs" / "summary.csv"
    assert outputs["outputs/summary.csv"][2] == _sha512(summary)
    assert [tail for title, tail in page.pres if title == "report: stderr"] == ["report: boom"]
    assert "Checks and approvals" not in page.text
    assert_self_contained(shown)


def test_page_requests_sees_a_page_that_loads_something(tmp_path: Path, chromium: str) -> None:
    """Guards the check itself: an external image and stylesheet are seen as requests."""
    page = tmp_path / "external.html"
    page.write_text('<html><head><link rel="stylesheet" href="https://fonts.example/a.css">'
                    '</head><body><img src="http://images.example/x.png"></body></html>')
    shown = render(chromium, page, tmp_path / "browser")
    assert sorted(shown.requests) == ["http://images.example/x.png", "https://fonts.example/a.css"]


# -- write_preview alone, on hand-made metadata (fast, no browser) --------------------------


def _ref(entity_id: str) -> dict[str, str]:
    return {"@id": entity_id}


def _run_crate(folder: Path, *, error: object = "boom", extra: list[dict[str, Any]] | None = None,
               ) -> Path:
    """A small run crate: one failed step in a container, one output, one stderr log."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "out.txt").write_text("42\n")
    (folder / "step.stderr").write_text("".join(f"line {n}\n" for n in range(100)))
    graph: list[dict[str, Any]] = [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": _ref("./")},
        {"@id": "./", "@type": "Dataset", "name": "Hand-made run", "mainEntity": _ref("wf.cwl")},
        {"@id": "wf.cwl", "@type": ["File", "ComputationalWorkflow"], "name": "wf"},
        {"@id": "#run", "@type": "CreateAction", "name": "Run of workflow wf",
         "instrument": _ref("wf.cwl"), "agent": _ref("#me"),
         "actionStatus": "http://schema.org/FailedActionStatus", "error": error,
         "startTime": "2025-03-01T12:00:00+00:00", "endTime": "2025-03-01T12:02:00+00:00",
         "result": [_ref("out.txt"), _ref("#n")]},
        {"@id": "#me", "@type": "Person", "name": "A. Researcher"},
        {"@id": "#engine", "@type": "OrganizeAction", "object": _ref("#control")},
        {"@id": "#control", "@type": "ControlAction", "instrument": _ref("wf.cwl#step/s"),
         "object": _ref("#step")},
        {"@id": "wf.cwl#step/s", "@type": "HowToStep", "name": "s", "position": "0"},
        {"@id": "wf.cwl#step/never", "@type": "HowToStep", "name": "never", "position": "1"},
        {"@id": "#step", "@type": "CreateAction", "name": "Run of step s",
         "actionStatus": {"@id": "http://schema.org/FailedActionStatus"},
         "startTime": "2025-03-01T12:00:30+00:00", "endTime": "2025-03-01T12:01:00+00:00",
         "containerImage": _ref("#img"), "additionalProperty": _ref("#code"),
         "error": "Step s failed with exit code 2"},
        {"@id": "#img", "@type": "ContainerImage", "name": "tools/thing", "tag": "2.1",
         "registry": "quay.io", "sha256": "ab" * 32},
        {"@id": "#code", "@type": "PropertyValue", "propertyID": "exitCode", "value": 2},
        {"@id": "step.stderr", "@type": "File", "name": "s stderr", "about": _ref("#step")},
        {"@id": "out.txt", "@type": "File", "contentSize": "3", "sha512": "f" * 128},
        {"@id": "#n", "@type": "PropertyValue", "name": "n", "value": None},
        *(extra or []),
    ]
    (folder / "ro-crate-metadata.json").write_text(
        json.dumps({"@context": "https://w3id.org/ro/crate/1.2/context", "@graph": graph}))
    return folder


def test_write_preview_on_hand_made_metadata(tmp_path: Path) -> None:
    page_path = write_preview(_run_crate(tmp_path / "crate"))
    assert page_path == tmp_path / "crate" / PREVIEW
    page = Page.of(page_path.read_text(encoding="utf-8"))
    assert "Run status: Failed" in page.text and "Error boom" in page.text
    assert "Researcher A. Researcher (#me)" in page.text
    assert "Duration 2 min 0 s" in page.text
    steps = steps_by_name(page)
    assert steps["s"][1:8] == ["s", "Failed", "2025-03-01 12:00:30 UTC", "2025-03-01 12:01:00 UTC",
                               "30.0 s", "quay.io/tools/thing:2.1 sha256:abababababab", "2"]
    assert steps["never"][2] == "No run recorded"
    outputs = page.table("Outputs")
    assert outputs[1] == ["out.txt", "3 B", "f" * 128]
    assert outputs[2] == ["n (not produced)", "", ""]
    [(title, tail)] = page.pres
    assert title == f"s: s stderr (last {TAIL_LINES} lines)"
    assert tail.splitlines() == [f"line {n}" for n in range(100 - TAIL_LINES, 100)]
    assert not (tmp_path / "crate" / "provenance").exists()


@pytest.mark.parametrize(
    "metadata",
    [
        None,  # no metadata file at all
        "{not json",
        "[1, 2, 3]",
        '{"@graph": {"@id": "./"}}',
        '{"@graph": [1, "x", null, {"@id": 5}, {"@id": "./", "name": {"nested": [1]}}]}',
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["missing", "not-json", "list", "graph-not-list", "odd-entities", "deep"],
)
def test_write_preview_never_fails_on_bad_metadata(tmp_path: Path, metadata: str | None) -> None:
    folder = tmp_path / "crate"
    folder.mkdir()
    if metadata is not None:
        (folder / "ro-crate-metadata.json").write_text(metadata)
    text = write_preview(folder).read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text


def test_write_preview_reads_nothing_outside_the_crate(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET outside the crate\n")
    odd: list[dict[str, Any]] = [
        {"@id": "../secret.txt", "@type": "File", "name": "up", "about": _ref("#step")},
        {"@id": str(secret), "@type": "File", "name": "absolute", "about": _ref("#step")},
        {"@id": secret.as_uri(), "@type": "File", "name": "uri", "about": _ref("#step")},
        {"@id": "link.txt", "@type": "File", "name": "link", "about": _ref("#step")},
    ]
    folder = _run_crate(tmp_path / "crate", extra=odd,
                        error=["first", {"@value": "second"}, {"@id": "#x"}, 3])
    (folder / "link.txt").symlink_to(secret)
    text = write_preview(folder).read_text(encoding="utf-8")
    assert "TOP SECRET" not in text
    assert "Error first; second; 3" in Page.of(text).text


def test_write_preview_renders_a_five_safes_crate_and_its_nested_run_crate(
    tmp_path: Path,
) -> None:
    outer = tmp_path / "crate"
    _run_crate(outer / "provenance")
    (outer / "outputs").mkdir()
    (outer / "outputs" / "a b.csv").write_text("x\n")
    graph = [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": _ref("./")},
        {"@id": "./", "@type": "Dataset", "name": "Request", "mainEntity": _ref("workflow/"),
         "mentions": [_ref("#req"), _ref("#signoff")], "sourceOrganization": _ref("#p")},
        {"@id": "#req", "@type": "CreateAction", "name": "Execute query 1",
         "instrument": _ref("workflow/"), "agent": _ref("#me"),
         "actionStatus": "http://schema.org/CompletedActionStatus",
         "result": _ref("outputs/a%20b.csv"), "subjectOf": _ref("provenance/")},
        {"@id": "#me", "@type": "Person", "name": "A. Researcher", "memberOf": _ref("#p")},
        {"@id": "#p", "@type": "Project", "name": "Project 81"},
        # the Five Safes 0.4 example result writes "type" for "@type"
        {"@id": "#signoff", "type": "AssessAction", "name": "Sign-off: approved",
         "additionalType": _ref("https://w3id.org/shp#SignOff"), "agent": _ref("#me"),
         "actionStatus": "http://schema.org/CompletedActionStatus",
         "endTime": "2025-03-01T11:00:00+01:00"},
        {"@id": "outputs/a%20b.csv", "@type": "File", "contentSize": "2048",
         "sha512": "e" * 128},
    ]
    (outer / "ro-crate-metadata.json").write_text(json.dumps({"@graph": graph}))
    page = Page.of(write_preview(outer).read_text(encoding="utf-8"))
    assert "Run status: Completed" in page.text and "Project Project 81" in page.text
    assert page.table("Checks and approvals")[1] == [
        "Sign Off", "Sign-off: approved", "A. Researcher (#me)", "Completed",
        "2025-03-01 11:00:00 +0100"]
    assert list(steps_by_name(page)) == ["s", "never"]  # from the nested crate
    assert page.table("Outputs")[1] == ["outputs/a b.csv", "2.0 KiB (2,048 B)", "e" * 128]
    assert [t for t, a in page.tags if t == "a" and a["href"] == "outputs/a%20b.csv"]
    assert page.pres[0][0] == f"s: s stderr (last {TAIL_LINES} lines)"
    nested = Page.of((outer / "provenance" / PREVIEW).read_text(encoding="utf-8"))
    assert "Run status: Failed" in nested.text


@pytest.mark.parametrize("kind, failed", [(CrateKind.FIVE_SAFES, False),
                                          (CrateKind.FIVE_SAFES, True),
                                          (CrateKind.WORKFLOW, False)])
def test_the_preview_built_from_memory_is_the_one_read_from_the_files(
    tmp_path: Path, kind: CrateKind, failed: bool
) -> None:
    """The builder hands the metadata it wrote to the preview instead of parsing it
    again; the pages must be those a reader of the files makes."""
    crate = _build(make_run(tmp_path, kind=kind, failed=failed), tmp_path)
    pages = sorted(crate.rglob(PREVIEW))
    built = [p.read_text(encoding="utf-8") for p in pages]
    for page in pages:
        page.unlink()
    write_preview(crate)
    assert [p.read_text(encoding="utf-8") for p in pages] == built
    assert len(pages) == (2 if kind is CrateKind.FIVE_SAFES else 1)


def test_a_preview_that_cannot_be_made_still_leaves_a_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise TypeError("a shape nobody expected")

    monkeypatch.setattr(preview, "read_preview", broken)
    page = Page.of(write_preview(_run_crate(tmp_path / "crate")).read_text(encoding="utf-8"))
    assert "The preview could not be made from this crate's metadata (TypeError)" in page.text


def test_a_preview_that_cannot_be_written_does_not_cost_the_crate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(crate_dir: Path, known: object = None) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builder, "write_preview", disk_full)
    crate = _build(make_run(tmp_path), tmp_path)
    assert (crate / "ro-crate-metadata.json").is_file()
    assert [p.relative_to(crate).as_posix() for p in crate.rglob("report.txt")
            if p.parent.name == "outputs"]
    assert not (crate / PREVIEW).exists()
