import collections
import dataclasses
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from qkdlink.host.keystore import SCHEMA_VERSION, KeyNotFound, KeyStore, KeyStoreEmpty, KeyStoreError


def new_ids(count):
    return [uuid.uuid4() for _ in range(count)]


def file_bytes(path):
    """The database file and its write-ahead log, as a reader of the disk would find them."""
    data = Path(path).read_bytes()
    wal = Path(f"{path}-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


class KeyStoreCase(unittest.TestCase):
    def setUp(self):
        directory = TemporaryDirectory(prefix="keystore-")
        self.addCleanup(directory.cleanup)
        self.dir = Path(directory.name)
        self.path = self.dir / "keys.db"

    def open(self, path=None, **kwargs):
        store = KeyStore(path or self.path, **kwargs)
        self.addCleanup(store.close)
        return store

    def add_block(self, store, units=4, *, commit=True, figures=None):
        """A block of ``units`` units of random key; returns (block id, unit ids, the units' bytes)."""
        size = store.unit_bits // 8
        block, ids, key = uuid.uuid4(), new_ids(units), os.urandom(units * size)
        store.store_block(block, key, ids, figures or {"qber": 0.01})
        if commit:
            store.commit_block(block)
        return block, ids, [key[i * size:(i + 1) * size] for i in range(units)]


class OpenTestCase(KeyStoreCase):
    def test_files_readable_by_owner_only(self):
        old = os.umask(0o022)
        try:
            store = self.open()
            self.add_block(store)
        finally:
            os.umask(old)
        for path in (self.path, Path(f"{self.path}-wal")):
            self.assertEqual(path.stat().st_mode & 0o777, 0o600, path)

    def test_create_and_reopen(self):
        with KeyStore(self.path, unit_bits=512) as store:
            self.assertEqual(store.unit_bits, 512)
        with KeyStore(self.path, unit_bits=512) as store:
            self.assertEqual(store.unit_bits, 512)
        with KeyStore(self.path, unit_bits=None) as store:      # the store's own value
            self.assertEqual(store.unit_bits, 512)
        # Read back without qkdlink: the layout the issue asks for.
        db = sqlite3.connect(self.path)
        try:
            self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
            self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
            self.assertEqual(db.execute("SELECT value FROM meta WHERE name = 'unit_bits'").fetchone()[0], 512)
        finally:
            db.close()

    def test_connection_settings(self):
        store = self.open()
        pragmas = {name: store._db.execute(f"PRAGMA {name}").fetchone()[0]
                   for name in ("journal_mode", "synchronous", "secure_delete", "foreign_keys")}
        self.assertEqual(pragmas, {"journal_mode": "wal", "synchronous": 2, "secure_delete": 1, "foreign_keys": 1})

    def test_unit_bits_mismatch(self):
        KeyStore(self.path).close()                             # default: 256
        with self.assertRaisesRegex(KeyStoreError, r"holds 256-bit units, not 128-bit; open it with unit_bits=256"):
            KeyStore(self.path, unit_bits=128)

    def test_bad_unit_bits(self):
        for unit_bits in (0, -8, 12, 1.5, True, "256"):
            with self.subTest(unit_bits=unit_bits):
                with self.assertRaisesRegex(ValueError, r"unit_bits must be a positive multiple of 8"):
                    KeyStore(self.path, unit_bits=unit_bits)
        self.assertFalse(self.path.exists())

    def test_open_existing_only(self):
        with self.assertRaisesRegex(KeyStoreError, r"no key store there"):
            KeyStore(self.path, unit_bits=None)
        self.assertFalse(self.path.exists())
        self.path.touch()
        with self.assertRaisesRegex(KeyStoreError, r"an empty file, not a key store"):
            KeyStore(self.path, unit_bits=None)
        self.assertEqual(self.path.read_bytes(), b"")
        with KeyStore(self.path) as store:                      # an empty file becomes a new store
            self.assertEqual(store.unit_bits, 256)

    def test_not_a_store(self):
        garbage = self.dir / "garbage.db"
        garbage.write_bytes(random.Random(1).randbytes(8192))
        text = self.dir / "text.db"
        text.write_text("hello\n" * 100)
        for path in (garbage, text):
            with self.subTest(path=path.name):
                with self.assertRaisesRegex(KeyStoreError, r"is not a qkdlink key store .* move it away"):
                    KeyStore(path)
        with self.assertRaisesRegex(KeyStoreError, r"cannot open the key store"):
            KeyStore(self.dir / "no such directory" / "keys.db")

    def test_foreign_database_left_alone(self):
        foreign = self.dir / "foreign.db"
        db = sqlite3.connect(foreign)
        db.execute("CREATE TABLE people (name TEXT)")
        db.execute("INSERT INTO people VALUES ('alice')")
        db.commit()
        db.close()
        before = foreign.read_bytes()
        with self.assertRaisesRegex(KeyStoreError, r"an SQLite database but not a qkdlink key store"):
            KeyStore(foreign)
        self.assertEqual(foreign.read_bytes(), before)          # not switched to WAL, not touched

    def test_other_schema_version(self):
        KeyStore(self.path).close()
        db = sqlite3.connect(self.path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
        with self.assertRaisesRegex(KeyStoreError, rf"schema version {SCHEMA_VERSION + 1}, but this qkdlink reads "
                                                   rf"version {SCHEMA_VERSION}"):
            KeyStore(self.path)

    def test_damaged_file(self):
        with KeyStore(self.path, unit_bits=64) as store:
            for _ in range(40):
                self.add_block(store, 16)
        page_size = 4096
        data = bytearray(self.path.read_bytes())
        self.assertGreater(len(data), 4 * page_size)
        data[page_size:3 * page_size] = random.Random(2).randbytes(2 * page_size)    # pages 2 and 3
        self.path.write_bytes(bytes(data))
        with self.assertRaisesRegex(KeyStoreError, r"damaged"):
            with KeyStore(self.path, unit_bits=64) as store:
                store.check()
                store.status()
                store.assign(100, master="a", slave="b")

    def test_closed(self):
        store = KeyStore(self.path)
        store.close()
        store.close()
        with self.assertRaisesRegex(KeyStoreError, r"closed"):
            store.ready_units()


class BlockTestCase(KeyStoreCase):
    def test_store_length_check(self):
        store = self.open(unit_bits=256)
        block, ids = uuid.uuid4(), new_ids(3)
        for length in (0, 95, 97, 64, 128):
            with self.subTest(length=length):
                with self.assertRaisesRegex(ValueError, rf"3 units of 256 bits take 96 key bytes, not {length}"):
                    store.store_block(block, bytes(length), ids, {})
        with self.assertRaisesRegex(ValueError, r"at least one unit"):
            store.store_block(block, b"", [], {})
        with self.assertRaisesRegex(ValueError, r"appears twice"):
            store.store_block(block, bytes(64), [ids[0], ids[0]], {})
        with self.assertRaisesRegex(TypeError, r"figures must be a dict"):
            store.store_block(block, bytes(96), ids, [0.01])
        with self.assertRaisesRegex(TypeError, r"cannot store a object as JSON"):
            store.store_block(block, bytes(96), ids, {"what": object()})
        with self.assertRaisesRegex(ValueError, r"block_id must be a UUID"):
            store.store_block("block 1", bytes(96), ids, {})
        self.assertIsNone(store.block_state(block))
        self.assertEqual(store.status()["pending"], 0)

    def test_store_is_idempotent(self):
        store = self.open(unit_bits=64)
        block, ids, key = uuid.uuid4(), new_ids(4), os.urandom(32)
        store.store_block(block, key, ids, {"qber": 0.01})
        store.store_block(block, key, ids, {"qber": 0.01})
        store.store_block(str(block), bytearray(key), [str(unit) for unit in ids], {"qber": 0.01})
        self.assertEqual(store.pending_blocks(), [block])
        self.assertEqual(store.block_units(block), ids)
        self.assertEqual(store.status()["pending"], 4)
        store.commit_block(block)
        store.store_block(block, key, ids, {"qber": 0.01})      # a late retry does not make it pending again
        self.assertEqual(store.block_state(block), "ready")
        self.assertEqual(store.ready_units(), 4)

    def test_store_conflicts(self):
        store = self.open(unit_bits=64)
        block, ids, key = uuid.uuid4(), new_ids(4), os.urandom(32)
        store.store_block(block, key, ids, {})
        other_key = bytes(byte ^ (index == 9) for index, byte in enumerate(key))    # one bit flipped
        with self.assertRaisesRegex(KeyStoreError, r"already stored with another key"):
            store.store_block(block, other_key, ids, {})
        with self.assertRaisesRegex(KeyStoreError, r"already stored with other unit ids"):
            store.store_block(block, key, ids[::-1], {})
        with self.assertRaisesRegex(KeyStoreError, r"already stored with other unit ids"):
            store.store_block(block, key[:24], ids[:3], {})
        second, reused = uuid.uuid4(), [uuid.uuid4(), ids[2]]
        with self.assertRaisesRegex(KeyStoreError, rf"unit {ids[2]} already belongs to block {block}"):
            store.store_block(second, os.urandom(16), reused, {})
        self.assertIsNone(store.block_state(second))
        self.assertIsNone(store.unit_state(reused[0]))
        self.assertEqual(store.status()["pending"], 4)

    def test_commit_and_discard(self):
        store = self.open(unit_bits=128)
        first, first_ids, _ = self.add_block(store, 3, commit=False)
        second, second_ids, _ = self.add_block(store, 5, commit=False)
        self.assertEqual(store.pending_blocks(), [first, second])
        self.assertEqual(store.block_state(first), "pending")
        self.assertEqual(store.unit_state(first_ids[0]), "pending")
        self.assertEqual(store.ready_units(), 0)
        store.commit_block(first)
        store.commit_block(first)                              # counted once
        self.assertEqual(store.block_state(first), "ready")
        self.assertEqual(store.pending_blocks(), [second])
        self.assertEqual(store.ready_units(), 3)
        with self.assertRaisesRegex(KeyStoreError, r"ready .* cannot be discarded"):
            store.discard_block(first)
        store.discard_block(second)
        store.discard_block(second)                            # already gone: nothing to do
        store.discard_block(uuid.uuid4())
        self.assertIsNone(store.block_state(second))
        self.assertEqual([store.unit_state(unit) for unit in second_ids], [None] * 5)
        self.assertEqual(store.pending_blocks(), [])
        with self.assertRaisesRegex(KeyNotFound, r"no block .* store it before committing it"):
            store.commit_block(second)
        with self.assertRaises(KeyNotFound):
            store.block_units(second)
        accounting = store.accounting()
        self.assertEqual(accounting["key_bytes_produced"], 3 * 16)
        self.assertEqual(accounting["key_bytes_discarded"], 5 * 16)

    def test_figures(self):
        @dataclasses.dataclass
        class Bound:
            length: int
            phi: float

        store = self.open(unit_bits=64)
        figures = {"qber_z": np.float64(0.0125), "leaked_bits": np.int64(1234), "n_z": (10, 20, 30),
                   "counts": np.array([1, 2, 3], np.uint32), "finite_key": Bound(np.int64(512), 0.25),
                   "eps_sec": 1e-10, "eps_cor": 1e-15, "abort_reason": None}
        _, ids, _ = self.add_block(store, 2, figures=figures)
        expected = {"qber_z": 0.0125, "leaked_bits": 1234, "n_z": [10, 20, 30], "counts": [1, 2, 3],
                    "finite_key": {"length": 512, "phi": 0.25}, "eps_sec": 1e-10, "eps_cor": 1e-15,
                    "abort_reason": None}
        self.assertEqual(store.figures(ids[1]), expected)
        store.assign(2, master="a", slave="b")
        store.take(ids, sae="a", role="master")
        self.assertEqual(store.figures(ids[0]), expected)       # the figures outlive the key
        with self.assertRaises(KeyNotFound):
            store.figures(uuid.uuid4())


class UnitTestCase(KeyStoreCase):
    def test_assign_oldest_first(self):
        store = self.open(unit_bits=64)
        blocks = [self.add_block(store, 2, commit=False) for _ in range(4)]
        for index in (2, 0, 1):                                 # commit order is not storage order
            store.commit_block(blocks[index][0])
        a, b, c = (blocks[index][1] for index in range(3))
        self.assertEqual(store.assign(3, master="m", slave="s"), [a[0], a[1], b[0]])
        self.assertEqual(store.assign(1, master="m", slave="s"), [b[1]])
        with self.assertRaisesRegex(KeyStoreEmpty, r"3 units asked for, 2 ready"):
            store.assign(3, master="m", slave="s")              # the pending block's units are not ready
        self.assertEqual(store.ready_units(), 2)
        self.assertEqual(store.assign(2, master="m", slave="s"), c)
        self.assertEqual(store.unit_state(a[0]), "assigned")
        self.assertEqual(store.unit_state(blocks[3][1][0]), "pending")
        for count in (0, -1, 1.0, True):
            with self.subTest(count=count):
                with self.assertRaisesRegex(ValueError, r"count must be a positive integer"):
                    store.assign(count, master="m", slave="s")
        with self.assertRaisesRegex(ValueError, r"master must be a non-empty string"):
            store.assign(1, master="", slave="s")

    def test_two_sides(self):
        # Alice and Bob store the same block under the same ids; the keys reach the matching SAEs.
        alice, bob = self.open(self.dir / "alice.db"), self.open(self.dir / "bob.db")
        block, ids, key = uuid.uuid4(), new_ids(6), os.urandom(6 * 32)
        for store in (alice, bob):
            store.store_block(block, key, ids, {"qber": 0.02})
            store.commit_block(block)
        assigned = alice.assign(4, master="sae-a", slave="sae-b")
        bob.assign_ids(assigned, master="sae-a", slave="sae-b")
        bob.assign_ids(assigned, master="sae-a", slave="sae-b")  # a repeated message changes nothing
        self.assertEqual(bob.ready_units(), 2)
        expected = [key[32 * i:32 * (i + 1)] for i in range(4)]
        self.assertEqual(alice.take(assigned[:2], sae="sae-a", role="master"), expected[:2])
        self.assertEqual(bob.take(assigned[1::-1], sae="sae-b", role="slave", peer="sae-a"), expected[1::-1])
        self.assertEqual(bob.take(assigned[2:], sae="sae-b", role="slave"), expected[2:])
        self.assertEqual(alice.take(assigned[2:], sae="sae-a", role="master", peer="sae-b"), expected[2:])

    def test_assign_ids_refusals(self):
        store = self.open(unit_bits=64)
        _, ids, _ = self.add_block(store, 3)
        _, pending, _ = self.add_block(store, 1, commit=False)
        store.assign_ids(ids[:1], master="a", slave="b")
        cases = {
            "unknown": ([ids[1], uuid.uuid4()], KeyNotFound, r"the stores disagree"),
            "other pair": ([ids[1], ids[0]], KeyStoreError, r"already assigned to 'a' -> 'b', not 'a' -> 'c'"),
            "pending": ([ids[1], pending[0]], KeyStoreError, r"still pending here; commit the block"),
        }
        for name, (units, error, message) in cases.items():
            with self.subTest(name):
                with self.assertRaisesRegex(error, message):
                    store.assign_ids(units, master="a", slave="c" if name == "other pair" else "b")
                self.assertEqual(store.unit_state(ids[1]), "ready")     # all or nothing

    def test_take_refusals_erase_nothing(self):
        store = self.open(unit_bits=64)
        _, ids, keys = self.add_block(store, 4)
        self.assertEqual(store.assign(2, master="a", slave="b"), ids[:2])
        self.assertEqual(store.assign(1, master="x", slave="y"), ids[2:3])
        refusals = {
            "wrong SAE": dict(unit_ids=ids[:2], sae="x", role="master"),
            "master SAE asking as slave": dict(unit_ids=ids[:2], sae="a", role="slave"),
            "slave SAE asking as master": dict(unit_ids=ids[:2], sae="b", role="master"),
            "wrong peer": dict(unit_ids=ids[:2], sae="a", role="master", peer="y"),
            "one of two assigned elsewhere": dict(unit_ids=[ids[0], ids[2]], sae="a", role="master"),
            "one of two not assigned": dict(unit_ids=[ids[0], ids[3]], sae="a", role="master"),
            "one of two unknown": dict(unit_ids=[ids[0], uuid.uuid4()], sae="a", role="master"),
            "asked twice": dict(unit_ids=[ids[0], ids[0]], sae="a", role="master"),
        }
        for name, request in refusals.items():
            with self.subTest(name):
                with self.assertRaises(KeyNotFound):
                    store.take(**request)
                self.assertEqual([store.unit_state(unit) for unit in ids],
                                 ["assigned", "assigned", "assigned", "ready"])
        self.assertEqual(store.take(ids[:2], sae="a", role="master"), keys[:2])
        with self.assertRaisesRegex(KeyNotFound, r"already delivered; a key is handed out only once"):
            store.take(ids[1:2], sae="a", role="master")
        with self.assertRaisesRegex(KeyNotFound, r"not assigned to SAE 'x'"):
            store.take(ids[1:2], sae="x", role="master")        # delivered keys of others: no more said
        self.assertEqual(store.take(ids[2:3], sae="y", role="slave"), keys[2:3])
        with self.assertRaisesRegex(ValueError, r"role must be 'master' or 'slave'"):
            store.take(ids[3:], sae="a", role="client")

    def test_taken_bytes_leave_the_files(self):
        store = self.open(unit_bits=256)
        _, ids, keys = self.add_block(store, 64)
        _, discarded_ids, discarded = self.add_block(store, 8, commit=False)
        store.assign(64, master="a", slave="b")
        store.discard_block(store.pending_blocks()[0])
        taken = set(random.Random(3).sample(range(64), 24))
        store.take([ids[i] for i in sorted(taken)], sae="a", role="master")
        data = file_bytes(self.path)                            # take() has checkpointed the log
        # 32 random bytes occur by chance in a file of this size with probability ~2^-236: a hit is the key.
        for index, key in enumerate(keys):
            with self.subTest(unit=index, taken=index in taken):
                self.assertEqual(key in data, index not in taken)   # the kept keys show the search works
        for key in discarded:
            self.assertNotIn(key, data)

    def test_status_counts(self):
        store = self.open(unit_bits=128)
        self.add_block(store, 5)
        self.add_block(store, 3)
        self.add_block(store, 2, commit=False)
        ids = store.assign(6, master="a", slave="b")
        store.take(ids[:4], sae="a", role="master")
        store.add_auth_key("a->b", bytes(100))
        store.add_auth_key("b->a", bytes(50))
        store.take_auth_key("a->b", 30)
        self.assertEqual(store.status(), {
            "unit_bits": 128, "pending": 2, "ready": 2, "assigned": 2, "delivered": 4,
            "pending_blocks": 1, "ready_blocks": 2, "ready_bits": 256,
            "key_bytes_produced": 8 * 16, "auth_bytes_available": 120, "auth_bytes_consumed": 30})


class AuthKeyTestCase(KeyStoreCase):
    def test_reserve(self):
        store = self.open()
        first, second = os.urandom(3000), os.urandom(100)      # the first spans three 1 KiB rows
        store.add_auth_key("alice->bob", first)
        store.add_auth_key("alice->bob", second)
        store.add_auth_key("bob->alice", b"\x01\x02")
        self.assertEqual(store.auth_available("alice->bob"), 3100)
        self.assertEqual(store.auth_available("nobody"), 0)
        taken = [store.take_auth_key("alice->bob", n) for n in (1000, 24, 2050, 1)]
        self.assertEqual(b"".join(taken), (first + second)[:3075])
        with self.assertRaisesRegex(KeyStoreEmpty, r"'alice->bob' holds 25 bytes, 26 asked for; refill it"):
            store.take_auth_key("alice->bob", 26)
        with self.assertRaisesRegex(KeyStoreEmpty, r"'nobody' holds 0 bytes"):
            store.take_auth_key("nobody", 1)
        self.assertEqual(store.auth_available("alice->bob"), 25)
        store.close()
        store = self.open()                                     # durable
        self.assertEqual(store.take_auth_key("alice->bob", 25), second[-25:])
        self.assertEqual(store.take_auth_key("bob->alice", 2), b"\x01\x02")
        with self.assertRaises(KeyStoreEmpty):
            store.take_auth_key("alice->bob", 1)
        self.assertEqual(store.accounting()["auth"], {
            "alice->bob": {"added": 3100, "consumed": 3100, "available": 0},
            "bob->alice": {"added": 2, "consumed": 2, "available": 0}})
        with self.assertRaisesRegex(ValueError, r"nbytes must be a positive integer"):
            store.take_auth_key("alice->bob", 0)

    def test_taken_pad_leaves_the_files(self):
        store = self.open()
        pad = os.urandom(4096)
        store.add_auth_key("a->b", pad)
        used = [store.take_auth_key("a->b", 16) for _ in range(100)]    # 1600 bytes, across two rows
        store.checkpoint()
        data = file_bytes(self.path)
        self.assertEqual(b"".join(used), pad[:1600])
        for index, piece in enumerate(used):
            self.assertNotIn(piece, data, f"pad bytes {16 * index}..{16 * index + 15}")
        self.assertIn(pad[1600:1632], data)
        self.assertIn(pad[-32:], data)


class ThreadTestCase(KeyStoreCase):
    def test_threads_never_share_a_unit(self):
        store = self.open(unit_bits=64)
        stored, taken, errors = {}, collections.defaultdict(list), []
        done = threading.Event()

        def produce():
            try:
                for _ in range(60):
                    _, ids, keys = self.add_block(store, 8)
                    stored.update(zip(ids, keys))
            except Exception as error:
                errors.append(error)
            finally:
                done.set()

        def consume(name, seed):
            rng = random.Random(seed)
            try:
                while not done.is_set() or store.ready_units():
                    try:
                        ids = store.assign(rng.randint(1, 5), master=name, slave="peer")
                    except KeyStoreEmpty:
                        time.sleep(0.001)
                        continue
                    for unit, key in zip(ids, store.take(ids, sae=name, role="master")):
                        taken[unit].append((name, key))
            except Exception as error:
                errors.append(error)

        threads = [threading.Thread(target=produce)]
        threads += [threading.Thread(target=consume, args=(f"sae{index}", index)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        self.assertFalse(any(thread.is_alive() for thread in threads))
        self.assertEqual(errors, [])
        self.assertTrue(all(len(takers) == 1 for takers in taken.values()))
        self.assertEqual(len(stored), 480)
        self.assertEqual(set(taken), set(stored))               # the consumers go on until every unit is taken
        self.assertEqual(store.ready_units(), 0)
        self.assertTrue(all(stored[unit] == takers[0][1] for unit, takers in taken.items()))
        self.assertGreater(len({takers[0][0] for takers in taken.values()}), 1)
        store.check()


# The child of the kill test: it works on the store in an endless loop and prints a line after each operation
# has returned (so a printed operation is committed); recovery first, from what the parent read of earlier runs.
_CHILD = textwrap.dedent("""
    import hashlib, json, os, random, sys, uuid
    from qkdlink.host.keystore import KeyNotFound, KeyStore

    path, plan, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)

    def say(*words):
        sys.stdout.write(" ".join(map(str, words)) + "\\n")
        sys.stdout.flush()

    def digest(data):
        return hashlib.sha256(data).hexdigest()[:16]

    def take(units):
        for unit, key in zip(units, store.take(units, sae="A", role="master")):
            say("take", unit, digest(key))

    store = KeyStore(path, unit_bits=64)
    say("open")
    for block in store.pending_blocks():
        store.commit_block(block)
        say("commit", block)
    for unit in plan["taken"]:                                  # each must be refused
        try:
            take([uuid.UUID(unit)])
        except KeyNotFound:
            pass
    for unit in plan["assigned"]:
        try:
            take([uuid.UUID(unit)])
        except KeyNotFound:
            say("gone", unit)
    while True:
        block, units, key = uuid.uuid4(), [uuid.uuid4() for _ in range(4)], os.urandom(32)
        store.store_block(block, key, units, {"qber": 0.01})
        say("store", block, *(f"{unit}:{digest(key[8 * i:8 * i + 8])}" for i, unit in enumerate(units)))
        if rng.random() < 0.1:
            say("discarding", block)                            # from here on, the block may be gone
            store.discard_block(block)
            say("discard", block)
            continue
        store.commit_block(block)
        say("commit", block)
        units = store.assign(rng.randint(1, 3), master="A", slave="B")
        say("assign", *units)
        if rng.random() < 0.7:                                  # the others are taken by a later run
            take(units)
""")


class KillTestCase(KeyStoreCase):
    """A process that works on the store is killed (SIGKILL) at random points, over and over.

    This is a simulation: the kill delays and the child's choices come from seeded pseudo-random generators, so
    every run follows the same schedule (where in the child's work a kill lands still depends on the machine's
    speed). A SIGKILL tests crashes of the process; power loss is left to SQLite's ``synchronous=FULL``, which no
    test here can cut.
    """

    KILLS = 50

    def run_child(self, plan, seed, rng):
        """Start the child, kill it at a random point, and return the lines it printed in full."""
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(self.path), json.dumps(plan), str(seed)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()

        def read():
            for line in child.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read)
        reader.start()
        printed = []
        try:
            if rng.random() < 0.15:
                time.sleep(rng.uniform(0, 0.1))                 # during start-up or recovery
            else:
                line = lines.get(timeout=10)                    # once the store is open
                self.assertEqual(line, "open\n", child.stderr.read() if line is None else line)
                printed.append(line)
                time.sleep(rng.uniform(0, 0.1))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            reader.join(timeout=10)
            child.stdout.close()
        self.assertEqual(child.returncode, -signal.SIGKILL, child.stderr.read())
        child.stderr.close()
        while (line := lines.get(timeout=1)) is not None:
            printed.append(line)
        return [line.split() for line in printed if line.endswith("\n")]   # a cut-off last line is not reported

    def test_kill_loop(self):
        rng = random.Random(20261126)
        digests = {}            # unit -> digest of its key, as stored
        self.block_units = {}   # block -> its units, as stored
        self.discarding, self.discarded, self.committed, self.assigned = set(), set(), set(), set()
        self.taken = collections.Counter()
        self.gone = set()       # found delivered by a later run: the child was killed before it could say so
        self.unreported = set()
        busy_runs = 0
        for run in range(self.KILLS):
            plan = {"taken": sorted(self.taken), "assigned": sorted(self.assigned - set(self.taken) - self.gone)}
            lines = self.run_child(plan, run, rng)
            for kind, *words in lines:
                if kind == "store":
                    units = [word.split(":") for word in words[1:]]
                    self.block_units[words[0]] = [unit for unit, _ in units]
                    digests.update(units)
                elif kind == "discarding":
                    self.discarding.add(words[0])
                elif kind == "discard":
                    self.discarded.add(words[0])
                elif kind == "commit":
                    self.committed.add(words[0])
                elif kind == "assign":
                    self.assigned.update(words)
                elif kind == "take":
                    unit, digest = words
                    self.taken[unit] += 1
                    self.assertEqual(self.taken[unit], 1, f"run {run}: unit {unit} was served twice")
                    if unit in digests:                         # else stored by a run killed before it said so
                        self.assertEqual(digest, digests[unit], f"run {run}: unit {unit} came back changed")
                elif kind == "gone":
                    self.gone.add(words[0])
            self.check_store(run)
            busy_runs += any(kind != "open" for kind, *_ in lines)
        # The loop did real work: most runs were killed in the middle of it, keys were stored and served, and
        # some kills fell between a take's commit and its report (those keys are lost, never served twice).
        self.assertGreater(busy_runs, self.KILLS // 2)
        self.assertGreater(len(self.block_units), 40)
        self.assertGreater(len(self.taken), 40)
        self.assertTrue(self.gone)

    def check_store(self, run):
        """Open a copy of the files as the kill left them (the next child meets the originals) and check them."""
        copy = self.dir / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        for suffix in ("", "-wal"):
            if Path(f"{self.path}{suffix}").exists():
                shutil.copy(f"{self.path}{suffix}", copy / f"keys.db{suffix}")
        with KeyStore(copy / "keys.db", unit_bits=64) as store:
            store.check()
            for block, units in self.block_units.items():
                state = store.block_state(block)
                if block in self.discarded:
                    self.assertIsNone(state, f"run {run}: discarded block {block} is back")
                    continue
                if block in self.discarding and state is None:
                    continue
                self.assertIn(state, ("ready",) if block in self.committed else ("pending", "ready"),
                              f"run {run}: block {block}")
                self.assertEqual([str(unit) for unit in store.block_units(block)], units)
                states = {store.unit_state(unit) for unit in units}
                self.assertTrue(states == {"pending"} if state == "pending" else "pending" not in states,
                                f"run {run}: block {block} is {state}, its units {states}")
            delivered = set()
            for unit in self.assigned:
                state = store.unit_state(unit)
                self.assertIn(state, ("assigned", "delivered"), f"run {run}: unit {unit}")
                if state == "delivered":
                    delivered.add(unit)
            for unit in list(self.taken) + list(self.gone):
                self.assertIn(unit, delivered, f"run {run}: unit {unit} was taken")
                with self.assertRaises(KeyNotFound):
                    store.take([uuid.UUID(unit)], sae="A", role="master")
            status = store.status()
            # Only units reported assigned are ever delivered; of those not reported taken, only the take the
            # child was in when it was killed is new.
            self.assertEqual(status["delivered"], len(delivered), f"run {run}")
            unreported = delivered - set(self.taken) - self.gone
            self.assertLessEqual(len(unreported - self.unreported), 3, f"run {run}")
            self.unreported = unreported
            # Every block is whole: four units, never some of them.
            self.assertEqual(status["pending"] + status["ready"] + status["assigned"] + status["delivered"],
                             4 * (status["pending_blocks"] + status["ready_blocks"]), f"run {run}")


if __name__ == "__main__":
    unittest.main()
