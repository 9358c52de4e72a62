# -*- test-case-name: tests.test_socks -*-
"""SOCKS5 users of the multiplexer's ingress, in the SQLite state database.

Passwords are kept as scrypt hashes in a self-describing string
``scrypt$N$r$p$SALT$HASH`` (salt and hash in standard base64), so the cost
can be raised later without breaking the hashes already stored.  The table
``socks_users`` lives next to the other tables of the state database and is
created when missing; every write is committed before the call returns.

Names and passwords follow RFC 1929: each is 1 to 255 bytes (UTF-8).
Passwords are never logged, never returned, and only compared in constant
time; :meth:`UserStore.verify` costs one scrypt run whether or not the user
exists, so timing does not tell which names are known.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time

from smobility.store.sqlite import open_state_db

#: scrypt cost of new hashes: N (CPU/memory cost), r (block size), p (parallelism).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
#: Upper bounds for the parameters read back from the database (a tampered
#: row must not make one login cost gigabytes).
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAXMEM = 256 * 1024 * 1024

#: RFC 1929: UNAME and PASSWD are 1 to 255 bytes.
MAX_FIELD_BYTES = 255

_SCHEMA = """
CREATE TABLE IF NOT EXISTS socks_users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
"""


class UserStoreError(Exception):
    """A user cannot be added or removed; the text is one sentence."""


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def check_name(name: str) -> None:
    """Raise L{UserStoreError} unless C{name} is a valid SOCKS5 user name."""
    raw = name.encode("utf-8")
    if not raw:
        raise UserStoreError("a SOCKS user name cannot be empty")
    if len(raw) > MAX_FIELD_BYTES:
        raise UserStoreError(
            f"a SOCKS user name is at most {MAX_FIELD_BYTES} bytes (RFC 1929); "
            f"this one has {len(raw)}"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UserStoreError("a SOCKS user name cannot contain control characters")


def check_password(password: str | bytes) -> None:
    """Raise L{UserStoreError} unless C{password} fits RFC 1929 (1 to 255 bytes)."""
    raw = _as_bytes(password)
    if not raw:
        raise UserStoreError("the password cannot be empty")
    if len(raw) > MAX_FIELD_BYTES:
        raise UserStoreError(
            f"a SOCKS password is at most {MAX_FIELD_BYTES} bytes (RFC 1929); "
            f"this one has {len(raw)}"
        )


def hash_password(password: str | bytes) -> str:
    """Return the self-describing scrypt hash string of C{password} (fresh salt)."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        _as_bytes(password), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
        maxmem=_MAXMEM, dklen=HASH_BYTES,
    )
    return "$".join(
        (
            "scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
            base64.b64encode(salt).decode("ascii"), base64.b64encode(digest).decode("ascii"),
        )
    )


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """Split a stored hash string; C{None} when it is not one we can check."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return None
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return None
    if not salt or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


class UserStore:
    """The SOCKS5 users in the state database at C{path} (created if missing).

    Safe to share between threads (the ingress checks passwords in a thread
    pool): one connection, one lock around every statement.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        # The dummy hash that unknown users are checked against, so that a
        # refusal costs the same scrypt run whether the name exists or not.
        self._dummy_salt = secrets.token_bytes(SALT_BYTES)
        self._dummy_digest = secrets.token_bytes(HASH_BYTES)
        self._db = open_state_db(self.path, _SCHEMA, threads=True)

    def add(self, name: str, password: str | bytes) -> None:
        """Add the user C{name} with C{password}; refuse an existing name."""
        check_name(name)
        check_password(password)
        hashed = hash_password(password)
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute(
                        "INSERT INTO socks_users (name, hash, created, disabled)"
                        " VALUES (?, ?, ?, 0)",
                        (name, hashed, time.time()),
                    )
            except sqlite3.IntegrityError:
                raise UserStoreError(f"the SOCKS user {name!r} already exists") from None

    def remove(self, name: str) -> None:
        """Remove the user C{name}; L{UserStoreError} if there is none."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute("DELETE FROM socks_users WHERE name = ?", (name,))
            removed = cursor.rowcount
        if removed == 0:
            raise UserStoreError(f"there is no SOCKS user {name!r}")

    def list(self) -> list[tuple[str, float]]:
        """Every user as C{(name, created)} (seconds since the epoch), sorted by name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, created FROM socks_users ORDER BY name"
            ).fetchall()
        return [(str(r[0]), float(r[1])) for r in rows]

    def verify(self, name: str | bytes, password: str | bytes) -> bool:
        """Return whether C{password} is the password of the enabled user C{name}.

        Always runs scrypt once, against a dummy hash when the user is unknown,
        disabled or its row unreadable, and compares with
        L{hmac.compare_digest}.
        """
        raw_password = _as_bytes(password)
        stored: str | None = None
        enabled = False
        try:
            text_name = name.decode("utf-8") if isinstance(name, bytes) else name
        except UnicodeDecodeError:
            text_name = None
        if text_name is not None:
            with self._lock:
                row = self._db.execute(
                    "SELECT hash, disabled FROM socks_users WHERE name = ?", (text_name,)
                ).fetchone()
            if row is not None:
                stored, enabled = str(row[0]), not row[1]
        parsed = _parse_hash(stored) if stored is not None else None
        if parsed is None:
            n, r, p, salt, expected = (
                SCRYPT_N, SCRYPT_R, SCRYPT_P, self._dummy_salt, self._dummy_digest
            )
            enabled = False
        else:
            n, r, p, salt, expected = parsed
        digest = hashlib.scrypt(
            raw_password, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(expected)
        )
        return hmac.compare_digest(digest, expected) and enabled

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
