# -*- test-case-name: tests.test_mux -*-
"""The multiplexer's session table, without I/O.

A roaming client that can only speak HTTP(S) opens a *session* (32 hex
digits it chooses) with one authenticated request; the multiplexer gives the
session one UDP socket towards the home agent, so the home agent sees the
multiplexer as a NAT.  This module decides everything that does not need a
socket: who may open or use which session (401, 403, 503), where an upward
frame goes, which datagrams from the network are accepted and how many bytes
wait for a client that has no download stream open, and when an idle session
expires.  Time comes from an injected :class:`~twisted.internet.interfaces.IReactorTime`
(``task.Clock`` in tests).

The Twisted glue (HTTP requests, UDP sockets) is
:mod:`smobility.adapters.muxweb`.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from twisted.internet.interfaces import IReactorTime

from smobility.wire.httptunnel import MAX_FRAME, MAX_PAYLOAD, Frame, FrameType, encode_frame

__all__ = [
    "AUTH_SCHEME",
    "SESSION_RE",
    "Admission",
    "MuxEngine",
    "Rejection",
    "Session",
    "parse_authorization",
    "session_from_path",
]

AUTH_SCHEME = b"Smobility"
"""The scheme of the ``Authorization`` and ``WWW-Authenticate`` headers."""

SESSION_RE = re.compile(rb"[0-9a-f]{32}")
"""A session id: 32 lowercase hex digits, chosen by the client."""

_PATH_PREFIX = b"/tunnel/"
_ABSOLUTE_RE = re.compile(rb"(?i)https?://[^/]*")
_CREDENTIAL_RE = re.compile(rb"([A-Za-z0-9_.-]{1,64}):([0-9A-Fa-f]{1,128})")

Verifier = Callable[[str, str], bool]
"""Checks a credential: ``verify(name, token_hex) -> bool``."""


def session_from_path(path: bytes) -> str | None:
    """The session id in a request path ``/tunnel/<id>`` (query ignored), or ``None``.

    The absolute form ``http://host:port/tunnel/<id>`` that proxies send is
    accepted too (RFC 9112 section 3.2.2).
    """
    path = path.split(b"?", 1)[0]
    m = _ABSOLUTE_RE.match(path)
    if m is not None:
        path = path[m.end() :]
    if not path.startswith(_PATH_PREFIX):
        return None
    sid = path[len(_PATH_PREFIX) :]
    if SESSION_RE.fullmatch(sid) is None:
        return None
    return sid.decode("ascii")


def parse_authorization(value: bytes | None) -> tuple[str, str] | None:
    """Split ``Smobility <name>:<token-hex>`` into ``(name, token_hex)``.

    The scheme is case-insensitive (RFC 9110 section 11.1).  Anything else,
    or no header, is ``None``.
    """
    if value is None:
        return None
    parts = value.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != AUTH_SCHEME.lower():
        return None
    m = _CREDENTIAL_RE.fullmatch(parts[1].strip())
    if m is None:
        return None
    return m.group(1).decode("ascii"), m.group(2).decode("ascii")


class Session:
    """One client session: its owner, its activity and the frames waiting to go down.

    Identity matters (a closed session and a new one with the same id are
    different objects), so sessions compare by identity.
    """

    def __init__(self, sid: str, owner: str, now: float) -> None:
        self.id = sid
        """The 32 hex digits the client chose."""
        self.owner = owner
        """The credential name that created the session."""
        self.created = now
        self.last_active = now
        """When a request of this session last opened or ended, or a frame came up."""
        self.open_requests = 0
        """Requests of this session in progress (an open one keeps it alive)."""
        self.queue: deque[bytes] = deque()
        """Encoded frames waiting for the download stream."""
        self.queued = 0
        """Bytes in :attr:`queue`."""
        self.closed = False
        self.counters: Counter[str] = Counter()

    @property
    def short(self) -> str:
        """The first 8 digits of the id, for log lines."""
        return self.id[:8]

    def __repr__(self) -> str:
        return (
            f"<Session {self.short} owner={self.owner!r} open={self.open_requests} "
            f"queued={self.queued}{' closed' if self.closed else ''}>"
        )


@dataclass(frozen=True)
class Rejection:
    """A request the multiplexer refuses: the HTTP status and a short reason."""

    status: int
    reason: str


@dataclass(frozen=True)
class Admission:
    """An accepted request: its session, and whether the request created it."""

    session: Session
    created: bool
    name: str


class MuxEngine:
    """The session table of the multiplexer.

    :param verify: checks a presented credential (name, token hex).
    :param clock: the time source.
    :param home_agent: the only address datagrams are accepted from.
    :param mip_port: the home agent's registration port (MIP frames).
    :param esp_port: the home agent's ESP-in-UDP port (ESP frames).
    :param max_sessions: sessions at most; a new one beyond is a 503.
    :param max_buffer: bytes of frames at most waiting per session.
    :param idle_timeout: seconds without an open request or an upward frame
        after which a session expires.
    """

    def __init__(
        self,
        *,
        verify: Verifier,
        clock: IReactorTime,
        home_agent: IPv4Address | str,
        mip_port: int = 434,
        esp_port: int = 4500,
        max_sessions: int = 256,
        max_buffer: int = 262144,
        idle_timeout: float = 60.0,
    ) -> None:
        if mip_port == esp_port:
            raise ValueError("mip_port and esp_port must differ")
        if max_buffer < MAX_FRAME:
            raise ValueError(f"max_buffer must hold at least one frame ({MAX_FRAME} bytes)")
        self.verify = verify
        self.clock = clock
        self.home_agent = str(home_agent)
        self.mip_port = mip_port
        self.esp_port = esp_port
        self.max_sessions = max_sessions
        self.max_buffer = max_buffer
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, Session] = {}
        self.counters: Counter[str] = Counter()
        self._ports = {FrameType.MIP: mip_port, FrameType.ESP: esp_port}
        self._types = {mip_port: FrameType.MIP, esp_port: FrameType.ESP}

    def now(self) -> float:
        """The injected clock's time."""
        return self.clock.seconds()

    # -- requests ---------------------------------------------------------

    def authenticate(self, authorization: bytes | None) -> str | None:
        """The credential name if the header holds a valid credential, else ``None``."""
        credential = parse_authorization(authorization)
        if credential is None:
            # A malformed header says nothing about which names exist.
            return None
        name, token = credential
        return name if self.verify(name, token) else None

    def admit(self, sid: str, authorization: bytes | None) -> Admission | Rejection:
        """Check one request for session ``sid``; on success it counts as open.

        The credential is checked before the session table is looked at, so
        an unauthenticated client learns nothing about which sessions exist.
        Every :class:`Admission` must be matched by one :meth:`release`.
        """
        self.counters["requests"] += 1
        name = self.authenticate(authorization)
        if name is None:
            self.counters["unauthorized"] += 1
            return Rejection(401, "missing or wrong credential")
        session = self.sessions.get(sid)
        created = False
        if session is not None and session.owner != name:
            self.counters["forbidden"] += 1
            return Rejection(403, "the session belongs to another credential")
        if session is None:
            if len(self.sessions) >= self.max_sessions:
                self.counters["busy"] += 1
                return Rejection(503, "too many sessions")
            session = Session(sid, name, self.now())
            self.sessions[sid] = session
            self.counters["sessions_created"] += 1
            created = True
        session.open_requests += 1
        session.last_active = self.now()
        return Admission(session, created, name)

    def release(self, session: Session) -> None:
        """A request admitted for ``session`` has ended (answered or cut off)."""
        if session.open_requests > 0:
            session.open_requests -= 1
        session.last_active = self.now()

    # -- frames -----------------------------------------------------------

    def up_frame(self, session: Session, frame: Frame) -> tuple[str, int] | None:
        """A frame from the client; the UDP destination for its payload, if any.

        MIP and ESP frames go to the home agent's matching port.  A
        KEEPALIVE only counts as activity.  A CLOSE ends the session (check
        :attr:`Session.closed` afterwards).  Frames of a closed session are
        dropped.
        """
        if session.closed:
            self.counters["up_after_close"] += 1
            return None
        session.last_active = self.now()
        if frame.type is FrameType.KEEPALIVE:
            session.counters["up_keepalives"] += 1
            return None
        if frame.type is FrameType.CLOSE:
            self.close(session)
            self.counters["sessions_closed_by_client"] += 1
            return None
        session.counters["up_frames"] += 1
        session.counters["up_bytes"] += len(frame.payload)
        self.counters["up_frames"] += 1
        return self.home_agent, self._ports[frame.type]

    def down_datagram(self, session: Session, data: bytes, addr: tuple[str, int]) -> bool:
        """A datagram arrived on the session's socket; queue it if acceptable.

        Only the home agent's address is accepted: from its registration
        port as a MIP frame, from its ESP port as an ESP frame.  Anything
        else, and anything beyond :attr:`max_buffer`, is dropped and counted.
        Datagrams from the network are not client activity: they do not keep
        an abandoned session alive.

        :return: whether a frame was queued.
        """
        if session.closed:
            return False
        kind = self._types.get(addr[1]) if addr[0] == self.home_agent else None
        if kind is None:
            session.counters["down_foreign"] += 1
            self.counters["down_foreign"] += 1
            return False
        if len(data) > MAX_PAYLOAD:
            session.counters["down_oversize"] += 1
            self.counters["down_oversize"] += 1
            return False
        if not self.enqueue(session, encode_frame(kind, data)):
            return False
        session.counters["down_frames"] += 1
        session.counters["down_bytes"] += len(data)
        self.counters["down_frames"] += 1
        return True

    def enqueue(self, session: Session, frame: bytes) -> bool:
        """Queue an encoded frame for the download stream, within the bound."""
        if session.closed:
            return False
        if session.queued + len(frame) > self.max_buffer:
            session.counters["down_dropped"] += 1
            self.counters["down_dropped"] += 1
            return False
        session.queue.append(frame)
        session.queued += len(frame)
        return True

    def take(self, session: Session) -> bytes | None:
        """The next queued frame of ``session``, or ``None``."""
        if not session.queue:
            return None
        frame = session.queue.popleft()
        session.queued -= len(frame)
        return frame

    # -- lifetime ---------------------------------------------------------

    def close(self, session: Session) -> None:
        """Remove ``session`` from the table now (its queue is dropped)."""
        if session.closed:
            return
        session.closed = True
        session.queue.clear()
        session.queued = 0
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        self.counters["sessions_closed"] += 1

    def expire(self) -> list[Session]:
        """Close and return the sessions idle for :attr:`idle_timeout` or more.

        Idle: no request open, no upward frame and no request begun or ended.
        """
        now = self.now()
        idle = [
            s
            for s in self.sessions.values()
            if s.open_requests == 0 and now - s.last_active >= self.idle_timeout
        ]
        for s in idle:
            self.close(s)
            self.counters["sessions_expired"] += 1
        return idle

    @property
    def expiry_interval(self) -> float:
        """How often :meth:`expire` should run: a quarter of the idle timeout, 0.5-5 s."""
        return max(0.5, min(self.idle_timeout / 4, 5.0))

    def stats(self) -> dict[str, int]:
        """The counters, plus the current number of sessions."""
        out = dict(self.counters)
        out["sessions"] = len(self.sessions)
        return out
