# -*- test-case-name: tests.test_relaynat -*-
"""The relay's flow table (forward mode) on task.Clock."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines.relaynat import GATEWAY_PORTS, Flow, GatewayTranslator, RelayForwarder

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


VIP = "10.79.0.1"
VIP2 = "10.79.0.2"
INSIDE = "10.77.0.1"
INSIDE2 = "10.77.0.2"
HA_OUT = "192.0.2.1"
HA2_OUT = "192.0.2.2"


class GatewayTranslatorTests(SynchronousTestCase):
    """The flow table of a relay acting as its clients' VPN gateway (figure 7)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.gw = GatewayTranslator(
            clock=self.clock, inside={INSIDE: HA_OUT, INSIDE2: HA2_OUT},
            ports=(30000, 30003), idle_timeout=60.0,
        )  # fmt: skip
        self.addCleanup(self.gw.stop)

    def up(self, name: str = "laptop", vip: str = VIP) -> None:
        self.gw.visitor_changed(name, vip, IPv4Address(vip), True)

    def send(
        self, *items: tuple[bytes, str, int, str, int]
    ) -> list[tuple[bytes, int, str, int]]:
        out: list[tuple[bytes, int, str, int]] = []
        self.gw.from_inner(list(items), out)
        return out

    def back(self, *items: tuple[int, bytes, tuple[str, int]]) -> list[tuple[bytes, Flow]]:
        out: list[tuple[bytes, Flow]] = []
        self.gw.from_home_flows(list(items), out)
        return out

    def test_ports(self) -> None:
        """Registrations (434) and the client's own ESP and IKE with home (4500), nothing else."""
        self.assertEqual(GATEWAY_PORTS, frozenset({434, 4500}))

    def test_flow_both_ways(self) -> None:
        self.up()
        out = self.send((b"reg", VIP, 4500, INSIDE, 434), (b"reg2", VIP, 4500, INSIDE, 434))
        self.assertEqual(out, [(b"reg", 30000, HA_OUT, 434), (b"reg2", 30000, HA_OUT, 434)])
        (flow,) = self.gw.by_client.values()
        self.assertEqual((flow.client, flow.inside, flow.home_port, flow.home_agent, flow.visitor),
                         ((VIP, 4500), INSIDE, 434, HA_OUT, "laptop"))  # fmt: skip
        back = self.back((30000, b"reply", (HA_OUT, 434)))
        self.assertEqual(back, [(b"reply", flow)])
        self.assertEqual(self.gw.counters["from_clients"], 2)
        self.assertEqual(self.gw.counters["from_home"], 1)
        self.assertEqual(self.gw.counters["flows_made"], 1)

    def test_inside_address_picks_home_agent(self) -> None:
        self.up()
        out = self.send((b"a", VIP, 4500, INSIDE2, 4500))
        self.assertEqual(out, [(b"a", 30000, HA2_OUT, 4500)])

    def test_only_present_visitors(self) -> None:
        """No flow from an address whose tunnel is not up (another pool address)."""
        self.up()
        self.assertEqual(self.send((b"x", VIP2, 4500, INSIDE, 434)), [])
        self.assertEqual(self.gw.counters["dropped_not_visitor"], 1)
        self.assertEqual(self.gw.by_client, {})
        self.up("phone", VIP2)
        self.assertEqual(len(self.send((b"x", VIP2, 4500, INSIDE, 434))), 1)
        self.assertEqual(self.gw.by_client[(VIP2, 4500, INSIDE, 434)].visitor, "phone")

    def test_nobody_present(self) -> None:
        self.assertEqual(self.send((b"x", VIP, 4500, INSIDE, 434)), [])
        self.assertEqual(self.gw.counters["dropped_not_visitor"], 1)

    def test_only_inside_addresses(self) -> None:
        """Not the home agent's outer address, not another inside host, not the Internet."""
        self.up()
        for dst in (HA_OUT, "10.77.0.200", "8.8.8.8", VIP):
            self.assertEqual(self.send((b"x", VIP, 4500, dst, 434)), [])
        self.assertEqual(self.gw.counters["dropped_not_home_agent"], 4)
        self.assertEqual(self.gw.by_client, {})

    def test_only_gateway_ports(self) -> None:
        self.up()
        for dport in (22, 53, 500, 4501, 0, 65535):
            self.assertEqual(self.send((b"x", VIP, 4500, INSIDE, dport)), [])
        self.assertEqual(self.gw.counters["dropped_not_home_agent"], 6)
        self.assertEqual(self.gw.by_client, {})

    def test_home_port_checked_back(self) -> None:
        """A flow to 434 takes replies from 434 only, a flow to 4500 from 4500 only."""
        self.up()
        reg = self.send((b"r", VIP, 4500, INSIDE, 434))[0][1]
        esp = self.send((b"e", VIP, 4500, INSIDE, 4500))[0][1]
        self.assertNotEqual(reg, esp)
        self.assertEqual(self.back((reg, b"x", (HA_OUT, 4500))), [])
        self.assertEqual(self.back((esp, b"x", (HA_OUT, 434))), [])
        self.assertEqual(self.back((reg, b"x", (HA2_OUT, 434))), [])
        self.assertEqual(self.back((reg, b"x", (INSIDE, 434))), [])
        self.assertEqual(self.gw.counters["dropped_wrong_home_agent"], 4)
        self.assertEqual(len(self.back((reg, b"x", (HA_OUT, 434)))), 1)
        self.assertEqual(len(self.back((esp, b"x", (HA_OUT, 4500)))), 1)
        self.assertEqual(self.back((30003, b"x", (HA_OUT, 434))), [])
        self.assertEqual(self.gw.counters["dropped_no_flow"], 1)

    def test_idle_expiry(self) -> None:
        self.up()
        port = self.send((b"a", VIP, 4500, INSIDE, 4500))[0][1]
        self.clock.advance(40)
        self.back((port, b"x", (HA_OUT, 4500)))  # traffic keeps it
        self.clock.advance(40)
        self.assertIn(port, self.gw.by_port)
        self.clock.advance(90)
        self.assertNotIn(port, self.gw.by_port)
        self.assertEqual(self.gw.by_client, {})
        self.assertEqual(self.gw.counters["flows_ended"], 1)
        self.assertEqual(self.back((port, b"x", (HA_OUT, 4500))), [])
        # The visitor is still there: a new datagram makes a new flow.
        self.assertEqual(len(self.send((b"b", VIP, 4500, INSIDE, 4500))), 1)

    def test_visitor_gone_ends_flows(self) -> None:
        self.up()
        self.up("phone", VIP2)
        a = self.send((b"a", VIP, 4500, INSIDE, 434))[0][1]
        b = self.send((b"b", VIP, 4500, INSIDE, 4500))[0][1]
        c = self.send((b"c", VIP2, 4500, INSIDE, 4500))[0][1]
        self.gw.visitor_changed("laptop", VIP, IPv4Address(0), False)
        self.assertEqual(self.gw.counters["flows_ended"], 2)
        self.assertEqual(set(self.gw.by_port), {c})
        self.assertNotIn(VIP, self.gw.allowed)
        self.assertEqual(self.back((a, b"x", (HA_OUT, 434)), (b, b"x", (HA_OUT, 4500))), [])
        self.assertEqual(self.send((b"again", VIP, 4500, INSIDE, 434)), [])
        self.assertEqual(self.gw.counters["dropped_not_visitor"], 1)
        self.assertEqual(len(self.back((c, b"x", (HA_OUT, 4500)))), 1)

    def test_other_visitor_leaving_keeps_permission(self) -> None:
        """visitor_changed(False) for a name that does not own the address keeps the owner."""
        self.up()
        self.gw.visitor_changed("phone", VIP, IPv4Address(0), False)
        self.assertIn(VIP, self.gw.allowed)
        self.assertEqual(len(self.send((b"a", VIP, 4500, INSIDE, 434))), 1)

    def test_port_reuse(self) -> None:
        """Ports of ended flows are given again; a reused port belongs to its new flow only."""
        self.up()
        first = [self.send((b"a", VIP, 1000 + i, INSIDE, 4500))[0][1] for i in range(4)]
        self.assertEqual(sorted(first), [30000, 30001, 30002, 30003])
        self.assertEqual(self.send((b"a", VIP, 2000, INSIDE, 4500)), [])
        self.assertEqual(self.gw.counters["dropped_table_full"], 1)
        self.gw.visitor_changed("laptop", VIP, IPv4Address(0), False)
        self.assertEqual(self.gw.by_port, {})
        self.up("phone", VIP2)
        again = [self.send((b"b", VIP2, 3000 + i, INSIDE2, 434))[0][1] for i in range(4)]
        self.assertEqual(sorted(again), sorted(first))
        # A reply from the old flow's home agent and port to a reused port: not the new flow's.
        self.assertEqual(self.back((again[0], b"late", (HA_OUT, 4500))), [])
        self.assertEqual(self.gw.counters["dropped_wrong_home_agent"], 1)
        ((_, flow),) = self.back((again[0], b"new", (HA2_OUT, 434)))
        self.assertEqual((flow.visitor, flow.client), ("phone", (VIP2, 3000)))

    def test_stats(self) -> None:
        self.up()
        self.send((b"a", VIP, 4500, INSIDE, 434))
        stats = self.gw.stats()
        self.assertEqual(stats["visitors"], 1)
        self.assertEqual(
            stats["flows"],
            [{"client": f"{VIP}:4500", "port": 30000, "home_agent": HA_OUT, "visitor": "laptop"}],
        )

    @given(
        st.lists(
            st.tuples(
                st.binary(max_size=8),
                st.sampled_from([VIP, VIP2, INSIDE, "0.0.0.0"]),
                st.integers(0, 65535),
                st.sampled_from([INSIDE, INSIDE2, HA_OUT, "10.77.0.200"]),
                st.sampled_from([434, 4500, 53, 22, 0]),
            ),
            max_size=30,
        )
    )
    def test_fuzz_from_inner(self, items: list[tuple[bytes, str, int, str, int]]) -> None:
        """Whatever comes in: only the present visitor, only inside addresses and ports."""
        gw = GatewayTranslator(clock=Clock(), inside={INSIDE: HA_OUT, INSIDE2: HA2_OUT})
        gw.visitor_changed("laptop", VIP, IPv4Address(VIP), True)
        out: list[tuple[bytes, int, str, int]] = []
        gw.from_inner(items, out)
        for _, _, ha, dport in out:
            self.assertIn(ha, (HA_OUT, HA2_OUT))
            self.assertIn(dport, GATEWAY_PORTS)
        for flow in gw.by_client.values():
            self.assertEqual(flow.client[0], VIP)
            self.assertEqual(gw.inside[flow.inside or ""], flow.home_agent)
        allowed = [
            i for i in items if i[1] == VIP and i[3] in (INSIDE, INSIDE2) and i[4] in GATEWAY_PORTS
        ]
        self.assertEqual(len(out), len(allowed))
        gw.stop()


class GatewayPerVisitorCapTests(SynchronousTestCase):
    """One VPN client cannot fill the flow table: at most max_per_visitor flows each."""

    def test_cap(self) -> None:
        from twisted.internet.task import Clock

        from smobility.engines.relaynat import GatewayTranslator

        t = GatewayTranslator(clock=Clock(), inside={"10.77.0.1": "172.31.0.2"}, max_per_visitor=3)
        t.visitor_changed("laptop", "10.79.0.1", IPv4Address("10.79.0.1"), True)
        t.visitor_changed("phone", "10.79.0.2", IPv4Address("10.79.0.2"), True)
        out: list[tuple[bytes, int, str, int]] = []
        t.from_inner([(b"x", "10.79.0.1", 1000 + i, "10.77.0.1", 4500) for i in range(5)], out)
        self.assertEqual(len(out), 3)
        self.assertEqual(t.counters["dropped_visitor_flows"], 2)
        # Another visitor is unaffected.
        t.from_inner([(b"y", "10.79.0.2", 1000, "10.77.0.1", 434)], out)
        self.assertEqual(len(out), 4)
        # The visitor leaves: its count goes with its flows.
        t.visitor_changed("laptop", "10.79.0.1", IPv4Address("10.79.0.1"), False)
        self.assertNotIn("laptop", t.per_visitor)
        t.visitor_changed("laptop", "10.79.0.1", IPv4Address("10.79.0.1"), True)
        t.from_inner([(b"x", "10.79.0.1", 2000 + i, "10.77.0.1", 4500) for i in range(3)], out)
        self.assertEqual(len(out), 7)
