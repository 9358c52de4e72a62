# -*- test-case-name: tests.test_ike -*-
"""Tests for L{smobility.engines.ikecrypto} and L{smobility.engines.ike}.

Crypto: prf+ and the key derivation against NIST's CAVS sample for the
SP 800-135 IKEv2 KDF (SHA-1; the SHA-2 prfs are checked against strongSwan's
key dump in L{tests.test_ike_strongswan}), HMAC against RFC 4231, the SK
payload and AUTH against independent recomputation with C{cryptography}.

Engines: an initiator and a responder joined in memory on C{task.Clock}, for
every supported suite; refusals; retransmission and repeated requests;
INVALID_KE retry; cookies; INFORMATIONAL delete and liveness.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smobility.engines import ikecrypto
from smobility.engines.ike import (
    ChildSA,
    ChildSADown,
    Datagram,
    ESPSuite,
    IKEConfig,
    IKEEngine,
    IKEEvent,
    IKEFailed,
    IKESADown,
    IKESAUp,
    IKESuite,
    PeerConfig,
    Role,
    State,
    ts_covered,
    ts_intersect,
    ts_narrow,
)
from smobility.engines.ikecrypto import Prf
from smobility.wire import ikev2
from smobility.wire.errors import WireError
from smobility.wire.esp import NON_ESP_MARKER, InboundSA, OutboundSA
from smobility.wire.ikev2 import (
    KE,
    SA,
    Identity,
    Message,
    Nonce,
    Notify,
    TrafficSelector,
    UnknownPayload,
)


def h(text: str) -> bytes:
    """Bytes from hex with spaces."""
    return bytes.fromhex("".join(text.split()))


# ---------------------------------------------------------------------------
# Crypto
# ---------------------------------------------------------------------------

# NIST CAVS SP 800-135 IKEv2 KDF sample, SHA-1 (as reproduced in libreswan's
# CAVS tool, programs/cavp): g^ir, g^ir (new), Ni, Nr, SPIi, SPIr, 1056-bit DKM.
CAVS_GIR = h("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52")
CAVS_GIR_NEW = h("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330")
CAVS_NI = h("32b50d5f4a3763f3")
CAVS_NR = h("9206a04b26564cb1")
CAVS_SPII = h("34c9e7c188868785")
CAVS_SPIR = h("3ff77d760d2b2199")
CAVS_SKEYSEED = h("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7")
CAVS_DKM = h(
    "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b7660"
    "6f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed"
    "41efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4"
)
CAVS_DKM_CHILD = h(
    "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd9560b2d5e0"
    "92d1f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20"
    "754a2d883ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e664994d234cb4"
)
CAVS_DKM_CHILD_DH = h(
    "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232eab4b3ab14"
    "c400a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8b"
    "bb5ffb7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054d56fd74c"
)
CAVS_SKEYSEED_REKEY = h("63e81194946ebd05df7df5ebf5d8750056bf1f1d")


class KDFTests(SynchronousTestCase):
    """prf, prf+ and the derivations of RFC 7296 sections 2.13, 2.14, 2.17, 2.18."""

    def test_hmac_sha256_rfc4231(self) -> None:
        """prf HMAC-SHA2-256 is HMAC-SHA-256 (RFC 4231 test case 1)."""
        prf = Prf(ikev2.PRF_HMAC_SHA2_256)
        self.assertEqual(
            prf(b"\x0b" * 20, b"Hi There"),
            h("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        )
        self.assertEqual(Prf(ikev2.PRF_HMAC_SHA2_384).size, 48)
        self.assertRaises(ValueError, Prf, 2)

    def test_cavs_skeyseed_and_dkm(self) -> None:
        """SKEYSEED and prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) match the CAVS sample."""
        prf = Prf.for_hash("sha1")
        seed = ikecrypto.skeyseed(prf, CAVS_NI, CAVS_NR, CAVS_GIR)
        self.assertEqual(seed, CAVS_SKEYSEED)
        dkm = prf.plus(seed, CAVS_NI + CAVS_NR + CAVS_SPII + CAVS_SPIR, len(CAVS_DKM))
        self.assertEqual(dkm, CAVS_DKM)
        # derive_ike_keys cuts the same stream: SK_d first, then SK_ai, SK_ar, ...
        keys = ikecrypto.derive_ike_keys(
            prf, seed, CAVS_NI, CAVS_NR, CAVS_SPII, CAVS_SPIR, encr_length=16, integ_length=20
        )
        stream = keys.sk_d + keys.sk_ai + keys.sk_ar + keys.sk_ei + keys.sk_er
        stream += keys.sk_pi + keys.sk_pr
        self.assertEqual(stream, CAVS_DKM[: len(stream)])
        self.assertEqual(len(keys.sk_pi), 20)

    def test_cavs_child_keymat(self) -> None:
        """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) matches the CAVS sample."""
        prf = Prf.for_hash("sha1")
        sk_d = CAVS_DKM[:20]
        i_to_r, r_to_i = ikecrypto.child_keymat(prf, sk_d, CAVS_NI, CAVS_NR, 66)
        self.assertEqual(i_to_r + r_to_i, CAVS_DKM_CHILD)
        i_to_r, r_to_i = ikecrypto.child_keymat(
            prf, sk_d, CAVS_NI, CAVS_NR, 66, shared=CAVS_GIR_NEW
        )
        self.assertEqual(i_to_r + r_to_i, CAVS_DKM_CHILD_DH)
        self.assertEqual(prf(sk_d, CAVS_GIR_NEW + CAVS_NI + CAVS_NR), CAVS_SKEYSEED_REKEY)

    def test_prf_plus_blocks(self) -> None:
        """T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02), ... recomputed by hand."""
        prf = Prf(ikev2.PRF_HMAC_SHA2_256)
        key, seed = b"k" * 32, b"seed"
        t1 = hmac.digest(key, seed + b"\x01", "sha256")
        t2 = hmac.digest(key, t1 + seed + b"\x02", "sha256")
        t3 = hmac.digest(key, t2 + seed + b"\x03", "sha256")
        self.assertEqual(prf.plus(key, seed, 70), (t1 + t2 + t3)[:70])
        self.assertEqual(len(prf.plus(key, seed, 255 * 32)), 255 * 32)
        self.assertRaises(ValueError, prf.plus, key, seed, 255 * 32 + 1)

    def test_key_lengths(self) -> None:
        """Key material lengths: GCM key + 4-byte salt; CBC key alone; HMAC keys."""
        self.assertEqual(ikecrypto.encr_key_length(ikev2.ENCR_AES_GCM_16, 128), 20)
        self.assertEqual(ikecrypto.encr_key_length(ikev2.ENCR_AES_GCM_16, 256), 36)
        self.assertEqual(ikecrypto.encr_key_length(ikev2.ENCR_AES_CBC, 256), 32)
        self.assertEqual(ikecrypto.integ_key_length(ikev2.INTEG_HMAC_SHA2_256_128), 32)
        self.assertEqual(ikecrypto.integ_key_length(ikev2.INTEG_NONE), 0)
        self.assertRaises(ValueError, ikecrypto.encr_key_length, 3, 128)


class DHTests(SynchronousTestCase):
    """Diffie-Hellman groups 14, 19, 20 and 31."""

    SIZES = {
        ikev2.DH_MODP_2048: (256, 256),
        ikev2.DH_ECP_256: (64, 32),
        ikev2.DH_ECP_384: (96, 48),
        ikev2.DH_CURVE25519: (32, 32),
    }

    def test_agreement(self) -> None:
        """Both sides of every group compute the same secret, of the RFC's length."""
        for group, (pub_len, secret_len) in self.SIZES.items():
            a, b = ikecrypto.dh_generate(group), ikecrypto.dh_generate(group)
            self.assertEqual(len(a.public), pub_len, group)
            secret = a.shared(b.public)
            self.assertEqual(secret, b.shared(a.public), group)
            self.assertEqual(len(secret), secret_len, group)

    def test_bad_public_values(self) -> None:
        """Wrong lengths, points off the curve, 1 and p-1, and small-order X25519 are refused."""
        for group, (pub_len, _) in self.SIZES.items():
            key = ikecrypto.dh_generate(group)
            self.assertRaises(ikecrypto.BadPublicValue, key.shared, b"\x01" * (pub_len - 1))
        ecp = ikecrypto.dh_generate(ikev2.DH_ECP_256)
        self.assertRaises(ikecrypto.BadPublicValue, ecp.shared, b"\x00" * 63 + b"\x01")
        modp = ikecrypto.dh_generate(ikev2.DH_MODP_2048)
        self.assertRaises(ikecrypto.BadPublicValue, modp.shared, (1).to_bytes(256, "big"))
        self.assertRaises(
            ikecrypto.BadPublicValue,
            modp.shared,
            (ikecrypto.MODP_2048_P - 1).to_bytes(256, "big"),
        )
        x = ikecrypto.dh_generate(ikev2.DH_CURVE25519)
        self.assertRaises(ikecrypto.BadPublicValue, x.shared, bytes(32))
        self.assertIsInstance(ikecrypto.BadPublicValue("x"), WireError)
        self.assertRaises(ValueError, ikecrypto.dh_generate, 2)


class SKTests(SynchronousTestCase):
    """The Encrypted payload: AES-GCM (RFC 5282) and AES-CBC + HMAC-SHA2-256-128."""

    header = Message(b"\x11" * 8, b"\x22" * 8, ikev2.IKE_AUTH, ikev2.FLAG_INITIATOR, 1)
    inner = (Notify(ikev2.N_INITIAL_CONTACT), Nonce(b"\x33" * 20))

    def test_gcm_matches_independent_computation(self) -> None:
        """IV 8 bytes, nonce salt || IV, AAD = header + SK header, 16-byte ICV, pad length 0."""
        keymat = bytes(range(20))
        data = ikecrypto.seal_message(ikecrypto.AESGCMSK(keymat), self.header, self.inner)
        first, plain = ikev2.encode_chain(self.inner)
        iv = data[32:40]
        self.assertEqual(iv, struct.pack("!Q", 1))
        expected = AESGCM(keymat[:16]).encrypt(keymat[16:] + iv, plain + b"\x00", data[:32])
        self.assertEqual(data[40:], expected)
        self.assertEqual(data[28], first)
        self.assertEqual(len(data), 32 + 8 + len(plain) + 1 + 16)
        msg = ikev2.decode_message(data)
        opened = ikecrypto.open_message(ikecrypto.AESGCMSK(keymat), data, msg)
        self.assertEqual(opened.payloads, self.inner)

    def test_gcm_iv_counts(self) -> None:
        """Each message under one key gets the next IV."""
        sk = ikecrypto.AESGCMSK(bytes(36))
        a = ikecrypto.seal_message(sk, self.header, self.inner)
        b = ikecrypto.seal_message(sk, self.header, self.inner)
        self.assertEqual((a[32:40], b[32:40]), (struct.pack("!Q", 1), struct.pack("!Q", 2)))

    def test_cbc_matches_independent_computation(self) -> None:
        """16-byte IV, block padding with pad length, HMAC-SHA-256 over all but the ICV."""
        enc_key, integ_key = bytes(range(16)), bytes(range(32))
        sk = ikecrypto.AESCBCHMACSK(enc_key, ikev2.INTEG_HMAC_SHA2_256_128, integ_key)
        data = ikecrypto.seal_message(sk, self.header, self.inner)
        icv = hmac.digest(integ_key, data[:-16], "sha256")[:16]
        self.assertEqual(data[-16:], icv)
        iv, ct = data[32:48], data[48:-16]
        dec = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor()
        plain = dec.update(ct) + dec.finalize()
        _, inner = ikev2.encode_chain(self.inner)
        self.assertEqual(plain[: len(inner)], inner)
        self.assertEqual(plain[-1], len(plain) - len(inner) - 1)
        opened = ikecrypto.open_message(sk, data, ikev2.decode_message(data))
        self.assertEqual(opened.payloads, self.inner)

    def test_tampering(self) -> None:
        """A changed header byte (in the AAD) or body byte fails the check."""
        for sk in (
            ikecrypto.AESGCMSK(bytes(20)),
            ikecrypto.AESCBCHMACSK(bytes(32), ikev2.INTEG_HMAC_SHA2_256_128, bytes(32)),
        ):
            data = ikecrypto.seal_message(sk, self.header, self.inner)
            # The message ID, SPIr and SK's next-payload (all in the AAD), the body.
            for pos in (10, 20, 28, 45, len(data) - 1):
                bad = bytearray(data)
                bad[pos] ^= 1
                with self.assertRaises(ikecrypto.IntegrityError):
                    ikecrypto.open_message(sk, bytes(bad), ikev2.decode_message(bytes(bad)))
        self.assertRaises(
            ikecrypto.IntegrityError,
            ikecrypto.open_message,
            ikecrypto.AESGCMSK(bytes(20)),
            self.header.encode(),
            self.header,
        )


class AuthTests(SynchronousTestCase):
    """AUTH for shared keys (section 2.15) and NAT detection (section 2.23)."""

    def test_psk_auth(self) -> None:
        """AUTH = prf(prf(secret, "Key Pad for IKEv2"), message | nonce | prf(SK_p, IDbody))."""
        prf = Prf(ikev2.PRF_HMAC_SHA2_256)
        ident = Identity.fqdn("client.example")
        octets = ikecrypto.signed_octets(prf, b"MSG1", b"N" * 32, b"P" * 32, ident)
        id_body = bytes((2, 0, 0, 0)) + b"client.example"
        self.assertEqual(
            octets, b"MSG1" + b"N" * 32 + hmac.digest(b"P" * 32, id_body, "sha256")
        )
        pad = hmac.digest(b"secret", b"Key Pad for IKEv2", "sha256")
        self.assertEqual(
            ikecrypto.psk_auth(prf, b"secret", octets), hmac.digest(pad, octets, "sha256")
        )

    def test_nat_hash(self) -> None:
        """SHA-1(SPIi | SPIr | IP | port)."""
        self.assertEqual(
            ikecrypto.nat_hash(b"\x01" * 8, bytes(8), "192.0.2.1", 500),
            hashlib.sha1(b"\x01" * 8 + bytes(8) + bytes((192, 0, 2, 1, 1, 244))).digest(),  # noqa: S324
        )


# ---------------------------------------------------------------------------
# Engines joined in memory
# ---------------------------------------------------------------------------

I_HOST, R_HOST = "192.0.2.10", "198.51.100.1"
I_ID, R_ID = Identity.fqdn("client.example"), Identity.fqdn("ha.example")
HOME = IPv4Address("10.77.0.10")
PSK = b"a shared secret of some length"

Drop = Callable[[str, Datagram], bool]
Creds = tuple[x509.Certificate, ikecrypto.PrivateKey]
NOW = 1_800_000_000.0  # a clock time inside the test certificates' validity


def new_key(kind: str) -> ikecrypto.PrivateKey:
    """A private key: ``p256``, ``p384`` or ``rsa``."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if kind == "p384" else ec.SECP256R1())


def make_cert(
    subject: str,
    key: ikecrypto.PrivateKey,
    issuer: Creds | None = None,
    *,
    san: str | None = None,
    ca: bool = False,
    not_after: float = NOW + 86400,
) -> x509.Certificate:
    """A certificate for ``key``, self-signed when ``issuer`` is None."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(NOW - 86400, tz=datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(not_after, tz=datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def make_pki(kind: str = "p256") -> tuple[Creds, Creds, Creds]:
    """A CA and two end entities (the client and the home agent) of key type ``kind``."""
    ca_key = new_key(kind)
    ca: Creds = (make_cert("smob test CA", ca_key, ca=True), ca_key)
    out = [ca]
    for ident in ("client.example", "ha.example"):
        k = new_key(kind)
        out.append((make_cert(ident, k, ca, san=ident), k))
    return out[0], out[1], out[2]


class Pair:
    """An initiator and a responder engine on one clock, joined by :meth:`pump`."""

    def __init__(
        self,
        *,
        i_ike: list[str] | None = None,
        r_ike: list[str] | None = None,
        i_esp: list[str] | None = None,
        r_esp: list[str] | None = None,
        i_psk: bytes = PSK,
        r_psk: bytes = PSK,
        r_peer_id: Identity = I_ID,
        i_peer_id: Identity | None = R_ID,
        r_local_ts: tuple[TrafficSelector, ...] | None = None,
        i_remote_ts: tuple[TrafficSelector, ...] | None = None,
        auth: str = "psk",
        i_creds: Creds | None = None,
        r_creds: Creds | None = None,
        anchors: tuple[x509.Certificate, ...] = (),
        start: float = 0.0,
        **r_extra: Any,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(start)
        self.events: dict[str, list[IKEEvent]] = {"i": [], "r": []}
        self.children: dict[str, list[ChildSA]] = {"i": [], "r": []}
        self.wire: list[tuple[str, Datagram]] = []
        i_peer = PeerConfig(
            i_peer_id,
            i_psk if auth == "psk" else b"",
            remote_ts=i_remote_ts or (TrafficSelector.from_network("0.0.0.0/0"),),
            auth=auth,
        )
        r_peer = PeerConfig(
            r_peer_id,
            r_psk if auth == "psk" else b"",
            internal_address=HOME,
            local_ts=r_local_ts or (TrafficSelector.from_network("0.0.0.0/0"),),
            auth=auth,
        )
        i_cfg = IKEConfig(local_id=I_ID, peers=[i_peer], local_host=I_HOST)
        r_cfg = IKEConfig(local_id=R_ID, peers=[r_peer], local_host=R_HOST, **r_extra)
        for cfg, creds in ((i_cfg, i_creds), (r_cfg, r_creds)):
            if creds is not None:
                cfg.certificate, cfg.private_key = creds
            cfg.trust_anchors = anchors
        if i_ike:
            i_cfg.ike_suites = [IKESuite.parse(s) for s in i_ike]
        if r_ike:
            r_cfg.ike_suites = [IKESuite.parse(s) for s in r_ike]
        if i_esp:
            i_cfg.esp_suites = [ESPSuite.parse(s) for s in i_esp]
        if r_esp:
            r_cfg.esp_suites = [ESPSuite.parse(s) for s in r_esp]
        self.ini = IKEEngine(
            Role.INITIATOR, i_cfg, self.clock,
            on_child_sa=self.children["i"].append, on_event=self.events["i"].append,
        )
        self.res = IKEEngine(
            Role.RESPONDER, r_cfg, self.clock,
            on_child_sa=self.children["r"].append, on_event=self.events["r"].append,
        )

    def start(self) -> None:
        """The initiator sends IKE_SA_INIT."""
        self.ini.initiate((R_HOST, 500), local=(I_HOST, 500))

    def pump(self, drop: Drop | None = None, rounds: int = 10) -> int:
        """Move datagrams both ways until none is left; return how many moved."""
        moved = 0
        for _ in range(rounds):
            out = [("i", d) for d in self.ini.datagrams_to_send()]
            out += [("r", d) for d in self.res.datagrams_to_send()]
            if not out:
                break
            for side, d in out:
                self.wire.append((side, d))
                if drop is not None and drop(side, d):
                    continue
                moved += 1
                # The receiver sees the sender's local address as the source.
                target = self.res if side == "i" else self.ini
                target.receive(d.message, d.local, d.remote)
        return moved

    def establish(self) -> None:
        """Start and pump until quiet; both sides must be up."""
        self.start()
        self.pump()

    def tick(self, seconds: float) -> None:
        """Advance the clock and run both engines' timers."""
        self.clock.advance(seconds)
        self.ini.handle_timer()
        self.res.handle_timer()

    def of(self, side: str, kind: type) -> list[Any]:
        """Events of one class on one side."""
        return [e for e in self.events[side] if isinstance(e, kind)]


def esp_both_ways(test: SynchronousTestCase, a: ChildSA, b: ChildSA) -> None:
    """a's outbound SA is b's inbound and the other way round: packets pass."""
    test.assertEqual(a.outbound_spi, b.inbound_spi)
    test.assertEqual(a.inbound_spi, b.outbound_spi)
    test.assertEqual(a.outbound_keymat, b.inbound_keymat)
    test.assertEqual(a.inbound_keymat, b.outbound_keymat)
    inner = bytes.fromhex("4500001c00000000400100000a4d000a0a4d0001") + bytes(8)
    for x, y in ((a, b), (b, a)):
        packet = OutboundSA.from_keymat(x.outbound_spi, x.outbound_keymat).seal(inner)
        test.assertEqual(InboundSA.from_keymat(y.inbound_spi, y.inbound_keymat).open(packet), inner)


class EstablishTests(SynchronousTestCase):
    """IKE_SA_INIT and IKE_AUTH between our two engines."""

    SUITES = [
        ("aes128gcm16-prfsha256-ecp256", "aes128gcm16"),
        ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
        ("aes256gcm16-prfsha384-x25519", "aes256gcm16"),
        ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
        ("aes128gcm16-prfsha256-ecp384", "aes256gcm16"),
        ("aes128-sha256-modp2048", "aes128gcm16"),
        ("aes256-sha256-modp2048", "aes256gcm16"),
    ]

    def test_every_suite(self) -> None:
        """Every IKE suite with every ESP key size: SAs up both sides, ESP passes."""
        for ike, esp in self.SUITES:
            p = Pair(i_ike=[ike], r_ike=[ike], i_esp=[esp], r_esp=[esp])
            p.establish()
            self.assertEqual(len(p.children["i"]), 1, ike)
            self.assertEqual(len(p.children["r"]), 1, ike)
            ci, cr = p.children["i"][0], p.children["r"][0]
            self.assertEqual(str(ci.suite), esp)
            esp_both_ways(self, ci, cr)
            (ui,), (ur,) = p.of("i", IKESAUp), p.of("r", IKESAUp)
            self.assertEqual(str(ui.suite), ike)
            self.assertEqual((ui.spi_i, ui.spi_r), (ur.spi_i, ur.spi_r))
            self.assertEqual(ui.peer_id, R_ID)
            self.assertEqual(ur.peer_id, I_ID)
            (sa_i,), (sa_r,) = p.ini.established(), p.res.established()
            self.assertEqual(sa_i.keys, sa_r.keys)
            self.assertEqual(len(p.wire), 4)

    def test_default_config_offers_and_picks(self) -> None:
        """With the defaults, the responder picks its first suite: GCM-128, ECP-256."""
        p = Pair()
        p.establish()
        (up,) = p.of("i", IKESAUp)
        self.assertEqual(str(up.suite), "aes128gcm16-prfsha256-ecp256")
        self.assertEqual(str(p.children["i"][0].suite), "aes128gcm16")

    def test_nat_t_move(self) -> None:
        """IKE_SA_INIT on 500; IKE_AUTH on 4500 from 4500, behind the non-ESP marker."""
        p = Pair()
        p.establish()
        (_, init_req), (_, init_resp), (_, auth_req), (_, auth_resp) = p.wire
        self.assertEqual((init_req.remote, init_req.local), ((R_HOST, 500), (I_HOST, 500)))
        self.assertFalse(init_req.nat_t)
        self.assertEqual(init_req.payload, init_req.message)
        self.assertEqual((auth_req.remote, auth_req.local), ((R_HOST, 4500), (I_HOST, 4500)))
        self.assertTrue(auth_req.nat_t and auth_resp.nat_t)
        self.assertEqual(auth_req.payload, NON_ESP_MARKER + auth_req.message)
        msg = ikev2.decode_message(init_req.message)
        types = [n.type for n in msg.notifies()]
        self.assertIn(ikev2.N_NAT_DETECTION_SOURCE_IP, types)
        self.assertIn(ikev2.N_NAT_DETECTION_DESTINATION_IP, types)
        ci = p.children["i"][0]
        self.assertEqual(ci.peer_addr, (R_HOST, 4500))
        self.assertEqual(p.children["r"][0].peer_addr, (I_HOST, 4500))

    def test_cp_and_traffic_selectors(self) -> None:
        """The CP request gets the peer's home address; TSi narrows to it."""
        p = Pair(r_local_ts=(TrafficSelector.from_network("10.77.0.0/24"),))
        p.establish()
        ci, cr = p.children["i"][0], p.children["r"][0]
        self.assertEqual(ci.internal_address, HOME)
        self.assertEqual(cr.internal_address, HOME)
        self.assertEqual(ci.local_ts, (TrafficSelector(HOME, HOME),))
        self.assertEqual(ci.remote_ts, (TrafficSelector.from_network("10.77.0.0/24"),))
        self.assertEqual((cr.local_ts, cr.remote_ts), (ci.remote_ts, ci.local_ts))

    def test_initial_contact_replaces_old_sa(self) -> None:
        """A second IKE SA of the same identity with INITIAL_CONTACT replaces the first."""
        p = Pair()
        p.establish()
        p.ini.initiate((R_HOST, 500), local=(I_HOST, 500))
        p.pump()
        self.assertEqual(len(p.res.established()), 1)
        (down,) = p.of("r", IKESADown)
        self.assertEqual(down.reason, "replaced")
        self.assertEqual(len(p.of("r", ChildSADown)), 1)
        self.assertEqual(len(p.children["r"]), 2)


class RefusalTests(SynchronousTestCase):
    """Refusals carry the right notify, and nothing is installed."""

    def assert_nothing_installed(self, p: Pair) -> None:
        """No CHILD_SA on either side, no established IKE SA on the responder."""
        self.assertEqual(p.children, {"i": [], "r": []})

    def test_wrong_psk(self) -> None:
        """AUTHENTICATION_FAILED from the responder; the initiator fails; nothing installed."""
        p = Pair(i_psk=b"not the right secret")
        p.establish()
        self.assert_nothing_installed(p)
        (fi,), (fr,) = p.of("i", IKEFailed), p.of("r", IKEFailed)
        self.assertEqual((fi.notify, fr.notify), (24, 24))
        self.assertFalse(fi.child_only)
        self.assertEqual(p.ini.sas, {})
        self.assertEqual(p.res.established(), [])
        _, last = p.wire[-1]
        self.assertEqual(p.res.counters["refused_auth"], 1)
        # The refused SA lingers only to answer a retransmission, then goes.
        p.tick(60)
        self.assertEqual(p.res.sas, {})
        self.assertTrue(last.nat_t)

    def test_unknown_identity(self) -> None:
        """An IDi the responder does not know: AUTHENTICATION_FAILED."""
        p = Pair(r_peer_id=Identity.fqdn("someone.else"))
        p.establish()
        self.assert_nothing_installed(p)
        self.assertEqual([e.notify for e in p.of("i", IKEFailed)], [24])

    def test_responder_identity_checked(self) -> None:
        """The initiator refuses a responder whose IDr is not the one configured."""
        p = Pair(i_peer_id=Identity.fqdn("other-ha.example"))
        p.establish()
        (fi,) = p.of("i", IKEFailed)
        self.assertEqual(fi.notify, 24)
        self.assertEqual(p.children["i"], [])
        self.assertEqual(p.ini.sas, {})
        # It told the responder, which drops its side as well.
        self.assertEqual(p.res.established(), [])
        self.assertEqual(p.of("r", IKESADown)[0].reason, "peer-refused-auth")

    def test_no_ike_proposal(self) -> None:
        """Disjoint IKE suites: NO_PROPOSAL_CHOSEN, and the responder keeps no state."""
        p = Pair(i_ike=["aes256gcm16-prfsha384-ecp384"], r_ike=["aes128gcm16-prfsha256-ecp256"])
        p.establish()
        self.assertEqual([e.notify for e in p.of("i", IKEFailed)], [14])
        self.assertEqual(p.res.sas, {})
        self.assertEqual(p.res.counters["refused_no_proposal"], 1)
        self.assert_nothing_installed(p)

    def test_no_esp_proposal(self) -> None:
        """Disjoint ESP suites: the IKE SA is up, the CHILD_SA refused, nothing installed."""
        p = Pair(i_esp=["aes128gcm16"], r_esp=["aes256gcm16"])
        p.establish()
        self.assert_nothing_installed(p)
        self.assertEqual(len(p.ini.established()), 1)
        (fi,) = p.of("i", IKEFailed)
        self.assertEqual((fi.notify, fi.child_only), (14, True))
        (fr,) = p.of("r", IKEFailed)
        self.assertEqual((fr.notify, fr.child_only), (14, True))

    def test_ts_unacceptable(self) -> None:
        """No overlap between what the initiator wants and what the responder allows."""
        p = Pair(
            r_local_ts=(TrafficSelector.from_network("10.1.0.0/16"),),
            i_remote_ts=(TrafficSelector.from_network("10.2.0.0/16"),),
        )
        p.establish()
        self.assert_nothing_installed(p)
        self.assertEqual([e.notify for e in p.of("i", IKEFailed)], [38])

    def raw_init(self, p: Pair, payloads: tuple[ikev2.Payload, ...]) -> Message:
        """Send a hand-made IKE_SA_INIT request to the responder; return its answer."""
        msg = Message(b"\x42" * 8, bytes(8), ikev2.IKE_SA_INIT, ikev2.FLAG_INITIATOR, 0, payloads)
        p.res.receive(msg.encode(), (I_HOST, 500), (R_HOST, 500))
        (d,) = p.res.datagrams_to_send()
        return ikev2.decode_message(d.message)

    def test_invalid_syntax(self) -> None:
        """IKE_SA_INIT without KE: INVALID_SYNTAX, no state."""
        p = Pair()
        sa = SA((ikev2.Proposal(1, 1, b"", IKESuite.parse("aes128gcm16-prfsha256-ecp256")
                                .transforms()),))
        answer = self.raw_init(p, (sa, Nonce(b"n" * 32)))
        self.assertEqual([n.type for n in answer.notifies()], [ikev2.N_INVALID_SYNTAX])
        self.assertTrue(answer.is_response)
        self.assertEqual(p.res.sas, {})

    def test_bad_public_value(self) -> None:
        """A KE that is not a point on the curve: INVALID_SYNTAX, no state."""
        p = Pair()
        suite = IKESuite.parse("aes128gcm16-prfsha256-ecp256")
        sa = SA((ikev2.Proposal(1, 1, b"", suite.transforms()),))
        answer = self.raw_init(p, (sa, KE(19, b"\x01" * 64), Nonce(b"n" * 32)))
        self.assertEqual([n.type for n in answer.notifies()], [ikev2.N_INVALID_SYNTAX])
        self.assertEqual(p.res.sas, {})

    def test_unsupported_critical_payload(self) -> None:
        """An unknown payload marked critical: UNSUPPORTED_CRITICAL_PAYLOAD naming its type."""
        p = Pair()
        answer = self.raw_init(p, (UnknownPayload(200, b"x", critical=True),))
        (n,) = answer.notifies()
        self.assertEqual((n.type, n.data), (ikev2.N_UNSUPPORTED_CRITICAL_PAYLOAD, b"\xc8"))

    def test_tampered_ike_auth_is_dropped(self) -> None:
        """A changed byte in IKE_AUTH fails the ICV: dropped, no state change, then it works."""
        p = Pair()
        p.start()
        p.pump(drop=lambda side, d: d.nat_t)  # stop before IKE_AUTH is delivered
        (_, auth), = [(s, d) for s, d in p.wire if d.nat_t]
        bad = bytearray(auth.message)
        bad[-5] ^= 0x40
        p.res.receive(bytes(bad), auth.local, auth.remote)
        self.assertEqual(p.res.datagrams_to_send(), [])
        self.assertEqual(p.res.counters["integrity_failures"], 1)
        (sa,) = p.res.sas.values()
        self.assertIs(sa.state, State.HALF_OPEN)
        p.res.receive(auth.message, auth.local, auth.remote)
        p.pump()
        self.assertEqual(len(p.children["i"]), 1)


class RetryTests(SynchronousTestCase):
    """INVALID_KE retry, cookies, retransmission, repeated requests, message IDs."""

    def test_invalid_ke_retry(self) -> None:
        """The initiator's first KE is X25519, the responder wants ECP-256: one retry."""
        p = Pair(
            i_ike=["aes128gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-ecp256"],
            r_ike=["aes128gcm16-prfsha256-ecp256"],
        )
        p.establish()
        self.assertEqual(len(p.children["i"]), 1)
        self.assertEqual(p.ini.counters["ke_retries"], 1)
        self.assertEqual(p.res.counters["refused_invalid_ke"], 1)
        _, refusal = p.wire[1]
        (n,) = ikev2.decode_message(refusal.message).notifies()
        self.assertEqual((n.type, n.data), (ikev2.N_INVALID_KE_PAYLOAD, b"\x00\x13"))
        (up,) = p.of("i", IKESAUp)
        self.assertEqual(up.suite.dh, ikev2.DH_ECP_256)

    def test_invalid_ke_unknown_group(self) -> None:
        """INVALID_KE naming a group we did not offer ends the attempt."""
        p = Pair(i_ike=["aes128gcm16-prfsha256-x25519"])
        p.start()
        (d,) = p.ini.datagrams_to_send()
        spi_i = d.message[:8]
        answer = Message(
            spi_i, bytes(8), ikev2.IKE_SA_INIT, ikev2.FLAG_RESPONSE, 0,
            (Notify(ikev2.N_INVALID_KE_PAYLOAD, b"\x00\x0e"),),
        )
        p.ini.receive(answer.encode(), (R_HOST, 500), (I_HOST, 500))
        self.assertEqual([e.notify for e in p.of("i", IKEFailed)], [17])

    def test_cookie_always(self) -> None:
        """cookie_threshold 0: every initiator must come back with the COOKIE first."""
        p = Pair(cookie_threshold=0)
        p.establish()
        self.assertEqual(len(p.children["i"]), 1)
        self.assertEqual(p.res.counters["cookies_sent"], 1)
        self.assertEqual(p.ini.counters["cookie_retries"], 1)
        retry = ikev2.decode_message(p.wire[2][1].message)
        first = retry.payloads[0]
        assert isinstance(first, Notify)
        self.assertEqual(first.type, ikev2.N_COOKIE)
        self.assertEqual(len(p.res.sas), 1)

    def test_cookie_under_load(self) -> None:
        """Past the threshold of half-open SAs, new initiators get a COOKIE, not state."""
        p = Pair(cookie_threshold=2)
        others = []
        for _ in range(2):
            q = Pair()
            q.start()
            (d,) = q.ini.datagrams_to_send()
            p.res.receive(d.message, d.local, d.remote)
            others.append(q)
        p.res.datagrams_to_send()
        self.assertEqual(p.res.half_open_count(), 2)
        p.start()
        (d,) = p.ini.datagrams_to_send()
        p.res.receive(d.message, d.local, d.remote)
        (answer,) = p.res.datagrams_to_send()
        (n,) = ikev2.decode_message(answer.message).notifies()
        self.assertEqual(n.type, ikev2.N_COOKIE)
        self.assertEqual(p.res.half_open_count(), 2)
        # A forged cookie earns another challenge, still no state.
        forged = ikev2.decode_message(d.message)
        forged = Message(
            forged.spi_i, forged.spi_r, forged.exchange, forged.flags, 0,
            (Notify(ikev2.N_COOKIE, n.data[:1] + bytes(32)), *forged.payloads),
        )
        p.res.receive(forged.encode(), d.local, d.remote)
        (again,) = p.res.datagrams_to_send()
        self.assertEqual(ikev2.decode_message(again.message).notifies()[0].type, ikev2.N_COOKIE)
        self.assertEqual(p.res.half_open_count(), 2)
        # The real initiator answers the challenge and gets through.
        p.ini.receive(answer.message, answer.local, answer.remote)
        p.pump()
        self.assertEqual(len(p.children["r"]), 1)
        # Half-open SAs expire.
        p.tick(31)
        self.assertEqual(p.res.half_open_count(), 0)

    def test_retransmit_init(self) -> None:
        """The first IKE_SA_INIT response is lost: retransmission after 1 s; the stored reply."""
        p = Pair()
        p.start()
        lost: list[Datagram] = []

        def drop(side: str, d: Datagram) -> bool:
            if side == "r" and not lost:
                lost.append(d)
                return True
            return False

        p.pump(drop)
        self.assertEqual(p.children["i"], [])
        self.assertEqual(p.ini.get_timer(), 1.0)
        p.tick(1.0)
        p.pump()
        self.assertEqual(len(p.children["i"]), 1)
        self.assertEqual(p.res.counters["repeated_requests"], 1)
        self.assertEqual(p.ini.counters["retransmits"], 1)
        # The retransmitted request and the re-sent reply are byte-identical.
        self.assertEqual(p.wire[0][1].message, p.wire[2][1].message)
        self.assertEqual(lost[0].message, p.wire[3][1].message)

    def test_repeated_ike_auth_answered_from_store(self) -> None:
        """The IKE_AUTH response is lost; the repeated request gets the same bytes, once."""
        p = Pair()
        p.start()
        p.pump(lambda side, d: side == "r" and d.nat_t)
        self.assertEqual(len(p.children["r"]), 1)
        self.assertEqual(p.children["i"], [])
        p.tick(1.0)
        p.pump()
        self.assertEqual(len(p.children["i"]), 1)
        self.assertEqual(len(p.children["r"]), 1)
        auth_responses = [d.message for s, d in p.wire if s == "r" and d.nat_t]
        self.assertEqual(len(auth_responses), 2)
        self.assertEqual(auth_responses[0], auth_responses[1])

    def test_backoff_and_give_up(self) -> None:
        """No responder: sends at 0, 1, 3, 7, 15 s (doubling), failure at 31 s."""
        p = Pair()
        p.start()
        sent = [0.0]
        p.ini.datagrams_to_send()
        while p.ini.sas:
            when = p.ini.get_timer()
            assert when is not None
            p.clock.advance(when - p.clock.seconds())
            p.ini.handle_timer()
            if p.ini.datagrams_to_send():
                sent.append(p.clock.seconds())
        self.assertEqual(sent, [0.0, 1.0, 3.0, 7.0, 15.0])
        self.assertEqual(p.clock.seconds(), 31.0)
        (f,) = p.of("i", IKEFailed)
        self.assertIn("no answer", f.reason)
        self.assertIsNone(p.ini.get_timer())

    def test_message_id_window(self) -> None:
        """Requests ahead of the window are dropped; the last one is answered from the store."""
        p = Pair()
        p.establish()
        (sa,) = p.ini.established()
        assert sa.sk_out is not None
        header = Message(sa.spi_i, sa.spi_r, ikev2.INFORMATIONAL, ikev2.FLAG_INITIATOR, 5)
        ahead = ikecrypto.seal_message(sa.sk_out, header, ())
        p.res.receive(ahead, (I_HOST, 4500), (R_HOST, 4500))
        self.assertEqual(p.res.datagrams_to_send(), [])
        self.assertEqual(p.res.counters["bad_message_id"], 1)
        # The IKE_AUTH request (ID 1) again: the stored response.
        auth_req = [d for s, d in p.wire if s == "i" and d.nat_t][0]
        p.res.receive(auth_req.message, auth_req.local, auth_req.remote)
        (again,) = p.res.datagrams_to_send()
        self.assertEqual(again.message, [d for s, d in p.wire if s == "r" and d.nat_t][0].message)


class InformationalTests(SynchronousTestCase):
    """Delete, liveness, dead peers, refusal of additional CHILD_SAs."""

    def test_delete_from_initiator(self) -> None:
        """Our Delete: children down at once; both IKE SAs gone after the exchange."""
        p = Pair()
        p.establish()
        (sa,) = p.ini.established()
        p.ini.delete_ike_sa(sa)
        self.assertEqual(len(p.of("i", ChildSADown)), 1)
        p.pump()
        self.assertEqual((p.ini.sas, p.res.sas), ({}, {}))
        self.assertEqual([e.reason for e in p.of("i", IKESADown)], ["deleted"])
        self.assertEqual([e.reason for e in p.of("r", IKESADown)], ["peer-deleted"])
        self.assertEqual(len(p.of("r", ChildSADown)), 1)

    def test_delete_from_responder(self) -> None:
        """The responder deletes (its request carries I=0; the answer I=1)."""
        p = Pair()
        p.establish()
        (sa,) = p.res.established()
        p.res.delete_ike_sa(sa)
        p.pump()
        self.assertEqual((p.ini.sas, p.res.sas), ({}, {}))
        self.assertEqual([e.reason for e in p.of("r", IKESADown)], ["deleted"])
        self.assertEqual([e.reason for e in p.of("i", IKESADown)], ["peer-deleted"])

    def test_delete_child(self) -> None:
        """Deleting the CHILD_SA: both sides drop it; the IKE SA stays."""
        p = Pair()
        p.establish()
        (sa,) = p.ini.established()
        p.ini.delete_child_sa(sa, sa.children[0])
        p.pump()
        self.assertEqual(len(p.of("i", ChildSADown)), 1)
        (down,) = p.of("r", ChildSADown)
        self.assertEqual(down.reason, "peer-deleted")
        self.assertEqual(p.res.established()[0].children, [])
        self.assertEqual(len(p.ini.established()), 1)
        reply = [d for s, d in p.wire if s == "r"][-1]
        (delete,) = ikecrypto.open_message(
            p.ini.established()[0].sk_in,  # type: ignore[arg-type]
            reply.message,
            ikev2.decode_message(reply.message),
        ).payloads
        self.assertEqual(delete, ikev2.Delete(ikev2.PROTO_ESP, (
            struct.pack("!I", p.children["r"][0].inbound_spi),)))

    def test_liveness(self) -> None:
        """An empty INFORMATIONAL is answered; both SAs stay; queued requests follow."""
        p = Pair()
        p.establish()
        (sa,) = p.ini.established()
        p.ini.check_liveness(sa)
        p.ini.check_liveness(sa)  # queued behind the first
        p.pump()
        self.assertEqual(len([d for s, d in p.wire if s == "r"]), 4)
        self.assertEqual(p.of("i", IKESADown), [])
        self.assertEqual(sa.next_request_id, 4)

    def test_dead_peer(self) -> None:
        """With DPD on, a peer that stops answering is declared dead after the retries."""
        p = Pair()
        p.ini.config.dpd_interval = 10.0
        p.establish()
        self.assertEqual(p.ini.get_timer(), 10.0)
        p.tick(10.0)
        sent = p.ini.datagrams_to_send()
        self.assertEqual(len(sent), 1)
        for _ in range(6):
            p.tick(16.0)
            p.ini.datagrams_to_send()
        self.assertEqual([e.reason for e in p.of("i", IKESADown)], ["timeout"])
        self.assertEqual([e.reason for e in p.of("i", ChildSADown)], ["timeout"])
        self.assertEqual(p.ini.sas, {})

    def test_dpd_answered(self) -> None:
        """With DPD on and the peer alive, nothing goes down."""
        p = Pair()
        p.ini.config.dpd_interval = 10.0
        p.establish()
        for _ in range(5):
            p.tick(10.0)
            p.pump()
        self.assertEqual(p.of("i", IKESADown), [])
        self.assertEqual(p.ini.established()[0].next_request_id, 7)

    def test_create_child_sa_refused(self) -> None:
        """CREATE_CHILD_SA for an additional CHILD_SA (no REKEY_SA) gets NO_ADDITIONAL_SAS.

        Rekeying is in L{tests.test_ike_rekey}.
        """
        p = Pair()
        p.establish()
        (sa,) = p.ini.established()
        assert sa.sk_out is not None and sa.sk_in is not None
        header = Message(sa.spi_i, sa.spi_r, ikev2.CREATE_CHILD_SA, ikev2.FLAG_INITIATOR, 2)
        p.res.receive(
            ikecrypto.seal_message(sa.sk_out, header, (Nonce(b"n" * 32),)),
            (I_HOST, 4500), (R_HOST, 4500),
        )
        (reply,) = p.res.datagrams_to_send()
        data = reply.message
        opened = ikecrypto.open_message(sa.sk_in, data, ikev2.decode_message(data))
        self.assertEqual(opened.payloads, (Notify(ikev2.N_NO_ADDITIONAL_SAS),))


class CertificateTests(SynchronousTestCase):
    """Authentication by certificates: method 14 (RFC 7427) with ECDSA and RSA."""

    def establish(self, kinds: tuple[str, str] = ("p256", "p256"), **kw: Any) -> Pair:
        """A pair authenticating with certificates from one CA (or as ``kw`` overrides)."""
        ca, client, ha = make_pki(kinds[0])
        if kinds[1] != kinds[0]:
            k = new_key(kinds[1])
            ha = (make_cert("ha.example", k, ca, san="ha.example"), k)
        args: dict[str, Any] = {
            "auth": "pubkey", "i_creds": client, "r_creds": ha, "anchors": (ca[0],), "start": NOW,
        }
        args.update(kw)
        p = Pair(**args)
        p.establish()
        return p

    def test_ecdsa_rsa_and_mixed(self) -> None:
        """P-256, P-384, RSA, and RSA against ECDSA: SAs up, CHILD_SA keys mirrored."""
        for kinds in (("p256", "p256"), ("p384", "p384"), ("rsa", "rsa"), ("rsa", "p256")):
            p = self.establish(kinds)
            self.assertEqual(len(p.children["i"]), 1, kinds)
            esp_both_ways(self, p.children["i"][0], p.children["r"][0])
            # IKE_AUTH carries our certificate and a method-14 AUTH.
            auth_req = [d for side, d in p.wire if side == "i" and d.nat_t][0]
            sa = p.res.established()[0]
            assert sa.sk_in is not None
            opened = ikecrypto.open_message(
                sa.sk_in, auth_req.message, ikev2.decode_message(auth_req.message)
            )
            cert = opened.find(ikev2.Cert)
            auth = opened.find(ikev2.Auth)
            assert cert is not None and auth is not None
            self.assertEqual(auth.method, ikev2.AUTH_DIGITAL_SIGNATURE)
            self.assertEqual(x509.load_der_x509_certificate(cert.data).subject.rfc4514_string(),
                             "CN=client.example")
        first = ikev2.decode_message(p.wire[0][1].message)
        hashes_n = ikev2.notify_of(first.payloads, ikev2.N_SIGNATURE_HASH_ALGORITHMS)
        assert hashes_n is not None
        self.assertEqual(ikecrypto.signature_hashes(hashes_n.data), (2, 3, 4))
        resp = ikev2.decode_message(p.wire[1][1].message)
        certreq = resp.find(ikev2.CertReq)
        assert certreq is not None
        self.assertEqual(len(certreq.data), 20)

    def test_wrong_ca(self) -> None:
        """A client certificate from another CA: AUTHENTICATION_FAILED, nothing installed."""
        _, other_client, _ = make_pki()
        p = self.establish(i_creds=other_client)
        self.assertEqual(p.children, {"i": [], "r": []})
        self.assertEqual([e.notify for e in p.of("i", IKEFailed)], [24])
        (fr,) = p.of("r", IKEFailed)
        self.assertIn("no trusted issuer", fr.reason)

    def test_certificate_for_another_name(self) -> None:
        """A valid certificate whose subjectAltName is not the IDi: refused."""
        ca, _, ha = make_pki()
        k = new_key("p256")
        wrong = (make_cert("mallory.example", k, ca, san="mallory.example"), k)
        p = self.establish(i_creds=wrong, r_creds=ha, anchors=(ca[0],))
        self.assertEqual(p.children, {"i": [], "r": []})
        self.assertIn("does not name client.example", p.of("r", IKEFailed)[0].reason)

    def test_expired(self) -> None:
        """An expired certificate is refused."""
        ca, _, ha = make_pki()
        k = new_key("p256")
        old = (make_cert("client.example", k, ca, san="client.example", not_after=NOW - 1), k)
        p = self.establish(i_creds=old, r_creds=ha, anchors=(ca[0],))
        self.assertIn("not valid now", p.of("r", IKEFailed)[0].reason)
        self.assertEqual(p.children, {"i": [], "r": []})

    def test_responder_certificate_checked(self) -> None:
        """The initiator refuses a responder certificate from another CA."""
        ca, client, _ = make_pki()
        _, _, other_ha = make_pki()
        p = Pair(auth="pubkey", i_creds=client, r_creds=other_ha, anchors=(ca[0],), start=NOW)
        p.res.config.trust_anchors = (ca[0],)
        p.establish()
        (fi,) = p.of("i", IKEFailed)
        self.assertEqual(fi.notify, 24)
        self.assertIn("no trusted issuer", fi.reason)
        self.assertEqual(p.children["i"], [])

    def test_any_certified_identity(self) -> None:
        """A responder peer without identity takes whoever the CA certified."""
        p = self.establish(r_peer_id=None)
        self.assertEqual(len(p.children["r"]), 1)
        self.assertEqual(p.of("r", IKESAUp)[0].peer_id, I_ID)

    def test_signature_auth(self) -> None:
        """Method-14 data: length, RFC 7427 AlgorithmIdentifier, signature; tampering fails."""
        for kind, alg_id in (
            ("p256", "300a06082a8648ce3d040302"),
            ("p384", "300a06082a8648ce3d040303"),
            ("rsa", "300d06092a864886f70d01010b0500"),
        ):
            key = new_key(kind)
            data = ikecrypto.signature_auth(key, b"octets")
            self.assertEqual(data[0], len(bytes.fromhex(alg_id)))
            self.assertEqual(data[1 : 1 + data[0]].hex(), alg_id)
            ikecrypto.verify_signature_auth(key.public_key(), data, b"octets")
            self.assertRaises(
                ikecrypto.AuthError, ikecrypto.verify_signature_auth, key.public_key(), data,
                b"other octets",
            )
        rsa_key = new_key("rsa")
        self.assertRaises(
            ikecrypto.AuthError,
            ikecrypto.verify_signature_auth,
            rsa_key.public_key(),
            ikecrypto.signature_auth(new_key("p256"), b"x"),
            b"x",
        )
        self.assertRaises(
            ikecrypto.AuthError, ikecrypto.signature_auth, new_key("p256"), b"x", (1,)
        )


class EngineFuzzTests(SynchronousTestCase):
    """Mangled datagrams anywhere in an exchange: receive() never raises."""

    @settings(max_examples=60, deadline=None, database=None)
    @given(st.data())
    def test_mutated_exchange(self, data: st.DataObject) -> None:
        """Mutate, truncate or replace datagrams in flight; both engines stay calm.

        Whatever happens, nothing is installed unless both sides agree on it.
        """
        auth = data.draw(st.sampled_from(["psk", "pubkey"]))
        kw: dict[str, Any] = {}
        if auth == "pubkey":
            ca, client, ha = PKI
            kw = {"auth": "pubkey", "i_creds": client, "r_creds": ha, "anchors": (ca[0],),
                  "start": NOW}
        p = Pair(**kw)
        p.start()

        def mangle(side: str, d: Datagram) -> bool:
            action = data.draw(st.sampled_from(["pass", "pass", "flip", "cut", "junk", "drop"]))
            if action == "pass":
                return False
            if action == "drop":
                return True
            # Positions are drawn from fixed ranges: message lengths vary from
            # run to run (nonces, DER signatures), the draws must not.
            msg = bytearray(d.message)
            if action == "flip":
                for _ in range(data.draw(st.integers(1, 3))):
                    i = data.draw(st.integers(0, 4095)) % len(msg)
                    msg[i] ^= data.draw(st.integers(1, 255))
            elif action == "cut":
                msg = msg[: data.draw(st.integers(0, 4095)) % len(msg)]
            else:
                msg = bytearray(data.draw(st.binary(max_size=200)))
            target = p.res if side == "i" else p.ini
            target.receive(bytes(msg), d.local, d.remote)
            return True

        for _ in range(4):
            p.pump(mangle)
            p.tick(data.draw(st.sampled_from([0.5, 1.0, 4.0, 40.0])))
        p.pump()
        if p.children["i"] and p.children["r"]:
            esp_both_ways(self, p.children["i"][0], p.children["r"][-1])


PKI = make_pki()


class ConfigTests(SynchronousTestCase):
    """Suite notation and traffic-selector arithmetic."""

    def test_suite_parse(self) -> None:
        """strongSwan's notation; errors for what we do not do."""
        s = IKESuite.parse("aes128-sha256-modp2048")
        self.assertEqual(
            (s.encr, s.key_bits, s.prf, s.integ, s.dh),
            (ikev2.ENCR_AES_CBC, 128, ikev2.PRF_HMAC_SHA2_256, ikev2.INTEG_HMAC_SHA2_256_128, 14),
        )
        self.assertEqual(str(s), "aes128-sha256-modp2048")
        g = IKESuite.parse("aes256gcm16-prfsha384-x25519")
        self.assertEqual((g.integ, g.dh, str(g)), (0, 31, "aes256gcm16-prfsha384-x25519"))
        for bad in (
            "aes128gcm16-sha256-prfsha256-ecp256",
            "aes128-modp2048",
            "aes128gcm16-prfsha256",
            "3des-sha1-modp1024",
            "aes128gcm16-aes256gcm16-prfsha256-ecp256",
        ):
            self.assertRaises(ValueError, IKESuite.parse, bad)
        self.assertEqual(ESPSuite.parse("aes256gcm16-noesn").keymat_length, 36)
        self.assertRaises(ValueError, ESPSuite.parse, "aes128-sha256")

    def test_traffic_selectors(self) -> None:
        """Intersection by protocol, ports and addresses; narrowing and coverage."""
        any4 = TrafficSelector.from_network("0.0.0.0/0")
        net = TrafficSelector.from_network("10.0.0.0/8", 6)
        dns = TrafficSelector(IPv4Address("10.1.1.1"), IPv4Address("10.1.1.1"), 17, 53, 53)
        self.assertEqual(ts_intersect(any4, net), net)
        self.assertIsNone(ts_intersect(net, dns))
        self.assertEqual(ts_intersect(any4, dns), dns)
        self.assertIsNone(
            ts_intersect(net, TrafficSelector.from_network("192.168.0.0/16", 6))
        )
        self.assertEqual(ts_narrow([any4], [net, dns]), (net, dns))
        self.assertTrue(ts_covered([dns], [any4]))
        self.assertFalse(ts_covered([any4], [net]))
