"""The relay as the client's IPsec VPN gateway for real (figure 7, RFC 5265 style).

V4 blocks the home agent; the client's second transport is ``kind =
"gateway"`` pointed at the relay.  It runs IKEv2 with the relay, gets a
virtual address from the relay's pool, registers inside that tunnel with the
home agent's inside address and keeps its own ESP with home inside it.  The
relay carries the inner UDP home inside IP-in-IP (the home agent sees it as
the client's NAT).  Real processes: twistd for the home agent, the relay and
the client; tshark reads the captures.
"""

from __future__ import annotations

import time
from typing import Any

from smobility.demo.roam import HA, HA_LAN, RELAY
from tests.labroaming import LabRoaming


class RelayGatewayTests(LabRoaming):
    """Home agent, relay (as VPN gateway) and client as twistd processes in the lab."""

    relay_mode = "gateway"

    def wait_gateway(self, timeout: float = 40.0) -> dict[str, Any]:
        assert self.demo is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.demo.status()
            if st.get("state") == "registered" and st.get("path") == "gateway":
                return st
            time.sleep(0.1)
        self.fail(f"not registered through the relay's tunnel: {self.demo.status()}\n{self.why()}")

    def test_moves_direct_gateway_direct(self) -> None:
        """V1 -> V4 (the relay's VPN tunnel) -> V1 -> V4: streams both ways, zero resets,
        inbound; the client registers its virtual address from the relay's pool."""
        assert self.demo is not None
        st = self.start_client("v1")
        self.assertEqual(st.get("path"), "udp", st)
        clients = self.streams()
        self.wait_flowing()
        self.lab.move("v4")
        st = self.wait_gateway()
        self.assertEqual(st["tunnel_address"], "10.79.0.1", st)
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.go("v1")
        self.wait_path("udp")
        self.wait_flowing()
        self.lab.move("v4")
        self.wait_gateway()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.assert_survived(self.finish(clients))
        relay = self.log("relay")
        self.assertIn("VPN client laptop at", relay)
        self.assertIn("has 10.79.0.1", relay)
        self.assertRegex(relay, rf"-> {HA_LAN}:434 <-> relay port \d+ <-> {HA}")
        self.assertRegex(relay, rf"-> {HA_LAN}:4500 <-> relay port \d+ <-> {HA}")
        home = self.log("home")
        self.assertRegex(home, r"registration node=laptop coa=10\.79\.0\.1 from=172\.31\.4\.2:\d+")

    def test_tshark_only_tunnel_and_ipip(self) -> None:
        """Client -> relay: only IKE and ESP on UDP 4500 (the registration is inside);
        relay <-> home: only protocol 4, none malformed, UDP 434 and 4500 inside."""
        assert self.demo is not None
        rl_cap, rl_pcap = self.capture("rl", "wan0", "relay-wan")
        self.start_client("v4")
        self.wait_gateway()
        clients = self.streams()
        self.wait_flowing()
        self.assert_survived(self.finish(clients))
        rl_cap.stop()
        to_relay = self.fields(
            rl_pcap, f"ip.dst == {RELAY} && !(ip.src == {HA})",
            ["ip.proto", "udp.dstport", "esp.spi", "isakmp.exchangetype", "mip.type"],
        )  # fmt: skip
        self.assertTrue(to_relay)
        for row in to_relay:
            if row["ip.proto"] != "17":
                continue  # ARP-free veth, but ICMP from the kernel may appear
            self.assertEqual(row["udp.dstport"], "4500", row)
            self.assertEqual(row["mip.type"], "", row)
        self.assertTrue(any(r["isakmp.exchangetype"] for r in to_relay))
        self.assertTrue(any(r["esp.spi"] for r in to_relay))
        between = self.fields(
            rl_pcap,
            f"(ip.src == {RELAY} && ip.dst == {HA}) || (ip.src == {HA} && ip.dst == {RELAY})",
            ["ip.proto", "udp.dstport", "udp.srcport", "mip.type", "_ws.malformed"],
        )  # fmt: skip
        self.assertTrue(between)
        for row in between:
            self.assertTrue(row["ip.proto"].startswith("4,"), row)
            self.assertEqual(row["_ws.malformed"], "", row)
        self.assertTrue(any(r["mip.type"] == "1" for r in between), between[:5])
        self.assertTrue(any("4500" in r["udp.dstport"] for r in between), between[:5])
