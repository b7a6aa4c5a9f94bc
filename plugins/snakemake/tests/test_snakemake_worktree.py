"""Snakefiles run as their authors run them: in a working copy of their folder.

Real Snakemake, real Docker through the broker, the real pipeline: files
beside the Snakefile, a configfile with a request input over one key,
checkpoints, ``shell.executable("bash")``, a ``touch()`` rule with no command.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cratebridge.config import Config
from cratebridge.engines.record import FileRecord, RunStatus
from cratebridge.errors import UnsafeCrate, UnsupportedCrate
from cratebridge.pipeline import RunOutcome, plan, run
from cratebridge.testing.crates import RequestSpec, ValueInput, write_request_zip
from cratebridge.testing.kit import PROVENANCE_PROFILE, KitResult
from cratebridge.testing.validator import ExternalValidator
from cratebridge_snakemake.worktree import make_working_copy

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "workflows" / "snakemake"
MakeRequest = Callable[..., Path]


def _request(tmp: Path, name: str, *inputs: ValueInput) -> Path:
    spec = RequestSpec(workflow_dir=FIXTURES / name, main_workflow="Snakefile", inputs=inputs)
    return write_request_zip(spec, tmp / f"{name}.zip")


def _run(tmp: Path, cfg: Config, name: str, *inputs: ValueInput) -> RunOutcome:
    outcome = run(_request(tmp, name, *inputs), tmp / "result", engine="snakemake", config=cfg)
    assert outcome.exit_code == 0, outcome.record.error
    return outcome


def _outputs(outcome: RunOutcome) -> dict[str, str]:
    return {str(o.parameter): o.path.read_text() for o in outcome.record.outputs
            if isinstance(o, FileRecord) and not o.is_dir}


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.docker
def test_files_beside_the_snakefile_are_found_and_the_crate_is_untouched(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    outcome = _run(tmp_path, config(""), "files-beside")
    assert _outputs(outcome) == {"summary.txt": "alpha 3 words\nbeta 5 words\n",
                                 "counts/alpha.txt": "3\n", "counts/beta.txt": "5\n"}
    # the crate's own copy of the workflow is as it came: no outputs, no .snakemake
    request = outcome.run_dir / "request"
    workflow = next(p.parent for p in request.rglob("Snakefile"))
    assert _digests(workflow) == {
        name: digest for name, digest in _digests(FIXTURES / "files-beside").items()}
    assert not list(request.rglob(".snakemake")) and not list(request.rglob("summary.txt"))
    by_name = {s.name: s for s in outcome.record.steps}
    assert sorted(by_name) == ["count[sample=alpha]", "count[sample=beta]", "summary"]
    alpha = by_name["count[sample=alpha]"].inputs[0]
    assert isinstance(alpha, FileRecord) and alpha.path.name == "alpha.txt"


@pytest.mark.docker
def test_a_request_input_is_given_over_the_workflows_own_configfile(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    outcome = _run(tmp_path, config(""), "config-override", ValueInput("name", "crate"))
    # greeting and times from config.yaml beside the Snakefile, name from the request
    assert _outputs(outcome) == {"greeting.txt": "hello crate\nhello crate\n"}
    command = list(outcome.plan.command)
    assert Path(command[command.index("--configfile") + 1]).name == "config.json"


def test_without_request_inputs_a_missing_configfile_is_snakemakes_own_error(
        make_request: MakeRequest, config: Callable[[str], Config]) -> None:
    snakefile = ('configfile: "settings.yaml"\n\nrule all:\n'
                 '    input: config["sample"]\n')
    with pytest.raises(UnsupportedCrate, match=r"settings\.yaml.*not present") as caught:
        plan(make_request(snakefile), engine="snakemake", config=config(""))
    assert "KeyError" not in str(caught.value)


STANDARD_LAYOUT = '''
configfile: "config/config.yaml"

rule all:
    input: expand("results/{s}.txt", s=config["samples"])

rule copy:
    input: "resources/{s}.txt"
    output: "results/{s}.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "cp {input} {output}"
'''


def test_the_standard_layout_runs_from_the_crates_root(
        tmp_path: Path, config: Callable[[str], Config]) -> None:
    # workflow/Snakefile, config/ and resources/ beside it: `snakemake` in the root finds all
    flow = tmp_path / "flow"
    for folder in ("workflow", "config", "resources"):
        (flow / folder).mkdir(parents=True)
    (flow / "workflow" / "Snakefile").write_text(STANDARD_LAYOUT)
    (flow / "config" / "config.yaml").write_text("samples: [a, b]\n")
    for sample in "ab":
        (flow / "resources" / f"{sample}.txt").write_text(sample)
    metadata = (FIXTURES / "scalar-inputs" / "ro-crate-metadata.json").read_text()
    (flow / "ro-crate-metadata.json").write_text(
        metadata.replace('"Snakefile"', '"workflow/Snakefile"'))
    crate = write_request_zip(RequestSpec(workflow_dir=flow, main_workflow="workflow/Snakefile"),
                              tmp_path / "request.zip")
    planned = plan(crate, engine="snakemake", config=config("")).plan
    command = list(planned.command)
    tree = Path(command[command.index("--directory") + 1])
    assert Path(command[command.index("--snakefile") + 1]) == tree / "workflow" / "Snakefile"
    assert sorted(planned.steps) == ["copy[s=a]", "copy[s=b]"]


def test_a_missing_config_key_says_where_keys_come_from(
        make_request: MakeRequest, config: Callable[[str], Config]) -> None:
    snakefile = 'rule all:\n    input: config["sample"]\n'
    with pytest.raises(UnsupportedCrate, match=r"'sample'.*own configfile.*request input"):
        plan(make_request(snakefile), engine="snakemake", config=config(""))


@pytest.mark.docker
def test_checkpoint_outputs_are_the_targets_after_the_dag_was_re_evaluated(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    # outputs/ kept to the final targets: those named once the checkpoint ran
    outcome = _run(tmp_path, config('[engines.snakemake]\noutputs = "targets"\n'), "checkpoint")
    assert _outputs(outcome) == {f"upper/{p}.txt": f"PART {p.upper()}\n" for p in "abc"}
    names = sorted(s.name for s in outcome.record.steps)
    assert names == ["split", "upper[part=a]", "upper[part=b]", "upper[part=c]"]
    assert not (outcome.run_dir / "outputs" / "parts").exists()


@pytest.mark.docker
def test_shell_executable_bash_runs_the_command_under_bash_with_pipefail(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    outcome = _run(tmp_path, config(""), "shell-bash")
    assert _outputs(outcome) == {"shell.txt": "bash\npipefail-on\n"}
    assert any("shell.executable" in note for note in outcome.plan.notes)
    (step,) = outcome.record.steps
    assert "--entrypoint=bash" in step.command
    assert step.command[-1].startswith("set -euo pipefail; ")


DEFAULT_SHELLS = '''
rule all:
    input: "debian.txt", "busybox.txt"

rule debian:
    output: "debian.txt"
    container: "docker://cratebridge/python:3.11"
    shell: 'echo -e "shell:${{BASH_VERSION:+bash}}" > {output}; '
           "set -o | grep -q 'pipefail.*on' && echo pipefail-on >> {output}"

rule busybox:
    output: "busybox.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo shell:${{BASH_VERSION:-sh}} > {output}"
'''


@pytest.mark.docker
def test_with_no_shell_executable_jobs_run_under_bash_where_the_image_has_it(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # bare Snakemake runs every job under bash (with pipefail) when there is one;
    # an image without bash (busybox) gets sh
    outcome = run(make_request(DEFAULT_SHELLS), tmp_path / "result", engine="snakemake",
                  config=config(""))
    assert outcome.exit_code == 0, outcome.record.error
    assert _outputs(outcome) == {"debian.txt": "shell:bash\npipefail-on\n",
                                 "busybox.txt": "shell:sh\n"}
    assert any("under bash (as Snakemake's default) in cratebridge/python:3.11, under sh"
               in note for note in outcome.plan.notes)
    by_rule = {s.step: s for s in outcome.record.steps}
    assert "--entrypoint=bash" in by_rule["debian"].command
    assert "--entrypoint=/bin/sh" in by_rule["busybox"].command


SHELL_IN_BUSYBOX = '''
shell.executable("bash")

rule all:
    input: "out.txt"

rule make:
    output: "out.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo $BASH_VERSION > {output}"
'''


@pytest.mark.docker
def test_shell_executable_missing_from_an_image_is_refused_in_the_plan(
        make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    with pytest.raises(UnsupportedCrate, match=r"image cratebridge/busybox:1 \(rules: make\) "
                                               r"has no bash") as caught:
        plan(make_request(SHELL_IN_BUSYBOX), engine="snakemake", config=config(""))
    assert caught.value.exit_code == 3


@pytest.mark.docker
def test_a_touch_rule_with_no_command_is_recorded_and_the_crate_validates(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    outcome = _run(tmp_path, config(""), "touch-rule")
    assert "mark" in outcome.plan.steps
    by_rule = {s.step: s for s in outcome.record.steps}
    assert sorted(by_rule) == ["make", "mark"]
    mark = by_rule["mark"]
    assert mark.status is RunStatus.COMPLETED and mark.container is None
    assert [o.path.name for o in mark.outputs if isinstance(o, FileRecord)] == ["done.flag"]
    assert [i.path.name for i in mark.inputs if isinstance(i, FileRecord)] == ["data.txt"]
    assert by_rule["make"].container is not None
    validator = ExternalValidator.find()
    if validator is None:
        pytest.skip("rocrate-validator or the shared validator profiles are missing")
    root = outcome.result / "data"  # the request was a bag, so the result is one
    metadata = json.loads((root / "ro-crate-metadata.json").read_text())
    folder, provenance = KitResult(outcome, root, metadata).provenance()
    assert folder != root, "no nested provenance crate"
    steps = [e["name"] for e in provenance["@graph"] if e.get("@type") == "CreateAction"
             and e["name"].startswith("Run of step")]
    assert sorted(steps) == ["Run of step make", "Run of step mark"]
    checked = validator.validate(folder, PROVENANCE_PROFILE)
    assert checked.ok, checked.output


# -- the working copy itself (no Docker) ---------------------------------------------


def test_working_copy_keeps_files_modes_and_times_and_replaces_an_old_copy(
        tmp_path: Path) -> None:
    source, dest = tmp_path / "flow", tmp_path / "work" / "snakemake"
    (source / "scripts").mkdir(parents=True)
    (source / "Snakefile").write_text("rule all:\n")
    tool = source / "scripts" / "tool.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o4755)  # setuid is not copied
    os.utime(tool, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from the plan")
    make_working_copy(source, dest)
    assert _digests(dest) == _digests(source)
    copied = dest / "scripts" / "tool.sh"
    assert copied.stat().st_mode & 0o7777 == 0o755
    assert copied.stat().st_mtime_ns == 1_000_000_000_000_000_000


def test_working_copy_follows_no_link(tmp_path: Path) -> None:
    source, outside = tmp_path / "flow", tmp_path / "outside.txt"
    source.mkdir()
    outside.write_text("secret")
    (source / "data.txt").symlink_to(outside)
    with pytest.raises(UnsafeCrate, match=r"'data\.txt' in the workflow folder is a symbolic link"):
        make_working_copy(source, tmp_path / "work" / "snakemake")
    assert not (tmp_path / "work" / "snakemake" / "data.txt").exists()


def test_a_link_left_in_place_of_the_copy_is_removed_not_followed(tmp_path: Path) -> None:
    source, target, dest = tmp_path / "flow", tmp_path / "elsewhere", tmp_path / "snakemake"
    source.mkdir()
    (source / "Snakefile").write_text("rule all:\n")
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    dest.symlink_to(target)
    make_working_copy(source, dest)
    assert not dest.is_symlink() and (dest / "Snakefile").is_file()
    assert (target / "keep.txt").read_text() == "keep" and not (target / "Snakefile").exists()


@pytest.mark.docker
def test_outputs_hold_what_the_author_would_find_or_only_the_targets(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    for sub in ("all", "targets"):
        (tmp_path / sub).mkdir()
    # default: every file the jobs made and Snakemake kept, as in the folder after a bare run
    outcome = _run(tmp_path / "all", config(""), "kept-files")
    # and what a job left there undeclared, a shipped file it changed among it; not the
    # shipped files left as they were, nor Snakemake's own .snakemake folder
    assert _outputs(outcome) == {"report.txt": "report: scratch\n",
                                 "parts/one.txt": "scratch\n", "logs/part.log": "part made\n",
                                 "side/notes.txt": "undeclared\n",
                                 "tally.txt": "shipped\npart ran\n"}
    assert sorted(p.relative_to(outcome.run_dir / "outputs").as_posix()
                  for p in (outcome.run_dir / "outputs").rglob("*") if p.is_file()) == [
        "logs/part.log", "parts/one.txt", "report.txt", "side/notes.txt", "tally.txt"]
    # the operator may keep outputs/ to the final targets
    targets = _run(tmp_path / "targets", config('[engines.snakemake]\noutputs = "targets"\n'),
                   "kept-files")
    assert _outputs(targets) == {"report.txt": "report: scratch\n"}
    assert not (targets.run_dir / "outputs" / "parts").exists()


TOP_LEVEL_STDERR = '''
shell("echo read by the top level > /dev/stderr")

rule all:
    input: "out.txt"

rule make:
    output: "out.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo made > {output}"
'''


@pytest.mark.docker
def test_the_snakefile_may_reopen_its_own_stderr_in_the_room(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # `> /dev/stderr` reopens the room's standard error by name, which the kernel
    # allows only to its owner: both when the plan reads the Snakefile and in the run
    outcome = run(make_request(TOP_LEVEL_STDERR), tmp_path / "result", engine="snakemake",
                  config=config(""))
    assert outcome.exit_code == 0, outcome.record.error
    assert _outputs(outcome) == {"out.txt": "made\n"}


SETS_ENVIRONMENT = '''
import os
os.environ["GREETING"] = "set by the Snakefile"
os.environ["PATH"] = "/not/in/the/image:" + os.environ["PATH"]

rule all:
    input: "env.txt"

rule show:
    output: "env.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "(echo \\"$GREETING\\"; echo \\"$PATH\\"; echo \\"${{TMPDIR-unset}}\\") > {output}"
'''


@pytest.mark.docker
def test_jobs_get_what_the_snakefile_put_in_its_environment_and_nothing_of_ours(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # bare Snakemake's jobs inherit the engine's environment, the Snakefile's changes
    # among it; here only those changes reach the job: not the room's own variables
    # (TMPDIR names a folder of ours), and PATH stays the image's
    outcome = run(make_request(SETS_ENVIRONMENT), tmp_path / "result", engine="snakemake",
                  config=config(""))
    assert outcome.exit_code == 0, outcome.record.error
    greeting, path, tmpdir = _outputs(outcome)["env.txt"].splitlines()
    assert greeting == "set by the Snakefile"
    assert "/not/in/the/image" not in path and "/bin" in path.split(":")
    assert tmpdir == "unset"


FIFO_OUTPUT = '''
rule all:
    input: "x.txt"

rule make:
    output: "x.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "mkfifo {output}"
'''


@pytest.mark.docker
def test_a_fifo_left_as_an_output_fails_the_result_crate_instead_of_hanging_the_run(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # opened plainly, a fifo waits for a writer forever: the run would never end
    outcome = run(make_request(FIFO_OUTPUT), tmp_path / "result", engine="snakemake",
                  config=config(""))
    assert outcome.exit_code == 1
    assert "x.txt: not a regular file (a fifo, socket or device)" in str(outcome.record.error)
