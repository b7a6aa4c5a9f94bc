"""Every CWL file reference outside the crate is refused at plan time, by real cwltool loads.

Each test writes a small crate into ``tmp_path`` beside a "host" folder holding a secret;
a refusal must be an UnsafeCrate naming the reference, and the secret must appear in no
message (the file outside is never read).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cwltool.context import LoadingContext
from cwltool.load_tool import load_tool
from cwltool.workflow import default_make_tool
from schema_salad.exceptions import ValidationException

from cratebridge.errors import UnsafeCrate, UnsupportedCrate
from cratebridge_cwl.offline import OfflineFetcher, OutsideRoots, crate_fetcher
from cratebridge_cwl.references import check_references
from cratebridge_cwl.workflow import CwlWorkflow, load_workflow

SECRET = "SECRET-MARKER-do-not-print"

TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: 'true'
inputs: []
outputs: []
"""


@pytest.fixture
def crate(tmp_path: Path) -> Path:
    folder = tmp_path / "crate"
    folder.mkdir()
    (folder / "tool.cwl").write_text(TOOL)
    (folder / "data.txt").write_text("inside\n")
    return folder


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A folder outside the crate; each file in it holds the secret, none is valid CWL."""
    folder = tmp_path / "host"
    (folder / "dir").mkdir(parents=True)
    for name in ("secret.txt", "schema.rdf", "tool.cwl", "dir/inner.txt"):
        (folder / name).write_text(f"{SECRET}\n  : [not yaml {SECRET}\n")
    (folder / "valid.cwl").write_text(f"# {SECRET}\n{TOOL}")
    return folder


def _load(crate: Path, text: str, name: str = "wf.cwl") -> CwlWorkflow:
    (crate / name).write_text(text)
    return load_workflow(crate / name, roots=(crate,))


def _refused(crate: Path, text: str, reference: str) -> UnsafeCrate:
    with pytest.raises(UnsafeCrate) as caught:
        _load(crate, text)
    error = caught.value
    shown = f"{error} {error.to_json()}"
    assert reference in error.message, error
    assert SECRET not in shown
    assert error.exit_code == 3
    return error


def _workflow(inputs: str = "[]", steps: str = "[]", head: str = "") -> str:
    return (f"cwlVersion: v1.2\nclass: Workflow\n{head}inputs: {inputs}\noutputs: []\n"
            f"steps: {steps}\n")


def _tool(requirements: str = "[]", inputs: str = "[]") -> str:
    return ("cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: 'true'\n"
            f"requirements: {requirements}\ninputs: {inputs}\noutputs: []\n")


def _step(run: str) -> str:
    return f"[{{id: s, run: {run!r}, in: [], out: []}}]"


def _file_default(kind: str, key: str, location: str) -> str:
    return f"[{{id: a, type: {kind}, default: {{class: {kind}, {key}: {location!r}}}}}]"


# -- documents: run, $import, $include, $schemas -------------------------------------------


def test_run_with_an_absolute_path_is_refused(crate: Path, host: Path) -> None:
    reference = str(host / "secret.txt")
    error = _refused(crate, _workflow(steps=_step(reference)), reference)
    assert error.where is not None and error.where.startswith("wf.cwl")


def test_run_with_dot_dot_is_refused(crate: Path, host: Path) -> None:
    _refused(crate, _workflow(steps=_step("../host/tool.cwl")), "../host/tool.cwl")


def test_run_with_a_file_uri_fragment_is_refused(crate: Path, host: Path) -> None:
    reference = (host / "tool.cwl").as_uri() + "#main"
    _refused(crate, _workflow(steps=_step(reference)), str(host / "tool.cwl"))


def test_import_outside_is_refused(crate: Path, host: Path) -> None:
    reference = str(host / "secret.txt")
    _refused(crate, _workflow(inputs=f"[{{$import: {reference!r}}}]"), reference)


def test_include_outside_is_refused(crate: Path, host: Path) -> None:
    reference = str(host / "secret.txt")
    listing = f"{{listing: [{{entryname: x, entry: {{$include: {reference!r}}}}}]}}"
    _refused(crate, _tool(requirements=f"{{InitialWorkDirRequirement: {listing}}}"),
             reference)


def test_local_schemas_outside_are_refused(crate: Path, host: Path) -> None:
    _refused(crate, _workflow(head="$schemas: [../host/schema.rdf]\n"), "../host/schema.rdf")


# -- File and Directory objects ------------------------------------------------------------


def test_default_file_with_an_absolute_location_is_refused(crate: Path, host: Path) -> None:
    reference = str(host / "secret.txt")
    _refused(crate, _workflow(inputs=_file_default("File", "location", reference)), reference)


def test_default_file_with_an_absolute_path_is_refused(crate: Path, host: Path) -> None:
    reference = str(host / "secret.txt")
    _refused(crate, _workflow(inputs=_file_default("File", "path", reference)), reference)


def test_default_file_with_a_file_uri_is_refused(crate: Path, host: Path) -> None:
    reference = (host / "secret.txt").as_uri()
    _refused(crate, _workflow(inputs=_file_default("File", "location", reference)), reference)


def test_default_directory_outside_is_refused(crate: Path, host: Path) -> None:
    _refused(crate, _workflow(inputs=_file_default("Directory", "location", "../host/dir")),
             "../host/dir")


def test_default_file_from_the_network_is_refused(crate: Path) -> None:
    reference = "http://example.org/data.txt"
    with pytest.raises(UnsafeCrate) as caught:
        _load(crate, _workflow(inputs=_file_default("File", "location", reference)))
    assert reference in str(caught.value)


def test_step_default_outside_is_refused(crate: Path, host: Path) -> None:
    reference = str(host / "secret.txt")
    steps = (f"[{{id: s, run: tool.cwl, out: [], in: [{{id: x, default: {{class: File, "
             f"location: {reference!r}}}}}]}}]")
    _refused(crate, _workflow(steps=steps), reference)


def test_initial_workdir_listing_file_outside_is_refused(crate: Path, host: Path) -> None:
    listing = "{listing: [{class: File, location: ../host/secret.txt}]}"
    error = _refused(crate, _tool(requirements=f"{{InitialWorkDirRequirement: {listing}}}"),
                     "../host/secret.txt")
    assert error.where == "wf.cwl, line 4"  # the requirements line


def test_nested_listing_in_an_inline_tool_is_refused(crate: Path, host: Path) -> None:
    reference = str(host / "secret.txt")
    listing = (f"{{listing: [{{class: Directory, basename: d, listing: [{{class: File, "
               f"path: {reference!r}}}]}}]}}")
    inline = _tool(requirements=f"{{InitialWorkDirRequirement: {listing}}}")
    steps = "\n".join(["", "  - id: s", "    out: []", "    in: []", "    run:"]
                      + ["      " + line for line in inline.splitlines()])
    _refused(crate, _workflow(steps=steps), reference)


def test_secondary_file_outside_is_refused(crate: Path, host: Path) -> None:
    inputs = ("[{id: a, type: File, secondaryFiles: [.idx], default: {class: File, "
              "location: data.txt, secondaryFiles: [{class: File, "
              "location: ../host/secret.txt}]}}]")
    _refused(crate, _workflow(inputs=inputs), "../host/secret.txt")


def test_a_file_in_a_hint_outside_is_refused(crate: Path, host: Path) -> None:
    reference = str(host / "secret.txt")
    head = ("$namespaces: {ex: 'http://example.org/'}\n"
            f"hints: [{{class: 'ex:Thing', ex:file: {{class: File, path: {reference!r}}}}}]\n")
    _refused(crate, _workflow(head=head), reference)


# -- symlinks ------------------------------------------------------------------------------


def test_a_symlink_to_a_tool_outside_is_refused(crate: Path, host: Path) -> None:
    (crate / "link.cwl").symlink_to(host / "tool.cwl")
    error = _refused(crate, _workflow(steps=_step("link.cwl")), "link.cwl")
    assert str(host / "tool.cwl") in error.message  # where it really leads


def test_a_symlink_to_a_default_outside_is_refused(crate: Path, host: Path) -> None:
    (crate / "link.txt").symlink_to(host / "secret.txt")
    _refused(crate, _workflow(inputs=_file_default("File", "location", "link.txt")),
             "link.txt")


def test_a_symlinked_folder_leading_outside_is_refused(crate: Path, host: Path) -> None:
    (crate / "sub").symlink_to(host, target_is_directory=True)
    _refused(crate, _workflow(inputs=_file_default("File", "path", "sub/secret.txt")),
             "sub/secret.txt")


def test_a_main_workflow_linked_from_outside_is_refused(crate: Path, host: Path) -> None:
    (crate / "main.cwl").symlink_to(host / "tool.cwl")
    with pytest.raises(UnsafeCrate) as caught:
        load_workflow(crate / "main.cwl", roots=(crate,))
    assert "main.cwl" in str(caught.value) and SECRET not in str(caught.value)


# -- what stays allowed, and other errors --------------------------------------------------


def test_references_inside_the_crate_load(crate: Path) -> None:
    (crate / "tools").mkdir()
    (crate / "tools" / "echo.cwl").write_text(
        _tool(requirements="{InitialWorkDirRequirement: {listing: ["
              "{entryname: script.sh, entry: {$include: script.sh}}, "
              "{class: File, location: ../data.txt}, "
              "{class: File, basename: lit.txt, contents: literal}, "
              "{class: Directory, basename: empty, listing: []}]}}"))
    (crate / "tools" / "script.sh").write_text("echo hello\n")
    inputs = ("[{id: a, type: File, default: {class: File, location: data.txt}}, "
              "{id: b, type: File, default: {class: File, path: ./tools/../data.txt}}, "
              "{id: c, type: Directory, default: {class: Directory, location: tools}}]")
    workflow = _load(crate, _workflow(inputs=inputs, steps=_step("tools/echo.cwl")))
    assert [step.name for step in workflow.steps] == ["s"]
    assert {i["id"].split("#")[-1] for i in workflow.inputs} == {"a", "b", "c"}


def test_a_workflow_in_a_subfolder_may_use_the_crate_root(crate: Path) -> None:
    (crate / "workflow").mkdir()
    text = _workflow(steps=_step("../tool.cwl"))
    (crate / "workflow" / "main.cwl").write_text(text)
    assert load_workflow(crate / "workflow" / "main.cwl", roots=(crate,)).steps
    with pytest.raises(UnsafeCrate):  # the default: the workflow's own folder only
        load_workflow(crate / "workflow" / "main.cwl")


def test_a_bad_document_inside_the_crate_is_still_unsupported(crate: Path) -> None:
    (crate / "broken.cwl").write_text("cwlVersion: v1.2\nclass: Workflow\n  : [oops\n")
    with pytest.raises(UnsupportedCrate) as caught:
        _load(crate, _workflow(steps=_step("broken.cwl")))
    assert not isinstance(caught.value, UnsafeCrate)


# -- the check after loading, on its own ----------------------------------------------------
# Loaded with the plain OfflineFetcher, so only check_references stands in the way.

WALKED = {
    "default File location": _workflow(inputs=_file_default("File", "location", "HOST/secret.txt")),
    "default File path": _workflow(inputs=_file_default("File", "path", "HOST/secret.txt")),
    "default File URI": _workflow(inputs=_file_default("File", "location",
                                                       "file://HOST/secret.txt")),
    "default Directory": _workflow(inputs=_file_default("Directory", "location", "HOST/dir")),
    "default from the network": _workflow(inputs=_file_default("File", "location",
                                                               "http://example.org/x")),
    "step default": _workflow(steps="[{id: s, run: tool.cwl, out: [], in: [{id: x, default: "
                              "{class: File, location: HOST/secret.txt}}]}]"),
    "listing": _tool(requirements="{InitialWorkDirRequirement: {listing: ["
                     "{class: Directory, basename: d, listing: ["
                     "{class: File, location: HOST/secret.txt}]}]}}"),
    "secondaryFiles": _workflow(inputs="[{id: a, type: File, default: {class: File, "
                                "location: data.txt, secondaryFiles: [{class: File, "
                                "location: HOST/secret.txt}]}}]"),
    "hint": _workflow(head="$namespaces: {ex: 'http://example.org/'}\nhints: [{class: "
                      "'ex:Thing', ex:file: {class: File, path: HOST/secret.txt}}]\n"),
    "$schemas": _workflow(head="$schemas: [HOST/schema.rdf]\n"),
    "run": _workflow(steps=_step("HOST/valid.cwl")),
}


@pytest.mark.parametrize("kind", sorted(WALKED))
def test_the_check_after_loading_refuses_alone(crate: Path, host: Path, kind: str) -> None:
    (crate / "wf.cwl").write_text(WALKED[kind].replace("HOST", str(host)))
    loading = LoadingContext({"fetcher_constructor": OfflineFetcher, "skip_schemas": True,
                              "disable_js_validation": True,
                              "construct_tool_object": default_make_tool})
    tool = load_tool(str(crate / "wf.cwl"), loading)
    with pytest.raises(UnsafeCrate) as caught:
        check_references(tool, [crate])
    message = str(caught.value)
    assert message.startswith("wf.cwl") and SECRET not in message
    assert (str(host) if kind != "default from the network" else "example.org") in message


def test_the_check_after_loading_passes_a_crate_inside(crate: Path) -> None:
    inputs = ("[{id: a, type: File, default: {class: File, location: data.txt}}, "
              "{id: b, type: File, default: {class: File, location: '_:literal', "
              "contents: x}}]")
    (crate / "wf.cwl").write_text(_workflow(inputs=inputs, steps=_step("tool.cwl")))
    loading = LoadingContext({"fetcher_constructor": OfflineFetcher, "skip_schemas": True,
                              "construct_tool_object": default_make_tool})
    check_references(load_tool(str(crate / "wf.cwl"), loading), [crate])


def test_the_fetcher_refuses_outside_without_reading(crate: Path, host: Path) -> None:
    fetcher = crate_fetcher([crate])({}, None)
    outside = (host / "secret.txt").as_uri()
    for url in (outside, f"file:///{host}/secret.txt", crate.as_uri() + "/../host/secret.txt",
                f"file://elsewhere{host}/secret.txt"):
        with pytest.raises(OutsideRoots) as caught:
            fetcher.fetch_text(url)
        assert SECRET not in str(caught.value)
        with pytest.raises(OutsideRoots):
            fetcher.check_exists(url)  # no answer about a host path
    with pytest.raises(ValidationException, match="offline"):
        fetcher.fetch_text("https://example.org/tool.cwl")
    assert fetcher.fetch_text((crate / "tool.cwl").as_uri()) == TOOL
    assert fetcher.check_exists((crate / "data.txt").as_uri())
    assert not fetcher.check_exists((crate / "absent.txt").as_uri())
    assert len(type(fetcher).refused) == 8


def test_the_offline_fetcher_is_unchanged(crate: Path) -> None:
    fetcher = OfflineFetcher({}, None)
    assert fetcher.fetch_text((crate / "tool.cwl").as_uri()) == TOOL
    with pytest.raises(ValidationException, match="offline"):
        fetcher.fetch_text("https://example.org/tool.cwl")
