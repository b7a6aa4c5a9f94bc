"""``cratebridge-cwl-runner``: the standard ``cwl-runner`` command line, run as a request crate.

``cratebridge-cwl-runner [--outdir DIR] [--quiet] TOOL [JOB]`` wraps TOOL (and every
document it references) and JOB (and every file it names) into a Workflow RO-Crate
request, runs it through the normal pipeline (intake, plan, engine, provenance), moves
the outputs into ``--outdir`` and prints the output object as JSON on stdout. The
result crate is kept at ``<outdir>/.cratebridge-result/``. Exit codes follow the CWL
specification: 0 success, 33 an unsupported requirement, anything else a failure.
See ``docs/cwl-runner.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urldefrag, urlsplit

from cratebridge.config import Config, load_config
from cratebridge.engines.interface import ProgressEvent
from cratebridge.engines.record import FileRecord, RunStatus
from cratebridge.errors import CratebridgeError, UnsupportedCrate, UsageError
from cratebridge_cwl.workflow import JOB_REQUIREMENTS, JSON_ENCODING

__all__ = ["EXIT_UNSUPPORTED", "RESULT_FOLDER", "UnsupportedRequirement", "main",
           "write_request"]

#: The CWL exit code for "this runner does not support a requirement of the tool".
EXIT_UNSUPPORTED = 33
#: Where the result crate is kept inside ``--outdir``.
RESULT_FOLDER = ".cratebridge-result"

CWL_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#cwl"
WORKFLOW_RO_CRATE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
RO_CRATE_1_2 = "https://w3id.org/ro/crate/1.2"
POTENTIAL = "http://schema.org/PotentialActionStatus"
_REQUIREMENTS_IRI = "https://w3id.org/cwl/cwl#requirements"
_ENGINE_EXIT = re.compile(r"^\S+ exited (\d+)")


class UnsupportedRequirement(UnsupportedCrate):
    """The tool needs something cratebridge never gives a step (exit 33, as CWL says)."""

    exit_code = EXIT_UNSUPPORTED


# -- the tool ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedTool:
    """TOOL as cwltool reads it: its main file, the files it references, its inputs."""

    main: Path
    fragment: str
    documents: tuple[Path, ...]
    inputs: tuple[str, ...]
    namespaces: dict[str, str]


def load_tool(tool: str) -> LoadedTool:
    """Load TOOL offline with cwltool; list every file it references.

    Raises :class:`UnsupportedRequirement` for what cratebridge cannot give a step
    (a network, an image built or loaded at run time) and :class:`UnsupportedCrate`
    for a document that does not load.
    """
    from cwltool.context import LoadingContext
    from cwltool.errors import UnsupportedRequirement as CwltoolUnsupported
    from cwltool.load_tool import fetch_document, make_tool, resolve_and_validate_document
    from cwltool.main import find_deps

    from cratebridge_cwl.offline import OfflineFetcher

    logging.getLogger("cwltool").setLevel(logging.ERROR)
    logging.getLogger("salad").setLevel(logging.ERROR)
    uri = _tool_uri(tool)
    def fresh() -> LoadingContext:
        return LoadingContext({"fetcher_constructor": OfflineFetcher,
                               "disable_js_validation": True})

    try:
        loading, document, uri = fetch_document(uri, fresh())
        loading, uri = resolve_and_validate_document(loading, document, uri)
        process = make_tool(uri, loading)
        # dependencies are scanned on a loader of their own: scanning fills its cache
        scan, raw, _ = fetch_document(urldefrag(uri)[0], fresh())
        assert scan.loader is not None
        deps = find_deps(raw, scan.loader, urldefrag(uri)[0])
    except CwltoolUnsupported as exc:
        raise UnsupportedRequirement(str(exc), where=tool) from None
    except CratebridgeError:
        raise
    except Exception as exc:  # schema-salad and cwltool raise many kinds for a bad document
        raise UnsupportedCrate(f"the CWL document does not load: {type(exc).__name__}: {exc}",
                               where=tool) from None
    _check_supported(process, tool)
    main, fragment = urldefrag(uri)
    documents = sorted({p for p in _paths_in(deps) if p.exists()})
    return LoadedTool(
        main=_local_path(main), fragment=fragment, documents=tuple(documents),
        inputs=tuple(i["id"].split("#")[-1].split("/")[-1] for i in process.tool["inputs"]),
        namespaces=dict(cast(Mapping[str, str], process.metadata.get("$namespaces") or {})),
    )


def _tool_uri(tool: str) -> str:
    path, fragment = [*tool.split("#", 1), ""][:2]
    if urlsplit(path).scheme not in ("", "file"):
        raise UsageError("cratebridge runs offline: give TOOL as a local file", where=tool)
    local = _local_path(path) if path.startswith("file:") else Path(path).absolute()
    if not local.is_file():
        raise UsageError("no such CWL file", where=tool)
    return local.as_uri() + (f"#{fragment}" if fragment else "")


def _local_path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path)) if uri.startswith("file:") else Path(uri)


def _paths_in(value: Any) -> Iterator[Path]:
    """The local paths of every File and Directory (and their secondary files) in ``value``."""
    if isinstance(value, list):
        for item in value:
            yield from _paths_in(item)
    elif isinstance(value, dict):
        location = value.get("location")
        if value.get("class") in ("File", "Directory") and isinstance(location, str) \
                and location.startswith("file:"):
            yield _local_path(urldefrag(location)[0])
        for key in ("secondaryFiles", "listing"):
            yield from _paths_in(value.get(key))


def _processes(process: Any) -> Iterator[Any]:
    yield process
    for step in getattr(process, "steps", []) or []:
        yield from _processes(step.embedded_tool)


def _check_supported(process: Any, where: str) -> None:
    """Refuse, with exit 33, what the sandbox never allows a step."""
    for proc in _processes(process):
        for req in [*proc.requirements, *proc.hints]:
            cls = str(req.get("class", "")).split("#")[-1]
            in_requirements = req in proc.requirements
            if cls == "DockerRequirement" and in_requirements:
                for key in ("dockerLoad", "dockerFile", "dockerImport"):
                    if key in req:
                        raise UnsupportedRequirement(
                            f"DockerRequirement {key}: cratebridge runs only images already "
                            "present and approved, never built or loaded during a run",
                            where=str(proc.tool.get("id", where)))
            if cls == "NetworkAccess" and in_requirements and req.get("networkAccess") is True:
                raise UnsupportedRequirement(
                    "NetworkAccess: every cratebridge step runs with no network",
                    where=str(proc.tool.get("id", where)))


# -- the job -------------------------------------------------------------------------------


def load_job(job: str | None, tool: LoadedTool) -> dict[str, Any]:
    """JOB as cwltool reads it, limited to the tool's inputs; file locations are file URIs."""
    if job is None:
        return {}
    from cwltool.main import load_job_order
    from schema_salad.ref_resolver import Loader

    from cratebridge_cwl.offline import OfflineFetcher

    if not Path(job).is_file():
        raise UsageError("no such job file", where=job)
    args = argparse.Namespace(job_order=[str(Path(job).absolute())], basedir=None)
    try:
        loaded, _, _ = load_job_order(args, sys.stdin, OfflineFetcher, [],
                                      tool.main.as_uri())
    except Exception as exc:  # a job that does not parse
        raise UsageError(f"the job does not load: {type(exc).__name__}: {exc}",
                         where=job) from None
    job_order: dict[str, Any] = dict(cast(Mapping[str, Any], loaded or {}))
    namespaces = {**dict(job_order.get("$namespaces") or {}), **tool.namespaces}
    expand = Loader(namespaces).expand_url
    values = {k: _plain(v) for k, v in job_order.items() if k in tool.inputs}
    if _REQUIREMENTS_IRI in job_order:  # cwltool applies these to the tool; so do we
        values[JOB_REQUIREMENTS] = _plain(job_order[_REQUIREMENTS_IRI])
    for value in values.values():
        _normalise(value, lambda fmt: expand(fmt, ""))
    return values


def _plain(value: Any) -> Any:
    """ruamel's maps and sequences as plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _normalise(value: Any, expand: Callable[[str], str]) -> None:
    """``path`` becomes ``location`` and formats become IRIs, as cwltool does on load."""
    for item in _file_objects(value):
        if "location" not in item and "path" in item:
            item["location"] = item.pop("path")
        if isinstance(item.get("format"), str):
            item["format"] = expand(item["format"])


def _file_objects(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            yield from _file_objects(item)
    elif isinstance(value, dict):
        if value.get("class") in ("File", "Directory"):
            yield value
        for item in value.values():
            yield from _file_objects(item)


# -- the request crate ---------------------------------------------------------------------


class _Copier:
    """Copies host files into one folder of the crate, keeping their relative layout."""

    def __init__(self, crate: Path, folder: str, sources: Iterable[Path], *,
                 siblings: Callable[[Path], bool]) -> None:
        sources = list(sources)
        self.siblings = siblings
        tops = [p if p.is_dir() else p.parent for p in sources]
        self.base = Path(os.path.commonpath([str(t) for t in tops])) if tops else Path("/")
        if any(p.is_dir() and p == self.base for p in sources):
            self.base = self.base.parent
        self.crate = crate
        self.folder = folder

    def location(self, source: Path) -> str:
        return f"{self.folder}/{source.relative_to(self.base).as_posix()}"

    def copy(self, source: Path) -> str:
        """Copy a file (with the siblings its secondary files may be) or a folder."""
        location = self.location(source)
        target = self.crate / location
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=False, dirs_exist_ok=True)
            return location
        shutil.copyfile(source, target)
        if not self.siblings(source):
            return location
        # cwltool finds a File's secondaryFiles beside it by pattern (.bai, ^.bai)
        stem = source.name.split(".", 1)[0] or source.name
        for sibling in source.parent.iterdir():
            if sibling.is_file() and sibling.name.startswith(stem) and sibling != source:
                shutil.copyfile(sibling, target.parent / sibling.name)
        return location


@dataclass(frozen=True)
class WrittenRequest:
    folder: Path
    main: str
    inputs: dict[str, Any]


def write_request(tool: LoadedTool, job: dict[str, Any], dest: Path) -> WrittenRequest:
    """Write TOOL and JOB as a Workflow RO-Crate request folder at ``dest``.

    The tool's documents go under ``workflow/`` and the job's files under
    ``inputs/``, each keeping its layout relative to the others. A top-level
    File or Directory given by location alone becomes a ``File``/``Dataset``
    input; every other value a ``PropertyValue`` holding the CWL value as JSON
    (``encodingFormat`` application/json) whose locations are crate paths.
    """
    dest.mkdir(parents=True)
    workflow = _Copier(dest, "workflow", [tool.main, *tool.documents],
                       siblings=lambda path: path.suffix != ".cwl")  # data: default Files
    for document in dict.fromkeys([tool.main, *tool.documents]):
        workflow.copy(document)
    main = workflow.location(tool.main)
    if tool.fragment and tool.fragment != "main":
        _name_main(dest / main, tool.fragment)
    sources = [p for value in job.values() for p in _paths_in_job(value)]
    inputs = _Copier(dest, "inputs", sources, siblings=lambda path: True)
    copied = {p: inputs.copy(p) for p in dict.fromkeys(sources)}
    crate_job = {name: _relocated(value, copied) for name, value in job.items()}
    metadata = _metadata(dest, main, crate_job)
    (dest / "ro-crate-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return WrittenRequest(dest, main, crate_job)


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
    for item in _file_objects(value):
        location = item.get("location")
        if isinstance(location, str) and location.startswith("file:"):
            path = _local_path(location)
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
        out["location"] = copied[_local_path(location)]
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
                             else "Dataset", "name": Path(value["location"]).name,
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
    described = {main} | {e["@id"] for e in entities}
    parts = [main, *sorted(_data_entities(crate, described, entities))]
    root = {
        "@id": "./", "@type": "Dataset",
        "name": f"cwl-runner request: {Path(main).name}",
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
         "name": Path(main).name, "programmingLanguage": _ref(CWL_LANGUAGE)},
        {"@id": CWL_LANGUAGE, "@type": "ComputerLanguage", "name": "Common Workflow Language",
         "alternateName": "CWL", "url": _ref("https://www.commonwl.org/")},
        {"@id": "https://spdx.org/licenses/CC0-1.0", "@type": "CreativeWork", "name": "CC0-1.0"},
        {"@id": "#cwl-runner-request", "@type": "CreateAction",
         "name": f"Run {Path(main).name}", "actionStatus": POTENTIAL,
         "instrument": _ref(main), "object": [_ref(o) for o in objects]},
    ]
    return {"@context": f"{RO_CRATE_1_2}/context", "@graph": fixed + entities}


def _data_entities(crate: Path, described: set[str],
                   entities: list[dict[str, Any]]) -> Iterator[str]:
    """Describe every other file of the crate (tool documents, input files and folders)."""
    for path in sorted(crate.rglob("*")):
        rel = path.relative_to(crate).as_posix()
        entity_id = rel + "/" if path.is_dir() else rel
        if rel == "ro-crate-metadata.json" or "/" not in rel:
            continue
        if entity_id not in described:
            entities.append({"@id": entity_id, "@type": "Dataset" if path.is_dir() else "File",
                             "name": path.name})
            described.add(entity_id)
        yield entity_id


# -- running it ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerOptions:
    tool: str
    job: str | None
    outdir: Path
    quiet: bool
    engine: str | None
    config: Path | None
    default_container: str | None
    keep_run: bool


def _config(options: RunnerOptions, runs_dir: Path) -> Config:
    cfg = load_config(options.config)
    settings = {k: dict(v) for k, v in cfg.engine_settings.items()}
    if options.default_container:
        for engine in ("cwltool", "toil"):
            settings.setdefault(engine, {})["default_container"] = options.default_container
    return dataclasses.replace(cfg, runs_dir=runs_dir, keep_runs=True,
                               engine_settings=settings)


def run(options: RunnerOptions) -> dict[str, Any]:
    """Run TOOL on JOB through cratebridge; return the output object (files in outdir).

    Raises :class:`~cratebridge.errors.CratebridgeError` subclasses, and
    :class:`~cratebridge.errors.WorkflowFailed` when the run failed (its exit
    code is 33 when the engine found an unsupported requirement).
    """
    from cratebridge.errors import WorkflowFailed
    from cratebridge.pipeline import run as run_crate

    tool = load_tool(options.tool)
    job = load_job(options.job, tool)
    outdir = options.outdir.absolute()
    outdir.mkdir(parents=True, exist_ok=True)
    result = outdir / RESULT_FOLDER
    if result.exists():
        shutil.rmtree(result)
    scratch = Path(tempfile.mkdtemp(prefix="cratebridge-cwl-runner-"))
    try:
        request = write_request(tool, job, scratch / "request")
        cfg = _config(options, scratch / "runs")
        outcome = run_crate(request.folder, result, engine=options.engine, config=cfg,
                            progress=None if options.quiet else _progress)
        if outcome.status is not RunStatus.COMPLETED:
            error = WorkflowFailed(outcome.record.error or "the workflow failed",
                                   result_path=str(outcome.result))
            match = _ENGINE_EXIT.match(outcome.record.error or "")
            if match and int(match.group(1)) == EXIT_UNSUPPORTED:
                error.exit_code = EXIT_UNSUPPORTED
            raise error
        output = _output_object(outcome)
        _check_recorded(output, outcome.record.outputs)
        return _deliver(output, outcome.run_dir / "outputs", outdir)
    finally:
        if options.keep_run:
            print(f"cratebridge-cwl-runner: request crate and run folder kept in {scratch}",
                  file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _progress(event: ProgressEvent) -> None:
    print(f"[step {event.step}] {event.kind}" + (f": {event.detail}" if event.detail else ""),
          file=sys.stderr)


def _output_object(outcome: Any) -> dict[str, Any]:
    for log in outcome.record.logs:
        if log.name.endswith("output object"):
            text = log.path.read_text() or "{}"
            data = json.loads(text)
            if isinstance(data, dict):
                return data
    raise CratebridgeError("the engine wrote no output object", where=str(outcome.run_dir))


def _check_recorded(output: dict[str, Any], recorded: Iterable[Any]) -> None:
    """Every output file must be in the run record, so in the result crate: nothing is lost."""
    kept = [Path(r.path).resolve() for r in recorded if isinstance(r, FileRecord)]
    for path in _paths_in([output[k] for k in output]):
        real = path.resolve()
        if not any(real == k or k in real.parents for k in kept):
            raise CratebridgeError(f"output {path} is missing from the run record and so "
                                   "from the result crate", where=str(path))


def _deliver(output: dict[str, Any], produced: Path, outdir: Path) -> dict[str, Any]:
    """Move the outputs into ``outdir`` and point the output object at them."""
    if produced.is_dir():
        for entry in sorted(produced.iterdir()):
            target = outdir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            shutil.move(str(entry), str(target))
    old, new = str(produced.resolve()), str(outdir.resolve())

    def moved(value: Any) -> Any:
        if isinstance(value, list):
            return [moved(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: moved(v) for k, v in value.items()}
        if value.get("class") in ("File", "Directory"):
            for key in ("location", "path"):
                text = value.get(key)
                if isinstance(text, str):
                    out[key] = _moved_path(text, old, new)
        return out

    return {k: moved(v) for k, v in output.items()}


def _moved_path(text: str, old: str, new: str) -> str:
    uri = text.startswith("file://")
    path = _local_path(text) if uri else Path(text)
    try:
        rel = path.resolve().relative_to(old)
    except ValueError:
        return text
    target = Path(new) / rel
    return target.as_uri() if uri else str(target)


# -- the command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cratebridge-cwl-runner",
        description="Run a CWL tool or workflow as a cratebridge request crate; print the "
                    "output object. The result crate is kept in OUTDIR/" + RESULT_FOLDER)
    parser.add_argument("--outdir", type=Path, default=Path.cwd(),
                        help="where the outputs go (default: the current folder)")
    parser.add_argument("--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("--engine", choices=("cwltool", "toil"), default=None,
                        help="the CWL engine (default: the configuration's, else cwltool)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the operator's cratebridge.toml (default: $CRATEBRIDGE_CONFIG)")
    parser.add_argument("--default-container", default=None, metavar="IMAGE",
                        help="local image for tools with no DockerRequirement")
    parser.add_argument("--keep-run", action="store_true",
                        help="keep the request crate and run folder (path printed on stderr)")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("tool", metavar="TOOL", help="the CWL document (a fragment may follow #)")
    parser.add_argument("job", metavar="JOB", nargs="?", default=None,
                        help="the input object (YAML or JSON)")
    return parser


def _version() -> str:
    try:
        return "cratebridge-cwl-runner " + importlib.metadata.version("cratebridge-cwl")
    except importlib.metadata.PackageNotFoundError:
        return "cratebridge-cwl-runner (not installed)"


def main(argv: list[str] | None = None) -> int:
    """The console script: errors become messages on stderr and exit codes, here only."""
    args = _parser().parse_args(argv)
    options = RunnerOptions(
        tool=args.tool, job=args.job, outdir=args.outdir, quiet=args.quiet,
        engine=args.engine, config=args.config, default_container=args.default_container,
        keep_run=args.keep_run)
    try:
        output = run(options)
    except CratebridgeError as exc:
        print(f"cratebridge-cwl-runner: {exc}", file=sys.stderr)
        result_path = getattr(exc, "result_path", None)
        if result_path:
            print(f"cratebridge-cwl-runner: result crate at {result_path}", file=sys.stderr)
        return exc.exit_code
    json.dump(output, sys.stdout, indent=4)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
