# -*- test-case-name: tests.test_wire_ikev2 -*-
"""Tests for L{smobility.wire.ikev2}: IKEv2 header, payloads, chaining, strictness.

Checked against hand-made bytes from RFC 7296's figures, and against an
independent dissector: scapy's C{scapy.contrib.ikev2} reads what we encode,
and we read what it encodes.  Hypothesis fuzzes the decoder (whole, truncated
and mutated messages must decode or raise L{WireError}, nothing else) and
round-trips generated messages.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib import ikev2 as sc
from twisted.trial.unittest import SynchronousTestCase

from smobility.wire import ikev2
from smobility.wire.errors import WireError
from smobility.wire.ikev2 import (
    CP,
    KE,
    SA,
    Auth,
    Cert,
    CertReq,
    CPAttribute,
    Delete,
    Encrypted,
    Identity,
    IDi,
    IDr,
    Message,
    Nonce,
    Notify,
    Proposal,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TSi,
    TSr,
    UnknownPayload,
    Vendor,
)

FAST = settings(max_examples=150, deadline=None, database=None)

SPI_I = bytes.fromhex("0123456789abcdef")
SPI_R = bytes.fromhex("fedcba9876543210")


def ike_proposal(number: int = 1) -> Proposal:
    """AES-GCM-16/128, PRF-HMAC-SHA2-256, ECP-256."""
    return Proposal(
        number,
        ikev2.PROTO_IKE,
        b"",
        (
            Transform.make(ikev2.TRANSFORM_ENCR, ikev2.ENCR_AES_GCM_16, 128),
            Transform.make(ikev2.TRANSFORM_PRF, ikev2.PRF_HMAC_SHA2_256),
            Transform.make(ikev2.TRANSFORM_DH, ikev2.DH_ECP_256),
        ),
    )


def init_request() -> Message:
    """An IKE_SA_INIT request as the engine sends it."""
    return Message(
        SPI_I,
        bytes(8),
        ikev2.IKE_SA_INIT,
        ikev2.FLAG_INITIATOR,
        0,
        (
            SA((ike_proposal(),)),
            KE(ikev2.DH_ECP_256, bytes(range(64))),
            Nonce(b"\xaa" * 32),
            Notify(ikev2.N_NAT_DETECTION_SOURCE_IP, b"\x01" * 20),
            Notify(ikev2.N_NAT_DETECTION_DESTINATION_IP, b"\x02" * 20),
        ),
    )


def every_payload() -> tuple[ikev2.Payload, ...]:
    """One of each payload kind (Encrypted aside), with non-trivial contents."""
    esp = Proposal(
        3,
        ikev2.PROTO_ESP,
        b"\x00\x00\x10\x01",
        (
            Transform.make(ikev2.TRANSFORM_ENCR, ikev2.ENCR_AES_GCM_16, 256),
            Transform.make(ikev2.TRANSFORM_ESN, ikev2.ESN_NO),
        ),
    )
    return (
        SA((ike_proposal(1), ike_proposal(2), esp)),
        KE(ikev2.DH_CURVE25519, b"\x09" * 32),
        Nonce(b"\x10" * 16),
        Notify(ikev2.N_INVALID_KE_PAYLOAD, b"\x00\x13"),
        Notify(ikev2.N_REKEY_SA, b"", ikev2.PROTO_ESP, b"\x00\x00\x10\x01"),
        IDi(Identity.fqdn("client.example")),
        IDr(Identity.rfc822("user@example.org")),
        IDi(Identity.ipv4("192.0.2.7")),
        IDr(Identity.der_dn(bytes.fromhex("3011310f300d06035504030c0661626364"))),
        Cert(ikev2.CERT_X509_SIGNATURE, b"\x30\x03\x02\x01\x01"),
        CertReq(ikev2.CERT_X509_SIGNATURE, b"\x44" * 20),
        Auth(ikev2.AUTH_PSK, b"\x55" * 32),
        TSi((TrafficSelector.from_network("10.0.0.0/8"),)),
        TSr(
            (
                TrafficSelector(IPv4Address("10.1.2.3"), IPv4Address("10.1.2.9"), 17, 53, 53),
                TrafficSelector(IPv6Address("2001:db8::"), IPv6Address("2001:db8::ffff")),
            )
        ),
        CP(
            ikev2.CFG_REPLY,
            (
                CPAttribute(ikev2.CFG_INTERNAL_IP4_ADDRESS, IPv4Address("10.77.0.10").packed),
                CPAttribute(ikev2.CFG_INTERNAL_IP4_DNS, IPv4Address("10.77.0.1").packed),
                CPAttribute(ikev2.CFG_APPLICATION_VERSION, b"smobility"),
            ),
        ),
        Delete(ikev2.PROTO_ESP, (b"\x00\x00\x10\x01", b"\x00\x00\x10\x02")),
        Delete(ikev2.PROTO_IKE),
        Vendor(b"smobility"),
        UnknownPayload(200, b"opaque"),
    )


class HeaderTests(SynchronousTestCase):
    """The fixed header (RFC 7296 section 3.1) and the generic payload header (3.2)."""

    def test_empty_informational_bytes(self) -> None:
        """An empty INFORMATIONAL response is the 28-byte header alone, as figure 4 lays out."""
        msg = Message(SPI_I, SPI_R, ikev2.INFORMATIONAL, ikev2.FLAG_RESPONSE, 7)
        data = msg.encode()
        self.assertEqual(
            data,
            SPI_I + SPI_R + bytes((0, 0x20, 37, 0x20)) + struct.pack("!II", 7, 28),
        )
        self.assertEqual(ikev2.decode_message(data), msg)

    def test_chain_next_payload_fields(self) -> None:
        """Each generic header names the next payload; the header names the first."""
        data = init_request().encode()
        self.assertEqual(data[16], ikev2.PT_SA)
        pos, seen = 28, []
        while pos < len(data):
            nxt, _flags, length = struct.unpack_from("!BBH", data, pos)
            seen.append(nxt)
            pos += length
        self.assertEqual(pos, len(data))
        self.assertEqual(
            seen, [ikev2.PT_KE, ikev2.PT_NONCE, ikev2.PT_NOTIFY, ikev2.PT_NOTIFY, ikev2.PT_NONE]
        )
        self.assertEqual(struct.unpack_from("!I", data, 24)[0], len(data))

    def test_header_values(self) -> None:
        """decode_header reports the fields; flags are read correctly."""
        h = ikev2.decode_header(init_request().encode())
        self.assertEqual((h.spi_i, h.spi_r, h.exchange, h.message_id), (SPI_I, bytes(8), 34, 0))
        self.assertTrue(h.from_initiator)
        self.assertFalse(h.is_response)
        self.assertEqual((h.major, h.minor), (2, 0))

    def test_wrong_version(self) -> None:
        """Major version 1 (IKEv1) raises UnsupportedVersion, a WireError."""
        data = bytearray(init_request().encode())
        data[17] = 0x10
        with self.assertRaises(ikev2.UnsupportedVersion) as cm:
            ikev2.decode_message(bytes(data))
        self.assertIsInstance(cm.exception, WireError)

    def test_length_must_match(self) -> None:
        """The Length field must equal the datagram (no trailing bytes, none missing)."""
        data = init_request().encode()
        self.assertRaises(WireError, ikev2.decode_message, data + b"\x00")
        self.assertRaises(WireError, ikev2.decode_message, data[:-1])

    def test_zero_initiator_spi(self) -> None:
        """SPIi is never zero."""
        msg = Message(bytes(8), SPI_R, ikev2.INFORMATIONAL, 0, 1)
        self.assertRaises(WireError, ikev2.decode_message, msg.encode())


class PayloadTests(SynchronousTestCase):
    """Each payload's codec."""

    def test_round_trip_every_payload(self) -> None:
        """A message holding one of every payload decodes to itself."""
        msg = Message(SPI_I, SPI_R, ikev2.IKE_AUTH, ikev2.FLAG_INITIATOR, 1, every_payload())
        self.assertEqual(ikev2.decode_message(msg.encode()), msg)

    def test_transform_bytes(self) -> None:
        """ENCR AES-GCM-16 with Key Length 256 as RFC 7296 figures 8 and 9 lay it out."""
        t = Transform.make(ikev2.TRANSFORM_ENCR, ikev2.ENCR_AES_GCM_16, 256)
        self.assertEqual(t.encode(last=True), bytes.fromhex("0000000c01000014800e0100"))
        self.assertEqual(t.key_length, 256)
        self.assertFalse(t.has_unknown_attributes)

    def test_tlv_attribute(self) -> None:
        """A TLV attribute round-trips and counts as unknown."""
        t = Transform(1, 12, (TransformAttribute(99, b"xyz"),))
        sa = SA((Proposal(1, ikev2.PROTO_IKE, b"", (t,)),))
        self.assertEqual(SA.decode(sa.body()), sa)
        self.assertTrue(t.has_unknown_attributes)
        self.assertIsNone(t.key_length)

    def test_proposal_numbers(self) -> None:
        """Proposal numbers stay or grow by one; a response's single proposal keeps its number."""
        good = SA((ike_proposal(1), ike_proposal(1), ike_proposal(2)))
        self.assertEqual(SA.decode(good.body()), good)
        chosen = SA((ike_proposal(3),))
        self.assertEqual(SA.decode(chosen.body()), chosen)
        bad = SA((ike_proposal(1), ike_proposal(3)))
        self.assertRaises(WireError, SA.decode, bad.body())

    def test_transform_count_must_match(self) -> None:
        """A proposal whose transform count disagrees with its transforms is refused."""
        body = bytearray(SA((ike_proposal(),)).body())
        body[7] = 2  # "# of Transforms"
        self.assertRaises(WireError, SA.decode, bytes(body))

    def test_last_substruc(self) -> None:
        """The 'last substruc' fields must be 0/2 (proposals) and 0/3 (transforms)."""
        body = bytearray(SA((ike_proposal(),)).body())
        body[0] = 2  # claims another proposal follows
        self.assertRaises(WireError, SA.decode, bytes(body))
        body = bytearray(SA((ike_proposal(),)).body())
        body[8] = 0  # the first transform claims to be the last of three
        self.assertRaises(WireError, SA.decode, bytes(body))

    def test_nonce_size(self) -> None:
        """Nonces hold 16 to 256 bytes."""
        self.assertRaises(WireError, Nonce.decode, b"\x00" * 15)
        self.assertRaises(WireError, Nonce.decode, b"\x00" * 257)
        self.assertRaises(WireError, Nonce(b"\x00" * 15).body)
        self.assertEqual(Nonce.decode(b"\x01" * 16).data, b"\x01" * 16)

    def test_identity(self) -> None:
        """Identity helpers and checks; RestOfIDPayload is type, 3 zero bytes, data."""
        self.assertEqual(IDi(Identity.ipv4("10.0.0.1")).body(), bytes((1, 0, 0, 0, 10, 0, 0, 1)))
        self.assertEqual(Identity.parse("10.0.0.1"), Identity.ipv4("10.0.0.1"))
        self.assertEqual(Identity.parse("a@b.c"), Identity.rfc822("a@b.c"))
        self.assertEqual(Identity.parse("ha.example"), Identity.fqdn("ha.example"))
        self.assertEqual(str(Identity.fqdn("ha.example")), "ha.example")
        self.assertRaises(WireError, IDi.decode, bytes((1, 0, 0, 0, 10, 0, 0)))
        self.assertRaises(WireError, IDi.decode, bytes((2, 0, 0, 0)) + b"a\x00b")
        self.assertRaises(WireError, IDi.decode, bytes((9, 0, 0, 0)) + b"\x04\x00")

    def test_notify_spi(self) -> None:
        """A notify's SPI is as long as its SPI Size says."""
        n = Notify(ikev2.N_REKEY_SA, b"", ikev2.PROTO_ESP, b"\x01\x02\x03\x04")
        self.assertEqual(n.body(), bytes.fromhex("0304400901020304"))
        self.assertEqual(Notify.decode(n.body()), n)
        self.assertRaises(WireError, Notify.decode, bytes.fromhex("0308400901020304"))
        self.assertTrue(Notify(ikev2.N_NO_PROPOSAL_CHOSEN).is_error)
        self.assertFalse(Notify(ikev2.N_COOKIE, b"x").is_error)

    def test_delete(self) -> None:
        """Delete: IKE carries no SPI; ESP carries 4-byte SPIs, counted."""
        self.assertEqual(Delete(ikev2.PROTO_IKE).body(), bytes((1, 0, 0, 0)))
        self.assertRaises(WireError, Delete.decode, bytes((1, 8, 0, 0)))
        self.assertRaises(WireError, Delete.decode, bytes((3, 4, 0, 2)) + b"\x00" * 4)
        self.assertRaises(WireError, Delete(ikev2.PROTO_ESP, (b"\x00" * 3,)).body)

    def test_traffic_selectors(self) -> None:
        """TS lengths are 16 (IPv4) and 40 (IPv6); other types are refused."""
        ts = TSi((TrafficSelector.from_network("192.0.2.0/24", 6),))
        self.assertEqual(
            ts.body(), bytes.fromhex("01000000" "07060010" "0000ffff" "c0000200" "c00002ff")
        )
        body = bytearray(ts.body())
        body[7] = 17
        self.assertRaises(WireError, TSi.decode, bytes(body))
        body = bytearray(ts.body())
        body[4] = 9
        self.assertRaises(WireError, TSi.decode, bytes(body))
        self.assertEqual(str(ts.selectors[0]), "192.0.2.0-192.0.2.255 proto 6")

    def test_cp_ipv4_attribute_size(self) -> None:
        """INTERNAL_IP4_ADDRESS holds 0 or 4 bytes."""
        self.assertRaises(WireError, CP.decode, bytes((2, 0, 0, 0, 0, 1, 0, 3, 1, 2, 3)))
        cp = CP.decode(bytes((1, 0, 0, 0, 0, 1, 0, 0)))
        self.assertEqual(cp.attributes, (CPAttribute(ikev2.CFG_INTERNAL_IP4_ADDRESS),))
        self.assertIsNone(cp.attributes[0].ipv4)

    def test_u16(self) -> None:
        """INVALID_KE_PAYLOAD data: a 16-bit group number, exactly two bytes."""
        self.assertEqual(ikev2.unpack_u16(ikev2.pack_u16(19)), 19)
        self.assertRaises(WireError, ikev2.unpack_u16, b"\x00")


class ChainTests(SynchronousTestCase):
    """Chaining, the Encrypted payload and unknown payloads (sections 2.5, 3.2, 3.14)."""

    def test_unknown_noncritical_is_kept(self) -> None:
        """An unknown payload with the critical bit clear is skipped (kept opaque)."""
        first, data = ikev2.encode_chain((UnknownPayload(250, b"abc"), Nonce(b"n" * 16)))
        self.assertEqual(
            ikev2.decode_chain(first, data), (UnknownPayload(250, b"abc"), Nonce(b"n" * 16))
        )

    def test_unknown_critical_raises(self) -> None:
        """An unknown payload with the critical bit set raises, naming its type."""
        first, data = ikev2.encode_chain((UnknownPayload(250, b"abc", critical=True),))
        with self.assertRaises(ikev2.UnsupportedCriticalPayload) as cm:
            ikev2.decode_chain(first, data)
        self.assertEqual(cm.exception.payload_type, 250)

    def test_encrypted_last(self) -> None:
        """SK must be last; its Next Payload names the first inner payload."""
        msg = Message(SPI_I, SPI_R, ikev2.IKE_AUTH, 8, 1, (Encrypted(ikev2.PT_IDI, b"\x00" * 40),))
        data = msg.encode()
        self.assertEqual(data[16], ikev2.PT_SK)
        self.assertEqual(data[28], ikev2.PT_IDI)
        self.assertEqual(ikev2.decode_message(data), msg)
        self.assertRaises(
            WireError, ikev2.encode_chain, (Encrypted(ikev2.PT_IDI, b"x"), Nonce(b"n" * 16))
        )
        # An SK payload followed by another one on the wire.
        first, tail = ikev2.encode_chain((Nonce(b"n" * 16),))
        bogus = bytes((first, 0, 0, 5)) + b"x" + tail
        self.assertRaises(WireError, ikev2.decode_chain, ikev2.PT_SK, bogus)

    def test_no_sk_inside_sk(self) -> None:
        """The plaintext of an SK payload may not hold another."""
        first, data = ikev2.encode_chain((Encrypted(ikev2.PT_NONE, b"x"),))
        self.assertRaises(WireError, ikev2.decode_chain, first, data, inner=True)

    def test_encrypted_prefix(self) -> None:
        """The AAD prefix is the message up to and including the SK generic header."""
        msg = Message(SPI_I, SPI_R, ikev2.IKE_AUTH, 8, 1, (Encrypted(ikev2.PT_IDI, b""),))
        prefix = ikev2.encrypted_prefix(msg, 50)
        self.assertEqual(len(prefix), 32)
        self.assertEqual(struct.unpack_from("!I", prefix, 24)[0], 32 + 50)
        self.assertEqual(struct.unpack_from("!H", prefix, 30)[0], 4 + 50)

    def test_truncation_everywhere(self) -> None:
        """Every strict prefix of a valid message raises WireError."""
        data = Message(SPI_I, SPI_R, ikev2.IKE_AUTH, 8, 1, every_payload()).encode()
        for n in range(len(data)):
            self.assertRaises(WireError, ikev2.decode_message, data[:n])


class ScapyTests(SynchronousTestCase):
    """An independent IKEv2 dissector: scapy reads ours, we read scapy's."""

    def layers(self, pkt: Any) -> list[Any]:
        """The payload layers of a scapy packet, in order."""
        out = []
        layer = getattr(pkt, "payload", None)
        while layer is not None and layer.__class__.__name__ != "NoPayload":
            out.append(layer)
            layer = layer.payload
        return out

    def test_scapy_reads_ours(self) -> None:
        """scapy decodes our IKE_SA_INIT: header, proposal, transforms, KE, nonce, notifies."""
        data = init_request().encode()
        pkt = sc.IKEv2(data)
        self.assertEqual(pkt.init_SPI, SPI_I)
        self.assertEqual(pkt.exch_type, 34)
        self.assertEqual(pkt.length, len(data))
        sa, ke, nonce, n1, n2 = self.layers(pkt)
        prop = sa.prop
        self.assertEqual((prop.proposal, prop.proto, prop.trans_nb), (1, 1, 3))
        trans = []
        t = prop.trans
        while t is not None and t.__class__.__name__ == "IKEv2_Transform":
            trans.append((t.transform_type, t.transform_id, t.key_length))
            t = t.payload
        self.assertEqual(trans, [(1, 20, 128), (2, 5, None), (4, 19, None)])
        self.assertEqual((ke.group, ke.ke), (19, bytes(range(64))))
        self.assertEqual(nonce.nonce, b"\xaa" * 32)
        self.assertEqual((n1.type, n1.notify), (16388, b"\x01" * 20))
        self.assertEqual((n2.type, n2.notify), (16389, b"\x02" * 20))

    def test_scapy_reads_every_payload(self) -> None:
        """scapy walks a chain of every payload we encode, types in order."""
        payloads = every_payload()[:-1]  # scapy stops at an unknown payload type
        data = Message(SPI_I, SPI_R, ikev2.IKE_AUTH, 8, 1, payloads).encode()
        names = [x.__class__.__name__ for x in self.layers(sc.IKEv2(data))]
        self.assertEqual(
            names,
            [
                "IKEv2_SA", "IKEv2_KE", "IKEv2_Nonce", "IKEv2_Notify", "IKEv2_Notify",
                "IKEv2_IDi", "IKEv2_IDr", "IKEv2_IDi", "IKEv2_IDr", "IKEv2_CERT",
                "IKEv2_CERTREQ", "IKEv2_AUTH", "IKEv2_TSi", "IKEv2_TSr", "IKEv2_CP",
                "IKEv2_Delete", "IKEv2_Delete", "IKEv2_VendorID",
            ],
        )

    def test_we_read_scapy(self) -> None:
        """We decode an IKE_SA_INIT built by scapy."""
        pkt = (
            sc.IKEv2(init_SPI=SPI_I, resp_SPI=bytes(8), exch_type=34, flags="Initiator")
            / sc.IKEv2_SA(
                prop=sc.IKEv2_Proposal(
                    proposal=1,
                    proto=1,
                    trans_nb=3,
                    # scapy writes the Key Length attribute only with an explicit length.
                    trans=sc.IKEv2_Transform(
                        transform_type=1, transform_id=20, length=12, key_length=256
                    )
                    / sc.IKEv2_Transform(transform_type=2, transform_id=6)
                    / sc.IKEv2_Transform(transform_type=4, transform_id=31),
                )
            )
            / sc.IKEv2_KE(group=31, ke=b"\x07" * 32)
            / sc.IKEv2_Nonce(nonce=b"\x08" * 32)
        )
        msg = ikev2.decode_message(bytes(pkt))
        sa = msg.find(SA)
        assert sa is not None
        p = sa.proposals[0]
        self.assertEqual(
            [(t.type, t.id, t.key_length) for t in p.transforms],
            [(1, 20, 256), (2, 6, None), (4, 31, None)],
        )
        self.assertEqual(msg.find(KE), KE(31, b"\x07" * 32))
        self.assertEqual(msg.find(Nonce), Nonce(b"\x08" * 32))


# ---------------------------------------------------------------------------
# Hypothesis
# ---------------------------------------------------------------------------

_addr4 = st.integers(0, 2**32 - 1).map(IPv4Address)
_ts = st.builds(
    lambda a, b, proto, p1, p2: TrafficSelector(min(a, b), max(a, b), proto, p1, p2),
    _addr4,
    _addr4,
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
_transform = st.builds(
    Transform.make,
    st.integers(1, 5),
    st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFF),
)
_proposals = st.lists(
    st.builds(
        lambda proto, spi, ts: (proto, spi, tuple(ts)),
        st.sampled_from([ikev2.PROTO_IKE, ikev2.PROTO_ESP]),
        st.binary(max_size=8),
        st.lists(_transform, min_size=1, max_size=5),
    ),
    min_size=1,
    max_size=4,
).map(lambda ps: SA(tuple(Proposal(i + 1, p, s, t) for i, (p, s, t) in enumerate(ps))))
_payload = st.one_of(
    _proposals,
    st.builds(KE, st.integers(0, 0xFFFF), st.binary(min_size=1, max_size=300)),
    st.builds(Nonce, st.binary(min_size=16, max_size=256)),
    st.builds(
        Notify,
        st.integers(0, 0xFFFF),
        st.binary(max_size=40),
        st.integers(0, 255),
        st.binary(max_size=8),
    ),
    st.builds(lambda s: IDi(Identity.fqdn(s)), st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True)),
    st.builds(lambda a: IDr(Identity.ipv4(a)), _addr4),
    st.builds(Auth, st.integers(0, 255), st.binary(min_size=1, max_size=64)),
    st.builds(Cert, st.integers(0, 255), st.binary(min_size=1, max_size=64)),
    st.builds(CertReq, st.integers(0, 255), st.binary(max_size=64)),
    st.builds(lambda ts: TSi(tuple(ts)), st.lists(_ts, min_size=1, max_size=4)),
    st.builds(lambda ts: TSr(tuple(ts)), st.lists(_ts, min_size=1, max_size=4)),
    st.builds(
        lambda spis: Delete(ikev2.PROTO_ESP, tuple(spis)),
        st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=5),
    ),
    st.builds(
        lambda t, attrs: CP(t, tuple(attrs)),
        st.sampled_from([1, 2, 3, 4]),
        st.lists(
            st.builds(CPAttribute, st.sampled_from([1, 3]), st.sampled_from([b"", b"\x0a\0\0\1"]))
            | st.builds(CPAttribute, st.integers(5, 0x7FFF), st.binary(max_size=20)),
            max_size=4,
        ),
    ),
    st.builds(Vendor, st.binary(min_size=1, max_size=40)),
    st.builds(UnknownPayload, st.integers(49, 127), st.binary(max_size=20)),
)
_message = st.builds(
    lambda spi, spr, ex, fl, mid, ps: Message(spi, spr, ex, fl, mid, tuple(ps)),
    st.binary(min_size=8, max_size=8).filter(lambda b: b != bytes(8)),
    st.binary(min_size=8, max_size=8),
    st.sampled_from([34, 35, 36, 37]),
    st.sampled_from([0, 8, 0x20, 0x28]),
    st.integers(0, 2**32 - 1),
    st.lists(_payload, max_size=8),
)


class FuzzTests(SynchronousTestCase):
    """The decoder under hypothesis: round trips, and only WireError on garbage."""

    @FAST
    @given(_message)
    def test_round_trip(self, msg: Message) -> None:
        """Every generated message decodes to itself."""
        self.assertEqual(ikev2.decode_message(msg.encode()), msg)

    @FAST
    @given(st.binary(max_size=400))
    def test_garbage(self, data: bytes) -> None:
        """Random bytes decode or raise WireError, nothing else."""
        try:
            ikev2.decode_message(data)
        except WireError:
            pass

    @FAST
    @given(st.binary(max_size=400))
    def test_garbage_after_header(self, body: bytes) -> None:
        """Random payload bytes behind a valid header: decode or WireError."""
        header = SPI_I + SPI_R + bytes((ikev2.PT_SA, 0x20, 35, 8)) + struct.pack(
            "!II", 1, 28 + len(body)
        )
        for first in (ikev2.PT_SA, ikev2.PT_TSI, ikev2.PT_CP, ikev2.PT_NOTIFY, ikev2.PT_SK):
            data = header[:16] + bytes((first,)) + header[17:] + body
            try:
                ikev2.decode_message(data)
            except WireError:
                pass

    @FAST
    @given(_message, st.data())
    def test_mutations(self, msg: Message, data: st.DataObject) -> None:
        """Flipping bytes of a valid message: decode or WireError, and re-encodable if decoded."""
        raw = bytearray(msg.encode())
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        try:
            decoded = ikev2.decode_message(bytes(raw))
        except WireError:
            return
        self.assertEqual(ikev2.decode_message(decoded.encode()), decoded)
