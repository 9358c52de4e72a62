# -*- test-case-name: tests.test_tunnel -*-
"""The tunnel engine: SA database and packet router of the ESP-in-UDP data plane.

Sans I/O.  The adapters hand it what the TUN device and the UDP socket read,
and send what it returns:

- :meth:`TunnelEngine.from_tun` takes inner IPv4 packets read from the TUN
  device, finds the route for each destination (the home agent: the mobile
  node that owns the home address; the client: its home agent), seals them
  with the route's outbound SA and appends ``(datagram, address)`` pairs to
  send from the ESP-in-UDP socket;
- :meth:`TunnelEngine.from_udp` takes one datagram from that socket, sorts it
  (RFC 3948: ESP, IKE behind the non-ESP marker, NAT keepalive), opens ESP
  with the inbound SA its SPI names, checks that the outer source is one the
  route allows (RFC 3024 reverse tunnelling: the registered care-of address
  or the NAT address the registration showed) and that the inner source is
  the route's own address, and returns the inner packet for the TUN device.

SAs come from anywhere (manual keys from the configuration, or IKE later):
:meth:`install` takes ready :class:`~smobility.wire.esp.InboundSA` and
:class:`~smobility.wire.esp.OutboundSA` objects.  Every drop is counted by
reason, per route and in total; nothing is logged per packet except a
rate-limited line for unknown SPIs and one line when an SA runs out.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smobility.wire import WireError, ipv4
from smobility.wire.esp import (
    NAT_KEEPALIVE,
    NEXT_HEADER_NONE,
    NON_ESP_MARKER,
    ESPError,
    InboundSA,
    OutboundSA,
    SAExpired,
)

_U32 = struct.Struct("!I")
_MIN_IPV4 = 20
_PROTO_TCP = 6


class Route:
    """Where the packets of one peer go, and what protects them.

    ``inner`` is the peer's inner address (a mobile node's home address, as
    4 bytes) or ``None`` for a default route (the client's way home).
    ``addr`` is the outer destination (host, port) of ESP-in-UDP; ``sources``
    are the outer source addresses accepted from this peer.  ``mtu`` is the
    largest inner packet this route carries without fragments on the way:
    the engine's, less what the path adds (:data:`PATH_OVERHEAD`); TCP's MSS
    is clamped to it.  Larger packets (up to the engine's MTU) still go, and
    are fragmented on the way: a connection made before a move keeps working.
    """

    __slots__ = (
        "node",
        "inner",
        "inbound",
        "old_inbound",
        "outbound",
        "addr",
        "sources",
        "path",
        "mtu",
        "packets_out",
        "bytes_out",
        "packets_in",
        "bytes_in",
        "drops",
        "expired_logged",
    )

    def __init__(
        self,
        node: str,
        inner: bytes | None,
        inbound: InboundSA,
        outbound: OutboundSA,
        addr: tuple[str, int],
        sources: frozenset[str],
        path: str,
        mtu: int = 65535,
    ) -> None:
        self.node = node
        self.inner = inner
        self.inbound = inbound
        self.old_inbound: InboundSA | None = None
        self.outbound = outbound
        self.addr = addr
        self.sources = sources
        self.path = path
        self.mtu = mtu
        self.packets_out = 0
        self.bytes_out = 0
        self.packets_in = 0
        self.bytes_in = 0
        self.drops: Counter[str] = Counter()
        self.expired_logged = False

    def stats(self) -> dict[str, object]:
        """Counters of this route as plain data."""
        return {
            "node": self.node,
            "path": self.path,
            "peer": f"{self.addr[0]}:{self.addr[1]}",
            "spi_in": f"0x{self.inbound.spi:08x}",
            "spi_out": f"0x{self.outbound.spi:08x}",
            "seq_out": self.outbound.seq,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "drops": dict(self.drops),
        }


IKEHandler = Callable[[bytes, tuple[str, int]], None]

#: Bytes a path adds to our ESP-in-UDP datagrams on the way: between a relay
#: and the home agent they travel inside IP-in-IP (RFC 2003, a 20-byte outer
#: header).  On such a path new TCP connections get an MSS 20 bytes smaller,
#: so that their full-size datagrams are not fragmented between relay and home.
PATH_OVERHEAD: dict[str, int] = {"relay": 20, "relay-terminate": 20}


def _is_syn(packet: bytes) -> bool:
    """Whether an IPv4 TCP packet has SYN set.

    The loops inline the common case (no IP options: the flags are byte 33)
    and call :meth:`TunnelEngine._clamp`, which asks this, for the rest.
    """
    flags = ((packet[0] & 0x0F) << 2) + 13
    return len(packet) > flags and bool(packet[flags] & 0x02)


class TunnelEngine:
    """SA database and router for one tunnel endpoint (home agent or client)."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        mtu: int,
        local_inner: IPv4Address,
        mss_clamp: bool = True,
        log_interval: float = 10.0,
        on_ike: IKEHandler | None = None,
    ) -> None:
        self.clock = clock
        self.mtu = mtu
        self.mss = mtu - 40
        self.mss_clamp = mss_clamp
        self.local_inner = local_inner.packed
        self.log_interval = log_interval
        self.on_ike = on_ike
        self.counters: Counter[str] = Counter()
        self.routes: dict[bytes, Route] = {}
        self.default: Route | None = None
        self.by_node: dict[str, Route] = {}
        self.inbound: dict[int, Route] = {}
        self._last_unknown_log = -1e18
        self._unknown_suppressed = 0

    # -- SA database ------------------------------------------------------

    def install(
        self,
        node: str,
        inner: IPv4Address | None,
        inbound: InboundSA,
        outbound: OutboundSA,
        addr: tuple[str, int],
        sources: Iterable[str],
        path: str = "direct",
    ) -> Route:
        """Route ``inner`` (or everything, if ``None``) to ``node`` under these SAs.

        Replaces an earlier route of the same node; an SA already installed
        keeps its sequence counter and replay window.
        """
        old = self.by_node.get(node)
        if old is not None:
            self._unlink(old)
        route = Route(
            node,
            inner.packed if inner is not None else None,
            inbound,
            outbound,
            addr,
            frozenset(sources),
            path,
            self.mtu - PATH_OVERHEAD.get(path, 0),
        )
        self.by_node[node] = route
        self.inbound[inbound.spi] = route
        if route.inner is None:
            self.default = route
        else:
            self.routes[route.inner] = route
        return route

    def move(
        self, node: str, addr: tuple[str, int], sources: Iterable[str], path: str = "direct"
    ) -> Route | None:
        """Point an installed route at a new outer address (a new registration)."""
        route = self.by_node.get(node)
        if route is None:
            return None
        route.addr = addr
        route.sources = frozenset(sources)
        self.set_path(node, path)
        return route

    def set_path(self, node: str, path: str) -> None:
        """Name the path of the node's route (its MTU follows :data:`PATH_OVERHEAD`)."""
        route = self.by_node.get(node)
        if route is not None:
            route.path = path
            route.mtu = self.mtu - PATH_OVERHEAD.get(path, 0)

    def rekey(self, node: str, inbound: InboundSA, outbound: OutboundSA) -> Route | None:
        """Switch the node's route to new SAs, make before break.

        Sending uses ``outbound`` at once; packets still in flight under the
        old inbound SA are accepted until :meth:`retire` is called for it
        (when the old CHILD_SA is deleted), so no packet is refused during
        the switch.
        """
        route = self.by_node.get(node)
        if route is None:
            return None
        if route.old_inbound is not None:
            self.inbound.pop(route.old_inbound.spi, None)
        route.old_inbound = route.inbound
        route.inbound = inbound
        route.outbound = outbound
        route.expired_logged = False
        self.inbound[inbound.spi] = route
        return route

    def retire(self, node: str, spi: int) -> None:
        """Stop accepting the node's old inbound SA ``spi`` (after a rekey)."""
        route = self.by_node.get(node)
        if route is None or route.old_inbound is None or route.old_inbound.spi != spi:
            return
        if self.inbound.get(spi) is route:
            del self.inbound[spi]
        route.old_inbound = None

    def remove(self, node: str) -> None:
        """Forget the node's route (its SAs go with it)."""
        route = self.by_node.pop(node, None)
        if route is not None:
            self._unlink(route)

    def _unlink(self, route: Route) -> None:
        if self.inbound.get(route.inbound.spi) is route:
            del self.inbound[route.inbound.spi]
        if route.old_inbound is not None and self.inbound.get(route.old_inbound.spi) is route:
            del self.inbound[route.old_inbound.spi]
        if route.inner is None:
            if self.default is route:
                self.default = None
        elif self.routes.get(route.inner) is route:
            del self.routes[route.inner]
        if self.by_node.get(route.node) is route:
            del self.by_node[route.node]

    # -- TUN -> UDP -------------------------------------------------------

    def from_tun(
        self,
        packets: Iterable[bytes],
        out: list[tuple[bytes, tuple[str, int]]],
        back: list[bytes],
    ) -> None:
        """Seal packets read from the TUN device.

        Appends datagrams to send to ``out`` and packets to write back into
        the TUN device (ICMP errors) to ``back``.
        """
        routes = self.routes
        default = self.default
        mtu = self.mtu
        clamp = self.mss_clamp
        counters = self.counters
        append = out.append
        for packet in packets:
            size = len(packet)
            if size < _MIN_IPV4 or packet[0] >> 4 != 4:
                counters["tun_not_ipv4"] += 1
                continue
            route = routes.get(packet[16:20], default)
            if route is None:
                counters["no_binding"] += 1
                continue
            if size > mtu:
                if packet[6] & 0x40:  # DF: tell the sender (RFC 1191)
                    route.drops["too_big"] += 1
                    counters["too_big"] += 1
                    if ipv4.icmp_error_allowed(packet):
                        back.append(ipv4.icmp_frag_needed(packet, mtu, self.local_inner))
                    continue
            elif (
                clamp
                and packet[9] == _PROTO_TCP
                and (size < 34 or packet[0] != 0x45 or packet[33] & 0x02)
            ):
                packet = self._clamp(packet, route.mtu - 40)  # a SYN, or an unusual header
            try:
                datagram = route.outbound.seal(packet)
            except SAExpired as e:
                route.drops["sa_expired"] += 1
                counters["sa_expired"] += 1
                if not route.expired_logged:
                    route.expired_logged = True
                    self.log.error("traffic to {node} stopped: {why}", node=route.node, why=str(e))
                continue
            route.packets_out += 1
            route.bytes_out += size
            append((datagram, route.addr))

    def dummy(self, node: str) -> tuple[bytes, tuple[str, int]] | None:
        """An authenticated dummy ESP packet (RFC 4303 section 2.6) for ``node``.

        Sent right after a registration so that the peer learns the NAT
        mapping of the data path from an authenticated packet.
        """
        route = self.by_node.get(node)
        if route is None:
            return None
        try:
            return route.outbound.seal(b"", NEXT_HEADER_NONE), route.addr
        except SAExpired:
            return None

    # -- UDP -> TUN -------------------------------------------------------

    def from_udp_many(self, datagrams: Iterable[tuple[bytes, tuple[str, int]]]) -> list[bytes]:
        """Open a batch of datagrams from the ESP-in-UDP socket; return the inner packets.

        Each datagram is handled exactly as :meth:`from_udp` describes; the
        inner packets come back in the order of their datagrams.
        """
        result: list[bytes] = []
        append = result.append
        inbound = self.inbound
        counters = self.counters
        clamp = self.mss_clamp
        unpack = _U32.unpack_from
        for datagram, addr in datagrams:
            if len(datagram) < 8 or datagram[:4] == NON_ESP_MARKER:
                self._not_esp(datagram, addr)
                continue
            spi = unpack(datagram)[0]
            route = inbound.get(spi)
            if route is None:
                counters["unknown_spi"] += 1
                self._log_unknown(spi, addr)
                continue
            sa = route.inbound
            if sa.spi != spi:
                # The SA a rekey replaced: still accepted until retired.
                sa = route.old_inbound  # type: ignore[assignment]
            if addr[0] not in route.sources:
                # RFC 3024: only from the registered care-of (or NAT) address.
                route.drops["bad_source"] += 1
                counters["bad_source"] += 1
                continue
            try:
                inner = sa.open(datagram)
            except ESPError as e:
                route.drops[e.reason] += 1
                counters[e.reason] += 1
                continue
            if addr != route.addr:
                # Authenticated, from an allowed address: the NAT mapping moved.
                route.addr = addr
                counters["peer_port_updates"] += 1
            if not inner:
                counters["dummies_in"] += 1
                continue
            if len(inner) < _MIN_IPV4 or inner[0] >> 4 != 4:
                route.drops["malformed_inner"] += 1
                counters["malformed_inner"] += 1
                continue
            if route.inner is not None and inner[12:16] != route.inner:
                route.drops["spoofed_inner_source"] += 1
                counters["spoofed_inner_source"] += 1
                continue
            route.packets_in += 1
            route.bytes_in += len(inner)
            if (
                clamp
                and inner[9] == _PROTO_TCP
                and (len(inner) < 34 or inner[0] != 0x45 or inner[33] & 0x02)
            ):
                inner = self._clamp(inner, route.mtu - 40)  # a SYN, or an unusual header
            append(inner)
        return result

    def from_udp(self, datagram: bytes, addr: tuple[str, int]) -> bytes | None:
        """Open one datagram from the ESP-in-UDP socket; return the inner packet.

        RFC 3948 sorting: a NAT keepalive is counted, IKE (behind the
        non-ESP marker) goes to ``on_ike``; ESP is opened with the inbound SA
        its SPI names, from an allowed outer source only, and its inner
        packet must come from the route's own address.  An authenticated
        packet from a new port of an allowed address moves the route there
        (NAT mappings change).  A TCP SYN has its MSS clamped.
        """
        inner = self.from_udp_many(((datagram, addr),))
        return inner[0] if inner else None

    def _not_esp(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """A datagram that is not ESP: a NAT keepalive, IKE, or garbage."""
        if datagram == NAT_KEEPALIVE:
            self.counters["keepalives_in"] += 1
        elif datagram[:4] == NON_ESP_MARKER and len(datagram) > 4 and self.on_ike:
            self.on_ike(datagram[4:], addr)
        else:
            self.counters["malformed"] += 1

    def _clamp(self, packet: bytes, mss: int) -> bytes:
        """Clamp the MSS of a TCP SYN so segments fit the route (both directions)."""
        if not _is_syn(packet):
            return packet
        try:
            clamped = ipv4.clamp_mss(packet, mss)
        except WireError:
            return packet  # the receiver will judge a broken header
        if clamped is None:
            return packet
        self.counters["mss_clamped"] += 1
        return clamped

    def _log_unknown(self, spi: int, addr: tuple[str, int]) -> None:
        now = self.clock.seconds()
        if now - self._last_unknown_log < self.log_interval:
            self._unknown_suppressed += 1
            return
        self.log.warn(
            "dropped ESP with unknown SPI 0x{spi:08x} from {host}:{port}"
            " ({more} more unknown-SPI drops since the last report)",
            spi=spi,
            host=addr[0],
            port=addr[1],
            more=self._unknown_suppressed,
        )
        self._last_unknown_log = now
        self._unknown_suppressed = 0

    def stats(self) -> dict[str, object]:
        """Totals and per-route counters as plain data."""
        return {
            "counters": dict(self.counters),
            "routes": [r.stats() for r in self.by_node.values()],
        }
