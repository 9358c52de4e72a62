# -*- test-case-name: tests.test_mobilenode -*-
"""The mobile node's registration engine (RFC 5944 section 3.6), sans I/O.

The engine sends through an injected ``send(data)`` callable (the adapter
writes it to the home agent's address) and learns of replies through
:meth:`MobileNode.datagram_received`.  Time and timers come from an injected
``IReactorTime``, so tests run on ``task.Clock``.

Behaviour:

- every transmission is a new request with a fresh timestamp identification
  (NTP format, corrected by the offset learnt from a 133 reply);
- retransmission with exponential backoff from ``retransmit_initial`` up to
  ``retransmit_max`` while no valid reply arrives;
- re-registration after ``reregister_margin`` of the granted lifetime;
- a 133 reply (signed by the home agent) resynchronises the clock offset and
  the request is sent again at once;
- a reply is only acted upon if it matches an outstanding request and its
  MN-HA authenticator is valid; replies carrying an unrecognised
  non-skippable extension are discarded (RFC 5944 section 1.9);
- :meth:`deregister` removes every binding (care-of address = home address,
  lifetime 0) and fires its Deferred when the reply comes or tries run out.

Through a foreign agent (the relay, RFC 5944 sections 3.6 and 3.7), set with
:meth:`MobileNode.set_foreign_agent`: requests name the foreign agent's
address as care-of address, without the 'D' bit or the RFC 3519 UDP tunnel
request, and carry an MN-FA extension after the MN-HA one; they go to the
foreign agent (:attr:`MobileNode.next_hop`).  Every reply to such a request
must carry a valid MN-FA extension.  A refusal by the foreign agent itself
(codes 64-127) is acted upon on the strength of MN-FA alone: 69 is retried at
once with the lifetime it offers, 66, 78 and 80-88 are retried with the usual
backoff, and the others leave the node refused.  Anything else still needs a
valid MN-HA extension.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from smobility.wire import WireError, mip
from smobility.wire.ntp import ntp_seconds, to_ntp


class State(Enum):
    """Where the node's registration stands."""

    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    REFUSED = "refused"
    DEREGISTERING = "deregistering"
    AT_HOME = "at-home"


@dataclass(frozen=True)
class MobileNodeSettings:
    """The mobile node's identity, keys and timers."""

    name: str
    home_address: IPv4Address
    home_agent: IPv4Address
    spi: int
    key: bytes
    algorithm: str = "hmac-md5"
    lifetime: int = 600
    retransmit_initial: float = 1.0
    retransmit_max: float = 32.0
    max_attempts: int = 0
    reregister_margin: float = 0.8
    udp_tunnel: str = "auto"
    nai: str | None = None
    reverse_tunnel: bool = True

    def __repr__(self) -> str:
        return (
            f"MobileNodeSettings(name={self.name!r}, home_address={self.home_address}, "
            f"home_agent={self.home_agent}, spi={self.spi})"
        )


@dataclass(frozen=True)
class ForeignAgentLink:
    """A foreign agent (relay) to register through, with the MN-FA security association."""

    address: IPv4Address
    spi: int
    key: bytes = field(repr=False)
    algorithm: str = "hmac-md5"


#: Foreign agent refusals worth trying again with the usual backoff: lack of
#: room, a lost answer from the home agent, a home agent out of reach.
TRANSIENT_FA_CODES = frozenset(
    {
        mip.CODE_FA_RESOURCES,
        mip.CODE_FA_TIMEOUT,
        *range(mip.CODE_FA_HOME_NET_UNREACHABLE, mip.CODE_FA_HA_UNREACHABLE + 1),
    }
)

StatusListener = Callable[["MobileNode"], None]

_RANDOM_BITS = (1 << 24) - 1


class MobileNode:
    """Registration state machine of one mobile node.

    ``care_of`` is the node's own address (the one given to :meth:`register`);
    ``foreign_agent`` the relay requests are built for (None: direct);
    ``next_hop`` where the request being sent must go (the foreign agent, or
    the home agent), for adapters that route by it; ``registered_via`` the
    foreign agent of the registration in force, or None.
    """

    log = Logger()

    def __init__(
        self,
        settings: MobileNodeSettings,
        *,
        clock: IReactorTime,
        send: Callable[[bytes], None],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._send = send
        self.state = State.UNREGISTERED
        self.care_of: IPv4Address | None = None
        self.clock_offset = 0.0
        self.counters: Counter[str] = Counter()
        self.last_code: int | None = None
        self.last_unverified_code: int | None = None
        self.registered_until: float | None = None
        self.granted_lifetime = 0
        self.nat = False
        self.keepalive = 0
        self.attempts = 0
        self.events: list[dict[str, Any]] = []
        self.foreign_agent: ForeignAgentLink | None = None
        self.registered_via: IPv4Address | None = None
        self.next_hop: IPv4Address = settings.home_agent
        # A co-located care-of address other than the local one: the inner
        # address a VPN gateway gave us (RFC 5265), None otherwise.
        self.tunnel_address: IPv4Address | None = None
        # low 32 bits -> (identification, time sent, foreign agent it went through)
        self._outstanding: dict[int, tuple[int, float, ForeignAgentLink | None]] = {}
        self._lifetime_cap: int | None = None
        self._interval = settings.retransmit_initial
        self._timer: IDelayedCall | None = None
        self._deregistered: Deferred[bool] | None = None
        self._listeners: list[StatusListener] = []
        self._last_ident = 0

    # -- public -----------------------------------------------------------

    def add_listener(self, listener: StatusListener) -> None:
        """Call ``listener(node)`` after every state change."""
        self._listeners.append(listener)

    def register(self, care_of: IPv4Address) -> None:
        """(Re-)register ``care_of`` now; a new address restarts the exchange."""
        if care_of == self.settings.home_address:
            self.go_home()
            return
        changed = care_of != self.care_of
        self.care_of = care_of
        self.note_event("care-of", address=str(care_of), changed=changed)
        self._start(State.REGISTERING)

    def set_foreign_agent(self, fa: ForeignAgentLink | None) -> None:
        """Register through ``fa`` (or directly, with None) from the next request on.

        Nothing is sent now: the caller re-registers when it wants the change
        to take effect at once.
        """
        if fa == self.foreign_agent:
            return
        self._lifetime_cap = None
        self.foreign_agent = fa
        self.note_event("foreign-agent", address=str(fa.address) if fa else None)

    def set_tunnel_address(self, address: IPv4Address | None) -> None:
        """Register ``address`` (a VPN's inner address) as the co-located care-of address.

        From the next request on; None goes back to the local address.
        """
        if address == self.tunnel_address:
            return
        self.tunnel_address = address
        self.note_event("tunnel-address", address=str(address) if address else None)

    def go_home(self) -> None:
        """The node is on its home network: remove every binding."""
        self.care_of = self.settings.home_address
        self._start(State.DEREGISTERING)

    def deregister(self) -> Deferred[bool]:
        """Remove every binding; fires True when the home agent confirmed it."""
        d: Deferred[bool] = Deferred()
        if self.care_of is None or self.state is State.AT_HOME:
            d.callback(True)
            return d
        self._deregistered = d
        self._start(State.DEREGISTERING)
        return d

    def stop(self) -> None:
        """Cancel every timer."""
        self._cancel()

    def status(self) -> dict[str, Any]:
        """The state as plain data (for the log, the status file and ctl)."""
        now = self.clock.seconds()
        return {
            "node": self.settings.name,
            "state": self.state.value,
            "home_address": str(self.settings.home_address),
            "home_agent": str(self.settings.home_agent),
            "care_of_address": str(self.care_of) if self.care_of else None,
            "foreign_agent": str(self.foreign_agent.address) if self.foreign_agent else None,
            "registered_via": str(self.registered_via) if self.registered_via else None,
            "tunnel_address": str(self.tunnel_address) if self.tunnel_address else None,
            "registered_until": self.registered_until,
            "remaining": (max(0.0, self.registered_until - now) if self.registered_until else None),
            "lifetime": self.granted_lifetime,
            "code": self.last_code,
            "code_meaning": (
                mip.REPLY_CODE_NAMES.get(self.last_code) if self.last_code is not None else None
            ),
            "unverified_code": self.last_unverified_code,
            "nat": self.nat,
            "keepalive": self.keepalive,
            "clock_offset": self.clock_offset,
            "counters": dict(self.counters),
        }

    # -- sending ----------------------------------------------------------

    def _start(self, state: State) -> None:
        self._cancel()
        self._outstanding.clear()
        self._interval = self.settings.retransmit_initial
        self.attempts = 0
        self._set_state(state)
        self._transmit()

    def _identification(self) -> int:
        ident = to_ntp(self.clock.seconds() + self.clock_offset)
        # RFC 5944 section 5.7.1: fraction bits the clock does not supply come
        # from a good source of randomness.  Replies are matched on the low 32
        # bits alone, so without this two requests sent at the same fraction
        # of a second (a coarse clock) would match each other's replies.  The
        # lowest 24 bits are below 4 ms, far inside any replay window.
        ident = (ident & ~_RANDOM_BITS) | secrets.randbits(24)
        # Strictly increasing, even if the clock stands still or steps back.
        if ident <= self._last_ident:
            ident = self._last_ident + 1
        self._last_ident = ident
        return ident

    def _lifetime(self) -> int:
        """The lifetime to ask for: the configured one, or less if a foreign agent said so."""
        if self.state is State.DEREGISTERING:
            return 0
        lifetime = self.settings.lifetime
        if self._lifetime_cap is not None and self.foreign_agent is not None:
            lifetime = min(lifetime, self._lifetime_cap)
        return lifetime

    def _build(self) -> bytes:
        s = self.settings
        deregistering = self.state is State.DEREGISTERING
        # On the home network (go_home) there is no foreign agent to go through.
        fa = self.foreign_agent if self.care_of != s.home_address else None
        coa: IPv4Address | None
        if fa is not None:
            # RFC 5944 section 3.6.1.2: a foreign agent's care-of address, the
            # foreign agent decapsulates ('D' clear); NAT traversal is its job.
            coa = fa.address
            flags = 0
        else:
            coa = s.home_address if deregistering else (self.tunnel_address or self.care_of)
            flags = mip.FLAG_D
        assert coa is not None
        if s.reverse_tunnel and not deregistering:
            flags |= mip.FLAG_T
        exts: list[mip.Extension] = []
        if s.nai:
            exts.append(mip.NAIExtension(s.nai.encode()))
        if s.udp_tunnel != "off" and not deregistering and fa is None:
            exts.append(mip.UDPTunnelRequest(encapsulation=4, force=s.udp_tunnel == "force"))
        ident = self._identification()
        req = mip.RegistrationRequest(
            flags=flags,
            lifetime=self._lifetime(),
            home_address=s.home_address,
            home_agent=s.home_agent,
            care_of_address=coa,
            identification=ident,
            extensions=tuple(exts),
        )
        self._outstanding[ident & 0xFFFFFFFF] = (ident, self.clock.seconds(), fa)
        self.next_hop = fa.address if fa is not None else s.home_agent
        data = mip.append_authenticator(mip.encode(req), mip.EXT_MN_HA, s.spi, s.key, s.algorithm)
        if fa is not None:
            data = mip.append_authenticator(data, mip.EXT_MN_FA, fa.spi, fa.key, fa.algorithm)
        return data

    def _transmit(self) -> None:
        self._timer = None
        s = self.settings
        if s.max_attempts and self.attempts >= s.max_attempts:
            self.log.warn(
                "no valid reply from home agent {ha} after {n} attempt(s)",
                ha=s.home_agent,
                n=self.attempts,
            )
            if self.state is State.DEREGISTERING:
                self._finish_deregistration(False)
            else:
                self._set_state(State.UNREGISTERED)
                self._timer = self.clock.callLater(s.retransmit_max, self._restart)
            return
        self.attempts += 1
        data = self._build()
        self.counters["requests_sent"] += 1
        if self.attempts > 1:
            self.counters["retransmissions"] += 1
        via = self.next_hop if self.next_hop != s.home_agent else None
        self.note_event(
            "request",
            attempt=self.attempts,
            lifetime=self._lifetime(),
            **({"via": str(via)} if via is not None else {}),
        )
        self.log.info(
            "{what} sent to {ha}{via} coa={coa} attempt={n}",
            what="deregistration" if self.state is State.DEREGISTERING else "registration request",
            ha=s.home_agent,
            via=f" via foreign agent {via}" if via is not None else "",
            coa=self.care_of,
            n=self.attempts,
        )
        # Arm the timer before sending: send() may deliver the reply at once
        # (an in-memory link), and that reply must be able to cancel it.
        self._timer = self.clock.callLater(self._interval, self._transmit)
        self._interval = min(self._interval * 2, s.retransmit_max)
        self._send(data)

    def _restart(self) -> None:
        self._timer = None
        if self.care_of is not None and self.care_of != self.settings.home_address:
            self._start(State.REGISTERING)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- receiving --------------------------------------------------------

    def datagram_received(self, data: bytes, source: tuple[str, int]) -> None:
        """A datagram arrived on the registration socket."""
        self.counters["replies_received"] += 1
        try:
            msg = mip.decode(data)
        except WireError as e:
            self.counters["dropped_malformed"] += 1
            self.log.warn("dropped a malformed reply from {host}: {why}", host=source[0], why=e)
            return
        if not isinstance(msg, mip.RegistrationReply):
            self.counters["dropped_unexpected"] += 1
            self.log.warn(
                "dropped a registration request sent to a mobile node from {host}", host=source[0]
            )
            return
        s = self.settings
        pending = self._outstanding.get(msg.identification & 0xFFFFFFFF)
        if msg.home_address != s.home_address or pending is None:
            self.counters["dropped_unmatched"] += 1
            self.log.warn(
                "dropped a reply from {host} that matches no outstanding request", host=source[0]
            )
            return
        mnha = mip.find_auth(msg.extensions, mip.EXT_MN_HA)
        ok = False
        if mnha is not None:
            ext = msg.extensions[mnha]
            assert isinstance(ext, mip.AuthExtension)
            ok = ext.spi == s.spi and mip.verify_authenticator(msg, mnha, s.key, s.algorithm)
        fa = pending[2]
        from_fa = False
        if fa is not None:
            # Sent through a foreign agent: whatever comes back must carry its
            # MN-FA extension (RFC 5944 section 3.6.2.1).  A refusal of its
            # own (64-127) stands on MN-FA alone; anything else also needs
            # the home agent's MN-HA.
            mnfa = mip.auth_indices(msg.extensions, mip.EXT_MN_FA)
            fa_ok = False
            if len(mnfa) == 1:
                fext = msg.extensions[mnfa[0]]
                assert isinstance(fext, mip.AuthExtension)
                fa_ok = fext.spi == fa.spi and mip.verify_authenticator(
                    msg, mnfa[0], fa.key, fa.algorithm
                )
            from_fa = fa_ok and not ok and msg.code in mip.FOREIGN_AGENT_CODES
            ok = fa_ok and (ok or from_fa)
        if not ok:
            self.counters["dropped_unauthenticated"] += 1
            self.last_unverified_code = msg.code
            self.log.warn(
                "ignored an unauthenticated reply from {host} with code {code} ({meaning})",
                host=source[0],
                code=msg.code,
                meaning=mip.REPLY_CODE_NAMES.get(msg.code, "?"),
            )
            self._notify()
            return
        unknown = mip.unknown_nonskippable(msg.extensions)
        if unknown is not None:
            self.counters["dropped_unknown_extension"] += 1
            self.log.warn(
                "discarded a reply with unrecognised non-skippable extension {t}", t=unknown
            )
            return
        if from_fa:
            self._handle_fa_refusal(msg, pending)
            return
        self._handle_reply(msg, pending)

    def _handle_fa_refusal(
        self, msg: mip.RegistrationReply, pending: tuple[int, float, ForeignAgentLink | None]
    ) -> None:
        """A refusal the foreign agent made itself, authenticated by MN-FA."""
        fa = pending[2]
        assert fa is not None
        self.last_code = msg.code
        self.last_unverified_code = None
        self.counters[f"fa_refusals_{msg.code}"] += 1
        self.note_event("reply", code=msg.code, lifetime=msg.lifetime, via=str(fa.address))
        meaning = mip.REPLY_CODE_NAMES.get(msg.code, "?")
        asked = self._lifetime()
        if (
            msg.code == mip.CODE_FA_LIFETIME_TOO_LONG
            and 0 < msg.lifetime < asked
            and self.state is State.REGISTERING
        ):
            self._lifetime_cap = msg.lifetime
            self.log.info(
                "foreign agent {fa} allows at most {lifetime} s; asking again",
                fa=fa.address,
                lifetime=msg.lifetime,
            )
            self._start(State.REGISTERING)
            return
        if msg.code in TRANSIENT_FA_CODES or msg.code == mip.CODE_FA_LIFETIME_TOO_LONG:
            # The retransmission timer keeps running: tried again with backoff.
            self.log.warn(
                "foreign agent {fa} refused with code {code} ({meaning}); trying again",
                fa=fa.address,
                code=msg.code,
                meaning=meaning,
            )
            self._notify()
            return
        self._cancel()
        self._outstanding.clear()
        self.registered_until = None
        self.registered_via = None
        self.log.warn(
            "foreign agent {fa} refused with code {code} ({meaning}); retrying in {delay:g} s",
            fa=fa.address,
            code=msg.code,
            meaning=meaning,
            delay=self.settings.retransmit_max,
        )
        self._set_state(State.REFUSED)
        if self._deregistered is not None:
            self._finish_deregistration(False)
        self._timer = self.clock.callLater(self.settings.retransmit_max, self._restart)

    def _handle_reply(
        self, msg: mip.RegistrationReply, pending: tuple[int, float, ForeignAgentLink | None]
    ) -> None:
        s = self.settings
        now = self.clock.seconds()
        self.last_code = msg.code
        self.last_unverified_code = None
        rtt_ms = (now - pending[1]) * 1000
        self.note_event("reply", code=msg.code, lifetime=msg.lifetime, rtt_ms=round(rtt_ms, 1))
        if msg.code == mip.CODE_HA_ID_MISMATCH:
            # Resynchronise: the home agent's seconds are in the high 32 bits.
            ours = ntp_seconds(to_ntp(now + self.clock_offset))
            theirs = ntp_seconds(msg.identification)
            if theirs == ours:
                # Our clock agrees: the request was refused as not newer than
                # one the home agent accepted before.  Sending again at once
                # would be refused the same way (in a loop); the retransmission
                # timer tries again with a later timestamp.
                self.log.info("identification not newer than the home agent's last; waiting")
                return
            self.clock_offset += theirs - ours
            # The corrected clock rules from now on, also when it goes back.
            self._last_ident = 0
            self.counters["resyncs"] += 1
            self.log.info(
                "home agent clock differs: offset now {offset:+.0f} s, sending again",
                offset=self.clock_offset,
            )
            state = self.state
            self._start(state if state is not State.REFUSED else State.REGISTERING)
            return
        self._cancel()
        self._outstanding.clear()
        if self.state is State.DEREGISTERING:
            if msg.accepted:
                self.registered_until = None
                self.granted_lifetime = 0
                self.registered_via = None
                self.log.info(
                    "deregistered from {ha} (code {code})", ha=s.home_agent, code=msg.code
                )
                at_home = self.care_of == s.home_address
                self._set_state(State.AT_HOME if at_home else State.UNREGISTERED)
                self._finish_deregistration(True)
            else:
                self.log.warn("deregistration refused with code {code}", code=msg.code)
                self._set_state(State.REFUSED)
                self._finish_deregistration(False)
            return
        if msg.accepted:
            self.granted_lifetime = msg.lifetime
            self.registered_until = now + msg.lifetime
            self.registered_via = pending[2].address if pending[2] is not None else None
            utrp_i = mip.find_extension(msg.extensions, mip.UDPTunnelReply)
            self.nat = False
            self.keepalive = 0
            if utrp_i is not None:
                utrp = msg.extensions[utrp_i]
                assert isinstance(utrp, mip.UDPTunnelReply)
                self.nat = utrp.code == 0
                self.keepalive = utrp.keepalive
            self.log.info(
                "registered coa={coa}{via} lifetime={lifetime} code={code} ({meaning}){nat}",
                coa=self.care_of,
                via=f" via foreign agent {self.registered_via}" if self.registered_via else "",
                lifetime=msg.lifetime,
                code=msg.code,
                meaning=mip.REPLY_CODE_NAMES.get(msg.code, "?"),
                nat=" via UDP tunnelling (NAT)" if self.nat else "",
            )
            self._set_state(State.REGISTERED)
            if msg.lifetime > 0:
                delay = max(1.0, msg.lifetime * s.reregister_margin)
                self._timer = self.clock.callLater(delay, self._reregister)
            return
        self.registered_until = None
        self.registered_via = None
        self.log.warn(
            "registration refused with code {code} ({meaning}); retrying in {delay:g} s",
            code=msg.code,
            meaning=mip.REPLY_CODE_NAMES.get(msg.code, "?"),
            delay=s.retransmit_max,
        )
        self._set_state(State.REFUSED)
        self._timer = self.clock.callLater(s.retransmit_max, self._restart)

    def _reregister(self) -> None:
        self._timer = None
        self._start(State.REGISTERING)

    def _finish_deregistration(self, ok: bool) -> None:
        d, self._deregistered = self._deregistered, None
        if d is not None and not d.called:
            d.callback(ok)

    # -- events -----------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            self.note_event("state", state=state.value)
        self.state = state
        self._notify()

    def notify(self) -> None:
        """Tell the listeners (status file, data plane) to look again."""
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self)

    def note_event(self, kind: str, **fields: Any) -> None:
        """Record a timeline event (kept for the status file; the last 200)."""
        self.events.append({"t": self.clock.seconds(), "event": kind, **fields})
        del self.events[:-200]
