"""cratebridge-cwl-runner: which files go into the request crate, and TOOL paths with ``..``.

Only the secondary files the tool declares travel with an input (as cwltool finds them:
``.idx``, ``^.bai``, optional patterns, parameter references, record fields, arrays,
defaults), never the other files beside it; a TOOL named through ``..`` runs as cwltool
would run it, and the crate itself still holds no ``..``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOOLS, need_image, run_runner

from cratebridge_cwl.runner import (
    RESULT_FOLDER,
    declared_secondary_files,
    load_job,
    load_tool,
    write_request,
)

IMAGE = "cratebridge/busybox:1"
DECLARED = ["d.bai", "d.meta", "d.txt", "d.txt.idx", "r.dat", "r.dat.ri"]
UNDECLARED = ["d_private.key", "dz.csv", "r.dat.other"]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _tool(folder: Path, inputs: str, requirements: str = "") -> Path:
    tool = folder / "tool.cwl"
    tool.write_text("cwlVersion: v1.2\nclass: CommandLineTool\n" + requirements
                    + "inputs:\n" + inputs + "outputs: []\nbaseCommand: 'true'\n")
    return tool


def _crate_inputs(tool: Path, job: dict[str, object], where: Path) -> list[str]:
    job_file = where / "job.json"
    job_file.write_text(json.dumps(job))
    loaded = load_tool(str(tool))
    crate = write_request(loaded, load_job(str(job_file), loaded), where / "crate").folder
    return sorted(p.relative_to(crate / "inputs").as_posix()
                  for p in (crate / "inputs").rglob("*") if p.is_file())


# -- the request crate, no Docker ----------------------------------------------------------


def test_only_the_declared_secondary_files_go_into_the_crate(tmp_path: Path) -> None:
    tool = load_tool(str(TOOLS / "secondary.cwl"))
    job = load_job(str(TOOLS / "secondary-job.yml"), tool)
    crate = write_request(tool, job, tmp_path / "crate").folder
    assert _names(crate / "inputs") == DECLARED


def test_patterns_resolve_as_cwl_defines_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ["s.tar.gz", "s.tar.gz.tbi", "s.tar.csi", "s.idx", "s.tar.md5", "s.tar.pr",
                 "s.tar.gz.lst", "s.tar.gz_other", "s.tar", "s.gz.md5", "other.txt"]:
        (data / name).write_text(name)
    (data / "s.tar.gz.d").mkdir()  # a secondary file may be a folder
    (data / "s.tar.gz.d" / "inside.txt").write_text("x")
    tool = _tool(tmp_path, "  f:\n    type: File\n    secondaryFiles:\n"
                 "      - .tbi\n"                   # s.tar.gz.tbi
                 "      - ^.csi\n"                  # one extension off: s.tar.csi
                 "      - ^^^.idx\n"                # more ^ than extensions: s.idx
                 "      - ^.md5?\n"                 # optional, present: s.tar.md5
                 "      - .nothing?\n"              # optional, absent: nothing
                 "      - .lst\n"
                 "      - .d\n"                     # a folder
                 "      - $(self.nameroot).pr\n")   # a parameter reference: s.tar.pr
    copied = _crate_inputs(tool, {"f": {"class": "File", "location": "data/s.tar.gz"}},
                           tmp_path)
    assert copied == ["s.idx", "s.tar.csi", "s.tar.gz", "s.tar.gz.d/inside.txt",
                      "s.tar.gz.lst", "s.tar.gz.tbi", "s.tar.md5", "s.tar.pr"]


def test_arrays_records_and_basenames_follow_the_type(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ["a.bam", "a.bam.bai", "a.cram", "b.bam", "b.bam.bai", "b.bam.crai", "r.vcf",
                 "r.vcf.tbi", "r.vcf.gz", "n.txt", "renamed.txt.idx", "n.txt.idx"]:
        (data / name).write_text(name)
    tool = _tool(tmp_path, "  bams:\n    type: File[]\n    secondaryFiles: [.bai]\n"
                 "  rec:\n    type:\n      type: record\n      fields:\n"
                 "        - name: v\n          type: File\n          secondaryFiles: [.tbi]\n"
                 "  named:\n    type: File\n    secondaryFiles: [.idx]\n")
    copied = _crate_inputs(tool, {
        "bams": [{"class": "File", "location": "data/a.bam"},
                 {"class": "File", "location": "data/b.bam"}],
        "rec": {"v": {"class": "File", "location": "data/r.vcf"}},
        # cwltool applies the pattern to the basename the job gives
        "named": {"class": "File", "location": "data/n.txt", "basename": "renamed.txt"},
    }, tmp_path)
    assert copied == ["a.bam", "a.bam.bai", "b.bam", "b.bam.bai", "n.txt", "r.vcf",
                      "r.vcf.tbi", "renamed.txt.idx"]


def test_a_named_record_type_brings_its_fields_secondary_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ["A", "A.s2", "A.s3", "B", "B.s3", "B.s2"]:
        (data / name).write_text(name)
    tool = _tool(tmp_path, "  rec: Sample\n", requirements=(
        "requirements:\n  SchemaDefRequirement:\n    types:\n"
        "      - name: Sample\n        type: record\n        fields:\n"
        "          one: {type: File, secondaryFiles: .s2}\n"
        "          many: {type: 'File[]', secondaryFiles: .s3}\n"))
    copied = _crate_inputs(tool, {"rec": {
        "one": {"class": "File", "location": "data/A"},
        "many": [{"class": "File", "location": "data/B"}]}}, tmp_path)
    assert copied == ["A", "A.s2", "B", "B.s3"]


def test_javascript_patterns_are_left_to_the_engine_and_said(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ["x.txt", "x.txt.js", "x_private.key"]:
        (data / name).write_text(name)
    tool = _tool(tmp_path, "  f:\n    type: File\n    secondaryFiles:\n"
                 "      - ${ return self.basename + '.js'; }\n",
                 requirements="requirements:\n  InlineJavascriptRequirement: {}\n")
    loaded = load_tool(str(tool))
    job = {"f": {"class": "File", "location": (data / "x.txt").as_uri()}}
    found = declared_secondary_files(loaded, job)
    assert found.paths == ()
    assert len(found.not_evaluated) == 1 and "'f'" in found.not_evaluated[0]
    written = write_request(loaded, job, tmp_path / "crate")
    assert _names(written.folder / "inputs") == ["x.txt"]
    assert written.not_evaluated == found.not_evaluated


def test_a_default_file_brings_only_its_declared_secondary_files(tmp_path: Path) -> None:
    for name in ["ref.fa", "ref.fa.fai", "ref_notes.txt"]:
        (tmp_path / name).write_text(name)
    tool = _tool(tmp_path, "  ref:\n    type: File\n    secondaryFiles: [.fai]\n"
                 "    default: {class: File, location: ref.fa}\n")
    crate = write_request(load_tool(str(tool)), {}, tmp_path / "crate").folder
    assert _names(crate / "workflow") == ["ref.fa", "ref.fa.fai", "tool.cwl"]


def test_a_tool_path_through_dotdot_is_the_file_cwltool_runs(tmp_path: Path) -> None:
    tool = load_tool(str(TOOLS / "secondary" / ".." / "secondary.cwl"))
    assert tool.main == TOOLS / "secondary.cwl"
    job = load_job(str(TOOLS / "secondary" / ".." / "secondary-job.yml"), tool)
    written = write_request(tool, job, tmp_path / "crate")
    assert written.main == "workflow/secondary.cwl"
    text = (written.folder / "ro-crate-metadata.json").read_text()
    assert "/../" not in text and '"../' not in text


# -- real runs in Docker -------------------------------------------------------------------


@pytest.mark.docker
def test_the_step_sees_what_bare_cwltool_stages_and_the_crates_hold_nothing_else(
        tmp_path: Path) -> None:
    need_image(IMAGE)
    bare = subprocess.run(
        [str(Path(sys.executable).parent / "cwltool"), "--quiet", "--disable-pull",
         "--outdir", str(tmp_path / "bare"), "secondary.cwl", "secondary-job.yml"],
        capture_output=True, text=True, cwd=TOOLS, check=False, timeout=600)
    assert bare.returncode == 0, bare.stderr
    done = run_runner("--outdir", tmp_path / "ours", "secondary.cwl", "secondary-job.yml")
    assert done.returncode == 0, done.stderr
    ours = Path(json.loads(done.stdout)["staged"]["path"]).read_text()
    assert ours == (tmp_path / "bare" / "staged.txt").read_text()
    assert ours.split() == DECLARED

    result = tmp_path / "ours" / RESULT_FOLDER
    kept = {p.name for p in result.rglob("*")}
    assert not kept & set(UNDECLARED), kept & set(UNDECLARED)


@pytest.mark.docker
def test_tool_and_job_named_through_dotdot_run(tmp_path: Path) -> None:
    need_image(IMAGE)
    done = run_runner("--outdir", tmp_path, "../secondary.cwl", "../secondary-job.yml",
                   cwd=TOOLS / "secondary")
    assert done.returncode == 0, done.stderr
    staged = Path(json.loads(done.stdout)["staged"]["path"]).read_text()
    assert staged.split() == DECLARED
