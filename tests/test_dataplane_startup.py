"""Start-up failures of the data plane: one clear sentence, no traceback.

Each test runs ``twistd smobility-home`` with a ``[tunnel]`` table inside a
network namespace of its own (so the TUN device and the ports it tries are
not the machine's), provokes one failure and reads what the operator sees.
"""

from __future__ import annotations

import random
import shutil
import string
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import KEY_HEX, ROOT, env, twistd
from tests.util import require_root, require_tool

ESP_KEY = "00" * 20


def _home_config(directory: Path, port: int, esp_port: int, device: str = "smob-ha0") -> Path:
    path = directory / "home.toml"
    path.write_text(
        f"""
[home]
addresses = ["10.250.0.1"]
listen = "0.0.0.0"
home_network = "10.77.0.0/24"
port = {port}
state_db = "{directory / "home.sqlite"}"

[tunnel]
device = "{device}"
port = {esp_port}

[[mobile_node]]
name = "laptop"
home_address = "10.77.0.10"
spi = 1000
key = "{KEY_HEX}"

[mobile_node.esp]
spi_to_home = 4097
spi_to_client = 8193
key_to_home = "{ESP_KEY}"
key_to_client = "{ESP_KEY}"
"""
    )
    return path


class StartupFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        require_root(self)
        self.ip = require_tool(self, "ip")
        self.ns = "smobt" + "".join(random.choice(string.ascii_lowercase) for _ in range(6))
        subprocess.run([self.ip, "netns", "add", self.ns], check=True)
        self.addCleanup(subprocess.run, [self.ip, "netns", "del", self.ns], check=False)
        subprocess.run([self.ip, "-n", self.ns, "link", "set", "lo", "up"], check=True)
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)

    def run_home(self, config: Path, *prefix: str) -> tuple[int, str]:
        r = subprocess.run(
            [self.ip, "netns", "exec", self.ns, *prefix, twistd(), "-n", "--pidfile=",
             "smobility-home", "--config", str(config)],
            capture_output=True, env=env(), timeout=60, cwd=str(ROOT),
        )  # fmt: skip
        return r.returncode, (r.stdout + r.stderr).decode()

    def test_esp_port_taken(self) -> None:
        """A taken ESP-in-UDP port: the sentence names the address and port."""
        holder = subprocess.Popen(
            [self.ip, "netns", "exec", self.ns, sys.executable, "-c",
             "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
             "s.bind(('0.0.0.0', 4500)); print('bound', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(holder.wait, 10)
        self.addCleanup(holder.kill)
        assert holder.stdout is not None
        self.assertEqual(holder.stdout.readline().strip(), b"bound")
        code, out = self.run_home(_home_config(self.dir, 4434, 4500))
        self.assertNotEqual(code, 0, out)
        self.assertIn("cannot listen on UDP 0.0.0.0:4500 for ESP-in-UDP", out)
        self.assertNotIn("Traceback", out)

    def test_registration_port_taken(self) -> None:
        holder = subprocess.Popen(
            [self.ip, "netns", "exec", self.ns, sys.executable, "-c",
             "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
             "s.bind(('0.0.0.0', 4434)); print('bound', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(holder.wait, 10)
        self.addCleanup(holder.kill)
        assert holder.stdout is not None
        holder.stdout.readline()
        code, out = self.run_home(_home_config(self.dir, 4434, 4500))
        self.assertNotEqual(code, 0, out)
        self.assertIn("cannot listen on UDP 0.0.0.0:4434", out)
        self.assertNotIn("Traceback", out)

    def test_without_privilege(self) -> None:
        """Not root: creating the TUN device needs CAP_NET_ADMIN, said in one sentence."""
        setpriv = require_tool(self, "setpriv")
        # A directory the unprivileged user can use, so that the TUN device,
        # not the files, is what fails.
        shared = Path(tempfile.mkdtemp(prefix="smobt-"))
        self.addCleanup(shutil.rmtree, shared, True)
        shared.chmod(0o777)
        config = _home_config(shared, 4434, 4500)
        config.chmod(0o644)
        code, out = self.run_home(
            config, setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all",
        )  # fmt: skip
        self.assertNotEqual(code, 0, out)
        self.assertIn("CAP_NET_ADMIN", out)
        self.assertNotIn("Traceback", out)
