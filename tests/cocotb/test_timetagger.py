# amaranth: UnusedElaboratable=no
"""The time-tagger and its event queue as Verilog under Verilator, driven by cocotb, against the model.

The pytest entry points at the bottom convert a small capture top (:class:`Capture`: a ``TimeTagger`` into an
``EventQueue``, as a board wires them) to Verilog, build it with Verilator and run the ``@cocotb.test()``
coroutines above them in the simulator process, which reads the parameters from the environment. Every wait is
bounded: the benches run a fixed number of cycles.
"""

import os
import random
from pathlib import Path

import cocotb
import numpy as np
from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from qkdlink.gateware.queue import EventQueue
from qkdlink.gateware.timetagger import TimeTagger, event_layout
from qkdlink.sim.optics import Fibre, OpticalBench, Receiver, Source, slot_events
from qkdlink.sim.timetagger import bench_samples, tag
from tests.cocotb import harness


CHANNELS = 5


class Capture(wiring.Component):
    """A ``TimeTagger`` feeding an ``EventQueue``, with the tagger's events also brought out as ``o_events``."""

    def __init__(self, *, phases, depth):
        self._phases = phases
        self._depth = depth
        layout = event_layout(CHANNELS, phases)
        super().__init__({
            "i_samples":      In(CHANNELS * phases),
            "dead_cycles":    In(16),
            "o_events":       Out(stream.Signature(layout, always_ready=True)),
            "o_queue":        Out(stream.Signature(layout)),
            "edges":          Out(32),
            "suppressed":     Out(32),
            "overflow":       Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.tagger = tagger = TimeTagger(channels=CHANNELS, phases=self._phases)
        m.submodules.queue = queue = EventQueue(event_layout(CHANNELS, self._phases), self._depth)
        wiring.connect(m, tagger.o_events, queue.i)
        wiring.connect(m, tagger.o_events, wiring.flipped(self.o_events))
        wiring.connect(m, queue.o, wiring.flipped(self.o_queue))
        m.d.comb += [
            tagger.i_samples.eq(self.i_samples),
            tagger.dead_cycles.eq(self.dead_cycles),
            self.edges.eq(tagger.edges),
            self.suppressed.eq(tagger.suppressed),
            self.overflow.eq(queue.overflow),
        ]
        return m


def _parameters():
    """The build's parameters as the simulator process sees them: from the environment the pytest side sets."""
    return (int(os.environ["TIMETAGGER_PHASES"]), float(os.environ["TIMETAGGER_CLOCK_NS"]),
            int(os.environ["TIMETAGGER_DEPTH"]))


def _loud_samples(seed, *, slots, pulse_ns):
    """Sample words of a bench with bright pulses, many dark counts and afterpulses, and a sync every 64 slots."""
    phases, clock_ns, _ = _parameters()
    bench = OpticalBench(source=Source(intensities=(3.0, 1.0, 0.2)), fibre=Fibre(length_km=0.0),
                         receiver=Receiver(efficiency=0.5, dark_count=0.03, dead_time=0, afterpulse=0.3,
                                           afterpulse_delay=2.0, jitter_ns=1.5),
                         slot_rate_hz=100.003e6, frame_slots=64)
    events = slot_events(bench, 0, slots, rng=np.random.default_rng(seed))
    return bench_samples(events, phases=phases, clock_ns=clock_ns, pulse_ns=pulse_ns, start_ns=-2.9,
                         sync_offset_ns=0.7).samples


class TB:
    """Presents sample words from cycle 0 on and records, cycle by cycle, the events, the queue's transfers and the
    counters."""

    def __init__(self, dut, *, seed):
        self.dut = dut
        self.phases, _, self.depth = _parameters()
        self.layout = event_layout(CHANNELS, self.phases)
        self.rng = random.Random(seed)

    async def start(self, dead_cycles):
        """Reset with random samples on the inputs: they must not make edges after the reset."""
        Clock(self.dut.clk, 10, unit="ns").start()
        self.dut.dead_cycles.value = dead_cycles
        self.dut.o_queue__ready.value = 0
        self.dut.rst.value = 1
        for _ in range(3):
            self.dut.i_samples.value = self.rng.getrandbits(CHANNELS * self.phases)
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def run(self, words, *, ready):
        """Cycle ``n`` presents ``words[n]``; the queue's reader is ready with probability ``ready`` until the
        words are through, then always, until it has drained."""
        self.events, self.arrivals, self.reads = [], [], []
        total = len(words) + TimeTagger.COUNTER_LATENCY + 4 * self.depth
        for now in range(total):
            self.dut.i_samples.value = int(words[now]) if now < len(words) else 0
            taking = self.rng.random() < ready or now >= len(words) + TimeTagger.LATENCY
            self.dut.o_queue__ready.value = taking
            await ReadOnly()
            if self.dut.o_events__valid.value:
                self.events.append(int(self.dut.o_events__payload.value))
                self.arrivals.append(now)
            if taking and self.dut.o_queue__valid.value:
                self.reads.append((now, int(self.dut.o_queue__payload.value)))
            await RisingEdge(self.dut.clk)
        await ReadOnly()
        assert not self.dut.o_queue__valid.value, "the queue did not drain"
        self.counters = (int(self.dut.edges.value), int(self.dut.suppressed.value), int(self.dut.overflow.value))

    def as_tuple(self, bits):
        event = self.layout.from_bits(bits)
        return (event.cycle, event.hits, tuple(event.fine[c] for c in range(CHANNELS)))

    def check_events(self, expected):
        """The tagger's events and their cycles against the model."""
        events = [self.as_tuple(bits) for bits in self.events]
        model = expected.events()
        for index, (event, wanted) in enumerate(zip(events, model)):
            assert event == wanted, f"event {index}: {event} != model {wanted}"
        assert len(events) == len(model), f"{len(events)} events, the model has {len(model)}"
        assert self.arrivals == (expected.cycle + TimeTagger.LATENCY).tolist(), "events not LATENCY cycles late"


def _queue_keeps(arrivals, reads, depth):
    """Which arrivals the queue keeps: a beat is dropped iff the queue holds ``depth`` beats when it comes."""
    kept, read_before = [], 0
    for index, now in enumerate(arrivals):
        while read_before < len(reads) and reads[read_before][0] < now:
            read_before += 1
        if len(kept) - read_before < depth:
            kept.append(index)
    return kept


@cocotb.test()
@cocotb.parametrize(dead_cycles=[0, 3])
async def tagger_matches_model(dut, dead_cycles):
    """Bench pulses, bursts of dark counts and afterpulses, jitter across cycle boundaries; a reader that keeps up."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED + dead_cycles)
    await tb.start(dead_cycles)
    words = _loud_samples(cocotb.RANDOM_SEED + dead_cycles, slots=5000, pulse_ns=3.0)
    expected = tag(words, channels=CHANNELS, phases=tb.phases, dead_cycles=dead_cycles)
    await tb.run(words, ready=1.0)
    tb.check_events(expected)
    assert [bits for _, bits in tb.reads] == tb.events, "the queue changed the events"
    assert tb.counters == (expected.edges, expected.suppressed, 0), \
        f"counters (edges, suppressed, overflow) {tb.counters} != model {(expected.edges, expected.suppressed, 0)}"
    assert len(expected) > 300, "the stimulus is too quiet to test anything"
    # Two phases make at most one edge a cycle: only a dead time suppresses any.
    assert expected.suppressed > 20 or (tb.phases == 2 and dead_cycles == 0), "nothing suppressed"


@cocotb.test()
async def queue_drops_exactly(dut):
    """A slow reader: the queue keeps exactly the events that find room, in order, and counts the rest."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED + 7)
    await tb.start(0)
    words = _loud_samples(cocotb.RANDOM_SEED + 7, slots=5000, pulse_ns=4.0)
    expected = tag(words, channels=CHANNELS, phases=tb.phases, dead_cycles=0)
    await tb.run(words, ready=0.25)
    tb.check_events(expected)
    kept = _queue_keeps(tb.arrivals, tb.reads, tb.depth)
    assert [bits for _, bits in tb.reads] == [tb.events[index] for index in kept], "wrong events in the queue"
    dropped = len(tb.events) - len(kept)
    assert dropped > 50, "the reader kept up: nothing tested"
    assert tb.counters == (expected.edges, expected.suppressed, dropped), \
        f"counters (edges, suppressed, overflow) {tb.counters} != {(expected.edges, expected.suppressed, dropped)}"


def _run(tmp_path, *, phases, clock_ns, depth):
    env = {"TIMETAGGER_PHASES": str(phases), "TIMETAGGER_CLOCK_NS": repr(clock_ns),
           "TIMETAGGER_DEPTH": str(depth)}
    harness.run(tmp_path, Capture(phases=phases, depth=depth), toplevel="capture", test_module=Path(__file__).stem,
                env=env)


def test_timetagger_verilator_ice40(tmp_path):
    """Two phases at 48 MHz, as on the iCE40."""
    _run(tmp_path, phases=2, clock_ns=1000 / 48, depth=8)


def test_timetagger_verilator_ecp5(tmp_path):
    """Four phases at 100 MHz, as on the ECP5."""
    _run(tmp_path, phases=4, clock_ns=10.0, depth=16)


if __name__ == "__main__":
    harness.main(lambda directory: _run(directory, phases=4, clock_ns=10.0, depth=16))
