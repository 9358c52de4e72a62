"""Helpers for the lab tests that run the roles as twistd processes (no tests here).

The lab with a unique prefix, the demo's configurations (with the relay),
TCP streams both ways through the tunnel, waiting for a path, tshark
captures and their fields.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import string
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from smobility.demo.roam import CN, HOA, NETS, Demo
from tests.util import require_root, require_tool


class LabRoaming(SynchronousTestCase):
    """Helpers for the lab tests with twistd processes (no tests of its own)."""

    lab: Any = None
    demo: Demo | None = None
    work: Path
    #: The relay's mode: True ("forward") or "terminate".
    relay_mode: bool | str = True

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
        home_cfg, self.client_cfg = self.demo.write_configs(relay=self.relay_mode)
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
        self.client_proc = self.demo.twistd("mn", "smobility-client", self.client_cfg, "client.log")
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
