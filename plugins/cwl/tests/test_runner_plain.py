"""cratebridge-cwl-runner reads a plain TOOL and JOB as YAML alone, and agrees with cwltool.

The plain readers spare the runner schema-salad's import (about 0.15 s of every
test of the CWL suite); they take only what needs no CWL schema to read, decline
the rest (the parser or cwltool's loader reads it then), and give exactly what
the slower readers give. A document they take is still validated: by the run's
own cwltool, in the room, before anything runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_runner

from cratebridge_cwl.runner_read import (
    EXIT_UNSUPPORTED,
    _read_plainly,
    _read_with_cwltool,
    _tool_uri,
    load_tool,
)
from cratebridge_cwl.runner_tool import _read_job_plainly, _read_job_with_loader

STEP = """\
cwlVersion: v1.2
class: CommandLineTool
inputs:
  - id: '#text'
    type: string
  - id: data
    type: File
    default: {class: File, location: data/default.txt}
outputs: []
baseCommand: cat
"""

WORKFLOW = """\
cwlVersion: v1.2
$namespaces: {edam: "http://edamontology.org/"}
$graph:
  - id: main
    class: Workflow
    inputs: {text: string, reads: 'File[]', pairs: {type: {type: array, items: Any}}}
    outputs: []
    steps:
      one:
        run: tools/step.cwl
        in: {text: text}
        out: []
"""

JOB = """\
text: hello
reads:
  - {class: File, location: data/a.txt}
  - {class: File, path: data/b.txt}
pairs:
  - {left: {class: Directory, location: data}, right: {class: File, location: /etc/hostname}}
  - {left: 1, right: [true, null, 2.5]}
unused: {class: File, location: elsewhere.txt}
"""


def _layout(root: Path) -> Path:
    (root / "tools" / "data").mkdir(parents=True)
    (root / "tools" / "step.cwl").write_text(STEP)
    (root / "tools" / "data" / "default.txt").write_text("default\n")
    (root / "data").mkdir()
    for name in ("a.txt", "b.txt"):
        (root / "data" / name).write_text(name)
    (root / "wf.cwl").write_text(WORKFLOW)
    (root / "job.yml").write_text(JOB)
    return root


@pytest.mark.parametrize("name", ["wf.cwl", "wf.cwl#main", "tools/step.cwl"])
def test_the_plain_reader_agrees_with_cwltool(tmp_path: Path, name: str) -> None:
    root = _layout(tmp_path)
    uri = _tool_uri(str(root / name))
    plain, full = _read_plainly(uri, name), _read_with_cwltool(uri, name)
    assert plain is not None
    assert (plain.main, plain.fragment, plain.documents, plain.namespaces) == \
        (full.main, full.fragment, full.documents, full.namespaces)
    assert sorted(plain.inputs) == sorted(full.inputs)
    assert plain.parameters == () and plain.schema_defs == {}


def test_the_plain_job_reader_agrees_with_the_loader(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    tool = load_tool(str(root / "wf.cwl"))
    job = root / "job.yml"
    plain = _read_job_plainly(job, tool)
    assert plain == _read_job_with_loader(str(job), tool)
    assert plain is not None and "unused" not in plain
    assert plain["reads"][1] == {"class": "File", "location": (root / "data/b.txt").as_uri()}


@pytest.mark.parametrize("change", [
    "secondaryFiles in a step's tool",
    "$mixin",
    "inputs by $import",  # the tool's own: a step's inputs are cwltool's to read
    "a version the plain reader does not know",
    "a step's tool by URL",
])
def test_the_plain_reader_declines_what_needs_the_schema(tmp_path: Path, change: str) -> None:
    root = _layout(tmp_path)
    step, wf = root / "tools" / "step.cwl", root / "wf.cwl"
    if change == "secondaryFiles in a step's tool":
        step.write_text(STEP.replace("    type: string\n",
                                     "    type: string\n    secondaryFiles: [.idx]\n"))
    elif change == "$mixin":
        wf.write_text(WORKFLOW.replace("    class: Workflow\n",
                                       "    class: Workflow\n    $mixin: more.yml\n"))
    elif change == "inputs by $import":
        (step.parent / "inputs.yml").write_text("- {id: text, type: string}\n")
        step.write_text(STEP.split("inputs:")[0] + "inputs: {$import: inputs.yml}\n"
                        "outputs: []\nbaseCommand: cat\n")
    elif change == "a version the plain reader does not know":
        wf.write_text(WORKFLOW.replace("v1.2", "draft-3"))
    else:
        wf.write_text(WORKFLOW.replace("tools/step.cwl", "https://example.org/step.cwl"))
    read = step if change == "inputs by $import" else wf
    uri = _tool_uri(str(read))
    try:
        plain = _read_plainly(uri, str(read))
    except LookupError:  # a URL: load_tool hands the document to the next reader
        plain = None
    assert plain is None


@pytest.mark.parametrize("job", [
    "text: x\nreads: [{class: File, location: data/a.txt, format: edam:format_1}]\n",
    "$import: other.yml\n",
    "text: x\ncwl:requirements: []\n",
    "reads: [{class: File, location: data/a b.txt}]\n",
    "reads: [{class: File, location: 'data/a%20b.txt'}]\n",
    "reads: [{class: File, location: 'data/a.txt#x'}]\n",
    "reads: [{class: File, location: '_:blank'}]\n",
    "text: 2026-12-04\n",
    "",
    "- a list\n",
])
def test_the_plain_job_reader_declines_what_the_loader_changes(tmp_path: Path,
                                                               job: str) -> None:
    root = _layout(tmp_path)
    (root / "other.yml").write_text(job)
    assert _read_job_plainly(root / "other.yml", load_tool(str(root / "wf.cwl"))) is None


def test_a_plain_tool_and_job_load_no_schema_salad(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    code = ("import sys\nfrom cratebridge_cwl.runner_read import load_tool\n"
            "from cratebridge_cwl.runner_tool import load_job\n"
            f"t = load_tool({str(root / 'wf.cwl')!r})\n"
            f"j = load_job({str(root / 'job.yml')!r}, t)\n"
            "assert j['text'] == 'hello'\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'schema_salad', 'cwl_utils', 'cwltool', 'rdflib', 'requests'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_an_invalid_document_read_plainly_is_refused_by_the_runs_cwltool(
        tmp_path: Path) -> None:
    tool = tmp_path / "tool.cwl"
    tool.write_text("cwlVersion: v1.2\nclass: CommandLineTool\ninputs: []\noutputs: []\n"
                    "baseCommand: 'true'\nnot_a_field: 1\n")
    assert _read_plainly(_tool_uri(str(tool)), str(tool)) is not None
    done = run_runner("--outdir", tmp_path / "out", tool)
    assert done.returncode not in (0, EXIT_UNSUPPORTED), done.stderr
    assert "not_a_field" in done.stderr
    assert done.stdout == ""
