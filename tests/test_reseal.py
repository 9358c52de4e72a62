"""The relay's terminate mode: re-sealing ESP between client legs and home legs."""

from __future__ import annotations

import hashlib
import struct
from ipaddress import IPv4Address
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines.reseal import Leg, ReSealer, Visitor
from smobility.engines.tunnel import TunnelEngine
from smobility.wire import ipv4
from smobility.wire.esp import (
    NAT_KEEPALIVE,
    NEXT_HEADER_NONE,
    NON_ESP_MARKER,
    SEQ_MAX,
    InboundSA,
    OutboundSA,
)

HOA = IPv4Address("10.77.0.10")
HOA2 = IPv4Address("10.77.0.11")
CN = IPv4Address("10.77.0.100")
HA = "172.31.0.2"
COA = "198.51.100.7"
RELAY = "203.0.113.1"


def _keymat(label: str) -> bytes:
    """20 bytes of fixed, distinct AES-128-GCM keying material (key || salt)."""
    return hashlib.sha256(label.encode()).digest()[:20]


# Keys and SPIs of the four SAs; the SPI is the receiver's.
K_C2R, K_R2C, K_H2R, K_R2H = (_keymat(x) for x in ("c2r", "r2c", "h2r", "r2h"))
K_C2R_2, K_R2C_2, K_H2R_2, K_R2H_2 = (_keymat(x) for x in ("c2r2", "r2c2", "h2r2", "r2h2"))
KEYS = (K_C2R, K_R2C, K_H2R, K_R2H, K_C2R_2, K_R2C_2, K_H2R_2, K_R2H_2)
C2R, R2C, H2R, R2H = 0x1001, 0x2001, 0x3001, 0x4001
C2R_2, R2C_2, H2R_2, R2H_2 = 0x1002, 0x2002, 0x3002, 0x4002

Outgoing = tuple[bytes, int, str, int]
ToClient = tuple[bytes, tuple[str, int]]


def udp_packet(src: IPv4Address, dst: IPv4Address, size: int = 100, tag: int = 0) -> bytes:
    """A real IPv4/UDP packet; ``tag`` makes packets of one test tell apart."""
    payload = struct.pack("!HHHH", 1234, 5678, 8 + size, 0) + bytes([tag & 0xFF]) * size
    return ipv4.ipv4_packet(src, dst, 17, payload)


class Lab:
    """A relay with one visitor "laptop", plus the client's and the home agent's SAs."""

    def __init__(self, *, client: bool = True, home: bool = True, local_port: int = 4500) -> None:
        self.clock = Clock()
        self.relay = ReSealer(clock=self.clock, local_port=local_port)
        self.client_ike: list[tuple[bytes, tuple[str, int]]] = []
        self.home_ike: list[tuple[bytes, tuple[str, int]]] = []
        self.relay.on_client_ike = lambda m, a: self.client_ike.append((m, a))
        self.relay.on_home_ike = lambda m, a: self.home_ike.append((m, a))
        # The far ends: the client's SAs with the relay, the home agent's with the relay.
        self.client_out = OutboundSA.from_keymat(C2R, K_C2R)
        self.client_in = InboundSA.from_keymat(R2C, K_R2C)
        self.home_out = OutboundSA.from_keymat(H2R, K_H2R)
        self.home_in = InboundSA.from_keymat(R2H, K_R2H)
        if client:
            self.relay.set_client(
                "laptop", HOA, InboundSA.from_keymat(C2R, K_C2R),
                OutboundSA.from_keymat(R2C, K_R2C), (COA, 4500),
            )  # fmt: skip
        if home:
            self.relay.set_home(
                "laptop", HA, InboundSA.from_keymat(H2R, K_H2R), OutboundSA.from_keymat(R2H, K_R2H)
            )

    def from_clients(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> list[Outgoing]:
        out: list[Outgoing] = []
        self.relay.from_clients(datagrams, out)
        return out

    def from_home(self, items: list[tuple[int, bytes, tuple[str, int]]]) -> list[ToClient]:
        out: list[ToClient] = []
        self.relay.from_home(items, out)
        return out

    def up(self, packets: list[bytes], source: tuple[str, int] = (COA, 4500)) -> list[Outgoing]:
        """The client seals ``packets`` and the relay re-seals them."""
        return self.from_clients([(self.client_out.seal(p), source) for p in packets])

    def down(
        self, packets: list[bytes], source: tuple[str, int] = (HA, 4500), dport: int = 4500
    ) -> list[ToClient]:
        """The home agent seals ``packets`` and the relay re-seals them."""
        return self.from_home([(dport, self.home_out.seal(p), source) for p in packets])

    def at_home(self, out: list[Outgoing]) -> list[bytes]:
        """What the home agent opens of the relay's output."""
        result = []
        for esp, sport, dst, dport in out:
            assert (sport, dst, dport) == (4500, HA, 4500)
            result.append(self.home_in.open(esp))
        return result

    def at_client(self, out: list[ToClient], addr: tuple[str, int] = (COA, 4500)) -> list[bytes]:
        """What the client opens of the relay's output (all sent to ``addr``)."""
        result = []
        for esp, to in out:
            assert to == addr, to
            result.append(self.client_in.open(esp))
        return result

    def leg_drops(self, side: str) -> dict[str, int]:
        v = self.relay.visitors["laptop"]
        leg = v.client if side == "client" else v.home
        assert leg is not None
        return dict(leg.drops)


def capture_log(testcase: SynchronousTestCase) -> list[dict[str, object]]:
    """Collect the log events emitted until the end of ``testcase``."""
    events: list[dict[str, object]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def _spi(datagram: bytes) -> int:
    spi: int = struct.unpack_from("!I", datagram)[0]
    return spi


class EndToEndTests(SynchronousTestCase):
    def test_client_to_home(self) -> None:
        lab = Lab()
        packets = [udp_packet(HOA, CN, size=n, tag=n) for n in (0, 1, 2, 3, 100, 1400)]
        out = lab.up(packets)
        self.assertEqual([(s, d, p) for _, s, d, p in out], [(4500, HA, 4500)] * len(packets))
        self.assertEqual({_spi(esp) for esp, *_ in out}, {R2H})
        self.assertEqual(lab.at_home(out), packets)
        v = lab.relay.visitors["laptop"]
        assert v.client is not None and v.home is not None
        size = sum(map(len, packets))
        self.assertEqual((v.client.packets_in, v.client.bytes_in), (6, size))
        self.assertEqual((v.home.packets_out, v.home.bytes_out), (6, size))
        self.assertEqual(lab.relay.counters["resealed_to_home"], 6)

    def test_home_to_client(self) -> None:
        lab = Lab()
        packets = [udp_packet(CN, HOA, size=n, tag=n) for n in (0, 5, 1400)]
        out = lab.down(packets)
        self.assertEqual({_spi(esp) for esp, _ in out}, {R2C})
        self.assertEqual(lab.at_client(out), packets)
        v = lab.relay.visitors["laptop"]
        assert v.client is not None and v.home is not None
        self.assertEqual((v.home.packets_in, v.client.packets_out), (3, 3))
        self.assertEqual(v.client.bytes_out, sum(map(len, packets)))
        self.assertEqual(lab.relay.counters["resealed_to_clients"], 3)

    def test_two_visitors_kept_apart(self) -> None:
        lab = Lab()
        lab.relay.set_client(
            "phone", HOA2, InboundSA.from_keymat(C2R_2, K_C2R_2),
            OutboundSA.from_keymat(R2C_2, K_R2C_2), ("192.0.2.9", 4500),
        )  # fmt: skip
        lab.relay.set_home(
            "phone", "172.31.0.3", InboundSA.from_keymat(H2R_2, K_H2R_2),
            OutboundSA.from_keymat(R2H_2, K_R2H_2),
        )  # fmt: skip
        phone_out = OutboundSA.from_keymat(C2R_2, K_C2R_2)
        phone_home_in = InboundSA.from_keymat(R2H_2, K_R2H_2)
        packet = udp_packet(HOA2, CN)
        out = lab.from_clients([(phone_out.seal(packet), ("192.0.2.9", 4500))])
        [(esp, _, dst, _)] = out
        self.assertEqual(dst, "172.31.0.3")
        self.assertEqual(phone_home_in.open(esp), packet)
        # The laptop is unaffected.
        self.assertEqual(lab.at_home(lab.up([udp_packet(HOA, CN)])), [udp_packet(HOA, CN)])

    def test_between_two_tunnel_engines(self) -> None:
        """The project's own tunnel engines at both ends, the relay between them."""
        lab = Lab()
        client = TunnelEngine(clock=lab.clock, mtu=1400, local_inner=HOA)
        client.install(
            "home", None, InboundSA.from_keymat(R2C, K_R2C), OutboundSA.from_keymat(C2R, K_C2R),
            (RELAY, 4500), {RELAY},
        )  # fmt: skip
        home = TunnelEngine(clock=lab.clock, mtu=1400, local_inner=IPv4Address(HA))
        home.install(
            "laptop", HOA, InboundSA.from_keymat(R2H, K_R2H), OutboundSA.from_keymat(H2R, K_H2R),
            (RELAY, 4500), {RELAY},
        )  # fmt: skip
        up = [udp_packet(HOA, CN, tag=1), udp_packet(HOA, CN, tag=2)]
        sent: list[tuple[bytes, tuple[str, int]]] = []
        client.from_tun(up, sent, [])
        to_home = lab.from_clients([(d, (COA, 40000)) for d, _ in sent])
        got = home.from_udp_many([(esp, (RELAY, sport)) for esp, sport, _, _ in to_home])
        self.assertEqual(got, up)
        down = [udp_packet(CN, HOA, tag=3)]
        sent = []
        home.from_tun(down, sent, [])
        to_client = lab.from_home([(4500, d, (HA, 4500)) for d, _ in sent])
        self.assertEqual([a for _, a in to_client], [(COA, 40000)])
        self.assertEqual(client.from_udp_many([(d, (RELAY, 4500)) for d, _ in to_client]), down)


class NotESPTests(SynchronousTestCase):
    def test_keepalives(self) -> None:
        lab = Lab()
        self.assertEqual(lab.from_clients([(NAT_KEEPALIVE, (COA, 4500))]), [])
        self.assertEqual(lab.from_home([(4500, NAT_KEEPALIVE, (HA, 4500))]), [])
        self.assertEqual(lab.relay.counters["keepalives_in"], 2)
        self.assertEqual(lab.relay.counters["malformed"], 0)

    def test_ike_goes_to_the_handlers(self) -> None:
        lab = Lab()
        message = bytes(range(1, 29)) + b"payload"
        self.assertEqual(lab.from_clients([(NON_ESP_MARKER + message, (COA, 4500))]), [])
        self.assertEqual(lab.from_home([(4500, NON_ESP_MARKER + message, (HA, 500))]), [])
        self.assertEqual(lab.client_ike, [(message, (COA, 4500))])
        self.assertEqual(lab.home_ike, [(message, (HA, 500))])
        self.assertEqual(lab.relay.counters["ike_from_clients"], 1)
        self.assertEqual(lab.relay.counters["ike_from_home"], 1)

    def test_ike_without_handler_counted(self) -> None:
        lab = Lab()
        lab.relay.on_client_ike = None
        lab.from_clients([(NON_ESP_MARKER + bytes(28), (COA, 4500))])
        self.assertEqual(lab.relay.counters["ike_unhandled"], 1)

    def test_failing_ike_handler_does_not_stop_the_batch(self) -> None:
        lab = Lab()

        def broken(message: bytes, addr: tuple[str, int]) -> None:
            raise ZeroDivisionError("bug in the IKE side")

        lab.relay.on_client_ike = broken
        packet = udp_packet(HOA, CN)
        ike = NON_ESP_MARKER + bytes(28)
        out = lab.from_clients(
            [(ike, (COA, 4500))] * 3 + [(lab.client_out.seal(packet), (COA, 4500))]
        )
        self.assertEqual(lab.at_home(out), [packet])
        self.assertEqual(lab.relay.counters["ike_handler_errors"], 3)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_garbage_is_malformed(self) -> None:
        lab = Lab()
        garbage = [b"", b"\x00", b"\xfe", b"\x01\x02\x03\x04\x05\x06\x07", NON_ESP_MARKER,
                   NON_ESP_MARKER + bytes(27), NAT_KEEPALIVE * 2]  # fmt: skip
        self.assertEqual(lab.from_clients([(g, (COA, 4500)) for g in garbage]), [])
        self.assertEqual(lab.from_home([(4500, g, (HA, 4500)) for g in garbage]), [])
        self.assertEqual(lab.relay.counters["malformed"], 2 * len(garbage))
        self.assertEqual((lab.client_ike, lab.home_ike), ([], []))


class ClientDropTests(SynchronousTestCase):
    def test_unknown_spi(self) -> None:
        lab = Lab()
        stranger = OutboundSA.from_keymat(0x9999, K_C2R)
        self.assertEqual(lab.from_clients([(stranger.seal(udp_packet(HOA, CN)), (COA, 4500))]), [])
        self.assertEqual(lab.relay.counters["unknown_spi"], 1)

    def test_home_leg_spi_not_accepted_from_clients(self) -> None:
        lab = Lab()
        # A client that knew the home leg's keys still cannot use them on the client side.
        self.assertEqual(
            lab.from_clients([(lab.home_out.seal(udp_packet(HOA, CN)), (HA, 4500))]), []
        )
        self.assertEqual(lab.relay.counters["unknown_spi"], 1)

    def test_unknown_spi_logged_rate_limited(self) -> None:
        lab = Lab()
        events = capture_log(self)
        bogus = struct.pack("!II", 0x9999, 1) + bytes(40)
        for _ in range(50):
            lab.from_clients([(bogus, (COA, 4500))])
        lab.clock.advance(11)
        lab.from_home([(4500, bogus, (HA, 4500))])
        self.assertEqual(lab.relay.counters["unknown_spi"], 51)
        logged = [e for e in events if "unknown SPI" in str(e.get("log_format", ""))]
        self.assertEqual(len(logged), 2)
        self.assertEqual(logged[1]["more"], 49)
        self.assertEqual(logged[1]["who"], "a home agent")

    def test_bad_source(self) -> None:
        lab = Lab()
        out = lab.up([udp_packet(HOA, CN)], source=("198.51.100.8", 4500))
        self.assertEqual(out, [])
        self.assertEqual(lab.relay.counters["bad_source"], 1)
        self.assertEqual(lab.leg_drops("client"), {"bad_source": 1})

    def test_bad_icv(self) -> None:
        lab = Lab()
        esp = bytearray(lab.client_out.seal(udp_packet(HOA, CN)))
        esp[30] ^= 0x01
        self.assertEqual(lab.from_clients([(bytes(esp), (COA, 4500))]), [])
        self.assertEqual(lab.relay.counters["bad_icv"], 1)
        self.assertEqual(lab.leg_drops("client"), {"bad_icv": 1})

    def test_esp_malformed(self) -> None:
        lab = Lab()
        short = struct.pack("!II", C2R, 1) + bytes(10)
        self.assertEqual(lab.from_clients([(short, (COA, 4500))]), [])
        self.assertEqual(lab.leg_drops("client"), {"malformed": 1})

    def test_replay_refused(self) -> None:
        lab = Lab()
        packet = udp_packet(HOA, CN)
        esp = lab.client_out.seal(packet)
        first = lab.from_clients([(esp, (COA, 4500))])
        second = lab.from_clients([(esp, (COA, 4500))])
        self.assertEqual(lab.at_home(first), [packet])
        self.assertEqual(second, [])
        self.assertEqual(lab.relay.counters["replayed"], 1)
        self.assertEqual(lab.leg_drops("client"), {"replayed": 1})

    def test_dummy_not_forwarded(self) -> None:
        lab = Lab()
        esp = lab.client_out.seal(b"", NEXT_HEADER_NONE)
        self.assertEqual(lab.from_clients([(esp, (COA, 4500))]), [])
        self.assertEqual(lab.relay.counters["dummies_in"], 1)

    def test_malformed_inner(self) -> None:
        lab = Lab()
        # An IPv6-looking packet whose bytes 12:16 are the home address, and a runt.
        not_v4 = b"\x60" + bytes(11) + HOA.packed + bytes(24)
        runt = udp_packet(HOA, CN)[:19]
        self.assertEqual(lab.up([not_v4, runt]), [])
        self.assertEqual(lab.relay.counters["malformed_inner"], 2)
        self.assertEqual(lab.leg_drops("client"), {"malformed_inner": 2})

    def test_spoofed_inner_source(self) -> None:
        lab = Lab()
        self.assertEqual(lab.up([udp_packet(HOA2, CN)]), [])
        self.assertEqual(lab.relay.counters["spoofed_inner_source"], 1)
        self.assertEqual(lab.leg_drops("client"), {"spoofed_inner_source": 1})

    def test_home_sa_pending(self) -> None:
        lab = Lab(home=False)
        self.assertEqual(lab.up([udp_packet(HOA, CN)]), [])
        self.assertEqual(lab.relay.counters["home_sa_pending"], 1)
        self.assertEqual(lab.leg_drops("client"), {"home_sa_pending": 1})

    def test_sa_expired_logged_once(self) -> None:
        lab = Lab()
        lab.relay.set_home(
            "laptop", HA, InboundSA.from_keymat(H2R, K_H2R),
            OutboundSA.from_keymat(R2H, K_R2H, seq=0xFFFFFFFF),
        )  # fmt: skip
        events = capture_log(self)
        self.assertEqual(lab.up([udp_packet(HOA, CN)] * 3), [])
        self.assertEqual(lab.relay.counters["sa_expired"], 3)
        self.assertEqual(lab.leg_drops("home"), {"sa_expired": 3})
        self.assertEqual(len([e for e in events if "stopped" in str(e.get("log_format"))]), 1)
        # A rekey brings traffic back, and a later exhaustion is logged again.
        lab.relay.rekey_home(
            "laptop", InboundSA.from_keymat(H2R_2, K_H2R_2),
            OutboundSA.from_keymat(R2H_2, K_R2H_2, seq=0xFFFFFFFE),
        )  # fmt: skip
        self.assertEqual(len(lab.up([udp_packet(HOA, CN)] * 2)), 1)
        self.assertEqual(len([e for e in events if "stopped" in str(e.get("log_format"))]), 2)


class HomeDropTests(SynchronousTestCase):
    def test_wrong_port(self) -> None:
        lab = Lab()
        self.assertEqual(lab.down([udp_packet(CN, HOA)], dport=434), [])
        self.assertEqual(lab.relay.counters["wrong_port"], 1)

    def test_local_port_is_configurable(self) -> None:
        lab = Lab(local_port=4501)
        self.assertEqual(lab.down([udp_packet(CN, HOA)]), [])
        self.assertEqual(len(lab.down([udp_packet(CN, HOA)], dport=4501)), 1)
        out = lab.up([udp_packet(HOA, CN)])
        self.assertEqual([(s, p) for _, s, _, p in out], [(4501, 4500)])

    def test_unknown_spi(self) -> None:
        lab = Lab()
        stranger = OutboundSA.from_keymat(0x9999, K_H2R)
        self.assertEqual(
            lab.from_home([(4500, stranger.seal(udp_packet(CN, HOA)), (HA, 4500))]), []
        )
        self.assertEqual(lab.relay.counters["unknown_spi"], 1)

    def test_client_leg_spi_not_accepted_from_home(self) -> None:
        lab = Lab()
        esp = lab.client_out.seal(udp_packet(CN, HOA))
        self.assertEqual(lab.from_home([(4500, esp, (COA, 4500))]), [])
        self.assertEqual(lab.relay.counters["unknown_spi"], 1)

    def test_bad_source(self) -> None:
        lab = Lab()
        self.assertEqual(lab.down([udp_packet(CN, HOA)], source=("172.31.0.9", 4500)), [])
        self.assertEqual(lab.relay.counters["bad_source"], 1)
        self.assertEqual(lab.leg_drops("home"), {"bad_source": 1})

    def test_source_port_of_home_agent_not_checked(self) -> None:
        lab = Lab()
        self.assertEqual(len(lab.down([udp_packet(CN, HOA)], source=(HA, 4501))), 1)

    def test_bad_icv_and_replay(self) -> None:
        lab = Lab()
        esp = lab.home_out.seal(udp_packet(CN, HOA))
        forged = esp[:-1] + bytes([esp[-1] ^ 0x80])
        self.assertEqual(lab.from_home([(4500, forged, (HA, 4500))]), [])
        self.assertEqual(len(lab.from_home([(4500, esp, (HA, 4500))])), 1)
        self.assertEqual(lab.from_home([(4500, esp, (HA, 4500))]), [])
        self.assertEqual(lab.leg_drops("home"), {"bad_icv": 1, "replayed": 1})

    def test_dummy_not_forwarded(self) -> None:
        lab = Lab()
        esp = lab.home_out.seal(b"", NEXT_HEADER_NONE)
        self.assertEqual(lab.from_home([(4500, esp, (HA, 4500))]), [])
        self.assertEqual(lab.relay.counters["dummies_in"], 1)

    def test_malformed_inner(self) -> None:
        lab = Lab()
        not_v4 = b"\x60" + bytes(15) + HOA.packed + bytes(20)
        runt = udp_packet(CN, HOA)[:19]
        self.assertEqual(lab.down([not_v4, runt]), [])
        self.assertEqual(lab.leg_drops("home"), {"malformed_inner": 2})

    def test_wrong_inner_destination(self) -> None:
        lab = Lab()
        self.assertEqual(lab.down([udp_packet(CN, HOA2)]), [])
        self.assertEqual(lab.relay.counters["wrong_inner_destination"], 1)
        self.assertEqual(lab.leg_drops("home"), {"wrong_inner_destination": 1})

    def test_wrong_inner_destination_reaches_no_other_visitor(self) -> None:
        lab = Lab()
        lab.relay.set_client(
            "phone", HOA2, InboundSA.from_keymat(C2R_2, K_C2R_2),
            OutboundSA.from_keymat(R2C_2, K_R2C_2), ("192.0.2.9", 4500),
        )  # fmt: skip
        # The laptop's home agent addresses the phone: refused, not re-sealed to the phone.
        self.assertEqual(lab.down([udp_packet(CN, HOA2)]), [])
        self.assertEqual(lab.relay.counters["wrong_inner_destination"], 1)

    def test_client_sa_pending(self) -> None:
        lab = Lab(client=False)
        self.assertEqual(lab.down([udp_packet(CN, HOA)]), [])
        self.assertEqual(lab.relay.counters["client_sa_pending"], 1)
        self.assertEqual(lab.leg_drops("home"), {"client_sa_pending": 1})

    def test_sa_expired(self) -> None:
        lab = Lab()
        lab.relay.set_client(
            "laptop", HOA, InboundSA.from_keymat(C2R, K_C2R),
            OutboundSA.from_keymat(R2C, K_R2C, seq=0xFFFFFFFF), (COA, 4500),
        )  # fmt: skip
        self.assertEqual(lab.down([udp_packet(CN, HOA)] * 2), [])
        self.assertEqual(lab.leg_drops("client"), {"sa_expired": 2})
        self.assertIsNone(lab.relay.dummy_to_client("laptop"))


class NATTests(SynchronousTestCase):
    def test_authenticated_datagram_moves_the_port(self) -> None:
        lab = Lab()
        lab.up([udp_packet(HOA, CN)], source=(COA, 6000))
        self.assertEqual(lab.relay.counters["client_port_moves"], 1)
        out = lab.down([udp_packet(CN, HOA)])
        self.assertEqual([a for _, a in out], [(COA, 6000)])

    def test_dummy_moves_the_port(self) -> None:
        lab = Lab()
        lab.from_clients([(lab.client_out.seal(b"", NEXT_HEADER_NONE), (COA, 6001))])
        self.assertEqual([a for _, a in lab.down([udp_packet(CN, HOA)])], [(COA, 6001)])

    def test_forged_datagram_does_not_move_it(self) -> None:
        lab = Lab()
        forged = OutboundSA.from_keymat(C2R, K_C2R_2).seal(udp_packet(HOA, CN))
        lab.from_clients([(forged, (COA, 7000))])
        garbage = struct.pack("!II", C2R, 9) + bytes(44)
        lab.from_clients([(garbage, (COA, 7001))])
        self.assertEqual(lab.relay.counters["bad_icv"], 2)
        self.assertEqual(lab.relay.counters["client_port_moves"], 0)
        self.assertEqual([a for _, a in lab.down([udp_packet(CN, HOA)])], [(COA, 4500)])

    def test_replay_from_new_port_does_not_move_it(self) -> None:
        lab = Lab()
        esp = lab.client_out.seal(udp_packet(HOA, CN))
        lab.from_clients([(esp, (COA, 4500))])
        lab.from_clients([(esp, (COA, 7002))])
        self.assertEqual(lab.relay.counters["replayed"], 1)
        self.assertEqual([a for _, a in lab.down([udp_packet(CN, HOA)])], [(COA, 4500)])

    def test_other_host_does_not_move_it(self) -> None:
        lab = Lab()
        lab.up([udp_packet(HOA, CN)], source=("198.51.100.99", 4500))
        self.assertEqual([a for _, a in lab.down([udp_packet(CN, HOA)])], [(COA, 4500)])

    def test_move_client(self) -> None:
        lab = Lab()
        lab.relay.move_client("laptop", ("192.0.2.50", 4500))
        self.assertEqual(lab.up([udp_packet(HOA, CN)]), [])
        self.assertEqual(len(lab.up([udp_packet(HOA, CN)], source=("192.0.2.50", 4500))), 1)
        self.assertEqual([a for _, a in lab.down([udp_packet(CN, HOA)])], [("192.0.2.50", 4500)])

    def test_dummy_to_client(self) -> None:
        lab = Lab()
        dummy = lab.relay.dummy_to_client("laptop")
        assert dummy is not None
        self.assertEqual(dummy[1], (COA, 4500))
        self.assertEqual(lab.client_in.open(dummy[0]), b"")
        self.assertIsNone(lab.relay.dummy_to_client("nobody"))
        self.assertIsNone(Lab(client=False).relay.dummy_to_client("laptop"))


class RekeyTests(SynchronousTestCase):
    def test_client_leg_make_before_break(self) -> None:
        lab = Lab()
        late = lab.client_out.seal(udp_packet(HOA, CN, tag=1))  # in flight under the old SA
        lab.relay.rekey_client(
            "laptop", InboundSA.from_keymat(C2R_2, K_C2R_2), OutboundSA.from_keymat(R2C_2, K_R2C_2)
        )
        # The relay seals towards the client with the new SA at once.
        down = lab.down([udp_packet(CN, HOA)])
        self.assertEqual([_spi(esp) for esp, _ in down], [R2C_2])
        self.assertEqual(
            InboundSA.from_keymat(R2C_2, K_R2C_2).open(down[0][0]), udp_packet(CN, HOA)
        )
        # The client switches; both the new and the late old packets get through.
        new_out = OutboundSA.from_keymat(C2R_2, K_C2R_2)
        fresh = new_out.seal(udp_packet(HOA, CN, tag=2))
        out = lab.from_clients([(fresh, (COA, 4500)), (late, (COA, 4500))])
        self.assertEqual(lab.at_home(out), [udp_packet(HOA, CN, tag=2), udp_packet(HOA, CN, tag=1)])
        # Retiring the old SA ends it; the new one goes on.
        lab.relay.retire_client("laptop", C2R)
        old_again = lab.client_out.seal(udp_packet(HOA, CN, tag=3))
        self.assertEqual(lab.from_clients([(old_again, (COA, 4500))]), [])
        self.assertEqual(lab.relay.counters["unknown_spi"], 1)
        self.assertEqual(
            len(lab.from_clients([(new_out.seal(udp_packet(HOA, CN)), (COA, 4500))])), 1
        )
        self.assertNotIn(C2R, lab.relay.client_spis)

    def test_home_leg_make_before_break(self) -> None:
        lab = Lab()
        late = lab.home_out.seal(udp_packet(CN, HOA, tag=1))
        lab.relay.rekey_home(
            "laptop", InboundSA.from_keymat(H2R_2, K_H2R_2), OutboundSA.from_keymat(R2H_2, K_R2H_2)
        )
        up = lab.up([udp_packet(HOA, CN)])
        self.assertEqual([_spi(esp) for esp, *_ in up], [R2H_2])
        self.assertEqual(InboundSA.from_keymat(R2H_2, K_R2H_2).open(up[0][0]), udp_packet(HOA, CN))
        new_out = OutboundSA.from_keymat(H2R_2, K_H2R_2)
        fresh = new_out.seal(udp_packet(CN, HOA, tag=2))
        out = lab.from_home([(4500, fresh, (HA, 4500)), (4500, late, (HA, 4500))])
        self.assertEqual(
            lab.at_client(out), [udp_packet(CN, HOA, tag=2), udp_packet(CN, HOA, tag=1)]
        )
        lab.relay.retire_home("laptop", H2R)
        self.assertEqual(lab.down([udp_packet(CN, HOA)]), [])
        self.assertEqual(lab.relay.counters["unknown_spi"], 1)
        self.assertEqual(
            len(lab.from_home([(4500, new_out.seal(udp_packet(CN, HOA)), (HA, 4500))])), 1
        )

    def test_retire_of_the_current_spi_is_ignored(self) -> None:
        lab = Lab()
        lab.relay.retire_client("laptop", C2R)
        lab.relay.retire_home("laptop", H2R)
        lab.relay.retire_client("nobody", C2R)
        self.assertEqual(len(lab.up([udp_packet(HOA, CN)])), 1)
        self.assertEqual(len(lab.down([udp_packet(CN, HOA)])), 1)

    def test_second_rekey_drops_the_oldest(self) -> None:
        lab = Lab()
        lab.relay.rekey_client(
            "laptop", InboundSA.from_keymat(C2R_2, K_C2R_2), OutboundSA.from_keymat(R2C_2, K_R2C_2)
        )
        lab.relay.rekey_client(
            "laptop", InboundSA.from_keymat(0x1003, K_C2R), OutboundSA.from_keymat(0x2003, K_R2C)
        )
        self.assertEqual(set(lab.relay.client_spis), {C2R_2, 0x1003})
        self.assertEqual(lab.up([udp_packet(HOA, CN)]), [])

    def test_rekey_without_leg_is_ignored(self) -> None:
        lab = Lab(client=False)
        lab.relay.rekey_client(
            "laptop", InboundSA.from_keymat(C2R_2, K_C2R_2), OutboundSA.from_keymat(R2C_2, K_R2C_2)
        )
        lab.relay.rekey_home(
            "nobody", InboundSA.from_keymat(H2R_2, K_H2R_2), OutboundSA.from_keymat(R2H_2, K_R2H_2)
        )
        self.assertEqual(lab.relay.client_spis, {})
        self.assertEqual(set(lab.relay.home_spis), {H2R})

    def test_rekey_spi_in_use_by_another_visitor_refused(self) -> None:
        lab = Lab()
        lab.relay.set_client(
            "phone", HOA2, InboundSA.from_keymat(C2R_2, K_C2R_2),
            OutboundSA.from_keymat(R2C_2, K_R2C_2), ("192.0.2.9", 4500),
        )  # fmt: skip
        with self.assertRaises(ValueError):
            lab.relay.rekey_client(
                "laptop", InboundSA.from_keymat(C2R_2, K_C2R), OutboundSA.from_keymat(0x2009, K_R2C)
            )
        self.assertEqual(len(lab.up([udp_packet(HOA, CN)])), 1)


class LegLifecycleTests(SynchronousTestCase):
    def test_drop_client(self) -> None:
        lab = Lab()
        lab.relay.drop_client("laptop", spi=0x7777)  # not the current SA: nothing happens
        self.assertEqual(len(lab.up([udp_packet(HOA, CN)])), 1)
        lab.relay.drop_client("laptop", spi=C2R)
        self.assertEqual(lab.up([udp_packet(HOA, CN)]), [])
        self.assertEqual(lab.relay.counters["unknown_spi"], 1)
        # The home leg and the home address stay: home traffic waits for a client leg.
        self.assertEqual(lab.down([udp_packet(CN, HOA)]), [])
        self.assertEqual(lab.relay.counters["client_sa_pending"], 1)
        self.assertEqual(lab.down([udp_packet(CN, HOA2)]), [])
        self.assertEqual(lab.relay.counters["wrong_inner_destination"], 1)
        self.assertIn("laptop", lab.relay.visitors)

    def test_drop_home(self) -> None:
        lab = Lab()
        lab.relay.drop_home("laptop", spi=0x7777)
        self.assertEqual(len(lab.down([udp_packet(CN, HOA)])), 1)
        lab.relay.drop_home("laptop")
        self.assertEqual(lab.down([udp_packet(CN, HOA)]), [])
        self.assertEqual(lab.relay.counters["unknown_spi"], 1)
        self.assertEqual(lab.up([udp_packet(HOA, CN)]), [])
        self.assertEqual(lab.relay.counters["home_sa_pending"], 1)

    def test_both_legs_dropped_forgets_the_visitor(self) -> None:
        lab = Lab()
        lab.relay.drop_client("laptop")
        lab.relay.drop_home("laptop", spi=H2R)
        self.assertEqual(lab.relay.visitors, {})
        self.assertEqual(lab.relay.by_home_address, {})
        # The home address is free again.
        lab.relay.set_client(
            "phone", HOA, InboundSA.from_keymat(C2R_2, K_C2R_2),
            OutboundSA.from_keymat(R2C_2, K_R2C_2), ("192.0.2.9", 4500),
        )  # fmt: skip

    def test_remove(self) -> None:
        lab = Lab()
        lab.relay.rekey_client(
            "laptop", InboundSA.from_keymat(C2R_2, K_C2R_2), OutboundSA.from_keymat(R2C_2, K_R2C_2)
        )
        lab.relay.remove("laptop")
        lab.relay.remove("laptop")
        self.assertEqual(lab.relay.visitors, {})
        self.assertEqual(lab.relay.client_spis, {})
        self.assertEqual(lab.relay.home_spis, {})
        self.assertEqual(lab.relay.by_home_address, {})
        self.assertEqual(lab.up([udp_packet(HOA, CN)]), [])
        self.assertEqual(lab.down([udp_packet(CN, HOA)]), [])
        self.assertEqual(lab.relay.counters["unknown_spi"], 2)
        self.assertEqual(lab.relay.stats()["visitors"], {})

    def test_duplicate_home_address_refused(self) -> None:
        lab = Lab()
        with self.assertRaises(ValueError):
            lab.relay.set_client(
                "phone", HOA, InboundSA.from_keymat(C2R_2, K_C2R_2),
                OutboundSA.from_keymat(R2C_2, K_R2C_2), ("192.0.2.9", 4500),
            )  # fmt: skip
        self.assertNotIn("phone", lab.relay.visitors)
        self.assertNotIn(C2R_2, lab.relay.client_spis)
        self.assertEqual(len(lab.up([udp_packet(HOA, CN)])), 1)

    def test_duplicate_spi_refused(self) -> None:
        lab = Lab()
        with self.assertRaises(ValueError):
            lab.relay.set_client(
                "phone", HOA2, InboundSA.from_keymat(C2R, K_C2R_2),
                OutboundSA.from_keymat(R2C_2, K_R2C_2), ("192.0.2.9", 4500),
            )  # fmt: skip
        with self.assertRaises(ValueError):
            lab.relay.set_home(
                "phone", HA, InboundSA.from_keymat(H2R, K_H2R_2), OutboundSA.from_keymat(R2H, K_R2H)
            )
        self.assertNotIn("phone", lab.relay.visitors)
        self.assertEqual(len(lab.up([udp_packet(HOA, CN)])), 1)

    def test_set_client_again_replaces_the_leg(self) -> None:
        lab = Lab()
        lab.relay.set_client(
            "laptop", HOA, InboundSA.from_keymat(C2R_2, K_C2R_2),
            OutboundSA.from_keymat(R2C_2, K_R2C_2), ("192.0.2.9", 4500),
        )  # fmt: skip
        self.assertEqual(set(lab.relay.client_spis), {C2R_2})
        self.assertEqual(lab.up([udp_packet(HOA, CN)]), [])  # the old SA is gone at once
        self.assertEqual([a for _, a in lab.down([udp_packet(CN, HOA)])], [("192.0.2.9", 4500)])

    def test_new_home_address_releases_the_old(self) -> None:
        lab = Lab()
        lab.relay.set_client(
            "laptop", HOA2, InboundSA.from_keymat(C2R, K_C2R),
            OutboundSA.from_keymat(R2C, K_R2C), (COA, 4500),
        )  # fmt: skip
        self.assertEqual(set(lab.relay.by_home_address), {HOA2.packed})
        self.assertEqual(lab.up([udp_packet(HOA, CN)]), [])
        self.assertEqual(lab.relay.counters["spoofed_inner_source"], 1)

    def test_home_agent_must_be_ipv4(self) -> None:
        lab = Lab(home=False)
        with self.assertRaises(ValueError):
            lab.relay.set_home(
                "laptop", "ha.example", InboundSA.from_keymat(H2R, K_H2R),
                OutboundSA.from_keymat(R2H, K_R2H),
            )  # fmt: skip


class StatsTests(SynchronousTestCase):
    def test_stats_content_without_keys(self) -> None:
        lab = Lab()
        lab.relay.rekey_client(
            "laptop", InboundSA.from_keymat(C2R_2, K_C2R_2), OutboundSA.from_keymat(R2C_2, K_R2C_2)
        )
        lab.up([udp_packet(HOA, CN)])
        lab.up([udp_packet(HOA2, CN)])
        lab.down([udp_packet(CN, HOA)])
        stats = lab.relay.stats()
        counters = stats["counters"]
        assert isinstance(counters, dict)
        self.assertEqual(counters["spoofed_inner_source"], 1)
        visitors = stats["visitors"]
        assert isinstance(visitors, dict)
        laptop = visitors["laptop"]
        self.assertEqual(laptop["home_address"], str(HOA))
        self.assertEqual(laptop["drops"], {"spoofed_inner_source": 1})
        client = laptop["client"]
        self.assertEqual(client["peer"], f"{COA}:4500")
        self.assertEqual(
            (client["spi_in"], client["spi_in_old"], client["spi_out"]),
            ("0x00001002", "0x00001001", "0x00002002"),
        )
        self.assertEqual((client["packets_in"], client["packets_out"]), (1, 1))
        self.assertEqual(laptop["home"]["peer"], f"{HA}:4500")
        self.assertEqual(laptop["home"]["packets_out"], 1)
        text = repr(stats) + str(stats)
        for keymat in KEYS:
            for secret in (keymat, keymat[:16], keymat[16:]):
                self.assertNotIn(secret.hex(), text)
                self.assertNotIn(secret.hex().upper(), text)
                self.assertNotIn(repr(secret), text)


_HOSTS = st.one_of(
    st.sampled_from([COA, HA, "198.51.100.8", "0.0.0.0"]),
    st.builds(lambda a: str(IPv4Address(a)), st.integers(0, 2**32 - 1)),
)
_ADDRS = st.tuples(_HOSTS, st.integers(0, 65535))
_PAYLOADS = st.one_of(
    st.binary(max_size=120),
    st.builds(
        lambda spi, seq, rest: struct.pack("!II", spi, seq) + rest,
        st.sampled_from([C2R, R2C, H2R, R2H, 0, 1, 0xFFFFFFFF]),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=120),
    ),
    st.builds(lambda rest: NON_ESP_MARKER + rest, st.binary(max_size=60)),
)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.tuples(_PAYLOADS, _ADDRS), max_size=8))
    def test_from_clients(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        lab = Lab()
        self.assertEqual(lab.from_clients(datagrams), [])

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        st.lists(
            st.tuples(st.one_of(st.just(4500), st.integers(0, 70000)), _PAYLOADS, _ADDRS),
            max_size=8,
        )
    )
    def test_from_home(self, items: list[tuple[int, bytes, tuple[str, int]]]) -> None:
        lab = Lab()
        self.assertEqual(lab.from_home(items), [])

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.integers(0, 10_000), st.integers(1, 255), st.booleans())
    def test_altered_datagram_never_forwarded(self, where: int, flip: int, up: bool) -> None:
        lab = Lab()
        if up:
            esp = bytearray(lab.client_out.seal(udp_packet(HOA, CN)))
            esp[where % len(esp)] ^= flip
            self.assertEqual(lab.from_clients([(bytes(esp), (COA, 4500))]), [])
        else:
            esp = bytearray(lab.home_out.seal(udp_packet(CN, HOA)))
            esp[where % len(esp)] ^= flip
            self.assertEqual(lab.from_home([(4500, bytes(esp), (HA, 4500))]), [])

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.binary(max_size=80), st.booleans())
    def test_authentic_inner_of_any_shape(self, inner: bytes, up: bool) -> None:
        """Whatever an authenticated peer puts inside, only its own traffic is re-sealed."""
        lab = Lab()
        if up:
            out = lab.up([inner])
            ok = len(inner) >= 20 and inner[0] >> 4 == 4 and inner[12:16] == HOA.packed
            self.assertEqual(lab.at_home(out), [inner] if ok and inner else [])
        else:
            got = lab.down([inner])
            ok = len(inner) >= 20 and inner[0] >> 4 == 4 and inner[16:20] == HOA.packed
            self.assertEqual(lab.at_client(got), [inner] if ok and inner else [])


VIP = IPv4Address("10.79.0.1")


class PlainLab:
    """A relay as VPN gateway with one "plain" visitor "laptop" at ``VIP`` (no home leg)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.relay = ReSealer(clock=self.clock)
        self.relay.set_client(
            "laptop", VIP, InboundSA.from_keymat(C2R, K_C2R), OutboundSA.from_keymat(R2C, K_R2C),
            (COA, 4500), plain=True,
        )  # fmt: skip
        self.client_out = OutboundSA.from_keymat(C2R, K_C2R)
        self.client_in = InboundSA.from_keymat(R2C, K_R2C)
        self.visitor = self.relay.visitors["laptop"]

    def up(
        self,
        packets: list[bytes],
        source: tuple[str, int] = (COA, 4500),
        plain: list[tuple[Visitor, bytes]] | None = None,
    ) -> list[Outgoing]:
        """The client seals ``packets``; what the relay re-seals for home (nothing, here)."""
        out: list[Outgoing] = []
        self.relay.from_clients(
            [(self.client_out.seal(p), source) for p in packets], out, plain
        )
        return out

    def leg(self) -> Leg:
        leg = self.visitor.client
        assert leg is not None
        return leg


class PlainVisitorTests(SynchronousTestCase):
    """A client of the relay as VPN gateway: opened packets handed out, not re-sealed."""

    def test_inner_handed_out(self) -> None:
        lab = PlainLab()
        self.assertTrue(lab.visitor.plain)
        packets = [udp_packet(VIP, HOA, size=n, tag=n) for n in (0, 10, 1400)]
        plain: list[tuple[Visitor, bytes]] = []
        self.assertEqual(lab.up(packets, plain=plain), [])
        self.assertEqual(plain, [(lab.visitor, p) for p in packets])
        leg = lab.leg()
        self.assertEqual((leg.packets_in, leg.bytes_in), (3, sum(map(len, packets))))
        self.assertEqual((leg.packets_out, dict(leg.drops)), (0, {}))
        self.assertEqual(lab.relay.counters["resealed_to_home"], 0)
        self.assertEqual(lab.relay.counters["home_sa_pending"], 0)

    def test_without_plain_list(self) -> None:
        """A caller that takes no plain packets: dropped as "no home leg", counted."""
        lab = PlainLab()
        self.assertEqual(lab.up([udp_packet(VIP, HOA)]), [])
        self.assertEqual(lab.relay.counters["home_sa_pending"], 1)
        self.assertEqual(lab.leg().packets_in, 0)

    def test_terminate_visitor_not_handed_out(self) -> None:
        """A visitor installed without plain= (terminate mode) never lands in the plain list."""
        lab = Lab(home=False)
        plain: list[tuple[Visitor, bytes]] = []
        out: list[Outgoing] = []
        lab.relay.from_clients([(lab.client_out.seal(udp_packet(HOA, CN)), (COA, 4500))], out,
                               plain)  # fmt: skip
        self.assertEqual((out, plain), ([], []))
        self.assertFalse(lab.relay.visitors["laptop"].plain)
        self.assertEqual(lab.relay.counters["home_sa_pending"], 1)

    def test_replaced_leg_takes_new_flag(self) -> None:
        """set_client again without plain=: the visitor is no longer plain."""
        lab = PlainLab()
        lab.relay.set_client(
            "laptop", VIP, InboundSA.from_keymat(C2R_2, K_C2R_2),
            OutboundSA.from_keymat(R2C_2, K_R2C_2), (COA, 4500),
        )  # fmt: skip
        self.assertFalse(lab.relay.visitors["laptop"].plain)

    def test_checked_like_the_others(self) -> None:
        """Spoofed inner source, wrong outer host, bad ICV, malformed inner, dummy: not handed."""
        lab = PlainLab()
        plain: list[tuple[Visitor, bytes]] = []
        lab.up([udp_packet(HOA, CN)], plain=plain)
        lab.up([udp_packet(VIP, CN)], source=("198.51.100.8", 4500), plain=plain)
        tampered = bytearray(lab.client_out.seal(udp_packet(VIP, CN)))
        tampered[-1] ^= 1
        lab.relay.from_clients([(bytes(tampered), (COA, 4500))], [], plain)
        lab.up([b"\x45" + bytes(10)], plain=plain)
        lab.relay.from_clients([(lab.client_out.seal(b"", NEXT_HEADER_NONE), (COA, 4500))], [],
                               plain)  # fmt: skip
        self.assertEqual(plain, [])
        counters = lab.relay.counters
        self.assertEqual(counters["spoofed_inner_source"], 1)
        self.assertEqual(counters["bad_source"], 1)
        self.assertEqual(counters["malformed_inner"], 1)
        self.assertEqual(counters["dummies_in"], 1)
        self.assertEqual(sum(lab.leg().drops.values()), 4)  # dummies are no drop
        lab.up([udp_packet(VIP, CN, tag=7)], plain=plain)
        self.assertEqual(plain, [(lab.visitor, udp_packet(VIP, CN, tag=7))])

    def test_nat_move(self) -> None:
        """An authenticated packet from a new port of the client's host moves the leg there."""
        lab = PlainLab()
        plain: list[tuple[Visitor, bytes]] = []
        lab.up([udp_packet(VIP, CN)], source=(COA, 40001), plain=plain)
        self.assertEqual(len(plain), 1)
        self.assertEqual(lab.leg().addr, (COA, 40001))
        self.assertEqual(lab.relay.counters["client_port_moves"], 1)


class SealToClientTests(SynchronousTestCase):
    """seal_to_client: a packet for a plain visitor's own address, sealed for its client."""

    def test_happy_path(self) -> None:
        lab = PlainLab()
        packets = [udp_packet(HOA, VIP, size=n, tag=n) for n in (0, 33, 1400)]
        sealed = [lab.relay.seal_to_client(lab.visitor, p) for p in packets]
        self.assertEqual([s[1] for s in sealed if s is not None], [(COA, 4500)] * 3)
        self.assertEqual([lab.client_in.open(s[0]) for s in sealed if s is not None], packets)
        self.assertEqual({_spi(s[0]) for s in sealed if s is not None}, {R2C})
        leg = lab.leg()
        self.assertEqual((leg.packets_out, leg.bytes_out), (3, sum(map(len, packets))))
        self.assertEqual(lab.relay.counters["sealed_to_clients"], 3)

    def test_follows_nat_move(self) -> None:
        lab = PlainLab()
        lab.up([udp_packet(VIP, CN)], source=(COA, 40001), plain=[])
        sealed = lab.relay.seal_to_client(lab.visitor, udp_packet(HOA, VIP))
        assert sealed is not None
        self.assertEqual(sealed[1], (COA, 40001))

    def test_wrong_destination(self) -> None:
        lab = PlainLab()
        for packet in (udp_packet(HOA, CN), udp_packet(VIP, HOA), b"\x45" + bytes(10)):
            self.assertIsNone(lab.relay.seal_to_client(lab.visitor, packet))
        self.assertEqual(lab.relay.counters["wrong_inner_destination"], 3)
        self.assertEqual(lab.relay.counters["sealed_to_clients"], 0)
        self.assertEqual(lab.leg().packets_out, 0)

    def test_visitor_without_address(self) -> None:
        """A visitor known only by its home leg (no address yet) gets nothing sealed."""
        lab = Lab(client=False)
        v = lab.relay.visitors["laptop"]
        self.assertEqual(v.home_address, b"")
        self.assertIsNone(lab.relay.seal_to_client(v, udp_packet(CN, HOA)))
        self.assertEqual(lab.relay.counters["wrong_inner_destination"], 1)

    def test_no_client_leg(self) -> None:
        """After the client leg is gone (the tunnel went down): nothing, counted."""
        lab = PlainLab()
        v = lab.visitor
        lab.relay.drop_client("laptop")
        self.assertNotIn("laptop", lab.relay.visitors)
        self.assertIsNone(lab.relay.seal_to_client(v, udp_packet(HOA, VIP)))
        self.assertEqual(lab.relay.counters["client_sa_pending"], 1)
        self.assertEqual(lab.relay.counters["sealed_to_clients"], 0)

    def test_sa_expired(self) -> None:
        """An outbound SA at the end of its sequence space: nothing, counted once per packet."""
        lab = PlainLab()
        lab.relay.set_client(
            "laptop", VIP, InboundSA.from_keymat(C2R, K_C2R),
            OutboundSA.from_keymat(R2C, K_R2C, seq=SEQ_MAX), (COA, 4500), plain=True,
        )  # fmt: skip
        v = lab.relay.visitors["laptop"]
        for _ in range(2):
            self.assertIsNone(lab.relay.seal_to_client(v, udp_packet(HOA, VIP)))
        self.assertEqual(lab.relay.counters["sa_expired"], 2)
        assert v.client is not None
        self.assertEqual(v.client.drops["sa_expired"], 2)
