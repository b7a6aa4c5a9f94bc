"""`cratebridge images`: the demo and test images, listed and built from the package alone."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cratebridge import cli, images
from cratebridge.errors import EngineUnavailable

NAMES = ["cratebridge/busybox:1", "cratebridge/python:3.11", "cratebridge/bash:1"]
try:  # with cratebridge-snakemake installed, its jobs' image too
    SNAKEMAKE: str | None = f"cratebridge/snakemake:{importlib.metadata.version('snakemake')}"
    NAMES.append(SNAKEMAKE)
except importlib.metadata.PackageNotFoundError:
    SNAKEMAKE = None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cratebridge.cli", *args],
                          capture_output=True, text=True, check=False)


class FakeRunner:
    """A fake :class:`images.Runner`: records each command; "debootstrap" lays out a tiny root."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str] | None]] = []
        self.root_at_import: set[str] = set()

    def __call__(self, argv: Sequence[str], *, feed: Sequence[str] | None = None) -> None:
        self.calls.append((list(argv), list(feed) if feed else None))
        if argv[0] == "debootstrap":
            root = Path(argv[-2])
            for folder in ("tmp", "var/tmp", "usr/bin", "var/cache/apt/archives",
                           "var/lib/apt/lists/partial", "usr/share/doc/bash", "usr/share/man",
                           "usr/share/locale/de"):
                (root / folder).mkdir(parents=True, exist_ok=True)
            (root / "var/cache/apt/archives/bash.deb").write_text("x")
            (root / "usr/bin/python3").write_text("")
        if feed is not None:
            root = Path(feed[2])
            self.root_at_import = {str(p.relative_to(root)) for p in root.rglob("*")}
            assert oct((root / "tmp").stat().st_mode & 0o7777) == "0o1777"
            assert (root / "usr/bin/python").readlink() == Path("python3")


@pytest.fixture
def prefix(docker_available: bool) -> Iterator[str]:
    """A tag prefix of this test only; whatever it tagged is untagged afterwards."""
    mark = f"cratebridge-test-{uuid.uuid4().hex[:8]}/"
    yield mark
    listed = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, check=False).stdout.split()
    tags = [t for t in listed if t.startswith(mark)]
    if tags:  # by tag, never by id: the real images may share it
        subprocess.run(["docker", "rmi", *tags], capture_output=True, check=False)


@pytest.mark.docker
def test_list_json_shows_the_images_present(docker_available: bool) -> None:
    done = run_cli("images", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)["images"]}
    assert sorted(rows) == sorted(NAMES)
    for name in NAMES:
        assert rows[name]["present"] and rows[name]["image_id"].startswith("sha256:")
    assert rows["cratebridge/bash:1"]["image_id"] == rows["cratebridge/python:3.11"]["image_id"]
    assert rows["cratebridge/busybox:1"]["needs"][0]["package"] == "busybox-static"


@pytest.mark.docker
def test_build_busybox_under_a_prefix_then_present(prefix: str) -> None:
    tag = prefix + "cratebridge/busybox:1"
    done = run_cli("images", "build", "cratebridge/busybox:1", "--tag-prefix", prefix, "--json")
    assert done.returncode == 0, done.stderr
    [built] = json.loads(done.stdout)["images"]
    assert built["tag"] == tag and built["action"] == "built"
    shell = subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", "1000",
                            tag, "sh", "-c", "touch /tmp/x && id -un && python 2>&1"],
                           capture_output=True, text=True, check=False)
    assert shell.stdout.startswith("user\n") and "not found" in shell.stdout
    again = run_cli("images", "build", "cratebridge/busybox:1", "--tag-prefix", prefix,
                    "--json")
    assert json.loads(again.stdout)["images"][0]["action"] == "present"
    listed = json.loads(run_cli("images", "list", "cratebridge/busybox:1",
                                "--tag-prefix", prefix, "--json").stdout)["images"]
    assert listed[0]["tag"] == tag and listed[0]["present"]


@pytest.mark.docker
def test_missing_busybox_names_the_debian_package(
        tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "busybox"
    monkeypatch.setattr(images, "BUSYBOX", absent)
    code = cli.main(["images", "build", "--force", "--tag-prefix", prefix, "--json"])
    assert code == EngineUnavailable.exit_code == 5
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["where"] == str(absent)
    assert "apt-get install -y busybox-static" in doc["message"]
    assert "apt-get install -y busybox-static" in err and "Traceback" not in err


def test_docker_daemon_not_running_says_so(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    gone = f"unix://{tmp_path / 'no-daemon.sock'}"
    done = subprocess.run([sys.executable, "-m", "cratebridge.cli", "images", "list", "--json"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "DOCKER_HOST": gone})
    assert done.returncode == 5
    doc = json.loads(done.stdout)
    assert doc["where"] == "docker" and "Docker daemon is not running" in doc["message"]


@pytest.mark.docker
def test_unknown_image_is_a_usage_error(docker_available: bool) -> None:
    done = run_cli("images", "build", "cratebridge/nope:1", "--json")
    assert done.returncode == 2
    assert "cratebridge/busybox:1" in json.loads(done.stdout)["message"]


def test_python_recipe_runs_what_the_script_ran(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    monkeypatch.setattr(images.Need, "found", lambda self: True)
    fake = FakeRunner()
    recipe = images.DebootstrapImage(workdir=tmp_path)
    recipe.build("docker", "cratebridge/python:3.11", fake)
    [(debootstrap, _), (docker_import, feed)] = fake.calls
    root = debootstrap[-2]
    assert debootstrap == ["debootstrap", "--variant=minbase",
                           "--include=python3-minimal,procps", "bookworm", root,
                           "http://deb.debian.org/debian"]
    assert Path(root).parent == tmp_path and Path(root).name.startswith("cratebridge-rootfs.")
    assert feed == ["tar", "-C", root, "-c", "."]
    assert docker_import == [
        "docker", "import",
        "-c", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "-c", 'CMD ["/bin/bash"]', "-", "cratebridge/python:3.11"]
    # caches, docs, man pages and locales were gone before the import; the root after it
    assert {"var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc"} \
        <= fake.root_at_import
    assert not {"var/cache/apt/archives/bash.deb", "var/lib/apt/lists/partial",
                "usr/share/doc/bash", "usr/share/locale/de"} & fake.root_at_import
    assert not Path(root).exists()


def test_build_tags_the_alias_after_the_python_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.Need, "found", lambda self: True)
    monkeypatch.setenv("DEBIAN_MIRROR", "http://mirror.example/debian")
    fake = FakeRunner()

    class FakeRecipe(images.DebootstrapImage):
        def build(self, docker: str, tag: str, run: images.Runner) -> None:
            run(["built", tag])

    monkeypatch.setattr("cratebridge.containers.sandbox.image_id", lambda docker, tag: None)
    done = images.build("docker", ["cratebridge/bash:1"], prefix="p/", recipes=(
        images.BusyboxImage(), FakeRecipe()), run=fake)
    assert [c for c, _ in fake.calls] == [["built", "p/cratebridge/python:3.11"],
                                         ["docker", "tag", "p/cratebridge/python:3.11",
                                          "p/cratebridge/bash:1"]]
    assert [d.action for d in done] == ["built"]


def test_debootstrap_mirror_comes_from_the_environment(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.Need, "found", lambda self: True)
    monkeypatch.setenv("DEBIAN_MIRROR", "http://mirror.example/debian")
    fake = FakeRunner()
    images.DebootstrapImage(workdir=tmp_path).build("docker", "t", fake)
    assert fake.calls[0][0][-1] == "http://mirror.example/debian"


def test_missing_debootstrap_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    fake = FakeRunner()
    with pytest.raises(EngineUnavailable, match=r"apt-get install -y debootstrap"):
        images.DebootstrapImage().build("docker", "t", fake)
    assert fake.calls == []


class ArchiveRunner:
    """A fake :class:`images.Runner` that records each command and lists a fed tar archive."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.members: dict[str, tarfile.TarInfo] = {}

    def __call__(self, argv: Sequence[str], *, feed: Sequence[str] | None = None) -> None:
        self.calls.append(list(argv))
        if feed is not None:
            assert feed[0] == "cat"
            with tarfile.open(feed[1]) as archive:
                self.members = {m.name: m for m in archive.getmembers()}


def test_snakemake_recipe_copies_the_stdlib_and_the_installed_distributions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if SNAKEMAKE is None:
        pytest.skip("snakemake is not installed in this environment")
    stdlib = tmp_path / "python3.11"
    for folder in ("json", "test", "__pycache__"):
        (stdlib / folder).mkdir(parents=True)
        (stdlib / folder / "__init__.py").write_text("")
    monkeypatch.setattr("cratebridge.containers.sandbox.image_id",
                        lambda docker, tag: "sha256:base")
    recipe = images.snakemake_image()
    assert recipe is not None and recipe.name == SNAKEMAKE
    fake = ArchiveRunner()
    images.SnakemakeImage(name=recipe.name, version=recipe.version, stdlib=stdlib,
                          workdir=tmp_path).build("docker", "t/snakemake:1", fake)
    [create, copy, start, commit, remove] = fake.calls
    name = create[3]
    assert create[:9] == ["docker", "create", "--name", name, "--network=none",
                          "--pull=never", "--user=0", "cratebridge/python:3.11", "sh"]
    assert "python3 -m compileall" in create[-1]
    assert copy == ["docker", "cp", "-", f"{name}:/"]
    assert start == ["docker", "start", "-a", name]
    assert commit[-2:] == [name, "t/snakemake:1"]
    assert f"ENV PYTHONPATH={images.SITE_DIR}" in commit
    assert f"LABEL {images.SNAKEMAKE_LABEL}={recipe.version}" in commit
    assert remove == ["docker", "rm", "-f", name]
    stdlib_in = stdlib.relative_to("/").as_posix()
    assert f"{stdlib_in}/json/__init__.py" in fake.members
    assert not any(m.startswith((f"{stdlib_in}/test/", f"{stdlib_in}/__pycache__/"))
                   for m in fake.members)
    site = images.SITE_DIR.lstrip("/")
    assert f"{site}/snakemake/__init__.py" in fake.members
    assert f"{site}/snakemake_interface_executor_plugins/__init__.py" in fake.members
    try:  # an optional distribution comes along when it is installed
        importlib.metadata.distribution("pandas")
        assert f"{site}/pandas/__init__.py" in fake.members
    except importlib.metadata.PackageNotFoundError:
        assert not any(m.startswith(f"{site}/pandas/") for m in fake.members)
    assert not any("__pycache__" in m or "/bin/" in m for m in fake.members if m.startswith(site))
    assert all(m.uid == 0 and m.gid == 0 for m in fake.members.values())
    assert not list(tmp_path.glob("cratebridge-snakemake-*"))  # the archive is gone


@pytest.mark.docker
def test_snakemake_image_runs_the_installed_snakemake_offline(docker_available: bool) -> None:
    if SNAKEMAKE is None:
        pytest.skip("snakemake is not installed in this environment")
    if subprocess.run(["docker", "image", "inspect", SNAKEMAKE], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip(f"{SNAKEMAKE} is not built: run `cratebridge images build`")
    done = subprocess.run(
        ["docker", "run", "--rm", "--network=none", "--user=1000:1000", "--read-only",
         "--tmpfs=/tmp", "--env=HOME=/tmp", SNAKEMAKE, "sh", "-c",
         "python3 -m snakemake --version && python3 -c 'import sqlite3, ssl, yaml'"],
        capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == importlib.metadata.version("snakemake")
