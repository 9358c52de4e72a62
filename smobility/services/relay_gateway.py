# -*- test-case-name: tests.test_relay_gateway -*-
"""The relay as its clients' IPsec VPN gateway (the seed's figure 7: "the gateway
may incorporate the relay's functions"), in the manner of RFC 5265.

A client whose transport is ``kind = "gateway"`` runs IKEv2 with the relay as
a road warrior: it proves the ``ike_identity`` of its ``[[visitor]]`` table
(shared key, or a certificate from the home CA), asks by the configuration
payload for a virtual address (the visitor's address in ``[ike] pool``) and
gets a tunnel-mode CHILD_SA from that address to the home agents' inside
addresses.  Inside the tunnel it registers with its home agent (a co-located
care-of address: the virtual one) and keeps its own ESP and IKE with home, as
through any VPN gateway (:class:`smobility.services.gateway.GatewayTunnel`).

The relay opens what the client sends
(:class:`~smobility.engines.reseal.ReSealer`, a "plain" visitor: the inner
packet must come from the client's virtual address) and lets through only
UDP to a home agent's inside address, ports 434 and 4500; each such flow is
carried to the home agent inside IP-in-IP from a relay port
(:class:`~smobility.engines.relaynat.GatewayTranslator`), so the home
firewall still admits nothing but protocol 4 from the relay, and the home
agent sees the relay as the client's NAT (RFC 3519).  The way back: the
datagram is put in UDP/IPv4 from the inside address to the client's virtual
address and sealed for the client.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

from twisted.logger import Logger

from smobility.config import RelayConfig
from smobility.engines.ike import ChildSA, IKEConfig, Role, ts_host
from smobility.engines.relaynat import Flow, GatewayTranslator
from smobility.engines.reseal import ReSealer, Visitor
from smobility.services.dataplane import child_sas
from smobility.services.ike_service import IKEService
from smobility.services.relay_terminate import relay_credentials, visitor_peers
from smobility.wire.errors import WireError
from smobility.wire.ipip import parse_udp_packet, udp_packet

SendClients = Callable[[list[tuple[bytes, tuple[str, int]]]], None]
SendHome = Callable[[list[tuple[bytes, int, str, int]]], None]


def virtual_addresses(cfg: RelayConfig) -> dict[str, IPv4Address]:
    """Each visitor's virtual address: the n-th visitor gets the pool's n-th host address."""
    assert cfg.ike is not None and cfg.ike.pool is not None
    hosts = cfg.ike.pool.hosts()
    return {v.name: next(hosts) for v in cfg.visitors}


class RelayGateway:
    """The relay's VPN-gateway function: IKE responder with virtual addresses, flows home."""

    log = Logger()

    def __init__(
        self,
        cfg: RelayConfig,
        reactor: Any,
        *,
        send_clients: SendClients,
        send_home: SendHome,
    ) -> None:
        ike = cfg.ike
        if ike is None or ike.pool is None:
            raise ValueError("a relay acting as VPN gateway needs [ike] with a pool")
        self.cfg = cfg
        self.reactor = reactor
        self.send_clients = send_clients
        self.send_home = send_home
        self.local_clients = (cfg.listen, cfg.esp_port)
        creds = relay_credentials(ike, reactor)
        # The home agents' inside addresses (what clients may reach) -> outer.
        inside = {
            str(h.inside_address): str(h.address)
            for h in cfg.home_agent_ike
            if h.inside_address is not None
        }
        inside_ts = tuple(ts_host(IPv4Address(a)) for a in inside)
        self.vips = virtual_addresses(cfg)
        self.visitors, peers = visitor_peers(cfg.visitors, ike.auth, lambda v: self.vips[v.name])
        # Each client reaches the home agents' inside addresses, nothing else.
        peers = [replace(p, local_ts=inside_ts) for p in peers]
        self.client_ike = IKEService(
            Role.RESPONDER,
            IKEConfig(
                local_id=creds.local_id, peers=peers, local_host=cfg.listen,
                ike_port=cfg.esp_port, nat_t_port=cfg.esp_port, certificate=creds.certificate,
                private_key=creds.private_key, trust_anchors=creds.anchors, **creds.suites,
            ),
            reactor, send_nat_t=send_clients, cert_check=creds.client_check,
            on_up=self._client_up, on_down=self._client_down,
        )  # fmt: skip
        self.reseal = ReSealer(clock=reactor)
        self.reseal.on_client_ike = self._client_ike_in
        self.flows = GatewayTranslator(clock=reactor, inside=inside)
        self._unused: list[tuple[bytes, int, str, int]] = []
        self._plain: list[tuple[Visitor, bytes]] = []
        self._udp: list[tuple[bytes, str, int, str, int]] = []
        self._owners: list[Visitor] = []
        self._to_home: list[tuple[bytes, int, str, int]] = []
        self._back: list[tuple[bytes, Flow]] = []
        self._ident = 0

    # -- IKE ------------------------------------------------------------------------

    def _client_up(self, child: ChildSA) -> None:
        v = self.visitors.get(str(child.peer_id))
        if v is None:
            return
        vip = self.vips[v.name]
        inbound, outbound = child_sas(child)
        try:
            if child.replaces is not None:
                self.reseal.rekey_client(v.name, inbound, outbound)
            else:
                self.reseal.set_client(v.name, vip, inbound, outbound, child.peer_addr, plain=True)
        except ValueError as e:
            self.log.error("VPN client {name}: SA not installed: {why}", name=v.name, why=e)
            return
        if child.replaces is None:
            self.flows.visitor_changed(v.name, str(vip), IPv4Address(vip), True)
            self.log.info(
                "VPN client {name} at {host}:{port} has {vip} (spi_in 0x{i:08x})",
                name=v.name, host=child.peer_addr[0], port=child.peer_addr[1], vip=vip,
                i=child.inbound_spi,
            )  # fmt: skip

    def _client_down(self, child: ChildSA, reason: str) -> None:
        v = self.visitors.get(str(child.peer_id))
        if v is None:
            return
        self.reseal.retire_client(v.name, child.inbound_spi)
        current = self.reseal.visitors.get(v.name)
        if current is not None and current.client is not None and (
            current.client.inbound.spi == child.inbound_spi
        ):
            self.reseal.drop_client(v.name, child.inbound_spi)
            self.flows.visitor_changed(v.name, str(self.vips[v.name]), IPv4Address(0), False)
            self.log.info("VPN client {name}: tunnel down ({why})", name=v.name, why=reason)

    def _client_ike_in(self, message: bytes, addr: tuple[str, int]) -> None:
        self.client_ike.receive(message, addr, self.local_clients)

    # -- datagrams ------------------------------------------------------------------

    def from_clients(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """A batch from the clients' ESP port: open, check, carry the UDP home."""
        plain = self._plain
        self.reseal.from_clients(datagrams, self._unused, plain)
        if not plain:
            return
        udp = self._udp
        counters = self.reseal.counters
        inet_ntoa = socket.inet_ntoa
        for _visitor, inner in plain:
            try:
                src, sport, dst, dport, payload = parse_udp_packet(inner)
            except WireError:
                counters["gateway_not_udp"] += 1
                continue
            udp.append((payload, inet_ntoa(src), sport, inet_ntoa(dst), dport))
        plain.clear()
        out = self._to_home
        self.flows.from_inner(udp, out)
        udp.clear()
        if out:
            self.send_home(out)
            out.clear()

    def from_home(self, items: list[tuple[int, bytes, tuple[str, int]]]) -> None:
        """A batch from the home agents (inside IP-in-IP) to the flows' relay ports."""
        back = self._back
        self.flows.from_home_flows(items, back)
        if not back:
            return
        out: list[tuple[bytes, tuple[str, int]]] = []
        visitors = self.reseal.visitors
        inet_aton = socket.inet_aton
        ident = self._ident
        for payload, flow in back:
            v = visitors.get(flow.visitor)
            if v is None or flow.inside is None:
                continue
            ident = (ident + 1) & 0xFFFF
            try:
                inner = udp_packet(
                    inet_aton(flow.inside), flow.home_port, v.home_address,
                    flow.client[1], payload, ident=ident,
                )  # fmt: skip
            except WireError:
                self.reseal.counters["gateway_too_big"] += 1
                continue
            sealed = self.reseal.seal_to_client(v, inner)
            if sealed is not None:
                out.append(sealed)
        self._ident = ident
        back.clear()
        if out:
            self.send_clients(out)

    def stop(self) -> None:
        """Delete the IKE SAs (best effort) and the flows' timer."""
        self.client_ike.stop()
        self.flows.stop()

    def stats(self) -> dict[str, object]:
        """Counters of the tunnels, the flows and the IKE engine."""
        return {
            "reseal": self.reseal.stats(),
            "flows": self.flows.stats(),
            "ike_clients": self.client_ike.stats(),
        }


__all__ = ["RelayGateway", "virtual_addresses"]
