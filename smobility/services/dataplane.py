# -*- test-case-name: tests.test_roaming -*-
"""The data plane of the home agent and of the client: TUN <-> ESP-in-UDP.

One mechanism serves both roles: a :class:`~smobility.engines.tunnel.TunnelEngine`
between a TUN device and a UDP socket (:class:`TunnelPipe`).  What differs is
how routes follow registrations:

- :class:`HomeDataPlane` listens to the home agent's bindings.  A binding
  makes the home address reachable through the TUN device (a host route),
  answers ARP for it on the home LAN (a proxy neighbour entry, announced with
  gratuitous ARPs) and points the node's route at its care-of address, or at
  the NAT mapping when the registration showed NAT.  No binding: all undone.
  A node that only runs IKEv2 (a stock client: CP gave it its home address,
  it never registers) is captured the same way while its CHILD_SA lives,
  routed to its IKE peer's NAT-T address; a later binding takes over.
- :class:`ClientDataPlane` listens to the mobile node's registration state.
  Registered from away: the home network (or everything) is routed into the
  TUN device, which carries the permanent address; at home: those routes go,
  the LAN is used directly, and a gratuitous ARP gives the home address its
  own MAC again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from smobility.adapters.arp import send_gratuitous_arp
from smobility.adapters.netlink import Netlink, NetlinkError
from smobility.adapters.tun import TunDevice, TunError
from smobility.adapters.udpfast import UDPError, UDPSocket
from smobility.config import ESPKeys
from smobility.engines.bindings import Binding
from smobility.engines.homeagent import HomeAgent
from smobility.engines.mobilenode import MobileNode, State
from smobility.engines.tunnel import TunnelEngine
from smobility.services.common import StartupError
from smobility.wire.esp import NAT_KEEPALIVE, InboundSA, OutboundSA, tunnel_mtu

if TYPE_CHECKING:
    from smobility.engines.ike import IKESA, ChildSA
    from smobility.services.ike_service import IKEService
    from smobility.wire.ikev2 import Identity


def child_sas(child: ChildSA) -> tuple[InboundSA, OutboundSA]:
    """The (inbound, outbound) SAs of a CHILD_SA that IKE negotiated."""
    return (
        InboundSA.from_keymat(child.inbound_spi, child.inbound_keymat),
        OutboundSA.from_keymat(child.outbound_spi, child.outbound_keymat),
    )


SEQUENCE_CHECK = 5.0
"""Seconds between checks of the ESP sequence space (rekey before it runs out)."""


class _SequenceWatchMixin:
    """Holds the LoopingCall that watches ESP sequence spaces (IKE-keyed tunnels)."""

    _sequence_watch: LoopingCall | None = None

    def _stop_sequence_watch(self) -> None:
        watch, self._sequence_watch = self._sequence_watch, None
        if watch is not None and watch.running:
            watch.stop()


def make_sas(keys: ESPKeys, *, side: str) -> tuple[InboundSA, OutboundSA]:
    """The (inbound, outbound) SAs of ``side`` ("home" or "client") from manual keys."""
    to_home = (keys.spi_to_home, keys.key_to_home)
    to_client = (keys.spi_to_client, keys.key_to_client)
    rx, tx = (to_home, to_client) if side == "home" else (to_client, to_home)
    return InboundSA.from_keymat(*rx), OutboundSA.from_keymat(*tx)


class TunnelPipe:
    """A TUN device and an ESP-in-UDP socket joined by a tunnel engine.

    Both sides work in batches: every reactor wake-up of the TUN device or
    of the UDP socket hands the engine a list of packets, and what comes out
    leaves in as few system calls as the kernel allows (GSO runs on the UDP
    side, TCP super-packets on the TUN side; see
    :mod:`smobility.adapters.udpfast` and :mod:`smobility.adapters.tun`).
    ``on_inner``, if given, is called with the inner packets of each batch
    that reached the TUN device.  The keyword arguments ``tun_gro``,
    ``tun_tso``, ``udp_gro`` and ``udp_gso`` turn single offloads off (each
    also falls back by itself where the kernel lacks it); ``txqueuelen`` is
    the TUN device's queue of packets waiting to be read (the kernel's 500,
    even 1000, overflow at a Gbit/s whenever the reactor is late by a few
    milliseconds: each overflow is a TCP retransmission).  TSO is off by
    default: segmenting in Python costs more than the kernel's segmenting
    saves, while joining segments on write (GRO) pays.
    """

    log = Logger()

    def __init__(
        self,
        engine: TunnelEngine,
        *,
        device: str,
        reactor: Any,
        on_inner: Callable[[list[bytes]], None] | None = None,
        tun_gro: bool = True,
        tun_tso: bool = False,
        udp_gro: bool = True,
        udp_gso: bool = True,
        txqueuelen: int = 2000,
    ) -> None:
        self.engine = engine
        self.reactor = reactor
        self.device_name = device
        self.on_inner = on_inner
        self.tun_gro = tun_gro
        self.tun_tso = tun_tso
        self.udp_gro = udp_gro
        self.udp_gso = udp_gso
        self.txqueuelen = txqueuelen
        self.tun: TunDevice | None = None
        self.udp: UDPSocket | None = None
        self.counters: Counter[str] = Counter()
        self._out: list[tuple[bytes, tuple[str, int]]] = []
        self._back: list[bytes] = []
        self.divert: Callable[[list[tuple[bytes, tuple[str, int]]]], bool] | None = None
        # Source addresses to read as others (the client's relay path: what
        # the relay forwards comes from the home agent, end to end).
        self.translate: dict[tuple[str, int], tuple[str, int]] = {}

    def open(self, listen: str, port: int) -> None:
        """Create the TUN device and bind the UDP socket; one sentence on failure."""
        self.tun = TunDevice(
            self.device_name,
            self._from_tun,
            reactor=self.reactor,
            gro=self.tun_gro,
            tso=self.tun_tso,
            txqueuelen=self.txqueuelen,
        )
        try:
            self.tun.open()
        except TunError as e:
            raise StartupError(str(e)) from None
        self.udp = UDPSocket(
            self._from_udp,
            reactor=self.reactor,
            gro=self.udp_gro,
            gso=self.udp_gso,
            on_refused=self._refused,
        )
        try:
            self.udp.listen(listen, port)
        except UDPError as e:
            self.udp = None
            self.tun.close()
            raise StartupError(
                f"cannot listen on UDP {listen}:{port} for ESP-in-UDP ({e.socket_error})"
            ) from None

    def close(self) -> None:
        """Stop reading and release the device and the socket."""
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None

    def _from_tun(self, packets: list[bytes]) -> None:
        out = self._out
        back = self._back
        self.engine.from_tun(packets, out, back)
        if out:
            self.send_all(out)
            out.clear()
        if back and self.tun is not None:
            self.tun.write_many(back)
            back.clear()

    def _from_udp(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        translate = self.translate
        if translate:
            datagrams = [(d, translate.get(a, a)) for d, a in datagrams]
        inner = self.engine.from_udp_many(datagrams)
        if inner and self.tun is not None:
            self.tun.write_many(inner)
            if self.on_inner is not None:
                self.on_inner(inner)

    def send_all(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Send sealed datagrams; a failed send (no route while moving) is counted.

        ``divert`` (the client's path manager) may take them instead: then an
        HTTP transport carries them to the multiplexer.
        """
        if self.divert is not None and self.divert(datagrams):
            return
        if self.udp is None:
            return
        self.udp.send_many(datagrams)

    def receive(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """A datagram that came another way (an HTTP transport), as if read from UDP."""
        self._from_udp([(datagram, addr)])

    def receive_many(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """A batch of datagrams that came another way, as if read from UDP at once."""
        self._from_udp(datagrams)

    def send(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram from the ESP-in-UDP socket."""
        self.send_all([(datagram, addr)])

    def _refused(self) -> None:
        self.counters["icmp_refused"] += 1

    def stats(self) -> dict[str, object]:
        """The counters of the pipe, its TUN device and its UDP socket."""
        return {
            "pipe": dict(self.counters),
            "tun": dict(self.tun.counters) if self.tun is not None else {},
            "udp": dict(self.udp.counters) if self.udp is not None else {},
        }


class HomeDataPlane(_SequenceWatchMixin, service.Service):
    """The home agent's tunnel: routes, proxy ARP and SAs that follow bindings."""

    log = Logger()

    def __init__(
        self,
        home: HomeAgent,
        *,
        sas: dict[str, tuple[InboundSA, OutboundSA]],
        device: str,
        listen: str,
        port: int,
        lan_interface: str | None,
        path_mtu: int,
        lan_address: IPv4Address,
        reactor: Any,
        netlink: Netlink | None = None,
    ) -> None:
        self.home = home
        self.sas = sas
        self.listen = listen
        self.esp_port = port
        self.lan = lan_interface
        self.mtu = tunnel_mtu(path_mtu)
        self.reactor = reactor
        self.netlink = netlink
        self.engine = TunnelEngine(clock=reactor, mtu=self.mtu, local_inner=lan_address)
        self.pipe = TunnelPipe(self.engine, device=device, reactor=reactor)
        self.installed: dict[str, IPv4Address] = {}
        # IKEv2 (attach_ike): the SAs of each node's CHILD_SA, kept while no
        # binding exists, and the node's IKE identity.
        self.ike: IKEService | None = None
        self.ike_port = 0
        self.ike_names: dict[str, str] = {}
        self.ike_ids: dict[str, Identity] = {}
        self.ike_sas: dict[str, tuple[InboundSA, OutboundSA]] = {}
        # Nodes served by IKE alone (a stock IKEv2 client, no registration):
        # routed to the IKE peer's NAT-T address, home address captured.
        self.ike_only: set[str] = set()
        self._ike_listener: Any = None
        # Relays (foreign agents) reached by IP-in-IP (attach_relays).
        self.relays: frozenset[str] = frozenset()
        self.ipip: Any = None
        # Terminating relays: the relay of each IKE identity (str), and the
        # SAs a relay negotiated on a node's behalf, with that relay.
        self.relay_ids: dict[str, str] = {}
        self.relay_sas: dict[str, tuple[str, InboundSA, OutboundSA]] = {}

    def attach_ike(
        self, ike: IKEService, names: dict[str, str], ids: dict[str, Identity], port: int
    ) -> None:
        """Key the tunnels of IKE nodes with ``ike`` (a responder).

        ``names`` maps a peer identity (``str``) to its node, ``ids`` a node
        to its identity; ``port`` is the plain IKE port to listen on (0: none,
        only the NAT-T port through the tunnel engine).
        """
        self.ike = ike
        self.ike_names = names
        self.ike_ids = ids
        self.ike_port = port
        ike.on_up = self.child_up
        ike.on_down = self.child_down
        local = (self.listen, self.esp_port)
        self.engine.on_ike = lambda message, addr: ike.receive(message, addr, local)
        ike.send_nat_t = self.pipe.send_all
        self._watch_sequences(ike)

    def attach_relays(self, ipip: Any, relays: Iterable[str]) -> None:
        """Send what goes to a relay's address through ``ipip`` (an IP-in-IP socket).

        The relay stands for its visitors like a NAT: each client flow has a
        port of the relay's, and the route to the client points at
        ``(relay, port)``.  Those datagrams (ESP and IKE) leave inside
        IP-in-IP from our ESP port; everything else leaves by UDP as before.
        """
        self.ipip = ipip
        self.relays = frozenset(relays)
        self.pipe.divert = self._divert_relays

    def attach_relay_ike(self, relay_ids: dict[str, str]) -> None:
        """Accept CHILD_SAs from terminating relays: ``relay_ids`` maps identity (str) -> address.

        A relay may only negotiate SAs for the home addresses registered
        through it (the IKE engine's traffic-selector policy, checked again
        here); such a CHILD_SA carries that node's traffic while its binding
        names the relay.
        """
        self.relay_ids = dict(relay_ids)
        if self.ike is not None:
            self.ike.engine.ts_policy = self._relay_ts_policy

    def relay_nodes(self, relay: str) -> dict[IPv4Address, str]:
        """The nodes whose current binding is through ``relay``, by home address."""
        result: dict[IPv4Address, str] = {}
        for node, bindings in self.home.bindings.items():
            if bindings:
                b = max(bindings, key=lambda x: x.registered)
                if b.path == "relay" and str(b.care_of_address) == relay:
                    result[b.home_address] = node
        return result

    def _relay_ts_policy(self, peer: Any) -> tuple[Any, ...] | None:
        from smobility.engines.ike import ts_host

        relay = self.relay_ids.get(str(peer.identity)) if peer.identity is not None else None
        if relay is None:
            return None
        return tuple(ts_host(hoa) for hoa in self.relay_nodes(relay))

    def _relay_child_up(self, child: ChildSA, relay: str) -> None:
        """A terminating relay's CHILD_SA for one of its visitors (TS: that home address)."""
        sels = child.remote_ts
        hoa = sels[0].start if len(sels) == 1 and sels[0].start == sels[0].end else None
        node = self.relay_nodes(relay).get(IPv4Address(hoa)) if hoa is not None else None
        if node is None:
            self.log.warn(
                "relay {relay} keyed a CHILD_SA for {ts}, not one home address registered "
                "through it: refused", relay=relay, ts=", ".join(map(str, sels)),
            )  # fmt: skip
            self._delete_ike_sa_of(child)
            return
        inbound, outbound = child_sas(child)
        self.relay_sas[node] = (relay, inbound, outbound)
        route = self.engine.by_node.get(node)
        if child.replaces is not None and route is not None and route.path == "relay-terminate":
            self.engine.rekey(node, inbound, outbound)
        else:
            self.engine.install(
                node, IPv4Address(hoa), inbound, outbound, (relay, 4500), {relay},
                "relay-terminate",
            )  # fmt: skip
        self.log.info(
            "tunnel to {node} now through relay {relay}, keyed by the relay's IKE "
            "(spi_in 0x{i:08x} spi_out 0x{o:08x})",
            node=node, relay=relay, i=child.inbound_spi, o=child.outbound_spi,
        )  # fmt: skip

    def _relay_child_down(self, child: ChildSA, reason: str) -> None:
        for node, (_, inbound, _) in list(self.relay_sas.items()):
            route = self.engine.by_node.get(node)
            if route is not None and route.path == "relay-terminate":
                self.engine.retire(node, child.inbound_spi)
            if inbound.spi != child.inbound_spi:
                continue
            del self.relay_sas[node]
            if route is not None and route.inbound.spi == child.inbound_spi:
                self.engine.remove(node)
                self.log.info(
                    "tunnel to {node} through its relay has no SAs ({why})", node=node, why=reason
                )

    def _delete_ike_sa_of(self, child: ChildSA) -> None:
        if self.ike is None:
            return
        for sa in list(self.ike.engine.sas.values()):
            if (sa.spi_i, sa.spi_r) == child.ike_spis:
                self.ike.engine.delete_ike_sa(sa)
        self.ike.flush()

    def _divert_relays(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> bool:
        relays = self.relays
        for _, addr in datagrams:
            if addr[0] in relays:
                break
        else:
            return False
        direct = []
        port = self.esp_port
        send = self.ipip.send
        for datagram, addr in datagrams:
            if addr[0] in relays:
                send(datagram, port, addr[0], addr[1])
            else:
                direct.append((datagram, addr))
        if direct and self.pipe.udp is not None:
            self.pipe.udp.send_many(direct)
        return True

    def _watch_sequences(self, ike: IKEService) -> None:
        """Rekey before an ESP SA's 32-bit sequence space runs out (checked every 5 s)."""
        watch = LoopingCall(lambda: ike.rekey_exhausted(list(self.engine.by_node.values())))
        watch.clock = self.reactor
        watch.start(SEQUENCE_CHECK, now=False)
        self._sequence_watch = watch

    def _listen_ike(self) -> None:
        if self.ike is None or not self.ike_port:
            return
        from twisted.internet.error import CannotListenError

        from smobility.services.ike_service import IKEPort

        proto = IKEPort(self.ike, (self.listen, self.ike_port))
        try:
            self._ike_listener = self.reactor.listenUDP(
                self.ike_port, proto, interface=self.listen
            )
        except CannotListenError as e:
            raise StartupError(
                f"cannot listen on UDP {self.listen}:{self.ike_port} for IKE ({e.socketError})"
            ) from None
        self.ike.send_plain = proto.send_all

    def child_up(self, child: ChildSA) -> None:
        """A CHILD_SA for a node: its SAs replace any others, now or when it registers.

        A node without a binding whose CP request was answered with its home
        address (a stock IKEv2 client, which never registers) is served by
        IKE alone: its route points at the IKE peer's NAT-T address and its
        home address is captured on the home LAN, as a registration would.
        """
        relay = self.relay_ids.get(str(child.peer_id))
        if relay is not None:
            self._relay_child_up(child, relay)
            return
        node = self.ike_names.get(str(child.peer_id))
        if node is None:
            self.log.warn("CHILD_SA for unknown identity {id}", id=str(child.peer_id))
            return
        self.ike_sas[node] = child_sas(child)
        route = self.engine.by_node.get(node)
        if route is not None and route.path == "relay-terminate":
            return  # kept for when the node leaves its terminating relay
        bindings = list(self.home.bindings.get(node, []))
        if route is None and bindings:
            self.bindings_changed(node, bindings)
            return
        if not bindings and (route is None or (node in self.ike_only and child.replaces is None)):
            # A new CHILD_SA (maybe of a new IKE SA, from a new address).
            if child.replaces is None and self._serve_ike_only(node, child):
                return
            self._withdraw(node)  # no binding: nothing of an earlier route stays
            self.log.info(
                "IKE SAs for {node} kept until it registers (spi_in 0x{i:08x})",
                node=node, i=child.inbound_spi,
            )
            return
        assert route is not None
        inbound, outbound = self.ike_sas[node]
        if child.replaces is not None:
            # A rekey: the old inbound SA stays until the old CHILD_SA goes.
            self.engine.rekey(node, inbound, outbound)
        else:
            inner = IPv4Address(route.inner) if route.inner is not None else None
            self.engine.install(
                node, inner, inbound, outbound, route.addr, route.sources, route.path
            )
        self.log.info(
            "tunnel to {node} now keyed by IKE: spi_in 0x{i:08x} spi_out 0x{o:08x}",
            node=node, i=child.inbound_spi, o=child.outbound_spi,
        )

    def _serve_ike_only(self, node: str, child: ChildSA) -> bool:
        """Route ``node`` by its IKE SA alone; False if CP gave it no address."""
        hoa = self.ike.assigned_address(child) if self.ike is not None else None
        if hoa is None:
            return False
        host, port = child.peer_addr
        # RFC 3948: ESP in UDP to the port the peer's IKE moved to (4500, or
        # its NAT mapping of 4500); never to the plain IKE port.
        addr = (host, 4500 if port == self.ike_port or port == 500 else port)
        inbound, outbound = self.ike_sas[node]
        # Authenticated source: ESP from the IKE peer's address only.
        self.engine.install(node, hoa, inbound, outbound, addr, {host}, "ike")
        self.ike_only.add(node)
        if self.installed.get(node) != hoa:
            if node in self.installed:
                self._release(node)
            self.installed[node] = hoa
            self._capture(node, hoa)
        self.log.info(
            "tunnel to {node} ({hoa}) by IKE alone, no registration: via {host}:{port} "
            "(spi_in 0x{i:08x} spi_out 0x{o:08x})",
            node=node, hoa=hoa, host=addr[0], port=addr[1], i=child.inbound_spi,
            o=child.outbound_spi,
        )  # fmt: skip
        return True

    def child_down(self, child: ChildSA, reason: str) -> None:
        """A CHILD_SA is gone: its SAs leave the data plane.

        A node served by IKE alone (no binding) is withdrawn altogether:
        route, host route and proxy ARP.
        """
        if str(child.peer_id) in self.relay_ids:
            self._relay_child_down(child, reason)
            return
        node = self.ike_names.get(str(child.peer_id))
        if node is None:
            return
        self.engine.retire(node, child.inbound_spi)
        current = self.ike_sas.get(node)
        if current is None or current[0].spi != child.inbound_spi:
            return  # an older one, already replaced
        del self.ike_sas[node]
        route = self.engine.by_node.get(node)
        if route is not None and route.inbound.spi == child.inbound_spi:
            if node in self.ike_only and not self.home.bindings.get(node):
                self._withdraw(node)
                return
            self.engine.remove(node)
            self.log.info("tunnel to {node} has no SAs ({why})", node=node, why=reason)

    def _sas_for(self, node: str) -> tuple[InboundSA, OutboundSA] | None:
        if node in self.ike_ids:
            return self.ike_sas.get(node)
        return self.sas.get(node)

    def privilegedStartService(self) -> None:  # noqa: N802
        self.pipe.open(self.listen, self.esp_port)
        assert self.pipe.tun is not None
        if self.netlink is None:
            self.netlink = Netlink()
        try:
            self.netlink.link_up(self.pipe.tun.name, mtu=self.mtu)
            self.netlink.set_sysctl("net.ipv4.ip_forward", "1")
            self.netlink.set_sysctl(f"net.ipv4.conf.{self.pipe.tun.name}.rp_filter", "0")
            if self.lan:
                # Proxy ARP answers only while forwarding is on; answer at once
                # rather than after the default random delay of up to 0.8 s.
                self.netlink.set_sysctl(f"net.ipv4.conf.{self.lan}.forwarding", "1")
                self.netlink.set_sysctl(f"net.ipv4.neigh.{self.lan}.proxy_delay", "0")
        except NetlinkError as e:
            self.pipe.close()
            raise StartupError(str(e)) from None
        try:
            self._listen_ike()
        except StartupError:
            self.pipe.close()
            raise
        self.log.info(
            "data plane: TUN {dev} (MTU {mtu}), ESP-in-UDP on {listen}:{port}, proxy ARP on {lan}",
            dev=self.pipe.tun.name,
            mtu=self.mtu,
            listen=self.listen,
            port=self.esp_port,
            lan=self.lan or "(none)",
        )
        self.home.add_listener(self.bindings_changed)
        for node, bindings in list(self.home.bindings.items()):
            self.bindings_changed(node, bindings)
        super().privilegedStartService()

    def startService(self) -> None:  # noqa: N802
        if self.pipe.tun is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        self._stop_sequence_watch()
        if self.ike is not None:
            self.ike.stop()
        if self._ike_listener is not None:
            self._ike_listener.stopListening()
            self._ike_listener = None
        for node in list(self.installed):
            self._withdraw(node)
        self.pipe.close()

    def bindings_changed(self, node: str, bindings: list[Binding]) -> None:
        """Follow the home agent's bindings: install, move or withdraw the node's route."""
        if not bindings:
            self._withdraw(node)
            return
        b = max(bindings, key=lambda x: x.registered)
        keyed = self.relay_sas.get(node)
        if b.path == "relay" and keyed is not None and keyed[0] == str(b.care_of_address):
            self._via_terminating_relay(node, b, keyed)
            return
        sas = self._sas_for(node)
        if sas is None:
            if node in self.ike_ids:
                self.log.info("{node} registered; its tunnel waits for IKE", node=node)
            else:
                self.log.warn("no ESP keys for {node}: registered, but no tunnel", node=node)
            return
        # A node served by IKE alone registers: the binding takes over.
        self.ike_only.discard(node)
        coa = str(b.care_of_address)
        route = self.engine.by_node.get(node)
        if route is not None and route.path == "relay-terminate":
            # Leaving a terminating relay: the node's own SAs again.
            self.engine.remove(node)
            route = None
        if b.nat or b.path == "relay":
            # Data goes to the NAT mapping (or to the relay's port standing
            # for the client); the port is learnt from the client's first
            # authenticated ESP packet (a dummy it sends).
            port = route.addr[1] if route is not None and route.addr[0] == b.source_host else 4500
            addr = (b.source_host, port)
        else:
            addr = (coa, 4500)
        sources = {coa, b.source_host}
        path = "nat" if b.nat else b.path
        if route is None:
            inbound, outbound = sas
            self.engine.install(node, b.home_address, inbound, outbound, addr, sources, path)
        else:
            self.engine.move(node, addr, sources, path)
        if self.ike is not None and node in self.ike_ids:
            # The registration is authenticated: the node's IKE SA follows it.
            self.ike.move_peer(self.ike_ids[node], addr)
        if node not in self.installed:
            self.installed[node] = b.home_address
            self._capture(node, b.home_address)
        self.log.info(
            "tunnel to {node} ({hoa}) now via {host}:{port} ({path})",
            node=node,
            hoa=b.home_address,
            host=addr[0],
            port=addr[1],
            path=path,
        )

    def _via_terminating_relay(
        self, node: str, b: Binding, keyed: tuple[str, InboundSA, OutboundSA]
    ) -> None:
        """The node registered through a relay that keys its traffic: the relay's SAs."""
        relay, inbound, outbound = keyed
        self.ike_only.discard(node)
        route = self.engine.by_node.get(node)
        if route is None or route.inbound is not inbound:
            self.engine.install(
                node, b.home_address, inbound, outbound, (relay, 4500), {relay}, "relay-terminate"
            )
        if node not in self.installed:
            self.installed[node] = b.home_address
            self._capture(node, b.home_address)
        self.log.info(
            "tunnel to {node} ({hoa}) now through relay {relay}, which ends the client's ESP",
            node=node, hoa=b.home_address, relay=relay,
        )  # fmt: skip

    def _capture(self, node: str, hoa: IPv4Address) -> None:
        """Make the home address reachable through the TUN device."""
        assert self.netlink is not None and self.pipe.tun is not None
        try:
            self.netlink.add_route(IPv4Network(f"{hoa}/32"), dev=self.pipe.tun.name)
            if self.lan:
                self.netlink.add_proxy_neighbour(str(hoa), self.lan)
        except NetlinkError as e:
            self.log.error("cannot capture {hoa} for {node}: {why}", hoa=hoa, node=node, why=e)
            return
        if self.lan:
            self._announce(hoa, 3)

    def _announce(self, hoa: IPv4Address, count: int) -> None:
        assert self.lan is not None
        try:
            send_gratuitous_arp(self.lan, str(hoa), count=1)
        except OSError as e:
            self.log.warn("gratuitous ARP for {hoa} failed: {why}", hoa=hoa, why=e)
        if count > 1:
            self.reactor.callLater(0.5, self._announce_if_away, hoa, count - 1)

    def _announce_if_away(self, hoa: IPv4Address, count: int) -> None:
        if hoa in self.installed.values():
            self._announce(hoa, count)

    def _withdraw(self, node: str) -> None:
        self.ike_only.discard(node)
        route = self.engine.by_node.get(node)
        if route is not None:
            # Keep the SA objects (sequence numbers, replay window) for later.
            self.engine.remove(node)
        self._release(node)

    def _release(self, node: str) -> None:
        """Undo :meth:`_capture`: the host route and the proxy neighbour entry go."""
        hoa = self.installed.pop(node, None)
        if hoa is None or self.netlink is None or self.pipe.tun is None:
            return
        try:
            self.netlink.del_route(IPv4Network(f"{hoa}/32"), dev=self.pipe.tun.name)
            if self.lan:
                self.netlink.del_proxy_neighbour(str(hoa), self.lan)
        except NetlinkError as e:
            self.log.error("cannot release {hoa}: {why}", hoa=hoa, why=e)
        self.log.info("tunnel to {node} ({hoa}) withdrawn", node=node, hoa=hoa)


class ClientDataPlane(_SequenceWatchMixin, service.Service):
    """The client's tunnel: the permanent address on a TUN device, routes that follow the state."""

    log = Logger()

    def __init__(
        self,
        node: MobileNode,
        *,
        sas: tuple[InboundSA, OutboundSA] | None,
        device: str,
        home_agent: IPv4Address,
        ha_port: int,
        local_port: int,
        home_network: IPv4Network,
        routes: str,
        path_mtu: int,
        keepalive: int,
        reactor: Any,
        netlink: Netlink | None = None,
    ) -> None:
        self.node = node
        self.hoa = node.settings.home_address
        self.home_agent = home_agent
        self.ha_port = ha_port
        self.local_port = local_port
        self.home_network = home_network
        self.routes = routes
        self.mtu = tunnel_mtu(path_mtu)
        self.keepalive_default = keepalive
        self.reactor = reactor
        self.netlink = netlink
        self.engine = TunnelEngine(clock=reactor, mtu=self.mtu, local_inner=self.hoa)
        self.pipe = TunnelPipe(self.engine, device=device, reactor=reactor, on_inner=self._inner)
        # Terminating relays (figure 1/3): the relay in use ends our ESP, under
        # SAs from our IKE with it; our IKE with home rests meanwhile.
        self.relay: tuple[str, int] | None = None
        # "relay" while a forwarding relay carries our ESP home (inside
        # IP-in-IP: the route's MTU is smaller), else "direct".
        self.path_kind = "direct"
        self.relay_ikes: dict[tuple[str, int], IKEService] = {}
        self.relay_sas: dict[tuple[str, int], tuple[InboundSA, OutboundSA]] = {}
        self._ike_stale = False
        self.manual_sas = sas
        if sas is not None:
            self._install(sas)
        self.ike: IKEService | None = None
        self.ike_sa: IKESA | None = None
        self._ike_retry: Any = None
        self.ike_sas: tuple[InboundSA, OutboundSA] | None = None
        self.routed = False
        self.extra_routes: list[tuple[IPv4Network, str | None, str | None]] = []
        # Hosts that must stay outside the tunnel with routes = "all" (relays, gateways).
        self.bypass: list[IPv4Address] = []
        self._keepalive: LoopingCall | None = None
        self._awaiting_first: float | None = None
        self._last: tuple[State, IPv4Address | None, float | None] | None = None

    def _install(
        self, sas: tuple[InboundSA, OutboundSA], peer: tuple[str, int] | None = None
    ) -> None:
        inbound, outbound = sas
        addr = peer or (str(self.home_agent), self.ha_port)
        self.engine.install(
            self.node.settings.name, None, inbound, outbound, addr, {addr[0]},
            "relay-terminate" if peer is not None else self.path_kind,
        )  # fmt: skip

    # -- terminating relays ----------------------------------------------------------

    def attach_relay_ike(self, relay: tuple[str, int], ike: IKEService) -> None:
        """Key the tunnel through the terminating relay at ``relay`` with ``ike`` (an initiator)."""
        self.relay_ikes[relay] = ike
        self.engine.on_ike = self._on_ike
        ike.on_up = lambda child: self._relay_child_up(relay, child)
        ike.on_down = lambda child, why: self._relay_child_down(relay, child, why)
        ike.on_event_extra = self._ike_event

    def via_relay(self, forwarding: bool) -> None:
        """The path manager's choice: a forwarding relay carries our ESP (or not)."""
        self.path_kind = "relay" if forwarding else "direct"
        name = self.node.settings.name
        route = self.engine.by_node.get(name)
        if route is not None and route.path != "relay-terminate":
            self.engine.set_path(name, self.path_kind)

    def use_relay(self, relay: tuple[str, int] | None) -> None:
        """The path manager's choice: a terminating relay ends our ESP, or (None) home does.

        Into a relay: its SAs (once its CHILD_SA is up) replace home's, and
        our IKE with home rests.  Out of it: home's SAs again, and a fresh
        IKE SA with home (the old one may have died meanwhile, unheard).
        """
        if relay == self.relay:
            return
        old, self.relay = self.relay, relay
        name = self.node.settings.name
        if old is not None:
            ike = self.relay_ikes.get(old)
            if ike is not None:
                for sa in ike.engine.established():
                    ike.engine.delete_ike_sa(sa)
                ike.flush()
            self.relay_sas.pop(old, None)
        if relay is not None:
            self._ike_stale = self.ike is not None
            sas = self.relay_sas.get(relay)
            if sas is not None:
                self._install(sas, relay)
            else:
                self.engine.remove(name)  # nothing to send under until the relay's CHILD_SA
            self.log.info(
                "tunnel through relay {h}:{p}, which ends our ESP", h=relay[0], p=relay[1]
            )
            return
        home = self.ike_sas or self.manual_sas
        if home is not None:
            self._install(home)
        else:
            self.engine.remove(name)

    def _start_relay_ike(self) -> None:
        relay = self.relay
        ike = self.relay_ikes.get(relay) if relay is not None else None
        if ike is None or relay is None:
            return
        if ike.engine.established():
            ike.check_liveness()
            return
        if any(sa.state.value in ("init-sent", "auth-sent") for sa in ike.engine.sas.values()):
            return
        self.log.info("registered through relay {h}: starting IKE with it", h=relay[0])
        self.node.note_event("ike-start", peer=relay[0])
        ike.initiate(relay, local=("0.0.0.0", self.local_port or 4500))  # noqa: S104

    def _relay_child_up(self, relay: tuple[str, int], child: ChildSA) -> None:
        sas = child_sas(child)
        self.relay_sas[relay] = sas
        if relay != self.relay:
            return
        name = self.node.settings.name
        if child.replaces is not None and name in self.engine.by_node:
            self.engine.rekey(name, *sas)
        else:
            self._install(sas, relay)
        self.node.note_event(
            "child-sa", peer=relay[0], spi_in=f"0x{child.inbound_spi:08x}",
            spi_out=f"0x{child.outbound_spi:08x}",
        )  # fmt: skip
        self.node.notify()
        self.log.info(
            "tunnel keyed by IKE with relay {h}: spi_in 0x{i:08x} spi_out 0x{o:08x}",
            h=relay[0], i=child.inbound_spi, o=child.outbound_spi,
        )  # fmt: skip
        dummy = self.engine.dummy(name)
        if dummy is not None:
            self.pipe.send(*dummy)

    def _relay_child_down(self, relay: tuple[str, int], child: ChildSA, reason: str) -> None:
        current = self.relay_sas.get(relay)
        if current is not None and current[0].spi == child.inbound_spi:
            del self.relay_sas[relay]
        if relay != self.relay:
            return
        name = self.node.settings.name
        self.engine.retire(name, child.inbound_spi)
        route = self.engine.by_node.get(name)
        if route is not None and route.inbound.spi == child.inbound_spi:
            self.engine.remove(name)
            self.log.info("tunnel through the relay has no SAs ({why})", why=reason)

    def attach_ike(self, ike: IKEService) -> None:
        """Key the tunnel with ``ike`` (an initiator), started after each accepted registration."""
        self.ike = ike
        watch = LoopingCall(lambda: ike.rekey_exhausted(list(self.engine.by_node.values())))
        watch.clock = self.reactor
        watch.start(SEQUENCE_CHECK, now=False)
        self._sequence_watch = watch
        ike.on_up = self.child_up
        ike.on_down = self.child_down
        ike.on_event_extra = self._ike_event
        ike.send_nat_t = self.pipe.send_all
        self.engine.on_ike = self._on_ike

    def _on_ike(self, message: bytes, addr: tuple[str, int]) -> None:
        """IKE on the ESP port: from a terminating relay we have IKE with, else from home."""
        local = ("0.0.0.0", self.local_port or 4500)  # noqa: S104 - follows every uplink
        relay = self.relay_ikes.get(addr)
        if relay is not None:
            relay.receive(message, addr, local)
        elif self.ike is not None:
            self.ike.receive(message, addr, local)

    def _start_ike(self) -> None:
        """Run IKE with the home agent unless an IKE SA exists or is being made."""
        if self._ike_retry is not None and self._ike_retry.active():
            self._ike_retry.cancel()
        self._ike_retry = None
        if self.ike is None or self.node.state is not State.REGISTERED:
            return
        if self.relay is not None:
            self._start_relay_ike()
            return
        if self._ike_stale:
            # Back from a terminating relay: home may have dropped our IKE SA
            # unheard; make a new one at once (INITIAL_CONTACT replaces the old).
            self._ike_stale = False
            for old in self.ike.engine.established():
                self.ike.engine.delete_ike_sa(old)
            self.ike.flush()
            self.ike_sa = None
        sa = self.ike_sa
        if sa is not None and self.ike.engine.sas.get(sa.our_spi) is sa and sa.state.value in (
            "init-sent", "auth-sent", "established",
        ):
            return
        # A rekeyed IKE SA is replaced by its successor: keep that one.
        live = self.ike.engine.established()
        if live:
            self.ike_sa = live[0]
            return
        self.log.info("registered: starting IKE with {ha}", ha=self.home_agent)
        self.node.note_event("ike-start")
        self.ike_sa = self.ike.initiate(
            (str(self.home_agent), self.ha_port),
            local=("0.0.0.0", self.local_port or 4500),  # noqa: S104
        )

    def _ike_event(self, event: object) -> None:
        from smobility.engines.ike import IKEFailed, IKESADown, IKESAUp

        if isinstance(event, IKESAUp):
            self.node.note_event("ike-up")
        if isinstance(event, IKESADown) or (
            isinstance(event, IKEFailed) and not event.child_only and not event.rekey
        ):
            if self.ike is not None and not self.ike.engine.established():
                self.ike_sa = None
                if self._ike_retry is None or not self._ike_retry.active():
                    self._ike_retry = self.reactor.callLater(5.0, self._start_ike)

    def child_up(self, child: ChildSA) -> None:
        """The CHILD_SA's SAs replace whatever the tunnel had."""
        self.ike_sas = child_sas(child)
        name = self.node.settings.name
        if child.replaces is not None and name in self.engine.by_node:
            # A rekey: make before break (the old inbound SA stays until deleted).
            self.engine.rekey(name, *self.ike_sas)
        else:
            self._install(self.ike_sas)
        self.node.note_event(
            "child-sa", spi_in=f"0x{child.inbound_spi:08x}", spi_out=f"0x{child.outbound_spi:08x}"
        )
        self.node.notify()
        self.log.info(
            "tunnel keyed by IKE: spi_in 0x{i:08x} spi_out 0x{o:08x}",
            i=child.inbound_spi, o=child.outbound_spi,
        )
        if self.node.state is State.REGISTERED:
            dummy = self.engine.dummy(self.node.settings.name)
            if dummy is not None:
                self.pipe.send(*dummy)

    def child_down(self, child: ChildSA, reason: str) -> None:
        """A CHILD_SA is gone: no SAs until the next one."""
        self.engine.retire(self.node.settings.name, child.inbound_spi)
        route = self.engine.by_node.get(self.node.settings.name)
        if route is not None and route.inbound.spi == child.inbound_spi:
            self.engine.remove(self.node.settings.name)
            self.ike_sas = None
            self.log.info("tunnel has no SAs ({why})", why=reason)

    def privilegedStartService(self) -> None:  # noqa: N802
        self.pipe.open("0.0.0.0", self.local_port)  # noqa: S104 - follows every uplink
        assert self.pipe.tun is not None
        if self.netlink is None:
            self.netlink = Netlink()
        dev = self.pipe.tun.name
        try:
            self.netlink.add_address(dev, IPv4Interface(f"{self.hoa}/32"))
            self.netlink.link_up(dev, mtu=self.mtu)
            self.netlink.set_sysctl(f"net.ipv4.conf.{dev}.rp_filter", "0")
        except NetlinkError as e:
            self.pipe.close()
            raise StartupError(str(e)) from None
        self.node.add_listener(self.state_changed)
        self.log.info(
            "data plane: TUN {dev} holds {hoa} (MTU {mtu}); ESP-in-UDP to {ha}:{port}",
            dev=dev,
            hoa=self.hoa,
            mtu=self.mtu,
            ha=self.home_agent,
            port=self.ha_port,
        )
        super().privilegedStartService()

    def startService(self) -> None:  # noqa: N802
        if self.pipe.tun is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        self._stop_sequence_watch()
        if self._ike_retry is not None and self._ike_retry.active():
            self._ike_retry.cancel()
        if self.ike is not None:
            self.ike.stop()
        for relay_ike in self.relay_ikes.values():
            relay_ike.stop()
        self._stop_keepalive()
        self._unroute()
        self.pipe.close()

    def state_changed(self, node: MobileNode) -> None:
        """Follow the registration: route through the tunnel when away, not at home."""
        state, coa, until = node.state, node.care_of, node.registered_until
        # Act once per change: a new state, a new care-of address, or a new
        # registration reply (re-registrations also refresh the NAT mapping).
        if (state, coa, until) == self._last:
            return
        self._last = (state, coa, until)
        if state is State.REGISTERED:
            self._route()
            # Let the home agent learn this path (and any NAT mapping) from an
            # authenticated packet at once, then keep the mapping open.
            dummy = self.engine.dummy(node.settings.name)
            if dummy is not None:
                self.pipe.send(*dummy)
            self._awaiting_first = self.reactor.seconds()
            if node.nat or node.registered_via is not None:
                # A NAT, or a relay's flow for us: keep the mapping open.
                self._start_keepalive(node.keepalive or self.keepalive_default)
            else:
                self._stop_keepalive()
            if self.relay is not None:
                self._start_relay_ike()
            elif self.ike is not None:
                if self._ike_stale:
                    self._start_ike()
                elif self.ike.engine.established():
                    # A move: no new IKE SA.  The home agent's side follows the
                    # registration; a liveness check tells it our NAT mapping
                    # through authenticated IKE too.
                    self.ike.check_liveness()
                else:
                    self._start_ike()
        elif state is State.DEREGISTERING and coa == self.hoa:
            # Back on the home LAN: use it at once, while the home agent
            # confirms the deregistration.
            self._stop_keepalive()
            self._unroute()
        elif state is State.AT_HOME:
            self._stop_keepalive()
            self._unroute()
            self._announce_home()

    def _route(self) -> None:
        if self.routed:
            return
        assert self.netlink is not None and self.pipe.tun is not None
        dev = self.pipe.tun.name
        try:
            if self.routes == "all":
                self.extra_routes = []
                for outside in [self.home_agent, *self.bypass]:
                    gw, uplink, _ = self.netlink.route_get(str(outside))
                    host = IPv4Network(f"{outside}/32")
                    self.netlink.add_route(host, dev=uplink, gateway=gw)
                    self.extra_routes.append((host, uplink, gw))
                for half in ("0.0.0.0/1", "128.0.0.0/1"):
                    self.netlink.add_route(IPv4Network(half), dev=dev, src=str(self.hoa))
                    self.extra_routes.append((IPv4Network(half), dev, None))
            self.netlink.add_route(self.home_network, dev=dev, src=str(self.hoa))
            self.extra_routes.append((self.home_network, dev, None))
        except NetlinkError as e:
            self.log.error("cannot route through the tunnel: {why}", why=e)
            return
        self.routed = True
        self.log.info("routing {net} through {dev}", net=self.home_network, dev=dev)

    def _unroute(self) -> None:
        if not self.routed or self.netlink is None:
            return
        for net, dev, gw in reversed(self.extra_routes):
            try:
                self.netlink.del_route(net, dev=dev, gateway=gw)
            except NetlinkError as e:
                self.log.warn("cannot remove route {net}: {why}", net=net, why=e)
        self.extra_routes = []
        self.routed = False
        self.log.info(
            "at home: {net} reached directly, tunnel routes removed", net=self.home_network
        )

    def _announce_home(self) -> None:
        """Give the home address its own MAC again on the home LAN."""
        if self.netlink is None:
            return
        try:
            _, uplink, _ = self.netlink.route_get(str(self.home_agent))
        except NetlinkError:
            return
        if uplink is None:
            return
        for delay in (0.0, 0.3, 1.0):
            self.reactor.callLater(delay, self._garp, uplink)

    def _garp(self, uplink: str) -> None:
        try:
            send_gratuitous_arp(uplink, str(self.hoa), count=1)
        except OSError as e:
            self.log.warn("gratuitous ARP on {dev} failed: {why}", dev=uplink, why=e)

    def _start_keepalive(self, interval: int) -> None:
        self._stop_keepalive()
        self._keepalive = LoopingCall(
            self.pipe.send, NAT_KEEPALIVE, self.relay or (str(self.home_agent), self.ha_port)
        )
        self._keepalive.clock = self.reactor
        self._keepalive.start(interval, now=False)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None

    def _inner(self, packets: list[bytes]) -> None:
        if self._awaiting_first is not None:
            gap = (self.reactor.seconds() - self._awaiting_first) * 1000
            self._awaiting_first = None
            self.node.note_event("first-packet", after_ms=round(gap, 1))
            self.node.notify()
            self.log.info(
                "first packet from home on the new path {ms:.0f} ms after registration", ms=gap
            )
