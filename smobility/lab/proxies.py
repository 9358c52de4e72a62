# -*- test-case-name: tests.test_http_roaming -*-
"""The visited network V3's HTTP proxy: Squid with Basic auth, in the lab's proxy host.

Squid is the independent peer (Debian's squid 5.7, PEERS.md): it runs in the
``proxy`` namespace, listens on the proxy host's address, asks every client
for Basic credentials and allows CONNECT to unprivileged ports.  As root it
switches to the user ``proxy``, so its directory belongs to that user; it
leaves ``/dev/shm/<name>-cf__*`` files, removed when it stops.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BASIC_HELPER = "/usr/lib/squid/basic_ncsa_auth"


class ProxyError(Exception):
    """The proxy could not be started; one sentence."""


class Squid:
    """One Squid in a lab namespace, stopped by its PID."""

    def __init__(self, lab: Any, *, role: str, address: str, port: int,
                 user: str, password: str) -> None:  # fmt: skip
        for tool in ("squid", "htpasswd"):
            if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
                raise ProxyError(f"Squid needs the tool {tool!r} (packages squid, apache2-utils)")
        if not os.path.exists(BASIC_HELPER):
            raise ProxyError(f"Squid's Basic auth helper {BASIC_HELPER} is missing")
        self.lab = lab
        self.role = role
        self.address = address
        self.port = port
        self.name = f"smob{os.getpid()}q{port}"
        self.dir = Path(tempfile.mkdtemp(prefix="smob-squid-"))
        self.dir.chmod(0o755)
        self.proc: subprocess.Popen[bytes] | None = None
        squid = shutil.which("squid") or "/usr/sbin/squid"
        subprocess.run(
            [shutil.which("htpasswd") or "htpasswd", "-b", "-c", "-m",
             str(self.dir / "htpasswd"), user, password],
            check=True, capture_output=True,
        )  # fmt: skip
        d = self.dir
        (d / "squid.conf").write_text(
            f"""http_port {address}:{port}
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{d}/access.log
cache_store_log none
netdb_filename none
pinger_enable off
cache deny all
coredump_dir {d}
cache_effective_user proxy
visible_hostname smob-lab-proxy
shutdown_lifetime 0 seconds
read_timeout 15 minutes
auth_param basic program {BASIC_HELPER} {d}/htpasswd
auth_param basic realm smobility-lab
auth_param basic children 2
acl authed proxy_auth REQUIRED
acl SSL_ports port 1025-65535
acl Safe_ports port 1025-65535
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access deny !Safe_ports
http_access allow authed
http_access deny all
"""
        )
        proxy = pwd.getpwnam("proxy")
        for path in [d, *d.iterdir()]:
            os.chown(path, proxy.pw_uid, proxy.pw_gid)
        self.argv = [squid, "-N", "-n", self.name, "-f", str(d / "squid.conf")]

    def start(self, timeout: float = 20.0) -> None:
        """Start Squid and wait until its port accepts connections."""
        with open(self.dir / "output.log", "ab") as out:
            self.proc = self.lab.popen(self.role, *self.argv, stdout=out, stderr=subprocess.STDOUT)
        probe = (
            "import socket,sys\n"
            "try:\n"
            f" socket.create_connection(('{self.address}', {self.port}), timeout=0.5).close()\n"
            "except OSError:\n sys.exit(1)"
        )
        deadline = time.monotonic() + timeout
        import sys

        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ProxyError(
                    f"{self.argv[0]} exited ({self.proc.returncode}): {self.text()[-2000:]}"
                )
            r = self.lab.exec(self.role, sys.executable, "-c", probe, check=False)
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ProxyError(
                    f"Squid did not listen within {timeout:g} s: {self.text()[-2000:]}"
                )
            time.sleep(0.1)

    def text(self) -> str:
        """Squid's output and cache log."""
        out = ""
        for name in ("output.log", "cache.log"):
            try:
                out += (self.dir / name).read_text(errors="replace")
            except OSError:
                pass
        return out

    def access_log(self) -> str:
        """Squid's access log (one line per request)."""
        try:
            return (self.dir / "access.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM our Squid (its PID), SIGKILL if it hangs; remove its files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # Squid names its shared memory after -n: only our instance's files match.
        for path in glob.glob(f"/dev/shm/{self.name}-cf__*"):  # noqa: S108
            os.unlink(path)
        shutil.rmtree(self.dir, ignore_errors=True)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether host:port accepts a TCP connection (from this namespace)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class Tinyproxy:
    """tinyproxy with Basic auth in a lab namespace: the half-duplex variant.

    It streams each direction but holds a response until the request body
    has ended (PEERS.md), which the HTTP transport copes with by using one
    request per direction.
    """

    def __init__(self, lab: Any, *, role: str, address: str, port: int,
                 user: str, password: str) -> None:  # fmt: skip
        binary = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")
        if binary is None:
            raise ProxyError("tinyproxy is missing (package tinyproxy)")
        self.lab = lab
        self.role = role
        self.address = address
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="smob-tinyproxy-"))
        self.dir.chmod(0o755)
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "tinyproxy.conf").write_text(
            "\n".join(
                [
                    f"Port {port}",
                    f"Listen {address}",
                    "Timeout 600",
                    "MaxClients 50",
                    "LogLevel Info",
                    f"BasicAuth {user} {password}",
                    "User nobody",
                    "Group nogroup",
                ]
            )
            + "\n"
        )
        self.argv = [binary, "-d", "-c", str(self.dir / "tinyproxy.conf")]

    def start(self, timeout: float = 20.0) -> None:
        """Start tinyproxy and wait until its port accepts connections."""
        Squid.start(self, timeout)  # type: ignore[arg-type]

    def text(self) -> str:
        """tinyproxy's output."""
        try:
            return (self.dir / "output.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM our tinyproxy (its PID), SIGKILL if it hangs; remove its files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
