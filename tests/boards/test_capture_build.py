# amaranth: UnusedElaboratable=no
"""The capture path's bench tops: bitstreams for the iCEBreaker that meet its clock, and the ULX3S-85F tops
elaborated for its platform (their place and route is in ``bench/capture_build.py``).

Each check would catch a top that lets synthesis drop part of the path: the memories must be the sizes the board
names (SPRAMs on the UP5K, memories of the right shape on the ECP5) and every pin the path uses must be there.
"""

import json
import re
import tempfile
import time
import unittest
from pathlib import Path

from amaranth import Shape

from qkdlink.boards.build import TimingError, build
from qkdlink.boards.capture_top import AliceCaptureTop, BobCaptureTop, critical_paths
from qkdlink.boards.platforms import BOARDS, DETECTOR_CHANNELS, MODULATOR_OUTPUTS
from qkdlink.gateware.sequencer import SlotSequencer
from qkdlink.gateware.slots import SlotAssigner, detection_layout
from qkdlink.gateware.timetagger import TimeTagger, event_layout


_SPRAM_WORDS = 1 << 14


def _choice_words(board):
    return board.choice_frames << (board.frame_bits - 2)


def _key_words(board):
    return -(-board.key_bits // 16)


class SettingsTestCase(unittest.TestCase):
    """Each setting of the shift register is as wide as the core's port it drives (``eq`` would cut it)."""

    def test_bob(self):
        tagger = TimeTagger(channels=5, phases=2)
        assigner = SlotAssigner(phases=2, frame_bits=15, fraction_bits=BobCaptureTop.FRACTION_BITS)
        ports = {"dead_cycles": tagger.dead_cycles, "delay": assigner.delay, "period": assigner.period,
                 "gate_start": assigner.gate_start, "gate_width": assigner.gate_width}
        self.assertEqual(set(ports), set(dict(BobCaptureTop.SETTINGS)))
        for name, port in ports.items():
            self.assertEqual(Shape.cast(BobCaptureTop.SETTINGS[name].shape).width, len(port), name)

    def test_alice(self):
        sequencer = SlotSequencer(frame_bits=15)
        ports = {"period": sequencer.period, "p_z": sequencer.p_z,
                 "intensity_thresholds": sequencer.intensity_thresholds.as_value(), "enable": sequencer.enable}
        self.assertEqual(set(ports), set(dict(AliceCaptureTop.SETTINGS)))
        for name, port in ports.items():
            self.assertEqual(Shape.cast(AliceCaptureTop.SETTINGS[name].shape).width, len(port), name)


class ICEBreakerBitstreamTestCase(unittest.TestCase):
    """Place and route both tops for the iCEBreaker; they must fit and meet 48 MHz."""

    def check_build(self, top, *, spram, pins):
        """Build ``top``; check what it uses; return the report, the critical paths and the netlist's top cells.
        Timing is checked last, by :meth:`check_timing`, so that a slow path hides no other failure."""
        board = BOARDS["icebreaker"]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as build_dir:
            report = build(board, top(board), build_dir=build_dir)
            paths = critical_paths(build_dir, report.fmax)
            netlist = json.loads((Path(build_dir) / "top.json").read_text())
        print(f"\n{top.__name__} on {board.name}: built in {time.perf_counter() - started:.0f} s, "
              f"{report.fmax}, {report.utilization['ICESTORM_LC'][0]} logic cells")
        self.assertTrue(report.bitstream, "no bitstream")
        [(_, constraint)] = report.fmax.values()
        self.assertAlmostEqual(constraint, board.frequency / 1e6, delta=0.1)
        for kind, (used, available) in report.utilization.items():
            self.assertLessEqual(used, available, kind)
        self.assertEqual(report.utilization["ICESTORM_SPRAM"][0], spram)
        self.assertEqual(report.utilization["SB_IO"][0], pins)
        [module] = [module for module in netlist["modules"].values() if module["attributes"].get("top")]
        return report, paths, list(module["cells"].values())

    def check_timing(self, report, paths):
        try:
            report.check_timing()
        except TimingError as error:
            self.fail(f"{error}; critical path:\n{paths}")

    def test_bob(self):
        # The key memory in SPRAM; pins: clock, UART receive (settings), LED and the detectors.
        report, paths, cells = self.check_build(
            BobCaptureTop, spram=-(-_key_words(BOARDS["icebreaker"]) // _SPRAM_WORDS),
            pins=3 + len(DETECTOR_CHANNELS))
        ddr = [cell for cell in cells if cell["type"] == "SB_IO" and cell["connections"].get("D_IN_1")]
        self.assertEqual(len(ddr), len(DETECTOR_CHANNELS), "the detector pins must be sampled twice a cycle")
        self.assertGreater(sum(cell["type"].startswith("SB_RAM40") for cell in cells), 0,
                           "the queues and detection memory belong in block RAM")
        self.check_timing(report, paths)

    def test_alice(self):
        board = BOARDS["icebreaker"]
        spram = -(-_choice_words(board) // _SPRAM_WORDS) + -(-_key_words(board) // _SPRAM_WORDS)
        report, paths, _ = self.check_build(AliceCaptureTop, spram=spram, pins=3 + len(MODULATOR_OUTPUTS))
        self.check_timing(report, paths)


class ULX3SElaborationTestCase(unittest.TestCase):
    """Both tops through Amaranth for the ULX3S-85F: the gearbox sampler and block RAM of the board's sizes."""

    board = BOARDS["ulx3s-85f"]

    def prepare(self, top):
        plan = self.board.platform().prepare(top(self.board), name="top")
        rtlil = plan.files["top.il"]
        memories = sorted((int(width), int(size))
                          for width, size in re.findall(r"^\s*memory width (\d+) size (\d+) ", rtlil, re.M))
        return rtlil, memories

    def test_bob(self):
        rtlil, memories = self.prepare(BobCaptureTop)
        self.assertEqual(len(re.findall(r"cell \\IDDRX2F ", rtlil)), len(DETECTOR_CHANNELS))
        self.assertEqual(len(re.findall(r"cell \\EHXPLLL ", rtlil)), 1)
        self.assertNotIn("SB_SPRAM256KA", rtlil)
        board = self.board
        # The event queues hold their whole depth in memory; SyncFIFOBuffered (the detection memory) keeps one beat
        # of its depth in its output register.
        expected = [
            (Shape.cast(event_layout(5, 4)).width, board.event_depth),
            (Shape.cast(detection_layout(frame_width=32, frame_bits=board.frame_bits)).width, board.event_depth),
            (2, board.detection_depth - 1),
            (2, 2),                             # the flip-flops behind it
            (16, _key_words(board)),
        ]
        self.assertEqual(memories, sorted(expected))

    def test_alice(self):
        rtlil, memories = self.prepare(AliceCaptureTop)
        self.assertNotIn("IDDRX2F", rtlil)
        self.assertEqual(memories, sorted([(16, _choice_words(self.board)), (16, _key_words(self.board))]))
