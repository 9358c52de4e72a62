# -*- test-case-name: tests.test_services -*-
"""``twistd smobility-client``: the roaming client, co-located mode.

It registers its care-of address directly with its home agent, keeps the
binding alive, follows the care-of address when the OS changes it, and
deregisters on a clean stop.
"""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Address
from typing import Any, ClassVar

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from smobility.adapters.udp import MobileNodeProtocol, source_address_towards
from smobility.config import ClientConfig, load_client
from smobility.engines.mobilenode import MobileNode, MobileNodeSettings
from smobility.services.common import ConfigOptions, log_warnings

#: How often (seconds) the client checks which care-of address the OS uses.
CARE_OF_POLL = 1.0
#: Longest wait (seconds) for the deregistration reply on a clean stop.
DEREGISTER_TIMEOUT = 3.0


class Options(ConfigOptions):
    """Options of ``twistd smobility-client``."""

    synopsis = "--config FILE"
    longdesc = (
        "Roaming client: registers its current care-of address with its home agent "
        "(Mobile IPv4, co-located mode), re-registers before the lifetime runs out and "
        "whenever the address changes, and deregisters on a clean stop.  Example "
        "configuration: etc/client.toml (every key in doc/configuration.md)."
    )
    role: ClassVar[str] = "client"
    example: ClassVar[str] = "etc/client.toml"

    def load(self, path: str) -> Any:
        return load_client(path)


def settings_from(cfg: ClientConfig) -> MobileNodeSettings:
    """The engine's settings from a client configuration."""
    return MobileNodeSettings(
        name=cfg.name,
        home_address=cfg.home_address,
        home_agent=cfg.home_agent,
        spi=cfg.auth.spi,
        key=cfg.auth.key,
        algorithm=cfg.auth.algorithm,
        lifetime=cfg.lifetime,
        retransmit_initial=cfg.retransmit_initial,
        retransmit_max=cfg.retransmit_max,
        max_attempts=cfg.max_attempts,
        reregister_margin=cfg.reregister_margin,
        udp_tunnel=cfg.udp_tunnel,
        nai=cfg.nai,
    )


class ClientService(service.Service):
    """The client: registration socket, engine, care-of tracking, status file."""

    log = Logger()

    def __init__(self, cfg: ClientConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.cfg = cfg
        self.reactor = reactor
        self.protocol = MobileNodeProtocol((str(cfg.home_agent), cfg.home_agent_port))
        self.engine = MobileNode(settings_from(cfg), clock=reactor, send=self.protocol.send)
        self.protocol.engine = self.engine
        self.engine.add_listener(self._write_status)
        self.port: IListeningPort | None = None
        self._poll: LoopingCall | None = None

    def current_care_of(self) -> IPv4Address | None:
        """The configured care-of address, or the one the OS uses now."""
        if self.cfg.care_of_address is not None:
            return self.cfg.care_of_address
        return source_address_towards(self.cfg.home_agent, self.cfg.home_agent_port)

    def _check_care_of(self) -> None:
        coa = self.current_care_of()
        if coa is None:
            return
        if coa != self.engine.care_of:
            if self.engine.care_of is not None:
                self.log.info(
                    "care-of address changed {old} -> {new}", old=self.engine.care_of, new=coa
                )
            self.engine.register(coa)

    def privilegedStartService(self) -> None:  # noqa: N802
        log_warnings(self.cfg.warnings)
        cfg = self.cfg
        try:
            self.port = self.reactor.listenUDP(
                cfg.local_port, self.protocol, interface=cfg.local_address
            )
        except CannotListenError as e:
            raise SystemExit(
                f"smobility-client: cannot listen on UDP {cfg.local_address}:{cfg.local_port}"
                f" ({e.socketError})"
            ) from None
        super().privilegedStartService()

    def startService(self) -> None:  # noqa: N802
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        self.log.info(
            "client {name} (home address {hoa}) registering with {ha}:{port}",
            name=self.cfg.name,
            hoa=self.cfg.home_address,
            ha=self.cfg.home_agent,
            port=self.cfg.home_agent_port,
        )
        self._poll = LoopingCall(self._check_care_of)
        self._poll.clock = self.reactor
        self._poll.start(CARE_OF_POLL, now=True)

    def stopService(self) -> Deferred[None]:  # noqa: N802
        super().stopService()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        d = self.engine.deregister()
        timeout = self.reactor.callLater(DEREGISTER_TIMEOUT, self._give_up, d)

        def done(ok: bool) -> Any:
            if timeout.active():
                timeout.cancel()
            if not ok:
                self.log.warn("stopped without a confirmed deregistration")
            self.engine.stop()
            self._write_status(self.engine)
            if self.port is not None:
                port, self.port = self.port, None
                return maybeDeferred(port.stopListening)
            return None

        return d.addCallback(done)

    def _give_up(self, d: Deferred[bool]) -> None:
        if not d.called:
            d.callback(False)

    def _write_status(self, engine: MobileNode) -> None:
        path = self.cfg.status_file
        if path is None:
            return
        status = engine.status()
        status["events"] = engine.events[-50:]
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(status, f)
            os.replace(tmp, path)
        except OSError as e:
            self.log.warn("cannot write the status file {path}: {err}", path=path, err=e.strerror)


def makeService(options: Options, reactor: Any = None) -> ClientService:  # noqa: N802
    """Build the client service from parsed options."""
    return ClientService(options.config, reactor=reactor)
