# -*- test-case-name: tests.test_bench -*-
"""
Our own tunnel as a benchmark peer: the home agent and the client as real C{twistd} processes.

It is set up exactly as the roaming demo does it (L{smobility.demo.roam.Demo}):
manual ESP keys for AES-128-GCM (RFC 4106, 16-byte ICV) in UDP (RFC 3948),
the client registered from V1.  The correspondent reaches the client's home
address through the home agent's proxy ARP and TUN route; the home agent
itself reaches it from its LAN address.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import twisted

from smobility.bench.context import BenchError
from smobility.bench.peers import TunnelPeer
from smobility.demo.roam import Demo
from smobility.lab import Lab

ROOT = Path(__file__).resolve().parent.parent.parent


class SmobilityTunnel(TunnelPeer):
    """smobility: C{twistd smobility-home} in C{ha}, C{twistd smobility-client} in C{mn}."""

    name = "smobility"
    title = "smobility"

    demo: Demo | None = None

    def start(self) -> None:
        """Write the demo's configurations, start both sides, wait for the registration."""
        work = self.ctx.work / "smobility"
        work.mkdir(mode=0o700)
        self.demo = demo = Demo(self.ctx.lab, work)
        home_cfg, client_cfg = demo.write_configs()
        demo.twistd("ha", "smobility-home", home_cfg, "home.log")
        demo.twistd("mn", "smobility-client", client_cfg, "client.log")
        self.procs = demo.procs
        try:
            demo.wait_state("registered", None)
        except SystemExit as e:  # the demo's way of giving up
            raise BenchError(
                f"{e}\nhome agent log:\n{_tail(work / 'home.log')}\n"
                f"client log:\n{_tail(work / 'client.log')}"
            ) from None
        self.client_address = Lab.HOA
        self.ha_source = Lab.HA_LAN

    def stop(self) -> None:
        """Stop both daemons (the demo stops them by PID) and close their logs."""
        if self.demo is not None:
            self.demo.stop_all()

    def describe(self) -> dict[str, Any]:
        """Version (the checkout's commit) and configuration."""
        return {
            "version": git_version(),
            "twisted": twisted.__version__,
            "data": "ESP (RFC 4303) in UDP 4500 (RFC 3948), AES-128-GCM 16-byte ICV "
            "(RFC 4106), manual keys as in the demo",
            "processes": "twistd smobility-home (ha), twistd smobility-client (mn)",
            "client_address": self.client_address,
        }


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:])


def git_version() -> str:
    """
    The checkout's commit, with C{+dirty} when files differ from it, or C{""}.

    Numbers move with uncommitted data plane work, so the result says so.
    """
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        return ""
    try:
        head = subprocess.run(  # noqa: S603 - fixed argv, our own checkout
            [git, "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603 - fixed argv, our own checkout
            [git, "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")
