"""Container images in the run crate: one ``ContainerImage`` entity per image and local id."""

from __future__ import annotations

from cratebridge.engines.record import ContainerRecord
from cratebridge.provenance.entities import WFRUN
from cratebridge.provenance.graph import Node, ref

__all__ = ["image_entity"]


def image_entity(image_id: str, container: ContainerRecord) -> Node:
    """The ``ContainerImage`` of ``container``: registry, name, tag, and its sha256 if known."""
    registry, name, tag, digest = _split_image(container.image)
    sha256 = _sha256(container.image_id) or _sha256(digest)
    node: Node = {
        "@id": image_id,
        "@type": "ContainerImage",
        "additionalType": ref(WFRUN + "DockerImage"),
        "name": name,
        "registry": registry,
    }
    if tag:
        node["tag"] = tag
    if sha256:
        node["sha256"] = sha256
    return node


def _split_image(image: str) -> tuple[str, str, str | None, str | None]:
    """``(registry, name, tag, digest)`` of a Docker image reference."""
    rest, _, digest = image.partition("@")
    first, slash, remainder = rest.partition("/")
    registry = "docker.io"
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, remainder
    name, tag = rest, None
    if ":" in rest.rsplit("/", 1)[-1]:
        name, tag = rest.rsplit(":", 1)
    return registry, name, tag, digest or None


def _sha256(digest: str | None) -> str | None:
    if digest and digest.startswith("sha256:"):
        return digest.split(":", 1)[1]
    return None
