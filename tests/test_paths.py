"""The client's transport choice: fallback, climbing back, restart on a new network."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.config import TransportConfig
from smobility.engines.bindings import MemoryStore
from smobility.engines.homeagent import HomeAgent, MobileNodeEntry
from smobility.engines.mobilenode import MobileNode, MobileNodeSettings, State
from smobility.services import paths as paths_mod
from smobility.services.paths import KIND_ESP, KIND_MIP, PathManager

KEY = b"k" * 16
HA = "172.31.0.2"


class FakeTransport:
    """Stands in for HTTPTunnelTransport: records frames, states set by the test."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.state = "down"
        self._running = False
        self.sent: list[tuple[int, bytes]] = []
        self.starts = 0
        self.stops = 0

    def start(self) -> None:
        self.starts += 1
        self._running = True
        self.set("connecting")

    def stop(self) -> None:
        self.stops += 1
        self._running = False
        self.state = "down"

    def send(self, kind: int, data: bytes) -> None:
        self.sent.append((kind, data))

    def set(self, state: str, reason: str | None = None) -> None:
        self.state = state
        self.owner._state(state, reason)


class World:
    """A mobile node, a home agent, and the transports between them on one clock."""

    def __init__(self, transports: tuple[TransportConfig, ...], udp_works: bool) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.ha = HomeAgent(
            addresses=[IPv4Address(HA)],
            home_network=IPv4Network("10.77.0.0/24"),
            nodes=[MobileNodeEntry("laptop", IPv4Address("10.77.0.10"), 1000, KEY)],
            store=MemoryStore(),
            clock=self.clock,
        )
        self.udp_works = udp_works
        self.udp_sent = 0
        self.node = MobileNode(
            MobileNodeSettings("laptop", IPv4Address("10.77.0.10"), IPv4Address(HA), 1000, KEY),
            clock=self.clock,
            send=lambda data: self.pm.send_registration(data),
        )
        self.fakes: list[FakeTransport] = []

        def make(path: Any) -> FakeTransport:
            fake = FakeTransport(path)
            self.fakes.append(fake)
            return fake

        self.orig = paths_mod._HTTPPath._make
        paths_mod._HTTPPath._make = make  # type: ignore[method-assign]
        self.pm = PathManager(
            node=self.node,
            transports=transports,
            send_udp=self.udp,
            home_agent=HA,
            ha_port=434,
            esp_port=4500,
            reactor=self.clock,
            climb_back_after=30.0,
        )

    def restore(self) -> None:
        paths_mod._HTTPPath._make = self.orig  # type: ignore[method-assign]

    def udp(self, data: bytes) -> None:
        self.udp_sent += 1
        if self.udp_works:
            reply = self.ha.handle_request(data, ("192.168.103.150", 40000))
            if reply is not None:
                self.pm.udp_reply()
                self.node.datagram_received(reply, (HA, 434))

    def deliver_http(self, fake: FakeTransport) -> None:
        """The multiplexer relays what the fake transport queued; replies come back."""
        for kind, data in fake.sent:
            if kind == KIND_MIP:
                reply = self.ha.handle_request(data, ("10.77.0.2", 50000))
                if reply is not None:
                    self.pm.received(fake.owner, KIND_MIP, reply)
        fake.sent.clear()


def transports() -> tuple[TransportConfig, ...]:
    http = TransportConfig("http", 4.0, mux_host="10.77.0.2", token=b"t" * 32, tls=False)
    return (TransportConfig("udp", 3.0), http)


class PathManagerTests(SynchronousTestCase):
    def world(self, udp_works: bool) -> World:
        w = World(transports(), udp_works)
        self.addCleanup(w.restore)
        return w

    def test_udp_preferred_when_it_works(self) -> None:
        w = self.world(True)
        w.node.register(IPv4Address("192.168.103.150"))
        self.assertIs(w.node.state, State.REGISTERED)
        self.assertEqual(w.pm.active_label, "udp")
        self.assertEqual(w.fakes, [])

    def test_falls_back_to_http_after_silence(self) -> None:
        w = self.world(False)
        w.node.register(IPv4Address("192.168.103.150"))
        self.assertIs(w.node.state, State.REGISTERING)
        w.clock.advance(3.0)  # udp's fallback_after
        [fake] = w.fakes
        self.assertEqual(fake.starts, 1)
        self.assertTrue(fake.sent, "a registration went up the HTTP transport")
        w.deliver_http(fake)
        self.assertIs(w.node.state, State.REGISTERED)
        self.assertEqual(w.pm.active_label, "http")
        self.assertTrue(w.ha.bindings["laptop"][0].nat)
        # ESP now goes up the HTTP transport.
        self.assertTrue(w.pm.divert_esp([(b"esp", (HA, 4500))]))
        self.assertEqual(fake.sent[-1], (KIND_ESP, b"esp"))

    def test_climbs_back_when_udp_works_again(self) -> None:
        w = self.world(False)
        w.node.register(IPv4Address("192.168.103.150"))
        w.clock.advance(3.0)
        w.deliver_http(w.fakes[0])
        self.assertEqual(w.pm.active, 1)
        w.udp_works = True
        w.clock.advance(30.0)
        self.assertIs(w.node.state, State.REGISTERED)
        self.assertEqual(w.pm.active_label, "udp")
        self.assertEqual(w.fakes[0].stops, 1)
        self.assertFalse(w.pm.divert_esp([(b"esp", (HA, 4500))]))

    def test_climb_back_that_fails_returns_to_http(self) -> None:
        w = self.world(False)
        w.node.register(IPv4Address("192.168.103.150"))
        w.clock.advance(3.0)
        w.deliver_http(w.fakes[0])
        w.clock.advance(30.0)  # tries udp: silence
        w.clock.advance(3.0)  # back to http
        w.deliver_http(w.fakes[0])
        self.assertIs(w.node.state, State.REGISTERED)
        self.assertEqual(w.pm.active, 1)

    def test_failed_transport_is_left_at_once(self) -> None:
        w = self.world(False)
        w.node.register(IPv4Address("192.168.103.150"))
        w.clock.advance(3.0)
        fake = w.fakes[0]
        sent_before = w.udp_sent
        fake.set("failed", "the HTTP proxy rejected the proxy credentials (407)")
        self.assertEqual(w.pm.trying, 0)
        self.assertGreater(w.udp_sent, sent_before)

    def test_network_change_starts_from_the_top(self) -> None:
        w = self.world(False)
        w.node.register(IPv4Address("192.168.103.150"))
        w.clock.advance(3.0)
        w.deliver_http(w.fakes[0])
        w.udp_works = True
        w.pm.network_changed()
        w.node.register(IPv4Address("192.168.101.150"))
        self.assertEqual(w.pm.active_label, "udp")

    def test_reconnect_reregisters(self) -> None:
        """After the HTTP stream was down and is up again, the node registers anew."""
        w = self.world(False)
        w.node.register(IPv4Address("192.168.103.150"))
        w.clock.advance(3.0)
        fake = w.fakes[0]
        w.deliver_http(fake)
        fake.set("up")
        fake.set("down", "the stream closed")
        self.assertEqual(fake.sent, [])
        fake.set("up")
        self.assertEqual([k for k, _ in fake.sent], [KIND_MIP])
