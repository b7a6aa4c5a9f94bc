"""The operator configuration's schema: a bad value is exit 2 naming the file and the key.

Bad files go through the real command line (``cratebridge config check`` and
``cratebridge run``); the docs' TOML examples are checked against the schema
both ways, so a key cannot be documented and not declared, or the reverse.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cratebridge.cli import main
from cratebridge.config import Config, describe, load_config
from cratebridge.config_schema import ENGINE_TABLES, SECTIONS, check, parse_size

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CONFIG_DOC = DOCS / "configuration.md"
#: Pages whose TOML blocks are operator configuration.
OPERATOR_PAGES = ("configuration.md", "cwl-runner.md", "toil-and-slurm.md", "snakemake.md")
#: Where each built-in engine's settings are documented.
ENGINE_PAGES = {"cwltool": "configuration.md", "toil": "toil-and-slurm.md",
                "snakemake": "snakemake.md", "nextflow": "nextflow.md"}


def write(tmp_path: Path, text: str, name: str = "cratebridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cratebridge.cli", *args],
                          capture_output=True, text=True, check=False)


# -- bad values ------------------------------------------------------------------------------

BAD = [
    pytest.param('[limits]\ncpus = "lots"\n', "[limits] cpus",
                 "a number above 0 such as 2 or 0.5, not 'lots'", id="cpus-not-a-number"),
    pytest.param("[limits]\ncpus = -1\n", "[limits] cpus", "above 0", id="cpus-negative"),
    pytest.param("[limits]\ncpus = true\n", "[limits] cpus", "not true", id="cpus-bool"),
    pytest.param("[limits]\npids = 0\n", "[limits] pids", "at least 1", id="pids-zero"),
    pytest.param('[limits]\nmemory = "lots"\n', "[limits] memory", "memory size",
                 id="memory-not-a-size"),
    pytest.param('[limits]\nmemory = "1k"\n', "[limits] memory", "at least 6M",
                 id="memory-below-docker-minimum"),
    pytest.param('[limits]\ndisk = "huge"\n', "[limits] disk", 'a size such as "20G"',
                 id="disk-not-a-size"),
    pytest.param("[limits]\ndisk = true\n", "[limits] disk", "or false", id="disk-true"),
    pytest.param("[limits]\nlog_size = -5\n", "[limits] log_size", "not -5",
                 id="log-size-negative"),
    pytest.param('[limits]\nlog_size = "0"\n', "[limits] log_size", "a size above 0",
                 id="log-size-zero"),
    pytest.param('[limits]\nuser = "0:0"\n', "[limits] user", "never run as root",
                 id="user-root"),
    pytest.param('[limits]\nuser = "admin"\n', "[limits] user", "numeric UID",
                 id="user-not-numeric"),
    pytest.param("[intake]\nmax_filez = 3\n", "[intake] max_filez",
                 "did you mean 'max_files'", id="intake-unknown-key"),
    pytest.param('[intake]\nmax_files = "many"\n', "[intake] max_files", "whole number",
                 id="intake-wrong-type"),
    pytest.param('[run]\ntimout = "2h"\n', "[run] timout", "did you mean 'timeout'",
                 id="run-misspelt-key"),
    pytest.param('[run]\ntimeout = "soon"\n', "[run] timeout", "a duration such as",
                 id="run-bad-duration"),
    pytest.param("[run]\ntimeout = 0\n", "[run] timeout", "a duration", id="run-zero-timeout"),
    pytest.param('[run]\nkeep_runs = "yes"\n', "[run] keep_runs", "true or false, not 'yes'",
                 id="keep-runs-string"),
    pytest.param("[images]\napproved = 3\n", "[images] approved", "a list of strings",
                 id="images-approved-number"),
    pytest.param('[env]\nallow = "LANG"\n', "[env] allow", "a list of strings",
                 id="env-allow-string"),
    pytest.param("[policy]\nrequire_sign_off = 1\n", "[policy] require_sign_off",
                 "true or false", id="sign-off-number"),
    pytest.param("[workflows]\nmirror = 5\n", "[workflows] mirror", "a path",
                 id="mirror-number"),
    pytest.param('[engines]\ncwll = "toil"\n', "[engines] cwll", "did you mean 'cwl'",
                 id="engines-unknown-key"),
    pytest.param('[engines]\nallow = "toil"\n', "[engines] allow", "a list of strings",
                 id="engines-allow-string"),
    pytest.param("[engines.cwltool]\nparalel = true\n", "[engines.cwltool] paralel",
                 "did you mean 'parallel'", id="cwltool-unknown-key"),
    pytest.param('[engines.toil]\nretry_count = "3"\n', "[engines.toil] retry_count",
                 "a whole number of at least 0", id="toil-wrong-type"),
    pytest.param('[engines.snakemake]\nexecutor = "k8s"\n', "[engines.snakemake] executor",
                 "one of 'local', 'slurm'", id="snakemake-bad-executor"),
    pytest.param('[engines.nextflow]\nplugins = "nf-x"\n', "[engines.nextflow] plugins",
                 "a list of strings", id="nextflow-wrong-type"),
    pytest.param('[datasets]\n"_:localid:tre:ds1" = 3\n', "[datasets] _:localid:tre:ds1",
                 "a path on this host", id="dataset-not-a-string"),
    pytest.param('[secrets]\ntoken = { envv = "X" }\n', "[secrets] token",
                 '{ env = "NAME" }', id="secret-bad-table"),
    pytest.param('[secrets]\ntoken = { file = "absent-token" }\n', "[secrets] token",
                 "cannot read the secret file", id="secret-file-missing"),
    pytest.param("[imagez]\napproved = []\n", "[imagez]", "did you mean 'images'",
                 id="unknown-section"),
    pytest.param("limits = 3\n", "[limits]", "must be a table", id="section-not-a-table"),
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD)
def test_a_bad_value_is_exit_2_naming_the_file_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cratebridge: error: {path} ") and key in err, err
    assert expected in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "key", "expected"), BAD[:3])
def test_json_error_is_one_document(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert main(["config", "check", str(path), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "UsageError" and doc["exit_code"] == 2
    assert doc["where"] == f"{path} {key}" and expected in doc["message"]


def test_run_with_a_bad_config_gives_the_same_message_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, '[run]\nruns_dir = "runs"\n[limits]\ncpus = "lots"\n')
    checked = cli("config", "check", str(path))
    ran = cli("run", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "out"),
              "--config", str(path))
    assert checked.returncode == ran.returncode == 2
    assert ran.stderr == checked.stderr
    assert f"{path} [limits] cpus: must be a number" in ran.stderr
    assert "Traceback" not in ran.stderr + checked.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


# -- good files ------------------------------------------------------------------------------

FULL = """
[run]
runs_dir = "runs"
timeout = "1.5h"
keep_runs = false
[engines]
cwl = "toil"
allow = ["toil", "my-engine"]
[engines.toil]
batch_system = "slurm"
args = ["--maxJobs", "10"]
retry_count = 1
[engines.my-engine]                # a third-party plugin: its table is handed over as given
anything = { goes = [1, 2] }
[intake]
max_total_bytes = "1G"
max_files = 10
max_ratio = 50
[workflows]
mirror = "mirror"
[images]
approved = ["cratebridge/*"]
[policy]
require_sign_off = true
[datasets]
"_:localid:tre:ds1" = "/data/ds1"
[limits]
memory = "512M"
cpus = 0.5
pids = 64
disk = "500M"
log_size = "1 KiB"
user = 2000
[env]
allow = ["LANG"]
[secrets]
inline = "s3cr3t"
from_file = { file = "token" }
from_env = { env = "CRATEBRIDGE_TEST_SECRET" }
"""


def test_a_full_config_is_valid_and_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CRATEBRIDGE_TEST_SECRET", "from-the-env")
    (tmp_path / "token").write_text("t0ken\n")
    path = write(tmp_path, FULL)
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: valid"

    config = load_config(path)
    assert config.runs_dir == (tmp_path / "runs").resolve()
    assert config.timeout == 5400 and config.keep_runs is False
    assert config.engines == {"cwl": "toil"}
    assert config.allowed_engines == ("toil", "my-engine")
    assert config.engine_settings["my-engine"] == {"anything": {"goes": [1, 2]}}
    assert config.engine_settings["toil"]["args"] == ["--maxJobs", "10"]
    assert config.intake.max_total_bytes == 1024**3 and config.intake.max_files == 10
    assert config.intake.max_ratio == 50.0
    assert config.workflow_mirror == (tmp_path / "mirror").resolve()
    assert config.limits.memory == "512M" and config.limits.cpus == 0.5
    assert config.limits.pids == 64
    assert config.limits.disk == 500 * 1024**2 and config.limits.log_bytes == 1024
    assert config.container_user == "2000:2000" and config.env_allow == ("LANG",)
    assert config.secrets == {"inline": "s3cr3t", "from_file": "t0ken",
                              "from_env": "from-the-env"}


def test_json_check_shows_effective_settings_with_secrets_hidden(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[secrets]\ntoken = "s3cr3t"\n[limits]\ndisk = false\n')
    assert main(["config", "check", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert doc["valid"] is True and "s3cr3t" not in out
    assert doc["config"]["secrets"] == {"token": "<secret:token>"}
    assert doc["config"]["limits"]["disk"] is False  # no budget
    assert doc["config"]["limits"]["log_size"] == 16 * 1024**2  # the default
    assert doc["config"]["engines"]["cwl"] == "cwltool"


def test_config_show_prints_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CRATEBRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("CRATEBRIDGE_RUNS_DIR", str(tmp_path))
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "[limits]" in out and 'memory = "2g"' in out and f'runs_dir = "{tmp_path}"' in out


@pytest.mark.parametrize(("text", "size"), [
    ("0", 0), ("4096", 4096), ("4096B", 4096), ("1k", 1024), ("1K", 1024), ("1KiB", 1024),
    ("500M", 500 * 1024**2), ("500mb", 500 * 1024**2), ("20G", 20 * 1024**3),
    ("1.5GiB", 3 * 1024**3 // 2), ("2 T", 2 * 1024**4), (" 3g ", 3 * 1024**3),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "1X", "1iB", "-1", "1.5.5G", "G"])
def test_not_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text", ["none", "None", "NONE"])
def test_disk_none_is_no_budget(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, f'[limits]\ndisk = "{text}"\n')).limits.disk is None


def test_schema_defaults_are_the_defaults_used() -> None:
    effective = describe(Config())
    for section in SECTIONS.values():
        for key in section.keys:
            if key.default is not None:
                shown = effective[section.name][key.name]
                assert shown == key.default, f"[{section.name}] {key.name}"


# -- the docs, tested against the schema ------------------------------------------------------

def toml_blocks(page: str) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", (DOCS / page).read_text(), re.S | re.M)


def keys_in(data: dict[str, object]) -> set[tuple[str, str]]:
    """(table, key) for every key of a parsed file; ``[engines.NAME]`` tables by name."""
    found = set()
    for name, table in data.items():
        assert isinstance(table, dict), name
        for key, value in table.items():
            if SECTIONS[name].tables is not None and isinstance(value, dict):
                found |= {(f"engines.{key}", k) for k in value}
            else:
                found.add((name, key))
    return found


def declared() -> set[tuple[str, str]]:
    return {(s.name, k.name) for s in (*SECTIONS.values(), *ENGINE_TABLES.values())
            for k in s.keys}


def documented() -> set[tuple[str, str]]:
    import tomllib

    blocks = toml_blocks("configuration.md")
    assert blocks, "docs/configuration.md has no TOML example"
    return set().union(*(keys_in(tomllib.loads(b)) for b in blocks))


def test_the_docs_example_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken")
    for number, block in enumerate(toml_blocks("configuration.md")):
        text = re.sub(r'file = "[^"]*"', f'file = "{token}"', block)
        path = write(tmp_path, text, f"example-{number}.toml")
        load_config(path)
        assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err


def test_every_declared_key_is_documented() -> None:
    documented_keys = documented()
    for table, key in sorted(declared()):
        if (table, key) in documented_keys:
            continue
        engine = table.removeprefix("engines.")
        assert engine in ENGINE_PAGES, f"[{table}] {key} is not in docs/configuration.md"
        page = (DOCS / ENGINE_PAGES[engine]).read_text()
        assert re.search(rf"`{key}`|^{key}\s*=", page, re.M), \
            f"[{table}] {key} is documented neither in configuration.md nor {ENGINE_PAGES[engine]}"


def test_every_documented_key_is_declared() -> None:
    free = {s.name for s in SECTIONS.values() if s.free is not None}
    for table, key in sorted(documented()):
        assert table in free or (table, key) in declared(), f"[{table}] {key} is not declared"


@pytest.mark.parametrize("page", OPERATOR_PAGES)
def test_every_operator_toml_block_in_the_docs_fits_the_schema(page: str) -> None:
    import tomllib

    for block in toml_blocks(page):
        check(tomllib.loads(block), f"docs/{page}")
