import hashlib
import math
import unittest

import numpy as np

from qkdlink.host.cascade import (DEFAULT_PASSES, CascadeAlice, CascadeResult, ParityReply, ParityRequest,
                                  block_sizes, cascade_bob, reconcile)


def binary_entropy(q):
    return 0.0 if q in (0, 1) else -q * math.log2(q) - (1 - q) * math.log2(1 - q)


def noisy_pair(rng, n, qber):
    """Alice's key and Bob's, with each bit flipped independently with probability ``qber`` (a BSC)."""
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ errors


class WireChannel:
    """Carries every message as bytes (encode, decode) and counts what Alice reveals from the encoded replies."""
    def __init__(self, alice):
        self.alice = alice
        self.exchanges = 0
        self.reply_bits = 0

    def __call__(self, request):
        request = ParityRequest.decode(request.encode())
        data = self.alice.answer(request).encode()
        self.exchanges += 1
        self.reply_bits += int.from_bytes(data[5:9], "little")     # the bit count in the reply header
        return ParityReply.decode(data)


def run(alice_key, bob_key, qber, seed, channel=None, **options):
    """Both sides with an explicit channel; returns the result and the channel."""
    alice = CascadeAlice(alice_key, shuffle_seed=seed)
    channel = channel or WireChannel(alice)
    bob = cascade_bob(bob_key, qber, shuffle_seed=seed, **options)
    request = next(bob)
    try:
        while True:
            request = bob.send(channel(request))
    except StopIteration as stop:
        return stop.value, channel


def documented_order(seed, n, index):
    """The order of a pass as the module documentation describes it, written out independently, and for a split
    pass the size of its first half."""
    entropy = int.from_bytes(hashlib.sha256(b"qkdlink.cascade/1\0" + seed).digest(), "little")
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(index,))))
    if index == 0:
        return np.arange(n), None
    if index in (1, 2):
        return generator.permutation(n), None
    mask = np.unpackbits(np.frombuffer(generator.bytes((n + 7) // 8), np.uint8), count=n, bitorder="little")
    return np.concatenate([np.flatnonzero(mask == 0), np.flatnonzero(mask == 1)]), int(np.count_nonzero(mask == 0))


class CascadeAliceTestCase(unittest.TestCase):
    def test_answers_match_the_documented_orders(self):
        rng = np.random.default_rng(13)
        for n in (1, 2, 3, 9, 64, 1000, 4099):
            with self.subTest(n=n):
                key = rng.integers(0, 2, n, dtype=np.uint8)
                seed = rng.bytes(24)
                alice = CascadeAlice(key, shuffle_seed=seed)
                orders = [documented_order(seed, n, index)[0] for index in range(6)]
                passes, starts, ends = [], [], []
                for index in range(len(orders)):
                    for _ in range(20):
                        start = int(rng.integers(0, n))
                        passes.append(index)
                        starts.append(start)
                        ends.append(int(rng.integers(start + 1, n + 1)))
                shuffle = rng.permutation(len(passes))   # ranges of any pass in any order
                request = ParityRequest(n, np.array(passes)[shuffle], np.array(starts)[shuffle],
                                        np.array(ends)[shuffle])
                expected = [int(key[orders[p][s:e]].sum()) & 1
                            for p, s, e in zip(request.passes, request.starts, request.ends)]
                self.assertEqual(alice.answer(request).parities.tolist(), expected)

    def test_whole_halves(self):
        # Answered from the packed key before Alice builds the order of the pass, and the same after.
        rng = np.random.default_rng(14)
        for n in (1, 2, 3, 777):
            for index in range(3, 12):
                with self.subTest(n=n, index=index):
                    key = rng.integers(0, 2, n, dtype=np.uint8)
                    seed = rng.bytes(16)
                    order, half = documented_order(seed, n, index)
                    halves = [(start, end) for start, end in [(0, half), (half, n)] if start < end]
                    request = ParityRequest(n, [index] * len(halves), *zip(*halves))
                    expected = [int(key[order[start:end]].sum()) & 1 for start, end in halves]
                    alice = CascadeAlice(key, shuffle_seed=seed)
                    self.assertEqual(alice.answer(request).parities.tolist(), expected)
                    whole = alice.answer(ParityRequest(n, [index], [0], [n])).parities.tolist()
                    self.assertEqual(whole, [int(key.sum()) & 1])
                    self.assertEqual(alice.answer(request).parities.tolist(), expected)

    def test_empty_request(self):
        alice = CascadeAlice([1, 0, 1], shuffle_seed=bytes(16))
        self.assertEqual(len(alice.answer(ParityRequest(3, [], [], []))), 0)


class CascadeCorrectsTestCase(unittest.TestCase):
    QBERS = (0, 0.005, 0.01, 0.02, 0.05, 0.08, 0.11)

    def check(self, n, qber, keys, rng):
        for key in range(keys):
            with self.subTest(n=n, qber=qber, key=key):
                alice_key, bob_key = noisy_pair(rng, n, qber)
                result, channel = run(alice_key, bob_key, qber, rng.bytes(32))
                errors = int(np.count_nonzero(alice_key ^ bob_key))
                np.testing.assert_array_equal(result.key, alice_key)
                self.assertEqual(result.corrected, errors)      # every flip corrects an error
                self.assertEqual(result.leaked_bits, channel.reply_bits)
                self.assertEqual(result.round_trips, channel.exchanges)
                self.assertEqual(result.passes, DEFAULT_PASSES)

    def test_small_keys(self):
        rng = np.random.default_rng(1)
        for n in (1, 7, 100):
            for qber in self.QBERS:
                self.check(n, qber, 20, rng)

    def test_10_thousand_bits(self):
        rng = np.random.default_rng(2)
        for qber in self.QBERS:
            self.check(10_000, qber, 4, rng)

    def test_100_thousand_bits(self):
        rng = np.random.default_rng(3)
        for qber in self.QBERS:
            self.check(100_000, qber, 1, rng)

    def test_estimate_off_by_a_factor(self):
        # The QBER estimate only sets the block sizes: a wrong one costs leak, not correctness.
        rng = np.random.default_rng(4)
        for actual, estimate in [(0.02, 0.005), (0.005, 0.05), (0.05, 0)]:
            with self.subTest(actual=actual, estimate=estimate):
                alice_key, bob_key = noisy_pair(rng, 20_000, actual)
                result, _ = run(alice_key, bob_key, estimate, rng.bytes(32))
                np.testing.assert_array_equal(result.key, alice_key)

    def test_options(self):
        rng = np.random.default_rng(5)
        alice_key, bob_key = noisy_pair(rng, 5_000, 0.03)
        for options in [dict(passes=1), dict(passes=3), dict(passes=40), dict(block_sizes=[20]),
                        dict(block_sizes=[25, 50, 100], passes=6)]:
            with self.subTest(**options):
                result, channel = run(alice_key, bob_key, 0.03, rng.bytes(16), **options)
                self.assertEqual(result.passes, options.get("passes", DEFAULT_PASSES))
                self.assertEqual(result.leaked_bits, channel.reply_bits)
                if result.passes >= 3:
                    np.testing.assert_array_equal(result.key, alice_key)


class CascadeLeakTestCase(unittest.TestCase):
    def test_leak_without_errors(self):
        # With nothing to correct, one exchange asks every block parity of every pass, except the last block of each
        # pass after the first, which the parity of the whole key gives (and a random half may be empty).
        rng = np.random.default_rng(6)
        for n, qber in [(10_000, 0.02), (1_000, 0.11), (50_000, 0.005), (3, 0.01), (1, 0.2)]:
            with self.subTest(n=n, qber=qber):
                key = rng.integers(0, 2, n, dtype=np.uint8)
                seed = rng.bytes(32)
                result, channel = run(key, key, qber, seed)
                k1, k2, k3 = block_sizes(qber, n)
                halves = [documented_order(seed, n, index)[1] for index in range(3, DEFAULT_PASSES)]
                expected = (math.ceil(n / k1) + math.ceil(n / k2) - 1 + math.ceil(n / k3) - 1
                            + sum(0 < half < n for half in halves))
                self.assertEqual(result.leaked_bits, expected)
                self.assertEqual(result.leaked_bits, channel.reply_bits)
                self.assertEqual((result.round_trips, result.corrected), (1, 0))

    def test_result_independent_of_encoding(self):
        rng = np.random.default_rng(7)
        alice_key, bob_key = noisy_pair(rng, 30_000, 0.04)
        seed = rng.bytes(32)
        alice = CascadeAlice(alice_key, shuffle_seed=seed)
        direct, _ = run(alice_key, bob_key, 0.04, seed, channel=alice.answer)
        wired, _ = run(alice_key, bob_key, 0.04, seed)
        convenient = reconcile(alice_key, bob_key, 0.04, shuffle_seed=seed)
        for result in (wired, convenient):
            np.testing.assert_array_equal(result.key, direct.key)
            self.assertEqual((result.leaked_bits, result.round_trips, result.corrected),
                             (direct.leaked_bits, direct.round_trips, direct.corrected))
        self.assertIsInstance(convenient, CascadeResult)

    def test_efficiency(self):
        # A sanity bound only; the benchmark measures efficiency properly.
        rng = np.random.default_rng(8)
        n = 100_000
        for qber, bound in [(0.02, 1.25), (0.05, 1.2)]:
            with self.subTest(qber=qber):
                alice_key, bob_key = noisy_pair(rng, n, qber)
                result = reconcile(alice_key, bob_key, qber, shuffle_seed=rng.bytes(32))
                actual = np.count_nonzero(alice_key ^ bob_key) / n
                self.assertLess(result.leaked_bits / (n * binary_entropy(actual)), bound)

    def test_seed_decides_the_orders(self):
        rng = np.random.default_rng(9)
        alice_key, bob_key = noisy_pair(rng, 20_000, 0.03)
        seed = rng.bytes(32)
        first = reconcile(alice_key, bob_key, 0.03, shuffle_seed=seed)
        again = reconcile(alice_key, bob_key, 0.03, shuffle_seed=bytearray(seed))
        other = reconcile(alice_key, bob_key, 0.03, shuffle_seed=rng.bytes(32))
        self.assertEqual((first.leaked_bits, first.round_trips), (again.leaked_bits, again.round_trips))
        self.assertNotEqual((first.leaked_bits, first.round_trips), (other.leaked_bits, other.round_trips))


class BlockSizesTestCase(unittest.TestCase):
    def test_schedules(self):
        # alpha = ceil(log2(1/Q) - 1/2): 7 at 1 %, 6 at 2 %, 4 at 5 % and 8 %, 3 at 11 %.
        expected = {
            "qkdlink": {0.01: (128, 512, 4096), 0.02: (64, 256, 4096), 0.05: (16, 64, 4096), 0.11: (8, 32, 4096)},
            "option8": {0.01: (128, 1024, 4096), 0.02: (64, 512, 4096), 0.05: (16, 256, 4096), 0.11: (8, 256, 4096)},
            "option7": {0.01: (128, 512, 500_000), 0.02: (64, 256, 500_000), 0.05: (32, 128, 500_000),
                        0.11: (16, 64, 500_000)},
        }
        for schedule, sizes in expected.items():
            for qber, expected_sizes in sizes.items():
                with self.subTest(schedule=schedule, qber=qber):
                    self.assertEqual(block_sizes(qber, 10**6, schedule=schedule), expected_sizes)
        self.assertEqual(block_sizes(0.02, 10**6), expected["qkdlink"][0.02])

    def test_caps(self):
        self.assertEqual(block_sizes(0.02, 1000), (64, 256, 500))
        self.assertEqual(block_sizes(0, 999), (500, 500, 500))
        self.assertEqual(block_sizes(0.3, 1), (1, 1, 1))
        for schedule in ("qkdlink", "option7", "option8"):
            for qber in (1e-6, 1e-4, 0.003, 0.2, 0.49):
                sizes = block_sizes(qber, 10**7, schedule=schedule)
                self.assertEqual(list(sizes), sorted(sizes))

    def test_option8_reconciles(self):
        rng = np.random.default_rng(12)
        alice_key, bob_key = noisy_pair(rng, 20_000, 0.02)
        sizes = block_sizes(0.02, 20_000, schedule="option8")
        result, _ = run(alice_key, bob_key, 0.02, rng.bytes(32), block_sizes=sizes)
        np.testing.assert_array_equal(result.key, alice_key)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, r"key length must be a positive integer, not 0"):
            block_sizes(0.02, 0)
        with self.assertRaisesRegex(ValueError, r"qber must be a number in \[0, 0.5\), not 0.5"):
            block_sizes(0.5, 100)
        with self.assertRaisesRegex(ValueError, r"schedule must be one of qkdlink, option7, option8, not 'opt9'"):
            block_sizes(0.02, 100, schedule="opt9")


class InputErrorsTestCase(unittest.TestCase):
    SEED = bytes(range(32))

    def test_keys(self):
        good = np.zeros(10, np.uint8)
        with self.assertRaisesRegex(ValueError, r"key must hold only 0 and 1, not .*2"):
            reconcile([0, 1, 2], [0, 1, 1], 0.01, shuffle_seed=self.SEED)
        with self.assertRaisesRegex(ValueError, r"bob_key must hold only 0 and 1, not .*5"):
            reconcile(good, good + 5, 0.01, shuffle_seed=self.SEED)
        with self.assertRaisesRegex(ValueError, r"key must be a one-dimensional sequence of bits"):
            cascade_bob(np.zeros((2, 5), np.uint8), 0.01, shuffle_seed=self.SEED)
        with self.assertRaisesRegex(ValueError, r"key must hold at least one bit, not 0"):
            CascadeAlice([], shuffle_seed=self.SEED)
        with self.assertRaisesRegex(ValueError, r"keys must have one length, not 10 \(Alice\) and 9 \(Bob\)"):
            reconcile(good, good[:9], 0.01, shuffle_seed=self.SEED)

    def test_qber(self):
        key = np.zeros(10, np.uint8)
        for qber in (-0.01, 0.5, 0.7, float("nan"), float("inf"), "0.1", None, True):
            with self.subTest(qber=qber):
                with self.assertRaisesRegex(ValueError, r"qber must be a number in \[0, 0.5\), not"):
                    reconcile(key, key, qber, shuffle_seed=self.SEED)

    def test_seed(self):
        key = np.zeros(10, np.uint8)
        with self.assertRaisesRegex(ValueError, r"shuffle_seed must be bytes, not 'abc"):
            cascade_bob(key, 0.01, shuffle_seed="abcdefghijklmnopqrstuvwxyz")
        with self.assertRaisesRegex(ValueError, r"shuffle_seed must hold at least 16 bytes, not 8"):
            CascadeAlice(key, shuffle_seed=bytes(8))

    def test_options(self):
        key = np.zeros(10, np.uint8)
        for passes in (0, 256, 2.0, True):
            with self.subTest(passes=passes):
                with self.assertRaisesRegex(ValueError, r"passes must be an integer in \[1, 255\]"):
                    cascade_bob(key, 0.01, shuffle_seed=self.SEED, passes=passes)
        with self.assertRaisesRegex(ValueError, r"block sizes must be positive integers, not 0"):
            cascade_bob(key, 0.01, shuffle_seed=self.SEED, block_sizes=[4, 0])
        with self.assertRaisesRegex(ValueError, r"block_sizes gives the sizes of passes 1 to 3"):
            cascade_bob(key, 0.01, shuffle_seed=self.SEED, block_sizes=[2, 4, 8, 16])
        with self.assertRaises(TypeError):
            cascade_bob(key, 0.01, shuffle_seed=self.SEED, unknown=1)

    def test_errors_at_the_call(self):
        # The generator checks its arguments when it is created, not at the first next().
        with self.assertRaises(ValueError):
            cascade_bob(np.zeros(4, np.uint8), 0.6, shuffle_seed=self.SEED)

    def test_mismatched_peers(self):
        alice = CascadeAlice(np.zeros(100, np.uint8), shuffle_seed=self.SEED)
        bob = cascade_bob(np.zeros(99, np.uint8), 0.02, shuffle_seed=self.SEED)
        request = next(bob)
        with self.assertRaisesRegex(ValueError, r"request is for a key of 99 bits, not Alice's 100"):
            alice.answer(request)
        with self.assertRaisesRegex(ValueError, r"reply holds 1 parities for a request of \d+"):
            bob.send(ParityReply([1]))
        bob = cascade_bob(np.zeros(99, np.uint8), 0.02, shuffle_seed=self.SEED)
        next(bob)
        with self.assertRaisesRegex(ValueError, r"Bob expects a ParityReply, not bytes"):
            bob.send(b"")
        with self.assertRaisesRegex(ValueError, r"Alice answers a ParityRequest, not bytes"):
            alice.answer(b"")


class MessagesTestCase(unittest.TestCase):
    def random_request(self, rng, count, n=1000):
        starts = rng.integers(0, n, count)
        ends = starts + 1 + rng.integers(0, n - starts)
        return ParityRequest(n, rng.integers(0, 255, count), starts, ends)

    def test_round_trip(self):
        rng = np.random.default_rng(10)
        for count in (0, 1, 7, 8, 9, 1000):
            with self.subTest(count=count):
                request = self.random_request(rng, count)
                data = request.encode()
                self.assertEqual(len(data), 13 + 9 * count)
                self.assertEqual(ParityRequest.decode(data), request)
                self.assertEqual(ParityRequest.decode(bytearray(data)).encode(), data)
                reply = ParityReply(rng.integers(0, 2, count))
                data = reply.encode()
                self.assertEqual(len(data), 9 + (count + 7) // 8)
                self.assertEqual(ParityReply.decode(data), reply)
                self.assertEqual(ParityReply.decode(memoryview(data)).encode(), data)

    def test_extremes(self):
        limit = (1 << 32) - 1
        request = ParityRequest(limit, [254, 0], [0, limit - 1], [limit, limit])
        self.assertEqual(ParityRequest.decode(request.encode()), request)

    def test_layout(self):
        request = ParityRequest(10, [2], [3], [7])
        self.assertEqual(request.encode(), b"QKCQ\x01" + bytes([10, 0, 0, 0, 1, 0, 0, 0, 2, 3, 0, 0, 0, 7, 0, 0, 0]))
        self.assertEqual(ParityReply([1, 0, 1]).encode(), b"QKCP\x01" + bytes([3, 0, 0, 0, 0b101]))

    def test_immutable(self):
        request = ParityRequest(10, [2], [3], [7])
        with self.assertRaises(ValueError):
            request.starts[0] = 0
        with self.assertRaises(ValueError):
            ParityReply([1, 0]).parities[0] = 0

    def test_malformed_requests(self):
        good = ParityRequest(10, [2, 3], [3, 0], [7, 10]).encode()
        cases = [
            (good[:12], r"needs at least 13 bytes, not 12"),
            (good[:-1], r"a parity request of 2 ranges is 31 bytes long, not 30"),
            (good + b"\0", r"is 31 bytes long, not 32"),
            (b"QKCP" + good[4:], r"starts with b'QKCQ', not b'QKCP'"),
            (good[:4] + b"\x02" + good[5:], r"version must be 1, not 2"),
            (good[:5] + bytes(4) + good[9:], r"key_length must be an integer in \[1, 4294967295\], not 0"),
            (good[:13] + b"\xff" + good[14:], r"pass indices must lie in \[0, 254\], not 3..255"),
            (good[:5] + bytes([6, 0, 0, 0]) + good[9:], r"range 0 must satisfy 0 <= start < end <= 6, not 3..7"),
            (good[:23] + bytes([3]) + good[24:], r"range 0 must satisfy 0 <= start < end <= 10, not 3..3"),
            ("text", r"decoded from bytes, not str"),
        ]
        for data, message in cases:
            with self.subTest(message=message):
                with self.assertRaisesRegex(ValueError, message):
                    ParityRequest.decode(data)

    def test_malformed_replies(self):
        good = ParityReply([1, 0, 1, 1, 0, 0, 1, 0, 1]).encode()
        cases = [
            (good[:8], r"needs at least 9 bytes, not 8"),
            (good[:-1], r"a parity reply of 9 bits is 11 bytes long, not 10"),
            (good + b"\0", r"is 11 bytes long, not 12"),
            (b"QKCQ" + good[4:], r"starts with b'QKCP', not b'QKCQ'"),
            (good[:4] + b"\x00" + good[5:], r"version must be 1, not 0"),
            (good[:-1] + b"\x03", r"padding bits after parity bit 9 must be zero, not 0x03"),
            (None, r"decoded from bytes, not NoneType"),
        ]
        for data, message in cases:
            with self.subTest(message=message):
                with self.assertRaisesRegex(ValueError, message):
                    ParityReply.decode(data)

    def test_bad_fields(self):
        with self.assertRaisesRegex(ValueError, r"passes, starts and ends must have one length, not 2, 1 and 1"):
            ParityRequest(10, [1, 2], [0], [1])
        with self.assertRaisesRegex(ValueError, r"starts must hold integers, not float64"):
            ParityRequest(10, [1], [0.5], [1])
        with self.assertRaisesRegex(ValueError, r"range 0 must satisfy 0 <= start < end <= 10, not -1..1"):
            ParityRequest(10, [1], [-1], [1])
        with self.assertRaisesRegex(ValueError, r"ends must be one-dimensional"):
            ParityRequest(10, [1], [0], [[1]])
        with self.assertRaisesRegex(ValueError, r"parities must hold only 0 and 1, not .*2"):
            ParityReply([0, 2])


class TamperedAnswersTestCase(unittest.TestCase):
    def test_contradicting_parities_end_in_an_error_not_a_hang(self):
        from qkdlink.host.cascade import CascadeAlice, ParityReply, cascade_bob
        rng = np.random.default_rng(3)
        alice_key = rng.integers(0, 2, 20000, dtype=np.uint8)
        bob_key = alice_key ^ (rng.random(alice_key.size) < 0.02).astype(np.uint8)
        for victim in range(0, 40, 7):          # flip one parity in exchange number `victim`
            with self.subTest(victim=victim):
                alice = CascadeAlice(alice_key, shuffle_seed=bytes(16))
                session = cascade_bob(bob_key, 0.02, shuffle_seed=bytes(16))
                request = next(session)
                try:
                    for exchange in range(10_000):
                        reply = alice.answer(request)
                        if exchange == victim:
                            parities = reply.parities.copy()
                            parities[-1] ^= 1
                            reply = ParityReply(parities)
                        request = session.send(reply)
                    self.fail("Cascade did not finish within 10000 exchanges")
                except StopIteration:
                    pass                        # it finished; verification judges the key
                except ValueError as error:
                    self.assertIn("contradict", str(error))
