# -*- test-case-name: tests.test_wire_mip -*-
"""Mobile IPv4 registration messages (RFC 5944) and their extensions.

Pure codecs: bytes in, values out, and back.  No I/O, no clock.

Covered:

- Registration Request (type 1) and Registration Reply (type 3), RFC 5944
  sections 3.3 and 3.4;
- the Mobile-Home (32), Mobile-Foreign (33) and Foreign-Home (34)
  authentication extensions (RFC 5944 section 3.5), with the authenticator
  computed over exactly the bytes section 3.5.1 names: the fixed part, every
  earlier extension whole, and this extension's Type, Length and SPI;
- the Mobile Node NAI extension (131, RFC 2794);
- the UDP Tunnel Request (144) and Reply (44) extensions (RFC 3519 3.1/3.2);
- the Revocation Support extension (137, RFC 3543).

Any other extension decodes as :class:`UnknownExtension`, keeping its bytes.
Whether an unknown one may be skipped follows RFC 5944 section 1.9: types
0-127 may not be skipped (the receiver must refuse the whole message), types
128-255 are skipped.  The decoder reports them; the engines apply the rule.

Every decoding failure raises :class:`~smobility.wire.errors.WireError`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final

from .errors import WireError

MIP_PORT: Final = 434

TYPE_REQUEST: Final = 1
TYPE_REPLY: Final = 3

# Registration Request flags (RFC 5944 section 3.3).
FLAG_S: Final = 0x80  # simultaneous bindings
FLAG_B: Final = 0x40  # broadcast datagrams
FLAG_D: Final = 0x20  # decapsulation by mobile node (co-located care-of address)
FLAG_M: Final = 0x10  # minimal encapsulation
FLAG_G: Final = 0x08  # GRE encapsulation
FLAG_R: Final = 0x04  # reserved, sent as zero
FLAG_T: Final = 0x02  # reverse tunnelling requested (RFC 3024)
FLAG_X: Final = 0x01  # reserved, sent as zero

# Extension types.
EXT_MN_HA: Final = 32
EXT_MN_FA: Final = 33
EXT_FA_HA: Final = 34
EXT_UDP_TUNNEL_REPLY: Final = 44
EXT_NAI: Final = 131
EXT_REVOCATION_SUPPORT: Final = 137
EXT_UDP_TUNNEL_REQUEST: Final = 144

AUTH_EXTENSION_TYPES: Final = frozenset({EXT_MN_HA, EXT_MN_FA, EXT_FA_HA})

# Registration Reply codes (RFC 5944 section 3.4, RFC 3519, RFC 3024).
CODE_ACCEPTED: Final = 0
CODE_ACCEPTED_NO_SIMULTANEOUS: Final = 1
# Denied by the foreign agent (64-88 and others in that range).
CODE_FA_UNSPECIFIED: Final = 64
CODE_FA_PROHIBITED: Final = 65
CODE_FA_RESOURCES: Final = 66
CODE_FA_MN_AUTH_FAILED: Final = 67
CODE_FA_HA_AUTH_FAILED: Final = 68
CODE_FA_LIFETIME_TOO_LONG: Final = 69
CODE_FA_POORLY_FORMED_REQUEST: Final = 70
CODE_FA_POORLY_FORMED_REPLY: Final = 71
CODE_FA_ENCAPSULATION_UNAVAILABLE: Final = 72
CODE_FA_VJ_UNAVAILABLE: Final = 73
# RFC 3024 (reverse tunnelling) foreign agent codes.
CODE_FA_REVERSE_TUNNEL_UNAVAILABLE: Final = 74
CODE_FA_REVERSE_TUNNEL_MANDATORY: Final = 75
CODE_FA_MN_TOO_DISTANT: Final = 76
CODE_FA_DELIVERY_STYLE_UNSUPPORTED: Final = 79
CODE_FA_INVALID_COA: Final = 77
CODE_FA_TIMEOUT: Final = 78
CODE_FA_HOME_NET_UNREACHABLE: Final = 80
CODE_FA_HA_HOST_UNREACHABLE: Final = 81
CODE_FA_HA_PORT_UNREACHABLE: Final = 82
CODE_FA_HA_UNREACHABLE: Final = 88
# Denied by the home agent.
CODE_HA_UNSPECIFIED: Final = 128
CODE_HA_PROHIBITED: Final = 129
CODE_HA_RESOURCES: Final = 130
CODE_HA_MN_AUTH_FAILED: Final = 131
CODE_HA_FA_AUTH_FAILED: Final = 132
CODE_HA_ID_MISMATCH: Final = 133
CODE_HA_POORLY_FORMED: Final = 134
CODE_HA_TOO_MANY_BINDINGS: Final = 135
CODE_HA_UNKNOWN_HA: Final = 136

REPLY_CODE_NAMES: Final[dict[int, str]] = {
    0: "registration accepted",
    1: "registration accepted, simultaneous bindings unsupported",
    64: "reason unspecified (foreign agent)",
    65: "administratively prohibited (foreign agent)",
    66: "insufficient resources (foreign agent)",
    67: "mobile node failed authentication (foreign agent)",
    68: "home agent failed authentication (foreign agent)",
    69: "requested lifetime too long",
    70: "poorly formed request (foreign agent)",
    71: "poorly formed reply",
    72: "requested encapsulation unavailable",
    73: "reserved and unavailable",
    74: "requested reverse tunnel unavailable",
    75: "reverse tunnel is mandatory and 'T' bit not set",
    76: "mobile node too distant",
    77: "invalid care-of address",
    78: "registration timeout",
    79: "delivery style not supported",
    80: "home network unreachable",
    81: "home agent host unreachable",
    82: "home agent port unreachable",
    88: "home agent unreachable",
    128: "reason unspecified",
    129: "administratively prohibited",
    130: "insufficient resources",
    131: "mobile node failed authentication",
    132: "foreign agent failed authentication",
    133: "registration identification mismatch",
    134: "poorly formed request",
    135: "too many simultaneous mobility bindings",
    136: "unknown home agent address",
}

#: Codes a foreign agent uses to deny a registration (RFC 5944 section 3.4).
FOREIGN_AGENT_CODES: Final = range(64, 128)

# Authentication algorithms by name: (digest constructor, authenticator length).
ALGORITHMS: Final[dict[str, tuple[str, int]]] = {
    "hmac-md5": ("md5", 16),
    "hmac-sha256": ("sha256", 32),
}

_REQUEST_FIXED = struct.Struct("!BBH4s4s4sQ")  # 24 bytes
_REPLY_FIXED = struct.Struct("!BBH4s4sQ")  # 20 bytes
_SPI = struct.Struct("!I")
_UTRQ = struct.Struct("!BBBBH")  # sub-type, reserved1, flags, encapsulation, reserved3
_UTRP = struct.Struct("!BBHH")  # sub-type, code, flags, keepalive
_REVOCATION = struct.Struct("!HI")  # flags (I bit first), timestamp: RFC 3543 section 3.2

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def _addr(value: IPv4Address | str) -> IPv4Address:
    try:
        return value if isinstance(value, IPv4Address) else IPv4Address(value)
    except ValueError as e:
        raise WireError(f"not an IPv4 address: {value!r}") from e


@dataclass(frozen=True)
class AuthExtension:
    """An MN-HA (32), MN-FA (33) or FA-HA (34) authentication extension."""

    type: int
    spi: int
    authenticator: bytes

    def __post_init__(self) -> None:
        if self.type not in AUTH_EXTENSION_TYPES:
            raise WireError(f"extension type {self.type} is not an authentication extension")
        if not 0 <= self.spi <= _U32:
            raise WireError("an SPI is an unsigned 32-bit integer")
        if not 1 <= len(self.authenticator) <= 251:
            raise WireError("an authenticator holds 1 to 251 bytes")


@dataclass(frozen=True)
class NAIExtension:
    """The Mobile Node NAI extension (RFC 2794), e.g. ``b"laptop@example.org"``."""

    nai: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.nai) <= 255:
            raise WireError("an NAI holds 1 to 255 bytes")


@dataclass(frozen=True)
class UDPTunnelRequest:
    """RFC 3519 UDP Tunnel Request extension (144).

    ``force`` is the F flag (tunnel in UDP even without NAT), ``fa_required``
    the R flag, ``encapsulation`` the IP protocol number of the inner header
    (4: IP in IP, the default; 47: GRE; 55: minimal encapsulation).
    """

    encapsulation: int = 4
    force: bool = False
    fa_required: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.encapsulation <= 255:
            raise WireError("the encapsulation is one byte")


@dataclass(frozen=True)
class UDPTunnelReply:
    """RFC 3519 UDP Tunnel Reply extension (44).

    ``code`` 0 means the home agent will tunnel in UDP, 1 that it declines.
    ``keepalive`` is the keepalive interval in seconds the mobile node should
    use (0: none asked for).
    """

    code: int = 0
    force: bool = False
    keepalive: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 255:
            raise WireError("the UDP tunnel reply code is one byte")
        if not 0 <= self.keepalive <= _U16:
            raise WireError("the keepalive interval is an unsigned 16-bit integer")


@dataclass(frozen=True)
class RevocationSupport:
    """RFC 3543 Revocation Support extension (137)."""

    timestamp: int
    inform: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.timestamp <= _U32:
            raise WireError("the revocation timestamp is an unsigned 32-bit integer")


@dataclass(frozen=True)
class UnknownExtension:
    """An extension this codec does not interpret; its bytes are kept."""

    type: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 255:
            raise WireError("an extension type is one byte")
        if len(self.data) > 255:
            raise WireError("extension data holds at most 255 bytes")

    @property
    def skippable(self) -> bool:
        """RFC 5944 section 1.9: only types 128-255 may be skipped."""
        return self.type >= 128


Extension = (
    AuthExtension
    | NAIExtension
    | UDPTunnelRequest
    | UDPTunnelReply
    | RevocationSupport
    | UnknownExtension
)


@dataclass(frozen=True)
class RegistrationRequest:
    """A Registration Request (RFC 5944 section 3.3).

    ``raw`` and ``offsets`` are set by :func:`decode` (the bytes received and
    where each extension starts) so that authenticators can be checked over
    exactly the bytes that were sent; they take no part in comparisons.
    """

    flags: int
    lifetime: int
    home_address: IPv4Address
    home_agent: IPv4Address
    care_of_address: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)
    offsets: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.flags <= 0xFF:
            raise WireError("the flags are one byte")
        if not 0 <= self.lifetime <= _U16:
            raise WireError("the lifetime is an unsigned 16-bit integer")
        if not 0 <= self.identification <= _U64:
            raise WireError("the identification is an unsigned 64-bit integer")
        for name in ("home_address", "home_agent", "care_of_address"):
            object.__setattr__(self, name, _addr(getattr(self, name)))

    def flag(self, bit: int) -> bool:
        """Whether flag ``bit`` (one of the ``FLAG_*`` constants) is set."""
        return bool(self.flags & bit)


@dataclass(frozen=True)
class RegistrationReply:
    """A Registration Reply (RFC 5944 section 3.4)."""

    code: int
    lifetime: int
    home_address: IPv4Address
    home_agent: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)
    offsets: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFF:
            raise WireError("the reply code is one byte")
        if not 0 <= self.lifetime <= _U16:
            raise WireError("the lifetime is an unsigned 16-bit integer")
        if not 0 <= self.identification <= _U64:
            raise WireError("the identification is an unsigned 64-bit integer")
        for name in ("home_address", "home_agent"):
            object.__setattr__(self, name, _addr(getattr(self, name)))

    @property
    def accepted(self) -> bool:
        """Codes 0 and 1 accept the registration."""
        return self.code in (CODE_ACCEPTED, CODE_ACCEPTED_NO_SIMULTANEOUS)


Message = RegistrationRequest | RegistrationReply


# ---------------------------------------------------------------------------
# Encoding


def encode_extension(ext: Extension) -> bytes:
    """The wire bytes of one extension (Type, Length, data)."""
    if isinstance(ext, AuthExtension):
        body = _SPI.pack(ext.spi) + ext.authenticator
        return bytes((ext.type, len(body))) + body
    if isinstance(ext, NAIExtension):
        return bytes((EXT_NAI, len(ext.nai))) + ext.nai
    if isinstance(ext, UDPTunnelRequest):
        flags = (0x80 if ext.force else 0) | (0x40 if ext.fa_required else 0)
        body = _UTRQ.pack(0, 0, flags, ext.encapsulation, 0)
        return bytes((EXT_UDP_TUNNEL_REQUEST, len(body))) + body
    if isinstance(ext, UDPTunnelReply):
        body = _UTRP.pack(0, ext.code, 0x8000 if ext.force else 0, ext.keepalive)
        return bytes((EXT_UDP_TUNNEL_REPLY, len(body))) + body
    if isinstance(ext, RevocationSupport):
        body = _REVOCATION.pack(0x8000 if ext.inform else 0, ext.timestamp)
        return bytes((EXT_REVOCATION_SUPPORT, len(body))) + body
    if isinstance(ext, UnknownExtension):
        return bytes((ext.type, len(ext.data))) + ext.data
    raise WireError(f"not an extension: {type(ext).__name__}")


def _fixed(msg: Message) -> bytes:
    if isinstance(msg, RegistrationRequest):
        return _REQUEST_FIXED.pack(
            TYPE_REQUEST,
            msg.flags,
            msg.lifetime,
            msg.home_address.packed,
            msg.home_agent.packed,
            msg.care_of_address.packed,
            msg.identification,
        )
    return _REPLY_FIXED.pack(
        TYPE_REPLY,
        msg.code,
        msg.lifetime,
        msg.home_address.packed,
        msg.home_agent.packed,
        msg.identification,
    )


def encode(msg: Message) -> bytes:
    """The wire bytes of a message, its extensions in order."""
    return _fixed(msg) + b"".join(encode_extension(e) for e in msg.extensions)


def compute_authenticator(key: bytes, algorithm: str, covered: bytes) -> bytes:
    """The authenticator over ``covered`` with ``key`` (RFC 5944 section 3.5.1).

    ``hmac-md5`` is HMAC-MD5 (RFC 2104), the algorithm RFC 5944 requires;
    ``hmac-sha256`` gives a 32-byte authenticator for SPIs configured with it.
    """
    try:
        digest, _ = ALGORITHMS[algorithm]
    except KeyError:
        raise WireError(f"unknown authentication algorithm {algorithm!r}") from None
    return hmac.new(key, covered, getattr(hashlib, digest)).digest()


def append_authenticator(
    data: bytes, ext_type: int, spi: int, key: bytes, algorithm: str = "hmac-md5"
) -> bytes:
    """Append an authentication extension protecting all of ``data``.

    ``data`` is an encoded message (with any earlier extensions); the result
    is ``data`` followed by the extension whose authenticator covers ``data``
    plus its own Type, Length and SPI.
    """
    if ext_type not in AUTH_EXTENSION_TYPES:
        raise WireError(f"extension type {ext_type} is not an authentication extension")
    if not 0 <= spi <= _U32:
        raise WireError("an SPI is an unsigned 32-bit integer")
    try:
        _, size = ALGORITHMS[algorithm]
    except KeyError:
        raise WireError(f"unknown authentication algorithm {algorithm!r}") from None
    head = bytes((ext_type, 4 + size)) + _SPI.pack(spi)
    return data + head + compute_authenticator(key, algorithm, data + head)


def authenticated_bytes(msg: Message, index: int) -> bytes:
    """The bytes that the authentication extension at ``index`` protects.

    Works on decoded messages (which carry ``raw`` and ``offsets``): the fixed
    part, every extension before ``index`` whole, and the Type, Length and SPI
    of extension ``index``.
    """
    if not msg.raw or len(msg.offsets) != len(msg.extensions):
        raise WireError("authenticated bytes need a decoded message")
    if not isinstance(msg.extensions[index], AuthExtension):
        raise WireError(f"extension {index} is not an authentication extension")
    return msg.raw[: msg.offsets[index] + 6]


def verify_authenticator(msg: Message, index: int, key: bytes, algorithm: str) -> bool:
    """Check the authenticator of extension ``index`` in constant time."""
    ext = msg.extensions[index]
    if not isinstance(ext, AuthExtension):
        return False
    expected = compute_authenticator(key, algorithm, authenticated_bytes(msg, index))
    return hmac.compare_digest(expected, ext.authenticator)


# ---------------------------------------------------------------------------
# Decoding


def _decode_extension(ext_type: int, body: bytes) -> Extension:
    if ext_type in AUTH_EXTENSION_TYPES:
        if len(body) < 5:
            raise WireError(f"authentication extension {ext_type} shorter than SPI + 1 byte")
        return AuthExtension(ext_type, _SPI.unpack_from(body)[0], body[4:])
    if ext_type == EXT_NAI:
        if not body:
            raise WireError("empty NAI extension")
        return NAIExtension(body)
    if ext_type == EXT_UDP_TUNNEL_REQUEST:
        if len(body) != _UTRQ.size:
            raise WireError(f"UDP tunnel request extension length {len(body)}, expected 6")
        subtype, _, flags, encapsulation, _ = _UTRQ.unpack(body)
        if subtype != 0:
            raise WireError(f"UDP tunnel request extension sub-type {subtype}, expected 0")
        return UDPTunnelRequest(encapsulation, bool(flags & 0x80), bool(flags & 0x40))
    if ext_type == EXT_UDP_TUNNEL_REPLY:
        if len(body) != _UTRP.size:
            raise WireError(f"UDP tunnel reply extension length {len(body)}, expected 6")
        subtype, code, flags, keepalive = _UTRP.unpack(body)
        if subtype != 0:
            raise WireError(f"UDP tunnel reply extension sub-type {subtype}, expected 0")
        return UDPTunnelReply(code, bool(flags & 0x8000), keepalive)
    if ext_type == EXT_REVOCATION_SUPPORT:
        if len(body) != _REVOCATION.size:
            raise WireError(f"revocation support extension length {len(body)}, expected 6")
        flags, timestamp = _REVOCATION.unpack(body)
        return RevocationSupport(timestamp, bool(flags & 0x8000))
    return UnknownExtension(ext_type, body)


def decode_extensions(data: bytes, start: int) -> tuple[tuple[Extension, ...], tuple[int, ...]]:
    """Split ``data[start:]`` into extensions; return them and their offsets."""
    exts: list[Extension] = []
    offsets: list[int] = []
    pos = start
    end = len(data)
    while pos < end:
        if end - pos < 2:
            raise WireError(f"extension at byte {pos} truncated: no length byte")
        ext_type = data[pos]
        length = data[pos + 1]
        if pos + 2 + length > end:
            raise WireError(
                f"extension type {ext_type} at byte {pos} claims {length} bytes, "
                f"only {end - pos - 2} left"
            )
        offsets.append(pos)
        exts.append(_decode_extension(ext_type, data[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    return tuple(exts), tuple(offsets)


def decode(data: bytes) -> Message:
    """Decode a Registration Request or Reply; raise :class:`WireError` if bad."""
    data = bytes(data)
    if not data:
        raise WireError("empty Mobile IP message")
    kind = data[0]
    if kind == TYPE_REQUEST:
        if len(data) < _REQUEST_FIXED.size:
            raise WireError(f"registration request of {len(data)} bytes, at least 24 needed")
        _, flags, lifetime, hoa, ha, coa, ident = _REQUEST_FIXED.unpack_from(data)
        exts, offsets = decode_extensions(data, _REQUEST_FIXED.size)
        return RegistrationRequest(
            flags,
            lifetime,
            IPv4Address(hoa),
            IPv4Address(ha),
            IPv4Address(coa),
            ident,
            exts,
            raw=data,
            offsets=offsets,
        )
    if kind == TYPE_REPLY:
        if len(data) < _REPLY_FIXED.size:
            raise WireError(f"registration reply of {len(data)} bytes, at least 20 needed")
        _, code, lifetime, hoa, ha, ident = _REPLY_FIXED.unpack_from(data)
        exts, offsets = decode_extensions(data, _REPLY_FIXED.size)
        return RegistrationReply(
            code,
            lifetime,
            IPv4Address(hoa),
            IPv4Address(ha),
            ident,
            exts,
            raw=data,
            offsets=offsets,
        )
    raise WireError(f"Mobile IP message type {kind} is not a registration request (1) or reply (3)")


def find_extension(exts: Sequence[Extension], kind: type[Extension]) -> int | None:
    """Index of the first extension of class ``kind``, or ``None``."""
    for i, ext in enumerate(exts):
        if isinstance(ext, kind):
            return i
    return None


def find_auth(exts: Sequence[Extension], ext_type: int) -> int | None:
    """Index of the first authentication extension of ``ext_type``, or ``None``."""
    for i, ext in enumerate(exts):
        if isinstance(ext, AuthExtension) and ext.type == ext_type:
            return i
    return None


def unknown_nonskippable(exts: Sequence[Extension]) -> int | None:
    """Type of the first unrecognised extension in 0-127, or ``None``.

    RFC 5944 section 1.9: such an extension may not be skipped; the message
    that holds it must be refused as a whole.
    """
    for ext in exts:
        if isinstance(ext, UnknownExtension) and not ext.skippable:
            return ext.type
    return None


def auth_indices(exts: Sequence[Extension], ext_type: int) -> list[int]:
    """Indices of every authentication extension of ``ext_type``, in order.

    RFC 5944 sections 3.7.2.1 and 3.7.3.1 ask for exactly one MN-FA or
    FA-HA extension; this tells how many there are.
    """
    return [
        i for i, ext in enumerate(exts) if isinstance(ext, AuthExtension) and ext.type == ext_type
    ]


def through_extension(msg: Message, index: int) -> bytes:
    """The received bytes of ``msg`` up to and including extension ``index``.

    Works on decoded messages (which carry ``raw`` and ``offsets``).  A
    foreign agent relays a message by keeping these bytes untouched (RFC 5944
    sections 3.7.2.2 and 3.7.3.2) and replacing whatever follows.
    """
    if not msg.raw or len(msg.offsets) != len(msg.extensions):
        raise WireError("the bytes of an extension need a decoded message")
    if not 0 <= index < len(msg.extensions):
        raise WireError(f"no extension {index} in a message of {len(msg.extensions)}")
    start = msg.offsets[index]
    return msg.raw[: start + 2 + msg.raw[start + 1]]


def strip_after_mn_ha(msg: Message) -> bytes:
    """The received bytes of ``msg`` through its Mobile-Home authentication extension.

    Everything after the (single) MN-HA extension is left off: the
    extensions a foreign agent processes and removes before it relays a
    request or a reply (RFC 5944 sections 3.7.2.2 and 3.7.3.2).
    """
    found = auth_indices(msg.extensions, EXT_MN_HA)
    if len(found) != 1:
        raise WireError(f"{len(found)} MN-HA extensions, expected exactly one")
    return through_extension(msg, found[0])
