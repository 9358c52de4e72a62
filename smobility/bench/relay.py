# -*- test-case-name: tests.test_bench -*-
"""
The relay path scenario: iperf3 TCP direct, through the relay forwarding, through it terminating.

One lab, the same client, home agent and correspondent; three paths between
the correspondent and the client's home address, measured in turns in one
run:

  - C{direct}: the client in V1 (routed), transport UDP, ESP-in-UDP straight
    to the home agent (the reference);
  - C{forward}: the client in V4 (the home agent blocked) falls back to the
    relay in C{rl}, which carries the client's own ESP home inside IP-in-IP
    (C{Demo.write_configs(relay=True)});
  - C{terminate}: the same place, the relay in terminate mode
    (C{Demo.write_configs(relay="terminate")}): it ends the client's ESP and
    re-seals it under its own SA with home, inside IP-in-IP.

The home agent, relay and client are the roaming demo's C{twistd}s
(L{smobility.demo.roam.Demo}).  Forward and terminate need different
configurations, so each round brings up two sets of processes one after the
other: the forward one measures C{direct} (client in V1) and C{forward}
(client moved to V4), the terminate one C{terminate}.  During each test the
CPU time of each of our processes is read (the relay's by its own PID) and
so are the IP counters of C{mn}, C{rl} and C{ha} (fragmentation: IP-in-IP
adds 20 bytes to full-size ESP packets).

There is no independent peer for the relayed path (no independent Mobile IP
foreign agent runs here), so the scenario has no target: it reports the
relayed paths against the direct one, within the run.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smobility.bench.context import BenchContext, BenchError, MissingTool
from smobility.bench.cpu import CpuMeter
from smobility.bench.http import _demo_step, per_process_cores
from smobility.bench.iperf import IperfError, client_argv, parse_iperf3, server_argv
from smobility.bench.peers import TunnelPeer, first_line, reachable
from smobility.bench.results import (
    Column,
    Row,
    ScenarioResult,
    machine_info,
    ratio,
    summarise,
    utc_now,
)
from smobility.bench.smob import git_version
from smobility.bench.tunnel import CASES as TUNNEL_CASES
from smobility.bench.tunnel import Case, sample_values
from smobility.demo.roam import Demo
from smobility.lab import Lab, LabError

NAME = "relay"
TITLE = "Relay path throughput: smobility direct, through the relay forwarding and terminating"
PATHS: tuple[str, ...] = ("direct", "forward", "terminate")
"""The paths measured (the names C{--only} accepts)."""
PATH_TITLES = {
    "direct": "direct (V1, UDP)",
    "forward": "relay forward (V4)",
    "terminate": "relay terminate (V4)",
}
NETWORK = {"direct": "v1", "forward": "v4", "terminate": "v4"}
"""Where the client is for each path."""
CASES: tuple[Case, ...] = tuple(c for c in TUNNEL_CASES if c.path == "cn")
"""Correspondent to the client's home address and back (iperf3 C{-R})."""
PROCESSES = ("home agent", "relay", "client")
NAMESPACES = ("mn", "rl", "ha")
"""Where the IP counters are read."""
IPERF_PORT = 5211
PAUSE = 0.5
"""Seconds between two tests."""
READY_TIMEOUT = 45.0
"""Seconds the client gets to be registered on a path (the relay comes after a UDP fallback)."""
CPU_BOUND = 0.9
"""A process using this many cores or more is called CPU-bound (single-threaded)."""
IPIP_PROTOCOL = 4
IP_KEYS = (
    "OutRequests",
    "OutDiscards",
    "FragOKs",
    "FragCreates",
    "FragFails",
    "ReasmReqds",
    "ReasmOKs",
    "ReasmFails",
)
"""The C{Ip:} counters of C{/proc/net/snmp} kept per namespace and test."""
UDP_KEYS = ("RcvbufErrors", "SndbufErrors", "InErrors")
"""The C{Udp:} counters kept per namespace and test."""
DROP_KEYS = (
    "Ip.FragFails",
    "Ip.ReasmFails",
    "Ip.OutDiscards",
    "Udp.RcvbufErrors",
    "Udp.SndbufErrors",
    f"raw{IPIP_PROTOCOL}.drops",
)
"""The counters that count a packet lost (the C{drops} figure)."""


@dataclass(frozen=True)
class Setup:
    """One set of processes: the demo's configuration and the paths it serves."""

    relay: bool | str
    """C{Demo.write_configs(relay=...)}."""
    mode: str
    """The relay's mode in words."""
    paths: tuple[str, ...]
    """The paths measured with it, in their usual order."""


SETUPS = (
    Setup(True, "forward", ("direct", "forward")),
    Setup("terminate", "terminate", ("terminate",)),
)

COLUMNS = [
    Column("mbps", "Mbit/s", "{:,.0f}"),
    Column("retransmits", "retransmits", "{:,.0f}"),
    Column("cpu_s_per_gb", "CPU s/GB", "{:.2f}"),
    Column("cpu_cores", "smobility CPU (cores)", "{:.2f}"),
    Column("relay_cores", "relay CPU (cores)", "{:.2f}"),
    Column("relay_s_per_gb", "relay CPU s/GB", "{:.2f}"),
    Column("fragmented", "packets fragmented", "{:,.0f}"),
    Column("host_cores", "machine busy (cores)", "{:.2f}"),
]
COMPARISON_COLUMNS = [
    Column("mbps_ratio", "throughput x", "{:.2f}"),
    Column("cpu_per_gb_ratio", "CPU per GB x", "{:.2f}"),
    Column("cpu_cores_ratio", "smobility CPU x", "{:.2f}"),
]
SAMPLE_KEYS = (
    (
        "mbps",
        "retransmits",
        "cpu_s_per_gb",
        "cpu_cores",
        "relay_cores",
        "relay_s_per_gb",
        "fragmented",
        "fragments",
        "reassembled",
        "fragmented_share",
        "drops",
        "host_cores",
    )
    + tuple(
        f"{role}_{what}"
        for role in NAMESPACES
        for what in ("fragmented", "sent", "fragments", "reassembled")
    )
    + tuple(f"s_per_gb_{name.replace(' ', '_')}" for name in PROCESSES)
)

DESCRIPTION = """\
`python -m smobility.bench --scenario relay` (part of `make bench`) measures
the relay path of [relay.md](relay.md) against the direct path, in the same
lab and the same run. Home agent (`ha`), relay (`rl`, 172.31.4.2, on the
public side of the home firewall, which admits only IP protocol 4 from it)
and client (`mn`) are the roaming demo's `twistd`s, configured by
`Demo.write_configs`; ESP is AES-GCM (RFC 4106). Three paths between the
correspondent (`cn`, home LAN) and the client's home address 10.77.0.10:

- *direct*: the client in V1 (routed), transport UDP: ESP-in-UDP straight to
  the home agent, manual keys as in the demo (the reference);
- *relay forward*: the client in V4, which blocks the home agent; its UDP
  transport gets no answer and it falls back to the relay
  (`write_configs(relay=True)`). The relay carries the client's own ESP
  (same keys as direct) home inside IP-in-IP from a port of its own, and the
  home agent's answers back; it never holds the data keys;
- *relay terminate*: the same, with `write_configs(relay="terminate")`: the
  client runs IKEv2 with the relay (shared key), the relay ends the
  client's ESP and re-seals every packet under its own SA with the home
  agent (IKEv2 on the client's behalf), inside IP-in-IP.

Forward and terminate need different configurations of all three
processes, so each round brings up two sets one after the other: the
forward set measures *direct* (client in V1) and *relay forward* (client
moved to V4), then the terminate set measures *relay terminate*; with
`--rounds N` the order of sets and networks alternates. Before each path
is measured the run waits until the client's status shows it (transport
`udp`, or `relay` with its route keyed by the relay for terminate) and
pings the home address from `cn`; a test after which the client is on
another path is an error. Cases: `cn -> client` and `client -> cn`
(iperf3 `-R`), iperf3 server on the home address in `mn`.

Columns: *Mbit/s* what the receiver got; *retransmits* the sender's TCP
retransmits; *CPU s/GB* the CPU time of all three of our processes (home
agent, relay and client) per 10^9 bytes delivered; *smobility CPU* the same
in cores; *relay CPU* the relay's own `twistd` (by its PID; idle on the
direct path) in cores and per GB; *packets fragmented* IP packets the
kernel had to fragment on sending in `mn`, `rl` and `ha` during the test
(`FragOKs` of `/proc/net/snmp` in each namespace; IP-in-IP adds 20 bytes to
an ESP packet that already filled the 1500-byte path); *machine busy* all
cores. The lines under the ratios say which namespace fragmented and
which reassembled how many packets, the drops (failed fragmentations or
reassemblies, outgoing discards, UDP buffer errors, drops at the raw
protocol-4 sockets), and each process's CPU in cores and seconds per GB;
the JSON keeps every counter per namespace and test (`ip_counters`).

There is no independent peer for the relayed path: no independent Mobile IP
foreign agent is available to run here, so the scenario has no target. It
reports the relayed paths against the direct one within the run (*ratio*
rows: relay / direct).
"""


# -- counters -------------------------------------------------------------------------


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """
    The counters in the text of C{/proc/net/snmp}, by section.

    The file pairs a header line (C{"Ip: Forwarding DefaultTTL ..."}) with a
    line of numbers under the same prefix; sections whose lines do not pair
    up are left out.  C{{"Ip": {"FragOKs": 3, ...}, "Udp": {...}}}.
    """
    out: dict[str, dict[str, int]] = {}
    pending: dict[str, list[str]] = {}
    for line in text.splitlines():
        prefix, sep, rest = line.partition(":")
        if not sep or not prefix or " " in prefix:
            continue
        fields = rest.split()
        if prefix not in pending:
            pending[prefix] = fields
            continue
        names = pending.pop(prefix)
        if len(names) != len(fields):
            continue
        try:
            out[prefix] = {n: int(v) for n, v in zip(names, fields, strict=True)}
        except ValueError:
            continue
    return out


def parse_raw_drops(text: str, protocol: int = IPIP_PROTOCOL) -> int:
    """
    Packets dropped by the raw sockets of C{protocol}, from C{/proc/net/raw} text.

    For a raw socket the "port" of C{local_address} is its protocol; the last
    column is C{drops} (a full receive buffer).  Malformed lines are skipped.
    """
    total = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13:
            continue
        _, _, port = fields[1].partition(":")
        try:
            if int(port, 16) == protocol:
                total += int(fields[-1])
        except ValueError:
            continue
    return total


def read_counters(ctx: BenchContext, role: str) -> dict[str, int]:
    """The kept IP, UDP and raw-socket counters of C{role}'s namespace (empty if unreadable)."""
    try:
        snmp = ctx.lab.exec(role, "cat", "/proc/net/snmp", check=False, timeout=10).stdout
        raw = ctx.lab.exec(role, "cat", "/proc/net/raw", check=False, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return flatten_counters(parse_snmp(snmp), parse_raw_drops(raw))


def flatten_counters(snmp: Mapping[str, Mapping[str, int]], raw_drops: int) -> dict[str, int]:
    """The kept counters in one flat mapping (C{Ip.FragOKs}, C{Udp.RcvbufErrors}, C{raw4.drops})."""
    out: dict[str, int] = {}
    for section, keys in (("Ip", IP_KEYS), ("Udp", UDP_KEYS)):
        for key in keys:
            if key in snmp.get(section, {}):
                out[f"{section}.{key}"] = snmp[section][key]
    out[f"raw{IPIP_PROTOCOL}.drops"] = raw_drops
    return out


def counter_delta(
    before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """Per namespace, how much each counter read at both ends went up."""
    return {
        role: {k: after[role][k] - v for k, v in before[role].items() if k in after[role]}
        for role in before
        if role in after
    }


def fragment_values(delta: Mapping[str, Mapping[str, int]]) -> dict[str, float | None]:
    """
    The fragmentation and drop figures of one test, from L{counter_delta}'s output.

    Over all namespaces: C{fragmented}, packets the kernel fragmented on
    sending (C{FragOKs}); C{fragments}, the fragments it made
    (C{FragCreates}); C{reassembled}, packets reassembled (C{ReasmOKs});
    C{drops}, failed fragmentations and reassemblies, outgoing discards, UDP
    buffer errors and raw protocol-4 socket drops together;
    C{fragmented_share}, the fragmented packets per 100 IP sends
    (C{OutRequests}) of the namespaces that fragmented (a UDP GSO send is one
    request for many packets, so shares across namespaces would mislead).
    Per namespace C{<role>_fragmented}, C{<role>_sent} (C{OutRequests}),
    C{<role>_fragments} and C{<role>_reassembled}.
    """
    out: dict[str, float | None] = {}
    totals = dict.fromkeys(("fragmented", "fragments", "reassembled", "drops"), 0)
    fragmenting_sent = 0
    for role, counters in delta.items():
        fragmented = counters.get("Ip.FragOKs", 0)
        sent = counters.get("Ip.OutRequests", 0)
        out[f"{role}_fragmented"] = float(fragmented)
        out[f"{role}_sent"] = float(sent)
        out[f"{role}_fragments"] = float(counters.get("Ip.FragCreates", 0))
        out[f"{role}_reassembled"] = float(counters.get("Ip.ReasmOKs", 0))
        totals["fragmented"] += fragmented
        totals["fragments"] += counters.get("Ip.FragCreates", 0)
        totals["reassembled"] += counters.get("Ip.ReasmOKs", 0)
        totals["drops"] += sum(counters.get(k, 0) for k in DROP_KEYS)
        if fragmented:
            fragmenting_sent += sent
    if not delta:
        return dict.fromkeys((*totals, "fragmented_share"))
    out.update({k: float(v) for k, v in totals.items()})
    out["fragmented_share"] = (
        100.0 * totals["fragmented"] / fragmenting_sent if fragmenting_sent > 0 else None
    )
    return out


# -- the client's path ----------------------------------------------------------------


def on_path(status: Mapping[str, Any], path: str) -> bool:
    """
    Does the client's status file show it registered on C{path}?

    C{direct}: transport C{udp}; C{forward}: transport C{relay}, its route not
    keyed by the relay; C{terminate}: transport C{relay} and its first route
    keyed by the relay (C{relay-terminate}).
    """
    if status.get("state") != "registered":
        return False
    transport = status.get("path")
    tunnel = status.get("tunnel")
    routes = tunnel.get("routes") if isinstance(tunnel, dict) else None
    first = routes[0] if isinstance(routes, list) and routes else {}
    keyed = isinstance(first, dict) and first.get("path") == "relay-terminate"
    if path == "direct":
        return transport == "udp"
    if path == "forward":
        return transport == "relay" and not keyed
    if path == "terminate":
        return transport == "relay" and keyed
    raise ValueError(f"unknown path {path!r}")


def describe_path(status: Mapping[str, Any]) -> str:
    """The client's path in a few words, from its status (for error messages)."""
    tunnel = status.get("tunnel")
    routes = tunnel.get("routes") if isinstance(tunnel, dict) else None
    first = routes[0] if isinstance(routes, list) and routes else {}
    route = first.get("path") if isinstance(first, dict) else None
    return f"state {status.get('state')}, transport {status.get('path')}, route {route}"


# -- figures, comparisons, notes --------------------------------------------------------


def relay_values(relay_s: float | None, received: int, seconds: float) -> dict[str, float | None]:
    """The relay's own CPU of one test: cores and seconds per 10^9 bytes delivered."""
    gigabytes = received / 1e9
    return {
        "relay_cores": relay_s / seconds if relay_s is not None and seconds > 0 else None,
        "relay_s_per_gb": relay_s / gigabytes if relay_s is not None and gigabytes > 0 else None,
    }


def label(path: str, case: Case) -> str:
    """The table label of C{path}'s row for C{case}."""
    return f"{PATH_TITLES[path]}, {case.name}"


def compare(result: ScenarioResult) -> list[Row]:
    """Rows of each relayed path / direct, per case, where both were measured."""
    rows = []
    for path in ("forward", "terminate"):
        for case in CASES:
            a = result.row(path, case.name)
            b = result.row("direct", case.name)
            if a is None or b is None or a.error or b.error:
                continue
            rows.append(
                Row(
                    peer=f"{path}/direct",
                    case=case.name,
                    label=f"{PATH_TITLES[path]} / direct, {case.name}",
                    values={
                        "mbps_ratio": ratio(a.values.get("mbps"), b.values.get("mbps")),
                        "cpu_per_gb_ratio": ratio(
                            a.values.get("cpu_s_per_gb"), b.values.get("cpu_s_per_gb")
                        ),
                        "cpu_cores_ratio": ratio(
                            a.values.get("cpu_cores"), b.values.get("cpu_cores")
                        ),
                    },
                )
            )
    return rows


def _x(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}x"


def _n(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def ip_line(row: Row) -> str:
    """One row's fragmentation in words: who fragmented how much, who reassembled, drops."""
    v = row.values
    parts = []
    for role in NAMESPACES:
        fragmented = v.get(f"{role}_fragmented")
        if fragmented:
            parts.append(
                f"{role} fragmented {_n(fragmented)} of its {_n(v.get(f'{role}_sent'))} IP sends "
                f"into {_n(v.get(f'{role}_fragments'))} fragments"
            )
    for role in NAMESPACES:
        reassembled = v.get(f"{role}_reassembled")
        if reassembled:
            parts.append(f"{role} reassembled {_n(reassembled)}")
    if not parts:
        parts.append("no packet fragmented" if v.get("fragmented") is not None else "not read")
    return f"IP counters, {row.label}: " + ", ".join(parts) + f"; drops {_n(v.get('drops'))}"


def _process_key(name: str) -> str:
    return name.replace(" ", "_")


def process_lines(result: ScenarioResult) -> list[str]:
    """Per measured row, each of our processes' median cores and CPU seconds per GB."""
    lines = []
    for row in result.rows:
        if row.error is not None:
            continue
        parts = []
        for name in PROCESSES:
            cores = row.values.get(f"cores_{_process_key(name)}")
            per_gb = row.values.get(f"s_per_gb_{_process_key(name)}")
            if cores is None:
                continue
            parts.append(
                f"{name} {cores:.2f} cores"
                + (f" ({per_gb:.2f} s/GB)" if per_gb is not None else "")
            )
        if parts:
            lines.append(f"CPU by process, {row.label}: " + ", ".join(parts))
    return lines


def notes(result: ScenarioResult) -> list[str]:
    """
    The lines under the tables: no target, ratios in words, a saturated
    machine or a CPU-bound relay, fragmentation and drops per row, each
    process's CPU.
    """
    lines = [
        "no target: there is no independent peer for the relayed path (no independent "
        "Mobile IP foreign agent runs here); the relayed paths are compared with the direct "
        "one, within this run"
    ]
    for comp in result.comparisons:
        lines.append(
            f"{comp.label}: {_x(comp.values.get('mbps_ratio'))} the throughput at "
            f"{_x(comp.values.get('cpu_per_gb_ratio'))} the CPU per GB"
        )
    nproc = result.machine.get("nproc")
    busy_rows = []
    for row in result.rows:
        if row.error is not None:
            continue
        relay = row.values.get("relay_cores")
        busy = row.values.get("host_cores")
        if row.peer != "direct" and relay is not None and relay >= CPU_BOUND:
            lines.append(
                f"{row.label}: the relay used {relay:.2f} cores: CPU-bound "
                "(one single-threaded process)"
            )
        if isinstance(nproc, int) and nproc > 0 and busy is not None:
            busy_rows.append((row.label, 100 * busy / nproc))
    saturated = [share for _, share in busy_rows if share >= 100 * CPU_BOUND]
    if saturated:
        calm = [lbl for lbl, share in busy_rows if share < 100 * CPU_BOUND]
        if not calm:
            which = "every test"
        elif len(calm) < len(saturated):
            which = "every test but " + ", ".join(calm)
        else:
            which = ", ".join(lbl for lbl, share in busy_rows if share >= 100 * CPU_BOUND)
        lines.append(
            f"the machine's {nproc} cores were {min(saturated):.0f}-{max(saturated):.0f} % busy "
            f"in {which}: throughput is bound by the CPU our three processes, iperf3 and the "
            "kernel share, so CPU per GB is the fairer comparison"
        )
    lines += [ip_line(row) for row in result.rows if row.error is None]
    lines += process_lines(result)
    return lines


# -- the processes ------------------------------------------------------------------------


class RelaySetup(TunnelPeer):
    """
    One set of the demo's processes (home agent, relay, client) for one L{Setup}.

    L{start} brings up the home agent and the relay; L{enter} puts the
    client on a path (moving it, starting it the first time) and waits until
    it is there.
    """

    name = "smobility"
    title = "smobility"
    paths = ("cn",)

    def __init__(self, ctx: BenchContext, setup: Setup, work: Path) -> None:
        """A set for C{ctx}, its configurations and logs in C{work} (created)."""
        super().__init__(ctx)
        self.setup = setup
        self.work = work
        self.demo: Demo | None = None
        self.client_cfg: Path | None = None
        self.names: dict[int, str] = {}
        self.relay_pid: int | None = None

    def _log(self, name: str) -> str:
        return str((self.work / name).relative_to(self.ctx.work))

    def _add(self, proc: subprocess.Popen[bytes], name: str) -> None:
        self.procs.append(proc)
        self.names[proc.pid] = name

    def start(self) -> None:
        """Write the demo's configurations; start the home agent and the relay."""
        ctx = self.ctx
        self.work.mkdir(mode=0o700)
        self.demo = demo = Demo(ctx.lab, self.work)
        home_cfg, self.client_cfg = _demo_step(
            lambda: demo.write_configs(relay=self.setup.relay),
            f"configuring the relay ({self.setup.mode} mode)",
        )
        self._add(demo.twistd("ha", "smobility-home", home_cfg, "home.log"), "home agent")
        relay = _demo_step(demo.start_relay, "starting the relay")
        self._add(relay, "relay")
        self.relay_pid = relay.pid
        ctx.wait_for(
            lambda: ctx.listening("ha", 434, udp=True),
            "the home agent",
            alive=self.procs,
            log=self._log("home.log"),
        )
        ctx.wait_for(
            lambda: ctx.listening("rl", 434, udp=True),
            f"the relay ({self.setup.mode} mode)",
            alive=self.procs,
            log=self._log("relay.log"),
        )
        self.client_address = Lab.HOA

    def enter(self, path: str) -> None:
        """
        Put the client on C{path}: move it to its network (start it there the
        first time), wait until its status shows the path, ping it from C{cn}.

        @raise BenchError: it did not get there.
        """
        ctx, demo = self.ctx, self.demo
        if demo is None or self.client_cfg is None:
            raise BenchError("the relay set-up is not started")
        net = NETWORK[path]
        if ctx.lab.attached() != net:
            ctx.say(f"  mobile node joins {net.upper()} ...")
            ctx.lab.move(net)
        ctx.lab.wait_address(net)
        if "client" not in self.names.values():
            client_cfg = self.client_cfg
            self._add(demo.twistd("mn", "smobility-client", client_cfg, "client.log"), "client")
        ctx.wait_for(
            lambda: on_path(demo.status(), path),
            f"the client on the {PATH_TITLES[path]} path "
            f"(last status: {describe_path(demo.status())})",
            timeout=READY_TIMEOUT,
            alive=self.procs,
            log=self._log("client.log"),
        )
        if not reachable(ctx, "cn", Lab.HOA):
            raise BenchError(
                f"{Lab.HOA} does not answer pings from cn on the {PATH_TITLES[path]} path"
            )

    def current(self) -> dict[str, Any]:
        """The client's status now."""
        return self.demo.status() if self.demo is not None else {}

    def stop(self) -> None:
        """
        Stop the client first (it deregisters while the relay and home agent
        still run), then the rest of the demo's processes, all by PID.
        """
        self.ctx.stop([p for p in self.procs if self.names.get(p.pid) == "client"])
        if self.demo is not None:
            self.demo.stop_all()


# -- the scenario -------------------------------------------------------------------------


class RelayScenario:
    """The scenario object the runner drives (see L{smobility.bench.runner.Scenario})."""

    name = NAME
    title = TITLE
    description = DESCRIPTION
    peers = PATHS

    def run(self, ctx: BenchContext) -> ScenarioResult:
        """Every wanted path in turns, every round; never raises for a path that fails."""
        result = ScenarioResult(
            scenario=NAME,
            title=TITLE,
            label_header="path, case",
            started=utc_now(),
            columns=list(COLUMNS),
            comparison_columns=list(COMPARISON_COLUMNS),
            machine=machine_info(),
            settings=dict(
                ctx.describe_env(),
                cases=[c.name for c in CASES],
                networks=dict(NETWORK),
                relay=Lab.RELAY_PUBLIC,
            ),
        )
        wanted = [p for p in PATHS if ctx.wants(p)]
        rows: dict[tuple[str, str], Row] = {}
        for path in wanted:
            for case in CASES:
                rows[(path, case.name)] = Row(
                    peer=path,
                    case=case.name,
                    label=label(path, case),
                    info={"path": case.path, "reverse": case.reverse, "network": NETWORK[path]},
                )
        result.rows = list(rows.values())
        for path in wanted:
            result.peers[path] = self._describe(path)
        try:
            if os.geteuid() != 0:
                raise BenchError("the relay scenario needs root (network namespaces)")
            iperf3 = ctx.tool("iperf3")
            result.settings["iperf3"] = first_line(ctx, "ha", iperf3, "--version")
            for round_no in range(ctx.rounds):
                setups = list(SETUPS) if round_no % 2 == 0 else list(reversed(SETUPS))
                for setup in setups:
                    paths = [p for p in setup.paths if p in wanted]
                    if round_no % 2 == 1:
                        paths.reverse()
                    if paths:
                        self._run_setup(ctx, iperf3, setup, paths, rows, round_no)
        except (MissingTool, BenchError, LabError, OSError) as e:
            result.errors.append(str(e))
        finally:
            ctx.stop_all()
        for row in result.rows:
            if row.error is None and not any(s.get("error") is None for s in row.samples):
                errors = sorted({str(s.get("error")) for s in row.samples})
                row.error = "; ".join(errors) or (
                    result.errors[0] if result.errors else "not measured"
                )
            good = [s for s in row.samples if s.get("error") is None]
            row.values = summarise(good, SAMPLE_KEYS)
            row.values.update(per_process_cores(good))
        result.comparisons = compare(result)
        result.verdict = notes(result)
        result.target_met = None
        result.finished = utc_now()
        return result

    @staticmethod
    def _describe(path: str) -> dict[str, Any]:
        data = {
            "direct": "ESP (RFC 4303) in UDP 4500 (RFC 3948), AES-128-GCM, manual keys as in "
            "the demo, client -> home agent",
            "forward": "the client's own ESP-in-UDP (AES-128-GCM, manual keys, as direct) to "
            "the relay's port 4500, relay -> home agent IP-in-IP (RFC 2003, raw protocol-4 "
            "sockets in userspace); the relay holds no data keys",
            "terminate": "client -> relay ESP-in-UDP under a CHILD_SA of IKEv2 with the relay "
            "(PSK); the relay re-seals under its own CHILD_SA with home (IKEv2 on the "
            "client's behalf), relay -> home agent IP-in-IP",
        }[path]
        return {
            "title": f"smobility, {PATH_TITLES[path]}",
            "version": git_version(),
            "data": data,
            "path": f"client in {NETWORK[path].upper()}"
            + ("" if path == "direct" else f", relay {Lab.RELAY_PUBLIC} (namespace rl)"),
            "processes": "twistd smobility-home (ha), smobility-relay (rl), smobility-client (mn)",
        }

    def _run_setup(
        self,
        ctx: BenchContext,
        iperf3: str,
        setup: Setup,
        paths: Sequence[str],
        rows: dict[tuple[str, str], Row],
        round_no: int,
    ) -> None:
        """Bring up one set of processes, measure C{paths} with it, stop it."""
        ctx.say(f"starting home agent, relay ({setup.mode} mode) ...")
        peer = RelaySetup(ctx, setup, ctx.work / f"relay-{setup.mode}-r{round_no + 1}")

        def failed(which: Sequence[str], error: str) -> None:
            ctx.say(f"    error: {error.splitlines()[0] if error else error}")
            for path in which:
                for case in CASES:
                    rows[(path, case.name)].samples.append({"error": error, "round": round_no + 1})

        try:
            try:
                peer.start()
            except (BenchError, LabError, OSError) as e:
                failed(paths, str(e))
                return
            for path in paths:
                try:
                    peer.enter(path)
                except (BenchError, LabError) as e:
                    failed([path], str(e))
                    continue
                self._measure_path(ctx, iperf3, peer, path, rows, round_no)
        finally:
            peer.stop()

    def _measure_path(
        self,
        ctx: BenchContext,
        iperf3: str,
        peer: RelaySetup,
        path: str,
        rows: dict[tuple[str, str], Row],
        round_no: int,
    ) -> None:
        """An iperf3 server on the home address, then every case through C{path}."""
        log = f"iperf3-server-relay-{path}-r{round_no + 1}.log"
        server = ctx.start("mn", server_argv(iperf3, Lab.HOA, IPERF_PORT), log)
        try:
            try:
                ctx.wait_for(
                    functools.partial(ctx.listening, "mn", IPERF_PORT),
                    f"the iperf3 server for the {PATH_TITLES[path]} path",
                    timeout=10,
                    alive=[server],
                    log=log,
                )
            except BenchError as e:
                for case in CASES:
                    rows[(path, case.name)].samples.append({"error": str(e), "round": round_no + 1})
                return
            for case in CASES:
                row = rows[(path, case.name)]
                ctx.say(f"  {row.label} ({ctx.duration:g} s) ...")
                sample = self._one(ctx, iperf3, peer, path, case)
                sample["round"] = round_no + 1
                row.samples.append(sample)
                if sample.get("error") is not None:
                    ctx.say(f"    error: {sample['error']}")
                else:
                    ctx.say(
                        f"    {sample['mbps']:,.0f} Mbit/s, relay {sample['relay_cores']:.2f} "
                        f"cores, {sample['fragmented']:,.0f} packets fragmented"
                    )
                time.sleep(PAUSE)
        finally:
            ctx.stop([server])

    @staticmethod
    def _one(
        ctx: BenchContext, iperf3: str, peer: RelaySetup, path: str, case: Case
    ) -> dict[str, Any]:
        """One iperf3 test from C{cn}; the sample (with C{"error"} set if it failed)."""
        argv = client_argv(iperf3, Lab.HOA, IPERF_PORT, ctx.duration, case.reverse)
        meters = {pid: CpuMeter.of([pid]) for pid in peer.pids()}
        host = CpuMeter.of([])
        before = {role: read_counters(ctx, role) for role in NAMESPACES}
        for meter in (*meters.values(), host):
            meter.start()
        started = time.monotonic()
        try:
            out = ctx.lab.exec(case.path, *argv, check=False, timeout=ctx.duration + 30)
        except subprocess.TimeoutExpired:
            return {"error": f"iperf3 did not finish within {ctx.duration + 30:g} s"}
        wall = time.monotonic() - started
        by_pid = {pid: meter.stop()[0] for pid, meter in meters.items()}
        host_s = host.stop()[1]
        after = {role: read_counters(ctx, role) for role in NAMESPACES}
        dead = peer.dead()
        if dead:
            return {"error": "; ".join(dead)}
        status = peer.current()
        if not on_path(status, path):
            return {
                "error": f"the client left the {PATH_TITLES[path]} path during the test "
                f"({describe_path(status)})"
            }
        try:
            got = parse_iperf3(out.stdout)
        except IperfError as e:
            return {"error": str(e) + (f" ({out.stderr.strip()})" if out.stderr.strip() else "")}
        relay_s = by_pid.get(peer.relay_pid) if peer.relay_pid is not None else None
        delta = counter_delta(before, after)
        sample: dict[str, Any] = dict(
            sample_values(got.mbps, got.bytes, wall, sum(by_pid.values()), host_s)
        )
        sample.update(relay_values(relay_s, got.bytes, wall))
        sample.update(fragment_values(delta))
        sample.update(
            error=None,
            retransmits=got.retransmits,
            bytes=got.bytes,
            seconds=got.seconds,
            wall_s=round(wall, 3),
            host_busy_s=host_s,
            cpu_by_process={
                peer.names.get(pid, str(pid)): round(s, 3) for pid, s in by_pid.items()
            },
            **{
                f"s_per_gb_{_process_key(peer.names.get(pid, str(pid)))}": (
                    s / (got.bytes / 1e9) if got.bytes > 0 else None
                )
                for pid, s in by_pid.items()
            },
            ip_counters=delta,
            client_path=describe_path(status),
            sender_mbps=got.sender_bits_per_second / 1e6,
            iperf_cpu_local=got.cpu_local,
            iperf_cpu_remote=got.cpu_remote,
        )
        return sample


SCENARIO = RelayScenario()
"""The instance the runner registers."""
