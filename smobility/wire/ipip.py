# -*- test-case-name: tests.test_wire_ipip -*-
"""IP in IP (RFC 2003, IP protocol 4) carrying a "virtual UDP" between two hosts.

The relay and the home agent talk to each other with UDP datagrams
(registration on 434, IKE and ESP-in-UDP on 4500) that travel inside
protocol-4 packets, because the home firewall admits only protocol 4 from
the relay.  On the wire one such datagram is::

    outer IPv4 (relay <-> home, protocol 4)
      inner IPv4 (the same two addresses, protocol 17, DF set)
        UDP header + payload

The functions here are pure codecs for that shape:

- :func:`udp_packet` / :func:`parse_udp_packet`: the inner IPv4+UDP packet,
  both checksums included (RFC 791, RFC 768).  Inner packets are never
  fragmented, so a fragment is refused.
- :func:`encapsulate` / :func:`decapsulate`: the outer header of RFC 2003
  section 3.1 (TOS and DF copied from the inner header, protocol 4).  On
  Linux a raw socket without C{IP_HDRINCL} lets the kernel build the outer
  header on send, and hands the whole packet, outer header first, to the
  reader; :func:`decapsulate` is what that reader calls.

Checksums are computed arithmetically: the ones' complement sum of 16-bit
words is the sum modulo 0xFFFF, and a 32-bit address is congruent to the sum
of its two halves, so the pseudo-header and the headers are summed as
integers and only the payload is read as one big integer (see
:func:`smobility.wire.ipv4.checksum`).  Each builder packs one precompiled
struct and joins it with the payload once.

Every decoding failure raises :class:`~smobility.wire.errors.WireError`
with a sentence that says what was wrong.
"""

from __future__ import annotations

import struct
from typing import Final

from .errors import WireError
from .ipv4 import checksum

PROTO_IPIP: Final = 4
PROTO_UDP: Final = 17

IPV4_HEADER_LEN: Final = 20
UDP_HEADER_LEN: Final = 8

INNER_OVERHEAD: Final = IPV4_HEADER_LEN + UDP_HEADER_LEN
"""Bytes an inner packet adds to a UDP payload (inner IPv4 header + UDP header)."""

OVERHEAD: Final = IPV4_HEADER_LEN + INNER_OVERHEAD
"""Bytes the tunnel adds to a UDP payload on the wire (outer + inner IPv4, UDP)."""

MAX_PAYLOAD: Final = 0xFFFF - OVERHEAD
"""Largest UDP payload whose encapsulated packet still fits in one IPv4 datagram."""

DEFAULT_TTL: Final = 64

_DF: Final = 0x4000
_MF_OR_OFFSET: Final = 0x3FFF

# Inner IPv4 header (no options) and UDP header in one pack.
_IP_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")


def _fold_checksum(total: int) -> int:
    """RFC 1071: ~(ones' complement sum) for a non-zero integer sum of the words."""
    rest = total % 0xFFFF
    # rest == 0 with a non-zero sum: the ones' complement sum is 0xFFFF.
    return 0xFFFF - rest if rest else 0


def udp_packet(
    src: bytes,
    sport: int,
    dst: bytes,
    dport: int,
    payload: bytes,
    *,
    ident: int = 0,
    ttl: int = DEFAULT_TTL,
) -> bytes:
    """An IPv4 packet (20-byte header, DF set) holding one UDP datagram.

    ``src`` and ``dst`` are 4-byte packed addresses.  The IPv4 header
    checksum and the UDP checksum (RFC 768, over the pseudo-header) are
    computed; a UDP checksum that comes out as 0 is sent as 0xFFFF.

    @raise WireError: an address is not 4 bytes, a field is out of range,
        or the packet would exceed 65535 bytes.
    """
    if len(src) != 4 or len(dst) != 4:
        raise WireError("an IPv4 address must be 4 bytes")
    ulen = UDP_HEADER_LEN + len(payload)
    total = IPV4_HEADER_LEN + ulen
    if total > 0xFFFF:
        raise WireError(f"a UDP payload of {len(payload)} bytes does not fit an IPv4 packet")
    addrs = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    data = int.from_bytes(payload, "big")
    if ulen & 1:
        data <<= 8  # an odd payload is padded with one zero byte
    # Pseudo-header (addresses, protocol, UDP length) + UDP header (ports, length).
    ucsum = 0xFFFF - (addrs + PROTO_UDP + ulen + sport + dport + ulen + data) % 0xFFFF
    hcsum = _fold_checksum(0x4500 + total + ident + _DF + (ttl << 8) + PROTO_UDP + addrs)
    try:
        head = _IP_UDP.pack(
            0x45, 0, total, ident, _DF, ttl, PROTO_UDP, hcsum, src, dst, sport, dport, ulen, ucsum
        )
    except struct.error as e:
        raise WireError(f"a port, identification or TTL is out of range ({e})") from None
    return head + payload


def parse_udp_packet(packet: bytes) -> tuple[bytes, int, bytes, int, bytes]:
    """Decode an IPv4 packet holding one whole UDP datagram.

    Returns ``(src, sport, dst, dport, payload)`` with 4-byte addresses.
    IP options are allowed (the IHL is honoured).  A UDP checksum of 0
    means none was sent and is accepted.

    @raise WireError: not IPv4, a bad IHL, a total length other than the
        packet's, a fragment, a protocol other than UDP, a bad header
        checksum, a UDP length other than what the IP header leaves, or a
        bad UDP checksum.
    """
    size = len(packet)
    hlen = _check_ipv4(packet, size)
    if packet[9] != PROTO_UDP:
        raise WireError(f"IP protocol {packet[9]} is not UDP (17)")
    if checksum(packet[:hlen]):
        raise WireError("the IPv4 header checksum is wrong")
    if size - hlen < UDP_HEADER_LEN:
        raise WireError(f"{size - hlen} bytes after the IPv4 header are too short for UDP")
    sport, dport, ulen, ucsum = _UDP.unpack_from(packet, hlen)
    if ulen != size - hlen:
        raise WireError(f"the UDP length {ulen} is not the {size - hlen} bytes after the IP header")
    src = packet[12:16]
    dst = packet[16:20]
    if ucsum:
        data = int.from_bytes(packet[hlen:], "big")
        if ulen & 1:
            data <<= 8
        total = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + PROTO_UDP + ulen + data
        if total % 0xFFFF:
            raise WireError("the UDP checksum is wrong")
    return src, sport, dst, dport, packet[hlen + UDP_HEADER_LEN :]


def _check_ipv4(packet: bytes, size: int) -> int:
    """Version, IHL, total length and fragmentation of an IPv4 header; return its length."""
    if size < IPV4_HEADER_LEN:
        raise WireError(f"{size} bytes are too short for an IPv4 header")
    first = packet[0]
    if first >> 4 != 4:
        raise WireError(f"not IPv4: IP version {first >> 4}")
    hlen = (first & 0x0F) << 2
    if hlen < IPV4_HEADER_LEN:
        raise WireError(f"the IPv4 header length (IHL) {hlen} is below 20 bytes")
    total = (packet[2] << 8) | packet[3]
    if total > size:
        raise WireError(f"truncated: the IPv4 total length is {total} but only {size} bytes came")
    if total != size:
        raise WireError(f"the IPv4 total length {total} is not the packet's length {size}")
    if hlen > size:
        raise WireError(f"the IPv4 header length (IHL) {hlen} exceeds the {size}-byte packet")
    if ((packet[6] << 8) | packet[7]) & _MF_OR_OFFSET:
        raise WireError("an IPv4 fragment is refused (this tunnel never fragments)")
    return hlen


def encapsulate(
    outer_src: bytes, outer_dst: bytes, inner: bytes, *, ttl: int = DEFAULT_TTL, ident: int = 0
) -> bytes:
    """Prefix ``inner`` (an IPv4 packet) with an outer header of RFC 2003 section 3.1.

    The outer header has no options, protocol 4, the TOS of the inner
    header, and DF when the inner header has it.  The adapter normally lets
    the kernel build this header; this is for tools, tests and an
    C{IP_HDRINCL} path.

    @raise WireError: an address is not 4 bytes, ``inner`` does not start
        with an IPv4 header, a field is out of range, or the result would
        exceed 65535 bytes.
    """
    if len(outer_src) != 4 or len(outer_dst) != 4:
        raise WireError("an IPv4 address must be 4 bytes")
    if len(inner) < IPV4_HEADER_LEN or inner[0] >> 4 != 4:
        raise WireError("the packet to encapsulate does not start with an IPv4 header")
    total = IPV4_HEADER_LEN + len(inner)
    if total > 0xFFFF:
        raise WireError(f"an inner packet of {len(inner)} bytes cannot be encapsulated")
    tos = inner[1]
    flags = _DF if inner[6] & 0x40 else 0
    addrs = int.from_bytes(outer_src, "big") + int.from_bytes(outer_dst, "big")
    hcsum = _fold_checksum(0x4500 + tos + total + ident + flags + (ttl << 8) + PROTO_IPIP + addrs)
    try:
        head = _IP.pack(
            0x45, tos, total, ident, flags, ttl, PROTO_IPIP, hcsum, outer_src, outer_dst
        )
    except struct.error as e:
        raise WireError(f"the identification or TTL is out of range ({e})") from None
    return head + inner


def decapsulate(packet: bytes) -> tuple[bytes, bytes, bytes]:
    """Split an IP-in-IP packet into ``(outer_src, outer_dst, inner)``.

    The outer header may carry options (the IHL is honoured).  The inner
    packet is returned as it is: :func:`parse_udp_packet` judges it.

    @raise WireError: not IPv4, a bad IHL, a total length other than the
        packet's, a fragment (the kernel reassembles before a raw socket
        sees the packet), a protocol other than 4, a bad header checksum,
        or too few bytes left for an inner IPv4 header.
    """
    size = len(packet)
    hlen = _check_ipv4(packet, size)
    if packet[9] != PROTO_IPIP:
        raise WireError(f"IP protocol {packet[9]} is not IP in IP (4)")
    if checksum(packet[:hlen]):
        raise WireError("the outer IPv4 header checksum is wrong")
    if size - hlen < IPV4_HEADER_LEN:
        raise WireError(f"{size - hlen} bytes after the outer header hold no inner IPv4 header")
    return packet[12:16], packet[16:20], packet[hlen:]
