"""The relay path for real (figure 6): V4 blocks the home agent; the relay carries the client.

The lab's relay host stands on the public side of the home firewall, which
admits from it only IP protocol 4.  In V4 the home agent's address is
blocked, so the client's transports fall from UDP to the relay: it
registers through the relay (Mobile-Foreign, then Foreign-Home
authentication) and its own end-to-end ESP goes to the relay, which carries
it home inside IP-in-IP.  Real processes throughout: twistd for the home
agent, the relay and the client; tshark reads the captures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from smobility.demo.roam import HA, RELAY
from tests.labroaming import LabRoaming

_STRAY = """
import socket, struct, sys
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
src = socket.inet_aton(sys.argv[2])
inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, src, socket.inet_aton(dst))
inner += struct.pack("!HHHH", 4500, 4500, 8, 0)
for _ in range(3):
    s.sendto(inner, (dst, 0))
"""


class RelayRoamingTests(LabRoaming):
    """Home agent, relay and client as twistd processes in the lab."""

    # -- tests ---------------------------------------------------------------------

    def test_moves_direct_relay_direct_with_streams_and_inbound(self) -> None:
        """V1 (direct) -> V4 (relay) -> V1 -> V4: zero resets, inbound works through the relay."""
        assert self.demo is not None
        st = self.start_client("v1")
        self.assertEqual(st.get("path"), "udp", st)
        clients = self.streams()
        self.wait_flowing()
        self.go("v4")
        st = self.wait_path("relay")
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.go("v1")
        self.wait_path("udp")
        self.wait_flowing()
        self.go("v4")
        self.wait_path("relay")
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        stats = self.finish(clients)
        self.assert_survived(stats)
        relay = self.log("relay")
        self.assertRegex(relay, r"flow for laptop: 172\.31\.6\.2:\d+ <-> relay port \d+")
        home = self.log("home")
        self.assertRegex(home, r"registration node=laptop coa=172\.31\.4\.2 from=172\.31\.4\.2")
        self.assertIn("IP-in-IP from 1 relay(s)", home)

    def test_tshark_relayed_registration_and_ipip(self) -> None:
        """The client's request carries MN-HA then MN-FA; the relayed one MN-HA then FA-HA,
        inside IP-in-IP; everything between relay and home is protocol 4."""
        assert self.demo is not None
        rl_cap, rl_pcap = self.capture("rl", "wan0", "relay-wan")
        ha_cap, ha_pcap = self.capture("ha", "wan0", "home-wan")
        self.start_client("v4")
        st = self.wait_path("relay")
        self.assertEqual(st["care_of_address"][: len("192.168.104.")], "192.168.104.")
        clients = self.streams()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.assert_survived(self.finish(clients))
        rl_cap.stop()
        ha_cap.stop()
        fields = ["ip.src", "ip.dst", "ip.proto", "mip.type", "mip.coa", "mip.code",
                  "mip.ext.type", "mip.auth.spi", "_ws.malformed"]  # fmt: skip
        # Client -> relay (from V4's NAT address): MN-HA (32) then MN-FA (33).
        rows = self.fields(rl_pcap, f"mip.type == 1 && ip.dst == {RELAY} && ip.proto == 17", fields)
        self.assertTrue(rows, self.why())
        for row in rows:
            self.assertEqual(row["_ws.malformed"], "", row)
            self.assertEqual(row["mip.coa"], RELAY, row)
            self.assertEqual(row["mip.ext.type"], "32,33", row)
        # Relay -> home: inside IP-in-IP (outer protocol 4, inner UDP), MN-HA then FA-HA;
        # the MN-FA is processed and removed by the relay (RFC 5944 section 3.7.2.2).
        rows = self.fields(ha_pcap, f"mip.type == 1 && ip.src == {RELAY}", fields)
        self.assertTrue(rows, self.why())
        for row in rows:
            self.assertEqual(row["_ws.malformed"], "", row)
            self.assertEqual(row["ip.proto"], "4,17", row)
            self.assertEqual(row["mip.ext.type"], "32,34", row)
            self.assertEqual(row["mip.coa"], RELAY, row)
        replies = self.fields(ha_pcap, f"mip.type == 3 && ip.dst == {RELAY}", fields)
        self.assertTrue(replies)
        for row in replies:
            self.assertEqual(row["ip.proto"], "4,17", row)
            self.assertEqual(row["mip.code"], "0", row)
            self.assertEqual(row["mip.ext.type"], "32,34", row)
        # Every frame between relay and home agent is IP in IP, none malformed.
        between = self.fields(
            ha_pcap,
            f"(ip.src == {RELAY} && ip.dst == {HA}) || (ip.src == {HA} && ip.dst == {RELAY})",
            ["ip.proto", "udp.dstport", "_ws.malformed"],
        )
        self.assertGreater(len(between), 4)
        for row in between:
            self.assertTrue(row["ip.proto"].startswith("4,"), row)
            self.assertEqual(row["_ws.malformed"], "", row)
        self.assertTrue(any(r["udp.dstport"] == "4500" for r in between), between[:5])

    def test_stray_ipip_dropped_and_counted(self) -> None:
        """Protocol 4 from anyone but the relay never reaches the engines: dropped, logged."""
        assert self.demo is not None
        self.start_client("v4")
        self.wait_path("relay")
        clients = self.streams()
        r = self.lab.exec("inet", sys.executable, "-c", _STRAY, HA, "172.31.0.1", check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        pattern = "IP-in-IP packet from 172.31.0.1, which is not a configured peer: dropped"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pattern not in self.log("home"):
            time.sleep(0.2)
        self.assertIn(pattern, self.log("home"), self.why())
        # ... and the client's own path is unharmed.
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.assert_survived(self.finish(clients))


class RelayIKETests(LabRoaming):
    """Figure 6 as the seed has it: the client runs IKE with home right after registering,
    through the relay, and its CHILD_SA keys its end-to-end ESP; the relay never sees it."""

    def configure(self, home: Path, client: Path) -> None:
        from tests.test_ike_roaming import _ike_configs

        text = home.read_text()
        relay = text[text.index("[[relay]]"):]
        _ike_configs(home, client, self.work / "keys", pubkey=False)
        home.write_text(home.read_text() + "\n" + relay)

    def wait_ike(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.demo is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.demo.status()
            if st.get("ike", {}).get("ike_sas") and st.get("tunnel", {}).get("routes"):
                return st
            time.sleep(0.1)
        self.fail(f"no IKE SA through the relay: {self.demo.status()}\n{self.why()}")

    def test_ike_through_the_relay_then_moves(self) -> None:
        assert self.demo is not None
        self.start_client("v4")
        st = self.wait_path("relay")
        st = self.wait_ike()
        route = st["tunnel"]["routes"][0]
        # IKE keys, not the demo's manual SPIs.
        self.assertNotIn(route["spi_in"], ("0x00001001", "0x00002001"))
        clients = self.streams()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.go("v1")
        self.wait_path("udp")
        self.wait_flowing()
        self.go("v4")
        self.wait_path("relay")
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.assert_survived(self.finish(clients))
        # One IKE SA all along, made through the relay (from its address and port).
        self.assertEqual(self.log("client").count("IKE: initiating"), 1, self.why())
        self.assertRegex(self.log("home"), r"IKE: IKE SA .*172\.31\.4\.2", self.why())
