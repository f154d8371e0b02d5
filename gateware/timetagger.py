"""Time-tagger: edges on detector and sync inputs, time-stamped in bins finer than one clock cycle.

A board front-end (:mod:`qkdlink.gateware.sampler`) samples every input ``phases`` (P) times a clock cycle and
presents the samples of one cycle at once; :class:`TimeTagger` finds the rising edges in them and emits, for every
cycle with at least one accepted edge, one event: the cycle's number and, per channel, whether it had an edge and
at which of the P bins. A timestamp counts bins since reset, ``cycle * P + fine``; the ``cycle`` an event carries
is the cycle in which the samples were presented, so the tagger's latency never shows in the timestamps.

What a timestamp means: sample ``k`` of cycle ``n`` looks at the input at bin ``b = n*P + k``, so a rising edge at
bin ``b`` says the pulse began after the sample at ``b - 1`` and no later than the one at ``b``: in the bin-wide
interval ``((b - 1) * T, b * T]``, ``T`` = clock period / P. :func:`qkdlink.sim.timetagger.estimate_ns` takes its
middle as the estimate; without jitter the error is then uniform over one bin (RMS ``T / sqrt(12)``).

Each channel takes at most one edge a clock cycle (the first), and after an accepted edge ignores edges for a
run-time number of cycles (a dead time, in whole cycles, which also stops a detector's ringing from flooding the
event stream). Edges not taken are counted, not lost silently. The tagger cannot stall: its output is an
``always_ready`` stream, which goes into an :class:`qkdlink.gateware.queue.EventQueue` that counts what it
drops.

The bit-exact model is :func:`qkdlink.sim.timetagger.tag`.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


__all__ = ["event_layout", "TimeTagger"]


def event_layout(channels, phases, *, time_width=64):
    """The layout of one time-tagger event: every edge of one clock cycle.

    A bin is 1/``phases`` of a clock cycle. ``cycle`` counts clock cycles since reset; channel ``c`` has an edge
    in this cycle if ``hits[c]`` is set, at bin ``fine[c]`` of the cycle, so its ``time_width``-bit timestamp in
    bins is ``cycle * phases + fine[c]``.
    """
    fine_width = (phases - 1).bit_length()
    if phases < 1 or phases & (phases - 1):
        raise TypeError(f"Phases must be a positive power of two, not {phases!r}")
    return data.StructLayout({
        "cycle": unsigned(time_width - fine_width),
        "hits":  unsigned(channels),
        "fine":  data.ArrayLayout(unsigned(fine_width), channels),
    })


def _wide_counter(m, width, *, init, segment=16):
    """A free-running up-counter of ``width`` bits that stays fast however wide it is.

    The counter is cut into segments of ``segment`` bits; segment ``j`` counts up in the cycle after all lower
    segments reach all ones, and a register computes that condition one cycle early (from the lowest segment being
    one short of all ones). So the longest path is one segment's increment, not ``width`` bits of carry, and the
    concatenated value is exact in every cycle: ``init + t`` (mod ``2**width``) in cycle ``t`` after reset.
    (On the UP5K a plain 63-bit counter reaches about 35 MHz; with 16-bit segments the tagger's slowest paths are
    its 32-bit event counters, at about 62 MHz.)
    """
    bounds = [(low, min(low + segment, width)) for low in range(0, width, segment)]
    segments = [Signal(high - low, init=(init >> low) & ((1 << (high - low)) - 1), name=f"count_{index}")
                for index, (low, high) in enumerate(bounds)]
    m.d.sync += segments[0].eq(segments[0] + 1)
    for index in range(1, len(segments)):
        low = bounds[index][0]
        lower_full = (init & ((1 << low) - 1)) == (1 << low) - 1
        carry = Signal(init=lower_full, name=f"carry_{index}")
        # In the next cycle the lower segments are all ones iff segment 0 is one short of it now and the others
        # are all ones already (they cannot change this cycle: segment 0 is not all ones).
        m.d.sync += carry.eq((segments[0] == (1 << len(segments[0])) - 2) &
                             Cat(*segments[1:index]).all())
        m.d.sync += segments[index].eq(segments[index] + carry)
    return Cat(*segments)


class TimeTagger(wiring.Component):
    """Rising edges of ``channels`` inputs, sampled ``phases`` times a clock cycle, as timestamped events.

    Edge rule (:func:`qkdlink.sim.timetagger.tag` implements it literally): channel ``c``'s samples form one
    sequence ``s[n*P + k]`` (sample ``k`` of cycle ``n``); there is an edge at bin ``b`` where ``s[b] = 1`` and
    ``s[b - 1] = 0``, with ``s[-1] = 0`` (an input already high at reset gives an edge at bin 0). In each cycle
    only the channel's first edge can be accepted, and it is accepted iff the channel accepted no edge in the
    previous ``dead_cycles`` cycles (``n - dead_cycles`` .. ``n - 1``); edges not accepted do not extend the dead
    time.

    Parameters
    ----------
    channels : int
        Number of inputs (0 = Z0, 1 = Z1, 2 = X0, 3 = X1, 4 = sync on the receiver).
    phases : int
        Samples per clock cycle and input, P; a power of two (2 on the iCE40, 4 on the ECP5).
    time_width : int
        Width of a timestamp in bins; ``cycle`` has ``time_width - log2(P)`` bits and wraps.

    Members
    -------
    i_samples : In(channels * phases)
        Bit ``c * phases + k`` is channel ``c``'s sample ``k`` of this cycle (``k = 0`` earliest). Asynchronous:
        the tagger puts it through a two-stage synchronizer first.
    dead_cycles : In(16)
        Per-channel dead time in clock cycles (0: only the one-edge-a-cycle rule). A channel reads it when it
        accepts an edge, so a change applies from each channel's next accepted edge on; the model assumes it
        constant.
    o_events : Out(stream.Signature(event_layout(channels, phases, time_width=time_width), always_ready=True))
        One beat in every cycle that had at least one accepted edge, :attr:`LATENCY` cycles after its samples were
        presented. ``cycle`` is the number of the cycle in which they were presented (the first cycle after reset
        is cycle 0); ``hits[c]`` marks channel ``c``'s accepted edge, at bin ``fine[c]``; ``fine[c]`` is 0 where
        ``hits[c]`` is 0.
    edges : Out(32)
        Accepted edges since reset, all channels together (wraps at 2**32).
    suppressed : Out(32)
        Edges not accepted since reset (a second edge in a cycle, or one in the dead time), all channels together
        (wraps at 2**32).

    The counters include the edges of the samples presented in cycle ``n`` from cycle ``n + COUNTER_LATENCY``
    on.

    Attributes
    ----------
    LATENCY : int
        Cycles from presenting samples at ``i_samples`` to their event on ``o_events``: two for the synchronizer,
        one for the edge detection and dead time.
    COUNTER_LATENCY : int
        Cycles from presenting samples to the counters including their edges.
    """

    LATENCY = 3
    COUNTER_LATENCY = 5

    def __init__(self, *, channels, phases, time_width=64):
        if not isinstance(channels, int) or channels < 1:
            raise TypeError(f"Channel count must be a positive integer, not {channels!r}")
        if not isinstance(phases, int) or phases < 1 or phases & (phases - 1):
            raise TypeError(f"Phases must be a positive power of two, not {phases!r}")
        fine_width = (phases - 1).bit_length()
        if not isinstance(time_width, int) or time_width <= fine_width:
            raise TypeError(f"Time width must be an integer greater than log2(phases) = {fine_width}, "
                            f"not {time_width!r}")
        self._channels = channels
        self._phases = phases
        self._time_width = time_width
        super().__init__({
            "i_samples":   In(channels * phases),
            "dead_cycles": In(16),
            "o_events":    Out(stream.Signature(event_layout(channels, phases, time_width=time_width),
                                                always_ready=True)),
            "edges":       Out(32),
            "suppressed":  Out(32),
        })

    @property
    def channels(self):
        return self._channels

    @property
    def phases(self):
        return self._phases

    @property
    def time_width(self):
        return self._time_width

    def elaborate(self, platform):
        m = Module()
        P = self._phases
        fine_width = (P - 1).bit_length()
        most_edges = (P + 1) // 2                 # edges a channel can have in one cycle: 1010... (s[-1] = 0)

        # Reset (not only initialised) so that after a reset the samples from before it make no edges.
        samples = Signal(self._channels * P)
        m.submodules.synchronizer = FFSynchronizer(self.i_samples, samples, reset_less=False)

        # The counter runs LATENCY cycles behind, so it reads the presentation cycle when the event comes out.
        cycle_width = self._time_width - fine_width
        m.d.comb += self.o_events.p.cycle.eq(
            _wide_counter(m, cycle_width, init=-self.LATENCY % (1 << cycle_width)))

        any_hit = []
        rejected = []
        for c in range(self._channels):
            s = samples[c * P:(c + 1) * P]
            last = Signal(name=f"last_{c}")                 # s[-1] of this cycle: the previous cycle's last sample
            m.d.sync += last.eq(s[P - 1])
            rising = s & ~Cat(last, s[:P - 1])
            first = Const(0, fine_width)
            for k in reversed(range(P)):
                first = Mux(rising[k], k, first)
            count = sum(rising[k] for k in range(P))

            # remaining: cycles of dead time still to come; live (= remaining == 0) is computed a cycle ahead so
            # that the loop through accept is one gate deep.
            remaining = Signal(16, name=f"remaining_{c}")
            live = Signal(init=1, name=f"live_{c}")
            accept = rising.any() & live
            with m.If(accept):
                m.d.sync += [remaining.eq(self.dead_cycles), live.eq(self.dead_cycles == 0)]
            with m.Else():
                m.d.sync += [remaining.eq(Mux(live, 0, remaining - 1)), live.eq(remaining <= 1)]

            extra = Signal(range(most_edges + 1), name=f"rejected_{c}")
            m.d.sync += [
                self.o_events.p.hits[c].eq(accept),
                self.o_events.p.fine[c].eq(Mux(accept, first, 0)),
                extra.eq(count - accept),
            ]
            any_hit.append(accept)
            rejected.append(extra)
        m.d.sync += self.o_events.valid.eq(Cat(*any_hit).any())

        # The counters add a registered per-cycle sum: their timing does not matter, the adders' depth does.
        accepted_now = Signal(range(self._channels + 1))
        rejected_now = Signal(range(self._channels * most_edges + 1))
        m.d.sync += [
            accepted_now.eq(sum(self.o_events.p.hits[c] for c in range(self._channels))),
            rejected_now.eq(sum(rejected)),
            self.edges.eq(self.edges + accepted_now),
            self.suppressed.eq(self.suppressed + rejected_now),
        ]
        return m
