"""The worked example of docs/plugins.md: an engine with a language of its own.

The plugin's files are the code blocks of the docs (checked here), installed with
pip as an operator would (into a throw-away folder put on ``sys.path``), then
run through the conformance kit with real containers and the real validator.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cratebridge.config import load_config
from cratebridge.engines.registry import Registry, language_names
from cratebridge.errors import FailedToLoadPlugin, UnsupportedCrate, UsageError
from cratebridge.intake import parse_request
from cratebridge.testing.kit import EngineConformance

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "fixtures" / "plugins" / "shell-steps"
DOCS = REPO / "docs" / "plugins.md"
#: a documented file: a line "File `PATH`:", a blank line, then a fenced block
_BLOCK = re.compile(r"^File `(?P<path>[^`]+)`:\n\n```[a-z]*\n(?P<body>.*?)^```$", re.M | re.S)


def documented() -> dict[str, str]:
    return {m["path"]: m["body"] for m in _BLOCK.finditer(DOCS.read_text(encoding="utf-8"))}


def test_the_docs_hold_the_example_exactly() -> None:
    blocks = documented()
    plugin = [p for p in EXAMPLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
              and p.suffix in (".toml", ".py")]
    wanted = {p.relative_to(REPO).as_posix() for p in plugin}
    wanted.add("fixtures/plugins/shell-steps/workflows/three-step/steps.sh-steps")
    assert wanted <= set(blocks), f"not in docs/plugins.md: {sorted(wanted - set(blocks))}"
    for path, body in blocks.items():
        assert (REPO / path).read_text(encoding="utf-8") == body, \
            f"docs/plugins.md's block of {path} differs from the file"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example installed with pip, as an operator would (pip builds it in an isolated
    environment from its configured package sources), into a folder on ``sys.path``."""
    source = tmp_path_factory.mktemp("source") / "shell-steps"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(source)], check=True, timeout=600)
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.split(".")[0] == "cratebridge_shell_steps"]:
        del sys.modules[name]


def _python(code: str, site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_the_language_is_found_without_importing_the_plugin(site: Path) -> None:
    _python("import sys; from cratebridge.engines.registry import language_names\n"
            "assert 'shell-steps' in language_names()\n"
            "import contextlib, io; from cratebridge.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])\n"
            "assert not [m for m in sys.modules if m.startswith('cratebridge_shell_steps')]", site)


def test_the_registry_knows_the_language_and_the_engine(site: Path) -> None:
    registry = Registry.from_entry_points()
    shorts = [language.short for language in registry.languages()]
    assert shorts[:3] == ["cwl", "nextflow", "snakemake"] and "shell-steps" in shorts
    language = next(lang for lang in registry.languages() if lang.short == "shell-steps")
    # no built-in default: the engine named like the language runs it
    assert registry.choose(language, None, {}) == "shell-steps"
    assert "shell-steps" in language_names()


def test_an_engine_of_an_unregistered_language_is_refused(site: Path) -> None:
    from cratebridge_shell_steps.engine import ShellStepsEngine

    with pytest.raises(FailedToLoadPlugin, match="not a known language"):
        Registry.from_classes(ShellStepsEngine).load_class("shell-steps")
    registry = Registry.from_classes(ShellStepsEngine, languages=[ShellStepsEngine.language])
    assert registry.load_class("shell-steps") is ShellStepsEngine


def test_the_operator_names_its_engine_and_misspellings_are_refused(
        site: Path, tmp_path: Path) -> None:
    path = tmp_path / "cratebridge.toml"
    path.write_text('[engines]\nshell-steps = "shell-steps"\n')
    assert load_config(path).engines == {"shell-steps": "shell-steps"}
    path.write_text('[engines]\nshell-step = "shell-steps"\n')
    with pytest.raises(UsageError, match=r"did you mean 'shell-steps'\?.*shell-steps"):
        load_config(path)


def test_the_workflow_is_recognised_by_its_language(site: Path, tmp_path: Path) -> None:
    languages = Registry.from_entry_points().languages()
    folder = tmp_path / "three-step"
    shutil.copytree(EXAMPLE / "workflows" / "three-step", folder)
    request = parse_request(folder, languages=languages)
    assert request.workflow.language.short == "shell-steps"
    assert "programmingLanguage" in request.workflow.language_source
    with pytest.raises(UnsupportedCrate, match="none of the languages cratebridge knows"):
        parse_request(folder)  # the built-ins only
    metadata = folder / "ro-crate-metadata.json"
    metadata.write_text(metadata.read_text().replace('"programmingLanguage"', '"about"'))
    request = parse_request(folder, languages=languages)
    assert request.workflow.language.short == "shell-steps"
    assert "from the file name 'steps.sh-steps'" in request.workflow.language_source


@pytest.mark.docker
@pytest.mark.usefixtures("site")
class TestShellStepsConformance(EngineConformance):
    """The kit, every check, on the example installed from the docs."""

    __test__ = True
    engine = "shell-steps"
    workflows = EXAMPLE / "workflows"
    main_file = "steps.sh-steps"
