import unittest

import numpy as np

from qkdlink.host.slots import calibrate


def tags(times_bins):
    """Timestamps as a time-tagger gives them: whole bins, rounded down."""
    return np.floor(np.sort(times_bins)).astype(np.int64)


def synthetic(rng, *, period, frame_bits, frames, arrival, jitter, clicks=4000, dark=200, first=1000.0):
    """Sync at the start of every frame; photon clicks at ``arrival`` + jitter into random slots; dark counts."""
    slots = 1 << frame_bits
    sync = first + np.arange(frames) * slots * period
    slot = rng.integers(0, (frames - 1) * slots, clicks)
    photon = first + slot * period + arrival + rng.normal(0, jitter, clicks)
    noise = rng.uniform(first, sync[-1], dark)
    return tags(sync), tags(np.concatenate([photon, noise])), slot, photon


class CalibrateTestCase(unittest.TestCase):
    def assigned(self, timing, sync, times):
        """Slots (global) and acceptance the slot assigner's definition gives for tags at ``times`` (bins)."""
        frame = np.searchsorted(sync + timing.delay, times, side="right") - 1
        x = (times - sync[frame] - timing.delay) << timing.fraction_bits
        phase = (x % timing.period) >> timing.fraction_bits
        inside = (phase >= timing.gate_start) & (phase < timing.gate_start + timing.gate_width)
        return frame, x // timing.period, inside

    def test_recovers_slots_on_drifting_clock(self):
        # Bob's clock 37 ppm fast: 4.000148 bins a slot, not 4. The period must come out to well below a bin per
        # frame, and (almost) every photon must land in its own slot inside the gate.
        rng = np.random.default_rng(1)
        period, frame_bits = 4 * (1 + 37e-6), 8
        sync, clicks, slot, photon = synthetic(rng, period=period, frame_bits=frame_bits, frames=40,
                                               arrival=0.5 * period, jitter=0.25)
        timing = calibrate(sync, clicks, frame_bits=frame_bits)
        self.assertLess(abs(timing.period_bins - period) * (1 << frame_bits), 0.5)
        self.assertEqual(timing.frames, 39)
        self.assertAlmostEqual(timing.jitter, 0.25 * 1.2, delta=0.25)   # plus the bins' own quantisation
        frame, assigned, inside = self.assigned(timing, sync, tags(photon)[np.argsort(np.argsort(photon))])
        right = ((frame << frame_bits) + assigned == slot) & inside
        self.assertGreater(right.mean(), 0.99)

    def test_gate_rejects_dark_counts(self):
        # Long slots (40 bins) and little jitter: the gate is a few bins and lets through few dark counts.
        rng = np.random.default_rng(2)
        sync, clicks, slot, photon = synthetic(rng, period=40.0, frame_bits=6, frames=10, arrival=13.0,
                                               jitter=0.5, dark=0)
        timing = calibrate(sync, clicks, frame_bits=6)
        self.assertLessEqual(timing.gate_width, 6)
        self.assertGreaterEqual(timing.gate_width, 3)
        # The photons arrive 13 bins after the point j periods past the sync, less than half a period: the delay
        # cannot be negative, so it is 0 and the gate sits around bin 13 of the slot.
        self.assertEqual(timing.delay, 0)
        self.assertLessEqual(timing.gate_start, 12)
        self.assertGreaterEqual(timing.gate_start + timing.gate_width, 14)

    def test_arrival_late_in_slot_moves_delay(self):
        rng = np.random.default_rng(3)
        sync, clicks, slot, photon = synthetic(rng, period=40.0, frame_bits=6, frames=10, arrival=35.0,
                                               jitter=0.5)
        timing = calibrate(sync, clicks, frame_bits=6)
        self.assertEqual(timing.delay, 35 - 20 - 1)    # tags are floor()ed: the arrival measures about 34.5
        frame, assigned, inside = self.assigned(timing, sync, tags(photon)[np.argsort(np.argsort(photon))])
        self.assertGreater((((frame << 6) + assigned == slot) & inside).mean(), 0.99)

    def test_pause_between_frames_is_left_out(self):
        rng = np.random.default_rng(4)
        sync, clicks, slot, photon = synthetic(rng, period=8.0, frame_bits=4, frames=12, arrival=4.0, jitter=0.3)
        sync = sync.copy()
        sync[6:] += 1000          # Alice paused for 1000 bins before frame 6
        timing = calibrate(sync, clicks[clicks < sync[6]], frame_bits=4)
        self.assertEqual(timing.frames, 10)
        self.assertAlmostEqual(timing.period_bins, 8.0, delta=1 / 16)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "at least two sync tags"):
            calibrate([5], [1, 2, 3], frame_bits=4)
        with self.assertRaisesRegex(ValueError, "ascending"):
            calibrate([5, 3, 9], [6], frame_bits=4)
        with self.assertRaisesRegex(ValueError, "spurious or lost sync"):
            calibrate([0, 100, 200, 250, 300], np.arange(20) * 10, frame_bits=2)
        with self.assertRaisesRegex(ValueError, "calibration needs photons"):
            calibrate([0, 100, 200], [150], frame_bits=2)
        with self.assertRaisesRegex(ValueError, "frame_bits"):
            calibrate([0, 100, 200], np.arange(20) * 10, frame_bits=10)
