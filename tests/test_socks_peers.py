# -*- test-case-name: tests.test_socks_peers -*-
"""SOCKS5 against implementations that are not ours, on loopback (PEERS.md).

- curl (client) through our ingress: right, wrong and missing credentials,
  and a destination other than the multiplexer.
- Our L{SOCKS5ClientEndpoint} through microsocks and through Dante (servers),
  with username/password; Dante checks the system password file, so that
  part runs as root with a throw-away local user.

The "multiplexer" is a small twisted.web page on 127.0.0.1.  Every child
process runs under the reactor and is stopped by its PID.  Missing tools skip
(and fail under C{CI=true}).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.server import Site
from twisted.web.static import Data

from smobility.adapters.socks import (
    SOCKS5ClientEndpoint,
    SOCKS5IngressFactory,
    SOCKSError,
    ThreadedVerifier,
    make_ingress_service,
)
from smobility.store.users import UserStore
from tests.util import free_tcp_port, require_root, require_tool

reactor: Any = _reactor
PAGE = b"smobility multiplexer test page\n"
USER = "roamer"
PASSWORD = "correct horse battery staple"


def clean_env() -> dict[str, str]:
    """The environment without proxy variables (curl must not obey them)."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


class CountingSite(Site):
    """A site that counts the connections it accepted."""

    noisy = False

    def __init__(self, body: bytes) -> None:
        resource = Data(body, "text/plain")
        resource.isLeaf = True
        super().__init__(resource)
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        self.connections += 1
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass


class Child(ProcessProtocol):
    """One child process: its output, its end, a stop by its own PID."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = bytearray()
        self.exited = False
        self.pid: int | None = None

    def start(self, argv: list[str], cwd: str | None = None) -> Child:
        transport = reactor.spawnProcess(self, argv[0], argv, env=clean_env(), path=cwd)
        self.pid = transport.pid
        return self

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.output += data

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.output += data

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        reason.trap(ProcessDone, ProcessTerminated)
        self.exited = True

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; always by this child's PID."""
        for signal_name in ("TERM", "KILL"):
            if self.exited:
                return
            self.transport.signalProcess(signal_name)  # type: ignore[union-attr]
            for _ in range(50):
                if self.exited:
                    return
                await deferLater(reactor, 0.1)


async def wait_for_port(port: int, child: Child, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:C{port}."""
    for _ in range(int(timeout / 0.05)):
        if child.exited:
            raise AssertionError(f"{child.name} exited before listening:\n{child.text()}")
        try:
            proto = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1), Protocol()
            )
        except Exception:  # noqa: S112 - not listening yet
            await deferLater(reactor, 0.05)
            continue
        proto.transport.loseConnection()  # type: ignore[union-attr]
        return
    raise AssertionError(f"{child.name} does not listen on port {port}:\n{child.text()}")


class HTTPGet(Protocol):
    """Sends one HTTP/1.0 GET and collects everything until the close."""

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"GET / HTTP/1.0\r\nHost: mux\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: N802, B008
        self.done.callback(self.received)


class PeerTestCase(TestCase):
    """A web page standing in for the multiplexer, and a user database."""

    timeout = 60

    def setUp(self) -> None:
        self.site = CountingSite(PAGE)
        port: IListeningPort = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.mux_port: int = port.getHost().port  # type: ignore[attr-defined]
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.users = UserStore(self.dir / "mux.sqlite")
        self.addCleanup(self.users.close)
        self.users.add(USER, PASSWORD)

    def start_ingress(self) -> tuple[SOCKS5IngressFactory, int]:
        """Our ingress on a free port of 127.0.0.1, allowing only the page."""
        factory = SOCKS5IngressFactory(
            users=ThreadedVerifier(self.users, reactor),
            allowed=("127.0.0.1", self.mux_port),
            reactor=reactor,
        )
        factory.noisy = False
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    async def get_through(self, proxy_port: int, *, host: str = "127.0.0.1",
                          port: int | None = None, user: str = USER,
                          password: str = PASSWORD) -> bytes:
        """GET / from the page through the SOCKS5 proxy with our client endpoint."""
        endpoint = SOCKS5ClientEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port, timeout=10),
            host, self.mux_port if port is None else port,
            username=user, password=password, timeout=10, reactor=reactor,
        )
        proto = await connectProtocol(endpoint, HTTPGet())
        assert isinstance(proto, HTTPGet)
        return await proto.done

    def assert_page(self, response: bytes) -> None:
        self.assertTrue(response.startswith(b"HTTP/1.0 200 ") or
                        response.startswith(b"HTTP/1.1 200 "), response[:100])
        self.assertTrue(response.endswith(b"\r\n\r\n" + PAGE), response[-200:])


class CurlThroughIngressTests(PeerTestCase):
    """curl, an independent SOCKS5 client, against our ingress."""

    def setUp(self) -> None:
        self.curl = require_tool(self, "curl")
        super().setUp()

    async def curl_get(self, proxy: str, url: str) -> tuple[bytes, str, int]:
        out, err, code = await getProcessOutputAndValue(
            self.curl,
            ["--silent", "--show-error", "--max-time", "15", "--noproxy", "",
             "--socks5-hostname", proxy, url],
            env=clean_env(), reactor=reactor,
        )
        return out, err.decode("utf-8", "replace"), code

    async def test_right_credentials(self) -> None:
        """The page comes back, through the service that the mux tap will use."""
        port = free_tcp_port()
        service = make_ingress_service(
            listen="127.0.0.1", port=port, users=self.users,
            allowed=("127.0.0.1", self.mux_port), reactor=reactor,
        )
        service.startService()
        self.addCleanup(service.stopService)
        out, err, code = await self.curl_get(
            f"{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}",
            f"http://127.0.0.1:{self.mux_port}/",
        )
        self.assertEqual((out, err, code), (PAGE, "", 0))
        factory = service.factory
        assert isinstance(factory, SOCKS5IngressFactory)
        self.assertEqual(factory.counters, {"accepted": 1})

    async def test_wrong_password(self) -> None:
        factory, port = self.start_ingress()
        out, err, code = await self.curl_get(
            f"{USER}:wrong@127.0.0.1:{port}", f"http://127.0.0.1:{self.mux_port}/"
        )
        self.assertEqual(code, 97, err)
        self.assertIn("User was rejected by the SOCKS5 server", err)
        self.assertEqual(out, b"")
        self.assertEqual(factory.counters, {"bad_credentials": 1})
        self.assertEqual(self.site.connections, 0)

    async def test_unknown_user(self) -> None:
        factory, port = self.start_ingress()
        _, err, code = await self.curl_get(
            f"nobody:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}",
            f"http://127.0.0.1:{self.mux_port}/",
        )
        self.assertEqual(code, 97, err)
        self.assertIn("User was rejected by the SOCKS5 server", err)
        self.assertEqual(factory.counters, {"bad_credentials": 1})

    async def test_no_credentials(self) -> None:
        factory, port = self.start_ingress()
        _, err, code = await self.curl_get(
            f"127.0.0.1:{port}", f"http://127.0.0.1:{self.mux_port}/"
        )
        self.assertEqual(code, 97, err)
        self.assertIn("No authentication method was acceptable", err)
        self.assertEqual(factory.counters, {"no_acceptable_method": 1})
        self.assertEqual(self.site.connections, 0)

    async def test_other_destination(self) -> None:
        """A server that listens, but is not the multiplexer: never reached."""
        other = CountingSite(b"not for you\n")
        other_port = reactor.listenTCP(0, other, interface="127.0.0.1")
        self.addCleanup(other_port.stopListening)
        factory, port = self.start_ingress()
        credentials = f"{USER}:{PASSWORD.replace(' ', '%20')}"
        for url in (f"http://127.0.0.1:{other_port.getHost().port}/",
                    f"http://localhost:{self.mux_port}/",
                    f"http://127.0.0.1:{port}/"):
            out, err, code = await self.curl_get(f"{credentials}@127.0.0.1:{port}", url)
            self.assertEqual(code, 97, (url, err))
            self.assertIn("SOCKS5", err)
            self.assertEqual(out, b"")
        self.assertEqual(factory.counters, {"not_allowed": 3})
        self.assertEqual((other.connections, self.site.connections), (0, 0))


class OurClientThroughOurIngressTests(PeerTestCase):
    """Our client endpoint against our ingress over real sockets (threaded scrypt)."""

    async def test_page_and_refusals(self) -> None:
        factory, port = self.start_ingress()
        self.assert_page(await self.get_through(port))
        with self.assertRaises(SOCKSError) as cm:
            await self.get_through(port, password="wrong")
        self.assertEqual(str(cm.exception),
                         f"the SOCKS5 proxy at 127.0.0.1:{port} rejected the username or password")
        with self.assertRaises(SOCKSError) as cm:
            await self.get_through(port, host="mux.example", port=8443)
        self.assertEqual(
            str(cm.exception),
            f"the SOCKS5 proxy at 127.0.0.1:{port} refused the destination mux.example:8443 "
            "(connection not allowed by ruleset)",
        )
        self.assertEqual(factory.counters,
                         {"accepted": 1, "bad_credentials": 1, "not_allowed": 1})


class MicrosocksTests(PeerTestCase):
    """Our client endpoint through microsocks with username/password."""

    async def start_microsocks(self) -> int:
        microsocks = require_tool(self, "microsocks")
        port = free_tcp_port()
        child = Child("microsocks").start(
            [microsocks, "-i", "127.0.0.1", "-p", str(port), "-u", USER, "-P", PASSWORD]
        )
        self.addCleanup(child.stop)
        await wait_for_port(port, child)
        return port

    async def test_page(self) -> None:
        port = await self.start_microsocks()
        self.assert_page(await self.get_through(port))

    async def test_wrong_password(self) -> None:
        port = await self.start_microsocks()
        with self.assertRaises(SOCKSError) as cm:
            await self.get_through(port, password="wrong")
        self.assertEqual(str(cm.exception),
                         f"the SOCKS5 proxy at 127.0.0.1:{port} rejected the username or password")
        self.assertEqual(self.site.connections, 0)


DANTE_CONF = """\
logoutput: stderr
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: username
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    socksmethod: username
}}
"""


def run_checked(argv: list[str], stdin: str | None = None) -> None:
    """Run a short system command (in a thread); raise with its output on failure."""
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")


class DanteTests(PeerTestCase):
    """Our client endpoint through Dante (danted), which checks the system password file."""

    async def start_dante(self) -> tuple[int, str, str]:
        require_root(self)
        danted = require_tool(self, "danted")
        useradd = require_tool(self, "useradd")
        userdel = require_tool(self, "userdel")
        chpasswd = require_tool(self, "chpasswd")
        user = f"smobt{secrets.token_hex(2)}"
        password = secrets.token_urlsafe(12)
        await deferToThread(run_checked, [useradd, "-M", "-s", "/usr/sbin/nologin", user])
        self.addCleanup(deferToThread, run_checked, [userdel, user])
        await deferToThread(run_checked, [chpasswd], f"{user}:{password}\n")
        port = free_tcp_port()
        conf = self.dir / "sockd.conf"
        conf.write_text(DANTE_CONF.format(port=port))
        child = Child("danted").start(
            [danted, "-f", str(conf), "-N", "1", "-p", str(self.dir / "danted.pid")],
            cwd=str(self.dir),
        )
        self.addCleanup(child.stop)
        await wait_for_port(port, child)
        return port, user, password

    async def test_page(self) -> None:
        port, user, password = await self.start_dante()
        self.assert_page(await self.get_through(port, user=user, password=password))

    async def test_wrong_password(self) -> None:
        port, user, _ = await self.start_dante()
        with self.assertRaises(SOCKSError) as cm:
            await self.get_through(port, user=user, password="wrong")
        self.assertEqual(str(cm.exception),
                         f"the SOCKS5 proxy at 127.0.0.1:{port} rejected the username or password")
        self.assertEqual(self.site.connections, 0)

