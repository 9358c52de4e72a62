"""The IPsec gateway path for real (figure 7): from V5 only IKE/IPsec to a strongSwan gateway.

V5's firewall lets out nothing but UDP 500/4500 to the home network's VPN
gateway: a stock strongSwan 5.9 (charon with kernel-libipsec) in the lab's
gw namespace.  The client's transports fall from UDP (and the relay) to the
gateway: it sets up an IKEv2 tunnel to strongSwan (shared key, or
certificates from the home server's CA), registers the address the gateway
gave it as its co-located care-of address with the home agent's inside
address, and keeps its own ESP with the home agent inside that tunnel (RFC
5265).  Real processes: twistd for the home agent and the client, charon.
"""

from __future__ import annotations

import os
import random
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

from smobility.demo.roam import NETS, Demo
from tests.labroaming import LabRoaming
from tests.util import require_root, require_tool, skip_or_fail


class _GatewayBase(LabRoaming):
    """Home agent, relay, strongSwan gateway and client in the lab."""

    auth = "psk"

    def setUp(self) -> None:
        require_root(self)
        for tool in ("ip", "swanctl", "mount"):
            require_tool(self, tool)
        from smobility.lab import Lab
        from smobility.lab.strongswan import CHARON

        if not os.access(CHARON, os.X_OK):
            skip_or_fail(self, f"needs strongSwan's charon at {CHARON}")
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(4))
        self.lab = Lab(prefix=f"smobg{suffix}")
        self.work = Path(tempfile.mkdtemp(prefix="smob-gw-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.addCleanup(self.lab.down)
        self.lab.up()
        self.demo = Demo(self.lab, self.work)
        self.addCleanup(self.demo.stop_all)
        home_cfg, self.client_cfg = self.demo.write_configs(relay=True, gateway=self.auth)
        self.demo.twistd("ha", "smobility-home", home_cfg, "home.log")
        self.demo.start_relay()
        self.demo.start_gateway()

    def why(self) -> str:
        text = super().why()
        assert self.demo is not None
        if self.demo.gateway is not None:
            text += "\n--- charon\n" + self.demo.gateway.text()[-3000:]
        return text

    def go(self, net: str) -> dict[str, Any]:
        assert self.demo is not None
        self.lab.move(net)
        addr = self.lab.wait_address(NETS[net])
        try:
            return self.demo.wait_state("registered", str(addr.ip), timeout=60)
        except SystemExit as e:
            self.fail(f"{e}\n{self.why()}")

    def start_client(self, net: str) -> dict[str, Any]:
        assert self.demo is not None
        self.lab.move(net)
        self.lab.wait_address(NETS[net])
        self.demo.twistd("mn", "smobility-client", self.client_cfg, "client.log")
        try:
            return self.demo.wait_state("registered", None, timeout=60)
        except SystemExit as e:
            self.fail(f"{e}\n{self.why()}")

    def check_gateway_path(self) -> dict[str, Any]:
        st = self.wait_path("gateway", timeout=60)
        self.assertTrue(st["tunnel_address"].startswith("10.78.0."), st)
        return st


class GatewayPSKRoamingTests(_GatewayBase):
    """Shared key with the gateway."""

    def test_moves_into_and_out_of_the_gateway_path(self) -> None:
        """V1 (direct) -> V5 (gateway) -> V1 -> V4 (relay) -> V5: zero resets, inbound each time."""
        assert self.demo is not None
        st = self.start_client("v1")
        self.assertEqual(st.get("path"), "udp", st)
        clients = self.streams()
        self.wait_flowing()
        self.go("v5")
        st = self.check_gateway_path()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        home = self.log("home")
        self.assertRegex(home, rf"registration node=laptop coa={st['tunnel_address']}")
        self.go("v1")
        self.wait_path("udp")
        self.wait_flowing()
        self.go("v4")
        self.wait_path("relay")
        self.wait_flowing()
        self.go("v5")
        self.check_gateway_path()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.assert_survived(self.finish(clients))
        # The gateway carried it: its CHILD_SA's counters moved both ways.
        from smobility.lab.strongswan import child_counters

        assert self.demo.gateway is not None
        counters = child_counters(self.demo.gateway.list_sas())
        # One inbound and one outbound SPI of the current CHILD_SA (at least).
        self.assertGreaterEqual(len(counters), 2, self.demo.gateway.list_sas())
        for nbytes, _packets in counters.values():
            self.assertGreater(nbytes, 20_000, self.demo.gateway.list_sas())


class GatewayCertificateRoamingTests(_GatewayBase):
    """Certificates from the home server's own CA, both ways."""

    auth = "pubkey"

    def test_streams_and_inbound_through_the_gateway(self) -> None:
        assert self.demo is not None
        self.start_client("v5")
        self.check_gateway_path()
        clients = self.streams()
        self.wait_flowing()
        self.assertTrue(self.demo.probe(), self.why())
        self.assert_survived(self.finish(clients))
        assert self.demo.gateway is not None
        self.assertRegex(self.demo.gateway.text(), r"received end entity cert .*CN=laptop")
