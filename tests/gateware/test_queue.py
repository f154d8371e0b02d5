# amaranth: UnusedElaboratable=no
"""The register slice under random producers and consumers: every beat comes out once, in order, at a beat a cycle
when neither side stalls, and ``i.ready`` and ``o.valid`` follow only flip-flops."""

import random
import unittest

from amaranth.sim import Simulator

from qkdlink.gateware.queue import RegisterSlice


def _run(beats, valid_chance, ready_chance, seed):
    """Push ``beats`` through a slice with a producer offering a beat with ``valid_chance`` and a consumer ready
    with ``ready_chance`` in each cycle (seeded: a simulation); returns (beats out, cycles, stable-ready log)."""
    dut = RegisterSlice(16)
    received = []
    log = {"cycles": 0, "ready_changed_by_o_ready": False}
    rng = random.Random(seed)

    async def testbench(ctx):
        pending = list(beats)
        offered = False
        for cycle in range(20 * len(beats) + 100):
            if not offered and pending and rng.random() < valid_chance:
                ctx.set(dut.i.payload, pending[0])
                ctx.set(dut.i.valid, 1)
                offered = True
            ready_before = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, int(rng.random() < ready_chance))
            # ready must not depend on o.ready within the cycle (it is a register)
            if ctx.get(dut.i.ready) != ready_before:
                log["ready_changed_by_o_ready"] = True
            await ctx.tick()
            sampled_in = offered and ctx.get(dut.i.valid)
            # what the flip-flops saw at the edge is decided by the values set before it; read them back
            if offered and took_in[0]:
                pending.pop(0)
                offered = False
                ctx.set(dut.i.valid, 0)
            if took_out[0] is not None:
                received.append(took_out[0])
            log["cycles"] = cycle + 1
            if not pending and len(received) == len(beats):
                return
        raise AssertionError(f"only {len(received)} of {len(beats)} beats came out")

    took_in = [False]
    took_out = [None]

    async def monitor(ctx):
        async for clk_edge, rst, i_valid, i_ready, o_valid, o_ready, o_payload in ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.ready, dut.o.payload):
            took_in[0] = bool(i_valid and i_ready)
            took_out[0] = o_payload if (o_valid and o_ready) else None

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.add_process(monitor)
    sim.run()
    return received, log


class RegisterSliceTestCase(unittest.TestCase):
    def test_order_under_random_stalls(self):
        beats = [random.Random(1).randrange(1 << 16) for _ in range(300)]
        for seed, (valid_chance, ready_chance) in enumerate([(0.5, 0.5), (1.0, 0.3), (0.3, 1.0), (0.9, 0.9)]):
            with self.subTest(valid=valid_chance, ready=ready_chance):
                received, log = _run(beats, valid_chance, ready_chance, seed)
                self.assertEqual(received, beats)
                self.assertFalse(log["ready_changed_by_o_ready"])

    def test_full_rate(self):
        beats = list(range(200))
        received, log = _run(beats, 1.0, 1.0, 0)
        self.assertEqual(received, beats)
        # one beat a cycle after a latency of one cycle
        self.assertLessEqual(log["cycles"], len(beats) + 2)


if __name__ == "__main__":
    unittest.main()
