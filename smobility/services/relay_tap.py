# -*- test-case-name: tests.test_relay_service -*-
"""``twistd smobility-relay``: the relay (a Mobile IP foreign agent, RFC 5944 section 3.7).

The relay stands on the public side of the home firewall (the seed's figure
6).  A visiting client registers through it: the relay checks the client's
Mobile-Foreign authentication, forwards the request to the client's home
agent with its own Foreign-Home authentication and relays the reply
(:class:`~smobility.engines.foreignagent.ForeignAgent`).

Everything between relay and home agent travels IP-in-IP (RFC 2003,
protocol 4, on a raw socket: :class:`~smobility.adapters.ipip.IPIPSocket`),
the only thing the home firewall lets in from the relay.  In ``forward`` mode
the client keeps its own end-to-end ESP (and IKE) with its home agent; it
sends those datagrams to the relay's ESP port, and the relay carries them
home inside IP-in-IP under a port of its own per client flow, translating
addresses for the client (:class:`~smobility.engines.relaynat.RelayForwarder`).
The relay never holds the client's data keys.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, ClassVar

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from smobility.config import RelayConfig, load_relay
from smobility.services.common import ConfigOptions, log_warnings

#: The home agents' ESP-in-UDP port, where the relay sends its visitors' datagrams.
HOME_ESP_PORT = 4500


class Options(ConfigOptions):
    """Options of ``twistd smobility-relay``."""

    synopsis = "--config FILE"
    longdesc = (
        "Relay server (a Mobile IP foreign agent, RFC 5944): authenticates the "
        "registrations of visiting clients (Mobile-Foreign authentication), forwards "
        "them to their home agent with its own Foreign-Home authentication, and "
        "carries the clients' end-to-end ESP to the home agent inside IP-in-IP "
        "(RFC 2003), the only traffic the home firewall admits from it.  relay.mode "
        '"terminate" ends the clients\' ESP at the relay (its own IKEv2 with them and with '
        'home on their behalf); "gateway" makes the relay their IPsec VPN gateway.  Needs root '
        "(raw IP-in-IP socket, UDP port 434).  Example configuration: etc/relay.toml "
        "(every key is explained in doc/configuration.md)."
    )
    role: ClassVar[str] = "relay"
    example: ClassVar[str] = "etc/relay.toml"

    def load(self, path: str) -> Any:
        return load_relay(path)



class _RegistrationPort(DatagramProtocol):
    """UDP 434 towards the visiting clients."""

    def __init__(self, owner: RelayService) -> None:
        self.owner = owner

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.owner.from_mobile(datagram, addr)


class RelayService(service.Service):
    """The relay: registration relaying, IP-in-IP to home, the visitors' flows."""

    log = Logger()

    def __init__(self, cfg: RelayConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        from smobility.engines.foreignagent import ForeignAgent, HomeAgentPeer, VisitorKey
        from smobility.engines.relaynat import RelayForwarder

        self.cfg = cfg
        self.reactor = reactor
        self.fa = ForeignAgent(
            care_of_address=cfg.address,
            home_agents=[
                HomeAgentPeer(address, auth.spi, auth.key, auth.algorithm)
                for address, auth in cfg.home_agents
            ],
            visitors=[
                VisitorKey(
                    name=v.name,
                    home_address=v.home_address,
                    nai=v.name if "@" in v.name else None,
                    spi=v.auth.spi,
                    key=v.auth.key,
                    algorithm=v.auth.algorithm,
                )
                for v in cfg.visitors
                if v.auth is not None
            ],
            clock=reactor,
            send_home=self._send_home,
            send_mobile=self._send_mobile,
            max_lifetime=cfg.max_lifetime,
            pending_timeout=cfg.pending_timeout,
        )
        self.forwarder = RelayForwarder(clock=reactor, home_port=HOME_ESP_PORT)
        # "terminate" and "gateway" modes: who handles the clients' ESP port
        # and what comes from home (from_clients, from_home, stop, stats).
        self.terminator: Any = None
        if cfg.mode in ("terminate", "gateway"):
            from smobility import pki
            from smobility.services.relay_gateway import RelayGateway
            from smobility.services.relay_terminate import RelayTerminator

            kind = RelayTerminator if cfg.mode == "terminate" else RelayGateway
            try:
                self.terminator = kind(
                    cfg, reactor, send_clients=self._send_clients, send_home=self._send_home_many
                )
            except (pki.PKIError, ValueError) as e:
                raise SystemExit(f"smobility-relay: {cfg.path}: ike: {e}") from None
        self.fa.add_listener(self._visitor)
        self.port: IListeningPort | None = None
        self.esp: Any = None
        self.ipip: Any = None
        self._to_home: list[tuple[bytes, int, str, int]] = []
        self._to_clients: list[tuple[bytes, tuple[str, int]]] = []

    # -- start and stop -------------------------------------------------------------

    def privilegedStartService(self) -> None:  # noqa: N802
        """Open UDP 434, the ESP port and the raw IP-in-IP socket (root) now."""
        from smobility.adapters.ipip import IPIPError, IPIPSocket
        from smobility.adapters.udpfast import UDPError, UDPSocket

        log_warnings(self.cfg.warnings)
        cfg = self.cfg
        homes = [str(address) for address, _ in cfg.home_agents]
        self.ipip = IPIPSocket(
            local=str(cfg.address), peers=homes, on_datagrams=self._from_home,
            reactor=self.reactor,
        )  # fmt: skip
        try:
            self.ipip.open()
        except IPIPError as e:
            self.ipip = None
            raise SystemExit(f"smobility-relay: {e}") from None
        try:
            if cfg.mode != "gateway":  # as VPN gateway, registrations go inside the tunnels
                self.port = self.reactor.listenUDP(
                    cfg.port, _RegistrationPort(self), interface=cfg.listen
                )
        except CannotListenError as e:
            self._close()
            raise SystemExit(
                f"smobility-relay: cannot listen on UDP {cfg.listen}:{cfg.port} for "
                f"registrations ({e.socketError}); is root needed for a port below 1024?"
            ) from None
        self.esp = UDPSocket(self._from_clients, reactor=self.reactor)
        try:
            self.esp.listen(cfg.listen, cfg.esp_port)
        except UDPError as e:
            self.esp = None
            self._close()
            raise SystemExit(
                f"smobility-relay: cannot listen on UDP {cfg.listen}:{cfg.esp_port} for the "
                f"visitors' ESP ({e.socket_error})"
            ) from None
        if cfg.mode == "gateway":
            assert cfg.ike is not None
            self.log.info(
                "relay {address} as IPsec VPN gateway: IKE and ESP on UDP {listen}:{esp}, "
                "virtual addresses from {pool} for {n} client(s), IP-in-IP to {homes}",
                address=cfg.address, listen=cfg.listen, esp=cfg.esp_port, pool=cfg.ike.pool,
                n=len(cfg.visitors), homes=", ".join(homes),
            )  # fmt: skip
        else:
            self.log.info(
                "relay {address} ({mode} mode): registrations on UDP {listen}:{port}, visitors' "
                "ESP on {esp}, IP-in-IP to {homes}; {n} visitor key(s), lifetimes at most "
                "{life} s",
                address=cfg.address, mode=cfg.mode, listen=cfg.listen, port=cfg.port,
                esp=cfg.esp_port, homes=", ".join(homes), n=len(cfg.visitors),
                life=cfg.max_lifetime,
            )  # fmt: skip
        super().privilegedStartService()

    def startService(self) -> None:  # noqa: N802
        if self.ipip is None:
            self.privilegedStartService()
        super().startService()

    def _close(self) -> Deferred[Any] | None:
        d: Deferred[Any] | None = None
        if self.port is not None:
            d = maybeDeferred(self.port.stopListening)
            self.port = None
        if self.esp is not None:
            self.esp.close()
            self.esp = None
        if self.ipip is not None:
            self.ipip.close()
            self.ipip = None
        return d

    def stopService(self) -> Deferred[Any] | None:  # noqa: N802
        super().stopService()
        self.fa.stop()
        self.forwarder.stop()
        if self.terminator is not None:
            self.terminator.stop()
        d = self._close()
        self.log.info("relay stopped")
        return d

    # -- registrations ----------------------------------------------------------------

    def from_mobile(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """A registration datagram from a visiting client."""
        try:
            self.fa.from_mobile(datagram, addr)
        except Exception:
            self.fa.counters["internal_errors"] += 1
            self.log.failure("internal error on a datagram from {host}", host=addr[0])

    def _send_home(self, data: bytes, home_agent: IPv4Address) -> None:
        if self.ipip is not None:
            self.ipip.send(data, self.cfg.port, str(home_agent), 434)

    def _send_mobile(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.port is None:
            return
        try:
            self.port.write(data, addr)  # type: ignore[attr-defined]
        except OSError as e:
            self.fa.counters["send_errors"] += 1
            self.log.warn("cannot send to {host}: {why}", host=addr[0], why=e.strerror)

    def _visitor(self, visitor: Any, present: bool) -> None:
        if self.cfg.mode == "terminate":
            self.terminator.visitor_changed(visitor.name, str(visitor.home_agent), present)
            return
        self.forwarder.visitor_changed(
            visitor.name, visitor.source[0], visitor.home_agent, present
        )

    # -- the visitors' datagrams --------------------------------------------------------

    def _send_clients(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        if self.esp is not None:
            self.esp.send_many(datagrams)

    def _send_home_many(self, datagrams: list[tuple[bytes, int, str, int]]) -> None:
        if self.ipip is not None:
            self.ipip.send_many(datagrams)

    def _from_clients(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        if self.terminator is not None:
            self.terminator.from_clients(datagrams)
            return
        out = self._to_home
        self.forwarder.from_clients(datagrams, out)
        if out and self.ipip is not None:
            self.ipip.send_many(out)
        out.clear()

    def _from_home(self, items: list[tuple[int, bytes, tuple[str, int]]]) -> None:
        if self.cfg.mode == "gateway":
            self.terminator.from_home(items)
            return
        rest: list[tuple[int, bytes, tuple[str, int]]] = []
        for item in items:
            if item[0] == 434:
                try:
                    self.fa.from_home(item[1], IPv4Address(item[2][0]))
                except Exception:
                    self.fa.counters["internal_errors"] += 1
                    self.log.failure("internal error on a reply from {host}", host=item[2][0])
            else:
                rest.append(item)
        if not rest:
            return
        if self.terminator is not None:
            self.terminator.from_home(rest)
            return
        out = self._to_clients
        self.forwarder.from_home(rest, out)
        if out and self.esp is not None:
            self.esp.send_many(out)
        out.clear()

    def stats(self) -> dict[str, object]:
        """Counters of the foreign agent, the flows and the sockets."""
        return {
            "foreign_agent": self.fa.status(),
            "forwarder": self.forwarder.stats(),
            "ipip": dict(self.ipip.counters) if self.ipip is not None else {},
            "esp": dict(self.esp.counters) if self.esp is not None else {},
            "terminate": self.terminator.stats() if self.terminator is not None else None,
        }


def makeService(options: Options, reactor: Any = None) -> RelayService:  # noqa: N802
    """Build the relay service from parsed options."""
    return RelayService(options.config, reactor=reactor)
