# -*- test-case-name: tests.test_packaging -*-
"""
Helpers shared by the tests.

Tests that need the real world (root, network namespaces, external tools)
skip with a reason on a developer's machine, but under C{CI=true} such a
skip is a failure: CI must have everything.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import unittest
from typing import NoReturn

from twisted.trial.unittest import SynchronousTestCase

PREFIX = "smob"
"""The project's prefix for names in the real world (namespaces, links, nft tables)."""

# Where system tools live even when PATH lacks the sbin directories.
_EXTRA_TOOL_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def in_ci() -> bool:
    """Return C{True} when running under CI (C{CI=true}), where skips are failures."""
    return os.environ.get("CI") == "true"


def skip_or_fail(testcase: SynchronousTestCase, reason: str) -> NoReturn:
    """
    Skip C{testcase} with C{reason}, or fail it under C{CI=true}.

    @raise unittest.SkipTest: normally.
    @raise SynchronousTestCase.failureException: under CI.
    """
    if in_ci():
        testcase.fail(f"{reason} (a skip is a failure under CI=true)")
    raise unittest.SkipTest(reason)


def require_root(testcase: SynchronousTestCase) -> None:
    """Skip (or fail, under CI) C{testcase} unless the process runs as root."""
    if os.geteuid() != 0:
        skip_or_fail(testcase, "needs root")


def find_tool(name: str) -> str | None:
    """Return the path of the executable C{name}, also looking in the sbin directories."""
    found = shutil.which(name)
    if found is not None:
        return found
    return shutil.which(name, path=os.pathsep.join(_EXTRA_TOOL_DIRS))


def require_tool(testcase: SynchronousTestCase, name: str) -> str:
    """
    Return the path of the executable C{name}; skip (or fail, under CI) if absent.
    """
    found = find_tool(name)
    if found is None:
        skip_or_fail(testcase, f"needs the tool {name!r} (not found on PATH)")
    return found


def _free_port(kind: socket.SocketKind) -> int:
    """Return a port on 127.0.0.1 that the OS just reported as free for C{kind}."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_port() -> int:
    """Return a UDP port on 127.0.0.1 that is free right now (it may be taken later)."""
    return _free_port(socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (it may be taken later)."""
    return _free_port(socket.SOCK_STREAM)


def venv_bin(name: str) -> str:
    """
    Return the path of the tool C{name} next to C{sys.executable}.

    In the project's venv that is C{.venv/bin/NAME} (twistd, trial, ruff, ...).
    C{sys.executable} is not resolved: a venv's python is a symlink to the base
    interpreter, whose directory holds other tools.
    """
    return os.path.join(os.path.dirname(sys.executable), name)
