"""The host protocol through simulated boards: the gateware under Verilator against its models, same seed."""

import unittest

from qkdlink.host.finite_key import DecoySettings
from qkdlink.host.protocol import ProtocolSettings
from qkdlink.sim import optics
from qkdlink.sim.boardlink import LinkTiming, run_board_link


INTENSITIES, PROBABILITIES = (0.6, 0.2, 2e-4), (0.5, 0.3, 0.2)


def zero_km_bench(timing, *, p_z, efficiency):
    """The boards' optical bench at 0 km, with no dead time or afterpulses, and the matching protocol settings."""
    bench = optics.OpticalBench(
        source=optics.Source(intensities=INTENSITIES, probabilities=PROBABILITIES, p_z=p_z),
        fibre=optics.Fibre(length_km=0),
        receiver=optics.Receiver(p_z=p_z, efficiency=efficiency, dead_time=0, afterpulse=0),
        slot_rate_hz=1e9 / timing.slot_ns)
    return bench, ProtocolSettings(DecoySettings(INTENSITIES, PROBABILITIES))


class BoardLinkTestCase(unittest.TestCase):
    def test_rtl_matches_models(self):
        timing = LinkTiming()
        bench, settings = zero_km_bench(timing, p_z=0.6, efficiency=0.1)
        results = {}
        for rtl in (False, True):
            [block] = run_board_link(bench, settings, frames=12, seed=11, rtl=rtl, timing=timing)
            results[rtl] = block
        model, rtl = results[False], results[True]
        # Far too few detections for a key: the block aborts at the estimate, after sifting on the boards.
        for block in (model, rtl):
            self.assertIn("counts", block.alice.figures)
            self.assertGreater(sum(block.alice.figures["counts"].n_z), 500)
        self.assertEqual(model.alice.figures["counts"], rtl.alice.figures["counts"])
        self.assertEqual(model.alice.figures["detections"], rtl.alice.figures["detections"])
        self.assertEqual(model.alice.abort_reason, rtl.alice.abort_reason)

    def test_blocks_follow_each_other(self):
        # The detections read past a block's last frame start the next block; dropped, they left the board's
        # detection memory out of step with the answers and the second block stalled.
        timing = LinkTiming()
        bench, settings = zero_km_bench(timing, p_z=0.5, efficiency=0.3)
        blocks = run_board_link(bench, settings, frames=10, blocks=3, seed=5, rtl=False, timing=timing)
        for block in blocks:
            # Too few detections for a key: each block ends at the estimate, after every frame was sifted.
            self.assertIn("counts", block.alice.figures, block.alice.abort_reason)
            self.assertGreater(sum(block.alice.figures["counts"].n_z), 500)


if __name__ == "__main__":
    unittest.main()
