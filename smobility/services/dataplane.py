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
- :class:`ClientDataPlane` listens to the mobile node's registration state.
  Registered from away: the home network (or everything) is routed into the
  TUN device, which carries the permanent address; at home: those routes go,
  the LAN is used directly, and a gratuitous ARP gives the home address its
  own MAC again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

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
    the TUN device's queue of packets waiting to be read.
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
        txqueuelen: int = 1000,
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


class HomeDataPlane(service.Service):
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
        for node in list(self.installed):
            self._withdraw(node)
        self.pipe.close()

    def bindings_changed(self, node: str, bindings: list[Binding]) -> None:
        """Follow the home agent's bindings: install, move or withdraw the node's route."""
        if not bindings:
            self._withdraw(node)
            return
        if node not in self.sas:
            self.log.warn("no ESP keys for {node}: registered, but no tunnel", node=node)
            return
        b = max(bindings, key=lambda x: x.registered)
        coa = str(b.care_of_address)
        route = self.engine.by_node.get(node)
        if b.nat:
            # Data goes to the NAT mapping; its port is learnt from the
            # client's first authenticated ESP packet (a dummy it sends).
            port = route.addr[1] if route is not None and route.addr[0] == b.source_host else 4500
            addr = (b.source_host, port)
        else:
            addr = (coa, 4500)
        sources = {coa, b.source_host}
        path = "nat" if b.nat else b.path
        if route is None:
            inbound, outbound = self.sas[node]
            self.engine.install(node, b.home_address, inbound, outbound, addr, sources, path)
        else:
            self.engine.move(node, addr, sources, path)
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
        hoa = self.installed.pop(node, None)
        route = self.engine.by_node.get(node)
        if route is not None:
            # Keep the SA objects (sequence numbers, replay window) for later.
            self.engine.remove(node)
        if hoa is None or self.netlink is None or self.pipe.tun is None:
            return
        try:
            self.netlink.del_route(IPv4Network(f"{hoa}/32"), dev=self.pipe.tun.name)
            if self.lan:
                self.netlink.del_proxy_neighbour(str(hoa), self.lan)
        except NetlinkError as e:
            self.log.error("cannot release {hoa}: {why}", hoa=hoa, why=e)
        self.log.info("tunnel to {node} ({hoa}) withdrawn", node=node, hoa=hoa)


class ClientDataPlane(service.Service):
    """The client's tunnel: the permanent address on a TUN device, routes that follow the state."""

    log = Logger()

    def __init__(
        self,
        node: MobileNode,
        *,
        sas: tuple[InboundSA, OutboundSA],
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
        inbound, outbound = sas
        self.engine.install(
            node.settings.name,
            None,
            inbound,
            outbound,
            (str(home_agent), ha_port),
            {str(home_agent)},
        )
        self.routed = False
        self.extra_routes: list[tuple[IPv4Network, str | None, str | None]] = []
        self._keepalive: LoopingCall | None = None
        self._awaiting_first: float | None = None
        self._last: tuple[State, IPv4Address | None, float | None] | None = None

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
            if node.nat:
                self._start_keepalive(node.keepalive or self.keepalive_default)
            else:
                self._stop_keepalive()
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
                gw, uplink, _ = self.netlink.route_get(str(self.home_agent))
                host = IPv4Network(f"{self.home_agent}/32")
                self.netlink.add_route(host, dev=uplink, gateway=gw)
                self.extra_routes = [(host, uplink, gw)]
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
            self.pipe.send, NAT_KEEPALIVE, (str(self.home_agent), self.ha_port)
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
