# amaranth: UnusedElaboratable=no
import unittest

import numpy as np

from qkdlink.gateware.toeplitz import ToeplitzHash
from qkdlink.host.toeplitz import toeplitz_hash
from qkdlink.sim.toeplitz import beats_to_bits, hash_blocks


def random_block(rng, n, m):
    return (rng.integers(0, 2, n, dtype=np.uint8), rng.integers(0, 2, n + m - 1, dtype=np.uint8), m)


class ToeplitzHashTestCase(unittest.TestCase):
    def check(self, blocks, *, width, accumulator, stall_seed=0, max_n=None):
        results = hash_blocks(blocks, width=width, accumulator=accumulator, stall_seed=stall_seed,
                              max_n=max_n)
        self.assertEqual(len(results), len(blocks))
        for index, ((key, seed, m), (bits, lasts)) in enumerate(zip(blocks, results)):
            np.testing.assert_array_equal(bits, toeplitz_hash(key, seed, m), f"block {index}")
            self.assertEqual(lasts, [False] * (len(lasts) - 1) + [True], f"block {index}: last flags")

    def test_shapes(self):
        # Widths and accumulators against key and hash lengths that are and are not multiples of them: one
        # pass and several, the final pass full and partial, n = m, m = 1.
        rng = np.random.default_rng(1)
        cases = [
            # width, accumulator, n, m
            (1, 8, 1, 1),
            (1, 8, 20, 8),
            (1, 8, 21, 17),
            (2, 8, 37, 37),
            (4, 16, 100, 45),
            (4, 16, 64, 64),
            (8, 8, 64, 1),
            (8, 16, 93, 50),
            (16, 32, 77, 33),
        ]
        for width, accumulator, n, m in cases:
            with self.subTest(width=width, accumulator=accumulator, n=n, m=m):
                self.check([random_block(rng, n, m)], width=width, accumulator=accumulator,
                           stall_seed=n * m)

    def test_random_shapes(self):
        rng = np.random.default_rng(2)
        for trial in range(6):
            width = int(rng.choice([1, 2, 4, 8]))
            accumulator = width * int(rng.integers(1, 6))
            n = int(rng.integers(1, 90))
            m = int(rng.integers(1, n + 1))
            with self.subTest(width=width, accumulator=accumulator, n=n, m=m):
                self.check([random_block(rng, n, m)], width=width, accumulator=accumulator, stall_seed=trial)

    def test_blocks_back_to_back(self):
        # A block's length is set at run time; one core hashes blocks of changing shape without a reset.
        rng = np.random.default_rng(3)
        blocks = [random_block(rng, n, m) for n, m in [(40, 20), (17, 17), (63, 5), (80, 33), (1, 1)]]
        self.check(blocks, width=4, accumulator=12, max_n=80)
        self.check(blocks, width=4, accumulator=12, max_n=80, stall_seed=None)

    def test_full_rate_timing(self):
        # At full rate a pass takes A/W preload beats, one cycle to turn round and ceil(n/W) key beats; the
        # previous pass drains meanwhile, so the last hash beat leaves ceil(bits of the last pass / W) cycles
        # after the last pass ends. Driven cycle by cycle and timed by the simulator's clock.
        from amaranth.sim import Simulator
        from qkdlink.sim.toeplitz import block_cycles, key_beats, passes, seed_beats
        rng = np.random.default_rng(4)
        for width, accumulator, n, m in [(4, 8, 64, 32), (2, 8, 30, 21), (1, 4, 9, 9), (8, 16, 100, 40)]:
            key, seed, _ = random_block(rng, n, m)
            dut = ToeplitzHash(width=width, accumulator=accumulator, max_n=n)
            edges = {}
            received = []

            async def bench(ctx):
                queues = {
                    dut.i_block: [{"n": n, "m": m}],
                    dut.i_key: key_beats(key, width) * passes(m, accumulator),
                    dut.i_seed: [beat for beats in seed_beats(seed, n, m, accumulator=accumulator,
                                                              width=width) for beat in beats],
                }
                ctx.set(dut.o_hash.ready, 1)
                for edge in range(10_000):
                    for stream, queue in queues.items():
                        ctx.set(stream.valid, bool(queue))
                        if queue:
                            ctx.set(stream.payload, queue[0])
                    samples = await ctx.tick().sample(dut.i_block.ready, dut.i_key.ready, dut.i_seed.ready,
                                                      dut.o_hash.valid, dut.o_hash.payload)
                    for stream, ready in zip(queues, samples[2:5]):
                        if ready and queues[stream]:
                            if stream is dut.i_block:
                                edges["block"] = edge
                            queues[stream].pop(0)
                    if samples[5]:
                        received.append(samples[6].data)
                        edges["hash"] = edge
                        if len(received) == -(-m // width):
                            return
                self.fail("the hash did not come out")

            sim = Simulator(dut)
            sim.add_clock(1e-8)
            sim.add_testbench(bench)
            sim.run()
            with self.subTest(width=width, accumulator=accumulator, n=n, m=m):
                self.assertEqual(edges["hash"] - edges["block"],
                                 block_cycles(n, m, width=width, accumulator=accumulator))
                np.testing.assert_array_equal(beats_to_bits(received, width, m), toeplitz_hash(key, seed, m))

    def test_zero_length_block_is_ignored(self):
        rng = np.random.default_rng(5)
        key, seed, m = random_block(rng, 24, 9)
        from amaranth.sim import Simulator
        from qkdlink.gateware.stream import stream_get, stream_put
        from qkdlink.sim.toeplitz import key_beats, seed_beats
        dut = ToeplitzHash(width=2, accumulator=4, max_n=32)
        received = []

        async def feed(ctx):
            await stream_put(ctx, dut.i_block, {"n": 0, "m": 3})
            await stream_put(ctx, dut.i_block, {"n": 5, "m": 0})
            await stream_put(ctx, dut.i_block, {"n": 24, "m": m})
            for beats in seed_beats(seed, 24, m, accumulator=4, width=2):
                for beat in beats:
                    await stream_put(ctx, dut.i_seed, beat)
        async def keys(ctx):
            for _ in range(3):
                for beat in key_beats(key, 2):
                    await stream_put(ctx, dut.i_key, beat)
        async def hashes(ctx):
            for _ in range(5):
                received.append((await stream_get(ctx, dut.o_hash)).data)

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        for bench in (feed, keys, hashes):
            sim.add_testbench(bench)
        sim.run()
        np.testing.assert_array_equal(beats_to_bits(received, 2, m), toeplitz_hash(key, seed, m))

    def test_parameters(self):
        with self.assertRaisesRegex(TypeError, r"Width must be a positive power of two, not 3"):
            ToeplitzHash(width=3)
        with self.assertRaisesRegex(TypeError, r"multiple of the width 4, not 10"):
            ToeplitzHash(width=4, accumulator=10)
        with self.assertRaisesRegex(TypeError, r"Maximum key length must be a positive integer, not 0"):
            ToeplitzHash(max_n=0)
        dut = ToeplitzHash(width=8, accumulator=64, max_n=1000)
        self.assertEqual((dut.width, dut.accumulator, dut.max_n), (8, 64, 1000))
        self.assertEqual(dut.i_key.payload.shape().width, 8)
