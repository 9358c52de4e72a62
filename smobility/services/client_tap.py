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
from smobility.services.common import ConfigOptions, StartupError, log_warnings

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


class ClientService(service.MultiService):
    """The client: registration socket, engine, care-of tracking, status file."""

    log = Logger()

    def __init__(self, cfg: ClientConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.cfg = cfg
        self.reactor = reactor
        self.protocol = MobileNodeProtocol((str(cfg.home_agent), cfg.home_agent_port))
        self.engine = MobileNode(settings_from(cfg), clock=reactor, send=self._send_registration)
        self.protocol.engine = self.engine
        from smobility.services.paths import PathManager

        self.paths = PathManager(
            node=self.engine,
            transports=cfg.transports,
            send_udp=self.protocol.send,
            send_udp_to=self.protocol.send_to,
            home_agent=str(cfg.home_agent),
            ha_port=cfg.home_agent_port,
            esp_port=cfg.tunnel.port if cfg.tunnel is not None else 4500,
            reactor=reactor,
            climb_back_after=cfg.climb_back_after,
        )
        self.protocol.on_receive = self.paths.udp_reply
        self.engine.add_listener(self._write_status)
        self.port: IListeningPort | None = None
        self._poll: LoopingCall | None = None
        self._watcher: Any = None
        self._pending_check: Any = None
        self.data_plane: Any = None
        self.ike: Any = None
        if cfg.tunnel is not None and (cfg.esp is not None or cfg.ike is not None):
            from smobility.services.dataplane import ClientDataPlane, make_sas

            t = cfg.tunnel
            self.data_plane = ClientDataPlane(
                self.engine,
                sas=make_sas(cfg.esp, side="client") if cfg.esp is not None else None,
                device=t.device,
                home_agent=cfg.home_agent,
                ha_port=t.port,
                local_port=t.local_port,
                home_network=t.home_network,
                routes=t.routes,
                path_mtu=t.path_mtu,
                keepalive=t.keepalive,
                reactor=reactor,
            )
            self.data_plane.setServiceParent(self)
            pipe = self.data_plane.pipe
            pipe.divert = self.paths.divert_esp
            self.paths.translate = pipe.translate
            self.paths.esp_udp_send = lambda ds: pipe.udp.send_many(ds) if pipe.udp else None
            self.data_plane.bypass = [
                a for t in cfg.transports for a in (t.relay, t.gateway) if a is not None
            ]
            self.paths.esp_sink = self.data_plane.pipe.receive
            self.paths.esp_batch_sink = self.data_plane.pipe.receive_many
            if cfg.ike is not None:
                self._add_ike(self.data_plane)
            self._add_relay_ike(self.data_plane)
            self.paths.use_relay = self.data_plane.use_relay
            self.paths.via_relay = self.data_plane.via_relay

    def _add_ike(self, data_plane: Any) -> None:
        """The IKEv2 initiator, started after each accepted registration without an IKE SA."""
        from smobility import pki
        from smobility.engines.ike import Role
        from smobility.services.ike_service import IKEService, client_ike_config

        cfg, t = self.cfg, self.cfg.tunnel
        assert cfg.ike is not None and t is not None
        try:
            config, check = client_ike_config(
                cfg.ike, local_port=t.local_port, ha_port=t.port, clock=self.reactor
            )
        except (pki.PKIError, ValueError) as e:
            raise SystemExit(f"smobility-client: ike: {e}") from None
        # IKE datagrams are ESP-port datagrams: through the pipe (and the
        # path manager's divert on an HTTP path), like ESP.
        self.ike = IKEService(
            Role.INITIATOR, config, self.reactor, send_nat_t=data_plane.pipe.send_all,
            cert_check=check,
        )  # fmt: skip
        data_plane.attach_ike(self.ike)

    def _add_relay_ike(self, data_plane: Any) -> None:
        """An IKEv2 initiator for each terminating relay, started once registered through it."""
        from smobility import pki
        from smobility.engines.ike import Role
        from smobility.services.ike_service import IKEService, client_ike_config

        t = self.cfg.tunnel
        assert t is not None
        pipe = data_plane.pipe
        for transport in self.cfg.transports:
            if transport.kind != "relay" or transport.mode != "terminate":
                continue
            assert transport.ike is not None and transport.relay is not None
            try:
                config, check = client_ike_config(
                    transport.ike, local_port=t.local_port, ha_port=transport.esp_port,
                    clock=self.reactor,
                )  # fmt: skip
            except (pki.PKIError, ValueError) as e:
                raise SystemExit(f"smobility-client: transport relay ike: {e}") from None
            ike = IKEService(
                Role.INITIATOR, config, self.reactor,
                send_nat_t=lambda ds: pipe.udp.send_many(ds) if pipe.udp else None,
                cert_check=check,
            )  # fmt: skip
            data_plane.attach_relay_ike((str(transport.relay), transport.esp_port), ike)

    def _send_registration(self, data: bytes) -> None:
        self.paths.send_registration(data)

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
            self.paths.network_changed()
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
        try:
            super().privilegedStartService()
        except StartupError as e:
            raise SystemExit(f"smobility-client: {e}") from None

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
        if self.cfg.care_of_address is None:
            self._watch_links()
        self._poll = LoopingCall(self._check_care_of)
        self._poll.clock = self.reactor
        self._poll.start(CARE_OF_POLL, now=True)

    def _watch_links(self) -> None:
        """Re-check the care-of address as soon as netlink reports a change."""
        try:
            from smobility.adapters.netlink import LinkWatcher

            self._watcher = LinkWatcher(self._link_changed, reactor=self.reactor)
            self._watcher.start()
        except Exception as e:  # no netlink here: the periodic check still works
            self._watcher = None
            self.log.warn(
                "not watching netlink ({why}); polling every {s:g} s", why=e, s=CARE_OF_POLL
            )

    def _link_changed(self, kind: str) -> None:
        if self._pending_check is None or not self._pending_check.active():
            self._pending_check = self.reactor.callLater(0.02, self._netlink_check, kind)

    def _netlink_check(self, kind: str) -> None:
        self._pending_check = None
        coa = self.current_care_of()
        if coa != self.engine.care_of:
            self.engine.note_event("link", change=kind, address=str(coa) if coa else None)
            self.log.info(
                "network change ({kind}): care-of address now {coa}", kind=kind, coa=coa or "none"
            )
        self._check_care_of()

    def stopService(self) -> Deferred[None]:  # noqa: N802
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._pending_check is not None and self._pending_check.active():
            self._pending_check.cancel()
        d = self.engine.deregister()
        timeout = self.reactor.callLater(DEREGISTER_TIMEOUT, self._give_up, d)

        def done(ok: bool) -> Any:
            if timeout.active():
                timeout.cancel()
            if not ok:
                self.log.warn("stopped without a confirmed deregistration")
            self.engine.stop()
            self.paths.stop()
            self._write_status(self.engine)
            stopped = maybeDeferred(service.MultiService.stopService, self)
            if self.port is not None:
                port, self.port = self.port, None
                stopped.addCallback(lambda _: port.stopListening())
            return stopped

        return d.addCallback(done)

    def _give_up(self, d: Deferred[bool]) -> None:
        if not d.called:
            d.callback(False)

    def _write_status(self, engine: MobileNode) -> None:
        path = self.cfg.status_file
        if path is None:
            return
        status = engine.status()
        status["path"] = self.paths.active_label
        if self.data_plane is not None:
            status["tunnel"] = self.data_plane.engine.stats()
        if self.ike is not None:
            status["ike"] = self.ike.stats()
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
