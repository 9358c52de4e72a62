# -*- test-case-name: tests.test_relay_gateway -*-
"""The relay as its clients' IPsec VPN gateway (figure 7), in memory on ``task.Clock``.

Each client is an IKEv2 initiator made by
:func:`smobility.services.gateway.gateway_ike_config` (the settings its
:class:`~smobility.services.gateway.GatewayTunnel` uses for real) talking to
:class:`RelayGateway`'s responder as if over the relay's ESP port.  The home
agents are not run: what the relay sends home is collected as the IP-in-IP
adapter would get it, and replies are handed to :meth:`RelayGateway.from_home`
as the adapter would.  Inner packets are real IPv4/UDP, sealed and opened with
the CHILD_SAs' keys at the client.

No sockets, no root; every datagram goes through one queue that is pumped.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.config import (
    AuthKey,
    IKEParameters,
    RelayConfig,
    RelayHomeAgentConfig,
    RelayIKEConfig,
    VisitorConfig,
)
from smobility.engines.ike import ChildSA, IKEEvent, IKEFailed, Role, ts_host
from smobility.engines.relaynat import GATEWAY_PORTS
from smobility.services.dataplane import child_sas
from smobility.services.gateway import gateway_ike_config
from smobility.services.ike_service import IKEService
from smobility.services.relay_gateway import RelayGateway, virtual_addresses
from smobility.wire import ikev2, ipv4
from smobility.wire.esp import NAT_KEEPALIVE, NON_ESP_MARKER, InboundSA, OutboundSA
from smobility.wire.ipip import parse_udp_packet, udp_packet

RELAY = "203.0.113.5"
HA = "192.0.2.1"
HA2 = "192.0.2.2"
INSIDE = IPv4Address("10.77.0.1")
INSIDE2 = IPv4Address("10.77.0.2")
CORRESPONDENT = IPv4Address("10.77.0.200")
POOL = IPv4Network("10.79.0.0/24")
LAPTOP_VIP = IPv4Address("10.79.0.1")
PHONE_VIP = IPv4Address("10.79.0.2")
LAPTOP_IP = "198.51.100.7"
PHONE_IP = "198.51.100.8"
STRANGER_IP = "198.51.100.66"

LAPTOP_PSK = b"laptop-and-relay-share-this-secret"
PHONE_PSK = b"phone-and-relay-share-another-one"
RELAY_ID = "relay.example"
PARAMS = IKEParameters(("aes128gcm16-prfsha256-ecp256",), ("aes128gcm16",), 0, 0, 0)
# Where each client's IKE socket is bound (the relay sees it at its public address).
CLIENT_LOCAL = ("0.0.0.0", 4500)  # noqa: S104 - a name, nothing is bound
SPORT = 4500  # the client's inner source port (its own NAT-T port with home)


def _key(spi: int) -> AuthKey:
    return AuthKey(spi, bytes(range(16)))


def relay_config() -> RelayConfig:
    """A relay in gateway mode: two home agents with inside addresses, two VPN clients."""
    return RelayConfig(
        path=Path("/nonexistent/relay.toml"),
        listen=RELAY,
        port=434,
        address=IPv4Address(RELAY),
        home_agents=((IPv4Address(HA), _key(2000)), (IPv4Address(HA2), _key(2001))),
        visitors=(
            VisitorConfig("laptop", None, None, "laptop.example", "fqdn", LAPTOP_PSK),
            VisitorConfig("phone", None, None, "phone.example", "fqdn", PHONE_PSK),
        ),
        max_lifetime=600,
        pending_timeout=5.0,
        warnings=(),
        mode="gateway",
        esp_port=4500,
        ike=RelayIKEConfig(RELAY_ID, "fqdn", "psk", PARAMS, None, None, None, pool=POOL),
        home_agent_ike=(
            RelayHomeAgentConfig(IPv4Address(HA), _key(2000), HA, "ipv4", b"", INSIDE),
            RelayHomeAgentConfig(IPv4Address(HA2), _key(2001), HA2, "ipv4", b"", INSIDE2),
        ),
    )


class Client:
    """A VPN client's IKE initiator towards the relay, and what reaches it."""

    def __init__(self, harness: Harness, ip: str, port: int, identity: str, psk: bytes) -> None:
        self.harness = harness
        self.addr = (ip, port)
        config, check = gateway_ike_config(
            identity=identity, gateway_identity=RELAY_ID, clock=harness.clock, psk=psk,
            liveness=None,
        )  # fmt: skip
        # As GatewayTunnel does: everything on the one socket, to the gateway's 4500.
        config = replace(config, nat_t_port=4500, peer_nat_t_port=4500)
        self.children: list[ChildSA] = []
        self.down: list[tuple[ChildSA, str]] = []
        self.events: list[IKEEvent] = []
        self.esp: list[bytes] = []
        self.other: list[bytes] = []
        self.sas: tuple[InboundSA, OutboundSA] | None = None
        self.ike = IKEService(
            Role.INITIATOR, config, harness.clock, send_nat_t=self._send, send_plain=self._send,
            cert_check=check, on_up=self._up, on_down=lambda c, why: self.down.append((c, why)),
            on_event=self.events.append,
        )  # fmt: skip

    def _up(self, child: ChildSA) -> None:
        self.children.append(child)
        self.sas = child_sas(child)

    def _send(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, addr in datagrams:
            assert addr == (RELAY, 4500), addr
            assert data.startswith(NON_ESP_MARKER), "IKE on the NAT-T port carries the marker"
            self.harness.later(partial(self.harness.gateway.from_clients, [(data, self.addr)]))

    def deliver(self, data: bytes) -> None:
        """A datagram from the relay's ESP port: IKE to the engine, ESP kept."""
        if data.startswith(NON_ESP_MARKER):
            self.ike.receive(data[len(NON_ESP_MARKER) :], (RELAY, 4500), CLIENT_LOCAL)
        elif len(data) >= 8:
            self.esp.append(data)
        else:
            self.other.append(data)

    def start(self) -> None:
        """Start IKE with the relay and carry it to its end."""
        self.ike.initiate((RELAY, 4500), local=CLIENT_LOCAL)
        self.harness.pump()

    @property
    def child(self) -> ChildSA:
        """The CHILD_SA in use."""
        assert self.children, "the tunnel never came up"
        return self.children[-1]

    @property
    def vip(self) -> IPv4Address:
        """Our virtual address, from the relay's CP reply."""
        vip = self.child.internal_address
        assert vip is not None, "no virtual address was given"
        return vip

    def send_inner(self, inner: bytes) -> None:
        """Seal ``inner`` under the CHILD_SA with the relay and send it to the relay."""
        assert self.sas is not None
        self.harness.gateway.from_clients([(self.sas[1].seal(inner), self.addr)])
        self.harness.pump()

    def send_udp(
        self,
        payload: bytes,
        dst: IPv4Address,
        dport: int,
        *,
        sport: int = SPORT,
        src: IPv4Address | None = None,
    ) -> None:
        """One inner UDP datagram from our virtual address (or ``src``), sealed, to the relay."""
        source = self.vip if src is None else src
        self.send_inner(udp_packet(source.packed, sport, dst.packed, dport, payload))

    def open(self, esp: bytes) -> bytes:
        """Open ESP the relay sent us (with the CHILD_SA's inbound keys)."""
        assert self.sas is not None
        return self.sas[0].open(esp)

    def received(self) -> list[tuple[IPv4Address, int, IPv4Address, int, bytes]]:
        """Every ESP packet the relay sent us so far, opened and parsed as IPv4/UDP."""
        out = []
        for esp in self.esp:
            src, sport, dst, dport, payload = parse_udp_packet(self.open(esp))
            out.append((IPv4Address(src), sport, IPv4Address(dst), dport, payload))
        return out


class Harness:
    """VPN client(s) and the relay as their gateway, joined by one queue; home collected."""

    def __init__(self, test: SynchronousTestCase, cfg: RelayConfig | None = None) -> None:
        self.test = test
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.queue: deque[Callable[[], None]] = deque()
        self.clients: dict[tuple[str, int], Client] = {}
        #: What the relay sent home: (payload, relay port, home agent, its port).
        self.home: list[tuple[bytes, int, str, int]] = []
        self.gateway = RelayGateway(
            cfg or relay_config(), self.clock, send_clients=self._to_clients,
            send_home=self.home.extend,
        )  # fmt: skip
        test.addCleanup(self.gateway.flows.stop)

    def _to_clients(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, addr in datagrams:
            client = self.clients[addr]
            self.later(partial(client.deliver, data))

    def client(self, ip: str, identity: str, psk: bytes, port: int = 4500) -> Client:
        """A new client at ``ip``:``port`` (as the relay sees it)."""
        c = self.clients[(ip, port)] = Client(self, ip, port, identity, psk)
        return c

    def laptop(self) -> Client:
        """The laptop, its tunnel up."""
        c = self.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        c.start()
        self.test.assertEqual(len(c.children), 1, c.events)
        return c

    def phone(self) -> Client:
        """The phone (behind a NAT: another outer port), its tunnel up."""
        c = self.client(PHONE_IP, "phone.example", PHONE_PSK, port=61000)
        c.start()
        self.test.assertEqual(len(c.children), 1, c.events)
        return c

    def reply(self, port: int, payload: bytes, source: tuple[str, int]) -> None:
        """A datagram from a home agent, out of IP-in-IP, to the relay's ``port``."""
        self.gateway.from_home([(port, payload, source)])
        self.pump()

    def later(self, call: Callable[[], None]) -> None:
        """Deliver at the next :meth:`pump` (no re-entry into a sender)."""
        self.queue.append(call)

    def pump(self) -> None:
        """Deliver until nothing is in flight."""
        for _ in range(10_000):
            if not self.queue:
                return
            self.queue.popleft()()
        self.test.fail("the datagrams never stop")

    def reseal(self) -> dict[str, int]:
        """The re-sealer's totals."""
        return dict(self.gateway.reseal.counters)

    def flows(self) -> dict[str, int]:
        """The flow table's totals."""
        return dict(self.gateway.flows.counters)


def _failures(events: list[IKEEvent]) -> list[IKEFailed]:
    return [e for e in events if isinstance(e, IKEFailed)]


class VirtualAddressTests(SynchronousTestCase):
    """Each visitor's virtual address is fixed by its place in the configuration."""

    def test_pool_hosts_in_order(self) -> None:
        self.assertEqual(
            virtual_addresses(relay_config()), {"laptop": LAPTOP_VIP, "phone": PHONE_VIP}
        )

    def test_no_pool_refused(self) -> None:
        """A relay without [ike] pool cannot be a VPN gateway."""
        cfg = relay_config()
        assert cfg.ike is not None
        no_pool = replace(cfg, ike=replace(cfg.ike, pool=None))
        self.assertRaises(ValueError, RelayGateway, no_pool, Clock(),
                          send_clients=print, send_home=print)  # fmt: skip
        self.assertRaises(ValueError, RelayGateway, replace(cfg, ike=None), Clock(),
                          send_clients=print, send_home=print)  # fmt: skip


class TunnelUpTests(SynchronousTestCase):
    """IKEv2 with a shared key: a virtual address by CP and narrowed selectors."""

    def test_up_with_psk(self) -> None:
        h = Harness(self)
        c = h.laptop()
        child = c.child
        # CP: the pool's first host address.
        self.assertEqual(child.internal_address, LAPTOP_VIP)
        # Narrowed: our side is the virtual address only, theirs the inside addresses only.
        self.assertEqual(child.local_ts, (ts_host(LAPTOP_VIP),))
        self.assertEqual(set(child.remote_ts), {ts_host(INSIDE), ts_host(INSIDE2)})
        self.assertEqual(len(child.remote_ts), 2)
        self.assertEqual(_failures(c.events), [])
        # The relay: a "plain" visitor with the virtual address, on the client's SAs.
        v = h.gateway.reseal.visitors["laptop"]
        self.assertTrue(v.plain)
        self.assertEqual(v.home_address, LAPTOP_VIP.packed)
        self.assertIsNone(v.home)
        assert v.client is not None
        self.assertEqual(v.client.inbound.spi, child.outbound_spi)
        self.assertEqual(v.client.outbound.spi, child.inbound_spi)
        self.assertEqual(v.client.addr, (LAPTOP_IP, 4500))
        # Flows may now be made from the virtual address, for the laptop only.
        self.assertEqual(h.gateway.flows.allowed[str(LAPTOP_VIP)][0], "laptop")
        self.assertEqual(len(h.gateway.flows.allowed), 1)
        (sa,) = h.gateway.client_ike.engine.established()
        self.assertEqual(h.gateway.client_ike.engine.assigned[(sa.spi_i, sa.spi_r)], LAPTOP_VIP)

    def test_stats_hold_no_secret(self) -> None:
        """stats(): SPIs and counters, never a shared key or a CHILD_SA key."""
        h = Harness(self)
        c = h.laptop()
        c.send_udp(b"registration", INSIDE, 434)
        stats = h.gateway.stats()
        text = repr(stats) + json.dumps(stats, default=repr)
        self.assertIn(f"0x{c.child.inbound_spi:08x}", text)
        secrets = [LAPTOP_PSK, PHONE_PSK, c.child.inbound_keymat, c.child.outbound_keymat]
        for secret in secrets:
            for form in (secret.hex(), repr(secret), secret[:16].hex()):
                self.assertNotIn(form, text)
            if secret.isascii():
                self.assertNotIn(secret.decode(), text)


class AuthTests(SynchronousTestCase):
    """Only a configured visitor proving its own identity gets a tunnel."""

    def attempt(self, identity: str, psk: bytes, ip: str = LAPTOP_IP) -> tuple[Harness, Client]:
        h = Harness(self)
        c = h.client(ip, identity, psk)
        c.start()
        return h, c

    def assert_refused(self, h: Harness, c: Client) -> None:
        self.assertEqual(c.children, [])
        self.assertEqual(c.ike.engine.established(), [])
        self.assertEqual(h.gateway.client_ike.engine.established(), [])
        self.assertTrue(
            any(e.notify == ikev2.N_AUTHENTICATION_FAILED for e in _failures(c.events)), c.events
        )
        self.assertEqual(h.gateway.reseal.visitors, {})
        self.assertEqual(h.gateway.reseal.client_spis, {})
        self.assertEqual(h.gateway.flows.allowed, {})
        self.assertEqual(c.esp, [])

    def test_control(self) -> None:
        """The right identity and secret: a tunnel (the refusals below are not the harness)."""
        h, c = self.attempt("laptop.example", LAPTOP_PSK)
        self.assertEqual(len(c.children), 1)
        self.assertIn("laptop", h.gateway.reseal.visitors)

    def test_wrong_psk(self) -> None:
        h, c = self.attempt("laptop.example", b"not-the-laptop-secret-at-all")
        self.assert_refused(h, c)

    def test_other_visitors_identity(self) -> None:
        """The phone's identity with the laptop's secret: refused."""
        h, c = self.attempt("phone.example", LAPTOP_PSK)
        self.assert_refused(h, c)

    def test_unknown_identity(self) -> None:
        h, c = self.attempt("stranger.example", b"some-stranger-secret-value", STRANGER_IP)
        self.assert_refused(h, c)


class FlowTests(SynchronousTestCase):
    """Inner UDP to an inside address, ports 434 and 4500: home and back."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.c = self.h.laptop()

    def round_trip(self, inside: IPv4Address, outer: str, dport: int) -> None:
        h, c = self.h, self.c
        payload = b"from the client to %d: " % dport + bytes(range(256))
        c.send_udp(payload, inside, dport, sport=SPORT)
        self.assertEqual(len(h.home), 1, (h.reseal(), h.flows()))
        sent, port, ha, ha_port = h.home[0]
        self.assertEqual((sent, ha, ha_port), (payload, outer, dport))
        low, high = h.gateway.flows.ports
        self.assertTrue(low <= port <= high, port)
        answer = b"the home agent's answer on %d" % dport
        h.reply(port, answer, (outer, dport))
        self.assertEqual(len(c.esp), 1, (h.reseal(), h.flows()))
        # Sealed for the client under its CHILD_SA's inbound SPI.
        self.assertEqual(int.from_bytes(c.esp[0][:4], "big"), c.child.inbound_spi)
        self.assertEqual(c.received(), [(inside, dport, LAPTOP_VIP, SPORT, answer)])
        self.assertEqual(h.reseal().get("sealed_to_clients"), 1)
        self.assertEqual(h.flows().get("flows_made"), 1)

    def test_registration_port(self) -> None:
        self.round_trip(INSIDE, HA, 434)

    def test_esp_port(self) -> None:
        self.round_trip(INSIDE, HA, 4500)

    def test_second_home_agent(self) -> None:
        """The second inside address leads to the second home agent's outer address."""
        self.round_trip(INSIDE2, HA2, 434)

    def test_flows_kept_apart(self) -> None:
        """434 and 4500 (and another source port) are three flows on three relay ports."""
        h, c = self.h, self.c
        c.send_udp(b"a", INSIDE, 434)
        c.send_udp(b"b", INSIDE, 4500)
        c.send_udp(b"c", INSIDE, 434, sport=40000)
        c.send_udp(b"a again", INSIDE, 434)
        ports = [p for _, p, _, _ in h.home]
        self.assertEqual(len(set(ports)), 3)
        self.assertEqual(ports[0], ports[3])
        self.assertEqual([d for _, _, _, d in h.home], [434, 4500, 434, 434])
        h.reply(ports[2], b"to 40000", (HA, 434))
        h.reply(ports[1], b"to 4500", (HA, 4500))
        self.assertEqual(
            c.received(),
            [(INSIDE, 434, LAPTOP_VIP, 40000, b"to 40000"),
             (INSIDE, 4500, LAPTOP_VIP, SPORT, b"to 4500")],
        )  # fmt: skip

    def test_many_both_ways(self) -> None:
        """Sequence numbers move on the client's SAs: many datagrams each way, in order."""
        h, c = self.h, self.c
        for i in range(20):
            c.send_udp(b"up %d" % i, INSIDE, 4500)
        self.assertEqual([p for p, _, _, _ in h.home], [b"up %d" % i for i in range(20)])
        port = h.home[0][1]
        for i in range(20):
            h.reply(port, b"down %d" % i, (HA, 4500))
        self.assertEqual([r[4] for r in c.received()], [b"down %d" % i for i in range(20)])

    def test_keepalive_and_dummy_not_sent_home(self) -> None:
        """A NAT keepalive and an ESP dummy (next header 59) are counted, nothing goes home."""
        h, c = self.h, self.c
        h.gateway.from_clients([(NAT_KEEPALIVE, c.addr)])
        assert c.sas is not None
        h.gateway.from_clients([(c.sas[1].seal(b"", 59), c.addr)])
        self.assertEqual(h.home, [])
        self.assertEqual(h.reseal().get("keepalives_in"), 1)
        self.assertEqual(h.reseal().get("dummies_in"), 1)


class NotAnOpenProxyTests(SynchronousTestCase):
    """Nothing but UDP from the virtual address to an inside address, 434 or 4500."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.c = self.h.laptop()

    def assert_nothing_home_then_control(self) -> None:
        """Nothing went home; a genuine datagram still does (the drops were not the harness)."""
        h, c = self.h, self.c
        self.assertEqual(h.home, [])
        self.assertEqual(h.gateway.flows.by_client, {})
        c.send_udp(b"genuine", INSIDE, 434)
        self.assertEqual([p for p, _, _, _ in h.home], [b"genuine"])

    def test_not_an_inside_address(self) -> None:
        """To a host inside but not a home agent, to the home agent's outer address, outside."""
        h, c = self.h, self.c
        for dst in (CORRESPONDENT, IPv4Address(HA), IPv4Address("8.8.8.8"), PHONE_VIP):
            c.send_udp(b"elsewhere", dst, 434)
            c.send_udp(b"elsewhere", dst, 4500)
        self.assertEqual(h.flows().get("dropped_not_home_agent"), 8)
        self.assert_nothing_home_then_control()

    def test_other_ports(self) -> None:
        """An inside address, but not its registration or NAT-T port."""
        h, c = self.h, self.c
        ports = (22, 53, 500, 4501, 433, 0)
        for port in ports:
            self.assertNotIn(port, GATEWAY_PORTS)
            c.send_udp(b"another service", INSIDE, port)
        self.assertEqual(h.flows().get("dropped_not_home_agent"), len(ports))
        self.assert_nothing_home_then_control()

    def test_not_udp(self) -> None:
        """TCP and ICMP to the inside address (even with port 434 in the header): counted."""
        h, c = self.h, self.c
        ports = (12345).to_bytes(2, "big") + (434).to_bytes(2, "big")
        tcp = ports + bytes(16)
        icmp = bytes([8, 0, 0, 0]) + bytes(4)
        c.send_inner(ipv4.ipv4_packet(LAPTOP_VIP, INSIDE, 6, tcp))
        c.send_inner(ipv4.ipv4_packet(LAPTOP_VIP, INSIDE, 1, icmp))
        # UDP with a broken checksum is no UDP datagram either.
        broken = bytearray(udp_packet(LAPTOP_VIP.packed, SPORT, INSIDE.packed, 434, b"x" * 9))
        broken[26] ^= 0xFF
        c.send_inner(bytes(broken))
        self.assertEqual(h.reseal().get("gateway_not_udp"), 3)
        self.assert_nothing_home_then_control()

    def test_spoofed_source(self) -> None:
        """From an address other than ours (even the phone's virtual one): dropped, counted."""
        h, c = self.h, self.c
        for src in (IPv4Address("10.79.0.77"), PHONE_VIP, INSIDE, IPv4Address(LAPTOP_IP)):
            c.send_udp(b"not from me", INSIDE, 434, src=src)
        self.assertEqual(h.reseal().get("spoofed_inner_source"), 4)
        v = h.gateway.reseal.visitors["laptop"]
        assert v.client is not None
        self.assertEqual(v.client.drops["spoofed_inner_source"], 4)
        self.assert_nothing_home_then_control()

    def test_stranger_esp(self) -> None:
        """ESP from another host under the laptop's SPI: bad source, nothing home."""
        h, c = self.h, self.c
        assert c.sas is not None
        esp = c.sas[1].seal(udp_packet(LAPTOP_VIP.packed, SPORT, INSIDE.packed, 434, b"x"))
        h.gateway.from_clients([(esp, (STRANGER_IP, 4500))])
        self.assertEqual(h.reseal().get("bad_source"), 1)
        self.assert_nothing_home_then_control()


class ReplyTests(SynchronousTestCase):
    """What comes back must come from the flow's home agent and port, to a flow's port."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.c = self.h.laptop()
        self.c.send_udp(b"registration", INSIDE, 434)
        self.port = self.h.home[0][1]

    def test_wrong_home_source(self) -> None:
        h, c = self.h, self.c
        h.reply(self.port, b"from the other home agent", (HA2, 434))
        h.reply(self.port, b"from the right one, wrong port", (HA, 4500))
        h.reply(self.port, b"from a stranger", (STRANGER_IP, 434))
        self.assertEqual(c.esp, [])
        self.assertEqual(h.flows().get("dropped_wrong_home_agent"), 3)
        h.reply(self.port, b"genuine", (HA, 434))
        self.assertEqual([r[4] for r in c.received()], [b"genuine"])

    def test_unknown_relay_port(self) -> None:
        h, c = self.h, self.c
        h.reply(self.port + 1, b"to no flow", (HA, 434))
        h.reply(434, b"to no flow", (HA, 434))
        self.assertEqual(c.esp, [])
        self.assertEqual(h.flows().get("dropped_no_flow"), 2)


class TunnelDownTests(SynchronousTestCase):
    """A tunnel that ends takes the visitor's flows and SAs with it."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.c = self.h.laptop()
        self.p = self.h.phone()
        for client in (self.c, self.p):
            client.send_udp(b"registration", INSIDE, 434)
            client.send_udp(b"esp", INSIDE, 4500)
        self.assertEqual(len(self.h.gateway.flows.by_port), 4)

    def test_client_deletes_ike_sa(self) -> None:
        h, c, p = self.h, self.c, self.p
        laptop_ports = [port for _, port, _, _ in h.home[:2]]
        phone_ports = [port for _, port, _, _ in h.home[2:]]
        (sa,) = c.ike.engine.established()
        c.ike.engine.delete_ike_sa(sa)
        c.ike.flush()
        h.pump()
        self.assertEqual(c.ike.engine.established(), [])
        # The laptop's flows, leg and permission are gone; the phone's stay.
        self.assertEqual(h.flows().get("flows_ended"), 2)
        self.assertEqual(sorted(h.gateway.flows.by_port), sorted(phone_ports))
        self.assertNotIn(str(LAPTOP_VIP), h.gateway.flows.allowed)
        self.assertIn(str(PHONE_VIP), h.gateway.flows.allowed)
        self.assertNotIn("laptop", h.gateway.reseal.visitors)
        self.assertIn("phone", h.gateway.reseal.visitors)
        # Replies to the laptop's old relay ports: no flow.
        for port in laptop_ports:
            h.reply(port, b"late", (HA, 434))
        self.assertEqual(h.flows().get("dropped_no_flow"), 2)
        self.assertEqual(c.esp, [])
        # ESP under the deleted SA: unknown SPI, nothing home.
        sent = len(h.home)
        c.send_udp(b"after", INSIDE, 434)
        self.assertEqual(h.reseal().get("unknown_spi"), 1)
        self.assertEqual(len(h.home), sent)
        # The phone is untouched.
        h.reply(phone_ports[0], b"to the phone", (HA, 434))
        self.assertEqual([r[4] for r in p.received()], [b"to the phone"])
        p.send_udp(b"phone again", INSIDE, 434)
        self.assertEqual(h.home[-1][:2], (b"phone again", phone_ports[0]))

    def test_back_after_down(self) -> None:
        """A new tunnel after the old one ended: the same virtual address, new flows work."""
        h, c = self.h, self.c
        (sa,) = c.ike.engine.established()
        c.ike.engine.delete_ike_sa(sa)
        c.ike.flush()
        h.pump()
        again = h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        again.start()
        self.assertEqual(again.vip, LAPTOP_VIP)
        again.send_udp(b"registration again", INSIDE, 434)
        payload, port, ha, dport = h.home[-1]
        self.assertEqual((payload, ha, dport), (b"registration again", HA, 434))
        h.reply(port, b"welcome back", (HA, 434))
        self.assertEqual([r[4] for r in again.received()], [b"welcome back"])

    def test_new_ike_sa_replaces_old(self) -> None:
        """A client that starts over (INITIAL_CONTACT) keeps working on its new SA only."""
        h, c = self.h, self.c
        old = c.sas
        assert old is not None
        (old_relay_sa,) = [
            sa for sa in h.gateway.client_ike.engine.established()
            if str(sa.peer_id) == "laptop.example"
        ]  # fmt: skip
        # The same client starts a second IKE SA while the first is still up.
        c.start()
        self.assertEqual(len(c.children), 2)
        self.assertEqual(c.vip, LAPTOP_VIP)
        v = h.gateway.reseal.visitors["laptop"]
        assert v.client is not None
        self.assertEqual(v.client.inbound.spi, c.child.outbound_spi)
        # The relay's old IKE SA with the laptop went (replaced), the phone's stayed.
        relay_sas = h.gateway.client_ike.engine.established()
        self.assertEqual(sorted(str(sa.peer_id) for sa in relay_sas),
                         ["laptop.example", "phone.example"])  # fmt: skip
        self.assertNotIn(old_relay_sa, relay_sas)
        # The new leg and the permission stayed.
        self.assertIn(str(LAPTOP_VIP), h.gateway.flows.allowed)
        c.send_udp(b"on the new SA", INSIDE, 4500)
        self.assertEqual(h.home[-1][0], b"on the new SA")
        port = h.home[-1][1]
        h.reply(port, b"answer", (HA, 4500))
        self.assertEqual(c.received()[-1][4], b"answer")
        # The old SA's ESP is no longer accepted.
        sent = len(h.home)
        h.gateway.from_clients(
            [(old[1].seal(udp_packet(LAPTOP_VIP.packed, 1, INSIDE.packed, 434, b"old")), c.addr)]
        )
        self.assertEqual(len(h.home), sent)
        self.assertEqual(h.reseal().get("unknown_spi"), 1)

    def test_relay_stops(self) -> None:
        """stop(): the relay deletes the tunnels (the clients hear of it), no timer left."""
        h, c, p = self.h, self.c, self.p
        h.gateway.stop()
        h.pump()
        self.assertEqual(c.ike.engine.established(), [])
        self.assertEqual(p.ike.engine.established(), [])
        self.assertEqual(h.clock.getDelayedCalls(), [])


class TwoVisitorTests(SynchronousTestCase):
    """Two clients: two virtual addresses, flows apart."""

    def test_addresses_by_configuration_not_arrival(self) -> None:
        """The phone comes first and still gets the second host address."""
        h = Harness(self)
        p = h.phone()
        c = h.laptop()
        self.assertEqual(p.vip, PHONE_VIP)
        self.assertEqual(c.vip, LAPTOP_VIP)
        self.assertEqual(p.child.local_ts, (ts_host(PHONE_VIP),))

    def test_flows_apart(self) -> None:
        h = Harness(self)
        c = h.laptop()
        p = h.phone()
        # The same inner ports from both: two flows, two relay ports.
        c.send_udp(b"laptop", INSIDE, 4500)
        p.send_udp(b"phone", INSIDE, 4500)
        (_, laptop_port, _, _), (_, phone_port, _, _) = h.home
        self.assertNotEqual(laptop_port, phone_port)
        h.reply(phone_port, b"to the phone", (HA, 4500))
        h.reply(laptop_port, b"to the laptop", (HA, 4500))
        self.assertEqual(c.received(), [(INSIDE, 4500, LAPTOP_VIP, SPORT, b"to the laptop")])
        self.assertEqual(p.received(), [(INSIDE, 4500, PHONE_VIP, SPORT, b"to the phone")])
        # Each went to its own outer address (the phone's NAT port).
        phone_leg = h.gateway.reseal.visitors["phone"].client
        assert phone_leg is not None
        self.assertEqual(phone_leg.addr, (PHONE_IP, 61000))
        # The phone cannot speak for the laptop.
        p.send_udp(b"as the laptop", INSIDE, 4500, src=LAPTOP_VIP)
        self.assertEqual(h.reseal().get("spoofed_inner_source"), 1)
        self.assertEqual(len(h.home), 2)


class RekeyTests(SynchronousTestCase):
    """Rekeys keep the tunnel, the virtual address and the flows (make before break)."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.c = self.h.laptop()
        self.c.send_udp(b"registration", INSIDE, 434)
        self.port = self.h.home[0][1]
        self.old = self.c.child

    def assert_still_working(self) -> None:
        h, c = self.h, self.c
        self.assertEqual(len(c.children), 2, c.events)
        new = c.child
        self.assertEqual(new.replaces, self.old.inbound_spi)
        self.assertEqual(new.local_ts, (ts_host(LAPTOP_VIP),))
        v = h.gateway.reseal.visitors["laptop"]
        assert v.client is not None
        self.assertEqual(v.client.inbound.spi, new.outbound_spi)
        self.assertEqual(v.client.outbound.spi, new.inbound_spi)
        # The old SA is gone at the relay, the flow and the permission are not.
        self.assertNotIn(self.old.outbound_spi, h.gateway.reseal.client_spis)
        self.assertEqual(h.flows().get("flows_ended", 0), 0)
        self.assertIn(str(LAPTOP_VIP), h.gateway.flows.allowed)
        c.send_udp(b"after the rekey", INSIDE, 434)
        self.assertEqual(h.home[-1], (b"after the rekey", self.port, HA, 434))
        h.reply(self.port, b"answer", (HA, 434))
        (esp,) = c.esp
        self.assertEqual(int.from_bytes(esp[:4], "big"), new.inbound_spi)
        self.assertEqual(c.received(), [(INSIDE, 434, LAPTOP_VIP, SPORT, b"answer")])

    def test_client_rekeys_child_sa(self) -> None:
        self.assertTrue(self.c.ike.engine.rekey_child(self.old.outbound_spi))
        self.c.ike.flush()
        self.h.pump()
        self.assert_still_working()

    def test_relay_rekeys_child_sa(self) -> None:
        relay_ike = self.h.gateway.client_ike
        self.assertTrue(relay_ike.engine.rekey_child(self.old.inbound_spi))
        relay_ike.flush()
        self.h.pump()
        self.assert_still_working()
