# amaranth: UnusedElaboratable=no
"""Bitstreams for every board, built with the open toolchain from PyPI, must fit and meet their clock."""

import tempfile
import unittest

from qkdlink.boards.build import BuildReport, TimingError, build
from qkdlink.boards.clocks import ecp5_pll_settings, ice40_pll_settings
from qkdlink.boards.platforms import BOARDS, board
from qkdlink.boards.toeplitz_top import ToeplitzBenchTop


class PLLSettingsTestCase(unittest.TestCase):
    def test_ice40_matches_icepll(self):
        # `icepll -i 12 -o 48`: DIVR 0, DIVF 63, DIVQ 4, FILTER_RANGE 1.
        self.assertEqual(ice40_pll_settings(12e6, 48e6), (0, 63, 4, 48e6))

    def test_ecp5_matches_ecppll(self):
        # `ecppll -i 25 -o 100`: refclk divisor 1, feedback divisor 4, clkout0 divisor 6, VCO 600 MHz.
        self.assertEqual(ecp5_pll_settings(25e6, 100e6), (1, 4, 6, 100e6))

    def test_unreachable(self):
        with self.assertRaisesRegex(ValueError, r"cannot make 1000.000 MHz from 12.000 MHz"):
            ice40_pll_settings(12e6, 1e9)


class BoardTestCase(unittest.TestCase):
    def test_unknown_board(self):
        with self.assertRaisesRegex(ValueError, r"unknown board 'nexys'; known boards: icebreaker, ulx3s-85f"):
            board("nexys")

    def test_block_must_fit(self):
        with self.assertRaisesRegex(ValueError, r"do not fit icebreaker \(1 <= m <= n <= 65536\)"):
            ToeplitzBenchTop(board("icebreaker"), n=1 << 17, m=1 << 16)

    def test_timing_check(self):
        report = BuildReport(board="b", device="d", fmax={"clk": (47.5, 48.0)}, utilization={}, bitstream=b"")
        with self.assertRaisesRegex(TimingError, r"b: clock clk reaches 47.50 MHz, below its 48.00 MHz target"):
            report.check_timing()


class BitstreamTestCase(unittest.TestCase):
    """Place and route the Toeplitz core at the size each board is built with (docs/toeplitz.md)."""

    def check_board(self, name, n):
        target = BOARDS[name]
        with tempfile.TemporaryDirectory() as build_dir:
            report = build(target, ToeplitzBenchTop(target, n=n, m=n // 2), build_dir=build_dir)
        self.assertTrue(report.bitstream, "no bitstream")
        # nextpnr derives the clock's constraint from the PLL; it must be the board's target.
        [(achieved, constraint)] = report.fmax.values()
        self.assertAlmostEqual(constraint, target.frequency / 1e6, delta=0.1)
        report.check_timing()
        for kind, (used, available) in report.utilization.items():
            self.assertLessEqual(used, available, kind)
        return report

    def test_icebreaker(self):
        report = self.check_board("icebreaker", 1 << 16)
        used, available = report.utilization["ICESTORM_LC"]
        self.assertLess(used, 0.75 * available, "the Toeplitz core must leave room for the capture path")

    def test_ulx3s_85f(self):
        self.check_board("ulx3s-85f", 1 << 18)
