# -*- test-case-name: tests.test_bench -*-
"""
The tunnel throughput scenario: iperf3 TCP through smobility, OpenVPN and wireguard-go.

All tunnels come up side by side in one lab, the mobile node on V1 (routed,
no NAT); then, per case (from the correspondent or from the home agent,
towards the client or from it), each tunnel gets one iperf3 test after the
other, so that the machine's drifting load hits them alike.  During each test
the CPU time of that tunnel's two processes is measured.  A bare-path row
(no tunnel, C{ha} to the mobile node's V1 address) shows what the links
themselves carry.

Target (the issue): smobility at least 1.5 times OpenVPN's throughput, at no
more CPU per byte, between the correspondent and the client, both ways.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smobility.bench.context import BenchContext, BenchError, MissingTool
from smobility.bench.cpu import CpuMeter
from smobility.bench.iperf import IperfError, client_argv, parse_iperf3, server_argv
from smobility.bench.openvpn import OpenVpnTunnel
from smobility.bench.peers import BarePath, TunnelPeer, first_line, reachable
from smobility.bench.results import (
    Column,
    Row,
    ScenarioResult,
    machine_info,
    ratio,
    summarise,
    utc_now,
)
from smobility.bench.smob import SmobilityTunnel
from smobility.bench.wireguard import WireguardTunnel

NAME = "tunnel"
TITLE = "Tunnel throughput: iperf3 TCP through smobility, OpenVPN and wireguard-go"
PEERS: tuple[type[TunnelPeer], ...] = (BarePath, SmobilityTunnel, OpenVpnTunnel, WireguardTunnel)
PEER_NAMES: tuple[str, ...] = tuple(p.name for p in PEERS)
IPERF_BASE_PORT = 5201
TARGET_RATIO = 1.5
"""smobility's throughput must be at least this multiple of OpenVPN's."""
TARGET_CASES = ("cn -> client", "client -> cn")
"""The cases the target is judged on."""
PAUSE = 0.5
"""Seconds between two tests (lets the previous connection's teardown finish)."""

COLUMNS = [
    Column("mbps", "Mbit/s", "{:,.0f}"),
    Column("retransmits", "retransmits", "{:,.0f}"),
    Column("cpu_s_per_gb", "CPU s/GB", "{:.2f}"),
    Column("cpu_cores", "tunnel CPU (cores)", "{:.2f}"),
    Column("host_cores", "machine busy (cores)", "{:.2f}"),
]
COMPARISON_COLUMNS = [
    Column("mbps_ratio", "throughput x", "{:.2f}"),
    Column("cpu_per_gb_ratio", "CPU per GB x", "{:.2f}"),
    Column("cpu_cores_ratio", "tunnel CPU x", "{:.2f}"),
]
SAMPLE_KEYS = ("mbps", "retransmits", "cpu_s_per_gb", "cpu_cores", "host_cores")

DESCRIPTION = """\
`python -m smobility.bench --scenario tunnel` (part of `make bench`) builds one
namespace lab with the mobile node on V1 (routed, no NAT) and brings up, side
by side: smobility (home agent in `ha`, client in `mn`, registered from V1,
ESP-in-UDP with AES-128-GCM and manual keys as in the demo), OpenVPN 2.6 (UDP,
TLS with throwaway certificates, `--data-ciphers AES-128-GCM`,
`--disable-dco`: userspace tun, otherwise defaults; own subnet 10.99.0.0/24)
and wireguard-go (userspace, configured with `wg`; 10.98.0.0/24). All three
carry their traffic over the same outer path, `ha` <-> `inet` <-> `v1` <->
`mn`. An iperf3 server runs in `mn` on each tunnel's client address.

Cases: `cn -> client` (the correspondent on the home LAN sends to the client
through the home agent: the headline), `client -> cn` (the same with `-R`),
and the same two from the home agent itself (`ha -> client`, `client -> ha`).
The bare row is `ha` to the mobile node's V1 address with no tunnel. For each
case the tunnels take turns (one iperf3 test each, then the next case), so
slow drifts of the machine's load hit them alike; with `--rounds N` the whole
set repeats (the order rotating) and the table shows medians.

Columns: *Mbit/s* is what the receiver got (iperf3 `sum_received`);
*retransmits* the sender's TCP retransmits; *tunnel CPU* the user+system CPU
time of the tunnel's two processes (both `twistd`s, both `openvpn`s, both
`wireguard-go`s, read from `/proc/PID/stat`) during the test, in cores (CPU
seconds per second); *CPU s/GB* the same time per 10^9 bytes delivered (the
fair measure of cost: a faster tunnel moves more bytes in the same seconds);
*machine busy* all cores of the machine, iperf3 and the kernel included.
The target is judged on the two `cn` cases against OpenVPN: throughput at
least 1.5 times, CPU per GB no higher.
"""


@dataclass(frozen=True)
class Case:
    """One measurement: where the iperf3 client runs and which way the data flows."""

    path: str
    """The namespace of the far end: C{"cn"} or C{"ha"}."""
    reverse: bool
    """C{True}: the client (the mobile node) sends."""

    @property
    def name(self) -> str:
        """C{"cn -> client"} and the like."""
        return f"client -> {self.path}" if self.reverse else f"{self.path} -> client"


CASES = (Case("cn", False), Case("cn", True), Case("ha", False), Case("ha", True))


def label(peer: type[TunnelPeer] | TunnelPeer, case: Case) -> str:
    """The table label of C{peer}'s row for C{case}."""
    if peer.name == BarePath.name:
        return f"bare path, {'mn -> ha' if case.reverse else 'ha -> mn'}"
    return f"{peer.title}, {case.name}"


def sample_values(
    mbps: float,
    received: int,
    seconds: float,
    cpu_s: float | None,
    host_s: float | None,
) -> dict[str, float | None]:
    """
    The derived figures of one test.

    @param mbps: the receiver's rate.
    @param received: bytes delivered.
    @param seconds: the test's wall-clock time (what the CPU times cover).
    @param cpu_s: the tunnel processes' CPU seconds (C{None}: no tunnel).
    @param host_s: the machine's busy CPU seconds.
    """
    gigabytes = received / 1e9
    return {
        "mbps": mbps,
        "cpu_s": cpu_s,
        "cpu_s_per_gb": cpu_s / gigabytes if cpu_s is not None and gigabytes > 0 else None,
        "cpu_cores": cpu_s / seconds if cpu_s is not None and seconds > 0 else None,
        "host_cores": host_s / seconds if host_s is not None and seconds > 0 else None,
    }


def compare(result: ScenarioResult, ours: str, theirs: str, title: str) -> list[Row]:
    """Rows of C{ours} / C{theirs} per case, where both were measured."""
    rows = []
    for case in CASES:
        a = result.row(ours, case.name)
        b = result.row(theirs, case.name)
        if a is None or b is None or a.error or b.error:
            continue
        values = {
            "mbps_ratio": ratio(a.values.get("mbps"), b.values.get("mbps")),
            "cpu_per_gb_ratio": ratio(a.values.get("cpu_s_per_gb"), b.values.get("cpu_s_per_gb")),
            "cpu_cores_ratio": ratio(a.values.get("cpu_cores"), b.values.get("cpu_cores")),
        }
        rows.append(
            Row(
                peer=f"{ours}/{theirs}",
                case=case.name,
                label=f"smobility / {title}, {case.name}",
                values=values,
            )
        )
    return rows


def judge(result: ScenarioResult) -> None:
    """Fill in the verdict on the target (smobility against OpenVPN, the C{cn} cases)."""
    checks = []
    for case in TARGET_CASES:
        row = next(
            (r for r in result.comparisons if r.peer == "smobility/openvpn" and r.case == case),
            None,
        )
        if row is None:
            result.verdict.append(f"target not judged for {case}: smobility or OpenVPN missing")
            result.target_met = None
            return
        speed = row.values.get("mbps_ratio")
        cost = row.values.get("cpu_per_gb_ratio")
        ok = speed is not None and speed >= TARGET_RATIO and cost is not None and cost <= 1.0
        checks.append(ok)
        result.verdict.append(
            f"{case}: {_x(speed)} OpenVPN's throughput at {_x(cost)} its CPU per GB: "
            + ("meets" if ok else "misses")
            + f" the target (>= {TARGET_RATIO:g}x, <= 1.00x)"
        )
    result.target_met = all(checks)
    result.verdict.append(
        "target "
        + ("MET" if result.target_met else "NOT MET")
        + f": smobility >= {TARGET_RATIO:g}x OpenVPN's throughput at no more CPU per GB, "
        "correspondent <-> client, both directions (ratios within this run only)"
    )


def _x(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}x"


class TunnelScenario:
    """The scenario object the runner drives (see L{smobility.bench.runner.Scenario})."""

    name = NAME
    title = TITLE
    description = DESCRIPTION
    peers = PEER_NAMES

    def run(self, ctx: BenchContext) -> ScenarioResult:
        """Bring the tunnels up, measure every case, tear them down; never raises for a peer."""
        result = ScenarioResult(
            scenario=NAME,
            title=TITLE,
            label_header="tunnel, case",
            started=utc_now(),
            columns=list(COLUMNS),
            comparison_columns=list(COMPARISON_COLUMNS),
            machine=machine_info(),
            settings=dict(
                ctx.describe_env(), cases=[c.name for c in CASES], target_ratio=TARGET_RATIO
            ),
        )
        wanted = [cls for cls in PEERS if ctx.wants(cls.name)]
        rows: dict[tuple[str, str], Row] = {}
        for cls in wanted:
            for case in CASES:
                if case.path in cls.paths:
                    rows[(cls.name, case.name)] = Row(
                        peer=cls.name,
                        case=case.name,
                        label=label(cls, case),
                        info={"path": case.path, "reverse": case.reverse},
                    )
        result.rows = list(rows.values())
        peers: list[TunnelPeer] = []
        try:
            iperf3 = ctx.tool("iperf3")
            result.settings["iperf3"] = first_line(ctx, "ha", iperf3, "--version")
            ctx.say("mobile node joins V1 ...")
            ctx.lab.move("v1")
            ctx.lab.wait_address("v1")
            for cls in wanted:
                peer = cls(ctx)
                error = self._start(ctx, peer)
                result.peers[peer.name] = self._describe(peer)
                if error is not None:
                    self._fail(result, peer.name, error)
                    continue
                peers.append(peer)
            servers = self._servers(ctx, iperf3, peers, result)
            self._measure(ctx, iperf3, [p for p in peers if p.name in servers], rows, servers)
        except (MissingTool, BenchError) as e:
            result.errors.append(str(e))
        finally:
            for peer in reversed(peers):
                peer.stop()
            ctx.stop_all()
        for row in result.rows:
            if row.error is None and not any(s.get("error") is None for s in row.samples):
                errors = sorted({str(s.get("error")) for s in row.samples}) or ["not measured"]
                row.error = "; ".join(errors)
            row.values = summarise([s for s in row.samples if s.get("error") is None], SAMPLE_KEYS)
        for ours, theirs, title in (
            ("smobility", "openvpn", "OpenVPN"),
            ("smobility", "wireguard", "wireguard-go"),
        ):
            result.comparisons += compare(result, ours, theirs, title)
        judge(result)
        result.finished = utc_now()
        return result

    # -- steps ---------------------------------------------------------------------------

    @staticmethod
    def _fail(result: ScenarioResult, peer: str, error: str) -> None:
        for row in result.rows:
            if row.peer == peer:
                row.error = error
        result.errors.append(f"{peer}: {error}")

    @staticmethod
    def _describe(peer: TunnelPeer) -> dict[str, Any]:
        """The peer's description; a peer that cannot describe itself says why."""
        try:
            info = peer.describe()
        except Exception as e:  # a missing program, say: the row already tells
            info = {"describe_error": str(e)}
        return dict(info, title=peer.title)

    @staticmethod
    def _start(ctx: BenchContext, peer: TunnelPeer) -> str | None:
        """Start C{peer} and check the client answers on every path; an error sentence or None."""
        ctx.say(f"starting {peer.title} ...")
        try:
            peer.check()
            peer.start()
            for path in peer.paths:
                source = peer.ha_source if path == "ha" else None
                if not reachable(ctx, path, peer.client_address, source):
                    raise BenchError(
                        f"{peer.client_address} does not answer pings from {path} "
                        f"through {peer.title}"
                    )
        except (MissingTool, BenchError) as e:
            peer.stop()
            return str(e)
        except Exception as e:  # a peer must not take the others down
            peer.stop()
            return f"{type(e).__name__}: {e}"
        return None

    @staticmethod
    def _servers(
        ctx: BenchContext, iperf3: str, peers: Sequence[TunnelPeer], result: ScenarioResult
    ) -> dict[str, int]:
        """One iperf3 server in C{mn} per peer, on its client address; returns the ports."""
        ports = {}
        for i, peer in enumerate(peers):
            port = IPERF_BASE_PORT + i
            log = f"iperf3-server-{peer.name}.log"
            proc = ctx.start("mn", server_argv(iperf3, peer.client_address, port), log)
            try:
                ctx.wait_for(
                    functools.partial(ctx.listening, "mn", port),
                    f"the iperf3 server for {peer.title}",
                    timeout=10,
                    alive=[proc],
                    log=log,
                )
            except BenchError as e:
                TunnelScenario._fail(result, peer.name, str(e))
                continue
            ports[peer.name] = port
        return ports

    def _measure(
        self,
        ctx: BenchContext,
        iperf3: str,
        peers: Sequence[TunnelPeer],
        rows: dict[tuple[str, str], Row],
        ports: dict[str, int],
    ) -> None:
        """Every case, the peers taking turns; C{ctx.rounds} times, rotating the order."""
        for round_no in range(ctx.rounds):
            shift = round_no % max(1, len(peers))
            order = list(peers[shift:]) + list(peers[:shift])
            for case in CASES:
                for peer in order:
                    if case.path not in peer.paths:
                        continue
                    row = rows[(peer.name, case.name)]
                    ctx.say(f"  {row.label} ({ctx.duration:g} s) ...")
                    sample = self._one(ctx, iperf3, peer, case, ports[peer.name])
                    sample["round"] = round_no + 1
                    row.samples.append(sample)
                    if sample.get("error") is not None:
                        ctx.say(f"    error: {sample['error']}")
                    else:
                        ctx.say(f"    {sample['mbps']:,.0f} Mbit/s")
                    time.sleep(PAUSE)

    @staticmethod
    def _one(
        ctx: BenchContext, iperf3: str, peer: TunnelPeer, case: Case, port: int
    ) -> dict[str, Any]:
        """One iperf3 test through C{peer}; the sample (with C{"error"} set if it failed)."""
        bind = peer.ha_source if case.path == "ha" else None
        argv = client_argv(iperf3, peer.client_address, port, ctx.duration, case.reverse, bind)
        tunnel_pids = peer.pids()
        meter = CpuMeter.of(tunnel_pids)
        meter.start()
        started = time.monotonic()
        try:
            out = ctx.lab.exec(case.path, *argv, check=False, timeout=ctx.duration + 30)
        except subprocess.TimeoutExpired:
            return {"error": f"iperf3 did not finish within {ctx.duration + 30:g} s"}
        wall = time.monotonic() - started
        cpu_s, host_s = meter.stop()
        dead = peer.dead()
        if dead:
            return {"error": "; ".join(dead)}
        try:
            got = parse_iperf3(out.stdout)
        except IperfError as e:
            return {"error": str(e) + (f" ({out.stderr.strip()})" if out.stderr.strip() else "")}
        sample: dict[str, Any] = dict(
            sample_values(got.mbps, got.bytes, wall, cpu_s if tunnel_pids else None, host_s)
        )
        sample.update(
            error=None,
            retransmits=got.retransmits,
            bytes=got.bytes,
            seconds=got.seconds,
            wall_s=round(wall, 3),
            host_busy_s=host_s,
            sender_mbps=got.sender_bits_per_second / 1e6,
            iperf_cpu_local=got.cpu_local,
            iperf_cpu_remote=got.cpu_remote,
        )
        return sample


SCENARIO = TunnelScenario()
"""The instance the runner registers."""
