# -*- test-case-name: tests.test_homeagent -*-
"""Tests for L{smobility.engines.homeagent} (RFC 5944 section 3.8, RFC 3519).

Every request is built by hand with the wire codec, so that the tests can also
build the bad ones; time is a L{task.Clock} set to a realistic Unix time, since
identifications are NTP timestamps taken from C{clock.seconds()}.

The helpers at the top are also used by C{tests.test_mobilenode} and
C{tests.test_store}.
"""

from __future__ import annotations

import dataclasses
import hmac
import itertools
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines.bindings import Binding, BindingStore, MemoryStore
from smobility.engines.homeagent import (
    ForeignAgentEntry,
    HomeAgent,
    MobileNodeEntry,
)
from smobility.wire import mip
from smobility.wire.ntp import ntp_seconds, to_ntp

#: A realistic Unix time (2027): identifications are NTP timestamps of it.
NOW = 1_800_000_000

HA_ADDR = IPv4Address("192.0.2.1")
HA_ADDR2 = IPv4Address("192.0.2.2")
HOME_NET = IPv4Network("10.10.0.0/24")

KEY1 = bytes.fromhex("00112233445566778899aabbccddeeff")
KEY2 = bytes.fromhex("ffeeddccbbaa99887766554433221100")
KEY3 = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
FA_KEY = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
WRONG_KEY = bytes(16)

#: One binding at a time, lifetimes up to 1800 s.
N1 = MobileNodeEntry(
    name="n1", home_address=IPv4Address("10.10.0.10"), spi=1000, key=KEY1, max_lifetime=1800
)
#: Up to three simultaneous bindings.
N2 = MobileNodeEntry(
    name="n2",
    home_address=IPv4Address("10.10.0.11"),
    spi=1001,
    key=KEY2,
    simultaneous_bindings=3,
)
#: Identified by NAI too, HMAC-SHA256.
N3 = MobileNodeEntry(
    name="n3",
    home_address=IPv4Address("10.10.0.12"),
    spi=1002,
    key=KEY3,
    algorithm="hmac-sha256",
    nai="n3@example.org",
)
NODES = (N1, N2, N3)

FA = ForeignAgentEntry(address=IPv4Address("198.51.100.7"), spi=2000, key=FA_KEY)

COA_A = IPv4Address("198.51.100.20")
COA_B = IPv4Address("198.51.100.21")
COA_C = IPv4Address("198.51.100.22")
COA_D = IPv4Address("198.51.100.23")
NAT_PUBLIC = "203.0.113.5"

# Each request gets a distinct identification even at one clock time: a tiny
# step (1/2**32 s) is added from this counter.
_SEQ = itertools.count(1)


def make_clock(start: float = NOW) -> Clock:
    """A L{Clock} at a realistic Unix time."""
    clock = Clock()
    clock.advance(start)
    return clock


def make_ha(
    clock: Clock,
    store: BindingStore | None = None,
    nodes: Sequence[MobileNodeEntry] = NODES,
    **kwargs: Any,
) -> HomeAgent:
    """A home agent at L{HA_ADDR} serving C{nodes}."""
    kwargs.setdefault("addresses", [HA_ADDR])
    return HomeAgent(
        home_network=HOME_NET,
        nodes=nodes,
        store=store if store is not None else MemoryStore(),
        clock=clock,
        **kwargs,
    )


def fresh_ident(clock: Clock, offset: float = 0.0) -> int:
    """A timestamp identification for now (+ C{offset}), distinct from all others."""
    return to_ntp(clock.seconds() + offset) + next(_SEQ)


def build_request(
    node: MobileNodeEntry,
    clock: Clock,
    *,
    coa: IPv4Address = COA_A,
    lifetime: int = 600,
    flags: int = mip.FLAG_D | mip.FLAG_T,
    home_address: IPv4Address | None = None,
    home_agent: IPv4Address = HA_ADDR,
    ident: int | None = None,
    offset: float = 0.0,
    extensions: Sequence[mip.Extension] = (),
    key: bytes | None = None,
    spi: int | None = None,
    sign: bool = True,
    after: Sequence[mip.Extension] = (),
) -> bytes:
    """The bytes of a request from C{node}, signed with MN-HA unless C{sign} is false.

    C{extensions} come before the MN-HA extension (so it protects them),
    C{after} after it (unprotected).
    """
    req = mip.RegistrationRequest(
        flags=flags,
        lifetime=lifetime,
        home_address=node.home_address if home_address is None else home_address,
        home_agent=home_agent,
        care_of_address=coa,
        identification=fresh_ident(clock, offset) if ident is None else ident,
        extensions=tuple(extensions),
    )
    data = mip.encode(req)
    if sign:
        data = mip.append_authenticator(
            data,
            mip.EXT_MN_HA,
            node.spi if spi is None else spi,
            node.key if key is None else key,
            node.algorithm,
        )
    return data + b"".join(mip.encode_extension(e) for e in after)


def parse_reply(data: bytes | None) -> mip.RegistrationReply:
    """Decode a reply, failing the test if there is none."""
    assert data is not None, "the home agent sent no reply"
    msg = mip.decode(data)
    assert isinstance(msg, mip.RegistrationReply), msg
    return msg


def signed_by(reply: mip.RegistrationReply, node: MobileNodeEntry) -> bool:
    """Whether C{reply} carries a valid MN-HA authenticator with C{node}'s SPI and key."""
    i = mip.find_auth(reply.extensions, mip.EXT_MN_HA)
    if i is None:
        return False
    ext = reply.extensions[i]
    assert isinstance(ext, mip.AuthExtension)
    return ext.spi == node.spi and mip.verify_authenticator(reply, i, node.key, node.algorithm)


def unsigned(reply: mip.RegistrationReply) -> bool:
    """Whether C{reply} carries no authentication extension at all."""
    return not any(isinstance(e, mip.AuthExtension) for e in reply.extensions)


def request_ident(data: bytes) -> int:
    """The identification of the request in C{data}."""
    msg = mip.decode(data)
    assert isinstance(msg, mip.RegistrationRequest)
    return msg.identification


class _Base(SynchronousTestCase):
    """A home agent on a clock, with a memory store."""

    ha_kwargs: dict[str, Any] = {}

    def setUp(self) -> None:
        self.clock = make_clock()
        self.store = MemoryStore()
        self.ha = make_ha(self.clock, self.store, **self.ha_kwargs)
        self.addCleanup(self.ha.stop)

    def send(self, data: bytes, source: tuple[str, int] | None = None) -> mip.RegistrationReply:
        """Hand C{data} to the home agent from C{source} (the care-of address by default)."""
        if source is None:
            msg = mip.decode(data)
            assert isinstance(msg, mip.RegistrationRequest)
            source = (str(msg.care_of_address), 434)
        return parse_reply(self.ha.handle_request(data, source))

    def register(
        self,
        node: MobileNodeEntry,
        source: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> mip.RegistrationReply:
        """Send a request built by L{build_request}; return the decoded reply."""
        return self.send(build_request(node, self.clock, **kwargs), source)

    def coas(self, node: MobileNodeEntry) -> list[IPv4Address]:
        """The care-of addresses bound for C{node}, in the engine and in the store."""
        engine = sorted(b.care_of_address for b in self.ha.bindings.get(node.name, []))
        stored = sorted(
            b.care_of_address for b in self.store.load_bindings() if b.node == node.name
        )
        self.assertEqual(engine, stored, "engine and store disagree")
        return engine

    def binding(self, node: MobileNodeEntry, coa: IPv4Address = COA_A) -> Binding:
        """The binding of C{node} for C{coa}."""
        for b in self.ha.bindings.get(node.name, []):
            if b.care_of_address == coa:
                return b
        self.fail(f"no binding for {node.name} at {coa}")

    def assertRefused(
        self, reply: mip.RegistrationReply, code: int, node: MobileNodeEntry | None = None
    ) -> None:
        """C{reply} refuses with C{code}, signed for C{node} (unsigned if C{node} is None)."""
        self.assertEqual(reply.code, code, mip.REPLY_CODE_NAMES.get(reply.code))
        self.assertEqual(reply.lifetime, 0)
        if node is None:
            self.assertTrue(unsigned(reply), "the reply should carry no MN-HA")
        else:
            self.assertTrue(signed_by(reply, node), "the reply should carry a valid MN-HA")


class AcceptTests(_Base):
    """A valid request is accepted, committed, and answered with a signed reply."""

    def test_accepted(self) -> None:
        data = build_request(N1, self.clock, lifetime=300)
        ident = request_ident(data)
        reply = self.send(data, (str(COA_A), 434))
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(reply.accepted)
        self.assertEqual(reply.lifetime, 300)
        self.assertEqual(reply.home_address, N1.home_address)
        self.assertEqual(reply.home_agent, HA_ADDR)
        self.assertEqual(reply.identification, ident)
        self.assertTrue(signed_by(reply, N1))
        b = self.binding(N1)
        self.assertEqual(b.home_address, N1.home_address)
        self.assertEqual(b.lifetime, 300)
        self.assertEqual(b.registered, NOW)
        self.assertEqual(b.expires, NOW + 300)
        self.assertEqual(b.identification, ident)
        self.assertEqual((b.source_host, b.source_port), (str(COA_A), 434))
        self.assertFalse(b.nat)
        self.assertEqual(b.path, "direct")
        self.assertEqual(self.coas(N1), [COA_A])
        self.assertEqual(self.store.last_identification("n1"), ident)
        self.assertEqual(self.ha.counters["accepted"], 1)
        self.assertEqual(self.ha.counters["registrations"], 1)
        self.assertEqual(self.ha.counters["replies_sent"], 1)

    def test_sha256_node(self) -> None:
        """An SPI configured with HMAC-SHA256 is checked and answered with it."""
        reply = self.register(N3)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(signed_by(reply, N3))
        i = mip.find_auth(reply.extensions, mip.EXT_MN_HA)
        assert i is not None
        ext = reply.extensions[i]
        assert isinstance(ext, mip.AuthExtension)
        self.assertEqual(len(ext.authenticator), 32)

    def test_nai_echoed(self) -> None:
        """The NAI extension of the request is returned in the reply."""
        nai = mip.NAIExtension(b"n3@example.org")
        reply = self.register(N3, extensions=[nai])
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertIn(nai, reply.extensions)
        self.assertTrue(signed_by(reply, N3))

    def test_reregistration_replaces(self) -> None:
        """A new care-of address without the S bit replaces the binding."""
        self.register(N1, coa=COA_A)
        self.clock.advance(1)
        reply = self.register(N1, coa=COA_B)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(self.coas(N1), [COA_B])

    def test_second_address(self) -> None:
        """A request to any of the home agent's addresses is answered from it."""
        ha = make_ha(self.clock, addresses=[HA_ADDR, HA_ADDR2])
        self.addCleanup(ha.stop)
        data = build_request(N1, self.clock, home_agent=HA_ADDR2)
        reply = parse_reply(ha.handle_request(data, (str(COA_A), 434)))
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(reply.home_agent, HA_ADDR2)

    def test_listener(self) -> None:
        """Listeners hear of every change of a node's bindings."""
        seen: list[tuple[str, list[IPv4Address]]] = []
        self.ha.add_listener(lambda node, bs: seen.append((node, [b.care_of_address for b in bs])))
        self.register(N1, coa=COA_A)
        self.register(N1, coa=COA_A, lifetime=0)
        self.assertEqual(seen, [("n1", [COA_A]), ("n1", [])])

    def test_reply_to_any_source(self) -> None:
        """The binding remembers the source the request came from (the reply goes there)."""
        self.register(N1, ("198.51.100.99", 5000), coa=COA_A)
        b = self.binding(N1)
        self.assertEqual((b.source_host, b.source_port), ("198.51.100.99", 5000))


class LifetimeTests(_Base):
    """The granted lifetime is never longer than requested nor than configured."""

    def test_as_requested(self) -> None:
        self.assertEqual(self.register(N1, lifetime=100).lifetime, 100)
        self.assertEqual(self.binding(N1).expires, NOW + 100)

    def test_capped_by_maximum(self) -> None:
        reply = self.register(N1, lifetime=5000)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(reply.lifetime, 1800)
        self.assertEqual(self.binding(N1).lifetime, 1800)
        self.assertEqual(self.binding(N1).expires, NOW + 1800)

    def test_infinite_capped(self) -> None:
        """0xFFFF (infinite) is never granted, even when the maximum allows it."""
        self.assertEqual(self.register(N1, lifetime=0xFFFF).lifetime, 1800)
        node = MobileNodeEntry(
            name="forever",
            home_address=IPv4Address("10.10.0.20"),
            spi=9,
            key=KEY1,
            max_lifetime=0xFFFF,
        )
        ha = make_ha(self.clock, nodes=[node])
        self.addCleanup(ha.stop)
        reply = parse_reply(
            ha.handle_request(build_request(node, self.clock, lifetime=0xFFFF), (str(COA_A), 434))
        )
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(reply.lifetime, 0xFFFE)


class AuthenticationTests(_Base):
    """131 for every authentication failure, unsigned, and nothing changes."""

    def setUp(self) -> None:
        super().setUp()
        self.register(N1, coa=COA_A)
        self.clock.advance(1)
        self.before = (list(self.ha.bindings["n1"]), self.store.last_identification("n1"))

    def assertUnchanged(self) -> None:
        self.assertEqual(
            (self.ha.bindings.get("n1"), self.store.last_identification("n1")), self.before
        )
        self.assertEqual(self.coas(N1), [COA_A])

    def test_wrong_key(self) -> None:
        reply = self.register(N1, coa=COA_B, key=WRONG_KEY)
        self.assertRefused(reply, mip.CODE_HA_MN_AUTH_FAILED)
        self.assertUnchanged()

    def test_unknown_spi(self) -> None:
        """The right key under another SPI is refused: the SPI selects the key."""
        reply = self.register(N1, coa=COA_B, spi=N1.spi + 1)
        self.assertRefused(reply, mip.CODE_HA_MN_AUTH_FAILED)
        self.assertUnchanged()

    def test_other_nodes_spi_and_key(self) -> None:
        """n2's valid SPI and key do not authenticate n1's home address."""
        reply = self.register(N1, coa=COA_B, spi=N2.spi, key=N2.key)
        self.assertRefused(reply, mip.CODE_HA_MN_AUTH_FAILED)
        self.assertUnchanged()

    def test_unknown_home_address(self) -> None:
        reply = self.register(N1, home_address=IPv4Address("10.10.0.99"))
        self.assertRefused(reply, mip.CODE_HA_MN_AUTH_FAILED)
        self.assertEqual(reply.home_address, IPv4Address("10.10.0.99"))
        self.assertUnchanged()

    def test_missing_mn_ha(self) -> None:
        reply = self.register(N1, coa=COA_B, sign=False)
        self.assertRefused(reply, mip.CODE_HA_MN_AUTH_FAILED)
        self.assertUnchanged()

    def test_tampered(self) -> None:
        """Changing one byte of a signed request breaks its authenticator."""
        data = bytearray(build_request(N1, self.clock, coa=COA_B))
        data[12:16] = COA_C.packed  # the care-of address
        reply = self.send(bytes(data))
        self.assertRefused(reply, mip.CODE_HA_MN_AUTH_FAILED)
        self.assertUnchanged()

    def test_wrong_key_deregistration(self) -> None:
        """An unauthenticated deregistration removes nothing."""
        reply = self.register(N1, coa=N1.home_address, lifetime=0, key=WRONG_KEY)
        self.assertRefused(reply, mip.CODE_HA_MN_AUTH_FAILED)
        self.assertUnchanged()

    def test_authentication_first(self) -> None:
        """A forged request gets 131 whatever else is wrong with it."""
        cases: list[dict[str, Any]] = [
            {"flags": mip.FLAG_M},
            {"flags": mip.FLAG_G},
            {"home_agent": IPv4Address("192.0.2.99")},
            {"offset": -3600.0},
            {"extensions": [mip.UnknownExtension(100, b"x")]},
            {"ident": request_ident(build_request(N1, self.clock)) - (10 << 32)},
        ]
        for kwargs in cases:
            reply = self.register(N1, coa=COA_B, key=WRONG_KEY, **kwargs)
            self.assertRefused(reply, mip.CODE_HA_MN_AUTH_FAILED)
        self.assertUnchanged()
        self.assertEqual(self.ha.counters["denied_131"], len(cases))

    def test_constant_time_compare(self) -> None:
        """The authenticator is compared with L{hmac.compare_digest}."""
        calls: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            calls.append((a, b))
            return real(a, b)

        self.patch(hmac, "compare_digest", spy)
        self.register(N1, coa=COA_B, key=WRONG_KEY)
        self.assertEqual(len(calls), 1)
        self.register(N1, coa=COA_B)
        self.assertEqual(len(calls), 2)
        self.assertEqual(self.coas(N1), [COA_B])


class ReplayTests(_Base):
    """Timestamp replay protection (RFC 5944 section 5.7.1) and code 133."""

    def test_exact_replay(self) -> None:
        """Resending an accepted request is refused with 133 and changes nothing."""
        old = build_request(N1, self.clock, coa=COA_A)
        self.assertEqual(self.send(old).code, mip.CODE_ACCEPTED)
        self.clock.advance(1)
        newer = build_request(N1, self.clock, coa=COA_B)
        self.assertEqual(self.send(newer).code, mip.CODE_ACCEPTED)
        last = self.store.last_identification("n1")
        bindings = list(self.ha.bindings["n1"])
        self.clock.advance(1)
        for data in (old, newer):
            reply = self.send(data)
            self.assertRefused(reply, mip.CODE_HA_ID_MISMATCH, N1)
            self.assertEqual(self.ha.bindings["n1"], bindings)
            self.assertEqual(self.coas(N1), [COA_B])
            self.assertEqual(self.store.last_identification("n1"), last)

    def test_older_in_window(self) -> None:
        """A timestamp inside the window but older than the last accepted one: 133."""
        self.assertEqual(self.register(N1, coa=COA_A, offset=2).code, mip.CODE_ACCEPTED)
        reply = self.register(N1, coa=COA_B, offset=1)
        self.assertRefused(reply, mip.CODE_HA_ID_MISMATCH, N1)
        self.assertEqual(self.coas(N1), [COA_A])

    def test_default_window(self) -> None:
        """Seven seconds either side are accepted, more is refused."""
        self.assertEqual(self.ha.replay_window, 7.0)
        self.assertEqual(self.register(N1, offset=-6.9).code, mip.CODE_ACCEPTED)
        self.assertEqual(self.register(N1, offset=6.9).code, mip.CODE_ACCEPTED)
        self.assertRefused(self.register(N2, offset=7.5), mip.CODE_HA_ID_MISMATCH, N2)
        self.assertRefused(self.register(N2, offset=-7.5), mip.CODE_HA_ID_MISMATCH, N2)
        self.assertEqual(self.coas(N2), [])

    def test_configured_window(self) -> None:
        ha = make_ha(self.clock, replay_window=60.0)
        self.addCleanup(ha.stop)
        for offset in (-50.0, 30.0):
            data = build_request(N1, self.clock, offset=offset)
            self.assertEqual(parse_reply(ha.handle_request(data, ("1.2.3.4", 1))).code, 0)
        data = build_request(N2, self.clock, offset=61)
        self.assertEqual(
            parse_reply(ha.handle_request(data, ("1.2.3.4", 1))).code, mip.CODE_HA_ID_MISMATCH
        )
        # The same +30 s is refused by a home agent with the default window.
        self.assertRefused(self.register(N1, offset=30.0), mip.CODE_HA_ID_MISMATCH, N1)

    def test_133_identification(self) -> None:
        """The 133 reply: the home agent's time high, the request's low 32 bits echoed."""
        self.clock.advance(0.75)
        data = build_request(N1, self.clock, offset=-1000.25)
        ident = request_ident(data)
        reply = self.send(data)
        self.assertRefused(reply, mip.CODE_HA_ID_MISMATCH, N1)
        self.assertEqual(reply.identification >> 32, ntp_seconds(to_ntp(self.clock.seconds())))
        self.assertEqual(reply.identification & 0xFFFFFFFF, ident & 0xFFFFFFFF)
        self.assertNotEqual(reply.identification >> 32, ident >> 32)
        self.assertEqual(self.coas(N1), [])

    def test_future_then_present(self) -> None:
        """A timestamp from the future is refused and does not block later ones."""
        self.assertRefused(self.register(N1, offset=600), mip.CODE_HA_ID_MISMATCH, N1)
        self.assertEqual(self.register(N1).code, mip.CODE_ACCEPTED)


class RefusalTests(_Base):
    """Each refusal carries the RFC's code, is signed, and changes nothing."""

    ha_kwargs = {"foreign_agents": [FA], "max_bindings": 3}

    def test_unrecognised_extension(self) -> None:
        """Types 0-127 unknown: 134; the message is refused whole."""
        for ext in ([mip.UnknownExtension(100, b"abc")], [mip.UnknownExtension(0, b"")]):
            reply = self.register(N1, extensions=ext)
            self.assertRefused(reply, mip.CODE_HA_POORLY_FORMED, N1)
        # Also when it follows the MN-HA extension (outside the protected part).
        reply = self.register(N1, after=[mip.UnknownExtension(127, b"x")])
        self.assertRefused(reply, mip.CODE_HA_POORLY_FORMED, N1)
        self.assertEqual(self.coas(N1), [])

    def test_skippable_extension(self) -> None:
        """Types 128-255 unknown: skipped, the request is accepted."""
        exts = [mip.UnknownExtension(128, b"abc"), mip.UnknownExtension(255, b"")]
        reply = self.register(N1, extensions=exts, after=[mip.UnknownExtension(200, b"z")])
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(signed_by(reply, N1))
        self.assertEqual(self.coas(N1), [COA_A])

    def test_two_mn_ha(self) -> None:
        data = build_request(N1, self.clock)
        data = mip.append_authenticator(data, mip.EXT_MN_HA, N1.spi, N1.key)
        self.assertRefused(self.send(data), mip.CODE_HA_POORLY_FORMED, N1)
        self.assertEqual(self.coas(N1), [])

    def test_unknown_home_agent(self) -> None:
        reply = self.register(N1, home_agent=IPv4Address("192.0.2.99"))
        self.assertRefused(reply, mip.CODE_HA_UNKNOWN_HA, N1)
        # The reply names the home agent's own address.
        self.assertEqual(reply.home_agent, HA_ADDR)
        self.assertEqual(self.coas(N1), [])

    def test_encapsulation(self) -> None:
        """Minimal encapsulation or GRE requested: 128."""
        for flag in (mip.FLAG_M, mip.FLAG_G, mip.FLAG_M | mip.FLAG_G):
            reply = self.register(N1, flags=mip.FLAG_D | flag)
            self.assertRefused(reply, mip.CODE_HA_UNSPECIFIED, N1)
        self.assertEqual(self.coas(N1), [])

    def test_table_full(self) -> None:
        """max_bindings: 130 once the table holds that many."""
        self.register(N1, coa=COA_A)
        self.register(N2, coa=COA_A, flags=mip.FLAG_S)
        self.register(N2, coa=COA_B, flags=mip.FLAG_S)
        self.assertEqual(self.ha.binding_count(), 3)
        self.assertRefused(self.register(N3, coa=COA_A), mip.CODE_HA_RESOURCES, N3)
        self.assertRefused(
            self.register(N2, coa=COA_C, flags=mip.FLAG_S), mip.CODE_HA_RESOURCES, N2
        )
        self.assertEqual(self.coas(N3), [])
        self.assertEqual(self.coas(N2), [COA_A, COA_B])
        # Renewing or replacing a binding does not grow the table.
        self.assertEqual(self.register(N1, coa=COA_B).code, mip.CODE_ACCEPTED)
        self.assertEqual(self.register(N2, coa=COA_A, flags=mip.FLAG_S).code, 0)
        # Freeing one makes room.
        self.register(N1, coa=N1.home_address, lifetime=0)
        self.assertEqual(self.register(N3, coa=COA_A).code, mip.CODE_ACCEPTED)

    def test_fa_ha_missing(self) -> None:
        """A request through a known foreign agent without FA-HA: 132."""
        reply = self.register(N1, (str(FA.address), 434))
        self.assertRefused(reply, mip.CODE_HA_FA_AUTH_FAILED, N1)
        self.assertEqual(self.coas(N1), [])

    def test_colocated_through_relay_without_fa_ha(self) -> None:
        """A co-located registration (D bit) from a relay's address without FA-HA claims no
        foreign-agent service (the relay is the client's VPN gateway): MN-HA decides, the
        translated source is a NAT; with D clear it is still 132."""
        # Not from a relay that is a VPN gateway: 132, as before.
        reply = self.register(N1, (str(FA.address), 20001), flags=mip.FLAG_D)
        self.assertRefused(reply, mip.CODE_HA_FA_AUTH_FAILED, N1)
        self.ha.foreign_agents[FA.address] = dataclasses.replace(FA, gateway=True)
        # Naming the relay's own address as co-located care-of address: 132.
        reply = self.register(N1, (str(FA.address), 20001), flags=mip.FLAG_D, coa=FA.address)
        self.assertRefused(reply, mip.CODE_HA_FA_AUTH_FAILED, N1)
        reply = self.register(N1, (str(FA.address), 20001), flags=mip.FLAG_D)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        b = self.binding(N1)
        self.assertEqual((b.path, b.source_host, b.source_port), ("direct", str(FA.address), 20001))
        self.assertFalse(fa_signed(reply))
        reply = self.register(N1, (str(FA.address), 20001), flags=0)
        self.assertRefused(reply, mip.CODE_HA_FA_AUTH_FAILED, N1)

    def _relayed(self, key: bytes, spi: int = FA.spi) -> bytes:
        data = build_request(N1, self.clock)
        return mip.append_authenticator(data, mip.EXT_FA_HA, spi, key)

    def test_fa_ha_wrong(self) -> None:
        for data in (self._relayed(WRONG_KEY), self._relayed(FA.key, spi=FA.spi + 1)):
            reply = self.send(data, (str(FA.address), 434))
            self.assertRefused(reply, mip.CODE_HA_FA_AUTH_FAILED, N1)
        self.assertEqual(self.coas(N1), [])

    def test_fa_ha_from_unknown_relay(self) -> None:
        """An FA-HA extension from an address with no FA entry: 132."""
        reply = self.send(self._relayed(FA.key), ("198.51.100.8", 434))
        self.assertRefused(reply, mip.CODE_HA_FA_AUTH_FAILED, N1)
        self.assertEqual(self.coas(N1), [])

    def test_fa_ha_good(self) -> None:
        reply = self.send(self._relayed(FA.key), (str(FA.address), 434))
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(signed_by(reply, N1))
        self.assertEqual(self.binding(N1).path, "relay")


def fa_signed(reply: mip.RegistrationReply, fa: ForeignAgentEntry = FA) -> bool:
    """Whether C{reply} ends with one valid FA-HA extension of C{fa}, after any MN-HA."""
    found = mip.auth_indices(reply.extensions, mip.EXT_FA_HA)
    if len(found) != 1 or found[0] != len(reply.extensions) - 1:
        return False
    ext = reply.extensions[found[0]]
    assert isinstance(ext, mip.AuthExtension)
    return ext.spi == fa.spi and mip.verify_authenticator(reply, found[0], fa.key, fa.algorithm)


def relayed_request(
    node: MobileNodeEntry,
    clock: Clock,
    *,
    fa_key: bytes = FA.key,
    fa_spi: int = FA.spi,
    **kwargs: Any,
) -> bytes:
    """A request of C{node} as a foreign agent relays it: care-of = the agent, FA-HA last."""
    kwargs.setdefault("coa", FA.address)
    kwargs.setdefault("flags", mip.FLAG_T)
    data = build_request(node, clock, **kwargs)
    return mip.append_authenticator(data, mip.EXT_FA_HA, fa_spi, fa_key)


class RelayedTests(_Base):
    """Requests relayed by a foreign agent (RFC 5944 sections 3.8.2 and 3.8.3)."""

    ha_kwargs = {"foreign_agents": [FA]}
    FA_SOURCE = (str(FA.address), 434)

    def test_accepted_reply_carries_fa_ha(self) -> None:
        """MN-HA first, then FA-HA over everything before it; a relay binding."""
        reply = self.send(relayed_request(N1, self.clock), self.FA_SOURCE)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(signed_by(reply, N1))
        self.assertTrue(fa_signed(reply))
        mnha = mip.find_auth(reply.extensions, mip.EXT_MN_HA)
        faha = mip.find_auth(reply.extensions, mip.EXT_FA_HA)
        assert mnha is not None and faha is not None
        self.assertLess(mnha, faha)
        b = self.binding(N1, FA.address)
        self.assertEqual(b.path, "relay")
        self.assertEqual((b.source_host, b.source_port), self.FA_SOURCE)
        self.assertFalse(b.nat)

    def test_refusals_carry_fa_ha(self) -> None:
        """The foreign agent must be able to check every answer it relays."""
        for kwargs, code, node in (
            ({"home_agent": IPv4Address("192.0.2.99")}, mip.CODE_HA_UNKNOWN_HA, N1),
            ({"offset": -600.0}, mip.CODE_HA_ID_MISMATCH, N1),
            ({"flags": mip.FLAG_G}, mip.CODE_HA_UNSPECIFIED, N1),
            ({"key": WRONG_KEY}, mip.CODE_HA_MN_AUTH_FAILED, None),
        ):
            reply = self.send(relayed_request(N1, self.clock, **kwargs), self.FA_SOURCE)
            self.assertEqual(reply.code, code)
            self.assertTrue(fa_signed(reply), code)
            if node is None:
                self.assertIsNone(mip.find_auth(reply.extensions, mip.EXT_MN_HA))
            else:
                self.assertTrue(signed_by(reply, node))
        self.assertEqual(self.coas(N1), [])

    def test_direct_reply_has_no_fa_ha(self) -> None:
        reply = self.register(N1)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(mip.auth_indices(reply.extensions, mip.EXT_FA_HA), [])
        self.assertEqual(self.binding(N1).path, "direct")

    def test_relayed_deregistration(self) -> None:
        self.send(relayed_request(N1, self.clock), self.FA_SOURCE)
        reply = self.send(relayed_request(N1, self.clock, lifetime=0), self.FA_SOURCE)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(fa_signed(reply))
        self.assertEqual(self.coas(N1), [])


class ForgedFAHATests(_Base):
    """A forged FA-HA extension: 132, signed for the node, and nothing changes at all."""

    ha_kwargs = {"foreign_agents": [FA]}
    FA_SOURCE = (str(FA.address), 434)

    def setUp(self) -> None:
        super().setUp()
        self.register(N1, coa=COA_A)
        self.register(N2, coa=COA_B, flags=mip.FLAG_S)
        self.clock.advance(1)
        self.changes: list[str] = []
        self.ha.add_listener(lambda node, bs: self.changes.append(node))
        self.before = self.snapshot()

    def snapshot(self) -> tuple[Any, ...]:
        return (
            {n: list(bs) for n, bs in self.ha.bindings.items()},
            sorted(self.store.load_bindings(), key=lambda b: b.node),
            self.store.last_identification("n1"),
            self.store.last_identification("n2"),
            self.ha.counters["accepted"],
        )

    def forgeries(self) -> list[tuple[str, bytes, tuple[str, int]]]:
        good = relayed_request(N1, self.clock)
        flipped = bytearray(good)
        flipped[-1] ^= 0x01
        return [
            ("wrong key", relayed_request(N1, self.clock, fa_key=WRONG_KEY), self.FA_SOURCE),
            ("wrong SPI", relayed_request(N1, self.clock, fa_spi=FA.spi + 1), self.FA_SOURCE),
            ("missing", build_request(N1, self.clock, coa=FA.address), self.FA_SOURCE),
            (
                "two",
                mip.append_authenticator(good, mip.EXT_FA_HA, FA.spi, FA.key),
                self.FA_SOURCE,
            ),
            ("flipped", bytes(flipped), self.FA_SOURCE),
            ("unknown relay", relayed_request(N1, self.clock), ("198.51.100.8", 434)),
            (
                "deregistration",
                relayed_request(N1, self.clock, lifetime=0, coa=COA_A, fa_key=WRONG_KEY),
                self.FA_SOURCE,
            ),
            (
                "all bindings",
                relayed_request(N2, self.clock, lifetime=0, coa=N2.home_address, fa_key=WRONG_KEY),
                self.FA_SOURCE,
            ),
        ]

    def test_changes_nothing(self) -> None:
        cases = self.forgeries()
        for why, data, source in cases:
            msg = mip.decode(data)
            node = N2 if msg.home_address == N2.home_address else N1
            reply = self.send(data, source)
            self.assertRefused(reply, mip.CODE_HA_FA_AUTH_FAILED, node)
            # Not signed for the foreign agent: its FA-HA was not proven.
            self.assertEqual(mip.auth_indices(reply.extensions, mip.EXT_FA_HA), [], why)
            self.assertEqual(self.snapshot(), self.before, why)
        self.assertEqual(self.changes, [])
        self.assertEqual(self.ha.counters["denied_132"], len(cases))
        self.assertEqual(self.coas(N1), [COA_A])
        self.assertEqual(self.coas(N2), [COA_B])
        # The node's next genuine request still goes through: nothing was burnt.
        self.assertEqual(self.register(N1, coa=COA_C).code, mip.CODE_ACCEPTED)

    def test_expiry_unaffected(self) -> None:
        """A refused forgery neither extends nor shortens the bindings' lifetimes."""
        for _, data, source in self.forgeries():
            self.send(data, source)
        self.clock.advance(600 - 1 - 0.1)
        self.assertEqual(self.coas(N1), [COA_A])
        self.clock.advance(0.1)
        self.assertEqual(self.coas(N1), [])


class DeregistrationTests(_Base):
    """Lifetime 0 removes one binding; care-of = home address removes them all."""

    def setUp(self) -> None:
        super().setUp()
        for coa in (COA_A, COA_B, COA_C):
            self.register(N2, coa=coa, flags=mip.FLAG_S)
        self.register(N1, coa=COA_A)
        self.assertEqual(self.coas(N2), [COA_A, COA_B, COA_C])

    def test_one_care_of(self) -> None:
        reply = self.register(N2, coa=COA_B, lifetime=0, flags=mip.FLAG_S)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(reply.lifetime, 0)
        self.assertTrue(signed_by(reply, N2))
        self.assertEqual(self.coas(N2), [COA_A, COA_C])
        self.assertEqual(self.coas(N1), [COA_A])
        self.assertEqual(self.ha.counters["deregistrations"], 1)

    def test_all(self) -> None:
        reply = self.register(N2, coa=N2.home_address, lifetime=0)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(self.coas(N2), [])
        self.assertNotIn("n2", self.ha.bindings)
        self.assertEqual(self.coas(N1), [COA_A])

    def test_home_address_any_lifetime(self) -> None:
        """care-of = home address deregisters whatever lifetime is asked for."""
        reply = self.register(N2, coa=N2.home_address, lifetime=600)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(reply.lifetime, 0)
        self.assertEqual(self.coas(N2), [])

    def test_last_binding_stops_timer(self) -> None:
        self.register(N2, coa=N2.home_address, lifetime=0)
        self.register(N1, coa=N1.home_address, lifetime=0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SimultaneousTests(_Base):
    """The S bit: up to the node's maximum of bindings; code 1 when not allowed."""

    def test_up_to_maximum(self) -> None:
        for coa in (COA_A, COA_B, COA_C):
            reply = self.register(N2, coa=coa, flags=mip.FLAG_S)
            self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(self.coas(N2), [COA_A, COA_B, COA_C])
        reply = self.register(N2, coa=COA_D, flags=mip.FLAG_S)
        self.assertRefused(reply, mip.CODE_HA_TOO_MANY_BINDINGS, N2)
        self.assertEqual(self.coas(N2), [COA_A, COA_B, COA_C])
        # Renewing one of them is fine.
        self.clock.advance(10)
        reply = self.register(N2, coa=COA_B, flags=mip.FLAG_S, lifetime=900)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(self.coas(N2), [COA_A, COA_B, COA_C])
        self.assertEqual(self.binding(N2, COA_B).expires, NOW + 10 + 900)

    def test_without_s_replaces_all(self) -> None:
        for coa in (COA_A, COA_B):
            self.register(N2, coa=coa, flags=mip.FLAG_S)
        reply = self.register(N2, coa=COA_C)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertEqual(self.coas(N2), [COA_C])

    def test_not_allowed(self) -> None:
        """S set for a node allowed one binding: accepted with code 1, one binding."""
        reply = self.register(N1, coa=COA_A, flags=mip.FLAG_S | mip.FLAG_D)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED_NO_SIMULTANEOUS)
        self.assertTrue(reply.accepted)
        self.assertTrue(signed_by(reply, N1))
        reply = self.register(N1, coa=COA_B, flags=mip.FLAG_S | mip.FLAG_D)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED_NO_SIMULTANEOUS)
        self.assertEqual(self.coas(N1), [COA_B])


class ExpiryTests(_Base):
    """Bindings lapse on the clock, in the engine and in the store."""

    def test_expires(self) -> None:
        self.register(N1, lifetime=100)
        self.clock.advance(99.9)
        self.assertEqual(self.coas(N1), [COA_A])
        self.clock.advance(0.1)
        self.assertEqual(self.coas(N1), [])
        self.assertEqual(self.ha.counters["bindings_expired"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_renewal_extends(self) -> None:
        self.register(N1, lifetime=100)
        self.clock.advance(50)
        self.register(N1, lifetime=100)
        self.clock.advance(60)
        self.assertEqual(self.coas(N1), [COA_A])
        self.clock.advance(40)
        self.assertEqual(self.coas(N1), [])

    def test_each_on_its_own_time(self) -> None:
        self.register(N2, coa=COA_A, flags=mip.FLAG_S, lifetime=100)
        self.register(N2, coa=COA_B, flags=mip.FLAG_S, lifetime=300)
        self.register(N1, coa=COA_C, lifetime=200)
        self.clock.advance(100)
        self.assertEqual(self.coas(N2), [COA_B])
        self.assertEqual(self.coas(N1), [COA_C])
        self.clock.advance(100)
        self.assertEqual(self.coas(N1), [])
        self.assertEqual(self.coas(N2), [COA_B])
        self.clock.advance(100)
        self.assertEqual(self.coas(N2), [])
        self.assertEqual(self.ha.counters["bindings_expired"], 3)

    def test_stop(self) -> None:
        """stop() cancels the timer and keeps the bindings in the store."""
        self.register(N1, lifetime=100)
        self.ha.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.store.load_bindings()), 1)


class NATTests(_Base):
    """RFC 3519 NAT detection and the UDP Tunnel Reply extension."""

    ha_kwargs = {"keepalive_interval": 25}

    @staticmethod
    def tunnel_reply(reply: mip.RegistrationReply) -> mip.UDPTunnelReply | None:
        i = mip.find_extension(reply.extensions, mip.UDPTunnelReply)
        if i is None:
            return None
        ext = reply.extensions[i]
        assert isinstance(ext, mip.UDPTunnelReply)
        return ext

    def test_behind_nat(self) -> None:
        """The outer source differs from the care-of address: UDP tunnelling."""
        reply = self.register(
            N1, (NAT_PUBLIC, 40001), coa=COA_A, extensions=[mip.UDPTunnelRequest()]
        )
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(signed_by(reply, N1))
        self.assertEqual(self.tunnel_reply(reply), mip.UDPTunnelReply(code=0, keepalive=25))
        # The extension comes before MN-HA, so it is authenticated.
        utrp = mip.find_extension(reply.extensions, mip.UDPTunnelReply)
        mnha = mip.find_auth(reply.extensions, mip.EXT_MN_HA)
        assert utrp is not None and mnha is not None
        self.assertLess(utrp, mnha)
        b = self.binding(N1)
        self.assertTrue(b.nat)
        self.assertEqual(b.keepalive, 25)
        self.assertEqual((b.source_host, b.source_port), (NAT_PUBLIC, 40001))

    def test_forced(self) -> None:
        """The F bit asks for UDP tunnelling without NAT."""
        reply = self.register(
            N1, (str(COA_A), 434), coa=COA_A, extensions=[mip.UDPTunnelRequest(force=True)]
        )
        utrp = self.tunnel_reply(reply)
        assert utrp is not None
        self.assertEqual(utrp.code, 0)
        self.assertTrue(utrp.force)
        self.assertTrue(self.binding(N1).nat)

    def test_no_nat(self) -> None:
        """Source = care-of address, no F bit: no tunnel reply, no NAT."""
        reply = self.register(N1, (str(COA_A), 434), coa=COA_A, extensions=[mip.UDPTunnelRequest()])
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertIsNone(self.tunnel_reply(reply))
        self.assertFalse(self.binding(N1).nat)
        self.assertEqual(self.binding(N1).keepalive, 0)

    def test_not_requested(self) -> None:
        """Without a UDP Tunnel Request there is no UDP tunnelling, NAT or not."""
        reply = self.register(N1, (NAT_PUBLIC, 40001), coa=COA_A)
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertIsNone(self.tunnel_reply(reply))
        self.assertFalse(self.binding(N1).nat)

    def test_nat_then_not(self) -> None:
        """Moving out from behind the NAT clears the flag."""
        self.register(N1, (NAT_PUBLIC, 40001), extensions=[mip.UDPTunnelRequest()])
        self.assertTrue(self.binding(N1).nat)
        self.register(N1, (str(COA_B), 434), coa=COA_B, extensions=[mip.UDPTunnelRequest()])
        self.assertFalse(self.binding(N1, COA_B).nat)


class MalformedTests(_Base):
    """What cannot be a request is dropped and counted; broken extensions get 134."""

    def test_dropped(self) -> None:
        good = build_request(N1, self.clock)
        reply = mip.encode(
            mip.RegistrationReply(0, 600, N1.home_address, HA_ADDR, request_ident(good))
        )
        datagrams = [
            b"",
            b"\x01",
            good[:23],
            bytes(23),
            b"\x03" + good[1:],  # a reply type on request bytes
            reply + bytes(8),  # a real reply, padded to 28 bytes
            b"\x02" + good[1:],
            b"\xff" * 40,
        ]
        for data in datagrams:
            self.assertIsNone(self.ha.handle_request(data, ("198.51.100.1", 434)), data)
        self.assertEqual(self.ha.counters["dropped_malformed"], len(datagrams))
        self.assertEqual(self.ha.counters["requests_received"], len(datagrams))
        self.assertEqual(self.ha.counters["replies_sent"], 0)
        self.assertEqual(self.coas(N1), [])

    def test_broken_extensions(self) -> None:
        """A readable fixed part with unreadable extensions: 134, nothing changes.

        The request cannot be authenticated, so (as with 131) the reply is
        not signed.
        """
        good = build_request(N1, self.clock, ident=to_ntp(NOW) + 77)
        fixed = good[:24]
        for tail in (
            b"\x20",  # no length byte
            b"\x20\x28" + bytes(5),  # claims 40 bytes, has 5
            good[24:-1],  # MN-HA one byte short
            b"\x90\x06\x01\x00\x00\x04\x00\x00",  # UDP tunnel request, bad sub-type
            b"\x20\x03abc",  # MN-HA shorter than SPI + 1
        ):
            reply = self.send(fixed + tail, (str(COA_A), 434))
            self.assertRefused(reply, mip.CODE_HA_POORLY_FORMED)
            self.assertEqual(reply.home_address, N1.home_address)
            self.assertEqual(reply.identification, to_ntp(NOW) + 77)
        self.assertEqual(self.ha.counters["dropped_malformed"], 5)
        self.assertEqual(self.coas(N1), [])
        self.assertIsNone(self.store.last_identification("n1"))
