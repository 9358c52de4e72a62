# -*- test-case-name: tests.test_pki -*-
"""The home server's certificate authority, kept in its SQLite state database.

Tables (all prefixed ``pki_``, so they share the file with the bindings of
:mod:`smobility.store.sqlite`):

``pki_meta``
    key/value: the layout version and the last CRL number.
``pki_ca``
    the one CA: certificate (PEM), private key (PKCS#8 PEM, encrypted with a
    passphrase when one was given at creation), whether it is encrypted.
``pki_certs``
    every certificate issued: serial (hex), name, subject, subjectAltNames,
    validity, usage, when and why revoked, PEM.
``pki_crls``
    every CRL published: number, this and next update, DER.

The database file holds the CA's private key: it is created with mode 0600
(SQLite gives its journal files the same mode).  Every write is one
transaction, committed before the call returns.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from smobility import pki
from smobility.pki import PKIError, PrivateKey, Profile

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pki_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pki_ca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    key_encrypted INTEGER NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pki_certs (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    subject TEXT NOT NULL,
    sans TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    usage TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    revoked_at TEXT,
    reason TEXT,
    pem TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pki_certs_name ON pki_certs (name);
CREATE TABLE IF NOT EXISTS pki_crls (
    number INTEGER PRIMARY KEY,
    this_update TEXT NOT NULL,
    next_update TEXT NOT NULL,
    der BLOB NOT NULL
);
"""


def _iso(t: datetime.datetime) -> str:
    return pki.utc(t).isoformat(timespec="seconds")


def _from_iso(text: str) -> datetime.datetime:
    return pki.utc(datetime.datetime.fromisoformat(text))


@dataclass(frozen=True)
class IssuedCertificate:
    """One row of the issued-certificates table."""

    serial: int
    name: str
    subject: str
    sans: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    usage: str
    issued_at: datetime.datetime
    revoked_at: datetime.datetime | None
    reason: str | None
    pem: bytes

    @property
    def serial_hex(self) -> str:
        """The serial number as OpenSSL prints it."""
        return pki.format_serial(self.serial)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate itself."""
        return pki.load_certificate(self.pem)

    def status(self, at: pki.When = None) -> str:
        """``revoked``, ``expired`` or ``valid`` at ``at`` (default now)."""
        if self.revoked_at is not None:
            return "revoked"
        if pki.utc(at) > self.not_after:
            return "expired"
        return "valid"


_CERT_COLUMNS = (
    "serial, name, subject, sans, not_before, not_after, usage, issued_at, revoked_at, reason, pem"
)


def _row(r: tuple[Any, ...]) -> IssuedCertificate:
    return IssuedCertificate(
        serial=int(r[0], 16),
        name=r[1],
        subject=r[2],
        sans=tuple(json.loads(r[3])),
        not_before=_from_iso(r[4]),
        not_after=_from_iso(r[5]),
        usage=r[6],
        issued_at=_from_iso(r[7]),
        revoked_at=None if r[8] is None else _from_iso(r[8]),
        reason=r[9],
        pem=r[10].encode("ascii"),
    )


class PKIStore:
    """The CA, its issued certificates and its CRLs in one SQLite file.

    ``create=False`` refuses a path that does not exist yet (the commands
    that only read should not leave an empty database behind).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = str(path)
        memory = self.path == ":memory:"
        if not memory:
            p = Path(self.path)
            if not p.exists():
                if not create:
                    raise PKIError(f"there is no state database at {self.path}")
                try:
                    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    # Created private before SQLite opens it: it will hold the CA key.
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass
                except OSError as e:
                    raise PKIError(
                        f"cannot create the state database {self.path}: {e.strerror}"
                    ) from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            if not memory:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM pki_meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT OR IGNORE INTO pki_meta (key, value) VALUES ('schema', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise PKIError(
                    f"{self.path}: certificate authority tables of layout {row[0]}, this "
                    f"version reads {SCHEMA_VERSION}"
                )
        except sqlite3.Error as e:
            raise PKIError(f"cannot open the state database {self.path}: {e}") from None
        if not memory:
            try:
                os.chmod(self.path, 0o600)
            except OSError:
                pass

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- the CA ------------------------------------------------------------------

    def has_ca(self) -> bool:
        """Whether a CA has been created in this database."""
        return self._db.execute("SELECT 1 FROM pki_ca WHERE id = 1").fetchone() is not None

    def init_ca(
        self,
        name: str = "smobility CA",
        *,
        rsa_bits: int | None = None,
        days: int = pki.CA_DAYS,
        passphrase: bytes | None = None,
        now: pki.When = None,
    ) -> x509.Certificate:
        """Create the CA (ECDSA P-256 unless ``rsa_bits``); refuse if there is one."""
        if self.has_ca():
            raise PKIError(f"{self.path} already holds a certificate authority")
        if passphrase is not None and not passphrase:
            raise PKIError("the CA passphrase is empty")
        cert, key = pki.create_ca(name, rsa_bits=rsa_bits, days=days, now=now)
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO pki_ca (id, cert_pem, key_pem, key_encrypted, created)"
                    " VALUES (1, ?, ?, ?, ?)",
                    (
                        pki.certificate_pem(cert).decode("ascii"),
                        pki.private_key_pem(key, passphrase).decode("ascii"),
                        int(passphrase is not None),
                        _iso(pki.utc(now)),
                    ),
                )
        except sqlite3.IntegrityError:
            raise PKIError(f"{self.path} already holds a certificate authority") from None
        return cert

    def _ca_row(self) -> tuple[str, str, int]:
        row = self._db.execute(
            "SELECT cert_pem, key_pem, key_encrypted FROM pki_ca WHERE id = 1"
        ).fetchone()
        if row is None:
            raise PKIError(
                f"there is no certificate authority in {self.path}: create one with "
                "'smobility-ctl pki init'"
            )
        return str(row[0]), str(row[1]), int(row[2])

    def ca_certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return pki.load_certificate(self._ca_row()[0].encode("ascii"))

    def ca_key_encrypted(self) -> bool:
        """Whether the CA key is stored encrypted (a passphrase is needed to sign)."""
        return bool(self._ca_row()[2])

    def ca_key(self, passphrase: bytes | None = None) -> PrivateKey:
        """The CA's private key, decrypted with ``passphrase`` when it is encrypted."""
        _, key_pem, encrypted = self._ca_row()
        if encrypted and passphrase is None:
            raise PKIError(
                f"the CA key in {self.path} is encrypted: a passphrase is needed to sign"
            )
        if not encrypted:
            passphrase = None
        return pki.load_private_key(
            key_pem.encode("ascii"), passphrase, what=f"the CA key in {self.path}"
        )

    # -- issuing -----------------------------------------------------------------

    def _record(self, name: str, cert: x509.Certificate, now: pki.When) -> None:
        sans = [pki.format_san(n) for n in pki.subject_alt_names(cert)]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                f"INSERT INTO pki_certs ({_CERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,NULL,NULL,?)",  # noqa: S608
                (
                    pki.format_serial(cert.serial_number),
                    name,
                    cert.subject.rfc4514_string(),
                    json.dumps(sans),
                    _iso(cert.not_valid_before_utc),
                    _iso(cert.not_valid_after_utc),
                    pki.profile_of(cert),
                    _iso(pki.utc(now)),
                    pki.certificate_pem(cert).decode("ascii"),
                ),
            )

    def issue(
        self,
        name: str,
        *,
        sans: list[x509.GeneralName] | tuple[x509.GeneralName, ...] = (),
        profile: Profile = "both",
        days: int = pki.CERT_DAYS,
        rsa_bits: int | None = None,
        subject: x509.Name | None = None,
        passphrase: bytes | None = None,
        now: pki.When = None,
    ) -> tuple[x509.Certificate, PrivateKey]:
        """Make a key and issue and record a certificate under ``name``.

        The subject is ``CN=name`` unless ``subject`` is given.  The caller
        writes the key where it belongs; the store keeps only the certificate.
        """
        ca_cert = self.ca_certificate()
        ca_key = self.ca_key(passphrase)
        cert, key = pki.issue_with_new_key(
            ca_cert,
            ca_key,
            subject=subject if subject is not None else pki.common_name(name),
            sans=sans,
            profile=profile,
            days=days,
            rsa_bits=rsa_bits,
            now=now,
        )
        self._record(name, cert, now)
        return cert, key

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        profile: Profile,
        name: str | None = None,
        sans: list[x509.GeneralName] | None = None,
        days: int = pki.CERT_DAYS,
        passphrase: bytes | None = None,
        now: pki.When = None,
    ) -> x509.Certificate:
        """Issue and record a certificate for a request; ``name`` defaults to its CN."""
        ca_cert = self.ca_certificate()
        ca_key = self.ca_key(passphrase)
        cert = pki.sign_csr(ca_cert, ca_key, csr, profile=profile, sans=sans, days=days, now=now)
        if name is None:
            cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            name = str(cns[0].value) if cns else pki.format_serial(cert.serial_number)
        self._record(name, cert, now)
        return cert

    # -- looking up ----------------------------------------------------------------

    def certificates(self) -> list[IssuedCertificate]:
        """Every issued certificate, oldest first."""
        rows = self._db.execute(
            f"SELECT {_CERT_COLUMNS} FROM pki_certs ORDER BY issued_at, rowid"  # noqa: S608
        ).fetchall()
        return [_row(r) for r in rows]

    def get(self, serial: int) -> IssuedCertificate | None:
        """The certificate with this serial number, or ``None``."""
        row = self._db.execute(
            f"SELECT {_CERT_COLUMNS} FROM pki_certs WHERE serial = ?",  # noqa: S608
            (pki.format_serial(serial),),
        ).fetchone()
        return None if row is None else _row(row)

    def find(self, serial_or_name: str) -> list[IssuedCertificate]:
        """Certificates by serial number (hex) or, failing that, by name."""
        serial = pki.parse_serial(serial_or_name)
        if serial is not None:
            found = self.get(serial)
            if found is not None:
                return [found]
        rows = self._db.execute(
            f"SELECT {_CERT_COLUMNS} FROM pki_certs WHERE name = ?"  # noqa: S608
            " ORDER BY issued_at, rowid",
            (serial_or_name,),
        ).fetchall()
        return [_row(r) for r in rows]

    # -- revocation ----------------------------------------------------------------

    def revoke(
        self,
        serial_or_name: str,
        *,
        reason: x509.ReasonFlags | None = None,
        now: pki.When = None,
    ) -> list[IssuedCertificate]:
        """Revoke a certificate by serial, or every unrevoked one of a name.

        Returns the certificates revoked now.  Publish a new CRL afterwards
        (:meth:`make_crl`); the home agent sees the revocation at once through
        :meth:`is_revoked`.
        """
        found = self.find(serial_or_name)
        if not found:
            raise PKIError(f"no certificate has the serial number or name {serial_or_name!r}")
        todo = [c for c in found if c.revoked_at is None]
        if not todo:
            c = found[-1]
            assert c.revoked_at is not None
            raise PKIError(
                f"certificate {c.serial_hex} ({c.name}) was already revoked on "
                f"{c.revoked_at.isoformat(timespec='seconds')}"
                if len(found) == 1
                else f"every certificate named {serial_or_name!r} is already revoked"
            )
        when = pki.utc(now)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE pki_certs SET revoked_at = ?, reason = ?"
                " WHERE serial = ? AND revoked_at IS NULL",
                [
                    (_iso(when), None if reason is None else reason.value, c.serial_hex)
                    for c in todo
                ],
            )
        out = []
        for c in todo:
            again = self.get(c.serial)
            assert again is not None
            out.append(again)
        return out

    def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with this serial number has been revoked.

        What the home agent asks at IKE_AUTH (pass it as ``revoked=`` to
        :func:`smobility.pki.verify_peer`); unknown serials are not revoked.
        """
        row = self._db.execute(
            "SELECT revoked_at FROM pki_certs WHERE serial = ?", (pki.format_serial(serial),)
        ).fetchone()
        return row is not None and row[0] is not None

    def revocations(self) -> list[pki.Revocation]:
        """Every revocation, for a CRL."""
        rows = self._db.execute(
            "SELECT serial, revoked_at, reason FROM pki_certs WHERE revoked_at IS NOT NULL"
            " ORDER BY revoked_at, rowid"
        ).fetchall()
        return [
            pki.Revocation(
                serial=int(r[0], 16),
                revoked_at=_from_iso(r[1]),
                reason=None if r[2] is None else x509.ReasonFlags(r[2]),
            )
            for r in rows
        ]

    def make_crl(
        self,
        *,
        passphrase: bytes | None = None,
        days: int = pki.CRL_DAYS,
        now: pki.When = None,
    ) -> x509.CertificateRevocationList:
        """Sign and record a new CRL with the next CRL number."""
        ca_cert = self.ca_certificate()
        ca_key = self.ca_key(passphrase)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM pki_meta WHERE key = 'crl_number'").fetchone()
            number = 1 if row is None else int(row[0]) + 1
            crl = pki.make_crl(
                ca_cert, ca_key, self.revocations(), number=number, days=days, now=now
            )
            nxt = crl.next_update_utc
            assert nxt is not None
            self._db.execute(
                "INSERT INTO pki_meta (key, value) VALUES ('crl_number', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(number),),
            )
            self._db.execute(
                "INSERT INTO pki_crls (number, this_update, next_update, der) VALUES (?,?,?,?)",
                (
                    number,
                    _iso(crl.last_update_utc),
                    _iso(nxt),
                    pki.crl_bytes(crl, pem=False),
                ),
            )
        return crl

    def latest_crl(self) -> x509.CertificateRevocationList | None:
        """The last CRL published, or ``None``."""
        row = self._db.execute("SELECT der FROM pki_crls ORDER BY number DESC LIMIT 1").fetchone()
        return None if row is None else pki.load_crl(bytes(row[0]))

    # -- verification --------------------------------------------------------------

    def verify(
        self,
        cert: x509.Certificate,
        *,
        at: pki.When = None,
        usage: pki.Usage | None = None,
        dns: str | None = None,
        ip: str | IPv4Address | IPv6Address | None = None,
        email: str | None = None,
        subject: x509.Name | bytes | None = None,
    ) -> None:
        """:func:`smobility.pki.verify_peer` against this CA and its live revocations."""
        pki.verify_peer(
            cert,
            self.ca_certificate(),
            at=at,
            usage=usage,
            revoked=self.is_revoked,
            dns=dns,
            ip=ip,
            email=email,
            subject=subject,
        )
