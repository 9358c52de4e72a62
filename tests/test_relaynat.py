# -*- test-case-name: tests.test_relaynat -*-
"""The relay's flow table (forward mode) on task.Clock."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines.relaynat import RelayForwarder

HA = IPv4Address("172.31.0.2")


class RelayForwarderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fw = RelayForwarder(clock=self.clock, ports=(30000, 30003), idle_timeout=60.0)
        self.addCleanup(self.fw.stop)

    def up(self, name: str = "laptop", source: str = "192.0.2.7") -> None:
        self.fw.visitor_changed(name, source, HA, True)

    def send(self, *datagrams: tuple[bytes, tuple[str, int]]) -> list[tuple[bytes, int, str, int]]:
        out: list[tuple[bytes, int, str, int]] = []
        self.fw.from_clients(list(datagrams), out)
        return out

    def back(
        self, *datagrams: tuple[int, bytes, tuple[str, int]]
    ) -> list[tuple[bytes, tuple[str, int]]]:
        out: list[tuple[bytes, tuple[str, int]]] = []
        self.fw.from_home(list(datagrams), out)
        return out

    def test_not_a_visitor_is_dropped(self) -> None:
        """Never an open relay: nothing goes out for a source that is no visitor."""
        self.assertEqual(self.send((b"esp", ("192.0.2.99", 4500))), [])
        self.assertEqual(self.fw.counters["dropped_not_visitor"], 1)
        self.assertEqual(self.fw.by_client, {})

    def test_visitor_flow_both_ways(self) -> None:
        self.up()
        out = self.send((b"one", ("192.0.2.7", 4500)), (b"two", ("192.0.2.7", 4500)))
        self.assertEqual(
            out, [(b"one", 30000, "172.31.0.2", 4500), (b"two", 30000, "172.31.0.2", 4500)]
        )
        self.assertEqual(
            self.back((30000, b"reply", ("172.31.0.2", 4500))), [(b"reply", ("192.0.2.7", 4500))]
        )
        self.assertEqual(self.fw.counters["from_clients"], 2)
        self.assertEqual(self.fw.counters["from_home"], 1)

    def test_two_flows_two_ports(self) -> None:
        self.up()
        a = self.send((b"a", ("192.0.2.7", 4500)))
        b = self.send((b"b", ("192.0.2.7", 61000)))
        self.assertNotEqual(a[0][1], b[0][1])
        self.assertEqual(
            self.back((b[0][1], b"x", ("172.31.0.2", 4500))), [(b"x", ("192.0.2.7", 61000))]
        )

    def test_reply_from_elsewhere_dropped(self) -> None:
        self.up()
        port = self.send((b"a", ("192.0.2.7", 4500)))[0][1]
        self.assertEqual(self.back((port, b"x", ("172.31.0.9", 4500))), [])
        self.assertEqual(self.back((port, b"x", ("172.31.0.2", 500))), [])
        self.assertEqual(self.fw.counters["dropped_wrong_home_agent"], 2)
        self.assertEqual(self.back((port + 1, b"x", ("172.31.0.2", 4500))), [])
        self.assertEqual(self.fw.counters["dropped_no_flow"], 1)

    def test_visitor_leaving_ends_flows(self) -> None:
        self.up()
        port = self.send((b"a", ("192.0.2.7", 4500)))[0][1]
        self.fw.visitor_changed("laptop", "192.0.2.7", HA, False)
        self.assertEqual(self.back((port, b"x", ("172.31.0.2", 4500))), [])
        self.assertEqual(self.send((b"a", ("192.0.2.7", 4500))), [])
        self.assertEqual(self.fw.counters["flows_ended"], 1)

    def test_idle_flow_expires(self) -> None:
        self.up()
        port = self.send((b"a", ("192.0.2.7", 4500)))[0][1]
        self.clock.advance(40)
        self.back((port, b"x", ("172.31.0.2", 4500)))  # traffic keeps it
        self.clock.advance(40)
        self.assertIn(port, self.fw.by_port)
        self.clock.advance(90)
        self.assertNotIn(port, self.fw.by_port)

    def test_port_range_exhausted(self) -> None:
        self.up()
        for p in range(4):
            self.assertEqual(len(self.send((b"a", ("192.0.2.7", 1000 + p)))), 1)
        self.assertEqual(self.send((b"a", ("192.0.2.7", 2000))), [])
        self.assertEqual(self.fw.counters["dropped_table_full"], 1)

    def test_bad_range_refused(self) -> None:
        with self.assertRaises(ValueError):
            RelayForwarder(clock=self.clock, ports=(10, 5))

    @given(
        st.lists(
            st.tuples(
                st.integers(0, 70000),
                st.binary(max_size=40),
                st.tuples(st.sampled_from(["172.31.0.2", "1.2.3.4"]), st.integers(0, 65535)),
            )
        )
    )
    def test_fuzz_from_home(self, items: list[tuple[int, bytes, tuple[str, int]]]) -> None:
        fw = RelayForwarder(clock=Clock())
        fw.visitor_changed("laptop", "192.0.2.7", HA, True)
        out: list[tuple[bytes, int, str, int]] = []
        fw.from_clients([(b"a", ("192.0.2.7", 4500))], out)
        back: list[tuple[bytes, tuple[str, int]]] = []
        fw.from_home(items, back)
        for _, client in back:
            self.assertEqual(client, ("192.0.2.7", 4500))
        fw.stop()
