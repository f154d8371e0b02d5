import random
import unittest

import numpy as np

from qkdlink.sim.optics import Fibre, OpticalBench, Receiver, Source, slot_events
from qkdlink.sim.slots import Assignment, assign, bench_events


def event(cycle, **edges):
    """One tagger event from keyword edges, ``z0=fine`` ... ``x1=fine``, ``sync=fine``."""
    channels = {"z0": 0, "z1": 1, "x0": 2, "x1": 3, "sync": 4}
    fine = [0] * 5
    hits = 0
    for name, bin_ in edges.items():
        hits |= 1 << channels[name]
        fine[channels[name]] = bin_
    return (cycle, hits, fine)


def literal(events, *, phases, frame_bits, period, delay, gate_start, gate_width, fraction_bits, detectors=4):
    """The definition, walked bin by bin: the slot of each bin found by adding one bin at a time, no division.

    Returns the detections as a dict {(frame, slot): pattern} and the four counters.
    """
    syncs, edges = [], {}
    for cycle, hits, fine in events:
        for channel in range(detectors + 1):
            if hits >> channel & 1:
                t = cycle * phases + fine[channel]
                if channel == detectors:
                    syncs.append(t)
                else:
                    edges.setdefault(t, []).append(channel)
    # A frame starts unless the next sync comes in a cycle no later than one after its switch cycle, the cycle of
    # the bin before its start.
    starts = {}
    overrun = 0
    for index, t in enumerate(syncs):
        switch = (t + delay - 1) // phases
        if index + 1 < len(syncs) and syncs[index + 1] // phases <= switch + 1:
            overrun += 1
        else:
            starts[t + delay] = index
    first_bins = sorted(starts)

    detections = {}
    gated = outside = 0
    frame = None
    slot = x = 0
    cycle_slot = None
    for b in range(max(edges, default=0) + 1):
        if b in starts:
            frame, slot, x = starts[b], 0, 0
        elif frame is not None:
            x += 1 << fraction_bits
            while x >= period:
                x -= period
                slot += 1
        if b % phases == 0:
            cycle_slot = slot
        # The next frame's start, if its switch cycle is this cycle.
        upcoming = [start for start in first_bins if start > b]
        switching = bool(upcoming) and (upcoming[0] - 1) // phases == b // phases
        for channel in edges.get(b, []):
            if frame is None or slot >= 1 << frame_bits or (switching and slot > cycle_slot):
                outside += 1
            elif not gate_start <= x >> fraction_bits < gate_start + gate_width:
                gated += 1
            else:
                detections[(frame, slot)] = detections.get((frame, slot), 0) | 1 << channel
    return detections, len(syncs), gated, outside, overrun


def random_events(rng, cycles, *, phases, p_sync, p_hit, detectors=4):
    """Events with random edges on every channel: syncs far more often than frames, every fine time."""
    events = []
    for cycle in range(cycles):
        hits = sum(1 << c for c in range(detectors) if rng.random() < p_hit)
        hits |= (rng.random() < p_sync) << detectors
        if hits:
            events.append((cycle, hits, [rng.randrange(phases) for _ in range(detectors + 1)]))
    return events


class AssignHandTestCase(unittest.TestCase):
    def test_one_frame(self):
        # P = 4, period 6.5 bins (104 with 4 fraction bits). Sync at bin 5, delay 3: the frame starts at bin 8, and
        # slot j holds the bins d = t - 8 with 6.5 j <= d < 6.5 (j + 1): slot 0 d = 0..6, slot 1 d = 7..12, slot 2
        # d = 13..19, slot 3 d = 20..25. The phase is (16 d mod 104) >> 4. Gate: phases 1 to 4.
        events = [
            event(1, z0=0, sync=1),             # bin 4: before the frame starts
            event(2, z1=2),                     # bin 10: d 2, slot 0, phase 2
            event(3, z0=3, x0=2),               # bin 15: d 7, slot 1, phase 0 (gated); bin 14: d 6, phase 6 (gated)
            event(4, z0=2, x1=1),               # bins 18, 17: d 10 and 9, slot 1, phases 3 and 2
            event(5, z1=3),                     # bin 23: d 15, slot 2, phase 2
            event(9, x0=0),                     # bin 36: d 28, slot 4: beyond the frame
        ]
        result = assign(events, phases=4, frame_bits=2, fraction_bits=4, period=104, delay=3, gate_start=1,
                        gate_width=4)
        self.assertEqual(result, Assignment(detections=[(0, 0, 0b0010), (0, 1, 0b1001), (0, 2, 0b0010)],
                                            frames=1, gated=2, outside=2, overrun=0))

    def test_switch_cycle(self):
        # P = 4, period 7 bins. Frame 0: sync at bin 2, delay 2, starts at bin 4; slot j is bins 4 + 7j .. 10 + 7j.
        # Frame 1: sync at bin 25, starts at bin 27, so cycle 6 (bins 24 to 27) is its switch cycle. Frame 0 is in
        # slot 2 at bin 24, so its edges at bins 25 and 26 (slot 3) count as outside; bin 27 is frame 1's slot 0.
        events = [
            event(0, sync=2, z0=3),             # bin 3: before the first frame
            event(1, x1=0),                     # bin 4: frame 0, slot 0
            event(6, z0=0, z1=1, x0=2, x1=3, sync=1),
            event(8, z1=2),                     # bin 34: frame 1, d 7: slot 1, phase 0
        ]
        result = assign(events, phases=4, frame_bits=3, fraction_bits=0, period=7, delay=2, gate_start=0,
                        gate_width=7)
        self.assertEqual(result, Assignment(detections=[(0, 0, 0b1000), (0, 2, 0b0001), (1, 0, 0b1000),
                                                        (1, 1, 0b0010)],
                                            frames=2, gated=0, outside=3, overrun=0))

    def test_switch_cycle_before_a_cycle_boundary(self):
        # A frame that starts at a cycle's first bin has the cycle before as its switch cycle. P = 4, period one
        # cycle, delay 4. Frame 0: sync at bin 1, starts at bin 5; slot j is bins 5 + 4j .. 8 + 4j. Frame 1: sync
        # at bin 20, starts at bin 24 (cycle 6), switch cycle 5. Frame 0 begins cycle 5 in slot 3, so bin 23
        # (slot 4) is outside, not a detection in (0, 4).
        events = [
            event(0, sync=1),
            event(5, z0=0, z1=3, sync=0),       # bin 20: slot 3, phase 3; bin 23: slot 4, outside
            event(6, x0=0),                     # bin 24: frame 1, slot 0
        ]
        result = assign(events, phases=4, frame_bits=3, fraction_bits=0, period=4, delay=4, gate_start=0,
                        gate_width=4)
        self.assertEqual(result, Assignment(detections=[(0, 3, 0b0001), (1, 0, 0b0100)],
                                            frames=2, gated=0, outside=1, overrun=0))

    def test_overrun(self):
        # P = 2, delay 10, a period of one cycle (4 with 1 fraction bit), 16 slots. Sync 0 at bin 1 would start
        # frame 0 at bin 11 (switch cycle 5), but sync 1 comes in cycle 3: frame 0 never starts. Frame 1 starts at
        # bin 16, frame 2 at bin 50.
        events = [
            event(0, sync=1),
            event(3, sync=0),
            event(6, z0=0),                     # bin 12: no frame has started
            event(8, z1=1),                     # bin 17: frame 1, slot 0, phase 1
            event(20, sync=0),
            event(24, x1=1),                    # bin 49: frame 1, slot 16: beyond the frame
            event(25, x0=1),                    # bin 51: frame 2, slot 0
        ]
        result = assign(events, phases=2, frame_bits=4, fraction_bits=1, period=4, delay=10, gate_start=0,
                        gate_width=2)
        self.assertEqual(result, Assignment(detections=[(1, 0, 0b0010), (2, 0, 0b0100)],
                                            frames=3, gated=0, outside=2, overrun=1))

    def test_overrun_boundary(self):
        # Sync at bin 4, delay 9: the frame starts at bin 13, switch cycle 3. A next sync in cycle 4 (= 3 + 1)
        # overruns it, one in cycle 5 does not. The edge at bin 18 is in the frame's slot 1 (period 4 bins).
        cases = [
            (4, [event(1, sync=0), event(4, z0=2, sync=0)],
             Assignment(detections=[], frames=2, gated=0, outside=1, overrun=1)),
            (5, [event(1, sync=0), event(4, z0=2), event(5, sync=0)],
             Assignment(detections=[(0, 1, 0b0001)], frames=2, gated=0, outside=0, overrun=0)),
        ]
        for next_cycle, events, expected in cases:
            with self.subTest(next_cycle=next_cycle):
                result = assign(events, phases=4, frame_bits=3, fraction_bits=0, period=4, delay=9,
                                gate_start=0, gate_width=4)
                self.assertEqual(result, expected)

    def test_frame_numbers_wrap(self):
        # Frame numbers count modulo 2 ** frame_width: five frames with frame_width 2 are 0, 1, 2, 3, 0.
        events = []
        for frame in range(5):
            events += [event(10 * frame, sync=0), event(10 * frame + 1, x1=0)]
        result = assign(events, phases=2, frame_bits=2, fraction_bits=0, period=2, delay=0, gate_start=0,
                        gate_width=2, frame_width=2)
        self.assertEqual(result.detections, [(frame % 4, 1, 0b1000) for frame in range(5)])

    def test_settings_are_checked(self):
        events = [event(0, sync=0)]
        settings = dict(phases=4, frame_bits=3, fraction_bits=2, period=16, delay=0, gate_start=0, gate_width=4)
        assign(events, **settings)
        for name, value, message in (("phases", 3, r"phases must be a positive power of two, not 3"),
                                     ("period", 15, r"period must be an integer in \[16, 2\*\*18\)"),
                                     ("period", 1 << 18, r"not 262144"),
                                     ("delay", -1, r"delay must be an integer in \[0, 2\*\*32\), not -1"),
                                     ("gate_width", 1 << 16, r"gate_width must be an integer"),
                                     ("frame_bits", 0, r"frame_bits must be a positive integer, not 0")):
            with self.subTest(name=name, value=value):
                with self.assertRaisesRegex(ValueError, message):
                    assign(events, **{**settings, name: value})
        with self.assertRaisesRegex(ValueError, r"ascending cycles, one a cycle: cycle 0 after 0"):
            assign([event(0, z0=1), event(0, z1=1)], **settings)
        with self.assertRaisesRegex(ValueError, r"fine time 4 of channel 0 in cycle 0"):
            assign([event(0, z0=4)], **settings)


class AssignLiteralTestCase(unittest.TestCase):
    def test_against_bin_walk(self):
        # The model (division per edge, a search for the frame) against the definition walked bin by bin (slots
        # by repeated addition), on random events with frequent syncs: overruns, switch cycles, frames cut short.
        rng = random.Random(1)
        cases = [
            # phases, fraction_bits, period, delay, frame_bits, p_sync
            (4, 0, 4, 0, 2, 0.1),
            (4, 3, 4 * 8 + 3, 5, 3, 0.05),
            (2, 4, 2 * 16 + 1, 1, 4, 0.03),
            (4, 24, (4 << 24) + 12345, 2, 3, 0.08),
            (2, 2, 27, 13, 2, 0.3),
            (1, 2, 7, 0, 2, 0.15),
            (8, 5, (8 << 5) * 3 - 7, 40, 3, 0.02),
        ]
        for phases, fraction_bits, period, delay, frame_bits, p_sync in cases:
            events = random_events(rng, 400, phases=phases, p_sync=p_sync, p_hit=0.4)
            for gate_start, gate_width in ((0, 1 << 16 - 1), (1, 2)):
                settings = dict(phases=phases, fraction_bits=fraction_bits, period=period, delay=delay,
                                frame_bits=frame_bits, gate_start=gate_start, gate_width=gate_width)
                with self.subTest(**settings):
                    result = assign(events, **settings)
                    detections, *counters = literal(events, **settings)
                    self.assertEqual(result.detections, sorted((f, s, p) for (f, s), p in detections.items()))
                    self.assertEqual([result.frames, result.gated, result.outside, result.overrun], counters)
                    # Something of everything happened, or the comparison proves little.
                    self.assertTrue(result.detections and result.outside and result.frames)
                    if gate_width == 2:
                        self.assertTrue(result.gated)


class AssignBenchTestCase(unittest.TestCase):
    def recover(self, *, phases, clock_mhz, slot_rate_hz, frame_bits, gate_start, gate_width, sync_lead_bins):
        """An ideal run (no jitter, dark counts or afterpulses): every click lands in the bench's own slot.

        Bob's clock differs from Alice's slot clock, and the period setting follows the ratio. Syncs come at the
        start of frames 1 to 4, ``sync_lead_bins`` bins ahead of the frame; the delay puts the frame start back.
        Frame 0's clicks come before the first sync.
        """
        slots = 1 << frame_bits
        clock_ns = 1e3 / clock_mhz
        bin_ns = clock_ns / phases
        bench = OpticalBench(source=Source(intensities=(3.0, 1.0, 0.5)), fibre=Fibre(length_km=0),
                             receiver=Receiver(efficiency=0.5, dark_count=0, afterpulse=0, dead_time=0,
                                               jitter_ns=0),
                             slot_rate_hz=slot_rate_hz, frame_slots=slots)
        run = slot_events(bench, 0, 5 * slots, rng=np.random.default_rng(frame_bits))
        sync_ns = np.arange(1, 5) * slots * run.slot_ns - sync_lead_bins * bin_ns
        # Pulses longer than a bin, so that every one is sampled, and shorter than a slot less a bin.
        events = bench_events(run, phases=phases, clock_ns=clock_ns, sync_ns=sync_ns, pulse_ns=1.2 * bin_ns)
        fraction_bits = 24
        period = round(run.slot_ns / bin_ns * (1 << fraction_bits))
        result = assign(events, phases=phases, frame_bits=frame_bits, fraction_bits=fraction_bits, period=period,
                        delay=sync_lead_bins, gate_start=gate_start, gate_width=gate_width)
        patterns = run.patterns()
        expected = [(slot // slots - 1, slot % slots, int(patterns[slot]))
                    for slot in range(slots, 5 * slots) if patterns[slot]]
        self.assertGreater(len(expected), 2 * slots)
        self.assertEqual(result.detections, expected)
        self.assertEqual((result.frames, result.gated, result.overrun), (4, 0, 0))
        self.assertEqual(result.outside, int(np.count_nonzero(run.slot < slots)))

    def test_recovers_slots_ecp5(self):
        # 10 ns slots on a 100.003 MHz clock with 4 bins a cycle: 4.00012 bins a slot.
        self.recover(phases=4, clock_mhz=100.003, slot_rate_hz=100e6, frame_bits=6, gate_start=1, gate_width=2,
                     sync_lead_bins=3)

    def test_recovers_slots_ice40(self):
        # 25 ns slots on a 47.999 MHz clock with 2 bins a cycle: 2.39995 bins a slot, the gate the whole slot.
        self.recover(phases=2, clock_mhz=47.999, slot_rate_hz=40e6, frame_bits=5, gate_start=0, gate_width=3,
                     sync_lead_bins=0)
