# -*- test-case-name: tests.test_relaynat -*-
"""The relay's address translation for its visitors' traffic (figure 6), sans I/O.

In "forward" mode the relay never sees cleartext: a visiting client keeps its
own end-to-end ESP-in-UDP (and IKE) with its home agent and sends those
datagrams to the relay's ESP port.  The relay gives each client flow (its
address and port as the relay sees them) a port of its own and carries the
datagram to the home agent inside IP-in-IP, as if it came from
``relay-address:that-port``; what the home agent sends back to that port goes
to the client flow it stands for.  The home agent thus sees the relay like a
NAT, and learns the port from the client's authenticated ESP.

Never an open relay: a flow is only made for a source address that is a
current visitor (a registration accepted through this relay), it only leads
to that visitor's own home agent and port, and it ends when the visitor goes
(deregistration or expiry) or stays idle for ``idle_timeout`` seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

Address = tuple[str, int]


@dataclass(eq=False)
class Flow:
    """One client flow and the relay port standing for it towards its home agent.

    ``home_port`` is the home agent's port of the flow; ``inside`` (only for
    a :class:`GatewayTranslator` flow) the home agent's inside address the
    client addressed.
    """

    client: Address
    port: int
    home_agent: str
    visitor: str
    last: float
    home_port: int = 4500
    inside: str | None = None
    key: tuple[str, int, str, int] | None = None

    def stats(self) -> dict[str, object]:
        """The flow as plain data."""
        return {
            "client": f"{self.client[0]}:{self.client[1]}",
            "port": self.port,
            "home_agent": self.home_agent,
            "visitor": self.visitor,
        }


class RelayForwarder:
    """Flow table of a relay in forward mode: client flows <-> relay ports."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        home_port: int = 4500,
        ports: tuple[int, int] = (20000, 59999),
        idle_timeout: float = 180.0,
        max_flows: int = 4096,
    ) -> None:
        if ports[0] < 1 or ports[1] > 65535 or ports[0] > ports[1]:
            raise ValueError(f"bad port range {ports[0]}-{ports[1]}")
        self.clock = clock
        self.home_port = home_port
        self.ports = ports
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.counters: Counter[str] = Counter()
        # Source address of a visitor's registration -> (visitor, its home agent).
        self.allowed: dict[str, tuple[str, str]] = {}
        # A client's flow by its address (forward mode), or by (source, port,
        # destination, port) of its inner UDP (gateway).
        self.by_client: dict[Address | tuple[str, int, str, int], Flow] = {}
        self.by_port: dict[int, Flow] = {}
        self._next_port = ports[0]
        self._sweep: IDelayedCall | None = None
        self._last_refused_log = -1e18

    # -- visitors ------------------------------------------------------------------

    def visitor_changed(
        self, name: str, source: str, home_agent: IPv4Address, present: bool
    ) -> None:
        """A visitor was accepted (``present``) or left: allow or end its flows."""
        if present:
            self.allowed[source] = (name, str(home_agent))
            self._arm()
            return
        if self.allowed.get(source, (None,))[0] == name:
            del self.allowed[source]
        for flow in [f for f in self.by_client.values() if f.visitor == name]:
            self._end(flow, "visitor left")

    # -- datagrams -----------------------------------------------------------------

    def from_clients(
        self,
        datagrams: Iterable[tuple[bytes, Address]],
        out: list[tuple[bytes, int, str, int]],
    ) -> None:
        """Client datagrams -> ``out`` as (payload, relay port, home agent, its port)."""
        now = self.clock.seconds()
        by_client = self.by_client
        append = out.append
        home_port = self.home_port
        before = len(out)
        for payload, addr in datagrams:
            flow = by_client.get(addr)
            if flow is None:
                flow = self._new(addr, now)
                if flow is None:
                    continue
            flow.last = now
            append((payload, flow.port, flow.home_agent, home_port))
        self.counters["from_clients"] += len(out) - before

    def from_home(
        self,
        datagrams: Iterable[tuple[int, bytes, Address]],
        out: list[tuple[bytes, Address]],
    ) -> None:
        """Datagrams from home agents (dport, payload, source) -> ``out`` as (payload, client)."""
        self._from_home(datagrams, out, False)

    def _from_home(
        self, datagrams: Iterable[tuple[int, bytes, Address]], out: list[Any], flows: bool
    ) -> None:
        """Append (payload, the flow) if ``flows``, else (payload, its client address)."""
        now = self.clock.seconds()
        by_port = self.by_port
        append = out.append
        counters = self.counters
        before = len(out)
        for port, payload, source in datagrams:
            flow = by_port.get(port)
            if flow is None:
                counters["dropped_no_flow"] += 1
                continue
            if source[0] != flow.home_agent or source[1] != flow.home_port:
                counters["dropped_wrong_home_agent"] += 1
                continue
            flow.last = now
            append((payload, flow) if flows else (payload, flow.client))
        counters["from_home"] += len(out) - before

    # -- table -------------------------------------------------------------------------

    def _new(self, addr: Address, now: float) -> Flow | None:
        owner = self.allowed.get(addr[0])
        if owner is None:
            self.counters["dropped_not_visitor"] += 1
            if now - self._last_refused_log >= 10.0:
                self._last_refused_log = now
                self.log.warn(
                    "dropped a datagram from {host}:{port}: not a registered visitor "
                    "(the relay forwards only for its visitors)",
                    host=addr[0], port=addr[1],
                )  # fmt: skip
            return None
        port = self._allocate()
        if port is None:
            return None
        flow = Flow(addr, port, owner[1], owner[0], now, self.home_port)
        self.by_client[addr] = flow
        self.by_port[port] = flow
        self.counters["flows_made"] += 1
        self.log.info(
            "flow for {visitor}: {host}:{cport} <-> relay port {port} <-> {ha}",
            visitor=owner[0], host=addr[0], cport=addr[1], port=port, ha=owner[1],
        )  # fmt: skip
        return flow

    def _allocate(self) -> int | None:
        """A relay port for a new flow; ``None`` (counted) when the table is full."""
        port = self._free_port() if len(self.by_client) < self.max_flows else None
        if port is None:
            self.counters["dropped_table_full"] += 1
        return port

    def _free_port(self) -> int | None:
        low, high = self.ports
        span = high - low + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = low if port >= high else port + 1
            if port not in self.by_port:
                return port
        return None

    def _end(self, flow: Flow, why: str) -> None:
        key = flow.key if flow.key is not None else flow.client
        if self.by_client.get(key) is flow:
            del self.by_client[key]
        if self.by_port.get(flow.port) is flow:
            del self.by_port[flow.port]
        self.counters["flows_ended"] += 1
        self.log.info(
            "flow for {visitor} ({host}:{cport}, relay port {port}) ended: {why}",
            visitor=flow.visitor, host=flow.client[0], cport=flow.client[1],
            port=flow.port, why=why,
        )  # fmt: skip

    def _arm(self) -> None:
        if self._sweep is None or not self._sweep.active():
            self._sweep = self.clock.callLater(self.idle_timeout / 3, self._expire)

    def _expire(self) -> None:
        self._sweep = None
        limit = self.clock.seconds() - self.idle_timeout
        for flow in [f for f in self.by_client.values() if f.last < limit]:
            self._end(flow, f"idle for {self.idle_timeout:g} s")
        if self.by_client or self.allowed:
            self._arm()

    def stop(self) -> None:
        """Cancel the idle sweep."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    def stats(self) -> dict[str, object]:
        """Counters and flows as plain data."""
        return {
            "counters": dict(self.counters),
            "flows": [f.stats() for f in self.by_client.values()],
            "visitors": len(self.allowed),
        }


#: What a relay acting as VPN gateway lets its clients reach: the home agent's
#: registration port (RFC 5944) and its ESP-in-UDP/IKE port (RFC 3948).
GATEWAY_PORTS = frozenset({434, 4500})


class GatewayTranslator(RelayForwarder):
    """Flow table of a relay acting as its clients' IPsec VPN gateway (figure 7).

    Inside its tunnel the client sends UDP from its virtual address to a home
    agent's inside address (registrations to 434, its own ESP and IKE with
    home to 4500).  Each such flow gets a relay port and is carried to the
    home agent's outer address inside IP-in-IP, from that port; what comes
    back to the port goes to the client as if from the inside address.  The
    home agent sees the relay like a NAT (RFC 3519).

    Never an open relay: flows exist only for clients whose tunnel is up
    (``visitor_changed`` with their virtual address), only to the configured
    inside addresses (``inside``: inside address -> the home agent's outer
    address) and only to :data:`GATEWAY_PORTS`.
    """

    def __init__(
        self, *, inside: dict[str, str], max_per_visitor: int = 16, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.inside = dict(inside)
        # A client needs two flows (434, 4500); one must not fill the table.
        self.max_per_visitor = max_per_visitor
        self.per_visitor: dict[str, int] = {}

    def from_inner(
        self,
        items: Iterable[tuple[bytes, str, int, str, int]],
        out: list[tuple[bytes, int, str, int]],
    ) -> None:
        """UDP from clients ``(payload, src, sport, dst, dport)`` -> ``out`` as for the relay."""
        now = self.clock.seconds()
        by_client = self.by_client
        append = out.append
        counters = self.counters
        before = len(out)
        for payload, src, sport, dst, dport in items:
            key = (src, sport, dst, dport)
            flow = by_client.get(key)
            if flow is None:
                home_agent = self.inside.get(dst)
                if home_agent is None or dport not in GATEWAY_PORTS:
                    counters["dropped_not_home_agent"] += 1
                    continue
                flow = self._new_inner(key, home_agent, now)
                if flow is None:
                    continue
            flow.last = now
            append((payload, flow.port, flow.home_agent, dport))
        counters["from_clients"] += len(out) - before

    def from_home_flows(
        self,
        items: Iterable[tuple[int, bytes, Address]],
        out: list[tuple[bytes, Flow]],
    ) -> None:
        """Datagrams from home agents -> ``out`` as (payload, the flow they belong to)."""
        self._from_home(items, out, True)

    def _new_inner(
        self, key: tuple[str, int, str, int], home_agent: str, now: float
    ) -> Flow | None:
        owner = self.allowed.get(key[0])
        if owner is None:
            self.counters["dropped_not_visitor"] += 1
            return None
        if self.per_visitor.get(owner[0], 0) >= self.max_per_visitor:
            self.counters["dropped_visitor_flows"] += 1
            return None
        port = self._allocate()
        if port is None:
            return None
        flow = Flow((key[0], key[1]), port, home_agent, owner[0], now, key[3], key[2], key)
        self.by_client[key] = flow
        self.per_visitor[owner[0]] = self.per_visitor.get(owner[0], 0) + 1
        self.by_port[port] = flow
        self.counters["flows_made"] += 1
        self.log.info(
            "flow for {visitor}: {src}:{sport} -> {dst}:{dport} <-> relay port {port} <-> {ha}",
            visitor=owner[0], src=key[0], sport=key[1], dst=key[2], dport=key[3], port=port,
            ha=home_agent,
        )  # fmt: skip
        return flow

    def _end(self, flow: Flow, why: str) -> None:
        if flow.key is not None and self.by_client.get(flow.key) is flow:
            left = self.per_visitor.get(flow.visitor, 1) - 1
            if left > 0:
                self.per_visitor[flow.visitor] = left
            else:
                self.per_visitor.pop(flow.visitor, None)
        super()._end(flow, why)
