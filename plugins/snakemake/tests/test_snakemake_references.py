"""Plan-time refusal of Snakefiles that name files outside the crate, with the real Snakemake.

Each test writes a crate folder and a secret file beside it (outside the crate),
reads the workflow with the real ``cratebridge_snakemake.inspect`` in a bwrap
room and checks the references as the engine's plan does. No Docker: nothing
runs. The room is made to see the outside folder too, so that these tests prove
the plan-time check on its own (defence in depth), not the confinement;
``test_a_room_that_hides_the_outside_still_refuses`` shows the two together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cratebridge.containers.confine import Room
from cratebridge.errors import UnsafeCrate
from cratebridge_snakemake.workflow import SnakeWorkflow, check_references, load_workflow

MARKER = "CRATEBRIDGE_SECRET_MARKER_7f3a"
ENGINE_UID = 1000  # the room's unprivileged uid when the tests run as root


@dataclass(frozen=True)
class Place:
    """A crate, Snakemake's working folder and a folder outside both holding a secret."""

    crate: Path
    workdir: Path
    outside: Path
    secret: Path
    room: Room

    def load(self, snakefile: str, config: dict[str, object] | None = None,
             room: Room | None = None) -> SnakeWorkflow:
        (self.crate / "Snakefile").write_text(snakefile)
        run = self.workdir.parent
        configfile = run / "config.json"
        configfile.write_text(json.dumps(config or {}))
        home = run / "home"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "XDG_CACHE_HOME": str(home / ".cache"), "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        return load_workflow(self.crate / "Snakefile", self.workdir, configfile, env,
                             room=room or self.room)

    def check(self, snakefile: str, config: dict[str, object] | None = None,
              roots: tuple[Path, ...] = ()) -> None:
        workflow = self.load(snakefile, config)
        check_references(workflow, (self.crate, *roots), self.workdir)


@pytest.fixture
def place(tmp_path: Path) -> Place:
    crate, outside, run = tmp_path / "crate", tmp_path / "outside", tmp_path / "run"
    for folder in (crate / "rules", crate / "data", outside, run / "snakemake",
                   tmp_path / "tmp"):
        folder.mkdir(parents=True)
    (crate / "data" / "input.txt").write_text("hello\n")
    secret = outside / "secret.txt"
    # A bare name: read as a Snakefile it fails with an error that quotes it.
    secret.write_text(f"{MARKER}\n")
    uid = ENGINE_UID if os.geteuid() == 0 else os.geteuid()
    room = Room(uid=uid, gid=uid, etc=tmp_path / "etc", tmp=tmp_path / "tmp",
                readable=(crate, outside), writable=(run,))
    room.write_etc()
    return Place(crate, run / "snakemake", outside, secret, room)


def refused(action: Callable[[], object], *names: str) -> UnsafeCrate:
    """Run ``action``; it must raise UnsafeCrate naming ``names`` and never the secret."""
    with pytest.raises(UnsafeCrate) as caught:
        action()
    error = caught.value
    text = f"{error} {json.dumps(error.to_json())}"
    assert MARKER not in text
    for name in names:
        assert name in text, text
    assert error.exit_code == 3
    return error


# -- includes -----------------------------------------------------------------------


def test_include_of_an_absolute_path_outside_is_refused(place: Place) -> None:
    rules = place.outside / "rules.smk"
    rules.write_text(f"# {MARKER}\nrule outside:\n    output: 'o.txt'\n    shell: 'true'\n")
    snakefile = f"include: {str(rules)!r}\n"
    error = refused(lambda: place.check(snakefile), "include", str(rules))
    assert error.where == "Snakefile"


def test_include_of_a_file_that_snakemake_cannot_read_withholds_its_error(
        place: Place) -> None:
    # Snakemake's own error would quote the secret (NameError: name '...' is not defined).
    snakefile = f"include: {str(place.secret)!r}\n"
    refused(lambda: place.load(snakefile), "include", str(place.secret), "not shown")


def test_a_room_that_hides_the_outside_still_refuses(place: Place) -> None:
    # The real room sees only the run: the include is not found there, and the failed
    # load is refused because the include points outside the workflow's folder.
    hidden = Room(uid=place.room.uid, gid=place.room.gid, etc=place.room.etc,
                  tmp=place.room.tmp, readable=(place.crate,), writable=place.room.writable)
    snakefile = f"include: {str(place.secret)!r}\n"
    refused(lambda: place.load(snakefile, room=hidden), "include", str(place.secret))


RULE_X = "rule x:\n    output: 'x.txt'\n    shell: 'true'\n"


def test_include_that_climbs_out_of_the_crate_is_refused(place: Place) -> None:
    (place.outside / "x.smk").write_text(RULE_X)
    refused(lambda: place.check('include: "../outside/x.smk"\n'), "include",
            "'../outside/x.smk'")


def test_include_that_climbs_to_a_missing_file_is_refused(place: Place) -> None:
    # Snakemake fails to find it; the failed load is refused, not reported as a bad Snakefile.
    refused(lambda: place.load('include: "../x.smk"\n'), "include", "'../x.smk'")


def test_include_from_an_included_file_names_that_file(place: Place) -> None:
    (place.crate / "rules" / "a.smk").write_text('include: "../../outside/x.smk"\n')
    (place.outside / "x.smk").write_text(RULE_X)
    error = refused(lambda: place.check('include: "rules/a.smk"\n'), "'../../outside/x.smk'")
    assert error.where == "rules/a.smk"


def test_symlink_in_the_crate_to_a_snakefile_outside_is_refused(place: Place) -> None:
    target = place.outside / "rules.smk"
    target.write_text(f"# {MARKER}\nrule outside:\n    output: 'o.txt'\n    shell: 'true'\n")
    (place.crate / "rules" / "linked.smk").symlink_to(target)
    refused(lambda: place.check('include: "rules/linked.smk"\n'), "'rules/linked.smk'")


# -- configfiles, workdir, scripts ------------------------------------------------------


def test_configfile_outside_the_crate_is_refused(place: Place) -> None:
    config = place.outside / "config.yaml"
    config.write_text(f"secret: {MARKER}\n")
    snakefile = f"configfile: {str(config)!r}\n"
    refused(lambda: place.check(snakefile), "configfile", str(config))


def test_configfile_outside_that_snakemake_skips_is_still_refused(place: Place) -> None:
    # Absent, so Snakemake ignores it (a --configfile is given); the directive is refused.
    refused(lambda: place.check('configfile: "/abs/path.yaml"\n'), "'/abs/path.yaml'")


def test_workdir_directive_outside_is_refused(place: Place) -> None:
    refused(lambda: place.check(f"workdir: {str(place.outside)!r}\n"), "workdir")


def test_script_outside_the_crate_is_refused(place: Place) -> None:
    snakefile = ("rule s:\n    output: 's.txt'\n"
                 f"    script: {str(place.outside / 'x.py')!r}\n")
    refused(lambda: place.check(snakefile), "script", "rule s in Snakefile")


# -- job files ------------------------------------------------------------------------


def test_input_outside_the_crate_is_refused(place: Place) -> None:
    snakefile = ("rule r:\n    input: config['data']\n    output: 'out.txt'\n"
                 "    shell: 'cp {input} {output}'\n")
    error = refused(lambda: place.check(snakefile, {"data": str(place.secret)}),
                    "input file", str(place.secret))
    assert error.where == "rule r in Snakefile"


@pytest.mark.skipif(not Path("/etc/hostname").is_file(), reason="no /etc/hostname here")
def test_input_of_a_host_file_is_refused(place: Place) -> None:
    snakefile = ("rule r:\n    input: '/etc/hostname'\n    output: 'out.txt'\n"
                 "    shell: 'cp {input} {output}'\n")
    refused(lambda: place.check(snakefile), "'/etc/hostname'")


def test_input_through_a_symlink_in_the_crate_is_refused(place: Place) -> None:
    link = place.crate / "data" / "linked.txt"
    link.symlink_to(place.secret)
    snakefile = ("rule r:\n    input: config['data']\n    output: 'out.txt'\n"
                 "    shell: 'cp {input} {output}'\n")
    refused(lambda: place.check(snakefile, {"data": str(link)}), str(link))


def test_output_that_climbs_out_of_the_working_folder_is_refused(place: Place) -> None:
    snakefile = "rule r:\n    output: '../escape.txt'\n    shell: 'touch {output}'\n"
    refused(lambda: place.check(snakefile), "output file", "'../escape.txt'")


def test_output_into_the_crate_is_refused(place: Place) -> None:
    # Outputs belong in the engine's writable folder, not in the (read-only) crate.
    out = place.crate / "data" / "new.txt"
    snakefile = f"rule r:\n    output: {str(out)!r}\n    shell: 'touch {{output}}'\n"
    refused(lambda: place.check(snakefile), "output file", str(out))


def test_log_outside_the_working_folder_is_refused(place: Place) -> None:
    log = place.outside / "r.log"
    snakefile = (f"rule r:\n    output: 'out.txt'\n    log: {str(log)!r}\n"
                 "    shell: 'touch {output}'\n")
    refused(lambda: place.check(snakefile), "log file", str(log))


def test_benchmark_outside_the_working_folder_is_refused(place: Place) -> None:
    snakefile = ("rule r:\n    output: 'out.txt'\n    benchmark: '../../b.tsv'\n"
                 "    shell: 'touch {output}'\n")
    refused(lambda: place.check(snakefile), "benchmark file", "'../../b.tsv'")


# -- what passes ----------------------------------------------------------------------


NORMAL = """\
include: "rules/count.smk"

rule all:
    input: "report.txt", "counts.txt"

rule report:
    input: config["data"]
    output: "report.txt"
    log: "logs/report.log"
    benchmark: "benchmarks/report.tsv"
    shell: "cp {input} {output} 2> {log}"
"""

COUNT = """\
rule count:
    input: "report.txt"
    output: "counts.txt"
    log: "logs/count.log"
    conda: "../envs/count.yaml"
    shell: "wc -l {input} > {output}"
"""


def test_a_normal_workflow_passes(place: Place) -> None:
    (place.crate / "rules" / "count.smk").write_text(COUNT)
    workflow = place.load(NORMAL, {"data": str(place.crate / "data" / "input.txt")})
    check_references(workflow, (place.crate,), place.workdir)
    kinds = {(ref.kind.value, ref.written) for ref in workflow.references}
    assert ("include", "rules/count.smk") in kinds
    assert ("conda", "../envs/count.yaml") in kinds
    report = next(job for job in workflow.jobs if job.rule == "report")
    assert report.outputs == ("report.txt",)
    assert report.logs == ("logs/report.log",)
    assert report.benchmarks == ("benchmarks/report.tsv",)


def test_an_input_in_an_operator_dataset_passes_only_when_mapped(place: Place) -> None:
    dataset = place.outside / "dataset"
    dataset.mkdir()
    (dataset / "table.csv").write_text("a,b\n")
    snakefile = ("rule r:\n    input: config['data']\n    output: 'out.txt'\n"
                 "    shell: 'cp {input} {output}'\n")
    config = {"data": str(dataset / "table.csv")}
    place.check(snakefile, config, roots=(dataset,))
    refused(lambda: place.check(snakefile, config), str(dataset / "table.csv"))
