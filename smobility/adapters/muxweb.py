# -*- test-case-name: tests.test_mux -*-
"""The multiplexer's HTTP(S) server and its UDP sockets (Twisted glue).

Each direction of a session has its own requests, so that half-duplex
proxies work as well as full-duplex ones:

- ``GET /tunnel/<session>``: ``200`` and a chunked body that never ends on
  its own: every datagram from the home agent becomes one frame, written
  (and so flushed) as soon as it arrives, with a KEEPALIVE frame first and
  then every ``keepalive`` seconds.  A newer GET of the same session
  replaces the older one, which ends with a CLOSE frame.
- ``POST /tunnel/<session>``: a body of frames, chunked and streaming or
  with a Content-Length (batched).  Each frame goes to the home agent as it
  arrives, not when the body ends: :class:`TunnelRequest` takes the body in
  :meth:`~TunnelRequest.handleContentChunk`, which twisted.web's resource
  API would buffer whole.  The answer is ``204`` when the body ends.

The session table and every decision live in
:class:`smobility.engines.mux.MuxEngine`; this module owns the sockets, the
requests and the timers.
"""

from __future__ import annotations

import io
import socket
from ipaddress import ip_address
from pathlib import Path
from typing import Any, cast

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IPushProducer
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import http
from zope.interface import implementer

from smobility.engines.mux import Admission, MuxEngine, Rejection, Session, session_from_path
from smobility.wire.httptunnel import (
    Frame,
    FrameDecoder,
    WireError,
    close_frame,
    keepalive_frame,
)

__all__ = [
    "HTTP_TIMEOUT",
    "MAX_DISCARD",
    "TLSSetupError",
    "TunnelChannel",
    "TunnelFactory",
    "TunnelRequest",
    "TunnelServer",
    "tls_options",
]

HTTP_TIMEOUT = 30.0
"""Seconds a connection may stay silent while it is not streaming a response:
before its headers are complete, between requests and inside a request body.
A streaming POST must therefore carry a frame (a KEEPALIVE will do) at least
this often."""

MAX_DISCARD = 65536
"""Body bytes read and thrown away for a refused or failed request before
the connection is closed."""

MAX_HEADERS = 64
"""Header lines a request may have."""

MAX_HEADER_BYTES = 8192
"""Bytes of request line and headers a request may have."""

_GET = b"GET"
_POST = b"POST"


class TLSSetupError(Exception):
    """The TLS certificate or key cannot be used; the text is one sentence."""


SESSION_RCVBUF = 4 * 1024 * 1024
"""Receive buffer of each session's UDP socket (bytes)."""


class _SessionSocket(DatagramProtocol):
    """The UDP socket of one session: sends to the home agent, takes its replies."""

    def __init__(self, server: TunnelServer, session: Session) -> None:
        self.server = server
        self.session = session
        self.port: IListeningPort | None = None
        self._warned = False

    def startProtocol(self) -> None:  # noqa: N802
        # The home agent sends in bursts (GSO batches): the default 208 KiB
        # receive buffer overflows and every overflow is a lost packet.
        transport: Any = self.transport
        sock = transport.getHandle() if transport is not None else None
        if sock is None:
            return
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SESSION_RCVBUF)
                break
            except OSError:
                continue

    def send(self, payload: bytes, destination: tuple[str, int]) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(payload, destination)
        except OSError as e:
            self.server.engine.counters["up_send_errors"] += 1
            if not self._warned:
                self._warned = True
                self.server.log.warn(
                    "session {sid}: cannot send to {dest}: {err}",
                    sid=self.session.short, dest=destination, err=e.strerror,
                )

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        if self.server.engine.down_datagram(self.session, datagram, addr):
            self.server.flush(self.session)


@implementer(IPushProducer)
class _DownStream:
    """The response of one GET: frames go out as they come, with keepalives.

    It is the request's push producer, so a client (or proxy) that reads too
    slowly pauses it; frames then wait in the session's bounded queue.
    """

    def __init__(self, server: TunnelServer, session: Session, request: TunnelRequest) -> None:
        self.server = server
        self.session = session
        self.request = request
        self.paused = False
        self.done = False
        self._keepalive = LoopingCall(self.keepalive)
        self._keepalive.clock = server.reactor

    def start(self) -> None:
        r = self.request
        r.setResponseCode(200)
        r.setHeader(b"Content-Type", b"application/octet-stream")
        r.setHeader(b"Cache-Control", b"no-store")
        # Reverse proxies such as nginx buffer responses unless told not to.
        r.setHeader(b"X-Accel-Buffering", b"no")
        r.registerProducer(self, True)
        r.notifyFinish().addBoth(self._ended)
        # The first frame pushes the headers through proxies that wait for body bytes.
        self.write(keepalive_frame())
        self._keepalive.start(self.server.keepalive, now=False)

    def write(self, frame: bytes) -> None:
        if not self.done:
            self.request.write(frame)

    def keepalive(self) -> None:
        if not self.done and not self.paused:
            self.write(keepalive_frame())
            self.server.engine.counters["down_keepalives"] += 1

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self.server.flush(self.session)

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = True

    def end(self, reason: str) -> None:
        """End the response with a CLOSE frame giving ``reason``."""
        if self.done:
            return
        self.write(close_frame(reason))
        self.done = True
        self._stop_timer()
        self.request.unregisterProducer()
        self.request.finish()

    def _stop_timer(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()

    def _ended(self, result: object) -> None:
        # Finished by us, or the connection went away.
        self.done = True
        self._stop_timer()
        self.server.down_ended(self)
        # A lost connection is an ordinary end of a GET: do not log it as an error.
        return None


class TunnelRequest(http.Request):
    """One request to ``/tunnel/<session>``, handled while its body arrives.

    :meth:`headers_received` runs when the headers are complete, before the
    body: a POST is admitted there and its frames relayed by
    :meth:`handleContentChunk` one by one.  :meth:`process` runs when the
    body has ended.
    """

    log = Logger()
    _server: TunnelServer
    _admission: Admission | None = None
    _rejection: Rejection | None = None
    _decoder: FrameDecoder | None = None
    _answered_early = False
    _aborted = False
    _discarded = 0

    def headers_received(self, command: bytes, path: bytes, version: bytes) -> None:
        """The request line and headers are complete; the body (if any) follows."""
        self._server = self.channel.factory.server
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        if command == _POST:
            self._admit()
            if self._admission is not None:
                self._decoder = FrameDecoder()

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        # The body is never kept: no temporary file for a chunked upload.
        self.content = cast(Any, io.BytesIO())

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self._aborted:
            return
        decoder = self._decoder
        if decoder is None or self._admission is None:
            self._discard(data)
            return
        session = self._admission.session
        try:
            # Each frame goes up before the next is decoded: the frames
            # before a bad one are relayed, the rest of the body is dropped.
            for frame in decoder.iter_feed(data):
                self._server.up(session, frame)
        except WireError as e:
            self._upstream_failed(e, early=True)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        if self._aborted:
            return
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        self.process()

    def process(self) -> None:
        if not hasattr(self, "_server"):
            self._server = self.channel.factory.server
        if self._answered_early:
            self.finish()
            return
        if self.method != _POST:
            # A POST was admitted when its headers came; anything else is now.
            self._admit()
        if self._rejection is not None:
            self._refuse(self._rejection)
            return
        admission = self._admission
        assert admission is not None
        if self.method == _GET:
            self._server.attach_down(admission.session, self)
            return
        assert self._decoder is not None
        try:
            self._decoder.finish()
        except WireError as e:
            self._upstream_failed(e, early=False)
            return
        self.setResponseCode(204)
        self.setHeader(b"Cache-Control", b"no-store")
        self.finish()

    # -- helpers ----------------------------------------------------------

    def _admit(self) -> None:
        server = self._server
        sid = session_from_path(self.path)
        if sid is None:
            server.engine.counters["not_found"] += 1
            self._rejection = Rejection(404, "no such path; expected /tunnel/<32 hex digits>")
        elif self.method not in (_GET, _POST):
            server.engine.counters["bad_method"] += 1
            self._rejection = Rejection(405, "only GET and POST are served here")
        else:
            values = self.requestHeaders.getRawHeaders(b"Authorization") or []
            header = values[0] if len(values) == 1 else None
            result = server.admit(sid, header, self)
            if isinstance(result, Rejection):
                self._rejection = result
            else:
                self._admission = result
        if self._rejection is not None:
            server.note_rejection(self._rejection, self.getClientAddress())

    def _upstream_failed(self, error: WireError, *, early: bool) -> None:
        admission = self._admission
        assert admission is not None
        self._decoder = None
        self._server.bad_frame(admission.session, str(error))
        if early:
            # Answer now (a full-duplex path shows it at once), read and
            # drop the rest of the body, then close the connection.
            self._answered_early = True
            self._write_refusal(Rejection(400, f"bad frame: {error}"), close=True)
        else:
            self._refuse(Rejection(400, f"bad frame: {error}"))

    def _discard(self, data: bytes) -> None:
        self._discarded += len(data)
        if self._discarded <= MAX_DISCARD:
            return
        # Someone keeps sending a body nobody will read: answer and hang up.
        self._aborted = True
        if not self.startedWriting:
            rejection = self._rejection or Rejection(413, "request body too large")
            self._write_refusal(rejection, close=True)
        if self.channel is not None:
            self.channel.loseConnection()

    def _write_refusal(self, rejection: Rejection, *, close: bool) -> None:
        body = rejection.reason.encode("utf-8") + b"\n"
        self.setResponseCode(rejection.status)
        self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        self.setHeader(b"Cache-Control", b"no-store")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        if rejection.status == 401:
            self.setHeader(b"WWW-Authenticate", b"Smobility")
        elif rejection.status == 503:
            self.setHeader(b"Retry-After", b"10")
        elif rejection.status == 405:
            self.setHeader(b"Allow", b"GET, POST")
        if close and self.channel is not None:
            self.channel.persistent = False
            self.setHeader(b"Connection", b"close")
        self.write(body)

    def _refuse(self, rejection: Rejection) -> None:
        self._write_refusal(rejection, close=False)
        self.finish()


class TunnelChannel(http.HTTPChannel):
    """HTTP/1.1 channel that tells its request when the headers are complete.

    twisted.web hands a request its method and path only once the whole
    body has arrived; a streaming POST needs them before.
    """

    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEADER_BYTES
    requestFactory = TunnelRequest

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        # A roaming client vanishes without closing its GET.  The keepalive
        # frames keep data in flight, so the kernel gives up on a dead peer
        # after this long instead of retrying for a quarter of an hour, and the
        # GET ends (the session may then expire).
        server = getattr(self.factory, "server", None)
        if server is not None:
            _set_user_timeout(self.transport, server.tcp_user_timeout)

    def allHeadersReceived(self) -> None:  # noqa: N802
        request = self.requests[-1]
        # Set by HTTPChannel.lineReceived from the request line.
        command = getattr(self, "_command", b"")
        path = getattr(self, "_path", b"")
        version = getattr(self, "_version", b"")
        super().allHeadersReceived()
        if isinstance(request, TunnelRequest) and not request.finished:
            request.headers_received(command, path, version)


class TunnelFactory(http.HTTPFactory):
    """The HTTP factory of the tunnel: :class:`TunnelChannel`, no access log."""

    protocol = TunnelChannel  # type: ignore[assignment]
    noisy = False

    def __init__(self, server: TunnelServer, *, timeout: float, reactor: Any) -> None:
        super().__init__(timeout=timeout, reactor=reactor)
        self.server = server

    def log(self, request: http.Request) -> None:
        # Request paths hold session ids; the server logs what matters itself.
        return None


class TunnelServer:
    """The multiplexer: the session table's I/O, one UDP socket per session.

    :param engine: the session table.
    :param keepalive: seconds between KEEPALIVE frames on a GET.
    :param reactor: the reactor (UDP sockets, timers).
    :param udp_interface: the address the session sockets bind to.
    """

    log = Logger()

    def __init__(
        self,
        engine: MuxEngine,
        *,
        keepalive: float,
        reactor: Any,
        udp_interface: str = "",
    ) -> None:
        self.engine = engine
        self.keepalive = keepalive
        self.reactor = reactor
        self.udp_interface = udp_interface
        self.tcp_user_timeout = max(HTTP_TIMEOUT, 4 * keepalive)
        """Seconds unacknowledged data may wait before the kernel drops a connection."""
        self.sockets: dict[Session, _SessionSocket] = {}
        self.downs: dict[Session, _DownStream] = {}
        self._refused = 0
        self._refusal_logged = float("-inf")

    def factory(self, timeout: float = HTTP_TIMEOUT) -> TunnelFactory:
        """An HTTP factory serving the tunnel; ``timeout`` is the idle-connection limit."""
        return TunnelFactory(self, timeout=timeout, reactor=self.reactor)

    # -- sessions ---------------------------------------------------------

    def admit(
        self, sid: str, authorization: bytes | None, request: http.Request
    ) -> Admission | Rejection:
        """Admit one request (engine), opening the socket of a new session."""
        try:
            result = self.engine.admit(sid, authorization)
        except Exception:
            # The credential store failed (say, a locked database): refuse
            # this request, keep serving the others.
            self.engine.counters["internal_errors"] += 1
            self.log.failure("cannot check a credential")
            return Rejection(503, "cannot check the credential now")
        if isinstance(result, Rejection):
            return result
        session = result.session
        if result.created:
            sock = _SessionSocket(self, session)
            try:
                sock.port = self.reactor.listenUDP(0, sock, interface=self.udp_interface)
            except CannotListenError as e:
                self.engine.release(session)
                self.engine.close(session)
                self.engine.counters["socket_errors"] += 1
                self.log.warn(
                    "cannot open a UDP socket for a new session: {err}", err=e.socketError
                )
                return Rejection(503, "cannot open a socket for the session")
            self.sockets[session] = sock
            assert sock.port is not None
            self.log.info(
                "session {sid} opened by {name} from {peer}, UDP port {port} towards {ha}",
                sid=session.short, name=session.owner, peer=_peer(request),
                port=cast(Any, sock.port.getHost()).port, ha=self.engine.home_agent,
            )
        request.notifyFinish().addBoth(lambda _: self.engine.release(session))
        return result

    def up(self, session: Session, frame: Frame) -> None:
        """Relay one frame from the client."""
        destination = self.engine.up_frame(session, frame)
        if destination is not None:
            sock = self.sockets.get(session)
            if sock is not None:
                sock.send(frame.payload, destination)
        elif session.closed and session in self.sockets:
            self._teardown(session, f"closed by the client: {frame.reason[:200]}")

    def bad_frame(self, session: Session, why: str) -> None:
        """A POST of ``session`` broke the framing: tell the client on its GET.

        The session stays (socket, queued frames); its current GET, if any,
        ends with a CLOSE frame giving the reason, as every GET ends.
        """
        self.engine.counters["bad_frames"] += 1
        self.log.warn("session {sid}: POST dropped: {why}", sid=session.short, why=why)
        down = self.downs.pop(session, None)
        if down is not None:
            down.end(f"POST dropped: bad frame: {why}")

    def flush(self, session: Session) -> None:
        """Write the queued frames of ``session`` to its GET, if it has one that may."""
        down = self.downs.get(session)
        if down is None:
            return
        while not down.paused and not down.done:
            frame = self.engine.take(session)
            if frame is None:
                return
            down.write(frame)

    def attach_down(self, session: Session, request: TunnelRequest) -> None:
        """Make ``request`` the download stream of ``session`` (replacing an older one)."""
        old = self.downs.pop(session, None)
        if old is not None:
            self.engine.counters["get_replaced"] += 1
            old.end("replaced by a newer GET")
        down = _DownStream(self, session, request)
        self.downs[session] = down
        down.start()
        self.flush(session)

    def down_ended(self, down: _DownStream) -> None:
        """A GET ended (finished by us or cut by the client)."""
        if self.downs.get(down.session) is down:
            del self.downs[down.session]

    def close(self, session: Session, reason: str) -> None:
        """Close one session now."""
        self.engine.close(session)
        self._teardown(session, reason)

    def expire(self) -> None:
        """Close the sessions the engine finds idle (called by a timer).

        Never raises: an error would stop the timer that calls it.
        """
        try:
            for session in self.engine.expire():
                self._teardown(session, "session expired (idle)")
        except Exception:
            self.engine.counters["internal_errors"] += 1
            self.log.failure("internal error while expiring sessions")

    def shutdown(self, reason: str = "multiplexer shutting down") -> None:
        """Close every session (at service stop)."""
        for session in list(self.engine.sessions.values()):
            self.close(session, reason)

    def _teardown(self, session: Session, reason: str) -> None:
        sock = self.sockets.pop(session, None)
        if sock is not None and sock.port is not None:
            sock.port.stopListening()
        down = self.downs.pop(session, None)
        if down is not None:
            down.end(reason)
        c = session.counters
        self.log.info(
            "session {sid} of {name} closed: {reason} (up {up} frames, down {down} "
            "frames, {dropped} dropped)",
            sid=session.short, name=session.owner, reason=reason, up=c["up_frames"],
            down=c["down_frames"], dropped=c["down_dropped"] + c["down_foreign"],
        )

    # -- logging ----------------------------------------------------------

    def note_rejection(self, rejection: Rejection, peer: object) -> None:
        """Log a refused request, at most one line per 10 s (floods stay quiet)."""
        self._refused += 1
        now = self.reactor.seconds()
        if now - self._refusal_logged < 10.0:
            return
        more = self._refused - 1
        self._refused = 0
        self._refusal_logged = now
        self.log.warn(
            "refused a request from {peer}: {status} {reason}{more}",
            peer=_address(peer), status=rejection.status, reason=rejection.reason,
            more=f" ({more} other refusals since the last report)" if more else "",
        )


def _set_user_timeout(transport: object, seconds: float) -> None:
    """Set TCP_USER_TIMEOUT (Linux) on the socket under ``transport`` (TLS or not)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    for _ in range(4):
        if transport is None or option is None:
            return
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            try:
                handle.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)


def _address(addr: object) -> str:
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    return f"{host}:{port}" if host is not None else str(addr)


def _peer(request: http.Request) -> str:
    return _address(request.getClientAddress())


# ---------------------------------------------------------------------------
# TLS


def tls_options(cert_path: Path, key_path: Path, name: str | None = None) -> Any:
    """The server's TLS settings from PEM files (certificate chain and key).

    The first certificate in ``cert_path`` is the server's, the others its
    chain.  With ``name``, the certificate must be valid for it (the name
    clients verify).  TLS 1.2 is the minimum (Twisted's default).

    :raises TLSSetupError: with one sentence naming the file and the problem.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from twisted.internet.ssl import CertificateOptions

    try:
        cert_pem = cert_path.read_bytes()
    except OSError as e:
        raise TLSSetupError(
            f"cannot read the TLS certificate {cert_path} ({e.strerror})"
        ) from None
    try:
        key_pem = key_path.read_bytes()
    except OSError as e:
        raise TLSSetupError(f"cannot read the TLS key {key_path} ({e.strerror})") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSSetupError(
            f"{cert_path} holds no PEM certificate; expected the server certificate, "
            "then its chain"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # Never echo the key's content.
        raise TLSSetupError(
            f"{key_path} is not an unencrypted PEM private key"
        ) from None
    leaf = chain[0]
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, raw) != key.public_key().public_bytes(der, raw):
        raise TLSSetupError(f"the key {key_path} does not belong to the certificate {cert_path}")
    if name is not None:
        _check_name(leaf, name, cert_path)
    # pyOpenSSL takes cryptography objects (its own wrappers are deprecated);
    # Twisted's annotations still name the wrappers.
    options: Any = CertificateOptions
    return options(privateKey=key, certificate=leaf, extraCertChain=chain[1:] or None)


def _check_name(cert: Any, name: str, cert_path: Path) -> None:
    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    try:
        try:
            ip_address(name)
        except ValueError:
            verify_certificate_hostname(cert, name)
        else:
            verify_certificate_ip_address(cert, name)
    except (VerificationError, CertificateError):
        raise TLSSetupError(
            f"the certificate {cert_path} is not valid for {name!r} (mux.tls_name): "
            "clients would refuse it"
        ) from None
