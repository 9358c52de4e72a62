# -*- test-case-name: tests.test_bench -*-
"""
The benchmark command: one lab, every scenario, tables, JSON, doc/bench.md.

C{python -m smobility.bench [--quick] [--only PEERS] [--duration S] ...}
builds a namespace lab under a prefix of its own (C{smobb} and three random
letters), runs the chosen scenarios in it, and removes it at the end, also
on failure or Ctrl-C.  Every process it starts is stopped by its PID.

A scenario is an object with C{name}, C{title}, C{description} (markdown for
the document), C{peers} (the names C{--only} accepts) and C{run(ctx)}
returning a L{ScenarioResult}; add it to L{SCENARIOS}.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import string
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

from smobility.bench import http, ike, relay, tunnel
from smobility.bench.context import BenchContext
from smobility.bench.report import render_text, write_doc, write_result
from smobility.bench.results import ScenarioResult, machine_info, utc_now
from smobility.lab import Lab, LabError

ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOC_PATH = ROOT / "doc" / "bench.md"
DURATION = 10.0
"""Seconds per test by default."""
QUICK_DURATION = 4.0
"""Seconds per test with C{--quick}."""
PREFIX = "smobb"
"""The first letters of the lab prefix (three random letters follow)."""


class Scenario(Protocol):
    """What the runner needs of a scenario module's scenario object."""

    name: str
    title: str
    description: str
    peers: tuple[str, ...]

    def run(self, ctx: BenchContext) -> ScenarioResult:
        """Measure, with every peer of C{ctx.only}; report failures in the result."""
        ...


SCENARIOS: dict[str, Scenario] = {
    tunnel.SCENARIO.name: tunnel.SCENARIO,
    http.SCENARIO.name: http.SCENARIO,
    ike.SCENARIO.name: ike.SCENARIO,
    relay.SCENARIO.name: relay.SCENARIO,
}
"""Every scenario, in the order they run and appear in doc/bench.md."""


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (C{--help} explains it). Exits with 2 on a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m smobility.bench",
        description="Benchmarks in the namespace lab, side by side with independent peers "
        "(needs root). Results: JSON under bench/results/, tables in doc/bench.md.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION:g} s per test instead of {DURATION:g}",
    )
    parser.add_argument(
        "--duration", type=float, metavar="S", help="seconds per test (overrides --quick)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="repeat every test N times, peers in rotating order; tables show medians (default 1)",
    )
    peers = sorted({p for s in SCENARIOS.values() for p in s.peers})
    parser.add_argument(
        "--only",
        type=_names,
        metavar="PEERS",
        help=f"comma-separated peers to measure, of: {','.join(peers)}",
    )
    parser.add_argument(
        "--scenario",
        type=_names,
        metavar="NAMES",
        help=f"comma-separated scenarios, of: {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="where the JSON results go (default: bench/results)",
    )
    parser.add_argument(
        "--doc",
        type=Path,
        default=DOC_PATH,
        metavar="FILE",
        help="the document to regenerate (default: doc/bench.md)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (configurations, logs) even when all went well",
    )
    parser.add_argument(
        "--require-target",
        action="store_true",
        help="exit non-zero also when a scenario misses its target",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_DURATION if args.quick else DURATION
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.scenario = args.scenario or list(SCENARIOS)
    unknown = [s for s in args.scenario if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose of {', '.join(SCENARIOS)}")
    if args.only is not None:
        known = {p for s in args.scenario for p in SCENARIOS[s].peers}
        bad = [p for p in args.only if p not in known]
        if bad or not args.only:
            parser.error(
                f"unknown peer {', '.join(bad) or '(none)'}: choose of {', '.join(sorted(known))}"
            )
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: unwind like Ctrl-C, so that the lab comes down."""
    raise SystemExit(128 + signum)


def _lab_prefix() -> str:
    return PREFIX + "".join(secrets.choice(string.ascii_lowercase) for _ in range(3))


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmarks; print tables; write JSON and the document.

    Exit status: 0 when every row was measured, 1 when something failed (a
    peer missing or not coming up, a test without a result; with
    C{--require-target} also a missed target), 2 on a usage error or without root.
    """
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "smobility.bench needs root (it builds network namespaces): "
            "run `make bench` or `python -m smobility.bench` as root",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    prefix = _lab_prefix()
    work = Path(f"/run/{prefix}-bench")
    work.mkdir(mode=0o700)
    lab = Lab(prefix=prefix)
    results: list[tuple[ScenarioResult, Path]] = []
    failed = False
    print(f"building the lab (namespaces {prefix}-*) ...", flush=True)
    try:
        try:
            lab.up()
        except LabError as e:
            print(f"error: the lab did not come up: {e}", file=sys.stderr)
            return 1
        ctx = BenchContext(
            lab=lab,
            work=work,
            duration=args.duration,
            rounds=args.rounds,
            only=frozenset(args.only) if args.only is not None else None,
        )
        for name in args.scenario:
            scenario = SCENARIOS[name]
            print(f"\nscenario {name}: {scenario.title}", flush=True)
            try:
                result = scenario.run(ctx)
            except Exception as e:  # a bug in a scenario: still write what is known
                traceback.print_exc()
                result = ScenarioResult(
                    scenario=name,
                    title=scenario.title,
                    started=utc_now(),
                    finished=utc_now(),
                    machine=machine_info(sample=0),
                    settings=ctx.describe_env(),
                    errors=[f"{type(e).__name__}: {e}"],
                )
            finally:
                ctx.stop_all()
            path = write_result(result, args.results)
            results.append((result, path))
            print("\n" + render_text(result) + "\n", flush=True)
    finally:
        print(f"tearing the lab down ({prefix}) ...", flush=True)
        lab.down()
    write_doc(
        args.doc, args.results, {n: s.description for n, s in SCENARIOS.items()}, list(SCENARIOS)
    )
    for result, path in results:
        print(f"{result.scenario}: {path} (and latest-{result.scenario}.json)")
        if not result.ok:
            failed = True
        if args.require_target and result.target_met is not True:
            failed = True
    print(f"document: {args.doc}")
    if failed:
        print(f"something failed: logs kept in {work}", flush=True)
    elif args.keep:
        print(f"logs kept in {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0
