"""The example configurations in etc/ run as they are in the lab."""

from __future__ import annotations

import json
import random
import string
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import ROOT, env, twistd
from tests.util import require_root, require_tool


class LabExamplesTests(SynchronousTestCase):
    def test_etc_home_and_client_roam(self) -> None:
        """etc/home.toml in ha, etc/client.toml in mn: registered from V1, reachable, home."""
        require_root(self)
        require_tool(self, "ip")
        from smobility.lab import Lab

        lab = Lab(prefix="smobe" + "".join(random.choice(string.ascii_lowercase) for _ in range(4)))
        self.addCleanup(lab.down)
        lab.up()
        logs = Path(self.mktemp()).resolve()
        logs.mkdir(parents=True)
        procs: list[subprocess.Popen[bytes]] = []

        def stop() -> None:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                p.wait(10)

        self.addCleanup(stop)
        status = Path("/run/smobility-client.json")
        status.unlink(missing_ok=True)
        for role, plugin, cfg in (
            ("ha", "smobility-home", "etc/home.toml"),
            ("mn", "smobility-client", "etc/client.toml"),
        ):
            if role == "mn":
                lab.move("v1")
                lab.wait_address("v1")
            out = open(logs / f"{role}.log", "wb")  # noqa: SIM115
            self.addCleanup(out.close)
            procs.append(
                lab.popen(role, twistd(), "-n", "--pidfile=", plugin, "--config", cfg,
                          stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=str(ROOT))
            )  # fmt: skip
        deadline = time.monotonic() + 20
        state = {}
        while time.monotonic() < deadline:
            try:
                state = json.loads(status.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("state") == "registered":
                break
            time.sleep(0.1)
        self.assertEqual(state.get("state"), "registered", (logs / "mn.log").read_text()[-3000:])
        self.assertTrue(lab.ping("cn", "10.77.0.10", count=2))
        lab.move("home")
        lab.wait_address("home")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and state.get("state") != "at-home":
            time.sleep(0.1)
            try:
                state = json.loads(status.read_text())
            except (OSError, ValueError):
                pass
        self.assertEqual(state.get("state"), "at-home")
        self.assertTrue(lab.ping("cn", "10.77.0.10"))
        home_log = (logs / "ha.log").read_text()
        self.assertIn("registration node=laptop", home_log)
        self.assertIn("admin console not started", home_log)
