# -*- test-case-name: tests.test_wire_esp -*-
"""ESP (RFC 4303) with AES-GCM (RFC 4106), tunnel mode, in UDP (RFC 3948).

This is the per-packet data path, so it is written for speed: one AES-GCM
object per SA, precompiled structs, precomputed trailers, no per-packet
objects beyond the bytes themselves.  Pure codec: no I/O, no clock, no log.

Packet layout (RFC 4303 section 2, RFC 4106 section 3)::

    SPI (4) | Sequence Number (4) | IV (8) | ciphertext | ICV (16)

where the ciphertext covers ``inner || padding || pad length || next header``
and the padding (0-3 bytes of 1, 2, 3: RFC 4303 section 2.4) makes that a
multiple of four.  The GCM nonce is ``salt (4) || IV (8)`` and the
additional authenticated data is ``SPI || sequence number`` (RFC 4106
sections 4 and 5; no extended sequence numbers).

Outbound, the IV is the 64-bit packet counter, so it never repeats under one
key (RFC 4106 section 3.1); the counter never wraps: :meth:`OutboundSA.seal`
raises :class:`SAExpired` rather than send sequence number 2**32 (RFC 4303
section 3.3.3), and :attr:`OutboundSA.needs_rekey` turns true well before.

Inbound, :meth:`InboundSA.open` drops duplicates and packets left of the
anti-replay window before decrypting, and moves the window only once the ICV
and the trailer have checked out (RFC 4303 section 3.4.3).  The window is an
integer bitmask sliding by shifts, as RFC 4303 appendix A describes; bit
``i`` stands for sequence number ``highest - i``.

Drops raise one subclass of :class:`~smobility.wire.errors.WireError` per
reason (:class:`Malformed`, :class:`UnknownSPI`, :class:`Replayed`,
:class:`BadICV`), each with a ``reason`` string to count by.  No message
holds key material or plaintext.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import ClassVar, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import WireError

NAT_T_PORT: Final = 4500
"""The UDP port of ESP-in-UDP and of IKE after NAT detection (RFC 3948)."""

NON_ESP_MARKER: Final = b"\x00\x00\x00\x00"
"""Four zero bytes in front of an IKE message on port 4500 (RFC 3948 section 2.2)."""

NAT_KEEPALIVE: Final = b"\xff"
"""A NAT-keepalive datagram: this one byte (RFC 3948 section 2.3)."""

NEXT_HEADER_IPV4: Final = 4
"""Next header of a tunnel-mode packet carrying IPv4."""

NEXT_HEADER_NONE: Final = 59
"""Next header of a dummy packet, dropped on receipt (RFC 4303 section 2.6)."""

SPI_MIN: Final = 256
"""Lowest SPI allowed on the wire: 0 is local-only, 1-255 reserved (RFC 4303 section 2.1)."""

SEQ_MAX: Final = 0xFFFFFFFF
"""Highest sequence number an SA may send; the next packet needs a new SA."""

DEFAULT_SOFT_LIMIT: Final = 2**32 - 2**24
"""Sequence number from which :attr:`OutboundSA.needs_rekey` is true."""

DEFAULT_WINDOW: Final = 1024
"""Default anti-replay window, in packets."""

MIN_WINDOW: Final = 64
"""Smallest anti-replay window accepted (RFC 4303 section 3.4.3 recommends 64)."""

ESP_HEADER_LEN: Final = 8
GCM_IV_LEN: Final = 8
GCM_ICV_LEN: Final = 16
GCM_SALT_LEN: Final = 4
ESP_TRAILER_LEN: Final = 2
ESP_MAX_PAD: Final = 3

ESP_OVERHEAD: Final = ESP_HEADER_LEN + GCM_IV_LEN + GCM_ICV_LEN + ESP_TRAILER_LEN + ESP_MAX_PAD
"""Most bytes ESP with AES-GCM adds to an inner packet: 8 + 8 + 16 + 2 + 3 = 37."""

UDP_HEADER_LEN: Final = 8
IPV4_HEADER_LEN: Final = 20
IKE_HEADER_LEN: Final = 28
"""Length of the IKEv2 header (RFC 7296 section 3.1): the least that may follow the marker."""

# Header, IV and ICV around the ciphertext: 8 + 8 + 16.
_FIXED: Final = ESP_HEADER_LEN + GCM_IV_LEN + GCM_ICV_LEN
# Shortest packet: the fixed part plus an empty payload padded to four bytes.
_MIN_PACKET: Final = _FIXED + 4

_SPI_SEQ = struct.Struct("!II")
_SPI_SEQ_IV = struct.Struct("!IIQ")
_U32 = struct.Struct("!I")

# _TRAILERS[next_header][pad_length]: the padding 1, 2, ... then pad length
# and next header, for the four pad lengths a sender ever needs.
_TRAILERS: Final = tuple(
    tuple(bytes(range(1, pad + 1)) + bytes((pad, nh)) for pad in range(4)) for nh in range(256)
)
# _PADDING[n]: the n padding bytes a receiver expects (RFC 4303 section 2.4).
_PADDING: Final = tuple(bytes(range(1, n + 1)) for n in range(256))


class ESPError(WireError):
    """Base of the reasons an ESP packet or UDP datagram is dropped."""

    reason: ClassVar[str] = "error"


class Malformed(ESPError):
    """The bytes are not a well-formed ESP packet (or decrypt to a bad trailer)."""

    reason: ClassVar[str] = "malformed"


class UnknownSPI(ESPError):
    """No SA has this SPI (or the packet reached the SA of another SPI)."""

    reason: ClassVar[str] = "unknown_spi"


class Replayed(ESPError):
    """The sequence number was seen already, or is left of the anti-replay window."""

    reason: ClassVar[str] = "replayed"


class BadICV(ESPError):
    """The integrity check failed: wrong key, or the packet was altered."""

    reason: ClassVar[str] = "bad_icv"


class SAExpired(Exception):
    """The outbound SA has sent sequence number 2**32 - 1: it must be replaced.

    Raised instead of wrapping the counter (RFC 4303 section 3.3.3), which
    would repeat both sequence numbers and GCM nonces.  Not a
    :class:`WireError`: nothing was wrong with the input, the SA is used up.
    """


def _check_keys(spi: int, key: bytes, salt: bytes) -> None:
    if not SPI_MIN <= spi <= 0xFFFFFFFF:
        raise WireError(f"an ESP SPI is 256 to 2**32 - 1, not {spi}")
    if len(key) not in (16, 32):
        raise WireError("an AES-GCM key holds 16 or 32 bytes")
    if len(salt) != GCM_SALT_LEN:
        raise WireError("an AES-GCM salt holds 4 bytes")


def split_keymat(keymat: bytes) -> tuple[bytes, bytes]:
    """Split IKE keying material ``key || salt`` (RFC 4106 section 8.1) into its parts.

    20 bytes give AES-128, 36 bytes AES-256.  This is also the layout of the
    ``crypt_key`` of scapy and of tshark's ESP key field.
    """
    if len(keymat) not in (20, 36):
        raise WireError("AES-GCM keying material holds 20 or 36 bytes (key and salt)")
    return bytes(keymat[:-4]), bytes(keymat[-4:])


class OutboundSA:
    """The sending side of one ESP SA: :meth:`seal` turns inner packets into ESP.

    ``seq`` is the last sequence number already sent (0 for a new SA); the
    next packet carries ``seq + 1``.  ``soft_limit`` is where
    :attr:`needs_rekey` turns true.
    """

    __slots__ = ("spi", "_aead", "_salt", "_seq", "_soft_limit")

    spi: int
    _aead: AESGCM
    _salt: bytes
    _seq: int
    _soft_limit: int

    def __init__(
        self,
        spi: int,
        key: bytes,
        salt: bytes,
        *,
        seq: int = 0,
        soft_limit: int = DEFAULT_SOFT_LIMIT,
    ) -> None:
        _check_keys(spi, key, salt)
        if not 0 <= seq <= SEQ_MAX:
            raise WireError("the ESP sequence counter is 0 to 2**32 - 1")
        if not 1 <= soft_limit <= SEQ_MAX:
            raise WireError("the soft limit is 1 to 2**32 - 1")
        self.spi = spi
        self._aead = AESGCM(bytes(key))
        self._salt = bytes(salt)
        self._seq = seq
        self._soft_limit = soft_limit

    @classmethod
    def from_keymat(cls, spi: int, keymat: bytes, **kwargs: int) -> OutboundSA:
        """Build from ``key || salt`` (20 or 36 bytes), as IKEv2 derives it."""
        key, salt = split_keymat(keymat)
        return cls(spi, key, salt, **kwargs)

    def __repr__(self) -> str:
        return f"<OutboundSA spi=0x{self.spi:08x} seq={self._seq}>"

    @property
    def seq(self) -> int:
        """The last sequence number sent (0 before the first packet)."""
        return self._seq

    @property
    def remaining(self) -> int:
        """How many more packets this SA may send."""
        return SEQ_MAX - self._seq

    @property
    def needs_rekey(self) -> bool:
        """True once the soft limit is reached: time to negotiate a replacement."""
        return self._seq >= self._soft_limit

    @property
    def exhausted(self) -> bool:
        """True when :meth:`seal` would raise :class:`SAExpired`."""
        return self._seq >= SEQ_MAX

    def seal(self, inner: bytes, next_header: int = NEXT_HEADER_IPV4) -> bytes:
        """Encrypt ``inner`` (an IPv4 packet) into a complete ESP packet.

        The result is the UDP payload for ESP-in-UDP, or the IP payload of
        protocol 50.  ``next_header`` 59 sends a dummy packet.

        @raise SAExpired: the 32-bit sequence space is used up.
        """
        seq = self._seq + 1
        if seq > SEQ_MAX:
            raise SAExpired(
                f"ESP SA 0x{self.spi:08x} has sent 2**32 - 1 packets and must be replaced"
            )
        self._seq = seq
        # SPI, sequence number, then the IV: the 64-bit counter itself.
        head = _SPI_SEQ_IV.pack(self.spi, seq, seq)
        return head + self._aead.encrypt(
            self._salt + head[8:],
            inner + _TRAILERS[next_header][(2 - len(inner)) & 3],
            head[:8],
        )


class InboundSA:
    """The receiving side of one ESP SA: :meth:`open` checks and decrypts.

    ``window`` is the anti-replay window in packets (at least 64).
    """

    __slots__ = ("spi", "_aead", "_salt", "_window", "_mask", "_top", "_bitmap")

    spi: int
    _aead: AESGCM
    _salt: bytes
    _window: int
    _mask: int
    _top: int
    _bitmap: int

    def __init__(self, spi: int, key: bytes, salt: bytes, *, window: int = DEFAULT_WINDOW) -> None:
        _check_keys(spi, key, salt)
        if window < MIN_WINDOW:
            raise WireError(f"the anti-replay window is at least {MIN_WINDOW} packets")
        self.spi = spi
        self._aead = AESGCM(bytes(key))
        self._salt = bytes(salt)
        self._window = window
        self._mask = (1 << window) - 1
        self._top = 0
        # Bit 0 marks sequence number 0 as seen: a sender starts at 1, so a
        # packet numbered 0 can only be a replay or a wrapped counter.
        self._bitmap = 1

    @classmethod
    def from_keymat(cls, spi: int, keymat: bytes, **kwargs: int) -> InboundSA:
        """Build from ``key || salt`` (20 or 36 bytes), as IKEv2 derives it."""
        key, salt = split_keymat(keymat)
        return cls(spi, key, salt, **kwargs)

    def __repr__(self) -> str:
        return f"<InboundSA spi=0x{self.spi:08x} highest={self._top}>"

    @property
    def window(self) -> int:
        """The anti-replay window size, in packets."""
        return self._window

    @property
    def highest_seq(self) -> int:
        """The highest authenticated sequence number received (0 before any)."""
        return self._top

    def seen(self, seq: int) -> bool:
        """True if ``seq`` would be refused as a replay (seen, or too old)."""
        top = self._top
        if seq > top:
            return False
        diff = top - seq
        return diff >= self._window or bool((self._bitmap >> diff) & 1)

    def open(self, packet: bytes) -> bytes:
        """Check and decrypt one ESP packet; return the inner IPv4 packet.

        A dummy packet (next header 59) returns ``b""``: drop it silently.
        The inner packet itself is not parsed here.

        @raise Malformed: too short, misaligned, bad padding, or a next
            header other than 4 and 59.
        @raise UnknownSPI: the packet belongs to another SA.
        @raise Replayed: a duplicate, or left of the window.
        @raise BadICV: the integrity check failed.
        """
        next_header, inner = self.open_payload(packet)
        if next_header == NEXT_HEADER_IPV4:
            return inner
        if next_header == NEXT_HEADER_NONE:
            return b""
        raise Malformed(f"ESP next header {next_header} is neither IPv4 (4) nor none (59)")

    def open_payload(self, packet: bytes) -> tuple[int, bytes]:
        """Like :meth:`open` but for any next header: return it with the payload.

        The anti-replay window has moved when this returns.
        """
        size = len(packet)
        if size < _MIN_PACKET or (size - _FIXED) & 3:
            raise Malformed(f"an ESP packet of {size} bytes is too short or not 4-byte aligned")
        spi, seq = _SPI_SEQ.unpack_from(packet)
        if spi != self.spi:
            raise UnknownSPI(f"ESP SPI 0x{spi:08x} does not belong to SA 0x{self.spi:08x}")
        # Anti-replay first: cheaper than decrypting (RFC 4303 section 3.4.3).
        top = self._top
        if seq <= top:
            diff = top - seq
            if diff >= self._window:
                raise Replayed(f"ESP sequence number {seq} is left of the window")
            if (self._bitmap >> diff) & 1:
                raise Replayed(f"ESP sequence number {seq} was received already")
        try:
            plain = self._aead.decrypt(self._salt + packet[8:16], packet[16:], packet[:8])
        except InvalidTag:
            raise BadICV(f"ESP packet {seq} on SA 0x{spi:08x} failed the ICV check") from None
        pad = plain[-2]
        end = len(plain) - 2 - pad
        if pad and (end < 0 or not plain.startswith(_PADDING[pad], end)):
            raise Malformed("ESP padding is not 1, 2, 3, ... as RFC 4303 section 2.4 requires")
        # Authentic and well formed: only now move the window.
        if seq > top:
            shift = seq - top
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self._window else 1
            self._top = seq
        else:
            self._bitmap |= 1 << (top - seq)
        return plain[-1], plain[:end]


def parse_spi(packet: bytes) -> int:
    """Return the SPI of an ESP packet (at least its 8-byte header).

    @raise Malformed: shorter than the header, or an SPI below 256.
    """
    if len(packet) < ESP_HEADER_LEN:
        raise Malformed("an ESP packet holds at least SPI and sequence number")
    spi: int = _U32.unpack_from(packet)[0]
    if spi < SPI_MIN:
        raise Malformed(f"ESP SPI {spi} is reserved")
    return spi


def parse_seq(packet: bytes) -> int:
    """Return the sequence number of an ESP packet (not authenticated yet)."""
    if len(packet) < ESP_HEADER_LEN:
        raise Malformed("an ESP packet holds at least SPI and sequence number")
    seq: int = _U32.unpack_from(packet, 4)[0]
    return seq


class UDPKind(IntEnum):
    """What a datagram on port 4500 holds (RFC 3948 section 2)."""

    ESP = 1
    IKE = 2
    KEEPALIVE = 3


def udp_encap_classify(datagram: bytes) -> tuple[UDPKind, bytes]:
    """Sort a datagram received on the NAT-T port.

    Returns ``(UDPKind.ESP, datagram)`` for ESP (a non-zero SPI first),
    ``(UDPKind.IKE, message)`` with the non-ESP marker removed, or
    ``(UDPKind.KEEPALIVE, b"")`` for the one-byte 0xFF NAT keepalive.

    @raise Malformed: anything else (empty, too short, a marker with less
        than an IKE header behind it).
    """
    if len(datagram) >= ESP_HEADER_LEN and not datagram.startswith(NON_ESP_MARKER):
        return UDPKind.ESP, datagram
    if datagram == NAT_KEEPALIVE:
        return UDPKind.KEEPALIVE, b""
    if len(datagram) >= 4 + IKE_HEADER_LEN and datagram.startswith(NON_ESP_MARKER):
        return UDPKind.IKE, datagram[4:]
    raise Malformed(f"a {len(datagram)}-byte datagram on the NAT-T port is neither ESP nor IKE")


def encap_ike(message: bytes) -> bytes:
    """Prefix an IKE message with the non-ESP marker for port 4500."""
    return NON_ESP_MARKER + message


def esp_length(inner_length: int) -> int:
    """Length of the ESP packet :meth:`OutboundSA.seal` makes of an inner packet."""
    return _FIXED + inner_length + ((2 - inner_length) & 3) + ESP_TRAILER_LEN


def tunnel_mtu(path_mtu: int, *, udp: bool = True) -> int:
    """The largest inner packet whose ESP packet fits in ``path_mtu``.

    Counts a 20-byte outer IPv4 header, the 8-byte UDP header when ``udp``
    (ESP-in-UDP), and the ESP/GCM overhead with its alignment.  With a
    path MTU of 1500 and UDP: 1438.
    """
    room = path_mtu - IPV4_HEADER_LEN - (UDP_HEADER_LEN if udp else 0) - _FIXED
    inner = (room & ~3) - ESP_TRAILER_LEN
    if inner < 68:
        raise WireError(f"a path MTU of {path_mtu} leaves no room for IPv4 in ESP")
    return inner
