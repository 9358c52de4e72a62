# -*- test-case-name: tests.test_services -*-
"""UDP glue between the reactor and the registration engines."""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from smobility.engines.homeagent import HomeAgent
from smobility.engines.mobilenode import MobileNode


class HomeAgentProtocol(DatagramProtocol):
    """Feeds registration datagrams to a :class:`HomeAgent`, sends its replies.

    The reply leaves from the socket the request came to (so from the port it
    was sent to) towards the request's source address and port.
    """

    log = Logger()

    def __init__(self, engine: HomeAgent) -> None:
        self.engine = engine

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        try:
            reply = self.engine.handle_request(datagram, addr)
        except Exception:
            # An engine bug must never take the listener down; count and log it.
            self.engine.counters["internal_errors"] += 1
            self.log.failure("internal error while handling a datagram from {addr}", addr=addr)
            return
        if reply is not None and self.transport is not None:
            self.transport.write(reply, addr)


class MobileNodeProtocol(DatagramProtocol):
    """The mobile node's registration socket."""

    log = Logger()

    def __init__(self, home_agent: tuple[str, int]) -> None:
        self.home_agent = home_agent
        self.engine: MobileNode | None = None
        self.on_receive: Callable[[tuple[str, int]], None] | None = None

    def send(self, data: bytes) -> None:
        """Send one datagram to the home agent (dropped if not listening yet)."""
        if self.transport is None:
            return
        try:
            self.transport.write(data, self.home_agent)
        except OSError as e:
            # No route while the link changes: the retransmission timer retries.
            self.log.warn("cannot send to {ha}: {err}", ha=self.home_agent, err=e.strerror)

    def send_to(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram to ``addr`` (a relay), dropped if not listening yet."""
        if self.transport is None:
            return
        try:
            self.transport.write(data, addr)
        except OSError as e:
            self.log.warn("cannot send to {host}: {err}", host=addr[0], err=e.strerror)

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        if self.engine is None:
            return
        if self.on_receive is not None:
            self.on_receive(addr)
        try:
            self.engine.datagram_received(datagram, addr)
        except Exception:
            self.engine.counters["internal_errors"] += 1
            self.log.failure("internal error while handling a datagram from {addr}", addr=addr)


def source_address_towards(destination: IPv4Address, port: int = 434) -> IPv4Address | None:
    """The local address the OS would use to reach ``destination`` (no packet sent)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((str(destination), port))
        return IPv4Address(s.getsockname()[0])
    except OSError:
        return None
    finally:
        s.close()
