"""Real processes: twistd home agents and clients on loopback, checked by scapy and tshark.

These tests start ``twistd`` as the user would, talk to it with an independent
implementation (scapy builds the request; tshark dissects a capture), and stop
every process they started by its PID, also when they fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from ipaddress import IPv4Address
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from smobility.wire import mip
from smobility.wire.ntp import to_ntp
from tests.procs import KEY_HEX, Twistd, node_table, write_client, write_home
from tests.util import free_udp_port, require_root, require_tool

KEY = bytes.fromhex(KEY_HEX)


class LiveHomeAgentTests(SynchronousTestCase):
    """A live ``twistd smobility-home`` answers independent peers."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.procs: list[Twistd] = []

    def tearDown(self) -> None:
        for p in self.procs:
            p.stop()

    def start(self, plugin: str, config: Path, name: str) -> Twistd:
        p = Twistd(self.dir, plugin, config, name).start()
        self.procs.append(p)
        return p

    def test_scapy_request_accepted(self) -> None:
        """scapy builds the fixed part, we append MN-HA; the reply parses in scapy too."""
        from scapy.layers.mobileip import MobileIP, MobileIPRRP, MobileIPRRQ

        port = free_udp_port()
        home = self.start("smobility-home", write_home(self.dir, port), "home")
        home.wait_for("listening on UDP")
        ident = to_ntp(time.time())
        rrq = MobileIP(type=1) / MobileIPRRQ(
            flags=0x22,  # D and T
            lifetime=300,
            homeaddr="10.77.0.10",
            haaddr="127.0.0.1",
            coaddr="127.0.0.1",
            id=ident,
        )
        fixed = bytes(rrq)
        self.assertEqual(len(fixed), 24)
        data = mip.append_authenticator(fixed, mip.EXT_MN_HA, 1000, KEY)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(data, ("127.0.0.1", port))
            reply, addr = s.recvfrom(2048)
        self.assertEqual(addr, ("127.0.0.1", port))
        rrp = MobileIP(reply[:20])[MobileIPRRP]
        self.assertEqual(rrp.code, 0)
        self.assertEqual(rrp.lifetime, 300)
        self.assertEqual(rrp.homeaddr, "10.77.0.10")
        self.assertEqual(rrp.haaddr, "127.0.0.1")
        self.assertEqual(rrp.id, ident)
        ours = mip.decode(reply)
        assert isinstance(ours, mip.RegistrationReply)
        i = mip.find_auth(ours.extensions, mip.EXT_MN_HA)
        assert i is not None
        self.assertTrue(mip.verify_authenticator(ours, i, KEY, "hmac-md5"))
        home.wait_for(r"registration node=laptop coa=127\.0\.0\.1 .* code=0")
        # The same bytes again: a replay, refused with 133 and logged.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(data, ("127.0.0.1", port))
            reply, _ = s.recvfrom(2048)
        self.assertEqual(MobileIP(reply[:20])[MobileIPRRP].code, 133)
        home.wait_for("code=133")

    def test_restart_keeps_unexpired_drops_expired(self) -> None:
        """Bindings survive a restart of the process; expired ones are dropped at load."""
        port = free_udp_port()
        nodes = node_table("laptop", "10.77.0.10", 1000, 600) + node_table(
            "phone", "10.77.0.11", 1001, 2
        )
        config = write_home(self.dir, port, nodes=nodes)
        home = self.start("smobility-home", config, "home")
        home.wait_for("listening on UDP")
        laptop = self.start("smobility-client", write_client(self.dir, port), "laptop")
        phone = self.start(
            "smobility-client",
            write_client(self.dir, port, name="phone", hoa="10.77.0.11", spi=1001, lifetime=2),
            "phone",
        )
        home.wait_for(r"registration node=laptop .*lifetime=600 code=0")
        home.wait_for(r"registration node=phone .*lifetime=2 code=0")
        # Kill the clients hard (no deregistration), then the home agent.
        for client in (laptop, phone):
            assert client.proc is not None
            client.proc.send_signal(signal.SIGKILL)
            client.proc.wait(5)
        self.assertEqual(home.stop(), 0)
        time.sleep(2.5)
        again = Twistd(self.dir, "smobility-home", config, "home2").start()
        self.procs.append(again)
        again.wait_for("listening on UDP")
        text = again.text()
        self.assertRegex(text, r"restored binding node=laptop coa=127\.0\.0\.1 expires in \d+ s")
        self.assertRegex(text, r"dropped 1 expired or unknown binding\(s\) of phone")
        self.assertIn("1 binding(s) restored", text)
        self.assertNotIn("restored binding node=phone", text)

    def test_tshark_decodes_real_exchange(self) -> None:
        """tshark dissects a capture of a real client/home exchange with no malformed frame."""
        require_root(self)
        tshark = require_tool(self, "tshark")
        port = free_udp_port()
        pcap = self.dir / "reg.pcap"
        cap = subprocess.Popen(
            [tshark, "-i", "lo", "-f", f"udp port {port}", "-w", str(pcap), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # Wait until the capture runs: tshark names the interface on stderr.
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
            home = self.start("smobility-home", write_home(self.dir, port), "home")
            home.wait_for("listening on UDP")
            client = self.start(
                "smobility-client",
                write_client(self.dir, port, extra='nai = "laptop@home.example"'),
                "client",
            )
            home.wait_for(r"registration node=laptop .*code=0")
            self.assertEqual(client.stop(), 0)
            home.wait_for(r"deregistration node=laptop .*code=0")
            time.sleep(0.5)
        finally:
            cap.send_signal(signal.SIGINT)
            try:
                cap.wait(10)
            except subprocess.TimeoutExpired:
                cap.kill()
                cap.wait(5)
        fields = [
            "mip.type", "mip.flags", "mip.life", "mip.homeaddr", "mip.haaddr", "mip.coa",
            "mip.code", "mip.ext.type", "mip.auth.spi", "mip.nai", "_ws.malformed",
            "_ws.expert.severity",
        ]  # fmt: skip
        out = subprocess.run(
            [tshark, "-r", str(pcap), "-d", f"udp.port=={port},mip", "-T", "fields",
             "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
            + [a for f in fields for a in ("-e", f)],
            capture_output=True, check=True, timeout=60,
        ).stdout.decode()  # fmt: skip
        rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
        self.assertEqual(len(rows), 4, out)  # request, reply, deregistration, reply
        for row in rows:
            self.assertEqual(row["_ws.malformed"], "", row)
        req, rep, dereq, derep = rows
        self.assertEqual(req["mip.type"], "1")
        self.assertEqual(int(req["mip.flags"], 0), mip.FLAG_D | mip.FLAG_T)
        self.assertEqual(req["mip.life"], "600")
        self.assertEqual(req["mip.homeaddr"], "10.77.0.10")
        self.assertEqual(req["mip.haaddr"], "127.0.0.1")
        self.assertEqual(req["mip.coa"], "127.0.0.1")
        # NAI (131), UDP tunnel request (144), then MN-HA (32).
        self.assertEqual(req["mip.ext.type"], "131,144,32")
        self.assertEqual(req["mip.auth.spi"], "0x000003e8")
        self.assertEqual(req["mip.nai"], "laptop@home.example")
        self.assertEqual(rep["mip.type"], "3")
        self.assertEqual(rep["mip.code"], "0")
        self.assertEqual(rep["mip.life"], "600")
        self.assertEqual(rep["mip.ext.type"], "131,32")
        self.assertEqual(dereq["mip.life"], "0")
        self.assertEqual(dereq["mip.coa"], "10.77.0.10")
        self.assertEqual(derep["mip.code"], "0")
        self.assertEqual(IPv4Address(derep["mip.homeaddr"]), IPv4Address("10.77.0.10"))
