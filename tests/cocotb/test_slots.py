# amaranth: UnusedElaboratable=no
"""The slot assigner and the squasher as Verilog under Verilator, driven by cocotb, against their models.

Both cores go into one Verilog top (side by side, not connected), so one Verilator build tests both. The pytest
entry point at the bottom converts and builds it and runs the ``@cocotb.test()`` coroutines above it in the simulator
process. Every wait is bounded, so a lost beat fails the test instead of hanging it.
"""

import os
import random
from pathlib import Path

import cocotb
import numpy as np
from amaranth import Module
from amaranth.hdl import Const, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from qkdlink.gateware.slots import SlotAssigner, Squasher
from qkdlink.host.sifting import squash
from qkdlink.sim.optics import Fibre, OpticalBench, Receiver, Source, slot_events
from qkdlink.sim.slots import assign, bench_events


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


def ports(component):
    """The component's ports for ``verilog.convert``: its signature's, without the constant ``ready`` of an
    ``always_ready`` stream (which ``convert`` would otherwise refuse as a port)."""
    result = {}
    for path, _, value in component.signature.flatten(component):
        value = Value.cast(value)
        if not isinstance(value, Const):
            result["__".join(map(str, path))] = (value, None)
    return result


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
        Clock(self.dut.clk, 10, unit="ns").start()
        for name in ("i_events__valid", "sq_i_detections__valid", "sq_i_random__valid", "sq_o_detections__ready"):
            self.dut[name].value = 0
        await self.reset()

    async def reset(self):
        self.dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def assign(self, events, *, period, delay, gate_start, gate_width):
        """Run ``events`` through the assigner (after a reset) and return its output as the model's result."""
        self.dut.period.value = period
        self.dut.delay.value = delay
        self.dut.gate_start.value = gate_start
        self.dut.gate_width.value = gate_width
        await self.reset()
        for _ in range(SlotAssigner.SETTINGS_LATENCY):
            await RisingEdge(self.dut.clk)
        by_cycle = {cycle: int(self.event_layout.const({"cycle": cycle, "hits": hits, "fine": list(fine)})
                               .as_value().value)
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

    async def _idle(self, stall):
        while self.rng.random() < stall:
            await RisingEdge(self.dut.clk)

    async def put(self, name, payloads, stall):
        """Offer each payload in turn and wait (boundedly) for its transfer, with random idle cycles between."""
        for payload in payloads:
            await self._idle(stall)
            self.dut[f"{name}__payload"].value = payload
            self.dut[f"{name}__valid"].value = 1
            for _ in range(self.timeout):
                await ReadOnly()
                accepted = bool(self.dut[f"{name}__ready"].value)
                await RisingEdge(self.dut.clk)
                if accepted:
                    break
            else:
                raise AssertionError(f"{name} did not accept a beat within {self.timeout} cycles")
            self.dut[f"{name}__valid"].value = 0

    async def get(self, name, stall):
        """Wait (boundedly) for one beat, take it and return its payload as an int."""
        await self._idle(stall)
        self.dut[f"{name}__ready"].value = 1
        for _ in range(self.timeout):
            await ReadOnly()
            valid = bool(self.dut[f"{name}__valid"].value)
            payload = int(self.dut[f"{name}__payload"].value)
            await RisingEdge(self.dut.clk)
            if valid:
                self.dut[f"{name}__ready"].value = 0
                return payload
        raise AssertionError(f"no {name} beat within {self.timeout} cycles")


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
    for period, delay, p_sync in ((step, 0, 0.1), (step + 1, 1, 0.05), (3 * step - 12345, 7, 0.2),
                                  (step + (step >> 2), 250, 0.03)):
        events = _random_events(rng, 600, p_sync=p_sync, p_hit=0.4)
        result = await tb.check(events, period=period, delay=delay, gate_start=rng.randrange(2), gate_width=2)
        assert result.detections and result.gated and result.outside


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
    cocotb.start_soon(tb.put("sq_i_detections", [int(tb.squash_in_layout.const(d).as_value().value)
                                                 for d in detections], stall))
    cocotb.start_soon(tb.put("sq_i_random", [b0 | b1 << 1 for b0, b1 in random_bits], stall))
    for index, detection in enumerate(detections):
        beat = tb.squash_out_layout.from_bits(await tb.get("sq_o_detections", stall))
        expected = (detection["frame"], detection["slot"], int(basis[index]), int(bit[index]))
        assert (beat.frame, beat.slot, beat.basis, beat.bit) == expected, \
            f"detection {index} (pattern {detection['pattern']:#06b}): {beat} != model {expected}"
    dut.sq_o_detections__ready.value = 1
    for _ in range(8):
        await ReadOnly()
        assert not dut.sq_o_detections__valid.value, "the squasher produced more beats than detections"
        await RisingEdge(dut.clk)


def _run(tmp_path):
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    top = SlotsTop()
    source = tmp_path / "slots.v"
    source.write_text(verilog.convert(top, name="slots", ports=ports(top)))
    runner = get_runner(os.getenv("SIM", "verilator"))
    # Amaranth's generated Verilog is not written to Verilator's lint rules (widths, incomplete cases).
    runner.build(sources=[source], hdl_toplevel="slots", build_dir=tmp_path / "sim_build",
                 build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style"],
                 waves=bool(int(os.getenv("WAVES", "0"))))
    runner.test(hdl_toplevel="slots", test_module=Path(__file__).stem, build_dir=tmp_path / "sim_build",
                test_dir=Path(__file__).parent, results_xml=str(tmp_path / "results.xml"))


def test_slots_verilator(tmp_path):
    _run(tmp_path)


if __name__ == "__main__":
    import tempfile
    from qkdlink import toolchain
    toolchain.setup()
    with tempfile.TemporaryDirectory() as directory:
        _run(Path(directory))
