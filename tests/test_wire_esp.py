# -*- test-case-name: tests.test_wire_esp -*-
"""Tests for L{smobility.wire.esp}: ESP with AES-GCM, anti-replay, ESP-in-UDP.

Checked against two independent sources: the ESP test packets of
draft-mcgrew-gcm-test-01 (D. McGrew, "Test Cases for the use of GCM and GMAC
in IPsec ESP", 2009), and scapy's ESP implementation
(C{scapy.layers.ipsec.SecurityAssociation}), in both directions.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.ipsec import ESP, NAT_KEEPALIVE, NON_ESP, SecurityAssociation
from scapy.packet import Raw
from twisted.trial.unittest import SynchronousTestCase

from smobility.wire import esp
from smobility.wire.errors import WireError
from smobility.wire.esp import (
    BadICV,
    InboundSA,
    Malformed,
    OutboundSA,
    Replayed,
    SAExpired,
    UDPKind,
    UnknownSPI,
)

FAST = settings(max_examples=150, deadline=None, database=None)

SPI = 0x00001001
KEY128 = bytes.fromhex("00112233445566778899aabbccddeeff")
KEY256 = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
SALT = bytes.fromhex("a1b2c3d4")
OUTER_SRC = "198.51.100.1"
OUTER_DST = "203.0.113.7"

#: An inner IPv4 packet (ICMP echo) built by scapy.
INNER = bytes(IP(src="10.10.0.10", dst="10.10.0.1") / ICMP(id=7, seq=1) / Raw(b"ping!" * 9))


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def packet_with_seq(seq: int, key: bytes = KEY128, inner: bytes = INNER) -> bytes:
    """An ESP packet of SA L{SPI} carrying sequence number C{seq} (at least 1)."""
    return OutboundSA(SPI, key, SALT, seq=seq - 1).seal(inner)


def handmade(
    seq: int, trailer: bytes, inner: bytes = INNER, spi: int = SPI, iv: bytes = b"\x00" * 8
) -> bytes:
    """An ESP packet sealed by hand, with any trailer (padding, pad length, next header)."""
    aad = struct.pack("!II", spi, seq)
    return aad + iv + AESGCM(KEY128).encrypt(SALT + iv, inner + trailer, aad)


def scapy_sa(key: bytes, nat_t: bool = False) -> SecurityAssociation:
    """scapy's view of the same SA; its AES-GCM key is the key followed by the salt."""
    return SecurityAssociation(
        ESP,
        spi=SPI,
        crypt_algo="AES-GCM",
        crypt_key=key + SALT,
        tunnel_header=IP(src=OUTER_SRC, dst=OUTER_DST),
        nat_t_header=UDP(sport=4500, dport=4500) if nat_t else None,
    )


class McGrewVectorTests(SynchronousTestCase):
    """The ESP packets of draft-mcgrew-gcm-test-01 section 4 that use 32-bit
    sequence numbers and 128 or 256-bit keys.

    Their trailers carry next header 1 although the payloads are IPv4
    packets (a quirk of the draft), so they are opened with
    L{InboundSA.open_payload}, and L{InboundSA.open} refuses them.
    """

    # (key, salt, SPI, ESP packet, plaintext with the ESP trailer)
    CASES = [
        (
            "feffe9928665731c6d6a8f9467308308",
            "cafebabe",
            0x0000A5F8,
            """0000a5f80000000afacedbaddecaf888 deb22cd9b07c72c16e3a65beeb8df304
            a5a5897d33ae530f1ba76d5d114d2a5c 3de81827c10e9a4f51330d0eec416642
            cfbb85a5b47e48a4ec3b9ba95d918bd1 83b70d3aa8bc6ee4c309e9d85a41ad4a""",
            """4500003e698f000080114dccc0a80102 c0a801010a980035002a2343b2d00100
            00010000000000000373697009637962 65726369747902646b00000100010001""",
        ),
        (
            "abbccddef00112233445566778899aab abbccddef00112233445566778899aab",
            "11223344",
            0x4A2CBFE3,
            """4a2cbfe3000000020102030405060708 ff425c9b724599df7a3bcd510194e00d
            6a78107f1b0b1cbf06efae9d65a5d763 748a637985771d347f0545659f14e99d
            ef842d8eb335f4eecfdbf831824b4c49 15956c96""",
            """4500003069a6400080062690c0a80102 9389155e0a9e008b2dc57ee000000000
            7002400020bf0000020405b401010402 01020201""",
        ),
        (
            "7d773d00c144c525ac619d18c84a3f47",
            "d9664267",
            0x335467AE,
            """335467aeffffffff43457e9182443bc6 437f866bcb3f699fe9b0822bac961c45
            04bef270""",
            "01020201",
        ),
    ]

    def test_open(self) -> None:
        """Each packet decrypts to the draft's plaintext, less its trailer."""
        for key, salt, spi, packet, plaintext in self.CASES:
            sa = InboundSA(spi, _hex(key), _hex(salt))
            plain = _hex(plaintext)
            next_header, payload = sa.open_payload(_hex(packet))
            self.assertEqual(next_header, plain[-1])
            self.assertEqual(payload, plain[: len(plain) - 2 - plain[-2]])
            self.assertEqual(sa.highest_seq, struct.unpack("!I", _hex(packet)[4:8])[0])

    def test_open_refuses_next_header_1(self) -> None:
        """L{InboundSA.open} wants next header 4: the draft's 1 is refused."""
        key, salt, spi, packet, _ = self.CASES[0]
        sa = InboundSA(spi, _hex(key), _hex(salt))
        self.assertRaises(Malformed, sa.open, _hex(packet))

    def test_every_byte_matters(self) -> None:
        """Any flipped bit of SPI (under that SPI), sequence number, IV,
        ciphertext or ICV fails the ICV check."""
        key, salt, spi, packet, _ = self.CASES[1]
        data = _hex(packet)
        for i in range(len(data)):
            bad = bytearray(data)
            bad[i] ^= 0x10
            bad_spi = struct.unpack("!I", bad[:4])[0]
            sa = InboundSA(bad_spi, _hex(key), _hex(salt))
            self.assertRaises(BadICV, sa.open_payload, bytes(bad))


class ScapyTests(SynchronousTestCase):
    """Both directions against scapy's independent ESP implementation."""

    def test_scapy_seals_we_open(self) -> None:
        """Packets scapy encrypts (random IVs) open to the same inner packet."""
        for key in (KEY128, KEY256):
            theirs = scapy_sa(key)
            ours = InboundSA(SPI, key, SALT)
            for seq in (1, 2, 3):
                inner = IP(src="10.10.0.10", dst="10.10.0.1") / UDP() / Raw(b"x" * seq)
                outer = theirs.encrypt(inner)
                self.assertEqual(outer[IP].proto, 50)
                self.assertEqual(ours.open(bytes(outer[ESP])), bytes(inner))
            self.assertEqual(ours.highest_seq, 3)

    def test_we_seal_scapy_opens(self) -> None:
        """scapy decrypts our packets, checking the ICV, to the inner packet."""
        for key in (KEY128, KEY256):
            theirs = scapy_sa(key)
            ours = OutboundSA(SPI, key, SALT)
            for size in (0, 1, 2, 3, 100):
                inner = bytes(IP(src="10.10.0.10", dst="10.10.0.1") / Raw(b"y" * size))
                packet = ours.seal(inner)
                outer = IP(bytes(IP(src=OUTER_SRC, dst=OUTER_DST, proto=50) / Raw(packet)))
                self.assertEqual(outer[ESP].spi, SPI)
                self.assertEqual(outer[ESP].seq, ours.seq)
                self.assertEqual(bytes(theirs.decrypt(outer)), inner)

    def test_scapy_refuses_tampering(self) -> None:
        """scapy's ICV check refuses our packet with one byte changed."""
        from scapy.layers.ipsec import IPSecIntegrityError

        packet = bytearray(OutboundSA(SPI, KEY128, SALT).seal(INNER))
        packet[-1] ^= 1
        outer = IP(bytes(IP(src=OUTER_SRC, dst=OUTER_DST, proto=50) / Raw(bytes(packet))))
        self.assertRaises(IPSecIntegrityError, scapy_sa(KEY128).decrypt, outer)

    def test_nat_t_both_ways(self) -> None:
        """ESP in UDP 4500: scapy's datagram classifies as ESP and opens;
        ours, sent to port 4500, is dissected and decrypted by scapy."""
        theirs = scapy_sa(KEY256, nat_t=True)
        outer = theirs.encrypt(IP(bytes(INNER)))
        self.assertEqual(outer[UDP].dport, 4500)
        kind, payload = esp.udp_encap_classify(bytes(outer[UDP].payload))
        self.assertIs(kind, UDPKind.ESP)
        self.assertEqual(InboundSA(SPI, KEY256, SALT).open(payload), INNER)

        packet = OutboundSA(SPI, KEY256, SALT).seal(INNER)
        datagram = IP(src=OUTER_SRC, dst=OUTER_DST) / UDP(sport=4500, dport=4500) / Raw(packet)
        parsed = IP(bytes(datagram))
        self.assertIn(ESP, parsed)
        self.assertEqual(bytes(theirs.decrypt(parsed)), INNER)

    def test_padding_matches_scapy(self) -> None:
        """For every inner length mod 4 we pad exactly as scapy does."""
        theirs = scapy_sa(KEY128)
        for size in range(20, 28):
            inner = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / Raw(b"z" * (size - 20)))
            scapy_packet = bytes(theirs.encrypt(IP(inner))[ESP])
            ours = OutboundSA(SPI, KEY128, SALT).seal(inner)
            self.assertEqual(len(ours), len(scapy_packet))
            self.assertEqual(len(ours), esp.esp_length(size))


class SealTests(SynchronousTestCase):
    """L{OutboundSA.seal}: layout, padding, sequence numbers, exhaustion."""

    def test_layout(self) -> None:
        """SPI, sequence number, the counter as IV, then ciphertext and ICV
        over the inner packet, padding 1, 2, ..., pad length and next header 4."""
        sa = OutboundSA(SPI, KEY128, SALT)
        for n in range(1, 6):
            inner = INNER[: 20 + n]
            packet = sa.seal(inner)
            spi, seq, iv = struct.unpack("!IIQ", packet[:16])
            self.assertEqual((spi, seq, iv), (SPI, n, n))
            self.assertEqual((len(packet) - 32) % 4, 0)
            plain = AESGCM(KEY128).decrypt(SALT + packet[8:16], packet[16:], packet[:8])
            pad = (2 - len(inner)) % 4
            self.assertEqual(plain, inner + bytes(range(1, pad + 1)) + bytes((pad, 4)))

    def test_ivs_never_repeat(self) -> None:
        """Successive packets carry successive IVs and sequence numbers."""
        sa = OutboundSA(SPI, KEY128, SALT)
        ivs = {sa.seal(INNER)[8:16] for _ in range(500)}
        self.assertEqual(len(ivs), 500)
        self.assertEqual(sa.seq, 500)

    def test_dummy_packet(self) -> None:
        """Next header 59 makes a dummy packet that the receiver drops quietly."""
        packet = OutboundSA(SPI, KEY128, SALT).seal(b"padding", esp.NEXT_HEADER_NONE)
        sa = InboundSA(SPI, KEY128, SALT)
        self.assertEqual(sa.open(packet), b"")
        self.assertEqual(sa.highest_seq, 1)

    def test_exhaustion(self) -> None:
        """The last sequence number is 2**32 - 1; then L{SAExpired}, every time."""
        sa = OutboundSA(SPI, KEY128, SALT, seq=esp.SEQ_MAX - 2)
        self.assertEqual(sa.remaining, 2)
        self.assertTrue(sa.needs_rekey)
        sa.seal(INNER)
        last = sa.seal(INNER)
        self.assertEqual(struct.unpack("!I", last[4:8])[0], 0xFFFFFFFF)
        self.assertEqual((sa.remaining, sa.exhausted), (0, True))
        for _ in range(2):
            error = self.assertRaises(SAExpired, sa.seal, INNER)
            self.assertIn("0x00001001", str(error))
        self.assertEqual(sa.seq, esp.SEQ_MAX)
        self.assertFalse(issubclass(SAExpired, WireError))
        # The receiver accepts the very last one.
        self.assertEqual(InboundSA(SPI, KEY128, SALT).open(last), INNER)

    def test_soft_limit(self) -> None:
        """L{OutboundSA.needs_rekey} turns true at the soft limit."""
        sa = OutboundSA(SPI, KEY128, SALT, seq=98, soft_limit=100)
        self.assertFalse(sa.needs_rekey)
        sa.seal(INNER)
        self.assertFalse(sa.needs_rekey)
        sa.seal(INNER)
        self.assertTrue(sa.needs_rekey)
        self.assertFalse(OutboundSA(SPI, KEY128, SALT).needs_rekey)
        self.assertEqual(esp.DEFAULT_SOFT_LIMIT, 2**32 - 2**24)

    def test_keymat(self) -> None:
        """C{from_keymat} takes key and salt in one, as IKEv2 derives them."""
        out = OutboundSA.from_keymat(SPI, KEY256 + SALT)
        sa = InboundSA.from_keymat(SPI, KEY256 + SALT)
        self.assertEqual(sa.open(out.seal(INNER)), INNER)
        self.assertRaises(WireError, OutboundSA.from_keymat, SPI, KEY128)

    def test_bad_parameters(self) -> None:
        """Bad SPIs, key and salt lengths, counters and windows are refused."""
        for spi in (0, 1, 255, 2**32):
            self.assertRaises(WireError, OutboundSA, spi, KEY128, SALT)
            self.assertRaises(WireError, InboundSA, spi, KEY128, SALT)
        for key in (b"", KEY128[:15], KEY128 + SALT, KEY256[:24]):
            self.assertRaises(WireError, OutboundSA, SPI, key, SALT)
            self.assertRaises(WireError, InboundSA, SPI, key, SALT)
        self.assertRaises(WireError, OutboundSA, SPI, KEY128, SALT[:3])
        self.assertRaises(WireError, OutboundSA, SPI, KEY128, SALT, seq=-1)
        self.assertRaises(WireError, OutboundSA, SPI, KEY128, SALT, seq=2**32)
        self.assertRaises(WireError, InboundSA, SPI, KEY128, SALT, window=63)
        InboundSA(SPI, KEY128, SALT, window=64)

    def test_no_key_in_repr(self) -> None:
        """The representation names the SPI, never the key or salt."""
        for sa in (OutboundSA(SPI, KEY128, SALT), InboundSA(SPI, KEY128, SALT)):
            text = repr(sa)
            self.assertIn("0x00001001", text)
            self.assertNotIn(KEY128.hex(), text)
            self.assertNotIn(SALT.hex(), text)
            self.assertFalse(hasattr(sa, "__dict__"))


class OpenTests(SynchronousTestCase):
    """L{InboundSA.open}: integrity, SPI, padding, next header."""

    def test_round_trip(self) -> None:
        """Every inner length round-trips, with 128 and 256-bit keys."""
        for key in (KEY128, KEY256):
            out, sa = OutboundSA(SPI, key, SALT), InboundSA(SPI, key, SALT)
            for n in range(0, 70):
                inner = bytes(range(n))
                packet = out.seal(inner)
                self.assertEqual(len(packet), esp.esp_length(n))
                self.assertEqual(sa.open(packet), inner)
            big = INNER * 30
            self.assertEqual(sa.open(out.seal(big)), big)

    def test_tampering(self) -> None:
        """A changed sequence number, IV, ciphertext or ICV: L{BadICV}."""
        packet = packet_with_seq(5)
        for i in (4, 7, 8, 15, 16, 40, len(packet) - 17, len(packet) - 16, len(packet) - 1):
            bad = bytearray(packet)
            bad[i] ^= 0x80
            self.assertRaises(BadICV, InboundSA(SPI, KEY128, SALT).open, bytes(bad))

    def test_spi_is_authenticated(self) -> None:
        """The SPI is in the AAD: the same bytes under another SPI fail the ICV."""
        packet = packet_with_seq(5)
        other = struct.pack("!I", SPI + 1) + packet[4:]
        self.assertRaises(BadICV, InboundSA(SPI + 1, KEY128, SALT).open, other)

    def test_wrong_key(self) -> None:
        """A packet under another key (or salt) fails the ICV check."""
        packet = packet_with_seq(1)
        self.assertRaises(BadICV, InboundSA(SPI, KEY256, SALT).open, packet)
        self.assertRaises(BadICV, InboundSA(SPI, KEY128, b"salt").open, packet)

    def test_unknown_spi(self) -> None:
        """A packet of another SA: L{UnknownSPI}, before any crypto."""
        error = self.assertRaises(
            UnknownSPI, InboundSA(SPI + 1, KEY128, SALT).open, packet_with_seq(1)
        )
        self.assertEqual(error.reason, "unknown_spi")

    def test_short_or_misaligned(self) -> None:
        """Fewer than 36 bytes, or a ciphertext not a multiple of 4: L{Malformed}."""
        sa = InboundSA(SPI, KEY128, SALT)
        packet = packet_with_seq(1, inner=b"")
        self.assertEqual(len(packet), 36)
        self.assertEqual(sa.open(packet), b"")
        for bad in (b"", packet[:8], packet[:35], packet + b"\x00", packet + b"\x00\x00"):
            self.assertRaises(Malformed, InboundSA(SPI, KEY128, SALT).open, bad)

    def test_bad_padding(self) -> None:
        """Padding that is not 1, 2, 3, ... is refused and does not move the window."""
        sa = InboundSA(SPI, KEY128, SALT)
        for pad in (b"\x02\x01", b"\x01\x01", b"\x00\x00", b"\x01\x03"):
            self.assertRaises(Malformed, sa.open, handmade(9, pad + b"\x02\x04", INNER[:20]))
        self.assertEqual(sa.highest_seq, 0)
        self.assertEqual(sa.open(handmade(9, b"\x01\x02\x02\x04", INNER[:20])), INNER[:20])

    def test_pad_length_too_long(self) -> None:
        """A pad length beyond the plaintext is refused."""
        sa = InboundSA(SPI, KEY128, SALT)
        self.assertRaises(Malformed, sa.open, handmade(1, b"\x01\x02\xff\x04", b""))

    def test_long_padding(self) -> None:
        """Padding longer than needed (up to 255 bytes, RFC 4303 2.4) is accepted."""
        sa = InboundSA(SPI, KEY128, SALT)
        pad = bytes(range(1, 255))
        self.assertEqual(sa.open(handmade(1, pad + bytes((254, 4)), INNER[:20])), INNER[:20])

    def test_other_next_header(self) -> None:
        """Next header other than 4 and 59: L{Malformed} from C{open},
        but C{open_payload} returns it."""
        packet = handmade(1, b"\x01\x02\x02\x11", INNER[:20])
        self.assertRaises(Malformed, InboundSA(SPI, KEY128, SALT).open, packet)
        self.assertEqual(InboundSA(SPI, KEY128, SALT).open_payload(packet), (17, INNER[:20]))

    def test_reasons(self) -> None:
        """Every drop reason is a L{WireError} with its own counter name."""
        reasons = set()
        for cls in (Malformed, UnknownSPI, Replayed, BadICV):
            self.assertTrue(issubclass(cls, WireError))
            reasons.add(cls.reason)
        self.assertEqual(reasons, {"malformed", "unknown_spi", "replayed", "bad_icv"})


class ReplayWindowTests(SynchronousTestCase):
    """The anti-replay window of RFC 4303 section 3.4.3."""

    def accepts(self, sa: InboundSA, seq: int) -> bool:
        try:
            sa.open(packet_with_seq(seq))
        except Replayed:
            return False
        return True

    def test_duplicate(self) -> None:
        """The same packet twice: the second is L{Replayed}."""
        sa = InboundSA(SPI, KEY128, SALT)
        packet = packet_with_seq(1)
        sa.open(packet)
        error = self.assertRaises(Replayed, sa.open, packet)
        self.assertEqual(error.reason, "replayed")

    def test_sequence_zero(self) -> None:
        """Sequence number 0 is never sent, so never accepted."""
        sa = InboundSA(SPI, KEY128, SALT)
        self.assertRaises(Replayed, sa.open, handmade(0, b"\x01\x02\x02\x04", INNER[:20]))

    def test_edges(self) -> None:
        """Far ahead slides the window; just inside is accepted once; the top
        and anything left of the window are refused."""
        sa = InboundSA(SPI, KEY128, SALT)
        self.assertEqual(sa.window, 1024)
        self.assertTrue(self.accepts(sa, 1))
        self.assertTrue(self.accepts(sa, 5000))
        self.assertEqual(sa.highest_seq, 5000)
        self.assertFalse(self.accepts(sa, 5000))  # the top itself
        self.assertFalse(self.accepts(sa, 1))  # far left
        self.assertFalse(self.accepts(sa, 5000 - 1024))  # just left of the window
        self.assertTrue(self.accepts(sa, 5000 - 1023))  # the left edge
        self.assertFalse(self.accepts(sa, 5000 - 1023))
        self.assertTrue(self.accepts(sa, 4999))  # just behind the top
        self.assertFalse(self.accepts(sa, 4999))
        self.assertTrue(self.accepts(sa, 5001))  # slide by one
        self.assertFalse(self.accepts(sa, 5000 - 1023))  # fell off the left
        self.assertFalse(self.accepts(sa, 4999))  # still remembered
        self.assertTrue(self.accepts(sa, 4998))
        self.assertEqual(sa.highest_seq, 5001)

    def test_slide_by_exactly_the_window(self) -> None:
        """A jump of exactly the window size forgets everything before."""
        sa = InboundSA(SPI, KEY128, SALT, window=64)
        for seq in (10, 11, 12):
            self.assertTrue(self.accepts(sa, seq))
        self.assertTrue(self.accepts(sa, 12 + 64))
        self.assertFalse(self.accepts(sa, 12))
        self.assertTrue(self.accepts(sa, 12 + 1))
        self.assertTrue(self.accepts(sa, 12 + 63))
        self.assertFalse(self.accepts(sa, 12 + 64))

    def test_huge_jump(self) -> None:
        """A jump to the last sequence number costs nothing and works."""
        sa = InboundSA(SPI, KEY128, SALT)
        self.assertTrue(self.accepts(sa, 3))
        self.assertTrue(self.accepts(sa, esp.SEQ_MAX))
        self.assertTrue(self.accepts(sa, esp.SEQ_MAX - 1000))
        self.assertFalse(self.accepts(sa, 3))

    def test_bad_icv_does_not_move_window(self) -> None:
        """A forged packet far ahead is refused and leaves the window alone."""
        sa = InboundSA(SPI, KEY128, SALT)
        self.assertTrue(self.accepts(sa, 100))
        forged = bytearray(packet_with_seq(100_000))
        forged[-1] ^= 1
        self.assertRaises(BadICV, sa.open, bytes(forged))
        self.assertEqual(sa.highest_seq, 100)
        self.assertTrue(self.accepts(sa, 99))
        # The forged sequence number itself is still free for the real packet.
        self.assertTrue(self.accepts(sa, 100_000))

    def test_replay_checked_before_decrypt(self) -> None:
        """A replayed number is refused even when the rest is garbage: the
        cheap check comes first."""
        sa = InboundSA(SPI, KEY128, SALT)
        self.assertTrue(self.accepts(sa, 7))
        garbage = struct.pack("!II", SPI, 7) + bytes(40)
        self.assertRaises(Replayed, sa.open, garbage)
        self.assertTrue(sa.seen(7))
        self.assertFalse(sa.seen(8))
        self.assertTrue(sa.seen(0))

    @FAST
    @given(
        st.sampled_from([64, 100, 1024]),
        st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=60),
    )
    def test_against_model(self, window: int, seqs: list[int]) -> None:
        """The window agrees with a model that keeps every number seen."""
        sa = InboundSA(SPI, KEY128, SALT, window=window)
        seen = {0}
        top = 0
        for seq in seqs:
            expected = seq > top or (top - seq < window and seq not in seen)
            packet = packet_with_seq(seq) if seq else handmade(0, b"\x01\x02\x02\x04", INNER[:20])
            try:
                sa.open(packet)
                accepted = True
            except Replayed:
                accepted = False
            self.assertEqual(accepted, expected, (seq, top))
            if accepted:
                seen.add(seq)
                top = max(top, seq)
            self.assertEqual(sa.highest_seq, top)


class UDPEncapTests(SynchronousTestCase):
    """RFC 3948: what shares port 4500."""

    def test_kinds(self) -> None:
        """ESP, IKE behind the non-ESP marker, and the 0xFF keepalive."""
        packet = packet_with_seq(1)
        self.assertEqual(esp.udp_encap_classify(packet), (UDPKind.ESP, packet))
        ike = bytes(range(28))
        self.assertEqual(esp.udp_encap_classify(esp.encap_ike(ike)), (UDPKind.IKE, ike))
        self.assertEqual(esp.udp_encap_classify(b"\xff"), (UDPKind.KEEPALIVE, b""))
        self.assertEqual(esp.NON_ESP_MARKER, bytes(4))
        self.assertEqual(esp.NAT_KEEPALIVE, b"\xff")
        self.assertEqual(esp.NAT_T_PORT, 4500)

    def test_malformed(self) -> None:
        """Empty, short, or a marker without a whole IKE header: L{Malformed}."""
        for bad in (b"", b"\x00", b"\xfe", b"\xff\xff", b"\x01\x02\x03", bytes(7), bytes(31)):
            self.assertRaises(Malformed, esp.udp_encap_classify, bad)

    def test_scapy_agrees(self) -> None:
        """scapy's dissector sorts the same datagrams the same way."""
        expected = {UDPKind.ESP: ESP, UDPKind.IKE: NON_ESP, UDPKind.KEEPALIVE: NAT_KEEPALIVE}
        for datagram in (packet_with_seq(1), esp.encap_ike(bytes(28)), b"\xff"):
            kind, _ = esp.udp_encap_classify(datagram)
            parsed = IP(bytes(IP() / UDP(sport=4500, dport=4500) / Raw(datagram)))
            self.assertIn(expected[kind], parsed)

    def test_parse_spi(self) -> None:
        """The SPI and sequence number of the header; reserved SPIs refused."""
        packet = packet_with_seq(77)
        self.assertEqual(esp.parse_spi(packet), SPI)
        self.assertEqual(esp.parse_seq(packet), 77)
        self.assertEqual(esp.parse_spi(b"\x00\x00\x01\x00" + bytes(4)), 256)
        for bad in (b"", packet[:7], bytes(8), b"\x00\x00\x00\xff" + bytes(4)):
            self.assertRaises(Malformed, esp.parse_spi, bad)
        self.assertRaises(Malformed, esp.parse_seq, packet[:7])


class OverheadTests(SynchronousTestCase):
    """Sizes for the tunnel MTU."""

    def test_overhead(self) -> None:
        """At most 37 bytes of ESP overhead; at least 34."""
        self.assertEqual(esp.ESP_OVERHEAD, 37)
        sizes = {esp.esp_length(n) - n for n in range(100)}
        self.assertEqual(sizes, {34, 35, 36, 37})

    def test_tunnel_mtu(self) -> None:
        """The largest inner packet fits, and one byte more does not."""
        self.assertEqual(esp.tunnel_mtu(1500), 1438)
        self.assertEqual(esp.tunnel_mtu(1500, udp=False), 1446)
        for mtu in range(140, 9001, 7):
            for udp in (True, False):
                outer = 20 + (8 if udp else 0)
                inner = esp.tunnel_mtu(mtu, udp=udp)
                self.assertLessEqual(outer + esp.esp_length(inner), mtu)
                self.assertGreater(outer + esp.esp_length(inner + 1), mtu)
        self.assertRaises(WireError, esp.tunnel_mtu, 100)

    def test_tunnel_mtu_matches_scapy(self) -> None:
        """An inner packet of the tunnel MTU makes a 1500-byte scapy datagram."""
        inner = IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / Raw(b"q" * (1438 - 40))
        packet = OutboundSA(SPI, KEY128, SALT).seal(bytes(inner))
        datagram = IP(src=OUTER_SRC, dst=OUTER_DST) / UDP(sport=4500, dport=4500) / Raw(packet)
        self.assertEqual(len(bytes(datagram)), 1500)


class FuzzTests(SynchronousTestCase):
    """Arbitrary bytes: nothing but L{WireError} subclasses escape."""

    @FAST
    @given(st.binary(max_size=120))
    def test_open_arbitrary(self, data: bytes) -> None:
        """Random bytes are refused with an ESP error."""
        sa = InboundSA(SPI, KEY128, SALT)
        for packet in (data, struct.pack("!I", SPI) + data):
            try:
                sa.open(packet)
            except esp.ESPError:
                pass
        self.assertEqual(sa.highest_seq, 0)

    @FAST
    @given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=4))
    def test_open_mutated(self, where: int, xor: bytes) -> None:
        """A valid packet with some bytes changed is refused, never half-accepted."""
        packet = bytearray(packet_with_seq(3))
        for k, b in enumerate(xor):
            if b:
                packet[(where + k) % len(packet)] ^= b
        sa = InboundSA(SPI, KEY128, SALT)
        if bytes(packet) == packet_with_seq(3):
            return
        self.assertRaises(esp.ESPError, sa.open, bytes(packet))
        self.assertEqual(sa.highest_seq, 0)

    @FAST
    @given(st.binary(max_size=64))
    def test_parsers_arbitrary(self, data: bytes) -> None:
        """C{parse_spi}, C{parse_seq} and C{udp_encap_classify} raise only L{Malformed}."""
        for parse in (esp.parse_spi, esp.parse_seq, esp.udp_encap_classify):
            try:
                parse(data)
            except Malformed:
                pass

    @FAST
    @given(st.binary(min_size=1, max_size=64))
    def test_classify_agrees_with_scapy(self, data: bytes) -> None:
        """Whatever we classify, scapy's dispatch puts in the same class."""
        try:
            kind, _ = esp.udp_encap_classify(data)
        except Malformed:
            return
        expected = {UDPKind.ESP: ESP, UDPKind.IKE: NON_ESP, UDPKind.KEEPALIVE: NAT_KEEPALIVE}
        self.assertIsInstance(ESP(data), expected[kind])
