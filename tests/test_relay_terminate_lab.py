"""The relay in "terminate" mode for real (the seed's figures 1 and 3, steps 107-110).

V4 blocks the home agent; the client falls back to the relay.  It registers
through it, then runs IKEv2 with the relay, which ends its ESP.  On the
client's behalf the relay runs IKEv2 with the home agent (traffic selector:
the client's home address) and re-seals every packet between the two SAs;
relay <-> home stays IP-in-IP.  Real processes: twistd for the home agent,
the relay and the client; tshark reads the captures.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

from smobility.demo.roam import HA, HOA, RELAY
from tests.labroaming import LabRoaming


class _TerminateLab(LabRoaming):
    """Helpers: the lab with a terminating relay."""

    relay_mode = "terminate"

    def wait_relay_keyed(self, timeout: float = 30.0) -> dict[str, Any]:
        """The client's tunnel is keyed by its IKE with the relay."""
        assert self.demo is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.demo.status()
            routes = st.get("tunnel", {}).get("routes") or []
            if routes and routes[0].get("path") == "relay-terminate":
                return st
            time.sleep(0.1)
        self.fail(f"no tunnel keyed by the relay: {self.demo.status()}\n{self.why()}")

    def on_relay(self, net: str = "v4") -> dict[str, Any]:
        """Move to ``net``; return once traffic flows through the terminating relay."""
        assert self.demo is not None
        self.go(net)
        self.wait_path("relay")
        st = self.wait_relay_keyed()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        return st

    def direct_then_relay(self) -> None:
        """V1 (direct) and back to V4 (the relay), traffic flowing at each step."""
        self.go("v1")
        self.wait_path("udp")
        self.wait_flowing()
        self.on_relay()


class RelayTerminateTests(_TerminateLab):
    """Home agent, terminating relay (shared keys) and client as twistd processes."""

    def test_moves_direct_terminating_relay_direct(self) -> None:
        """V1 -> V4 (relay ends ESP) -> V1 -> V4: streams both ways, zero resets, inbound."""
        assert self.demo is not None
        st = self.start_client("v1")
        self.assertEqual(st.get("path"), "udp", st)
        clients = self.streams()
        self.wait_flowing()
        st = self.on_relay()
        route = st["tunnel"]["routes"][0]
        self.assertEqual(route["peer"], f"{RELAY}:4500", route)
        # IKE keys with the relay, not the demo's manual SPIs with home.
        self.assertNotIn(route["spi_in"], ("0x00001001", "0x00002001"))
        self.direct_then_relay()
        self.assert_survived(self.finish(clients))
        relay = self.log("relay")
        self.assertIn("visitor laptop: its ESP ends here", relay)
        self.assertIn(f"IKE with home agent {HA} on behalf of laptop ({HOA})", relay)
        self.assertIn("visitor laptop: SA with home agent", relay)
        home = self.log("home")
        self.assertRegex(home, r"tunnel to laptop now through relay 172\.31\.4\.2, keyed by")
        # Each visit: a new IKE SA with the relay (the client deletes it when it
        # leaves); the one with home on its behalf lasts while the relay still
        # counts laptop as its visitor (until its registration through it expires).
        self.assertEqual(relay.count("visitor laptop: its ESP ends here"), 2, self.why())
        self.assertEqual(relay.count("client leg of laptop removed"), 1, self.why())
        self.assertEqual(relay.count("on behalf of laptop"), 1, self.why())
        self.assertIn("through relay 172.31.4.2, which ends the client's ESP", home)

    def test_tshark_two_sas_and_ipip(self) -> None:
        """Different SPIs on the two legs (the relay re-seals); relay <-> home only
        protocol 4 carrying IKE and ESP on UDP 4500; IKE between client and relay."""
        assert self.demo is not None
        rl_cap, rl_pcap = self.capture("rl", "wan0", "relay-wan")
        self.start_client("v4")
        self.wait_path("relay")
        self.wait_relay_keyed()
        clients = self.streams()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.assert_survived(self.finish(clients))
        rl_cap.stop()
        fields = ["ip.src", "ip.dst", "ip.proto", "esp.spi", "isakmp.exchangetype", "_ws.malformed"]
        # The client leg: plain UDP to the relay's port 4500, IKE then ESP.
        leg1 = self.fields(rl_pcap, f"udp.dstport == 4500 && ip.dst == {RELAY} && "
                                    f"ip.proto == 17 && !(ip.src == {HA})", fields)
        self.assertTrue(any(r["isakmp.exchangetype"] for r in leg1), leg1[:5])
        spis1 = {r["esp.spi"] for r in leg1 if r["esp.spi"]}
        # The home leg: IP in IP to the home agent, IKE and ESP inside.
        leg2 = self.fields(rl_pcap, f"ip.src == {RELAY} && ip.dst == {HA}", fields)
        self.assertTrue(leg2)
        for row in leg2:
            self.assertTrue(row["ip.proto"].startswith("4,"), row)
            self.assertEqual(row["_ws.malformed"], "", row)
        self.assertTrue(any(r["isakmp.exchangetype"] for r in leg2), leg2[:5])
        spis2 = {r["esp.spi"] for r in leg2 if r["esp.spi"]}
        self.assertTrue(spis1 and spis2, (spis1, spis2))
        self.assertFalse(spis1 & spis2, (spis1, spis2))

    def test_deregistration_deletes_the_relays_sas(self) -> None:
        """The client stops (deregisters through the relay): the relay deletes its SAs
        with the client and with home for it; the home agent's route goes too.
        (The home agent's refusal of an SA for an address not registered through the
        relay is in tests/test_relay_terminate.py.)"""
        assert self.demo is not None
        self.start_client("v4")
        self.wait_path("relay")
        self.wait_relay_keyed()
        self.client_proc.send_signal(signal.SIGTERM)
        self.client_proc.wait(timeout=20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "visitor laptop gone" not in self.log("relay"):
            time.sleep(0.2)
        self.assertIn("visitor laptop gone", self.log("relay"), self.why())
        self.assertTrue(re.search(r"through its relay has no SAs|withdrawn", self.log("home")))


class RelayTerminateCertificateTests(_TerminateLab):
    """With certificates from the home CA: the client proves itself to the relay with
    its certificate, the relay to the home agent with its own."""

    relay_mode = "terminate-pubkey"

    def test_certificates_moves_streams_inbound(self) -> None:
        """IKE with certificates on both legs; V4 -> V1 -> V4 with streams, inbound."""
        assert self.demo is not None
        self.start_client("v4")
        self.wait_path("relay")
        self.wait_relay_keyed()
        clients = self.streams()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.direct_then_relay()
        self.assert_survived(self.finish(clients))
        relay = self.log("relay")
        self.assertIn("IKE SA", relay)
        self.assertRegex(relay, r"IKE: IKE SA \S+ up with laptop\.example")
        self.assertRegex(self.log("home"), r"IKE: IKE SA \S+ up with relay\.lab\.example")


class RelayTerminateWithHomeIKETests(_TerminateLab):
    """The client keys its tunnel with home by IKEv2: on the terminating relay its IKE
    with home rests, and back on a direct path it makes a fresh IKE SA at once."""

    def configure(self, home: Path, client: Path) -> None:
        from tests.test_ike_roaming import _ike_configs

        home_text = home.read_text()
        relay = home_text[home_text.index("[[relay]]"):]
        client_text = client.read_text()
        transports = client_text[client_text.index("[[transport]]"):]
        _ike_configs(home, client, self.work / "keys", pubkey=False)
        # The relay's [[relay]] (with its IKE identity) and its [ike] table: the
        # home agent's [ike] now comes from _ike_configs, so drop the relay's copy.
        relay = relay[: relay.index("[ike]")] if "[ike]" in relay else relay
        home.write_text(home.read_text() + "\n" + relay)
        text = client.read_text()
        if "[[transport]]" not in text:
            client.write_text(text + "\n" + transports)

    def test_moves_with_ike_home(self) -> None:
        assert self.demo is not None
        self.start_client("v1")
        st = self.wait_ike_home()
        first = st["tunnel"]["routes"][0]["spi_in"]
        clients = self.streams()
        self.wait_flowing()
        self.on_relay()
        self.go("v1")
        self.wait_path("udp")
        st = self.wait_ike_home(not_spi=first)
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.assert_survived(self.finish(clients))
        client = self.log("client")
        # IKE with home twice (at the start, and fresh after the relay), never
        # through the terminating relay.
        self.assertEqual(client.count("IKE: initiating"), 3, self.why())  # home, relay, home
        self.assertEqual(client.count("registered: starting IKE with 172.31.0.2"), 2, self.why())

    def wait_ike_home(self, timeout: float = 30.0, not_spi: str | None = None) -> dict[str, Any]:
        assert self.demo is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.demo.status()
            routes = st.get("tunnel", {}).get("routes") or []
            if (
                routes
                and routes[0].get("path") == "direct"
                and routes[0].get("peer", "").startswith(f"{HA}:")
                and routes[0].get("spi_in") != not_spi
                and st.get("ike", {}).get("ike_sas")
            ):
                return st
            time.sleep(0.1)
        self.fail(f"no IKE-keyed tunnel with home: {self.demo.status()}\n{self.why()}")
