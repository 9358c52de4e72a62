# -*- test-case-name: tests.test_netlink -*-
"""
Tests for L{smobility.adapters.netlink} and L{smobility.adapters.arp}.

The pure parts (netlink message kinds, the watcher's draining, sysctl keys,
ARP frames, error mapping) run anywhere. The rest needs root: each test
makes its own network namespace and runs its logic in a child process inside
it (C{ip netns exec}), and checks the result against C{ip} or C{tshark}
where an independent view exists.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError as PyrouteNetlinkError
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smobility.adapters.arp import (
    ARP_REPLY,
    ARP_REQUEST,
    ArpError,
    build_arp,
    gratuitous_frames,
    parse_arp,
    send_gratuitous_arp,
)
from smobility.adapters.netlink import LinkWatcher, Netlink, NetlinkError, message_kinds
from tests.procs import env
from tests.test_tun import make_namespace, run_in_namespace
from tests.util import require_tool

# -- pure


def nlmsg(msg_type: int, body: bytes = b"\0" * 16) -> bytes:
    """One netlink message of C{msg_type} (header in host order, padded to 4 bytes)."""
    length = 16 + len(body)
    return struct.pack("=IHHII", length, msg_type, 0, 0, 0) + body + b"\0" * (-length % 4)


class MessageKindsTests(SynchronousTestCase):
    """L{message_kinds} names the kinds of the messages in a datagram."""

    def test_kinds(self) -> None:
        """RTM_NEW/DELLINK are links, NEW/DELADDR addresses, NEW/DELROUTE routes."""
        self.assertEqual(message_kinds(nlmsg(16) + nlmsg(17)), {"link"})
        self.assertEqual(message_kinds(nlmsg(20, b"\0" * 5) + nlmsg(25)), {"address", "route"})
        self.assertEqual(message_kinds(nlmsg(28)), set())  # RTM_NEWNEIGH: not watched

    def test_truncated(self) -> None:
        """A short or nonsensical header ends parsing without an error."""
        self.assertEqual(message_kinds(b"\x01\x02"), set())
        self.assertEqual(message_kinds(struct.pack("=IHHII", 3, 16, 0, 0, 0)), set())

    def test_overrun(self) -> None:
        """NLMSG_OVERRUN means anything may have changed."""
        self.assertEqual(message_kinds(nlmsg(4)), {"link", "address", "route"})


class FakeSocket:
    """Hands out queued datagrams or errors, then raises BlockingIOError."""

    def __init__(self, *items: bytes | OSError) -> None:
        self.items = list(items)
        self.closed = False

    def recv(self, n: int) -> bytes:
        if not self.items:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.items.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def fileno(self) -> int:
        return 42

    def close(self) -> None:
        self.closed = True


class LinkWatcherMemoryTests(SynchronousTestCase):
    """L{LinkWatcher} with a fake socket and a L{MemoryReactor}."""

    def test_once_per_kind(self) -> None:
        """Many notifications in one wake-up give one call per kind, links first."""
        sock = FakeSocket(nlmsg(20), nlmsg(24) + nlmsg(20), nlmsg(16), nlmsg(21))
        reactor = MemoryReactor()
        calls: list[str] = []
        watcher = LinkWatcher(calls.append, reactor=reactor, sock=sock)
        self.assertTrue(verifyObject(IReadDescriptor, watcher))
        watcher.start()
        self.assertIn(watcher, reactor.getReaders())
        self.assertEqual(watcher.fileno(), 42)
        watcher.doRead()
        self.assertEqual(calls, ["link", "address", "route"])
        watcher.doRead()
        self.assertEqual(calls, ["link", "address", "route"])
        watcher.stop()
        self.assertTrue(sock.closed)
        self.assertNotIn(watcher, reactor.getReaders())
        self.assertEqual(watcher.fileno(), -1)

    def test_enobufs(self) -> None:
        """A receive-queue overflow (ENOBUFS) reports every kind."""
        sock = FakeSocket(OSError(errno.ENOBUFS, "No buffer space available"))
        calls: list[str] = []
        watcher = LinkWatcher(calls.append, reactor=MemoryReactor(), sock=sock)
        watcher.start()
        watcher.doRead()
        self.assertEqual(calls, ["link", "address", "route"])

    def test_callback_error(self) -> None:
        """An exception from on_change is logged; the other kinds are still reported."""
        calls: list[str] = []

        def on_change(kind: str) -> None:
            calls.append(kind)
            if kind == "link":
                raise RuntimeError("bug")

        watcher = LinkWatcher(
            on_change, reactor=MemoryReactor(), sock=FakeSocket(nlmsg(16) + nlmsg(24))
        )
        watcher.start()
        watcher.doRead()
        self.assertEqual(calls, ["link", "route"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FakeIPRoute:
    """Just enough of pyroute2.IPRoute to check error mapping."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def link_lookup(self, ifname: str) -> list[int]:
        return [7] if ifname == "lan0" else []

    def _call(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        self.calls.append((name, args, kwargs))
        if self.error is not None:
            raise self.error
        return []

    def addr(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._call("addr", *args, **kwargs)

    def route(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._call("route", *args, **kwargs)

    def neigh(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._call("neigh", *args, **kwargs)

    def link(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._call("link", *args, **kwargs)


class NetlinkErrorTests(SynchronousTestCase):
    """L{Netlink} turns kernel errors into one sentence, and is idempotent."""

    def test_exists_is_fine(self) -> None:
        """Adding an address that is there (EEXIST) succeeds."""
        ipr = FakeIPRoute(PyrouteNetlinkError(errno.EEXIST))
        Netlink(ipr).add_address("lan0", "10.0.0.1/24")
        self.assertEqual(
            ipr.calls, [("addr", ("add",), {"index": 7, "address": "10.0.0.1", "prefixlen": 24})]
        )

    def test_missing_is_fine(self) -> None:
        """Deleting what is gone succeeds, also when the device is gone."""
        Netlink(FakeIPRoute(PyrouteNetlinkError(errno.EADDRNOTAVAIL))).del_address(
            "lan0", "10.0.0.1/24"
        )
        Netlink(FakeIPRoute(PyrouteNetlinkError(errno.ESRCH))).del_route("10.1.0.0/16")
        Netlink(FakeIPRoute(PyrouteNetlinkError(errno.ENOENT))).del_proxy_neighbour(
            "10.0.0.9", "lan0"
        )
        ipr = FakeIPRoute(None)
        nl = Netlink(ipr)
        nl.del_address("gone0", "10.0.0.1/24")
        nl.del_route("10.1.0.0/16", dev="gone0")
        nl.del_proxy_neighbour("10.0.0.9", "gone0")
        self.assertEqual(ipr.calls, [])

    def test_message(self) -> None:
        """The message names the operation, the device and the kernel's error."""
        nl = Netlink(FakeIPRoute(PyrouteNetlinkError(errno.EPERM)))
        e = self.assertRaises(NetlinkError, nl.add_route, "10.1.0.0/16", dev="lan0")
        self.assertEqual(
            str(e), "add_route 10.1.0.0/16 on lan0 failed: Operation not permitted (errno 1)"
        )
        self.assertEqual(e.code, errno.EPERM)
        e = self.assertRaises(NetlinkError, nl.link_up, "wlan9")
        self.assertEqual(str(e), "link_up on wlan9 failed: no such network device")
        self.assertEqual(e.code, errno.ENODEV)

    def test_bug_is_not_hidden(self) -> None:
        """An exception that is not a kernel answer propagates as it is."""
        nl = Netlink(FakeIPRoute(KeyError("x")))
        self.assertRaises(KeyError, nl.add_address, "lan0", "10.0.0.1/24")

    def test_route_args(self) -> None:
        """add_route: replace, main table, link scope for device routes, "default"."""
        ipr = FakeIPRoute(None)
        nl = Netlink(ipr)
        nl.add_route("default", gateway="192.0.2.1", metric=5)
        nl.add_route("10.1.0.0/16", dev="lan0", src="10.0.0.1")
        self.assertEqual(
            ipr.calls,
            [
                (
                    "route",
                    ("replace",),
                    {
                        "dst": "0.0.0.0/0",
                        "table": 254,
                        "gateway": "192.0.2.1",
                        "priority": 5,
                        "scope": 0,
                    },
                ),
                (
                    "route",
                    ("replace",),
                    {
                        "dst": "10.1.0.0/16",
                        "table": 254,
                        "oif": 7,
                        "prefsrc": "10.0.0.1",
                        "scope": 253,
                    },
                ),
            ],
        )
        self.assertRaises(NetlinkError, nl.add_route, "10.2.0.0/16")

    def test_sysctl_keys(self) -> None:
        """Dotted and slashed keys map to /proc/sys/net; other trees are refused."""
        self.assertEqual(
            str(Netlink.sysctl_path("net.ipv4.conf.lan0.proxy_arp")),
            "/proc/sys/net/ipv4/conf/lan0/proxy_arp",
        )
        self.assertEqual(
            str(Netlink.sysctl_path("net/ipv4/conf/eth0.100/forwarding")),
            "/proc/sys/net/ipv4/conf/eth0.100/forwarding",
        )
        for bad in ("kernel.panic", "net", "net.ipv4..x", "net/../kernel/x"):
            self.assertRaises(NetlinkError, Netlink.sysctl_path, bad)


class ArpCodecTests(SynchronousTestCase):
    """L{build_arp}, L{parse_arp} and the gratuitous forms."""

    def test_round_trip(self) -> None:
        """A built frame parses back; it is padded to the Ethernet minimum."""
        frame = build_arp(
            ARP_REQUEST, "02:00:00:00:00:01", "10.0.0.1", "00:00:00:00:00:00", "10.0.0.2"
        )
        self.assertEqual(len(frame), 60)
        self.assertEqual(frame[12:14], b"\x08\x06")
        self.assertEqual(frame[14:22], bytes.fromhex("0001080006040001"))
        p = parse_arp(frame)
        self.assertEqual(
            (p.eth_dst, p.eth_src, p.op, p.sender_mac, p.sender_ip, p.target_mac, p.target_ip),
            (
                "ff:ff:ff:ff:ff:ff",
                "02:00:00:00:00:01",
                1,
                "02:00:00:00:00:01",
                "10.0.0.1",
                "00:00:00:00:00:00",
                "10.0.0.2",
            ),
        )
        self.assertFalse(p.is_gratuitous)

    def test_gratuitous_forms(self) -> None:
        """A request (target MAC zero) and a reply (target MAC own), both broadcast."""
        request, reply = (parse_arp(f) for f in gratuitous_frames("10.0.0.7", "02:aa:bb:cc:dd:ee"))
        self.assertEqual(request.op, ARP_REQUEST)
        self.assertEqual(request.target_mac, "00:00:00:00:00:00")
        self.assertEqual(reply.op, ARP_REPLY)
        self.assertEqual(reply.target_mac, "02:aa:bb:cc:dd:ee")
        for p in (request, reply):
            self.assertTrue(p.is_gratuitous)
            self.assertEqual(p.sender_ip, "10.0.0.7")
            self.assertEqual(p.eth_dst, "ff:ff:ff:ff:ff:ff")

    def test_not_arp(self) -> None:
        """Other frames and short frames raise ValueError."""
        frame = build_arp(
            ARP_REPLY, "02:00:00:00:00:01", "10.0.0.1", "02:00:00:00:00:02", "10.0.0.2"
        )
        self.assertRaises(ValueError, parse_arp, frame[:30])
        self.assertRaises(ValueError, parse_arp, frame[:12] + b"\x08\x00" + frame[14:])
        self.assertRaises(
            ValueError, build_arp, 1, "02:00", "10.0.0.1", "00:00:00:00:00:00", "10.0.0.2"
        )

    def test_not_permitted(self) -> None:
        """Without CAP_NET_RAW the error is one sentence (as root: checked as nobody)."""
        expected = "sending a gratuitous ARP on lo needs CAP_NET_RAW (run as root)"
        if os.geteuid() != 0:
            e = self.assertRaises(
                ArpError, send_gratuitous_arp, "lo", "10.0.0.1", "02:00:00:00:00:01"
            )
            self.assertEqual(str(e), expected)
            return
        setpriv = require_tool(self, "setpriv")
        proc = subprocess.run(
            [
                setpriv,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                "from smobility.adapters.arp import ArpError, send_gratuitous_arp\n"
                "try:\n"
                "    send_gratuitous_arp('lo', '10.0.0.1', '02:00:00:00:00:01')\n"
                "except ArpError as e:\n"
                "    print(e)\n",
            ],
            env=env(),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(proc.stdout.strip(), expected, proc.stderr)


# -- real (root, network namespaces)

_PRELUDE = r"""
import json, subprocess, sys, time
from ipaddress import IPv4Interface
from smobility.adapters.netlink import Netlink, NetlinkError
nl = Netlink()
nl.link_up("lo")
def ip(*args):
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout
def veth(a, b):
    ip("link", "add", a, "type", "veth", "peer", "name", b)
    nl.link_up(a)
    nl.link_up(b)
out = {}
"""

_ADDRESSES = (
    _PRELUDE
    + r"""
veth("smobv0", "smobv1")
nl.add_address("smobv0", IPv4Interface("10.97.0.1/24"))
nl.add_address("smobv0", IPv4Interface("10.97.0.1/24"))   # again: fine
nl.add_address("smobv0", "10.97.1.1/24")
out["after_add"] = sorted(str(a) for n, a in nl.addresses("smobv0"))
out["all"] = sorted(f"{n} {a}" for n, a in nl.addresses())
out["ip_after_add"] = ip("-4", "-o", "addr", "show", "dev", "smobv0")
nl.del_address("smobv0", IPv4Interface("10.97.1.1/24"))
nl.del_address("smobv0", IPv4Interface("10.97.1.1/24"))   # again: fine
out["after_del"] = sorted(str(a) for n, a in nl.addresses("smobv0"))
nl.set_mtu("smobv0", 1300)
nl.link_up("smobv1", mtu=1280)
out["mtu"] = ip("-o", "link", "show", "smobv0").split(" mtu ")[1].split()[0]
out["mtu1"] = ip("-o", "link", "show", "smobv1").split(" mtu ")[1].split()[0]
out["mac"] = nl.link_mac("smobv0")
out["index"] = nl.link_index("smobv0")
out["ip_mac"] = open("/sys/class/net/smobv0/address").read().strip()
out["ip_index"] = int(open("/sys/class/net/smobv0/ifindex").read())
try:
    nl.add_address("nosuch0", "10.97.2.1/24")
except NetlinkError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""
)

_ROUTES = (
    _PRELUDE
    + r"""
veth("smobv0", "smobv1")
nl.add_address("smobv0", "10.97.0.1/24")
nl.add_route("10.96.0.0/16", gateway="10.97.0.2")
out["get1"] = nl.route_get("10.96.3.4")
nl.add_route("10.96.0.0/16", gateway="10.97.0.3")            # replace
out["get2"] = nl.route_get("10.96.3.4")
nl.add_route("10.96.0.0/16", gateway="10.97.0.3")            # same again: fine
out["ip_routes"] = ip("-4", "route", "show", "10.96.0.0/16")
nl.add_route("10.95.0.0/24", dev="smobv0", src="10.97.0.1")
out["ip_dev_route"] = ip("-4", "route", "show", "10.95.0.0/24")
out["get3"] = nl.route_get("10.95.0.9")
out["get_unreachable"] = nl.route_get("192.0.2.1")
out["default_none"] = nl.default_route()
nl.add_route("default", gateway="10.97.0.254", metric=100)
nl.add_route("0.0.0.0/0", gateway="10.97.0.253", metric=50)
out["default"] = nl.default_route()
out["get_default"] = nl.route_get("192.0.2.1")
nl.del_route("10.96.0.0/16")
nl.del_route("10.96.0.0/16")                                 # again: fine
nl.del_route("10.95.0.0/24", dev="smobv0")
nl.del_route("default", gateway="10.97.0.253", metric=50)
out["default_after_del"] = nl.default_route()
out["ip_after_del"] = ip("-4", "route", "show")
print(json.dumps(out))
"""
)

_PROXY = (
    _PRELUDE
    + r"""
veth("smobv0", "smobv1")
nl.add_proxy_neighbour("10.97.0.50", "smobv0")
nl.add_proxy_neighbour("10.97.0.50", "smobv0")   # again: fine
nl.add_proxy_neighbour("10.97.0.51", "smobv0")
nl.add_proxy_neighbour("10.97.0.52", "smobv1")
out["all"] = sorted(nl.proxy_neighbours())
out["v0"] = sorted(nl.proxy_neighbours("smobv0"))
print(json.dumps(out))
"""
)

_PROXY_DEL = (
    _PRELUDE.replace('nl.link_up("lo")', "")
    + r"""
nl.del_proxy_neighbour("10.97.0.50", "smobv0")
nl.del_proxy_neighbour("10.97.0.50", "smobv0")   # again: fine
out["all"] = sorted(nl.proxy_neighbours())
print(json.dumps(out))
"""
)

_SYSCTL = (
    _PRELUDE
    + r"""
veth("smobv0.7", "smobv1")
nl.set_sysctl("net.ipv4.ip_forward", "1")
nl.set_sysctl("net/ipv4/conf/smobv0.7/proxy_arp", "1")
out["forward"] = open("/proc/sys/net/ipv4/ip_forward").read().strip()
out["proxy_arp"] = open("/proc/sys/net/ipv4/conf/smobv0.7/proxy_arp").read().strip()
out["read"] = nl.sysctl("net.ipv4.conf.smobv1.forwarding")
try:
    nl.set_sysctl("net.ipv4.conf.nosuch0.proxy_arp", "1")
except NetlinkError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""
)

_WATCHER = (
    _PRELUDE
    + r"""
from twisted.internet import reactor
from smobility.adapters.netlink import LinkWatcher
veth("smobv0", "smobv1")
seen = []
def on_change(kind):
    seen.append([kind, round(time.monotonic() - t0, 3)])
    if any(k == "address" for k, _ in seen) and any(k == "route" for k, _ in seen):
        reactor.callLater(0.2, reactor.stop)
watcher = LinkWatcher(on_change)
watcher.start()
def change():
    global t0
    t0 = time.monotonic()
    # Done by iproute2, not by us: an independent change.
    ip("addr", "add", "10.97.0.1/24", "dev", "smobv0")
    ip("route", "add", "10.94.0.0/16", "via", "10.97.0.2")
reactor.callLater(0.2, change)
reactor.callLater(5, reactor.stop)
reactor.run()
watcher.stop()
out["seen"] = seen
out["events"] = watcher.events
print(json.dumps(out))
"""
)

_GARP = (
    _PRELUDE
    + r"""
import select, socket
from smobility.adapters.arp import send_gratuitous_arp
veth("smobv0", "smobv1")
nl.set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
cap.bind(("smobv1", 0x0806))
send_gratuitous_arp("smobv0", "10.97.0.7")
send_gratuitous_arp("smobv0", "10.97.0.8", mac="02:12:34:56:78:9a")
frames = []
end = time.monotonic() + 3
while len(frames) < 4 and time.monotonic() < end:
    if select.select([cap], [], [], 0.1)[0]:
        frames.append(cap.recv(2000).hex())
out["frames"] = frames
out["mac"] = nl.link_mac("smobv0")
try:
    send_gratuitous_arp("nosuch0", "10.97.0.7", mac="02:12:34:56:78:9a")
except Exception as e:
    out["error"] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""
)

# Home-agent side of the proxy ARP check (namespace A, link smobha0 towards B).
_PROXY_ARP_HA = (
    _PRELUDE
    + r"""
forwarding = sys.argv[1]
nl.set_sysctl("net.ipv4.conf.smobha0.forwarding", forwarding)
nl.set_sysctl("net.ipv4.neigh.smobha0.proxy_delay", "0")
out["proxy_arp"] = [nl.sysctl("net.ipv4.conf.all.proxy_arp"),
                    nl.sysctl("net.ipv4.conf.smobha0.proxy_arp")]
print(json.dumps(out))
"""
)

# Correspondent side: ask who has sys.argv[1], wait for an answer.
_PROXY_ARP_ASK = r"""
import json, select, socket, sys, time
from smobility.adapters.arp import ARP_REPLY, ARP_REQUEST, build_arp, interface_mac, parse_arp
target = sys.argv[1]
mac = interface_mac("smobcn0")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("smobcn0", 0x0806))
t0 = time.monotonic()
s.send(build_arp(ARP_REQUEST, mac, "10.93.0.2", "00:00:00:00:00:00", target))
answer = None
while answer is None and time.monotonic() < t0 + 1.5:
    if select.select([s], [], [], 0.05)[0]:
        p = parse_arp(s.recv(2000))
        if p.op == ARP_REPLY and p.sender_ip == target:
            answer = [p.sender_mac, round(time.monotonic() - t0, 3)]
print(json.dumps({"answer": answer}))
"""


def _write_pcap(path: str, frames: list[bytes]) -> None:
    """A classic pcap file of Ethernet frames (for tshark)."""
    with open(path, "wb") as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for frame in frames:
            f.write(struct.pack("=IIII", 0, 0, len(frame), len(frame)) + frame)


class RealNetlinkTests(SynchronousTestCase):
    """L{Netlink} against the kernel, each test in its own namespace (root)."""

    def test_addresses(self) -> None:
        """Add and delete are idempotent; what we list is what iproute2 lists."""
        ns = make_namespace(self)
        r = run_in_namespace(ns, _ADDRESSES)
        self.assertEqual(r["after_add"], ["10.97.0.1/24", "10.97.1.1/24"])
        self.assertIn("lo 127.0.0.1/8", r["all"])
        self.assertIn("smobv0 10.97.0.1/24", r["all"])
        self.assertIn("inet 10.97.0.1/24", r["ip_after_add"])
        self.assertIn("inet 10.97.1.1/24", r["ip_after_add"])
        self.assertEqual(r["after_del"], ["10.97.0.1/24"])
        self.assertEqual((r["mtu"], r["mtu1"]), ("1300", "1280"))
        self.assertEqual(r["mac"], r["ip_mac"])
        self.assertEqual(r["index"], r["ip_index"])
        self.assertEqual(
            r["error"], "add_address 10.97.2.1/24 on nosuch0 failed: no such network device"
        )

    def test_routes(self) -> None:
        """Routes: add, replace, route_get, default route, delete (twice)."""
        ns = make_namespace(self)
        r = run_in_namespace(ns, _ROUTES)
        self.assertEqual(r["get1"], ["10.97.0.2", "smobv0", "10.97.0.1"])
        self.assertEqual(r["get2"], ["10.97.0.3", "smobv0", "10.97.0.1"])
        self.assertEqual(
            r["ip_routes"].strip().splitlines(),
            ["10.96.0.0/16 via 10.97.0.3 dev smobv0 proto static"],
        )
        self.assertIn("10.95.0.0/24 dev smobv0", r["ip_dev_route"])
        self.assertIn("scope link src 10.97.0.1", r["ip_dev_route"])
        self.assertEqual(r["get3"], [None, "smobv0", "10.97.0.1"])
        self.assertEqual(r["get_unreachable"], [None, None, None])
        self.assertEqual(r["default_none"], [None, None])
        self.assertEqual(r["default"], ["10.97.0.253", "smobv0"])
        self.assertEqual(r["get_default"], ["10.97.0.253", "smobv0", "10.97.0.1"])
        self.assertEqual(r["default_after_del"], ["10.97.0.254", "smobv0"])
        self.assertNotIn("10.96.0.0", r["ip_after_del"])
        self.assertNotIn("10.95.0.0", r["ip_after_del"])

    def test_proxy_neighbours(self) -> None:
        """Proxy entries: what we add is what `ip neigh show proxy` shows; delete twice."""
        ns = make_namespace(self)
        r = run_in_namespace(ns, _PROXY)
        self.assertEqual(r["all"], ["10.97.0.50", "10.97.0.51", "10.97.0.52"])
        self.assertEqual(r["v0"], ["10.97.0.50", "10.97.0.51"])
        shown = subprocess.run(
            ["ip", "-n", ns, "neigh", "show", "proxy"], check=True, capture_output=True, text=True
        ).stdout
        self.assertEqual(
            sorted(line.strip() for line in shown.strip().splitlines()),
            [
                "10.97.0.50 dev smobv0 proxy",
                "10.97.0.51 dev smobv0 proxy",
                "10.97.0.52 dev smobv1 proxy",
            ],
        )
        r = run_in_namespace(ns, _PROXY_DEL)
        self.assertEqual(r["all"], ["10.97.0.51", "10.97.0.52"])
        shown = subprocess.run(
            ["ip", "-n", ns, "neigh", "show", "proxy"], check=True, capture_output=True, text=True
        ).stdout
        self.assertNotIn("10.97.0.50", shown)

    def test_sysctl(self) -> None:
        """set_sysctl writes /proc/sys/net of the namespace; keys with '/' allow dotted names."""
        ns = make_namespace(self)
        root_forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
        r = run_in_namespace(ns, _SYSCTL)
        self.assertEqual((r["forward"], r["proxy_arp"], r["read"]), ("1", "1", "1"))
        self.assertEqual(
            r["error"], "set_sysctl net.ipv4.conf.nosuch0.proxy_arp failed: no such key"
        )
        # Only the test's namespace was written.
        self.assertEqual(Path("/proc/sys/net/ipv4/ip_forward").read_text(), root_forwarding)

    def test_link_watcher(self) -> None:
        """The watcher reports an address change (made by iproute2) within a second."""
        ns = make_namespace(self)
        r = run_in_namespace(ns, _WATCHER)
        kinds = {kind: t for kind, t in r["seen"]}
        self.assertIn("address", kinds, r)
        self.assertIn("route", kinds, r)
        self.assertLess(kinds["address"], 1.0)
        self.assertLess(kinds["route"], 1.0)
        self.assertNotIn("link", kinds)  # nothing happened to a link after start()

    def test_gratuitous_arp(self) -> None:
        """Both gratuitous forms arrive on the veth peer, as we and tshark decode them."""
        ns = make_namespace(self)
        r = run_in_namespace(ns, _GARP)
        frames = [bytes.fromhex(f) for f in r["frames"]]
        self.assertEqual(len(frames), 4)
        parsed = [parse_arp(f) for f in frames]
        mac = r["mac"]
        expected = [
            (ARP_REQUEST, mac, "10.97.0.7", "00:00:00:00:00:00", "10.97.0.7"),
            (ARP_REPLY, mac, "10.97.0.7", mac, "10.97.0.7"),
            (ARP_REQUEST, "02:12:34:56:78:9a", "10.97.0.8", "00:00:00:00:00:00", "10.97.0.8"),
            (ARP_REPLY, "02:12:34:56:78:9a", "10.97.0.8", "02:12:34:56:78:9a", "10.97.0.8"),
        ]
        self.assertEqual(
            [(p.op, p.sender_mac, p.sender_ip, p.target_mac, p.target_ip) for p in parsed],
            expected,
        )
        for p in parsed:
            self.assertEqual(p.eth_dst, "ff:ff:ff:ff:ff:ff")
            self.assertEqual(p.eth_src, mac)
        self.assertEqual(r["error"], ["ArpError", "no network interface named 'nosuch0'"])

        tshark = require_tool(self, "tshark")
        with tempfile.TemporaryDirectory() as tmp:
            pcap = os.path.join(tmp, "garp.pcap")
            _write_pcap(pcap, frames)
            fields = subprocess.run(
                [
                    tshark,
                    "-r",
                    pcap,
                    "-T",
                    "fields",
                    "-e",
                    "arp.opcode",
                    "-e",
                    "arp.src.hw_mac",
                    "-e",
                    "arp.src.proto_ipv4",
                    "-e",
                    "arp.dst.hw_mac",
                    "-e",
                    "arp.dst.proto_ipv4",
                    "-e",
                    "arp.isgratuitous",
                    "-e",
                    "_ws.malformed",
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        rows = [line.split("\t") for line in fields.splitlines() if line]
        self.assertEqual([row[:5] for row in rows], [[str(op), *rest] for op, *rest in expected])
        self.assertEqual([row[5] for row in rows], ["1"] * 4)
        self.assertEqual([row[6] for row in rows], [""] * 4)

    def test_proxy_arp_without_proxy_arp_sysctl(self) -> None:
        """
        What the home agent relies on: an IPv4 proxy neighbour entry answers ARP
        with proxy_arp off, once forwarding is on for the link and the address
        is routed out of another device (here a TUN). Not before.
        """
        ha = make_namespace(self)
        cn = make_namespace(self)
        self._ip(
            "-n",
            ha,
            "link",
            "add",
            "smobha0",
            "type",
            "veth",
            "peer",
            "name",
            "smobcn0",
            "netns",
            cn,
        )
        self._ip("-n", ha, "addr", "add", "10.93.0.1/24", "dev", "smobha0")
        self._ip("-n", ha, "link", "set", "smobha0", "up")
        self._ip("-n", cn, "addr", "add", "10.93.0.2/24", "dev", "smobcn0")
        self._ip("-n", cn, "link", "set", "smobcn0", "up")
        self._ip("-n", ha, "tuntap", "add", "mode", "tun", "smobtun0")
        self._ip("-n", ha, "link", "set", "smobtun0", "up")
        self._ip("-n", ha, "neigh", "add", "proxy", "10.93.0.50", "dev", "smobha0")

        # No forwarding: no answer, even with the entry.
        r = run_in_namespace(ha, _PROXY_ARP_HA, "0")
        self.assertEqual(r["proxy_arp"], ["0", "0"])
        self._ip("-n", ha, "route", "add", "10.93.0.50/32", "dev", "smobtun0")
        self.assertIsNone(run_in_namespace(cn, _PROXY_ARP_ASK, "10.93.0.50")["answer"])

        # Forwarding on the link (proxy_arp still 0): answered at once (proxy_delay 0).
        r = run_in_namespace(ha, _PROXY_ARP_HA, "1")
        self.assertEqual(r["proxy_arp"], ["0", "0"])
        answer = run_in_namespace(cn, _PROXY_ARP_ASK, "10.93.0.50")["answer"]
        self.assertIsNotNone(answer)
        mac = self._ip("-n", ha, "-o", "link", "show", "smobha0").split("link/ether ")[1].split()[0]
        self.assertEqual(answer[0], mac)

        # No entry for this one: no answer (the TUN route alone is not enough).
        self._ip("-n", ha, "route", "add", "10.93.0.51/32", "dev", "smobtun0")
        self.assertIsNone(run_in_namespace(cn, _PROXY_ARP_ASK, "10.93.0.51")["answer"])

        # Entry but the address routed back out of the same link: no answer.
        self._ip("-n", ha, "route", "del", "10.93.0.50/32")
        self.assertIsNone(run_in_namespace(cn, _PROXY_ARP_ASK, "10.93.0.50")["answer"])

    def _ip(self, *args: str) -> str:
        return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout
