"""The distributions as a user gets them: built, installed in a fresh venv, run from there.

Each project (the core and every plugin under plugins/) is built as ``python -m build``
does it, an sdist and then a wheel from that sdist, from a copy of its folder. The wheels
are installed, not editable, into a fresh venv (their dependencies from the package
index), cratebridge-cwl without its ``toil`` extra; the demo request then runs with that
venv's ``cratebridge`` and must give the outputs the development venv gives. This
catches what an editable install hides: a module or file left out of a wheel, a README
missing from an sdist, a dependency only the development venv has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

import pytest

from cratebridge import __version__, api

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "fixtures" / "crates" / "demo-request.zip"
PLUGINS = sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))
#: What the toil engine must tell an operator to run when Toil is missing.
INSTALL_TOIL = "pip install 'cratebridge-cwl[toil]'"
#: The builder's own venv: `build`, and the setuptools every pyproject asks for.
BUILD_TOOLS = ("build>=1", "setuptools>=77")
TIMEOUT = 900


@dataclass(frozen=True)
class Dist:
    """One project's built sdist and wheel, and its source folder."""

    source: Path
    sdist: Path
    wheel: Path


def _run(command: list[str | Path], cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n" \
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _fresh_venv(where: Path, *packages: str | Path) -> Path:
    """A new venv at ``where`` with ``packages`` installed; its ``bin`` folder."""
    _run([sys.executable, "-m", "venv", where])
    if packages:
        _run([where / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", *packages])
    return where / "bin"


def _copy_project(source: Path, dest: Path) -> Path:
    """What building needs of a project folder, without tests or earlier build output."""
    ignore = shutil.ignore_patterns("tests", "build", "dist", "*.egg-info", "__pycache__", ".*")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(source / name, dest / name)
    shutil.copytree(source / "src", dest / "src", ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dist]:
    """Every project's sdist and the wheel built from it, by distribution file stem."""
    root = tmp_path_factory.mktemp("build")
    out = root / "dist"
    build = _fresh_venv(root / "build-venv", *BUILD_TOOLS) / "python"
    built: dict[str, Dist] = {}
    for project in (REPO, *PLUGINS):
        before = set(out.glob("*")) if out.is_dir() else set()
        source = _copy_project(project, root / "src" / project.name)
        _run([build, "-m", "build", "--no-isolation", "--outdir", out, source])
        new = set(out.glob("*")) - before
        (sdist,) = (f for f in new if f.name.endswith(".tar.gz"))
        (wheel,) = (f for f in new if f.suffix == ".whl")
        built[wheel.name.split("-")[0]] = Dist(project, sdist, wheel)
    shutil.rmtree(root / "build-venv")
    return built


@pytest.fixture(scope="module")
def venv(dists: dict[str, Dist], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the built wheels (not editable); its ``bin`` folder."""
    wheels = [d.wheel for d in dists.values()]
    where = tmp_path_factory.mktemp("installed") / "venv"
    yield _fresh_venv(where, "--find-links", str(wheels[0].parent), *wheels)
    shutil.rmtree(where, ignore_errors=True)  # some 400 MB


def _env(bin_dir: Path) -> dict[str, str]:
    """This environment, less anything pointing at the development venv or its config."""
    dev_bin = Path(sys.prefix) / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
           and not k.startswith("CRATEBRIDGE_")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != dev_bin]
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    return env


def _installed(bin_dir: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The venv's ``cratebridge`` with ``args``, run outside the repository."""
    config = tmp_path / "cratebridge.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n')
    return subprocess.run([str(bin_dir / "cratebridge"), *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=tmp_path, env=_env(bin_dir),
                          timeout=TIMEOUT, check=False)


def _metadata(wheel: Path) -> tuple[dict[str, list[str]], str]:
    """A wheel's METADATA: its headers (each name's values) and its long description."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = HeaderParser().parsestr(archive.read(name).decode())
    headers: dict[str, list[str]] = {}
    for key, value in message.items():
        headers.setdefault(key, []).append(value)
    return headers, str(message.get_payload())


def _outputs(result: Path) -> dict[str, bytes]:
    """A result crate's workflow outputs by their path under ``outputs/``."""
    with zipfile.ZipFile(result) as archive:
        return {n.split("/provenance/outputs/", 1)[1]: archive.read(n)
                for n in archive.namelist()
                if "/provenance/outputs/" in n and not n.endswith("/")}


def test_every_project_is_built(dists: dict[str, Dist]) -> None:
    assert sorted(dists) == sorted(["cratebridge", "cratebridge_cwl", "cratebridge_nextflow",
                                    "cratebridge_snakemake"])


def test_each_sdist_and_wheel_carries_its_readme(dists: dict[str, Dist]) -> None:
    for stem, dist in dists.items():
        readme = (dist.source / "README.md").read_text()
        with tarfile.open(dist.sdist) as sdist:
            top = dist.sdist.name.removesuffix(".tar.gz")
            assert f"{top}/README.md" in sdist.getnames(), f"{dist.sdist.name} has no README.md"
            member = sdist.extractfile(f"{top}/README.md")
            assert member is not None and member.read().decode() == readme, stem
        headers, description = _metadata(dist.wheel)
        assert headers.get("Description-Content-Type") == ["text/markdown"], stem
        assert description.strip() == readme.strip(), f"{stem}: the wheel's description"


def test_toil_is_an_extra_of_cratebridge_cwl(dists: dict[str, Dist]) -> None:
    headers, _ = _metadata(dists["cratebridge_cwl"].wheel)
    assert "toil" in headers.get("Provides-Extra", [])
    toil = [r for r in headers.get("Requires-Dist", []) if r.startswith("toil")]
    assert toil, "cratebridge-cwl[toil] requires no toil"
    assert all('extra == "toil"' in r for r in toil), toil


def test_the_wheels_are_installed_not_editable_and_without_toil(
        venv: Path, tmp_path: Path) -> None:
    code = ("import importlib.util, json\n"
            "import cratebridge, cratebridge_cwl, cratebridge_nextflow, cratebridge_snakemake\n"
            "print(json.dumps({'files': [m.__file__ for m in (cratebridge, cratebridge_cwl,"
            " cratebridge_nextflow, cratebridge_snakemake)],"
            " 'toil': importlib.util.find_spec('toil') is not None}))\n")
    done = _run([venv / "python", "-c", code], cwd=tmp_path, env=_env(venv))
    found = json.loads(done.stdout)
    site = venv.parent / "lib"
    assert all(Path(f).is_relative_to(site) for f in found["files"]), found["files"]
    assert found["toil"] is False


def test_version_from_the_installed_wheels(venv: Path, tmp_path: Path) -> None:
    done = _installed(venv, tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cratebridge {__version__} "), done.stdout


def test_engines_from_the_installed_wheels(venv: Path, tmp_path: Path) -> None:
    done = _installed(venv, tmp_path, "engines", "--json")
    assert done.returncode == 0, done.stderr
    engines = {e["name"]: e for e in json.loads(done.stdout)["engines"]}
    assert set(engines) == {"cwltool", "toil", "snakemake", "nextflow"}
    # every plugin module imports from its wheel, whether or not its engine is here
    assert all(e["language"] for e in engines.values()), engines
    assert engines["cwltool"]["available"] is True, engines["cwltool"]["problem"]
    assert engines["snakemake"]["available"] is True, engines["snakemake"]["problem"]
    toil = engines["toil"]
    assert toil["available"] is False
    assert "Toil is not installed" in toil["problem"] and INSTALL_TOIL in toil["problem"]


@pytest.mark.docker
def test_the_demo_runs_from_the_installed_wheels(venv: Path, tmp_path: Path,
                                                 docker_available: bool) -> None:
    result = tmp_path / "result.zip"
    done = _installed(venv, tmp_path, "run", str(DEMO), "--out", str(result), "--json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "completed"
    # the same request through the development venv (editable installs)
    editable = tmp_path / "editable"
    editable.mkdir()
    (editable / "cratebridge.toml").write_text(f'[run]\nruns_dir = "{editable / "runs"}"\n')
    expected = api.run(DEMO, editable / "result.zip", config=editable / "cratebridge.toml")
    assert expected.exit_code == 0, expected.record.error
    outputs = _outputs(result)
    assert "report.txt" in outputs
    assert outputs == _outputs(editable / "result.zip")
