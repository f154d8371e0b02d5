"""The ETSI GS QKD 014 API on real HTTPS with mutual TLS: two KMEs on loopback, SAEs with certificates from the
test PKI, and an in-memory key source that follows the :class:`KeyDelivery` contract.

Expected status codes and JSON fields are the spec's (ETSI GS QKD 014 V1.1.1, clauses 5 and 6; see
``docs/etsi014.md``), written out here rather than taken from the code.
"""

import base64
import contextlib
import datetime
import http.client
import json
import os
import ssl
import threading
import time
import unittest
import uuid

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qkdlink.host.certs import make_test_pki
from qkdlink.host.etsi014 import (AssignedKey, DeliveryError, KeyDelivery, KeyDeliveryClient, KeyDeliveryServer,
                                  KeyIndex, KMEConfig, StoreDelivery, client_context)
from qkdlink.host.keystore import KeyStore


TIMEOUT = 5.0                                      # seconds: every socket in these tests gives up after this
SAES = {"sae-a1": "kme-a", "sae-a2": "kme-a", "sae-b1": "kme-b", "sae-b2": "kme-b"}
LIMITS = dict(key_size=256, min_key_size=64, max_key_size=1024, max_key_per_request=8, max_key_count=1000)
STATUS_FIELDS = {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size", "stored_key_count",
                 "max_key_count", "max_key_per_request", "max_key_size", "min_key_size", "max_SAE_ID_count"}


class FakeLink:
    """Both ends of a link in memory: keys the master KME hands out wait here for the slave KME, once each."""

    def __init__(self, keys):
        self.lock = threading.Lock()
        self.remaining = keys                      # how many more keys the link can hand out
        self.waiting = {}                          # key_ID -> (master SAE, slave SAE, key)


class FakeDelivery(KeyDelivery):
    """A :class:`KeyDelivery` on a :class:`FakeLink`, with OS-random keys."""

    def __init__(self, link):
        self.link = link

    def status(self, master_sae, slave_sae):
        return {"stored_key_count": self.link.remaining}

    def enc_keys(self, master_sae, slave_sae, number, size):
        with self.link.lock:
            if number > self.link.remaining:
                raise DeliveryError(503, f"keys are being replenished: {self.link.remaining} available")
            self.link.remaining -= number
            keys = [(uuid.uuid4(), os.urandom(size // 8)) for _ in range(number)]
            for key_id, key in keys:
                self.link.waiting[key_id] = (master_sae, slave_sae, key)
        return keys

    def dec_keys(self, slave_sae, master_sae, key_ids):
        with self.link.lock:
            for key_id in key_ids:
                if self.link.waiting.get(key_id, (None, None))[:2] != (master_sae, slave_sae):
                    raise DeliveryError(400, f"no key {key_id} for SAE {slave_sae} from SAE {master_sae}")
            return [(key_id, self.link.waiting.pop(key_id)[2]) for key_id in key_ids]


class BrokenDelivery(FakeDelivery):
    def enc_keys(self, master_sae, slave_sae, number, size):
        return [(uuid.uuid4(), b"short")]          # breaks the contract: wrong size


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        self.json = json.loads(body) if body else None


class APITestCase(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path):
        self.tmp_path = tmp_path

    def setUp(self):
        self.pki = make_test_pki(self.tmp_path / "pki", ["kme-a", "kme-b"], [*SAES, "sae-x"])
        self.link = FakeLink(keys=40)
        self.servers = {}
        for kme in ("kme-a", "kme-b"):
            self.servers[kme] = self.start_server(kme, FakeDelivery(self.link))

    def start_server(self, kme, backend):
        server = KeyDeliveryServer(KMEConfig(kme, SAES, **LIMITS), backend, certfile=self.pki.kmes[kme][0],
                                   keyfile=self.pki.kmes[kme][1], cafile=self.pki.ca_cert, timeout=TIMEOUT)
        server.start()
        self.addCleanup(server.close)
        return server

    def context(self, sae):
        return client_context(*self.pki.saes[sae], self.pki.ca_cert)

    def request(self, sae, kme, method, path, body=None, *, context=None):
        """One request on a fresh connection; a dict or list body is sent as JSON, bytes as they are."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        server = self.servers[kme] if isinstance(kme, str) else kme
        connection = http.client.HTTPSConnection(*server.address, timeout=TIMEOUT,
                                                 context=context or self.context(sae))
        try:
            connection.request(method, path, body=body,
                               headers={"Content-Type": "application/json"} if body is not None else {})
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

    def assert_error(self, response, status, message_part=""):
        """The spec's Error data format: a ``message`` string and optionally ``details``, an array of objects."""
        self.assertEqual(response.status, status, response.body)
        self.assertEqual(response.headers["Content-Type"], "application/json")
        self.assertIsInstance(response.json, dict)
        self.assertLessEqual(set(response.json), {"message", "details"})
        self.assertIsInstance(response.json["message"], str)
        self.assertTrue(response.json["message"])
        if "details" in response.json:
            self.assertIsInstance(response.json["details"], list)
            for item in response.json["details"]:
                self.assertIsInstance(item, dict)
        self.assertIn(message_part, response.json["message"])

    def keys_of(self, response, *, number, size):
        """The Key container's keys as ``{key_ID: bytes}``, checking its format (clause 6.3)."""
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.headers["Content-Type"], "application/json")
        self.assertEqual(set(response.json), {"keys"})
        keys = {}
        for item in response.json["keys"]:
            self.assertEqual(set(item), {"key_ID", "key"})
            self.assertEqual(str(uuid.UUID(item["key_ID"])), item["key_ID"])       # canonical UUID text
            key = base64.b64decode(item["key"], validate=True)
            self.assertEqual(len(key), size // 8)
            keys[item["key_ID"]] = key
        self.assertEqual(len(keys), number)
        return keys


class StatusTestCase(APITestCase):
    def test_fields(self):
        response = self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/status")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.headers["Content-Type"], "application/json")
        self.assertEqual(set(response.json), STATUS_FIELDS)
        self.assertEqual(response.json, {
            "source_KME_ID": "kme-a", "target_KME_ID": "kme-b", "master_SAE_ID": "sae-a1", "slave_SAE_ID": "sae-b1",
            "key_size": 256, "stored_key_count": 40, "max_key_count": 1000, "max_key_per_request": 8,
            "max_key_size": 1024, "min_key_size": 64, "max_SAE_ID_count": 0})

    def test_stored_count_follows_backend_and_is_capped(self):
        self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {"number": 3})
        response = self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/status")
        self.assertEqual(response.json["stored_key_count"], 37)
        self.link.remaining = 5000
        response = self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/status")
        self.assertEqual(response.json["stored_key_count"], 1000)      # never above max_key_count

    def test_percent_encoded_sae_id(self):
        response = self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae%2Db1/status")
        self.assertEqual(response.json["slave_SAE_ID"], "sae-b1")


class DeliveryTestCase(APITestCase):
    def test_enc_keys_then_dec_keys_every_method(self):
        for enc_method in ("GET", "POST"):
            for dec_method in ("GET", "POST"):
                with self.subTest(enc_keys=enc_method, dec_keys=dec_method):
                    if enc_method == "GET":
                        response = self.request("sae-a1", "kme-a", "GET",
                                                "/api/v1/keys/sae-b1/enc_keys?number=3&size=512")
                    else:
                        response = self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys",
                                                {"number": 3, "size": 512})
                    master_keys = self.keys_of(response, number=3, size=512)
                    if dec_method == "GET":
                        slave_keys = {}
                        for key_id in master_keys:
                            response = self.request("sae-b1", "kme-b", "GET",
                                                    f"/api/v1/keys/sae-a1/dec_keys?key_ID={key_id}")
                            slave_keys.update(self.keys_of(response, number=1, size=512))
                    else:
                        response = self.request("sae-b1", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys",
                                                {"key_IDs": [{"key_ID": key_id} for key_id in master_keys]})
                        slave_keys = self.keys_of(response, number=3, size=512)
                        self.assertEqual(list(slave_keys), list(master_keys))      # in the order asked
                    self.assertEqual(slave_keys, master_keys)

    def test_defaults(self):
        # Without parameters: one key of key_size bits (clause 6.2: number defaults to 1, size to key_size).
        self.keys_of(self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/enc_keys"), number=1, size=256)
        self.keys_of(self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {}), number=1, size=256)

    def test_optional_extensions_and_empty_lists_accepted(self):
        response = self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys",
                                {"number": 2, "size": 64, "additional_slave_SAE_IDs": [], "extension_mandatory": [],
                                 "extension_optional": [{"abc_route_type": "direct"}]})
        self.keys_of(response, number=2, size=64)
        key_id = next(iter(response.json["keys"]))["key_ID"]
        response = self.request("sae-b1", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys",
                                {"key_IDs": [{"key_ID": key_id, "key_ID_extension": {"x": 1}}],
                                 "key_IDs_extension": None})
        self.keys_of(response, number=1, size=64)

    def test_key_served_once(self):
        keys = self.keys_of(self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {"number": 2}),
                            number=2, size=256)
        body = {"key_IDs": [{"key_ID": key_id} for key_id in keys]}
        self.keys_of(self.request("sae-b1", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys", body), number=2,
                     size=256)
        for key_id in keys:
            response = self.request("sae-b1", "kme-b", "GET", f"/api/v1/keys/sae-a1/dec_keys?key_ID={key_id}")
            self.assert_error(response, 400)
        # New keys never reuse a key_ID.
        again = self.keys_of(self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys",
                                          {"number": 8}), number=8, size=256)
        self.assertFalse(set(again) & set(keys))

    def test_keys_only_for_their_slave(self):
        keys = self.keys_of(self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {"number": 2}),
                            number=2, size=256)
        body = {"key_IDs": [{"key_ID": key_id} for key_id in keys]}
        # Another SAE at the slave KME, naming the right master: refused (400: no such key for it).
        self.assert_error(self.request("sae-b2", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys", body), 400)
        # The right slave naming the wrong master: refused too.
        self.assert_error(self.request("sae-b1", "kme-b", "POST", "/api/v1/keys/sae-a2/dec_keys", body), 400)
        # An SAE of the master's KME cannot ask the slave KME at all (401), nor its own KME (its own keys).
        self.assert_error(self.request("sae-a2", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys", body), 401)
        self.assert_error(self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/dec_keys", body), 400)
        # None of that consumed the keys: the right slave still gets them, with the master's bytes.
        self.assertEqual(self.keys_of(self.request("sae-b1", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys", body),
                                      number=2, size=256), keys)

    def test_not_enough_key(self):
        self.link.remaining = 3
        response = self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {"number": 4})
        self.assert_error(response, 503, "replenished")
        self.keys_of(self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {"number": 3}),
                     number=3, size=256)

    def test_client_class(self):
        files = dict(certfile=self.pki.saes["sae-a1"][0], keyfile=self.pki.saes["sae-a1"][1],
                     cafile=self.pki.ca_cert)
        with KeyDeliveryClient(*self.servers["kme-a"].address, timeout=TIMEOUT, **files) as alice, \
                KeyDeliveryClient(*self.servers["kme-b"].address, timeout=TIMEOUT,
                                  certfile=self.pki.saes["sae-b1"][0], keyfile=self.pki.saes["sae-b1"][1],
                                  cafile=self.pki.ca_cert) as bob:
            self.assertEqual(alice.status("sae-b1")["target_KME_ID"], "kme-b")
            sent = alice.enc_keys("sae-b1", number=2, size=128) + alice.enc_keys("sae-b1", post=False)
            self.assertEqual([len(key) for _, key in sent], [16, 16, 32])
            received = bob.dec_keys("sae-a1", [key_id for key_id, _ in sent[:2]])
            received += bob.dec_keys("sae-a1", [sent[2][0]], post=False)
            self.assertEqual(received, sent)
            with self.assertRaises(DeliveryError) as caught:
                bob.dec_keys("sae-a1", [sent[0][0]])
            self.assertEqual(caught.exception.status, 400)
            with self.assertRaises(DeliveryError) as caught:
                alice.enc_keys("sae-b1", size=12)
            self.assertEqual(caught.exception.status, 400)

    def test_concurrent_clients_get_distinct_keys(self):
        self.link.remaining = 200
        results, errors = [], []

        def client(sae):
            try:
                with KeyDeliveryClient(*self.servers["kme-a"].address, certfile=self.pki.saes[sae][0],
                                       keyfile=self.pki.saes[sae][1], cafile=self.pki.ca_cert,
                                       timeout=TIMEOUT) as session:
                    for _ in range(5):
                        results.extend(session.enc_keys("sae-b1", number=4))
            except Exception as error:             # reported below: a thread's exception is otherwise lost
                errors.append(error)

        threads = [threading.Thread(target=client, args=(sae,)) for sae in ("sae-a1", "sae-a2") * 5]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 4)
        self.assertEqual(errors, [])
        self.assertEqual(len({key_id for key_id, _ in results}), 200)

    def test_requests_logged_without_key_material(self):
        with self.assertLogs("qkdlink.host.etsi014", "INFO") as logs:
            response = self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {"number": 2})
            self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/enc_keys?size=7")
        output = "\n".join(logs.output)
        self.assertIn("POST /api/v1/keys/sae-b1/enc_keys SAE sae-a1 -> 200", output)
        self.assertIn("GET /api/v1/keys/sae-b1/enc_keys SAE sae-a1 -> 400", output)
        for item in response.json["keys"]:
            self.assertNotIn(item["key"], output)
            self.assertNotIn(base64.b64decode(item["key"]).hex(), output)

    def test_backend_breaking_the_contract_is_a_503(self):
        server = self.start_server("kme-a", BrokenDelivery(self.link))
        with self.assertLogs("qkdlink.host.etsi014", "ERROR"):
            response = self.request("sae-a1", server, "GET", "/api/v1/keys/sae-b1/enc_keys")
        self.assert_error(response, 503)


class StoreDeliveryTestCase(APITestCase):
    """:class:`StoreDelivery` on two real key stores holding the same committed blocks, notified in-process."""

    UNIT_BITS = 256

    def setUp(self):
        self.pki = make_test_pki(self.tmp_path / "pki", ["kme-a", "kme-b"], list(SAES))
        self.stores = {kme: KeyStore(self.tmp_path / f"{kme}.keys", unit_bits=self.UNIT_BITS)
                       for kme in ("kme-a", "kme-b")}
        self.indexes = {kme: KeyIndex(self.tmp_path / f"{kme}.index") for kme in ("kme-a", "kme-b")}
        for kme in ("kme-a", "kme-b"):
            self.addCleanup(self.stores[kme].close)
            self.addCleanup(self.indexes[kme].close)
        self.unit_bytes = {}                       # every unit's bytes, as both sides stored them
        self.add_block(12)
        self.notified = []
        self.bob = StoreDelivery(self.stores["kme-b"], self.indexes["kme-b"])
        self.alice = StoreDelivery(self.stores["kme-a"], self.indexes["kme-a"], notify=self.notify)
        self.servers = {"kme-a": self.start_server("kme-a", self.alice),
                        "kme-b": self.start_server("kme-b", self.bob)}

    def add_block(self, units):
        block, unit_ids = uuid.uuid4(), [uuid.uuid4() for _ in range(units)]
        key = os.urandom(units * self.UNIT_BITS // 8)
        for store in self.stores.values():
            store.store_block(block, key, unit_ids, {"qber": 0.02})
            store.commit_block(block)
        size = self.UNIT_BITS // 8
        self.unit_bytes.update((unit, key[index * size:(index + 1) * size]) for index, unit in enumerate(unit_ids))
        return unit_ids

    def notify(self, master, slave, keys):
        # The master KME has assigned the units but handed none out yet; then the slave KME records them.
        for key in keys:
            for unit in key.unit_ids:
                self.assertEqual(self.stores["kme-a"].unit_state(unit), "assigned")
        self.notified.append((master, slave, keys))
        self.bob.record(master, slave, keys)

    def expected(self, key_id, size):
        """A key's bytes from the stored blocks: its units, from the key_ID's unit on, cut to size."""
        units = list(self.unit_bytes)
        start = units.index(uuid.UUID(key_id))
        return b"".join(self.unit_bytes[unit] for unit in units[start:start + -(-size // self.UNIT_BITS)])[:size // 8]

    def test_keys_of_several_units(self):
        self.assertEqual(self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/status").json[
            "stored_key_count"], 12)
        response = self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {"number": 2, "size": 520})
        keys = self.keys_of(response, number=2, size=520)           # 520 bits: 3 units of 256, cut to 65 bytes
        units = list(self.unit_bytes)
        self.assertEqual([uuid.UUID(key_id) for key_id in keys], [units[0], units[3]])
        for key_id, key in keys.items():
            self.assertEqual(key, self.expected(key_id, 520))
        [(master, slave, assigned)] = self.notified
        self.assertEqual((master, slave), ("sae-a1", "sae-b1"))
        self.assertEqual([key.unit_ids for key in assigned], [tuple(units[0:3]), tuple(units[3:6])])
        self.assertEqual(self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/status").json[
            "stored_key_count"], 6)

        body = {"key_IDs": [{"key_ID": key_id} for key_id in keys]}
        self.assert_error(self.request("sae-b2", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys", body), 400)
        self.assertEqual(self.keys_of(self.request("sae-b1", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys", body),
                                      number=2, size=520), keys)
        self.assert_error(self.request("sae-b1", "kme-b", "POST", "/api/v1/keys/sae-a1/dec_keys", body), 400)
        self.assertEqual(len(self.indexes["kme-b"]), 0)
        for unit in units[:6]:
            for store in self.stores.values():
                self.assertEqual(store.unit_state(unit), "delivered")

    def test_not_enough_key(self):
        # 4 keys of 1024 bits need 16 units; 12 are ready.
        response = self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys",
                                {"number": 4, "size": 1024})
        self.assert_error(response, 503, "keys are being replenished")
        self.assertEqual(self.notified, [])
        self.assertEqual(self.stores["kme-a"].ready_units(), 12)
        self.add_block(4)
        self.keys_of(self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys",
                                  {"number": 4, "size": 1024}), number=4, size=1024)

    def test_unconfirmed_keys_are_not_handed_out(self):
        def refuse(master, slave, keys):
            self.notified.append(keys)
            raise ConnectionError("peer KME unreachable")
        self.alice._notify = refuse
        with self.assertLogs("qkdlink.host.etsi014", "ERROR"):
            response = self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {"number": 1})
        self.assert_error(response, 503, "peer KME")
        [[key]] = self.notified
        self.assertEqual(self.stores["kme-a"].unit_state(key.unit_ids[0]), "assigned")       # not delivered
        self.assertEqual(self.stores["kme-b"].unit_state(key.unit_ids[0]), "ready")

    def test_slave_record_survives_restart(self):
        keys = self.keys_of(self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/enc_keys?size=256"),
                            number=1, size=256)
        self.servers["kme-b"].close()
        self.stores["kme-b"].close()
        self.indexes["kme-b"].close()
        store, index = KeyStore(self.tmp_path / "kme-b.keys"), KeyIndex(self.tmp_path / "kme-b.index")
        self.addCleanup(store.close)
        self.addCleanup(index.close)
        server = self.start_server("kme-b", StoreDelivery(store, index))
        [key_id] = keys
        response = self.request("sae-b1", server, "GET", f"/api/v1/keys/sae-a1/dec_keys?key_ID={key_id}")
        self.assertEqual(self.keys_of(response, number=1, size=256), {key_id: self.expected(key_id, 256)})

    def test_slave_side_refuses_enc_keys(self):
        response = self.request("sae-b1", "kme-b", "POST", "/api/v1/keys/sae-a1/enc_keys", {})
        self.assert_error(response, 400, "does not hand out keys as master")

    def test_record(self):
        units = self.add_block(2)
        key = AssignedKey(units[0], tuple(units), 512)
        self.bob.record("sae-a1", "sae-b1", [key])
        self.bob.record("sae-a1", "sae-b1", [key])                    # a repeated notification is harmless
        with self.assertRaises(ValueError):
            self.bob.record("sae-a1", "sae-b2", [key])                # the same key for another pair is not
        with self.assertRaises(ValueError):
            self.bob.record("sae-a1", "sae-b1", [AssignedKey(units[1], tuple(units), 512)])
        # A key whose units are gone (taken, then a crash before the index forgot it) is not served again.
        self.stores["kme-b"].take(list(units), sae="sae-b1", role="slave")
        response = self.request("sae-b1", "kme-b", "GET", f"/api/v1/keys/sae-a1/dec_keys?key_ID={units[0]}")
        self.assert_error(response, 400)


class RequestErrorTestCase(APITestCase):
    """Every refusal: the spec's status code and its Error data format."""

    def check(self, cases):
        for sae, kme, method, path, body, status in cases:
            with self.subTest(sae=sae, method=method, path=path, body=body):
                self.assert_error(self.request(sae, kme, method, path, body), status)

    def test_who_asks(self):
        self.check([
            # An SAE the KME does not know (its certificate is from the right CA): 401.
            ("sae-x", "kme-a", "GET", "/api/v1/keys/sae-b1/status", None, 401),
            ("sae-x", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", {}, 401),
            ("sae-x", "kme-b", "GET", f"/api/v1/keys/sae-a1/dec_keys?key_ID={uuid.uuid4()}", None, 401),
            # An SAE attached to the other KME: 401.
            ("sae-b1", "kme-a", "GET", "/api/v1/keys/sae-b2/status", None, 401),
            ("sae-b1", "kme-a", "POST", "/api/v1/keys/sae-a1/enc_keys", {}, 401),
        ])

    def test_for_whom(self):
        self.check([
            # Unknown target SAE, a target attached to the same KME, or the caller itself: 400.
            ("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-nobody/status", None, 400),
            ("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-nobody/enc_keys", {}, 400),
            ("sae-b1", "kme-b", "GET", f"/api/v1/keys/sae-nobody/dec_keys?key_ID={uuid.uuid4()}", None, 400),
            ("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-a2/status", None, 400),
            ("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-a1/enc_keys", None, 400),
            ("sae-a1", "kme-a", "GET", "/api/v1/keys/%FF/status", None, 400),
        ])

    def test_key_request(self):
        enc = "/api/v1/keys/sae-b1/enc_keys"
        self.check([("sae-a1", "kme-a", method, path, body, 400) for method, path, body in [
            # Size not a multiple of 8, below min_key_size, above max_key_size.
            ("POST", enc, {"size": 100}), ("GET", enc + "?size=100", None), ("POST", enc, {"size": 56}),
            ("POST", enc, {"size": 1032}), ("GET", enc + "?size=0", None),
            # Number above max_key_per_request, or below 1.
            ("POST", enc, {"number": 9}), ("GET", enc + "?number=9", None), ("POST", enc, {"number": 0}),
            ("POST", enc, {"number": -1}),
            # Malformed JSON, or JSON of the wrong shape or types.
            ("POST", enc, b'{"number": 1'), ("POST", enc, b"[1]"), ("POST", enc, b'"number"'),
            ("POST", enc, b""), ("POST", enc, b'{"number": NaN}'), ("POST", enc, b'{"number": 1, "number": 2}'),
            ("POST", enc, b'{"number": "\xff"}'), ("POST", enc, {"number": "2"}), ("POST", enc, {"number": 2.0}),
            ("POST", enc, {"number": True}), ("POST", enc, {"size": None}), ("POST", enc, {"size": 1e400}),
            # Unknown fields; multicast; mandatory extensions (none are supported); malformed extension lists.
            ("POST", enc, {"colour": "blue"}), ("POST", enc, {"additional_slave_SAE_IDs": ["sae-b2"]}),
            ("POST", enc, {"additional_slave_SAE_IDs": "sae-b2"}),
            ("POST", enc, {"extension_mandatory": [{"abc_route_type": "direct"}]}),
            ("POST", enc, {"extension_optional": {"abc_route_type": "direct"}}),
            # URL parameters: unknown, repeated, not a whole number, on a POST, a body on a GET.
            ("GET", enc + "?count=1", None), ("GET", enc + "?number=1&number=2", None),
            ("GET", enc + "?number=two", None), ("GET", enc + "?number=+2", None), ("GET", enc + "?number", None),
            ("POST", enc + "?number=2", {}), ("GET", enc, {"number": 2}),
        ]])

    def test_key_ids(self):
        dec = "/api/v1/keys/sae-a1/dec_keys"
        many = {"key_IDs": [{"key_ID": str(uuid.uuid4())} for _ in range(9)]}
        same = str(uuid.uuid4())
        self.check([("sae-b1", "kme-b", method, path, body, 400) for method, path, body in [
            # Unknown key_ID; not a UUID; none given; too many; twice the same.
            ("GET", f"{dec}?key_ID={uuid.uuid4()}", None),
            ("POST", dec, {"key_IDs": [{"key_ID": str(uuid.uuid4())}]}),
            ("GET", f"{dec}?key_ID=12345", None), ("POST", dec, {"key_IDs": [{"key_ID": "not-a-uuid"}]}),
            ("POST", dec, {"key_IDs": [{"key_ID": 7}]}), ("GET", dec, None), ("POST", dec, {}),
            ("POST", dec, {"key_IDs": []}), ("POST", dec, {"key_IDs": [str(uuid.uuid4())]}), ("POST", dec, many),
            ("POST", dec, {"key_IDs": [{"key_ID": same}, {"key_ID": same}]}),
            # Malformed JSON, unknown fields.
            ("POST", dec, b"{key_IDs: []}"), ("POST", dec, {"key_IDs": [{"key_ID": same}], "keys": []}),
            ("POST", dec, {"key_IDs": [{"key_ID": same, "size": 256}]}),
            ("GET", f"{dec}?key_ID={same}&number=1", None),
        ]])

    def test_outside_the_api(self):
        response = self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/status", {})
        self.assert_error(response, 405)
        self.assertEqual(response.headers["Allow"], "GET")
        self.assert_error(self.request("sae-a1", "kme-a", "DELETE", "/api/v1/keys/sae-b1/enc_keys"), 405)
        self.assert_error(self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1"), 404)
        self.assert_error(self.request("sae-a1", "kme-a", "GET", "/api/v2/keys/sae-b1/status"), 404)
        self.assert_error(self.request("sae-a1", "kme-a", "BREW", "/api/v1/keys/sae-b1/status"), 501)

    def test_oversized_body(self):
        body = json.dumps({"extension_optional": [{"pad": "x" * 70_000}]}).encode()
        self.assert_error(self.request("sae-a1", "kme-a", "POST", "/api/v1/keys/sae-b1/enc_keys", body), 400)


class TLSTestCase(APITestCase):
    def refused(self, context):
        """Try a status request with ``context``; return the error if no HTTP response came back."""
        connection = http.client.HTTPSConnection(*self.servers["kme-a"].address, timeout=TIMEOUT, context=context)
        try:
            connection.request("GET", "/api/v1/keys/sae-b1/status")
            response = connection.getresponse()
            self.fail(f"got HTTP {response.status} without a valid client certificate")
        except (ssl.SSLError, ConnectionError) as error:
            return error
        finally:
            connection.close()

    @contextlib.contextmanager
    def refused_handshake(self):
        """The server logs a refused TLS handshake (from the connection's thread, so maybe after the client)."""
        with self.assertLogs("qkdlink.host.etsi014", "WARNING") as logs:
            yield
            deadline = time.monotonic() + TIMEOUT
            while not any("handshake" in line for line in logs.output) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.assertIn("TLS handshake", "\n".join(logs.output))

    def test_client_without_certificate(self):
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version):
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.load_verify_locations(self.pki.ca_cert)
                context.minimum_version = context.maximum_version = version
                with self.refused_handshake():
                    error = self.refused(context)
                if version == ssl.TLSVersion.TLSv1_2:
                    # TLS 1.2 fails in the handshake; with 1.3 the client learns it at its first read.
                    self.assertIsInstance(error, ssl.SSLError)

    def test_certificate_from_another_ca(self):
        # Same SAE ID, same shape of certificate, another CA: a name alone identifies no one.
        other = make_test_pki(self.tmp_path / "other", [], ["sae-a1"])
        with self.refused_handshake():
            self.refused(client_context(*other.saes["sae-a1"], self.pki.ca_cert))

    def test_client_checks_the_kme(self):
        other = make_test_pki(self.tmp_path / "other", [], ["sae-a1"])
        with self.refused_handshake():
            error = self.refused(client_context(*self.pki.saes["sae-a1"], other.ca_cert))
        self.assertIsInstance(error, ssl.SSLCertVerificationError)

    def test_tls_versions(self):
        # The spec asks for TLS 1.2 or later: both work, and nothing older is offered.
        self.assertEqual(self.servers["kme-a"].ssl_context.minimum_version, ssl.TLSVersion.TLSv1_2)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version):
                context = self.context("sae-a1")
                context.minimum_version = context.maximum_version = version
                response = self.request("sae-a1", "kme-a", "GET", "/api/v1/keys/sae-b1/status", context=context)
                self.assertEqual(response.status, 200)


class ConfigTestCase(unittest.TestCase):
    def test_validation(self):
        for settings, message in [
            (dict(kme_id="k", saes={"a": "other"}), "serves no SAE"),
            (dict(kme_id="", saes={"a": ""}), "KME ID"),
            (dict(kme_id="k", saes={"a": "k"}, key_size=100), "multiple of 8"),
            (dict(kme_id="k", saes={"a": "k"}, key_size=2048, max_key_size=1024), "min_key_size <= key_size"),
            (dict(kme_id="k", saes={"a": "k"}, max_key_per_request=0), "max_key_per_request"),
        ]:
            with self.subTest(settings=settings):
                with self.assertRaisesRegex(ValueError, message):
                    KMEConfig(**settings)
        with self.assertRaisesRegex(ValueError, "unknown KME setting"):
            KMEConfig.from_dict({"kme_id": "k", "saes": {"a": "k"}, "key_bits": 256})
        config = KMEConfig.from_dict({"kme_id": "k", "saes": {"a": "k", "b": "j"}})
        self.assertTrue(config.serves("a"))
        self.assertFalse(config.serves("b"))


class CertsTestCase(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path):
        self.tmp_path = tmp_path

    def test_files(self):
        pki = make_test_pki(self.tmp_path / "pki", ["kme-a"], ["sae-a1"], hosts=["localhost", "127.0.0.1",
                                                                                 "kme.example"], days=10)
        ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        for path in (pki.ca_key, pki.kmes["kme-a"][1], pki.saes["sae-a1"][1]):
            self.assertEqual(path.stat().st_mode & 0o777, 0o600, path)
            self.assertIn(b"PRIVATE KEY", path.read_bytes())
        for path in (pki.ca_cert, pki.kmes["kme-a"][0], pki.saes["sae-a1"][0]):
            self.assertEqual(path.stat().st_mode & 0o077, 0o044, path)          # readable by others, not writable
        self.assertEqual(sorted(path.name for path in pki.directory.iterdir()),
                         ["ca.key", "ca.pem", "kme-kme-a.key", "kme-kme-a.pem", "sae-sae-a1.key", "sae-sae-a1.pem"])

        kme = x509.load_pem_x509_certificate(pki.kmes["kme-a"][0].read_bytes())
        sae = x509.load_pem_x509_certificate(pki.saes["sae-a1"][0].read_bytes())
        for cert, name, usage in ((kme, "kme-a", ExtendedKeyUsageOID.SERVER_AUTH),
                                  (sae, "sae-a1", ExtendedKeyUsageOID.CLIENT_AUTH)):
            self.assertEqual(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, name)
            self.assertEqual(cert.issuer, ca.subject)
            cert.verify_directly_issued_by(ca)
            self.assertEqual(list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value), [usage])
            lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
            self.assertLess(abs(lifetime - datetime.timedelta(days=10, minutes=5)), datetime.timedelta(seconds=5))
        names = kme.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost", "kme.example"])
        self.assertEqual([str(address) for address in names.get_values_for_type(x509.IPAddress)], ["127.0.0.1"])
        self.assertNotEqual(kme.serial_number, sae.serial_number)

    def test_refuses_to_overwrite(self):
        directory = self.tmp_path / "pki"
        first = make_test_pki(directory, ["kme-a"], ["sae-a1"])
        before = {path.name: path.read_bytes() for path in directory.iterdir()}
        with self.assertRaisesRegex(FileExistsError, "ca.pem"):
            make_test_pki(directory, ["kme-a"], ["sae-a1"])
        with self.assertRaisesRegex(FileExistsError, "sae-sae-a1.pem"):
            make_test_pki(directory / ".." / "pki", [], ["sae-a1", "sae-a2"])
        self.assertEqual({path.name: path.read_bytes() for path in directory.iterdir()}, before)
        second = make_test_pki(directory, ["kme-a"], ["sae-a1"], overwrite=True)
        self.assertNotEqual(second.ca_cert.read_bytes(), before["ca.pem"])
        self.assertEqual(first.ca_cert, second.ca_cert)
        self.assertEqual(sorted(path.name for path in directory.iterdir()), sorted(before))   # no temporary left

    def test_bad_arguments(self):
        for kme_ids, sae_ids, message in [([], [], "at least one"), (["a/b"], [], "KME ID"),
                                          ([], [".hidden"], "SAE ID"), ([], ["x" * 65], "SAE ID"),
                                          ([], ["a", "a"], "distinct")]:
            with self.subTest(kme_ids=kme_ids, sae_ids=sae_ids):
                with self.assertRaisesRegex(ValueError, message):
                    make_test_pki(self.tmp_path / "pki", kme_ids, sae_ids)
        with self.assertRaisesRegex(ValueError, "days"):
            make_test_pki(self.tmp_path / "pki", ["k"], [], days=0)
        self.assertFalse((self.tmp_path / "pki").exists())


if __name__ == "__main__":
    unittest.main()
