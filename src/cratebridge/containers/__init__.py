"""Image policy and the sandbox every engine's steps run in.

Nothing is imported here eagerly: the ``docker`` shim starts many times per run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cratebridge.lazy import names_from

__all__ = ["Limits", "Sandbox", "find_docker", "image_id"]

if TYPE_CHECKING:
    from cratebridge.containers.sandbox import Limits, Sandbox, find_docker, image_id

__getattr__ = names_from(__name__, dict.fromkeys(__all__, "sandbox"))
