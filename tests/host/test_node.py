"""host.node: configuration, pad journal, key splitting, store agreement under crashes, board alignment, and two
node processes on loopback (keys through the ETSI API, a man in the middle, a kill loop)."""

import json
import os
import queue
import secrets
import sqlite3
import tempfile
import threading
import unittest
import uuid
from pathlib import Path

import numpy as np

from qkdlink.host import auth
from qkdlink.host.certs import make_test_pki
from qkdlink.host.channel import ChannelClosed, Endpoint
from qkdlink.host.keystore import KeyStore
from qkdlink.host.messages import ProtocolError
from qkdlink.host.node import (KM_PREFIX, MIN_PSK_BYTES, PAD_STREAMS, ConfigError, NodeState, NodeStateError,
                               PrefixPad, StoreSync, beats_apart, import_psk, load_config, plan_split, read_psk,
                               realised_decoy, split_key)


def scratch_directory():
    """A temporary folder, in memory where the system has one: the stores fsync every transaction."""
    shm = Path("/dev/shm")
    return tempfile.TemporaryDirectory(prefix="qkdlink-node-", dir=shm if shm.is_dir() else None)


# ---------------------------------------------------------------------------------------------- configuration

def config_text(directory, role="alice", **sections):
    """A complete configuration; ``sections`` replace whole sections (a value None drops the section)."""
    base = {
        "peer": {"host": "127.0.0.1", "port": 7500},
        "board": {"url": "socket://127.0.0.1:7000"},
        "store": {"path": f"{role}.keys", "unit_bits": 64},
        "auth": {"psk": f"{role}.psk"},
        "link": {"block_frames": 150},
        "protocol": {"eps_sec": 0.1, "eps_cor": 1e-4},
        "etsi": {"kme_id": "KME-A" if role == "alice" else "KME-B", "port": 7510, "cert": "pki/kme-KME-A.pem",
                 "key": "pki/kme-KME-A.key", "ca": "pki/ca.pem", "saes": {"SAE-A": "KME-A", "SAE-B": "KME-B"}},
    }
    base.update(sections)
    lines = [f"role = {json.dumps(role)}"]
    for name, values in base.items():
        if values is None:
            continue
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, dict):
                value = "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + "}"
            else:
                value = json.dumps(value)
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class ConfigTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.TemporaryDirectory()
        cls.path = Path(cls.directory.name)
        make_test_pki(cls.path / "pki", ["KME-A", "KME-B"], ["SAE-A", "SAE-B"])

    @classmethod
    def tearDownClass(cls):
        cls.directory.cleanup()

    def load(self, text):
        path = self.path / "node.toml"
        path.write_text(text)
        return load_config(path)

    def refused(self, text, *fragments):
        with self.assertRaises(ConfigError) as caught:
            self.load(text)
        message = str(caught.exception)
        self.assertIn(str(self.path / "node.toml"), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_complete_file(self):
        config = self.load(config_text(self.path))
        self.assertEqual(config.role, "alice")
        self.assertEqual((config.peer_port, config.km_port), (7500, 7501))     # km_port defaults to port + 1
        self.assertEqual(config.store_path, self.path / "alice.keys")           # relative to the file
        self.assertEqual(config.state_path, self.path / "alice.keys.node")
        self.assertEqual(config.board, {"period": 2})
        self.assertEqual(config.intensities, (0.6, 0.2, 2e-4))                 # qkd demo's defaults
        self.assertEqual(config.probabilities, (0.5, 0.3, 0.2))
        self.assertEqual(config.p_z, 0.8)
        self.assertEqual(config.kme.kme_id, "KME-A")
        self.assertEqual(config.peer_kme, "KME-B")
        self.assertEqual(config.saes_of("KME-B"), ["SAE-B"])
        bob = self.load(config_text(self.path, role="bob", board={"url": "socket://x:1", "period_bins": 8}))
        self.assertEqual(bob.board, {"period_bins": 8.0, "delay": 0, "gate_start": 2, "gate_width": 5,
                                     "dead_cycles": 0})

    def test_errors_name_the_setting(self):
        self.refused(config_text(self.path).replace('role = "alice"', 'role = "carol"'), "role", "carol")
        self.refused(config_text(self.path).replace('role = "alice"\n', ""), "role is missing")
        self.refused(config_text(self.path, peer={"port": "x"}), "[peer] port", "whole number")
        self.refused(config_text(self.path, peer={"port": 70000}), "[peer] port", "65535")
        self.refused(config_text(self.path, peer={"port": 5, "prot": 6}), "prot", "[peer]", "spelling")
        self.refused(config_text(self.path, extra={"a": 1}), "extra")
        self.refused(config_text(self.path, board={"url": "u", "period_bins": 8.0}), "[board] period_bins",
                     "Bob's board")
        self.refused(config_text(self.path, store={"path": "k", "unit_bits": 12}), "[store] unit_bits",
                     "multiple of 8")
        self.refused(config_text(self.path, store=None), "[store] path is missing")
        self.refused(config_text(self.path, protocol={"eps_sec": 2}), "[protocol] eps_sec")
        self.refused(config_text(self.path, protocol={"probabilities": [0.5, 0.5]}), "[protocol] probabilities",
                     "list of 3 numbers")
        self.refused(config_text(self.path, protocol={"intensities": [0.1, 0.2, 0.3]}), "[protocol] intensities")
        etsi = {"kme_id": "KME-A", "port": 1, "cert": "missing.pem", "key": "pki/kme-KME-A.key",
                "ca": "pki/ca.pem", "saes": {"SAE-A": "KME-A", "SAE-B": "KME-B"}}
        self.refused(config_text(self.path, etsi=etsi), "[etsi] cert", "missing.pem", "qkd certs")
        self.refused(config_text(self.path, etsi={**etsi, "cert": "pki/kme-KME-A.pem", "saes": {"SAE-A": "KME-A"}}),
                     "[etsi] saes", "two KMEs")
        self.refused("role = [", "not a valid TOML file")
        with self.assertRaises(ConfigError) as caught:
            load_config(self.path / "nothing.toml")
        self.assertIn("no such configuration file", str(caught.exception))


# ----------------------------------------------------------------------------------- keys, pads and the journal

class SplitTestCase(unittest.TestCase):
    def test_plan(self):
        # A 100-byte key in 8-byte units with the pads lacking 10, 20, 0 and 5 bytes: 65 bytes are left, 8 units
        # (64 bytes), and the one byte over goes to the first stream.
        self.assertEqual(plan_split(100, 8, [10, 20, 0, 5]), ([11, 20, 0, 5], 8))
        # The pads lack more than the key: the store still gets one unit, the pads share the other 92 bytes in
        # proportion (92 * 100 // 300 = 30, 92 * 200 // 300 = 61) and the rounding's 1 byte goes first.
        self.assertEqual(plan_split(100, 8, [100, 200, 0, 0]), ([31, 61, 0, 0], 1))
        self.assertEqual(plan_split(7, 8, [0, 0, 0, 0]), None)                  # shorter than a unit: dropped
        self.assertEqual(plan_split(16, 8, [0, 0, 0, 0]), ([0, 0, 0, 0], 2))

    def test_split_is_the_key_in_order(self):
        key = bytes(range(40))
        refills, rest = split_key(key, [3, 4, 5, 6])
        self.assertEqual(refills, {"alice->bob": key[:3], "bob->alice": key[3:7],
                                   "km:alice->bob": key[7:12], "km:bob->alice": key[12:18]})
        self.assertEqual(rest, key[18:])
        self.assertEqual(PAD_STREAMS, ("alice->bob", "bob->alice", "km:alice->bob", "km:bob->alice"))

    def test_realised_decoy(self):
        # Registers t0 = 32768, t1 = 52429 of 65536 send intensity 0 with 1/2, 1 with 19661/65536, 2 with the rest.
        decoy = realised_decoy((0.6, 0.2, 2e-4), (52429, 32768, 52429))
        self.assertEqual(decoy.probabilities, (0.5, 19661 / 65536, 13107 / 65536))

    def test_sequencer_registers_match_the_simulation(self):
        from qkdlink.sim.sequencer import thresholds
        self.assertEqual(thresholds(0.8, (0.5, 0.3, 0.2)), (52429, 32768, 52429))


class JournalTestCase(unittest.TestCase):
    def setUp(self):
        self.directory = scratch_directory()
        self.path = Path(self.directory.name)
        self.store = KeyStore(self.path / "k", unit_bits=64)
        self.state = NodeState(self.path / "k.node")

    def tearDown(self):
        self.state.close()
        self.store.close()
        self.directory.cleanup()

    def pad(self, stream):
        """Everything in ``stream`` (taking it)."""
        available = self.store.auth_available(stream)
        return self.store.take_auth_key(stream, available) if available else b""

    def test_state_file_is_private(self):
        self.assertEqual(os.stat(self.path / "k.node").st_mode & 0o777, 0o600)

    def test_refills_are_applied_once_whatever_the_crash(self):
        block = uuid.uuid4()

        class Crash(Exception):
            pass

        for crash in ("before", "after"):
            with self.subTest(crash=crash):
                self.state.record_refills(block, {"s": b"abc", "t": b"de"})
                add = self.store.add_auth_key

                def crashing(stream, data, crash=crash, add=add):
                    if crash == "after":
                        add(stream, data)
                    raise Crash

                self.store.add_auth_key = crashing
                with self.assertRaises(Crash):
                    self.state.apply_refills(block, self.store)
                del self.store.add_auth_key
                self.state.apply_refills(block, self.store)         # the restart
                self.state.apply_refills(block, self.store)         # and again: nothing left to do
                self.assertEqual(self.pad("s"), b"abc")
                self.assertEqual(self.pad("t"), b"de")
                self.assertEqual(self.state.refill_blocks(), [])

    def test_refills_wait_for_their_block(self):
        ready, pending, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        for block in (ready, pending):
            self.store.store_block(block, bytes(8), [uuid.uuid4()], {})
        self.store.commit_block(ready)
        for index, block in enumerate((ready, pending, gone)):
            self.state.record_refills(block, {"s": bytes([index])})
        self.state.recover(self.store)
        self.assertEqual(self.pad("s"), b"\x00")                    # the ready block's only
        self.assertEqual(self.state.refill_blocks(), [pending])     # the discarded one is forgotten

    def test_a_foreign_store_is_refused(self):
        block = uuid.uuid4()
        self.state.record_refills(block, {"s": b"abc"})
        self.state._execute(("UPDATE refills SET base = 7", ()))    # recorded against another store
        with self.assertRaises(NodeStateError):
            self.state.apply_refills(block, self.store)

    def test_psk_is_imported_once_and_erased(self):
        secret = secrets.token_bytes(MIN_PSK_BYTES + 3)
        path = self.path / "psk"
        path.write_text(secret.hex() + "\n")
        self.assertTrue(import_psk(self.state, self.store, path))
        self.assertFalse(path.exists())
        path.write_bytes(secret)                                     # the same key again: not imported twice
        self.assertFalse(import_psk(self.state, self.store, path))
        share = len(secret) // 4
        for index, stream in enumerate(PAD_STREAMS):
            self.assertEqual(self.pad(stream), secret[index * share:(index + 1) * share])

    def test_psk_errors(self):
        with self.assertRaises(ConfigError) as caught:
            import_psk(self.state, self.store, self.path / "none")
        self.assertIn("no pre-shared key file", str(caught.exception))
        (self.path / "short").write_bytes(bytes(100))
        with self.assertRaises(ConfigError) as caught:
            import_psk(self.state, self.store, self.path / "short")
        self.assertIn(f"fewer than the {MIN_PSK_BYTES}", str(caught.exception))
        self.assertEqual(self.store.accounting()["auth"], {})

    def test_read_psk(self):
        (self.path / "hex").write_text("00ff 10\nab\n")
        self.assertEqual(read_psk(self.path / "hex"), bytes([0, 255, 16, 171]))
        (self.path / "raw").write_bytes(b"\x00\xffgz")
        self.assertEqual(read_psk(self.path / "raw"), b"\x00\xffgz")

    def test_prefix_pad(self):
        pad = PrefixPad(auth.StorePad(self.store), KM_PREFIX)
        pad.add("alice->bob", b"0123456789")
        self.assertEqual(self.store.auth_available("km:alice->bob"), 10)
        self.assertEqual(pad.take("alice->bob", 4), b"0123")
        self.assertEqual((pad.position("alice->bob"), pad.available("alice->bob")), (4, 6))


# ---------------------------------------------------------------------------- the stores under crashes

class Crash(Exception):
    """A node killed between two durable operations."""


class Countdown:
    """Raises :class:`Crash` at the ``at``-th operation counted (None: never)."""

    def __init__(self, at=None):
        self.at = at
        self.count = 0
        self.crashed = False

    def tick(self, what):
        if self.at is not None and self.count == self.at:
            self.crashed = True
            raise Crash(what)
        self.count += 1


class CrashingStore:
    """A key store whose changes each may be the crash point."""

    def __init__(self, store, countdown):
        self._store, self._countdown = store, countdown

    def __getattr__(self, name):
        value = getattr(self._store, name)
        if name not in ("store_block", "commit_block", "discard_block", "add_auth_key"):
            return value

        def operation(*args, **kwargs):
            self._countdown.tick(name)
            return value(*args, **kwargs)
        return operation


class CrashingState(NodeState):
    """A node state whose every transaction may be the crash point."""

    countdown = Countdown()

    def _execute(self, *statements):
        self.countdown.tick("node state")
        return super()._execute(*statements)


class Pipe(Endpoint):
    """One end of an in-process channel; a None in the inbox is the peer's death."""

    def __init__(self, name, inbox, outbox, countdown):
        super().__init__(name)
        self.inbox, self.outbox, self.countdown = inbox, outbox, countdown

    def _send_frame(self, frame):
        self.countdown.tick("send")
        self.outbox.put(frame)

    def _receive_frame(self, timeout):
        try:
            frame = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelClosed(f"{self.name}: nothing within {timeout} s", kind="timeout") from None
        if frame is None:
            raise ChannelClosed(f"{self.name}: the peer died", kind="closed")
        return frame


class Side:
    """One node's store and state on disk; :meth:`sync` is a (re)started process's view of them."""

    def __init__(self, directory, role):
        self.role = role
        self.store = KeyStore(directory / f"{role}.keys", unit_bits=64)
        self.state = CrashingState(directory / f"{role}.node")
        self.countdown = Countdown()

    def sync(self, countdown):
        self.countdown = countdown
        self.state.countdown = countdown
        return StoreSync(CrashingStore(self.store, countdown), self.state, self.role, timeout=5.0)

    def close(self):
        self.state.close()
        self.store.close()

    def units(self):
        """{unit id: (state, key)} of every unit in the store, read from its database."""
        with sqlite3.connect(f"file:{self.store.path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT id, state, key FROM units").fetchall()
        return {uuid.UUID(bytes=row[0]): (row[1], row[2]) for row in rows}

    def pads(self):
        return {stream: values["added"] for stream, values in self.store.accounting()["auth"].items()}

    def take_pad(self, stream):
        available = self.store.auth_available(stream)
        return self.store.take_auth_key(stream, available) if available else b""


def run_pair(alice_work, bob_work, alice_countdown, bob_countdown):
    """Run both sides' work in two threads over a fresh channel; a side that crashes kills its channel end.
    Returns each side's outcome: a result, or the exception that ended it."""
    to_alice, to_bob = queue.Queue(), queue.Queue()
    ends = {"alice": Pipe("alice", to_alice, to_bob, alice_countdown),
            "bob": Pipe("bob", to_bob, to_alice, bob_countdown)}
    outcome = {}

    def run(role, work, peer_inbox):
        try:
            outcome[role] = work(ends[role])
        except (Crash, ProtocolError) as error:
            outcome[role] = error
            peer_inbox.put(None)

    threads = [threading.Thread(target=run, args=("alice", alice_work, to_bob)),
               threading.Thread(target=run, args=("bob", bob_work, to_alice))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a side hangs"
    return outcome


class StoreAgreementTestCase(unittest.TestCase):
    """Kill either side before any one of its durable operations or messages, restart both, reconcile: the stores
    hold the same blocks, the same units with the same bytes, and the same pad streams.

    Operations counted, in order. Alice: journal the refills, store the block pending, send prepare, commit, the
    refills' transactions and additions, send commit. Bob: journal, store pending, send prepared, commit, refills,
    send committed.
    """

    def setUp(self):
        self.directory = scratch_directory()
        self.runs = 0

    def tearDown(self):
        self.directory.cleanup()

    def fresh(self):
        """New stores for both sides, closed at the end of the test."""
        self.runs += 1
        path = Path(self.directory.name) / str(self.runs)
        path.mkdir()
        self.alice, self.bob = Side(path, "alice"), Side(path, "bob")
        self.addCleanup(self.bob.close)
        self.addCleanup(self.alice.close)

    def block(self, alice_at=None, bob_at=None):
        """One two-phase commit of a fresh 96-byte key (8 bytes to each pad stream, 8 units), with crashes;
        ``(outcome of each side, whether a side crashed)``."""
        key = secrets.token_bytes(96)
        alice_countdown, bob_countdown = Countdown(alice_at), Countdown(bob_at)
        alice, bob = self.alice.sync(alice_countdown), self.bob.sync(bob_countdown)
        outcome = run_pair(lambda end: alice.commit(end, alice.prepare(key, [8, 8, 8, 8], 8, {"qber": 0.01})),
                           lambda end: bob.accept(end, key)[0], alice_countdown, bob_countdown)
        return outcome, alice_countdown.crashed or bob_countdown.crashed

    def restart(self, alice_at=None, bob_at=None):
        """Both sides restart (recover) and reconcile, possibly crashing; whether a side crashed."""
        alice_countdown, bob_countdown = Countdown(alice_at), Countdown(bob_at)
        alice, bob = self.alice.sync(alice_countdown), self.bob.sync(bob_countdown)
        try:
            alice.recover()
            bob.recover()
        except Crash:
            return True
        run_pair(alice.reconcile, bob.reconcile, alice_countdown, bob_countdown)
        return alice_countdown.crashed or bob_countdown.crashed

    def check_agree(self):
        alice, bob = self.alice.units(), self.bob.units()
        self.assertEqual(set(alice), set(bob), "the stores hold different units")
        for unit, (state, key) in alice.items():
            self.assertEqual(state, "ready")
            self.assertEqual(bob[unit], (state, key), f"unit {unit} differs")
        self.assertEqual(self.alice.store.pending_blocks(), [])
        self.assertEqual(self.bob.store.pending_blocks(), [])
        self.assertEqual(self.alice.pads(), self.bob.pads())
        for stream in PAD_STREAMS:              # the same bytes at the same places of every pad stream
            self.assertEqual(self.alice.take_pad(stream), self.bob.take_pad(stream))

    def test_a_block_survives_a_crash_anywhere(self):
        points = 0
        for side in ("alice", "bob"):
            for at in range(60):
                with self.subTest(side=side, at=at):
                    self.fresh()
                    _, crashed = self.block(**{f"{side}_at": at})
                    self.restart()
                    self.check_agree()
                    # The link goes on: the next block commits on both sides.
                    outcome, crashed_again = self.block()
                    self.assertFalse(crashed_again)
                    self.assertEqual(outcome["alice"], outcome["bob"])
                    self.assertEqual(self.alice.store.block_state(outcome["alice"]), "ready")
                    self.check_agree()
                if not crashed:
                    break
                points += 1
        self.assertGreater(points, 2 * 10)      # each side has at least ten crash points

    def leave(self, left):
        """Make the stores disagree as a crash in a block does."""
        at = {"alice ready, bob pending": {"bob_at": 3},     # Bob dies before he commits
              "both pending": {"bob_at": 2},                 # Bob dies before he sends prepared
              "alice pending": {"alice_at": 2}}[left]        # Alice dies before she sends prepare
        _, crashed = self.block(**at)
        self.assertTrue(crashed)
        pending = (len(self.alice.store.pending_blocks()), len(self.bob.store.pending_blocks()))
        self.assertEqual(pending, {"alice ready, bob pending": (0, 1), "both pending": (1, 1),
                                   "alice pending": (1, 0)}[left])

    def test_reconciliation_survives_a_crash_anywhere(self):
        points = 0
        for left in ("alice ready, bob pending", "both pending", "alice pending"):
            for side in ("alice", "bob"):
                for at in range(40):
                    with self.subTest(left=left, side=side, at=at):
                        self.fresh()
                        self.leave(left)
                        crashed = self.restart(**{f"{side}_at": at})
                        self.assertFalse(self.restart())
                        self.check_agree()
                    if not crashed:
                        break
                    points += 1
        self.assertGreater(points, 20)

    def test_bob_commits_the_blocks_alice_assigns(self):
        self.fresh()
        self.leave("alice ready, bob pending")
        [block] = self.bob.store.pending_blocks()
        self.assertEqual(self.alice.store.block_state(block), "ready")
        units = self.alice.store.assign(2, master="SAE-A", slave="SAE-B")
        bob = self.bob.sync(Countdown())
        self.assertEqual(bob.commit_assigned(units[1:]), [block])
        self.assertEqual(bob.commit_assigned(units), [])             # nothing pending any more
        self.bob.store.assign_ids(units, master="SAE-A", slave="SAE-B")
        self.assertEqual(self.alice.store.take(units, sae="SAE-A", role="master"),
                         self.bob.store.take(units, sae="SAE-B", role="slave"))
        self.assertEqual(self.alice.pads(), self.bob.pads())


# ---------------------------------------------------------------------------------------------- board alignment

# A simulated link that gives key from blocks of 200 frames: no fibre, an efficient detector, a balanced basis
# choice, and security parameters far too loose for real keys (eps_sec 0.1, eps_cor 1e-4): tests only.
TEST_LINK = ["-d", "0", "--efficiency", "0.3", "--p-z", "0.5"]
TEST_FRAMES = 200
TEST_EPS = {"eps_sec": 0.1, "eps_cor": 1e-4}


class BeatsApartTestCase(unittest.TestCase):
    def test_across_the_wraps_of_the_byte_counts(self):
        # True beat counts R (read) and W (written) near and far past the point where their byte counts wrap at
        # 2^32; the board gives the byte counts modulo 2^32.
        rng = np.random.default_rng(12)
        for read_beat, written_beat in [(6, 1), (10, 4), (8, 2), (3, 5), (1, 1), (7, 16)]:
            wrap = (1 << 32) // read_beat
            for _ in range(200):
                written = int(rng.choice([rng.integers(0, 1 << 20), wrap + rng.integers(-1000, 1000),
                                          rng.integers(0, 1 << 40)]))
                apart = int(rng.integers(-5000, 5000))
                read = max(written + apart, 0)
                with self.subTest(read_beat=read_beat, written_beat=written_beat, read=read, written=written):
                    self.assertEqual(beats_apart(read * read_beat % (1 << 32), read_beat,
                                                 written * written_beat % (1 << 32), written_beat), read - written)

    def test_counts_that_fit_no_difference(self):
        with self.assertRaisesRegex(ProtocolError, r"\(3 bytes of 6-byte beats read, 0 of 1-byte beats written\) "
                                                   r"fit no difference within 16777216 beats: restart both boards"):
            beats_apart(3, 6, 0, 1)
        with self.assertRaisesRegex(ProtocolError, r"fit no difference within 10 beats"):
            beats_apart(6 * 100, 6, 0, 1, bound=10)
        with self.assertRaisesRegex(ValueError, r"512-byte beats repeat every 8388608 beats modulo 2\^32"):
            beats_apart(0, 512, 0, 1)


class BoardAlignmentTestCase(unittest.TestCase):
    """A node killed in the middle of a block leaves its board in the middle of it (detections read and not
    answered, frames held, key bits in the key memory); the next session's alignment puts both boards back in
    step, and blocks give equal keys again. Frame numbers go on past the boards' 2^32."""

    def setUp(self):
        from dataclasses import replace

        from qkdlink.cli import _bench, get_argparser
        from qkdlink.host.finite_key import DecoySettings
        from qkdlink.host.frontend import configure_alice, configure_bob
        from qkdlink.host.protocol import ProtocolSettings
        from qkdlink.sim.boardlink import LinkTiming, realised_decoy as sim_decoy

        args = get_argparser().parse_args(["demo", *TEST_LINK])
        self.timing = timing = LinkTiming()
        self.bench = replace(_bench(args, 0.0), slot_rate_hz=1e9 / timing.slot_ns)
        requested = DecoySettings(tuple(args.intensities), tuple(args.probabilities))
        (p_z, t0, t1), decoy, _ = sim_decoy(requested, self.bench.source.p_z)
        self.assertEqual(realised_decoy(args.intensities, (p_z, t0, t1)), decoy)
        self.settings = ProtocolSettings(decoy, **TEST_EPS)
        bins = timing.period * timing.phases

        def configure(board):
            if board.role.name == "ALICE":
                configure_alice(board, period=timing.period, p_z=p_z, thresholds=(t0, t1))
            else:
                configure_bob(board, period_bins=bins, gate_start=bins // 4, gate_width=bins // 2 + 1)
        self.configure = configure

    def sessions(self, *, first_frame=0):
        """Serve model boards whose frame numbers start at ``first_frame``; yields ``(session, state)``, where
        ``session(blocks, die_at=None)`` is one process's session: open the boards, align, run blocks."""
        from qkdlink.host.board import Board
        from qkdlink.host.entropy import SimulatedEntropy
        from qkdlink.host.frontend import BoardChoices, BoardDetections, start
        from qkdlink.host.node import align_alice, align_bob
        from qkdlink.host.protocol import Alice, Bob
        from qkdlink.sim.boardlink import simulated_link
        from qkdlink.sim.serve import serve

        link = simulated_link(self.bench, timing=self.timing, seed=7, rtl=False, first_frame=first_frame)
        entropy = [SimulatedEntropy(seed) for seed in (1, 2)]
        settings, configure = self.settings, self.configure
        with scratch_directory() as directory, NodeState(Path(directory) / "alice.node") as state, \
                serve(lambda: link.endpoint("alice")) as alice_server, \
                serve(lambda: link.endpoint("bob")) as bob_server:

            def session(blocks, *, die_at=None):
                """Each side's last frame and its blocks' results, or what ended the session."""
                with Board.open(alice_server.url) as alice_board, Board.open(bob_server.url) as bob_board:
                    def alice_work(end):
                        frame = align_alice(end, alice_board, state, configure=configure, check={}, timeout=20)
                        results = []
                        for number in range(blocks):
                            choices = BoardChoices(alice_board, released=frame, frames=TEST_FRAMES)
                            results.append(Alice(end, settings, entropy[0]).run_block(
                                number, TEST_FRAMES << alice_board.frame_bits, choices))
                            frame = choices.released
                        return frame, results

                    def bob_work(end):
                        frame, carry = align_bob(end, bob_board, configure=configure, check={}, timeout=20)
                        results = []
                        for number in range(blocks):
                            detections = BoardDetections(bob_board, frames=TEST_FRAMES, first_frame=frame, carry=carry)
                            results.append(Bob(end, settings, entropy[1]).run_block(number, detections))
                            frame, carry = frame + TEST_FRAMES, detections.leftover
                        return frame, results

                    return run_pair(alice_work, bob_work, Countdown(), Countdown(die_at))

            def start_boards():
                """Start both boards as an earlier node would have, Bob's first; Alice's node state says where."""
                with Board.open(alice_server.url) as alice_board, Board.open(bob_server.url) as bob_board:
                    for board in (bob_board, alice_board):
                        configure(board)
                        start(board)
                state.set("released", first_frame)

            yield session, state, start_boards

    def check_blocks(self, outcome):
        """Every block of the session gave both sides the same key; the frame where the session ended."""
        (alice_frame, alice), (bob_frame, bob) = outcome["alice"], outcome["bob"]
        self.assertEqual(alice_frame, bob_frame)
        for alice_result, bob_result in zip(alice, bob, strict=True):
            self.assertIsNone(alice_result.abort_reason, alice_result.abort_reason)
            self.assertGreater(alice_result.key.size, 0)
            np.testing.assert_array_equal(alice_result.key, bob_result.key)
        return alice_frame

    def test_blocks_after_an_interrupted_block(self):
        for session, state, _ in self.sessions():
            # Bob's process dies in the middle of sifting (its 6th message: align, then detect and test batches).
            outcome = session(1, die_at=6)
            self.assertIsInstance(outcome["bob"], Crash)
            self.assertTrue(outcome["alice"][1][-1].aborted)
            # The next processes: two blocks in a row, the second from where the first left its detections.
            frame = self.check_blocks(session(2))
            self.assertEqual(state.get("released"), frame - 2 * TEST_FRAMES)     # where the session began

    def test_boards_out_of_step_are_refused(self):
        # Alice's record says she released some 3e9 frames, but the boards count a few: one of them was reset
        # while the other ran. Near 2^32 the record could pass for a count that wrapped; it is too far ahead.
        for session, state, start_boards in self.sessions():
            start_boards()
            state.set("released", 3_000_000_000)
            outcome = session(1)
            for role in ("alice", "bob"):
                self.assertIsInstance(outcome[role], ProtocolError)
                self.assertRegex(str(outcome[role]), r"the boards are out of step: Bob's counts \d+ frames \(modulo "
                                                     r"2\^32\), Alice released 3000000000: one was reset while the "
                                                     r"other ran; restart both boards")
            self.assertEqual(state.get("released"), 3_000_000_000)

    def test_blocks_across_the_wrap_of_the_boards_frame_numbers(self):
        # Boards that have run for almost 2^32 frames: the blocks of a session cross the wrap, and a new session
        # after it aligns the boards by the host's numbers, which go on past 2^32.
        first = (1 << 32) - TEST_FRAMES - TEST_FRAMES // 2
        for session, state, start_boards in self.sessions(first_frame=first):
            start_boards()
            frame = self.check_blocks(session(2))
            self.assertGreater(frame, 1 << 32)
            frame = self.check_blocks(session(1))
            self.assertGreater(state.get("released"), 1 << 32)


# ---------------------------------------------------------------------------------------- node processes

def free_ports(count, *, consecutive=False):
    """``count`` TCP ports free on the loopback now (consecutive ones if asked)."""
    import random
    import socket
    rng = random.Random()
    for _ in range(1000):
        first = rng.randrange(20000, 60000)
        ports = list(range(first, first + count)) if consecutive else rng.sample(range(20000, 60000), count)
        try:
            sockets = []
            for port in ports:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return ports
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free ports")


class TCPProxy:
    """A TCP proxy from a local port to ``target`` that can flip one bit of one frame from the listening side's
    peer (the nodes' frames: 4-byte little-endian length, then the frame)."""

    def __init__(self, target):
        import socket
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = None               # (frame number in the next connection, bit) to flip
        self.flipped = threading.Event()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closed = True
        self.listener.close()

    def _accept(self):
        import socket
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            plan, self.armed = self.armed, None
            # Alice listens: what comes back from the target is Alice's, the frames to damage.
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, plan), daemon=True).start()

    def _pipe(self, source, destination, plan):
        import struct
        buffer, frames = bytearray(), 0
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                if plan is None:
                    destination.sendall(data)
                    continue
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from("<I", buffer)[0]:
                    length = struct.unpack_from("<I", buffer)[0]
                    frame = bytearray(buffer[4:4 + length])
                    del buffer[:4 + length]
                    if plan is not None and frames == plan[0]:
                        frame[plan[1] // 8] ^= 1 << plan[1] % 8
                        self.flipped.set()
                    frames += 1
                    destination.sendall(struct.pack("<I", length) + frame)
        except OSError:
            pass
        finally:
            for sock in (source, destination):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass
                sock.close()


class Link:
    """`qkd simulate --model` boards and two node processes (`python -m qkdlink.cli node`) on loopback.

    Every random number of the boards and the optics comes from ``seed``; the nodes draw keys from the OS.
    """

    def __init__(self, directory, pki, *, seed, proxy=False, block_frames=TEST_FRAMES):
        import subprocess
        import sys
        self.directory = Path(directory)
        self.python = sys.executable
        board_port = free_ports(2, consecutive=True)[0]
        peer, km, alice_etsi, bob_etsi = free_ports(4)
        self.proxy = TCPProxy(("127.0.0.1", peer)) if proxy else None
        self.etsi = {"alice": alice_etsi, "bob": bob_etsi}
        self.pki = pki
        psk = secrets.token_bytes(1 << 20)
        for index, role in enumerate(("alice", "bob")):
            (self.directory / f"{role}.psk").write_bytes(psk)
            kme = ("KME-A", "KME-B")[index]
            port = self.proxy.port if role == "bob" and proxy else peer
            board = ({"period": 2} if role == "alice" else
                     {"period_bins": 8.0, "gate_start": 2, "gate_width": 5})
            (self.directory / f"{role}.toml").write_text(config_text(
                self.directory, role=role, peer={"host": "127.0.0.1", "port": port, "km_port": km},
                board={"url": f"socket://127.0.0.1:{board_port + index}", **board},
                link={"block_frames": block_frames}, protocol={**TEST_EPS, "p_z": 0.5},
                etsi={"kme_id": kme, "port": self.etsi[role], "cert": str(pki.kmes[kme][0]),
                      "key": str(pki.kmes[kme][1]), "ca": str(pki.ca_cert),
                      "saes": {"SAE-A": "KME-A", "SAE-B": "KME-B"}}))
        self.simulate = subprocess.Popen(
            [self.python, "-m", "qkdlink.cli", "-q", "simulate", "--model", "--port", str(board_port), *TEST_LINK,
             "--seed", str(seed)], stdout=subprocess.PIPE, text=True)
        line = ""
        while not line.startswith("Bob:"):
            line = self.simulate.stdout.readline()
            assert line or self.simulate.poll() is None, "the simulated boards did not start"
        self.nodes = {}
        for role in ("alice", "bob"):
            self.start(role)

    def start(self, role):
        import subprocess
        self.nodes[role] = subprocess.Popen(
            [self.python, "-m", "qkdlink.cli", "-q", "-L", str(self.log_path(role)), "node", "--config",
             str(self.directory / f"{role}.toml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, role):
        import signal
        self.nodes[role].send_signal(signal.SIGKILL)
        self.nodes[role].wait()

    def stop(self, role, timeout=20):
        import signal
        self.nodes[role].send_signal(signal.SIGTERM)
        return self.nodes[role].wait(timeout)

    def close(self):
        for process in [*self.nodes.values(), self.simulate]:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.simulate.stdout.close()
        if self.proxy is not None:
            self.proxy.close()

    def log_path(self, role):
        return self.directory / f"{role}.log"

    def log(self, role):
        path = self.log_path(role)
        return path.read_text() if path.exists() else ""

    def wait_for(self, role, pattern, *, start=0, timeout=60.0):
        """The first match of ``pattern`` in ``role``'s log at or after offset ``start``; fails after ``timeout``."""
        import re
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.compile(pattern).search(self.log(role), start)
            if match:
                return match
            if self.nodes[role].poll() is not None:
                self.fail_log(role, f"the {role} node exited with {self.nodes[role].returncode}")
            time.sleep(0.005)
        self.fail_log(role, f"no {pattern!r} in {role}'s log within {timeout} s")

    def fail_log(self, role, message):
        tail = "\n".join(line for line in self.log(role).splitlines() if " DEBUG" not in line)[-3000:]
        raise AssertionError(f"{message}; the log ends:\n{tail}")

    def client(self, role):
        from qkdlink.host.etsi014 import KeyDeliveryClient
        sae = {"alice": "SAE-A", "bob": "SAE-B"}[role]
        cert, key = self.pki.saes[sae]
        return KeyDeliveryClient("127.0.0.1", self.etsi[role], certfile=cert, keyfile=key, cafile=self.pki.ca_cert,
                                 timeout=15.0)

    def committed(self, role):
        """The blocks ``role``'s log says were committed, by a block's commit or by reconciliation."""
        import re
        log = self.log(role)
        blocks = re.findall(r"block ([0-9a-f-]{36}) committed:", log)
        for listed in re.findall(r"reconciled the stores: committed (.*?), discarded", log):
            blocks += re.findall(r"[0-9a-f-]{36}", listed)
        return [uuid.UUID(block) for block in blocks]


def store_units(path):
    """{unit id: (state, key bytes)} of a key store, read from its database."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, state, key FROM units").fetchall()
    return {uuid.UUID(bytes=row[0]): (row[1], row[2]) for row in rows}


def remaining_pads(path):
    """{stream: (bytes ever added, consumed, the remaining bytes)} of a key store's authentication pads."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        streams = db.execute("SELECT stream, added, consumed FROM auth_streams").fetchall()
        return {stream: (added, consumed, b"".join(row[0] for row in db.execute(
            "SELECT data FROM auth_keys WHERE stream = ? ORDER BY seq", (stream,))))
            for stream, added, consumed in streams}


class NodesTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.TemporaryDirectory(prefix="qkdlink-nodes-")
        cls.pki = make_test_pki(Path(cls.scratch.name) / "pki", ["KME-A", "KME-B"], ["SAE-A", "SAE-B"])

    @classmethod
    def tearDownClass(cls):
        cls.scratch.cleanup()

    def link(self, name, **options):
        directory = Path(self.scratch.name) / name
        directory.mkdir()
        link = Link(directory, self.pki, **options)
        self.addCleanup(link.close)
        return link

    def check_stores_agree(self, link, *, delivered_everywhere=True):
        alice, bob = (store_units(link.directory / f"{role}.keys") for role in ("alice", "bob"))
        self.assertEqual(set(alice), set(bob), "the stores hold different units")
        for unit, (state, key) in alice.items():
            other_state, other_key = bob[unit]
            self.assertNotIn("pending", (state, other_state))
            if key is not None and other_key is not None:
                self.assertEqual(key, other_key, f"unit {unit} has different bytes")
            if delivered_everywhere and state == "delivered":
                self.assertEqual(other_state, "delivered", f"unit {unit} handed out at Alice only")
        pads = [remaining_pads(link.directory / f"{role}.keys") for role in ("alice", "bob")]
        self.assertEqual(set(pads[0]), set(PAD_STREAMS))
        for stream in PAD_STREAMS:
            (added, consumed, rest), (other_added, other_consumed, other_rest) = pads[0][stream], pads[1][stream]
            self.assertEqual(added, other_added, f"pad {stream} grew differently")
            start = max(consumed, other_consumed)          # the bytes at the same places must be the same
            self.assertEqual(rest[start - consumed:], other_rest[start - other_consumed:], f"pad {stream} differs")
        return alice

    def test_keys_reach_both_saes_and_a_man_in_the_middle_is_caught(self):
        from qkdlink.host.etsi014 import DeliveryError
        link = self.link("mitm", seed=11, proxy=True)
        link.wait_for("alice", r"block \S+ committed:", timeout=60)
        # An SAE at Alice takes keys with enc_keys; the SAE at Bob gets the same bytes with dec_keys, once.
        with link.client("alice") as sae_a, link.client("bob") as sae_b:
            self.assertGreaterEqual(sae_a.status("SAE-B")["stored_key_count"], 1)
            keys = sae_a.enc_keys("SAE-B", 2, 64)
            self.assertEqual([len(key) for _, key in keys], [8, 8])
            self.assertEqual(sae_b.dec_keys("SAE-A", [key_id for key_id, _ in keys]), keys)
            with self.assertRaises(DeliveryError) as caught:
                sae_b.dec_keys("SAE-A", [keys[0][0]])
            self.assertEqual(caught.exception.status, 400)
            with self.assertRaises(DeliveryError) as caught:              # Bob's KME is not the master
                sae_b.enc_keys("SAE-A", 1, 64)
            self.assertEqual(caught.exception.status, 400)
        # The man in the middle flips one bit of the 12th frame Alice sends in the next connection (it carries a
        # sifting answer of the block then running). The frame is: flag (1 byte), sequence number (8 bytes),
        # message; its tag comes with Alice's close of the block, which Bob checks whatever the flip did first.
        before = {role: len(link.log(role)) for role in ("alice", "bob")}
        link.proxy.armed = (12, 9 * 8 + 77)
        link.stop("bob")
        link.start("bob")
        self.assertTrue(link.proxy.flipped.wait(60), "the proxy saw no 12th frame")
        failure = link.wait_for("bob", r"ERROR: bob: authentication failed on alice->bob: messages \d+-\d+ .*wrong tag",
                                start=before["bob"])
        aborted = {role: link.wait_for(role, r"session ended: block aborted, nothing stored", start=before[role])
                   for role in ("alice", "bob")}
        self.assertGreater(aborted["bob"].start(), failure.start())
        # Nothing was committed in that session, and the link goes on in a new one.
        for role in ("alice", "bob"):
            self.assertNotRegex(link.log(role)[before[role]:aborted[role].start()], r"committed:")
        resumed = link.wait_for("alice", r"block \S+ committed:", start=aborted["alice"].end())
        link.wait_for("bob", r"block \S+ committed:", start=aborted["bob"].end())
        self.assertEqual(link.stop("alice"), 0)
        self.assertEqual(link.stop("bob"), 0)
        self.assertIn("stopped after", link.log("alice")[resumed.end():])
        units = self.check_stores_agree(link)
        # Every block in the stores is one the logs report committed on both sides, and no other.
        committed = set(link.committed("alice"))
        self.assertEqual(committed, set(link.committed("bob")))
        with KeyStore(link.directory / "alice.keys", unit_bits=None) as store:
            self.assertEqual({store.block_state(block) for block in committed}, {"ready"})
            self.assertEqual(store.status()["ready_blocks"], len(committed))
        self.assertEqual(sum(state == "delivered" for state, _ in units.values()), 2)

    def test_kill_loop(self):
        """SIGKILL either node at random points, seeded, 50 times, restarting it each time, while SAEs take keys.

        Every tenth kill waits for a block's commit to begin on the victim's side and strikes within 30 ms: the
        two-phase commit takes about that, and it is where a kill could make the stores disagree (the in-process
        tests above try each of its points). The others come at a random time, 0.2 to 1.5 s after the previous
        kill: start-up, handshake, reconciliation, alignment, the block's protocol.
        """
        import random
        import time
        from qkdlink.host.etsi014 import DeliveryError
        rng = random.Random(20261127)
        link = self.link("kills", seed=5, block_frames=150)
        link.wait_for("alice", r"block \S+ committed:", timeout=60)
        taken, fetched, refused, twice = {}, {}, [], []
        stop = threading.Event()

        def applications():
            """The SAEs: a key from Alice's KME, then the same from Bob's, and again; a KME may be down or die
            while it answers."""
            import http.client
            while not stop.is_set():
                try:
                    if len(taken) == len(fetched):
                        with link.client("alice") as sae:
                            [(key_id, key)] = sae.enc_keys("SAE-B", 1, 64)
                        if key_id in taken:
                            twice.append(key_id)
                        taken[key_id] = key
                    for key_id in set(taken) - set(fetched):
                        with link.client("bob") as sae:
                            [(got_id, key)] = sae.dec_keys("SAE-A", [key_id])
                        fetched[got_id] = key
                except DeliveryError as error:
                    refused.append(error.status)
                except (OSError, http.client.HTTPException, ValueError):
                    pass
                stop.wait(0.2)

        sae = threading.Thread(target=applications, daemon=True)
        sae.start()
        kills = {"random": 0, "commit": 0}
        for number in range(50):
            victim = rng.choice(["alice", "bob"])
            if number % 10 == 5:
                link.wait_for(victim, rf"{victim}: block \S+ stored pending", start=len(link.log(victim)), timeout=90)
                time.sleep(rng.uniform(0, 0.03))
                kills["commit"] += 1
            else:
                time.sleep(rng.uniform(0.2, 1.5))
                kills["random"] += 1
            link.kill(victim)
            link.start(victim)
        # The link recovers: a block is committed after the last kill.
        end = len(link.log("alice"))
        recovered = link.wait_for("alice", r"block (\S+) committed:", timeout=90, start=end)
        link.wait_for("bob", rf"block {recovered[1]} committed:", timeout=10)
        stop.set()
        sae.join(30)
        # Every key a master SAE received reaches the slave SAE with the same bytes, once. A KME killed after it
        # handed a key out and before its answer left has erased the key all the same (a key is handed out at
        # most once): the stores show which.
        lost = set()
        with link.client("bob") as sae_b:
            for key_id in set(taken) - set(fetched):
                try:
                    [(got_id, key)] = sae_b.dec_keys("SAE-A", [key_id])
                    fetched[got_id] = key
                except DeliveryError as error:
                    self.assertEqual(error.status, 400)
                    lost.add(key_id)
            self.assertEqual(fetched, {key_id: key for key_id, key in taken.items() if key_id not in lost})
            if fetched:
                with self.assertRaises(DeliveryError):
                    sae_b.dec_keys("SAE-A", [next(iter(fetched))])
        self.assertEqual(twice, [], "a key_ID served twice")
        self.assertEqual(len(set(taken.values())), len(taken), "the same key bytes served under two key_IDs")
        # Stop both while the next block's protocol runs (a block takes seconds, the fetching above much less).
        self.assertNotRegex(link.log("alice")[recovered.end():], r"stored pending")
        self.assertEqual(link.stop("alice"), 0)
        self.assertEqual(link.stop("bob"), 0)
        units = self.check_stores_agree(link, delivered_everywhere=False)
        bob = store_units(link.directory / "bob.keys")
        at_alice = {unit for unit, (state, _) in units.items() if state == "delivered"}
        at_bob = {unit for unit, (state, _) in bob.items() if state == "delivered"}
        self.assertLessEqual(set(taken), at_alice & at_bob)         # 64-bit keys: a key is one unit, its key_ID
        self.assertLessEqual(at_bob, at_alice)                      # Bob hands out only what Alice did
        self.assertEqual(at_bob - set(fetched), lost)               # the answers that died with Bob's process
        for unit in at_alice - set(taken):                          # the answers that died with Alice's
            self.assertEqual(bob[unit][0], "assigned")
        committed = set(link.committed("alice")) | set(link.committed("bob"))
        for role in ("alice", "bob"):
            with KeyStore(link.directory / f"{role}.keys", unit_bits=None) as store:
                # No key reported stored is lost.
                self.assertEqual({store.block_state(block) for block in committed}, {"ready"}, role)
        logs = link.log("alice") + link.log("bob")
        print(f"\nkill loop: {kills}, {len(committed)} blocks committed, {len(taken)} keys to the master SAE, "
              f"{len(fetched)} to the slave SAE, answers lost with a killed KME: {len(at_alice - set(taken))} at "
              f"Alice, {len(lost)} at Bob; {logs.count('reconciled the stores')} reconciliations; SAE refusals "
              f"{sorted(set(refused))}")
        with KeyStore(link.directory / "alice.keys", unit_bits=None) as store:
            self.assertGreaterEqual(store.status()["ready_blocks"], 3)
