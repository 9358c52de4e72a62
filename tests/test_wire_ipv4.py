# -*- test-case-name: tests.test_wire_ipv4 -*-
"""Tests for L{smobility.wire.ipv4}: checksum, header, ICMP, MSS clamping.

Every builder is checked against scapy, which builds and dissects the same
packets independently (and recomputes checksums on its own).
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, IPOption_NOP, IPOption_Router_Alert
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum
from twisted.trial.unittest import SynchronousTestCase

from smobility.wire import ipv4
from smobility.wire.errors import WireError
from smobility.wire.ipv4 import IPv4Header

FAST = settings(max_examples=150, deadline=None, database=None)

HOST = "10.10.0.10"
PEER = "192.0.2.80"
ROUTER = "10.10.0.1"


def _a(text: str) -> bytes:
    return IPv4Address(text).packed


def scapy_recomputed(packet: bytes) -> IP:
    """Parse C{packet} with scapy, then rebuild it with every checksum recomputed."""
    parsed = IP(packet)
    del parsed.chksum
    for layer in (TCP, UDP, ICMP):
        if layer in parsed:
            del parsed[layer].chksum
    return IP(bytes(parsed))


def syn(
    tcp_options: list[tuple[str, object]], *, flags: str = "S", payload: bytes = b"", **ip: Any
) -> bytes:
    """A TCP segment from HOST to PEER built by scapy, with these TCP options."""
    return bytes(
        IP(src=HOST, dst=PEER, **ip)
        / TCP(sport=40000, dport=443, flags=flags, seq=1000, options=tcp_options)
        / Raw(payload)
    )


class ChecksumTests(SynchronousTestCase):
    """L{ipv4.checksum}: the Internet checksum of RFC 1071."""

    def test_rfc1071_example(self) -> None:
        """RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2."""
        self.assertEqual(ipv4.checksum(bytes.fromhex("0001f203f4f5f6f7")), 0xFFFF ^ 0xDDF2)

    def test_known_header(self) -> None:
        """A textbook header (checksum b861) verifies to 0 and recomputes to b861."""
        header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
        self.assertEqual(ipv4.checksum(header), 0xB861)
        whole = header[:10] + b"\xb8\x61" + header[12:]
        self.assertEqual(ipv4.checksum(whole), 0)

    def test_edges(self) -> None:
        """Empty and all-zero data give 0xFFFF; an odd length pads with a zero."""
        self.assertEqual(ipv4.checksum(b""), 0xFFFF)
        self.assertEqual(ipv4.checksum(bytes(20)), 0xFFFF)
        self.assertEqual(ipv4.checksum(b"\xff\xff"), 0)
        self.assertEqual(ipv4.checksum(b"\x12"), ipv4.checksum(b"\x12\x00"))
        self.assertEqual(ipv4.checksum(b"\x12\x34\x56"), ipv4.checksum(b"\x12\x34\x56\x00"))

    def test_scapy_headers(self) -> None:
        """Headers scapy builds carry the checksum we compute."""
        for ttl in (1, 64, 255):
            built = bytes(IP(src=HOST, dst=PEER, ttl=ttl, id=ttl * 7, flags="DF") / UDP())
            zeroed = built[:10] + b"\x00\x00" + built[12:20]
            self.assertEqual(ipv4.checksum(zeroed), IP(built).chksum)

    @FAST
    @given(st.binary(max_size=300))
    def test_against_scapy(self, data: bytes) -> None:
        """Equal to scapy's own checksum function on any bytes."""
        self.assertEqual(ipv4.checksum(data), scapy_checksum(data))

    @FAST
    @given(st.integers(min_value=0, max_value=40), st.sampled_from([b"\x00", b"\xff"]))
    def test_runs(self, n: int, byte: bytes) -> None:
        """Runs of 0x00 and 0xFF (the ones' complement zeros) agree with scapy."""
        self.assertEqual(ipv4.checksum(byte * n), scapy_checksum(byte * n))


class HeaderTests(SynchronousTestCase):
    """L{ipv4.check_header}, accessors and L{IPv4Header}."""

    def test_check_header(self) -> None:
        """A scapy packet passes and gives its header length, with options too."""
        packet = bytes(IP(src=HOST, dst=PEER) / UDP() / Raw(b"data"))
        self.assertEqual(ipv4.check_header(packet), 20)
        with_options = bytes(
            IP(src=HOST, dst=PEER, options=[IPOption_Router_Alert()]) / UDP() / Raw(b"d")
        )
        self.assertEqual(ipv4.check_header(with_options), 24)
        self.assertEqual(ipv4.src_of(packet), _a(HOST))
        self.assertEqual(ipv4.dst_of(packet), _a(PEER))

    def test_check_header_refuses(self) -> None:
        """Short, not version 4, IHL below 5 or past the end, wrong total
        length, wrong checksum: L{WireError}."""
        good = bytes(IP(src=HOST, dst=PEER) / UDP())
        bad = [
            b"",
            good[:19],
            b"\x65" + good[1:],
            b"\x44" + good[1:],
            b"\x4f" + good[1:],
            good + b"\x00",
            good[:-1],
            good[:10] + bytes((good[10] ^ 1,)) + good[11:],
        ]
        for packet in bad:
            self.assertRaises(WireError, ipv4.check_header, packet)
        self.assertEqual(
            ipv4.check_header(good[:10] + b"\x00\x00" + good[12:], verify_checksum=False), 20
        )
        self.assertRaises(WireError, ipv4.src_of, good[:19])
        self.assertRaises(WireError, ipv4.dst_of, b"")

    def test_decode(self) -> None:
        """Every field of a scapy header, options included."""
        built = bytes(
            IP(
                src=HOST,
                dst=PEER,
                ttl=17,
                tos=0xB8,
                id=0x1234,
                flags="DF",
                options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()],
            )
            / UDP()
            / Raw(b"abc")
        )
        header = IPv4Header.decode(built)
        self.assertEqual(header.src_address, IPv4Address(HOST))
        self.assertEqual(header.dst_address, IPv4Address(PEER))
        self.assertEqual(
            (header.protocol, header.ttl, header.tos, header.ident, header.total_length),
            (17, 17, 0xB8, 0x1234, len(built)),
        )
        self.assertTrue(header.df)
        self.assertFalse(header.mf)
        self.assertEqual(header.frag_offset, 0)
        self.assertEqual(header.options, b"\x01\x01\x01\x01")
        self.assertEqual(header.header_length, 24)
        self.assertEqual(header.checksum, IP(built).chksum)
        self.assertEqual(header.encode(), built[:24])

    def test_fragment_fields(self) -> None:
        """MF and the fragment offset, as scapy sets them."""
        built = bytes(IP(src=HOST, dst=PEER, flags="MF", frag=185, proto=17) / Raw(b"x" * 8))
        header = IPv4Header.decode(built)
        self.assertTrue(header.mf)
        self.assertFalse(header.df)
        self.assertEqual(header.frag_offset, 185)
        self.assertEqual(header.encode(), built[:20])

    def test_encode_matches_scapy(self) -> None:
        """A header we encode is the header scapy builds."""
        header = IPv4Header(
            src=_a(HOST), dst=_a(PEER), protocol=6, total_length=60, ttl=3, ident=9, flags=2
        )
        expected = bytes(IP(src=HOST, dst=PEER, proto=6, len=60, ttl=3, id=9, flags="DF"))
        self.assertEqual(header.encode(), expected)

    def test_decode_refuses(self) -> None:
        """Bad version, IHL, length or checksum; a quoted header may be truncated."""
        good = bytes(IP(src=HOST, dst=PEER) / UDP() / Raw(b"abcd"))
        for bad in (good[:19], b"\x55" + good[1:], b"\x43" + good[1:], good[:-1]):
            self.assertRaises(WireError, IPv4Header.decode, bad)
        self.assertRaises(WireError, IPv4Header.decode, good[:10] + b"\x00\x00" + good[12:])
        quoted = IPv4Header.decode(good[:28], whole_packet=False)
        self.assertEqual(quoted.total_length, len(good))
        short_total = good[:2] + b"\x00\x10" + good[4:]
        self.assertRaises(
            WireError, IPv4Header.decode, short_total, verify_checksum=False, whole_packet=False
        )

    def test_encode_refuses(self) -> None:
        """Out-of-range fields and bad option lengths: L{WireError}."""
        base = {"src": _a(HOST), "dst": _a(PEER), "protocol": 6, "total_length": 40}
        bad: list[dict[str, object]] = [
            {"ttl": 256},
            {"ident": -1},
            {"flags": 8},
            {"frag_offset": 0x2000},
            {"options": b"\x01"},
            {"options": b"\x01" * 44},
            {"total_length": 19},
            {"total_length": 0x10000},
            {"src": b"\x01\x02\x03"},
        ]
        for change in bad:
            fields = {**base, **change}
            self.assertRaises(WireError, IPv4Header(**fields).encode)  # type: ignore[arg-type]

    def test_ipv4_packet(self) -> None:
        """The packet builder matches scapy byte for byte."""
        ours = ipv4.ipv4_packet(
            HOST, IPv4Address(PEER), 17, b"payload", ttl=9, tos=4, ident=77, df=True
        )
        theirs = bytes(
            IP(src=HOST, dst=PEER, proto=17, ttl=9, tos=4, id=77, flags="DF") / Raw(b"payload")
        )
        self.assertEqual(ours, theirs)
        self.assertEqual(
            ipv4.ipv4_packet(_a(HOST), _a(PEER), 4, b""),
            bytes(IP(src=HOST, dst=PEER, proto=4, id=0)),
        )
        self.assertRaises(WireError, ipv4.ipv4_packet, HOST, PEER, 6, bytes(65516))
        self.assertRaises(WireError, ipv4.ipv4_packet, "not-an-address", PEER, 6, b"")
        self.assertRaises(WireError, ipv4.ipv4_packet, HOST, PEER, 256, b"")


class ICMPTests(SynchronousTestCase):
    """Fragmentation needed (RFC 1191), echo, and when errors may be sent."""

    def big_df_packet(self) -> bytes:
        return bytes(
            IP(src=HOST, dst=PEER, flags="DF", id=4242)
            / TCP(sport=40000, dport=443, flags="A")
            / Raw(b"d" * 1400)
        )

    def test_frag_needed_scapy(self) -> None:
        """scapy reads type 3 code 4, the next-hop MTU, valid checksums and
        the quoted header plus 8 bytes, sent back to the original source."""
        original = self.big_df_packet()
        reply = ipv4.icmp_frag_needed(original, 1380, ROUTER)
        parsed = IP(reply)
        self.assertEqual((parsed.src, parsed.dst, parsed.proto), (ROUTER, HOST, 1))
        self.assertEqual((parsed[ICMP].type, parsed[ICMP].code), (3, 4))
        self.assertEqual(parsed[ICMP].nexthopmtu, 1380)
        again = scapy_recomputed(reply)
        self.assertEqual(parsed.chksum, again.chksum)
        self.assertEqual(parsed[ICMP].chksum, again[ICMP].chksum)
        self.assertEqual(bytes(parsed[ICMP].payload), original[:28])
        quoted = parsed[IPerror]
        self.assertEqual(
            (quoted.src, quoted.dst, quoted.id, quoted.len), (HOST, PEER, 4242, len(original))
        )
        self.assertEqual(len(reply), 20 + 8 + 28)
        self.assertEqual(ipv4.check_header(reply), 20)

    def test_frag_needed_parse(self) -> None:
        """L{ipv4.parse_icmp} reads ours and scapy's alike."""
        ours = ipv4.parse_icmp(ipv4.icmp_frag_needed(self.big_df_packet(), 1400, _a(ROUTER)))
        self.assertTrue(ours.is_frag_needed)
        self.assertEqual(ours.next_hop_mtu, 1400)
        self.assertEqual(ours.body, self.big_df_packet()[:28])
        theirs = bytes(
            IP(src=ROUTER, dst=HOST)
            / ICMP(type=3, code=4, nexthopmtu=1280)
            / Raw(self.big_df_packet()[:28])
        )
        parsed = ipv4.parse_icmp(theirs)
        self.assertEqual((parsed.is_frag_needed, parsed.next_hop_mtu), (True, 1280))
        self.assertEqual(IPv4Header.decode(parsed.body, whole_packet=False).src, _a(HOST))

    def test_frag_needed_quotes_options(self) -> None:
        """With IP options the whole header is quoted, then 8 bytes."""
        original = bytes(
            IP(src=HOST, dst=PEER, options=[IPOption_Router_Alert()]) / UDP() / Raw(b"x" * 50)
        )
        parsed = IP(ipv4.icmp_frag_needed(original, 576, ROUTER))
        self.assertEqual(bytes(parsed[ICMP].payload), original[:32])

    def test_frag_needed_refuses(self) -> None:
        """An MTU outside 68-65535, or no IPv4 header to quote: L{WireError}."""
        original = self.big_df_packet()
        for mtu in (0, 67, 65536):
            self.assertRaises(WireError, ipv4.icmp_frag_needed, original, mtu, ROUTER)
        for bad in (b"", original[:19], b"\x60" + original[1:], b"\x4f" + original[1:40]):
            self.assertRaises(WireError, ipv4.icmp_frag_needed, bad, 1280, ROUTER)

    def test_echo_matches_scapy(self) -> None:
        """Echo request and reply are scapy's, byte for byte."""
        for reply, kind in ((False, 8), (True, 0)):
            ours = ipv4.icmp_echo(HOST, PEER, 0x1234, 7, b"hello", reply=reply, ttl=33)
            theirs = bytes(
                IP(src=HOST, dst=PEER, ttl=33, id=0)
                / ICMP(type=kind, id=0x1234, seq=7)
                / Raw(b"hello")
            )
            self.assertEqual(ours, theirs)

    def test_parse_echo(self) -> None:
        """A scapy echo reply decodes to its identifier, sequence and data."""
        packet = bytes(IP(src=PEER, dst=HOST, ttl=50) / ICMP(type=0, id=99, seq=3) / Raw(b"pong"))
        message = ipv4.parse_icmp(packet)
        self.assertEqual(
            (message.type, message.code, message.ident, message.seq, message.body),
            (0, 0, 99, 3, b"pong"),
        )
        self.assertEqual((message.src, message.dst, message.ttl), (_a(PEER), _a(HOST), 50))
        self.assertFalse(message.is_frag_needed)

    def test_parse_refuses(self) -> None:
        """Not ICMP, a fragment, too short, a bad checksum: L{WireError}."""
        echo = ipv4.icmp_echo(HOST, PEER, 1, 1, b"abcd")
        bad_sum = echo[:-1] + bytes((echo[-1] ^ 1,))
        cases = [
            bytes(IP(src=HOST, dst=PEER) / UDP()),
            bytes(IP(src=HOST, dst=PEER, proto=1, flags="MF") / Raw(echo[20:])),
            bytes(IP(src=HOST, dst=PEER, proto=1, frag=3) / Raw(echo[20:])),
            bytes(IP(src=HOST, dst=PEER, proto=1) / Raw(b"\x08\x00\x00")),
            bad_sum,
            echo[:-1],
        ]
        for packet in cases:
            self.assertRaises(WireError, ipv4.parse_icmp, packet)

    def test_error_allowed(self) -> None:
        """Errors answer ordinary packets and ICMP queries, never ICMP errors,
        later fragments, odd sources, multicast or broadcast."""
        self.assertTrue(ipv4.icmp_error_allowed(self.big_df_packet()))
        self.assertTrue(ipv4.icmp_error_allowed(ipv4.icmp_echo(HOST, PEER, 1, 1)))
        first_fragment = bytes(IP(src=HOST, dst=PEER, flags="MF", proto=17) / Raw(b"x" * 16))
        self.assertTrue(ipv4.icmp_error_allowed(first_fragment))
        refused = [
            ipv4.icmp_frag_needed(self.big_df_packet(), 1280, ROUTER),
            bytes(IP(src=HOST, dst=PEER) / ICMP(type=11)),
            bytes(IP(src=HOST, dst=PEER, frag=10, proto=17) / Raw(b"x" * 16)),
            bytes(IP(src="0.0.0.0", dst=PEER) / UDP()),
            bytes(IP(src="127.0.0.1", dst=PEER) / UDP()),
            bytes(IP(src="224.0.0.5", dst=PEER) / UDP()),
            bytes(IP(src="255.255.255.255", dst=PEER) / UDP()),
            bytes(IP(src=HOST, dst="224.0.0.251") / UDP()),
            bytes(IP(src=HOST, dst="255.255.255.255") / UDP()),
            bytes(IP(src=HOST, dst=PEER, proto=1)),
            b"",
            b"\x45\x00",
        ]
        for packet in refused:
            self.assertFalse(ipv4.icmp_error_allowed(packet), packet.hex())


class ClampMSSTests(SynchronousTestCase):
    """L{ipv4.clamp_mss}: rewrite the MSS of SYNs, checksum fixed per RFC 1624."""

    def assertClamped(self, packet: bytes, max_mss: int) -> IP:
        """Clamp, then check with scapy: MSS and both checksums right."""
        clamped = ipv4.clamp_mss(packet, max_mss)
        assert clamped is not None
        self.assertEqual(len(clamped), len(packet))
        parsed = IP(clamped)
        self.assertIn(("MSS", max_mss), parsed[TCP].options)
        again = scapy_recomputed(clamped)
        self.assertEqual(parsed[TCP].chksum, again[TCP].chksum)
        self.assertEqual(parsed.chksum, again.chksum)
        # Nothing but the MSS and the TCP checksum changed.
        changed = [i for i in range(len(packet)) if packet[i] != clamped[i]]
        self.assertLessEqual(len(changed), 4)
        return parsed

    def test_syn(self) -> None:
        """A typical Linux SYN: MSS 1460 becomes 1360, other options kept."""
        options = [
            ("MSS", 1460),
            ("SAckOK", b""),
            ("Timestamp", (1, 0)),
            ("NOP", None),
            ("WScale", 7),
        ]
        packet = syn(options, flags="S")
        parsed = self.assertClamped(packet, 1360)
        self.assertEqual(parsed[TCP].options[1:], IP(packet)[TCP].options[1:])

    def test_syn_ack(self) -> None:
        """The SYN-ACK is clamped too."""
        self.assertClamped(syn([("MSS", 1460)], flags="SA"), 1360)

    def test_odd_offset(self) -> None:
        """An MSS option at an odd offset (after one NOP) straddles two
        checksum words; the checksum still comes out right."""
        for nops in range(4):
            packet = syn([("NOP", None)] * nops + [("MSS", 65495)])
            self.assertClamped(packet, 1360)
            self.assertClamped(packet, 1)

    def test_with_payload_and_ip_options(self) -> None:
        """Data after the SYN header and IP options in front do not matter."""
        packet = syn(
            [("NOP", None), ("MSS", 9000)], payload=b"early data", options=[IPOption_Router_Alert()]
        )
        self.assertClamped(packet, 1400)

    def test_untouched(self) -> None:
        """Small enough, not a SYN, no MSS, not TCP, a later fragment, or
        options that cannot be walked: C{None}."""
        cases = [
            syn([("MSS", 1360)]),
            syn([("MSS", 1200)]),
            syn([("MSS", 1460)], flags="A"),
            syn([("MSS", 1460)], flags="PA", payload=b"x"),
            syn([("WScale", 7), ("SAckOK", b"")]),
            syn([]),
            syn([("EOL", None), ("MSS", 1460)]),
            bytes(IP(src=HOST, dst=PEER) / UDP(sport=1, dport=2) / Raw(bytes(40))),
            bytes(IP(src=HOST, dst=PEER, proto=6, frag=1) / Raw(syn([("MSS", 1460)])[20:])),
        ]
        for packet in cases:
            self.assertIsNone(ipv4.clamp_mss(packet, 1360))

    def test_malformed_options(self) -> None:
        """Option lengths of 0, 1, past the header, or a 3-byte MSS: C{None}."""
        base = syn([("NOP", None)] * 8)  # data offset 7: 8 option bytes
        for options in (
            b"\x08\x00\x01\x01\x01\x01\x01\x01",
            b"\x08\x01\x01\x01\x01\x01\x01\x01",
            b"\x01\x01\x01\x01\x01\x01\x08\x0a",
            b"\x02\x03\x05\x01\x01\x01\x01\x01",
            b"\x01\x01\x01\x01\x01\x01\x01\x02",
        ):
            packet = base[:40] + options
            self.assertIsNone(ipv4.clamp_mss(packet, 1360))

    def test_bad_header(self) -> None:
        """No valid IPv4 header, or an impossible MSS: L{WireError}."""
        packet = syn([("MSS", 1460)])
        for bad in (b"", packet[:19], b"\x60" + packet[1:], b"\x44" + packet[1:], packet[:-1]):
            self.assertRaises(WireError, ipv4.clamp_mss, bad, 1360)
        for mss in (0, 65536):
            self.assertRaises(WireError, ipv4.clamp_mss, packet, mss)

    @FAST
    @given(
        st.integers(min_value=0, max_value=5),
        st.integers(min_value=2, max_value=0xFFFF),
        st.integers(min_value=1, max_value=0xFFFF),
        st.binary(max_size=30),
        st.integers(min_value=0, max_value=0xFFFFFFFF),
    )
    def test_checksum_property(
        self, nops: int, mss: int, max_mss: int, data: bytes, seq: int
    ) -> None:
        """For any layout and values the incremental checksum equals scapy's
        full recomputation."""
        packet = bytes(
            IP(src=HOST, dst=PEER)
            / TCP(flags="S", seq=seq, options=[("NOP", None)] * nops + [("MSS", mss)])
            / Raw(data)
        )
        clamped = ipv4.clamp_mss(packet, max_mss)
        if mss <= max_mss:
            self.assertIsNone(clamped)
        else:
            self.assertClamped(packet, max_mss)


class FuzzTests(SynchronousTestCase):
    """Arbitrary bytes: nothing but L{WireError} escapes the parsers."""

    @FAST
    @given(st.binary(max_size=80))
    def test_parsers(self, data: bytes) -> None:
        """Header check, decoders, ICMP and clamping on random bytes."""
        calls = (
            ipv4.check_header,
            IPv4Header.decode,
            lambda d: IPv4Header.decode(d, verify_checksum=False, whole_packet=False),
            ipv4.parse_icmp,
            lambda d: ipv4.clamp_mss(d, 1360),
            lambda d: ipv4.icmp_frag_needed(d, 1280, ROUTER),
            ipv4.src_of,
            ipv4.dst_of,
        )
        for call in calls:
            try:
                call(data)
            except WireError:
                pass
        self.assertIn(ipv4.icmp_error_allowed(data), (True, False))

    @FAST
    @given(st.binary(min_size=1, max_size=60), st.integers(min_value=0, max_value=59))
    def test_ip_shaped(self, tail: bytes, at: int) -> None:
        """A valid TCP SYN with bytes overwritten: parsers still only raise L{WireError}."""
        packet = bytearray(syn([("NOP", None), ("MSS", 1460), ("WScale", 7)], payload=b"x" * 20))
        for k, b in enumerate(tail):
            packet[(at + k) % len(packet)] = b
        data = bytes(packet)
        for call in (ipv4.check_header, ipv4.parse_icmp, IPv4Header.decode):
            try:
                call(data)
            except WireError:
                pass
        try:
            result = ipv4.clamp_mss(data, 1360)
        except WireError:
            return
        if result is not None:
            self.assertEqual(len(result), len(data))
