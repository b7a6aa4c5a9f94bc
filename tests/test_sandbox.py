"""The sandbox every step runs in: the shim's rewriting, and probes from inside real containers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cratebridge.containers.hardening import rewrite_run
from cratebridge.containers.ledger import read_ledger
from cratebridge.containers.sandbox import RUN_LABEL, Limits, Sandbox, find_docker

IMAGE = "cratebridge/busybox:1"


def sandbox_for(tmp_path: Path, **kw: object) -> Sandbox:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return Sandbox(run_id=f"test-{tmp_path.name}", docker=find_docker() or "docker",
                   ledger=tmp_path / "sandbox" / "ledger.jsonl", writable=(work,),
                   limits=Limits(memory="128m", cpus=0.5, pids=32), **kw)  # type: ignore[arg-type]


def test_rewrite_drops_engine_flags_and_adds_hardening(tmp_path: Path) -> None:
    sb = sandbox_for(tmp_path)
    args = ["-i", "--net=host", "--privileged", "--cap-add=SYS_ADMIN", "--user=0:0",
            "--security-opt", "seccomp=unconfined", "--memory=64g", "--pid=host",
            f"--mount=type=bind,source={tmp_path / 'work'},target=/out",
            "-v", "/etc:/host-etc:rw", IMAGE, "sh", "-c", "echo hi"]
    argv, image, _, writable = rewrite_run(args, sb)
    assert image == IMAGE and argv[-3:] == ["sh", "-c", "echo hi"]
    flags = argv[: argv.index(IMAGE)]
    for banned in ("--net=host", "--privileged", "--cap-add=SYS_ADMIN", "--user=0:0",
                   "--security-opt=seccomp=unconfined", "--memory=64g", "--pid=host"):
        assert banned not in flags
    for wanted in ("--network=none", "--cap-drop=ALL", "--security-opt=no-new-privileges",
                   "--user=1000:1000", "--memory=128m", "--pids-limit=32", "--read-only",
                   f"--label={RUN_LABEL}={sb.run_id}"):
        assert wanted in flags
    assert "-v=/etc:/host-etc:ro" in flags  # outside the work folder: forced read-only
    assert writable == [tmp_path / "work"]


def test_combined_short_flags_are_parsed(tmp_path: Path) -> None:
    argv, image, _, _ = rewrite_run(["-it", "--rm", IMAGE, "true"], sandbox_for(tmp_path))
    assert image == IMAGE and "-i" in argv and "-t" in argv


def shim(sb: Sandbox, tmp_path: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = sb.install(tmp_path / "sandbox")
    return subprocess.run([sys.executable, "-m", "cratebridge.containers.shim", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          check=False, **kw)  # type: ignore[call-overload]


@pytest.mark.docker
def test_pull_and_build_are_refused(tmp_path: Path, docker_available: bool) -> None:
    sb = sandbox_for(tmp_path)
    for command in (["pull", "alpine"], ["build", "."], ["image", "pull", "x"], ["load"]):
        done = shim(sb, tmp_path, *command)
        assert done.returncode == 125 and "not allowed" in done.stderr
    assert len(read_ledger(sb.ledger).refusals) == 4


@pytest.mark.docker
def test_missing_image_is_refused_not_pulled(tmp_path: Path, docker_available: bool) -> None:
    done = shim(sandbox_for(tmp_path), tmp_path, "run", "--rm", "no-such/image:404", "true")
    assert done.returncode == 125 and "never pulls" in done.stderr


@pytest.mark.docker
def test_unapproved_image_is_refused(tmp_path: Path, docker_available: bool) -> None:
    sb = sandbox_for(tmp_path, approved_images=("tre/approved/*",))
    done = shim(sb, tmp_path, "run", "--rm", IMAGE, "true")
    assert done.returncode == 125 and "not approved" in done.stderr


PROBE = r"""
set +e
echo "uid=$(id -u)"
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
echo "interfaces=$(ls /sys/class/net | tr '\n' ' ')"
echo "connect=$(nc -w 2 172.17.0.1 2375 </dev/null 2>&1)"
echo x > /input/data.txt 2>/dev/null; echo "write_input=$?"
echo x > /etc/owned 2>/dev/null; echo "write_root=$?"
echo x > /out/ok.txt; echo "write_out=$?"
chown 0 /out/ok.txt 2>/dev/null; echo "chown=$?"
mknod /tmp/dev c 1 3 2>/dev/null; echo "mknod=$?"
"""


@pytest.mark.docker
def test_probe_attempts_fail_from_inside(tmp_path: Path, docker_available: bool) -> None:
    sb = sandbox_for(tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.txt").write_text("precious\n")
    out = tmp_path / "work" / "out"
    out.mkdir()
    done = shim(sb, tmp_path, "run", "--rm", "--user=0:0", "--net=host", "--privileged",
                "-v", f"{inputs}:/input", "-v", f"{out}:/out", IMAGE, "sh", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.split("\n") if "=" in line)
    caps = {k: v for k, v in (line.split(":\t") for line in done.stdout.splitlines()
                              if line.startswith(("CapEff", "NoNewPrivs")))}
    assert seen["uid"] == "1000"
    assert caps["CapEff"].strip("0") == "" and caps["NoNewPrivs"].strip() == "1"
    assert seen["interfaces"].split() == ["lo"]
    assert "Network is unreachable" in seen["connect"]
    assert seen["write_input"] != "0" and seen["write_root"] != "0"
    assert seen["write_out"] == "0"
    assert seen["chown"] != "0" and seen["mknod"] != "0"
    assert (inputs / "data.txt").read_text() == "precious\n"
    entry = read_ledger(sb.ledger).entries[0]
    assert entry.exit_code == 0 and entry.container.image_id.startswith("sha256:")


@pytest.mark.docker
def test_running_container_is_hardened_when_inspected(tmp_path: Path,
                                                      docker_available: bool) -> None:
    sb = sandbox_for(tmp_path)
    env = {**os.environ, **sb.install(tmp_path / "sandbox")}
    proc = subprocess.Popen([sys.executable, "-m", "cratebridge.containers.shim", "run", "--rm",
                             IMAGE, "sleep", "30"], env=env)
    try:
        for _ in range(100):
            ids = sb.containers()
            if ids:
                break
            time.sleep(0.1)
        assert ids, "the container did not start"
        info = json.loads(subprocess.run([sb.docker, "inspect", ids[0]], capture_output=True,
                                         text=True, check=True).stdout)[0]
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == 128 * 1024 * 1024 and host["PidsLimit"] == 32
        assert host["NanoCpus"] == 500_000_000
        assert info["Config"]["User"] == "1000:1000"
    finally:
        sb.stop_all()
        proc.wait(30)
    assert sb.containers() == []


def test_shim_pass_through_imports_no_sandbox_machinery(tmp_path: Path) -> None:
    code = ("import sys; import cratebridge.containers.shim; "
            "heavy = [m for m in ('cratebridge.containers.sandbox', "
            "'cratebridge.containers.hardening', 'dataclasses', 'subprocess') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
