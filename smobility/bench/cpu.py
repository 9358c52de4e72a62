# -*- test-case-name: tests.test_bench -*-
"""
CPU time of processes and of the machine, from /proc.

A process's C{utime + stime} in C{/proc/PID/stat} covers all its threads
(also those that have ended), which matters for wireguard-go; the Python and
OpenVPN processes are single-threaded.  Resolution is one clock tick
(usually 10 ms): good enough for runs of seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Clock ticks per second, the unit of the times in /proc."""


def parse_stat_ticks(stat: str) -> int:
    """
    C{utime + stime} in clock ticks from the text of C{/proc/PID/stat}.

    The command name (field 2) is in parentheses and may hold spaces and
    parentheses itself, so the fields are counted after its last C{)}.

    @raise ValueError: not a stat line.
    """
    head, paren, rest = stat.rpartition(")")
    fields = rest.split()
    if not paren or "(" not in head or len(fields) < 13:
        raise ValueError("not a /proc/PID/stat line")
    # rest starts at field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def parse_stat_ppid(stat: str) -> int:
    """
    The parent PID (field 4) from the text of C{/proc/PID/stat}.

    @raise ValueError: not a stat line.
    """
    head, paren, rest = stat.rpartition(")")
    fields = rest.split()
    if not paren or "(" not in head or len(fields) < 2:
        raise ValueError("not a /proc/PID/stat line")
    return int(fields[1])


def descendants(pids: Iterable[int]) -> set[int]:
    """The processes running now whose ancestors include one of C{pids} (not C{pids})."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = parse_stat_ppid((entry / "stat").read_text())
            except (OSError, ValueError):
                pass
    found: set[int] = set()
    frontier = set(pids)
    while frontier:
        children = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return found - set(pids)


def process_cpu_seconds(pid: int) -> float:
    """
    The CPU seconds (user + system, all threads) process C{pid} has used so far.

    @raise OSError: no such process.
    """
    return parse_stat_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLOCK_TICKS


def parse_host_busy(stat: str) -> tuple[float, float]:
    """
    C{(busy, total)} CPU seconds of the whole machine from the text of C{/proc/stat}.

    Busy is everything but idle and iowait, summed over all cores.

    @raise ValueError: no C{cpu} line.
    """
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(x) for x in fields[1:]]
            # user nice system idle iowait irq softirq steal (guest times are in user)
            total = sum(ticks[:8])
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS
    raise ValueError("no cpu line in /proc/stat")


@dataclass
class CpuMeter:
    """
    Measures the CPU time some processes (and the machine) use between L{start} and L{stop}.

    Their descendants count too (a helper process would), as found at
    either reading; a process that ends in between is left out (its last
    figures are gone with it).
    """

    pids: tuple[int, ...]
    _children: set[int] = field(default_factory=set)
    _before: dict[int, float] | None = None
    _host_before: tuple[float, float] | None = None

    @classmethod
    def of(cls, pids: Iterable[int]) -> CpuMeter:
        """A meter for C{pids}."""
        return cls(tuple(pids))

    def _sample(self) -> dict[int, float]:
        seen = {}
        for pid in set(self.pids) | self._children:
            try:
                seen[pid] = process_cpu_seconds(pid)
            except (OSError, ValueError):
                pass
        return seen

    @staticmethod
    def _host() -> tuple[float, float] | None:
        try:
            return parse_host_busy(Path("/proc/stat").read_text())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Take the starting readings."""
        self._children = descendants(self.pids) if self.pids else set()
        self._before = self._sample()
        self._host_before = self._host()

    def stop(self) -> tuple[float, float | None]:
        """
        C{(process seconds, machine busy seconds)} since L{start}.

        The machine figure (all cores, everything running) is C{None} if
        /proc/stat could not be read.
        """
        if self._before is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        if self.pids:
            self._children |= descendants(self.pids)
        after = self._sample()
        # A child first seen at the end counts whole (it started during the run).
        used = sum(after[pid] - self._before.get(pid, 0.0) for pid in after)
        host_after = self._host()
        host = None
        if self._host_before is not None and host_after is not None:
            host = host_after[0] - self._host_before[0]
        return used, host
