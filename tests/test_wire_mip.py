# -*- test-case-name: tests.test_wire_mip -*-
"""Tests for L{smobility.wire.mip}, L{smobility.wire.ntp} and L{smobility.wire.errors}.

The expected bytes are written out by hand from the RFC drawings (RFC 5944
sections 3.3, 3.4 and 3.5, RFC 2794, RFC 3519 sections 3.1 and 3.2, RFC 3543
section 3.2), and every authenticator is recomputed here with the standard
library's C{hmac}, so that the codec is never checked against itself alone.
"""

from __future__ import annotations

import hmac
import struct
from ipaddress import IPv4Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smobility.wire import mip, ntp
from smobility.wire.errors import WireError

A = IPv4Address

KEY = bytes(range(16))
OTHER_KEY = bytes(range(16, 32))
HOA = A("10.1.0.5")
HA = A("10.1.0.1")
COA = A("192.0.2.7")
IDENT = 0x0102030405060708

# Hand-written wire images.  Spaces only separate the fields.
#   type 1 | flags S.....T. | lifetime 1800 | home 10.1.0.5 | agent 10.1.0.1 |
#   care-of 192.0.2.7 | identification
REQUEST_FIXED_HEX = "01 82 0708 0a010005 0a010001 c0000207 0102030405060708"
#   type 3 | code 0 | lifetime 1800 | home | agent | identification
REPLY_FIXED_HEX = "03 00 0708 0a010005 0a010001 0102030405060708"
NAI = b"laptop@example.org"
NAI_HEX = "83 12" + NAI.hex()
#   144 | len 6 | sub-type 0 | reserved 1 | F.reserved | encapsulation 4 | reserved 3
UTRQ_FORCE_HEX = "90 06 00 00 80 04 0000"
#   44 | len 6 | sub-type 0 | code 0 | F + reserved | keepalive 25
UTRP_FORCE_HEX = "2c 06 00 00 8000 0019"
#   137 | len 6 | I + reserved | timestamp
REVOCATION_INFORM_HEX = "89 06 8000 11223344"
#   200 (skippable, unknown) | len 3 | data
UNKNOWN_HEX = "c8 03 aabbcc"

FLAG_BITS = {
    "S": (mip.FLAG_S, 0x80),
    "B": (mip.FLAG_B, 0x40),
    "D": (mip.FLAG_D, 0x20),
    "M": (mip.FLAG_M, 0x10),
    "G": (mip.FLAG_G, 0x08),
    "r": (mip.FLAG_R, 0x04),
    "T": (mip.FLAG_T, 0x02),
    "x": (mip.FLAG_X, 0x01),
}

KNOWN_TYPES = frozenset(
    {
        mip.EXT_MN_HA,
        mip.EXT_MN_FA,
        mip.EXT_FA_HA,
        mip.EXT_NAI,
        mip.EXT_UDP_TUNNEL_REQUEST,
        mip.EXT_UDP_TUNNEL_REPLY,
        mip.EXT_REVOCATION_SUPPORT,
    }
)


def h(text: str) -> bytes:
    """Bytes from hex written with spaces between the fields."""
    return bytes.fromhex(text.replace(" ", ""))


def md5_hmac(key: bytes, covered: bytes) -> bytes:
    """HMAC-MD5 straight from the standard library, as RFC 5944 section 3.5.1 uses it."""
    return hmac.new(key, covered, "md5").digest()


def request(*extensions: mip.Extension, **kw: Any) -> mip.RegistrationRequest:
    """The request of L{REQUEST_FIXED_HEX}, with C{extensions} and any field replaced."""
    fields: dict[str, Any] = {
        "flags": mip.FLAG_S | mip.FLAG_T,
        "lifetime": 1800,
        "home_address": HOA,
        "home_agent": HA,
        "care_of_address": COA,
        "identification": IDENT,
        "extensions": extensions,
    }
    fields.update(kw)
    return mip.RegistrationRequest(**fields)


def reply(*extensions: mip.Extension, **kw: Any) -> mip.RegistrationReply:
    """The reply of L{REPLY_FIXED_HEX}, with C{extensions} and any field replaced."""
    fields: dict[str, Any] = {
        "code": mip.CODE_ACCEPTED,
        "lifetime": 1800,
        "home_address": HOA,
        "home_agent": HA,
        "identification": IDENT,
        "extensions": extensions,
    }
    fields.update(kw)
    return mip.RegistrationReply(**fields)


def every_kind() -> tuple[mip.Extension, ...]:
    """One extension of every kind the codec knows, plus a skippable unknown one."""
    return (
        mip.NAIExtension(NAI),
        mip.UDPTunnelRequest(encapsulation=47, force=True, fa_required=True),
        mip.UDPTunnelReply(code=1, force=False, keepalive=600),
        mip.RevocationSupport(timestamp=0xDEADBEEF, inform=True),
        mip.UnknownExtension(200, b"\x01\x02"),
        mip.UnknownExtension(150, b""),
        mip.AuthExtension(mip.EXT_MN_HA, 0x100, bytes(16)),
        mip.AuthExtension(mip.EXT_MN_FA, 0xFFFFFFFF, b"\xff" * 251),
        mip.AuthExtension(mip.EXT_FA_HA, 0, b"\x01"),
    )


def boundaries(msg: mip.Message) -> list[int]:
    """The lengths at which an encoding of C{msg} may be cut and still decode."""
    out = [24 if isinstance(msg, mip.RegistrationRequest) else 20]
    for ext in msg.extensions:
        out.append(out[-1] + len(mip.encode_extension(ext)))
    return out


class FixedPartLayoutTests(SynchronousTestCase):
    """The fixed parts are laid out exactly as RFC 5944 sections 3.3 and 3.4 draw them."""

    def test_request_bytes(self) -> None:
        """Type 1, flags, lifetime, home address, home agent, care-of, 8-byte identification."""
        self.assertEqual(mip.encode(request()), h(REQUEST_FIXED_HEX))
        self.assertEqual(len(mip.encode(request())), 24)

    def test_request_decode(self) -> None:
        """The hand-written request decodes to the right values."""
        msg = mip.decode(h(REQUEST_FIXED_HEX))
        assert isinstance(msg, mip.RegistrationRequest)
        self.assertEqual(msg.flags, 0x82)
        self.assertEqual(msg.lifetime, 1800)
        self.assertEqual(msg.home_address, HOA)
        self.assertEqual(msg.home_agent, HA)
        self.assertEqual(msg.care_of_address, COA)
        self.assertEqual(msg.identification, IDENT)
        self.assertEqual(msg.extensions, ())
        self.assertEqual(msg, request())

    def test_flag_bits(self) -> None:
        """The flags byte is S B D M G r T x, most significant bit first."""
        for name, (constant, bit) in FLAG_BITS.items():
            self.assertEqual(constant, bit, name)
            data = mip.encode(request(flags=bit))
            self.assertEqual(data[1], bit, name)
            msg = mip.decode(data)
            assert isinstance(msg, mip.RegistrationRequest)
            for other, (other_bit, _) in FLAG_BITS.items():
                self.assertEqual(msg.flag(other_bit), other == name, (name, other))

    def test_identification_is_big_endian(self) -> None:
        """The identification is the last 8 bytes of the fixed part, network order."""
        data = mip.encode(request(identification=0xFEDCBA9876543210))
        self.assertEqual(data[16:24], h("fedcba9876543210"))
        data = mip.encode(reply(identification=1))
        self.assertEqual(data[12:20], h("0000000000000001"))

    def test_reply_bytes(self) -> None:
        """Type 3, code, lifetime, home address, home agent, identification."""
        self.assertEqual(mip.encode(reply()), h(REPLY_FIXED_HEX))
        denied = mip.encode(reply(code=mip.CODE_HA_MN_AUTH_FAILED, lifetime=0))
        self.assertEqual(denied, h("03 83 0000 0a010005 0a010001 0102030405060708"))

    def test_reply_decode(self) -> None:
        """The hand-written reply decodes to the right values."""
        msg = mip.decode(h("03 58 ffff 0a010005 0a010001 0102030405060708"))
        assert isinstance(msg, mip.RegistrationReply)
        self.assertEqual(msg.code, mip.CODE_FA_HA_UNREACHABLE)
        self.assertEqual(msg.lifetime, 0xFFFF)
        self.assertEqual(msg.home_address, HOA)
        self.assertEqual(msg.home_agent, HA)
        self.assertEqual(msg.identification, IDENT)
        self.assertFalse(msg.accepted)

    def test_accepted_codes(self) -> None:
        """Codes 0 and 1 accept; the foreign agent's 64-88 and the home agent's 128+ deny."""
        self.assertTrue(reply(code=0).accepted)
        self.assertTrue(reply(code=1).accepted)
        for code in (2, 64, 69, 88, 128, 131, 133, 136, 255):
            self.assertFalse(reply(code=code).accepted, code)

    def test_code_values(self) -> None:
        """A sample of the RFC 5944 section 3.4 code values."""
        self.assertEqual(mip.CODE_FA_LIFETIME_TOO_LONG, 69)
        self.assertEqual(mip.CODE_FA_POORLY_FORMED_REQUEST, 70)
        self.assertEqual(mip.CODE_HA_MN_AUTH_FAILED, 131)
        self.assertEqual(mip.CODE_HA_ID_MISMATCH, 133)
        self.assertEqual(mip.CODE_HA_POORLY_FORMED, 134)
        for code in mip.REPLY_CODE_NAMES:
            self.assertTrue(0 <= code <= 255)

    def test_ports_and_types(self) -> None:
        """UDP port 434, types 1 and 3, and the extension numbers of the RFCs."""
        self.assertEqual(mip.MIP_PORT, 434)
        self.assertEqual((mip.TYPE_REQUEST, mip.TYPE_REPLY), (1, 3))
        self.assertEqual((mip.EXT_MN_HA, mip.EXT_MN_FA, mip.EXT_FA_HA), (32, 33, 34))
        self.assertEqual(mip.EXT_UDP_TUNNEL_REPLY, 44)
        self.assertEqual(mip.EXT_NAI, 131)
        self.assertEqual(mip.EXT_REVOCATION_SUPPORT, 137)
        self.assertEqual(mip.EXT_UDP_TUNNEL_REQUEST, 144)


class ExtensionLayoutTests(SynchronousTestCase):
    """Each extension is laid out as its RFC draws it, both ways."""

    def check(self, ext: mip.Extension, hex_text: str) -> None:
        """C{ext} encodes to C{hex_text}, and decodes back from it after a fixed part."""
        expected = h(hex_text)
        self.assertEqual(mip.encode_extension(ext), expected)
        msg = mip.decode(h(REQUEST_FIXED_HEX) + expected)
        self.assertEqual(msg.extensions, (ext,))
        self.assertEqual(mip.decode(h(REPLY_FIXED_HEX) + expected).extensions, (ext,))

    def test_nai(self) -> None:
        """RFC 2794: type 131, length, the NAI bytes."""
        self.check(mip.NAIExtension(NAI), NAI_HEX)
        self.check(mip.NAIExtension(b"a"), "83 01 61")
        self.check(mip.NAIExtension(b"n" * 255), "83 ff" + "6e" * 255)

    def test_mn_ha(self) -> None:
        """RFC 5944 3.5.2: type 32, length 4 + authenticator, SPI, authenticator."""
        auth = bytes(range(16))
        self.check(
            mip.AuthExtension(32, 0x100, auth), "20 14 00000100 000102030405060708090a0b0c0d0e0f"
        )

    def test_mn_fa_and_fa_ha(self) -> None:
        """RFC 5944 3.5.3 and 3.5.4: types 33 and 34 have the same shape."""
        self.check(mip.AuthExtension(33, 0xA0B0C0D0, b"\x11" * 16), "21 14 a0b0c0d0" + "11" * 16)
        self.check(mip.AuthExtension(34, 7, b"\x22" * 32), "22 24 00000007" + "22" * 32)
        self.check(mip.AuthExtension(34, 1, b"\x33" * 251), "22 ff 00000001" + "33" * 251)

    def test_udp_tunnel_request(self) -> None:
        """RFC 3519 3.1: 144, 6, sub-type 0, reserved, F=0x80 R=0x40, encapsulation, reserved."""
        self.check(mip.UDPTunnelRequest(4, force=True), UTRQ_FORCE_HEX)
        self.check(mip.UDPTunnelRequest(), "90 06 00 00 00 04 0000")
        self.check(mip.UDPTunnelRequest(4, fa_required=True), "90 06 00 00 40 04 0000")
        self.check(mip.UDPTunnelRequest(47, True, True), "90 06 00 00 c0 2f 0000")
        self.check(mip.UDPTunnelRequest(55), "90 06 00 00 00 37 0000")

    def test_udp_tunnel_reply(self) -> None:
        """RFC 3519 3.2: 44, 6, sub-type 0, code, flags F=0x8000, keepalive interval."""
        self.check(mip.UDPTunnelReply(0, force=True, keepalive=25), UTRP_FORCE_HEX)
        self.check(mip.UDPTunnelReply(1), "2c 06 00 01 0000 0000")
        self.check(mip.UDPTunnelReply(0, False, 0xFFFF), "2c 06 00 00 0000 ffff")

    def test_revocation_support(self) -> None:
        """RFC 3543 3.2: 137, 6, then the I bit (0x8000) and reserved, then the timestamp."""
        self.check(mip.RevocationSupport(0x11223344, inform=True), REVOCATION_INFORM_HEX)
        self.check(mip.RevocationSupport(0x11223344), "89 06 0000 11223344")
        self.check(mip.RevocationSupport(0xFFFFFFFF, True), "89 06 8000 ffffffff")

    def test_unknown(self) -> None:
        """Any other type keeps its data as it came."""
        self.check(mip.UnknownExtension(200, b"\xaa\xbb\xcc"), UNKNOWN_HEX)
        self.check(mip.UnknownExtension(100, b""), "64 00")
        self.check(mip.UnknownExtension(255, b"\x00" * 255), "ff ff" + "00" * 255)

    def test_reserved_bits_ignored(self) -> None:
        """Reserved fields are ignored on reception (RFC 3519, RFC 3543)."""
        msg = mip.decode(h(REQUEST_FIXED_HEX) + h("90 06 00 ff 3f 04 ffff"))
        self.assertEqual(msg.extensions, (mip.UDPTunnelRequest(4, False, False),))
        msg = mip.decode(h(REPLY_FIXED_HEX) + h("2c 06 00 00 7fff 0019"))
        self.assertEqual(msg.extensions, (mip.UDPTunnelReply(0, False, 25),))
        msg = mip.decode(h(REPLY_FIXED_HEX) + h("89 06 7fff 00000001"))
        self.assertEqual(msg.extensions, (mip.RevocationSupport(1, False),))

    def test_whole_request(self) -> None:
        """A request with several extensions is the fixed part followed by each in order."""
        msg = request(
            mip.NAIExtension(NAI),
            mip.UDPTunnelRequest(4, force=True),
            mip.RevocationSupport(0x11223344, True),
            mip.UnknownExtension(200, b"\xaa\xbb\xcc"),
        )
        expected = h(
            REQUEST_FIXED_HEX + NAI_HEX + UTRQ_FORCE_HEX + REVOCATION_INFORM_HEX + UNKNOWN_HEX
        )
        self.assertEqual(mip.encode(msg), expected)
        decoded = mip.decode(expected)
        self.assertEqual(decoded, msg)
        self.assertEqual(decoded.raw, expected)
        self.assertEqual(decoded.offsets, (24, 44, 52, 60))

    def test_whole_reply(self) -> None:
        """A reply with a tunnel reply and an unknown extension."""
        msg = reply(mip.UDPTunnelReply(0, True, 25), mip.UnknownExtension(200, b"\xaa\xbb\xcc"))
        expected = h(REPLY_FIXED_HEX + UTRP_FORCE_HEX + UNKNOWN_HEX)
        self.assertEqual(mip.encode(msg), expected)
        decoded = mip.decode(expected)
        self.assertEqual(decoded, msg)
        self.assertEqual(decoded.offsets, (20, 28))


class RoundTripTests(SynchronousTestCase):
    """encode then decode gives the same message, for every kind and mix of extensions."""

    def round_trip(self, msg: mip.Message) -> mip.Message:
        """Check C{msg} survives a round trip; return the decoded copy."""
        data = mip.encode(msg)
        decoded = mip.decode(data)
        self.assertEqual(decoded, msg)
        self.assertEqual(type(decoded), type(msg))
        self.assertEqual(decoded.raw, data)
        self.assertEqual(list(decoded.offsets), boundaries(msg)[:-1])
        self.assertEqual(mip.encode(decoded), data)
        return decoded

    def test_each_kind_alone(self) -> None:
        """Every extension kind, alone, in a request and in a reply."""
        for ext in every_kind():
            self.round_trip(request(ext))
            self.round_trip(reply(ext))

    def test_all_kinds_together(self) -> None:
        """All kinds in one message, in both orders."""
        exts = every_kind()
        for order in (exts, tuple(reversed(exts))):
            self.round_trip(request(*order))
            self.round_trip(reply(*order))

    def test_repeated(self) -> None:
        """The codec keeps repeated extensions, in order (policy is the engines' job)."""
        exts = (mip.NAIExtension(b"a@b"), mip.NAIExtension(b"c@d")) * 3
        decoded = self.round_trip(request(*exts))
        self.assertEqual(decoded.extensions, exts)

    def test_extreme_fields(self) -> None:
        """Lowest and highest values of every fixed field."""
        self.round_trip(request(flags=0, lifetime=0, identification=0))
        self.round_trip(reply(code=0, lifetime=0, identification=0))
        self.round_trip(
            request(
                flags=0xFF,
                lifetime=0xFFFF,
                identification=(1 << 64) - 1,
                home_address=A("255.255.255.255"),
                home_agent=A("0.0.0.0"),
                care_of_address=A("0.0.0.0"),
            )
        )
        self.round_trip(reply(code=255, lifetime=0xFFFF, identification=(1 << 64) - 1))

    def test_addresses_as_strings(self) -> None:
        """Addresses may be given as strings and compare equal to the decoded ones."""
        msg = request(home_address="10.1.0.5", home_agent="10.1.0.1", care_of_address="192.0.2.7")
        self.assertEqual(msg.home_address, HOA)
        self.assertEqual(mip.encode(msg), h(REQUEST_FIXED_HEX))
        self.round_trip(msg)
        self.assertEqual(reply(home_address="10.1.0.5", home_agent="10.1.0.1"), reply())

    def test_raw_not_compared(self) -> None:
        """C{raw} and C{offsets} take no part in equality."""
        decoded = mip.decode(mip.encode(request(mip.NAIExtension(NAI))))
        self.assertEqual(decoded, request(mip.NAIExtension(NAI)))
        self.assertNotEqual(request(), reply())

    def test_find_helpers(self) -> None:
        """find_extension and find_auth return the first index of a kind, or None."""
        exts = every_kind()
        self.assertEqual(mip.find_extension(exts, mip.NAIExtension), 0)
        self.assertEqual(mip.find_extension(exts, mip.RevocationSupport), 3)
        self.assertEqual(mip.find_extension(exts, mip.AuthExtension), 6)
        self.assertIsNone(mip.find_extension((), mip.AuthExtension))
        self.assertEqual(mip.find_auth(exts, mip.EXT_MN_HA), 6)
        self.assertEqual(mip.find_auth(exts, mip.EXT_MN_FA), 7)
        self.assertEqual(mip.find_auth(exts, mip.EXT_FA_HA), 8)
        self.assertIsNone(mip.find_auth(exts[:6], mip.EXT_MN_HA))


class AuthenticatorTests(SynchronousTestCase):
    """RFC 5944 section 3.5.1: what an authenticator covers, checked with the stdlib."""

    def test_hmac_md5_vector(self) -> None:
        """RFC 2104's first HMAC-MD5 test vector, through compute_authenticator."""
        self.assertEqual(
            mip.compute_authenticator(b"\x0b" * 16, "hmac-md5", b"Hi There"),
            h("9294727a3638bb1c13f48ef8158bfc9d"),
        )

    def test_sha256(self) -> None:
        """hmac-sha256 gives a 32-byte authenticator and a length of 36."""
        data = mip.encode(request())
        signed = mip.append_authenticator(data, mip.EXT_MN_HA, 5, KEY, "hmac-sha256")
        head = h("20 24 00000005")
        self.assertEqual(signed, data + head + hmac.new(KEY, data + head, "sha256").digest())
        msg = mip.decode(signed)
        self.assertTrue(mip.verify_authenticator(msg, 0, KEY, "hmac-sha256"))
        self.assertFalse(mip.verify_authenticator(msg, 0, KEY, "hmac-md5"))

    def test_append_mn_ha_by_hand(self) -> None:
        """The MN-HA authenticator covers the fixed part, prior extensions, Type, Length, SPI."""
        prior = h(REQUEST_FIXED_HEX + NAI_HEX + UTRQ_FORCE_HEX)
        covered = prior + h("20 14 00001000")
        expected = covered + md5_hmac(KEY, covered)
        signed = mip.append_authenticator(prior, mip.EXT_MN_HA, 0x1000, KEY)
        self.assertEqual(signed, expected)
        self.assertEqual(len(signed), len(prior) + 22)

        msg = mip.decode(signed)
        self.assertEqual(msg.extensions[2], mip.AuthExtension(32, 0x1000, md5_hmac(KEY, covered)))
        self.assertEqual(mip.authenticated_bytes(msg, 2), covered)
        self.assertTrue(mip.verify_authenticator(msg, 2, KEY, "hmac-md5"))
        self.assertFalse(mip.verify_authenticator(msg, 2, OTHER_KEY, "hmac-md5"))

    def test_reply_by_hand(self) -> None:
        """The same for a reply from the home agent."""
        prior = h(REPLY_FIXED_HEX + UTRP_FORCE_HEX)
        covered = prior + h("20 14 ffffffff")
        signed = mip.append_authenticator(prior, mip.EXT_MN_HA, 0xFFFFFFFF, KEY)
        self.assertEqual(signed, covered + md5_hmac(KEY, covered))
        self.assertTrue(mip.verify_authenticator(mip.decode(signed), 1, KEY, "hmac-md5"))

    def test_any_flipped_bit_fails(self) -> None:
        """A flipped bit anywhere in the covered bytes or the authenticator fails the check."""
        prior = mip.encode(request(mip.NAIExtension(b"mn@example.org")))
        signed = mip.append_authenticator(prior, mip.EXT_MN_HA, 0x1000, KEY)
        self.assertTrue(mip.verify_authenticator(mip.decode(signed), 1, KEY, "hmac-md5"))
        for bit in range(len(signed) * 8):
            tampered = bytearray(signed)
            tampered[bit // 8] ^= 0x80 >> (bit % 8)
            try:
                msg = mip.decode(bytes(tampered))
            except WireError:
                continue
            verified = [
                mip.verify_authenticator(msg, i, KEY, "hmac-md5")
                for i, ext in enumerate(msg.extensions)
                if isinstance(ext, mip.AuthExtension)
            ]
            self.assertFalse(any(verified), f"bit {bit} flipped and still verified")

    def test_later_bytes_not_covered(self) -> None:
        """Bytes after the MN-HA extension (a later MN-FA or NAI) do not affect it."""
        prior = mip.encode(request())
        signed = mip.append_authenticator(prior, mip.EXT_MN_HA, 1, KEY)
        challenge = mip.encode_extension(mip.UnknownExtension(132, b"\x00" * 8))
        longer = mip.append_authenticator(signed + challenge, mip.EXT_MN_FA, 2, OTHER_KEY)
        msg = mip.decode(longer)
        self.assertTrue(mip.verify_authenticator(msg, 0, KEY, "hmac-md5"))
        self.assertTrue(mip.verify_authenticator(msg, 2, OTHER_KEY, "hmac-md5"))
        # Change every byte after the MN-HA extension: MN-HA still verifies.
        cut = len(signed)
        changed = bytearray(longer[:cut] + bytes(b ^ 0x55 for b in longer[cut:]))
        # Keep the later extensions' Type and Length bytes so that it still parses.
        for offset in msg.offsets[1:]:
            changed[offset : offset + 2] = longer[offset : offset + 2]
        tampered = mip.decode(bytes(changed))
        self.assertEqual(len(tampered.extensions), 3)
        self.assertTrue(mip.verify_authenticator(tampered, 0, KEY, "hmac-md5"))
        self.assertFalse(mip.verify_authenticator(tampered, 2, OTHER_KEY, "hmac-md5"))
        # Appending more after it changes nothing either.
        more = mip.decode(signed + mip.encode_extension(mip.NAIExtension(b"z")))
        self.assertTrue(mip.verify_authenticator(more, 0, KEY, "hmac-md5"))

    def test_mn_ha_then_fa_ha_chain(self) -> None:
        """A relay's FA-HA covers the whole MN-HA extension; each checks with its own key."""
        prior = mip.encode(request(mip.NAIExtension(NAI)))
        mn_ha = mip.append_authenticator(prior, mip.EXT_MN_HA, 0x100, KEY)
        chained = mip.append_authenticator(mn_ha, mip.EXT_FA_HA, 0x200, OTHER_KEY)
        covered = mn_ha + h("22 14 00000200")
        self.assertEqual(chained, covered + md5_hmac(OTHER_KEY, covered))

        msg = mip.decode(chained)
        self.assertEqual(mip.find_auth(msg.extensions, mip.EXT_MN_HA), 1)
        self.assertEqual(mip.find_auth(msg.extensions, mip.EXT_FA_HA), 2)
        self.assertTrue(mip.verify_authenticator(msg, 1, KEY, "hmac-md5"))
        self.assertTrue(mip.verify_authenticator(msg, 2, OTHER_KEY, "hmac-md5"))
        self.assertFalse(mip.verify_authenticator(msg, 2, KEY, "hmac-md5"))
        self.assertEqual(mip.authenticated_bytes(msg, 2), covered)

        # A changed MN-HA authenticator breaks it and the FA-HA that covers it.
        tampered = bytearray(chained)
        tampered[len(mn_ha) - 1] ^= 1
        bad = mip.decode(bytes(tampered))
        self.assertFalse(mip.verify_authenticator(bad, 1, KEY, "hmac-md5"))
        self.assertFalse(mip.verify_authenticator(bad, 2, OTHER_KEY, "hmac-md5"))
        # A changed FA-HA authenticator leaves the MN-HA intact.
        tampered = bytearray(chained)
        tampered[-1] ^= 1
        bad = mip.decode(bytes(tampered))
        self.assertTrue(mip.verify_authenticator(bad, 1, KEY, "hmac-md5"))
        self.assertFalse(mip.verify_authenticator(bad, 2, OTHER_KEY, "hmac-md5"))

    def test_truncated_authenticator_fails(self) -> None:
        """An authenticator of the wrong length never verifies."""
        prior = mip.encode(request())
        covered = prior + h("20 0c 00000001")
        short = covered + md5_hmac(KEY, prior + h("20 14 00000001"))[:8]
        msg = mip.decode(short)
        self.assertFalse(mip.verify_authenticator(msg, 0, KEY, "hmac-md5"))

    def test_not_an_auth_extension(self) -> None:
        """Asking about a non-authentication extension is refused or False."""
        msg = mip.decode(mip.encode(request(mip.NAIExtension(NAI))))
        self.assertFalse(mip.verify_authenticator(msg, 0, KEY, "hmac-md5"))
        self.assertRaises(WireError, mip.authenticated_bytes, msg, 0)

    def test_needs_decoded_message(self) -> None:
        """authenticated_bytes works on decoded messages only."""
        built = request(mip.AuthExtension(32, 1, bytes(16)))
        self.assertRaises(WireError, mip.authenticated_bytes, built, 0)
        self.assertRaises(WireError, mip.verify_authenticator, built, 0, KEY, "hmac-md5")

    def test_bad_arguments(self) -> None:
        """Unknown algorithms, non-authentication types and out-of-range SPIs are refused."""
        data = mip.encode(request())
        for ext_type in (0, 31, 35, 131, 144):
            self.assertRaises(WireError, mip.append_authenticator, data, ext_type, 1, KEY)
        for spi in (-1, 1 << 32):
            self.assertRaises(WireError, mip.append_authenticator, data, 32, spi, KEY)
        self.assertRaises(WireError, mip.append_authenticator, data, 32, 1, KEY, "md5")
        self.assertRaises(WireError, mip.compute_authenticator, KEY, "hmac-sha1", data)
        signed = mip.decode(mip.append_authenticator(data, 32, 1, KEY))
        self.assertRaises(WireError, mip.verify_authenticator, signed, 0, KEY, "prefix-suffix")

    def test_errors_hold_no_key(self) -> None:
        """An error about authentication never shows the key."""
        secret = b"very-secret-key-material"
        try:
            mip.append_authenticator(b"", 32, 1, secret, "nope")
        except WireError as e:
            self.assertNotIn("very-secret", str(e))
            self.assertNotIn(secret.hex(), str(e))
        else:
            self.fail("no WireError")


class TruncationTests(SynchronousTestCase):
    """Every prefix of a valid message is refused, except at an extension boundary."""

    def check_prefixes(self, msg: mip.Message) -> None:
        """Decode every prefix of C{msg}'s encoding; only boundaries decode."""
        data = mip.encode(msg)
        cuts = boundaries(msg)
        self.assertEqual(cuts[-1], len(data))
        for n in range(len(data) + 1):
            if n in cuts:
                decoded = mip.decode(data[:n])
                kept = cuts.index(n)
                self.assertEqual(decoded.extensions, msg.extensions[:kept], n)
                self.assertEqual(type(decoded), type(msg))
            else:
                e = self.assertRaises(WireError, mip.decode, data[:n])
                self.assertTrue(str(e), n)

    def test_request_prefixes(self) -> None:
        """A request with every kind of extension, cut at every length."""
        prior = mip.encode(request(*every_kind()))
        signed = mip.append_authenticator(prior, mip.EXT_MN_HA, 9, KEY)
        msg = mip.decode(signed)
        self.check_prefixes(msg)

    def test_reply_prefixes(self) -> None:
        """A reply with every kind of extension, cut at every length."""
        self.check_prefixes(reply(*every_kind()))

    def test_fixed_only(self) -> None:
        """Without extensions only the whole fixed part decodes."""
        self.check_prefixes(request())
        self.check_prefixes(reply())


class BadInputTests(SynchronousTestCase):
    """Malformed input raises WireError with a readable sentence."""

    def refused(self, data: bytes, *words: str) -> WireError:
        """C{data} raises WireError whose message holds each of C{words}."""
        e = self.assertRaises(WireError, mip.decode, data)
        text = str(e)
        self.assertTrue(text)
        for word in words:
            self.assertIn(word, text)
        return e

    def test_empty(self) -> None:
        """Empty input."""
        self.refused(b"", "empty")

    def test_unknown_message_types(self) -> None:
        """Types other than 1 and 3, including the tunnel data and revocation types."""
        for kind in (0, 2, 4, 7, 15, 255):
            self.refused(bytes([kind]) + bytes(30), f"type {kind}")

    def test_short_fixed_part(self) -> None:
        """A request needs 24 bytes, a reply 20."""
        self.refused(h(REQUEST_FIXED_HEX)[:23], "24")
        self.refused(h(REPLY_FIXED_HEX)[:19], "20")
        self.refused(b"\x01", "24")
        self.refused(b"\x03", "20")

    def test_extension_past_end(self) -> None:
        """An extension whose length runs past the end of the message."""
        self.refused(h(REQUEST_FIXED_HEX) + h("83 13") + NAI, "131", "19")
        self.refused(h(REPLY_FIXED_HEX) + h("c8 ff 00"), "200")
        self.refused(h(REPLY_FIXED_HEX) + h("c8"), "length")

    def test_wrong_fixed_lengths(self) -> None:
        """144, 44 and 137 have a length of exactly 6."""
        fixed = h(REQUEST_FIXED_HEX)
        self.refused(fixed + h("90 05 00 00 80 04 00"), "tunnel request", "5")
        self.refused(fixed + h("90 07 00 00 80 04 0000 00"), "tunnel request", "7")
        self.refused(fixed + h("2c 05 00 00 8000 00"), "tunnel reply", "5")
        self.refused(fixed + h("2c 08 00 00 8000 0019 0000"), "tunnel reply", "8")
        self.refused(fixed + h("89 04 8000 1122"), "revocation", "4")
        self.refused(fixed + h("89 07 8000 11223344 00"), "revocation", "7")

    def test_non_zero_sub_type(self) -> None:
        """RFC 3519 defines only sub-type 0 for 144 and 44."""
        self.refused(h(REQUEST_FIXED_HEX) + h("90 06 01 00 80 04 0000"), "sub-type 1")
        self.refused(h(REPLY_FIXED_HEX) + h("2c 06 ff 00 8000 0019"), "sub-type 255")

    def test_short_auth_extension(self) -> None:
        """An authentication extension needs the SPI and at least one byte."""
        for ext_type in ("20", "21", "22"):
            self.refused(h(REQUEST_FIXED_HEX) + h(ext_type + " 04 00000001"), "SPI")
            self.refused(h(REQUEST_FIXED_HEX) + h(ext_type + " 00"), "SPI")

    def test_empty_nai(self) -> None:
        """An NAI extension of length 0."""
        self.refused(h(REQUEST_FIXED_HEX) + h("83 00"), "NAI")

    def test_bytearray_and_memoryview(self) -> None:
        """Other bytes-like input decodes the same, and raw is immutable bytes."""
        data = h(REQUEST_FIXED_HEX + NAI_HEX)
        for view in (bytearray(data), memoryview(data)):
            msg = mip.decode(view)  # type: ignore[arg-type]
            self.assertEqual(msg, mip.decode(data))
            self.assertIsInstance(msg.raw, bytes)

    def test_wire_error_is_value_error(self) -> None:
        """WireError is a ValueError, so callers may catch either."""
        self.assertTrue(issubclass(WireError, ValueError))


class EncodingRefusalTests(SynchronousTestCase):
    """Values that cannot go on the wire are refused with WireError."""

    def test_lifetime(self) -> None:
        """The lifetime is 16 bits unsigned."""
        for bad in (-1, 0x10000, 1 << 20):
            self.assertRaises(WireError, request, lifetime=bad)
            self.assertRaises(WireError, reply, lifetime=bad)

    def test_identification(self) -> None:
        """The identification is 64 bits unsigned."""
        for bad in (-1, 1 << 64):
            self.assertRaises(WireError, request, identification=bad)
            self.assertRaises(WireError, reply, identification=bad)

    def test_flags_and_code(self) -> None:
        """Flags and code are one byte."""
        for bad in (-1, 256):
            self.assertRaises(WireError, request, flags=bad)
            self.assertRaises(WireError, reply, code=bad)

    def test_addresses(self) -> None:
        """Anything that is not an IPv4 address."""
        for bad in ("10.0.0.256", "::1", "", "example.org", -1, 1 << 32, b"\x01\x02\x03"):
            e = self.assertRaises(WireError, request, home_address=bad)
            self.assertIn("IPv4", str(e))
            self.assertRaises(WireError, request, home_agent=bad)
            self.assertRaises(WireError, request, care_of_address=bad)
            self.assertRaises(WireError, reply, home_address=bad)
            self.assertRaises(WireError, reply, home_agent=bad)

    def test_spi(self) -> None:
        """The SPI is 32 bits unsigned."""
        for bad in (-1, 1 << 32):
            self.assertRaises(WireError, mip.AuthExtension, 32, bad, bytes(16))

    def test_auth_extension(self) -> None:
        """Only types 32-34, and 1 to 251 bytes of authenticator (Length <= 255)."""
        for bad_type in (0, 31, 35, 36, 131):
            self.assertRaises(WireError, mip.AuthExtension, bad_type, 1, bytes(16))
        self.assertRaises(WireError, mip.AuthExtension, 32, 1, b"")
        self.assertRaises(WireError, mip.AuthExtension, 32, 1, bytes(252))

    def test_nai(self) -> None:
        """An NAI holds 1 to 255 bytes."""
        self.assertRaises(WireError, mip.NAIExtension, b"")
        self.assertRaises(WireError, mip.NAIExtension, b"n" * 256)

    def test_tunnel_and_revocation(self) -> None:
        """One-byte, 16-bit and 32-bit fields of 144, 44 and 137."""
        for bad in (-1, 256):
            self.assertRaises(WireError, mip.UDPTunnelRequest, bad)
            self.assertRaises(WireError, mip.UDPTunnelReply, bad)
        for bad in (-1, 0x10000):
            self.assertRaises(WireError, mip.UDPTunnelReply, 0, False, bad)
        for bad in (-1, 1 << 32):
            self.assertRaises(WireError, mip.RevocationSupport, bad)

    def test_unknown(self) -> None:
        """Unknown extensions: one-byte type, at most 255 bytes of data."""
        for bad in (-1, 256):
            self.assertRaises(WireError, mip.UnknownExtension, bad, b"")
        self.assertRaises(WireError, mip.UnknownExtension, 200, bytes(256))

    def test_not_an_extension(self) -> None:
        """encode_extension refuses anything else."""
        self.assertRaises(WireError, mip.encode_extension, object())  # type: ignore[arg-type]


class UnknownExtensionTests(SynchronousTestCase):
    """RFC 5944 section 1.9: 0-127 may not be skipped, 128-255 may."""

    def test_report(self) -> None:
        """Type 100 is reported, type 200 is skipped."""
        msg = mip.decode(h(REQUEST_FIXED_HEX) + h("c8 01 00"))
        self.assertIsNone(mip.unknown_nonskippable(msg.extensions))
        msg = mip.decode(h(REQUEST_FIXED_HEX) + h("c8 01 00 64 02 0000"))
        self.assertEqual(mip.unknown_nonskippable(msg.extensions), 100)

    def test_boundaries(self) -> None:
        """127 is the last non-skippable type, 128 the first skippable one."""
        self.assertFalse(mip.UnknownExtension(0, b"").skippable)
        self.assertFalse(mip.UnknownExtension(127, b"").skippable)
        self.assertTrue(mip.UnknownExtension(128, b"").skippable)
        self.assertTrue(mip.UnknownExtension(255, b"").skippable)
        self.assertEqual(mip.unknown_nonskippable([mip.UnknownExtension(127, b"")]), 127)
        self.assertIsNone(mip.unknown_nonskippable([mip.UnknownExtension(128, b"")]))

    def test_known_are_not_reported(self) -> None:
        """Recognised non-skippable extensions (32-34, 44) are not reported."""
        self.assertIsNone(mip.unknown_nonskippable(every_kind()[:4] + every_kind()[6:]))
        self.assertIsNone(mip.unknown_nonskippable(()))

    def test_first_is_reported(self) -> None:
        """The first unknown non-skippable type is the one reported."""
        exts = [mip.UnknownExtension(t, b"") for t in (200, 40, 100)]
        self.assertEqual(mip.unknown_nonskippable(exts), 40)


class NTPTests(SynchronousTestCase):
    """64-bit NTP timestamps for the identification field."""

    def test_unix_epoch(self) -> None:
        """Unix 0 is 2208988800 seconds after 1900, fraction 0."""
        self.assertEqual(ntp.NTP_UNIX_OFFSET, 2208988800)
        self.assertEqual(ntp.to_ntp(0), 2208988800 << 32)
        self.assertEqual(ntp.from_ntp(2208988800 << 32), 0.0)
        self.assertEqual(ntp.ntp_seconds(ntp.to_ntp(0)), 2208988800)

    def test_fraction(self) -> None:
        """Half a second is 0x80000000 in the low 32 bits."""
        self.assertEqual(ntp.to_ntp(0.5), (2208988800 << 32) | 0x80000000)
        self.assertEqual(ntp.to_ntp(1.25), (2208988801 << 32) | 0x40000000)

    def test_round_trip(self) -> None:
        """from_ntp(to_ntp(t)) is t within a microsecond, for times in era 0."""
        for t in (0.0, 1.5, 1_000_000_000.123456, 1_700_000_000.999999, 2_085_978_495.5):
            self.assertAlmostEqual(ntp.from_ntp(ntp.to_ntp(t)), t, delta=1e-6)
        for value in (0, 1, 2208988800 << 32, (1 << 64) - 1):
            back = ntp.to_ntp(ntp.from_ntp(value))
            self.assertLess(abs(ntp.ntp_diff(back, value)), 1e-6)

    def test_1900(self) -> None:
        """1900-01-01 is NTP 0; earlier times have no NTP value."""
        self.assertEqual(ntp.to_ntp(-2208988800), 0)
        self.assertRaises(WireError, ntp.to_ntp, -2208988801)

    def test_era_wrap(self) -> None:
        """2036-02-07 06:28:16 UTC wraps to NTP 0 (era 1)."""
        wrap = (1 << 32) - ntp.NTP_UNIX_OFFSET
        self.assertEqual(ntp.to_ntp(wrap), 0)
        self.assertEqual(ntp.to_ntp(wrap + 10), 10 << 32)
        self.assertEqual(ntp.to_ntp(wrap - 1), 0xFFFFFFFF << 32)

    def test_from_ntp_range(self) -> None:
        """Only unsigned 64-bit values."""
        self.assertRaises(WireError, ntp.from_ntp, -1)
        self.assertRaises(WireError, ntp.from_ntp, 1 << 64)

    def test_diff(self) -> None:
        """ntp_diff is the signed distance, also across the era wrap."""
        t = ntp.to_ntp(1_700_000_000)
        self.assertEqual(ntp.ntp_diff(t + (5 << 32), t), 5.0)
        self.assertEqual(ntp.ntp_diff(t, t + (5 << 32)), -5.0)
        self.assertEqual(ntp.ntp_diff(t + (1 << 31), t), 0.5)
        before = 0xFFFFFFFB << 32  # 5 s before the 2036 wrap
        after = 5 << 32  # 5 s after it
        self.assertEqual(ntp.ntp_diff(after, before), 10.0)
        self.assertEqual(ntp.ntp_diff(before, after), -10.0)
        wrap = (1 << 32) - ntp.NTP_UNIX_OFFSET
        self.assertEqual(ntp.ntp_diff(ntp.to_ntp(wrap + 3), ntp.to_ntp(wrap - 3)), 6.0)

    def test_ident_on_the_wire(self) -> None:
        """An NTP identification goes on the wire as seconds then fraction."""
        ident = ntp.to_ntp(1_700_000_000.5)
        data = mip.encode(request(identification=ident))
        self.assertEqual(data[16:20], struct.pack("!I", 1_700_000_000 + 2208988800))
        self.assertEqual(data[20:24], h("80000000"))


# ---------------------------------------------------------------------------
# Property tests

U32 = st.integers(0, 0xFFFFFFFF)
ADDRESSES = U32.map(IPv4Address)
EXTENSIONS: st.SearchStrategy[mip.Extension] = st.one_of(
    st.builds(
        mip.AuthExtension,
        st.sampled_from([mip.EXT_MN_HA, mip.EXT_MN_FA, mip.EXT_FA_HA]),
        U32,
        st.binary(min_size=1, max_size=251),
    ),
    st.builds(mip.NAIExtension, st.binary(min_size=1, max_size=255)),
    st.builds(mip.UDPTunnelRequest, st.integers(0, 255), st.booleans(), st.booleans()),
    st.builds(mip.UDPTunnelReply, st.integers(0, 255), st.booleans(), st.integers(0, 0xFFFF)),
    st.builds(mip.RevocationSupport, U32, st.booleans()),
    st.builds(
        mip.UnknownExtension,
        st.integers(0, 255).filter(lambda t: t not in KNOWN_TYPES),
        st.binary(max_size=255),
    ),
)
EXTENSION_LISTS = st.lists(EXTENSIONS, max_size=6).map(tuple)
REQUESTS = st.builds(
    mip.RegistrationRequest,
    flags=st.integers(0, 255),
    lifetime=st.integers(0, 0xFFFF),
    home_address=ADDRESSES,
    home_agent=ADDRESSES,
    care_of_address=ADDRESSES,
    identification=st.integers(0, (1 << 64) - 1),
    extensions=EXTENSION_LISTS,
)
REPLIES = st.builds(
    mip.RegistrationReply,
    code=st.integers(0, 255),
    lifetime=st.integers(0, 0xFFFF),
    home_address=ADDRESSES,
    home_agent=ADDRESSES,
    identification=st.integers(0, (1 << 64) - 1),
    extensions=EXTENSION_LISTS,
)
MESSAGES = st.one_of(REQUESTS, REPLIES)
# Mostly-plausible bytes: a request or reply type, a fixed part, then noise.
NEAR_MESSAGES = st.builds(
    lambda kind, body: bytes([kind]) + body,
    st.sampled_from([mip.TYPE_REQUEST, mip.TYPE_REPLY]),
    st.binary(min_size=19, max_size=120),
)

FAST = settings(max_examples=150, deadline=None, database=None)


class PropertyTests(SynchronousTestCase):
    """Fuzzing whole and byte-at-a-time (hypothesis)."""

    @FAST
    @given(st.one_of(st.binary(max_size=120), NEAR_MESSAGES))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Any bytes either decode or raise WireError, never anything else."""
        try:
            msg = mip.decode(data)
        except WireError:
            return
        self.assertEqual(msg.raw, data)
        # Whatever decoded can be encoded again, and decodes the same.
        self.assertEqual(mip.decode(mip.encode(msg)), msg)

    @FAST
    @given(MESSAGES)
    def test_round_trip(self, msg: mip.Message) -> None:
        """Every valid message survives encode then decode."""
        data = mip.encode(msg)
        decoded = mip.decode(data)
        self.assertEqual(decoded, msg)
        self.assertEqual(decoded.raw, data)
        self.assertEqual(list(decoded.offsets), boundaries(msg)[:-1])

    @FAST
    @given(MESSAGES)
    def test_every_prefix(self, msg: mip.Message) -> None:
        """Every prefix raises WireError, or decodes exactly at an extension boundary."""
        data = mip.encode(msg)
        cuts = boundaries(msg)
        for n in range(len(data)):
            try:
                decoded = mip.decode(data[:n])
            except WireError:
                self.assertNotIn(n, cuts)
                continue
            self.assertIn(n, cuts)
            self.assertEqual(decoded.extensions, msg.extensions[: cuts.index(n)])

    @FAST
    @given(MESSAGES, st.binary(min_size=1, max_size=32), U32)
    def test_signed_round_trip(self, msg: mip.Message, key: bytes, spi: int) -> None:
        """A signed message verifies with its key and the stdlib agrees on the bytes."""
        data = mip.encode(msg)
        signed = mip.append_authenticator(data, mip.EXT_MN_HA, spi, key)
        head = bytes((32, 20)) + struct.pack("!I", spi)
        self.assertEqual(signed, data + head + md5_hmac(key, data + head))
        decoded = mip.decode(signed)
        index = len(decoded.extensions) - 1
        self.assertTrue(mip.verify_authenticator(decoded, index, key, "hmac-md5"))


class RelayHelperTests(SynchronousTestCase):
    """The helpers a foreign agent relays with: RFC 3024 codes, counting, cutting."""

    def test_rfc3024_codes(self) -> None:
        self.assertEqual(mip.CODE_FA_REVERSE_TUNNEL_UNAVAILABLE, 74)
        self.assertEqual(mip.CODE_FA_REVERSE_TUNNEL_MANDATORY, 75)
        self.assertEqual(mip.CODE_FA_MN_TOO_DISTANT, 76)
        self.assertEqual(mip.CODE_FA_DELIVERY_STYLE_UNSUPPORTED, 79)
        for code in (74, 75, 76, 79):
            self.assertIn(code, mip.REPLY_CODE_NAMES)
            self.assertIn(code, mip.FOREIGN_AGENT_CODES)
            self.assertFalse(reply(code=code).accepted)
        self.assertNotIn(128, mip.FOREIGN_AGENT_CODES)
        self.assertNotIn(1, mip.FOREIGN_AGENT_CODES)

    def test_auth_indices(self) -> None:
        exts = every_kind() + (mip.AuthExtension(mip.EXT_FA_HA, 1, b"\x02"),)
        self.assertEqual(mip.auth_indices(exts, mip.EXT_MN_HA), [6])
        self.assertEqual(mip.auth_indices(exts, mip.EXT_MN_FA), [7])
        self.assertEqual(mip.auth_indices(exts, mip.EXT_FA_HA), [8, 9])
        self.assertEqual(mip.auth_indices((), mip.EXT_MN_HA), [])

    def test_through_extension(self) -> None:
        """The exact received bytes up to the end of one extension."""
        data = mip.append_authenticator(
            mip.encode(request(mip.NAIExtension(NAI))), mip.EXT_MN_HA, 7, KEY
        )
        tail = mip.encode_extension(mip.UnknownExtension(200, b"xyz"))
        msg = mip.decode(data + tail)
        self.assertEqual(mip.through_extension(msg, 0), h(REQUEST_FIXED_HEX + NAI_HEX))
        self.assertEqual(mip.through_extension(msg, 1), data)
        self.assertEqual(mip.through_extension(msg, 2), data + tail)
        for bad in (-1, 3):
            self.assertRaises(WireError, mip.through_extension, msg, bad)
        # Only decoded messages carry the bytes received.
        self.assertRaises(WireError, mip.through_extension, request(mip.NAIExtension(NAI)), 0)

    def test_strip_after_mn_ha(self) -> None:
        """MN-HA and what it covers stay byte for byte; MN-FA and the rest go."""
        signed = mip.append_authenticator(mip.encode(reply()), mip.EXT_MN_HA, 7, KEY)
        both = mip.append_authenticator(signed, mip.EXT_MN_FA, 9, OTHER_KEY)
        extra = both + mip.encode_extension(mip.UnknownExtension(100, b""))
        for data in (signed, both, extra):
            self.assertEqual(mip.strip_after_mn_ha(mip.decode(data)), signed)
        stripped = mip.decode(mip.strip_after_mn_ha(mip.decode(both)))
        self.assertTrue(mip.verify_authenticator(stripped, 0, KEY, "hmac-md5"))
        # No MN-HA, or two: nothing sensible to keep.
        self.assertRaises(WireError, mip.strip_after_mn_ha, mip.decode(mip.encode(reply())))
        twice = mip.append_authenticator(signed, mip.EXT_MN_HA, 7, KEY)
        self.assertRaises(WireError, mip.strip_after_mn_ha, mip.decode(twice))
