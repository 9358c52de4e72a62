# -*- test-case-name: tests.test_gateway -*-
"""The client's way home through an IPsec VPN gateway (the seed's figure 7, RFC 5265 style).

A home network may be reachable only through an IPsec gateway at its
perimeter (a stock strongSwan, say).  The client then runs IKEv2 with that
gateway as a road warrior: it authenticates (shared key, or a certificate
from our CA), asks for a virtual IP by the configuration payload, and gets a
tunnel-mode CHILD_SA whose selectors reach the home LAN.  Inside that
tunnel it sends its ordinary UDP datagrams, as RFC 5265 has Mobile IPv4 run
inside an IPsec VPN: its registrations to the home agent's inside address
(port 434) and its own ESP-in-UDP and IKE to the home agent (port 4500)::

    client                       gateway (libipsec)          home LAN
    UDP(sport -> ha:dport)  -->  IPv4(vip -> ha) UDP ...  -->  home agent
       sealed: ESP(IPv4(vip -> ha) + UDP + payload) in UDP to gateway:4500

:class:`GatewayTunnel` is that path: one UDP socket (port-4500 semantics:
ESP, and IKE behind the non-ESP marker, RFC 3948), one
:class:`~smobility.services.ike_service.IKEService` initiator, and a
:class:`~smobility.engines.tunnel.TunnelEngine` with one default route for
the CHILD_SA.  :meth:`GatewayTunnel.send_udp` wraps a payload in IPv4 (from
the virtual IP) and UDP (:func:`smobility.wire.ipip.udp_packet`), seals it
and sends it to the gateway; what comes back is opened, checked (addressed
to the virtual IP, from inside the CHILD_SA's selectors) and handed to
``on_datagrams`` as ``(dport, payload, (src, sport))``.

States (:attr:`GatewayTunnel.state`, reported to ``on_state(state, vip,
reason)``): ``"down"`` (stopped, or waiting to retry), ``"connecting"``,
``"up"`` (with the virtual IP), ``"failed"`` (authentication refused, by the
gateway or by us: retried only every ``retry_max`` seconds).  Lost tunnels
(the gateway deleted the SA, stopped answering liveness checks, refused the
CHILD_SA) are set up again with exponential backoff.  After a network change
:meth:`GatewayTunnel.restart` makes a new IKE SA: the old one's path is gone
(no MOBIKE here), and its INITIAL_CONTACT makes the gateway drop the old one.

Sizes: our inner packets carry DF (:func:`~smobility.wire.ipip.udp_packet`)
and go whole; the kernel fragments the outer datagram to the gateway if it
must.  The other way, strongSwan's kernel-libipsec has a TUN device of MTU
1400: a datagram from the home LAN larger than that reaches us in IPv4
fragments, each in its own ESP packet, which :class:`Reassembly` puts
together again (seen: the home host's kernel learns the 1400 from the
gateway's ICMP "fragmentation needed", so the first large datagram after a
change is lost and the later ones come in fragments).  A datagram larger
than the home LAN's MTU (1472 bytes of payload on Ethernet) is refused
inside with ICMP, counted as ``inner_icmp``.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from smobility.engines.ike import (
    ChildSA,
    ESPSuite,
    IKEConfig,
    IKEEvent,
    IKEFailed,
    IKESADown,
    IKESAUp,
    IKESuite,
    PeerConfig,
    Role,
)
from smobility.engines.tunnel import TunnelEngine
from smobility.services.dataplane import child_sas
from smobility.services.ike_service import (
    CertCheck,
    IKEService,
    ca_cert_check,
    load_ca,
    load_credentials,
    make_identity,
)
from smobility.wire import ikev2
from smobility.wire.errors import WireError
from smobility.wire.esp import NAT_KEEPALIVE, NAT_T_PORT
from smobility.wire.ikev2 import TrafficSelector
from smobility.wire.ipip import parse_udp_packet, udp_packet
from smobility.wire.ipv4 import check_header, checksum

#: ``on_datagrams``: inner UDP datagrams that arrived, as (dport, payload, (src, sport)).
OnDatagrams = Callable[[list[tuple[int, bytes, tuple[str, int]]]], None]
#: ``on_state``: (state, virtual IP when up, reason when down or failed).
OnState = Callable[[str, "IPv4Address | None", "str | None"], None]

_NODE = "gateway"
_PROTO_UDP = 17
_PROTO_ICMP = 1
# The tunnel engine's MTU: inner packets are never refused for their size
# here (the kernel fragments the outer UDP datagram if it must).
_NO_MTU_LIMIT = 0xFFFF

GATEWAY_IKE_SUITES = (
    "aes128gcm16-prfsha256-ecp256",
    "aes256gcm16-prfsha384-x25519",
    "aes128gcm16-prfsha256-x25519",
)
"""The IKE proposals :func:`gateway_ike_config` offers by default."""


def _allows(selectors: Sequence[TrafficSelector], addr: IPv4Address, port: int) -> bool:
    """Whether a UDP datagram to/from ``addr``:``port`` is inside one of ``selectors``."""
    for ts in selectors:
        if (
            isinstance(ts.start, IPv4Address)
            and isinstance(ts.end, IPv4Address)
            and ts.start <= addr <= ts.end
            and ts.ip_protocol in (0, _PROTO_UDP)
            and ts.start_port <= port <= ts.end_port
        ):
            return True
    return False


_MF = 0x2000
_OFFSET = 0x1FFF
_U16 = struct.Struct("!H")
_MAX_IPV4 = 0xFFFF


@dataclass
class _Pending:
    """The fragments of one datagram seen so far."""

    first_seen: float
    parts: dict[int, bytes] = field(default_factory=dict)
    header: bytes | None = None
    total: int | None = None
    size: int = 0


class Reassembly:
    """IPv4 reassembly (RFC 791 section 3.2) of the inner packets the gateway sends us.

    The gateway's userspace ESP (strongSwan's kernel-libipsec) has a TUN
    device of MTU 1400: a datagram from the home LAN that is larger reaches
    us in IPv4 fragments, inside separate ESP packets.  Fragments are kept
    per (source, destination, protocol, identification) for at most
    ``timeout`` seconds and ``max_pending`` datagrams at a time (the oldest
    is dropped for a new one); overlapping fragments drop the whole datagram
    (as RFC 5722 has IPv6 do: no overlap games); a duplicate is ignored.
    Drops are counted in :attr:`counters`.  Sans I/O: ``clock`` only gives
    ``seconds()``.
    """

    def __init__(self, clock: Any, *, timeout: float = 15.0, max_pending: int = 32) -> None:
        self.clock = clock
        self.timeout = timeout
        self.max_pending = max_pending
        self.pending: dict[tuple[bytes, bytes, int, int], _Pending] = {}
        self.counters: Counter[str] = Counter()

    def push(self, packet: bytes) -> bytes | None:
        """One inner packet: the whole datagram it is or completes, else ``None`` (kept).

        :raises WireError: a broken IPv4 header, or a fragment that cannot be
            one (a middle fragment not a multiple of 8 bytes, past 65535 bytes).
        """
        hlen = check_header(packet)
        flags_offset = (packet[6] << 8) | packet[7]
        more = bool(flags_offset & _MF)
        offset = (flags_offset & _OFFSET) * 8
        if not more and offset == 0:
            return packet
        data = packet[hlen:]
        if more and (not data or len(data) % 8):
            raise WireError(f"a fragment of {len(data)} bytes with more to follow is not 8-aligned")
        if offset + len(data) + hlen > _MAX_IPV4:
            raise WireError(f"a fragment at offset {offset} runs past 65535 bytes")
        self.counters["fragments"] += 1
        now = self.clock.seconds()
        self._expire(now)
        ident = (packet[4] << 8) | packet[5]
        key = (packet[12:16], packet[16:20], packet[9], ident)
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= self.max_pending:
                oldest = min(self.pending, key=lambda k: self.pending[k].first_seen)
                del self.pending[oldest]
                self.counters["evicted"] += 1
            entry = self.pending[key] = _Pending(now)
        end = offset + len(data)
        for start, part in entry.parts.items():
            if start < end and offset < start + len(part):
                if start == offset and part == data:
                    self.counters["duplicates"] += 1
                    return None
                del self.pending[key]
                self.counters["overlaps"] += 1
                return None
        if not more:
            if entry.total is not None or any(s + len(p) > end for s, p in entry.parts.items()):
                del self.pending[key]
                self.counters["inconsistent"] += 1
                return None
            entry.total = end
        elif entry.total is not None and end > entry.total:
            del self.pending[key]
            self.counters["inconsistent"] += 1
            return None
        if offset == 0:
            entry.header = packet[:hlen]
        entry.parts[offset] = data
        entry.size += len(data)
        if entry.total is None or entry.header is None or entry.size != entry.total:
            return None
        # No overlaps and every byte below the end: the holes are all filled.
        del self.pending[key]
        header = bytearray(entry.header)
        if len(header) + entry.total > _MAX_IPV4:
            self.counters["too_big"] += 1
            return None
        header[2:4] = _U16.pack(len(header) + entry.total)
        header[6:8] = b"\x00\x00"
        header[10:12] = b"\x00\x00"
        header[10:12] = _U16.pack(checksum(bytes(header)))
        self.counters["reassembled"] += 1
        return bytes(header) + b"".join(entry.parts[k] for k in sorted(entry.parts))

    def _expire(self, now: float) -> None:
        for key in [k for k, e in self.pending.items() if now - e.first_seen > self.timeout]:
            del self.pending[key]
            self.counters["timeouts"] += 1


def gateway_ike_config(
    *,
    identity: str,
    gateway_identity: str,
    clock: Any,
    psk: bytes = b"",
    cert: Path | None = None,
    key: Path | None = None,
    ca_file: Path | None = None,
    identity_kind: str = "fqdn",
    gateway_identity_kind: str = "fqdn",
    proposals: Sequence[str] = GATEWAY_IKE_SUITES,
    esp_proposals: Sequence[str] = ("aes128gcm16", "aes256gcm16"),
    liveness: float | None = 30.0,
) -> tuple[IKEConfig, CertCheck | None]:
    """The initiator's engine settings for a VPN gateway, and its certificate check.

    A shared key when ``psk`` is given, else certificates: ours (``cert``,
    ``key``) and the CA (``ca_file``) the gateway's must chain to, with
    ``serverAuth`` and ``gateway_identity`` among its subjectAltNames.  We
    ask for a virtual IP (CP) and offer the widest selectors; the gateway
    narrows them to the virtual IP and its home network.  ``liveness``:
    seconds of silence before an empty INFORMATIONAL checks the gateway
    (``None``: never).

    :raises smobility.pki.PKIError: a certificate, key or CA file cannot be read.
    :raises ValueError: neither a shared key nor a certificate, key and CA.
    """
    gw_id = make_identity(gateway_identity, gateway_identity_kind)
    auth = "psk" if psk else "pubkey"
    if auth == "pubkey" and (cert is None or key is None or ca_file is None):
        raise ValueError("the gateway needs a shared key, or our certificate, key and the CA")
    peer = PeerConfig(gw_id, psk, auth=auth, send_idr=True, request_address=True)
    certificate, private_key = load_credentials(cert, key)
    anchors: tuple[x509.Certificate, ...] = ()
    check: CertCheck | None = None
    if auth == "pubkey":
        assert ca_file is not None
        ca = load_ca(ca_file)
        anchors = (ca,)
        check = ca_cert_check(ca, "server", clock, expected=gw_id, what="the gateway")

    config = IKEConfig(
        local_id=make_identity(identity, identity_kind),
        peers=[peer],
        ike_suites=tuple(IKESuite.parse(p) for p in proposals),
        esp_suites=tuple(ESPSuite.parse(p) for p in esp_proposals),
        certificate=certificate,
        private_key=private_key,
        trust_anchors=anchors,
        dpd_interval=liveness,
    )
    return config, check


class _Socket(DatagramProtocol):
    """The tunnel's UDP socket: every datagram goes to the tunnel."""

    def __init__(self, owner: GatewayTunnel) -> None:
        self.owner = owner

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        self.owner._received(datagram, (addr[0], addr[1]))


class GatewayTunnel:
    """The client's IKEv2/ESP-in-UDP tunnel to an IPsec VPN gateway, carrying UDP datagrams.

    :param gateway: the gateway's IPv4 address; ``gateway_port`` its NAT-T port.
    :param ike_config: our IKE settings (one peer: the gateway; see
        :func:`gateway_ike_config`); its NAT-T ports are set here.
    :param cert_check: the extra check of the gateway's certificate, if any.
    :param on_datagrams: gets every inner UDP datagram that arrived for the
        virtual IP, as ``[(dport, payload, (src, sport))]``.
    :param on_state: gets ``(state, virtual IP or None, reason or None)`` at
        every change of :attr:`state`.
    :param local_port: our UDP port (0: any); ``local_address`` the address to bind.
    :param keepalive: seconds between NAT keepalives while up (``None``: none).
    :param retry_initial: first wait before setting a lost tunnel up again,
        doubled up to ``retry_max`` (also the wait after a refused authentication).
    """

    log = Logger()

    def __init__(
        self,
        *,
        gateway: str,
        ike_config: IKEConfig,
        reactor: Any,
        on_datagrams: OnDatagrams,
        on_state: OnState | None = None,
        cert_check: CertCheck | None = None,
        gateway_port: int = NAT_T_PORT,
        local_port: int = 0,
        local_address: str = "0.0.0.0",  # noqa: S104 - the client follows every uplink
        keepalive: float | None = 20.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        self.gateway = str(IPv4Address(gateway))
        self.gateway_port = gateway_port
        if not ike_config.peers:
            raise ValueError("the IKE settings name no peer (the gateway)")
        if not 0 < retry_initial <= retry_max:
            raise ValueError("retry delays must be positive, initial <= max")
        self.ike_config = ike_config
        self.cert_check = cert_check
        self.reactor = reactor
        self.on_datagrams = on_datagrams
        self.on_state = on_state
        self.local_port = local_port
        self.local_address = local_address
        self.keepalive = keepalive
        self.retry_initial = retry_initial
        self.retry_max = retry_max

        self.state = "down"
        """``down``, ``connecting``, ``up`` or ``failed``."""
        self.virtual_ip: IPv4Address | None = None
        """Our address inside the tunnel (from the gateway's pool), while up."""
        self.child: ChildSA | None = None
        """The CHILD_SA in use, while up."""
        self.last_error: str | None = None
        """The sentence of the last problem (``None`` until there is one)."""
        self.counters: Counter[str] = Counter()
        """datagrams and bytes each way, drops by reason, connects, failures, restarts."""
        self.ike: IKEService | None = None
        self.tunnel = TunnelEngine(
            clock=reactor, mtu=_NO_MTU_LIMIT, local_inner=IPv4Address(0), mss_clamp=False
        )
        self.reassembly = Reassembly(reactor)
        self.port: Any = None
        self._protocol = _Socket(self)
        self._running = False
        self._lost = False
        self._retry: Any = None
        self._delay = retry_initial
        self._keepalive: LoopingCall | None = None

    # -- control ---------------------------------------------------------------

    def start(self) -> None:
        """Open the UDP socket (if not open) and set the tunnel up; keep it up until :meth:`stop`.

        The socket is made in the network namespace the caller is in.

        :raises CannotListenError: the local port is taken.
        """
        if self._running:
            return
        if self.port is None:
            self.port = self.reactor.listenUDP(
                self.local_port, self._protocol, interface=self.local_address
            )
        self._running = True
        self._delay = self.retry_initial
        self.log.info(
            "gateway tunnel: IKE with {gw}:{port} from UDP port {local}",
            gw=self.gateway, port=self.gateway_port, local=self.bound_port,
        )  # fmt: skip
        self._connect()

    def stop(self) -> Deferred[None]:
        """Delete the IKE SA (best effort), close the socket, report ``down``.

        The Deferred fires once the socket is closed.
        """
        self._running = False
        self._cancel_retry()
        self._drop_ike()
        self._withdraw()
        self._set_state("down", "stopped")
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        d = port.stopListening()
        return d if isinstance(d, Deferred) else succeed(None)

    def restart(self) -> None:
        """A new IKE SA at once (after a network change: the old one's path is gone).

        The old IKE SA is deleted best effort; the new one's INITIAL_CONTACT
        tells the gateway to drop whatever it still holds for us.  Starts
        the tunnel if it was stopped.
        """
        if not self._running:
            self.start()
            return
        self.counters["restarts"] += 1
        self._delay = self.retry_initial
        self._connect()

    @property
    def bound_port(self) -> int:
        """Our UDP port (the one the OS gave, with ``local_port`` 0), or 0 while closed."""
        if self.port is None:
            return 0
        port: int = self.port.getHost().port
        return port

    # -- data ------------------------------------------------------------------

    def send_udp(self, payload: bytes, sport: int, dst: str | IPv4Address, dport: int) -> None:
        """Send one UDP datagram from the virtual IP's ``sport`` to ``dst``:``dport`` inside.

        Dropped and counted while the tunnel is not up, when ``dst`` is
        outside the CHILD_SA's selectors, or when it cannot be built.
        """
        child, vip = self.child, self.virtual_ip
        if self.state != "up" or child is None or vip is None:
            self.counters["dropped_not_up"] += 1
            return
        try:
            target = IPv4Address(dst)
            packet = udp_packet(vip.packed, sport, target.packed, dport, payload)
        except (ValueError, WireError):
            self.counters["dropped_unbuildable"] += 1
            return
        if not _allows(child.remote_ts, target, dport):
            self.counters["dropped_outside_ts"] += 1
            return
        out: list[tuple[bytes, tuple[str, int]]] = []
        self.tunnel.from_tun([packet], out, [])
        if not out:
            self.counters["dropped_by_tunnel"] += 1
            return
        self.counters["udp_out"] += 1
        self.counters["bytes_out"] += len(payload)
        self._send(out)

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counters["datagrams_in"] += 1
        inner = self.tunnel.from_udp(data, addr)  # IKE goes to on_ike
        if inner is None:
            return
        vip, child = self.virtual_ip, self.child
        if vip is None or child is None or inner[16:20] != vip.packed:
            self.counters["inner_wrong_destination"] += 1
            return
        try:
            whole = self.reassembly.push(inner)
            if whole is None:
                return  # a fragment, kept
            src, sport, dst, dport, payload = parse_udp_packet(whole)
        except WireError:
            # ICMP from inside (say, "fragmentation needed" for a datagram
            # too large for the home LAN) is counted apart.
            icmp = len(inner) > 9 and inner[9] == _PROTO_ICMP
            self.counters["inner_icmp" if icmp else "inner_not_udp"] += 1
            return
        source = IPv4Address(src)
        if not _allows(child.remote_ts, source, sport):
            self.counters["inner_outside_ts"] += 1
            return
        self.counters["udp_in"] += 1
        self.counters["bytes_in"] += len(payload)
        self.on_datagrams([(dport, payload, (str(source), sport))])

    def _send(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Send from our socket (ESP, IKE with its marker, keepalives)."""
        if self.port is None:
            self.counters["dropped_closed"] += len(datagrams)
            return
        for data, addr in datagrams:
            try:
                self.port.write(data, addr)
            except OSError as e:
                self.counters["send_errors"] += 1
                self.log.debug("gateway tunnel: cannot send to {host}: {why}", host=addr[0], why=e)

    # -- IKE -------------------------------------------------------------------

    def _connect(self) -> None:
        """Drop any IKE SA we have and initiate a new one."""
        self._cancel_retry()
        self._drop_ike()
        self._withdraw()
        self._lost = False
        local_port = self.bound_port or self.local_port or NAT_T_PORT
        # Everything goes through our one socket, as on port 4500: IKE_SA_INIT
        # too (RFC 7296 section 2.23 allows starting there), behind the marker.
        config = replace(
            self.ike_config, nat_t_port=local_port, peer_nat_t_port=self.gateway_port
        )
        ike = IKEService(
            Role.INITIATOR, config, self.reactor, send_nat_t=self._send, send_plain=self._send,
            cert_check=self.cert_check, on_up=self._child_up, on_down=self._child_down,
            on_event=self._event,
        )  # fmt: skip
        self.ike = ike
        local = (self.local_address, local_port)
        self.tunnel.on_ike = lambda message, addr: ike.receive(message, addr, local)
        self.counters["connects"] += 1
        self._set_state("connecting", None)
        ike.initiate((self.gateway, self.gateway_port), local=local)

    def _drop_ike(self) -> None:
        """Forget the IKE service: Delete its SAs (best effort), stop its timer, unhook it."""
        ike, self.ike = self.ike, None
        if ike is None:
            return
        ike.on_up = ike.on_down = ike.on_event_extra = None
        self.tunnel.on_ike = None
        ike.stop()

    def _event(self, event: IKEEvent) -> None:
        if isinstance(event, IKESAUp):
            self.log.info(
                "gateway tunnel: IKE SA up with {peer} ({suite})",
                peer=str(event.peer_id), suite=str(event.suite),
            )  # fmt: skip
        elif isinstance(event, IKEFailed):
            if event.rekey:
                return  # the old SA goes on; the engine tries again
            if event.notify == ikev2.N_AUTHENTICATION_FAILED:
                why = (
                    f"authentication with the gateway {self.gateway} failed: {event.reason}"
                    " (check the shared key, the certificates and the identities)"
                )
                self._lose(why, permanent=True)
            elif event.child_only:
                self._lose(f"the gateway {self.gateway} refused the tunnel: {event.reason}")
            else:
                self._lose(f"IKE with the gateway {self.gateway} failed: {event.reason}")
        elif isinstance(event, IKESADown):
            self._lose(f"the IKE SA with the gateway {self.gateway} ended ({event.reason})")

    def _child_up(self, child: ChildSA) -> None:
        inbound, outbound = child_sas(child)
        if child.replaces is not None and _NODE in self.tunnel.by_node:
            # A rekey: make before break (the old inbound SA stays until deleted).
            self.tunnel.rekey(_NODE, inbound, outbound)
            self.child = child
            self.counters["child_rekeys"] += 1
            return
        vip = child.internal_address
        if vip is None:
            self._lose(f"the gateway {self.gateway} gave no virtual IP (no CP reply)")
            return
        self.tunnel.install(
            _NODE, None, inbound, outbound, (self.gateway, self.gateway_port), {self.gateway}
        )
        self.tunnel.local_inner = vip.packed
        self.child, self.virtual_ip = child, vip
        self._delay = self.retry_initial
        self.log.info(
            "gateway tunnel up: virtual IP {vip}, inside {ts} (spi_in 0x{i:08x} spi_out 0x{o:08x})",
            vip=vip, ts=", ".join(map(str, child.remote_ts)), i=child.inbound_spi,
            o=child.outbound_spi,
        )  # fmt: skip
        self._start_keepalive()
        self._set_state("up", None)

    def _child_down(self, child: ChildSA, reason: str) -> None:
        self.tunnel.retire(_NODE, child.inbound_spi)
        route = self.tunnel.by_node.get(_NODE)
        if route is not None and route.inbound.spi == child.inbound_spi:
            self._lose(f"the tunnel's CHILD_SA with the gateway {self.gateway} ended ({reason})")

    def _lose(self, why: str, *, permanent: bool = False) -> None:
        """The tunnel is gone or could not be made: report, and try again later."""
        if not self._running or self._lost:
            return
        self._lost = True
        self.last_error = why
        self.counters["failures"] += 1
        self._withdraw()
        if permanent:
            delay = self.retry_max
        else:
            delay = self._delay
            self._delay = min(self._delay * 2, self.retry_max)
        self.log.warn("gateway tunnel: {why}; trying again in {s:.0f} s", why=why, s=delay)
        self._set_state("failed" if permanent else "down", why)
        self._cancel_retry()
        self._retry = self.reactor.callLater(delay, self._connect)
        # Not from inside the engine's own call: it is still at work.
        self.reactor.callLater(0, self._drop_lost, self.ike)

    def _drop_lost(self, ike: IKEService | None) -> None:
        if ike is not None and ike is self.ike:
            self._drop_ike()

    def _withdraw(self) -> None:
        self._stop_keepalive()
        self.tunnel.remove(_NODE)
        self.child = None
        self.virtual_ip = None

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _set_state(self, state: str, reason: str | None) -> None:
        if state == self.state:
            return
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state, self.virtual_ip if state == "up" else None, reason)
            except Exception:
                self.log.failure("gateway tunnel: on_state failed")

    def _start_keepalive(self) -> None:
        self._stop_keepalive()
        if self.keepalive is None:
            return
        call = LoopingCall(self._send, [(NAT_KEEPALIVE, (self.gateway, self.gateway_port))])
        call.clock = self.reactor
        call.start(self.keepalive, now=False)
        self._keepalive = call

    def _stop_keepalive(self) -> None:
        call, self._keepalive = self._keepalive, None
        if call is not None and call.running:
            call.stop()

    # -- status ----------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """State, virtual IP, counters, the tunnel engine's and the IKE engine's figures."""
        child = self.child
        return {
            "state": self.state,
            "gateway": f"{self.gateway}:{self.gateway_port}",
            "local_port": self.bound_port,
            "virtual_ip": str(self.virtual_ip) if self.virtual_ip is not None else None,
            "inside": [str(ts) for ts in child.remote_ts] if child is not None else [],
            "last_error": self.last_error,
            "counters": dict(self.counters),
            "tunnel": self.tunnel.stats(),
            "reassembly": dict(self.reassembly.counters),
            "ike": self.ike.stats() if self.ike is not None else None,
        }


__all__ = ["GATEWAY_IKE_SUITES", "GatewayTunnel", "Reassembly", "gateway_ike_config"]
