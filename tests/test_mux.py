"""The multiplexer: session engine, credentials, the HTTP(S) server on loopback, twistd."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smobility.adapters.muxweb import MAX_DISCARD, TLSSetupError, TunnelServer, tls_options
from smobility.config import load_mux
from smobility.ctl import main as ctl_main
from smobility.engines.mux import (
    Admission,
    MuxEngine,
    Rejection,
    Session,
    parse_authorization,
    session_from_path,
)
from smobility.services import mux_tap
from smobility.store.tokens import TokenStore, TokenStoreError
from smobility.wire.httptunnel import (
    MAX_FRAME,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    close_frame,
    encode_frame,
    keepalive_frame,
)
from tests.procs import ROOT, Twistd
from tests.util import free_tcp_port, free_udp_port, require_tool, skip_or_fail

SID = "0123456789abcdef0123456789abcdef"
SID2 = "fedcba9876543210fedcba9876543210"
HA = "192.0.2.1"


def auth(name: str, token: str) -> bytes:
    """The Authorization header value for a credential."""
    return f"Smobility {name}:{token}".encode()


# ---------------------------------------------------------------------------
# Engine (sans-I/O, on task.Clock)


class FakeCredentials:
    """A verifier with fixed credentials."""

    def __init__(self, **tokens: str) -> None:
        self.tokens = tokens
        self.calls = 0

    def __call__(self, name: str, token: str) -> bool:
        self.calls += 1
        return self.tokens.get(name) == token


ALICE = "aa" * 32
BOB = "bb" * 32


def make_engine(clock: task.Clock, **kw: Any) -> MuxEngine:
    options: dict[str, Any] = {
        "verify": FakeCredentials(alice=ALICE, bob=BOB),
        "clock": clock,
        "home_agent": IPv4Address(HA),
        "mip_port": 434,
        "esp_port": 4500,
        "max_sessions": 4,
        "max_buffer": 2 * MAX_FRAME,
        "idle_timeout": 60.0,
    }
    options.update(kw)
    return MuxEngine(**options)


def admitted(result: Admission | Rejection) -> Admission:
    assert isinstance(result, Admission), result
    return result


class ParsingTests(SynchronousTestCase):
    """Paths and Authorization headers."""

    def test_session_from_path(self) -> None:
        self.assertEqual(session_from_path(b"/tunnel/" + SID.encode()), SID)
        self.assertEqual(session_from_path(b"/tunnel/" + SID.encode() + b"?t=1"), SID)
        self.assertEqual(session_from_path(b"http://mux:8443/tunnel/" + SID.encode()), SID)
        self.assertEqual(session_from_path(b"HTTPS://[::1]/tunnel/" + SID.encode()), SID)
        self.assertIsNone(session_from_path(b"http://mux/x/tunnel/" + SID.encode()))
        for bad in (
            b"/", b"/tunnel/", b"/tunnel/" + SID.upper().encode(), b"/tunnel/" + SID[:-1].encode(),
            b"/tunnel/" + SID.encode() + b"0", b"/tunnel/" + SID.encode() + b"/",
            b"/tunnels/" + SID.encode(), b"tunnel/" + SID.encode(),
        ):
            self.assertIsNone(session_from_path(bad), bad)

    def test_parse_authorization(self) -> None:
        self.assertEqual(parse_authorization(auth("alice", ALICE)), ("alice", ALICE))
        self.assertEqual(parse_authorization(b"smobility  a.b-c_d:00ff"), ("a.b-c_d", "00ff"))
        for bad in (
            None, b"", b"Smobility", b"Basic YTpi", b"Smobility alice", b"Smobility :aa",
            b"Smobility alice:", b"Smobility alice:xyz", b"Smobility al ice:aa",
            b"Smobility alice:aa:bb", b"Smobility " + b"n" * 65 + b":aa",
        ):
            self.assertIsNone(parse_authorization(bad), bad)


class EngineTests(SynchronousTestCase):
    """The session table."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.engine = make_engine(self.clock)

    def test_unauthorized(self) -> None:
        """No, malformed, unknown or wrong credentials: 401, no session, counted."""
        for header in (None, b"Basic x", auth("alice", BOB), auth("carol", ALICE)):
            result = self.engine.admit(SID, header)
            self.assertEqual(result, Rejection(401, "missing or wrong credential"))
        self.assertEqual(self.engine.sessions, {})
        self.assertEqual(self.engine.counters["unauthorized"], 4)
        self.assertEqual(self.engine.counters["sessions_created"], 0)

    def test_create_and_reuse(self) -> None:
        a = admitted(self.engine.admit(SID, auth("alice", ALICE)))
        self.assertTrue(a.created)
        self.assertEqual((a.session.id, a.session.owner, a.name), (SID, "alice", "alice"))
        b = admitted(self.engine.admit(SID, auth("alice", ALICE)))
        self.assertFalse(b.created)
        self.assertIs(b.session, a.session)
        self.assertEqual(a.session.open_requests, 2)
        self.engine.release(a.session)
        self.engine.release(a.session)
        self.assertEqual(a.session.open_requests, 0)
        self.engine.release(a.session)
        self.assertEqual(a.session.open_requests, 0)

    def test_forbidden(self) -> None:
        """Another credential may not use the session: 403."""
        admitted(self.engine.admit(SID, auth("alice", ALICE)))
        result = self.engine.admit(SID, auth("bob", BOB))
        self.assertIsInstance(result, Rejection)
        assert isinstance(result, Rejection)
        self.assertEqual(result.status, 403)
        self.assertEqual(self.engine.counters["forbidden"], 1)
        self.assertEqual(self.engine.sessions[SID].open_requests, 1)

    def test_auth_before_lookup(self) -> None:
        """A wrong credential on an existing session is 401, not 403."""
        admitted(self.engine.admit(SID, auth("alice", ALICE)))
        result = self.engine.admit(SID, auth("bob", ALICE))
        assert isinstance(result, Rejection)
        self.assertEqual(result.status, 401)

    def test_busy(self) -> None:
        """New sessions beyond max_sessions: 503; existing ones still work."""
        sids = [f"{i:032x}" for i in range(4)]
        for sid in sids:
            admitted(self.engine.admit(sid, auth("alice", ALICE)))
        result = self.engine.admit(SID2, auth("alice", ALICE))
        assert isinstance(result, Rejection)
        self.assertEqual(result.status, 503)
        self.assertEqual(self.engine.counters["busy"], 1)
        admitted(self.engine.admit(sids[0], auth("alice", ALICE)))
        self.engine.close(self.engine.sessions[sids[1]])
        admitted(self.engine.admit(SID2, auth("alice", ALICE)))

    def test_up_frames(self) -> None:
        """MIP to the home agent's 434, ESP to its 4500; KEEPALIVE and CLOSE go nowhere."""
        s = admitted(self.engine.admit(SID, auth("alice", ALICE))).session
        self.assertEqual(self.engine.up_frame(s, Frame(FrameType.MIP, b"r")), (HA, 434))
        self.assertEqual(self.engine.up_frame(s, Frame(FrameType.ESP, b"e")), (HA, 4500))
        self.assertIsNone(self.engine.up_frame(s, Frame(FrameType.KEEPALIVE, b"")))
        self.assertEqual(s.counters["up_frames"], 2)
        self.assertEqual(s.counters["up_keepalives"], 1)
        self.assertIsNone(self.engine.up_frame(s, Frame(FrameType.CLOSE, b"bye")))
        self.assertTrue(s.closed)
        self.assertNotIn(SID, self.engine.sessions)
        self.assertIsNone(self.engine.up_frame(s, Frame(FrameType.MIP, b"late")))
        self.assertEqual(self.engine.counters["up_after_close"], 1)

    def test_down_datagrams(self) -> None:
        """Only the home agent's two ports are accepted, each as its frame type."""
        s = admitted(self.engine.admit(SID, auth("alice", ALICE))).session
        self.assertTrue(self.engine.down_datagram(s, b"reply", (HA, 434)))
        self.assertTrue(self.engine.down_datagram(s, b"esp", (HA, 4500)))
        self.assertFalse(self.engine.down_datagram(s, b"x", (HA, 500)))
        self.assertFalse(self.engine.down_datagram(s, b"x", ("192.0.2.99", 434)))
        self.assertFalse(self.engine.down_datagram(s, b"x" * (MAX_PAYLOAD + 1), (HA, 4500)))
        self.assertEqual(self.engine.take(s), encode_frame(FrameType.MIP, b"reply"))
        self.assertEqual(self.engine.take(s), encode_frame(FrameType.ESP, b"esp"))
        self.assertIsNone(self.engine.take(s))
        self.assertEqual(s.queued, 0)
        self.assertEqual(self.engine.counters["down_foreign"], 2)
        self.assertEqual(self.engine.counters["down_oversize"], 1)
        self.assertEqual(self.engine.counters["down_frames"], 2)

    def test_buffer_bound(self) -> None:
        """Queued bytes never exceed max_buffer; the excess is dropped and counted."""
        s = admitted(self.engine.admit(SID, auth("alice", ALICE))).session
        accepted = 0
        for _ in range(10):
            if self.engine.down_datagram(s, b"y" * 5000, (HA, 4500)):
                accepted += 1
            self.assertLessEqual(s.queued, self.engine.max_buffer)
        self.assertEqual(accepted, (2 * MAX_FRAME) // 5003)
        self.assertEqual(s.counters["down_dropped"], 10 - accepted)
        self.assertEqual(len(s.queue), accepted)

    def test_expiry(self) -> None:
        """Idle: no open request and no upward frame for idle_timeout."""
        s = admitted(self.engine.admit(SID, auth("alice", ALICE))).session
        self.clock.advance(3600)
        self.assertEqual(self.engine.expire(), [])  # a request is open
        self.engine.release(s)
        self.clock.advance(59)
        self.assertEqual(self.engine.expire(), [])
        self.engine.up_frame(s, Frame(FrameType.KEEPALIVE, b""))
        self.clock.advance(59)
        # Datagrams from the network do not keep an abandoned session alive.
        self.engine.down_datagram(s, b"x", (HA, 4500))
        self.assertEqual(self.engine.expire(), [])
        self.clock.advance(1)
        self.assertEqual(self.engine.expire(), [s])
        self.assertTrue(s.closed)
        self.assertEqual(s.queued, 0)
        self.assertEqual(self.engine.sessions, {})
        self.assertEqual(self.engine.counters["sessions_expired"], 1)
        # The id can be used again: a new session.
        again = admitted(self.engine.admit(SID, auth("alice", ALICE)))
        self.assertTrue(again.created)
        self.assertIsNot(again.session, s)

    def test_closed_session_takes_nothing(self) -> None:
        s = admitted(self.engine.admit(SID, auth("alice", ALICE))).session
        self.engine.close(s)
        self.engine.close(s)
        self.assertEqual(self.engine.counters["sessions_closed"], 1)
        self.assertFalse(self.engine.down_datagram(s, b"x", (HA, 434)))
        self.assertFalse(self.engine.enqueue(s, keepalive_frame()))

    def test_stats_and_interval(self) -> None:
        admitted(self.engine.admit(SID, auth("alice", ALICE)))
        self.assertEqual(self.engine.stats()["sessions"], 1)
        self.assertEqual(self.engine.stats()["requests"], 1)
        self.assertEqual(self.engine.expiry_interval, 5.0)
        self.assertEqual(make_engine(self.clock, idle_timeout=1.0).expiry_interval, 0.5)

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, make_engine, self.clock, esp_port=434)
        self.assertRaises(ValueError, make_engine, self.clock, max_buffer=MAX_FRAME - 1)

    def test_session_repr(self) -> None:
        s = Session(SID, "alice", 0.0)
        self.assertIn("01234567", repr(s))
        self.assertNotIn(SID, repr(s))


# ---------------------------------------------------------------------------
# Credentials


class TokenStoreTests(SynchronousTestCase):
    """smobility.store.tokens and ``smobility-ctl tokens``."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "state" / "mux.sqlite"

    def test_issue_verify_revoke(self) -> None:
        store = TokenStore(self.path)
        self.addCleanup(store.close)
        token = store.issue("laptop")
        self.assertRegex(token, r"^[0-9a-f]{64}$")
        self.assertTrue(store.verify("laptop", token))
        self.assertTrue(store.verify("laptop", token.upper()))
        self.assertFalse(store.verify("laptop", "00" * 32))
        self.assertFalse(store.verify("laptop", token[:-2]))
        self.assertFalse(store.verify("laptop", "zz"))
        self.assertFalse(store.verify("other", token))
        self.assertFalse(store.verify("bad name", token))
        self.assertEqual([i.name for i in store.list()], ["laptop"])
        self.assertEqual(store.count(), 1)
        store.revoke("laptop")
        self.assertFalse(store.verify("laptop", token))
        self.assertRaises(TokenStoreError, store.revoke, "laptop")

    def test_only_digest_stored(self) -> None:
        store = TokenStore(self.path)
        token = store.issue("laptop")
        store.close()
        raw = self.path.read_bytes() + (
            self.path.with_name(self.path.name + "-wal").read_bytes()
            if self.path.with_name(self.path.name + "-wal").exists() else b""
        )
        self.assertNotIn(bytes.fromhex(token), raw)
        self.assertNotIn(token.encode(), raw)
        db = sqlite3.connect(self.path)
        (name, digest, created), = db.execute("SELECT * FROM mux_tokens").fetchall()
        db.close()
        self.assertEqual(name, "laptop")
        self.assertEqual(len(digest), 32)
        self.assertGreater(created, 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_issue_twice(self) -> None:
        store = TokenStore(self.path)
        self.addCleanup(store.close)
        first = store.issue("laptop")
        e = self.assertRaises(TokenStoreError, store.issue, "laptop")
        self.assertIn("already exists", str(e))
        second = store.issue("laptop", replace=True)
        self.assertFalse(store.verify("laptop", first))
        self.assertTrue(store.verify("laptop", second))

    def test_bad_name(self) -> None:
        store = TokenStore(self.path)
        self.addCleanup(store.close)
        for bad in ("", "a:b", "a b", "x" * 65):
            self.assertRaises(TokenStoreError, store.issue, bad)

    def ctl(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = ctl_main(list(args))
        return code, out.getvalue(), err.getvalue()

    def test_ctl(self) -> None:
        db = str(self.path)
        code, out, err = self.ctl("tokens", "issue", "laptop", "--db", db)
        self.assertEqual(code, 0)
        token = out.strip()
        self.assertRegex(token, r"^[0-9a-f]{64}$")
        self.assertIn("Authorization: Smobility laptop:<token>", err)
        self.assertNotIn(token, err)
        code, out, err = self.ctl("tokens", "issue", "laptop", "--db", db)
        self.assertEqual(code, 1)
        self.assertIn("already exists", err)
        code, out, _ = self.ctl("tokens", "list", "--db", db)
        self.assertEqual(code, 0)
        self.assertIn("laptop", out)
        self.assertNotIn(token, out)
        code, out, _ = self.ctl("tokens", "list", "--db", db, "--json")
        self.assertEqual([e["name"] for e in json.loads(out)], ["laptop"])
        store = TokenStore(db)
        self.assertTrue(store.verify("laptop", token))
        store.close()
        code, _, _ = self.ctl("tokens", "revoke", "laptop", "--db", db)
        self.assertEqual(code, 0)
        code, _, err = self.ctl("tokens", "revoke", "laptop", "--db", db)
        self.assertEqual(code, 1)
        self.assertIn("no credential", err)
        code, out, _ = self.ctl("tokens", "list", "--db", db)
        self.assertIn("no multiplexer credentials", out)

    def test_ctl_unusable_db(self) -> None:
        blocker = self.dir / "file"
        blocker.write_text("")
        code, _, err = self.ctl("tokens", "list", "--db", str(blocker / "x" / "db"))
        self.assertEqual(code, 1)
        self.assertIn("cannot create the state directory", err)


# ---------------------------------------------------------------------------
# The server on loopback


class FakeHomeAgent(DatagramProtocol):
    """One UDP port of a fake home agent: records datagrams, echoes them back."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.echo = True

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        self.received.append((datagram, addr))
        if self.echo and self.transport is not None:
            self.transport.write(self.prefix + datagram, addr)


class RawHTTP(Protocol):
    """A raw HTTP/1.1 client connection: write requests by hand, parse the answer as it comes."""

    def __init__(self) -> None:
        self.buf = b""
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.frames: list[Frame] = []
        self.frame_times: list[float] = []
        self.decoder = FrameDecoder()
        self.chunked = False
        self.complete = False
        self.lost = False

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.lost = True

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def request(
        self, method: str, sid: str, header: bytes | None, *, body: bytes | None = None,
        chunked: bool = False, extra: bytes = b"", path: str | None = None,
    ) -> None:
        lines = [f"{method} {path or '/tunnel/' + sid} HTTP/1.1".encode(), b"Host: mux"]
        if header is not None:
            lines.append(b"Authorization: " + header)
        if chunked:
            lines.append(b"Transfer-Encoding: chunked")
        elif body is not None:
            lines.append(b"Content-Length: %d" % len(body))
        if extra:
            lines.append(extra)
        self.send(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))

    def chunk(self, data: bytes) -> None:
        self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunks(self) -> None:
        self.send(b"0\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buf += data
        if self.status is None:
            if b"\r\n\r\n" not in self.buf:
                return
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                k, v = line.split(b":", 1)
                self.headers[k.strip().lower()] = v.strip()
            self.chunked = self.headers.get(b"transfer-encoding") == b"chunked"
        if self.chunked:
            while b"\r\n" in self.buf:
                size_line, rest = self.buf.split(b"\r\n", 1)
                size = int(size_line, 16)
                if size == 0:
                    self.complete = True
                    self.buf = b""
                    return
                if len(rest) < size + 2:
                    return
                chunk, self.buf = rest[:size], rest[size + 2 :]
                self.body += chunk
                for frame in self.decoder.feed(chunk):
                    self.frames.append(frame)
                    self.frame_times.append(time.monotonic())
        else:
            self.body += self.buf
            self.buf = b""
            if len(self.body) >= int(self.headers.get(b"content-length", b"0")):
                self.complete = True

    def payloads(self, kind: FrameType) -> list[bytes]:
        return [f.payload for f in self.frames if f.type is kind]


def wait_until(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> Deferred[None]:
    """A Deferred that fires once C{check()} is true (polled), or fails after C{timeout}."""
    deadline = time.monotonic() + timeout

    @inlineCallbacks
    def poll() -> Any:
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or check}")
            yield task.deferLater(reactor, 0.01, lambda: None)

    d: Deferred[None] = poll()
    return d


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = task.deferLater(reactor, seconds, lambda: None)
    return d


def make_cert(directory: Path, name: str = "localhost") -> tuple[Path, Path, bytes]:
    """A throwaway self-signed certificate for C{name} (and 127.0.0.1); returns paths and PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path, pem


class LoopbackMixin:
    """A real multiplexer on 127.0.0.1 with a fake home agent (two UDP ports)."""

    tls = False
    keepalive = 0.25
    idle_timeout = 60.0
    max_sessions = 16
    max_buffer = 262144
    timeout = 30

    def setUp(self) -> None:  # noqa: D102
        tc: TestCase = self  # type: ignore[assignment]
        self.dir = Path(tc.mktemp())
        self.dir.mkdir()
        self.store = TokenStore(self.dir / "mux.sqlite")
        tc.addCleanup(self.store.close)
        self.token = self.store.issue("alice")
        self.other = self.store.issue("bob")
        self.mip = FakeHomeAgent(b"mip:")
        self.esp = FakeHomeAgent(b"esp:")
        mip_port = reactor.listenUDP(0, self.mip, interface="127.0.0.1")
        esp_port = reactor.listenUDP(0, self.esp, interface="127.0.0.1")
        tc.addCleanup(mip_port.stopListening)
        tc.addCleanup(esp_port.stopListening)
        self.engine = MuxEngine(
            verify=self.store.verify, clock=reactor, home_agent="127.0.0.1",
            mip_port=mip_port.getHost().port, esp_port=esp_port.getHost().port,
            max_sessions=self.max_sessions, max_buffer=self.max_buffer,
            idle_timeout=self.idle_timeout,
        )
        self.server = TunnelServer(self.engine, keepalive=self.keepalive, reactor=reactor)
        factory = self.server.factory(timeout=5)
        self.client_options: Any = None
        if self.tls:
            cert, key, pem = make_cert(self.dir)
            self.port = reactor.listenSSL(
                0, factory, tls_options(cert, key, "localhost"), interface="127.0.0.1"
            )
            self.client_options = optionsForClientTLS(
                "localhost", trustRoot=Certificate.loadPEM(pem)
            )
        else:
            self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.clients: list[RawHTTP] = []
        tc.addCleanup(self._cleanup)

    @inlineCallbacks
    def _cleanup(self) -> Any:
        self.server.shutdown()
        for c in self.clients:
            if c.transport is not None and not c.lost:
                c.transport.loseConnection()
        yield self.port.stopListening()
        yield wait_until(lambda: all(c.lost for c in self.clients), what="clients to close")
        # Let the session sockets finish closing.
        yield sleep(0)

    @inlineCallbacks
    def connect(self) -> Any:
        endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        if self.client_options is not None:
            endpoint = wrapClientTLS(self.client_options, endpoint)
        proto = yield connectProtocol(endpoint, RawHTTP())
        self.clients.append(proto)
        return proto

    @property
    def alice(self) -> bytes:
        return auth("alice", self.token)

    @inlineCallbacks
    def open_get(self, sid: str = SID, header: bytes | None = None) -> Any:
        get = yield self.connect()
        get.request("GET", sid, header or self.alice)
        yield wait_until(lambda: bool(get.frames) or get.complete, what="the GET to start")
        return get


class LoopbackTests(LoopbackMixin, TestCase):
    """The multiplexer over plain HTTP on loopback."""

    @inlineCallbacks
    def test_round_trip_streaming(self) -> Any:
        """Frames of a chunked POST reach the home agent before the body ends;
        replies come down the GET at once, each frame flushed as it comes."""
        get = yield self.open_get()
        self.assertEqual(get.status, 200)
        self.assertEqual(get.headers[b"content-type"], b"application/octet-stream")
        self.assertEqual(get.headers[b"cache-control"], b"no-store")
        self.assertTrue(get.chunked)
        self.assertEqual(get.frames[0].type, FrameType.KEEPALIVE)

        post = yield self.connect()
        post.request("POST", SID, self.alice, chunked=True)
        post.chunk(encode_frame(FrameType.MIP, b"rrq-1"))
        yield wait_until(lambda: len(self.mip.received) == 1, what="the MIP datagram")
        self.assertEqual(self.mip.received[0][0], b"rrq-1")
        yield wait_until(lambda: get.payloads(FrameType.MIP) == [b"mip:rrq-1"], what="reply")
        # A frame split over two chunks, then two frames in one chunk.
        esp = encode_frame(FrameType.ESP, b"\x00\x00\x10\x01" + b"e" * 100)
        post.chunk(esp[:7])
        post.chunk(esp[7:] + encode_frame(FrameType.KEEPALIVE) + encode_frame(2, b"\xff"))
        yield wait_until(lambda: len(self.esp.received) == 2, what="the ESP datagrams")
        self.assertEqual(self.esp.received[0][0], esp[3:])
        self.assertEqual(self.esp.received[1][0], b"\xff")
        # One socket per session: every datagram left from the same address.
        sources = {addr for _, addr in self.mip.received + self.esp.received}
        self.assertEqual(len(sources), 1)
        self.assertEqual(sources, {("127.0.0.1", self.server.sockets[
            self.engine.sessions[SID]].port.getHost().port)})  # type: ignore[union-attr]
        yield wait_until(lambda: len(get.payloads(FrameType.ESP)) == 2, what="ESP replies")
        self.assertIsNone(post.status)  # the POST is still open
        post.end_chunks()
        yield wait_until(lambda: post.status is not None, what="the POST answer")
        self.assertEqual(post.status, 204)
        self.assertFalse(get.complete)
        session = self.engine.sessions[SID]
        self.assertEqual(session.counters["up_frames"], 3)
        self.assertEqual(session.counters["down_frames"], 3)

    @inlineCallbacks
    def test_batched_post(self) -> Any:
        """A Content-Length body of several frames; a POST may create the session."""
        post = yield self.connect()
        body = encode_frame(FrameType.MIP, b"a") + encode_frame(FrameType.ESP, b"b")
        post.request("POST", SID, self.alice, body=body)
        yield wait_until(lambda: post.status is not None)
        self.assertEqual(post.status, 204)
        self.assertEqual([d for d, _ in self.mip.received], [b"a"])
        self.assertEqual([d for d, _ in self.esp.received], [b"b"])
        # Replies wait for a GET (the session has none yet), then come at once.
        yield wait_until(lambda: self.engine.sessions[SID].queued > 0)
        get = yield self.open_get()
        yield wait_until(lambda: len(get.frames) >= 3)
        self.assertEqual(get.payloads(FrameType.MIP), [b"mip:a"])
        self.assertEqual(get.payloads(FrameType.ESP), [b"esp:b"])

    @inlineCallbacks
    def test_keepalives(self) -> Any:
        get = yield self.open_get()
        yield wait_until(lambda: len(get.payloads(FrameType.KEEPALIVE)) >= 4, what="keepalives")
        gaps = [b - a for a, b in zip(get.frame_times, get.frame_times[1:], strict=False)]
        self.assertTrue(all(g > 0.1 for g in gaps[1:]), gaps)

    @inlineCallbacks
    def test_unauthenticated(self) -> Any:
        """No or wrong credentials: 401 with WWW-Authenticate, nothing reaches the HA."""
        for header in (None, auth("alice", self.other), auth("mallory", self.token)):
            get = yield self.connect()
            get.request("GET", SID, header)
            yield wait_until(lambda g=get: g.complete)  # type: ignore[misc]
            self.assertEqual(get.status, 401)
            self.assertEqual(get.headers[b"www-authenticate"], b"Smobility")
            post = yield self.connect()
            post.request(
                "POST", SID, header, body=encode_frame(FrameType.MIP, b"must not pass")
            )
            yield wait_until(lambda p=post: p.complete)  # type: ignore[misc]
            self.assertEqual(post.status, 401)
        streaming = yield self.connect()
        streaming.request("POST", SID, None, chunked=True)
        streaming.chunk(encode_frame(FrameType.MIP, b"must not pass either"))
        streaming.end_chunks()
        yield wait_until(lambda: streaming.complete)
        self.assertEqual(streaming.status, 401)
        yield sleep(0.1)
        self.assertEqual(self.mip.received, [])
        self.assertEqual(self.engine.sessions, {})
        self.assertEqual(self.server.sockets, {})
        self.assertEqual(self.engine.counters["unauthorized"], 7)

    @inlineCallbacks
    def test_refused_body_limit(self) -> Any:
        """A refused request that keeps sending is answered and cut off."""
        post = yield self.connect()
        post.request("POST", SID, None, chunked=True)
        for _ in range(MAX_DISCARD // 8192 + 2):
            post.chunk(b"\x01" * 8192)
        yield wait_until(lambda: post.lost)
        self.assertEqual(post.status, 401)
        self.assertEqual(self.mip.received, [])

    @inlineCallbacks
    def test_forbidden(self) -> Any:
        get = yield self.open_get()
        self.assertEqual(get.status, 200)
        post = yield self.connect()
        post.request("POST", SID, auth("bob", self.other), body=encode_frame(1, b"x"))
        yield wait_until(lambda: post.complete)
        self.assertEqual(post.status, 403)
        self.assertEqual(self.mip.received, [])

    @inlineCallbacks
    def test_not_found_and_method(self) -> Any:
        c = yield self.connect()
        c.request("GET", SID, self.alice, path="/tunnel/XYZ")
        yield wait_until(lambda: c.complete)
        self.assertEqual(c.status, 404)
        c = yield self.connect()
        c.request("PUT", SID, self.alice, body=b"")
        yield wait_until(lambda: c.complete)
        self.assertEqual(c.status, 405)
        self.assertEqual(c.headers[b"allow"], b"GET, POST")
        self.assertEqual(self.engine.sessions, {})

    @inlineCallbacks
    def test_busy(self) -> Any:
        self.engine.max_sessions = 1
        yield self.open_get()
        c = yield self.connect()
        c.request("GET", SID2, self.alice)
        yield wait_until(lambda: c.complete)
        self.assertEqual(c.status, 503)
        self.assertIn(b"retry-after", c.headers)

    @inlineCallbacks
    def test_bad_frame(self) -> Any:
        """A bad frame: 400 at once (body still open), the GET ends with a CLOSE
        frame; the session stays and a new GET gets what was queued."""
        get = yield self.open_get()
        post = yield self.connect()
        post.request("POST", SID, self.alice, chunked=True)
        post.chunk(encode_frame(FrameType.MIP, b"good") + b"\x09\x00\x01z")
        yield wait_until(lambda: post.complete, what="the early 400")
        self.assertEqual(post.status, 400)
        self.assertEqual(post.headers[b"connection"], b"close")
        self.assertIn(b"bad frame", bytes(post.body))
        self.assertEqual([d for d, _ in self.mip.received], [b"good"])
        yield wait_until(lambda: get.complete, what="the GET to end")
        self.assertEqual(get.frames[-1].type, FrameType.CLOSE)
        self.assertIn("POST dropped: bad frame", get.frames[-1].reason)
        # The rest of the body is read and dropped; its end closes the connection.
        post.chunk(encode_frame(FrameType.MIP, b"ignored"))
        post.end_chunks()
        yield wait_until(lambda: post.lost)
        self.assertIn(SID, self.engine.sessions)
        self.assertEqual(self.engine.counters["bad_frames"], 1)
        get2 = yield self.open_get()
        yield wait_until(lambda: get2.payloads(FrameType.MIP) == [b"mip:good"])
        self.assertEqual([d for d, _ in self.mip.received], [b"good"])

    @inlineCallbacks
    def test_truncated_body(self) -> Any:
        """A body that ends inside a frame: 400 when it ends."""
        post = yield self.connect()
        post.request("POST", SID, self.alice, body=encode_frame(1, b"abc")[:-1])
        yield wait_until(lambda: post.complete)
        self.assertEqual(post.status, 400)
        self.assertEqual(self.mip.received, [])

    @inlineCallbacks
    def test_get_replaced(self) -> Any:
        first = yield self.open_get()
        second = yield self.open_get()
        yield wait_until(lambda: first.complete)
        self.assertEqual(first.frames[-1], Frame(FrameType.CLOSE, b"replaced by a newer GET"))
        post = yield self.connect()
        post.request("POST", SID, self.alice, body=encode_frame(FrameType.MIP, b"q"))
        yield wait_until(lambda: second.payloads(FrameType.MIP) == [b"mip:q"])
        self.assertEqual(first.payloads(FrameType.MIP), [])
        self.assertEqual(self.engine.counters["get_replaced"], 1)

    @inlineCallbacks
    def test_foreign_datagrams_dropped(self) -> Any:
        """The session socket takes datagrams from the home agent's two ports only."""
        get = yield self.open_get()
        post = yield self.connect()
        post.request("POST", SID, self.alice, body=encode_frame(FrameType.MIP, b"hi"))
        yield wait_until(lambda: bool(self.mip.received))
        session_addr = self.mip.received[0][1]
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(stranger.close)
        stranger.bind(("127.0.0.1", 0))
        stranger.sendto(b"spoofed", session_addr)
        yield wait_until(lambda: self.engine.counters["down_foreign"] == 1)
        yield wait_until(lambda: get.payloads(FrameType.MIP) == [b"mip:hi"])
        yield sleep(0.05)
        self.assertNotIn(b"spoofed", b"".join(f.payload for f in get.frames))

    @inlineCallbacks
    def test_client_close(self) -> Any:
        """A CLOSE frame up ends the session: socket closed, GET ends with CLOSE."""
        get = yield self.open_get()
        post = yield self.connect()
        post.request("POST", SID, self.alice, body=close_frame("client stopping"))
        yield wait_until(lambda: get.complete)
        self.assertEqual(get.frames[-1].type, FrameType.CLOSE)
        self.assertIn("closed by the client: client stopping", get.frames[-1].reason)
        yield wait_until(lambda: post.complete)
        self.assertEqual(post.status, 204)
        self.assertEqual(self.engine.sessions, {})
        self.assertEqual(self.server.sockets, {})

    @inlineCallbacks
    def test_client_disconnect_detaches_get(self) -> Any:
        get = yield self.open_get()
        session = self.engine.sessions[SID]
        self.assertEqual(session.open_requests, 1)
        get.transport.loseConnection()  # type: ignore[union-attr]
        yield wait_until(lambda: session.open_requests == 0)
        self.assertEqual(self.server.downs, {})
        self.assertIn(SID, self.engine.sessions)

    @inlineCallbacks
    def test_idle_expiry(self) -> Any:
        """No request and no traffic for idle_timeout: the session and its socket go."""
        self.engine.idle_timeout = 0.3
        post = yield self.connect()
        post.request("POST", SID, self.alice, body=encode_frame(FrameType.MIP, b"once"))
        yield wait_until(lambda: post.complete)
        session = self.engine.sessions[SID]
        sock = self.server.sockets[session]
        self.server.expire()
        self.assertIn(SID, self.engine.sessions)
        yield sleep(0.4)
        self.server.expire()
        self.assertEqual(self.engine.sessions, {})
        self.assertEqual(self.server.sockets, {})
        self.assertEqual(self.engine.counters["sessions_expired"], 1)
        yield wait_until(lambda: sock.transport is None, what="the session socket to close")

    @inlineCallbacks
    def test_slow_reader_bounded(self) -> Any:
        """A GET that is not read: frames pile up to max_buffer, then are dropped."""
        self.engine.max_buffer = 4 * MAX_FRAME
        get = yield self.open_get()
        get.transport.pauseProducing()  # type: ignore[union-attr]
        session = self.engine.sessions[SID]
        sock = self.server.sockets[session]
        assert sock.port is not None
        addr = ("127.0.0.1", sock.port.getHost().port)  # type: ignore[attr-defined]
        blob = b"\x00" * 8000
        for _ in range(2000):
            # From the fake home agent's ESP port, as the real one would send.
            self.esp.transport.write(blob, addr)  # type: ignore[union-attr]
            if session.counters["down_dropped"]:
                break
            yield sleep(0)
        yield wait_until(lambda: session.counters["down_dropped"] > 0, what="drops")
        self.assertLessEqual(session.queued, self.engine.max_buffer)
        self.assertTrue(self.server.downs[session].paused)
        get.transport.resumeProducing()  # type: ignore[union-attr]
        yield wait_until(lambda: session.queued == 0, what="the queue to drain")

    @inlineCallbacks
    def test_slow_headers_dropped(self) -> Any:
        """A request that never completes its headers is dropped by the idle timeout."""
        port = reactor.listenTCP(0, self.server.factory(timeout=0.3), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        c = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), RawHTTP()
        )
        self.clients.append(c)
        c.send(b"GET /tunnel/" + SID.encode() + b" HTTP/1.1\r\nHost: mux\r\n")
        yield wait_until(lambda: c.lost, what="the timeout")
        self.assertIsNone(c.status)
        self.assertEqual(self.engine.sessions, {})

    @inlineCallbacks
    def test_credential_store_failure(self) -> Any:
        """A verifier that fails: 503 for that request, the server keeps going."""
        def broken(name: str, token: str) -> bool:
            raise sqlite3.OperationalError("database is locked")

        self.engine.verify = broken
        c = yield self.connect()
        c.request("GET", SID, self.alice)
        yield wait_until(lambda: c.complete)
        self.assertEqual(c.status, 503)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.engine.verify = self.store.verify
        get = yield self.open_get()
        self.assertEqual(get.status, 200)

    @inlineCallbacks
    def test_shutdown_closes_gets(self) -> Any:
        get = yield self.open_get()
        self.server.shutdown()
        yield wait_until(lambda: get.complete)
        self.assertEqual(get.frames[-1].reason, "multiplexer shutting down")
        self.assertEqual(self.engine.sessions, {})


class TLSLoopbackTests(LoopbackMixin, TestCase):
    """The same over TLS, with a throwaway certificate."""

    tls = True

    @inlineCallbacks
    def test_round_trip(self) -> Any:
        get = yield self.open_get()
        self.assertEqual(get.status, 200)
        post = yield self.connect()
        post.request("POST", SID, self.alice, chunked=True)
        post.chunk(encode_frame(FrameType.MIP, b"over tls"))
        yield wait_until(lambda: get.payloads(FrameType.MIP) == [b"mip:over tls"])
        self.assertIsNone(post.status)
        post.end_chunks()
        yield wait_until(lambda: post.status == 204)
        yield wait_until(lambda: len(get.payloads(FrameType.KEEPALIVE)) >= 2)

    @inlineCallbacks
    def test_unauthenticated(self) -> Any:
        get = yield self.connect()
        get.request("GET", SID, None)
        yield wait_until(lambda: get.complete)
        self.assertEqual(get.status, 401)


class ClientInteropMixin(LoopbackMixin):
    """The client side's transport (smobility.adapters.httpclient) against this server."""

    keepalive = 0.5
    upload = "stream"

    @inlineCallbacks
    def test_client_transport(self) -> Any:
        from smobility.adapters.httpclient import HTTPTunnelTransport

        tc: TestCase = self  # type: ignore[assignment]
        got: list[tuple[int, bytes]] = []
        transport = HTTPTunnelTransport(
            host="127.0.0.1" if not self.tls else "localhost",
            port=self.port.getHost().port, tls=self.tls,
            tls_name="localhost" if self.tls else None,
            ca_file=self.dir / "localhost.crt" if self.tls else None,
            name="alice", token=bytes.fromhex(self.token), proxy=None, reactor=reactor,
            on_datagram=lambda kind, data: got.append((kind, data)), keepalive=0.5,
            upload=self.upload,
        )
        transport.start()
        try:
            yield wait_until(lambda: len(self.engine.sessions) == 1, what="the session")
            transport.send(1, b"rrq")
            transport.send(2, b"\x00\x00\x10\x01esp")
            yield wait_until(lambda: len(got) == 2, what="both replies")
            tc.assertEqual(sorted(got), [(1, b"mip:rrq"), (2, b"esp:\x00\x00\x10\x01esp")])
            session = next(iter(self.engine.sessions.values()))
            tc.assertEqual(session.owner, "alice")
        finally:
            yield transport.stop()
        tc.assertEqual(self.engine.counters["bad_frames"], 0)
        if self.upload == "stream":
            # The client says goodbye with a CLOSE frame: the session is gone at once.
            yield wait_until(lambda: not self.engine.sessions, what="the session to close")
            tc.assertEqual(self.engine.counters["sessions_closed_by_client"], 1)
        else:
            # Batch mode sends no CLOSE on stop: the session expires once idle.
            yield wait_until(lambda: session.open_requests == 0, what="requests to end")
            self.engine.idle_timeout = 0.01
            yield sleep(0.02)
            self.server.expire()
            tc.assertEqual(self.engine.sessions, {})


class ClientInteropTests(ClientInteropMixin, TestCase):
    """Interoperation with the client transport over plain HTTP."""


class ClientInteropBatchTests(ClientInteropMixin, TestCase):
    """Interoperation with the client transport's batched POSTs."""

    upload = "batch"


class ClientInteropTLSTests(ClientInteropMixin, TestCase):
    """Interoperation with the client transport over TLS (name and CA checked)."""

    tls = True


class TLSOptionsTests(SynchronousTestCase):
    """Loading the certificate and key."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def test_good_and_name(self) -> None:
        cert, key, _ = make_cert(self.dir, "mux.example.org")
        self.assertIsNotNone(tls_options(cert, key))
        self.assertIsNotNone(tls_options(cert, key, "mux.example.org"))
        self.assertIsNotNone(tls_options(cert, key, "127.0.0.1"))
        e = self.assertRaises(TLSSetupError, tls_options, cert, key, "other.example.org")
        self.assertIn("not valid for 'other.example.org'", str(e))

    def test_chain(self) -> None:
        cert, key, _ = make_cert(self.dir, "a")
        _, _, other = make_cert(self.dir, "b")
        cert.write_bytes(cert.read_bytes() + other)
        self.assertIsNotNone(tls_options(cert, key))

    def test_errors(self) -> None:
        cert, key, _ = make_cert(self.dir, "a")
        cert_b, key_b, _ = make_cert(self.dir, "b")
        e = self.assertRaises(TLSSetupError, tls_options, cert, key_b)
        self.assertIn("does not belong", str(e))
        e = self.assertRaises(TLSSetupError, tls_options, self.dir / "none.crt", key)
        self.assertIn("cannot read", str(e))
        junk = self.dir / "junk"
        junk.write_text("not pem")
        e = self.assertRaises(TLSSetupError, tls_options, junk, key)
        self.assertIn("no PEM certificate", str(e))
        secret = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"
        junk.write_bytes(secret)
        e = self.assertRaises(TLSSetupError, tls_options, cert, junk)
        self.assertIn("not an unencrypted PEM private key", str(e))
        self.assertNotIn("c2VjcmV0", str(e))


class UserTimeoutTests(SynchronousTestCase):
    """TCP_USER_TIMEOUT reaches the socket under a TLS transport."""

    def test_nested(self) -> None:
        from smobility.adapters.muxweb import _set_user_timeout

        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if option is None:
            skip_or_fail(self, "no TCP_USER_TIMEOUT on this platform")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)

        class Inner:
            def getHandle(self) -> socket.socket:  # noqa: N802
                return sock

        class TLSLike:
            transport = Inner()

            def getHandle(self) -> object:  # noqa: N802
                return object()

        _set_user_timeout(TLSLike(), 42)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, option), 42000)
        _set_user_timeout(None, 1)


# ---------------------------------------------------------------------------
# curl as an independent client


class CurlTests(LoopbackMixin, TestCase):
    """curl streams a GET and sends chunked and batched POSTs."""

    @inlineCallbacks
    def test_curl(self) -> Any:
        curl = require_tool(self, "curl")
        url = f"http://127.0.0.1:{self.port.getHost().port}/tunnel/{SID}"
        header = "Authorization: " + self.alice.decode()
        got = self.dir / "down.bin"
        d = getProcessOutputAndValue(
            curl, ["-sS", "-N", "--max-time", "2", "-H", header, "-o", str(got), url],
            env=dict(os.environ),
        )
        yield wait_until(lambda: SID in self.engine.sessions, what="curl's GET")
        up = self.dir / "up.bin"
        up.write_bytes(encode_frame(FrameType.MIP, b"from curl") + encode_frame(2, b"esp"))
        out, err, code = yield getProcessOutputAndValue(
            curl,
            ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", header,
             "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{up}", url],
            env=dict(os.environ),
        )
        self.assertEqual((out, code), (b"204", 0), err)
        out, err, code = yield getProcessOutputAndValue(
            curl,
            ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{up}", url],
            env=dict(os.environ),
        )
        self.assertEqual(out, b"401", err)
        _, _, code = yield d
        self.assertEqual(code, 28)  # curl's "operation timed out": the stream never ended
        # HTTP/1.0 (as some proxies speak to servers): no chunking, the same frames.
        old = self.dir / "down10.bin"
        _, _, code = yield getProcessOutputAndValue(
            curl, ["-sS", "-N", "--http1.0", "--max-time", "1", "-H", header, "-o", str(old),
                   url.replace(SID, SID2)],
            env=dict(os.environ),
        )
        self.assertEqual(code, 28)
        self.assertEqual(old.read_bytes()[:3], keepalive_frame())
        frames = FrameDecoder().feed(got.read_bytes())
        kinds = [f.type for f in frames]
        self.assertEqual(kinds[0], FrameType.KEEPALIVE)
        self.assertIn(Frame(FrameType.MIP, b"mip:from curl"), frames)
        self.assertIn(Frame(FrameType.ESP, b"esp:esp"), frames)
        self.assertEqual([d for d, _ in self.mip.received], [b"from curl"])


# ---------------------------------------------------------------------------
# Configuration and twistd


class ConfigTests(SynchronousTestCase):
    """The multiplexer keys of load_mux beyond those tests.test_config covers."""

    BASE = '[mux]\nhome_agent = "192.0.2.1"\nstate_db = "mux.sqlite"\ntls = false\n'

    def load(self, extra: str = "") -> Any:
        d = Path(self.mktemp())
        d.mkdir(exist_ok=True)
        path = d / "mux.toml"
        path.write_text(self.BASE + extra)
        return load_mux(path)

    def fails(self, extra: str, *fragments: str) -> None:
        from smobility.config import ConfigError

        e = self.assertRaises(ConfigError, self.load, extra)
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_defaults(self) -> None:
        c = self.load()
        self.assertEqual(
            (c.esp_port, c.max_sessions, c.max_buffer, c.idle_timeout, c.keepalive),
            (4500, 256, 262144, 60.0, 10.0),
        )
        self.assertEqual(
            (c.socks, c.socks_handshake_timeout, c.socks_max_per_user, c.tls_name),
            (True, 10.0, 16, None),
        )
        self.assertEqual(c.warnings, ())

    def test_values(self) -> None:
        c = self.load(
            "esp_port = 14500\nmax_sessions = 3\nmax_buffer = 16387\nidle_timeout = 2.5\n"
            "keepalive = 1\nsocks = false\n"
        )
        self.assertEqual(
            (c.esp_port, c.max_sessions, c.max_buffer, c.idle_timeout, c.keepalive, c.socks),
            (14500, 3, MAX_FRAME, 2.5, 1.0, False),
        )

    def test_min_buffer_is_one_frame(self) -> None:
        self.fails(f"max_buffer = {MAX_FRAME - 1}\n", "mux.max_buffer", "out of range")

    def test_errors(self) -> None:
        self.fails("esp_port = 434\n", "mux.esp_port", "also mux.home_agent_port")
        self.fails("esp_port = 0\n", "mux.esp_port", "out of range")
        self.fails("max_sessions = 0\n", "mux.max_sessions", "out of range")
        self.fails("idle_timeout = 0\n", "mux.idle_timeout", "out of range")
        self.fails("keepalive = 301\n", "mux.keepalive", "out of range")
        self.fails('keepalive = "10"\n', "mux.keepalive", "must be a number")
        self.fails('socks = "yes"\n', "mux.socks", "must be a boolean")
        self.fails("socks_handshake_timeout = -1\n", "mux.socks_handshake_timeout")
        self.fails("socks_max_per_user = 0\n", "mux.socks_max_per_user", "out of range")
        self.fails('tls_name = "not a name"\n', "mux.tls_name", "not a host name")
        self.fails("tls_name = 5\n", "mux.tls_name", "must be a string")

    def test_tls_name(self) -> None:
        c = self.load('tls_name = "Mux.Example.org."\n')
        self.assertEqual(c.tls_name, "mux.example.org")
        (warning,) = c.warnings
        self.assertIn("mux.tls_name", warning)
        self.assertIn("ignored because mux.tls is false", warning)
        self.assertEqual(self.load('tls_name = "192.0.2.7"\n').tls_name, "192.0.2.7")

    def test_socks_off(self) -> None:
        """Without the ingress its port may equal mux.port; its keys are ignored."""
        c = self.load("socks = false\nport = 1080\nsocks_port = 1080\n")
        self.assertFalse(c.socks)
        (warning,) = c.warnings
        self.assertIn("mux.socks_port", warning)
        self.fails("port = 1080\n", "mux.socks_port", "also mux.port")


class ServiceTests(SynchronousTestCase):
    """The tap: options, etc/mux.toml, twistd starting and stopping."""

    def test_example_config(self) -> None:
        cfg = load_mux(ROOT / "etc" / "mux.toml")
        self.assertEqual(cfg.warnings, ())
        self.assertFalse(cfg.tls)
        self.assertTrue(cfg.socks)
        self.assertEqual(mux_tap.socks_destination(cfg), (cfg.listen, cfg.port))
        self.assertEqual((cfg.esp_port, cfg.keepalive), (4500, 10.0))

    def test_socks_destination_wildcard(self) -> None:
        d = Path(self.mktemp())
        d.mkdir()
        path = write_mux(d, 8443, 1080, 434, 4500, listen="0.0.0.0")
        self.assertEqual(mux_tap.socks_destination(load_mux(path)), ("127.0.0.1", 8443))

    def test_bad_certificate_is_usage_error(self) -> None:
        from twisted.python import usage

        d = Path(self.mktemp()).resolve()
        d.mkdir()
        cert, key, _ = make_cert(d, "mux.example.org")
        path = write_mux(
            d, 8443, 1080, 434, 4500,
            extra=f'tls = true\ntls_cert = "{cert}"\ntls_key = "{key}"\ntls_name = "x.example"\n',
        )
        e = self.assertRaises(usage.UsageError, mux_tap.Options().parseOptions, ["-c", str(path)])
        self.assertIn("not valid for 'x.example'", str(e))

    def test_twistd_starts_and_stops(self) -> None:
        """twistd -n smobility-mux: serves through its SOCKS5 ingress, stops cleanly."""
        curl = require_tool(self, "curl")
        from smobility.store.users import UserStore

        d = Path(tempfile.mkdtemp(prefix="smob-mux-"))
        self.addCleanup(_rmtree, d)
        ha = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(ha.close)
        ha.bind(("127.0.0.1", 0))
        ha.settimeout(10)
        ha_port = ha.getsockname()[1]
        port, socks_port = free_tcp_port(), free_tcp_port()
        path = example_copy(d, port, socks_port, ha_port, free_udp_port())
        store = TokenStore(d / "mux.sqlite")
        token = store.issue("laptop")
        store.close()
        users = UserStore(d / "mux.sqlite")
        users.add("roamer", "secret-pass")
        users.close()
        proc = Twistd(d, "smobility-mux", path, "mux").start()
        try:
            proc.wait_for("multiplexer listening")
            body = d / "frame.bin"
            body.write_bytes(encode_frame(FrameType.MIP, b"via socks"))
            r = subprocess.run(
                [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                 "--socks5-hostname", f"roamer:secret-pass@127.0.0.1:{socks_port}",
                 "-H", f"Authorization: Smobility laptop:{token}",
                 "--data-binary", f"@{body}", f"http://127.0.0.1:{port}/tunnel/{SID}"],
                capture_output=True, timeout=30,
            )
            self.assertEqual(r.stdout, b"204", r.stderr)
            data, _ = ha.recvfrom(65535)
            self.assertEqual(data, b"via socks")
            proc.wait_for("session 01234567 opened by laptop")
        finally:
            code = proc.stop()
        text = proc.text()
        self.assertEqual(code, 0, text)
        self.assertIn("multiplexer stopped", text)
        self.assertNotIn("Traceback", text)

    def test_twistd_port_taken(self) -> None:
        """A taken port: exit status non-zero, one sentence, no traceback."""
        d = Path(tempfile.mkdtemp(prefix="smob-mux-"))
        self.addCleanup(_rmtree, d)
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        path = write_mux(d, port, free_tcp_port(), free_udp_port(), free_udp_port())
        proc = Twistd(d, "smobility-mux", path, "mux").start()
        assert proc.proc is not None
        try:
            status = proc.proc.wait(30)
        finally:
            proc.stop()
        text = proc.text()
        self.assertNotEqual(status, 0, text)
        self.assertRegex(text, rf"cannot listen for HTTP on 127\.0\.0\.1:{port} \(")
        self.assertNotIn("Traceback", text)


def write_mux(
    directory: Path, port: int, socks_port: int, ha_port: int, esp_port: int,
    *, listen: str = "127.0.0.1", extra: str = "tls = false\n",
) -> Path:
    """A multiplexer config on loopback with the given ports."""
    path = directory / "mux.toml"
    path.write_text(
        f"""
[mux]
listen = "{listen}"
port = {port}
{extra}
home_agent = "127.0.0.1"
home_agent_port = {ha_port}
esp_port = {esp_port}
socks_listen = "127.0.0.1"
socks_port = {socks_port}
state_db = "{directory / "mux.sqlite"}"
"""
    )
    return path


def example_copy(
    directory: Path, port: int, socks_port: int, ha_port: int, esp_port: int
) -> Path:
    """etc/mux.toml as it is, with free ports and a state database in C{directory}."""
    text = (ROOT / "etc" / "mux.toml").read_text()
    for key, value in (
        ("port", str(port)), ("socks_port", str(socks_port)),
        ("home_agent_port", str(ha_port)), ("esp_port", str(esp_port)),
        ("state_db", f'"{directory / "mux.sqlite"}"'),
    ):
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    path = directory / "mux.toml"
    path.write_text(text)
    return path


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
