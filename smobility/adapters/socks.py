# -*- test-case-name: tests.test_socks -*-
"""SOCKS5 for the HTTP tunnel: the multiplexer's ingress and a client endpoint.

The ingress (:class:`SOCKS5IngressFactory`) is the SOCKS5 server at the home
perimeter in front of the multiplexer: RFC 1928 CONNECT, RFC 1929
username/password and nothing else.  It is never an open proxy: the only
destination it connects to is the multiplexer's address it was configured
with, whatever the client asks for; any other destination is refused with
"connection not allowed by ruleset".

The client side (:class:`SOCKS5ClientEndpoint`) is an
``IStreamClientEndpoint`` that reaches a destination through any SOCKS5 proxy
with username/password, driving the sans-I/O ``socksio`` library.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from socksio import ProtocolError
from socksio.socks5 import (
    SOCKS5AuthMethod,
    SOCKS5AuthMethodsRequest,
    SOCKS5AuthReply,
    SOCKS5Command,
    SOCKS5CommandRequest,
    SOCKS5Connection,
    SOCKS5Reply,
    SOCKS5ReplyCode,
    SOCKS5UsernamePasswordReply,
    SOCKS5UsernamePasswordRequest,
)
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import address, error
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger(namespace="smobility.socks")

# RFC 1928 / RFC 1929 numbers.
SOCKS_VERSION = 0x05
AUTH_VERSION = 0x01
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NO_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
CMD_BIND = 0x02
CMD_UDP_ASSOCIATE = 0x03
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

REP_SUCCEEDED = 0x00
REP_GENERAL_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_CONNECTION_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_TYPE_NOT_SUPPORTED = 0x08

#: RFC 1928 section 6: the text of each reply code.
REPLY_TEXT: dict[int, str] = {
    REP_SUCCEEDED: "succeeded",
    REP_GENERAL_FAILURE: "general SOCKS server failure",
    REP_NOT_ALLOWED: "connection not allowed by ruleset",
    REP_NETWORK_UNREACHABLE: "network unreachable",
    REP_HOST_UNREACHABLE: "host unreachable",
    REP_CONNECTION_REFUSED: "connection refused",
    REP_TTL_EXPIRED: "TTL expired",
    REP_COMMAND_NOT_SUPPORTED: "command not supported",
    REP_ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}

#: The two RFC 1929 status replies.
AUTH_SUCCESS = bytes((AUTH_VERSION, 0x00))
AUTH_FAILURE = bytes((AUTH_VERSION, 0x01))
#: The method selection reply that refuses every method the client offered.
NO_ACCEPTABLE_METHODS = bytes((SOCKS_VERSION, METHOD_NO_ACCEPTABLE))

# Counter keys of the ingress: one per refusal reason, and "accepted".
ACCEPTED = "accepted"
CONNECTION_LIMIT = "connection_limit"
HANDSHAKE_TIMEOUT = "handshake_timeout"
MALFORMED = "malformed"
NO_ACCEPTABLE_METHOD = "no_acceptable_method"
BAD_CREDENTIALS = "bad_credentials"
AUTH_ERROR = "auth_error"
PER_USER_LIMIT = "per_user_limit"
COMMAND_NOT_SUPPORTED = "command_not_supported"
ADDRESS_TYPE_NOT_SUPPORTED = "address_type_not_supported"
NOT_ALLOWED = "not_allowed"
MUX_REFUSED = "mux_refused"
MUX_UNREACHABLE = "mux_unreachable"
MUX_TIMEOUT = "mux_timeout"
MUX_FAILED = "mux_failed"

#: Every refusal reason the ingress counts.
REFUSAL_REASONS: tuple[str, ...] = (
    CONNECTION_LIMIT, HANDSHAKE_TIMEOUT, MALFORMED, NO_ACCEPTABLE_METHOD, BAD_CREDENTIALS,
    AUTH_ERROR, PER_USER_LIMIT, COMMAND_NOT_SUPPORTED, ADDRESS_TYPE_NOT_SUPPORTED, NOT_ALLOWED,
    MUX_REFUSED, MUX_UNREACHABLE, MUX_TIMEOUT, MUX_FAILED,
)

# Bytes the ingress keeps from a client before the tunnel is up.  The
# handshake messages are at most 513 bytes each; reading stops while a
# password is checked or the multiplexer is dialled, so only a client that
# sends far ahead of the handshake gets near this.
_MAX_PENDING = 128 * 1024


class SOCKSError(Exception):
    """A connection through a SOCKS5 proxy failed; the text is one sentence.

    @ivar reply_code: the RFC 1928 reply code when the proxy refused the
        CONNECT request, else C{None}.
    """

    def __init__(self, message: str, *, reply_code: int | None = None) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class Verifier(Protocol):
    """What the ingress needs of a user database (L{smobility.store.users.UserStore})."""

    def verify(self, name: bytes, password: bytes) -> bool | Deferred[bool]:
        """Whether C{password} is the password of C{name} (or a Deferred of that)."""


# ---------------------------------------------------------------------------
# The messages a client sends, parsed from the front of a buffer.  Each parser
# returns None while the message is incomplete, or (bytes consumed, fields).


class _Malformed(Exception):
    """The client sent something that is not SOCKS5 (no reply: just close)."""


class _BadAddressType(Exception):
    """A request with an ATYP that RFC 1928 does not define."""


@dataclass(frozen=True)
class Request:
    """A parsed RFC 1928 request.

    @ivar host: an L{ipaddress.IPv4Address} or L{ipaddress.IPv6Address} for
        ATYP 1 and 4, the raw name bytes for ATYP 3.
    """

    command: int
    atyp: int
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | bytes
    port: int

    def describe(self) -> str:
        """The destination as text for a log line."""
        if isinstance(self.host, bytes):
            host = _printable(self.host)
        elif isinstance(self.host, ipaddress.IPv6Address):
            host = f"[{self.host}]"
        else:
            host = str(self.host)
        return f"{host}:{self.port}"


def parse_greeting(buf: bytes | bytearray) -> tuple[int, bytes] | None:
    """Parse the method selection message: VER NMETHODS METHODS."""
    if len(buf) < 1:
        return None
    if buf[0] != SOCKS_VERSION:
        raise _Malformed(f"version {buf[0]} in the greeting, not 5")
    if len(buf) < 2:
        return None
    end = 2 + buf[1]
    if len(buf) < end:
        return None
    return end, bytes(buf[2:end])


def parse_auth(buf: bytes | bytearray) -> tuple[int, bytes, bytes] | None:
    """Parse the RFC 1929 request: VER ULEN UNAME PLEN PASSWD."""
    if len(buf) < 1:
        return None
    if buf[0] != AUTH_VERSION:
        raise _Malformed(f"version {buf[0]} in the username/password request, not 1")
    if len(buf) < 2:
        return None
    ulen = buf[1]
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    return end, bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end])


def parse_request(buf: bytes | bytearray) -> tuple[int, Request] | None:
    """Parse the request: VER CMD RSV ATYP DST.ADDR DST.PORT."""
    if len(buf) < 1:
        return None
    if buf[0] != SOCKS_VERSION:
        raise _Malformed(f"version {buf[0]} in the request, not 5")
    if len(buf) < 4:
        return None
    atyp = buf[3]
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | bytes
    if atyp == ATYP_IPV4:
        end = 4 + 4 + 2
        if len(buf) < end:
            return None
        host = ipaddress.IPv4Address(bytes(buf[4:8]))
    elif atyp == ATYP_IPV6:
        end = 4 + 16 + 2
        if len(buf) < end:
            return None
        host = ipaddress.IPv6Address(bytes(buf[4:20]))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < 5:
            return None
        end = 5 + buf[4] + 2
        if len(buf) < end:
            return None
        host = bytes(buf[5 : end - 2])
    else:
        raise _BadAddressType(f"address type {atyp}")
    (port,) = struct.unpack("!H", buf[end - 2 : end])
    return end, Request(buf[1], atyp, host, port)


def encode_reply(code: int, bound: IAddress | None = None) -> bytes:
    """An RFC 1928 reply with C{code} and the bound address (0.0.0.0:0 if unknown)."""
    if isinstance(bound, address.IPv6Address):
        ip6 = ipaddress.IPv6Address(bound.host.split("%", 1)[0])
        return struct.pack("!BBBB16sH", SOCKS_VERSION, code, 0, ATYP_IPV6, ip6.packed, bound.port)
    packed, port = b"\x00\x00\x00\x00", 0
    if isinstance(bound, address.IPv4Address):
        try:
            packed, port = ipaddress.IPv4Address(bound.host).packed, bound.port
        except ValueError:
            pass
    return struct.pack("!BBBB4sH", SOCKS_VERSION, code, 0, ATYP_IPV4, packed, port)


def _printable(raw: bytes, limit: int = 64) -> str:
    """Client-chosen bytes (a user or host name) made safe for one log line."""
    text = raw[:limit].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text + ("..." if len(raw) > limit else "")


def _describe_peer(peer: IAddress | None) -> str:
    if isinstance(peer, address.IPv6Address):
        return f"[{peer.host}]:{peer.port}"
    if isinstance(peer, address.IPv4Address):
        return f"{peer.host}:{peer.port}"
    return str(peer)


# ---------------------------------------------------------------------------
# The ingress server


class _State(enum.Enum):
    GREETING = enum.auto()
    AUTH = enum.auto()
    VERIFYING = enum.auto()
    REQUEST = enum.auto()
    CONNECTING = enum.auto()
    SPLICED = enum.auto()
    CLOSED = enum.auto()


class _MuxProtocol(TwistedProtocol):
    """The ingress's connection to the multiplexer: hands bytes to the client."""

    transport: Any

    def __init__(self, ingress: SOCKS5IngressProtocol) -> None:
        self.ingress = ingress

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.ingress.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.ingress.mux_lost()


class _MuxFactory(Factory):
    noisy = False

    def __init__(self, ingress: SOCKS5IngressProtocol) -> None:
        self.ingress = ingress

    def buildProtocol(self, addr: IAddress | None) -> _MuxProtocol:  # noqa: N802
        return _MuxProtocol(self.ingress)


class SOCKS5IngressProtocol(TwistedProtocol):
    """One client of the ingress: handshake, then a splice to the multiplexer."""

    transport: Any

    def __init__(self, factory: SOCKS5IngressFactory) -> None:
        self.owner = factory
        self.state = _State.GREETING
        self._buffer = bytearray()
        self._processing = False
        self._timer: IDelayedCall | None = None
        self._connect_timer: IDelayedCall | None = None
        self._connecting: Deferred[Any] | None = None
        self._admitted = False
        self._user: bytes | None = None
        self._user_counted = False
        self._over_user_limit = False
        self._connect_expired = False
        self.mux: _MuxProtocol | None = None
        self.peer = "?"

    # -- connection events

    def connectionMade(self) -> None:  # noqa: N802
        self.peer = _describe_peer(self.transport.getPeer())
        if not self.owner.admit():
            self._refuse(
                CONNECTION_LIMIT, f"{self.owner.max_connections} connections already open",
                None, abort=True,
            )
            return
        self._admitted = True
        self._timer = self.owner.reactor.callLater(
            self.owner.handshake_timeout, self._handshake_timed_out
        )

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.state is _State.SPLICED:
            assert self.mux is not None
            self.mux.transport.write(data)
            return
        if self.state is _State.CLOSED:
            return
        self._buffer += data
        if len(self._buffer) > _MAX_PENDING:
            self._refuse(MALFORMED, "too much data before the tunnel was up", None)
            return
        self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.state = _State.CLOSED
        self._cancel_timers()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self.mux is not None:
            self.mux.transport.loseConnection()
            self.mux = None
        self.owner.release(self)

    def mux_lost(self) -> None:
        """The multiplexer closed its side: close the client's too."""
        self.mux = None
        if self.state is not _State.CLOSED:
            self.state = _State.CLOSED
            self.transport.loseConnection()

    # -- the handshake

    def _process(self) -> None:
        """Parse every complete message in the buffer that the state allows."""
        if self._processing:
            return
        self._processing = True
        try:
            while self._buffer and self._step():
                pass
        finally:
            self._processing = False

    def _step(self) -> bool:
        """Handle one message; C{True} if one was consumed and parsing may go on."""
        try:
            if self.state is _State.GREETING:
                greeting = parse_greeting(self._buffer)
                if greeting is None:
                    return False
                del self._buffer[: greeting[0]]
                self._greeting(greeting[1])
            elif self.state is _State.AUTH:
                auth = parse_auth(self._buffer)
                if auth is None:
                    return False
                del self._buffer[: auth[0]]
                self._authenticate(auth[1], auth[2])
            elif self.state is _State.REQUEST:
                request = parse_request(self._buffer)
                if request is None:
                    return False
                del self._buffer[: request[0]]
                self._request(request[1])
            else:
                return False
        except _Malformed as e:
            self._refuse(MALFORMED, str(e), None)
            return False
        except _BadAddressType as e:
            self._refuse(
                ADDRESS_TYPE_NOT_SUPPORTED, str(e), encode_reply(REP_ADDRESS_TYPE_NOT_SUPPORTED)
            )
            return False
        return self.state in (_State.AUTH, _State.REQUEST)

    def _greeting(self, methods: bytes) -> None:
        if METHOD_USERNAME_PASSWORD not in methods:
            offered = ",".join(f"0x{m:02x}" for m in methods) or "none"
            self._refuse(
                NO_ACCEPTABLE_METHOD,
                f"no username/password method offered (offered {offered})",
                NO_ACCEPTABLE_METHODS,
            )
            return
        self.transport.write(bytes((SOCKS_VERSION, METHOD_USERNAME_PASSWORD)))
        self.state = _State.AUTH

    def _authenticate(self, name: bytes, password: bytes) -> None:
        if not name or not password:
            self._refuse(BAD_CREDENTIALS, "empty user name or password", AUTH_FAILURE)
            return
        self.state = _State.VERIFYING
        self.transport.pauseProducing()
        d = maybeDeferred(self.owner.users.verify, name, password)
        d.addCallbacks(self._verified, self._verify_failed, callbackArgs=(name,))
        d.addErrback(self._internal_error)

    def _verified(self, ok: bool, name: bytes) -> None:
        if self.state is not _State.VERIFYING:
            return
        self.transport.resumeProducing()
        if not ok:
            self._refuse(
                BAD_CREDENTIALS, f"wrong user name or password for user {_printable(name)!r}",
                AUTH_FAILURE,
            )
            return
        self._user = name
        if self.owner.per_user[name] >= self.owner.max_per_user:
            # Refused at the request, with "general failure": the credentials
            # were right, so the client must not be told they were not.
            self._over_user_limit = True
        else:
            self.owner.per_user[name] += 1
            self._user_counted = True
        self.transport.write(AUTH_SUCCESS)
        self.state = _State.REQUEST
        self._process()

    def _verify_failed(self, failure: Failure) -> None:
        log.failure("SOCKS5 ingress: checking a password failed", failure)
        if self.state is not _State.VERIFYING:
            return
        self.transport.resumeProducing()
        self._refuse(AUTH_ERROR, "the user database failed", AUTH_FAILURE)

    def _request(self, request: Request) -> None:
        user = _printable(self._user or b"")
        if request.command != CMD_CONNECT:
            self._refuse(
                COMMAND_NOT_SUPPORTED,
                f"user {user!r} asked for command {request.command} to {request.describe()}",
                encode_reply(REP_COMMAND_NOT_SUPPORTED),
            )
            return
        if not self.owner.allows(request):
            self._refuse(
                NOT_ALLOWED,
                f"user {user!r} asked for {request.describe()}, not the multiplexer",
                encode_reply(REP_NOT_ALLOWED),
            )
            return
        if self._over_user_limit:
            self._refuse(
                PER_USER_LIMIT,
                f"user {user!r} already has {self.owner.max_per_user} connections",
                encode_reply(REP_GENERAL_FAILURE),
            )
            return
        self.state = _State.CONNECTING
        self._cancel_timers()
        self.transport.pauseProducing()
        d = self.owner.mux_endpoint.connect(_MuxFactory(self))
        self._connecting = d
        self._connect_timer = self.owner.reactor.callLater(
            self.owner.connect_timeout, self._connect_timed_out
        )
        d.addCallbacks(self._mux_connected, self._mux_failed)
        d.addErrback(self._internal_error)

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        self._connect_expired = True
        if self._connecting is not None:
            self._connecting.cancel()

    def _mux_connected(self, mux: _MuxProtocol) -> None:
        self._connecting = None
        self._cancel_timers()
        if self.state is not _State.CONNECTING:
            mux.transport.loseConnection()
            return
        self.mux = mux
        self.state = _State.SPLICED
        self.owner.counters[ACCEPTED] += 1
        log.info(
            "SOCKS5 ingress: {peer} user {user!r} connected to the multiplexer",
            peer=self.peer, user=_printable(self._user or b""),
        )
        self.transport.write(encode_reply(REP_SUCCEEDED, mux.transport.getHost()))
        # Flow control both ways: each side stops reading when the other
        # side's write buffer is full.
        self.transport.registerProducer(mux.transport, True)
        mux.transport.registerProducer(self.transport, True)
        early, self._buffer = bytes(self._buffer), bytearray()
        if early:
            mux.transport.write(early)
        self.transport.resumeProducing()

    def _mux_failed(self, failure: Failure) -> None:
        self._connecting = None
        self._cancel_timers()
        if self.state is not _State.CONNECTING:
            return
        self.transport.resumeProducing()
        why = failure.getErrorMessage()
        if self._connect_expired:
            reason, code = MUX_TIMEOUT, REP_HOST_UNREACHABLE
            why = f"no connection within {self.owner.connect_timeout:g} s"
        elif failure.check(error.ConnectionRefusedError):
            reason, code = MUX_REFUSED, REP_CONNECTION_REFUSED
        elif failure.check(
            error.NoRouteError, error.DNSLookupError, error.TimeoutError,
            error.TCPTimedOutError, error.UnknownHostError,
        ):
            reason, code = MUX_UNREACHABLE, REP_HOST_UNREACHABLE
        else:
            reason, code = MUX_FAILED, REP_GENERAL_FAILURE
        self._refuse(reason, f"cannot reach the multiplexer: {why}", encode_reply(code))

    def _internal_error(self, failure: Failure) -> None:
        """A bug of ours: log it and drop the connection rather than leave it hanging."""
        log.failure("SOCKS5 ingress: internal error with {peer}", failure, peer=self.peer)
        if self.state is not _State.CLOSED and self.state is not _State.SPLICED:
            self.state = _State.CLOSED
            self._cancel_timers()
            self.transport.abortConnection()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.state in (_State.GREETING, _State.AUTH, _State.VERIFYING, _State.REQUEST):
            self._refuse(
                HANDSHAKE_TIMEOUT,
                f"no complete handshake within {self.owner.handshake_timeout:g} s",
                None, abort=True,
            )

    # -- helpers

    def _refuse(
        self, reason: str, detail: str, reply: bytes | None, *, abort: bool = False
    ) -> None:
        """Count and log one refusal, send C{reply} if any, and close."""
        self.owner.counters[reason] += 1
        log.info(
            "SOCKS5 ingress: refused {peer} ({reason}): {detail}",
            peer=self.peer, reason=reason, detail=detail,
        )
        self.state = _State.CLOSED
        self._cancel_timers()
        self._buffer = bytearray()
        if reply is not None:
            self.transport.write(reply)
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._connect_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._connect_timer = None

    def release_user(self) -> None:
        """Give back this connection's slot of its user's allowance."""
        if self._user_counted and self._user is not None:
            self._user_counted = False
            self.owner.per_user[self._user] -= 1
            if self.owner.per_user[self._user] <= 0:
                del self.owner.per_user[self._user]


def _mux_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """The endpoint that reaches the multiplexer at C{host}:C{port}."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if ip.version == 6:
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


class SOCKS5IngressFactory(Factory):
    """The SOCKS5 ingress in front of the multiplexer: never an open proxy.

    @param users: checks passwords: C{verify(name, password)} returning a bool
        or a Deferred of one (L{ThreadedVerifier} around a
        L{smobility.store.users.UserStore} keeps scrypt off the reactor thread).
    @param allowed: C{(host, port)} of the multiplexer, the only destination.
        C{host} is an IPv4 or IPv6 literal, or a host name: a request by
        name must then carry that name, and a request by address must name one
        of C{allowed_addresses}.
    @param reactor: an C{IReactorTCP} and C{IReactorTime} provider.
    @param mux_endpoint: how to reach the multiplexer (default: TCP to
        C{allowed}); the ingress connects there whatever the request named.
    @ivar counters: C{accepted} and one count per refusal reason
        (L{REFUSAL_REASONS}).
    """

    def __init__(
        self,
        *,
        users: Verifier,
        allowed: tuple[str, int],
        reactor: Any,
        handshake_timeout: float = 10.0,
        max_per_user: int = 16,
        max_connections: int = 1024,
        connect_timeout: float = 10.0,
        allowed_addresses: Iterable[str] = (),
        mux_endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        host, port = allowed
        if not 1 <= port <= 65535:
            raise ValueError(f"the multiplexer's port {port} is out of range")
        self.users = users
        self.allowed = (host, port)
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        self.max_per_user = max_per_user
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.counters: Counter[str] = Counter()
        self.per_user: Counter[bytes] = Counter()
        self.active = 0
        try:
            literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
                ipaddress.ip_address(host)
            )
        except ValueError:
            literal = None
        self._allowed_name: bytes | None = None
        if literal is not None:
            if literal.is_unspecified:
                raise ValueError(
                    f"the multiplexer's address {host} is a wildcard; give the address "
                    "that clients ask the ingress for"
                )
            self._allowed_ips = {literal}
        else:
            self._allowed_name = _normal_name(host.encode("idna"))
            self._allowed_ips = {ipaddress.ip_address(a) for a in allowed_addresses}
        self.mux_endpoint = mux_endpoint or _mux_endpoint(reactor, host, port, connect_timeout)

    def buildProtocol(self, addr: IAddress | None) -> SOCKS5IngressProtocol:  # noqa: N802
        return SOCKS5IngressProtocol(self)

    def admit(self) -> bool:
        """Take one of the C{max_connections} slots; C{False} if none is free."""
        if self.active >= self.max_connections:
            return False
        self.active += 1
        return True

    def release(self, protocol: SOCKS5IngressProtocol) -> None:
        """A connection closed: give back its slots."""
        protocol.release_user()
        if protocol._admitted:
            protocol._admitted = False
            self.active -= 1

    def allows(self, request: Request) -> bool:
        """Whether C{request} names the multiplexer (its literal address or name)."""
        if request.port != self.allowed[1]:
            return False
        if isinstance(request.host, bytes):
            try:
                text = request.host.decode("ascii")
                literal = ipaddress.ip_address(text)
            except ValueError:  # not ASCII, or a name rather than an address
                return (
                    self._allowed_name is not None
                    and _normal_name(request.host) == self._allowed_name
                )
            return literal in self._allowed_ips
        return request.host in self._allowed_ips


def _normal_name(name: bytes) -> bytes:
    return name.rstrip(b".").lower()


class ThreadedVerifier:
    """Checks passwords with C{users.verify} in the reactor's thread pool.

    scrypt takes tens of milliseconds by design; on the reactor thread every
    login would stall every tunnel.
    """

    def __init__(self, users: Any, reactor: Any) -> None:
        self._users = users
        self._reactor = reactor

    def verify(self, name: bytes, password: bytes) -> Deferred[bool]:
        """C{users.verify(name, password)} in a thread."""
        d: Deferred[bool] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._users.verify, name, password
        )
        return d


def make_ingress_service(
    *,
    listen: str,
    port: int,
    users: Any,
    allowed: tuple[str, int],
    reactor: Any = None,
    handshake_timeout: float = 10.0,
    max_per_user: int = 16,
    max_connections: int = 1024,
    connect_timeout: float = 10.0,
    allowed_addresses: Iterable[str] = (),
    verify_in_thread: bool = True,
) -> StreamServerEndpointService:
    """The SOCKS5 ingress listening on C{listen}:C{port}, as a service.

    C{users} is a L{smobility.store.users.UserStore} (or anything with
    C{verify}); its checks run in the reactor's thread pool unless
    C{verify_in_thread} is false.  The factory is the service's C{factory}
    attribute (its C{counters} are the ingress's statistics).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    verifier: Verifier = ThreadedVerifier(users, reactor) if verify_in_thread else users
    factory = SOCKS5IngressFactory(
        users=verifier, allowed=allowed, reactor=reactor,
        handshake_timeout=handshake_timeout, max_per_user=max_per_user,
        max_connections=max_connections, connect_timeout=connect_timeout,
        allowed_addresses=allowed_addresses,
    )
    endpoint: TCP4ServerEndpoint | TCP6ServerEndpoint
    if ":" in listen:
        endpoint = TCP6ServerEndpoint(reactor, port, interface=listen)
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=listen)
    service = StreamServerEndpointService(endpoint, factory)
    service.setName("socks5-ingress")
    return service


# ---------------------------------------------------------------------------
# The client endpoint


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoint_label(endpoint: Any) -> str:
    """H:P of a TCP or hostname endpoint, for messages; a generic phrase otherwise."""
    host = getattr(endpoint, "_hostText", None) or getattr(endpoint, "_host", None)
    port = getattr(endpoint, "_port", None)
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if isinstance(host, str) and isinstance(port, int):
        return _host_port(host, port)
    return "?"


class _Stage(enum.Enum):
    METHOD = enum.auto()
    AUTH = enum.auto()
    REPLY = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class _SOCKS5ClientProtocol(TwistedProtocol):
    """Runs the client handshake, then passes everything to the wrapped protocol."""

    transport: Any

    def __init__(self, endpoint: SOCKS5ClientEndpoint, factory: IProtocolFactory,
                 done: Deferred[IProtocol]) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._done = done
        self._conn = SOCKS5Connection()
        self._buffer = bytearray()
        self._stage = _Stage.METHOD
        self._timer: IDelayedCall | None = None
        self.wrapped: IProtocol | None = None
        self.proxy_label = _endpoint_label(endpoint.proxy)

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()
        if isinstance(peer, (address.IPv4Address, address.IPv6Address)):
            self.proxy_label = _host_port(peer.host, peer.port)
        if self._done.called:  # cancelled while the TCP connection was made
            self.transport.abortConnection()
            return
        timeout = self._endpoint.timeout
        if timeout is not None:
            self._timer = self._endpoint.reactor.callLater(timeout, self._timed_out)
        self._conn.send(SOCKS5AuthMethodsRequest([SOCKS5AuthMethod.USERNAME_PASSWORD]))
        self.transport.write(self._conn.data_to_send())

    def _needed(self) -> int | None:
        """Length of the next whole reply, or C{None} until it can be known."""
        if self._stage in (_Stage.METHOD, _Stage.AUTH):
            return 2
        if len(self._buffer) < 4:
            return None
        atyp = self._buffer[3]
        if atyp == ATYP_IPV4:
            return 10
        if atyp == ATYP_IPV6:
            return 22
        if atyp == ATYP_DOMAIN:
            return None if len(self._buffer) < 5 else 7 + self._buffer[4]
        return 4  # an undefined ATYP: socksio will reject it

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._stage is _Stage.DONE:
            assert self.wrapped is not None
            self.wrapped.dataReceived(data)
            return
        if self._stage is _Stage.FAILED:
            return
        self._buffer += data
        while self._stage in (_Stage.METHOD, _Stage.AUTH, _Stage.REPLY):
            need = self._needed()
            if need is None or len(self._buffer) < need:
                return
            message = bytes(self._buffer[:need])
            del self._buffer[:need]
            try:
                self._handle(message)
            except ProtocolError:
                self._fail("sent a malformed reply")
        if self._stage is _Stage.DONE:
            self._hand_over()

    def _handle(self, message: bytes) -> None:
        if self._stage is _Stage.METHOD:
            if message[0] != SOCKS_VERSION:
                raise ProtocolError("not SOCKS5")
            if message[1] == METHOD_NO_ACCEPTABLE:
                # socksio leaves its state unchanged on 0xFF: it is ours to end.
                self._fail("offers no acceptable authentication method")
                return
            method = self._conn.receive_data(message)
            assert isinstance(method, SOCKS5AuthReply)
            if method.method != SOCKS5AuthMethod.USERNAME_PASSWORD:
                self._fail(
                    f"chose authentication method 0x{message[1]:02x}, which was not offered"
                )
                return
            self._conn.send(
                SOCKS5UsernamePasswordRequest(self._endpoint.username, self._endpoint.password)
            )
            self._stage = _Stage.AUTH
        elif self._stage is _Stage.AUTH:
            status = self._conn.receive_data(message)
            assert isinstance(status, SOCKS5UsernamePasswordReply)
            if not status.success:
                self._fail("rejected the username or password")
                return
            self._conn.send(
                SOCKS5CommandRequest.from_address(
                    SOCKS5Command.CONNECT, (self._endpoint.host, self._endpoint.port)
                )
            )
            self._stage = _Stage.REPLY
        else:
            try:
                reply = self._conn.receive_data(message)
            except ProtocolError:
                if message[0] == SOCKS_VERSION and message[1] != REP_SUCCEEDED:
                    self._refused(message[1])  # a code socksio does not know
                    return
                raise
            assert isinstance(reply, SOCKS5Reply)
            if reply.reply_code != SOCKS5ReplyCode.SUCCEEDED:
                self._refused(reply.reply_code[0])
                return
            self._stage = _Stage.DONE
        pending = self._conn.data_to_send()
        if pending:
            self.transport.write(pending)

    def _refused(self, code: int) -> None:
        text = REPLY_TEXT.get(code, f"reply code {code}")
        self._fail(f"refused the destination {self._endpoint.destination} ({text})", code)

    def _hand_over(self) -> None:
        self._cancel_timer()
        destination = address.HostnameAddress(
            self._endpoint.host.encode("idna"), self._endpoint.port
        )
        try:
            wrapped = self._factory.buildProtocol(destination)
        except Exception:
            self._stage = _Stage.FAILED
            self.transport.abortConnection()
            self._done.errback()
            return
        if wrapped is None:
            self._stage = _Stage.FAILED
            self.transport.loseConnection()
            self._done.errback(error.ConnectError(string="the protocol factory built nothing"))
            return
        self.wrapped = wrapped
        wrapped.makeConnection(self.transport)
        self._done.callback(wrapped)
        rest, self._buffer = bytes(self._buffer), bytearray()
        if rest and self.wrapped is not None and self.transport.connected:
            self.wrapped.dataReceived(rest)

    def _fail(self, what: str, code: int | None = None) -> None:
        if self._stage in (_Stage.FAILED, _Stage.DONE):
            return
        self._stage = _Stage.FAILED
        self._cancel_timer()
        self.transport.loseConnection()
        if not self._done.called:
            self._done.errback(
                SOCKSError(f"the SOCKS5 proxy at {self.proxy_label} {what}", reply_code=code)
            )

    def _timed_out(self) -> None:
        self._timer = None
        if self._stage in (_Stage.METHOD, _Stage.AUTH, _Stage.REPLY):
            self._fail(
                f"did not complete the handshake within {self._endpoint.timeout:g} s"
            )
            self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._cancel_timer()
        if self._stage is _Stage.DONE:
            assert self.wrapped is not None
            self.wrapped.connectionLost(reason)
            return
        if (
            self._stage is _Stage.REPLY
            and len(self._buffer) >= 2
            and self._buffer[0] == SOCKS_VERSION
            and self._buffer[1] != REP_SUCCEEDED
        ):
            # A proxy that sent only part of a refusal before closing.
            self._refused(self._buffer[1])
            return
        self._fail("closed the connection during the handshake")

    def cancel(self) -> None:
        """Abandon the handshake (the caller cancelled the connection attempt)."""
        if self._stage in (_Stage.METHOD, _Stage.AUTH, _Stage.REPLY):
            self._stage = _Stage.FAILED
            self._cancel_timer()
            self.transport.abortConnection()


class _SOCKS5ClientFactory(Factory):
    noisy = False

    def __init__(self, endpoint: SOCKS5ClientEndpoint, factory: IProtocolFactory,
                 done: Deferred[IProtocol]) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._done = done
        self.protocol_instance: _SOCKS5ClientProtocol | None = None

    def buildProtocol(self, addr: IAddress | None) -> _SOCKS5ClientProtocol:  # noqa: N802
        self.protocol_instance = _SOCKS5ClientProtocol(self._endpoint, self._factory, self._done)
        return self.protocol_instance


@implementer(IStreamClientEndpoint)
class SOCKS5ClientEndpoint:
    """Connects to C{host}:C{port} through the SOCKS5 proxy at C{proxy}.

    Username/password only (RFC 1929).  The destination goes to the proxy as
    given, a host name included, so the proxy resolves it.  The Deferred of
    L{connect} fires with the wrapped factory's protocol once the proxy has
    connected it (its C{connectionMade} has run), or fails with
    L{SOCKSError}, whose text is one sentence.

    @param timeout: seconds for the whole SOCKS5 handshake (C{None}: no limit).
    @param reactor: the C{IReactorTime} for that timeout (default: the global one).
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        host: str,
        port: int,
        *,
        username: str,
        password: str,
        timeout: float | None = 30.0,
        reactor: Any = None,
    ) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.username = username.encode("utf-8")
        self.password = password.encode("utf-8")
        for what, raw in (("user name", self.username), ("password", self.password)):
            if not 1 <= len(raw) <= 255:
                raise ValueError(f"a SOCKS5 {what} is 1 to 255 bytes (RFC 1929)")
        if not host or len(host.encode("idna")) > 255:
            raise ValueError("a SOCKS5 destination host name is 1 to 255 bytes")
        if not 1 <= port <= 65535:
            raise ValueError(f"destination port {port} is out of range")
        self.destination = _host_port(host, port)
        self.timeout = timeout
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor

    def __repr__(self) -> str:
        # Never the password.
        return (
            f"<SOCKS5ClientEndpoint {self.destination} via {_endpoint_label(self.proxy)} "
            f"as {self.username.decode('utf-8', 'replace')!r}>"
        )

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """Connect through the proxy; see the class docstring."""
        factory: _SOCKS5ClientFactory | None = None
        connecting: Deferred[IProtocol] | None = None

        def cancel(d: Deferred[IProtocol]) -> None:
            if connecting is not None and not connecting.called:
                connecting.cancel()
            elif factory is not None and factory.protocol_instance is not None:
                factory.protocol_instance.cancel()

        done: Deferred[IProtocol] = Deferred(cancel)
        factory = _SOCKS5ClientFactory(self, protocolFactory, done)
        label = _endpoint_label(self.proxy)

        def proxy_failed(failure: Failure) -> None:
            if done.called:
                return
            if failure.check(CancelledError, error.ConnectingCancelledError):
                return  # our canceller: Deferred.cancel fails "done" itself
            done.errback(
                SOCKSError(
                    f"cannot connect to the SOCKS5 proxy at {label}: "
                    f"{failure.getErrorMessage()}"
                )
            )

        connecting = self.proxy.connect(factory)
        connecting.addErrback(proxy_failed)
        return done


__all__: list[str] = [
    "SOCKSError", "SOCKS5IngressFactory", "SOCKS5IngressProtocol", "SOCKS5ClientEndpoint",
    "ThreadedVerifier", "Verifier", "Request", "make_ingress_service", "encode_reply",
    "parse_greeting", "parse_auth", "parse_request", "REFUSAL_REASONS", "REPLY_TEXT",
]
