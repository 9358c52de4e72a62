# -*- test-case-name: tests.test_pki -*-
"""
Tests for the certificate authority: L{smobility.pki}, L{smobility.store.pki}
and the C{smobility-ctl pki} commands.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from twisted.trial.unittest import SynchronousTestCase

from smobility import pki
from smobility.ctl import main as ctl_main
from smobility.pki import PKIError
from smobility.store.pki import PKIStore
from smobility.store.sqlite import SQLiteStore

NOW = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _csr(
    key: pki.PrivateKey | ed25519.Ed25519PrivateKey,
    cn: str = "csr.example",
    sans: list[x509.GeneralName] | None = None,
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


class CATests(SynchronousTestCase):
    """L{pki.create_ca}."""

    def test_default_is_ecdsa_p256(self) -> None:
        """By default the CA has an ECDSA P-256 key, signs with SHA-256 and may only sign."""
        cert, key = pki.create_ca("Test CA", now=NOW)
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key.curve.name, "secp256r1")
        self.assertEqual(cert.signature_algorithm_oid, SignatureAlgorithmOID.ECDSA_WITH_SHA256)
        self.assertEqual(cert.subject, cert.issuer)
        self.assertEqual(cert.subject.rfc4514_string(), "CN=Test CA")
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertTrue(bc.value.ca)
        self.assertEqual(bc.value.path_length, 0)
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(ku.key_cert_sign and ku.crl_sign)
        self.assertFalse(ku.digital_signature)
        cert.verify_directly_issued_by(cert)
        self.assertEqual(cert.not_valid_after_utc - NOW, pki.CA_DAYS * DAY)
        self.assertEqual(pki.profile_of(cert), "ca")

    def test_rsa(self) -> None:
        """With C{rsa_bits}, the CA has an RSA key of that size (PKCS#1 v1.5 SHA-256)."""
        for bits in (2048, 3072):
            cert, key = pki.create_ca(rsa_bits=bits, days=30, now=NOW)
            self.assertIsInstance(key, rsa.RSAPrivateKey)
            self.assertEqual(key.key_size, bits)
            self.assertEqual(cert.signature_algorithm_oid, SignatureAlgorithmOID.RSA_WITH_SHA256)
            self.assertEqual(pki.key_description(cert.public_key()), f"RSA {bits}")
            cert.verify_directly_issued_by(cert)

    def test_bad_parameters(self) -> None:
        """Odd RSA sizes and lifetimes under a day are refused with one sentence."""
        e = self.assertRaises(PKIError, pki.create_ca, rsa_bits=1024)
        self.assertIn("1024 bits", str(e))
        self.assertRaises(PKIError, pki.create_ca, days=0)
        self.assertRaises(PKIError, pki.create_ca, "")


class IssueTests(SynchronousTestCase):
    """L{pki.issue}, L{pki.issue_with_new_key}, L{pki.sign_csr}, SAN parsing."""

    def setUp(self) -> None:
        self.ca, self.ca_key = pki.create_ca("Test CA", now=NOW)

    def _issue(self, *sans: str, profile: pki.Profile = "both", **kw: object) -> x509.Certificate:
        cert, _ = pki.issue_with_new_key(
            self.ca,
            self.ca_key,
            subject=pki.common_name("peer"),
            sans=[pki.parse_san(s) for s in sans],
            profile=profile,
            now=NOW,
            **kw,  # type: ignore[arg-type]
        )
        return cert

    def test_each_san_kind(self) -> None:
        """DNS names, IPv4 and IPv6 addresses and e-mail addresses become subjectAltNames."""
        cert = self._issue(
            "dns:Home.Example.", "ip:192.0.2.7", "ip:2001:db8::1", "email:alice@Example.ORG"
        )
        names = pki.subject_alt_names(cert)
        self.assertEqual(
            names,
            [
                x509.DNSName("home.example"),
                x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
                x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                x509.RFC822Name("alice@example.org"),
            ],
        )
        self.assertEqual(
            [pki.format_san(n) for n in names],
            ["dns:home.example", "ip:192.0.2.7", "ip:2001:db8::1", "email:alice@example.org"],
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertFalse(san.critical)
        self.assertEqual(cert.subject.rfc4514_string(), "CN=peer")
        self.assertEqual(cert.issuer, self.ca.subject)
        cert.verify_directly_issued_by(self.ca)

    def test_profiles(self) -> None:
        """The profile decides the extended key usages; leaves are never CAs."""
        server = self._issue("dns:s.example", profile="server")
        client = self._issue("dns:c.example", profile="client")
        both = self._issue("dns:b.example")
        self.assertEqual(_eku(server), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertEqual(_eku(client), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertEqual(
            _eku(both), [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        self.assertEqual(
            [pki.profile_of(c) for c in (server, client, both)], ["server", "client", "both"]
        )
        for cert in (server, client, both):
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
            self.assertTrue(bc.critical)
            self.assertFalse(bc.value.ca)
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            self.assertTrue(ku.digital_signature)
            self.assertFalse(ku.key_cert_sign)
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            ski = self.ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self.assertEqual(aki.key_identifier, ski.digest)
        self.assertRaises(
            PKIError,
            self._issue,
            "dns:x.example",
            profile="ocsp",  # type: ignore[arg-type]
        )

    def test_rsa_leaf(self) -> None:
        """A leaf can get an RSA key; its key usage then allows key encipherment."""
        cert, key = pki.issue_with_new_key(
            self.ca, self.ca_key, subject=pki.common_name("r"), rsa_bits=2048, now=NOW
        )
        self.assertEqual(key.key_size, 2048)
        self.assertTrue(
            cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
        )
        self.assertEqual(cert.public_key(), key.public_key())

    def test_subject_dn(self) -> None:
        """A subject DN is kept as given; with an empty subject the SAN is critical."""
        dn = pki.parse_subject("CN=laptop,O=Example,C=DE")
        cert, _ = pki.issue_with_new_key(self.ca, self.ca_key, subject=dn, now=NOW)
        self.assertEqual(cert.subject, dn)
        bare, _ = pki.issue_with_new_key(
            self.ca, self.ca_key, subject=x509.Name([]), sans=[pki.parse_san("dns:a.example")]
        )
        self.assertTrue(
            bare.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
        )
        self.assertRaises(
            PKIError, pki.issue_with_new_key, self.ca, self.ca_key, subject=x509.Name([])
        )
        self.assertRaises(PKIError, pki.parse_subject, "not a DN")

    def test_lifetime(self) -> None:
        """Validity starts a few minutes back and never outlives the CA."""
        cert = self._issue("dns:a.example", days=30)
        self.assertEqual(cert.not_valid_before_utc, NOW - pki.BACKDATE)
        self.assertEqual(cert.not_valid_after_utc, NOW + 30 * DAY)
        long = self._issue("dns:a.example", days=100000)
        self.assertEqual(long.not_valid_after_utc, self.ca.not_valid_after_utc)

    def test_bad_sans(self) -> None:
        """Malformed subjectAltNames are refused with a sentence naming them."""
        for bad in (
            "ftp:x",
            "dns:",
            "nothing",
            "ip:999.1.1.1",
            "dns:under_score.example",
            "dns:-a.example",
            "email:no-at-sign",
            "email:@example.org",
        ):
            e = self.assertRaises(PKIError, pki.parse_san, bad)
            self.assertNotIn("\n", str(e))
        self.assertEqual(pki.parse_san("dns:*.example.org"), x509.DNSName("*.example.org"))

    def test_wrong_ca_key(self) -> None:
        """A CA key that does not match the CA certificate is refused."""
        _, other = pki.create_ca()
        e = self.assertRaises(
            PKIError, pki.issue_with_new_key, self.ca, other, subject=pki.common_name("x")
        )
        self.assertIn("does not belong", str(e))

    def test_sign_csr(self) -> None:
        """A request's subject and SANs are kept; the profile decides the rest."""
        for key in (ec.generate_private_key(ec.SECP384R1()), pki.generate_key(2048)):
            csr = _csr(key, sans=[x509.DNSName("csr.example"), x509.RFC822Name("a@b.example")])
            cert = pki.sign_csr(self.ca, self.ca_key, csr, profile="server", now=NOW)
            self.assertEqual(cert.subject, csr.subject)
            self.assertEqual(cert.public_key(), key.public_key())
            self.assertEqual(
                pki.subject_alt_names(cert),
                [x509.DNSName("csr.example"), x509.RFC822Name("a@b.example")],
            )
            self.assertEqual(_eku(cert), [ExtendedKeyUsageOID.SERVER_AUTH])
            pki.verify_chain(cert, self.ca, at=NOW)

    def test_sign_csr_replaces_sans(self) -> None:
        """Given SANs replace the requested ones."""
        csr = _csr(pki.generate_key(), sans=[x509.DNSName("asked.example")])
        cert = pki.sign_csr(
            self.ca, self.ca_key, csr, profile="client", sans=[pki.parse_san("ip:10.1.1.1")]
        )
        self.assertEqual([pki.format_san(n) for n in pki.subject_alt_names(cert)], ["ip:10.1.1.1"])

    def test_sign_csr_refuses(self) -> None:
        """Bad signatures, unsupported and weak keys are refused."""
        csr = _csr(pki.generate_key(2048))
        der = bytearray(csr.public_bytes(serialization.Encoding.DER))
        der[-1] ^= 0x01
        bad = pki.load_csr(bytes(der))
        e = self.assertRaises(PKIError, pki.sign_csr, self.ca, self.ca_key, bad, profile="client")
        self.assertIn("signature is not valid", str(e))
        e = self.assertRaises(
            PKIError,
            pki.sign_csr,
            self.ca,
            self.ca_key,
            _csr(ed25519.Ed25519PrivateKey.generate()),
            profile="client",
        )
        self.assertIn("only ECDSA and RSA", str(e))
        weak = _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505
        self.assertRaises(PKIError, pki.sign_csr, self.ca, self.ca_key, weak, profile="client")
        self.assertRaises(PKIError, pki.load_csr, b"junk")


class ChainTests(SynchronousTestCase):
    """L{pki.verify_chain}."""

    def setUp(self) -> None:
        self.ca, self.ca_key = pki.create_ca("Test CA", now=NOW)
        self.cert, self.key = pki.issue_with_new_key(
            self.ca,
            self.ca_key,
            subject=pki.common_name("laptop"),
            sans=[pki.parse_san("dns:laptop.example")],
            profile="client",
            days=30,
            now=NOW,
        )

    def test_good(self) -> None:
        """A certificate of this CA passes, at a datetime or at seconds since the epoch."""
        pki.verify_chain(self.cert, self.ca, at=NOW)
        pki.verify_chain(self.cert, self.ca, at=NOW.timestamp() + 3600)
        pki.verify_chain(self.cert, self.ca, at=NOW.replace(tzinfo=None))
        pki.verify_chain(self.cert, self.ca, at=NOW, usage="client")

    def test_expired(self) -> None:
        """After its lifetime, or before it, the certificate fails."""
        e = self.assertRaises(PKIError, pki.verify_chain, self.cert, self.ca, at=NOW + 31 * DAY)
        self.assertIn("expired on", str(e))
        self.assertIn("CN=laptop", str(e))
        e = self.assertRaises(PKIError, pki.verify_chain, self.cert, self.ca, at=NOW - DAY)
        self.assertIn("not valid before", str(e))

    def test_expired_ca(self) -> None:
        """A CA past its lifetime fails everything it signed."""
        ca, ca_key = pki.create_ca("Short CA", days=2, now=NOW)
        cert, _ = pki.issue_with_new_key(ca, ca_key, subject=pki.common_name("x"), now=NOW)
        self.assertEqual(cert.not_valid_after_utc, ca.not_valid_after_utc)
        e = self.assertRaises(PKIError, pki.verify_chain, cert, ca, at=NOW + 3 * DAY)
        self.assertIn("expired", str(e))

    def test_other_ca(self) -> None:
        """Another CA, with another name or the same name, does not vouch for it."""
        other, _ = pki.create_ca("Other CA", now=NOW)
        e = self.assertRaises(PKIError, pki.verify_chain, self.cert, other, at=NOW)
        self.assertIn("not by this CA", str(e))
        same_name, _ = pki.create_ca("Test CA", now=NOW)
        e = self.assertRaises(PKIError, pki.verify_chain, self.cert, same_name, at=NOW)
        self.assertIn("does not verify", str(e))
        rsa_ca, _ = pki.create_ca("Test CA", rsa_bits=2048, now=NOW)
        e = self.assertRaises(PKIError, pki.verify_chain, self.cert, rsa_ca, at=NOW)
        self.assertNotIn("\n", str(e))

    def test_tampered(self) -> None:
        """Changing a byte of the signed part breaks the signature."""
        der = pki.certificate_der(self.cert)
        self.assertEqual(der.count(b"laptop.example"), 1)
        tampered = pki.load_certificate(der.replace(b"laptop.example", b"laptop.exampl3"))
        e = self.assertRaises(PKIError, pki.verify_chain, tampered, self.ca, at=NOW)
        self.assertIn("does not verify", str(e))
        e = self.assertRaises(PKIError, pki.load_certificate, der[:-20])
        self.assertIn("cannot be parsed", str(e))

    def test_not_a_ca(self) -> None:
        """A leaf is no trust anchor, and a CA certificate is no peer."""
        e = self.assertRaises(PKIError, pki.verify_chain, self.cert, self.cert, at=NOW)
        self.assertIn("not a CA certificate", str(e))
        e = self.assertRaises(PKIError, pki.verify_chain, self.ca, self.ca, at=NOW)
        self.assertIn("is a CA certificate", str(e))

    def test_usage(self) -> None:
        """A client-only certificate is refused where a server is expected."""
        e = self.assertRaises(
            PKIError, pki.verify_chain, self.cert, self.ca, at=NOW, usage="server"
        )
        self.assertIn("serverAuth", str(e))

    def test_pem_and_der(self) -> None:
        """Certificates load from PEM and from DER alike."""
        self.assertEqual(pki.load_certificate(pki.certificate_pem(self.cert)), self.cert)
        self.assertEqual(pki.load_certificate(pki.certificate_der(self.cert)), self.cert)


class IdentityTests(SynchronousTestCase):
    """L{pki.verify_peer_identity}."""

    def setUp(self) -> None:
        self.ca, self.ca_key = pki.create_ca(now=NOW)
        self.cert, _ = pki.issue_with_new_key(
            self.ca,
            self.ca_key,
            subject=pki.parse_subject("CN=home,O=Example"),
            sans=[
                pki.parse_san(s)
                for s in (
                    "dns:home.example",
                    "ip:203.0.113.5",
                    "ip:2001:db8::5",
                    "email:ha@example.org",
                )
            ],
            now=NOW,
        )

    def test_dns(self) -> None:
        """DNS names match the DNS subjectAltName, case-insensitively, and nothing else."""
        pki.verify_peer_identity(self.cert, dns="home.example")
        pki.verify_peer_identity(self.cert, dns="HOME.example")
        e = self.assertRaises(PKIError, pki.verify_peer_identity, self.cert, dns="evil.example")
        self.assertIn("is not valid for evil.example", str(e))
        # The common name is never an identity (RFC 6125).
        self.assertRaises(PKIError, pki.verify_peer_identity, self.cert, dns="home")

    def test_ip(self) -> None:
        """IP addresses match the IP subjectAltNames only."""
        pki.verify_peer_identity(self.cert, ip="203.0.113.5")
        pki.verify_peer_identity(self.cert, ip=ipaddress.ip_address("2001:db8::5"))
        e = self.assertRaises(PKIError, pki.verify_peer_identity, self.cert, ip="203.0.113.6")
        self.assertIn("203.0.113.6", str(e))
        self.assertRaises(PKIError, pki.verify_peer_identity, self.cert, dns="203.0.113.5")
        e = self.assertRaises(PKIError, pki.verify_peer_identity, self.cert, ip="nonsense")
        self.assertIn("not a valid peer identity", str(e))

    def test_both_must_match(self) -> None:
        """With a DNS name and an address, both must match."""
        pki.verify_peer_identity(self.cert, dns="home.example", ip="203.0.113.5")
        e = self.assertRaises(
            PKIError, pki.verify_peer_identity, self.cert, dns="home.example", ip="10.0.0.1"
        )
        self.assertIn("10.0.0.1", str(e))

    def test_email_and_subject(self) -> None:
        """E-mail identities and subject DNs (IKEv2 ID kinds) are compared too."""
        pki.verify_peer_identity(self.cert, email="ha@EXAMPLE.org")
        self.assertRaises(PKIError, pki.verify_peer_identity, self.cert, email="HA@example.org")
        pki.verify_peer_identity(self.cert, subject=pki.parse_subject("CN=home,O=Example"))
        pki.verify_peer_identity(self.cert, subject=self.cert.subject.public_bytes())
        e = self.assertRaises(
            PKIError,
            pki.verify_peer_identity,
            self.cert,
            subject=pki.common_name("home").public_bytes(),
        )
        self.assertIn("distinguished name", str(e))
        self.assertRaises(
            PKIError, pki.verify_peer_identity, self.cert, subject=pki.common_name("home")
        )
        self.assertRaises(PKIError, pki.verify_peer_identity, self.cert)

    def test_no_sans(self) -> None:
        """A certificate without subjectAltNames matches no DNS name or address."""
        bare, _ = pki.issue_with_new_key(self.ca, self.ca_key, subject=pki.common_name("h.ex"))
        e = self.assertRaises(PKIError, pki.verify_peer_identity, bare, dns="h.ex")
        self.assertIn("no subjectAltName", str(e))


class StoreTests(SynchronousTestCase):
    """L{PKIStore}: the CA, issued certificates, revocations and CRLs in SQLite."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.path = self.dir / "state" / "home.sqlite"
        self.store = PKIStore(self.path)
        self.addCleanup(self.store.close)

    def test_file_is_private(self) -> None:
        """The database, which holds the CA key, is mode 0600 (its directory 0700)."""
        self.store.init_ca(now=NOW)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(self.path.parent.stat().st_mode), 0o700)
        for suffix in ("-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                self.assertEqual(stat.S_IMODE(p.stat().st_mode) & 0o077, 0)

    def test_no_ca(self) -> None:
        """Without a CA every signing call says how to make one."""
        e = self.assertRaises(PKIError, self.store.issue, "x")
        self.assertIn("no certificate authority", str(e))
        self.assertIn("smobility-ctl pki init", str(e))
        self.assertFalse(self.store.has_ca())

    def test_missing_database(self) -> None:
        """With C{create=False} a missing file is an error, not a new empty database."""
        missing = self.dir / "nope.sqlite"
        e = self.assertRaises(PKIError, PKIStore, missing, create=False)
        self.assertIn("no state database", str(e))
        self.assertFalse(missing.exists())

    def test_init_once(self) -> None:
        """The CA is created once and persists across openings."""
        cert = self.store.init_ca("Home CA", now=NOW)
        e = self.assertRaises(PKIError, self.store.init_ca)
        self.assertIn("already holds", str(e))
        again = PKIStore(self.path, create=False)
        self.addCleanup(again.close)
        self.assertEqual(again.ca_certificate(), cert)
        self.assertEqual(again.ca_key().public_key(), cert.public_key())
        self.assertFalse(again.ca_key_encrypted())

    def test_shares_file_with_bindings(self) -> None:
        """The CA tables live beside the home agent's bindings in one file."""
        self.store.init_ca(now=NOW)
        bindings = SQLiteStore(self.path)
        self.addCleanup(bindings.close)
        self.assertEqual(bindings.load_bindings(), [])
        again = PKIStore(self.path)
        self.addCleanup(again.close)
        self.assertTrue(again.has_ca())

    def test_encrypted_key(self) -> None:
        """With a passphrase the key is stored encrypted and signing needs it."""
        self.store.init_ca(passphrase=b"correct horse", now=NOW)
        self.assertTrue(self.store.ca_key_encrypted())
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            (stored,) = db.execute("SELECT key_pem FROM pki_ca").fetchone()
        self.assertTrue(stored.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----"))
        e = self.assertRaises(PKIError, self.store.issue, "x", passphrase=b"wrong")
        self.assertIn("wrong passphrase", str(e))
        self.assertNotIn("wrong\n", str(e))
        e = self.assertRaises(PKIError, self.store.make_crl)
        self.assertIn("encrypted", str(e))
        cert, _ = self.store.issue("x", passphrase=b"correct horse", now=NOW)
        self.store.verify(cert, at=NOW)
        self.assertRaises(PKIError, self.store.init_ca, passphrase=b"")

    def test_issue_records(self) -> None:
        """Issued certificates are listed with their serial, names, usage and dates."""
        self.store.init_ca(now=NOW)
        sans = [pki.parse_san("dns:laptop.example"), pki.parse_san("ip:10.0.0.5")]
        cert, key = self.store.issue("laptop", sans=sans, profile="client", days=10, now=NOW)
        self.assertEqual(cert.public_key(), key.public_key())
        (row,) = self.store.certificates()
        self.assertEqual(row.serial, cert.serial_number)
        self.assertEqual(row.name, "laptop")
        self.assertEqual(row.subject, "CN=laptop")
        self.assertEqual(row.sans, ("dns:laptop.example", "ip:10.0.0.5"))
        self.assertEqual(row.usage, "client")
        self.assertEqual(row.not_after, NOW + 10 * DAY)
        self.assertEqual(row.issued_at, NOW)
        self.assertEqual(row.certificate, cert)
        self.assertEqual(row.status(NOW), "valid")
        self.assertEqual(row.status(NOW + 11 * DAY), "expired")
        self.assertEqual(self.store.get(cert.serial_number), row)
        self.assertEqual(self.store.find(row.serial_hex), [row])
        self.assertEqual(self.store.find(row.serial_hex.lower()), [row])
        self.assertEqual(self.store.find("laptop"), [row])
        self.assertEqual(self.store.find("nobody"), [])
        # The store keeps the certificate only, never the key it made.
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            dump = "\n".join(db.iterdump())
        body = pki.private_key_pem(key).decode().splitlines()[1]
        self.assertFalse(body in dump, "the issued key was stored")
        self.assertTrue(pki.certificate_pem(cert).decode().splitlines()[1] in dump)

    def test_sign_csr_records(self) -> None:
        """A signed request is listed under its CN unless a name is given."""
        self.store.init_ca(now=NOW)
        csr = _csr(pki.generate_key(), cn="gw.example", sans=[x509.DNSName("gw.example")])
        cert = self.store.sign_csr(csr, profile="server", now=NOW)
        named = self.store.sign_csr(csr, profile="server", name="gateway", now=NOW)
        self.assertEqual([c.name for c in self.store.certificates()], ["gw.example", "gateway"])
        self.assertEqual(self.store.find("gateway")[0].serial, named.serial_number)
        self.assertEqual(self.store.certificates()[0].usage, "server")
        self.assertNotEqual(cert.serial_number, named.serial_number)

    def test_revoke_and_crl(self) -> None:
        """Revoked serials are listed in a CRL signed by the CA, with increasing numbers."""
        ca = self.store.init_ca(now=NOW)
        good, _ = self.store.issue("good", now=NOW)
        bad, _ = self.store.issue("bad", now=NOW)
        first = self.store.make_crl(now=NOW)
        self.assertEqual(pki.crl_number(first), 1)
        self.assertEqual(len(first), 0)

        (done,) = self.store.revoke("bad", reason=pki.parse_reason("key-compromise"), now=NOW + DAY)
        self.assertEqual(done.serial, bad.serial_number)
        self.assertEqual(done.revoked_at, NOW + DAY)
        self.assertEqual(done.reason, "keyCompromise")
        self.assertEqual(done.status(), "revoked")
        self.assertTrue(self.store.is_revoked(bad.serial_number))
        self.assertFalse(self.store.is_revoked(good.serial_number))
        self.assertFalse(self.store.is_revoked(12345))

        crl = self.store.make_crl(now=NOW + DAY, days=3)
        self.assertEqual(pki.crl_number(crl), 2)
        self.assertEqual(crl.issuer, ca.subject)
        self.assertTrue(crl.is_signature_valid(ca.public_key()))  # type: ignore[arg-type]
        self.assertEqual(crl.last_update_utc, NOW + DAY)
        self.assertEqual(crl.next_update_utc, NOW + 4 * DAY)
        entry = crl.get_revoked_certificate_by_serial_number(bad.serial_number)
        assert entry is not None
        self.assertEqual(entry.revocation_date_utc, NOW + DAY)
        self.assertEqual(
            entry.extensions.get_extension_for_class(x509.CRLReason).value.reason,
            x509.ReasonFlags.key_compromise,
        )
        self.assertIsNone(crl.get_revoked_certificate_by_serial_number(good.serial_number))
        self.assertTrue(pki.is_revoked(bad, crl, ca_cert=ca, at=NOW + DAY))
        self.assertFalse(pki.is_revoked(good, crl, ca_cert=ca, at=NOW + DAY))
        self.assertEqual(self.store.latest_crl(), crl)

        self.store.revoke(pki.format_serial(good.serial_number), now=NOW + 2 * DAY)
        third = self.store.make_crl(now=NOW + 2 * DAY)
        self.assertEqual(pki.crl_number(third), 3)
        self.assertEqual(len(third), 2)
        plain = third.get_revoked_certificate_by_serial_number(good.serial_number)
        assert plain is not None
        self.assertEqual(len(plain.extensions), 0)

    def test_revoke_errors(self) -> None:
        """Unknown targets and second revocations are refused with one sentence."""
        self.store.init_ca(now=NOW)
        cert, _ = self.store.issue("once", now=NOW)
        e = self.assertRaises(PKIError, self.store.revoke, "nobody")
        self.assertIn("'nobody'", str(e))
        self.store.revoke("once")
        e = self.assertRaises(PKIError, self.store.revoke, pki.format_serial(cert.serial_number))
        self.assertIn("already revoked", str(e))
        e = self.assertRaises(PKIError, self.store.revoke, "once")
        self.assertIn("already revoked", str(e))

    def test_revoke_by_name_takes_every_valid_one(self) -> None:
        """Revoking a name revokes all its certificates not yet revoked."""
        self.store.init_ca(now=NOW)
        a, _ = self.store.issue("phone", now=NOW)
        b, _ = self.store.issue("phone", now=NOW + DAY)
        self.store.revoke(pki.format_serial(a.serial_number))
        (done,) = self.store.revoke("phone")
        self.assertEqual(done.serial, b.serial_number)
        self.assertEqual(len(self.store.revocations()), 2)

    def test_verify_with_live_revocations(self) -> None:
        """What IKE_AUTH calls: chain, live revocation, identity."""
        ca = self.store.init_ca(now=NOW)
        cert, _ = self.store.issue(
            "laptop", sans=[pki.parse_san("dns:laptop.example")], profile="client", now=NOW
        )
        self.store.verify(cert, at=NOW, usage="client", dns="laptop.example")
        pki.verify_peer(
            cert, ca, at=NOW, usage="client", revoked=self.store.is_revoked, dns="laptop.example"
        )
        self.assertRaises(PKIError, self.store.verify, cert, at=NOW, dns="other.example")
        self.store.revoke("laptop", now=NOW)
        e = self.assertRaises(PKIError, self.store.verify, cert, at=NOW)
        self.assertIn("has been revoked", str(e))
        crl = self.store.make_crl(now=NOW)
        e = self.assertRaises(PKIError, pki.verify_peer, cert, ca, at=NOW, revoked=crl)
        self.assertIn("has been revoked", str(e))


class CRLTests(SynchronousTestCase):
    """L{pki.make_crl}, L{pki.is_revoked}, L{pki.verify_crl}, L{pki.parse_reason}."""

    def setUp(self) -> None:
        self.ca, self.ca_key = pki.create_ca(now=NOW)
        self.cert, _ = pki.issue_with_new_key(
            self.ca, self.ca_key, subject=pki.common_name("x"), now=NOW
        )
        self.crl = pki.make_crl(
            self.ca,
            self.ca_key,
            [pki.Revocation(self.cert.serial_number, NOW)],
            number=7,
            now=NOW,
        )

    def test_checks_the_crl(self) -> None:
        """A CRL of another CA, or past its next update, gives no answer."""
        other, other_key = pki.create_ca(now=NOW)
        foreign = pki.make_crl(other, other_key, [], number=1, now=NOW)
        e = self.assertRaises(PKIError, pki.is_revoked, self.cert, foreign, ca_cert=self.ca)
        self.assertIn("signature", str(e))
        e = self.assertRaises(
            PKIError, pki.is_revoked, self.cert, self.crl, ca_cert=self.ca, at=NOW + 8 * DAY
        )
        self.assertIn("out of date", str(e))
        self.assertTrue(pki.is_revoked(self.cert, self.crl))

    def test_formats(self) -> None:
        """CRLs load from PEM and DER."""
        for pem in (True, False):
            self.assertEqual(pki.load_crl(pki.crl_bytes(self.crl, pem=pem)), self.crl)
        self.assertRaises(PKIError, pki.load_crl, b"junk")

    def test_reasons(self) -> None:
        """Reasons are accepted by CLI name, RFC name or with underscores."""
        for text in ("key-compromise", "keyCompromise", "KEY_COMPROMISE"):
            self.assertEqual(pki.parse_reason(text), x509.ReasonFlags.key_compromise)
        self.assertEqual(pki.parse_reason("superseded"), x509.ReasonFlags.superseded)
        e = self.assertRaises(PKIError, pki.parse_reason, "remove-from-crl")
        self.assertIn("unknown revocation reason", str(e))

    def test_serials(self) -> None:
        """Serials print as OpenSSL does and parse back with or without colons."""
        self.assertEqual(pki.format_serial(0xABC), "0ABC")
        self.assertEqual(pki.parse_serial("0a:bc"), 0xABC)
        self.assertEqual(pki.parse_serial("0xABC"), 0xABC)
        self.assertIsNone(pki.parse_serial("laptop"))
        self.assertIsNone(pki.parse_serial(""))


class KeyTests(SynchronousTestCase):
    """Loading private keys."""

    def test_passphrases(self) -> None:
        """Wrong, missing and superfluous passphrases each give one sentence."""
        key = pki.generate_key()
        enc = pki.private_key_pem(key, b"secret")
        self.assertIn(b"ENCRYPTED", enc)
        self.assertEqual(pki.load_private_key(enc, b"secret").public_key(), key.public_key())
        for data, passphrase, words in (
            (enc, b"wrong", "wrong passphrase"),
            (enc, None, "no passphrase was given"),
            (pki.private_key_pem(key), b"secret", "not encrypted"),
            (b"junk", None, "cannot be read"),
        ):
            e = self.assertRaises(PKIError, pki.load_private_key, data, passphrase)
            self.assertIn(words, str(e))
            self.assertNotIn("secret", str(e))
        ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.assertRaises(PKIError, pki.load_private_key, ed)


# -- smobility-ctl pki ---------------------------------------------------------------------


class CtlTests(SynchronousTestCase):
    """The C{smobility-ctl pki} commands, end to end in a temporary directory."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.db = str(self.dir / "home.sqlite")
        self.outputs: list[str] = []

    def ctl(self, *argv: str, db: bool = True) -> tuple[int, str, str]:
        """Run one command in-process; return status, stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        args = [*argv, "--db", self.db] if db else list(argv)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = ctl_main(args)
            except SystemExit as e:
                status = int(e.code or 0)
        self.outputs += [out.getvalue(), err.getvalue()]
        return status, out.getvalue(), err.getvalue()

    def ok(self, *argv: str) -> str:
        """Run a command that must succeed; return its output."""
        status, out, err = self.ctl(*argv)
        self.assertEqual((status, err), (0, ""), out)
        return out

    def fails(self, *argv: str) -> str:
        """Run a command that must fail with one sentence; return it."""
        status, out, err = self.ctl(*argv)
        self.assertEqual(status, 1, out + err)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("smobility-ctl: "), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertNotIn("Traceback", err)
        return err

    def assertNoKeyMaterial(self, *keys: Path) -> None:
        """No output so far holds any line of the private keys' PEM."""
        text = "".join(self.outputs)
        self.assertNotIn("PRIVATE KEY", text)
        for key_path in keys:
            for line in key_path.read_text().splitlines():
                if not line.startswith("-----"):
                    self.assertNotIn(line, text)

    def test_end_to_end(self) -> None:
        """init, issue, sign-csr, list, show, revoke and crl work together."""
        out = self.ok("pki", "init", "--name", "Home CA", "--days", "100")
        self.assertIn("CN=Home CA", out)
        self.assertIn("ECDSA P-256", out)
        self.assertEqual(stat.S_IMODE(os.stat(self.db).st_mode), 0o600)

        certs = self.dir / "certs"
        out = self.ok(
            "pki",
            "issue",
            "home",
            "--server",
            "--san",
            "dns:home.example",
            "--san",
            "ip:203.0.113.5",
            "--out-dir",
            str(certs),
        )
        self.assertIn("issued home", out)
        self.ok(
            "pki",
            "issue",
            "laptop",
            "--client",
            "--san",
            "email:alice@example.org",
            "--rsa",
            "2048",
            "--days",
            "30",
            "--out-dir",
            str(certs),
        )
        key = certs / "home.key"
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE((certs / "laptop.key").stat().st_mode), 0o600)
        ca = pki.load_certificate((certs / "ca.crt").read_bytes())
        home = pki.load_certificate((certs / "home.crt").read_bytes())
        laptop = pki.load_certificate((certs / "laptop.crt").read_bytes())
        home_key = pki.load_private_key(key.read_bytes())
        self.assertEqual(home_key.public_key(), home.public_key())
        pki.verify_chain(home, ca, usage="server")
        pki.verify_peer_identity(home, dns="home.example", ip="203.0.113.5")
        pki.verify_chain(laptop, ca, usage="client")
        self.assertEqual(pki.key_description(laptop.public_key()), "RSA 2048")

        # A request made elsewhere (the key never comes here).
        csr_key = ec.generate_private_key(ec.SECP256R1())
        csr_path = self.dir / "gw.csr"
        csr_path.write_bytes(
            _csr(csr_key, "gw.example", [x509.DNSName("gw.example")]).public_bytes(
                serialization.Encoding.PEM
            )
        )
        gw_path = self.dir / "gw.crt"
        self.ok("pki", "sign-csr", str(csr_path), "--server", "--out", str(gw_path))
        gw = pki.load_certificate(gw_path.read_bytes())
        pki.verify_chain(gw, ca, usage="server")
        self.assertEqual(gw.public_key(), csr_key.public_key())

        out = self.ok("pki", "list")
        for name in ("home", "laptop", "gw.example"):
            self.assertIn(name, out)
        self.assertIn(pki.format_serial(home.serial_number), out)
        listed = json.loads(self.ok("pki", "list", "--json"))
        self.assertEqual([c["name"] for c in listed], ["home", "laptop", "gw.example"])
        self.assertEqual(listed[0]["sans"], ["dns:home.example", "ip:203.0.113.5"])
        self.assertEqual(listed[0]["usage"], "server")
        self.assertEqual({c["status"] for c in listed}, {"valid"})

        out = self.ok("pki", "show", pki.format_serial(laptop.serial_number))
        self.assertIn("email:alice@example.org", out)
        self.assertIn("BEGIN CERTIFICATE", out)
        shown = json.loads(self.ok("pki", "show", "home", "--json"))
        self.assertEqual(pki.load_certificate(shown[0]["pem"].encode()), home)

        out = self.ok("pki", "revoke", "laptop", "--reason", "superseded")
        self.assertIn(pki.format_serial(laptop.serial_number), out)
        self.assertIn("superseded", self.ok("pki", "show", "laptop"))
        self.assertEqual(json.loads(self.ok("pki", "list", "--json"))[1]["status"], "revoked")

        self.ok("pki", "crl", "--out", str(self.dir / "crl.pem"))
        self.ok("pki", "crl", "--out", str(self.dir / "crl.der"))
        pem = (self.dir / "crl.pem").read_bytes()
        der = (self.dir / "crl.der").read_bytes()
        self.assertTrue(pem.startswith(b"-----BEGIN X509 CRL-----"))
        self.assertEqual(der[0], 0x30)
        crl1, crl2 = pki.load_crl(pem), pki.load_crl(der)
        self.assertEqual((pki.crl_number(crl1), pki.crl_number(crl2)), (1, 2))
        for crl in (crl1, crl2):
            self.assertTrue(pki.is_revoked(laptop, crl, ca_cert=ca))
            self.assertFalse(pki.is_revoked(home, crl, ca_cert=ca))
        self.ok("pki", "crl", "--out", str(self.dir / "crl.bin"), "--format", "der")
        self.assertEqual((self.dir / "crl.bin").read_bytes()[0], 0x30)

        self.assertNoKeyMaterial(key, certs / "laptop.key")

    def test_passphrase(self) -> None:
        """An encrypted CA key needs its passphrase file; a wrong one is one sentence."""
        good = self.dir / "pass"
        good.write_text("correct horse battery staple\n")
        wrong = self.dir / "wrong"
        wrong.write_text("incorrect\n")
        empty = self.dir / "empty"
        empty.write_text("\n")
        out = self.ok("pki", "init", "--rsa", "2048", "--passphrase-file", str(good))
        self.assertIn("RSA 2048", out)
        self.assertIn("encrypted", out)
        certs = str(self.dir / "c")
        err = self.fails(
            "pki",
            "issue",
            "a",
            "--san",
            "dns:a.example",
            "--out-dir",
            certs,
            "--passphrase-file",
            str(wrong),
        )
        self.assertIn("wrong passphrase", err)
        self.assertNotIn("incorrect", err)
        self.assertFalse((self.dir / "c" / "a.key").exists())
        err = self.fails("pki", "issue", "a", "--out-dir", certs)
        self.assertIn("passphrase", err)
        err = self.fails(
            "pki", "crl", "--out", str(self.dir / "x.pem"), "--passphrase-file", str(empty)
        )
        self.assertIn("empty", err)
        err = self.fails(
            "pki",
            "crl",
            "--out",
            str(self.dir / "x.pem"),
            "--passphrase-file",
            str(self.dir / "none"),
        )
        self.assertIn("cannot read the passphrase file", err)
        self.ok(
            "pki",
            "issue",
            "a",
            "--san",
            "dns:a.example",
            "--out-dir",
            certs,
            "--passphrase-file",
            str(good),
        )
        self.ok("pki", "crl", "--out", str(self.dir / "x.pem"), "--passphrase-file", str(good))
        self.assertNoKeyMaterial(self.dir / "c" / "a.key")
        self.assertNotIn("correct horse", "".join(self.outputs))

    def test_missing_ca(self) -> None:
        """Without a database, or without a CA in it, commands say so in one sentence."""
        err = self.fails("pki", "list")
        self.assertIn("no state database", err)
        self.assertFalse(Path(self.db).exists())
        SQLiteStore(self.db).close()
        err = self.fails("pki", "issue", "x", "--out-dir", str(self.dir))
        self.assertIn("no certificate authority", err)
        err = self.fails("pki", "crl", "--out", str(self.dir / "c.pem"))
        self.assertIn("no certificate authority", err)
        self.assertIn("no certificates issued", self.ok("pki", "list"))

    def test_refusals(self) -> None:
        """Clear sentences for a second init, existing files, bad input, unknown serials."""
        self.ok("pki", "init")
        self.assertIn("already holds", self.fails("pki", "init"))
        certs = self.dir / "out"
        self.ok("pki", "issue", "n", "--out-dir", str(certs))
        err = self.fails("pki", "issue", "n", "--out-dir", str(certs))
        self.assertIn("already exists", err)
        self.assertIn(
            "subjectAltName",
            self.fails("pki", "issue", "m", "--san", "ftp:x", "--out-dir", str(certs)),
        )
        self.assertIn("file name", self.fails("pki", "issue", "../m", "--out-dir", str(certs)))
        self.assertIn("'zz'", self.fails("pki", "revoke", "zz"))
        self.assertIn("'zz'", self.fails("pki", "show", "zz"))
        self.assertIn(
            "unknown revocation reason", self.fails("pki", "revoke", "n", "--reason", "boredom")
        )
        bad_csr = self.dir / "bad.csr"
        bad_csr.write_bytes(b"not a request")
        self.assertIn(
            "cannot be parsed",
            self.fails(
                "pki", "sign-csr", str(bad_csr), "--client", "--out", str(self.dir / "b.crt")
            ),
        )
        self.assertIn(
            "cannot read",
            self.fails(
                "pki",
                "sign-csr",
                str(self.dir / "none.csr"),
                "--client",
                "--out",
                str(self.dir / "b.crt"),
            ),
        )
        self.ok("pki", "revoke", "n")
        self.assertIn("already revoked", self.fails("pki", "revoke", "n"))
        self.assertNoKeyMaterial(certs / "n.key")

    def test_usage_errors(self) -> None:
        """Usage errors exit with status 2 (argparse)."""
        status, _, _ = self.ctl("pki", "sign-csr", "x.csr", "--out", "y")
        self.assertEqual(status, 2)
        status, _, _ = self.ctl("pki", "init", "--rsa", "1024")
        self.assertEqual(status, 2)
        status, _, _ = self.ctl("pki", "issue", "x", "--client", "--server", "--out-dir", "d")
        self.assertEqual(status, 2)
        status, _, _ = self.ctl("pki", "crl", "--out", "x", "--days", "0")
        self.assertEqual(status, 2)

    def test_console_script(self) -> None:
        """C{python -m smobility.ctl pki ...} runs as its own process."""
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        run = subprocess.run(
            [sys.executable, "-m", "smobility.ctl", "pki", "init", "--db", self.db],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        run = subprocess.run(
            [sys.executable, "-m", "smobility.ctl", "pki", "show", "nobody", "--db", self.db],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        self.assertEqual(run.returncode, 1)
        self.assertEqual(run.stderr.count("\n"), 1, run.stderr)
