# -*- test-case-name: tests.test_relay_terminate -*-
"""The terminating relay in memory: client IKE, relay, home IKE joined on ``task.Clock``.

The client's IKE initiator talks to :class:`RelayTerminator`'s responder as
if over the relay's ESP port; the terminator's IKE initiator towards home
talks to a home-side responder (``home_ike_config`` with the relay as a
``[[relay]]``) as if inside IP-in-IP.  The home agent's data plane needs a
TUN, so its traffic-selector policy is mimicked here: the relay may key only
the home addresses "registered through it" (:attr:`Harness.registered`).
Real IPv4 packets are sealed and opened with the CHILD_SAs' keys at the
client and home ends, and re-sealed by the relay in between.

No sockets, no root; every datagram goes through one queue that is pumped.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.config import (
    AuthKey,
    ClientIKEConfig,
    HomeIKEConfig,
    IKEParameters,
    MobileNodeConfig,
    NodeIKEConfig,
    RelayConfig,
    RelayHomeAgentConfig,
    RelayIKEConfig,
    RelayPeerConfig,
    VisitorConfig,
)
from smobility.engines.ike import (
    IKESA,
    ChildSA,
    IKEEvent,
    IKEFailed,
    IKESADown,
    PeerConfig,
    Role,
    State,
    ts_host,
)
from smobility.services import relay_terminate
from smobility.services.dataplane import child_sas
from smobility.services.ike_service import (
    IKEService,
    client_ike_config,
    home_ike_config,
    make_identity,
)
from smobility.services.relay_terminate import RelayTerminator
from smobility.wire import ikev2, ipv4
from smobility.wire.esp import NON_ESP_MARKER, InboundSA, OutboundSA
from smobility.wire.ikev2 import TrafficSelector

HA = "192.0.2.1"
RELAY = "203.0.113.5"
LAPTOP_IP = "198.51.100.7"
PHONE_IP = "198.51.100.8"
STRANGER_IP = "198.51.100.66"
CORRESPONDENT = IPv4Address("10.77.0.200")
HOA = IPv4Address("10.77.0.10")
HOA2 = IPv4Address("10.77.0.11")
HOA3 = IPv4Address("10.77.0.12")
OTHER = IPv4Address("10.77.0.99")

LAPTOP_PSK = b"laptop-and-relay-share-this-secret"
PHONE_PSK = b"phone-and-relay-share-another-one"
RELAY_HOME_PSK = b"relay-and-home-agent-secret-value"
NODE_PSK = b"laptop-and-home-agent-direct-secret"
RELAY_ID = "relay.example"
HOME_ID = "home.example"
PARAMS = IKEParameters(("aes128gcm16-prfsha256-ecp256",), ("aes128gcm16",), 0, 0, 0)
# Where each client's IKE socket is bound (the relay sees it at its public address).
CLIENT_LOCAL = ("0.0.0.0", 4500)  # noqa: S104 - a name, nothing is bound


def _key(spi: int) -> AuthKey:
    return AuthKey(spi, bytes(range(16)))


def relay_config() -> RelayConfig:
    """A terminating relay with two IKE visitors, one without IKE, one home agent."""
    return RelayConfig(
        path=Path("/nonexistent/relay.toml"),
        listen=RELAY,
        port=434,
        address=IPv4Address(RELAY),
        home_agents=((IPv4Address(HA), _key(2000)),),
        visitors=(
            VisitorConfig("laptop", HOA, _key(3000), "laptop.example", "fqdn", LAPTOP_PSK),
            VisitorConfig("phone", HOA2, _key(3001), "phone.example", "fqdn", PHONE_PSK),
            VisitorConfig("legacy", HOA3, _key(3002)),
        ),
        max_lifetime=600,
        pending_timeout=5.0,
        warnings=(),
        mode="terminate",
        esp_port=4500,
        ike=RelayIKEConfig(RELAY_ID, "fqdn", "psk", PARAMS, None, None, None),
        home_agent_ike=(
            RelayHomeAgentConfig(IPv4Address(HA), _key(2000), HOME_ID, "fqdn", RELAY_HOME_PSK),
        ),
    )


def home_config() -> tuple[HomeIKEConfig, tuple[MobileNodeConfig, ...], RelayPeerConfig]:
    """The home agent's IKE settings: three nodes (one with direct IKE) and the relay."""
    ike = HomeIKEConfig(HOME_ID, "fqdn", PARAMS, None, None, Path("/nonexistent"), 0)
    nodes = (
        MobileNodeConfig(
            "laptop", HOA, _key(1000), 60, 1, None,
            ike=NodeIKEConfig("laptop.home.example", "fqdn", "psk", NODE_PSK),
        ),
        MobileNodeConfig("phone", HOA2, _key(1001), 60, 1, None),
        MobileNodeConfig("legacy", HOA3, _key(1002), 60, 1, None),
    )  # fmt: skip
    relay = RelayPeerConfig(
        IPv4Address(RELAY), _key(2000), ike_identity=RELAY_ID, psk=RELAY_HOME_PSK
    )
    return ike, nodes, relay


def packet(src: IPv4Address, dst: IPv4Address, payload: bytes) -> bytes:
    """A UDP-protocol IPv4 packet (the payload need not be a valid UDP header here)."""
    return ipv4.ipv4_packet(src, dst, 17, payload)


class Client:
    """A visiting client's IKE initiator towards the relay, and what reaches it."""

    def __init__(
        self, harness: Harness, ip: str, identity: str, psk: bytes, relay_identity: str = RELAY_ID
    ) -> None:
        self.harness = harness
        self.ip = ip
        config, check = client_ike_config(
            ClientIKEConfig(
                identity, "fqdn", "psk", psk, relay_identity, "fqdn", PARAMS, None, None, None
            ),
            local_port=4500, ha_port=4500, clock=harness.clock,
        )  # fmt: skip
        self.children: list[ChildSA] = []
        self.events: list[IKEEvent] = []
        self.esp: list[bytes] = []
        self.sas: tuple[InboundSA, OutboundSA] | None = None
        self.ike = IKEService(
            Role.INITIATOR, config, harness.clock, send_nat_t=self._send, cert_check=check,
            on_up=self._up, on_event=self.events.append,
        )  # fmt: skip

    def _up(self, child: ChildSA) -> None:
        self.children.append(child)
        self.sas = child_sas(child)

    def _send(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, addr in datagrams:
            assert addr == (RELAY, 4500), addr
            self.harness.later(
                partial(self.harness.terminator.from_clients, [(data, (self.ip, 4500))])
            )

    def deliver(self, data: bytes) -> None:
        """A datagram from the relay's ESP port: IKE to the engine, ESP kept."""
        if data.startswith(NON_ESP_MARKER):
            self.ike.receive(data[len(NON_ESP_MARKER) :], (RELAY, 4500), CLIENT_LOCAL)
        else:
            self.esp.append(data)

    def start(self) -> None:
        """Start IKE with the relay and carry it to its end."""
        self.ike.initiate((RELAY, 4500), local=CLIENT_LOCAL)
        self.harness.pump()

    def send(self, inner: bytes) -> None:
        """Seal ``inner`` under the CHILD_SA with the relay and send it to the relay."""
        assert self.sas is not None
        esp = self.sas[1].seal(inner)
        self.harness.terminator.from_clients([(esp, (self.ip, 4500))])
        self.harness.pump()

    def open(self, esp: bytes) -> bytes:
        """Open ESP the relay sent us."""
        assert self.sas is not None
        return self.sas[0].open(esp)


class Harness:
    """Client(s), the terminating relay and the home agent's IKE, joined by one queue."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.test = test
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.queue: deque[Callable[[], None]] = deque()
        self.clients: dict[str, Client] = {}
        #: Home addresses the relay may key (the home agent's bindings through it).
        self.registered: set[IPv4Address] = set()
        self.policy_calls: list[PeerConfig] = []
        self.home_esp: list[bytes] = []
        self.plain: list[tuple[bytes, tuple[str, int]]] = []
        self.terminator = RelayTerminator(
            relay_config(), self.clock, send_clients=self._to_clients, send_home=self._to_home
        )
        ike, nodes, relay = home_config()
        config, _names = home_ike_config(
            ike, nodes, listen=HA, nat_t_port=4500, trust_anchors=(), relays=(relay,)
        )
        self.home_children: list[ChildSA] = []
        self.home_events: list[IKEEvent] = []
        self.home_sas: dict[IPv4Address, tuple[InboundSA, OutboundSA]] = {}
        self.home = IKEService(
            Role.RESPONDER, config, self.clock, send_nat_t=self._home_send,
            send_plain=self.plain.extend, on_up=self._home_up, on_event=self.home_events.append,
        )  # fmt: skip
        self.home.engine.ts_policy = self._ts_policy
        self.relay_id = make_identity(RELAY_ID, "fqdn")
        # What the relay's IKE with home reports (its own hook still runs).
        self.relay_home_events: list[IKEEvent] = []
        hook = self.terminator.home_ike.on_event_extra
        assert hook is not None

        def spy(event: IKEEvent) -> None:
            self.relay_home_events.append(event)
            hook(event)

        self.terminator.home_ike.on_event_extra = spy

    # -- the home agent --------------------------------------------------------------

    def _ts_policy(self, peer: PeerConfig) -> tuple[TrafficSelector, ...] | None:
        # As HomeDataPlane._relay_ts_policy: a relay gets the home addresses
        # registered through it; another peer, what its configuration says.
        self.policy_calls.append(peer)
        if peer.identity != self.relay_id:
            return None
        return tuple(ts_host(hoa) for hoa in sorted(self.registered))

    def _home_up(self, child: ChildSA) -> None:
        self.home_children.append(child)
        (sel,) = child.remote_ts
        assert sel.start == sel.end, child.remote_ts
        self.home_sas[IPv4Address(sel.start)] = child_sas(child)

    def _home_send(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, addr in datagrams:
            assert addr[0] == RELAY, addr
            self.later(partial(self.terminator.from_home, [(addr[1], data, (HA, 4500))]))

    def home_send(self, inner: bytes, hoa: IPv4Address = HOA) -> None:
        """The home agent seals ``inner`` under the relay's CHILD_SA for ``hoa``."""
        esp = self.home_sas[hoa][1].seal(inner)
        self.terminator.from_home([(4500, esp, (HA, 4500))])
        self.pump()

    def home_open(self, esp: bytes, hoa: IPv4Address = HOA) -> bytes:
        """The home agent opens ESP from the relay under the CHILD_SA for ``hoa``."""
        return self.home_sas[hoa][0].open(esp)

    def home_relay_sas(self) -> list[IKESA]:
        """The home agent's established IKE SAs with the relay."""
        return [sa for sa in self.home.engine.established() if sa.peer_id == self.relay_id]

    # -- the relay's two sides ------------------------------------------------------

    def _to_clients(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, addr in datagrams:
            assert addr[1] == 4500, addr
            client = self.clients[addr[0]]
            self.later(partial(client.deliver, data))

    def _to_home(self, datagrams: list[tuple[bytes, int, str, int]]) -> None:
        for data, sport, dst, dport in datagrams:
            assert (sport, dst, dport) == (4500, HA, 4500), (sport, dst, dport)
            if data.startswith(NON_ESP_MARKER):
                message = data[len(NON_ESP_MARKER) :]
                self.later(partial(self.home.receive, message, (RELAY, 4500), (HA, 4500)))
            else:
                self.home_esp.append(data)

    # -- plumbing ---------------------------------------------------------------------

    def client(self, ip: str, identity: str, psk: bytes, relay_identity: str = RELAY_ID) -> Client:
        """A new client at ``ip``."""
        c = self.clients[ip] = Client(self, ip, identity, psk, relay_identity)
        return c

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

    def advance(self, seconds: float) -> None:
        """Let time pass (timers fire), delivering what they send."""
        self.clock.advance(seconds)
        self.pump()

    def visitor(self, name: str, present: bool = True) -> None:
        """The foreign agent accepted (or lost) the visitor ``name``."""
        self.terminator.visitor_changed(name, HA, present)
        self.pump()

    def counters(self) -> dict[str, int]:
        """The re-sealer's totals."""
        return dict(self.terminator.reseal.counters)


def _failures(events: list[IKEEvent]) -> list[IKEFailed]:
    return [e for e in events if isinstance(e, IKEFailed)]


class HappyPathTests(SynchronousTestCase):
    """The client's ESP ends at the relay, the relay's own SA carries it home."""

    def up(self) -> tuple[Harness, Client]:
        h = Harness(self)
        h.registered.add(HOA)
        h.visitor("laptop")
        c = h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        c.start()
        return h, c

    def test_both_legs_up(self) -> None:
        """The relay's IKE SA with home is for the home address; the client's with the relay."""
        h, c = self.up()
        self.assertEqual(len(h.home_children), 1)
        home_child = h.home_children[0]
        self.assertEqual(home_child.remote_ts, (ts_host(HOA),))
        self.assertEqual(home_child.peer_id, h.relay_id)
        self.assertEqual(len(c.children), 1)
        client_child = c.children[0]
        self.assertEqual(client_child.local_ts, (ts_host(HOA),))
        self.assertEqual(client_child.internal_address, HOA)
        v = h.terminator.reseal.visitors["laptop"]
        assert v.client is not None and v.home is not None
        self.assertEqual(v.client.inbound.spi, client_child.outbound_spi)
        self.assertEqual(v.client.outbound.spi, client_child.inbound_spi)
        self.assertEqual(v.home.inbound.spi, home_child.outbound_spi)
        self.assertEqual(v.home.outbound.spi, home_child.inbound_spi)
        self.assertEqual(v.home.addr, (HA, 4500))
        self.assertEqual(v.client.addr, (LAPTOP_IP, 4500))
        # Two CHILD_SAs, four SPIs, none shared between the legs.
        client_spis = {client_child.inbound_spi, client_child.outbound_spi}
        home_spis = {home_child.inbound_spi, home_child.outbound_spi}
        self.assertEqual(client_spis & home_spis, set())
        self.assertNotEqual(client_child.inbound_keymat, home_child.outbound_keymat)
        self.assertEqual(h.plain, [])

    def test_client_to_home(self) -> None:
        """A packet from the home address, sealed by the client, is opened at home unchanged."""
        h, c = self.up()
        inner = packet(HOA, CORRESPONDENT, b"to a correspondent, through the relay")
        c.send(inner)
        self.assertEqual(len(h.home_esp), 1)
        esp = h.home_esp[0]
        # Sealed again under the home leg: the home agent's inbound SPI.
        self.assertEqual(int.from_bytes(esp[:4], "big"), h.home_children[0].inbound_spi)
        self.assertEqual(h.home_open(esp), inner)
        self.assertEqual(h.counters().get("resealed_to_home"), 1)

    def test_home_to_client(self) -> None:
        """A packet to the home address, sealed at home, is opened by the client unchanged."""
        h, c = self.up()
        inner = packet(CORRESPONDENT, HOA, b"from a correspondent, through the relay")
        h.home_send(inner)
        self.assertEqual(len(c.esp), 1)
        esp = c.esp[0]
        self.assertEqual(int.from_bytes(esp[:4], "big"), c.children[0].inbound_spi)
        self.assertEqual(c.open(esp), inner)
        self.assertEqual(h.counters().get("resealed_to_clients"), 1)

    def test_many_both_ways(self) -> None:
        """Sequence numbers move on both legs: many packets each way all arrive, in order."""
        h, c = self.up()
        ups = [packet(HOA, CORRESPONDENT, b"up %d" % i) for i in range(20)]
        downs = [packet(CORRESPONDENT, HOA, b"down %d" % i) for i in range(20)]
        for up, down in zip(ups, downs, strict=True):
            c.send(up)
            h.home_send(down)
        self.assertEqual([h.home_open(e) for e in h.home_esp], ups)
        self.assertEqual([c.open(e) for e in c.esp], downs)

    def test_client_before_home(self) -> None:
        """A client keyed before the home leg: its packets wait (dropped, counted) until then."""
        h = Harness(self)
        h.terminator.present["laptop"] = HA  # registered, IKE with home not started yet
        c = h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        c.start()
        self.assertEqual(len(c.children), 1)
        c.send(packet(HOA, CORRESPONDENT, b"too early"))
        self.assertEqual(h.home_esp, [])
        self.assertEqual(h.counters().get("home_sa_pending"), 1)
        h.registered.add(HOA)
        h.visitor("laptop")
        inner = packet(HOA, CORRESPONDENT, b"now")
        c.send(inner)
        self.assertEqual([h.home_open(e) for e in h.home_esp], [inner])


class HomePolicyTests(SynchronousTestCase):
    """The home agent lets the relay key only addresses registered through it."""

    def test_refused_then_retried(self) -> None:
        """TS_UNACCEPTABLE while unregistered; once registered, the relay's retry succeeds."""
        h = Harness(self)
        h.visitor("laptop")
        self.assertTrue(h.policy_calls, "the home agent's policy was never asked")
        home_refusals = [e for e in _failures(h.home_events) if e.notify == ikev2.N_TS_UNACCEPTABLE]
        self.assertEqual(len(home_refusals), 1, h.home_events)
        self.assertTrue(home_refusals[0].child_only)
        relay_refusals = [
            e for e in _failures(h.relay_home_events) if e.notify == ikev2.N_TS_UNACCEPTABLE
        ]
        self.assertEqual(len(relay_refusals), 1, h.relay_home_events)
        self.assertEqual(h.home_children, [])
        v = h.terminator.reseal.visitors.get("laptop")
        self.assertTrue(v is None or v.home is None)
        # The home agent now has the binding through the relay.
        h.registered.add(HOA)
        h.advance(relay_terminate.RETRY + 1)
        self.assertEqual(len(h.home_children), 1, h.home_events)
        self.assertEqual(h.home_children[0].remote_ts, (ts_host(HOA),))
        v = h.terminator.reseal.visitors.get("laptop")
        assert v is not None
        self.assertIsNotNone(v.home)
        # No IKE SA without a CHILD_SA is left over at home from the refusal.
        self.assertEqual(len(h.home_relay_sas()), 1)
        # And it carries traffic.
        c = h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        c.start()
        inner = packet(HOA, CORRESPONDENT, b"after the retry")
        c.send(inner)
        self.assertEqual([h.home_open(e) for e in h.home_esp], [inner])

    def test_other_address_refused(self) -> None:
        """Registered for another home address only: still refused."""
        h = Harness(self)
        h.registered.add(HOA2)
        h.visitor("laptop")
        self.assertEqual(h.home_children, [])
        self.assertIn(ikev2.N_TS_UNACCEPTABLE, [e.notify for e in _failures(h.home_events)])
        self.assertIsNone(h.terminator.reseal.visitors.get("laptop"))

    def test_policy_only_for_relays(self) -> None:
        """The mimicked policy leaves a node's own IKE alone (``None``): sanity of the harness."""
        h = Harness(self)
        node = h.home.engine.config.peer_for(make_identity("laptop.home.example", "fqdn"))
        assert node is not None
        self.assertIsNone(h._ts_policy(node))


class SecondVisitorTests(SynchronousTestCase):
    """One IKE SA with home per visitor, without INITIAL_CONTACT."""

    def test_two_ike_sas_at_home(self) -> None:
        """The second visitor's IKE SA does not replace the first's at home."""
        h = Harness(self)
        h.registered.update((HOA, HOA2))
        h.visitor("laptop")
        first = h.terminator.home_sas["laptop"]
        h.visitor("phone")
        second = h.terminator.home_sas["phone"]
        self.assertIsNot(first, second)
        self.assertNotEqual(first.spi_i, second.spi_i)
        self.assertIs(first.state, State.ESTABLISHED)
        self.assertIs(second.state, State.ESTABLISHED)
        self.assertEqual(len(h.home_relay_sas()), 2)
        self.assertEqual([e for e in h.home_events if isinstance(e, IKESADown)], [])
        self.assertEqual(
            sorted(IPv4Address(c.remote_ts[0].start) for c in h.home_children), [HOA, HOA2]
        )
        # Both visitors' traffic passes, each under its own legs.
        laptop = h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        phone = h.client(PHONE_IP, "phone.example", PHONE_PSK)
        laptop.start()
        phone.start()
        a = packet(HOA, CORRESPONDENT, b"laptop")
        b = packet(HOA2, CORRESPONDENT, b"phone")
        laptop.send(a)
        phone.send(b)
        self.assertEqual(len(h.home_esp), 2)
        self.assertEqual(h.home_open(h.home_esp[0], HOA), a)
        self.assertEqual(h.home_open(h.home_esp[1], HOA2), b)
        h.home_send(packet(CORRESPONDENT, HOA, b"to laptop"), HOA)
        h.home_send(packet(CORRESPONDENT, HOA2, b"to phone"), HOA2)
        self.assertEqual([laptop.open(e) for e in laptop.esp],
                         [packet(CORRESPONDENT, HOA, b"to laptop")])  # fmt: skip
        self.assertEqual([phone.open(e) for e in phone.esp],
                         [packet(CORRESPONDENT, HOA2, b"to phone")])  # fmt: skip

    def test_visitor_without_ike_identity(self) -> None:
        """A visitor with no ike_identity: nothing is keyed with home for it."""
        h = Harness(self)
        h.registered.add(HOA3)
        h.visitor("legacy")
        self.assertEqual(h.terminator.home_sas, {})
        self.assertEqual(h.home.engine.sas, {})
        self.assertEqual(h.terminator.present, {})


class ClientAuthTests(SynchronousTestCase):
    """Only a configured visitor proving its own identity gets a client leg."""

    def attempt(self, identity: str, psk: bytes, ip: str = LAPTOP_IP) -> tuple[Harness, Client]:
        h = Harness(self)
        h.registered.add(HOA)
        h.visitor("laptop")
        self.assertEqual(len(h.home_children), 1)
        c = h.client(ip, identity, psk)
        c.start()
        return h, c

    def assert_refused(self, h: Harness, c: Client) -> None:
        self.assertEqual(c.children, [])
        self.assertEqual(c.ike.engine.established(), [])
        self.assertEqual(h.terminator.client_ike.engine.established(), [])
        self.assertTrue(
            any(e.notify == ikev2.N_AUTHENTICATION_FAILED for e in _failures(c.events)), c.events
        )
        self.assertGreaterEqual(h.terminator.client_ike.engine.counters.get("refused_auth", 0), 1)
        v = h.terminator.reseal.visitors["laptop"]
        self.assertIsNone(v.client)
        self.assertEqual(h.terminator.reseal.client_spis, {})

    def test_control(self) -> None:
        """The right identity and secret: a client leg (the refusals below are not the harness)."""
        h, c = self.attempt("laptop.example", LAPTOP_PSK)
        self.assertEqual(len(c.children), 1)
        self.assertIsNotNone(h.terminator.reseal.visitors["laptop"].client)

    def test_wrong_psk(self) -> None:
        """The visitor's identity with another secret: refused."""
        h, c = self.attempt("laptop.example", b"not-the-laptop-secret-at-all")
        self.assert_refused(h, c)

    def test_other_visitors_identity(self) -> None:
        """Claiming another visitor's identity without its secret: refused."""
        h, c = self.attempt("phone.example", LAPTOP_PSK)
        self.assert_refused(h, c)

    def test_not_a_visitor(self) -> None:
        """An identity the relay does not serve: refused."""
        h, c = self.attempt("stranger.example", b"some-stranger-secret-value", STRANGER_IP)
        self.assert_refused(h, c)

    def test_wrong_relay_identity(self) -> None:
        """A client asking for another responder identity gets nothing either."""
        h = Harness(self)
        h.registered.add(HOA)
        h.visitor("laptop")
        c = h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK, relay_identity="home.example")
        c.start()
        self.assertEqual(c.children, [])
        self.assertIsNone(h.terminator.reseal.visitors["laptop"].client)


class InnerAddressTests(SynchronousTestCase):
    """Each leg carries only the visitor's own home address."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.registered.update((HOA, HOA2))
        self.h.visitor("laptop")
        self.h.visitor("phone")
        self.c = self.h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        self.c.start()

    def test_spoofed_inner_source(self) -> None:
        """From the client with another source (even another visitor's): never reaches home."""
        h, c = self.h, self.c
        c.send(packet(OTHER, CORRESPONDENT, b"spoofed"))
        c.send(packet(HOA2, CORRESPONDENT, b"the phone's address"))
        self.assertEqual(h.home_esp, [])
        self.assertEqual(h.counters().get("spoofed_inner_source"), 2)
        v = h.terminator.reseal.visitors["laptop"]
        assert v.client is not None
        self.assertEqual(v.client.drops["spoofed_inner_source"], 2)
        good = packet(HOA, CORRESPONDENT, b"genuine")
        c.send(good)
        self.assertEqual([h.home_open(e) for e in h.home_esp], [good])

    def test_wrong_inner_destination(self) -> None:
        """From home under the laptop's SA to another address: dropped."""
        h, c = self.h, self.c
        h.home_send(packet(CORRESPONDENT, OTHER, b"elsewhere"))
        h.home_send(packet(CORRESPONDENT, HOA2, b"the phone, under the laptop's SA"))
        self.assertEqual(c.esp, [])
        self.assertEqual(h.counters().get("wrong_inner_destination"), 2)
        good = packet(CORRESPONDENT, HOA, b"genuine")
        h.home_send(good)
        self.assertEqual([c.open(e) for e in c.esp], [good])


class VisitorGoneTests(SynchronousTestCase):
    """A visitor that leaves takes its SAs on both sides with it."""

    def test_deleted_both_sides(self) -> None:
        """visitor_changed(present=False): IKE SAs deleted at home and at the client, no legs."""
        h = Harness(self)
        h.registered.update((HOA, HOA2))
        h.visitor("laptop")
        h.visitor("phone")
        c = h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        c.start()
        self.assertEqual(len(h.home_relay_sas()), 2)
        self.assertEqual(len(c.ike.engine.established()), 1)
        h.visitor("laptop", present=False)
        # Home: the laptop's IKE SA is gone, the phone's stays.
        remaining = h.home_relay_sas()
        self.assertEqual(len(remaining), 1)
        self.assertIs(remaining[0], h.home.engine.sas[h.terminator.home_sas["phone"].spi_r])
        self.assertEqual(
            [e.reason for e in h.home_events if isinstance(e, IKESADown)], ["peer-deleted"]
        )
        # Client: its IKE SA with the relay is gone too.
        self.assertEqual(c.ike.engine.established(), [])
        self.assertIn("IKESADown", c.ike.events)
        self.assertEqual(h.terminator.client_ike.engine.established(), [])
        # The relay: no legs, no record of the visitor.
        self.assertNotIn("laptop", h.terminator.reseal.visitors)
        self.assertNotIn("laptop", h.terminator.home_sas)
        self.assertEqual(h.terminator.present, {"phone": HA})
        self.assertIn("phone", h.terminator.reseal.visitors)
        # Whatever the old SAs carry now is dropped.
        assert c.sas is not None
        before = h.counters().get("unknown_spi", 0)
        c.send(packet(HOA, CORRESPONDENT, b"after"))
        h.home_send(packet(CORRESPONDENT, HOA, b"after"))
        self.assertEqual(h.home_esp, [])
        self.assertEqual(c.esp, [])
        self.assertEqual(h.counters().get("unknown_spi", 0), before + 2)
        # Nothing is started again for it.
        h.advance(relay_terminate.RETRY * 3)
        self.assertEqual(len(h.home_relay_sas()), 1)

    def test_gone_before_home_answers(self) -> None:
        """Leaving while IKE with home is still under way: nothing is left at home either."""
        h = Harness(self)
        h.registered.add(HOA)
        h.terminator.visitor_changed("laptop", HA, True)  # IKE_SA_INIT queued, not delivered
        h.terminator.visitor_changed("laptop", HA, False)
        h.pump()
        h.advance(60)
        self.assertEqual(h.home_relay_sas(), [])
        self.assertEqual(h.terminator.home_ike.engine.established(), [])
        self.assertEqual(h.terminator.home_sas, {})


class StatsTests(SynchronousTestCase):
    """The relay's stats are safe to show: SPIs and counters, never secrets."""

    def test_no_keys(self) -> None:
        """No PSK and no key of any CHILD_SA or IKE SA appears in stats()."""
        h = Harness(self)
        h.registered.add(HOA)
        h.visitor("laptop")
        c = h.client(LAPTOP_IP, "laptop.example", LAPTOP_PSK)
        c.start()
        c.send(packet(HOA, CORRESPONDENT, b"x"))
        stats = h.terminator.stats()
        text = repr(stats) + json.dumps(stats, default=repr)
        # It does say something: the legs' SPIs.
        self.assertIn(f"0x{h.home_children[0].inbound_spi:08x}", text)
        self.assertIn(f"0x{c.children[0].inbound_spi:08x}", text)
        secrets: list[bytes] = [LAPTOP_PSK, PHONE_PSK, RELAY_HOME_PSK]
        for child in (*h.home_children, *c.children):
            secrets += [child.inbound_keymat, child.outbound_keymat]
        for service in (h.terminator.client_ike, h.terminator.home_ike):
            for sa in service.engine.sas.values():
                assert sa.keys is not None
                k = sa.keys
                secrets += [k.sk_d, k.sk_ai, k.sk_ar, k.sk_ei, k.sk_er, k.sk_pi, k.sk_pr]
        for secret in secrets:
            if not secret:
                continue  # AEAD suites have no integrity keys
            for form in (secret.hex(), repr(secret), secret[:16].hex(), repr(secret[:16])):
                self.assertNotIn(form, text)
            if secret.isascii():
                self.assertNotIn(secret.decode(), text)
