# -*- test-case-name: tests.test_relay_terminate -*-
"""A relay in "terminate" mode (the seed's figures 1 and 3, steps 107-110).

The relay ends a visiting client's ESP: the client runs IKEv2 with the relay
(which answers as responder, proving its own identity; the client proves
``[[visitor]] ike_identity``) and gets a CHILD_SA whose selectors are its home
address.  On the client's behalf the relay runs IKEv2 with the client's home
agent (one IKE SA per visitor, started as soon as the visitor's registration
is accepted), with the client's home address as its own selector; the home
agent lets a relay key only the home addresses registered through it.

Between the two the relay re-seals
(:class:`~smobility.engines.reseal.ReSealer`): what the client sends is
opened under the client's SA, checked to come from its home address, and
sealed under the SA with home; the reverse likewise.  Relay <-> home is
ESP-in-UDP (port 4500 both ends) inside IP-in-IP, like everything else
between them, so the home firewall still admits nothing but protocol 4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Any

from cryptography import x509
from twisted.logger import Logger

from smobility.config import RelayConfig, RelayHomeAgentConfig, RelayIKEConfig, VisitorConfig
from smobility.engines.ike import IKESA, ChildSA, IKEConfig, PeerConfig, Role, State, ts_host
from smobility.engines.reseal import ReSealer
from smobility.services.dataplane import child_sas
from smobility.services.ike_service import (
    CertCheck,
    IKEService,
    ca_cert_check,
    ike_suites,
    load_ca,
    load_credentials,
    make_identity,
)
from smobility.wire.ikev2 import Identity

#: The relay's port towards the home agents (ESP-in-UDP and IKE, inside IP-in-IP).
HOME_PORT = 4500
#: Seconds before the relay tries again an IKE SA with home that failed.
RETRY = 5.0

SendClients = Callable[[list[tuple[bytes, tuple[str, int]]]], None]
SendHome = Callable[[list[tuple[bytes, int, str, int]]], None]


@dataclass(frozen=True, repr=False)
class RelayCredentials:
    """The relay's own IKE credentials and how it checks its peers' certificates.

    ``client_check``/``home_check``: chain to the home CA with clientAuth
    (visitors) or serverAuth (home agents), and the claimed identity; both
    ``None`` with shared keys.
    """

    local_id: Identity
    certificate: x509.Certificate | None
    private_key: Any
    anchors: tuple[x509.Certificate, ...]
    client_check: CertCheck | None
    home_check: CertCheck | None
    suites: dict[str, Any]


def relay_credentials(ike: RelayIKEConfig, clock: Any) -> RelayCredentials:
    """Load the relay's certificate, key and CA (``auth = "pubkey"``); one error if unreadable.

    @raise pki.PKIError: a file cannot be read or parsed.
    """
    cert, key = load_credentials(ike.cert, ike.key)
    anchors: tuple[x509.Certificate, ...] = ()
    client_check = home_check = None
    if ike.auth == "pubkey":
        assert ike.ca_file is not None
        ca = load_ca(ike.ca_file)
        anchors = (ca,)
        client_check = ca_cert_check(ca, "client", clock)
        home_check = ca_cert_check(ca, "server", clock)
    return RelayCredentials(
        make_identity(ike.identity, ike.identity_kind), cert, key, anchors, client_check,
        home_check, ike_suites(ike.params),
    )  # fmt: skip


def visitor_peers(
    visitors: Iterable[VisitorConfig], auth: str, address: Callable[[VisitorConfig], IPv4Address]
) -> tuple[dict[str, VisitorConfig], list[PeerConfig]]:
    """The visitors with an IKE identity, by identity (str), and the responder's peers.

    ``address(visitor)`` is the inner address the visitor gets (by CP) and
    may use as its traffic selector: its home address, or its virtual one.
    """
    known: dict[str, VisitorConfig] = {}
    peers: list[PeerConfig] = []
    for v in visitors:
        if v.ike_identity is None:
            continue
        identity = make_identity(v.ike_identity, v.ike_identity_kind)
        known[str(identity)] = v
        inner = address(v)
        peers.append(PeerConfig(
            identity, v.psk, internal_address=inner, remote_ts=(ts_host(inner),), auth=auth,
        ))  # fmt: skip
    return known, peers


class RelayTerminator:
    """The terminating relay's IKE (both roles) and re-sealing, for every visitor."""

    log = Logger()

    def __init__(
        self,
        cfg: RelayConfig,
        reactor: Any,
        *,
        send_clients: SendClients,
        send_home: SendHome,
    ) -> None:
        ike = cfg.ike
        if ike is None:
            raise ValueError("a terminating relay needs its [ike] table")
        self.cfg = cfg
        self.reactor = reactor
        self.send_clients = send_clients
        self.send_home = send_home
        self.local_home = (str(cfg.address), HOME_PORT)
        self.local_clients = (cfg.listen, cfg.esp_port)
        creds = relay_credentials(ike, reactor)
        local_id, cert, key, anchors = (
            creds.local_id, creds.certificate, creds.private_key, creds.anchors
        )
        suites = creds.suites
        # Visitors, known by IKE identity (str) and by home address (the
        # loader requires one of each in this mode).
        self.visitors, peers = visitor_peers(
            [v for v in cfg.visitors if v.home_address is not None], ike.auth,
            lambda v: v.home_address or IPv4Address(0),
        )  # fmt: skip
        self.by_address: dict[IPv4Address, VisitorConfig] = {
            v.home_address: v for v in self.visitors.values() if v.home_address is not None
        }
        self.client_ike = IKEService(
            Role.RESPONDER,
            IKEConfig(
                local_id=local_id, peers=peers, local_host=cfg.listen, ike_port=cfg.esp_port,
                nat_t_port=cfg.esp_port, certificate=cert, private_key=key,
                trust_anchors=anchors, **suites,
            ),
            reactor, send_nat_t=send_clients, cert_check=creds.client_check,
            on_up=self._client_up, on_down=self._client_down,
        )  # fmt: skip
        # Home agents: one peer each; a visitor's IKE SA uses a copy whose
        # own selector is the visitor's home address.
        self.home_peers: dict[str, PeerConfig] = {}
        for h in cfg.home_agent_ike:
            self.home_peers[str(h.address)] = self._home_peer(h, ike.auth)
        self.home_ike = IKEService(
            Role.INITIATOR,
            IKEConfig(
                local_id=local_id, peers=list(self.home_peers.values()),
                local_host=str(cfg.address), ike_port=HOME_PORT, nat_t_port=HOME_PORT,
                peer_nat_t_port=HOME_PORT, certificate=cert, private_key=key,
                trust_anchors=anchors, **suites,
            ),
            reactor, send_nat_t=self._send_home_ike, cert_check=creds.home_check,
            on_up=self._home_up, on_down=self._home_down, on_event=self._home_event,
        )  # fmt: skip
        self.reseal = ReSealer(clock=reactor, home_port=HOME_PORT, local_port=HOME_PORT)
        self.reseal.on_client_ike = self._client_ike_in
        self.reseal.on_home_ike = self._home_ike_in
        # The visitors registered through us now: name -> home agent; and
        # the IKE SA with home that stands for each.
        self.present: dict[str, str] = {}
        self.home_sas: dict[str, IKESA] = {}
        self._retries: dict[str, Any] = {}
        self._to_home: list[tuple[bytes, int, str, int]] = []
        self._to_clients: list[tuple[bytes, tuple[str, int]]] = []

    @staticmethod
    def _home_peer(h: RelayHomeAgentConfig, auth: str) -> PeerConfig:
        return PeerConfig(
            make_identity(h.ike_identity, h.ike_identity_kind), h.psk, auth=auth,
            request_address=False, send_idr=True, initial_contact=False,
        )  # fmt: skip

    # -- visitors come and go ------------------------------------------------------

    def visitor_changed(self, name: str, home_agent: str, present: bool) -> None:
        """The foreign agent accepted (or lost) a visitor: key (or unkey) its way home."""
        v = next((v for v in self.visitors.values() if v.name == name), None)
        if v is None:
            if present:
                self.log.warn(
                    "visitor {name} has no ike_identity: its traffic cannot pass this "
                    "terminating relay", name=name,
                )  # fmt: skip
            return
        if present:
            self.present[name] = home_agent
            self._start_home(v)
            return
        self.present.pop(name, None)
        retry = self._retries.pop(name, None)
        if retry is not None and retry.active():
            retry.cancel()
        sa = self.home_sas.pop(name, None)
        if sa is not None and sa.state in (State.ESTABLISHED, State.INIT_SENT, State.AUTH_SENT):
            self.home_ike.engine.delete_ike_sa(sa)
            self.home_ike.flush()
        identity = make_identity(v.ike_identity or "", v.ike_identity_kind)
        for csa in self.client_ike.sas_of(identity):
            self.client_ike.engine.delete_ike_sa(csa)
        self.client_ike.flush()
        self.reseal.remove(name)
        self.log.info("visitor {name} gone: its SAs are deleted", name=name)

    def _start_home(self, v: VisitorConfig) -> None:
        self._retries.pop(v.name, None)
        home_agent = self.present.get(v.name)
        if home_agent is None:
            return
        sa = self.home_sas.get(v.name)
        if sa is not None and self.home_ike.engine.sas.get(sa.our_spi) is sa and sa.state in (
            State.ESTABLISHED, State.INIT_SENT, State.AUTH_SENT,
        ):
            return
        base = self.home_peers.get(home_agent)
        if base is None:
            self.log.error("no [[home_agent]] IKE settings for {ha}", ha=home_agent)
            return
        assert v.home_address is not None
        peer = replace(base, local_ts=(ts_host(v.home_address),))
        self.log.info(
            "IKE with home agent {ha} on behalf of {name} ({hoa})",
            ha=home_agent, name=v.name, hoa=v.home_address,
        )
        self.home_sas[v.name] = self.home_ike.engine.initiate(
            (home_agent, HOME_PORT), peer=peer, local=self.local_home
        )
        self.home_ike.flush()

    # -- IKE events ------------------------------------------------------------------

    def _client_up(self, child: ChildSA) -> None:
        v = self.visitors.get(str(child.peer_id))
        if v is None or v.home_address is None:
            return
        inbound, outbound = child_sas(child)
        try:
            if child.replaces is not None:
                self.reseal.rekey_client(v.name, inbound, outbound)
            else:
                self.reseal.set_client(v.name, v.home_address, inbound, outbound, child.peer_addr)
        except ValueError as e:
            self.log.error("visitor {name}: SA with it not installed: {why}", name=v.name, why=e)
            return
        self.log.info(
            "visitor {name}: its ESP ends here (spi_in 0x{i:08x})", name=v.name,
            i=child.inbound_spi,
        )  # fmt: skip

    def _client_down(self, child: ChildSA, reason: str) -> None:
        v = self.visitors.get(str(child.peer_id))
        if v is None:
            return
        self.reseal.retire_client(v.name, child.inbound_spi)
        self.reseal.drop_client(v.name, child.inbound_spi)

    def _home_visitor(self, child: ChildSA) -> VisitorConfig | None:
        sels = child.local_ts
        if len(sels) != 1 or sels[0].start != sels[0].end:
            return None
        return self.by_address.get(IPv4Address(sels[0].start))

    def _home_up(self, child: ChildSA) -> None:
        v = self._home_visitor(child)
        if v is None:
            self.log.warn("a CHILD_SA with home for no visitor ({ts})", ts=child.local_ts)
            return
        inbound, outbound = child_sas(child)
        try:
            if child.replaces is not None:
                self.reseal.rekey_home(v.name, inbound, outbound)
            else:
                self.reseal.set_home(v.name, child.peer_addr[0], inbound, outbound)
        except ValueError as e:
            self.log.error("visitor {name}: SA with home not installed: {why}", name=v.name, why=e)
            return
        self.log.info(
            "visitor {name}: SA with home agent {ha} up (spi_in 0x{i:08x})",
            name=v.name, ha=child.peer_addr[0], i=child.inbound_spi,
        )  # fmt: skip

    def _home_down(self, child: ChildSA, reason: str) -> None:
        v = self._home_visitor(child)
        if v is None:
            return
        self.reseal.retire_home(v.name, child.inbound_spi)
        self.reseal.drop_home(v.name, child.inbound_spi)

    def _home_event(self, event: object) -> None:
        from smobility.engines.ike import IKEFailed, IKESADown, IKESARekeyed

        if isinstance(event, IKESARekeyed):
            # The visitor's IKE SA lives on under new SPIs.
            successor = self.home_ike.engine.sas.get(event.spi_i)
            if successor is None:
                return
            for name, sa in list(self.home_sas.items()):
                if sa.spi_i == event.old_spi_i:
                    self.home_sas[name] = successor
            return
        if not isinstance(event, IKESADown | IKEFailed):
            return
        if isinstance(event, IKEFailed) and event.rekey:
            return
        if isinstance(event, IKEFailed) and event.child_only:
            # Home took the IKE SA but refused its CHILD_SA (TS_UNACCEPTABLE
            # while the registration through us is not there yet): an IKE SA
            # without a CHILD_SA carries nothing.  Delete it (outside the
            # engine's call) and try again later.
            for name, sa in list(self.home_sas.items()):
                if sa.spi_i == event.spi_i:
                    self.reactor.callLater(0, self._drop_home_sa, sa)
                    self._schedule_retry(name)
            return
        for name in list(self.present):
            current = self.home_sas.get(name)
            live = current is not None and self.home_ike.engine.sas.get(current.our_spi) is current
            if live and current is not None and current.state is State.ESTABLISHED:
                continue
            self._schedule_retry(name)

    def _schedule_retry(self, name: str) -> None:
        retry = self._retries.get(name)
        if retry is None or not retry.active():
            v = next((v for v in self.visitors.values() if v.name == name), None)
            if v is not None:
                self._retries[name] = self.reactor.callLater(RETRY, self._start_home, v)

    def _drop_home_sa(self, sa: IKESA) -> None:
        if sa.state is State.ESTABLISHED and not sa.children:
            self.home_ike.engine.delete_ike_sa(sa)
            self.home_ike.flush()

    # -- datagrams -------------------------------------------------------------------

    def _client_ike_in(self, message: bytes, addr: tuple[str, int]) -> None:
        self.client_ike.receive(message, addr, self.local_clients)

    def _home_ike_in(self, message: bytes, addr: tuple[str, int]) -> None:
        self.home_ike.receive(message, addr, self.local_home)

    def _send_home_ike(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        self.send_home([(d, HOME_PORT, addr[0], addr[1]) for d, addr in datagrams])

    def from_clients(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """A batch from the visitors' ESP port."""
        out = self._to_home
        self.reseal.from_clients(datagrams, out)
        if out:
            self.send_home(out)
            out.clear()

    def from_home(self, items: list[tuple[int, bytes, tuple[str, int]]]) -> None:
        """A batch of UDP datagrams from the home agents (inside IP-in-IP) for port 4500."""
        out = self._to_clients
        self.reseal.from_home(items, out)
        if out:
            self.send_clients(out)
            out.clear()

    def stop(self) -> None:
        """Delete every IKE SA (best effort), stop the timers."""
        for retry in self._retries.values():
            if retry.active():
                retry.cancel()
        self._retries.clear()
        self.client_ike.stop()
        self.home_ike.stop()

    def stats(self) -> dict[str, object]:
        """Counters of the re-sealing and of both IKE engines."""
        return {
            "reseal": self.reseal.stats(),
            "ike_clients": self.client_ike.stats(),
            "ike_home": self.home_ike.stats(),
            "present": sorted(self.present),
        }


__all__ = [
    "HOME_PORT",
    "RelayCredentials",
    "RelayTerminator",
    "relay_credentials",
    "visitor_peers",
]
