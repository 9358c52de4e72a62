# -*- test-case-name: tests.test_paths -*-
"""How the client reaches its home agent: its transports in order of preference.

Each transport carries the same two kinds of datagrams: Mobile IP
registration messages and ESP-in-UDP.  "udp" sends them straight to the home
agent; "http" frames them to the multiplexer over HTTP(S), directly or
through proxies (:mod:`smobility.adapters.httpclient`), and the multiplexer
relays them over UDP, so the home agent sees it like a NAT.

The registration decides: a registration is sent on the transport being
tried; when no valid reply comes within that transport's ``fallback_after``
the next one is tried (an HTTP transport that fails outright, e.g. a proxy
refusing our credentials, is left at once); the transport the accepted reply
came back on carries the traffic.  While a less preferred transport is in
use, the preferred one is tried again every ``climb_back_after`` seconds, and
after every change of network the order starts from the top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from smobility.config import TransportConfig
from smobility.engines.mobilenode import MobileNode, State

KIND_MIP = 1
KIND_ESP = 2

EspSink = Callable[[bytes, tuple[str, int]], None]


class _Path:
    """One transport."""

    def __init__(self, index: int, cfg: TransportConfig) -> None:
        self.index = index
        self.cfg = cfg
        self.label = cfg.label()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def failed(self) -> bool:
        return False


class _UDPPath(_Path):
    def __init__(self, index: int, cfg: TransportConfig, send_udp: Callable[[bytes], None]):
        super().__init__(index, cfg)
        self.send_registration = send_udp


class _RelayPath(_Path):
    """Through a relay (a foreign agent): registration to it, ESP and IKE to its ESP port.

    The client's registration names the relay as its care-of address and
    carries the Mobile-Foreign authentication; its end-to-end ESP and IKE
    with the home agent go to the relay, which carries them home
    (:mod:`smobility.services.relay_tap`).
    """

    def __init__(self, index: int, cfg: TransportConfig, owner: PathManager) -> None:
        super().__init__(index, cfg)
        from ipaddress import IPv4Address

        from smobility.engines.mobilenode import ForeignAgentLink

        assert cfg.relay is not None and cfg.auth is not None
        self.owner = owner
        self.relay_addr = (str(cfg.relay), cfg.port)
        self.esp_addr = (str(cfg.relay), cfg.esp_port)
        self.link = ForeignAgentLink(
            IPv4Address(cfg.relay), cfg.auth.spi, cfg.auth.key, cfg.auth.algorithm
        )

    @property
    def terminate(self) -> bool:
        """Whether the relay ends our ESP (its own SAs with us and with home)."""
        return self.cfg.mode == "terminate"

    def send_registration(self, data: bytes) -> None:
        self.owner.send_udp_to(data, self.relay_addr)


class _GatewayPath(_Path):
    """Through an IPsec VPN gateway (figure 7, RFC 5265): registration and ESP inside its tunnel.

    The client registers its inner (virtual) address as a co-located
    care-of address with the home agent's inside address, and keeps its own
    ESP and IKE with the home agent, all inside the gateway's tunnel
    (:class:`smobility.services.gateway.GatewayTunnel`).
    """

    def __init__(self, index: int, cfg: TransportConfig, owner: PathManager) -> None:
        super().__init__(index, cfg)
        assert cfg.gateway is not None and cfg.inside_home_agent is not None
        assert cfg.ike is not None
        self.owner = owner
        self.inside = str(cfg.inside_home_agent)
        self.tunnel: Any = None
        self.stale = False

    def _make(self) -> Any:
        from smobility.services.gateway import GatewayTunnel, gateway_ike_config

        c, ike = self.cfg, self.cfg.ike
        assert ike is not None and c.gateway is not None
        config, check = gateway_ike_config(
            identity=ike.identity,
            identity_kind=ike.identity_kind,
            gateway_identity=ike.home_agent_identity,
            gateway_identity_kind=ike.home_agent_identity_kind,
            clock=self.owner.reactor,
            psk=ike.psk if ike.auth == "psk" else b"",
            cert=ike.cert,
            key=ike.key,
            ca_file=ike.ca_file,
        )
        return GatewayTunnel(
            gateway=str(c.gateway),
            gateway_port=c.port,
            ike_config=config,
            cert_check=check,
            reactor=self.owner.reactor,
            on_datagrams=self._datagrams,
            on_state=self._state,
        )

    @property
    def up(self) -> bool:
        return self.tunnel is not None and self.tunnel.state == "up"

    def start(self) -> None:
        if self.tunnel is None:
            self.tunnel = self._make()
        if self.stale:
            # A new network: the old IKE SA's path is gone.
            self.stale = False
            self.tunnel.restart()
        else:
            self.tunnel.start()

    def stop(self) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
        self.stale = False

    @property
    def failed(self) -> bool:
        return self.tunnel is not None and self.tunnel.state == "failed"

    def send_registration(self, data: bytes) -> None:
        self.start()
        self.tunnel.send_udp(data, self.owner.ha_addr[1], self.inside, self.owner.ha_addr[1])

    def send_esp(self, datagram: bytes) -> None:
        if self.tunnel is not None:
            port = self.owner.esp_addr[1]
            self.tunnel.send_udp(datagram, port, self.inside, port)

    def _datagrams(self, items: list[tuple[int, bytes, tuple[str, int]]]) -> None:
        ha_port, esp_port = self.owner.ha_addr[1], self.owner.esp_addr[1]
        for dport, payload, (src, sport) in items:
            if src != self.inside:
                continue
            if dport == ha_port and sport == ha_port:
                self.owner.received(self, KIND_MIP, payload)
            elif dport == esp_port and sport == esp_port:
                self.owner.received(self, KIND_ESP, payload)

    def _state(self, state: str, vip: Any, reason: str | None) -> None:
        self.owner.gateway_state(self, state, vip, reason)


class _HTTPPath(_Path):
    log = Logger()

    def __init__(self, index: int, cfg: TransportConfig, owner: PathManager) -> None:
        super().__init__(index, cfg)
        self.owner = owner
        self.transport: Any = None
        self.last_state: str | None = None

    def _make(self) -> Any:
        from smobility.adapters.httpclient import HTTPTunnelTransport, ProxySpec

        def spec(p: Any) -> ProxySpec | None:
            if p is None:
                return None
            return ProxySpec(p.kind, p.host, p.port, p.username, p.password)

        c = self.cfg
        assert c.mux_host is not None
        return HTTPTunnelTransport(
            host=c.mux_host,
            port=c.mux_port,
            tls=c.tls,
            tls_name=c.tls_name,
            ca_file=c.ca_file,
            name=self.owner.node.settings.name,
            token=c.token,
            proxy=spec(c.proxy),
            outer_proxy=spec(c.outer_proxy),
            reactor=self.owner.reactor,
            on_datagram=self._datagram,
            on_state=self._state,
            upload=c.upload,
        )

    def start(self) -> None:
        if self.transport is None:
            self.transport = self._make()
        if self.transport.state in ("down", "failed") and not getattr(
            self.transport, "_running", False
        ):
            self.transport.start()

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stop()

    @property
    def failed(self) -> bool:
        return self.transport is not None and self.transport.state == "failed"

    def send_registration(self, data: bytes) -> None:
        self.start()
        self.transport.send(KIND_MIP, data)

    def send_esp(self, datagram: bytes) -> None:
        if self.transport is not None:
            self.transport.send(KIND_ESP, datagram)

    def _datagram(self, kind: int, data: bytes) -> None:
        self.owner.received(self, kind, data)

    def _state(self, state: str, reason: str | None) -> None:
        previous, self.last_state = self.last_state, state
        self.owner.path_state(self, state, previous, reason)


class PathManager:
    """Chooses the transport; the mobile node and the data plane send through it."""

    log = Logger()

    def __init__(
        self,
        *,
        node: MobileNode,
        transports: tuple[TransportConfig, ...],
        send_udp: Callable[[bytes], None],
        send_udp_to: Callable[[bytes, tuple[str, int]], None] | None = None,
        home_agent: str,
        ha_port: int,
        esp_port: int,
        reactor: Any,
        climb_back_after: float = 30.0,
    ) -> None:
        self.node = node
        self.reactor = reactor
        self.home_agent = home_agent
        self.ha_addr = (home_agent, ha_port)
        self.esp_addr = (home_agent, esp_port)
        self.climb_back_after = climb_back_after
        if not transports:
            transports = (TransportConfig("udp", 4.0),)
        self.send_udp_to = send_udp_to or (lambda data, addr: None)
        # The data plane's plain UDP send (no divert) and its table of source
        # addresses to read as the home agent's (set by the client service).
        self.esp_udp_send: Callable[[list[tuple[bytes, tuple[str, int]]]], None] | None = None
        self.translate: dict[tuple[str, int], tuple[str, int]] | None = None
        # The data plane's hooks: the terminating relay in use (its ESP address),
        # or None; whether a forwarding relay carries the ESP.
        self.use_relay: Callable[[tuple[str, int] | None], None] | None = None
        self.via_relay: Callable[[bool], None] | None = None
        self.paths: list[_Path] = []
        for i, cfg in enumerate(transports):
            if cfg.kind == "udp":
                self.paths.append(_UDPPath(i, cfg, send_udp))
            elif cfg.kind == "relay":
                self.paths.append(_RelayPath(i, cfg, self))
            elif cfg.kind == "gateway":
                self.paths.append(_GatewayPath(i, cfg, self))
            else:
                self.paths.append(_HTTPPath(i, cfg, self))
        self.trying = 0
        first = self.paths[0]
        if isinstance(first, _RelayPath):
            node.set_foreign_agent(first.link)
        self.active: int | None = None
        self.esp_sink: EspSink | None = None
        self.esp_batch_sink: Callable[[list[tuple[bytes, tuple[str, int]]]], None] | None = None
        self._esp_batch: list[bytes] = []
        self._fallback: IDelayedCall | None = None
        self._climb: IDelayedCall | None = None
        self._last_reply_path = 0
        node.add_listener(self._node_changed)

    # -- what the others call ---------------------------------------------------

    @property
    def active_label(self) -> str | None:
        """The transport carrying the traffic now, or ``None``."""
        return self.paths[self.active].label if self.active is not None else None

    def send_registration(self, data: bytes) -> None:
        """The mobile node's send(): through the transport being tried."""
        path = self.paths[self.trying]
        path.send_registration(data)  # type: ignore[attr-defined]
        if self._fallback is None or not self._fallback.active():
            self._fallback = self.reactor.callLater(path.cfg.fallback_after, self._give_up, path)

    def divert_esp(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> bool:
        """The data plane's hook: True if an HTTP transport took the datagrams."""
        if self.active is None:
            return False
        path = self.paths[self.active]
        if isinstance(path, _RelayPath):
            if self.esp_udp_send is not None:
                addr = path.esp_addr
                if path.terminate:
                    # Only what is sealed for the relay (and our IKE with it):
                    # our IKE with home rests on this path.
                    self.esp_udp_send([d for d in datagrams if d[1] == addr])
                else:
                    self.esp_udp_send([(datagram, addr) for datagram, _ in datagrams])
            return True
        if not isinstance(path, _HTTPPath | _GatewayPath):
            return False
        for datagram, _ in datagrams:
            path.send_esp(datagram)
        return True

    def udp_reply(self, source: tuple[str, int] | None = None) -> None:
        """A registration datagram came back over plain UDP (from ``source``)."""
        for path in self.paths:
            if isinstance(path, _RelayPath) and source == path.relay_addr:
                self._last_reply_path = path.index
                return
        self._last_reply_path = self._udp_index()

    def network_changed(self) -> None:
        """A new network: start from the most preferred transport again."""
        for path in self.paths:
            if isinstance(path, _GatewayPath) and path.tunnel is not None:
                path.stale = True
        self._set_trying(0, "network changed")

    def stop(self) -> None:
        """Stop every HTTP transport and the timers."""
        for call in (self._fallback, self._climb):
            if call is not None and call.active():
                call.cancel()
        for path in self.paths:
            path.stop()

    # -- events -------------------------------------------------------------------

    def gateway_state(
        self, path: _GatewayPath, state: str, vip: Any, reason: str | None
    ) -> None:
        """A gateway tunnel changed state: register through it as soon as it is up."""
        node = self.node
        if state == "up":
            node.note_event("gateway-up", address=str(vip))
            if path.index == self.trying:
                node.set_tunnel_address(vip)
                if node.care_of is not None:
                    node.register(node.care_of)
        elif state == "failed" and path.index == self.trying:
            self.log.warn("transport {label} failed: {why}", label=path.label, why=reason)
            self._next("it failed")

    def received(self, path: _Path, kind: int, data: bytes) -> None:
        """A datagram from the home agent arrived over an HTTP or gateway transport."""
        if kind == KIND_MIP:
            self._last_reply_path = path.index
            self.node.datagram_received(data, self.ha_addr)
        elif kind == KIND_ESP and self.esp_sink is not None:
            # Frames of one HTTP chunk arrive one by one: hand them to the data
            # plane as one batch (one engine pass, TCP segments joined on the
            # TUN write), at the end of this reactor turn.
            self._esp_batch.append(data)
            if len(self._esp_batch) == 1:
                self.reactor.callLater(0, self._flush_esp)

    def _flush_esp(self) -> None:
        batch, self._esp_batch = self._esp_batch, []
        if self.esp_batch_sink is not None:
            self.esp_batch_sink([(d, self.esp_addr) for d in batch])
        elif self.esp_sink is not None:
            for d in batch:
                self.esp_sink(d, self.esp_addr)

    def path_state(
        self, path: _HTTPPath, state: str, previous: str | None, reason: str | None
    ) -> None:
        """An HTTP transport changed state."""
        if state == "failed" and path.index == self.trying:
            self.log.warn("transport {label} failed: {why}", label=path.label, why=reason)
            self._next("it failed")
        elif state == "up" and previous == "down" and path.index == self.active:
            # The multiplexer may have made a new session (a new UDP port):
            # register again so the home agent follows.
            if self.node.care_of is not None:
                self.node.register(self.node.care_of)

    def _node_changed(self, node: MobileNode) -> None:
        if node.state is State.REGISTERED or node.state is State.AT_HOME:
            if self._fallback is not None and self._fallback.active():
                self._fallback.cancel()
            self._fallback = None
        if node.state is State.REGISTERED:
            index = self._last_reply_path
            if index != self.active:
                old = self.active_label
                self.active = index
                self.trying = index
                self._follow(self.paths[index])
                node.note_event("path", path=self.paths[index].label, previous=old)
                self.log.info(
                    "traffic now over {label}", label=self.paths[index].label
                )
                for other in self.paths:
                    if other.index != index and isinstance(other, _HTTPPath | _GatewayPath):
                        other.stop()
            self._arm_climb()
        elif node.state is State.AT_HOME:
            self.active = None
            self._follow(None)
            for other in self.paths:
                if isinstance(other, _HTTPPath | _GatewayPath):
                    other.stop()

    # -- choosing -------------------------------------------------------------------

    def _udp_index(self) -> int:
        for path in self.paths:
            if isinstance(path, _UDPPath):
                return path.index
        return 0

    def _give_up(self, path: _Path) -> None:
        self._fallback = None
        if path.index != self.trying or self.node.state is State.REGISTERED:
            return
        self._next(f"no reply within {path.cfg.fallback_after:g} s")

    def _next(self, why: str) -> None:
        if len(self.paths) == 1:
            return
        self._set_trying((self.trying + 1) % len(self.paths), why)
        if self.node.care_of is not None and self.node.state in (
            State.REGISTERING, State.REFUSED, State.UNREGISTERED, State.REGISTERED,
        ):
            self.node.register(self.node.care_of)

    def _set_trying(self, index: int, why: str) -> None:
        if self._fallback is not None and self._fallback.active():
            self._fallback.cancel()
        self._fallback = None
        if index != self.trying:
            self.log.info(
                "trying transport {label} ({why})", label=self.paths[index].label, why=why
            )
            self.node.note_event("try-path", path=self.paths[index].label, why=why)
        self.trying = index
        path = self.paths[index]
        # Registering through a relay names it as the care-of address; through
        # a VPN gateway, our address inside its tunnel.
        self.node.set_foreign_agent(path.link if isinstance(path, _RelayPath) else None)
        gateway = isinstance(path, _GatewayPath) and path.up and not path.stale
        self.node.set_tunnel_address(path.tunnel.virtual_ip if gateway else None)  # type: ignore[attr-defined]
        path.start()

    def _follow(self, path: _Path | None) -> None:
        """The data plane reads what the active relay forwards as the home agent's.

        A terminating relay is the data plane's peer itself (``use_relay``).
        """
        terminating = isinstance(path, _RelayPath) and path.terminate
        if self.use_relay is not None:
            self.use_relay(path.esp_addr if terminating else None)  # type: ignore[union-attr]
        if self.via_relay is not None:
            self.via_relay(isinstance(path, _RelayPath) and not terminating)
        if self.translate is None:
            return
        self.translate.clear()
        if isinstance(path, _RelayPath) and not terminating:
            self.translate[path.esp_addr] = self.esp_addr

    def _arm_climb(self) -> None:
        if self._climb is not None and self._climb.active():
            self._climb.cancel()
        self._climb = None
        if self.active not in (None, 0):
            self._climb = self.reactor.callLater(self.climb_back_after, self._climb_back)

    def _climb_back(self) -> None:
        self._climb = None
        if self.active in (None, 0) or self.node.care_of is None:
            return
        self._set_trying(0, "trying the preferred transport again")
        self.node.register(self.node.care_of)
