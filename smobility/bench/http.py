# -*- test-case-name: tests.test_bench -*-
"""
The HTTP path scenario: iperf3 TCP through Squid, smobility's HTTPS tunnel against OpenVPN/TCP.

One lab, the mobile node in visited network V3, whose firewall lets out only
its proxy host (Squid with Basic auth, L{smobility.lab.proxies.Squid}).  Both
tunnels go through that same Squid with the same credentials, side by side:

  - smobility as the roaming demo sets it up (L{smobility.demo.roam.Demo}
    with C{http=True}): the client's UDP transport fails in V3 and it falls
    back to HTTPS, C{client -> Squid (CONNECT) -> the home perimeter's SOCKS5
    ingress -> multiplexer (TLS, HTTP/1.1) -> UDP -> home agent}; the run
    checks that the client's status names an C{http} path;
  - OpenVPN 2.6 over TCP (L{smobility.bench.openvpn.OpenVpnTcpTunnel}):
    server in C{ha} on C{172.31.0.2}, client in C{mn} with
    C{--http-proxy 192.168.103.3 3128 AUTHFILE basic}.

Cases as in the tunnel scenario (L{smobility.bench.tunnel.CASES}); per case
the tunnels take turns.  CPU time is measured per process: the tunnel's own
(three C{twistd}s, or two C{openvpn}s) and Squid's, which both paths share.

Target (the issue): smobility's throughput at least OpenVPN's (1x), in every
case both were measured in, both directions.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smobility.bench.context import BenchContext, BenchError, MissingTool
from smobility.bench.cpu import CpuMeter
from smobility.bench.iperf import IperfError, client_argv, parse_iperf3
from smobility.bench.openvpn import HttpProxy, OpenVpnTcpTunnel
from smobility.bench.peers import TunnelPeer, first_line
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
from smobility.bench.tunnel import CASES, Case, TunnelScenario
from smobility.demo.roam import Demo
from smobility.lab import Lab, LabError
from smobility.lab.proxies import ProxyError

NAME = "http"
TITLE = "HTTP path throughput: smobility's HTTPS tunnel and OpenVPN over TCP, both through Squid"
PEER_NAMES: tuple[str, ...] = ("smobility", "openvpn")
TARGET_RATIO = 1.0
"""smobility's throughput must be at least this multiple of OpenVPN's."""
TARGET_CASES = tuple(c.name for c in CASES)
"""The cases the target is judged on: all of them."""
PAUSE = 0.5
"""Seconds between two tests."""
PROXY_USER = "guest"
"""The Squid user L{smobility.demo.roam.Demo} creates."""
PROXY_PORT = 3128
"""Squid's port in V3 (L{smobility.demo.roam.Demo})."""
READY_TIMEOUT = 60.0
"""Seconds the smobility client gets to register over the HTTP path (UDP fails first)."""

SMOBILITY_PROCESSES = ("home agent", "multiplexer", "client")
OPENVPN_PROCESSES = ("server", "client")

COLUMNS = [
    Column("mbps", "Mbit/s", "{:,.0f}"),
    Column("retransmits", "retransmits", "{:,.0f}"),
    Column("cpu_s_per_gb", "CPU s/GB", "{:.2f}"),
    Column("cpu_cores", "tunnel CPU (cores)", "{:.2f}"),
    Column("squid_cores", "Squid CPU (cores)", "{:.2f}"),
    Column("host_cores", "machine busy (cores)", "{:.2f}"),
]
COMPARISON_COLUMNS = [
    Column("mbps_ratio", "throughput x", "{:.2f}"),
    Column("cpu_per_gb_ratio", "CPU per GB x", "{:.2f}"),
    Column("cpu_cores_ratio", "tunnel CPU x", "{:.2f}"),
]
SAMPLE_KEYS = (
    "mbps",
    "retransmits",
    "cpu_s_per_gb",
    "cpu_cores",
    "squid_cores",
    "host_cores",
    "tunnel_s_per_gb",
    "squid_s_per_gb",
)

DESCRIPTION = """\
`python -m smobility.bench --scenario http` (part of `make bench`) puts the
mobile node in visited network V3, whose firewall lets out only its proxy
host: Squid 5.7 with Basic auth on 192.168.103.3:3128 (`proxy` namespace).
Two tunnels go through that same Squid, with the same credentials, side by
side in one lab:

- smobility, set up as the roaming demo does it (`Demo.write_configs(http=True)`):
  home agent in `ha`, multiplexer in `mux` (TLS on 10.77.0.2:8443, SOCKS5
  ingress 10.77.0.2:1080, reached as 172.31.0.2:1080 through the home
  perimeter's DNAT), client in `mn` with transports UDP, then HTTP. UDP
  fails in V3 and the client falls back to `client -> Squid (CONNECT) ->
  SOCKS5 ingress -> multiplexer (HTTP/1.1 over TLS) -> UDP -> home agent`;
  the run checks that the client's status names an `http` path. The
  tunnel's data are the client's ESP-in-UDP datagrams (AES-128-GCM, manual
  keys as in the demo), framed in HTTP bodies.
- OpenVPN 2.6 over TCP: server in `ha` listening on 172.31.0.2:1194
  (`--proto tcp-server`; the perimeter filters only forwarded traffic to the
  home LAN, so a port on `ha` itself is reachable), client in `mn` with
  `--proto tcp-client --http-proxy 192.168.103.3 3128 AUTHFILE basic`;
  TLS with throwaway certificates, `--data-ciphers AES-128-GCM`,
  `--disable-dco`; subnet 10.99.0.0/24.

Cases as in the tunnel scenario: `cn -> client`, `client -> cn`, and the
same from `ha` itself (iperf3 `-t` seconds, `-J`, `-R` for the client
sending), to the client's home address 10.77.0.10 through smobility and to
its OpenVPN address; the tunnels take turns per case.

Columns: *Mbit/s* what the receiver got; *retransmits* the sender's TCP
retransmits (of the inner TCP: both tunnels run over TCP, so they come from
datagrams a tunnel endpoint dropped, a full queue or socket buffer, not from
the links); *CPU s/GB* the CPU time of the tunnel's processes and
Squid together, per 10^9 bytes delivered; *tunnel CPU* the tunnel's own
processes (smobility: the three `twistd`s, home agent, multiplexer and
client; OpenVPN: server and client) in cores; *Squid CPU* Squid's (both
paths pay it); *machine busy* all cores. The lines under the verdict give
each process's share (median cores), and the JSON keeps every process's CPU
time per test (`cpu_by_process`). The target is smobility's throughput at
least OpenVPN's (1x) in every case, both directions.
"""


def sample_values(
    mbps: float,
    received: int,
    seconds: float,
    tunnel_s: float,
    squid_s: float | None,
    host_s: float | None,
) -> dict[str, float | None]:
    """
    The derived figures of one test.

    @param received: bytes delivered.
    @param seconds: the test's wall-clock time.
    @param tunnel_s: CPU seconds of the tunnel's own processes.
    @param squid_s: Squid's CPU seconds (C{None}: not measured).
    @param host_s: the machine's busy CPU seconds.
    """
    gigabytes = received / 1e9
    total = tunnel_s + (squid_s or 0.0)

    def per_gb(value: float | None) -> float | None:
        return value / gigabytes if value is not None and gigabytes > 0 else None

    def cores(value: float | None) -> float | None:
        return value / seconds if value is not None and seconds > 0 else None

    return {
        "mbps": mbps,
        "cpu_s": total,
        "cpu_s_per_gb": per_gb(total),
        "tunnel_s_per_gb": per_gb(tunnel_s),
        "squid_s_per_gb": per_gb(squid_s),
        "cpu_cores": cores(tunnel_s),
        "squid_cores": cores(squid_s),
        "host_cores": cores(host_s),
    }


def compare(result: ScenarioResult) -> list[Row]:
    """Rows of smobility / OpenVPN per case, where both were measured."""
    rows = []
    for case in CASES:
        a = result.row("smobility", case.name)
        b = result.row("openvpn", case.name)
        if a is None or b is None or a.error or b.error:
            continue
        rows.append(
            Row(
                peer="smobility/openvpn",
                case=case.name,
                label=f"smobility HTTPS / OpenVPN TCP, {case.name}",
                values={
                    "mbps_ratio": ratio(a.values.get("mbps"), b.values.get("mbps")),
                    "cpu_per_gb_ratio": ratio(
                        a.values.get("cpu_s_per_gb"), b.values.get("cpu_s_per_gb")
                    ),
                    "cpu_cores_ratio": ratio(a.values.get("cpu_cores"), b.values.get("cpu_cores")),
                },
            )
        )
    return rows


def _x(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}x"


def judge(result: ScenarioResult) -> None:
    """The verdict: smobility's throughput at least L{TARGET_RATIO} times OpenVPN's, every case."""
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
        ok = speed is not None and speed >= TARGET_RATIO
        checks.append(ok)
        result.verdict.append(
            f"{case}: {_x(speed)} OpenVPN's throughput "
            f"(CPU per GB {_x(row.values.get('cpu_per_gb_ratio'))}): "
            + ("meets" if ok else "misses")
            + f" the target (>= {TARGET_RATIO:g}x)"
        )
    result.target_met = all(checks)
    result.verdict.append(
        "target "
        + ("MET" if result.target_met else "NOT MET")
        + f": smobility's HTTP path >= {TARGET_RATIO:g}x the throughput of OpenVPN over TCP "
        "through the same Squid, every case, both directions (ratios within this run only)"
    )


def cpu_lines(result: ScenarioResult) -> list[str]:
    """
    Where the CPU goes: per measured row, each process's median cores (C{cores_*} values).

    Squid comes last; rows without per-process figures are left out.
    """
    lines = []
    for row in result.rows:
        if row.error is not None:
            continue
        parts = [
            (key[len("cores_") :].replace("_", " "), value)
            for key, value in row.values.items()
            if key.startswith("cores_") and value is not None
        ]
        parts.sort(key=lambda kv: kv[0] == "squid")
        if parts:
            lines.append(
                f"CPU by process, {row.label}: "
                + ", ".join(f"{name} {value:.2f}" for name, value in parts)
                + " cores"
            )
    return lines


def _demo_step(step: Callable[[], Any], what: str) -> Any:
    """Run a L{Demo} step; its way of giving up (C{SystemExit}, a sentence) becomes BenchError."""
    try:
        return step()
    except SystemExit as e:
        if isinstance(e.code, str):
            raise BenchError(f"{what}: {e.code}") from None
        raise  # a real exit (SIGTERM through the runner): unwind
    except (ProxyError, OSError, subprocess.CalledProcessError) as e:
        raise BenchError(f"{what}: {e}") from None


class SmobilityHttp(TunnelPeer):
    """
    smobility over its HTTP path: home agent, multiplexer and client as C{twistd}s.

    Squid is not one of its processes (the scenario starts it, both tunnels use it).
    """

    name = "smobility"
    title = "smobility HTTPS"

    def __init__(self, ctx: BenchContext, demo: Demo, home_cfg: Path, client_cfg: Path) -> None:
        """A peer for C{ctx} using C{demo}'s configurations (written with C{http=True})."""
        super().__init__(ctx)
        self.demo = demo
        self.home_cfg = home_cfg
        self.client_cfg = client_cfg
        self.names: dict[int, str] = {}
        self.path: str | None = None

    def _log(self, name: str) -> str:
        """C{name} in the demo's directory, relative to the run's work directory."""
        return str((self.demo.work / name).relative_to(self.ctx.work))

    def start(self) -> None:
        """Home agent, multiplexer, then the client in V3; wait until it is registered over HTTP."""
        ctx, demo = self.ctx, self.demo
        home = demo.twistd("ha", "smobility-home", self.home_cfg, "home.log")
        self._add(home, "home agent")
        demo.mux = demo.twistd("mux", "smobility-mux", demo.work / "mux.toml", "mux.log")
        self._add(demo.mux, "multiplexer")
        ctx.wait_for(
            lambda: ctx.listening("mux", Lab.MUX_PORT) and ctx.listening("mux", Lab.SOCKS_PORT),
            "the multiplexer",
            alive=[home, demo.mux],
            log=self._log("mux.log"),
        )
        client = demo.twistd("mn", "smobility-client", self.client_cfg, "client.log")
        self._add(client, "client")

        def ready() -> bool:
            st = demo.status()
            return st.get("state") == "registered" and str(st.get("path") or "").startswith("http")

        ctx.wait_for(
            ready,
            "the smobility client registering over its HTTP path",
            timeout=READY_TIMEOUT,
            alive=self.procs,
            log=self._log("client.log"),
        )
        self.path = str(demo.status().get("path"))
        self.client_address = Lab.HOA
        self.ha_source = Lab.HA_LAN

    def _add(self, proc: subprocess.Popen[bytes], name: str) -> None:
        self.procs.append(proc)
        self.names[proc.pid] = name

    def current_path(self) -> str | None:
        """The client's active transport now (from its status file)."""
        path = self.demo.status().get("path")
        return str(path) if path is not None else None

    def describe(self) -> dict[str, Any]:
        """Version (the checkout's commit) and configuration."""
        return {
            "version": git_version(),
            "data": "ESP-in-UDP datagrams (AES-128-GCM, manual keys as in the demo) framed "
            "in HTTP/1.1 over TLS (streaming GET down, chunked POSTs up): client -> Squid "
            "CONNECT (Basic auth) -> SOCKS5 ingress -> multiplexer -> UDP -> home agent",
            "path": f"client transport {self.path or '?'}",
            "processes": "twistd smobility-home (ha), smobility-mux (mux), smobility-client (mn)",
            "client_address": self.client_address,
        }


class OpenVpnViaSquid(OpenVpnTcpTunnel):
    """OpenVPN over TCP through V3's Squid (the table names its processes)."""

    title = "OpenVPN 2.6 TCP"

    @property
    def names(self) -> dict[int, str]:
        """The processes by PID: server, then client."""
        return {p.pid: n for p, n in zip(self.procs, OPENVPN_PROCESSES, strict=False)}


def proxy_from_demo(demo: Demo) -> HttpProxy:
    """The Squid and credentials L{Demo.write_configs} set up (C{http=True})."""
    password = (demo.work / "keys" / "proxy-password").read_text().strip()
    return HttpProxy(Lab.PROXY, PROXY_PORT, PROXY_USER, password)


class HttpScenario:
    """The scenario object the runner drives (see L{smobility.bench.runner.Scenario})."""

    name = NAME
    title = TITLE
    description = DESCRIPTION
    peers = PEER_NAMES

    def run(self, ctx: BenchContext) -> ScenarioResult:
        """Squid, both tunnels through it, every case, all stopped; never raises for a peer."""
        result = ScenarioResult(
            scenario=NAME,
            title=TITLE,
            label_header="tunnel, case",
            started=utc_now(),
            columns=list(COLUMNS),
            comparison_columns=list(COMPARISON_COLUMNS),
            machine=machine_info(),
            settings=dict(
                ctx.describe_env(),
                cases=[c.name for c in CASES],
                target_ratio=TARGET_RATIO,
                network="v3",
                proxy=f"{Lab.PROXY}:{PROXY_PORT}",
            ),
        )
        wanted = [n for n in PEER_NAMES if ctx.wants(n)]
        titles = {"smobility": SmobilityHttp.title, "openvpn": OpenVpnViaSquid.title}
        rows: dict[tuple[str, str], Row] = {}
        for name in wanted:
            for case in CASES:
                rows[(name, case.name)] = Row(
                    peer=name,
                    case=case.name,
                    label=f"{titles[name]}, {case.name}",
                    info={"path": case.path, "reverse": case.reverse},
                )
        result.rows = list(rows.values())
        demo: Demo | None = None
        peers: list[TunnelPeer] = []
        try:
            iperf3 = ctx.tool("iperf3")
            ctx.tool("squid")
            result.settings["iperf3"] = first_line(ctx, "ha", iperf3, "--version")
            ctx.say("mobile node joins V3 (only its Squid gets out) ...")
            ctx.lab.move("v3")
            ctx.lab.wait_address("v3")
            work = ctx.work / "http-smobility"
            work.mkdir(mode=0o700)
            demo = Demo(ctx.lab, work)
            home_cfg, client_cfg = _demo_step(
                lambda: demo.write_configs(http=True), "setting up the HTTP path"
            )
            ctx.say("starting Squid (V3's proxy host) ...")
            _demo_step(demo.squid.start, "Squid")
            squid_pid = demo.squid.proc.pid
            result.peers["squid"] = {
                "title": "Squid (shared by both tunnels)",
                "version": first_line(ctx, "proxy", ctx.tool("squid"), "-v"),
                "config": f"{Lab.PROXY}:{PROXY_PORT}, Basic auth (basic_ncsa_auth), "
                "CONNECT to ports 1025-65535, no cache",
            }
            candidates: list[TunnelPeer] = []
            if "smobility" in wanted:
                candidates.append(SmobilityHttp(ctx, demo, home_cfg, client_cfg))
            if "openvpn" in wanted:
                candidates.append(OpenVpnViaSquid(ctx, proxy_from_demo(demo)))
            for peer in candidates:
                error = TunnelScenario._start(ctx, peer)
                result.peers[peer.name] = TunnelScenario._describe(peer)
                if error is not None:
                    TunnelScenario._fail(result, peer.name, error)
                    continue
                peers.append(peer)
            servers = TunnelScenario._servers(ctx, iperf3, peers, result)
            self._measure(
                ctx, iperf3, [p for p in peers if p.name in servers], rows, servers, squid_pid
            )
        except (MissingTool, BenchError, LabError, ProxyError, OSError) as e:
            result.errors.append(str(e))
        finally:
            for peer in reversed(peers):
                peer.stop()
            if demo is not None:
                demo.stop_all()  # Squid, and anything of the demo's still running
            ctx.stop_all()
        for row in result.rows:
            if row.error is None and not any(s.get("error") is None for s in row.samples):
                errors = sorted({str(s.get("error")) for s in row.samples}) or ["not measured"]
                row.error = "; ".join(errors)
            good = [s for s in row.samples if s.get("error") is None]
            row.values = summarise(good, SAMPLE_KEYS)
            row.values.update(per_process_cores(good))
        result.comparisons = compare(result)
        judge(result)
        result.verdict += cpu_lines(result)
        result.finished = utc_now()
        return result

    def _measure(
        self,
        ctx: BenchContext,
        iperf3: str,
        peers: Sequence[TunnelPeer],
        rows: dict[tuple[str, str], Row],
        ports: Mapping[str, int],
        squid_pid: int,
    ) -> None:
        """Every case, the peers taking turns; C{ctx.rounds} times, rotating the order."""
        for round_no in range(ctx.rounds):
            shift = round_no % max(1, len(peers))
            order = list(peers[shift:]) + list(peers[:shift])
            for case in CASES:
                for peer in order:
                    row = rows[(peer.name, case.name)]
                    ctx.say(f"  {row.label} ({ctx.duration:g} s) ...")
                    sample = self._one(ctx, iperf3, peer, case, ports[peer.name], squid_pid)
                    sample["round"] = round_no + 1
                    row.samples.append(sample)
                    if sample.get("error") is not None:
                        ctx.say(f"    error: {sample['error']}")
                    else:
                        ctx.say(f"    {sample['mbps']:,.0f} Mbit/s")
                    time.sleep(PAUSE)

    @staticmethod
    def _one(
        ctx: BenchContext,
        iperf3: str,
        peer: TunnelPeer,
        case: Case,
        port: int,
        squid_pid: int,
    ) -> dict[str, Any]:
        """One iperf3 test through C{peer}; the sample (with C{"error"} set if it failed)."""
        bind = peer.ha_source if case.path == "ha" else None
        argv = client_argv(iperf3, peer.client_address, port, ctx.duration, case.reverse, bind)
        names: dict[int, str] = dict(getattr(peer, "names", {}))
        meters = {pid: CpuMeter.of([pid]) for pid in peer.pids()}
        squid = CpuMeter.of([squid_pid])
        host = CpuMeter.of([])
        for meter in (*meters.values(), squid, host):
            meter.start()
        started = time.monotonic()
        try:
            out = ctx.lab.exec(case.path, *argv, check=False, timeout=ctx.duration + 30)
        except subprocess.TimeoutExpired:
            return {"error": f"iperf3 did not finish within {ctx.duration + 30:g} s"}
        wall = time.monotonic() - started
        by_pid = {pid: meter.stop()[0] for pid, meter in meters.items()}
        squid_s = squid.stop()[0]
        host_s = host.stop()[1]
        dead = peer.dead()
        if dead:
            return {"error": "; ".join(dead)}
        try:
            got = parse_iperf3(out.stdout)
        except IperfError as e:
            return {"error": str(e) + (f" ({out.stderr.strip()})" if out.stderr.strip() else "")}
        sample: dict[str, Any] = dict(
            sample_values(got.mbps, got.bytes, wall, sum(by_pid.values()), squid_s, host_s)
        )
        cpu_by_process = {names.get(pid, str(pid)): round(s, 3) for pid, s in by_pid.items()}
        cpu_by_process["squid"] = round(squid_s, 3)
        sample.update(
            error=None,
            retransmits=got.retransmits,
            bytes=got.bytes,
            seconds=got.seconds,
            wall_s=round(wall, 3),
            host_busy_s=host_s,
            cpu_by_process=cpu_by_process,
            sender_mbps=got.sender_bits_per_second / 1e6,
            iperf_cpu_local=got.cpu_local,
            iperf_cpu_remote=got.cpu_remote,
        )
        if isinstance(peer, SmobilityHttp):
            sample["client_path"] = peer.current_path()
        return sample


def per_process_cores(samples: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """
    Per process, the median of its CPU seconds per wall second (C{cores_<name>} keys).

    The names come from each sample's C{cpu_by_process} (C{"home agent"} becomes
    C{cores_home_agent}).
    """
    names: list[str] = []
    for s in samples:
        for name in s.get("cpu_by_process", {}):
            if name not in names:
                names.append(name)
    out: dict[str, float | None] = {}
    for name in names:
        per = [
            s["cpu_by_process"][name] / s["wall_s"]
            for s in samples
            if name in s.get("cpu_by_process", {}) and s.get("wall_s")
        ]
        key = "cores_" + name.replace(" ", "_")
        out[key] = summarise([{key: v} for v in per], [key])[key]
    return out


SCENARIO = HttpScenario()
"""The instance the runner registers."""
