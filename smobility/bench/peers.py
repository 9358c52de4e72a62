# -*- test-case-name: tests.test_bench -*-
"""
The tunnels a benchmark measures, behind one small interface.

A L{TunnelPeer} brings a tunnel up between the home agent's namespace (C{ha})
and the mobile node's (C{mn}, attached to the routed visited network V1), and
says which address the mobile node has inside it.  Traffic reaches that
address from the correspondent (C{cn}, on the home LAN behind C{ha}) and from
C{ha} itself; the peer also names the processes whose CPU time counts.

The implementations: L{BarePath} (no tunnel: the reference),
L{smobility.bench.smob.SmobilityTunnel}, L{smobility.bench.openvpn.OpenVpnTunnel}
and L{smobility.bench.wireguard.WireguardTunnel}.
"""

from __future__ import annotations

import subprocess
from typing import Any, ClassVar

from smobility.bench.context import BenchContext, BenchError
from smobility.lab.namespaces import find_tool

PATHS: tuple[str, ...] = ("cn", "ha")
"""Where traffic to the mobile node comes from: the correspondent or the home agent."""


class TunnelPeer:
    """
    A tunnel between C{ha} and C{mn} (subclasses say which).

    @cvar name: the name C{--only} uses.
    @cvar title: the name in tables.
    @cvar paths: the namespaces that can reach L{client_address} (see L{PATHS}).
    @ivar client_address: the mobile node's address inside the tunnel, once started.
    @ivar ha_source: the source address C{ha} must use to reach it through the
        tunnel (C{None}: the one the route picks).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paths: ClassVar[tuple[str, ...]] = PATHS

    def __init__(self, ctx: BenchContext) -> None:
        """A peer for the run C{ctx}; nothing runs until L{start}."""
        self.ctx = ctx
        self.client_address = ""
        self.ha_source: str | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    def check(self) -> None:
        """
        Make sure the programs this peer needs are installed.

        @raise smobility.bench.context.MissingTool: one is not.
        """

    def start(self) -> None:
        """
        Bring the tunnel up; return once traffic can flow.

        @raise BenchError: it did not come up.
        """
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The processes doing this tunnel's work (their CPU time is measured)."""
        return [proc.pid for proc in self.procs]

    def dead(self) -> list[str]:
        """Descriptions of this peer's processes that are no longer running."""
        return [
            f"{program(proc)} (pid {proc.pid}) exited with {proc.returncode}"
            for proc in self.procs
            if proc.poll() is not None
        ]

    def stop(self) -> None:
        """Stop this peer's processes (by PID)."""
        self.ctx.stop(self.procs)

    def describe(self) -> dict[str, Any]:
        """Version and configuration in a few words, for the result file."""
        return {}


class BarePath(TunnelPeer):
    """No tunnel: C{ha} to the mobile node's visited-network address over the lab's links."""

    name = "bare"
    title = "bare path (no tunnel)"
    paths = ("ha",)

    def start(self) -> None:
        """Take the mobile node's current address on V1."""
        address = self.ctx.lab.uplink_address()
        if address is None:
            raise BenchError("the mobile node has no address on its uplink")
        self.client_address = str(address.ip)

    def describe(self) -> dict[str, Any]:
        """What the path is."""
        return {
            "path": "ha wan0 -> inet -> v1 -> bridge -> mn uplink (veth pairs, routed, no NAT)",
            "client_address": self.client_address,
        }


def program(proc: subprocess.Popen[bytes]) -> str:
    """The name of the program C{proc} runs (the word after C{ip netns exec NS})."""
    args = proc.args
    if isinstance(args, list | tuple) and len(args) > 4:
        return str(args[4]).rsplit("/", 1)[-1]
    return str(args)


def reachable(
    ctx: BenchContext, role: str, address: str, source: str | None = None, tries: int = 5
) -> bool:
    """Does C{address} answer a ping from C{role} (from C{source})? Several tries."""
    ping = find_tool("ping")
    argv = [ping] if ping is not None else [ctx.tool("busybox"), "ping"]
    argv += ["-c", "1", "-W", "1"]
    if source is not None:
        argv += ["-I", source]
    argv.append(address)
    for _ in range(tries):
        if ctx.lab.exec(role, *argv, check=False, timeout=10).returncode == 0:
            return True
    return False


def first_line(ctx: BenchContext, role: str, *argv: str) -> str:
    """The first line a command prints (a version string), or C{""}."""
    try:
        out = ctx.lab.exec(role, *argv, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""
