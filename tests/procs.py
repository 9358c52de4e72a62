# -*- test-case-name: tests.test_services -*-
"""Real ``twistd`` processes for the tests: start, wait for a log line, stop by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY_HEX = "00112233445566778899aabbccddeeff"


def twistd() -> str:
    """The venv's twistd (next to the interpreter running the tests)."""
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def env() -> dict[str, str]:
    """The environment for a child process: the checkout first on the path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


class Twistd:
    """One ``twistd -n`` process whose output goes to a file we can search."""

    def __init__(self, directory: Path, plugin: str, config: Path, name: str) -> None:
        self.log_path = directory / f"{name}.log"
        self.plugin = plugin
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()

    def start(self) -> Twistd:
        """Start the process (pid file off, log to our file)."""
        self.proc = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", self.plugin, "--config", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env(),
            cwd=str(ROOT),
        )
        return self

    def text(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 15.0, count: int = 1) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) occurs ``count`` times in the log."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.text()))
            if len(found) >= count:
                return found[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.plugin} exited ({self.proc.returncode}) before printing "
                    f"{pattern!r}:\n{self.text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM our process (by its PID only) and wait; SIGKILL if it hangs.

        Returns 0 for a clean shutdown: twistd re-raises the SIGTERM it handled
        once the reactor has stopped, so its status is -SIGTERM after a clean
        "Server Shut Down"; anything else is returned as it is.
        """
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            code = self.proc.returncode
            if code == -signal.SIGTERM and "Server Shut Down." in self.text():
                code = 0
            self.proc = None
        if not self._log.closed:
            self._log.close()
        return code


def write_home(
    directory: Path,
    port: int,
    *,
    nodes: str | None = None,
    max_lifetime: int = 600,
    extra: str = "",
) -> Path:
    """A home agent config on 127.0.0.1:``port`` with one node "laptop" by default."""
    if nodes is None:
        nodes = node_table("laptop", "10.77.0.10", 1000, max_lifetime)
    path = directory / "home.toml"
    path.write_text(
        f"""
[home]
addresses = ["127.0.0.1"]
listen = "127.0.0.1"
home_network = "10.77.0.0/24"
port = {port}
state_db = "{directory / "home.sqlite"}"
max_lifetime = {max_lifetime}
{extra}
{nodes}
"""
    )
    return path


def node_table(name: str, hoa: str, spi: int, max_lifetime: int) -> str:
    """One [[mobile_node]] table with the test key."""
    return f"""
[[mobile_node]]
name = "{name}"
home_address = "{hoa}"
spi = {spi}
key = "{KEY_HEX}"
max_lifetime = {max_lifetime}
"""


def write_client(
    directory: Path,
    ha_port: int,
    *,
    name: str = "laptop",
    hoa: str = "10.77.0.10",
    spi: int = 1000,
    lifetime: int = 600,
    extra: str = "",
) -> Path:
    """A client config for the home agent on 127.0.0.1:``ha_port``."""
    path = directory / f"client-{name}.toml"
    path.write_text(
        f"""
[client]
name = "{name}"
home_address = "{hoa}"
home_agent = "127.0.0.1"
home_agent_port = {ha_port}
spi = {spi}
key = "{KEY_HEX}"
lifetime = {lifetime}
status_file = "{directory / f"{name}.json"}"
{extra}
"""
    )
    return path
