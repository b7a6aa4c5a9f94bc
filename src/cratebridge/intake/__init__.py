"""Intake: safe unpacking, BagIt verification, and parsing a request crate into a RunRequest.

Typical use::

    opened = open_crate(source, run_dir / "request", limits)
    bag_info = verify_bag(opened.bag_dir, known=opened.digests) if opened.bag_dir else {}
    request = parse_request(opened.root, bagit=opened.bagit, bag_info=bag_info)

Nothing is imported here eagerly: an engine's process in its room imports the
request's types (:mod:`cratebridge.intake.request`) and needs none of the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cratebridge.lazy import names_from

__all__ = [
    "BUILTIN_LANGUAGES",
    "Agent",
    "CrateKind",
    "InputBinding",
    "InputKind",
    "IntakeLimits",
    "Language",
    "OpenedCrate",
    "Project",
    "ReviewAction",
    "RunRequest",
    "WorkflowRef",
    "open_crate",
    "parse_request",
    "resolve_workflow",
    "verify_bag",
]

if TYPE_CHECKING:
    from cratebridge.intake.bag import verify_bag
    from cratebridge.intake.parse import parse_request
    from cratebridge.intake.request import (
        BUILTIN_LANGUAGES,
        Agent,
        CrateKind,
        InputBinding,
        InputKind,
        Language,
        Project,
        ReviewAction,
        RunRequest,
        WorkflowRef,
    )
    from cratebridge.intake.resolve import resolve_workflow
    from cratebridge.intake.unpack import IntakeLimits, OpenedCrate, open_crate

#: where each name is defined
_MODULES = {
    "verify_bag": "bag",
    "parse_request": "parse",
    "resolve_workflow": "resolve",
    **dict.fromkeys(["IntakeLimits", "OpenedCrate", "open_crate"], "unpack"),
    **dict.fromkeys(["BUILTIN_LANGUAGES", "Agent", "CrateKind", "InputBinding", "InputKind",
                     "Language", "Project", "ReviewAction", "RunRequest", "WorkflowRef"],
                    "request"),
}

__getattr__ = names_from(__name__, _MODULES)
