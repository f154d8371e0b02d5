# amaranth: UnusedElaboratable=no
import os
import random
import unittest
from contextlib import nullcontext

import numpy as np
from amaranth.sim import Simulator

from qkdlink.gateware.slots import SlotAssigner, Squasher
from qkdlink.gateware.stream import stream_get, stream_put
from qkdlink.host.sifting import squash
from qkdlink.sim.optics import Fibre, OpticalBench, Receiver, Source, slot_events
from qkdlink.sim.slots import assign, bench_events, run_gateware
from tests.sim.test_slots import random_events


class SlotAssignerTestCase(unittest.TestCase):
    def check(self, events, **settings):
        """Run the gateware and the model; they must agree bit for bit. Returns the model's result."""
        expected = assign(events, **settings)
        self.assertEqual(run_gateware(events, **settings), expected)
        return expected

    def bench_run(self, *, phases, clock_mhz, slot_rate_hz, frame_bits, frames, sync_shifts_ns, seed):
        """A noisy bench run (jitter, dark counts, afterpulses) and its sync train: the events and the period.

        A sync comes a few bins ahead of each frame after the first, shifted by ``sync_shifts_ns[frame]`` (early
        when negative); a shift of None leaves the frame's sync out. Frame 0 has no sync: its clicks come before
        the first one.
        """
        slots = 1 << frame_bits
        clock_ns = 1e3 / clock_mhz
        bin_ns = clock_ns / phases
        bench = OpticalBench(source=Source(intensities=(2.0, 0.8, 0.3)), fibre=Fibre(length_km=5),
                             receiver=Receiver(efficiency=0.6, dark_count=0.03, afterpulse=0.1, dead_time=1,
                                               jitter_ns=0.15 * bin_ns),
                             slot_rate_hz=slot_rate_hz, frame_slots=slots)
        run = slot_events(bench, 0, frames * slots, rng=np.random.default_rng(seed))
        lead = 3 * bin_ns
        sync_ns = [frame * slots * run.slot_ns - lead + shift
                   for frame, shift in enumerate(sync_shifts_ns) if frame and shift is not None]
        events = bench_events(run, phases=phases, clock_ns=clock_ns, sync_ns=sync_ns, pulse_ns=1.2 * bin_ns)
        period = round(run.slot_ns / bin_ns * (1 << 24))
        return events, period

    def test_bench_drifting_clock_ecp5(self):
        # 10 ns slots on a 100.003 MHz clock, 4 bins a cycle: 4.00012 bins a slot. Syncs on time, a bin early,
        # 1.3 bins late, one missing (the frame runs on beyond its last slot) and one far too early (the frame
        # before is cut short). The gate cuts through the photons' arrival, so some are gated.
        events, period = self.bench_run(phases=4, clock_mhz=100.003, slot_rate_hz=100e6, frame_bits=5, frames=9,
                                        sync_shifts_ns=[0, 0, -2.5, 3.2, 0, None, 0, -25, 0.4], seed=1)
        for gate_start, gate_width in ((1, 2), (2, 1), (0, 4)):
            with self.subTest(gate_start=gate_start, gate_width=gate_width):
                result = self.check(events, phases=4, frame_bits=5, period=period, delay=3,
                                    gate_start=gate_start, gate_width=gate_width)
                self.assertGreater(len(result.detections), 10)
                self.assertGreater(result.outside, 20)
                self.assertEqual((result.frames, result.overrun), (7, 0))
                if gate_width < 4:
                    self.assertGreater(result.gated, 5)

    def test_bench_ice40(self):
        # 25 ns slots on a 48.001 MHz clock, 2 bins a cycle: 2.40005 bins a slot.
        events, period = self.bench_run(phases=2, clock_mhz=48.001, slot_rate_hz=40e6, frame_bits=5, frames=5,
                                        sync_shifts_ns=[0, 0, 5, -8, 0], seed=2)
        result = self.check(events, phases=2, frame_bits=5, period=period, delay=3, gate_start=1, gate_width=1)
        self.assertGreater(len(result.detections), 20)
        self.assertGreater(result.gated, 5)

    def test_period_of_one_cycle(self):
        # Slots exactly one cycle long: the tracker's slot ends in every cycle, and a detection can come out in
        # every cycle. Bench syncs land on every bin of a cycle over the frames (the sync shifts by a bin each).
        events, _ = self.bench_run(phases=4, clock_mhz=100, slot_rate_hz=100e6, frame_bits=3, frames=10,
                                   sync_shifts_ns=[0] + [2.5 * k + 0.5 for k in range(9)], seed=3)
        result = self.check(events, phases=4, frame_bits=3, period=4 << 24, delay=3, gate_start=0, gate_width=4)
        self.assertGreater(len(result.detections), 30)
        # Every detector in every cycle: one detection per cycle, sustained.
        events = [(cycle, 0b1111 | (cycle % 16 == 5) << 4, [cycle % 4, 3, (cycle // 3) % 4, 0, cycle // 16 % 4])
                  for cycle in range(200)]
        for delay in (0, 1, 4, 7):
            with self.subTest(delay=delay):
                result = self.check(events, phases=4, frame_bits=4, fraction_bits=24, period=4 << 24,
                                    delay=delay, gate_start=0, gate_width=4)
                self.assertGreater(len(result.detections), 150)

    def test_random_events(self):
        # Random edges and syncs much more often than a frame: overruns, frames cut short, switch cycles in every
        # position, frame numbers that wrap; small and large fraction widths, one to eight bins a cycle.
        rng = random.Random(4)
        cases = [
            # phases, fraction_bits, period, delay, frame_bits, p_sync
            (4, 24, (4 << 24) + 1, 0, 3, 0.1),
            (4, 3, (4 << 3) * 2 + 5, 5, 2, 0.05),
            (2, 2, 9, 13, 4, 0.2),
            (8, 4, (8 << 4) * 5 + 3, 1, 3, 0.02),
            (1, 5, 51, 2, 2, 0.1),
            (4, 0, 4, 40, 2, 0.04),
            (2, 24, 3 << 24, 200, 6, 0.01),
        ]
        for index, (phases, fraction_bits, period, delay, frame_bits, p_sync) in enumerate(cases):
            events = random_events(rng, 500, phases=phases, p_sync=p_sync, p_hit=0.4)
            settings = dict(phases=phases, fraction_bits=fraction_bits, period=period, delay=delay,
                            frame_bits=frame_bits, gate_start=index % 3, gate_width=1 + index % 2,
                            frame_width=2 if index % 2 else 32)
            with self.subTest(**settings):
                result = self.check(events, **settings)
                self.assertTrue(result.detections and result.gated and result.outside)

    def test_long_delay(self):
        # A delay of more than 2**17 cycles: the wait for a frame start is counted down in two 16-bit halves, and
        # the high half counts more than once. The second sync overruns the first one's frame, which would have
        # started long after it.
        rng = random.Random(7)
        delay = (1 << 17) + 300
        events = [(3, 1 << 4, [0] * 5), (40, 1 << 4, [0] * 5)]
        for cycle in range(40 + delay - 20, 40 + delay + 60):
            hits = sum(1 << c for c in range(4) if rng.random() < 0.3)
            if hits:
                events.append((cycle, hits, [0] * 5))
        result = self.check(events, phases=1, frame_bits=4, fraction_bits=4, period=(3 << 4) + 5, delay=delay,
                            gate_start=0, gate_width=2)
        self.assertEqual((result.frames, result.overrun), (2, 1))
        self.assertGreater(len(result.detections), 10)
        self.assertTrue(result.outside and result.gated)

    def test_overrun(self):
        # A delay longer than the sync interval: every frame but the last is overrun by the next sync.
        rng = random.Random(5)
        events = random_events(rng, 400, phases=4, p_sync=0.05, p_hit=0.3)
        result = self.check(events, phases=4, frame_bits=6, fraction_bits=8, period=(4 << 8) + 77, delay=300,
                            gate_start=0, gate_width=8)
        self.assertGreater(result.overrun, 10)
        self.assertEqual(result.overrun, result.frames - 1)

    def test_parameters(self):
        with self.assertRaisesRegex(TypeError, r"Phases must be a positive power of two, not 3"):
            SlotAssigner(phases=3, frame_bits=4)
        with self.assertRaisesRegex(TypeError, r"Frame bits must be a positive integer, not 0"):
            SlotAssigner(phases=4, frame_bits=0)
        with self.assertRaisesRegex(TypeError, r"Fraction bits must be a non-negative integer, not -1"):
            SlotAssigner(phases=4, frame_bits=4, fraction_bits=-1)
        dut = SlotAssigner(phases=4, frame_bits=18, fraction_bits=20, frame_width=24)
        self.assertEqual((dut.detectors, dut.phases, dut.frame_bits, dut.fraction_bits, dut.frame_width),
                         (4, 4, 18, 20, 24))
        self.assertEqual(len(dut.period), 36)
        self.assertEqual(dut.o_detections.p.shape().size, 24 + 18 + 4)


class SquasherTestCase(unittest.TestCase):
    def run_case(self, detections, words, *, seed, stall_probability=0.4):
        """Both inputs and the output stall at random; returns the output beats as (frame, slot, basis, bit)."""
        dut = Squasher(frame_width=8, frame_bits=5)
        received = []

        def staller(salt):
            rng = random.Random(f"{seed}/{salt}")
            async def stall(ctx):
                while rng.random() < stall_probability:
                    await ctx.tick()
            return stall

        async def put_detections(ctx):
            stall = staller("detections")
            for frame, slot, pattern in detections:
                await stall(ctx)
                await stream_put(ctx, dut.i_detections, {"frame": frame, "slot": slot, "pattern": pattern})

        async def put_words(ctx):
            stall = staller("random")
            for word in words:
                await stall(ctx)
                await stream_put(ctx, dut.i_random, int(word))

        async def get_output(ctx):
            stall = staller("output")
            for _ in detections:
                await stall(ctx)
                beat = await stream_get(ctx, dut.o_detections, timeout=100)
                received.append((beat.frame, beat.slot, beat.basis, beat.bit))
            # Nothing more may come.
            ctx.set(dut.o_detections.ready, 1)
            for _ in range(10):
                _, _, valid = await ctx.tick().sample(dut.o_detections.valid)
                self.assertFalse(valid, "a beat more than the detections")

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        for bench in (put_detections, put_words, get_output):
            sim.add_testbench(bench)
        with sim.write_vcd("squasher.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
            sim.run()
        return received

    def test_matches_model(self):
        # Every pattern with every random word, then random detections; the model is host.sifting.squash.
        rng = np.random.default_rng(6)
        patterns = [pattern for pattern in range(1, 16) for _ in range(4)]
        random_bits = [[word & 1, word >> 1] for _ in range(15) for word in range(4)]
        patterns += rng.integers(1, 16, 60).tolist()
        random_bits += rng.integers(0, 2, (60, 2)).tolist()
        detections = [(int(rng.integers(256)), int(rng.integers(32)), pattern) for pattern in patterns]
        words = [bits[0] | bits[1] << 1 for bits in random_bits]
        basis, bit = squash(np.array(patterns, dtype=np.uint8), np.array(random_bits, dtype=np.uint8))
        expected = [(frame, slot, int(b), int(v)) for (frame, slot, _), b, v in zip(detections, basis, bit)]
        for seed, stall_probability in ((1, 0.0), (2, 0.5)):
            with self.subTest(seed=seed, stall_probability=stall_probability):
                self.assertEqual(self.run_case(detections, words, seed=seed, stall_probability=stall_probability),
                                 expected)

    def test_parameters(self):
        with self.assertRaisesRegex(TypeError, r"four detectors Z0, Z1, X0, X1, not 2"):
            Squasher(frame_width=8, frame_bits=4, detectors=2)
        with self.assertRaisesRegex(TypeError, r"Frame width must be a positive integer, not 0"):
            Squasher(frame_width=0, frame_bits=4)
