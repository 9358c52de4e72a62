# -*- test-case-name: tests.test_tun -*-
"""
Tests for L{smobility.adapters.tun}.

Most run on a L{MemoryTunSystem} without root. L{RealTunTests} creates a
real TUN device inside a network namespace made for the test; the test
logic runs in a child process entered with C{ip netns exec}, so the trial
process itself never leaves the root namespace.
"""

from __future__ import annotations

import errno
import json
import os
import random
import string
import struct
import subprocess
import sys

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smobility.adapters.tun import (
    IFF_NO_PI,
    IFF_TUN,
    TUNSETIFF,
    MemoryTunSystem,
    TunDevice,
    TunError,
)
from tests.procs import env
from tests.util import PREFIX, find_tool, require_root, require_tool

# -- helpers for the real-world tests (also used by tests.test_netlink)


def namespace_name() -> str:
    """A fresh namespace name: the project prefix, "t", and random letters."""
    return PREFIX + "t" + "".join(random.choices(string.ascii_lowercase, k=6))


def make_namespace(testcase: SynchronousTestCase) -> str:
    """
    Create a network namespace for C{testcase}, deleted in its cleanup (also on failure).

    Skips (fails under CI) without root or without C{ip}.
    """
    require_root(testcase)
    ip = require_tool(testcase, "ip")
    name = namespace_name()
    subprocess.run([ip, "netns", "add", name], check=True, capture_output=True)
    testcase.addCleanup(
        subprocess.run, [ip, "netns", "delete", name], check=False, capture_output=True
    )
    return name


def run_in_namespace(ns: str, script: str, *args: str, timeout: float = 30.0) -> dict:
    """
    Run C{script} with the test's Python inside C{ns}; return the JSON of its last line.

    C{args} become C{sys.argv[1:]}. A non-zero exit or a missing result
    raises C{AssertionError} with everything the child printed.
    """
    proc = subprocess.run(
        [find_tool("ip") or "ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"child in {ns} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    result: dict = json.loads(lines[-1])
    return result


# -- in memory


def packet(n: int) -> bytes:
    """A distinct fake packet."""
    return b"\x45" + n.to_bytes(4, "big") + b"x" * 20


class TunDeviceMemoryTests(SynchronousTestCase):
    """L{TunDevice} on a L{MemoryTunSystem} and a L{MemoryReactor}."""

    def setUp(self) -> None:
        self.system = MemoryTunSystem()
        self.reactor = MemoryReactor()
        self.batches: list[list[bytes]] = []
        self.device = TunDevice(
            "smob0", self.batches.append, reactor=self.reactor, system=self.system, batch=64
        )

    def test_interface(self) -> None:
        """A TunDevice is an IReadDescriptor."""
        self.assertTrue(verifyObject(IReadDescriptor, self.device))

    def test_open(self) -> None:
        """
        open() opens /dev/net/tun non-blocking and issues TUNSETIFF with a struct
        ifreq holding the name and IFF_TUN | IFF_NO_PI, then registers as a reader.
        """
        self.device.open()
        [(path, flags)] = self.system.opens
        self.assertEqual(path, "/dev/net/tun")
        self.assertTrue(flags & os.O_NONBLOCK)
        self.assertTrue(flags & os.O_CLOEXEC)
        self.assertEqual(flags & os.O_ACCMODE, os.O_RDWR)
        [(fd, request, arg)] = self.system.ioctls
        self.assertEqual(request, 0x400454CA)
        self.assertEqual(request, TUNSETIFF)
        self.assertEqual(arg[:16], b"smob0" + b"\0" * 11)
        self.assertEqual(struct.unpack_from("=H", arg, 16)[0], 0x0001 | 0x1000)
        self.assertEqual(IFF_TUN | IFF_NO_PI, 0x1001)
        self.assertEqual(len(arg), 40)
        self.assertEqual(self.device.fileno(), fd)
        self.assertIn(self.device, self.reactor.getReaders())
        self.assertEqual(self.system.devices(), ["smob0"])

    def test_name_from_kernel(self) -> None:
        """The name is the one the ioctl returns (the kernel fills in %d)."""
        TunDevice("smob%d", print, reactor=self.reactor, system=self.system).open()
        device = TunDevice("smob%d", print, reactor=self.reactor, system=self.system)
        device.open()
        self.assertEqual(device.name, "smob1")

    def test_drains_many_per_wakeup(self) -> None:
        """One doRead reads up to `batch` packets and calls on_packets once with them."""
        self.device.open()
        sent = [packet(i) for i in range(100)]
        self.system.inject("smob0", *sent)
        self.device.doRead()
        self.assertEqual(len(self.batches), 1)
        self.assertEqual(self.batches[0], sent[:64])
        self.assertEqual(self.system.reads, 64)  # no extra read once the batch is full
        self.device.doRead()
        self.assertEqual(len(self.batches), 2)
        self.assertEqual(self.batches[1], sent[64:])
        self.assertEqual(self.system.reads, 64 + 37)  # the 37th read found none
        self.device.doRead()
        self.assertEqual(len(self.batches), 2)  # nothing read: no call
        c = self.device.counters
        self.assertEqual(c["rx_packets"], 100)
        self.assertEqual(c["rx_batches"], 2)
        self.assertEqual(c["rx_full_batches"], 1)
        self.assertEqual(c["rx_empty_wakeups"], 1)
        self.assertEqual(c["rx_bytes"], sum(map(len, sent)))

    def test_small_batch(self) -> None:
        """The batch limit is the device's `batch`."""
        device = TunDevice(
            "smob1", self.batches.append, reactor=self.reactor, system=self.system, batch=3
        )
        device.open()
        self.system.inject("smob1", *[packet(i) for i in range(5)])
        device.doRead()
        device.doRead()
        self.assertEqual([len(b) for b in self.batches], [3, 2])

    def test_read_truncates_to_mtu_read(self) -> None:
        """A packet longer than mtu_read is cut (as a short read would)."""
        device = TunDevice(
            "smob1", self.batches.append, reactor=self.reactor, system=self.system, mtu_read=10
        )
        device.open()
        self.system.inject("smob1", b"a" * 30)
        device.doRead()
        self.assertEqual(self.batches, [[b"a" * 10]])

    def test_callback_error(self) -> None:
        """An exception from on_packets is counted and logged, never raised to the reactor."""

        def boom(packets: list[bytes]) -> None:
            raise RuntimeError("bug")

        device = TunDevice("smob1", boom, reactor=self.reactor, system=self.system)
        device.open()
        for _ in range(3):
            self.system.inject("smob1", packet(1))
            self.assertIsNone(device.doRead())
        self.assertEqual(device.counters["rx_callback_errors"], 3)
        # Logged at the 1st and 2nd error (powers of two), not the 3rd.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertIn(device, self.reactor.getReaders())

    def test_write(self) -> None:
        """write and write_many hand each packet to the kernel and count it."""
        self.device.open()
        self.device.write(packet(1))
        self.device.write_many([packet(2), packet(3)])
        self.assertEqual(self.system.written("smob0"), [packet(1), packet(2), packet(3)])
        self.assertEqual(self.device.counters["tx_packets"], 3)
        self.assertEqual(self.device.counters["tx_bytes"], 3 * len(packet(1)))

    def test_write_drops(self) -> None:
        """EAGAIN, ENOBUFS, EIO and EINVAL count a drop each and never raise."""
        self.device.open()
        self.system.write_errors.extend([errno.EAGAIN, errno.ENOBUFS])
        self.device.write(packet(1))
        self.device.write(packet(2))
        self.device.write(packet(3))
        self.system.write_errors.extend([errno.EIO, errno.EINVAL])
        self.device.write_many([packet(4), packet(5), packet(6)])
        self.assertEqual(self.system.written("smob0"), [packet(3), packet(6)])
        c = self.device.counters
        self.assertEqual(c["tx_dropped"], 4)
        self.assertEqual(c["tx_dropped_full"], 1)
        self.assertEqual(c["tx_dropped_nobufs"], 1)
        self.assertEqual(c["tx_dropped_down"], 1)
        self.assertEqual(c["tx_dropped_invalid"], 1)
        self.assertEqual(c["tx_packets"], 2)

    def test_write_after_close(self) -> None:
        """Writing to a closed device counts drops."""
        self.device.open()
        self.device.close()
        self.device.write(packet(1))
        self.device.write_many([packet(2)])
        self.assertEqual(self.device.counters["tx_dropped_closed"], 2)

    def test_close(self) -> None:
        """close() unregisters, closes the descriptor (the device goes away); twice is fine."""
        self.device.open()
        fd = self.device.fileno()
        self.device.close()
        self.assertNotIn(self.device, self.reactor.getReaders())
        self.assertEqual(self.system.closed, [fd])
        self.assertEqual(self.system.devices(), [])
        self.assertEqual(self.device.fileno(), -1)
        self.device.close()
        self.assertEqual(self.system.closed, [fd])

    def test_read_error_loses_device(self) -> None:
        """A read error other than EAGAIN is returned to the reactor; connectionLost closes."""
        lost: list[Failure] = []
        device = TunDevice(
            "smob1",
            self.batches.append,
            reactor=self.reactor,
            system=self.system,
            on_lost=lost.append,
        )
        device.open()
        self.system.inject("smob1", packet(1))
        self.system._fds[device.fileno()] = None  # the interface was deleted under us
        result = device.doRead()
        assert result is not None
        self.assertIsInstance(result.value, OSError)
        self.assertEqual(device.counters["rx_errors"], 1)
        # What the reactor does with a Failure from doRead:
        self.reactor.removeReader(device)
        device.connectionLost(result)
        self.assertEqual(len(lost), 1)
        self.assertEqual(device.fileno(), -1)
        self.assertNotIn(device, self.reactor.getReaders())

    def test_missing_module(self) -> None:
        """ENOENT from open says /dev/net/tun is missing."""
        system = MemoryTunSystem(open_error=errno.ENOENT)
        device = TunDevice("smob0", print, reactor=self.reactor, system=system)
        e = self.assertRaises(TunError, device.open)
        self.assertEqual(
            str(e),
            "/dev/net/tun is missing: load the tun module or run where TUN devices exist",
        )

    def test_not_permitted(self) -> None:
        """EPERM from TUNSETIFF says CAP_NET_ADMIN is needed, and closes the descriptor."""
        system = MemoryTunSystem(ioctl_error=errno.EPERM)
        device = TunDevice("smob0", print, reactor=self.reactor, system=system)
        e = self.assertRaises(TunError, device.open)
        self.assertEqual(str(e), "creating TUN device smob0 needs CAP_NET_ADMIN (run as root)")
        self.assertEqual(len(system.closed), 1)
        self.assertEqual(self.reactor.getReaders(), [])

    def test_not_permitted_open(self) -> None:
        """EACCES on open (device node not readable) is the same sentence."""
        system = MemoryTunSystem(open_error=errno.EACCES)
        device = TunDevice("smob0", print, reactor=self.reactor, system=system)
        e = self.assertRaises(TunError, device.open)
        self.assertIn("needs CAP_NET_ADMIN", str(e))

    def test_busy(self) -> None:
        """A name another descriptor holds gives a clear sentence."""
        TunDevice("smob0", print, reactor=self.reactor, system=self.system).open()
        e = self.assertRaises(
            TunError, TunDevice("smob0", print, reactor=self.reactor, system=self.system).open
        )
        self.assertEqual(str(e), "TUN device smob0 is already in use by another process")

    def test_name_too_long(self) -> None:
        """A name over 15 characters is refused before any OS call."""
        device = TunDevice("smob0123456789abc", print, reactor=self.reactor, system=self.system)
        e = self.assertRaises(TunError, device.open)
        self.assertEqual(str(e), "TUN device name 'smob0123456789abc' is longer than 15 characters")
        self.assertEqual(self.system.opens, [])
        TunDevice("smob0123456789a", print, reactor=self.reactor, system=self.system).open()


# -- real

_REAL_TUN = r"""
import json, socket, struct, time
from twisted.internet import reactor
from smobility.adapters.netlink import Netlink
from smobility.adapters.tun import TunDevice

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def ipv4(src, dst, proto, payload, ident=1):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto,
                         0, socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload

def udp(src, sport, dst, dport, data):
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)

def icmp_echo_request(src, dst, ident, seq, data):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ipv4(src, dst, 1, body)

def parse(p):
    ver_ihl, _, total, _, _, _, proto, _, src, dst = struct.unpack_from("!BBHHHBBH4s4s", p)
    return {"version": ver_ihl >> 4, "ihl": ver_ihl & 15, "len": total, "proto": proto,
            "src": socket.inet_ntoa(src), "dst": socket.inet_ntoa(dst),
            "payload": p[(ver_ihl & 15) * 4:]}

nl = Netlink()
nl.set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
nl.set_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
nl.link_up("lo")
batches = []
dev = TunDevice("smobt%d", batches.append, batch=64)
dev.open()
nl.add_address(dev.name, "10.99.0.1/24")
nl.link_up(dev.name, mtu=1400)
result = {"name": dev.name, "addresses": [str(a) for n, a in nl.addresses(dev.name)]}

# 1. The kernel routes 100 datagrams into the TUN; doRead drains 64, then 36.
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(100):
    out.sendto(b"hello %d" % i, ("10.99.0.2", 9999))
time.sleep(0.1)
dev.doRead(); dev.doRead(); dev.doRead()
result["batch_sizes"] = [len(b) for b in batches]
seen = [parse(p) for b in batches for p in b]
result["first"] = {k: v for k, v in seen[0].items() if k != "payload"}
result["udp_payloads"] = sorted(
    p["payload"][8:].decode() for p in seen if p["proto"] == 17 and p["dst"] == "10.99.0.2")
batches.clear()

# 2. Packets written into the TUN reach a socket and the kernel's ICMP.
inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
inbound.bind(("10.99.0.1", 0))
inbound.setblocking(False)
port = inbound.getsockname()[1]
dev.write(udp("10.99.0.2", 7777, "10.99.0.1", port, b"from the tunnel"))
dev.write_many([icmp_echo_request("10.99.0.2", "10.99.0.1", 0x1234, 7, b"ping")])

def check():
    try:
        data, addr = inbound.recvfrom(2000)
        result["socket"] = [data.decode(), addr[0], addr[1]]
    except BlockingIOError:
        pass
    replies = [parse(p) for b in batches for p in b]
    for r in replies:
        if r["proto"] == 1:
            t, code, _, ident, seq = struct.unpack_from("!BBHHH", r["payload"])
            result["icmp"] = {"type": t, "code": code, "ident": ident, "seq": seq,
                              "src": r["src"], "dst": r["dst"], "data": r["payload"][8:].decode()}
    if "socket" in result and "icmp" in result:
        reactor.stop()
    else:
        reactor.callLater(0.01, check)

reactor.callLater(0, check)
reactor.callLater(5, reactor.stop)
reactor.run()
result["counters"] = dict(dev.counters)
dev.close()
result["exists_after_close"] = nl.link_exists(result["name"])
print(json.dumps(result))
"""


class RealTunTests(SynchronousTestCase):
    """A real TUN device in a network namespace made for the test (root)."""

    def test_real_tun(self) -> None:
        """
        The kernel's packets are read from the TUN, many per wake-up, and the
        packets written into it reach a socket and the kernel's ICMP echo.
        """
        ns = make_namespace(self)
        r = run_in_namespace(ns, _REAL_TUN)
        self.assertTrue(r["name"].startswith("smobt"))
        self.assertEqual(r["addresses"], ["10.99.0.1/24"])
        self.assertEqual(r["batch_sizes"], [64, 36])
        self.assertEqual(r["first"]["version"], 4)
        self.assertEqual(r["first"]["ihl"], 5)
        self.assertEqual(r["first"]["proto"], 17)
        self.assertEqual(r["first"]["src"], "10.99.0.1")
        self.assertEqual(r["first"]["dst"], "10.99.0.2")
        self.assertEqual(r["udp_payloads"], sorted(f"hello {i}" for i in range(100)))
        self.assertEqual(r["socket"][0], "from the tunnel")
        self.assertEqual(r["socket"][1:], ["10.99.0.2", 7777])
        self.assertEqual(
            r["icmp"],
            {
                "type": 0,
                "code": 0,
                "ident": 0x1234,
                "seq": 7,
                "src": "10.99.0.1",
                "dst": "10.99.0.2",
                "data": "ping",
            },
        )
        self.assertEqual(r["counters"]["tx_packets"], 2)
        self.assertEqual(r["counters"].get("tx_dropped", 0), 0)
        self.assertFalse(r["exists_after_close"])

    def test_real_errors(self) -> None:
        """A name in use by a non-TUN device is refused with a sentence, not an OSError."""
        ns = make_namespace(self)
        r = run_in_namespace(
            ns,
            "import json\n"
            "from smobility.adapters.tun import TunDevice, TunError\n"
            "try:\n"
            "    TunDevice('lo', print).open()\n"
            "    print(json.dumps({'error': None}))\n"
            "except TunError as e:\n"
            "    print(json.dumps({'error': str(e)}))\n",
        )
        self.assertEqual(
            r["error"],
            "TUN device lo cannot be created: the name is invalid or taken by a device "
            "of another kind",
        )
