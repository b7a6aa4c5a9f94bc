"""The request crate ``cratebridge-cwl-runner`` writes.

The tool with every document it references, the job and every file it names.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cratebridge.errors import UnsupportedCrate, UsageError
from cratebridge_cwl.runner_read import LoadedTool, local_path, short_name
from cratebridge_cwl.runner_tool import (
    CWL_LANGUAGE,
    POTENTIAL,
    RO_CRATE_1_2,
    WORKFLOW_RO_CRATE,
    declared_secondary_files,
    file_objects,
)
from cratebridge_cwl.workflow import JSON_ENCODING

# -- the request crate ---------------------------------------------------------------------


class _Copier:
    """Copies host files into one folder of the crate, keeping their relative layout."""

    def __init__(self, crate: Path, folder: str, sources: Iterable[Path]) -> None:
        sources = list(sources)
        tops = [p if p.is_dir() else p.parent for p in sources]
        self.base = Path(os.path.commonpath([str(t) for t in tops])) if tops else Path("/")
        if any(p.is_dir() and p == self.base for p in sources):
            self.base = self.base.parent
        self.crate = crate
        self.folder = folder

    def location(self, source: Path) -> str:
        return f"{self.folder}/{source.relative_to(self.base).as_posix()}"

    def copy(self, source: Path) -> str:
        """Copy a file or a folder."""
        location = self.location(source)
        target = self.crate / location
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=False, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
        return location


@dataclass(frozen=True)
class WrittenRequest:
    """The request crate written: its folder, its main workflow (crate path), the job as
    bound in it, and the secondary-file patterns left to the engine (see
    :func:`declared_secondary_files`)."""

    folder: Path
    main: str
    inputs: dict[str, Any]
    not_evaluated: tuple[str, ...] = ()


def write_request(tool: LoadedTool, job: dict[str, Any], dest: Path) -> WrittenRequest:
    """Write TOOL and JOB as a Workflow RO-Crate request folder at ``dest``.

    The tool's documents go under ``workflow/`` and the job's files under
    ``inputs/``, each keeping its layout relative to the others. Beside a file
    go the secondary files the tool declares for it (:func:`declared_secondary_files`;
    for the job's files and for the tool's default files), and nothing else.
    A top-level File or Directory given by location alone becomes a
    ``File``/``Dataset`` input; every other value a ``PropertyValue`` holding
    the CWL value as JSON (``encodingFormat`` application/json) whose
    locations are crate paths.
    """
    dest.mkdir(parents=True)
    defaults = {short_name(str(p.get("id", ""))): p["default"] for p in tool.parameters
                if "default" in p}
    default_extra = declared_secondary_files(
        tool, {k: v for k, v in defaults.items() if k not in job})
    documents = [tool.main, *tool.documents, *default_extra.paths]
    workflow = _Copier(dest, "workflow", documents)
    for document in dict.fromkeys(documents):
        workflow.copy(document)
    main = workflow.location(tool.main)
    if tool.fragment and tool.fragment != "main":
        _name_main(dest / main, tool.fragment)
    sources = [p for value in job.values() for p in _paths_in_job(value)]
    job_extra = declared_secondary_files(tool, job)
    inputs = _Copier(dest, "inputs", [*sources, *job_extra.paths])
    copied = {p: inputs.copy(p) for p in dict.fromkeys(sources)}
    for extra in job_extra.paths:
        if extra not in copied:
            inputs.copy(extra)
    crate_job = {name: _relocated(value, copied) for name, value in job.items()}
    metadata = _metadata(dest, main, crate_job)
    (dest / "ro-crate-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return WrittenRequest(dest, main, crate_job,
                          (*default_extra.not_evaluated, *job_extra.not_evaluated))


def _name_main(document: Path, fragment: str) -> None:
    """Make process ``#fragment`` of a ``$graph`` the one cwltool runs: call it ``main``.

    The request crate names a file as its workflow, and cwltool runs the ``#main``
    of a ``$graph`` file; the copy in the crate is changed, the original never.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(document.read_text())
    graph = data.get("$graph") if isinstance(data, dict) else None
    if graph is None:
        return  # one process: the fragment is its own id, and cwltool runs it
    ids = [str(p.get("id", "")).lstrip("#") for p in graph or [] if isinstance(p, dict)]
    if fragment not in ids:
        raise UsageError(f"no process #{fragment} in the $graph", where=str(document))
    if "main" in ids:
        raise UnsupportedCrate(f"#{fragment} cannot be run from a $graph that also has a "
                               "#main: name the file's #main, or split the file",
                               where=str(document))
    for process in graph or []:
        if isinstance(process, dict) and str(process.get("id", "")).lstrip("#") == fragment:
            process["id"] = "main"
    with document.open("w") as out:
        yaml.dump(data, out)


def _paths_in_job(value: Any) -> Iterator[Path]:
    for item in file_objects(value):
        location = item.get("location")
        if isinstance(location, str) and location.startswith("file:"):
            path = local_path(location)
            if not path.exists():
                raise UsageError(f"the job names {item['class']} {path}, which does not exist",
                                 where=str(path))
            yield path
        elif isinstance(location, str) and not location.startswith("_:"):
            raise UsageError("cratebridge runs offline: job inputs must be local files",
                             where=location)


def _relocated(value: Any, copied: dict[Path, str]) -> Any:
    if isinstance(value, list):
        return [_relocated(v, copied) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _relocated(v, copied) for k, v in value.items()}
    location = value.get("location")
    if value.get("class") in ("File", "Directory") and isinstance(location, str) \
            and location.startswith("file:"):
        out["location"] = quote(copied[local_path(location)])  # a relative URI
    return out


def _is_plain_data(value: Any) -> bool:
    return isinstance(value, dict) and value.get("class") in ("File", "Directory") \
        and set(value) <= {"class", "location"} and not value["location"].startswith("_:")


def _ref(entity_id: str) -> dict[str, str]:
    return {"@id": entity_id}


def _metadata(crate: Path, main: str, job: dict[str, Any]) -> dict[str, Any]:
    entities: list[dict[str, Any]] = []
    objects: list[str] = []
    for name, value in job.items():
        formal = f"#param-{name}"
        if _is_plain_data(value):
            entity_id = value["location"] + ("/" if value["class"] == "Directory" else "")
            entities.append({"@id": entity_id, "@type": "File" if value["class"] == "File"
                             else "Dataset", "name": Path(unquote(value["location"])).name,
                             "exampleOfWork": _ref(formal)})
            kind = "File" if value["class"] == "File" else "Dataset"
        else:
            entity_id = f"#input-{name}"
            entities.append({"@id": entity_id, "@type": "PropertyValue", "name": name,
                             "value": json.dumps(value), "encodingFormat": JSON_ENCODING,
                             "exampleOfWork": _ref(formal)})
            kind = "PropertyValue"
        entities.append({"@id": formal, "@type": "FormalParameter", "name": name,
                         "additionalType": kind})
        objects.append(entity_id)
    name = Path(main).name
    main = quote(main)
    described = {main} | {e["@id"] for e in entities}
    parts = [main, *sorted(_data_entities(crate, described, entities))]
    root = {
        "@id": "./", "@type": "Dataset",
        "name": f"cwl-runner request: {name}",
        "description": "TOOL and JOB given to cratebridge-cwl-runner, as a request crate",
        "datePublished": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "license": _ref("https://spdx.org/licenses/CC0-1.0"),
        "conformsTo": _ref(WORKFLOW_RO_CRATE),
        "mainEntity": _ref(main),
        "mentions": _ref("#cwl-runner-request"),
        "hasPart": [_ref(p) for p in dict.fromkeys(parts)],
    }
    fixed = [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": _ref("./"),
         "conformsTo": _ref(RO_CRATE_1_2)},
        root,
        {"@id": main, "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
         "name": name, "programmingLanguage": _ref(CWL_LANGUAGE)},
        {"@id": CWL_LANGUAGE, "@type": "ComputerLanguage", "name": "Common Workflow Language",
         "alternateName": "CWL", "url": _ref("https://www.commonwl.org/")},
        {"@id": "https://spdx.org/licenses/CC0-1.0", "@type": "CreativeWork", "name": "CC0-1.0"},
        {"@id": "#cwl-runner-request", "@type": "CreateAction",
         "name": f"Run {name}", "actionStatus": POTENTIAL,
         "instrument": _ref(main), "object": [_ref(o) for o in objects]},
    ]
    return {"@context": f"{RO_CRATE_1_2}/context", "@graph": fixed + entities}


def _data_entities(crate: Path, described: set[str],
                   entities: list[dict[str, Any]]) -> Iterator[str]:
    """Describe every other file of the crate (tool documents, input files and folders)."""
    for path in sorted(crate.rglob("*")):
        rel = path.relative_to(crate).as_posix()
        entity_id = quote(rel) + ("/" if path.is_dir() else "")
        if rel == "ro-crate-metadata.json" or "/" not in rel:
            continue
        if entity_id not in described:
            entities.append({"@id": entity_id, "@type": "Dataset" if path.is_dir() else "File",
                             "name": path.name})
            described.add(entity_id)
        yield entity_id
