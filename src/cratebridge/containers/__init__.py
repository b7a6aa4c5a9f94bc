"""Image policy and the sandbox every engine's steps run in.

Nothing is imported here eagerly: the ``docker`` shim starts many times per run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Limits", "Sandbox", "find_docker", "image_id"]

if TYPE_CHECKING:
    from cratebridge.containers.sandbox import Limits, Sandbox, find_docker, image_id


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cratebridge.containers import sandbox

        return getattr(sandbox, name)
    raise AttributeError(f"module 'cratebridge.containers' has no attribute {name!r}")
