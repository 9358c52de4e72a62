# -*- test-case-name: tests.test_ike -*-
"""The cryptography of IKEv2: prf, prf+, keys, Diffie-Hellman, SK payloads, AUTH.

Everything here is a pure function of its inputs (randomness comes from
``os.urandom`` or is passed in), built on ``cryptography`` and ``hmac``:

- :class:`Prf`: HMAC-SHA2-256/384/512 as the IKE prf, and prf+ (RFC 7296
  section 2.13);
- :func:`skeyseed`, :func:`derive_ike_keys` (section 2.14),
  :func:`child_keymat` (sections 2.17, 1.3.1) and :func:`rekey_skeyseed`
  (section 2.18);
- :class:`DHGroup`: groups 14 (MODP 2048, RFC 3526), 19 and 20 (ECP 256/384,
  RFC 5903: public value x || y, shared secret x) and 31 (Curve25519,
  RFC 8031);
- the Encrypted payload (section 3.14): :class:`AESGCMSK` (RFC 5282:
  8-byte explicit IV, 16-byte ICV, salt from the key material, associated
  data = everything from the IKE header to the SK generic header) and
  :class:`AESCBCHMACSK` (AES-CBC with HMAC-SHA2-256-128 and friends over the
  whole message, RFC 4868); :func:`seal_message` and :func:`open_message`
  put them around :mod:`smobility.wire.ikev2`;
- AUTH for shared keys (section 2.15, method 2) and the signed octets;
- AUTH by digital signature (RFC 7427, method 14: ECDSA with SHA-2, RSA
  PKCS#1 v1.5 with SHA-2), CERTREQ's CA key hash, and the check of a peer's
  certificate against our trust anchors and its identity;
- NAT detection hashes (section 2.23).

Failures on received data raise :class:`~smobility.wire.errors.WireError`
subclasses (:class:`IntegrityError`, :class:`BadPublicValue`); none of them
carries key material in its message.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dh, ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smobility.wire import ikev2
from smobility.wire.errors import WireError
from smobility.wire.ikev2 import Encrypted, Message, Payload

KEY_PAD: Final = b"Key Pad for IKEv2"
"""The constant of the shared-key AUTH computation (RFC 7296 section 2.15)."""


class IntegrityError(WireError):
    """An Encrypted payload failed its integrity check (or was malformed inside)."""


class BadPublicValue(WireError):
    """A KE payload's public value is not valid for its group."""


# ---------------------------------------------------------------------------
# prf and prf+ (section 2.13)
# ---------------------------------------------------------------------------

_PRF_HASHES: Final = {
    ikev2.PRF_HMAC_SHA2_256: "sha256",
    ikev2.PRF_HMAC_SHA2_384: "sha384",
    ikev2.PRF_HMAC_SHA2_512: "sha512",
}


class Prf:
    """An IKE pseudorandom function: HMAC with one of the SHA-2 hashes."""

    __slots__ = ("transform_id", "hash_name", "size")

    def __init__(self, transform_id: int) -> None:
        name = _PRF_HASHES.get(transform_id)
        if name is None:
            raise ValueError(f"prf transform {transform_id} is not supported")
        self.transform_id = transform_id
        self.hash_name = name
        self.size = hashlib.new(name).digest_size

    @classmethod
    def for_hash(cls, hash_name: str) -> Prf:
        """An HMAC prf over any hashlib hash (for published test vectors, e.g. SHA-1)."""
        prf = cls.__new__(cls)
        prf.transform_id = 0
        prf.hash_name = hash_name
        prf.size = hashlib.new(hash_name).digest_size
        return prf

    def __call__(self, key: bytes, data: bytes) -> bytes:
        """prf(key, data)."""
        return hmac.digest(key, data, self.hash_name)

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+(key, seed) truncated to ``length`` bytes (section 2.13).

        T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); at most 255 blocks.
        """
        blocks = -(-length // self.size)
        if blocks > 255:
            raise ValueError("prf+ yields at most 255 blocks")
        out = bytearray()
        t = b""
        for n in range(1, blocks + 1):
            t = hmac.digest(key, t + seed + bytes((n,)), self.hash_name)
            out += t
        return bytes(out[:length])


# ---------------------------------------------------------------------------
# Integrity (for the non-AEAD SK payload)
# ---------------------------------------------------------------------------

_INTEG: Final = {
    # transform id: (hash name, key length, truncated ICV length)
    ikev2.INTEG_HMAC_SHA2_256_128: ("sha256", 32, 16),
    ikev2.INTEG_HMAC_SHA2_384_192: ("sha384", 48, 24),
    ikev2.INTEG_HMAC_SHA2_512_256: ("sha512", 64, 32),
}


def integ_key_length(transform_id: int) -> int:
    """Key length in bytes of an integrity transform (0 for NONE)."""
    if transform_id == ikev2.INTEG_NONE:
        return 0
    entry = _INTEG.get(transform_id)
    if entry is None:
        raise ValueError(f"integrity transform {transform_id} is not supported")
    return entry[1]


def supported_integ(transform_id: int) -> bool:
    """True for the integrity transforms this module implements."""
    return transform_id in _INTEG


def supported_prf(transform_id: int) -> bool:
    """True for the prf transforms this module implements."""
    return transform_id in _PRF_HASHES


def encr_key_length(encr: int, key_bits: int) -> int:
    """Bytes of key material an encryption transform takes (the GCM salt included)."""
    if key_bits not in (128, 192, 256):
        raise ValueError(f"AES key length {key_bits} is not 128, 192 or 256")
    if encr == ikev2.ENCR_AES_GCM_16:
        return key_bits // 8 + 4
    if encr == ikev2.ENCR_AES_CBC:
        return key_bits // 8
    raise ValueError(f"encryption transform {encr} is not supported")


def is_aead(encr: int) -> bool:
    """True for combined-mode (AEAD) encryption transforms."""
    return encr == ikev2.ENCR_AES_GCM_16


# ---------------------------------------------------------------------------
# Key derivation (sections 2.14 and 2.17)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class IKEKeys:
    """The seven keys of an IKE SA (section 2.14)."""

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __repr__(self) -> str:
        return "<IKEKeys (secret)>"


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (section 2.14)."""
    return prf(ni + nr, shared)


def rekey_skeyseed(old_prf: Prf, sk_d: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED of a rekeyed IKE SA: prf(SK_d (old), g^ir (new) | Ni | Nr) (section 2.18).

    ``old_prf`` and ``sk_d`` are the old IKE SA's (the exchange belongs to
    it); ``ni`` and ``nr`` are the CREATE_CHILD_SA nonces.  The new SA's keys
    then come from :func:`derive_ike_keys` with the *new* prf.
    """
    return old_prf(sk_d, shared + ni + nr)


def derive_ike_keys(
    prf: Prf,
    seed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_length: int,
    integ_length: int,
) -> IKEKeys:
    """The IKE SA keys: {SK_d | SK_ai | ... | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).

    ``encr_length`` and ``integ_length`` are in bytes (see
    :func:`encr_key_length`, :func:`integ_key_length`); SK_d, SK_pi and SK_pr
    are as long as the prf's output.
    """
    p = prf.size
    lengths = (p, integ_length, integ_length, encr_length, encr_length, p, p)
    stream = prf.plus(seed, ni + nr + spi_i + spi_r, sum(lengths))
    parts: list[bytes] = []
    pos = 0
    for n in lengths:
        parts.append(stream[pos : pos + n])
        pos += n
    return IKEKeys(*parts)


def child_keymat(
    prf: Prf,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    encr_length: int,
    integ_length: int = 0,
    shared: bytes = b"",
) -> tuple[bytes, bytes]:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (sections 2.17, 1.3.1).

    Returns ``(initiator-to-responder, responder-to-initiator)``, each the
    encryption key (with the GCM salt) followed by the integrity key.
    """
    each = encr_length + integ_length
    stream = prf.plus(sk_d, shared + ni + nr, 2 * each)
    return stream[:each], stream[each:]


# ---------------------------------------------------------------------------
# Diffie-Hellman groups
# ---------------------------------------------------------------------------

# RFC 3526 section 3: the 2048-bit MODP group, generator 2.
MODP_2048_P: Final = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22"
    "514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6"
    "F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D"
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E8603"
    "9B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)

_MODP_PARAMS: dh.DHParameters | None = None


def _modp_params() -> dh.DHParameters:
    global _MODP_PARAMS
    if _MODP_PARAMS is None:
        _MODP_PARAMS = dh.DHParameterNumbers(MODP_2048_P, 2).parameters()
    return _MODP_PARAMS


class DHPrivate(Protocol):
    """One side's ephemeral key of a Diffie-Hellman exchange."""

    group: int

    @property
    def public(self) -> bytes:
        """The public value as the KE payload carries it."""

    def shared(self, peer: bytes) -> bytes:
        """g^ir from the peer's public value.

        @raise BadPublicValue: the peer's value is invalid for the group.
        """


class _ECP:
    __slots__ = ("group", "_key", "_curve", "_size")

    def __init__(self, group: int) -> None:
        self.group = group
        self._curve: ec.EllipticCurve = ec.SECP256R1() if group == ikev2.DH_ECP_256 else (
            ec.SECP384R1()
        )
        self._size = 32 if group == ikev2.DH_ECP_256 else 48
        self._key = ec.generate_private_key(self._curve)

    @property
    def public(self) -> bytes:
        nums = self._key.public_key().public_numbers()
        return nums.x.to_bytes(self._size, "big") + nums.y.to_bytes(self._size, "big")

    def shared(self, peer: bytes) -> bytes:
        if len(peer) != 2 * self._size:
            raise BadPublicValue(f"a group {self.group} public value holds {2 * self._size} bytes")
        try:
            pub = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer)
            return self._key.exchange(ec.ECDH(), pub)
        except ValueError:
            raise BadPublicValue(f"the group {self.group} public value is off the curve") from None


class _X25519:
    __slots__ = ("group", "_key")

    def __init__(self) -> None:
        self.group = ikev2.DH_CURVE25519
        self._key = x25519.X25519PrivateKey.generate()

    @property
    def public(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def shared(self, peer: bytes) -> bytes:
        if len(peer) != 32:
            raise BadPublicValue("a Curve25519 public value holds 32 bytes")
        try:
            return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError:
            raise BadPublicValue("the Curve25519 public value gives an all-zero secret") from None


class _MODP:
    __slots__ = ("group", "_key")

    def __init__(self) -> None:
        self.group = ikev2.DH_MODP_2048
        self._key = _modp_params().generate_private_key()

    @property
    def public(self) -> bytes:
        y = self._key.public_key().public_numbers().y
        return y.to_bytes(256, "big")

    def shared(self, peer: bytes) -> bytes:
        if len(peer) != 256:
            raise BadPublicValue("a group 14 public value holds 256 bytes")
        y = int.from_bytes(peer, "big")
        if not 1 < y < MODP_2048_P - 1:
            raise BadPublicValue("the group 14 public value is out of range")
        pub = dh.DHPublicNumbers(y, _modp_params().parameter_numbers()).public_key()
        secret = self._key.exchange(pub)
        # The secret is as long as the prime, leading zeros kept (section 2.14).
        return int.from_bytes(secret, "big").to_bytes(256, "big")


SUPPORTED_GROUPS: Final = (
    ikev2.DH_ECP_256,
    ikev2.DH_ECP_384,
    ikev2.DH_CURVE25519,
    ikev2.DH_MODP_2048,
)


def dh_generate(group: int) -> DHPrivate:
    """A fresh ephemeral key for ``group`` (14, 19, 20 or 31)."""
    if group in (ikev2.DH_ECP_256, ikev2.DH_ECP_384):
        return _ECP(group)
    if group == ikev2.DH_CURVE25519:
        return _X25519()
    if group == ikev2.DH_MODP_2048:
        return _MODP()
    raise ValueError(f"DH group {group} is not supported")


# ---------------------------------------------------------------------------
# The Encrypted payload (section 3.14, RFC 5282)
# ---------------------------------------------------------------------------


class SKCipher(Protocol):
    """One direction's protection of the Encrypted payload."""

    def body_length(self, plaintext_length: int) -> int:
        """Length of the SK body (IV, ciphertext, ICV) for a plaintext of this length."""

    def seal(self, prefix: bytes, plaintext: bytes) -> bytes:
        """The SK body for ``plaintext``; ``prefix`` is the message up to the SK header."""

    def open(self, prefix: bytes, body: bytes) -> bytes:
        """The plaintext (inner payloads) of an SK body.

        @raise IntegrityError: the check failed, or the body is malformed.
        """


_GCM_IV = struct.Struct("!Q")


class AESGCMSK:
    """AES-GCM with a 16-byte ICV for the Encrypted payload (RFC 5282).

    ``keymat`` is key || 4-byte salt, as :func:`derive_ike_keys` cuts it
    (RFC 5282 section 7.1).  The 8-byte IV is a message counter, never
    repeated under one key.  No padding is needed; pad length is 0.
    """

    __slots__ = ("_aead", "_salt", "_counter")

    IV_LEN: Final = 8
    ICV_LEN: Final = 16

    def __init__(self, keymat: bytes) -> None:
        if len(keymat) not in (20, 28, 36):
            raise ValueError("AES-GCM key material holds 20, 28 or 36 bytes")
        self._aead = AESGCM(keymat[:-4])
        self._salt = keymat[-4:]
        self._counter = 0

    def body_length(self, plaintext_length: int) -> int:
        return self.IV_LEN + plaintext_length + 1 + self.ICV_LEN

    def seal(self, prefix: bytes, plaintext: bytes) -> bytes:
        self._counter += 1
        iv = _GCM_IV.pack(self._counter)
        return iv + self._aead.encrypt(self._salt + iv, plaintext + b"\x00", prefix)

    def open(self, prefix: bytes, body: bytes) -> bytes:
        if len(body) < self.IV_LEN + 1 + self.ICV_LEN:
            raise IntegrityError("an AES-GCM Encrypted payload is too short")
        iv = body[: self.IV_LEN]
        try:
            plain = self._aead.decrypt(self._salt + iv, body[self.IV_LEN :], prefix)
        except InvalidTag:
            raise IntegrityError("the Encrypted payload failed its ICV check") from None
        return _unpad(plain)


class AESCBCHMACSK:
    """AES-CBC with an HMAC-SHA2 integrity checksum over the whole message."""

    __slots__ = ("_enc_key", "_hash", "_integ_key", "_icv_len")

    IV_LEN: Final = 16

    def __init__(self, enc_key: bytes, integ: int, integ_key: bytes) -> None:
        if len(enc_key) not in (16, 24, 32):
            raise ValueError("an AES key holds 16, 24 or 32 bytes")
        entry = _INTEG.get(integ)
        if entry is None:
            raise ValueError(f"integrity transform {integ} is not supported")
        name, key_len, icv_len = entry
        if len(integ_key) != key_len:
            raise ValueError("the integrity key has the wrong length")
        self._enc_key = enc_key
        self._hash = name
        self._integ_key = integ_key
        self._icv_len = icv_len

    def body_length(self, plaintext_length: int) -> int:
        padded = (plaintext_length + 1 + 15) // 16 * 16
        return self.IV_LEN + padded + self._icv_len

    def seal(self, prefix: bytes, plaintext: bytes) -> bytes:
        pad = (-(len(plaintext) + 1)) % 16
        iv = os.urandom(self.IV_LEN)
        enc = Cipher(algorithms.AES(self._enc_key), modes.CBC(iv)).encryptor()
        ct = enc.update(plaintext + bytes(pad) + bytes((pad,))) + enc.finalize()
        mac = hmac.digest(self._integ_key, prefix + iv + ct, self._hash)[: self._icv_len]
        return iv + ct + mac

    def open(self, prefix: bytes, body: bytes) -> bytes:
        n = len(body) - self.IV_LEN - self._icv_len
        if n < 16 or n % 16:
            raise IntegrityError("an AES-CBC Encrypted payload is not whole blocks")
        mac = hmac.digest(self._integ_key, prefix + body[: -self._icv_len], self._hash)
        if not hmac.compare_digest(mac[: self._icv_len], body[-self._icv_len :]):
            raise IntegrityError("the Encrypted payload failed its integrity check")
        iv = body[: self.IV_LEN]
        dec = Cipher(algorithms.AES(self._enc_key), modes.CBC(iv)).decryptor()
        plain = dec.update(body[self.IV_LEN : -self._icv_len]) + dec.finalize()
        return _unpad(plain)


def _unpad(plain: bytes) -> bytes:
    if not plain:
        raise IntegrityError("an Encrypted payload holds at least its pad length")
    pad = plain[-1]
    if pad + 1 > len(plain):
        raise IntegrityError("the pad length of an Encrypted payload is too large")
    return plain[: len(plain) - 1 - pad]


def make_sk(encr: int, integ: int, enc_key: bytes, integ_key: bytes) -> SKCipher:
    """The SK cipher for one direction: ``enc_key`` is SK_ei or SK_er, ``integ_key`` SK_a."""
    if encr == ikev2.ENCR_AES_GCM_16:
        return AESGCMSK(enc_key)
    if encr == ikev2.ENCR_AES_CBC:
        return AESCBCHMACSK(enc_key, integ, integ_key)
    raise ValueError(f"encryption transform {encr} is not supported")


def seal_message(
    cipher: SKCipher,
    header: Message,
    inner: Sequence[Payload],
) -> bytes:
    """Encode ``header`` (its payloads go in clear) with ``inner`` in an SK payload."""
    first, plain = ikev2.encode_chain(inner)
    body_len = cipher.body_length(len(plain))
    msg = Message(
        header.spi_i,
        header.spi_r,
        header.exchange,
        header.flags,
        header.message_id,
        (*header.payloads, Encrypted(first, b"")),
    )
    prefix = ikev2.encrypted_prefix(msg, body_len)
    body = cipher.seal(prefix, plain)
    assert len(body) == body_len
    return prefix + body


def open_message(cipher: SKCipher, data: bytes, msg: Message) -> Message:
    """Decrypt the SK payload of ``msg`` (decoded from ``data``).

    Returns the message with the inner payloads in place of the SK payload.

    @raise IntegrityError: no SK payload, or its check failed.
    @raise WireError: the inner payloads are malformed.
    """
    if not msg.payloads or not isinstance(msg.payloads[-1], Encrypted):
        raise IntegrityError("the message holds no Encrypted payload")
    enc = msg.payloads[-1]
    prefix = data[: len(data) - len(enc.data)]
    plain = cipher.open(prefix, enc.data)
    inner = ikev2.decode_chain(enc.next_inner, plain, inner=True)
    return Message(
        msg.spi_i,
        msg.spi_r,
        msg.exchange,
        msg.flags,
        msg.message_id,
        (*msg.payloads[:-1], *inner),
        msg.major,
        msg.minor,
    )


# ---------------------------------------------------------------------------
# AUTH (section 2.15) and NAT detection (section 2.23)
# ---------------------------------------------------------------------------


def id_body(identity: ikev2.Identity) -> bytes:
    """RestOfInitIDPayload / RestOfRespIDPayload: ID type, 3 reserved bytes, data."""
    return ikev2.IDi(identity).body()


def signed_octets(
    prf: Prf, real_message: bytes, peer_nonce: bytes, sk_p: bytes, identity: ikev2.Identity
) -> bytes:
    """InitiatorSignedOctets or ResponderSignedOctets (section 2.15).

    RealMessage | NonceData of the peer | prf(SK_p, RestOfIDPayload).
    """
    return real_message + peer_nonce + prf(sk_p, id_body(identity))


def psk_auth(prf: Prf, secret: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (method 2)."""
    return prf(prf(secret, KEY_PAD), octets)


def ip_packed(host: str) -> bytes:
    """The 4 or 16 bytes of an IPv4 or IPv6 address string."""
    addr: IPv4Address | IPv6Address = ip_address(host)
    return addr.packed


# ---------------------------------------------------------------------------
# Certificates and digital signatures (RFC 7427, auth method 14)
# ---------------------------------------------------------------------------

# RFC 7296 section 3.3.2 / RFC 7427 section 7: SIGNATURE_HASH_ALGORITHMS values.
HASH_SHA2_256: Final = 2
HASH_SHA2_384: Final = 3
HASH_SHA2_512: Final = 4
SUPPORTED_SIGNATURE_HASHES: Final = (HASH_SHA2_256, HASH_SHA2_384, HASH_SHA2_512)

# RFC 7427 appendix A: the DER AlgorithmIdentifiers at the start of AUTH data.
_ALG_IDS: Final = {
    bytes.fromhex("300a06082a8648ce3d040302"): ("ecdsa", "sha256"),
    bytes.fromhex("300a06082a8648ce3d040303"): ("ecdsa", "sha384"),
    bytes.fromhex("300a06082a8648ce3d040304"): ("ecdsa", "sha512"),
    bytes.fromhex("300d06092a864886f70d01010b0500"): ("rsa", "sha256"),
    bytes.fromhex("300d06092a864886f70d01010c0500"): ("rsa", "sha384"),
    bytes.fromhex("300d06092a864886f70d01010d0500"): ("rsa", "sha512"),
}
_ALG_ID_OF: Final = {v: k for k, v in _ALG_IDS.items()}


def _digest(name: str) -> hashes.HashAlgorithm:
    if name == "sha384":
        return hashes.SHA384()
    if name == "sha512":
        return hashes.SHA512()
    return hashes.SHA256()


_HASH_NUMBERS: Final = {"sha256": HASH_SHA2_256, "sha384": HASH_SHA2_384, "sha512": HASH_SHA2_512}

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class AuthError(Exception):
    """A certificate or a signature did not check out (the message says why)."""


def signature_hashes(data: bytes) -> tuple[int, ...]:
    """The hash algorithm numbers of a SIGNATURE_HASH_ALGORITHMS notify.

    @raise WireError: an odd length.
    """
    if len(data) % 2:
        raise WireError("SIGNATURE_HASH_ALGORITHMS holds 16-bit numbers")
    return tuple(struct.unpack(f"!{len(data) // 2}H", data))


def signature_hashes_data(numbers: Sequence[int] = SUPPORTED_SIGNATURE_HASHES) -> bytes:
    """The data of our SIGNATURE_HASH_ALGORITHMS notify."""
    return struct.pack(f"!{len(numbers)}H", *numbers)


def _hash_for(key: PrivateKey, peer_hashes: Sequence[int]) -> str:
    # ECDSA P-384 pairs with SHA-384 (RFC 4754); otherwise SHA-256 unless the
    # peer does not take it.
    preferred = "sha256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        preferred = "sha384"
    if not peer_hashes or _HASH_NUMBERS[preferred] in peer_hashes:
        return preferred
    for name, number in _HASH_NUMBERS.items():
        if number in peer_hashes:
            return name
    raise AuthError("the peer takes none of SHA2-256, SHA2-384, SHA2-512 for signatures")


def signature_auth(key: PrivateKey, octets: bytes, peer_hashes: Sequence[int] = ()) -> bytes:
    """AUTH data of method 14 (RFC 7427 section 3): length, AlgorithmIdentifier, signature.

    ECDSA signatures are the DER ECDSA-Sig-Value; RSA is PKCS#1 v1.5.
    """
    name = _hash_for(key, peer_hashes)
    digest = _digest(name)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg_id = _ALG_ID_OF[("ecdsa", name)]
        signature = key.sign(octets, ec.ECDSA(digest))
    else:
        alg_id = _ALG_ID_OF[("rsa", name)]
        signature = key.sign(octets, padding.PKCS1v15(), digest)
    return bytes((len(alg_id),)) + alg_id + signature


def verify_signature_auth(public_key: object, data: bytes, octets: bytes) -> None:
    """Check method-14 AUTH data against ``octets`` with the peer's public key.

    @raise AuthError: an unknown algorithm, a key of the wrong type, or a
        signature that does not verify.
    """
    if not data or len(data) < 1 + data[0]:
        raise AuthError("method 14 AUTH data is shorter than its AlgorithmIdentifier")
    alg = _ALG_IDS.get(data[1 : 1 + data[0]])
    if alg is None:
        raise AuthError("the signature's AlgorithmIdentifier is not supported")
    kind, name = alg
    signature = data[1 + data[0] :]
    digest = _digest(name)
    try:
        # A public key of another kind (DSA, Ed25519) falls to the else branch.
        if kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, octets, ec.ECDSA(digest))
        elif kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, octets, padding.PKCS1v15(), digest)
        else:
            raise AuthError(f"a {kind} signature does not fit the certificate's key")
    except InvalidSignature:
        raise AuthError("the signature does not verify") from None


def ca_key_hash(ca: x509.Certificate) -> bytes:
    """SHA-1 of the CA's SubjectPublicKeyInfo: what CERTREQ carries (section 3.7)."""
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(spki).digest()  # noqa: S324 - section 3.7 names SHA-1


def verify_certificate(
    der: bytes,
    anchors: Sequence[x509.Certificate],
    identity: ikev2.Identity,
    now: datetime.datetime,
) -> x509.Certificate:
    """Check an end-entity certificate: issued by an anchor, valid now, naming ``identity``.

    The identity must be a subjectAltName of the certificate (dNSName for
    ID_FQDN, rfc822Name for ID_RFC822_ADDR, iPAddress for ID_IPV4_ADDR) or,
    for ID_DER_ASN1_DN, its subject.  Only certificates issued directly by a
    trust anchor are accepted (the home server's own CA issues them).

    @raise AuthError: any check failed.
    """
    try:
        return _verify_certificate(der, anchors, identity, now)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        # cryptography parses extensions and keys lazily: malformed ones
        # surface here, after loading.
        raise AuthError(f"the certificate is malformed: {e}") from None


def _verify_certificate(
    der: bytes,
    anchors: Sequence[x509.Certificate],
    identity: ikev2.Identity,
    now: datetime.datetime,
) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise AuthError("the CERT payload is not a DER X.509 certificate") from None
    for ca in anchors:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        break
    else:
        raise AuthError(f"the certificate of {cert.subject.rfc4514_string()} has no trusted issuer")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AuthError("the certificate is not valid now")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise AuthError("a CA certificate cannot authenticate a peer")
    except x509.ExtensionNotFound:
        pass
    if not _names_identity(cert, identity):
        raise AuthError(f"the certificate does not name {identity}")
    return cert


def _names_identity(cert: x509.Certificate, identity: ikev2.Identity) -> bool:
    if identity.id_type == ikev2.ID_DER_ASN1_DN:
        return cert.subject.public_bytes() == identity.data
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if identity.id_type == ikev2.ID_FQDN:
        name = identity.data.decode("ascii").lower()
        return any(n.lower() == name for n in san.get_values_for_type(x509.DNSName))
    if identity.id_type == ikev2.ID_RFC822_ADDR:
        name = identity.data.decode("ascii").lower()
        return any(n.lower() == name for n in san.get_values_for_type(x509.RFC822Name))
    if identity.id_type in (ikev2.ID_IPV4_ADDR, ikev2.ID_IPV6_ADDR):
        addr = ip_address(identity.data)
        return addr in san.get_values_for_type(x509.IPAddress)
    return False


def nat_hash(spi_i: bytes, spi_r: bytes, host: str, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port), the data of the NAT_DETECTION notifies."""
    return hashlib.sha1(  # noqa: S324 - SHA-1 is what section 2.23 specifies
        spi_i + spi_r + ip_packed(host) + struct.pack("!H", port)
    ).digest()
