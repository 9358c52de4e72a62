# -*- test-case-name: tests.test_services -*-
"""``twistd smobility-home``: the home agent.

It serves Mobile IPv4 registrations on UDP (port 434 by default), keeps its
bindings in the SQLite state database (reloaded at start, expired ones
dropped) and, when configured, offers the manhole admin console over SSH on
loopback.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from smobility.adapters.manhole import ManholeError, make_manhole_service
from smobility.adapters.udp import HomeAgentProtocol
from smobility.config import HomeConfig, load_home
from smobility.engines.homeagent import ForeignAgentEntry, HomeAgent, MobileNodeEntry
from smobility.services.common import ConfigOptions, StartupError, log_warnings
from smobility.store.sqlite import SQLiteStore, StoreError


class Options(ConfigOptions):
    """Options of ``twistd smobility-home``."""

    synopsis = "--config FILE"
    longdesc = (
        "Home agent: authenticates Mobile IPv4 registrations (RFC 5944) from roaming "
        "clients, keeps their bindings (permanent address -> care-of address) in its "
        "SQLite state and answers on UDP port 434 by default.  Example configuration: "
        "etc/home.toml (every key is explained in doc/configuration.md)."
    )
    role: ClassVar[str] = "home agent"
    example: ClassVar[str] = "etc/home.toml"

    def load(self, path: str) -> Any:
        return load_home(path)

    def postOptions(self) -> None:  # noqa: N802
        super().postOptions()
        cfg: HomeConfig = self.config
        # Open the state database now, so that a bad path is a usage error
        # (one sentence) rather than a traceback from inside the reactor.
        try:
            SQLiteStore(cfg.state_db).close()
        except StoreError as e:
            raise usage.UsageError(f"{cfg.path}: home.state_db: {e}") from None


def node_entries(cfg: HomeConfig) -> list[MobileNodeEntry]:
    """The engine's view of the configured mobile nodes."""
    return [
        MobileNodeEntry(
            name=n.name,
            home_address=n.home_address,
            spi=n.auth.spi,
            key=n.auth.key,
            algorithm=n.auth.algorithm,
            max_lifetime=n.max_lifetime,
            simultaneous_bindings=n.simultaneous_bindings,
            nai=n.nai,
        )
        for n in cfg.mobile_nodes
    ]


class HomeAgentService(service.MultiService):
    """The home agent: registration socket, engine, state and admin console."""

    log = Logger()

    def __init__(self, cfg: HomeConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.cfg = cfg
        self.reactor = reactor
        self.store: SQLiteStore | None = None
        self.engine: HomeAgent | None = None
        self.port: IListeningPort | None = None
        self.data_plane: Any = None
        self.ike: Any = None
        self.pki_store: Any = None
        self.ipip: Any = None

    def _open(self) -> HomeAgent:
        if self.engine is None:
            cfg = self.cfg
            self.store = SQLiteStore(cfg.state_db)
            self.engine = HomeAgent(
                addresses=cfg.addresses,
                home_network=cfg.home_network,
                nodes=node_entries(cfg),
                store=self.store,
                clock=self.reactor,
                replay_window=cfg.replay_window,
                foreign_agents=[
                    ForeignAgentEntry(
                        r.address, r.auth.spi, r.auth.key, r.auth.algorithm, gateway=r.gateway
                    )
                    for r in cfg.relays
                ],
            )
            if cfg.tunnel is not None:
                self._add_data_plane(self.engine)
            if cfg.manhole is not None:
                self._add_manhole(self.engine)
        return self.engine

    def _add_data_plane(self, engine: HomeAgent) -> None:
        from smobility.services.dataplane import HomeDataPlane, make_sas

        t = self.cfg.tunnel
        assert t is not None
        sas = {
            n.name: make_sas(n.esp, side="home") for n in self.cfg.mobile_nodes if n.esp is not None
        }
        self.data_plane = HomeDataPlane(
            engine,
            sas=sas,
            device=t.device,
            listen=t.listen,
            port=t.port,
            lan_interface=t.lan_interface,
            path_mtu=t.path_mtu,
            lan_address=self.cfg.addresses[0],
            reactor=self.reactor,
        )
        engine.keepalive_interval = t.keepalive
        if self.cfg.ike is not None and (
            any(n.ike is not None for n in self.cfg.mobile_nodes)
            or any(r.ike_identity is not None for r in self.cfg.relays)
        ):
            self._add_ike(self.data_plane)
        self.data_plane.setServiceParent(self)

    def _add_ike(self, data_plane: Any) -> None:
        """The IKEv2 responder that keys the tunnels of IKE nodes."""
        from smobility import pki
        from smobility.engines.ike import Role
        from smobility.services.ike_service import (
            IKEService,
            home_cert_check,
            home_ike_config,
            make_identity,
        )
        from smobility.store.pki import PKIStore

        cfg, ike, t = self.cfg, self.cfg.ike, self.cfg.tunnel
        assert ike is not None and t is not None
        anchors: tuple[Any, ...] = ()
        check = None
        if any(n.ike is not None and n.ike.auth == "pubkey" for n in cfg.mobile_nodes) or any(
            r.ike_identity is not None and r.ike_auth == "pubkey" for r in cfg.relays
        ):
            try:
                self.pki_store = PKIStore(ike.ca_db, create=False)
                if not self.pki_store.has_ca():
                    raise pki.PKIError(
                        f"{ike.ca_db} holds no CA (smobility-ctl pki init --db {ike.ca_db})"
                    )
                anchors = (self.pki_store.ca_certificate(),)
            except pki.PKIError as e:
                raise SystemExit(f"smobility-home: ike.ca_db: {e}") from None
            check = home_cert_check(self.pki_store, self.reactor)
        try:
            config, names = home_ike_config(
                ike, cfg.mobile_nodes, listen=t.listen, nat_t_port=t.port, trust_anchors=anchors,
                relays=cfg.relays,
            )
        except (pki.PKIError, ValueError) as e:
            raise SystemExit(f"smobility-home: ike: {e}") from None
        service_ = IKEService(
            Role.RESPONDER, config, self.reactor, send_nat_t=data_plane.pipe.send_all,
            cert_check=check,
        )  # fmt: skip
        ids = {
            n.name: make_identity(n.ike.identity, n.ike.identity_kind)
            for n in cfg.mobile_nodes
            if n.ike is not None
        }
        data_plane.attach_ike(service_, names, ids, ike.port)
        relay_ids = {
            str(make_identity(r.ike_identity, r.ike_identity_kind)): str(r.address)
            for r in cfg.relays
            if r.ike_identity is not None
        }
        if relay_ids:
            data_plane.attach_relay_ike(relay_ids)
        self.ike = service_
        self.log.info(
            "IKEv2 responder as {id} for {n} node(s), ports {p} and {q}",
            id=ike.identity, n=len(ids), p=ike.port or "-", q=t.port,
        )

    def _add_manhole(self, engine: HomeAgent) -> None:
        m = self.cfg.manhole
        assert m is not None
        namespace: dict[str, object] = {
            "home": engine,
            "bindings": engine.bindings,
            "nodes": engine.nodes,
            "counters": engine.counters,
            "tunnel": lambda: self.data_plane.engine.stats() if self.data_plane else None,
            "ike": lambda: self.ike.stats() if self.ike else None,
            "relays": lambda: dict(self.ipip.counters) if self.ipip else None,
            "service": self,
        }
        try:
            console = make_manhole_service(
                listen=m.listen,
                port=m.port,
                authorized_keys=m.authorized_keys,
                host_key=m.host_key,
                namespace=namespace,
                reactor=self.reactor,
            )
        except ManholeError as e:
            self.log.warn("admin console not started: {why}", why=str(e))
            return
        console.setServiceParent(self)

    def privilegedStartService(self) -> None:  # noqa: N802
        """Bind the registration port (434 needs root) before privileges drop."""
        log_warnings(self.cfg.warnings)
        engine = self._open()
        cfg = self.cfg
        try:
            self.port = self.reactor.listenUDP(
                cfg.port, HomeAgentProtocol(engine), interface=cfg.listen
            )
        except CannotListenError as e:
            raise SystemExit(
                f"smobility-home: cannot listen on UDP {cfg.listen}:{cfg.port} "
                f"({e.socketError}); is another home agent running, or is root "
                f"needed for a port below 1024?"
            ) from None
        self.log.info(
            "home agent listening on UDP {listen}:{port} for {n} mobile node(s), "
            "home network {net}, {b} binding(s) restored",
            listen=cfg.listen,
            port=cfg.port,
            n=len(cfg.mobile_nodes),
            net=cfg.home_network,
            b=engine.binding_count(),
        )
        try:
            super().privilegedStartService()
            if cfg.relays:
                self._open_relays(engine)
        except StartupError as e:
            raise SystemExit(f"smobility-home: {e}") from None

    def _open_relays(self, engine: HomeAgent) -> None:
        """The IP-in-IP link to the relays (RFC 2003 on a raw socket).

        Everything between a relay and the home agent travels in protocol 4:
        the relayed registrations (inner UDP port 434) and the visitors' ESP
        and IKE (inner UDP to the ESP port).  Protocol-4 packets from anyone
        but a configured relay are dropped and counted by the socket.
        """
        from smobility.adapters.ipip import IPIPError, IPIPSocket

        cfg = self.cfg
        relays = [str(r.address) for r in cfg.relays]
        self.ipip = IPIPSocket(
            local=str(cfg.addresses[0]), peers=relays, on_datagrams=self._from_relays,
            reactor=self.reactor,
        )  # fmt: skip
        try:
            self.ipip.open()
        except IPIPError as e:
            self.ipip = None
            raise StartupError(f"relays: {e}") from None
        if self.data_plane is not None:
            self.data_plane.attach_relays(self.ipip, relays)
        self.log.info(
            "IP-in-IP from {n} relay(s) ({relays}) to {local}",
            n=len(relays), relays=", ".join(relays), local=cfg.addresses[0],
        )  # fmt: skip

    def _from_relays(self, items: list[tuple[int, bytes, tuple[str, int]]]) -> None:
        """Datagrams a relay sent inside IP-in-IP: registrations, or ESP/IKE."""
        engine = self.engine
        if engine is None:
            return
        esp: list[tuple[bytes, tuple[str, int]]] = []
        esp_port = self.cfg.tunnel.port if self.cfg.tunnel is not None else None
        for port, payload, source in items:
            if port == self.cfg.port:
                try:
                    reply = engine.handle_request(payload, source)
                except Exception:
                    engine.counters["internal_errors"] += 1
                    self.log.failure("internal error on a relayed registration from {s}", s=source)
                    continue
                if reply is not None and self.ipip is not None:
                    self.ipip.send(reply, self.cfg.port, source[0], source[1])
            elif port == esp_port and self.data_plane is not None:
                esp.append((payload, source))
            else:
                engine.counters["relay_unexpected_port"] += 1
        if esp:
            self.data_plane.pipe.receive_many(esp)

    def startService(self) -> None:  # noqa: N802
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None]:  # noqa: N802
        d: Deferred[Any] = maybeDeferred(super().stopService)
        port, self.port = self.port, None
        if self.ipip is not None:
            self.ipip.close()
            self.ipip = None
        if port is not None:
            d.addCallback(lambda _: port.stopListening())

        def closed(_: object) -> None:
            if self.engine is not None:
                self.engine.stop()
            if self.store is not None:
                self.store.close()
                self.store = None
            if self.pki_store is not None:
                self.pki_store.close()
                self.pki_store = None
            self.engine = None
            self.log.info("home agent stopped")

        return d.addCallback(closed)


def makeService(options: Options, reactor: Any = None) -> HomeAgentService:  # noqa: N802
    """Build the home agent service from parsed options."""
    return HomeAgentService(options.config, reactor=reactor)
