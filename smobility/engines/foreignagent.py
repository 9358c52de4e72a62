# -*- test-case-name: tests.test_foreignagent -*-
"""The relay's registration engine: a Mobile IP foreign agent (RFC 5944 section 3.7), sans I/O.

Registration Requests from visiting mobile nodes come in through
:meth:`ForeignAgent.from_mobile`; valid ones are relayed to the node's home
agent through the injected ``send_home(data, home_agent)``.  Replies from home
agents come in through :meth:`ForeignAgent.from_home` and are relayed to the
node through ``send_mobile(data, address)``.  Time and timers come from an
injected ``IReactorTime``.

What is kept (RFC 5944 section 3.7.1): a *pending* entry per relayed request
(home address and the low 32 bits of its identification, the home agent, the
address the request came from), forgotten when the reply comes, or after
``pending_timeout`` with a registration timeout (78) to the node; and the
*visitor list*, one entry per node the home agent accepted through us, which
lapses with its lifetime.  Listeners hear of every visitor added, refreshed or
removed (the data plane hangs off them).

A request is checked in this order, so that nothing changes, and nothing is
relayed, before the sender is proven:

1. decode (a datagram that cannot be a request is dropped; one whose fixed
   part is readable but whose extensions are not gets 70);
2. authenticate: the node's MN-FA security association, exactly one MN-FA
   extension with its SPI and a valid authenticator (constant time) -- or,
   without an MN-FA extension, the ``authorize(source, home_address)`` hook
   (a client proven by an IKE SA with the relay); else 67, unsigned;
3. form (70), home agent (65: never an open relay), care-of address (77),
   encapsulation (72), the reserved (former 'V') flag (73), reverse
   tunnelling (74/75), lifetime (69), room in the tables (66);
4. relay: the bytes from the fixed part through the MN-HA extension
   untouched, the extensions after it (MN-FA among them) processed and
   removed, and an FA-HA extension appended (RFC 5944 section 3.7.2.2).

A reply is relayed only if it matches a pending request from the home agent
it was sent to and carries exactly one valid FA-HA extension (else 68 to the
node, RFC 5944 section 3.7.3.1); what follows its MN-HA extension is removed
and an MN-FA extension for the node appended (section 3.7.3.2).

The foreign agent's own denials echo the request's home address, home agent
and identification, carry the requested lifetime (the maximum for 69), and are
signed with MN-FA only when the request proved the node's MN-FA association.
At most one denial a second goes to the same node from the same address.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from smobility.wire import WireError, mip
from smobility.wire.ntp import ntp_diff

#: How the relay treats the 'T' bit (RFC 3024): offer reverse tunnelling,
#: insist on it (75 without 'T'), or not offer it (74 with 'T').
REVERSE_TUNNEL_MODES = ("allowed", "required", "unavailable")

#: The codes :meth:`ForeignAgent.home_unreachable` may report (RFC 5944 3.4).
UNREACHABLE_CODES = frozenset(
    {
        mip.CODE_FA_HOME_NET_UNREACHABLE,
        mip.CODE_FA_HA_HOST_UNREACHABLE,
        mip.CODE_FA_HA_PORT_UNREACHABLE,
        mip.CODE_FA_HA_UNREACHABLE,
    }
)

#: Relayed requests of one node waiting for a reply at once; a node's own
#: retransmissions beyond this push out its oldest pending request.
MAX_PENDING_PER_NODE = 8

_LOW32 = 0xFFFFFFFF
_UNSPECIFIED = IPv4Address(0)
_RATE_TABLE_LIMIT = 4096


def _check_association(spi: int, key: bytes, algorithm: str) -> None:
    if not 0 <= spi <= 0xFFFFFFFF:
        raise ValueError("an SPI is an unsigned 32-bit integer")
    if not key:
        raise ValueError("a mobility security association needs a key")
    if algorithm not in mip.ALGORITHMS:
        raise ValueError(
            f"unknown authentication algorithm {algorithm!r}, expected one of "
            f"{', '.join(sorted(mip.ALGORITHMS))}"
        )


@dataclass(frozen=True)
class HomeAgentPeer:
    """A home agent the relay forwards to, with the FA-HA security association."""

    address: IPv4Address
    spi: int
    key: bytes = field(repr=False)
    algorithm: str = "hmac-md5"

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", IPv4Address(self.address))
        _check_association(self.spi, self.key, self.algorithm)


@dataclass(frozen=True)
class VisitorKey:
    """A mobile node allowed to register through the relay, with its MN-FA association.

    The node is found by its home address, or by its NAI (RFC 2794) when it
    asks with home address 0.0.0.0.
    """

    name: str
    home_address: IPv4Address | None
    nai: str | None
    spi: int
    key: bytes = field(repr=False)
    algorithm: str = "hmac-md5"

    def __post_init__(self) -> None:
        if self.home_address is None and not self.nai:
            raise ValueError(f"visitor {self.name!r} needs a home address or an NAI")
        if self.home_address is not None:
            object.__setattr__(self, "home_address", IPv4Address(self.home_address))
        _check_association(self.spi, self.key, self.algorithm)


@dataclass
class Visitor:
    """A visitor list entry (RFC 5944 section 3.7.1): a node the home agent accepted.

    ``source`` is where the node's request came from (replies and the node's
    traffic go there); ``identification`` is that of the accepted request;
    ``registered`` and ``expires`` are times on the relay's clock.
    ``care_of_address`` is the relay's own address, or the node's co-located
    one when it asked with the 'D' bit; ``flags`` are the request's flags.
    """

    name: str
    home_address: IPv4Address
    home_agent: IPv4Address
    source: tuple[str, int]
    identification: int
    lifetime: int
    registered: float
    expires: float
    care_of_address: IPv4Address | None = None
    flags: int = 0

    @property
    def reverse_tunnel(self) -> bool:
        """Whether the node asked for reverse tunnelling ('T', RFC 3024)."""
        return bool(self.flags & mip.FLAG_T)

    @property
    def colocated(self) -> bool:
        """Whether the node decapsulates itself ('D'): the relay carries no data for it."""
        return bool(self.flags & mip.FLAG_D)

    def remaining(self, now: float) -> float:
        """Seconds left before this entry lapses (never negative)."""
        return max(0.0, self.expires - now)

    def as_dict(self, now: float) -> dict[str, Any]:
        """The entry as plain data."""
        return {
            "name": self.name,
            "home_address": str(self.home_address),
            "home_agent": str(self.home_agent),
            "source": f"{self.source[0]}:{self.source[1]}",
            "care_of_address": str(self.care_of_address) if self.care_of_address else None,
            "lifetime": self.lifetime,
            "remaining": self.remaining(now),
            "reverse_tunnel": self.reverse_tunnel,
            "colocated": self.colocated,
        }


@dataclass
class PendingRequest:
    """A relayed request waiting for the home agent's reply."""

    name: str
    key: VisitorKey | None = field(repr=False)
    proved: bool
    home_address: IPv4Address
    home_agent: IPv4Address
    care_of_address: IPv4Address
    identification: int
    lifetime: int
    flags: int
    source: tuple[str, int]
    nai: bytes | None
    sent: float
    timer: IDelayedCall | None = field(default=None, repr=False, compare=False)


PendingKey = tuple[IPv4Address, int]
VisitorListener = Callable[[Visitor, bool], None]


class _Denied(Exception):
    """Internal: a request refused with ``code`` (``why`` for the log)."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


class ForeignAgent:
    """Registration relaying, the pending table and the visitor list of one relay."""

    log = Logger()

    def __init__(
        self,
        *,
        care_of_address: IPv4Address,
        home_agents: Iterable[HomeAgentPeer],
        visitors: Iterable[VisitorKey],
        clock: IReactorTime,
        send_home: Callable[[bytes, IPv4Address], None],
        send_mobile: Callable[[bytes, tuple[str, int]], None],
        max_lifetime: int = 600,
        pending_timeout: float = 7.0,
        max_pending: int = 1024,
        max_visitors: int = 4096,
        authorize: Callable[[tuple[str, int], IPv4Address], bool] | None = None,
        reverse_tunnel: str = "allowed",
        denial_interval: float = 1.0,
    ) -> None:
        if not 1 <= max_lifetime <= 0xFFFE:
            raise ValueError("max_lifetime is 1 to 65534 seconds")
        if pending_timeout <= 0:
            raise ValueError("pending_timeout must be positive")
        if max_pending < 1 or max_visitors < 1:
            raise ValueError("max_pending and max_visitors must be at least 1")
        if reverse_tunnel not in REVERSE_TUNNEL_MODES:
            raise ValueError(
                f"reverse_tunnel {reverse_tunnel!r}, expected one of "
                f"{', '.join(REVERSE_TUNNEL_MODES)}"
            )
        self.care_of_address = IPv4Address(care_of_address)
        self.home_agents: dict[IPv4Address, HomeAgentPeer] = {ha.address: ha for ha in home_agents}
        self._by_address: dict[IPv4Address, VisitorKey] = {}
        self._by_nai: dict[bytes, VisitorKey] = {}
        for v in visitors:
            if v.home_address is not None:
                self._by_address[v.home_address] = v
            if v.nai:
                self._by_nai[v.nai.encode()] = v
        self.clock = clock
        self.send_home = send_home
        self.send_mobile = send_mobile
        self.max_lifetime = max_lifetime
        self.pending_timeout = pending_timeout
        self.max_pending = max_pending
        self.max_visitors = max_visitors
        self.authorize = authorize
        self.reverse_tunnel = reverse_tunnel
        self.denial_interval = denial_interval
        self.visitors: dict[IPv4Address, Visitor] = {}
        self.pending: dict[PendingKey, PendingRequest] = {}
        self.counters: Counter[str] = Counter()
        self._listeners: list[VisitorListener] = []
        self._timer: IDelayedCall | None = None
        self._last_denial: dict[tuple[str, int, IPv4Address], float] = {}

    # -- public -----------------------------------------------------------

    def add_listener(self, listener: VisitorListener) -> None:
        """Call ``listener(visitor, present)`` when a visitor is added, refreshed or removed."""
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        """The state as plain data (no keys)."""
        now = self.clock.seconds()
        return {
            "care_of_address": str(self.care_of_address),
            "home_agents": sorted(str(a) for a in self.home_agents),
            "max_lifetime": self.max_lifetime,
            "reverse_tunnel": self.reverse_tunnel,
            "visitors": [v.as_dict(now) for v in self.visitors.values()],
            "pending": len(self.pending),
            "counters": dict(self.counters),
        }

    def stop(self) -> None:
        """Cancel every timer, forget pending requests and remove every visitor."""
        for p in self.pending.values():
            self._cancel(p.timer)
        self.pending.clear()
        self._cancel(self._timer)
        self._timer = None
        for hoa in list(self.visitors):
            self._remove_visitor(hoa, "stopped")

    # -- requests from mobile nodes ---------------------------------------

    def from_mobile(self, data: bytes, source: tuple[str, int]) -> None:
        """A datagram from a mobile node on the registration port."""
        self.counters["requests_received"] += 1
        data = bytes(data)
        if len(data) < 24 or data[0] != mip.TYPE_REQUEST:
            self.counters["dropped_malformed"] += 1
            self.log.warn(
                "dropped a datagram from {host}:{port} that is not a registration request"
                " ({size} bytes)",
                host=source[0],
                port=source[1],
                size=len(data),
            )
            return
        try:
            msg = mip.decode(data)
        except WireError as e:
            self._poorly_formed_request(data, source, str(e))
            return
        assert isinstance(msg, mip.RegistrationRequest)
        self._request(msg, source)

    def _poorly_formed_request(self, data: bytes, source: tuple[str, int], why: str) -> None:
        self.counters["dropped_malformed"] += 1
        fixed = mip.decode(data[:24])
        assert isinstance(fixed, mip.RegistrationRequest)
        # Its extensions cannot be read, so it cannot be authenticated: unsigned.
        self._deny(fixed, source, mip.CODE_FA_POORLY_FORMED_REQUEST, why, None, False)

    def _identify(self, req: mip.RegistrationRequest) -> VisitorKey | None:
        key = self._by_address.get(req.home_address)
        if key is None and req.home_address == _UNSPECIFIED:
            i = mip.find_extension(req.extensions, mip.NAIExtension)
            if i is not None:
                nai = req.extensions[i]
                assert isinstance(nai, mip.NAIExtension)
                key = self._by_nai.get(nai.nai)
        return key

    def _authorized(self, source: tuple[str, int], home_address: IPv4Address) -> bool:
        if self.authorize is None:
            return False
        try:
            return bool(self.authorize(source, home_address))
        except Exception:
            self.counters["authorize_errors"] += 1
            self.log.failure("the authorize hook failed for {host}", host=source[0])
            return False

    def _request(self, req: mip.RegistrationRequest, source: tuple[str, int]) -> None:
        key = self._identify(req)
        # 1. Authenticate before anything else.
        mnfa = mip.auth_indices(req.extensions, mip.EXT_MN_FA)
        proved = False
        why = ""
        if mnfa:
            if key is None:
                why = "no MN-FA security association for this node"
            elif len(mnfa) > 1:
                why = f"{len(mnfa)} MN-FA extensions"
            else:
                ext = req.extensions[mnfa[0]]
                assert isinstance(ext, mip.AuthExtension)
                if ext.spi != key.spi:
                    why = f"unknown MN-FA SPI {ext.spi}"
                elif not mip.verify_authenticator(req, mnfa[0], key.key, key.algorithm):
                    why = "bad MN-FA authenticator"
                else:
                    proved = True
        elif not self._authorized(source, req.home_address):
            why = "no MN-FA extension"
        if why:
            self._deny(
                req, source, mip.CODE_FA_MN_AUTH_FAILED, f"security exception: {why}", key, False
            )
            return
        low = req.identification & _LOW32
        pkey = (req.home_address, low)
        if pkey in self.pending:
            self.counters["dropped_duplicate"] += 1
            return
        current = self.visitors.get(req.home_address)
        if current is not None and ntp_diff(req.identification, current.identification) <= 0:
            # A copy of a request accepted before (or older): the home agent
            # would refuse it anyway, and relaying it could move the entry.
            self.counters["dropped_replay"] += 1
            self.log.warn(
                "dropped a request from {host}:{port} for {hoa} that is not newer than"
                " the accepted one",
                host=source[0],
                port=source[1],
                hoa=req.home_address,
            )
            return
        # 2. The node is proven (by MN-FA or by the hook): every refusal from
        # here on is signed with MN-FA when we share an association with it.
        try:
            peer, mnha = self._check(req)
        except _Denied as d:
            lifetime = self.max_lifetime if d.code == mip.CODE_FA_LIFETIME_TOO_LONG else None
            self._deny(req, source, d.code, d.why, key, True, lifetime=lifetime)
            return
        # 3. Relay.
        self._forward(req, source, key, proved, peer, mnha)

    def _check(self, req: mip.RegistrationRequest) -> tuple[HomeAgentPeer, int]:
        """Raise :class:`_Denied` unless the relay may forward ``req``."""
        unknown = mip.unknown_nonskippable(req.extensions)
        if unknown is not None:
            raise _Denied(mip.CODE_FA_POORLY_FORMED_REQUEST, f"unrecognised extension {unknown}")
        mnha = mip.auth_indices(req.extensions, mip.EXT_MN_HA)
        if len(mnha) != 1:
            raise _Denied(
                mip.CODE_FA_POORLY_FORMED_REQUEST, f"{len(mnha)} MN-HA extensions, expected one"
            )
        if mip.auth_indices(req.extensions, mip.EXT_FA_HA):
            raise _Denied(mip.CODE_FA_POORLY_FORMED_REQUEST, "an FA-HA extension from a node")
        mnfa = mip.auth_indices(req.extensions, mip.EXT_MN_FA)
        if mnfa and mnfa[0] < mnha[0]:
            raise _Denied(mip.CODE_FA_POORLY_FORMED_REQUEST, "MN-FA before MN-HA")
        peer = self.home_agents.get(req.home_agent)
        if peer is None:
            raise _Denied(mip.CODE_FA_PROHIBITED, f"not a home agent we relay to: {req.home_agent}")
        if req.flag(mip.FLAG_D):
            # A co-located care-of address registered through us (RFC 5944
            # section 3.1): the node's own address, relayed as it is.
            if req.care_of_address == _UNSPECIFIED:
                raise _Denied(mip.CODE_FA_POORLY_FORMED_REQUEST, "'D' set with care-of 0.0.0.0")
        elif req.care_of_address != self.care_of_address:
            raise _Denied(mip.CODE_FA_INVALID_COA, f"care-of {req.care_of_address} is not ours")
        if req.flags & (mip.FLAG_M | mip.FLAG_G):
            raise _Denied(
                mip.CODE_FA_ENCAPSULATION_UNAVAILABLE, "minimal or GRE encapsulation asked for"
            )
        if req.flag(mip.FLAG_R):
            raise _Denied(mip.CODE_FA_VJ_UNAVAILABLE, "the reserved (former 'V') flag is set")
        if req.flag(mip.FLAG_T) and self.reverse_tunnel == "unavailable":
            raise _Denied(mip.CODE_FA_REVERSE_TUNNEL_UNAVAILABLE, "no reverse tunnelling here")
        if not req.flag(mip.FLAG_T) and req.lifetime > 0 and self.reverse_tunnel == "required":
            raise _Denied(mip.CODE_FA_REVERSE_TUNNEL_MANDATORY, "reverse tunnelling required")
        if req.lifetime > self.max_lifetime:
            raise _Denied(
                mip.CODE_FA_LIFETIME_TOO_LONG,
                f"lifetime {req.lifetime} s, at most {self.max_lifetime} s",
            )
        if len(self.pending) >= self.max_pending:
            raise _Denied(mip.CODE_FA_RESOURCES, f"pending table full ({self.max_pending})")
        if (
            req.lifetime > 0
            and req.home_address not in self.visitors
            and len(self.visitors) >= self.max_visitors
        ):
            raise _Denied(mip.CODE_FA_RESOURCES, f"visitor list full ({self.max_visitors})")
        return peer, mnha[0]

    def _forward(
        self,
        req: mip.RegistrationRequest,
        source: tuple[str, int],
        key: VisitorKey | None,
        proved: bool,
        peer: HomeAgentPeer,
        mnha: int,
    ) -> None:
        # RFC 5944 section 3.7.2.2: up to the MN-HA extension untouched; what
        # follows (the MN-FA extension among them) is ours and is removed.
        head = mip.through_extension(req, mnha)
        data = mip.append_authenticator(head, mip.EXT_FA_HA, peer.spi, peer.key, peer.algorithm)
        name = key.name if key is not None else str(req.home_address)
        nai_i = mip.find_extension(req.extensions, mip.NAIExtension)
        nai = req.extensions[nai_i] if nai_i is not None else None
        assert nai is None or isinstance(nai, mip.NAIExtension)
        now = self.clock.seconds()
        mine = sorted(
            (p.sent, k) for k, p in self.pending.items() if p.name == name and p.source == source
        )
        for _, old in mine[: max(0, len(mine) - MAX_PENDING_PER_NODE + 1)]:
            self.counters["pending_evicted"] += 1
            self._cancel(self.pending.pop(old).timer)
        pkey = (req.home_address, req.identification & _LOW32)
        pending = PendingRequest(
            name=name,
            key=key,
            proved=proved,
            home_address=req.home_address,
            home_agent=peer.address,
            care_of_address=req.care_of_address,
            identification=req.identification,
            lifetime=req.lifetime,
            flags=req.flags,
            source=source,
            nai=nai.nai if nai is not None else None,
            sent=now,
        )
        # Recorded (and its timer armed) before sending: an in-memory link may
        # bring the reply back from inside send_home().
        self.pending[pkey] = pending
        pending.timer = self.clock.callLater(self.pending_timeout, self._pending_expired, pkey)
        self.counters["forwarded"] += 1
        self.log.info(
            "relayed {what} node={node} hoa={hoa} from={host}:{port} to home agent {ha}"
            " lifetime={lifetime}",
            what="deregistration" if req.lifetime == 0 else "registration",
            node=name,
            hoa=req.home_address,
            host=source[0],
            port=source[1],
            ha=peer.address,
            lifetime=req.lifetime,
        )
        self.send_home(data, peer.address)

    # -- replies from home agents -----------------------------------------

    def from_home(self, data: bytes, source: IPv4Address) -> None:
        """A datagram from a home agent on the registration port."""
        self.counters["replies_received"] += 1
        data = bytes(data)
        peer = self.home_agents.get(source)
        if peer is None:
            self.counters["dropped_unknown_home_agent"] += 1
            self.log.warn(
                "dropped a datagram from {host}: not a home agent we relay to", host=source
            )
            return
        try:
            msg = mip.decode(data)
        except WireError as e:
            # Unreadable, so unauthenticated: the pending request it might
            # answer is left to time out (78) rather than ended by anyone.
            self.counters["dropped_malformed"] += 1
            self.log.warn("dropped a malformed reply from {host}: {why}", host=source, why=e)
            return
        if not isinstance(msg, mip.RegistrationReply):
            self.counters["dropped_malformed"] += 1
            self.log.warn("dropped a registration request from home agent {host}", host=source)
            return
        pkey, pending = self._match(msg, source)
        if pending is None:
            self.counters["dropped_unmatched"] += 1
            self.log.warn(
                "dropped a reply from {host} for {hoa} that matches no pending request",
                host=source,
                hoa=msg.home_address,
            )
            return
        faha = mip.auth_indices(msg.extensions, mip.EXT_FA_HA)
        why = ""
        if len(faha) != 1:
            why = f"{len(faha)} FA-HA extensions, expected one"
        else:
            ext = msg.extensions[faha[0]]
            assert isinstance(ext, mip.AuthExtension)
            if ext.spi != peer.spi:
                why = f"unknown FA-HA SPI {ext.spi}"
            elif not mip.verify_authenticator(msg, faha[0], peer.key, peer.algorithm):
                why = "bad FA-HA authenticator"
        if why:
            # RFC 5944 section 3.7.3.1: the reply is discarded, the node's
            # registration refused with 68.
            self.counters["reply_fa_ha_failed"] += 1
            self.log.warn(
                "security exception: reply from home agent {host} for {hoa}: {why}",
                host=source,
                hoa=msg.home_address,
                why=why,
            )
            self._end_pending(pkey, pending, mip.CODE_FA_HA_AUTH_FAILED, why)
            return
        mnha = mip.auth_indices(msg.extensions, mip.EXT_MN_HA)
        unknown = mip.unknown_nonskippable(msg.extensions)
        problem = ""
        if unknown is not None:
            problem = f"unrecognised extension {unknown}"
        elif len(mnha) > 1:
            problem = f"{len(mnha)} MN-HA extensions"
        elif mnha and faha[0] < mnha[0]:
            problem = "FA-HA before MN-HA"
        if problem:
            self.counters["poorly_formed_replies"] += 1
            self.log.warn(
                "poorly formed reply from home agent {host} for {hoa}: {why}",
                host=source,
                hoa=msg.home_address,
                why=problem,
            )
            self._end_pending(pkey, pending, mip.CODE_FA_POORLY_FORMED_REPLY, problem)
            return
        self._relay_reply(msg, pkey, pending, mnha[0] if mnha else None, faha[0])

    def _match(
        self, msg: mip.RegistrationReply, source: IPv4Address
    ) -> tuple[PendingKey, PendingRequest | None]:
        low = msg.identification & _LOW32
        pkey = (msg.home_address, low)
        pending = self.pending.get(pkey)
        if pending is None and msg.home_address != _UNSPECIFIED:
            # A node that asked with 0.0.0.0 and its NAI gets its address in the reply.
            alt = (_UNSPECIFIED, low)
            candidate = self.pending.get(alt)
            nai_i = mip.find_extension(msg.extensions, mip.NAIExtension)
            if candidate is not None and nai_i is not None:
                nai = msg.extensions[nai_i]
                assert isinstance(nai, mip.NAIExtension)
                if candidate.nai == nai.nai:
                    pkey, pending = alt, candidate
        if pending is not None and pending.home_agent != source:
            pending = None
        return pkey, pending

    def _relay_reply(
        self,
        msg: mip.RegistrationReply,
        pkey: PendingKey,
        pending: PendingRequest,
        mnha: int | None,
        faha: int,
    ) -> None:
        # RFC 5944 section 3.7.3.2: up to the MN-HA extension untouched, the
        # rest (the FA-HA extension among it) removed, MN-FA appended.
        if mnha is not None:
            head = mip.through_extension(msg, mnha)
        else:
            head = msg.raw[: msg.offsets[faha]]
        del self.pending[pkey]
        self._cancel(pending.timer)
        if pending.key is not None:
            k = pending.key
            head = mip.append_authenticator(head, mip.EXT_MN_FA, k.spi, k.key, k.algorithm)
        now = self.clock.seconds()
        hoa = msg.home_address if msg.home_address != _UNSPECIFIED else pending.home_address
        if msg.accepted and msg.lifetime > 0 and pending.lifetime > 0:
            if hoa == _UNSPECIFIED:
                self.counters["accepted_without_address"] += 1
                self.log.warn("accepted reply for {node} names no home address", node=pending.name)
            elif hoa not in self.visitors and len(self.visitors) >= self.max_visitors:
                self._end_pending(pkey, pending, mip.CODE_FA_RESOURCES, "visitor list full")
                return
            else:
                lifetime = min(msg.lifetime, self.max_lifetime)
                visitor = Visitor(
                    name=pending.name,
                    home_address=hoa,
                    home_agent=pending.home_agent,
                    source=pending.source,
                    identification=pending.identification,
                    lifetime=lifetime,
                    registered=now,
                    expires=now + lifetime,
                    care_of_address=pending.care_of_address,
                    flags=pending.flags,
                )
                self.visitors[hoa] = visitor
                self.counters["visitors_added"] += 1
                self.log.info(
                    "visitor {node} hoa={hoa} at {host}:{port} lifetime={lifetime}",
                    node=pending.name,
                    hoa=hoa,
                    host=pending.source[0],
                    port=pending.source[1],
                    lifetime=lifetime,
                )
                self._notify(visitor, True)
                self._arm()
        elif msg.accepted:
            if hoa in self.visitors:
                self._remove_visitor(hoa, "deregistered")
        else:
            self.counters[f"relayed_denial_{msg.code}"] += 1
        self.counters["replies_relayed"] += 1
        self.log.info(
            "relayed reply node={node} code={code} ({meaning}) lifetime={lifetime}"
            " to {host}:{port}",
            node=pending.name,
            code=msg.code,
            meaning=mip.REPLY_CODE_NAMES.get(msg.code, "?"),
            lifetime=msg.lifetime,
            host=pending.source[0],
            port=pending.source[1],
        )
        self.send_mobile(head, pending.source)

    # -- failures ---------------------------------------------------------

    def home_unreachable(self, home_agent: IPv4Address, code: int) -> None:
        """The adapter learnt (ICMP, send error) that ``home_agent`` cannot be reached.

        Every request pending at it is refused with ``code`` (80, 81, 82 or 88).
        """
        if code not in UNREACHABLE_CODES:
            raise ValueError(f"code {code} is not one of {sorted(UNREACHABLE_CODES)}")
        for pkey, pending in list(self.pending.items()):
            if pending.home_agent == home_agent and pkey in self.pending:
                self._end_pending(pkey, pending, code, f"home agent {home_agent} unreachable")

    def _pending_expired(self, pkey: PendingKey) -> None:
        pending = self.pending.get(pkey)
        if pending is None:
            return
        pending.timer = None
        self.counters["pending_timeouts"] += 1
        self._end_pending(pkey, pending, mip.CODE_FA_TIMEOUT, "no reply from the home agent")

    def _end_pending(
        self,
        pkey: PendingKey,
        pending: PendingRequest,
        code: int,
        why: str,
    ) -> None:
        """Forget ``pending`` and refuse the node's registration with ``code``."""
        if self.pending.get(pkey) is pending:
            del self.pending[pkey]
        self._cancel(pending.timer)
        pending.timer = None
        fixed = mip.RegistrationRequest(
            flags=pending.flags,
            lifetime=pending.lifetime,
            home_address=pending.home_address,
            home_agent=pending.home_agent,
            care_of_address=pending.care_of_address,
            identification=pending.identification,
            extensions=(mip.NAIExtension(pending.nai),) if pending.nai else (),
        )
        self._deny(fixed, pending.source, code, why, pending.key, True)

    def _deny(
        self,
        req: mip.RegistrationRequest,
        source: tuple[str, int],
        code: int,
        why: str,
        key: VisitorKey | None,
        sign: bool,
        *,
        lifetime: int | None = None,
    ) -> None:
        """Send the node a refusal with ``code`` (RFC 5944 section 3.7.2.3).

        Refusals beyond the rate limit are counted but neither sent nor
        logged, so that a flood of bad requests floods neither.
        """
        self.counters[f"denied_{code}"] += 1
        if not self._may_deny(source, req.home_address):
            self.counters["denials_rate_limited"] += 1
            return
        self.log.warn(
            "registration refused hoa={hoa} from={host}:{port} code={code} ({meaning}): {why}",
            hoa=req.home_address,
            host=source[0],
            port=source[1],
            code=code,
            meaning=mip.REPLY_CODE_NAMES.get(code, "?"),
            why=why,
        )
        nai_i = mip.find_extension(req.extensions, mip.NAIExtension)
        reply = mip.RegistrationReply(
            code=code,
            lifetime=req.lifetime if lifetime is None else lifetime,
            home_address=req.home_address,
            home_agent=req.home_agent,
            identification=req.identification,
            extensions=(req.extensions[nai_i],) if nai_i is not None else (),
        )
        data = mip.encode(reply)
        if sign and key is not None:
            data = mip.append_authenticator(data, mip.EXT_MN_FA, key.spi, key.key, key.algorithm)
        self.counters["denials_sent"] += 1
        self.send_mobile(data, source)

    def _may_deny(self, source: tuple[str, int], home_address: IPv4Address) -> bool:
        """At most one refusal a ``denial_interval`` to one node at one address."""
        if self.denial_interval <= 0:
            return True
        now = self.clock.seconds()
        rkey = (source[0], source[1], home_address)
        last = self._last_denial.get(rkey)
        if last is not None and now - last < self.denial_interval:
            return False
        if len(self._last_denial) >= _RATE_TABLE_LIMIT:
            cutoff = now - self.denial_interval
            self._last_denial = {k: t for k, t in self._last_denial.items() if t > cutoff}
            if len(self._last_denial) >= _RATE_TABLE_LIMIT:
                self._last_denial.clear()
        self._last_denial[rkey] = now
        return True

    # -- visitor list -----------------------------------------------------

    def _notify(self, visitor: Visitor, present: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(replace(visitor), present)
            except Exception:
                self.counters["listener_errors"] += 1
                self.log.failure("a visitor listener failed for {node}", node=visitor.name)

    def _remove_visitor(self, hoa: IPv4Address, why: str) -> None:
        visitor = self.visitors.pop(hoa, None)
        if visitor is None:
            return
        self.counters[f"visitors_{why}"] += 1
        self.log.info(
            "visitor {node} hoa={hoa} removed: {why}", node=visitor.name, hoa=hoa, why=why
        )
        self._notify(visitor, False)
        if why != "stopped":
            self._arm()

    def _arm(self) -> None:
        self._cancel(self._timer)
        self._timer = None
        if self.visitors:
            first = min(v.expires for v in self.visitors.values())
            self._timer = self.clock.callLater(max(0.0, first - self.clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        for hoa, v in list(self.visitors.items()):
            if v.expires <= now and self.visitors.get(hoa) is v:
                self._remove_visitor(hoa, "expired")
        self._arm()

    @staticmethod
    def _cancel(timer: IDelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()
