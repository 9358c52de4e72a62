"""Roaming for real: the lab's namespaces, twistd processes, TCP, tshark and scapy.

One lab (a unique prefix) for the class: the home agent and the client run as
real ``twistd`` processes; the tests move the client between the lab's
networks and check what a user would: connections survive, inbound
connections reach the permanent address, the home LAN's ARP follows the
node, full-size packets pass, and every packet between client and home is
ESP that independent implementations (tshark, scapy) decrypt.
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

from smobility.demo.roam import CN, HA, HOA, NETS, ROOT, Demo
from tests.util import require_root, require_tool

MN_MAC = "02:00:00:00:00:10"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


class RoamingTests(SynchronousTestCase):
    """A client roaming in a fresh lab (its own prefix) per test."""

    lab: Any = None
    demo: Demo | None = None
    work: Path

    def setUp(self) -> None:
        require_root(self)
        require_tool(self, "ip")
        from smobility.lab import Lab

        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(4))
        self.lab = Lab(prefix=f"smobr{suffix}")
        self.work = Path(tempfile.mkdtemp(prefix="smob-roam-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.addCleanup(self.lab.down)
        self.lab.up()
        self.demo = Demo(self.lab, self.work)
        self.addCleanup(self.demo.stop_all)
        home_cfg, client_cfg = self.demo.write_configs()
        self.demo.twistd("ha", "smobility-home", home_cfg, "home.log")
        self.lab.move("v1")
        self.lab.wait_address(NETS["v1"])
        self.demo.twistd("mn", "smobility-client", client_cfg, "client.log")
        self.demo.wait_state("registered", None)

    # -- helpers ------------------------------------------------------------

    def go(self, net: str) -> None:
        """Move the client and wait until the registration (or the return home) is done."""
        assert self.demo is not None
        self.lab.move(net)
        addr = self.lab.wait_address(NETS[net])
        if net == "home":
            self.demo.wait_state("at-home", None)
        else:
            self.demo.wait_state("registered", str(addr.ip))

    def cn_mac_for_hoa(self) -> str:
        """The MAC the correspondent host uses for the home address (after a fresh probe)."""
        self.lab.ping("cn", HOA)
        out = self.lab.exec("cn", "ip", "neigh", "show", HOA).stdout
        parts = out.split()
        return parts[parts.index("lladdr") + 1] if "lladdr" in parts else ""

    def ha_lan_mac(self) -> str:
        out = self.lab.exec("ha", "cat", "/sys/class/net/lan0/address").stdout
        return out.strip()

    def probe(self) -> bool:
        assert self.demo is not None
        return self.demo.probe()

    # -- tests ----------------------------------------------------------------

    def test_inbound_while_away(self) -> None:
        """The correspondent opens a new connection to the permanent address in V1."""
        assert self.demo is not None
        self.demo.stream(
            "mn", "server", "--bind", HOA, "--port", "5001",
            "--stats", str(self.work / "probe-server.json"), log="probe-server.log",
        )  # fmt: skip
        time.sleep(0.5)
        self.assertTrue(self.probe())
        # The home LAN reaches the home address through the home agent (proxy ARP).
        self.assertEqual(self.cn_mac_for_hoa(), self.ha_lan_mac())

    def test_stream_survives_moves(self) -> None:
        """One TCP stream each way survives V1 -> V2 (NAT) -> home -> V1 with no reset."""
        assert self.demo is not None
        w = self.work
        self.demo.stream("cn", "server", "--bind", CN, "--port", "5102",
                         "--stats", str(w / "s-out.json"), log="s-out.log")  # fmt: skip
        self.demo.stream("mn", "server", "--bind", HOA, "--port", "5101",
                         "--stats", str(w / "s-in.json"), log="s-in.log")  # fmt: skip
        time.sleep(0.5)
        c_in = self.demo.stream("cn", "client", "--bind", CN, "--connect", HOA, "--port", "5101",
                                "--stats", str(w / "c-in.json"), log="c-in.log")  # fmt: skip
        c_out = self.demo.stream("mn", "client", "--bind", HOA, "--connect", CN, "--port", "5102",
                                 "--stats", str(w / "c-out.json"), log="c-out.log")  # fmt: skip
        time.sleep(2)
        before = json.loads((w / "s-in.json").read_text())["bytes"]
        self.go("v2")
        time.sleep(2)
        self.go("home")
        time.sleep(2)
        # At home the correspondent talks to the node's own MAC again.
        self.assertEqual(self.cn_mac_for_hoa(), MN_MAC)
        self.go("v1")
        time.sleep(2)
        for proc in (c_in, c_out):
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        time.sleep(0.5)
        stats = {n: json.loads((w / f"{n}.json").read_text()) for n in ("c-in", "c-out")}
        server_in = json.loads((w / "s-in.json").read_text())
        server_out = json.loads((w / "s-out.json").read_text())
        for name, st in stats.items():
            self.assertEqual(st["resets"], 0, (name, st))
            self.assertTrue(st["open_at_end"], (name, st))
        self.assertEqual(server_in["resets"] + server_out["resets"], 0)
        self.assertGreater(server_in["bytes"], before + 100_000)
        self.assertGreater(server_out["bytes"], 100_000)
        self.assertEqual(server_in["connections"], 1)

    def test_bulk_full_size_packets(self) -> None:
        """20 MB each way with full-size segments: MTU and MSS leave no black hole."""
        iperf = require_tool(self, "iperf3")
        self.go("v2")
        server = self.lab.popen("mn", iperf, "-s", "-B", HOA, "-p", "5201", "-1",
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.5)
            r = self.lab.exec("cn", iperf, "-c", HOA, "-p", "5201", "-n", "20M", "-J",
                              check=False, timeout=60)  # fmt: skip
            self.assertEqual(r.returncode, 0, r.stdout[-2000:])
            result = json.loads(r.stdout)["end"]
            self.assertGreaterEqual(result["sum_sent"]["bytes"], 20 * 1024 * 1024)
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            server.wait(10)
        server = self.lab.popen("cn", iperf, "-s", "-B", CN, "-p", "5202", "-1",
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.5)
            r = self.lab.exec("mn", iperf, "-c", CN, "-B", HOA, "-p", "5202", "-n", "20M", "-J",
                              check=False, timeout=60)  # fmt: skip
            self.assertEqual(r.returncode, 0, r.stdout[-2000:])
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            server.wait(10)

    def test_tshark_and_scapy_decrypt_the_tunnel(self) -> None:
        """Every packet on the wire is ESP-in-UDP that tshark and scapy decrypt; tampering shows."""
        tshark = require_tool(self, "tshark")
        pcap = self.work / "esp.pcap"
        cap = self.lab.popen(
            "ha", tshark, "-i", "wan0", "-f", "udp port 4500", "-F", "pcap", "-w", str(pcap), "-q",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            _wait_capturing(self, cap)
            self.assertTrue(self.lab.ping("cn", HOA, count=3))
            time.sleep(0.5)
        finally:
            cap.send_signal(signal.SIGINT)
            cap.wait(15)
        keys = {n: (self.work / "keys" / n).read_text().strip() for n in ("to_home", "to_client")}
        sas = [
            ("0x00001001", keys["to_home"]),
            ("0x00002001", keys["to_client"]),
        ]
        args = [tshark, "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                "-o", "esp.enable_authentication_check:TRUE"]  # fmt: skip
        for spi, key in sas:
            args += ["-o", f'uat:esp_sa:"IPv4","*","*","{spi}",'
                     f'"AES-GCM with 16 octet ICV [RFC4106]","0x{key}","NULL",""']  # fmt: skip
        fields = ["esp.spi", "esp.icv_good", "icmp.type", "ip.src", "_ws.malformed"]
        out = subprocess.run(
            args + ["-T", "fields", "-E", "separator=|", "-E", "occurrence=a"]
            + [a for f in fields for a in ("-e", f)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        rows = [line.split("|") for line in out.splitlines() if line.split("|")[0]]
        self.assertGreaterEqual(len(rows), 6, out)  # 3 requests in, 3 replies out
        for _spi, icv, icmp_type, _src, malformed in rows:
            self.assertEqual(icv, "1", out)
            self.assertIn(icmp_type.split(",")[-1], ("0", "8"), out)
            self.assertEqual(malformed, "", out)
        self.assertEqual({r[0] for r in rows}, {"0x00001001", "0x00002001"})
        # A flipped byte in the ciphertext: tshark reports a bad ICV.
        data = bytearray(pcap.read_bytes())
        data[-20] ^= 0x01
        bad = self.work / "esp-tampered.pcap"
        bad.write_bytes(bytes(data))
        args[2] = str(bad)
        out = subprocess.run(
            args + ["-T", "fields", "-e", "esp.icv_good"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        self.assertIn("0", out.split())
        # scapy's independent ESP implementation decrypts our packets too.
        from scapy.layers.inet import IP, UDP
        from scapy.layers.ipsec import ESP, SecurityAssociation
        from scapy.utils import rdpcap

        packets = [p for p in rdpcap(str(pcap)) if UDP in p and len(p[UDP].payload) > 8]
        self.assertTrue(packets)
        opened = 0
        for pkt in packets:
            raw = bytes(pkt[UDP].payload)
            spi = int.from_bytes(raw[:4], "big")
            key = keys["to_home"] if spi == 0x1001 else keys["to_client"]
            sa = SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM",
                                     crypt_key=bytes.fromhex(key))  # fmt: skip
            outer = IP(src=pkt[IP].src, dst=pkt[IP].dst, proto=50) / ESP(raw)
            decrypted = sa.decrypt(IP(bytes(outer)))
            # Tunnel mode: the outer header, then the inner IPv4 packet (next header 4).
            inner = decrypted.getlayer(IP, 2)
            self.assertIsNotNone(inner, decrypted.summary())
            self.assertIn(inner.dst, (HOA, CN))
            opened += 1
        self.assertEqual(opened, len(packets))

    def test_unknown_spi_counted_and_logged(self) -> None:
        """Garbage ESP at the home agent is dropped, counted and logged, nothing else."""
        assert self.demo is not None
        self.demo.stream(
            "mn", "server", "--bind", HOA, "--port", "5001",
            "--stats", str(self.work / "probe-server.json"), log="probe-server.log",
        )  # fmt: skip
        time.sleep(0.5)
        script = (
            "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            f"[s.sendto(bytes.fromhex('0000abcd00000001')+bytes(40), ('{HA}', 4500))"
            " for _ in range(20)]"
        )
        self.lab.exec("mn", sys.executable, "-c", script)
        log = self.work / "home.log"
        deadline = time.monotonic() + 10
        while "unknown SPI 0x0000abcd" not in log.read_text():
            if time.monotonic() > deadline:
                self.fail(log.read_text()[-3000:])
            time.sleep(0.1)
        self.assertEqual(log.read_text().count("unknown SPI 0x0000abcd"), 1)
        # The tunnel still works.
        self.assertTrue(self.probe())


def _wait_capturing(test: SynchronousTestCase, cap: subprocess.Popen[bytes]) -> None:
    """Wait until tshark reports that it captures (it names the interface on stderr)."""
    assert cap.stderr is not None
    os.set_blocking(cap.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 20
    while b"Capturing on" not in seen:
        if time.monotonic() > deadline or cap.poll() is not None:
            test.fail(f"tshark did not start capturing: {seen!r}")
        chunk = cap.stderr.read()
        if chunk:
            seen += chunk
        time.sleep(0.05)
