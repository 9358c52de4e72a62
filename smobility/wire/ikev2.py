# -*- test-case-name: tests.test_wire_ikev2 -*-
"""IKEv2 messages and payloads (RFC 7296 section 3), as plain values.

Pure codec: bytes in, values out, and back.  No I/O, no clock, no crypto:
the Encrypted payload (SK, section 3.14) decodes to :class:`Encrypted` with
its body (IV, ciphertext, ICV) left opaque; :mod:`smobility.engines.ikecrypto`
opens it and hands the plaintext back to :func:`decode_chain`.

Covered: the IKE header (3.1), the generic payload header and chaining (3.2),
SA with proposals, transforms and attributes (3.3), KE (3.4), IDi/IDr (3.5),
CERT (3.6), CERTREQ (3.7), AUTH (3.8), Ni/Nr (3.9), N (3.10), D (3.11),
V (3.12), TSi/TSr (3.13), SK (3.14) and CP (3.15).  A payload type this
module does not know decodes to :class:`UnknownPayload` when its critical bit
is clear (it must be skipped, section 2.5) and raises
:class:`UnsupportedCriticalPayload` when it is set, so that the engine can
answer UNSUPPORTED_CRITICAL_PAYLOAD.

Strict: lengths must add up exactly, an Encrypted payload must come last,
counts and sizes must be what the RFC allows.  RESERVED fields are sent as
zero and ignored on receipt, as section 3 requires.  Every failure raises
:class:`~smobility.wire.errors.WireError` (or a subclass).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import ClassVar, Final, TypeVar

from .errors import WireError

IKE_PORT: Final = 500
"""The UDP port of IKE before NAT detection moves it to 4500."""

HEADER_LEN: Final = 28
GENERIC_LEN: Final = 4
MAX_MESSAGE: Final = 65535

# Exchange types (section 3.1).
IKE_SA_INIT: Final = 34
IKE_AUTH: Final = 35
CREATE_CHILD_SA: Final = 36
INFORMATIONAL: Final = 37

# Header flags (section 3.1).
FLAG_INITIATOR: Final = 0x08
FLAG_VERSION: Final = 0x10
FLAG_RESPONSE: Final = 0x20

# Payload types (section 3.2).
PT_NONE: Final = 0
PT_SA: Final = 33
PT_KE: Final = 34
PT_IDI: Final = 35
PT_IDR: Final = 36
PT_CERT: Final = 37
PT_CERTREQ: Final = 38
PT_AUTH: Final = 39
PT_NONCE: Final = 40
PT_NOTIFY: Final = 41
PT_DELETE: Final = 42
PT_VENDOR: Final = 43
PT_TSI: Final = 44
PT_TSR: Final = 45
PT_SK: Final = 46
PT_CP: Final = 47
PT_EAP: Final = 48

# Protocol IDs (section 3.3.1).
PROTO_IKE: Final = 1
PROTO_AH: Final = 2
PROTO_ESP: Final = 3

# Transform types (section 3.3.2).
TRANSFORM_ENCR: Final = 1
TRANSFORM_PRF: Final = 2
TRANSFORM_INTEG: Final = 3
TRANSFORM_DH: Final = 4
TRANSFORM_ESN: Final = 5

# Encryption algorithms (IANA "Transform Type 1").
ENCR_AES_CBC: Final = 12
ENCR_AES_GCM_16: Final = 20

# Pseudorandom functions (Transform Type 2).
PRF_HMAC_SHA2_256: Final = 5
PRF_HMAC_SHA2_384: Final = 6
PRF_HMAC_SHA2_512: Final = 7

# Integrity algorithms (Transform Type 3).
INTEG_NONE: Final = 0
INTEG_HMAC_SHA2_256_128: Final = 12
INTEG_HMAC_SHA2_384_192: Final = 13
INTEG_HMAC_SHA2_512_256: Final = 14

# Key exchange (Diffie-Hellman) groups (Transform Type 4).
DH_NONE: Final = 0
DH_MODP_2048: Final = 14
DH_ECP_256: Final = 19
DH_ECP_384: Final = 20
DH_CURVE25519: Final = 31

# Extended sequence numbers (Transform Type 5).
ESN_NO: Final = 0
ESN_YES: Final = 1

# Transform attribute types (section 3.3.5).
ATTR_KEY_LENGTH: Final = 14
_ATTR_TV: Final = 0x8000

# Identification types (section 3.5).
ID_IPV4_ADDR: Final = 1
ID_FQDN: Final = 2
ID_RFC822_ADDR: Final = 3
ID_IPV6_ADDR: Final = 5
ID_DER_ASN1_DN: Final = 9
ID_DER_ASN1_GN: Final = 10
ID_KEY_ID: Final = 11

# Certificate encodings (section 3.6).
CERT_X509_SIGNATURE: Final = 4

# Authentication methods (section 3.8, RFC 7427).
AUTH_RSA: Final = 1
AUTH_PSK: Final = 2
AUTH_DSS: Final = 3
AUTH_ECDSA_256: Final = 9
AUTH_ECDSA_384: Final = 10
AUTH_ECDSA_521: Final = 11
AUTH_DIGITAL_SIGNATURE: Final = 14

# Notify message types: errors (section 3.10.1).
N_UNSUPPORTED_CRITICAL_PAYLOAD: Final = 1
N_INVALID_IKE_SPI: Final = 4
N_INVALID_MAJOR_VERSION: Final = 5
N_INVALID_SYNTAX: Final = 7
N_INVALID_MESSAGE_ID: Final = 9
N_INVALID_SPI: Final = 11
N_NO_PROPOSAL_CHOSEN: Final = 14
N_INVALID_KE_PAYLOAD: Final = 17
N_AUTHENTICATION_FAILED: Final = 24
N_SINGLE_PAIR_REQUIRED: Final = 34
N_NO_ADDITIONAL_SAS: Final = 35
N_INTERNAL_ADDRESS_FAILURE: Final = 36
N_FAILED_CP_REQUIRED: Final = 37
N_TS_UNACCEPTABLE: Final = 38
N_INVALID_SELECTORS: Final = 39
N_TEMPORARY_FAILURE: Final = 43
N_CHILD_SA_NOT_FOUND: Final = 44
# Notify message types: status.
N_INITIAL_CONTACT: Final = 16384
N_SET_WINDOW_SIZE: Final = 16385
N_ADDITIONAL_TS_POSSIBLE: Final = 16386
N_IPCOMP_SUPPORTED: Final = 16387
N_NAT_DETECTION_SOURCE_IP: Final = 16388
N_NAT_DETECTION_DESTINATION_IP: Final = 16389
N_COOKIE: Final = 16390
N_USE_TRANSPORT_MODE: Final = 16391
N_HTTP_CERT_LOOKUP_SUPPORTED: Final = 16392
N_REKEY_SA: Final = 16393
N_ESP_TFC_PADDING_NOT_SUPPORTED: Final = 16394
N_NON_FIRST_FRAGMENTS_ALSO: Final = 16395
N_MOBIKE_SUPPORTED: Final = 16396
N_IKEV2_FRAGMENTATION_SUPPORTED: Final = 16430
N_SIGNATURE_HASH_ALGORITHMS: Final = 16431

NOTIFY_ERROR_MAX: Final = 16383
"""Notify types up to this value are errors (section 3.10.1)."""

# Traffic selector types (section 3.13.1).
TS_IPV4_ADDR_RANGE: Final = 7
TS_IPV6_ADDR_RANGE: Final = 8

# Configuration payload (section 3.15).
CFG_REQUEST: Final = 1
CFG_REPLY: Final = 2
CFG_SET: Final = 3
CFG_ACK: Final = 4
CFG_INTERNAL_IP4_ADDRESS: Final = 1
CFG_INTERNAL_IP4_NETMASK: Final = 2
CFG_INTERNAL_IP4_DNS: Final = 3
CFG_INTERNAL_IP4_NBNS: Final = 4
CFG_INTERNAL_IP4_DHCP: Final = 6
CFG_APPLICATION_VERSION: Final = 7
CFG_INTERNAL_IP6_ADDRESS: Final = 8
CFG_INTERNAL_IP6_DNS: Final = 10
CFG_INTERNAL_IP4_SUBNET: Final = 13
CFG_SUPPORTED_ATTRIBUTES: Final = 14

_HEADER = struct.Struct("!8s8sBBBBII")
_GENERIC = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_PROPOSAL = struct.Struct("!BxHBBBB")
_TRANSFORM = struct.Struct("!BxHBxH")
_ATTR = struct.Struct("!HH")
_KE = struct.Struct("!Hxx")
_NOTIFY = struct.Struct("!BBH")
_DELETE = struct.Struct("!BBH")
_TS_FIXED = struct.Struct("!BBHHH")
_CP_HEAD = struct.Struct("!Bxxx")
_ID_HEAD = struct.Struct("!Bxxx")
_AUTH_HEAD = struct.Struct("!Bxxx")

NONCE_MIN: Final = 16
NONCE_MAX: Final = 256


class UnsupportedCriticalPayload(WireError):
    """A payload of an unknown type had its critical bit set (section 2.5).

    The engine answers a request carrying one with UNSUPPORTED_CRITICAL_PAYLOAD
    whose data is :attr:`payload_type`.
    """

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unknown IKE payload type {payload_type} is marked critical")
        self.payload_type = payload_type


class UnsupportedVersion(WireError):
    """The IKE header names a major version other than 2 (section 2.5)."""

    def __init__(self, major: int) -> None:
        super().__init__(f"IKE major version {major} is not 2")
        self.major = major


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise WireError(what)


# ---------------------------------------------------------------------------
# Security Association payload (section 3.3)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformAttribute:
    """One transform attribute: ``value`` is an int for TV format, bytes for TLV."""

    type: int
    value: int | bytes

    def encode(self) -> bytes:
        """The attribute's wire bytes."""
        if isinstance(self.value, int):
            _need(0 <= self.type < _ATTR_TV, "a transform attribute type is 15 bits")
            _need(0 <= self.value <= 0xFFFF, "a TV transform attribute value is 16 bits")
            return _ATTR.pack(self.type | _ATTR_TV, self.value)
        _need(0 <= self.type < _ATTR_TV, "a transform attribute type is 15 bits")
        _need(len(self.value) <= 0xFFFF, "a TLV transform attribute holds at most 65535 bytes")
        return _ATTR.pack(self.type, len(self.value)) + self.value


@dataclass(frozen=True)
class Transform:
    """One transform (section 3.3.2): a type, an ID and its attributes."""

    type: int
    id: int
    attributes: tuple[TransformAttribute, ...] = ()

    @classmethod
    def make(cls, type: int, id: int, key_length: int | None = None) -> Transform:
        """A transform with an optional Key Length attribute (in bits)."""
        if key_length is None:
            return cls(type, id)
        return cls(type, id, (TransformAttribute(ATTR_KEY_LENGTH, key_length),))

    @property
    def key_length(self) -> int | None:
        """The Key Length attribute in bits, or ``None`` when absent."""
        for attr in self.attributes:
            if attr.type == ATTR_KEY_LENGTH and isinstance(attr.value, int):
                return attr.value
        return None

    @property
    def has_unknown_attributes(self) -> bool:
        """True if an attribute other than a TV Key Length is present (section 3.3.6)."""
        return any(
            a.type != ATTR_KEY_LENGTH or not isinstance(a.value, int) for a in self.attributes
        )

    def encode(self, last: bool) -> bytes:
        """The transform substructure; ``last`` sets the "Last Substruc" field to 0."""
        _need(0 <= self.type <= 255, "a transform type is one byte")
        _need(0 <= self.id <= 0xFFFF, "a transform ID is two bytes")
        attrs = b"".join(a.encode() for a in self.attributes)
        length = 8 + len(attrs)
        _need(length <= 0xFFFF, "a transform is at most 65535 bytes")
        return _TRANSFORM.pack(0 if last else 3, length, self.type, self.id) + attrs


@dataclass(frozen=True)
class Proposal:
    """One proposal (section 3.3.1): number, protocol, SPI and transforms."""

    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def encode(self, last: bool) -> bytes:
        """The proposal substructure."""
        _need(1 <= self.number <= 255, "a proposal number is 1 to 255")
        # Unknown protocols are carried (and never selected by the engine).
        _need(0 <= self.protocol <= 255, "a proposal protocol is one byte")
        _need(len(self.spi) <= 255, "a proposal SPI is at most 255 bytes")
        _need(1 <= len(self.transforms) <= 255, "a proposal holds 1 to 255 transforms")
        body = b"".join(
            t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms)
        )
        length = 8 + len(self.spi) + len(body)
        _need(length <= 0xFFFF, "a proposal is at most 65535 bytes")
        return (
            _PROPOSAL.pack(
                0 if last else 2,
                length,
                self.number,
                self.protocol,
                len(self.spi),
                len(self.transforms),
            )
            + self.spi
            + body
        )

    def of_type(self, transform_type: int) -> tuple[Transform, ...]:
        """The transforms of one type, in the order sent."""
        return tuple(t for t in self.transforms if t.type == transform_type)


def _decode_attributes(data: bytes) -> tuple[TransformAttribute, ...]:
    attrs: list[TransformAttribute] = []
    pos = 0
    while pos < len(data):
        _need(len(data) - pos >= 4, "truncated transform attribute")
        atype, value = _ATTR.unpack_from(data, pos)
        pos += 4
        if atype & _ATTR_TV:
            attrs.append(TransformAttribute(atype & ~_ATTR_TV, value))
        else:
            _need(len(data) - pos >= value, "transform attribute longer than its transform")
            attrs.append(TransformAttribute(atype, data[pos : pos + value]))
            pos += value
    return tuple(attrs)


def _decode_transforms(data: bytes, count: int) -> tuple[Transform, ...]:
    out: list[Transform] = []
    pos = 0
    for i in range(count):
        _need(len(data) - pos >= 8, "truncated transform")
        more, length, ttype, tid = _TRANSFORM.unpack_from(data, pos)
        _need(length >= 8 and pos + length <= len(data), "bad transform length")
        last = i == count - 1
        _need(more == (0 if last else 3), "transform 'last substruc' does not match the count")
        out.append(Transform(ttype, tid, _decode_attributes(data[pos + 8 : pos + length])))
        pos += length
    _need(pos == len(data), "bytes left after the last transform")
    return tuple(out)


def _decode_proposals(data: bytes) -> tuple[Proposal, ...]:
    out: list[Proposal] = []
    pos = 0
    while True:
        _need(len(data) - pos >= 8, "truncated proposal")
        more, length, number, proto, spi_size, count = _PROPOSAL.unpack_from(data, pos)
        _need(length >= 8 + spi_size and pos + length <= len(data), "bad proposal length")
        _need(more in (0, 2), "proposal 'last substruc' is neither 0 nor 2")
        _need(count >= 1, "a proposal holds at least one transform")
        _need(number >= 1, "proposal numbers start at 1")
        body = data[pos + 8 : pos + length]
        spi = body[:spi_size]
        out.append(Proposal(number, proto, spi, _decode_transforms(body[spi_size:], count)))
        pos += length
        if more == 0:
            break
    _need(pos == len(data), "bytes left after the last proposal")
    # A request numbers its proposals 1, 2, ...; a response carries the one
    # chosen, with its number (section 3.3.1).
    numbers = [p.number for p in out]
    for a, b in zip(numbers, numbers[1:], strict=False):
        _need(b in (a, a + 1), "proposal numbers must stay or grow by one")
    return tuple(out)


# ---------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------


class Payload:
    """Base of every payload value; :attr:`TYPE` is its payload type."""

    TYPE: ClassVar[int] = 0

    def body(self) -> bytes:
        """The payload's bytes after the generic payload header."""
        raise NotImplementedError


@dataclass(frozen=True)
class SA(Payload):
    """Security Association payload: one or more proposals."""

    TYPE: ClassVar[int] = PT_SA
    proposals: tuple[Proposal, ...]

    def body(self) -> bytes:
        _need(1 <= len(self.proposals) <= 255, "an SA payload holds 1 to 255 proposals")
        return b"".join(
            p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals)
        )

    @classmethod
    def decode(cls, data: bytes) -> SA:
        """Decode the payload body."""
        return cls(_decode_proposals(data))


@dataclass(frozen=True)
class KE(Payload):
    """Key Exchange payload: DH group and public value."""

    TYPE: ClassVar[int] = PT_KE
    group: int
    data: bytes

    def body(self) -> bytes:
        _need(0 <= self.group <= 0xFFFF, "a DH group number is two bytes")
        _need(len(self.data) >= 1, "a KE payload carries a public value")
        return _KE.pack(self.group) + self.data

    @classmethod
    def decode(cls, data: bytes) -> KE:
        """Decode the payload body."""
        _need(len(data) >= 5, "a KE payload holds a group and a public value")
        (group,) = _U16.unpack_from(data)
        return cls(group, data[4:])


@dataclass(frozen=True)
class Nonce(Payload):
    """Nonce payload (Ni or Nr): 16 to 256 bytes (section 3.9)."""

    TYPE: ClassVar[int] = PT_NONCE
    data: bytes

    def body(self) -> bytes:
        _need(NONCE_MIN <= len(self.data) <= NONCE_MAX, "a nonce holds 16 to 256 bytes")
        return self.data

    @classmethod
    def decode(cls, data: bytes) -> Nonce:
        """Decode the payload body."""
        _need(NONCE_MIN <= len(data) <= NONCE_MAX, "a nonce holds 16 to 256 bytes")
        return cls(data)


@dataclass(frozen=True)
class Notify(Payload):
    """Notify payload: protocol, SPI, message type and data (section 3.10)."""

    TYPE: ClassVar[int] = PT_NOTIFY
    type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    def body(self) -> bytes:
        _need(0 <= self.protocol <= 255, "a notify protocol is one byte")
        _need(len(self.spi) <= 255, "a notify SPI is at most 255 bytes")
        _need(0 <= self.type <= 0xFFFF, "a notify type is two bytes")
        return _NOTIFY.pack(self.protocol, len(self.spi), self.type) + self.spi + self.data

    @classmethod
    def decode(cls, data: bytes) -> Notify:
        """Decode the payload body."""
        _need(len(data) >= 4, "a notify payload holds at least 4 bytes")
        proto, spi_size, ntype = _NOTIFY.unpack_from(data)
        _need(len(data) >= 4 + spi_size, "notify SPI longer than the payload")
        return cls(ntype, data[4 + spi_size :], proto, data[4 : 4 + spi_size])

    @property
    def is_error(self) -> bool:
        """True for error types (1-16383)."""
        return self.type <= NOTIFY_ERROR_MAX


@dataclass(frozen=True)
class Identity:
    """An identity: ID type and its data (section 3.5)."""

    id_type: int
    data: bytes

    @classmethod
    def fqdn(cls, name: str) -> Identity:
        """An ID_FQDN identity."""
        return cls(ID_FQDN, name.encode("ascii"))

    @classmethod
    def rfc822(cls, address: str) -> Identity:
        """An ID_RFC822_ADDR identity (a user@domain string)."""
        return cls(ID_RFC822_ADDR, address.encode("ascii"))

    @classmethod
    def ipv4(cls, address: IPv4Address | str) -> Identity:
        """An ID_IPV4_ADDR identity."""
        return cls(ID_IPV4_ADDR, IPv4Address(address).packed)

    @classmethod
    def der_dn(cls, der: bytes) -> Identity:
        """An ID_DER_ASN1_DN identity (the DER of an X.501 Name)."""
        return cls(ID_DER_ASN1_DN, der)

    @classmethod
    def parse(cls, text: str) -> Identity:
        """From a string as in a configuration file: an IPv4 address, user@domain or a name."""
        try:
            return cls.ipv4(IPv4Address(text))
        except ValueError:
            pass
        if "@" in text:
            return cls.rfc822(text)
        return cls.fqdn(text)

    def check(self) -> None:
        """Raise :class:`WireError` if the data does not suit the type."""
        if self.id_type == ID_IPV4_ADDR:
            _need(len(self.data) == 4, "an ID_IPV4_ADDR holds 4 bytes")
        elif self.id_type == ID_IPV6_ADDR:
            _need(len(self.data) == 16, "an ID_IPV6_ADDR holds 16 bytes")
        elif self.id_type in (ID_FQDN, ID_RFC822_ADDR):
            _need(len(self.data) >= 1, "an ID_FQDN or ID_RFC822_ADDR is not empty")
            _need(self.data.isascii(), "an ID_FQDN or ID_RFC822_ADDR is ASCII")
            _need(b"\x00" not in self.data, "an ID_FQDN or ID_RFC822_ADDR holds no NUL")
        elif self.id_type == ID_DER_ASN1_DN:
            _need(len(self.data) >= 2 and self.data[0] == 0x30, "an ID_DER_ASN1_DN is a SEQUENCE")
        else:
            _need(0 <= self.id_type <= 255, "an ID type is one byte")

    def __str__(self) -> str:
        if self.id_type == ID_IPV4_ADDR and len(self.data) == 4:
            return str(IPv4Address(self.data))
        if self.id_type == ID_IPV6_ADDR and len(self.data) == 16:
            return str(IPv6Address(self.data))
        if self.id_type in (ID_FQDN, ID_RFC822_ADDR):
            return self.data.decode("ascii", "replace")
        return f"id{self.id_type}:{self.data.hex()}"


@dataclass(frozen=True)
class _ID(Payload):
    identity: Identity

    def body(self) -> bytes:
        self.identity.check()
        return _ID_HEAD.pack(self.identity.id_type) + self.identity.data

    @classmethod
    def _decode_identity(cls, data: bytes) -> Identity:
        _need(len(data) >= 5, "an identification payload holds a type and data")
        ident = Identity(data[0], data[4:])
        ident.check()
        return ident


@dataclass(frozen=True)
class IDi(_ID):
    """Identification - Initiator payload."""

    TYPE: ClassVar[int] = PT_IDI

    @classmethod
    def decode(cls, data: bytes) -> IDi:
        """Decode the payload body."""
        return cls(cls._decode_identity(data))


@dataclass(frozen=True)
class IDr(_ID):
    """Identification - Responder payload."""

    TYPE: ClassVar[int] = PT_IDR

    @classmethod
    def decode(cls, data: bytes) -> IDr:
        """Decode the payload body."""
        return cls(cls._decode_identity(data))


@dataclass(frozen=True)
class Cert(Payload):
    """Certificate payload: encoding and data (section 3.6)."""

    TYPE: ClassVar[int] = PT_CERT
    encoding: int
    data: bytes

    def body(self) -> bytes:
        _need(0 <= self.encoding <= 255, "a certificate encoding is one byte")
        return bytes((self.encoding,)) + self.data

    @classmethod
    def decode(cls, data: bytes) -> Cert:
        """Decode the payload body."""
        _need(len(data) >= 2, "a CERT payload holds an encoding and data")
        return cls(data[0], data[1:])


@dataclass(frozen=True)
class CertReq(Payload):
    """Certificate Request payload: encoding and CA key hashes (section 3.7)."""

    TYPE: ClassVar[int] = PT_CERTREQ
    encoding: int
    data: bytes = b""

    def body(self) -> bytes:
        _need(0 <= self.encoding <= 255, "a certificate encoding is one byte")
        return bytes((self.encoding,)) + self.data

    @classmethod
    def decode(cls, data: bytes) -> CertReq:
        """Decode the payload body."""
        _need(len(data) >= 1, "a CERTREQ payload holds an encoding")
        return cls(data[0], data[1:])


@dataclass(frozen=True)
class Auth(Payload):
    """Authentication payload: method and data (section 3.8)."""

    TYPE: ClassVar[int] = PT_AUTH
    method: int
    data: bytes

    def body(self) -> bytes:
        _need(0 <= self.method <= 255, "an auth method is one byte")
        _need(len(self.data) >= 1, "an AUTH payload carries authentication data")
        return _AUTH_HEAD.pack(self.method) + self.data

    @classmethod
    def decode(cls, data: bytes) -> Auth:
        """Decode the payload body."""
        _need(len(data) >= 5, "an AUTH payload holds a method and data")
        return cls(data[0], data[4:])


@dataclass(frozen=True)
class Delete(Payload):
    """Delete payload: protocol and SPIs (section 3.11); IKE carries no SPI."""

    TYPE: ClassVar[int] = PT_DELETE
    protocol: int
    spis: tuple[bytes, ...] = ()

    def body(self) -> bytes:
        if self.protocol == PROTO_IKE:
            _need(not self.spis, "a Delete of the IKE SA carries no SPI")
            return _DELETE.pack(PROTO_IKE, 0, 0)
        _need(self.protocol in (PROTO_AH, PROTO_ESP), "a Delete names IKE, AH or ESP")
        _need(1 <= len(self.spis) <= 0xFFFF, "a Delete of child SAs names 1 to 65535 SPIs")
        _need(all(len(s) == 4 for s in self.spis), "an AH or ESP SPI is 4 bytes")
        return _DELETE.pack(self.protocol, 4, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode(cls, data: bytes) -> Delete:
        """Decode the payload body."""
        _need(len(data) >= 4, "a Delete payload holds at least 4 bytes")
        proto, spi_size, count = _DELETE.unpack_from(data)
        if proto == PROTO_IKE:
            _need(spi_size == 0 and count == 0 and len(data) == 4, "a Delete of IKE has no SPI")
            return cls(PROTO_IKE)
        _need(proto in (PROTO_AH, PROTO_ESP), "a Delete names IKE, AH or ESP")
        _need(spi_size == 4, "an AH or ESP SPI is 4 bytes")
        _need(count >= 1 and len(data) == 4 + 4 * count, "Delete SPI count does not match")
        return cls(proto, tuple(data[4 + 4 * i : 8 + 4 * i] for i in range(count)))


@dataclass(frozen=True)
class Vendor(Payload):
    """Vendor ID payload (section 3.12)."""

    TYPE: ClassVar[int] = PT_VENDOR
    data: bytes

    def body(self) -> bytes:
        _need(len(self.data) >= 1, "a Vendor ID is not empty")
        return self.data

    @classmethod
    def decode(cls, data: bytes) -> Vendor:
        """Decode the payload body."""
        _need(len(data) >= 1, "a Vendor ID is not empty")
        return cls(data)


@dataclass(frozen=True, order=True)
class TrafficSelector:
    """One traffic selector (section 3.13.1): protocol, port range, address range.

    ``ip_protocol`` 0 means any; ports 0-65535 mean any.  Addresses are
    :class:`IPv4Address` or :class:`IPv6Address` of one family.
    """

    start: IPv4Address | IPv6Address
    end: IPv4Address | IPv6Address
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 0xFFFF

    @classmethod
    def from_network(cls, network: IPv4Network | str, ip_protocol: int = 0) -> TrafficSelector:
        """A selector covering one IPv4 network, all ports."""
        net = IPv4Network(network)
        return cls(net.network_address, net.broadcast_address, ip_protocol)

    @property
    def ts_type(self) -> int:
        """TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE."""
        return TS_IPV4_ADDR_RANGE if isinstance(self.start, IPv4Address) else TS_IPV6_ADDR_RANGE

    def encode(self) -> bytes:
        """The selector's wire bytes."""
        _need(type(self.start) is type(self.end), "a selector's addresses share one family")
        _need(0 <= self.ip_protocol <= 255, "an IP protocol is one byte")
        _need(0 <= self.start_port <= 0xFFFF, "ports are two bytes")
        _need(0 <= self.end_port <= 0xFFFF, "ports are two bytes")
        addrs = self.start.packed + self.end.packed
        return (
            _TS_FIXED.pack(
                self.ts_type, self.ip_protocol, 8 + len(addrs), self.start_port, self.end_port
            )
            + addrs
        )

    def __str__(self) -> str:
        proto = f" proto {self.ip_protocol}" if self.ip_protocol else ""
        ports = (
            ""
            if (self.start_port, self.end_port) == (0, 0xFFFF)
            else f" ports {self.start_port}-{self.end_port}"
        )
        return f"{self.start}-{self.end}{proto}{ports}"


def _decode_selectors(data: bytes) -> tuple[TrafficSelector, ...]:
    _need(len(data) >= 4, "a TS payload holds at least its count")
    count = data[0]
    _need(count >= 1, "a TS payload holds at least one selector")
    pos = 4
    out: list[TrafficSelector] = []
    for _ in range(count):
        _need(len(data) - pos >= 8, "truncated traffic selector")
        ts_type, proto, length, sport, eport = _TS_FIXED.unpack_from(data, pos)
        if ts_type == TS_IPV4_ADDR_RANGE:
            _need(length == 16, "an IPv4 selector is 16 bytes")
            _need(pos + 16 <= len(data), "truncated IPv4 selector")
            start: IPv4Address | IPv6Address = IPv4Address(data[pos + 8 : pos + 12])
            end: IPv4Address | IPv6Address = IPv4Address(data[pos + 12 : pos + 16])
        elif ts_type == TS_IPV6_ADDR_RANGE:
            _need(length == 40, "an IPv6 selector is 40 bytes")
            _need(pos + 40 <= len(data), "truncated IPv6 selector")
            start = IPv6Address(data[pos + 8 : pos + 24])
            end = IPv6Address(data[pos + 24 : pos + 40])
        else:
            raise WireError(f"traffic selector type {ts_type} is not supported")
        out.append(TrafficSelector(start, end, proto, sport, eport))
        pos += length
    _need(pos == len(data), "bytes left after the last traffic selector")
    return tuple(out)


@dataclass(frozen=True)
class _TS(Payload):
    selectors: tuple[TrafficSelector, ...]

    def body(self) -> bytes:
        _need(1 <= len(self.selectors) <= 255, "a TS payload holds 1 to 255 selectors")
        return bytes((len(self.selectors), 0, 0, 0)) + b"".join(
            s.encode() for s in self.selectors
        )


@dataclass(frozen=True)
class TSi(_TS):
    """Traffic Selector - Initiator payload."""

    TYPE: ClassVar[int] = PT_TSI

    @classmethod
    def decode(cls, data: bytes) -> TSi:
        """Decode the payload body."""
        return cls(_decode_selectors(data))


@dataclass(frozen=True)
class TSr(_TS):
    """Traffic Selector - Responder payload."""

    TYPE: ClassVar[int] = PT_TSR

    @classmethod
    def decode(cls, data: bytes) -> TSr:
        """Decode the payload body."""
        return cls(_decode_selectors(data))


@dataclass(frozen=True)
class CPAttribute:
    """One configuration attribute (section 3.15.1): type and value (may be empty)."""

    type: int
    value: bytes = b""

    def encode(self) -> bytes:
        """The attribute's wire bytes."""
        _need(0 <= self.type < 0x8000, "a configuration attribute type is 15 bits")
        _need(len(self.value) <= 0xFFFF, "a configuration attribute is at most 65535 bytes")
        if self.type in (CFG_INTERNAL_IP4_ADDRESS, CFG_INTERNAL_IP4_NETMASK, CFG_INTERNAL_IP4_DNS):
            _need(len(self.value) in (0, 4), "an IPv4 configuration attribute holds 0 or 4 bytes")
        return _ATTR.pack(self.type, len(self.value)) + self.value

    @property
    def ipv4(self) -> IPv4Address | None:
        """The value as an IPv4 address, when it holds exactly 4 bytes."""
        return IPv4Address(self.value) if len(self.value) == 4 else None


@dataclass(frozen=True)
class CP(Payload):
    """Configuration payload: CFG type and attributes (section 3.15)."""

    TYPE: ClassVar[int] = PT_CP
    cfg_type: int
    attributes: tuple[CPAttribute, ...] = ()

    def body(self) -> bytes:
        _need(self.cfg_type in (CFG_REQUEST, CFG_REPLY, CFG_SET, CFG_ACK), "unknown CFG type")
        return _CP_HEAD.pack(self.cfg_type) + b"".join(a.encode() for a in self.attributes)

    @classmethod
    def decode(cls, data: bytes) -> CP:
        """Decode the payload body."""
        _need(len(data) >= 4, "a CP payload holds at least its type")
        cfg_type = data[0]
        _need(cfg_type in (CFG_REQUEST, CFG_REPLY, CFG_SET, CFG_ACK), "unknown CFG type")
        attrs: list[CPAttribute] = []
        pos = 4
        while pos < len(data):
            _need(len(data) - pos >= 4, "truncated configuration attribute")
            atype, length = _ATTR.unpack_from(data, pos)
            _need(not atype & 0x8000, "the reserved bit of a configuration attribute is set")
            _need(len(data) - pos - 4 >= length, "configuration attribute overruns the payload")
            attr = CPAttribute(atype, data[pos + 4 : pos + 4 + length])
            if atype in (CFG_INTERNAL_IP4_ADDRESS, CFG_INTERNAL_IP4_NETMASK, CFG_INTERNAL_IP4_DNS):
                _need(length in (0, 4), "an IPv4 configuration attribute holds 0 or 4 bytes")
            attrs.append(attr)
            pos += 4 + length
        return cls(cfg_type, tuple(attrs))

    def values(self, attr_type: int) -> tuple[bytes, ...]:
        """The values of every attribute of one type, in order."""
        return tuple(a.value for a in self.attributes if a.type == attr_type)


@dataclass(frozen=True)
class Encrypted(Payload):
    """Encrypted payload (SK): type of the first inner payload and the opaque body.

    The body is IV, ciphertext (inner payloads, padding, pad length) and
    integrity checksum or ICV; see :mod:`smobility.engines.ikecrypto`.
    """

    TYPE: ClassVar[int] = PT_SK
    next_inner: int
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def decode_with(cls, next_inner: int, data: bytes) -> Encrypted:
        """Decode the payload body (the next-payload field names the first inner one)."""
        _need(len(data) >= 1, "an Encrypted payload is not empty")
        return cls(next_inner, data)


@dataclass(frozen=True)
class UnknownPayload(Payload):
    """A payload of a type this codec does not know, with its critical bit clear."""

    type: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return self.data


AnyPayload = (
    SA | KE | Nonce | Notify | IDi | IDr | Cert | CertReq | Auth | Delete | Vendor | TSi | TSr
    | CP | Encrypted | UnknownPayload
)

_DECODERS: Final[dict[int, Callable[[bytes], AnyPayload]]] = {
    PT_SA: SA.decode,
    PT_KE: KE.decode,
    PT_IDI: IDi.decode,
    PT_IDR: IDr.decode,
    PT_CERT: Cert.decode,
    PT_CERTREQ: CertReq.decode,
    PT_AUTH: Auth.decode,
    PT_NONCE: Nonce.decode,
    PT_NOTIFY: Notify.decode,
    PT_DELETE: Delete.decode,
    PT_VENDOR: Vendor.decode,
    PT_TSI: TSi.decode,
    PT_TSR: TSr.decode,
    PT_CP: CP.decode,
}


def _type_of(payload: Payload) -> int:
    if isinstance(payload, UnknownPayload):
        return payload.type
    return payload.TYPE


def encode_chain(payloads: Sequence[Payload], *, last_next: int = PT_NONE) -> tuple[int, bytes]:
    """Encode a payload chain; return the type of the first payload and the bytes.

    The last payload's Next Payload is ``last_next`` (0 normally).  An
    Encrypted payload may only come last; its Next Payload field names its
    first inner payload instead (section 3.2).
    """
    parts: list[bytes] = []
    for i, payload in enumerate(payloads):
        last = i == len(payloads) - 1
        if isinstance(payload, Encrypted):
            _need(last, "an Encrypted payload must be the last payload")
            nxt = payload.next_inner
        else:
            nxt = last_next if last else _type_of(payloads[i + 1])
        body = payload.body()
        length = GENERIC_LEN + len(body)
        _need(length <= 0xFFFF, "a payload is at most 65535 bytes")
        flags = 0x80 if isinstance(payload, UnknownPayload) and payload.critical else 0
        parts.append(_GENERIC.pack(nxt, flags, length) + body)
    first = _type_of(payloads[0]) if payloads else PT_NONE
    return first, b"".join(parts)


def decode_chain(first: int, data: bytes, *, inner: bool = False) -> tuple[AnyPayload, ...]:
    """Decode a payload chain starting with payload type ``first``.

    ``inner`` is true for the plaintext of an Encrypted payload, which may
    not hold another Encrypted payload (section 3.14).

    @raise UnsupportedCriticalPayload: an unknown payload is marked critical.
    @raise WireError: anything else malformed.
    """
    out: list[AnyPayload] = []
    pos = 0
    ptype = first
    while ptype != PT_NONE:
        _need(len(data) - pos >= GENERIC_LEN, "truncated generic payload header")
        nxt, flags, length = _GENERIC.unpack_from(data, pos)
        _need(length >= GENERIC_LEN and pos + length <= len(data), "bad payload length")
        body = data[pos + GENERIC_LEN : pos + length]
        pos += length
        if ptype == PT_SK:
            _need(not inner, "an Encrypted payload may not hold another")
            _need(pos == len(data), "an Encrypted payload must be the last payload")
            out.append(Encrypted.decode_with(nxt, body))
            return tuple(out)
        decoder = _DECODERS.get(ptype)
        if decoder is None:
            if flags & 0x80:
                raise UnsupportedCriticalPayload(ptype)
            out.append(UnknownPayload(ptype, body, False))
        else:
            out.append(decoder(body))
        ptype = nxt
    _need(pos == len(data), "bytes left after the last payload")
    return tuple(out)


# ---------------------------------------------------------------------------
# Messages (section 3.1)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One IKE message: the header fields and the payloads in order.

    ``spi_i`` and ``spi_r`` are the 8-byte IKE SPIs.  When the message is
    encrypted, the last payload is :class:`Encrypted`.
    """

    spi_i: bytes
    spi_r: bytes
    exchange: int
    flags: int
    message_id: int
    payloads: tuple[Payload, ...] = field(default=())
    major: int = 2
    minor: int = 0

    @property
    def is_response(self) -> bool:
        """The Response flag."""
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def from_initiator(self) -> bool:
        """The Initiator flag: sent by the original initiator of the IKE SA."""
        return bool(self.flags & FLAG_INITIATOR)

    def find(self, kind: type[P]) -> P | None:
        """The first payload of class ``kind``, or ``None``."""
        for p in self.payloads:
            if isinstance(p, kind):
                return p
        return None

    def notifies(self) -> tuple[Notify, ...]:
        """Every Notify payload, in order."""
        return tuple(p for p in self.payloads if isinstance(p, Notify))

    def encode(self) -> bytes:
        """The message's wire bytes (the Length field computed)."""
        return encode_message(self)


P = TypeVar("P", bound=Payload)


def find(payloads: Iterable[Payload], kind: type[P]) -> P | None:
    """The first payload of class ``kind`` in ``payloads``, or ``None``."""
    for p in payloads:
        if isinstance(p, kind):
            return p
    return None


def find_all(payloads: Iterable[Payload], kind: type[P]) -> tuple[P, ...]:
    """Every payload of class ``kind`` in ``payloads``."""
    return tuple(p for p in payloads if isinstance(p, kind))


def notify_of(payloads: Iterable[Payload], ntype: int) -> Notify | None:
    """The first Notify of type ``ntype``, or ``None``."""
    for p in payloads:
        if isinstance(p, Notify) and p.type == ntype:
            return p
    return None


def encode_message(msg: Message) -> bytes:
    """Encode a message; the header's Length covers the whole message."""
    _need(len(msg.spi_i) == 8 and len(msg.spi_r) == 8, "IKE SPIs are 8 bytes")
    _need(0 <= msg.exchange <= 255, "an exchange type is one byte")
    _need(0 <= msg.flags <= 255, "the flags are one byte")
    _need(0 <= msg.message_id <= 0xFFFFFFFF, "a message ID is 32 bits")
    _need(0 <= msg.major <= 15 and 0 <= msg.minor <= 15, "versions are 4 bits")
    first, body = encode_chain(msg.payloads)
    length = HEADER_LEN + len(body)
    _need(length <= MAX_MESSAGE, "an IKE message is at most 65535 bytes here")
    return (
        _HEADER.pack(
            msg.spi_i,
            msg.spi_r,
            first,
            (msg.major << 4) | msg.minor,
            msg.exchange,
            msg.flags,
            msg.message_id,
            length,
        )
        + body
    )


@dataclass(frozen=True)
class Header:
    """The fixed IKE header alone, for routing a message before decoding it all."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    major: int
    minor: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def is_response(self) -> bool:
        """The Response flag."""
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def from_initiator(self) -> bool:
        """The Initiator flag."""
        return bool(self.flags & FLAG_INITIATOR)


def decode_header(data: bytes) -> Header:
    """Decode and check the IKE header; the Length must equal ``len(data)``.

    @raise UnsupportedVersion: the major version is not 2.
    @raise WireError: too short, or a length that does not match.
    """
    _need(len(data) >= HEADER_LEN, "an IKE message holds at least its 28-byte header")
    spi_i, spi_r, nxt, version, exchange, flags, mid, length = _HEADER.unpack_from(data)
    major, minor = version >> 4, version & 0x0F
    if major != 2:
        raise UnsupportedVersion(major)
    _need(length == len(data), "the IKE header length does not match the datagram")
    _need(spi_i != bytes(8), "the initiator's SPI is never zero")
    return Header(spi_i, spi_r, nxt, major, minor, exchange, flags, mid, length)


def decode_message(data: bytes) -> Message:
    """Decode a whole message; an Encrypted payload stays opaque.

    @raise UnsupportedVersion: the major version is not 2.
    @raise UnsupportedCriticalPayload: an unknown payload is marked critical.
    @raise WireError: anything else malformed.
    """
    h = decode_header(data)
    payloads = decode_chain(h.next_payload, data[HEADER_LEN:])
    return Message(
        h.spi_i, h.spi_r, h.exchange, h.flags, h.message_id, payloads, h.major, h.minor
    )


def encrypted_prefix(msg: Message, body_length: int) -> bytes:
    """The bytes of ``msg`` up to and including the Encrypted payload's generic header.

    ``msg`` ends with an :class:`Encrypted` payload whose body is not known
    yet; ``body_length`` is the length it will have.  These bytes are the
    associated data of an AEAD cipher (RFC 5282 section 5.1) and the first
    part of what the integrity checksum of section 3.14 covers.
    """
    _need(bool(msg.payloads) and isinstance(msg.payloads[-1], Encrypted), "no Encrypted payload")
    last = msg.payloads[-1]
    assert isinstance(last, Encrypted)
    placeholder = Message(
        msg.spi_i,
        msg.spi_r,
        msg.exchange,
        msg.flags,
        msg.message_id,
        (*msg.payloads[:-1], Encrypted(last.next_inner, bytes(body_length))),
        msg.major,
        msg.minor,
    )
    return encode_message(placeholder)[:-body_length]


# ---------------------------------------------------------------------------
# Proposal helpers
# ---------------------------------------------------------------------------


def ike_spi_hex(spi: bytes) -> str:
    """An IKE SPI as 16 hex digits (as strongSwan logs it)."""
    return spi.hex()


def pack_u16(value: int) -> bytes:
    """Two bytes, network order (the data of INVALID_KE_PAYLOAD and others)."""
    _need(0 <= value <= 0xFFFF, "a 16-bit value")
    return _U16.pack(value)


def unpack_u16(data: bytes) -> int:
    """The 16-bit value of a two-byte notify data field.

    @raise WireError: not exactly two bytes.
    """
    _need(len(data) == 2, "a 16-bit notify value holds 2 bytes")
    value: int = _U16.unpack(data)[0]
    return value
