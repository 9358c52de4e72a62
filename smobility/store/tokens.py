# -*- test-case-name: tests.test_mux -*-
"""Credentials of the multiplexer's HTTP tunnel, in the SQLite state database.

The home server issues each client a name and a token: 32 random bytes,
shown once as 64 hex digits.  Only the SHA-256 digest of the token is kept
(table ``mux_tokens(name PRIMARY KEY, token_sha256, created)``), so the
database does not hold anything a client could present.  A client presents
``Authorization: Smobility <name>:<token-hex>`` on every request;
:meth:`TokenStore.verify` compares digests with :func:`hmac.compare_digest`,
against a dummy digest when the name is unknown, so timing does not tell
which names exist.  A token has full entropy, so a plain hash suffices: there
is nothing to slow down by stretching.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass

from smobility.store.sqlite import open_state_db

__all__ = [
    "NAME_RE",
    "TOKEN_BYTES",
    "TokenInfo",
    "TokenStore",
    "TokenStoreError",
    "check_name",
]

TOKEN_BYTES = 32
"""Random bytes in a token (shown as twice as many hex digits)."""

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a credential name may be: it sits before the ``:`` in the header."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mux_tokens (
    name TEXT PRIMARY KEY,
    token_sha256 BLOB NOT NULL,
    created REAL NOT NULL
);
"""


class TokenStoreError(Exception):
    """A credential cannot be issued or revoked; the text is one sentence."""


@dataclass(frozen=True)
class TokenInfo:
    """What is known about an issued credential (never the token itself)."""

    name: str
    created: float
    """Seconds since the epoch."""


def check_name(name: str) -> None:
    """Raise :class:`TokenStoreError` unless ``name`` can name a credential."""
    if NAME_RE.fullmatch(name) is None:
        raise TokenStoreError(
            f"{name[:64]!r} is not a valid credential name; expected 1 to 64 characters "
            "from A-Z, a-z, 0-9, '_', '.', '-'"
        )


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenStore:
    """The multiplexer credentials in the state database at ``path``.

    The file is created (mode 0600) with its table when missing.  One
    connection, one lock around every statement, so it may be shared with a
    thread pool.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        # Unknown names are compared against this, never equal to a real digest.
        self._dummy = secrets.token_bytes(32)
        self._db = open_state_db(self.path, _SCHEMA, threads=True)

    def issue(self, name: str, *, replace: bool = False) -> str:
        """Issue a new token for ``name`` and return it as hex (the only copy).

        :param replace: replace the token of an existing name; otherwise an
            existing name is refused.
        :raises TokenStoreError: for a bad name or an existing one.
        """
        check_name(name)
        token = secrets.token_bytes(TOKEN_BYTES)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            exists = self._db.execute(
                "SELECT 1 FROM mux_tokens WHERE name = ?", (name,)
            ).fetchone()
            if exists is not None and not replace:
                raise TokenStoreError(
                    f"the credential {name!r} already exists; revoke it first or "
                    "issue it again with --replace"
                )
            self._db.execute(
                "INSERT INTO mux_tokens (name, token_sha256, created) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET token_sha256 = excluded.token_sha256,"
                " created = excluded.created",
                (name, _digest(token), time.time()),
            )
        return token.hex()

    def revoke(self, name: str) -> None:
        """Remove the credential ``name``.

        :raises TokenStoreError: if there is none.
        """
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            removed = self._db.execute("DELETE FROM mux_tokens WHERE name = ?", (name,)).rowcount
        if removed == 0:
            raise TokenStoreError(f"there is no credential {name[:64]!r}")

    def list(self) -> list[TokenInfo]:
        """Every credential, sorted by name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, created FROM mux_tokens ORDER BY name"
            ).fetchall()
        return [TokenInfo(str(r[0]), float(r[1])) for r in rows]

    def count(self) -> int:
        """How many credentials are issued."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM mux_tokens").fetchone()
        return int(row[0])

    def verify(self, name: str, token_hex: str) -> bool:
        """Whether ``token_hex`` is the current token of ``name``.

        One SHA-256 and one constant-time compare whatever the input; a
        malformed token or unknown name is compared against a dummy digest.
        """
        try:
            token = bytes.fromhex(token_hex)
        except ValueError:
            token = b""
        well_formed = len(token) == TOKEN_BYTES
        stored: bytes | None = None
        if NAME_RE.fullmatch(name) is not None:
            with self._lock:
                row = self._db.execute(
                    "SELECT token_sha256 FROM mux_tokens WHERE name = ?", (name,)
                ).fetchone()
            if row is not None and isinstance(row[0], bytes):
                stored = row[0]
        expected = stored if stored is not None else self._dummy
        same = hmac.compare_digest(_digest(token), expected)
        return same and well_formed and stored is not None

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
