"""cratebridge-cwl-runner reads TOOL quickly (cwl-utils' parser) and gets cwltool's answer.

The quick reader and cwltool's loader must agree on everything the request crate
is made from: the documents and files TOOL refers to, its inputs, the process a
``$graph`` runs, the secondary files of its defaults; a requirement no step gets
is refused (exit 33) wherever it sits; a document the parser does not take goes
to cwltool, whose words the user reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cratebridge.errors import UnsupportedCrate
from cratebridge_cwl.runner_crate import write_request
from cratebridge_cwl.runner_read import (
    LoadedTool,
    UnsupportedRequirement,
    _read_quickly,
    _read_with_cwltool,
    _tool_uri,
    load_tool,
)
from cratebridge_cwl.runner_tool import load_job

TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
$namespaces: {edam: "http://edamontology.org/"}
$schemas: [formats.owl]
requirements:
  - $import: types.yml
  - class: InlineJavascriptRequirement
inputs:
  reads: {type: File, secondaryFiles: [.idx, ^.meta]}
  kind: types.yml#Kind
  script:
    type: File
    default:
      class: File
      location: data/script.sh
      secondaryFiles: [{class: File, location: data/script.sh.sig}]
  folder:
    type: Directory
    default: {class: Directory, location: data/folder}
  note:
    type: string
    default: {$include: note.txt}
outputs: []
baseCommand: 'true'
"""

WORKFLOW = """\
cwlVersion: v1.2
$graph:
  - id: main
    class: Workflow
    inputs: {reads: File, kind: Any}
    outputs: []
    steps:
      one:
        run: tools/tool.cwl
        in: {reads: reads, kind: kind}
        out: []
      two:
        run: '#echo'
        in: {}
        out: []
  - id: echo
    class: CommandLineTool
    inputs: []
    outputs: []
    baseCommand: echo
"""


def _layout(root: Path) -> Path:
    tools = root / "tools"
    (tools / "data" / "folder").mkdir(parents=True)
    (tools / "tool.cwl").write_text(TOOL)
    (tools / "types.yml").write_text(
        "class: SchemaDefRequirement\ntypes:\n  - name: Kind\n    type: enum\n"
        "    symbols: [a, b]\n")
    (tools / "formats.owl").write_text("<rdf/>\n")
    (tools / "note.txt").write_text("a note\n")
    for name in ("script.sh", "script.sh.sig", "unrelated.txt", "folder/inside.txt"):
        (tools / "data" / name).write_text(name)
    data = root / "job"
    data.mkdir()
    for name in ("r.dat", "r.dat.idx", "r.meta", "r.other"):
        (data / name).write_text(name)
    (root / "job.yml").write_text("reads: {class: File, path: job/r.dat}\nkind: a\n")
    (root / "wf.cwl").write_text(WORKFLOW)
    return root


def _both(tool: Path) -> tuple[LoadedTool, LoadedTool]:
    uri = _tool_uri(str(tool))
    return _read_quickly(uri, str(tool)), _read_with_cwltool(uri, str(tool))


def _crate_files(tool: LoadedTool, job: Path | None, dest: Path) -> list[str]:
    written = write_request(tool, load_job(str(job) if job else None, tool), dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                   if p.name != "ro-crate-metadata.json")
    return [*files, json.dumps(written.inputs)]


@pytest.mark.parametrize("name", ["tools/tool.cwl", "wf.cwl", "wf.cwl#main"])
def test_the_quick_reader_agrees_with_cwltool(tmp_path: Path, name: str) -> None:
    root = _layout(tmp_path / "src")
    quick, full = _both(root / name)
    assert (quick.main, quick.fragment, quick.documents, quick.namespaces) == \
        (full.main, full.fragment, full.documents, full.namespaces)
    assert sorted(quick.inputs) == sorted(full.inputs)
    assert sorted(quick.schema_defs) == sorted(full.schema_defs)
    files = _crate_files(quick, root / "job.yml", tmp_path / "quick")
    assert files == _crate_files(full, root / "job.yml", tmp_path / "full")
    if name == "tools/tool.cwl":  # what each kind of reference brings, and nothing else
        assert {"workflow/types.yml", "workflow/formats.owl", "workflow/note.txt",
                "workflow/data/script.sh", "workflow/data/script.sh.sig",
                "workflow/data/folder/inside.txt", "inputs/r.dat", "inputs/r.dat.idx",
                "inputs/r.meta"} <= set(files)
        assert not any(f.endswith(("unrelated.txt", "r.other")) for f in files)
    if name.startswith("wf.cwl"):
        assert root / "tools" / "tool.cwl" in quick.documents
        assert "workflow/tools/data/script.sh" in files  # a file of a tool the step runs


@pytest.mark.parametrize("where, requirement", [
    ("the step's tool, in its own file", "tool"),
    ("an imported requirement", "import"),
    ("the step itself, as a map", "step"),
])
def test_an_unsupported_requirement_is_found_anywhere(tmp_path: Path, where: str,
                                                      requirement: str) -> None:
    build = "DockerRequirement: {dockerFile: 'FROM scratch', dockerImageId: x}"
    tool_reqs = f"requirements:\n  {build}\n" if requirement == "tool" else ""
    if requirement == "import":
        (tmp_path / "req.yml").write_text("class: NetworkAccess\nnetworkAccess: true\n")
        tool_reqs = "requirements:\n  - $import: req.yml\n"
    step_reqs = f"    requirements:\n      {build}\n" if requirement == "step" else ""
    (tmp_path / "tool.cwl").write_text(
        "cwlVersion: v1.2\nclass: CommandLineTool\n" + tool_reqs
        + "inputs: []\noutputs: []\nbaseCommand: 'true'\n")
    wf = tmp_path / "wf.cwl"
    wf.write_text("cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\n"
                  "steps:\n  s:\n    run: tool.cwl\n    in: []\n    out: []\n" + step_reqs)
    uri = _tool_uri(str(wf))
    with pytest.raises(UnsupportedRequirement) as quick:
        _read_quickly(uri, str(wf))
    with pytest.raises(UnsupportedRequirement):
        _read_with_cwltool(uri, str(wf))
    assert quick.value.exit_code == 33, where


def test_a_document_the_parser_refuses_gets_cwltools_answer(tmp_path: Path) -> None:
    tool = tmp_path / "tool.cwl"  # secondaryFiles: not for the plain reader
    tool.write_text("cwlVersion: v1.2\nclass: CommandLineTool\n"
                    "inputs: {f: {type: File, secondaryFiles: [.idx]}}\noutputs: []\n"
                    "baseCommand: 'true'\nnot_a_field: 1\n")
    with pytest.raises(Exception):  # noqa: B017 - the generated parser's own error
        _read_quickly(_tool_uri(str(tool)), str(tool))
    with pytest.raises(UnsupportedCrate, match=r"(?s)does not load.*not_a_field"):
        load_tool(str(tool))


def test_reading_tool_and_job_leaves_cwltool_unloaded(tmp_path: Path) -> None:
    """The front end reads without cwltool's loader (its import and schema cost a
    second or more a run); the run's own cwltool, in the room, reads it for real."""
    root = _layout(tmp_path)
    code = ("import sys\nfrom cratebridge_cwl.runner_read import load_tool\n"
            "from cratebridge_cwl.runner_tool import load_job, declared_secondary_files\n"
            f"t = load_tool({str(root / 'tools' / 'tool.cwl')!r})\n"
            f"j = load_job({str(root / 'job.yml')!r}, t)\n"
            "assert declared_secondary_files(t, j).paths\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cwltool'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout
