"""Tolerant readers of the values in a crate's metadata (any JSON), for the preview."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import overload

__all__ = ["Entity", "as_text", "clip", "ids_or_text", "joined", "parse_time", "refs",
           "sort_key", "types_of"]

Entity = Mapping[str, object]


def types_of(entity: Entity) -> set[str]:
    # "type" for "@type": a slip the Five Safes 0.4 example result makes
    value = entity["@type"] if "@type" in entity else entity.get("type")
    if type(value) is str:  # the usual entity: one type
        return {value}
    values = value if isinstance(value, list) else [value]
    return {v for v in values if isinstance(v, str)}


def refs(value: object) -> list[str]:
    """The ``@id``s a property refers to (one reference or a list of them)."""
    values = value if isinstance(value, list) else [value]
    return [v["@id"] for v in values if isinstance(v, dict) and isinstance(v.get("@id"), str)]


def ids_or_text(value: object) -> list[str]:
    return refs(value) or [t for t in [as_text(value)] if t]


def as_text(value: object) -> str | None:
    """A JSON value as text: strings, numbers, booleans, ``@value``s; the first of a list."""
    if isinstance(value, list):
        return next((t for t in map(as_text, value) if t is not None), None)
    if isinstance(value, dict):
        return as_text(value.get("@value")) if "@value" in value else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def joined(value: object) -> str | None:
    texts = [t for t in map(as_text, value if isinstance(value, list) else [value]) if t]
    return "; ".join(texts) or None


@overload
def clip(text: str, limit: int) -> str: ...
@overload
def clip(text: str | None, limit: int) -> str | None: ...
def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, saying how many more there were."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit} more characters)"


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time with a time zone; ``None`` for anything else."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def sort_key(text: str | None) -> tuple[int, float]:
    moment = parse_time(text)
    if moment is not None:
        return 0, moment.timestamp()
    try:
        return 0, float(text) if text is not None else 0.0
    except ValueError:
        return 1, 0.0
