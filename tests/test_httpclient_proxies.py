# -*- test-case-name: tests.test_httpclient_proxies -*-
"""The HTTP tunnel client through real proxies: Squid 5.7, tinyproxy 1.11, microsocks.

Each test starts its own proxy on a free 127.0.0.1 port with Basic
authentication (see PEERS.md for how these run), and the fake multiplexer
of ``tests/test_httpclient.py`` behind it (echoing every frame, plus frames
of its own, so both directions flow at once).  The proxies are stopped by
their PID; Squid's ``/dev/shm/<name>-cf__*`` files are removed after it.

Squid runs as root (it switches to the user ``proxy``, who owns its
directory); tinyproxy runs as anyone.  Without the tools (or root, for
Squid) the tests skip, and under ``CI=true`` that is a failure.
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

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from smobility.adapters.httpclient import HTTPTunnelTransport, ProxySpec
from tests.test_httpclient import NAME, TOKEN, FakeMux, make_tls, sleep, wait_for
from tests.util import free_tcp_port, require_root, require_tool

USER = "roamer"
PASSWORD = "s3cret:pw"  # a colon: only the first one splits Basic credentials
TINY_PASSWORD = "s3cret-pw"  # tinyproxy's BasicAuth takes only [-A-Za-z0-9._]


class Peer:
    """One proxy process: started with a log file, stopped by its PID."""

    def __init__(self, argv: list[str], directory: Path, port: int) -> None:
        self.argv = argv
        self.directory = directory
        self.port = port
        self.log_path = directory / "output.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until its port accepts connections."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited ({self.proc.returncode}):\n"
                                     f"{self.text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.argv[0]} did not listen on {self.port} within "
                                     f"{timeout} s:\n{self.text()}")
            await sleep(0.1)

    def configure(self) -> None:
        """Write the configuration files."""

    def text(self) -> str:
        """What the process printed (and logged)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our process (its PID only), SIGKILL it if it hangs."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                break
            await sleep(0.05)


def _tempdir(prefix: str) -> Path:
    # Under /tmp, not _trial_temp: the proxy's own user must reach it.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class Squid(Peer):
    """Squid with Basic auth on two ports: ``port`` allows CONNECT, ``no_connect_port`` not."""

    def __init__(self, testcase: TestCase) -> None:
        self.binary = require_tool(testcase, "squid")
        self.htpasswd = require_tool(testcase, "htpasswd")
        require_root(testcase)
        self.helper = "/usr/lib/squid/basic_ncsa_auth"
        if not os.path.exists(self.helper):
            require_tool(testcase, "basic_ncsa_auth")
        self.name = f"smobhc{os.getpid()}x{free_tcp_port()}"
        directory = _tempdir("smob-squid-")
        port, self.no_connect_port = free_tcp_port(), free_tcp_port()
        super().__init__([self.binary, "-N", "-n", self.name, "-f", str(directory / "squid.conf")],
                         directory, port)

    def configure(self) -> None:
        d = self.directory
        subprocess.run([self.htpasswd, "-b", "-c", "-m", str(d / "htpasswd"), USER, PASSWORD],
                       check=True, capture_output=True)
        (d / "squid.conf").write_text(f"""\
http_port 127.0.0.1:{self.port}
http_port 127.0.0.1:{self.no_connect_port}
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{d}/access.log
cache_store_log none
netdb_filename none
pinger_enable off
cache deny all
coredump_dir {d}
cache_effective_user proxy
visible_hostname smob-test
shutdown_lifetime 0 seconds
auth_param basic program {self.helper} {d}/htpasswd
auth_param basic realm smobility-test
auth_param basic children 2
acl authed proxy_auth REQUIRED
acl SSL_ports port 1025-65535
acl Safe_ports port 1025-65535
acl CONNECT method CONNECT
acl no_connect localport {self.no_connect_port}
http_access deny CONNECT !SSL_ports
http_access deny CONNECT no_connect
http_access deny !Safe_ports
http_access allow authed
http_access deny all
""")
        proxy = pwd.getpwnam("proxy")
        for path in [d, *d.iterdir()]:
            os.chown(path, proxy.pw_uid, proxy.pw_gid)

    def text(self) -> str:
        out = super().text()
        try:
            out += (self.directory / "cache.log").read_text(errors="replace")
        except OSError:
            pass
        return out

    def access_log(self) -> str:
        try:
            return (self.directory / "access.log").read_text(errors="replace")
        except OSError:
            return ""

    async def stop(self, timeout: float = 10.0) -> None:
        await super().stop(timeout)
        for path in glob.glob(f"/dev/shm/{self.name}-cf__*"):
            os.unlink(path)


class Tinyproxy(Peer):
    """tinyproxy with Basic auth (in the foreground)."""

    def __init__(self, testcase: TestCase) -> None:
        binary = require_tool(testcase, "tinyproxy")
        directory = _tempdir("smob-tinyproxy-")
        super().__init__([binary, "-d", "-c", str(directory / "tinyproxy.conf")],
                         directory, free_tcp_port())

    def configure(self) -> None:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 600",
            "MaxClients 50",
            "LogLevel Info",
            f"BasicAuth {USER} {TINY_PASSWORD}",
            "DisableViaHeader No",
        ]
        if os.geteuid() == 0:
            lines += ["User nobody", "Group nogroup"]
        (self.directory / "tinyproxy.conf").write_text("\n".join(lines) + "\n")


class Microsocks(Peer):
    """microsocks with a user name and password (a SOCKS5 peer, for the socks5 path)."""

    def __init__(self, testcase: TestCase) -> None:
        binary = require_tool(testcase, "microsocks")
        port = free_tcp_port()
        super().__init__([binary, "-i", "127.0.0.1", "-p", str(port), "-u", USER,
                          "-P", TINY_PASSWORD], _tempdir("smob-microsocks-"), port)


class _ProxyTests(TestCase):
    """Shared set-up: a proxy, the fake multiplexer (TLS and plain), transports."""

    timeout = 60

    def make_peer(self) -> Peer:
        raise NotImplementedError

    async def setUp(self) -> None:  # type: ignore[override]
        self.peer = self.make_peer()
        self.addCleanup(shutil.rmtree, self.peer.directory, True)
        self.peer.configure()
        await self.peer.start()
        self.addCleanup(self.peer.stop)

    async def mux(self, tls: bool, interface: str = "127.0.0.1") -> tuple[FakeMux, Path | None]:
        ca_file = None
        options = None
        if tls:
            ca_file, options = make_tls(Path(self.mktemp()), ["mux.test"])
        mux = FakeMux(echo=True, keepalive=0.5)
        mux.listen(options, interface)
        self.addCleanup(mux.close)
        return mux, ca_file

    def transport(self, mux: FakeMux, ca_file: Path | None, proxy: ProxySpec,
                  **kw: Any) -> tuple[HTTPTunnelTransport, list[tuple[int, bytes]]]:
        got: list[tuple[int, bytes]] = []
        kw.setdefault("host", "127.0.0.1")
        t = HTTPTunnelTransport(
            port=mux.number,
            tls=ca_file is not None, tls_name="mux.test", ca_file=ca_file, name=NAME,
            token=TOKEN, proxy=proxy, reactor=reactor,
            on_datagram=lambda k, d: got.append((k, d)),
            keepalive=1.0, reconnect_initial=0.1, reconnect_max=1.0, connect_timeout=10.0,
            **kw,
        )
        self.addCleanup(t.stop)
        return t, got

    password = PASSWORD

    def spec(self, kind: str, *, password: str | None = "", port: int | None = None
             ) -> ProxySpec:
        """The proxy; C{password} "" is the right one, C{None} none at all."""
        if password == "":
            password = self.password
        return ProxySpec(kind, "127.0.0.1", port or self.peer.port,
                         USER if password is not None else None, password)

    async def both_ways(self, t: HTTPTunnelTransport, mux: FakeMux,
                        got: list[tuple[int, bytes]], n: int = 40) -> None:
        """Frames up and down at the same time; the mux echoes the ones going up."""
        t.start()
        await wait_for(lambda: t.state == "up", f"up ({t.last_error})", 20)
        await wait_for(lambda: t._up is not None, "the upload stream", 10)
        ups = [(2, b"up-%03d" % i + b"\x00" * 900) for i in range(n)]
        downs = [(1, b"down-%03d" % i) for i in range(n)]
        queue_up, queue_down = list(ups), list(downs)

        def tick() -> None:
            if queue_up:
                t.send(*queue_up.pop(0))
            if queue_down:
                mux.push(*queue_down.pop(0))

        loop = LoopingCall(tick)
        loop.start(0.01)
        try:
            await wait_for(lambda: len(mux.up) >= n // 2, "half the frames up", 20)
            # Streaming: the POST carrying them is still open.
            self.assertEqual(mux.post_count, 0)
            await wait_for(lambda: len(mux.up) == n and len(got) == 2 * n,
                           f"all frames (up {len(mux.up)}, down {len(got)})", 20)
        finally:
            if loop.running:
                loop.stop()
        self.assertEqual(mux.up, ups)
        self.assertEqual([f for f in got if f[0] == 1], downs)
        self.assertEqual([f for f in got if f[0] == 2], ups)  # the echoes

    async def refused(self, t: HTTPTunnelTransport) -> str:
        t.start()
        await wait_for(lambda: t.state == "failed", f"failed ({t.last_error})", 20)
        assert t.last_error is not None
        return t.last_error


class SquidTests(_ProxyTests):
    """Squid 5.7: full duplex, CONNECT and plain requests, 407 for bad credentials."""

    peer: Squid

    def make_peer(self) -> Peer:
        return Squid(self)

    async def test_connect_tls(self) -> None:
        """HTTPS to the multiplexer inside Squid's CONNECT, both directions at once."""
        mux, ca = await self.mux(tls=True)
        t, got = self.transport(mux, ca, self.spec("http-connect"))
        await self.both_ways(t, mux, got)
        await t.stop()
        await self.peer.stop()
        self.assertIn(f"CONNECT 127.0.0.1:{mux.number}", self.peer.access_log())

    async def test_plain_requests(self) -> None:
        """http:// as absolute-URI requests through Squid; it streams the chunked POST."""
        mux, _ = await self.mux(tls=False)
        t, got = self.transport(mux, None, self.spec("http-plain"))
        await self.both_ways(t, mux, got)
        self.assertTrue(any(b"squid" in b"".join(h.getRawHeaders(b"Via", []))
                            for _, _, h in mux.requests))

    async def test_connect_refused_then_plain(self) -> None:
        """CONNECT denied (403) with tls off: the client falls back to plain requests."""
        mux, _ = await self.mux(tls=False)
        t, got = self.transport(mux, None,
                                self.spec("http-connect", port=self.peer.no_connect_port))
        await self.both_ways(t, mux, got, n=10)
        self.assertTrue(t.plain)
        self.assertEqual(t.counters["plain_fallbacks"], 1)

    async def test_batch_upload(self) -> None:
        mux, _ = await self.mux(tls=False)
        t, got = self.transport(mux, None, self.spec("http-plain"), upload="batch")
        t.start()
        await wait_for(lambda: t.state == "up", f"up ({t.last_error})", 20)
        for i in range(30):
            t.send(1, b"b%d" % i)
        await wait_for(lambda: len(got) == 30, "30 echoes", 20)
        self.assertEqual(mux.up, [(1, b"b%d" % i) for i in range(30)])

    async def test_wrong_password_connect(self) -> None:
        mux, ca = await self.mux(tls=True)
        t, _ = self.transport(mux, ca, self.spec("http-connect", password="wrong"))
        self.assertEqual(await self.refused(t),
                         f"the HTTP proxy at 127.0.0.1:{self.peer.port} rejected the proxy "
                         "credentials (407 Proxy Authentication Required)")
        self.assertEqual(mux.requests, [])

    async def test_wrong_password_plain(self) -> None:
        mux, _ = await self.mux(tls=False)
        t, _ = self.transport(mux, None, self.spec("http-plain", password="wrong"))
        self.assertEqual(await self.refused(t),
                         f"the HTTP proxy at 127.0.0.1:{self.peer.port} rejected the proxy "
                         "credentials (407 Proxy Authentication Required)")

    async def test_no_credentials(self) -> None:
        mux, ca = await self.mux(tls=True)
        t, _ = self.transport(mux, ca, self.spec("http-connect", password=None))
        self.assertEqual(await self.refused(t),
                         f"the HTTP proxy at 127.0.0.1:{self.peer.port} requires proxy "
                         "credentials (407 Proxy Authentication Required)")


class TinyproxyTests(_ProxyTests):
    """tinyproxy 1.11: half duplex on one request, so one request per direction."""

    password = TINY_PASSWORD

    def make_peer(self) -> Peer:
        return Tinyproxy(self)

    async def test_connect_tls(self) -> None:
        mux, ca = await self.mux(tls=True)
        t, got = self.transport(mux, ca, self.spec("http-connect"))
        await self.both_ways(t, mux, got)

    async def test_plain_requests(self) -> None:
        """Plain requests: the GET streams down while a separate POST streams up."""
        mux, _ = await self.mux(tls=False)
        t, got = self.transport(mux, None, self.spec("http-plain"))
        await self.both_ways(t, mux, got)

    async def test_wrong_password(self) -> None:
        """tinyproxy answers wrong credentials with 401 (not 407)."""
        mux, ca = await self.mux(tls=True)
        t, _ = self.transport(mux, ca, self.spec("http-connect", password="wrong"))
        self.assertEqual(await self.refused(t),
                         f"the HTTP proxy at 127.0.0.1:{self.peer.port} rejected the proxy "
                         "credentials (401 Unauthorized)")

    async def test_wrong_password_plain(self) -> None:
        """In plain mode its 401 is told apart from the multiplexer's by the Basic challenge."""
        mux, _ = await self.mux(tls=False)
        t, _ = self.transport(mux, None, self.spec("http-plain", password="wrong"))
        self.assertEqual(await self.refused(t),
                         f"the HTTP proxy at 127.0.0.1:{self.peer.port} rejected the proxy "
                         "credentials (401 Unauthorized)")

    async def test_no_credentials(self) -> None:
        """Missing credentials: 407."""
        mux, ca = await self.mux(tls=True)
        t, _ = self.transport(mux, ca, self.spec("http-connect", password=None))
        self.assertEqual(await self.refused(t),
                         f"the HTTP proxy at 127.0.0.1:{self.peer.port} requires proxy "
                         "credentials (407 Proxy Authentication Required)")


class MicrosocksTests(_ProxyTests):
    """The socks5 path through microsocks (names resolved by the proxy)."""

    password = TINY_PASSWORD

    def make_peer(self) -> Peer:
        return Microsocks(self)

    async def test_tls(self) -> None:
        mux, ca = await self.mux(tls=True)
        t, got = self.transport(mux, ca, self.spec("socks5"))
        await self.both_ways(t, mux, got)

    async def test_by_name(self) -> None:
        """The multiplexer by name: microsocks resolves "localhost" (to ::1 or 127.0.0.1)."""
        mux, _ = await self.mux(tls=False, interface="::")
        t, got = self.transport(mux, None, self.spec("socks5"), host="localhost")
        await self.both_ways(t, mux, got, n=10)

    async def test_wrong_password(self) -> None:
        mux, ca = await self.mux(tls=True)
        t, _ = self.transport(mux, ca, self.spec("socks5", password="wrong"))
        self.assertEqual(await self.refused(t),
                         f"the SOCKS5 proxy at 127.0.0.1:{self.peer.port} rejected the "
                         "username or password")
