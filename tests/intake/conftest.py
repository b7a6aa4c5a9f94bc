"""Shared helpers for the intake tests: the crate builders and a run of the whole intake."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import pytest

from cratebridge.intake import IntakeLimits, RunRequest, open_crate, parse_request, verify_bag

_CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "hostile" / "make_corpus.py"


def _load_corpus() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_corpus", _CORPUS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()


def run_intake(
    source: Path,
    dest: Path,
    *,
    limits: IntakeLimits | None = None,
    mirror: Path | None = None,
    dataset_map: Mapping[str, Path] | None = None,
) -> RunRequest:
    """What the pipeline does: unpack, verify the bag, parse."""
    limits = limits or IntakeLimits()
    opened = open_crate(source, dest, limits)
    bag_info = verify_bag(opened.bag_dir, known=opened.digests) if opened.bag_dir else {}
    return parse_request(
        opened.root,
        workflow_mirror=mirror,
        workflow_dest=dest.parent / "workflow-mirror",
        dataset_map=dataset_map,
        bagit=opened.bagit,
        bag_info=bag_info,
        limits=limits,
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "runs" / "run-1"
    folder.mkdir(parents=True)
    return folder
