# -*- test-case-name: tests.test_httpclient -*-
"""The HTTP(S) tunnel client: the CONNECT endpoint in memory, the transport on loopback.

No root and no peers: the transport talks to :class:`FakeMux`, a minimal
multiplexer written here on ``twisted.web.http`` (streaming GET down,
streaming POST up, the statuses of the protocol), which can also pose as a
plain HTTP proxy (absolute-URI requests, ``Proxy-Authorization``), and to
:class:`FakeConnectProxy`, a tiny CONNECT relay.  TLS uses a throwaway CA
made with ``cryptography``.  The real proxies (Squid, tinyproxy) are in
``tests/test_httpclient_proxies.py``.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http
from zope.interface import implementer

from smobility.adapters.httpclient import (
    HTTPConnectEndpoint,
    HTTPTunnelError,
    HTTPTunnelTransport,
    ProxySpec,
)
from smobility.adapters.muxweb import TunnelServer, tls_options
from smobility.adapters.socks import SOCKS5IngressFactory
from smobility.engines.mux import MuxEngine
from smobility.store.tokens import TokenStore
from smobility.wire.httptunnel import FrameDecoder, FrameType, close_frame, encode_frame

TOKEN = bytes(range(16))
NAME = "alice"

# ---------------------------------------------------------------------------
# Helpers shared with tests/test_httpclient_proxies.py


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll C{predicate} on the real reactor until it holds (or fail after C{timeout} s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


async def sleep(seconds: float) -> None:
    """Let the real reactor run for C{seconds}."""
    await deferLater(reactor, seconds, lambda: None)


def make_tls(directory: Path, names: list[str]) -> tuple[Path, ssl.CertificateOptions]:
    """A throwaway CA (its PEM file) and server TLS options for a certificate naming C{names}.

    The server's certificate and key are also left in C{directory} as
    C{cert.pem} and C{key.pem}.
    """
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smobility test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    options = ssl.PrivateCertificate.loadPEM(key_pem + cert_pem).options()
    return ca_file, options


_PATH_RE = re.compile(rb"(?:https?://[^/]+)?/tunnel/([0-9a-f]{32})")


class _MuxRequest(http.Request):
    """One request to the fake multiplexer; a POST body is decoded as it arrives."""

    channel: Any

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        super().gotLength(length)
        self.mux: FakeMux = self.channel.factory.mux
        self.sid: str | None = None
        self.decoder = FrameDecoder()
        self.body_chunked = length is None
        command, path = self.channel._command, self.channel._path
        if command == b"POST" and self.mux.check(path, self.requestHeaders)[0] == 0:
            m = _PATH_RE.fullmatch(path)
            assert m is not None
            self.sid = m.group(1).decode()

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self.sid is None:
            super().handleContentChunk(data)
            return
        self.mux.up_chunks += 1
        for frame in self.decoder.feed(data):
            self.mux.frame_up(self.sid, frame.type, frame.payload)

    def process(self) -> None:
        mux = self.mux
        mux.requests.append((self.method, self.uri, self.requestHeaders.copy()))
        if self.method == b"CONNECT":
            self.setResponseCode(403 if mux.refuse_connect else 405)
            self.finish()
            return
        status, extra = mux.check(self.uri, self.requestHeaders)
        if status:
            self.setResponseCode(status)
            for k, v in extra.items():
                self.setHeader(k, v)
            self.write(b"refused\n")
            self.finish()
            return
        m = _PATH_RE.fullmatch(self.uri)
        assert m is not None
        sid = m.group(1).decode()
        if self.method == b"GET":
            mux.open_get(sid, self)
        elif self.method == b"POST":
            mux.post_count += 1
            mux.post_chunked.append(self.body_chunked)
            if self.sid is None:  # not streamed (cannot happen) or batched: decode now
                assert self.content is not None
                for frame in self.decoder.feed(self.content.read()):
                    mux.frame_up(sid, frame.type, frame.payload)
            self.setResponseCode(204)
            self.finish()
        else:
            self.setResponseCode(405)
            self.finish()


class _MuxChannel(http.HTTPChannel):
    requestFactory = _MuxRequest


class _MuxFactory(http.HTTPFactory):
    protocol = _MuxChannel  # type: ignore[assignment]

    def __init__(self, mux: FakeMux) -> None:
        super().__init__(timeout=None)  # type: ignore[arg-type]
        self.mux = mux


class FakeMux:
    """A minimal multiplexer speaking the tunnel protocol (and, if asked, posing as a proxy).

    @ivar up: the MIP/ESP frames received, as C{(type, payload)}.
    @ivar gets: the GET requests whose stream is open.
    """

    def __init__(self, *, keepalive: float = 0.2, send_keepalives: bool = True,
                 echo: bool = False, proxy_auth: tuple[str, str] | None = None,
                 refuse_connect: bool = False, status: int = 0) -> None:
        self.keepalive = keepalive
        self.send_keepalives = send_keepalives
        self.echo = echo
        self.proxy_auth = proxy_auth
        self.refuse_connect = refuse_connect
        self.status = status  # force this status on every tunnel request
        self.owners: dict[str, str] = {}
        self.gets: list[http.Request] = []
        self.get_count = 0
        self.post_count = 0
        self.post_chunked: list[bool] = []
        self.up_chunks = 0
        self.up: list[tuple[int, bytes]] = []
        self.up_keepalives = 0
        self.up_closes: list[str] = []
        self.requests: list[tuple[bytes, bytes, Any]] = []
        self.port: IListeningPort | None = None
        self.number = 0
        """The TCP port it listens on."""
        self._loops: list[LoopingCall] = []

    def listen(self, tls: ssl.CertificateOptions | None = None,
               interface: str = "127.0.0.1") -> int:
        """Listen on C{interface} (a free port); return the port."""
        factory = _MuxFactory(self)
        r: Any = reactor
        if tls is None:
            self.port = r.listenTCP(0, factory, interface=interface)
        else:
            self.port = r.listenSSL(0, factory, tls, interface=interface)
        host: Any = self.port.getHost()
        self.number = int(host.port)
        return self.number

    def check(self, path: bytes, headers: Any) -> tuple[int, dict[bytes, bytes]]:
        """0 for an accepted tunnel request, else the status and extra headers."""
        if self.proxy_auth is not None:
            want = b"Basic " + base64.b64encode(":".join(self.proxy_auth).encode())
            got = headers.getRawHeaders(b"Proxy-Authorization", [None])[0]
            if got != want:
                return 407, {b"Proxy-Authenticate": b'Basic realm="fake"'}
        if self.status:
            extra = {b"WWW-Authenticate": b"Smobility"} if self.status == 401 else {}
            return self.status, extra
        m = _PATH_RE.fullmatch(path)
        if m is None:
            return 404, {}
        auth = headers.getRawHeaders(b"Authorization", [b""])[0]
        if auth != f"Smobility {NAME}:{TOKEN.hex()}".encode():
            return 401, {b"WWW-Authenticate": b"Smobility"}
        sid = m.group(1).decode()
        if self.owners.setdefault(sid, NAME) != NAME:
            return 403, {}
        return 0, {}

    def open_get(self, sid: str, request: http.Request) -> None:
        self.get_count += 1
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.write(encode_frame(FrameType.KEEPALIVE))  # the headers go out now
        self.gets.append(request)
        loop = LoopingCall(self._keepalive, request)
        if self.send_keepalives:
            self._loops.append(loop)
            loop.start(self.keepalive, now=False)

        def gone(_: object) -> None:
            if request in self.gets:
                self.gets.remove(request)
            if loop.running:
                loop.stop()

        request.notifyFinish().addBoth(gone)

    def _keepalive(self, request: http.Request) -> None:
        if request in self.gets:
            request.write(encode_frame(FrameType.KEEPALIVE))

    def frame_up(self, sid: str, kind: int, payload: bytes) -> None:
        if kind == FrameType.KEEPALIVE:
            self.up_keepalives += 1
        elif kind == FrameType.CLOSE:
            self.up_closes.append(payload.decode())
        else:
            self.up.append((kind, payload))
            if self.echo:
                self.push(kind, payload)

    def push(self, kind: int, payload: bytes) -> None:
        """Send a frame down every open GET."""
        for request in list(self.gets):
            request.write(encode_frame(kind, payload))

    def push_raw(self, data: bytes) -> None:
        for request in list(self.gets):
            request.write(data)

    def end_gets(self) -> None:
        """End every open GET cleanly (the chunked body ends)."""
        for request in list(self.gets):
            self.gets.remove(request)
            request.finish()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for request in list(self.gets):
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
        self.gets.clear()
        if self.port is not None:
            await self.port.stopListening()  # type: ignore[misc]
            self.port = None


class _ConnectRelay(Protocol):
    """A tiny HTTP CONNECT proxy (one connection): Basic auth, then a byte relay."""

    transport: Any

    def __init__(self, proxy: FakeConnectProxy) -> None:
        self.proxy = proxy
        self.buffer = b""
        self.peer: Protocol | None = None
        self.relaying = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.relaying:
            assert self.peer is not None and self.peer.transport is not None
            self.peer.transport.write(data)
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        self.proxy.heads.append(head)
        method, target, _ = lines[0].split(b" ")
        want = b"Basic " + base64.b64encode(b"u:p")
        if not any(line.lower() == b"proxy-authorization: " + want.lower() for line in lines):
            self.transport.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=\"x\"\r\n"
                                 b"Content-Length: 0\r\n\r\n")
            self.transport.loseConnection()
            return
        host, _, port = target.decode().rpartition(":")
        relay = self

        class Back(Protocol):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                relay.transport.write(data)

            def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
                relay.transport.loseConnection()

        def up(p: Protocol) -> None:
            self.peer = p
            self.relaying = True
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if self.buffer:
                assert p.transport is not None
                p.transport.write(self.buffer)

        def down(f: Failure) -> None:
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()

        self.transport.pauseProducing()
        d = TCP4ClientEndpoint(reactor, host, int(port)).connect(Factory.forProtocol(Back))
        d.addCallbacks(up, down).addBoth(lambda _: self.transport.resumeProducing())

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class FakeConnectProxy:
    """CONNECT relay on 127.0.0.1 that wants Basic u:p."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.port: Any = None

    def listen(self) -> int:
        factory = Factory()
        factory.buildProtocol = lambda addr: _ConnectRelay(self)  # type: ignore[method-assign]
        r: Any = reactor
        self.port = r.listenTCP(0, factory, interface="127.0.0.1")
        return int(self.port.getHost().port)


# ---------------------------------------------------------------------------
# The CONNECT endpoint, in memory

PROXY_ADDR = IPv4Address("TCP", "10.0.3.1", 3128)


@implementer(IStreamClientEndpoint)
class MemoryProxyEndpoint:
    """A proxy endpoint whose connection is a StringTransport."""

    _hostText = "10.0.3.1"
    _port = 3128

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.protocol: IProtocol | None = None
        self.transport = StringTransport(peerAddress=PROXY_ADDR)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.refuse:
            return fail(ConnectionRefusedError())
        p = factory.buildProtocol(PROXY_ADDR)
        assert p is not None
        p.makeConnection(self.transport)
        self.protocol = p
        return succeed(p)


class Recorder(Protocol):
    """The protocol handed over after CONNECT: records what it gets."""

    def __init__(self) -> None:
        self.data = b""
        self.made = False
        self.lost: Failure | None = None

    def connectionMade(self) -> None:  # noqa: N802
        self.made = True

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.lost = reason


class ConnectEndpointTests(SynchronousTestCase):
    """HTTPConnectEndpoint against an in-memory proxy."""

    def connect(self, username: str | None = "u", password: str | None = "p:w",
                refuse: bool = False) -> tuple[MemoryProxyEndpoint, Deferred[IProtocol],
                                               Recorder, Clock]:
        proxy = MemoryProxyEndpoint(refuse)
        clock = Clock()
        ep = HTTPConnectEndpoint(proxy, "mux.example", 8443, username, password,
                                 timeout=10, reactor=clock)
        rec = Recorder()
        d = ep.connect(Factory.forProtocol(lambda: rec))
        return proxy, d, rec, clock

    def test_request(self) -> None:
        """CONNECT host:port with Host and Basic Proxy-Authorization (password with a colon)."""
        proxy, d, rec, _ = self.connect()
        sent = proxy.transport.value()
        self.assertTrue(sent.startswith(b"CONNECT mux.example:8443 HTTP/1.1\r\n"))
        self.assertIn(b"\r\nHost: mux.example:8443\r\n", sent)
        self.assertIn(b"\r\nProxy-Authorization: Basic " + base64.b64encode(b"u:p:w") + b"\r\n",
                      sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n"))
        self.assertNoResult(d)

    def test_no_credentials(self) -> None:
        proxy, d, _, _ = self.connect(None, None)
        self.assertNotIn(b"Proxy-Authorization", proxy.transport.value())

    def test_200_hands_over(self) -> None:
        """On 200 the wrapped protocol is connected and gets the bytes after the answer."""
        proxy, d, rec, clock = self.connect()
        assert proxy.protocol is not None
        proxy.transport.clear()
        proxy.protocol.dataReceived(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nhel")
        self.assertIs(self.successResultOf(d), rec)
        self.assertTrue(rec.made)
        self.assertEqual(rec.data, b"hel")
        proxy.protocol.dataReceived(b"lo")
        self.assertEqual(rec.data, b"hello")
        assert rec.transport is not None
        rec.transport.write(b"up")
        self.assertEqual(proxy.transport.value(), b"up")
        self.assertEqual(clock.getDelayedCalls(), [])  # the answer timer is gone
        proxy.protocol.connectionLost(Failure(Exception("bye")))
        self.assertIsNotNone(rec.lost)

    def test_byte_at_a_time(self) -> None:
        proxy, d, rec, _ = self.connect()
        assert proxy.protocol is not None
        for b in b"HTTP/1.0 200 OK\r\n\r\nX":
            proxy.protocol.dataReceived(bytes([b]))
        self.assertIs(self.successResultOf(d), rec)
        self.assertEqual(rec.data, b"X")

    def refused(self, answer: bytes, **kw: Any) -> HTTPTunnelError:
        proxy, d, rec, _ = self.connect(**kw)
        assert proxy.protocol is not None
        proxy.protocol.dataReceived(answer)
        err = self.failureResultOf(d, HTTPTunnelError).value
        assert isinstance(err, HTTPTunnelError)
        self.assertTrue(proxy.transport.disconnecting)
        self.assertFalse(rec.made)
        return err

    def test_407(self) -> None:
        err = self.refused(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                           b"Proxy-Authenticate: Basic realm=\"squid\"\r\n"
                           b"Content-Length: 3\r\n\r\nabc")
        self.assertEqual(str(err), "the HTTP proxy at 10.0.3.1:3128 rejected the proxy "
                                   "credentials (407 Proxy Authentication Required)")
        self.assertEqual(err.status, 407)
        self.assertTrue(err.permanent)

    def test_407_without_credentials(self) -> None:
        err = self.refused(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                           username=None, password=None)
        self.assertEqual(str(err), "the HTTP proxy at 10.0.3.1:3128 requires proxy "
                                   "credentials (407 Proxy Authentication Required)")

    def test_401_tinyproxy(self) -> None:
        """tinyproxy answers wrong credentials with 401: still the proxy's refusal."""
        err = self.refused(b"HTTP/1.0 401 Unauthorized\r\n\r\n")
        self.assertEqual(str(err), "the HTTP proxy at 10.0.3.1:3128 rejected the proxy "
                                   "credentials (401 Unauthorized)")

    def test_502(self) -> None:
        err = self.refused(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(str(err), "the HTTP proxy at 10.0.3.1:3128 refused to connect to "
                                   "mux.example:8443 (502 Bad Gateway)")
        self.assertFalse(err.permanent)
        self.assertTrue(err.connect_refused)

    def test_403_is_permanent(self) -> None:
        err = self.refused(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        self.assertTrue(err.permanent)
        self.assertTrue(err.connect_refused)

    def test_garbage(self) -> None:
        err = self.refused(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        self.assertEqual(str(err), "the HTTP proxy at 10.0.3.1:3128 sent a malformed answer "
                                   "to CONNECT ('SSH-2.0-OpenSSH_9.2')")

    def test_oversized(self) -> None:
        err = self.refused(b"HTTP/1.1 200 OK\r\n" + b"X-Junk: y\r\n" * 3000)
        self.assertIn("oversized answer", str(err))

    def test_closed_before_answer(self) -> None:
        proxy, d, _, _ = self.connect()
        assert proxy.protocol is not None
        proxy.protocol.dataReceived(b"HTTP/1.1 200")
        proxy.protocol.connectionLost(Failure(Exception("reset")))
        err = self.failureResultOf(d, HTTPTunnelError).value
        self.assertEqual(str(err), "the HTTP proxy at 10.0.3.1:3128 closed the connection "
                                   "before answering CONNECT")

    def test_timeout(self) -> None:
        proxy, d, _, clock = self.connect()
        clock.advance(10)
        err = self.failureResultOf(d, HTTPTunnelError).value
        self.assertEqual(str(err), "the HTTP proxy at 10.0.3.1:3128 did not answer CONNECT "
                                   "within 10 s")
        self.assertTrue(proxy.transport.disconnecting)

    def test_cancel(self) -> None:
        proxy, d, _, clock = self.connect()
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(proxy.transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_proxy_unreachable(self) -> None:
        _, d, _, _ = self.connect(refuse=True)
        err = self.failureResultOf(d, HTTPTunnelError).value
        self.assertEqual(str(err), "cannot connect to the HTTP proxy at 10.0.3.1:3128: "
                                   "connection refused")

    def test_bad_arguments(self) -> None:
        proxy = MemoryProxyEndpoint()
        self.assertRaises(ValueError, HTTPConnectEndpoint, proxy, "a\r\nb", 1)
        self.assertRaises(ValueError, HTTPConnectEndpoint, proxy, "a", 0)
        self.assertRaises(ValueError, HTTPConnectEndpoint, proxy, "a", 1, "u", None)
        ep = HTTPConnectEndpoint(proxy, "a", 1, "u", "secret")
        self.assertNotIn("secret", repr(ep))


class ProxySpecTests(SynchronousTestCase):
    """ProxySpec checks its fields and hides the password."""

    def test_repr_hides_password(self) -> None:
        spec = ProxySpec("http-connect", "10.0.3.1", 3128, "u", "hunter2")
        self.assertNotIn("hunter2", repr(spec))
        self.assertIn("'u'", repr(spec))
        self.assertEqual(spec.label, "the HTTP proxy at 10.0.3.1:3128")
        self.assertEqual(ProxySpec("socks5", "::1", 1080, "u", "p").label,
                         "the SOCKS5 proxy at [::1]:1080")

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, ProxySpec, "ftp", "h", 1)
        self.assertRaises(ValueError, ProxySpec, "http-connect", "h", 0)
        self.assertRaises(ValueError, ProxySpec, "http-connect", "h", 1, "u")
        self.assertRaises(ValueError, ProxySpec, "socks5", "h", 1)
        self.assertRaises(ValueError, ProxySpec, "http-plain", "h", 1, "a:b", "p")

    def test_transport_arguments(self) -> None:
        kw: dict[str, Any] = dict(
            host="127.0.0.1", port=1, tls=False, tls_name=None, ca_file=None, name=NAME,
            token=TOKEN, proxy=None, reactor=Clock(), on_datagram=lambda k, d: None,
        )
        HTTPTunnelTransport(**kw)
        self.assertRaises(ValueError, HTTPTunnelTransport, **{**kw, "name": "a b"})
        self.assertRaises(ValueError, HTTPTunnelTransport, **{**kw, "token": b""})
        self.assertRaises(ValueError, HTTPTunnelTransport, **{**kw, "upload": "x"})
        e = self.assertRaises(ValueError, HTTPTunnelTransport, **{
            **kw, "tls": True, "proxy": ProxySpec("http-plain", "h", 3128)})
        self.assertIn("tls = false", str(e))
        e = self.assertRaises(ValueError, HTTPTunnelTransport, **{
            **kw, "tls": True, "ca_file": Path("/nonexistent/ca.pem")})
        self.assertIn("/nonexistent/ca.pem", str(e))

    def test_send_checks(self) -> None:
        t = HTTPTunnelTransport(
            host="127.0.0.1", port=1, tls=False, tls_name=None, ca_file=None, name=NAME,
            token=TOKEN, proxy=None, reactor=Clock(), on_datagram=lambda k, d: None)
        self.assertRaises(ValueError, t.send, 3, b"")
        t.send(2, b"x" * 16385)
        self.assertEqual(t.counters["dropped_oversize"], 1)
        t.send(2, b"x" * 16384)
        self.assertEqual(t.queued_bytes, 16387)


# ---------------------------------------------------------------------------
# The transport against the fake multiplexer, on loopback


class TransportTests(TestCase):
    """HTTPTunnelTransport end to end on 127.0.0.1."""

    timeout = 30

    async def mux(self, **kw: Any) -> FakeMux:
        tls = kw.pop("tls", None)
        mux = FakeMux(**kw)
        mux.listen(tls)
        self.addCleanup(mux.close)
        return mux

    def transport(self, port: int, **kw: Any) -> tuple[HTTPTunnelTransport, list[tuple[int, bytes]],
                                                      list[tuple[str, str | None]]]:
        got: list[tuple[int, bytes]] = []
        states: list[tuple[str, str | None]] = []
        args: dict[str, Any] = dict(
            host="127.0.0.1", port=port, tls=False, tls_name=None, ca_file=None, name=NAME,
            token=TOKEN, proxy=None, reactor=reactor,
            on_datagram=lambda k, d: got.append((k, d)),
            on_state=lambda s, r: states.append((s, r)),
            keepalive=0.5, reconnect_initial=0.05, reconnect_max=0.2, connect_timeout=5.0,
        )
        args.update(kw)
        t = HTTPTunnelTransport(**args)
        self.addCleanup(t.stop)
        return t, got, states

    async def test_frames_both_ways(self) -> None:
        """Frames go up in a streaming POST and come down in the GET's stream."""
        mux = await self.mux()
        t, got, states = self.transport(mux.number)
        t.start()
        self.assertEqual(t.state, "connecting")
        await wait_for(lambda: t.state == "up", "up")
        assert t.session is not None and re.fullmatch("[0-9a-f]{32}", t.session)
        t.send(1, b"registration")
        t.send(2, b"\x00\x00\x10\x01esp")
        await wait_for(lambda: len(mux.up) == 2, "two frames up")
        self.assertEqual(mux.up, [(1, b"registration"), (2, b"\x00\x00\x10\x01esp")])
        self.assertEqual(mux.post_chunked, [])  # the POST is still streaming
        mux.push(2, b"reply-esp")
        mux.push(1, b"reply-mip")
        await wait_for(lambda: len(got) == 2, "two frames down")
        self.assertEqual(got, [(2, b"reply-esp"), (1, b"reply-mip")])
        self.assertEqual(states, [("connecting", None), ("up", None)])
        self.assertEqual(t.counters["frames_up"], 2)
        self.assertEqual(t.counters["frames_down"], 2)
        self.assertEqual(t.counters["get_requests"], 1)
        self.assertEqual(t.counters["post_requests"], 1)
        methods = [m for m, _, _ in mux.requests]
        self.assertEqual(methods, [b"GET"])
        headers = mux.requests[0][2]
        self.assertEqual(headers.getRawHeaders(b"Authorization"),
                         [f"Smobility alice:{TOKEN.hex()}".encode()])
        self.assertIsNone(headers.getRawHeaders(b"Proxy-Authorization"))
        await t.stop()
        self.assertEqual(t.state, "down")
        await wait_for(lambda: mux.up_closes == ["client stopped"], "CLOSE up")
        self.assertEqual(mux.post_chunked, [True])

    async def test_reconnect_after_get_ends(self) -> None:
        """The multiplexer (or a proxy) ends the GET: the client comes back by itself."""
        mux = await self.mux()
        t, got, states = self.transport(mux.number)
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        session = t.session
        mux.end_gets()
        await wait_for(lambda: mux.get_count == 2 and t.state == "up", "up again")
        self.assertEqual(t.session, session)
        self.assertEqual([s for s, _ in states], ["connecting", "up", "down", "connecting", "up"])
        self.assertEqual(states[2][1], f"the multiplexer at 127.0.0.1:{mux.number} "
                                       "ended the download stream")
        self.assertEqual(t.counters["reconnects"], 1)
        t.send(2, b"after")
        mux.push(2, b"down-after")
        await wait_for(lambda: (2, b"after") in mux.up and (2, b"down-after") in got, "frames")

    async def test_queue_while_down_is_bounded(self) -> None:
        """Frames queue until the tunnel is up, up to queue_limit bytes; the rest are counted."""
        mux = await self.mux()
        t, _, _ = self.transport(mux.number, queue_limit=10_000)
        for i in range(20):
            t.send(2, bytes([i]) * 997)  # 1000-byte frames
        self.assertEqual(t.counters["dropped_queue_full"], 10)
        self.assertEqual(t.counters["frames_up"], 10)
        self.assertEqual(t.queued_bytes, 10_000)
        t.start()
        await wait_for(lambda: len(mux.up) == 10, "the queued frames")
        self.assertEqual(mux.up, [(2, bytes([i]) * 997) for i in range(10)])
        self.assertEqual(t.queued_bytes, 0)

    async def test_keepalives(self) -> None:
        """Idle: KEEPALIVE frames go up every `keepalive` s, and those coming down are counted."""
        mux = await self.mux(keepalive=0.1)
        t, _, _ = self.transport(mux.number, keepalive=0.2)
        t.start()
        await wait_for(lambda: mux.up_keepalives >= 3, "keepalives up")
        self.assertGreaterEqual(t.counters["keepalives_down"], 3)
        self.assertEqual(t.counters["stalls"], 0)
        self.assertEqual(mux.get_count, 1)

    async def test_stall(self) -> None:
        """Nothing down for 3 x keepalive: the GET is dropped and opened again."""
        mux = await self.mux(send_keepalives=False)
        t, _, states = self.transport(mux.number, keepalive=0.1)
        t.start()
        await wait_for(lambda: mux.get_count >= 2, "a second GET")
        self.assertGreaterEqual(t.counters["stalls"], 1)
        self.assertIn(("down", f"nothing came down from the multiplexer at 127.0.0.1:"
                               f"{mux.number} for 0.3 s"), states)

    async def test_401_fails(self) -> None:
        """A refused credential is final: "failed" with the sentence, no retry."""
        mux = await self.mux()
        port = mux.number
        t, _, states = self.transport(port, token=b"wrong")
        t.start()
        await wait_for(lambda: t.state == "failed", "failed")
        sentence = f"the multiplexer at 127.0.0.1:{port} refused the client credential (401)"
        self.assertEqual(states[-1], ("failed", sentence))
        self.assertEqual(t.last_error, sentence)
        await sleep(0.3)
        self.assertEqual(mux.get_count + len(mux.requests), 1)
        t.send(1, b"x")
        self.assertEqual(t.counters["dropped_failed"], 1)

    async def test_404_fails(self) -> None:
        mux = await self.mux(status=404)
        t, _, _ = self.transport(mux.number)
        t.start()
        await wait_for(lambda: t.state == "failed", "failed")
        assert t.last_error is not None
        self.assertIn("does not serve the tunnel path (404)", t.last_error)

    async def test_503_retries(self) -> None:
        """Too many sessions is passing: the client keeps trying."""
        mux = await self.mux(status=503)
        t, _, states = self.transport(mux.number)
        t.start()
        await wait_for(lambda: len(mux.requests) >= 3, "three attempts")
        self.assertEqual(t.state in ("down", "connecting"), True)
        assert t.last_error is not None
        self.assertTrue(t.last_error.endswith("has too many sessions (503)"))
        mux.status = 0
        await wait_for(lambda: t.state == "up", "up")

    async def test_refused_connection_retries(self) -> None:
        mux = await self.mux()
        port = mux.number
        await mux.close()
        t, _, states = self.transport(port)
        t.start()
        await wait_for(lambda: t.counters["reconnects"] >= 2, "retries")
        self.assertEqual(t.last_error,
                         f"cannot connect to the multiplexer at 127.0.0.1:{port}: "
                         "connection refused")

    async def test_close_frame_down(self) -> None:
        mux = await self.mux()
        t, _, states = self.transport(mux.number)
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        mux.push_raw(close_frame("shutting down"))
        await wait_for(lambda: mux.get_count == 2 and t.state == "up", "back up")
        self.assertIn("closed the session (shutting down)", states[2][1] or "")

    async def test_malformed_frame_down(self) -> None:
        mux = await self.mux()
        t, _, states = self.transport(mux.number)
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        mux.push_raw(b"\x09\x00\x00")
        await wait_for(lambda: mux.get_count == 2 and t.state == "up", "back up")
        self.assertIn("sent a malformed frame", states[2][1] or "")

    async def test_post_rotates_by_size(self) -> None:
        """A POST ends after post_max_bytes; its successor takes over, nothing is lost."""
        mux = await self.mux()
        t, _, _ = self.transport(mux.number, post_max_bytes=3000)
        t.start()
        await wait_for(lambda: t.state == "up" and t.counters["post_requests"] == 1, "up")
        await sleep(0.1)
        sent = [(2, bytes([i]) * 500) for i in range(30)]
        for i, (k, d) in enumerate(sent):
            t.send(k, d)
            if i % 5 == 4:
                await sleep(0.02)
        await wait_for(lambda: len(mux.up) == 30, "30 frames")
        self.assertEqual(sorted(mux.up), sorted(sent))
        await wait_for(lambda: t.counters["post_ok"] >= 3, "three POSTs answered")
        self.assertGreaterEqual(mux.post_count, 3)

    async def test_post_rotates_by_time(self) -> None:
        mux = await self.mux()
        t, _, _ = self.transport(mux.number, post_max_seconds=0.2, keepalive=0.1)
        t.start()
        await wait_for(lambda: mux.post_count >= 3, "three POSTs answered")
        t.send(1, b"still")
        await wait_for(lambda: (1, b"still") in mux.up, "a frame")

    async def test_batch_mode(self) -> None:
        """upload="batch": one POST with a Content-Length per batch."""
        mux = await self.mux()
        t, _, _ = self.transport(mux.number, upload="batch")
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        for i in range(50):
            t.send(1, b"m%d" % i)
        await wait_for(lambda: len(mux.up) == 50, "50 frames")
        self.assertEqual(mux.up, [(1, b"m%d" % i) for i in range(50)])
        self.assertTrue(mux.post_chunked)
        self.assertNotIn(True, mux.post_chunked)
        self.assertLess(mux.post_count, 50)

    async def test_plain_proxy_requests(self) -> None:
        """http-plain: absolute URIs and Proxy-Authorization (the fake mux poses as the proxy)."""
        mux = await self.mux(proxy_auth=("u", "p"), echo=True)
        port = mux.number
        t, got, _ = self.transport(port, proxy=ProxySpec("http-plain", "127.0.0.1", port,
                                                          "u", "p"))
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        t.send(2, b"ping")
        await wait_for(lambda: got == [(2, b"ping")], "echo")
        method, uri, headers = mux.requests[0]
        self.assertEqual(uri, f"http://127.0.0.1:{port}/tunnel/{t.session}".encode())
        self.assertEqual(headers.getRawHeaders(b"Proxy-Authorization"),
                         [b"Basic " + base64.b64encode(b"u:p")])

    async def test_plain_proxy_wrong_password(self) -> None:
        mux = await self.mux(proxy_auth=("u", "p"))
        port = mux.number
        t, _, _ = self.transport(port, proxy=ProxySpec("http-plain", "127.0.0.1", port,
                                                        "u", "wrong"))
        t.start()
        await wait_for(lambda: t.state == "failed", "failed")
        self.assertEqual(t.last_error, f"the HTTP proxy at 127.0.0.1:{port} rejected the proxy "
                                       "credentials (407 Proxy Authentication Required)")

    async def test_connect_refused_falls_back_to_plain(self) -> None:
        """tls off and CONNECT refused: plain requests through the same proxy."""
        mux = await self.mux(proxy_auth=("u", "p"), refuse_connect=True, echo=True)
        port = mux.number
        t, got, _ = self.transport(port, proxy=ProxySpec("http-connect", "127.0.0.1", port,
                                                          "u", "p"))
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        self.assertTrue(t.plain)
        self.assertEqual(t.counters["plain_fallbacks"], 1)
        self.assertEqual(mux.requests[0][0], b"CONNECT")
        t.send(1, b"hello")
        await wait_for(lambda: got == [(1, b"hello")], "echo")

    async def test_tls_through_connect_proxy(self) -> None:
        """TLS to the multiplexer inside an HTTP CONNECT tunnel (a tiny in-test proxy)."""
        ca_file, options = make_tls(Path(self.mktemp()), ["mux.test"])
        mux = await self.mux(tls=options, echo=True)
        proxy = FakeConnectProxy()
        pport = proxy.listen()
        self.addCleanup(proxy.port.stopListening)
        t, got, _ = self.transport(
            mux.number, tls=True, tls_name="mux.test", ca_file=ca_file,
            proxy=ProxySpec("http-connect", "127.0.0.1", pport, "u", "p"))
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        for i in range(20):
            t.send(2, b"e%d" % i)
        await wait_for(lambda: len(got) == 20, "20 echoes")
        self.assertEqual(got, [(2, b"e%d" % i) for i in range(20)])
        self.assertTrue(proxy.heads[0].startswith(
            f"CONNECT 127.0.0.1:{mux.number} HTTP/1.1".encode()))
        # The proxy credential stays in CONNECT; the tunnel requests never carry it.
        for _, _, headers in mux.requests:
            self.assertIsNone(headers.getRawHeaders(b"Proxy-Authorization"))

    async def test_connect_proxy_wrong_password(self) -> None:
        proxy = FakeConnectProxy()
        pport = proxy.listen()
        self.addCleanup(proxy.port.stopListening)
        t, _, _ = self.transport(1, proxy=ProxySpec("http-connect", "127.0.0.1", pport,
                                                     "u", "bad"), tls=True, tls_name="x")
        t.start()
        await wait_for(lambda: t.state == "failed", "failed")
        self.assertEqual(t.last_error, f"the HTTP proxy at 127.0.0.1:{pport} rejected the proxy "
                                       "credentials (407 Proxy Authentication Required)")

    def socks_ingress(self, mux: FakeMux) -> int:
        """Our own SOCKS5 ingress (user u, password p) in front of C{mux}."""

        class Users:
            def verify(self, name: bytes, password: bytes) -> bool:
                return (name, password) == (b"u", b"p")

        factory = SOCKS5IngressFactory(users=Users(), allowed=("127.0.0.1", mux.number),
                                       reactor=reactor)
        r: Any = reactor
        port = r.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def test_tls_through_socks5(self) -> None:
        """TLS to the multiplexer through a SOCKS5 proxy (user name and password)."""
        ca_file, options = make_tls(Path(self.mktemp()), ["mux.test"])
        mux = await self.mux(tls=options, echo=True)
        sport = self.socks_ingress(mux)
        t, got, _ = self.transport(mux.number, tls=True, tls_name="mux.test", ca_file=ca_file,
                                   proxy=ProxySpec("socks5", "127.0.0.1", sport, "u", "p"))
        t.start()
        await wait_for(lambda: t.state == "up", f"up ({t.last_error})")
        t.send(2, b"via socks")
        await wait_for(lambda: got == [(2, b"via socks")], "echo")

    async def test_socks5_wrong_password(self) -> None:
        mux = await self.mux()
        sport = self.socks_ingress(mux)
        t, _, _ = self.transport(mux.number,
                                 proxy=ProxySpec("socks5", "127.0.0.1", sport, "u", "bad"))
        t.start()
        await wait_for(lambda: t.state == "failed", "failed")
        self.assertEqual(t.last_error, f"the SOCKS5 proxy at 127.0.0.1:{sport} rejected the "
                                       "username or password")

    async def test_tls_right_name(self) -> None:
        ca_file, options = make_tls(Path(self.mktemp()), ["mux.test"])
        mux = await self.mux(tls=options, echo=True)
        t, got, _ = self.transport(mux.number, tls=True, tls_name="mux.test",
                                   ca_file=ca_file)
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        t.send(1, b"over tls")
        await wait_for(lambda: got == [(1, b"over tls")], "echo")

    async def test_tls_wrong_name(self) -> None:
        ca_file, options = make_tls(Path(self.mktemp()), ["mux.test"])
        mux = await self.mux(tls=options)
        t, _, states = self.transport(mux.number, tls=True, tls_name="wrong.test",
                                      ca_file=ca_file)
        t.start()
        await wait_for(lambda: t.state == "failed", "failed")
        sentence = "TLS: the multiplexer's certificate does not match the name wrong.test"
        self.assertEqual(t.last_error, sentence)
        self.assertEqual(states[-1], ("failed", sentence))
        self.assertEqual(mux.get_count, 0)

    async def test_tls_untrusted_ca(self) -> None:
        _, options = make_tls(Path(self.mktemp()), ["mux.test"])
        other_ca, _ = make_tls(Path(self.mktemp()), ["mux.test"])
        mux = await self.mux(tls=options)
        port = mux.number
        t, _, _ = self.transport(port, tls=True, tls_name="mux.test", ca_file=other_ca)
        t.start()
        await wait_for(lambda: t.state == "failed", "failed")
        self.assertEqual(t.last_error, f"TLS: the multiplexer's certificate at 127.0.0.1:{port} "
                                       "is not signed by a trusted CA (check ca_file)")

    async def test_stop_while_connecting(self) -> None:
        """stop() during the first attempt leaves nothing behind."""
        t, _, _ = self.transport(9)  # the discard port: nothing listens
        t.start()
        await t.stop()
        self.assertEqual(t.state, "down")


# ---------------------------------------------------------------------------
# The transport against the real multiplexer (smobility.adapters.muxweb)


class EchoUDP(DatagramProtocol):
    """One UDP port of a fake home agent: echoes each datagram with a prefix."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        self.received.append(datagram)
        assert self.transport is not None
        self.transport.write(self.prefix + datagram, addr)


class RealMuxTests(TestCase):
    """The client against smobility's own multiplexer, with a fake home agent behind it."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.store = TokenStore(self.dir / "mux.sqlite")
        self.addCleanup(self.store.close)
        self.token = bytes.fromhex(self.store.issue(NAME))
        self.mip, self.esp = EchoUDP(b"mip:"), EchoUDP(b"esp:")
        r: Any = reactor
        mip_port = r.listenUDP(0, self.mip, interface="127.0.0.1")
        esp_port = r.listenUDP(0, self.esp, interface="127.0.0.1")
        self.addCleanup(mip_port.stopListening)
        self.addCleanup(esp_port.stopListening)
        self.engine = MuxEngine(
            verify=self.store.verify, clock=reactor, home_agent="127.0.0.1",
            mip_port=mip_port.getHost().port, esp_port=esp_port.getHost().port,
        )
        self.server = TunnelServer(self.engine, keepalive=0.25, reactor=reactor)

    def listen(self, tls: bool) -> tuple[int, Path | None]:
        r: Any = reactor
        factory = self.server.factory(timeout=5)
        ca_file = None
        if tls:
            ca_file, _ = make_tls(self.dir / "tls", ["mux.test"])
            options = tls_options(self.dir / "tls" / "cert.pem", self.dir / "tls" / "key.pem",
                                  "mux.test")
            port = r.listenSSL(0, factory, options, interface="127.0.0.1")
        else:
            port = r.listenTCP(0, factory, interface="127.0.0.1")

        async def close() -> None:
            self.server.shutdown()
            await port.stopListening()
            await sleep(0.05)

        self.addCleanup(close)
        return int(port.getHost().port), ca_file

    def transport(self, port: int, ca_file: Path | None, **kw: Any
                  ) -> tuple[HTTPTunnelTransport, list[tuple[int, bytes]]]:
        got: list[tuple[int, bytes]] = []
        args: dict[str, Any] = dict(
            host="127.0.0.1", port=port, tls=ca_file is not None, tls_name="mux.test",
            ca_file=ca_file, name=NAME, token=self.token, proxy=None, reactor=reactor,
            on_datagram=lambda k, d: got.append((k, d)),
            keepalive=0.5, reconnect_initial=0.05, reconnect_max=0.2, connect_timeout=5.0,
        )
        args.update(kw)
        t = HTTPTunnelTransport(**args)
        self.addCleanup(t.stop)
        return t, got

    async def round_trip(self, t: HTTPTunnelTransport, got: list[tuple[int, bytes]]) -> None:
        t.start()
        await wait_for(lambda: t.state == "up", f"up ({t.last_error})")
        for i in range(10):
            t.send(1, b"rrq%d" % i)
            t.send(2, b"\x00\x00\x10\x01esp%d" % i)
        await wait_for(lambda: len(got) == 20, "20 replies")
        self.assertEqual([d for k, d in got if k == 1], [b"mip:rrq%d" % i for i in range(10)])
        self.assertEqual([d for k, d in got if k == 2],
                         [b"esp:\x00\x00\x10\x01esp%d" % i for i in range(10)])
        self.assertEqual(self.mip.received, [b"rrq%d" % i for i in range(10)])

    async def test_round_trip(self) -> None:
        """Datagrams reach the home agent's two ports and the replies come back down."""
        port, _ = self.listen(tls=False)
        t, got = self.transport(port, None)
        await self.round_trip(t, got)
        await t.stop()
        await wait_for(lambda: self.engine.counters["sessions_closed_by_client"] == 1,
                       "the session closed by our CLOSE")

    async def test_round_trip_tls(self) -> None:
        port, ca_file = self.listen(tls=True)
        t, got = self.transport(port, ca_file)
        await self.round_trip(t, got)

    async def test_round_trip_batched(self) -> None:
        port, _ = self.listen(tls=False)
        t, got = self.transport(port, None, upload="batch")
        await self.round_trip(t, got)

    async def test_keepalives_both_ways(self) -> None:
        """Idle for a while: keepalives flow, no stall, one GET."""
        port, _ = self.listen(tls=False)
        t, _ = self.transport(port, None, keepalive=0.2)
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        await sleep(1.0)
        self.assertEqual(t.counters["stalls"], 0)
        self.assertEqual(t.counters["get_requests"], 1)
        self.assertGreaterEqual(t.counters["keepalives_down"], 3)
        self.assertGreaterEqual(t.counters["keepalives_up"], 3)

    async def test_wrong_token(self) -> None:
        port, _ = self.listen(tls=False)
        t, _ = self.transport(port, None, token=b"\x01" * 32)
        t.start()
        await wait_for(lambda: t.state == "failed", "failed")
        self.assertEqual(t.last_error, f"the multiplexer at 127.0.0.1:{port} refused the "
                                       "client credential (401)")

    async def test_session_closed_by_mux(self) -> None:
        """The multiplexer closes the session (say, at shutdown): the client comes back."""
        port, _ = self.listen(tls=False)
        t, got = self.transport(port, None)
        t.start()
        await wait_for(lambda: t.state == "up", "up")
        self.server.shutdown("multiplexer shutting down")
        await wait_for(lambda: t.counters["reconnects"] == 1 and t.state == "up", "up again")
        self.assertIn("closed the session (multiplexer shutting down)", t.last_error or "")
        t.send(1, b"again")
        await wait_for(lambda: got == [(1, b"mip:again")], "a reply")
