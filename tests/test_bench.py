# -*- test-case-name: tests.test_bench -*-
"""
Tests for the benchmark's pure parts: the iperf3 report parser, the CPU
readings' parsers, the result format, the table writers, the target verdict
and the command line.  No benchmark runs here (C{make bench} does that; tests
never assert on timings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smobility.bench import cpu, http, ike, openvpn, relay, report, runner, tunnel
from smobility.bench.context import BenchContext, BenchError
from smobility.bench.iperf import IperfError, client_argv, parse_iperf3
from smobility.bench.results import Column, Row, ScenarioResult, median, ratio, stamp

# Trimmed from a real `iperf3 -c ... -J -R` report (iperf 3.12).
REPORT: dict[str, Any] = {
    "start": {
        "version": "iperf 3.12",
        "test_start": {"protocol": "TCP", "num_streams": 1, "duration": 4, "reverse": 1},
    },
    "intervals": [],
    "end": {
        "streams": [],
        "sum_sent": {
            "start": 0,
            "end": 4.0,
            "seconds": 4.0,
            "bytes": 250_000_000,
            "bits_per_second": 500_000_000.0,
            "retransmits": 1234,
            "sender": False,
        },
        "sum_received": {
            "start": 0,
            "end": 4.0,
            "seconds": 4.0,
            "bytes": 245_000_000,
            "bits_per_second": 490_000_000.0,
            "sender": False,
        },
        "cpu_utilization_percent": {"host_total": 3.5, "remote_total": 40.25},
    },
}

# What iperf3 3.12 prints when it cannot connect (tabs and all).
ERROR_REPORT = """{
\t"start":\t{
\t\t"connected":\t[],
\t\t"version":\t"iperf 3.12"
\t},
\t"intervals":\t[],
\t"end":\t{
\t},
\t"error":\t"unable to connect to server: Connection refused"
}
"""


class IperfParserTests(SynchronousTestCase):
    """L{parse_iperf3} and the command lines."""

    def test_report(self) -> None:
        """The receiver's rate and bytes, the sender's retransmits, CPU and direction."""
        got = parse_iperf3(json.dumps(REPORT))
        self.assertEqual(got.bits_per_second, 490e6)
        self.assertEqual(got.mbps, 490.0)
        self.assertEqual(got.bytes, 245_000_000)
        self.assertEqual(got.seconds, 4.0)
        self.assertEqual(got.retransmits, 1234)
        self.assertEqual(got.sender_bits_per_second, 500e6)
        self.assertEqual((got.cpu_local, got.cpu_remote), (3.5, 40.25))
        self.assertTrue(got.reverse)

    def test_noise_before_json(self) -> None:
        """A warning line before the report does not hide it."""
        got = parse_iperf3("iperf3: some warning\n" + json.dumps(REPORT))
        self.assertEqual(got.bytes, 245_000_000)

    def test_no_retransmits(self) -> None:
        """A sender that reports no retransmits gives C{None}, not 0."""
        data = json.loads(json.dumps(REPORT))
        del data["end"]["sum_sent"]["retransmits"]
        del data["end"]["cpu_utilization_percent"]
        got = parse_iperf3(json.dumps(data))
        self.assertIsNone(got.retransmits)
        self.assertIsNone(got.cpu_local)

    def test_error_report(self) -> None:
        """iperf3's own error becomes the message."""
        e = self.assertRaises(IperfError, parse_iperf3, ERROR_REPORT)
        self.assertIn("unable to connect to server: Connection refused", str(e))

    def test_bad_input(self) -> None:
        """No JSON, broken JSON, no sums, a non-numeric rate: one error type."""
        broken = json.loads(json.dumps(REPORT))
        broken["end"]["sum_received"]["bits_per_second"] = "fast"
        for text in (
            "",
            "iperf3: error - no route",
            "{not json",
            "[1]",
            json.dumps({"start": {}, "end": {}}),
            json.dumps(broken),
        ):
            self.assertRaises(IperfError, parse_iperf3, text)

    def test_client_argv(self) -> None:
        """C{-R} and C{-B} only when asked; JSON output always."""
        argv = client_argv("/usr/bin/iperf3", "10.77.0.10", 5202, 4.0)
        self.assertEqual(
            argv[:8], ["/usr/bin/iperf3", "-c", "10.77.0.10", "-p", "5202", "-t", "4", "-J"]
        )
        self.assertNotIn("-R", argv)
        self.assertNotIn("-B", argv)
        argv = client_argv("iperf3", "10.77.0.10", 5202, 2.5, reverse=True, bind="10.77.0.1")
        self.assertIn("2.5", argv)
        self.assertIn("-R", argv)
        self.assertEqual(argv[-2:], ["-B", "10.77.0.1"])


class CpuParserTests(SynchronousTestCase):
    """The /proc parsers."""

    def test_stat(self) -> None:
        """utime + stime, also when the command name holds spaces and parentheses."""
        fields = ["S"] + ["0"] * 10 + ["150", "50"] + ["0"] * 30
        line = "1234 (twistd (x) y) " + " ".join(fields)
        self.assertEqual(cpu.parse_stat_ticks(line), 200)
        self.assertRaises(ValueError, cpu.parse_stat_ticks, "garbage")

    def test_ppid(self) -> None:
        """The parent PID is field 4, counted after the command name."""
        self.assertEqual(cpu.parse_stat_ppid("77 (a) b) S 42 77 77 0"), 42)
        self.assertRaises(ValueError, cpu.parse_stat_ppid, "77 a S 42")

    def test_descendants(self) -> None:
        """A child of this process is found; the process itself is not."""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        found = cpu.descendants([os.getpid()])
        self.assertIn(child.pid, found)
        self.assertNotIn(os.getpid(), found)

    def test_host(self) -> None:
        """Busy is the total less idle and iowait."""
        text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n"
        busy, total = cpu.parse_host_busy(text)
        self.assertEqual(busy * cpu.CLOCK_TICKS, 150)
        self.assertEqual(total * cpu.CLOCK_TICKS, 1000)
        self.assertRaises(ValueError, cpu.parse_host_busy, "intr 1 2 3\n")

    def test_own_process(self) -> None:
        """This process has a CPU time; a meter over it measures something non-negative."""
        meter = cpu.CpuMeter.of([os.getpid()])
        meter.start()
        sum(range(10000))
        used, _ = meter.stop()
        self.assertGreaterEqual(used, 0.0)


def _result() -> ScenarioResult:
    """A small tunnel result: smobility twice as fast as OpenVPN at less CPU per GB."""
    result = ScenarioResult(
        scenario="tunnel",
        title="Tunnel throughput",
        label_header="tunnel, case",
        started="2025-01-31T12:00:00Z",
        finished="2025-01-31T12:03:00Z",
        columns=list(tunnel.COLUMNS),
        comparison_columns=list(tunnel.COMPARISON_COLUMNS),
        settings={"duration_s": 10.0, "rounds": 1},
        machine={"nproc": 2, "kernel": "6.1", "python": "3.11.2"},
    )
    for case in tunnel.CASES:
        for peer, mbps, cost in (("smobility", 1000.0, 8.0), ("openvpn", 500.0, 10.0)):
            values: dict[str, float | None] = {
                "mbps": mbps,
                "retransmits": 3.0,
                "cpu_s_per_gb": cost,
                "cpu_cores": 0.9,
                "host_cores": 1.8,
            }
            result.rows.append(Row(peer, case.name, f"{peer}, {case.name}", values))
    result.rows.append(
        Row(
            "wireguard",
            "cn -> client",
            "wireguard-go, cn -> client",
            error="wireguard-go is not installed\nmore",
        )
    )
    return result


class ResultTests(SynchronousTestCase):
    """The result format and the verdict."""

    def test_round_trip(self) -> None:
        """to_json and from_json give back the same result; errors make it not ok."""
        result = _result()
        data = json.loads(json.dumps(result.to_json()))
        self.assertEqual(data["format"], 1)
        self.assertFalse(data["ok"])
        self.assertEqual(ScenarioResult.from_json(data), result)
        self.assertRaises(ValueError, ScenarioResult.from_json, {"format": 99})
        self.assertRaises(ValueError, ScenarioResult.from_json, {"format": 1})

    def test_busy_warning(self) -> None:
        """Other work on a quarter of the cores or more earns a note in text and doc."""
        result = _result()
        self.assertIsNone(report.busy_warning(result))
        result.machine["background_cores"] = 0.3
        self.assertIsNone(report.busy_warning(result))
        result.machine["background_cores"] = 0.9
        warning = report.busy_warning(result)
        assert warning is not None
        self.assertIn("kept 0.90 of the machine's 2 cores busy", warning)
        self.assertIn(warning, report.render_text(result))
        self.assertIn(warning, report.render_section(result))

    def test_helpers(self) -> None:
        """median skips missing values; ratio refuses missing and zero; stamp is file-safe."""
        self.assertEqual(median([3.0, None, 1.0, 2.0]), 2.0)
        self.assertIsNone(median([None]))
        self.assertEqual(ratio(3.0, 2.0), 1.5)
        self.assertIsNone(ratio(3.0, 0.0))
        self.assertIsNone(ratio(None, 2.0))
        self.assertEqual(stamp("2025-01-31T12:00:00Z"), "20250131T120000Z")

    def test_sample_values(self) -> None:
        """CPU per GB and cores; no tunnel processes, no CPU figures."""
        v = tunnel.sample_values(800.0, 2_000_000_000, 10.0, 20.0, 15.0)
        self.assertEqual((v["cpu_s_per_gb"], v["cpu_cores"], v["host_cores"]), (10.0, 2.0, 1.5))
        v = tunnel.sample_values(800.0, 2_000_000_000, 10.0, None, None)
        self.assertIsNone(v["cpu_s_per_gb"])
        self.assertIsNone(v["host_cores"])

    def test_target_met(self) -> None:
        """Twice the throughput at 0.8 times the CPU per GB meets the target."""
        result = _result()
        result.comparisons = tunnel.compare(result, "smobility", "openvpn", "OpenVPN")
        self.assertEqual(len(result.comparisons), 4)
        first = result.comparisons[0]
        self.assertEqual(first.values["mbps_ratio"], 2.0)
        self.assertEqual(first.values["cpu_per_gb_ratio"], 0.8)
        tunnel.judge(result)
        self.assertIs(result.target_met, True)
        self.assertIn("target MET", result.verdict[-1])

    def test_target_missed(self) -> None:
        """More CPU per GB misses it even at twice the speed; no OpenVPN: not judged."""
        result = _result()
        for row in result.rows:
            if row.peer == "smobility":
                row.values["cpu_s_per_gb"] = 11.0
        result.comparisons = tunnel.compare(result, "smobility", "openvpn", "OpenVPN")
        tunnel.judge(result)
        self.assertIs(result.target_met, False)
        self.assertIn("NOT MET", result.verdict[-1])

        result = _result()
        result.rows = [r for r in result.rows if r.peer != "openvpn"]
        result.comparisons = tunnel.compare(result, "smobility", "openvpn", "OpenVPN")
        self.assertEqual(result.comparisons, [])
        tunnel.judge(result)
        self.assertIsNone(result.target_met)


class TableTests(SynchronousTestCase):
    """The text and Markdown tables, the result files and the document."""

    columns = [Column("mbps", "Mbit/s", "{:,.0f}"), Column("cost", "CPU s/GB", "{:.2f}")]
    rows = [
        Row("a", "x", "smobility, cn -> client", {"mbps": 1234.4, "cost": 8.456}),
        Row("b", "x", "bare", {"mbps": 13600.0, "cost": None}),
        Row("c", "x", "openvpn | tcp", error="openvpn is not installed\n(second line)"),
    ]

    def test_text(self) -> None:
        """Aligned columns, thousands separators, C{-} for missing, one-line errors."""
        lines = report.text_table(self.columns, self.rows).splitlines()
        self.assertEqual(len(lines), 5)
        self.assertTrue(lines[0].endswith("Mbit/s  CPU s/GB"))
        self.assertEqual(lines[2], "smobility, cn -> client   1,234      8.46")
        self.assertEqual(lines[3], "bare                     13,600         -")
        self.assertEqual(lines[4], "openvpn | tcp            ERROR: openvpn is not installed")
        self.assertEqual(len({len(line) for line in lines[:4]}), 1)

    def test_markdown(self) -> None:
        """A Markdown table: pipes escaped, numbers right-aligned."""
        lines = report.markdown_table(self.columns, self.rows, "case").splitlines()
        self.assertEqual(lines[0], "| case | Mbit/s | CPU s/GB |")
        self.assertEqual(lines[1], "| --- | ---: | ---: |")
        self.assertEqual(lines[2], "| smobility, cn -> client | 1,234 | 8.46 |")
        self.assertEqual(lines[3], "| bare | 13,600 | - |")
        self.assertEqual(lines[4], "| openvpn \\| tcp | error: openvpn is not installed |  |")

    def test_files_and_doc(self) -> None:
        """Results go to a time-stamped and a latest file; the document shows the latest."""
        directory = Path(self.mktemp())
        result = _result()
        path = report.write_result(result, directory)
        self.assertEqual(path.name, "20250131T120000Z-tunnel.json")
        self.assertTrue((directory / "latest-tunnel.json").is_file())
        (directory / "latest-broken.json").write_text("{")
        loaded = report.load_latest(directory)
        self.assertEqual(list(loaded), ["tunnel"])
        doc = report.render_doc(loaded, {"tunnel": "How it is measured."}, ["tunnel"])
        self.assertIn("## Tunnel throughput", doc)
        self.assertIn("| tunnel, case | Mbit/s |", doc)
        self.assertIn("How it is measured.", doc)
        self.assertIn("| smobility, cn -> client | 1,000 | 3 | 8.00 |", doc)
        self.assertIn("Method and noise", doc)
        self.assertIn("error: wireguard-go is not installed", doc)
        self.assertIn("No results yet", report.render_doc({}, {}))
        text = report.render_text(result)
        self.assertIn("ERROR: wireguard-go is not installed", text)


class CommandLineTests(SynchronousTestCase):
    """Options and the root check (nothing is built)."""

    def test_defaults(self) -> None:
        """10 s per test, 4 with --quick, --duration wins; every scenario."""
        self.assertEqual(runner.parse_args([]).duration, runner.DURATION)
        self.assertEqual(runner.parse_args(["--quick"]).duration, runner.QUICK_DURATION)
        self.assertEqual(runner.parse_args(["--quick", "--duration", "2"]).duration, 2.0)
        self.assertEqual(runner.parse_args([]).scenario, list(runner.SCENARIOS))
        args = runner.parse_args(["--only", "smobility,openvpn"])
        self.assertEqual(args.only, ["smobility", "openvpn"])

    def test_http_scenario(self) -> None:
        """The http scenario is registered, after tunnel; its peers are smobility and openvpn."""
        self.assertEqual(list(runner.SCENARIOS)[:2], ["tunnel", "http"])
        self.assertIs(runner.SCENARIOS["http"], http.SCENARIO)
        args = runner.parse_args(["--scenario", "http", "--quick", "--only", "openvpn"])
        self.assertEqual((args.scenario, args.only, args.duration), (["http"], ["openvpn"], 4.0))
        with mock.patch("sys.stderr"):
            e = self.assertRaises(
                SystemExit, runner.parse_args, ["--scenario", "http", "--only", "wireguard"]
            )
        self.assertEqual(e.code, 2)

    def test_bad_options(self) -> None:
        """Unknown peers or scenarios, bad numbers: usage errors (exit 2)."""
        for argv in (
            ["--only", "ipsec"],
            ["--only", ","],
            ["--scenario", "nope"],
            ["--duration", "0"],
            ["--rounds", "0"],
        ):
            with mock.patch("sys.stderr"):
                e = self.assertRaises(SystemExit, runner.parse_args, argv)
            self.assertEqual(e.code, 2)

    def test_not_root(self) -> None:
        """Without root: a sentence and exit status 2, before anything is built."""
        with (
            mock.patch("os.geteuid", return_value=1000),
            mock.patch("sys.stderr") as err,
            mock.patch.object(runner, "Lab") as lab,
        ):
            self.assertEqual(runner.main(["--quick"]), 2)
        lab.assert_not_called()
        written = "".join(str(c.args[0]) for c in err.write.call_args_list)
        self.assertIn("needs root", written)


class OpenVpnTcpTests(SynchronousTestCase):
    """OpenVPN's command lines, over UDP and over TCP through an HTTP proxy."""

    def setUp(self) -> None:
        self.work = Path(self.mktemp())
        self.work.mkdir()
        self.ctx: Any = mock.Mock(work=self.work)
        self.pki = openvpn.Pki(
            *(self.work / name for name in ("ca", "scrt", "skey", "ccrt", "ckey"))
        )
        self.proxy = openvpn.HttpProxy("192.168.103.3", 3128, "guest", "s3cret")

    @staticmethod
    def option(argv: list[str], name: str, count: int = 1) -> list[str]:
        """The C{count} values after option C{name}."""
        i = argv.index(name)
        return argv[i + 1 : i + 1 + count]

    def test_udp_unchanged(self) -> None:
        """The UDP peer: udp4 both sides, no proxy."""
        peer = openvpn.OpenVpnTunnel(self.ctx)
        server = peer.server_argv("openvpn", self.pki)
        client = peer.client_argv("openvpn", self.pki)
        self.assertEqual(self.option(server, "--proto"), ["udp4"])
        self.assertEqual(self.option(client, "--proto"), ["udp4"])
        self.assertNotIn("--http-proxy", client)
        self.assertEqual(self.option(server, "--local"), ["172.31.0.2"])
        self.assertEqual(self.option(client, "--remote", 2), ["172.31.0.2", "1194"])

    def test_tcp_through_proxy(self) -> None:
        """tcp-server and tcp-client; the client names the proxy, the authfile and basic."""
        peer = openvpn.OpenVpnTcpTunnel(self.ctx, self.proxy)
        server = peer.server_argv("openvpn", self.pki)
        client = peer.client_argv("openvpn", self.pki)
        self.assertEqual(self.option(server, "--proto"), ["tcp-server"])
        self.assertNotIn("--http-proxy", server)
        self.assertEqual(self.option(client, "--proto"), ["tcp-client"])
        self.assertEqual(
            self.option(client, "--http-proxy", 4),
            ["192.168.103.3", "3128", str(self.work / "openvpn-tcp-proxy-auth"), "basic"],
        )
        self.assertEqual(client.count("--proto"), 1)
        # Building the command line writes nothing; the password is in no argument.
        self.assertFalse(peer.authfile.exists())
        self.assertNotIn("s3cret", " ".join(server + client))
        self.assertIn("--http-proxy, Basic auth", peer._transport_words())

    def test_authfile(self) -> None:
        """User name and password on a line each; no password in the repr; no line breaks."""
        self.assertEqual(openvpn.authfile_text(self.proxy), "guest\ns3cret\n")
        self.assertNotIn("s3cret", repr(self.proxy))
        for user, password in (("", "x"), ("guest", ""), ("gu\nest", "x"), ("guest", "a\rb")):
            bad = openvpn.HttpProxy("h", 1, user, password)
            self.assertRaises(ValueError, openvpn.authfile_text, bad)


def _http_result(ours: float = 300.0, theirs: float = 200.0) -> ScenarioResult:
    """An http result: smobility at C{ours} Mbit/s, OpenVPN at C{theirs}, every case."""
    result = ScenarioResult(
        scenario="http",
        title=http.TITLE,
        label_header="tunnel, case",
        started="2025-01-31T12:00:00Z",
        finished="2025-01-31T12:02:00Z",
        columns=list(http.COLUMNS),
        comparison_columns=list(http.COMPARISON_COLUMNS),
        settings={"duration_s": 10.0, "rounds": 1},
        machine={"nproc": 2},
    )
    for case in http.CASES:
        for peer, mbps, cost, cores in (
            ("smobility", ours, 40.0, {"cores_client": 0.4, "cores_squid": 0.03}),
            ("openvpn", theirs, 30.0, {"cores_squid": 0.25, "cores_server": 0.5}),
        ):
            values: dict[str, float | None] = {
                "mbps": mbps,
                "retransmits": 10.0,
                "cpu_s_per_gb": cost,
                "cpu_cores": 0.8,
                "squid_cores": 0.1,
                "host_cores": 1.9,
                **cores,
            }
            result.rows.append(Row(peer, case.name, f"{peer}, {case.name}", values))
    return result


class HttpScenarioTests(SynchronousTestCase):
    """The http scenario's figures, comparisons, verdict and per-process lines."""

    def test_sample_values(self) -> None:
        """CPU per GB counts the tunnel and Squid; cores are per wall second."""
        v = http.sample_values(800.0, 2_000_000_000, 10.0, 16.0, 4.0, 18.0)
        self.assertEqual(v["cpu_s_per_gb"], 10.0)
        self.assertEqual((v["tunnel_s_per_gb"], v["squid_s_per_gb"]), (8.0, 2.0))
        self.assertEqual((v["cpu_cores"], v["squid_cores"], v["host_cores"]), (1.6, 0.4, 1.8))
        v = http.sample_values(0.0, 0, 10.0, 1.0, None, None)
        self.assertIsNone(v["cpu_s_per_gb"])
        self.assertIsNone(v["squid_cores"])

    def test_target_met(self) -> None:
        """1.5 times OpenVPN's throughput in every case meets the (1x) target."""
        result = _http_result()
        result.comparisons = http.compare(result)
        self.assertEqual([r.case for r in result.comparisons], [c.name for c in http.CASES])
        self.assertEqual(result.comparisons[0].values["mbps_ratio"], 1.5)
        self.assertAlmostEqual(result.comparisons[0].values["cpu_per_gb_ratio"] or 0, 4 / 3)
        http.judge(result)
        self.assertIs(result.target_met, True)
        self.assertIn("target MET", result.verdict[-1])

    def test_target_missed(self) -> None:
        """Slower than OpenVPN in one case misses it; equal meets it; OpenVPN missing: unjudged."""
        result = _http_result(ours=200.0)
        row = result.row("smobility", "client -> ha")
        assert row is not None
        row.values["mbps"] = 150.0
        result.comparisons = http.compare(result)
        http.judge(result)
        self.assertIs(result.target_met, False)
        self.assertIn("client -> ha: 0.75x OpenVPN's throughput", "\n".join(result.verdict))
        self.assertIn("cn -> client: 1.00x OpenVPN's throughput", "\n".join(result.verdict))
        self.assertIn("NOT MET", result.verdict[-1])

        result = _http_result()
        openvpn_row = result.row("openvpn", "cn -> client")
        assert openvpn_row is not None
        openvpn_row.error = "openvpn is not installed"
        result.comparisons = http.compare(result)
        self.assertEqual(len(result.comparisons), 3)
        http.judge(result)
        self.assertIsNone(result.target_met)

    def test_per_process(self) -> None:
        """Median cores per process from the samples; one line per row, Squid last."""
        samples: list[dict[str, Any]] = [
            {"wall_s": 10.0, "cpu_by_process": {"home agent": 2.0, "squid": 1.0}},
            {"wall_s": 10.0, "cpu_by_process": {"home agent": 4.0, "squid": 3.0}},
            {"wall_s": 10.0, "cpu_by_process": {"home agent": 6.0}},
            {"error": "iperf3 failed"},
        ]
        self.assertEqual(
            http.per_process_cores(samples), {"cores_home_agent": 0.4, "cores_squid": 0.2}
        )
        self.assertEqual(http.per_process_cores([]), {})
        result = _http_result()
        lines = http.cpu_lines(result)
        self.assertEqual(len(lines), 8)
        self.assertEqual(lines[0], "CPU by process, smobility, cn -> client: "
                         "client 0.40, squid 0.03 cores")  # fmt: skip
        self.assertTrue(lines[1].endswith("server 0.50, squid 0.25 cores"), lines[1])

    def test_document(self) -> None:
        """The section shows the Squid column, the ratios and the verdict."""
        result = _http_result()
        result.comparisons = http.compare(result)
        http.judge(result)
        section = report.render_section(result, http.DESCRIPTION)
        self.assertIn("| tunnel, case | Mbit/s | retransmits | CPU s/GB |", section)
        self.assertIn("Squid CPU (cores)", section)
        self.assertIn("| smobility HTTPS / OpenVPN TCP, cn -> client | 1.50 |", section)
        self.assertIn("--http-proxy 192.168.103.3 3128 AUTHFILE basic", section)

    def test_demo_step(self) -> None:
        """The demo's SystemExit with a sentence is a BenchError; a numeric exit unwinds."""

        def gives_up() -> None:
            raise SystemExit("demo: smobility-ctl pki init failed: boom")

        def terminated() -> None:
            raise SystemExit(143)

        e = self.assertRaises(BenchError, http._demo_step, gives_up, "setting up")
        self.assertEqual(str(e), "setting up: demo: smobility-ctl pki init failed: boom")
        e2 = self.assertRaises(SystemExit, http._demo_step, terminated, "setting up")
        self.assertEqual(e2.code, 143)
        self.assertEqual(http._demo_step(lambda: 7, "x"), 7)


def _ike_row(peer: str, mode: str, rate: float, ms: float | None = 1.0) -> Row:
    return Row(peer=peer, case=mode, label=f"{peer}, {mode}",
               values={"rate": rate, "responder_ms_per_setup": ms})  # fmt: skip


class IkeScenarioTests(SynchronousTestCase):
    """The IKE scenario's pure parts: configurations, figures, the verdict."""

    def test_registered(self) -> None:
        """The runner knows the scenario, and --only takes its peers."""
        self.assertIs(runner.SCENARIOS["ike"], ike.SCENARIO)
        args = runner.parse_args(["--scenario", "ike", "--only", "strongswan"])
        self.assertEqual(args.scenario, ["ike"])
        self.assertEqual(args.only, ["strongswan"])

    def test_identities(self) -> None:
        """Every slot has its own identity and inner address."""
        ids = ike.identities(2, 3)
        self.assertEqual(len(set(ids)), 6)
        self.assertEqual(ids[0], "g0-0.bench.smob.test")
        self.assertEqual(ids[-1], "g1-2.bench.smob.test")
        self.assertEqual(ike.slot_inner(1, 2), "10.201.1.3")
        self.assertEqual(ike.generator_addr(1), "10.231.0.12")

    def test_swanctl_psk(self) -> None:
        """The PSK responder: the suite, no uniqueness, one secret for every identity."""
        conf = ike.swanctl_conf("psk", ike.identities(1, 2))
        self.assertIn("proposals = aes128gcm16-prfsha256-x25519", conf)
        self.assertIn("unique = never", conf)
        self.assertIn("esp_proposals = aes128gcm16", conf)
        self.assertIn("id-1 = g0-1.bench.smob.test", conf)
        self.assertIn(f'secret = "{ike.PSK}"', conf)
        self.assertEqual(conf.count("{"), conf.count("}"))

    def test_swanctl_ecdsa(self) -> None:
        """The certificate responder: pubkey both ways, its certificate, no secrets."""
        conf = ike.swanctl_conf("ecdsa", ike.identities(1, 2))
        self.assertIn("certs = responder.crt", conf)
        self.assertEqual(conf.count("auth = pubkey"), 2)
        self.assertNotIn("secrets", conf)
        self.assertEqual(conf.count("{"), conf.count("}"))
        self.assertRaises(ValueError, ike.swanctl_conf, "rsa", [])

    def test_strongswan_conf(self) -> None:
        """charon: kernel-libipsec before kernel-netlink, its own vici socket, no DoS limits."""
        conf = ike.strongswan_conf(Path("/tmp/x"))
        load = next(line for line in conf.splitlines() if "load =" in line)
        self.assertLess(load.index("kernel-libipsec"), load.index("kernel-netlink"))
        self.assertIn("curve25519", load)
        self.assertIn("socket = unix:///tmp/x/vici", conf)
        self.assertIn("dos_protection = no", conf)
        self.assertEqual(conf.count("{"), conf.count("}"))

    def test_combine(self) -> None:
        """Two generators' reports add up; latency is the median of theirs."""
        reports = [
            {"completed": 300, "failed": 1, "retransmits": 2, "cpu_s": 2.0, "latency_ms": 20.0},
            {"completed": 100, "failed": 0, "retransmits": 0, "cpu_s": 1.0, "latency_ms": 40.0},
        ]
        got = ike.combine_generators(reports, 4.0)
        self.assertEqual(got["rate"], 100.0)
        self.assertEqual(got["completed"], 400.0)
        self.assertEqual(got["failed"], 1.0)
        self.assertEqual(got["retransmits"], 2.0)
        self.assertEqual(got["generator_cores"], 0.75)
        self.assertEqual(got["latency_ms"], 30.0)
        self.assertIsNone(ike.combine_generators([{"completed": 0}], 4.0)["latency_ms"])

    def test_responder_figures(self) -> None:
        """CPU in cores and per set-up; nothing per set-up without set-ups or readings."""
        got = ike.responder_figures(2.0, 6.0, 400.0, 4.0)
        self.assertEqual(got, {"responder_cores": 0.5, "responder_ms_per_setup": 5.0,
                               "host_cores": 1.5})  # fmt: skip
        self.assertIsNone(ike.responder_figures(2.0, None, 0.0, 4.0)["responder_ms_per_setup"])
        self.assertIsNone(ike.responder_figures(None, None, 10.0, 4.0)["responder_cores"])

    def test_target_met(self) -> None:
        """Half of strongSwan's rate in both modes meets the target."""
        rows = [_ike_row("smobility", "psk", 50), _ike_row("strongswan", "psk", 100, 0.5),
                _ike_row("smobility", "ecdsa", 80),
                _ike_row("strongswan", "ecdsa", 100)]  # fmt: skip
        comparisons, verdict, met = ike.compare(rows)
        self.assertIs(met, True)
        self.assertEqual(comparisons[0].values["rate_ratio"], 0.5)
        self.assertEqual(comparisons[0].values["cpu_per_setup_ratio"], 2.0)
        self.assertIn("target MET", verdict[-1])

    def test_target_missed(self) -> None:
        """Below half in one mode misses it."""
        rows = [_ike_row("smobility", "psk", 49), _ike_row("strongswan", "psk", 100),
                _ike_row("smobility", "ecdsa", 80),
                _ike_row("strongswan", "ecdsa", 100)]  # fmt: skip
        _, verdict, met = ike.compare(rows)
        self.assertIs(met, False)
        self.assertIn("misses", verdict[0])
        self.assertIn("target MISSED", verdict[-1])

    def test_not_judged(self) -> None:
        """A missing or failed row leaves the target unjudged."""
        failed = _ike_row("strongswan", "ecdsa", 100)
        failed.error = "charon did not come up"
        rows = [_ike_row("smobility", "psk", 60), _ike_row("strongswan", "psk", 100),
                _ike_row("smobility", "ecdsa", 80), failed]  # fmt: skip
        comparisons, verdict, met = ike.compare(rows)
        self.assertIsNone(met)
        self.assertEqual(len(comparisons), 1)
        self.assertIn("not judged", verdict[1])


# The head of /proc/net/snmp in a namespace (kernel 6.x), trimmed after Udp.
SNMP = """\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 1000 0 0 0 0 0 1000 500 1 0 0 10 5 0 400 0 800 1300
Icmp: InMsgs InErrors
Icmp: 3 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 700 0 2 400 2 0 0 0 0
"""  # noqa: E501

# /proc/net/raw with the relay's protocol-4 socket (3 drops) and a ping socket (protocol 1).
RAW = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
    4: 02041FAC:0004 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123 2 0000000000000000 3
    1: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 124 2 0000000000000000 9
  garbage line
"""  # noqa: E501

FAST = settings(max_examples=200, deadline=None, database=None)


def _relay_status(
    transport: str | None, route: str | None, state: str = "registered"
) -> dict[str, Any]:
    routes = [{"path": route, "peer": "172.31.4.2:4500"}] if route is not None else []
    return {"state": state, "path": transport, "tunnel": {"routes": routes}}


def _relay_result() -> ScenarioResult:
    """A relay result: direct 1000 Mbit/s at 10 s/GB, forward 400 at 30, terminate 250 at 40."""
    result = ScenarioResult(
        scenario="relay",
        title=relay.TITLE,
        label_header="path, case",
        started="2025-01-31T12:00:00Z",
        finished="2025-01-31T12:02:00Z",
        columns=list(relay.COLUMNS),
        comparison_columns=list(relay.COMPARISON_COLUMNS),
        settings={"duration_s": 4.0, "rounds": 1},
        machine={"nproc": 2},
    )
    figures = {
        "direct": (1000.0, 10.0, 0.0, 0.0, 1.5),
        "forward": (400.0, 30.0, 0.6, 1000.0, 1.9),
        "terminate": (250.0, 40.0, 0.95, 800.0, 1.9),
    }
    for path, (mbps, cost, relay_cores, fragmented, busy) in figures.items():
        for case in relay.CASES:
            values: dict[str, float | None] = {
                "mbps": mbps,
                "retransmits": 0.0,
                "cpu_s_per_gb": cost,
                "cpu_cores": 1.2,
                "relay_cores": relay_cores,
                "relay_s_per_gb": None,
                "fragmented": fragmented,
                "fragments": 2 * fragmented,
                "reassembled": fragmented,
                "drops": 0.0,
                "host_cores": busy,
                "ha_fragmented": fragmented,
                "ha_sent": fragmented + 10,
                "ha_fragments": 2 * fragmented,
                "rl_reassembled": fragmented,
                "cores_home_agent": 0.7,
                "s_per_gb_home_agent": 5.0,
                "cores_relay": relay_cores,
            }
            result.rows.append(Row(path, case.name, relay.label(path, case), values))
    return result


class RelayScenarioTests(SynchronousTestCase):
    """The relay scenario's pure parts: counters, the client's path, figures, notes, section."""

    def test_registered(self) -> None:
        """Registered last; --only takes its paths and refuses another scenario's peers."""
        self.assertEqual(list(runner.SCENARIOS)[-1], "relay")
        self.assertIs(runner.SCENARIOS["relay"], relay.SCENARIO)
        self.assertEqual(relay.SCENARIO.peers, ("direct", "forward", "terminate"))
        args = runner.parse_args(["--scenario", "relay", "--quick", "--only", "direct,terminate"])
        self.assertEqual((args.scenario, args.only), (["relay"], ["direct", "terminate"]))
        with mock.patch("sys.stderr"):
            e = self.assertRaises(
                SystemExit, runner.parse_args, ["--scenario", "relay", "--only", "openvpn"]
            )
        self.assertEqual(e.code, 2)
        self.assertEqual([c.name for c in relay.CASES], ["cn -> client", "client -> cn"])

    def test_snmp(self) -> None:
        """Header and value lines pair up per section; the kept counters, flat."""
        snmp = relay.parse_snmp(SNMP)
        self.assertEqual(set(snmp), {"Ip", "Icmp", "Udp"})
        self.assertEqual(snmp["Ip"]["FragOKs"], 400)
        self.assertEqual(snmp["Ip"]["FragCreates"], 800)
        self.assertEqual(snmp["Udp"]["RcvbufErrors"], 2)
        flat = relay.flatten_counters(snmp, 3)
        self.assertEqual(flat["Ip.OutRequests"], 500)
        self.assertEqual(flat["Ip.ReasmOKs"], 5)
        self.assertEqual(flat["raw4.drops"], 3)
        self.assertNotIn("Ip.InReceives", flat)
        # Lines that do not pair up, or are not numbers, are left out.
        self.assertEqual(relay.parse_snmp("Ip: A B\nIp: 1\nUdp: X\nUdp: y\n"), {})
        self.assertEqual(relay.parse_snmp(""), {})

    def test_raw_drops(self) -> None:
        """Only the raw sockets of protocol 4 count; malformed lines are skipped."""
        self.assertEqual(relay.parse_raw_drops(RAW), 3)
        self.assertEqual(relay.parse_raw_drops(RAW, protocol=1), 9)
        self.assertEqual(relay.parse_raw_drops(""), 0)

    @FAST
    @given(st.text(max_size=400))
    def test_parsers_take_any_text(self, text: str) -> None:
        """Whatever the files hold, the parsers return numbers and never raise."""
        for section in relay.parse_snmp(text).values():
            self.assertTrue(all(isinstance(v, int) for v in section.values()))
        self.assertIsInstance(relay.parse_raw_drops(text), int)

    def test_fragment_values(self) -> None:
        """Per namespace and in total; the share counts the fragmenting namespaces' sends."""
        before = {
            "ha": {"Ip.FragOKs": 10, "Ip.FragCreates": 20, "Ip.OutRequests": 100},
            "rl": {"Ip.ReasmOKs": 0, "Ip.OutRequests": 50, "raw4.drops": 1},
            "mn": {"Ip.OutRequests": 0},
        }
        after = {
            "ha": {"Ip.FragOKs": 90, "Ip.FragCreates": 180, "Ip.OutRequests": 200},
            "rl": {"Ip.ReasmOKs": 80, "Ip.OutRequests": 1050, "raw4.drops": 3},
            "mn": {"Ip.OutRequests": 7000},
        }
        delta = relay.counter_delta(before, after)
        self.assertEqual(
            delta["ha"], {"Ip.FragOKs": 80, "Ip.FragCreates": 160, "Ip.OutRequests": 100}
        )
        got = relay.fragment_values(delta)
        self.assertEqual(
            (got["fragmented"], got["fragments"], got["reassembled"]), (80.0, 160.0, 80.0)
        )
        self.assertEqual(got["fragmented_share"], 80.0)
        self.assertEqual(got["drops"], 2.0)
        self.assertEqual((got["ha_fragmented"], got["ha_sent"]), (80.0, 100.0))
        self.assertEqual(got["rl_reassembled"], 80.0)
        # A namespace read only once is left out; nothing read: no figures.
        self.assertEqual(relay.counter_delta(before, {"ha": after["ha"]}).keys(), {"ha"})
        empty = relay.fragment_values({})
        self.assertIsNone(empty["fragmented"])
        self.assertIsNone(empty["fragmented_share"])
        none = relay.fragment_values({"mn": {"Ip.OutRequests": 5}})
        self.assertEqual(none["fragmented"], 0.0)
        self.assertIsNone(none["fragmented_share"])

    def test_on_path(self) -> None:
        """Direct is UDP; forward is the relay not keying; terminate the relay keying."""
        direct = _relay_status("udp", "direct")
        forward = _relay_status("relay", "direct")
        terminate = _relay_status("relay", "relay-terminate")
        self.assertTrue(relay.on_path(direct, "direct"))
        self.assertTrue(relay.on_path(forward, "forward"))
        self.assertTrue(relay.on_path(terminate, "terminate"))
        self.assertFalse(relay.on_path(forward, "direct"))
        self.assertFalse(relay.on_path(terminate, "forward"))
        self.assertFalse(relay.on_path(forward, "terminate"))
        self.assertFalse(relay.on_path(_relay_status("udp", "direct", "registering"), "direct"))
        self.assertFalse(relay.on_path({}, "terminate"))
        self.assertFalse(
            relay.on_path(
                {"state": "registered", "path": "relay", "tunnel": {"routes": "junk"}}, "terminate"
            )
        )
        self.assertRaises(ValueError, relay.on_path, direct, "gateway")
        self.assertEqual(
            relay.describe_path(terminate),
            "state registered, transport relay, route relay-terminate",
        )
        self.assertEqual(relay.describe_path({}), "state None, transport None, route None")

    def test_relay_values(self) -> None:
        """The relay's cores and seconds per GB; none without a reading or bytes."""
        self.assertEqual(
            relay.relay_values(2.0, 500_000_000, 4.0), {"relay_cores": 0.5, "relay_s_per_gb": 4.0}
        )
        self.assertEqual(
            relay.relay_values(None, 500_000_000, 4.0),
            {"relay_cores": None, "relay_s_per_gb": None},
        )
        self.assertIsNone(relay.relay_values(1.0, 0, 4.0)["relay_s_per_gb"])

    def test_compare_and_notes(self) -> None:
        """Relay / direct per case; no target; CPU-bound relay, busy machine, counters."""
        result = _relay_result()
        result.comparisons = relay.compare(result)
        self.assertEqual(len(result.comparisons), 4)
        first = result.comparisons[0]
        self.assertEqual(first.label, "relay forward (V4) / direct, cn -> client")
        self.assertEqual(first.values["mbps_ratio"], 0.4)
        self.assertEqual(first.values["cpu_per_gb_ratio"], 3.0)
        self.assertEqual(first.values["cpu_cores_ratio"], 1.0)
        lines = relay.notes(result)
        self.assertTrue(lines[0].startswith("no target: there is no independent peer"))
        text = "\n".join(lines)
        self.assertIn(
            "relay forward (V4) / direct, cn -> client: 0.40x the throughput at "
            "3.00x the CPU per GB",
            text,
        )
        self.assertIn(
            "relay terminate (V4), cn -> client: the relay used 0.95 cores: CPU-bound", text
        )
        self.assertNotIn("relay forward (V4), cn -> client: the relay used", text)
        self.assertIn(
            "the machine's 2 cores were 95-95 % busy in every test but direct (V1, UDP), "
            "cn -> client, direct (V1, UDP), client -> cn: throughput is bound",
            text,
        )
        # Fewer busy tests than calm ones: the busy ones are named.
        for row in result.rows:
            if row.peer == "terminate":
                row.values["host_cores"] = 1.0
        self.assertIn(
            "were 95-95 % busy in relay forward (V4), cn -> client, relay forward (V4), "
            "client -> cn: throughput",
            "\n".join(relay.notes(result)),
        )
        self.assertIn(
            "IP counters, relay forward (V4), cn -> client: ha fragmented 1,000 of "
            "its 1,010 IP sends into 2,000 fragments, rl reassembled 1,000; drops 0",
            text,
        )
        self.assertIn("IP counters, direct (V1, UDP), cn -> client: no packet fragmented", text)
        self.assertIn(
            "CPU by process, direct (V1, UDP), cn -> client: home agent 0.70 cores "
            "(5.00 s/GB), relay 0.00 cores",
            text,
        )
        # A failed direct row: no ratios, and the failed row has no lines.
        row = result.row("direct", "cn -> client")
        assert row is not None
        row.error = "the client on the direct (V1, UDP) path: not ready after 45 s"
        self.assertEqual(len(relay.compare(result)), 2)
        self.assertNotIn(
            "IP counters, direct (V1, UDP), cn -> client", "\n".join(relay.notes(result))
        )

    def test_document(self) -> None:
        """The section: the relay columns, the ratios, no target, and it round-trips."""
        result = _relay_result()
        result.comparisons = relay.compare(result)
        result.verdict = relay.notes(result)
        back = ScenarioResult.from_json(json.loads(json.dumps(result.to_json())))
        self.assertEqual(back, result)
        section = report.render_section(back, relay.DESCRIPTION, "bench/results/latest-relay.json")
        self.assertIn(
            "| path, case | Mbit/s | retransmits | CPU s/GB | smobility CPU (cores) "
            "| relay CPU (cores) | relay CPU s/GB | packets fragmented |",
            section,
        )
        self.assertIn(
            "| relay forward (V4), cn -> client | 400 | 0 | 30.00 | 1.20 | 0.60 | - "
            "| 1,000 | 1.90 |",
            section,
        )
        self.assertIn(
            "| relay terminate (V4) / direct, client -> cn | 0.25 | 4.00 | 1.00 |", section
        )
        self.assertIn("no independent Mobile IP", section)
        self.assertIn("- no target: there is no independent peer", section)
        self.assertIn("make bench", report.DOC_HEAD)
        self.assertIn("relay", report.DOC_HEAD)

    def test_not_root_is_an_error_row(self) -> None:
        """Without root every row is an error and the result is not ok: never a silent skip."""
        lab = mock.Mock(prefix="smobbxyz")
        ctx = BenchContext(
            lab=lab,
            work=Path(self.mktemp()),
            duration=1.0,
            only=frozenset({"direct", "forward"}),
            say=lambda _: None,
        )
        with (
            mock.patch("os.geteuid", return_value=1000),
            mock.patch.object(relay, "machine_info", return_value={"nproc": 2}),
        ):
            result = relay.SCENARIO.run(ctx)
        self.assertFalse(result.ok)
        self.assertEqual([r.peer for r in result.rows], ["direct"] * 2 + ["forward"] * 2)
        for row in result.rows:
            self.assertEqual(row.error, "the relay scenario needs root (network namespaces)")
        self.assertEqual(result.errors, ["the relay scenario needs root (network namespaces)"])
        self.assertIsNone(result.target_met)
        self.assertEqual(result.comparisons, [])
        lab.move.assert_not_called()
        self.assertIn("ERROR: the relay scenario needs root", report.render_text(result))
