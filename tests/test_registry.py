"""The engine registry: discovery without import, one clear error per failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cratebridge.engines import Engine, EngineInfo, EnginePlan, Registry, RunRecord
from cratebridge.engines.registry import ENTRY_POINT_GROUP, PluginSpec, discover
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


# -- languages -----------------------------------------------------------------------------

TOY = Language("https://example.org/toy", "toy", "Toy", "https://example.org/toy",
               files=("*.toy",), words=("toy language",))


class FakeToy(FakeSnakemake):
    """A fake engine of a language of its own."""

    name = "toy"
    language = TOY


def test_languages_are_the_builtins_then_the_registered_ones() -> None:
    assert Registry().languages() == (Language.CWL, Language.NEXTFLOW, Language.SNAKEMAKE)
    registry = Registry.from_classes(FakeToy, languages=[TOY])
    assert registry.languages()[-1] is TOY
    # no built-in default: the engine named like the language, or what the operator says
    assert registry.choose(TOY, None, {}) == "toy"
    with pytest.raises(EngineUnavailable, match=r'\[engines\] toy = "<engine>"'):
        Registry.from_classes(FakeSnakemake, languages=[TOY]).choose(TOY, None, {})


def test_an_engine_of_an_unknown_language_is_refused() -> None:
    with pytest.raises(FailedToLoadPlugin, match="language toy is not a known language"):
        Registry.from_classes(FakeToy).load("toy")


def test_a_broken_language_plugin_is_one_clear_error() -> None:
    registry = Registry(language_specs=[PluginSpec("toy", "no_such_module_xyz:TOY",
                                                   "cratebridge-toy", "1.0")])
    with pytest.raises(FailedToLoadPlugin) as info:
        registry.languages()
    assert "language plugin 'toy' from cratebridge-toy" in str(info.value)
    assert info.value.where == "entry point cratebridge.languages:toy"
    assert info.value.exit_code == 5


@pytest.mark.parametrize(("value", "match"), [
    (f"{__name__}:FakeToy", "is not a cratebridge Language"),
    (f"{__name__}:CWL_AGAIN", "clashes with the known language cwl"),
])
def test_a_language_entry_point_must_be_a_new_language(value: str, match: str) -> None:
    name = "toy" if "FakeToy" in value else "cwl-again"
    registry = Registry(language_specs=[PluginSpec(name, value, "cratebridge-toy", "1.0")])
    with pytest.raises(FailedToLoadPlugin, match=match):
        registry.languages()


def test_a_language_entry_point_is_named_by_its_short_name() -> None:
    registry = Registry(language_specs=[PluginSpec("toys", f"{__name__}:TOY",
                                                   "cratebridge-toy", "1.0")])
    with pytest.raises(FailedToLoadPlugin, match="must be the language's short name"):
        registry.languages()


def test_the_allow_list_keeps_languages_of_allowed_distributions_only() -> None:
    specs = [PluginSpec("toy", "x:Toy", "cratebridge-toy", "1"),
             PluginSpec("snake", "x:S", "cratebridge-snake", "1")]
    languages = [PluginSpec("toy", f"{__name__}:TOY", "cratebridge-toy", "1")]
    assert Registry(specs, allowed=["snake"], language_specs=languages).languages() == \
        (Language.CWL, Language.NEXTFLOW, Language.SNAKEMAKE)
    assert Registry(specs, allowed=["toy"], language_specs=languages).languages()[-1] == TOY


CWL_AGAIN = Language(Language.CWL.value, "cwl-again", "CWL again", "https://example.org/",
                     files=("*.cwl2",))


def test_a_plugin_installed_while_the_process_runs_is_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery reads the installed entry points once, until an installation changes a
    folder of the search path (a service need not restart to see a new plugin)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    assert "late" not in [s.name for s in discover(ENTRY_POINT_GROUP)]
    assert discover(ENTRY_POINT_GROUP) == discover(ENTRY_POINT_GROUP)
    dist = site / "late_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: late-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cratebridge.engines]\nlate = late_plugin:Engine\n")
    found = [(s.name, s.value, s.distribution, s.version) for s in discover(ENTRY_POINT_GROUP)]
    assert ("late", "late_plugin:Engine", "late-plugin", "1.0") in found


def test_the_engines_package_resolves_its_names_and_imports_none_before_use() -> None:
    """The engine's process in its room imports ``cratebridge.engines.held`` alone."""
    import cratebridge.engines as engines

    for name in engines.__all__:
        assert getattr(engines, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        engines.nothing  # noqa: B018
    code = ("import sys, cratebridge.engines.held; "
            "print(sorted(m for m in sys.modules if m.startswith(('cratebridge.engines.', "
            "'cratebridge.intake'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "['cratebridge.engines.held', 'cratebridge.engines.process']"
