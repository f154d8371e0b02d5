# amaranth: UnusedElaboratable=no
import itertools
import random
import unittest

import numpy as np

from qkdlink.gateware.sifter import Sifter
from qkdlink.gateware.stream import stream_get, stream_put
from qkdlink.host.sifting import NOT_SENT, X, Z, matches, sift
from tests.gateware.test_keymemory import _simulate


_FIELDS = ("basis", "bit", "alice_basis", "intensity")


class SifterTestCase(unittest.TestCase):
    def run_sifter(self, columns, *, seed, stall):
        """Sift ``columns`` (bases, bits, Alice's bases, intensities) with every stream stalled at random; check
        the three outputs against the host model, beat for beat, and that nothing more comes out."""
        bases, bits, alice_bases, intensities = (np.asarray(column, np.uint8) for column in columns)
        sifted = sift(bases, bits, alice_bases, intensities)
        expected = {
            "match": list(zip(matches(bases, alice_bases, intensities), intensities)),
            "key":   list(sifted.key),
            "test":  list(zip(sifted.test, sifted.test_intensity)),
        }
        dut = Sifter()
        received = {name: 0 for name in expected}

        def staller(salt):
            rng = random.Random(f"{seed}/{salt}")
            async def pause(ctx):
                while rng.random() < stall:
                    await ctx.tick()
            return pause

        async def put(ctx):
            pause = staller("detections")
            for detection in zip(bases, bits, alice_bases, intensities):
                await pause(ctx)
                await stream_put(ctx, dut.i_detections, dict(zip(_FIELDS, (int(value) for value in detection))))
            for _ in range(len(bases) * 10):
                if received == {name: len(beats) for name, beats in expected.items()}:
                    break
                await ctx.tick()
            for _ in range(20):
                _, _, *valid = await ctx.tick().sample(dut.o_match.valid, dut.o_key.valid, dut.o_test.valid)
                self.assertEqual(valid, [0, 0, 0], "a beat the model does not have")

        def getter(name, stream, unpack):
            async def get(ctx):
                pause = staller(name)
                for index, beat in enumerate(expected[name]):
                    await pause(ctx)
                    self.assertEqual(unpack(await stream_get(ctx, stream)), beat, f"{name} beat {index}")
                    received[name] += 1
            return get

        _simulate(self, dut, [
            put,
            getter("match", dut.o_match, lambda p: (p.match, p.intensity)),
            getter("key",   dut.o_key,   lambda p: p),
            getter("test",  dut.o_test,  lambda p: (p.bit, p.intensity)),
        ])
        self.assertEqual(received, {name: len(beats) for name, beats in expected.items()})
        return expected

    def test_every_case(self):
        # Each of the 32 combinations, several times in a shuffled order.
        cases = list(itertools.product((Z, X), (0, 1), (Z, X), (0, 1, 2, NOT_SENT))) * 4
        random.Random(1).shuffle(cases)
        expected = self.run_sifter(list(zip(*cases)), seed=1, stall=0.4)
        self.assertEqual(len(expected["key"]), 24)
        self.assertEqual(len(expected["test"]), 24)

    def test_random(self):
        rng = np.random.default_rng(2)
        for stall in (0.0, 0.3, 0.7):
            with self.subTest(stall=stall):
                columns = [rng.integers(0, high, 400, dtype=np.uint8) for high in (2, 2, 2, 4)]
                self.run_sifter(columns, seed=int(stall * 10), stall=stall)

    def test_full_rate(self):
        # One detection a cycle, each output two cycles behind its detection, while every output is ready.
        rng = np.random.default_rng(3)
        columns = [rng.integers(0, high, 100, dtype=np.uint8) for high in (2, 2, 2, 4)]
        detections = [dict(zip(_FIELDS, (int(value) for value in row))) for row in zip(*columns)]
        sifted = sift(*columns)
        dut = Sifter()

        async def bench(ctx):
            for stream in (dut.o_match, dut.o_key, dut.o_test):
                ctx.set(stream.ready, 1)
            ctx.set(dut.i_detections.valid, 1)
            keys, tests, match_cycles = [], [], []
            for cycle, detection in enumerate(detections + [None, None]):
                if detection is not None:
                    ctx.set(dut.i_detections.payload, detection)
                else:
                    ctx.set(dut.i_detections.valid, 0)
                _, _, ready, match, key, key_bit, test, test_payload = await ctx.tick().sample(
                    dut.i_detections.ready, dut.o_match.valid, dut.o_key.valid, dut.o_key.payload,
                    dut.o_test.valid, dut.o_test.payload)
                if detection is not None:
                    self.assertTrue(ready, f"detection {cycle} stalled")
                if match:
                    match_cycles.append(cycle)
                if key:
                    keys.append(key_bit)
                if test:
                    tests.append(test_payload.bit)
            self.assertEqual(match_cycles, list(range(2, len(detections) + 2)))
            self.assertEqual(keys, list(sifted.key))
            self.assertEqual(tests, list(sifted.test))

        _simulate(self, dut, [bench])

    def test_stalled_output(self):
        # With o_key stalled: a Z-basis match waits in o_key, the X-basis match after it still comes out on
        # o_test, the next Z-basis match waits as o_key's second beat, the two detections after that are taken
        # but wait in the core (no beat of them comes out), and the one after them is refused. Once o_key takes
        # its beats, the rest follow in order.
        dut = Sifter()
        detections = [{"basis": Z, "bit": 1, "alice_basis": Z, "intensity": 0},
                      {"basis": X, "bit": 1, "alice_basis": X, "intensity": 1},
                      {"basis": Z, "bit": 0, "alice_basis": Z, "intensity": 2},
                      {"basis": X, "bit": 1, "alice_basis": Z, "intensity": 0},
                      {"basis": X, "bit": 0, "alice_basis": X, "intensity": NOT_SENT},
                      {"basis": X, "bit": 0, "alice_basis": X, "intensity": 2}]
        seen = {"match": [], "test": []}

        async def bench(ctx):
            for detection in detections[:5]:
                await stream_put(ctx, dut.i_detections, detection, timeout=1)
            ctx.set(dut.i_detections.payload, detections[5])
            ctx.set(dut.i_detections.valid, 1)
            for _ in range(10):
                _, _, ready = await ctx.tick().sample(dut.i_detections.ready)
                self.assertEqual(ready, 0)
            self.assertEqual(seen, {"match": [(1, 0), (1, 1), (1, 2)], "test": [(1, 1)]})
            self.assertEqual(await stream_get(ctx, dut.o_key, timeout=1), 1)
            await stream_put(ctx, dut.i_detections, detections[5], timeout=2)
            self.assertEqual(await stream_get(ctx, dut.o_key, timeout=1), 0)
            await ctx.tick().repeat(4)
            self.assertEqual(seen, {"match": [(1, 0), (1, 1), (1, 2), (0, 0), (0, NOT_SENT), (1, 2)],
                                    "test": [(1, 1), (0, 2)]})

        def collect(name, stream, unpack):
            async def collector(ctx):
                ctx.set(stream.ready, 1)
                for _ in range(40):
                    _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
                    if valid:
                        seen[name].append(unpack(payload))
            return collector

        _simulate(self, dut, [bench, collect("match", dut.o_match, lambda p: (p.match, p.intensity)),
                              collect("test", dut.o_test, lambda p: (p.bit, p.intensity))])
