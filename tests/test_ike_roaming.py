"""IKEv2 keys the tunnel: the home agent's responder and the client's initiator.

In memory (``task.Clock``): the two data planes joined by a fake link, IKE
after the registration, SAs from the CHILD_SA on both sides, a move that
keeps the IKE SA, Delete, a revoked certificate refused at IKE_AUTH.

In the lab (root): real ``twistd`` processes configured with IKE (PSK), ESP
with the negotiated SPIs, a move V1 -> V2 (NAT) on the same IKE SA, and a
revoked client certificate refused at IKE_AUTH.
"""

from __future__ import annotations

import random
import shutil
import string
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.config import (
    AuthKey,
    ClientIKEConfig,
    HomeIKEConfig,
    IKEParameters,
    MobileNodeConfig,
    NodeIKEConfig,
)
from smobility.engines.bindings import Binding
from smobility.engines.ike import Role
from smobility.engines.mobilenode import MobileNode, MobileNodeSettings, State
from smobility.services.dataplane import ClientDataPlane, HomeDataPlane
from smobility.services.ike_service import (
    IKEService,
    client_ike_config,
    home_cert_check,
    home_ike_config,
    make_identity,
)
from smobility.store.pki import PKIStore
from smobility.wire import ipv4

HA = "192.0.2.1"
HOA = IPv4Address("10.77.0.10")
PSK = b"a-shared-secret-of-some-length"
PARAMS = IKEParameters(
    ("aes128gcm16-prfsha256-ecp256",), ("aes128gcm16",), 0, 0, 0
)


class _Netlink:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class _Tun:
    name = "t0"

    def write_many(self, packets: list[bytes]) -> None:
        pass

    def close(self) -> None:
        pass


class _Home:
    def __init__(self) -> None:
        self.bindings: dict[str, list[Binding]] = {}


def _binding(coa: str, source: str, nat: bool, t: float) -> Binding:
    return Binding("laptop", HOA, IPv4Address(coa), 60, t, t + 60, 1, source, 434, nat=nat)


class Pair:
    """A home data plane and a client data plane joined in memory."""

    def __init__(
        self,
        test: SynchronousTestCase,
        *,
        auth: str = "psk",
        client_cert: tuple[Path, Path] | None = None,
        store: PKIStore | None = None,
        ha_creds: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.home = _Home()
        self.hdp = HomeDataPlane(
            self.home, sas={}, device="t0", listen="0.0.0.0", port=4500,  # type: ignore[arg-type]
            lan_interface=None, path_mtu=1500, lan_address=IPv4Address("10.77.0.1"),
            reactor=self.clock, netlink=_Netlink(),  # type: ignore[arg-type]
        )  # fmt: skip
        node_ike = NodeIKEConfig("laptop.example", "fqdn", auth, PSK if auth == "psk" else b"")
        node = MobileNodeConfig(
            "laptop", HOA, AuthKey(1000, bytes(16)), 60, 1, None, ike=node_ike
        )
        hcert = hkey = ca = None
        if ha_creds is not None:
            hcert, hkey, ca = ha_creds
        home_ike = HomeIKEConfig(HA, "ipv4", PARAMS, hcert, hkey, Path("/nonexistent"), 0)
        anchors = (store.ca_certificate(),) if store is not None else ()
        config, names = home_ike_config(
            home_ike, (node,), listen="0.0.0.0", nat_t_port=4500, trust_anchors=anchors
        )
        check = home_cert_check(store, self.clock) if store is not None else None
        self.hike = IKEService(
            Role.RESPONDER, config, self.clock, send_nat_t=lambda d: None, cert_check=check
        )
        self.hdp.attach_ike(
            self.hike, names, {"laptop": make_identity("laptop.example", "fqdn")}, 0
        )
        settings = MobileNodeSettings(
            name="laptop", home_address=HOA, home_agent=IPv4Address(HA), spi=1000,
            key=bytes(16), algorithm="hmac-md5", lifetime=60,
        )  # fmt: skip
        self.node = MobileNode(settings, clock=self.clock, send=lambda data: None)
        self.cdp = ClientDataPlane(
            self.node, sas=None, device="t1", home_agent=IPv4Address(HA), ha_port=4500,
            local_port=4500, home_network=IPv4Network("10.77.0.0/24"), routes="home",
            path_mtu=1500, keepalive=20, reactor=self.clock, netlink=_Netlink(),  # type: ignore[arg-type]
        )  # fmt: skip
        cike = ClientIKEConfig(
            "laptop.example", "fqdn", auth, PSK if auth == "psk" else b"", HA, "ipv4", PARAMS,
            client_cert[0] if client_cert else None, client_cert[1] if client_cert else None,
            ca,
        )  # fmt: skip
        cconfig, ccheck = client_ike_config(cike, local_port=4500, ha_port=4500, clock=self.clock)
        self.cike = IKEService(
            Role.INITIATOR, cconfig, self.clock, send_nat_t=lambda d: None, cert_check=ccheck
        )
        self.cdp.attach_ike(self.cike)
        self.hdp.pipe.tun = _Tun()  # type: ignore[assignment]
        self.cdp.pipe.tun = _Tun()  # type: ignore[assignment]
        self.to_home: list[tuple[bytes, tuple[str, int]]] = []
        self.to_client: list[tuple[bytes, tuple[str, int]]] = []
        self.hdp.pipe.divert = self._capture(self.to_client)
        self.cdp.pipe.divert = self._capture(self.to_home)
        self.client_addr = ("198.51.100.7", 4500)
        self.inner_home: list[bytes] = []
        self.inner_client: list[bytes] = []

    @staticmethod
    def _capture(
        queue: list[tuple[bytes, tuple[str, int]]],
    ) -> Callable[[list[tuple[bytes, tuple[str, int]]]], bool]:
        def divert(datagrams: list[tuple[bytes, tuple[str, int]]]) -> bool:
            queue.extend(datagrams)
            return True

        return divert

    def register(self, coa: str, source: str | None = None, nat: bool = False) -> None:
        """The home agent binds, the client sees REGISTERED."""
        b = _binding(coa, source or coa, nat, self.clock.seconds())
        self.home.bindings["laptop"] = [b]
        self.hdp.bindings_changed("laptop", [b])
        self.node.state = State.REGISTERED
        self.node.care_of = IPv4Address(coa)
        self.node.registered_until = self.clock.seconds() + 60
        self.cdp.state_changed(self.node)

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            if not self.to_home and not self.to_client:
                return
            th, tc = list(self.to_home), list(self.to_client)
            self.to_home.clear()
            self.to_client.clear()
            if th:
                self.inner_home += self.hdp.engine.from_udp_many(
                    [(d, self.client_addr) for d, _ in th]
                )
            if tc:
                self.inner_client += self.cdp.engine.from_udp_many([(d, (HA, 4500)) for d, _ in tc])


def _ping(src: IPv4Address, dst: IPv4Address) -> bytes:
    return ipv4.icmp_echo(src, dst, 1, 1, bytes(32))


class InMemoryTests(SynchronousTestCase):
    """Both data planes and both IKE services on task.Clock."""

    def test_ike_after_registration_keys_both_sides(self) -> None:
        p = Pair(self)
        self.assertEqual(p.cdp.engine.by_node, {})
        p.register("198.51.100.7")
        p.pump()
        self.assertEqual(len(p.hike.engine.established()), 1)
        self.assertEqual(len(p.cike.engine.established()), 1)
        home = p.hdp.engine.by_node["laptop"]
        client = p.cdp.engine.by_node["laptop"]
        self.assertEqual(home.inbound.spi, client.outbound.spi)
        self.assertEqual(home.outbound.spi, client.inbound.spi)
        self.assertEqual(home.addr, ("198.51.100.7", 4500))
        # Traffic both ways under the IKE SAs.
        out: list[tuple[bytes, tuple[str, int]]] = []
        back: list[bytes] = []
        p.cdp.engine.from_tun([_ping(HOA, IPv4Address("10.77.0.100"))], out, back)
        p.to_home.extend(out)
        out = []
        p.hdp.engine.from_tun([_ping(IPv4Address("10.77.0.100"), HOA)], out, back)
        p.to_client.extend(out)
        p.pump()
        self.assertTrue(any(x[16:20] == IPv4Address("10.77.0.100").packed for x in p.inner_home))
        self.assertTrue(any(x[16:20] == HOA.packed for x in p.inner_client))

    def test_child_sa_before_binding_then_binding_takes_over(self) -> None:
        p = Pair(self)
        p.node.state = State.REGISTERED
        p.cdp._start_ike()
        p.pump()
        # No binding yet, CP gave the home address: served by IKE alone.
        self.assertIn("laptop", p.hdp.ike_sas)
        self.assertEqual(p.hdp.engine.by_node["laptop"].path, "ike")
        self.assertEqual(p.hdp.ike_only, {"laptop"})
        b = _binding("198.51.100.7", "198.51.100.7", False, p.clock.seconds())
        p.home.bindings["laptop"] = [b]
        p.hdp.bindings_changed("laptop", [b])
        route = p.hdp.engine.by_node["laptop"]
        self.assertEqual(route.inbound.spi, p.hdp.ike_sas["laptop"][0].spi)
        self.assertEqual(route.addr, ("198.51.100.7", 4500))
        self.assertEqual(p.hdp.ike_only, set())

    def test_sequence_space_near_its_end_rekeys(self) -> None:
        """An outbound SA near 2**32 packets makes the data plane ask IKE for a rekey."""
        from smobility.services.dataplane import SEQUENCE_CHECK
        from smobility.wire.esp import DEFAULT_SOFT_LIMIT

        p = Pair(self)
        p.register("198.51.100.7")
        p.pump()
        client = p.cdp.engine.by_node["laptop"]
        old_out = client.outbound.spi
        client.outbound._seq = DEFAULT_SOFT_LIMIT  # as if billions of packets went out
        self.assertTrue(client.outbound.needs_rekey)
        p.clock.advance(SEQUENCE_CHECK)
        p.pump()
        client = p.cdp.engine.by_node["laptop"]
        home = p.hdp.engine.by_node["laptop"]
        self.assertNotEqual(client.outbound.spi, old_out)
        self.assertEqual(home.inbound.spi, client.outbound.spi)
        self.assertFalse(client.outbound.needs_rekey)
        # Traffic flows under the new SAs.
        out: list[tuple[bytes, tuple[str, int]]] = []
        p.cdp.engine.from_tun([_ping(HOA, IPv4Address("10.77.0.100"))], out, [])
        p.to_home.extend(out)
        p.inner_home.clear()
        p.pump()
        self.assertTrue(p.inner_home)

    def test_move_keeps_the_ike_sa(self) -> None:
        p = Pair(self)
        p.register("198.51.100.7")
        p.pump()
        (sa,) = p.hike.engine.established()
        inits = p.hike.engine.counters.copy()
        # V2, behind NAT: the registration comes from the NAT's address.
        p.client_addr = ("203.0.113.9", 61000)
        p.register("192.168.102.10", source="203.0.113.9", nat=True)
        self.assertEqual(sa.remote[0], "203.0.113.9")
        p.pump()
        self.assertEqual(p.hike.engine.established(), [sa])
        self.assertEqual(len(p.cike.engine.sas), 1)
        # The liveness check and the dummy ESP packet told the home agent the NAT port.
        self.assertEqual(sa.remote, ("203.0.113.9", 61000))
        self.assertEqual(p.hdp.engine.by_node["laptop"].addr, ("203.0.113.9", 61000))
        self.assertEqual(
            p.hike.engine.counters.get("refused_auth", 0), inits.get("refused_auth", 0)
        )

    def test_delete_removes_sas(self) -> None:
        p = Pair(self)
        p.register("198.51.100.7")
        p.pump()
        (sa,) = p.cike.engine.established()
        p.cike.engine.delete_ike_sa(sa)
        p.cike.flush()
        p.pump()
        self.assertNotIn("laptop", p.cdp.engine.by_node)
        self.assertNotIn("laptop", p.hdp.engine.by_node)
        self.assertEqual(p.hdp.ike_sas, {})
        # The client tries again a little later, as it is still registered.
        p.clock.advance(6)
        p.pump()
        self.assertIn("laptop", p.hdp.engine.by_node)


class CertificateTests(SynchronousTestCase):
    """Certificates from the home server's CA: revocation checked at IKE_AUTH."""

    def setUp(self) -> None:
        from smobility import pki

        self.dir = Path(tempfile.mkdtemp(prefix="smob-ike-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = PKIStore(self.dir / "home.sqlite")
        self.addCleanup(self.store.close)
        self.store.init_ca()
        ca = self.dir / "ca.crt"
        ca.write_bytes(pki.certificate_pem(self.store.ca_certificate()))

        def write(name: str, san: x509.GeneralName, profile: str) -> tuple[Path, Path]:
            cert, key = self.store.issue(name, sans=[san], profile=profile)  # type: ignore[arg-type]
            c, k = self.dir / f"{name}.crt", self.dir / f"{name}.key"
            c.write_bytes(pki.certificate_pem(cert))
            k.write_bytes(pki.private_key_pem(key))
            return c, k

        import ipaddress

        self.ha = write("ha", x509.IPAddress(ipaddress.ip_address(HA)), "server")
        self.client = write("laptop", x509.DNSName("laptop.example"), "client")
        self.ca = ca

    def pair(self) -> Pair:
        return Pair(
            self, auth="pubkey", client_cert=self.client, store=self.store,
            ha_creds=(self.ha[0], self.ha[1], self.ca),
        )  # fmt: skip

    def test_valid_certificate(self) -> None:
        p = self.pair()
        p.register("198.51.100.7")
        p.pump()
        self.assertEqual(len(p.hike.engine.established()), 1)
        self.assertIn("laptop", p.cdp.engine.by_node)

    def test_revoked_certificate_refused(self) -> None:
        self.store.revoke("laptop")
        p = self.pair()
        p.register("198.51.100.7")
        p.pump()
        self.assertEqual(p.hike.engine.established(), [])
        self.assertEqual(p.hike.engine.counters.get("refused_auth"), 1)
        self.assertIn("IKEFailed", p.cike.events)
        self.assertNotIn("laptop", p.hdp.engine.by_node)
        self.assertNotIn("laptop", p.cdp.engine.by_node)


# -- the lab ------------------------------------------------------------------------

_HOME_ESP = """[mobile_node.esp]
spi_to_home = 4097
spi_to_client = 8193
"""


def _ike_configs(home: Path, client: Path, keys: Path, pubkey: bool) -> None:
    """Turn the demo's manual-key configurations into IKE ones."""
    psk = keys / "ike-psk"
    psk.write_text("".join(random.choice(string.ascii_letters) for _ in range(32)) + "\n")
    psk.chmod(0o600)
    text = home.read_text()
    head = text[: text.index("[mobile_node.esp]")]
    if pubkey:
        head = head.replace("[tunnel]", f"""[ike]
identity = "{LAB_HA}"
cert = "{keys / 'ha' / 'ha.crt'}"
key = "{keys / 'ha' / 'ha.key'}"
liveness = 10

[tunnel]""")
        node = '[mobile_node.ike]\nidentity = "laptop.example"\nauth = "pubkey"\n'
    else:
        head = head.replace("[tunnel]", "[ike]\nliveness = 10\n\n[tunnel]")
        node = f'[mobile_node.ike]\nidentity = "laptop.example"\npsk_file = "{psk}"\n'
    home.write_text(head + node)
    text = client.read_text()
    head, tail = text[: text.index("[esp]")], text[text.index("[esp]"):]
    tail = tail[tail.index("\n\n") + 2:] if "\n\n" in tail else ""
    if pubkey:
        ike = f"""[ike]
identity = "laptop.example"
auth = "pubkey"
cert = "{keys / 'laptop' / 'laptop.crt'}"
key = "{keys / 'laptop' / 'laptop.key'}"
ca_file = "{keys / 'laptop' / 'ca.crt'}"
liveness = 10
"""
    else:
        ike = f'[ike]\nidentity = "laptop.example"\npsk_file = "{psk}"\nliveness = 10\n'
    client.write_text(head + ike + "\n" + tail)


LAB_HA = "172.31.0.2"


class LabIKETests(SynchronousTestCase):
    """The home agent and the client as real processes, keyed by IKEv2, in a fresh lab."""

    def start(self, pubkey: bool = False, revoke: bool = False) -> None:
        from tests.util import require_root, require_tool

        require_root(self)
        require_tool(self, "ip")
        from smobility.demo.roam import NETS, Demo
        from smobility.lab import Lab

        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(4))
        self.lab = Lab(prefix=f"smobk{suffix}")
        self.work = Path(tempfile.mkdtemp(prefix="smob-ikeroam-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.addCleanup(self.lab.down)
        self.lab.up()
        self.demo = Demo(self.lab, self.work)
        self.addCleanup(self.demo.stop_all)
        self.nets = NETS
        home_cfg, client_cfg = self.demo.write_configs()
        keys = self.work / "keys"
        if pubkey:
            db = str(self.work / "home.sqlite")
            self.demo.ctl("pki", "init", "--db", db)
            self.demo.ctl("pki", "issue", "ha", "--san", f"ip:{LAB_HA}", "--server",
                          "--out-dir", str(keys / "ha"), "--db", db)  # fmt: skip
            self.demo.ctl("pki", "issue", "laptop", "--san", "dns:laptop.example", "--client",
                          "--out-dir", str(keys / "laptop"), "--db", db)  # fmt: skip
            if revoke:
                self.demo.ctl("pki", "revoke", "laptop", "--db", db)
        _ike_configs(home_cfg, client_cfg, keys, pubkey)
        self.demo.twistd("ha", "smobility-home", home_cfg, "home.log")
        self.lab.move("v1")
        self.lab.wait_address(NETS["v1"])
        self.demo.twistd("mn", "smobility-client", client_cfg, "client.log")
        self.demo.wait_state("registered", None)

    def wait_ike_route(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.demo.status()
            routes = st.get("tunnel", {}).get("routes", [])
            if routes and st.get("ike", {}).get("ike_sas"):
                return st
            time.sleep(0.1)
        self.fail(f"no IKE SA: {self.demo.status()}\n{self.log('home.log')[-3000:]}")

    def log(self, name: str) -> str:
        return (self.work / name).read_text()

    def test_psk_registration_then_ike_then_move(self) -> None:
        """Registration, IKE (PSK), traffic both ways; V1 -> V2 (NAT) on the same IKE SA."""
        self.start()
        st = self.wait_ike_route()
        route = st["tunnel"]["routes"][0]
        self.assertNotIn(route["spi_in"], ("0x00001001", "0x00002001"))
        self.assertNotIn(route["spi_out"], ("0x00001001", "0x00002001"))
        self.assertIn(f"spi_in {route['spi_out']}", self.log("home.log"))
        self.demo.stream(
            "mn", "server", "--bind", "10.77.0.10", "--port", "5001",
            "--stats", str(self.work / "probe-server.json"), log="probe-server.log",
        )  # fmt: skip
        time.sleep(0.5)
        self.assertTrue(self.demo.probe())
        self.assertTrue(self.lab.ping("cn", "10.77.0.10"))
        # Move to V2, behind NAT: same IKE SA, traffic continues.
        self.lab.move("v2")
        addr = self.lab.wait_address(self.nets["v2"])
        self.demo.wait_state("registered", str(addr.ip))
        time.sleep(1.5)
        self.assertTrue(self.demo.probe())
        self.assertTrue(self.lab.ping("cn", "10.77.0.10"))
        after = self.demo.status()
        moved = after["tunnel"]["routes"][0]
        self.assertEqual(moved["spi_in"], route["spi_in"])
        # The status file is written at each registration: the counters then
        # show the ESP of before the move, under the IKE SAs (no manual keys exist).
        self.assertGreater(moved["packets_in"], 0)
        self.assertGreater(moved["packets_out"], 0)
        self.assertEqual(len(after["ike"]["ike_sas"]), 1)
        self.assertEqual(self.log("client.log").count("IKE: initiating"), 1)
        self.assertEqual(self.log("home.log").count("IKE: IKE SA"), 1)
        self.assertIn("follows the registration", self.log("home.log"))

    def test_revoked_certificate_refused(self) -> None:
        """A revoked client certificate is refused at IKE_AUTH: no tunnel."""
        self.start(pubkey=True, revoke=True)
        deadline = time.monotonic() + 20
        while "refused IKE_AUTH" not in self.log("home.log"):
            if time.monotonic() > deadline:
                self.fail(self.log("home.log")[-3000:])
            time.sleep(0.1)
        self.assertIn("has been revoked", self.log("home.log"))
        self.assertIn("AUTHENTICATION_FAILED", self.log("client.log"))
        self.assertEqual(self.demo.status().get("tunnel", {}).get("routes"), [])

    def test_certificates(self) -> None:
        """Certificates from the home CA both ways: the tunnel comes up."""
        self.start(pubkey=True)
        st = self.wait_ike_route()
        self.assertNotIn(st["tunnel"]["routes"][0]["spi_in"], ("0x00001001", "0x00002001"))
