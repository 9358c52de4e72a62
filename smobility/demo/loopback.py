"""``make demo``: a home agent and a client as real ``twistd`` processes.

This version runs on loopback: the client registers its care-of address with
the home agent, re-registers before each (short) lifetime runs out, and
deregisters when it is stopped.  The readable timeline comes from the two
processes' own logs; the last line is one JSON object.

The tunnel and the namespace lab (roaming between networks with TCP streams
running) are not built yet: ``handovers`` is 0, ``inbound_ok`` and
``max_gap_ms`` are null, and the JSON says so in ``notes``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LIFETIME = 4
RUN_FOR = 7.0


@dataclass
class Proc:
    """One twistd process with its log file."""

    name: str
    log: Path
    proc: subprocess.Popen[bytes]
    _out: object = field(repr=False, default=None)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if self.proc.poll() is not None:
                raise SystemExit(f"demo: {self.name} exited early:\n{self.text()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: {self.name} never logged {pattern!r}:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(name: str, plugin: str, config: Path, workdir: Path) -> Proc:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log = workdir / f"{name}.log"
    out = open(log, "wb")  # noqa: SIM115 - the child owns it until it exits
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", plugin, "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    return Proc(name, log, proc, out)


_LINE = re.compile(r"^(\S+) \[([^\]]+)\] (.*)$")


def _timeline(procs: list[Proc], t0: float) -> list[tuple[float, str, str]]:
    """Registration events from the logs, as (seconds since start, who, what)."""
    keep = re.compile(r"registration|registered|deregist|refused|listening|care-of|binding|stopped")
    events: list[tuple[float, str, str]] = []
    for p in procs:
        for line in p.text().splitlines():
            m = _LINE.match(line)
            if not m or not keep.search(m.group(3)) or "configuration:" in m.group(3):
                continue
            stamp = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S"))
            events.append((stamp - t0, p.name, m.group(3)))
    events.sort(key=lambda e: e[0])
    return events


def main() -> int:
    """Run the demo; print the timeline and one JSON line; 0 on success."""
    workdir = Path(tempfile.mkdtemp(prefix="smob-demo-"))
    key = secrets.token_hex(16)
    keyfile = workdir / "laptop.mnha"
    keyfile.write_text(key + "\n")
    keyfile.chmod(0o600)
    port = _free_udp_port()
    (workdir / "home.toml").write_text(
        f"""
[home]
addresses = ["127.0.0.1"]
listen = "127.0.0.1"
home_network = "10.77.0.0/24"
port = {port}
state_db = "{workdir / "home.sqlite"}"

[[mobile_node]]
name = "laptop"
home_address = "10.77.0.10"
spi = 1000
key_file = "{keyfile}"
max_lifetime = {LIFETIME}
"""
    )
    (workdir / "client.toml").write_text(
        f"""
[client]
name = "laptop"
home_address = "10.77.0.10"
home_agent = "127.0.0.1"
home_agent_port = {port}
spi = 1000
key_file = "{keyfile}"
lifetime = 600
reregister_margin = 0.5
status_file = "{workdir / "client.json"}"
"""
    )
    print(f"smobility demo (loopback): home agent on UDP 127.0.0.1:{port}, work dir {workdir}")
    print(f"  the home agent grants at most {LIFETIME} s, so the client re-registers every "
          f"{LIFETIME / 2:g} s")  # fmt: skip
    t0 = float(int(time.time()))
    home = _start("home", "smobility-home", workdir / "home.toml", workdir)
    procs = [home]
    try:
        home.wait_for("listening on UDP")
        client = _start("client", "smobility-client", workdir / "client.toml", workdir)
        procs.append(client)
        client.wait_for(r"registered coa=")
        print(f"  registered; letting it run {RUN_FOR:g} s ...")
        time.sleep(RUN_FOR)
        client.stop()
        home.wait_for(r"deregistration node=laptop .*code=0")
    finally:
        for p in reversed(procs):
            p.stop()
    print("\ntimeline (seconds since start, process, event):")
    for t, who, what in _timeline(procs, t0):
        print(f"  {t:6.1f}  {who:<6}  {what}")
    home_log = home.text()
    registrations = len(re.findall(r"\] registration node=laptop .*code=0", home_log))
    deregistrations = len(re.findall(r"\] deregistration node=laptop .*code=0", home_log))
    status = json.loads((workdir / "client.json").read_text())
    result = {
        "mode": "loopback",
        "registrations": registrations,
        "reregistrations": max(0, registrations - 1),
        "deregistrations": deregistrations,
        "client_state": status["state"],
        "handovers": 0,
        "tcp_resets": 0,
        "inbound_ok": None,
        "max_gap_ms": None,
        "paths": ["direct"],
        "notes": "registration only: the tunnel and the roaming lab are not built yet",
    }
    ok = registrations >= 2 and deregistrations == 1 and status["state"] == "unregistered"
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
