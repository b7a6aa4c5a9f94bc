"""A light static scan of a Nextflow workflow: its processes, their containers, plugins, params.

This is not a Nextflow parser. It reads ``process NAME { ... }`` blocks in the
workflow's ``.nf`` files and ``process.container`` / ``withName:`` settings in
its ``nextflow.config``, so ``plan`` can list the images a run needs before
anything runs; the sandbox shim still checks every image at run time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProcessInfo", "WorkflowScan", "block_text", "scan_workflow"]

_PROCESS = re.compile(r"^\s*process\s+([A-Za-z_]\w*)\s*\{", re.MULTILINE)
_CONTAINER = re.compile(r"^\s*container\s*[=(]?\s*(.+?)\s*\)?\s*$", re.MULTILINE)
_QUOTED = re.compile(r"""(['"])((?:(?!\1).)+)\1""")
_WITH_NAME = re.compile(r"""withName\s*:\s*(['"]?)([^'"{\s]+)\1\s*\{""")
_PLUGIN_ID = re.compile(r"""\bid\s*\(?\s*['"]([^'"]+)['"]""")
_PARAM = re.compile(r"\bparams\.([A-Za-z_]\w*)")
_SKIP_DIRS = {"work", ".nextflow", ".git", "node_modules"}


@dataclass(frozen=True)
class ProcessInfo:
    """A process as written: where it is defined and the image it asks for."""

    name: str
    file: Path
    container: str | None
    dynamic: bool = False


@dataclass(frozen=True)
class WorkflowScan:
    """What the static scan found; ``notes`` say where it had to guess."""

    processes: dict[str, ProcessInfo]
    default_container: str | None
    config_containers: dict[str, str]
    plugins: tuple[str, ...]
    params: frozenset[str]
    schema_types: dict[str, str]
    notes: tuple[str, ...] = field(default=())

    def image_of(self, process: str) -> str | None:
        """A process's image: config ``withName``, its directive, or ``process.container``."""
        for pattern, image in self.config_containers.items():
            if _selector_matches(pattern, process):
                return image
        info = self.processes.get(process)
        if info is not None and info.container:
            return info.container
        return self.default_container


def _selector_matches(pattern: str, process: str) -> bool:
    negate = pattern.startswith("!")
    regex = pattern.lstrip("!")
    matched = re.fullmatch(regex.replace("*", ".*") if "*" in regex and "." not in regex
                           else regex, process) is not None
    return matched != negate


def block_text(text: str, open_at: int) -> str:
    """The text inside the brace at ``open_at`` (strings and comments skipped when counting)."""
    depth, i = 0, open_at
    while i < len(text):
        if text.startswith(('"""', "'''"), i):
            end = text.find(text[i:i + 3], i + 3)
            i = len(text) if end < 0 else end + 3
            continue
        char = text[i]
        if char in "'\"":
            end = i + 1
            while end < len(text) and text[end] != char and text[end] != "\n":
                end += 2 if text[end] == "\\" else 1
            i = end + 1
            continue
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
        i += 1
    return text[open_at + 1:]


def _container(body: str) -> tuple[str | None, bool]:
    """The image of a ``container`` directive; for an expression, its last image-like string."""
    match = _CONTAINER.search(body)
    if match is None:
        return None, False
    expression = match.group(1).strip()
    quoted = _QUOTED.fullmatch(expression)
    if quoted and "$" not in quoted.group(2):
        return quoted.group(2), False
    inner = quoted.group(2) if quoted else expression
    candidates = [m.group(2) for m in _QUOTED.finditer(inner)
                  if "://" not in m.group(2) and re.fullmatch(r"[\w./:@-]+", m.group(2))
                  and ("/" in m.group(2) or ":" in m.group(2))]
    return (candidates[-1] if candidates else None), True


def _nf_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.nf")
                  if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))


def scan_workflow(root: Path, main: Path) -> WorkflowScan:
    """Scan the workflow folder ``root`` whose entry script is ``main``."""
    processes: dict[str, ProcessInfo] = {}
    params: set[str] = set()
    notes: list[str] = []
    files = _nf_files(root)
    if main not in files:
        files.insert(0, main)
    for path in files:
        text = path.read_text(errors="replace")
        params.update(_PARAM.findall(text))
        for match in _PROCESS.finditer(text):
            body = block_text(text, match.end() - 1)
            image, dynamic = _container(body)
            name = match.group(1)
            processes.setdefault(name, ProcessInfo(name, path, image, dynamic))
            if dynamic:
                notes.append(f"process {name}: container is an expression; the static scan "
                             f"assumed {image or 'no image'}")
    default: str | None = None
    by_selector: dict[str, str] = {}
    plugins: tuple[str, ...] = ()
    config = root / "nextflow.config"
    if config.is_file():
        config_text = config.read_text(errors="replace")
        default, by_selector, plugins, config_notes = _scan_config(config_text)
        params.update(_PARAM.findall(config_text))
        notes += config_notes
    return WorkflowScan(processes, default, by_selector, plugins, frozenset(params),
                        schema_types(root / "nextflow_schema.json"), tuple(notes))


def _scan_config(text: str) -> tuple[str | None, dict[str, str], tuple[str, ...], list[str]]:
    notes: list[str] = []
    default = None
    flat = re.search(r"""^\s*process\.container\s*=\s*(['"])([^'"]+)\1""", text, re.MULTILINE)
    if flat:
        default = flat.group(2)
    process_block = re.search(r"^\s*process\s*\{", text, re.MULTILINE)
    by_selector: dict[str, str] = {}
    if process_block:
        body = block_text(text, process_block.end() - 1)
        for match in _WITH_NAME.finditer(body):
            inner = block_text(body, match.end() - 1)
            image, _dynamic = _container(inner)
            if image:
                by_selector[match.group(2)] = image
            # withName blocks are removed so the process-wide container below is not confused
            body = body.replace(inner, "")
        top, _ = _container(body)
        default = top or default
    plugins: tuple[str, ...] = ()
    plugin_block = re.search(r"^\s*plugins\s*\{", text, re.MULTILINE)
    if plugin_block:
        plugins = tuple(_PLUGIN_ID.findall(block_text(text, plugin_block.end() - 1)))
    if re.search(r"^\s*includeConfig\b", text, re.MULTILINE):
        notes.append("nextflow.config uses includeConfig; the static scan did not follow it")
    if re.search(r"^\s*profiles\s*\{", text, re.MULTILINE):
        notes.append("nextflow.config defines profiles; cratebridge selects none")
    return default, by_selector, plugins, notes


def schema_types(path: Path) -> dict[str, str]:
    """Parameter name -> JSON schema type from an nf-core style ``nextflow_schema.json``."""
    if not path.is_file():
        return {}
    try:
        schema = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    types: dict[str, str] = {}
    groups = [schema]
    for key in ("definitions", "$defs"):
        section = schema.get(key)
        if isinstance(section, dict):
            groups += [g for g in section.values() if isinstance(g, dict)]
    for group in groups:
        properties = group.get("properties")
        if not isinstance(properties, dict):
            continue
        for name, spec in properties.items():
            if isinstance(spec, dict) and isinstance(spec.get("type"), str):
                types[name] = spec["type"]
    return types
