# -*- test-case-name: tests.test_httpclient -*-
"""The client side of the HTTP(S) tunnel to the multiplexer.

A roaming client on a network that lets out nothing but HTTP(S), perhaps only
through a proxy, keeps its tunnel up by framing the datagrams it would send
over UDP (Mobile IP registrations, ESP-in-UDP) in HTTP requests to the
multiplexer (:mod:`smobility.wire.httptunnel` frames):

* down: one long ``GET /tunnel/<session>`` whose chunked 200 body is a stream
  of frames (the multiplexer adds a KEEPALIVE about every 10 s);
* up: ``POST /tunnel/<session>`` requests on a connection of their own, each a
  chunked body of frames written as they come, ended after a while (or a
  number of bytes) so that half-duplex proxies, which hold the response until
  the request body ends, do answer; or, in batch mode, one short POST with a
  Content-Length per batch of frames.

:class:`HTTPTunnelTransport` runs both legs over any path: directly, through
a SOCKS5 proxy (:class:`~smobility.adapters.socks.SOCKS5ClientEndpoint`),
through an HTTP proxy's CONNECT (:class:`HTTPConnectEndpoint`), or through an
HTTP proxy with plain absolute-URI requests, with TLS to the multiplexer on
top (names checked by ``service_identity``).  The HTTP layer is Twisted's
``Agent``; every TCP connection it makes is tracked, so a stalled stream can
be aborted and :meth:`HTTPTunnelTransport.stop` can wait for every socket to
close.  See ``doc/http-transport.md``.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    succeed,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ProxyAgent, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from smobility.wire.errors import WireError
from smobility.wire.httptunnel import (
    MAX_PAYLOAD,
    FrameDecoder,
    FrameType,
    close_frame,
    encode_frame,
    keepalive_frame,
)

__all__ = [
    "PROXY_KINDS",
    "HTTPConnectEndpoint",
    "HTTPTunnelError",
    "HTTPTunnelTransport",
    "ProxySpec",
]

PROXY_KINDS = ("socks5", "http-connect", "http-plain")
"""The kinds of proxy a :class:`ProxySpec` names."""

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_STATUS_RE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")
_MAX_HEAD = 16 * 1024
_USER_AGENT = b"smobility-http-tunnel/1"


def _host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _printable(raw: bytes, limit: int = 80) -> str:
    """Bytes from the network made safe for a one-line message."""
    text = raw[:limit].decode("latin-1")
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _basic(username: str, password: str) -> bytes:
    """The value of a ``Proxy-Authorization: Basic`` header."""
    raw = f"{username}:{password}".encode()
    return b"Basic " + base64.b64encode(raw)


class HTTPTunnelError(Exception):
    """The HTTP tunnel cannot be set up; the text is one sentence for the user.

    It names who refused (the proxy, the multiplexer, TLS) and the status when
    there is one, and never holds a secret.

    @ivar status: the HTTP status that caused it, if any.
    @ivar permanent: C{True} when retrying cannot help until the
        configuration changes (credentials, certificate, path): the transport
        then goes to C{"failed"} instead of reconnecting.
    """

    def __init__(self, message: str, *, status: int | None = None, permanent: bool = False):
        super().__init__(message)
        self.status = status
        self.permanent = permanent
        self.connect_refused = False
        """C{True} when an HTTP proxy answered CONNECT with a refusal other than 401/407."""


@dataclass(frozen=True)
class ProxySpec:
    """A proxy on the way to the multiplexer.

    ``kind`` is ``"socks5"`` (RFC 1928/1929, names resolved by the proxy),
    ``"http-connect"`` (an HTTP proxy's CONNECT; with ``tls`` off, plain
    requests are tried when CONNECT is refused) or ``"http-plain"`` (an HTTP
    proxy that gets absolute-URI requests: ``http://`` only).  The password
    never appears in the ``repr``.
    """

    kind: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in PROXY_KINDS:
            raise ValueError(f"proxy kind {self.kind!r} is not one of {', '.join(PROXY_KINDS)}")
        if not self.host:
            raise ValueError("a proxy needs a host")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"proxy port {self.port} is out of range")
        if (self.username is None) != (self.password is None):
            raise ValueError("give a proxy user name and password together, or neither")
        if self.kind == "socks5" and self.username is None:
            raise ValueError("a SOCKS5 proxy needs a user name and password (RFC 1929)")
        if self.username is not None and ":" in self.username and self.kind != "socks5":
            raise ValueError("an HTTP proxy user name cannot contain ':' (Basic authentication)")

    @property
    def address(self) -> str:
        """``host:port`` of the proxy, for messages."""
        return _host_port(self.host, self.port)

    @property
    def label(self) -> str:
        """``the SOCKS5 proxy at h:p`` / ``the HTTP proxy at h:p``."""
        what = "SOCKS5" if self.kind == "socks5" else "HTTP"
        return f"the {what} proxy at {self.address}"


# ---------------------------------------------------------------------------
# HTTP CONNECT


def _proxy_refusal(label: str, status: int, phrase: str, target: str, *, has_credentials: bool
                   ) -> HTTPTunnelError:
    """The error for a proxy's non-2xx answer to CONNECT (or to a plain request)."""
    shown = f"{status} {phrase}".strip()
    if status == 407 or status == 401:
        # tinyproxy answers wrong credentials with 401, missing ones with 407.
        if has_credentials:
            text = f"{label} rejected the proxy credentials ({shown})"
        else:
            text = f"{label} requires proxy credentials ({shown})"
        return HTTPTunnelError(text, status=status, permanent=True)
    err = HTTPTunnelError(
        f"{label} refused to connect to {target} ({shown})", status=status,
        permanent=status in (403, 405),
    )
    err.connect_refused = True
    return err


class _ConnectProtocol(Protocol):
    """Sends CONNECT, reads the proxy's answer, then hands the connection over."""

    transport: Any

    def __init__(self, endpoint: HTTPConnectEndpoint, factory: IProtocolFactory,
                 done: Deferred[IProtocol]) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._done = done
        self._buffer = bytearray()
        self._timer: IDelayedCall | None = None
        self._failed = False
        self.wrapped: IProtocol | None = None

    def connectionMade(self) -> None:  # noqa: N802
        if self._done.called:  # cancelled while the TCP connection was made
            self._failed = True
            self.transport.abortConnection()
            return
        ep = self._endpoint
        if ep.timeout is not None:
            self._timer = ep.reactor.callLater(ep.timeout, self._timed_out)
        target = ep.target.encode("idna")
        lines = [
            b"CONNECT " + target + b" HTTP/1.1",
            b"Host: " + target,
            b"User-Agent: " + _USER_AGENT,
        ]
        if ep.username is not None and ep.password is not None:
            lines.append(b"Proxy-Authorization: " + _basic(ep.username, ep.password))
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        if self._failed:
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._fail(HTTPTunnelError(
                    f"{self._endpoint.label} sent an oversized answer to CONNECT"))
            return
        head = bytes(self._buffer[:end])
        rest = bytes(self._buffer[end + 4:])
        self._buffer = bytearray()
        first = head.split(b"\r\n", 1)[0]
        m = _STATUS_RE.fullmatch(first)
        if m is None:
            self._fail(HTTPTunnelError(
                f"{self._endpoint.label} sent a malformed answer to CONNECT "
                f"({_printable(first, 40)!r})"))
            return
        status = int(m.group(1))
        if not 200 <= status < 300:
            phrase = _printable(m.group(2) or b"")
            self._fail(_proxy_refusal(
                self._endpoint.label, status, phrase, self._endpoint.target,
                has_credentials=self._endpoint.username is not None))
            return
        self._hand_over(rest)

    def _hand_over(self, rest: bytes) -> None:
        self._cancel_timer()
        try:
            wrapped = self._factory.buildProtocol(self.transport.getPeer())
        except Exception:
            self._failed = True
            self.transport.abortConnection()
            self._done.errback()
            return
        if wrapped is None:
            self._fail(HTTPTunnelError("the protocol factory built nothing"))
            return
        self.wrapped = wrapped
        wrapped.makeConnection(self.transport)
        self._done.callback(wrapped)
        if rest and self.transport.connected:
            wrapped.dataReceived(rest)

    def _fail(self, err: HTTPTunnelError) -> None:
        if self._failed:
            return
        self._failed = True
        self._cancel_timer()
        self.transport.abortConnection()
        if not self._done.called:
            self._done.errback(err)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(HTTPTunnelError(
            f"{self._endpoint.label} did not answer CONNECT within {self._endpoint.timeout:g} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def cancel(self) -> None:
        """Abandon the attempt (the caller cancelled it)."""
        if self.wrapped is None and not self._failed:
            self._failed = True
            self._cancel_timer()
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._cancel_timer()
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)
            return
        if not self._failed:
            self._failed = True
            if not self._done.called:
                self._done.errback(HTTPTunnelError(
                    f"{self._endpoint.label} closed the connection before answering CONNECT"))


class _ConnectFactory(Factory):
    noisy = False

    def __init__(self, endpoint: HTTPConnectEndpoint, factory: IProtocolFactory,
                 done: Deferred[IProtocol]) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._done = done
        self.instance: _ConnectProtocol | None = None

    def buildProtocol(self, addr: IAddress | None) -> _ConnectProtocol:  # noqa: N802
        self.instance = _ConnectProtocol(self._endpoint, self._factory, self._done)
        return self.instance


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    """Connects to C{host}:C{port} through an HTTP proxy's CONNECT method.

    Sends ``CONNECT host:port`` (with ``Proxy-Authorization: Basic`` when a
    user name is given), and on a 2xx answer hands the connection to the
    protocol built by the factory (any bytes after the answer go to it).  The
    Deferred of L{connect} fails with L{HTTPTunnelError}: for 407 (and the 401
    tinyproxy sends for wrong credentials) "the HTTP proxy at H:P rejected the
    proxy credentials (407 Proxy Authentication Required)", for any other
    status "... refused to connect to ... (502 Bad Gateway)", and for a
    malformed answer, a timeout or a closed connection a sentence saying so.

    @param proxy_endpoint: the TCP path to the proxy.
    @param proxy_address: ``host:port`` of the proxy for messages (default:
        read from C{proxy_endpoint} when it is a TCP or hostname endpoint).
    @param timeout: seconds for the proxy's answer (C{None}: no limit).
    @param reactor: the C{IReactorTime} for that timeout (default: the global one).
    """

    def __init__(
        self,
        proxy_endpoint: IStreamClientEndpoint,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        proxy_address: str | None = None,
        timeout: float | None = 30.0,
        reactor: Any = None,
    ) -> None:
        if not host or any(c in host for c in "\r\n /@"):
            raise ValueError(f"bad CONNECT destination host {host!r}")
        if not 1 <= port <= 65535:
            raise ValueError(f"destination port {port} is out of range")
        if (username is None) != (password is None):
            raise ValueError("give a proxy user name and password together, or neither")
        self.proxy_endpoint = proxy_endpoint
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.target = _host_port(host, port)
        if proxy_address is None:
            proxy_address = _endpoint_address(proxy_endpoint)
        self.label = f"the HTTP proxy at {proxy_address}"
        self.timeout = timeout
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor

    def __repr__(self) -> str:
        who = f" as {self.username!r}" if self.username is not None else ""
        return f"<HTTPConnectEndpoint {self.target} via {self.label[4:]}{who}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """Connect through the proxy; see the class docstring."""
        factory: _ConnectFactory | None = None
        connecting: Deferred[IProtocol] | None = None

        def cancel(d: Deferred[IProtocol]) -> None:
            if connecting is not None and not connecting.called:
                connecting.cancel()
            elif factory is not None and factory.instance is not None:
                factory.instance.cancel()

        done: Deferred[IProtocol] = Deferred(cancel)
        factory = _ConnectFactory(self, protocolFactory, done)

        def proxy_failed(failure: Failure) -> None:
            if done.called or failure.check(CancelledError):
                return
            done.errback(HTTPTunnelError(
                f"cannot connect to {self.label}: {_connect_reason(failure)}"))

        connecting = self.proxy_endpoint.connect(factory)
        connecting.addErrback(proxy_failed)
        return done


def _endpoint_address(endpoint: Any) -> str:
    """``host:port`` of a TCP or hostname endpoint, for messages; ``?`` otherwise."""
    host = getattr(endpoint, "_hostText", None) or getattr(endpoint, "_host", None)
    port = getattr(endpoint, "_port", None)
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if isinstance(host, str) and isinstance(port, int):
        return _host_port(host, port)
    return "?"


def _connect_reason(failure: Failure) -> str:
    """A short reason for a failed TCP connection."""
    if failure.check(ierror.ConnectionRefusedError):
        return "connection refused"
    if failure.check(ierror.TimeoutError):
        return "timed out"
    if failure.check(ierror.DNSLookupError):
        return "its name does not resolve"
    if failure.check(ierror.NoRouteError):
        return "no route to host"
    return failure.getErrorMessage()


# ---------------------------------------------------------------------------
# Socket tracking: every TCP connection the transport makes, whatever the path


class _Tracker(ProtocolWrapper):
    """Sits right on a TCP connection: lets us abort it and see it close."""

    def __init__(self, factory: Any, wrapped: IProtocol) -> None:
        super().__init__(factory, wrapped)
        self.closed: Deferred[None] = Deferred()

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        try:
            transport.setTcpNoDelay(True)
        except Exception:  # noqa: S110 - not TCP: nothing to tune
            pass
        super().makeConnection(transport)
        on_socket = cast(_TrackingFactory, self.factory).on_socket
        on_socket(self)

    def abort(self) -> None:
        """Drop the connection now (no TLS close, no flushing)."""
        transport: Any = self.transport
        if transport is not None and self.connected:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        try:
            super().connectionLost(reason)
        finally:
            if not self.closed.called:
                self.closed.callback(None)


class _TrackingFactory(WrappingFactory):
    protocol = _Tracker
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, on_socket: Callable[[_Tracker], None]) -> None:
        super().__init__(wrapped)
        self.on_socket = on_socket


@implementer(IStreamClientEndpoint)
class _TrackedEndpoint:
    """A TCP endpoint whose connections are reported to C{on_socket}."""

    def __init__(self, inner: IStreamClientEndpoint, on_socket: Callable[[_Tracker], None],
                 host: str, port: int) -> None:
        self._inner = inner
        self._on_socket = on_socket
        # Named like a TCP endpoint's, for the messages of the proxy endpoints.
        self._hostText = host
        self._port = port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        d = cast(Deferred[Any],
                 self._inner.connect(_TrackingFactory(protocolFactory, self._on_socket)))
        return d.addCallback(lambda tracker: tracker.wrappedProtocol)


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    def __init__(self, make: Callable[[], IStreamClientEndpoint]) -> None:
        self._make = make

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:  # noqa: N802
        return self._make()


# ---------------------------------------------------------------------------
# The legs: one HTTP request each


class _Leg:
    """One request of the tunnel (the GET, a streaming POST or a batch POST)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sockets: list[_Tracker] = []
        self.request: Deferred[IResponse] | None = None
        self.timers: list[IDelayedCall] = []
        self.producer: _UpStream | None = None
        self.aborted = False

    def add_timer(self, call: IDelayedCall) -> IDelayedCall:
        self.timers.append(call)
        return call

    def cancel_timers(self) -> None:
        for t in self.timers:
            if t.active():
                t.cancel()
        self.timers.clear()

    def adopt(self, tracker: _Tracker) -> None:
        """A connection of this leg is made (dropped at once if the leg is gone)."""
        self.sockets.append(tracker)
        if self.aborted:
            # The connection completed although the attempt was cancelled.
            tracker.abort()

    def abort(self) -> None:
        """Drop the request and its connections."""
        self.aborted = True
        self.cancel_timers()
        if self.request is not None and not self.request.called:
            self.request.cancel()
        for s in self.sockets:
            s.abort()


@implementer(IBodyProducer)
class _UpStream:
    """The body of a streaming POST: frames written as they come."""

    length = UNKNOWN_LENGTH

    def __init__(self, owner: HTTPTunnelTransport, leg: _Leg) -> None:
        self._owner = owner
        self.leg = leg
        self.consumer: IConsumer | None = None
        self.done: Deferred[None] = Deferred()
        self.paused = False
        self.stopped = False
        self.bytes = 0

    @property
    def writable(self) -> bool:
        return self.consumer is not None and not self.paused and not self.stopped \
            and not self.done.called

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:  # noqa: N802
        self.consumer = consumer
        self._owner._up_started(self)
        return self.done

    def write(self, data: bytes) -> None:
        assert self.consumer is not None
        self.bytes += len(data)
        self.consumer.write(data)

    def end(self) -> None:
        """End the body (the last chunk goes out; then the response comes)."""
        if not self.done.called and not self.stopped:
            self.done.callback(None)

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self._owner._flush()

    def stopProducing(self) -> None:  # noqa: N802
        # The connection is gone: never fire done (the request is already failed).
        self.stopped = True
        self._owner._up_stopped(self)


@implementer(IBodyProducer)
class _BytesBody:
    """A body known in full (a batch POST): sent with a Content-Length."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:  # noqa: N802
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


class _FrameReceiver(Protocol):
    """Gets the GET's body and feeds the frame decoder."""

    def __init__(self, owner: HTTPTunnelTransport, leg: _Leg) -> None:
        self._owner = owner
        self._leg = leg
        self._decoder = FrameDecoder()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            frames = self._decoder.feed(data)
        except WireError as e:
            self._owner._down_lost(self._leg, HTTPTunnelError(
                f"{self._owner.mux_label} sent a malformed frame ({e})"))
            return
        for frame in frames:
            if self._leg is not self._owner._down:
                return
            self._owner._frame_down(self._leg, frame.type, frame.payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if reason.check(ResponseDone):
            why = f"{self._owner.mux_label} ended the download stream"
        else:
            why = f"the download stream from {self._owner.mux_label} broke off"
        self._owner._down_lost(self._leg, HTTPTunnelError(why))


class _Discard(Protocol):
    """Reads and drops a response body we do not need."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        pass


# ---------------------------------------------------------------------------
# The transport


class HTTPTunnelTransport:
    """The client's HTTP(S) tunnel to the multiplexer: frames down and up.

    State (:attr:`state`, also reported to ``on_state(state, reason)``):
    ``"down"`` before :meth:`start` and while waiting to reconnect,
    ``"connecting"`` while the GET is on its way, ``"up"`` once it returned
    200, ``"failed"`` after a refusal that retrying cannot fix (credentials,
    certificate name, path; the reason is the :class:`HTTPTunnelError`
    sentence).  It reconnects by itself, with exponential backoff between
    ``reconnect_initial`` and ``reconnect_max``, when a proxy or the
    multiplexer ends the stream, or when nothing (not even a KEEPALIVE) came
    down for three times ``keepalive`` seconds.

    :param host: the multiplexer's host name or address (as the proxy sees it).
    :param tls: HTTPS to the multiplexer; ``tls_name`` is the name its
        certificate must carry (default ``host``), ``ca_file`` the PEM CA
        certificate(s) to trust (default: the system's trust store).
    :param name: the credential name; ``token`` its secret.
    :param proxy: the proxy to go through, or ``None``.
    :param on_datagram: gets ``(1, datagram)`` for Mobile IP and ``(2, datagram)``
        for ESP-in-UDP from the home agent.
    :param keepalive: seconds between KEEPALIVE frames up when idle; three
        times it without a frame down is a stall.
    :param upload: ``"stream"`` (chunked POSTs, ended every
        ``post_max_seconds`` or ``post_max_bytes``) or ``"batch"`` (one POST
        with a Content-Length per batch, for proxies that do not stream
        request bodies).
    :param queue_limit: bytes of frames kept while no POST can take them;
        beyond it frames are dropped and counted (``dropped_queue_full``).
    """

    log = Logger()

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: bool,
        tls_name: str | None,
        ca_file: Path | None,
        name: str,
        token: bytes,
        proxy: ProxySpec | None,
        reactor: Any,
        on_datagram: Callable[[int, bytes], None],
        outer_proxy: ProxySpec | None = None,
        on_state: Callable[[str, str | None], None] | None = None,
        keepalive: float = 10.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 10.0,
        upload: str = "stream",
        post_max_seconds: float = 30.0,
        post_max_bytes: int = 256 * 1024 * 1024,
        batch_max_bytes: int = 64 * 1024,
        queue_limit: int = 256 * 1024,
        connect_timeout: float = 20.0,
    ) -> None:
        if not host or any(c in host for c in "\r\n /@"):
            raise ValueError(f"bad multiplexer host {host!r}")
        if not 1 <= port <= 65535:
            raise ValueError(f"multiplexer port {port} is out of range")
        if _NAME_RE.fullmatch(name) is None:
            raise ValueError("a credential name is 1 to 64 of A-Z a-z 0-9 _ . -")
        if not 1 <= len(token) <= 64:
            raise ValueError("a credential token is 1 to 64 bytes")
        if upload not in ("stream", "batch"):
            raise ValueError(f"upload mode {upload!r} is not 'stream' or 'batch'")
        if proxy is not None and proxy.kind == "http-plain" and tls:
            raise ValueError(
                "an http-plain proxy carries only http:// requests: set tls = false, "
                "or use http-connect for HTTPS"
            )
        if keepalive <= 0 or reconnect_initial <= 0 or reconnect_max < reconnect_initial:
            raise ValueError("keepalive and reconnect delays must be positive, initial <= max")
        self.host = host
        self.port = port
        self.tls = tls
        self.tls_name = tls_name or host
        self.name = name
        if outer_proxy is not None and (
            outer_proxy.kind == "http-plain" or proxy is None or proxy.kind == "http-plain"
        ):
            raise ValueError(
                "a proxy chain is an outer http-connect or socks5 proxy in front of an "
                "inner http-connect or socks5 proxy"
            )
        self.proxy = proxy
        self.outer_proxy = outer_proxy
        self.reactor = reactor
        self.on_datagram = on_datagram
        self.on_state = on_state
        self.keepalive = keepalive
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.upload = upload
        self.post_max_seconds = post_max_seconds
        self.post_max_bytes = post_max_bytes
        self.batch_max_bytes = batch_max_bytes
        self.queue_limit = queue_limit
        self.connect_timeout = connect_timeout
        self._authorization = f"Smobility {name}:{token.hex()}".encode("ascii")
        self._trust = self._load_trust(ca_file) if tls else None
        self.mux_address = _host_port(host, port)
        self.mux_label = f"the multiplexer at {self.mux_address}"

        self.state = "down"
        """``down``, ``connecting``, ``up`` or ``failed``."""
        self.counters: Counter[str] = Counter()
        """frames/bytes up and down, keepalives, drops, requests, reconnects, stalls."""
        self.last_error: str | None = None
        """The sentence of the last problem (``None`` until there is one)."""
        self.session: str | None = None
        """The session id (32 hex digits), new at each :meth:`start`."""
        self.plain = proxy is not None and proxy.kind == "http-plain"
        """Plain absolute-URI requests to an HTTP proxy (explicit, or CONNECT was refused)."""

        self._running = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._sockets: set[_Tracker] = set()
        self._down: _Leg | None = None
        self._up: _UpStream | None = None  # the POST frames go into
        self._up_next: _Leg | None = None  # a POST on its way to replace it
        self._old: set[_Leg] = set()  # ended POSTs waiting for their response
        self._batch: _Leg | None = None
        self._batch_pool: HTTPConnectionPool | None = None
        self._batch_agent: Any = None
        self._reconnect: IDelayedCall | None = None
        self._up_retry: IDelayedCall | None = None
        self._ka: IDelayedCall | None = None
        self._stall: IDelayedCall | None = None
        self._delay = reconnect_initial
        self._up_delay = reconnect_initial

    # -- public -------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Bytes of frames waiting for a POST."""
        return self._queued

    def start(self) -> None:
        """Open the tunnel with a new session id (and keep it open until :meth:`stop`)."""
        if self._running:
            return
        self._running = True
        self.session = secrets.token_hex(16)
        self.plain = self.proxy is not None and self.proxy.kind == "http-plain"
        self._delay = self.reconnect_initial
        self._up_delay = self.reconnect_initial
        self.log.info("HTTP tunnel to {mux}{via}: session {sid}", mux=self.mux_label,
                      via=f" via {self.proxy.label}" if self.proxy else "", sid=self.session[:8])
        self._open_down()

    def stop(self) -> Deferred[None]:
        """Close the tunnel: a CLOSE frame up if possible, then every connection.

        The Deferred fires once every socket of the transport has closed
        (at most a few seconds: the last POST gets 2 s to be answered).
        """
        was_up = self.state == "up"
        self._running = False
        self._cancel_calls()
        if self._down is not None:
            self._down.abort()
            self._down = None
        if self._up_next is not None:
            self._up_next.abort()
            self._up_next = None
        if was_up and self._up is not None and self._up.writable:
            self._up.write(close_frame("client stopped"))
            self.counters["frames_up_close"] += 1
        if self._up is not None:
            self._end_up(self._up)
            self._up = None
        if self._batch is not None:
            self._batch.abort()
            self._batch = None
        self._close_batch_pool()
        self._queue.clear()
        self._queued = 0
        self._set_state("down", "stopped")
        return self._all_closed(2.0)

    def send(self, kind: int, datagram: bytes) -> None:
        """Send one datagram to the home agent: ``kind`` 1 (Mobile IP) or 2 (ESP-in-UDP).

        Frames queue (up to ``queue_limit`` bytes) while no POST can take
        them; beyond that, or after a failure, they are dropped and counted.
        Oversized datagrams (more than 16384 bytes) are dropped and counted.

        :raises ValueError: for any other ``kind``.
        """
        if kind not in (FrameType.MIP, FrameType.ESP):
            raise ValueError(f"frame kind {kind} is not 1 (MIP) or 2 (ESP)")
        if len(datagram) > MAX_PAYLOAD:
            self.counters["dropped_oversize"] += 1
            return
        if self.state == "failed":
            self.counters["dropped_failed"] += 1
            return
        if self._put(encode_frame(kind, datagram)):
            self.counters["frames_up"] += 1
            self.counters["bytes_up"] += len(datagram)

    # -- state --------------------------------------------------------------

    def _set_state(self, state: str, reason: str | None = None) -> None:
        if state == self.state:
            return
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state, reason)
            except Exception:
                self.log.failure("on_state callback failed")

    def _fail(self, err: HTTPTunnelError) -> None:
        """A refusal retrying cannot fix: stop everything, report ``failed``."""
        text = str(err)
        self.last_error = text
        self.counters["errors"] += 1
        self.log.error("HTTP tunnel failed: {err}", err=text)
        self._running = False
        self._cancel_calls()
        for leg in (self._down, self._up_next, self._batch):
            if leg is not None:
                leg.abort()
        self._down = self._up_next = self._batch = None
        if self._up is not None:
            self._up.leg.abort()
            self._up = None
        for leg in list(self._old):
            leg.abort()
        self._old.clear()
        self._close_batch_pool()
        dropped = len(self._queue)
        self._queue.clear()
        self._queued = 0
        self.counters["dropped_failed"] += dropped
        self._set_state("failed", text)

    def _close_batch_pool(self) -> None:
        if self._batch_pool is not None:
            self._batch_pool.closeCachedConnections()
        self._batch_pool = None
        self._batch_agent = None

    def _cancel_calls(self) -> None:
        for name in ("_reconnect", "_up_retry", "_ka", "_stall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def _all_closed(self, grace: float) -> Deferred[None]:
        """Fires when every socket has closed; those still open after C{grace} s are dropped."""
        waits: list[Deferred[Any]] = [s.closed for s in self._sockets]
        waits += [leg.request for leg in self._old if leg.request is not None]
        d = DeferredList(waits, consumeErrors=True)

        def drop_the_rest() -> None:
            for leg in list(self._old):
                self._old_expired(leg)
            for s in list(self._sockets):
                s.abort()

        deadline = self.reactor.callLater(grace, drop_the_rest)
        settled: Deferred[None] = Deferred()

        def done(_: object) -> None:
            if deadline.active():
                deadline.cancel()
            # One more turn of the reactor: the connectors tidy up after cancels.
            self.reactor.callLater(0, settled.callback, None)

        d.addCallback(done)
        return settled

    # -- connections --------------------------------------------------------

    def _load_trust(self, ca_file: Path | None) -> Any:
        if ca_file is None:
            return platformTrust()
        try:
            pem = Path(ca_file).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read the CA file {ca_file}: {e.strerror}") from None
        blocks = re.findall(
            rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL)
        if not blocks:
            raise ValueError(f"the CA file {ca_file} holds no PEM certificate")
        return trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])

    def _tls_creator(self) -> IOpenSSLClientConnectionCreator:
        return optionsForClientTLS(self.tls_name, trustRoot=self._trust)

    def _tcp(self, host: str, port: int, leg: _Leg | None) -> IStreamClientEndpoint:
        def on_socket(tracker: _Tracker) -> None:
            self.counters["connections"] += 1
            self._sockets.add(tracker)
            tracker.closed.addCallback(lambda _: self._sockets.discard(tracker))
            if leg is not None:
                leg.adopt(tracker)
            if not self._running:
                tracker.abort()  # made after stop() or a failure: nobody wants it
        inner: IStreamClientEndpoint
        if isIPAddress(host):
            # A literal needs no resolver (no thread, no lookup that can fail).
            inner = TCP4ClientEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        elif isIPv6Address(host):
            inner = TCP6ClientEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        else:
            inner = HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        return _TrackedEndpoint(inner, on_socket, host, port)

    def _path_endpoint(self, leg: _Leg | None) -> IStreamClientEndpoint:
        """The endpoint to the multiplexer over the configured path (not plain mode).

        With ``outer_proxy`` the path is a chain: the outer proxy connects to
        the inner one, which connects to the multiplexer (for example an
        authenticated HTTP proxy on a visited network, then the SOCKS5
        ingress at the home perimeter).
        """
        hops = [p for p in (self.outer_proxy, self.proxy) if p is not None]
        ep: IStreamClientEndpoint
        if not hops:
            ep = self._tcp(self.host, self.port, leg)
        else:
            ep = self._tcp(hops[0].host, hops[0].port, leg)
            for i, spec in enumerate(hops):
                nxt = hops[i + 1] if i + 1 < len(hops) else None
                host, port = (nxt.host, nxt.port) if nxt is not None else (self.host, self.port)
                ep = self._hop(spec, ep, host, port)
        if self.tls:
            ep = wrapClientTLS(self._tls_creator(), ep)
        return ep

    def _hop(
        self, spec: ProxySpec, inner: IStreamClientEndpoint, host: str, port: int
    ) -> IStreamClientEndpoint:
        """One proxy of the path: from ``inner`` (the way to it) on to host:port."""
        if spec.kind == "socks5":
            from smobility.adapters.socks import SOCKS5ClientEndpoint

            assert spec.username is not None and spec.password is not None
            return SOCKS5ClientEndpoint(
                inner, host, port,
                username=spec.username, password=spec.password,
                timeout=self.connect_timeout, reactor=self.reactor,
            )  # fmt: skip
        return HTTPConnectEndpoint(
            inner, host, port, spec.username, spec.password, proxy_address=spec.address,
            timeout=self.connect_timeout, reactor=self.reactor,
        )  # fmt: skip

    def _agent(self, leg: _Leg | None, pool: HTTPConnectionPool | None = None) -> Any:
        if pool is None:
            pool = HTTPConnectionPool(self.reactor, persistent=False)
        if self.plain:
            assert self.proxy is not None
            return ProxyAgent(self._tcp(self.proxy.host, self.proxy.port, leg),
                              self.reactor, pool=pool)
        return Agent.usingEndpointFactory(
            self.reactor, _EndpointFactory(lambda: self._path_endpoint(leg)), pool=pool)

    def _url(self) -> bytes:
        assert self.session is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_host_port(self.host, self.port)}/tunnel/{self.session}".encode(
            "idna")

    def _headers(self, *, post: bool) -> Headers:
        h = Headers({
            b"Authorization": [self._authorization],
            b"User-Agent": [_USER_AGENT],
            b"Cache-Control": [b"no-cache, no-store"],
            b"Pragma": [b"no-cache"],
        })
        if post:
            h.addRawHeader(b"Content-Type", b"application/octet-stream")
        if self.plain and self.proxy is not None and self.proxy.username is not None:
            assert self.proxy.password is not None
            h.addRawHeader(b"Proxy-Authorization",
                           _basic(self.proxy.username, self.proxy.password))
        return h

    # -- errors ---------------------------------------------------------------

    def _status_error(self, response: IResponse) -> HTTPTunnelError:
        status = response.code
        phrase = _printable(response.phrase or b"")
        headers = response.headers
        if self.plain and self.proxy is not None:
            www = b" ".join(headers.getRawHeaders(b"WWW-Authenticate", []))
            from_proxy = status == 407 or (
                status == 401 and (headers.hasHeader(b"Proxy-Authenticate")
                                   or not www.lower().startswith(b"smobility")))
            if from_proxy:
                err = _proxy_refusal(self.proxy.label, status, phrase, self.mux_address,
                                     has_credentials=self.proxy.username is not None)
                err.connect_refused = False
                return err
            if status in (502, 504):
                return HTTPTunnelError(
                    f"{self.proxy.label} could not reach {self.mux_label} ({status} {phrase})",
                    status=status)
        if status == 401:
            return HTTPTunnelError(f"{self.mux_label} refused the client credential (401)",
                                   status=401, permanent=True)
        if status == 403:
            return HTTPTunnelError(
                f"{self.mux_label} refused the session: it belongs to another client (403)",
                status=403, permanent=True)
        if status == 404:
            return HTTPTunnelError(
                f"{self.mux_label} does not serve the tunnel path (404): is it a multiplexer?",
                status=404, permanent=True)
        if status == 503:
            return HTTPTunnelError(f"{self.mux_label} has too many sessions (503)", status=503)
        return HTTPTunnelError(f"{self.mux_label} answered {status} {phrase}".rstrip(),
                               status=status)

    def _explain(self, failure: Failure) -> HTTPTunnelError:
        """Turn whatever an HTTP request failed with into one sentence."""
        reasons = _flatten(failure)
        for f in reasons:
            if f.check(HTTPTunnelError):
                return cast(HTTPTunnelError, f.value)
        for f in reasons:
            if f.check("smobility.adapters.socks.SOCKSError"):
                text = str(f.value)
                code = getattr(f.value, "reply_code", None)
                permanent = code == 0x02 or "username or password" in text \
                    or "acceptable authentication" in text
                return HTTPTunnelError(text, permanent=permanent)
        for f in reasons:
            if f.check("service_identity.exceptions.VerificationError"):
                return HTTPTunnelError(
                    f"TLS: the multiplexer's certificate does not match the name {self.tls_name}",
                    permanent=True)
        for f in reasons:
            if f.check(SSL.Error):
                detail = _ssl_detail(f.value)
                if "certificate verify failed" in detail:
                    return HTTPTunnelError(
                        f"TLS: the multiplexer's certificate at {_host_port(self.host, self.port)}"
                        " is not signed by a trusted CA (check ca_file)", permanent=True)
                return HTTPTunnelError(
                    f"TLS: the handshake with {self.mux_label} failed ({detail})")
        for f in reasons:
            if f.check(ierror.ConnectError, ierror.DNSLookupError):
                where = self.proxy.label if self.proxy is not None else self.mux_label
                return HTTPTunnelError(f"cannot connect to {where}: {_connect_reason(f)}")
        for f in reasons:
            if f.check(CancelledError):
                return HTTPTunnelError(
                    f"no answer from {self.mux_label} within {self.connect_timeout:g} s")
        for f in reasons:
            if f.check(ierror.ConnectionDone, ierror.ConnectionLost):
                return HTTPTunnelError(
                    f"the connection to {self.mux_label} closed before it answered")
        last = reasons[-1] if reasons else failure
        return HTTPTunnelError(
            f"the HTTP tunnel to {self.mux_label} failed ({last.type.__name__}: "
            f"{last.getErrorMessage()})")

    # -- the GET (down) -------------------------------------------------------

    def _open_down(self) -> None:
        self._reconnect = None
        if not self._running:
            return
        leg = _Leg("down")
        self._down = leg
        self._set_state("connecting", None)
        self.counters["get_requests"] += 1
        try:
            d = self._agent(leg).request(b"GET", self._url(), self._headers(post=False))
        except Exception:
            self._down_lost(leg, self._explain(Failure()))
            return
        leg.request = d
        leg.add_timer(self.reactor.callLater(self.connect_timeout, d.cancel))
        d.addCallbacks(self._down_response, self._down_failed,
                       callbackArgs=(leg,), errbackArgs=(leg,))

    def _down_response(self, response: IResponse, leg: _Leg) -> None:
        leg.cancel_timers()
        if leg is not self._down:
            response.deliverBody(_Discard())
            leg.abort()
            return
        if response.code != 200:
            response.deliverBody(_Discard())
            self._down_lost(leg, self._status_error(response))
            return
        self._delay = self.reconnect_initial
        self._set_state("up", None)
        self.log.info("HTTP tunnel up ({mux}{via}{plain})", mux=self.mux_label,
                      via=f" via {self.proxy.label}" if self.proxy else "",
                      plain=", plain requests" if self.plain else "")
        self._arm_stall()
        response.deliverBody(_FrameReceiver(self, leg))
        if self.upload == "stream":
            if self._up is None and self._up_next is None:
                self._open_up()
        else:
            self._kick_batch()
        self._arm_keepalive()

    def _down_failed(self, failure: Failure, leg: _Leg) -> None:
        leg.cancel_timers()
        if leg is not self._down:
            return
        err = self._explain(failure)
        if (
            err.connect_refused
            and self.proxy is not None
            and self.proxy.kind == "http-connect"
            and not self.tls
            and not self.plain
        ):
            # CONNECT refused: try plain requests through the same proxy (http:// only).
            self.log.info("{err}; trying plain requests through the proxy", err=str(err))
            self.plain = True
            self.counters["plain_fallbacks"] += 1
            self._down = None
            leg.abort()
            self._open_down()
            return
        self._down_lost(leg, err)

    def _down_lost(self, leg: _Leg, err: HTTPTunnelError) -> None:
        if leg is not self._down:
            return
        self._down = None
        leg.abort()
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        if not self._running:
            return
        if err.permanent:
            self._fail(err)
            return
        text = str(err)
        self.last_error = text
        self.counters["errors"] += 1
        was_up = self.state == "up"
        if was_up:
            self.log.warn("HTTP tunnel down: {err}", err=text)
        else:
            self.log.info("HTTP tunnel not up: {err}", err=text)
        # Without the download stream the path is suspect: end the POST (the
        # frames already written still count) and queue until the GET is back.
        if self._up is not None:
            self._end_up(self._up)
            self._up = None
        if self._up_next is not None:
            self._up_next.abort()
            self._up_next = None
        self._set_state("down", text)
        delay = self._delay
        self._delay = min(self._delay * 2, self.reconnect_max)
        self.counters["reconnects"] += 1
        self._reconnect = self.reactor.callLater(delay, self._open_down)

    def _arm_stall(self) -> None:
        limit = 3 * self.keepalive
        if self._stall is not None and self._stall.active():
            self._stall.reset(limit)
        else:
            self._stall = self.reactor.callLater(limit, self._stalled)

    def _stalled(self) -> None:
        self._stall = None
        leg = self._down
        if leg is None:
            return
        self.counters["stalls"] += 1
        self._down_lost(leg, HTTPTunnelError(
            f"nothing came down from {self.mux_label} for {3 * self.keepalive:g} s"))

    def _frame_down(self, leg: _Leg, kind: FrameType, payload: bytes) -> None:
        self._arm_stall()
        if kind is FrameType.KEEPALIVE:
            self.counters["keepalives_down"] += 1
            return
        if kind is FrameType.CLOSE:
            reason = payload.decode("utf-8", "replace")
            self._down_lost(leg, HTTPTunnelError(
                f"{self.mux_label} closed the session ({_printable(reason.encode(), 200)})"))
            return
        self.counters["frames_down"] += 1
        self.counters["bytes_down"] += len(payload)
        try:
            self.on_datagram(int(kind), payload)
        except Exception:
            self.counters["internal_errors"] += 1
            self.log.failure("on_datagram callback failed")

    # -- the POSTs (up) ---------------------------------------------------------

    def _put(self, frame: bytes) -> bool:
        """Write a frame up now, or queue it; C{False} if it had to be dropped."""
        if self.upload == "stream" and self._up is not None and self._up.writable \
                and not self._queue:
            self._write_up(self._up, frame)
            return True
        if self._queued + len(frame) > self.queue_limit:
            self.counters["dropped_queue_full"] += 1
            return False
        self._queue.append(frame)
        self._queued += len(frame)
        if self.upload == "batch":
            self._kick_batch()
        return True

    def _write_up(self, up: _UpStream, frame: bytes) -> None:
        up.write(frame)
        self._arm_keepalive()
        if up.bytes >= self.post_max_bytes:
            self._rotate()

    def _flush(self) -> None:
        up = self._up
        while up is not None and up.writable and self._queue:
            frame = self._queue.popleft()
            self._queued -= len(frame)
            self._write_up(up, frame)
            up = self._up

    def _arm_keepalive(self) -> None:
        if not self._running:
            return
        if self._ka is not None and self._ka.active():
            self._ka.reset(self.keepalive)
        else:
            self._ka = self.reactor.callLater(self.keepalive, self._keepalive_due)

    def _keepalive_due(self) -> None:
        self._ka = None
        if self.state == "up":
            if self.upload == "stream":
                if self._up is not None and self._up.writable and not self._queue:
                    self.counters["keepalives_up"] += 1
                    self._write_up(self._up, keepalive_frame())
                    return
            elif self._batch is None and not self._queue:
                self.counters["keepalives_up"] += 1
                self._queue.append(keepalive_frame())
                self._queued += 3
                self._kick_batch()
        self._arm_keepalive()

    def _open_up(self) -> None:
        """Start a streaming POST (it takes over once its connection is made)."""
        self._up_retry = None
        if not self._running or self.state != "up" or self._up_next is not None:
            return
        leg = _Leg("up")
        producer = _UpStream(self, leg)
        leg.producer = producer
        self._up_next = leg
        self.counters["post_requests"] += 1
        try:
            d = self._agent(leg).request(b"POST", self._url(), self._headers(post=True),
                                         producer)
        except Exception:
            self._up_failed(Failure(), leg)
            return
        leg.request = d
        leg.add_timer(self.reactor.callLater(self.connect_timeout, self._up_timeout, leg))
        d.addCallbacks(self._up_response, self._up_failed,
                       callbackArgs=(leg,), errbackArgs=(leg,))

    def _up_timeout(self, leg: _Leg) -> None:
        if leg is self._up_next:
            self._up_failed(Failure(HTTPTunnelError(
                f"no connection for the upload to {self.mux_label} within "
                f"{self.connect_timeout:g} s")), leg)

    def _up_started(self, producer: _UpStream) -> None:
        """A POST's connection is made: it becomes the one frames go into."""
        leg = producer.leg
        if leg is not self._up_next:
            return
        leg.cancel_timers()
        self._up_next = None
        old, self._up = self._up, producer
        if old is not None:
            self._end_up(old)
        self._up_delay = self.reconnect_initial
        leg.add_timer(self.reactor.callLater(self.post_max_seconds, self._rotate))
        self._flush()
        self._arm_keepalive()

    def _rotate(self) -> None:
        """Time or size is up for the current POST: start its successor."""
        if self._up_next is None and self._running and self.state == "up":
            self._open_up()

    def _end_up(self, producer: _UpStream) -> None:
        """End a POST's body and wait (a while) for its response."""
        leg = producer.leg
        leg.cancel_timers()
        self._old.add(leg)
        producer.end()
        wait = max(3 * self.keepalive, self.connect_timeout)
        leg.add_timer(self.reactor.callLater(wait, self._old_expired, leg))

    def _old_expired(self, leg: _Leg) -> None:
        self._old.discard(leg)
        leg.abort()

    def _up_stopped(self, producer: _UpStream) -> None:
        """The transport told the body producer to stop: its connection is gone."""
        if producer is self._up:
            self._up = None
            self._retry_up()

    def _up_response(self, response: IResponse, leg: _Leg) -> None:
        response.deliverBody(_Discard())
        leg.cancel_timers()
        self._old.discard(leg)
        # A POST we did not end yet was answered early: the multiplexer ended it.
        live = leg is self._up_next or leg.producer is self._up
        if leg is self._up_next:
            self._up_next = None
        if leg.producer is self._up:
            self._up = None
        if response.code in (200, 204):
            self.counters["post_ok"] += 1
            if live:
                self._rotate()
            return
        err = self._status_error(response)
        if not self._running:
            return
        if err.permanent:
            self._fail(err)
            return
        self.log.warn("HTTP tunnel upload: {err}", err=str(err))
        self.last_error = str(err)
        self.counters["errors"] += 1
        if live:
            self._retry_up()

    def _up_failed(self, failure: Failure, leg: _Leg) -> None:
        leg.cancel_timers()
        self._old.discard(leg)
        live = leg is self._up_next or (leg.producer is not None and leg.producer is self._up)
        if leg is self._up_next:
            self._up_next = None
            leg.abort()
        if leg.producer is not None and leg.producer is self._up:
            self._up = None
        if not live or not self._running:
            return
        err = self._explain(failure)
        if err.permanent:
            self._fail(err)
            return
        self.log.info("HTTP tunnel upload interrupted: {err}", err=str(err))
        self.last_error = str(err)
        self.counters["errors"] += 1
        self._retry_up()

    def _retry_up(self) -> None:
        if not self._running or self.state != "up":
            return
        if self._up_retry is not None and self._up_retry.active():
            return
        if self._up_next is not None:
            return
        delay = self._up_delay
        self._up_delay = min(self._up_delay * 2, self.reconnect_max)
        self._up_retry = self.reactor.callLater(delay, self._open_up)

    # -- batch mode -----------------------------------------------------------

    def _kick_batch(self) -> None:
        if self._batch is not None or not self._queue or self.state != "up" \
                or not self._running or (self._up_retry is not None and self._up_retry.active()):
            return
        parts: list[bytes] = []
        size = 0
        while self._queue and (not parts or size + len(self._queue[0]) <= self.batch_max_bytes):
            frame = self._queue.popleft()
            self._queued -= len(frame)
            parts.append(frame)
            size += len(frame)
        leg = _Leg("batch")
        self._batch = leg
        if self._batch_pool is None:
            # Batches reuse one kept-alive connection (through the proxy too).
            self._batch_pool = HTTPConnectionPool(self.reactor, persistent=True)
            self._batch_pool.maxPersistentPerHost = 1
            self._batch_pool.cachedConnectionTimeout = int(max(2 * self.keepalive, 30))
            self._batch_agent = self._agent(None, self._batch_pool)
        self.counters["post_requests"] += 1
        try:
            d = self._batch_agent.request(
                b"POST", self._url(), self._headers(post=True), _BytesBody(b"".join(parts)))
        except Exception:
            self._batch_failed(Failure(), leg)
            return
        leg.request = d
        leg.add_timer(self.reactor.callLater(self.connect_timeout, d.cancel))
        d.addCallbacks(self._batch_response, self._batch_failed,
                       callbackArgs=(leg,), errbackArgs=(leg,))
        self._arm_keepalive()

    def _batch_response(self, response: IResponse, leg: _Leg) -> None:
        leg.cancel_timers()
        response.deliverBody(_Discard())
        if leg is not self._batch:
            return
        self._batch = None
        if response.code in (200, 204):
            self.counters["post_ok"] += 1
            self._up_delay = self.reconnect_initial
            self._kick_batch()
            return
        err = self._status_error(response)
        if err.permanent:
            self._fail(err)
            return
        self.log.warn("HTTP tunnel upload: {err}", err=str(err))
        self.last_error = str(err)
        self.counters["errors"] += 1
        self._batch_retry()

    def _batch_failed(self, failure: Failure, leg: _Leg) -> None:
        leg.cancel_timers()
        if leg is not self._batch:
            return
        self._batch = None
        leg.abort()
        if not self._running:
            return
        err = self._explain(failure)
        if err.permanent:
            self._fail(err)
            return
        self.counters["dropped_in_flight"] += 1
        self.last_error = str(err)
        self.counters["errors"] += 1
        self._batch_retry()

    def _batch_retry(self) -> None:
        if self._up_retry is not None and self._up_retry.active():
            return
        delay = self._up_delay
        self._up_delay = min(self._up_delay * 2, self.reconnect_max)

        def again() -> None:
            self._up_retry = None
            self._kick_batch()

        self._up_retry = self.reactor.callLater(delay, again)


def _flatten(failure: Failure) -> list[Failure]:
    """A failure and, depth first, the failures wrapped in its C{reasons}."""
    out = [failure]
    for inner in getattr(failure.value, "reasons", None) or []:
        if isinstance(inner, Failure):
            out.extend(_flatten(inner))
    return out


def _ssl_detail(err: BaseException) -> str:
    """The reason strings of an OpenSSL error, joined."""
    parts: list[str] = []
    for item in err.args[0] if err.args and isinstance(err.args[0], list) else []:
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return ", ".join(p for p in parts if p) or str(err) or type(err).__name__
