# amaranth: UnusedElaboratable=no
"""The Verilator stepper (qkdlink.sim.verilator) against the host model: a real core, many cycles a call."""

import tempfile
import unittest

import numpy as np
from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from qkdlink.gateware.sifter import Sifter
from qkdlink.host.sifting import matches, sift
from qkdlink.sim.verilator import VerilatedModel, build_library, component_ports


class _Delay(wiring.Component):
    """Registers ``i`` into ``o``: shows when the stepper sets inputs and records outputs."""
    i: In(8)
    o: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.o.eq(self.i)
        return m


class VerilatorTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._directory = tempfile.TemporaryDirectory()
        cls.build_dir = cls._directory.name

    @classmethod
    def tearDownClass(cls):
        cls._directory.cleanup()

    def test_ports(self):
        self.assertEqual([(port.name, port.kind, port.width) for port in component_ports(Sifter())],
                         [("i_detections", "sink", 5), ("o_match", "source", 3), ("o_key", "source", 1),
                          ("o_test", "source", 3)])

    def test_plain_ports(self):
        model = VerilatedModel(*build_library(_Delay(), "delay", build_dir=self.build_dir))
        _, _, recorded = model.step(5, inputs={"i": [10, 11, 12, 13, 14]}, record=["o"])
        # Recorded in the cycle, before its clock edge: the value registered at the previous edge.
        self.assertEqual(recorded["o"].tolist(), [0, 10, 11, 12, 13])
        _, _, recorded = model.step(2, record=["o"])           # the input holds its last value
        self.assertEqual(recorded["o"].tolist(), [14, 14])
        self.assertEqual(model.cycle, 7)
        with self.assertRaisesRegex(KeyError, "no ports"):
            model.step(1, inputs={"x": 0})

    def test_sifter(self):
        rng = np.random.default_rng(5)
        count = 20_000
        bases, bits, alice_bases = (rng.integers(0, 2, count, dtype=np.uint8) for _ in range(3))
        intensities = rng.integers(0, 4, count, dtype=np.uint8)
        words = (bases.astype(np.uint64) | bits.astype(np.uint64) << 1 | alice_bases.astype(np.uint64) << 2 |
                 intensities.astype(np.uint64) << 3)
        model = VerilatedModel(*build_library(Sifter(), "sifter", build_dir=self.build_dir))
        produced = {"o_match": [], "o_key": [], "o_test": []}
        offered = 0
        # Small capacities stall the outputs; the sink is fed in pieces, as a link would.
        for piece in np.array_split(words, 7):
            remaining = piece
            for _ in range(100):
                taken, out, _ = model.step(3000, sinks={"i_detections": remaining},
                                           capacity={"o_match": 500, "o_key": 200, "o_test": 100})
                offered += taken["i_detections"]
                remaining = remaining[taken["i_detections"]:]
                for name in produced:
                    produced[name].extend(out[name].tolist())
                if not remaining.size:
                    break
        model.step(100)
        self.assertEqual(offered, count)
        sifted = sift(bases, bits, alice_bases, intensities)
        expected_match = (matches(bases, alice_bases, intensities).astype(np.uint64) |
                          intensities.astype(np.uint64) << 1)
        self.assertEqual(produced["o_match"], expected_match.tolist())
        self.assertEqual(produced["o_key"], sifted.key.tolist())
        self.assertEqual(produced["o_test"], (sifted.test.astype(np.uint64) |
                                              sifted.test_intensity.astype(np.uint64) << 1).tolist())


if __name__ == "__main__":
    unittest.main()
