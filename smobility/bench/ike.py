# -*- test-case-name: tests.test_bench -*-
# ruff: noqa: S603, S607 - fixed argv (ip, charon, swanctl, our own Python), as in smobility/lab
"""
The IKE scenario: IKE_SA + CHILD_SA set-ups per second at our responder and at strongSwan's.

Two namespaces of its own (C{smobi} and random letters, a veth pair, removed
at the end also on failure): the initiators on one side, the responder on the
other.  The load generator (C{python -m smobility.bench.ike generate}) is our
own L{IKEEngine} as initiator, one engine per slot (each slot its own
identity, as separate clients are), a bounded window of slots, each running
set-up after set-up: IKE_SA_INIT (port 500) and IKE_AUTH with one CHILD_SA
(port 4500, UDP-encapsulated), then an INFORMATIONAL Delete of the IKE SA and
at once the next set-up.  The very same generator, with the same settings,
meets (a) our responder (C{python -m smobility.bench.ike respond}: an
L{IKEService} on the reactor, its CHILD_SAs turned into ESP SA objects as the
home agent's data plane does) and (b) strongSwan's charon with
kernel-libipsec.  Two modes: a shared key with Curve25519
(C{aes128gcm16-prfsha256-x25519}) and ECDSA P-256 certificates (same suite).

Counted: completed set-ups (IKE_AUTH responses with a CHILD_SA, inside the
measuring window) per second, failures, the generator's retransmits, the CPU
seconds of the responder process and of the generator.

Target (the issue): our responder at least half strongSwan's rate, per mode.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import resource
import secrets
import select
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

from smobility.bench.context import BenchContext, BenchError, MissingTool
from smobility.bench.cpu import CpuMeter
from smobility.bench.results import (
    Column,
    Row,
    ScenarioResult,
    machine_info,
    median,
    ratio,
    utc_now,
)
from smobility.lab.strongswan import CHARON, LOAD

NAME = "ike"
TITLE = "IKE set-ups per second: our responder and strongSwan's, same initiator load"
PEER_NAMES: tuple[str, ...] = ("smobility", "strongswan")
MODES: tuple[str, ...] = ("psk", "ecdsa")
MODE_TITLES = {"psk": "PSK, x25519", "ecdsa": "ECDSA P-256 certificates, x25519"}
IKE_SUITE = "aes128gcm16-prfsha256-x25519"
ESP_SUITE = "aes128gcm16"
TARGET_RATIO = 0.5
"""Our responder's rate must be at least this share of strongSwan's."""
WINDOW = 16
"""Set-ups in flight per generator process."""
GENERATORS = 2
"""Generator processes (each its own address and ports, its own window)."""
PSK = "bench-ike-shared-key-0123456789"
RESPONDER_ID = "responder.bench.smob.test"
NET = "10.231.0"
RESPONDER_ADDR = f"{NET}.1"
GENERATOR_BASE = 11
"""Generator N has address NET.(GENERATOR_BASE + N)."""
RESPONDER_INNER = "10.100.0.0/24"
"""The responder's side of every CHILD_SA."""
RESPONDER_INNER_ADDR = "10.100.0.1/24"
"""The responder's own address on its inner side (on its loopback)."""
GENERATOR_INNER = "10.201.0.0/16"
"""Slot I of generator G asks for 10.201.G.I/32 as its own side."""
DRAIN = 3.0
"""Seconds the generators wait after the window for their Deletes to be answered."""
SETTLE = 1.0
"""Seconds between one test and the next (the previous responder's state goes)."""
PREFIX = "smobi"
PSK_BYTES = PSK.encode()

COLUMNS = [
    Column("rate", "set-ups/s", "{:,.1f}"),
    Column("completed", "completed", "{:,.0f}"),
    Column("failed", "failed", "{:,.0f}"),
    Column("retransmits", "retransmits", "{:,.0f}"),
    Column("latency_ms", "median ms", "{:.1f}"),
    Column("responder_cores", "responder CPU (cores)", "{:.2f}"),
    Column("responder_ms_per_setup", "responder CPU ms/set-up", "{:.2f}"),
    Column("generator_cores", "generator CPU (cores)", "{:.2f}"),
    Column("host_cores", "machine busy (cores)", "{:.2f}"),
]
COMPARISON_COLUMNS = [
    Column("rate_ratio", "rate x", "{:.2f}"),
    Column("cpu_per_setup_ratio", "CPU per set-up x", "{:.2f}"),
]

DESCRIPTION = """\
`python -m smobility.bench --scenario ike` (part of `make bench`) builds two
namespaces of its own (`smobi` and three random letters, one veth pair,
removed at the end also on failure): the initiators in one, the responder in
the other, 10.231.0.0/24. The load generator is our own `IKEEngine` as
initiator (`python -m smobility.bench.ike generate`, two processes, each on
its own address with its own ports 500 and 4500 and a window of 16 slots;
each slot is a client identity of its own, `g<G>-<I>.bench.smob.test`, with
its own inner address). Every slot runs set-up after set-up: IKE_SA_INIT,
then IKE_AUTH with one tunnel-mode CHILD_SA (UDP-encapsulated on 4500, as
both responders require), then an INFORMATIONAL Delete of the IKE SA, and at
once the next set-up, for the test's duration (10 s, `--quick` 4 s). The
same generators, with the same settings, meet in turn:

- our responder (`python -m smobility.bench.ike respond`): `IKEService`
  (`smobility/services/ike_service.py`) on the Twisted reactor with ports 500
  and 4500, each CHILD_SA turned into `InboundSA`/`OutboundSA` objects as the
  home agent's data plane does, logging to a file at info level; no cookies;
- strongSwan 5.9.8 charon with kernel-libipsec (PEERS.md): one connection,
  `unique = never`, `dos_protection = no`, `ikesa_table_size = 1024`, the
  same proposals, `remote_ts = 10.201.0.0/16`; each CHILD_SA goes into
  libipsec and gets its route through libipsec's TUN device, as a real
  responder's would (the kernel-libipsec cost is part of what is measured).
  Its log: `default = 1` to a file. Its worker threads may use both cores.

Modes: a shared key (auth method 2) and ECDSA P-256 certificates (method
14, RFC 7427: made by `smobility.pki`, one CA, the responder's certificate,
and one per generator slot), both with `aes128gcm16-prfsha256-x25519` for
the IKE SA and `aes128gcm16` for the CHILD_SA.

Columns: *set-ups/s* the IKE_AUTH responses with a CHILD_SA the generators
received inside the window, per second; *failed* set-ups that failed
(refused or given up); *retransmits* the generators' retransmitted requests;
*median ms* from IKE_SA_INIT sent to CHILD_SA up; *responder CPU* the
responder process's user+system time over the window (charon: all its
threads) in cores, and per completed set-up; *generator CPU* both
generators together; *machine busy* all cores. On this two-core machine the
generators and the responder share the cores: a responder that needs less
CPU per set-up leaves more to the generators. When the generators are near
a full core each, the rate is theirs, not the responder's: then the CPU per
set-up is the fairer comparison. The target: our rate at least half
strongSwan's, per mode, in the same run.
"""


# ---------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------


def generator_addr(index: int) -> str:
    """The address of generator C{index}."""
    return f"{NET}.{GENERATOR_BASE + index}"


def slot_identity(generator: int, slot: int) -> str:
    """The FQDN identity of one generator slot."""
    return f"g{generator}-{slot}.bench.smob.test"


def slot_inner(generator: int, slot: int) -> str:
    """The inner address one generator slot asks for (its side of the CHILD_SA)."""
    return f"10.201.{generator}.{slot + 1}"


def identities(generators: int, window: int) -> list[str]:
    """Every slot identity of C{generators} generators with C{window} slots each."""
    return [slot_identity(g, s) for g in range(generators) for s in range(window)]


def strongswan_conf(directory: Path) -> str:
    """charon's strongswan.conf: plugins per PEERS.md, its own vici socket, no DoS limits."""
    return f"""charon {{
    load_modular = no
    load = {LOAD}
    dos_protection = no
    cookie_threshold = 1000000
    block_threshold = 1000000
    init_limit_half_open = 0
    ikesa_table_size = 1024
    ikesa_table_segments = 16
    retransmit_timeout = 1.0
    retransmit_tries = 3
    plugins {{
        vici {{
            socket = unix://{directory}/vici
        }}
    }}
    filelog {{
        bench {{
            path = {directory}/charon.log
            time_format = %T
            default = 1
            flush_line = no
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
}}
"""


def swanctl_conf(mode: str, ids: Sequence[str]) -> str:
    """swanctl.conf of the strongSwan responder for C{mode} (C{psk} or C{ecdsa})."""
    if mode == "psk":
        local = f"auth = psk\n            id = {RESPONDER_ID}"
        remote = "auth = psk\n            id = %any"
        id_lines = "\n".join(f"        id-{i} = {ident}" for i, ident in enumerate(ids))
        secrets_block = (
            "secrets {\n    ike-bench {\n"
            f"        id-r = {RESPONDER_ID}\n{id_lines}\n"
            f'        secret = "{PSK}"\n    }}\n}}\n'
        )
    elif mode == "ecdsa":
        local = f"auth = pubkey\n            certs = responder.crt\n            id = {RESPONDER_ID}"
        remote = "auth = pubkey\n            id = %any"
        secrets_block = ""
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return f"""connections {{
    bench {{
        version = 2
        local_addrs = {RESPONDER_ADDR}
        proposals = {IKE_SUITE}
        encap = yes
        mobike = no
        unique = never
        rekey_time = 0
        reauth_time = 0
        dpd_delay = 0
        local {{
            {local}
        }}
        remote {{
            {remote}
        }}
        children {{
            net {{
                mode = tunnel
                local_ts = {RESPONDER_INNER}
                remote_ts = {GENERATOR_INNER}
                esp_proposals = {ESP_SUITE}
                rekey_time = 0
            }}
        }}
    }}
}}
{secrets_block}"""


def combine_generators(
    reports: Sequence[dict[str, Any]], duration: float
) -> dict[str, float | None]:
    """
    One test's figures from the generators' reports (see L{Generator.report}).

    C{rate} is the completed set-ups of all generators per second of the
    window; C{latency_ms} the median of the generators' medians;
    C{generator_cores} their CPU seconds together per second.
    """
    completed = sum(int(r.get("completed", 0)) for r in reports)
    failed = sum(int(r.get("failed", 0)) for r in reports)
    retransmits = sum(int(r.get("retransmits", 0)) for r in reports)
    cpu = sum(float(r.get("cpu_s", 0.0)) for r in reports)
    latency = median(r.get("latency_ms") for r in reports)
    return {
        "rate": completed / duration if duration > 0 else 0.0,
        "completed": float(completed),
        "failed": float(failed),
        "retransmits": float(retransmits),
        "latency_ms": latency,
        "generator_cores": cpu / duration if duration > 0 else 0.0,
    }


def responder_figures(
    cpu_s: float | None, host_s: float | None, completed: float, duration: float
) -> dict[str, float | None]:
    """The responder's CPU in cores and in ms per completed set-up, the machine's busy cores."""
    return {
        "responder_cores": cpu_s / duration if cpu_s is not None and duration > 0 else None,
        "responder_ms_per_setup": (
            cpu_s * 1000.0 / completed if cpu_s is not None and completed > 0 else None
        ),
        "host_cores": host_s / duration if host_s is not None and duration > 0 else None,
    }


def compare(rows: Sequence[Row]) -> tuple[list[Row], list[str], bool | None]:
    """
    Ratios ours / strongSwan's per mode, the verdict lines and whether the target is met.

    The target is judged only when both rows of every mode were measured.
    """
    comparisons: list[Row] = []
    verdict: list[str] = []
    met: list[bool] = []
    judged = True
    for mode in MODES:
        ours = next((r for r in rows if r.peer == "smobility" and r.case == mode), None)
        theirs = next((r for r in rows if r.peer == "strongswan" and r.case == mode), None)
        if ours is None or theirs is None or ours.error or theirs.error:
            judged = False
            verdict.append(f"{MODE_TITLES[mode]}: not judged (a row is missing)")
            continue
        rate_x = ratio(ours.values.get("rate"), theirs.values.get("rate"))
        cpu_x = ratio(
            ours.values.get("responder_ms_per_setup"), theirs.values.get("responder_ms_per_setup")
        )
        comparisons.append(
            Row(
                peer="smobility/strongswan",
                case=mode,
                label=f"smobility / strongSwan, {MODE_TITLES[mode]}",
                values={"rate_ratio": rate_x, "cpu_per_setup_ratio": cpu_x},
            )
        )
        if rate_x is None:
            judged = False
            verdict.append(f"{MODE_TITLES[mode]}: not judged (no rate)")
            continue
        ok = rate_x >= TARGET_RATIO
        met.append(ok)
        verdict.append(
            f"{MODE_TITLES[mode]}: {rate_x:.2f}x strongSwan's set-up rate "
            f"({'meets' if ok else 'misses'} the target >= {TARGET_RATIO:g}x)"
            + (f", {cpu_x:.2f}x its CPU per set-up" if cpu_x is not None else "")
        )
    if not judged or not met:
        return comparisons, verdict, None
    verdict.append(
        f"target {'MET' if all(met) else 'MISSED'}: our responder >= {TARGET_RATIO:g}x "
        "strongSwan's set-ups per second in both modes (ratios within this run only)"
    )
    return comparisons, verdict, all(met)


# ---------------------------------------------------------------------------
# The load generator (a process of its own, in the initiators' namespace)
# ---------------------------------------------------------------------------


class WallClock:
    """C{seconds()} as wall-clock time (the engine checks certificate validity with it)."""

    @staticmethod
    def seconds() -> float:
        """The current UNIX time."""
        return time.time()


@dataclass
class _Slot:
    engine: Any
    peer: Any
    started: float = 0.0
    done: bool = False
    failed: bool = False
    sa: Any = None


class Generator:
    """
    C{window} initiator engines on one address, set-up after set-up, sans Twisted.

    Each slot's engine has its own identity; replies are handed to the
    engine owning the initiator SPI.
    """

    def __init__(
        self, index: int, window: int, mode: str, responder: str, pki_dir: Path | None
    ) -> None:
        from smobility import pki
        from smobility.engines.ike import (
            ESPSuite,
            IKEConfig,
            IKEEngine,
            IKESuite,
            PeerConfig,
            Role,
            ts_host,
        )
        from smobility.wire.ikev2 import Identity, TrafficSelector

        self.addr = generator_addr(index)
        self.responder = responder
        self.clock = WallClock()
        self.slots: list[_Slot] = []
        self.by_spi: dict[bytes, _Slot] = {}
        self.completed = 0
        self.failed = 0
        self.latencies: list[float] = []
        self.reasons: dict[str, int] = {}
        self.counting = False
        self.running = True
        ca = ca_key = None
        if mode == "ecdsa":
            assert pki_dir is not None
            ca = pki.load_certificate((pki_dir / "ca.crt").read_bytes())
            ca_key = pki.load_private_key((pki_dir / "ca.key").read_bytes())
        remote_ts = (TrafficSelector.from_network(RESPONDER_INNER),)
        for s in range(window):
            ident = slot_identity(index, s)
            cert = key = None
            if mode == "ecdsa":
                assert ca is not None and ca_key is not None
                cert, key = pki.issue_with_new_key(
                    ca, ca_key, subject=pki.common_name(ident),
                    sans=[pki.parse_san(f"DNS:{ident}")], profile="client", days=2,
                )  # fmt: skip
            peer = PeerConfig(
                Identity.fqdn(RESPONDER_ID), PSK_BYTES if mode == "psk" else b"",
                local_ts=(ts_host(IPv4Address(slot_inner(index, s))),), remote_ts=remote_ts,
                request_address=False, auth="psk" if mode == "psk" else "pubkey",
            )  # fmt: skip
            config = IKEConfig(
                local_id=Identity.fqdn(ident), peers=[peer],
                ike_suites=(IKESuite.parse(IKE_SUITE),), esp_suites=(ESPSuite.parse(ESP_SUITE),),
                local_host=self.addr, cookie_threshold=None, certificate=cert, private_key=key,
                trust_anchors=(ca,) if ca is not None else (),
            )  # fmt: skip
            slot = _Slot(engine=None, peer=peer)
            slot.engine = IKEEngine(
                Role.INITIATOR, config, cast(Any, self.clock),
                on_child_sa=functools.partial(self._up, slot),
                on_event=functools.partial(self._event, slot),
            )  # fmt: skip
            self.slots.append(slot)
        self.sock500 = self._socket(500)
        self.sock4500 = self._socket(4500)

    def _socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((self.addr, port))
        sock.setblocking(False)
        return sock

    def _up(self, slot: _Slot, child: Any) -> None:
        slot.done = True

    def _event(self, slot: _Slot, event: Any) -> None:
        from smobility.engines.ike import IKEFailed

        if isinstance(event, IKEFailed) and not event.rekey:
            if slot.sa is not None and event.spi_i == slot.sa.spi_i:
                slot.failed = True
                if self.counting:
                    self.reasons[event.reason] = self.reasons.get(event.reason, 0) + 1

    def _start(self, slot: _Slot) -> None:
        slot.done = slot.failed = False
        slot.started = time.monotonic()
        slot.sa = slot.engine.initiate((self.responder, 500), peer=slot.peer)
        self.by_spi[slot.sa.spi_i] = slot

    def _flush(self, slot: _Slot) -> None:
        for d in slot.engine.datagrams_to_send():
            sock = self.sock4500 if d.local[1] == 4500 else self.sock500
            try:
                sock.sendto(d.payload, d.remote)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    raise

    def _settle(self, slot: _Slot) -> None:
        """After a call into the slot's engine: a finished set-up starts the next."""
        from smobility.engines.ike import State

        if slot.sa is None:
            return
        if slot.done:
            if self.counting:
                self.completed += 1
                self.latencies.append(time.monotonic() - slot.started)
            sa, slot.sa = slot.sa, None
            if sa.state is State.ESTABLISHED:
                slot.engine.delete_ike_sa(sa)
        elif slot.failed or slot.sa.state is State.DEAD:
            if self.counting:
                self.failed += 1
            sa, slot.sa = slot.sa, None
            if sa.state is State.ESTABLISHED:
                slot.engine.delete_ike_sa(sa)
        else:
            return
        if self.running:
            self._start(slot)
        self._flush(slot)

    def _read(self, sock: socket.socket, nat_t: bool) -> None:
        local = (self.addr, 4500 if nat_t else 500)
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                return
            if nat_t:
                if len(data) < 4 or data[:4] != b"\0\0\0\0":
                    continue
                data = data[4:]
            slot = self.by_spi.get(data[:8])
            if slot is None:
                continue
            slot.engine.receive(data, (addr[0], addr[1]), local)
            self._settle(slot)
            self._flush(slot)

    def _timers(self) -> None:
        now = self.clock.seconds()
        for slot in self.slots:
            when = slot.engine.get_timer()
            if when is not None and when <= now:
                slot.engine.handle_timer()
                self._settle(slot)
                self._flush(slot)

    def _prune(self) -> None:
        for spi, slot in list(self.by_spi.items()):
            if spi not in slot.engine.sas:
                del self.by_spi[spi]

    def run(self, start_at: float, duration: float) -> dict[str, Any]:
        """Wait for C{start_at} (UNIX time), load for C{duration} s, drain; the report."""
        poller = select.poll()
        poller.register(self.sock500, select.POLLIN)
        poller.register(self.sock4500, select.POLLIN)
        fds = {self.sock500.fileno(): (self.sock500, False),
               self.sock4500.fileno(): (self.sock4500, True)}  # fmt: skip
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        # Start the slots spread over the first 50 ms, not all in one burst.
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        end = t0 + duration
        self.counting = True
        for slot in self.slots:
            self._start(slot)
            self._flush(slot)
        last_timer = last_prune = t0
        usage1 = usage0
        while True:
            now = time.monotonic()
            if self.counting and now >= end:
                self.counting = False
                self.running = False
                usage1 = resource.getrusage(resource.RUSAGE_SELF)
            if not self.counting:
                busy = any(s.engine.sas for s in self.slots)
                if not busy or now >= end + DRAIN:
                    break
            for fd, _ev in poller.poll(20):
                sock, nat_t = fds[fd]
                self._read(sock, nat_t)
            if now - last_timer >= 0.05:
                last_timer = now
                self._timers()
            if now - last_prune >= 1.0:
                last_prune = now
                self._prune()
        cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        retransmits = sum(s.engine.counters.get("retransmits", 0) for s in self.slots)
        lat = sorted(self.latencies)
        return {
            "addr": self.addr,
            "completed": self.completed,
            "failed": self.failed,
            "retransmits": retransmits,
            "cpu_s": round(cpu, 3),
            "latency_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
            "latency_p95_ms": round(lat[int(len(lat) * 0.95)] * 1000, 2) if lat else None,
            "left": sum(len(s.engine.sas) for s in self.slots),
            "failures": dict(sorted(self.reasons.items(), key=lambda kv: -kv[1])[:5]),
        }


# ---------------------------------------------------------------------------
# Our responder (a process of its own, in the responder's namespace)
# ---------------------------------------------------------------------------


def run_responder(mode: str, addr: str, ids: Sequence[str], pki_dir: Path | None) -> None:
    """IKEService on the reactor, ports 500 and 4500 on C{addr}; CHILD_SAs into SA objects."""
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from smobility import pki
    from smobility.engines.ike import (
        ChildSA,
        ESPSuite,
        IKEConfig,
        IKESuite,
        PeerConfig,
        Role,
    )
    from smobility.services.ike_service import IKEPort, IKEService
    from smobility.wire.esp import InboundSA, OutboundSA
    from smobility.wire.ikev2 import Identity, TrafficSelector

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    local_ts = (TrafficSelector.from_network(RESPONDER_INNER),)
    remote_ts = (TrafficSelector.from_network(GENERATOR_INNER),)
    cert = key = None
    anchors: tuple[Any, ...] = ()
    if mode == "psk":
        peers = [
            PeerConfig(Identity.fqdn(i), PSK_BYTES, local_ts=local_ts, remote_ts=remote_ts)
            for i in ids
        ]
    else:
        assert pki_dir is not None
        cert = pki.load_certificate((pki_dir / "responder.crt").read_bytes())
        key = pki.load_private_key((pki_dir / "responder.key").read_bytes())
        anchors = (pki.load_certificate((pki_dir / "ca.crt").read_bytes()),)
        peers = [PeerConfig(None, b"", local_ts=local_ts, remote_ts=remote_ts, auth="pubkey")]
    config = IKEConfig(
        local_id=Identity.fqdn(RESPONDER_ID), peers=peers, local_host=addr,
        ike_suites=(IKESuite.parse(IKE_SUITE),), esp_suites=(ESPSuite.parse(ESP_SUITE),),
        cookie_threshold=None, certificate=cert, private_key=key, trust_anchors=anchors,
    )  # fmt: skip
    inbound: dict[int, InboundSA] = {}
    outbound: dict[int, OutboundSA] = {}

    def on_up(child: ChildSA) -> None:
        inbound[child.inbound_spi] = InboundSA.from_keymat(child.inbound_spi, child.inbound_keymat)
        outbound[child.inbound_spi] = OutboundSA.from_keymat(
            child.outbound_spi, child.outbound_keymat
        )

    def on_down(child: ChildSA, reason: str) -> None:
        inbound.pop(child.inbound_spi, None)
        outbound.pop(child.inbound_spi, None)

    class NatT(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, peer: Any) -> None:  # noqa: N802
            if len(datagram) > 4 and datagram[:4] == b"\0\0\0\0":
                service.receive(datagram[4:], (peer[0], peer[1]), (addr, 4500))

        def send_all(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
            assert self.transport is not None
            for data, where in datagrams:
                try:
                    self.transport.write(data, where)
                except OSError:
                    pass

    nat_t = NatT()
    plain: IKEPort | None = None

    def send_plain(datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        if plain is not None:
            plain.send_all(datagrams)

    service = IKEService(
        Role.RESPONDER, config, reactor, send_nat_t=nat_t.send_all, send_plain=send_plain,
        on_up=on_up, on_down=on_down,
    )  # fmt: skip
    plain = IKEPort(service, (addr, 500))
    reactor.listenUDP(500, plain, interface=addr)  # type: ignore[attr-defined]
    reactor.listenUDP(4500, nat_t, interface=addr)  # type: ignore[attr-defined]
    print("bench-ike responder ready", flush=True)
    reactor.run()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# The scenario (in the runner's process)
# ---------------------------------------------------------------------------


def _run(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()}")
    return r


class NetPair:
    """Two namespaces (initiators, responder) on one veth pair, named C{smobi} + random letters."""

    def __init__(self, generators: int) -> None:
        tag = "".join(secrets.choice(string.ascii_lowercase) for _ in range(3))
        self.prefix = PREFIX + tag
        self.init_ns = f"{self.prefix}-i"
        self.resp_ns = f"{self.prefix}-r"
        self.generators = generators

    def up(self) -> None:
        """Create both namespaces, the link, the addresses."""
        _run(["ip", "netns", "add", self.init_ns])
        _run(["ip", "netns", "add", self.resp_ns])
        vi, vr = f"{self.prefix}i", f"{self.prefix}r"
        _run(["ip", "link", "add", vi, "netns", self.init_ns, "type", "veth",
              "peer", "name", vr, "netns", self.resp_ns])  # fmt: skip
        _run(["ip", "-n", self.resp_ns, "addr", "add", f"{RESPONDER_ADDR}/24", "dev", vr])
        for g in range(self.generators):
            _run(["ip", "-n", self.init_ns, "addr", "add", f"{generator_addr(g)}/24", "dev", vi])
        # The responder's inner side: charon's route to each CHILD_SA needs a source in it.
        _run(["ip", "-n", self.resp_ns, "addr", "add", RESPONDER_INNER_ADDR, "dev", "lo"])
        for ns, dev in ((self.init_ns, vi), (self.resp_ns, vr)):
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])

    def down(self) -> None:
        """Remove both namespaces (the veth pair goes with them); never fails."""
        for ns in (self.init_ns, self.resp_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _python() -> str:
    return sys.executable


def _pythonpath_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _make_pki(directory: Path) -> None:
    from smobility import pki

    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = pki.create_ca("smobility bench CA", days=2)
    cert, key = pki.issue_with_new_key(
        ca, ca_key, subject=pki.common_name(RESPONDER_ID),
        sans=[pki.parse_san(f"DNS:{RESPONDER_ID}")], profile="both", days=2,
    )  # fmt: skip
    (directory / "ca.crt").write_bytes(pki.certificate_pem(ca))
    (directory / "ca.key").write_bytes(pki.private_key_pem(ca_key))
    (directory / "responder.crt").write_bytes(pki.certificate_pem(cert))
    (directory / "responder.key").write_bytes(pki.private_key_pem(key))


class _Test:
    """One responder under test: started, its PID, stopped."""

    def __init__(self, ctx: BenchContext, net: NetPair, peer: str, mode: str) -> None:
        self.ctx, self.net, self.peer, self.mode = ctx, net, peer, mode
        self.dir = ctx.work / f"ike-{peer}-{mode}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "responder.log"
        self.swan_dir: Path | None = None

    def _popen(self, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.net.resp_ns, *argv],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip

    def _tail(self) -> str:
        try:
            return "".join(self.log.read_text(errors="replace").splitlines(True)[-15:])
        except OSError:
            return ""

    def _wait(self, ready: Any, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"{what}: exited with {self.proc.returncode}:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not ready after {timeout:g} s:\n{self._tail()}")
            time.sleep(0.05)

    def start(self, ids: Sequence[str], pki_dir: Path) -> None:
        """Start the responder and wait until it answers."""
        if self.peer == "smobility":
            argv = [_python(), "-m", "smobility.bench.ike", "respond", "--mode", self.mode,
                    "--addr", RESPONDER_ADDR, "--ids", ",".join(ids),
                    "--pki", str(pki_dir)]  # fmt: skip
            self.proc = self._popen(argv, _pythonpath_env())
            self._wait(
                lambda: "responder ready" in self.log.read_text(errors="replace"),
                "our responder",
            )
            return
        charon = CHARON
        if not os.access(charon, os.X_OK):
            raise MissingTool(
                "strongSwan's charon is not installed (Debian packages strongswan-charon "
                "strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins)"
            )
        swanctl = self.ctx.tool("swanctl", "strongswan-swanctl")
        # charon's own /run is bind-mounted over /run, where the work directory
        # lives: its files go to a directory under /tmp (copied back at stop).
        self.swan_dir = Path(tempfile.mkdtemp(prefix=f"{self.net.prefix}-", dir="/tmp"))
        swan = self.swan_dir
        (swan / "run").mkdir(exist_ok=True)
        sw = swan / "swanctl"
        for sub in ("", "x509", "x509ca", "private", "conf.d"):
            (sw / sub).mkdir(parents=True, exist_ok=True)
        (swan / "strongswan.conf").write_text(strongswan_conf(swan))
        (sw / "swanctl.conf").write_text(swanctl_conf(self.mode, ids))
        if self.mode == "ecdsa":
            (sw / "x509ca" / "ca.crt").write_bytes((pki_dir / "ca.crt").read_bytes())
            (sw / "x509" / "responder.crt").write_bytes((pki_dir / "responder.crt").read_bytes())
            (sw / "private" / "responder.key").write_bytes(
                (pki_dir / "responder.key").read_bytes()
            )
        env = dict(os.environ)
        env["STRONGSWAN_CONF"] = str(swan / "strongswan.conf")
        env["SWANCTL_DIR"] = str(sw)
        self.proc = self._popen(
            ["sh", "-c", f"mount --bind {swan}/run /run && exec {charon}"], env
        )
        uri = f"unix://{swan}/vici"

        def answers() -> bool:
            r = subprocess.run([swanctl, "--stats", "--uri", uri], capture_output=True,
                               env=env, timeout=5, check=False)  # fmt: skip
            return r.returncode == 0

        self._wait(answers, "charon")
        r = subprocess.run(
            [swanctl, "--load-all", "--noprompt", "--uri", uri],
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            raise BenchError(f"swanctl --load-all: {r.stdout}{r.stderr}")

    def version(self) -> str:
        """The responder's version line."""
        if self.peer == "smobility":
            return "IKEEngine + IKEService (smobility.services.ike_service)"
        r = subprocess.run([CHARON, "--version"], capture_output=True,
                           text=True, timeout=10, check=False)  # fmt: skip
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 5 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.swan_dir is not None:
            for name in ("charon.log", "strongswan.conf", "swanctl/swanctl.conf"):
                try:
                    shutil.copy(self.swan_dir / name, self.dir / Path(name).name)
                except OSError:
                    pass
            shutil.rmtree(self.swan_dir, ignore_errors=True)
            self.swan_dir = None


def _measure(
    ctx: BenchContext, net: NetPair, test: _Test, pki_dir: Path, window: int, generators: int
) -> dict[str, Any]:
    """Run the generators against the started responder; the sample's figures."""
    assert test.proc is not None
    start_at = time.time() + 3.0  # the generators import and (ECDSA) make their certificates
    gens: list[subprocess.Popen[bytes]] = []
    outs: list[Path] = []
    try:
        for g in range(generators):
            out = test.dir / f"generator{g}.json"
            outs.append(out)
            argv = ["ip", "netns", "exec", net.init_ns, _python(), "-m", "smobility.bench.ike",
                    "generate", "--index", str(g), "--window", str(window), "--mode", test.mode,
                    "--responder", RESPONDER_ADDR, "--pki", str(pki_dir),
                    "--start-at", f"{start_at:.3f}", "--duration", str(ctx.duration),
                    "--out", str(out)]  # fmt: skip
            with open(test.dir / f"generator{g}.log", "ab") as log:
                gens.append(subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=_pythonpath_env(),
                ))  # fmt: skip
        meter = CpuMeter.of([test.proc.pid])
        time.sleep(max(0.0, start_at - time.time()))
        meter.start()
        time.sleep(ctx.duration)
        cpu_s, host_s = meter.stop()
        for proc in gens:
            proc.wait(ctx.duration + DRAIN + 60)
    finally:
        for proc in gens:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    reports = []
    for g, out in enumerate(outs):
        try:
            reports.append(json.loads(out.read_text()))
        except (OSError, ValueError):
            tail = (test.dir / f"generator{g}.log").read_text(errors="replace")[-1500:]
            raise BenchError(f"generator {g} wrote no report:\n{tail}") from None
    values: dict[str, Any] = dict(combine_generators(reports, ctx.duration))
    if not values["completed"]:
        why = {k: v for r in reports for k, v in r.get("failures", {}).items()}
        raise BenchError(f"no set-up completed ({values['failed']:.0f} failed: {why})")
    values.update(responder_figures(cpu_s, host_s, values["completed"], ctx.duration))
    values["generators"] = reports
    return values


def run(ctx: BenchContext) -> ScenarioResult:
    """Measure every wanted responder in both modes, in turns, in fresh namespaces."""
    result = ScenarioResult(
        scenario=NAME, title=TITLE, started=utc_now(), machine=machine_info(),
        settings={**ctx.describe_env(), "window_per_generator": WINDOW,
                  "generators": GENERATORS, "ike_suite": IKE_SUITE, "esp_suite": ESP_SUITE},
        label_header="responder, mode", columns=COLUMNS, comparison_columns=COMPARISON_COLUMNS,
    )  # fmt: skip
    net = NetPair(GENERATORS)
    ids = identities(GENERATORS, WINDOW)
    pki_dir = ctx.work / "ike-pki"
    peers = [p for p in PEER_NAMES if ctx.wants(p)]
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], str] = {}
    ctx.say(f"namespaces {net.init_ns} and {net.resp_ns}")
    try:
        net.up()
        _make_pki(pki_dir)
        for rnd in range(ctx.rounds):
            order = peers[rnd % len(peers):] + peers[: rnd % len(peers)] if peers else []
            for mode in MODES:
                for peer in order:
                    key = (peer, mode)
                    if key in errors:
                        continue
                    test = _Test(ctx, net, peer, mode)
                    ctx.say(f"  {peer}, {mode}: {ctx.duration:g} s ...")
                    try:
                        test.start(ids, pki_dir)
                        result.peers.setdefault(peer, {
                            "title": "smobility" if peer == "smobility" else "strongSwan",
                            "version": test.version(),
                        })  # fmt: skip
                        values = _measure(ctx, net, test, pki_dir, WINDOW, GENERATORS)
                        samples.setdefault(key, []).append(values)
                        ctx.say(
                            f"    {values['rate']:.1f}/s, {values['failed']:.0f} failed, "
                            f"responder {values['responder_cores'] or 0:.2f} cores, "
                            f"generators {values['generator_cores']:.2f} cores"
                        )
                    except (BenchError, MissingTool, OSError, subprocess.SubprocessError) as e:
                        errors[key] = str(e)
                        ctx.say(f"    error: {e}")
                    finally:
                        test.stop()
                    time.sleep(SETTLE)
    except (BenchError, OSError) as e:
        result.errors.append(f"the IKE namespaces: {e}")
    finally:
        net.down()
    keys = ("rate", "completed", "failed", "retransmits", "latency_ms", "responder_cores",
            "responder_ms_per_setup", "generator_cores", "host_cores")  # fmt: skip
    for mode in MODES:
        for peer in peers:
            title = "smobility" if peer == "smobility" else "strongSwan"
            row = Row(peer=peer, case=mode, label=f"{title}, {MODE_TITLES[mode]}")
            got = samples.get((peer, mode), [])
            row.samples = got
            row.values = {k: median(s.get(k) for s in got) for k in keys}
            if (peer, mode) in errors:
                row.error = errors[(peer, mode)]
            elif not got:
                row.error = "not measured"
            result.rows.append(row)
    result.comparisons, result.verdict, result.target_met = compare(result.rows)
    busy = [s.get("generator_cores") for v in samples.values() for s in v]
    if any(b is not None and b / GENERATORS > 0.9 for b in busy):
        result.verdict.append(
            "note: a generator used over 0.9 cores in some test: its rate may be the "
            "generators' limit there; compare the CPU per set-up"
        )
    result.peers.setdefault("smobility", {"title": "smobility"})["config"] = (
        f"IKEService responder, {IKE_SUITE} / {ESP_SUITE}, no cookies, log at info to a file"
    )
    if "strongswan" in result.peers:
        result.peers["strongswan"]["config"] = (
            f"charon, kernel-libipsec, {IKE_SUITE} / {ESP_SUITE}, unique = never, "
            "dos_protection = no, filelog default = 1"
        )
    result.peers["generator"] = {
        "title": "load generator",
        "config": f"{GENERATORS} processes x {WINDOW} slots, IKEEngine initiators, "
        "Delete after each set-up",
    }
    result.finished = utc_now()
    return result


@dataclass
class _IKEScenario:
    name: str = NAME
    title: str = TITLE
    description: str = DESCRIPTION
    peers: tuple[str, ...] = PEER_NAMES

    def run(self, ctx: BenchContext) -> ScenarioResult:
        """See L{smobility.bench.ike.run}."""
        return run(ctx)


SCENARIO = _IKEScenario()
"""The scenario object the runner registers."""


# ---------------------------------------------------------------------------
# Command line of the helper processes
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """C{generate} (a load generator) or C{respond} (our responder): see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m smobility.bench.ike")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--index", type=int, default=0)
    gen.add_argument("--window", type=int, default=WINDOW)
    gen.add_argument("--mode", choices=MODES, default="psk")
    gen.add_argument("--responder", default=RESPONDER_ADDR)
    gen.add_argument("--pki", type=Path)
    gen.add_argument("--start-at", type=float, default=0.0)
    gen.add_argument("--duration", type=float, default=4.0)
    gen.add_argument("--out", type=Path, required=True)
    resp = sub.add_parser("respond")
    resp.add_argument("--mode", choices=MODES, default="psk")
    resp.add_argument("--addr", default=RESPONDER_ADDR)
    resp.add_argument("--ids", default="")
    resp.add_argument("--pki", type=Path)
    args = parser.parse_args(argv)
    if args.command == "respond":
        run_responder(args.mode, args.addr, [i for i in args.ids.split(",") if i], args.pki)
        return 0
    generator = Generator(args.index, args.window, args.mode, args.responder, args.pki)
    report = generator.run(args.start_at or time.time(), args.duration)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
