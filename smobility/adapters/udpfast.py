# -*- test-case-name: tests.test_udpfast -*-
"""
A UDP socket for the data plane: many datagrams per reactor wake-up, few syscalls.

Twisted's L{twisted.internet.udp.Port} calls its protocol once per datagram
and sends one datagram per C{sendto}. At hundreds of thousands of ESP
packets a second that per-datagram overhead is most of the cost, so the
ESP-in-UDP socket of the data plane is this L{UDPSocket} instead: a plain
non-blocking socket the reactor reads (an C{IReadDescriptor}) that

 - drains up to C{batch} C{recvmsg} calls per wake-up and hands all the
   datagrams to its callback in one list;
 - with UDP GRO (C{UDP_GRO}, Linux 5.0) lets the kernel hand over a train of
   same-size datagrams from one peer as one buffer, which it splits by the
   segment size the kernel reports in a control message;
 - with UDP GSO (C{UDP_SEGMENT}, Linux 4.18) sends a run of same-size
   datagrams to one peer (the last may be shorter) with one C{sendmsg}; on
   the wire they are ordinary datagrams, segmented by the kernel or the NIC.
   (A capture taken before that point, e.g. on a veth of the lab, shows such
   a run as one large UDP datagram: capture single packets, like pings,
   when another implementation is to dissect them.)

Whether GRO and GSO work is checked once, when the socket opens, and said in
one log line; without them the socket still batches reads, one datagram per
syscall. A GSO send the route refuses (a path MTU below the segment size)
is sent again one datagram at a time, and GSO rests for the next
L{GSO_BACKOFF} batches (the route may change: a roaming client's uplink).
Nothing is logged per datagram: L{UDPSocket.counters} counts instead.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from smobility.adapters.reader import SocketReader

SOL_UDP = 17
"""The socket option level of UDP (C{IPPROTO_UDP})."""

UDP_SEGMENT = 103
"""Send: C{sendmsg} control message (or socket option) with the GSO segment size."""

UDP_GRO = 104
"""Receive: socket option turning GRO on; C{recvmsg} then reports the segment size."""

UDP_MAX_SEGMENTS = 64
"""Most segments one GSO send may carry (the kernel's C{UDP_MAX_SEGMENTS})."""

MAX_UDP_PAYLOAD = 65507
"""Largest UDP payload over IPv4 (65535 - 20 - 8): the bound of one GSO send."""

RECV_SIZE = 65536
"""Receive buffer per C{recvmsg}: a whole GRO train, or any datagram."""

GSO_BACKOFF = 256
"""Batches sent without GSO after the kernel refused a GSO send."""

DEFAULT_BUFFER = 4 * 1024 * 1024
"""Socket send and receive buffers asked for: enough for bursts at a Gbit/s."""

_INT = struct.Struct("=i")  # control message payloads are host-order C ints
_U16 = struct.Struct("=H")  # UDP_SEGMENT takes a host-order u16
_CMSG_SPACE = socket.CMSG_SPACE(_INT.size)

# errnos of a send that lost this datagram but says nothing about the next.
_SEND_DROPS = {
    errno.EAGAIN: "send_dropped_full",
    errno.ENOBUFS: "send_dropped_nobufs",
    errno.ENETUNREACH: "send_dropped_unreachable",
    errno.EHOSTUNREACH: "send_dropped_unreachable",
    errno.ENETDOWN: "send_dropped_unreachable",
    errno.EADDRNOTAVAIL: "send_dropped_unreachable",
    errno.EPERM: "send_dropped_filtered",
    errno.ECONNREFUSED: "send_dropped_refused",
    errno.EMSGSIZE: "send_dropped_too_big",
}

Address = tuple[str, int]
Datagram = tuple[bytes, Address]


class UDPError(Exception):
    """The socket could not be opened; C{socket_error} is the C{OSError} behind it."""

    def __init__(self, message: str, socket_error: OSError) -> None:
        super().__init__(message)
        self.socket_error = socket_error


@implementer(IReadDescriptor)
class UDPSocket(SocketReader):
    """
    A non-blocking IPv4 UDP socket read by the reactor, batched both ways.

    C{on_datagrams(list)} gets every C{(datagram, (host, port))} of one
    wake-up in one call: at most C{batch} receives and (GRO trains split)
    about C{max_datagrams} datagrams, so that one busy socket does not keep
    the reactor from the TUN device for long. L{send_many} sends a list of such pairs. C{gro} and
    C{gso} ask for the kernel offloads; L{gro} and L{gso} say, once the
    socket is open, whether they are in use. C{make_socket} is for tests.
    """

    log = Logger()

    def __init__(
        self,
        on_datagrams: Callable[[list[Datagram]], None],
        *,
        reactor: Any = None,
        batch: int = 64,
        max_datagrams: int = 256,
        gro: bool = True,
        gso: bool = True,
        buffer_size: int = DEFAULT_BUFFER,
        on_refused: Callable[[], None] | None = None,
        make_socket: Callable[[], socket.socket] | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.on_datagrams = on_datagrams
        self.on_refused = on_refused
        self.batch = batch
        self.max_datagrams = max_datagrams
        self.want_gro = gro
        self.want_gso = gso
        self.buffer_size = buffer_size
        self.gro = False
        self.gso = False
        self.counters: Counter[str] = Counter()
        self._reactor: IReactorFDSet | None = reactor
        self._make_socket = make_socket or (
            lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        )
        self._sock: socket.socket | None = None
        self._gso_rest = 0
        self._prefix = "UDPSocket"
        self._reading = False
        self._warned: set[str] = set()

    # -- life cycle

    def listen(self, interface: str, port: int) -> None:
        """
        Bind to C{interface}:C{port}, probe the offloads and start reading.

        @raise UDPError: the address cannot be bound (the message says which).
        """
        if self._sock is not None:
            raise UDPError(f"UDP socket is already bound to {self.address}", OSError(errno.EISCONN))
        sock = self._make_socket()
        try:
            sock.setblocking(False)
            sock.bind((interface, port))
        except OSError as e:
            sock.close()
            raise UDPError(f"cannot bind UDP {interface}:{port} ({e.strerror or e})", e) from None
        self._sock = sock
        self._prefix = f"UDPSocket({interface}:{port})"
        self._set_buffers(sock)
        self.gro = self.want_gro and self._try_option(sock, SOL_UDP, UDP_GRO, 1)
        # UDP_SEGMENT as a socket option with size 0 means "no GSO by
        # default": accepted exactly where the per-send control message is.
        self.gso = self.want_gso and self._try_option(sock, SOL_UDP, UDP_SEGMENT, 0)
        self.startReading()
        self.log.info(
            "UDP {addr}: fast paths: GRO receive {gro}, GSO send {gso}, "
            "up to {batch} receives per wake-up",
            addr=self.address,
            gro="on" if self.gro else "off",
            gso="on" if self.gso else "off",
            batch=self.batch,
        )

    def _set_buffers(self, sock: socket.socket) -> None:
        """Ask for large buffers: the privileged option first, then the capped one."""
        for forced, plain in (
            (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
            (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
        ):
            if not self._try_option(sock, socket.SOL_SOCKET, forced, self.buffer_size):
                self._try_option(sock, socket.SOL_SOCKET, plain, self.buffer_size)

    @staticmethod
    def _try_option(sock: socket.socket, level: int, name: int, value: int) -> bool:
        try:
            sock.setsockopt(level, name, value)
        except OSError:
            return False
        return True

    @property
    def address(self) -> Address | None:
        """The bound (host, port), or C{None} when closed."""
        if self._sock is None:
            return None
        host, port = self._sock.getsockname()[:2]
        return (host, port)

    def getHost(self) -> Address | None:  # noqa: N802 - Twisted's spelling
        """Like a Twisted port: where the socket is bound."""
        return self.address

    def stopListening(self) -> None:  # noqa: N802 - Twisted's spelling, for callers used to ports
        """Close, as a Twisted port would."""
        self.close()

    # -- IReadDescriptor

    def doRead(self) -> None:  # noqa: N802 - Twisted's spelling
        """
        Drain up to C{batch} receives (GRO trains split) and pass them on in one call.

        Errors never reach the reactor: an ICMP error reported on the socket
        is counted (and C{on_refused} told of a refused port), a bug in the
        callback is counted and logged rarely.
        """
        sock = self._sock
        if sock is None:
            return
        recvmsg = sock.recvmsg
        cspace = _CMSG_SPACE if self.gro else 0
        out: list[Datagram] = []
        append = out.append
        counters = self.counters
        receives = 0
        room = self.max_datagrams
        for _ in range(self.batch):
            if len(out) >= room:
                break
            try:
                data, ancillary, flags, addr = recvmsg(RECV_SIZE, cspace)
            except BlockingIOError:
                break
            except OSError as e:
                # Queued ICMP errors surface on the next receive; go on reading.
                counters[f"rx_error_{errno.errorcode.get(e.errno or 0, 'unknown')}"] += 1
                if e.errno == errno.ECONNREFUSED and self.on_refused is not None:
                    self.on_refused()
                continue
            receives += 1
            if flags & socket.MSG_TRUNC:
                counters["rx_truncated"] += 1
                continue
            if ancillary:
                size = _gro_size(ancillary)
                if size and size < len(data):
                    counters["rx_gro_trains"] += 1
                    for start in range(0, len(data), size):
                        append((data[start : start + size], addr))
                    continue
            append((data, addr))
        if not receives:
            counters["rx_empty_wakeups"] += 1
            return
        counters["rx_receives"] += receives
        if not out:
            return
        counters["rx_datagrams"] += len(out)
        try:
            self.on_datagrams(out)
        except Exception:
            counters["rx_callback_errors"] += 1
            n = counters["rx_callback_errors"]
            if n & (n - 1) == 0:
                self.log.failure("error handling datagrams ({n} so far)", n=n)

    # -- sending

    def write(self, datagram: bytes, addr: Address) -> None:
        """Send one datagram (a failure is counted, never raised)."""
        self.send_many([(datagram, addr)])

    def send_many(self, datagrams: Sequence[Datagram]) -> None:
        """
        Send datagrams in order; runs of same-size datagrams to one peer go by GSO.

        A run ends at a different peer, a different size (a shorter datagram
        may end a run), L{UDP_MAX_SEGMENTS} or L{MAX_UDP_PAYLOAD} bytes.
        """
        sock = self._sock
        counters = self.counters
        if sock is None:
            counters["send_dropped_closed"] += len(datagrams)
            return
        n = len(datagrams)
        gso = self.gso and not self._gso_rest
        if self._gso_rest:
            self._gso_rest -= 1
        i = 0
        sent = 0
        while i < n:
            data, addr = datagrams[i]
            j = i + 1
            if gso and j < n:
                size = len(data)
                limit = min(n, i + UDP_MAX_SEGMENTS, i + MAX_UDP_PAYLOAD // max(size, 1))
                while j < limit:
                    other, to = datagrams[j]
                    if to is not addr and to != addr:
                        break
                    length = len(other)
                    if length != size:
                        if 0 < length < size:
                            j += 1  # a shorter datagram ends the run
                        break
                    j += 1
            if j - i == 1:
                try:
                    sock.sendto(data, addr)
                except OSError as e:
                    self._send_failed(e, 1)
                else:
                    sent += 1
            else:
                sent += self._send_segments(sock, datagrams, i, j, len(data), addr)
            i = j
        counters["tx_datagrams"] += sent

    def _send_segments(
        self, sock: socket.socket, datagrams: Sequence[Datagram], i: int, j: int, size: int,
        addr: Address,
    ) -> int:  # fmt: skip
        """One GSO send of datagrams[i:j]; on refusal, one send each. Return how many left."""
        buffers = [d for d, _ in datagrams[i:j]]
        try:
            sock.sendmsg(buffers, [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, addr)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOTSUP):
                self._send_failed(e, j - i)
                return 0
            # The route cannot take this GSO send (MTU below the segment
            # size, or no checksum offload): send each one by itself.
            self.counters["tx_gso_refused"] += 1
            self._gso_rest = GSO_BACKOFF
            self._note_once("gso-refused", f"a GSO send was refused ({e.strerror}); sending singly")
            sent = 0
            for data in buffers:
                try:
                    sock.sendto(data, addr)
                except OSError as e2:
                    self._send_failed(e2, 1)
                else:
                    sent += 1
            return sent
        self.counters["tx_gso_sends"] += 1
        return j - i

    def _send_failed(self, e: OSError, count: int) -> None:
        name = _SEND_DROPS.get(e.errno or 0, "send_errors")
        self.counters[name] += count
        self.counters["send_dropped"] += count
        self._note_once(name, f"UDP send failed ({e.strerror}); further failures only counted")

    def _note_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warn("{addr}: {text}", addr=self.address, text=text)


def _gro_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The segment size of a GRO train from C{recvmsg}'s control messages (0: none)."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _INT.size:
            size: int = _INT.unpack_from(data)[0]
            return size
    return 0
