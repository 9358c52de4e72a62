# -*- test-case-name: tests.test_mux -*-
"""``twistd smobility-mux``: the HTTP(S) multiplexer and its SOCKS5 ingress.

Roaming clients that can only speak HTTP(S) send the datagrams they would
send over UDP (Mobile IP registrations, ESP-in-UDP) as frames in HTTP
requests (:mod:`smobility.adapters.muxweb`); the multiplexer relays each
session's datagrams to the home agent from one UDP socket per session.  In
front of it, the SOCKS5 ingress (username/password, users in ``state_db``)
connects authenticated users to the multiplexer and nowhere else.  Clients
authenticate to the multiplexer itself with credentials issued by
``smobility-ctl tokens issue NAME --db STATE_DB``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from smobility.adapters.muxweb import HTTP_TIMEOUT, TLSSetupError, TunnelServer, tls_options
from smobility.config import MuxConfig, load_mux
from smobility.engines.mux import MuxEngine
from smobility.services.common import ConfigOptions, log_warnings
from smobility.store.sqlite import StoreError
from smobility.store.tokens import TokenStore

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


class Options(ConfigOptions):
    """Options of ``twistd smobility-mux``."""

    synopsis = "--config FILE"
    longdesc = (
        "Multiplexer: carries roaming clients' datagrams in HTTP(S) requests (behind a "
        "SOCKS5 ingress) and relays them to the home agent over UDP, one socket per "
        "session.  Clients need a credential from 'smobility-ctl tokens issue NAME --db "
        "STATE_DB'.  Example configuration: etc/mux.toml (doc/mux.md explains it)."
    )
    role: ClassVar[str] = "multiplexer"
    example: ClassVar[str] = "etc/mux.toml"

    def load(self, path: str) -> Any:
        return load_mux(path)

    def postOptions(self) -> None:  # noqa: N802
        super().postOptions()
        cfg: MuxConfig = self.config
        # Check what can be checked before twistd daemonizes, so a bad path or
        # certificate is one sentence rather than a traceback from the reactor.
        try:
            TokenStore(cfg.state_db).close()
        except StoreError as e:
            raise usage.UsageError(f"{cfg.path}: mux.state_db: {e}") from None
        if cfg.tls:
            assert cfg.tls_cert is not None and cfg.tls_key is not None
            try:
                tls_options(cfg.tls_cert, cfg.tls_key, cfg.tls_name)
            except TLSSetupError as e:
                raise usage.UsageError(f"{cfg.path}: mux.tls_cert/tls_key: {e}") from None


def socks_destination(cfg: MuxConfig) -> tuple[str, int]:
    """The one destination the SOCKS5 ingress allows: the multiplexer's own address.

    A wildcard listen address is reached on loopback.
    """
    return _WILDCARDS.get(cfg.listen, cfg.listen), cfg.port


class MuxService(service.MultiService):
    """The multiplexer: HTTP(S) listener, session sockets, expiry timer, SOCKS5 ingress."""

    log = Logger()

    def __init__(self, cfg: MuxConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.cfg = cfg
        self.reactor = reactor
        self.tokens: TokenStore | None = None
        self.users: Any = None
        self.engine: MuxEngine | None = None
        self.server: TunnelServer | None = None
        self.port: IListeningPort | None = None
        self.ingress: Any = None

    def _build(self) -> TunnelServer:
        cfg = self.cfg
        try:
            self.tokens = TokenStore(cfg.state_db)
        except StoreError as e:
            raise SystemExit(f"smobility-mux: {e}") from None
        if self.tokens.count() == 0:
            self.log.warn(
                "no multiplexer credential is issued yet, so every request is refused "
                "(401); issue one with: smobility-ctl tokens issue NAME --db {db}",
                db=str(cfg.state_db),
            )
        self.engine = MuxEngine(
            verify=self.tokens.verify,
            clock=self.reactor,
            home_agent=cfg.home_agent,
            mip_port=cfg.home_agent_port,
            esp_port=cfg.esp_port,
            max_sessions=cfg.max_sessions,
            max_buffer=cfg.max_buffer,
            idle_timeout=cfg.idle_timeout,
        )
        self.server = TunnelServer(self.engine, keepalive=cfg.keepalive, reactor=self.reactor)
        expiry = TimerService(self.engine.expiry_interval, self.server.expire)
        expiry.clock = self.reactor
        expiry.setName("mux-expiry")
        expiry.setServiceParent(self)
        if cfg.socks:
            self._add_ingress()
        return self.server

    def _add_ingress(self) -> None:
        from smobility.adapters.socks import make_ingress_service
        from smobility.store.users import UserStore

        cfg = self.cfg
        try:
            self.users = UserStore(cfg.state_db)
        except StoreError as e:
            raise SystemExit(f"smobility-mux: {e}") from None
        self.ingress = make_ingress_service(
            listen=cfg.socks_listen,
            port=cfg.socks_port,
            users=self.users,
            allowed=socks_destination(cfg),
            reactor=self.reactor,
            handshake_timeout=cfg.socks_handshake_timeout,
            max_per_user=cfg.socks_max_per_user,
        )
        # Listen failures must surface in privilegedStartService, not as a log line.
        self.ingress._raiseSynchronously = True
        self.ingress.setServiceParent(self)

    def privilegedStartService(self) -> None:  # noqa: N802
        """Bind the HTTP(S) and SOCKS5 ports (ports below 1024 need root) first."""
        cfg = self.cfg
        log_warnings(cfg.warnings)
        server = self.server or self._build()
        factory = server.factory(HTTP_TIMEOUT)
        try:
            if cfg.tls:
                assert cfg.tls_cert is not None and cfg.tls_key is not None
                try:
                    options = tls_options(cfg.tls_cert, cfg.tls_key, cfg.tls_name)
                except TLSSetupError as e:
                    raise SystemExit(f"smobility-mux: {e}") from None
                self.port = self.reactor.listenSSL(
                    cfg.port, factory, options, interface=cfg.listen
                )
            else:
                self.port = self.reactor.listenTCP(cfg.port, factory, interface=cfg.listen)
        except CannotListenError as e:
            raise SystemExit(
                _taken("HTTPS" if cfg.tls else "HTTP", cfg.listen, cfg.port, e)
            ) from None
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self._stop_port()
            raise SystemExit(_taken("SOCKS5", cfg.socks_listen, cfg.socks_port, e)) from None
        self.log.info(
            "multiplexer listening on {scheme}://{host}:{port}/tunnel/ for the home agent "
            "{ha} (UDP {mip}/{esp}){socks}",
            scheme="https" if cfg.tls else "http", host=_bracket(cfg.listen), port=cfg.port,
            ha=cfg.home_agent, mip=cfg.home_agent_port, esp=cfg.esp_port,
            socks=(
                f", SOCKS5 ingress on {_bracket(cfg.socks_listen)}:{cfg.socks_port}"
                if cfg.socks else ""
            ),
        )

    def startService(self) -> None:  # noqa: N802
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def _stop_port(self) -> Deferred[None]:
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        d: Deferred[Any] = maybeDeferred(port.stopListening)
        return d

    def stopService(self) -> Deferred[None]:  # noqa: N802
        if self.server is not None:
            self.server.shutdown()
        d: Deferred[Any] = maybeDeferred(super().stopService)
        d.addCallback(lambda _: self._stop_port())

        def closed(_: object) -> None:
            for store in (self.tokens, self.users):
                if store is not None:
                    store.close()
            self.tokens = self.users = None
            # A later start builds everything again on fresh stores.
            for child in list(self):
                child.disownServiceParent()
            self.server = self.engine = self.ingress = None
            self.log.info("multiplexer stopped")

        return d.addCallback(closed)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _taken(what: str, host: str, port: int, e: CannotListenError) -> str:
    return (
        f"smobility-mux: cannot listen for {what} on {_bracket(host)}:{port} "
        f"({e.socketError}); is another multiplexer running there, or is root needed "
        "for a port below 1024?"
    )


def makeService(options: Options, reactor: Any = None) -> MuxService:  # noqa: N802
    """Build the multiplexer service from parsed options."""
    return MuxService(options.config, reactor=reactor)
