# -*- test-case-name: tests.test_ike_strongswan_client -*-
"""A stock IKEv2 client served by the home agent without Mobile IP.

In memory (``task.Clock``): our own initiator, never registered, stands in
for a stock client: the CHILD_SA whose CP request got the home address
routes that address to the IKE peer (NAT-T address, ESP from that address
only) and captures it; a registration then takes over; Delete withdraws.

In the lab (root, strongSwan): our home agent (``twistd smobility-home``)
in ``ha`` with a node configured for IKE PSK, a stock strongSwan charon
(kernel-libipsec) in ``mn`` on V1 asking for a virtual IP by CP: the SA is
established with 10.77.0.10, TCP from 10.77.0.10 reaches the correspondent
host, and the correspondent host reaches 10.77.0.10.
"""

from __future__ import annotations

import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from smobility.lab.strongswan import CHARON
from tests.test_ike_roaming import HOA, Pair, _binding
from tests.util import find_tool, require_root, require_tool, skip_or_fail

HA = "172.31.0.2"
CN = "10.77.0.100"
IDENTITY = "laptop@home.example"


class _Recorder:
    """A netlink stand-in that records routes."""

    def __init__(self) -> None:
        self.routes: set[str] = set()

    def add_route(self, net: IPv4Network, **kw: Any) -> None:
        self.routes.add(str(net))

    def del_route(self, net: IPv4Network, **kw: Any) -> None:
        self.routes.discard(str(net))

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class InMemoryIKEOnlyTests(SynchronousTestCase):
    """The home data plane with a client that runs IKE and never registers."""

    def setUp(self) -> None:
        self.p = Pair(self)
        self.nl = _Recorder()
        self.p.hdp.netlink = self.nl  # type: ignore[assignment]

    def connect(self) -> None:
        self.p.cike.initiate(("192.0.2.1", 4500), local=("0.0.0.0", 4500))
        self.p.pump()

    def test_child_sa_without_binding_routes_to_ike_peer(self) -> None:
        self.connect()
        p = self.p
        self.assertEqual(len(p.hike.engine.established()), 1)
        route = p.hdp.engine.by_node["laptop"]
        self.assertEqual(route.addr, p.client_addr)
        self.assertEqual(route.sources, frozenset({p.client_addr[0]}))
        self.assertEqual(route.inner, HOA.packed)
        self.assertEqual(p.hdp.installed, {"laptop": HOA})
        self.assertEqual(self.nl.routes, {f"{HOA}/32"})
        self.assertIn("laptop", p.hdp.ike_only)
        (child,) = p.hike.engine.established()[0].children
        self.assertEqual(route.inbound.spi, child.inbound_spi)

    def test_esp_only_from_ike_peer(self) -> None:
        self.connect()
        p = self.p
        cin, cout = p.cdp.ike_sas  # type: ignore[misc]
        from smobility.wire import ipv4

        packet = ipv4.icmp_echo(HOA, IPv4Address("10.77.0.100"), 1, 1, bytes(8))
        sealed = cout.seal(packet, 4)
        self.assertEqual(p.hdp.engine.from_udp_many([(sealed, ("203.0.113.9", 4500))]), [])
        self.assertEqual(p.hdp.engine.counters["bad_source"], 1)
        self.assertEqual(p.hdp.engine.from_udp_many([(sealed, p.client_addr)]), [packet])

    def test_registration_takes_over_then_withdraws(self) -> None:
        self.connect()
        p = self.p
        b = _binding("198.51.100.50", "198.51.100.50", False, p.clock.seconds())
        p.home.bindings["laptop"] = [b]
        p.hdp.bindings_changed("laptop", [b])
        route = p.hdp.engine.by_node["laptop"]
        self.assertEqual(route.addr, ("198.51.100.50", 4500))
        self.assertNotIn("laptop", p.hdp.ike_only)
        self.assertEqual(self.nl.routes, {f"{HOA}/32"})
        # The binding goes: withdrawn as for any registered node.
        del p.home.bindings["laptop"]
        p.hdp.bindings_changed("laptop", [])
        self.assertNotIn("laptop", p.hdp.engine.by_node)
        self.assertEqual(self.nl.routes, set())

    def test_delete_withdraws(self) -> None:
        self.connect()
        p = self.p
        (sa,) = p.cike.engine.established()
        p.cike.engine.delete_ike_sa(sa)
        p.cike.flush()
        p.pump()
        self.assertEqual(p.hike.engine.established(), [])
        self.assertNotIn("laptop", p.hdp.engine.by_node)
        self.assertEqual(p.hdp.installed, {})
        self.assertEqual(self.nl.routes, set())
        self.assertEqual(p.hdp.ike_only, set())

    def test_without_cp_kept_until_registration(self) -> None:
        self.p.hike.assigned_address = lambda child: None  # type: ignore[method-assign]
        self.connect()
        self.assertNotIn("laptop", self.p.hdp.engine.by_node)
        self.assertEqual(self.p.hdp.installed, {})

    def test_registered_client_unchanged(self) -> None:
        p = self.p
        p.register("198.51.100.7")
        p.pump()
        route = p.hdp.engine.by_node["laptop"]
        self.assertEqual(route.path, "direct")
        self.assertEqual(p.hdp.ike_only, set())
        # At home: the binding goes, the IKE SA stays; nothing is captured.
        del p.home.bindings["laptop"]
        p.hdp.bindings_changed("laptop", [])
        self.assertEqual(self.nl.routes, set())
        self.assertNotIn("laptop", p.hdp.engine.by_node)


# -- the lab ------------------------------------------------------------------------


def _swanctl(psk: str) -> str:
    return f"""
connections {{
    home {{
        version = 2
        remote_addrs = {HA}
        vips = 0.0.0.0
        proposals = aes128gcm16-prfsha256-ecp256
        encap = yes
        mobike = no
        rekey_time = 0
        reauth_time = 0
        dpd_delay = 0
        local {{
            auth = psk
            id = {IDENTITY}
        }}
        remote {{
            auth = psk
            id = {HA}
        }}
        children {{
            home {{
                mode = tunnel
                remote_ts = 10.77.0.0/24
                esp_proposals = aes128gcm16
                rekey_time = 0
                start_action = start
            }}
        }}
    }}
}}
secrets {{
    ike-home {{
        id-a = {IDENTITY}
        id-b = {HA}
        secret = "{psk}"
    }}
}}
"""


_SERVER = """
import socket, sys
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(4)
s.settimeout(limit)
print("ready", flush=True)
c, peer = s.accept()
c.settimeout(limit)
data = c.recv(100)
c.sendall(data.upper())
c.close()
print(peer[0], flush=True)
"""

_CLIENT = """
import socket, sys, time
src, dst, port, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + limit
while True:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.bind((src, 0))
        s.connect((dst, port))
        s.sendall(b"hello")
        print(s.recv(100).decode(), flush=True)
        break
    except OSError as e:
        s.close()
        if time.monotonic() > deadline:
            print("failed:", e, flush=True)
            sys.exit(1)
        time.sleep(0.3)
"""


class StockStrongSwanClientTests(SynchronousTestCase):
    """A stock strongSwan initiator gets its home address by CP and reaches the CN."""

    def setUp(self) -> None:
        require_root(self)
        require_tool(self, "ip")
        require_tool(self, "swanctl")
        if not os.access(CHARON, os.X_OK):
            skip_or_fail(self, f"needs strongSwan's charon at {CHARON}")
        if find_tool("mount") is None:
            skip_or_fail(self, "needs mount")

    def tcp(self, server: str, listen: str, client: str, src: str, port: int) -> str:
        """A TCP exchange: a listener in ``server`` on ``listen``, a client in ``client``."""
        proc = self.lab.popen(
            server, sys.executable, "-c", _SERVER, listen, str(port), "15",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            assert proc.stdout is not None
            proc.stdout.close()

        self.addCleanup(stop)
        assert proc.stdout is not None
        self.assertEqual(proc.stdout.readline().strip(), b"ready")
        r = self.lab.exec(
            client, sys.executable, "-c", _CLIENT, src, listen, str(port), "10",
            check=False, timeout=20,
        )  # fmt: skip
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.diagnostics())
        proc.wait(10)
        peer = proc.stdout.read().decode().strip()
        self.assertEqual(r.stdout.strip(), "HELLO")
        return peer

    def diagnostics(self) -> str:
        parts = []
        for name in ("home.log",):
            p = self.work / name
            if p.exists():
                parts.append(f"--- {name}\n" + p.read_text(errors="replace")[-4000:])
        if getattr(self, "charon", None) is not None:
            parts.append("--- charon\n" + self.charon.text()[-4000:])
        return "\n".join(parts)

    def test_stock_client_gets_home_address_and_reaches_cn(self) -> None:
        from smobility.demo.roam import NETS, Demo
        from smobility.lab import Lab
        from smobility.lab.strongswan import Charon

        started = time.monotonic()
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(4))
        self.lab = Lab(prefix=f"smobs{suffix}")
        self.work = Path(tempfile.mkdtemp(prefix="smob-sscli-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.addCleanup(self.lab.down)
        self.lab.up()
        demo = Demo(self.lab, self.work)
        self.addCleanup(demo.stop_all)
        home_cfg, _ = demo.write_configs()
        psk = "".join(random.choice(string.ascii_letters) for _ in range(32))
        psk_file = self.work / "keys" / "ike-psk"
        psk_file.write_text(psk + "\n")
        psk_file.chmod(0o600)
        text = home_cfg.read_text()
        head = text[: text.index("[mobile_node.esp]")]
        head = head.replace("[tunnel]", "[ike]\nliveness = 10\n\n[tunnel]")
        home_cfg.write_text(
            head + f'[mobile_node.ike]\nidentity = "{IDENTITY}"\npsk_file = "{psk_file}"\n'
        )
        demo.twistd("ha", "smobility-home", home_cfg, "home.log")
        self.lab.move("v1")
        addr = self.lab.wait_address(NETS["v1"])
        for key in ("all", "default"):
            self.lab.exec("mn", "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        # The home agent listens once its log says so.
        deadline = time.monotonic() + 15
        while "data plane: TUN" not in (self.work / "home.log").read_text(errors="replace"):
            if time.monotonic() > deadline:
                self.fail("the home agent did not start:\n" + self.diagnostics())
            time.sleep(0.1)

        self.charon = Charon(self.lab.ns("mn"), self.work / "swan", _swanctl(psk))
        self.addCleanup(self.charon.stop)
        self.charon.start()
        deadline = time.monotonic() + 20
        while True:
            listing = self.charon.swanctl("--list-sas", check=False).stdout
            if "ESTABLISHED" in listing and "INSTALLED" in listing:
                break
            if time.monotonic() > deadline:
                self.fail(f"no SA:\n{listing}\n{self.diagnostics()}")
            time.sleep(0.2)
        self.assertIn("[10.77.0.10]", listing)  # the virtual IP, from our CP reply
        self.assertIn(f"{addr.ip}[4500]", listing)  # UDP-encapsulated
        self.assertIn("10.77.0.10", self.lab.exec("mn", "ip", "-4", "addr").stdout)
        home_log = (self.work / "home.log").read_text(errors="replace")
        self.assertIn("by IKE alone", home_log)

        # Out: from the home address to the correspondent host.
        peer = self.tcp("cn", CN, "mn", "10.77.0.10", 5101)
        self.assertEqual(peer, "10.77.0.10")
        # In: the correspondent host reaches the home address.
        peer = self.tcp("mn", "10.77.0.10", "cn", CN, 5102)
        self.assertEqual(peer, CN)

        # The IKE SA goes: the home agent withdraws the route and proxy ARP.
        self.charon.swanctl("--terminate", "--ike", "home", check=False, timeout=10)
        deadline = time.monotonic() + 10
        while "(10.77.0.10) withdrawn" not in (self.work / "home.log").read_text(
            errors="replace"
        ):
            if time.monotonic() > deadline:
                self.fail("not withdrawn:\n" + self.diagnostics())
            time.sleep(0.1)
        neigh = self.lab.exec("ha", "ip", "neigh", "show", "proxy").stdout
        self.assertNotIn("10.77.0.10", neigh)
        routes = self.lab.exec("ha", "ip", "-4", "route").stdout
        self.assertNotIn("10.77.0.10", routes)
        self.assertLess(time.monotonic() - started, 60)
