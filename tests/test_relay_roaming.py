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

import json
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from smobility.demo.roam import CN, HA, HOA, NETS, RELAY, Demo
from tests.util import require_root, require_tool

NETS = dict(NETS, v4="192.168.104.0/24")

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


class LabRoaming(SynchronousTestCase):
    """Helpers for the lab tests with twistd processes (no tests of its own)."""

    lab: Any = None
    demo: Demo | None = None
    work: Path

    def setUp(self) -> None:
        require_root(self)
        for tool in ("ip", "tshark"):
            require_tool(self, tool)
        from smobility.lab import Lab

        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(4))
        self.lab = Lab(prefix=f"smobr{suffix}")
        self.work = Path(tempfile.mkdtemp(prefix="smob-relay-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.addCleanup(self.lab.down)
        self.lab.up()
        self.demo = Demo(self.lab, self.work)
        self.addCleanup(self.demo.stop_all)
        home_cfg, self.client_cfg = self.demo.write_configs(relay=True)
        self.configure(home_cfg, self.client_cfg)
        self.demo.twistd("ha", "smobility-home", home_cfg, "home.log")
        self.demo.start_relay()

    def configure(self, home: Path, client: Path) -> None:
        """Change the written configurations before anything starts (subclasses)."""

    def log(self, name: str) -> str:
        p = self.work / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def why(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in ("home", "relay", "client"))

    def start_client(self, net: str) -> dict[str, Any]:
        assert self.demo is not None
        self.lab.move(net)
        self.lab.wait_address(NETS[net])
        self.demo.twistd("mn", "smobility-client", self.client_cfg, "client.log")
        try:
            return self.demo.wait_state("registered", None, timeout=40)
        except SystemExit as e:
            self.fail(f"{e}\n{self.why()}")

    def go(self, net: str) -> dict[str, Any]:
        assert self.demo is not None
        self.lab.move(net)
        addr = self.lab.wait_address(NETS[net])
        try:
            return self.demo.wait_state("registered", str(addr.ip), timeout=40)
        except SystemExit as e:
            self.fail(f"{e}\n{self.why()}")

    def wait_path(self, want: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.demo is not None
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.demo.status()
            if st.get("state") == "registered" and st.get("path") == want:
                return st
            time.sleep(0.1)
        self.fail(f"path never became {want}: {st}\n{self.why()}")

    def streams(self) -> list[Any]:
        assert self.demo is not None
        w = self.work
        self.demo.stream("mn", "server", "--bind", HOA, "--port", "5001",
                         "--stats", str(w / "s-in.json"), log="s-in.log")  # fmt: skip
        self.demo.stream("cn", "server", "--bind", CN, "--port", "5002",
                         "--stats", str(w / "s-out.json"), log="s-out.log")  # fmt: skip
        time.sleep(0.5)
        return [
            self.demo.stream("cn", "client", "--bind", CN, "--connect", HOA, "--port", "5001",
                             "--stats", str(w / "c-in.json"), "--rate-kbps", "400",
                             log="c-in.log"),
            self.demo.stream("mn", "client", "--bind", HOA, "--connect", CN, "--port", "5002",
                             "--stats", str(w / "c-out.json"), "--rate-kbps", "400",
                             log="c-out.log"),
        ]  # fmt: skip

    def finish(self, clients: list[Any]) -> dict[str, Any]:
        for proc in clients:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        time.sleep(0.5)
        names = ("c-in", "c-out", "s-in", "s-out")
        return {n: json.loads((self.work / f"{n}.json").read_text()) for n in names}

    def assert_survived(self, stats: dict[str, Any]) -> None:
        for name in ("c-in", "c-out"):
            self.assertEqual(stats[name]["resets"], 0, (name, stats[name]))
            self.assertTrue(stats[name]["open_at_end"], (name, stats[name]))
        for name in ("s-in", "s-out"):
            self.assertEqual(stats[name]["resets"], 0, (name, stats[name]))
            self.assertEqual(stats[name]["connections"], 1, (name, stats[name]))

    def bytes_now(self, name: str) -> int:
        try:
            return int(json.loads((self.work / f"{name}.json").read_text())["bytes"])
        except (OSError, ValueError, KeyError):
            return 0

    def wait_flowing(self, timeout: float = 15.0) -> None:
        """Both streams move on (by 20 kB each) from now."""
        start = {n: self.bytes_now(n) for n in ("s-in", "s-out")}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.bytes_now(n) > start[n] + 20_000 for n in start):
                return
            time.sleep(0.2)
        self.fail(f"streams stalled: {start} -> "
                  f"{ {n: self.bytes_now(n) for n in start} }\n{self.why()}")  # fmt: skip

    def capture(self, role: str, iface: str, name: str) -> tuple[Any, Path]:
        """tshark capturing on ``iface`` in ``role``'s namespace, until its ``stop()``."""
        pcap = self.work / f"{name}.pcapng"
        cap = self.lab.popen(
            role, "tshark", "-i", iface, "-w", str(pcap), "-f", "not arp",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

        def stop() -> None:
            if cap.poll() is None:
                cap.send_signal(signal.SIGINT)
                try:
                    cap.wait(10)
                except subprocess.TimeoutExpired:
                    cap.kill()
                    cap.wait(5)
            assert cap.stderr is not None
            cap.stderr.close()

        self.addCleanup(stop)
        deadline = time.monotonic() + 20
        seen = b""
        assert cap.stderr is not None
        os.set_blocking(cap.stderr.fileno(), False)
        while b"Capturing on" not in seen:
            if time.monotonic() > deadline or cap.poll() is not None:
                self.fail(f"tshark did not start capturing: {seen!r}")
            chunk = cap.stderr.read()
            if chunk:
                seen += chunk
            time.sleep(0.05)
        cap.stop = stop  # type: ignore[attr-defined]
        return cap, pcap

    def fields(self, pcap: Path, display: str, fields: list[str]) -> list[dict[str, str]]:
        """tshark's fields of the frames of ``pcap`` that match ``display``."""
        out = subprocess.run(
            ["tshark", "-r", str(pcap), "-Y", display, "-T", "fields",
             "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
            + [a for f in fields for a in ("-e", f)],
            capture_output=True, check=True, timeout=60,
        ).stdout.decode()  # fmt: skip
        return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]


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
