"""The tunnel engine: routing, sealing, opening, reverse-tunnel checks, counters."""

from __future__ import annotations

import os
import struct
from ipaddress import IPv4Address

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines.tunnel import TunnelEngine
from smobility.wire import ipv4
from smobility.wire.esp import NAT_KEEPALIVE, NON_ESP_MARKER, InboundSA, OutboundSA

HOA = IPv4Address("10.77.0.10")
CN = IPv4Address("10.77.0.100")
HA = "172.31.0.2"
COA = "192.168.101.150"
K1 = os.urandom(20)
K2 = os.urandom(20)


def udp_packet(src: IPv4Address, dst: IPv4Address, size: int = 100, df: bool = False) -> bytes:
    payload = struct.pack("!HHHH", 1234, 5678, 8 + size, 0) + b"x" * size
    return ipv4.ipv4_packet(src, dst, 17, payload, df=df)


def tcp_syn(src: IPv4Address, dst: IPv4Address, mss: int) -> bytes:
    options = struct.pack("!BBH", 2, 4, mss)
    header = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, (6 << 4), 0x02, 65535, 0, 0) + options
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, len(header))
    csum = ipv4.checksum(pseudo + header)
    header = header[:16] + struct.pack("!H", csum) + header[18:]
    return ipv4.ipv4_packet(src, dst, 6, header, df=True)


class TunnelPair:
    """A home agent engine and a client engine with matching SAs."""

    def __init__(self, mtu: int = 1438) -> None:
        self.clock = Clock()
        self.home = TunnelEngine(clock=self.clock, mtu=mtu, local_inner=IPv4Address(HA))
        self.client = TunnelEngine(clock=self.clock, mtu=mtu, local_inner=HOA)
        self.home.install(
            "laptop", HOA, InboundSA.from_keymat(0x1001, K1), OutboundSA.from_keymat(0x2001, K2),
            (COA, 4500), {COA},
        )  # fmt: skip
        self.client.install(
            "laptop", None, InboundSA.from_keymat(0x2001, K2), OutboundSA.from_keymat(0x1001, K1),
            (HA, 4500), {HA},
        )  # fmt: skip

    def home_to_client(self, packets: list[bytes]) -> list[bytes | None]:
        out: list[tuple[bytes, tuple[str, int]]] = []
        back: list[bytes] = []
        self.home.from_tun(packets, out, back)
        return [self.client.from_udp(d, (HA, 4500)) for d, _ in out]

    def client_to_home(
        self, packets: list[bytes], source: tuple[str, int] = (COA, 4500)
    ) -> list[bytes | None]:
        out: list[tuple[bytes, tuple[str, int]]] = []
        self.client.from_tun(packets, out, [])
        return [self.home.from_udp(d, source) for d, _ in out]


class TunnelEngineTests(SynchronousTestCase):
    def test_both_directions(self) -> None:
        t = TunnelPair()
        down = udp_packet(CN, HOA)
        up = udp_packet(HOA, CN)
        self.assertEqual(t.home_to_client([down, down]), [down, down])
        self.assertEqual(t.client_to_home([up]), [up])
        [route] = t.home.by_node.values()
        self.assertEqual((route.packets_out, route.packets_in), (2, 1))
        self.assertEqual(route.outbound.seq, 2)

    def test_datagrams_go_to_the_route_address(self) -> None:
        t = TunnelPair()
        out: list[tuple[bytes, tuple[str, int]]] = []
        t.home.from_tun([udp_packet(CN, HOA)], out, [])
        self.assertEqual(out[0][1], (COA, 4500))
        self.assertEqual(struct.unpack("!I", out[0][0][:4])[0], 0x2001)

    def test_no_binding(self) -> None:
        t = TunnelPair()
        out: list[tuple[bytes, tuple[str, int]]] = []
        t.home.from_tun([udp_packet(CN, IPv4Address("10.77.0.11"))], out, [])
        self.assertEqual(out, [])
        self.assertEqual(t.home.counters["no_binding"], 1)

    def test_reverse_tunnel_source_check(self) -> None:
        """Only the registered care-of (or NAT) address may send (RFC 3024)."""
        t = TunnelPair()
        self.assertEqual(t.client_to_home([udp_packet(HOA, CN)], ("192.0.2.66", 4500)), [None])
        self.assertEqual(t.home.counters["bad_source"], 1)

    def test_spoofed_inner_source(self) -> None:
        t = TunnelPair()
        self.assertEqual(t.client_to_home([udp_packet(IPv4Address("10.77.0.99"), CN)]), [None])
        self.assertEqual(t.home.counters["spoofed_inner_source"], 1)

    def test_nat_port_learnt_from_authenticated_packet(self) -> None:
        t = TunnelPair()
        t.home.move("laptop", ("172.31.2.2", 4500), {"192.168.102.150", "172.31.2.2"}, "nat")
        dummy = t.client.dummy("laptop")
        assert dummy is not None
        self.assertIsNone(t.home.from_udp(dummy[0], ("172.31.2.2", 1025)))
        self.assertEqual(t.home.by_node["laptop"].addr, ("172.31.2.2", 1025))
        self.assertEqual(t.home.counters["dummies_in"], 1)
        # A forged packet from the same address cannot move it.
        second = t.client.dummy("laptop")
        assert second is not None
        forged = bytearray(second[0])
        forged[-1] ^= 1
        t.home.from_udp(bytes(forged), ("172.31.2.2", 2000))
        self.assertEqual(t.home.by_node["laptop"].addr, ("172.31.2.2", 1025))
        self.assertEqual(t.home.counters["bad_icv"], 1)

    def test_replay_and_tamper_counted(self) -> None:
        t = TunnelPair()
        out: list[tuple[bytes, tuple[str, int]]] = []
        t.client.from_tun([udp_packet(HOA, CN)], out, [])
        data = out[0][0]
        self.assertIsNotNone(t.home.from_udp(data, (COA, 4500)))
        self.assertIsNone(t.home.from_udp(data, (COA, 4500)))
        self.assertEqual(t.home.counters["replayed"], 1)
        self.assertEqual(t.home.by_node["laptop"].drops["replayed"], 1)

    def test_unknown_spi_logged_rate_limited(self) -> None:
        t = TunnelPair()
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        bogus = struct.pack("!II", 0x9999, 1) + bytes(40)
        for _ in range(50):
            t.home.from_udp(bogus, (COA, 4500))
        t.clock.advance(11)
        t.home.from_udp(bogus, (COA, 4500))
        self.assertEqual(t.home.counters["unknown_spi"], 51)
        logged = [e for e in events if "unknown SPI" in str(e.get("log_format", ""))]
        self.assertEqual(len(logged), 2)
        self.assertEqual(logged[1]["more"], 49)

    def test_keepalive_and_marker(self) -> None:
        got: list[bytes] = []
        t = TunnelPair()
        t.home.on_ike = lambda msg, addr: got.append(msg)
        self.assertIsNone(t.home.from_udp(NAT_KEEPALIVE, (COA, 4500)))
        self.assertEqual(t.home.counters["keepalives_in"], 1)
        self.assertIsNone(t.home.from_udp(NON_ESP_MARKER + b"ike" * 10, (COA, 4500)))
        self.assertEqual(got, [b"ike" * 10])
        self.assertIsNone(t.home.from_udp(b"\x01\x02", (COA, 4500)))
        self.assertEqual(t.home.counters["malformed"], 1)

    def test_too_big_with_df_gets_icmp(self) -> None:
        t = TunnelPair(mtu=1000)
        big = udp_packet(CN, HOA, size=1200, df=True)
        out: list[tuple[bytes, tuple[str, int]]] = []
        back: list[bytes] = []
        t.home.from_tun([big], out, back)
        self.assertEqual(out, [])
        [icmp] = back
        msg = ipv4.parse_icmp(icmp)
        self.assertTrue(msg.is_frag_needed)
        self.assertEqual(msg.next_hop_mtu, 1000)
        self.assertEqual(ipv4.dst_of(icmp), CN.packed)
        # Without DF it is sent (the outer packet is fragmented on the way).
        t.home.from_tun([udp_packet(CN, HOA, size=1200)], out, back)
        self.assertEqual(len(out), 1)

    def test_mss_clamped_both_directions(self) -> None:
        t = TunnelPair(mtu=1400)
        syn = tcp_syn(CN, HOA, 1460)
        [got] = t.home_to_client([syn])
        assert got is not None
        self.assertEqual(struct.unpack("!H", got[42:44])[0], 1360)
        [back] = t.client_to_home([tcp_syn(HOA, CN, 1460)])
        assert back is not None
        self.assertEqual(struct.unpack("!H", back[42:44])[0], 1360)
        # The TCP checksum still verifies.
        seg = got[20:]
        pseudo = got[12:20] + struct.pack("!BBH", 0, 6, len(seg))
        self.assertEqual(ipv4.checksum(pseudo + seg), 0)

    def test_relay_path_carries_smaller_packets(self) -> None:
        """On a relay path (IP-in-IP adds 20 bytes) the route's MTU and MSS are 20 smaller."""
        t = TunnelPair(mtu=1400)
        t.home.move("laptop", ("172.31.4.2", 4500), {"172.31.4.2"}, "relay")
        self.assertEqual(t.home.by_node["laptop"].mtu, 1380)
        [got] = t.home_to_client([tcp_syn(CN, HOA, 1460)])
        assert got is not None
        self.assertEqual(struct.unpack("!H", got[42:44])[0], 1340)
        # A DF packet that fits the tunnel but not the relay path still goes (a
        # connection made before the move keeps working, fragmented on the way).
        out: list[tuple[bytes, tuple[str, int]]] = []
        back: list[bytes] = []
        t.home.from_tun([udp_packet(CN, HOA, size=1360, df=True)], out, back)
        self.assertEqual((len(out), back), (1, []))
        # Back on a direct path: the whole MTU again.
        t.home.move("laptop", (COA, 4500), {COA}, "direct")
        self.assertEqual(t.home.by_node["laptop"].mtu, 1400)
        [got] = t.home_to_client([tcp_syn(CN, HOA, 1460)])
        assert got is not None
        self.assertEqual(struct.unpack("!H", got[42:44])[0], 1360)
        # The client names its path itself (a forwarding relay's port is the home agent's).
        t.client.set_path("laptop", "relay")
        self.assertEqual(t.client.by_node["laptop"].mtu, 1380)

    def test_sa_exhaustion_stops_traffic_with_one_log(self) -> None:
        t = TunnelPair()
        route = t.home.by_node["laptop"]
        route.outbound = OutboundSA.from_keymat(0x2001, K2, seq=0xFFFFFFFF)
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        out: list[tuple[bytes, tuple[str, int]]] = []
        t.home.from_tun([udp_packet(CN, HOA)] * 3, out, [])
        self.assertEqual(out, [])
        self.assertEqual(t.home.counters["sa_expired"], 3)
        self.assertEqual(len([e for e in events if "stopped" in str(e.get("log_format"))]), 1)

    def test_remove_and_reinstall_keeps_sa_state(self) -> None:
        t = TunnelPair()
        t.home_to_client([udp_packet(CN, HOA)])
        route = t.home.by_node["laptop"]
        inbound, outbound = route.inbound, route.outbound
        t.home.remove("laptop")
        self.assertEqual(t.home.inbound, {})
        t.home.install("laptop", HOA, inbound, outbound, (COA, 4500), {COA})
        self.assertEqual(t.home_to_client([udp_packet(CN, HOA)]), [udp_packet(CN, HOA)])
        self.assertEqual(t.home.by_node["laptop"].outbound.seq, 2)

    def test_not_ipv4_from_tun(self) -> None:
        t = TunnelPair()
        out: list[tuple[bytes, tuple[str, int]]] = []
        t.home.from_tun([b"\x60" + bytes(39), b"short"], out, [])
        self.assertEqual(t.home.counters["tun_not_ipv4"], 2)

    def test_from_udp_many(self) -> None:
        """A batch is handled datagram by datagram, as from_udp would, in order."""
        got: list[bytes] = []
        t = TunnelPair()
        t.home.on_ike = lambda msg, addr: got.append(msg)
        ups = [udp_packet(HOA, CN, size=n) for n in (10, 20, 30)]
        out: list[tuple[bytes, tuple[str, int]]] = []
        t.client.from_tun(ups + [udp_packet(IPv4Address("10.77.0.99"), CN)], out, [])
        batch = [
            (out[0][0], (COA, 4500)),
            (NAT_KEEPALIVE, (COA, 4500)),
            (out[1][0], (COA, 4500)),
            (out[1][0], (COA, 4500)),  # a replay
            (NON_ESP_MARKER + b"ike" * 10, (COA, 4500)),
            (out[3][0], (COA, 4500)),  # spoofed inner source
            (struct.pack("!II", 0x9999, 1) + bytes(40), (COA, 4500)),
            (out[2][0], (COA, 4501)),  # the NAT port moved
        ]
        self.assertEqual(t.home.from_udp_many(batch), ups)
        self.assertEqual(got, [b"ike" * 10])
        c = t.home.counters
        self.assertEqual(
            (c["keepalives_in"], c["replayed"], c["spoofed_inner_source"], c["unknown_spi"]),
            (1, 1, 1, 1),
        )
        route = t.home.by_node["laptop"]
        self.assertEqual(route.addr, (COA, 4501))
        self.assertEqual((route.packets_in, route.bytes_in), (3, sum(map(len, ups))))
        self.assertEqual(t.home.from_udp_many([]), [])

    def test_mss_clamp_unusual_headers(self) -> None:
        """A SYN with IP options is still clamped; a short TCP packet passes untouched."""
        t = TunnelPair(mtu=1400)
        syn = tcp_syn(CN, HOA, 1460)
        with_options = bytes((0x46,)) + syn[1:2] + struct.pack("!H", len(syn) + 4) + syn[4:20]
        with_options += b"\x01\x01\x01\x00" + syn[20:]
        with_options = with_options[:10] + b"\0\0" + with_options[12:]
        csum = ipv4.checksum(with_options[:24])
        with_options = with_options[:10] + struct.pack("!H", csum) + with_options[12:]
        [got] = t.home_to_client([with_options])
        assert got is not None
        self.assertEqual(struct.unpack("!H", got[46:48])[0], 1360)
        short = ipv4.ipv4_packet(CN, HOA, 6, b"\0" * 8)
        self.assertEqual(t.home_to_client([short]), [short])
        self.assertEqual(t.home.counters["mss_clamped"], 1)


class RekeyTests(SynchronousTestCase):
    """Make before break: packets under the old inbound SA pass until it is retired."""

    def test_old_sa_accepted_until_retired(self) -> None:
        t = TunnelPair()
        # Packets sealed by the client under the old SA, still in flight.
        in_flight: list[tuple[bytes, tuple[str, int]]] = []
        t.client.from_tun([udp_packet(HOA, CN)] * 3, in_flight, [])
        k3, k4 = os.urandom(20), os.urandom(20)
        new_in, new_out = InboundSA.from_keymat(0x1002, k3), OutboundSA.from_keymat(0x2002, k4)
        t.home.rekey("laptop", new_in, new_out)
        route = t.client.by_node["laptop"]
        t.client.rekey(
            "laptop", InboundSA.from_keymat(0x2002, k4), OutboundSA.from_keymat(0x1002, k3)
        )
        del route
        # Old packets: accepted. New packets: accepted, under the new SA.
        for datagram, _ in in_flight:
            self.assertIsNotNone(t.home.from_udp(datagram, (COA, 4500)))
        self.assertEqual(t.client_to_home([udp_packet(HOA, CN)]), [udp_packet(HOA, CN)])
        out: list[tuple[bytes, tuple[str, int]]] = []
        t.home.from_tun([udp_packet(CN, HOA)], out, [])
        self.assertEqual(struct.unpack("!I", out[0][0][:4])[0], 0x2002)
        self.assertEqual(t.home.counters["unknown_spi"], 0)
        # Retired: the old SPI is unknown from now on.
        late: list[tuple[bytes, tuple[str, int]]] = []
        old_client = OutboundSA.from_keymat(0x1001, K1, seq=100)
        late.append((old_client.seal(udp_packet(HOA, CN)), (HA, 4500)))
        t.home.retire("laptop", 0x1001)
        self.assertIsNone(t.home.from_udp(late[0][0], (COA, 4500)))
        self.assertEqual(t.home.counters["unknown_spi"], 1)
        self.assertEqual(t.home.by_node["laptop"].inbound.spi, 0x1002)
