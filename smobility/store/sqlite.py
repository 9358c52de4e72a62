# -*- test-case-name: tests.test_store -*-
"""The embedded SQLite store: bindings and replay state of the home agent.

Every write is committed before the call returns (WAL journal, synchronous
FULL), so a reply is only sent for a registration that is already on disk.
"""

from __future__ import annotations

import os
import sqlite3
from ipaddress import IPv4Address
from pathlib import Path

from smobility.engines.bindings import Binding

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    node TEXT NOT NULL,
    home_address TEXT NOT NULL,
    care_of_address TEXT NOT NULL,
    lifetime INTEGER NOT NULL,
    registered REAL NOT NULL,
    expires REAL NOT NULL,
    identification TEXT NOT NULL,
    source_host TEXT NOT NULL,
    source_port INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    nat INTEGER NOT NULL,
    keepalive INTEGER NOT NULL,
    path TEXT NOT NULL,
    sa TEXT,
    PRIMARY KEY (node, care_of_address)
);
CREATE TABLE IF NOT EXISTS replay (
    node TEXT PRIMARY KEY,
    last_identification TEXT NOT NULL
);
"""


class StoreError(Exception):
    """The state database cannot be opened or has an unknown layout."""


def open_state_db(
    path: str, schema: str, *, threads: bool = False
) -> sqlite3.Connection:
    """Open (creating if needed) the state database at ``path`` with ``schema``.

    The one way every store opens the file: its directory is created 0700,
    the file 0600 before SQLite opens it (it holds key digests and password
    hashes), WAL journal, synchronous FULL (a write is on disk when the call
    returns), autocommit mode (callers open their transactions).  With
    ``threads`` the connection may be used from the reactor's thread pool
    (callers then serialise with a lock).

    @raise StoreError: one sentence naming the file.
    """
    memory = path == ":memory:"
    if not memory:
        parent = Path(path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StoreError(
                f"{path}: cannot create the state directory {parent}: {e.strerror}"
            ) from None
    try:
        if not memory and not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=not threads, timeout=10.0
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"{path}: cannot open the state database: {e}") from None
    if not memory:
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass
    return db


class SQLiteStore:
    """A :class:`~smobility.engines.bindings.BindingStore` in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._db = open_state_db(self.path, _SCHEMA)
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise StoreError(
                    f"{self.path}: state database schema {row[0]}, this version reads "
                    f"{SCHEMA_VERSION}"
                )
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the state database: {e}") from None

    def load_bindings(self) -> list[Binding]:
        rows = self._db.execute(
            "SELECT node, home_address, care_of_address, lifetime, registered, expires,"
            " identification, source_host, source_port, flags, nat, keepalive, path, sa"
            " FROM bindings ORDER BY node, registered"
        ).fetchall()
        return [
            Binding(
                node=r[0],
                home_address=IPv4Address(r[1]),
                care_of_address=IPv4Address(r[2]),
                lifetime=int(r[3]),
                registered=float(r[4]),
                expires=float(r[5]),
                identification=int(r[6]),
                source_host=r[7],
                source_port=int(r[8]),
                flags=int(r[9]),
                nat=bool(r[10]),
                keepalive=int(r[11]),
                path=r[12],
                sa=r[13],
            )
            for r in rows
        ]

    def _replace(self, node: str, bindings: list[Binding]) -> None:
        self._db.execute("DELETE FROM bindings WHERE node = ?", (node,))
        self._db.executemany(
            "INSERT INTO bindings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    b.node,
                    str(b.home_address),
                    str(b.care_of_address),
                    b.lifetime,
                    b.registered,
                    b.expires,
                    str(b.identification),
                    b.source_host,
                    b.source_port,
                    b.flags,
                    int(b.nat),
                    b.keepalive,
                    b.path,
                    b.sa,
                )
                for b in bindings
            ],
        )

    def _set_id(self, node: str, identification: int) -> None:
        self._db.execute(
            "INSERT INTO replay (node, last_identification) VALUES (?, ?)"
            " ON CONFLICT(node) DO UPDATE SET last_identification = excluded.last_identification",
            (node, str(identification)),
        )

    def replace_bindings(self, node: str, bindings: list[Binding]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._replace(node, bindings)

    def last_identification(self, node: str) -> int | None:
        row = self._db.execute(
            "SELECT last_identification FROM replay WHERE node = ?", (node,)
        ).fetchone()
        return None if row is None else int(row[0])

    def set_last_identification(self, node: str, identification: int) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._set_id(node, identification)

    def commit_registration(self, node: str, bindings: list[Binding], identification: int) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._replace(node, bindings)
            self._set_id(node, identification)

    def close(self) -> None:
        self._db.close()
