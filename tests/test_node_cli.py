"""qkd node, link, keys and certs (qkdlink.nodecli)."""

import base64
import contextlib
import io
import os
import secrets
import tempfile
import unittest
import uuid
from pathlib import Path

from qkdlink import cli
from qkdlink.host.certs import make_test_pki
from qkdlink.host.etsi014 import KeyDeliveryServer, KeyIndex, KMEConfig, StoreDelivery
from qkdlink.host.keystore import KeyStore
from qkdlink.host.node import NodeState
from tests.host.test_node import TEST_EPS, TEST_LINK, config_text


def qkd(*argv):
    """Run `qkd ARGV` with the node commands; (exit code, standard output bytes, standard error)."""
    stdout, stderr = io.TextIOWrapper(io.BytesIO()), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main([str(arg) for arg in argv])
        except SystemExit as exit:          # argparse's own errors
            code = exit.code
    stdout.flush()
    return code, stdout.buffer.getvalue(), stderr.getvalue()


class CertsTestCase(unittest.TestCase):
    def test_certs(self):
        with tempfile.TemporaryDirectory() as directory:
            code, out, log = qkd("certs", "--dir", directory, "--kme", "KME-A", "--sae", "SAE-A", "SAE-B")
            self.assertEqual(code, 0, log)
            for name in ("ca.pem", "ca.key", "kme-KME-A.pem", "kme-KME-A.key", "sae-SAE-A.pem", "sae-SAE-B.key"):
                self.assertTrue((Path(directory) / name).is_file(), name)
            self.assertEqual(os.stat(Path(directory) / "sae-SAE-B.key").st_mode & 0o777, 0o600)
            self.assertIn(b"SAE SAE-B:", out)
            code, _, log = qkd("certs", "--dir", directory, "--kme", "KME-A")
            self.assertEqual(code, 1)
            self.assertIn("not overwriting", log)
            self.assertNotIn("Traceback", log)
            self.assertEqual(qkd("certs", "--dir", directory, "--kme", "KME-A", "--force")[0], 0)
            code, _, log = qkd("certs", "--dir", directory, "--sae", "bad id")
            self.assertEqual(code, 1)
            self.assertIn("SAE ID must be", log)


class NodeCommandTestCase(unittest.TestCase):
    def test_configuration_errors(self):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "alice.toml"
            code, _, log = qkd("node", "--config", path)
            self.assertEqual(code, 1)
            self.assertIn(f"{path}: no such configuration file", log)
            path.write_text(config_text(directory).replace("[link]\n", "[link]\nblock_frame = 3\n"))
            code, _, log = qkd("node", "--config", path)
            self.assertEqual(code, 1)
            self.assertIn("unknown setting(s) block_frame in [link]", log)
            self.assertNotIn("Traceback", log)
            make_test_pki(Path(directory) / "pki", ["KME-A"], [])
            path.write_text(config_text(directory))
            code, _, log = qkd("node", "--config", path, "--role", "bob")
            self.assertEqual(code, 1)
            self.assertIn("configures alice, not bob", log)
            code, _, log = qkd("node", "--config", path)               # no pre-shared key file
            self.assertEqual(code, 1)
            self.assertIn("alice.psk: no pre-shared key file", log)
            self.assertNotIn("Traceback", log)
            # A second node on the same store (here: whoever holds its lock) is refused before it touches it.
            import fcntl
            with open(Path(directory) / "alice.keys.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                code, _, log = qkd("node", "--config", path)
            self.assertEqual(code, 1)
            self.assertIn("another node runs on", log)


class KeysTestCase(unittest.TestCase):
    """`qkd keys` on stores filled here, through a KME API served here."""

    def setUp(self):
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name)
        self.pki = make_test_pki(self.path / "pki", ["KME-A", "KME-B"], ["SAE-A", "SAE-B"])
        self.key = secrets.token_bytes(8 * 16)                  # 16 units of 64 bits
        self.units = [uuid.uuid4() for _ in range(16)]
        self.stores, self.servers = {}, {}
        for role in ("alice", "bob"):
            store = KeyStore(self.path / f"{role}.keys", unit_bits=64)
            block = uuid.UUID(int=1)
            store.store_block(block, self.key, self.units, {"qber": 0.01})
            store.commit_block(block)
            store.add_auth_key("alice->bob", bytes(1000))
            store.take_auth_key("alice->bob", 300)
            self.stores[role] = store
            self.addCleanup(store.close)
        with NodeState(self.path / "alice.keys.node") as state:
            state.set("psk", {"bytes": 600})
        saes = {"SAE-A": "KME-A", "SAE-B": "KME-B"}
        bob_index = KeyIndex(":memory:")
        bob = StoreDelivery(self.stores["bob"], bob_index)
        alice = StoreDelivery(self.stores["alice"], KeyIndex(":memory:"), notify=bob.record)
        for role, kme, delivery in (("alice", "KME-A", alice), ("bob", "KME-B", bob)):
            server = KeyDeliveryServer(KMEConfig(kme, saes), delivery, certfile=self.pki.kmes[kme][0],
                                       keyfile=self.pki.kmes[kme][1], cafile=self.pki.ca_cert).start()
            self.addCleanup(server.close)
            sae = {"alice": "SAE-A", "bob": "SAE-B"}[role]
            etsi = {"kme_id": kme, "port": server.address[1], "cert": f"pki/kme-{kme}.pem",
                    "key": f"pki/kme-{kme}.key", "ca": "pki/ca.pem", "client_cert": f"pki/sae-{sae}.pem",
                    "client_key": f"pki/sae-{sae}.key", "saes": saes}
            (self.path / f"{role}.toml").write_text(config_text(self.path, role=role, etsi=etsi))

    def tearDown(self):
        self.directory.cleanup()

    def test_status(self):
        code, out, log = qkd("keys", "status", "--store", self.path / "alice.keys")
        self.assertEqual(code, 0, log)
        text = out.decode()
        self.assertRegex(text, r"ready\s+16 units \(1,024 bits\) in 1 block")
        self.assertRegex(text, r"alice->bob\s+1,000\s+300\s+700")
        # 300 pad bytes for 128 bytes stored plus 400 bytes of refills (1000 added, 600 of them pre-shared).
        self.assertIn("300 pad bytes consumed for 528 bytes of key distilled", text)
        self.assertIn("56.8 %", text)
        self.assertEqual(qkd("keys", "status", "--config", self.path / "bob.toml")[0], 0)
        code, _, log = qkd("keys", "status", "--store", self.path / "none.keys")
        self.assertEqual(code, 1)
        self.assertIn("no key store there", log)

    def test_get_master_then_slave(self):
        output = self.path / "keys.hex"
        code, _, log = qkd("keys", "get", "--config", self.path / "alice.toml", "--number", 2, "--size", 128,
                           "-o", output)
        self.assertEqual(code, 0, log)
        self.assertEqual(os.stat(output).st_mode & 0o777, 0o600)
        lines = output.read_text().splitlines()
        self.assertEqual(len(lines), 2)
        ids = [line.split()[0] for line in lines]
        # The two oldest ready units make the first key, the next two the second (128-bit keys of 64-bit units).
        self.assertEqual(ids, [str(self.units[0]), str(self.units[2])])
        self.assertEqual([bytes.fromhex(line.split()[1]) for line in lines], [self.key[:16], self.key[16:32]])
        code, out, log = qkd("keys", "get", "--config", self.path / "bob.toml", "--id", ids[1], "--id", ids[0],
                             "--format", "base64")
        self.assertEqual(code, 0, log)
        self.assertEqual(out.decode().splitlines(), [f"{ids[1]} {base64.b64encode(self.key[16:32]).decode()}",
                                                     f"{ids[0]} {base64.b64encode(self.key[:16]).decode()}"])
        code, _, log = qkd("keys", "get", "--config", self.path / "bob.toml", "--id", ids[0])
        self.assertEqual(code, 1)                                   # handed out once only
        self.assertIn("400", log)
        raw = self.path / "raw"
        self.assertEqual(qkd("keys", "get", "--config", self.path / "alice.toml", "--number", 1, "--format", "raw",
                             "-o", raw)[0], 0)
        self.assertEqual(raw.read_bytes(), self.key[32:64])         # the KME's default size: 256 bits

    def test_get_errors(self):
        alice = self.path / "alice.toml"
        for argv, message in ((("--number", 1, "--size", 12), "multiple of 8"),
                              (("--number", 1, "--master", "SAE-B"), "--master goes with --id"),
                              (("--id", "nonsense"), "a key_ID is a UUID"),
                              (("--id", str(uuid.uuid4())), "400"),
                              (("--number", 1, "--cert", self.path / "none.pem"), "does not exist")):
            code, _, log = qkd("keys", "get", "--config", alice, *argv)
            self.assertEqual(code, 1, argv)
            self.assertIn(message, log)
            self.assertNotIn("Traceback", log)
        code, _, log = qkd("keys", "get", "--config", alice, "--number", 500)
        self.assertEqual(code, 1)
        self.assertIn("400", log)                                   # more than max_key_per_request


class LinkCommandTestCase(unittest.TestCase):
    def test_link_makes_keys(self):
        with tempfile.TemporaryDirectory() as directory:
            code, out, log = qkd("link", "--dir", directory, "--blocks", 1, "--port", _free_base(), *TEST_LINK,
                                 "-n", 20000, "--eps-sec", TEST_EPS["eps_sec"], "--eps-cor", TEST_EPS["eps_cor"],
                                 "--unit-bits", 64)
            self.assertEqual(code, 0, log + "".join(Path(directory, f"{role}.log").read_text()[-2000:]
                                                    for role in ("alice", "bob")
                                                    if Path(directory, f"{role}.log").exists()))
            self.assertRegex(out.decode(), r"alice: ETSI GS QKD 014 API at https://127\.0\.0\.1:\d+ \(KME KME-A\)")
            for role in ("alice", "bob"):
                self.assertFalse(Path(directory, f"{role}.psk").exists())          # imported, then erased
                self.assertRegex(Path(directory, f"{role}.log").read_text(), r"block \S+ committed:")
                with KeyStore(Path(directory) / f"{role}.keys", unit_bits=None) as store:
                    self.assertEqual(store.status()["ready_blocks"], 1)
                    self.assertGreater(store.status()["ready"], 0)
            self.assertEqual(Path(directory, "alice.keys").stat().st_mode & 0o777, 0o600)
            # The setup is kept: a second run uses it as it is.
            code, _, log = qkd("link", "--dir", directory, "--blocks", 1, "--port", _free_base(), *TEST_LINK,
                               "--eps-sec", TEST_EPS["eps_sec"], "--eps-cor", TEST_EPS["eps_cor"])
            self.assertIn("using the setup in", log)


def _free_base():
    from tests.host.test_node import free_ports
    return free_ports(6, consecutive=True)[0]
