"""The key delivery API of ETSI GS QKD 014 V1.1.1: HTTPS with mutual TLS, on the standard library alone.

Applications (SAEs, secure application entities) fetch keys from their node's key manager (KME) with three
requests (``docs/etsi014.md`` has the details and what we support):

    GET       /api/v1/keys/{slave_SAE_ID}/status     the master SAE asks what keys it can get for a slave SAE
    GET/POST  /api/v1/keys/{slave_SAE_ID}/enc_keys   the master SAE takes new keys shared with the slave SAE
    GET/POST  /api/v1/keys/{master_SAE_ID}/dec_keys  the slave SAE takes the same keys by their key_IDs

An SAE is whoever holds a client certificate from the configured CA, and its SAE ID is the certificate's subject
common name; there is no other credential. :class:`KeyDeliveryServer` checks every request (who asks, for which
peer, the parameters) and answers with the spec's JSON and status codes; where the keys come from is the business
of a :class:`KeyDelivery` backend: :class:`StoreDelivery` serves them from the node's durable key store.
"""

import base64
import http.client
import http.server
import json
import logging
import re
import socket
import sqlite3
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit


__all__ = ["KMEConfig", "DeliveryError", "KeyDelivery", "AssignedKey", "KeyIndex", "StoreDelivery",
           "KeyDeliveryAPI", "KeyDeliveryServer", "KeyDeliveryClient", "server_context", "client_context"]


logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024                    # bytes: a request for the largest key_ID list is well below this
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ROUTE = re.compile(r"/api/v1/keys/([^/]+)/(status|enc_keys|dec_keys)")
_METHODS = {"status": ("GET",), "enc_keys": ("GET", "POST"), "dec_keys": ("GET", "POST")}


# ------------------------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class KMEConfig:
    """What a KME serves and the limits it announces in its Status.

    Parameters
    ----------
    kme_id : str
        This KME's ID (``source_KME_ID`` in a Status).
    saes : mapping of str to str
        Every SAE this KME knows, SAE ID to the ID of the KME it is attached to: this KME for the SAEs it serves,
        the peer KME for the SAEs they share keys with. An SAE not in here is refused.
    key_size : int
        Key size in bits when a request gives none.
    min_key_size, max_key_size : int
        The key sizes (bits) a request may ask for; every size is a multiple of 8.
    max_key_per_request : int
        The most keys one ``enc_keys`` request may ask for, and the most key_IDs one ``dec_keys`` request may give.
    max_key_count : int
        The most keys the KME reports as stored (``max_key_count``; ``stored_key_count`` is capped at it).
    """
    kme_id: str
    saes: dict
    key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 8192
    max_key_per_request: int = 128
    max_key_count: int = 1_000_000

    def __post_init__(self):
        if not isinstance(self.kme_id, str) or not self.kme_id:
            raise ValueError(f"KME ID must be a non-empty string, not {self.kme_id!r}")
        saes = dict(self.saes)
        for sae, kme in saes.items():
            if not isinstance(sae, str) or not sae or not isinstance(kme, str) or not kme:
                raise ValueError(f"SAE IDs and KME IDs must be non-empty strings, not {sae!r}: {kme!r}")
        if self.kme_id not in saes.values():
            raise ValueError(f"KME {self.kme_id!r} serves no SAE: {saes!r}")
        object.__setattr__(self, "saes", MappingProxyType(saes))
        for name in ("key_size", "min_key_size", "max_key_size"):
            value = getattr(self, name)
            if type(value) is not int or value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8 bits, not {value!r}")
        if not self.min_key_size <= self.key_size <= self.max_key_size:
            raise ValueError(f"key sizes must satisfy min_key_size <= key_size <= max_key_size, not "
                             f"{self.min_key_size} <= {self.key_size} <= {self.max_key_size}")
        if type(self.max_key_per_request) is not int or self.max_key_per_request < 1:
            raise ValueError(f"max_key_per_request must be a positive integer, not {self.max_key_per_request!r}")
        if type(self.max_key_count) is not int or self.max_key_count < 0:
            raise ValueError(f"max_key_count must be a non-negative integer, not {self.max_key_count!r}")

    @classmethod
    def from_dict(cls, data):
        """The configuration from a mapping (a config file's section) with this class's field names."""
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown KME setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**data)

    def serves(self, sae):
        """Whether ``sae`` is attached to this KME."""
        return self.saes.get(sae) == self.kme_id


# ------------------------------------------------------------------------------------------------- backend

class DeliveryError(Exception):
    """A request refused: the HTTP status and the spec's Error data (``message`` and optional ``details``).

    Parameters
    ----------
    status : int
        400 (a bad request: unknown peer SAE, bad parameters, unknown key_ID), 401 (the caller is not an SAE this
        KME serves) or 503 (the KME cannot serve now, for instance while keys are being replenished); the server
        itself also answers 404 and 405 for requests outside the API.
    message : str
        What went wrong, for a person.
    details : list of dict, optional
        Name/value pairs with more detail (the spec's ``details``).
    """

    def __init__(self, status, message, details=None):
        if type(status) is not int or not 400 <= status <= 599:
            raise ValueError(f"an error status must be an HTTP error code, not {status!r}")
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.details = details

    def body(self):
        """The spec's Error data format."""
        return {"message": self.message} if self.details is None else {"message": self.message,
                                                                      "details": self.details}


class KeyDelivery:
    """Where the API's keys come from: the contract between :class:`KeyDeliveryServer` and a key source.

    The server has already checked each request when it calls a method here: the calling SAE is attached to this
    KME, the other SAE is known and attached to a peer KME, ``number`` and ``size`` are within the configured
    limits (``size`` a multiple of 8), ``key_ids`` are distinct UUIDs. A method refuses by raising
    :class:`DeliveryError`; any other exception becomes a 503 and is logged as a bug. Methods are called from many
    threads at once.

    Methods
    -------
    status(master_sae, slave_sae) -> dict
        At least ``stored_key_count``: how many keys of the configured default size the master SAE could get now
        for the slave SAE.
    enc_keys(master_sae, slave_sae, number, size) -> list of (uuid.UUID, bytes)
        ``number`` new keys of ``size`` bits (``size // 8`` bytes each), each with a fresh key_ID, handed to
        ``master_sae`` once and never again, and retrievable exactly once by ``slave_sae`` at the peer KME through
        :meth:`dec_keys` there. Not enough key: ``DeliveryError(503, ...)``.
    dec_keys(slave_sae, master_sae, key_ids) -> list of (uuid.UUID, bytes)
        The keys with these key_IDs, in order, that ``master_sae`` took with ``enc_keys`` for ``slave_sae``; all or
        none. A key_ID that is unknown, already delivered, or meant for another pair of SAEs:
        ``DeliveryError(400, ...)``, with nothing handed out.
    """

    def status(self, master_sae, slave_sae):
        raise NotImplementedError

    def enc_keys(self, master_sae, slave_sae, number, size):
        raise NotImplementedError

    def dec_keys(self, slave_sae, master_sae, key_ids):
        raise NotImplementedError


class AssignedKey(NamedTuple):
    """One key as the master KME assigned it: its key_ID (the UUID of its first unit), its units, its size (bits)."""
    key_id: uuid.UUID
    unit_ids: tuple
    size: int


class KeyIndex:
    """The slave KME's durable record of which key-store units make up each key_ID, until the key is delivered.

    A key of more than one unit is known to the slave SAE by one key_ID, so the slave KME must remember the key's
    units and size from the moment the master KME tells it (before the master SAE receives the key) until the
    slave SAE takes it, across crashes. The key store has no such grouping and is not ours to change, so the
    record lives in its own small SQLite database (WAL, ``synchronous=FULL``: a row reported written survives a
    killed process or a power cut). ``":memory:"`` keeps it in memory, for tests only.
    """

    def __init__(self, path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, master TEXT NOT NULL, "
                         "slave TEXT NOT NULL, size INTEGER NOT NULL, units TEXT NOT NULL)")

    def close(self):
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def add(self, master, slave, keys):
        """Record ``keys`` (:class:`AssignedKey`) for the pair; atomic and idempotent.

        Recording a key_ID again with the same content does nothing; with different content it raises
        :class:`ValueError` and records none of ``keys``.
        """
        rows = [(str(key.key_id), master, slave, key.size, ",".join(str(unit) for unit in key.unit_ids))
                for key in keys]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    existing = self._db.execute("SELECT key_id, master, slave, size, units FROM keys "
                                                "WHERE key_id = ?", row[:1]).fetchone()
                    if existing is None:
                        self._db.execute("INSERT INTO keys VALUES (?, ?, ?, ?, ?)", row)
                    elif tuple(existing) != row:
                        raise ValueError(f"key_ID {row[0]} is already recorded with other units or SAEs")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def lookup(self, key_ids):
        """The recorded keys among ``key_ids``: a dict of key_ID to ``(master, slave, AssignedKey)``."""
        found = {}
        with self._lock:
            for key_id in key_ids:
                row = self._db.execute("SELECT master, slave, size, units FROM keys WHERE key_id = ?",
                                       (str(key_id),)).fetchone()
                if row is not None:
                    units = tuple(uuid.UUID(unit) for unit in row[3].split(","))
                    found[key_id] = (row[0], row[1], AssignedKey(key_id, units, row[2]))
        return found

    def remove(self, key_ids):
        """Forget ``key_ids`` (delivered keys)."""
        with self._lock:
            self._db.executemany("DELETE FROM keys WHERE key_id = ?", [(str(key_id),) for key_id in key_ids])

    def __len__(self):
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM keys").fetchone()[0]


class StoreDelivery(KeyDelivery):
    """Keys from the node's :class:`~qkdlink.host.keystore.KeyStore`: each key is whole units of the store.

    A key of ``size`` bits takes ``ceil(size / unit_bits)`` units; its key_ID is the UUID of its first unit, and
    its bytes are its units' bytes concatenated and cut to ``size // 8``. Both KMEs already agree on every unit's
    UUID and bytes, so what the master KME must tell the slave KME is only which units went to which pair of SAEs,
    grouped into which keys.

    Master side (``enc_keys``, the KME whose store hands out units with ``assign``): assign the units to the pair
    of SAEs, call ``notify(master_sae, slave_sae, keys)`` with the :class:`AssignedKey` list, and only when it
    returns take the units (erasing them) and hand the keys to the master SAE. ``notify`` must return only once the
    peer KME has made the assignment durable with :meth:`record`, so that the slave SAE can always fetch a key the
    master SAE has received. If ``notify`` raises, the request fails with a 503 and the assigned units are not
    handed out (they stay assigned and unused: a loss of key, never a key served twice).

    Slave side (``dec_keys``): :meth:`record` is what the node calls when the peer's notification arrives; it
    records the keys in the :class:`KeyIndex` and then assigns their units in the store (``assign_ids``). Both
    steps are idempotent, so a notification repeated after a crash between them completes the record.
    ``dec_keys`` looks the key_IDs up, takes their units for the slave SAE (the store checks the assignment again
    and erases them) and then forgets the key_IDs.

    Parameters
    ----------
    store : KeyStore
        The node's key store.
    index : KeyIndex
        The slave side's record of keys; needed on the master side only to answer ``dec_keys`` with a 400.
    notify : callable, optional
        ``notify(master_sae, slave_sae, keys)``: tell the peer KME. Without it this KME does not act as master:
        ``enc_keys`` is refused with a 400.
    key_size : int
        The default key size (bits) that ``stored_key_count`` is counted in.
    """

    def __init__(self, store, index, *, notify=None, key_size=256):
        # Imported here, not at the top: the API server and the KeyDelivery contract do not depend on the store.
        from .keystore import KeyNotFound, KeyStoreEmpty
        self._not_found, self._empty = KeyNotFound, KeyStoreEmpty
        self._store = store
        self._index = index
        self._notify = notify
        self.key_size = key_size

    def units_per_key(self, size):
        return -(-size // self._store.unit_bits)

    def status(self, master_sae, slave_sae):
        return {"stored_key_count": self._store.ready_units() // self.units_per_key(self.key_size)}

    def enc_keys(self, master_sae, slave_sae, number, size):
        if self._notify is None:
            raise DeliveryError(400, f"this KME does not hand out keys as master; SAE {master_sae!r} can fetch keys "
                                     f"that SAE {slave_sae!r} requested, with dec_keys")
        per_key = self.units_per_key(size)
        try:
            units = self._store.assign(number * per_key, master=master_sae, slave=slave_sae)
        except self._empty:
            available = self._store.ready_units() // per_key
            raise DeliveryError(503, f"keys are being replenished: {number} keys of {size} bits requested, "
                                     f"{available} available") from None
        keys = [AssignedKey(units[index * per_key], tuple(units[index * per_key:(index + 1) * per_key]), size)
                for index in range(number)]
        try:
            self._notify(master_sae, slave_sae, keys)
        except Exception as error:
            logger.error("ETSI014: the peer KME did not confirm %d keys for SAE %s -> SAE %s: %s; their %d units "
                         "stay unused", number, master_sae, slave_sae, error, len(units))
            raise DeliveryError(503, "the peer KME did not confirm the keys; try again later") from None
        try:
            chunks = self._store.take(units, sae=master_sae, role="master", peer=slave_sae)
        except self._not_found as error:
            raise RuntimeError(f"units just assigned to SAE {master_sae!r} cannot be taken: {error}") from error
        return [(key.key_id, b"".join(chunks[index * per_key:(index + 1) * per_key])[:size // 8])
                for index, key in enumerate(keys)]

    def record(self, master_sae, slave_sae, keys):
        """Slave side: the peer KME assigned ``keys`` (:class:`AssignedKey`) to the pair; durable on return."""
        keys = list(keys)
        for key in keys:
            if (len(key.unit_ids) != self.units_per_key(key.size) or key.size % 8 or key.size < 8
                    or key.key_id != key.unit_ids[0]):
                raise ValueError(f"inconsistent key from the peer KME: {key!r}")
        self._index.add(master_sae, slave_sae, keys)
        try:
            self._store.assign_ids([unit for key in keys for unit in key.unit_ids], master=master_sae,
                                   slave=slave_sae)
        except BaseException:
            # Not assigned here (say, a block not yet committed on this side): forget the keys until the peer
            # repeats its notification.
            self._index.remove([key.key_id for key in keys])
            raise

    def dec_keys(self, slave_sae, master_sae, key_ids):
        found = self._index.lookup(key_ids)
        refused = [key_id for key_id in key_ids if found.get(key_id, (None, None))[:2] != (master_sae, slave_sae)]
        if refused:
            raise _no_such_keys(refused, slave_sae, master_sae)
        keys = [found[key_id][2] for key_id in key_ids]
        try:
            chunks = self._store.take([unit for key in keys for unit in key.unit_ids], sae=slave_sae, role="slave",
                                      peer=master_sae)
        except self._not_found:
            # Recorded but no longer in the store: delivered already (the index row outlived a crash).
            raise _no_such_keys(list(key_ids), slave_sae, master_sae) from None
        self._index.remove(key_ids)
        result, start = [], 0
        for key in keys:
            result.append((key.key_id, b"".join(chunks[start:start + len(key.unit_ids)])[:key.size // 8]))
            start += len(key.unit_ids)
        return result


def _no_such_keys(key_ids, slave_sae, master_sae):
    # One answer for unknown, delivered and someone else's keys: a caller learns nothing about others' keys.
    return DeliveryError(400, f"no key with key_ID {key_ids[0]} for SAE {slave_sae!r} from master SAE "
                              f"{master_sae!r}: unknown, already delivered, or meant for another SAE",
                         [{"key_ID": str(key_id)} for key_id in key_ids])


# -------------------------------------------------------------------------------------------------- the API

class _MethodNotAllowed(DeliveryError):
    def __init__(self, operation, method):
        self.allow = _METHODS[operation]
        super().__init__(405, f"{operation} does not take {method}; use {' or '.join(self.allow)}")


class KeyDeliveryAPI:
    """The protocol without the transport: check one request and answer it with the spec's JSON.

    Parameters
    ----------
    config : KMEConfig
    backend : KeyDelivery
    """

    def __init__(self, config, backend):
        self.config = config
        self.backend = backend

    def handle(self, method, caller, path, query="", body=None):
        """Answer one request: ``(200, JSON object)``, or raise :class:`DeliveryError`.

        Parameters
        ----------
        method : str
            ``"GET"`` or ``"POST"``.
        caller : str or None
            The SAE ID from the client certificate (None when it has none).
        path, query : str
            The request's path (still percent-encoded) and query string.
        body : bytes or None
            The request body; None or empty when there is none.
        """
        match = _ROUTE.fullmatch(path)
        if match is None:
            raise DeliveryError(404, f"no such resource {path!r}: the API is /api/v1/keys/{{SAE_ID}}/status, "
                                     f"/enc_keys and /dec_keys")
        operation = match[2]
        if method not in _METHODS[operation]:
            raise _MethodNotAllowed(operation, method)
        self._authenticate(caller)
        try:
            other = unquote(match[1], errors="strict")
        except UnicodeDecodeError:
            raise DeliveryError(400, "the SAE ID in the path is not UTF-8 text") from None
        self._check_peer(caller, other, "master" if operation == "dec_keys" else "slave")
        if method == "GET" and body:
            raise DeliveryError(400, f"a GET request to {operation} takes its parameters in the URL, not a body")
        if method == "POST" and query:
            raise DeliveryError(400, f"a POST request to {operation} takes its parameters in the JSON body, "
                                     f"not the URL")
        if operation == "status":
            return 200, self._status(caller, other, _query(query, ()))
        if operation == "enc_keys":
            params = _query(query, ("number", "size")) if method == "GET" else _json_object(body)
            return 200, self._enc_keys(caller, other, params, from_url=method == "GET")
        if method == "GET":
            params = _query(query, ("key_ID",))
            if "key_ID" not in params:
                raise DeliveryError(400, "dec_keys by GET needs the parameter key_ID")
            key_ids = [params["key_ID"]]
        else:
            key_ids = _key_ids(_json_object(body))
        return 200, self._dec_keys(caller, other, key_ids)

    def _authenticate(self, caller):
        if caller is None:
            raise DeliveryError(401, "the client certificate names no SAE: its subject needs exactly one common "
                                     "name, the SAE ID")
        kme = self.config.saes.get(caller)
        if kme is None:
            raise DeliveryError(401, f"SAE {caller!r} is not known to KME {self.config.kme_id!r}")
        if kme != self.config.kme_id:
            raise DeliveryError(401, f"SAE {caller!r} is attached to KME {kme!r}, not to KME "
                                     f"{self.config.kme_id!r}")

    def _check_peer(self, caller, other, role):
        if other == caller:
            raise DeliveryError(400, f"SAE {caller!r} cannot share keys with itself")
        kme = self.config.saes.get(other)
        if kme is None:
            raise DeliveryError(400, f"unknown {role} SAE {other!r}")
        if kme == self.config.kme_id:
            raise DeliveryError(400, f"{role} SAE {other!r} is attached to this KME ({kme!r}); keys are shared "
                                     f"only with SAEs behind a peer KME")

    def _status(self, master, slave, params):
        config = self.config
        stored = self.backend.status(master, slave)["stored_key_count"]
        if type(stored) is not int or stored < 0:
            raise RuntimeError(f"the key delivery backend reported {stored!r} stored keys")
        return {"source_KME_ID": config.kme_id, "target_KME_ID": config.saes[slave],
                "master_SAE_ID": master, "slave_SAE_ID": slave,
                "key_size": config.key_size, "stored_key_count": min(stored, config.max_key_count),
                "max_key_count": config.max_key_count, "max_key_per_request": config.max_key_per_request,
                "max_key_size": config.max_key_size, "min_key_size": config.min_key_size,
                "max_SAE_ID_count": 0}

    def _enc_keys(self, master, slave, params, *, from_url):
        config = self.config
        unknown = sorted(set(params) - {"number", "size", "additional_slave_SAE_IDs", "extension_mandatory",
                                        "extension_optional"})
        if unknown:
            raise DeliveryError(400, f"unknown Key request field(s) {', '.join(map(repr, unknown))}",
                                [{"unknown_field": name} for name in unknown])
        number = _integer(params, "number", 1, from_url=from_url)
        size = _integer(params, "size", config.key_size, from_url=from_url)
        if number < 1:
            raise DeliveryError(400, f"number must be at least 1, not {number}")
        if number > config.max_key_per_request:
            raise DeliveryError(400, f"number {number} is above max_key_per_request, {config.max_key_per_request}")
        if size % 8:
            raise DeliveryError(400, f"size must be a multiple of 8 bits, not {size}")
        if not config.min_key_size <= size <= config.max_key_size:
            raise DeliveryError(400, f"size {size} is outside min_key_size to max_key_size, {config.min_key_size} "
                                     f"to {config.max_key_size} bits")
        slaves = params.get("additional_slave_SAE_IDs", [])
        if not isinstance(slaves, list) or not all(isinstance(sae, str) for sae in slaves):
            raise DeliveryError(400, "additional_slave_SAE_IDs must be an array of SAE IDs")
        if slaves:
            raise DeliveryError(400, "key multicast is not supported (max_SAE_ID_count is 0): "
                                     "additional_slave_SAE_IDs must be empty")
        extensions = {}
        for name in ("extension_mandatory", "extension_optional"):
            value = params.get(name, [])
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                raise DeliveryError(400, f"{name} must be an array of objects (name/value pairs)")
            extensions[name] = [key for item in value for key in item]
        if extensions["extension_mandatory"]:
            raise DeliveryError(400, "not all mandatory extensions are supported: this KME supports none",
                                [{"extension_mandatory": name} for name in extensions["extension_mandatory"]])
        if extensions["extension_optional"]:
            logger.debug("ETSI014: ignoring optional extension(s) %s", ", ".join(extensions["extension_optional"]))
        keys = self.backend.enc_keys(master, slave, number, size)
        if len(keys) != number or len({key_id for key_id, _ in keys}) != number or \
                any(not isinstance(key_id, uuid.UUID) or len(key) != size // 8 for key_id, key in keys):
            raise RuntimeError(f"the key delivery backend answered {number} keys of {size} bits with "
                               f"{len(keys)} keys of {sorted({len(key) * 8 for _, key in keys})} bits")
        return _key_container(keys)

    def _dec_keys(self, slave, master, key_ids):
        if len(key_ids) > self.config.max_key_per_request:
            raise DeliveryError(400, f"{len(key_ids)} key_IDs are more than max_key_per_request, "
                                     f"{self.config.max_key_per_request}")
        parsed = []
        for key_id in key_ids:
            if not isinstance(key_id, str) or not _UUID.fullmatch(key_id):
                raise DeliveryError(400, f"key_ID must be a UUID (like 550e8400-e29b-41d4-a716-446655440000), "
                                         f"not {key_id!r}")
            parsed.append(uuid.UUID(key_id))
        if len(set(parsed)) != len(parsed):
            raise DeliveryError(400, "a key_ID appears more than once")
        keys = self.backend.dec_keys(slave, master, parsed)
        if [key_id for key_id, _ in keys] != parsed or any(not isinstance(key, bytes) for _, key in keys):
            raise RuntimeError("the key delivery backend answered other key_IDs than those asked for")
        return _key_container(keys)


def _key_container(keys):
    return {"keys": [{"key_ID": str(key_id), "key": base64.b64encode(key).decode("ascii")} for key_id, key in keys]}


def _query(query, names):
    """The URL parameters, each at most once and all among ``names``, as strings."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), errors="strict")
    except (ValueError, UnicodeDecodeError) as error:
        raise DeliveryError(400, f"malformed URL parameters: {error}") from None
    params = {}
    for name, value in pairs:
        if name not in names:
            known = ", ".join(names) if names else "none"
            raise DeliveryError(400, f"unknown URL parameter {name!r} (this request takes: {known})",
                                [{"unknown_parameter": name}])
        if name in params:
            raise DeliveryError(400, f"URL parameter {name!r} is given more than once")
        params[name] = value
    return params


def _integer(params, name, default, *, from_url):
    value = params.get(name, default)
    if from_url and isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,9}", value):
            raise DeliveryError(400, f"{name} must be a whole number, not {value!r}")
        return int(value)
    if type(value) is not int:
        raise DeliveryError(400, f"{name} must be an integer, not {json.dumps(value)}")
    return value


def _json_object(body):
    if not body:
        raise DeliveryError(400, "a POST request needs a JSON object as its body ({} for all defaults)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise DeliveryError(400, "the request body is not UTF-8 text") from None

    def unique(pairs):
        names = [name for name, _ in pairs]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"field {name!r} appears more than once")
        return dict(pairs)

    def no_constant(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        value = json.loads(text, object_pairs_hook=unique, parse_constant=no_constant)
    except (ValueError, RecursionError) as error:
        raise DeliveryError(400, f"malformed JSON in the request body: {error}") from None
    if not isinstance(value, dict):
        raise DeliveryError(400, f"the request body must be a JSON object, not {type(value).__name__}")
    return value


def _key_ids(params):
    """The key_IDs of a Key IDs object (extensions, for future use in the spec, are accepted and ignored)."""
    unknown = sorted(set(params) - {"key_IDs", "key_IDs_extension"})
    if unknown:
        raise DeliveryError(400, f"unknown Key IDs field(s) {', '.join(map(repr, unknown))}",
                            [{"unknown_field": name} for name in unknown])
    items = params.get("key_IDs")
    if not isinstance(items, list) or not items:
        raise DeliveryError(400, "key_IDs must be a non-empty array of objects with a key_ID")
    key_ids = []
    for item in items:
        if not isinstance(item, dict) or "key_ID" not in item or set(item) - {"key_ID", "key_ID_extension"}:
            raise DeliveryError(400, f"each element of key_IDs must be an object with a key_ID (and optionally a "
                                     f"key_ID_extension), not {json.dumps(item)[:100]}")
        key_ids.append(item["key_ID"])
    return key_ids


# ------------------------------------------------------------------------------------------------ transport

def server_context(certfile, keyfile, cafile):
    """The KME's TLS settings: TLS 1.2 or later, and a client certificate signed by ``cafile`` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certfile, keyfile)
    context.load_verify_locations(cafile)
    return context


def client_context(certfile, keyfile, cafile):
    """An SAE's TLS settings: TLS 1.2 or later, the KME's certificate checked against ``cafile`` and its host."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.load_verify_locations(cafile)
    return context


def _common_name(connection):
    """The SAE ID: the one common name in the client certificate's subject, or None."""
    subject = connection.getpeercert().get("subject", ())
    names = [value for rdn in subject for name, value in rdn if name == "commonName"]
    return names[0] if len(names) == 1 else None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"           # keep-alive: an SAE pays for the TLS handshake once
    disable_nagle_algorithm = True          # headers and body leave at once, not after the client's delayed ACK
    server_version = "qkdlink-kme"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.request_timeout
        super().setup()

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")

    def do_PATCH(self):
        self._serve("PATCH")

    def _serve(self, method):
        started = time.perf_counter()
        caller = _common_name(self.connection)
        split = urlsplit(self.path)
        headers = {}
        try:
            body = self._read_body()
            status, payload = self.server.api.handle(method, caller, split.path, split.query, body)
        except DeliveryError as error:
            status, payload = error.status, error.body()
            if isinstance(error, _MethodNotAllowed):
                headers["Allow"] = ", ".join(error.allow)
        except Exception:
            logger.exception("ETSI014: %s %s from SAE %s failed", method, split.path, caller)
            status, payload = 503, {"message": "internal error of the KME"}
        # Logged before the answer leaves, so that the log is complete when the client has it. Bodies (keys) are
        # never logged; the path holds SAE IDs and the query at most a key_ID, neither of them secret.
        logger.info("ETSI014: %s %s SAE %s -> %d %s(%.1f ms)", method, split.path, caller, status,
                    f"{payload['message']} " if status != 200 else "", 1e3 * (time.perf_counter() - started))
        self._send_json(status, payload, headers)

    def _read_body(self):
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise DeliveryError(400, "chunked request bodies are not supported: send a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        if not length.isdigit():
            self.close_connection = True
            raise DeliveryError(400, f"bad Content-Length {length!r}")
        if int(length) > MAX_BODY:
            self.close_connection = True
            if int(length) <= 16 * MAX_BODY:
                # Read it anyway: closing with unread data makes TCP reset the connection, and the client might
                # lose the answer.
                for start in range(0, int(length), MAX_BODY):
                    self.rfile.read(min(MAX_BODY, int(length) - start))
            raise DeliveryError(400, f"the request body of {int(length)} bytes is over the limit of {MAX_BODY}")
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            self.close_connection = True
            raise DeliveryError(400, "the request body ended early")
        return body

    def _send_json(self, status, payload, headers=()):
        data = json.dumps(payload).encode() if self.command != "HEAD" else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))          # (0 for HEAD, which has no body)
        self.send_header("Cache-Control", "no-store")               # responses may carry keys
        for name, value in dict(headers).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        # http.server's own refusals (a malformed request line, an unsupported method) in the spec's Error format.
        self.close_connection = True
        self._send_json(code, {"message": message or self.responses.get(code, ("error",))[0]})

    def log_message(self, format, *args):
        logger.debug("ETSI014: %s " + format, self.address_string(), *args)


class KeyDeliveryServer(http.server.ThreadingHTTPServer):
    """The ETSI GS QKD 014 API on HTTPS with mutual TLS, one thread per connection.

    The TLS handshake happens in the connection's thread, so a slow or failing client holds up no one else. A
    client without a certificate signed by ``cafile`` is refused during the handshake and never reaches the API.

    Parameters
    ----------
    config : KMEConfig
    backend : KeyDelivery
    certfile, keyfile : str or Path
        The KME's server certificate and private key (PEM).
    cafile : str or Path
        The CA whose client certificates identify SAEs.
    host, port : str, int
        Where to listen; port 0 picks a free one (see :attr:`address`).
    timeout : float
        Seconds a connection may stay silent (during the handshake, a request, or between keep-alive requests).
    """
    daemon_threads = True

    def __init__(self, config, backend, *, certfile, keyfile, cafile, host="127.0.0.1", port=0, timeout=30.0):
        self.api = KeyDeliveryAPI(config, backend)
        self.ssl_context = server_context(certfile, keyfile, cafile)
        self.request_timeout = timeout
        self._connections = set()
        self._lock = threading.Lock()
        self._thread = None
        super().__init__((host, port), _Handler)

    @property
    def address(self):
        return self.server_address[:2]

    @property
    def url(self):
        host, port = self.address
        return f"https://{host}:{port}"

    def start(self):
        """Serve in a background thread; returns self."""
        # A short poll interval: close() waits for the serving loop to notice, up to one interval.
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), name=f"etsi014-{self.address[1]}",
                                        daemon=True)
        self._thread.start()
        logger.info("ETSI014: KME %s serving on %s", self.api.config.kme_id, self.url)
        return self

    def close(self):
        """Stop serving, close the listening socket and every open connection."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def finish_request(self, request, client_address):
        request.settimeout(self.request_timeout)
        try:
            connection = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            logger.warning("ETSI014: TLS handshake with %s:%d refused: %s", *client_address[:2], error)
            return
        with self._lock:
            self._connections.add(connection)
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def handle_error(self, request, client_address):
        # A client that goes away mid-request is routine, not worth a traceback on stderr.
        logger.debug("ETSI014: connection from %s:%d ended with an error", *client_address[:2], exc_info=True)


# -------------------------------------------------------------------------------------------------- client

class KeyDeliveryClient:
    """An SAE's side of the API, on one kept-alive HTTPS connection; a refusal raises :class:`DeliveryError`.

    Parameters
    ----------
    host, port : str, int
        The KME.
    certfile, keyfile : str or Path
        The SAE's client certificate (its common name is the SAE ID) and private key.
    cafile : str or Path
        The CA that signed the KME's certificate.
    timeout : float
        Seconds to wait for the KME.
    """

    def __init__(self, host, port, *, certfile, keyfile, cafile, timeout=10.0):
        self._address = (host, port)
        self._context = client_context(certfile, keyfile, cafile)
        self._timeout = timeout
        self._connection = None

    def close(self):
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def request(self, method, path, body=None):
        """Send one request; ``(status, decoded JSON)``. ``body`` is encoded as JSON unless it is bytes."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(*self._address, timeout=self._timeout,
                                                           context=self._context)
        try:
            self._connection.request(method, path, body=body, headers=headers)
            response = self._connection.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, json.loads(data) if data else None

    def _call(self, method, path, body=None):
        status, payload = self.request(method, path, body)
        if status != 200:
            payload = payload if isinstance(payload, dict) else {}
            raise DeliveryError(status, payload.get("message", f"HTTP {status}"), payload.get("details"))
        return payload

    def status(self, slave_sae):
        """The Status for keys shared with ``slave_sae``, as a dict."""
        return self._call("GET", f"/api/v1/keys/{quote(slave_sae, safe='')}/status")

    def enc_keys(self, slave_sae, number=None, size=None, *, post=True):
        """New keys shared with ``slave_sae``: a list of ``(uuid.UUID, bytes)``."""
        path = f"/api/v1/keys/{quote(slave_sae, safe='')}/enc_keys"
        params = {name: value for name, value in (("number", number), ("size", size)) if value is not None}
        if post:
            payload = self._call("POST", path, params)
        else:
            payload = self._call("GET", f"{path}?{urlencode(params)}" if params else path)
        return _decode_keys(payload)

    def dec_keys(self, master_sae, key_ids, *, post=True):
        """The keys with ``key_ids`` that ``master_sae`` took for this SAE: a list of ``(uuid.UUID, bytes)``."""
        path = f"/api/v1/keys/{quote(master_sae, safe='')}/dec_keys"
        key_ids = [str(key_id) for key_id in key_ids]
        if post:
            payload = self._call("POST", path, {"key_IDs": [{"key_ID": key_id} for key_id in key_ids]})
        else:
            if len(key_ids) != 1:
                raise ValueError(f"dec_keys by GET takes exactly one key_ID, not {len(key_ids)}")
            payload = self._call("GET", f"{path}?{urlencode({'key_ID': key_ids[0]})}")
        return _decode_keys(payload)


def _decode_keys(payload):
    return [(uuid.UUID(item["key_ID"]), base64.b64decode(item["key"], validate=True)) for item in payload["keys"]]
