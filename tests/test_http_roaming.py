"""Firewall traversal for real: V3 lets out only its Squid; the client gets home over HTTPS.

The lab's V3 blocks UDP and every direct connection; its proxy host runs
Squid with Basic auth. The home perimeter admits only TCP to the
multiplexer's SOCKS5 ingress. The client's transports: UDP first, then HTTPS
through Squid (CONNECT), the SOCKS5 ingress and the multiplexer. Real
processes throughout: twistd for the home agent, the multiplexer and the
client, Squid, TCP streams.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import tempfile
import time
from pathlib import Path
from typing import Any

from smobility.demo.roam import NETS, Demo
from tests.labroaming import LabRoaming
from tests.util import require_root, require_tool


class _Base(LabRoaming):
    """The lab with the HTTP path; the proxy in V3 is ``proxy_kind``."""

    proxy_kind = "squid"
    lab: Any = None
    demo: Demo | None = None
    work: Path

    def setUp(self) -> None:
        require_root(self)
        for tool in ("ip", "squid", "htpasswd", "tinyproxy"):
            require_tool(self, tool)
        from smobility.lab import Lab

        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(4))
        self.lab = Lab(prefix=f"smobh{suffix}")
        self.work = Path(tempfile.mkdtemp(prefix="smob-http-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.addCleanup(self.lab.down)
        self.lab.up()
        self.demo = Demo(self.lab, self.work)
        self.demo.proxy_kind = self.proxy_kind
        self.addCleanup(self.demo.stop_all)
        home_cfg, self.client_cfg = self.demo.write_configs(http=True)
        self.demo.twistd("ha", "smobility-home", home_cfg, "home.log")
        self.demo.start_http_side()

    def start_client(self, net: str) -> None:
        assert self.demo is not None
        self.lab.move(net)
        self.lab.wait_address(NETS[net])
        self.demo.twistd("mn", "smobility-client", self.client_cfg, "client.log")
        self.demo.wait_state("registered", None, timeout=40)

    def go(self, net: str) -> dict[str, Any]:
        assert self.demo is not None
        self.lab.move(net)
        addr = self.lab.wait_address(NETS[net])
        return self.demo.wait_state("registered", str(addr.ip), timeout=40)

    def check_v3_streams_and_inbound(self) -> None:
        """In V3 only HTTPS through its proxy works: streams both ways and inbound connections."""
        assert self.demo is not None
        self.start_client("v3")
        st = self.demo.status()
        self.assertTrue(st["path"].startswith("http"), st["path"])
        self.assertTrue(st["nat"])
        clients = self.streams()
        time.sleep(3)
        self.assertTrue(self.demo.probe())
        stats = self.finish(clients)
        self.assert_survived(stats)
        self.assertGreater(stats["s-in"]["bytes"], 50_000)
        self.assertGreater(stats["s-out"]["bytes"], 50_000)
        # They came through V3's only way out, its proxy host (V3's NAT address
        # is the source the SOCKS5 ingress saw), then the ingress to the mux.
        mux_log = (self.work / "mux.log").read_text()
        self.assertIn("SOCKS5 ingress: 172.31.3.2:", mux_log)
        self.assertIn("user 'laptop' connected to the multiplexer", mux_log)


class HTTPRoamingTests(_Base):
    """Squid (full duplex) in V3."""

    def test_v3_streams_and_inbound(self) -> None:
        self.check_v3_streams_and_inbound()

    def test_stream_survives_v1_v3_v2(self) -> None:
        assert self.demo is not None
        self.start_client("v1")
        self.assertEqual(self.demo.status()["path"], "udp")
        clients = self.streams()
        time.sleep(2)
        st = self.go("v3")
        self.assertTrue(st["path"].startswith("http"), st)
        time.sleep(3)
        self.assertTrue(self.demo.probe())
        st = self.go("v2")
        time.sleep(1)
        self.assertEqual(self.demo.status()["path"], "udp")
        time.sleep(2)
        self.assert_survived(self.finish(clients))

    def test_mux_restart_mid_stream(self) -> None:
        """The multiplexer is killed and restarted: the client reconnects, the stream survives."""
        assert self.demo is not None and self.demo.mux is not None
        self.start_client("v3")
        clients = self.streams()
        time.sleep(2)
        before = json.loads((self.work / "s-in.json").read_text())["bytes"]
        self.demo.mux.kill()
        self.demo.mux.wait(10)
        time.sleep(2)
        self.demo.procs.remove(self.demo.mux)
        self.demo.mux = self.demo.twistd("mux", "smobility-mux", self.work / "mux.toml",
                                         "mux2.log")  # fmt: skip
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            now = json.loads((self.work / "s-in.json").read_text())["bytes"]
            if now > before + 50_000:
                break
            time.sleep(0.5)
        stats = self.finish(clients)
        self.assert_survived(stats)
        self.assertGreater(stats["s-in"]["bytes"], before + 50_000)


class TinyproxyRoamingTests(_Base):
    """tinyproxy (half duplex: holds responses until request bodies end) in V3."""

    proxy_kind = "tinyproxy"

    def test_v3_streams_and_inbound(self) -> None:
        self.check_v3_streams_and_inbound()
