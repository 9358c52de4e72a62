# -*- test-case-name: tests.test_netlink -*-
"""
Gratuitous ARP over an C{AF_PACKET} socket.

A home agent that starts (or stops) intercepting packets for a mobile node's
home address announces it on the home link (RFC 5944, 4.6), so that hosts
and routers there update their ARP caches at once instead of waiting for
their entries to expire. Like C{arping -U} and C{arping -A} do, both forms
are sent: an ARP request and an ARP reply, each with sender and target
protocol address equal to the announced address, to the broadcast address.

L{build_arp} and L{parse_arp} are pure helpers (Ethernet + ARP for IPv4).
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

ETH_P_ARP = 0x0806
"""Ethertype of ARP."""

ARP_REQUEST = 1
"""ARP operation: request."""

ARP_REPLY = 2
"""ARP operation: reply."""

BROADCAST = "ff:ff:ff:ff:ff:ff"
"""The Ethernet broadcast address."""

ZERO_MAC = "00:00:00:00:00:00"
"""The unknown hardware address (target of an announcement request)."""

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_MIN_FRAME = 60
"""Ethernet frames are padded to 60 bytes (without the FCS)."""


class ArpError(Exception):
    """A gratuitous ARP could not be sent; the message is one sentence for the operator."""


@dataclass(frozen=True)
class ArpPacket:
    """One Ethernet frame carrying an IPv4-over-Ethernet ARP packet."""

    eth_dst: str
    eth_src: str
    op: int
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str

    @property
    def is_gratuitous(self) -> bool:
        """Whether sender and target protocol addresses are equal (an announcement)."""
        return self.sender_ip == self.target_ip


def mac_to_bytes(mac: str) -> bytes:
    """C{"aa:bb:cc:dd:ee:ff"} (or with C{-}) to 6 bytes; C{ValueError} otherwise."""
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"not an Ethernet address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def mac_to_str(raw: bytes) -> str:
    """6 bytes to C{"aa:bb:cc:dd:ee:ff"}."""
    return ":".join(f"{b:02x}" for b in raw)


def build_arp(
    op: int,
    sender_mac: str,
    sender_ip: str,
    target_mac: str,
    target_ip: str,
    *,
    eth_dst: str = BROADCAST,
    eth_src: str | None = None,
) -> bytes:
    """
    An Ethernet frame (padded to 60 bytes) carrying one ARP packet for IPv4.

    C{eth_src} defaults to C{sender_mac}.
    """
    eth = _ETH.pack(mac_to_bytes(eth_dst), mac_to_bytes(eth_src or sender_mac), ETH_P_ARP)
    arp = _ARP.pack(
        1,  # hardware type: Ethernet
        0x0800,  # protocol type: IPv4
        6,
        4,
        op,
        mac_to_bytes(sender_mac),
        socket.inet_aton(sender_ip),
        mac_to_bytes(target_mac),
        socket.inet_aton(target_ip),
    )
    return (eth + arp).ljust(_MIN_FRAME, b"\0")


def parse_arp(frame: bytes) -> ArpPacket:
    """
    Decode an Ethernet frame carrying an IPv4-over-Ethernet ARP packet.

    @raise ValueError: if C{frame} is anything else or too short.
    """
    if len(frame) < _ETH.size + _ARP.size:
        raise ValueError(f"frame too short for ARP ({len(frame)} bytes)")
    dst, src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        raise ValueError(f"not an ARP frame (ethertype 0x{ethertype:04x})")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        raise ValueError("not an IPv4-over-Ethernet ARP packet")
    return ArpPacket(
        eth_dst=mac_to_str(dst),
        eth_src=mac_to_str(src),
        op=op,
        sender_mac=mac_to_str(sha),
        sender_ip=socket.inet_ntoa(spa),
        target_mac=mac_to_str(tha),
        target_ip=socket.inet_ntoa(tpa),
    )


def gratuitous_frames(ip: str, mac: str, eth_src: str | None = None) -> list[bytes]:
    """
    The two announcement frames for C{ip} at C{mac}, as C{arping -U} and C{-A} send them.

    The request carries a zero target hardware address (RFC 5227 announcement,
    as the kernel's own C{arp_notify} sends); the reply carries the sender's.
    C{eth_src} (default C{mac}) is the Ethernet source: the sending interface's
    own address, so that switches keep learning the sender where it is.
    """
    return [
        build_arp(ARP_REQUEST, mac, ip, ZERO_MAC, ip, eth_src=eth_src),
        build_arp(ARP_REPLY, mac, ip, mac, ip, eth_src=eth_src),
    ]


def interface_mac(ifname: str) -> str:
    """The Ethernet address of C{ifname} (from sysfs of the current network namespace)."""
    path = Path("/sys/class/net") / ifname / "address"
    try:
        mac = path.read_text().strip()
    except FileNotFoundError:
        raise ArpError(f"no network interface named {ifname!r}") from None
    if not mac or len(mac.split(":")) != 6:
        raise ArpError(f"interface {ifname} has no Ethernet address (not an Ethernet link)")
    return mac


def send_gratuitous_arp(ifname: str, ip: str, mac: str | None = None, count: int = 1) -> None:
    """
    Announce that C{ip} is at C{mac} (default: C{ifname}'s own address) on C{ifname}.

    The Ethernet source is always C{ifname}'s own address; C{mac} only goes
    in the ARP sender field (a home agent restoring a returning mobile node's
    own address, RFC 5944 4.6, must not make switches move that address).

    Sends C{count} rounds of the request and the reply form back to back;
    spacing repeated announcements (RFC 5944 suggests a few, a second apart)
    is the caller's business, with C{reactor.callLater}.

    @raise ArpError: when the interface is missing or raw sockets are not permitted.
    """
    ip = str(IPv4Address(ip))  # ValueError for a bad address, before any socket
    own = interface_mac(ifname)
    frames = gratuitous_frames(ip, mac or own, eth_src=own)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    except PermissionError:
        raise ArpError(
            f"sending a gratuitous ARP on {ifname} needs CAP_NET_RAW (run as root)"
        ) from None
    try:
        try:
            sock.bind((ifname, ETH_P_ARP))
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise ArpError(f"no network interface named {ifname!r}") from None
            raise ArpError(f"cannot send ARP on {ifname}: {e.strerror}") from None
        for _ in range(count):
            for frame in frames:
                try:
                    sock.send(frame)
                except OSError as e:
                    raise ArpError(
                        f"sending a gratuitous ARP for {ip} on {ifname} failed: {e.strerror}"
                    ) from None
    finally:
        sock.close()
