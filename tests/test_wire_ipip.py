# -*- test-case-name: tests.test_wire_ipip -*-
"""Tests for L{smobility.wire.ipip}: the inner UDP packet and IP-in-IP framing.

Every builder is checked against scapy, which dissects the packets and
recomputes the checksums on its own; scapy's packets are parsed by ours.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.packet import Raw
from twisted.trial.unittest import SynchronousTestCase

from smobility.wire import ipip, ipv4
from smobility.wire.errors import WireError

FAST = settings(max_examples=200, deadline=None, database=None)

RELAY = "198.51.100.7"
HOME = "203.0.113.20"


def _a(text: str) -> bytes:
    return IPv4Address(text).packed


RELAY_B = _a(RELAY)
HOME_B = _a(HOME)

addresses = st.binary(min_size=4, max_size=4)
ports = st.integers(min_value=0, max_value=0xFFFF)
payloads = st.binary(max_size=1500)


def scapy_recomputed(packet: bytes) -> bytes:
    """Dissect C{packet} with scapy and rebuild it with every checksum recomputed by scapy."""
    parsed = IP(packet)
    layer: Any = parsed
    while isinstance(layer, IP):
        del layer.chksum
        layer = layer.payload
    if UDP in parsed:
        del parsed[UDP].chksum
    return bytes(IP(bytes(parsed)))


def _patch(packet: bytes, offset: int, value: bytes, *, fix_ip: bool = True) -> bytes:
    """Overwrite bytes at C{offset}, then (by default) repair the IPv4 header checksum."""
    out = bytearray(packet)
    out[offset : offset + len(value)] = value
    if fix_ip:
        hlen = (out[0] & 0x0F) * 4
        out[10:12] = b"\0\0"
        out[10:12] = struct.pack("!H", ipv4.checksum(bytes(out[:hlen])))
    return bytes(out)


class UDPPacketTests(SynchronousTestCase):
    """L{ipip.udp_packet} and L{ipip.parse_udp_packet}."""

    def test_round_trip(self) -> None:
        """What udp_packet builds, parse_udp_packet returns, for every payload parity."""
        for size in (0, 1, 2, 3, 7, 8, 1399, 1400, ipip.MAX_PAYLOAD):
            payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            packet = ipip.udp_packet(RELAY_B, 434, HOME_B, 4500, payload, ident=9, ttl=33)
            self.assertEqual(len(packet), ipip.INNER_OVERHEAD + size)
            self.assertEqual(ipip.parse_udp_packet(packet), (RELAY_B, 434, HOME_B, 4500, payload))

    def test_header_fields(self) -> None:
        """Version 4, IHL 5, DF set, no fragment offset, protocol 17, the TTL and ident given."""
        packet = ipip.udp_packet(RELAY_B, 1, HOME_B, 2, b"x", ident=0xBEEF, ttl=7)
        self.assertEqual(packet[0], 0x45)
        self.assertEqual(packet[4:6], b"\xbe\xef")
        self.assertEqual(packet[6:8], b"\x40\x00")
        self.assertEqual(packet[8], 7)
        self.assertEqual(packet[9], 17)
        self.assertEqual(ipv4.checksum(packet[:20]), 0)

    def test_scapy_reads_ours(self) -> None:
        """scapy dissects our packets and its own checksums equal ours."""
        for size in (0, 1, 2, 33, 1400):
            payload = b"\xa5" * size
            packet = ipip.udp_packet(RELAY_B, 4500, HOME_B, 4500, payload, ident=1234)
            parsed = IP(packet)
            self.assertEqual(parsed.src, RELAY)
            self.assertEqual(parsed.dst, HOME)
            self.assertEqual(parsed.proto, 17)
            self.assertEqual(str(parsed.flags), "DF")
            self.assertEqual(parsed.frag, 0)
            self.assertEqual(parsed[UDP].sport, 4500)
            self.assertEqual(parsed[UDP].dport, 4500)
            self.assertEqual(parsed[UDP].len, 8 + size)
            self.assertEqual(bytes(parsed[UDP].payload), payload)
            self.assertEqual(scapy_recomputed(packet), packet)

    def test_we_read_scapy(self) -> None:
        """Our parser accepts scapy's packets, checksums and all."""
        for size in (0, 1, 2, 99, 1472):
            payload = bytes(range(size % 256)) * (size // max(size % 256, 1) + 1)
            payload = payload[:size]
            packet = bytes(
                IP(src=RELAY, dst=HOME, flags="DF", id=5) / UDP(sport=434, dport=434) / Raw(payload)
            )
            self.assertEqual(ipip.parse_udp_packet(packet), (RELAY_B, 434, HOME_B, 434, payload))

    def test_zero_udp_checksum_means_none(self) -> None:
        """A UDP checksum of 0 (none computed) is accepted (RFC 768)."""
        packet = bytes(IP(src=RELAY, dst=HOME) / UDP(sport=1, dport=2, chksum=0) / Raw(b"abc"))
        self.assertEqual(ipip.parse_udp_packet(packet)[4], b"abc")

    def test_computed_zero_sent_as_ffff(self) -> None:
        """A UDP checksum that computes to 0 is sent as 0xFFFF, and scapy agrees it is valid."""
        base = ipip.udp_packet(RELAY_B, 1000, HOME_B, 2000, b"\0\0")
        csum = struct.unpack_from("!H", base, 26)[0]
        # Two payload bytes equal to the checksum raise the sum to 0xFFFF:
        # the checksum proper is then 0, which goes out as 0xFFFF.
        packet = ipip.udp_packet(RELAY_B, 1000, HOME_B, 2000, struct.pack("!H", csum))
        self.assertEqual(packet[26:28], b"\xff\xff")
        self.assertEqual(ipip.parse_udp_packet(packet)[4], struct.pack("!H", csum))
        self.assertEqual(scapy_recomputed(packet), packet)

    def test_inner_options_honoured(self) -> None:
        """An IPv4 header with options is parsed past its IHL."""
        packet = bytes(
            IP(src=RELAY, dst=HOME, options=[IPOption_Router_Alert(), IPOption_NOP()])
            / UDP(sport=7, dport=8)
            / Raw(b"opt")
        )
        self.assertGreater(packet[0] & 0x0F, 5)
        self.assertEqual(ipip.parse_udp_packet(packet), (RELAY_B, 7, HOME_B, 8, b"opt"))

    def test_build_rejects(self) -> None:
        """Bad addresses, ports, TTL, ident or an oversized payload raise WireError."""
        build = ipip.udp_packet
        cases: list[Callable[[], bytes]] = [
            lambda: build(b"\1\2\3", 1, HOME_B, 2, b""),
            lambda: build(RELAY_B, 1, b"\1\2\3\4\5", 2, b""),
            lambda: build(RELAY_B, -1, HOME_B, 2, b""),
            lambda: build(RELAY_B, 1, HOME_B, 0x10000, b""),
            lambda: build(RELAY_B, 1, HOME_B, 2, b"", ttl=256),
            lambda: build(RELAY_B, 1, HOME_B, 2, b"", ident=0x10000),
            lambda: build(RELAY_B, 1, HOME_B, 2, b"\0" * (0xFFFF - 27)),
        ]
        for i, case in enumerate(cases):
            with self.assertRaises(WireError, msg=f"case {i}"):
                case()
        # The largest payload that fits is accepted.
        self.assertEqual(len(build(RELAY_B, 1, HOME_B, 2, b"\0" * (0xFFFF - 28))), 0xFFFF)


class ParseRejectionTests(SynchronousTestCase):
    """Every reason L{ipip.parse_udp_packet} refuses a packet, each with its own sentence."""

    def setUp(self) -> None:
        self.good = ipip.udp_packet(RELAY_B, 4500, HOME_B, 4500, b"hello, world")

    def assertRefused(self, packet: bytes, words: str) -> None:  # noqa: N802 - trial style
        """parse_udp_packet raises WireError whose message contains C{words}."""
        with self.assertRaises(WireError) as caught:
            ipip.parse_udp_packet(packet)
        self.assertIn(words, str(caught.exception))

    def test_too_short(self) -> None:
        """Fewer bytes than an IPv4 header."""
        self.assertRefused(b"", "too short for an IPv4 header")
        self.assertRefused(self.good[:19], "too short for an IPv4 header")

    def test_not_ipv4(self) -> None:
        """A version other than 4."""
        self.assertRefused(_patch(self.good, 0, b"\x65"), "not IPv4")

    def test_bad_ihl(self) -> None:
        """An IHL below 5, or beyond the packet."""
        self.assertRefused(_patch(self.good, 0, b"\x44", fix_ip=False), "IHL")
        short = ipip.udp_packet(RELAY_B, 1, HOME_B, 2, b"")  # 28 bytes
        self.assertRefused(_patch(short, 0, b"\x48", fix_ip=False), "IHL")

    def test_truncated(self) -> None:
        """Fewer bytes than the total length says."""
        self.assertRefused(self.good[:-1], "truncated")

    def test_total_length_mismatch(self) -> None:
        """More bytes than the total length says."""
        self.assertRefused(self.good + b"\0", "total length")

    def test_fragments(self) -> None:
        """MF set, or a non-zero fragment offset."""
        self.assertRefused(_patch(self.good, 6, b"\x20\x00"), "fragment")
        self.assertRefused(_patch(self.good, 6, b"\x40\x01"), "fragment")
        self.assertRefused(_patch(self.good, 6, b"\x00\x10"), "fragment")

    def test_not_udp(self) -> None:
        """A protocol other than 17."""
        self.assertRefused(_patch(self.good, 9, b"\x06"), "not UDP")

    def test_bad_header_checksum(self) -> None:
        """A header checksum that does not verify."""
        self.assertRefused(_patch(self.good, 8, b"\x3f", fix_ip=False), "header checksum")

    def test_udp_too_short(self) -> None:
        """An IPv4 packet with fewer than 8 bytes after the header."""
        packet = ipv4.ipv4_packet(RELAY_B, HOME_B, 17, b"\0\1\0\2\0")
        self.assertRefused(packet, "too short for UDP")

    def test_udp_length_wrong(self) -> None:
        """A UDP length that is not what the IP header leaves."""
        self.assertRefused(_patch(self.good, 24, b"\x00\x09"), "UDP length")
        self.assertRefused(_patch(self.good, 24, b"\xff\xff"), "UDP length")

    def test_bad_udp_checksum(self) -> None:
        """A UDP checksum that does not verify, or a payload changed under it."""
        self.assertRefused(_patch(self.good, 26, b"\x12\x34"), "UDP checksum")
        self.assertRefused(_patch(self.good, 30, b"J"), "UDP checksum")
        # Changing the addresses changes the pseudo-header.
        self.assertRefused(_patch(self.good, 12, _a("198.51.100.8")), "UDP checksum")


class EncapsulationTests(SynchronousTestCase):
    """L{ipip.encapsulate} and L{ipip.decapsulate}."""

    def setUp(self) -> None:
        self.inner = ipip.udp_packet(RELAY_B, 4500, HOME_B, 4500, b"esp packet")

    def test_round_trip(self) -> None:
        """decapsulate returns the outer addresses and the inner packet unchanged."""
        packet = ipip.encapsulate(RELAY_B, HOME_B, self.inner, ttl=9, ident=3)
        self.assertEqual(len(packet), len(self.inner) + 20)
        self.assertEqual(ipip.decapsulate(packet), (RELAY_B, HOME_B, self.inner))
        self.assertEqual(packet[8], 9)
        self.assertEqual(packet[9], 4)
        self.assertEqual(ipv4.checksum(packet[:20]), 0)

    def test_rfc2003_copies_tos_and_df(self) -> None:
        """RFC 2003 section 3.1: the outer TOS is the inner's; DF is copied when set."""
        with_df = bytes(IP(src=RELAY, dst=HOME, tos=0xB8, flags="DF") / UDP() / Raw(b"x"))
        outer = IP(ipip.encapsulate(RELAY_B, HOME_B, with_df))
        self.assertEqual(outer.tos, 0xB8)
        self.assertEqual(str(outer.flags), "DF")
        without = bytes(IP(src=RELAY, dst=HOME, tos=4) / UDP() / Raw(b"x"))
        outer = IP(ipip.encapsulate(RELAY_B, HOME_B, without))
        self.assertEqual(outer.tos, 4)
        self.assertEqual(int(outer.flags), 0)

    def test_scapy_reads_ours(self) -> None:
        """scapy dissects IP / IP / UDP with valid checksums at every layer."""
        packet = ipip.encapsulate(HOME_B, RELAY_B, self.inner)
        parsed = IP(packet)
        self.assertEqual((parsed.src, parsed.dst, parsed.proto), (HOME, RELAY, 4))
        inner = parsed.payload
        self.assertIsInstance(inner, IP)
        self.assertEqual((inner.src, inner.dst, inner.proto), (RELAY, HOME, 17))
        self.assertEqual(bytes(inner[UDP].payload), b"esp packet")
        self.assertEqual(scapy_recomputed(packet), packet)

    def test_we_read_scapy(self) -> None:
        """Our decapsulate and parse accept scapy's IP/IP/UDP, outer options included."""
        for options in ([], [IPOption_Router_Alert()]):
            packet = bytes(
                IP(src=RELAY, dst=HOME, options=options)
                / IP(src=RELAY, dst=HOME, flags="DF")
                / UDP(sport=434, dport=434)
                / Raw(b"registration")
            )
            self.assertEqual(packet[9], 4)
            outer_src, outer_dst, inner = ipip.decapsulate(packet)
            self.assertEqual((outer_src, outer_dst), (RELAY_B, HOME_B))
            self.assertEqual(
                ipip.parse_udp_packet(inner), (RELAY_B, 434, HOME_B, 434, b"registration")
            )

    def test_encapsulate_rejects(self) -> None:
        """Bad addresses, a non-IPv4 inner packet, a bad TTL or an oversized packet."""
        with self.assertRaises(WireError):
            ipip.encapsulate(b"\1", HOME_B, self.inner)
        with self.assertRaises(WireError):
            ipip.encapsulate(RELAY_B, HOME_B, b"\x60" + self.inner[1:])
        with self.assertRaises(WireError):
            ipip.encapsulate(RELAY_B, HOME_B, self.inner[:19])
        with self.assertRaises(WireError):
            ipip.encapsulate(RELAY_B, HOME_B, self.inner, ttl=300)
        big = ipip.udp_packet(RELAY_B, 1, HOME_B, 2, b"\0" * (ipip.MAX_PAYLOAD + 1))
        with self.assertRaises(WireError):
            ipip.encapsulate(RELAY_B, HOME_B, big)

    def assertRefused(self, packet: bytes, words: str) -> None:  # noqa: N802 - trial style
        """decapsulate raises WireError whose message contains C{words}."""
        with self.assertRaises(WireError) as caught:
            ipip.decapsulate(packet)
        self.assertIn(words, str(caught.exception))

    def test_decapsulate_rejects(self) -> None:
        """Each reason decapsulate refuses a packet."""
        good = ipip.encapsulate(RELAY_B, HOME_B, self.inner)
        self.assertRefused(good[:10], "too short")
        self.assertRefused(_patch(good, 0, b"\x65"), "not IPv4")
        self.assertRefused(_patch(good, 0, b"\x43", fix_ip=False), "IHL")
        self.assertRefused(good[:-3], "truncated")
        self.assertRefused(good + b"\0", "total length")
        self.assertRefused(_patch(good, 6, b"\x20\x00"), "fragment")
        self.assertRefused(_patch(good, 6, b"\x00\x01"), "fragment")
        self.assertRefused(_patch(good, 9, b"\x11"), "not IP in IP")
        self.assertRefused(_patch(good, 8, b"\x01", fix_ip=False), "header checksum")
        tiny = ipv4.ipv4_packet(RELAY_B, HOME_B, 4, b"\x45" + b"\0" * 18)
        self.assertRefused(tiny, "no inner IPv4 header")


class PropertyTests(SynchronousTestCase):
    """Round trips for any values; hostile bytes raise WireError and nothing else."""

    @FAST
    @given(
        addresses, ports, addresses, ports, payloads, st.integers(0, 0xFFFF), st.integers(0, 255)
    )
    def test_round_trip(
        self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes, ident: int, ttl: int
    ) -> None:
        """parse(udp_packet(x)) == x, decapsulate(encapsulate(p)) == p, and scapy agrees."""
        packet = ipip.udp_packet(src, sport, dst, dport, payload, ident=ident, ttl=ttl)
        self.assertEqual(ipip.parse_udp_packet(packet), (src, sport, dst, dport, payload))
        outer = ipip.encapsulate(dst, src, packet, ttl=ttl, ident=ident)
        self.assertEqual(ipip.decapsulate(outer), (dst, src, packet))
        self.assertEqual(scapy_recomputed(outer), outer)

    @FAST
    @given(st.binary(max_size=120))
    def test_parse_fuzz(self, data: bytes) -> None:
        """Random bytes: WireError or a result, never another exception."""
        for function in (ipip.parse_udp_packet, ipip.decapsulate):
            try:
                function(data)
            except WireError:
                pass

    @FAST
    @given(st.data())
    def test_mutation_fuzz(self, data: st.DataObject) -> None:
        """Valid packets with bytes changed, cut or added: WireError or a result, nothing else."""
        inner = ipip.udp_packet(
            RELAY_B, 4500, HOME_B, 4500, data.draw(st.binary(max_size=64), label="payload")
        )
        packet = bytearray(ipip.encapsulate(RELAY_B, HOME_B, inner))
        for _ in range(data.draw(st.integers(1, 4), label="changes")):
            at = data.draw(st.integers(0, len(packet) - 1), label="at")
            packet[at] = data.draw(st.integers(0, 255), label="byte")
        cut = data.draw(st.integers(0, len(packet)), label="cut")
        mutated = bytes(packet[:cut]) + data.draw(st.binary(max_size=4), label="tail")
        for candidate in (mutated, mutated[20:]):
            try:
                _s, _d, inner_part = ipip.decapsulate(candidate)
                ipip.parse_udp_packet(inner_part)
            except WireError:
                pass
            try:
                ipip.parse_udp_packet(candidate)
            except WireError:
                pass
