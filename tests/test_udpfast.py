"""
Tests for L{smobility.adapters.udpfast}.

The socket tests use real UDP sockets on the loopback interface (no root):
the kernel's GSO and GRO work there as on any interface, so a GSO send is
really one system call and a GRO receive really one buffer. The failure
paths (old kernels, refused sends) use a fake socket.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smobility.adapters.udpfast import (
    GSO_BACKOFF,
    SOL_UDP,
    UDP_GRO,
    UDP_MAX_SEGMENTS,
    UDP_SEGMENT,
    UDPError,
    UDPSocket,
)

Datagram = tuple[bytes, tuple[str, int]]


def _datagram(i: int, size: int) -> bytes:
    """A distinct datagram of C{size} bytes."""
    return i.to_bytes(4, "big") + bytes((i & 0xFF,)) * (size - 4)


class Receiver:
    """A UDPSocket on the loopback that collects what it reads."""

    def __init__(self, testcase: SynchronousTestCase, **kw: Any) -> None:
        self.reactor = MemoryReactor()
        self.batches: list[list[Datagram]] = []
        self.sock = UDPSocket(self.batches.append, reactor=self.reactor, **kw)
        self.sock.listen("127.0.0.1", 0)
        testcase.addCleanup(self.sock.close)
        address = self.sock.address
        assert address is not None
        self.address = address

    def read_all(self, expected: int, rounds: int = 50) -> list[Datagram]:
        """Call doRead until C{expected} datagrams arrived (the loopback is quick, not instant)."""
        got: list[Datagram] = []
        for _ in range(rounds):
            if len(got) >= expected:
                break
            select.select([self.sock.fileno()], [], [], 0.2)
            before = len(self.batches)
            self.sock.doRead()
            for batch in self.batches[before:]:
                got.extend(batch)
        return got


class LoopbackTests(SynchronousTestCase):
    """Real sockets on 127.0.0.1."""

    def setUp(self) -> None:
        self.rx = Receiver(self)
        self.tx = Receiver(self)

    def test_interface(self) -> None:
        """A UDPSocket is an IReadDescriptor registered with its reactor once listening."""
        self.assertTrue(verifyObject(IReadDescriptor, self.rx.sock))
        self.assertIn(self.rx.sock, self.rx.reactor.getReaders())
        self.assertEqual(self.rx.sock.address, self.rx.address)
        self.assertEqual(self.rx.address[0], "127.0.0.1")

    def test_offloads_detected(self) -> None:
        """On this kernel (Linux >= 5.0) both offloads are on."""
        self.assertTrue(self.rx.sock.gro)
        self.assertTrue(self.rx.sock.gso)

    def test_gso_send_gro_receive(self) -> None:
        """Same-size datagrams to one peer go in one GSO send and come back intact, in order."""
        sent = [(_datagram(i, 1200), self.rx.address) for i in range(20)]
        self.tx.sock.send_many(sent)
        self.assertEqual(self.tx.sock.counters["tx_gso_sends"], 1)
        self.assertEqual(self.tx.sock.counters["tx_datagrams"], 20)
        got = self.rx.read_all(20)
        self.assertEqual([d for d, _ in got], [d for d, _ in sent])
        self.assertEqual({a for _, a in got}, {self.tx.address})
        # One buffer from the kernel, split by the segment size it reported.
        self.assertEqual(self.rx.sock.counters["rx_gro_trains"], 1)
        self.assertEqual(self.rx.sock.counters["rx_receives"], 1)
        self.assertEqual(self.rx.sock.counters["rx_datagrams"], 20)

    def test_runs(self) -> None:
        """
        A run ends at another size (a shorter datagram may close it), another
        peer, or the segment limit; the order on the wire is the list's.
        """
        other = Receiver(self)
        sizes = [1000, 1000, 1000, 400, 1000, 1000, 1200, 1200]
        sent = [(_datagram(i, size), self.rx.address) for i, size in enumerate(sizes)]
        sent.insert(5, (_datagram(99, 1000), other.address))
        self.tx.sock.send_many(sent)
        # [1000 x3, 400] [1000] -> other [1000] [1200 x2]
        self.assertEqual(self.tx.sock.counters["tx_gso_sends"], 2)
        self.assertEqual(self.tx.sock.counters["tx_datagrams"], 9)
        got = self.rx.read_all(8)
        self.assertEqual([d for d, _ in got], [d for d, a in sent if a == self.rx.address])
        self.assertEqual([d for d, _ in other.read_all(1)], [_datagram(99, 1000)])

    def test_segment_limits(self) -> None:
        """At most UDP_MAX_SEGMENTS datagrams and 64 KB go in one send."""
        sent = [(_datagram(i, 100), self.rx.address) for i in range(UDP_MAX_SEGMENTS + 10)]
        self.tx.sock.send_many(sent)
        self.assertEqual(self.tx.sock.counters["tx_gso_sends"], 2)
        self.assertEqual(len(self.rx.read_all(len(sent))), len(sent))
        big = [(_datagram(i, 1472), self.rx.address) for i in range(50)]
        self.tx.sock.send_many(big)
        # 65507 // 1472 = 44 per send: 44 + 6.
        self.assertEqual(self.tx.sock.counters["tx_gso_sends"], 4)
        self.assertEqual([d for d, _ in self.rx.read_all(50)], [d for d, _ in big])

    def test_batch_limits(self) -> None:
        """One wake-up stops after `batch` receives or about `max_datagrams` datagrams."""
        rx = Receiver(self, batch=4, max_datagrams=10, gro=False)
        for i in range(12):
            self.tx.sock.write(_datagram(i, 50), rx.address)
        select.select([rx.sock.fileno()], [], [], 1)
        rx.sock.doRead()
        self.assertEqual([len(b) for b in rx.batches], [4])
        got = rx.read_all(8)
        self.assertEqual(len(got), 8)
        self.assertEqual(rx.sock.counters["rx_datagrams"], 12)
        # GRO trains count by their datagrams: the second train passes the limit.
        rx = Receiver(self, max_datagrams=10)
        for n in range(3):
            self.tx.sock.send_many([(_datagram(8 * n + i, 200), rx.address) for i in range(8)])
        select.select([rx.sock.fileno()], [], [], 1)
        rx.sock.doRead()
        self.assertEqual([len(b) for b in rx.batches], [16])
        self.assertEqual(len(rx.read_all(8)), 8)

    def test_empty_wakeup(self) -> None:
        """A wake-up with nothing to read is counted, and the callback is not called."""
        self.rx.sock.doRead()
        self.assertEqual(self.rx.batches, [])
        self.assertEqual(self.rx.sock.counters["rx_empty_wakeups"], 1)

    def test_callback_error(self) -> None:
        """A bug in the callback is counted and logged, never raised to the reactor."""

        def boom(datagrams: list[Datagram]) -> None:
            raise RuntimeError("bug")

        sock = UDPSocket(boom, reactor=MemoryReactor())
        sock.listen("127.0.0.1", 0)
        self.addCleanup(sock.close)
        assert sock.address is not None
        self.tx.sock.write(b"x" * 20, sock.address)
        select.select([sock.fileno()], [], [], 1)
        sock.doRead()
        self.assertEqual(sock.counters["rx_callback_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bind_error(self) -> None:
        """A taken port raises UDPError naming the address, with the OSError."""
        sock = UDPSocket(print, reactor=MemoryReactor())
        e = self.assertRaises(UDPError, sock.listen, "127.0.0.1", self.rx.address[1])
        self.assertIn(f"cannot bind UDP 127.0.0.1:{self.rx.address[1]}", str(e))
        self.assertEqual(e.socket_error.errno, errno.EADDRINUSE)
        self.assertEqual(sock.fileno(), -1)

    def test_close(self) -> None:
        """close() unregisters and closes; twice is fine; sending afterwards is counted."""
        sock = self.rx.sock
        sock.close()
        self.assertNotIn(sock, self.rx.reactor.getReaders())
        self.assertEqual(sock.fileno(), -1)
        sock.close()
        sock.send_many([(b"x", ("127.0.0.1", 9))])
        self.assertEqual(sock.counters["send_dropped_closed"], 1)


class FakeSocket:
    """Just enough of a socket for the fallback paths."""

    def __init__(self, *, refuse: set[int] = frozenset(), sendmsg_error: int | None = None) -> None:
        self.refuse = refuse
        self.sendmsg_error = sendmsg_error
        self.sendto_error: int | None = None
        self.options: dict[tuple[int, int], int] = {}
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.sendmsgs: list[tuple[list[bytes], Any]] = []
        self.received: list[tuple[bytes, list[tuple[int, int, bytes]], int, tuple[str, int]]] = []
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        self.address = address

    def getsockname(self) -> tuple[str, int]:
        return self.address

    def fileno(self) -> int:
        return 42

    def setsockopt(self, level: int, name: int, value: int) -> None:
        if name in self.refuse:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        self.options[(level, name)] = value

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self.sendto_error is not None:
            raise OSError(self.sendto_error, "fail")
        self.sent.append((data, address))
        return len(data)

    def sendmsg(self, buffers: list[bytes], ancillary: Any, flags: int, address: Any) -> int:
        if self.sendmsg_error is not None:
            raise OSError(self.sendmsg_error, "fail")
        self.sendmsgs.append((buffers, ancillary))
        return sum(map(len, buffers))

    def recvmsg(self, size: int, cspace: int) -> Any:
        if not self.received:
            raise BlockingIOError(errno.EAGAIN, "again")
        return self.received.pop(0)

    def close(self) -> None:
        self.closed = True


class FallbackTests(SynchronousTestCase):
    """Kernels without the offloads, and sends the route refuses."""

    def open(self, fake: FakeSocket, **kw: Any) -> tuple[UDPSocket, list[list[Datagram]]]:
        batches: list[list[Datagram]] = []
        sock = UDPSocket(batches.append, reactor=MemoryReactor(), make_socket=lambda: fake, **kw)
        sock.listen("127.0.0.1", 4500)
        return sock, batches

    def test_old_kernel(self) -> None:
        """Without UDP_GRO and UDP_SEGMENT: both off, said once; datagrams go one by one."""
        fake = FakeSocket(refuse={UDP_GRO, UDP_SEGMENT})
        sock, _ = self.open(fake)
        self.assertFalse(sock.gro)
        self.assertFalse(sock.gso)
        sent = [(b"a" * 100, ("10.0.0.1", 4500))] * 3
        sock.send_many(sent)
        self.assertEqual(fake.sent, sent)
        self.assertEqual(fake.sendmsgs, [])

    def test_offloads_off_by_request(self) -> None:
        """gro=False and gso=False are honoured without asking the kernel."""
        fake = FakeSocket()
        sock, _ = self.open(fake, gro=False, gso=False)
        self.assertFalse(sock.gro or sock.gso)
        self.assertNotIn((SOL_UDP, UDP_GRO), fake.options)

    def test_gso_message(self) -> None:
        """A GSO send is one sendmsg with the segment size as a UDP_SEGMENT message."""
        fake = FakeSocket()
        sock, _ = self.open(fake)
        self.assertEqual(fake.options[(SOL_UDP, UDP_GRO)], 1)
        sock.send_many([(b"a" * 100, ("10.0.0.1", 4500)), (b"b" * 60, ("10.0.0.1", 4500))])
        [(buffers, ancillary)] = fake.sendmsgs
        self.assertEqual(buffers, [b"a" * 100, b"b" * 60])
        self.assertEqual(ancillary, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 100))])

    def test_gso_refused(self) -> None:
        """EINVAL from a GSO send (MTU below the segment size): each datagram goes alone."""
        fake = FakeSocket(sendmsg_error=errno.EINVAL)
        sock, _ = self.open(fake)
        sent = [(bytes((i,)) * 100, ("10.0.0.1", 4500)) for i in range(3)]
        sock.send_many(sent)
        self.assertEqual(fake.sent, sent)
        self.assertEqual(sock.counters["tx_gso_refused"], 1)
        self.assertEqual(sock.counters["tx_datagrams"], 3)
        # GSO rests for a while (no failing call per batch), then is tried again.
        fake.sendmsg_error = None
        for _ in range(GSO_BACKOFF):
            sock.send_many(sent)
        self.assertEqual(fake.sendmsgs, [])
        self.assertEqual(len(fake.sent), 3 * (GSO_BACKOFF + 1))
        sock.send_many(sent)
        self.assertEqual(len(fake.sendmsgs), 1)

    def test_send_errors_counted(self) -> None:
        """No route while moving: the datagrams are counted as dropped, nothing raises."""
        fake = FakeSocket(sendmsg_error=errno.ENETUNREACH)
        fake.sendto_error = errno.ENETUNREACH
        sock, _ = self.open(fake)
        sock.send_many([(b"a" * 100, ("10.0.0.1", 4500))] * 3)
        sock.write(b"x", ("10.0.0.1", 4500))
        self.assertEqual(sock.counters["send_dropped_unreachable"], 4)
        self.assertEqual(sock.counters["send_dropped"], 4)
        self.assertEqual(sock.counters["tx_datagrams"], 0)

    def test_truncated_and_errors(self) -> None:
        """A truncated datagram and a queued ICMP error are counted, the rest delivered."""
        fake = FakeSocket()
        refused: list[None] = []
        sock, batches = self.open(fake, on_refused=lambda: refused.append(None))
        peer = ("10.0.0.1", 4500)
        fake.received = [(b"a" * 10, [], socket.MSG_TRUNC, peer), (b"b" * 10, [], 0, peer)]
        sock.doRead()
        self.assertEqual(batches, [[(b"b" * 10, peer)]])
        self.assertEqual(sock.counters["rx_truncated"], 1)

        class Refusing(FakeSocket):
            calls = 0

            def recvmsg(self, size: int, cspace: int) -> Any:
                self.calls += 1
                if self.calls == 1:
                    raise OSError(errno.ECONNREFUSED, "refused")
                return super().recvmsg(size, cspace)

        fake2 = Refusing()
        sock2, batches2 = self.open(fake2, on_refused=lambda: refused.append(None))
        fake2.received = [(b"c" * 10, [], 0, peer)]
        sock2.doRead()
        self.assertEqual(batches2, [[(b"c" * 10, peer)]])
        self.assertEqual(sock2.counters["rx_error_ECONNREFUSED"], 1)
        self.assertEqual(len(refused), 1)

    def test_gro_train_split(self) -> None:
        """A GRO buffer is split at the reported size; the last piece may be shorter."""
        fake = FakeSocket()
        sock, batches = self.open(fake)
        peer = ("10.0.0.1", 4500)
        train = b"a" * 100 + b"b" * 100 + b"c" * 30
        cmsg = [(SOL_UDP, UDP_GRO, struct.pack("=i", 100))]
        fake.received = [(train, cmsg, 0, peer), (b"d" * 100, cmsg, 0, peer)]
        sock.doRead()
        self.assertEqual(
            batches,
            [[(b"a" * 100, peer), (b"b" * 100, peer), (b"c" * 30, peer), (b"d" * 100, peer)]],
        )
        self.assertEqual(sock.counters["rx_gro_trains"], 1)
