"""The engine registry: discovery without import, one clear error per failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cratebridge.engines import Engine, EngineInfo, EnginePlan, Registry, RunRecord
from cratebridge.engines.registry import PluginSpec
from cratebridge.errors import EngineUnavailable, FailedToLoadPlugin, UsageError
from cratebridge.intake.request import Language


class FakeSnakemake(Engine):
    """A fake engine, named as one: only its class attributes are used."""

    name = "fake-snake"
    language = Language.SNAKEMAKE

    def info(self) -> EngineInfo:
        return EngineInfo("fake", "0", None)

    def plan(self, request, context) -> EnginePlan:  # type: ignore[no-untyped-def]
        raise AssertionError("not used")

    def run(self, plan, context) -> RunRecord:  # type: ignore[no-untyped-def]
        raise AssertionError("not used")


def test_registry_from_classes_chooses_by_language() -> None:
    registry = Registry.from_classes(FakeSnakemake)
    assert registry.choose(Language.SNAKEMAKE, "fake-snake", {}) == "fake-snake"
    assert registry.choose(Language.SNAKEMAKE, None, {"snakemake": "fake-snake"}) == "fake-snake"


def test_engine_for_another_language_is_refused() -> None:
    registry = Registry.from_classes(FakeSnakemake)
    # asked for by the caller: a usage error (exit 2); chosen by the operator: exit 5
    with pytest.raises(UsageError, match="runs snakemake, but the workflow is cwl") as asked:
        registry.choose(Language.CWL, "fake-snake", {})
    assert asked.value.exit_code == 2 and asked.value.where == "--engine"
    with pytest.raises(EngineUnavailable, match="runs snakemake, but the workflow is cwl"):
        registry.choose(Language.CWL, None, {"cwl": "fake-snake"})


def test_a_plugin_for_another_interface_is_one_clear_error() -> None:
    class Older(FakeSnakemake):
        """A fake engine written for an interface of another major version."""

        name = "older"
        interface = "0.9"

    with pytest.raises(FailedToLoadPlugin, match=r"written for plugin interface 0\.9") as info:
        Registry.from_classes(Older).load("older")
    assert info.value.exit_code == 5


def test_unknown_engine_names_what_is_installed() -> None:
    registry = Registry.from_classes(FakeSnakemake)
    with pytest.raises(EngineUnavailable, match="installed: fake-snake") as info:
        registry.load("nope")
    assert info.value.exit_code == 5


def test_broken_plugin_is_one_clear_error() -> None:
    registry = Registry([PluginSpec("broken", "no_such_module_xyz:Engine", "cratebridge-broken",
                                    "1.0")])
    with pytest.raises(FailedToLoadPlugin) as info:
        registry.load("broken")
    assert "cratebridge-broken" in str(info.value) and "ModuleNotFoundError" in str(info.value)
    assert info.value.exit_code == 5


def test_allow_list_hides_other_engines() -> None:
    registry = Registry([PluginSpec("a", "x:A", "d", "1"), PluginSpec("b", "x:B", "d", "1")],
                        allowed=["b"])
    assert [s.name for s in registry.specs()] == ["b"]
    with pytest.raises(EngineUnavailable, match="not allowed"):
        registry.load("a")


def test_installed_cwltool_plugin_is_discovered_without_import() -> None:
    code = ("import sys; from cratebridge.engines.registry import Registry; "
            "names = [s.name for s in Registry.from_entry_points().specs()]; "
            "assert 'cwltool' in names, names; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('cwltool', 'cratebridge_cwl', 'toil', 'snakemake', 'cratebridge_snakemake', "
            "'cratebridge_nextflow')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_and_engines_import_no_engine(tmp_path: Path) -> None:
    code = ("import sys, contextlib, io; from cratebridge.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help']); main(['engines', '--json'])\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('cwltool', 'toil', 'snakemake', 'schema_salad')]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
