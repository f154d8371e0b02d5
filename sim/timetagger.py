"""The time-tagger, modelled bit for bit: from pulse times to sample words, and from sample words to events.

:func:`sample` turns pulse times into the per-cycle sample words that a board front-end presents to
:class:`qkdlink.gateware.timetagger.TimeTagger`; :func:`tag` gives the events and counters the gateware produces
from them. :func:`bench_samples` makes the sample words of a whole :class:`qkdlink.sim.optics.SlotEvents` run plus
a sync pulse train, for the tagger's tests and for the cores after it (slot assignment, benchmarks).
:func:`estimate_ns` and :func:`timestamp_errors` measure how well the tags locate the pulses. :func:`run_gateware`
runs the gateware itself in the Amaranth simulator and returns its output in the model's form.

Time in the model: tagger time 0 is the start of cycle 0. Bin ``b`` (sample ``k`` of cycle ``n``, ``b = n*P + k``)
samples the input at ``time(b) = (b * clock_ns) / P``, evaluated in float64 exactly so; a pulse starting at ``t``
is high on the samples with ``t <= time(b) < t + pulse_ns`` (``t + pulse_ns`` in float64 too). Pulses that
overlap merge.
"""

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from ..gateware.timetagger import TimeTagger


__all__ = ["Tags", "BenchSamples", "first_bin_at_or_after", "sample", "tag", "bench_samples", "estimate_ns", "timestamp_errors",
           "run_gateware"]


def _check(channels, phases):
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, not {channels!r}")
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1 or phases & (phases - 1):
        raise ValueError(f"phases must be a positive power of two, not {phases!r}")
    if channels * phases > 64:
        raise ValueError(f"a sample word holds at most 64 bits, not {channels} channels x {phases} phases")


def first_bin_at_or_after(times, clock_ns, phases):
    """For each time, the smallest bin ``b`` with ``(b * clock_ns) / phases >= time`` (float64 throughout)."""
    times = np.asarray(times, dtype=np.float64)
    bins = np.ceil(times * phases / clock_ns).astype(np.int64)
    # The estimate above rounds differently from the definition at most by one bin; settle it on the definition.
    for _ in range(4):
        early = (bins - 1) * clock_ns / phases >= times
        late = bins * clock_ns / phases < times
        if not early.any() and not late.any():
            return bins
        bins = bins - early + late
    raise AssertionError("bin search did not converge")       # pragma: no cover: would be a float64 surprise


def sample(times_ns, channel, *, channels, phases, clock_ns, pulse_ns, cycles):
    """The sample words of one channel carrying pulses that start at ``times_ns``.

    Parameters
    ----------
    times_ns : array of float
        Pulse start times in ns, tagger time (any order; pulses before 0 or after the last cycle count as far as
        they reach into the window).
    channel : int
        The channel the pulses are on, ``0 <= channel < channels``.
    channels, phases : int
        The tagger's channel count and samples per cycle (P).
    clock_ns : float
        Clock period.
    pulse_ns : float
        Pulse width, > 0.
    cycles : int
        Number of cycles (words) to make.

    Returns
    -------
    numpy.ndarray of uint64, shape (cycles,)
        Word ``n`` has bit ``channel * P + k`` set iff sample ``k`` of cycle ``n`` is high; other channels' bits
        are 0, so the words of several channels combine with ``|``.
    """
    _check(channels, phases)
    if not 0 <= channel < channels:
        raise ValueError(f"channel must lie in [0, {channels}), not {channel!r}")
    if not clock_ns > 0 or not pulse_ns > 0:
        raise ValueError(f"clock_ns and pulse_ns must be positive, not {clock_ns!r} and {pulse_ns!r}")
    times = np.asarray(times_ns, dtype=np.float64).ravel()
    total = cycles * phases
    start = np.clip(first_bin_at_or_after(times, clock_ns, phases), 0, total)
    end = np.clip(first_bin_at_or_after(times + pulse_ns, clock_ns, phases), 0, total)
    depth = np.zeros(total + 1, dtype=np.int64)
    np.add.at(depth, start, 1)
    np.add.at(depth, end, -1)
    high = (np.cumsum(depth[:total]) > 0).reshape(cycles, phases)
    weights = np.uint64(1) << (np.uint64(channel * phases) + np.arange(phases, dtype=np.uint64))
    return (high.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


@dataclass(frozen=True, eq=False)
class Tags:
    """The tagger's output for a run of sample words.

    Attributes
    ----------
    phases : int
    cycle : numpy.ndarray of int64, shape (events,)
        Ascending: the cycle of each event (one per cycle with an accepted edge).
    hits : numpy.ndarray of int64, shape (events,)
        Bit ``c`` set iff channel ``c`` has an accepted edge in that cycle.
    fine : numpy.ndarray of int64, shape (events, channels)
        The bin of channel ``c``'s accepted edge in the cycle; 0 where it has none.
    edges : int
        Accepted edges, all channels together (the gateware's 32-bit counter holds this mod 2**32).
    suppressed : int
        Edges not accepted (mod 2**32 in the gateware, likewise).
    """
    phases: int
    cycle: np.ndarray
    hits: np.ndarray
    fine: np.ndarray
    edges: int
    suppressed: int

    def __len__(self):
        return self.cycle.size

    def events(self):
        """The events as ``(cycle, hits, (fine[0], ..., fine[channels - 1]))`` tuples of ints."""
        return [(int(cycle), int(hits), tuple(int(f) for f in fine))
                for cycle, hits, fine in zip(self.cycle, self.hits, self.fine)]

    def timestamps(self, channel):
        """Channel ``channel``'s accepted edges as timestamps in bins (``cycle * phases + fine``), ascending."""
        mine = (self.hits >> channel) & 1 == 1
        return self.cycle[mine] * self.phases + self.fine[mine, channel]


def tag(samples, *, channels, phases, dead_cycles):
    """The events and counters of the time-tagger for ``samples``, as :class:`TimeTagger` computes them.

    Channel ``c``'s samples form one sequence ``s[n*P + k]`` (bit ``c*P + k`` of word ``n``); an edge is a bin
    ``b`` with ``s[b] = 1`` and ``s[b - 1] = 0``, ``s[-1] = 0``. In each cycle only a channel's first edge can be
    accepted, and only if the channel accepted no edge in the previous ``dead_cycles`` cycles; every other edge
    counts as suppressed.

    Parameters
    ----------
    samples : array of int
        One word per cycle from cycle 0 (after reset) on, as :func:`sample` makes them.
    channels, phases : int
    dead_cycles : int
        The dead time, 0 to 65535 cycles, constant over the run.

    Returns
    -------
    Tags
    """
    _check(channels, phases)
    if isinstance(dead_cycles, bool) or not isinstance(dead_cycles, int) or not 0 <= dead_cycles < 1 << 16:
        raise ValueError(f"dead_cycles must be an integer in [0, 65536), not {dead_cycles!r}")
    words = np.asarray(samples, dtype=np.uint64).ravel()
    cycles = words.size
    positions = np.arange(channels * phases, dtype=np.uint64)
    bits = ((words[:, None] >> positions) & np.uint64(1)).astype(bool).reshape(cycles, channels, phases)
    sequence = bits.transpose(1, 0, 2).reshape(channels, cycles * phases)
    previous = np.zeros_like(sequence)
    previous[:, 1:] = sequence[:, :-1]
    rising = (sequence & ~previous).reshape(channels, cycles, phases)
    count = rising.sum(axis=2)
    first = rising.argmax(axis=2)

    accepted = np.zeros((channels, cycles), dtype=bool)
    for channel in range(channels):
        last = -(1 << 17)                                   # "never", further back than any dead time
        for cycle in np.flatnonzero(count[channel]).tolist():
            if cycle - last > dead_cycles:
                accepted[channel, cycle] = True
                last = cycle
    event_cycles = np.flatnonzero(accepted.any(axis=0))
    hits = (accepted[:, event_cycles].astype(np.int64) << np.arange(channels)[:, None]).sum(axis=0)
    fine = np.where(accepted, first, 0)[:, event_cycles].T.astype(np.int64)
    edges = int(accepted.sum())
    return Tags(phases=phases, cycle=event_cycles.astype(np.int64), hits=hits.astype(np.int64),
                fine=fine.reshape(event_cycles.size, channels), edges=edges,
                suppressed=int(count.sum()) - edges)


@dataclass(frozen=True, eq=False)
class BenchSamples:
    """Sample words for a bench run, and the true pulse times behind them.

    Attributes
    ----------
    samples : numpy.ndarray of uint64, shape (cycles,)
        The words for :class:`TimeTagger` from cycle 0 on.
    times_ns : tuple of numpy.ndarray of float64
        Per channel, the ascending start times of its pulses in tagger time (ns since the start of cycle 0),
        including any that fall outside the sampled window.
    start_ns : float
        The bench time (``SlotEvents.time_ns``) of the start of cycle 0.
    clock_ns : float
    phases : int
    """
    samples: np.ndarray
    times_ns: tuple
    start_ns: float
    clock_ns: float
    phases: int


def bench_samples(events, *, phases, clock_ns, pulse_ns, sync_every=None, sync_offset_ns=0.0, sync_ns=None,
                  start_ns=None, cycles=None, channels=5):
    """The tagger's sample words for a :func:`qkdlink.sim.optics.slot_events` run and a sync pulse train.

    Channels 0 to 3 carry the detector pulses (``events.detector``), channel 4 (``channels - 1``) the sync.

    Parameters
    ----------
    events : qkdlink.sim.optics.SlotEvents
    phases : int
        Samples per cycle (P).
    clock_ns : float
        The tagger's clock period; need not relate to the slot period.
    pulse_ns : float
        Width of every pulse (detector and sync).
    sync_every : int or None
        A sync pulse starts ``sync_offset_ns`` after the start of every slot ``s`` of the run with
        ``s % sync_every == 0``. Default: ``events.frame_slots``, a sync at the start of each frame.
    sync_offset_ns : float
        Delay of each sync pulse after the start of its slot (bench time).
    sync_ns : array of float or None
        The sync pulses' bench times, instead of ``sync_every`` and ``sync_offset_ns``; ``[]`` for none.
    start_ns : float or None
        Bench time of the start of cycle 0. Default: the start of the run's first slot,
        ``events.first_slot * events.slot_ns``.
    cycles : int or None
        Number of words. Default: enough to cover the run's slots and one pulse width after them.
    channels : int
        The tagger's channel count, >= 5; channels above the sync carry nothing.

    Returns
    -------
    BenchSamples
    """
    if channels < 5:
        raise ValueError(f"the bench needs 4 detector channels and a sync channel, not {channels!r} channels")
    slots = events.alice_basis.size
    if start_ns is None:
        start_ns = events.first_slot * events.slot_ns
    if cycles is None:
        end_ns = (events.first_slot + slots) * events.slot_ns
        cycles = max(1, math.ceil((end_ns + pulse_ns - start_ns) / clock_ns))
    if sync_ns is None:
        every = events.frame_slots if sync_every is None else sync_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"sync_every must be a positive integer, not {every!r}")
        first = -(-events.first_slot // every) * every
        sync_ns = np.arange(first, events.first_slot + slots, every) * events.slot_ns + sync_offset_ns
    per_channel = [events.time_ns[events.detector == detector] for detector in range(4)]
    per_channel.append(np.asarray(sync_ns, dtype=np.float64))
    per_channel += [np.empty(0)] * (channels - 5)
    times = tuple(np.sort(np.asarray(t, dtype=np.float64) - start_ns) for t in per_channel)
    words = np.zeros(cycles, dtype=np.uint64)
    for channel, channel_times in enumerate(times):
        words |= sample(channel_times, channel, channels=channels, phases=phases, clock_ns=clock_ns,
                        pulse_ns=pulse_ns, cycles=cycles)
    return BenchSamples(samples=words, times_ns=times, start_ns=float(start_ns), clock_ns=float(clock_ns),
                        phases=phases)


def estimate_ns(bins, *, clock_ns, phases):
    """The estimated start time (ns, tagger time) of a pulse whose edge the tagger stamped at bin ``bins``.

    A rising edge at bin ``b`` means the pulse started after the sample at ``b - 1`` and no later than the one at
    ``b``, in ``((b - 1) * T, b * T]`` with ``T = clock_ns / phases``; the estimate is the middle,
    ``(b - 1/2) * T``. Without jitter in the sampling the error is then uniform over one bin: mean 0, RMS
    ``T / sqrt(12)``.
    """
    return (np.asarray(bins, dtype=np.float64) - 0.5) * clock_ns / phases


def timestamp_errors(times_ns, bins, *, clock_ns, phases):
    """The error of each tag's time estimate against the pulse that made it, in ns.

    Parameters
    ----------
    times_ns : array of float
        True start times of one channel's pulses (tagger time, as :attr:`BenchSamples.times_ns`), any order.
    bins : array of int
        That channel's tags in bins (:meth:`Tags.timestamps`).
    clock_ns, phases
        As for :func:`sample`.

    Returns
    -------
    numpy.ndarray of float64
        ``estimate_ns(b) - t`` for every tag ``b``, ``t`` the earliest pulse start in ``((b - 1) * T, b * T]``
        (the interval in which the edge says a pulse started, with the float64 sample times of :func:`sample`).

    Raises
    ------
    ValueError
        If a tag has no pulse start in its interval (tags and pulses do not belong together).
    """
    times = np.sort(np.asarray(times_ns, dtype=np.float64).ravel())
    bins = np.asarray(bins, dtype=np.int64).ravel()
    after = (bins - 1) * clock_ns / phases
    upto = bins * clock_ns / phases
    index = np.searchsorted(times, after, side="right")
    found = index < times.size
    found[found] = times[index[found]] <= upto[found]
    if not found.all():
        missing = bins[~found]
        raise ValueError(f"{missing.size} tags have no pulse that could have made them, the first at bin "
                         f"{int(missing[0])}")
    return estimate_ns(bins, clock_ns=clock_ns, phases=phases) - times[index]


def run_gateware(samples, *, channels, phases, dead_cycles, time_width=64):
    """Run ``samples`` through :class:`TimeTagger` in the Amaranth simulator.

    The samples go in from the first cycle on (cycle 0: no reset is asserted), then zeros until every event and
    the counters are out.

    Returns
    -------
    (Tags, numpy.ndarray of int64, dict)
        The events (with the counters as they stand at the end) in :func:`tag`'s form; for each event, the cycle
        in which it was on ``o_events``; and ``{"edges": [...], "suppressed": [...]}``, the counters' value in
        every cycle.

    Set the environment variable ``GENERATE_VCDS`` to write a waveform, ``timetagger.vcd``.
    """
    words = [int(word) for word in np.asarray(samples, dtype=np.uint64).ravel()]
    dut = TimeTagger(channels=channels, phases=phases, time_width=time_width)
    total = len(words) + TimeTagger.COUNTER_LATENCY + 1
    received, arrivals = [], []
    counters = {"edges": [], "suppressed": []}

    async def drive(ctx):
        ctx.set(dut.dead_cycles, dead_cycles)
        for word in words:
            ctx.set(dut.i_samples, word)
            await ctx.tick()
        ctx.set(dut.i_samples, 0)

    async def monitor(ctx):
        events = dut.o_events
        for now in range(total):
            _, _, valid, payload, edges, suppressed = await ctx.tick().sample(
                events.valid, events.payload, dut.edges, dut.suppressed)
            if valid:
                received.append((payload.cycle, payload.hits, [payload.fine[c] for c in range(channels)]))
                arrivals.append(now)
            counters["edges"].append(edges)
            counters["suppressed"].append(suppressed)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(monitor)
    with sim.write_vcd("timetagger.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
        sim.run()
    tags = Tags(phases=phases,
                cycle=np.array([cycle for cycle, _, _ in received], dtype=np.int64),
                hits=np.array([hits for _, hits, _ in received], dtype=np.int64),
                fine=np.array([fine for _, _, fine in received], dtype=np.int64).reshape(len(received), channels),
                edges=counters["edges"][-1], suppressed=counters["suppressed"][-1])
    return tags, np.array(arrivals, dtype=np.int64), counters
