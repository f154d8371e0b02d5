# amaranth: UnusedElaboratable=no
import os
import random
import unittest
from contextlib import nullcontext

import numpy as np
from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from qkdlink.gateware.keymemory import Command, KeyMemory, Op
from qkdlink.gateware.sifter import Sifter
from qkdlink.gateware.stream import stream_get, stream_put
from qkdlink.gateware.toeplitz import ToeplitzHash
from qkdlink.host.sifting import matches, sift
from qkdlink.host.toeplitz import toeplitz_hash
from qkdlink.sim.keymemory import KeyMemoryModel
from qkdlink.sim.toeplitz import beats_to_bits, key_beats, passes, seed_beats


def _simulate(test, dut, testbenches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    with sim.write_vcd(f"{test.id()}.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
        sim.run()


def _staller(seed, salt, probability):
    """An awaitable pause of a random number of cycles (none at probability 0), reproducible per stream."""
    rng = random.Random(f"{seed}/{salt}")
    async def stall(ctx):
        while rng.random() < probability:
            await ctx.tick()
    return stall


class ModelTestCase(unittest.TestCase):
    def test_packing_is_the_toeplitz_core_layout(self):
        # The hash feed must be exactly what sim.toeplitz, written independently, feeds ToeplitzHash.
        rng = np.random.default_rng(0)
        for width in (1, 2, 4, 8, 16):
            for n in (1, 15, 16, 17, 100):
                bits = rng.integers(0, 2, n, dtype=np.uint8)
                model = KeyMemoryModel(max_bits=128, width=width)
                for bit in bits:
                    self.assertTrue(model.append(int(bit)))
                self.assertEqual(model.hash(2), key_beats(bits, width) * 2)
                self.assertEqual([data for data, _ in model.read()], key_beats(bits, 16))

    def test_by_hand(self):
        model = KeyMemoryModel(max_bits=20, width=4)
        for bit in [1, 0, 1, 1, 0, 0, 0, 1] + [1] * 9:
            model.append(bit)
        self.assertEqual(model.read(), [(0xff8d, False), (0x1, True)])
        self.assertEqual(model.hash(1), [0xd, 0x8, 0xf, 0xf, 0x1])
        model.flip(0)
        model.flip(17)
        self.assertEqual((model.read(), model.bad_flip), ([(0xff8c, False), (0x1, True)], 1))
        for _ in range(3):
            self.assertTrue(model.append(1))
        self.assertFalse(model.append(1))
        self.assertTrue(model.full)
        model.clear()
        self.assertEqual((model.count, model.full, model.read(), model.hash(3)), (0, False, [], []))


class KeyMemoryTestCase(unittest.TestCase):
    """Operations in order against :class:`KeyMemoryModel`, every stream stalled at random.

    One testbench offers the operations one after another, each on its own stream; the core takes them in that
    order. Two more take the READ words and the HASH beats and compare them with the model's.
    """

    def run_ops(self, ops, *, max_bits, width, stall=0.4, seed=0):
        model = KeyMemoryModel(max_bits=max_bits, width=width)
        words, beats, checks = [], [], []
        for op in ops:
            match op:
                case ("bits", bits):
                    for bit in bits:
                        self.assertTrue(model.append(bit), "the test offers a bit beyond max_bits")
                case ("refused", bit):
                    self.assertFalse(model.append(bit))
                case ("flip", index):
                    model.flip(index)
                case ("clear",):
                    model.clear()
                case ("read",):
                    words += model.read()
                case ("hash", count):
                    beats += model.hash(count)
                case ("check",):
                    checks.append((model.count, model.full, model.bad_flip))
                case ("unknown",):
                    pass

        dut = KeyMemory(max_bits=max_bits, width=width)
        received = {"words": 0, "beats": 0}
        rng = random.Random(seed)

        async def state(ctx):
            return ctx.get(dut.count), bool(ctx.get(dut.full)), ctx.get(dut.bad_flip)

        async def drive(ctx):
            pause = _staller(seed, "ops", stall)
            expected_checks = iter(checks)
            for op in ops:
                await pause(ctx)
                match op:
                    case ("bits", bits):
                        for bit in bits:
                            await pause(ctx)
                            await stream_put(ctx, dut.i_bits, bit)
                    case ("refused", bit):
                        ctx.set(dut.i_bits.payload, bit)
                        ctx.set(dut.i_bits.valid, 1)
                        for _ in range(20):
                            _, _, ready = await ctx.tick().sample(dut.i_bits.ready)
                            self.assertFalse(ready, "a bit beyond max_bits was taken")
                        ctx.set(dut.i_bits.valid, 0)
                    case ("flip", index):
                        await stream_put(ctx, dut.i_flip, index)
                    case ("clear",):
                        await stream_put(ctx, dut.i_command, {"op": Op.CLEAR, "passes": rng.getrandbits(16)})
                    case ("read",):
                        # `passes` means nothing to READ: a random value must not matter.
                        await stream_put(ctx, dut.i_command, {"op": Op.READ, "passes": rng.getrandbits(16)})
                    case ("hash", count):
                        await stream_put(ctx, dut.i_command, {"op": Op.HASH, "passes": count})
                    case ("unknown",):
                        await stream_put(ctx, dut.i_command, Command.from_bits(3 | rng.getrandbits(16) << 2))
                    case ("check",):
                        await ctx.tick().repeat(6)      # a flip takes effect 3 to 5 cycles after it is taken
                        self.assertEqual(await state(ctx), next(expected_checks))
            # Every output beat must come, and no more than those.
            for _ in range(4 * max_bits + 100):
                if received == {"words": len(words), "beats": len(beats)}:
                    break
                await ctx.tick()
            for _ in range(50):
                _, _, words_valid, key_valid = await ctx.tick().sample(dut.o_words.valid, dut.o_key.valid)
                self.assertFalse(words_valid or key_valid, "an output beat the model does not have")
            self.assertEqual(await state(ctx), (model.count, model.full, model.bad_flip))

        async def get_words(ctx):
            pause = _staller(seed, "words", stall)
            for index, (data, last) in enumerate(words):
                await pause(ctx)
                word = await stream_get(ctx, dut.o_words)
                self.assertEqual((word.data, word.last), (data, last), f"word {index}")
                received["words"] += 1

        async def get_beats(ctx):
            pause = _staller(seed, "beats", stall)
            for index, expected in enumerate(beats):
                await pause(ctx)
                self.assertEqual(await stream_get(ctx, dut.o_key), expected, f"beat {index}")
                received["beats"] += 1

        _simulate(self, dut, (drive, get_words, get_beats))
        self.assertEqual(received, {"words": len(words), "beats": len(beats)})

    def random_bits(self, rng, count):
        return [int(bit) for bit in rng.integers(0, 2, count)]

    def test_fill_flip_read_hash(self):
        rng = np.random.default_rng(1)
        for width, max_bits, n in [(1, 40, 37), (2, 64, 64), (4, 100, 49), (8, 70, 33), (16, 48, 48)]:
            with self.subTest(width=width, max_bits=max_bits, n=n):
                flips = [int(index) for index in rng.integers(0, n, 6)] + [0, n - 1, max_bits - 1]
                flips += [n] if n < max_bits else []   # refused; a larger index does not fit the port
                ops = [("bits", self.random_bits(rng, n)), ("check",), ("read",), ("hash", 1)]
                ops += [("flip", index) for index in flips] + [("check",), ("read",), ("hash", 3)]
                self.run_ops(ops, max_bits=max_bits, width=width, seed=width)

    def test_lengths_around_word_and_beat_edges(self):
        # Blocks ending inside a beat, on a beat, on a word, one past a word: the padding of the last word and
        # beat, and the pass boundaries, for each length. One core, cleared between blocks.
        rng = np.random.default_rng(2)
        ops = []
        for n in (1, 3, 4, 5, 15, 16, 17, 31, 32, 33):
            ops += [("clear",), ("bits", self.random_bits(rng, n)), ("read",), ("hash", 2), ("check",)]
        self.run_ops(ops, max_bits=40, width=4, seed=2)

    def test_append_after_read_and_flip(self):
        # Appending continues the block after a READ, a HASH and flips, also into a word a flip changed.
        rng = np.random.default_rng(3)
        ops = [("bits", self.random_bits(rng, 10)), ("read",), ("flip", 9), ("flip", 3), ("hash", 1),
               ("bits", self.random_bits(rng, 11)), ("flip", 20), ("flip", 12), ("read",),
               ("bits", self.random_bits(rng, 1)), ("read",), ("hash", 2), ("check",)]
        self.run_ops(ops, max_bits=64, width=2, seed=3)

    def test_full(self):
        rng = np.random.default_rng(4)
        ops = [("bits", self.random_bits(rng, 24)), ("check",), ("refused", 1), ("check",), ("read",),
               ("flip", 23), ("flip", 24), ("hash", 2), ("clear",), ("check",), ("bits", [1, 1, 0]), ("read",),
               ("check",)]
        self.run_ops(ops, max_bits=24, width=8, seed=4)

    def test_empty_and_ignored_commands(self):
        # Nothing to stream: an empty block, zero passes, an unknown op. Flips of an empty block are refused.
        rng = np.random.default_rng(5)
        ops = [("read",), ("hash", 4), ("flip", 0), ("unknown",), ("check",), ("bits", self.random_bits(rng, 5)),
               ("hash", 0), ("unknown",), ("read",), ("clear",), ("read",), ("flip", 2), ("check",)]
        self.run_ops(ops, max_bits=32, width=4, seed=5)

    def test_random_operations(self):
        for width in (1, 4, 16):
            with self.subTest(width=width):
                self.random_operations(seed=6 + width, width=width)

    def random_operations(self, *, seed, width):
        rng = np.random.default_rng(seed)
        max_bits = 90
        ops, count = [], 0
        for _ in range(40):
            kind = str(rng.choice(["bits", "bits", "flip", "flip", "read", "hash", "clear", "check"]))
            match kind:
                case "bits":
                    bits = self.random_bits(rng, int(rng.integers(1, max_bits - count + 1))) \
                        if count < max_bits else []
                    count += len(bits)
                    ops.append(("bits", bits))
                case "flip":
                    ops.append(("flip", int(rng.integers(0, max(count, 1) + 3))))
                case "hash":
                    ops.append(("hash", int(rng.integers(0, 4))))
                case "clear":
                    count = 0
                    ops.append(("clear",))
                case _:
                    ops.append((kind,))
        self.run_ops(ops, max_bits=max_bits, width=width, seed=seed, stall=0.3)

    def test_full_rate(self):
        # With no stream stalled: one bit a cycle in, one flip every four cycles, words and beats one a cycle
        # out (the first seven cycles after the command), across words and passes. Cycle by cycle.
        max_bits, width, n, hash_passes = 80, 4, 77, 3
        rng = np.random.default_rng(7)
        bits = self.random_bits(rng, n)
        flips = [5, 76, 40, 41]
        model = KeyMemoryModel(max_bits=max_bits, width=width)
        for bit in bits:
            model.append(bit)
        for index in flips:
            model.flip(index)
        dut = KeyMemory(max_bits=max_bits, width=width)

        async def bench(ctx):
            taken = []
            ctx.set(dut.i_bits.valid, 1)
            for cycle in range(n + 10):
                if len(taken) == n:
                    break
                ctx.set(dut.i_bits.payload, bits[len(taken)])
                _, _, ready = await ctx.tick().sample(dut.i_bits.ready)
                if ready:
                    taken.append(cycle)
            ctx.set(dut.i_bits.valid, 0)
            self.assertEqual(taken, list(range(n)), "a bit a cycle")

            taken = []
            ctx.set(dut.i_flip.valid, 1)
            for cycle in range(40):
                if len(taken) == len(flips):
                    break
                ctx.set(dut.i_flip.payload, flips[len(taken)])
                _, _, ready = await ctx.tick().sample(dut.i_flip.ready)
                if ready:
                    taken.append(cycle)
            ctx.set(dut.i_flip.valid, 0)
            # The first flip, taken in the cycle after the last bit, waits a cycle for that bit's write.
            self.assertEqual(taken, [0, 5, 9, 13], "a flip every four cycles")

            for op, count, stream, expected in [
                (Op.READ, 1, dut.o_words, [data for data, _ in model.read()]),
                (Op.HASH, hash_passes, dut.o_key, model.hash(hash_passes)),
            ]:
                ctx.set(stream.ready, 1)
                await stream_put(ctx, dut.i_command, {"op": op, "passes": count})
                cycles, payloads = [], []
                for cycle in range(len(expected) + 20):
                    _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
                    if valid:
                        cycles.append(cycle)
                        payloads.append(payload.data if stream is dut.o_words else payload)
                with self.subTest(op=op):
                    self.assertEqual(payloads, expected)
                    self.assertEqual(cycles, list(range(6, 6 + len(expected))))
                ctx.set(stream.ready, 0)

        _simulate(self, dut, [bench])

    def test_priority(self):
        # A command, a flip and a bit offered in the same cycle: the bit and the command are taken, the bit
        # first (the READ sees it), and the flip after the READ.
        rng = np.random.default_rng(8)
        bits = self.random_bits(rng, 21)
        model = KeyMemoryModel(max_bits=32, width=1)
        for bit in bits + [1]:
            model.append(bit)
        first_read = model.read()
        model.flip(21)
        second_read = model.read()
        dut = KeyMemory(max_bits=32, width=1)
        taken = {}

        async def bench(ctx):
            for bit in bits:
                await stream_put(ctx, dut.i_bits, bit)
            for stream, payload in [(dut.i_bits, 1), (dut.i_flip, 21),
                                    (dut.i_command, {"op": Op.READ, "passes": 0})]:
                ctx.set(stream.payload, payload)
                ctx.set(stream.valid, 1)
            for cycle in range(30):
                _, _, *ready = await ctx.tick().sample(dut.i_bits.ready, dut.i_flip.ready, dut.i_command.ready)
                for name, stream, was_ready in zip(("bit", "flip", "command"),
                                                   (dut.i_bits, dut.i_flip, dut.i_command), ready):
                    if was_ready and name not in taken:
                        taken[name] = cycle
                        ctx.set(stream.valid, 0)
            self.assertEqual(taken["bit"], 0)
            self.assertEqual(taken["command"], 0)
            self.assertGreater(taken["flip"], 3)
            await stream_put(ctx, dut.i_command, {"op": Op.READ, "passes": 0})

        async def words(ctx):
            for index, expected in enumerate(first_read + second_read):
                word = await stream_get(ctx, dut.o_words)
                self.assertEqual((word.data, word.last), expected, f"word {index}")

        _simulate(self, dut, [bench, words])

    def test_bit_and_flip_together(self):
        # A bit and a flip taken in the same cycle: the bit first, its write before the flip's read, for flips
        # into the word the bit goes to and into another one.
        rng = np.random.default_rng(9)
        bits = self.random_bits(rng, 21)
        cases = [(3, 1), (17, 0), (23, 1), (24, 0), (27, 1)]   # (flip index, bit taken with it); the last is refused
        model = KeyMemoryModel(max_bits=32, width=1)
        for bit in bits:
            model.append(bit)
        reads = []
        for index, bit in cases:
            model.append(bit)
            model.flip(index)
            reads.append(model.read())
        dut = KeyMemory(max_bits=32, width=1)

        async def bench(ctx):
            for bit in bits:
                await stream_put(ctx, dut.i_bits, bit)
            for index, bit in cases:
                ctx.set(dut.i_bits.payload, bit)
                ctx.set(dut.i_flip.payload, index)
                ctx.set(dut.i_bits.valid, 1)
                ctx.set(dut.i_flip.valid, 1)
                for _ in range(50):             # until the previous READ is done
                    _, _, bit_ready, flip_ready = await ctx.tick().sample(dut.i_bits.ready, dut.i_flip.ready)
                    self.assertEqual(bit_ready, flip_ready)
                    if bit_ready:
                        break
                else:
                    self.fail("the bit and the flip were not taken")
                ctx.set(dut.i_bits.valid, 0)
                ctx.set(dut.i_flip.valid, 0)
                await stream_put(ctx, dut.i_command, {"op": Op.READ, "passes": 0})
            await ctx.tick().repeat(30)
            self.assertEqual(ctx.get(dut.bad_flip), model.bad_flip)
            self.assertEqual(model.bad_flip, 1)

        async def words(ctx):
            for index, expected in enumerate(word for read in reads for word in read):
                word = await stream_get(ctx, dut.o_words)
                self.assertEqual((word.data, word.last), expected, f"word {index}")

        _simulate(self, dut, [bench, words])

    def test_parameters(self):
        with self.assertRaisesRegex(TypeError, r"Block size must be a positive integer, not 0"):
            KeyMemory(max_bits=0)
        with self.assertRaisesRegex(TypeError, r"Width must be a power of two no larger than 16, not 32"):
            KeyMemory(max_bits=64, width=32)
        with self.assertRaisesRegex(TypeError, r"Width must be a power of two no larger than 16, not 3"):
            KeyMemory(max_bits=64, width=3)
        dut = KeyMemory(max_bits=1000, width=8)
        self.assertEqual((dut.max_bits, dut.width), (1000, 8))
        self.assertEqual(dut.o_key.payload.shape().width, 8)
        self.assertEqual(dut.i_flip.payload.shape().width, 10)


class EndToEndTestCase(unittest.TestCase):
    """Detections -> Sifter -> KeyMemory (with corrections) -> ToeplitzHash, against the host's functions."""

    def check(self, *, detections, width, accumulator, m, flips, seed, stall=0.3):
        rng = np.random.default_rng(seed)
        bases, bits, alice_bases, intensities = (rng.integers(0, high, detections, dtype=np.uint8)
                                                 for high in (2, 2, 2, 4))
        sifted = sift(bases, bits, alice_bases, intensities)
        matched = matches(bases, alice_bases, intensities)
        n = sifted.key.size
        flips = [int(index) for index in rng.integers(0, n, flips)]
        corrected = sifted.key.copy()
        for index in flips:
            corrected[index] ^= 1
        toeplitz_seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        self.assertGreater(passes(m, accumulator), 1, "the test must take several passes")

        top = Module()
        top.submodules.sifter = sifter = Sifter()
        top.submodules.keys = keys = KeyMemory(max_bits=n + 7, width=width)
        top.submodules.toeplitz = toeplitz = ToeplitzHash(width=width, accumulator=accumulator, max_n=n + 7)
        wiring.connect(top, sifter.o_key, keys.i_bits)
        wiring.connect(top, keys.o_key, toeplitz.i_key)
        done = []

        async def put_detections(ctx):
            pause = _staller(seed, "detections", stall)
            for detection in zip(bases, bits, alice_bases, intensities):
                await pause(ctx)
                await stream_put(ctx, sifter.i_detections, dict(zip(
                    ("basis", "bit", "alice_basis", "intensity"), (int(value) for value in detection))))

        async def get_matches(ctx):
            pause = _staller(seed, "match", stall)
            for index in range(detections):
                await pause(ctx)
                match = await stream_get(ctx, sifter.o_match)
                self.assertEqual((match.match, match.intensity), (matched[index], intensities[index]))
            done.append("match")

        async def get_tests(ctx):
            pause = _staller(seed, "test", stall)
            for index, bit in enumerate(sifted.test):
                await pause(ctx)
                self.assertEqual((await stream_get(ctx, sifter.o_test)).bit, bit, f"test bit {index}")

        async def control(ctx):
            pause = _staller(seed, "control", stall)
            for _ in range(20 * detections):
                if ctx.get(keys.count) == n and done:
                    break
                await ctx.tick()
            self.assertEqual(ctx.get(keys.count), n)
            for index in flips:
                await pause(ctx)
                await stream_put(ctx, keys.i_flip, index)
            await pause(ctx)
            await stream_put(ctx, keys.i_command, {"op": Op.HASH, "passes": passes(m, accumulator)})
            await pause(ctx)
            await stream_put(ctx, toeplitz.i_block, {"n": n, "m": m})

        async def put_seed(ctx):
            pause = _staller(seed, "seed", stall)
            for beats in seed_beats(toeplitz_seed, n, m, accumulator=accumulator, width=width):
                for beat in beats:
                    await pause(ctx)
                    await stream_put(ctx, toeplitz.i_seed, beat, timeout=50 * detections)

        async def get_hash(ctx):
            pause = _staller(seed, "hash", stall)
            beats = []
            for _ in range(-(-m // width)):
                await pause(ctx)
                beats.append((await stream_get(ctx, toeplitz.o_hash, timeout=50 * detections)).data)
            np.testing.assert_array_equal(beats_to_bits(beats, width, m),
                                          toeplitz_hash(corrected, toeplitz_seed, m))
            done.append("hash")

        _simulate(self, top, (put_detections, get_matches, get_tests, control, put_seed, get_hash))
        self.assertIn("hash", done)

    def test_serial(self):
        self.check(detections=300, width=1, accumulator=16, m=40, flips=5, seed=1)

    def test_wide(self):
        self.check(detections=500, width=4, accumulator=16, m=70, flips=9, seed=2)

    def test_longer_block(self):
        # About 560 key bits in 35 words, hashed in 5 passes of 70 beats.
        self.check(detections=3000, width=8, accumulator=32, m=150, flips=20, seed=3, stall=0.2)
