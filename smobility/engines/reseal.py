# -*- test-case-name: tests.test_reseal -*-
"""The relay's "terminate" mode (the seed's figures 1 and 3): re-sealing ESP, sans I/O.

In terminate mode the relay, a Mobile IP foreign agent on the public side of
the home firewall, ends each visiting client's ESP-in-UDP under a CHILD_SA
between the client and the relay (the *client leg*), and keeps for that
visitor a second CHILD_SA with the visitor's home agent (the *home leg*),
negotiated by the relay on the client's behalf with the client's home
address as its traffic selector.  Relay <-> home datagrams are UDP, relay
port ``local_port`` to home agent port ``home_port``, carried IP in IP by
:class:`smobility.adapters.ipip.IPIPSocket`; client datagrams come and go
through the relay's ESP-in-UDP socket.

:class:`ReSealer` opens ESP from one leg and seals the inner IPv4 packet
under the other:

- :meth:`ReSealer.from_clients` takes a batch of ``(datagram, (host, port))``
  from the client socket and appends ``(esp, local_port, home_agent,
  home_port)`` tuples (the IP-in-IP adapter's ``Outgoing``);
- :meth:`ReSealer.from_home` takes the adapter's ``(dport, payload, (source,
  sport))`` tuples and appends ``(esp, (host, port))`` for the client socket.

Each datagram is sorted as RFC 3948 says (NAT keepalive, IKE behind the
non-ESP marker, ESP).  ESP must name an inbound SA of the right side, come
from that leg's peer host, authenticate, and carry an IPv4 packet from (client
side) or to (home side) the visitor's own home address: a client can neither
speak for another home address nor reach one through the relay, and a home
agent can only reach the visitor its SA was made for.  Every drop is counted
by reason, in total and on the visitor's leg; nothing is logged per packet
except one rate-limited line for unknown SPIs and one line when an SA runs
out of sequence numbers.  Neither method raises, whatever the bytes.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smobility.wire.esp import (
    IKE_HEADER_LEN,
    NAT_KEEPALIVE,
    NEXT_HEADER_NONE,
    NON_ESP_MARKER,
    ESPError,
    InboundSA,
    OutboundSA,
    SAExpired,
)

__all__ = ["IKEHandler", "Leg", "ReSealer", "Visitor"]

Address = tuple[str, int]

IKEHandler = Callable[[bytes, Address], None]
"""Receives an IKE message (non-ESP marker removed) and the address it came from."""

_U32 = struct.Struct("!I")
_MIN_IPV4 = 20
_MIN_IKE = len(NON_ESP_MARKER) + IKE_HEADER_LEN


class Leg:
    """One CHILD_SA of a visitor: with the client, or with its home agent.

    ``addr`` is the peer's outer address: the client's (host, port) as the
    relay sees it (NAT included), or ``(home_agent, home_port)``.  Only
    datagrams from ``addr[0]`` are accepted on this leg.  ``old_inbound`` is
    the inbound SA a rekey replaced, still accepted until it is retired.
    ``packets_in``/``bytes_in`` count inner packets opened on this leg and
    passed on, ``packets_out``/``bytes_out`` inner packets sealed onto it;
    ``drops`` counts by reason what arrived on this leg and was dropped (and
    ``sa_expired`` for packets this leg could no longer send).
    """

    __slots__ = (
        "visitor",
        "inbound",
        "old_inbound",
        "outbound",
        "addr",
        "packets_in",
        "bytes_in",
        "packets_out",
        "bytes_out",
        "drops",
        "expired_logged",
    )

    def __init__(
        self, visitor: Visitor, inbound: InboundSA, outbound: OutboundSA, addr: Address
    ) -> None:
        self.visitor = visitor
        self.inbound = inbound
        self.old_inbound: InboundSA | None = None
        self.outbound = outbound
        self.addr = addr
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.drops: Counter[str] = Counter()
        self.expired_logged = False

    def stats(self) -> dict[str, object]:
        """This leg as plain data: SPIs, peer and counters, never key material."""
        old = self.old_inbound
        return {
            "peer": f"{self.addr[0]}:{self.addr[1]}",
            "spi_in": f"0x{self.inbound.spi:08x}",
            "spi_in_old": None if old is None else f"0x{old.spi:08x}",
            "spi_out": f"0x{self.outbound.spi:08x}",
            "seq_out": self.outbound.seq,
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "drops": dict(self.drops),
        }


class Visitor:
    """A visiting client of the relay: its home address and its two legs.

    ``home_address`` holds the 4 bytes of the client's home address, or
    ``b""`` while only the home leg is known.  A ``plain`` visitor (a client
    of the relay as VPN gateway) has no home leg: its opened packets are
    handed out as they are (``from_clients(..., plain=...)``), and packets
    for it are sealed with :meth:`ReSealer.seal_to_client`; ``home_address``
    is then its virtual address.
    """

    __slots__ = ("name", "home_address", "client", "home", "plain")

    def __init__(self, name: str) -> None:
        self.name = name
        self.home_address = b""
        self.client: Leg | None = None
        self.home: Leg | None = None
        self.plain = False

    def drops(self) -> Counter[str]:
        """Drops of both legs together."""
        total: Counter[str] = Counter()
        for leg in (self.client, self.home):
            if leg is not None:
                total.update(leg.drops)
        return total

    def stats(self) -> dict[str, object]:
        """The visitor as plain data."""
        return {
            "home_address": str(IPv4Address(self.home_address)) if self.home_address else None,
            "client": None if self.client is None else self.client.stats(),
            "home": None if self.home is None else self.home.stats(),
            "drops": dict(self.drops()),
        }


class ReSealer:
    """Per-visitor pair of SAs in a terminating relay; sans I/O.

    The SA database is driven by the relay's IKE and registration code
    (:meth:`set_client`, :meth:`rekey_client`, :meth:`retire_client`,
    :meth:`drop_client` and the same for the home leg, :meth:`remove`); the
    data path by the two sockets (:meth:`from_clients`, :meth:`from_home`).
    ``on_client_ike`` and ``on_home_ike`` receive the IKE messages that
    arrive on either side.  ``counters`` holds totals by reason.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        home_port: int = 4500,
        local_port: int = 4500,
        log_interval: float = 10.0,
    ) -> None:
        self.clock = clock
        self.home_port = home_port
        self.local_port = local_port
        self.log_interval = log_interval
        self.on_client_ike: IKEHandler | None = None
        self.on_home_ike: IKEHandler | None = None
        self.counters: Counter[str] = Counter()
        self.visitors: dict[str, Visitor] = {}
        self.by_home_address: dict[bytes, Visitor] = {}
        # Inbound SPI -> leg, one index per side: a client cannot reach a
        # home-leg SA through the client socket, nor the other way round.
        self.client_spis: dict[int, Leg] = {}
        self.home_spis: dict[int, Leg] = {}
        self._last_unknown_log = -1e18
        self._unknown_suppressed = 0
        self._last_handler_log = -1e18
        self._handler_suppressed = 0

    # -- client leg ---------------------------------------------------------------

    def set_client(
        self,
        visitor: str,
        home_address: IPv4Address,
        inbound: InboundSA,
        outbound: OutboundSA,
        addr: Address,
        *,
        plain: bool = False,
    ) -> None:
        """Install or replace the visitor's client leg (a new CHILD_SA, not a rekey).

        ``plain``: the visitor is a client of the relay as VPN gateway (no
        home leg; see :class:`Visitor`).

        ``addr`` is the client's outer (host, port); only datagrams from
        ``addr[0]`` are accepted on this leg, and an authenticated one from
        another port of that host moves ``addr`` there (NAT mappings change).
        The SAs of a replaced client leg stop working at once.

        @raise ValueError: another visitor has this home address, or another
            leg already uses this inbound SPI.
        """
        packed = home_address.packed
        owner = self.by_home_address.get(packed)
        if owner is not None and owner.name != visitor:
            raise ValueError(f"home address {home_address} belongs to visitor {owner.name!r}")
        v = self.visitors.get(visitor)
        self._check_spi(self.client_spis, inbound.spi, None if v is None else v.client)
        if v is None:
            v = self.visitors[visitor] = Visitor(visitor)
        if v.client is not None:
            self._unlink(self.client_spis, v.client)
        if v.home_address and v.home_address != packed:
            self.by_home_address.pop(v.home_address, None)
        v.home_address = packed
        self.by_home_address[packed] = v
        v.client = Leg(v, inbound, outbound, addr)
        v.plain = plain
        self.client_spis[inbound.spi] = v.client
        self.log.info(
            "client leg of {visitor} ({hoa}) at {host}:{port}: spi_in 0x{i:08x} spi_out 0x{o:08x}",
            visitor=visitor, hoa=str(home_address), host=addr[0], port=addr[1],
            i=inbound.spi, o=outbound.spi,
        )  # fmt: skip

    def move_client(self, visitor: str, addr: Address) -> None:
        """Point the visitor's client leg at a new outer address (a new care-of address).

        The SAs, counters and replay windows stay; only datagrams from the
        new host are accepted from now on.
        """
        v = self.visitors.get(visitor)
        if v is None or v.client is None:
            return
        v.client.addr = addr
        self.log.info(
            "client leg of {visitor} moved to {host}:{port}",
            visitor=visitor, host=addr[0], port=addr[1],
        )  # fmt: skip

    def rekey_client(self, visitor: str, inbound: InboundSA, outbound: OutboundSA) -> None:
        """Switch the client leg to new SAs, make before break.

        Sealing uses ``outbound`` at once; the inbound SA being replaced is
        still accepted until :meth:`retire_client` names it.  Nothing happens
        if the visitor has no client leg.

        @raise ValueError: another leg already uses this inbound SPI.
        """
        v = self.visitors.get(visitor)
        self._rekey(self.client_spis, None if v is None else v.client, visitor, "client",
                    inbound, outbound)  # fmt: skip

    def retire_client(self, visitor: str, spi: int) -> None:
        """Stop accepting the client leg's old inbound SA ``spi`` (after a rekey)."""
        v = self.visitors.get(visitor)
        if v is not None and v.client is not None:
            self._retire(self.client_spis, v.client, spi)

    def drop_client(self, visitor: str, spi: int | None = None) -> None:
        """The client leg is gone (with ``spi``: only if that is its current inbound SPI).

        The home leg stays, and with it the visitor; a visitor left with
        neither leg is forgotten.
        """
        v = self.visitors.get(visitor)
        if v is None or v.client is None:
            return
        if spi is not None and v.client.inbound.spi != spi:
            return
        self._unlink(self.client_spis, v.client)
        v.client = None
        self.log.info("client leg of {visitor} removed", visitor=visitor)
        if v.home is None:
            self._forget(v)

    # -- home leg -------------------------------------------------------------------

    def set_home(
        self, visitor: str, home_agent: str, inbound: InboundSA, outbound: OutboundSA
    ) -> None:
        """Install or replace the visitor's home leg with its home agent ``home_agent``.

        Only datagrams from ``home_agent`` are accepted on this leg, and
        sealed packets go to ``(home_agent, home_port)``.

        @raise ValueError: ``home_agent`` is not an IPv4 address, or another
            leg already uses this inbound SPI.
        """
        host = str(IPv4Address(home_agent))
        v = self.visitors.get(visitor)
        self._check_spi(self.home_spis, inbound.spi, None if v is None else v.home)
        if v is None:
            v = self.visitors[visitor] = Visitor(visitor)
        if v.home is not None:
            self._unlink(self.home_spis, v.home)
        v.home = Leg(v, inbound, outbound, (host, self.home_port))
        self.home_spis[inbound.spi] = v.home
        self.log.info(
            "home leg of {visitor} with {ha}: spi_in 0x{i:08x} spi_out 0x{o:08x}",
            visitor=visitor, ha=host, i=inbound.spi, o=outbound.spi,
        )  # fmt: skip

    def rekey_home(self, visitor: str, inbound: InboundSA, outbound: OutboundSA) -> None:
        """Switch the home leg to new SAs, make before break (see :meth:`rekey_client`).

        @raise ValueError: another leg already uses this inbound SPI.
        """
        v = self.visitors.get(visitor)
        self._rekey(self.home_spis, None if v is None else v.home, visitor, "home",
                    inbound, outbound)  # fmt: skip

    def retire_home(self, visitor: str, spi: int) -> None:
        """Stop accepting the home leg's old inbound SA ``spi`` (after a rekey)."""
        v = self.visitors.get(visitor)
        if v is not None and v.home is not None:
            self._retire(self.home_spis, v.home, spi)

    def drop_home(self, visitor: str, spi: int | None = None) -> None:
        """The home leg is gone (with ``spi``: only if that is its current inbound SPI).

        The client leg stays; a visitor left with neither leg is forgotten.
        """
        v = self.visitors.get(visitor)
        if v is None or v.home is None:
            return
        if spi is not None and v.home.inbound.spi != spi:
            return
        self._unlink(self.home_spis, v.home)
        v.home = None
        self.log.info("home leg of {visitor} removed", visitor=visitor)
        if v.client is None:
            self._forget(v)

    def remove(self, visitor: str) -> None:
        """Forget the visitor: both legs, and its claim to its home address."""
        v = self.visitors.get(visitor)
        if v is None:
            return
        if v.client is not None:
            self._unlink(self.client_spis, v.client)
            v.client = None
        if v.home is not None:
            self._unlink(self.home_spis, v.home)
            v.home = None
        self._forget(v)
        self.log.info("visitor {visitor} removed", visitor=visitor)

    # -- SA database helpers -----------------------------------------------------

    @staticmethod
    def _check_spi(index: dict[int, Leg], spi: int, replacing: Leg | None) -> None:
        owner = index.get(spi)
        if owner is not None and owner is not replacing:
            raise ValueError(
                f"inbound SPI 0x{spi:08x} is already in use by visitor {owner.visitor.name!r}"
            )

    @staticmethod
    def _unlink(index: dict[int, Leg], leg: Leg) -> None:
        if index.get(leg.inbound.spi) is leg:
            del index[leg.inbound.spi]
        old = leg.old_inbound
        if old is not None and index.get(old.spi) is leg:
            del index[old.spi]

    def _rekey(
        self,
        index: dict[int, Leg],
        leg: Leg | None,
        visitor: str,
        side: str,
        inbound: InboundSA,
        outbound: OutboundSA,
    ) -> None:
        if leg is None:
            self.log.warn(
                "rekey of the {side} leg of {visitor} ignored: no such leg",
                side=side, visitor=visitor,
            )  # fmt: skip
            return
        self._check_spi(index, inbound.spi, leg)
        old = leg.old_inbound
        if old is not None and index.get(old.spi) is leg:
            # A second rekey before the first was retired: the oldest SA goes.
            del index[old.spi]
        leg.old_inbound = leg.inbound
        leg.inbound = inbound
        leg.outbound = outbound
        leg.expired_logged = False
        index[inbound.spi] = leg
        self.log.info(
            "{side} leg of {visitor} rekeyed: spi_in 0x{i:08x} spi_out 0x{o:08x}",
            side=side, visitor=visitor, i=inbound.spi, o=outbound.spi,
        )  # fmt: skip

    @staticmethod
    def _retire(index: dict[int, Leg], leg: Leg, spi: int) -> None:
        old = leg.old_inbound
        if old is None or old.spi != spi:
            return
        if index.get(spi) is leg and leg.inbound.spi != spi:
            del index[spi]
        leg.old_inbound = None

    def _forget(self, v: Visitor) -> None:
        if self.visitors.get(v.name) is v:
            del self.visitors[v.name]
        if v.home_address and self.by_home_address.get(v.home_address) is v:
            del self.by_home_address[v.home_address]

    # -- data path ------------------------------------------------------------------

    def from_clients(
        self,
        datagrams: Iterable[tuple[bytes, Address]],
        out: list[tuple[bytes, int, str, int]],
        plain: list[tuple[Visitor, bytes]] | None = None,
    ) -> None:
        """Re-seal a batch from the client socket for the home agents.

        Appends ``(esp, local_port, home_agent, home_port)`` to ``out`` for
        each packet that passes; counts every other datagram.  Never raises.
        The packets of ``plain`` visitors go to ``plain`` as ``(visitor,
        inner packet)``, checked like the others (source: their address).
        """
        index = self.client_spis
        counters = self.counters
        append = out.append
        unpack = _U32.unpack_from
        local_port = self.local_port
        home_port = self.home_port
        before = len(out)
        for datagram, addr in datagrams:
            if len(datagram) < 8 or datagram.startswith(NON_ESP_MARKER):
                self._not_esp(datagram, addr, self.on_client_ike, "ike_from_clients")
                continue
            spi = unpack(datagram)[0]
            leg = index.get(spi)
            if leg is None:
                counters["unknown_spi"] += 1
                self._log_unknown(spi, addr, "a client")
                continue
            if addr[0] != leg.addr[0]:
                leg.drops["bad_source"] += 1
                counters["bad_source"] += 1
                continue
            sa = leg.inbound
            if sa.spi != spi:
                # The SA a rekey replaced: still accepted until retired.
                old = leg.old_inbound
                if old is None:  # the index and the leg disagree: cannot happen
                    counters["unknown_spi"] += 1
                    continue
                sa = old
            try:
                inner = sa.open(datagram)
            except ESPError as e:
                leg.drops[e.reason] += 1
                counters[e.reason] += 1
                continue
            if addr != leg.addr:
                # Authenticated, from the leg's host: the NAT mapping moved.
                leg.addr = addr
                counters["client_port_moves"] += 1
            if not inner:
                counters["dummies_in"] += 1
                continue
            size = len(inner)
            if size < _MIN_IPV4 or inner[0] >> 4 != 4:
                leg.drops["malformed_inner"] += 1
                counters["malformed_inner"] += 1
                continue
            visitor = leg.visitor
            if not inner.startswith(visitor.home_address, 12):
                leg.drops["spoofed_inner_source"] += 1
                counters["spoofed_inner_source"] += 1
                continue
            home = visitor.home
            if home is None:
                if visitor.plain and plain is not None:
                    leg.packets_in += 1
                    leg.bytes_in += size
                    plain.append((visitor, inner))
                    continue
                leg.drops["home_sa_pending"] += 1
                counters["home_sa_pending"] += 1
                continue
            try:
                esp = home.outbound.seal(inner)
            except SAExpired as e:
                self._expired(home, "home", e)
                continue
            leg.packets_in += 1
            leg.bytes_in += size
            home.packets_out += 1
            home.bytes_out += size
            append((esp, local_port, home.addr[0], home_port))
        counters["resealed_to_home"] += len(out) - before

    def from_home(
        self,
        items: Iterable[tuple[int, bytes, Address]],
        out: list[tuple[bytes, Address]],
    ) -> None:
        """Re-seal a batch from the IP-in-IP adapter for the clients.

        ``items`` are ``(dport, payload, (source, sport))``; appends
        ``(esp, client_addr)`` to ``out`` for each packet that passes and
        counts every other datagram.  Never raises.
        """
        index = self.home_spis
        counters = self.counters
        append = out.append
        unpack = _U32.unpack_from
        local_port = self.local_port
        before = len(out)
        for dport, payload, source in items:
            if dport != local_port:
                counters["wrong_port"] += 1
                continue
            if len(payload) < 8 or payload.startswith(NON_ESP_MARKER):
                self._not_esp(payload, source, self.on_home_ike, "ike_from_home")
                continue
            spi = unpack(payload)[0]
            leg = index.get(spi)
            if leg is None:
                counters["unknown_spi"] += 1
                self._log_unknown(spi, source, "a home agent")
                continue
            if source[0] != leg.addr[0]:
                leg.drops["bad_source"] += 1
                counters["bad_source"] += 1
                continue
            sa = leg.inbound
            if sa.spi != spi:
                old = leg.old_inbound
                if old is None:  # the index and the leg disagree: cannot happen
                    counters["unknown_spi"] += 1
                    continue
                sa = old
            try:
                inner = sa.open(payload)
            except ESPError as e:
                leg.drops[e.reason] += 1
                counters[e.reason] += 1
                continue
            if not inner:
                counters["dummies_in"] += 1
                continue
            size = len(inner)
            if size < _MIN_IPV4 or inner[0] >> 4 != 4:
                leg.drops["malformed_inner"] += 1
                counters["malformed_inner"] += 1
                continue
            visitor = leg.visitor
            # A visitor known only by its home leg has no home address yet
            # (b""): its packets wait for the client leg like any other.
            if not inner.startswith(visitor.home_address, 16):
                leg.drops["wrong_inner_destination"] += 1
                counters["wrong_inner_destination"] += 1
                continue
            client = visitor.client
            if client is None:
                leg.drops["client_sa_pending"] += 1
                counters["client_sa_pending"] += 1
                continue
            try:
                esp = client.outbound.seal(inner)
            except SAExpired as e:
                self._expired(client, "client", e)
                continue
            leg.packets_in += 1
            leg.bytes_in += size
            client.packets_out += 1
            client.bytes_out += size
            append((esp, client.addr))
        counters["resealed_to_clients"] += len(out) - before

    def seal_to_client(self, visitor: Visitor, inner: bytes) -> tuple[bytes, Address] | None:
        """Seal an IPv4 packet addressed to a visitor's own address for its client.

        For ``plain`` visitors (the relay as VPN gateway): ``None``, counted,
        when the packet is not addressed to the visitor or it has no client
        leg (any more).
        """
        counters = self.counters
        if not inner.startswith(visitor.home_address, 16) or not visitor.home_address:
            counters["wrong_inner_destination"] += 1
            return None
        client = visitor.client
        if client is None:
            counters["client_sa_pending"] += 1
            return None
        try:
            esp = client.outbound.seal(inner)
        except SAExpired as e:
            self._expired(client, "client", e)
            return None
        client.packets_out += 1
        client.bytes_out += len(inner)
        counters["sealed_to_clients"] += 1
        return esp, client.addr

    def dummy_to_client(self, visitor: str) -> tuple[bytes, Address] | None:
        """An authenticated dummy ESP packet (next header 59) for the visitor's client.

        Sent when the client leg is set up, so that the client learns the
        relay's path from an authenticated packet (RFC 4303 section 2.6).
        ``None`` without a client leg or when its SA is used up.
        """
        v = self.visitors.get(visitor)
        if v is None or v.client is None:
            return None
        try:
            esp = v.client.outbound.seal(b"", NEXT_HEADER_NONE)
        except SAExpired:
            return None
        self.counters["dummies_out"] += 1
        return esp, v.client.addr

    # -- helpers --------------------------------------------------------------------

    def _not_esp(
        self, datagram: bytes, addr: Address, handler: IKEHandler | None, counter: str
    ) -> None:
        """A datagram that is not ESP: a NAT keepalive, IKE, or garbage."""
        counters = self.counters
        if datagram == NAT_KEEPALIVE:
            counters["keepalives_in"] += 1
        elif len(datagram) >= _MIN_IKE and datagram.startswith(NON_ESP_MARKER):
            if handler is None:
                counters["ike_unhandled"] += 1
                return
            counters[counter] += 1
            try:
                handler(datagram[4:], addr)
            except Exception:
                # The IKE side's bug must not cost the rest of the batch.
                counters["ike_handler_errors"] += 1
                now = self.clock.seconds()
                if now - self._last_handler_log < self.log_interval:
                    self._handler_suppressed += 1
                    return
                self.log.failure(
                    "the IKE handler failed on a message from {host}:{port}"
                    " ({more} more failures since the last report)",
                    host=addr[0], port=addr[1], more=self._handler_suppressed,
                )  # fmt: skip
                self._last_handler_log = now
                self._handler_suppressed = 0
        else:
            counters["malformed"] += 1

    def _expired(self, leg: Leg, side: str, error: SAExpired) -> None:
        leg.drops["sa_expired"] += 1
        self.counters["sa_expired"] += 1
        if not leg.expired_logged:
            leg.expired_logged = True
            self.log.error(
                "traffic on the {side} leg of {visitor} stopped: {why}",
                side=side, visitor=leg.visitor.name, why=str(error),
            )  # fmt: skip

    def _log_unknown(self, spi: int, addr: Address, who: str) -> None:
        now = self.clock.seconds()
        if now - self._last_unknown_log < self.log_interval:
            self._unknown_suppressed += 1
            return
        self.log.warn(
            "dropped ESP with unknown SPI 0x{spi:08x} from {who} at {host}:{port}"
            " ({more} more unknown-SPI drops since the last report)",
            spi=spi, who=who, host=addr[0], port=addr[1], more=self._unknown_suppressed,
        )  # fmt: skip
        self._last_unknown_log = now
        self._unknown_suppressed = 0

    def stats(self) -> dict[str, object]:
        """Totals and per-visitor legs as plain data: SPIs and counters, never keys."""
        return {
            "counters": dict(self.counters),
            "visitors": {name: v.stats() for name, v in self.visitors.items()},
        }
