import contextlib
import io
import tempfile
import unittest
from pathlib import Path

import numpy as np

from qkdlink.cli import main
from qkdlink.host.bits import pack_bits, unpack_bits
from tests.host.test_toeplitz import naive_modified_toeplitz, naive_toeplitz


class CLITestCase(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name)
        self.rng = np.random.default_rng(11)

    def tearDown(self):
        self.directory.cleanup()

    def qkd(self, *argv):
        """Run `qkd ARGV`; returns (exit code, standard error)."""
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                code = main([str(arg) for arg in argv])
            except SystemExit as exit:          # argparse's own errors
                code = exit.code
        return code, stderr.getvalue()

    def write_bits(self, name, count):
        bits = self.rng.integers(0, 2, count, dtype=np.uint8)
        (self.path / name).write_bytes(pack_bits(bits))
        return bits

    def test_pa_host(self):
        key = self.write_bits("key", 800)
        seed = self.write_bits("seed", 800 + 300 - 1)
        code, log = self.qkd("pa", self.path / "key", "-s", self.path / "seed", "-m", 300, "-o", self.path / "out")
        self.assertEqual(code, 0, log)
        hashed = unpack_bits((self.path / "out").read_bytes(), 300)
        np.testing.assert_array_equal(hashed, naive_toeplitz(key, seed, 300))
        self.assertIn("wrote 300 hashed bits", log)

    def test_pa_modified_and_key_bits(self):
        key = self.write_bits("key", 80)
        seed = self.write_bits("seed", 77 - 1)
        code, log = self.qkd("pa", self.path / "key", "-n", 77, "-s", self.path / "seed", "-m", 20,
                             "--modified", "-o", self.path / "out")
        self.assertEqual(code, 0, log)
        hashed = unpack_bits((self.path / "out").read_bytes(), 20)
        np.testing.assert_array_equal(hashed, naive_modified_toeplitz(key[:77], seed, 20))

    def test_pa_gateware_agrees(self):
        key = self.write_bits("key", 120)
        seed = self.write_bits("seed", 120 + 50 - 1)
        code, log = self.qkd("pa", self.path / "key", "-s", self.path / "seed", "-m", 50, "-o",
                             self.path / "out", "--gateware", "--check", "--width", 4, "--accumulator", 16)
        self.assertEqual(code, 0, log)
        self.assertIn("gateware and host hash agree", log)
        np.testing.assert_array_equal(unpack_bits((self.path / "out").read_bytes(), 50),
                                      naive_toeplitz(key, seed, 50))

    def test_random(self):
        code, log = self.qkd("random", 13, "-o", self.path / "r")
        self.assertEqual(code, 0, log)
        data = (self.path / "r").read_bytes()
        self.assertEqual(len(data), 2)
        self.assertEqual(data[1] >> 5, 0, "padding bits must be zero")

    def test_errors(self):
        self.write_bits("key", 64)
        seed = self.write_bits("seed", 64 + 32 - 1)
        seed[-1] = 1                            # a seed one bit too long for m = 31 shows in its last byte
        (self.path / "seed").write_bytes(pack_bits(seed))
        out = self.path / "out"
        cases = [
            (("pa", self.path / "missing", "-s", self.path / "seed", "-m", 32, "-o", out),
             "key file '.*missing' does not exist"),
            (("pa", self.path / "key", "-s", self.path / "seed", "-m", 40, "-o", out),
             r"needs a seed of 103 bits, that is 13 bytes; make one with `qkd random 103 -o FILE`"),
            (("pa", self.path / "key", "-s", self.path / "seed", "-m", 31, "-o", out),
             r"has bits set past the 94 that hashing 64 bits to 31 bits needs"),
            (("pa", self.path / "key", "-s", self.path / "seed", "-m", 65, "-o", out),
             r"--output-bits 65 is more than the 64 key bits"),
            (("pa", self.path / "key", "-n", 65, "-s", self.path / "seed", "-m", 32, "-o", out),
             r"--key-bits 65 asks for more bits than key file .* holds \(64\)"),
            (("pa", self.path / "key", "-s", self.path / "seed", "-m", 32, "-o", out, "--gateware",
              "--width", 3), r"--width must be a power of two, not 3"),
            (("pa", self.path / "key", "-s", self.path / "seed", "-m", 32, "-o", out, "--check"),
             r"--check compares the gateware with the host code; it needs --gateware"),
        ]
        for argv, message in cases:
            with self.subTest(argv=argv[5:]):
                code, log = self.qkd(*argv)
                self.assertEqual(code, 1)
                self.assertRegex(log, message)
                self.assertNotIn("Traceback", log)
                self.assertFalse(out.exists(), "nothing may be written on an error")
        code, log = self.qkd("pa", self.path / "key", "-s", self.path / "seed", "-m", 0, "-o", out)
        self.assertEqual(code, 2)
        self.assertIn("expected a positive number, not 0", log)


class LinkCLITestCase(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name)

    def tearDown(self):
        self.directory.cleanup()

    qkd = CLITestCase.qkd

    def test_demo_writes_equal_keys(self):
        code, log = self.qkd("demo", "--seed", 7, "-o", self.path)
        self.assertEqual(code, 0, log)
        import json
        alice = json.loads((self.path / "alice.json").read_text())
        bob = json.loads((self.path / "bob.json").read_text())
        self.assertFalse(alice[0]["aborted"], alice)
        self.assertEqual(alice[0]["fingerprint"], bob[0]["fingerprint"])
        self.assertEqual((self.path / "alice.key").read_bytes(), (self.path / "bob.key").read_bytes())
        self.assertIn("simulation seed 7", log)

    def test_demo_on_rtl_boards_gives_the_models_keys(self):
        # The smallest block of this link that leaves a key, at a relaxed eps_sec: about 300 frames, a minute or
        # two of both nodes' gateware under Verilator.
        link = ["-d", 0, "--efficiency", 0.3, "--p-z", 0.5, "-n", 30000, "--eps-sec", 1e-3, "--eps-cor", 1e-9,
                "--seed", 1]
        keys = {}
        for boards in ("rtl", "model"):
            code, log = self.qkd("demo", "--boards", boards, *link, "-o", self.path / boards)
            self.assertEqual(code, 0, log)
            self.assertIn("1 of 1 blocks gave a key", log)
            alice = (self.path / boards / "alice.key").read_bytes()
            self.assertGreater(len(alice), 100)
            self.assertEqual(alice, (self.path / boards / "bob.key").read_bytes())
            keys[boards] = alice
        self.assertEqual(keys["rtl"], keys["model"])

    def test_demo_with_full_intercept_resend_releases_nothing(self):
        code, log = self.qkd("demo", "--seed", 7, "-n", 200000, "--eve", "intercept-resend", "-o", self.path)
        self.assertEqual(code, 0, log)
        self.assertIn("0 of 1 blocks gave a key", log)
        self.assertEqual((self.path / "alice.key").read_bytes(), b"")

    def test_sweep_writes_table_and_plot(self):
        code, log = self.qkd("sweep", "--seed", 3, "--distances", 50, 150, 100, "-n", 300000,
                             "-o", self.path / "sweep")
        self.assertEqual(code, 0, log)
        table = (self.path / "sweep.md").read_text()
        self.assertEqual(len(table.splitlines()), 4)
        self.assertEqual((self.path / "sweep.png").read_bytes()[:8], b"\x89PNG\r\n\x1a\n")

    def test_bad_link_parameters(self):
        cases = [
            (("demo", "-d", -5), r"fibre length must be at least 0 km, not -5.0"),
            (("demo", "--intensities", 0.1, 0.5, 0.0), r"intensities"),
            (("demo", "--p-z", 1.5), r"p_z"),
            (("demo", "--probabilities", 0.5, 0.5, 0.5), r"sum to 1"),
            (("sweep", "--distances", 100, 50, 10), r"--distances wants FIRST <= LAST and STEP > 0"),
        ]
        for argv, message in cases:
            with self.subTest(argv=argv):
                code, log = self.qkd(*argv, "-o", self.path / "x")
                self.assertEqual(code, 1, log)
                self.assertRegex(log, message)
                self.assertNotIn("Traceback", log)
