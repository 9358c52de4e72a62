# -*- test-case-name: tests.test_wire_ipv4 -*-
"""IPv4 headers (RFC 791), the ICMP messages the tunnel needs, and MSS clamping.

Pure codecs for the data path: fast functions on whole packets (``bytes`` in,
``bytes`` or ints out) and, for tests and tooling, the :class:`IPv4Header`
and :class:`ICMPMessage` dataclasses.

- :func:`checksum`: the Internet checksum (RFC 1071), computed as one big
  integer modulo 0xFFFF, which is the ones' complement sum of the 16-bit
  words because 0x10000 = 1 (mod 0xFFFF).  About three times faster than
  summing 16-bit words with ``array`` (0.2 us for a header, 3 us for 1400
  bytes here).
- :func:`check_header`, :func:`src_of`, :func:`dst_of`: hot-path checks and
  accessors; addresses are 4-byte ``bytes``.
- :func:`icmp_frag_needed`: destination unreachable, fragmentation needed,
  with the next-hop MTU (RFC 792, RFC 1191), quoting the original header and
  8 bytes; :func:`icmp_error_allowed` says when one may be sent (RFC 1122
  3.2.2, RFC 1812 4.3.2.7).
- :func:`icmp_echo`, :func:`parse_icmp`: echo request/reply for tests.
- :func:`clamp_mss`: lower the MSS option of a TCP SYN in place, fixing the
  TCP checksum incrementally (RFC 1624 equation 3).

Every decoding failure raises :class:`~smobility.wire.errors.WireError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from .errors import WireError

IPV4_HEADER_LEN: Final = 20
IPV4_MAX_HEADER_LEN: Final = 60

PROTO_ICMP: Final = 1
PROTO_IPIP: Final = 4
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ESP: Final = 50

FLAG_RESERVED: Final = 0x4
FLAG_DF: Final = 0x2
FLAG_MF: Final = 0x1

ICMP_ECHO_REPLY: Final = 0
ICMP_DEST_UNREACH: Final = 3
ICMP_ECHO_REQUEST: Final = 8
ICMP_TIME_EXCEEDED: Final = 11
ICMP_CODE_FRAG_NEEDED: Final = 4

ICMP_HEADER_LEN: Final = 8
MIN_MTU: Final = 68
"""The smallest MTU an IPv4 link may have (RFC 791)."""

DEFAULT_TTL: Final = 64

# ICMP types that are queries or replies (RFC 792, RFC 950): an ICMP error
# may answer these; any other type is (or may be) an error, and errors are
# never answered with errors (RFC 1122 section 3.2.2).
_ICMP_QUERY_TYPES: Final = frozenset({0, 8, 13, 14, 15, 16, 17, 18})

_HEADER = struct.Struct("!BBHHHBBH4s4s")
_U16 = struct.Struct("!H")
_ICMP_HEAD = struct.Struct("!BBH4s")
_ECHO = struct.Struct("!BBHHH")
_FRAG = struct.Struct("!BBHHH")


def checksum(data: bytes) -> int:
    """The Internet checksum of ``data`` (RFC 1071): ~(ones' complement sum) & 0xFFFF.

    An odd length is padded with one zero byte.  Over data that already holds
    its correct checksum the result is 0.
    """
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8
    rest = total % 0xFFFF
    # The ones' complement sum is 0xFFFF ("negative zero") when the words
    # are not all zero yet sum to a multiple of 0xFFFF.
    if rest == 0 and total:
        return 0
    return 0xFFFF - rest


def check_header(packet: bytes, *, verify_checksum: bool = True) -> int:
    """Validate the IPv4 header of a whole packet and return its length in bytes.

    Checks version 4, IHL at least 5 and within the packet, the total length
    equal to the packet's length, and (by default) the header checksum.

    @raise WireError: on any of these.
    """
    size = len(packet)
    if size < IPV4_HEADER_LEN:
        raise WireError(f"an IPv4 packet of {size} bytes is shorter than a header")
    first = packet[0]
    if first >> 4 != 4:
        raise WireError(f"IP version {first >> 4} is not 4")
    hlen = (first & 0x0F) << 2
    if hlen < IPV4_HEADER_LEN or hlen > size:
        raise WireError(f"IPv4 header length {hlen} does not fit a {size}-byte packet")
    total = (packet[2] << 8) | packet[3]
    if total != size:
        raise WireError(f"IPv4 total length {total} is not the packet length {size}")
    if verify_checksum and checksum(packet[:hlen]):
        raise WireError("IPv4 header checksum is wrong")
    return hlen


def src_of(packet: bytes) -> bytes:
    """The source address of an IPv4 packet, as 4 bytes."""
    if len(packet) < IPV4_HEADER_LEN:
        raise WireError("too short for an IPv4 header")
    return packet[12:16]


def dst_of(packet: bytes) -> bytes:
    """The destination address of an IPv4 packet, as 4 bytes."""
    if len(packet) < IPV4_HEADER_LEN:
        raise WireError("too short for an IPv4 header")
    return packet[16:20]


def _addr(value: bytes | IPv4Address | str) -> bytes:
    if isinstance(value, bytes):
        if len(value) != 4:
            raise WireError("an IPv4 address holds 4 bytes")
        return value
    try:
        return (value if isinstance(value, IPv4Address) else IPv4Address(value)).packed
    except ValueError as e:
        raise WireError(f"not an IPv4 address: {value!r}") from e


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """An IPv4 header, for tests and tooling (the data path uses the functions).

    ``flags`` holds the three flag bits (:data:`FLAG_DF`, :data:`FLAG_MF`);
    ``frag_offset`` counts 8-byte units; ``src`` and ``dst`` are 4 bytes.
    :meth:`encode` computes the checksum; ``checksum`` is what was decoded.
    """

    src: bytes
    dst: bytes
    protocol: int
    total_length: int
    ttl: int = DEFAULT_TTL
    tos: int = 0
    ident: int = 0
    flags: int = 0
    frag_offset: int = 0
    options: bytes = b""
    checksum: int = 0

    @property
    def header_length(self) -> int:
        """Length of the header in bytes, options included."""
        return IPV4_HEADER_LEN + len(self.options)

    @property
    def df(self) -> bool:
        """The Don't Fragment flag."""
        return bool(self.flags & FLAG_DF)

    @property
    def mf(self) -> bool:
        """The More Fragments flag."""
        return bool(self.flags & FLAG_MF)

    @property
    def src_address(self) -> IPv4Address:
        """The source as an :class:`~ipaddress.IPv4Address`."""
        return IPv4Address(self.src)

    @property
    def dst_address(self) -> IPv4Address:
        """The destination as an :class:`~ipaddress.IPv4Address`."""
        return IPv4Address(self.dst)

    @classmethod
    def decode(
        cls, data: bytes, *, verify_checksum: bool = True, whole_packet: bool = True
    ) -> IPv4Header:
        """Decode the header at the start of ``data``.

        With ``whole_packet`` (the default) ``data`` is the entire packet and
        its length must equal the total length; without it ``data`` may be a
        truncated copy, as quoted in an ICMP error.

        @raise WireError: bad version, IHL, length or checksum.
        """
        size = len(data)
        if size < IPV4_HEADER_LEN:
            raise WireError(f"{size} bytes are too short for an IPv4 header")
        (vihl, tos, total, ident, frag, ttl, proto, csum, src, dst) = _HEADER.unpack_from(data)
        if vihl >> 4 != 4:
            raise WireError(f"IP version {vihl >> 4} is not 4")
        hlen = (vihl & 0x0F) << 2
        if hlen < IPV4_HEADER_LEN or hlen > size:
            raise WireError(f"IPv4 header length {hlen} does not fit {size} bytes")
        if total < hlen:
            raise WireError(f"IPv4 total length {total} is shorter than the header")
        if whole_packet and total != size:
            raise WireError(f"IPv4 total length {total} is not the packet length {size}")
        if verify_checksum and checksum(data[:hlen]):
            raise WireError("IPv4 header checksum is wrong")
        return cls(
            src=src,
            dst=dst,
            protocol=proto,
            total_length=total,
            ttl=ttl,
            tos=tos,
            ident=ident,
            flags=frag >> 13,
            frag_offset=frag & 0x1FFF,
            options=bytes(data[IPV4_HEADER_LEN:hlen]),
            checksum=csum,
        )

    def encode(self) -> bytes:
        """The header's bytes, with a freshly computed checksum.

        @raise WireError: a field out of range.
        """
        opt = len(self.options)
        if opt & 3 or opt > IPV4_MAX_HEADER_LEN - IPV4_HEADER_LEN:
            raise WireError("IPv4 options are a multiple of 4 bytes, at most 40")
        if not 0 <= self.flags <= 7 or not 0 <= self.frag_offset <= 0x1FFF:
            raise WireError("IPv4 flags are 3 bits and the fragment offset 13 bits")
        hlen = IPV4_HEADER_LEN + opt
        if not hlen <= self.total_length <= 0xFFFF:
            raise WireError(f"IPv4 total length {self.total_length} is out of range")
        try:
            head = _HEADER.pack(
                0x40 | (hlen >> 2),
                self.tos,
                self.total_length,
                self.ident,
                (self.flags << 13) | self.frag_offset,
                self.ttl,
                self.protocol,
                0,
                _addr(self.src),
                _addr(self.dst),
            ) + bytes(self.options)
        except struct.error as e:
            raise WireError(f"an IPv4 header field is out of range: {e}") from e
        return head[:10] + _U16.pack(checksum(head)) + head[12:]


def ipv4_packet(
    src: bytes | IPv4Address | str,
    dst: bytes | IPv4Address | str,
    protocol: int,
    payload: bytes,
    *,
    ttl: int = DEFAULT_TTL,
    tos: int = 0,
    ident: int = 0,
    df: bool = False,
) -> bytes:
    """A complete IPv4 packet (20-byte header, no options) around ``payload``.

    @raise WireError: a field out of range, or a payload too long.
    """
    total = IPV4_HEADER_LEN + len(payload)
    if total > 0xFFFF:
        raise WireError("an IPv4 packet holds at most 65535 bytes")
    try:
        head = _HEADER.pack(
            0x45, tos, total, ident, 0x4000 if df else 0, ttl, protocol, 0, _addr(src), _addr(dst)
        )
    except struct.error as e:
        raise WireError(f"an IPv4 header field is out of range: {e}") from e
    return head[:10] + _U16.pack(checksum(head)) + head[12:] + payload


@dataclass(frozen=True, slots=True)
class ICMPMessage:
    """An ICMP message (RFC 792) with the addresses of its IPv4 packet.

    ``rest`` is the second 32-bit word of the ICMP header (identifier and
    sequence number for echo, the next-hop MTU for fragmentation needed);
    ``body`` what follows it.
    """

    src: bytes
    dst: bytes
    type: int
    code: int
    rest: bytes
    body: bytes
    ttl: int = DEFAULT_TTL

    @property
    def ident(self) -> int:
        """Identifier of an echo request or reply."""
        return int.from_bytes(self.rest[:2], "big")

    @property
    def seq(self) -> int:
        """Sequence number of an echo request or reply."""
        return int.from_bytes(self.rest[2:], "big")

    @property
    def next_hop_mtu(self) -> int:
        """Next-hop MTU of a fragmentation-needed message (RFC 1191)."""
        return int.from_bytes(self.rest[2:], "big")

    @property
    def is_frag_needed(self) -> bool:
        """True for destination unreachable, fragmentation needed (3/4)."""
        return self.type == ICMP_DEST_UNREACH and self.code == ICMP_CODE_FRAG_NEEDED


def parse_icmp(packet: bytes) -> ICMPMessage:
    """Decode an IPv4 packet holding an ICMP message; both checksums are verified.

    @raise WireError: not a valid IPv4 packet, not ICMP, a fragment, too
        short, or a bad ICMP checksum.
    """
    hlen = check_header(packet)
    if packet[9] != PROTO_ICMP:
        raise WireError(f"IP protocol {packet[9]} is not ICMP")
    if (packet[6] & 0x3F) or packet[7]:  # MF set or a non-zero offset
        raise WireError("an ICMP message in an IPv4 fragment is not decoded")
    icmp = packet[hlen:]
    if len(icmp) < ICMP_HEADER_LEN:
        raise WireError("too short for an ICMP header")
    if checksum(icmp):
        raise WireError("ICMP checksum is wrong")
    mtype, code, _csum, rest = _ICMP_HEAD.unpack_from(icmp)
    return ICMPMessage(
        src=packet[12:16],
        dst=packet[16:20],
        type=mtype,
        code=code,
        rest=rest,
        body=icmp[ICMP_HEADER_LEN:],
        ttl=packet[8],
    )


def _icmp(head: bytes, body: bytes) -> bytes:
    message = head + body
    return message[:2] + _U16.pack(checksum(message)) + message[4:]


def icmp_echo(
    src: bytes | IPv4Address | str,
    dst: bytes | IPv4Address | str,
    ident: int,
    seq: int,
    payload: bytes = b"",
    *,
    reply: bool = False,
    ttl: int = DEFAULT_TTL,
) -> bytes:
    """An IPv4 packet holding an ICMP echo request (or reply, with ``reply``)."""
    try:
        head = _ECHO.pack(ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    except struct.error as e:
        raise WireError(f"an echo identifier or sequence number is out of range: {e}") from e
    return ipv4_packet(src, dst, PROTO_ICMP, _icmp(head, payload), ttl=ttl)


def icmp_error_allowed(original: bytes) -> bool:
    """Whether an ICMP error may be sent about ``original`` (RFC 1122 3.2.2, RFC 1812 4.3.2.7).

    Not about an ICMP error, a non-initial fragment, a packet from an
    address that is not one host (0/8, 127/8, multicast, class E,
    broadcast), or a packet to multicast or broadcast.  Garbage gets no
    answer either.
    """
    try:
        hlen = check_header(original, verify_checksum=False)
    except WireError:
        return False
    if ((original[6] & 0x1F) << 8) | original[7]:
        return False
    first_src = original[12]
    if first_src in (0, 127) or first_src >= 224 or original[16] >= 224:
        return False
    if original[9] == PROTO_ICMP:
        return len(original) > hlen and original[hlen] in _ICMP_QUERY_TYPES
    return True


def icmp_frag_needed(
    original: bytes, mtu: int, src: bytes | IPv4Address | str, *, ttl: int = DEFAULT_TTL
) -> bytes:
    """Destination unreachable, fragmentation needed and DF set (type 3 code 4).

    Sent from ``src`` back to the source of ``original`` with the next-hop
    ``mtu`` (RFC 1191 section 4), quoting the original header and the first
    8 bytes of its data (RFC 792).  Callers check :func:`icmp_error_allowed`
    first.

    @raise WireError: ``original`` has no valid IPv4 header, or ``mtu`` is
        outside 68-65535.
    """
    if not MIN_MTU <= mtu <= 0xFFFF:
        raise WireError(f"a next-hop MTU of {mtu} is outside 68-65535")
    size = len(original)
    if size < IPV4_HEADER_LEN or original[0] >> 4 != 4:
        raise WireError("the original packet has no IPv4 header")
    hlen = (original[0] & 0x0F) << 2
    if hlen < IPV4_HEADER_LEN or hlen > size:
        raise WireError("the original packet's IPv4 header length is invalid")
    head = _FRAG.pack(ICMP_DEST_UNREACH, ICMP_CODE_FRAG_NEEDED, 0, 0, mtu)
    message = _icmp(head, original[: hlen + 8])
    # Precedence "internetwork control" for ICMP errors (RFC 1812 4.3.2.5).
    tos = (original[1] & 0x1C) | 0xC0
    return ipv4_packet(src, original[12:16], PROTO_ICMP, message, ttl=ttl, tos=tos)


def _fold(value: int) -> int:
    value = (value & 0xFFFF) + (value >> 16)
    return (value & 0xFFFF) + (value >> 16)


def clamp_mss(packet: bytes, max_mss: int) -> bytes | None:
    """Lower the MSS option of a TCP SYN (or SYN-ACK) to ``max_mss``.

    Returns the rewritten packet, its TCP checksum updated incrementally
    (RFC 1624 equation 3: HC' = ~(~HC + ~m + m')), or ``None`` when there
    is nothing to do: not TCP, a non-initial fragment, not a SYN, no MSS
    option, an MSS already at most ``max_mss``, or TCP options this
    function cannot walk (the endpoint will judge those).

    @raise WireError: ``packet`` has no valid IPv4 header (version, IHL,
        total length); the header checksum is not checked.
    """
    if not 1 <= max_mss <= 0xFFFF:
        raise WireError(f"an MSS of {max_mss} is outside 1-65535")
    size = len(packet)
    if size < IPV4_HEADER_LEN or packet[0] >> 4 != 4:
        raise WireError("not an IPv4 packet")
    hlen = (packet[0] & 0x0F) << 2
    total = (packet[2] << 8) | packet[3]
    if hlen < IPV4_HEADER_LEN or total < hlen or total > size:
        raise WireError("IPv4 header or total length is invalid")
    # TCP, the first fragment (or no fragment), a whole fixed TCP header.
    if packet[9] != PROTO_TCP or ((packet[6] & 0x1F) << 8) | packet[7] or total < hlen + 20:
        return None
    if not packet[hlen + 13] & 0x02:  # SYN
        return None
    end = hlen + ((packet[hlen + 12] >> 4) << 2)
    if end > total or end < hlen + 20:
        return None
    i = hlen + 20
    while i < end:
        kind = packet[i]
        if kind == 0:  # end of option list
            return None
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= end:
            return None
        length = packet[i + 1]
        if length < 2 or i + length > end:
            return None
        if kind == 2:
            if length != 4:
                return None
            at = i + 2
            old = (packet[at] << 8) | packet[at + 1]
            if old <= max_mss:
                return None
            new = max_mss
            if (at - hlen) & 1:
                # At an odd offset each byte lands in the other half of its
                # 16-bit word: the sum sees the value byte-swapped.
                old = ((old & 0xFF) << 8) | (old >> 8)
                new = ((new & 0xFF) << 8) | (new >> 8)
            csum_at = hlen + 16
            csum = (packet[csum_at] << 8) | packet[csum_at + 1]
            csum = ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF
            out = bytearray(packet)
            out[at] = max_mss >> 8
            out[at + 1] = max_mss & 0xFF
            out[csum_at] = csum >> 8
            out[csum_at + 1] = csum & 0xFF
            return bytes(out)
        i += length
    return None
