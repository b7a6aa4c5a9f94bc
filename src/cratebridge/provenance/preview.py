"""A human preview of a result crate: ``ro-crate-preview.html``, one self-contained page.

Every text of the crate's metadata is escaped and the page loads nothing (inline CSS, no script,
font or image: a TRE has no internet).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from cratebridge.provenance.preview_model import (
    NONE_KNOWN,
    TAIL_LINES,
    Crate,
    LogTail,
    Output,
    Preview,
    Review,
    Status,
    Step,
    nested_crate,
    read_preview,
)
from cratebridge.provenance.preview_values import clip, parse_time

__all__ = ["PREVIEW", "TAIL_LINES", "write_preview"]

#: The preview's file name, beside ``ro-crate-metadata.json`` (RO-Crate 1.2 §"RO-Crate Website")
PREVIEW = "ro-crate-preview.html"

_STATUS_CLASS = {Status.COMPLETED: "ok", Status.FAILED: "failed", Status.ACTIVE: "active"}


def write_preview(crate_dir: Path, known: Mapping[Path, object] = NONE_KNOWN) -> Path:
    """Write ``ro-crate-preview.html`` at the root of the crate in ``crate_dir``; return its path.

    A Provenance Run Crate nested in the crate (a Five Safes result's
    ``provenance/``) gets a preview of its own too. Metadata that is missing,
    malformed or hostile never raises: the page says what it could not read.
    ``known``: metadata documents just written, by the path of their file (as
    JSON would read them back), so a large crate's metadata is not parsed again.
    Raises :class:`OSError` only when a page cannot be written; no part-written
    page is left behind.
    """
    crate_dir = crate_dir.resolve()
    known = {path.resolve(): document for path, document in known.items()}
    outer = Crate.load(crate_dir, crate_dir, known)
    nested = nested_crate(outer, known)
    page = _write_page(crate_dir / PREVIEW, outer, nested)
    if nested is not None:
        _write_page(nested.folder / PREVIEW, nested, None)
    return page


def _write_page(path: Path, crate: Crate, nested: Crate | None) -> Path:
    try:
        text = _render(read_preview(crate, nested))
    except Exception as exc:  # a bug meeting hostile metadata must not cost the run its crate
        text = _fallback_page(exc)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError:
        path.unlink(missing_ok=True)
        raise
    return path


# -- the page ------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1d2330;
margin:0;background:#f4f5f7}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 8px}
h3{font-size:14px;margin:16px 0 4px}
section,header{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:14px 18px;
margin-bottom:14px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;font-size:13px;
background:#e5e7eb;color:#374151}
.ok{background:#d1fae5;color:#065f46}.failed{background:#fee2e2;color:#991b1b}
.active{background:#dbeafe;color:#1e40af}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:#5b6472}dd{margin:0}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef1;vertical-align:top}
th{color:#5b6472;font-weight:600;font-size:12px;text-transform:uppercase}
.mono,pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
.hash{word-break:break-all;max-width:520px}.muted{color:#6b7280}
.error{color:#991b1b;white-space:pre-wrap;word-break:break-word}
tr.err td{border-bottom:1px solid #eceef1;padding-top:0}
.track{position:relative;background:#eef0f3;height:10px;border-radius:5px;min-width:140px}
.bar{position:absolute;top:0;height:10px;border-radius:5px;background:#9ca3af}
.bar.ok{background:#10b981}.bar.failed{background:#ef4444}.bar.active{background:#3b82f6}
pre{background:#111827;color:#e5e7eb;padding:10px 12px;border-radius:4px;overflow-x:auto;
white-space:pre-wrap;word-break:break-word;margin:4px 0 0}
.notice{background:#fef3c7;border-color:#f59e0b}
footer{color:#6b7280;font-size:12px;margin:8px 0 24px}
a{color:#1d4ed8}
"""

# No script may run and nothing may load, whatever the crate holds.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _render(preview: Preview) -> str:
    """The preview as one HTML document: inline CSS, no script, nothing fetched."""
    body = "".join([
        _header(preview),
        _problems(preview.problems),
        _request(preview),
        _review_table(preview.reviews),
        _step_table(preview),
        _output_table(preview.outputs),
        _tail_section(preview.tails),
    ])
    return _document(preview.title, body)


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_e(_CSP)}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n{body}"
        "<footer>A preview written by cratebridge from this crate's "
        "<a href=\"ro-crate-metadata.json\">ro-crate-metadata.json</a>, which is the "
        "authoritative record.</footer>\n</main></body></html>\n"
    )


def _badge(status: Status) -> str:
    return f"<span class=\"badge {_STATUS_CLASS.get(status, '')}\">{_e(status.value)}</span>"


def _header(preview: Preview) -> str:
    description = f"<p>{_e(preview.description)}</p>" if preview.description else ""
    return (f"<header><h1>{_e(preview.title)}</h1><p>Run status: {_badge(preview.status)}</p>"
            f"{description}</header>\n")


def _problems(problems: Iterable[str]) -> str:
    items = "".join(f"<li>{_e(p)}</li>" for p in problems)
    return f"<section class=\"notice\"><ul>{items}</ul></section>\n" if items else ""


def _request(preview: Preview) -> str:
    start, end = parse_time(preview.start), parse_time(preview.end)
    rows = [
        ("Request", preview.request),
        ("Researcher", preview.agent),
        ("Project", preview.project),
        ("Started", _time(preview.start)),
        ("Ended", _time(preview.end)),
        ("Duration", _duration(start, end)),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows if v)
    error = f"<dt>Error</dt><dd class=\"error\">{_e(preview.error)}</dd>" if preview.error else ""
    return f"<section><h2>Request and run</h2><dl>{items}{error}</dl></section>\n"


def _review_table(reviews: tuple[Review, ...]) -> str:
    if not reviews:
        return ""
    rows = "".join(
        f"<tr><td>{_e(r.kind)}</td><td>{_e(r.name)}</td><td>{_e(r.agent or '')}</td>"
        f"<td>{_badge(r.status)}</td><td>{_e(_time(r.when) or '')}</td></tr>"
        for r in reviews
    )
    return ("<section><h2>Checks and approvals</h2><table><tr><th>Check</th><th>Outcome</th>"
            f"<th>By</th><th>Status</th><th>When</th></tr>{rows}</table></section>\n")


def _step_table(preview: Preview) -> str:
    if not preview.steps:
        return ("<section><h2>Steps</h2><p class=\"muted\">No step executions recorded.</p>"
                "</section>\n")
    span = _span(preview)
    rows = []
    for number, step in enumerate(preview.steps, 1):
        image = _e(step.image or "")
        if step.image_digest:
            image += f"<br><span class=\"muted\">sha256:{_e(step.image_digest[:12])}</span>"
        rows.append(
            f"<tr><td>{number}</td><td><strong>{_e(step.name)}</strong></td>"
            f"<td>{_badge(step.status)}</td><td>{_e(_time(step.start) or '')}</td>"
            f"<td>{_e(_time(step.end) or '')}</td>"
            f"<td>{_e(_duration(parse_time(step.start), parse_time(step.end)) or '')}</td>"
            f"<td class=\"mono\">{image}</td><td>{_e(step.exit_code or '')}</td>"
            f"<td>{_bar(step, span)}</td></tr>")
        if step.error:
            rows.append(f"<tr class=\"err\"><td></td><td colspan=\"8\" class=\"error\">"
                        f"{_e(step.error)}</td></tr>")
    more = (f"<p class=\"muted\">{preview.steps_left_out} more step executions are in the "
            "metadata.</p>") if preview.steps_left_out else ""
    return ("<section><h2>Steps</h2><table><tr><th>#</th><th>Step</th><th>Status</th>"
            "<th>Start</th><th>End</th><th>Took</th><th>Image</th><th>Exit code</th>"
            f"<th>Timeline</th></tr>{''.join(rows)}</table>{more}</section>\n")


def _span(preview: Preview) -> tuple[datetime, float] | None:
    """The run's start and length in seconds, for the timeline bars."""
    moments = [m for s in preview.steps for m in (parse_time(s.start), parse_time(s.end)) if m]
    moments += [m for m in (parse_time(preview.start), parse_time(preview.end)) if m]
    if not moments:
        return None
    first, last = min(moments), max(moments)
    return first, max((last - first).total_seconds(), 1e-3)


def _bar(step: Step, span: tuple[datetime, float] | None) -> str:
    start, end = parse_time(step.start), parse_time(step.end)
    if span is None or start is None:
        return ""
    first, length = span
    left = min(max((start - first).total_seconds() / length * 100, 0.0), 100.0)
    width = ((end - start).total_seconds() / length * 100) if end else 100.0 - left
    width = min(max(width, 0.8), 100.0 - min(left, 99.2))
    kind = _STATUS_CLASS.get(step.status, "")
    return (f"<div class=\"track\"><div class=\"bar {kind}\" "
            f"style=\"left:{left:.1f}%;width:{width:.1f}%\"></div></div>")


def _output_table(outputs: tuple[Output, ...]) -> str:
    if not outputs:
        return "<section><h2>Outputs</h2><p class=\"muted\">No outputs recorded.</p></section>\n"
    rows = []
    for out in outputs:
        name = f"<a href=\"{_e(out.href)}\">{_e(out.name)}</a>" if out.href else _e(out.name)
        value = "" if out.value is None else f"<br><span class=\"mono\">= {_e(out.value)}</span>"
        if not out.produced:
            value = " <span class=\"muted\">(not produced)</span>"
        rows.append(f"<tr><td>{name}{value}</td><td>{_e(_size(out.size) or '')}</td>"
                    f"<td class=\"mono hash\">{_e(out.sha512 or '')}</td></tr>")
    return ("<section><h2>Outputs</h2><table><tr><th>Output</th><th>Size</th><th>SHA-512</th>"
            f"</tr>{''.join(rows)}</table></section>\n")


def _tail_section(tails: tuple[LogTail, ...]) -> str:
    if not tails:
        return ""
    parts = []
    for tail in tails:
        title = f"<a href=\"{_e(tail.href)}\">{_e(tail.title)}</a>" if tail.href else _e(tail.title)
        note = (f" <span class=\"muted\">(last {len(tail.lines)} lines)</span>"
                if tail.cut else "")
        text = "\n".join(tail.lines) or "(empty)"
        parts.append(f"<h3>{title}{note}</h3><pre>{_e(text)}</pre>")
    return f"<section><h2>Logs of what failed</h2>{''.join(parts)}</section>\n"


def _time(text: str | None) -> str | None:
    moment = parse_time(text)
    if moment is None:
        return clip(text, 100)
    offset = moment.utcoffset()
    zone = " UTC" if offset is not None and not offset else moment.strftime(" %z")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + zone


def _size(text: str | None) -> str | None:
    if text is None or not text.isascii() or not text.isdigit():
        return clip(text, 100)
    exact = int(text)
    if exact < 1024:
        return f"{exact} B"
    value, units = exact / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.1f} {units[0]} ({exact:,} B)"


def _duration(start: datetime | None, end: datetime | None) -> str | None:
    if start is None or end is None:
        return None
    seconds = (end - start).total_seconds()
    if seconds < 0:
        return None
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _fallback_page(exc: Exception) -> str:
    return _document("Result crate", (
        "<section class=\"notice\"><p>The preview could not be made from this crate's metadata "
        f"({_e(type(exc).__name__)}). The crate itself is complete.</p></section>\n"))
