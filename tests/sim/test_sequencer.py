import itertools
import random
import unittest

import numpy as np

from qkdlink.sim.sequencer import (NOT_SENT, RANDOM_RANGE, ChoiceMemoryModel, SlotSequencerModel, choices, choose,
                                   thresholds)


def word(basis=0, intensity=0, bit=0):
    return {"basis": basis, "intensity": intensity, "bit": bit}


def run_model(model, cycles, *, enable=lambda cycle: True, frame_free=lambda cycle: True,
              words=lambda cycle: word()):
    """Outputs of each cycle 0 .. cycles-1 and the cycles in which the model took a word."""
    trace, taken = [], []
    for cycle in range(cycles):
        trace.append(model.outputs())
        if model.step(enable=enable(cycle), frame_free=frame_free(cycle), word=words(cycle)):
            taken.append(cycle)
    return trace, taken


class ThresholdsTestCase(unittest.TestCase):
    def test_values(self):
        # 0.7 * 65536 = 45875.2, 0.9 * 65536 = 58982.4, 0.3 * 65536 = 19660.8
        self.assertEqual(thresholds(0.5, (0.7, 0.2, 0.1)), (32768, 45875, 58982))
        self.assertEqual(thresholds(0.3, (0.5, 0.25, 0.25)), (19661, 32768, 49152))
        self.assertEqual(thresholds(1.0, (1.0, 0.0, 0.0)), (65536, 65536, 65536))
        self.assertEqual(thresholds(0.0, (0.0, 0.0, 1.0)), (0, 0, 0))
        self.assertEqual(thresholds(1 - 2 ** -18, (0.0, 1.0, 0.0)), (65536, 0, 65536))

    def test_quantisation_error(self):
        # The documented bounds: 2^-17 for the basis and intensities 0 and 2, 2^-16 for intensity 1.
        rng = np.random.default_rng(7)
        for _ in range(2000):
            p_z = float(rng.random())
            p = rng.dirichlet((1, 1, 1))
            p[2] = 1 - p[0] - p[1]
            if min(p) < 1e-4:
                continue
            pz, t0, t1 = thresholds(p_z, p)
            self.assertLessEqual(abs(pz / RANDOM_RANGE - p_z), 2 ** -17)
            self.assertLessEqual(abs(t0 / RANDOM_RANGE - p[0]), 2 ** -17)
            self.assertLessEqual(abs((t1 - t0) / RANDOM_RANGE - p[1]), 2 ** -16)
            self.assertLessEqual(abs((RANDOM_RANGE - t1) / RANDOM_RANGE - p[2]), 2 ** -17 + 1e-12)
            self.assertLessEqual(t0, t1)

    def test_realised_probabilities_are_exact(self):
        # Over every 16-bit word, the choice rule realises exactly the settings over 65536.
        pz, t0, t1 = thresholds(0.8, (0.6, 0.3, 0.1))
        words = np.arange(RANDOM_RANGE)
        basis, _, intensity = choices(words, words, words, p_z=pz, t0=t0, t1=t1)
        self.assertEqual(int(np.sum(basis == 0)), pz)
        self.assertEqual(np.bincount(intensity, minlength=3).tolist(), [t0, t1 - t0, RANDOM_RANGE - t1])

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, r"p_z must lie in \[0, 1\], not 1.5"):
            thresholds(1.5, (1, 0, 0))
        with self.assertRaisesRegex(ValueError, r"must sum to 1, not 0.9"):
            thresholds(0.5, (0.5, 0.3, 0.1))
        with self.assertRaisesRegex(ValueError, r"three intensity probabilities, not 2"):
            thresholds(0.5, (0.5, 0.5))
        with self.assertRaisesRegex(ValueError, r"probabilities\[1\] must lie in \[0, 1\], not -0.1"):
            thresholds(0.5, (0.6, -0.1, 0.5))
        with self.assertRaisesRegex(ValueError, r"intensity 2 would never be sent"):
            thresholds(0.5, (0.5, 0.5 - 1e-6, 1e-6))


class ChooseTestCase(unittest.TestCase):
    def test_basis(self):
        self.assertEqual(choose(word(basis=32767), p_z=32768, t0=0, t1=0)[0], 0)
        self.assertEqual(choose(word(basis=32768), p_z=32768, t0=0, t1=0)[0], 1)
        # p_z = 0: always X, even for the word 0; p_z = 65536: always Z, even for 65535.
        self.assertEqual(choose(word(basis=0), p_z=0, t0=0, t1=0)[0], 1)
        self.assertEqual(choose(word(basis=65535), p_z=65536, t0=0, t1=0)[0], 0)
        self.assertEqual(choose(word(basis=65535), p_z=65535, t0=0, t1=0)[0], 1)

    def test_intensity(self):
        for value, expected in [(0, 0), (99, 0), (100, 1), (199, 1), (200, 2), (65535, 2)]:
            self.assertEqual(choose(word(intensity=value), p_z=0, t0=100, t1=200)[2], expected, value)
        for value in (0, 65535):
            self.assertEqual(choose(word(intensity=value), p_z=0, t0=0, t1=0)[2], 2)
            self.assertEqual(choose(word(intensity=value), p_z=0, t0=65536, t1=65536)[2], 0)
            self.assertEqual(choose(word(intensity=value), p_z=0, t0=0, t1=65536)[2], 1)

    def test_bit_and_not_sent(self):
        self.assertEqual(choose(word(bit=1), p_z=65536, t0=65536, t1=65536), (0, 1, 0))
        self.assertEqual(choose(None, p_z=65536, t0=65536, t1=65536), (0, 0, NOT_SENT))

    def test_arrays_match_scalar(self):
        rng = random.Random(3)
        values = [0, 1, 99, 100, 101, 32767, 32768, 65534, 65535]
        for p_z, t0, t1 in [(0, 0, 0), (65536, 65536, 65536), (32768, 100, 32768), (101, 0, 65536)]:
            b = [rng.choice(values) for _ in range(200)]
            i = [rng.choice(values) for _ in range(200)]
            bits = [rng.getrandbits(1) for _ in range(200)]
            sent = [rng.random() < 0.8 for _ in range(200)]
            arrays = choices(b, i, bits, p_z=p_z, t0=t0, t1=t1, sent=sent)
            expected = [choose(word(*w) if s else None, p_z=p_z, t0=t0, t1=t1)
                        for w, s in zip(zip(b, i, bits), sent)]
            self.assertEqual(list(zip(*(a.tolist() for a in arrays))), expected)


class SlotSequencerModelTestCase(unittest.TestCase):
    def test_timeline(self):
        # period 3, four slots a frame, a word in every slot: slots start in cycles 0, 3, 6, ... and show from
        # the next cycle; sync every 12 cycles from cycle 1.
        model = SlotSequencerModel(frame_bits=2, period=3, p_z=32768, t0=100, t1=200)
        words = [word(basis=0, intensity=150, bit=1), word(basis=40000, intensity=99, bit=0),
                 word(basis=32768, intensity=200, bit=1), word(basis=32767, intensity=65535, bit=0),
                 word(basis=65535, intensity=0, bit=1), word()]
        trace, taken = run_model(model, 16, words=lambda cycle: words[cycle // 3])
        self.assertEqual(taken, [0, 3, 6, 9, 12, 15])
        self.assertEqual([c for c, out in enumerate(trace) if out["emit"]], [1, 4, 7, 10, 13])
        self.assertEqual([c for c, out in enumerate(trace) if out["sync"]], [1, 13])
        expected = [(0, 1, 1), (1, 0, 0), (1, 1, 2), (0, 0, 2), (1, 1, 0)]
        self.assertEqual((trace[0]["basis"], trace[0]["bit"], trace[0]["intensity"]), (0, 0, NOT_SENT))
        for cycle in range(1, 16):
            out = trace[cycle]
            self.assertEqual((out["basis"], out["bit"], out["intensity"]), expected[(cycle - 1) // 3], cycle)
        beats = [(out["choice"]["frame"], out["choice"]["slot"]) for out in trace if out["choice"]]
        self.assertEqual(beats, [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)])

    def test_full_rate(self):
        model = SlotSequencerModel(frame_bits=2, period=1)
        trace, taken = run_model(model, 10)
        self.assertEqual(taken, list(range(10)))
        self.assertEqual([c for c, out in enumerate(trace) if out["emit"]], list(range(1, 10)))
        self.assertEqual([c for c, out in enumerate(trace) if out["sync"]], [1, 5, 9])
        # Period 0 counts as 1.
        zero = SlotSequencerModel(frame_bits=2, period=0)
        self.assertEqual(run_model(zero, 10), (trace, taken))

    def test_starvation(self):
        # Words only for slots 1 and 2: the other slots are not sent, do not emit, and count as starved; sync
        # still marks each frame.
        model = SlotSequencerModel(frame_bits=2, period=2, p_z=0, t0=0, t1=65536)
        trace, taken = run_model(model, 16, words=lambda cycle: word(bit=1) if cycle in (2, 4) else None)
        self.assertEqual(taken, [0, 2, 4, 6, 8, 10, 12, 14])
        self.assertEqual([c for c, out in enumerate(trace) if out["emit"]], [3, 5])
        self.assertEqual([c for c, out in enumerate(trace) if out["sync"]], [1, 9])
        self.assertEqual([out["intensity"] for out in trace[1:9]], [3, 3, 1, 1, 1, 1, 3, 3])
        self.assertEqual([out["basis"] for out in trace[1:9]], [0, 0, 1, 1, 1, 1, 0, 0])
        # The counter is registered too: slots 0 and 3 of frame 0 and 0..2 of frame 1 (decided by cycle 12)
        # show in cycle 14, slot 3 of frame 1 (decided in cycle 14) from cycle 15.
        self.assertEqual([trace[14]["starved"], trace[15]["starved"]], [5, 6])

    def test_pause_between_frames(self):
        # No room for frame 1 until cycle 10: frame 0 runs out (slots in cycles 0..3), outputs idle from cycle 5,
        # frame 1 starts in cycle 10. Enable dropping inside frame 1 does not stop it; frame 2 waits for enable.
        model = SlotSequencerModel(frame_bits=2, period=1)
        trace, taken = run_model(model, 24, frame_free=lambda cycle: cycle == 0 or cycle >= 10,
                                 enable=lambda cycle: not 11 <= cycle < 20)
        self.assertEqual(taken, [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23])
        self.assertEqual([c for c, out in enumerate(trace) if out["sync"]], [1, 11, 21])
        for cycle in list(range(5, 11)) + list(range(15, 21)):
            self.assertEqual((trace[cycle]["intensity"], trace[cycle]["emit"], trace[cycle]["choice"]),
                             (NOT_SENT, False, None), cycle)
        beats = [(out["choice"]["frame"], out["choice"]["slot"]) for out in trace if out["choice"]]
        self.assertEqual(beats, [(f, s) for f in range(3) for s in range(4)][:11])

    def test_frame_number_wraps(self):
        model = SlotSequencerModel(frame_bits=2, frame_width=2, period=1)
        trace, _ = run_model(model, 22)
        frames = [out["choice"]["frame"] for out in trace if out["choice"] and out["choice"]["slot"] == 0]
        self.assertEqual(frames, [0, 1, 2, 3, 0, 1])


class ChoiceMemoryModelTestCase(unittest.TestCase):
    @staticmethod
    def frame(frame, values):
        return [{"frame": frame, "slot": slot, "basis": b, "bit": t, "intensity": i}
                for slot, (b, t, i) in enumerate(values)]

    def test_hold_lookup_release(self):
        memory = ChoiceMemoryModel(frame_bits=2, frames=2)
        values = {f: [((f + s) & 1, (f * s) & 1, (f + 2 * s) % 4) for s in range(4)] for f in range(4)}
        self.assertTrue(memory.frame_free)
        beats = self.frame(0, values[0])
        for beat in beats[:2]:
            memory.write(beat)
        # Frame 0 is begun but not held: lookups of it are bad.
        self.assertEqual(memory.lookup(0, 0, 1), {"basis": 1, "alice_basis": 0, "bit": 0, "intensity": 3})
        self.assertFalse(memory.release(0))
        for beat in beats[2:] + self.frame(1, values[1])[:1]:
            memory.write(beat)
        self.assertFalse(memory.frame_free)
        with self.assertRaisesRegex(ValueError, r"frame 2 begins before frame 1 is complete"):
            memory.write(self.frame(2, values[2])[0])
        for beat in self.frame(1, values[1])[1:]:
            memory.write(beat)
        with self.assertRaisesRegex(ValueError, r"frame 2 begins while the memory holds 2 frames"):
            memory.write(self.frame(2, values[2])[0])
        for f, s in itertools.product((0, 1), range(4)):
            b, t, i = values[f][s]
            self.assertEqual(memory.lookup(f, s, 0), {"basis": 0, "alice_basis": b, "bit": t, "intensity": i})
        self.assertFalse(memory.release(1))         # not the oldest
        self.assertTrue(memory.release(0))
        self.assertFalse(memory.release(0))         # already released
        self.assertTrue(memory.frame_free)
        self.assertEqual(memory.lookup(0, 1, 1)["intensity"], NOT_SENT)
        self.assertEqual(memory.lookup(5, 1, 1)["intensity"], NOT_SENT)
        self.assertEqual((memory.bad_lookup, memory.bad_release), (3, 3))

    def test_out_of_order(self):
        memory = ChoiceMemoryModel(frame_bits=2)
        beats = self.frame(0, [(0, 0, 0)] * 4)
        with self.assertRaisesRegex(ValueError, r"slot 1 of frame 0 out of order"):
            memory.write(beats[1])
        memory.write(beats[0])
        with self.assertRaisesRegex(ValueError, r"slot 2 of frame 0 out of order"):
            memory.write(beats[2])
