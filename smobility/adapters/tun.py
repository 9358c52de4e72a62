# -*- test-case-name: tests.test_tun -*-
"""
The TUN device as a file descriptor the reactor reads.

The OS calls go through a L{TunSystem} (as in C{twisted.pair.tuntap}), so the
device logic is tested without root on a L{MemoryTunSystem}; L{RealTunSystem}
is the C{os}/C{fcntl} implementation.

Throughput depends on how much work is done per reactor wake-up, so
L{TunDevice.doRead} drains up to C{batch} packets and hands them to its
callback as one list, and nothing is logged per packet: the device keeps
L{collections.Counter} counters instead.

Offloads (C{IFF_VNET_HDR}, a C{virtio_net_hdr} before every packet) cut the
kernel's per-packet work, which a TUN device otherwise pays in the reader's
and writer's own system calls:

 - C{gro}: L{TunDevice.write_many} joins consecutive in-order segments of one
   TCP connection into one "super-packet" with a GSO header: the kernel's
   TCP (or its forwarding) then handles one packet instead of dozens, and
   splits it again only where it must.  The checksums of the joined
   segments are checked first (one sum over all of them); a run that fails
   is written packet by packet, for the kernel to judge each.
 - C{tso}: the device offers TSO and checksum offload, so the kernel hands
   over TCP super-packets (and packets with only a partial checksum);
   L{TunDevice.doRead} splits them into segments with complete checksums,
   so the callback still only ever sees ordinary IPv4 packets.

Both are asked for at L{TunDevice.open} and fall back (with one log line) to
plain packets where the kernel lacks them.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smobility.adapters.reader import default_reactor

TUN_PATH = "/dev/net/tun"
"""The clone device every TUN device is created through."""

TUNSETIFF = 0x400454CA
"""C{_IOW('T', 202, int)}: attach the file descriptor to a (new) TUN/TAP device."""

IFF_TUN = 0x0001
"""A TUN (layer 3, IP packets) device, not a TAP (Ethernet) one."""

IFF_NO_PI = 0x1000
"""No 4-byte packet information header before each packet."""

IFF_MULTI_QUEUE = 0x0100
"""One device, several queues (file descriptors); not used here."""

IFF_VNET_HDR = 0x4000
"""Every packet read or written starts with a C{struct virtio_net_hdr} (offloads)."""

TUNGETFEATURES = 0x800454CF
"""C{_IOR('T', 207, unsigned int)}: the C{IFF_*} flags this kernel's TUN driver knows."""

TUNSETOFFLOAD = 0x400454D0
"""C{_IOW('T', 208, unsigned int)}: the offloads the device offers (an integer argument)."""

SIOCSIFTXQLEN = 0x8943
"""Set an interface's transmit queue length (for a TUN device: its ring of packets to read)."""

TUN_F_CSUM = 0x01
"""Offload: the kernel may hand over packets whose checksum is only partial."""

TUN_F_TSO4 = 0x02
"""Offload: the kernel may hand over IPv4 TCP super-packets (needs C{TUN_F_CSUM})."""

VNET_HDR_LEN = 10
"""C{sizeof(struct virtio_net_hdr)}: the default header size of a TUN device."""

VIRTIO_NET_HDR_F_NEEDS_CSUM = 0x01
"""The checksum at C{csum_start + csum_offset} holds only the pseudo-header sum."""

VIRTIO_NET_HDR_GSO_NONE = 0
"""Not a super-packet."""

VIRTIO_NET_HDR_GSO_TCPV4 = 1
"""An IPv4 TCP super-packet of C{gso_size}-byte segments."""

MAX_IPV4_PACKET = 65535
"""The largest IPv4 packet (its total length field): the bound of a super-packet."""

IFNAMSIZ = 16
"""Interface name buffer size, including the terminating NUL."""

_IFREQ_SIZE = 40
"""C{sizeof(struct ifreq)} on Linux (64-bit): the ioctl argument is padded to it."""

# errnos that mean "this packet could not be queued right now": counted, never raised.
_NAMES = {
    errno.EAGAIN: "full",
    errno.ENOBUFS: "nobufs",
    errno.ENOMEM: "nomem",
    errno.EINVAL: "invalid",
    errno.EIO: "down",
    errno.EBADF: "closed",
    errno.EBADFD: "closed",
    errno.EFAULT: "invalid",
    errno.EMSGSIZE: "toobig",
}


class TunError(Exception):
    """A TUN device could not be created; the message is one sentence for the operator."""


class TunSystem(Protocol):
    """The OS calls a L{TunDevice} makes (injectable, as in C{twisted.pair.tuntap})."""

    def open(self, path: str, flags: int) -> int:
        """Open C{path} with C{os.open} C{flags}; return the file descriptor."""

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        """Issue C{request} on C{fd} with the buffer C{arg}; return the buffer after the call."""

    def ioctl_value(self, fd: int, request: int, value: int) -> int:
        """Issue C{request} on C{fd} with the integer C{value} itself as the argument."""

    def read(self, fd: int, n: int) -> bytes:
        """Read one packet of at most C{n} bytes; raise C{BlockingIOError} when none is queued."""

    def write(self, fd: int, data: bytes) -> int:
        """Write one packet; return the number of bytes written."""

    def writev(self, fd: int, buffers: list[bytes]) -> int:
        """Write one packet given in pieces; return the number of bytes written."""

    def close(self, fd: int) -> None:
        """Close C{fd}."""

    def set_txqueuelen(self, name: str, length: int) -> None:
        """Set the transmit queue length of the interface C{name}."""


class RealTunSystem:
    """L{TunSystem} on the real OS (C{os} and C{fcntl})."""

    def open(self, path: str, flags: int) -> int:
        """C{os.open}."""
        return os.open(path, flags)

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        """C{fcntl.ioctl} with a bytes buffer (copied in and out by the kernel)."""
        return fcntl.ioctl(fd, request, arg)

    def ioctl_value(self, fd: int, request: int, value: int) -> int:
        """C{fcntl.ioctl} with an integer argument."""
        return fcntl.ioctl(fd, request, value)

    def read(self, fd: int, n: int) -> bytes:
        """C{os.read}: one packet per call on a TUN device."""
        return os.read(fd, n)

    def write(self, fd: int, data: bytes) -> int:
        """C{os.write}: one packet per call on a TUN device."""
        return os.write(fd, data)

    def writev(self, fd: int, buffers: list[bytes]) -> int:
        """C{os.writev}: the pieces of one packet, gathered by the kernel."""
        return os.writev(fd, buffers)

    def close(self, fd: int) -> None:
        """C{os.close}."""
        os.close(fd)

    def set_txqueuelen(self, name: str, length: int) -> None:
        """C{SIOCSIFTXQLEN} through an C{AF_INET} datagram socket."""
        ifreq = struct.pack("=16si", name.encode(), length).ljust(_IFREQ_SIZE, b"\0")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), SIOCSIFTXQLEN, ifreq)


class _MemoryTun:
    """One device of a L{MemoryTunSystem}."""

    def __init__(self, name: str, flags: int) -> None:
        self.name = name
        self.flags = flags
        self.offloads: int | None = None
        self.txqueuelen = 500
        self.incoming: collections.deque[bytes] = collections.deque()
        self.written: list[bytes] = []


class MemoryTunSystem:
    """
    An in-memory L{TunSystem} for tests.

    C{inject(name, *packets)} queues packets for the device to read;
    C{written(name)} lists what the device wrote. C{open_error} and
    C{ioctl_error} (errno values) make the next opens or C{TUNSETIFF} calls
    fail, as a machine without the module or without privileges would;
    errnos appended to C{write_errors} fail the next writes, one each.
    C{features} is what C{TUNGETFEATURES} reports (C{None}: the ioctl is
    unknown, as on an old kernel) and C{offload_error} makes C{TUNSETOFFLOAD}
    fail. With C{IFF_VNET_HDR}, injected and written packets include the
    virtio header, exactly as the kernel's read and write calls see them.
    """

    def __init__(
        self,
        *,
        open_error: int | None = None,
        ioctl_error: int | None = None,
        features: int | None = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR,
        offload_error: int | None = None,
    ) -> None:
        self.open_error = open_error
        self.ioctl_error = ioctl_error
        self.features = features
        self.offload_error = offload_error
        self.write_errors: collections.deque[int] = collections.deque()
        self.ioctls: list[tuple[int, int, bytes | int]] = []
        self.opens: list[tuple[str, int]] = []
        self.closed: list[int] = []
        self.reads = 0
        self._next_fd = 100
        self._fds: dict[int, _MemoryTun | None] = {}
        self._devices: dict[str, _MemoryTun] = {}

    # -- the TunSystem interface

    def open(self, path: str, flags: int) -> int:
        """Return a fresh fake descriptor (or raise C{open_error})."""
        self.opens.append((path, flags))
        if self.open_error is not None:
            raise OSError(self.open_error, os.strerror(self.open_error), path)
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = None
        return fd

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        """Handle C{TUNSETIFF}: attach C{fd} to a device, naming it like the kernel does."""
        self.ioctls.append((fd, request, arg))
        if fd not in self._fds:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if request == TUNGETFEATURES and self.features is not None:
            return struct.pack("=I", self.features)
        if request != TUNSETIFF:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        if self.ioctl_error is not None:
            raise OSError(self.ioctl_error, os.strerror(self.ioctl_error))
        # ifr_flags is a host-order short (struct ifreq is not a wire format).
        (flags,) = struct.unpack_from("=H", arg, IFNAMSIZ)
        name = arg[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        if not name:
            name = "tun%d"
        if "%d" in name:
            n = 0
            while name.replace("%d", str(n)) in self._devices:
                n += 1
            name = name.replace("%d", str(n))
        if name in self._devices:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        known = self.features if self.features is not None else IFF_TUN | IFF_NO_PI
        if flags & ~known:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        device = _MemoryTun(name, flags)
        self._devices[name] = device
        self._fds[fd] = device
        out = bytearray(arg)
        out[:IFNAMSIZ] = name.encode().ljust(IFNAMSIZ, b"\0")
        return bytes(out)

    def set_txqueuelen(self, name: str, length: int) -> None:
        """Record the queue length (C{ENODEV} for a device that does not exist)."""
        device = self._devices.get(name)
        if device is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        device.txqueuelen = length

    def ioctl_value(self, fd: int, request: int, value: int) -> int:
        """Handle C{TUNSETOFFLOAD} on a device opened with C{IFF_VNET_HDR}."""
        self.ioctls.append((fd, request, value))
        device = self._device(fd)
        if request != TUNSETOFFLOAD:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        if self.offload_error is not None:
            raise OSError(self.offload_error, os.strerror(self.offload_error))
        if value & ~(TUN_F_CSUM | TUN_F_TSO4) or (value & TUN_F_TSO4 and not value & TUN_F_CSUM):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        device.offloads = value
        return 0

    def read(self, fd: int, n: int) -> bytes:
        """Pop the next injected packet, truncated to C{n} bytes, or raise C{BlockingIOError}."""
        device = self._device(fd)
        self.reads += 1
        if not device.incoming:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return device.incoming.popleft()[:n]

    def write(self, fd: int, data: bytes) -> int:
        """Record C{data} (or fail with the next errno of C{write_errors})."""
        device = self._device(fd)
        if self.write_errors:
            code = self.write_errors.popleft()
            if code == errno.EAGAIN:
                raise BlockingIOError(code, os.strerror(code))
            raise OSError(code, os.strerror(code))
        device.written.append(bytes(data))
        return len(data)

    def writev(self, fd: int, buffers: list[bytes]) -> int:
        """Record the pieces joined, as one packet (or fail like L{write})."""
        return self.write(fd, b"".join(buffers))

    def close(self, fd: int) -> None:
        """Forget C{fd}; like the kernel, delete its (non-persistent) device."""
        device = self._fds.pop(fd, None)
        if fd in self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        self.closed.append(fd)
        if device is not None:
            self._devices.pop(device.name, None)

    # -- for tests

    def inject(self, name: str, *packets: bytes) -> None:
        """Queue C{packets} as if the kernel routed them into the device C{name}."""
        self._devices[name].incoming.extend(packets)

    def written(self, name: str) -> list[bytes]:
        """The packets the device C{name} wrote so far."""
        return self._devices[name].written

    def devices(self) -> list[str]:
        """The names of the devices that exist (opened and not closed)."""
        return sorted(self._devices)

    def device_flags(self, name: str) -> int:
        """The C{IFF_*} flags the device C{name} was created with."""
        return self._devices[name].flags

    def offloads(self, name: str) -> int | None:
        """The C{TUN_F_*} offloads set on C{name} (C{None}: never set)."""
        return self._devices[name].offloads

    def txqueuelen(self, name: str) -> int:
        """The transmit queue length of C{name} (the kernel's default is 500)."""
        return self._devices[name].txqueuelen

    def _device(self, fd: int) -> _MemoryTun:
        device = self._fds.get(fd)
        if device is None:
            raise OSError(errno.EBADFD, os.strerror(errno.EBADFD))
        return device


# -- offloads: virtio headers, TSO segmentation, GRO coalescing
#
# Checksums here are sums of big-endian 16-bit words taken modulo 0xFFFF:
# int.from_bytes over a whole packet is one C loop, and since 2**16 is 1
# modulo 0xFFFF that integer is congruent to the sum of its words.  A field
# that holds ~sum is then 0xFFFF - (sum % 0xFFFF): never 0, which UDP needs.

_VNET = struct.Struct("=BBHHHH")  # host order: a kernel ABI, not a wire format
_ZERO_VNET = bytes(VNET_HDR_LEN)
_IPV4_TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TCP = 6
_ACK = 0x10
_FIN_PSH = 0x09
_CWR = 0x80


def _word_sum(data: bytes) -> int:
    """The 16-bit big-endian word sum of C{data} modulo 0xFFFF (odd length: zero-padded)."""
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8
    return _mod_ffff(total)


def _mod_ffff(total: int) -> int:
    """C{total % 0xFFFF}, faster for big numbers.

    Dividing a big integer by a small one costs a machine division per 30
    bits; shifting and masking is much cheaper.  Folding the upper part onto
    the lower one at a multiple of 16 bits keeps the value modulo 0xFFFF
    (2**16 is 1 modulo 0xFFFF), so fold about in half while the number is
    big, then divide.
    """
    bits = total.bit_length()
    while bits > 768:
        length = bits.bit_length()
        if length < len(_FOLDS):
            shift, mask = _FOLDS[length][(bits >> (length - 3)) & 3]
        else:
            shift = (bits >> 1) & ~15
            mask = (1 << shift) - 1
        total = (total >> shift) + (total & mask)
        bits = total.bit_length()
    return total % 0xFFFF


def _folds(length: int) -> list[tuple[int, int]]:
    """Fold points for numbers of C{length} bits in binary, by their next two bits."""
    top = 1 << (length - 1)
    points = []
    for quarter in range(4):
        half = (top + quarter * (top >> 2)) >> 1  # about half the smallest such number
        shift = max(16, half & ~15)
        points.append((shift, (1 << shift) - 1))
    return points


# Folding points for numbers of fewer than 2**16 bits (8 KB: packets and sums
# of them), four per length in binary: 52 masks, made once.  Bigger numbers
# (a whole super-packet) make their masks as they go.
_FOLDS = [_folds(n) if n >= 3 else [] for n in range(17)]


_UDP_CSUM_OFFSET = 6
"""Where a UDP header holds its checksum (a virtio C{csum_offset} of 6 is UDP's)."""


def _fold_complement(total: int) -> int:
    """The checksum field for a word sum C{total}: the one's complement of its 16-bit fold.

    As RFC 1071 computes it (and as every other stack writes it): a sum that
    folds to 0xFFFF gives 0x0000.  UDP sends that as 0xFFFF (RFC 768), see
    L{complete_checksum}.
    """
    folded = total % 0xFFFF
    if folded == 0 and total:
        folded = 0xFFFF
    return 0xFFFF - folded


def complete_checksum(packet: bytes, start: int, offset: int) -> bytes:
    """
    Finish a partial checksum (C{VIRTIO_NET_HDR_F_NEEDS_CSUM}).

    The field at C{start + offset} holds the pseudo-header sum; the checksum
    covers everything from C{start} to the end of the packet.

    @raise ValueError: the field lies outside the packet.
    """
    at = start + offset
    if at + 2 > len(packet) or start < 0:
        raise ValueError("checksum field outside the packet")
    csum = _fold_complement(_word_sum(packet[start:]))
    if csum == 0 and offset == _UDP_CSUM_OFFSET:
        csum = 0xFFFF  # RFC 768: a UDP checksum of zero means "none"
    return packet[:at] + _U16.pack(csum) + packet[at + 2 :]


def tso_segments(packet: bytes, mss: int) -> list[bytes]:
    """
    Split an IPv4 TCP super-packet into segments of at most C{mss} payload bytes.

    What a NIC does for TSO: each segment gets its own total length, IP ID
    (counting up), sequence number and both checksums; FIN and PSH stay on
    the last segment only, CWR on the first only.

    @raise ValueError: not an IPv4 TCP packet, or C{mss} is not positive.
    """
    if mss <= 0 or len(packet) < 40 or packet[0] >> 4 != 4 or packet[9] != _TCP:
        raise ValueError("not an IPv4 TCP super-packet")
    hlen = (packet[0] & 0x0F) << 2
    thlen = (packet[hlen + 12] >> 4) << 2
    hdrs = hlen + thlen
    if hlen < 20 or thlen < 20 or hdrs > len(packet):
        raise ValueError("bad IPv4 or TCP header length")
    payload = len(packet) - hdrs
    if payload <= mss:
        return [_recompute(packet, hlen, thlen)]
    ip_opts = packet[20:hlen]
    tcp_opts = packet[hlen + 20 : hdrs]
    (vihl, tos, _, ident, frag, ttl, proto, _, src, dst,
     sport, dport, seq, ack, doff, flags, window, _, urg) = _IPV4_TCP.unpack_from(
        packet[:20] + packet[hlen : hlen + 20])  # fmt: skip
    # Sums of the words that are the same in every segment.
    ip_fixed = (vihl << 8 | tos) + frag + (ttl << 8 | proto) + _word_sum(src + dst + ip_opts)
    tcp_fixed = (
        _word_sum(src + dst) + _TCP + sport + dport + (ack >> 16) + (ack & 0xFFFF) + window
        + urg + _word_sum(tcp_opts)
    )  # fmt: skip
    segments: list[bytes] = []
    append = segments.append
    pack = _IPV4_TCP.pack
    end = len(packet)
    last = end - 1 - (payload - 1) % mss  # where the last segment's data starts
    plain = hlen == 20 and thlen == 20
    for off in range(hdrs, end, mss):
        data = packet[off : off + mss]
        size = len(data)
        if off == hdrs:
            fl = flags & ~_FIN_PSH
        elif off == last:
            fl = flags & ~_CWR
        else:
            fl = flags & ~(_FIN_PSH | _CWR)
        total = hdrs + size
        tcp_sum = (
            tcp_fixed + thlen + size + (seq >> 16) + (seq & 0xFFFF) + (doff << 8 | fl)
            + _word_sum(data)
        )  # fmt: skip
        head = pack(
            vihl, tos, total, ident, frag, ttl, proto, _fold_complement(ip_fixed + total + ident),
            src, dst, sport, dport, seq, ack, doff, fl, window, _fold_complement(tcp_sum), urg,
        )  # fmt: skip
        if plain:
            append(head + data)
        else:
            append(head[:20] + ip_opts + head[20:] + tcp_opts + data)
        ident = (ident + 1) & 0xFFFF
        seq = (seq + size) & 0xFFFFFFFF
    return segments


def _recompute(packet: bytes, hlen: int, thlen: int) -> bytes:
    """A lone TCP segment with both checksums computed from scratch."""
    ip = packet[:10] + b"\0\0" + packet[12:hlen]
    ip = ip[:10] + _U16.pack(_fold_complement(_word_sum(ip))) + ip[12:]
    tcp = packet[hlen : hlen + 16] + b"\0\0" + packet[hlen + 18 :]
    pseudo = _word_sum(packet[12:20]) + _TCP + len(tcp)
    csum = _fold_complement(pseudo + _word_sum(tcp))
    return ip + tcp[:16] + _U16.pack(csum) + tcp[18:]


def coalesce_tcp(packets: list[bytes], start: int) -> int:
    """
    How many packets from C{packets[start]} on can form one TCP super-packet.

    They must be IPv4 without options or fragmentation, of one connection
    with the same IP header fields, acknowledgement, window and TCP options,
    in sequence, flags ACK (PSH allowed on the last), with the same payload
    size (an even one, the last may be shorter), under 64 KB in all.  The
    checksums are not looked at here.  Returns 1 when nothing joins.
    """
    p = packets[start]
    n = len(packets)
    size = len(p)
    if (
        start + 1 >= n
        or size <= 40
        or p[0] != 0x45
        or p[9] != _TCP
        or p[33] != _ACK
        or (p[2] << 8 | p[3]) != size
        or p[6] & 0x3F
        or p[7]
    ):
        return 1
    hdrs = 20 + ((p[32] >> 4) << 2)
    mss = size - hdrs
    if mss <= 0 or mss & 1:
        return 1
    addrs = p[12:24]
    ack = p[28:33]
    window = p[34:36]
    fixed = p[6:10]
    tos = p[1]
    options = p[40:hdrs]
    expect = (_U32.unpack_from(p, 24)[0] + mss) & 0xFFFFFFFF
    total = size
    j = start + 1
    while j < n:
        q = packets[j]
        length = len(q)
        data = length - hdrs
        if (
            data <= 0
            or data > mss
            or total + data > MAX_IPV4_PACKET
            or q[33] & ~0x08 != _ACK
            or q[0] != 0x45
            or (q[2] << 8 | q[3]) != length
            or q[12:24] != addrs
            or q[28:33] != ack
            or q[34:36] != window
            or q[6:10] != fixed
            or q[1] != tos
            or _U32.unpack_from(q, 24)[0] != expect
            or (hdrs > 40 and q[40:hdrs] != options)
        ):
            break
        total += data
        j += 1
        if data < mss or q[33] != _ACK:
            break  # a short segment or PSH ends the super-packet
        expect = (expect + mss) & 0xFFFFFFFF
    return j - start


def join_tcp(run: list[bytes]) -> list[bytes] | None:
    """
    The pieces of one super-packet made of C{run} (virtio header first), or C{None}.

    C{None} when a checksum of the run is wrong: the IPv4 header and TCP
    checksums of all segments are checked together, as one sum, and a run
    that fails is written segment by segment so that the kernel judges each.
    The super-packet's TCP checksum is left partial
    (C{VIRTIO_NET_HDR_F_NEEDS_CSUM}): the kernel completes it where needed.
    """
    first = run[0]
    hdrs = 20 + ((first[32] >> 4) << 2)
    # Every valid segment sums to 0 (mod 0xFFFF) over its IPv4 header, and
    # over its TCP pseudo-header, header and data: check the total at once.
    total = 0
    pieces = [b"", b""]
    append = pieces.append
    from_bytes = int.from_bytes
    for q in run:
        total += from_bytes(q, "big")
        append(q[hdrs:])
    last = run[-1]
    if len(last) & 1:
        total += from_bytes(last, "big") * 255  # the last one zero-padded: x * 256
    count = len(run)
    size = sum(map(len, run))
    pseudo = _word_sum(first[12:20]) + _TCP
    if _mod_ffff(total + count * pseudo + size - 20 * count):
        return None
    length = size - (count - 1) * hdrs
    ip = first[:2] + _U16.pack(length) + first[4:10] + b"\0\0" + first[12:20]
    ip = ip[:10] + _U16.pack(_fold_complement(_word_sum(ip))) + ip[12:]
    flags = first[33] | (last[33] & 0x08)
    partial = (pseudo + length - 20) % 0xFFFF  # the pseudo-header sum, not complemented
    tcp = first[20:33] + bytes((flags,)) + first[34:36] + _U16.pack(partial) + first[38:hdrs]
    mss = len(first) - hdrs
    pieces[0] = _VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hdrs, mss, 20, 16)
    pieces[1] = ip + tcp
    return pieces


@implementer(IReadDescriptor)
class TunDevice:
    """
    A TUN device (IP packets, no packet information header) read by the reactor.

    Each reactor wake-up drains up to C{batch} packets and calls
    C{on_packets(list)} once with all of them. Writes never raise for a
    transient failure (queue full, no buffers, device down, malformed packet):
    they count a drop in C{counters} instead.

    C{on_lost(reason)}, if given, is called once if the device goes away
    under us (read error other than "nothing queued", e.g. the interface was
    deleted); L{close} does not call it.

    C{gro} and C{tso} ask for the offloads described in the module
    docstring; after L{open}, the attributes L{gro} and L{tso} say whether
    they are on.  C{txqueuelen}, if given, replaces the kernel's default
    queue of 500 packets waiting to be read: a deeper queue rides out the
    moments the reactor spends on the other side of the tunnel.  Either way
    C{on_packets} gets, and L{write_many} takes, ordinary IPv4 packets.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        on_packets: Callable[[list[bytes]], None],
        *,
        reactor: Any = None,
        system: TunSystem | None = None,
        batch: int = 64,
        mtu_read: int = 65535,
        on_lost: Callable[[Failure], None] | None = None,
        gro: bool = False,
        tso: bool = False,
        txqueuelen: int | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.name = name
        self.on_packets = on_packets
        self.on_lost = on_lost
        self.batch = batch
        self.mtu_read = mtu_read
        self.want_gro = gro
        self.want_tso = tso
        self.txqueuelen = txqueuelen
        self.vnet = False
        self.gro = False
        self.tso = False
        self.counters: collections.Counter[str] = collections.Counter()
        self._reactor: IReactorFDSet | None = reactor
        self._system: TunSystem = system if system is not None else RealTunSystem()
        self._fd: int | None = None
        self._reading = False
        self._warned: set[str] = set()

    @property
    def reactor(self) -> IReactorFDSet:
        """The reactor this device registers with (the global one unless injected)."""
        if self._reactor is None:
            self._reactor = default_reactor()
        return self._reactor

    # -- life cycle

    def open(self) -> None:
        """
        Create (or attach to) the TUN device and start reading it.

        C{name} may hold C{%d} for the kernel to pick a number; afterwards
        C{name} is the name the kernel actually gave.

        @raise TunError: with one sentence saying what is missing.
        """
        if self._fd is not None:
            raise TunError(f"TUN device {self.name} is already open")
        encoded = self.name.encode()
        if len(encoded) > IFNAMSIZ - 1:
            raise TunError(
                f"TUN device name {self.name!r} is longer than {IFNAMSIZ - 1} characters"
            )
        if "/" in self.name or any(c.isspace() for c in self.name):
            raise TunError(f"TUN device name {self.name!r} contains '/' or white space")
        try:
            fd = self._system.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(self._explain(e, "open")) from e
        vnet = (self.want_gro or self.want_tso) and self._has_vnet_hdr(fd)
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
        try:
            # struct ifreq is host order, not a wire format: "=" rather than "!".
            ifreq = struct.pack("=16sH", encoded, flags).ljust(_IFREQ_SIZE, b"\0")
            result = self._system.ioctl(fd, TUNSETIFF, ifreq)
        except OSError as e:
            self._system.close(fd)
            raise TunError(self._explain(e, "ioctl")) from e
        self.name = result[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        self._fd = fd
        self.vnet = vnet
        self.gro = vnet and self.want_gro
        self.tso = vnet and self.want_tso and self._set_offload(fd, TUN_F_CSUM | TUN_F_TSO4)
        if vnet and not self.tso:
            # Say so explicitly: no partial checksums, no super-packets on read.
            self._set_offload(fd, 0)
        if self.txqueuelen is not None:
            try:
                self._system.set_txqueuelen(self.name, self.txqueuelen)
            except OSError as e:
                self.log.warn(
                    "TUN device {name}: cannot set the queue length to {n}: {err}",
                    name=self.name,
                    n=self.txqueuelen,
                    err=e.strerror,
                )
        self.startReading()
        if self.want_gro or self.want_tso:
            self.log.info(
                "TUN device {name} open; offloads: GRO on write {gro}, TSO on read {tso}",
                name=self.name,
                gro="on" if self.gro else "off",
                tso="on" if self.tso else "off",
            )
        else:
            self.log.info("TUN device {name} open", name=self.name)

    def _has_vnet_hdr(self, fd: int) -> bool:
        """Whether this kernel's TUN driver knows C{IFF_VNET_HDR} (C{TUNGETFEATURES})."""
        try:
            features = struct.unpack("=I", self._system.ioctl(fd, TUNGETFEATURES, bytes(4)))[0]
        except OSError:
            return False
        return bool(features & IFF_VNET_HDR)

    def _set_offload(self, fd: int, offloads: int) -> bool:
        try:
            self._system.ioctl_value(fd, TUNSETOFFLOAD, offloads)
        except OSError:
            return False
        return True

    def _explain(self, e: OSError, step: str) -> str:
        """One sentence for the operator about why creating the device failed."""
        code = e.errno
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            return f"{TUN_PATH} is missing: load the tun module or run where TUN devices exist"
        if code in (errno.EPERM, errno.EACCES):
            return f"creating TUN device {self.name} needs CAP_NET_ADMIN (run as root)"
        if code == errno.EBUSY:
            return f"TUN device {self.name} is already in use by another process"
        if code == errno.EINVAL and step == "ioctl":
            return (
                f"TUN device {self.name} cannot be created: the name is invalid or "
                f"taken by a device of another kind"
            )
        return f"creating TUN device {self.name} failed at {step}: {os.strerror(code or 0)}"

    def startReading(self) -> None:  # noqa: N802 - Twisted's spelling
        """Register with the reactor (done by L{open})."""
        if self._fd is not None and not self._reading:
            self.reactor.addReader(self)
            self._reading = True

    def stopReading(self) -> None:  # noqa: N802 - Twisted's spelling
        """Stop reading (packets queue in the kernel, then are dropped there)."""
        if self._reading:
            self.reactor.removeReader(self)
            self._reading = False

    def close(self) -> None:
        """Stop reading and close the descriptor (the kernel deletes a non-persistent TUN)."""
        self.stopReading()
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                self._system.close(fd)
            except OSError as e:
                self.log.warn("closing TUN device {name}: {err}", name=self.name, err=e.strerror)
            self.log.info("TUN device {name} closed", name=self.name)

    @property
    def is_open(self) -> bool:
        """Whether the device is open."""
        return self._fd is not None

    # -- IReadDescriptor

    def fileno(self) -> int:
        """The descriptor, or -1 once closed."""
        return -1 if self._fd is None else self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's spelling
        """How the reactor names us in its logs."""
        return f"TunDevice({self.name})"

    def doRead(self) -> Failure | None:  # noqa: N802 - Twisted's spelling
        """
        Drain up to C{batch} packets and pass them to C{on_packets} in one call.

        A read error other than "nothing queued" (the device is gone) is
        returned as a L{Failure}: the reactor then calls L{connectionLost}.
        """
        fd = self._fd
        if fd is None:
            return None
        read = self._system.read
        vnet = self.vnet
        size = self.mtu_read + (VNET_HDR_LEN if vnet else 0)
        packets: list[bytes] = []
        append = packets.append
        lost: OSError | None = None
        reads = 0
        for _ in range(self.batch):
            try:
                data = read(fd, size)
            except BlockingIOError:
                break
            except OSError as e:
                lost = e
                break
            if not data:
                break
            reads += 1
            if vnet:
                if data[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM or data[1]:
                    self._unoffload(data, packets)
                    continue
                data = data[VNET_HDR_LEN:]
            append(data)
        counters = self.counters
        if packets:
            counters["rx_packets"] += len(packets)
            counters["rx_bytes"] += sum(map(len, packets))
            counters["rx_batches"] += 1
            if reads == self.batch:
                counters["rx_full_batches"] += 1
            try:
                self.on_packets(packets)
            except Exception:
                # A bug downstream must not unregister the device; log rarely.
                counters["rx_callback_errors"] += 1
                n = counters["rx_callback_errors"]
                if n & (n - 1) == 0:
                    self.log.failure(
                        "error handling packets from {name} ({n} so far)", name=self.name, n=n
                    )
        else:
            counters["rx_empty_wakeups"] += 1
        if lost is not None:
            counters["rx_errors"] += 1
            return Failure(lost)  # type: ignore[no-untyped-call]
        return None

    def _unoffload(self, data: bytes, packets: list[bytes]) -> None:
        """Turn what an offloading kernel handed over into complete IPv4 packets."""
        counters = self.counters
        if len(data) < VNET_HDR_LEN:
            counters["rx_offload_errors"] += 1
            return
        flags, gso_type, _, gso_size, csum_start, csum_offset = _VNET.unpack_from(data)
        packet = data[VNET_HDR_LEN:]
        try:
            if gso_type == VIRTIO_NET_HDR_GSO_TCPV4:
                segments = tso_segments(packet, gso_size)
                counters["rx_super_packets"] += 1
                counters["rx_segments"] += len(segments)
                packets.extend(segments)
                return
            if gso_type == VIRTIO_NET_HDR_GSO_NONE:
                packets.append(complete_checksum(packet, csum_start, csum_offset))
                counters["rx_checksums_completed"] += 1
                return
        except ValueError:
            pass
        # A GSO type never offered, or a header that does not fit the packet.
        counters["rx_offload_errors"] += 1

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's spelling
        """The reactor gave up on us (a read error): close and tell C{on_lost}."""
        was_open = self._fd is not None
        self.close()
        self.log.warn(
            "TUN device {name} lost: {reason}", name=self.name, reason=reason.getErrorMessage()
        )
        if was_open and self.on_lost is not None:
            self.on_lost(reason)

    # -- writing

    def write(self, packet: bytes) -> None:
        """Hand one IP packet to the kernel; a transient failure counts a drop."""
        fd = self._fd
        if fd is None:
            self._drop("closed", None)
            return
        try:
            self._system.write(fd, _ZERO_VNET + packet if self.vnet else packet)
        except OSError as e:
            self._drop(_NAMES.get(e.errno or 0, "error"), e)
            return
        self.counters["tx_packets"] += 1
        self.counters["tx_bytes"] += len(packet)

    def write_many(self, packets: list[bytes]) -> None:
        """
        Hand several IP packets to the kernel, in order.

        Without GRO that is one system call each (TUN has no batch write);
        with it, runs of one TCP connection's segments go as one super-packet.
        """
        fd = self._fd
        if fd is None:
            for _ in packets:
                self._drop("closed", None)
            return
        if self.gro:
            self._write_coalesced(fd, packets)
            return
        write = self._system.write
        zero = _ZERO_VNET if self.vnet else b""
        sent = 0
        size = 0
        for packet in packets:
            try:
                write(fd, zero + packet if zero else packet)
            except OSError as e:
                self._drop(_NAMES.get(e.errno or 0, "error"), e)
                continue
            sent += 1
            size += len(packet)
        self.counters["tx_packets"] += sent
        self.counters["tx_bytes"] += size

    def _write_coalesced(self, fd: int, packets: list[bytes]) -> None:
        write = self._system.write
        counters = self.counters
        n = len(packets)
        sent = 0
        size = 0
        i = 0
        while i < n:
            count = coalesce_tcp(packets, i)
            if count > 1:
                run = packets[i : i + count]
                pieces = join_tcp(run)
                if pieces is not None:
                    try:
                        self._system.writev(fd, pieces)
                    except OSError as e:
                        for _ in run:
                            self._drop(_NAMES.get(e.errno or 0, "error"), e)
                    else:
                        counters["tx_super_packets"] += 1
                        counters["tx_coalesced"] += count
                        sent += count
                        size += sum(map(len, run))
                    i += count
                    continue
                # A checksum is wrong somewhere: let the kernel judge each one.
                counters["tx_gro_bad_checksums"] += 1
            else:
                count = 1
            for packet in packets[i : i + count]:
                try:
                    write(fd, _ZERO_VNET + packet)
                except OSError as e:
                    self._drop(_NAMES.get(e.errno or 0, "error"), e)
                    continue
                sent += 1
                size += len(packet)
            i += count
        counters["tx_packets"] += sent
        counters["tx_bytes"] += size

    def _drop(self, reason: str, error: OSError | None) -> None:
        """Count a dropped packet; warn once per reason for the life of the device."""
        self.counters["tx_dropped"] += 1
        self.counters[f"tx_dropped_{reason}"] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            self.log.warn(
                "TUN device {name} dropped a packet ({reason}: {err}); "
                "further drops of this kind are only counted",
                name=self.name,
                reason=reason,
                err=error.strerror if error is not None else "device closed",
            )
