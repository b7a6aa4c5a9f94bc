"""50 submissions of the demo crate, 2 at a time, on SQLite: all complete, none lost."""

from __future__ import annotations

from typing import Any

import pytest

from .many import many_submissions_two_at_a_time_all_complete

pytestmark = pytest.mark.docker


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_fifty_submissions_two_at_a_time_all_complete(make_server: Any, backend: str) -> None:
    many_submissions_two_at_a_time_all_complete(make_server, backend, 50)
