# -*- test-case-name: tests.test_lab_relay -*-
"""
The lab's firewalls around the relay and the IPsec gateway, in namespaces.

Needs root, iproute2, nftables, dnsmasq and udhcpc (a skip is a failure under
C{CI=true}).  Each test builds the lab under a prefix of its own and removes
it afterwards, also when the test fails.  Listeners ("sinks") run in the
target namespaces and report every connection, datagram or marked raw
packet that reaches them; probes run in the source namespace.  Every
"nothing arrives" check has a control from a host that is allowed, so a
broken sink cannot pass for a working firewall.  Sinks are started and
stopped by their PIDs; all traffic stays inside the lab's namespaces.
"""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from smobility.lab import Lab
from tests.util import require_root, require_tool

TOOLS = ("ip", "sysctl", "nft", "dnsmasq", "udhcpc", "ss")

MARK = "smob-fw-probe"

# Listens on every "tcp:ADDR:PORT", "udp:ADDR:PORT" and "raw:ADDR:PROTO"
# given; prints "ready", then one JSON line [spec, source address] for every
# accepted connection, datagram or raw packet carrying the probe's mark.
SINK = f"""\
import json, select, socket, sys
MARK = {MARK!r}.encode()
socks = {{}}
for spec in sys.argv[1:]:
    kind, addr, arg = spec.split(":")
    if kind == "tcp":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, int(arg)))
        s.listen(16)
    elif kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, int(arg)))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, int(arg))
        s.bind((addr, 0))
    socks[s] = (kind, spec)
print("ready", flush=True)
while True:
    ready, _, _ = select.select(list(socks), [], [])
    for s in ready:
        kind, spec = socks[s]
        if kind == "tcp":
            conn, peer = s.accept()
            conn.close()
        else:
            data, peer = s.recvfrom(65535)
            if MARK not in data:
                continue
        print(json.dumps([spec, peer[0]]), flush=True)
"""

# Runs every probe given, at once, and prints one JSON object {spec: result}:
# "tcp:ADDR:PORT" connects ("open" or "closed ..."), "udp:ADDR:PORT" sends
# three marked datagrams, "icmp:ADDR" pings with a marked echo request
# ("reply" or "no reply"), "ipip:ADDR" sends three IP-in-IP (protocol 4)
# packets whose inner IPv4 packet carries the mark.
PROBE = f"""\
import json, os, socket, struct, sys, time
from concurrent.futures import ThreadPoolExecutor
MARK = {MARK!r}.encode()
TIMEOUT = 1.5

def checksum(data):
    if len(data) % 2:
        data += b"\\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def tcp(addr, port):
    s = socket.socket()
    s.settimeout(TIMEOUT)
    try:
        s.connect((addr, int(port)))
        s.sendall(MARK)
        return "open"
    except OSError as e:
        return "closed %s" % e
    finally:
        s.close()

def udp(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        s.sendto(MARK, (addr, int(port)))
    s.close()
    return "sent"

def icmp(addr):
    ident = (os.getpid() + hash(addr)) & 0xFFFF
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    head = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    s.sendto(struct.pack("!BBHHH", 8, 0, checksum(head + MARK), ident, 1) + MARK, (addr, 0))
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, peer = s.recvfrom(65535)
        except OSError:
            break
        ihl = (data[0] & 0x0F) * 4
        kind, _, _, got = struct.unpack("!BBHH", data[ihl:ihl + 6])
        if peer[0] == addr and kind == 0 and got == ident:
            return "reply"
    return "no reply"

def ipip(addr):
    body = MARK
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0,
                       socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2"))
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    for _ in range(3):
        s.sendto(head + body, (addr, 0))
    s.close()
    return "sent"

def probe(spec):
    kind, _, rest = spec.partition(":")
    return {{"tcp": tcp, "udp": udp, "icmp": icmp, "ipip": ipip}}[kind](*rest.split(":"))

with ThreadPoolExecutor(len(sys.argv) - 1) as pool:
    results = list(pool.map(probe, sys.argv[1:]))
print(json.dumps(dict(zip(sys.argv[1:], results))))
"""


def _unique_prefix() -> str:
    """A lab prefix no other test run uses: "smobf" and four random letters."""
    return "smobf" + "".join(random.choice(string.ascii_lowercase) for _ in range(4))


class Sink:
    """A listener process in one namespace; L{stop} returns what reached it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def stop(self, settle: float = 0.5) -> list[tuple[str, str]]:
        """Wait C{settle} seconds for stragglers, stop it (by PID), return its events."""
        time.sleep(settle)
        if self.proc.poll() is None:
            self.proc.terminate()
        out, err = self.proc.communicate(timeout=10)
        events = []
        for line in out.decode().splitlines():
            if line.startswith("["):
                spec, source = json.loads(line)
                events.append((spec, source))
        return events


class RelayFirewallTests(SynchronousTestCase):
    """The home perimeter, visited networks 4 and 5 and the gateway, in real namespaces."""

    def setUp(self) -> None:
        require_root(self)
        for tool in TOOLS:
            require_tool(self, tool)
        self.lab = Lab(_unique_prefix())
        # Registered before up(): a half-built lab is removed too.
        self.addCleanup(self.lab.down)
        self.lab.up()

    def sink(self, role: str, *specs: str) -> Sink:
        """Start a sink in C{role} listening on C{specs}; return once it listens."""
        proc = self.lab.popen(
            role, sys.executable, "-c", SINK, *specs,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(self._reap, proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            self.fail(f"sink in {role} did not start: {line!r} {err.decode()}")
        return Sink(proc)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        """Stop a sink by its PID if a test left it running."""
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    def probe(self, role: str, *specs: str) -> dict[str, str]:
        """Run the probes C{specs} from C{role}; return each one's result."""
        done = self.lab.exec(role, sys.executable, "-c", PROBE, *specs, timeout=60)
        result: dict[str, str] = json.loads(done.stdout)
        return result

    def assertArrived(self, events: list[tuple[str, str]], spec: str, source: str) -> None:
        """C{spec}'s sink saw something from C{source}."""
        self.assertIn((spec, source), events, f"nothing from {source} at {spec}: {events}")

    # -- the relay host -------------------------------------------------------

    def test_relay_reaches_nothing_inside(self) -> None:
        """From rl: no TCP, UDP or ICMP reaches cn, the home agent's LAN side or the mux."""
        cn_specs = (
            f"tcp:{Lab.CN}:5001", f"udp:{Lab.CN}:5001", f"udp:{Lab.CN}:434",
            f"raw:{Lab.CN}:1",
        )  # fmt: skip
        lan_specs = (f"tcp:{Lab.HA_LAN}:5002", f"udp:{Lab.HA_LAN}:5002", f"raw:{Lab.HA_LAN}:1")
        mux_specs = (f"tcp:{Lab.MUX}:{Lab.SOCKS_PORT}",)
        probes = (
            f"tcp:{Lab.CN}:5001", f"udp:{Lab.CN}:5001", f"udp:{Lab.CN}:434", f"icmp:{Lab.CN}",
            f"tcp:{Lab.HA_LAN}:5002", f"udp:{Lab.HA_LAN}:5002", f"icmp:{Lab.HA_LAN}",
            # The SOCKS5 ingress is forwarded from the public address, not for the relay.
            f"tcp:{Lab.HA_PUBLIC}:{Lab.SOCKS_PORT}",
        )  # fmt: skip
        cn = self.sink("cn", *cn_specs)
        lan = self.sink("ha", *lan_specs)
        mux = self.sink("mux", *mux_specs)
        result = self.probe("rl", *probes)
        got = cn.stop() + lan.stop() + mux.stop()
        self.assertEqual(got, [], result)
        for spec in probes:
            self.assertNotIn(result[spec], ("open", "reply"), spec)

        # Control: the same listeners hear a host on the home LAN (and the
        # internet the SOCKS5 port), so the silence above is the firewall's.
        cn = self.sink("cn", *cn_specs)
        lan = self.sink("ha", *lan_specs)
        mux = self.sink("mux", *mux_specs)
        inside = self.probe("mux", *probes[:7])
        outside = self.probe("inet", f"tcp:{Lab.HA_PUBLIC}:{Lab.SOCKS_PORT}")
        got = cn.stop() + lan.stop() + mux.stop()
        for spec in cn_specs + lan_specs:
            self.assertArrived(got, spec, Lab.MUX)
        self.assertEqual(inside[f"icmp:{Lab.CN}"], "reply")
        self.assertEqual(outside[f"tcp:{Lab.HA_PUBLIC}:{Lab.SOCKS_PORT}"], "open")
        self.assertArrived(got, mux_specs[0], Lab.INET_HA)

    def test_relay_reaches_home_agent_only_by_ip_in_ip(self) -> None:
        """From rl the home agent host gets IP protocol 4 and nothing else, not even ping."""
        ha = Lab.HA_PUBLIC
        specs = (
            f"udp:{ha}:434", f"udp:{ha}:4500", f"udp:{ha}:500", f"tcp:{ha}:5003",
            f"tcp:{ha}:22", f"raw:{ha}:1", f"raw:{ha}:4",
        )  # fmt: skip
        sink = self.sink("ha", *specs)
        # Protocol 4 to the home agent's LAN side or through it is refused too.
        cn = self.sink("cn", f"raw:{Lab.CN}:4")
        lan = self.sink("ha", f"raw:{Lab.HA_LAN}:4")
        probes = (
            f"udp:{ha}:434", f"udp:{ha}:4500", f"udp:{ha}:500", f"tcp:{ha}:5003",
            f"tcp:{ha}:22", f"icmp:{ha}", f"ipip:{ha}", f"ipip:{Lab.CN}", f"ipip:{Lab.HA_LAN}",
        )  # fmt: skip
        result = self.probe("rl", *probes)
        got = sink.stop()
        self.assertEqual(cn.stop() + lan.stop(), [])
        # IP-in-IP arrives at a raw socket for protocol 4 in ha ...
        self.assertArrived(got, f"raw:{ha}:4", Lab.RELAY_PUBLIC)
        # ... and it is the only thing that does.
        self.assertEqual({spec for spec, _ in got}, {f"raw:{ha}:4"}, result)
        self.assertEqual(result[f"icmp:{ha}"], "no reply")
        self.assertNotEqual(result[f"tcp:{ha}:5003"], "open")

        # Control: the internet reaches every one of those services.
        sink = self.sink("ha", *specs)
        self.probe("inet", *probes[:7])
        got = sink.stop()
        for spec in specs:
            self.assertArrived(got, spec, Lab.INET_HA)

    def test_relay_reaches_the_internet(self) -> None:
        """The relay host is on the internet: its default route works."""
        self.assertTrue(self.lab.ping("rl", Lab.INET_RL))
        self.assertTrue(self.lab.ping("rl", Lab.GW_PUBLIC))
        self.assertTrue(self.lab.ping("rl", Lab.V1_PUBLIC))

    # -- visited networks 4 and 5 ----------------------------------------------

    def test_v4_blocks_the_home_agent(self) -> None:
        """From V4's LAN nothing reaches 172.31.0.2, while the relay and the gateway do."""
        self.lab.move("v4")
        self.lab.wait_address("v4")
        ha, rl, gw = Lab.HA_PUBLIC, Lab.RELAY_PUBLIC, Lab.GW_PUBLIC
        ha_specs = (f"udp:{ha}:434", f"udp:{ha}:4500", f"tcp:{ha}:5004", f"raw:{ha}:1")
        rl_specs = (f"udp:{rl}:434", f"udp:{rl}:4500", f"tcp:{rl}:5004", f"raw:{rl}:1")
        gw_specs = (f"udp:{gw}:500", f"udp:{gw}:4500")
        probes = (
            f"udp:{ha}:434", f"udp:{ha}:4500", f"tcp:{ha}:5004", f"icmp:{ha}",
            f"udp:{rl}:434", f"udp:{rl}:4500", f"tcp:{rl}:5004", f"icmp:{rl}",
            f"udp:{gw}:500", f"udp:{gw}:4500", f"icmp:{Lab.HA_LAN}",
        )  # fmt: skip
        sinks = [self.sink("ha", *ha_specs), self.sink("rl", *rl_specs), self.sink("gw", *gw_specs)]
        result = self.probe("mn", *probes)
        got = [e for s in sinks for e in s.stop()]
        self.assertFalse([e for e in got if e[0] in ha_specs], got)
        for spec in rl_specs + gw_specs:
            # Behind V4's NAT: the sinks see its public address.
            self.assertArrived(got, spec, Lab.V4_PUBLIC)
        self.assertEqual(result[f"icmp:{ha}"], "no reply")
        self.assertEqual(result[f"icmp:{Lab.HA_LAN}"], "no reply")
        self.assertEqual(result[f"icmp:{rl}"], "reply")
        self.assertEqual(result[f"tcp:{rl}:5004"], "open")
        self.assertNotEqual(result[f"tcp:{ha}:5004"], "open")
        # Control: from V1 the home agent hears the same probes.
        self.lab.move("v1")
        address = self.lab.wait_address("v1")
        sink = self.sink("ha", *ha_specs)
        self.probe("mn", *probes[:4])
        got = sink.stop()
        for spec in ha_specs:
            self.assertArrived(got, spec, str(address.ip))

    def test_v5_lets_out_only_ipsec_to_the_gateway(self) -> None:
        """From V5's LAN only UDP 500 and 4500 to the gateway get out."""
        self.lab.move("v5")
        self.lab.wait_address("v5")
        ha, rl, gw = Lab.HA_PUBLIC, Lab.RELAY_PUBLIC, Lab.GW_PUBLIC
        gw_specs = (
            f"udp:{gw}:500", f"udp:{gw}:4500", f"udp:{gw}:434", f"tcp:{gw}:4500",
            f"tcp:{gw}:500", f"raw:{gw}:1",
        )  # fmt: skip
        rl_specs = (f"udp:{rl}:500", f"udp:{rl}:4500", f"udp:{rl}:434")
        ha_specs = (f"udp:{ha}:500", f"udp:{ha}:4500", f"udp:{ha}:434")
        probes = (
            f"udp:{gw}:500", f"udp:{gw}:4500", f"udp:{gw}:434", f"tcp:{gw}:4500",
            f"tcp:{gw}:500", f"icmp:{gw}", f"udp:{rl}:500", f"udp:{rl}:4500", f"udp:{rl}:434",
            f"udp:{ha}:500", f"udp:{ha}:4500", f"udp:{ha}:434", f"icmp:{Lab.INET_V5}",
        )  # fmt: skip
        sinks = [self.sink("gw", *gw_specs), self.sink("rl", *rl_specs), self.sink("ha", *ha_specs)]
        result = self.probe("mn", *probes)
        got = [e for s in sinks for e in s.stop()]
        self.assertEqual(
            sorted({spec for spec, _ in got}), sorted([f"udp:{gw}:500", f"udp:{gw}:4500"]), result
        )
        self.assertArrived(got, f"udp:{gw}:500", Lab.V5_PUBLIC)
        self.assertArrived(got, f"udp:{gw}:4500", Lab.V5_PUBLIC)
        self.assertEqual(result[f"icmp:{gw}"], "no reply")
        self.assertEqual(result[f"icmp:{Lab.INET_V5}"], "no reply")
        self.assertNotEqual(result[f"tcp:{gw}:4500"], "open")
        # Its own router still answers on the LAN (DHCP worked, ping too).
        self.assertTrue(self.lab.ping("mn", Lab.V5_LAN))
        # Control: from V1 every one of those listeners hears the probes.
        self.lab.move("v1")
        address = self.lab.wait_address("v1")
        sinks = [self.sink("gw", *gw_specs), self.sink("rl", *rl_specs), self.sink("ha", *ha_specs)]
        self.probe("mn", *probes[:-1])
        got = [e for s in sinks for e in s.stop()]
        for spec in gw_specs + rl_specs + ha_specs:
            self.assertArrived(got, spec, str(address.ip))

    # -- the gateway and the routes around it -------------------------------------

    def test_gateway_and_home_routes(self) -> None:
        """ha routes the VPN pool via gw; gw forwards nothing plain from the internet."""
        route = self.lab.exec("ha", "ip", "-4", "-j", "route", "get", "10.78.0.5").stdout
        self.assertEqual(json.loads(route)[0].get("gateway"), Lab.GW_LAN)
        self.assertEqual(self.lab.exec("gw", "sysctl", "-n", "net.ipv4.ip_forward").stdout, "1\n")
        self.assertTrue(self.lab.ping("gw", Lab.CN))
        self.assertTrue(self.lab.ping("gw", Lab.INET_GW))
        # The internet routes the home LAN through the home agent ...
        route = self.lab.exec("inet", "ip", "-4", "-j", "route", "get", Lab.CN).stdout
        self.assertEqual(json.loads(route)[0].get("gateway"), Lab.HA_PUBLIC)
        # ... and a packet for the home LAN sent to the gateway's public side
        # is not forwarded: only what comes out of its IPsec tunnels is.
        self.lab.exec("inet", "ip", "route", "replace", f"{Lab.CN}/32", "via", Lab.GW_PUBLIC)
        cn = self.sink("cn", f"udp:{Lab.CN}:5005", f"tcp:{Lab.CN}:5005")
        result = self.probe("inet", f"udp:{Lab.CN}:5005", f"tcp:{Lab.CN}:5005")
        self.assertEqual(cn.stop(), [], result)
