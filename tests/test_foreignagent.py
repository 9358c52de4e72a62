# -*- test-case-name: tests.test_foreignagent -*-
"""Tests for L{smobility.engines.foreignagent} (RFC 5944 section 3.7, RFC 3024).

Alone, the foreign agent's two outputs (towards home agents and towards
mobile nodes) are captured, requests are built by hand with the wire codec
(so the bad ones can be built too) and so are the home agents' replies.
Joined, a L{MobileNode}, the L{ForeignAgent} and a real L{HomeAgent} with an
in-memory store pass their datagrams to each other in memory while a
L{task.Clock} runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines.bindings import MemoryStore
from smobility.engines.foreignagent import (
    MAX_PENDING_PER_NODE,
    ForeignAgent,
    HomeAgentPeer,
    Visitor,
    VisitorKey,
)
from smobility.engines.homeagent import HomeAgent, MobileNodeEntry
from smobility.engines.mobilenode import ForeignAgentLink, MobileNode, State
from smobility.wire import mip
from smobility.wire.ntp import ntp_seconds, to_ntp
from tests.test_homeagent import (
    COA_A,
    FA,
    HA_ADDR,
    HA_ADDR2,
    N1,
    N2,
    N3,
    NOW,
    WRONG_KEY,
    build_request,
    fa_signed,
    make_clock,
    make_ha,
    signed_by,
)
from tests.test_mobilenode import SETTINGS

FA_ADDR = FA.address
HA_PEER = HomeAgentPeer(HA_ADDR, FA.spi, FA.key)
HA2_KEY = bytes.fromhex("0badc0de0badc0de0badc0de0badc0de")
HA2_PEER = HomeAgentPeer(HA_ADDR2, 2001, HA2_KEY)

MNFA_KEY1 = bytes.fromhex("5a5a5a5a0102030405060708090a0b0c")
MNFA_KEY2 = bytes.fromhex("a5a5a5a50102030405060708090a0b0c")
MNFA_KEY3 = bytes.fromhex("3c3c3c3c0102030405060708090a0b0c")
V1 = VisitorKey(name="n1", home_address=N1.home_address, nai=None, spi=3000, key=MNFA_KEY1)
V2 = VisitorKey(name="n2", home_address=N2.home_address, nai=None, spi=3001, key=MNFA_KEY2)
#: Known by NAI only, HMAC-SHA256.
V3 = VisitorKey(
    name="n3",
    home_address=None,
    nai="n3@example.org",
    spi=3002,
    key=MNFA_KEY3,
    algorithm="hmac-sha256",
)
VISITOR_KEYS = (V1, V2, V3)
KEYS = (FA.key, HA2_KEY, MNFA_KEY1, MNFA_KEY2, MNFA_KEY3, N1.key, N2.key, N3.key)

MN_SRC = ("203.0.113.50", 40001)
MN_SRC2 = ("203.0.113.51", 40002)
NAI3 = mip.NAIExtension(b"n3@example.org")
UNKNOWN_HOA = IPv4Address("10.10.0.99")


def mn_request(
    node: MobileNodeEntry,
    clock: Clock,
    vkey: VisitorKey | None = V1,
    *,
    mnfa: bool = True,
    mnfa_key: bytes | None = None,
    mnfa_spi: int | None = None,
    between: Sequence[mip.Extension] = (),
    after: Sequence[mip.Extension] = (),
    **kwargs: Any,
) -> bytes:
    """A request of C{node} to the relay: care-of = the relay, 'T' set, MN-HA, C{between}, MN-FA.

    C{after} comes after the MN-FA extension (outside what it protects).
    """
    kwargs.setdefault("coa", FA_ADDR)
    kwargs.setdefault("flags", mip.FLAG_T)
    data = build_request(node, clock, after=between, **kwargs)
    if mnfa:
        assert vkey is not None
        data = mip.append_authenticator(
            data,
            mip.EXT_MN_FA,
            vkey.spi if mnfa_spi is None else mnfa_spi,
            vkey.key if mnfa_key is None else mnfa_key,
            vkey.algorithm,
        )
    return data + b"".join(mip.encode_extension(e) for e in after)


def decode_request(data: bytes) -> mip.RegistrationRequest:
    msg = mip.decode(data)
    assert isinstance(msg, mip.RegistrationRequest)
    return msg


def decode_reply(data: bytes) -> mip.RegistrationReply:
    msg = mip.decode(data)
    assert isinstance(msg, mip.RegistrationReply)
    return msg


def home_reply(
    request: bytes,
    node: MobileNodeEntry = N1,
    *,
    code: int = mip.CODE_ACCEPTED,
    lifetime: int | None = None,
    identification: int | None = None,
    home_address: IPv4Address | None = None,
    before: Sequence[mip.Extension] = (),
    mnha: bool = True,
    between: Sequence[mip.Extension] = (),
    fa_key: bytes | None = FA.key,
    fa_spi: int = FA.spi,
    after: Sequence[mip.Extension] = (),
) -> bytes:
    """A home agent's reply to the relayed C{request}: C{before}, MN-HA, C{between}, FA-HA."""
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
            extensions=tuple(before),
        )
    )
    if mnha:
        data = mip.append_authenticator(data, mip.EXT_MN_HA, node.spi, node.key, node.algorithm)
    data += b"".join(mip.encode_extension(e) for e in between)
    if fa_key is not None:
        data = mip.append_authenticator(data, mip.EXT_FA_HA, fa_spi, fa_key)
    return data + b"".join(mip.encode_extension(e) for e in after)


def mnfa_valid(reply: mip.RegistrationReply, vkey: VisitorKey) -> bool:
    """Whether C{reply} ends with exactly one valid MN-FA extension of C{vkey}."""
    found = mip.auth_indices(reply.extensions, mip.EXT_MN_FA)
    if len(found) != 1 or found[0] != len(reply.extensions) - 1:
        return False
    ext = reply.extensions[found[0]]
    assert isinstance(ext, mip.AuthExtension)
    return ext.spi == vkey.spi and mip.verify_authenticator(
        reply, found[0], vkey.key, vkey.algorithm
    )


def make_fa(
    clock: Clock,
    home: list[tuple[bytes, IPv4Address]],
    mobile: list[tuple[bytes, tuple[str, int]]],
    **kwargs: Any,
) -> ForeignAgent:
    """A relay at L{FA_ADDR} serving L{VISITOR_KEYS} towards L{HA_PEER} and L{HA2_PEER}."""
    kwargs.setdefault("home_agents", [HA_PEER, HA2_PEER])
    kwargs.setdefault("visitors", VISITOR_KEYS)
    kwargs.setdefault("denial_interval", 0.0)
    return ForeignAgent(
        care_of_address=FA_ADDR,
        clock=clock,
        send_home=lambda d, a: home.append((d, a)),
        send_mobile=lambda d, s: mobile.append((d, s)),
        **kwargs,
    )


class _Base(SynchronousTestCase):
    """A relay on a clock; what it sends either way is captured."""

    fa_kwargs: dict[str, Any] = {}

    def setUp(self) -> None:
        self.clock = make_clock()
        self.home: list[tuple[bytes, IPv4Address]] = []
        self.mobile: list[tuple[bytes, tuple[str, int]]] = []
        self.fa = make_fa(self.clock, self.home, self.mobile, **self.fa_kwargs)
        self.logged: list[dict[str, Any]] = []
        self.fa.log = Logger(observer=cast(ILogObserver, self.logged.append))
        self.changes: list[tuple[str, bool]] = []
        self.seen: list[Visitor] = []
        self.fa.add_listener(self._listener)
        self.addCleanup(self.fa.stop)
        self.addCleanup(self.assertNoKeysLogged)

    def _listener(self, visitor: Visitor, present: bool) -> None:
        self.changes.append((visitor.name, present))
        self.seen.append(visitor)

    def assertNoKeysLogged(self) -> None:
        """No log event, formatted or raw, holds any key."""
        for event in self.logged:
            text = formatEvent(event) + repr(event)
            for key in KEYS:
                self.assertNotIn(key.hex(), text)
                self.assertNotIn(repr(key), text)

    def request(self, data: bytes, source: tuple[str, int] = MN_SRC) -> None:
        self.fa.from_mobile(data, source)

    def forwarded(self) -> bytes:
        """The one datagram relayed to a home agent, which must be L{HA_ADDR}."""
        self.assertEqual(len(self.home), 1, "expected exactly one relayed request")
        data, ha = self.home[0]
        self.assertEqual(ha, HA_ADDR)
        return data

    def last_reply(self, source: tuple[str, int] = MN_SRC) -> mip.RegistrationReply:
        self.assertTrue(self.mobile, "nothing was sent to the mobile node")
        data, dest = self.mobile[-1]
        self.assertEqual(dest, source)
        return decode_reply(data)

    def register(
        self,
        node: MobileNodeEntry = N1,
        vkey: VisitorKey = V1,
        source: tuple[str, int] = MN_SRC,
        **kwargs: Any,
    ) -> bytes:
        """A request relayed and accepted; return the request the node sent."""
        reply_kwargs = {k: kwargs.pop(k) for k in ("granted", "reply_before") if k in kwargs}
        data = mn_request(node, self.clock, vkey, **kwargs)
        sent = len(self.home)
        self.request(data, source)
        self.assertEqual(len(self.home), sent + 1, "not relayed")
        relayed = self.home[-1][0]
        self.fa.from_home(
            home_reply(
                relayed,
                node,
                lifetime=reply_kwargs.get("granted"),
                before=reply_kwargs.get("reply_before", ()),
            ),
            HA_ADDR,
        )
        return data

    def assertDenied(
        self,
        code: int,
        request: bytes,
        *,
        vkey: VisitorKey | None = V1,
        lifetime: int | None = None,
        source: tuple[str, int] = MN_SRC,
    ) -> mip.RegistrationReply:
        """The last datagram to C{source} refuses C{request} with C{code}, signed for C{vkey}."""
        reply = self.last_reply(source)
        req = decode_request(request)
        self.assertEqual(reply.code, code, mip.REPLY_CODE_NAMES.get(reply.code))
        self.assertFalse(reply.accepted)
        self.assertEqual(reply.home_address, req.home_address)
        self.assertEqual(reply.home_agent, req.home_agent)
        self.assertEqual(reply.identification, req.identification)
        self.assertEqual(reply.lifetime, req.lifetime if lifetime is None else lifetime)
        self.assertIsNone(mip.find_auth(reply.extensions, mip.EXT_MN_HA))
        self.assertEqual(mip.auth_indices(reply.extensions, mip.EXT_FA_HA), [])
        if vkey is None:
            self.assertEqual(mip.auth_indices(reply.extensions, mip.EXT_MN_FA), [])
        else:
            self.assertTrue(mnfa_valid(reply, vkey), "the refusal should carry a valid MN-FA")
        self.assertGreaterEqual(self.fa.counters[f"denied_{code}"], 1)
        return reply


# ---------------------------------------------------------------------------
# Configuration


class ConfigurationTests(SynchronousTestCase):
    """The security associations hide their keys and are checked when made."""

    def test_reprs_hide_keys(self) -> None:
        for value, key in ((HA_PEER, FA.key), (V1, MNFA_KEY1), (V3, MNFA_KEY3)):
            self.assertNotIn(key.hex(), repr(value))
            self.assertNotIn(repr(key), repr(value))
        self.assertIn(str(HA_ADDR), repr(HA_PEER))
        self.assertIn("n3@example.org", repr(V3))

    def test_positional_peer(self) -> None:
        """The relay service builds peers positionally: address, SPI, key, algorithm."""
        peer = HomeAgentPeer(HA_ADDR, 7, b"k", "hmac-sha256")
        self.assertEqual((peer.address, peer.spi, peer.algorithm), (HA_ADDR, 7, "hmac-sha256"))
        self.assertEqual(HomeAgentPeer("192.0.2.1", 7, b"k").address, HA_ADDR)  # type: ignore[arg-type]

    def test_bad_values(self) -> None:
        self.assertRaises(ValueError, HomeAgentPeer, HA_ADDR, 1, b"k", "md5")
        self.assertRaises(ValueError, HomeAgentPeer, HA_ADDR, 1, b"")
        self.assertRaises(ValueError, HomeAgentPeer, HA_ADDR, -1, b"k")
        self.assertRaises(ValueError, VisitorKey, "x", None, None, 1, b"k")
        clock = make_clock()
        for kwargs in (
            {"reverse_tunnel": "sometimes"},
            {"max_lifetime": 0},
            {"max_lifetime": 0xFFFF},
            {"pending_timeout": 0},
            {"max_pending": 0},
            {"max_visitors": 0},
        ):
            self.assertRaises(ValueError, make_fa, clock, [], [], **kwargs)


# ---------------------------------------------------------------------------
# Relaying


class ForwardTests(_Base):
    """A valid request is relayed as RFC 5944 section 3.7.2.2 says."""

    def test_forwarded(self) -> None:
        skip = mip.UnknownExtension(200, b"for the relay")
        data = mn_request(N1, self.clock, between=[skip])
        self.request(data)
        out = self.forwarded()
        req = decode_request(data)
        mnha = mip.find_auth(req.extensions, mip.EXT_MN_HA)
        assert mnha is not None
        head = mip.through_extension(req, mnha)
        # Up to and including MN-HA: byte for byte.
        self.assertTrue(out.startswith(head))
        relayed = decode_request(out)
        # What followed MN-HA (the skippable extension, MN-FA) is gone; FA-HA is last.
        self.assertEqual(mip.auth_indices(relayed.extensions, mip.EXT_MN_FA), [])
        self.assertNotIn(skip, relayed.extensions)
        self.assertEqual(len(relayed.extensions), mnha + 2)
        faha = relayed.extensions[-1]
        assert isinstance(faha, mip.AuthExtension)
        self.assertEqual((faha.type, faha.spi), (mip.EXT_FA_HA, FA.spi))
        self.assertTrue(mip.verify_authenticator(relayed, mnha + 1, FA.key, "hmac-md5"))
        self.assertTrue(mip.verify_authenticator(relayed, mnha, N1.key, N1.algorithm))
        self.assertEqual(len(out), len(head) + 2 + 4 + 16)
        # Nothing went back to the node yet; a pending entry waits.
        self.assertEqual(self.mobile, [])
        self.assertEqual(len(self.fa.pending), 1)
        (pending,) = self.fa.pending.values()
        self.assertEqual(pending.home_address, N1.home_address)
        self.assertEqual(pending.identification, req.identification)
        self.assertEqual(pending.source, MN_SRC)
        self.assertEqual(pending.home_agent, HA_ADDR)
        self.assertTrue(pending.proved)
        self.assertEqual(self.fa.counters["forwarded"], 1)
        self.assertEqual(self.fa.visitors, {})

    def test_nai_and_tunnel_request_kept(self) -> None:
        """What the node put before MN-HA stays; the home agent checks it."""
        exts = [NAI3, mip.UDPTunnelRequest(force=True)]
        data = mn_request(N3, self.clock, V3, home_address=IPv4Address(0), extensions=exts)
        self.request(data)
        relayed = decode_request(self.forwarded())
        self.assertEqual(list(relayed.extensions[:2]), exts)
        self.assertEqual(relayed.home_address, IPv4Address(0))

    def test_second_home_agent(self) -> None:
        self.request(mn_request(N1, self.clock, home_agent=HA_ADDR2))
        data, ha = self.home[0]
        self.assertEqual(ha, HA_ADDR2)
        relayed = decode_request(data)
        self.assertTrue(
            mip.verify_authenticator(relayed, len(relayed.extensions) - 1, HA2_KEY, "hmac-md5")
        )
        ext = relayed.extensions[-1]
        assert isinstance(ext, mip.AuthExtension)
        self.assertEqual(ext.spi, HA2_PEER.spi)

    def test_deregistration_relayed(self) -> None:
        """A node's own deregistration is relayed (RFC 5944 section 3.7)."""
        self.register()
        self.home.clear()
        self.request(mn_request(N1, self.clock, lifetime=0, flags=0))
        self.assertEqual(decode_request(self.forwarded()).lifetime, 0)
        # The visitor stays until the home agent confirms.
        self.assertIn(N1.home_address, self.fa.visitors)

    def test_colocated(self) -> None:
        """'D' set: the node's own care-of address, relayed as it is."""
        data = mn_request(N1, self.clock, coa=COA_A, flags=mip.FLAG_D | mip.FLAG_T)
        self.request(data)
        relayed = decode_request(self.forwarded())
        self.assertEqual(relayed.care_of_address, COA_A)
        self.fa.from_home(home_reply(self.home[0][0]), HA_ADDR)
        visitor = self.fa.visitors[N1.home_address]
        self.assertTrue(visitor.colocated)
        self.assertTrue(visitor.reverse_tunnel)
        self.assertEqual(visitor.care_of_address, COA_A)

    def test_duplicate(self) -> None:
        """The same datagram twice while it is pending is relayed once."""
        data = mn_request(N1, self.clock)
        self.request(data)
        self.request(data)
        self.assertEqual(len(self.home), 1)
        self.assertEqual(self.fa.counters["dropped_duplicate"], 1)

    def test_retransmissions_bounded_per_node(self) -> None:
        """A node's own retransmissions push out its oldest pending request."""
        for _ in range(MAX_PENDING_PER_NODE + 3):
            self.request(mn_request(N1, self.clock))
            self.clock.advance(0.1)
        self.assertEqual(len(self.home), MAX_PENDING_PER_NODE + 3)
        self.assertEqual(len(self.fa.pending), MAX_PENDING_PER_NODE)
        self.assertEqual(self.fa.counters["pending_evicted"], 3)
        # The evicted ones never time out into a 78.
        self.clock.advance(10)
        self.assertEqual(self.fa.counters["denied_78"], MAX_PENDING_PER_NODE)


class ReplyTests(_Base):
    """Replies from the home agent are relayed as RFC 5944 section 3.7.3.2 says."""

    def test_relayed(self) -> None:
        data = mn_request(N1, self.clock, lifetime=300)
        self.request(data)
        relayed = self.forwarded()
        tunnel = mip.UDPTunnelReply(code=1)
        skip = mip.UnknownExtension(201, b"for the relay")
        answer = home_reply(relayed, before=[tunnel], between=[skip])
        self.fa.from_home(answer, HA_ADDR)
        out, dest = self.mobile[-1]
        self.assertEqual(dest, MN_SRC)
        ha_msg = decode_reply(answer)
        mnha = mip.find_auth(ha_msg.extensions, mip.EXT_MN_HA)
        assert mnha is not None
        head = mip.through_extension(ha_msg, mnha)
        self.assertTrue(out.startswith(head))
        reply = decode_reply(out)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(signed_by(reply, N1))
        self.assertTrue(mnfa_valid(reply, V1))
        self.assertEqual(mip.auth_indices(reply.extensions, mip.EXT_FA_HA), [])
        self.assertNotIn(skip, reply.extensions)
        self.assertIn(tunnel, reply.extensions)
        self.assertEqual(len(reply.extensions), mnha + 2)
        # The visitor list entry (RFC 5944 section 3.7.1).
        visitor = self.fa.visitors[N1.home_address]
        self.assertEqual(visitor.name, "n1")
        self.assertEqual(visitor.source, MN_SRC)
        self.assertEqual(visitor.home_agent, HA_ADDR)
        self.assertEqual(visitor.identification, decode_request(data).identification)
        self.assertEqual((visitor.lifetime, visitor.registered), (300, NOW))
        self.assertEqual(visitor.expires, NOW + 300)
        self.assertEqual(visitor.care_of_address, FA_ADDR)
        self.assertTrue(visitor.reverse_tunnel)
        self.assertFalse(visitor.colocated)
        self.assertEqual(self.changes, [("n1", True)])
        self.assertEqual(self.fa.pending, {})
        self.assertEqual(self.fa.counters["replies_relayed"], 1)
        # The pending timer went with it.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_low_32_bits(self) -> None:
        """A 133 carries the home agent's time in the high bits: matched on the low 32."""
        self.request(mn_request(N1, self.clock))
        relayed = self.forwarded()
        ident = decode_request(relayed).identification
        theirs = (ntp_seconds(to_ntp(NOW + 1000)) << 32) | (ident & 0xFFFFFFFF)
        self.fa.from_home(
            home_reply(relayed, code=mip.CODE_HA_ID_MISMATCH, identification=theirs), HA_ADDR
        )
        reply = self.last_reply()
        self.assertEqual(reply.code, mip.CODE_HA_ID_MISMATCH)
        self.assertEqual(reply.identification, theirs)
        self.assertTrue(signed_by(reply, N1))
        self.assertTrue(mnfa_valid(reply, V1))
        self.assertEqual(self.fa.visitors, {})

    def test_unmatched(self) -> None:
        """Replies matching no pending request, or from another agent, are dropped."""
        self.request(mn_request(N1, self.clock))
        relayed = self.forwarded()
        ident = decode_request(relayed).identification
        self.fa.from_home(home_reply(relayed, identification=ident ^ 1), HA_ADDR)
        self.fa.from_home(home_reply(relayed, home_address=N2.home_address, node=N2), HA_ADDR)
        self.fa.from_home(home_reply(relayed, fa_key=HA2_KEY, fa_spi=HA2_PEER.spi), HA_ADDR2)
        self.assertEqual(self.fa.counters["dropped_unmatched"], 3)
        self.fa.from_home(home_reply(relayed), IPv4Address("192.0.2.77"))
        self.assertEqual(self.fa.counters["dropped_unknown_home_agent"], 1)
        self.assertEqual(self.mobile, [])
        self.assertEqual(len(self.fa.pending), 1)
        # The genuine one still goes through, once.
        self.fa.from_home(home_reply(relayed), HA_ADDR)
        self.fa.from_home(home_reply(relayed), HA_ADDR)
        self.assertEqual(len(self.mobile), 1)
        self.assertEqual(self.fa.counters["dropped_unmatched"], 4)

    def test_refused_keeps_visitor(self) -> None:
        """A refusal is relayed and leaves the existing entry as it was."""
        self.register(source=MN_SRC)
        before = replace(self.fa.visitors[N1.home_address])
        self.clock.advance(10)
        self.request(mn_request(N1, self.clock), MN_SRC2)
        self.fa.from_home(home_reply(self.home[-1][0], code=mip.CODE_HA_PROHIBITED), HA_ADDR)
        reply = self.last_reply(MN_SRC2)
        self.assertEqual(reply.code, mip.CODE_HA_PROHIBITED)
        self.assertTrue(signed_by(reply, N1))
        self.assertTrue(mnfa_valid(reply, V1))
        self.assertEqual(self.fa.visitors[N1.home_address], before)
        self.assertEqual(self.changes, [("n1", True)])
        self.assertEqual(self.fa.counters["relayed_denial_129"], 1)

    def test_refresh_and_move(self) -> None:
        """A later accepted request refreshes the entry and takes its source."""
        self.register(lifetime=100)
        self.clock.advance(50)
        self.register(source=MN_SRC2, lifetime=100)
        visitor = self.fa.visitors[N1.home_address]
        self.assertEqual(visitor.source, MN_SRC2)
        self.assertEqual(visitor.expires, NOW + 150)
        self.assertEqual(self.changes, [("n1", True), ("n1", True)])
        self.assertEqual(self.seen[-1].source, MN_SRC2)

    def test_deregistration_removes(self) -> None:
        self.register()
        self.request(mn_request(N1, self.clock, lifetime=0, flags=0))
        self.fa.from_home(home_reply(self.home[-1][0]), HA_ADDR)
        self.assertEqual(self.last_reply().code, mip.CODE_ACCEPTED)
        self.assertEqual(self.fa.visitors, {})
        self.assertEqual(self.changes, [("n1", True), ("n1", False)])
        self.assertEqual(self.fa.counters["visitors_deregistered"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lifetime_capped(self) -> None:
        """A home agent granting more than the relay's maximum: the entry keeps to the maximum."""
        self.register(granted=5000)
        self.assertEqual(self.fa.visitors[N1.home_address].lifetime, 600)
        # The node still hears what its home agent said (MN-HA covers it).
        self.assertEqual(self.last_reply().lifetime, 5000)

    def test_nai_node(self) -> None:
        """A node known by NAI asking with 0.0.0.0; its home agent names its address."""
        data = mn_request(N3, self.clock, V3, home_address=IPv4Address(0), extensions=[NAI3])
        self.request(data)
        relayed = self.forwarded()
        self.fa.from_home(
            home_reply(relayed, N3, home_address=N3.home_address, before=[NAI3]), HA_ADDR
        )
        reply = self.last_reply()
        self.assertTrue(reply.accepted)
        self.assertTrue(mnfa_valid(reply, V3))
        self.assertEqual(self.fa.visitors[N3.home_address].name, "n3")

    def test_nai_node_without_address(self) -> None:
        """Accepted but no address named: relayed, with no entry to key it by."""
        data = mn_request(N3, self.clock, V3, home_address=IPv4Address(0), extensions=[NAI3])
        self.request(data)
        self.fa.from_home(home_reply(self.forwarded(), N3, before=[NAI3]), HA_ADDR)
        self.assertTrue(self.last_reply().accepted)
        self.assertEqual(self.fa.visitors, {})
        self.assertEqual(self.fa.counters["accepted_without_address"], 1)


# ---------------------------------------------------------------------------
# Every foreign agent code


class AuthenticationTests(_Base):
    """67: the MN-FA check comes first, the refusal is unsigned, nothing is relayed."""

    def check(self, data: bytes, vkey_for_reply: VisitorKey | None = None) -> None:
        self.request(data)
        self.assertDenied(mip.CODE_FA_MN_AUTH_FAILED, data, vkey=vkey_for_reply)
        self.assertEqual(self.home, [])
        self.assertEqual(self.fa.pending, {})
        self.assertEqual(self.fa.visitors, {})

    def test_missing(self) -> None:
        self.check(mn_request(N1, self.clock, mnfa=False))

    def test_wrong_key(self) -> None:
        self.check(mn_request(N1, self.clock, mnfa_key=WRONG_KEY))

    def test_wrong_spi(self) -> None:
        self.check(mn_request(N1, self.clock, mnfa_spi=V1.spi + 1))

    def test_other_nodes_association(self) -> None:
        """n2's valid SPI and key do not speak for n1's home address."""
        self.check(mn_request(N1, self.clock, V2))

    def test_unknown_node(self) -> None:
        self.check(mn_request(N1, self.clock, home_address=UNKNOWN_HOA))

    def test_two_mn_fa(self) -> None:
        data = mn_request(N1, self.clock)
        self.check(mip.append_authenticator(data, mip.EXT_MN_FA, V1.spi, V1.key))

    def test_tampered(self) -> None:
        """One byte changed anywhere the MN-FA covers."""
        data = bytearray(mn_request(N1, self.clock))
        data[2:4] = (100).to_bytes(2, "big")  # the lifetime
        self.check(bytes(data))

    def test_authentication_first(self) -> None:
        """A forged request gets 67 whatever else is wrong with it, and nothing is relayed."""
        cases: list[dict[str, Any]] = [
            {"flags": mip.FLAG_M},
            {"flags": mip.FLAG_R},
            {"home_agent": IPv4Address("192.0.2.99")},
            {"coa": COA_A},
            {"lifetime": 0xFFFF},
            {"extensions": [mip.UnknownExtension(100, b"x")]},
        ]
        for kwargs in cases:
            data = mn_request(N1, self.clock, mnfa_key=WRONG_KEY, **kwargs)
            self.request(data)
            self.assertDenied(mip.CODE_FA_MN_AUTH_FAILED, data, vkey=None)
        self.assertEqual(self.home, [])
        self.assertEqual(self.fa.counters["denied_67"], len(cases))

    def test_constant_time(self) -> None:
        """The MN-FA authenticator is compared with hmac.compare_digest."""
        import hmac

        calls: list[int] = []
        real = hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            calls.append(1)
            return real(a, b)

        self.patch(hmac, "compare_digest", spy)
        self.request(mn_request(N1, self.clock, mnfa_key=WRONG_KEY))
        self.assertEqual(len(calls), 1)

    def test_forged_then_genuine(self) -> None:
        """Forgeries do not stand in the way of the node's own request."""
        self.request(mn_request(N1, self.clock, mnfa_key=WRONG_KEY))
        self.request(mn_request(N1, self.clock))
        self.assertEqual(len(self.home), 1)


class AuthorizeHookTests(_Base):
    """Clients proven otherwise (an IKE SA with the relay) may leave MN-FA out."""

    def setUp(self) -> None:
        self.calls: list[tuple[tuple[str, int], IPv4Address]] = []
        self.allowed = {MN_SRC}
        self.fa_kwargs = {"authorize": self.hook}
        super().setUp()

    def hook(self, source: tuple[str, int], home_address: IPv4Address) -> bool:
        self.calls.append((source, home_address))
        return source in self.allowed

    def test_allowed_without_mn_fa(self) -> None:
        self.request(mn_request(N1, self.clock, mnfa=False))
        self.assertEqual(self.calls, [(MN_SRC, N1.home_address)])
        relayed = decode_request(self.forwarded())
        self.assertEqual(mip.auth_indices(relayed.extensions, mip.EXT_FA_HA), [1])
        self.assertFalse(next(iter(self.fa.pending.values())).proved)
        self.fa.from_home(home_reply(self.home[0][0]), HA_ADDR)
        # We share an association with n1, so the reply is signed for it all the same.
        self.assertTrue(mnfa_valid(self.last_reply(), V1))

    def test_allowed_without_association(self) -> None:
        """A node the relay has no key for: relayed; replies carry no MN-FA."""
        data = mn_request(N1, self.clock, mnfa=False, home_address=UNKNOWN_HOA)
        self.request(data)
        relayed = self.forwarded()
        self.fa.from_home(home_reply(relayed, home_address=UNKNOWN_HOA), HA_ADDR)
        reply = self.last_reply()
        self.assertEqual(mip.auth_indices(reply.extensions, mip.EXT_MN_FA), [])
        self.assertEqual(self.fa.visitors[UNKNOWN_HOA].name, str(UNKNOWN_HOA))
        # Its refusals are unsigned too.
        bad = mn_request(N1, self.clock, mnfa=False, home_address=UNKNOWN_HOA, coa=COA_A)
        self.request(bad)
        self.assertDenied(mip.CODE_FA_INVALID_COA, bad, vkey=None)

    def test_refused(self) -> None:
        data = mn_request(N1, self.clock, mnfa=False)
        self.request(data, MN_SRC2)
        self.assertDenied(mip.CODE_FA_MN_AUTH_FAILED, data, vkey=None, source=MN_SRC2)
        self.assertEqual(self.home, [])

    def test_bad_mn_fa_not_excused(self) -> None:
        """A present but invalid MN-FA fails even for an allowed source."""
        data = mn_request(N1, self.clock, mnfa_key=WRONG_KEY)
        self.request(data)
        self.assertDenied(mip.CODE_FA_MN_AUTH_FAILED, data, vkey=None)
        self.assertEqual(self.calls, [])

    def test_hook_failure(self) -> None:
        def broken(source: tuple[str, int], home_address: IPv4Address) -> bool:
            raise RuntimeError("boom")

        self.fa.authorize = broken
        data = mn_request(N1, self.clock, mnfa=False)
        self.request(data)
        self.assertDenied(mip.CODE_FA_MN_AUTH_FAILED, data, vkey=None)
        self.assertEqual(self.fa.counters["authorize_errors"], 1)
        self.flushLoggedErrors(RuntimeError)


class RefusalTests(_Base):
    """The other codes, each signed with MN-FA, nothing relayed, nothing kept."""

    fa_kwargs = {"max_lifetime": 600}

    def refused(self, code: int, reply_lifetime: int | None = None, **kwargs: Any) -> None:
        data = mn_request(N1, self.clock, **kwargs)
        self.request(data)
        self.assertDenied(code, data, lifetime=reply_lifetime)
        self.assertEqual(self.home, [], mip.REPLY_CODE_NAMES.get(code))
        self.assertEqual(self.fa.pending, {})
        self.assertEqual(self.fa.visitors, {})

    def test_65_unknown_home_agent(self) -> None:
        """Never an open relay: only configured home agents."""
        for ha in (IPv4Address("192.0.2.99"), IPv4Address(0), FA_ADDR):
            self.refused(mip.CODE_FA_PROHIBITED, home_agent=ha)
        self.assertEqual(self.fa.counters["denied_65"], 3)

    def test_69_lifetime(self) -> None:
        """The reply names the longest lifetime the relay accepts."""
        for lifetime in (601, 0xFFFF):
            self.refused(mip.CODE_FA_LIFETIME_TOO_LONG, reply_lifetime=600, lifetime=lifetime)
        # The maximum itself is fine.
        self.request(mn_request(N1, self.clock, lifetime=600))
        self.forwarded()

    def test_70_poorly_formed(self) -> None:
        cases: list[dict[str, Any]] = [
            {"extensions": [mip.UnknownExtension(100, b"abc")]},
            {"between": [mip.UnknownExtension(127, b"")]},
            {"between": [mip.AuthExtension(mip.EXT_FA_HA, 1, b"x")]},
            {"flags": mip.FLAG_D, "coa": IPv4Address(0)},
        ]
        for kwargs in cases:
            self.refused(mip.CODE_FA_POORLY_FORMED_REQUEST, **kwargs)

    def test_70_mn_ha(self) -> None:
        """No MN-HA, two, or MN-FA placed before it."""
        fixed = mip.encode(
            mip.RegistrationRequest(
                mip.FLAG_T, 600, N1.home_address, HA_ADDR, FA_ADDR, to_ntp(NOW) + 5
            )
        )
        none = mip.append_authenticator(fixed, mip.EXT_MN_FA, V1.spi, V1.key)
        early = mip.append_authenticator(none, mip.EXT_MN_HA, N1.spi, N1.key)
        double = mip.append_authenticator(early, mip.EXT_MN_FA, V1.spi, V1.key)
        twice = mip.append_authenticator(
            mip.append_authenticator(fixed, mip.EXT_MN_HA, N1.spi, N1.key),
            mip.EXT_MN_HA,
            N1.spi,
            N1.key,
        )
        twice = mip.append_authenticator(twice, mip.EXT_MN_FA, V1.spi, V1.key)
        self.request(none)
        self.assertDenied(mip.CODE_FA_POORLY_FORMED_REQUEST, none)
        self.request(twice)
        self.assertDenied(mip.CODE_FA_POORLY_FORMED_REQUEST, twice)
        self.request(early)
        self.assertDenied(mip.CODE_FA_POORLY_FORMED_REQUEST, early)
        self.request(double, MN_SRC2)
        # Two MN-FA extensions: that is an authentication failure first.
        self.assertDenied(mip.CODE_FA_MN_AUTH_FAILED, double, vkey=None, source=MN_SRC2)
        self.assertEqual(self.home, [])

    def test_70_unreadable(self) -> None:
        """A readable fixed part with unreadable extensions: 70, unsigned (nothing proven)."""
        good = mn_request(N1, self.clock)
        for tail in (b"\x20", b"\x20\x28" + bytes(5), good[24:-1], b"\x21\x03abc"):
            data = good[:24] + tail
            self.request(data)
            self.assertDenied(mip.CODE_FA_POORLY_FORMED_REQUEST, data[:24], vkey=None)
        self.assertEqual(self.home, [])
        self.assertEqual(self.fa.counters["dropped_malformed"], 4)

    def test_72_encapsulation(self) -> None:
        for flag in (mip.FLAG_M, mip.FLAG_G, mip.FLAG_M | mip.FLAG_G):
            self.refused(mip.CODE_FA_ENCAPSULATION_UNAVAILABLE, flags=mip.FLAG_T | flag)

    def test_73_reserved_flag(self) -> None:
        """The former 'V' (Van Jacobson) bit, now 'r': reserved and unavailable."""
        self.refused(mip.CODE_FA_VJ_UNAVAILABLE, flags=mip.FLAG_T | mip.FLAG_R)

    def test_x_flag_ignored(self) -> None:
        """'x' is sent as zero and ignored on reception (RFC 5944 section 3.3)."""
        self.request(mn_request(N1, self.clock, flags=mip.FLAG_T | mip.FLAG_X))
        self.forwarded()

    def test_77_care_of(self) -> None:
        for coa in (COA_A, N1.home_address, IPv4Address(0)):
            self.refused(mip.CODE_FA_INVALID_COA, coa=coa)


class Reverse74Tests(_Base):
    """74: reverse tunnelling asked for where the relay does not offer it (RFC 3024)."""

    fa_kwargs = {"reverse_tunnel": "unavailable"}

    def test_74(self) -> None:
        data = mn_request(N1, self.clock)
        self.request(data)
        self.assertDenied(mip.CODE_FA_REVERSE_TUNNEL_UNAVAILABLE, data)
        self.assertEqual(self.home, [])
        self.request(mn_request(N1, self.clock, flags=0))
        self.forwarded()


class Reverse75Tests(_Base):
    """75: the relay insists on reverse tunnelling and 'T' is not set (RFC 3024)."""

    fa_kwargs = {"reverse_tunnel": "required"}

    def test_75(self) -> None:
        data = mn_request(N1, self.clock, flags=0)
        self.request(data)
        self.assertDenied(mip.CODE_FA_REVERSE_TUNNEL_MANDATORY, data)
        self.assertEqual(self.home, [])
        # A deregistration needs no tunnel.
        self.request(mn_request(N1, self.clock, flags=0, lifetime=0))
        self.request(mn_request(N1, self.clock))
        self.assertEqual(len(self.home), 2)


class PendingFullTests(_Base):
    """66: the pending table is full."""

    fa_kwargs = {"max_pending": 2}

    def test_66(self) -> None:
        self.request(mn_request(N1, self.clock))
        self.request(mn_request(N2, self.clock, V2), MN_SRC2)
        data = mn_request(N3, self.clock, V3, home_address=IPv4Address(0), extensions=[NAI3])
        self.request(data, ("203.0.113.52", 434))
        reply = self.assertDenied(
            mip.CODE_FA_RESOURCES, data, vkey=V3, source=("203.0.113.52", 434)
        )
        self.assertIn(NAI3, reply.extensions)
        self.assertEqual(len(self.home), 2)
        # Room again once an answer came.
        self.fa.from_home(home_reply(self.home[0][0]), HA_ADDR)
        self.request(mn_request(N3, self.clock, V3, home_address=IPv4Address(0), extensions=[NAI3]))
        self.assertEqual(len(self.home), 3)


class VisitorsFullTests(_Base):
    """66: the visitor list is full (for a node not on it)."""

    fa_kwargs = {"max_visitors": 1}

    def test_66(self) -> None:
        self.register(N1, V1)
        data = mn_request(N2, self.clock, V2)
        self.request(data, MN_SRC2)
        self.assertDenied(mip.CODE_FA_RESOURCES, data, vkey=V2, source=MN_SRC2)
        # n1 may renew, and deregister; then n2 gets in.
        self.clock.advance(1)
        self.register(N1, V1)
        self.assertEqual(self.last_reply().code, mip.CODE_ACCEPTED)
        self.request(mn_request(N1, self.clock, lifetime=0, flags=0))
        self.fa.from_home(home_reply(self.home[-1][0]), HA_ADDR)
        self.register(N2, V2, MN_SRC2)
        self.assertEqual(list(self.fa.visitors), [N2.home_address])

    def test_full_when_the_answer_comes(self) -> None:
        """Two newcomers pending for one place: the second acceptance becomes 66."""
        self.request(mn_request(N1, self.clock))
        self.request(mn_request(N2, self.clock, V2), MN_SRC2)
        first, second = (d for d, _ in self.home)
        self.fa.from_home(home_reply(first), HA_ADDR)
        self.fa.from_home(home_reply(second, N2), HA_ADDR)
        self.assertDenied(mip.CODE_FA_RESOURCES, second, vkey=V2, source=MN_SRC2)
        self.assertEqual(list(self.fa.visitors), [N1.home_address])


class HomeAgentAuthenticationTests(_Base):
    """68: a reply without one valid FA-HA is not relayed; the node hears 68."""

    def setUp(self) -> None:
        super().setUp()
        self.register()
        self.clock.advance(1)
        self.before = replace(self.fa.visitors[N1.home_address])
        self.mobile.clear()
        self.home.clear()

    def check(self, forge: Any) -> None:
        data = mn_request(N1, self.clock, lifetime=0, flags=0)
        self.request(data)
        relayed = self.forwarded()
        self.fa.from_home(forge(relayed), HA_ADDR)
        self.assertEqual(len(self.mobile), 1, "only the relay's own refusal goes out")
        self.assertDenied(mip.CODE_FA_HA_AUTH_FAILED, data)
        self.assertEqual(self.fa.pending, {})
        # The (would-be) deregistration did not remove the entry.
        self.assertEqual(self.fa.visitors[N1.home_address], self.before)
        self.assertEqual(self.changes, [("n1", True)])
        self.assertEqual(self.fa.counters["reply_fa_ha_failed"], 1)
        # And the genuine reply arriving after it matches nothing any more.
        self.fa.from_home(home_reply(relayed), HA_ADDR)
        self.assertEqual(self.fa.counters["dropped_unmatched"], 1)
        self.assertIn(N1.home_address, self.fa.visitors)

    def test_missing(self) -> None:
        self.check(lambda r: home_reply(r, fa_key=None))

    def test_wrong_key(self) -> None:
        self.check(lambda r: home_reply(r, fa_key=WRONG_KEY))

    def test_wrong_spi(self) -> None:
        self.check(lambda r: home_reply(r, fa_spi=FA.spi + 1))

    def test_other_home_agents_key(self) -> None:
        self.check(lambda r: home_reply(r, fa_key=HA2_KEY, fa_spi=HA2_PEER.spi))

    def test_two(self) -> None:
        self.check(lambda r: mip.append_authenticator(home_reply(r), mip.EXT_FA_HA, FA.spi, FA.key))

    def test_tampered(self) -> None:
        def forge(r: bytes) -> bytes:
            data = bytearray(home_reply(r))
            data[1] = mip.CODE_ACCEPTED_NO_SIMULTANEOUS
            return bytes(data)

        self.check(forge)


class PoorlyFormedReplyTests(_Base):
    """71: a reply the home agent signed for us that we cannot process."""

    def test_71(self) -> None:
        for forge in (
            lambda r: home_reply(r, between=[mip.UnknownExtension(99, b"?")]),
            lambda r: home_reply(r, before=[mip.UnknownExtension(5, b"")]),
        ):
            data = mn_request(N1, self.clock)
            self.request(data)
            self.fa.from_home(forge(self.home[-1][0]), HA_ADDR)
            self.assertDenied(mip.CODE_FA_POORLY_FORMED_REPLY, data)
        self.assertEqual(self.fa.visitors, {})
        self.assertEqual(self.fa.pending, {})

    def test_fa_ha_before_mn_ha(self) -> None:
        data = mn_request(N1, self.clock)
        self.request(data)
        req = decode_request(self.forwarded())
        fixed = mip.encode(
            mip.RegistrationReply(0, 600, N1.home_address, HA_ADDR, req.identification)
        )
        bad = mip.append_authenticator(fixed, mip.EXT_FA_HA, FA.spi, FA.key)
        bad = mip.append_authenticator(bad, mip.EXT_MN_HA, N1.spi, N1.key)
        self.fa.from_home(bad, HA_ADDR)
        self.assertDenied(mip.CODE_FA_POORLY_FORMED_REPLY, data)

    def test_unreadable_reply_dropped(self) -> None:
        """An unreadable reply proves nothing: dropped, the request left to time out."""
        self.request(mn_request(N1, self.clock))
        good = home_reply(self.forwarded())
        for data in (good[:-1], good[:19], b"\x01" + good[1:], b"", good[:20] + b"\x22"):
            self.fa.from_home(data, HA_ADDR)
        self.assertEqual(self.mobile, [])
        self.assertEqual(len(self.fa.pending), 1)
        self.assertEqual(self.fa.counters["dropped_malformed"], 5)


class TimeoutTests(_Base):
    """78 after pending_timeout; 80-88 when the adapter says the home agent is out of reach."""

    fa_kwargs = {"pending_timeout": 7.0}

    def test_78(self) -> None:
        data = mn_request(N1, self.clock)
        self.request(data)
        relayed = self.forwarded()
        self.clock.advance(6.9)
        self.assertEqual(self.mobile, [])
        self.clock.advance(0.1)
        self.assertDenied(mip.CODE_FA_TIMEOUT, data)
        self.assertEqual(self.fa.pending, {})
        self.assertEqual(self.fa.counters["pending_timeouts"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # A reply that comes later is dropped.
        self.fa.from_home(home_reply(relayed), HA_ADDR)
        self.assertEqual(self.fa.visitors, {})
        self.assertEqual(self.fa.counters["dropped_unmatched"], 1)

    def test_unreachable(self) -> None:
        for code in (80, 81, 82, 88):
            data = mn_request(N1, self.clock)
            self.request(data)
            other = mn_request(N2, self.clock, V2, home_agent=HA_ADDR2)
            self.request(other, MN_SRC2)
            self.fa.home_unreachable(HA_ADDR, code)
            self.assertDenied(code, data)
            # Only the requests pending at that home agent.
            self.assertEqual([p.home_agent for p in self.fa.pending.values()], [HA_ADDR2])
            self.fa.home_unreachable(HA_ADDR2, code)
            self.assertDenied(code, other, vkey=V2, source=MN_SRC2)
            self.assertEqual(self.fa.pending, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unreachable_code_checked(self) -> None:
        self.assertRaises(ValueError, self.fa.home_unreachable, HA_ADDR, 70)


class VisitorExpiryTests(_Base):
    """Entries lapse with their lifetime; the listener hears of it."""

    def test_expires(self) -> None:
        self.register(lifetime=100)
        self.clock.advance(99.9)
        self.assertIn(N1.home_address, self.fa.visitors)
        self.clock.advance(0.1)
        self.assertEqual(self.fa.visitors, {})
        self.assertEqual(self.changes, [("n1", True), ("n1", False)])
        self.assertEqual(self.fa.counters["visitors_expired"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # No registration message is generated for it (RFC 5944 section 3.7).
        self.assertEqual(len(self.home), 1)
        self.assertEqual(len(self.mobile), 1)

    def test_each_on_its_own_time(self) -> None:
        self.register(N1, V1, lifetime=100)
        self.register(N2, V2, MN_SRC2, lifetime=300)
        self.clock.advance(50)
        self.register(N1, V1, lifetime=100)
        self.clock.advance(100)
        self.assertEqual(sorted(self.fa.visitors), [N2.home_address])
        self.clock.advance(150)
        self.assertEqual(self.fa.visitors, {})

    def test_replay_of_accepted_request(self) -> None:
        """A copy of an accepted request is not relayed again (it could move the entry)."""
        data = self.register()
        self.clock.advance(1)
        self.request(data, MN_SRC2)
        self.assertEqual(len(self.home), 1)
        self.assertEqual(self.fa.counters["dropped_replay"], 1)
        self.assertEqual(self.fa.visitors[N1.home_address].source, MN_SRC)

    def test_stop(self) -> None:
        self.register()
        self.request(mn_request(N2, self.clock, V2), MN_SRC2)
        self.fa.stop()
        self.assertEqual(self.fa.visitors, {})
        self.assertEqual(self.fa.pending, {})
        self.assertEqual(self.changes, [("n1", True), ("n1", False)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.fa.stop()


class RateLimitTests(_Base):
    """At most one refusal a second to one node at one address (RFC 5944 section 3.7.2)."""

    fa_kwargs = {"denial_interval": 1.0}

    def test_one_a_second(self) -> None:
        for _ in range(5):
            self.request(mn_request(N1, self.clock, coa=COA_A))
        self.assertEqual(len(self.mobile), 1)
        self.assertEqual(self.fa.counters["denials_rate_limited"], 4)
        self.assertEqual(self.fa.counters["denied_77"], 5)
        self.request(mn_request(N1, self.clock, coa=COA_A), MN_SRC2)
        self.assertEqual(len(self.mobile), 2)
        self.clock.advance(1)
        self.request(mn_request(N1, self.clock, coa=COA_A))
        self.assertEqual(len(self.mobile), 3)


class StatusTests(_Base):
    """status() is plain data without keys; counters count every reason."""

    def test_status(self) -> None:
        self.register(lifetime=300)
        self.request(mn_request(N2, self.clock, V2), MN_SRC2)
        self.request(mn_request(N1, self.clock, mnfa=False), MN_SRC2)
        self.clock.advance(5)
        status = self.fa.status()
        text = json.dumps(status)
        for key in KEYS:
            self.assertNotIn(key.hex(), text)
        self.assertEqual(status["care_of_address"], str(FA_ADDR))
        self.assertEqual(status["pending"], 1)
        self.assertEqual(status["home_agents"], [str(HA_ADDR), str(HA_ADDR2)])
        (visitor,) = status["visitors"]
        self.assertEqual(visitor["home_address"], str(N1.home_address))
        self.assertEqual(visitor["source"], "203.0.113.50:40001")
        self.assertEqual(visitor["remaining"], 295)
        counters = status["counters"]
        self.assertEqual(counters["requests_received"], 3)
        self.assertEqual(counters["forwarded"], 2)
        self.assertEqual(counters["denied_67"], 1)
        self.assertEqual(counters["replies_relayed"], 1)
        self.assertEqual(counters["visitors_added"], 1)

    def test_not_requests(self) -> None:
        """What cannot be a request is dropped without a word."""
        reply = home_reply(mn_request(N1, self.clock))
        for data in (b"", b"\x01", bytes(23), reply, b"\x02" + bytes(30), b"\xff" * 40):
            self.request(data)
        self.assertEqual(self.mobile, [])
        self.assertEqual(self.home, [])
        self.assertEqual(self.fa.counters["dropped_malformed"], 6)

    def test_requests_from_home_dropped(self) -> None:
        self.fa.from_home(mn_request(N1, self.clock), HA_ADDR)
        self.assertEqual(self.fa.counters["dropped_malformed"], 1)
        self.assertEqual(self.mobile, [])

    def test_listener_errors_contained(self) -> None:
        def broken(visitor: Visitor, present: bool) -> None:
            raise RuntimeError("boom")

        self.fa.add_listener(broken)
        self.register()
        self.assertIn(N1.home_address, self.fa.visitors)
        self.assertEqual(self.changes, [("n1", True)])
        self.assertEqual(self.fa.counters["listener_errors"], 1)
        self.flushLoggedErrors(RuntimeError)


# ---------------------------------------------------------------------------
# Fuzzing

FAST = settings(max_examples=200, deadline=None, database=None)
NEAR_REQUESTS = st.builds(
    lambda body: bytes([mip.TYPE_REQUEST]) + body, st.binary(min_size=23, max_size=120)
)
NEAR_REPLIES = st.builds(
    lambda body: bytes([mip.TYPE_REPLY]) + body, st.binary(min_size=19, max_size=120)
)


class FuzzTests(SynchronousTestCase):
    """Hostile datagrams never raise and never change the tables (hypothesis)."""

    def fresh(self) -> tuple[ForeignAgent, Clock, list[Any], list[Any]]:
        clock = make_clock()
        home: list[Any] = []
        mobile: list[Any] = []
        fa = make_fa(clock, home, mobile, denial_interval=1.0)
        fa.log = Logger(observer=cast(ILogObserver, lambda e: None))
        self.addCleanup(fa.stop)
        return fa, clock, home, mobile

    @FAST
    @given(st.one_of(st.binary(max_size=160), NEAR_REQUESTS))
    def test_from_mobile(self, data: bytes) -> None:
        fa, clock, home, mobile = self.fresh()
        fa.from_mobile(data, MN_SRC)
        self.assertEqual(home, [])
        self.assertEqual((fa.visitors, fa.pending), ({}, {}))
        for out, dest in mobile:
            self.assertEqual(dest, MN_SRC)
            self.assertIn(decode_reply(out).code, mip.FOREIGN_AGENT_CODES)

    @FAST
    @given(st.integers(0, 10_000), st.integers(1, 255))
    def test_from_mobile_mutated(self, where: int, xor: int) -> None:
        """A genuine request with any one byte changed is never relayed."""
        fa, clock, home, mobile = self.fresh()
        data = bytearray(mn_request(N1, clock))
        data[where % len(data)] ^= xor
        fa.from_mobile(bytes(data), MN_SRC)
        self.assertEqual(home, [])
        self.assertEqual((fa.visitors, fa.pending), ({}, {}))

    @FAST
    @given(st.one_of(st.binary(max_size=160), NEAR_REPLIES))
    def test_from_home(self, data: bytes) -> None:
        fa, clock, home, mobile = self.fresh()
        fa.from_mobile(mn_request(N1, clock), MN_SRC)
        fa.from_home(data, HA_ADDR)
        fa.from_home(data, HA_ADDR2)
        self.assertEqual(fa.visitors, {})
        for out, _ in mobile:
            self.assertIn(decode_reply(out).code, (68, 71))

    @FAST
    @given(st.integers(0, 10_000), st.integers(1, 255))
    def test_from_home_mutated(self, where: int, xor: int) -> None:
        """A genuine reply with any one byte changed never makes a visitor."""
        fa, clock, home, mobile = self.fresh()
        fa.from_mobile(mn_request(N1, clock), MN_SRC)
        data = bytearray(home_reply(home[0][0]))
        data[where % len(data)] ^= xor
        fa.from_home(bytes(data), HA_ADDR)
        self.assertEqual(fa.visitors, {})
        for out, _ in mobile:
            self.assertEqual(decode_reply(out).code, mip.CODE_FA_HA_AUTH_FAILED)


# ---------------------------------------------------------------------------
# Mobile node -> relay -> home agent, in memory


class EndToEndTests(SynchronousTestCase):
    """A L{MobileNode}, the relay and a real L{HomeAgent} joined in memory."""

    def join(
        self,
        *,
        fa_peer_key: bytes = FA.key,
        mnfa_key: bytes = V1.key,
        max_lifetime: int = 600,
    ) -> None:
        self.clock = make_clock()
        self.store = MemoryStore()
        self.ha: HomeAgent = make_ha(self.clock, self.store, nodes=[N1], foreign_agents=[FA])
        self.addCleanup(self.ha.stop)
        self.fa = ForeignAgent(
            care_of_address=FA_ADDR,
            home_agents=[HomeAgentPeer(HA_ADDR, FA.spi, fa_peer_key)],
            visitors=[V1],
            clock=self.clock,
            send_home=self.to_home,
            send_mobile=self.to_mobile,
            max_lifetime=max_lifetime,
        )
        self.addCleanup(self.fa.stop)
        self.node = MobileNode(SETTINGS, clock=self.clock, send=self.from_node)
        self.addCleanup(self.node.stop)
        self.node.set_foreign_agent(ForeignAgentLink(FA_ADDR, V1.spi, mnfa_key))
        self.visitor_changes: list[bool] = []
        self.fa.add_listener(lambda v, present: self.visitor_changes.append(present))
        self.ha_codes: list[int] = []
        self.direct = 0
        self.wire: list[tuple[str, list[int]]] = []

    def auth_types(self, data: bytes) -> list[int]:
        return [e.type for e in mip.decode(data).extensions if isinstance(e, mip.AuthExtension)]

    def from_node(self, data: bytes) -> None:
        self.wire.append(("mn->fa", self.auth_types(data)))
        if self.node.next_hop == FA_ADDR:
            self.fa.from_mobile(data, MN_SRC)
        else:
            self.direct += 1
            reply = self.ha.handle_request(data, MN_SRC)
            if reply is not None:
                self.node.datagram_received(reply, (str(HA_ADDR), 434))

    def to_home(self, data: bytes, ha: IPv4Address) -> None:
        self.assertEqual(ha, HA_ADDR)
        self.wire.append(("fa->ha", self.auth_types(data)))
        # The home agent sees the relay as the sender.
        reply = self.ha.handle_request(data, (str(FA_ADDR), 434))
        if reply is not None:
            self.ha_codes.append(decode_reply(reply).code)
            self.wire.append(("ha->fa", self.auth_types(reply)))
            self.fa.from_home(reply, HA_ADDR)

    def to_mobile(self, data: bytes, dest: tuple[str, int]) -> None:
        self.assertEqual(dest, MN_SRC)
        self.wire.append(("fa->mn", self.auth_types(data)))
        self.node.datagram_received(data, (str(FA_ADDR), 434))

    def test_register_through_relay(self) -> None:
        self.join()
        self.node.register(COA_A)
        self.assertEqual(self.node.state, State.REGISTERED)
        self.assertEqual(self.node.registered_via, FA_ADDR)
        self.assertEqual(self.node.care_of, COA_A)
        (binding,) = self.ha.bindings["n1"]
        self.assertEqual(binding.care_of_address, FA_ADDR)
        self.assertEqual(binding.path, "relay")
        self.assertEqual((binding.source_host, binding.source_port), (str(FA_ADDR), 434))
        self.assertFalse(binding.nat)
        visitor = self.fa.visitors[N1.home_address]
        self.assertEqual(visitor.source, MN_SRC)
        self.assertEqual(visitor.home_agent, HA_ADDR)
        self.assertEqual(visitor.identification, binding.identification)
        self.assertEqual(self.visitor_changes, [True])
        # The authentication extensions on each leg, in the order RFC 5944 asks.
        mnha, mnfa, faha = mip.EXT_MN_HA, mip.EXT_MN_FA, mip.EXT_FA_HA
        self.assertEqual(
            self.wire,
            [
                ("mn->fa", [mnha, mnfa]),
                ("fa->ha", [mnha, faha]),
                ("ha->fa", [mnha, faha]),
                ("fa->mn", [mnha, mnfa]),
            ],
        )
        # Two hours of re-registrations: neither the binding nor the entry lapses.
        for _ in range(2 * 3600 // 10):
            self.clock.advance(10)
            self.assertEqual([b.care_of_address for b in self.ha.bindings["n1"]], [FA_ADDR])
            self.assertIn(N1.home_address, self.fa.visitors)
            self.assertIn(self.node.state, (State.REGISTERED, State.REGISTERING))
        self.assertEqual(self.ha.counters["bindings_expired"], 0)
        self.assertEqual(self.fa.counters["visitors_expired"], 0)
        self.assertEqual(set(self.ha_codes), {0})
        self.assertEqual(len(self.ha_codes), 7200 // 480 + 1)
        self.assertEqual(self.direct, 0)

    def test_deregister(self) -> None:
        self.join()
        self.node.register(COA_A)
        self.clock.advance(100)
        d = self.node.deregister()
        self.assertIs(self.successResultOf(d), True)
        self.assertNotIn("n1", self.ha.bindings)
        self.assertEqual(self.fa.visitors, {})
        self.assertEqual(self.visitor_changes, [True, False])
        self.assertEqual(self.node.state, State.UNREGISTERED)

    def test_lifetime_too_long(self) -> None:
        """The relay allows 300 s; the node asks 600, hears 69, asks 300 at once."""
        self.join(max_lifetime=300)
        self.node.register(COA_A)
        self.assertEqual(self.node.state, State.REGISTERED)
        self.assertEqual(self.node.granted_lifetime, 300)
        self.assertEqual(self.fa.counters["denied_69"], 1)
        self.assertEqual(self.ha_codes, [0])
        self.assertEqual(self.ha.bindings["n1"][0].lifetime, 300)
        self.assertEqual(self.fa.visitors[N1.home_address].lifetime, 300)

    def test_mn_fa_failure_never_reaches_home(self) -> None:
        """Wrong MN-FA key: 67 (unsigned, so ignored); the home agent hears nothing."""
        self.join(mnfa_key=WRONG_KEY)
        self.node.register(COA_A)
        self.clock.pump([1] * 20)
        self.assertEqual(self.node.state, State.REGISTERING)
        self.assertEqual(self.node.last_unverified_code, mip.CODE_FA_MN_AUTH_FAILED)
        self.assertEqual(self.ha.counters["requests_received"], 0)
        self.assertEqual(self.ha.bindings, {})
        self.assertGreaterEqual(self.fa.counters["denied_67"], 4)

    def test_forged_fa_ha(self) -> None:
        """The relay's FA-HA does not verify at home: 132, nothing bound; the node hears 68."""
        self.join(fa_peer_key=WRONG_KEY)
        self.node.register(COA_A)
        self.assertEqual(self.ha_codes, [mip.CODE_HA_FA_AUTH_FAILED])
        self.assertEqual(self.ha.bindings, {})
        self.assertEqual(self.store.load_bindings(), [])
        self.assertIsNone(self.store.last_identification("n1"))
        self.assertEqual(self.fa.counters["reply_fa_ha_failed"], 1)
        self.assertEqual(self.fa.visitors, {})
        self.assertEqual(self.node.state, State.REFUSED)
        self.assertEqual(self.node.last_code, mip.CODE_FA_HA_AUTH_FAILED)

    def test_forged_fa_ha_injected(self) -> None:
        """Someone else sends a relayed request in the relay's name: 132, nothing changes."""
        self.join()
        self.node.register(COA_A)
        before = (list(self.ha.bindings["n1"]), self.store.last_identification("n1"))
        self.clock.advance(5)
        forged = build_request(N1, self.clock, coa=IPv4Address("198.51.100.66"), flags=0)
        forged = mip.append_authenticator(forged, mip.EXT_FA_HA, FA.spi, WRONG_KEY)
        reply = decode_reply(self.ha.handle_request(forged, (str(FA_ADDR), 434)) or b"")
        self.assertEqual(reply.code, mip.CODE_HA_FA_AUTH_FAILED)
        self.assertEqual(mip.auth_indices(reply.extensions, mip.EXT_FA_HA), [])
        # Were it delivered to the relay, it would match nothing and be dropped.
        self.fa.from_home(mip.encode(reply), HA_ADDR)
        self.assertEqual(self.fa.counters["dropped_unmatched"], 1)
        self.assertEqual(
            (list(self.ha.bindings["n1"]), self.store.last_identification("n1")), before
        )
        self.assertEqual(self.node.state, State.REGISTERED)
        self.assertIn(N1.home_address, self.fa.visitors)

    def test_home_refusal_relayed(self) -> None:
        """The home agent's own refusal (MN-HA and FA-HA) reaches the node intact."""
        self.join()
        self.ha.max_bindings = 0
        self.node.register(COA_A)
        self.assertEqual(self.ha_codes, [mip.CODE_HA_RESOURCES])
        self.assertEqual(self.node.state, State.REFUSED)
        self.assertEqual(self.node.last_code, mip.CODE_HA_RESOURCES)
        self.assertEqual(self.fa.visitors, {})

    def test_fa_ha_signed_replies(self) -> None:
        """Every answer the home agent gives the relay carries a valid FA-HA."""
        self.join()
        replies: list[bytes] = []
        real = self.ha.handle_request

        def spy(data: bytes, source: tuple[str, int]) -> bytes | None:
            out = real(data, source)
            if out is not None:
                replies.append(out)
            return out

        self.ha.handle_request = spy  # type: ignore[method-assign]
        self.node.register(COA_A)
        self.clock.advance(480)
        self.assertEqual(len(replies), 2)
        for data in replies:
            self.assertTrue(fa_signed(decode_reply(data)))
