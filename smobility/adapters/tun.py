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
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

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

    def read(self, fd: int, n: int) -> bytes:
        """Read one packet of at most C{n} bytes; raise C{BlockingIOError} when none is queued."""

    def write(self, fd: int, data: bytes) -> int:
        """Write one packet; return the number of bytes written."""

    def close(self, fd: int) -> None:
        """Close C{fd}."""


class RealTunSystem:
    """L{TunSystem} on the real OS (C{os} and C{fcntl})."""

    def open(self, path: str, flags: int) -> int:
        """C{os.open}."""
        return os.open(path, flags)

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        """C{fcntl.ioctl} with a bytes buffer (copied in and out by the kernel)."""
        return fcntl.ioctl(fd, request, arg)

    def read(self, fd: int, n: int) -> bytes:
        """C{os.read}: one packet per call on a TUN device."""
        return os.read(fd, n)

    def write(self, fd: int, data: bytes) -> int:
        """C{os.write}: one packet per call on a TUN device."""
        return os.write(fd, data)

    def close(self, fd: int) -> None:
        """C{os.close}."""
        os.close(fd)


class _MemoryTun:
    """One device of a L{MemoryTunSystem}."""

    def __init__(self, name: str, flags: int) -> None:
        self.name = name
        self.flags = flags
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
    """

    def __init__(self, *, open_error: int | None = None, ioctl_error: int | None = None) -> None:
        self.open_error = open_error
        self.ioctl_error = ioctl_error
        self.write_errors: collections.deque[int] = collections.deque()
        self.ioctls: list[tuple[int, int, bytes]] = []
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
        device = _MemoryTun(name, flags)
        self._devices[name] = device
        self._fds[fd] = device
        out = bytearray(arg)
        out[:IFNAMSIZ] = name.encode().ljust(IFNAMSIZ, b"\0")
        return bytes(out)

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

    def _device(self, fd: int) -> _MemoryTun:
        device = self._fds.get(fd)
        if device is None:
            raise OSError(errno.EBADFD, os.strerror(errno.EBADFD))
        return device


def _default_reactor() -> IReactorFDSet:
    from twisted.internet import reactor

    return cast(IReactorFDSet, reactor)


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
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.name = name
        self.on_packets = on_packets
        self.on_lost = on_lost
        self.batch = batch
        self.mtu_read = mtu_read
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
            self._reactor = _default_reactor()
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
        try:
            # struct ifreq is host order, not a wire format: "=" rather than "!".
            ifreq = struct.pack("=16sH", encoded, IFF_TUN | IFF_NO_PI).ljust(_IFREQ_SIZE, b"\0")
            result = self._system.ioctl(fd, TUNSETIFF, ifreq)
        except OSError as e:
            self._system.close(fd)
            raise TunError(self._explain(e, "ioctl")) from e
        self.name = result[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        self._fd = fd
        self.startReading()
        self.log.info("TUN device {name} open", name=self.name)

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
        size = self.mtu_read
        packets: list[bytes] = []
        append = packets.append
        lost: OSError | None = None
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
            append(data)
        counters = self.counters
        if packets:
            counters["rx_packets"] += len(packets)
            counters["rx_bytes"] += sum(map(len, packets))
            counters["rx_batches"] += 1
            if len(packets) == self.batch:
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
            self._system.write(fd, packet)
        except OSError as e:
            self._drop(_NAMES.get(e.errno or 0, "error"), e)
            return
        self.counters["tx_packets"] += 1
        self.counters["tx_bytes"] += len(packet)

    def write_many(self, packets: list[bytes]) -> None:
        """Hand several IP packets to the kernel (one syscall each: TUN has no batch write)."""
        fd = self._fd
        if fd is None:
            for _ in packets:
                self._drop("closed", None)
            return
        write = self._system.write
        sent = 0
        size = 0
        for packet in packets:
            try:
                write(fd, packet)
            except OSError as e:
                self._drop(_NAMES.get(e.errno or 0, "error"), e)
                continue
            sent += 1
            size += len(packet)
        self.counters["tx_packets"] += sent
        self.counters["tx_bytes"] += size

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
