"""One side of a QKD link as a long-running process: board, authenticated channel, key store and key delivery.

A node (``qkd node --config FILE``) runs, until it is told to stop:

- **Sessions** with the peer over the authenticated TCP channel (:mod:`qkdlink.host.channel`): Alice listens on
  ``[peer] host:port``, Bob connects. A session starts by making the two key stores agree (below) and aligning the
  boards, then runs blocks of the protocol (:class:`~qkdlink.host.protocol.Alice`/``Bob`` on the board through
  :mod:`qkdlink.host.frontend`) one after the other. Anything that goes wrong in a block (an abort, an
  authentication failure, a lost connection, a board error) ends the session: its block stores nothing, the
  connection is dropped, and a fresh session starts. A new connection is a new authentication session but uses
  the same pad streams, so no pad bit is used twice.
- **The key store** (:class:`~qkdlink.host.keystore.KeyStore`). Each block's key is split (:func:`split_key`)
  into pad refills for the four authentication pad streams and whole units for the store, and committed in two
  phases with Alice as coordinator::

      Alice: store_block (pending, unit UUIDs from the OS)  --prepare-->  Bob: store_block (pending)
      Alice: commit_block                       <--prepared--
                                                 --commit-->   Bob: commit_block
                                                <--committed--

  When a session starts, before any block, Bob lists his pending blocks and Alice answers each: commit if she
  has it ready, discard if she has it pending or not at all; then she discards her own pending blocks (none of
  them was committed anywhere). A block that Alice has assigned to SAEs is ready at Alice, so when Bob receives
  an assignment of units of a block still pending at his side, he commits it first. So the stores always end up
  with the same ready blocks, whatever point either node was killed at.
- **Authentication pad refills** go through a journal (:class:`NodeState`): a block's refills are written there
  with the pending block and applied to the store's pad streams when the block is committed; each application
  records the stream's length before it, so that applying again after a crash adds nothing twice. Both sides
  add the same bytes in the same order (blocks commit in one order), so every pad byte sits at the same position
  of its stream on both sides, which is what the handshake's catching up (:func:`~qkdlink.host.auth.skip_to`)
  relies on. The pre-shared key is imported the same way, once; its file is then erased.
- **Key delivery**: the ETSI GS QKD 014 server (:class:`~qkdlink.host.etsi014.KeyDeliveryServer` with
  :class:`~qkdlink.host.etsi014.StoreDelivery`) in the same process. Alice is the master KME: her ``notify`` sends
  the assignment to Bob on a second authenticated connection, the key-management channel (``[peer] km_port``,
  with its own two pad streams so that it never interleaves with block traffic) and returns only on Bob's
  acknowledgement, which he sends once :meth:`StoreDelivery.record` has returned.

Board alignment: a killed node leaves its board mid-block (detections read and not answered, frames held, bits in
the key memory). At the start of every session Bob answers every detection the board still waits for with "not
sent" (his board's detection memory is then back in step with what he reads), picks the next frame F that his
board has not seen begin, and Alice releases every frame before F (her lower bound of the frames released is kept
in :class:`NodeState`); both clear their key memories and drain their output streams; blocks then start at F. Bob's
board must run before Alice's starts, or the boards would count frames differently, so Alice starts hers only
when Bob says his runs. The boards count frames, and stream bytes, modulo 2^32; the hosts number frames on past
that (Alice tells Bob her number for F, from the frames she released) and count the detections still unanswered
from the byte counts modulo 2^32 (:func:`beats_apart`), so a link that runs for days lines up as on its first
session.

Files, beside the key store (``[store] path``): ``PATH.node`` (:class:`NodeState`: journal, imported pre-shared key,
Alice's frames released; it holds pad bytes until they are applied, so it is created readable by its owner only,
like the store), ``PATH.index`` (the slave KME's :class:`~qkdlink.host.etsi014.KeyIndex`) and ``PATH.lock`` (held
while the node runs: a second node on the same store would apply the journal twice).
"""

import dataclasses
import fcntl
import json
import logging
import math
import os
import queue
import sqlite3
import ssl
import string
import threading
import time
import tomllib
import uuid
from pathlib import Path

import numpy as np

from . import auth
from .bits import pack_bits
from .board import COUNT_WRAP, Board, BoardError, LinkError, pack_beats, unpack_beats, unwrap
from .channel import ChannelClosed, connect, listen
from .entropy import OSEntropy
from .etsi014 import AssignedKey, KeyDeliveryServer, KeyIndex, KMEConfig, StoreDelivery
from .finite_key import DecoySettings
from .frontend import BoardChoices, BoardDetections, configure_alice, configure_bob, start
from .keystore import KeyStore, KeyStoreError, create_private_file
from .messages import Message, ProtocolError
from .protocol import Alice, Bob, ProtocolSettings
from .sifting import NOT_SENT
from ..wire import Control


__all__ = ["ConfigError", "NodeConfig", "load_config", "NodeState", "NodeStateError", "StoreSync", "Node",
           "PAD_STREAMS", "KM_PREFIX", "MIN_PSK_BYTES", "read_psk", "import_psk", "plan_split", "split_key",
           "PrefixPad", "realised_decoy", "align_alice", "align_bob", "beats_apart"]


logger = logging.getLogger(__name__)


#: Pad streams in the key store: the block channel's two (named as :data:`qkdlink.host.auth.STREAMS`), then the
#: key-management channel's two. A split key and a pre-shared key fill them in this order.
KM_PREFIX = "km:"
PAD_STREAMS = (*auth.STREAMS, *(KM_PREFIX + stream for stream in auth.STREAMS))

#: The smallest pre-shared key accepted: 4 KiB for each pad stream, a handshake and a block of a few hundred
#: messages in each direction.
MIN_PSK_BYTES = 4 * 4096

_RANDOM_RANGE = 1 << 16             # Alice's sequencer registers p_z, threshold0/1 are out of 2^16
_RETRY_FIRST, _RETRY_MAX = 0.2, 5.0     # seconds between session attempts: doubling from the first to the most
_KM_WAIT = 5.0                      # seconds an assignment waits for the key-management channel and Bob's answer
_KM_IDLE = 300.0                    # seconds Bob waits for an assignment before he renews the connection
_HANDSHAKE = 5.0                    # seconds for a connection and each step of its handshake


# ------------------------------------------------------------------------------------------ configuration

class ConfigError(Exception):
    """The node's configuration is wrong: the message names the file, the setting and what to do."""


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """A node's settings, as :func:`load_config` reads them from a TOML file (paths made absolute).

    The file's sections and their keys (``-`` marks no default)::

        role = "alice"          # or "bob"
        [peer]      host = "127.0.0.1" (Alice: where to listen; Bob: Alice's address), port (-),
                    km_port = port + 1 (the key-management channel)
        [board]     url (-): a serial device or socket://HOST:PORT of `qkd simulate`; the slot timing, for Alice
                    period = 2 (clock cycles), for Bob period_bins = 8.0, delay = 0, gate_start = 2,
                    gate_width = 5, dead_cycles = 0 (the simulated boards' values)
        [store]     path (-), unit_bits = 256
        [auth]      psk (-): the pre-shared key file, hex or raw, imported once and then erased;
                    reserve = 65536: bytes each pad stream is topped up to from the distilled key
        [link]      block_frames = 300: frames per block
        [protocol]  eps_sec = 1e-10, eps_cor = 1e-15, intensities = [0.6, 0.2, 2e-4],
                    probabilities = [0.5, 0.3, 0.2], p_z = 0.8 (as `qkd demo`)
        [etsi]      kme_id (-), host = "127.0.0.1", port (-), cert, key, ca (-): the KME's certificate, key and
                    the CA of the SAEs; client_cert, client_key: an SAE's, for `qkd keys get`; the limits of
                    :class:`~qkdlink.host.etsi014.KMEConfig` (key_size, min_key_size, max_key_size,
                    max_key_per_request, max_key_count)
        [etsi.saes] SAE ID = KME ID, for every SAE of both KMEs

    Relative paths are relative to the file's folder.
    """
    path: Path
    role: str
    peer_host: str
    peer_port: int
    km_port: int
    board_url: str
    board: dict
    store_path: Path
    unit_bits: int
    psk_path: Path
    reserve: int
    block_frames: int
    eps_sec: float
    eps_cor: float
    intensities: tuple
    probabilities: tuple
    p_z: float
    kme: KMEConfig
    etsi_host: str
    etsi_port: int
    etsi_cert: Path
    etsi_key: Path
    etsi_ca: Path
    client_cert: Path = None
    client_key: Path = None

    @property
    def state_path(self):
        return self.store_path.with_name(self.store_path.name + ".node")

    @property
    def index_path(self):
        return self.store_path.with_name(self.store_path.name + ".index")

    @property
    def peer_kme(self):
        """The peer's KME ID: the one KME other than this one in the SAE map (None if there is not exactly one)."""
        others = {kme for kme in self.kme.saes.values() if kme != self.kme.kme_id}
        return others.pop() if len(others) == 1 else None

    def saes_of(self, kme):
        return sorted(sae for sae, owner in self.kme.saes.items() if owner == kme)


_BOARD_KEYS = {"alice": {"period": (int, 2)},
               "bob": {"period_bins": (float, 8.0), "delay": (int, 0), "gate_start": (int, 2),
                       "gate_width": (int, 5), "dead_cycles": (int, 0)}}
_KME_LIMITS = ("key_size", "min_key_size", "max_key_size", "max_key_per_request", "max_key_count")
_SCHEMA = {
    "peer": ("host", "port", "km_port"),
    "board": ("url", *_BOARD_KEYS["alice"], *_BOARD_KEYS["bob"]),
    "store": ("path", "unit_bits"),
    "auth": ("psk", "reserve"),
    "link": ("block_frames",),
    "protocol": ("eps_sec", "eps_cor", "intensities", "probabilities", "p_z"),
    "etsi": ("kme_id", "saes", "host", "port", "cert", "key", "ca", "client_cert", "client_key", *_KME_LIMITS),
}
_REQUIRED = object()
_KINDS = {int: "a whole number", float: "a number", str: "a string", Path: "a file path (a string)",
          dict: "a table of \"SAE ID\" = \"KME ID\""}


def _check_names(path, data):
    unknown = sorted(set(data) - {"role"} - set(_SCHEMA))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} at the top level; check the spelling "
                          f"(known: role and the sections {', '.join(_SCHEMA)})")
    for section, keys in _SCHEMA.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a [{section}] section, not {table!r}")
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} in [{section}]; check the "
                              f"spelling (known: {', '.join(keys)})")


def _get(path, data, section, key, kind, default=_REQUIRED):
    """A setting of the right type (ints are numbers too; a pair ``(float, n)`` is a list of n numbers)."""
    where = f"[{section}] {key}" if section else key
    table = data.get(section, {}) if section else data
    if key not in table:
        if default is _REQUIRED:
            raise ConfigError(f"{path}: {where} is missing; add it ({_KINDS.get(kind, 'a list of numbers')})")
        return default
    value = table[key]
    if isinstance(kind, tuple):
        element, length = kind
        if (isinstance(value, list) and len(value) == length and
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            return tuple(element(v) for v in value)
        raise ConfigError(f"{path}: {where} must be a list of {length} numbers, not {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str) and value:
        return (path.parent / value).resolve()
    if isinstance(value, kind if kind is not Path else str) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{path}: {where} must be {_KINDS[kind]}, not {value!r}")


def load_config(path):
    """Read and check a node's TOML configuration; a :class:`NodeConfig`.

    Raises
    ------
    ConfigError
        The file cannot be read, is not TOML, or a setting is missing, of the wrong type, out of range or unknown.
    """
    path = Path(path).resolve()
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not a valid TOML file: {error}") from None
    _check_names(path, data)

    def get(section, key, kind, default=_REQUIRED):
        return _get(path, data, section, key, kind, default)

    def fail(section, key, problem):
        return ConfigError(f"{path}: [{section}] {key} {problem}" if section else f"{path}: {key} {problem}")

    role = get("", "role", str)
    if role not in ("alice", "bob"):
        raise fail("", "role", f"must be \"alice\" or \"bob\", not {role!r}")

    def port(section, key, default=_REQUIRED):
        value = get(section, key, int, default)
        if not 1 <= value <= 65535:
            raise fail(section, key, f"must be a TCP port from 1 to 65535, not {value}")
        return value

    peer_port = port("peer", "port")
    km_port = port("peer", "km_port", peer_port + 1 if peer_port < 65535 else _REQUIRED)
    if km_port == peer_port:
        raise fail("peer", "km_port", f"must differ from port {peer_port}: the key-management channel has its "
                                      f"own connection")

    other = "bob" if role == "alice" else "alice"
    for key in _BOARD_KEYS[other]:
        if key in data.get("board", {}):
            raise fail("board", key, f"is a setting of {other.title()}'s board, and this node is {role}: remove it")
    board = {key: get("board", key, kind, default) for key, (kind, default) in _BOARD_KEYS[role].items()}
    for key, value in board.items():
        positive = key in ("period", "period_bins", "gate_width")
        if value < 0 or (positive and value == 0):
            raise fail("board", key, f"must be {'positive' if positive else 'non-negative'}, not {value}")

    unit_bits = get("store", "unit_bits", int, 256)
    if unit_bits <= 0 or unit_bits % 8:
        raise fail("store", "unit_bits", f"must be a positive multiple of 8, not {unit_bits}")
    reserve = get("auth", "reserve", int, 65536)
    if reserve < 0:
        raise fail("auth", "reserve", f"must be a non-negative number of bytes, not {reserve}")
    block_frames = get("link", "block_frames", int, 300)
    if block_frames < 1:
        raise fail("link", "block_frames", f"must be a positive number of frames, not {block_frames}")

    eps_sec = get("protocol", "eps_sec", float, 1e-10)
    eps_cor = get("protocol", "eps_cor", float, 1e-15)
    p_z = get("protocol", "p_z", float, 0.8)
    for key, value in (("eps_sec", eps_sec), ("eps_cor", eps_cor), ("p_z", p_z)):
        if not 0 < value < 1:
            raise fail("protocol", key, f"must lie between 0 and 1, not {value}")
    intensities = get("protocol", "intensities", (float, 3), (0.6, 0.2, 2e-4))
    probabilities = get("protocol", "probabilities", (float, 3), (0.5, 0.3, 0.2))
    try:
        DecoySettings(intensities, probabilities)
    except ValueError as error:
        raise fail("protocol", "intensities", f"and probabilities do not fit: {error}") from None

    limits = {key: get("etsi", key, int, None) for key in _KME_LIMITS}
    try:
        kme = KMEConfig(kme_id=get("etsi", "kme_id", str), saes=get("etsi", "saes", dict),
                        **{key: value for key, value in limits.items() if value is not None})
    except ValueError as error:
        raise fail("etsi", "saes", f"or a limit is wrong: {error}") from None
    if len(set(kme.saes.values())) != 2:
        raise fail("etsi", "saes", f"must name the SAEs of exactly two KMEs, this one ({kme.kme_id!r}) and the "
                                   f"peer's, not {dict(kme.saes)!r}")
    files = {key: get("etsi", key, Path) for key in ("cert", "key", "ca")}
    for key, value in files.items():
        if not value.is_file():
            raise fail("etsi", key, f"names {value}, which does not exist; make a test PKI with `qkd certs`, or "
                                    f"give the right path")

    return NodeConfig(
        path=path, role=role, peer_host=get("peer", "host", str, "127.0.0.1"), peer_port=peer_port,
        km_port=km_port, board_url=get("board", "url", str), board=board, store_path=get("store", "path", Path),
        unit_bits=unit_bits, psk_path=get("auth", "psk", Path), reserve=reserve, block_frames=block_frames,
        eps_sec=eps_sec, eps_cor=eps_cor, intensities=intensities, probabilities=probabilities, p_z=p_z, kme=kme,
        etsi_host=get("etsi", "host", str, "127.0.0.1"), etsi_port=port("etsi", "port"), etsi_cert=files["cert"],
        etsi_key=files["key"], etsi_ca=files["ca"], client_cert=get("etsi", "client_cert", Path, None),
        client_key=get("etsi", "client_key", Path, None))


def realised_decoy(intensities, sequencer):
    """The :class:`DecoySettings` Alice's board really sends with, from its registers ``(p_z, t0, t1)``: the
    finite-key analysis must use these probabilities, not the ones asked for."""
    _, t0, t1 = sequencer
    return DecoySettings(tuple(intensities), (t0 / _RANDOM_RANGE, (t1 - t0) / _RANDOM_RANGE,
                                              (_RANDOM_RANGE - t1) / _RANDOM_RANGE))


# --------------------------------------------------------------------------------------------- node state

class NodeStateError(Exception):
    """The node's state file and its key store disagree, or the state file is damaged."""


def _pad_added(store, stream):
    return store.accounting()["auth"].get(stream, {}).get("added", 0)


class NodeState:
    """The node's own durable records: the pad refill journal, the pre-shared key's import, and small values.

    SQLite in WAL mode with ``synchronous=FULL`` and ``secure_delete``, like the key store: every method's change is
    on disk when it returns. Refills are key material until applied, so the file is created readable by its owner
    only and a refill's bytes are deleted (and checkpointed out of the log) once applied.

    Parameters
    ----------
    path : str or Path
    """

    def __init__(self, path):
        self.path = Path(path)
        create_private_file(self.path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA secure_delete = ON")
            self._db.execute("CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS refills (seq INTEGER PRIMARY KEY, block BLOB, "
                             "stream TEXT NOT NULL, data BLOB NOT NULL, base INTEGER)")
        except sqlite3.Error as error:
            raise NodeStateError(f"{self.path}: cannot open the node state: {error}; move the file away only if "
                                 f"its key store goes with it") from None

    def close(self):
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _execute(self, *statements):
        """Run ``(sql, parameters)`` statements in one transaction; the last one's rows."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, parameters in statements:
                        rows = self._db.execute(sql, parameters).fetchall()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise NodeStateError(f"{self.path}: {error}") from None
        return rows

    def get(self, name, default=None):
        rows = self._execute(("SELECT value FROM state WHERE name = ?", (name,)))
        return json.loads(rows[0][0]) if rows else default

    def set(self, name, value):
        self._execute(("INSERT INTO state (name, value) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, json.dumps(value))))

    def record_refills(self, block, refills, *, marker=None):
        """Journal ``refills`` (stream -> bytes) of ``block`` (a UUID; None for the pre-shared key), and set
        ``marker`` (a ``(name, value)``) in the same transaction."""
        key = None if block is None else block.bytes
        statements = [("INSERT INTO refills (block, stream, data) VALUES (?, ?, ?)", (key, stream, bytes(data)))
                      for stream, data in refills.items() if data]
        if marker is not None:
            statements.append(("INSERT INTO state (name, value) VALUES (?, ?)",
                               (marker[0], json.dumps(marker[1]))))
        if statements:
            self._execute(*statements)

    def refill_blocks(self):
        """The blocks with journalled refills (None for the pre-shared key), oldest first."""
        rows = self._execute(("SELECT block FROM refills GROUP BY block ORDER BY min(seq)", ()))
        return [None if row[0] is None else uuid.UUID(bytes=row[0]) for row in rows]

    def apply_refills(self, block, store):
        """Add ``block``'s journalled refills to ``store``'s pad streams, each exactly once, and forget them.

        Each entry first records its stream's length in the store (``base``); the entry is added if the stream still
        has that length, and skipped if it has grown by exactly the entry (a crash came between the addition and
        the forgetting). The caller serialises refills of the same store.

        Raises
        ------
        NodeStateError
            A stream's length is neither: something else added to the store's pads.
        """
        key = None if block is None else block.bytes
        rows = self._execute(("SELECT seq, stream, data, base FROM refills WHERE block IS ? ORDER BY seq", (key,)))
        for seq, stream, data, base in rows:
            added = _pad_added(store, stream)
            if base is None:
                base = added
                self._execute(("UPDATE refills SET base = ? WHERE seq = ?", (base, seq)))
            if added == base:
                store.add_auth_key(stream, data)
            elif added != base + len(data):
                raise NodeStateError(f"{self.path}: the pad stream {stream!r} of {store.path} holds {added} bytes "
                                     f"ever added, where {base} (or {base + len(data)}) was expected: the node "
                                     f"state and the key store do not belong together")
            self._execute(("DELETE FROM refills WHERE seq = ?", (seq,)))
        if rows:
            self._checkpoint()

    def drop_refills(self, block):
        """Forget ``block``'s refills (the block was discarded)."""
        self._execute(("DELETE FROM refills WHERE block IS ?", (block.bytes,)))
        self._checkpoint()

    def _checkpoint(self):
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as error:
                logger.warning("%s: cannot checkpoint: %s", self.path, error)

    def recover(self, store):
        """After a restart: apply the refills of the pre-shared key and of ready blocks, forget those of blocks the
        store no longer has; refills of pending blocks wait for the session's reconciliation."""
        for block in self.refill_blocks():
            state = None if block is None else store.block_state(block)
            if block is None or state == "ready":
                self.apply_refills(block, store)
            elif state is None:
                self.drop_refills(block)


# ---------------------------------------------------------------------------------------- pre-shared key

def read_psk(path):
    """The pre-shared key in ``path``: hexadecimal text (whitespace ignored), or else the raw bytes."""
    data = Path(path).read_bytes()
    try:
        text = "".join(data.decode("ascii").split())
    except UnicodeDecodeError:
        return data
    if text and len(text) % 2 == 0 and all(c in string.hexdigits for c in text):
        return bytes.fromhex(text)
    return data


def _erase(path):
    """Overwrite ``path`` with zeros and delete it; a file that is already gone is fine."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as file:
            file.write(bytes(size))
            file.flush()
            os.fsync(file.fileno())
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning("%s: cannot erase the imported pre-shared key (%s): erase it by hand, it must never be "
                       "imported again", path, error.strerror)


def import_psk(state, store, path):
    """Import the pre-shared key in ``path`` into the store's pad streams, once: a quarter for each of
    :data:`PAD_STREAMS`. Returns False if it was imported before (the file is not needed then).

    The import is journalled with its marker in one transaction and applied like a block's refills, so a crash at
    any point neither loses it nor adds it twice. Then the file is erased: pad bits must never serve twice, and a
    key file left behind would be imported again into a new store.

    Raises
    ------
    ConfigError
        The file is missing (and the key was never imported) or too short.
    """
    if state.get("psk") is not None:
        if path.exists():
            logger.warning("%s: the pre-shared key was imported before; this file is not used (erase it)", path)
        return False
    try:
        data = read_psk(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no pre-shared key file, and the store {store.path} has none imported; give "
                          f"the file both nodes were given (a fresh one: never reuse a key file)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the pre-shared key: {error.strerror}") from None
    if len(data) < MIN_PSK_BYTES:
        raise ConfigError(f"{path}: the pre-shared key holds {len(data)} bytes, fewer than the {MIN_PSK_BYTES} "
                          f"needed ({MIN_PSK_BYTES // len(PAD_STREAMS)} for each of the {len(PAD_STREAMS)} pad "
                          f"streams); make a longer one (`qkd random`) for both nodes")
    share = len(data) // len(PAD_STREAMS)
    refills = {stream: data[index * share:(index + 1) * share] for index, stream in enumerate(PAD_STREAMS)}
    state.record_refills(None, refills, marker=("psk", {"bytes": share * len(PAD_STREAMS), "time": time.time()}))
    state.apply_refills(None, store)
    _erase(path)
    logger.info("imported %d bytes of pre-shared key (%d per pad stream) and erased %s", share * len(PAD_STREAMS),
                share, path)
    return True


# ----------------------------------------------------------------------------------------- splitting keys

def plan_split(key_bytes, unit_bytes, needs):
    """How Alice splits a key of ``key_bytes`` bytes: ``(pad counts in PAD_STREAMS order, units)``, or None for a
    key shorter than one unit (it is dropped: neither the store nor the pads get any of it).

    ``needs`` are the bytes each stream lacks to its reserve. The store gets at least one unit; the pads get what
    they need of the rest, shared in proportion when it is short, and the bytes that do not fill a unit go to the
    first stream, so that no key bit is wasted.
    """
    if key_bytes < unit_bytes:
        return None
    wanted = sum(needs)
    units = max(1, (key_bytes - wanted) // unit_bytes)
    pad = key_bytes - units * unit_bytes
    counts = list(needs) if wanted <= pad else [pad * need // wanted for need in needs]
    counts[0] += pad - sum(counts)
    return counts, units


def split_key(key, counts):
    """Split ``key`` into pad refills (``counts`` bytes for each of :data:`PAD_STREAMS`, in order, taken from the
    front of the key) and the rest for the store; ``({stream: bytes}, rest)``. Both sides split the same way."""
    block, rest = auth.split_key(key, dict(zip(auth.STREAMS, counts[:2])))
    km, rest = auth.split_key(rest, dict(zip(auth.STREAMS, counts[2:])))
    return {**block, **{KM_PREFIX + stream: data for stream, data in km.items()}}, rest


class PrefixPad:
    """The pad streams of ``pad`` named with ``prefix``: the key-management channel's own pair of streams."""

    def __init__(self, pad, prefix):
        self.pad = pad
        self.prefix = prefix

    def take(self, stream, nbytes):
        return self.pad.take(self.prefix + stream, nbytes)

    def position(self, stream):
        return self.pad.position(self.prefix + stream)

    def available(self, stream):
        return self.pad.available(self.prefix + stream)

    def add(self, stream, data):
        self.pad.add(self.prefix + stream, data)


# ------------------------------------------------------------------------------------ agreeing key stores

def _ids(data, what):
    if not isinstance(data, bytes) or len(data) % 16:
        raise ProtocolError(f"{what} is not a list of UUIDs")
    return [uuid.UUID(bytes=data[start:start + 16]) for start in range(0, len(data), 16)]


def _id_bytes(ids):
    return b"".join(value.bytes for value in ids)


def _figures_json(figures):
    def convert(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"cannot store a {type(value).__name__} in a block's figures")
    return json.dumps(figures, default=convert)


class StoreSync:
    """Keeps a node's key store agreeing with the peer's: reconciliation at a session's start and the two-phase
    commit of each block (the module docstring), for ``role``.

    Parameters
    ----------
    store : KeyStore
    state : NodeState
    role : ``"alice"`` or ``"bob"``
    timeout : float
        Seconds to wait for each of the peer's messages.
    """

    def __init__(self, store, state, role, *, timeout=60.0):
        self.store = store
        self.state = state
        self.role = role
        self.timeout = timeout
        self.unit_bytes = store.unit_bits // 8
        self._lock = threading.Lock()       # a block's commit and its refills, from the session or a key assignment

    def _commit(self, block):
        with self._lock:
            self.store.commit_block(block)
            self.state.apply_refills(block, self.store)

    def _discard(self, block):
        with self._lock:
            self.store.discard_block(block)
            self.state.drop_refills(block)

    def recover(self):
        """After a restart, before any session: finish what the journal holds (:meth:`NodeState.recover`)."""
        with self._lock:
            self.state.recover(self.store)

    def reconcile(self, endpoint):
        """Make the pending blocks of both sides agree, before any block of the session; returns
        ``(committed, discarded)`` block lists (Bob's pending blocks resolved, and on Alice's side her own pending
        ones discarded too)."""
        if self.role == "alice":
            theirs = _ids(endpoint.receive("reconcile", timeout=self.timeout)["pending"], "Bob's pending blocks")
            commit = [block for block in theirs if self.store.block_state(block) == "ready"]
            discard = [block for block in theirs if block not in commit]
            endpoint.send(Message("resolve", {"commit": _id_bytes(commit), "discard": _id_bytes(discard)}))
            mine = self.store.pending_blocks()
            for block in mine:
                self._discard(block)
            endpoint.receive("resolved", timeout=self.timeout)
            return commit, sorted(set(discard) | set(mine))
        pending = self.store.pending_blocks()
        endpoint.send(Message("reconcile", {"pending": _id_bytes(pending)}))
        resolve = endpoint.receive("resolve", timeout=self.timeout)
        commit, discard = _ids(resolve["commit"], "blocks to commit"), _ids(resolve["discard"], "blocks to discard")
        if set(commit) | set(discard) != set(pending) or set(commit) & set(discard):
            raise ProtocolError("Alice's resolution does not name each of Bob's pending blocks once")
        for block in commit:
            self._commit(block)
        for block in discard:
            self._discard(block)
        endpoint.send(Message("resolved"))
        return commit, discard

    def prepare(self, key, counts, units, figures):
        """Alice: draw the block's UUIDs, journal its refills and store it pending; ``(block, unit_ids, refills,
        figures as stored)`` to announce with :meth:`commit`."""
        refills, rest = split_key(key, counts)
        block = uuid.uuid4()                    # from os.urandom
        unit_ids = [uuid.uuid4() for _ in range(units)]
        text = _figures_json({**figures, "block": str(block), "pad_bytes": list(counts)})
        self.state.record_refills(block, refills)
        self.store.store_block(block, rest, unit_ids, json.loads(text))
        logger.debug("alice: block %s stored pending, %d units", block, units)
        return block, unit_ids, refills, text

    def commit(self, endpoint, prepared):
        """Alice: the two-phase commit of a block stored by :meth:`prepare`."""
        block, unit_ids, refills, text = prepared
        counts = [len(refills.get(stream, b"")) for stream in PAD_STREAMS]
        endpoint.send(Message("prepare", {"block": block.bytes, "units": _id_bytes(unit_ids),
                                          "pad": np.array(counts, np.int64), "figures": text}))
        if endpoint.receive("prepared", timeout=self.timeout)["block"] != block.bytes:
            raise ProtocolError("Bob prepared another block")
        self._commit(block)
        logger.debug("alice: block %s committed here", block)
        endpoint.send(Message("commit", {"block": block.bytes}))
        if endpoint.receive("committed", timeout=self.timeout)["block"] != block.bytes:
            raise ProtocolError("Bob committed another block")
        return block

    def accept(self, endpoint, key):
        """Bob: take part in the two-phase commit of the block whose key is ``key``; returns its UUID, its unit
        UUIDs and the pad counts."""
        prepare = endpoint.receive("prepare", timeout=self.timeout)
        block = _ids(prepare["block"], "the block ID")
        unit_ids = _ids(prepare["units"], "the unit IDs")
        counts = [int(count) for count in np.asarray(prepare["pad"])]
        if len(block) != 1 or not unit_ids or len(counts) != len(PAD_STREAMS) or min(counts) < 0:
            raise ProtocolError("Alice's prepare message is malformed")
        if sum(counts) + len(unit_ids) * self.unit_bytes != len(key):
            raise ProtocolError(f"Alice splits a {sum(counts) + len(unit_ids) * self.unit_bytes}-byte key, Bob "
                                f"holds {len(key)} bytes")
        try:
            figures = json.loads(prepare["figures"])
        except ValueError:
            raise ProtocolError("the block's figures are not JSON") from None
        if not isinstance(figures, dict):
            raise ProtocolError("the block's figures are not a JSON object")
        [block] = block
        refills, rest = split_key(key, counts)
        self.state.record_refills(block, refills)
        self.store.store_block(block, rest, unit_ids, figures)
        logger.debug("bob: block %s stored pending, %d units", block, len(unit_ids))
        endpoint.send(Message("prepared", {"block": block.bytes}))
        if endpoint.receive("commit", timeout=self.timeout)["block"] != block.bytes:
            raise ProtocolError("Alice committed another block")
        self._commit(block)
        logger.debug("bob: block %s committed here", block)
        endpoint.send(Message("committed", {"block": block.bytes}))
        return block, unit_ids, counts

    def commit_assigned(self, unit_ids):
        """Bob: commit the pending blocks that hold any of ``unit_ids``: Alice assigned them to SAEs, so she holds
        them ready. Returns the blocks committed."""
        wanted = set(unit_ids)
        committed = []
        for block in self.store.pending_blocks():
            if wanted.intersection(self.store.block_units(block)):
                self._commit(block)
                committed.append(block)
        return committed


# ------------------------------------------------------------------------------------------ board alignment

def _start_board(board, configure):
    """Configure and start ``board`` unless it runs already (writing its slot timing stops it, and a Bob board
    stopped while Alice's emits loses frames: the two would count frames differently). True if it was started."""
    if board.read("control")["control"] & Control.RUN:
        return False
    configure(board)
    start(board)
    return True


def _drain(board, *names):
    """Read and drop what out streams ``names`` hold; the number of bytes dropped."""
    return sum(len(board.read_stream(name)) for name in names)


def _clear_key(board, *outputs, settle=0.01, tries=50):
    """Empty the board's key memory and the streams ``outputs``, until the key memory stays empty."""
    clear = pack_beats(board.streams["key_commands"], op=[0], passes=[0])
    for _ in range(tries):
        board.write_stream("key_commands", clear)
        _drain(board, "key_words", *outputs)
        time.sleep(settle)
        if board.read("key_count")["key_count"] == 0 and not _drain(board, "key_words", *outputs):
            return
    raise ProtocolError(f"the board's key memory does not stay empty after {tries} clears")


def _empty_detections():
    return {name: np.zeros(0, np.int64) for name in ("frame", "slot", "basis")}


class _DetectionDrain:
    """Bob's detections read during alignment: those of frames before the block's first get "not sent" answers
    (so the board's detection memory moves on), the others wait for the block."""

    def __init__(self, board, skip):
        self.board = board
        self.skip = skip                    # beats answered already (read before by a node that was killed)
        self.kept = _empty_detections()

    def read(self, before):
        stream = self.board.streams["detections"]
        beats = unpack_beats(stream, self.board.read_stream("detections"))
        beats["frame"] = unwrap(beats["frame"], before)
        columns = {name: np.asarray(beats[name], np.int64) for name in self.kept}
        skip = min(self.skip, columns["frame"].size)
        self.skip -= skip
        columns = {name: values[skip:] for name, values in columns.items()}
        columns = {name: np.concatenate([self.kept[name], values]) for name, values in columns.items()}
        if np.any(np.diff(columns["frame"]) < 0):
            raise ProtocolError("the board's detections are not in frame order")
        old = int(np.count_nonzero(columns["frame"] < before))
        _answer_not_sent(self.board, old)
        self.kept = {name: values[old:] for name, values in columns.items()}


def beats_apart(read_bytes, read_beat, written_bytes, written_beat, *, bound=1 << 24):
    """``R - W``: beats read from one stream (``R`` beats of ``read_beat`` bytes) less beats written to another
    (``W`` of ``written_beat``), from the two byte counts as the board gives them, modulo 2^32.

    Dividing each count by its beat size is right only until the first count wraps, after 4 GiB: a link that runs
    for hours passes that. Instead, ``W`` is known modulo ``2**32 / gcd(written_beat, 2**32)`` from its byte
    count, and then ``R - W`` modulo ``2**32 / gcd(read_beat, 2**32)`` from the other; ``|R - W| <= bound`` (the
    two counts stay within the board's buffers of each other) makes it unique.

    Raises
    ------
    ProtocolError
        The counts fit no ``R - W`` within ``bound`` (or more than one): they are not whole beats of the two
        streams, or the streams are further apart than their buffers allow.
    """
    read_bytes, written_bytes = read_bytes % COUNT_WRAP, written_bytes % COUNT_WRAP
    g_written, g_read = math.gcd(written_beat, COUNT_WRAP), math.gcd(read_beat, COUNT_WRAP)
    m_written, m_read = COUNT_WRAP // g_written, COUNT_WRAP // g_read
    if m_read <= 2 * bound:
        raise ValueError(f"{read_beat}-byte beats repeat every {m_read} beats modulo 2^32: no unique difference "
                         f"within {bound}")
    found = set()
    if written_bytes % g_written == 0:
        first = written_bytes // g_written * pow(written_beat // g_written, -1, m_written) % m_written
        for written in range(first, COUNT_WRAP, m_written):      # W modulo 2^32: gcd of them
            rest = (read_bytes - written * read_beat) % COUNT_WRAP
            if rest % g_read:
                continue
            apart = rest // g_read * pow(read_beat // g_read, -1, m_read) % m_read
            apart = apart - m_read if apart >= m_read // 2 else apart
            if abs(apart) <= bound:
                found.add(apart)
    if len(found) != 1:
        raise ProtocolError(f"the board's stream counts ({read_bytes} bytes of {read_beat}-byte beats read, "
                            f"{written_bytes} of {written_beat}-byte beats written) fit "
                            f"{'no' if not found else 'more than one'} difference within {bound} beats: "
                            f"restart both boards")
    return found.pop()


def _answer_not_sent(board, count):
    if count > 0:
        board.write_stream("answers", pack_beats(board.streams["answers"], alice_basis=np.zeros(count, np.uint8),
                                                 intensity=np.full(count, NOT_SENT, np.uint8)))


def align_bob(endpoint, board, *, configure, check, timeout=60.0):
    """Bob's side of board alignment (module docstring); returns ``(first frame, detections kept for it)``.

    ``check`` is a dict of settings that must be equal on both sides; Alice compares it with hers.
    """
    started = _start_board(board, configure)
    detections, answers = board.streams["detections"], board.streams["answers"]
    # Every detection the board made waits in its detection memory for an answer, in order. Those before the
    # stream's low end were read by an earlier host; the answers' high end counts those it answered.
    unanswered = beats_apart(board.stream_offsets("detections")[0], detections.beat_bytes,
                             board.stream_offsets("answers")[1], answers.beat_bytes)
    _answer_not_sent(board, unanswered)
    drain = _DetectionDrain(board, skip=max(-unanswered, 0))
    # Frames by the board's numbers (modulo 2^32) until Alice says what the host calls `frame`.
    frame = board.read("frames")["frames"]
    drain.read(before=frame)
    endpoint.send(Message("align", {"frame": frame, "started": int(started), "check": json.dumps(check)}))
    first = endpoint.receive("aligned", timeout=timeout)["frame"]
    if not isinstance(first, int) or first < 0 or (first - frame) % COUNT_WRAP:
        raise ProtocolError(f"Alice numbers frame {frame} of Bob's board {first!r}, not the same modulo 2^32")
    # Alice has released every frame before `frame`: once the board sees it begin, those are complete.
    deadline = time.monotonic() + timeout
    while unwrap(board.read("frames")["frames"], frame) <= frame:
        if time.monotonic() > deadline:
            raise ProtocolError(f"frame {frame} did not begin within {timeout} s: is Alice's board emitting?")
        drain.read(before=frame)
        time.sleep(0.002)
    drain.read(before=frame)
    _clear_key(board, "test")
    kept = dict(drain.kept, frame=drain.kept["frame"] + (first - frame))
    return first, kept


def align_alice(endpoint, board, state, *, configure, check, timeout=60.0, max_ahead=1 << 20):
    """Alice's side of board alignment; returns the block's first frame (every frame before it released).

    Bob's board cannot count more frames than Alice's sent, and hers sends only while it holds fewer than its
    choice memory's frames unreleased: a count more than ``max_ahead`` frames past those she released means that
    a board was reset while the other ran (or that her record of the frames released is not this board's)."""
    align = endpoint.receive("align", timeout=timeout)

    def refuse(reason):
        endpoint.send(Message("abort", {"reason": reason}))       # Bob learns why, and does not wait
        raise ProtocolError(reason)

    theirs = json.loads(align["check"])
    if theirs != check:
        differ = ", ".join(f"{key} {check.get(key)!r} at Alice, {theirs.get(key)!r} at Bob"
                           for key in sorted(set(check) | set(theirs)) if check.get(key) != theirs.get(key))
        refuse(f"the two nodes' configurations differ: {differ}; give both the same settings")
    frame = align["frame"]
    if not isinstance(frame, int) or not 0 <= frame < COUNT_WRAP:
        refuse(f"Bob's board counts {frame!r} frames, not a 32-bit count")
    # Both boards number frames from 0 from their start, modulo 2^32; the host numbers them on, past 2^32, from the
    # frames Alice released. A board reset while the other ran numbers them apart.
    if board.read("control")["control"] & Control.RUN:
        released = state.get("released", 0)
        frame = int(unwrap(frame, released))
        if align["started"] or not released <= frame <= released + max_ahead:
            refuse(f"the boards are out of step: Bob's counts {frame % COUNT_WRAP} frames (modulo 2^32)"
                   f"{', started now' if align['started'] else ''}, Alice released {released}: one was reset while "
                   f"the other ran; restart both boards")
    else:
        if frame > 0:
            refuse(f"Alice's board was reset while Bob's ran (it counted {frame} frames): restart both boards")
        _start_board(board, configure)
        released = 0
    _drain(board, "matches", "test")
    if frame > released:
        # A release takes effect only when it names the oldest frame held: those already released are ignored.
        board.write_stream("releases", pack_beats(board.streams["releases"],
                                                  frame=np.arange(released, frame, dtype=np.int64) % COUNT_WRAP))
    _clear_key(board, "matches", "test")
    state.set("released", frame)
    endpoint.send(Message("aligned", {"frame": frame}))
    return frame


# ---------------------------------------------------------------------------------------------------- node

class _Assignment:
    """An assignment on its way from Alice's KME to Bob's; the key-management thread sends it."""

    def __init__(self, master, slave, keys):
        self.master, self.slave, self.keys = master, slave, keys
        self.deadline = time.monotonic() + _KM_WAIT
        self.done = threading.Event()
        self.error = None


class Node:
    """One side of a link, as :class:`NodeConfig` describes it; :meth:`run` until :meth:`stop`.

    Opening the node opens (or creates) its key store and state, imports the pre-shared key if it was never
    imported, and binds its ports; :meth:`run` then serves.

    Parameters
    ----------
    config : NodeConfig
    sequencer : (int, int, int)
        Alice's sequencer registers ``(p_z, threshold0, threshold1)`` for the configuration's ``p_z`` and
        probabilities (:func:`qkdlink.sim.sequencer.thresholds` defines them). Both nodes need them: the protocol
        uses the probabilities they realise (:func:`realised_decoy`).
    entropy : optional
        The protocol's randomness (:class:`~qkdlink.host.entropy.OSEntropy` by default).

    Attributes
    ----------
    blocks : int
        Blocks committed in this process.

    Raises
    ------
    ConfigError
        The store, the pre-shared key, the certificates or the ports cannot be used.
    """

    def __init__(self, config, *, sequencer, entropy=None):
        self.config = config
        self.role = config.role
        self.sequencer = tuple(sequencer)
        self.settings = ProtocolSettings(realised_decoy(config.intensities, self.sequencer),
                                         eps_sec=config.eps_sec, eps_cor=config.eps_cor)
        self.entropy = entropy or OSEntropy()
        self.blocks = 0
        self._limit = None
        self._stopping = threading.Event()
        self._endpoints = set()
        self._endpoint_lock = threading.Lock()
        self._assignments = queue.Queue()
        self._threads = []
        self._server = self._listener = self._km_listener = self._lock_file = None
        self.store = self.state = self.index = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self):
        config = self.config
        lock = config.store_path.with_name(config.store_path.name + ".lock")
        try:
            self._lock_file = open(lock, "a")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{config.path}: [store] path: another node runs on {config.store_path} (it holds "
                              f"{lock}); stop it first") from None
        except OSError as error:
            raise ConfigError(f"{config.path}: [store] path: cannot lock {lock}: {error.strerror}") from None
        try:
            self.store = KeyStore(config.store_path, unit_bits=config.unit_bits)
            self.state = NodeState(config.state_path)
        except (OSError, KeyStoreError, NodeStateError) as error:
            raise ConfigError(f"{config.path}: [store] path: {error}") from None
        self.sync = StoreSync(self.store, self.state, self.role)
        try:
            self.sync.recover()
            import_psk(self.state, self.store, config.psk_path)
        except (KeyStoreError, NodeStateError) as error:
            raise ConfigError(f"{config.path}: [store] path: {error}") from None
        self.pad = auth.StorePad(self.store)
        self.km_pad = PrefixPad(self.pad, KM_PREFIX)
        self.index = KeyIndex(str(config.index_path))
        self.delivery = StoreDelivery(self.store, self.index, notify=self._notify if self.role == "alice" else None,
                                      key_size=config.kme.key_size)
        try:
            self._server = KeyDeliveryServer(config.kme, self.delivery, certfile=config.etsi_cert,
                                             keyfile=config.etsi_key, cafile=config.etsi_ca,
                                             host=config.etsi_host, port=config.etsi_port)
        except ssl.SSLError as error:
            raise ConfigError(f"{config.path}: [etsi] cert, key, ca: the certificates do not load: {error}") from None
        except OSError as error:
            raise ConfigError(f"{config.path}: [etsi] port: cannot serve on {config.etsi_host}:{config.etsi_port}: "
                              f"{error.strerror or error}") from None
        if self.role == "alice":
            try:
                self._listener = listen(config.peer_host, config.peer_port)
                self._km_listener = listen(config.peer_host, config.km_port)
            except OSError as error:
                raise ConfigError(f"{config.path}: [peer]: cannot listen on {config.peer_host} ports "
                                  f"{config.peer_port} and {config.km_port}: {error.strerror or error}") from None

    def close(self):
        """Close the server, the listening sockets, the key index, the state and the store."""
        for resource in (self._server, self._listener, self._km_listener, self.index, self.state, self.store):
            if resource is not None:
                try:
                    resource.close()
                except Exception as error:              # best effort: everything is durable already
                    logger.warning("%s: closing: %s", self.role, error)
        self._server = self._listener = self._km_listener = self.index = self.state = self.store = None
        if self._lock_file is not None:
            self._lock_file.close()             # releases the lock
            self._lock_file = None

    # -- running

    def run(self, *, blocks=None):
        """Serve keys and make them until :meth:`stop` (or, with ``blocks``, until that many blocks are committed
        here); then close everything."""
        self._limit = blocks
        try:
            self._server.start()
            for target, name in ((self._sessions, "sessions"), (self._key_management, "key management")):
                thread = threading.Thread(target=target, name=f"{self.role} {name}", daemon=True)
                thread.start()
                self._threads.append(thread)
            while not self._stopping.wait(0.2):
                pass
        finally:
            self.stop()
            for thread in self._threads:
                thread.join(timeout=10.0)
                if thread.is_alive():
                    logger.warning("%s: the %s thread did not end in time", self.role, thread.name)
            self.close()
            logger.info("%s: stopped after %d block(s)", self.role, self.blocks)

    def stop(self):
        """Make :meth:`run` return: the connections end, and a block in progress stores nothing."""
        self._stopping.set()
        with self._endpoint_lock:
            endpoints = list(self._endpoints)
        for endpoint in endpoints:
            endpoint.interrupt()

    def _track(self, endpoint):
        with self._endpoint_lock:
            self._endpoints.add(endpoint)
        if self._stopping.is_set():
            endpoint.interrupt()
        return endpoint

    def _untrack(self, endpoint):
        endpoint.close()
        with self._endpoint_lock:
            self._endpoints.discard(endpoint)

    # -- sessions

    def _connect(self, listener, port, pad):
        """A new authenticated connection on the block (or key-management) channel, or None."""
        try:
            if self.role == "alice":
                if not listener.pending(0.5):
                    return None
                return self._track(listener.accept(role="alice", pad=pad, timeout=_HANDSHAKE))
            return self._track(connect(self.config.peer_host, port, role="bob", pad=pad, timeout=_HANDSHAKE))
        except ChannelClosed as error:          # authentication failures are logged by the channel
            logger.debug("%s: no connection on port %d: %s", self.role, port, error)
            return None

    def _sessions(self):
        delay = _RETRY_FIRST
        while not self._stopping.is_set():
            endpoint = self._connect(self._listener, self.config.peer_port, self.pad)
            if endpoint is None:
                if self.role == "bob":              # (Alice waited for a connection already)
                    if self._stopping.wait(delay):
                        return
                    delay = min(2 * delay, _RETRY_MAX)
                continue
            before = self.blocks
            try:
                self._session(endpoint)
            except (ProtocolError, LinkError, BoardError, TimeoutError, KeyStoreError, NodeStateError,
                    OSError) as error:
                if not self._stopping.is_set():
                    logger.warning("%s: session ended: %s", self.role, error)
            except Exception:
                logger.exception("%s: session failed", self.role)
            finally:
                self._untrack(endpoint)
            if self._limit is not None and self.blocks >= self._limit:
                logger.info("%s: %d block(s) committed, as asked", self.role, self.blocks)
                self._stopping.set()
                return
            delay = _RETRY_FIRST if self.blocks > before else min(2 * delay, _RETRY_MAX)
            if self._stopping.wait(delay):
                return

    def _check(self):
        """The settings both nodes must share, which alignment compares."""
        config = self.config
        return {"unit_bits": config.unit_bits, "block_frames": config.block_frames, "eps_sec": config.eps_sec,
                "eps_cor": config.eps_cor, "intensities": list(config.intensities),
                "probabilities": list(config.probabilities), "p_z": config.p_z, "sequencer": list(self.sequencer)}

    def _configure(self, board):
        values = self.config.board
        if self.role == "alice":
            p_z, t0, t1 = self.sequencer
            configure_alice(board, period=values["period"], p_z=p_z, thresholds=(t0, t1))
        else:
            configure_bob(board, period_bins=values["period_bins"], delay=values["delay"],
                          gate_start=values["gate_start"], gate_width=values["gate_width"],
                          dead_cycles=values["dead_cycles"])

    def _session(self, endpoint):
        committed, discarded = self.sync.reconcile(endpoint)
        if committed or discarded:
            logger.info("%s: reconciled the stores: committed %s, discarded %s", self.role,
                        ", ".join(map(str, committed)) or "none", ", ".join(map(str, discarded)) or "none")
        with Board.open(self.config.board_url) as board:
            if self.role == "alice":
                frame = align_alice(endpoint, board, self.state, configure=self._configure, check=self._check())
                carry = None
            else:
                frame, carry = align_bob(endpoint, board, configure=self._configure, check=self._check())
            logger.info("%s: session with %s:%d, boards aligned at frame %d", self.role, *endpoint.peer[:2], frame)
            number = 0
            while not self._stopping.is_set() and (self._limit is None or self.blocks < self._limit):
                frame, carry = self._block(endpoint, board, number, frame, carry)
                number += 1

    def _block(self, endpoint, board, number, frame, carry):
        """Run block ``number`` from ``frame`` and commit its key; the next block's frame and carry."""
        frames = self.config.block_frames
        before = self.store.accounting()
        if self.role == "alice":
            choices = BoardChoices(board, released=frame, frames=frames)
            try:
                result = Alice(endpoint, self.settings, self.entropy).run_block(
                    number, frames << board.frame_bits, choices)
            finally:
                self.state.set("released", choices.released)
            frame = choices.released
        else:
            detections = BoardDetections(board, frames=frames, first_frame=frame, carry=carry)
            result = Bob(endpoint, self.settings, self.entropy).run_block(number, detections)
            frame, carry = frame + frames, detections.leftover
        if result.aborted:
            raise ProtocolError(f"block aborted, nothing stored: {result.abort_reason}")
        bits = int(result.key.size)
        key = pack_bits(result.key)[:bits // 8]     # whole bytes: the last one's padding bits are not key
        unit_bytes = self.config.unit_bits // 8
        if len(key) < unit_bytes:
            logger.info("%s: block %d: %d secret bits, less than a %d-bit unit: dropped", self.role, number, bits,
                        self.config.unit_bits)
            return frame, carry
        figures = self._figures(result)
        if self.role == "alice":
            needs = [max(0, self.config.reserve - self.pad.available(stream)) for stream in PAD_STREAMS]
            counts, units = plan_split(len(key), unit_bytes, needs)
            block = self.sync.commit(endpoint, self.sync.prepare(key, counts, units, figures))
        else:
            block, unit_ids, counts = self.sync.accept(endpoint, key)
            units = len(unit_ids)
        self.blocks += 1
        self._report(block, bits, units, counts, before, figures)
        return frame, carry

    def _figures(self, result):
        figures = {name: result.figures[name] for name in ("pulses", "detections", "counts", "qber_x", "qber_z",
                                                           "leaked_bits", "finite_key", "secret_bits")
                   if name in result.figures}
        figures.update(eps_sec=self.config.eps_sec, eps_cor=self.config.eps_cor)
        return figures

    def _report(self, block, bits, units, counts, before, figures):
        after = self.store.accounting()

        def consumed(accounting, streams):
            return sum(accounting["auth"].get(stream, {}).get("consumed", 0) for stream in streams)

        spent = consumed(after, auth.STREAMS) - consumed(before, auth.STREAMS)
        logger.info("%s: block %s committed: %d secret bits (QBER %.2f %%): %d units of %d bits to the store, %d "
                    "bytes to the pads; authentication took %d pad bytes, %.1f %% of the key (in all: %d pad bytes "
                    "consumed, %d key bytes stored)", self.role, block, bits, 100 * figures.get("qber_z", math.nan),
                    units, self.config.unit_bits, sum(counts), spent, 100 * spent / max(bits // 8, 1),
                    consumed(after, PAD_STREAMS), after["key_bytes_produced"])

    # -- the key-management channel

    def _notify(self, master, slave, keys):
        """Alice's KME tells Bob's (StoreDelivery's ``notify``): returns once Bob has recorded the keys."""
        assignment = _Assignment(master, slave, list(keys))
        self._assignments.put(assignment)
        if not assignment.done.wait(2 * _KM_WAIT):
            raise ChannelClosed("the key-management thread did not answer in time", kind="timeout")
        if assignment.error is not None:
            raise assignment.error

    def _key_management(self):
        try:
            (self._km_alice if self.role == "alice" else self._km_bob)()
        except Exception:
            logger.exception("%s: the key-management thread failed; keys cannot be delivered", self.role)

    def _km_alice(self):
        """The one user of Alice's key-management connections, so that no two sessions take pad at once: it
        accepts them (a new one replaces the old, which Bob gave up) and sends the assignments, one at a time."""
        endpoint, waiting = None, []
        while not self._stopping.is_set():
            if self._km_listener.pending():
                fresh = self._connect(self._km_listener, self.config.km_port, self.km_pad)
                if fresh is not None:
                    if endpoint is not None:
                        self._untrack(endpoint)
                    endpoint = fresh
            try:
                waiting.append(self._assignments.get(timeout=0.05))
            except queue.Empty:
                pass
            still = []
            for assignment in waiting:
                if endpoint is not None:
                    try:
                        self._send_assignment(endpoint, assignment)
                        assignment.error = None
                        assignment.done.set()
                        continue
                    except ProtocolError as error:
                        logger.warning("%s: key management: %s", self.role, error)
                        assignment.error = error
                        self._untrack(endpoint)
                        endpoint = None
                if time.monotonic() > assignment.deadline:
                    assignment.error = assignment.error or ChannelClosed("no key-management connection to Bob's "
                                                                         "node", kind="closed")
                    assignment.done.set()
                else:
                    still.append(assignment)
            waiting = still
        for assignment in waiting:
            assignment.error = ChannelClosed("the node is stopping", kind="closed")
            assignment.done.set()
        if endpoint is not None:
            self._untrack(endpoint)

    def _send_assignment(self, endpoint, assignment):
        units = [unit for key in assignment.keys for unit in key.unit_ids]
        endpoint.send(Message("assign", {"master": assignment.master, "slave": assignment.slave,
                                         "sizes": np.array([key.size for key in assignment.keys], np.int64),
                                         "units": _id_bytes(units)}))
        reply = endpoint.receive("assigned", timeout=_KM_WAIT)
        if not reply["ok"]:
            raise ProtocolError(f"Bob's KME refused the assignment: {reply['reason']}")
        logger.info("%s: assigned %d key(s) of %d unit(s) to SAE %s -> SAE %s", self.role, len(assignment.keys),
                    len(units), assignment.master, assignment.slave)

    def _km_bob(self):
        delay = _RETRY_FIRST
        while not self._stopping.is_set():
            endpoint = self._connect(None, self.config.km_port, self.km_pad)
            if endpoint is None:
                if self._stopping.wait(delay):
                    return
                delay = min(2 * delay, _RETRY_MAX)
                continue
            delay = _RETRY_FIRST
            try:
                while not self._stopping.is_set():
                    self._receive_assignment(endpoint)
            except ProtocolError as error:
                if not self._stopping.is_set() and getattr(error, "kind", None) not in ("closed", "timeout"):
                    logger.warning("%s: key management: %s", self.role, error)
            finally:
                self._untrack(endpoint)

    def _receive_assignment(self, endpoint):
        message = endpoint.receive("assign", timeout=_KM_IDLE)
        units = _ids(message["units"], "the assigned units")
        sizes = [int(size) for size in np.asarray(message["sizes"])]
        master, slave = message["master"], message["slave"]
        try:
            keys, start = [], 0
            for size in sizes:
                count = self.delivery.units_per_key(size) if size > 0 else 0
                if count < 1 or start + count > len(units):
                    raise ValueError(f"{len(units)} units do not make keys of {sizes} bits")
                keys.append(AssignedKey(units[start], tuple(units[start:start + count]), size))
                start += count
            if start != len(units):
                raise ValueError(f"{len(units) - start} units belong to no key")
            for block in self.sync.commit_assigned(units):
                logger.info("%s: committed block %s, whose units Alice assigned", self.role, block)
            self.delivery.record(master, slave, keys)
        except Exception as error:
            if not isinstance(error, (ValueError, KeyStoreError, NodeStateError)):
                logger.exception("%s: recording an assignment failed", self.role)
            logger.error("%s: cannot record Alice's assignment of %d unit(s) to SAE %s -> SAE %s: %s", self.role,
                         len(units), master, slave, error)
            endpoint.send(Message("assigned", {"ok": 0, "reason": str(error)}))
            return
        endpoint.send(Message("assigned", {"ok": 1, "reason": ""}))
        logger.info("%s: recorded %d key(s) for SAE %s -> SAE %s", self.role, len(keys), master, slave)

