"""The cwltool driver keeps each job's output files, even several of one name.

An ExpressionTool step may pass on files from several steps (the conformance
test ``modify_directory_content``: the same ``blurb`` before and after an
in-place update), and a CommandLineTool may glob two folders holding files of
one name: each is kept, none overwrites or refuses another.
"""

from __future__ import annotations

from pathlib import Path

from cratebridge_cwl.eventlog import EventLog


def _file(path: Path) -> dict[str, str]:
    return {"class": "File", "location": path.as_uri()}


def test_outputs_of_one_name_are_all_kept(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "blurb", tmp_path / "b" / "blurb"
    for path, text in ((first, "one"), (second, "two")):
        path.parent.mkdir()
        path.write_text(text)
    log = EventLog(tmp_path / "events.jsonl", tmp_path / "keep")

    kept = log.keep_outputs("job", {"d1": [_file(first)], "d2": [_file(second)],
                                    "again": _file(first)})

    paths = [Path(kept["d1"][0]["path"]), Path(kept["d2"][0]["path"]),
             Path(kept["again"]["path"])]
    assert len(set(paths)) == 3
    assert all(p.is_relative_to(tmp_path / "keep" / "job") and p.name == "blurb"
               for p in paths)
    assert [p.read_text() for p in paths] == ["one", "two", "one"]
    assert [kept[k][0]["origin"] for k in ("d1", "d2")] == [str(first), str(second)]


def test_a_folder_and_a_file_of_one_name_are_both_kept(tmp_path: Path) -> None:
    folder, single = tmp_path / "x" / "out", tmp_path / "y" / "out"
    (folder / "inner").mkdir(parents=True)
    (folder / "inner" / "f.txt").write_text("in the folder")
    single.parent.mkdir()
    single.write_text("alone")
    log = EventLog(tmp_path / "events.jsonl", tmp_path / "keep")

    kept = log.keep_outputs("job", [{"class": "Directory", "location": folder.as_uri()},
                                    _file(single)])

    assert (Path(kept[0]["path"]) / "inner" / "f.txt").read_text() == "in the folder"
    assert Path(kept[1]["path"]).read_text() == "alone"
