# -*- test-case-name: tests.test_udpfast,tests.test_ipip -*-
"""What the reactor needs of a socket we read ourselves (an ``IReadDescriptor``).

:class:`SocketReader` is the shared part of the data plane's sockets
(:class:`smobility.adapters.udpfast.UDPSocket`,
:class:`smobility.adapters.ipip.IPIPSocket`): registering with the reactor,
stopping, closing, the descriptor and the log prefix.  Subclasses set
``_sock`` when they open and implement ``doRead``.
"""

from __future__ import annotations

import socket
from typing import cast

from twisted.internet.interfaces import IReactorFDSet
from twisted.python.failure import Failure


def default_reactor() -> IReactorFDSet:
    """The global reactor (imported late, so that tests can install their own first)."""
    from twisted.internet import reactor

    return cast(IReactorFDSet, reactor)


class SocketReader:
    """A non-blocking socket the reactor reads; ``doRead`` is the subclass's."""

    _sock: socket.socket | None = None
    _reading = False
    _prefix = "SocketReader"
    _reactor: IReactorFDSet | None = None

    @property
    def reactor(self) -> IReactorFDSet:
        """The reactor this socket registers with (the global one unless injected)."""
        if self._reactor is None:
            self._reactor = default_reactor()
        return self._reactor

    def startReading(self) -> None:  # noqa: N802 - Twisted's spelling
        """Register with the reactor (done when the socket opens)."""
        if self._sock is not None and not self._reading:
            self.reactor.addReader(self)  # type: ignore[arg-type]
            self._reading = True

    def stopReading(self) -> None:  # noqa: N802 - Twisted's spelling
        """Stop reading (packets queue in the kernel, then are dropped there)."""
        if self._reading:
            self.reactor.removeReader(self)  # type: ignore[arg-type]
            self._reading = False

    def close(self) -> None:
        """Stop reading and close the socket; twice is fine."""
        self.stopReading()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def fileno(self) -> int:
        """The socket's descriptor, or -1 once closed."""
        return -1 if self._sock is None else self._sock.fileno()

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's spelling
        """How the reactor names us in its logs (asked at every wake-up: no system call)."""
        return self._prefix

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's spelling
        """The reactor gave up on the descriptor: close it."""
        self.close()
