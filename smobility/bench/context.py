# -*- test-case-name: tests.test_bench -*-
"""
What every scenario gets to work with: the lab, a work directory, the options,
and process handling that only ever stops what it started, by PID.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from smobility.lab import Lab
from smobility.lab.namespaces import find_tool

STOP_GRACE = 5.0
"""Seconds a process gets to exit after SIGTERM before it is killed."""


class MissingTool(Exception):
    """A program the benchmark needs is not installed; the message says which and how to get it."""


class BenchError(Exception):
    """A step of a benchmark failed; the message says which and why."""


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass
class BenchContext:
    """
    The shared state of one benchmark run.

    @ivar lab: the namespace lab, up, with the mobile node wherever the
        scenario put it.
    @ivar work: a private directory for configurations, keys and logs.
    @ivar duration: seconds per measurement (iperf3 C{-t}).
    @ivar rounds: how many times each measurement is repeated (the tables
        show medians).
    @ivar only: the peers asked for (C{None}: all).
    @ivar say: where progress lines go.
    """

    lab: Lab
    work: Path
    duration: float = 10.0
    rounds: int = 1
    only: frozenset[str] | None = None
    say: Callable[[str], None] = _say
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def wants(self, peer: str) -> bool:
        """Was C{peer} asked for?"""
        return self.only is None or peer in self.only

    def tool(self, name: str, package: str | None = None) -> str:
        """
        The path of program C{name}.

        @raise MissingTool: it is not installed (naming the Debian package).
        """
        found = find_tool(name)
        if found is None:
            raise MissingTool(
                f"{name} is not installed (Debian package {package or name}; "
                "`make deps` installs it as root)"
            )
        return found

    def start(
        self,
        role: str,
        argv: Sequence[str],
        log: str,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """
        Start C{argv} in C{role}'s namespace, output to C{work/log}.

        The returned process's PID is the program's own (C{ip netns exec}
        execs it); L{stop} and L{stop_all} use it.
        """
        out = open(self.work / log, "ab")  # noqa: SIM115 - closed in stop_all
        self._logs.append(out)
        proc = self.lab.popen(role, *argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def stop(self, procs: Sequence[subprocess.Popen[bytes]]) -> None:
        """SIGTERM C{procs} (by PID), then SIGKILL those still running after a grace time."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        """Stop every process L{start} started, and close their logs."""
        self.stop(list(reversed(self.procs)))
        self.procs.clear()
        for out in self._logs:
            out.close()
        self._logs.clear()

    def log_tail(self, log: str, lines: int = 15) -> str:
        """The last lines of C{work/log} (for error messages)."""
        try:
            text = (self.work / log).read_text(errors="replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])

    def wait_for(
        self,
        ready: Callable[[], bool],
        what: str,
        timeout: float = 20.0,
        alive: Sequence[subprocess.Popen[bytes]] = (),
        log: str | None = None,
    ) -> None:
        """
        Poll C{ready} until it is true.

        @param alive: processes that must keep running meanwhile.
        @param log: a log whose tail goes into the error message.
        @raise BenchError: C{timeout} passed, or one of C{alive} exited.
        """
        deadline = time.monotonic() + timeout
        while not ready():
            tail = f"; its log ends:\n{self.log_tail(log)}" if log else ""
            for proc in alive:
                if proc.poll() is not None:
                    raise BenchError(
                        f"{what}: the process exited with status {proc.returncode}{tail}"
                    )
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not ready after {timeout:g} s{tail}")
            time.sleep(0.05)

    def listening(self, role: str, port: int, udp: bool = False) -> bool:
        """Is something in C{role}'s namespace listening on C{port}?"""
        proto = "-Hlun" if udp else "-Hltn"
        out = self.lab.exec(
            role, self.tool("ss", "iproute2"), proto, f"sport = :{port}", check=False
        )
        return bool(out.stdout.strip())

    def file_has(self, log: str, text: str) -> Callable[[], bool]:
        """A predicate for L{wait_for}: does C{work/log} contain C{text}?"""

        def check() -> bool:
            try:
                return text in (self.work / log).read_text(errors="replace")
            except OSError:
                return False

        return check

    def describe_env(self) -> dict[str, Any]:
        """The run's options, for the result's settings."""
        return {
            "duration_s": self.duration,
            "rounds": self.rounds,
            "only": sorted(self.only) if self.only is not None else None,
            "lab_prefix": self.lab.prefix,
        }
