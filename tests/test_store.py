# -*- test-case-name: tests.test_store -*-
"""Tests for L{smobility.store.sqlite} and L{smobility.engines.bindings}.

The SQLite store lives in a temporary file; "restart" means closing it and
opening a new L{SQLiteStore} (and a new L{HomeAgent}) on the same file.
"""

from __future__ import annotations

import sqlite3
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.trial.unittest import SynchronousTestCase

from smobility.engines.bindings import Binding, BindingStore, MemoryStore
from smobility.engines.homeagent import HomeAgent
from smobility.store.sqlite import SCHEMA_VERSION, SQLiteStore, StoreError
from smobility.wire import mip
from tests.test_homeagent import (
    COA_A,
    COA_B,
    N1,
    N2,
    NOW,
    build_request,
    make_clock,
    make_ha,
    parse_reply,
    request_ident,
    signed_by,
)


def binding(
    node: str = "n1",
    coa: IPv4Address = COA_A,
    *,
    registered: float = NOW,
    lifetime: int = 600,
    identification: int = 1 << 63 | 12345,
    flags: int = 0,
    nat: bool = False,
    keepalive: int = 0,
    path: str = "direct",
    sa: str | None = None,
) -> Binding:
    """A binding of C{node} at C{coa} (home address taken from the test nodes)."""
    hoa = {"n1": N1.home_address, "n2": N2.home_address}.get(node, IPv4Address("10.10.0.99"))
    return Binding(
        node=node,
        home_address=hoa,
        care_of_address=coa,
        lifetime=lifetime,
        registered=registered,
        expires=registered + lifetime,
        identification=identification,
        source_host=str(coa),
        source_port=434,
        flags=flags,
        nat=nat,
        keepalive=keepalive,
        path=path,
        sa=sa,
    )


if TYPE_CHECKING:
    _Mixin = SynchronousTestCase
else:
    _Mixin = object


class _StoreContract(_Mixin):
    """What every L{BindingStore} does; mixed into a test case per store."""

    def make_store(self) -> BindingStore:
        raise NotImplementedError

    def test_empty(self) -> None:
        store = self.make_store()
        self.assertEqual(store.load_bindings(), [])
        self.assertIsNone(store.last_identification("n1"))

    def test_commit_registration(self) -> None:
        store = self.make_store()
        b1 = binding("n1", COA_A)
        b2 = binding("n2", COA_A, nat=True, keepalive=20, path="relay", sa="sa-1", flags=0x82)
        b3 = binding("n2", COA_B, registered=NOW + 0.25)
        store.commit_registration("n1", [b1], 7)
        store.commit_registration("n2", [b2, b3], (1 << 64) - 1)
        self.assertEqual(sorted(store.load_bindings(), key=repr), sorted([b1, b2, b3], key=repr))
        self.assertEqual(store.last_identification("n1"), 7)
        self.assertEqual(store.last_identification("n2"), (1 << 64) - 1)
        # Replacing is per node.
        store.commit_registration("n2", [b3], 8)
        self.assertEqual(sorted(store.load_bindings(), key=repr), sorted([b1, b3], key=repr))
        store.replace_bindings("n1", [])
        self.assertEqual(store.load_bindings(), [b3])
        self.assertEqual(store.last_identification("n1"), 7)
        store.set_last_identification("n1", 9)
        self.assertEqual(store.last_identification("n1"), 9)


class MemoryStoreTests(_StoreContract, SynchronousTestCase):
    """L{MemoryStore}."""

    def make_store(self) -> BindingStore:
        return MemoryStore()


class SQLiteStoreContractTests(_StoreContract, SynchronousTestCase):
    """L{SQLiteStore} keeps the same contract."""

    def make_store(self) -> BindingStore:
        store = SQLiteStore(Path(self.mktemp()) / "state.sqlite")
        self.addCleanup(store.close)
        return store


class BindingTests(SynchronousTestCase):
    """L{Binding} helpers."""

    def test_remaining(self) -> None:
        b = binding(lifetime=100)
        self.assertEqual(b.remaining(NOW + 40), 60)
        self.assertEqual(b.remaining(NOW + 400), 0)
        self.assertEqual(b.with_expiry(NOW + 1000).remaining(NOW + 400), 600)


class SQLiteStoreTests(SynchronousTestCase):
    """L{SQLiteStore} on disk: what survives a restart, and its errors."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.path = self.dir / "state" / "home.sqlite"

    def open(self) -> SQLiteStore:
        store = SQLiteStore(self.path)
        self.addCleanup(store.close)
        return store

    def test_reopen(self) -> None:
        """commit_registration, then a new store on the file sees it all."""
        store = self.open()
        b1 = binding("n1", COA_A, nat=True, keepalive=25, sa=None)
        b2 = binding("n2", COA_B, registered=NOW + 0.123456, path="relay", sa="child-7")
        store.commit_registration("n1", [b1], b1.identification)
        store.commit_registration("n2", [b2], (1 << 64) - 2)
        store.close()
        again = self.open()
        self.assertEqual(sorted(again.load_bindings(), key=repr), sorted([b1, b2], key=repr))
        self.assertEqual(again.last_identification("n1"), b1.identification)
        self.assertEqual(again.last_identification("n2"), (1 << 64) - 2)
        self.assertIsNone(again.last_identification("n3"))

    def test_private(self) -> None:
        """The state directory and file are not readable by others."""
        self.open()
        self.assertEqual(self.path.stat().st_mode & 0o077, 0)
        self.assertEqual(self.path.parent.stat().st_mode & 0o077, 0)

    def test_schema_mismatch(self) -> None:
        self.open().close()
        db = sqlite3.connect(self.path)
        with db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
        db.close()
        e = self.assertRaises(StoreError, SQLiteStore, self.path)
        self.assertIn(str(self.path), str(e))
        self.assertIn(f"schema {SCHEMA_VERSION + 1}", str(e))

    def test_unwritable_directory(self) -> None:
        """The state directory cannot be created (a file is in the way)."""
        self.dir.mkdir(parents=True)
        (self.dir / "state").write_text("not a directory")
        e = self.assertRaises(StoreError, SQLiteStore, self.path)
        self.assertIn(str(self.path), str(e))

    def test_unopenable_file(self) -> None:
        """The path names a directory: no database can be opened there."""
        self.path.mkdir(parents=True)
        e = self.assertRaises(StoreError, SQLiteStore, self.path)
        self.assertIn(str(self.path), str(e))

    def test_not_a_database(self) -> None:
        self.path.parent.mkdir(parents=True)
        self.path.write_bytes(b"this is not an SQLite database at all, not at all" * 10)
        e = self.assertRaises(StoreError, SQLiteStore, self.path)
        self.assertIn(str(self.path), str(e))


class RestartTests(SynchronousTestCase):
    """A home agent restarted over its SQLite store."""

    def setUp(self) -> None:
        self.path = Path(self.mktemp()) / "home.sqlite"
        self.clock = make_clock()

    def start(self, **kwargs: Any) -> tuple[HomeAgent, SQLiteStore]:
        store = SQLiteStore(self.path)
        self.addCleanup(store.close)
        ha = make_ha(self.clock, store, **kwargs)
        self.addCleanup(ha.stop)
        return ha, store

    def stop(self, ha: HomeAgent, store: SQLiteStore) -> None:
        ha.stop()
        store.close()

    def send(self, ha: HomeAgent, data: bytes) -> mip.RegistrationReply:
        return parse_reply(ha.handle_request(data, (str(COA_A), 434)))

    def test_restore_and_drop(self) -> None:
        """Unexpired bindings are kept and served; expired and unknown ones dropped."""
        store = SQLiteStore(self.path)
        store.commit_registration("n1", [binding("n1", COA_A, registered=NOW - 100)], 1)
        store.commit_registration("n2", [binding("n2", COA_B, registered=NOW - 700)], 2)
        store.commit_registration("ghost", [binding("ghost", COA_A)], 3)
        store.close()

        ha, store = self.start()
        self.assertEqual(list(ha.bindings), ["n1"])
        self.assertEqual(ha.bindings["n1"][0].expires, NOW + 500)
        self.assertEqual([b.node for b in store.load_bindings()], ["n1"])
        # Dropped from the file too, not just from memory.
        self.stop(ha, store)
        check = SQLiteStore(self.path)
        self.addCleanup(check.close)
        self.assertEqual([b.node for b in check.load_bindings()], ["n1"])

    def test_restored_binding_served(self) -> None:
        """A re-registration of a restored binding works, and its expiry is timed."""
        ha, store = self.start()
        self.assertEqual(self.send(ha, build_request(N1, self.clock, lifetime=600)).code, 0)
        self.stop(ha, store)
        self.clock.advance(100)

        ha, store = self.start()
        self.assertEqual([b.care_of_address for b in ha.bindings["n1"]], [COA_A])
        # The restored binding lapses on time: 600 s after it was registered.
        self.clock.advance(499.5)
        self.assertIn("n1", ha.bindings)
        reply = self.send(ha, build_request(N1, self.clock, lifetime=600))
        self.assertEqual(reply.code, mip.CODE_ACCEPTED)
        self.assertTrue(signed_by(reply, N1))
        self.assertEqual(ha.bindings["n1"][0].expires, self.clock.seconds() + 600)
        self.clock.advance(599)
        self.assertIn("n1", ha.bindings)
        self.clock.advance(1)
        self.assertNotIn("n1", ha.bindings)
        self.assertEqual(store.load_bindings(), [])

    def test_restored_binding_expires(self) -> None:
        ha, store = self.start()
        self.send(ha, build_request(N1, self.clock, lifetime=300))
        self.stop(ha, store)
        self.clock.advance(200)
        ha, store = self.start()
        self.clock.advance(99.9)
        self.assertIn("n1", ha.bindings)
        self.clock.advance(0.1)
        self.assertNotIn("n1", ha.bindings)
        self.assertEqual(store.load_bindings(), [])

    def test_replay_after_restart(self) -> None:
        """The last identification survives: an old request replayed later gets 133.

        A wide replay window makes sure it is the stored identification, not
        the clock, that refuses it.
        """
        ha, store = self.start(replay_window=3600.0)
        old = build_request(N1, self.clock, coa=COA_A)
        self.assertEqual(self.send(ha, old).code, mip.CODE_ACCEPTED)
        self.clock.advance(10)
        newer = build_request(N1, self.clock, coa=COA_B)
        self.assertEqual(self.send(ha, newer).code, mip.CODE_ACCEPTED)
        self.stop(ha, store)
        self.clock.advance(60)

        ha, store = self.start(replay_window=3600.0)
        self.assertEqual(store.last_identification("n1"), request_ident(newer))
        for data in (old, newer):
            reply = self.send(ha, data)
            self.assertEqual(reply.code, mip.CODE_HA_ID_MISMATCH)
            self.assertTrue(signed_by(reply, N1))
        self.assertEqual([b.care_of_address for b in ha.bindings["n1"]], [COA_B])
        self.assertEqual([b.care_of_address for b in store.load_bindings()], [COA_B])
        self.assertEqual(store.last_identification("n1"), request_ident(newer))
        # A fresh request is still accepted.
        self.assertEqual(self.send(ha, build_request(N1, self.clock, coa=COA_A)).code, 0)

    def test_deregistration_persists(self) -> None:
        ha, store = self.start()
        self.send(ha, build_request(N1, self.clock))
        self.send(ha, build_request(N1, self.clock, coa=N1.home_address, lifetime=0))
        self.stop(ha, store)
        ha, store = self.start()
        self.assertEqual(ha.bindings, {})
