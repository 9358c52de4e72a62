# -*- test-case-name: tests.test_lab -*-
"""
Tests for L{smobility.lab}: the namespace lab.

L{TopologyTests} and L{CommandLineTests} need nothing.  L{LiveLabTests} build
the real lab (root, iproute2, nftables, dnsmasq, udhcpc) under a prefix of its
own, and remove it after every test, also when the test fails.  All traffic
stays inside the lab's namespaces.
"""

from __future__ import annotations

import io
import json
import random
import string
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from importlib import resources
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from smobility.lab import TOPOLOGY, Lab, LabError
from smobility.lab.__main__ import main
from smobility.lab.namespaces import SCRIPT_NAME, pid_alive
from smobility.lab.topology import Link, Topology, check
from tests.util import require_root, require_tool

TOOLS = ("ip", "sysctl", "nft", "dnsmasq", "udhcpc", "ss")

# A UDP listener for the home agent's namespace: print the bound port, then the
# source address of the first datagram.
LISTENER = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
s.settimeout(10)
data, addr = s.recvfrom(100)
print(addr[0], flush=True)
"""

SENDER = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
"""


def _unique_prefix() -> str:
    """A lab prefix no other test run uses: "smobt" and three random letters."""
    return "smobt" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))


class TopologyTests(SynchronousTestCase):
    """The lab's description, checked without building anything."""

    def test_names_fit(self) -> None:
        """Every interface name has at most 15 characters; the topology checks out."""
        check(TOPOLOGY)
        for link in TOPOLOGY.links:
            self.assertLessEqual(len(link.ifname), 15)
            self.assertLessEqual(len(link.peer_ifname), 15)
        self.assertEqual(
            TOPOLOGY.all_bridges(), ("br-home", "br-v1", "br-v2", "br-v3", "br-v4", "br-v5")
        )

    def test_addresses(self) -> None:
        """The constants the demo and the tests rely on."""
        self.assertEqual(Lab.HA_PUBLIC, "172.31.0.2")
        self.assertEqual(Lab.HA_LAN, "10.77.0.1")
        self.assertEqual(Lab.CN, "10.77.0.100")
        self.assertEqual(Lab.HOA, "10.77.0.10")
        self.assertIn(IPv4Address(Lab.HOA), IPv4Network(Lab.HOME_NET))
        self.assertEqual(Lab.NETWORKS, ("home", "v1", "v2", "v3", "v4", "v5"))
        home = TOPOLOGY.network("home")
        self.assertEqual([(r.mac, r.address) for r in home.reservations], [(Lab.MN_MAC, Lab.HOA)])
        # V1 and the home LAN are routed from the internet (the home LAN is
        # kept out by the perimeter firewall); V2-V5 are not (behind NAT).
        routed = {(r.destination, r.via) for r in TOPOLOGY.routes if r.role == "inet"}
        self.assertEqual(routed, {(Lab.V1_NET, Lab.V1_PUBLIC), (Lab.HOME_NET, Lab.HA_PUBLIC)})
        self.assertEqual(
            [(m.role, m.source) for m in TOPOLOGY.masquerades],
            [("v2", Lab.V2_NET), ("v3", Lab.V3_NET), ("v4", Lab.V4_NET), ("v5", Lab.V5_NET)],
        )

    def test_relay_and_gateway(self) -> None:
        """The relay host, the VPN gateway and visited networks 4 and 5."""
        self.assertEqual((Lab.RELAY_PUBLIC, Lab.INET_RL), ("172.31.4.2", "172.31.4.1"))
        self.assertEqual((Lab.GW_PUBLIC, Lab.INET_GW), ("172.31.5.2", "172.31.5.1"))
        self.assertEqual((Lab.GW_LAN, Lab.VPN_POOL), ("10.77.0.3", "10.78.0.0/24"))
        self.assertIn(IPv4Address(Lab.GW_LAN), IPv4Network(Lab.HOME_NET))
        self.assertEqual((Lab.V4_PUBLIC, Lab.V4_LAN), ("172.31.6.2", "192.168.104.1"))
        self.assertEqual((Lab.V5_PUBLIC, Lab.V5_LAN), ("172.31.7.2", "192.168.105.1"))
        for role in ("rl", "gw", "v4", "v5"):
            self.assertIn(role, TOPOLOGY.roles)
        self.assertLessEqual({"gw", "v4", "v5"}, TOPOLOGY.forwarding)
        self.assertNotIn("rl", TOPOLOGY.forwarding)
        routes = {(r.role, r.destination): r.via for r in TOPOLOGY.routes}
        self.assertEqual(routes[("ha", Lab.VPN_POOL)], Lab.GW_LAN)
        self.assertEqual(routes[("rl", "default")], Lab.INET_RL)
        self.assertEqual(routes[("gw", "default")], Lab.INET_GW)
        gw_links = {(link.ifname, link.address, link.bridge)
                    for link in TOPOLOGY.links if link.role == "gw"}  # fmt: skip
        self.assertEqual(
            gw_links, {("lan0", "10.77.0.3/24", "br-home"), ("wan0", "172.31.5.2/24", None)}
        )
        v4, v5 = TOPOLOGY.network("v4"), TOPOLOGY.network("v5")
        self.assertEqual((v4.dhcp_first, v4.dhcp_last), ("192.168.104.100", "192.168.104.199"))
        self.assertEqual((v5.dhcp_first, v5.dhcp_last), ("192.168.105.100", "192.168.105.199"))
        walls = {f.role: f.chains for f in TOPOLOGY.firewalls}
        self.assertIn(f"ip saddr {Lab.RELAY_PUBLIC} ip daddr {Lab.HA_PUBLIC} ip protocol 4 "
                      "accept", walls["ha"])  # fmt: skip
        # The relay's rules come before the SOCKS5 forwarding rule.
        forward = walls["ha"][walls["ha"].index("chain forward") :]
        self.assertLess(forward.index(f"ip saddr {Lab.RELAY_PUBLIC} drop"),
                        forward.index(f"dport {Lab.SOCKS_PORT} accept"))  # fmt: skip
        self.assertIn(Lab.HA_PUBLIC, walls["v4"])
        self.assertIn(f"ip daddr {Lab.GW_PUBLIC} udp dport {{ 500, 4500 }} accept", walls["v5"])
        self.assertIn("policy drop", walls["v5"])

    def test_bad_topology(self) -> None:
        """A too long interface name is refused before anything is built."""
        bad = Topology(
            roles=("sw", "a"),
            links=(Link("a", "x" * 16, None, "sw", "p"),),
            routes=(),
            forwarding=frozenset(),
            networks=(),
        )
        self.assertRaises(ValueError, check, bad)

    def test_prefix(self) -> None:
        """Namespace names are <prefix>-<role>; a prefix that could clash is refused."""
        self.assertEqual(Lab("smobtxyz").ns("mn"), "smobtxyz-mn")
        self.assertEqual(str(Lab("smobtxyz").workdir), "/run/smobtxyz-lab")
        for bad in ("", "smob-x", "Smob", "1smob", "a" * 13):
            self.assertRaises(ValueError, Lab, bad)

    def test_script_packaged(self) -> None:
        """The DHCP client script ships with the package and never writes resolv.conf."""
        text = resources.files("smobility.lab").joinpath(SCRIPT_NAME).read_text()
        self.assertTrue(text.startswith("#!/bin/sh\n"))
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        self.assertNotIn("resolv", "\n".join(code))


class CommandLineTests(SynchronousTestCase):
    """C{python -m smobility.lab} without building anything."""

    def test_help(self) -> None:
        """--help explains the commands and exits 0."""
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as cm:
            main(["--help"])
        self.assertEqual(cm.exception.code, 0)
        for word in ("up", "down", "move NET", "status", "--prefix"):
            self.assertIn(word, out.getvalue())

    def test_bad_network(self) -> None:
        """move refuses a network the lab does not have."""
        with redirect_stderr(io.StringIO()), self.assertRaises(SystemExit) as cm:
            main(["move", "v9"])
        self.assertEqual(cm.exception.code, 2)

    def test_new_networks(self) -> None:
        """move takes the networks added for the relay and gateway paths."""
        from smobility.lab.__main__ import _parser

        for net in ("v4", "v5"):
            self.assertEqual(_parser().parse_args(["move", net]).net, net)

    def test_prefix_anywhere(self) -> None:
        """--prefix works before and after the command; a bad one is an error."""
        for argv in (["--prefix", "smobtnone", "status"], ["status", "--prefix", "smobtnone"]):
            out = io.StringIO()
            with redirect_stdout(out):
                self.assertEqual(main(argv), 0)
            self.assertIn("'smobtnone'", out.getvalue())
        with redirect_stderr(io.StringIO()):
            self.assertEqual(main(["--prefix", "Bad-One", "status"]), 2)


class LiveLabTests(SynchronousTestCase):
    """The real lab in network namespaces (needs root; a skip fails under CI=true)."""

    prefix = _unique_prefix()

    def setUp(self) -> None:
        require_root(self)
        for tool in TOOLS:
            require_tool(self, tool)
        self.lab = Lab(self.prefix)
        # Registered before up(): a half-built lab is removed too.
        self.addCleanup(self.lab.down)

    def ha_sees(self) -> str:
        """Send UDP from the mobile node to the home agent; return the source it sees."""
        listener = self.lab.popen(
            "ha",
            sys.executable,
            "-c",
            LISTENER,
            Lab.HA_PUBLIC,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert listener.stdout is not None
            port = listener.stdout.readline().decode().strip()
            self.assertTrue(port.isdigit(), f"listener said {port!r}")
            self.lab.exec("mn", sys.executable, "-c", SENDER, Lab.HA_PUBLIC, port)
            out, err = listener.communicate(timeout=15)
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
        self.assertEqual(listener.returncode, 0, err.decode())
        return out.decode().strip()

    def test_up_idempotent(self) -> None:
        """up twice, then up from another Lab object: one complete lab each time."""
        self.lab.up()
        first = {p.name: p.pid for p in self.lab.processes()}
        self.lab.up()
        Lab(self.prefix).up()  # as after a crash: leftovers of another object
        expected = {self.lab.ns(role) for role in TOPOLOGY.roles}
        self.assertEqual(set(self.lab.namespaces()), expected)
        procs = self.lab.processes()
        self.assertEqual(
            sorted(p.name for p in procs),
            [
                "dnsmasq-home",
                "dnsmasq-v1",
                "dnsmasq-v2",
                "dnsmasq-v3",
                "dnsmasq-v4",
                "dnsmasq-v5",
                "udhcpc",
            ],
        )
        self.assertTrue(all(p.running for p in procs), procs)
        for pid in first.values():
            assert pid is not None
            self.assertFalse(pid_alive(pid), f"process {pid} of the first up() still runs")
        self.assertIsNone(self.lab.attached())
        self.assertIsNone(self.lab.uplink_address())
        # Every DHCP server listens once up() returns.
        for role in ("ha", "v1", "v2", "v3", "v4", "v5"):
            out = self.lab.exec(role, "ss", "-H", "-uln", "sport = :67").stdout
            self.assertIn(":67", out)

    def test_move_v1(self) -> None:
        """On V1 (routed) the mobile node gets a DHCP address and reaches the home agent."""
        self.lab.up()
        took = self.lab.move("v1")
        self.assertLess(took, 10.0)
        address = self.lab.wait_address(Lab.V1_NET)
        self.assertEqual(address.network, IPv4Network(Lab.V1_NET))
        self.assertTrue(100 <= int(address.ip) & 0xFF <= 199, address)
        self.assertEqual(self.lab.attached(), "v1")
        lease = self.lab.lease()
        assert lease is not None
        self.assertEqual(lease.router, IPv4Address(Lab.V1_LAN))
        route = self.lab.exec("mn", "ip", "-4", "-j", "route", "show", "default").stdout
        self.assertEqual(json.loads(route)[0]["gateway"], Lab.V1_LAN)
        self.assertTrue(self.lab.ping("mn", Lab.HA_PUBLIC))
        # Routed, not translated: the home agent sees the care-of address itself.
        self.assertEqual(self.ha_sees(), str(address.ip))

    def test_move_v2(self) -> None:
        """On V2 the mobile node is behind NAT: the home agent sees 172.31.2.2."""
        self.lab.up()
        # A second move before the first one's lease: the last one wins.
        self.lab.move("v1")
        self.lab.move("v2")
        address = self.lab.wait_address("v2")
        self.assertIn(address.ip, IPv4Network(Lab.V2_NET))
        self.assertEqual(self.lab.attached(), "v2")
        self.assertEqual(self.ha_sees(), Lab.V2_PUBLIC)
        # Nothing on the internet routes to V2.
        self.assertFalse(self.lab.ping("inet", str(address.ip)))

    def test_move_v3_strict_firewall(self) -> None:
        """On V3 nothing gets out but the proxy host; the home perimeter admits only SOCKS."""
        self.lab.up()
        self.lab.move("v3")
        address = self.lab.wait_address("v3")
        self.assertIn(address.ip, IPv4Network(Lab.V3_NET))
        self.assertTrue(self.lab.ping("mn", Lab.PROXY))
        self.assertFalse(self.lab.ping("mn", Lab.HA_PUBLIC))
        self.assertTrue(self.lab.ping("proxy", Lab.HA_PUBLIC))
        # The home perimeter forwards TCP to the SOCKS5 ingress port only.
        listener = self.lab.popen(
            "mux", sys.executable, "-c",
            "import socket,time\n"
            "a=socket.socket(); a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"a.bind(('{Lab.MUX}', {Lab.SOCKS_PORT})); a.listen(4)\n"
            "b=socket.socket(); b.bind(('0.0.0.0', 8080)); b.listen(4)\n"
            "print('ready', flush=True); time.sleep(30)",
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(listener.wait, 10)
        self.addCleanup(listener.kill)
        assert listener.stdout is not None
        self.assertEqual(listener.stdout.readline().strip(), b"ready")
        probe = (
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(2)\n"
            "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
            "except OSError as e:\n print('closed', e)"
        )
        ok = self.lab.exec("proxy", sys.executable, "-c", probe, Lab.HA_PUBLIC,
                           str(Lab.SOCKS_PORT)).stdout  # fmt: skip
        self.assertIn("open", ok)
        # The internet has a route into the home LAN: the firewall, not the
        # routing, must be what stops everything but the SOCKS5 port.
        route = self.lab.exec("inet", "ip", "-4", "-j", "route", "get", Lab.MUX).stdout
        self.assertEqual(json.loads(route)[0].get("gateway"), Lab.HA_PUBLIC)
        blocked = self.lab.exec("inet", sys.executable, "-c", probe, Lab.MUX, "8080").stdout
        self.assertIn("closed", blocked)
        allowed = self.lab.exec("inet", sys.executable, "-c", probe, Lab.MUX,
                                str(Lab.SOCKS_PORT)).stdout  # fmt: skip
        self.assertIn("open", allowed)
        self.assertFalse(self.lab.ping("inet", Lab.CN))
        # Nor is the home agent's own LAN address reachable from outside.
        self.assertFalse(self.lab.ping("inet", Lab.HA_LAN))
        self.assertTrue(self.lab.ping("inet", Lab.HA_PUBLIC))

    def test_move_home(self) -> None:
        """At home the mobile node gets its reserved address and reaches cn on the LAN."""
        self.lab.up()
        self.lab.move("v2")
        self.lab.wait_address("v2")
        self.lab.move("home")
        address = self.lab.wait_address(Lab.HOME_NET)
        self.assertEqual(address, IPv4Interface(f"{Lab.HOA}/24"))
        self.assertEqual(self.lab.attached(), "home")
        self.assertTrue(self.lab.ping("mn", Lab.CN))
        # Directly on the LAN, not through a router.
        route = self.lab.exec("mn", "ip", "-4", "-j", "route", "get", Lab.CN).stdout
        self.assertNotIn("gateway", json.loads(route)[0])

    def test_detach(self) -> None:
        """detach leaves the uplink without address, default route or lease."""
        self.lab.up()
        self.lab.move("v1")
        self.lab.wait_address("v1")
        self.lab.detach()
        self.assertIsNone(self.lab.uplink_address())
        self.assertIsNone(self.lab.lease())
        self.assertIsNone(self.lab.attached())
        routes = self.lab.exec("mn", "ip", "-4", "route", "show").stdout
        self.assertEqual(routes.strip(), "")
        self.assertRaises(LabError, self.lab.wait_address, None, 0.3)

    def test_foreign_workdir(self) -> None:
        """up refuses a work directory that is not the lab's, and leaves nothing behind."""
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        # A process that would pass for the lab's (its command line names the
        # directory) if the lab did not first check the directory is its own.
        bystander = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", f"{workdir}/x"]
        )
        self.addCleanup(bystander.wait)
        self.addCleanup(bystander.kill)
        (workdir / "keep.pid").write_text(f"{bystander.pid}\n")
        lab = Lab(self.prefix, workdir=workdir)
        self.addCleanup(lab.down)
        self.assertRaises(LabError, lab.up)
        self.assertEqual(lab.namespaces(), [])
        self.assertTrue((workdir / "keep.pid").exists())
        self.assertIsNone(bystander.poll())

    def test_down(self) -> None:
        """down (from a fresh object, as after a crash) leaves nothing behind."""
        self.lab.up()
        self.lab.move("v2")
        self.lab.wait_address("v2")
        pids = [p.pid for p in self.lab.processes()]
        self.assertEqual(len(pids), 7)
        for role in ("v2", "v4", "v5", "ha", "gw"):
            tables = self.lab.exec(role, "nft", "list", "tables").stdout
            self.assertIn(f"table ip {self.prefix}", tables)
        workdir = self.lab.workdir

        Lab(self.prefix).down()

        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
        self.assertNotIn(f"{self.prefix}-", listed)
        for pid in pids:
            assert pid is not None
            self.assertFalse(pid_alive(pid), f"process {pid} still runs")
        self.assertFalse(workdir.exists())
        host = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        self.assertNotIn(f"table ip {self.prefix}\n", host)
        Lab(self.prefix).down()  # nothing left: still fine
