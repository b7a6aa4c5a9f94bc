"""Fast checks of the pieces that need neither Docker nor a Snakemake run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cratebridge_snakemake.jobs import JobSpec, docker_argv, image_of
from cratebridge_snakemake.workflow import config_value


@pytest.mark.parametrize(("raw", "bound"), [
    ("42", 42), ("-3", -3), ("0.25", 0.25), ("1e3", 1000.0), ("true", True), ("False", False),
    ("007", "007"), ("hello crate", "hello crate"), ("", ""), (7, 7), (True, True),
    (0.5, 0.5), ("1.2.3", "1.2.3"),
])
def test_config_values(raw: object, bound: object) -> None:
    assert config_value(raw) == bound
    assert type(config_value(raw)) is type(bound)


def test_image_of_drops_the_docker_scheme() -> None:
    assert image_of("docker://cratebridge/busybox:1") == "cratebridge/busybox:1"
    assert image_of("cratebridge/busybox:1") == "cratebridge/busybox:1"
    assert image_of(None) is None


def test_docker_argv_mounts_workdir_rw_and_everything_else_ro(tmp_path: Path) -> None:
    work, flow, data = tmp_path / "work", tmp_path / "flow", tmp_path / "in" / "data.txt"
    for folder in (work, flow, data.parent):
        folder.mkdir(parents=True)
    data.write_text("x")
    spec = JobSpec(token="t0", jobid=1, rule="r", name="r", wildcards={},
                   inputs=[("data", str(data)), ("mid", str(work / "mid.txt")),
                           ("code", str(flow / "x.py"))],
                   outputs=[("output", str(work / "out.txt"))], logs=[],
                   image="cratebridge/busybox:1", image_source="container",
                   shellcmd="cat {input} > out.txt", workdir=str(work))
    argv = docker_argv(spec, str(flow))
    assert argv[:3] == ["docker", "run", "--rm"]
    assert "--label=org.cratebridge.step=t0" in argv
    mounts = [a for a in argv if a.startswith("--volume=")]
    assert mounts == [f"--volume={work}:{work}", f"--volume={flow}:{flow}:ro",
                      f"--volume={data}:{data}:ro"]
    assert argv[-3:] == ["cratebridge/busybox:1", "-c", "set -eu\ncat {input} > out.txt"]
