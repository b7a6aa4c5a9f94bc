"""Test support for cratebridge and its engine plugins: request crate builders.

Nothing here imports pytest or an engine, so plugin test suites can use it freely.
"""

from cratebridge.testing.crates import (
    FileInput,
    Input,
    Organization,
    Person,
    ProjectInfo,
    RequestSpec,
    ReviewAction,
    ReviewKind,
    ValueInput,
    ZipLayout,
    request_metadata,
    write_request_bag,
    write_request_dir,
    write_request_zip,
)

__all__ = [
    "FileInput",
    "Input",
    "Organization",
    "Person",
    "ProjectInfo",
    "RequestSpec",
    "ReviewAction",
    "ReviewKind",
    "ValueInput",
    "ZipLayout",
    "request_metadata",
    "write_request_bag",
    "write_request_dir",
    "write_request_zip",
]
