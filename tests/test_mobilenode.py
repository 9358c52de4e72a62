# -*- test-case-name: tests.test_mobilenode -*-
"""Tests for L{smobility.engines.mobilenode}, alone and joined to a home agent.

Alone, the node's requests are captured with their send times and replies are
built by hand (signed, unsigned, forged).  Joined, a L{FakeLink} carries its
datagrams to a L{HomeAgent} and the replies back, in memory (the habit of
h11's C{tests/helpers.py}), while L{task.Clock} runs for simulated hours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines.bindings import MemoryStore
from smobility.engines.homeagent import HomeAgent, MobileNodeEntry
from smobility.engines.mobilenode import (
    ForeignAgentLink,
    MobileNode,
    MobileNodeSettings,
    State,
)
from smobility.wire import mip
from smobility.wire.ntp import ntp_seconds, to_ntp
from tests.test_homeagent import (
    COA_A,
    COA_B,
    FA,
    HA_ADDR,
    N1,
    NAT_PUBLIC,
    NOW,
    WRONG_KEY,
    make_clock,
    make_ha,
)

SETTINGS = MobileNodeSettings(
    name=N1.name,
    home_address=N1.home_address,
    home_agent=HA_ADDR,
    spi=N1.spi,
    key=N1.key,
    lifetime=600,
    retransmit_initial=1.0,
    retransmit_max=8.0,
)
HA_SOURCE = (str(HA_ADDR), 434)


def decode_request(data: bytes) -> mip.RegistrationRequest:
    """Decode a request the node sent."""
    msg = mip.decode(data)
    assert isinstance(msg, mip.RegistrationRequest)
    return msg


def make_reply(
    request: bytes,
    *,
    code: int = mip.CODE_ACCEPTED,
    lifetime: int | None = None,
    identification: int | None = None,
    home_address: IPv4Address | None = None,
    extensions: Sequence[mip.Extension] = (),
    key: bytes | None = N1.key,
    spi: int = N1.spi,
    after: Sequence[mip.Extension] = (),
) -> bytes:
    """A reply to C{request}, signed with C{key} (unsigned if C{key} is None)."""
    req = decode_request(request)
    if lifetime is None:
        lifetime = req.lifetime if code in (0, 1) else 0
    data = mip.encode(
        mip.RegistrationReply(
            code=code,
            lifetime=lifetime,
            home_address=req.home_address if home_address is None else home_address,
            home_agent=req.home_agent,
            identification=req.identification if identification is None else identification,
            extensions=tuple(extensions),
        )
    )
    if key is not None:
        data = mip.append_authenticator(data, mip.EXT_MN_HA, spi, key)
    return data + b"".join(mip.encode_extension(e) for e in after)


def mismatch_reply(request: bytes, ha_time: float, **kwargs: Any) -> bytes:
    """A 133 reply as a home agent whose clock reads C{ha_time} builds it."""
    ident = decode_request(request).identification
    theirs = (ntp_seconds(to_ntp(ha_time)) << 32) | (ident & 0xFFFFFFFF)
    return make_reply(request, code=mip.CODE_HA_ID_MISMATCH, identification=theirs, **kwargs)


class FakeLink:
    """Carries a node's datagrams to a home agent and the replies back, in memory.

    With C{latency} None delivery is immediate (inside C{send}); otherwise
    each direction takes C{latency} seconds on C{clock}.  C{source} is the
    address the home agent sees: the care-of address, or a NAT's.  The first
    C{drop} requests are lost.
    """

    def __init__(
        self,
        ha: HomeAgent,
        *,
        source: tuple[str, int] = (str(COA_A), 434),
        latency: float | None = None,
        clock: Clock | None = None,
        drop: int = 0,
    ) -> None:
        self.ha = ha
        self.source = source
        self.latency = latency
        self.clock = clock
        self.drop = drop
        self.node: MobileNode | None = None
        self.requests: list[bytes] = []
        self.replies: list[bytes] = []

    def attach(self, node: MobileNode) -> MobileNode:
        """Deliver replies to C{node}; return it."""
        self.node = node
        return node

    def _later(self, f: Any, *args: Any) -> None:
        if self.latency is None:
            f(*args)
        else:
            assert self.clock is not None
            self.clock.callLater(self.latency, f, *args)

    def send(self, data: bytes) -> None:
        """The node's C{send}: one datagram towards the home agent."""
        self.requests.append(data)
        if self.drop:
            self.drop -= 1
            return
        self._later(self._to_ha, data)

    def _to_ha(self, data: bytes) -> None:
        reply = self.ha.handle_request(data, self.source)
        if reply is not None:
            self.replies.append(reply)
            self._later(self._to_node, reply)

    def _to_node(self, data: bytes) -> None:
        assert self.node is not None
        self.node.datagram_received(data, HA_SOURCE)

    def codes(self) -> list[int]:
        """The codes of every reply so far."""
        out = []
        for r in self.replies:
            msg = mip.decode(r)
            assert isinstance(msg, mip.RegistrationReply)
            out.append(msg.code)
        return out


class _Alone(SynchronousTestCase):
    """One mobile node on a clock; what it sends is captured with the time."""

    settings = SETTINGS

    def setUp(self) -> None:
        self.clock = make_clock()
        self.sent: list[tuple[float, bytes]] = []
        self.node = MobileNode(self.settings, clock=self.clock, send=self.capture)
        self.addCleanup(self.node.stop)

    def capture(self, data: bytes) -> None:
        self.sent.append((self.clock.seconds(), data))

    @property
    def last(self) -> bytes:
        """The last datagram sent."""
        return self.sent[-1][1]

    def times(self) -> list[float]:
        """Send times relative to L{NOW} (to the microsecond: floats near 1.8e9)."""
        return [round(t - NOW, 6) for t, _ in self.sent]

    def deliver(self, data: bytes) -> None:
        self.node.datagram_received(data, HA_SOURCE)

    def registered(self, lifetime: int | None = None, **kwargs: Any) -> None:
        """Register at L{COA_A} and accept."""
        self.node.register(COA_A)
        self.deliver(make_reply(self.last, lifetime=lifetime, **kwargs))
        self.assertEqual(self.node.state, State.REGISTERED)


class RequestTests(_Alone):
    """What the node sends."""

    def test_register_sends_at_once(self) -> None:
        self.assertEqual(self.node.state, State.UNREGISTERED)
        self.node.register(COA_A)
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(len(self.sent), 1)
        req = decode_request(self.last)
        self.assertEqual(req.home_address, N1.home_address)
        self.assertEqual(req.home_agent, HA_ADDR)
        self.assertEqual(req.care_of_address, COA_A)
        self.assertEqual(req.lifetime, 600)
        self.assertTrue(req.flag(mip.FLAG_D))
        self.assertTrue(req.flag(mip.FLAG_T))
        self.assertFalse(req.flags & (mip.FLAG_M | mip.FLAG_G | mip.FLAG_R | mip.FLAG_X))
        self.assertEqual(ntp_seconds(req.identification), ntp_seconds(to_ntp(NOW)))
        self.assertIn(mip.UDPTunnelRequest(), req.extensions)
        # The MN-HA extension is last and covers everything before it.
        i = mip.find_auth(req.extensions, mip.EXT_MN_HA)
        self.assertEqual(i, len(req.extensions) - 1)
        assert i is not None
        self.assertTrue(mip.verify_authenticator(req, i, N1.key, N1.algorithm))

    def test_backoff(self) -> None:
        """Retransmissions after 1, 2, 4, 8, 8, 8 ... seconds, each a fresh request."""
        self.node.register(COA_A)
        for _ in range(80):
            self.clock.advance(0.5)
        self.assertEqual(self.times(), [0, 1, 3, 7, 15, 23, 31, 39])
        idents = [decode_request(d).identification for _, d in self.sent]
        self.assertEqual(idents, sorted(set(idents)))
        for (t, _), ident in zip(self.sent, idents, strict=True):
            self.assertEqual(ntp_seconds(ident), ntp_seconds(to_ntp(t)))
        self.assertEqual(len({i & 0xFFFFFFFF for i in idents}), len(idents))
        self.assertEqual(self.node.counters["retransmissions"], 7)
        self.assertEqual(self.node.state, State.REGISTERING)

    def test_backoff_settings(self) -> None:
        node = MobileNode(
            replace(SETTINGS, retransmit_initial=0.5, retransmit_max=3.0),
            clock=self.clock,
            send=self.capture,
        )
        self.addCleanup(node.stop)
        node.register(COA_A)
        for _ in range(60):
            self.clock.advance(0.25)
        self.assertEqual(self.times(), [0, 0.5, 1.5, 3.5, 6.5, 9.5, 12.5])

    def test_max_attempts_registration(self) -> None:
        """Out of attempts: unregistered, and a fresh start after the maximum interval."""
        node = MobileNode(replace(SETTINGS, max_attempts=3), clock=self.clock, send=self.capture)
        self.addCleanup(node.stop)
        node.register(COA_A)
        self.clock.pump([1, 2, 4])
        self.assertEqual(self.times(), [0, 1, 3])
        self.assertEqual(node.state, State.UNREGISTERED)
        self.clock.advance(7.9)
        self.assertEqual(len(self.sent), 3)
        self.clock.advance(0.1)
        self.assertEqual(self.times(), [0, 1, 3, 15])
        self.assertEqual(node.state, State.REGISTERING)

    def test_distinct_low_bits(self) -> None:
        """Requests sent at one clock reading differ in the low 32 bits replies echo.

        RFC 5944 section 5.7.1: fraction bits the clock does not supply are
        random.  L{Clock} reads whole seconds here.
        """
        self.node.register(COA_A)
        self.node.register(COA_B)
        self.node.register(COA_A)
        idents = [decode_request(d).identification for _, d in self.sent]
        self.assertEqual(len({i & 0xFFFFFFFF for i in idents}), 3)
        self.assertEqual({ntp_seconds(i) for i in idents}, {ntp_seconds(to_ntp(NOW))})
        # Still a timestamp: within a few milliseconds of the clock.
        for i in idents:
            self.assertLess(abs(i - to_ntp(NOW)), 1 << 24)

    def test_udp_tunnel_settings(self) -> None:
        for mode, expected in (("off", None), ("force", mip.UDPTunnelRequest(force=True))):
            sent: list[bytes] = []
            node = MobileNode(
                replace(SETTINGS, udp_tunnel=mode), clock=self.clock, send=sent.append
            )
            node.register(COA_A)
            node.stop()
            exts = decode_request(sent[0]).extensions
            i = mip.find_extension(exts, mip.UDPTunnelRequest)
            self.assertEqual(None if i is None else exts[i], expected)

    def test_nai(self) -> None:
        sent: list[bytes] = []
        node = MobileNode(
            replace(SETTINGS, nai="n1@example.org"), clock=self.clock, send=sent.append
        )
        node.register(COA_A)
        node.stop()
        self.assertIn(mip.NAIExtension(b"n1@example.org"), decode_request(sent[0]).extensions)


class ReplyTests(_Alone):
    """Which replies the node acts upon, and what it does then."""

    def test_accepted(self) -> None:
        self.node.register(COA_A)
        self.clock.advance(0.25)
        self.deliver(make_reply(self.last, lifetime=300))
        self.assertEqual(self.node.state, State.REGISTERED)
        self.assertEqual(self.node.granted_lifetime, 300)
        self.assertEqual(self.node.registered_until, NOW + 0.25 + 300)
        self.assertEqual(self.node.last_code, 0)
        self.assertFalse(self.node.nat)
        # No retransmission any more.
        self.clock.advance(100)
        self.assertEqual(len(self.sent), 1)

    def test_reply_to_earlier_attempt(self) -> None:
        """A late reply to the first transmission still counts."""
        self.node.register(COA_A)
        first = self.last
        self.clock.advance(1)
        self.assertEqual(len(self.sent), 2)
        self.deliver(make_reply(first))
        self.assertEqual(self.node.state, State.REGISTERED)

    def test_reregister_at_margin(self) -> None:
        """Re-registration at reregister_margin (0.8) of the granted lifetime."""
        self.registered()
        self.clock.advance(479.9)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.times(), [0, 480])
        self.assertEqual(decode_request(self.last).care_of_address, COA_A)
        self.assertEqual(self.node.state, State.REGISTERING)

    def test_reregister_granted_lifetime(self) -> None:
        """The margin applies to the lifetime granted, not the one asked for."""
        self.registered(lifetime=100)
        self.clock.advance(80)
        self.assertEqual(self.times(), [0, 80])

    def test_reregister_other_margin(self) -> None:
        node = MobileNode(
            replace(SETTINGS, reregister_margin=0.5), clock=self.clock, send=self.capture
        )
        self.addCleanup(node.stop)
        node.register(COA_A)
        node.datagram_received(make_reply(self.last, lifetime=200), HA_SOURCE)
        self.clock.advance(100)
        self.assertEqual(self.times(), [0, 100])

    def test_nat(self) -> None:
        self.registered(extensions=[mip.UDPTunnelReply(code=0, keepalive=20)])
        self.assertTrue(self.node.nat)
        self.assertEqual(self.node.keepalive, 20)
        self.assertTrue(self.node.status()["nat"])
        self.assertEqual(self.node.status()["keepalive"], 20)

    def test_unmatched(self) -> None:
        """A reply whose identification matches nothing outstanding is ignored."""
        self.node.register(COA_A)
        ident = decode_request(self.last).identification
        self.deliver(make_reply(self.last, identification=ident ^ 1))
        self.deliver(make_reply(self.last, home_address=IPv4Address("10.10.0.99")))
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.counters["dropped_unmatched"], 2)
        self.assertIsNone(self.node.last_code)

    def test_duplicate_after_accept(self) -> None:
        """A second copy of the accepting reply matches nothing any more."""
        self.node.register(COA_A)
        reply = make_reply(self.last)
        self.deliver(reply)
        self.clock.advance(100)
        self.deliver(reply)
        self.assertEqual(self.node.counters["dropped_unmatched"], 1)
        self.assertEqual(self.node.registered_until, NOW + 600)
        self.clock.advance(380)
        self.assertEqual(self.times(), [0, 480])

    def test_bad_mn_ha(self) -> None:
        """Unsigned, wrongly signed or wrong-SPI replies are ignored."""
        self.node.register(COA_A)
        for data in (
            make_reply(self.last, key=None),
            make_reply(self.last, key=WRONG_KEY),
            make_reply(self.last, spi=N1.spi + 1),
            make_reply(self.last, code=129, key=None),
        ):
            self.deliver(data)
            self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.counters["dropped_unauthenticated"], 4)
        self.assertEqual(self.node.status()["unverified_code"], 129)
        self.assertIsNone(self.node.last_code)
        # Retransmission goes on as if nothing had come.
        self.clock.advance(1)
        self.assertEqual(self.times(), [0, 1])

    def test_unknown_extension(self) -> None:
        """A signed reply with an unknown extension of type 0-127 is discarded."""
        self.node.register(COA_A)
        self.deliver(make_reply(self.last, extensions=[mip.UnknownExtension(100, b"x")]))
        self.deliver(make_reply(self.last, after=[mip.UnknownExtension(5, b"")]))
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.counters["dropped_unknown_extension"], 2)
        self.deliver(make_reply(self.last, extensions=[mip.UnknownExtension(200, b"x")]))
        self.assertEqual(self.node.state, State.REGISTERED)

    def test_garbage(self) -> None:
        self.node.register(COA_A)
        self.deliver(b"\x03\x00")
        self.deliver(self.last)  # a request, not a reply
        self.assertEqual(self.node.counters["dropped_malformed"], 1)
        self.assertEqual(self.node.counters["dropped_unexpected"], 1)
        self.assertEqual(self.node.state, State.REGISTERING)

    def test_refused(self) -> None:
        """A signed refusal: state refused with the code; a fresh try later."""
        self.node.register(COA_A)
        self.deliver(make_reply(self.last, code=mip.CODE_HA_PROHIBITED))
        self.assertEqual(self.node.state, State.REFUSED)
        status = self.node.status()
        self.assertEqual(status["state"], "refused")
        self.assertEqual(status["code"], 129)
        self.assertEqual(status["code_meaning"], "administratively prohibited")
        self.assertIsNone(status["registered_until"])
        self.clock.advance(7.9)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.times(), [0, 8])
        self.assertEqual(self.node.state, State.REGISTERING)


class ResyncTests(_Alone):
    """A signed 133 resynchronises the clock offset; forged ones are ignored."""

    def test_signed_133(self) -> None:
        self.node.register(COA_A)
        self.clock.advance(0.3)
        self.deliver(mismatch_reply(self.last, self.clock.seconds() + 1000))
        self.assertEqual(self.node.clock_offset, 1000)
        self.assertEqual(self.node.counters["resyncs"], 1)
        # Sent again at once, with the home agent's time.
        self.assertEqual(self.times(), [0, 0.3])
        req = decode_request(self.last)
        self.assertEqual(ntp_seconds(req.identification), ntp_seconds(to_ntp(NOW + 1000.3)))
        self.assertEqual(self.node.state, State.REGISTERING)
        # Backoff starts over from the initial interval.
        self.clock.advance(1)
        self.assertEqual(self.times(), [0, 0.3, 1.3])

    def test_clock_behind(self) -> None:
        self.node.register(COA_A)
        self.deliver(mismatch_reply(self.last, NOW - 1000))
        self.assertEqual(self.node.clock_offset, -1000)
        req = decode_request(self.last)
        self.assertEqual(ntp_seconds(req.identification), ntp_seconds(to_ntp(NOW - 1000)))

    def test_forged_133(self) -> None:
        """An unsigned or wrongly signed 133 changes nothing."""
        self.node.register(COA_A)
        for key in (None, WRONG_KEY):
            self.deliver(mismatch_reply(self.last, NOW + 1000, key=key))
        self.assertEqual(self.node.clock_offset, 0)
        self.assertEqual(self.node.counters["resyncs"], 0)
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.status()["unverified_code"], 133)
        self.assertEqual(self.node.counters["dropped_unauthenticated"], 2)

    def test_133_while_registered(self) -> None:
        """A 133 to a re-registration keeps the offset learnt and retries."""
        self.registered()
        self.clock.advance(480)
        self.deliver(mismatch_reply(self.last, self.clock.seconds() + 30))
        self.assertEqual(self.node.clock_offset, 30)
        self.assertEqual(self.times(), [0, 480, 480])


class CareOfTests(_Alone):
    """A new care-of address restarts the exchange at once."""

    def test_while_registering(self) -> None:
        self.node.register(COA_A)
        self.clock.pump([1, 2, 1])
        old = self.last
        self.assertEqual(self.times(), [0, 1, 3])
        self.node.register(COA_B)
        self.assertEqual(self.times(), [0, 1, 3, 4])
        self.assertEqual(decode_request(self.last).care_of_address, COA_B)
        self.assertEqual(self.node.care_of, COA_B)
        # The backoff starts over.
        self.clock.advance(1)
        self.assertEqual(self.times(), [0, 1, 3, 4, 5])
        # A reply to the old address's request no longer matches.
        self.deliver(make_reply(old))
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.counters["dropped_unmatched"], 1)
        self.deliver(make_reply(self.last))
        self.assertEqual(self.node.state, State.REGISTERED)

    def test_while_registered(self) -> None:
        self.registered()
        self.clock.advance(100)
        self.node.register(COA_B)
        self.assertEqual(self.times(), [0, 100])
        self.assertEqual(self.node.state, State.REGISTERING)
        self.deliver(make_reply(self.last))
        # The old re-registration timer (due at 480) is gone; the new one is at 580.
        self.clock.advance(400)
        self.assertEqual(self.times(), [0, 100])
        self.clock.advance(80)
        self.assertEqual(self.times(), [0, 100, 580])
        self.assertEqual(decode_request(self.last).care_of_address, COA_B)


class DeregistrationTests(_Alone):
    """deregister(), go_home() and register(home address)."""

    def assertDeregistration(self, data: bytes) -> None:
        req = decode_request(data)
        self.assertEqual(req.lifetime, 0)
        self.assertEqual(req.care_of_address, N1.home_address)
        self.assertIsNone(mip.find_extension(req.extensions, mip.UDPTunnelRequest))

    def test_deregister(self) -> None:
        self.registered()
        self.clock.advance(10)
        d = self.node.deregister()
        self.assertNoResult(d)
        self.assertEqual(self.node.state, State.DEREGISTERING)
        self.assertDeregistration(self.last)
        self.deliver(make_reply(self.last))
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.node.state, State.UNREGISTERED)
        self.assertIsNone(self.node.registered_until)
        # No re-registration later.
        self.clock.advance(1000)
        self.assertEqual(self.times(), [0, 10])

    def test_deregister_retransmits(self) -> None:
        self.registered()
        d = self.node.deregister()
        self.clock.pump([1, 2])
        self.assertEqual(self.times(), [0, 0, 1, 3])
        self.assertDeregistration(self.last)
        self.deliver(make_reply(self.sent[2][1]))
        self.assertIs(self.successResultOf(d), True)

    def test_deregister_exhausted(self) -> None:
        """max_attempts without a reply: the Deferred fires False."""
        node = MobileNode(replace(SETTINGS, max_attempts=3), clock=self.clock, send=self.capture)
        self.addCleanup(node.stop)
        node.register(COA_A)
        node.datagram_received(make_reply(self.last), HA_SOURCE)
        d = node.deregister()
        self.clock.pump([1, 2])
        self.assertNoResult(d)
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.times(), [0, 0, 1, 3])

    def test_deregister_refused(self) -> None:
        self.registered()
        d = self.node.deregister()
        self.deliver(make_reply(self.last, code=mip.CODE_HA_PROHIBITED))
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.node.state, State.REFUSED)

    def test_deregister_unsigned_reply(self) -> None:
        self.registered()
        d = self.node.deregister()
        self.deliver(make_reply(self.last, key=None))
        self.assertNoResult(d)
        self.assertEqual(self.node.state, State.DEREGISTERING)

    def test_deregister_never_registered(self) -> None:
        self.assertIs(self.successResultOf(self.node.deregister()), True)
        self.assertEqual(self.sent, [])

    def test_go_home(self) -> None:
        self.registered()
        self.node.go_home()
        self.assertEqual(self.node.state, State.DEREGISTERING)
        self.assertDeregistration(self.last)
        self.deliver(make_reply(self.last))
        self.assertEqual(self.node.state, State.AT_HOME)
        self.assertEqual(self.node.status()["state"], "at-home")
        self.clock.advance(1000)
        self.assertEqual(len(self.sent), 2)
        # Already home: deregister() has nothing to do.
        self.assertIs(self.successResultOf(self.node.deregister()), True)
        self.assertEqual(len(self.sent), 2)

    def test_register_home_address(self) -> None:
        self.registered()
        self.node.register(N1.home_address)
        self.assertDeregistration(self.last)
        self.deliver(make_reply(self.last))
        self.assertEqual(self.node.state, State.AT_HOME)

    def test_leave_home(self) -> None:
        self.node.go_home()
        self.deliver(make_reply(self.last))
        self.node.register(COA_A)
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(decode_request(self.last).care_of_address, COA_A)


class StatusTests(_Alone):
    """.state and .status() as plain data."""

    def test_states(self) -> None:
        seen: list[State] = []
        self.node.add_listener(lambda n: seen.append(n.state))
        status = self.node.status()
        self.assertEqual(status["state"], "unregistered")
        self.assertIsNone(status["care_of_address"])
        self.assertIsNone(status["registered_until"])
        self.node.register(COA_A)
        self.assertEqual(self.node.status()["state"], "registering")
        self.assertEqual(self.node.status()["care_of_address"], str(COA_A))
        self.clock.advance(0.5)
        self.deliver(make_reply(self.last, lifetime=300))
        status = self.node.status()
        self.assertEqual(status["state"], "registered")
        self.assertEqual(status["registered_until"], NOW + 300.5)
        self.assertEqual(status["remaining"], 300)
        self.assertEqual(status["lifetime"], 300)
        self.assertEqual(status["code"], 0)
        self.assertEqual(status["code_meaning"], "registration accepted")
        self.assertEqual(status["node"], "n1")
        self.assertEqual(status["home_address"], str(N1.home_address))
        self.assertEqual(status["home_agent"], str(HA_ADDR))
        self.assertEqual(status["counters"]["requests_sent"], 1)
        self.clock.advance(100)
        self.assertEqual(self.node.status()["remaining"], 200)
        self.assertEqual(seen[:2], [State.REGISTERING, State.REGISTERED])

    def test_no_secrets(self) -> None:
        """Neither the settings' repr nor the status holds the key."""
        self.registered()
        self.assertNotIn(N1.key.hex(), repr(SETTINGS))
        self.assertNotIn(repr(N1.key), repr(SETTINGS))
        self.assertNotIn(N1.key.hex(), repr(self.node.status()))


# ---------------------------------------------------------------------------
# Through a foreign agent

MNFA_KEY = bytes.fromhex("5a5a5a5a0102030405060708090a0b0c")
FA_LINK = ForeignAgentLink(address=FA.address, spi=3000, key=MNFA_KEY)
FA_SOURCE = (str(FA.address), 434)


def fa_reply(
    request: bytes,
    *,
    code: int = mip.CODE_ACCEPTED,
    mnha: bool = True,
    mnfa_key: bytes | None = MNFA_KEY,
    mnfa_spi: int = FA_LINK.spi,
    **kwargs: Any,
) -> bytes:
    """A reply relayed (or made) by the foreign agent: MN-HA if C{mnha}, then MN-FA."""
    data = make_reply(request, code=code, key=N1.key if mnha else None, **kwargs)
    if mnfa_key is not None:
        data = mip.append_authenticator(data, mip.EXT_MN_FA, mnfa_spi, mnfa_key)
    return data


class ForeignAgentTests(_Alone):
    """Registering through a foreign agent (RFC 5944 sections 3.6.1.2 and 3.6.2)."""

    def via(self) -> None:
        self.node.set_foreign_agent(FA_LINK)

    def deliver_fa(self, data: bytes) -> None:
        self.node.datagram_received(data, FA_SOURCE)

    def assertViaFA(self, data: bytes, lifetime: int = 600) -> mip.RegistrationRequest:
        req = decode_request(data)
        self.assertEqual(req.care_of_address, FA.address)
        self.assertFalse(req.flag(mip.FLAG_D))
        self.assertEqual(req.lifetime, lifetime)
        self.assertIsNone(mip.find_extension(req.extensions, mip.UDPTunnelRequest))
        n = len(req.extensions)
        self.assertEqual(mip.auth_indices(req.extensions, mip.EXT_MN_HA), [n - 2])
        self.assertEqual(mip.auth_indices(req.extensions, mip.EXT_MN_FA), [n - 1])
        self.assertTrue(mip.verify_authenticator(req, n - 2, N1.key, N1.algorithm))
        self.assertTrue(mip.verify_authenticator(req, n - 1, MNFA_KEY, "hmac-md5"))
        ext = req.extensions[n - 1]
        assert isinstance(ext, mip.AuthExtension)
        self.assertEqual(ext.spi, FA_LINK.spi)
        self.assertEqual(self.node.next_hop, FA.address)
        return req

    def test_link_repr_hides_key(self) -> None:
        self.assertNotIn(MNFA_KEY.hex(), repr(FA_LINK))
        self.assertNotIn(repr(MNFA_KEY), repr(FA_LINK))
        self.assertIn(str(FA.address), repr(FA_LINK))

    def test_request(self) -> None:
        self.via()
        self.assertEqual(self.sent, [])
        self.node.register(COA_A)
        req = self.assertViaFA(self.last)
        self.assertTrue(req.flag(mip.FLAG_T))
        self.assertEqual(req.home_agent, HA_ADDR)
        # The node's own address stays what it is.
        self.assertEqual(self.node.care_of, COA_A)
        self.assertIsNone(self.node.registered_via)
        self.deliver_fa(fa_reply(self.last, lifetime=300))
        self.assertEqual(self.node.state, State.REGISTERED)
        self.assertEqual(self.node.registered_via, FA.address)
        self.assertEqual(self.node.granted_lifetime, 300)
        self.assertFalse(self.node.nat)
        status = self.node.status()
        self.assertEqual(status["registered_via"], str(FA.address))
        self.assertEqual(status["foreign_agent"], str(FA.address))
        self.assertEqual(status["care_of_address"], str(COA_A))
        self.assertNotIn(MNFA_KEY.hex(), repr(status))
        # Re-registration goes through the foreign agent too.
        self.clock.advance(240)
        self.assertViaFA(self.last)

    def test_no_reverse_tunnel(self) -> None:
        node = MobileNode(
            replace(SETTINGS, reverse_tunnel=False), clock=self.clock, send=self.capture
        )
        self.addCleanup(node.stop)
        node.set_foreign_agent(FA_LINK)
        node.register(COA_A)
        self.assertEqual(decode_request(self.last).flags, 0)

    def test_takes_effect_on_next_request(self) -> None:
        self.node.register(COA_A)
        self.assertTrue(decode_request(self.last).flag(mip.FLAG_D))
        self.assertEqual(self.node.next_hop, HA_ADDR)
        self.via()
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(self.node.next_hop, HA_ADDR)
        self.clock.advance(1)
        self.assertViaFA(self.last)
        self.node.set_foreign_agent(None)
        self.clock.advance(2)
        req = decode_request(self.last)
        self.assertEqual(req.care_of_address, COA_A)
        self.assertTrue(req.flag(mip.FLAG_D))
        self.assertIn(mip.UDPTunnelRequest(), req.extensions)
        self.assertEqual(mip.auth_indices(req.extensions, mip.EXT_MN_FA), [])
        self.assertEqual(self.node.next_hop, HA_ADDR)
        self.assertEqual(self.times(), [0, 1, 3])

    def test_reply_needs_mn_fa(self) -> None:
        """Through the foreign agent, MN-HA alone is not enough, nor a bad MN-FA."""
        self.via()
        self.node.register(COA_A)
        for data in (
            fa_reply(self.last, mnfa_key=None),
            fa_reply(self.last, mnfa_key=WRONG_KEY),
            fa_reply(self.last, mnfa_spi=FA_LINK.spi + 1),
            fa_reply(self.last, mnha=False),
            fa_reply(self.last) + mip.encode_extension(mip.AuthExtension(33, 1, b"x")),
        ):
            self.deliver_fa(data)
            self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.counters["dropped_unauthenticated"], 5)
        self.deliver_fa(fa_reply(self.last))
        self.assertEqual(self.node.state, State.REGISTERED)

    def test_direct_reply_needs_no_mn_fa(self) -> None:
        """A request sent directly is answered directly: no MN-FA expected."""
        self.node.register(COA_A)
        self.via()
        self.deliver(make_reply(self.last))
        self.assertEqual(self.node.state, State.REGISTERED)
        self.assertIsNone(self.node.registered_via)

    def test_unauthenticated_refusal_ignored(self) -> None:
        self.via()
        self.node.register(COA_A)
        for key in (None, WRONG_KEY):
            self.deliver_fa(
                fa_reply(self.last, code=mip.CODE_FA_PROHIBITED, mnha=False, mnfa_key=key)
            )
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.last_unverified_code, mip.CODE_FA_PROHIBITED)
        self.assertIsNone(self.node.last_code)

    def test_home_agent_code_needs_mn_ha(self) -> None:
        """A home agent's code (128+) with MN-FA but no MN-HA is not the foreign agent's to give."""
        self.via()
        self.node.register(COA_A)
        self.deliver_fa(fa_reply(self.last, code=mip.CODE_HA_PROHIBITED, mnha=False))
        self.deliver_fa(fa_reply(self.last, code=mip.CODE_ACCEPTED, mnha=False))
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.counters["dropped_unauthenticated"], 2)
        # With both extensions the home agent's refusal counts.
        self.deliver_fa(fa_reply(self.last, code=mip.CODE_HA_PROHIBITED))
        self.assertEqual(self.node.state, State.REFUSED)
        self.assertEqual(self.node.last_code, mip.CODE_HA_PROHIBITED)

    def test_refused(self) -> None:
        """Refusals that another try would not cure: refused, a fresh start later."""
        for code in (64, 65, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77, 79):
            sent: list[bytes] = []
            clock = make_clock()
            node = MobileNode(SETTINGS, clock=clock, send=sent.append)
            node.set_foreign_agent(FA_LINK)
            node.register(COA_A)
            node.datagram_received(fa_reply(sent[-1], code=code, mnha=False), FA_SOURCE)
            self.assertEqual(node.state, State.REFUSED, code)
            self.assertEqual(node.last_code, code)
            self.assertEqual(node.status()["code"], code)
            self.assertEqual(node.counters[f"fa_refusals_{code}"], 1)
            clock.advance(7.9)
            self.assertEqual(len(sent), 1, code)
            clock.advance(0.1)
            self.assertEqual(len(sent), 2, code)
            self.assertEqual(node.state, State.REGISTERING)
            node.stop()

    def test_transient(self) -> None:
        """66, 78 and 80-88: the retransmissions go on with their backoff."""
        for code in (66, 78, 80, 81, 82, 88):
            sent: list[tuple[float, bytes]] = []
            clock = make_clock()

            def send(d: bytes, c: Clock = clock, out: list[tuple[float, bytes]] = sent) -> None:
                out.append((c.seconds(), d))

            node = MobileNode(SETTINGS, clock=clock, send=send)
            node.set_foreign_agent(FA_LINK)
            node.register(COA_A)
            node.datagram_received(fa_reply(sent[-1][1], code=code, mnha=False), FA_SOURCE)
            self.assertEqual(node.state, State.REGISTERING, code)
            self.assertEqual(node.last_code, code)
            clock.pump([1, 2, 4])
            self.assertEqual([round(t - NOW) for t, _ in sent], [0, 1, 3, 7], code)
            node.datagram_received(fa_reply(sent[-1][1]), FA_SOURCE)
            self.assertEqual(node.state, State.REGISTERED)
            node.stop()

    def test_lifetime_too_long(self) -> None:
        """69: asked again at once with the foreign agent's maximum."""
        self.via()
        self.node.register(COA_A)
        self.clock.advance(0.5)
        self.deliver_fa(
            fa_reply(self.last, code=mip.CODE_FA_LIFETIME_TOO_LONG, lifetime=300, mnha=False)
        )
        self.assertEqual(self.times(), [0, 0.5])
        self.assertViaFA(self.last, lifetime=300)
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.last_code, mip.CODE_FA_LIFETIME_TOO_LONG)
        self.deliver_fa(fa_reply(self.last))
        self.assertEqual(self.node.granted_lifetime, 300)
        # Later requests keep to it.
        self.clock.advance(240)
        self.assertViaFA(self.last, lifetime=300)
        # A 69 that offers no less is not a reason to hurry: the timer goes on.
        self.deliver_fa(
            fa_reply(self.last, code=mip.CODE_FA_LIFETIME_TOO_LONG, lifetime=300, mnha=False)
        )
        self.assertEqual(len(self.sent), 3)
        self.clock.advance(1)
        self.assertEqual(len(self.sent), 4)
        # Going direct again asks for the configured lifetime.
        self.node.set_foreign_agent(None)
        self.node.register(COA_A)
        self.assertEqual(decode_request(self.last).lifetime, 600)

    def test_deregister(self) -> None:
        """Deregistering through the foreign agent: lifetime 0 for its care-of address."""
        self.via()
        self.node.register(COA_A)
        self.deliver_fa(fa_reply(self.last))
        d = self.node.deregister()
        req = self.assertViaFA(self.last, lifetime=0)
        self.assertFalse(req.flag(mip.FLAG_T))
        self.deliver_fa(fa_reply(self.last))
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.node.state, State.UNREGISTERED)
        self.assertIsNone(self.node.registered_via)

    def test_deregister_refused_by_fa(self) -> None:
        self.via()
        self.node.register(COA_A)
        self.deliver_fa(fa_reply(self.last))
        d = self.node.deregister()
        self.deliver_fa(fa_reply(self.last, code=mip.CODE_FA_PROHIBITED, mnha=False))
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.node.state, State.REFUSED)

    def test_go_home_is_direct(self) -> None:
        """At home there is no foreign agent: the deregistration goes to the home agent."""
        self.via()
        self.node.register(COA_A)
        self.deliver_fa(fa_reply(self.last))
        self.node.go_home()
        req = decode_request(self.last)
        self.assertEqual(req.care_of_address, N1.home_address)
        self.assertEqual(req.lifetime, 0)
        self.assertEqual(mip.auth_indices(req.extensions, mip.EXT_MN_FA), [])
        self.assertEqual(self.node.next_hop, HA_ADDR)
        self.deliver(make_reply(self.last))
        self.assertEqual(self.node.state, State.AT_HOME)


# ---------------------------------------------------------------------------
# Joined to a home agent


class LinkedTests(SynchronousTestCase):
    """A mobile node and a home agent joined by a L{FakeLink}."""

    def join(
        self,
        settings: MobileNodeSettings = SETTINGS,
        ha_nodes: Sequence[MobileNodeEntry] = (N1,),
        ha_clock: Clock | None = None,
        mn_clock: Clock | None = None,
        **link: Any,
    ) -> tuple[MobileNode, HomeAgent, FakeLink]:
        self.ha_clock = ha_clock or make_clock()
        self.mn_clock = mn_clock or self.ha_clock
        self.store = MemoryStore()
        ha = make_ha(self.ha_clock, self.store, nodes=ha_nodes)
        self.addCleanup(ha.stop)
        fake = FakeLink(ha, clock=self.mn_clock, **link)
        node = fake.attach(MobileNode(settings, clock=self.mn_clock, send=fake.send))
        self.addCleanup(node.stop)
        return node, ha, fake

    def advance(self, seconds: float) -> None:
        """Move both clocks on together, stopping at every timer on the way.

        L{Clock.advance} runs what is due at the end of the jump, so a call
        scheduled from inside it (a datagram in flight) would land late.
        """
        clocks = {id(c): c for c in (self.ha_clock, self.mn_clock)}.values()
        left = seconds
        while True:
            waits = [d.getTime() - c.seconds() for c in clocks for d in c.getDelayedCalls()]
            step = min([w for w in waits if w > 0] + [left])
            for c in clocks:
                c.advance(step)
            left -= step
            if left <= 1e-9:
                return

    def run_hours(self, node: MobileNode, ha: HomeAgent, hours: float, step: float = 5) -> None:
        """Run the clocks; after every step the home agent holds the node's binding."""
        for _ in range(int(hours * 3600 / step)):
            self.advance(step)
            bs = ha.bindings.get("n1", [])
            self.assertEqual([b.care_of_address for b in bs], [node.care_of])
            self.assertGreater(bs[0].expires, self.ha_clock.seconds())
            self.assertIn(node.state, (State.REGISTERED, State.REGISTERING))

    def test_ten_hours(self) -> None:
        """Lifetime 600, margin 0.8: one exchange every 480 s, the binding never lapses."""
        node, ha, fake = self.join()
        node.register(COA_A)
        self.assertEqual(node.state, State.REGISTERED)
        self.run_hours(node, ha, 10)
        # Sent at 0, 480, ..., 36000.
        self.assertEqual(len(fake.requests), 36000 // 480 + 1)
        self.assertEqual(fake.codes(), [0] * len(fake.requests))
        self.assertEqual(node.counters["retransmissions"], 0)
        self.assertEqual(ha.counters["registrations"], len(fake.requests))
        self.assertEqual(ha.counters["bindings_expired"], 0)

    def test_lifetime_capped_by_ha(self) -> None:
        """The home agent grants 300 of the 600 asked for: every 240 s."""
        node, ha, fake = self.join(ha_nodes=[replace(N1, max_lifetime=300)])
        node.register(COA_A)
        self.assertEqual(node.granted_lifetime, 300)
        self.run_hours(node, ha, 2)
        self.assertEqual(len(fake.requests), 7200 // 240 + 1)
        self.assertEqual(ha.counters["bindings_expired"], 0)

    def test_with_latency(self) -> None:
        """62.5 ms each way: the cycle is 480.125 s, and the binding never lapses."""
        node, ha, fake = self.join(latency=0.0625)
        node.register(COA_A)
        self.assertEqual(node.state, State.REGISTERING)
        self.advance(0.0625)
        self.assertEqual(node.state, State.REGISTERING)
        self.advance(0.0625)
        self.assertEqual(node.state, State.REGISTERED)
        self.run_hours(node, ha, 10)
        # Sent at k * 480.125 s, k = 0 .. 74, within 36000.125 s.
        self.assertEqual(len(fake.requests), 75)
        self.assertEqual(node.counters["retransmissions"], 0)
        self.assertEqual(ha.counters["bindings_expired"], 0)

    def test_clocks_1000_s_apart(self) -> None:
        """The node's clock is 1000 s behind: one 133, a resync, then all is well."""
        node, ha, fake = self.join(mn_clock=make_clock(NOW - 1000))
        node.register(COA_A)
        self.assertEqual(fake.codes(), [mip.CODE_HA_ID_MISMATCH, mip.CODE_ACCEPTED])
        self.assertEqual(node.clock_offset, 1000)
        self.assertEqual(node.state, State.REGISTERED)
        self.run_hours(node, ha, 2)
        self.assertEqual(node.counters["resyncs"], 1)
        self.assertEqual(fake.codes()[2:], [0] * (7200 // 480))

    def test_clock_ahead(self) -> None:
        node, ha, fake = self.join(mn_clock=make_clock(NOW + 1000))
        node.register(COA_A)
        self.assertEqual(fake.codes(), [mip.CODE_HA_ID_MISMATCH, mip.CODE_ACCEPTED])
        self.assertEqual(node.clock_offset, -1000)

    def test_not_newer_waits(self) -> None:
        """A 133 for a timestamp not newer than the last accepted one: no storm.

        The home agent accepted a timestamp 5 s ahead of now before (say the
        node's clock was fast then).  The clocks agree, so there is nothing to
        resynchronise: the node waits for its retransmission timer instead of
        sending again at once, and gets through once its time has passed that.
        """
        node, ha, fake = self.join()
        self.store.set_last_identification("n1", to_ntp(NOW + 5))
        node.register(COA_A)
        self.assertEqual(fake.codes(), [mip.CODE_HA_ID_MISMATCH])
        self.assertEqual(node.state, State.REGISTERING)
        self.assertEqual(node.clock_offset, 0)
        self.advance(7)
        self.assertEqual(fake.codes(), [133, 133, 133, 0])
        self.assertEqual(node.state, State.REGISTERED)
        self.assertEqual(node.counters["resyncs"], 0)

    def test_lost_requests(self) -> None:
        """The first two requests are lost: registered by the third, at 3 s."""
        node, ha, fake = self.join(drop=2)
        node.register(COA_A)
        self.advance(1)
        self.assertEqual(node.state, State.REGISTERING)
        self.advance(2)
        self.assertEqual(node.state, State.REGISTERED)
        self.assertEqual(len(fake.requests), 3)
        self.assertEqual(fake.codes(), [0])
        self.assertEqual(ha.bindings["n1"][0].registered, NOW + 3)

    def test_nat(self) -> None:
        node, ha, fake = self.join(source=(NAT_PUBLIC, 40001))
        node.register(COA_A)
        self.assertTrue(node.nat)
        self.assertEqual(node.keepalive, ha.keepalive_interval)
        b = ha.bindings["n1"][0]
        self.assertTrue(b.nat)
        self.assertEqual((b.source_host, b.source_port), (NAT_PUBLIC, 40001))

    def test_no_nat(self) -> None:
        node, ha, fake = self.join()
        node.register(COA_A)
        self.assertFalse(node.nat)
        self.assertFalse(ha.bindings["n1"][0].nat)

    def test_roam_and_go_home(self) -> None:
        node, ha, fake = self.join()
        node.register(COA_A)
        self.advance(100)
        fake.source = (str(COA_B), 434)
        node.register(COA_B)
        self.assertEqual([b.care_of_address for b in ha.bindings["n1"]], [COA_B])
        self.advance(100)
        node.go_home()
        self.assertEqual(node.state, State.AT_HOME)
        self.assertNotIn("n1", ha.bindings)
        self.assertEqual(self.store.load_bindings(), [])
        self.advance(3600)
        self.assertEqual(len(fake.requests), 3)

    def test_deregister(self) -> None:
        node, ha, fake = self.join()
        node.register(COA_A)
        self.advance(100)
        d = node.deregister()
        self.assertIs(self.successResultOf(d), True)
        self.assertNotIn("n1", ha.bindings)
        self.assertEqual(node.state, State.UNREGISTERED)

    def test_wrong_key(self) -> None:
        """A node with the wrong key gets unsigned 131s and keeps trying; nothing binds."""
        node, ha, fake = self.join(settings=replace(SETTINGS, key=WRONG_KEY))
        node.register(COA_A)
        self.advance(20)
        self.assertEqual(node.state, State.REGISTERING)
        self.assertEqual(node.status()["unverified_code"], mip.CODE_HA_MN_AUTH_FAILED)
        self.assertEqual(set(fake.codes()), {mip.CODE_HA_MN_AUTH_FAILED})
        self.assertEqual(ha.bindings, {})


class TunnelAddressTests(SynchronousTestCase):
    """Through a VPN gateway (RFC 5265) the co-located care-of address is the inner one."""

    def test_request_names_tunnel_address(self) -> None:
        from ipaddress import IPv4Address

        from twisted.internet.task import Clock

        from smobility.engines.mobilenode import MobileNode, MobileNodeSettings
        from smobility.wire import mip

        sent: list[bytes] = []
        node = MobileNode(
            MobileNodeSettings(
                name="laptop", home_address=IPv4Address("10.77.0.10"),
                home_agent=IPv4Address("172.31.0.2"), spi=1000, key=b"k" * 16,
            ),
            clock=Clock(), send=sent.append,
        )  # fmt: skip
        node.register(IPv4Address("192.168.105.120"))
        req = mip.decode(sent[-1])
        assert isinstance(req, mip.RegistrationRequest)
        self.assertEqual(req.care_of_address, IPv4Address("192.168.105.120"))
        node.set_tunnel_address(IPv4Address("10.78.0.1"))
        node.register(IPv4Address("192.168.105.120"))
        req = mip.decode(sent[-1])
        assert isinstance(req, mip.RegistrationRequest)
        self.assertEqual(req.care_of_address, IPv4Address("10.78.0.1"))
        self.assertTrue(req.flags & mip.FLAG_D)
        self.assertEqual(node.care_of, IPv4Address("192.168.105.120"))
        self.assertEqual(node.status()["tunnel_address"], "10.78.0.1")
        node.set_tunnel_address(None)
        node.register(IPv4Address("192.168.105.120"))
        req = mip.decode(sent[-1])
        assert isinstance(req, mip.RegistrationRequest)
        self.assertEqual(req.care_of_address, IPv4Address("192.168.105.120"))
        node.stop()
