# -*- test-case-name: tests.test_ipip -*-
"""
Tests for L{smobility.adapters.ipip}: UDP datagrams IP in IP over raw sockets.

L{FakeSocketTests} drive an L{IPIPSocket} over a fake raw socket and a
memory reactor (no root): filtering, counters, warnings, send failures.

L{NamespaceTests} are real-world tests (root, C{ip}, C{dumpcap}, C{tshark}):
two network namespaces joined by a veth pair, one L{IPIPSocket} in each,
opened by entering the namespace from the test process for the moment the
socket is created (a socket keeps the namespace it was made in), and the
real reactor. They also pin what this kernel (no ipip module) does with
protocol 4: it hands packets to raw sockets, and answers with ICMP
protocol unreachable only while no raw socket of protocol 4 is open.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from typing import Any, cast

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from smobility.adapters.ipip import WARN_INTERVAL, IPIPError, IPIPSocket, Received
from smobility.wire import mip
from smobility.wire.ipip import MAX_PAYLOAD, encapsulate, parse_udp_packet, udp_packet
from tests.util import require_root, require_tool

LOCAL = "203.0.113.20"
PEER = "198.51.100.7"
OTHER = "192.0.2.66"


def _b(address: str) -> bytes:
    return socket.inet_aton(address)


def wrapped(
    payload: bytes,
    *,
    outer_src: str = PEER,
    inner_src: str | None = None,
    inner_dst: str = LOCAL,
    sport: int = 4500,
    dport: int = 4500,
) -> bytes:
    """A protocol-4 packet as a raw socket reads it: outer header, inner IPv4, UDP."""
    inner = udp_packet(_b(inner_src or outer_src), sport, _b(inner_dst), dport, payload)
    return encapsulate(_b(outer_src), _b(LOCAL), inner)


class FakeRawSocket:
    """Enough of a non-blocking raw socket: queued receives, recorded sends, scripted errors."""

    def __init__(self) -> None:
        self.inbox: deque[bytes | OSError] = deque()
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.send_errors: deque[OSError | None] = deque()
        self.bind_error: OSError | None = None
        self.bound: tuple[str, int] | None = None
        self.blocking = True
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def bind(self, address: tuple[str, int]) -> None:
        if self.bind_error is not None:
            raise self.bind_error
        self.bound = address

    def setsockopt(self, *args: Any) -> None:
        pass

    def fileno(self) -> int:
        return 1000

    def recv(self, size: int) -> bytes:
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "would block")
        item = self.inbox.popleft()
        if isinstance(item, OSError):
            raise item
        return item[:size]

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self.send_errors:
            error = self.send_errors.popleft()
            if error is not None:
                raise error
        self.sent.append((data, address))
        return len(data)

    def close(self) -> None:
        self.closed = True


class FakeSocketTests(SynchronousTestCase):
    """An IPIPSocket over a fake raw socket and a memory reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.raw = FakeRawSocket()
        self.batches: list[list[Received]] = []
        self.unreachable: list[tuple[str, int]] = []
        self.events: list[dict[str, Any]] = []
        self.sock = self.make()

    def make(self, **kw: Any) -> IPIPSocket:
        """An open IPIPSocket on LOCAL with PEER as its peer, logging into self.events."""
        options: dict[str, Any] = dict(
            local=LOCAL,
            peers=[PEER],
            on_datagrams=self.batches.append,
            reactor=self.reactor,
            on_unreachable=lambda dst, code: self.unreachable.append((dst, code)),
            make_socket=lambda: self.raw,
        )
        options.update(kw)
        sock = IPIPSocket(**options)
        sock.log = Logger(observer=cast(ILogObserver, self.events.append))
        sock.open()
        self.addCleanup(sock.close)
        return sock

    def received(self) -> list[Received]:
        return [d for batch in self.batches for d in batch]

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"].name == "warn"]

    # -- life cycle

    def test_reader_life_cycle(self) -> None:
        """open binds non-blocking to the local address and registers; close undoes it, twice."""
        self.assertTrue(verifyObject(IReadDescriptor, self.sock))
        self.assertEqual(self.raw.bound, (LOCAL, 0))
        self.assertFalse(self.raw.blocking)
        self.assertIn(self.sock, self.reactor.getReaders())
        self.assertEqual(self.sock.fileno(), 1000)
        self.sock.close()
        self.sock.close()
        self.assertTrue(self.raw.closed)
        self.assertNotIn(self.sock, self.reactor.getReaders())
        self.assertEqual(self.sock.fileno(), -1)
        self.sock.doRead()  # harmless once closed

    def test_no_bind(self) -> None:
        """bind=False leaves the socket unbound."""
        self.sock.close()
        self.raw = FakeRawSocket()
        self.make(bind=False)
        self.assertIsNone(self.raw.bound)

    def test_open_needs_root(self) -> None:
        """EPERM from socket() becomes one sentence naming root and CAP_NET_RAW."""

        def refuse() -> socket.socket:
            raise PermissionError(errno.EPERM, "Operation not permitted")

        sock = IPIPSocket(
            local=LOCAL, peers=[], on_datagrams=self.batches.append, reactor=self.reactor,
            make_socket=refuse,
        )  # fmt: skip
        error = self.assertRaises(IPIPError, sock.open)
        self.assertEqual(str(error), "cannot open a raw IP-in-IP socket: needs root (CAP_NET_RAW)")
        self.assertEqual(error.socket_error.errno, errno.EPERM)
        self.assertFalse(sock.is_open)

    def test_open_bind_fails(self) -> None:
        """An address this host does not have is named, and the socket closed."""
        self.sock.close()
        self.raw = FakeRawSocket()
        self.raw.bind_error = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        error = self.assertRaises(IPIPError, self.make)
        self.assertIn(f"cannot bind the IP-in-IP socket to {LOCAL}", str(error))
        self.assertIn("no interface of this host has that address", str(error))
        self.assertTrue(self.raw.closed)

    def test_bad_addresses(self) -> None:
        """A local address or peer that is not IPv4 is a ValueError; set_peers changes nothing."""
        self.assertRaises(
            ValueError, IPIPSocket, local="home", peers=[], on_datagrams=self.batches.append
        )
        self.assertRaises(ValueError, self.sock.set_peers, [OTHER, "::1"])
        self.assertEqual(self.sock.peers, frozenset({PEER}))
        self.assertRaises(ValueError, IPIPSocket, local=LOCAL, peers=[], on_datagrams=print,
                          max_batch=0)  # fmt: skip

    # -- receiving

    def test_accepts_peer_datagram(self) -> None:
        """A good packet from a peer reaches on_datagrams as (dport, payload, (src, sport))."""
        packet = wrapped(b"registration", sport=434, dport=434)
        self.raw.inbox.append(packet)
        self.sock.doRead()
        self.assertEqual(self.batches, [[(434, b"registration", (PEER, 434))]])
        self.assertEqual(self.sock.counters["packets_in"], 1)
        self.assertEqual(self.sock.counters["bytes_in"], len(packet))
        self.assertEqual(self.sock.counters["datagrams_in"], 1)

    def test_batches(self) -> None:
        """At most max_batch packets per wake-up, handed over in one list."""
        self.sock.close()
        self.raw = FakeRawSocket()
        sock = self.make(max_batch=3)
        for i in range(5):
            self.raw.inbox.append(wrapped(bytes([i])))
        sock.doRead()
        sock.doRead()
        sock.doRead()
        self.assertEqual([len(b) for b in self.batches], [3, 2])
        self.assertEqual([p for _, p, _ in self.received()], [bytes([i]) for i in range(5)])
        self.assertEqual(sock.counters["rx_empty_wakeups"], 1)

    def test_unknown_peer_dropped_and_warned_rarely(self) -> None:
        """Packets from non-peers are counted; a warning names the source at most every 10 s."""
        for _ in range(3):
            self.raw.inbox.append(wrapped(b"x", outer_src=OTHER))
        self.sock.doRead()
        self.assertEqual(self.received(), [])
        self.assertEqual(self.sock.counters["dropped_unknown_peer"], 3)
        self.assertEqual(len(self.warnings()), 1)
        self.assertEqual(self.warnings()[0]["source"], OTHER)
        self.reactor.advance(WARN_INTERVAL - 1)
        self.raw.inbox.append(wrapped(b"x", outer_src=OTHER))
        self.sock.doRead()
        self.assertEqual(len(self.warnings()), 1)
        self.reactor.advance(1)
        self.raw.inbox.append(wrapped(b"x", outer_src="192.0.2.67"))
        self.sock.doRead()
        self.assertEqual(len(self.warnings()), 2)
        self.assertEqual(self.warnings()[1]["source"], "192.0.2.67")
        self.assertEqual(self.sock.counters["dropped_unknown_peer"], 5)

    def test_set_peers(self) -> None:
        """After set_peers the old peer is unknown and the new one accepted."""
        self.sock.set_peers([OTHER])
        self.raw.inbox.extend([wrapped(b"old"), wrapped(b"new", outer_src=OTHER)])
        self.sock.doRead()
        self.assertEqual(self.received(), [(4500, b"new", (OTHER, 4500))])
        self.assertEqual(self.sock.counters["dropped_unknown_peer"], 1)

    def test_malformed(self) -> None:
        """Short packets, bad outer headers and bad inner packets from a peer are malformed."""
        good = wrapped(b"payload")
        bad_udp = bytearray(good)
        bad_udp[-1] ^= 0xFF  # the UDP checksum no longer matches
        not_udp = encapsulate(_b(PEER), _b(LOCAL), b"\x45" + bytes(19))
        bad_outer = bytearray(good)
        bad_outer[9] = 17  # outer protocol is not 4 (and the header checksum is off)
        self.raw.inbox.extend([b"\x45\x00", bytes(bad_udp), not_udp, bytes(bad_outer), good])
        self.sock.doRead()
        self.assertEqual(self.sock.counters["malformed"], 4)
        self.assertEqual(self.received(), [(4500, b"payload", (PEER, 4500))])

    def test_spoofed_inner_source(self) -> None:
        """An inner source other than the outer one is dropped and counted."""
        self.raw.inbox.append(wrapped(b"x", inner_src=OTHER))
        self.sock.doRead()
        self.assertEqual(self.received(), [])
        self.assertEqual(self.sock.counters["dropped_spoofed_inner"], 1)

    def test_wrong_inner_destination(self) -> None:
        """An inner destination other than the local address is dropped and counted."""
        self.raw.inbox.append(wrapped(b"x", inner_dst=OTHER))
        self.sock.doRead()
        self.assertEqual(self.received(), [])
        self.assertEqual(self.sock.counters["dropped_wrong_destination"], 1)

    def test_receive_errors_counted(self) -> None:
        """An error from recv is counted and reading goes on."""
        self.raw.inbox.extend([OSError(errno.EHOSTUNREACH, "No route"), wrapped(b"after")])
        self.sock.doRead()
        self.assertEqual(self.sock.counters["rx_error_EHOSTUNREACH"], 1)
        self.assertEqual(self.received(), [(4500, b"after", (PEER, 4500))])

    def test_callback_error_counted(self) -> None:
        """An exception in on_datagrams is counted and logged, never raised to the reactor."""

        def broken(datagrams: list[Received]) -> None:
            raise RuntimeError("bug")

        self.sock.on_datagrams = broken
        self.raw.inbox.append(wrapped(b"x"))
        self.sock.doRead()
        self.assertEqual(self.sock.counters["rx_callback_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)  # logged to our observer
        self.assertTrue(any(e["log_level"].name == "critical" for e in self.events))

    # -- sending

    def test_send(self) -> None:
        """send builds the inner packet from the local address and sends it to (dst, 0)."""
        self.sock.send(b"hello", 4500, PEER, 4501)
        [(packet, address)] = self.raw.sent
        self.assertEqual(address, (PEER, 0))
        self.assertEqual(parse_udp_packet(packet), (_b(LOCAL), 4500, _b(PEER), 4501, b"hello"))
        self.assertEqual(self.sock.counters["packets_out"], 1)
        self.assertEqual(self.sock.counters["bytes_out"], len(packet) + 20)

    def test_send_many_identifications(self) -> None:
        """send_many sends in order, each inner packet with the next identification."""
        self.sock.send_many([(bytes([i]), 434, PEER, 434) for i in range(3)])
        self.assertEqual([p[-1] for p, _ in self.raw.sent], [0, 1, 2])
        idents = [int.from_bytes(p[4:6], "big") for p, _ in self.raw.sent]
        self.assertEqual(idents, [idents[0], idents[0] + 1, idents[0] + 2])

    def test_send_errors_counted_never_raised(self) -> None:
        """Send failures are counted per errno; unreachable ones are reported; the rest go on."""
        self.raw.send_errors.extend(
            [
                OSError(errno.EAGAIN, "Resource temporarily unavailable"),
                OSError(errno.ENOBUFS, "No buffer space available"),
                OSError(errno.EHOSTUNREACH, "No route to host"),
                OSError(errno.ENETUNREACH, "Network is unreachable"),
                None,
            ]
        )
        self.sock.send_many([(b"x", 1, PEER, 2)] * 4 + [(b"ok", 1, OTHER, 2)])
        counters = self.sock.counters
        self.assertEqual(counters["send_errors"], 4)
        self.assertEqual(counters["send_error_EAGAIN"], 1)
        self.assertEqual(counters["send_error_ENOBUFS"], 1)
        self.assertEqual(counters["send_error_EHOSTUNREACH"], 1)
        self.assertEqual(counters["send_error_ENETUNREACH"], 1)
        self.assertEqual(counters["packets_out"], 1)
        self.assertEqual(self.unreachable, [(PEER, errno.EHOSTUNREACH), (PEER, errno.ENETUNREACH)])
        self.assertEqual(len(self.raw.sent), 1)
        # One warning per kind of failure, not per packet.
        self.raw.send_errors.append(OSError(errno.EAGAIN, "Resource temporarily unavailable"))
        before = len(self.warnings())
        self.sock.send(b"x", 1, PEER, 2)
        self.assertEqual(len(self.warnings()), before)

    def test_send_invalid_counted(self) -> None:
        """A datagram that cannot be encoded is counted, not raised, and the others go out."""
        self.sock.send_many(
            [
                (b"x", 1, "not-an-address", 2),
                (b"x", 70000, PEER, 2),
                (b"\0" * (MAX_PAYLOAD + 100), 1, PEER, 2),
                (b"fine", 1, PEER, 2),
            ]
        )
        self.assertEqual(self.sock.counters["send_invalid"], 3)
        self.assertEqual(len(self.raw.sent), 1)

    def test_send_when_closed(self) -> None:
        """Sending on a closed socket is counted."""
        self.sock.close()
        self.sock.send(b"x", 1, PEER, 2)
        self.assertEqual(self.sock.counters["send_dropped_closed"], 1)


# -- real namespaces

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in the network namespace C{name}, then come back."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


def run(*argv: str) -> str:
    """Run a command, raising with its output when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> Deferred[None]:
    """A Deferred that fires once C{predicate()} holds, polled on the real reactor."""

    @inlineCallbacks
    def poll() -> Any:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            yield task.deferLater(reactor, 0.01, lambda: None)

    result: Deferred[None] = poll()
    return result


class NamespaceTests(TestCase):
    """Two namespaces, a veth pair, an IPIPSocket in each, the real reactor."""

    timeout = 60

    def setUp(self) -> None:
        require_root(self)
        self.ip = require_tool(self, "ip")
        tag = "smoipip" + secrets.token_hex(3)
        self.relay_ns = tag + "a"
        self.home_ns = tag + "b"
        self.relay_if = tag + "0"
        self.home_if = tag + "1"
        net = f"10.201.{secrets.randbelow(256)}"
        self.relay_addr = f"{net}.1"
        self.home_addr = f"{net}.2"
        self.stranger_addr = f"{net}.3"
        for ns in (self.relay_ns, self.home_ns):
            run(self.ip, "netns", "add", ns)
            self.addCleanup(run, self.ip, "netns", "del", ns)
        run(
            self.ip, "link", "add", self.relay_if, "netns", self.relay_ns,
            "type", "veth", "peer", "name", self.home_if, "netns", self.home_ns,
        )  # fmt: skip
        for ns, dev, addrs in (
            (self.relay_ns, self.relay_if, (self.relay_addr, self.stranger_addr)),
            (self.home_ns, self.home_if, (self.home_addr,)),
        ):
            for addr in addrs:
                run(self.ip, "-n", ns, "addr", "add", f"{addr}/24", "dev", dev, "nodad")
            run(self.ip, "-n", ns, "link", "set", dev, "up")
            run(self.ip, "-n", ns, "link", "set", "lo", "up")
        self.relay_got: list[Received] = []
        self.home_got: list[Received] = []

    def open_in(self, ns: str, sock: IPIPSocket) -> IPIPSocket:
        """Open C{sock} inside namespace C{ns}; closed at cleanup."""
        with in_netns(ns):
            sock.open()
        self.addCleanup(sock.close)
        return sock

    def raw_in(self, ns: str, proto: int, bind: str | None = None) -> socket.socket:
        """A plain raw socket of C{proto} made inside C{ns}; closed at cleanup."""
        with in_netns(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
        self.addCleanup(sock.close)
        sock.setblocking(False)
        if bind is not None:
            sock.bind((bind, 0))
        return sock

    def relay(self) -> IPIPSocket:
        sock = IPIPSocket(
            local=self.relay_addr, peers=[self.home_addr], on_datagrams=self.relay_got.extend
        )
        return self.open_in(self.relay_ns, sock)

    def home(self) -> IPIPSocket:
        sock = IPIPSocket(
            local=self.home_addr, peers=[self.relay_addr], on_datagrams=self.home_got.extend
        )
        return self.open_in(self.home_ns, sock)

    def test_socket_stays_in_its_namespace(self) -> None:
        """The test process is back in its own namespace after opening a socket elsewhere."""
        before = os.stat("/proc/thread-self/ns/net").st_ino
        relay = self.relay()
        self.assertEqual(os.stat("/proc/thread-self/ns/net").st_ino, before)
        self.assertTrue(relay.is_open)
        elsewhere = IPIPSocket(local=self.home_addr, peers=[], on_datagrams=print)
        with in_netns(self.relay_ns):  # the relay's namespace has no such address
            error = self.assertRaises(IPIPError, elsewhere.open)
        self.assertIn("no interface of this host has that address", str(error))

    @inlineCallbacks
    def test_exchange_both_ways(self) -> Any:
        """Datagrams go relay -> home and back, small, MTU-sized and kernel-fragmented."""
        relay, home = self.relay(), self.home()
        big = bytes(range(256)) * 12  # 3072 bytes: the outer packet is fragmented
        relay.send_many(
            [
                (b"registration request", 434, self.home_addr, 434),
                (b"\0" * 1400, 4500, self.home_addr, 4500),
                (big, 4500, self.home_addr, 4500),
            ]
        )
        yield wait_for(lambda: len(self.home_got) == 3, "three datagrams at home")
        self.assertEqual(
            self.home_got,
            [
                (434, b"registration request", (self.relay_addr, 434)),
                (4500, b"\0" * 1400, (self.relay_addr, 4500)),
                (4500, big, (self.relay_addr, 4500)),
            ],
        )
        home.send(b"registration reply", 434, self.relay_addr, 434)
        yield wait_for(lambda: len(self.relay_got) == 1, "the reply at the relay")
        self.assertEqual(self.relay_got, [(434, b"registration reply", (self.home_addr, 434))])
        self.assertEqual(relay.counters["packets_out"], 3)
        self.assertEqual(home.counters["packets_in"], 3)
        self.assertEqual(home.counters["send_errors"] + relay.counters["send_errors"], 0)
        for counter in ("malformed", "dropped_unknown_peer", "dropped_spoofed_inner"):
            self.assertEqual(home.counters[counter] + relay.counters[counter], 0)

    @inlineCallbacks
    def test_non_peer_dropped(self) -> Any:
        """Protocol 4 from an address that is not a peer is dropped and counted."""
        self.relay()
        home = self.home()
        stranger = IPIPSocket(local=self.stranger_addr, peers=[self.home_addr], on_datagrams=print)
        self.open_in(self.relay_ns, stranger)
        stranger.send(b"let me in", 4500, self.home_addr, 4500)
        yield wait_for(lambda: home.counters["dropped_unknown_peer"] == 1, "the drop")
        self.assertEqual(self.home_got, [])
        self.assertEqual(home.counters["packets_in"], 1)

    @inlineCallbacks
    def test_spoofed_inner_dropped(self) -> Any:
        """A peer's packet with another inner source, or another inner destination, is dropped."""
        relay = self.relay()
        home = self.home()
        raw = self.raw_in(self.relay_ns, 4, bind=self.relay_addr)
        home_b, relay_b, stranger_b = (
            _b(self.home_addr), _b(self.relay_addr), _b(self.stranger_addr),
        )  # fmt: skip
        raw.sendto(udp_packet(stranger_b, 4500, home_b, 4500, b"spoofed"), (self.home_addr, 0))
        raw.sendto(udp_packet(relay_b, 4500, _b("10.9.9.9"), 4500, b"elsewhere"),
                   (self.home_addr, 0))  # fmt: skip
        raw.sendto(b"\x45garbage-not-a-packet", (self.home_addr, 0))
        relay.send(b"genuine", 4500, self.home_addr, 4500)
        yield wait_for(lambda: len(self.home_got) == 1, "the genuine datagram")
        yield wait_for(lambda: home.counters["packets_in"] == 4, "all four packets")
        self.assertEqual(self.home_got, [(4500, b"genuine", (self.relay_addr, 4500))])
        self.assertEqual(home.counters["dropped_spoofed_inner"], 1)
        self.assertEqual(home.counters["dropped_wrong_destination"], 1)
        self.assertEqual(home.counters["malformed"], 1)

    @inlineCallbacks
    def test_kernel_protocol_unreachable_only_without_listener(self) -> Any:
        """
        This kernel (no ipip) answers protocol 4 with ICMP 3/2 while no raw socket
        of protocol 4 listens, and delivers to the raw socket without ICMP once one does.
        """
        relay = self.relay()
        icmp = self.raw_in(self.relay_ns, socket.IPPROTO_ICMP)
        got: list[bytes] = []

        def read_icmp() -> bool:
            try:
                got.append(icmp.recv(65535))
            except BlockingIOError:
                pass
            return bool(got)

        relay.send(b"anyone?", 4500, self.home_addr, 4500)
        yield wait_for(read_icmp, "ICMP protocol unreachable")
        message = got[0]
        hlen = (message[0] & 0x0F) * 4
        self.assertEqual((message[hlen], message[hlen + 1]), (3, 2))
        self.assertEqual(socket.inet_ntoa(message[12:16]), self.home_addr)
        quoted = message[hlen + 8 :]
        self.assertEqual(quoted[9], 4)  # the quoted packet is our protocol-4 packet

        self.home()
        got.clear()
        relay.send(b"now?", 4500, self.home_addr, 4500)
        yield wait_for(lambda: len(self.home_got) == 1, "delivery to the raw socket")
        yield task.deferLater(reactor, 0.3, lambda: None)
        read_icmp()
        self.assertEqual(got, [])

    @inlineCallbacks
    def test_tshark_decodes_ip_in_ip(self) -> Any:
        """A capture on the link decodes as IPv4 protocol 4 carrying IPv4/UDP, nothing malformed."""
        dumpcap = require_tool(self, "dumpcap")
        tshark = require_tool(self, "tshark")
        relay, home = self.relay(), self.home()
        capture = os.path.abspath(self.mktemp()) + ".pcapng"
        os.makedirs(os.path.dirname(capture), exist_ok=True)
        proc = subprocess.Popen(
            [self.ip, "netns", "exec", self.home_ns, dumpcap, "-q", "-i", self.home_if,
             "-f", "ip", "-w", capture],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(self._stop, proc)
        yield wait_for(
            lambda: os.path.exists(capture) and os.path.getsize(capture) > 0,
            "dumpcap to start",
            timeout=15,
        )
        yield task.deferLater(reactor, 0.5, lambda: None)
        request = mip.encode(
            mip.RegistrationRequest(
                flags=0,
                lifetime=1800,
                home_address=IPv4Address("10.77.0.5"),
                home_agent=IPv4Address(self.home_addr),
                care_of_address=IPv4Address(self.relay_addr),
                identification=0x0102030405060708,
            )
        )
        relay.send(request, 434, self.home_addr, 434)
        # ESP in UDP (RFC 3948): SPI, sequence number, then what looks like ciphertext.
        relay.send(b"\x01\x02\x03\x04\x00\x00\x00\x01" + b"E" * 100, 4500, self.home_addr, 4500)
        yield wait_for(lambda: len(self.home_got) == 2, "two datagrams at home")
        home.send(b"\xff", 4500, self.relay_addr, 4500)
        yield wait_for(lambda: len(self.relay_got) == 1, "the reply at the relay")
        yield task.deferLater(reactor, 0.5, lambda: None)
        self._stop(proc)

        fields = run(
            tshark, "-r", capture, "-T", "fields", "-E", "separator=;",
            "-e", "ip.proto", "-e", "ip.src", "-e", "ip.dst", "-e", "udp.dstport",
        )  # fmt: skip
        lines = [line for line in fields.splitlines() if line.strip()]
        self.assertEqual(len(lines), 3, fields)
        relay_home = f"{self.relay_addr},{self.relay_addr};{self.home_addr},{self.home_addr}"
        home_relay = f"{self.home_addr},{self.home_addr};{self.relay_addr},{self.relay_addr}"
        self.assertEqual(
            lines,
            [f"4,17;{relay_home};434", f"4,17;{relay_home};4500", f"4,17;{home_relay};4500"],
        )
        malformed = run(
            tshark, "-r", capture, "-Y", '_ws.malformed || _ws.expert.severity >= "Warning"'
        )
        self.assertEqual(malformed.strip(), "")
        verbose = run(tshark, "-r", capture, "-V", "-o", "udp.check_checksum:TRUE",
                      "-o", "ip.check_checksum:TRUE")  # fmt: skip
        self.assertIn("Protocol: IPIP (4)", verbose)
        self.assertIn("User Datagram Protocol", verbose)
        self.assertIn("Mobile IP", verbose)
        self.assertIn("Encapsulating Security Payload", verbose)
        self.assertNotIn("[Bad]", verbose)
        self.assertNotIn("incorrect", verbose.lower())

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop the capture we started, by its PID, and reap it."""
        if proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
