"""The durable key store: secret key in fixed-size units with agreed UUIDs, each handed out once and then erased.

A node keeps every distilled key here until an application takes it. The store must survive ``kill -9`` and power
loss without losing a key it reported stored and without ever handing a key out twice, so it is an SQLite database
in WAL mode with ``synchronous=FULL`` (a transaction is on disk when its commit returns) and every state change is
one transaction. ``secure_delete`` makes SQLite overwrite deleted and replaced content with zeros.

Keys live in units of ``unit_bits`` bits (a multiple of 8, fixed when the store is created). Every unit has a UUID
that both sides agree on, and goes through these states::

    pending --commit_block--> ready --assign / assign_ids--> assigned --take--> delivered
       \\--discard_block--> (gone)

Alice draws the UUIDs for a block's units when the block is distilled and sends them to Bob. Both store the block
as *pending*; it becomes *ready* when both have it (:meth:`KeyStore.commit_block`). The master side (Alice's KME)
assigns ready units to a pair of SAEs (:meth:`KeyStore.assign`) and tells the slave side (Bob's KME), which records
the same assignment (:meth:`KeyStore.assign_ids`); only then may either side hand the units out
(:meth:`KeyStore.take`). A delivered unit keeps its row, so that its UUID is never served or reused, but its key
bytes are gone.

Erasure: a unit's bytes are replaced by NULL when it is taken, and SQLite zeroes the freed space in the page. The
old page image can still sit in the write-ahead log, so :meth:`KeyStore.take` ends with a truncating checkpoint:
when it returns, the bytes are in neither the database file nor the log. (That is erasure at the level of the
files; a file system or an SSD may keep old sectors. Put the store on an encrypted volume if that matters.)

The store also keeps the authentication key reserve: the one-time-pad bits of the Wegman-Carter tags, one
reserve a stream (a direction of the classical channel). Pad bytes are erased from the tables when they are taken,
before the caller uses them, so a crash can lose pad bits but never reuses them; they leave the log at the next
checkpoint (any :meth:`KeyStore.take`, :meth:`KeyStore.checkpoint` or :meth:`KeyStore.close`).

Accounting for the cost report: key bytes produced (committed) and discarded, and authentication bytes added and
consumed per stream (:meth:`KeyStore.accounting`).

One connection serves all threads of a process behind a lock; other processes (``qkd keys status``) may open the
same file at the same time, and wait for each other's transactions.
"""

import dataclasses
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path


__all__ = ["KeyStore", "KeyStoreError", "KeyStoreEmpty", "KeyNotFound", "SCHEMA_VERSION", "DEFAULT_UNIT_BITS",
           "create_private_file"]


logger = logging.getLogger(__name__)


SCHEMA_VERSION = 1                  # PRAGMA user_version of the stores this module reads and writes
DEFAULT_UNIT_BITS = 256
_APPLICATION_ID = 0x716B6473        # PRAGMA application_id: "qkds", tells a key store from another SQLite file
_AUTH_CHUNK = 1024                  # authentication key is kept in rows of at most this many bytes
_BUSY_TIMEOUT = 10.0                # seconds to wait for another process's transaction

_SCHEMA = """
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value NOT NULL
) WITHOUT ROWID;

CREATE TABLE blocks (
    seq       INTEGER PRIMARY KEY,
    id        BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
    state     TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
    key_bytes INTEGER NOT NULL,
    figures   TEXT NOT NULL,
    stored    REAL NOT NULL,
    committed REAL
);

CREATE TABLE units (
    seq       INTEGER PRIMARY KEY,      -- storage order: assign() hands out the lowest first
    id        BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
    block     INTEGER NOT NULL REFERENCES blocks (seq),
    state     TEXT NOT NULL CHECK (state IN ('pending', 'ready', 'assigned', 'delivered')),
    key       BLOB CHECK ((key IS NULL) = (state = 'delivered')),
    master    TEXT,
    slave     TEXT,
    assigned  REAL,
    delivered REAL,
    CHECK ((master IS NULL) = (state IN ('pending', 'ready'))),
    CHECK ((slave IS NULL) = (master IS NULL))
);
CREATE INDEX units_by_state ON units (state, seq);
CREATE INDEX units_by_block ON units (block);

CREATE TABLE auth_streams (
    stream   TEXT PRIMARY KEY,
    added    INTEGER NOT NULL DEFAULT 0,
    consumed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE auth_keys (
    seq    INTEGER PRIMARY KEY,
    stream TEXT NOT NULL REFERENCES auth_streams (stream),
    data   BLOB NOT NULL
);
CREATE INDEX auth_keys_by_stream ON auth_keys (stream, seq);
"""


def create_private_file(path):
    """Create ``path`` empty and readable by its owner only, unless it exists: a key store holds key material, and
    SQLite gives its log and shared-memory files the database file's mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class KeyStoreError(Exception):
    """The key store cannot do what was asked: the message says what and what to do."""


class KeyStoreEmpty(KeyStoreError):
    """Fewer units (or authentication bytes) are available than were asked for; nothing was taken."""


class KeyNotFound(KeyStoreError, LookupError):
    """A block or unit is unknown, not assigned to the asking SAE, or already delivered; nothing was changed."""


def _uuid(value, what):
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            raise ValueError(f"{what} must be a UUID, not {value!r}") from None
    raise TypeError(f"{what} must be a UUID, not {value!r}")


def _uuids(values, what):
    if isinstance(values, (str, bytes, uuid.UUID)):
        raise TypeError(f"{what} must be a list of UUIDs, not {values!r}")
    ids = [_uuid(value, what) for value in values]
    seen = set()
    for value in ids:
        if value in seen:
            raise ValueError(f"{what}: {value} appears twice")
        seen.add(value)
    return ids


def _name(value, what):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


def _count(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


def _json_value(value):
    """Figures as the protocol makes them: dataclasses (finite-key results, counts) and numpy numbers and arrays."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"figures: cannot store a {type(value).__name__} as JSON")


class KeyStore:
    """The key units of one node, with their blocks' security figures, and its authentication key reserve.

    Parameters
    ----------
    path : str or Path
        The database file; created if it does not exist. SQLite keeps ``PATH-wal`` and ``PATH-shm`` beside it.
    unit_bits : int or None
        Bits in a unit, a positive multiple of 8, fixed when the store is created; opening a store made with another
        value is an error. ``None`` opens an existing store with whatever it has (and never creates one).

    Attributes
    ----------
    path : Path
    unit_bits : int

    Raises
    ------
    KeyStoreError
        The file is not a key store, is damaged, is of another schema version, or has another ``unit_bits``.
    """

    def __init__(self, path, *, unit_bits=DEFAULT_UNIT_BITS):
        if unit_bits is not None and (isinstance(unit_bits, bool) or not isinstance(unit_bits, int) or
                                      unit_bits <= 0 or unit_bits % 8):
            raise ValueError(f"unit_bits must be a positive multiple of 8, not {unit_bits!r}")
        self.path = Path(path)
        if unit_bits is None and not self.path.is_file():
            raise KeyStoreError(f"{self.path}: no key store there; give the path of an existing store "
                                f"(a node creates its store when it starts)")
        self._lock = threading.RLock()
        try:
            if unit_bits is not None:
                create_private_file(self.path)
            self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None,
                                       check_same_thread=False)
        except (sqlite3.Error, OSError) as error:
            raise KeyStoreError(f"{self.path}: cannot open the key store: {error}") from None
        try:
            self.unit_bits = self._open(unit_bits)
        except BaseException:
            self._db.close()
            self._db = None
            raise
        logger.debug("%s: key store open, %d-bit units", self.path, self.unit_bits)

    def _open(self, unit_bits):
        db = self._db
        try:
            # Read what the file is before changing anything in it: a foreign database is left as it was.
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise KeyStoreError(f"{self.path} is not a qkdlink key store ({error}); move it away or give another "
                                f"path") from None
        if tables and application_id != _APPLICATION_ID:
            raise KeyStoreError(f"{self.path} is an SQLite database but not a qkdlink key store; move it away or "
                                f"give another path")
        if not tables and unit_bits is None:
            raise KeyStoreError(f"{self.path}: an empty file, not a key store; give the path of an existing store")
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            db.execute("PRAGMA synchronous = FULL")
            secure_delete = db.execute("PRAGMA secure_delete = ON").fetchone()[0]
            db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as error:
            raise self._error("open the key store", error) from None
        if mode.lower() != "wal" or secure_delete != 1:
            raise KeyStoreError(f"{self.path}: SQLite refused WAL mode or secure delete (journal mode {mode!r}); "
                                f"put the store on a local file system")
        with self._transaction("open the key store") as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
            if version == 0 and tables == 0:
                if unit_bits is None:       # emptied by another process since the check above
                    raise KeyStoreError(f"{self.path}: an empty file, not a key store; give the path of an "
                                        f"existing store")
                # One statement at a time: executescript() would commit the transaction first.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", [
                    ("unit_bits", unit_bits), ("created", time.time()),
                    ("key_bytes_produced", 0), ("key_bytes_discarded", 0)])
                db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                logger.info("%s: created a key store with %d-bit units", self.path, unit_bits)
                return unit_bits
            if version != SCHEMA_VERSION:
                raise KeyStoreError(f"{self.path}: key store schema version {version}, but this qkdlink reads "
                                    f"version {SCHEMA_VERSION}; open it with a matching qkdlink")
            stored = self._meta(db, "unit_bits")
            if unit_bits is not None and stored != unit_bits:
                raise KeyStoreError(f"{self.path}: the store holds {stored}-bit units, not {unit_bits}-bit; open "
                                    f"it with unit_bits={stored} or give another path for a new store")
            return stored

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _error(self, what, error):
        hint = ""
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            hint = "; another process holds the store: try again, or stop the other process"
        elif isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.OperationalError):
            hint = "; the file is damaged or not a key store: restore it, or move it away and start a new store"
        return KeyStoreError(f"{self.path}: cannot {what}: {error}{hint}")

    @contextmanager
    def _transaction(self, what, *, write=True):
        """One SQLite transaction under the lock; any SQLite error becomes a :class:`KeyStoreError`."""
        with self._lock:
            db = self._db
            if db is None:
                raise KeyStoreError(f"{self.path}: the key store is closed; open it again")
            try:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as error:
                raise self._error(what, error) from None
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as error:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(error, sqlite3.Error):
                    raise self._error(what, error) from None
                raise

    def _meta(self, db, name):
        row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyStoreError(f"{self.path}: the key store has no {name!r} in its meta table, so it is damaged; "
                                f"restore it, or move it away and start a new store")
        return row[0]

    def _block_row(self, db, block):
        return db.execute("SELECT seq, state, key_bytes FROM blocks WHERE id = ?", (block.bytes,)).fetchone()

    def close(self):
        """Checkpoint the log into the database file and close; closing twice is harmless."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._checkpoint()
            except KeyStoreError as error:
                logger.warning("%s", error)     # what is committed is safe in the log: the next open replays it
            finally:
                self._db.close()
                self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"KeyStore({str(self.path)!r}, unit_bits={getattr(self, 'unit_bits', None)})"

    # -- blocks -------------------------------------------------------------------------------------------------

    def store_block(self, block_id, key, unit_ids, figures):
        """Store a block's key as pending units, with its figures, in one transaction.

        ``key`` is split into ``len(unit_ids)`` units of ``unit_bits // 8`` bytes, in order. Storing the same
        block again (same id, same unit ids, same key) does nothing, so a retry after a lost reply is safe.

        Raises
        ------
        ValueError
            ``key`` has the wrong length, or ``unit_ids`` is empty or repeats an id.
        TypeError
            ``figures`` is not a dict, or holds something that cannot be stored as JSON.
        KeyStoreError
            The block id is already stored with other units or another key, or a unit id belongs to another block.
        """
        block = _uuid(block_id, "block_id")
        units = _uuids(unit_ids, "unit_ids")
        if not units:
            raise ValueError(f"block {block}: a block needs at least one unit")
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"block {block}: the key must be bytes, not {type(key).__name__}")
        key = bytes(key)
        size = self.unit_bits // 8
        if len(key) != len(units) * size:
            raise ValueError(f"block {block}: {len(units)} units of {self.unit_bits} bits take "
                             f"{len(units) * size} key bytes, not {len(key)}")
        if not isinstance(figures, dict):
            raise TypeError(f"block {block}: figures must be a dict, not {type(figures).__name__}")
        text = json.dumps(figures, default=_json_value)
        pieces = [key[index * size:(index + 1) * size] for index in range(len(units))]
        with self._transaction("store a block") as db:
            if self._block_row(db, block) is not None:
                self._check_same_block(db, block, units, pieces)
                return
            seq = db.execute("INSERT INTO blocks (id, state, key_bytes, figures, stored) VALUES (?, 'pending', ?, "
                             "?, ?)", (block.bytes, len(key), text, time.time())).lastrowid
            try:
                db.executemany("INSERT INTO units (id, block, state, key) VALUES (?, ?, 'pending', ?)",
                               ((unit.bytes, seq, piece) for unit, piece in zip(units, pieces)))
            except sqlite3.IntegrityError:
                for unit in units:
                    row = db.execute("SELECT blocks.id FROM units JOIN blocks ON units.block = blocks.seq "
                                     "WHERE units.id = ? AND blocks.seq != ?", (unit.bytes, seq)).fetchone()
                    if row is not None:
                        raise KeyStoreError(f"block {block}: unit {unit} already belongs to block "
                                            f"{uuid.UUID(bytes=row[0])}; every unit needs a fresh UUID") from None
                raise
        logger.debug("%s: stored block %s, %d units", self.path, block, len(units))

    def _check_same_block(self, db, block, units, pieces):
        rows = db.execute("SELECT units.id, units.key FROM units JOIN blocks ON units.block = blocks.seq "
                          "WHERE blocks.id = ? ORDER BY units.seq", (block.bytes,)).fetchall()
        if [uuid.UUID(bytes=row[0]) for row in rows] != units:
            raise KeyStoreError(f"block {block} is already stored with other unit ids; a block id names one "
                                f"block: draw a new one, or discard the old block if it is still pending")
        for (_, stored), piece in zip(rows, pieces):
            if stored is not None and not hmac.compare_digest(stored, piece):
                raise KeyStoreError(f"block {block} is already stored with another key; a block id names one "
                                    f"block: draw a new one, or discard the old block if it is still pending")

    def commit_block(self, block_id):
        """Make a pending block's units ready (both sides hold the block); committing a ready block does nothing.

        Raises
        ------
        KeyNotFound
            No such block.
        """
        block = _uuid(block_id, "block_id")
        with self._transaction("commit a block") as db:
            row = self._block_row(db, block)
            if row is None:
                raise KeyNotFound(f"no block {block} in the key store; store it before committing it")
            seq, state, key_bytes = row
            if state == "ready":
                return
            db.execute("UPDATE blocks SET state = 'ready', committed = ? WHERE seq = ?", (time.time(), seq))
            db.execute("UPDATE units SET state = 'ready' WHERE block = ?", (seq,))
            db.execute("UPDATE meta SET value = value + ? WHERE name = 'key_bytes_produced'", (key_bytes,))
        logger.debug("%s: committed block %s", self.path, block)

    def discard_block(self, block_id):
        """Erase a pending block and its units (the peer never got it); an unknown block is ignored.

        Raises
        ------
        KeyStoreError
            The block is ready: both sides hold it, so dropping it here would make the stores disagree.
        """
        block = _uuid(block_id, "block_id")
        with self._transaction("discard a block") as db:
            row = self._block_row(db, block)
            if row is None:
                return
            seq, state, key_bytes = row
            if state != "pending":
                raise KeyStoreError(f"block {block} is ready (both sides hold it) and cannot be discarded; only a "
                                    f"pending block can")
            db.execute("DELETE FROM units WHERE block = ?", (seq,))
            db.execute("DELETE FROM blocks WHERE seq = ?", (seq,))
            db.execute("UPDATE meta SET value = value + ? WHERE name = 'key_bytes_discarded'", (key_bytes,))
        logger.debug("%s: discarded block %s", self.path, block)

    def pending_blocks(self):
        """The ids of the pending blocks, oldest first."""
        with self._transaction("list pending blocks", write=False) as db:
            rows = db.execute("SELECT id FROM blocks WHERE state = 'pending' ORDER BY seq").fetchall()
        return [uuid.UUID(bytes=row[0]) for row in rows]

    def block_state(self, block_id):
        """``"pending"``, ``"ready"``, or ``None`` for a block that is not in the store."""
        block = _uuid(block_id, "block_id")
        with self._transaction("read a block", write=False) as db:
            row = self._block_row(db, block)
        return None if row is None else row[1]

    def block_units(self, block_id):
        """The unit ids of a block, in key order.

        Raises
        ------
        KeyNotFound
            No such block.
        """
        block = _uuid(block_id, "block_id")
        with self._transaction("read a block", write=False) as db:
            row = self._block_row(db, block)
            if row is None:
                raise KeyNotFound(f"no block {block} in the key store")
            rows = db.execute("SELECT id FROM units WHERE block = ? ORDER BY seq", (row[0],)).fetchall()
        return [uuid.UUID(bytes=row[0]) for row in rows]

    # -- units --------------------------------------------------------------------------------------------------

    def unit_state(self, unit_id):
        """``"pending"``, ``"ready"``, ``"assigned"``, ``"delivered"``, or ``None`` for an unknown unit."""
        unit = _uuid(unit_id, "unit_id")
        with self._transaction("read a unit", write=False) as db:
            row = db.execute("SELECT state FROM units WHERE id = ?", (unit.bytes,)).fetchone()
        return None if row is None else row[0]

    def ready_units(self):
        """The number of units that are ready and not assigned."""
        with self._transaction("count units", write=False) as db:
            return db.execute("SELECT count(*) FROM units WHERE state = 'ready'").fetchone()[0]

    def assign(self, count, *, master, slave):
        """Master side: assign the ``count`` oldest ready units to the SAE pair (``master``, ``slave``), atomically.

        Returns
        -------
        list of UUID
            The units, oldest first; tell the slave side (:meth:`assign_ids`) before handing any out.

        Raises
        ------
        KeyStoreEmpty
            Fewer than ``count`` units are ready; nothing was assigned.
        """
        _count(count, "count")
        _name(master, "master")
        _name(slave, "slave")
        with self._transaction("assign units") as db:
            rows = db.execute("SELECT seq, id FROM units WHERE state = 'ready' ORDER BY seq LIMIT ?",
                              (count,)).fetchall()
            if len(rows) < count:
                raise KeyStoreEmpty(f"{count} units asked for, {len(rows)} ready; wait for the link to distil "
                                    f"more key, or ask for fewer")
            now = time.time()
            db.executemany("UPDATE units SET state = 'assigned', master = ?, slave = ?, assigned = ? WHERE seq = ?",
                           ((master, slave, now, seq) for seq, _ in rows))
        return [uuid.UUID(bytes=unit) for _, unit in rows]

    def assign_ids(self, unit_ids, *, master, slave):
        """Slave side: record the master side's assignment of ``unit_ids`` to (``master``, ``slave``), atomically.

        Recording the same assignment again does nothing, so a repeated message is harmless.

        Raises
        ------
        KeyNotFound
            A unit is not in the store (the stores disagree); nothing was assigned.
        KeyStoreError
            A unit is in a block that is still pending here, or is assigned to another pair; nothing was assigned.
        """
        units = _uuids(unit_ids, "unit_ids")
        _name(master, "master")
        _name(slave, "slave")
        with self._transaction("assign units") as db:
            todo = []
            for unit in units:
                row = db.execute("SELECT seq, state, master, slave FROM units WHERE id = ?",
                                 (unit.bytes,)).fetchone()
                if row is None:
                    raise KeyNotFound(f"no unit {unit} in the key store; the peer assigned a unit this side does "
                                      f"not hold, so the stores disagree")
                seq, state, assigned_master, assigned_slave = row
                if state == "pending":
                    raise KeyStoreError(f"unit {unit} is in a block that is still pending here; commit the block "
                                        f"before assigning its units")
                if state == "ready":
                    todo.append(seq)
                elif (assigned_master, assigned_slave) != (master, slave):
                    raise KeyStoreError(f"unit {unit} is already assigned to {assigned_master!r} -> "
                                        f"{assigned_slave!r}, not {master!r} -> {slave!r}; the stores disagree")
            now = time.time()
            db.executemany("UPDATE units SET state = 'assigned', master = ?, slave = ?, assigned = ? WHERE seq = ?",
                           ((master, slave, now, seq) for seq in todo))

    def take(self, unit_ids, *, sae, role, peer=None):
        """Hand the units' bytes to the SAE they are assigned to, and erase them, atomically.

        Parameters
        ----------
        unit_ids : list of UUID
        sae : str
            The asking SAE: the master SAE of the units on the master side, the slave SAE on the slave side.
        role : ``"master"`` or ``"slave"``
            Which of the pair ``sae`` must be.
        peer : str or None
            If given, the other SAE of the pair must be this one too.

        Returns
        -------
        list of bytes
            The units' keys, in the order of ``unit_ids``. When this returns, the bytes are gone from the
            database file and its log (unless another process kept a read transaction open through the
            checkpoint: then they leave the log at the next one).

        Raises
        ------
        KeyNotFound
            A unit is unknown, not assigned to ``sae`` (and ``peer``), already delivered, or asked for twice;
            nothing was erased.
        """
        if role not in ("master", "slave"):
            raise ValueError(f"role must be 'master' or 'slave', not {role!r}")
        _name(sae, "sae")
        if peer is not None:
            _name(peer, "peer")
        try:
            units = _uuids(unit_ids, "unit_ids")
        except ValueError as error:
            raise KeyNotFound(f"{error}: a key is handed out only once") from None
        if not units:
            raise ValueError("take: no unit ids given")
        with self._transaction("take units") as db:
            keys, seqs = [], []
            for unit in units:
                row = db.execute("SELECT seq, state, master, slave, key FROM units WHERE id = ?",
                                 (unit.bytes,)).fetchone()
                if row is None:
                    raise KeyNotFound(f"no key {unit} in the key store")
                seq, state, master, slave = row[:4]
                mine, other = (master, slave) if role == "master" else (slave, master)
                # Ownership first, so that an SAE learns nothing about keys that are not its own.
                if state not in ("assigned", "delivered") or mine != sae or (peer is not None and other != peer):
                    pair = f"SAE {sae!r}" if peer is None else f"SAEs {sae!r} and {peer!r}"
                    raise KeyNotFound(f"key {unit} is not assigned to {pair} as {role}")
                if state == "delivered":
                    raise KeyNotFound(f"key {unit} was already delivered; a key is handed out only once")
                keys.append(row[4])
                seqs.append(seq)
            now = time.time()
            db.executemany("UPDATE units SET state = 'delivered', key = NULL, delivered = ? WHERE seq = ?",
                           ((now, seq) for seq in seqs))
        # The units are delivered: whatever happens now, the caller must get their bytes.
        with self._lock:
            try:
                self._checkpoint()
            except KeyStoreError as error:
                logger.warning("%s", error)
        return keys

    def figures(self, unit_id):
        """The security figures of the unit's block, as stored (JSON types: dicts, lists, numbers, strings).

        Raises
        ------
        KeyNotFound
            No such unit.
        """
        unit = _uuid(unit_id, "unit_id")
        with self._transaction("read figures", write=False) as db:
            row = db.execute("SELECT blocks.figures FROM units JOIN blocks ON units.block = blocks.seq "
                             "WHERE units.id = ?", (unit.bytes,)).fetchone()
        if row is None:
            raise KeyNotFound(f"no unit {unit} in the key store")
        return json.loads(row[0])

    def status(self):
        """Counts of the store, read in one snapshot.

        Returns
        -------
        dict
            ``unit_bits``; units ``pending`` (in pending blocks), ``ready`` (ready, not assigned), ``assigned``
            (not yet delivered), ``delivered``; ``pending_blocks``, ``ready_blocks``; ``ready_bits``
            (``ready * unit_bits``); ``key_bytes_produced`` (committed, ever); ``auth_bytes_available`` and
            ``auth_bytes_consumed`` summed over the streams.
        """
        with self._transaction("read the status", write=False) as db:
            counts = dict(db.execute("SELECT state, count(*) FROM units GROUP BY state").fetchall())
            blocks = dict(db.execute("SELECT state, count(*) FROM blocks GROUP BY state").fetchall())
            produced = self._meta(db, "key_bytes_produced")
            added, consumed = db.execute("SELECT coalesce(sum(added), 0), coalesce(sum(consumed), 0) "
                                         "FROM auth_streams").fetchone()
        status = {"unit_bits": self.unit_bits}
        status.update({state: counts.get(state, 0) for state in ("pending", "ready", "assigned", "delivered")})
        status.update(pending_blocks=blocks.get("pending", 0), ready_blocks=blocks.get("ready", 0),
                      ready_bits=status["ready"] * self.unit_bits, key_bytes_produced=produced,
                      auth_bytes_available=added - consumed, auth_bytes_consumed=consumed)
        return status

    def accounting(self):
        """Key made against key spent on authentication, for the cost report.

        Returns
        -------
        dict
            ``key_bytes_produced`` (in committed blocks), ``key_bytes_discarded`` (in discarded pending blocks),
            and ``auth``: for each stream, bytes ``added``, ``consumed`` and ``available``.
        """
        with self._transaction("read the accounting", write=False) as db:
            produced = self._meta(db, "key_bytes_produced")
            discarded = self._meta(db, "key_bytes_discarded")
            streams = db.execute("SELECT stream, added, consumed FROM auth_streams ORDER BY stream").fetchall()
        return {"key_bytes_produced": produced, "key_bytes_discarded": discarded,
                "auth": {stream: {"added": added, "consumed": consumed, "available": added - consumed}
                         for stream, added, consumed in streams}}

    # -- authentication key reserve -----------------------------------------------------------------------------

    def add_auth_key(self, stream, key):
        """Append ``key`` to the authentication key reserve of ``stream``, in one transaction."""
        _name(stream, "stream")
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"authentication key must be bytes, not {type(key).__name__}")
        key = bytes(key)
        with self._transaction("add authentication key") as db:
            db.execute("INSERT INTO auth_streams (stream) VALUES (?) ON CONFLICT DO NOTHING", (stream,))
            db.executemany("INSERT INTO auth_keys (stream, data) VALUES (?, ?)",
                           ((stream, key[start:start + _AUTH_CHUNK]) for start in range(0, len(key), _AUTH_CHUNK)))
            db.execute("UPDATE auth_streams SET added = added + ? WHERE stream = ?", (len(key), stream))

    def take_auth_key(self, stream, nbytes):
        """The oldest ``nbytes`` of the reserve of ``stream``, erased from the store before they are returned.

        Raises
        ------
        KeyStoreEmpty
            The reserve holds fewer than ``nbytes`` bytes; nothing was taken.
        """
        _name(stream, "stream")
        _count(nbytes, "nbytes")
        with self._transaction("take authentication key") as db:
            row = db.execute("SELECT added - consumed FROM auth_streams WHERE stream = ?", (stream,)).fetchone()
            available = 0 if row is None else row[0]
            if available < nbytes:
                raise KeyStoreEmpty(f"the authentication key reserve {stream!r} holds {available} bytes, "
                                    f"{nbytes} asked for; refill it from the distilled key or the pre-shared "
                                    f"secret")
            parts, needed = [], nbytes
            for seq, data in db.execute("SELECT seq, data FROM auth_keys WHERE stream = ? ORDER BY seq",
                                        (stream,)):
                if len(data) <= needed:
                    parts.append(data)
                    db.execute("DELETE FROM auth_keys WHERE seq = ?", (seq,))
                else:
                    parts.append(data[:needed])
                    db.execute("UPDATE auth_keys SET data = ? WHERE seq = ?", (data[needed:], seq))
                needed -= len(parts[-1])
                if not needed:
                    break
            db.execute("UPDATE auth_streams SET consumed = consumed + ? WHERE stream = ?", (nbytes, stream))
        return b"".join(parts)

    def auth_available(self, stream):
        """Bytes in the authentication key reserve of ``stream`` (0 for a stream never filled)."""
        _name(stream, "stream")
        with self._transaction("read authentication key", write=False) as db:
            row = db.execute("SELECT added - consumed FROM auth_streams WHERE stream = ?", (stream,)).fetchone()
        return 0 if row is None else row[0]

    # -- maintenance --------------------------------------------------------------------------------------------

    def _checkpoint(self):
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as error:
            raise self._error("checkpoint the log", error) from None
        return not busy

    def checkpoint(self):
        """Copy the log into the database file and truncate the log, so that erased bytes leave the log too.

        Returns ``False`` if another process's open transaction kept the log from being truncated.
        """
        with self._lock:
            if self._db is None:
                raise KeyStoreError(f"{self.path}: the key store is closed; open it again")
            return self._checkpoint()

    def check(self):
        """Run SQLite's integrity and foreign key checks.

        Raises
        ------
        KeyStoreError
            The database is damaged: the message lists what SQLite found.
        """
        with self._transaction("check the store", write=False) as db:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
            foreign = db.execute("PRAGMA foreign_key_check").fetchall()
        if problems != ["ok"] or foreign:
            found = ([] if problems == ["ok"] else problems) + [f"dangling reference {row!r}" for row in foreign]
            raise KeyStoreError(f"{self.path}: the key store is damaged: {'; '.join(map(str, found[:5]))}; "
                                f"restore it, or move it away and start a new store")
