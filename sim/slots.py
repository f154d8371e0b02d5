"""Slot assignment and gating, modelled bit for bit: which frame and slot each detector edge belongs to.

:func:`assign` is the reference model of :class:`qkdlink.gateware.slots.SlotAssigner`: from the time-tagger's
events (as :meth:`qkdlink.sim.timetagger.Tags.events` gives them) it computes the detections and counters the
gateware produces. :func:`bench_events` makes those events for a run of the optical bench, and
:func:`run_gateware` runs the gateware itself in the Amaranth simulator and returns its output in the same form.
The squasher after the assigner has its model in :func:`qkdlink.host.sifting.squash`.

The definition
--------------
Time is counted in bins of 1/P clock cycle (P = ``phases``): an edge on channel ``c`` of the event of cycle ``n``
lies at bin ``t = n * P + fine[c]``. Channel ``detectors`` is the sync; the others are detectors.

- Every sync edge, at bin ``t_s``, starts a frame at bin ``B0 = t_s + delay``; frames are numbered 0, 1, 2, ... in
  the order of their syncs (modulo ``2 ** frame_width``).
- A detector edge at bin ``t`` belongs to the started frame with the latest ``B0 <= t``. With
  ``x = (t - B0) << fraction_bits``, its slot is ``x // period`` and its phase ``(x % period) >> fraction_bits``
  (``period`` is the slot period in bins, a fixed-point number with ``fraction_bits`` fraction bits).
- The edge is accepted iff ``slot < 2 ** frame_bits`` and ``gate_start <= phase < gate_start + gate_width``. Each
  (frame, slot) with at least one accepted edge gives one detection, whose pattern is the OR of its edges'
  channels (bit ``c`` for detector ``c``); detections come in time order.
- Counters: ``frames`` counts sync edges; ``outside`` detector edges before the first started frame or in a slot
  ``>= 2 ** frame_bits``; ``gated`` accepted-slot edges whose phase lies outside the gate; ``overrun`` the syncs
  whose frame never starts (see below). All four are 32-bit counters in the gateware (modulo ``2 ** 32``).

Two rules make the definition one that gateware can follow in real time, one clock cycle at a time, with one
frame start a cycle and one detection a cycle. Both concern the *switch cycle* of a frame, the clock cycle that
holds the previous frame's last bin, ``B0 - 1``: the cycle of ``B0`` itself, or the cycle before when ``B0`` is a
cycle's first bin.

- **Switch cycle.** In a frame's switch cycle, an edge of the previous frame that lies in a later slot than the
  bin at the start of the cycle (the previous frame's slot ``s + 1`` where the cycle began in slot ``s``) counts as
  ``outside``.
- **Overrun.** A frame starts only if the next sync edge comes in a cycle after the frame's switch cycle plus one:
  if ``n_next <= switch_cycle + 1`` (``n_next`` the cycle of the next sync edge) the frame never starts, its number
  is skipped and ``overrun`` counts it. In other words a frame start must come at least one clock cycle before
  the start of the next sync's cycle; normally a sync comes once a frame and a frame is many cycles long.
"""

import os
from bisect import bisect_right
from contextlib import nullcontext
from dataclasses import dataclass

from amaranth.sim import Simulator

from ..gateware.slots import SlotAssigner
from .timetagger import bench_samples, tag


__all__ = ["Assignment", "assign", "bench_events", "run_gateware"]


_COUNTERS = ("frames", "gated", "outside", "overrun")


@dataclass(frozen=True)
class Assignment:
    """The slot assigner's output for a run of events.

    Attributes
    ----------
    detections : list of (int, int, int)
        ``(frame, slot, pattern)`` of every detection, in time order.
    frames, gated, outside, overrun : int
        The counters at the end of the run (modulo ``2 ** 32``).
    """
    detections: list
    frames: int
    gated: int
    outside: int
    overrun: int


def _check_settings(*, phases, frame_bits, fraction_bits, period, delay, gate_start, gate_width):
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1 or phases & (phases - 1):
        raise ValueError(f"phases must be a positive power of two, not {phases!r}")
    if not isinstance(frame_bits, int) or frame_bits < 1:
        raise ValueError(f"frame_bits must be a positive integer, not {frame_bits!r}")
    if not isinstance(fraction_bits, int) or fraction_bits < 0:
        raise ValueError(f"fraction_bits must be a non-negative integer, not {fraction_bits!r}")
    if not isinstance(period, int) or not phases << fraction_bits <= period < 1 << (16 + fraction_bits):
        raise ValueError(f"period must be an integer in [{phases << fraction_bits}, 2**{16 + fraction_bits}) "
                         f"(one clock cycle to 2**16 bins), not {period!r}")
    if not isinstance(delay, int) or not 0 <= delay < 1 << 32:
        raise ValueError(f"delay must be an integer in [0, 2**32), not {delay!r}")
    for name, value in (("gate_start", gate_start), ("gate_width", gate_width)):
        if not isinstance(value, int) or not 0 <= value < 1 << 16:
            raise ValueError(f"{name} must be an integer in [0, 2**16), not {value!r}")


def assign(events, *, phases, frame_bits, period, delay, gate_start, gate_width, detectors=4, fraction_bits=24,
           frame_width=32):
    """The detections and counters of :class:`qkdlink.gateware.slots.SlotAssigner` for ``events``.

    Parameters
    ----------
    events : iterable of (int, int, sequence of int)
        The time-tagger's events ``(cycle, hits, fine)`` in ascending cycles, at most one a cycle; ``fine`` has
        one entry per channel (``detectors + 1``), the sync last.
    phases : int
        Bins per clock cycle (P).
    frame_bits : int
        A frame has ``2 ** frame_bits`` slots.
    period : int
        Slot period in bins times ``2 ** fraction_bits``; at least one clock cycle (``phases << fraction_bits``).
    delay : int
        Bins from a sync edge to the start of its frame, 0 to ``2 ** 32 - 1``.
    gate_start, gate_width : int
        The accepted phases of a slot, in whole bins: ``gate_start <= phase < gate_start + gate_width``.
    detectors : int
        Detector channels; channel ``detectors`` is the sync.
    fraction_bits : int
    frame_width : int
        Width of the frame numbers; they count modulo ``2 ** frame_width``.

    Returns
    -------
    Assignment
    """
    _check_settings(phases=phases, frame_bits=frame_bits, fraction_bits=fraction_bits, period=period, delay=delay,
                    gate_start=gate_start, gate_width=gate_width)
    syncs, edges = [], []
    previous = None
    for cycle, hits, fine in events:
        if previous is not None and cycle <= previous:
            raise ValueError(f"events must come in ascending cycles, one a cycle: cycle {cycle} after {previous}")
        previous = cycle
        for channel in range(detectors + 1):
            if hits >> channel & 1:
                if not 0 <= fine[channel] < phases:
                    raise ValueError(f"fine time {fine[channel]!r} of channel {channel} in cycle {cycle} is not "
                                     f"a bin of a cycle of {phases}")
                t = cycle * phases + fine[channel]
                if channel == detectors:
                    syncs.append(t)
                else:
                    edges.append((t, channel))

    # The frames that start: their start bins, switch cycles and numbers, all ascending.
    starts, switches, numbers = [], [], []
    overrun = 0
    for index, t in enumerate(syncs):
        start = t + delay
        switch = (start - 1) // phases
        if index + 1 < len(syncs) and syncs[index + 1] // phases <= switch + 1:
            overrun += 1
            continue
        starts.append(start)
        switches.append(switch)
        numbers.append(index)

    patterns = {}
    gated = outside = 0
    for t, channel in edges:
        frame = bisect_right(starts, t) - 1
        if frame < 0:
            outside += 1
            continue
        slot, rest = divmod((t - starts[frame]) << fraction_bits, period)
        cycle = t // phases
        if frame + 1 < len(starts) and switches[frame + 1] == cycle:
            first = ((cycle * phases - starts[frame]) << fraction_bits) // period
            if slot > first:
                outside += 1
                continue
        if slot >= 1 << frame_bits:
            outside += 1
            continue
        phase = rest >> fraction_bits
        if not gate_start <= phase < gate_start + gate_width:
            gated += 1
            continue
        key = (numbers[frame], slot)
        patterns[key] = patterns.get(key, 0) | 1 << channel

    mask = (1 << 32) - 1
    detections = [(number % (1 << frame_width), slot, pattern)
                  for (number, slot), pattern in sorted(patterns.items())]
    return Assignment(detections=detections, frames=len(syncs) & mask, gated=gated & mask,
                      outside=outside & mask, overrun=overrun & mask)


def bench_events(events, *, phases, clock_ns, sync_ns, pulse_ns=2.0, start_ns=None, cycles=None, dead_cycles=0):
    """The time-tagger's events for a :func:`qkdlink.sim.optics.slot_events` run and a train of sync pulses.

    The pulses go through the tagger's models, :func:`qkdlink.sim.timetagger.bench_samples` and
    :func:`~qkdlink.sim.timetagger.tag` (detectors on channels 0 to 3, the sync on channel 4): the events the
    assigner sees, as ``(cycle, hits, fine)`` tuples. ``sync_ns`` are the sync pulses' bench times; the other
    parameters are those of the two functions.
    """
    samples = bench_samples(events, phases=phases, clock_ns=clock_ns, pulse_ns=pulse_ns, sync_ns=sync_ns,
                            start_ns=start_ns, cycles=cycles)
    return tag(samples.samples, channels=5, phases=phases, dead_cycles=dead_cycles).events()


def run_gateware(events, *, phases, frame_bits, period, delay, gate_start, gate_width, detectors=4,
                 fraction_bits=24, frame_width=32, cycles=None):
    """Run ``events`` through :class:`SlotAssigner` in the Amaranth simulator, in lockstep.

    The event of cycle ``n`` is presented in the ``n``-th clock cycle after the settings are applied (``valid`` low
    in cycles without one), then the simulation runs on until every slot that began has closed and the pipeline has
    drained. Parameters as for :func:`assign`; ``cycles``, if given, runs that many cycles of input instead of up to
    the last event.

    Returns
    -------
    Assignment
        The detections the gateware emitted, in the order it emitted them, and its counters at the end.

    Set the environment variable ``GENERATE_VCDS`` to write a waveform, ``slots.vcd``.
    """
    _check_settings(phases=phases, frame_bits=frame_bits, fraction_bits=fraction_bits, period=period, delay=delay,
                    gate_start=gate_start, gate_width=gate_width)
    events = [(int(cycle), int(hits), [int(f) for f in fine]) for cycle, hits, fine in events]
    dut = SlotAssigner(detectors=detectors, phases=phases, frame_bits=frame_bits, fraction_bits=fraction_bits,
                       frame_width=frame_width)
    layout = dut.i_events.p.shape()
    by_cycle = {cycle: layout.const({"cycle": cycle, "hits": hits, "fine": fine}) for cycle, hits, fine in events}
    if cycles is None:
        cycles = events[-1][0] + 1 if events else 0
    # A slot closes when the tracker passes its end: at most a slot period (in cycles) after its last edge.
    tail = (period >> fraction_bits) // phases + 2 + SlotAssigner.LATENCY
    received = []
    counters = {}

    async def bench(ctx):
        ctx.set(dut.delay, delay)
        ctx.set(dut.period, period)
        ctx.set(dut.gate_start, gate_start)
        ctx.set(dut.gate_width, gate_width)
        await ctx.tick().repeat(SlotAssigner.SETTINGS_LATENCY)
        output = dut.o_detections
        for cycle in range(cycles + tail):
            event = by_cycle.get(cycle)
            ctx.set(dut.i_events.valid, event is not None)
            if event is not None:
                ctx.set(dut.i_events.payload, event)
            _, _, valid, payload = await ctx.tick().sample(output.valid, output.payload)
            if valid:
                received.append((payload.frame, payload.slot, payload.pattern))
        for name in _COUNTERS:
            counters[name] = ctx.get(getattr(dut, name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    with sim.write_vcd("slots.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
        sim.run()
    return Assignment(detections=received, **counters)
