# -*- test-case-name: tests.test_ipip -*-
"""
A "virtual UDP" between the relay and the home agent, carried IP in IP (RFC 2003).

The home firewall admits only IP protocol 4 from the relay, and this kernel
has no ipip module, so the two hosts exchange protocol-4 packets on a raw
socket (C{socket(AF_INET, SOCK_RAW, 4)}) in userspace. Each packet carries
one UDP datagram (see L{smobility.wire.ipip}): registration on 434, IKE and
ESP-in-UDP on 4500.

 - Sending: L{IPIPSocket.send} builds the inner IPv4+UDP packet (source: our
   local address) and C{sendto}s it to the peer. Without C{IP_HDRINCL} the
   kernel writes the outer header itself, with protocol 4 and our bound
   address as its source. A datagram too large for the path is fragmented
   by the kernel (outer header only) and reassembled by the peer's kernel
   before its raw socket sees it.
 - Receiving: the kernel gives every raw socket of protocol 4 a copy of each
   protocol-4 packet addressed to this host, outer header included (the
   socket is bound to the local address, so only packets to that address).
   A packet counts only when its outer source is a configured peer, the
   inner packet is one valid UDP datagram, its inner source is the outer
   source (no spoofing of another peer through a trusted one) and its inner
   destination is our local address.

Once a raw socket of protocol 4 is open the kernel stops answering
protocol-4 packets with ICMP protocol unreachable (type 3 code 2); with
none open it does. Nothing is logged per packet: L{IPIPSocket.counters}
counts, and packets from unknown sources are named in at most one warning
per L{WARN_INTERVAL} seconds.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from smobility.adapters.reader import SocketReader
from smobility.wire.errors import WireError
from smobility.wire.ipip import PROTO_IPIP, decapsulate, parse_udp_packet, udp_packet

RECV_SIZE = 65535
"""Receive buffer per packet: any IPv4 packet (the kernel reassembles fragments first)."""

DEFAULT_BUFFER = 4 * 1024 * 1024
"""Socket buffers asked for: bursts of ESP at a Gbit/s."""

WARN_INTERVAL = 10.0
"""Seconds between two warnings about protocol-4 packets from unknown sources."""

Address = tuple[str, int]
Received = tuple[int, bytes, Address]
"""One datagram handed to C{on_datagrams}: (destination port, payload, (source, source port))."""
Outgoing = tuple[bytes, int, str, int]
"""One datagram for L{IPIPSocket.send_many}: (payload, sport, destination, dport)."""

_OUTER_HEADER = 20  # what the kernel adds on send; bytes_in/out count whole packets

# errnos after which on_unreachable hears about the destination.
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})


class IPIPError(Exception):
    """The raw socket could not be opened; C{socket_error} is the C{OSError} behind it."""

    def __init__(self, message: str, socket_error: OSError) -> None:
        super().__init__(message)
        self.socket_error = socket_error


def _packed(address: str, what: str) -> bytes:
    """The 4 bytes of a dotted-quad IPv4 address, or a ValueError naming C{what}."""
    try:
        return socket.inet_pton(socket.AF_INET, address)
    except (OSError, TypeError):
        raise ValueError(f"{what} {address!r} is not an IPv4 address") from None


def _raw_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_IPIP)


@implementer(IReadDescriptor)
class IPIPSocket(SocketReader):
    """
    UDP datagrams to and from known peers, IP in IP over a raw socket.

    C{on_datagrams(list)} gets every accepted datagram of one reactor
    wake-up (at most C{max_batch} packets read) as C{(dport, payload,
    (source, sport))}. L{send} and L{send_many} never raise on a failed
    send: failures are counted, and C{on_unreachable(dst, errno)} hears of
    EHOSTUNREACH and ENETUNREACH. C{bind=False} leaves the socket unbound
    (it then reads protocol-4 packets to every local address, and the
    kernel picks the outer source by route, which peers may refuse as
    spoofed unless it is C{local}). C{make_socket} is for tests.
    """

    log = Logger()

    def __init__(
        self,
        *,
        local: str,
        peers: Iterable[str],
        on_datagrams: Callable[[list[Received]], None],
        reactor: Any = None,
        max_batch: int = 64,
        on_unreachable: Callable[[str, int], None] | None = None,
        bind: bool = True,
        buffer_size: int = DEFAULT_BUFFER,
        make_socket: Callable[[], socket.socket] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.local = local
        self._local = _packed(local, "the local address")
        self._peers: frozenset[bytes] = frozenset()
        self.set_peers(peers)
        self.on_datagrams = on_datagrams
        self.on_unreachable = on_unreachable
        self.max_batch = max_batch
        self.bind = bind
        self.buffer_size = buffer_size
        self.counters: Counter[str] = Counter()
        self._reactor = reactor
        self._make_socket = make_socket or _raw_socket
        self._sock: socket.socket | None = None
        self._reading = False
        self._ident = 0
        self._prefix = f"IPIPSocket({local})"
        self._last_unknown_warning: float | None = None
        self._warned: set[str] = set()

    @property
    def peers(self) -> frozenset[str]:
        """The peers whose packets are accepted, as dotted quads."""
        return frozenset(socket.inet_ntoa(p) for p in self._peers)

    def set_peers(self, peers: Iterable[str]) -> None:
        """
        Replace the set of peers whose packets are accepted.

        @raise ValueError: a peer is not an IPv4 address (nothing changes).
        """
        self._peers = frozenset(_packed(p, "the peer") for p in peers)

    # -- life cycle

    @property
    def is_open(self) -> bool:
        """Whether the raw socket is open."""
        return self._sock is not None

    def open(self) -> None:
        """
        Open the raw socket, bind it to the local address and start reading.

        @raise IPIPError: the socket cannot be opened or bound (one sentence why).
        """
        if self._sock is not None:
            return
        try:
            sock = self._make_socket()
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EACCES):
                message = "cannot open a raw IP-in-IP socket: needs root (CAP_NET_RAW)"
            else:
                message = f"cannot open a raw IP-in-IP socket ({e.strerror or e})"
            raise IPIPError(message, e) from None
        try:
            sock.setblocking(False)
            if self.bind:
                sock.bind((self.local, 0))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRNOTAVAIL:
                message = (
                    f"cannot bind the IP-in-IP socket to {self.local}: "
                    "no interface of this host has that address"
                )
            else:
                message = f"cannot bind the IP-in-IP socket to {self.local} ({e.strerror or e})"
            raise IPIPError(message, e) from None
        self._set_buffers(sock)
        self._sock = sock
        self.startReading()
        self.log.info(
            "IP-in-IP on {local}: {n} peer(s), up to {batch} packets per wake-up",
            local=self.local,
            n=len(self._peers),
            batch=self.max_batch,
        )

    def _set_buffers(self, sock: socket.socket) -> None:
        """Ask for large buffers: the privileged option first, then the capped one."""
        for forced, plain in (
            (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
            (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
        ):
            for name in (forced, plain):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, name, self.buffer_size)
                except OSError:
                    continue
                break

    def doRead(self) -> None:  # noqa: N802 - Twisted's spelling
        """
        Read up to C{max_batch} packets and pass the accepted datagrams on in one call.

        Errors never reach the reactor: a receive error is counted, a bug in
        the callback is counted and logged rarely.
        """
        sock = self._sock
        if sock is None:
            return
        recv = sock.recv
        peers = self._peers
        local = self._local
        counters = self.counters
        inet_ntoa = socket.inet_ntoa
        out: list[Received] = []
        append = out.append
        packets = 0
        nbytes = 0
        for _ in range(self.max_batch):
            try:
                packet = recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                counters[f"rx_error_{errno.errorcode.get(e.errno or 0, 'unknown')}"] += 1
                continue
            packets += 1
            nbytes += len(packet)
            source = packet[12:16]
            if source not in peers:
                if len(packet) < 20:
                    counters["malformed"] += 1
                else:
                    counters["dropped_unknown_peer"] += 1
                    self._warn_unknown(source)
                continue
            try:
                outer_src, _outer_dst, inner = decapsulate(packet)
                src, sport, dst, dport, payload = parse_udp_packet(inner)
            except WireError:
                counters["malformed"] += 1
                continue
            if src != outer_src:
                counters["dropped_spoofed_inner"] += 1
                continue
            if dst != local:
                counters["dropped_wrong_destination"] += 1
                continue
            append((dport, payload, (inet_ntoa(src), sport)))
        if not packets:
            counters["rx_empty_wakeups"] += 1
            return
        counters["packets_in"] += packets
        counters["bytes_in"] += nbytes
        if not out:
            return
        counters["datagrams_in"] += len(out)
        try:
            self.on_datagrams(out)
        except Exception:
            counters["rx_callback_errors"] += 1
            n = counters["rx_callback_errors"]
            if n & (n - 1) == 0:
                self.log.failure("error handling IP-in-IP datagrams ({n} so far)", n=n)

    def _now(self) -> float:
        seconds = getattr(self.reactor, "seconds", None)
        return float(seconds()) if seconds is not None else time.monotonic()

    def _warn_unknown(self, source: bytes) -> None:
        """At most one warning per WARN_INTERVAL about packets from non-peers."""
        now = self._now()
        last = self._last_unknown_warning
        if last is not None and now - last < WARN_INTERVAL:
            return
        self._last_unknown_warning = now
        self.log.warn(
            "IP-in-IP packet from {source}, which is not a configured peer: dropped "
            "({count} such packets so far; the next warning comes {interval:.0f} s later at "
            "the earliest)",
            source=socket.inet_ntoa(source),
            count=self.counters["dropped_unknown_peer"],
            interval=WARN_INTERVAL,
        )

    # -- sending

    def send(self, payload: bytes, sport: int, dst: str, dport: int) -> None:
        """Send one UDP datagram to C{dst}:C{dport} inside IP in IP (never raises on failure)."""
        self.send_many([(payload, sport, dst, dport)])

    def send_many(self, datagrams: Sequence[Outgoing]) -> None:
        """
        Send C{(payload, sport, dst, dport)} datagrams in order, one packet each.

        Failures are counted (C{send_errors}, and C{send_error_<ERRNO>}),
        never raised; datagrams that cannot be encoded (a bad address or
        port, a payload too big) are counted as C{send_invalid}.
        """
        sock = self._sock
        counters = self.counters
        if sock is None:
            counters["send_dropped_closed"] += len(datagrams)
            return
        sendto = sock.sendto
        local = self._local
        inet_pton = socket.inet_pton
        ident = self._ident
        packets = 0
        nbytes = 0
        for payload, sport, dst, dport in datagrams:
            ident = (ident + 1) & 0xFFFF
            try:
                inner = udp_packet(
                    local, sport, inet_pton(socket.AF_INET, dst), dport, payload, ident=ident
                )
            except (WireError, OSError, TypeError) as e:
                counters["send_invalid"] += 1
                self._note_once("send_invalid", f"a datagram to {dst!r} cannot be encoded ({e})")
                continue
            try:
                sendto(inner, (dst, 0))
            except OSError as e:
                self._send_failed(dst, e)
                continue
            packets += 1
            nbytes += len(inner) + _OUTER_HEADER
        self._ident = ident
        counters["packets_out"] += packets
        counters["bytes_out"] += nbytes

    def _send_failed(self, dst: str, e: OSError) -> None:
        code = e.errno or 0
        name = errno.errorcode.get(code, "unknown")
        self.counters["send_errors"] += 1
        self.counters[f"send_error_{name}"] += 1
        self._note_once(name, f"IP-in-IP send failed ({e.strerror}); further failures only counted")
        if code in _UNREACHABLE and self.on_unreachable is not None:
            try:
                self.on_unreachable(dst, code)
            except Exception:
                self.counters["unreachable_callback_errors"] += 1
                n = self.counters["unreachable_callback_errors"]
                if n & (n - 1) == 0:
                    self.log.failure("error in the IP-in-IP unreachable callback ({n} so far)", n=n)

    def _note_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warn("{prefix}: {text}", prefix=self._prefix, text=text)
