# -*- test-case-name: tests.test_bench -*-
"""
``make bench``: benchmarks in the namespace lab, side by side with independent peers.

One module per scenario (L{smobility.bench.tunnel}: iperf3 through smobility,
OpenVPN and wireguard-go), each producing a L{smobility.bench.results.ScenarioResult};
L{smobility.bench.runner} builds the lab, runs the scenarios and writes the
JSON results and C{doc/bench.md} (L{smobility.bench.report}).  See doc/bench.md.
"""

from __future__ import annotations
