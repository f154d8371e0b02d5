# amaranth: UnusedElaboratable=no
"""The QRNG input against its model (sim/qrng.py), driven pin by pin, and the health tests' cutoffs against
SP 800-90B."""

import math
import random
import unittest

from amaranth import Shape, Value

from qkdlink.gateware.qrng import QRNGInput, proportion_cutoff, repetition_cutoff
from qkdlink.gateware.sequencer import RandomWord
from qkdlink.sim.qrng import QRNGModel
from tests.gateware.test_keymemory import _simulate


class CutoffTestCase(unittest.TestCase):
    def test_repetition_count(self):
        # SP 800-90B 4.4.1: C = 1 + ceil(-log2(alpha) / H), alpha = 2^-20.
        self.assertEqual(repetition_cutoff(), 21)
        self.assertEqual(repetition_cutoff(0.5), 41)
        self.assertEqual(repetition_cutoff(0.3), 68)

    def test_adaptive_proportion_table(self):
        # SP 800-90B 4.4.2, table 2: binary samples (W = 1024), H = 1.
        self.assertEqual(proportion_cutoff(), 589)

    def test_adaptive_proportion_tail(self):
        # The cutoff is the smallest count whose binomial upper tail is at most alpha, here in floating point.
        for entropy in (1, 0.8, 0.5, 0.2):
            p = 2 ** -entropy
            def tail(k):
                return sum(math.exp(math.lgamma(1025) - math.lgamma(j + 1) - math.lgamma(1025 - j)
                                    + j * math.log(p) + (1024 - j) * math.log1p(-p)) for j in range(k, 1025))
            cutoff = proportion_cutoff(entropy)
            with self.subTest(entropy=entropy):
                self.assertLessEqual(tail(cutoff), 2 ** -20 * (1 + 1e-9))
                if cutoff <= 1024:
                    self.assertGreater(tail(cutoff - 1), 2 ** -20 * (1 - 1e-9))

    def test_bad_entropy(self):
        for entropy in (0, 1.5, -1, "1"):
            with self.assertRaisesRegex(ValueError, r"Min-entropy per bit must be in \(0, 1\], not "):
                repetition_cutoff(entropy)
        with self.assertRaisesRegex(ValueError, r"Min-entropy per bit must be in \(0, 1\], not 2"):
            QRNGInput(8, entropy=2)


class QRNGInputTestCase(unittest.TestCase):
    def run_input(self, shape, bits, *, seed=0, stall=0.0, max_stall=math.inf, idle=50):
        """Clock ``bits`` into the pins at random rates (the QRNG's clock high and low for 2 to 4 cycles each, data
        changing at its falling edge) and take the words, stalling in a cycle with probability ``stall`` but never
        more than ``max_stall`` cycles in a row. Returns the words, and ``failed``, ``failures`` and ``bits`` at
        the end."""
        dut = QRNGInput(shape)
        words = []
        final = {}

        async def drive(ctx):
            rng = random.Random(f"{seed}/pins")
            for bit in bits:
                ctx.set(dut.data, bit)
                await ctx.tick().repeat(rng.randrange(2, 5))
                ctx.set(dut.clock, 1)
                await ctx.tick().repeat(rng.randrange(2, 5))
                ctx.set(dut.clock, 0)
            await ctx.tick().repeat(idle)
            final.update(failed=ctx.get(dut.failed), failures=ctx.get(dut.failures), bits=ctx.get(dut.bits))

        async def take(ctx):
            rng = random.Random(f"{seed}/words")
            stalled = 0
            while not final:
                ready = not (stalled < max_stall and rng.random() < stall)
                stalled = 0 if ready else stalled + 1
                ctx.set(dut.o.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, Value.cast(dut.o.payload))
                if valid and ready:
                    words.append(payload)

        _simulate(self, dut, [drive, take])
        self.assertEqual(final["bits"], len(bits))
        return words, final

    def check(self, shape, bits, **kwargs):
        """Words and failures of ``bits`` as the model has them, with stalls too short to drop a word."""
        width = Shape.cast(shape).width
        expected = QRNGModel(width).run(bits)
        # A word takes at least 4 cycles a bit; the consumer never stalls that long.
        words, final = self.run_input(shape, bits, stall=0.5, max_stall=4 * width - 2, **kwargs)
        self.assertEqual(words, expected.words)
        self.assertEqual(final["failed"], expected.failed)
        self.assertEqual(final["failures"], len(expected.failures))
        return expected

    def test_fair_bits(self):
        rng = random.Random(1)
        bits = [rng.getrandbits(1) for _ in range(3000)]
        for shape in (2, RandomWord):
            with self.subTest(shape=shape):
                expected = self.check(shape, bits)
                self.assertFalse(expected.failed)
                self.assertEqual(len(expected.words), len(bits) // Shape.cast(shape).width)

    def test_runs_at_the_cutoff(self):
        # SP 800-90B: 21 equal bits fail the repetition count test, 20 do not.
        rng = random.Random(2)
        head = [rng.getrandbits(1) for _ in range(100)]
        passing = head + [1 - head[-1]] * 20 + [head[-1]] + [rng.getrandbits(1) for _ in range(100)]
        expected = self.check(2, passing)
        self.assertEqual(expected.failures, [])
        failing = head + [1 - head[-1]] * 21 + [rng.getrandbits(1) for _ in range(100)]
        expected = self.check(2, failing)
        self.assertEqual(expected.failures, [len(head) + 20])

    def test_stuck(self):
        rng = random.Random(3)
        good = [rng.getrandbits(1) for _ in range(301)]
        for stuck in (0, 1):
            with self.subTest(stuck=stuck):
                bits = good + [stuck] * 1500
                expected = self.check(8, bits)
                # The run fails its test once; the window that follows the run's start fails its own.
                self.assertGreaterEqual(len(expected.failures), 2)
                self.assertLess(len(expected.words), len(bits) // 8 - 150)

    def test_biased(self):
        # 70 % ones: a window that starts with a one counts about 717 of them (cutoff 589); runs of 21 are rare.
        rng = random.Random(4)
        bits = [int(rng.random() < 0.7) for _ in range(4096)]
        expected = self.check(RandomWord, bits)
        self.assertTrue(expected.failed)
        self.assertGreater(len(expected.words), 0)

    def test_word_held_until_taken(self):
        # A consumer that takes nothing while 5 words come: the first is held, the others dropped.
        rng = random.Random(6)
        bits = [rng.getrandbits(1) for _ in range(40)]
        dut = QRNGInput(8)
        expected = QRNGModel(8).run(bits).words
        taken = []

        async def drive(ctx):
            for bit in bits:
                ctx.set(dut.data, bit)
                await ctx.tick().repeat(2)
                ctx.set(dut.clock, 1)
                await ctx.tick().repeat(2)
                ctx.set(dut.clock, 0)
            await ctx.tick().repeat(10)
            ctx.set(dut.o.ready, 1)
            for _ in range(10):
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                if valid:
                    taken.append(payload)

        _simulate(self, dut, [drive])
        self.assertEqual(taken, expected[:1])
