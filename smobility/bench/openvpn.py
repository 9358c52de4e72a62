# -*- test-case-name: tests.test_bench -*-
"""
OpenVPN 2.6 as a benchmark peer: UDP, AES-128-GCM, userspace (no DCO).

The server runs in C{ha} on its public address, the client in C{mn} over V1:
the same outer path as our tunnel.  TLS mode with a throwaway PKI
(L{smobility.bench.certs}; static keys are deprecated in 2.6), C{--dh none}
(ECDHE), C{--data-ciphers AES-128-GCM} (the client waits until its log says
the data channel uses it), C{--keepalive 10 60}, C{--disable-dco} (this
kernel has no ovpn-dco, and the comparison is userspace against userspace),
everything else OpenVPN's defaults.

The tunnel has its own subnet, C{10.99.0.0/24}, with the server at C{.1}.
C{ha} routes it (the correspondent reaches the client through C{ha}); in
C{mn}, a source rule sends the client's replies to the home LAN into the
tunnel (other tunnels claim the home LAN in the main table meanwhile).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from smobility.bench.certs import make_pki
from smobility.bench.context import BenchError
from smobility.bench.peers import TunnelPeer, first_line
from smobility.lab import Lab

SUBNET = "10.99.0.0"
NETMASK = "255.255.255.0"
SERVER_ADDRESS = "10.99.0.1"
PORT = 1194
DEVICE = "ovpnb0"
RULE_TABLE = "199"
RULE_PREF = "1099"
CIPHER = "AES-128-GCM"


class OpenVpnTunnel(TunnelPeer):
    """OpenVPN 2.6 server in C{ha}, client in C{mn}, UDP, AES-128-GCM."""

    name = "openvpn"
    title = "OpenVPN 2.6"

    def check(self) -> None:
        """openvpn must be installed."""
        self.ctx.tool("openvpn")

    def _common(self) -> list[str]:
        return [
            "--dev",
            DEVICE,
            "--dev-type",
            "tun",
            "--proto",
            "udp4",
            "--cipher",
            CIPHER,
            "--data-ciphers",
            CIPHER,
            "--disable-dco",
            "--verb",
            "3",
        ]

    def start(self) -> None:
        """Make the PKI, start the server, then the client; route the home LAN for the client."""
        ctx = self.ctx
        openvpn = ctx.tool("openvpn")
        pki = make_pki(ctx.work / "openvpn-pki")
        server = ctx.start(
            "ha",
            [
                openvpn,
                "--server",
                SUBNET,
                NETMASK,
                "--topology",
                "subnet",
                "--local",
                Lab.HA_PUBLIC,
                "--port",
                str(PORT),
                "--ca",
                str(pki.ca),
                "--cert",
                str(pki.server_cert),
                "--key",
                str(pki.server_key),
                "--dh",
                "none",
                "--keepalive",
                "10",
                "60",
                *self._common(),
            ],
            "openvpn-server.log",
        )
        self.procs.append(server)
        ctx.wait_for(
            ctx.file_has("openvpn-server.log", "Initialization Sequence Completed"),
            "the OpenVPN server",
            alive=[server],
            log="openvpn-server.log",
        )
        client = ctx.start(
            "mn",
            [
                openvpn,
                "--client",
                "--remote",
                Lab.HA_PUBLIC,
                str(PORT),
                "--nobind",
                "--ca",
                str(pki.ca),
                "--cert",
                str(pki.client_cert),
                "--key",
                str(pki.client_key),
                "--remote-cert-tls",
                "server",
                *self._common(),
            ],
            "openvpn-client.log",
        )
        self.procs.append(client)
        ctx.wait_for(
            ctx.file_has("openvpn-client.log", f"Data Channel: cipher '{CIPHER}'"),
            "the OpenVPN client",
            alive=[client, server],
            log="openvpn-client.log",
        )
        self.client_address = self._address()
        ip = ctx.tool("ip", "iproute2")
        ctx.lab.exec(
            "mn",
            ip,
            "rule",
            "add",
            "from",
            self.client_address,
            "lookup",
            RULE_TABLE,
            "pref",
            RULE_PREF,
        )
        ctx.lab.exec("mn", ip, "route", "add", Lab.HOME_NET, "dev", DEVICE, "table", RULE_TABLE)

    def _address(self) -> str:
        """The address the server pushed to the client (on C{mn}'s tun device)."""
        out = self.ctx.lab.exec(
            "mn", self.ctx.tool("ip", "iproute2"), "-4", "-j", "addr", "show", "dev", DEVICE
        )
        for link in json.loads(out.stdout or "[]"):
            for info in link.get("addr_info", []):
                if info.get("family") == "inet":
                    address = str(info["local"])
                    if ipaddress.IPv4Address(address) in ipaddress.IPv4Network(
                        f"{SUBNET}/{NETMASK}"
                    ):
                        return address
        raise BenchError(f"the OpenVPN client has no address in {SUBNET}/{NETMASK} on {DEVICE}")

    def describe(self) -> dict[str, Any]:
        """Version and configuration."""
        return {
            "version": first_line(self.ctx, "ha", self.ctx.tool("openvpn"), "--version"),
            "config": f"UDP, TLS (ECDSA P-256 certificates, --dh none), --data-ciphers "
            f"{CIPHER}, --disable-dco (userspace tun), topology subnet {SUBNET}/24, "
            "other settings default",
            "processes": "openvpn server (ha), openvpn client (mn)",
            "client_address": self.client_address,
        }
