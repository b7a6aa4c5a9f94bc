"""Image policy and the sandbox every engine's steps run in."""

from cratebridge.containers.sandbox import Limits, Sandbox, find_docker, image_id

__all__ = ["Limits", "Sandbox", "find_docker", "image_id"]
