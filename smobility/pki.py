# -*- test-case-name: tests.test_pki -*-
"""The home server's certificate authority: the logic, with ``cryptography``.

Everything here works on values (certificates, keys, CRLs) and takes the time
as an argument; the state lives in :mod:`smobility.store.pki` and the command
line in :mod:`smobility.ctl.pki`.

The profile follows what strongSwan's ``pki`` makes: an ECDSA P-256 CA by
default (RSA as an option), SHA-256 signatures (RSA as PKCS#1 v1.5), and end
entity certificates with ``serverAuth`` and/or ``clientAuth`` and the peer's
identities as subjectAltNames (DNS names, IP addresses, e-mail addresses) and
the subject DN.  Those are the identities IKEv2 certificate authentication
(method 14) and TLS check.

Every failure raises :class:`PKIError` with one sentence that is safe to log:
it names certificates by serial number and subject, never key material.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import service_identity
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

#: A private key this CA makes and signs with.
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
#: A public key this CA certifies.
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
#: What an end-entity certificate is for: TLS/IKE server, client, or both.
Profile = Literal["server", "client", "both"]
#: The usage a verifier requires of a peer's certificate.
Usage = Literal["server", "client"]
#: A point in time: an aware datetime, seconds since the epoch, or ``None`` for now.
When = datetime.datetime | float | int | None

#: RSA key sizes the CA makes or accepts.
RSA_SIZES: tuple[int, ...] = (2048, 3072, 4096)
#: Elliptic curves accepted in certificate requests (the CA makes P-256).
EC_CURVES: tuple[str, ...] = ("secp256r1", "secp384r1", "secp521r1")
#: Default lifetimes, in days.
CA_DAYS = 3650
CERT_DAYS = 365
CRL_DAYS = 7
#: Start of validity is set this far back, for peers whose clocks lag.
BACKDATE = datetime.timedelta(minutes=5)

#: Revocation reasons an operator may give (RFC 5280, 5.3.1), by their CLI names.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}

_PROFILE_EKUS: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "both": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
}
_USAGE_EKU: dict[str, x509.ObjectIdentifier] = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}
_USAGE_NAME: dict[str, str] = {"server": "serverAuth", "client": "clientAuth"}
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")


class PKIError(Exception):
    """A PKI operation or check failed; the text is one sentence, safe to log."""


# -- time ---------------------------------------------------------------------


def utc(at: When = None) -> datetime.datetime:
    """Return ``at`` as an aware UTC datetime (``None`` is now; naive means UTC)."""
    if at is None:
        return datetime.datetime.now(datetime.UTC)
    if isinstance(at, datetime.datetime):
        if at.tzinfo is None:
            return at.replace(tzinfo=datetime.UTC)
        return at.astimezone(datetime.UTC)
    return datetime.datetime.fromtimestamp(float(at), datetime.UTC)


def _stamp(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%SZ")


# -- serial numbers and names ---------------------------------------------------


def format_serial(serial: int) -> str:
    """The serial number as OpenSSL prints it: upper-case hex, an even number of digits."""
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def parse_serial(text: str) -> int | None:
    """Parse a hex serial number (``0x`` prefix and colons allowed); ``None`` if not hex."""
    t = text.strip().replace(":", "")
    if t[:2].lower() == "0x":
        t = t[2:]
    if not t or not re.fullmatch(r"[0-9A-Fa-f]+", t):
        return None
    return int(t, 16)


def describe(cert: x509.Certificate) -> str:
    """Name a certificate in a message: serial number and subject."""
    subject = cert.subject.rfc4514_string() or "empty subject"
    return f"certificate {format_serial(cert.serial_number)} ({subject})"


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of the certificate, colon-separated upper-case hex."""
    digest = cert.fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


# -- subjectAltNames ------------------------------------------------------------


def parse_san(text: str) -> x509.GeneralName:
    """Parse ``dns:NAME``, ``ip:ADDRESS`` or ``email:ADDR`` into a subjectAltName entry."""
    kind, sep, value = text.partition(":")
    kind = kind.strip().lower()
    value = value.strip()
    if not sep or not value:
        raise PKIError(
            f"subjectAltName {text!r} is not of the form dns:NAME, ip:ADDRESS or email:ADDRESS"
        )
    if kind == "dns":
        return x509.DNSName(_check_dns(value))
    if kind == "ip":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise PKIError(f"subjectAltName {text!r}: {value!r} is not an IP address") from None
    if kind in ("email", "rfc822"):
        return x509.RFC822Name(_check_email(value))
    raise PKIError(f"subjectAltName {text!r}: unknown kind {kind!r} (use dns, ip or email)")


def _check_dns(name: str) -> str:
    name = name.lower().rstrip(".")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise PKIError(f"{name!r} is not a DNS name (ASCII letters, digits, hyphens and dots)")
    return name


def _check_email(addr: str) -> str:
    local, sep, domain = addr.rpartition("@")
    if not sep or not local or not _EMAIL_LOCAL.match(local):
        raise PKIError(f"{addr!r} is not an e-mail address")
    return f"{local}@{_check_dns(domain)}"


def format_san(name: x509.GeneralName) -> str:
    """The inverse of :func:`parse_san`; other kinds as ``kind:value``."""
    if isinstance(name, x509.DNSName):
        return f"dns:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"ip:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"uri:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"dirname:{name.value.rfc4514_string()}"
    return f"{type(name).__name__}:{name.value!r}"


def subject_alt_names(
    cert: x509.Certificate | x509.CertificateSigningRequest,
) -> list[x509.GeneralName]:
    """The subjectAltName entries of a certificate or request (empty when it has none)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value)


def parse_subject(text: str) -> x509.Name:
    """Parse a distinguished name in RFC 4514 form (``CN=laptop,O=Example``)."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError:
        raise PKIError(
            f"{text!r} is not a distinguished name such as CN=laptop,O=Example"
        ) from None
    return name


def common_name(name: str) -> x509.Name:
    """A subject with just a common name."""
    if not name or len(name) > 64:
        raise PKIError(f"the common name {name!r} must be 1 to 64 characters long")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


# -- keys -----------------------------------------------------------------------


def generate_key(rsa_bits: int | None = None) -> PrivateKey:
    """A new ECDSA P-256 key, or an RSA key of ``rsa_bits`` bits."""
    if rsa_bits is None:
        return ec.generate_private_key(ec.SECP256R1())
    if rsa_bits not in RSA_SIZES:
        raise PKIError(f"RSA keys of {rsa_bits} bits are not offered (use 2048, 3072 or 4096)")
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def key_description(key: object) -> str:
    """``ECDSA P-256`` or ``RSA 3072`` (a private or public key): for messages."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


def _check_public_key(key: object, what: str) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise PKIError(
                f"{what} has an ECDSA key on {key.curve.name}, which is not accepted "
                "(use P-256, P-384 or P-521)"
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise PKIError(f"{what} has an RSA key of {key.key_size} bits (at least 2048 needed)")
        return key
    raise PKIError(f"{what} has a {type(key).__name__}: only ECDSA and RSA keys are accepted")


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """The key as PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key(
    data: bytes, passphrase: bytes | None = None, *, what: str = "the key"
) -> PrivateKey:
    """Load a PEM or DER private key (ECDSA or RSA), decrypting it with ``passphrase``."""
    loader = (
        serialization.load_pem_private_key
        if data.lstrip().startswith(b"-----BEGIN")
        else serialization.load_der_private_key
    )
    try:
        key = loader(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise PKIError(f"{what} is encrypted and no passphrase was given") from None
        raise PKIError(f"{what} is not encrypted, but a passphrase was given") from None
    except ValueError:
        if passphrase is not None:
            raise PKIError(f"{what} cannot be decrypted: wrong passphrase or damaged key") from None
        raise PKIError(f"{what} cannot be read: not a PEM or DER private key") from None
    except UnsupportedAlgorithm:
        raise PKIError(f"{what} uses an unsupported algorithm") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"{what} is a {type(key).__name__}: only ECDSA and RSA keys are used")
    return key


# -- loading and saving certificates, requests, CRLs -----------------------------


def _is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def load_certificate(data: bytes) -> x509.Certificate:
    """Load one certificate, PEM or DER (the IKEv2 CERT payload carries DER)."""
    try:
        if _is_pem(data):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise PKIError("the certificate cannot be parsed (damaged or not X.509)") from None


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Load a PKCS#10 certificate request, PEM or DER."""
    try:
        if _is_pem(data):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise PKIError("the certificate request cannot be parsed (not a PKCS#10 request)") from None


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """Load a CRL, PEM or DER."""
    try:
        if _is_pem(data):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise PKIError("the CRL cannot be parsed (damaged or not an X.509 CRL)") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    """The certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_der(cert: x509.Certificate) -> bytes:
    """The certificate in DER (what an IKEv2 CERT payload of encoding 4 carries)."""
    return cert.public_bytes(serialization.Encoding.DER)


def crl_bytes(crl: x509.CertificateRevocationList, *, pem: bool = True) -> bytes:
    """The CRL in PEM or DER."""
    return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


# -- the CA and issuing ----------------------------------------------------------


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    # SHA-256 for P-256 and RSA; the larger curves of imported keys get their match.
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(
            _check_public_key(cert.public_key(), describe(cert))
        )


def create_ca(
    name: str = "smobility CA",
    *,
    rsa_bits: int | None = None,
    days: int = CA_DAYS,
    key: PrivateKey | None = None,
    now: When = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Make a self-signed CA: ECDSA P-256 by default, RSA of ``rsa_bits`` bits on request.

    The CA may sign end-entity certificates and CRLs only (path length 0).
    """
    if days < 1:
        raise PKIError(f"the CA lifetime must be at least one day, not {days}")
    if key is None:
        key = generate_key(rsa_bits)
    start = utc(now)
    subject = common_name(name)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, _signature_hash(key)), key


def _check_ca_pair(ca_cert: x509.Certificate, ca_key: PrivateKey) -> None:
    if ca_cert.public_key() != ca_key.public_key():
        raise PKIError("the CA key does not belong to the CA certificate")


def issue(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    public_key: PublicKey,
    *,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName] = (),
    profile: Profile = "both",
    days: int = CERT_DAYS,
    serial: int | None = None,
    now: When = None,
) -> x509.Certificate:
    """Issue an end-entity certificate for ``public_key``.

    ``profile`` chooses the extended key usages (``serverAuth``, ``clientAuth`` or
    both).  The certificate never outlives the CA.
    """
    _check_ca_pair(ca_cert, ca_key)
    public_key = _check_public_key(public_key, "the key to certify")
    if profile not in _PROFILE_EKUS:
        raise PKIError(f"unknown certificate profile {profile!r} (use server, client or both)")
    if days < 1:
        raise PKIError(f"the certificate lifetime must be at least one day, not {days}")
    if not sans and not len(subject):
        raise PKIError("a certificate needs a subject or at least one subjectAltName")
    start = utc(now)
    if start >= ca_cert.not_valid_after_utc:
        raise PKIError(f"the CA expired on {_stamp(ca_cert.not_valid_after_utc)}")
    end = min(start + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(max(start - BACKDATE, ca_cert.not_valid_before_utc))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(_PROFILE_EKUS[profile])), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_cert)),
            critical=False,
        )
    )
    if sans:
        # RFC 5280 4.2.1.6: critical when the subject is empty.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(sans)), critical=not len(subject)
        )
    return builder.sign(ca_key, _signature_hash(ca_key))


def issue_with_new_key(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName] = (),
    profile: Profile = "both",
    days: int = CERT_DAYS,
    rsa_bits: int | None = None,
    now: When = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Make a key (ECDSA P-256, or RSA) and issue a certificate for it."""
    key = generate_key(rsa_bits)
    cert = issue(
        ca_cert,
        ca_key,
        key.public_key(),
        subject=subject,
        sans=sans,
        profile=profile,
        days=days,
        now=now,
    )
    return cert, key


def sign_csr(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    csr: x509.CertificateSigningRequest,
    *,
    profile: Profile,
    sans: Sequence[x509.GeneralName] | None = None,
    days: int = CERT_DAYS,
    now: When = None,
) -> x509.Certificate:
    """Issue a certificate for a PKCS#10 request.

    The request's signature must be valid.  Its subject and subjectAltNames are
    kept (``sans`` replaces the latter); every other requested extension is
    ignored: the profile decides the rest.
    """
    if not csr.is_signature_valid:
        raise PKIError("the certificate request's signature is not valid")
    return issue(
        ca_cert,
        ca_key,
        _check_public_key(csr.public_key(), "the certificate request"),
        subject=csr.subject,
        sans=subject_alt_names(csr) if sans is None else sans,
        profile=profile,
        days=days,
        now=now,
    )


# -- revocation -------------------------------------------------------------------


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate, as a CRL lists it."""

    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags | None = None


def parse_reason(text: str) -> x509.ReasonFlags:
    """A revocation reason from its CLI name (``key-compromise``) or RFC name."""
    key = text.strip().lower().replace("_", "").replace("-", "")
    for name, flag in REASONS.items():
        if key in (name.replace("-", ""), flag.value.lower()):
            return flag
    raise PKIError(f"unknown revocation reason {text!r} (one of {', '.join(REASONS)})")


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    revocations: Iterable[Revocation],
    *,
    number: int,
    days: int = CRL_DAYS,
    now: When = None,
) -> x509.CertificateRevocationList:
    """A CRL numbered ``number``, listing ``revocations``, next update in ``days``."""
    _check_ca_pair(ca_cert, ca_key)
    if days < 1:
        raise PKIError(f"the CRL lifetime must be at least one day, not {days}")
    start = utc(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start)
        .next_update(start + datetime.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_cert)),
            critical=False,
        )
    )
    for r in revocations:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(r.serial)
            .revocation_date(utc(r.revoked_at))
        )
        # RFC 5280 5.3.1: leave the reason out rather than say "unspecified".
        if r.reason is not None and r.reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(r.reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, _signature_hash(ca_key))


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """The CRL's number, or ``None`` when it has none."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def verify_crl(
    crl: x509.CertificateRevocationList, ca_cert: x509.Certificate, *, at: When = None
) -> None:
    """Check that ``crl`` was signed by ``ca_cert`` and is not past its next update."""
    if crl.issuer != ca_cert.subject:
        raise PKIError(
            f"the CRL was issued by {crl.issuer.rfc4514_string()}, not by this CA "
            f"({ca_cert.subject.rfc4514_string()})"
        )
    key = _check_public_key(ca_cert.public_key(), "the CA certificate")
    if not crl.is_signature_valid(key):
        raise PKIError("the CRL's signature does not verify with the CA's key")
    nxt = crl.next_update_utc
    when = utc(at)
    if nxt is not None and when > nxt:
        raise PKIError(f"the CRL is out of date: its next update was due {_stamp(nxt)}")


def is_revoked(
    cert: x509.Certificate,
    crl: x509.CertificateRevocationList,
    *,
    ca_cert: x509.Certificate | None = None,
    at: When = None,
) -> bool:
    """Whether ``crl`` lists ``cert``.

    With ``ca_cert`` the CRL itself is checked first (:func:`verify_crl`), and a
    CRL that fails raises :class:`PKIError` rather than answer.
    """
    if ca_cert is not None:
        verify_crl(crl, ca_cert, at=at)
    if crl.issuer != cert.issuer:
        raise PKIError(f"the CRL was not issued by the issuer of {describe(cert)}")
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


# -- verification -------------------------------------------------------------------


def _validity(cert: x509.Certificate, when: datetime.datetime, what: str) -> None:
    if when < cert.not_valid_before_utc:
        raise PKIError(f"{what} is not valid before {_stamp(cert.not_valid_before_utc)}")
    if when > cert.not_valid_after_utc:
        raise PKIError(f"{what} expired on {_stamp(cert.not_valid_after_utc)}")


def verify_chain(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    *,
    at: When = None,
    usage: Usage | None = None,
) -> None:
    """Check that ``cert`` was issued by ``ca_cert`` and both are valid at ``at``.

    ``at`` defaults to now (an aware datetime or seconds since the epoch, such
    as ``reactor.seconds()``).  With ``usage`` the certificate's extended key
    usage, when it has one, must allow ``serverAuth`` or ``clientAuth``.
    Revocation is separate: :func:`is_revoked`, or :func:`verify_peer`.
    """
    when = utc(at)
    what = describe(cert)
    try:
        ca_bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        ca_bc = None
    if ca_bc is None or not ca_bc.ca:
        raise PKIError(f"the trust anchor {describe(ca_cert)} is not a CA certificate")
    try:
        ca_ku: x509.KeyUsage | None = ca_cert.extensions.get_extension_for_class(
            x509.KeyUsage
        ).value
    except x509.ExtensionNotFound:
        ca_ku = None
    if ca_ku is not None and not ca_ku.key_cert_sign:
        raise PKIError(f"the trust anchor {describe(ca_cert)} may not sign certificates")
    if cert.issuer != ca_cert.subject:
        raise PKIError(
            f"{what} was issued by {cert.issuer.rfc4514_string() or 'an empty name'}, "
            f"not by this CA ({ca_cert.subject.rfc4514_string()})"
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except InvalidSignature:
        raise PKIError(f"the signature on {what} does not verify with the CA's key") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PKIError(f"the signature on {what} cannot be checked against the CA") from None
    _validity(ca_cert, when, f"the CA certificate {describe(ca_cert)}")
    _validity(cert, when, what)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise PKIError(f"{what} is a CA certificate, not a peer's certificate")
    if usage is not None:
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        wanted = _USAGE_EKU[usage]
        if (
            eku is not None
            and wanted not in eku
            and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
        ):
            raise PKIError(
                f"{what} is not for {usage} use (its extended key usage lacks {_USAGE_NAME[usage]})"
            )


def verify_peer_identity(
    cert: x509.Certificate,
    *,
    dns: str | None = None,
    ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    email: str | None = None,
    subject: x509.Name | bytes | None = None,
) -> None:
    """Check that ``cert`` names the peer: every identity given must match.

    DNS names and IP addresses go through ``service_identity`` (RFC 6125
    rules: subjectAltNames only, never the common name); ``email`` must be an
    RFC 822 subjectAltName (domain compared without case); ``subject`` must be
    the subject DN (an ``x509.Name``, or the DER bytes of an ID_DER_ASN1_DN
    payload, compared byte for byte).  These are the IKEv2 identity kinds ID_FQDN,
    ID_IPV4_ADDR/ID_IPV6_ADDR, ID_RFC822_ADDR and ID_DER_ASN1_DN.
    """
    if dns is None and ip is None and email is None and subject is None:
        raise PKIError("no identity was given to check the certificate against")
    what = describe(cert)
    checks: list[tuple[str, Callable[[x509.Certificate, str], None]]] = []
    if dns is not None:
        checks.append((dns, verify_certificate_hostname))
    if ip is not None:
        checks.append((str(ip), verify_certificate_ip_address))
    for name, check in checks:
        try:
            check(cert, name)
        except service_identity.VerificationError:
            raise PKIError(f"{what} is not valid for {name}") from None
        except service_identity.CertificateError:
            raise PKIError(f"{what} has no subjectAltName to match {name} against") from None
        except ValueError:
            # service_identity's word for a name that is no DNS name or address.
            raise PKIError(
                f"{name!r} is not a valid peer identity to check {what} against"
            ) from None
    if email is not None and not _matches_email(cert, email):
        raise PKIError(f"{what} is not valid for {email}")
    if isinstance(subject, bytes):
        # The DER of an ID_DER_ASN1_DN payload: compared as encoded.
        if cert.subject.public_bytes() != subject:
            raise PKIError(f"{what} is not valid for the distinguished name the peer sent")
    elif subject is not None and cert.subject != subject:
        raise PKIError(f"{what} is not valid for {subject.rfc4514_string()}")


def _matches_email(cert: x509.Certificate, email: str) -> bool:
    local, _, domain = email.rpartition("@")
    for name in subject_alt_names(cert):
        if isinstance(name, x509.RFC822Name):
            l2, _, d2 = name.value.rpartition("@")
            if l2 == local and d2.lower() == domain.lower():
                return True
    return False


#: A revocation source: a CRL (checked against the CA) or a callable on the serial number.
RevocationSource = x509.CertificateRevocationList | Callable[[int], bool]


def verify_peer(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    *,
    at: When = None,
    usage: Usage | None = None,
    revoked: RevocationSource | None = None,
    dns: str | None = None,
    ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    email: str | None = None,
    subject: x509.Name | bytes | None = None,
) -> None:
    """Everything a peer's certificate must pass, in one call (IKE_AUTH, TLS).

    :func:`verify_chain`, then revocation (``revoked`` is a CRL, or a callable
    taking the serial number such as
    :meth:`smobility.store.pki.PKIStore.is_revoked`), then
    :func:`verify_peer_identity` when any identity is given.
    """
    verify_chain(cert, ca_cert, at=at, usage=usage)
    if revoked is not None:
        if isinstance(revoked, x509.CertificateRevocationList):
            hit = is_revoked(cert, revoked, ca_cert=ca_cert, at=at)
        else:
            hit = revoked(cert.serial_number)
        if hit:
            raise PKIError(f"{describe(cert)} has been revoked")
    if dns is not None or ip is not None or email is not None or subject is not None:
        verify_peer_identity(cert, dns=dns, ip=ip, email=email, subject=subject)


# -- summaries --------------------------------------------------------------------------


def profile_of(cert: x509.Certificate) -> str:
    """``server``, ``client``, ``both``, ``ca`` or ``any`` (no extended key usage)."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca"
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "any"
    server = ExtendedKeyUsageOID.SERVER_AUTH in eku
    client = ExtendedKeyUsageOID.CLIENT_AUTH in eku
    if server and client:
        return "both"
    if server:
        return "server"
    if client:
        return "client"
    return "other"
