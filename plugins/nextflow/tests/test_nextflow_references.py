"""Plan-time refusal of Nextflow code that names files outside the crate (the static check).

Each test writes a workflow folder inside a crate folder, and a secret file
outside the crate; the check must refuse every reference that reaches out,
name the file, line and reference as written, and never show the secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from cratebridge.errors import UnsafeCrate
from cratebridge_nextflow.references import check_references

MARKER = "CRATEBRIDGE_SECRET_MARKER_9c1e"
WORKFLOWS = Path(__file__).resolve().parents[3] / "fixtures" / "workflows" / "nextflow"

PROCESS = """\
process SAY {{
    container 'cratebridge/python:3.11'
{body}
}}
"""


@dataclass(frozen=True)
class Place:
    crate: Path
    workflow: Path
    outside: Path
    secret: Path

    def write(self, main: str, config: str | None = None,
              files: dict[str, str] | None = None) -> None:
        (self.workflow / "main.nf").write_text(main)
        if config is not None:
            (self.workflow / "nextflow.config").write_text(config)
        for name, text in (files or {}).items():
            path = self.workflow / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def check(self, main: str, config: str | None = None,
              files: dict[str, str] | None = None, roots: tuple[Path, ...] = ()) -> None:
        self.write(main, config, files)
        check_references(self.workflow, self.workflow / "main.nf", (self.crate, *roots))


@pytest.fixture
def place(tmp_path: Path) -> Place:
    crate, outside = tmp_path / "crate", tmp_path / "outside"
    workflow = crate / "workflow"
    for folder in (workflow, outside):
        folder.mkdir(parents=True)
    secret = outside / "secret.nf"
    secret.write_text(f"params.stolen = '{MARKER}'\nprocess {MARKER} {{\n}}\n")
    return Place(crate, workflow, outside, secret)


def refused(place: Place, main: str, *names: str, config: str | None = None,
            files: dict[str, str] | None = None) -> UnsafeCrate:
    """The check must raise UnsafeCrate naming ``names`` and never the secret."""
    with pytest.raises(UnsafeCrate) as caught:
        place.check(main, config, files)
    error = caught.value
    text = f"{error} {json.dumps(error.to_json())}"
    assert MARKER not in text
    for name in names:
        assert name in text, text
    assert error.exit_code == 3
    return error


# -- include and includeConfig --------------------------------------------------------


def test_include_of_an_absolute_path_is_refused(place: Place) -> None:
    error = refused(place, f"include {{ SAY }} from '{place.secret}'\n", "include",
                    str(place.secret))
    assert error.where == "main.nf line 1"


def test_include_that_climbs_out_of_the_workflow_folder_is_refused(place: Place) -> None:
    refused(place, "include { SAY } from '../../outside/secret'\n",
            "'../../outside/secret'", "outside the workflow folder")


def test_include_through_a_symlink_to_outside_is_refused(place: Place) -> None:
    (place.workflow / "modules").mkdir()
    (place.workflow / "modules" / "say.nf").symlink_to(place.secret)
    refused(place, "include { SAY } from './modules/say'\n", "'./modules/say'")


def test_a_symlinked_workflow_file_is_never_read(place: Place) -> None:
    (place.workflow / "lib.nf").symlink_to(place.secret)
    error = refused(place, "workflow { }\n", "not read")
    assert error.where == "lib.nf"


def test_included_files_are_checked_too_even_where_the_image_scan_does_not_look(
        place: Place) -> None:
    module = "process SAY {\n    script:\n    def x = file('/etc/shadow')\n    'true'\n}\n"
    error = refused(place, "include { SAY } from './work/say'\n", "'/etc/shadow'",
                    files={"work/say.nf": module})
    assert error.where == "work/say.nf line 3"


def test_include_config_outside_is_refused(place: Place) -> None:
    refused(place, "workflow { }\n", "includeConfig", "'/etc/nextflow.config'",
            config="includeConfig '/etc/nextflow.config'\n")
    refused(place, "workflow { }\n", "'../x.config'", config="includeConfig '../x.config'\n")


def test_included_config_is_followed_and_checked(place: Place) -> None:
    error = refused(place, "workflow { }\n", "'/root/secret'",
                    config="includeConfig 'conf/base.config'\n",
                    files={"conf/base.config": "params {\n    x = '/root/secret'\n}\n"})
    assert error.where == "conf/base.config line 2"


# -- literals ----------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "named"), [
    ("data = file('/etc/passwd')", "'/etc/passwd'"),
    ("params.x = '/root/secret'", "'/root/secret'"),
    ("Channel.fromPath('/data/../etc/*')", "'/data/../etc/*'"),
    ('x = file("file:///etc/passwd")', '"file:///etc/passwd"'),
    ("x = file('file:/etc/hosts')", "'file:/etc/hosts'"),
    ('x = file("${projectDir}/../../outside/secret.nf")', "${projectDir}/../../outside"),
    ("x = file(\"$baseDir/../../x\")", "$baseDir/../../x"),
    ("x = file('../outside/secret.nf')", "'../outside/secret.nf'"),
    ("x = file(\"${params.outdir}/../../x\")", "${params.outdir}/../../x"),
    ("x = file('\\u002fetc/passwd')", "\\u002fetc/passwd"),
    ("x = file(/\\/etc\\/passwd/)", "\\/etc\\/passwd"),
    ('x = file("""/etc/passwd""")', '"""/etc/passwd"""'),
    ("println file('/etc/passwd').text // read it", "'/etc/passwd'"),
])
def test_literal_outside_the_crate_is_refused(place: Place, code: str, named: str) -> None:
    error = refused(place, f"// a workflow\n{code}\nworkflow {{ }}\n", named)
    assert error.where == "main.nf line 2"


def test_home_folder_literal_is_refused(place: Place) -> None:
    refused(place, "x = file('~/.ssh/id_rsa')\nworkflow { }\n", "'~/.ssh/id_rsa'", "home")


def test_container_side_names_do_not_hide_code(place: Place) -> None:
    # Only plain literal values of shell/env settings and bare command strings are skipped.
    refused(place, "shell = file('/etc/passwd').text\nworkflow { }\n", "'/etc/passwd'")
    refused(place, "workflow { }\n", "'/etc/passwd'",
            config="process.shell = new File('/etc/passwd').text.tokenize()\n")
    refused(place, "workflow { }\n", "'/etc/passwd'",
            config="env {\n    X = new File('/etc/passwd').text\n}\n")
    refused(place, PROCESS.format(body="    script:\n    def x = file(\"\"\"/etc/passwd\"\"\")\n"
                                       "    \"\"\"\n    true\n    \"\"\""), "/etc/passwd")


def test_publish_dir_that_climbs_out_is_refused(place: Place) -> None:
    refused(place, PROCESS.format(body="    publishDir '../results'\n    script:\n"
                                       "    '''\n    true\n    '''"), "'../results'")


def test_groovy_interpolated_into_a_command_is_checked(place: Place) -> None:
    body = "    script:\n    \"\"\"\n    echo ${file('/etc/passwd').text}\n    \"\"\""
    refused(place, PROCESS.format(body=body), "'/etc/passwd'")


def test_groovy_in_a_shell_command_is_checked(place: Place) -> None:
    body = "    shell:\n    '''\n    echo !{file('/etc/passwd').text}\n    '''"
    refused(place, PROCESS.format(body=body), "'/etc/passwd'")


def test_groovy_before_the_command_and_exec_blocks_are_checked(place: Place) -> None:
    refused(place, PROCESS.format(body="    script:\n    def x = file('/etc/shadow')\n"
                                       "    \"\"\"\n    true\n    \"\"\""), "'/etc/shadow'")
    refused(place, PROCESS.format(body="    exec:\n    x = '''/etc/shadow'''"),
            "'''/etc/shadow'''")


# -- what passes -----------------------------------------------------------------------


GREY = """\
#!/usr/bin/env nextflow
// paths in comments are not code: /etc/passwd, '../x'
/* neither is '/etc/shadow' here */
include { HELLO } from './modules/hello'
include { validateParameters } from 'plugin/nf-schema'

params.reference = "${projectDir}/assets/ref.txt"
params.other = "$moduleDir/assets/ref.txt"
params.sheet = 'assets/sheet.csv'

process SAY {
    container 'cratebridge/python:3.11'
    shell '/bin/bash', '-euo', 'pipefail'
    publishDir params.outdir, mode: 'copy'

    input:
    val name

    output:
    path 'out.txt'

    script:
    def parts = name.tokenize('/')
    \"\"\"
    echo ${parts} > /tmp/x && /usr/bin/env cat /tmp/x > out.txt
    \"\"\"

    stub:
    if (name) {
        \"\"\"
        touch /tmp/stub out.txt
        \"\"\"
    } else {
        \"\"\"
        /usr/bin/true > out.txt
        \"\"\"
    }
}

workflow {
    names = Channel.of('a', 'b').filter { it ==~ /^\\/?[a-z]+/ }.map { it.replaceAll(/\\//, '_') }
    SAY(names)
    HELLO(file(params.reference))
    file('/dev/null')
}
"""

HELLO = """\
process HELLO {
    input:
    path ref

    output:
    path 'hello.txt'

    shell:
    '''
    cat !{ref} /etc/os-release > hello.txt
    '''
}
"""

CONFIG = """\
process.shell = ['/bin/bash', '-euo', 'pipefail']
process {
    container = 'cratebridge/python:3.11'
    beforeScript = '/opt/setup.sh'
    withName: 'SAY' {
        cpus = 1
    }
}
env {
    R_PROFILE_USER = "/.Rprofile"
    JULIA_DEPOT_PATH = "/usr/local/share/julia"
}
includeConfig 'conf/base.config'
includeConfig params.custom ? "${params.custom}/custom.config" : "/dev/null"
"""


def test_container_side_paths_and_relative_references_pass(place: Place) -> None:
    place.check(GREY, CONFIG, files={"modules/hello.nf": HELLO,
                                     "conf/base.config": "params.outdir = 'results'\n"})


def test_absolute_literal_inside_the_crate_or_a_mapped_dataset_passes(place: Place) -> None:
    inside = place.crate / "data" / "input.txt"
    dataset = place.outside / "dataset"
    main = f"params.data = '{inside}'\nparams.table = '{dataset}/t.csv'\nworkflow {{ }}\n"
    place.check(main, roots=(dataset,))
    refused(place, main, f"'{dataset}/t.csv'")


@pytest.mark.parametrize("name", ["three-step", "scalar-inputs", "step-fails"])
def test_the_fixture_workflows_pass(name: str) -> None:
    check_references(WORKFLOWS / name, WORKFLOWS / name / "main.nf")
