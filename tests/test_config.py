"""The operator's TOML configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from cratebridge.config import ImagePolicy, load_config
from cratebridge.errors import PolicyRefused, UsageError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cratebridge.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CRATEBRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("CRATEBRIDGE_RUNS_DIR", str(tmp_path))
    config = load_config(None)
    assert config.runs_dir == tmp_path
    assert config.images.approved == () and not config.require_sign_off
    assert config.container_user == "1000:1000"
    assert config.intake.max_total_bytes == 20 * 1024**3


def test_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[run]
runs_dir = "runs"
timeout = "30m"
[engines]
cwl = "toil"
allow = ["toil"]
[engines.toil]
batch_system = "slurm"
[slurm]
broker = "node"
[images]
approved = ["cratebridge/*"]
[policy]
require_sign_off = true
[datasets]
"_:localid:tre:ds1" = "/data/ds1"
[limits]
memory = "1g"
cpus = 0.5
pids = 64
[secrets]
token = "s3cr3t"
"""))
    assert config.runs_dir == (tmp_path / "runs").resolve()
    assert config.timeout == 1800
    assert config.engines == {"cwl": "toil"} and config.allowed_engines == ("toil",)
    assert config.engine_settings["toil"]["batch_system"] == "slurm"
    assert config.slurm_broker == "node"
    assert config.limits.memory == "1g" and config.limits.pids == 64
    assert config.datasets["_:localid:tre:ds1"] == Path("/data/ds1")
    assert config.redact("the token is s3cr3t") == "the token is <secret:token>"


def test_a_slurm_broker_is_on_the_host_or_on_the_node(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[run]\n")).slurm_broker == "host"
    with pytest.raises(UsageError) as info:
        load_config(write(tmp_path, '[slurm]\nbroker = "cluster"\n'))
    assert "broker" in str(info.value) and "node" in str(info.value)


def test_unknown_section_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown section"):
        load_config(write(tmp_path, "[imagez]\napproved = []\n"))


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        load_config(write(tmp_path, "[run\n"))
    assert "cratebridge.toml" in str(info.value) and info.value.exit_code == 2


def test_sign_off_required() -> None:
    from cratebridge.config import Config

    config = Config(require_sign_off=True)
    with pytest.raises(PolicyRefused) as info:
        config.check_sign_off({})
    assert info.value.rule == "policy.require_sign_off" and info.value.exit_code == 4
    config.check_sign_off({"https://w3id.org/shp#SignOff":
                           "http://schema.org/CompletedActionStatus"})


def test_image_policy_patterns_and_pins() -> None:
    policy = ImagePolicy(("cratebridge/*", "tre/tool:1@sha256:abc"))
    policy.check("cratebridge/busybox:1", "sha256:zzz")
    policy.check("tre/tool:1", "sha256:abc")
    with pytest.raises(PolicyRefused, match="approved only at sha256:abc"):
        policy.check("tre/tool:1", "sha256:other")
    with pytest.raises(PolicyRefused, match="not on the operator's approved list"):
        policy.check("evil/miner:latest", "sha256:1")


def test_a_registered_language_names_its_engine(tmp_path: Path) -> None:
    # the short names of registered languages come from their entry points' names
    path = write(tmp_path, '[engines]\ncwl = "toil"\ntoy = "toy-engine"\n')
    assert load_config(path, languages=["toy"]).engines == {"cwl": "toil", "toy": "toy-engine"}
    with pytest.raises(UsageError, match=r"\[engines\] toy: unknown key") as info:
        load_config(path, languages=[])
    assert "takes cwl, nextflow, snakemake, allow" in str(info.value)
    path = write(tmp_path, '[engines]\ntoys = "toy-engine"\n')
    with pytest.raises(UsageError, match=r"did you mean 'toy'\?\); \[engines\] takes .*toy"):
        load_config(path, languages=["toy"])
