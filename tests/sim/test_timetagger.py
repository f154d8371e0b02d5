"""The time-tagger model against cases computed by hand from the edge rule and the sampling definition."""

import math
import unittest

import numpy as np

from qkdlink.sim.optics import SlotEvents
from qkdlink.sim.timetagger import bench_samples, estimate_ns, sample, tag, timestamp_errors


def word(channel, bits, phases):
    """A sample word with channel ``channel``'s samples ``bits`` (a string, sample 0 first) high."""
    return sum(1 << (channel * phases + k) for k, bit in enumerate(bits) if bit == "1")


def words(*cycles):
    """Sample words from per-cycle lists of (channel, bits) pairs."""
    return np.array([sum(word(channel, bits, len(bits)) for channel, bits in cycle) for cycle in cycles],
                    dtype=np.uint64)


class SampleTestCase(unittest.TestCase):
    # Clock 10 ns, four phases: samples at 0, 2.5, 5, 7.5 ns in cycle 0, 10, 12.5, ... in cycle 1.
    def sample(self, times, *, pulse_ns, channel=0, cycles=3, channels=2, phases=4, clock_ns=10.0):
        return [int(w) for w in sample(times, channel, channels=channels, phases=phases, clock_ns=clock_ns,
                                       pulse_ns=pulse_ns, cycles=cycles)]

    def test_window_is_closed_open(self):
        # [3, 7) holds only the sample at 5; [5, 7.5) holds the one at 5 but not the one at 7.5.
        self.assertEqual(self.sample([3.0], pulse_ns=4.0), [0b0100, 0, 0])
        self.assertEqual(self.sample([5.0], pulse_ns=2.5), [0b0100, 0, 0])
        # [2.5, 5.000001) holds 2.5 and 5.
        self.assertEqual(self.sample([2.5], pulse_ns=2.500001), [0b0110, 0, 0])

    def test_across_cycles(self):
        # [8, 13): samples at 10 and 12.5, the first two of cycle 1. [6, 26): 7.5 to 25.
        self.assertEqual(self.sample([8.0], pulse_ns=5.0), [0, 0b0011, 0])
        self.assertEqual(self.sample([6.0], pulse_ns=20.0), [0b1000, 0b1111, 0b0111])

    def test_narrow_pulse_between_samples_is_missed(self):
        self.assertEqual(self.sample([5.5], pulse_ns=1.0), [0, 0, 0])

    def test_overlapping_pulses_merge(self):
        # [0, 3) and [2, 5): samples at 0 and 2.5; 5 is out.
        self.assertEqual(self.sample([2.0, 0.0], pulse_ns=3.0), [0b0011, 0, 0])

    def test_window_edges(self):
        # A pulse from before cycle 0 still high at its start; one beyond the window; one cut off by its end.
        self.assertEqual(self.sample([-1.0], pulse_ns=4.0), [0b0011, 0, 0])
        self.assertEqual(self.sample([30.0], pulse_ns=4.0), [0, 0, 0])
        self.assertEqual(self.sample([27.0], pulse_ns=40.0), [0, 0, 0b1000])

    def test_channel_position(self):
        self.assertEqual(self.sample([3.0], pulse_ns=4.0, channel=1), [0b0100_0000, 0, 0])
        self.assertEqual(self.sample([0.0], pulse_ns=1.0, channel=4, channels=5, phases=2, cycles=1), [1 << 8])

    def test_float_definition(self):
        # 48 MHz, two phases: sample 3 lies at (3 * clock) / 2 in float64. A pulse of 1.5 bins starting exactly
        # there is seen by samples 3 and 4; one starting a hair later by sample 4 only.
        clock = 1000 / 48
        at = 3 * clock / 2
        later = math.nextafter(at, math.inf)
        args = dict(pulse_ns=0.75 * clock, channels=1, phases=2, clock_ns=clock, cycles=3)
        self.assertEqual(self.sample([at], **args), [0, 0b10, 0b01])
        self.assertEqual(self.sample([later], **args), [0, 0, 0b01])

    def test_parameters(self):
        with self.assertRaisesRegex(ValueError, r"phases must be a positive power of two, not 3"):
            self.sample([0.0], pulse_ns=1.0, phases=3)
        with self.assertRaisesRegex(ValueError, r"channel must lie in \[0, 2\), not 2"):
            self.sample([0.0], pulse_ns=1.0, channel=2)
        with self.assertRaisesRegex(ValueError, r"at most 64 bits"):
            self.sample([0.0], pulse_ns=1.0, channels=17)


class TagTestCase(unittest.TestCase):
    def test_edge_across_cycle_boundary(self):
        # High from sample 3 of cycle 0 to sample 1 of cycle 1: one edge, at bin 3; cycle 1 has none.
        tags = tag(words([(0, "0001")], [(0, "1100")], []), channels=1, phases=4, dead_cycles=0)
        self.assertEqual(tags.events(), [(0, 1, (3,))])
        self.assertEqual((tags.edges, tags.suppressed), (1, 0))

    def test_high_from_previous_cycle(self):
        # Cycle 1 starts high (no edge at its sample 0), falls and rises again at sample 2.
        samples = words([(0, "0011")], [(0, "1011")])
        self.assertEqual(tag(samples, channels=1, phases=4, dead_cycles=0).events(),
                         [(0, 1, (2,)), (1, 1, (2,))])
        tags = tag(samples, channels=1, phases=4, dead_cycles=1)
        self.assertEqual(tags.events(), [(0, 1, (2,))])
        self.assertEqual((tags.edges, tags.suppressed), (1, 1))

    def test_input_high_at_reset_is_an_edge(self):
        tags = tag(words([(0, "11"), (1, "11"), (2, "11")], [(0, "11"), (1, "10"), (2, "01")]),
                   channels=3, phases=2, dead_cycles=0)
        # Cycle 1: channel 0 stays high, channel 1 falls, channel 2 falls and rises at sample 1.
        self.assertEqual(tags.events(), [(0, 0b111, (0, 0, 0)), (1, 0b100, (0, 0, 1))])

    def test_two_edges_in_one_cycle(self):
        tags = tag(words([(0, "1010")], [(0, "0101")]), channels=1, phases=4, dead_cycles=0)
        self.assertEqual(tags.events(), [(0, 1, (0,)), (1, 1, (1,))])
        self.assertEqual((tags.edges, tags.suppressed), (2, 2))
        # Eight phases: four edges in a cycle, three suppressed.
        tags = tag(words([(0, "10100101")]), channels=1, phases=8, dead_cycles=0)
        self.assertEqual(tags.events(), [(0, 1, (0,))])
        self.assertEqual((tags.edges, tags.suppressed), (1, 3))

    def test_dead_time(self):
        # Channel 1 has edges in cycles 0, 2, 3, 5, 9 (a one-sample pulse each); channel 0 one in cycle 1.
        edges_1 = {0, 2, 3, 5, 9}
        samples = words(*[[(1, "10")] * (n in edges_1) + [(0, "01")] * (n == 1) for n in range(11)])
        # Dead time 2: cycle 0 accepted; 2 is within 2 cycles of it; 3 is not (a suppressed edge does not
        # extend the dead time); 5 is within 2 of 3; 9 is free. Channel 0 has its own dead time.
        tags = tag(samples, channels=2, phases=2, dead_cycles=2)
        self.assertEqual(tags.events(), [(0, 0b10, (0, 0)), (1, 0b01, (1, 0)), (3, 0b10, (0, 0)),
                                         (9, 0b10, (0, 0))])
        self.assertEqual((tags.edges, tags.suppressed), (4, 2))
        tags = tag(samples, channels=2, phases=2, dead_cycles=1)
        self.assertEqual([event[0] for event in tags.events()], [0, 1, 2, 5, 9])   # 3 is right after 2
        tags = tag(samples, channels=2, phases=2, dead_cycles=0)
        self.assertEqual([event[0] for event in tags.events()], [0, 1, 2, 3, 5, 9])
        self.assertEqual((tags.edges, tags.suppressed), (6, 0))
        tags = tag(samples, channels=2, phases=2, dead_cycles=65535)
        self.assertEqual([event[0] for event in tags.events()], [0, 1])

    def test_several_channels_in_one_event(self):
        # Channels 0 and 2 accepted in cycle 1; channel 1's edge there falls in its dead time, so its fine is 0.
        samples = words([(1, "0100")], [(0, "0110"), (1, "0010"), (2, "1000")])
        tags = tag(samples, channels=3, phases=4, dead_cycles=1)
        self.assertEqual(tags.events(), [(0, 0b010, (0, 1, 0)), (1, 0b101, (1, 0, 0))])
        self.assertEqual((tags.edges, tags.suppressed), (3, 1))
        np.testing.assert_array_equal(tags.timestamps(0), [5])
        np.testing.assert_array_equal(tags.timestamps(1), [1])
        np.testing.assert_array_equal(tags.timestamps(2), [4])

    def test_no_edges(self):
        tags = tag(np.zeros(5, dtype=np.uint64), channels=2, phases=4, dead_cycles=0)
        self.assertEqual((len(tags), tags.edges, tags.suppressed), (0, 0, 0))
        self.assertEqual(tags.fine.shape, (0, 2))

    def test_parameters(self):
        with self.assertRaisesRegex(ValueError, r"dead_cycles must be an integer in \[0, 65536\), not 65536"):
            tag([0], channels=1, phases=2, dead_cycles=65536)


class BenchSamplesTestCase(unittest.TestCase):
    def events(self):
        # Slots 10 to 19 of 10 ns, frames of 4 slots. Pulses (bench time): Z1 at 101 (slot 10), X0 at 125 and
        # 136.3, X1 at 155.
        return SlotEvents(first_slot=10, slot_ns=10.0, alice_basis=np.zeros(10, np.uint8),
                          alice_bit=np.zeros(10, np.uint8), alice_intensity=np.zeros(10, np.uint8),
                          time_ns=np.array([101.0, 125.0, 136.3, 155.0]), detector=np.array([1, 2, 2, 3], np.uint8),
                          cause=np.zeros(4, np.uint8), slot=np.array([10, 12, 13, 15]), frame_slots=4)

    def test_channels_and_sync(self):
        # Cycle 0 starts at the first slot (100 ns); syncs at slots 12 and 16 (multiples of 4), 0.5 ns late.
        result = bench_samples(self.events(), phases=2, clock_ns=10.0, pulse_ns=5.0, sync_offset_ns=0.5)
        self.assertEqual(result.start_ns, 100.0)
        expected = [[], [1.0], [25.0, 36.3], [55.0], [20.5, 60.5]]
        for channel, times in enumerate(expected):
            np.testing.assert_allclose(result.times_ns[channel], times, err_msg=f"channel {channel}")
        # 10 slots of 10 ns and one pulse width: 11 cycles; samples at 0, 5, 10, ...
        self.assertEqual(result.samples.size, 11)
        tags = tag(result.samples, channels=5, phases=2, dead_cycles=0)
        self.assertEqual([tags.timestamps(c).tolist() for c in range(5)],
                         [[], [1], [5, 8], [11], [5, 13]])

    def test_options(self):
        # Syncs every 3 slots (12, 15, 18), cycle 0 at bench time 95 ns, 40 cycles, explicit syncs.
        result = bench_samples(self.events(), phases=4, clock_ns=8.0, pulse_ns=1.0, sync_every=3, start_ns=95.0,
                               cycles=40, channels=6)
        np.testing.assert_allclose(result.times_ns[4], [25.0, 55.0, 85.0])
        np.testing.assert_allclose(result.times_ns[2], [30.0, 41.3])
        self.assertEqual((result.samples.size, len(result.times_ns), result.times_ns[5].size), (40, 6, 0))
        result = bench_samples(self.events(), phases=4, clock_ns=8.0, pulse_ns=1.0, sync_ns=[])
        self.assertEqual(result.times_ns[4].size, 0)
        with self.assertRaisesRegex(ValueError, r"sync_every must be a positive integer, not 0"):
            bench_samples(self.events(), phases=4, clock_ns=8.0, pulse_ns=1.0, sync_every=0)


class TimestampErrorTestCase(unittest.TestCase):
    def test_by_hand(self):
        # Bins of 2.5 ns: a pulse at 3.0 makes an edge at bin 2 (the sample at 5.0), estimated at 3.75; one at
        # exactly 5.0 too, estimated 1.25 early; one at 5.01 at bin 3 (7.5), estimated at 6.25.
        np.testing.assert_allclose(estimate_ns([2, 3], clock_ns=10.0, phases=4), [3.75, 6.25])
        errors = timestamp_errors([5.01, 3.0, 25.0], [2, 3], clock_ns=10.0, phases=4)
        np.testing.assert_allclose(errors, [0.75, 1.24])
        errors = timestamp_errors([5.0], [2], clock_ns=10.0, phases=4)
        np.testing.assert_allclose(errors, [-1.25])
        with self.assertRaisesRegex(ValueError, r"1 tags have no pulse that could have made them, the first at "
                                                r"bin 4"):
            timestamp_errors([5.0], [2, 4], clock_ns=10.0, phases=4)

    def test_uniform_over_a_bin(self):
        # Pulses at random times, far apart: the error is uniform over one bin, RMS T / sqrt(12).
        rng = np.random.default_rng(5)
        clock, phases, count = 1000 / 48, 2, 4000
        times = np.arange(count) * 5 * clock + rng.random(count) * clock
        samples = sample(times, 0, channels=1, phases=phases, clock_ns=clock, pulse_ns=clock, cycles=5 * count)
        tags = tag(samples, channels=1, phases=phases, dead_cycles=0)
        self.assertEqual(len(tags), count)
        errors = timestamp_errors(times, tags.timestamps(0), clock_ns=clock, phases=phases)
        width = clock / phases
        self.assertTrue(np.all((errors >= -width / 2) & (errors <= width / 2)))
        # Mean 0 and variance T^2 / 12, within five standard errors.
        self.assertLess(abs(errors.mean()), 5 * width / math.sqrt(12 * count))
        self.assertLess(abs(np.mean(errors ** 2) / (width ** 2 / 12) - 1), 5 * math.sqrt(0.8 / count))
