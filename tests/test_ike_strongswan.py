# -*- test-case-name: tests.test_ike_strongswan -*-
"""IKEv2 interop with strongSwan 5.9 (charon + kernel-libipsec) in two namespaces.

Needs root, ``ip``, strongSwan's charon and swanctl (PEERS.md); skips
otherwise, and fails instead under ``CI=true``.

Each test makes two namespaces ``smobt<hex>a`` (ours) and ``smobt<hex>b``
(strongSwan) joined by a veth pair, starts one charon in B with its own
``/run`` (a bind mount in the mount namespace ``ip netns exec`` creates) and
its own vici socket (:class:`smobility.lab.strongswan.Charon`, here with its
key dumps on), and runs our IKE engine in A: this module run as a
script (``python -m tests.test_ike_strongswan DRIVER-ARGS``) drives
:class:`~smobility.engines.ike.IKEEngine` over real UDP sockets on ports 500
and 4500 and the ESP data path through
:class:`~smobility.engines.tunnel.TunnelEngine`.  It reports JSON lines on
stdout and takes commands on stdin.

Checked: IKE_SA and CHILD_SA up on both sides (``swanctl --list-sas``), our
SK_d ... SK_pr equal to strongSwan's ``ike = 4`` key dump for the same SA,
ICMP echo through ESP both ways (sealed and opened by our ESP code, carried by
strongSwan's userspace ESP and its TUN device), INVALID_KE_PAYLOAD retry, a
wrong shared key refused with AUTHENTICATION_FAILED, and Delete.

Rekeying (CREATE_CHILD_SA): strongSwan and our engine rekey each other's
CHILD_SA (without and with PFS) and IKE SA, on request (``swanctl --rekey``,
the driver's ``rekey-child`` / ``rekey-ike``) and by lifetime (strongSwan's
``rekey_time``, our ``ike_rekey_time``), while a pinger on strongSwan's side
sends an echo every 20 ms: none is lost, ``swanctl --list-sas`` shows the new
SPIs installed (and only them), and every new key equals charon's dump.

tshark: the IKE traffic between our initiator and strongSwan, captured on our
veth, decrypted with our keys in tshark's ``ikev2_decryption_table``: the
inner payloads show, no malformed packet, and a wrong key opens nothing.

Every process is stopped by its PID, the namespaces are removed even on
failure, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from smobility.lab import strongswan as swan
from smobility.lab.strongswan import (
    CHARON,
    ike_sas,
    install_credentials,
    installed_children,
    pubkey_auth,
)
from tests.util import find_tool, require_root, require_tool, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
PSK = "smobility interop shared key 0123"
ADDR_A = "10.231.0.1"  # our engine
ADDR_B = "10.231.0.2"  # strongSwan
VIP = "10.99.0.10"  # the initiator's inner address (CP)
INNER_B = "10.98.0.1"  # an inner address on strongSwan's side
ID_OURS = "client.smob.test"
ID_SWAN = "ha.smob.test"

KEY_NAMES = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")


def _run(
    cmd: list[str], *, check: bool = True, timeout: float = 20, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


# ---------------------------------------------------------------------------
# The lab: two namespaces and a veth pair
# ---------------------------------------------------------------------------


class Namespaces:
    """Two namespaces joined by a veth pair; :meth:`destroy` is safe to call any time."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.a = f"smobt{tag}a"
        self.b = f"smobt{tag}b"
        self.veth_a = f"smobt{tag}va"
        self.veth_b = f"smobt{tag}vb"

    def create(self) -> None:
        """Make the namespaces, the link, the addresses; loopback up; no rp_filter."""
        _run(["ip", "netns", "add", self.a])
        _run(["ip", "netns", "add", self.b])
        _run(["ip", "link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b])
        _run(["ip", "link", "set", self.veth_a, "netns", self.a])
        _run(["ip", "link", "set", self.veth_b, "netns", self.b])
        for ns, dev, addr in ((self.a, self.veth_a, ADDR_A), (self.b, self.veth_b, ADDR_B)):
            self.ip(ns, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip(ns, "link", "set", dev, "up")
            self.ip(ns, "link", "set", "lo", "up")
            for key in ("all", "default"):
                self.exec(ns, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")

    def ip(self, ns: str, *args: str) -> str:
        """Run ``ip ARGS`` inside ``ns``."""
        return _run(["ip", "-n", ns, *args]).stdout

    def exec(self, ns: str, *args: str, check: bool = True, timeout: float = 20) -> str:
        """Run a command inside ``ns``; return its output."""
        r = _run(["ip", "netns", "exec", ns, *args], check=check, timeout=timeout)
        return r.stdout + r.stderr

    def destroy(self) -> None:
        """Remove both namespaces (the veth pair goes with them)."""
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.veth_a], capture_output=True, check=False)


# ---------------------------------------------------------------------------
# strongSwan
# ---------------------------------------------------------------------------


def swanctl_responder(ike: str, esp: str = "aes128gcm16,aes256gcm16") -> str:
    """swanctl.conf of strongSwan as the responder, handing out VIP by CP.

    ``esp``: its ESP proposals (a DH group in them means PFS on rekeys).
    """
    return swan.swanctl_responder(
        ike=ike, esp=esp, local_addr=ADDR_B, local_id=ID_SWAN, remote_id=ID_OURS, psk=PSK,
        local_ts=f"{INNER_B}/32", pool=f"{VIP}/32",
    )  # fmt: skip


def swanctl_initiator(ike: str, esp: str, secret: str = PSK, child_rekey: str = "0") -> str:
    """swanctl.conf of strongSwan as the initiator towards our responder."""
    return swan.swanctl_initiator(
        ike=ike, esp=esp, local_addr=ADDR_B, remote_addr=ADDR_A, local_id=ID_SWAN,
        remote_id=ID_OURS, psk=secret, local_ts=f"{VIP}/32", remote_ts=f"{INNER_B}/32",
        child_rekey=child_rekey,
    )  # fmt: skip


def make_pki(directory: Path, kind: str) -> dict[str, Path]:
    """A CA and certificates for ``ha`` (strongSwan) and ``client`` (us), by strongSwan's pki."""
    return swan.make_pki(directory, kind, {"ha": ID_SWAN, "client": ID_OURS})


def dumping_charon(ns: str, directory: Path, conf: str) -> swan.Charon:
    """A charon that dumps its keys (``ike = 4``, ``chd = 4``): these tests compare them."""
    return swan.Charon(ns, directory, conf, key_dump=True)


_HEXLINE = re.compile(r"^\S+ \d+\[\w+\]\s+\d+: ((?:[0-9A-F]{2} ?){1,16})")


def strongswan_key_dumps(log: str) -> list[dict[str, str]]:
    """Every IKE SA key set that charon (``ike = 4``) dumped, in order, as hex."""
    lines = log.splitlines()
    dumps: list[dict[str, str]] = []
    current: dict[str, str] = {}
    i = 0
    while i < len(lines):
        m = re.search(r"Sk_(d|ai|ar|ei|er|pi|pr) secret => (\d+) bytes", lines[i])
        i += 1
        if m is None:
            continue
        name, size = "sk_" + m.group(1), int(m.group(2))
        data = ""
        while len(data) < 2 * size and i < len(lines):
            h = _HEXLINE.match(lines[i])
            if h is None:
                break
            data += h.group(1).replace(" ", "").lower()
            i += 1
        if name == "sk_d" and current:
            dumps.append(current)
            current = {}
        current[name] = data
    if current:
        dumps.append(current)
    return dumps


def strongswan_child_keys(log: str) -> list[tuple[str, str]]:
    """Every CHILD_SA key pair (initiator's, responder's) charon (``chd = 4``) dumped, as hex."""
    lines = log.splitlines()
    found: dict[str, list[str]] = {"initiator": [], "responder": []}
    for i, line in enumerate(lines):
        m = re.search(r"\[CHD\] encryption (initiator|responder) key => (\d+) bytes", line)
        if m is None:
            continue
        size, data, j = int(m.group(2)), "", i + 1
        while len(data) < 2 * size and j < len(lines):
            hexline = _HEXLINE.match(lines[j])
            if hexline is None:
                break
            data += hexline.group(1).replace(" ", "").lower()
            j += 1
        found[m.group(1)].append(data)
    return list(zip(found["initiator"], found["responder"], strict=False))


# tshark's names for our IKE algorithms (its ikev2_decryption_table UAT).
TSHARK_IKE_ENCR = {
    "aes128gcm16": "AES-GCM-128 with 16 octet ICV [RFC5282]",
    "aes256gcm16": "AES-GCM-256 with 16 octet ICV [RFC5282]",
    "aes128": "AES-CBC-128 [RFC3602]",
    "aes256": "AES-CBC-256 [RFC3602]",
}
TSHARK_IKE_INTEG = {
    "sha256": "HMAC_SHA2_256_128 [RFC4868]",
    "sha384": "HMAC_SHA2_384_192 [RFC4868]",
    "sha512": "HMAC_SHA2_512_256 [RFC4868]",
}


def ikev2_uat_row(spi_i: str, spi_r: str, keys: dict[str, str], suite: str) -> str:
    """One ``ikev2_decryption_table`` row: hex fields bare, algorithm names quoted.

    Fields: Initiator's SPI, Responder's SPI, SK_ei, SK_er, Encryption
    algorithm, SK_ai, SK_ar, Integrity algorithm.  For AES-GCM the SK_e keys
    carry their 4-byte salt, and there is no integrity key.
    """
    tokens = suite.split("-")
    encr = TSHARK_IKE_ENCR[tokens[0]]
    integ = TSHARK_IKE_INTEG.get(tokens[1], "NONE [RFC4306]")
    return (
        f'{spi_i},{spi_r},{keys["sk_ei"]},{keys["sk_er"]},"{encr}",'
        f'{keys["sk_ai"]},{keys["sk_ar"]},"{integ}"'
    )


class Capture:
    """tshark capturing IKE (UDP 500 and 4500) on one link inside a namespace, to a pcap file."""

    def __init__(self, ns: str, dev: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tshark", "-i", dev, "-f", "udp port 500 or udp port 4500",
             "-F", "pcap", "-w", str(path), "-q"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        seen = b""
        deadline = time.monotonic() + 15
        while b"Capturing on" not in seen:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"tshark did not start capturing: {seen!r}")
            readable, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if readable:
                seen += os.read(self.proc.stderr.fileno(), 4096)

    def stop(self) -> None:
        """SIGINT tshark by its PID (it flushes the file), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# ---------------------------------------------------------------------------
# The driver: our engine over real sockets (runs inside namespace A)
# ---------------------------------------------------------------------------


def _emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"type": kind, **fields}), flush=True)


def driver_main(params: dict[str, Any]) -> int:
    """Run our IKE engine as initiator or responder; JSON lines out, commands in."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from twisted.internet import reactor

    from smobility.engines import ike, ikecrypto
    from smobility.engines.tunnel import Route, TunnelEngine
    from smobility.wire import ipv4
    from smobility.wire.esp import NON_ESP_MARKER, InboundSA, OutboundSA
    from smobility.wire.ikev2 import Identity, TrafficSelector

    role = ike.Role(params["role"])
    auth = params.get("auth", "psk")
    peer = ike.PeerConfig(
        Identity.fqdn(params["peer_id"]),
        params["psk"].encode() if auth == "psk" else b"",
        auth=auth,
        internal_address=IPv4Address(params["internal"]) if params.get("internal") else None,
        local_ts=tuple(TrafficSelector.from_network(n) for n in params["local_ts"]),
        remote_ts=tuple(TrafficSelector.from_network(n) for n in params["remote_ts"]),
        request_address=params.get("request_address", False),
        send_idr=True,
    )
    config = ike.IKEConfig(
        local_id=Identity.fqdn(params["local_id"]),
        peers=[peer],
        ike_suites=[ike.IKESuite.parse(s) for s in params["ike"]],
        esp_suites=[ike.ESPSuite.parse(s) for s in params["esp"]],
        local_host=params["addr"],
        retransmit_timeout=0.5,
        retransmit_tries=4,
        pfs=params.get("pfs", False),
        child_rekey_time=params.get("child_rekey_time"),
        ike_rekey_time=params.get("ike_rekey_time"),
    )
    if auth == "pubkey":
        config.certificate = x509.load_pem_x509_certificate(Path(params["cert"]).read_bytes())
        key = serialization.load_pem_private_key(Path(params["key"]).read_bytes(), None)
        assert isinstance(key, ikecrypto.PrivateKey)
        config.private_key = key
        config.trust_anchors = [x509.load_pem_x509_certificate(Path(params["ca"]).read_bytes())]
    socks = {}
    for port in (config.ike_port, config.nat_t_port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((params["addr"], port))
        socks[port] = s
    by_fd = {s.fileno(): (port, s) for port, s in socks.items()}
    tunnel = TunnelEngine(
        clock=reactor, mtu=1400, local_inner=IPv4Address(params["inner"]), mss_clamp=False
    )
    children: list[ike.ChildSA] = []
    down: list[ike.IKESADown] = []
    # Rekeyed CHILD_SAs whose outbound SA waits for ChildSARekeyed.
    pending: dict[int, tuple[InboundSA, OutboundSA, ike.ChildSA]] = {}

    def inner_of(child: ike.ChildSA) -> IPv4Address | None:
        inner = None if role is ike.Role.INITIATOR else child.remote_ts[0].start
        return inner if isinstance(inner, IPv4Address) else None

    def on_child(child: ike.ChildSA) -> None:
        children.append(child)
        inbound = InboundSA.from_keymat(child.inbound_spi, child.inbound_keymat)
        outbound = OutboundSA.from_keymat(child.outbound_spi, child.outbound_keymat)
        current = tunnel.by_node.get("peer")
        if child.replaces is None or current is None:
            tunnel.install(
                "peer", inner_of(child), inbound, outbound, child.peer_addr, [child.peer_addr[0]]
            )
        else:
            # Make before break: the new inbound SA takes packets at once, the
            # old route still sends until ChildSARekeyed.
            tunnel.inbound[inbound.spi] = Route(
                "peer", current.inner, inbound, current.outbound, current.addr,
                current.sources, current.path,
            )
            pending[child.inbound_spi] = (inbound, outbound, child)
        _emit(
            "child",
            in_spi=child.inbound_spi,
            out_spi=child.outbound_spi,
            in_keymat=child.inbound_keymat.hex(),
            out_keymat=child.outbound_keymat.hex(),
            local_ts=[str(t) for t in child.local_ts],
            remote_ts=[str(t) for t in child.remote_ts],
            internal=str(child.internal_address) if child.internal_address else None,
            peer=list(child.peer_addr),
            suite=str(child.suite),
            replaces=child.replaces,
            pfs_group=child.pfs_group,
        )

    def on_event(event: ike.IKEEvent) -> None:
        if isinstance(event, ike.ChildSARekeyed):
            inbound, outbound, child = pending.pop(event.new.inbound_spi)
            old_route = tunnel.by_node.get("peer")
            tunnel.install(
                "peer", inner_of(child), inbound, outbound, child.peer_addr, [child.peer_addr[0]]
            )
            if old_route is not None:
                # The old inbound SA stays until its ChildSADown.
                tunnel.inbound[old_route.inbound.spi] = old_route
            _emit("child_rekeyed", old_in=event.old.inbound_spi, new_in=event.new.inbound_spi)
        elif isinstance(event, ike.IKESARekeyed):
            sa = next(
                s for s in engine.sas.values()
                if (s.spi_i, s.spi_r) == (event.spi_i, event.spi_r)
            )
            _emit(
                "ike_rekeyed",
                old_spi_i=event.old_spi_i.hex(),
                old_spi_r=event.old_spi_r.hex(),
                spi_i=event.spi_i.hex(),
                spi_r=event.spi_r.hex(),
                suite=str(event.suite),
                keys=ike.keys_for_log(sa),
                role=sa.role.value,
            )
        elif isinstance(event, ike.IKESAUp):
            sa = next(s for s in engine.sas.values() if s.spi_i == event.spi_i)
            _emit(
                "ike_up",
                spi_i=event.spi_i.hex(),
                spi_r=event.spi_r.hex(),
                suite=str(event.suite),
                keys=ike.keys_for_log(sa),
                peer_id=str(event.peer_id),
            )
        elif isinstance(event, ike.IKEFailed):
            _emit("failed", reason=event.reason, notify=event.notify, child_only=event.child_only,
                  rekey=event.rekey)
        elif isinstance(event, ike.IKESADown):
            down.append(event)
            _emit("ike_down", reason=event.reason)
        elif isinstance(event, ike.ChildSADown):
            pending.pop(event.child.inbound_spi, None)
            route = tunnel.inbound.get(event.child.inbound_spi)
            if route is not None and route is not tunnel.by_node.get("peer"):
                del tunnel.inbound[event.child.inbound_spi]
            _emit("child_down", reason=event.reason, in_spi=event.child.inbound_spi)

    engine = ike.IKEEngine(role, config, reactor, on_child_sa=on_child, on_event=on_event)
    if role is ike.Role.INITIATOR:
        engine.initiate((params["peer"], 500), local=(params["addr"], 500))
    _emit("ready")

    pings: dict[int, float] = {}
    replies = 0
    ident = 0x5A5A
    stdin_open = True
    deadline = time.monotonic() + params.get("lifetime", 60)

    def flush() -> None:
        for d in engine.datagrams_to_send():
            socks[d.local[1]].sendto(d.payload, d.remote)

    while time.monotonic() < deadline:
        flush()
        timer = engine.get_timer()
        wait = 0.2 if timer is None else max(0.0, min(0.2, timer - reactor.seconds()))
        fds = list(by_fd) + ([sys.stdin.fileno()] if stdin_open else [])
        readable, _, _ = select.select(fds, [], [], wait)
        timer = engine.get_timer()
        if timer is not None and reactor.seconds() >= timer:
            engine.handle_timer()
        for fd in readable:
            if fd == sys.stdin.fileno():
                line = sys.stdin.readline()
                if not line:
                    stdin_open = False
                    continue
                cmd = line.split()
                if not cmd:
                    continue
                if cmd[0] == "quit":
                    flush()
                    return 0
                if cmd[0] == "delete":
                    for sa in engine.established():
                        engine.delete_ike_sa(sa)
                if cmd[0] == "rekey-child":
                    for sa in engine.established():
                        for c in sa.children:
                            if engine.child_state(c.inbound_spi) is ike.ChildState.INSTALLED:
                                engine.rekey_child(c.outbound_spi)
                if cmd[0] == "rekey-ike":
                    for sa in engine.established():
                        engine.rekey_ike_sa(sa)
                if cmd[0] == "liveness":
                    for sa in engine.established():
                        engine.check_liveness(sa)
                    _emit("liveness_sent", count=len(engine.established()))
                if cmd[0] == "status":
                    _emit(
                        "status",
                        sas=[
                            {
                                "spi_i": sa.spi_i.hex(),
                                "spi_r": sa.spi_r.hex(),
                                "role": sa.role.value,
                                "state": sa.state.value,
                                "outstanding": sa.outstanding.kind if sa.outstanding else None,
                                "next_request_id": sa.next_request_id,
                                "next_peer_id": sa.next_peer_id,
                                "children": [
                                    [c.inbound_spi, c.outbound_spi,
                                     str(engine.child_state(c.inbound_spi))]
                                    for c in sa.children
                                ],
                            }
                            for sa in engine.sas.values()
                        ],
                        counters=engine.counters,
                    )
                if cmd[0] == "ping":
                    out: list[tuple[bytes, tuple[str, int]]] = []
                    packets = []
                    for seq in range(1, int(cmd[1]) + 1):
                        pings[seq] = time.monotonic()
                        packets.append(
                            ipv4.icmp_echo(params["inner"], cmd[2], ident, seq, b"smobility" * 4)
                        )
                    tunnel.from_tun(packets, out, [])
                    for datagram, addr in out:
                        socks[config.nat_t_port].sendto(datagram, addr)
                    _emit("pings_sent", count=len(out))
                continue
            port, s = by_fd[fd]
            data, addr = s.recvfrom(65535)
            local = (params["addr"], port)
            if port == config.nat_t_port:
                if data.startswith(NON_ESP_MARKER):
                    engine.receive(data[4:], addr, local)
                    continue
                inner = tunnel.from_udp(data, addr)
                if not inner:
                    continue
                try:
                    msg = ipv4.parse_icmp(inner)
                except Exception:  # noqa: BLE001 - only ICMP is expected here
                    _emit("esp_in", size=len(inner))
                    continue
                if msg.type == 0 and msg.ident == ident:
                    replies += 1
                    _emit("pong", seq=msg.seq, src=str(IPv4Address(msg.src)), replies=replies)
                elif msg.type == 8:
                    reply = ipv4.icmp_echo(
                        msg.dst, msg.src, msg.ident, msg.seq, msg.body, reply=True
                    )
                    out = []
                    tunnel.from_tun([reply], out, [])
                    for datagram, a in out:
                        socks[config.nat_t_port].sendto(datagram, a)
                    _emit("echoed", seq=msg.seq, src=str(IPv4Address(msg.src)))
            else:
                engine.receive(data, addr, local)
        if down and params.get("exit_on_down"):
            flush()
            return 0
    _emit("lifetime_over")
    return 0


def ping_main(src: str, dst: str, count: int, timeout: float, interval: float = 0.0) -> int:
    """ICMP echo from ``src`` to ``dst`` over a raw socket (no ping binary here).

    One echo every ``interval`` seconds at most, each waited for up to
    ``timeout``.  Prints one JSON line: how many were sent and how many
    replies came back.
    """
    from smobility.wire import ipv4

    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.bind((src, 0))
    ident = os.getpid() & 0xFFFF
    got: set[int] = set()
    for seq in range(1, count + 1):
        if interval and seq > 1:
            time.sleep(interval)
        packet = ipv4.icmp_echo(src, dst, ident, seq, b"strongswan-side" * 3)
        sock.sendto(packet[20:], (dst, 0))
        deadline = time.monotonic() + timeout
        while seq not in got and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                break
            data = sock.recv(65535)
            try:
                msg = ipv4.parse_icmp(data)
            except ValueError:
                continue
            if msg.type == 0 and msg.ident == ident and str(IPv4Address(msg.src)) == dst:
                got.add(msg.seq)
    print(json.dumps({"type": "ping", "sent": count, "received": len(got)}), flush=True)
    return 0


class Driver:
    """Our engine in namespace A, as a child process speaking JSON lines."""

    def __init__(self, ns: str, params: dict[str, Any], directory: Path) -> None:
        self.stderr_path = directory / f"driver-{params['role']}.stderr"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.test_ike_strongswan",
             json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=str(ROOT),
        )
        self.lines: list[dict[str, Any]] = []
        self._buf = b""

    def _read(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        readable, _, _ = select.select([fd], [], [], timeout)
        if not readable:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            time.sleep(min(timeout, 0.05))
            return
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self.lines.append(json.loads(line))

    def wait(self, kind: str, timeout: float = 20.0, count: int = 1) -> dict[str, Any]:
        """Wait for the ``count``-th line of type ``kind``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [x for x in self.lines if x["type"] == kind]
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"driver: no {kind!r} within {timeout} s; got {self.lines}\n{self.stderr()}"
                )
            self._read(0.1)

    def has(self, kind: str) -> bool:
        """True if a line of type ``kind`` arrived already (reads what is there)."""
        self._read(0)
        return any(x["type"] == kind for x in self.lines)

    def send(self, command: str) -> None:
        """Write one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        """What the driver wrote to stderr (tracebacks)."""
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """Ask it to quit, then SIGTERM/SIGKILL it by its PID."""
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


class StrongSwanInteropTests(SynchronousTestCase):
    """Our IKEv2 engine against strongSwan 5.9, both roles, shared keys."""

    def setUp(self) -> None:
        require_root(self)
        require_tool(self, "ip")
        require_tool(self, "swanctl")
        require_tool(self, "pki")
        if not os.access(CHARON, os.X_OK):
            skip_or_fail(self, f"needs strongSwan's charon at {CHARON}")
        if find_tool("mount") is None:
            skip_or_fail(self, "needs mount")
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.charons = 0
        self.ns = Namespaces()
        self.addCleanup(self.ns.destroy)
        self.ns.create()

    def start_charon(self, conf: str, *, inner_b: bool = True) -> swan.Charon:
        """charon in namespace B with this swanctl.conf.

        ``inner_b``: B owns the inner address ``INNER_B`` (strongSwan as the
        responder); without it, that address is ours, behind the tunnel.
        """
        if inner_b:
            self.ns.ip(self.ns.b, "addr", "replace", f"{INNER_B}/32", "dev", "lo")
        self.charons += 1
        charon = dumping_charon(self.ns.b, self.dir / f"swan{self.charons}", conf)
        self.addCleanup(charon.stop)
        try:
            charon.start()
        except BaseException:
            charon.stop()
            raise
        self.charon = charon
        return charon

    def start_driver(self, **params: Any) -> Driver:
        """Our engine in namespace A."""
        base: dict[str, Any] = {
            "addr": ADDR_A,
            "peer": ADDR_B,
            "local_id": ID_OURS,
            "peer_id": ID_SWAN,
            "psk": PSK,
            "esp": ["aes128gcm16", "aes256gcm16"],
            "lifetime": 90,
        }
        base.update(params)
        driver = Driver(self.ns.a, base, self.dir)
        self.addCleanup(driver.stop)
        return driver

    def ping(self, ns: str, src: str, dst: str, count: int) -> dict[str, Any]:
        """ICMP echo inside ``ns`` with our raw-socket pinger; its JSON result."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.test_ike_strongswan",
             "--ping", src, dst, str(count)],
            capture_output=True, text=True, timeout=30, env=env, cwd=str(ROOT), check=False,
        )
        self.assertEqual(r.returncode, 0, r.stderr)
        result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return result

    def assert_keys_match(self, ours: dict[str, str], charon: swan.Charon) -> None:
        """Our IKE SA keys are one of the key sets charon dumped (all seven equal).

        Waits a little for the dump: when strongSwan initiated a rekey, it
        derives the keys only once our answer is in.
        """
        deadline = time.monotonic() + 5
        while True:
            dumps = strongswan_key_dumps(charon.log_path.read_text(errors="replace"))
            match = [d for d in dumps if d.get("sk_d") == ours["sk_d"]]
            if match and "sk_pr" in match[0]:  # dumped last
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertTrue(dumps, "charon dumped no keys (ike = 4)")
        self.assertEqual(len(match), 1, f"our SK_d is not in charon's dumps: {dumps}")
        for name in KEY_NAMES:
            self.assertEqual(match[0].get(name, ""), ours[name], name)

    def assert_child_keys_match(
        self, child: dict[str, Any], charon: swan.Charon, ours: str
    ) -> None:
        """Our CHILD_SA key material is a pair charon dumped; ``ours`` is our role."""
        pairs = strongswan_child_keys(charon.log_path.read_text(errors="replace"))
        if ours == "initiator":
            mine = (child["out_keymat"], child["in_keymat"])
        else:
            mine = (child["in_keymat"], child["out_keymat"])
        self.assertIn(mine, pairs)

    # -- (a) our initiator, strongSwan responder ----------------------------

    def _initiate(self, ike: str, **extra: Any) -> tuple[Driver, dict[str, Any], dict[str, Any]]:
        params: dict[str, Any] = {
            "role": "initiator",
            "ike": [ike],
            "inner": VIP,
            "internal": None,
            "local_ts": ["0.0.0.0/0"],
            "remote_ts": [f"{INNER_B}/32"],
            "request_address": True,
        }
        params.update(extra)
        driver = self.start_driver(**params)
        up = driver.wait("ike_up", 20)
        child = driver.wait("child", 10)
        return driver, up, child

    def test_initiator_psk_all_suites(self) -> None:
        """Our initiator brings up IKE and CHILD SAs with strongSwan for every IKE suite.

        Per suite: keys equal to charon's dump, swanctl lists both SAs with
        our SPIs, the CP address is ours, and pings pass through ESP both
        ways; then our Delete takes the SA down on both sides.
        """
        suites = [
            "aes128gcm16-prfsha256-ecp256",
            "aes256gcm16-prfsha384-x25519",
            "aes256gcm16-prfsha384-ecp384",
            "aes128-sha256-modp2048",
        ]
        charon = self.start_charon(swanctl_responder(",".join(suites)))
        for n, suite in enumerate(suites, 1):
            driver, up, child = self._initiate(suite, inner=VIP)
            self.assertEqual(up["suite"], suite)
            self.assert_keys_match(up["keys"], charon)
            self.assert_child_keys_match(child, charon, "initiator")
            self.assertEqual(child["internal"], VIP)
            self.assertEqual(child["local_ts"], [f"{VIP}-{VIP}"])
            self.assertEqual(child["remote_ts"], [f"{INNER_B}-{INNER_B}"])
            sas = charon.swanctl("--list-sas").stdout
            self.assertIn(up["spi_i"], sas)
            self.assertIn("ESTABLISHED", sas)
            self.assertIn("INSTALLED, TUNNEL", sas)
            self.assertIn(f"{child['in_spi']:08x}", sas)
            self.assertIn(f"{child['out_spi']:08x}", sas)
            driver.send(f"ping 3 {INNER_B}")
            driver.wait("pong", 10, count=3)
            # strongSwan's own counters moved both ways on this CHILD_SA.
            listing = charon.swanctl("--list-sas").stdout
            for way in ("in", "out"):
                self.assertRegex(listing, rf"\b{way}\s+[0-9a-f]{{8}},\s+[1-9]\d* bytes,\s+[1-9]")
            driver.send("delete")
            driver.wait("ike_down", 10)
            charon.wait_log(rf"IKE_SA ha\[{n}\] .*deleted|deleting IKE_SA ha\[{n}\]", 10)
            driver.stop()
            self.assertNotIn(up["spi_i"], charon.swanctl("--list-sas").stdout)

    def test_initiator_certificates(self) -> None:
        """Our initiator with certificates (method 14): ECDSA P-256, then RSA 2048."""
        for kind in ("ecdsa", "rsa"):
            pki = make_pki(self.dir / f"pki-{kind}", kind)
            conf = pubkey_auth(swanctl_responder("aes128gcm16-prfsha256-ecp256"), "ha.crt")
            self.charons += 1
            swan_dir = self.dir / f"swan{self.charons}"
            install_credentials(swan_dir, pki, "ha", kind)
            charon = dumping_charon(self.ns.b, swan_dir, conf)
            self.addCleanup(charon.stop)
            self.ns.ip(self.ns.b, "addr", "replace", f"{INNER_B}/32", "dev", "lo")
            charon.start()
            driver, up, child = self._initiate(
                "aes128gcm16-prfsha256-ecp256", auth="pubkey",
                cert=str(pki["client.crt"]), key=str(pki["client.key"]), ca=str(pki["ca"]),
            )
            self.assert_keys_match(up["keys"], charon)
            self.assert_child_keys_match(child, charon, "initiator")
            charon.wait_log(r"authentication of 'client\.smob\.test' with "
                            r"(ECDSA_WITH_SHA256_DER|RSA_EMSA_PKCS1_SHA2_256) successful", 5)
            charon.wait_log(r"received end entity cert|sending end entity cert", 5)
            driver.send(f"ping 2 {INNER_B}")
            driver.wait("pong", 10, count=2)
            driver.stop()
            charon.stop()

    def test_initiator_invalid_ke_retry(self) -> None:
        """strongSwan wants ECP-256; we send X25519 first and retry with its group."""
        self.start_charon(swanctl_responder("aes128gcm16-prfsha256-ecp256"))
        params: dict[str, Any] = {
            "role": "initiator",
            "ike": ["aes128gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-ecp256"],
            "inner": VIP,
            "local_ts": ["0.0.0.0/0"],
            "remote_ts": [f"{INNER_B}/32"],
            "request_address": True,
        }
        driver = self.start_driver(**params)
        up = driver.wait("ike_up", 20)
        self.assertEqual(up["suite"], "aes128gcm16-prfsha256-ecp256")
        self.assert_keys_match(up["keys"], self.charon)
        driver.wait("child", 10)
        self.charon.wait_log(r"generating IKE_SA_INIT response 0 \[ N\(INVAL_KE\) \]", 5)

    def test_initiator_wrong_psk(self) -> None:
        """A wrong shared key: strongSwan answers AUTHENTICATION_FAILED; nothing is installed."""
        self.start_charon(swanctl_responder("aes128gcm16-prfsha256-ecp256"))
        driver = self.start_driver(
            role="initiator",
            ike=["aes128gcm16-prfsha256-ecp256"],
            inner=VIP,
            local_ts=["0.0.0.0/0"],
            remote_ts=[f"{INNER_B}/32"],
            request_address=True,
            psk="not the shared key",
        )
        failed = driver.wait("failed", 20)
        self.assertEqual(failed["notify"], 24)
        self.assertFalse(driver.has("child"))
        self.assertFalse(driver.has("ike_up"))
        self.assertNotIn("ESTABLISHED", self.charon.swanctl("--list-sas").stdout)

    # -- (b) strongSwan initiator, our responder ------------------------------

    def _respond(
        self, ike: str, esp: str, secret: str = PSK, child_rekey: str = "0", **extra: Any
    ) -> Driver:
        driver = self.start_driver(
            role="responder",
            ike=[ike],
            inner=INNER_B,
            internal=VIP,
            local_ts=[f"{INNER_B}/32"],
            remote_ts=["0.0.0.0/0"],
            esp=["aes128gcm16", "aes256gcm16"],
            **extra,
        )
        driver.wait("ready", 10)
        self.start_charon(swanctl_initiator(ike, esp, secret, child_rekey), inner_b=False)
        self.ns.ip(self.ns.b, "addr", "add", f"{VIP}/32", "dev", "lo")
        return driver

    def test_responder_psk(self) -> None:
        """strongSwan initiates to our responder: SAs up, keys equal, pings answered by us."""
        for ike, esp in (
            ("aes128gcm16-prfsha256-ecp256", "aes128gcm16"),
            ("aes256gcm16-prfsha384-x25519", "aes256gcm16"),
        ):
            driver = self._respond(ike, esp)
            r = self.charon.swanctl("--initiate", "--child", "net", "--timeout", "20", check=False)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.charon.text())
            up = driver.wait("ike_up", 10)
            child = driver.wait("child", 10)
            self.assertEqual(up["suite"], ike)
            self.assertEqual(child["suite"], esp)
            self.assert_keys_match(up["keys"], self.charon)
            self.assert_child_keys_match(child, self.charon, "responder")
            sas = self.charon.swanctl("--list-sas").stdout
            self.assertIn("ESTABLISHED", sas)
            self.assertIn(f"{child['in_spi']:08x}", sas)
            self.assertIn(f"{child['out_spi']:08x}", sas)
            ping = self.ping(self.ns.b, VIP, INNER_B, 3)
            self.assertEqual(ping["received"], 3, f"{ping}\n{self.charon.text()}")
            driver.wait("echoed", 5, count=3)
            # strongSwan deletes; we answer and take the SA down.
            self.charon.swanctl("--terminate", "--ike", "home", "--timeout", "10")
            driver.wait("ike_down", 10)
            driver.stop()
            self.charon.stop()
            self.ns.ip(self.ns.b, "addr", "del", f"{VIP}/32", "dev", "lo")

    def test_responder_certificates(self) -> None:
        """strongSwan initiates with certificates to our responder: ECDSA, then RSA."""
        for kind in ("ecdsa", "rsa"):
            pki = make_pki(self.dir / f"pki-{kind}", kind)
            driver = self.start_driver(
                role="responder", ike=["aes128gcm16-prfsha256-ecp256"], inner=INNER_B,
                internal=VIP, local_ts=[f"{INNER_B}/32"], remote_ts=["0.0.0.0/0"],
                auth="pubkey", cert=str(pki["client.crt"]), key=str(pki["client.key"]),
                ca=str(pki["ca"]),
            )
            driver.wait("ready", 10)
            conf = pubkey_auth(
                swanctl_initiator("aes128gcm16-prfsha256-ecp256", "aes128gcm16"), "ha.crt"
            )
            self.charons += 1
            swan_dir = self.dir / f"swan{self.charons}"
            install_credentials(swan_dir, pki, "ha", kind)
            charon = dumping_charon(self.ns.b, swan_dir, conf)
            self.addCleanup(charon.stop)
            charon.start()
            self.ns.ip(self.ns.b, "addr", "replace", f"{VIP}/32", "dev", "lo")
            r = charon.swanctl("--initiate", "--child", "net", "--timeout", "20", check=False)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + charon.text())
            up = driver.wait("ike_up", 10)
            child = driver.wait("child", 10)
            self.assert_keys_match(up["keys"], charon)
            self.assert_child_keys_match(child, charon, "responder")
            charon.wait_log(r"authentication of 'client\.smob\.test' with "
                            r"(ECDSA_WITH_SHA256_DER|RSA_EMSA_PKCS1_SHA2_256) successful", 5)
            ping = self.ping(self.ns.b, VIP, INNER_B, 2)
            self.assertEqual(ping["received"], 2, f"{ping}\n{charon.text()}")
            driver.stop()
            charon.stop()
            self.ns.ip(self.ns.b, "addr", "del", f"{VIP}/32", "dev", "lo")

    def test_responder_wrong_psk(self) -> None:
        """strongSwan with a wrong key: we refuse with AUTHENTICATION_FAILED, install nothing."""
        driver = self._respond("aes128gcm16-prfsha256-ecp256", "aes128gcm16", "wrong key!")
        r = self.charon.swanctl("--initiate", "--child", "net", "--timeout", "15", check=False)
        self.assertNotEqual(r.returncode, 0)
        failed = driver.wait("failed", 10)
        self.assertEqual(failed["notify"], 24)
        self.assertFalse(driver.has("child"))
        self.charon.wait_log(r"AUTHENTICATION_FAILED", 5)

    # -- (c) rekeying, both ways ---------------------------------------------

    def start_pinger(
        self, ns: str, src: str, dst: str, count: int, interval: float
    ) -> subprocess.Popen[str]:
        """Our raw-socket pinger in the background: ``count`` echoes, one per ``interval``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.test_ike_strongswan",
             "--ping", src, dst, str(count), str(interval)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
        )

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)

        self.addCleanup(stop)
        return proc

    def pinger_result(self, proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
        """Wait for a background pinger; its JSON result."""
        out, err = proc.communicate(timeout=timeout)
        self.assertEqual(proc.returncode, 0, err)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def wait_swan(
        self, charon: swan.Charon, check: Any, what: str, timeout: float = 10.0
    ) -> str:
        """Poll ``swanctl --list-sas`` until ``check(listing)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            listing = charon.swanctl("--list-sas").stdout
            if check(listing):
                return listing
            if time.monotonic() > deadline:
                raise AssertionError(f"strongSwan never showed {what}:\n{listing}")
            time.sleep(0.1)

    def wait_child_installed(self, charon: swan.Charon, child: dict[str, Any]) -> None:
        """strongSwan's only INSTALLED CHILD_SA is this one (its in SPI is our out SPI)."""
        pair = (f"{child['out_spi']:08x}", f"{child['in_spi']:08x}")
        self.wait_swan(charon, lambda text: installed_children(text) == [pair],
                       f"the CHILD_SA {pair} alone")

    def wait_ike_established(self, charon: swan.Charon, spi_i: str, spi_r: str) -> None:
        """strongSwan's only ESTABLISHED IKE SA is this one."""
        self.wait_swan(
            charon,
            lambda text: [x[1:] for x in ike_sas(text) if x[0] == "ESTABLISHED"]
            == [(spi_i, spi_r)],
            f"the IKE SA {spi_i}_i {spi_r}_r alone",
        )

    def child_line(self, driver: Driver, in_spi: int) -> dict[str, Any]:
        """The driver's report of the CHILD_SA with this inbound SPI."""
        (line,) = [x for x in driver.lines if x["type"] == "child" and x["in_spi"] == in_spi]
        return line

    def test_rekey_with_strongswan_responder(self) -> None:
        """Our initiator and strongSwan's responder rekey each other's SAs, without and with PFS.

        Pings from strongSwan's side run all along (one every 20 ms) and none
        is lost.  In turn: strongSwan rekeys the CHILD_SA towards us (we are
        the exchange's responder), we rekey it towards strongSwan, strongSwan
        rekeys the IKE SA, we rekey the IKE SA, and both rekey the CHILD_SA
        again on the new IKE SA, then a liveness check on it.  After each step
        ``swanctl --list-sas`` shows the new SPIs (and only them installed),
        and the keys equal charon's dump of them.
        """
        for esp, pfs in (("aes128gcm16", False), ("aes128gcm16-ecp256", True)):
            self._rekey_round(esp, pfs)

    def status(self, driver: Driver) -> dict[str, Any]:
        """Ask the driver for its engine's state; the answer."""
        count = len([x for x in driver.lines if x["type"] == "status"]) + 1
        driver.send("status")
        return driver.wait("status", 10, count=count)

    def _rekey_round(self, esp: str, pfs: bool) -> None:
        ike = "aes128gcm16-prfsha256-ecp256"
        charon = self.start_charon(swanctl_responder(ike, esp))
        driver, up, child = self._initiate(ike, inner=VIP, pfs=pfs)
        self.wait_child_installed(charon, child)
        pinger = self.start_pinger(self.ns.b, INNER_B, VIP, 250, 0.02)
        time.sleep(0.3)
        group = 19 if pfs else None
        done: list[dict[str, Any]] = [child]

        def step(trigger: str, exchange_role: str) -> None:
            current = done[-1]
            if trigger == "swanctl":
                charon.swanctl("--rekey", "--child", "net")
            else:
                driver.send("rekey-child")
            rekeyed = driver.wait("child_rekeyed", 15, count=len(done))
            self.assertEqual(rekeyed["old_in"], current["in_spi"])
            new = self.child_line(driver, rekeyed["new_in"])
            self.assertEqual(new["replaces"], current["in_spi"])
            self.assertEqual(new["pfs_group"], group)
            self.assertEqual((new["local_ts"], new["remote_ts"]),
                             (current["local_ts"], current["remote_ts"]))
            self.assert_child_keys_match(new, charon, exchange_role)
            self.wait_child_installed(charon, new)
            down = driver.wait("child_down", 15, count=len(done))
            self.assertEqual((down["in_spi"], down["reason"]), (current["in_spi"], "rekeyed"))
            done.append(new)
            time.sleep(0.2)

        step("swanctl", "responder")
        step("driver", "initiator")
        # strongSwan rekeys the IKE SA: it becomes the new SA's initiator.
        charon.swanctl("--rekey", "--ike", "ha")
        ike1 = driver.wait("ike_rekeyed", 15)
        self.assertEqual((ike1["old_spi_i"], ike1["role"]), (up["spi_i"], "responder"))
        self.assert_keys_match(ike1["keys"], charon)
        self.wait_ike_established(charon, ike1["spi_i"], ike1["spi_r"])
        time.sleep(0.2)
        # We rekey the IKE SA.
        driver.send("rekey-ike")
        ike2 = driver.wait("ike_rekeyed", 15, count=2)
        self.assertEqual((ike2["old_spi_i"], ike2["role"]), (ike1["spi_i"], "initiator"))
        self.assert_keys_match(ike2["keys"], charon)
        self.wait_ike_established(charon, ike2["spi_i"], ike2["spi_r"])
        time.sleep(0.2)
        # The CHILD_SA, moved to the new IKE SA, rekeyed there both ways.
        step("driver", "initiator")
        step("swanctl", "responder")
        # Liveness on the new IKE SA: our third request there (rekey, Delete, this).
        driver.send("liveness")
        charon.wait_log(r"parsed INFORMATIONAL request 2 \[ \]", 10)
        deadline = time.monotonic() + 10
        while True:
            (sa,) = self.status(driver)["sas"]
            if sa["outstanding"] is None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual((sa["spi_i"], sa["spi_r"]), (ike2["spi_i"], ike2["spi_r"]))
        self.assertEqual((sa["outstanding"], sa["next_request_id"]), (None, 3))
        last = done[-1]
        self.assertEqual(sa["children"],
                         [[last["in_spi"], last["out_spi"], "ChildState.INSTALLED"]])
        result = self.pinger_result(pinger)
        self.assertEqual(result["received"], result["sent"], f"{result}\n{charon.text()}")
        self.assertFalse(driver.has("failed"), driver.lines)
        driver.send(f"ping 3 {INNER_B}")
        driver.wait("pong", 10, count=3)
        if pfs:
            for verb in ("generating", "parsed"):
                charon.wait_log(
                    rf"{verb} CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\) SA No KE TSi TSr \]",
                    5,
                )
        driver.send("delete")
        driver.wait("ike_down", 10)
        self.wait_swan(charon, lambda text: not ike_sas(text), "no IKE SA")
        driver.stop()
        charon.stop()

    def test_rekey_with_strongswan_initiator(self) -> None:
        """strongSwan initiates to our responder and rekeys the CHILD_SA by its lifetime
        (``rekey_time = 4s``); our responder rekeys the IKE SA by its own
        (``ike_rekey_time`` 6 s).  Pings from strongSwan's side run all along,
        none lost; keys equal charon's dumps; ``--list-sas`` agrees with us.
        """
        ike = "aes128gcm16-prfsha256-ecp256"
        driver = self._respond(ike, "aes128gcm16", child_rekey="4s", ike_rekey_time=6.0)
        r = self.charon.swanctl("--initiate", "--child", "net", "--timeout", "20", check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.charon.text())
        up = driver.wait("ike_up", 10)
        child = driver.wait("child", 10)
        self.wait_child_installed(self.charon, child)
        pinger = self.start_pinger(self.ns.b, VIP, INNER_B, 500, 0.02)
        first = driver.wait("child_rekeyed", 15)
        self.assertEqual(first["old_in"], child["in_spi"])
        ike1 = driver.wait("ike_rekeyed", 15)
        self.assertEqual((ike1["old_spi_i"], ike1["role"]), (up["spi_i"], "initiator"))
        self.assert_keys_match(ike1["keys"], self.charon)
        second = driver.wait("child_rekeyed", 15, count=2)
        result = self.pinger_result(pinger)
        self.assertEqual(result["received"], result["sent"], f"{result}\n{self.charon.text()}")
        for rekeyed in (first, second):
            new = self.child_line(driver, rekeyed["new_in"])
            self.assert_child_keys_match(new, self.charon, "responder")
        # strongSwan answered our IKE SA rekey.
        self.charon.wait_log(r"generating CREATE_CHILD_SA response \d+ \[ SA No KE \]", 5)
        self.assertFalse(driver.has("failed"), driver.lines)
        # What strongSwan has installed is what we last installed.  strongSwan
        # keeps rekeying every 4 s, so compare at a moment between two rekeys:
        # read our side, then its listing, until both agree (bounded).
        status = self.status(driver)
        (sa,) = [s for s in status["sas"] if s["state"] == "established"]
        self.wait_ike_established(self.charon, sa["spi_i"], sa["spi_r"])

        def agree(listing: str) -> bool:
            current = [s for s in self.status(driver)["sas"] if s["state"] == "established"]
            return any(
                (f"{c[1]:08x}", f"{c[0]:08x}") in installed_children(listing)
                for s in current
                for c in s["children"]
            )

        self.wait_swan(self.charon, agree, "the CHILD_SA we installed")
        self.charon.swanctl("--terminate", "--ike", "home", "--timeout", "10")
        driver.wait("ike_down", 10)

    # -- (d) tshark decrypts our IKE exchanges ---------------------------------

    def test_tshark_decrypts_our_exchanges(self) -> None:
        """tshark opens every Encrypted payload of our exchanges with strongSwan.

        Captured on our veth: IKE_AUTH, CHILD_SA rekeys both ways, an IKE SA
        rekey, liveness and Delete; decrypted with our keys in tshark's
        ``ikev2_decryption_table``, one row per IKE SA.  tshark finds IDi,
        AUTH, SA, TSi, TSr (and the rest) inside, with a correct ICV and no
        malformed packet; with one wrong key it opens nothing that key sealed.
        For AES-GCM and for AES-CBC with HMAC-SHA2-256-128.
        """
        require_tool(self, "tshark")
        for ike in ("aes128gcm16-prfsha256-ecp256", "aes128-sha256-modp2048"):
            self._tshark_round(ike)

    def _tshark_round(self, ike: str) -> None:
        charon = self.start_charon(swanctl_responder(ike))
        pcap = self.dir / f"ike-{ike}.pcap"
        capture = Capture(self.ns.a, self.ns.veth_a, pcap)
        self.addCleanup(capture.stop)
        driver, up, child = self._initiate(ike, inner=VIP)
        driver.send(f"ping 2 {INNER_B}")
        driver.wait("pong", 10, count=2)
        driver.send("rekey-child")
        driver.wait("child_down", 10)
        charon.swanctl("--rekey", "--child", "net")
        driver.wait("child_down", 10, count=2)
        driver.send("rekey-ike")
        rekeyed = driver.wait("ike_rekeyed", 10)
        driver.send("liveness")
        charon.wait_log(r"parsed INFORMATIONAL request 0 \[ \]", 10)
        driver.send("delete")
        driver.wait("ike_down", 10)
        time.sleep(0.5)
        capture.stop()
        driver.stop()
        charon.stop()
        rows = [
            ikev2_uat_row(up["spi_i"], up["spi_r"], up["keys"], ike),
            ikev2_uat_row(rekeyed["spi_i"], rekeyed["spi_r"], rekeyed["keys"], ike),
        ]
        frames = self.tshark_ike(pcap, rows)
        encrypted = [f for f in frames if f["exchange"] in ("35", "36", "37")]
        self.assertGreaterEqual(len(encrypted), 14, frames)
        for f in frames:
            self.assertEqual(f["malformed"], "", f)
            self.assertEqual(f["integrity"], "", f)
            self.assertNotIn(str(0x00800000), f["severity"].split(","), f)
        for f in encrypted:
            # Decrypted: the pad length inside the Encrypted payload is there
            # (0 with AES-GCM, which needs no padding).
            self.assertNotEqual(f["pad_length"], "", f)
            if "gcm" in ike:
                self.assertEqual(f["pad_length"], "0", f)

        def find(exchange: int, response: bool, spi_i: str) -> list[dict[str, str]]:
            return [
                f for f in encrypted
                if f["exchange"] == str(exchange) and (f["response"] == "1") == response
                and f["spi_i"] == spi_i
            ]

        (auth_req,) = find(35, False, up["spi_i"])
        for payload in ("35", "39", "47", "33", "44", "45"):  # IDi AUTH CP SA TSi TSr
            self.assertIn(payload, auth_req["payloads"].split(","), auth_req)
        self.assertIn(ID_OURS, auth_req["fqdn"])
        self.assertIn("2", auth_req["auth"].split(","))
        (auth_resp,) = find(35, True, up["spi_i"])
        for payload in ("36", "39", "47", "33", "44", "45"):  # IDr AUTH CP SA TSi TSr
            self.assertIn(payload, auth_resp["payloads"].split(","), auth_resp)
        self.assertIn(ID_SWAN, auth_resp["fqdn"])
        self.assertIn(INNER_B, auth_resp["ts"])
        # CHILD_SA rekeys, both ways: N(REKEY_SA) (16393), SA, Nonce, TSi, TSr.
        child_rekeys = [f for f in find(36, False, up["spi_i"]) if "16393" in f["notify"]]
        self.assertEqual(len(child_rekeys), 2, encrypted)
        for f in child_rekeys:
            for payload in ("41", "33", "40", "44", "45"):
                self.assertIn(payload, f["payloads"].split(","), f)
        # The IKE SA rekey: SA (protocol IKE), Nonce, KE; then Delete of the old IKE SA.
        (ike_rekey,) = [f for f in find(36, False, up["spi_i"]) if "16393" not in f["notify"]]
        self.assertEqual(
            [p for p in ike_rekey["payloads"].split(",") if p in ("33", "40", "34")],
            ["33", "40", "34"], ike_rekey,
        )
        deletes = [f for f in find(37, False, up["spi_i"]) if "42" in f["payloads"]]
        self.assertEqual(sorted(f["delete_proto"] for f in deletes), ["1", "3", "3"], deletes)
        # On the new IKE SA: the liveness check and the final Delete, both answered.
        self.assertEqual(len(find(37, False, rekeyed["spi_i"])), 2)
        self.assertEqual(len(find(37, True, rekeyed["spi_i"])), 2)
        # A wrong SK_er: tshark opens nothing strongSwan (the original
        # responder, I=0) sent on the first IKE SA, and everything we sent.
        bad = dict(up["keys"])
        bad["sk_er"] = ("00" if bad["sk_er"][:2] != "00" else "11") + bad["sk_er"][2:]
        frames = self.tshark_ike(pcap, [ikev2_uat_row(up["spi_i"], up["spi_r"], bad, ike)])
        first_sa = [
            f for f in frames
            if f["exchange"] in ("35", "36", "37")
            and f["spi_i"] == up["spi_i"] and f["spi_r"] == up["spi_r"]
        ]
        theirs = [f for f in first_sa if f["initiator"] == "0"]
        ours = [f for f in first_sa if f["initiator"] == "1"]
        self.assertTrue(theirs and ours)
        for f in theirs:
            # AES-GCM fails its ICV; AES-CBC (the HMAC key is right) yields garbage.
            self.assertNotIn("39", f["payloads"].split(","), f)
            self.assertTrue(
                f["pad_length"] == "" or f["integrity"] != "" or f["malformed"] != "", f
            )
        for f in ours:
            self.assertNotEqual(f["pad_length"], "", f)

    def tshark_ike(self, pcap: Path, rows: list[str]) -> list[dict[str, str]]:
        """Every IKE frame of ``pcap`` as tshark dissects it with these decryption rows."""
        fields = {
            "frame": "frame.number",
            "spi_i": "isakmp.ispi",
            "spi_r": "isakmp.rspi",
            "exchange": "isakmp.exchangetype",
            "response": "isakmp.flag_r",
            "initiator": "isakmp.flag_i",
            "payloads": "isakmp.typepayload",
            "notify": "isakmp.notify.msgtype",
            "fqdn": "isakmp.id.data.fqdn",
            "auth": "isakmp.auth.method",
            "ts": "isakmp.ts.start_ipv4",
            "delete_proto": "isakmp.delete.protoid",
            "pad_length": "isakmp.enc.pad_length",
            "integrity": "isakmp.ikev2.integrity_checksum",
            "malformed": "_ws.malformed",
            "severity": "_ws.expert.severity",
        }
        cmd = ["tshark", "-r", str(pcap), "-Y", "isakmp", "-T", "fields", "-E", "separator=/t"]
        for row in rows:
            cmd += ["-o", f"uat:ikev2_decryption_table:{row}"]
        for name in fields.values():
            cmd += ["-e", name]
        r = _run(cmd, timeout=60)
        frames = []
        for line in r.stdout.splitlines():
            values = line.split("\t")
            frames.append(dict(zip(fields, values, strict=True)))
        return frames


if __name__ == "__main__":
    if sys.argv[1] == "--ping":
        interval = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
        sys.exit(ping_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), 3.0, interval))
    sys.exit(driver_main(json.loads(sys.argv[1])))
