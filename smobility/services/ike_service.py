# -*- test-case-name: tests.test_ike_roaming -*-
"""Twisted glue for the IKEv2 engine: the home agent's responder, the client's initiator.

:class:`IKEService` drives one :class:`~smobility.engines.ike.IKEEngine` from
the reactor the way the engine asks (aioquic's shape): every call into the
engine is followed by sending what :meth:`IKEEngine.datagrams_to_send`
returns and re-arming one ``callLater`` at :meth:`IKEEngine.get_timer`.

Datagrams on the NAT-T port go out through ``send_nat_t`` (the data plane's
:meth:`~smobility.services.dataplane.TunnelPipe.send_all`, so that on the
client's HTTP path they are framed like the ESP they travel with); the
others (IKE_SA_INIT on port 500) through ``send_plain``.  What arrives on the
NAT-T port comes from :class:`~smobility.engines.tunnel.TunnelEngine`'s
``on_ike`` hook, without the non-ESP marker; port 500 is read by
:class:`IKEPort`.

The engine is the one in ``smobility.engines.ike`` with two things added here
(until the engine offers them): the peer's certificate is also checked by a
``cert_check`` callable at IKE_AUTH (the home agent: chain and revocation in
its CA's store; the client: the home agent's name with ``service_identity``),
refusing with AUTHENTICATION_FAILED; and the IKE SA's peer address follows
authenticated IKE messages and registrations (:meth:`IKEService.move_peer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from smobility import pki
from smobility.config import (
    ClientIKEConfig,
    HomeIKEConfig,
    IKEParameters,
    MobileNodeConfig,
    RelayPeerConfig,
)
from smobility.engines.ike import (
    IKESA,
    ChildSA,
    ChildSADown,
    ChildSARekeyed,
    ChildSAUp,
    ESPSuite,
    IKEConfig,
    IKEEngine,
    IKEEvent,
    IKEFailed,
    IKESADown,
    IKESARekeyed,
    IKESAUp,
    IKESuite,
    PeerConfig,
    Role,
    State,
    ts_host,
    ts_narrow,
)
from smobility.wire import ikev2
from smobility.wire.errors import WireError
from smobility.wire.ikev2 import Identity, Message, TrafficSelector

#: Checks a peer's certificate beyond the engine's own checks: why it fails, or None.
CertCheck = Callable[[x509.Certificate, Identity], "str | None"]
Send = Callable[[list[tuple[bytes, tuple[str, int]]]], None]


def make_identity(text: str, kind: str) -> Identity:
    """The wire identity of a configured one (kind: fqdn, rfc822, ipv4, dn)."""
    if kind == "ipv4":
        return Identity.ipv4(text)
    if kind == "rfc822":
        return Identity.rfc822(text)
    if kind == "dn":
        name = x509.Name.from_rfc4514_string(text.replace(", ", ","))
        return Identity.der_dn(name.public_bytes())
    return Identity.fqdn(text)


def identity_check_args(identity: Identity) -> dict[str, Any]:
    """The keyword arguments of :func:`smobility.pki.verify_peer_identity` for an IKE ID."""
    if identity.id_type == ikev2.ID_FQDN:
        return {"dns": identity.data.decode("ascii")}
    if identity.id_type == ikev2.ID_RFC822_ADDR:
        return {"email": identity.data.decode("ascii")}
    if identity.id_type == ikev2.ID_IPV4_ADDR:
        return {"ip": IPv4Address(identity.data)}
    if identity.id_type == ikev2.ID_DER_ASN1_DN:
        return {"subject": identity.data}
    raise pki.PKIError(f"identity type {identity.id_type} cannot be checked")


class CheckingIKEEngine(IKEEngine):
    """An :class:`IKEEngine` that also runs ``cert_check`` on a peer's certificate at IKE_AUTH.

    A failing check refuses the exchange exactly as the engine's own checks
    do (AUTHENTICATION_FAILED, nothing installed).
    """

    cert_check: CertCheck | None = None
    #: Responder: the inner address each IKE SA's peer was given by CP, by (SPIi, SPIr).
    assigned: dict[tuple[bytes, bytes], IPv4Address]
    #: Narrows the selectors a peer may have on its side, now (``None``: as configured).
    #: The home agent gives a relay only the home addresses registered through it.
    ts_policy: Callable[[PeerConfig], tuple[TrafficSelector, ...] | None] | None = None

    def _allowed_ts(
        self, peer: PeerConfig
    ) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
        local, remote = super()._allowed_ts(peer)
        if self.ts_policy is not None:
            now = self.ts_policy(peer)
            if now is not None:
                remote = ts_narrow(remote, now)
        return local, remote

    def _responder_child(  # type: ignore[override]
        self, sa: IKESA, msg: Message, peer: PeerConfig
    ) -> tuple[list[ikev2.Payload], ChildSA]:
        payloads, child = super()._responder_child(sa, msg, peer)
        for key in [k for k in self.assigned if k[1] not in self.sas]:
            del self.assigned[key]  # IKE SAs that died without an IKESADown
        for p in payloads:
            if isinstance(p, ikev2.CP) and p.cfg_type == ikev2.CFG_REPLY:
                for value in p.values(ikev2.CFG_INTERNAL_IP4_ADDRESS):
                    if len(value) == 4:
                        self.assigned[(sa.spi_i, sa.spi_r)] = IPv4Address(value)
        return payloads, child

    def _check_peer_auth(  # type: ignore[override]
        self, sa: IKESA, peer: PeerConfig, identity: Identity, auth: ikev2.Auth, msg: Message
    ) -> str | None:
        why: str | None = super()._check_peer_auth(sa, peer, identity, auth, msg)
        if why is not None or peer.auth != "pubkey" or self.cert_check is None:
            return why
        certs = [
            c for c in ikev2.find_all(msg.payloads, ikev2.Cert)
            if c.encoding == ikev2.CERT_X509_SIGNATURE
        ]  # fmt: skip
        if not certs:
            return f"{identity} sent no certificate"
        try:
            cert = x509.load_der_x509_certificate(certs[0].data)
        except ValueError:
            return f"{identity}: the certificate cannot be read"
        return self.cert_check(cert, identity)


class IKEService:
    """One IKE engine on the reactor: sending, one timer, events to the data plane."""

    log = Logger()

    def __init__(
        self,
        role: Role,
        config: IKEConfig,
        reactor: Any,
        *,
        send_nat_t: Send,
        send_plain: Send | None = None,
        cert_check: CertCheck | None = None,
        on_up: Callable[[ChildSA], None] | None = None,
        on_down: Callable[[ChildSA, str], None] | None = None,
        on_event: Callable[[IKEEvent], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.send_nat_t = send_nat_t
        self.send_plain = send_plain
        self.on_up = on_up
        self.on_down = on_down
        self.on_event_extra = on_event
        self.engine = CheckingIKEEngine(role, config, reactor, on_event=self._event)
        self._rekey_asked: set[int] = set()
        self.engine.cert_check = cert_check
        self.engine.assigned = {}
        self.timer: Any = None
        self.events: list[str] = []
        self.stopped = False

    # -- in and out ----------------------------------------------------------

    def receive(self, data: bytes, addr: tuple[str, int], local: tuple[str, int]) -> None:
        """One IKE message (no non-ESP marker) from ``addr``, read at ``local``."""
        if self.stopped:
            return
        sa = self._sa_of(data)
        before = self._progress(sa)
        self.engine.receive(data, addr, local)
        if (
            sa is not None
            and sa.state is State.ESTABLISHED
            and self._progress(sa) != before
            and sa.remote != addr
        ):
            # An authenticated message from a new address: the peer moved (or
            # its NAT mapping changed); answer and ask there from now on.
            self.log.info(
                "IKE: SA {spi} peer now at {host}:{port}", spi=sa.our_spi.hex(), host=addr[0],
                port=addr[1],
            )
            self._set_remote(sa, addr)
        self.flush()

    @staticmethod
    def _progress(sa: IKESA | None) -> tuple[object, ...] | None:
        # What only an authenticated message moves: a request taken (the
        # peer's message ID), a response taken (our outstanding request), the
        # time last heard.
        if sa is None:
            return None
        return (sa.last_heard, sa.next_peer_id, id(sa.outstanding))

    def _sa_of(self, data: bytes) -> IKESA | None:
        try:
            header = ikev2.decode_header(data)
        except WireError:
            return None
        ours = header.spi_r if self.engine.role is Role.RESPONDER else header.spi_i
        return self.engine.sas.get(ours)

    @staticmethod
    def _set_remote(sa: IKESA, addr: tuple[str, int]) -> None:
        # The engine has no call for this yet: its SA and its outstanding
        # request (retransmissions) both name the peer's address.
        sa.remote = addr
        if sa.outstanding is not None:
            sa.outstanding.remote = addr

    def flush(self) -> None:
        """Send what the engine queued and re-arm the timer."""
        nat_t: list[tuple[bytes, tuple[str, int]]] = []
        plain: list[tuple[bytes, tuple[str, int]]] = []
        for d in self.engine.datagrams_to_send():
            (nat_t if d.nat_t else plain).append((d.payload, d.remote))
        if nat_t:
            self.send_nat_t(nat_t)
        if plain:
            if self.send_plain is not None:
                self.send_plain(plain)
            else:
                self.log.warn("IKE: no socket on the plain IKE port; {n} dropped", n=len(plain))
        self._arm()

    def _arm(self) -> None:
        if self.stopped:
            return
        when = self.engine.get_timer()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if when is not None:
            delay = max(0.0, when - self.reactor.seconds())
            self.timer = self.reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.engine.handle_timer()
        self.flush()

    # -- control ---------------------------------------------------------------

    def initiate(
        self, remote: tuple[str, int], local: tuple[str, int] | None = None
    ) -> IKESA:
        """Start an IKE SA (initiator)."""
        sa = self.engine.initiate(remote, local=local)
        self.flush()
        return sa

    def sas_of(self, identity: Identity) -> list[IKESA]:
        """The live IKE SAs with this peer identity."""
        return [
            sa for sa in self.engine.sas.values()
            if sa.peer_id == identity and sa.state is State.ESTABLISHED
        ]  # fmt: skip

    def move_peer(self, identity: Identity, addr: tuple[str, int]) -> None:
        """The peer was authenticated at ``addr`` (a registration): its IKE SAs follow."""
        for sa in self.sas_of(identity):
            if sa.remote != addr:
                self.log.info(
                    "IKE: SA {spi} with {peer} follows the registration to {host}:{port}",
                    spi=sa.our_spi.hex(), peer=str(identity), host=addr[0], port=addr[1],
                )  # fmt: skip
                self._set_remote(sa, addr)

    def assigned_address(self, child: ChildSA) -> IPv4Address | None:
        """The inner address we gave the peer of ``child``'s IKE SA by CP, if any.

        Only a responder gives addresses: the one configured for the peer
        (:attr:`PeerConfig.internal_address`), in the CP reply of IKE_AUTH.
        """
        return self.engine.assigned.get(child.ike_spis)

    def rekey_exhausted(self, routes: Iterable[Any]) -> int:
        """Rekey every CHILD_SA whose outbound SA nears the end of its sequence space.

        ``routes`` are the tunnel engine's routes; returns how many rekeys
        were started (an SA already being rekeyed is not asked twice).
        """
        started = 0
        for route in routes:
            out = route.outbound
            if out.needs_rekey and out.spi not in self._rekey_asked:
                if self.engine.rekey_child(out.spi):
                    self._rekey_asked.add(out.spi)
                    started += 1
                    self.log.info(
                        "IKE: ESP SA 0x{spi:08x} near the end of its sequence space: rekeying",
                        spi=out.spi,
                    )
        if started:
            self.flush()
        return started

    def check_liveness(self) -> None:
        """An empty INFORMATIONAL on every established IKE SA (tells the peer our address)."""
        for sa in self.engine.established():
            if sa.outstanding is None:
                self.engine.check_liveness(sa)
        self.flush()

    def stop(self) -> None:
        """Delete the IKE SAs (best effort) and stop the timer."""
        for sa in list(self.engine.established()):
            self.engine.delete_ike_sa(sa)
        self.flush()
        self.stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def stats(self) -> dict[str, object]:
        """The engine's counters and SAs, and the last events."""
        out = self.engine.stats()
        out["events"] = self.events[-20:]
        return out

    # -- events ------------------------------------------------------------------

    def _event(self, event: IKEEvent) -> None:
        self.events.append(type(event).__name__)
        if isinstance(event, IKESAUp):
            self.log.info(
                "IKE: IKE SA {spi} up with {peer} at {host}:{port} ({suite})",
                spi=(event.spi_r if self.engine.role is Role.RESPONDER else event.spi_i).hex(),
                peer=str(event.peer_id), host=event.peer_addr[0], port=event.peer_addr[1],
                suite=str(event.suite),
            )  # fmt: skip
        elif isinstance(event, IKESARekeyed):
            # The CHILD_SAs move to the new IKE SA; so does what CP gave.
            given = self.engine.assigned.pop((event.old_spi_i, event.old_spi_r), None)
            if given is not None:
                self.engine.assigned[(event.spi_i, event.spi_r)] = given
        elif isinstance(event, IKESADown):
            self.engine.assigned.pop((event.spi_i, event.spi_r), None)
            self.log.info(
                "IKE: IKE SA with {peer} down ({why})", peer=str(event.peer_id), why=event.reason
            )
        elif isinstance(event, IKEFailed):
            self.log.warn(
                "IKE: exchange with {host} failed: {why}", host=event.peer_addr[0],
                why=event.reason,
            )
        elif isinstance(event, ChildSAUp):
            child = event.child
            self.log.info(
                "IKE: CHILD_SA with {peer} up: spi_in 0x{i:08x} spi_out 0x{o:08x} ({suite})",
                peer=str(child.peer_id), i=child.inbound_spi, o=child.outbound_spi,
                suite=str(child.suite),
            )  # fmt: skip
            # A rekey's successor goes in at ChildSARekeyed, where the data
            # plane switches to it and keeps the old inbound SA until deleted.
            if child.replaces is None and self.on_up is not None:
                self.on_up(child)
        elif isinstance(event, ChildSARekeyed):
            self.log.info(
                "IKE: CHILD_SA 0x{old:08x} rekeyed as 0x{new:08x}",
                old=event.old.inbound_spi, new=event.new.inbound_spi,
            )
            if self.on_up is not None:
                self.on_up(event.new)
        elif isinstance(event, ChildSADown):
            self.log.info(
                "IKE: CHILD_SA 0x{i:08x} with {peer} down ({why})",
                i=event.child.inbound_spi, peer=str(event.child.peer_id), why=event.reason,
            )
            if self.on_down is not None:
                self.on_down(event.child, event.reason)
        if self.on_event_extra is not None:
            self.on_event_extra(event)


class IKEPort(DatagramProtocol):
    """The plain IKE port (500): datagrams straight into the service."""

    def __init__(self, service: IKEService, local: tuple[str, int]) -> None:
        self.service = service
        self.local = local

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        self.service.receive(datagram, (addr[0], addr[1]), self.local)

    def send_all(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Send from the plain IKE port."""
        if self.transport is None:
            return
        for data, addr in datagrams:
            try:
                self.transport.write(data, addr)
            except OSError as e:
                self.service.log.warn("IKE: cannot send to {host}: {why}", host=addr[0], why=e)


# -- configuration -> engine --------------------------------------------------------


def ike_suites(params: IKEParameters) -> dict[str, Any]:
    """The IKEConfig keyword arguments of configured IKE parameters (suites, lifetimes, DPD)."""
    return {
        "ike_suites": tuple(IKESuite.parse(p) for p in params.proposals),
        "esp_suites": tuple(ESPSuite.parse(p) for p in params.esp_proposals),
        "ike_rekey_time": float(params.lifetime) or None,
        "child_rekey_time": float(params.child_lifetime) or None,
        "rekey_jitter": 0.1,
        "dpd_interval": float(params.liveness) or None,
    }


def load_credentials(
    cert: Path | None, key: Path | None
) -> tuple[x509.Certificate | None, Any]:
    """Our certificate and private key from PEM files (``None``, ``None`` if not given)."""
    if cert is None or key is None:
        return None, None
    try:
        certificate = pki.load_certificate(cert.read_bytes())
        private_key = pki.load_private_key(key.read_bytes())
    except OSError as e:
        raise pki.PKIError(f"cannot read {e.filename}: {e.strerror}") from None
    return certificate, private_key


def home_ike_config(
    ike: HomeIKEConfig,
    nodes: tuple[MobileNodeConfig, ...],
    *,
    listen: str,
    nat_t_port: int,
    trust_anchors: tuple[x509.Certificate, ...],
    relays: tuple[RelayPeerConfig, ...] = (),
) -> tuple[IKEConfig, dict[str, str]]:
    """The responder's engine settings, and the node name of each peer identity (str)."""
    peers: list[PeerConfig] = []
    names: dict[str, str] = {}
    for n in nodes:
        if n.ike is None:
            continue
        identity = make_identity(n.ike.identity, n.ike.identity_kind)
        names[str(identity)] = n.name
        peers.append(
            PeerConfig(
                identity, n.ike.psk, internal_address=n.home_address,
                remote_ts=(ts_host(n.home_address),), auth=n.ike.auth, dns=ike.dns,
            )
        )  # fmt: skip
    # Terminating relays: each may key SAs for the home addresses registered
    # through it (narrowed further, at negotiation, by the data plane).
    all_homes = tuple(ts_host(n.home_address) for n in nodes)
    for r in relays:
        if r.ike_identity is None:
            continue
        identity = make_identity(r.ike_identity, r.ike_identity_kind)
        peers.append(
            PeerConfig(identity, r.psk, remote_ts=all_homes, auth=r.ike_auth)
        )
    cert, key = load_credentials(ike.cert, ike.key)
    config = IKEConfig(
        local_id=make_identity(ike.identity, ike.identity_kind),
        peers=peers,
        local_host=listen,
        ike_port=ike.port or ikev2.IKE_PORT,
        nat_t_port=nat_t_port,
        certificate=cert,
        private_key=key,
        trust_anchors=trust_anchors,
        **ike_suites(ike.params),
    )
    return config, names


def client_ike_config(
    ike: ClientIKEConfig, *, local_port: int, ha_port: int, clock: Any
) -> tuple[IKEConfig, CertCheck | None]:
    """The initiator's engine settings, and the home agent's identity check for certificates."""
    ha_id = make_identity(ike.home_agent_identity, ike.home_agent_identity_kind)
    peer = PeerConfig(ha_id, ike.psk, auth=ike.auth, send_idr=True)
    cert, key = load_credentials(ike.cert, ike.key)
    anchors: tuple[x509.Certificate, ...] = ()
    check: CertCheck | None = None
    if ike.auth == "pubkey":
        assert ike.ca_file is not None
        ca = load_ca(ike.ca_file)
        anchors = (ca,)
        # The engine checked that the CA issued it and that it names the ID
        # the home agent sent; here: chain, usage and the name we expect.
        check = ca_cert_check(ca, "server", clock, expected=ha_id, what="the home agent")

    config = IKEConfig(
        local_id=make_identity(ike.identity, ike.identity_kind),
        peers=[peer],
        nat_t_port=local_port or 4500,
        peer_nat_t_port=ha_port,
        certificate=cert,
        private_key=key,
        trust_anchors=anchors,
        **ike_suites(ike.params),
    )
    return config, check


def load_ca(path: Path) -> x509.Certificate:
    """A CA certificate from a PEM file.

    @raise pki.PKIError: it cannot be read or parsed (one sentence, naming the file).
    """
    try:
        return pki.load_certificate(path.read_bytes())
    except OSError as e:
        raise pki.PKIError(f"cannot read {path}: {e.strerror}") from None


def ca_cert_check(
    ca: x509.Certificate,
    usage: Literal["server", "client"],
    clock: Any,
    *,
    expected: Identity | None = None,
    what: str | None = None,
) -> CertCheck:
    """A peer certificate's check: chain to ``ca``, key usage ``usage``, and its name.

    The name checked is ``expected`` (the identity we want this peer to
    have) or, without it, the identity the peer claimed; ``what`` names the
    peer in the reason.
    """

    def check(cert: x509.Certificate, identity: Identity) -> str | None:
        want = expected if expected is not None else identity
        try:
            pki.verify_chain(cert, ca, at=clock.seconds(), usage=usage)
            pki.verify_peer_identity(cert, **identity_check_args(want))
        except pki.PKIError as e:
            return f"the certificate of {what or want}: {e}"
        return None

    return check


def home_cert_check(store: Any, clock: Any) -> CertCheck:
    """The home agent's check of a client certificate: chain, usage, revocation, identity."""

    def check(cert: x509.Certificate, identity: Identity) -> str | None:
        try:
            store.verify(cert, at=clock.seconds(), usage="client", **identity_check_args(identity))
        except pki.PKIError as e:
            return str(e)
        return None

    return check


__all__ = [
    "CheckingIKEEngine",
    "IKEPort",
    "IKEService",
    "client_ike_config",
    "home_cert_check",
    "home_ike_config",
    "ca_cert_check",
    "identity_check_args",
    "load_ca",
    "ike_suites",
    "make_identity",
]
