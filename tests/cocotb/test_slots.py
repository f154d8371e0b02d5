# amaranth: UnusedElaboratable=no
"""The slot assigner and the squasher as Verilog under Verilator, driven by cocotb, against their models.

Both cores go into one Verilog top (side by side, not connected), so one Verilator build tests both. The pytest
entry point at the bottom converts and builds it and runs the ``@cocotb.test()`` coroutines above it in the simulator
process. Every wait is bounded, so a lost beat fails the test instead of hanging it.
"""

import random
from pathlib import Path

import cocotb
import numpy as np
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from cocotb.triggers import ReadOnly, RisingEdge

from qkdlink.gateware.slots import SlotAssigner, Squasher
from qkdlink.host.sifting import squash
from qkdlink.sim.optics import Fibre, OpticalBench, Receiver, Source, slot_events
from qkdlink.sim.slots import assign, bench_events
from tests.cocotb import harness


# Read by both the pytest and the simulator processes.
PHASES, FRAME_BITS, FRACTION_BITS, FRAME_WIDTH = 4, 5, 24, 32


class SlotsTop(wiring.Component):
    """A :class:`SlotAssigner` and a :class:`Squasher` (ports prefixed ``sq_``), side by side."""

    def __init__(self):
        self.assigner = SlotAssigner(phases=PHASES, frame_bits=FRAME_BITS, fraction_bits=FRACTION_BITS,
                                     frame_width=FRAME_WIDTH)
        self.squasher = Squasher(frame_width=FRAME_WIDTH, frame_bits=FRAME_BITS)
        members = dict(self.assigner.signature.members.items())
        members.update({f"sq_{name}": member for name, member in self.squasher.signature.members.items()})
        super().__init__(members)

    def _cores(self):
        for prefix, core in (("", self.assigner), ("sq_", self.squasher)):
            for name, member in core.signature.members.items():
                yield member, getattr(self, prefix + name), getattr(core, name)

    def elaborate(self, platform):
        m = Module()
        m.submodules.assigner = self.assigner
        m.submodules.squasher = self.squasher
        for member, outer, inner in self._cores():
            if member.is_port:
                m.d.comb += inner.eq(outer) if member.flow == In else outer.eq(inner)
            else:
                wiring.connect(m, wiring.flipped(outer), inner)
        return m


class TB:
    """Drives the slot assigner in lockstep with a time-tagger and the squasher's streams with random stalls."""

    def __init__(self, dut, *, seed, timeout=1000):
        self.dut = dut
        self.rng = random.Random(seed)
        self.timeout = timeout
        assigner = SlotAssigner(phases=PHASES, frame_bits=FRAME_BITS, fraction_bits=FRACTION_BITS,
                                frame_width=FRAME_WIDTH)
        self.event_layout = assigner.i_events.p.shape()
        self.detection_layout = assigner.o_detections.p.shape()
        squasher = Squasher(frame_width=FRAME_WIDTH, frame_bits=FRAME_BITS)
        self.squash_in_layout = squasher.i_detections.p.shape()
        self.squash_out_layout = squasher.o_detections.p.shape()

    async def start(self):
        await harness.start(self.dut, zero=("i_events__valid", "sq_i_detections__valid", "sq_i_random__valid",
                                            "sq_o_detections__ready"))

    async def assign(self, events, *, period, delay, gate_start, gate_width):
        """Run ``events`` through the assigner (after a reset) and return its output as the model's result."""
        self.dut.period.value = period
        self.dut.delay.value = delay
        self.dut.gate_start.value = gate_start
        self.dut.gate_width.value = gate_width
        await harness.reset(self.dut)
        for _ in range(SlotAssigner.SETTINGS_LATENCY):
            await RisingEdge(self.dut.clk)
        by_cycle = {cycle: harness.pack(self.event_layout, {"cycle": cycle, "hits": hits, "fine": list(fine)})
                    for cycle, hits, fine in events}
        cycles = events[-1][0] + 1 + (period >> FRACTION_BITS) // PHASES + 2 + SlotAssigner.LATENCY
        detections = []
        for cycle in range(cycles):
            payload = by_cycle.get(cycle)
            self.dut.i_events__valid.value = payload is not None
            if payload is not None:
                self.dut.i_events__payload.value = payload
            await ReadOnly()
            if self.dut.o_detections__valid.value:
                beat = self.detection_layout.from_bits(int(self.dut.o_detections__payload.value))
                detections.append((beat.frame, beat.slot, beat.pattern))
            await RisingEdge(self.dut.clk)
        self.dut.i_events__valid.value = 0
        await ReadOnly()
        counters = {name: int(self.dut[name].value) for name in ("frames", "gated", "outside", "overrun")}
        await RisingEdge(self.dut.clk)
        return detections, counters

    async def check(self, events, **settings):
        detections, counters = await self.assign(events, **settings)
        expected = assign(events, phases=PHASES, frame_bits=FRAME_BITS, fraction_bits=FRACTION_BITS,
                          frame_width=FRAME_WIDTH, **settings)
        if detections != expected.detections:
            index = next((i for i, (a, b) in enumerate(zip(detections, expected.detections)) if a != b),
                         min(len(detections), len(expected.detections)))
            raise AssertionError(f"{settings}: detection {index} of {len(detections)} is "
                                 f"{detections[index:index + 3]}, the model's of {len(expected.detections)} "
                                 f"{expected.detections[index:index + 3]}")
        assert counters == {"frames": expected.frames, "gated": expected.gated, "outside": expected.outside,
                            "overrun": expected.overrun}, f"{settings}: counters {counters} != model {expected}"
        return expected

    async def put(self, name, payloads, stall):
        """Offer each payload in turn and wait (boundedly) for its transfer, with random idle cycles between."""
        for payload in payloads:
            await harness.idle(self.dut, self.rng, stall)
            await harness.put(self.dut, name, payload, timeout=self.timeout)

    async def get(self, name, stall):
        """Wait (boundedly) for one beat, take it and return its payload as an int."""
        await harness.idle(self.dut, self.rng, stall)
        return await harness.get(self.dut, name, timeout=self.timeout)


def _random_events(rng, cycles, *, p_sync, p_hit):
    events = []
    for cycle in range(cycles):
        hits = sum(1 << c for c in range(4) if rng.random() < p_hit) | (rng.random() < p_sync) << 4
        if hits:
            events.append((cycle, hits, [rng.randrange(PHASES) for _ in range(5)]))
    return events


@cocotb.test()
@cocotb.parametrize(clock_mhz=[100.003, 100.0])
async def bench_matches_model(dut, clock_mhz):
    """A noisy bench run (jitter, dark counts, afterpulses) with 10 ns slots on a drifting clock and on one exactly
    a slot long; syncs on time, early, late, missing and far too early; a gate that cuts through the photons."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED)
    await tb.start()
    slots = 1 << FRAME_BITS
    clock_ns = 1e3 / clock_mhz
    bin_ns = clock_ns / PHASES
    bench = OpticalBench(source=Source(intensities=(2.0, 0.8, 0.3)), fibre=Fibre(length_km=5),
                         receiver=Receiver(efficiency=0.6, dark_count=0.03, afterpulse=0.1, dead_time=1,
                                           jitter_ns=0.4),
                         slot_rate_hz=100e6, frame_slots=slots)
    run = slot_events(bench, 0, 8 * slots, rng=np.random.default_rng(cocotb.RANDOM_SEED))
    shifts = [None, 0, -2.5, 3.2, None, 0, -20, 0.7]
    sync_ns = [frame * slots * run.slot_ns - 3 * bin_ns + shift
               for frame, shift in enumerate(shifts) if shift is not None]
    events = bench_events(run, phases=PHASES, clock_ns=clock_ns, sync_ns=sync_ns, pulse_ns=1.2 * bin_ns)
    period = round(run.slot_ns / bin_ns * (1 << FRACTION_BITS))
    for gate_start, gate_width in ((1, 2), (0, 4)):
        result = await tb.check(events, period=period, delay=3, gate_start=gate_start, gate_width=gate_width)
        assert len(result.detections) > 20 and result.outside > 10 and result.frames == 6
        assert result.gated > 5 or gate_width == 4


@cocotb.test()
async def random_events_match_model(dut):
    """Random edges and syncs far more often than frames: overruns, switch cycles, frames cut short; fractional
    periods and one of exactly one cycle, delays from none to many frames."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED + 1)
    await tb.start()
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    step = PHASES << FRACTION_BITS
    exercised = {"detections": 0, "gated": 0, "outside": 0}
    for period, delay, p_sync in ((step, 0, 0.1), (step + 1, 1, 0.05), (3 * step - 12345, 7, 0.2),
                                  (step + (step >> 2), 250, 0.03)):
        events = _random_events(rng, 600, p_sync=p_sync, p_hit=0.4)
        result = await tb.check(events, period=period, delay=delay, gate_start=rng.randrange(2), gate_width=2)
        exercised["detections"] += len(result.detections)
        exercised["gated"] += result.gated
        exercised["outside"] += result.outside
    # The input is random: one setting may see no detection (a long delay and few syncs); the run as a whole must
    # exercise every outcome.
    assert all(exercised.values()), exercised


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.5])
async def squasher_matches_model(dut, stall):
    """Every pattern with every random word, then random ones; random stalls on all three streams."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED + 2)
    await tb.start()
    rng = np.random.default_rng(cocotb.RANDOM_SEED + 2)
    patterns = [pattern for pattern in range(1, 16) for _ in range(4)] + rng.integers(1, 16, 40).tolist()
    random_bits = [[word & 1, word >> 1] for _ in range(15) for word in range(4)]
    random_bits += rng.integers(0, 2, (40, 2)).tolist()
    detections = [{"frame": int(rng.integers(1 << 32)), "slot": int(rng.integers(1 << FRAME_BITS)),
                   "pattern": pattern} for pattern in patterns]
    basis, bit = squash(np.array(patterns, dtype=np.uint8), np.array(random_bits, dtype=np.uint8))
    cocotb.start_soon(tb.put("sq_i_detections", [harness.pack(tb.squash_in_layout, d) for d in detections], stall))
    cocotb.start_soon(tb.put("sq_i_random", [b0 | b1 << 1 for b0, b1 in random_bits], stall))
    for index, detection in enumerate(detections):
        beat = tb.squash_out_layout.from_bits(await tb.get("sq_o_detections", stall))
        expected = (detection["frame"], detection["slot"], int(basis[index]), int(bit[index]))
        assert (beat.frame, beat.slot, beat.basis, beat.bit) == expected, \
            f"detection {index} (pattern {detection['pattern']:#06b}): {beat} != model {expected}"
    dut.sq_o_detections__ready.value = 1
    await harness.assert_no_beats(dut, ["sq_o_detections"], cycles=8,
                                  message="the squasher produced more beats than detections")


def test_slots_verilator(tmp_path):
    harness.run(tmp_path, SlotsTop(), toplevel="slots", test_module=Path(__file__).stem)


if __name__ == "__main__":
    harness.main(test_slots_verilator)
