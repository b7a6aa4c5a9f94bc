"""Who is calling: bearer tokens checked against the SHA-256 digests in ``[service] tokens``.

The configuration never holds a token, only its digest; a presented token is
hashed and compared with every digest in constant time. With no tokens
configured the server only listens on loopback, and every caller is the one
local operator.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from cratebridge.config import ServiceToken

__all__ = ["LOCAL", "Caller", "Tokens", "is_loopback"]


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: runs are owned by ``name``; an operator sees every run."""

    name: str
    operator: bool

    def may_see(self, owner: str) -> bool:
        return self.operator or owner == self.name


#: Every caller of a server with no tokens (it listens on loopback only).
LOCAL = Caller("local", operator=True)


class Tokens:
    """The configured tokens; :meth:`caller` for an ``Authorization`` header."""

    def __init__(self, tokens: Sequence[ServiceToken]) -> None:
        self._tokens = tuple(tokens)

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller a ``Bearer`` header names; None when absent or unknown."""
        if not self._tokens:
            return LOCAL
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for entry in self._tokens:  # every entry compared, found or not: no timing hint
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        return Caller(found.name, found.operator) if found else None


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback
                               for i in infos)
