# -*- test-case-name: tests.test_homeagent -*-
"""Mobility bindings: the home agent's map from home address to care-of address.

A :class:`Binding` is a plain value.  Where bindings are kept is a
:class:`BindingStore`; the embedded default is
:class:`smobility.store.sqlite.SQLiteStore`.  A binding already carries a
``path`` (how packets reach the node: direct UDP, through a relay, through the
HTTP multiplexer) and an optional ``sa`` (the security association that
protects it) so that the data plane can hang off the same record later.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Protocol


@dataclass(frozen=True)
class Binding:
    """One mobility binding (RFC 5944 section 3.8).

    ``expires`` and ``registered`` are absolute times in seconds on the home
    agent's clock (the reactor's, i.e. Unix time in production), so that a
    restarted home agent can tell which stored bindings are still valid.
    """

    node: str
    home_address: IPv4Address
    care_of_address: IPv4Address
    lifetime: int
    registered: float
    expires: float
    identification: int
    source_host: str
    source_port: int
    flags: int = 0
    nat: bool = False
    keepalive: int = 0
    path: str = "direct"
    sa: str | None = None

    def remaining(self, now: float) -> float:
        """Seconds left before this binding expires (never negative)."""
        return max(0.0, self.expires - now)

    def with_expiry(self, expires: float) -> Binding:
        """A copy with another expiry time."""
        return replace(self, expires=expires)


class BindingStore(Protocol):
    """Durable storage for bindings and per-node replay state.

    Every method commits before it returns: the home agent only answers a
    registration after its outcome is on disk.
    """

    def load_bindings(self) -> list[Binding]:
        """Every stored binding."""

    def replace_bindings(self, node: str, bindings: list[Binding]) -> None:
        """Make ``bindings`` the node's complete set of bindings."""

    def last_identification(self, node: str) -> int | None:
        """The identification of the node's last accepted request."""

    def set_last_identification(self, node: str, identification: int) -> None:
        """Record the identification of an accepted request."""

    def commit_registration(self, node: str, bindings: list[Binding], identification: int) -> None:
        """Replace the node's bindings and its last identification atomically."""

    def close(self) -> None:
        """Release the store."""


class MemoryStore:
    """A :class:`BindingStore` in memory (tests, and a home agent with no disk)."""

    def __init__(self) -> None:
        self._bindings: dict[str, list[Binding]] = {}
        self._ids: dict[str, int] = {}

    def load_bindings(self) -> list[Binding]:
        return [b for bs in self._bindings.values() for b in bs]

    def replace_bindings(self, node: str, bindings: list[Binding]) -> None:
        if bindings:
            self._bindings[node] = list(bindings)
        else:
            self._bindings.pop(node, None)

    def last_identification(self, node: str) -> int | None:
        return self._ids.get(node)

    def set_last_identification(self, node: str, identification: int) -> None:
        self._ids[node] = identification

    def commit_registration(self, node: str, bindings: list[Binding], identification: int) -> None:
        self.replace_bindings(node, bindings)
        self.set_last_identification(node, identification)

    def close(self) -> None:
        pass
