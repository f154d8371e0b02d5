"""Bob's capture path end to end on the optical bench: raw tags, calibration, slot assignment, squashing, sifting.

Everything here is the gateware's bit-exact models (each proven against the RTL by its own tests) and the host's
calibration: what a board and its host do with a fresh link, from detector pulses to a sifted key.
"""

import unittest

import numpy as np

from qkdlink.host.sifting import sift, squash
from qkdlink.host.slots import calibrate
from qkdlink.sim import optics, slots, timetagger


FRAME_BITS = 8


def bench_run(seed, *, slots_count, clock_ns, phases, ppm):
    bench = optics.OpticalBench(
        source=optics.Source(intensities=(0.6, 0.2, 2e-4), probabilities=(0.5, 0.3, 0.2), p_z=0.8),
        fibre=optics.Fibre(length_km=0),
        receiver=optics.Receiver(efficiency=0.4, dark_count=1e-4, dead_time=2, afterpulse=0.0, jitter_ns=0.1),
        slot_rate_hz=25e6, frame_slots=1 << FRAME_BITS)
    events = optics.slot_events(bench, 0, slots_count, rng=np.random.default_rng(seed))
    # Bob's clock runs ``ppm`` fast against Alice's: his cycle is shorter in her time.
    samples = timetagger.bench_samples(events, phases=phases, clock_ns=clock_ns / (1 + ppm * 1e-6),
                                       pulse_ns=15.0)   # longer than a sample interval: none missed
    tags = timetagger.tag(samples.samples, channels=5, phases=phases, dead_cycles=1)
    return events, tags


class CapturePathTestCase(unittest.TestCase):
    def check_board(self, *, clock_ns, phases, ppm, seed, gated):
        events, tags = bench_run(seed, slots_count=40 << FRAME_BITS, clock_ns=clock_ns, phases=phases, ppm=ppm)
        clicks = np.sort(np.concatenate([tags.timestamps(channel) for channel in range(4)]))
        timing = calibrate(tags.timestamps(4), clicks, frame_bits=FRAME_BITS)
        # The period in Bob's bins: 40 ns slots, measured on a clock ppm fast.
        true_period = 40.0 / (clock_ns / (1 + ppm * 1e-6) / phases)
        # The syncs are whole bins: over 39 frames the error is below 2 bins / 39 frames.
        self.assertLess(abs(timing.period_bins - true_period) * (1 << FRAME_BITS), 0.1)

        result = slots.assign(tags.events(), phases=phases, frame_bits=FRAME_BITS, period=timing.period,
                              delay=timing.delay, gate_start=timing.gate_start, gate_width=timing.gate_width)
        self.assertEqual(result.frames, 40)
        self.assertEqual(result.overrun, 0)
        assigned = {(frame << FRAME_BITS) + slot: pattern for frame, slot, pattern in result.detections}

        # Every slot with a photon click comes out as a detection of that slot, with the photon's detector in it.
        photon = events.cause == optics.PHOTON
        photon_slots = events.slot[photon]
        found = np.array([(int(slot) in assigned) and bool(assigned[int(slot)] >> int(detector) & 1)
                          for slot, detector in zip(photon_slots, events.detector[photon])])
        self.assertGreater(found.mean(), 0.99, f"{(~found).sum()} of {found.size} photon clicks lost")
        # Where the bins are fine enough for a gate narrower than the slot, it keeps out most dark counts.
        dark_only = set(events.slot[events.cause == optics.DARK].tolist()) - set(photon_slots.tolist())
        passed = len(dark_only & assigned.keys())
        if gated:
            self.assertLess(timing.gate_width, timing.period_bins / 2)
            self.assertLess(passed, 0.5 * len(dark_only))
            self.assertGreater(result.gated, 0)
        else:
            self.assertEqual(result.gated, 0)

        # Sifting against Alice's choices: the error rate is the receiver's misalignment, not a timing error.
        slot = np.array(sorted(assigned), dtype=np.int64)
        pattern = np.array([assigned[s] for s in slot], dtype=np.uint8)
        rng = np.random.default_rng(seed)
        basis, bit = squash(pattern, rng.integers(0, 2, (slot.size, 2), dtype=np.uint8))
        index = slot - events.first_slot
        bob = sift(basis, bit, events.alice_basis[index], events.alice_intensity[index])
        alice = sift(basis, events.alice_bit[index], events.alice_basis[index], events.alice_intensity[index])
        signal = bob.key_intensity == 0
        errors = np.mean(bob.key[signal] != alice.key[signal])
        self.assertGreater(signal.sum(), 500)
        self.assertLess(errors, 0.03)

    def test_icebreaker(self):
        # 40 ns slots are under four 10.4 ns bins: with the sync's own bin of uncertainty the photons fill the
        # slot, and the gate is all of it.
        self.check_board(clock_ns=1000 / 48, phases=2, ppm=-41, seed=1, gated=False)

    def test_ulx3s(self):
        self.check_board(clock_ns=10.0, phases=4, ppm=37, seed=2, gated=True)
