"""What is installed is read once per installation, kept in the user's cache, and only
a cache file the user alone could have written is believed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cratebridge.engines import installed
from cratebridge.engines.registry import ENTRY_POINT_GROUP, load_object

CWL_ENGINE = ("cwltool", "cratebridge_cwl.cwltool_engine:CwltoolEngine")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(installed, "_memory", {})
    return tmp_path / "cache" / "cratebridge" / "installed.json"


def _in_a_new_process(cache_home: Path, code: str) -> str:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_a_second_process_reads_the_cache_not_the_metadata(cache: Path) -> None:
    code = ("import sys\nfrom cratebridge.engines.registry import discover\n"
            "from cratebridge.engines.installed import version\n"
            "names = [s.name for s in discover('cratebridge.engines')]\n"
            "print('cwltool' in names, version('cwltool') is not None, "
            "version('no-such-distribution'), 'importlib.metadata' in sys.modules)")
    assert _in_a_new_process(cache.parents[1], code) == "True True None True"
    assert cache.is_file() and cache.stat().st_mode & 0o777 == 0o600
    assert cache.parent.stat().st_mode & 0o777 == 0o700
    assert _in_a_new_process(cache.parents[1], code) == "True True None False"


def test_an_installation_changes_the_key(cache: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = installed._key()
    assert installed._key() == before
    (site / "late_plugin-1.0.dist-info").mkdir()
    assert installed._key() != before


def _forged(cache: Path) -> None:
    """A cache file naming an engine that is not installed, under the current key."""
    key = installed._key()
    cache.parent.mkdir(parents=True, mode=0o700)
    cache.write_text(json.dumps({"format": 1, "keys": {key: {
        "groups": {ENTRY_POINT_GROUP: [["forged", "os:system", "forged", "1"]]},
        "versions": {}}}}))
    cache.chmod(0o600)


def _names() -> list[str]:
    installed._memory.clear()
    return [row[0] for row in installed.entry_points(ENTRY_POINT_GROUP)]


def test_a_cache_file_of_ones_own_is_believed(cache: Path) -> None:
    _forged(cache)
    assert _names() == ["forged"]  # the proof that the file is read at all


@pytest.mark.parametrize("how", ["group-writable file", "world-writable folder", "a link",
                                 "not JSON", "another format", "a row cut short"])
def test_a_cache_file_others_could_write_is_not_believed(cache: Path, tmp_path: Path,
                                                         how: str) -> None:
    _forged(cache)
    if how == "group-writable file":
        cache.chmod(0o620)
    elif how == "world-writable folder":
        cache.parent.chmod(0o777)
    elif how == "a link":
        real = tmp_path / "elsewhere.json"
        cache.rename(real)
        cache.symlink_to(real)
    elif how == "not JSON":
        cache.write_text("{not json")
    elif how == "another format":
        cache.write_text(cache.read_text().replace('"format": 1', '"format": 99'))
    else:
        cache.write_text(cache.read_text().replace(', "1"]', "]"))
    names = _names()
    assert "forged" not in names and CWL_ENGINE[0] in names


def test_the_file_keeps_the_answers_of_several_search_paths(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = installed._key()
    installed.entry_points(ENTRY_POINT_GROUP)
    monkeypatch.syspath_prepend(str(tmp_path))
    installed.entry_points(ENTRY_POINT_GROUP)
    kept = json.loads(cache.read_text())["keys"]
    assert first in kept and installed._key() in kept and len(kept) == 2


@pytest.mark.parametrize("value, expected", [
    ("os.path:join", os.path.join),
    ("os.path", os.path),
    ("os : path.join [extra]", os.path.join),
])
def test_an_entry_points_value_names_what_is_imported(value: str, expected: object) -> None:
    assert load_object(value) is expected


def test_a_value_that_is_not_an_entry_point_is_refused() -> None:
    with pytest.raises(ValueError, match="not an entry point"):
        load_object("os:path:join")
