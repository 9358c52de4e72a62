# -*- test-case-name: tests.test_ike_rekey -*-
"""Tests for CREATE_CHILD_SA rekeying in L{smobility.engines.ike} (RFC 7296 2.8, 2.18).

Two engines joined in memory on C{task.Clock}, each driving a small ESP data
plane (L{DataPlane}: inbound SAs by SPI, one outbound SA, as
L{smobility.engines.tunnel.TunnelEngine} keeps them) from C{on_child_sa} and
the events.  The link between them is two FIFO queues in which IKE messages
and ESP packets wait their turn, so that packets sealed with the old SA are
still in flight while the rekey goes on: every packet sent must be opened,
none refused.

Checked: CHILD_SA rekeys started by either side, with and without PFS, by
soft lifetime and on request (C{rekey_child}); the KEYMAT against an
independent recomputation from the nonces (and g^ir) on the wire; simultaneous
rekeys (2.8.1) ending with one CHILD_SA pair whoever wins; refusals
(NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, CHILD_SA_NOT_FOUND, TEMPORARY_FAILURE,
INVALID_KE_PAYLOAD) leaving the old SA at work; a peer that never deletes the
old SA; lost messages; the IKE SA rekeyed by either side (SKEYSEED recomputed
independently), its CHILD_SA moved along, then rekeyed, and liveness on the new
IKE SA; simultaneous IKE SA rekeys.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines import ike, ikecrypto
from smobility.engines.ike import (
    IKESA,
    ChildSA,
    ChildSADown,
    ChildSARekeyed,
    ChildState,
    Datagram,
    ESPSuite,
    IKEEvent,
    IKEFailed,
    IKESADown,
    IKESARekeyed,
    IKESuite,
    State,
)
from smobility.engines.ikecrypto import Prf
from smobility.wire import ikev2
from smobility.wire.esp import ESPError, InboundSA, OutboundSA, parse_spi
from smobility.wire.ikev2 import (
    KE,
    SA,
    Message,
    Nonce,
    Notify,
    Proposal,
    TrafficSelector,
    TSi,
    TSr,
)
from tests.test_ike import I_HOST, R_HOST, Pair, esp_both_ways

INNER = bytes.fromhex("4500001c00000000400100000a4d000a0a4d0001") + bytes(8)


# ---------------------------------------------------------------------------
# A data plane and a link with packets in flight
# ---------------------------------------------------------------------------


class DataPlane:
    """ESP SAs installed the way the engine asks: make before break.

    ``on_child_sa``: the inbound SA goes in at once; the outbound SA is used
    at once for a first CHILD_SA, and from :class:`ChildSARekeyed` on for one
    that replaces another.  :class:`ChildSADown` takes the inbound SA out.
    """

    def __init__(self) -> None:
        self.inbound: dict[int, InboundSA] = {}
        self.outbound: OutboundSA | None = None
        self.out_child: ChildSA | None = None
        self.pending: dict[int, tuple[ChildSA, OutboundSA]] = {}
        self.sent: Counter[int] = Counter()
        self.received: Counter[int] = Counter()
        self.refused: Counter[str] = Counter()
        self.log: list[tuple[str, int]] = []
        # Packets opened by an SA older than the newest inbound SA: in flight
        # while the new one went in.
        self.late: Counter[int] = Counter()
        self._newest = 0

    def on_child_sa(self, child: ChildSA) -> None:
        """Install the inbound SA; the outbound one now or later."""
        self.inbound[child.inbound_spi] = InboundSA.from_keymat(
            child.inbound_spi, child.inbound_keymat
        )
        out = OutboundSA.from_keymat(child.outbound_spi, child.outbound_keymat)
        self.log.append(("install", child.inbound_spi))
        self._newest = child.inbound_spi
        if child.replaces is None:
            self.outbound, self.out_child = out, child
            self.log.append(("switch", child.inbound_spi))
        else:
            self.pending[child.inbound_spi] = (child, out)

    def on_event(self, event: IKEEvent) -> None:
        """Switch outbound on ChildSARekeyed; remove on ChildSADown."""
        if isinstance(event, ChildSARekeyed):
            child, out = self.pending.pop(event.new.inbound_spi)
            self.outbound, self.out_child = out, child
            self.log.append(("switch", child.inbound_spi))
        elif isinstance(event, ChildSADown):
            spi = event.child.inbound_spi
            self.inbound.pop(spi, None)
            self.pending.pop(spi, None)
            self.log.append(("remove", spi))
            if self.out_child is not None and self.out_child.inbound_spi == spi:
                self.outbound = self.out_child = None

    def seal(self) -> bytes | None:
        """One packet with the current outbound SA (None without one)."""
        if self.outbound is None:
            return None
        self.sent[self.outbound.spi] += 1
        return self.outbound.seal(INNER)

    def open(self, packet: bytes) -> None:
        """Open one packet, counting it as received or refused."""
        spi = parse_spi(packet)
        sa = self.inbound.get(spi)
        if sa is None:
            self.refused["unknown_spi"] += 1
            return
        try:
            inner = sa.open(packet)
        except ESPError as e:
            self.refused[e.reason] += 1
            return
        assert inner == INNER
        self.received[spi] += 1
        if spi != self._newest:
            self.late[spi] += 1


Item = tuple[str, Any]


class Net:
    """Two engines (a L{Pair}), their data planes, and a FIFO link each way."""

    def __init__(self, **kw: Any) -> None:
        self.p = Pair(**kw)
        self.dp = {"i": DataPlane(), "r": DataPlane()}
        self.flight: dict[str, deque[Item]] = {"i": deque(), "r": deque()}
        self.drop: Callable[[str, Datagram], bool] | None = None
        for side, engine in (("i", self.p.ini), ("r", self.p.res)):
            engine.on_child_sa = self._child_hook(side)
            engine.on_event = self._event_hook(side)

    def _child_hook(self, side: str) -> Callable[[ChildSA], None]:
        def hook(child: ChildSA) -> None:
            self.p.children[side].append(child)
            self.dp[side].on_child_sa(child)

        return hook

    def _event_hook(self, side: str) -> Callable[[IKEEvent], None]:
        def hook(event: IKEEvent) -> None:
            self.p.events[side].append(event)
            self.dp[side].on_event(event)

        return hook

    def engine(self, side: str) -> ike.IKEEngine:
        """The engine of one side."""
        return self.p.ini if side == "i" else self.p.res

    def collect(self) -> None:
        """IKE messages the engines want sent join the queues."""
        for side in ("i", "r"):
            for d in self.engine(side).datagrams_to_send():
                self.p.wire.append((side, d))
                if self.drop is not None and self.drop(side, d):
                    continue
                self.flight[side].append(("ike", d))

    def traffic(self, count: int = 1) -> None:
        """Each side sends ``count`` ESP packets with its current outbound SA."""
        for side in ("i", "r"):
            for _ in range(count):
                packet = self.dp[side].seal()
                if packet is not None:
                    self.flight[side].append(("esp", packet))

    def deliver(self, side: str) -> None:
        """The oldest item in flight from ``side`` arrives."""
        kind, item = self.flight[side].popleft()
        target = "r" if side == "i" else "i"
        if kind == "ike":
            self.engine(target).receive(item.message, item.local, item.remote)
        else:
            self.dp[target].open(item)

    def run(self, steps: int, traffic: int = 1) -> None:
        """Per step: send, then one item arrives each way (the backlog keeps packets in flight)."""
        for _ in range(steps):
            self.collect()
            self.traffic(traffic)
            for side in ("i", "r"):
                if self.flight[side]:
                    self.deliver(side)

    def drain(self) -> None:
        """Deliver everything until nothing moves."""
        for _ in range(1000):
            self.collect()
            if not self.flight["i"] and not self.flight["r"]:
                return
            for side in ("i", "r"):
                while self.flight[side]:
                    self.deliver(side)
        raise AssertionError("the engines never went quiet")

    def establish(self) -> None:
        """IKE_SA_INIT and IKE_AUTH, then a backlog of packets in flight."""
        self.p.start()
        self.drain()
        self.traffic(6)

    def tick(self, seconds: float) -> None:
        """Advance the clock, run both engines' timers."""
        self.p.tick(seconds)

    def sa(self, side: str) -> IKESA:
        """The one established IKE SA of a side."""
        (sa,) = self.engine(side).established()
        return sa

    def child(self, side: str) -> ChildSA:
        """The one CHILD_SA of a side (the engine's copy)."""
        (child,) = self.sa(side).children
        return child


def assert_no_loss(test: SynchronousTestCase, net: Net) -> None:
    """Every packet sent arrived and opened; none was refused."""
    for side, other in (("i", "r"), ("r", "i")):
        test.assertEqual(dict(net.dp[side].refused), {}, f"refused at {side}")
        test.assertEqual(
            sum(net.dp[other].sent.values()), sum(net.dp[side].received.values()), side
        )
        test.assertGreater(sum(net.dp[side].received.values()), 0)


def assert_one_pair(test: SynchronousTestCase, net: Net) -> tuple[ChildSA, ChildSA]:
    """Each side ends with one CHILD_SA, the other's mirror image, and only it in its data plane."""
    ci, cr = net.child("i"), net.child("r")
    esp_both_ways(test, ci, cr)
    for side, c in (("i", ci), ("r", cr)):
        dp = net.dp[side]
        test.assertEqual(list(dp.inbound), [c.inbound_spi], side)
        assert dp.outbound is not None
        test.assertEqual(dp.outbound.spi, c.outbound_spi, side)
        test.assertEqual(dp.pending, {}, side)
        test.assertIs(net.engine(side).child_state(c.inbound_spi), ChildState.INSTALLED)
    return ci, cr


def of(net: Net, side: str, kind: type) -> list[Any]:
    """Events of one class on one side."""
    return net.p.of(side, kind)


def opened(net: Net, side: str, d: Datagram, sa: IKESA) -> Message:
    """Decrypt a message ``side`` sent, with the receiving side's copy of ``sa`` keys."""
    assert sa.sk_in is not None
    return ikecrypto.open_message(sa.sk_in, d.message, ikev2.decode_message(d.message))


def exchanges(net: Net, exchange: int) -> list[tuple[str, Datagram]]:
    """The datagrams on the wire of one exchange type."""
    return [
        (s, d) for s, d in net.p.wire if ikev2.decode_header(d.message).exchange == exchange
    ]


class DHRecorder:
    """Wraps ``ikecrypto.dh_generate`` and keeps every key it makes, by public value."""

    def __init__(self) -> None:
        self.keys: dict[bytes, ikecrypto.DHPrivate] = {}
        self._real = ikecrypto.dh_generate

    def __call__(self, group: int) -> ikecrypto.DHPrivate:
        key = self._real(group)
        self.keys[key.public] = key
        return key


# ---------------------------------------------------------------------------
# CHILD_SA rekeying
# ---------------------------------------------------------------------------


class ChildRekeyTests(SynchronousTestCase):
    """CREATE_CHILD_SA rekeying of the CHILD_SA (sections 1.3.3, 2.8, 2.17)."""

    def rekey_under_traffic(self, side: str, pfs: bool) -> Net:
        """Rekey from ``side`` while both sides send all along; check no loss."""
        net = Net()
        net.engine(side).config.pfs = pfs
        net.establish()
        net.run(8)
        old_i, old_r = net.child("i"), net.child("r")
        old = old_i if side == "i" else old_r
        self.assertTrue(net.engine(side).rekey_child(old.outbound_spi))
        net.run(80)
        net.drain()
        assert_no_loss(self, net)
        new_i, new_r = assert_one_pair(self, net)
        self.assertNotIn(new_i.inbound_spi, (old_i.inbound_spi, old_r.inbound_spi))
        self.assertNotEqual(new_i.inbound_keymat, old_i.inbound_keymat)
        for s, old_c, new_c in (("i", old_i, new_i), ("r", old_r, new_r)):
            self.assertEqual(new_c.replaces, old_c.inbound_spi, s)
            self.assertEqual(new_c.pfs_group, ikev2.DH_ECP_256 if pfs else None, s)
            self.assertEqual((new_c.local_ts, new_c.remote_ts), (old_c.local_ts, old_c.remote_ts))
            self.assertEqual(new_c.internal_address, old_c.internal_address)
            (rekeyed,) = of(net, s, ChildSARekeyed)
            self.assertEqual(
                (rekeyed.old.inbound_spi, rekeyed.new.inbound_spi),
                (old_c.inbound_spi, new_c.inbound_spi),
            )
            (down,) = of(net, s, ChildSADown)
            self.assertEqual((down.child.inbound_spi, down.reason), (old_c.inbound_spi, "rekeyed"))
            # Make before break: new inbound in, then outbound switched, then old out.
            log = net.dp[s].log
            self.assertLess(log.index(("install", new_c.inbound_spi)),
                            log.index(("switch", new_c.inbound_spi)))
            self.assertLess(log.index(("switch", new_c.inbound_spi)),
                            log.index(("remove", old_c.inbound_spi)))
            # The old SA carried traffic before, the new one after; packets
            # sealed with the old one were still in flight when the new one
            # went in, and were taken.
            self.assertGreater(net.dp[s].received[old_c.inbound_spi], 0, s)
            self.assertGreater(net.dp[s].late[old_c.inbound_spi], 0, s)
            self.assertGreater(net.dp[s].received[new_c.inbound_spi], 0, s)
            self.assertEqual(of(net, s, IKEFailed), [])
        self.assertEqual(of(net, "i", IKESADown) + of(net, "r", IKESADown), [])
        # After the switch only the new SAs carry packets.
        before = dict(net.dp["r"].received)
        net.traffic(3)
        net.drain()
        self.assertEqual(net.dp["r"].received[new_r.inbound_spi],
                         before[new_r.inbound_spi] + 3)
        return net

    def test_initiator_rekeys(self) -> None:
        """The IKE initiator rekeys the CHILD_SA under traffic: no packet lost or refused."""
        net = self.rekey_under_traffic("i", pfs=False)
        (_, req), (_, resp) = exchanges(net, ikev2.CREATE_CHILD_SA)
        sa_r, sa_i = net.sa("r"), net.sa("i")
        request, response = opened(net, "i", req, sa_r), opened(net, "r", resp, sa_i)
        old_i = net.p.children["i"][0]
        # HDR, SK {N(REKEY_SA), SA, Ni, TSi, TSr}: the SPI is the one the initiator
        # receives on (section 3.10.1); no KE without PFS.
        kinds = [type(x).__name__ for x in request.payloads]
        self.assertEqual(kinds, ["Notify", "SA", "Nonce", "TSi", "TSr"])
        rekey = request.payloads[0]
        assert isinstance(rekey, Notify)
        self.assertEqual(
            (rekey.type, rekey.protocol, rekey.spi),
            (ikev2.N_REKEY_SA, ikev2.PROTO_ESP, struct.pack("!I", old_i.inbound_spi)),
        )
        self.assertEqual(request.flags & ikev2.FLAG_INITIATOR, ikev2.FLAG_INITIATOR)
        self.assertEqual([type(x).__name__ for x in response.payloads],
                         ["SA", "Nonce", "TSi", "TSr"])
        # KEYMAT = prf+(SK_d, Ni | Nr) with this exchange's nonces, recomputed.
        ni, nr = request.find(Nonce), response.find(Nonce)
        assert ni is not None and nr is not None and sa_i.keys is not None
        stream = Prf(ikev2.PRF_HMAC_SHA2_256).plus(sa_i.keys.sk_d, ni.data + nr.data, 40)
        new_i = net.child("i")
        self.assertEqual(new_i.outbound_keymat, stream[:20])
        self.assertEqual(new_i.inbound_keymat, stream[20:])
        # Then INFORMATIONAL Delete of the old SA, answered with its pair.
        infos = exchanges(net, ikev2.INFORMATIONAL)
        (side, delete_req), (_, delete_resp) = infos
        self.assertEqual(side, "i")
        self.assertEqual(opened(net, "i", delete_req, sa_r).payloads,
                         (ikev2.Delete(ikev2.PROTO_ESP, (struct.pack("!I", old_i.inbound_spi),)),))
        old_r = net.p.children["r"][0]
        self.assertEqual(opened(net, "r", delete_resp, sa_i).payloads,
                         (ikev2.Delete(ikev2.PROTO_ESP, (struct.pack("!I", old_r.inbound_spi),)),))

    def test_initiator_rekeys_with_pfs(self) -> None:
        """With PFS: KE of the IKE SA's group both ways; KEYMAT = prf+(SK_d, g^ir | Ni | Nr)."""
        recorder = DHRecorder()
        self.patch(ikecrypto, "dh_generate", recorder)
        net = self.rekey_under_traffic("i", pfs=True)
        (_, req), (_, resp) = exchanges(net, ikev2.CREATE_CHILD_SA)
        sa_i, sa_r = net.sa("i"), net.sa("r")
        request, response = opened(net, "i", req, sa_r), opened(net, "r", resp, sa_i)
        self.assertEqual([type(x).__name__ for x in request.payloads],
                         ["Notify", "SA", "Nonce", "KE", "TSi", "TSr"])
        sa_p = request.find(SA)
        assert sa_p is not None
        self.assertEqual(ike.esp_groups(sa_p.proposals[0]), (ikev2.DH_ECP_256,))
        kei, ker = request.find(KE), response.find(KE)
        ni, nr = request.find(Nonce), response.find(Nonce)
        assert kei is not None and ker is not None and ni is not None and nr is not None
        self.assertEqual((kei.group, ker.group), (ikev2.DH_ECP_256, ikev2.DH_ECP_256))
        shared = recorder.keys[kei.data].shared(ker.data)
        self.assertEqual(shared, recorder.keys[ker.data].shared(kei.data))
        assert sa_i.keys is not None
        stream = Prf(ikev2.PRF_HMAC_SHA2_256).plus(
            sa_i.keys.sk_d, shared + ni.data + nr.data, 40
        )
        new_i = net.child("i")
        self.assertEqual(new_i.outbound_keymat + new_i.inbound_keymat, stream)

    def test_responder_rekeys(self) -> None:
        """The IKE responder rekeys the CHILD_SA (its request carries I=0): no loss."""
        net = self.rekey_under_traffic("r", pfs=False)
        (side, req), _ = exchanges(net, ikev2.CREATE_CHILD_SA)
        self.assertEqual(side, "r")
        self.assertEqual(ikev2.decode_header(req.message).flags & ikev2.FLAG_INITIATOR, 0)
        # The exchange initiator's selectors are TSi: the responder's side here.
        request = opened(net, "r", req, net.sa("i"))
        old_r = net.p.children["r"][0]
        tsi, tsr = request.find(TSi), request.find(TSr)
        assert tsi is not None and tsr is not None
        self.assertEqual((tsi.selectors, tsr.selectors), (old_r.local_ts, old_r.remote_ts))

    def test_responder_rekeys_with_pfs(self) -> None:
        """The IKE responder rekeys with PFS: no loss."""
        self.rekey_under_traffic("r", pfs=True)

    def test_every_suite_and_group(self) -> None:
        """Rekeys with PFS under every IKE suite (the PFS group is the IKE SA's)."""
        for suite, esp in (
            ("aes256gcm16-prfsha384-x25519", "aes256gcm16"),
            ("aes256gcm16-prfsha384-ecp384", "aes128gcm16"),
            ("aes128-sha256-modp2048", "aes256gcm16"),
        ):
            net = Net(i_ike=[suite], r_ike=[suite], i_esp=[esp], r_esp=[esp])
            net.p.ini.config.pfs = True
            net.establish()
            self.assertTrue(net.p.ini.rekey_child(net.child("i").outbound_spi))
            net.run(60)
            net.drain()
            assert_no_loss(self, net)
            ci, _ = assert_one_pair(self, net)
            self.assertEqual(ci.pfs_group, IKESuite.parse(suite).dh)
            self.assertEqual(str(ci.suite), esp)

    def test_soft_lifetime(self) -> None:
        """child_rekey_time: the initiator rekeys on time, again and again; get_timer says when."""
        net = Net()
        net.p.ini.config.child_rekey_time = 100.0
        net.establish()
        self.assertEqual(net.p.ini.get_timer(), 100.0)
        self.assertIsNone(net.p.res.get_timer())
        spis = [net.child("i").inbound_spi]
        for n in range(1, 4):
            net.tick(99.0)
            net.run(3)
            self.assertEqual(net.child("i").inbound_spi, spis[-1])
            net.tick(1.0)
            net.run(60)
            net.drain()
            spis.append(net.child("i").inbound_spi)
            self.assertEqual(len(of(net, "i", ChildSARekeyed)), n)
            self.assertEqual(net.p.ini.get_timer(), 100.0 * (n + 1))
        self.assertEqual(len(set(spis)), 4)
        assert_no_loss(self, net)
        assert_one_pair(self, net)
        self.assertEqual(net.p.ini.counters["child_rekeys"], 3)
        self.assertEqual(net.p.res.counters["child_rekeys"], 3)

    def test_jitter(self) -> None:
        """rekey_jitter shortens the lifetime by a random fraction, never more."""
        net = Net()
        net.p.ini.config.child_rekey_time = 100.0
        net.p.ini.config.rekey_jitter = 0.5
        net.establish()
        when = net.p.ini.get_timer()
        assert when is not None
        self.assertTrue(50.0 <= when <= 100.0, when)

    def test_rekey_child_api(self) -> None:
        """rekey_child by outbound or inbound SPI; twice is one rekey; unknown SPIs are False."""
        net = Net()
        net.establish()
        child = net.child("i")
        self.assertFalse(net.p.ini.rekey_child(child.inbound_spi))
        self.assertFalse(net.p.ini.rekey_child(12345))
        self.assertTrue(net.p.ini.rekey_child(child.inbound_spi, outbound=False))
        self.assertIs(net.p.ini.child_state(child.inbound_spi), ChildState.REKEYING)
        self.assertTrue(net.p.ini.rekey_child(child.outbound_spi))
        self.assertEqual(len(net.p.ini.datagrams_to_send()), 1)
        self.assertIsNone(net.p.ini.child_state(99))

    def test_sequence_space_trigger(self) -> None:
        """The data plane's OutboundSA.needs_rekey leads to rekey_child; the new SA starts at 1."""
        net = Net()
        net.establish()
        child = net.child("i")
        dp = net.dp["i"]
        dp.outbound = OutboundSA.from_keymat(
            child.outbound_spi, child.outbound_keymat, seq=2**32 - 200, soft_limit=2**32 - 190
        )
        # Packets numbered near the end of the space are new to the peer's window.
        net.run(12)
        assert dp.outbound is not None
        self.assertTrue(dp.outbound.needs_rekey)
        self.assertTrue(net.p.ini.rekey_child(dp.outbound.spi))
        net.run(10)
        net.drain()
        assert_no_loss(self, net)
        assert_one_pair(self, net)
        assert dp.outbound is not None
        self.assertLess(dp.outbound.seq, 100)

    def test_retransmitted_request_answered_from_store(self) -> None:
        """The CREATE_CHILD_SA answer is lost: the repeated request gets the same bytes.

        No second SA is made.
        """
        net = Net()
        net.establish()
        lost: list[Datagram] = []

        def drop(side: str, d: Datagram) -> bool:
            h = ikev2.decode_header(d.message)
            if side == "r" and h.exchange == ikev2.CREATE_CHILD_SA and not lost:
                lost.append(d)
                return True
            return False

        net.drop = drop
        net.p.ini.rekey_child(net.child("i").outbound_spi)
        net.drain()
        self.assertEqual(len(net.p.children["r"]), 2)
        net.tick(1.0)
        net.run(30)
        net.drain()
        replies = [d for s, d in exchanges(net, ikev2.CREATE_CHILD_SA) if s == "r"]
        self.assertEqual(len(replies), 2)
        self.assertEqual(replies[0].message, replies[1].message)
        self.assertEqual(net.p.res.counters["repeated_requests"], 1)
        self.assertEqual(len(net.p.children["r"]), 2)
        assert_no_loss(self, net)
        assert_one_pair(self, net)


class CollisionTests(SynchronousTestCase):
    """Both sides rekey the same CHILD_SA at once (section 2.8.1)."""

    def collide(self, pfs: bool = False) -> str:
        """Both rekey at once under traffic; check the end state; return the winner."""
        net = Net()
        net.p.ini.config.pfs = net.p.res.config.pfs = pfs
        net.establish()
        net.run(4)
        old_i, old_r = net.child("i"), net.child("r")
        self.assertTrue(net.p.ini.rekey_child(old_i.outbound_spi))
        self.assertTrue(net.p.res.rekey_child(old_r.outbound_spi))
        net.run(100)
        net.drain()
        assert_no_loss(self, net)
        ci, cr = assert_one_pair(self, net)
        self.assertEqual(net.p.ini.counters["rekey_collisions"], 1)
        self.assertEqual(net.p.res.counters["rekey_collisions"], 1)
        for side in ("i", "r"):
            # Three CHILD_SAs were installed on each side (the first, and one
            # per exchange); the old one and the redundant one went down.
            self.assertEqual(len(net.p.children[side]), 3)
            reasons = sorted(e.reason for e in of(net, side, ChildSADown))
            self.assertEqual(reasons, ["redundant", "rekeyed"])
            self.assertEqual(len(of(net, side, ChildSARekeyed)), 1)
            self.assertEqual(net.dp[side].pending, {})
            self.assertEqual(of(net, side, IKEFailed), [])
        # The winner deleted the old SA; the loser deleted the SA of its own
        # exchange, the one holding the lowest nonce.
        deletes: dict[str, list[int]] = {"i": [], "r": []}
        for side, d in exchanges(net, ikev2.INFORMATIONAL):
            if ikev2.decode_header(d.message).is_response:
                continue
            msg = opened(net, side, d, net.sa("r" if side == "i" else "i"))
            for x in msg.payloads:
                if isinstance(x, ikev2.Delete):
                    deletes[side] += [struct.unpack("!I", spi)[0] for spi in x.spis]
        winner = "i" if deletes["i"] == [old_i.inbound_spi] else "r"
        loser = "r" if winner == "i" else "i"
        self.assertEqual(deletes[winner], [(old_i if winner == "i" else old_r).inbound_spi])
        (redundant,) = [e.child for e in of(net, loser, ChildSADown) if e.reason == "redundant"]
        self.assertEqual(deletes[loser], [redundant.inbound_spi])
        nonces: dict[str, list[bytes]] = {"i": [], "r": []}
        for side, d in exchanges(net, ikev2.CREATE_CHILD_SA):
            msg = opened(net, side, d, net.sa("r" if side == "i" else "i"))
            nonce = msg.find(Nonce)
            assert nonce is not None
            starter = side if not msg.is_response else ("r" if side == "i" else "i")
            nonces[starter].append(nonce.data)
        self.assertLess(min(nonces[loser]), min(nonces[winner]))
        # The survivor is the winner's.
        survivor = ci if winner == "i" else cr
        self.assertEqual(self._made_by(net, winner, survivor), True)
        return winner

    @staticmethod
    def _made_by(net: Net, side: str, child: ChildSA) -> bool:
        """Whether ``side``'s own request proposed ``child``'s inbound SPI."""
        for s, d in exchanges(net, ikev2.CREATE_CHILD_SA):
            if s != side or ikev2.decode_header(d.message).is_response:
                continue
            msg = opened(net, s, d, net.sa("r" if s == "i" else "i"))
            sa_p = msg.find(SA)
            assert sa_p is not None
            return bool(sa_p.proposals[0].spi == struct.pack("!I", child.inbound_spi))
        return False

    def test_collision_ends_with_one_pair(self) -> None:
        """Whoever wins (the nonces decide), one pair is left and no packet is lost.

        Over runs each side wins some: the nonce rule decides, not the role.
        """
        seen: set[str] = set()
        for _ in range(40):
            seen.add(self.collide())
            if len(seen) == 2:
                break
        self.assertEqual(seen, {"i", "r"})

    def test_collision_with_pfs(self) -> None:
        """A collision with PFS ends the same way."""
        self.collide(pfs=True)


class RefusalTests(SynchronousTestCase):
    """A refused rekey leaves the old CHILD_SA at work, and is retried later."""

    def refused(self, net: Net, notify: int) -> None:
        old_i = net.child("i")
        self.assertTrue(net.p.ini.rekey_child(old_i.outbound_spi))
        net.run(40)
        net.drain()
        (failed,) = of(net, "i", IKEFailed)
        self.assertEqual((failed.notify, failed.child_only, failed.rekey), (notify, True, True))
        self.assertEqual(net.child("i"), old_i)
        self.assertIs(net.p.ini.child_state(old_i.inbound_spi), ChildState.INSTALLED)
        self.assertEqual(len(net.p.children["i"]), 1)
        self.assertEqual(len(net.p.children["r"]), 1)
        assert_no_loss(self, net)
        assert_one_pair(self, net)
        self.assertEqual(of(net, "i", IKESADown), [])
        # Tried again after rekey_retry (halved at most, at random).
        when = net.p.ini.get_timer()
        assert when is not None
        self.assertTrue(5.0 <= when - net.p.clock.seconds() <= 10.0, when)

    def test_no_proposal_chosen(self) -> None:
        """The responder no longer takes the CHILD_SA's algorithm: NO_PROPOSAL_CHOSEN."""
        net = Net()
        net.establish()
        net.p.res.config.esp_suites = [ESPSuite(256)]
        self.refused(net, ikev2.N_NO_PROPOSAL_CHOSEN)
        # Once it takes it again, the retry goes through.
        net.p.res.config.esp_suites = [ESPSuite(128)]
        net.tick(10.0)
        net.run(40)
        net.drain()
        self.assertEqual(len(of(net, "i", ChildSARekeyed)), 1)
        assert_no_loss(self, net)
        assert_one_pair(self, net)

    def test_ts_unacceptable(self) -> None:
        """The responder's selectors for us changed (a configuration reload): TS_UNACCEPTABLE."""
        net = Net(r_local_ts=(TrafficSelector.from_network("10.88.0.0/16"),))
        net.establish()
        sa = net.sa("r")
        assert sa.peer is not None
        sa.peer = replace(sa.peer, local_ts=(TrafficSelector.from_network("10.200.0.0/16"),))
        self.refused(net, ikev2.N_TS_UNACCEPTABLE)

    def test_pfs_required(self) -> None:
        """A responder that requires PFS refuses a rekey without: NO_PROPOSAL_CHOSEN."""
        net = Net()
        net.establish()
        net.p.res.config.pfs = True
        self.refused(net, ikev2.N_NO_PROPOSAL_CHOSEN)

    def test_peer_does_not_rekey(self) -> None:
        """A peer that answers NO_ADDITIONAL_SAS (as we used to): the old SA goes on."""
        net = Net()
        net.establish()
        real = net.p.res._create_child_sa

        def refuse(sa: IKESA, header: ikev2.Header, msg: Message, *rest: Any) -> None:
            net.p.res._respond(sa, header, *rest, (Notify(ikev2.N_NO_ADDITIONAL_SAS),))

        net.p.res._create_child_sa = refuse  # type: ignore[method-assign]
        self.refused(net, ikev2.N_NO_ADDITIONAL_SAS)
        net.p.res._create_child_sa = real  # type: ignore[method-assign]

    def test_responder_widens_selectors(self) -> None:
        """An answer with wider selectors than offered is refused; the SA it made is deleted."""
        net = Net(r_local_ts=(TrafficSelector.from_network("10.88.0.0/16"),))
        net.establish()
        real = net.p.res._responder_rekey_child

        def widen(sa: IKESA, msg: Message, rekey: Notify) -> Any:
            payloads, child, info, ni, nr = real(sa, msg, rekey)
            wide = (TrafficSelector.from_network("0.0.0.0/0"),)
            payloads = [TSr(wide) if isinstance(x, TSr) else x for x in payloads]
            return payloads, child, info, ni, nr

        net.p.res._responder_rekey_child = widen  # type: ignore[method-assign]
        old_i = net.child("i")
        net.p.ini.rekey_child(old_i.outbound_spi)
        net.run(40)
        net.drain()
        (failed,) = of(net, "i", IKEFailed)
        self.assertEqual(failed.notify, ikev2.N_TS_UNACCEPTABLE)
        # The responder's new SA went with our Delete: both keep the old one.
        self.assertEqual([e.reason for e in of(net, "r", ChildSADown)], ["peer-deleted"])
        self.assertEqual(net.child("i"), old_i)
        assert_no_loss(self, net)
        assert_one_pair(self, net)


class CraftedRequestTests(SynchronousTestCase):
    """The responder, fed CREATE_CHILD_SA requests made by hand (a peer of another make)."""

    def setUp(self) -> None:
        self.net = Net()
        self.net.establish()
        self.sa_i = self.net.sa("i")
        self.mid = self.sa_i.next_request_id

    def ask(self, *payloads: ikev2.Payload) -> Message:
        """Send one CREATE_CHILD_SA request as the initiator would; the decrypted answer."""
        sa = self.sa_i
        assert sa.sk_out is not None and sa.sk_in is not None
        header = Message(sa.spi_i, sa.spi_r, ikev2.CREATE_CHILD_SA, ikev2.FLAG_INITIATOR,
                         self.mid)
        self.mid += 1
        self.net.p.res.receive(
            ikecrypto.seal_message(sa.sk_out, header, payloads), (I_HOST, 4500), (R_HOST, 4500)
        )
        (reply,) = self.net.p.res.datagrams_to_send()
        return ikecrypto.open_message(sa.sk_in, reply.message, ikev2.decode_message(reply.message))

    def rekey_payloads(
        self, spi: int | None = None, group: int | None = None, ke: KE | None = None
    ) -> list[ikev2.Payload]:
        old = self.net.child("i")
        out: list[ikev2.Payload] = [
            Notify(ikev2.N_REKEY_SA, b"", ikev2.PROTO_ESP,
                   struct.pack("!I", old.inbound_spi if spi is None else spi)),
            SA((Proposal(1, ikev2.PROTO_ESP, b"\x00\x00\x12\x34",
                         ESPSuite(128).transforms(group)),)),
            Nonce(b"n" * 32),
        ]
        if ke is not None:
            out.append(ke)
        return [*out, TSi(old.local_ts), TSr(old.remote_ts)]

    def test_child_sa_not_found(self) -> None:
        """REKEY_SA naming no CHILD_SA of ours: CHILD_SA_NOT_FOUND with that SPI."""
        reply = self.ask(*self.rekey_payloads(spi=0x0BADBAD0))
        self.assertEqual(reply.payloads, (Notify(ikev2.N_CHILD_SA_NOT_FOUND, b"",
                                                 ikev2.PROTO_ESP, b"\x0b\xad\xba\xd0"),))

    def test_bad_rekey_notify(self) -> None:
        """REKEY_SA without an ESP SPI is INVALID_SYNTAX; no SA payload likewise."""
        reply = self.ask(Notify(ikev2.N_REKEY_SA, b"", ikev2.PROTO_IKE, b""), Nonce(b"n" * 32))
        self.assertEqual(reply.payloads, (Notify(ikev2.N_INVALID_SYNTAX),))
        payloads = [p for p in self.rekey_payloads() if not isinstance(p, SA)]
        reply = self.ask(*payloads)
        self.assertEqual(reply.payloads, (Notify(ikev2.N_INVALID_SYNTAX),))

    def test_additional_child_sa(self) -> None:
        """A CREATE_CHILD_SA without REKEY_SA (another CHILD_SA) is NO_ADDITIONAL_SAS."""
        payloads = [p for p in self.rekey_payloads() if not isinstance(p, Notify)]
        self.assertEqual(self.ask(*payloads).payloads, (Notify(ikev2.N_NO_ADDITIONAL_SAS),))

    def test_new_child_sa_when_none_is_left(self) -> None:
        """CREATE_CHILD_SA without REKEY_SA, and no CHILD_SA left: a new one, in use at once.

        (strongSwan does this after a CHILD_SA's hard expiry.)  It keeps the
        inner address of the IKE SA's first CHILD_SA.
        """
        net = self.net
        old_r = net.child("r")
        net.p.ini.delete_child_sa(self.sa_i, self.sa_i.children[0])
        net.drain()
        self.assertEqual(net.sa("r").children, [])
        self.mid = self.sa_i.next_request_id
        payloads = [p for p in self.rekey_payloads_for(old_r) if not isinstance(p, Notify)]
        reply = self.ask(*payloads)
        self.assertEqual([type(p).__name__ for p in reply.payloads], ["SA", "Nonce", "TSi", "TSr"])
        (new,) = net.sa("r").children
        self.assertIsNone(new.replaces)
        self.assertEqual(new.internal_address, old_r.internal_address)
        self.assertIs(net.p.res.child_state(new.inbound_spi), ChildState.INSTALLED)
        assert net.dp["r"].outbound is not None
        self.assertEqual(net.dp["r"].outbound.spi, 0x1234)
        self.assertEqual(net.p.res.counters["children_created"], 1)
        # A second one is one too many.
        self.assertEqual(self.ask(*payloads).payloads, (Notify(ikev2.N_NO_ADDITIONAL_SAS),))

    def rekey_payloads_for(self, responder_child: ChildSA) -> list[ikev2.Payload]:
        """A rekey request's payloads, its selectors taken from the responder's CHILD_SA."""
        return [
            Notify(ikev2.N_REKEY_SA, b"", ikev2.PROTO_ESP, b"\x00\x00\x00\x01"),
            SA((Proposal(1, ikev2.PROTO_ESP, b"\x00\x00\x12\x34", ESPSuite(128).transforms()),)),
            Nonce(b"n" * 32),
            TSi(responder_child.remote_ts),
            TSr(responder_child.local_ts),
        ]

    def test_invalid_ke(self) -> None:
        """PFS offered for group 19 with a KE of group 31: INVALID_KE_PAYLOAD naming 19."""
        x = ikecrypto.dh_generate(ikev2.DH_CURVE25519)
        reply = self.ask(*self.rekey_payloads(group=ikev2.DH_ECP_256,
                                              ke=KE(ikev2.DH_CURVE25519, x.public)))
        self.assertEqual(reply.payloads,
                         (Notify(ikev2.N_INVALID_KE_PAYLOAD, ikev2.pack_u16(ikev2.DH_ECP_256)),))
        x = ikecrypto.dh_generate(ikev2.DH_ECP_256)
        reply = self.ask(*self.rekey_payloads(group=ikev2.DH_ECP_256,
                                              ke=KE(ikev2.DH_ECP_256, b"\x00" * 63 + b"\x01")))
        self.assertEqual(reply.payloads, (Notify(ikev2.N_INVALID_SYNTAX),))
        reply = self.ask(*self.rekey_payloads(group=ikev2.DH_ECP_256,
                                              ke=KE(ikev2.DH_ECP_256, x.public)))
        self.assertEqual([type(p).__name__ for p in reply.payloads],
                         ["SA", "Nonce", "KE", "TSi", "TSr"])

    def test_second_rekey_of_a_replaced_child(self) -> None:
        """Rekeying the same CHILD_SA again before deleting it: TEMPORARY_FAILURE."""
        reply = self.ask(*self.rekey_payloads())
        self.assertIsNotNone(reply.find(SA))
        reply = self.ask(*self.rekey_payloads())
        self.assertEqual(reply.payloads, (Notify(ikev2.N_TEMPORARY_FAILURE),))

    def test_peer_never_deletes_the_old_sa(self) -> None:
        """A peer that rekeys but never deletes the old SA.

        After the wait we switch to the new one and delete the old one ourselves.
        """
        net = self.net
        old_r = net.child("r")
        reply = self.ask(*self.rekey_payloads())
        sa_p = reply.find(SA)
        assert sa_p is not None
        new_spi = struct.unpack("!I", sa_p.proposals[0].spi)[0]
        self.assertIs(net.p.res.child_state(new_spi), ChildState.PENDING)
        self.assertIs(net.p.res.child_state(old_r.inbound_spi), ChildState.REPLACED)
        self.assertEqual(net.dp["r"].outbound.spi if net.dp["r"].outbound else None,
                         old_r.outbound_spi)
        when = net.p.res.get_timer()
        self.assertEqual(when, net.p.clock.seconds() + 32.0)
        net.p.clock.advance(32.0)
        net.p.res.handle_timer()
        (rekeyed,) = of(net, "r", ChildSARekeyed)
        self.assertEqual(rekeyed.new.inbound_spi, new_spi)
        (delete,) = net.p.res.datagrams_to_send()
        sa_r = net.sa("r")
        self.assertEqual(
            opened(net, "r", delete, self.sa_i).payloads,
            (ikev2.Delete(ikev2.PROTO_ESP, (struct.pack("!I", old_r.inbound_spi),)),),
        )
        self.assertIs(net.p.res.child_state(old_r.inbound_spi), ChildState.REKEYED)
        self.assertIs(sa_r.children[-1], rekeyed.new)


# ---------------------------------------------------------------------------
# IKE SA rekeying
# ---------------------------------------------------------------------------


class IKERekeyTests(SynchronousTestCase):
    """CREATE_CHILD_SA rekeying of the IKE SA (sections 1.3.2, 2.18)."""

    def rekey_ike(self, side: str) -> tuple[Net, IKESA, IKESA, DHRecorder]:
        recorder = DHRecorder()
        self.patch(ikecrypto, "dh_generate", recorder)
        net = Net()
        net.establish()
        old_i, old_r = net.sa("i"), net.sa("r")
        old_child = net.child("i")
        self.assertTrue(net.engine(side).rekey_ike_sa(net.sa(side)))
        self.assertFalse(net.engine(side).rekey_ike_sa(net.sa(side)))
        net.run(40)
        net.drain()
        new_i, new_r = net.sa("i"), net.sa("r")
        self.assertEqual(list(net.p.ini.sas.values()), [new_i])
        self.assertEqual(list(net.p.res.sas.values()), [new_r])
        self.assertEqual((new_i.spi_i, new_i.spi_r), (new_r.spi_i, new_r.spi_r))
        self.assertNotIn(new_i.spi_i, (old_i.spi_i, old_i.spi_r))
        self.assertEqual(new_i.keys, new_r.keys)
        self.assertNotEqual(new_i.keys, old_i.keys)
        self.assertEqual((old_i.state, old_r.state), (State.DEAD, State.DEAD))
        # The rekey initiator is the new SA's original initiator.
        starter, other = (new_i, new_r) if side == "i" else (new_r, new_i)
        self.assertIs(starter.role, ike.Role.INITIATOR)
        self.assertIs(other.role, ike.Role.RESPONDER)
        for s in ("i", "r"):
            (rekeyed,) = of(net, s, IKESARekeyed)
            self.assertEqual((rekeyed.old_spi_i, rekeyed.old_spi_r), (old_i.spi_i, old_i.spi_r))
            self.assertEqual((rekeyed.spi_i, rekeyed.spi_r), (new_i.spi_i, new_i.spi_r))
            self.assertEqual(of(net, s, IKESADown), [])
            self.assertEqual(of(net, s, ChildSADown), [])
            (child,) = net.sa(s).children
            self.assertEqual(child.ike_spis, (new_i.spi_i, new_i.spi_r))
        self.assertEqual(net.child("i").inbound_spi, old_child.inbound_spi)
        assert_no_loss(self, net)
        # SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), recomputed from the wire.
        (_, req), (_, resp) = exchanges(net, ikev2.CREATE_CHILD_SA)
        old_sa_of = {"i": old_r, "r": old_i}
        sender = "i" if side == "i" else "r"
        responder = "r" if side == "i" else "i"
        request = opened(net, sender, req, old_sa_of[sender])
        response = opened(net, responder, resp, old_sa_of[responder])
        self.assertEqual([type(x).__name__ for x in request.payloads], ["SA", "Nonce", "KE"])
        kei, ker = request.find(KE), response.find(KE)
        ni, nr = request.find(Nonce), response.find(Nonce)
        sa_req, sa_resp = request.find(SA), response.find(SA)
        assert kei and ker and ni and nr and sa_req and sa_resp and old_i.keys
        self.assertEqual(sa_req.proposals[0].spi, starter.spi_i)
        self.assertEqual(sa_resp.proposals[0].spi, starter.spi_r)
        shared = recorder.keys[kei.data].shared(ker.data)
        prf = Prf(ikev2.PRF_HMAC_SHA2_256)
        seed = prf(old_i.keys.sk_d, shared + ni.data + nr.data)
        keys = ikecrypto.derive_ike_keys(
            prf, seed, ni.data, nr.data, starter.spi_i, starter.spi_r, 20, 0
        )
        self.assertEqual(new_i.keys, keys)
        # Then the old IKE SA is deleted, over itself, by the rekey initiator.
        (s, delete), _ = exchanges(net, ikev2.INFORMATIONAL)
        self.assertEqual(s, sender)
        h = ikev2.decode_header(delete.message)
        self.assertEqual((h.spi_i, h.spi_r), (old_i.spi_i, old_i.spi_r))
        self.assertEqual(opened(net, sender, delete, old_sa_of[sender]).payloads,
                         (ikev2.Delete(ikev2.PROTO_IKE),))
        return net, new_i, new_r, recorder

    def then_child_rekey_and_liveness(self, net: Net) -> None:
        for side in ("i", "r"):
            self.assertTrue(net.engine(side).rekey_child(net.child(side).outbound_spi))
            net.run(40)
            net.drain()
            net.engine(side).check_liveness(net.sa(side))
            net.run(10)
            net.drain()
        self.assertEqual(len(of(net, "i", ChildSARekeyed)), 2)
        assert_no_loss(self, net)
        assert_one_pair(self, net)
        for side in ("i", "r"):
            self.assertEqual(of(net, side, IKESADown), [])
            self.assertEqual(of(net, side, IKEFailed), [])
            self.assertEqual(net.sa(side).outstanding, None)
        # Message IDs started again at 0 on the new IKE SA: per side, a rekey,
        # a delete and a liveness check as initiator.
        self.assertEqual(net.sa("i").next_request_id, 3)
        self.assertEqual(net.sa("r").next_request_id, 3)
        # And the new IKE SA can be deleted as usual.
        net.p.ini.delete_ike_sa(net.sa("i"))
        net.drain()
        self.assertEqual((net.p.ini.sas, net.p.res.sas), ({}, {}))
        self.assertEqual([e.reason for e in of(net, "r", IKESADown)], ["peer-deleted"])

    def test_initiator_rekeys_ike_sa(self) -> None:
        """The original initiator rekeys the IKE SA; then a CHILD_SA rekey and liveness on it."""
        net, *_ = self.rekey_ike("i")
        self.then_child_rekey_and_liveness(net)

    def test_responder_rekeys_ike_sa(self) -> None:
        """The original responder rekeys: it becomes the new SA's original initiator."""
        net, *_ = self.rekey_ike("r")
        self.then_child_rekey_and_liveness(net)

    def test_child_keymat_uses_new_sk_d(self) -> None:
        """After an IKE SA rekey, a CHILD_SA rekey takes its keys from the new SK_d."""
        net, new_i, _, _ = self.rekey_ike("i")
        net.p.ini.rekey_child(net.child("i").outbound_spi)
        net.drain()
        (_, req), (_, resp) = exchanges(net, ikev2.CREATE_CHILD_SA)[2:]
        ni = opened(net, "i", req, net.sa("r")).find(Nonce)
        nr = opened(net, "r", resp, net.sa("i")).find(Nonce)
        assert ni and nr and new_i.keys
        stream = Prf(ikev2.PRF_HMAC_SHA2_256).plus(new_i.keys.sk_d, ni.data + nr.data, 40)
        self.assertEqual(net.child("i").outbound_keymat, stream[:20])

    def test_lifetime(self) -> None:
        """ike_rekey_time: rekeyed on time, again; the CHILD_SA carries on untouched."""
        net = Net()
        net.p.res.config.ike_rekey_time = 3600.0
        net.establish()
        self.assertEqual(net.p.res.get_timer(), 3600.0)
        spis = {net.sa("i").spi_i}
        for n in (1, 2):
            net.tick(3600.0)
            net.run(30)
            net.drain()
            spis.add(net.sa("i").spi_i)
            self.assertEqual(len(of(net, "r", IKESARekeyed)), n)
        self.assertEqual(len(spis), 3)
        assert_no_loss(self, net)
        assert_one_pair(self, net)

    def test_other_suite_and_group(self) -> None:
        """The responder picks by its own preference; the new SA may change suite."""
        net = Net(i_ike=["aes128gcm16-prfsha256-x25519"], r_ike=["aes128gcm16-prfsha256-x25519"])
        net.establish()
        net.p.ini.config.ike_suites = [IKESuite.parse("aes128gcm16-prfsha256-x25519"),
                                       IKESuite.parse("aes256gcm16-prfsha384-ecp384")]
        net.p.res.config.ike_suites = [IKESuite.parse("aes256gcm16-prfsha384-ecp384")]
        net.p.ini.rekey_ike_sa(net.sa("i"))
        net.drain()
        # Our KE was X25519: INVALID_KE_PAYLOAD, then ECP-384.
        self.assertEqual(net.p.ini.counters["ke_retries"], 1)
        self.assertEqual(str(net.sa("i").suite), "aes256gcm16-prfsha384-ecp384")
        self.assertEqual(net.sa("i").keys, net.sa("r").keys)
        net.p.ini.check_liveness(net.sa("i"))
        net.drain()
        self.assertEqual(net.sa("i").outstanding, None)
        assert_no_loss(self, net)

    def test_refused(self) -> None:
        """The responder takes none of our IKE suites: the old IKE SA goes on; retried later."""
        net = Net()
        net.establish()
        old = net.sa("i")
        net.p.res.config.ike_suites = [IKESuite.parse("aes256gcm16-prfsha384-ecp384")]
        net.p.ini.config.ike_suites = [IKESuite.parse("aes128gcm16-prfsha256-ecp256")]
        net.p.ini.rekey_ike_sa(old)
        net.drain()
        (failed,) = of(net, "i", IKEFailed)
        self.assertEqual((failed.notify, failed.rekey, failed.child_only),
                         (ikev2.N_NO_PROPOSAL_CHOSEN, True, False))
        self.assertIs(net.sa("i"), old)
        net.p.ini.check_liveness(old)
        net.p.ini.rekey_child(net.child("i").outbound_spi)
        net.run(30)
        net.drain()
        assert_no_loss(self, net)
        assert_one_pair(self, net)
        self.assertEqual(len(of(net, "i", ChildSARekeyed)), 1)
        self.assertIsNotNone(old.rekey_at)

    def test_refused_while_child_exchange_under_way(self) -> None:
        """Rekeying the IKE SA while the peer rekeys a CHILD_SA: TEMPORARY_FAILURE; both retry."""
        net = Net()
        net.establish()
        net.p.ini.rekey_ike_sa(net.sa("i"))
        net.p.res.rekey_child(net.child("r").outbound_spi)
        net.run(40)
        net.drain()
        notifies = sorted(e.notify for s in ("i", "r") for e in of(net, s, IKEFailed))
        self.assertEqual(notifies, [ikev2.N_TEMPORARY_FAILURE] * 2)
        for _ in range(100):
            net.tick(0.5)
            net.run(2)
            net.drain()
        self.assertGreaterEqual(len(of(net, "i", IKESARekeyed)), 1)
        self.assertGreaterEqual(len(of(net, "r", ChildSARekeyed)), 1)
        assert_no_loss(self, net)
        assert_one_pair(self, net)
        self.assertEqual(len(net.p.ini.sas), 1)
        self.assertEqual(len(net.p.res.sas), 1)

    def test_collision(self) -> None:
        """Both rekey the IKE SA at once (2.8.2): one IKE SA left, the same on both sides."""
        outcomes: set[bool] = set()
        for _ in range(30):
            net = Net()
            net.establish()
            net.p.ini.rekey_ike_sa(net.sa("i"))
            net.p.res.rekey_ike_sa(net.sa("r"))
            net.run(40)
            net.drain()
            new_i, new_r = net.sa("i"), net.sa("r")
            self.assertEqual(list(net.p.ini.sas.values()), [new_i])
            self.assertEqual(list(net.p.res.sas.values()), [new_r])
            self.assertEqual((new_i.spi_i, new_i.spi_r), (new_r.spi_i, new_r.spi_r))
            self.assertEqual(new_i.keys, new_r.keys)
            for s in ("i", "r"):
                self.assertEqual(net.p.of(s, IKESADown), [])
                self.assertEqual(net.engine(s).counters["rekey_collisions"], 1)
            assert_no_loss(self, net)
            assert_one_pair(self, net)
            net.p.res.rekey_child(net.child("r").outbound_spi)
            net.p.ini.check_liveness(new_i)
            net.drain()
            assert_one_pair(self, net)
            self.assertEqual(of(net, "r", IKEFailed), [])
            outcomes.add(new_i.role is ike.Role.INITIATOR)
            if len(outcomes) == 2:
                break
        self.assertEqual(outcomes, {True, False})


class LossTests(SynchronousTestCase):
    """Rekeys with messages lost or mangled on the way: the engines recover and agree."""

    @settings(max_examples=40, deadline=None, database=None)
    @given(st.data())
    def test_lossy_rekeys(self, data: st.DataObject) -> None:
        """Random drops and mangling during CHILD_SA and IKE SA rekeys (also colliding).

        Whatever happens, once things settle each side has at most one IKE SA;
        when both have one, they are the same, and their CHILD_SAs in use pair up.
        """
        net = Net()
        net.establish()
        plan = data.draw(st.lists(st.sampled_from(["ci", "cr", "ii", "ir"]), min_size=1,
                                  max_size=3))

        def drop(side: str, d: Datagram) -> bool:
            return data.draw(st.sampled_from([False, False, False, True]))

        net.drop = drop
        for step in plan:
            side = step[1]
            eng = net.engine(side)
            established = eng.established()
            if not established:
                break
            if step[0] == "c" and established[0].children:
                eng.rekey_child(established[0].children[-1].outbound_spi)
            elif step[0] == "i":
                eng.rekey_ike_sa(established[0])
            net.run(data.draw(st.integers(0, 12)))
        net.drop = None
        for _ in range(20):
            net.tick(8.0)
            net.drain()
        live_i, live_r = net.p.ini.established(), net.p.res.established()
        self.assertLessEqual(len(live_i), 1)
        self.assertLessEqual(len(live_r), 1)
        self.assertEqual(dict(net.dp["i"].refused).keys() - {"unknown_spi"}, set())
        if live_i and live_r:
            sa_i, sa_r = live_i[0], live_r[0]
            self.assertEqual((sa_i.spi_i, sa_i.spi_r), (sa_r.spi_i, sa_r.spi_r))
            # Nothing half done: every CHILD_SA installed on one side is the
            # mirror of one on the other, and none waits for anything.
            pairs_i = {(c.inbound_spi, c.outbound_spi) for c in sa_i.children}
            pairs_r = {(c.outbound_spi, c.inbound_spi) for c in sa_r.children}
            self.assertEqual(pairs_i, pairs_r)
            self.assertLessEqual(len(pairs_i), 1)
            for side, sa in (("i", sa_i), ("r", sa_r)):
                self.assertIsNone(sa.outstanding)
                for c in sa.children:
                    self.assertIs(net.engine(side).child_state(c.inbound_spi),
                                  ChildState.INSTALLED)
                    self.assertEqual(list(net.dp[side].inbound), [c.inbound_spi])
                    assert net.dp[side].outbound is not None
                    self.assertEqual(net.dp[side].outbound.spi, c.outbound_spi)
