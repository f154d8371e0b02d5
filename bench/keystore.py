"""Key store rates: blocks stored and committed, units assigned and taken, authentication key taken, per second.

    python -m bench.keystore [--blocks 20] [--block-kib 64] [--unit-bits 256] [--calls 200] [--units-per-call 1 8]
                             [--auth-bytes 16] [--dir DIR]

Every operation of :class:`qkdlink.host.keystore.KeyStore` is one SQLite transaction in WAL mode with
``synchronous=FULL``, so its rate is bound by the disk's flushes (``fsync``) more than by Python. Each row has a
baseline measured in the same run on a database of the same settings (WAL, ``synchronous=FULL``,
``secure_delete=ON``): plain ``sqlite3`` code that does the least the operation needs, one transaction a call:

- store + commit: insert the block's units (16-byte id, key bytes) in one transaction. The key store makes two
  (the block is stored pending, then committed when the peer has it) and keeps the state, figures and checks.
- assign: select the oldest free units and mark them, in one transaction.
- take: select the units' keys and set them to NULL, in one transaction; and the same followed by
  ``wal_checkpoint(TRUNCATE)``, which ``take`` runs so that the erased bytes leave the log too.
- assign + take: a master-side key request (ETSI ``enc_keys``, less the message to the peer), both of the above.
- take_auth_key: the same select and update on one pad row.

Keys and UUIDs are made before the clock starts. The file system under ``--dir`` matters most: a tmpfs never
flushes, a disk does.
"""

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from bench.machine import describe
from qkdlink.host.keystore import KeyStore


def _file_system(path):
    """The type and mount point of the file system holding ``path``, from /proc/mounts."""
    best = ("?", "")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _, mount, kind = line.split()[:3]
                if str(Path(path).resolve()).startswith(mount) and len(mount) > len(best[1]):
                    best = (kind, mount)
    except OSError:
        pass
    return f"{best[0]} at {best[1] or '?'}"


def _plain(path):
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = FULL", "secure_delete = ON", "foreign_keys = ON"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE units (seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, key BLOB, "
               "master TEXT, slave TEXT)")
    db.execute("CREATE INDEX units_free ON units (seq) WHERE master IS NULL")
    db.execute("CREATE TABLE pad (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    return db


def _timed(function, calls):
    started = time.perf_counter()
    for index in range(calls):
        function(index)
    return time.perf_counter() - started


def _assign_and_take(store, plain, count, calls, row):
    """Rows for ``calls`` assign calls of ``count`` units, then a take call for each assignment."""
    assigned, plain_assigned = [], []

    def assign(index):
        assigned.append(store.assign(count, master="sae-a", slave="sae-b"))

    def plain_assign(index):
        plain.execute("BEGIN IMMEDIATE")
        rows = plain.execute("SELECT seq FROM units WHERE master IS NULL ORDER BY seq LIMIT ?", (count,)).fetchall()
        plain.executemany("UPDATE units SET master = 'sae-a', slave = 'sae-b' WHERE seq = ?", rows)
        plain.execute("COMMIT")
        plain_assigned.append(rows)

    def take(index):
        store.take(assigned[index], sae="sae-a", role="master")

    def plain_take(index, checkpoint=False):
        plain.execute("BEGIN IMMEDIATE")
        keys = [plain.execute("SELECT key FROM units WHERE seq = ? AND master = 'sae-a'", seq).fetchone()[0]
                for seq in plain_assigned[index]]
        plain.executemany("UPDATE units SET key = NULL WHERE seq = ?", plain_assigned[index])
        plain.execute("COMMIT")
        if checkpoint:
            plain.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return keys

    half = calls // 2
    row(f"assign {count}", "KeyStore assign", calls, count, _timed(assign, calls))
    row(f"assign {count}", "plain sqlite3 select + update", calls, count, _timed(plain_assign, calls))
    row(f"take {count}", "KeyStore take", calls, count, _timed(take, calls))
    row(f"take {count}", "plain sqlite3 select + update", half, count, _timed(plain_take, half))
    row(f"take {count}", "plain, then wal_checkpoint(TRUNCATE)", calls - half, count,
        _timed(lambda index: plain_take(half + index, checkpoint=True), calls - half))

    # What a key request costs the master side (ETSI enc_keys, less the message to the peer).
    def request(index):
        store.take(store.assign(count, master="sae-a", slave="sae-b"), sae="sae-a", role="master")

    def plain_request(index):
        plain_assign(index)
        plain_take(calls + index, checkpoint=True)

    row(f"assign + take {count}", "KeyStore assign, take", calls, count, _timed(request, calls))
    row(f"assign + take {count}", "plain, as above with the checkpoint", calls, count, _timed(plain_request, calls))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=20, help="blocks stored (default: %(default)s)")
    parser.add_argument("--block-kib", type=int, default=64,
                        help="key a block, in KiB (default: %(default)s)")
    parser.add_argument("--unit-bits", type=int, default=256, help="bits a unit (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=200,
                        help="calls a row (default: %(default)s)")
    parser.add_argument("--units-per-call", type=int, nargs="+", default=[1, 8],
                        help="units each assign or take call asks for (default: %(default)s)")
    parser.add_argument("--auth-bytes", type=int, default=16,
                        help="bytes each take_auth_key call takes: one tag's pad (default: %(default)s)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the databases go, deleted afterwards (default: the system's temporary "
                             "directory)")
    args = parser.parse_args()
    if args.unit_bits <= 0 or args.unit_bits % 8 or args.block_kib * 8192 % args.unit_bits:
        parser.error(f"--unit-bits must be a positive multiple of 8 that divides a block, not {args.unit_bits}")

    unit_bytes = args.unit_bits // 8
    units_a_block = args.block_kib * 1024 // unit_bytes
    needed = args.calls * sum(args.units_per_call) * 2
    if args.blocks * units_a_block < needed:
        parser.error(f"{args.blocks} blocks of {units_a_block} units are too few for {needed} units assigned "
                     f"and taken; give more --blocks or fewer --calls")
    blocks = [(uuid.uuid4(), os.urandom(units_a_block * unit_bytes), [uuid.uuid4() for _ in range(units_a_block)])
              for _ in range(args.blocks)]
    figures = {"qber_z": 0.0123, "qber_x": 0.0131, "leaked_bits": 123456, "n_z": [100000, 20000, 3000],
               "n_x": [1000, 200, 30], "m_x": [12, 9, 15], "eps_sec": 1e-10, "eps_cor": 1e-15}

    with tempfile.TemporaryDirectory(prefix="bench-keystore-", dir=args.dir) as directory:
        print(f"machine: {describe()}; SQLite {sqlite3.sqlite_version}")
        print(f"databases on {_file_system(directory)}; {args.blocks} blocks of {args.block_kib} KiB "
              f"({units_a_block} units of {args.unit_bits} bits); {args.calls} calls a row")
        print()
        print("| operation | implementation | calls/s | units/s | key MB/s | ms a call |")
        print("|---|---|---:|---:|---:|---:|")

        def row(operation, implementation, calls, units_a_call, seconds, unit_bytes=unit_bytes):
            print(f"| {operation} | {implementation} | {calls / seconds:,.1f} | {calls * units_a_call / seconds:,.0f} "
                  f"| {calls * units_a_call * unit_bytes / seconds / 1e6:.2f} | {1e3 * seconds / calls:.2f} |",
                  flush=True)

        with KeyStore(Path(directory) / "keys.db", unit_bits=args.unit_bits) as store:
            plain = _plain(Path(directory) / "plain.db")
            try:
                def store_block(index):
                    block, key, ids = blocks[index]
                    store.store_block(block, key, ids, figures)
                    store.commit_block(block)

                def insert_block(index):
                    _, key, ids = blocks[index]
                    plain.execute("BEGIN IMMEDIATE")
                    plain.executemany("INSERT INTO units (id, key) VALUES (?, ?)",
                                      ((unit.bytes, key[i * unit_bytes:(i + 1) * unit_bytes])
                                       for i, unit in enumerate(ids)))
                    plain.execute("COMMIT")

                operation = "store a block"
                row(operation, "KeyStore store_block + commit_block", args.blocks, units_a_block,
                    _timed(store_block, args.blocks))
                row(operation, "plain sqlite3 insert", args.blocks, units_a_block, _timed(insert_block, args.blocks))

                for count in args.units_per_call:
                    _assign_and_take(store, plain, count, args.calls, row)

                pad = os.urandom(args.calls * args.auth_bytes)
                store.add_auth_key("bench", pad)
                plain.execute("INSERT INTO pad (data) VALUES (?)", (pad,))

                def take_pad(index):
                    store.take_auth_key("bench", args.auth_bytes)

                def plain_take_pad(index):
                    plain.execute("BEGIN IMMEDIATE")
                    data = plain.execute("SELECT data FROM pad WHERE seq = 1").fetchone()[0]
                    plain.execute("UPDATE pad SET data = ? WHERE seq = 1", (data[args.auth_bytes:],))
                    plain.execute("COMMIT")

                operation = f"take {args.auth_bytes} pad bytes"
                row(operation, "KeyStore take_auth_key", args.calls, 1, _timed(take_pad, args.calls),
                    unit_bytes=args.auth_bytes)
                row(operation, "plain sqlite3 select + update", args.calls, 1, _timed(plain_take_pad, args.calls),
                    unit_bytes=args.auth_bytes)
            finally:
                plain.close()


if __name__ == "__main__":
    main()
