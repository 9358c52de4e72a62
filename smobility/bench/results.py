# -*- test-case-name: tests.test_bench -*-
"""
The result format every benchmark scenario shares.

A scenario (C{tunnel}, later C{ike}, C{http}) produces one L{ScenarioResult}:
what was measured (L{Row}s, each with its raw samples), how the rows compare
(more L{Row}s), a verdict, and the facts needed to read the numbers later
(settings, machine, peer versions).  The columns travel with the result, so a
JSON file written today can be rendered as a table by any later version
(L{smobility.bench.report}).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smobility.bench.cpu import parse_host_busy

FORMAT_VERSION = 1
"""Bumped when the JSON layout changes incompatibly."""


@dataclass(frozen=True)
class Column:
    """
    One column of a result table.

    @ivar key: the name of the value in L{Row.values}.
    @ivar header: the column heading.
    @ivar fmt: a C{str.format} pattern for the number (C{None} values print as C{-}).
    """

    key: str
    header: str
    fmt: str = "{:,.0f}"


@dataclass
class Row:
    """
    One line of a result table: a peer, a case, its summary values and samples.

    @ivar peer: the implementation measured (C{"smobility"}, C{"openvpn"}, ...).
    @ivar case: what was measured of it (C{"cn -> client"}).
    @ivar label: the text of the table's first column.
    @ivar values: the summary numbers, by L{Column.key} (C{None}: not measured).
    @ivar samples: the raw measurements the summary was made from.
    @ivar info: anything else worth keeping (path, direction, addresses).
    @ivar error: why the row has no numbers, or C{None}.
    """

    peer: str
    case: str
    label: str
    values: dict[str, float | None] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class ScenarioResult:
    """
    Everything one scenario measured in one run, in a form that round-trips through JSON.

    @ivar scenario: the scenario's name (file names: C{latest-<scenario>.json}).
    @ivar title: a heading for the scenario.
    @ivar started: the start time, ISO 8601 UTC.
    @ivar finished: the end time, ISO 8601 UTC.
    @ivar settings: the options of the run (duration, rounds, peers asked for).
    @ivar machine: see L{machine_info}.
    @ivar peers: per peer, its version and configuration in words.
    @ivar label_header: the heading of the tables' first column (the row labels).
    @ivar columns: the columns of C{rows}.
    @ivar rows: the measurements.
    @ivar comparison_columns: the columns of C{comparisons}.
    @ivar comparisons: ratios between peers measured in this same run.
    @ivar verdict: sentences on the scenario's target.
    @ivar target_met: whether the target was met (C{None}: could not be judged).
    @ivar errors: what went wrong, in sentences.
    """

    scenario: str
    title: str
    started: str
    finished: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    label_header: str = ""
    columns: list[Column] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    comparison_columns: list[Column] = field(default_factory=list)
    comparisons: list[Row] = field(default_factory=list)
    verdict: list[str] = field(default_factory=list)
    target_met: bool | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Did every row get measured (no error anywhere)?"""
        return not self.errors and all(row.error is None for row in self.rows)

    def row(self, peer: str, case: str) -> Row | None:
        """The row of C{peer} and C{case}, or C{None}."""
        for row in self.rows:
            if row.peer == peer and row.case == case:
                return row
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (see L{from_json})."""
        data = asdict(self)
        data["format"] = FORMAT_VERSION
        data["ok"] = self.ok
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScenarioResult:
        """
        Rebuild a result from L{to_json}'s output.

        @raise ValueError: not a result of a format this version reads.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ValueError("not a smobility benchmark result of format 1")
        try:
            return cls(
                scenario=str(data["scenario"]),
                title=str(data["title"]),
                started=str(data["started"]),
                finished=str(data.get("finished", "")),
                settings=dict(data.get("settings", {})),
                machine=dict(data.get("machine", {})),
                peers=dict(data.get("peers", {})),
                label_header=str(data.get("label_header", "")),
                columns=[Column(**c) for c in data.get("columns", [])],
                rows=[Row(**r) for r in data.get("rows", [])],
                comparison_columns=[Column(**c) for c in data.get("comparison_columns", [])],
                comparisons=[Row(**r) for r in data.get("comparisons", [])],
                verdict=[str(v) for v in data.get("verdict", [])],
                target_met=data.get("target_met"),
                errors=[str(e) for e in data.get("errors", [])],
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed benchmark result: {e}") from None


def utc_now() -> str:
    """The current time as ISO 8601 UTC, to the second (C{2025-01-31T12:00:00Z})."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(iso: str) -> str:
    """A file-name-safe form of an L{utc_now} time (C{20250131T120000Z})."""
    return iso.replace("-", "").replace(":", "")


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not C{None}, or C{None} if there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(samples: Sequence[dict[str, Any]], keys: Iterable[str]) -> dict[str, float | None]:
    """Per key, the median over the samples that have it."""
    return {key: median(s.get(key) for s in samples) for key in keys}


def ratio(a: float | None, b: float | None) -> float | None:
    """C{a / b}, or C{None} when either is missing or C{b} is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def machine_info(sample: float = 1.0) -> dict[str, Any]:
    """
    What the numbers depend on: cores, CPU model, kernel, Python, and other work.

    C{background_cores} is how many cores were busy during C{sample} seconds
    before the measurements (other work on a shared machine; the load average
    would also count the previous run).
    """
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["loadavg"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        pass
    if sample > 0:
        try:
            before = parse_host_busy(Path("/proc/stat").read_text())[0]
            time.sleep(sample)
            after = parse_host_busy(Path("/proc/stat").read_text())[0]
            info["background_cores"] = round((after - before) / sample, 2)
        except (OSError, ValueError):
            pass
    return info
