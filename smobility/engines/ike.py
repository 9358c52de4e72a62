# -*- test-case-name: tests.test_ike -*-
"""The IKEv2 engine (RFC 7296): IKE SAs and their CHILD_SA, both roles, sans I/O.

Shape (aioquic's, with Twisted's injected clock)::

    engine = IKEEngine(Role.INITIATOR, config, clock, on_child_sa=install)
    engine.initiate(("192.0.2.1", 500))          # initiator only
    engine.receive(message, addr, local)          # every IKE message read
    for d in engine.datagrams_to_send():          # after every call
        socket_for(d.local).write(d.payload, d.remote)
    when = engine.get_timer()                     # absolute, clock.seconds() scale
    ... at that time: engine.handle_timer()       # then send again

``clock`` is an ``IReactorTime``; the engine only ever calls its
``seconds()``.  It never schedules anything itself: the adapter keeps one
``callLater`` at :meth:`IKEEngine.get_timer` and calls
:meth:`IKEEngine.handle_timer` when it fires, and sends what
:meth:`IKEEngine.datagrams_to_send` returns after every call into the
engine.  Tests drive it with ``task.Clock``.

Messages in and out are bare IKE messages.  A :class:`Datagram` says
whether it goes out on the NAT-T port (:attr:`Datagram.nat_t`); its
:attr:`Datagram.payload` then carries the non-ESP marker (RFC 3948).  What
arrives on the NAT-T port is handed to :meth:`IKEEngine.receive` without the
marker (as :class:`~smobility.engines.tunnel.TunnelEngine` delivers it) with
``local`` naming the NAT-T port.

What it does:

- IKE_SA_INIT with SA, KE, Ni/Nr and both NAT_DETECTION notifies; the
  responder answers INVALID_KE_PAYLOAD with the group it wants (the initiator
  retries with it), NO_PROPOSAL_CHOSEN, INVALID_SYNTAX, and asks for a COOKIE
  once the half-open SAs reach :attr:`IKEConfig.cookie_threshold`
  (section 2.6), all without keeping state;
- UDP encapsulation always: the initiator sends IKE_AUTH to the peer's NAT-T
  port from its own, and by default fakes its NAT_DETECTION_SOURCE_IP so that
  the peer encapsulates too (section 2.23 allows it; strongSwan's
  ``encap = yes`` does the same);
- IKE_AUTH with a shared key (method 2): IDi, [IDr], AUTH, INITIAL_CONTACT,
  a CP request for the initiator's address, SA, TSi, TSr; the responder
  checks AUTH, picks an ESP proposal, narrows the traffic selectors, answers
  CP from the peer's configuration, and refuses with AUTHENTICATION_FAILED,
  NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE or INVALID_SYNTAX without installing
  anything;
- IKE_AUTH with certificates (method 14, RFC 7427: ECDSA or RSA PKCS#1 v1.5
  with SHA-2, SIGNATURE_HASH_ALGORITHMS in IKE_SA_INIT, CERT and CERTREQ),
  the peer's certificate checked against :attr:`IKEConfig.trust_anchors`, its
  validity and its subjectAltName (``PeerConfig(auth="pubkey")``);
- one tunnel-mode ESP CHILD_SA (AES-GCM-16, 128 or 256), handed to
  ``on_child_sa`` as a :class:`ChildSA` (SPIs, key material ``key || salt``
  per direction, selectors, peer address, the CP address);
- INFORMATIONAL: Delete (IKE and ESP) and liveness (empty), both ways, with
  retransmission (exponential backoff), a message-ID window of one, and a
  repeated request answered from the stored reply;
- CREATE_CHILD_SA rekeying (sections 1.3.2, 1.3.3, 2.8, 2.18), both ways:
  the CHILD_SA by its soft lifetime or on request (:meth:`IKEEngine.rekey_child`,
  for a data plane whose sequence space runs out), with PFS if configured;
  make before break (the new inbound SA goes in before the answer leaves,
  the old one goes only after the Delete exchange; see :class:`ChildSA`);
  simultaneous rekeys settled by the nonces (2.8.1, 2.8.2); the IKE SA with
  SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), its CHILD_SA moved to
  the new one and the old one deleted; TEMPORARY_FAILURE, CHILD_SA_NOT_FOUND
  and INVALID_KE_PAYLOAD as section 2.25 asks; a refused rekey is retried,
  the old SA working meanwhile.  One CHILD_SA per IKE SA: a CREATE_CHILD_SA
  for another one gets NO_ADDITIONAL_SAS (unless the IKE SA has none left).

Events (:class:`IKESAUp`, :class:`IKESADown`, :class:`IKESARekeyed`,
:class:`ChildSAUp`, :class:`ChildSADown`, :class:`ChildSARekeyed`,
:class:`IKEFailed`) go to ``on_event``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address
from typing import Final, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smobility.wire import ikev2
from smobility.wire.errors import WireError
from smobility.wire.esp import NAT_T_PORT, NON_ESP_MARKER
from smobility.wire.ikev2 import (
    CP,
    KE,
    SA,
    Auth,
    CPAttribute,
    Delete,
    Identity,
    IDi,
    IDr,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    Transform,
    TSi,
    TSr,
)

from . import ikecrypto
from .ikecrypto import Prf

log = Logger()

NONCE_LEN: Final = 32
"""Our nonce length: at least half the prf key size (section 2.10)."""

ANY_IPV4: Final = TrafficSelector.from_network("0.0.0.0/0")


class Role(Enum):
    """Which side of IKE_SA_INIT an engine plays."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


# ---------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------

_ENCR_TOKENS: Final = {
    "aes128gcm16": (ikev2.ENCR_AES_GCM_16, 128),
    "aes256gcm16": (ikev2.ENCR_AES_GCM_16, 256),
    "aes128": (ikev2.ENCR_AES_CBC, 128),
    "aes256": (ikev2.ENCR_AES_CBC, 256),
}
_PRF_TOKENS: Final = {
    "prfsha256": ikev2.PRF_HMAC_SHA2_256,
    "prfsha384": ikev2.PRF_HMAC_SHA2_384,
    "prfsha512": ikev2.PRF_HMAC_SHA2_512,
}
_INTEG_TOKENS: Final = {
    "sha256": (ikev2.INTEG_HMAC_SHA2_256_128, ikev2.PRF_HMAC_SHA2_256),
    "sha384": (ikev2.INTEG_HMAC_SHA2_384_192, ikev2.PRF_HMAC_SHA2_384),
    "sha512": (ikev2.INTEG_HMAC_SHA2_512_256, ikev2.PRF_HMAC_SHA2_512),
}
_DH_TOKENS: Final = {
    "modp2048": ikev2.DH_MODP_2048,
    "ecp256": ikev2.DH_ECP_256,
    "ecp384": ikev2.DH_ECP_384,
    "x25519": ikev2.DH_CURVE25519,
    "curve25519": ikev2.DH_CURVE25519,
}


@dataclass(frozen=True)
class IKESuite:
    """One IKE SA algorithm set: encryption (and key bits), prf, integrity, DH group.

    ``integ`` is INTEG_NONE (0) for AES-GCM.
    """

    encr: int
    key_bits: int
    prf: int
    integ: int
    dh: int

    @classmethod
    def parse(cls, text: str) -> IKESuite:
        """From strongSwan's notation, e.g. ``aes128gcm16-prfsha256-ecp256``.

        @raise ValueError: an unknown or missing algorithm.
        """
        encr: tuple[int, int] | None = None
        prf: int | None = None
        integ: int | None = None
        integ_prf: int | None = None
        group: int | None = None
        for token in text.strip().lower().split("-"):
            if token in _ENCR_TOKENS and encr is None:
                encr = _ENCR_TOKENS[token]
            elif token in _PRF_TOKENS and prf is None:
                prf = _PRF_TOKENS[token]
            elif token in _INTEG_TOKENS and integ is None:
                integ, integ_prf = _INTEG_TOKENS[token]
            elif token in _DH_TOKENS and group is None:
                group = _DH_TOKENS[token]
            else:
                raise ValueError(f"unknown or repeated algorithm {token!r} in {text!r}")
        if encr is None or group is None:
            raise ValueError(f"{text!r} lacks an encryption algorithm or a DH group")
        aead = ikecrypto.is_aead(encr[0])
        if aead and integ is not None:
            raise ValueError(f"{text!r}: AES-GCM takes no integrity algorithm")
        if not aead and integ is None:
            raise ValueError(f"{text!r}: AES-CBC needs an integrity algorithm")
        if prf is None:
            prf = integ_prf
        if prf is None:
            raise ValueError(f"{text!r} lacks a prf")
        return cls(encr[0], encr[1], prf, integ or ikev2.INTEG_NONE, group)

    def transforms(self) -> tuple[Transform, ...]:
        """The transforms of this suite, as a proposal carries them."""
        out = [Transform.make(ikev2.TRANSFORM_ENCR, self.encr, self.key_bits)]
        out.append(Transform.make(ikev2.TRANSFORM_PRF, self.prf))
        if self.integ != ikev2.INTEG_NONE:
            out.append(Transform.make(ikev2.TRANSFORM_INTEG, self.integ))
        out.append(Transform.make(ikev2.TRANSFORM_DH, self.dh))
        return tuple(out)

    def __str__(self) -> str:
        names = {v: k for k, v in _ENCR_TOKENS.items()}
        prfs = {v: k for k, v in _PRF_TOKENS.items()}
        integs = {v[0]: k for k, v in _INTEG_TOKENS.items()}
        groups = {v: k for k, v in _DH_TOKENS.items() if k != "curve25519"}
        parts = [names.get((self.encr, self.key_bits), f"encr{self.encr}")]
        implied = {v[0]: v[1] for v in _INTEG_TOKENS.values()}
        if self.integ:
            parts.append(integs.get(self.integ, f"integ{self.integ}"))
        if implied.get(self.integ) != self.prf:
            parts.append(prfs.get(self.prf, f"prf{self.prf}"))
        parts.append(groups.get(self.dh, f"dh{self.dh}"))
        return "-".join(parts)


@dataclass(frozen=True)
class ESPSuite:
    """One ESP algorithm set: AES-GCM-16 with 128 or 256 bits, no ESN.

    The data plane (:mod:`smobility.wire.esp`) does AES-GCM-16 only.
    """

    key_bits: int = 128
    encr: int = ikev2.ENCR_AES_GCM_16

    @classmethod
    def parse(cls, text: str) -> ESPSuite:
        """``aes128gcm16`` or ``aes256gcm16`` (optionally with ``-noesn``)."""
        tokens = text.strip().lower().split("-")
        if tokens[-1] == "noesn":
            tokens.pop()
        if len(tokens) != 1 or tokens[0] not in ("aes128gcm16", "aes256gcm16"):
            raise ValueError(f"ESP proposal {text!r} is not aes128gcm16 or aes256gcm16")
        return cls(128 if tokens[0] == "aes128gcm16" else 256)

    def transforms(self, dh: int | None = None) -> tuple[Transform, ...]:
        """The transforms of this suite, as a proposal carries them.

        ``dh``: a Diffie-Hellman group for PFS (CREATE_CHILD_SA only).
        """
        out = [Transform.make(ikev2.TRANSFORM_ENCR, self.encr, self.key_bits)]
        if dh is not None:
            out.append(Transform.make(ikev2.TRANSFORM_DH, dh))
        out.append(Transform.make(ikev2.TRANSFORM_ESN, ikev2.ESN_NO))
        return tuple(out)

    @property
    def keymat_length(self) -> int:
        """Bytes of key material per direction: key and 4-byte salt."""
        return self.key_bits // 8 + 4

    def __str__(self) -> str:
        return f"aes{self.key_bits}gcm16"


DEFAULT_IKE_SUITES: Final = tuple(
    IKESuite.parse(s)
    for s in (
        "aes128gcm16-prfsha256-ecp256",
        "aes256gcm16-prfsha384-x25519",
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16-prfsha384-ecp384",
        "aes128-sha256-modp2048",
    )
)
DEFAULT_ESP_SUITES: Final = (ESPSuite(128), ESPSuite(256))


def _transform_ok(t: Transform, ttype: int, tid: int, key_bits: int | None = None) -> bool:
    return (
        t.type == ttype
        and t.id == tid
        and t.key_length == key_bits
        and not (t.has_unknown_attributes)
    )


def _has(p: Proposal, ttype: int, tid: int, key_bits: int | None = None) -> bool:
    return any(_transform_ok(t, ttype, tid, key_bits) for t in p.transforms)


def _types(p: Proposal) -> set[int]:
    return {t.type for t in p.transforms}


def match_ike(p: Proposal, suite: IKESuite) -> bool:
    """True if proposal ``p`` (protocol IKE) offers every transform of ``suite``."""
    if p.protocol != ikev2.PROTO_IKE:
        return False
    if not (
        _has(p, ikev2.TRANSFORM_ENCR, suite.encr, suite.key_bits)
        and _has(p, ikev2.TRANSFORM_PRF, suite.prf)
        and _has(p, ikev2.TRANSFORM_DH, suite.dh)
    ):
        return False
    if suite.integ == ikev2.INTEG_NONE:
        # AEAD: no integrity transform, or NONE among those offered.
        integs = p.of_type(ikev2.TRANSFORM_INTEG)
        return not integs or _has(p, ikev2.TRANSFORM_INTEG, ikev2.INTEG_NONE)
    return _has(p, ikev2.TRANSFORM_INTEG, suite.integ)


def match_esp(p: Proposal, suite: ESPSuite, *, allow_dh: bool = False) -> bool:
    """True if proposal ``p`` (protocol ESP) offers ``suite`` without ESN.

    Without ``allow_dh`` (IKE_AUTH) it must also do without PFS; with it
    (CREATE_CHILD_SA) the caller looks at the DH transforms itself
    (:func:`esp_groups`).
    """
    if p.protocol != ikev2.PROTO_ESP or len(p.spi) != 4:
        return False
    if not _has(p, ikev2.TRANSFORM_ENCR, suite.encr, suite.key_bits):
        return False
    integs = p.of_type(ikev2.TRANSFORM_INTEG)
    if integs and not _has(p, ikev2.TRANSFORM_INTEG, ikev2.INTEG_NONE):
        return False
    esns = p.of_type(ikev2.TRANSFORM_ESN)
    if esns and not _has(p, ikev2.TRANSFORM_ESN, ikev2.ESN_NO):
        return False
    if allow_dh:
        return True
    groups = p.of_type(ikev2.TRANSFORM_DH)
    # A DH transform in IKE_AUTH's child proposal is ignored if NONE is offered.
    return not groups or _has(p, ikev2.TRANSFORM_DH, ikev2.DH_NONE)


def esp_groups(p: Proposal) -> tuple[int, ...]:
    """The Diffie-Hellman groups (other than NONE) an ESP proposal offers for PFS."""
    return tuple(
        t.id
        for t in p.of_type(ikev2.TRANSFORM_DH)
        if t.id != ikev2.DH_NONE and not t.has_unknown_attributes
    )


def esp_without_pfs(p: Proposal) -> bool:
    """True if an ESP proposal can do without PFS: no DH transform, or NONE among them."""
    groups = p.of_type(ikev2.TRANSFORM_DH)
    return not groups or _has(p, ikev2.TRANSFORM_DH, ikev2.DH_NONE)


def _ike_proposals(suites: Sequence[IKESuite]) -> SA:
    return SA(
        tuple(
            Proposal(i + 1, ikev2.PROTO_IKE, b"", s.transforms()) for i, s in enumerate(suites)
        )
    )


def _esp_proposals(suites: Sequence[ESPSuite], spi: int) -> SA:
    spi_b = struct.pack("!I", spi)
    return SA(
        tuple(Proposal(i + 1, ikev2.PROTO_ESP, spi_b, s.transforms()) for i, s in enumerate(suites))
    )


# ---------------------------------------------------------------------------
# Traffic selectors
# ---------------------------------------------------------------------------


def ts_intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector both ``a`` and ``b`` cover, or ``None``."""
    if type(a.start) is not type(b.start):
        return None
    if a.ip_protocol == 0:
        proto = b.ip_protocol
    elif b.ip_protocol in (0, a.ip_protocol):
        proto = a.ip_protocol
    else:
        return None
    start_port = max(a.start_port, b.start_port)
    end_port = min(a.end_port, b.end_port)
    if start_port > end_port:
        return None
    lo = max(int(a.start), int(b.start))
    hi = min(int(a.end), int(b.end))
    if lo > hi:
        return None
    family = type(a.start)
    return TrafficSelector(family(lo), family(hi), proto, start_port, end_port)


def ts_narrow(
    proposed: Sequence[TrafficSelector], allowed: Sequence[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """Every non-empty intersection of a proposed and an allowed selector, once each."""
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            i = ts_intersect(p, a)
            if i is not None and i not in out:
                out.append(i)
    return tuple(out)


def ts_covered(inner: Sequence[TrafficSelector], outer: Sequence[TrafficSelector]) -> bool:
    """True if every selector of ``inner`` lies within one of ``outer``."""
    return all(any(ts_intersect(i, o) == i for o in outer) for i in inner)


def ts_host(address: IPv4Address) -> TrafficSelector:
    """A selector for one IPv4 address, all protocols and ports."""
    return TrafficSelector(address, address)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerConfig:
    """What we know about one peer.

    ``identity``: the peer's ID (the responder looks peers up by IDi; the
    initiator checks IDr against it, and sends it as IDr when
    ``send_idr``; a responder entry without identity takes any identity a
    certificate from our trust anchors proves).  ``auth``: ``"psk"`` (method 2,
    with the secret ``psk``) or ``"pubkey"`` (method 14: our certificate and
    key from :class:`IKEConfig`, the peer's certificate checked against
    :attr:`IKEConfig.trust_anchors`), both ways.  ``internal_address``: the
    peer's inner address (responder: given by CP and used as the peer's
    traffic selector).  ``local_ts`` / ``remote_ts``: the selectors allowed on
    our side and the peer's.  ``request_address``: (initiator) send a CP
    request for our inner address.  ``dns``: (responder) DNS servers for CP.
    ``initial_contact``: (initiator) send INITIAL_CONTACT, which makes the
    responder drop our other IKE SAs; off for a peer that keeps several at
    once on purpose (a relay, one IKE SA per client it stands for).
    """

    identity: Identity | None
    psk: bytes
    internal_address: IPv4Address | None = None
    local_ts: tuple[TrafficSelector, ...] = (ANY_IPV4,)
    remote_ts: tuple[TrafficSelector, ...] = (ANY_IPV4,)
    request_address: bool = True
    send_idr: bool = False
    dns: tuple[IPv4Address, ...] = ()
    auth: str = "psk"
    initial_contact: bool = True

    def __post_init__(self) -> None:
        if self.auth not in ("psk", "pubkey"):
            raise ValueError(f"peer auth is 'psk' or 'pubkey', not {self.auth!r}")
        if self.auth == "psk" and (not self.psk or self.identity is None):
            raise ValueError("a shared-key peer needs an identity and a secret")

    def __repr__(self) -> str:
        return f"<PeerConfig {self.identity} (secret)>"


@dataclass
class IKEConfig:
    """Settings of one IKE engine.

    Times are seconds.  Retransmission waits ``retransmit_timeout``, then
    doubles it for each retry up to ``retransmit_tries`` sends in all; the
    SA is given up after the last wait.

    Rekeying (section 2.8): ``child_rekey_time`` is the soft lifetime of a
    CHILD_SA, ``ike_rekey_time`` that of an IKE SA (``None``: only on
    request, :meth:`IKEEngine.rekey_child`, :meth:`IKEEngine.rekey_ike_sa`);
    each is shortened by a random fraction up to ``rekey_jitter`` (0 to 1) so
    that two peers with the same settings rarely collide (2.8.1).  A refused
    or failed rekey is tried again after ``rekey_retry`` (``None``: never),
    the old SA working meanwhile.  ``pfs``: CHILD_SA rekeys carry a KE of
    the IKE SA's group (as initiator), and are required to (as responder).
    """

    local_id: Identity
    peers: Sequence[PeerConfig] = ()
    ike_suites: Sequence[IKESuite] = DEFAULT_IKE_SUITES
    esp_suites: Sequence[ESPSuite] = DEFAULT_ESP_SUITES
    local_host: str = "0.0.0.0"  # noqa: S104 - the address the sockets are bound to
    ike_port: int = ikev2.IKE_PORT
    nat_t_port: int = NAT_T_PORT
    peer_nat_t_port: int = NAT_T_PORT
    force_encap: bool = True
    retransmit_timeout: float = 1.0
    retransmit_tries: int = 5
    half_open_timeout: float = 30.0
    cookie_threshold: int | None = 50
    cookie_secret_lifetime: float = 300.0
    dpd_interval: float | None = None
    max_cookie_retries: int = 3
    max_ke_retries: int = 3
    certificate: x509.Certificate | None = None
    private_key: ikecrypto.PrivateKey | None = None
    trust_anchors: Sequence[x509.Certificate] = ()
    child_rekey_time: float | None = None
    ike_rekey_time: float | None = None
    rekey_jitter: float = 0.0
    rekey_retry: float | None = 10.0
    pfs: bool = False

    def peer_for(self, identity: Identity) -> PeerConfig | None:
        """The configured peer with this identity, else a certificate peer without one."""
        for p in self.peers:
            if p.identity == identity:
                return p
        for p in self.peers:
            if p.identity is None and p.auth == "pubkey":
                return p
        return None


# ---------------------------------------------------------------------------
# Output and events
# ---------------------------------------------------------------------------


class Datagram(NamedTuple):
    """One IKE message to send: to ``remote``, from our socket at ``local``."""

    message: bytes
    remote: tuple[str, int]
    local: tuple[str, int]
    nat_t: bool

    @property
    def payload(self) -> bytes:
        """The UDP payload: the message, behind the non-ESP marker on the NAT-T port."""
        return NON_ESP_MARKER + self.message if self.nat_t else self.message


@dataclass(frozen=True, repr=False)
class ChildSA:
    """A CHILD_SA ready for the data plane.

    ``inbound_keymat`` / ``outbound_keymat`` are ``key || salt`` for
    :meth:`smobility.wire.esp.InboundSA.from_keymat` and
    :meth:`~smobility.wire.esp.OutboundSA.from_keymat`.  ``internal_address``
    is the initiator's inner address from CP (ours as initiator, the peer's
    as responder), or ``None``.  ``ike_spis`` names the IKE SA it belongs to
    (after an IKE SA rekey the engine's copy names the new one).

    A CHILD_SA made by a rekey has ``replaces``: the inbound SPI of the
    CHILD_SA it replaces (which stays installed until its
    :class:`ChildSADown`); ``pfs_group`` is the DH group of that exchange,
    or ``None`` without PFS.  Make before break: install its inbound SA at
    once, next to the old one; send with its outbound SA from
    :class:`ChildSARekeyed` on (at once when we initiated the rekey, when
    the old one is deleted when the peer did).
    """

    inbound_spi: int
    inbound_keymat: bytes
    outbound_spi: int
    outbound_keymat: bytes
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    peer_addr: tuple[str, int]
    local_addr: tuple[str, int]
    peer_id: Identity | None
    ike_spis: tuple[bytes, bytes]
    suite: ESPSuite
    internal_address: IPv4Address | None = None
    replaces: int | None = None
    pfs_group: int | None = None

    def __repr__(self) -> str:
        rekey = f" replaces=0x{self.replaces:08x}" if self.replaces is not None else ""
        return (
            f"<ChildSA in=0x{self.inbound_spi:08x} out=0x{self.outbound_spi:08x} "
            f"{self.suite}{rekey} peer={self.peer_addr[0]}:{self.peer_addr[1]} (keys hidden)>"
        )


@dataclass(frozen=True)
class IKESAUp:
    """An IKE SA is established (authenticated both ways)."""

    spi_i: bytes
    spi_r: bytes
    peer_id: Identity | None
    peer_addr: tuple[str, int]
    suite: IKESuite


@dataclass(frozen=True)
class IKESADown:
    """An established IKE SA is gone: ``reason`` is deleted, peer-deleted, timeout, replaced."""

    spi_i: bytes
    spi_r: bytes
    peer_id: Identity | None
    reason: str


@dataclass(frozen=True)
class ChildSAUp:
    """A CHILD_SA was installed (also given to ``on_child_sa``)."""

    child: ChildSA


@dataclass(frozen=True)
class ChildSADown:
    """A CHILD_SA was removed: take its SAs out of the data plane."""

    child: ChildSA
    reason: str


@dataclass(frozen=True)
class ChildSARekeyed:
    """``new`` replaces ``old``: send with ``new``'s outbound SA from now on.

    ``old``'s inbound SA still takes packets until its :class:`ChildSADown`
    (reason ``rekeyed``).
    """

    old: ChildSA
    new: ChildSA


@dataclass(frozen=True)
class IKESARekeyed:
    """The IKE SA ``old_spi_i``/``old_spi_r`` was rekeyed: its CHILD_SAs now belong to the new one.

    The old IKE SA goes away without an :class:`IKESADown`.
    """

    old_spi_i: bytes
    old_spi_r: bytes
    spi_i: bytes
    spi_r: bytes
    peer_id: Identity | None
    suite: IKESuite


@dataclass(frozen=True)
class IKEFailed:
    """An exchange failed: ``notify`` is the error notify type sent or received, if any.

    ``child_only`` is true when the IKE SA itself is up but its CHILD_SA was
    refused.  ``rekey`` is true for a rekey that failed: the old SA goes on
    (and the rekey is tried again after :attr:`IKEConfig.rekey_retry`).
    """

    spi_i: bytes
    spi_r: bytes
    peer_addr: tuple[str, int]
    reason: str
    notify: int | None = None
    child_only: bool = False
    rekey: bool = False


IKEEvent = (
    IKESAUp | IKESADown | IKESARekeyed | ChildSAUp | ChildSADown | ChildSARekeyed | IKEFailed
)


# ---------------------------------------------------------------------------
# IKE SA state
# ---------------------------------------------------------------------------


class State(Enum):
    """States of one IKE SA."""

    INIT_SENT = "init-sent"
    AUTH_SENT = "auth-sent"
    HALF_OPEN = "half-open"
    ESTABLISHED = "established"
    DELETING = "deleting"
    REKEYED = "rekeyed"
    """Replaced by a rekey (or a collision's redundant SA): no longer used, waiting for Delete."""
    DEAD = "dead"


class ChildState(Enum):
    """Where one CHILD_SA stands (:meth:`IKEEngine.child_state`)."""

    INSTALLED = "installed"
    REKEYING = "rekeying"
    """Our CREATE_CHILD_SA to rekey it is queued or under way."""
    PENDING = "pending"
    """Made answering the peer's rekey: inbound in use, outbound from the old one's Delete on."""
    REPLACED = "replaced"
    """The peer rekeyed it: waiting for the peer's Delete."""
    REKEYED = "rekeyed"
    """We rekeyed it: our Delete is on its way."""
    REDUNDANT = "redundant"
    """The losing SA of a rekey collision (section 2.8.1): being deleted."""


@dataclass
class _Child:
    child: ChildSA
    state: ChildState
    rekey_at: float | None = None
    deadline: float | None = None
    # Answering the peer's rekey of this child while ours was under way: the
    # child we made then, and that exchange's nonces (section 2.8.1).
    collision: tuple[int, bytes, bytes] | None = None


@dataclass
class _RekeyChild:
    """Our CREATE_CHILD_SA rekeying ``old``."""

    old: ChildSA
    new_spi: int
    nonce: bytes
    dh: ikecrypto.DHPrivate | None
    suite: ESPSuite
    ts_i: tuple[TrafficSelector, ...]
    ts_r: tuple[TrafficSelector, ...]
    ke_tries: int = 0
    # The peer deleted ``old`` meanwhile; ``superseded``: a child of its
    # rekey took over, so ours is redundant.
    gone: bool = False
    superseded: bool = False


@dataclass
class _RekeyIKE:
    """Our CREATE_CHILD_SA rekeying the IKE SA."""

    new_spi: bytes
    nonce: bytes
    dh: ikecrypto.DHPrivate
    suites: tuple[IKESuite, ...]
    ke_tries: int = 0


_Context = _RekeyChild | _RekeyIKE | None


@dataclass
class _Request:
    # "init", "auth", "delete", "liveness", "delete-child", "auth-failed",
    # "rekey-child", "rekey-ike", "delete-rekeyed", "delete-redundant"
    kind: str
    message_id: int
    data: bytes
    remote: tuple[str, int]
    local: tuple[str, int]
    nat_t: bool
    deadline: float
    tries: int = 1
    retransmit: bool = True
    child_spi: int | None = None
    ctx: _Context = None


class _Queued(NamedTuple):
    kind: str
    exchange: int
    inner: tuple[Payload, ...]
    child_spi: int | None
    ctx: _Context


@dataclass(repr=False)
class IKESA:
    """The state of one IKE SA (read-only outside the engine)."""

    role: Role
    spi_i: bytes
    spi_r: bytes
    remote: tuple[str, int]
    local: tuple[str, int]
    state: State
    created: float
    peer: PeerConfig | None = None
    peer_id: Identity | None = None
    nat_t: bool = False
    peer_nat_d: bool = False
    peer_hashes: tuple[int, ...] = ()
    suite: IKESuite | None = None
    prf: Prf | None = None
    keys: ikecrypto.IKEKeys | None = None
    sk_out: ikecrypto.SKCipher | None = None
    sk_in: ikecrypto.SKCipher | None = None
    ni: bytes = b""
    nr: bytes = b""
    dh: ikecrypto.DHPrivate | None = None
    init_request: bytes = b""
    init_response: bytes = b""
    cookie: bytes | None = None
    cookie_tries: int = 0
    ke_tries: int = 0
    next_request_id: int = 0
    next_peer_id: int = 0
    last_response: tuple[int, bytes] | None = None
    outstanding: _Request | None = None
    queued: list[_Queued] = field(default_factory=list)
    children: list[ChildSA] = field(default_factory=list)
    child_inbound_spi: int = 0
    last_heard: float = 0.0
    expires: float | None = None
    child_info: dict[int, _Child] = field(default_factory=dict)
    rekey_at: float | None = None
    ike_rekey: _RekeyIKE | None = None
    # Answering the peer's IKE SA rekey while ours was under way: the SA we
    # made then, and that exchange's nonces (section 2.8.2).
    ike_collision: tuple[IKESA, bytes, bytes] | None = None
    internal_address: IPv4Address | None = None

    @property
    def our_spi(self) -> bytes:
        """Our own SPI of this IKE SA: the initiator's if we initiated."""
        return self.spi_i if self.role is Role.INITIATOR else self.spi_r

    def __repr__(self) -> str:
        spis = f"{self.spi_i.hex()}_i {self.spi_r.hex()}_r"
        return f"<IKESA {spis} {self.role.value} {self.state.value}>"


class _Refuse(Exception):
    """Refuse a request with one error notify (internal)."""

    def __init__(
        self, notify: int, reason: str, data: bytes = b"", protocol: int = 0, spi: bytes = b""
    ) -> None:
        super().__init__(reason)
        self.notify = notify
        self.reason = reason
        self.data = data
        self.protocol = protocol
        self.spi = spi

    def payload(self) -> Notify:
        """The error notify to send."""
        return Notify(self.notify, self.data, self.protocol, self.spi)


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------

_ERROR_NAMES: Final = {
    v: k[2:]
    for k, v in vars(ikev2).items()
    if k.startswith("N_") and isinstance(v, int) and v <= ikev2.NOTIFY_ERROR_MAX
}


def notify_name(ntype: int) -> str:
    """A notify type's name (errors), or its number."""
    return _ERROR_NAMES.get(ntype, str(ntype))


class IKEEngine:
    """IKE SAs of one endpoint, in one role; see the module docstring for the API."""

    def __init__(
        self,
        role: Role,
        config: IKEConfig,
        clock: IReactorTime,
        *,
        on_child_sa: Callable[[ChildSA], None] | None = None,
        on_event: Callable[[IKEEvent], None] | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not config.ike_suites or not config.esp_suites:
            raise ValueError("an IKE engine needs at least one IKE and one ESP suite")
        self.role = role
        self.config = config
        self.clock = clock
        self.on_child_sa = on_child_sa
        self.on_event = on_event
        self._random = random
        self.sas: dict[bytes, IKESA] = {}
        self._half_open_index: dict[tuple[bytes, str, int], bytes] = {}
        self._out: list[Datagram] = []
        self._cookie_secrets: dict[int, bytes] = {}
        self._cookie_version = 0
        self._cookie_rotated = -1e18
        self.counters: dict[str, int] = {}

    # -- public API --------------------------------------------------------

    def initiate(
        self,
        remote: tuple[str, int],
        peer: PeerConfig | None = None,
        local: tuple[str, int] | None = None,
    ) -> IKESA:
        """Start an IKE SA with ``remote`` (initiator role); send IKE_SA_INIT.

        ``peer`` defaults to the first configured peer.
        """
        if self.role is not Role.INITIATOR:
            raise ValueError("only an initiator engine initiates")
        if peer is None:
            if not self.config.peers:
                raise ValueError("no peer configured")
            peer = self.config.peers[0]
        now = self.clock.seconds()
        sa = IKESA(
            role=Role.INITIATOR,
            spi_i=self._new_ike_spi(),
            spi_r=bytes(8),
            remote=remote,
            local=local or (self.config.local_host, self.config.ike_port),
            state=State.INIT_SENT,
            created=now,
            peer=peer,
            ni=self._random(NONCE_LEN),
            dh=ikecrypto.dh_generate(self.config.ike_suites[0].dh),
        )
        self.sas[sa.spi_i] = sa
        self._send_init_request(sa)
        log.info(
            "IKE: initiating {spi} to {host}:{port}", spi=sa.spi_i.hex(), host=remote[0],
            port=remote[1],
        )
        return sa

    def receive(self, data: bytes, addr: tuple[str, int], local: tuple[str, int]) -> None:
        """Take one IKE message (without the non-ESP marker) from ``addr``, read at ``local``."""
        try:
            header = ikev2.decode_header(data)
        except ikev2.UnsupportedVersion:
            self._count("bad_version")
            return
        except WireError:
            self._count("malformed")
            return
        try:
            if header.is_response:
                self._receive_response(header, data, addr, local)
            else:
                self._receive_request(header, data, addr, local)
        except WireError as e:
            self._count("malformed")
            log.debug("IKE: dropped a message from {host}: {why}", host=addr[0], why=str(e))

    def datagrams_to_send(self) -> list[Datagram]:
        """Everything queued for sending since the last call."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """The next time (``clock.seconds()`` scale) :meth:`handle_timer` has work, or ``None``."""
        times: list[float] = []
        for sa in self.sas.values():
            if sa.outstanding is not None and sa.outstanding.retransmit:
                times.append(sa.outstanding.deadline)
            if sa.expires is not None:
                times.append(sa.expires)
            if (
                self.config.dpd_interval is not None
                and sa.state is State.ESTABLISHED
                and sa.outstanding is None
            ):
                times.append(sa.last_heard + self.config.dpd_interval)
            if sa.state is State.ESTABLISHED:
                if sa.rekey_at is not None and sa.ike_rekey is None:
                    times.append(sa.rekey_at)
                for info in sa.child_info.values():
                    if info.state is ChildState.INSTALLED and info.rekey_at is not None:
                        times.append(info.rekey_at)
                    if info.deadline is not None:
                        times.append(info.deadline)
        return min(times) if times else None

    def handle_timer(self) -> None:
        """Retransmit, give up, expire half-open SAs, check liveness and rekey, as due now."""
        now = self.clock.seconds()
        for sa in list(self.sas.values()):
            if sa.state is State.DEAD and sa.our_spi not in self.sas:
                continue  # forgotten earlier in this loop
            if sa.expires is not None and now >= sa.expires:
                rekeyed = sa.state is State.REKEYED
                self._forget(sa)
                self._count("rekeyed_expired" if rekeyed else "half_open_expired")
                continue
            req = sa.outstanding
            if req is not None and req.retransmit and now >= req.deadline:
                if req.tries >= self.config.retransmit_tries:
                    self._give_up(sa, req)
                    continue
                req.tries += 1
                req.deadline = now + self.config.retransmit_timeout * 2 ** (req.tries - 1)
                self._out.append(Datagram(req.data, req.remote, req.local, req.nat_t))
                self._count("retransmits")
            elif (
                self.config.dpd_interval is not None
                and sa.state is State.ESTABLISHED
                and sa.outstanding is None
                and now >= sa.last_heard + self.config.dpd_interval
            ):
                self._request(sa, "liveness", ikev2.INFORMATIONAL, ())
            if sa.state is State.ESTABLISHED and self.sas.get(sa.our_spi) is sa:
                self._rekey_timers(sa, now)

    def delete_ike_sa(self, sa: IKESA) -> None:
        """Send INFORMATIONAL Delete for the IKE SA; its children go down at once."""
        if sa.state is not State.ESTABLISHED:
            self._forget(sa)
            return
        sa.state = State.DELETING
        self._children_down(sa, "deleted")
        self._request(sa, "delete", ikev2.INFORMATIONAL, (Delete(ikev2.PROTO_IKE),))

    def delete_child_sa(self, sa: IKESA, child: ChildSA) -> None:
        """Send INFORMATIONAL Delete for one CHILD_SA; it goes down at once.

        A CHILD_SA that replaces it after the peer's rekey takes over first.
        """
        successor = self._pending_successor(sa, child.inbound_spi)
        if child.inbound_spi not in sa.child_info:
            return
        if successor is not None:
            self._activate(sa, successor, child)
        self._remove_child(sa, child.inbound_spi)
        self._emit(ChildSADown(child, "deleted"))
        self._request(
            sa,
            "delete-child",
            ikev2.INFORMATIONAL,
            (Delete(ikev2.PROTO_ESP, (struct.pack("!I", child.inbound_spi),)),),
        )

    def check_liveness(self, sa: IKESA) -> None:
        """Send an empty INFORMATIONAL request; no answer after the retries kills the SA."""
        if sa.state is State.ESTABLISHED:
            self._request(sa, "liveness", ikev2.INFORMATIONAL, ())

    def rekey_child(self, spi: int, *, outbound: bool = True) -> bool:
        """Rekey the CHILD_SA whose outbound SPI (or inbound, if not ``outbound``) is ``spi``.

        For the data plane, when an SA's sequence space nears its end
        (:attr:`smobility.wire.esp.OutboundSA.needs_rekey`).  Returns
        ``True`` if a rekey was started or is already under way, ``False``
        if no such CHILD_SA can be rekeyed (unknown, or already replaced).
        """
        for sa in self.sas.values():
            if sa.state is not State.ESTABLISHED:
                continue
            for info in sa.child_info.values():
                ours = info.child.outbound_spi if outbound else info.child.inbound_spi
                if ours != spi:
                    continue
                if info.state is ChildState.REKEYING:
                    return True
                if info.state is ChildState.INSTALLED:
                    self._start_child_rekey(sa, info)
                    return True
                return False
        return False

    def rekey_ike_sa(self, sa: IKESA) -> bool:
        """Rekey the IKE SA (section 2.18).

        ``False`` if it is not established or a rekey is already under way.
        """
        if sa.state is not State.ESTABLISHED or sa.ike_rekey is not None:
            return False
        self._start_ike_rekey(sa)
        return True

    def child_state(self, inbound_spi: int) -> ChildState | None:
        """The state of the CHILD_SA with this inbound SPI, or ``None``."""
        for sa in self.sas.values():
            info = sa.child_info.get(inbound_spi)
            if info is not None:
                return info.state
        return None

    def established(self) -> list[IKESA]:
        """The established IKE SAs."""
        return [sa for sa in self.sas.values() if sa.state is State.ESTABLISHED]

    def stats(self) -> dict[str, object]:
        """Counters and IKE SAs as plain data."""
        return {
            "counters": dict(self.counters),
            "ike_sas": [
                {
                    "spi_i": sa.spi_i.hex(),
                    "spi_r": sa.spi_r.hex(),
                    "state": sa.state.value,
                    "peer": f"{sa.remote[0]}:{sa.remote[1]}",
                    "peer_id": str(sa.peer_id) if sa.peer_id else None,
                    "suite": str(sa.suite) if sa.suite else None,
                    "children": [repr(c) for c in sa.children],
                }
                for sa in self.sas.values()
            ],
        }

    # -- plumbing ---------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _emit(self, event: IKEEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _contexts(self) -> list[_RekeyChild | _RekeyIKE]:
        """The rekeys under way or queued, on every IKE SA."""
        out: list[_RekeyChild | _RekeyIKE] = []
        for sa in self.sas.values():
            if sa.outstanding is not None and sa.outstanding.ctx is not None:
                out.append(sa.outstanding.ctx)
            out += [q.ctx for q in sa.queued if q.ctx is not None]
        return out

    def _new_ike_spi(self) -> bytes:
        pending = {c.new_spi for c in self._contexts() if isinstance(c, _RekeyIKE)}
        while True:
            spi = self._random(8)
            if spi[:4] != NON_ESP_MARKER and spi not in self.sas and spi not in pending:
                return spi

    def _new_child_spi(self) -> int:
        used = {c.inbound_spi for sa in self.sas.values() for c in sa.children}
        used |= {sa.child_inbound_spi for sa in self.sas.values()}
        used |= {c.new_spi for c in self._contexts() if isinstance(c, _RekeyChild)}
        while True:
            spi: int = struct.unpack("!I", self._random(4))[0]
            if spi >= 256 and spi not in used:
                return spi

    def _send(self, data: bytes, remote: tuple[str, int], local: tuple[str, int]) -> None:
        nat_t = local[1] == self.config.nat_t_port
        self._out.append(Datagram(data, remote, local, nat_t))

    def _forget(self, sa: IKESA) -> None:
        sa.state = State.DEAD
        self.sas.pop(sa.our_spi, None)
        key = (sa.spi_i, sa.remote[0], sa.remote[1])
        if self._half_open_index.get(key) == sa.spi_r:
            del self._half_open_index[key]
        for k, v in list(self._half_open_index.items()):
            if v == sa.spi_r and k[0] == sa.spi_i:
                del self._half_open_index[k]

    def _children_down(self, sa: IKESA, reason: str) -> None:
        children, sa.children = sa.children, []
        sa.child_info = {}
        for child in children:
            self._emit(ChildSADown(child, reason))

    def _remove_child(self, sa: IKESA, inbound_spi: int) -> ChildSA | None:
        info = sa.child_info.pop(inbound_spi, None)
        for child in sa.children:
            if child.inbound_spi == inbound_spi:
                sa.children.remove(child)
                return child
        return info.child if info is not None else None

    def _down(self, sa: IKESA, reason: str) -> None:
        was_up = sa.state in (State.ESTABLISHED, State.DELETING)
        self._children_down(sa, reason)
        self._forget(sa)
        if was_up:
            self._emit(IKESADown(sa.spi_i, sa.spi_r, sa.peer_id, reason))
            log.info("IKE: SA {spi} down: {why}", spi=sa.our_spi.hex(), why=reason)

    def _fail(self, sa: IKESA, reason: str, notify: int | None = None) -> None:
        log.warn(
            "IKE: SA {spi} with {host} failed: {why}", spi=sa.our_spi.hex(), host=sa.remote[0],
            why=reason,
        )
        self._emit(IKEFailed(sa.spi_i, sa.spi_r, sa.remote, reason, notify))
        self._down(sa, "failed")

    def _give_up(self, sa: IKESA, req: _Request) -> None:
        self._count("timeouts")
        if sa.state is State.REKEYED:
            self._forget(sa)  # its children live on in the new IKE SA
        elif sa.state in (State.ESTABLISHED, State.DELETING):
            self._down(sa, "timeout" if req.kind != "delete" else "deleted")
        else:
            self._fail(sa, f"no answer to {req.kind} after {req.tries} tries")

    # -- sending requests --------------------------------------------------

    def _header(self, sa: IKESA, exchange: int, message_id: int, response: bool) -> Message:
        flags = ikev2.FLAG_INITIATOR if sa.role is Role.INITIATOR else 0
        if response:
            flags |= ikev2.FLAG_RESPONSE
        return Message(sa.spi_i, sa.spi_r, exchange, flags, message_id)

    def _request(
        self,
        sa: IKESA,
        kind: str,
        exchange: int,
        inner: tuple[Payload, ...],
        child_spi: int | None = None,
        ctx: _Context = None,
    ) -> None:
        if sa.outstanding is not None:
            sa.queued.append(_Queued(kind, exchange, inner, child_spi, ctx))
            return
        mid = sa.next_request_id
        sa.next_request_id += 1
        assert sa.sk_out is not None
        data = ikecrypto.seal_message(sa.sk_out, self._header(sa, exchange, mid, False), inner)
        self._start_request(sa, kind, mid, data, child_spi=child_spi, ctx=ctx)

    def _start_request(
        self,
        sa: IKESA,
        kind: str,
        mid: int,
        data: bytes,
        *,
        retransmit: bool = True,
        child_spi: int | None = None,
        ctx: _Context = None,
    ) -> None:
        nat_t = sa.local[1] == self.config.nat_t_port
        req = _Request(
            kind,
            mid,
            data,
            sa.remote,
            sa.local,
            nat_t,
            self.clock.seconds() + self.config.retransmit_timeout,
            retransmit=retransmit,
            child_spi=child_spi,
            ctx=ctx,
        )
        sa.outstanding = req if retransmit else None
        self._out.append(Datagram(data, sa.remote, sa.local, nat_t))

    def _next_queued(self, sa: IKESA) -> None:
        while (
            sa.outstanding is None
            and sa.queued
            and sa.state in (State.ESTABLISHED, State.DELETING)
            and self.sas.get(sa.our_spi) is sa
        ):
            q = sa.queued.pop(0)
            if self._still_wanted(sa, q):
                self._request(sa, q.kind, q.exchange, q.inner, q.child_spi, q.ctx)

    def _still_wanted(self, sa: IKESA, q: _Queued) -> bool:
        """Whether a queued request still makes sense (things change while it waits)."""
        if isinstance(q.ctx, _RekeyChild):
            info = sa.child_info.get(q.ctx.old.inbound_spi)
            return (
                sa.state is State.ESTABLISHED
                and info is not None
                and info.state is ChildState.REKEYING
            )
        if isinstance(q.ctx, _RekeyIKE):
            return sa.state is State.ESTABLISHED and sa.ike_rekey is q.ctx
        if q.kind in ("delete-rekeyed", "delete-redundant"):
            return q.child_spi is not None and q.child_spi in sa.child_info
        return True

    def _nat_d(self, sa: IKESA, remote: tuple[str, int], local: tuple[str, int]) -> list[Notify]:
        spi_r = sa.spi_r if sa.role is Role.RESPONDER else bytes(8)
        if self.config.force_encap or local[0] in ("0.0.0.0", "::"):  # noqa: S104
            # A source hash that cannot match makes the peer see a NAT (section 2.23).
            source = self._random(20)
        else:
            source = ikecrypto.nat_hash(sa.spi_i, spi_r, local[0], local[1])
        dest = ikecrypto.nat_hash(sa.spi_i, spi_r, remote[0], remote[1])
        return [
            Notify(ikev2.N_NAT_DETECTION_SOURCE_IP, source),
            Notify(ikev2.N_NAT_DETECTION_DESTINATION_IP, dest),
        ]

    # -- initiator: IKE_SA_INIT ------------------------------------------

    def _send_init_request(self, sa: IKESA) -> None:
        assert sa.dh is not None
        payloads: list[Payload] = []
        if sa.cookie is not None:
            payloads.append(Notify(ikev2.N_COOKIE, sa.cookie))
        payloads += [
            _ike_proposals(self.config.ike_suites),
            KE(sa.dh.group, sa.dh.public),
            Nonce(sa.ni),
            *self._nat_d(sa, sa.remote, sa.local),
        ]
        if sa.peer is not None and sa.peer.auth == "pubkey":
            payloads.append(
                Notify(ikev2.N_SIGNATURE_HASH_ALGORITHMS, ikecrypto.signature_hashes_data())
            )
        msg = Message(
            sa.spi_i, bytes(8), ikev2.IKE_SA_INIT, ikev2.FLAG_INITIATOR, 0, tuple(payloads)
        )
        sa.init_request = msg.encode()
        sa.next_request_id = 1
        self._start_request(sa, "init", 0, sa.init_request)

    def _init_response(self, sa: IKESA, data: bytes, addr: tuple[str, int]) -> None:
        msg = ikev2.decode_message(data)
        cookie = ikev2.notify_of(msg.payloads, ikev2.N_COOKIE)
        if cookie is not None:
            if not 1 <= len(cookie.data) <= 64:
                raise WireError("a COOKIE holds 1 to 64 bytes")
            sa.cookie_tries += 1
            if sa.cookie_tries > self.config.max_cookie_retries:
                self._fail(sa, "the responder keeps asking for cookies", ikev2.N_COOKIE)
                return
            sa.cookie = cookie.data
            self._count("cookie_retries")
            self._send_init_request(sa)
            return
        invalid_ke = ikev2.notify_of(msg.payloads, ikev2.N_INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            group = ikev2.unpack_u16(invalid_ke.data)
            groups = {s.dh for s in self.config.ike_suites}
            assert sa.dh is not None
            sa.ke_tries += 1
            retries_left = sa.ke_tries <= self.config.max_ke_retries
            if group not in groups or group == sa.dh.group or not retries_left:
                self._fail(
                    sa, f"the responder wants DH group {group}", ikev2.N_INVALID_KE_PAYLOAD
                )
                return
            log.info("IKE: responder wants DH group {group}; retrying", group=group)
            sa.dh = ikecrypto.dh_generate(group)
            self._count("ke_retries")
            self._send_init_request(sa)
            return
        for n in msg.notifies():
            if n.is_error:
                self._fail(sa, f"responder refused: {notify_name(n.type)}", n.type)
                return
        sa_p = msg.find(SA)
        ke = msg.find(KE)
        nonce = msg.find(Nonce)
        if sa_p is None or ke is None or nonce is None or msg.spi_r == bytes(8):
            self._fail(sa, "IKE_SA_INIT response lacks SA, KE or Nr", ikev2.N_INVALID_SYNTAX)
            return
        if len(sa_p.proposals) != 1:
            self._fail(sa, "the responder chose more than one proposal", ikev2.N_INVALID_SYNTAX)
            return
        chosen = sa_p.proposals[0]
        suite = next((s for s in self.config.ike_suites if match_ike(chosen, s)), None)
        if suite is None or len(chosen.transforms) != len(suite.transforms()):
            self._fail(sa, "the responder chose an unoffered proposal", ikev2.N_NO_PROPOSAL_CHOSEN)
            return
        assert sa.dh is not None
        if ke.group != suite.dh or sa.dh.group != suite.dh:
            self._fail(sa, "the responder's KE does not match its proposal", ikev2.N_INVALID_SYNTAX)
            return
        try:
            shared = sa.dh.shared(ke.data)
        except ikecrypto.BadPublicValue as e:
            self._fail(sa, str(e), ikev2.N_INVALID_SYNTAX)
            return
        sa.spi_r = msg.spi_r
        sa.nr = nonce.data
        sa.init_response = data
        sa.peer_nat_d = ikev2.notify_of(msg.payloads, ikev2.N_NAT_DETECTION_SOURCE_IP) is not None
        sa.peer_hashes = self._peer_hashes(msg)
        self._derive(sa, suite, shared)
        sa.dh = None
        sa.outstanding = None
        # UDP encapsulation always: IKE_AUTH goes to the NAT-T ports (section 2.23).
        sa.nat_t = True
        sa.remote = (sa.remote[0], self.config.peer_nat_t_port)
        sa.local = (sa.local[0], self.config.nat_t_port)
        self._send_auth_request(sa)

    def _derive(
        self, sa: IKESA, suite: IKESuite, shared: bytes, old: IKESA | None = None
    ) -> None:
        prf = Prf(suite.prf)
        if old is None:
            seed = ikecrypto.skeyseed(prf, sa.ni, sa.nr, shared)
        else:
            # A rekey (section 2.18): the old SA's prf and SK_d make SKEYSEED.
            assert old.prf is not None and old.keys is not None
            seed = ikecrypto.rekey_skeyseed(old.prf, old.keys.sk_d, shared, sa.ni, sa.nr)
        keys = ikecrypto.derive_ike_keys(
            prf,
            seed,
            sa.ni,
            sa.nr,
            sa.spi_i,
            sa.spi_r,
            ikecrypto.encr_key_length(suite.encr, suite.key_bits),
            ikecrypto.integ_key_length(suite.integ),
        )
        sa.suite, sa.prf, sa.keys = suite, prf, keys
        sk_i = ikecrypto.make_sk(suite.encr, suite.integ, keys.sk_ei, keys.sk_ai)
        sk_r = ikecrypto.make_sk(suite.encr, suite.integ, keys.sk_er, keys.sk_ar)
        if sa.role is Role.INITIATOR:
            sa.sk_out, sa.sk_in = sk_i, sk_r
        else:
            sa.sk_out, sa.sk_in = sk_r, sk_i

    # -- initiator: IKE_AUTH -----------------------------------------------

    def _octets(self, sa: IKESA, *, ours: bool, identity: Identity) -> bytes:
        """InitiatorSignedOctets or ResponderSignedOctets, for our AUTH or the peer's."""
        assert sa.prf is not None and sa.keys is not None
        if (sa.role is Role.INITIATOR) == ours:
            return ikecrypto.signed_octets(
                sa.prf, sa.init_request, sa.nr, sa.keys.sk_pi, identity
            )
        return ikecrypto.signed_octets(sa.prf, sa.init_response, sa.ni, sa.keys.sk_pr, identity)

    def _peer_hashes(self, msg: Message) -> tuple[int, ...]:
        n = ikev2.notify_of(msg.payloads, ikev2.N_SIGNATURE_HASH_ALGORITHMS)
        return ikecrypto.signature_hashes(n.data) if n is not None else ()

    def _certreq(self) -> ikev2.CertReq:
        return ikev2.CertReq(
            ikev2.CERT_X509_SIGNATURE,
            b"".join(ikecrypto.ca_key_hash(ca) for ca in self.config.trust_anchors),
        )

    def _our_auth(self, sa: IKESA, peer: PeerConfig) -> list[Payload]:
        """CERT (with certificates) and AUTH, ours, for IKE_AUTH."""
        assert sa.prf is not None
        octets = self._octets(sa, ours=True, identity=self.config.local_id)
        if peer.auth == "psk":
            return [Auth(ikev2.AUTH_PSK, ikecrypto.psk_auth(sa.prf, peer.psk, octets))]
        cert, key = self.config.certificate, self.config.private_key
        if cert is None or key is None:
            raise _Refuse(ikev2.N_AUTHENTICATION_FAILED, "no certificate and key configured")
        try:
            data = ikecrypto.signature_auth(key, octets, sa.peer_hashes)
        except ikecrypto.AuthError as e:
            raise _Refuse(ikev2.N_AUTHENTICATION_FAILED, str(e)) from None
        return [
            ikev2.Cert(
                ikev2.CERT_X509_SIGNATURE, cert.public_bytes(serialization.Encoding.DER)
            ),
            Auth(ikev2.AUTH_DIGITAL_SIGNATURE, data),
        ]

    def _check_peer_auth(
        self, sa: IKESA, peer: PeerConfig, identity: Identity, auth: Auth, msg: Message
    ) -> str | None:
        """Why the peer's AUTH fails, or ``None`` when it proves ``identity``."""
        assert sa.prf is not None
        octets = self._octets(sa, ours=False, identity=identity)
        if peer.auth == "psk":
            if auth.method != ikev2.AUTH_PSK:
                return f"{identity} used auth method {auth.method}, not a shared key"
            expected = ikecrypto.psk_auth(sa.prf, peer.psk, octets)
            if not hmac.compare_digest(expected, auth.data):
                return f"wrong shared key from {identity}"
            return None
        if auth.method != ikev2.AUTH_DIGITAL_SIGNATURE:
            return f"{identity} used auth method {auth.method}, not a digital signature"
        certs = [
            c for c in ikev2.find_all(msg.payloads, ikev2.Cert)
            if c.encoding == ikev2.CERT_X509_SIGNATURE
        ]
        if not certs:
            return f"{identity} sent no certificate"
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), tz=datetime.UTC)
        try:
            cert = ikecrypto.verify_certificate(
                certs[0].data, self.config.trust_anchors, identity, now
            )
            ikecrypto.verify_signature_auth(cert.public_key(), auth.data, octets)
        except ikecrypto.AuthError as e:
            return f"{identity}: {e}"
        return None

    def _send_auth_request(self, sa: IKESA) -> None:
        peer = sa.peer
        assert peer is not None
        sa.state = State.AUTH_SENT
        sa.child_inbound_spi = self._new_child_spi()
        try:
            auth = self._our_auth(sa, peer)
        except _Refuse as e:
            self._fail(sa, e.reason, e.notify)
            return
        # Order of section 1.2: IDi, [CERT,] [INITIAL_CONTACT,] [CERTREQ,] [IDr,] AUTH.
        inner: list[Payload] = [IDi(self.config.local_id), *auth[:-1]]
        if peer.initial_contact:
            inner.append(Notify(ikev2.N_INITIAL_CONTACT))
        if peer.auth == "pubkey" and self.config.trust_anchors:
            inner.append(self._certreq())
        if peer.send_idr and peer.identity is not None:
            inner.append(IDr(peer.identity))
        inner.append(auth[-1])
        if peer.request_address:
            inner.append(
                CP(
                    ikev2.CFG_REQUEST,
                    (
                        CPAttribute(ikev2.CFG_INTERNAL_IP4_ADDRESS),
                        CPAttribute(ikev2.CFG_INTERNAL_IP4_DNS),
                    ),
                )
            )
        inner += [
            _esp_proposals(self.config.esp_suites, sa.child_inbound_spi),
            TSi(peer.local_ts),
            TSr(peer.remote_ts),
        ]
        mid = sa.next_request_id
        sa.next_request_id += 1
        assert sa.sk_out is not None
        data = ikecrypto.seal_message(
            sa.sk_out, self._header(sa, ikev2.IKE_AUTH, mid, False), inner
        )
        self._start_request(sa, "auth", mid, data)

    def _auth_response(self, sa: IKESA, msg: Message, addr: tuple[str, int]) -> None:
        peer = sa.peer
        assert peer is not None
        errors = [n for n in msg.notifies() if n.is_error]
        idr = msg.find(IDr)
        auth = msg.find(Auth)
        if idr is None or auth is None:
            if errors:
                self._fail(sa, f"responder refused: {notify_name(errors[0].type)}", errors[0].type)
            else:
                self._fail(sa, "IKE_AUTH response lacks IDr or AUTH", ikev2.N_INVALID_SYNTAX)
            return
        why = None
        if peer.identity is not None and idr.identity != peer.identity:
            why = f"the responder is {idr.identity}, not {peer.identity}"
        else:
            why = self._check_peer_auth(sa, peer, idr.identity, auth, msg)
        if why is not None:
            self._send_auth_failed_notice(sa)
            self._fail(sa, why, ikev2.N_AUTHENTICATION_FAILED)
            return
        sa.peer_id = idr.identity
        sa.state = State.ESTABLISHED
        sa.remote = addr
        sa.last_heard = self.clock.seconds()
        sa.rekey_at = self._lifetime(self.config.ike_rekey_time)
        assert sa.suite is not None
        self._emit(IKESAUp(sa.spi_i, sa.spi_r, sa.peer_id, sa.remote, sa.suite))
        log.info(
            "IKE: SA {spi} up with {peer} at {host}:{port} ({suite})", spi=sa.spi_i.hex(),
            peer=str(sa.peer_id), host=addr[0], port=addr[1], suite=str(sa.suite),
        )
        if errors:
            first = errors[0].type
            self._child_failed(sa, f"CHILD_SA refused: {notify_name(first)}", first)
            return
        try:
            self._initiator_child(sa, msg, peer)
        except _Refuse as e:
            self._child_failed(sa, e.reason, e.notify)
            # The SAs the responder installed must go: delete them.
            sa_p = msg.find(SA)
            if sa_p is not None and len(sa_p.proposals) == 1 and len(sa_p.proposals[0].spi) == 4:
                self._request(
                    sa, "delete-child", ikev2.INFORMATIONAL,
                    (Delete(ikev2.PROTO_ESP, (struct.pack("!I", sa.child_inbound_spi),)),),
                )
        self._next_queued(sa)

    def _initiator_child(self, sa: IKESA, msg: Message, peer: PeerConfig) -> None:
        sa_p, tsi, tsr = msg.find(SA), msg.find(TSi), msg.find(TSr)
        if sa_p is None or tsi is None or tsr is None:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "IKE_AUTH response lacks SA, TSi or TSr")
        if len(sa_p.proposals) != 1:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "the responder chose more than one proposal")
        chosen = sa_p.proposals[0]
        suite = next((s for s in self.config.esp_suites if match_esp(chosen, s)), None)
        if suite is None:
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "the responder chose an unoffered proposal")
        (out_spi,) = struct.unpack("!I", chosen.spi)
        internal: IPv4Address | None = None
        cp = msg.find(CP)
        if cp is not None and cp.cfg_type == ikev2.CFG_REPLY:
            for value in cp.values(ikev2.CFG_INTERNAL_IP4_ADDRESS):
                if len(value) == 4:
                    internal = IPv4Address(value)
                    break
        if not (
            ts_covered(tsi.selectors, peer.local_ts) and ts_covered(tsr.selectors, peer.remote_ts)
        ):
            raise _Refuse(ikev2.N_TS_UNACCEPTABLE, "the responder widened the traffic selectors")
        child = self._make_child(sa, suite, out_spi, tsi.selectors, tsr.selectors, internal)
        self._install(sa, child)

    def _send_auth_failed_notice(self, sa: IKESA) -> None:
        # Section 2.21.2: tell the responder, once, in a separate INFORMATIONAL.
        if sa.sk_out is None:
            return
        mid = sa.next_request_id
        sa.next_request_id += 1
        data = ikecrypto.seal_message(
            sa.sk_out,
            self._header(sa, ikev2.INFORMATIONAL, mid, False),
            (Notify(ikev2.N_AUTHENTICATION_FAILED),),
        )
        self._start_request(sa, "auth-failed", mid, data, retransmit=False)

    def _child_failed(self, sa: IKESA, reason: str, notify: int) -> None:
        log.warn("IKE: SA {spi}: {why}", spi=sa.our_spi.hex(), why=reason)
        self._emit(IKEFailed(sa.spi_i, sa.spi_r, sa.remote, reason, notify, child_only=True))

    def _make_child(
        self,
        sa: IKESA,
        suite: ESPSuite,
        out_spi: int,
        ts_i: tuple[TrafficSelector, ...],
        ts_r: tuple[TrafficSelector, ...],
        internal: IPv4Address | None,
    ) -> ChildSA:
        assert sa.prf is not None and sa.keys is not None
        i_to_r, r_to_i = ikecrypto.child_keymat(
            sa.prf, sa.keys.sk_d, sa.ni, sa.nr, suite.keymat_length
        )
        if sa.role is Role.INITIATOR:
            inbound, outbound, local_ts, remote_ts = r_to_i, i_to_r, ts_i, ts_r
        else:
            inbound, outbound, local_ts, remote_ts = i_to_r, r_to_i, ts_r, ts_i
        sa.internal_address = internal
        return ChildSA(
            inbound_spi=sa.child_inbound_spi,
            inbound_keymat=inbound,
            outbound_spi=out_spi,
            outbound_keymat=outbound,
            local_ts=local_ts,
            remote_ts=remote_ts,
            peer_addr=sa.remote,
            local_addr=sa.local,
            peer_id=sa.peer_id,
            ike_spis=(sa.spi_i, sa.spi_r),
            suite=suite,
            internal_address=internal,
        )

    def _install(
        self,
        sa: IKESA,
        child: ChildSA,
        state: ChildState = ChildState.INSTALLED,
        deadline: float | None = None,
    ) -> _Child:
        sa.children.append(child)
        info = _Child(child, state, deadline=deadline)
        if state is ChildState.INSTALLED:
            info.rekey_at = self._lifetime(self.config.child_rekey_time)
        sa.child_info[child.inbound_spi] = info
        log.info(
            "IKE: CHILD_SA {i:08x}_i {o:08x}_o {suite} {l} === {r}{how}", i=child.inbound_spi,
            o=child.outbound_spi, suite=str(child.suite),
            l=", ".join(map(str, child.local_ts)), r=", ".join(map(str, child.remote_ts)),
            how=f" (rekey of {child.replaces:08x}_i)" if child.replaces is not None else "",
        )
        if self.on_child_sa is not None:
            self.on_child_sa(child)
        self._emit(ChildSAUp(child))
        return info

    # -- responses in general --------------------------------------------

    def _receive_response(
        self, header: ikev2.Header, data: bytes, addr: tuple[str, int], local: tuple[str, int]
    ) -> None:
        # I=1: the original initiator answers a request of ours, so we are the
        # responder and our SPI is SPIr; I=0: we initiated, ours is SPIi.
        if header.from_initiator:
            sa = self.sas.get(header.spi_r)
            if sa is None or sa.role is not Role.RESPONDER or sa.spi_i != header.spi_i:
                self._count("unknown_sa")
                return
        else:
            sa = self.sas.get(header.spi_i)
            if sa is None or sa.role is not Role.INITIATOR:
                self._count("unknown_sa")
                return
        req = sa.outstanding
        if req is None or header.message_id != req.message_id:
            self._count("unexpected_response")
            return
        if sa.state is State.INIT_SENT:
            if header.exchange != ikev2.IKE_SA_INIT:
                self._count("unexpected_response")
                return
            self._init_response(sa, data, addr)
            return
        if sa.spi_r != header.spi_r:
            self._count("unknown_sa")
            return
        assert sa.sk_in is not None
        try:
            msg = ikecrypto.open_message(sa.sk_in, data, ikev2.decode_message(data))
        except ikecrypto.IntegrityError:
            self._count("integrity_failures")  # section 2.21: drop silently
            return
        except ikev2.UnsupportedCriticalPayload:
            self._count("malformed")
            return
        if msg.exchange != header.exchange:
            return
        sa.outstanding = None
        sa.last_heard = self.clock.seconds()
        if req.kind == "auth":
            if msg.exchange != ikev2.IKE_AUTH:
                self._fail(sa, "the IKE_AUTH response has the wrong exchange type")
                return
            self._auth_response(sa, msg, addr)
            return
        if req.kind == "delete":
            self._down(sa, "deleted")
            return
        if req.kind == "rekey-child":
            self._rekey_child_response(sa, msg, req)
            self._next_queued(sa)
            return
        if req.kind == "rekey-ike":
            self._rekey_ike_response(sa, msg, req)
            return
        if req.kind in ("delete-rekeyed", "delete-redundant") and req.child_spi is not None:
            child = self._remove_child(sa, req.child_spi)
            if child is not None:
                self._emit(ChildSADown(child, req.kind[len("delete-"):]))
        # delete-child, liveness: the answer is all we wanted.
        self._next_queued(sa)

    # -- requests in general -----------------------------------------------

    def _receive_request(
        self, header: ikev2.Header, data: bytes, addr: tuple[str, int], local: tuple[str, int]
    ) -> None:
        if header.exchange == ikev2.IKE_SA_INIT:
            if self.role is Role.RESPONDER and header.from_initiator:
                self._init_request(header, data, addr, local)
            else:
                self._count("unexpected_request")
            return
        # Requests from the original initiator name our SPI as SPIr; ours as
        # initiator carry I=0 and our SPI as SPIi.
        if header.from_initiator:
            sa = self.sas.get(header.spi_r)
            if sa is None or sa.role is not Role.RESPONDER or sa.spi_i != header.spi_i:
                self._count("unknown_sa")
                return
        else:
            sa = self.sas.get(header.spi_i)
            if sa is None or sa.role is not Role.INITIATOR or sa.spi_r != header.spi_r:
                self._count("unknown_sa")
                return
        mid = header.message_id
        if sa.last_response is not None and mid == sa.last_response[0]:
            # A retransmitted request: the stored reply, byte for byte (section 2.1).
            self._count("repeated_requests")
            self._send(sa.last_response[1], addr, local)
            return
        if sa.sk_in is None or sa.state in (State.INIT_SENT, State.DEAD):
            self._count("unexpected_request")
            return
        if mid != sa.next_peer_id:
            self._count("bad_message_id")
            return
        try:
            msg = ikecrypto.open_message(sa.sk_in, data, ikev2.decode_message(data))
        except ikecrypto.IntegrityError:
            self._count("integrity_failures")
            return
        except ikev2.UnsupportedCriticalPayload as e:
            self._respond(
                sa, header, addr, local,
                (Notify(ikev2.N_UNSUPPORTED_CRITICAL_PAYLOAD, bytes((e.payload_type,))),),
            )
            return
        except WireError:
            # Authentic but malformed inside.
            self._respond(sa, header, addr, local, (Notify(ikev2.N_INVALID_SYNTAX),))
            if sa.state is State.HALF_OPEN:
                self._forget(sa)
            return
        # An authenticated message: the peer is alive, and may have moved (NAT).
        sa.last_heard = self.clock.seconds()
        if header.exchange == ikev2.IKE_AUTH:
            if sa.state is not State.HALF_OPEN:
                self._count("unexpected_request")
                return
            self._auth_request(sa, header, msg, addr, local)
            return
        if sa.state not in (State.ESTABLISHED, State.DELETING, State.REKEYED):
            self._count("unexpected_request")
            return
        if header.exchange == ikev2.INFORMATIONAL:
            self._informational(sa, header, msg, addr, local)
        elif header.exchange == ikev2.CREATE_CHILD_SA:
            self._create_child_sa(sa, header, msg, addr, local)
        else:
            self._count("unexpected_request")

    def _respond(
        self,
        sa: IKESA,
        header: ikev2.Header,
        addr: tuple[str, int],
        local: tuple[str, int],
        inner: Sequence[Payload],
    ) -> None:
        assert sa.sk_out is not None
        data = ikecrypto.seal_message(
            sa.sk_out, self._header(sa, header.exchange, header.message_id, True), inner
        )
        sa.last_response = (header.message_id, data)
        sa.next_peer_id = header.message_id + 1
        self._send(data, addr, local)

    def _informational(
        self,
        sa: IKESA,
        header: ikev2.Header,
        msg: Message,
        addr: tuple[str, int],
        local: tuple[str, int],
    ) -> None:
        deletes = ikev2.find_all(msg.payloads, Delete)
        if any(d.protocol == ikev2.PROTO_IKE for d in deletes):
            self._respond(sa, header, addr, local, ())
            if sa.ike_collision is not None and sa.state is State.ESTABLISHED:
                # The peer won an IKE SA rekey collision before our answer came.
                self._adopt(sa, sa.ike_collision[0])
            self._down(sa, "peer-deleted")
            return
        reply: list[Payload] = []
        ours: list[bytes] = []
        for d in deletes:
            if d.protocol != ikev2.PROTO_ESP:
                continue
            for spi_b in d.spis:
                (spi,) = struct.unpack("!I", spi_b)
                for info in list(sa.child_info.values()):
                    if info.child.outbound_spi == spi:
                        ours.append(struct.pack("!I", info.child.inbound_spi))
                        self._peer_deleted_child(sa, info)
        if ours:
            reply.append(Delete(ikev2.PROTO_ESP, tuple(ours)))
        for n in msg.notifies():
            if n.type == ikev2.N_AUTHENTICATION_FAILED:
                self._respond(sa, header, addr, local, ())
                self._down(sa, "peer-refused-auth")
                return
        self._respond(sa, header, addr, local, tuple(reply))

    # -- responder: IKE_SA_INIT --------------------------------------------

    def _reply_clear(
        self, header: ikev2.Header, addr: tuple[str, int], local: tuple[str, int], notify: Notify
    ) -> None:
        msg = Message(
            header.spi_i, bytes(8), ikev2.IKE_SA_INIT, ikev2.FLAG_RESPONSE, 0, (notify,)
        )
        self._send(msg.encode(), addr, local)

    def _cookie_for(self, version: int, ni: bytes, host: str, spi_i: bytes) -> bytes | None:
        secret = self._cookie_secrets.get(version)
        if secret is None:
            return None
        digest = hashlib.sha256(
            ni + ikecrypto.ip_packed(host) + spi_i + secret
        ).digest()
        return bytes((version,)) + digest

    def _current_cookie_version(self) -> int:
        now = self.clock.seconds()
        age = now - self._cookie_rotated
        if not self._cookie_secrets or age >= self.config.cookie_secret_lifetime:
            self._cookie_version = (self._cookie_version + 1) % 256
            self._cookie_secrets[self._cookie_version] = self._random(32)
            # Keep the previous secret so that cookies in flight still count.
            for v in list(self._cookie_secrets):
                if v not in (self._cookie_version, (self._cookie_version - 1) % 256):
                    del self._cookie_secrets[v]
            self._cookie_rotated = now
        return self._cookie_version

    def half_open_count(self) -> int:
        """How many responder IKE SAs wait for IKE_AUTH."""
        return sum(1 for sa in self.sas.values() if sa.state is State.HALF_OPEN)

    def _init_request(
        self, header: ikev2.Header, data: bytes, addr: tuple[str, int], local: tuple[str, int]
    ) -> None:
        if header.spi_r != bytes(8) or header.message_id != 0:
            self._count("malformed")
            return
        key = (header.spi_i, addr[0], addr[1])
        existing = self._half_open_index.get(key)
        if existing is not None:
            sa = self.sas.get(existing)
            if sa is not None and sa.init_request == data:
                self._count("repeated_requests")
                self._send(sa.init_response, addr, local)
            return
        try:
            msg = ikev2.decode_message(data)
        except ikev2.UnsupportedCriticalPayload as e:
            self._reply_clear(
                header, addr, local,
                Notify(ikev2.N_UNSUPPORTED_CRITICAL_PAYLOAD, bytes((e.payload_type,))),
            )
            return
        sa_p, ke, nonce = msg.find(SA), msg.find(KE), msg.find(Nonce)
        if sa_p is None or ke is None or nonce is None:
            self._count("refused_syntax")
            self._reply_clear(header, addr, local, Notify(ikev2.N_INVALID_SYNTAX))
            return
        threshold = self.config.cookie_threshold
        if threshold is not None and self.half_open_count() >= threshold:
            version = self._current_cookie_version()
            first = msg.payloads[0]
            ok = False
            if isinstance(first, Notify) and first.type == ikev2.N_COOKIE and first.data:
                want = self._cookie_for(first.data[0], nonce.data, addr[0], header.spi_i)
                ok = want is not None and hmac.compare_digest(want, first.data)
            if not ok:
                self._count("cookies_sent")
                cookie = self._cookie_for(version, nonce.data, addr[0], header.spi_i)
                assert cookie is not None
                self._reply_clear(header, addr, local, Notify(ikev2.N_COOKIE, cookie))
                return
        # Our preference first; among equals the one whose group the KE already has.
        acceptable = [
            (s, p)
            for s in self.config.ike_suites
            for p in sa_p.proposals
            if match_ike(p, s)
        ]
        if not acceptable:
            self._count("refused_no_proposal")
            log.info("IKE: no acceptable IKE proposal from {host}", host=addr[0])
            self._reply_clear(header, addr, local, Notify(ikev2.N_NO_PROPOSAL_CHOSEN))
            return
        with_group = [(s, p) for s, p in acceptable if s.dh == ke.group]
        if not with_group:
            self._count("refused_invalid_ke")
            self._reply_clear(
                header, addr, local,
                Notify(ikev2.N_INVALID_KE_PAYLOAD, ikev2.pack_u16(acceptable[0][0].dh)),
            )
            return
        suite, proposal = with_group[0]
        dh_key = ikecrypto.dh_generate(suite.dh)
        try:
            shared = dh_key.shared(ke.data)
        except ikecrypto.BadPublicValue:
            self._count("refused_syntax")
            self._reply_clear(header, addr, local, Notify(ikev2.N_INVALID_SYNTAX))
            return
        now = self.clock.seconds()
        sa = IKESA(
            role=Role.RESPONDER,
            spi_i=header.spi_i,
            spi_r=self._new_ike_spi(),
            remote=addr,
            local=local,
            state=State.HALF_OPEN,
            created=now,
            ni=nonce.data,
            nr=self._random(NONCE_LEN),
            expires=now + self.config.half_open_timeout,
        )
        sa.peer_nat_d = (
            ikev2.notify_of(msg.payloads, ikev2.N_NAT_DETECTION_SOURCE_IP) is not None
            and ikev2.notify_of(msg.payloads, ikev2.N_NAT_DETECTION_DESTINATION_IP) is not None
        )
        payloads: list[Payload] = [
            SA((Proposal(proposal.number, ikev2.PROTO_IKE, b"", suite.transforms()),)),
            KE(suite.dh, dh_key.public),
            Nonce(sa.nr),
        ]
        if sa.peer_nat_d:
            payloads += self._nat_d(sa, addr, local)
        sa.peer_hashes = self._peer_hashes(msg)
        if self.config.trust_anchors:
            payloads.append(self._certreq())
        if sa.peer_hashes and self.config.private_key is not None:
            payloads.append(
                Notify(ikev2.N_SIGNATURE_HASH_ALGORITHMS, ikecrypto.signature_hashes_data())
            )
        reply = Message(
            sa.spi_i, sa.spi_r, ikev2.IKE_SA_INIT, ikev2.FLAG_RESPONSE, 0, tuple(payloads)
        )
        sa.init_request = data
        sa.init_response = reply.encode()
        sa.next_peer_id = 1
        sa.last_response = (0, sa.init_response)
        self._derive(sa, suite, shared)
        self.sas[sa.spi_r] = sa
        self._half_open_index[key] = sa.spi_r
        self._count("half_open")
        self._send(sa.init_response, addr, local)

    # -- responder: IKE_AUTH ----------------------------------------------

    def _auth_request(
        self,
        sa: IKESA,
        header: ikev2.Header,
        msg: Message,
        addr: tuple[str, int],
        local: tuple[str, int],
    ) -> None:
        idi, auth = msg.find(IDi), msg.find(Auth)
        if idi is None or auth is None:
            self._refuse_auth(sa, header, addr, local, ikev2.N_INVALID_SYNTAX, "no IDi or AUTH")
            return
        peer = self.config.peer_for(idi.identity)
        idr = msg.find(IDr)
        if peer is None:
            self._refuse_auth(
                sa, header, addr, local, ikev2.N_AUTHENTICATION_FAILED,
                f"unknown identity {idi.identity}",
            )
            return
        if idr is not None and idr.identity != self.config.local_id:
            self._refuse_auth(
                sa, header, addr, local, ikev2.N_AUTHENTICATION_FAILED,
                f"{idi.identity} asked for {idr.identity}, not us",
            )
            return
        why = self._check_peer_auth(sa, peer, idi.identity, auth, msg)
        if why is None:
            try:
                our_auth = self._our_auth(sa, peer)
            except _Refuse as e:
                why = e.reason
        if why is not None:
            self._refuse_auth(sa, header, addr, local, ikev2.N_AUTHENTICATION_FAILED, why)
            return
        # Authenticated.
        sa.peer, sa.peer_id = peer, idi.identity
        sa.remote, sa.local = addr, local
        sa.nat_t = local[1] == self.config.nat_t_port
        if ikev2.notify_of(msg.payloads, ikev2.N_INITIAL_CONTACT) is not None:
            for other in list(self.sas.values()):
                if other is not sa and other.peer_id == sa.peer_id and other.state in (
                    State.ESTABLISHED, State.DELETING,
                ):
                    self._down(other, "replaced")
        inner: list[Payload] = [IDr(self.config.local_id), *our_auth]
        child: ChildSA | None = None
        child_error: _Refuse | None = None
        try:
            child_payloads, child = self._responder_child(sa, msg, peer)
            inner += child_payloads
        except _Refuse as e:
            child_error = e
            inner.append(Notify(e.notify, e.data))
        sa.state = State.ESTABLISHED
        sa.expires = None
        sa.rekey_at = self._lifetime(self.config.ike_rekey_time)
        self._respond(sa, header, addr, local, inner)
        assert sa.suite is not None
        self._emit(IKESAUp(sa.spi_i, sa.spi_r, sa.peer_id, sa.remote, sa.suite))
        log.info(
            "IKE: SA {spi} up with {peer} at {host}:{port} ({suite})", spi=sa.spi_r.hex(),
            peer=str(sa.peer_id), host=addr[0], port=addr[1], suite=str(sa.suite),
        )
        if child is not None:
            self._install(sa, child)
        elif child_error is not None:
            self._child_failed(sa, child_error.reason, child_error.notify)

    def _refuse_auth(
        self,
        sa: IKESA,
        header: ikev2.Header,
        addr: tuple[str, int],
        local: tuple[str, int],
        notify: int,
        reason: str,
    ) -> None:
        self._count("refused_auth")
        self._respond(sa, header, addr, local, (Notify(notify),))
        log.warn("IKE: refused IKE_AUTH from {host}: {why}", host=addr[0], why=reason)
        self._emit(IKEFailed(sa.spi_i, sa.spi_r, addr, reason, notify))
        # Nothing was installed; keep the SA only to answer a retransmission.
        sa.state = State.DEAD
        sa.expires = self.clock.seconds() + self.config.retransmit_timeout * 2 ** (
            self.config.retransmit_tries
        )

    def _responder_child(
        self, sa: IKESA, msg: Message, peer: PeerConfig
    ) -> tuple[list[Payload], ChildSA]:
        sa_p, tsi, tsr = msg.find(SA), msg.find(TSi), msg.find(TSr)
        if sa_p is None or tsi is None or tsr is None:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "IKE_AUTH request lacks SA, TSi or TSr")
        if not sa.peer_nat_d:
            # ESP goes in UDP only here (RFC 3948): a peer without NAT-T cannot use it.
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "the initiator does not do NAT-T")
        if ikev2.notify_of(msg.payloads, ikev2.N_USE_TRANSPORT_MODE) is not None:
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "transport mode is not offered")
        choice = next(
            ((s, p) for s in self.config.esp_suites for p in sa_p.proposals if match_esp(p, s)),
            None,
        )
        if choice is None:
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal")
        suite, proposal = choice
        payloads: list[Payload] = []
        cp = msg.find(CP)
        internal: IPv4Address | None = None
        if cp is not None and cp.cfg_type == ikev2.CFG_REQUEST:
            wants_v4 = any(
                a.type == ikev2.CFG_INTERNAL_IP4_ADDRESS for a in cp.attributes
            )
            if wants_v4:
                if peer.internal_address is None:
                    raise _Refuse(ikev2.N_INTERNAL_ADDRESS_FAILURE, "no address for this peer")
                internal = peer.internal_address
                attrs = [CPAttribute(ikev2.CFG_INTERNAL_IP4_ADDRESS, internal.packed)]
                if any(a.type == ikev2.CFG_INTERNAL_IP4_DNS for a in cp.attributes):
                    attrs += [CPAttribute(ikev2.CFG_INTERNAL_IP4_DNS, d.packed) for d in peer.dns]
                payloads.append(CP(ikev2.CFG_REPLY, tuple(attrs)))
        local_allowed, remote_allowed = self._allowed_ts(peer)
        ts_i = ts_narrow(tsi.selectors, remote_allowed)
        ts_r = ts_narrow(tsr.selectors, local_allowed)
        if not ts_i or not ts_r:
            raise _Refuse(ikev2.N_TS_UNACCEPTABLE, "the traffic selectors are not acceptable")
        sa.child_inbound_spi = self._new_child_spi()
        (out_spi,) = struct.unpack("!I", proposal.spi)
        payloads += [
            SA((Proposal(proposal.number, ikev2.PROTO_ESP,
                         struct.pack("!I", sa.child_inbound_spi), suite.transforms()),)),
            TSi(ts_i),
            TSr(ts_r),
        ]
        child = self._make_child(sa, suite, out_spi, ts_i, ts_r, internal or peer.internal_address)
        return payloads, child

    # -- rekeying: common ---------------------------------------------------

    def _lifetime(self, base: float | None) -> float | None:
        """When a new SA is due for rekeying: ``base`` seconds, less the jitter."""
        if base is None:
            return None
        jitter = min(max(self.config.rekey_jitter, 0.0), 1.0)
        fraction = int.from_bytes(self._random(2), "big") / 0xFFFF if jitter else 0.0
        return self.clock.seconds() + base * (1.0 - jitter * fraction)

    def _retry_at(self) -> float | None:
        """When to try a failed rekey again: ``rekey_retry``, less up to half at random.

        Random, so that two peers refused at once do not retry in step (2.25).
        """
        retry = self.config.rekey_retry
        if retry is None:
            return None
        fraction = int.from_bytes(self._random(2), "big") / 0xFFFF
        return self.clock.seconds() + retry * (1.0 - 0.5 * fraction)

    def _exchange_wait(self) -> float:
        """How long a peer may take to finish an exchange (all its retransmissions)."""
        return float(self.config.retransmit_timeout * 2**self.config.retransmit_tries)

    def _rekey_timers(self, sa: IKESA, now: float) -> None:
        if sa.rekey_at is not None and now >= sa.rekey_at and sa.ike_rekey is None:
            self._start_ike_rekey(sa)
        for spi, info in list(sa.child_info.items()):
            if sa.child_info.get(spi) is not info:
                continue
            if (
                info.state is ChildState.INSTALLED
                and info.rekey_at is not None
                and now >= info.rekey_at
            ):
                self._start_child_rekey(sa, info)
            elif info.deadline is not None and now >= info.deadline:
                self._child_deadline(sa, info)

    @staticmethod
    def _wanted_group(n: Notify) -> int | None:
        """The group an INVALID_KE_PAYLOAD notify names, if it is well formed."""
        return ikev2.unpack_u16(n.data) if len(n.data) == 2 else None

    def _allowed_ts(
        self, peer: PeerConfig
    ) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
        """The selectors allowed on our side and on the peer's, by its configuration."""
        remote_allowed = peer.remote_ts
        if peer.internal_address is not None:
            remote_allowed = ts_narrow(remote_allowed, (ts_host(peer.internal_address),))
        return peer.local_ts, remote_allowed

    # -- rekeying CHILD_SAs: initiator ----------------------------------------

    def _start_child_rekey(self, sa: IKESA, info: _Child) -> None:
        """Send (or queue) CREATE_CHILD_SA {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr} (1.3.3)."""
        assert sa.suite is not None
        old = info.child
        ctx = _RekeyChild(
            old=old,
            new_spi=self._new_child_spi(),
            nonce=self._random(NONCE_LEN),
            dh=ikecrypto.dh_generate(sa.suite.dh) if self.config.pfs else None,
            suite=old.suite,
            ts_i=old.local_ts,
            ts_r=old.remote_ts,
        )
        info.state = ChildState.REKEYING
        info.rekey_at = None
        log.info(
            "IKE: SA {spi}: rekeying CHILD_SA {old:08x}_i{pfs}", spi=sa.our_spi.hex(),
            old=old.inbound_spi, pfs=" with PFS" if ctx.dh is not None else "",
        )
        self._request(
            sa, "rekey-child", ikev2.CREATE_CHILD_SA, self._rekey_child_payloads(ctx), ctx=ctx
        )

    @staticmethod
    def _rekey_child_payloads(ctx: _RekeyChild) -> tuple[Payload, ...]:
        group = ctx.dh.group if ctx.dh is not None else None
        out: list[Payload] = [
            # The SPI of the SA being rekeyed: the one we receive on (3.10.1).
            Notify(ikev2.N_REKEY_SA, b"", ikev2.PROTO_ESP, struct.pack("!I", ctx.old.inbound_spi)),
            SA((Proposal(1, ikev2.PROTO_ESP, struct.pack("!I", ctx.new_spi),
                         ctx.suite.transforms(group)),)),
            Nonce(ctx.nonce),
        ]
        if ctx.dh is not None:
            out.append(KE(ctx.dh.group, ctx.dh.public))
        out += [TSi(ctx.ts_i), TSr(ctx.ts_r)]
        return tuple(out)

    def _rekey_child_response(self, sa: IKESA, msg: Message, req: _Request) -> None:
        ctx = req.ctx
        assert isinstance(ctx, _RekeyChild)
        info = sa.child_info.get(ctx.old.inbound_spi)
        if info is not None and info.state is not ChildState.REKEYING:
            info = None
        errors = [n for n in msg.notifies() if n.is_error]
        if errors:
            first = errors[0]
            group = self._wanted_group(first)
            if (
                first.type == ikev2.N_INVALID_KE_PAYLOAD
                and ctx.dh is not None
                and info is not None
                and info.collision is None
                and group is not None
                and group in ikecrypto.SUPPORTED_GROUPS
                and group != ctx.dh.group
                and ctx.ke_tries < self.config.max_ke_retries
            ):
                log.info("IKE: peer wants DH group {group} for PFS; retrying", group=group)
                ctx.ke_tries += 1
                ctx.dh = ikecrypto.dh_generate(group)
                self._count("ke_retries")
                self._request(
                    sa, "rekey-child", ikev2.CREATE_CHILD_SA, self._rekey_child_payloads(ctx),
                    ctx=ctx,
                )
                return
            self._child_rekey_failed(
                sa, info, f"CHILD_SA rekey refused: {notify_name(first.type)}", first.type
            )
            return
        try:
            new, nr = self._initiator_rekeyed_child(sa, msg, ctx)
        except _Refuse as e:
            self._child_rekey_failed(sa, info, e.reason, e.notify)
            sa_p = msg.find(SA)
            if sa_p is not None and len(sa_p.proposals) == 1 and len(sa_p.proposals[0].spi) == 4:
                # The responder installed its side: take it down.
                self._request(
                    sa, "delete-child", ikev2.INFORMATIONAL,
                    (Delete(ikev2.PROTO_ESP, (struct.pack("!I", ctx.new_spi),)),),
                )
            return
        self._count("child_rekeys")
        if info is None:
            # The peer deleted the old CHILD_SA meanwhile.
            if ctx.superseded:
                # A child of the peer's own rekey took over: ours is one too many.
                self._install(sa, new, ChildState.REDUNDANT)
                self._delete_rekeyed(sa, new.inbound_spi, "delete-redundant")
            else:
                self._install(sa, replace(new, replaces=None))
            return
        if info.collision is not None:
            # Both rekeyed this child at once (section 2.8.1): the exchange
            # holding the lowest of the four nonces made the redundant SA,
            # and its initiator deletes it; the other one deletes the old SA.
            peer_spi, ni, nr_ours = info.collision
            info.collision = None
            self._count("rekey_collisions")
            if min(ctx.nonce, nr) < min(ni, nr_ours):
                log.info(
                    "IKE: SA {spi}: lost the rekey collision on {old:08x}_i",
                    spi=sa.our_spi.hex(), old=info.child.inbound_spi,
                )
                info.state = ChildState.REPLACED
                self._install(sa, new, ChildState.REDUNDANT)
                self._delete_rekeyed(sa, new.inbound_spi, "delete-redundant")
                return
            log.info(
                "IKE: SA {spi}: won the rekey collision on {old:08x}_i",
                spi=sa.our_spi.hex(), old=info.child.inbound_spi,
            )
            theirs = sa.child_info.get(peer_spi)
            if theirs is not None and theirs.state is ChildState.PENDING:
                theirs.state = ChildState.REDUNDANT
                theirs.deadline = self.clock.seconds() + self._exchange_wait()
        # Make before break: the new SA is in, and in use, before the old one goes.
        self._install(sa, new)
        self._emit(ChildSARekeyed(info.child, new))
        info.state = ChildState.REKEYED
        self._delete_rekeyed(sa, info.child.inbound_spi, "delete-rekeyed")

    def _delete_rekeyed(self, sa: IKESA, inbound_spi: int, kind: str) -> None:
        """Delete a replaced (or redundant) CHILD_SA; it goes when the answer comes."""
        self._request(
            sa, kind, ikev2.INFORMATIONAL,
            (Delete(ikev2.PROTO_ESP, (struct.pack("!I", inbound_spi),)),),
            child_spi=inbound_spi,
        )

    def _initiator_rekeyed_child(
        self, sa: IKESA, msg: Message, ctx: _RekeyChild
    ) -> tuple[ChildSA, bytes]:
        sa_p, nonce, tsi, tsr = msg.find(SA), msg.find(Nonce), msg.find(TSi), msg.find(TSr)
        if sa_p is None or nonce is None or tsi is None or tsr is None:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "CREATE_CHILD_SA response lacks SA, Nr or TS")
        if len(sa_p.proposals) != 1:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "the responder chose more than one proposal")
        chosen = sa_p.proposals[0]
        if not match_esp(chosen, ctx.suite, allow_dh=True):
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "the responder chose an unoffered proposal")
        groups = esp_groups(chosen)
        ke = msg.find(KE)
        shared = b""
        if ctx.dh is not None:
            if groups != (ctx.dh.group,) or ke is None or ke.group != ctx.dh.group:
                raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "the responder did not do our PFS group")
            try:
                shared = ctx.dh.shared(ke.data)
            except ikecrypto.BadPublicValue as e:
                raise _Refuse(ikev2.N_INVALID_SYNTAX, str(e)) from None
        elif groups or ke is not None:
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "the responder chose PFS we did not offer")
        if not (ts_covered(tsi.selectors, ctx.ts_i) and ts_covered(tsr.selectors, ctx.ts_r)):
            raise _Refuse(ikev2.N_TS_UNACCEPTABLE, "the responder widened the traffic selectors")
        assert sa.prf is not None and sa.keys is not None
        # KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr): this exchange's nonces,
        # and "initiator" is the initiator of this exchange (2.17).
        i_to_r, r_to_i = ikecrypto.child_keymat(
            sa.prf, sa.keys.sk_d, ctx.nonce, nonce.data, ctx.suite.keymat_length, shared=shared
        )
        (out_spi,) = struct.unpack("!I", chosen.spi)
        child = ChildSA(
            inbound_spi=ctx.new_spi,
            inbound_keymat=r_to_i,
            outbound_spi=out_spi,
            outbound_keymat=i_to_r,
            local_ts=tsi.selectors,
            remote_ts=tsr.selectors,
            peer_addr=sa.remote,
            local_addr=sa.local,
            peer_id=sa.peer_id,
            ike_spis=(sa.spi_i, sa.spi_r),
            suite=ctx.suite,
            internal_address=ctx.old.internal_address,
            replaces=ctx.old.inbound_spi,
            pfs_group=ctx.dh.group if ctx.dh is not None else None,
        )
        return child, nonce.data

    def _child_rekey_failed(
        self, sa: IKESA, info: _Child | None, reason: str, notify: int | None
    ) -> None:
        log.warn("IKE: SA {spi}: {why}", spi=sa.our_spi.hex(), why=reason)
        self._count("rekeys_failed")
        self._emit(
            IKEFailed(sa.spi_i, sa.spi_r, sa.remote, reason, notify, child_only=True, rekey=True)
        )
        if info is None:
            return
        if info.collision is not None:
            # The peer's rekey of the same CHILD_SA went through: its child takes over.
            info.state = ChildState.REPLACED
            info.collision = None
            return
        info.state = ChildState.INSTALLED
        info.rekey_at = self._retry_at()

    def _child_deadline(self, sa: IKESA, info: _Child) -> None:
        """The peer never finished what it started: finish it ourselves."""
        info.deadline = None
        if info.state is ChildState.REDUNDANT:
            self._delete_rekeyed(sa, info.child.inbound_spi, "delete-redundant")
            return
        if info.state is not ChildState.PENDING:
            return
        old = sa.child_info.get(info.child.replaces) if info.child.replaces is not None else None
        if old is not None and old.state is ChildState.REKEYING:
            info.deadline = self.clock.seconds() + self._exchange_wait()  # ours decides
            return
        if old is None:
            info.state = ChildState.INSTALLED
            info.rekey_at = self._lifetime(self.config.child_rekey_time)
            return
        # The peer rekeyed but never deleted the old SA: switch, and delete it.
        self._activate(sa, info, old.child)
        old.state = ChildState.REKEYED
        self._delete_rekeyed(sa, old.child.inbound_spi, "delete-rekeyed")

    def _activate(self, sa: IKESA, info: _Child, old: ChildSA) -> None:
        """A PENDING CHILD_SA takes over from ``old``: send with it from now on."""
        info.state = ChildState.INSTALLED
        info.deadline = None
        info.rekey_at = self._lifetime(self.config.child_rekey_time)
        self._emit(ChildSARekeyed(old, info.child))

    def _pending_successor(self, sa: IKESA, inbound_spi: int) -> _Child | None:
        return next(
            (
                i
                for i in sa.child_info.values()
                if i.child.replaces == inbound_spi and i.state is ChildState.PENDING
            ),
            None,
        )

    def _peer_deleted_child(self, sa: IKESA, info: _Child) -> None:
        """The peer's Delete of one CHILD_SA (we answer with its pair)."""
        child = info.child
        successor = self._pending_successor(sa, child.inbound_spi)
        if successor is not None or info.state in (ChildState.REKEYED, ChildState.REPLACED):
            reason = "rekeyed"
        elif info.state is ChildState.REDUNDANT:
            reason = "redundant"
        else:
            reason = "peer-deleted"
        out = sa.outstanding
        if (
            out is not None
            and isinstance(out.ctx, _RekeyChild)
            and out.ctx.old.inbound_spi == child.inbound_spi
        ):
            out.ctx.gone = True
            out.ctx.superseded = successor is not None
        if successor is not None:
            self._activate(sa, successor, child)
        if info.state is ChildState.PENDING and child.replaces is not None:
            # The peer took back its rekey: the old CHILD_SA is ours again.
            old = sa.child_info.get(child.replaces)
            if old is not None and old.state is ChildState.REPLACED:
                old.state = ChildState.INSTALLED
                old.rekey_at = self._lifetime(self.config.child_rekey_time)
        self._remove_child(sa, child.inbound_spi)
        self._emit(ChildSADown(child, reason))

    # -- CREATE_CHILD_SA: responder -------------------------------------------

    def _create_child_sa(
        self,
        sa: IKESA,
        header: ikev2.Header,
        msg: Message,
        addr: tuple[str, int],
        local: tuple[str, int],
    ) -> None:
        sa_p = msg.find(SA)
        rekey = ikev2.notify_of(msg.payloads, ikev2.N_REKEY_SA)
        if sa.state is not State.ESTABLISHED:
            # Being deleted, or replaced by a rekey (section 2.25).
            self._respond(sa, header, addr, local, (Notify(ikev2.N_TEMPORARY_FAILURE),))
            return
        if (
            rekey is None
            and sa_p is not None
            and any(p.protocol == ikev2.PROTO_IKE for p in sa_p.proposals)
        ):
            self._rekey_ike_request(sa, header, msg, addr, local)
            return
        if rekey is None and sa.children:
            # One CHILD_SA per IKE SA here: no additional ones (section 1.3.1).
            self._respond(sa, header, addr, local, (Notify(ikev2.N_NO_ADDITIONAL_SAS),))
            return
        try:
            payloads, new, old, ni, nr = self._responder_rekey_child(sa, msg, rekey)
        except _Refuse as e:
            self._count("rekeys_refused")
            log.info(
                "IKE: SA {spi}: refused a CHILD_SA rekey: {why}", spi=sa.our_spi.hex(),
                why=e.reason,
            )
            self._respond(sa, header, addr, local, (e.payload(),))
            return
        if old is None:
            # A new CHILD_SA in place of one that is gone (a peer recreating
            # it after a hard expiry, say): in use at once.
            self._count("children_created")
            self._install(sa, new)
            self._respond(sa, header, addr, local, payloads)
            return
        self._count("child_rekeys")
        out = sa.outstanding
        if old.state is ChildState.REKEYING:
            if (
                out is not None
                and isinstance(out.ctx, _RekeyChild)
                and out.ctx.old.inbound_spi == old.child.inbound_spi
            ):
                # Simultaneous rekey: settled when our own answer comes (2.8.1).
                old.collision = (new.inbound_spi, ni, nr)
            else:
                # Ours was only queued: the peer's rekey does the job.
                sa.queued = [
                    q for q in sa.queued
                    if not (
                        isinstance(q.ctx, _RekeyChild)
                        and q.ctx.old.inbound_spi == old.child.inbound_spi
                    )
                ]
                old.state = ChildState.REPLACED
        else:
            old.state = ChildState.REPLACED
        old.rekey_at = None
        # The new inbound SA goes in before the answer leaves; its outbound
        # is used once the initiator deletes the old SA (section 2.8).
        self._install(
            sa, new, ChildState.PENDING, deadline=self.clock.seconds() + self._exchange_wait()
        )
        self._respond(sa, header, addr, local, payloads)

    def _responder_rekey_child(
        self, sa: IKESA, msg: Message, rekey: Notify | None
    ) -> tuple[list[Payload], ChildSA, _Child | None, bytes, bytes]:
        """Answer CREATE_CHILD_SA: rekey the CHILD_SA ``rekey`` names, or make a new one."""
        info: _Child | None = None
        if rekey is not None:
            if rekey.protocol != ikev2.PROTO_ESP or len(rekey.spi) != 4:
                raise _Refuse(ikev2.N_INVALID_SYNTAX, "REKEY_SA does not name an ESP SPI")
            (spi,) = struct.unpack("!I", rekey.spi)
            info = next((i for i in sa.child_info.values() if i.child.outbound_spi == spi), None)
            if info is None:
                raise _Refuse(
                    ikev2.N_CHILD_SA_NOT_FOUND, f"no CHILD_SA {spi:08x} to rekey",
                    protocol=ikev2.PROTO_ESP, spi=rekey.spi,
                )
        out = sa.outstanding
        if sa.ike_rekey is not None and out is not None and out.ctx is sa.ike_rekey:
            raise _Refuse(ikev2.N_TEMPORARY_FAILURE, "rekeying the IKE SA")
        if info is not None and info.state not in (ChildState.INSTALLED, ChildState.REKEYING):
            spi = info.child.outbound_spi
            raise _Refuse(ikev2.N_TEMPORARY_FAILURE, f"CHILD_SA {spi:08x} is being replaced")
        sa_p, nonce, tsi, tsr = msg.find(SA), msg.find(Nonce), msg.find(TSi), msg.find(TSr)
        if sa_p is None or nonce is None or tsi is None or tsr is None:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "CREATE_CHILD_SA request lacks SA, Ni or TS")
        if ikev2.notify_of(msg.payloads, ikev2.N_USE_TRANSPORT_MODE) is not None:
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "transport mode is not offered")
        ke = msg.find(KE)
        suite, proposal, group = self._pick_child_proposal(sa, sa_p.proposals, ke)
        old = info.child if info is not None else None
        assert sa.peer is not None
        local_allowed, remote_allowed = self._allowed_ts(sa.peer)
        # TSi is the exchange initiator's side: the peer's.  A rekeyed CHILD_SA
        # keeps within its predecessor's selectors.
        ts_i = ts_narrow(tsi.selectors, remote_allowed)
        ts_r = ts_narrow(tsr.selectors, local_allowed)
        if old is not None:
            ts_i = ts_narrow(ts_i, old.remote_ts)
            ts_r = ts_narrow(ts_r, old.local_ts)
        if not ts_i or not ts_r:
            raise _Refuse(ikev2.N_TS_UNACCEPTABLE, "the traffic selectors are not acceptable")
        shared = b""
        dh: ikecrypto.DHPrivate | None = None
        if group is not None:
            assert ke is not None
            dh = ikecrypto.dh_generate(group)
            try:
                shared = dh.shared(ke.data)
            except ikecrypto.BadPublicValue as e:
                raise _Refuse(ikev2.N_INVALID_SYNTAX, str(e)) from None
        nr = self._random(NONCE_LEN)
        new_spi = self._new_child_spi()
        assert sa.prf is not None and sa.keys is not None
        i_to_r, r_to_i = ikecrypto.child_keymat(
            sa.prf, sa.keys.sk_d, nonce.data, nr, suite.keymat_length, shared=shared
        )
        (out_spi,) = struct.unpack("!I", proposal.spi)
        child = ChildSA(
            inbound_spi=new_spi,
            inbound_keymat=i_to_r,
            outbound_spi=out_spi,
            outbound_keymat=r_to_i,
            local_ts=ts_r,
            remote_ts=ts_i,
            peer_addr=sa.remote,
            local_addr=sa.local,
            peer_id=sa.peer_id,
            ike_spis=(sa.spi_i, sa.spi_r),
            suite=suite,
            internal_address=old.internal_address if old is not None else sa.internal_address,
            replaces=old.inbound_spi if old is not None else None,
            pfs_group=group,
        )
        payloads: list[Payload] = [
            SA((Proposal(proposal.number, ikev2.PROTO_ESP, struct.pack("!I", new_spi),
                         suite.transforms(group)),)),
            Nonce(nr),
        ]
        if dh is not None:
            payloads.append(KE(dh.group, dh.public))
        payloads += [TSi(ts_i), TSr(ts_r)]
        return payloads, child, info, nonce.data, nr

    def _pick_child_proposal(
        self, sa: IKESA, proposals: Sequence[Proposal], ke: KE | None
    ) -> tuple[ESPSuite, Proposal, int | None]:
        """Our preferred ESP suite among the proposals, and the PFS group (or ``None``)."""
        wanted: list[int] = []
        for suite in self.config.esp_suites:
            for p in proposals:
                if len(p.spi) != 4 or not match_esp(p, suite, allow_dh=True):
                    continue
                groups = [g for g in esp_groups(p) if g in ikecrypto.SUPPORTED_GROUPS]
                if ke is not None and ke.group in groups:
                    return suite, p, ke.group
                if ke is None and not self.config.pfs and esp_without_pfs(p):
                    return suite, p, None
                wanted += groups
        if wanted:
            assert sa.suite is not None
            group = sa.suite.dh if sa.suite.dh in wanted else wanted[0]
            raise _Refuse(
                ikev2.N_INVALID_KE_PAYLOAD, f"PFS wants a KE of group {group}",
                ikev2.pack_u16(group),
            )
        raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal for the rekey")

    # -- rekeying the IKE SA ----------------------------------------------------

    def _start_ike_rekey(self, sa: IKESA) -> None:
        """Send (or queue) CREATE_CHILD_SA {SA, Ni, KEi} for a new IKE SA (1.3.2)."""
        assert sa.suite is not None
        suites = (sa.suite, *[s for s in self.config.ike_suites if s != sa.suite])
        ctx = _RekeyIKE(
            self._new_ike_spi(), self._random(NONCE_LEN), ikecrypto.dh_generate(sa.suite.dh),
            suites,
        )
        sa.ike_rekey = ctx
        sa.rekey_at = None
        log.info("IKE: SA {spi}: rekeying the IKE SA", spi=sa.our_spi.hex())
        self._request(
            sa, "rekey-ike", ikev2.CREATE_CHILD_SA, self._rekey_ike_payloads(ctx), ctx=ctx
        )

    @staticmethod
    def _rekey_ike_payloads(ctx: _RekeyIKE) -> tuple[Payload, ...]:
        return (
            SA(tuple(
                Proposal(i + 1, ikev2.PROTO_IKE, ctx.new_spi, s.transforms())
                for i, s in enumerate(ctx.suites)
            )),
            Nonce(ctx.nonce),
            KE(ctx.dh.group, ctx.dh.public),
        )

    def _rekey_ike_response(self, sa: IKESA, msg: Message, req: _Request) -> None:
        ctx = req.ctx
        assert isinstance(ctx, _RekeyIKE)
        if sa.ike_rekey is not ctx:
            self._next_queued(sa)
            return
        errors = [n for n in msg.notifies() if n.is_error]
        if errors:
            first = errors[0]
            group = self._wanted_group(first)
            if (
                first.type == ikev2.N_INVALID_KE_PAYLOAD
                and sa.ike_collision is None
                and sa.state is State.ESTABLISHED
                and group is not None
                and group != ctx.dh.group
                and group in {s.dh for s in ctx.suites}
                and ctx.ke_tries < self.config.max_ke_retries
            ):
                ctx.ke_tries += 1
                ctx.dh = ikecrypto.dh_generate(group)
                self._count("ke_retries")
                self._request(
                    sa, "rekey-ike", ikev2.CREATE_CHILD_SA, self._rekey_ike_payloads(ctx),
                    ctx=ctx,
                )
                return
            self._ike_rekey_failed(
                sa, f"IKE SA rekey refused: {notify_name(first.type)}", first.type
            )
            return
        try:
            new = self._initiator_rekeyed_ike(sa, msg, ctx)
        except _Refuse as e:
            self._ike_rekey_failed(sa, e.reason, e.notify)
            return
        sa.ike_rekey = None
        self.sas[new.our_spi] = new
        if sa.state is not State.ESTABLISHED:
            # Deleted meanwhile: the new IKE SA goes too.
            new.state = State.REKEYED
            self._request(new, "delete", ikev2.INFORMATIONAL, (Delete(ikev2.PROTO_IKE),))
            self._next_queued(sa)
            return
        collision, sa.ike_collision = sa.ike_collision, None
        if collision is not None:
            other, ni, nr = collision
            self._count("rekey_collisions")
            if min(ctx.nonce, new.nr) < min(ni, nr):
                # Lost (section 2.8.2): delete ours; the peer's SA takes the
                # children, and the peer deletes the old one.
                log.info("IKE: SA {spi}: lost the IKE SA rekey collision", spi=sa.our_spi.hex())
                new.state = State.REKEYED
                self._request(new, "delete", ikev2.INFORMATIONAL, (Delete(ikev2.PROTO_IKE),))
                self._adopt(sa, other)
                return
            log.info("IKE: SA {spi}: won the IKE SA rekey collision", spi=sa.our_spi.hex())
            other.expires = self.clock.seconds() + self._exchange_wait()  # the peer deletes it
        self._move_children(sa, new)
        sa.state = State.REKEYED
        # The Delete is the last request on the old IKE SA (section 2.18).
        self._request(sa, "delete", ikev2.INFORMATIONAL, (Delete(ikev2.PROTO_IKE),))

    def _initiator_rekeyed_ike(self, sa: IKESA, msg: Message, ctx: _RekeyIKE) -> IKESA:
        sa_p, nonce, ke = msg.find(SA), msg.find(Nonce), msg.find(KE)
        if sa_p is None or nonce is None or ke is None:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "IKE SA rekey response lacks SA, Nr or KEr")
        if len(sa_p.proposals) != 1:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "the responder chose more than one proposal")
        chosen = sa_p.proposals[0]
        if chosen.protocol != ikev2.PROTO_IKE or len(chosen.spi) != 8 or chosen.spi == bytes(8):
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "the new IKE SA needs the responder's SPI")
        suite = next(
            (
                s for s in ctx.suites
                if match_ike(chosen, s) and len(chosen.transforms) == len(s.transforms())
            ),
            None,
        )
        if suite is None:
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "the responder chose an unoffered proposal")
        if ke.group != suite.dh or ctx.dh.group != suite.dh:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "the responder's KE does not match its proposal")
        try:
            shared = ctx.dh.shared(ke.data)
        except ikecrypto.BadPublicValue as e:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, str(e)) from None
        new = self._successor(sa, Role.INITIATOR, ctx.new_spi, chosen.spi, ctx.nonce, nonce.data)
        self._derive(new, suite, shared, old=sa)
        return new

    def _ike_rekey_failed(self, sa: IKESA, reason: str, notify: int | None) -> None:
        sa.ike_rekey = None
        log.warn("IKE: SA {spi}: {why}", spi=sa.our_spi.hex(), why=reason)
        self._count("rekeys_failed")
        self._emit(IKEFailed(sa.spi_i, sa.spi_r, sa.remote, reason, notify, rekey=True))
        if sa.ike_collision is not None and sa.state is State.ESTABLISHED:
            # The peer's rekey went through instead of ours.
            other, sa.ike_collision = sa.ike_collision[0], None
            self._adopt(sa, other)
            return
        if sa.state is State.ESTABLISHED:
            sa.rekey_at = self._retry_at()
        self._next_queued(sa)

    def _rekey_ike_request(
        self,
        sa: IKESA,
        header: ikev2.Header,
        msg: Message,
        addr: tuple[str, int],
        local: tuple[str, int],
    ) -> None:
        try:
            new, payloads = self._responder_rekey_ike(sa, msg)
        except _Refuse as e:
            self._count("rekeys_refused")
            log.info(
                "IKE: SA {spi}: refused an IKE SA rekey: {why}", spi=sa.our_spi.hex(),
                why=e.reason,
            )
            self._respond(sa, header, addr, local, (e.payload(),))
            return
        self._respond(sa, header, addr, local, payloads)
        self.sas[new.our_spi] = new
        if sa.ike_rekey is not None:
            out = sa.outstanding
            if out is not None and out.ctx is sa.ike_rekey:
                # Simultaneous rekey: settled when our own answer comes (2.8.2).
                new.state = State.REKEYED
                new.expires = self.clock.seconds() + self._exchange_wait()
                sa.ike_collision = (new, new.ni, new.nr)
                return
            # Ours was only queued: the peer's rekey does the job.
            sa.queued = [q for q in sa.queued if q.ctx is not sa.ike_rekey]
            sa.ike_rekey = None
        self._adopt(sa, new)

    def _responder_rekey_ike(
        self, sa: IKESA, msg: Message
    ) -> tuple[IKESA, tuple[Payload, ...]]:
        out = sa.outstanding
        if out is not None and out.kind in (
            "rekey-child", "delete-rekeyed", "delete-redundant", "delete-child",
        ):
            raise _Refuse(ikev2.N_TEMPORARY_FAILURE, "a CHILD_SA exchange of ours is under way")
        if any(
            i.state in (ChildState.REKEYED, ChildState.REDUNDANT) for i in sa.child_info.values()
        ):
            raise _Refuse(ikev2.N_TEMPORARY_FAILURE, "closing a CHILD_SA")
        sa_p, nonce, ke = msg.find(SA), msg.find(Nonce), msg.find(KE)
        if sa_p is None or nonce is None or ke is None:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "IKE SA rekey request lacks SA, Ni or KEi")
        proposals = [p for p in sa_p.proposals if p.protocol == ikev2.PROTO_IKE]
        if any(len(p.spi) != 8 or p.spi == bytes(8) for p in proposals):
            raise _Refuse(ikev2.N_INVALID_SYNTAX, "a new IKE SA needs the initiator's SPI")
        acceptable = [
            (s, p) for s in self.config.ike_suites for p in proposals if match_ike(p, s)
        ]
        if not acceptable:
            raise _Refuse(ikev2.N_NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal")
        with_group = [(s, p) for s, p in acceptable if s.dh == ke.group]
        if not with_group:
            group = acceptable[0][0].dh
            raise _Refuse(
                ikev2.N_INVALID_KE_PAYLOAD, f"wants DH group {group}", ikev2.pack_u16(group)
            )
        suite, proposal = with_group[0]
        dh = ikecrypto.dh_generate(suite.dh)
        try:
            shared = dh.shared(ke.data)
        except ikecrypto.BadPublicValue as e:
            raise _Refuse(ikev2.N_INVALID_SYNTAX, str(e)) from None
        nr = self._random(NONCE_LEN)
        new = self._successor(
            sa, Role.RESPONDER, proposal.spi, self._new_ike_spi(), nonce.data, nr
        )
        self._derive(new, suite, shared, old=sa)
        payloads = (
            SA((Proposal(proposal.number, ikev2.PROTO_IKE, new.spi_r, suite.transforms()),)),
            Nonce(nr),
            KE(suite.dh, dh.public),
        )
        return new, payloads

    def _successor(
        self, old: IKESA, role: Role, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes
    ) -> IKESA:
        """The IKE SA a rekey makes: same peer and addresses, message IDs from 0."""
        now = self.clock.seconds()
        return IKESA(
            role=role,
            spi_i=spi_i,
            spi_r=spi_r,
            remote=old.remote,
            local=old.local,
            state=State.ESTABLISHED,
            created=now,
            peer=old.peer,
            peer_id=old.peer_id,
            nat_t=old.nat_t,
            peer_nat_d=old.peer_nat_d,
            ni=ni,
            nr=nr,
            last_heard=now,
            rekey_at=self._lifetime(self.config.ike_rekey_time),
            internal_address=old.internal_address,
        )

    def _adopt(self, old: IKESA, new: IKESA) -> None:
        """``new`` replaces ``old``; the peer will delete ``old`` (or it expires)."""
        self._move_children(old, new)
        old.state = State.REKEYED
        old.expires = self.clock.seconds() + self._exchange_wait()

    def _move_children(self, old: IKESA, new: IKESA) -> None:
        """The CHILD_SAs (and requests not yet sent) of ``old`` go to ``new`` (section 2.18)."""
        spis = (new.spi_i, new.spi_r)
        for child in old.children:
            moved = replace(child, ike_spis=spis)
            info = old.child_info.get(child.inbound_spi) or _Child(moved, ChildState.INSTALLED)
            info.child = moved
            new.children.append(moved)
            new.child_info[moved.inbound_spi] = info
        old.children, old.child_info = [], {}
        new.queued += old.queued
        old.queued = []
        old.rekey_at = None
        new.state = State.ESTABLISHED
        new.expires = None
        assert new.suite is not None
        self._count("ike_rekeys")
        log.info(
            "IKE: SA {old} rekeyed: now {spi_i}_i {spi_r}_r ({suite})", old=old.our_spi.hex(),
            spi_i=new.spi_i.hex(), spi_r=new.spi_r.hex(), suite=str(new.suite),
        )
        self._emit(IKESARekeyed(old.spi_i, old.spi_r, new.spi_i, new.spi_r, new.peer_id, new.suite))
        self._next_queued(new)


def keys_for_log(sa: IKESA) -> dict[str, str]:
    """The IKE SA's keys as hex, for comparing with a peer's debug dump in tests.

    Never log this in production: it is the whole secret state of the SA.
    """
    if sa.keys is None:
        return {}
    k = sa.keys
    return {
        "sk_d": k.sk_d.hex(),
        "sk_ai": k.sk_ai.hex(),
        "sk_ar": k.sk_ar.hex(),
        "sk_ei": k.sk_ei.hex(),
        "sk_er": k.sk_er.hex(),
        "sk_pi": k.sk_pi.hex(),
        "sk_pr": k.sk_pr.hex(),
    }


__all__ = [
    "ANY_IPV4",
    "ChildSA",
    "ChildSADown",
    "ChildSARekeyed",
    "ChildSAUp",
    "ChildState",
    "DEFAULT_ESP_SUITES",
    "DEFAULT_IKE_SUITES",
    "Datagram",
    "ESPSuite",
    "IKEConfig",
    "IKEEngine",
    "IKEEvent",
    "IKEFailed",
    "IKESA",
    "IKESADown",
    "IKESARekeyed",
    "IKESAUp",
    "IKESuite",
    "PeerConfig",
    "Role",
    "State",
    "keys_for_log",
    "esp_groups",
    "esp_without_pfs",
    "match_esp",
    "match_ike",
    "notify_name",
    "ts_covered",
    "ts_intersect",
    "ts_narrow",
]
