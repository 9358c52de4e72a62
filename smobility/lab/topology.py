# -*- test-case-name: tests.test_lab -*-
"""
The lab's topology as data: namespaces (roles), links, routes, LANs with DHCP.

Nothing here touches the system; L{smobility.lab.namespaces.Lab} builds what
L{TOPOLOGY} describes.  A new visited network is one more L{Network} (with its
bridge C{br-<name>}), its router's two L{Link}s, a route in C{inet} if it is
routed, a L{Masquerade} if it sits behind NAT and a L{Firewall} if it filters.

Picture::

    cn  10.77.0.100 -+-- br-home --+-- ha lan0 10.77.0.1     | ha wan0 172.31.0.2 --+-- inet
    mux 10.77.0.2 ---+  (in sw)    +-- gw lan0 10.77.0.3     | gw wan0 172.31.5.2 --+
    mn uplink ~~~~~~~+                                        rl wan0 172.31.4.2 --+
      (mn-port moves +-- br-v1 ----+-- v1 lan0 192.168.101.1 | v1 wan0 172.31.1.2 --+
       between the   +-- br-v2 ----+-- v2 lan0 192.168.102.1 | v2 wan0 172.31.2.2 --+
       bridges)      +-- br-v3 ----+-- v3 lan0 192.168.103.1 | v3 wan0 172.31.3.2 --+
                     +-- br-v4 ----+-- v4 lan0 192.168.104.1 | v4 wan0 172.31.6.2 --+
                     +-- br-v5 ----+-- v5 lan0 192.168.105.1 | v5 wan0 172.31.7.2 --+

    v2-v5 masquerade their LANs; v3 lets out only its proxy host, v4 blocks
    the home agent, v5 lets out only IKE/IPsec to the gateway gw; the home
    perimeter on ha admits from the relay rl only IP protocol 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

# Roles: the namespace of a role is f"{prefix}-{role}".
SW = "sw"
"""The switching fabric: the LAN bridges and every LAN-side veth peer."""
HA = "ha"
"""The home agent host, also the home LAN's router."""
CN = "cn"
"""The correspondent host on the home LAN."""
INET = "inet"
"""The internet router between the home agent and the visited networks."""
V1 = "v1"
"""The router of visited network 1 (routed, public-like addresses)."""
V2 = "v2"
"""The router of visited network 2 (behind NAT)."""
MN = "mn"
"""The mobile node."""
V3 = "v3"
"""The router of visited network 3: a strict firewall; only its proxy host gets out."""
PROXY = "proxy"
"""The HTTP proxy host of visited network 3 (Squid or tinyproxy run there)."""
MUX = "mux"
"""The multiplexer host on the home LAN (HTTP(S) tunnel server and SOCKS5 ingress)."""
RELAY = "rl"
"""The relay host (a Mobile IP foreign agent) on the public side of the home firewall."""
GW = "gw"
"""The IPsec VPN gateway: internet side and home LAN side, forwarding."""
V4 = "v4"
"""The router of visited network 4: blocks the home agent (relay and gateway stay reachable)."""
V5 = "v5"
"""The router of visited network 5: lets out only IKE/IPsec to the gateway."""

MN_UPLINK = "uplink"
"""The mobile node's only interface (a veth)."""
MN_PORT = "mn-port"
"""The peer of the mobile node's uplink, in C{sw}: attached to one bridge at a time."""
MN_MAC = "02:00:00:00:00:10"
"""The fixed MAC address of the mobile node's uplink (the home DHCP reservation's key)."""

DHCP_LEASE = "2m"
"""Lease time handed out by every lab DHCP server (dnsmasq's minimum)."""


@dataclass(frozen=True)
class Link:
    """
    One veth pair from C{role}'s C{ifname} to C{peer_role}'s C{peer_ifname}.

    C{bridge}, when set, is the bridge in C{peer_role} (always C{sw}) that the
    peer end is attached to.
    """

    role: str
    ifname: str
    address: str | None
    peer_role: str
    peer_ifname: str
    peer_address: str | None = None
    bridge: str | None = None
    mac: str | None = None


@dataclass(frozen=True)
class Route:
    """A static route in C{role}: C{destination} (or C{"default"}) via C{via}."""

    role: str
    destination: str
    via: str


@dataclass(frozen=True)
class Reservation:
    """A fixed DHCP address for one MAC address."""

    mac: str
    address: str


@dataclass(frozen=True)
class Network:
    """
    A LAN the mobile node can join: a bridge in C{sw} and a router running DHCP.

    C{name} is what L{Lab.move} takes; the bridge is C{br-<name>}.
    """

    name: str
    router_role: str
    router_ifname: str
    router_address: str
    subnet: str
    dhcp_first: str
    dhcp_last: str
    reservations: tuple[Reservation, ...] = ()
    lease: str = DHCP_LEASE

    @property
    def bridge(self) -> str:
        """The bridge in C{sw} holding this LAN's ports."""
        return f"br-{self.name}"

    @property
    def network(self) -> IPv4Network:
        """The LAN's IPv4 network."""
        return IPv4Network(self.subnet)

    @property
    def netmask(self) -> str:
        """The LAN's netmask in dotted form (dnsmasq's C{--dhcp-range} wants it)."""
        return str(self.network.netmask)


@dataclass(frozen=True)
class Masquerade:
    """Source NAT in C{role}: C{source} leaving by C{out_ifname} takes its address."""

    role: str
    source: str
    out_ifname: str


@dataclass(frozen=True)
class Firewall:
    """nftables chains for C{role}, put in the lab's table (named after the prefix).

    C{chains} is the body of the table: chain definitions in nft syntax.
    """

    role: str
    chains: str


@dataclass(frozen=True)
class Topology:
    """Everything the lab builds, in the order it is built."""

    roles: tuple[str, ...]
    links: tuple[Link, ...]
    routes: tuple[Route, ...]
    forwarding: frozenset[str]
    networks: tuple[Network, ...]
    masquerades: tuple[Masquerade, ...] = ()
    bridges: tuple[str, ...] = field(default=())
    firewalls: tuple[Firewall, ...] = ()

    def network(self, name: str) -> Network:
        """
        Return the LAN called C{name} (C{"home"}, C{"v1"}, ...).

        @raise KeyError: there is no such LAN.
        """
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(name)

    def network_of_bridge(self, bridge: str) -> Network | None:
        """Return the LAN whose bridge is C{bridge}, or C{None}."""
        for net in self.networks:
            if net.bridge == bridge:
                return net
        return None

    def all_bridges(self) -> tuple[str, ...]:
        """The bridges in C{sw}: one per LAN, plus any extra ones."""
        names = [net.bridge for net in self.networks]
        names.extend(b for b in self.bridges if b not in names)
        return tuple(names)


# Addresses (also exported as Lab.* constants).
HOME_NET = "10.77.0.0/24"
HA_LAN = "10.77.0.1"
HOA = "10.77.0.10"
CN_ADDR = "10.77.0.100"
HA_PUBLIC = "172.31.0.2"
INET_HA = "172.31.0.1"
INET_V1 = "172.31.1.1"
INET_V2 = "172.31.2.1"
V1_PUBLIC = "172.31.1.2"
V2_PUBLIC = "172.31.2.2"
V1_NET = "192.168.101.0/24"
V1_LAN = "192.168.101.1"
V2_NET = "192.168.102.0/24"
V2_LAN = "192.168.102.1"
INET_V3 = "172.31.3.1"
V3_PUBLIC = "172.31.3.2"
V3_NET = "192.168.103.0/24"
V3_LAN = "192.168.103.1"
PROXY_ADDR = "192.168.103.3"
MUX_ADDR = "10.77.0.2"
SOCKS_PORT = 1080
MUX_PORT = 8443
RELAY_PUBLIC = "172.31.4.2"
INET_RL = "172.31.4.1"
GW_PUBLIC = "172.31.5.2"
INET_GW = "172.31.5.1"
GW_LAN = "10.77.0.3"
VPN_POOL = "10.78.0.0/24"
INET_V4 = "172.31.6.1"
V4_PUBLIC = "172.31.6.2"
V4_NET = "192.168.104.0/24"
V4_LAN = "192.168.104.1"
INET_V5 = "172.31.7.1"
V5_PUBLIC = "172.31.7.2"
V5_NET = "192.168.105.0/24"
V5_LAN = "192.168.105.1"
IKE_PORT = 500
NATT_PORT = 4500
IPIP_PROTOCOL = 4

# Visited network 3 lets nothing out but its proxy host (no UDP, no direct TCP).
V3_FIREWALL = f"""
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" ip saddr {PROXY_ADDR} accept
  }}
"""

# Visited network 4 blocks the home agent: nothing reaches its public address
# (nor the home LAN, which the internet routes through it), while the relay
# and the gateway stay reachable.
V4_FIREWALL = f"""
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip daddr {{ {HA_PUBLIC}, {HOME_NET} }} drop
  }}
"""

# Visited network 5 lets out only IKE and ESP-in-UDP to the VPN gateway: the
# gateway is the only way home from there.
V5_FIREWALL = f"""
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" ip daddr {GW_PUBLIC} udp dport {{ {IKE_PORT}, {NATT_PORT} }} accept
  }}
"""

# The home perimeter (on ha).  From the internet only TCP to the SOCKS5
# ingress of the multiplexer is forwarded into the home LAN (the home agent's
# own services on its public address are not forwarded traffic and stay
# open), and the home agent's LAN address is not reachable from outside.
# The relay (figure 6 of the seed) gets less: the home agent host accepts
# from it only IP-in-IP (protocol 4) to the public address, and nothing from
# it is forwarded at all.
HOME_PERIMETER = f"""
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "wan0" tcp dport {SOCKS_PORT} dnat to {MUX_ADDR}:{SOCKS_PORT}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    ip saddr {RELAY_PUBLIC} ip daddr {HA_PUBLIC} ip protocol {IPIP_PROTOCOL} accept
    ip saddr {RELAY_PUBLIC} drop
    iifname "wan0" ip daddr {HA_LAN} drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip saddr {RELAY_PUBLIC} drop
    iifname "wan0" oifname "lan0" ct state established,related accept
    iifname "wan0" oifname "lan0" ip daddr {MUX_ADDR} tcp dport {SOCKS_PORT} accept
    iifname "wan0" oifname "lan0" drop
  }}
"""

# The VPN gateway forwards into the home LAN only what arrives through its
# IPsec tunnels (strongSwan's kernel-libipsec hands decrypted packets in by a
# TUN device), never plain packets from the internet side.
GW_PERIMETER = """
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "wan0" oifname "lan0" drop
  }
"""

TOPOLOGY = Topology(
    roles=(SW, HA, CN, INET, V1, V2, V3, PROXY, MUX, RELAY, GW, V4, V5, MN),
    links=(
        # LAN side: every peer in sw, on its bridge.
        Link(HA, "lan0", f"{HA_LAN}/24", SW, "ha-lan", bridge="br-home"),
        Link(CN, "eth0", f"{CN_ADDR}/24", SW, "cn-eth0", bridge="br-home"),
        Link(V1, "lan0", f"{V1_LAN}/24", SW, "v1-lan", bridge="br-v1"),
        Link(V2, "lan0", f"{V2_LAN}/24", SW, "v2-lan", bridge="br-v2"),
        Link(V3, "lan0", f"{V3_LAN}/24", SW, "v3-lan", bridge="br-v3"),
        Link(PROXY, "eth0", f"{PROXY_ADDR}/24", SW, "proxy-eth0", bridge="br-v3"),
        Link(MUX, "eth0", f"{MUX_ADDR}/24", SW, "mux-eth0", bridge="br-home"),
        Link(GW, "lan0", f"{GW_LAN}/24", SW, "gw-lan", bridge="br-home"),
        Link(V4, "lan0", f"{V4_LAN}/24", SW, "v4-lan", bridge="br-v4"),
        Link(V5, "lan0", f"{V5_LAN}/24", SW, "v5-lan", bridge="br-v5"),
        # The mobile node starts detached (mn-port on no bridge, down).
        Link(MN, MN_UPLINK, None, SW, MN_PORT, mac=MN_MAC),
        # WAN side: point-to-point links to the internet router.
        Link(HA, "wan0", f"{HA_PUBLIC}/24", INET, "to-ha", f"{INET_HA}/24"),
        Link(V1, "wan0", f"{V1_PUBLIC}/24", INET, "to-v1", f"{INET_V1}/24"),
        Link(V2, "wan0", f"{V2_PUBLIC}/24", INET, "to-v2", f"{INET_V2}/24"),
        Link(V3, "wan0", f"{V3_PUBLIC}/24", INET, "to-v3", f"{INET_V3}/24"),
        Link(RELAY, "wan0", f"{RELAY_PUBLIC}/24", INET, "to-rl", f"{INET_RL}/24"),
        Link(GW, "wan0", f"{GW_PUBLIC}/24", INET, "to-gw", f"{INET_GW}/24"),
        Link(V4, "wan0", f"{V4_PUBLIC}/24", INET, "to-v4", f"{INET_V4}/24"),
        Link(V5, "wan0", f"{V5_PUBLIC}/24", INET, "to-v5", f"{INET_V5}/24"),
    ),
    routes=(
        Route(HA, "default", INET_HA),
        Route(CN, "default", HA_LAN),
        Route(V1, "default", INET_V1),
        Route(V2, "default", INET_V2),
        Route(V3, "default", INET_V3),
        Route(PROXY, "default", V3_LAN),
        Route(MUX, "default", HA_LAN),
        Route(RELAY, "default", INET_RL),
        Route(GW, "default", INET_GW),
        Route(V4, "default", INET_V4),
        Route(V5, "default", INET_V5),
        # The VPN gateway's clients are reached through it.
        Route(HA, VPN_POOL, GW_LAN),
        # V1 is routed (public-like); V2-V5 are not: only reachable through their NAT.
        Route(INET, V1_NET, V1_PUBLIC),
        # The home LAN is routed too: the perimeter firewall on ha, not a
        # missing route, is what keeps the internet out of it.
        Route(INET, HOME_NET, HA_PUBLIC),
    ),
    forwarding=frozenset({HA, INET, V1, V2, V3, GW, V4, V5}),
    networks=(
        Network(
            "home",
            HA,
            "lan0",
            HA_LAN,
            HOME_NET,
            "10.77.0.150",
            "10.77.0.199",
            reservations=(Reservation(MN_MAC, HOA),),
        ),
        Network("v1", V1, "lan0", V1_LAN, V1_NET, "192.168.101.100", "192.168.101.199"),
        Network("v2", V2, "lan0", V2_LAN, V2_NET, "192.168.102.100", "192.168.102.199"),
        Network("v3", V3, "lan0", V3_LAN, V3_NET, "192.168.103.100", "192.168.103.199"),
        Network("v4", V4, "lan0", V4_LAN, V4_NET, "192.168.104.100", "192.168.104.199"),
        Network("v5", V5, "lan0", V5_LAN, V5_NET, "192.168.105.100", "192.168.105.199"),
    ),
    masquerades=(
        Masquerade(V2, V2_NET, "wan0"),
        Masquerade(V3, V3_NET, "wan0"),
        Masquerade(V4, V4_NET, "wan0"),
        Masquerade(V5, V5_NET, "wan0"),
    ),
    firewalls=(
        Firewall(V3, V3_FIREWALL),
        Firewall(V4, V4_FIREWALL),
        Firewall(V5, V5_FIREWALL),
        Firewall(HA, HOME_PERIMETER),
        Firewall(GW, GW_PERIMETER),
    ),
)
"""The lab as the project uses it."""


def check(topology: Topology) -> None:
    """
    Check C{topology} for mistakes that would only show up half-way through a build.

    @raise ValueError: with a sentence saying what is wrong.
    """
    for link in topology.links:
        for role in (link.role, link.peer_role):
            if role not in topology.roles:
                raise ValueError(f"link {link.ifname}: unknown role {role!r}")
        for name in (link.ifname, link.peer_ifname):
            if not 0 < len(name) <= 15:
                raise ValueError(f"interface name {name!r} must be 1 to 15 characters")
        if link.bridge is not None and link.peer_role != SW:
            raise ValueError(f"link {link.ifname}: a bridged peer must live in {SW!r}")
        for addr in (link.address, link.peer_address):
            if addr is not None:
                IPv4Interface(addr)
    bridges = topology.all_bridges()
    for name in bridges:
        if len(name) > 15:
            raise ValueError(f"bridge name {name!r} is longer than 15 characters")
    for link in topology.links:
        if link.bridge is not None and link.bridge not in bridges:
            raise ValueError(f"link {link.ifname}: no bridge {link.bridge!r}")
    for net in topology.networks:
        first, last = IPv4Address(net.dhcp_first), IPv4Address(net.dhcp_last)
        if first not in net.network or last not in net.network or first > last:
            raise ValueError(f"network {net.name}: bad DHCP range {first}-{last}")
        for res in net.reservations:
            if IPv4Address(res.address) not in net.network:
                raise ValueError(f"network {net.name}: reservation {res.address} outside")
