# amaranth: UnusedElaboratable=no
"""The time-tagger and the event queue in the Amaranth simulator, against the model of ``qkdlink.sim.timetagger``."""

import random
import unittest

import numpy as np
from amaranth import *
from amaranth.lib import wiring
from amaranth.sim import Simulator

from qkdlink.gateware.queue import EventQueue
from qkdlink.gateware.timetagger import TimeTagger, _wide_counter, event_layout
from qkdlink.sim.optics import Fibre, OpticalBench, Receiver, Source, slot_events
from qkdlink.sim.timetagger import bench_samples, run_gateware, sample, tag


# A loud bench: bright pulses, many dark counts and afterpulses, no dead time in the detectors themselves, so that
# the tagger sees double clicks, several edges a cycle, edges within its dead time, and edges on every bin.
LOUD = OpticalBench(source=Source(intensities=(3.0, 1.0, 0.2)), fibre=Fibre(length_km=0.0),
                    receiver=Receiver(efficiency=0.5, dark_count=0.03, dead_time=0, afterpulse=0.3,
                                      afterpulse_delay=2.0, jitter_ns=1.5),
                    slot_rate_hz=100e6, frame_slots=64)


def loud_samples(*, phases, clock_ns, pulse_ns, slots, seed, slot_rate_hz=100e6, bursts=20):
    """Sample words for ``slots`` slots of :data:`LOUD` and a sync every frame, plus ``bursts`` bursts of two to
    four pulses a few ns apart on random channels. Cycle 0 is not aligned with a slot."""
    rng = np.random.default_rng(seed)
    bench = OpticalBench(source=LOUD.source, fibre=LOUD.fibre, receiver=LOUD.receiver,
                         slot_rate_hz=slot_rate_hz, frame_slots=LOUD.frame_slots)
    events = slot_events(bench, 5, slots, rng=rng)
    stimulus = bench_samples(events, phases=phases, clock_ns=clock_ns, pulse_ns=pulse_ns,
                             start_ns=5 * bench.slot_ns - 3.7, sync_offset_ns=1.1)
    words = stimulus.samples
    cycles = words.size
    for _ in range(bursts):
        start = rng.random() * (cycles - 2) * clock_ns
        times = start + np.cumsum(rng.uniform(1.2, 2.5, rng.integers(2, 5)) * pulse_ns)
        words = words | sample(times, int(rng.integers(5)), channels=5, phases=phases, clock_ns=clock_ns,
                               pulse_ns=pulse_ns, cycles=cycles)
    return words


def first_difference(actual, expected):
    """None if the sequences are equal, else a short description of where they first differ (unittest's list
    diff takes minutes on thousands of events)."""
    for index, (a, b) in enumerate(zip(actual, expected)):
        if a != b:
            return f"item {index}: {a!r}, expected {b!r}"
    if len(actual) != len(expected):
        return f"{len(actual)} items, expected {len(expected)}"
    return None


class TimeTaggerTestCase(unittest.TestCase):
    def check(self, samples, *, channels, phases, dead_cycles, time_width=64):
        """Run the gateware on ``samples``; compare events, their latency and the counters with the model."""
        expected = tag(samples, channels=channels, phases=phases, dead_cycles=dead_cycles)
        tags, arrivals, counters = run_gateware(samples, channels=channels, phases=phases, dead_cycles=dead_cycles,
                                                time_width=time_width)
        cycle_mask = (1 << (time_width - (phases - 1).bit_length())) - 1
        model_events = [(cycle & cycle_mask, hits, fine) for cycle, hits, fine in expected.events()]
        self.assertIsNone(first_difference(tags.events(), model_events), "events")
        self.assertIsNone(first_difference(arrivals.tolist(), (expected.cycle + TimeTagger.LATENCY).tolist()),
                          "arrival cycles")
        self.assertEqual((tags.edges, tags.suppressed), (expected.edges, expected.suppressed))
        # The counters at a few moments hold the edges of exactly the samples COUNTER_LATENCY cycles before.
        for now in np.linspace(0, len(samples) - 1, 7).astype(int).tolist():
            prefix = tag(samples[:max(0, now - TimeTagger.COUNTER_LATENCY + 1)], channels=channels,
                         phases=phases, dead_cycles=dead_cycles)
            self.assertEqual((counters["edges"][now], counters["suppressed"][now]),
                             (prefix.edges, prefix.suppressed), f"counters in cycle {now}")
        return expected

    def test_bench(self):
        # (phases, clock, pulse width, slot rate, dead time): the iCE40 at 48 MHz and the ECP5 at 100 MHz, slots
        # of 10 ns (two a cycle on the iCE40), also on a clock a little off the slot rate, pulses shorter than a
        # bin (some missed), about one and longer than a cycle.
        configs = [
            (2, 1000 / 48, 12.0, 100e6, 0),
            (2, 1000 / 48, 8.0, 100e6, 3),
            (4, 10.0, 3.0, 100.003e6, 0),
            (4, 10.0, 2.0, 100e6, 2),
            (4, 10.0, 14.0, 100e6, 1),
            (4, 10.0, 3.0, 100e6, 40),
        ]
        for index, (phases, clock_ns, pulse_ns, slot_rate_hz, dead_cycles) in enumerate(configs):
            with self.subTest(phases=phases, pulse_ns=pulse_ns, dead_cycles=dead_cycles):
                samples = loud_samples(phases=phases, clock_ns=clock_ns, pulse_ns=pulse_ns, slots=3000,
                                       seed=index, slot_rate_hz=slot_rate_hz)
                expected = self.check(samples, channels=5, phases=phases, dead_cycles=dead_cycles)
                # The stimulus reaches what the test is about: every bin, double clicks, suppression.
                self.assertGreater(len(expected), 250)
                for bin_ in range(phases):
                    self.assertTrue((expected.fine == bin_)[expected.hits != 0].any(), f"no edge at bin {bin_}")
                self.assertTrue(any(bin(hits).count("1") > 1 for hits in expected.hits.tolist()))
                if phases > 2 or dead_cycles:
                    self.assertGreater(expected.suppressed, 20)

    def test_high_at_reset_and_every_pattern(self):
        # Inputs high from the first cycle make edges at bin 0 of cycle 0; then every sample pattern of a channel
        # follows every other (channel 1 walks the pairs in the other order).
        for phases in (2, 4):
            with self.subTest(phases=phases):
                channels = 3
                patterns = 1 << phases
                words = [(1 << channels * phases) - 1]
                for a in range(patterns):
                    for b in range(patterns):
                        words += [a | b << phases | a << 2 * phases, b | a << phases | b << 2 * phases]
                samples = np.array(words, dtype=np.uint64)
                for dead_cycles in (0, 1):
                    expected = self.check(samples, channels=channels, phases=phases, dead_cycles=dead_cycles)
                    self.assertEqual(expected.events()[0], (0, 0b111, (0, 0, 0)))

    def test_random_words_other_phases(self):
        # One sample a cycle and eight (up to four edges a cycle per channel), from random words.
        rng = np.random.default_rng(11)
        for phases, channels in [(1, 3), (8, 5)]:
            bits = channels * phases
            samples = rng.integers(0, 1 << bits, 400, dtype=np.uint64) & rng.integers(0, 1 << bits, 400,
                                                                                       dtype=np.uint64)
            for dead_cycles in (0, 2):
                with self.subTest(phases=phases, dead_cycles=dead_cycles):
                    self.check(samples, channels=channels, phases=phases, dead_cycles=dead_cycles)

    def test_cycle_wraps(self):
        # A narrow timestamp: the cycle number wraps after 2**6 cycles.
        samples = loud_samples(phases=4, clock_ns=10.0, pulse_ns=3.0, slots=300, seed=7)
        self.check(samples, channels=5, phases=4, dead_cycles=0, time_width=8)

    def test_wide_counter(self):
        # The segmented counter against plain arithmetic, through every carry between segments.
        for width, segment, init in [(10, 3, 1000), (9, 4, 0), (7, 2, 125), (8, 8, 253), (12, 5, 4000)]:
            with self.subTest(width=width, segment=segment, init=init):
                m = Module()
                value = Signal(width)
                m.d.comb += value.eq(_wide_counter(m, width, init=init, segment=segment))
                seen = []

                async def bench(ctx):
                    for _ in range(3 << width):
                        _, _, now = await ctx.tick().sample(value)
                        seen.append(now)

                sim = Simulator(m)
                sim.add_clock(1e-8)
                sim.add_testbench(bench)
                sim.run()
                self.assertIsNone(first_difference(seen, [(init + t) % (1 << width) for t in range(3 << width)]))

    def test_parameters(self):
        with self.assertRaisesRegex(TypeError, r"Phases must be a positive power of two, not 3"):
            TimeTagger(channels=5, phases=3)
        with self.assertRaisesRegex(TypeError, r"Channel count must be a positive integer, not 0"):
            TimeTagger(channels=0, phases=2)
        with self.assertRaisesRegex(TypeError, r"Time width must be an integer greater than log2\(phases\) = 2, "
                                               r"not 2"):
            TimeTagger(channels=1, phases=4, time_width=2)
        dut = TimeTagger(channels=5, phases=4)
        self.assertEqual((dut.channels, dut.phases, dut.time_width), (5, 4, 64))
        self.assertEqual(dut.i_samples.shape().width, 20)
        self.assertEqual(dut.o_events.p.cycle.shape().width, 62)
        self.assertTrue(dut.o_events.signature.always_ready)


class EventQueueTestCase(unittest.TestCase):
    LAYOUT = event_layout(5, 4, time_width=16)

    def test_burst_against_stalled_reader(self):
        # More beats back to back than the queue holds while nobody reads: the first ``depth`` come out, in order,
        # and the rest are counted. The first beat comes alone, so that it waits at the output while the others
        # arrive behind it.
        for depth, beats in [(3, 7), (8, 8), (8, 9), (16, 50)]:
            with self.subTest(depth=depth, beats=beats):
                dut = EventQueue(self.LAYOUT, depth)
                received = []

                async def bench(ctx):
                    for index in range(beats):
                        ctx.set(dut.i.valid, 1)
                        ctx.set(dut.i.payload, {"cycle": index, "hits": index % 32, "fine": [index % 4] * 5})
                        await ctx.tick()
                        if index == 0:
                            ctx.set(dut.i.valid, 0)
                            await ctx.tick().repeat(4)
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick().repeat(4)
                    self.assertEqual(ctx.get(dut.overflow), beats - min(beats, depth))
                    # A reader ready in every cycle takes the queued beats in consecutive cycles, then nothing more.
                    ctx.set(dut.o.ready, 1)
                    valids = []
                    for _ in range(min(beats, depth) + 8):
                        _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                        valids.append(valid)
                        if valid:
                            received.append(payload)
                    self.assertEqual(valids, [1] * min(beats, depth) + [0] * 8)

                sim = Simulator(dut)
                sim.add_clock(1e-8)
                sim.add_testbench(bench)
                sim.run()
                self.assertEqual([(beat.cycle, beat.hits, beat.fine[4]) for beat in received],
                                 [(index, index % 32, index % 4) for index in range(min(beats, depth))])

    def test_random_back_pressure(self):
        # A producer that cannot stall against a reader that stalls at random. Which beats get through follows
        # from when the reader took beats: a beat is dropped iff the queue holds ``depth`` beats when it comes.
        for depth, offered, ready in [(3, 0.6, 0.5), (16, 0.9, 0.7), (8, 0.3, 0.9)]:
            with self.subTest(depth=depth, offered=offered, ready=ready):
                dut = EventQueue(self.LAYOUT, depth)
                rng = random.Random(depth)
                cycles = 3000
                offers = [rng.random() < offered for _ in range(cycles)]
                reads = []                                    # (cycle, payload.cycle) of every transfer

                async def produce(ctx):
                    for index, valid in enumerate(offers):
                        ctx.set(dut.i.valid, valid)
                        ctx.set(dut.i.payload, {"cycle": index, "hits": index % 32, "fine": [0] * 5})
                        await ctx.tick()
                    ctx.set(dut.i.valid, 0)

                async def consume(ctx):
                    reader = random.Random(-depth)
                    for now in range(cycles + 4 * depth):
                        ctx.set(dut.o.ready, reader.random() < ready or now >= cycles)
                        _, _, valid, taken, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready,
                                                                              dut.o.payload)
                        if valid and taken:
                            reads.append((now, payload.cycle))
                    self.assertFalse(ctx.get(dut.o.valid), "the queue did not drain")
                    self.assertEqual(ctx.get(dut.overflow), sum(offers) - len(reads))

                sim = Simulator(dut)
                sim.add_clock(1e-8)
                sim.add_testbench(produce)
                sim.add_testbench(consume)
                sim.run()
                kept, read_before = [], 0
                for now, valid in enumerate(offers):
                    while read_before < len(reads) and reads[read_before][0] < now:
                        read_before += 1
                    if valid and len(kept) - read_before < depth:
                        kept.append(now)
                self.assertIsNone(first_difference([beat for _, beat in reads], kept))
                dropped = sum(offers) - len(kept)
                if offered > ready:
                    self.assertGreater(dropped, 100)
                else:
                    self.assertEqual(dropped, 0)

    def test_connects_to_the_tagger(self):
        tagger = TimeTagger(channels=5, phases=4)
        queue = EventQueue(event_layout(5, 4), 16)
        m = Module()
        m.submodules.tagger = tagger
        m.submodules.queue = queue
        wiring.connect(m, tagger.o_events, queue.i)
        Simulator(m)

    def test_parameters(self):
        with self.assertRaisesRegex(TypeError, r"Queue depth must be an integer of at least 3, not 2"):
            EventQueue(8, 2)
        dut = EventQueue(self.LAYOUT, 32)
        self.assertEqual((dut.shape, dut.depth), (self.LAYOUT, 32))
        self.assertTrue(dut.i.signature.always_ready)
        self.assertFalse(dut.o.signature.always_ready)
