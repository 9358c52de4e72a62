# -*- test-case-name: tests.test_bench -*-
"""
wireguard-go as a benchmark peer: the userspace WireGuard, configured with C{wg}.

One C{wireguard-go -f} per side (C{ha} listening on its public address's port
51820, C{mn} with C{ha} as its endpoint over V1), keys made here (X25519 from
C{cryptography}, base64 as C{wg} wants them), addresses C{10.98.0.1} and
C{10.98.0.2}.  wireguard-go's control socket lives in C{/var/run/wireguard},
which namespaces share, so the interface names carry the lab prefix.
Routing as for OpenVPN: C{ha} routes the tunnel subnet, and in C{mn} a source
rule sends the client's replies to the home LAN into the tunnel.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from smobility.bench.context import BenchError
from smobility.bench.peers import TunnelPeer, first_line, reachable
from smobility.lab import Lab

HA_ADDRESS = "10.98.0.1"
CLIENT_ADDRESS = "10.98.0.2"
PREFIXLEN = 24
PORT = 51820
RULE_TABLE = "198"
RULE_PREF = "1098"
SOCKET_DIR = Path("/var/run/wireguard")


def keypair() -> tuple[str, str]:
    """A new WireGuard key pair, C{(private, public)}, base64 as C{wg} reads them."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


class WireguardTunnel(TunnelPeer):
    """wireguard-go in C{ha} and C{mn}, configured with wireguard-tools."""

    name = "wireguard"
    title = "wireguard-go"

    def check(self) -> None:
        """wireguard-go and wg must be installed."""
        self.ctx.tool("wireguard-go")
        self.ctx.tool("wg", "wireguard-tools")

    def device(self, role: str) -> str:
        """The interface name in C{role} (unique on the machine: see the module docstring)."""
        return f"wg{self.ctx.lab.prefix}{role[0]}"

    def _socket(self, role: str) -> Path:
        return SOCKET_DIR / f"{self.device(role)}.sock"

    def start(self) -> None:
        """Start both daemons, set keys, peers, addresses and routes; make a handshake."""
        ctx = self.ctx
        wg_go = ctx.tool("wireguard-go")
        wg = ctx.tool("wg", "wireguard-tools")
        ip = ctx.tool("ip", "iproute2")
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        keys = ctx.work / "wireguard"
        keys.mkdir(mode=0o700)
        pairs = {"ha": keypair(), "mn": keypair()}
        for role, (private, _) in pairs.items():
            path = keys / f"{role}.key"
            path.touch(mode=0o600)
            path.write_text(private + "\n")
        for role in ("ha", "mn"):
            dev = self.device(role)
            log = f"wireguard-{role}.log"
            proc = ctx.start(role, [wg_go, "-f", dev], log, env=env)
            self.procs.append(proc)
            sock = self._socket(role)
            ctx.wait_for(sock.exists, f"wireguard-go in {role}", alive=[proc], log=log)
        ha, mn = self.device("ha"), self.device("mn")
        ctx.lab.exec(
            "ha",
            wg,
            "set",
            ha,
            "private-key",
            str(keys / "ha.key"),
            "listen-port",
            str(PORT),
            "peer",
            pairs["mn"][1],
            "allowed-ips",
            f"{CLIENT_ADDRESS}/32",
        )
        ctx.lab.exec(
            "mn",
            wg,
            "set",
            mn,
            "private-key",
            str(keys / "mn.key"),
            "peer",
            pairs["ha"][1],
            "allowed-ips",
            f"{HA_ADDRESS}/{PREFIXLEN},{Lab.HOME_NET}",
            "endpoint",
            f"{Lab.HA_PUBLIC}:{PORT}",
        )
        for role, dev, address in (("ha", ha, HA_ADDRESS), ("mn", mn, CLIENT_ADDRESS)):
            ctx.lab.exec(role, ip, "addr", "add", f"{address}/{PREFIXLEN}", "dev", dev)
            ctx.lab.exec(role, ip, "link", "set", dev, "up")
        ctx.lab.exec(
            "mn", ip, "rule", "add", "from", CLIENT_ADDRESS, "lookup", RULE_TABLE, "pref", RULE_PREF
        )
        ctx.lab.exec("mn", ip, "route", "add", Lab.HOME_NET, "dev", mn, "table", RULE_TABLE)
        # Only the client knows an endpoint: its first packet makes the handshake
        # (until then the home side cannot send, and pings from there would fail).
        if not reachable(ctx, "mn", HA_ADDRESS):
            raise BenchError(
                f"no handshake: {HA_ADDRESS} does not answer pings from mn through wireguard-go;"
                f" logs:\n{ctx.log_tail('wireguard-mn.log')}{ctx.log_tail('wireguard-ha.log')}"
            )
        self.client_address = CLIENT_ADDRESS

    def stop(self) -> None:
        """Stop both daemons; remove a control socket a killed one left behind."""
        super().stop()
        for role in ("ha", "mn"):
            self._socket(role).unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """Version and configuration."""
        return {
            "version": first_line(self.ctx, "ha", self.ctx.tool("wireguard-go"), "--version"),
            "config": "UDP 51820, Noise IK / ChaCha20-Poly1305 (WireGuard has no AES), "
            f"MTU default, {HA_ADDRESS} <-> {CLIENT_ADDRESS}",
            "processes": "wireguard-go (ha), wireguard-go (mn)",
            "client_address": self.client_address,
        }
