# -*- test-case-name: tests.test_bench -*-
"""
iperf3: command lines and the parser of its JSON report (C{iperf3 -J}).

The client always runs on the side away from the mobile node (the
correspondent or the home agent) and the server in the mobile node's
namespace; C{-R} turns the direction round, so both directions need only one
server per address.  In both cases the client's report carries the sender's
retransmits (iperf3 fetches the server's figures in reverse mode).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CONNECT_TIMEOUT_MS = 5000
"""How long an iperf3 client tries to reach its server."""


class IperfError(Exception):
    """iperf3 did not produce a usable report; the message says why."""


@dataclass(frozen=True)
class IperfResult:
    """
    The figures of one iperf3 TCP test.

    @ivar bits_per_second: the receiver's rate (what arrived, per second).
    @ivar bytes: what arrived, in bytes.
    @ivar seconds: the receiver's measuring interval.
    @ivar retransmits: TCP retransmits of the sender (C{None}: not reported).
    @ivar sender_bits_per_second: the sender's rate.
    @ivar cpu_local: iperf3's own CPU use on the client side, percent.
    @ivar cpu_remote: the same on the server side.
    @ivar reverse: whether the server sent (C{-R}).
    """

    bits_per_second: float
    bytes: int
    seconds: float
    retransmits: int | None
    sender_bits_per_second: float
    cpu_local: float | None
    cpu_remote: float | None
    reverse: bool

    @property
    def mbps(self) -> float:
        """The receiver's rate in Mbit/s (10**6 bits per second)."""
        return self.bits_per_second / 1e6


def _number(data: dict[str, Any], key: str, what: str) -> float:
    """C{data[key]} as a number. @raise IperfError: missing or not a number."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IperfError(f"iperf3 report has no number {what}.{key}")
    return float(value)


def parse_iperf3(text: str) -> IperfResult:
    """
    Parse the JSON report an iperf3 TCP client printed (C{iperf3 -c ... -J}).

    @raise IperfError: no JSON, an error report (C{"error"}: iperf3 could not
        connect, the server was busy, ...), or a report without the TCP sums.
    """
    start = text.find("{")
    if start < 0:
        tail = text.strip()[-200:]
        raise IperfError(f"iperf3 printed no JSON report{': ' + tail if tail else ''}")
    try:
        data = json.loads(text[start:])
    except ValueError as e:
        raise IperfError(f"iperf3 printed malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise IperfError("iperf3's JSON report is not an object")
    if data.get("error"):
        raise IperfError(f"iperf3: {data['error']}")
    end = data.get("end")
    if not isinstance(end, dict):
        raise IperfError("iperf3 report has no 'end' section")
    received = end.get("sum_received")
    sent = end.get("sum_sent")
    if not isinstance(received, dict) or not isinstance(sent, dict):
        raise IperfError("iperf3 report has no TCP sums (sum_sent, sum_received)")
    retransmits = sent.get("retransmits")
    cpu = end.get("cpu_utilization_percent")
    cpu = cpu if isinstance(cpu, dict) else {}
    test = data.get("start", {}).get("test_start", {})
    return IperfResult(
        bits_per_second=_number(received, "bits_per_second", "sum_received"),
        bytes=int(_number(received, "bytes", "sum_received")),
        seconds=_number(received, "seconds", "sum_received"),
        retransmits=int(retransmits) if isinstance(retransmits, int | float) else None,
        sender_bits_per_second=_number(sent, "bits_per_second", "sum_sent"),
        cpu_local=cpu.get("host_total"),
        cpu_remote=cpu.get("remote_total"),
        reverse=bool(test.get("reverse")) if isinstance(test, dict) else False,
    )


def server_argv(iperf3: str, bind: str, port: int) -> list[str]:
    """The command line of an iperf3 server listening on C{bind}:C{port}."""
    return [iperf3, "-s", "-B", bind, "-p", str(port)]


def client_argv(
    iperf3: str,
    server: str,
    port: int,
    seconds: float,
    reverse: bool = False,
    bind: str | None = None,
) -> list[str]:
    """
    The command line of one iperf3 TCP test against C{server}:C{port}.

    @param reverse: the server sends (C{-R}).
    @param bind: the client's source address (C{-B}), when the route would pick another.
    """
    argv = [iperf3, "-c", server, "-p", str(port), "-t", f"{seconds:g}", "-J"]
    argv += ["--connect-timeout", str(CONNECT_TIMEOUT_MS)]
    if reverse:
        argv.append("-R")
    if bind is not None:
        argv += ["-B", bind]
    return argv
