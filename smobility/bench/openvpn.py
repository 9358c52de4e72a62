# -*- test-case-name: tests.test_bench -*-
"""
OpenVPN 2.6 as a benchmark peer: UDP (or TCP through an HTTP proxy), AES-128-GCM, no DCO.

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

L{OpenVpnTcpTunnel} is the same over TCP (C{--proto tcp-server} on the
server, C{--proto tcp-client} on the client) with the client reaching the
server through an HTTP proxy's CONNECT, C{--http-proxy HOST PORT AUTHFILE
basic}: what a client behind a firewall that lets out only an authenticated
HTTP proxy would run.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smobility.bench.certs import Pki, make_pki
from smobility.bench.context import BenchContext, BenchError
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

    server_proto = "udp4"
    """C{--proto} of the server."""
    client_proto = "udp4"
    """C{--proto} of the client."""
    log_prefix = "openvpn"
    """The logs are C{<log_prefix>-server.log} and C{<log_prefix>-client.log}."""

    def _common(self, proto: str) -> list[str]:
        return [
            "--dev",
            DEVICE,
            "--dev-type",
            "tun",
            "--proto",
            proto,
            "--cipher",
            CIPHER,
            "--data-ciphers",
            CIPHER,
            "--disable-dco",
            "--verb",
            "3",
        ]

    def server_argv(self, openvpn: str, pki: Pki) -> list[str]:
        """The server's command line (in C{ha}, on its public address)."""
        return [
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
            *self._common(self.server_proto),
        ]

    def client_argv(self, openvpn: str, pki: Pki) -> list[str]:
        """The client's command line (in C{mn})."""
        return [
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
            *self._common(self.client_proto),
        ]

    def start(self) -> None:
        """Make the PKI, start the server, then the client; route the home LAN for the client."""
        ctx = self.ctx
        openvpn = ctx.tool("openvpn")
        pki = make_pki(ctx.work / f"{self.log_prefix}-pki")
        server_log = f"{self.log_prefix}-server.log"
        client_log = f"{self.log_prefix}-client.log"
        server = ctx.start("ha", self.server_argv(openvpn, pki), server_log)
        self.procs.append(server)
        ctx.wait_for(
            ctx.file_has(server_log, "Initialization Sequence Completed"),
            "the OpenVPN server",
            alive=[server],
            log=server_log,
        )
        client = ctx.start("mn", self.client_argv(openvpn, pki), client_log)
        self.procs.append(client)
        ctx.wait_for(
            ctx.file_has(client_log, f"Data Channel: cipher '{CIPHER}'"),
            "the OpenVPN client",
            timeout=30,
            alive=[client, server],
            log=client_log,
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

    def stop(self) -> None:
        """
        Stop both processes (by PID) and remove the source rule from C{mn}.

        The rule outlives the tun device; left behind, it would make the next
        OpenVPN peer's C{ip rule add} (another scenario in the same lab) fail.
        """
        super().stop()
        if self.client_address:
            self.ctx.lab.exec(
                "mn",
                self.ctx.tool("ip", "iproute2"),
                "rule",
                "del",
                "from",
                self.client_address,
                "lookup",
                RULE_TABLE,
                "pref",
                RULE_PREF,
                check=False,
            )

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
            "config": f"{self._transport_words()}, TLS (ECDSA P-256 certificates, --dh none), "
            f"--data-ciphers {CIPHER}, --disable-dco (userspace tun), topology subnet "
            f"{SUBNET}/24, other settings default",
            "processes": "openvpn server (ha), openvpn client (mn)",
            "client_address": self.client_address,
        }

    def _transport_words(self) -> str:
        return "UDP"


@dataclass(frozen=True)
class HttpProxy:
    """An HTTP proxy that does CONNECT with Basic authentication (no password in the C{repr})."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)


def authfile_text(proxy: HttpProxy) -> str:
    """
    The content of OpenVPN's C{--http-proxy} authfile: user name, then password, a line each.

    @raise ValueError: either is empty or not a single line.
    """
    for value in (proxy.username, proxy.password):
        if not value or "\n" in value or "\r" in value:
            raise ValueError("proxy user name and password must be non-empty single lines")
    return f"{proxy.username}\n{proxy.password}\n"


class OpenVpnTcpTunnel(OpenVpnTunnel):
    """OpenVPN 2.6 over TCP, the client through an HTTP proxy (CONNECT, Basic auth)."""

    title = "OpenVPN 2.6 TCP"
    server_proto = "tcp-server"
    client_proto = "tcp-client"
    log_prefix = "openvpn-tcp"

    def __init__(self, ctx: BenchContext, proxy: HttpProxy) -> None:
        """A peer for C{ctx} whose client goes through C{proxy}."""
        super().__init__(ctx)
        self.proxy = proxy

    @property
    def authfile(self) -> Path:
        """Where the proxy credentials for OpenVPN go (written by L{start}, mode 0600)."""
        return self.ctx.work / f"{self.log_prefix}-proxy-auth"

    def start(self) -> None:
        """Write the proxy credentials, then start as over UDP."""
        self.authfile.touch(mode=0o600)
        self.authfile.write_text(authfile_text(self.proxy))
        super().start()

    def client_argv(self, openvpn: str, pki: Pki) -> list[str]:
        """The client's command line over TCP, with C{--http-proxy HOST PORT AUTHFILE basic}."""
        return super().client_argv(openvpn, pki) + [
            "--http-proxy",
            self.proxy.host,
            str(self.proxy.port),
            str(self.authfile),
            "basic",
        ]

    def _transport_words(self) -> str:
        return (
            "TCP (--proto tcp-server / tcp-client), the client through the HTTP proxy "
            f"{self.proxy.host}:{self.proxy.port} (--http-proxy, Basic auth)"
        )
